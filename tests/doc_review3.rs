//! Documentation review: what the crate tells its users (docs, rustdoc, error messages) checked
//! against what it does, through the public API.

use tower_webhook::circuit_breaker::{CircuitBreakerConfig, ENV_RECOVERY_TIMEOUT};

/// `CIRCUIT_BREAKER_RECOVERY_TIMEOUT` accepts more than 0 and at most a year (docs/guide.md,
/// docs/circuit-breaker.md). A value over a year is refused, and the message must say what is
/// accepted: "greater than 0" alone is false for 400 days.
#[test]
fn recovery_timeout_over_a_year_is_refused_with_the_real_range() {
    let year = 365 * 24 * 3600;
    let at = |value: String| {
        CircuitBreakerConfig::from_env_with(move |name| {
            (name == ENV_RECOVERY_TIMEOUT).then(|| value.clone())
        })
    };
    assert!(at(year.to_string()).is_ok());
    let err = at((year + 1).to_string()).unwrap_err().to_string();
    assert!(err.contains(ENV_RECOVERY_TIMEOUT), "{err}");
    assert!(err.contains("at most a year"), "{err}");
    let err = at("0".to_owned()).unwrap_err().to_string();
    assert!(err.contains("greater than 0"), "{err}");
}
