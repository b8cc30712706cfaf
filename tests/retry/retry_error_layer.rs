//! The retry policy over a `WebhookErrorLayer`: the layer answers each error of the client below
//! it (a 500, the 503 of a load shedder), and the policy retries that answer as it would the
//! error, not as the status it became. It read the status only: a refused connection answered
//! as a 500 was never sent again, a `GET` whose connection was reset was given up at once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::load_shed::error::Overloaded;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::WebhookErrorLayer;
use tower_webhook::error::ResponseBody;
use tower_webhook::error::{Problem, WebhookProcessingError, types};
use tower_webhook::retry::{ErrorFacts, RetryPolicy};

use crate::retry_connect_timeouts::counting_client;
use crate::unopened::closed_port;

/// The policy of these tests: 3 retries, so a call retried each time is made 4 times.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn request(method: Method) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://upstream.test/repos/o/r/issues/1/comments")
        .body(Full::from("{\"body\":\"LGTM\"}"))
        .unwrap()
}

/// A `POST` to a closed loopback port, through the policy, the error layer and hyper-util's
/// real client: the refused connection, answered as a 500, is tried again, as the refused
/// connection itself would be; the last answer is the layer's problem, which says what the
/// policy read.
#[tokio::test]
async fn a_refused_connection_answered_by_the_error_layer_is_tried_again() {
    let port = closed_port();
    let (client, connects) = counting_client(HttpConnector::new());
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .layer(WebhookErrorLayer::new())
        .map_err(BoxError::from)
        .service(client);
    let req = Request::post(format!("http://127.0.0.1:{port}/comments"))
        .body(Full::from("{\"body\":\"LGTM\"}"))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 4);
    assert!(res.status().is_server_error(), "{}", res.status());
    let answered = res.extensions().get::<ErrorFacts>().expect("kept");
    assert!(answered.was_not_sent(), "{answered:?}");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 500);
}

type Answer = Result<Response<Full<Bytes>>, BoxError>;

/// How many times `method` is sent through `policy`, the error layer and a client that answers
/// each call with `answer()`, and the last answer.
async fn sent_through(
    policy: RetryPolicy,
    method: Method,
    answer: impl Fn() -> Answer + Clone + Send + 'static,
) -> (usize, Response<ResponseBody<Full<Bytes>>>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy.into_layer())
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        });
    let res = svc.oneshot(request(method)).await.unwrap();
    (calls.load(Ordering::SeqCst), res)
}

/// How many times `method` is sent through the policy, the error layer and a client that fails
/// each call with `error()`, and the last answer's status.
async fn attempts(method: Method, error: fn() -> BoxError) -> (usize, StatusCode) {
    let (sent, res) = sent_through(policy(), method, move || Err(error())).await;
    (sent, res.status())
}

/// Each answered error is retried as the error would be: a reset connection only for a `GET`
/// (a `POST` may have been acted on), a load shedder's refusal for a `POST` too (it was never
/// sent), a circuit-open rejection never.
#[tokio::test]
async fn the_error_layer_s_answers_are_retried_as_their_errors() {
    let reset: fn() -> BoxError = || io::Error::from(io::ErrorKind::ConnectionReset).into();
    let overloaded: fn() -> BoxError = || Overloaded::new().into();
    assert_eq!(
        attempts(Method::GET, reset).await,
        (4, StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(
        attempts(Method::POST, reset).await,
        (1, StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(
        attempts(Method::POST, overloaded).await,
        (4, StatusCode::SERVICE_UNAVAILABLE)
    );
}

/// An error the layer answers with a status of its own is read by that status, as any answer:
/// a `Problem` 404 is a verdict, not retried; a retryable processing error's 503 with
/// `Retry-After` is a refusal, retried for a `POST` too, after that wait; a timeout's 504 is
/// not retried once left out with `no_retry_on_status`.
#[tokio::test(start_paused = true)]
async fn errors_answered_with_their_own_status_are_read_by_it() {
    let not_found: fn() -> BoxError = || Problem::new(StatusCode::NOT_FOUND).into();
    assert_eq!(
        attempts(Method::GET, not_found).await,
        (1, StatusCode::NOT_FOUND)
    );
    let busy: fn() -> BoxError =
        || WebhookProcessingError::retryable("busy", Duration::from_secs(2)).into();
    let started = tokio::time::Instant::now();
    assert_eq!(
        attempts(Method::POST, busy).await,
        (4, StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(6),
        "each wait as asked"
    );

    let (sent, res) = sent_through(
        policy().no_retry_on_status(StatusCode::GATEWAY_TIMEOUT),
        Method::GET,
        || Err(tower::timeout::error::Elapsed::new().into()),
    )
    .await;
    assert_eq!((sent, res.status()), (1, StatusCode::GATEWAY_TIMEOUT));
    assert!(res.extensions().get::<ErrorFacts>().is_none());
}

/// Answers that were no error are read as before: a 500 the client answered (no error below
/// the layer) by its status, which is not retried; a circuit-open rejection is never retried.
#[tokio::test]
async fn answers_that_were_no_error_are_read_by_their_status() {
    let (sent, res) = sent_through(policy(), Method::GET, || {
        let mut res = Response::new(Full::<Bytes>::default());
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok(res)
    })
    .await;
    assert_eq!((sent, res.status()), (1, StatusCode::INTERNAL_SERVER_ERROR));
    assert!(res.extensions().get::<ErrorFacts>().is_none());

    let (breaker, handle) = tower_webhook::circuit_breaker::CircuitBreakerLayer::pair(
        tower_webhook::circuit_breaker::CircuitBreakerConfig::default(),
    )
    .unwrap();
    handle.transition_to_open().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .layer(WebhookErrorLayer::new())
        .layer(breaker)
        .service_fn(move |_: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Response::new(Full::<Bytes>::default())) }
        });
    let res = svc.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], types::CIRCUIT_OPEN);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(handle.snapshot().not_permitted_calls, 1, "not retried");
}
