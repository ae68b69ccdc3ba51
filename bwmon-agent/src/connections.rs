//! Serving connections until shutdown: one task per connection, each bounded in time. Shared
//! by the control socket and the metrics endpoint.

use std::{future::Future, io, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, warn};

/// How long one connection may take.
const PER_CONNECTION: Duration = Duration::from_secs(5);

/// A listener that hands out streams.
pub trait Accept {
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

/// Accepts connections until `shutdown` flips, running `handle` on each in its own task.
pub async fn serve<L, F, Fut>(
    listener: L,
    what: &'static str,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    L: Accept,
    F: Fn(L::Stream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.next() => match accepted {
                Ok(stream) => {
                    let served = handle(stream);
                    tokio::spawn(async move {
                        match tokio::time::timeout(PER_CONNECTION, served).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(what, error = %e, "client"),
                            Err(_) => debug!(what, "client timed out"),
                        }
                    });
                }
                Err(e) => warn!(what, error = %e, "accepting a connection"),
            },
        }
    }
}
