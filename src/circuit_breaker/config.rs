//! Configuration of a circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::event::CircuitEvent;

/// The environment variable holding the number of consecutive failures that opens the breaker.
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, ENV_FAILURE_THRESHOLD};
///
/// assert_eq!(ENV_FAILURE_THRESHOLD, "CIRCUIT_BREAKER_FAILURE_THRESHOLD");
/// let config = CircuitBreakerConfig::from_env_with(|name| {
///     (name == ENV_FAILURE_THRESHOLD).then(|| "3".to_owned())
/// })
/// .unwrap();
/// assert_eq!(config.consecutive_failure_threshold(), 3);
/// ```
pub const ENV_FAILURE_THRESHOLD: &str = "CIRCUIT_BREAKER_FAILURE_THRESHOLD";
/// The environment variable holding how long the breaker stays open, in seconds.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, ENV_RECOVERY_TIMEOUT, OpenDuration};
///
/// let config = CircuitBreakerConfig::from_env_with(|name| {
///     (name == ENV_RECOVERY_TIMEOUT).then(|| "2.5".to_owned())
/// })
/// .unwrap();
/// assert_eq!(config.open_duration_setting(), OpenDuration::Fixed(Duration::from_millis(2500)));
/// ```
pub const ENV_RECOVERY_TIMEOUT: &str = "CIRCUIT_BREAKER_RECOVERY_TIMEOUT";

/// The largest count-based window (half-open probes are at most 4000, see
/// [`CircuitBreakerConfig::half_open_probes`]).
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, MAX_WINDOW_CALLS, SlidingWindow};
///
/// let largest = CircuitBreakerConfig::default().sliding_window(SlidingWindow::Count(MAX_WINDOW_CALLS));
/// assert!(largest.validate().is_ok());
///
/// let too_large = largest.sliding_window(SlidingWindow::Count(MAX_WINDOW_CALLS + 1));
/// assert_eq!(too_large.validate().unwrap_err().setting(), "sliding_window");
/// ```
pub const MAX_WINDOW_CALLS: u32 = 10_000;
/// The largest number of time buckets.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, MAX_BUCKETS, SlidingWindow};
///
/// let window = |buckets| SlidingWindow::Time { span: Duration::from_secs(60), buckets };
/// let config = CircuitBreakerConfig::default();
/// assert!(config.clone().sliding_window(window(MAX_BUCKETS)).validate().is_ok());
/// assert!(config.sliding_window(window(MAX_BUCKETS + 1)).validate().is_err());
/// ```
pub const MAX_BUCKETS: u32 = 1_000;
const MAX_PROBES: u32 = 4_000;
/// The longest open duration, and maximum wait in HALF_OPEN.
const MAX_OPEN: Duration = Duration::from_secs(86_400 * 365);
/// The longest `honor_retry_after` cap: an upstream asking for more is down for the day.
const MAX_RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);
/// The longest `slow_call_rate_threshold` duration.
const MAX_SLOW_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How outcomes are kept to compute the failure and slow-call rates.
///
/// See the [module docs](super).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// // The outcomes of the last minute, in 60 buckets of one second.
/// let per_minute = SlidingWindow::Time { span: Duration::from_secs(60), buckets: 60 };
/// assert!(CircuitBreakerConfig::default().sliding_window(per_minute).validate().is_ok());
///
/// // Buckets shorter than a millisecond are refused.
/// let too_fine = SlidingWindow::Time { span: Duration::from_millis(5), buckets: 10 };
/// let err = CircuitBreakerConfig::default().sliding_window(too_fine).validate().unwrap_err();
/// assert_eq!(err.setting(), "sliding_window");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` outcomes, a true ring: each new outcome evicts the oldest one.
    Count(u32),
    /// The outcomes of the last `span`, kept in `buckets` buckets that expire one by one
    /// (also across idle gaps: a bucket older than `span` never counts).
    ///
    /// Buckets are fixed slices of time of `span / buckets` each, and a bucket leaves the
    /// window whole: the window holds the current bucket (from its start) and the
    /// `buckets - 1` before it, so between `span - span / buckets` and `span` of outcomes. With
    /// a single bucket the window empties at the end of each `span`; more buckets make it
    /// slide more smoothly (each outcome is counted the same, whatever the number).
    Time {
        /// The length of the window.
        span: Duration,
        /// How many buckets the window is cut into.
        buckets: u32,
    },
}

/// How long the breaker stays open before it lets probes through.
///
/// See the [module docs](super).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration};
///
/// // 5 s, 10 s, 20 s, ... up to 5 minutes, each shortened by up to 20 %.
/// let backoff = OpenDuration::Backoff {
///     initial: Duration::from_secs(5),
///     multiplier: 2.0,
///     max: Duration::from_secs(300),
///     jitter: 0.2,
/// };
/// assert_eq!(backoff.nominal(3), Duration::from_secs(20));
/// assert!(CircuitBreakerConfig::default().open_duration(backoff).validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpenDuration {
    /// Always the same duration.
    Fixed(Duration),
    /// `initial * multiplier^(attempt - 1)`, capped at `max`, where `attempt` counts the
    /// openings since the breaker was last closed; then a random `jitter` fraction
    /// (0.0..1.0) is taken off, so breakers of many replicas do not probe in step.
    Backoff {
        /// The first open duration.
        initial: Duration,
        /// The growth factor per attempt (at least 1.0).
        multiplier: f64,
        /// The cap.
        max: Duration,
        /// The fraction of the duration that may randomly be taken off (0.0 = none; less than
        /// 1.0).
        jitter: f64,
    },
}

impl OpenDuration {
    /// The open duration for the `attempt`-th opening (1-based), before jitter.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::circuit_breaker::OpenDuration;
    ///
    /// let fixed = OpenDuration::Fixed(Duration::from_secs(30));
    /// assert_eq!(fixed.nominal(7), Duration::from_secs(30));
    ///
    /// let backoff = OpenDuration::Backoff {
    ///     initial: Duration::from_secs(1),
    ///     multiplier: 2.0,
    ///     max: Duration::from_secs(10),
    ///     jitter: 0.5,
    /// };
    /// assert_eq!(backoff.nominal(1), Duration::from_secs(1));
    /// assert_eq!(backoff.nominal(3), Duration::from_secs(4));
    /// assert_eq!(backoff.nominal(10), Duration::from_secs(10)); // capped
    /// ```
    pub fn nominal(&self, attempt: u32) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Backoff {
                initial,
                multiplier,
                max,
                ..
            } => {
                let exp = attempt.saturating_sub(1).min(1_000) as i32;
                let secs = initial.as_secs_f64() * multiplier.powi(exp);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    max
                } else {
                    // Negative only for a negative multiplier, which `validate` refuses.
                    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
                }
            }
        }
    }

    /// The open duration for the `attempt`-th opening, with jitter applied.
    pub(crate) fn pick(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        match *self {
            Self::Backoff { jitter, .. } if jitter > 0.0 => {
                nominal.mul_f64(1.0 - jitter.min(1.0) * fastrand::f64())
            }
            _ => nominal,
        }
    }
}

/// A listener for [`CircuitEvent`]s.
pub(crate) type Listener = Arc<dyn Fn(&CircuitEvent) + Send + Sync>;

/// Everything a circuit breaker is configured with.
///
/// Builder methods take `self` by value; [`CircuitBreakerConfig::validate`] (called by the
/// layer constructors that return `Result`) names the setting that is wrong.
///
/// Defaults (those of resilience4j where this crate has no better reason):
///
/// | setting | default |
/// |---|---|
/// | window | [`SlidingWindow::Count`]`(100)` |
/// | failure rate threshold | 50 % (inclusive) |
/// | slow-call rate threshold | off |
/// | minimum number of calls | 100 |
/// | consecutive failures | 5 (`CIRCUIT_BREAKER_FAILURE_THRESHOLD`) |
/// | open duration | 30 s fixed (`CIRCUIT_BREAKER_RECOVERY_TIMEOUT`) |
/// | half-open probes | 1 |
/// | max wait in half-open | none |
/// | upstream `Retry-After` | ignored |
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration, SlidingWindow};
///
/// let config = CircuitBreakerConfig::default()
///     .sliding_window(SlidingWindow::Count(20))
///     .failure_rate_threshold(50.0)
///     .minimum_calls(10)
///     .consecutive_failures(5)
///     .open_duration(OpenDuration::Backoff {
///         initial: Duration::from_secs(5),
///         multiplier: 2.0,
///         max: Duration::from_secs(300),
///         jitter: 0.2,
///     })
///     .half_open_probes(3);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct CircuitBreakerConfig {
    pub(crate) name: Arc<str>,
    pub(crate) window: SlidingWindow,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_rate: Option<f64>,
    pub(crate) slow_duration: Duration,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: u32,
    pub(crate) open_duration: OpenDuration,
    pub(crate) half_open_probes: u32,
    pub(crate) max_half_open_wait: Option<Duration>,
    pub(crate) retry_after_cap: Option<Duration>,
    pub(crate) listener: Option<Listener>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            window: SlidingWindow::Count(100),
            failure_rate: Some(50.0),
            slow_rate: None,
            slow_duration: Duration::from_secs(60),
            minimum_calls: 100,
            consecutive_failures: 5,
            open_duration: OpenDuration::Fixed(Duration::from_secs(30)),
            half_open_probes: 1,
            max_half_open_wait: None,
            retry_after_cap: None,
            listener: None,
        }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("slow_rate", &self.slow_rate)
            .field("slow_duration", &self.slow_duration)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("open_duration", &self.open_duration)
            .field("half_open_probes", &self.half_open_probes)
            .field("max_half_open_wait", &self.max_half_open_wait)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// The defaults, with the consecutive-failure threshold and the open duration read from
    /// `CIRCUIT_BREAKER_FAILURE_THRESHOLD` (default 5) and `CIRCUIT_BREAKER_RECOVERY_TIMEOUT`
    /// (seconds, default 30).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable when a value is not UTF-8 (not taken for unset),
    /// or is out of range: a failure threshold that is not a whole number of at least 1, an open
    /// duration that is not a number of seconds above 0 and at most a year (31536000).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
    ///
    /// let config = CircuitBreakerConfig::from_env().unwrap();
    /// match std::env::var("CIRCUIT_BREAKER_FAILURE_THRESHOLD") {
    ///     // Unset, the default applies.
    ///     Err(_) => assert_eq!(config.consecutive_failure_threshold(), 5),
    ///     Ok(set) => assert_eq!(config.consecutive_failure_threshold().to_string(), set.trim()),
    /// }
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        for variable in [ENV_FAILURE_THRESHOLD, ENV_RECOVERY_TIMEOUT] {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(variable) {
                return Err(ConfigError {
                    setting: variable,
                    message: format!("{variable} must be UTF-8 text, got other bytes"),
                });
            }
        }
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable when a value is out of range (see
    /// [`from_env`](Self::from_env)).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration};
    ///
    /// let config = CircuitBreakerConfig::from_env_with(|name| match name {
    ///     "CIRCUIT_BREAKER_FAILURE_THRESHOLD" => Some("3".into()),
    ///     "CIRCUIT_BREAKER_RECOVERY_TIMEOUT" => Some("10".into()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// assert_eq!(config.consecutive_failure_threshold(), 3);
    /// assert_eq!(config.open_duration_setting(), OpenDuration::Fixed(Duration::from_secs(10)));
    ///
    /// let err = CircuitBreakerConfig::from_env_with(|name| {
    ///     (name == "CIRCUIT_BREAKER_RECOVERY_TIMEOUT").then(|| "soon".into())
    /// })
    /// .unwrap_err();
    /// assert!(err.to_string().contains("CIRCUIT_BREAKER_RECOVERY_TIMEOUT"));
    /// ```
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(raw) = lookup(ENV_FAILURE_THRESHOLD) {
            let value = raw.trim();
            match value.parse::<u32>() {
                Ok(n) if n >= 1 => config.consecutive_failures = n,
                _ => {
                    return Err(ConfigError::env(
                        ENV_FAILURE_THRESHOLD,
                        value,
                        "a whole number of consecutive failures from 1 to 4294967295 (for example 5)",
                    ));
                }
            }
        }
        if let Some(raw) = lookup(ENV_RECOVERY_TIMEOUT) {
            let value = raw.trim();
            // Below a nanosecond, a positive number of seconds is still a zero duration.
            let duration = value
                .parse::<f64>()
                .ok()
                .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 86_400.0 * 365.0)
                .map(Duration::from_secs_f64)
                .filter(|d| !d.is_zero());
            match duration {
                Some(duration) => config.open_duration = OpenDuration::Fixed(duration),
                None => {
                    return Err(ConfigError::env(
                        ENV_RECOVERY_TIMEOUT,
                        value,
                        "a number of seconds greater than 0 and at most a year, 31536000 (for example 30)",
                    ));
                }
            }
        }
        Ok(config)
    }

    /// Names the breaker in logs, events and snapshots.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let config = CircuitBreakerConfig::default().name("github-api");
    /// let (_layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// assert_eq!(handle.name(), "github-api");
    /// assert_eq!(handle.snapshot().name, "github-api");
    /// ```
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the sliding window.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, SlidingWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .sliding_window(SlidingWindow::Count(4))
    ///     .minimum_calls(4)
    ///     .consecutive_failures(0);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for status in [500, 200, 503, 200] {
    ///     svc.ready().await.unwrap().call(status).await.unwrap();
    /// }
    /// // 2 of the last 4 calls failed: 50 %, the default threshold.
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// Opens when the failure rate, in percent, is at least `percent` (inclusive) once the
    /// window holds [`minimum_calls`](Self::minimum_calls) outcomes.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, SlidingWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .sliding_window(SlidingWindow::Count(4))
    ///     .failure_rate_threshold(25.0);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for status in [200, 200, 200, 502] {
    ///     svc.ready().await.unwrap().call(status).await.unwrap();
    /// }
    /// // 1 failure in the last 4 calls: 25 %.
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.failure_rate = Some(percent);
        self
    }

    /// Turns the failure-rate rule off (the consecutive-failures rule still applies).
    ///
    /// The half-open probes' verdict follows the same rules: with the consecutive-failures rule
    /// on, one failed probe reopens the breaker; with it off too, failures never do, and only the
    /// slow-call rule (if set) reopens it.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, SlidingWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Only 3 failures in a row open this breaker; a flaky upstream stays in use.
    /// let config = CircuitBreakerConfig::default()
    ///     .sliding_window(SlidingWindow::Count(4))
    ///     .without_failure_rate()
    ///     .consecutive_failures(3);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for status in [500, 200, 500, 200] {
    ///     svc.ready().await.unwrap().call(status).await.unwrap();
    /// }
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # }
    /// ```
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Opens when the share of calls slower than `slower_than` is at least `percent`. A call
    /// that takes exactly `slower_than` is not slow; a call is timed from the moment it is made
    /// (not while the inner service is getting ready) to its outcome, or to its answer when the
    /// outcome comes later ([`Recorder::stop_clock`](super::Recorder::stop_clock)): a gRPC
    /// stream is timed to its head, not to its trailers. The clock is read in steps of 1,024 ns,
    /// so a call less than about 2 µs over `slower_than` may not count as slow. A zero
    /// `slower_than` is refused by [`validate`](Self::validate) (every call would be slow), and
    /// so is one over a day.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, SlidingWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .sliding_window(SlidingWindow::Count(2))
    ///     .slow_call_rate_threshold(50.0, Duration::from_secs(1));
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|delay_ms: u64| async move {
    ///     tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    ///     Ok::<_, BoxError>(Response::new(()))
    /// });
    /// for delay_ms in [20, 2_000] {
    ///     svc.ready().await.unwrap().call(delay_ms).await.unwrap();
    /// }
    /// // Every call succeeded, but half of them took longer than a second.
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn slow_call_rate_threshold(mut self, percent: f64, slower_than: Duration) -> Self {
        self.slow_rate = Some(percent);
        self.slow_duration = slower_than;
        self
    }

    /// How many outcomes the window must hold before rates are evaluated. For a count window,
    /// a value above the window size means the window size.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = CircuitBreakerConfig::default().minimum_calls(4).consecutive_failures(0);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for _ in 0..3 {
    ///     svc.ready().await.unwrap().call(500).await.unwrap();
    /// }
    /// // Three failures are not yet a rate.
    /// assert_eq!(handle.snapshot().failure_rate, None);
    /// svc.ready().await.unwrap().call(500).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Opens after `n` failures in a row, whatever the window says (0 turns the rule off).
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = CircuitBreakerConfig::default().consecutive_failures(2);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// svc.ready().await.unwrap().call(503).await.unwrap();
    /// assert_eq!(handle.snapshot().consecutive_failures, 1);
    /// svc.ready().await.unwrap().call(503).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// How long the breaker stays open.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, OpenDuration};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default().open_duration(OpenDuration::Fixed(Duration::from_secs(10)));
    /// let (_layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// handle.transition_to_open().unwrap();
    /// assert_eq!(handle.snapshot().retry_after_ms, Some(10_000));
    ///
    /// tokio::time::advance(Duration::from_secs(10)).await;
    /// assert_eq!(handle.state(), CircuitState::HalfOpen);
    /// # }
    /// ```
    pub fn open_duration(mut self, duration: OpenDuration) -> Self {
        self.open_duration = duration;
        self
    }

    /// How many probes HALF_OPEN admits, 1 to 4000; the verdict is taken when all of them
    /// completed.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default().half_open_probes(2);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// handle.transition_to_open().unwrap();
    /// tokio::time::advance(Duration::from_secs(30)).await;
    ///
    /// svc.ready().await.unwrap().call(200).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::HalfOpen); // one verdict of two
    /// svc.ready().await.unwrap().call(200).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # }
    /// ```
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// Goes back to OPEN when HALF_OPEN has not reached a verdict `wait` after its first probe
    /// (greater than zero: HALF_OPEN would otherwise end before its probe could answer; at most
    /// a year, as the open duration: leave it unset for no limit). A half-open period that has
    /// admitted no probe yet (entered by reading the state, or by hand) has nothing to time out:
    /// its wait starts with its first probe. A probe that answers after `wait` comes too late to
    /// close the breaker, and no longer counts against the probes of the next half-open period:
    /// one that never ends does not keep the breaker from probing again. The OPEN period that
    /// follows is counted from the moment the wait ended, however late a call or a read sees it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{BoxError, Layer, Service, ServiceExt};
    /// use tower_webhook::circuit_breaker::{
    ///     CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Outcome,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default().max_half_open_wait(Duration::from_secs(5));
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// // An upstream that never answers.
    /// let mut svc = layer
    ///     .with_classifier(|r: &Result<(), BoxError>| match r {
    ///         Ok(()) => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     })
    ///     .layer(tower::service_fn(|()| std::future::pending::<Result<(), BoxError>>()));
    /// handle.transition_to_open().unwrap();
    /// tokio::time::advance(Duration::from_secs(30)).await;
    /// let probe = svc.ready().await.unwrap().call(());
    /// assert_eq!(handle.state(), CircuitState::HalfOpen);
    ///
    /// // The probe did not come back within 5 s.
    /// tokio::time::advance(Duration::from_secs(5)).await;
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # drop(probe);
    /// # }
    /// ```
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.max_half_open_wait = Some(wait);
        self
    }

    /// When a failure that opens the breaker came with an upstream `Retry-After` (on 429 or
    /// 503), stay open at least that long, but never longer than `cap` (at most 24 hours).
    /// An HTTP date is read against the response's `Date` (both the server's clock), and
    /// against the local clock only when the response has no valid `Date`. Without a
    /// `Retry-After` (or with `0`), a spent rate-limit quota's reset is the wait:
    /// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (GitHub), `RateLimit-Remaining: 0`
    /// with `RateLimit-Reset` (GitLab), in UTC epoch seconds, read against `Date` too.
    /// The failures that open it are those since the last success: a wait asked for before
    /// the upstream answered a call again does not stretch a later opening (a `429` not held
    /// against the upstream is no such answer: it asks for a wait too, and keeps it; half-open
    /// probes whose verdict closes the breaker are one, and end the waits their failed probes
    /// asked for).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use http::Response;
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .consecutive_failures(1)
    ///     .honor_retry_after(Duration::from_secs(600));
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: ()| async {
    ///     Ok::<_, BoxError>(Response::builder().status(503).header("retry-after", "120").body(()).unwrap())
    /// });
    /// svc.oneshot(()).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// // 120 s as the upstream asked, instead of the default 30 s.
    /// assert_eq!(handle.snapshot().retry_after_ms, Some(120_000));
    /// # }
    /// ```
    pub fn honor_retry_after(mut self, cap: Duration) -> Self {
        self.retry_after_cap = Some(cap);
        self
    }

    /// Calls `listener` for every [`CircuitEvent`] (transitions, rejections, thresholds,
    /// resets).
    ///
    /// It runs on the caller's task: keep it short and do not block. It is dropped with the
    /// breaker, once the last layer, service and handle of it are gone.
    ///
    /// State transitions are told one at a time, in the order they happened, also when
    /// several threads move the breaker at once: the last one told is the breaker's state.
    /// A transition made while another one is being told (on another thread, or by the
    /// listener itself) is told right after it, by the thread telling it. A move to the
    /// state the breaker is already in ([`reset`](super::CircuitBreakerHandle::reset) of a
    /// CLOSED breaker, a manual move to the current state) restarts the window but is not a
    /// transition, and is not told (as in resilience4j).
    ///
    /// Rejections and exceeded thresholds are told at once, by the thread that meets them,
    /// outside that order: a `Rejected { state: Open, .. }` may reach the listener before the
    /// transition to OPEN that caused it, while another thread is still telling that one. A
    /// listener that follows the state reads it from `Rejected::state` or from
    /// [`StateTransition`](CircuitEvent::StateTransition) events alone.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let rejected = Arc::new(Mutex::new(Vec::new()));
    /// let log = rejected.clone();
    /// let config = CircuitBreakerConfig::default().name("gitlab").on_event(move |event| {
    ///     if let CircuitEvent::Rejected { name, state, .. } = event {
    ///         log.lock().unwrap().push(format!("{name}: {state}"));
    ///     }
    /// });
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    ///     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    ///
    /// handle.transition_to_forced_open().unwrap();
    /// svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(*rejected.lock().unwrap(), ["gitlab: FORCED_OPEN"]);
    /// # }
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&CircuitEvent) + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The consecutive-failure threshold.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
    ///
    /// assert_eq!(CircuitBreakerConfig::default().consecutive_failure_threshold(), 5);
    /// let config = CircuitBreakerConfig::default().consecutive_failures(3);
    /// assert_eq!(config.consecutive_failure_threshold(), 3);
    /// ```
    pub fn consecutive_failure_threshold(&self) -> u32 {
        self.consecutive_failures
    }

    /// The open duration setting.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration};
    ///
    /// let config = CircuitBreakerConfig::default();
    /// assert_eq!(config.open_duration_setting(), OpenDuration::Fixed(Duration::from_secs(30)));
    /// ```
    pub fn open_duration_setting(&self) -> OpenDuration {
        self.open_duration
    }

    /// The breaker's name.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
    ///
    /// assert_eq!(CircuitBreakerConfig::default().breaker_name(), "default");
    /// assert_eq!(CircuitBreakerConfig::default().name("stripe").breaker_name(), "stripe");
    /// ```
    pub fn breaker_name(&self) -> &str {
        &self.name
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that is out of range.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
    ///
    /// assert!(CircuitBreakerConfig::default().validate().is_ok());
    ///
    /// let err = CircuitBreakerConfig::default().failure_rate_threshold(150.0).validate().unwrap_err();
    /// assert_eq!(err.setting(), "failure_rate_threshold");
    /// assert!(err.to_string().contains("at most 100, got 150"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            SlidingWindow::Count(n) if n == 0 || n > MAX_WINDOW_CALLS => {
                return Err(ConfigError::invalid(
                    "sliding_window",
                    format!("a count window holds 1 to {MAX_WINDOW_CALLS} calls, got {n}"),
                ));
            }
            SlidingWindow::Time { span, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::invalid(
                        "sliding_window",
                        format!("a time window has 1 to {MAX_BUCKETS} buckets, got {buckets}"),
                    ));
                }
                if span.as_millis() < u128::from(buckets) {
                    return Err(ConfigError::invalid(
                        "sliding_window",
                        "each time bucket must span at least 1 ms".to_owned(),
                    ));
                }
            }
            SlidingWindow::Count(_) => {}
        }
        for (name, rate) in [
            ("failure_rate_threshold", self.failure_rate),
            ("slow_call_rate_threshold", self.slow_rate),
        ] {
            if let Some(rate) = rate
                && !(rate > 0.0 && rate <= 100.0)
            {
                return Err(ConfigError::invalid(
                    name,
                    format!("a percentage greater than 0 and at most 100, got {rate}"),
                ));
            }
        }
        // Every call takes some time: with no time allowed, every call is slow, every probe too,
        // and the breaker never closes again.
        if self.slow_rate.is_some() && self.slow_duration.is_zero() {
            return Err(ConfigError::invalid(
                "slow_call_rate_threshold",
                "the duration above which a call is slow must be greater than zero".to_owned(),
            ));
        }
        // A call's time is kept in 40 bits of 1024 ns, which wrap after 13 days.
        if self.slow_rate.is_some() && self.slow_duration > MAX_SLOW_DURATION {
            return Err(ConfigError::invalid(
                "slow_call_rate_threshold",
                format!(
                    "the duration above which a call is slow is at most one day, got {:?}",
                    self.slow_duration
                ),
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::invalid(
                "minimum_calls",
                "at least 1 call".to_owned(),
            ));
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return Err(ConfigError::invalid(
                "half_open_probes",
                format!("1 to {MAX_PROBES} probes, got {}", self.half_open_probes),
            ));
        }
        if let OpenDuration::Backoff {
            multiplier, jitter, ..
        } = self.open_duration
        {
            if !(multiplier.is_finite() && multiplier >= 1.0) {
                return Err(ConfigError::invalid(
                    "open_duration",
                    format!("the backoff multiplier must be at least 1.0, got {multiplier}"),
                ));
            }
            // A jitter of 1.0 could take the whole duration off: the breaker would open for
            // no time at all (resilience4j refuses a randomization factor of 1 too).
            if !(0.0..1.0).contains(&jitter) {
                return Err(ConfigError::invalid(
                    "open_duration",
                    format!("the jitter must be at least 0.0 and less than 1.0, got {jitter}"),
                ));
            }
        }
        if self.max_half_open_wait == Some(Duration::ZERO) {
            return Err(ConfigError::invalid(
                "max_half_open_wait",
                "the wait must be greater than zero (leave it unset for no limit)".to_owned(),
            ));
        }
        if let Some(wait) = self.max_half_open_wait
            && wait > MAX_OPEN
        {
            // A refusal while a probe runs tells the time left of it, as `Retry-After`.
            return Err(ConfigError::invalid(
                "max_half_open_wait",
                format!("the wait is at most one year (leave it unset for no limit), got {wait:?}"),
            ));
        }
        if let Some(cap) = self.retry_after_cap
            && cap > MAX_RETRY_AFTER_CAP
        {
            return Err(ConfigError::invalid(
                "honor_retry_after",
                format!("the cap is at most 24 hours, got {cap:?}"),
            ));
        }
        if self.open_duration.nominal(1).is_zero() {
            return Err(ConfigError::invalid(
                "open_duration",
                "the open duration must be greater than zero".to_owned(),
            ));
        }
        if self.open_duration.nominal(u32::MAX) > MAX_OPEN {
            return Err(ConfigError::invalid(
                "open_duration",
                "the open duration must be at most one year".to_owned(),
            ));
        }
        if self.failure_rate.is_none() && self.slow_rate.is_none() && self.consecutive_failures == 0
        {
            return Err(ConfigError::invalid(
                "failure_rate_threshold",
                "every opening rule is off: set a failure rate, a slow-call rate or consecutive failures"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// A configuration value is wrong. Its message names the setting or environment variable.
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
///
/// let err = CircuitBreakerConfig::default().half_open_probes(0).validate().unwrap_err();
/// assert_eq!(err.setting(), "half_open_probes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    message: String,
}

impl ConfigError {
    fn env(variable: &'static str, value: &str, expected: &str) -> Self {
        // Values of these variables are numbers, never secrets; still cap what is echoed.
        let shown: String = value.chars().take(32).collect();
        Self {
            setting: variable,
            message: format!("{variable} must be {expected}, got {shown:?}"),
        }
    }

    fn invalid(setting: &'static str, message: String) -> Self {
        let message = format!("circuit breaker setting `{setting}`: {message}");
        Self { setting, message }
    }

    pub(crate) fn max_keys() -> Self {
        Self::invalid("max_keys", "at least 1 key".to_owned())
    }

    /// The setting or environment variable that is wrong.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::CircuitBreakerConfig;
    ///
    /// let err = CircuitBreakerConfig::from_env_with(|name| {
    ///     (name == "CIRCUIT_BREAKER_FAILURE_THRESHOLD").then(|| "0".to_owned())
    /// })
    /// .unwrap_err();
    /// assert_eq!(err.setting(), "CIRCUIT_BREAKER_FAILURE_THRESHOLD");
    /// ```
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
