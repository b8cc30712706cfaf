//! Accepting on a listener without spinning when `accept` fails.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The pause after a failed `accept` (out of file descriptors, say) before trying again: the
/// pending connection stays queued, so trying again at once fails again at once.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections on a listener; a run of failures is logged once and paced.
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: TcpListener,
    /// Failures since the last accepted connection.
    failures: u64,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            failures: 0,
        }
    }

    /// The next connection. A failure is logged (a warning for the first of a run, debug for the
    /// rest) and followed by [`ACCEPT_PAUSE`]. Cancel-safe.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        tracing::info!(failures = self.failures, "accepting connections again");
                        self.failures = 0;
                    }
                    return accepted;
                }
                Err(err) => {
                    self.failed(&err);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    }

    fn failed(&mut self, err: &io::Error) {
        self.failures += 1;
        let addr = self.listener.local_addr().ok();
        if self.failures == 1 {
            tracing::warn!(
                ?addr,
                error = %err,
                pause = ?ACCEPT_PAUSE,
                "accept failed; pausing before accepting again"
            );
        } else {
            tracing::debug!(?addr, error = %err, failures = self.failures, "accept failed again");
        }
    }
}
