//! Circuit breaker: a `Retry-After` the upstream took back by answering since does not stretch a
//! later opening, a reset frees the permit of a probe that never ends, and a call cancelled by a
//! panic elsewhere records nothing.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `tests/common/logs.rs`).
use crate::logs;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, ClassifyOutcome,
    OpenDuration, Outcome, Recorder,
};

/// The classifier of the tests below: `0` and errors are failures, other numbers successes.
#[derive(Clone, Copy)]
struct ZeroFails;

impl ClassifyOutcome<u32, BoxError> for ZeroFails {
    type Response = u32;

    fn classify(&self, result: Result<u32, BoxError>, recorder: Recorder) -> Result<u32, BoxError> {
        recorder.record(match result {
            Ok(0) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        });
        result
    }
}

/// A probe that never ends, then a reset by hand: the breaker is CLOSED, every call passes,
/// and that old probe is one call in flight like any other. It no longer holds the only probe
/// permit of every later half-open period, so when the breaker opens again it probes again
/// once its open duration has passed, instead of refusing every call for good.
#[tokio::test(start_paused = true)]
async fn a_reset_frees_the_probe_permit_of_a_probe_that_never_ends() {
    let (_logs, _guard) = Logs::capture();
    for by_hand in ["reset", "closed", "disabled", "metrics_only"] {
        let (layer, handle) = CircuitBreakerLayer::pair(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_duration(OpenDuration::Fixed(Duration::from_secs(10))),
        )
        .unwrap();
        // 0: fails at once; 1: never answers; anything else: answers at once.
        let svc = ServiceBuilder::new()
            .layer(layer.with_classifier(ZeroFails))
            .service_fn(|n: u32| async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(n)
            });

        svc.clone().oneshot(0).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(handle.state(), CircuitState::HalfOpen);
        // The probe: admitted, then stuck in the upstream.
        let mut stuck = svc.clone();
        let stuck = tokio::spawn(async move { stuck.ready().await?.call(1).await });
        tokio::task::yield_now().await;
        assert_eq!(handle.snapshot().half_open_permits_taken, 1, "{by_hand}");

        match by_hand {
            "reset" => handle.reset(),
            "closed" => handle.transition_to_closed().unwrap(),
            "disabled" => handle.transition_to_disabled().unwrap(),
            _ => handle.transition_to_metrics_only().unwrap(),
        }
        if by_hand != "reset" && by_hand != "closed" {
            handle.transition_to_closed().unwrap();
        }
        assert_eq!(handle.state(), CircuitState::Closed);

        // The upstream still fails: the breaker opens again, then half-opens.
        svc.clone().oneshot(0).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(handle.state(), CircuitState::HalfOpen);
        let probe = svc.clone().oneshot(2).await;
        assert!(
            probe.as_ref().is_ok_and(|n| *n == 2),
            "{by_hand}: the new half-open period admits a probe, got {:?}",
            probe.map_err(|e| e.downcast::<CircuitOpen>().map(|o| o.state()))
        );
        assert_eq!(handle.state(), CircuitState::Closed, "{by_hand}");
        stuck.abort();
    }
}

/// An upstream status for the tests below: `503` with `Retry-After: 3600`, a `500`, or a `200`.
#[derive(Clone, Copy, Debug)]
enum Answer {
    BusyForAnHour,
    Broken,
    Fine,
}

fn answer(a: Answer) -> http::Response<()> {
    let res = http::Response::builder();
    match a {
        Answer::BusyForAnHour => res.status(503).header("retry-after", "3600"),
        Answer::Broken => res.status(500),
        Answer::Fine => res.status(200),
    }
    .body(())
    .unwrap()
}

/// `honor_retry_after` keeps the breaker open as long as the upstream asked when a failure
/// that opens it carries `Retry-After`. A `Retry-After` the upstream sent long before, and took
/// back by answering calls since, is not the reason the breaker opens later: that opening lasts
/// the open duration, not the rest of an hour asked for by a call that opened nothing.
#[tokio::test(start_paused = true)]
async fn a_retry_after_the_upstream_answered_past_does_not_stretch_a_later_opening() {
    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = CircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .consecutive_failures(3)
            .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
            .honor_retry_after(Duration::from_secs(3600)),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|a: Answer| async move { Ok::<_, BoxError>(answer(a)) });
    let call = |a| svc.clone().oneshot(a);

    // One overloaded answer, then the upstream serves calls again for ten minutes.
    call(Answer::BusyForAnHour).await.unwrap();
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(60)).await;
        call(Answer::Fine).await.unwrap();
    }
    // Now it breaks, without asking for any wait.
    for _ in 0..3 {
        call(Answer::Broken).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));

    // The failures that open it ask for an hour: the breaker waits that long.
    handle.reset();
    call(Answer::Broken).await.unwrap();
    call(Answer::BusyForAnHour).await.unwrap();
    call(Answer::Broken).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().retry_after_ms, Some(3_600_000));
}

/// `honor_retry_after` counts only the waits asked for since the upstream last answered a call
/// successfully. A half-open period whose probes close the breaker is the upstream answering
/// again: the `Retry-After` a failed probe sent before the others succeeded is over with that
/// verdict, and does not stretch the next opening, which lasts the open duration (30 s), not
/// the rest of the hour that probe asked for.
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_a_probe_does_not_outlive_the_verdict_that_closes_the_breaker() {
    let (layer, handle) = CircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .consecutive_failures(2)
            .failure_rate_threshold(50.0)
            .half_open_probes(3)
            .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
            .honor_retry_after(Duration::from_secs(3600)),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|a: Answer| async move { Ok::<_, BoxError>(answer(a)) });
    let call = |a| svc.clone().oneshot(a);

    call(Answer::Broken).await.unwrap();
    call(Answer::Broken).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    // One probe of three is refused for an hour, then the upstream answers the other two: one
    // failure in three is under the 50 % threshold, and the breaker closes.
    call(Answer::BusyForAnHour).await.unwrap();
    call(Answer::Fine).await.unwrap();
    call(Answer::Fine).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // A minute later it breaks again, without asking for any wait.
    tokio::time::advance(Duration::from_secs(60)).await;
    call(Answer::Broken).await.unwrap();
    call(Answer::Broken).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));
}

/// A call the breaker let through is still waiting for its upstream when something else in
/// the same task panics (a `join!` of the call and other work): the call is dropped while that
/// panic unwinds. It did not fail, it was cancelled, and records nothing: a healthy upstream is
/// not held responsible for a bug elsewhere, and a half-open probe cancelled that way gives its
/// permit back instead of opening the breaker again. The same goes for a probe admitted by
/// `poll_ready` whose service is dropped by such a panic before `call`.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_by_a_panic_elsewhere_records_nothing() {
    let (logs, _guard) = Logs::capture();
    for probe in [false, true] {
        let (layer, handle) = CircuitBreakerLayer::pair(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_duration(OpenDuration::Fixed(Duration::from_secs(10))),
        )
        .unwrap();
        // 0: fails at once; 1: the upstream takes a minute; anything else: answers at once.
        let svc = ServiceBuilder::new()
            .layer(layer.with_classifier(ZeroFails))
            .service_fn(|n: u32| async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, BoxError>(n)
            });
        if probe {
            svc.clone().oneshot(0).await.unwrap();
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(handle.state(), CircuitState::HalfOpen);
        }
        let before = handle.state();

        let in_flight = svc.clone();
        let task = AssertUnwindSafe(async move {
            let call = in_flight.oneshot(1);
            let other_work = async {
                tokio::task::yield_now().await;
                panic!("a bug next to the call");
            };
            let _ = tokio::join!(call, other_work);
        });
        assert!(task.catch_unwind().await.is_err());
        assert_eq!(handle.state(), before, "probe: {probe}");
        assert_eq!(handle.snapshot().failed_calls, 0, "probe: {probe}");
        if !probe {
            assert!(!logs.text().contains("circuit breaker opened"));
        }

        // Admitted by `poll_ready`, then dropped by a panic before `call`.
        let mut readied = svc.clone();
        let task = AssertUnwindSafe(async move {
            readied.ready().await.unwrap();
            panic!("a bug between poll_ready and call");
        });
        assert!(task.catch_unwind().await.is_err());
        assert_eq!(handle.state(), before, "probe: {probe}");

        // The upstream is fine: the next call (a probe, when half-open) closes the breaker.
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
        assert_eq!(handle.state(), CircuitState::Closed, "probe: {probe}");
    }
}
