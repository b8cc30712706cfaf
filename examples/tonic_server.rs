//! WebhookErrorLayer on a tonic server: panics, timeouts and rejections from inner layers reach
//! gRPC clients as proper `grpc-status` codes instead of a dropped connection.
//!
//! ```text
//! cargo run --example tonic_server            # listens on 127.0.0.1:50051 (ADDR to change)
//! cargo run --example tonic_client            # in another terminal
//! ```
//!
//! The call `"slow"` runs into the 2 s deadline (`DEADLINE_EXCEEDED`). Ctrl-C or `SIGTERM` stops
//! the server gracefully: calls in flight are answered first (for up to 10 s; then the
//! connections still open are closed, one gone silent after its preface included, which would
//! hold the graceful shutdown until its ping timed out). A connection that has not sent the
//! HTTP/2 preface within 10 s, or by the time the server stops, is closed: without that, one that
//! sends nothing would be held forever, and would hold up the graceful shutdown forever too. An
//! idle connection is pinged every 30 s, and closed if it does not answer within 30 s.

#[path = "common/echo.rs"]
#[allow(dead_code)] // the client half is used by tonic_client
mod echo;
#[path = "common/preface.rs"]
mod preface;
#[path = "common/shutdown.rs"]
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use preface::PrefaceDeadline;
use tokio::net::TcpListener;
use tower::BoxError;
use tower_webhook::error::WebhookErrorLayer;

/// How long a new connection may take to send the HTTP/2 preface.
pub(crate) const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection is pinged, and how long its answer may take.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long the calls in flight have to finish once the server is told to stop.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Colours only on a terminal, and not with `NO_COLOR`: in a file or a pipe the escape
    // sequences would sit between each field's name and its value.
    let colors = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(colors)
        .init();
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()
        .map_err(|err| format!("ADDR is not an address and port (e.g. 127.0.0.1:50051): {err}"))?;
    // Bound and listening for signals before it says so: a client started on that line connects.
    let listener = TcpListener::bind(addr).await?;
    let shutdown = shutdown::shutdown_signal()?;
    println!("tonic_server listening on {}", listener.local_addr()?);
    serve(listener, shutdown, PREFACE_TIMEOUT, KEEPALIVE).await
}

/// Serves the echo service on `listener` until `shutdown` completes, then waits for the calls in
/// flight, for up to [`GRACE`]. A connection that has not sent the HTTP/2 preface within
/// `preface_timeout`, or when `shutdown` completes, is closed; so is one that does not answer a
/// ping within `keepalive` (an idle connection is pinged every `keepalive`).
pub(crate) async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    preface_timeout: Duration,
    keepalive: Duration,
) -> Result<(), BoxError> {
    // hyper waits for a connection's preface without a deadline, and cannot close it gracefully
    // before the preface has come (tonic's graceful shutdown would wait for it forever): the
    // deadline is kept on the connection itself, and ends with the server.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut grace = stopped.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).map(move |conn| {
        let mut stopped = stopped.clone();
        let deadline = async move {
            tokio::select! {
                () = tokio::time::sleep(preface_timeout) => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
        };
        conn.map(|io| PrefaceDeadline::new(io, deadline))
    });
    let server = tonic::transport::Server::builder()
        // A peer gone silent after the preface (or gone for good) is found by its pings.
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        // Outermost: every error and panic below becomes a gRPC status.
        .layer(WebhookErrorLayer::new())
        // A deadline for every call: `Elapsed` becomes DEADLINE_EXCEEDED.
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .add_service(echo::EchoService)
        .serve_with_incoming_shutdown(incoming, shutdown);
    let grace_over = async move {
        let _ = grace.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace_over => tracing::warn!(
            "connections still open {} s after the shutdown signal: closing them",
            GRACE.as_secs()
        ),
    }
    Ok(())
}

impl tonic::transport::server::Connected for PrefaceDeadline {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
