//! Deadlines that cannot overflow, however long the timeout a user configured.

use std::time::Duration;

use tokio::time::Instant;

/// Longer than any process runs (about 30 years, as tokio's own far-future timers); a timeout at
/// least this long is treated as none.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` after `now`; `None` when that is too far to represent (no deadline).
pub(crate) fn deadline(now: Instant, timeout: Duration) -> Option<Instant> {
    if timeout >= FAR_FUTURE {
        return None;
    }
    now.checked_add(timeout)
}

/// Whether `deadline` comes before `now + margin` (never for no deadline).
pub(crate) fn due_within(deadline: Option<Instant>, now: Instant, margin: Duration) -> bool {
    deadline.is_some_and(|deadline| now.checked_add(margin).is_none_or(|soon| soon >= deadline))
}

/// `timeout` if a timer can be armed with it, `None` (no timeout) when it is too long.
pub(crate) fn bounded(timeout: Duration) -> Option<Duration> {
    (timeout < FAR_FUTURE).then_some(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_timeouts_mean_no_deadline() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), None);
        assert_eq!(deadline(now, FAR_FUTURE), None);
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            Some(now + Duration::from_secs(1))
        );
        assert!(!due_within(None, now, Duration::MAX));
        assert!(due_within(Some(now), now, Duration::MAX));
        assert!(!due_within(
            Some(now + Duration::from_secs(1)),
            now,
            Duration::from_millis(100)
        ));
        assert_eq!(bounded(Duration::MAX), None);
        assert_eq!(
            bounded(Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
    }
}
