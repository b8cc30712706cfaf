//! The rejection error and the manual-transition error.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::event::CircuitState;
use crate::error::{GrpcCode, HttpError, types};

/// The shortest `Retry-After` a refusal answers with.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The breaker rejected a call without calling the inner service.
///
/// Downcast it from the service's `BoxError`. Through
/// [`WebhookErrorLayer`](crate::error::WebhookErrorLayer) it becomes `503 Service Unavailable`
/// with problem type [`types::CIRCUIT_OPEN`], or gRPC `Unavailable`. The answer carries
/// `Retry-After` (whole seconds, rounded up, at least 1) when the wait is known: while OPEN,
/// and for a HALF_OPEN refusal under
/// [`max_half_open_wait`](super::CircuitBreakerConfig::max_half_open_wait) (see
/// [`retry_after`](Self::retry_after)); not in FORCED_OPEN, which ends only by hand. With the
/// `tonic` feature its [`source`](std::error::Error::source) is a
/// `tonic::Status::unavailable`, so a tonic client built on a breaker-wrapped `Channel` sees
/// `Code::Unavailable`; `tonic::Status::from(open)` keeps the rejection as the status's source.
/// Both statuses carry the wait as `grpc-retry-pushback-ms` (gRPC's server pushback, in
/// milliseconds, rounded up), the same wait as the HTTP answer's `Retry-After`, when the
/// rejection has one.
/// The retry policy of this crate never retries it, in either form.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, Outcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
///     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
/// handle.transition_to_open().unwrap();
///
/// let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
/// let open = err.downcast_ref::<CircuitOpen>().unwrap();
/// assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
/// # }
/// ```
pub struct CircuitOpen {
    state: CircuitState,
    retry_after: Option<Duration>,
    #[cfg(feature = "tonic")]
    status: std::sync::OnceLock<tonic::Status>,
}

impl CircuitOpen {
    /// The error of a call made without a ready `poll_ready`, when no breaker tells it: as a
    /// CLOSED breaker's, with no wait.
    pub(crate) fn not_ready() -> Self {
        Self::new(CircuitState::Closed, None)
    }

    pub(crate) fn new(state: CircuitState, retry_after: Option<Duration>) -> Self {
        Self {
            state,
            retry_after,
            #[cfg(feature = "tonic")]
            status: std::sync::OnceLock::new(),
        }
    }

    /// How long until the state that refused the call ends at the latest, when the breaker
    /// knows:
    ///
    /// - OPEN: until probes are let through;
    /// - HALF_OPEN with every probe permit taken: until the period's
    ///   [`max_half_open_wait`](super::CircuitBreakerConfig::max_half_open_wait) runs out, when
    ///   one is set (the probes' verdict may end it sooner); `None` without one;
    /// - FORCED_OPEN: `None`, only a manual transition ends it.
    ///
    /// When the refusing period ended between `poll_ready` and `call`, the wait is that of the
    /// period in force when `call` answers: the new OPEN (or HALF_OPEN) period's, with its
    /// state, if the breaker refuses calls again; zero if it admits them. The HTTP answer's
    /// `Retry-After` is at least one second.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .half_open_probes(1)
    ///     .max_half_open_wait(Duration::from_secs(10));
    /// # let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let svc = ServiceBuilder::new()
    /// #     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    /// #     .service_fn(|_: ()| async {
    /// #         tokio::time::sleep(Duration::from_secs(60)).await;
    /// #         Ok::<_, BoxError>(())
    /// #     });
    /// let retry_after = |err: BoxError| err.downcast_ref::<CircuitOpen>().unwrap().retry_after();
    ///
    /// // HALF_OPEN: the only probe is running, the period ends within 10 s.
    /// handle.transition_to_open().unwrap();
    /// tokio::time::advance(Duration::from_secs(30)).await;
    /// let probe = tokio::spawn(svc.clone().oneshot(()));
    /// tokio::task::yield_now().await;
    /// tokio::time::advance(Duration::from_secs(4)).await;
    /// let err = svc.clone().oneshot(()).await.unwrap_err();
    /// assert_eq!(retry_after(err), Some(Duration::from_secs(6)));
    /// probe.abort();
    ///
    /// // FORCED_OPEN has no end that the breaker knows of.
    /// handle.transition_to_forced_open().unwrap();
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(retry_after(err), None);
    /// # }
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The state that rejected the call.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let svc = ServiceBuilder::new()
    /// #     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    /// #     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    /// handle.transition_to_open().unwrap();
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Whether `error`, or an error in its `source()` chain, is a `CircuitOpen`.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let svc = ServiceBuilder::new()
    /// #     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    /// #     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    /// handle.transition_to_open().unwrap();
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert!(CircuitOpen::is_in(&*err));
    /// assert!(!CircuitOpen::is_in(&std::io::Error::other("connection reset")));
    /// // Also when an I/O interface wrapped it (`io::Error::other`, whose `source()` skips it).
    /// assert!(CircuitOpen::is_in(&std::io::Error::other(err)));
    /// # }
    /// ```
    pub fn is_in(error: &(dyn std::error::Error + 'static)) -> bool {
        Self::find(error).is_some()
    }

    /// The `CircuitOpen` in `error`'s `source()` chain, if any. An `io::Error` made from
    /// another error (`io::Error::other(open)`, whose `source()` skips it) is looked into. The
    /// walk looks at each error once and at most 32 of them, so it ends also on a chain a
    /// broken `Error` impl made cyclic.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, Outcome};
    ///
    /// /// An application error that keeps the cause.
    /// #[derive(Debug)]
    /// struct SyncFailed(BoxError);
    /// impl std::fmt::Display for SyncFailed {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("could not sync the pull request")
    ///     }
    /// }
    /// impl std::error::Error for SyncFailed {
    ///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
    ///         Some(&*self.0)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let svc = ServiceBuilder::new()
    /// #     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    /// #     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    /// handle.transition_to_open().unwrap();
    /// let err = SyncFailed(svc.oneshot(()).await.unwrap_err());
    /// let open = CircuitOpen::find(&err).expect("the cause is an open breaker");
    /// assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    /// # }
    /// ```
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a CircuitOpen> {
        // Bounded: a broken `Error` impl can make the chain a cycle.
        crate::error_chain::links(error).find_map(|err| err.downcast_ref::<CircuitOpen>())
    }
}

impl Clone for CircuitOpen {
    fn clone(&self) -> Self {
        Self::new(self.state, self.retry_after)
    }
}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("state", &self.state)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker is {}", self.state)?;
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {} ms", after.as_millis())?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        {
            Some(self.status.get_or_init(|| {
                self.with_pushback(tonic::Status::unavailable("circuit breaker is open"))
            }))
        }
        #[cfg(not(feature = "tonic"))]
        {
            None
        }
    }
}

#[cfg(feature = "tonic")]
impl CircuitOpen {
    /// `status` with the wait a gRPC client is told: `grpc-retry-pushback-ms` (gRPC's server
    /// pushback, A6), the same wait as the `Retry-After` of the HTTP answer. None without a
    /// wait: the client's own policy decides.
    fn with_pushback(&self, mut status: tonic::Status) -> tonic::Status {
        if let Some(after) = HttpError::retry_after(self) {
            let value = crate::error::pushback_value(after);
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
        }
        status
    }
}

#[cfg(feature = "tonic")]
impl From<CircuitOpen> for tonic::Status {
    fn from(open: CircuitOpen) -> Self {
        let mut status = open.with_pushback(tonic::Status::unavailable(open.to_string()));
        // Kept as the source, so `CircuitOpen::find` and the retry policy still see it.
        status.set_source(std::sync::Arc::new(open));
        status
    }
}

impl HttpError for CircuitOpen {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn problem_type(&self) -> &str {
        types::CIRCUIT_OPEN
    }

    fn title(&self) -> &str {
        "Circuit Open"
    }

    fn detail(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(
            "An upstream service is failing; the call was not attempted. Retry later.",
        ))
    }

    /// At least one second: a refusal whose period ended between `poll_ready` and `call` has
    /// no wait left, but `Retry-After: 0` would invite an immediate retry.
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after.map(|after| after.max(MIN_RETRY_AFTER))
    }

    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::Unavailable
    }
}

/// A manual transition the state machine does not allow (CLOSED to HALF_OPEN, METRICS_ONLY to
/// OPEN or HALF_OPEN).
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
///
/// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let err = handle.transition_to_half_open().unwrap_err();
/// assert_eq!((err.from(), err.to()), (CircuitState::Closed, CircuitState::HalfOpen));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
}

impl IllegalTransition {
    /// The state the breaker was in.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// handle.transition_to_metrics_only().unwrap();
    /// let err = handle.transition_to_open().unwrap_err();
    /// assert_eq!(err.from(), CircuitState::MetricsOnly);
    /// ```
    pub fn from(&self) -> CircuitState {
        self.from
    }

    /// The state that was asked for.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// let err = handle.transition_to(CircuitState::HalfOpen).unwrap_err();
    /// assert_eq!(err.to(), CircuitState::HalfOpen);
    /// assert_eq!(err.to_string(), "illegal circuit breaker transition from CLOSED to HALF_OPEN");
    /// ```
    pub fn to(&self) -> CircuitState {
        self.to
    }
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "illegal circuit breaker transition from {} to {}",
            self.from, self.to
        )
    }
}

impl std::error::Error for IllegalTransition {}
