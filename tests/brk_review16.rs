//! Circuit breaker and retry policy, review 16.

use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, OpenDuration,
};

/// How the upstream answers one call.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `503` with `Retry-After: 3600`.
    BusyForAnHour,
    /// `500`, asking for no wait.
    Broken,
    /// `200`.
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
