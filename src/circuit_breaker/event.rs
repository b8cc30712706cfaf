//! States, events and the metrics snapshot.

use std::fmt;
use std::time::Duration;

/// The state of a circuit breaker.
///
/// See the [module docs](super).
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::CircuitState;
///
/// assert_eq!(CircuitState::HalfOpen.to_string(), "HALF_OPEN");
/// assert_eq!(serde_json::to_string(&CircuitState::ForcedOpen).unwrap(), "\"FORCED_OPEN\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CircuitState {
    /// Calls pass; outcomes are recorded and may open the breaker.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A fixed number of probes pass; their verdict closes or re-opens the breaker.
    HalfOpen,
    /// Calls pass and nothing is recorded.
    Disabled,
    /// Calls are rejected until the breaker is moved out of this state by hand.
    ForcedOpen,
    /// Calls pass and outcomes are recorded, but the breaker never opens (thresholds still
    /// raise events).
    MetricsOnly,
}

impl CircuitState {
    pub(crate) const fn to_bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::Disabled => 3,
            Self::ForcedOpen => 4,
            Self::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> Self {
        match bits & 7 {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::Disabled,
            4 => Self::ForcedOpen,
            _ => Self::MetricsOnly,
        }
    }

    /// The state's name as resilience4j spells it (`CLOSED`, `HALF_OPEN`, ...).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// const LABEL: &str = CircuitState::ForcedOpen.as_str();
    /// assert_eq!(LABEL, "FORCED_OPEN");
    ///
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// assert_eq!(handle.state().as_str(), "CLOSED");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
            Self::Disabled => "DISABLED",
            Self::ForcedOpen => "FORCED_OPEN",
            Self::MetricsOnly => "METRICS_ONLY",
        }
    }

    /// Whether a manual transition from `self` to `to` is allowed. The refused ones are
    /// those resilience4j refuses: CLOSED to HALF_OPEN, and METRICS_ONLY to OPEN or HALF_OPEN.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitState;
    ///
    /// assert!(CircuitState::Closed.can_transition_to(CircuitState::Open));
    /// assert!(CircuitState::Open.can_transition_to(CircuitState::HalfOpen));
    /// assert!(!CircuitState::Closed.can_transition_to(CircuitState::HalfOpen));
    /// assert!(!CircuitState::MetricsOnly.can_transition_to(CircuitState::Open));
    /// ```
    pub const fn can_transition_to(self, to: CircuitState) -> bool {
        !matches!(
            (self, to),
            (Self::Closed, Self::HalfOpen)
                | (Self::MetricsOnly, Self::Open)
                | (Self::MetricsOnly, Self::HalfOpen)
        )
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker opened (or would have, in METRICS_ONLY).
///
/// # Example
///
/// ```
/// use std::sync::{Arc, Mutex};
/// # use http::Response;
/// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, TripReason};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let reasons = Arc::new(Mutex::new(Vec::new()));
/// let log = reasons.clone();
/// let config = CircuitBreakerConfig::default().consecutive_failures(2).on_event(move |event| {
///     if let CircuitEvent::StateTransition { reason: Some(reason), .. } = event {
///         log.lock().unwrap().push(*reason);
///     }
/// });
/// let (layer, _handle) = CircuitBreakerLayer::pair(config).unwrap();
/// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
/// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
/// # });
/// for _ in 0..2 {
///     svc.ready().await.unwrap().call(500).await.unwrap();
/// }
/// assert_eq!(*reasons.lock().unwrap(), [TripReason::ConsecutiveFailures(2)]);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum TripReason {
    /// The failure rate, in percent, reached the threshold.
    FailureRate(f64),
    /// The slow-call rate, in percent, reached the threshold.
    SlowCallRate(f64),
    /// This many failures came in a row.
    ConsecutiveFailures(u32),
    /// The half-open probes failed.
    ProbesFailed,
    /// HALF_OPEN reached no verdict within the configured maximum wait.
    HalfOpenTimeout,
    /// A person or program asked for it through the handle.
    Manual,
}

/// Something that happened to a breaker, given to the listener set with
/// [`CircuitBreakerConfig::on_event`](super::CircuitBreakerConfig::on_event).
///
/// # Example
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, CircuitState};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let config = CircuitBreakerConfig::default().on_event(move |event| {
///     if let CircuitEvent::StateTransition { to, .. } = event {
///         log.lock().unwrap().push(*to);
///     }
/// });
/// let (_layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
/// handle.transition_to_forced_open().unwrap();
/// assert_eq!(*seen.lock().unwrap(), [CircuitState::ForcedOpen]);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CircuitEvent {
    /// The state changed.
    StateTransition {
        /// The breaker's name.
        name: std::sync::Arc<str>,
        /// The state before.
        from: CircuitState,
        /// The state after.
        to: CircuitState,
        /// Why (for transitions to OPEN).
        reason: Option<TripReason>,
    },
    /// A call was rejected.
    Rejected {
        /// The breaker's name.
        name: std::sync::Arc<str>,
        /// The state that rejected it.
        state: CircuitState,
        /// When to come back, if known.
        retry_after: Option<Duration>,
    },
    /// A threshold was reached. In CLOSED it is reported once per trip, just before the
    /// transition to OPEN it causes (calls that fail together all find it reached, but only
    /// the one that opens the breaker reports it). In METRICS_ONLY this is all that happens,
    /// and each rule is reported once per METRICS_ONLY period (not again at every call while
    /// it stays exceeded).
    ThresholdExceeded {
        /// The breaker's name.
        name: std::sync::Arc<str>,
        /// Which rule, and the measured value.
        reason: TripReason,
    },
    /// The breaker was reset through
    /// [`CircuitBreakerHandle::reset`](super::CircuitBreakerHandle::reset): its windows and
    /// counters were cleared and it is CLOSED. Told after the `StateTransition` to CLOSED,
    /// if the breaker was in another state, and also when it was CLOSED already (as
    /// resilience4j's reset event).
    Reset {
        /// The breaker's name.
        name: std::sync::Arc<str>,
    },
}

/// A point-in-time view of a breaker, for a `/status` endpoint or a metrics exporter.
///
/// Counts are those of the current window (they restart at every state transition), except
/// `not_permitted_calls`, which counts rejections since the breaker was created.
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
///
/// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let json = serde_json::to_value(handle.snapshot()).unwrap();
/// assert_eq!(json["state"], "CLOSED");
/// assert_eq!(json["buffered_calls"], 0);
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// The breaker's name.
    pub name: String,
    /// The current state.
    pub state: CircuitState,
    /// Failure rate in percent, once the window holds the minimum number of calls (in
    /// HALF_OPEN: once a probe has completed).
    pub failure_rate: Option<f64>,
    /// Slow-call rate in percent, once the window holds the minimum number of calls (in
    /// HALF_OPEN: once a probe has completed).
    pub slow_call_rate: Option<f64>,
    /// Outcomes in the window (in HALF_OPEN: completed probes).
    pub buffered_calls: u32,
    /// Failures in the window.
    pub failed_calls: u32,
    /// Successes in the window.
    pub successful_calls: u32,
    /// Slow calls in the window (successful or not).
    pub slow_calls: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Calls rejected since the breaker was created.
    pub not_permitted_calls: u64,
    /// Probe permits taken in the current HALF_OPEN period, by probes still running and by
    /// probes that completed; a probe that is dropped or whose outcome is neutral gives its
    /// permit back.
    pub half_open_permits_taken: u32,
    /// Milliseconds until OPEN lets probes through (OPEN only).
    pub retry_after_ms: Option<u64>,
    /// Bumped at every transition; results of calls admitted in an older generation are ignored.
    pub generation: u32,
}
