//! End to end on 127.0.0.1: the breaker around a real `reqwest::Client` calling an axum server
//! that fails on command, and around a real tonic `Channel` calling a tonic server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, OpenDuration,
};
use tower_webhook::retry::RetryPolicy;

#[derive(Clone, Default)]
struct Upstream {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn work(State(up): State<Upstream>) -> (StatusCode, &'static str) {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if up.failing.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "down")
    } else {
        (StatusCode::OK, "done")
    }
}

async fn start_axum() -> (String, Upstream) {
    let upstream = Upstream::default();
    let app =
        Router::new()
            .route("/work", get(work))
            .route(
                "/control/fail",
                post(|State(up): State<Upstream>| async move {
                    up.failing.store(true, Ordering::SeqCst)
                }),
            )
            .route(
                "/control/recover",
                post(|State(up): State<Upstream>| async move {
                    up.failing.store(false, Ordering::SeqCst)
                }),
            )
            .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), upstream)
}

fn timeout<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(10), f)
}

/// A tonic channel to the gRPC server at `addr` on loopback, connected (within 10 s).
pub(crate) async fn channel_to(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    timeout(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Long enough that no stall of a loaded machine ends it between the trip and the refusal the
/// tests expect; the tests move the clock past it rather than wait it out.
const OPEN_FOR: Duration = Duration::from_secs(5);

/// Moves the runtime's clock (the breaker's clock) past [`OPEN_FOR`]. The clock is paused only
/// for the jump: the requests around it run in real time over real sockets.
async fn pass_open_duration() {
    tokio::time::pause();
    tokio::time::advance(OPEN_FOR + Duration::from_millis(1)).await;
    tokio::time::resume();
}

#[tokio::test]
async fn reqwest_client_behind_the_breaker() {
    let (base, upstream) = start_axum().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let config = CircuitBreakerConfig::default()
        .name("axum-upstream")
        .consecutive_failures(2)
        .open_duration(OpenDuration::Fixed(OPEN_FOR));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(client.clone());
    let get = |base: &str| {
        reqwest::Request::new(
            reqwest::Method::GET,
            format!("{base}/work").parse().unwrap(),
        )
    };

    let res = timeout(svc.ready().await.unwrap().call(get(&base)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");

    // The server fails on command: two 503s open the breaker.
    client
        .post(format!("{base}/control/fail"))
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        let res = timeout(svc.ready().await.unwrap().call(get(&base)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let hits = upstream.hits.load(Ordering::SeqCst);
    let err = timeout(svc.ready().await.unwrap().call(get(&base)))
        .await
        .unwrap()
        .unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert!(open.retry_after().unwrap() <= OPEN_FOR);
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        hits,
        "an open breaker called the server"
    );

    // Recovered: after the open duration one probe closes the breaker.
    client
        .post(format!("{base}/control/recover"))
        .send()
        .await
        .unwrap();
    pass_open_duration().await;
    let res = timeout(svc.ready().await.unwrap().call(get(&base)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

#[tokio::test]
async fn retry_outside_the_breaker_over_reqwest_stops_at_circuit_open() {
    let (base, upstream) = start_axum().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    client
        .post(format!("{base}/control/fail"))
        .send()
        .await
        .unwrap();
    let config = CircuitBreakerConfig::default().consecutive_failures(2);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::new()
                .max_retries(5)
                .backoff(Duration::from_millis(1), Duration::from_millis(5))
                .into_layer(),
        )
        .layer(layer)
        .service(client);
    let req = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}/work").parse().unwrap(),
    );
    let err = timeout(svc.oneshot(req)).await.unwrap().unwrap_err();
    // Two attempts reached the server, opened the breaker, and the third attempt's rejection
    // was not retried.
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

// ---------------------------------------------------------------- tonic

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

#[derive(Clone, Default)]
struct PingServer {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for PingServer {
    const NAME: &'static str = "test.Pinger";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct PingUnary(PingServer);

impl tonic::server::UnaryService<Ping> for PingUnary {
    type Response = Ping;
    type Future = BoxFuture<Result<tonic::Response<Ping>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Ping>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            server.hits.fetch_add(1, Ordering::SeqCst);
            if server.failing.load(Ordering::SeqCst) {
                return Err(tonic::Status::unavailable("upstream is down"));
            }
            Ok(tonic::Response::new(Ping {
                text: format!("pong: {}", request.into_inner().text),
            }))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for PingServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<Ping, Ping>::default());
            Ok(grpc.unary(PingUnary(server), req).await)
        })
    }
}

#[tokio::test]
async fn tonic_channel_behind_the_breaker_sees_unavailable() {
    let server = PingServer::default();
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(server.clone());
    tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });

    let channel = channel_to(addr).await;
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(2)
        .open_duration(OpenDuration::Fixed(OPEN_FOR));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut client = tonic::client::Grpc::new(ServiceBuilder::new().layer(layer).service(channel));
    let path = http::uri::PathAndQuery::from_static("/test.Pinger/Ping");
    let mut ping = async |text: &str| {
        client.ready().await.map_err(tonic::Status::from_error)?;
        timeout(client.unary(
            tonic::Request::new(Ping {
                text: text.to_owned(),
            }),
            path.clone(),
            tonic_prost::ProstCodec::<Ping, Ping>::default(),
        ))
        .await
        .unwrap()
    };

    // Success: grpc-status 0 arrives in the trailers, read by tonic at the end of the body.
    let reply = ping("hi").await.unwrap();
    assert_eq!(reply.into_inner().text, "pong: hi");
    assert_eq!(handle.snapshot().buffered_calls, 1);
    assert_eq!(handle.snapshot().failed_calls, 0);

    server.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let status = ping("hi").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "upstream is down");
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let hits = server.hits.load(Ordering::SeqCst);
    // The breaker's rejection reaches the tonic client as Unavailable, without a request.
    let status = ping("hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "circuit breaker is open");
    assert_eq!(server.hits.load(Ordering::SeqCst), hits);

    // Recovery through a probe whose verdict comes from the trailers.
    server.failing.store(false, Ordering::SeqCst);
    pass_open_duration().await;
    ping("again").await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}
