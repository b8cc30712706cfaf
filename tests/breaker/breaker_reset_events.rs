//! Circuit breaker: `reset()` tells the listener a `Reset` event, in order with transitions.

// Every test logs through its own subscriber (see `tests/common/logs.rs`).
use crate::logs;

use std::sync::{Arc, Barrier, Mutex};

use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitEvent, CircuitState,
    TripReason,
};

/// What the listener saw, in a short form: `"CLOSED>OPEN"`, `"reset"`, `"exceeded"`.
fn recorder() -> (Arc<Mutex<Vec<String>>>, CircuitBreakerConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let config = CircuitBreakerConfig::default()
        .name("api")
        .on_event(move |event| log.lock().unwrap().push(short(event)));
    (seen, config)
}

fn short(event: &CircuitEvent) -> String {
    match event {
        CircuitEvent::StateTransition { from, to, .. } => format!("{from}>{to}"),
        CircuitEvent::Reset { name } => {
            assert_eq!(&**name, "api");
            "reset".to_owned()
        }
        CircuitEvent::ThresholdExceeded { .. } => "exceeded".to_owned(),
        CircuitEvent::Rejected { .. } => "rejected".to_owned(),
        other => format!("{other:?}"),
    }
}

fn take(seen: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[tokio::test]
async fn a_reset_is_told_after_its_transition_and_also_when_the_breaker_was_closed() {
    let (logs, _guard) = Logs::capture();
    let (seen, config) = recorder();
    let (layer, handle) = CircuitBreakerLayer::pair(config.consecutive_failures(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|status: u16| async move {
            Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
        });

    // CLOSED: nothing changes state, but the reset is told (windows were cleared).
    handle.reset();
    assert_eq!(take(&seen), ["reset"]);

    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(take(&seen), ["exceeded", "CLOSED>OPEN"]);
    handle.reset();
    assert_eq!(take(&seen), ["OPEN>CLOSED", "reset"]);

    for (to, told) in [
        (CircuitState::ForcedOpen, "FORCED_OPEN>CLOSED"),
        (CircuitState::Disabled, "DISABLED>CLOSED"),
        (CircuitState::MetricsOnly, "METRICS_ONLY>CLOSED"),
    ] {
        handle.transition_to(to).unwrap();
        take(&seen);
        handle.reset();
        assert_eq!(take(&seen), [told, "reset"], "from {to}");
        assert_eq!(handle.state(), CircuitState::Closed);
    }

    // A manual move to CLOSED is not a reset.
    handle.transition_to_open().unwrap();
    handle.transition_to_closed().unwrap();
    assert_eq!(take(&seen), ["CLOSED>OPEN", "OPEN>CLOSED"]);

    let text = logs.text();
    assert_eq!(text.matches("circuit breaker reset").count(), 5, "{text}");
    assert!(text.contains("breaker=\"api\""), "{text}");
}

/// A listener that resets the breaker when it opens: its own reset is told after the
/// transition it is reacting to, never before it.
#[tokio::test]
async fn a_reset_made_by_the_listener_is_told_after_the_event_it_reacts_to() {
    let (_logs, _guard) = Logs::capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slot: Arc<Mutex<Option<CircuitBreakerHandle>>> = Arc::default();
    let (log, me) = (seen.clone(), slot.clone());
    let config = CircuitBreakerConfig::default()
        .name("api")
        .consecutive_failures(1)
        .on_event(move |event| {
            log.lock().unwrap().push(short(event));
            if let CircuitEvent::StateTransition {
                to: CircuitState::Open,
                reason: Some(TripReason::ConsecutiveFailures(1)),
                ..
            } = event
            {
                let handle = me.lock().unwrap().clone();
                if let Some(handle) = handle {
                    handle.reset();
                }
            }
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    *slot.lock().unwrap() = Some(handle.clone());
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|status: u16| async move {
            Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
        });

    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(
        take(&seen),
        ["exceeded", "CLOSED>OPEN", "OPEN>CLOSED", "reset"]
    );
    // The handle in the listener would keep the breaker alive.
    slot.lock().unwrap().take();
}

/// Two threads reset and force the breaker open at once, many times: every reset is told
/// exactly once, each right after its own transition (or alone when the breaker was CLOSED),
/// and the events, replayed in order, end on the state the breaker is in.
#[test]
fn resets_racing_transitions_are_each_told_once_and_in_order() {
    let (_logs, _guard) = Logs::capture();
    const ROUNDS: usize = 2_000;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let config = CircuitBreakerConfig::default()
        .name("api")
        .on_event(move |event| log.lock().unwrap().push(event.clone()));
    let (_layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            start.wait();
            for _ in 0..ROUNDS {
                handle.reset();
            }
        });
        scope.spawn(|| {
            start.wait();
            for _ in 0..ROUNDS {
                let _ = handle.transition_to_forced_open();
            }
        });
    });
    let events = take_events(&seen);
    let mut state = CircuitState::Closed;
    let mut resets = 0;
    for (at, event) in events.iter().enumerate() {
        match event {
            CircuitEvent::StateTransition { from, to, .. } => {
                assert_eq!(*from, state, "event {at}: {event:?}");
                state = *to;
            }
            CircuitEvent::Reset { .. } => {
                assert_eq!(
                    state,
                    CircuitState::Closed,
                    "event {at}: a reset told out of order"
                );
                resets += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(resets, ROUNDS);
    assert_eq!(state, handle.state());
}

fn take_events(seen: &Mutex<Vec<CircuitEvent>>) -> Vec<CircuitEvent> {
    std::mem::take(&mut *seen.lock().unwrap())
}

/// GitHub answers a spent primary rate limit with a 429 that names no `Retry-After`, only
/// `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset` (UTC epoch seconds); GitLab with
/// `RateLimit-*`. A breaker that honours `Retry-After` and holds 429s against the upstream
/// stays open until that reset (read against the response's `Date`), within its cap; it used
/// to reopen for probes after its open duration, into the same spent quota.
#[tokio::test(start_paused = true)]
async fn a_spent_rate_limit_keeps_the_breaker_open_until_its_reset() {
    use tower_webhook::circuit_breaker::DefaultClassifier;

    let (_logs, _guard) = Logs::capture();
    // 2026-12-01T00:00:00Z.
    const DATE: &str = "Tue, 01 Dec 2026 00:00:00 GMT";
    const EPOCH: u64 = 1_796_083_200;
    let cases: [(Headers, Option<u64>); 8] = [
        // GitHub: the reset, 300 s after the response's `Date`.
        (
            vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (EPOCH + 300).to_string()),
            ],
            Some(300_000),
        ),
        // GitLab.
        (
            vec![
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", (EPOCH + 90).to_string()),
            ],
            Some(90_000),
        ),
        // `Retry-After` comes first.
        (
            vec![
                ("retry-after", "120".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (EPOCH + 300).to_string()),
            ],
            Some(120_000),
        ),
        // `Retry-After: 0` lets the reset decide.
        (
            vec![
                ("retry-after", "0".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (EPOCH + 300).to_string()),
            ],
            Some(300_000),
        ),
        // The cap.
        (
            vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (EPOCH + 7_200).to_string()),
            ],
            Some(600_000),
        ),
        // Quota not spent, a reset in the past, a delta-seconds reset: the open duration.
        (
            vec![
                ("x-ratelimit-remaining", "1".into()),
                ("x-ratelimit-reset", (EPOCH + 300).to_string()),
            ],
            Some(30_000),
        ),
        (
            vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (EPOCH - 5).to_string()),
            ],
            Some(30_000),
        ),
        (
            vec![
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", "60".into()),
            ],
            Some(30_000),
        ),
    ];
    for (headers, expected) in cases {
        let config = CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .honor_retry_after(std::time::Duration::from_secs(600));
        let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
        let layer =
            layer.with_classifier(DefaultClassifier::new().too_many_requests_is_failure(true));
        let shown = format!("{headers:?}");
        let svc = ServiceBuilder::new().layer(layer).service_fn(move |_: ()| {
            let mut res = http::Response::builder().status(429).header("date", DATE);
            for (name, value) in &headers {
                res = res.header(*name, value.as_str());
            }
            async move { Ok::<_, BoxError>(res.body(()).unwrap()) }
        });
        svc.oneshot(()).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Open, "{shown}");
        assert_eq!(handle.snapshot().retry_after_ms, expected, "{shown}");
    }
}

/// Response headers of a test case.
type Headers = Vec<(&'static str, String)>;
