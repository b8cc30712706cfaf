//! Settings read from the environment: a value that is not UTF-8 is an error naming its
//! variable, not taken for unset. The test runs itself again as a child process with such
//! values, since a test may not change its own environment.
#![cfg(all(
    unix,
    feature = "circuit-breaker",
    feature = "tunnel",
    feature = "signature"
))]

use crate::child;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use tower_webhook::circuit_breaker::CircuitBreakerConfig;
use tower_webhook::signature::Secrets;
use tower_webhook::tunnel::{TunnelConfig, TunnelError};

const CHILD: &str = "TOWER_WEBHOOK_ENV_TEST_CHILD";

#[test]
fn values_that_are_not_utf8_are_named() {
    if std::env::var_os(CHILD).is_some() {
        let err = CircuitBreakerConfig::from_env().unwrap_err();
        assert_eq!(err.setting(), "CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "{err}");
        assert!(err.to_string().contains("UTF-8"), "{err}");
        let err = TunnelConfig::from_env().unwrap_err();
        assert!(
            matches!(
                err,
                TunnelError::Config {
                    setting: "TUNNEL_SECRET",
                    ..
                }
            ),
            "{err}"
        );
        // The value itself (a secret) is not shown.
        assert!(!err.to_string().contains("cret"), "{err}");
        let err = Secrets::from_env_list("TUNNEL_SECRET").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        // A blank ngrok token is unset, as `TunnelConfig` reads it.
        #[cfg(feature = "ngrok")]
        assert!(
            format!("{:?}", tower_webhook::tunnel::Ngrok::from_env()).contains("authtoken: None"),
            "blank TUNNEL_AUTH_TOKEN and NGROK_AUTHTOKEN are no token"
        );
        return;
    }
    child::run_one(
        child::alone(
            module_path!(),
            "values_that_are_not_utf8_are_named",
            CHILD,
            "1",
        )
        .env_remove("CIRCUIT_BREAKER_FAILURE_THRESHOLD")
        .env(
            "CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
            OsStr::from_bytes(b"3\xff0"),
        )
        .env("TUNNEL_SECRET", OsStr::from_bytes(b"s\xffcret"))
        .env("TUNNEL_AUTH_TOKEN", " \n")
        .env("NGROK_AUTHTOKEN", "\t"),
    );
}
