//! Regressions of the circuit breaker's events: a move to the state the breaker is already in
//! is not told as a transition.

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
