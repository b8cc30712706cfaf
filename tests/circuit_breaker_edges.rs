//! Edges of the circuit breaker's rules, through the public API with paused time: a value
//! exactly at a threshold, durations at their limits.

use std::time::Duration;

use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Outcome, SlidingWindow,
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
