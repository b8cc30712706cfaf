//! Edges of the circuit breaker's rules, through the public API with paused time: a value
//! exactly at a threshold, durations at their limits.

use std::time::Duration;

use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, CircuitState, OpenDuration, Outcome,
    SlidingWindow, TripReason,
};

/// A call that takes exactly the slow-call duration is not slower than it: only calls that
/// take longer count as slow (resilience4j: "above"), wherever the call starts in time.
#[tokio::test(start_paused = true)]
async fn a_call_exactly_as_long_as_the_slow_call_duration_is_not_slow() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(2))
        .without_failure_rate()
        .slow_call_rate_threshold(50.0, Duration::from_secs(1))
        .minimum_calls(2)
        .consecutive_failures(0);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
        .service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(())
        });

    // Calls starting at various offsets from the breaker's creation.
    for offset_ms in [0, 1, 3, 7, 250] {
        tokio::time::advance(Duration::from_millis(offset_ms)).await;
        svc.ready().await.unwrap().call(1_000).await.unwrap();
        // Counted as slow, it would have opened the breaker (and emptied the window).
        let snapshot = handle.snapshot();
        assert_eq!(
            (snapshot.state, snapshot.slow_calls),
            (CircuitState::Closed, 0),
            "a 1000 ms call started {offset_ms} ms later counted as slower than 1 s"
        );
    }

    // One millisecond more is slow: one slow call of the last two opens the breaker.
    svc.ready().await.unwrap().call(1_001).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

/// Once every layer, service and handle of a breaker is gone, so is its listener (and what
/// it holds, such as the sending half of a channel): nothing else keeps the breaker alive,
/// even on threads that recorded its calls.
#[test]
fn a_dropped_breaker_drops_its_listener() {
    let held = std::sync::Arc::new(());
    let in_listener = held.clone();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(100)
        .on_event(move |_| {
            let _ = &in_listener;
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|r: &Result<(), BoxError>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        }))
        .service_fn(|ok: bool| async move {
            if ok {
                Ok::<_, BoxError>(())
            } else {
                Err("down".into())
            }
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut svc = svc;
        for ok in [false, true, false] {
            let _ = svc.ready().await.unwrap().call(ok).await;
        }
        assert_eq!(handle.snapshot().failed_calls, 2);
        drop(svc);
    });
    drop(handle);
    assert_eq!(
        std::sync::Arc::strong_count(&held),
        1,
        "the listener of a dropped breaker is still alive"
    );
}

/// `OpenDuration::nominal` answers for any value the type holds: a backoff that
/// `validate` refuses (a negative or not-a-number multiplier) gives a duration, never a
/// panic.
#[test]
fn nominal_open_durations_of_a_refused_backoff_do_not_panic() {
    for multiplier in [-2.0, -0.5, f64::NEG_INFINITY, f64::NAN] {
        let backoff = OpenDuration::Backoff {
            initial: Duration::from_secs(1),
            multiplier,
            max: Duration::from_secs(10),
            jitter: 0.0,
        };
        for attempt in [0, 1, 2, 3, u32::MAX] {
            let nominal = std::panic::catch_unwind(|| backoff.nominal(attempt))
                .unwrap_or_else(|_| panic!("nominal({attempt}) panicked for {multiplier}"));
            assert!(nominal <= Duration::from_secs(10), "{nominal:?}");
        }
        assert_eq!(
            CircuitBreakerConfig::default()
                .open_duration(backoff)
                .validate()
                .unwrap_err()
                .setting(),
            "open_duration"
        );
    }
}

/// Becomes ready a while after each call (like a connection pool or a concurrency limit
/// that is busy), then answers at once.
struct SlowToBeReady {
    wait: Duration,
    ready_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Service<()> for SlowToBeReady {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let wait = self.wait;
        let sleep = self
            .ready_at
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        std::task::ready!(sleep.as_mut().poll(cx));
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        self.ready_at = None;
        std::future::ready(Ok(()))
    }
}

/// A call's duration, for the slow-call rule, starts when the call is made, not while the
/// inner service is not ready yet: the same for a half-open probe as for a call while CLOSED.
#[tokio::test(start_paused = true)]
async fn a_probe_is_timed_from_its_call_not_from_its_admission() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(1))
        .without_failure_rate()
        .slow_call_rate_threshold(100.0, Duration::from_secs(1))
        .minimum_calls(1)
        .consecutive_failures(0);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = layer
        .with_classifier(|_: &Result<(), BoxError>| Outcome::Success)
        .layer(SlowToBeReady {
            wait: Duration::from_secs(2),
            ready_at: None,
        });

    // CLOSED: two seconds waiting for readiness, an instant answer: not slow.
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // The same call as a half-open probe.
    handle.transition_to_open().unwrap();
    handle.transition_to_half_open().unwrap();
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "the probe was timed from its admission, while the inner service was not ready"
    );
}

/// In METRICS_ONLY a rule that keeps being exceeded is reported once per METRICS_ONLY period,
/// like resilience4j does, not once per call: a listener that alerts on it is not flooded.
/// Each rule is reported on its own, and a new period reports again.
#[tokio::test(start_paused = true)]
async fn metrics_only_reports_each_exceeded_rule_once_per_period() {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = events.clone();
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(4))
        .failure_rate_threshold(50.0)
        .minimum_calls(4)
        .consecutive_failures(3)
        .on_event(move |event| {
            if let CircuitEvent::ThresholdExceeded { reason, .. } = event {
                log.lock().unwrap().push(*reason);
            }
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|r: &Result<(), BoxError>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        }))
        .service_fn(|ok: bool| async move {
            if ok {
                Ok::<_, BoxError>(())
            } else {
                Err("down".into())
            }
        });
    handle.transition_to_metrics_only().unwrap();
    for _ in 0..20 {
        let _ = svc.ready().await.unwrap().call(false).await;
    }
    assert_eq!(handle.state(), CircuitState::MetricsOnly);
    assert_eq!(
        *events.lock().unwrap(),
        [
            TripReason::ConsecutiveFailures(3),
            TripReason::FailureRate(100.0)
        ]
    );

    // A new METRICS_ONLY period reports again.
    events.lock().unwrap().clear();
    handle.transition_to_metrics_only().unwrap();
    for _ in 0..20 {
        let _ = svc.ready().await.unwrap().call(false).await;
    }
    assert_eq!(
        *events.lock().unwrap(),
        [
            TripReason::ConsecutiveFailures(3),
            TripReason::FailureRate(100.0)
        ]
    );
}
