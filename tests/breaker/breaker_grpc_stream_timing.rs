//! The slow-call rule on gRPC streams, end to end on 127.0.0.1: tonic's server code streams the
//! answer over a hyper HTTP/2 connection, and a real tonic client reads it through the breaker
//! around its `Channel`. A stream is timed to its head, when the upstream has answered, not to
//! its trailers: a long-lived stream is not slow for lasting, and a late head still is.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;
use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Snapshot};

use crate::circuit_breaker_e2e::channel_to;
use crate::hyper_one::{Http, serve_one};

/// Above this, a call is slow: a second, so that a head that comes at once does not count as
/// slow on a loaded machine.
const SLOW: Duration = Duration::from_secs(1);
const TICK: &str = "/test.Ticker/Tick";

/// The request: how long the server waits before it answers (its head), and how long the
/// stream then lasts between its two messages.
#[derive(Clone, PartialEq, prost::Message)]
struct Tick {
    #[prost(uint64, tag = "1")]
    head_after_ms: u64,
    #[prost(uint64, tag = "2")]
    lasts_ms: u64,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct TickStream;

impl tonic::server::ServerStreamingService<Tick> for TickStream {
    type Response = Tick;
    type ResponseStream = BoxStream<'static, Result<Tick, tonic::Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Tick>) -> Self::Future {
        let tick = request.into_inner();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(tick.head_after_ms)).await;
            let lasts = Duration::from_millis(tick.lasts_ms);
            let first = stream::iter([Ok(tick.clone())]);
            let second = stream::once(async move {
                tokio::time::sleep(lasts).await;
                Ok(tick)
            });
            Ok(tonic::Response::new(first.chain(second).boxed()))
        })
    }
}

#[tokio::test]
async fn a_grpc_stream_is_timed_to_its_head_not_to_its_trailers() {
    // A hyper HTTP/2 connection whose whole app is the streaming method.
    let addr = serve_one(
        Http::Two,
        tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Tick, Tick>::default());
            Ok::<_, Infallible>(grpc.server_streaming(TickStream, req).await)
        }),
    )
    .await;

    let channel = channel_to(addr).await;
    // Only the slow-call rule, with room for both calls before it could open.
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(0)
        .slow_call_rate_threshold(100.0, SLOW)
        .minimum_calls(10);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut client = tonic::client::Grpc::new(ServiceBuilder::new().layer(layer).service(channel));

    // Reads the whole stream, trailers included, and says how long that took.
    let mut watch = async |tick: Tick| -> (Duration, Snapshot) {
        let started = tokio::time::Instant::now();
        let read = async {
            client.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(TICK);
            let codec = ProstCodec::<Tick, Tick>::default();
            let mut stream = client
                .server_streaming(tonic::Request::new(tick.clone()), path, codec)
                .await
                .unwrap()
                .into_inner();
            let mut received = 0;
            while let Some(message) = stream.message().await.unwrap() {
                assert_eq!(message, tick);
                received += 1;
            }
            assert_eq!(
                received, 2,
                "both messages, then the trailers with grpc-status 0"
            );
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        (started.elapsed(), handle.snapshot())
    };

    // An answer at once, then a stream that lasts three times the slow-call limit.
    let (took, snapshot) = watch(Tick {
        head_after_ms: 0,
        lasts_ms: 3 * SLOW.as_millis() as u64,
    })
    .await;
    assert!(took > SLOW, "the stream lasted {took:?}");
    assert_eq!(snapshot.successful_calls, 1, "{snapshot:?}");
    assert_eq!(snapshot.slow_calls, 0, "timed to its head: {snapshot:?}");

    // An upstream that is slow to answer at all: its head comes late, the call is slow.
    let (_, snapshot) = watch(Tick {
        head_after_ms: 2 * SLOW.as_millis() as u64,
        lasts_ms: 0,
    })
    .await;
    assert_eq!(snapshot.successful_calls, 2, "{snapshot:?}");
    assert_eq!(snapshot.slow_calls, 1, "a late head is slow: {snapshot:?}");
}
