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
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use tower_webhook::signature::Clock;
    ///
    /// let clock = Clock::system();
    /// let before = SystemTime::now();
    /// assert!(clock.now() >= before);
    /// assert_eq!(format!("{clock:?}"), "Clock(system)");
    /// ```
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that calls `now`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::Clock;
    ///
    /// // A clock a test moves forward by hand.
    /// let secs = Arc::new(AtomicU64::new(1_700_000_000));
    /// let source = secs.clone();
    /// let clock = Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(source.load(Ordering::SeqCst)));
    /// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// secs.fetch_add(600, Ordering::SeqCst);
    /// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_600));
    /// ```
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now)))
    }

    /// A clock stopped at `at`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// // A Stripe delivery signed at 1700000000 (2023-11-14T22:13:20Z), checked at that moment.
    /// let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let layer = SignatureLayer::stripe("whsec_test").unwrap().clock(Clock::fixed(signed_at));
    /// let req = http::Request::post("/stripe")
    ///     .header("stripe-signature", "t=1700000000,v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc")
    ///     .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.timestamp(), Some(signed_at));
    /// ```
    pub fn fixed(at: SystemTime) -> Self {
        Self::from_fn(move || at)
    }

    /// The current time.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::Clock;
    ///
    /// let since_epoch = Clock::system().now().duration_since(UNIX_EPOCH).unwrap();
    /// assert!(since_epoch > Duration::from_secs(1_700_000_000));
    /// let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// assert_eq!(Clock::fixed(at).now(), at);
    /// ```
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
