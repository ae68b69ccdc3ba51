//! The local sockets. The control socket (root only, mode 0600) serves the status report,
//! one slice's whole view and the operator's levers; the tenant socket (mode 0666) answers any
//! local user with their own slice, found by the uid the kernel vouches for (`SO_PEERCRED`),
//! and nothing else.
//!
//! Requests and replies are frames: a little-endian `u32` length, then a postcard body that
//! starts with the protocol version. Unknown or malformed requests get an error reply and the
//! daemon carries on. Reading a request and writing its reply each have a deadline; the wait
//! for the sync that applies a lever has none (a sync of many slices may take a minute). A
//! lever request carries an id the daemon remembers: asked again (its reply lost), it is
//! answered with its first outcome, never applied twice.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};
use tracing::debug;

use crate::{
    cgroup::CgroupPath,
    paths::PROC,
    policy::levers::Lever,
    serve::{
        connections::{self, Limits, PER_CONNECTION, Ticket},
        slice_view::{SliceDetail, SliceRef},
        status::StatusReport,
    },
    state::RequestId,
};

/// The protocol version of this binary (2: lever requests carry an id; a tenant is answered
/// with the status report of their slice).
pub(crate) const PROTOCOL: u16 = 2;
/// The largest request the daemon reads (requests are a few bytes).
const MAX_REQUEST: u32 = 64 << 10;
/// The largest reply a client reads (a status of 100,000 slices fits).
const MAX_REPLY: u32 = 256 << 20;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Request {
    /// [`PROTOCOL`] of the sender.
    pub(crate) version: u16,
    /// What is asked.
    pub(crate) body: RequestBody,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum RequestBody {
    /// The status report.
    Status,
    /// Everything known of one slice (root only).
    Show(SliceRef),
    /// Pull a lever on one slice (root only), as the request with this id.
    Pull(SliceRef, Lever, RequestId),
    /// The status report of the caller's own slice (the tenant socket's one request).
    Mine,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// [`PROTOCOL`] of the daemon.
    pub(crate) version: u16,
    /// The answer.
    pub body: ReplyBody,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ReplyBody {
    /// The status report.
    Status(StatusReport),
    /// The request was not understood, or was refused.
    Error(String),
    /// One slice.
    Slice(SliceDetail),
    /// A lever was pulled: the audit line, and the slice after it.
    Pulled(String, SliceDetail),
}

/// A request only the sync worker can answer (it owns the state), who asked, and where the
/// answer goes.
#[derive(Debug)]
pub(crate) struct Asked {
    /// What.
    pub(crate) what: SliceRequest,
    /// The caller's uid, from the kernel (`SO_PEERCRED`).
    pub(crate) uid: u32,
    /// Where the reply goes.
    pub(crate) reply: oneshot::Sender<ReplyBody>,
}

/// The requests on one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SliceRequest {
    /// Its whole view.
    Show(SliceRef),
    /// A lever, as the request with this id.
    Pull(SliceRef, Lever, RequestId),
}

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// Could not connect or send the request.
    #[error("socket {path} (is `bwmon run` running? its control socket is root's)")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The request was sent and no reply came back: it may or may not have been carried out.
    #[error("socket {path}: the request was sent but its reply was lost")]
    ReplyLost {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The daemon answered something unreadable, or an error.
    #[error("{path}: {what}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What.
        what: String,
    },
}

async fn read_frame(stream: &mut UnixStream, max: u32) -> io::Result<Vec<u8>> {
    let len = stream.read_u32_le().await?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than {max}"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(stream: &mut UnixStream, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    stream.write_u32_le(len).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// The answer to one request frame (pure: testable without a socket).
/// The request in `frame`, or why it cannot be answered.
fn decode(frame: &[u8]) -> Result<RequestBody, String> {
    match postcard::from_bytes::<Request>(frame) {
        Ok(req) if req.version != PROTOCOL => Err(format!(
            "protocol version {} is not supported (this daemon speaks {PROTOCOL})",
            req.version
        )),
        Ok(req) => Ok(req.body),
        Err(e) => Err(format!("malformed request: {e}")),
    }
}

/// The control socket's answer to `frame` from `uid`; requests on a slice are asked of the
/// sync worker through `asks`.
pub(crate) async fn answer(
    frame: &[u8],
    uid: u32,
    status: &watch::Receiver<Arc<StatusReport>>,
    asks: &mpsc::UnboundedSender<Asked>,
) -> ReplyBody {
    let request = decode(frame);
    if uid != 0 && request.is_ok() {
        // The socket's mode guards it; the uid is checked anyway, for every request.
        return ReplyBody::Error(format!(
            "only root may use the control socket (the caller is uid {uid}); a user sees their own slice with `bwmon status`"
        ));
    }
    let what = match request {
        Err(why) => return ReplyBody::Error(why),
        Ok(RequestBody::Status) => return ReplyBody::Status((**status.borrow()).clone()),
        Ok(RequestBody::Mine) => {
            return ReplyBody::Error(
                "ask the tenant socket for one's own slice (`bwmon status` as that user)".into(),
            );
        }
        Ok(RequestBody::Show(which)) => SliceRequest::Show(which),
        Ok(RequestBody::Pull(which, lever, id)) => SliceRequest::Pull(which, lever, id),
    };
    let (reply, answer) = oneshot::channel();
    if asks.send(Asked { what, uid, reply }).is_err() {
        return ReplyBody::Error("the daemon is stopping".into());
    }
    answer
        .await
        .unwrap_or_else(|_| ReplyBody::Error("the daemon is stopping".into()))
}

/// The tenant socket's answer to `frame` from `uid`, a process in cgroup `cgroup`: the status
/// report (the root's document with that one slice) of the cgroup slice it is in (its cgroup
/// or the nearest ancestor that is one), else of its uid's slice, when `uid_is_xid`.
pub(crate) fn answer_tenant(
    frame: &[u8],
    uid: u32,
    cgroup: Option<&CgroupPath>,
    status: &StatusReport,
    uid_is_xid: bool,
) -> ReplyBody {
    let in_cgroup = cgroup.and_then(|c| status.cgroup_slice(c));
    match decode(frame) {
        Err(why) => ReplyBody::Error(why),
        Ok(RequestBody::Mine) if in_cgroup.is_some() => in_cgroup
            .and_then(|xid| status.for_tenant(xid))
            .map_or_else(
                || ReplyBody::Error(format!("no slice for uid {uid}")),
                ReplyBody::Status,
            ),
        Ok(RequestBody::Mine) if !uid_is_xid => ReplyBody::Error(format!(
            "no slice for uid {uid}: slices here are not identified by uid (xid_source)"
        )),
        Ok(RequestBody::Mine) => status.for_tenant(uid).map_or_else(
            || ReplyBody::Error(format!("no slice for uid {uid}")),
            ReplyBody::Status,
        ),
        Ok(_) => ReplyBody::Error(
            "this socket answers only a user's own usage (`bwmon status`); the rest is root's, on the control socket".into(),
        ),
    }
}

/// The cgroup of the tenant process `pid`: from `/proc/PID/cgroup`, or, where `/proc` hides
/// it (`ProtectProc=invisible`), from the `cgroup.procs` of the tenant cgroups `status` has.
fn caller_cgroup(pid: u32, status: &StatusReport) -> Option<CgroupPath> {
    use crate::cgroup::hierarchy::{Hierarchy, cgroup_of, find_pid};
    let tenants: Vec<CgroupPath> = (status.slices.iter())
        .filter_map(|s| CgroupPath::parse(s.cgroup.as_deref()?).ok())
        .collect();
    if tenants.is_empty() {
        return None;
    }
    cgroup_of(Path::new(PROC), pid).or_else(|| find_pid(&Hierarchy::locate()?, &tenants, pid))
}

/// Binds a socket at `path` with permissions `mode`, replacing a stale socket. Nothing at
/// `path` is followed: a link (or anything but a socket) there is refused, and the mode is set
/// on the socket bound, not on whatever a link there would point to. (The daemon holds
/// `<path>.lock`, so a socket there is a stale one.)
///
/// # Errors
/// The directory cannot be made, something else than a socket is at `path`, the old socket
/// cannot be removed, or the new one cannot be bound.
pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)?;
            debug!(path = %path.display(), "removed a stale control socket");
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something else than a socket is there (a link, a file): refused, nothing replaced",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    chmod_socket(path, mode)?;
    Ok(listener)
}

/// Sets the mode of the socket at `path` without following a link: opened `O_PATH |
/// O_NOFOLLOW`, checked to be a socket, changed through `/proc/self/fd`.
fn chmod_socket(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(io::Error::other(
            "replaced by something else than a socket after it was bound: refused",
        ));
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    std::fs::set_permissions(
        format!("/proc/self/fd/{fd}"),
        std::fs::Permissions::from_mode(mode),
    )
}

/// Reads one request frame from `stream` and writes the reply `respond` makes of it (an
/// oversized frame is answered with an error, unread). Reading and writing each have
/// `deadline`; `respond` has none (a lever waits for the sync that applies it).
async fn exchange<F, Fut>(
    mut stream: UnixStream,
    ticket: Ticket,
    deadline: Duration,
    respond: F,
) -> io::Result<()>
where
    F: FnOnce(Vec<u8>, u32) -> Fut,
    Fut: std::future::Future<Output = ReplyBody>,
{
    let timed_out = |what| io::Error::new(io::ErrorKind::TimedOut, what);
    // The kernel's word for who is calling.
    let uid = stream.peer_cred()?.uid();
    let read = tokio::time::timeout(deadline, read_frame(&mut stream, MAX_REQUEST))
        .await
        .map_err(|_| timed_out("reading the request"))?;
    ticket.answering();
    let body = match read {
        Ok(frame) => respond(frame, uid).await,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => ReplyBody::Error(e.to_string()),
        Err(e) => return Err(e),
    };
    let reply = Reply {
        version: PROTOCOL,
        body,
    };
    let bytes = postcard::to_stdvec(&reply).map_err(io::Error::other)?;
    tokio::time::timeout(deadline, write_frame(&mut stream, &bytes))
        .await
        .map_err(|_| timed_out("writing the reply"))?
}

/// Serves the control socket until `shutdown`, reading each request and writing each reply
/// within `deadline` ([`PER_CONNECTION`] in the daemon).
pub(crate) async fn serve(
    listener: UnixListener,
    limits: Limits,
    deadline: Duration,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: watch::Receiver<bool>,
    asks: mpsc::UnboundedSender<Asked>,
) {
    let handle = move |stream: UnixStream, ticket| {
        let status = status.clone();
        let asks = asks.clone();
        exchange(stream, ticket, deadline, move |frame, uid| async move {
            answer(&frame, uid, &status, &asks).await
        })
    };
    connections::serve(listener, "control", limits, None, handle, shutdown).await;
}

/// Serves the tenant socket until `shutdown`, at most `limits.per_peer` connections per uid.
pub(crate) async fn serve_tenant(
    listener: UnixListener,
    limits: Limits,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: watch::Receiver<bool>,
    uid_is_xid: bool,
) {
    let handle = move |stream: UnixStream, ticket| {
        let status = status.clone();
        // The caller's cgroup, by the pid the kernel vouches for: read when it connects (a
        // process that is gone by then is answered by its uid).
        let pid = (stream.peer_cred().ok())
            .and_then(|c| c.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        let cgroup = pid.and_then(|pid| caller_cgroup(pid, &status.borrow()));
        exchange(
            stream,
            ticket,
            PER_CONNECTION,
            move |frame, uid| async move {
                answer_tenant(&frame, uid, cgroup.as_ref(), &status.borrow(), uid_is_xid)
            },
        )
    };
    connections::serve(listener, "tenant", limits, None, handle, shutdown).await;
}

/// Sends `body` to the daemon at `path` and returns its reply (an error reply as `Err`).
///
/// # Errors
/// No daemon, a broken reply, or the daemon's error message.
pub(crate) async fn request(path: &Path, body: RequestBody) -> Result<ReplyBody, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io_err)?;
    let req = postcard::to_stdvec(&Request {
        version: PROTOCOL,
        body,
    })
    .map_err(|e| io_err(io::Error::other(e)))?;
    write_frame(&mut stream, &req).await.map_err(io_err)?;
    let frame =
        read_frame(&mut stream, MAX_REPLY)
            .await
            .map_err(|source| ControlError::ReplyLost {
                path: path.to_owned(),
                source,
            })?;
    let reply: Reply = postcard::from_bytes(&frame).map_err(|e| ControlError::Protocol {
        path: path.to_owned(),
        what: format!("unreadable reply: {e}"),
    })?;
    match reply.body {
        ReplyBody::Error(e) => Err(ControlError::Protocol {
            path: path.to_owned(),
            what: e,
        }),
        body => Ok(body),
    }
}

/// The status report of the daemon at `path`.
///
/// # Errors
/// No daemon, or a broken reply.
pub(crate) async fn status(path: &Path) -> Result<StatusReport, ControlError> {
    match request(path, RequestBody::Status).await? {
        ReplyBody::Status(s) => Ok(s),
        other => Err(ControlError::Protocol {
            path: path.to_owned(),
            what: format!("unexpected reply {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` connected clients that say nothing.
    async fn futures_idle(path: &Path, n: usize) -> Vec<UnixStream> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(UnixStream::connect(path).await.unwrap());
        }
        out
    }

    fn frame(version: u16, body: RequestBody) -> Vec<u8> {
        postcard::to_stdvec(&Request { version, body }).unwrap()
    }

    #[tokio::test]
    async fn requests_are_answered_and_bad_ones_get_errors() {
        let report = StatusReport {
            now: 42,
            ..Default::default()
        };
        let (_tx, status) = watch::channel(Arc::new(report.clone()));
        let (asks, mut asked) = mpsc::unbounded_channel();
        let ask = |f: Vec<u8>, uid| {
            let (status, asks) = (status.clone(), asks.clone());
            async move { answer(&f, uid, &status, &asks).await }
        };
        assert_eq!(
            ask(frame(PROTOCOL, RequestBody::Status), 0).await,
            ReplyBody::Status(report.clone())
        );
        // The uid is checked for every request, the status too (not only the socket's mode).
        let r = ask(frame(PROTOCOL, RequestBody::Status), 1001).await;
        assert!(matches!(r, ReplyBody::Error(e) if e.contains("only root")));
        let newer = ask(frame(PROTOCOL + 1, RequestBody::Status), 0).await;
        assert!(matches!(newer, ReplyBody::Error(e) if e.contains("not supported")));
        for junk in [&b""[..], b"\xff\xff\xff", b"\x01\x09"] {
            let r = ask(junk.to_vec(), 0).await;
            assert!(matches!(r, ReplyBody::Error(e) if e.contains("malformed")));
        }
        // A slice request from anyone but root is refused before it reaches the worker.
        let reset = RequestBody::Pull(SliceRef::Name("alice".into()), Lever::Reset, RequestId(7));
        let r = ask(frame(PROTOCOL, reset.clone()), 1001).await;
        assert!(matches!(r, ReplyBody::Error(e) if e.contains("only root")));
        assert!(asked.try_recv().is_err());
        // From root it goes to the worker, whose answer is the reply.
        let worker = tokio::spawn(async move {
            let a = asked.recv().await.unwrap();
            assert_eq!(a.uid, 0);
            assert_eq!(
                a.what,
                SliceRequest::Pull(SliceRef::Name("alice".into()), Lever::Reset, RequestId(7))
            );
            a.reply
                .send(ReplyBody::Error("no slice 'alice'".into()))
                .unwrap();
        });
        let r = ask(frame(PROTOCOL, reset), 0).await;
        assert_eq!(r, ReplyBody::Error("no slice 'alice'".into()));
        worker.await.unwrap();
    }

    #[tokio::test]
    async fn a_lever_is_answered_after_its_sync_however_long_past_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bwmon.sock");
        let listener = bind(&path, 0o600).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(StatusReport::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (asks, mut asked) = mpsc::unbounded_channel::<Asked>();
        let deadline = Duration::from_millis(200);
        let server = tokio::spawn(serve(
            listener,
            Limits::new(4, 4),
            deadline,
            rx,
            stop_rx,
            asks,
        ));
        // The sync that applies it takes five deadlines.
        let worker = tokio::spawn(async move {
            let a = asked.recv().await.unwrap();
            tokio::time::sleep(deadline * 5).await;
            a.reply
                .send(ReplyBody::Error("applied late".into()))
                .unwrap();
        });
        let pull = RequestBody::Pull(SliceRef::Xid(1), Lever::Reset, RequestId(9));
        let e = request(&path, pull).await.unwrap_err();
        assert!(e.to_string().ends_with("applied late"), "{e}");
        worker.await.unwrap();
        // A client that sends nothing is still let go at the deadline.
        let mut idle = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(deadline * 10, idle.read(&mut buf))
            .await
            .expect("closed by the daemon");
        assert!(matches!(n, Ok(0) | Err(_)));
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn the_tenant_socket_answers_only_the_callers_own_slice() {
        let row = |name: &str, xid| crate::serve::status::SliceStatus {
            name: name.into(),
            xid,
            period_start: 1000,
            period_end: 2000,
            bytes: 2048,
            max_kbyte: 10,
            ..Default::default()
        };
        let report = StatusReport {
            now: 1500,
            period_secs: 1000,
            slices: vec![row("alice", 1001), row("bob", 1002)],
            ..Default::default()
        };
        let mine = frame(PROTOCOL, RequestBody::Mine);
        match answer_tenant(&mine, 1002, None, &report, true) {
            ReplyBody::Status(r) => {
                // Root's document, with the caller's slice alone and nothing of the daemon's.
                assert_eq!(r.now, 1500);
                assert_eq!(r.slices.len(), 1);
                let v = &r.slices[0];
                assert_eq!((v.name.as_str(), v.xid, v.period_end), ("bob", 1002, 2000));
                assert_eq!(v.max_kbyte, 10);
                assert!(r.warnings.is_empty() && r.errors.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let none = answer_tenant(&mine, 4242, None, &report, true);
        assert_eq!(none, ReplyBody::Error("no slice for uid 4242".into()));
        assert!(matches!(
            answer_tenant(&mine, 1001, None, &report, false),
            ReplyBody::Error(_)
        ));
        for other in [
            RequestBody::Status,
            RequestBody::Show(SliceRef::Xid(1001)),
            RequestBody::Pull(SliceRef::Xid(1002), Lever::Reset, RequestId(1)),
        ] {
            let r = answer_tenant(&frame(PROTOCOL, other), 1002, None, &report, true);
            assert!(matches!(r, ReplyBody::Error(e) if e.contains("only a user's own")));
        }
        assert!(matches!(
            answer_tenant(b"junk", 1002, None, &report, true),
            ReplyBody::Error(e) if e.contains("malformed")
        ));
    }

    #[test]
    fn a_process_in_a_tenant_cgroup_is_answered_with_its_slice() {
        let mut ci = crate::serve::status::SliceStatus {
            name: "ci-42".into(),
            xid: 0x8000_0042,
            cgroup: Some("/ci/job-42".into()),
            ..Default::default()
        };
        let alice = crate::serve::status::SliceStatus {
            name: "alice".into(),
            xid: 1001,
            ..Default::default()
        };
        let report = StatusReport {
            slices: vec![alice, ci.clone()],
            ..Default::default()
        };
        let mine = frame(PROTOCOL, RequestBody::Mine);
        let at = |p: &str| CgroupPath::parse(p).unwrap();
        let name = |r: ReplyBody| match r {
            ReplyBody::Status(r) => r.slices[0].name.clone(),
            other => panic!("{other:?}"),
        };
        // In the cgroup, or in a cgroup below it; even with slices by mark.
        for (path, uid_is_xid) in [("/ci/job-42", true), ("/ci/job-42/step/1", false)] {
            let r = answer_tenant(&mine, 1001, Some(&at(path)), &report, uid_is_xid);
            assert_eq!(name(r), "ci-42", "{path}");
        }
        // Outside it (a sibling with the same prefix): by uid.
        let r = answer_tenant(&mine, 1001, Some(&at("/ci/job-420")), &report, true);
        assert_eq!(name(r), "alice");
        ci.cgroup = None;
        let report = StatusReport {
            slices: vec![ci],
            ..Default::default()
        };
        assert!(matches!(
            answer_tenant(&mine, 1001, Some(&at("/ci/job-42")), &report, true),
            ReplyBody::Error(_)
        ));
    }

    #[tokio::test]
    async fn the_socket_is_private_and_serves_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/bwmon.sock");
        // A link planted at the socket's path is refused, its target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = bind(&path, 0o666).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the link's target keeps its mode");
        std::fs::remove_file(&path).unwrap();
        let listener = bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_tx, rx) = watch::channel(Arc::new(StatusReport {
            now: 7,
            ..Default::default()
        }));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (asks, _asked) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(
            listener,
            Limits::new(4, 4),
            PER_CONNECTION,
            rx,
            stop_rx,
            asks,
        ));
        assert_eq!(status(&path).await.unwrap().now, 7);
        // A client sending garbage gets an error reply; the server goes on.
        let mut s = UnixStream::connect(&path).await.unwrap();
        write_frame(&mut s, b"garbage").await.unwrap();
        let reply: Reply =
            postcard::from_bytes(&read_frame(&mut s, MAX_REPLY).await.unwrap()).unwrap();
        assert!(matches!(reply.body, ReplyBody::Error(_)));
        // An absurd length is answered with an error, without allocating it.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_u32_le(u32::MAX).await.unwrap();
        let reply: Reply =
            postcard::from_bytes(&read_frame(&mut s, MAX_REPLY).await.unwrap()).unwrap();
        assert!(
            matches!(&reply.body, ReplyBody::Error(e) if e.contains("larger than")),
            "{reply:?}"
        );
        assert_eq!(status(&path).await.unwrap().now, 7);
        // As many idle clients as the limit: status waits for a slot, and gets one when an
        // idle client's deadline passes.
        let idle: Vec<UnixStream> = futures_idle(&path, 4).await;
        assert_eq!(status(&path).await.unwrap().now, 7);
        drop(idle);
        // Fifty times as many, from the same uid: the oldest waiting ones make room, at once.
        let idle: Vec<UnixStream> = futures_idle(&path, 200).await;
        let asked = std::time::Instant::now();
        assert_eq!(status(&path).await.unwrap().now, 7);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
        drop(idle);
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }
}
