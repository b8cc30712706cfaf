//! The retry policy through `tower::retry`, with paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::retry::budget::TpsBudget;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState,
};
use tower_webhook::retry::{RetryAllowed, RetryPolicy};

type Body = Full<Bytes>;

/// An upstream that answers the scripted statuses in turn (the last one forever; 0 = an error)
/// and records when each attempt arrived.
#[derive(Clone)]
struct Script {
    statuses: Arc<Vec<(u16, Option<&'static str>)>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(statuses: &[(u16, Option<&'static str>)]) -> Self {
        Self {
            statuses: Arc::new(statuses.to_vec()),
            attempts: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn count(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let at = self.attempts.lock().unwrap();
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn service(
        &self,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone
    {
        let script = self.clone();
        tower::service_fn(move |_req: Request<Body>| {
            let script = script.clone();
            async move {
                let n = {
                    let mut at = script.attempts.lock().unwrap();
                    at.push(Instant::now());
                    at.len() - 1
                };
                let (status, retry_after) = script.statuses[n.min(script.statuses.len() - 1)];
                if status == 0 {
                    return Err::<Response<Body>, BoxError>("connection reset".into());
                }
                let mut res = Response::new(Full::default());
                *res.status_mut() = StatusCode::from_u16(status)?;
                if let Some(after) = retry_after {
                    res.headers_mut().insert("retry-after", after.parse()?);
                }
                Ok(res)
            }
        })
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy::new().backoff(Duration::from_millis(100), Duration::from_secs(1))
}

async fn run(
    policy: RetryPolicy,
    script: &Script,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    ServiceBuilder::new()
        .layer(policy.into_layer())
        .service(script.service())
        .oneshot(req)
        .await
}

fn get() -> Request<Body> {
    Request::get("http://upstream/x")
        .body(Full::default())
        .unwrap()
}

fn post() -> Request<Body> {
    Request::post("http://upstream/x")
        .body(Full::from("payload"))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_transient_failures_with_capped_full_jitter() {
    let script = Script::new(&[
        (503, None),
        (502, None),
        (0, None),
        (504, None),
        (200, None),
    ]);
    let res = run(fast().max_retries(5), &script, get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(script.count(), 5);
    let gaps = script.gaps();
    for (k, gap) in gaps.iter().enumerate() {
        let max = Duration::from_millis(100 * (1 << k)).min(Duration::from_secs(1));
        assert!(*gap <= max, "delay {k} was {gap:?}, above {max:?}");
    }
    assert_eq!(fast().max_delay(10), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_and_on_non_retryable_statuses() {
    let script = Script::new(&[(503, None)]);
    let res = run(fast().max_retries(2), &script, get()).await.unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (503, 3));

    for status in [500, 404, 400] {
        let script = Script::new(&[(status, None), (200, None)]);
        let res = run(fast(), &script, get()).await.unwrap();
        assert_eq!((res.status().as_u16(), script.count()), (status, 1));
    }
    let script = Script::new(&[(500, None), (200, None)]);
    let res = run(
        fast().retry_on_status(StatusCode::INTERNAL_SERVER_ERROR),
        &script,
        get(),
    )
    .await
    .unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (200, 2));
    let script = Script::new(&[(429, None), (200, None)]);
    let res = run(
        fast().no_retry_on_status(StatusCode::TOO_MANY_REQUESTS),
        &script,
        get(),
    )
    .await
    .unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (429, 1));
}

#[tokio::test(start_paused = true)]
async fn retries_only_idempotent_or_explicitly_allowed_requests() {
    let script = Script::new(&[(503, None), (200, None)]);
    let res = run(fast(), &script, post()).await.unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (503, 1));

    let script = Script::new(&[(503, None), (200, None)]);
    let mut req = post();
    req.headers_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    assert_eq!(run(fast(), &script, req).await.unwrap().status(), 200);

    let script = Script::new(&[(503, None), (200, None)]);
    let mut req = post();
    req.extensions_mut().insert(RetryAllowed);
    assert_eq!(run(fast(), &script, req).await.unwrap().status(), 200);

    let script = Script::new(&[(503, None), (200, None)]);
    assert_eq!(
        run(fast().retry_non_idempotent(), &script, post())
            .await
            .unwrap()
            .status(),
        200
    );

    for method in ["PUT", "DELETE", "HEAD", "OPTIONS"] {
        let script = Script::new(&[(503, None), (200, None)]);
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Full::default())
            .unwrap();
        assert_eq!(
            run(fast(), &script, req).await.unwrap().status(),
            200,
            "{method}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_the_upstream_did_not_act_on_is_sent_again_whatever_its_method() {
    // Refusals: the upstream did not act on the POST, so sending it again is safe. A 408 says
    // the server gave up before it had the whole request.
    for refusal in [(429, None), (429, Some("1")), (503, Some("1")), (408, None)] {
        let script = Script::new(&[refusal, (201, None)]);
        let res = run(fast(), &script, post()).await.unwrap();
        assert_eq!(
            (res.status().as_u16(), script.count()),
            (201, 2),
            "{refusal:?}"
        );
    }
    // Failures that may come after the upstream acted: the POST is not sent twice.
    for failure in [(503, None), (502, None), (504, None), (0, None)] {
        let script = Script::new(&[failure, (201, None)]);
        let res = run(fast(), &script, post()).await;
        assert_eq!(script.count(), 1, "{failure:?}");
        assert_eq!(
            res.ok().map(|r| r.status().as_u16()),
            (failure.0 != 0).then_some(failure.0)
        );
    }

    // An error only a connection attempt fails with, wrapped in another error: sent again.
    // "No route to the host or network" is not such an error by itself (Linux fails the read of
    // a connection whose host went away with it too): only under a connect error.
    #[derive(Debug)]
    struct Connect(std::io::Error);
    impl std::fmt::Display for Connect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("could not connect")
        }
    }
    impl std::error::Error for Connect {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    for (kind, attempts) in [
        (std::io::ErrorKind::ConnectionRefused, 4),
        (std::io::ErrorKind::HostUnreachable, 1),
        (std::io::ErrorKind::NetworkUnreachable, 1),
        (std::io::ErrorKind::AddrNotAvailable, 4),
        (std::io::ErrorKind::ConnectionReset, 1),
        (std::io::ErrorKind::TimedOut, 1),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let err = ServiceBuilder::new()
            .layer(fast().into_layer())
            .service_fn(move |_: Request<Body>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move { Err::<Response<Body>, BoxError>(Connect(kind.into()).into()) }
            })
            .oneshot(post())
            .await
            .unwrap_err();
        assert!(err.is::<Connect>());
        assert_eq!(calls.load(Ordering::SeqCst), attempts, "{kind:?}");
    }
}

/// reqwest's connect errors are recognised too: a POST to a closed loopback port is tried again,
/// up to the maximum.
#[tokio::test]
async fn a_reqwest_post_that_could_not_connect_is_tried_again() {
    let port = crate::unopened::closed_port();
    let (svc, attempts) = counted_reqwest(2);
    let url = format!("http://127.0.0.1:{port}/comments").parse().unwrap();
    let mut req = reqwest::Request::new(http::Method::POST, url);
    *req.body_mut() = Some("{}".into());
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn honors_retry_after_up_to_a_maximum() {
    let script = Script::new(&[(429, Some("7")), (200, None)]);
    let res = run(fast(), &script, get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(script.gaps(), [Duration::from_secs(7)]);

    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    let date: &'static str = Box::leak(date.into_boxed_str());
    let script = Script::new(&[(503, Some(date)), (200, None)]);
    run(fast(), &script, get()).await.unwrap();
    let gap = script.gaps()[0];
    assert!(
        gap > Duration::from_secs(28) && gap <= Duration::from_secs(30),
        "{gap:?}"
    );

    // Longer than the policy is willing to wait: the 503 is returned as is. Delta-seconds
    // beyond `u64` are very long too, not unreadable (which would retry on backoff).
    for after in ["3600", "99999999999999999999"] {
        let script = Script::new(&[(503, Some(after)), (200, None)]);
        let res = run(
            fast().max_retry_after(Duration::from_secs(60)),
            &script,
            get(),
        )
        .await
        .unwrap();
        assert_eq!((res.status().as_u16(), script.count()), (503, 1), "{after}");
    }
}

/// `Retry-After: 0`, or a date already past (a clock ahead of the upstream's), asks for no
/// wait: the policy keeps its backoff rather than retrying with no pause at all.
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_zero_keeps_the_backoff() {
    let past = "Wed, 21 Oct 2015 07:28:00 GMT";
    for (status, after) in [(503, "0"), (429, "0"), (503, past)] {
        let script = Script::new(&[(status, Some(after)), (status, Some(after)), (200, None)]);
        let res = run(fast(), &script, post()).await.unwrap();
        assert_eq!((res.status().as_u16(), script.count()), (200, 3), "{after}");
        for (k, gap) in script.gaps().into_iter().enumerate() {
            let max = Duration::from_millis(100 << k);
            assert!(
                gap > Duration::ZERO && gap <= max,
                "{status} {after}: delay {k} was {gap:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn never_retries_a_circuit_open_rejection() {
    let script = Script::new(&[(200, None)]);
    let (breaker, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    handle.transition_to_forced_open().unwrap();
    let started = Instant::now();
    let err = ServiceBuilder::new()
        .layer(fast().max_retries(5).into_layer())
        .layer(breaker)
        .service(script.service())
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(script.count(), 0);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

/// A rejection an I/O interface wrapped (`io::Error::other`, as a body read through
/// `AsyncRead` or an app's own `io::Result` carries it) is recognised too: that `io::Error`'s
/// `source()` skips the rejection, so the policy looks into it. It was retried with backoff.
#[tokio::test(start_paused = true)]
async fn never_retries_a_circuit_open_rejection_wrapped_in_an_io_error() {
    let script = Script::new(&[(200, None)]);
    let (breaker, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    handle.transition_to_forced_open().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let err = ServiceBuilder::new()
        .layer(fast().max_retries(5).into_layer())
        .map_err(|err: BoxError| -> BoxError {
            seen.fetch_add(1, Ordering::SeqCst);
            Box::new(std::io::Error::other(err))
        })
        .layer(breaker)
        .service(script.service())
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert!(CircuitOpen::is_in(&*err));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

/// A rejection turned into a `tonic::Status` with the crate's `From<CircuitOpen>` (a service
/// whose errors are `tonic::Status`) is recognised too, and not retried.
#[tokio::test(start_paused = true)]
async fn never_retries_a_circuit_open_rejection_turned_into_a_tonic_status() {
    let script = Script::new(&[(200, None)]);
    let (breaker, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    handle.transition_to_open().unwrap();
    let started = Instant::now();
    let status = ServiceBuilder::new()
        .layer(fast().max_retries(5).into_layer())
        .map_err(|err: BoxError| match err.downcast::<CircuitOpen>() {
            Ok(open) => tonic::Status::from(*open),
            Err(err) => tonic::Status::from_error(err),
        })
        .layer(breaker)
        .service(script.service())
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().starts_with("circuit breaker is OPEN"));
    assert_eq!(handle.snapshot().not_permitted_calls, 1, "not retried");
    assert_eq!(started.elapsed(), Duration::ZERO);
    let open = CircuitOpen::find(&status).expect("the rejection is in the chain");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
}

/// A rejection the error layer below the policy already turned into its answer (a 503 with
/// `Retry-After` and the `circuit-open` problem) is recognised by that problem, and not sent
/// again: read as a 503 that says it did nothing, a `POST` went again after the open wait.
#[tokio::test(start_paused = true)]
async fn never_retries_a_circuit_open_rejection_the_error_layer_answered() {
    for request in [post(), get()] {
        let script = Script::new(&[(200, None)]);
        let (breaker, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
        handle.transition_to_open().unwrap();
        let started = Instant::now();
        let res = ServiceBuilder::new()
            .layer(
                fast()
                    .max_retries(5)
                    .max_retry_after(Duration::from_secs(60))
                    .into_layer(),
            )
            .layer(tower_webhook::WebhookErrorLayer::new())
            .layer(breaker)
            .service(script.service())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "30");
        assert_eq!(script.count(), 0);
        assert_eq!(handle.snapshot().not_permitted_calls, 1, "not retried");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries() {
    let script = Script::new(&[(503, None), (200, None)]);
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 0.0));
    let res = run(fast().budget(budget), &script, get()).await.unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (503, 1));

    // Deposits of earlier calls pay for retries: 100 % means one retry per call.
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 1.0));
    let script = Script::new(&[(503, None), (200, None)]);
    let res = run(fast().budget(budget), &script, get()).await.unwrap();
    assert_eq!((res.status().as_u16(), script.count()), (200, 2));

    let script = Script::new(&[(503, None), (200, None)]);
    let res = run(fast().without_budget(), &script, get()).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn breaker_outside_retry_sees_one_outcome_per_call() {
    let script = Script::new(&[(503, None)]);
    let (breaker, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(2)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(fast().max_retries(3).into_layer())
        .service(script.service());
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(script.count(), 4);
    assert_eq!(handle.snapshot().failed_calls, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn retry_outside_breaker_counts_every_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (breaker, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(3)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(fast().max_retries(10).into_layer())
        .layer(breaker)
        .service_fn(move |_: Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Err::<Response<Body>, BoxError>("refused".into()) }
        });
    let err = svc.oneshot(get()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A `tonic::Status` the upstream answered (no transport error under it) is a verdict, read like
/// the HTTP status of the same meaning: `UNAVAILABLE` (503) is retried, `PERMISSION_DENIED`
/// (403), `NOT_FOUND` (404), `INVALID_ARGUMENT` (400) ... are not, even for a request marked
/// safe to repeat. A status made from a transport error is still an error like any other.
#[tokio::test(start_paused = true)]
async fn a_grpc_status_error_is_retried_only_when_its_code_is_transient() {
    async fn attempts(make: fn() -> tonic::Status, req: Request<Body>) -> usize {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let res = ServiceBuilder::new()
            .layer(fast().max_retries(3).into_layer())
            .service_fn(move |_: Request<Body>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move { Err::<Response<Body>, tonic::Status>(make()) }
            })
            .oneshot(req)
            .await;
        assert!(res.is_err());
        calls.load(Ordering::SeqCst)
    }
    fn allowed() -> Request<Body> {
        let mut req = post();
        req.extensions_mut().insert(RetryAllowed);
        req
    }
    let cases: [(fn() -> tonic::Status, usize); 10] = [
        (|| tonic::Status::unavailable("draining"), 4),
        (|| tonic::Status::deadline_exceeded("slow"), 4),
        (|| tonic::Status::resource_exhausted("quota"), 4),
        (|| tonic::Status::permission_denied("no"), 1),
        (|| tonic::Status::not_found("no such repo"), 1),
        (|| tonic::Status::invalid_argument("bad"), 1),
        (|| tonic::Status::unauthenticated("who"), 1),
        (|| tonic::Status::already_exists("dup"), 1),
        (|| tonic::Status::unimplemented("nope"), 1),
        (|| tonic::Status::internal("bug"), 1),
    ];
    for (make, expected) in cases {
        assert_eq!(
            attempts(make, allowed()).await,
            expected,
            "{:?}",
            make().code()
        );
        assert_eq!(attempts(make, get()).await, expected, "{:?}", make().code());
    }
    // gRPC calls are POSTs: an answered UNAVAILABLE may come after the upstream acted.
    assert_eq!(
        attempts(|| tonic::Status::unavailable("draining"), post()).await,
        1
    );
    // A status made from a refused connection: nothing was sent, so even the POST goes again.
    let refused = || {
        tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    };
    assert_eq!(attempts(refused, post()).await, 4);
    // The retry policy's own status choices apply: a user who retries 500 retries INTERNAL.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let err = ServiceBuilder::new()
        .layer(
            fast()
                .max_retries(2)
                .retry_on_status(StatusCode::INTERNAL_SERVER_ERROR)
                .no_retry_on_status(StatusCode::SERVICE_UNAVAILABLE)
                .into_layer(),
        )
        .service_fn(move |_: Request<Body>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<Response<Body>, BoxError>(if n == 0 {
                    tonic::Status::internal("bug").into()
                } else {
                    tonic::Status::unavailable("draining").into()
                })
            }
        })
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The answer is the second attempt's UNAVAILABLE, not retried.
    let status = err.downcast_ref::<tonic::Status>().expect("a tonic status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "draining");
}

/// A gRPC "trailers-only" answer is HTTP 200 with `grpc-status` in the headers: the policy
/// reads that code, as it reads an error's.
#[tokio::test(start_paused = true)]
async fn a_trailers_only_grpc_answer_is_read_by_its_grpc_status() {
    async fn attempts(codes: &'static [&'static str], mark: bool) -> (usize, String) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let mut req = Request::post("http://upstream/pkg.Svc/Get")
            .header("content-type", "application/grpc")
            .body(Full::from("msg"))
            .unwrap();
        if mark {
            req.extensions_mut().insert(RetryAllowed);
        }
        let res = ServiceBuilder::new()
            .layer(fast().max_retries(3).into_layer())
            .service_fn(move |_: Request<Body>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let code = codes[n.min(codes.len() - 1)];
                async move {
                    let res = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", code)
                        .body(Body::default())?;
                    Ok::<_, BoxError>(res)
                }
            })
            .oneshot(req)
            .await
            .unwrap();
        let code = res.headers()["grpc-status"].to_str().unwrap().to_owned();
        (calls.load(Ordering::SeqCst), code)
    }
    assert_eq!(attempts(&["14", "0"], true).await, (2, "0".into()));
    assert_eq!(attempts(&["14"], true).await, (4, "14".into()));
    assert_eq!(attempts(&["7", "0"], true).await, (1, "7".into()));
    assert_eq!(attempts(&["5", "0"], true).await, (1, "5".into()));
    assert_eq!(attempts(&["0"], true).await, (1, "0".into()));
    // Not marked: the upstream may have acted on the call.
    assert_eq!(attempts(&["14", "0"], false).await, (1, "14".into()));
}

use crate::echo;
use crate::incoming;

/// End to end: a real tonic server answers errors trailers-only. Through a hyper HTTP/2 client,
/// its `UNAVAILABLE` is retried for a call marked safe to repeat, its `PERMISSION_DENIED` is not,
/// and an unmarked call (a gRPC call is a `POST`) is sent once.
#[tokio::test]
async fn a_real_tonic_servers_unavailable_is_retried_and_its_verdicts_are_not() {
    use prost::Message as _;

    fn deny(req: Request<tonic::body::Body>) -> Result<Request<tonic::body::Body>, BoxError> {
        if req.headers().contains_key("x-deny") {
            Err(tonic::Status::permission_denied("not this repository").into())
        } else {
            Ok(req)
        }
    }
    let (addr, incoming) = incoming::loopback().await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::filter::FilterLayer::new(deny))
            .add_service(echo::EchoService)
            .serve_with_incoming(incoming),
    );

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let call = |message: &str, marked: bool, denied: bool| {
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = attempts.clone();
        let svc = ServiceBuilder::new()
            .layer(
                RetryPolicy::new()
                    .max_retries(2)
                    .backoff(Duration::from_millis(1), Duration::from_millis(5))
                    .into_layer(),
            )
            .map_request(move |req: Request<Body>| {
                seen.fetch_add(1, Ordering::SeqCst);
                req
            })
            .map_err(BoxError::from)
            .service(client.clone());
        let msg = echo::Echo {
            message: message.to_owned(),
        }
        .encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&msg);
        let mut req = Request::post(format!("http://{addr}{}", echo::SAY))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::from(frame))
            .unwrap();
        if marked {
            req.extensions_mut().insert(RetryAllowed);
        }
        if denied {
            req.headers_mut().insert("x-deny", "1".parse().unwrap());
        }
        async move {
            let res = svc.oneshot(req).await.unwrap();
            let code = res
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned());
            (attempts.load(Ordering::SeqCst), code)
        }
    };
    assert_eq!(call("fail", true, false).await, (3, Some("14".into())));
    assert_eq!(call("fail", false, false).await, (1, Some("14".into())));
    assert_eq!(call("hello", true, true).await, (1, Some("7".into())));
    // A success: the status comes in the trailers, after the message.
    assert_eq!(call("hello", true, false).await, (1, None));
    server.abort();
}

/// reqwest errors that the same request always meets again are not retried: a URL reqwest
/// will not send (a builder error) and a redirect loop (each attempt already follows ten hops).
#[tokio::test]
async fn a_reqwest_error_that_cannot_pass_next_time_is_not_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/loop",
        axum::routing::get(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { axum::response::Redirect::temporary("/loop") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (svc, attempts) = counted_reqwest(3);

    let url = format!("http://{addr}/loop").parse().unwrap();
    let err = svc
        .clone()
        .oneshot(reqwest::Request::new(http::Method::GET, url))
        .await
        .unwrap_err();
    assert!(err.is_redirect(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        11,
        "one request and ten redirects"
    );

    attempts.store(0, Ordering::SeqCst);
    let url = format!("ftp://{addr}/file").parse().unwrap();
    let err = svc
        .oneshot(reqwest::Request::new(http::Method::GET, url))
        .await
        .unwrap_err();
    assert!(err.is_builder(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    server.abort();
}

/// A reqwest client under a fast `RetryPolicy` of `max_retries`, and the count of the requests
/// it sent (each attempt).
fn counted_reqwest(
    max_retries: u32,
) -> (
    impl Service<reqwest::Request, Response = reqwest::Response, Error = reqwest::Error> + Clone,
    Arc<AtomicUsize>,
) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::new()
                .max_retries(max_retries)
                .backoff(Duration::from_millis(1), Duration::from_millis(5))
                .into_layer(),
        )
        .map_request(move |req: reqwest::Request| {
            counted.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(crate::client::new());
    (svc, attempts)
}

/// gRPC's own `Retry-After`: a server that answers with `grpc-retry-pushback-ms` (in a
/// trailers-only answer's headers, or in a `tonic::Status`'s metadata) is retried after exactly
/// that many milliseconds, and not at all when the value is negative or unreadable, which is
/// how a gRPC server says "do not retry" (gRPC's retry design, A6).
#[tokio::test(start_paused = true)]
async fn a_grpc_retry_pushback_is_honored_and_a_negative_one_stops_retries() {
    /// The calls made and the waits between them, for answers that carry `pushback`.
    async fn run_grpc(pushback: &'static str, as_status: bool) -> (usize, Vec<Duration>) {
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = times.clone();
        let mut req = Request::post("http://upstream/pkg.Svc/Get")
            .header("content-type", "application/grpc")
            .body(Full::from("msg"))
            .unwrap();
        req.extensions_mut().insert(RetryAllowed);
        let _ = ServiceBuilder::new()
            .layer(fast().max_retries(2).into_layer())
            .service_fn(move |_: Request<Body>| {
                let mut times = seen.lock().unwrap();
                times.push(tokio::time::Instant::now());
                let first = times.len() == 1;
                async move {
                    if !first {
                        let res = Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0")
                            .body(Body::default())?;
                        return Ok(res);
                    }
                    if as_status {
                        let mut status = tonic::Status::unavailable("draining");
                        status
                            .metadata_mut()
                            .insert("grpc-retry-pushback-ms", pushback.parse()?);
                        return Err::<Response<Body>, BoxError>(status.into());
                    }
                    let res = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14")
                        .header("grpc-retry-pushback-ms", pushback)
                        .body(Body::default())?;
                    Ok(res)
                }
            })
            .oneshot(req)
            .await;
        let times = times.lock().unwrap();
        let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
        (times.len(), gaps)
    }
    for as_status in [false, true] {
        assert_eq!(
            run_grpc("2500", as_status).await,
            (2, vec![Duration::from_millis(2500)]),
            "status: {as_status}"
        );
        for refusal in ["-1", "soon"] {
            assert_eq!(
                run_grpc(refusal, as_status).await,
                (1, vec![]),
                "{refusal}, status: {as_status}"
            );
        }
    }
}

/// A request body whose copies are counted: a payload of several megabytes is copied for each
/// attempt that may be sent again, and for no other.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(&self.0))
    }
}

/// The request is copied before each attempt that may be retried, so that it can be sent
/// again; the last attempt allowed (and the only one, with `max_retries(0)`) is sent without a
/// copy, which nothing could use.
#[tokio::test(start_paused = true)]
async fn the_request_is_not_copied_for_an_attempt_that_cannot_be_retried() {
    for (max_retries, answers, copies) in [
        (0, &[200][..], 0),
        (0, &[503][..], 0),
        (2, &[200][..], 1),
        (2, &[503, 200][..], 2),
        (2, &[503, 503, 503][..], 2),
    ] {
        let copied = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let answers = answers.to_vec();
        let svc = ServiceBuilder::new()
            .layer(
                RetryPolicy::new()
                    .max_retries(max_retries)
                    .backoff(Duration::from_millis(1), Duration::from_millis(1))
                    .into_layer(),
            )
            .service(tower::service_fn(move |_req: Request<Counted>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = answers[n.min(answers.len() - 1)];
                async move {
                    let mut res = Response::new(());
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, BoxError>(res)
                }
            }));
        let req = Request::get("/")
            .body(Counted(Arc::clone(&copied)))
            .unwrap();
        svc.oneshot(req).await.unwrap();
        assert_eq!(
            copied.load(Ordering::SeqCst),
            copies,
            "max_retries {max_retries}, {} calls",
            calls.load(Ordering::SeqCst)
        );
    }
}
