//! Serving connections until shutdown, bounded and fair. At most `limit` connections are held at
//! once and at most `per_peer` of them from one peer (a uid on a local socket, by `SO_PEERCRED`;
//! an address on TCP). A connection that has not yet sent its whole request is *waiting*; a
//! new one beyond either bound takes the place of the oldest waiting one (of that peer first,
//! else of anyone), so idle connections, however many, cost a client that speaks at once no more
//! than an accept: a tenant with 300 idle connections, or 2,000 idle TCP clients, delay nobody.
//! Only when every held connection is being answered do new ones wait in the kernel's backlog
//! (costing the daemon no descriptor). A request's first byte must come within [`FIRST_BYTE`],
//! the whole connection within its deadline. Accept errors (EMFILE, …) are backed off and
//! logged at most once a minute with their errno. Shared by the control and tenant sockets and
//! the metrics endpoint; the sync never waits on any of it.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{Notify, oneshot, watch},
};
use tracing::{debug, warn};

/// How long one connection may take, idle or not.
pub(crate) const PER_CONNECTION: Duration = Duration::from_secs(5);
/// How long a client may take to send the first byte of its request.
pub(crate) const FIRST_BYTE: Duration = Duration::from_secs(1);
/// The default of `max_connections`.
pub(crate) const DEFAULT_LIMIT: usize = 64;
/// The default of `max_connections_per_client`.
pub(crate) const DEFAULT_PER_PEER: usize = 8;
/// How often an accept error is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Who is at the other end of a connection, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// A local user (`SO_PEERCRED`).
    Uid(u32),
    /// A TCP client's address.
    Addr(IpAddr),
}

/// A connection's stream: who is at the other end, and when it has something to read.
pub(crate) trait Stream: Send + 'static {
    /// The peer.
    fn peer(&self) -> io::Result<Peer>;
    /// Waits until the stream is readable (data, or the end).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Stream for UnixStream {
    fn peer(&self) -> io::Result<Peer> {
        Ok(Peer::Uid(self.peer_cred()?.uid()))
    }
    async fn readable(&self) -> io::Result<()> {
        UnixStream::readable(self).await
    }
}

impl Stream for TcpStream {
    fn peer(&self) -> io::Result<Peer> {
        // An IPv4 client over an IPv6 socket is the same client as over IPv4.
        let ip = match self.peer_addr()?.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        Ok(Peer::Addr(ip))
    }
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self).await
    }
}

/// A listener that hands out streams.
pub(crate) trait Accept {
    /// The stream of one connection.
    type Stream: Stream;
    /// Waits for the next connection.
    fn next(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn next(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// The bounds of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections held at once.
    pub(crate) total: usize,
    /// Connections held at once from one peer.
    pub(crate) per_peer: usize,
}

impl Limits {
    /// `total` at once, `per_peer` of them from one peer (never more than `total`, at least 1).
    pub(crate) fn new(total: usize, per_peer: usize) -> Limits {
        let total = total.max(1);
        Limits {
            total,
            per_peer: per_peer.clamp(1, total),
        }
    }
}

/// What a handler tells the loop about its connection.
#[derive(Clone, Debug)]
pub(crate) struct Ticket(Arc<AtomicBool>);

impl Ticket {
    /// The request has been read: from now on the connection is being answered and no new
    /// one takes its place.
    pub(crate) fn answering(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One held connection.
struct Held {
    peer: Peer,
    since: u64,
    answering: Arc<AtomicBool>,
    /// Dropped (or sent) to close the connection in favour of a newer one.
    evict: Option<oneshot::Sender<()>>,
}

/// The connections held, who holds them, and which wait for their request.
#[derive(Default)]
struct Registry {
    held: HashMap<u64, Held>,
    next_id: u64,
}

/// What admitting a new connection decided.
enum Admission {
    /// Held under this id; closed when the receiver fires.
    Held(u64, Arc<AtomicBool>, oneshot::Receiver<()>),
    /// Every connection of its peer is being answered: refused.
    Refused,
}

impl Registry {
    fn count(&self, peer: Peer) -> usize {
        self.held.values().filter(|h| h.peer == peer).count()
    }

    fn waiting(&self) -> usize {
        self.held
            .values()
            .filter(|h| !h.answering.load(Ordering::Relaxed))
            .count()
    }

    /// Closes the oldest connection (of `peer`, or of anyone) still waiting for its request;
    /// false when there is none.
    fn evict_oldest(&mut self, peer: Option<Peer>) -> bool {
        let oldest = self
            .held
            .iter()
            .filter(|(_, h)| peer.is_none_or(|p| h.peer == p))
            .filter(|(_, h)| !h.answering.load(Ordering::Relaxed))
            .min_by_key(|(_, h)| h.since)
            .map(|(id, _)| *id);
        let Some(id) = oldest else {
            return false;
        };
        if let Some(mut h) = self.held.remove(&id)
            && let Some(evict) = h.evict.take()
        {
            let _ = evict.send(());
        }
        true
    }

    /// Whether a new connection can be held now (or would replace a waiting one).
    fn has_room(&self, limits: Limits) -> bool {
        self.held.len() < limits.total || self.waiting() > 0
    }

    /// Admits a connection from `peer` within `limits`, closing older waiting ones to make
    /// room.
    fn admit(&mut self, peer: Peer, limits: Limits) -> Admission {
        if self.count(peer) >= limits.per_peer && !self.evict_oldest(Some(peer)) {
            return Admission::Refused;
        }
        if self.held.len() >= limits.total && !self.evict_oldest(None) {
            return Admission::Refused;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let answering = Arc::new(AtomicBool::new(false));
        self.held.insert(
            id,
            Held {
                peer,
                since: id,
                answering: answering.clone(),
                evict: Some(tx),
            },
        );
        Admission::Held(id, answering, rx)
    }
}

/// Accept errors, said once per [`LOG_EVERY`] with how many happened since.
struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn failed(&mut self, e: &io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        warn!(
            what = self.what,
            error = %e,
            errno = e.raw_os_error(),
            suppressed = self.suppressed,
            "accepting a connection failed; backing off"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Release {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    freed: Arc<Notify>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.held.remove(&self.id);
        }
        self.freed.notify_one();
    }
}

/// Accepts connections until `shutdown` flips, running `handle` on each in its own task within
/// `limits` (see the module's doc), the first byte within [`FIRST_BYTE`] and the whole within
/// `deadline` ([`PER_CONNECTION`]); `None` when `handle` bounds its own steps (the control
/// socket bounds reading a request and writing its reply, not the wait for the sync that
/// applies a lever). `handle` calls [`Ticket::answering`] once it has read the request.
pub(crate) async fn serve<L, F, Fut>(
    listener: L,
    what: &'static str,
    limits: Limits,
    deadline: Option<Duration>,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    L: Accept,
    F: Fn(L::Stream, Ticket) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let registry = Arc::new(Mutex::new(Registry::default()));
    let freed = Arc::new(Notify::new());
    let mut errors = ErrorLog {
        what,
        last: None,
        suppressed: 0,
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        // Room first: when every held connection is being answered, clients wait in the
        // kernel's backlog.
        loop {
            let room = registry.lock().is_ok_and(|r| r.has_room(limits));
            if room {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = freed.notified() => {}
                // A connection may have started answering or been let go meanwhile.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.next() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                errors.failed(&e);
                // Out of descriptors or memory: retrying at once would only spin.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let Ok(peer) = stream.peer() else {
            continue;
        };
        let admission = match registry.lock() {
            Ok(mut r) => r.admit(peer, limits),
            Err(_) => return,
        };
        let Admission::Held(id, answering, evicted) = admission else {
            debug!(
                what,
                ?peer,
                "refused: every connection of this client is being answered"
            );
            continue;
        };
        let release = Release {
            registry: registry.clone(),
            id,
            freed: freed.clone(),
        };
        let ticket = Ticket(answering);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _release = release;
            let served = async move {
                match tokio::time::timeout(FIRST_BYTE, stream.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(timed_out("no request within the first-byte deadline")),
                }
                let served = handle(stream, ticket);
                match deadline {
                    Some(d) => tokio::time::timeout(d, served)
                        .await
                        .unwrap_or_else(|_| Err(timed_out("the connection's deadline passed"))),
                    None => served.await,
                }
            };
            tokio::select! {
                outcome = served => {
                    if let Err(e) = outcome {
                        debug!(what, error = %e, "client");
                    }
                }
                _ = evicted => debug!(what, ?peer, "closed for a newer connection"),
            }
        });
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}
