//! Stop calling an upstream that is failing, and find out when it is back.
//!
//! [`CircuitBreakerLayer`] wraps an outbound client (a `reqwest::Client` used as a tower
//! service, a hyper client, a tonic `Channel`) or, if you want, an inbound route. All the
//! services it makes share one breaker, observed and steered through a
//! [`CircuitBreakerHandle`]; [`KeyedCircuitBreakerLayer`] keeps one breaker per key (per host,
//! per repository) behind one layer.
//!
//! # States
//!
//! | state | calls | outcomes | leaves by |
//! |---|---|---|---|
//! | CLOSED | pass | recorded in the sliding window | a rule trips: OPEN |
//! | OPEN | rejected with [`CircuitOpen`] (carries `retry_after`) | - | the open duration passes: HALF_OPEN |
//! | HALF_OPEN | exactly `half_open_probes` pass, the rest is rejected | the probes' verdict | rates under the thresholds: CLOSED; else OPEN (also after `max_half_open_wait`) |
//! | DISABLED | pass | not recorded | hand |
//! | FORCED_OPEN | rejected | - | hand |
//! | METRICS_ONLY | pass | recorded, events raised, never opens | hand |
//!
//! Manual transitions and [`reset`](CircuitBreakerHandle::reset) go through the handle; the
//! ones resilience4j refuses (CLOSED to HALF_OPEN, METRICS_ONLY to OPEN or HALF_OPEN) are
//! refused with [`IllegalTransition`].
//!
//! # Rules
//!
//! - **Window**: [`SlidingWindow::Count`] is a true ring of the last N outcomes (the N+1th
//!   evicts the oldest; 100 successes followed by failures still trip), [`SlidingWindow::Time`]
//!   is N buckets that expire, also across idle gaps (each a fixed slice of the span that
//!   leaves the window whole).
//! - **Rates**: failure rate and slow-call rate, thresholds inclusive (`>=`), evaluated once the
//!   window holds [`minimum_calls`](CircuitBreakerConfig::minimum_calls).
//! - **Consecutive failures**: `n` failures in a row open the breaker (default 5, from
//!   `CIRCUIT_BREAKER_FAILURE_THRESHOLD`).
//! - **Generations**: every transition bumps a generation; a call admitted in an older one
//!   never drives a transition (gobreaker's rule).
//! - **Open duration**: [`OpenDuration::Fixed`] (default 30 s, from
//!   `CIRCUIT_BREAKER_RECOVERY_TIMEOUT`) or [`OpenDuration::Backoff`] by attempt with jitter and a
//!   cap; optionally at least the upstream's `Retry-After` on 429/503, capped
//!   ([`honor_retry_after`](CircuitBreakerConfig::honor_retry_after)).
//! - **Half-open**: exactly `half_open_probes` calls are admitted, even under a burst of
//!   concurrent callers; a probe whose future or response body is dropped (unless it panicked:
//!   that is a failure), or whose outcome is [`Outcome::Neutral`], gives its permit back. A probe of an earlier half-open period that is
//!   still running counts against the next period, so a recovering upstream never has more than
//!   `half_open_probes` calls in flight; except when that period ended at its
//!   [`max_half_open_wait`](CircuitBreakerConfig::max_half_open_wait), which abandons the
//!   probes it leaves running (as resilience4j does), so a probe that never ends cannot keep
//!   the breaker from probing again, and except once the breaker has admitted every call since
//!   (CLOSED, by a verdict, a reset or a hand; DISABLED; METRICS_ONLY): those probes are then
//!   calls in flight like any other.
//!
//! # Outcomes
//!
//! A [`ClassifyOutcome`] decides. [`DefaultClassifier`] uses tower-http's `classify`: HTTP 5xx
//! are failures, 4xx successes (408 and 429 configurable); gRPC codes, with `grpc-status` read
//! from the trailers at the end of the stream; errors of the inner service are failures, except a
//! [`Problem`](crate::error::Problem), classified by its status as the response it becomes, and
//! the [`CircuitOpen`] of a breaker nearer the upstream (a keyed breaker under a global one), or a
//! reqwest builder error, which are neutral: the call was not made. A reqwest status error (from
//! `error_for_status()`) is classified by its status, as the response was. A closure `Fn(&Result<Res, E>) -> Outcome` is a classifier too.
//!
//! A call that panics (in the inner service's `call`, in its future, or in a gRPC response body
//! before its trailers) is a failure, whatever the classifier, as an exception is for
//! resilience4j: it is recorded while the panic unwinds, whether an outer layer such as
//! [`WebhookErrorLayer`](crate::error::WebhookErrorLayer) catches it or the task ends with it.
//! A call dropped before it ends (a cancelled request, or one dropped while a panic of
//! something else unwinds, such as another branch of a `join!`) records nothing.
//!
//! So a timeout belongs below the breaker, nearer the upstream, where its error is the call's
//! outcome: `ServiceBuilder::new().layer(breaker).timeout(limit)` records each
//! [`Elapsed`](tower::timeout::error::Elapsed) as a failure (as reqwest's own timeout is). A
//! timeout above the breaker drops the call: an upstream that never answers then never opens
//! it, and in HALF_OPEN each probe it drops gives its permit back for another.
//!
//! # The tower contract
//!
//! An open breaker never returns `Err` from `poll_ready` and never polls the inner service only
//! to reject: `poll_ready` decides admission first and, for a call it will reject (OPEN,
//! FORCED_OPEN, HALF_OPEN without a free probe permit), returns `Ready(Ok)` without reserving
//! capacity in the inner service; `call` then returns a ready future failing with
//! [`CircuitOpen`], like `tower::load_shed`. Opt in to
//! [`with_backpressure`](CircuitBreakerLayer::with_backpressure) to have `poll_ready` wait
//! until the open duration has passed instead.
//!
//! Through [`WebhookErrorLayer`](crate::error::WebhookErrorLayer), a `CircuitOpen` becomes
//! `503 Service Unavailable` with `Retry-After` when the breaker knows the wait (OPEN, or
//! HALF_OPEN with a `max_half_open_wait`; none in FORCED_OPEN) and an
//! `application/problem+json` body (type
//! [`types::CIRCUIT_OPEN`](crate::error::types::CIRCUIT_OPEN)), or gRPC `Unavailable`; a tonic
//! client on a breaker-wrapped `Channel` sees `Code::Unavailable` (feature `tonic`).
//!
//! # Cost
//!
//! The hot path is atomics only, with no allocation and no boxing. While the breaker is CLOSED
//! and its count window is full of successes with no run of failures counting, a success
//! writes nothing: recording it would only replace one success of the ring by another. Every
//! other outcome enters the window in the order calls complete; under concurrency that order
//! is the only one there is. The clock is `tokio::time::Instant`, so tests run with paused
//! time.
//!
//! # Events and metrics
//!
//! Transitions, rejections, thresholds and resets are logged with `tracing` and given to the listener
//! set with [`CircuitBreakerConfig::on_event`]. [`CircuitBreakerHandle::snapshot`] returns a
//! `serde::Serialize` [`Snapshot`] for a `/status` endpoint.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//! use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
//! use tower_webhook::error::WebhookErrorLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let config = CircuitBreakerConfig::default()
//!     .consecutive_failures(3)
//!     .open_duration(tower_webhook::circuit_breaker::OpenDuration::Fixed(Duration::from_secs(10)));
//! let (breaker, handle) = CircuitBreakerLayer::pair(config).unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(WebhookErrorLayer::new())
//!     .layer(breaker)
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         let mut res = Response::new(Full::<Bytes>::default());
//!         *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!         Ok::<_, BoxError>(res)
//!     });
//!
//! for _ in 0..3 {
//!     svc.ready().await.unwrap().call(Request::new(Full::default())).await.unwrap();
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//!
//! let res = svc.ready().await.unwrap().call(Request::new(Full::default())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "10");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```

mod classify;
mod config;
mod error;
mod event;
mod keyed;
mod layer;
mod state;
mod window;

pub use classify::{ClassifyOutcome, DefaultClassifier, ErrorOutcome, ResponseBody};
pub use config::{
    CircuitBreakerConfig, ConfigError, ENV_FAILURE_THRESHOLD, ENV_RECOVERY_TIMEOUT, MAX_BUCKETS,
    MAX_WINDOW_CALLS, OpenDuration, SlidingWindow,
};
pub use error::{CircuitOpen, IllegalTransition};
pub use event::{CircuitEvent, CircuitState, Snapshot, TripReason};
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, ResponseFuture};
pub use state::{Outcome, Recorder};

/// Recognises this module's errors for [`WebhookErrorLayer`](crate::error::WebhookErrorLayer).
pub(crate) fn recognize(err: &(dyn std::error::Error + 'static)) -> Option<crate::error::Problem> {
    err.downcast_ref::<CircuitOpen>()
        .map(crate::error::Problem::from_error)
}
