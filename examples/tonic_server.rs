//! WebhookErrorLayer on a tonic server: panics, timeouts and rejections from inner layers reach
//! gRPC clients as proper `grpc-status` codes instead of a dropped connection.
//!
//! ```text
//! cargo run --example tonic_server            # listens on 127.0.0.1:50051 (ADDR to change)
//! cargo run --example tonic_client            # in another terminal
//! ```
//!
//! The call `"slow"` runs into the 2 s deadline (`DEADLINE_EXCEEDED`). Ctrl-C or `SIGTERM` stops
//! the server gracefully: calls in flight are answered first.

#[path = "common/echo.rs"]
#[allow(dead_code)] // the client half is used by tonic_client
mod echo;
#[path = "common/shutdown.rs"]
mod shutdown;

use std::net::SocketAddr;
use std::time::Duration;

use tower::BoxError;
use tower_webhook::error::WebhookErrorLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    // Bound and listening for signals before it says so: a client started on that line connects.
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let shutdown = shutdown::shutdown_signal()?;
    println!("tonic_server listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        // Outermost: every error and panic below becomes a gRPC status.
        .layer(WebhookErrorLayer::new())
        // A deadline for every call: `Elapsed` becomes DEADLINE_EXCEEDED.
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .add_service(echo::EchoService)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await?;
    Ok(())
}
