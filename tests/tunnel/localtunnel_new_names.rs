//! The tunnel bootstrapper, on loopback: a re-opened localtunnel whose old subdomain was taken
//! meanwhile, or was no subdomain, gets a new one, cloudflared's reported hostname is checked
//! before it becomes the public URL, and degenerate reconnect settings do not spin.

use crate::support;

use crate::lt_scripted;
use lt_scripted::ScriptedLt;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::hello_service;
use tower_webhook::BoxError;
use tower_webhook::tunnel::{
    BoxFuture, Cloudflared, LocalTunnel, Provider, Session, Tunnel, TunnelEvent, Upstream,
};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// A re-opened localtunnel asks for its old subdomain; when the server refuses it (another
/// client took it while the tunnel was down), it takes a new name instead of failing every
/// re-open for ever, and the new URL is reported as `UrlChanged`.
#[tokio::test]
async fn a_re_opened_localtunnel_whose_name_was_taken_gets_a_new_one() {
    let server = ScriptedLt::start().await;
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{}", server.api))
                .startup_timeout(Duration::from_secs(5)),
        )
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(service())
        .await
        .unwrap();
    let first = handle.url();
    assert!(first.starts_with("http://fresh0name.localhost:"), "{first}");
    let mut events = handle.events();

    // The server drops the tunnel, and someone else takes its name.
    server.taken.lock().unwrap().insert("fresh0name".to_owned());
    let up = server.bounce(&mut events).await;
    match &up {
        TunnelEvent::UrlChanged { old, new, .. } => {
            assert_eq!(old, &first);
            assert!(new.starts_with("http://fresh1name.localhost:"), "{new}");
        }
        other => panic!("not re-opened under a new name: {other:?}"),
    }
    assert_eq!(handle.url(), up.url());
    let asked = server.asked.lock().unwrap().clone();
    assert_eq!(asked[..3], ["/?new", "/fresh0name", "/?new"], "{asked:?}");
    handle.close().await;
}

/// A provider whose first tunnel opens, and drops at once; later opens fail (`fail_later`) or
/// open tunnels that drop at once too. Counts the opens.
#[derive(Debug)]
struct Flaky {
    opens: Arc<AtomicUsize>,
    fail_later: bool,
}

impl Provider for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        let first = self.opens.fetch_add(1, Ordering::SeqCst) == 0;
        let fail = self.fail_later && !first;
        Box::pin(async move {
            if fail {
                return Err("connection refused".into());
            }
            Ok(Session::spawn("http://127.0.0.1:9", |_stop| async {
                Err::<(), BoxError>("dropped at once".into())
            }))
        })
    }
}

/// Opens counted in one second of a tunnel of `Flaky` re-opened with backoff `(min, max)`.
async fn opens_in_a_second(fail_later: bool, min: Duration, max: Duration) -> usize {
    let opens = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(Flaky {
            opens: Arc::clone(&opens),
            fail_later,
        })
        .probe(false)
        .reconnect_backoff(min, max)
        .start(service())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = opens.load(Ordering::SeqCst);
    handle.close().await;
    opened
}

/// `reconnect_backoff(0, 0)` (or a maximum of next to nothing) does not re-open a tunnel that
/// keeps dropping, or a provider that keeps failing, in a tight loop that spins a core.
#[tokio::test]
async fn a_zero_reconnect_backoff_does_not_spin() {
    for fail_later in [false, true] {
        for max in [Duration::ZERO, Duration::from_nanos(1)] {
            let opened = opens_in_a_second(fail_later, Duration::ZERO, max).await;
            assert!(
                opened <= 40,
                "{opened} opens in 1 s with backoff (0, {max:?}), failing: {fail_later}"
            );
        }
    }
}

/// The URL of a tunnel of the fake cloudflared whose metrics endpoint reports `hostname`
/// (with `domain` set, if some), or the error of its start.
async fn cloudflared_reporting(
    fake: &std::path::Path,
    hostname: &str,
    domain: Option<&str>,
) -> Result<String, String> {
    let mut cloudflared = Cloudflared::new()
        .binary(fake)
        .arg("--fake-hostname")
        .arg(hostname);
    if let Some(domain) = domain {
        cloudflared = cloudflared.domain(domain);
    }
    let handle = Tunnel::builder()
        .probe(false)
        .reconnect(false)
        .provider(cloudflared)
        .start(service())
        .await
        .map_err(|err| err.to_string())?;
    let url = handle.url();
    handle.close().await;
    Ok(url)
}

/// What cloudflared's metrics endpoint reports becomes the public URL (logged, and handed to
/// the code that re-points the webhooks) only when it is a hostname in trycloudflare.com (or
/// the domain configured): anything else on that port, or a malformed answer, fails the
/// attempt with a reason that says so, the text shown escaped.
#[tokio::test]
async fn cloudflared_reported_hostname_is_checked() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let mut starts = tokio::task::JoinSet::new();
    for bad in [
        "evil.example.com",
        "fake.trycloudflare.com.evil.example.com",
        "eviltrycloudflare.com",
        "fake.trycloudflare.com\u{1b}[2J\nINFO tunnel up",
        "https://fake.trycloudflare.com/hook?to=evil",
        "fake.trycloudflare.com:99999",
        "-fake.trycloudflare.com",
    ] {
        let fake = fake.clone();
        starts.spawn(async move { (bad, cloudflared_reporting(&fake, bad, None).await) });
    }
    while let Some(started) = starts.join_next().await {
        let (bad, started) = started.unwrap();
        let err = started.expect_err(bad);
        assert!(
            err.contains("cloudflared's metrics endpoint"),
            "{bad}: {err}"
        );
        assert!(
            !err.contains('\u{1b}') && !err.contains("\nINFO"),
            "{bad}: {err}"
        );
    }
    let err = cloudflared_reporting(&fake, "evil.example.com", None)
        .await
        .unwrap_err();
    assert!(err.contains("not in trycloudflare.com"), "{err}");

    // A quick tunnel's hostname, as cloudflared reports it.
    let url = cloudflared_reporting(&fake, "Quiet-River-42.trycloudflare.com", None).await;
    assert_eq!(url.unwrap(), "https://quiet-river-42.trycloudflare.com");
    // Another domain when configured, or any hostname with an empty one.
    let url = cloudflared_reporting(&fake, "a.tunnels.example.com", Some("tunnels.example.com"));
    assert_eq!(url.await.unwrap(), "https://a.tunnels.example.com");
    let url = cloudflared_reporting(&fake, "a.tunnels.example.com", None).await;
    assert!(url.is_err(), "{url:?}");
    let url = cloudflared_reporting(&fake, "http://127.0.0.1:8080", Some("")).await;
    assert_eq!(url.unwrap(), "http://127.0.0.1:8080");
}

/// A registration whose `id` is no subdomain (here with a space and a line break, which no
/// request path can hold) is not asked for again: the re-opened tunnel asks for a new name
/// instead of failing every re-open for ever.
#[tokio::test]
async fn a_localtunnel_id_that_is_no_subdomain_is_not_asked_for_again() {
    let server = ScriptedLt::start().await;
    *server.new_id.lock().unwrap() = Some("Not A\nName".to_owned());
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{}", server.api))
                .startup_timeout(Duration::from_secs(5)),
        )
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let up = server.bounce(&mut events).await;
    assert!(up.is_up(), "{up:?}");
    let asked = server.asked.lock().unwrap().clone();
    assert_eq!(asked[..2], ["/?new", "/?new"], "{asked:?}");
    handle.close().await;
}

/// The server helper with an empty chain fails with `NoProviders`, as its docs say.
#[tokio::test]
async fn the_server_helper_with_an_empty_chain_reports_no_providers() {
    let err = tower_webhook::tunnel::Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .tunnel(Tunnel::builder())
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tower_webhook::tunnel::TunnelError::NoProviders),
        "{err}"
    );
}
