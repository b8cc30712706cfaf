//! An injectable wall clock.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Where [`SignatureLayer`](super::SignatureLayer) and [`MemoryReplayStore`](super::MemoryReplayStore)
/// read the time: [`SystemTime::now`] by default, any function in tests.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_webhook::signature::Clock;
///
/// let fixed = Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_265_330));
/// assert_eq!(fixed.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_265_330));
/// let manual = Clock::from_fn(|| SystemTime::UNIX_EPOCH);
/// assert_eq!(manual.now(), SystemTime::UNIX_EPOCH);
/// ```
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that calls `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now)))
    }

    /// A clock stopped at `at`.
    pub fn fixed(at: SystemTime) -> Self {
        Self::from_fn(move || at)
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(f) => f(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(custom)"
        } else {
            "Clock(system)"
        })
    }
}
