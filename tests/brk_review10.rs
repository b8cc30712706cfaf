//! Circuit breaker and retry policy, review 10.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `err_review3.rs` for why).
#[path = "common/logs.rs"]
mod logs;

use std::time::Duration;

use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, OpenDuration, Outcome,
};

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
            .layer(layer.with_classifier(|r: &Result<u32, BoxError>| match r {
                Ok(0) | Err(_) => Outcome::Failure,
                Ok(_) => Outcome::Success,
            }))
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
