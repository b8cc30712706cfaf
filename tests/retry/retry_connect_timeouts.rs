//! The retry policy: a connection that could not be opened in time was never sent a request,
//! so even a `POST` is sent again. The connect timeout is real: the upstream is a loopback
//! listener whose accept queue is full, which the kernel answers by dropping the connection
//! attempts (no SYN-ACK), so the client's connect waits until its own timeout ends it.
//!
//! The clients are the real ones: hyper-util's legacy client with its `HttpConnector`, whose
//! connect error the policy tells by its message, and a tonic channel, whose `ConnectError`
//! ends up in the source chain of the call's `UNAVAILABLE` status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

use crate::unopened::unopened_address;

/// Each connect attempt waits this long before the client gives it up.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// The policy of these tests: 2 retries, so a call never sent is made 3 times.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// A `POST` to `url` through the policy and hyper-util's client with its `HttpConnector`
/// (connect timeout [`CONNECT_TIMEOUT`]), which fails: its error, and how many connections the
/// client tried to open.
pub(crate) async fn post_with_http_connector(url: String) -> (BoxError, usize) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let (client, connects) = counting_client(http);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .map_err(BoxError::from)
        .service(client);
    let req = Request::post(url)
        .body(Full::from("{\"body\":\"LGTM\"}"))
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("no connection opens");
    (err, connects.load(Ordering::SeqCst))
}

/// hyper-util's client over `http`, and how many connections it tried to open.
pub(crate) fn counting_client(
    http: HttpConnector,
) -> (
    Client<impl Connect + Clone + Send + Sync + 'static, Full<Bytes>>,
    Arc<AtomicUsize>,
) {
    let connects = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connects);
    let connector = tower::service_fn(move |uri: Uri| {
        count.fetch_add(1, Ordering::SeqCst);
        let mut http = http.clone();
        Box::pin(async move { tower::Service::call(&mut http, uri).await })
    });
    (
        Client::builder(TokioExecutor::new()).build(connector),
        connects,
    )
}

/// A unary call to `/test.Pinger/Ping` over `channel`, as a service of `http::Request<()>` (the
/// message) returning `tonic::Status` would make it; `calls` counts the calls made.
pub(crate) async fn ping(
    channel: tonic::transport::Channel,
    calls: &AtomicUsize,
) -> Result<http::Response<()>, tonic::Status> {
    calls.fetch_add(1, Ordering::SeqCst);
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    let path = http::uri::PathAndQuery::from_static("/test.Pinger/Ping");
    client
        .unary(
            tonic::Request::new(()),
            path,
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .map(|_| http::Response::new(()))
}

/// Whether an error for which `test` holds is in the source chain of `err`.
fn in_chain(
    err: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(test)
}

/// A `POST` whose connection timed out is sent again, through hyper-util's client, up to the
/// maximum: the connect error says no connection was had, whatever its cause. It used to be
/// sent once, as only a refused connection or an unreachable host counted as never sent.
#[tokio::test]
async fn a_post_whose_connection_timed_out_is_sent_again_with_hyper_utils_client() {
    let (addr, _listener, _held) = unopened_address().await;
    let (err, connects) =
        post_with_http_connector(format!("http://{addr}/repos/o/r/issues/1/comments")).await;
    assert_eq!(err.to_string(), "client error (Connect)");
    let timed_out = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    };
    assert!(in_chain(&*err, timed_out), "{err:?}");
    assert_eq!(connects, 3);
}

/// The same through a tonic channel: the call's `UNAVAILABLE` keeps tonic's `ConnectError` in
/// its source chain, and the call, a `POST`, is made again up to the maximum.
#[tokio::test]
async fn a_grpc_call_whose_connection_timed_out_is_made_again_through_tonic() {
    let (addr, _listener, _held) = unopened_address().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service_fn(move |_: Request<()>| {
            let (channel, seen) = (channel.clone(), Arc::clone(&seen));
            async move { ping(channel, &seen).await }
        });
    let req = Request::post("/test.Pinger/Ping").body(()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("no connection opens");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        in_chain(&status, |e| e.is::<tonic::ConnectError>()),
        "{status:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A tonic call answered `UNAVAILABLE` by the upstream itself (no transport error below it) is
/// still made once, though its message has the words of a connect error: the upstream may have
/// acted on it.
#[tokio::test]
async fn an_answered_unavailable_is_not_taken_for_a_connect_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service_fn(move |_: Request<()>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<http::Response<()>, _>(tonic::Status::unavailable("client error (Connect)"))
            }
        });
    let req = Request::post("/test.Pinger/Ping").body(()).unwrap();
    let status = svc.oneshot(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A request hyper-util's client refuses before any connection (a path with no scheme and host)
/// is tried once: it would be refused the same way each time, and each retry would take from
/// the budget that the upstream's real failures share. It was tried four times.
#[tokio::test]
async fn a_request_hyper_utils_client_refuses_to_send_is_tried_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let svc = ServiceBuilder::new()
        .layer(policy().max_retries(3).into_layer())
        .map_request(move |req: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            req
        })
        .map_err(BoxError::from)
        .service(client);
    let req = Request::get("/repos/o/r/pulls/1")
        .body(Full::default())
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("not sent");
    assert_eq!(err.to_string(), "client error (UserAbsoluteUriRequired)");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
