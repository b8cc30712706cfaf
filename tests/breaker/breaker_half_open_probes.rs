//! Circuit breaker: half-open verdicts (slow probes, probes that never end, periods ended by hand)
//! and the wait a late rejection tells.

use std::time::Duration;

use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, CircuitState,
    OpenDuration, Outcome,
};

type Svc = BoxCloneService<(u64, bool), (), BoxError>;

/// A breaker around a service that sleeps `ms` milliseconds, then succeeds or fails (`ok`).
fn svc(config: CircuitBreakerConfig) -> (Svc, CircuitBreakerHandle) {
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|r: &Result<bool, BoxError>| match r {
            Ok(true) => Outcome::Success,
            _ => Outcome::Failure,
        }))
        .service_fn(|(ms, ok): (u64, bool)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(ok)
        });
    let svc = tower::util::MapResponseLayer::new(|_| ()).layer(svc);
    (BoxCloneService::new(svc), handle)
}

/// HALF_OPEN judges slow probes as resilience4j does: probes that all succeed but are slow
/// re-open the breaker when the slow-call rate reaches its threshold, and fast ones close it.
#[tokio::test(start_paused = true)]
async fn slow_but_successful_probes_reopen_by_the_slow_call_rate() {
    let config = CircuitBreakerConfig::default()
        .slow_call_rate_threshold(50.0, Duration::from_millis(100))
        .half_open_probes(2);
    let (svc, handle) = svc(config);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    let a = svc.clone().oneshot((500, true));
    let b = svc.clone().oneshot((500, true));
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    b.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    let (a, b) = tokio::join!(
        svc.clone().oneshot((500, true)),
        svc.clone().oneshot((10, true))
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    let (a, b) = tokio::join!(
        svc.clone().oneshot((10, true)),
        svc.clone().oneshot((10, true))
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A refusal decided in `poll_ready` and answered by a later `call` told the wait of the OPEN
/// period that refused it, even when that period had ended and the breaker had opened again:
/// `Retry-After` 0 (1 s through the error layer) while the breaker stayed open 30 s more, or a
/// wait of 30 s from a breaker that had been reset and admitted calls again.
#[tokio::test(start_paused = true)]
async fn a_refusal_answered_after_its_period_ended_tells_the_current_wait() {
    let config =
        CircuitBreakerConfig::default().open_duration(OpenDuration::Fixed(Duration::from_secs(30)));
    let (mut svc, handle) = svc(config);
    let rejection = |err: BoxError| *err.downcast::<CircuitOpen>().unwrap();

    // Refused by an OPEN period that ends; the breaker opens again before the call.
    handle.transition_to_open().unwrap();
    svc.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(1)).await;
    handle.transition_to_open().unwrap();
    let open = rejection(svc.call((0, true)).await.unwrap_err());
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));

    // Refused while OPEN, reset before the call: there is nothing left to wait for.
    handle.transition_to_open().unwrap();
    svc.ready().await.unwrap();
    handle.reset();
    let open = rejection(svc.call((0, true)).await.unwrap_err());
    assert_eq!(open.retry_after(), Some(Duration::ZERO));
    svc.ready().await.unwrap().call((0, true)).await.unwrap();

    // Refused while OPEN, forced open before the call: no end to tell.
    handle.transition_to_open().unwrap();
    svc.ready().await.unwrap();
    handle.transition_to_forced_open().unwrap();
    let open = rejection(svc.call((0, true)).await.unwrap_err());
    assert_eq!(open.state(), CircuitState::ForcedOpen);
    assert_eq!(open.retry_after(), None);

    // Within one period the wait still counts down from the decision's deadline.
    handle.transition_to_closed().unwrap();
    handle.transition_to_open().unwrap();
    svc.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let open = rejection(svc.call((0, true)).await.unwrap_err());
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
}

/// A probe that never ends (a client without a timeout, an upstream that swallows the
/// connection) kept counting against every later half-open period: after `max_half_open_wait`
/// the breaker went back to OPEN, then HALF_OPEN admitted no probe at all, and so on for as long
/// as the stuck call lived, refusing every call even once the upstream was back. The period that
/// times out now abandons its probes, as resilience4j does, and the next one probes again.
#[tokio::test(start_paused = true)]
async fn a_probe_that_never_ends_does_not_keep_later_periods_from_probing() {
    let config = CircuitBreakerConfig::default()
        .half_open_probes(1)
        .max_half_open_wait(Duration::from_secs(5))
        .open_duration(OpenDuration::Fixed(Duration::from_secs(10)));
    let (svc, handle) = svc(config);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let stuck = tokio::spawn(svc.clone().oneshot((u64::MAX / 4, true)));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().half_open_permits_taken, 1);

    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    svc.clone().oneshot((0, true)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // The abandoned probe ends at last: nothing is counted, nothing is given back twice.
    stuck.abort();
    let _ = stuck.await;
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = tokio::spawn(svc.clone().oneshot((1_000, true)));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot((0, true)).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "one probe at a time: {err}");
    probe.await.unwrap().unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// Without a half-open timeout, a probe of an earlier period that is still running still counts
/// against the next one (a manual move ended its period): one call at a time in the upstream.
#[tokio::test(start_paused = true)]
async fn a_probe_of_a_period_ended_by_hand_still_counts_against_the_next() {
    let config = CircuitBreakerConfig::default()
        .half_open_probes(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(10)));
    let (svc, handle) = svc(config);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let slow = tokio::spawn(svc.clone().oneshot((60_000, true)));
    tokio::task::yield_now().await;
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let err = svc.clone().oneshot((0, true)).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    tokio::time::advance(Duration::from_secs(40)).await;
    slow.await.unwrap().unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::HalfOpen,
        "its verdict came too late"
    );
    svc.clone().oneshot((0, true)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A service made ready in HALF_OPEN and never called (a clone kept idle, a service
/// `tower::steer::Steer` readied and did not pick) holds no probe permit: the other callers
/// probe, and their verdict closes the breaker. A permit held from `poll_ready` to a `call`
/// that never came kept the breaker HALF_OPEN, refusing everything, for as long as the idle
/// service lived.
#[tokio::test(start_paused = true)]
async fn a_service_made_ready_and_never_called_holds_no_probe_permit() {
    let config = CircuitBreakerConfig::default()
        .open_duration(OpenDuration::Fixed(Duration::from_secs(1)))
        .half_open_probes(1);
    let (svc, handle) = svc(config);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    let mut idle = svc.clone();
    idle.ready().await.unwrap();
    svc.clone().oneshot((1, true)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // The idle service's call, when it comes, is decided then: admitted, the breaker closed.
    idle.call((1, true)).await.unwrap();
    assert_eq!(handle.snapshot().buffered_calls, 1);
}

/// With the only permit taken by another call since `poll_ready`, the ready service's call is
/// refused with `CircuitOpen` and never reaches the upstream; its permit-less readiness did
/// not let a second probe through.
#[tokio::test(start_paused = true)]
async fn a_ready_service_whose_permit_was_taken_since_is_refused_in_call() {
    let config = CircuitBreakerConfig::default()
        .open_duration(OpenDuration::Fixed(Duration::from_secs(1)))
        .half_open_probes(1);
    let (svc, handle) = svc(config);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;

    let mut first = svc.clone();
    let mut second = svc.clone();
    first.ready().await.unwrap();
    second.ready().await.unwrap();
    // The first probe is in flight (a 100 ms call) when the second is called.
    let probe = tokio::spawn(first.call((100, true)));
    tokio::task::yield_now().await;
    let refused = second.call((1, true)).await.unwrap_err();
    assert!(refused.is::<CircuitOpen>(), "{refused}");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    probe.await.unwrap().unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}
