//! The tunnel bootstrapper, on loopback: a token in the query of a localtunnel server's URL
//! (`?token=...`), which no localtunnel server takes, shows in none of the provider's `Debug`
//! output, its hint, the start's error and the log lines, and is not sent to the server; a password
//! in the URL's user info neither; nor those of the public URL the server answers.

use crate::support;

use crate::logs;
use crate::lt_scripted;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use logs::Logs;
use lt_scripted::ScriptedLt;
use support::hello_service;
use tower_webhook::tunnel::{LocalTunnel, Provider, Tunnel, TunnelConfig, TunnelEvent, Upstream};

const TOKEN: &str = "lt-TOKEN-5f3a9c";
const PASSWORD: &str = "lt-PASSWORD-77e1";

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// Asserts that `text` (named `what`) holds neither secret.
fn no_secret(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "the token shows in {what}: {text}");
    assert!(
        !text.contains(PASSWORD),
        "the password shows in {what}: {text}"
    );
}

/// A localtunnel server URL with a token in its query: the token was shown verbatim by the
/// provider's `Debug` output and by its hint, which the error of a failed start (here: the
/// server refuses the subdomain) repeats. Its value shows as `<redacted>` now, the rest of the
/// URL as it was; the logs hold neither secret, and neither was sent to the server.
#[tokio::test]
async fn a_token_in_the_localtunnel_server_url_shows_nowhere() {
    let (logs, _guard) = Logs::capture();
    let server = ScriptedLt::start().await;
    server.taken.lock().unwrap().insert("tokenname".to_owned());
    let url = format!(
        "http://bot:{PASSWORD}@{}/?token={TOKEN}&region=eu",
        server.api
    );
    let lt = LocalTunnel::new()
        .server(url)
        .subdomain("tokenname")
        .unwrap()
        .startup_timeout(Duration::from_secs(5));

    let debug = format!("{lt:?}");
    no_secret("Debug", &debug);
    let shown = format!("http://{}/?token=<redacted>&region=<redacted>", server.api);
    assert!(debug.contains(&shown), "{debug}");
    let hint = lt.hint().unwrap();
    no_secret("the hint", &hint);
    assert!(hint.contains(&shown), "{hint}");

    let builder = Tunnel::builder().provider(lt).probe(false);
    no_secret("the builder's Debug", &format!("{builder:?}"));
    let err = builder.start(service()).await.unwrap_err();
    let text = err.to_string();
    no_secret("the error", &text);
    no_secret("the error's Debug", &format!("{err:?}"));
    assert!(text.contains("tokenname"), "{text}");
    assert!(text.contains(&shown), "{text}");

    let asked = server.asked();
    assert!(!asked.is_empty());
    for path in &asked {
        no_secret("the request to the server", path);
    }
    let logged = logs.text();
    assert!(logged.contains("tunnel provider failed"), "{logged}");
    no_secret("the log", &logged);
}

/// A tunnel whose server went away is re-opened, and each failed round is logged with the
/// reasons and hints of its attempts: the hint named the server URL, token and all, in a log
/// line every round for as long as the server was gone. Neither the log nor the events hold it
/// now.
#[tokio::test]
async fn a_token_in_the_localtunnel_server_url_shows_in_no_re_open_log_line() {
    let (logs, _guard) = Logs::capture();
    let mut server = support::LtServer::start().await;
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{}/?token={TOKEN}", server.addr))
                .startup_timeout(Duration::from_secs(3)),
        )
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    server.kill();
    let down = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("no Down event in time")
        .expect("the tunnel closed");
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
    no_secret("the Down event", &format!("{down:?}"));
    let start = std::time::Instant::now();
    while !logs.text().contains("tunnel could not be re-opened") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failed re-open: {}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.close().await;
    let logged = logs.text();
    assert!(logged.contains("?token=<redacted>"), "{logged}");
    no_secret("the log", &logged);
}

/// A server URL that cannot be parsed (a space in its query) was echoed whole, token and all,
/// in the error of the start, and so in the log line of the failed provider.
#[tokio::test]
async fn a_token_in_a_server_url_that_does_not_parse_shows_nowhere() {
    let (logs, _guard) = Logs::capture();
    let lt = LocalTunnel::new().server(format!("http://127.0.0.1:9/?token={TOKEN} x"));
    no_secret("Debug", &format!("{lt:?}"));
    let err = Tunnel::builder()
        .provider(lt)
        .probe(false)
        .start(service())
        .await
        .unwrap_err();
    let text = err.to_string();
    no_secret("the error", &text);
    assert!(
        text.contains("http://127.0.0.1:9/?token=<redacted>"),
        "{text}"
    );
    let logged = logs.text();
    assert!(logged.contains("tunnel provider failed"), "{logged}");
    no_secret("the log", &logged);
}

/// `TUNNEL_SERVER` with a token in its query: `TunnelConfig`'s `Debug` output (and that of the
/// builder it makes) showed it, though it hides `TUNNEL_SECRET` and the auth token.
#[test]
fn a_token_in_tunnel_server_shows_in_no_config_debug_output() {
    let config = TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("localtunnel,bore".to_owned()),
        "TUNNEL_SERVER" => Some(format!(
            "https://bot:{PASSWORD}@lt.example.com/?token={TOKEN}"
        )),
        _ => None,
    })
    .unwrap();
    let debug = format!("{config:?}");
    no_secret("TunnelConfig's Debug", &debug);
    assert!(
        debug.contains("https://lt.example.com/?token=<redacted>"),
        "{debug}"
    );
    no_secret("the builder's Debug", &format!("{:?}", config.builder()));
}

/// A public URL the server answers with a password in its user info and a token in its query (a
/// self-hosted server behind a proxy that wants them): the tunnel's URL is the one given, with
/// the server's port put in, user info and all, but the "localtunnel open" line logged it whole.
/// The logs show it as `<redacted>` now, like the server's own URL.
#[tokio::test]
async fn the_secrets_of_the_public_url_the_server_answers_are_not_logged() {
    let (logs, _guard) = Logs::capture();
    let server = ScriptedLt::start().await;
    *server.url.lock().unwrap() =
        Some(|name, _port| format!("http://bot:{PASSWORD}@{name}.localhost/?token={TOKEN}"));
    let lt = LocalTunnel::new()
        .server(format!("http://{}", server.api))
        .subdomain("credsname")
        .unwrap()
        .startup_timeout(Duration::from_secs(5));
    let tunnel = Tunnel::builder()
        .provider(lt)
        .probe(false)
        .start(service())
        .await
        .unwrap();
    let port = server.api.port();
    assert_eq!(
        tunnel.url(),
        format!("http://bot:{PASSWORD}@credsname.localhost:{port}/?token={TOKEN}")
    );
    tunnel.close().await;
    let logged = logs.text();
    assert!(logged.contains("localtunnel open"), "{logged}");
    assert!(
        logged.contains(&format!(
            "http://credsname.localhost:{port}/?token=<redacted>"
        )),
        "{logged}"
    );
    no_secret("the log", &logged);
}
