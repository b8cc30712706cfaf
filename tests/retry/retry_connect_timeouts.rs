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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

/// Each connect attempt waits this long before the client gives it up.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// A loopback listener that takes no more connections: its queue is held by connections it
/// never accepts, so the kernel drops further attempts. Keep both for the test.
async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Linux queues one connection for a backlog of 0; more are tried in case a kernel queues more.
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(conn) => queued.push(conn.unwrap()),
            Err(_) => return (listener, queued),
        }
    }
    panic!("the listener's queue never filled");
}

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// Whether an I/O error of `kind` is in the source chain of `err`.
fn has_io_error(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == kind)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A `POST` whose connection timed out is sent again, through hyper-util's client, up to the
/// maximum: the connect error says no connection was had, whatever its cause. It used to be
/// sent once, as only a refused connection or an unreachable host counted as never sent.
#[tokio::test]
async fn a_post_whose_connection_timed_out_is_sent_again_with_hyper_utils_client() {
    let (listener, _queued) = full_listener().await;
    let port = listener.local_addr().unwrap().port();
    let connects = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connects);
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = tower::service_fn(move |uri: Uri| {
        count.fetch_add(1, Ordering::SeqCst);
        let mut http = http.clone();
        Box::pin(async move { tower::Service::call(&mut http, uri).await })
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .map_err(BoxError::from)
        .service(client);
    let req = Request::post(format!(
        "http://127.0.0.1:{port}/repos/o/r/issues/1/comments"
    ))
    .body(Full::from("{\"body\":\"LGTM\"}"))
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("the listener takes no connection");
    assert_eq!(err.to_string(), "client error (Connect)");
    assert!(has_io_error(&*err, std::io::ErrorKind::TimedOut), "{err:?}");
    assert_eq!(connects.load(Ordering::SeqCst), 3);
}

/// The same through a tonic channel: the call's `UNAVAILABLE` keeps tonic's `ConnectError` in
/// its source chain, and the call, a `POST`, is made again up to the maximum.
#[tokio::test]
async fn a_grpc_call_whose_connection_timed_out_is_made_again_through_tonic() {
    let (listener, _queued) = full_listener().await;
    let port = listener.local_addr().unwrap().port();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service_fn(move |_: Request<()>| {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut client = tonic::client::Grpc::new(channel.clone());
            async move {
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
        });
    let req = Request::post("/test.Pinger/Ping").body(()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("the listener takes no connection");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let mut source = std::error::Error::source(&status);
    let mut connect_error = false;
    while let Some(e) = source {
        connect_error |= e.is::<tonic::ConnectError>();
        source = e.source();
    }
    assert!(connect_error, "{status:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A tonic call answered `UNAVAILABLE` by the upstream itself (no transport error below it) is
/// still made once: the upstream may have acted on it.
#[tokio::test]
async fn an_answered_unavailable_is_not_taken_for_a_connect_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service_fn(move |_: Request<()>| {
            seen.fetch_add(1, Ordering::SeqCst);
            // The words of a connect error, but not its type nor its place in a chain.
            async {
                Err::<http::Response<()>, _>(tonic::Status::unavailable("client error (Connect)"))
            }
        });
    let req = Request::post("/test.Pinger/Ping").body(()).unwrap();
    let status = svc.oneshot(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
