//! The local control socket: a Unix socket (root only, mode 0600) serving the status report.
//!
//! Requests and replies are frames: a little-endian `u32` length, then a postcard body that
//! starts with the protocol version. Unknown or malformed requests get an error reply and the
//! daemon carries on.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::debug;

use crate::status::StatusReport;

/// The protocol version of this binary.
pub const PROTOCOL: u16 = 1;
/// The largest request the daemon reads (requests are a few bytes).
const MAX_REQUEST: u32 = 64 << 10;
/// The largest reply a client reads (a status of 100,000 slices fits).
const MAX_REPLY: u32 = 256 << 20;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// [`PROTOCOL`] of the sender.
    pub version: u16,
    /// What is asked.
    pub body: RequestBody,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RequestBody {
    /// The status report.
    Status,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// [`PROTOCOL`] of the daemon.
    pub version: u16,
    /// The answer.
    pub body: ReplyBody,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ReplyBody {
    /// The status report.
    Status(StatusReport),
    /// The request was not understood.
    Error(String),
}

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Could not connect or talk.
    #[error("control socket {path} (is `bwmon run` running?)")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The daemon answered something unreadable, or an error.
    #[error("control socket {path}: {what}")]
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
pub fn answer(frame: &[u8], status: &StatusReport) -> Reply {
    let body = match postcard::from_bytes::<Request>(frame) {
        Ok(req) if req.version != PROTOCOL => ReplyBody::Error(format!(
            "protocol version {} is not supported (this daemon speaks {PROTOCOL})",
            req.version
        )),
        Ok(Request {
            body: RequestBody::Status,
            ..
        }) => ReplyBody::Status(status.clone()),
        Err(e) => ReplyBody::Error(format!("malformed request: {e}")),
    };
    Reply {
        version: PROTOCOL,
        body,
    }
}

/// Binds the socket: removes a stale one, creates the directory, mode 0600.
///
/// # Errors
/// The socket cannot be bound or its mode set.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until `shutdown` flips.
pub async fn serve(
    listener: UnixListener,
    limit: usize,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: watch::Receiver<bool>,
) {
    let handle = move |mut stream: UnixStream| {
        let status = status.clone();
        async move {
            let reply = match read_frame(&mut stream, MAX_REQUEST).await {
                Ok(frame) => answer(&frame, &status.borrow()),
                // Too large: said, not read.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Reply {
                    version: PROTOCOL,
                    body: ReplyBody::Error(e.to_string()),
                },
                Err(e) => return Err(e),
            };
            let bytes = postcard::to_stdvec(&reply).map_err(io::Error::other)?;
            write_frame(&mut stream, &bytes).await
        }
    };
    crate::connections::serve(listener, "control", limit, handle, shutdown).await;
}

/// Asks the daemon at `path` for its status.
///
/// # Errors
/// No daemon, or an unreadable or error reply.
pub async fn status(path: &Path) -> Result<StatusReport, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io_err)?;
    let req = postcard::to_stdvec(&Request {
        version: PROTOCOL,
        body: RequestBody::Status,
    })
    .map_err(|e| io_err(io::Error::other(e)))?;
    write_frame(&mut stream, &req).await.map_err(io_err)?;
    let frame = read_frame(&mut stream, MAX_REPLY).await.map_err(io_err)?;
    let reply: Reply = postcard::from_bytes(&frame).map_err(|e| ControlError::Protocol {
        path: path.to_owned(),
        what: format!("unreadable reply: {e}"),
    })?;
    match reply.body {
        ReplyBody::Status(s) => Ok(s),
        ReplyBody::Error(e) => Err(ControlError::Protocol {
            path: path.to_owned(),
            what: e,
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

    #[test]
    fn status_requests_are_answered_and_bad_ones_get_errors() {
        let report = StatusReport {
            now: 42,
            ..Default::default()
        };
        let ok = postcard::to_stdvec(&Request {
            version: PROTOCOL,
            body: RequestBody::Status,
        })
        .unwrap();
        assert_eq!(answer(&ok, &report).body, ReplyBody::Status(report.clone()));
        let newer = postcard::to_stdvec(&Request {
            version: PROTOCOL + 1,
            body: RequestBody::Status,
        })
        .unwrap();
        assert!(
            matches!(answer(&newer, &report).body, ReplyBody::Error(e) if e.contains("not supported"))
        );
        for junk in [&b""[..], b"\xff\xff\xff", b"\x01\x09"] {
            assert!(
                matches!(answer(junk, &report).body, ReplyBody::Error(e) if e.contains("malformed"))
            );
        }
    }

    #[tokio::test]
    async fn the_socket_is_private_and_serves_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/bwmon.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_tx, rx) = watch::channel(Arc::new(StatusReport {
            now: 7,
            ..Default::default()
        }));
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, 4, rx, stop_rx));
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
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }
}
