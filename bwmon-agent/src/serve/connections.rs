//! Serving connections until shutdown, bounded: at most `limit` at once (past that, new ones
//! wait in the kernel's backlog and cost the daemon no descriptor), each with a deadline, and
//! accept errors (EMFILE, …) backed off and logged at most once a minute with their errno. Shared
//! by the control socket and the metrics endpoint; the sync never waits on any of it.

use std::{
    future::Future,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

/// How long one connection may take, idle or not.
pub(crate) const PER_CONNECTION: Duration = Duration::from_secs(5);
/// The default of `max_connections`.
pub(crate) const DEFAULT_LIMIT: usize = 64;
/// How often an accept error is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A listener that hands out streams.
pub(crate) trait Accept {
    /// The stream of one connection.
    type Stream: Send + 'static;
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

/// Accepts connections until `shutdown` flips, running `handle` on each in its own task, at
/// most `limit` at once, each within `deadline` ([`PER_CONNECTION`]); `None` when `handle`
/// bounds its own steps (the control socket bounds reading a request and writing its reply,
/// not the wait for the sync that applies a lever).
pub(crate) async fn serve<L, F, Fut>(
    listener: L,
    what: &'static str,
    limit: usize,
    deadline: Option<Duration>,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    L: Accept,
    F: Fn(L::Stream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limit.max(1)));
    let mut errors = ErrorLog {
        what,
        last: None,
        suppressed: 0,
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        // A free slot first: at the limit, clients wait in the kernel's backlog.
        let slot = tokio::select! {
            _ = shutdown.changed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.next() => accepted,
        };
        match accepted {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                let served = handle(stream);
                tokio::spawn(async move {
                    let outcome = match deadline {
                        Some(d) => tokio::time::timeout(d, served).await,
                        None => Ok(served.await),
                    };
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(what, error = %e, "client"),
                        Err(_) => debug!(what, "client timed out"),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                errors.failed(&e);
                // Out of descriptors or memory: retrying at once would only spin.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
