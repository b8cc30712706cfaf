//! The tunnel bootstrapper, on loopback: a password with an unencoded `/`, `?` or `#` in the user
//! info of a server URL (`https://user:pa/ss@host`, not a valid URL) shows, in part or whole, in
//! none of the providers' `Debug` output, their hints, the start's error, `TunnelConfig` and the
//! log lines.

use crate::support;

use crate::logs;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::unopened::closed_port;
use logs::Logs;
use support::hello_service;
use tower_webhook::tunnel::{Bore, LocalTunnel, Provider, Tunnel, TunnelConfig, Upstream};

/// The two halves of each password, around the character that makes the URL invalid.
const BEFORE: &str = "pwA-3b7d";
const AFTER: &str = "pwB-91c4";

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// Asserts that `text` (named `what`) holds neither half of the password.
fn no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(BEFORE) && !text.contains(AFTER),
        "the password shows in {what}: {text}"
    );
}

/// The server URL `{scheme}://bot:{BEFORE}{separator}{AFTER}@{host}`.
fn url_with_password(scheme: &str, separator: char, host: &str) -> String {
    format!("{scheme}://bot:{BEFORE}{separator}{AFTER}@{host}")
}

/// A localtunnel server URL whose password has an unencoded `/`, `?` or `#`: its user info was
/// not recognised as such, so the password showed in `Debug`, the hint, and the error of the
/// start ("... is not a valid address"), which the log repeats. It shows nowhere now, and the
/// server after the `@` is the one tried (nothing listens there: the start fails).
#[tokio::test]
async fn a_password_with_a_slash_question_mark_or_hash_shows_nowhere_for_localtunnel() {
    let port = closed_port();
    let host = format!("127.0.0.1:{port}");
    for separator in ['/', '?', '#'] {
        let (logs, _guard) = Logs::capture();
        let lt = LocalTunnel::new()
            .server(url_with_password("http", separator, &host))
            .startup_timeout(Duration::from_secs(3));
        let debug = format!("{lt:?}");
        no_secret("Debug", &debug);
        assert!(debug.contains(&format!("http://{host}")), "{debug}");
        no_secret("the hint", &lt.hint().unwrap());

        let builder = Tunnel::builder().provider(lt).probe(false);
        no_secret("the builder's Debug", &format!("{builder:?}"));
        let err = builder.start(service()).await.unwrap_err();
        let text = err.to_string();
        no_secret("the error", &text);
        no_secret("the error's Debug", &format!("{err:?}"));
        // The server after the `@` was tried: its address is refused, not invalid.
        assert!(!text.contains("not a valid address"), "{separator}: {text}");
        assert!(text.contains(&host), "{separator}: {text}");
        let logged = logs.text();
        assert!(logged.contains("tunnel provider failed"), "{logged}");
        no_secret("the log", &logged);
    }
}

/// The same password in `TUNNEL_SERVER`: `TunnelConfig` kept the URL as given, so its `Debug`
/// output, `server()`, and the hints of the localtunnel and bore providers it makes showed it.
#[test]
fn a_password_with_a_slash_question_mark_or_hash_in_tunnel_server_shows_nowhere() {
    for separator in ['/', '?', '#'] {
        let server = url_with_password("https", separator, "tunnel.example.com");
        let config = TunnelConfig::from_lookup(|name| match name {
            "TUNNEL_SERVICE" => Some("localtunnel,bore".to_owned()),
            "TUNNEL_SERVER" => Some(server.clone()),
            _ => None,
        })
        .unwrap();
        no_secret("TunnelConfig's Debug", &format!("{config:?}"));
        assert_eq!(config.server(), Some("https://tunnel.example.com"));
        let builder = config.builder();
        no_secret("the builder's Debug", &format!("{builder:?}"));
    }
}

/// bore given such a URL took `bot:{BEFORE}` for its host, which its hint and `Debug` output
/// showed (and which it tried to connect to); it takes the host after the `@` now.
#[tokio::test]
async fn a_password_with_a_slash_question_mark_or_hash_shows_nowhere_for_bore() {
    let port = closed_port();
    for separator in ['/', '?', '#'] {
        let (logs, _guard) = Logs::capture();
        let bore = Bore::new()
            .server(url_with_password(
                "tcp",
                separator,
                &format!("127.0.0.1:{port}"),
            ))
            .startup_timeout(Duration::from_secs(3));
        let debug = format!("{bore:?}");
        no_secret("Debug", &debug);
        assert!(debug.contains(r#"server: "127.0.0.1""#), "{debug}");
        assert!(debug.contains(&format!("control_port: {port}")), "{debug}");
        let hint = bore.hint().unwrap();
        no_secret("the hint", &hint);
        assert!(hint.contains(&format!("127.0.0.1:{port}")), "{hint}");

        let err = Tunnel::builder()
            .provider(bore)
            .probe(false)
            .start(service())
            .await
            .unwrap_err();
        no_secret("the error", &err.to_string());
        no_secret("the log", &logs.text());
    }
}
