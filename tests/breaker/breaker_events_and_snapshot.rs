//! Regressions of the circuit breaker's events and snapshot: a move to the state the breaker
//! is already in is not told as a transition, and the snapshot's half-open permits count
//! finished probes too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, CircuitState, OpenDuration, Outcome,
};

/// The transitions a listener was told of, in the order it was told.
type Told = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

fn classify(r: &Result<bool, BoxError>) -> Outcome {
    match r {
        Ok(true) => Outcome::Success,
        Ok(false) => Outcome::Failure,
        Err(_) => Outcome::Neutral,
    }
}

/// `StateTransition` says "the state changed": a reset of a CLOSED breaker, or a manual move
/// to the state the breaker is in, restarts its window but changes no state, and resilience4j
/// tells no transition for it. A status page that counts transitions, or alerts on every
/// one, must not see `CLOSED -> CLOSED`. The events around it keep their order.
#[tokio::test(start_paused = true)]
async fn a_move_to_the_current_state_is_not_told_as_a_transition() {
    let told: Told = Arc::default();
    let seen = told.clone();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .on_event(move |event| {
            if let CircuitEvent::StateTransition { from, to, .. } = event {
                seen.lock().unwrap().push((*from, *to));
            }
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.with_classifier(classify))
        .service_fn(|ok: bool| async move { Ok::<_, BoxError>(ok) });

    // A failure on record, then a reset of the CLOSED breaker: a fresh window, no transition.
    handle.transition_to_disabled().unwrap();
    handle.transition_to_closed().unwrap();
    handle.reset();
    handle.transition_to_closed().unwrap();
    handle.transition_to_forced_open().unwrap();
    handle.transition_to_forced_open().unwrap();
    handle.reset();
    handle.reset();
    svc.ready().await.unwrap().call(false).await.unwrap();
    handle.transition_to_open().unwrap();

    use CircuitState::*;
    assert_eq!(
        *told.lock().unwrap(),
        [
            (Closed, Disabled),
            (Disabled, Closed),
            (Closed, ForcedOpen),
            (ForcedOpen, Closed),
            (Closed, Open),
        ],
        "a move to the current state was told as a transition"
    );
    // The window still restarted at each of them.
    assert_eq!(handle.state(), Open);
    assert_eq!(handle.snapshot().generation, 10);
}

/// `half_open_permits_taken` counts the permits of the current HALF_OPEN period: a probe that
/// completed keeps its permit (another caller is still refused), a neutral one gives it back.
#[tokio::test(start_paused = true)]
async fn half_open_permits_taken_counts_finished_probes() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(2)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(1)));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            layer.with_classifier(|r: &Result<Option<bool>, BoxError>| match r {
                Ok(Some(true)) => Outcome::Success,
                Ok(Some(false)) | Err(_) => Outcome::Failure,
                Ok(None) => Outcome::Neutral,
            }),
        )
        .service_fn(|ok: Option<bool>| async move { Ok::<_, BoxError>(ok) });
    svc.ready().await.unwrap().call(Some(false)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    // A neutral probe gives its permit back.
    svc.ready().await.unwrap().call(None).await.unwrap();
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);
    // A probe that succeeded keeps it: one verdict of two, one permit left.
    svc.ready().await.unwrap().call(Some(true)).await.unwrap();
    let snapshot = handle.snapshot();
    assert_eq!(
        (
            snapshot.state,
            snapshot.buffered_calls,
            snapshot.half_open_permits_taken
        ),
        (CircuitState::HalfOpen, 1, 1)
    );
    svc.ready().await.unwrap().call(Some(true)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}
