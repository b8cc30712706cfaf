//! What the crate tells its users when it refuses a setting (docs, rustdoc, error messages),
//! checked against the ranges and rules it applies, through the public API.

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

/// A failure threshold past what the setting holds (a `u32`) is told the real range, not "at
/// least 1", which the value is.
#[test]
fn failure_threshold_past_its_range_is_refused_with_the_real_range() {
    use tower_webhook::circuit_breaker::ENV_FAILURE_THRESHOLD;
    let at = |value: &'static str| {
        CircuitBreakerConfig::from_env_with(move |name| {
            (name == ENV_FAILURE_THRESHOLD).then(|| value.to_owned())
        })
    };
    assert!(at("4294967295").is_ok());
    for value in ["4294967296", "0", "five"] {
        let err = at(value).unwrap_err().to_string();
        assert!(err.contains(ENV_FAILURE_THRESHOLD), "{err}");
        assert!(err.contains("from 1 to 4294967295"), "{value}: {err}");
    }
}

/// `LocalTunnel::subdomain`: a refused name is told the rule it broke. "ab-cd" (5 characters,
/// a dash inside) breaks the server's rule (names with dashes need 6), so the message must not
/// say that 4 characters with dashes are fine; and a name longer than a DNS label (63) is
/// refused, since its public URL could not be resolved.
#[test]
fn localtunnel_subdomain_refusals_state_the_rule() {
    use tower_webhook::tunnel::{LocalTunnel, TunnelError};

    let err = LocalTunnel::new().subdomain("ab-cd").unwrap_err();
    let TunnelError::Config { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(message.contains("6 to 63 with dashes"), "{message}");
    assert!(LocalTunnel::new().subdomain("abc-de").is_ok());
    assert!(LocalTunnel::new().subdomain("abcd").is_ok());
    let longest = format!("a-{}", "b".repeat(61));
    assert_eq!(longest.len(), 63);
    assert!(LocalTunnel::new().subdomain(longest.as_str()).is_ok());
    let too_long = format!("a-{}", "b".repeat(62));
    assert!(LocalTunnel::new().subdomain(too_long.as_str()).is_err());
}
