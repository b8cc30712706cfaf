//! WebhookErrorLayer on a tonic server: panics, timeouts and rejections from inner layers reach
//! gRPC clients as proper `grpc-status` codes instead of a dropped connection.
//!
//! ```text
//! cargo run --example tonic_server            # listens on 127.0.0.1:50051 (ADDR to change)
//! cargo run --example tonic_client            # in another terminal
//! ```

#[path = "common/echo.rs"]
#[allow(dead_code)] // the client half is used by tonic_client
mod echo;

use std::time::Duration;

use tower::BoxError;
use tower_webhook::error::WebhookErrorLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    println!("tonic_server listening on {addr}");
    tonic::transport::Server::builder()
        // Outermost: every error and panic below becomes a gRPC status.
        .layer(WebhookErrorLayer::new())
        // A deadline for every call: `Elapsed` becomes DEADLINE_EXCEEDED.
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .add_service(echo::EchoService)
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
