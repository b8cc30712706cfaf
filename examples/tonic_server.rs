//! WebhookErrorLayer on a tonic server: panics, timeouts and rejections from inner layers reach
//! gRPC clients as proper `grpc-status` codes instead of a dropped connection.
//!
//! ```text
//! cargo run --example tonic_server            # listens on 127.0.0.1:50051 (ADDR to change)
//! cargo run --example tonic_client            # in another terminal
//! ```
//!
//! The call `"slow"` runs into the 2 s deadline (`DEADLINE_EXCEEDED`). Ctrl-C or `SIGTERM` stops
//! the server gracefully: calls in flight are answered first. A connection that has not sent the
//! HTTP/2 preface within 10 s, or by the time the server stops, is closed: without that, one that
//! sends nothing would be held forever, and would hold up the graceful shutdown forever too.

#[path = "common/echo.rs"]
#[allow(dead_code)] // the client half is used by tonic_client
mod echo;
#[path = "common/shutdown.rs"]
mod shutdown;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::BoxError;
use tower_webhook::error::WebhookErrorLayer;

/// How long a new connection may take to send the HTTP/2 preface.
pub(crate) const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    // Bound and listening for signals before it says so: a client started on that line connects.
    let listener = TcpListener::bind(addr).await?;
    let shutdown = shutdown::shutdown_signal()?;
    println!("tonic_server listening on {}", listener.local_addr()?);
    serve(listener, shutdown, PREFACE_TIMEOUT).await
}

/// Serves the echo service on `listener` until `shutdown` completes, then waits for the calls in
/// flight. A connection that has not sent the HTTP/2 preface within `preface_timeout`, or when
/// `shutdown` completes, is closed.
pub(crate) async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    preface_timeout: Duration,
) -> Result<(), BoxError> {
    // hyper waits for a connection's preface without a deadline, and cannot close it gracefully
    // before the preface has come (tonic's graceful shutdown would wait for it forever): the
    // deadline is kept on the connection itself, and ends with the server.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .map(move |conn| conn.map(|io| PrefaceDeadline::new(io, preface_timeout, stopped.clone())));
    tonic::transport::Server::builder()
        // Outermost: every error and panic below becomes a gRPC status.
        .layer(WebhookErrorLayer::new())
        // A deadline for every call: `Elapsed` becomes DEADLINE_EXCEEDED.
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .add_service(echo::EchoService)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The HTTP/2 client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// An accepted connection whose first [`PREFACE_LEN`] bytes must come before a deadline, and
/// before the server stops: a read still waiting for them then fails with `TimedOut`, which ends
/// the connection.
pub(crate) struct PrefaceDeadline {
    io: TcpStream,
    /// The bytes of the preface still to come, and the deadline; `None` once they came.
    deadline: Option<(usize, Pin<Box<dyn Future<Output = ()> + Send>>)>,
}

impl PrefaceDeadline {
    fn new(
        io: TcpStream,
        timeout: Duration,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let deadline = async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
        };
        Self {
            io,
            deadline: Some((PREFACE_LEN, Box::pin(deadline))),
        }
    }
}

impl tonic::transport::server::Connected for PrefaceDeadline {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for PrefaceDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((missing, deadline)) = &mut this.deadline else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                *missing = missing.saturating_sub(buf.filled().len() - before);
                if *missing == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface before the deadline or the shutdown",
                )))
            }
            polled => polled,
        }
    }
}

impl AsyncWrite for PrefaceDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
