//! CircuitBreakerLayer on a tonic `Channel`: gRPC failures (read from `grpc-status`, in headers
//! or trailers) open the breaker, and an open breaker answers `UNAVAILABLE` without a request.
//!
//! ```text
//! cargo run --example tonic_server    # in another terminal, first
//! cargo run --example tonic_client    # ADDR, default 127.0.0.1:50051: another echo server
//! ```
//!
//! Exits non-zero if the calls did not turn out as printed. The last call runs into the
//! server's 2 s deadline.

#[path = "common/echo.rs"]
#[allow(dead_code)] // the server half is used by tonic_server
mod echo;

use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::Code;
use tower::{BoxError, ServiceBuilder};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, OpenDuration,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        // A deadline for every call, so a hung server counts as a failure for the breaker. Longer
        // than the server's own 2 s: a panic holds its call in the panic hook before the server can
        // answer, and with `RUST_BACKTRACE` set the first backtrace alone can take seconds to
        // resolve on a busy machine (the server's deadline cannot cut that short).
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let config = CircuitBreakerConfig::default()
        .name("echo")
        .consecutive_failures(2)
        .open_duration(OpenDuration::Fixed(Duration::from_millis(500)));
    let (breaker, handle) = CircuitBreakerLayer::pair(config)?;
    let mut client =
        tonic::client::Grpc::new(ServiceBuilder::new().layer(breaker).service(channel));

    let mut say = async |message: &str| -> Result<String, tonic::Status> {
        client.ready().await.map_err(tonic::Status::from_error)?;
        let request = tonic::Request::new(echo::Echo {
            message: message.to_owned(),
        });
        let reply = client
            .unary(request, PathAndQuery::from_static(echo::SAY), echo::codec())
            .await;
        let shown = match &reply {
            Ok(r) => format!("OK {:?}", r.get_ref().message),
            Err(s) => format!("{:?} {:?}", s.code(), s.message()),
        };
        println!(
            "say({message:?}) -> {shown:<50} breaker: {}",
            handle.state()
        );
        reply.map(|r| r.into_inner().message)
    };

    let mut ok = say("hello").await.ok().as_deref() == Some("hello");
    // The server's WebhookErrorLayer turns the handler's panic into INTERNAL.
    ok &= say("panic")
        .await
        .is_err_and(|s| s.code() == Code::Internal);
    ok &= say("fail")
        .await
        .is_err_and(|s| s.code() == Code::Unavailable);
    ok &= handle.state() == CircuitState::Open;
    // Rejected by the breaker, without a request.
    ok &= say("hello")
        .await
        .is_err_and(|s| s.code() == Code::Unavailable && s.message().contains("circuit"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    ok &= say("hello again").await.ok().as_deref() == Some("hello again");
    ok &= handle.state() == CircuitState::Closed;
    // The server's TimeoutLayer: `Elapsed` reaches the client as DEADLINE_EXCEEDED.
    ok &= say("slow")
        .await
        .is_err_and(|s| s.code() == Code::DeadlineExceeded);
    if ok {
        println!("all calls turned out as expected");
        Ok(())
    } else {
        Err("unexpected results, see above".into())
    }
}
