//! The circuit breaker and the retry policy: reqwest 0.12 and 0.13 timeouts, windows at their
//! edges, and the breaker under many tasks on a multi-thread runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use http::{Request, Response};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, CircuitOpen, CircuitState,
    OpenDuration, SlidingWindow,
};
use tower_webhook::retry::RetryPolicy;

/// A server on 127.0.0.1 whose `/slow` answers after 30 s (longer than any client here waits),
/// and the count of requests that reached it.
async fn slow_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::any(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                (StatusCode::OK, "late")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

/// Waits (up to 10 s) until `n` requests have reached the server, then takes the count: a request
/// the client gave up on may still be on its way to the handler.
async fn take_hits(hits: &AtomicUsize, n: usize) -> usize {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while hits.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Whatever else was sent would have arrived by now too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    hits.swap(0, Ordering::SeqCst)
}

fn fast_retry(max_retries: u32) -> tower::retry::RetryLayer<RetryPolicy> {
    RetryPolicy::new()
        .max_retries(max_retries)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .into_layer()
}

/// Both reqwest versions, the same checks: a request that times out is a failure for the
/// breaker; a GET that timed out is sent again, a POST (the upstream may have acted) is not.
macro_rules! reqwest_timeouts {
    ($name:ident, $reqwest:ident) => {
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            let (base, hits) = slow_server().await;
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();

            // The breaker counts a timed-out request as a failure.
            let config = CircuitBreakerConfig::default().consecutive_failures(2);
            let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
            let mut svc = ServiceBuilder::new().layer(layer).service(client.clone());
            for _ in 0..2 {
                let req = reqwest::Request::new(
                    reqwest::Method::GET,
                    format!("{base}/slow").parse().unwrap(),
                );
                let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
                let err = err
                    .downcast_ref::<reqwest::Error>()
                    .expect("a reqwest error");
                assert!(err.is_timeout(), "{err}");
            }
            assert_eq!(handle.state(), CircuitState::Open);
            assert_eq!(take_hits(&hits, 2).await, 2);

            // A GET that timed out is sent again, up to the maximum.
            let svc = ServiceBuilder::new()
                .layer(fast_retry(2))
                .service(client.clone());
            let req = reqwest::Request::new(
                reqwest::Method::GET,
                format!("{base}/slow").parse().unwrap(),
            );
            let err = svc.oneshot(req).await.unwrap_err();
            assert!(err.is_timeout(), "{err}");
            assert_eq!(take_hits(&hits, 3).await, 3);

            // A POST that timed out may have been acted on: sent once.
            let svc = ServiceBuilder::new().layer(fast_retry(2)).service(client);
            let mut req = reqwest::Request::new(
                reqwest::Method::POST,
                format!("{base}/slow").parse().unwrap(),
            );
            *req.body_mut() = Some("{}".into());
            let err = svc.oneshot(req).await.unwrap_err();
            assert!(err.is_timeout(), "{err}");
            assert_eq!(take_hits(&hits, 1).await, 1);
        }
    };
}

reqwest_timeouts!(
    a_reqwest_0_13_timeout_is_a_failure_and_retried_only_when_safe,
    reqwest
);
reqwest_timeouts!(
    a_reqwest_0_12_timeout_is_a_failure_and_retried_only_when_safe,
    reqwest_0_12
);

/// A service that answers each request with the status it carries.
fn by_status() -> impl Service<
    u16,
    Response = Response<()>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<()>, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(|status: u16| async move {
        Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    })
}

/// An upstream that never answers, behind a timeout: below the breaker, each timeout is a
/// failure and the breaker opens; above it, as the module docs say, a timed-out call is
/// dropped, and a call dropped records nothing, so the breaker never opens.
#[tokio::test(start_paused = true)]
async fn a_timeout_below_the_breaker_is_a_failure_and_one_above_it_is_no_outcome() {
    let hung =
        || tower::service_fn(|_: ()| std::future::pending::<Result<Response<()>, BoxError>>());
    let config = || CircuitBreakerConfig::default().consecutive_failures(3);
    let limit = Duration::from_secs(10);

    let (layer, handle) = CircuitBreakerLayer::pair(config()).unwrap();
    let mut below = ServiceBuilder::new()
        .layer(layer)
        .timeout(limit)
        .service(hung());
    for _ in 0..3 {
        let err = below.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let err = below.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");

    let (layer, handle) = CircuitBreakerLayer::pair(config()).unwrap();
    let mut above = ServiceBuilder::new()
        .timeout(limit)
        .layer(layer)
        .service(hung());
    for _ in 0..10 {
        let err = above.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_count_window_of_one_call_trips_on_its_one_failure() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(1))
        .failure_rate_threshold(100.0)
        .consecutive_failures(0);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(by_status());
    for _ in 0..3 {
        svc.ready().await.unwrap().call(200).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().buffered_calls, 1);
    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_of_one_bucket_forgets_its_failures_after_its_span() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            span: Duration::from_secs(10),
            buckets: 1,
        })
        .failure_rate_threshold(50.0)
        .minimum_calls(4)
        .consecutive_failures(0);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(by_status());
    for status in [500, 500, 200] {
        svc.ready().await.unwrap().call(status).await.unwrap();
    }
    assert_eq!(handle.snapshot().buffered_calls, 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.snapshot().buffered_calls, 0);
    // Two old failures are gone: one more failure is one call of four.
    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    for status in [200, 200, 500] {
        svc.ready().await.unwrap().call(status).await.unwrap();
    }
    // 2 failures of 4: 50 %, the threshold.
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_in_a_time_window_trip_the_slow_call_rate() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            span: Duration::from_secs(60),
            buckets: 6,
        })
        .without_failure_rate()
        .slow_call_rate_threshold(50.0, Duration::from_secs(1))
        .minimum_calls(2)
        .consecutive_failures(0);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|wait: u64| async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, BoxError>(Response::new(()))
        });
    svc.ready().await.unwrap().call(10).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    svc.ready().await.unwrap().call(2_000).await.unwrap();
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Open, "{snapshot:?}");
}

/// A breaker that only the slow-call rule opens: a failed (fast) probe does not reopen it, as
/// failures do not open it in CLOSED either; a slow probe does.
#[tokio::test(start_paused = true)]
async fn a_rule_turned_off_stays_off_for_the_probes_verdict() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(1))
        .without_failure_rate()
        .slow_call_rate_threshold(50.0, Duration::from_secs(1))
        .minimum_calls(1)
        .consecutive_failures(0)
        .half_open_probes(1);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|(wait, status): (u64, u16)| async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
            });
    for _ in 0..3 {
        svc.ready().await.unwrap().call((0, 503)).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    svc.ready().await.unwrap().call((2_000, 200)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    handle.transition_to_half_open().unwrap();
    svc.ready().await.unwrap().call((0, 503)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // The slow rule still judges the probes.
    svc.ready().await.unwrap().call((2_000, 200)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    handle.transition_to_half_open().unwrap();
    svc.ready().await.unwrap().call((2_000, 200)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

/// Many tasks on several threads against a failing upstream: one trip, and every refusal is
/// counted once in the snapshot and told once to the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_under_many_tasks_are_counted_and_told_once_each() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(3)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(3600)))
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::task::yield_now().await;
                Ok::<_, BoxError>(Response::builder().status(503).body(()).unwrap())
            }
        });
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut svc = svc.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                match svc.ready().await.unwrap().call(Request::new(())).await {
                    Ok(res) => assert_eq!(res.status(), 503),
                    Err(err) => {
                        assert!(CircuitOpen::is_in(&*err), "{err}");
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let refused = refused.load(Ordering::SeqCst);
    assert_eq!(calls.load(Ordering::SeqCst) + refused, 1600);
    assert_eq!(handle.state(), CircuitState::Open);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.not_permitted_calls, refused as u64);
    let events = events.lock().unwrap();
    let opened = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                CircuitEvent::StateTransition {
                    to: CircuitState::Open,
                    ..
                }
            )
        })
        .count();
    assert_eq!(opened, 1, "{events:?}");
    let rejected = events
        .iter()
        .filter(|e| matches!(e, CircuitEvent::Rejected { .. }))
        .count();
    assert_eq!(rejected, refused);
}

/// HALF_OPEN admits exactly its probes, even to many tasks on several threads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_its_probes_to_many_tasks() {
    let config = CircuitBreakerConfig::default()
        .half_open_probes(3)
        .open_duration(OpenDuration::Fixed(Duration::from_millis(20)));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, counted) = (gate.clone(), calls.clone());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                let _permit = g.acquire().await.unwrap();
                Ok::<_, BoxError>(Response::new(()))
            }
        });
    handle.transition_to_open().unwrap();
    while handle.state() != CircuitState::HalfOpen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut svc = svc.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let svc = svc.ready().await.unwrap();
            svc.call(Request::new(())).await.is_ok()
        }));
    }
    // Wait until the refused calls are back and the probes are waiting on the gate.
    while calls.load(Ordering::SeqCst) < 3 || handle.snapshot().not_permitted_calls < 29 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(64);
    let mut passed = 0;
    for task in tasks {
        passed += usize::from(task.await.unwrap());
    }
    assert_eq!(passed, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A handler's `Err(Problem)` stands for the response it becomes: a client error (the payload
/// it could not read) is the caller's mistake, not the upstream failing, as the same problem
/// returned as a response (axum's `IntoResponse`) already was. A server error still counts.
#[tokio::test(start_paused = true)]
async fn an_err_problem_with_a_client_error_status_is_not_a_failure() {
    use tower_webhook::error::{Problem, WebhookErrorLayer};

    let config = CircuitBreakerConfig::default().consecutive_failures(2);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(|req: Request<String>| async move {
            let status = StatusCode::from_bytes(req.body().as_bytes()).unwrap();
            Err::<Response<String>, _>(Problem::new(status).with_detail("payload not understood"))
        });
    for _ in 0..3 {
        let req = Request::post("/hook").body("422".to_owned()).unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!((snapshot.failed_calls, snapshot.successful_calls), (0, 3));

    // Boxed on the way, as tower layers do, it is still read.
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(2)).unwrap();
    let mut boxed = ServiceBuilder::new()
        .layer(layer)
        .map_err(BoxError::from)
        .service_fn(|status: u16| async move {
            Err::<Response<String>, _>(Problem::new(StatusCode::from_u16(status).unwrap()))
        });
    for _ in 0..3 {
        boxed.ready().await.unwrap().call(404).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    // A server error is the upstream failing.
    for _ in 0..2 {
        boxed.ready().await.unwrap().call(503).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

/// `MAX_WINDOW_CALLS` was documented as the largest number of half-open probes too; the bound
/// is 4000 (the probes' counters are 12 bits wide).
#[test]
fn half_open_probes_are_bounded_at_4000_not_at_the_window_bound() {
    use tower_webhook::circuit_breaker::MAX_WINDOW_CALLS;
    let probes = |n| {
        CircuitBreakerConfig::default()
            .half_open_probes(n)
            .validate()
    };
    assert!(probes(4_000).is_ok());
    assert_eq!(probes(4_001).unwrap_err().setting(), "half_open_probes");
    assert_eq!(
        probes(MAX_WINDOW_CALLS).unwrap_err().setting(),
        "half_open_probes"
    );
}

/// A server on 127.0.0.1 that answers every request 503 with `Retry-After: 120`.
async fn busy_server() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "120")],
            "busy",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Both reqwest versions: the upstream's `Retry-After` on a 503 keeps the breaker open as
/// long as it asks (when honored).
macro_rules! reqwest_retry_after {
    ($name:ident, $reqwest:ident) => {
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            let base = busy_server().await;
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let config = CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .honor_retry_after(Duration::from_secs(300));
            let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
            let mut svc = ServiceBuilder::new().layer(layer).service(client);
            let req = reqwest::Request::new(reqwest::Method::GET, base.parse().unwrap());
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(res.status(), 503);
            let snapshot = handle.snapshot();
            assert_eq!(snapshot.state, CircuitState::Open);
            let wait = snapshot.retry_after_ms.unwrap();
            assert!(wait > 100_000 && wait <= 120_000, "{wait}");
        }
    };
}

reqwest_retry_after!(a_reqwest_0_13_retry_after_keeps_the_breaker_open, reqwest);
reqwest_retry_after!(
    a_reqwest_0_12_retry_after_keeps_the_breaker_open,
    reqwest_0_12
);

/// A key whose breaker opened and which is never called again held its slot for ever: once
/// every slot was held so, every new key shared the one overflow breaker, and one failing new
/// key blocked them all. An open breaker whose open duration has passed, with no call in
/// flight, is now forgotten when a new key needs its slot (after the CLOSED ones).
#[tokio::test(start_paused = true)]
async fn a_lapsed_open_breaker_gives_its_slot_to_a_new_key() {
    use tower_webhook::circuit_breaker::KeyedCircuitBreakerLayer;

    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(10)));
    let per_host = |req: &(&'static str, u16)| req.0;
    let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 2, per_host).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service_fn(
        |(_, status): (&'static str, u16)| async move {
            Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
        },
    );
    for host in ["a.example.com", "b.example.com"] {
        svc.ready().await.unwrap().call((host, 500)).await.unwrap();
    }
    // Both slots hold open breakers, which protect their callers: a new key shares the
    // overflow breaker.
    svc.ready()
        .await
        .unwrap()
        .call(("c.example.com", 200))
        .await
        .unwrap();
    assert!(handle.get(&"c.example.com").is_none());

    // Long after: neither host was called again.
    tokio::time::advance(Duration::from_secs(3600)).await;
    svc.ready()
        .await
        .unwrap()
        .call(("c.example.com", 200))
        .await
        .unwrap();
    assert!(
        handle.get(&"c.example.com").is_some(),
        "c still in the overflow"
    );
    assert_eq!(handle.len(), 2);
    // An open breaker still in its open duration keeps its slot.
    svc.ready()
        .await
        .unwrap()
        .call(("d.example.com", 503))
        .await
        .unwrap();
    assert_eq!(
        handle.get(&"d.example.com").unwrap().state(),
        CircuitState::Open
    );
    svc.ready()
        .await
        .unwrap()
        .call(("e.example.com", 200))
        .await
        .unwrap();
    assert!(handle.get(&"d.example.com").is_some());
}
