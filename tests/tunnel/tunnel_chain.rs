//! The provider chain: fallback with timeouts and reasons, the final error, configuration from
//! the environment, cloudflared through a fake binary, ngrok offline, and the server helper.

use crate::support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::unopened::closed_port;
use support::{BoreServer, Logs, black_hole, get, get_url, hello_service};
use tower_webhook::tunnel::{
    Bore, BoxFuture, Cloudflared, LocalTunnel, Ngrok, Provider, ProviderKind, Running, Server,
    Session, Tunnel, TunnelBuilder, TunnelConfig, TunnelError, TunnelEvent, TunnelHandle, Upstream,
};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

#[tokio::test]
async fn falls_back_from_ngrok_and_localtunnel_to_bore() {
    let logs = Logs::global();
    let ip = Ipv4Addr::new(127, 0, 0, 10);
    let _bore = BoreServer::start(ip, None).await;
    // ngrok with a token but no reachable ingress: fails fast, long before its startup timeout.
    let ngrok_timeout = Duration::from_secs(30);
    let ngrok = Ngrok::new()
        .authtoken("offline-test-token")
        .server_addr(format!("127.0.0.1:{}", closed_port()))
        .startup_timeout(ngrok_timeout);
    // A localtunnel server that accepts and never answers: its registration wait (320 ms: a
    // fifth of the startup timeout is kept for the probe, half of the rest for the first pooled
    // connection) runs out.
    let localtunnel = LocalTunnel::new()
        .server(format!("http://{}", black_hole().await))
        .startup_timeout(Duration::from_millis(800));
    let bore = Bore::new().server(ip.to_string());

    let started = Instant::now();
    let handle = Tunnel::builder()
        .provider(ngrok)
        .fallback(localtunnel)
        .fallback(bore)
        .start(service())
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert_eq!(handle.provider(), "bore");
    assert!(
        handle.url().starts_with("http://127.0.0.10:"),
        "{}",
        handle.url()
    );
    let (status, _) = get_url(&handle.url(), "/").await.unwrap();
    assert_eq!(status, 200);
    // Localtunnel's 320 ms registration wait was waited out; ngrok's timeout was not (it failed
    // at once).
    assert!(elapsed >= Duration::from_millis(320), "{elapsed:?}");
    assert!(elapsed < ngrok_timeout, "{elapsed:?}");

    let text = logs.text();
    let line = |needles: &[&str]| {
        text.lines()
            .position(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no log line with {needles:?} in:\n{text}"))
    };
    let ngrok = line(&[
        "tunnel provider failed",
        "provider=ngrok",
        "failed to establish tcp connection",
    ]);
    let localtunnel = line(&[
        "tunnel provider failed",
        "provider=localtunnel",
        "got no answer within",
    ]);
    let bore = line(&["tunnel up", "provider=bore", "url=http://127.0.0.10:"]);
    assert!(ngrok < localtunnel && localtunnel < bore, "{text}");
    handle.close().await;
}

#[tokio::test]
async fn when_all_fail_the_error_lists_every_reason_and_remedy() {
    let lt_port = closed_port();
    let err = Tunnel::builder()
        .provider(Ngrok::new())
        .fallback(Cloudflared::new().binary("cloudflared-not-installed-here"))
        .fallback(LocalTunnel::new().server(format!("http://127.0.0.1:{lt_port}")))
        .fallback(
            Bore::new()
                .server("127.0.0.11")
                .startup_timeout(Duration::from_secs(2)),
        )
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    let names: Vec<_> = attempts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(names, ["ngrok", "cloudflared", "localtunnel", "bore"]);
    assert!(attempts[0].reason.contains("no ngrok auth token"), "{err}");
    assert!(attempts[1].reason.contains("not on PATH"), "{err}");
    assert!(attempts[2].reason.contains("could not connect"), "{err}");
    assert!(
        attempts[3]
            .reason
            .contains("could not connect to 127.0.0.11:7835"),
        "{err}"
    );
    let text = err.to_string();
    for remedy in [
        "set TUNNEL_AUTH_TOKEN",
        "install cloudflared",
        "TUNNEL_SERVER",
        "TUNNEL_SECRET",
    ] {
        assert!(text.contains(remedy), "{remedy} missing from: {text}");
    }
    // Each failure was fast: nothing here waits for a timeout.
    assert!(
        attempts.iter().all(|a| a.elapsed < Duration::from_secs(2)),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_chain_is_an_error() {
    let err = Tunnel::builder().start(service()).await.unwrap_err();
    assert!(matches!(err, TunnelError::NoProviders));
    assert!(err.to_string().contains("TUNNEL_SERVICE"));
}

/// `TUNNEL_REGION` is ngrok's region and cloudflared's `--region`; cloudflared knows only `us`,
/// so an ngrok region (`eu`, `ap`...) is not passed to it: it would not start.
#[test]
fn cloudflared_gets_only_a_region_it_knows() {
    for (region, expected) in [
        ("eu", "region: None"),
        ("ap", "region: None"),
        ("us", r#"region: Some("us")"#),
        ("US", r#"region: Some("us")"#),
    ] {
        let config = TunnelConfig::from_lookup(|name| match name {
            "TUNNEL_SERVICE" => Some("cloudflared".to_owned()),
            "TUNNEL_REGION" => Some(region.to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.region(), Some(region));
        let debug = format!("{:?}", config.builder());
        assert!(debug.contains(expected), "{region}: {debug}");
    }
}

#[test]
fn config_from_the_environment() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let config = TunnelConfig::from_lookup(vars(&[
        ("TUNNEL_SERVICE", "ngrok, localtunnel ,bore"),
        ("TUNNEL_AUTH_TOKEN", "tok-123"),
        ("TUNNEL_REGION", "eu"),
        ("TUNNEL_SERVER", "127.0.0.1:8080"),
        ("TUNNEL_SECRET", "sec-456"),
    ]))
    .unwrap();
    assert_eq!(
        config.chain(),
        [
            ProviderKind::Ngrok,
            ProviderKind::LocalTunnel,
            ProviderKind::Bore
        ]
    );
    assert!(config.has_auth_token());
    assert_eq!(config.region(), Some("eu"));
    assert_eq!(config.server(), Some("127.0.0.1:8080"));
    let debug = format!("{config:?} {:?}", config.builder());
    assert!(
        !debug.contains("tok-123") && !debug.contains("sec-456"),
        "{debug}"
    );
    assert!(debug.contains("server: \"127.0.0.1:8080\""), "{debug}");
    assert!(debug.contains("control_port: 8080"), "{debug}");
    assert_eq!(
        config.builder().provider_names(),
        ["ngrok", "localtunnel", "bore"]
    );

    let default = TunnelConfig::from_lookup(|_| None).unwrap();
    assert_eq!(
        default.chain(),
        [
            ProviderKind::Ngrok,
            ProviderKind::Cloudflared,
            ProviderKind::LocalTunnel,
            ProviderKind::Bore
        ]
    );
    assert!(!default.has_auth_token());

    let token = TunnelConfig::from_lookup(vars(&[("NGROK_AUTHTOKEN", "x")])).unwrap();
    assert!(token.has_auth_token());

    for bad in ["smoke-signals", " , "] {
        let err =
            TunnelConfig::from_lookup(move |n| (n == "TUNNEL_SERVICE").then(|| bad.to_owned()))
                .unwrap_err();
        assert!(
            matches!(
                err,
                TunnelError::Config {
                    setting: "TUNNEL_SERVICE",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_configured_chain_opens_through_bore() {
    let ip = Ipv4Addr::new(127, 0, 0, 12);
    let _bore = BoreServer::start(ip, Some("from-env")).await;
    let config = TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("bore".into()),
        "TUNNEL_SERVER" => Some("127.0.0.12".into()),
        "TUNNEL_SECRET" => Some("from-env".into()),
        _ => None,
    })
    .unwrap();
    let handle = config.builder().start(service()).await.unwrap();
    assert!(handle.url().starts_with("http://127.0.0.12:"));
    handle.close().await;
}

fn temp_log(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tower-webhook-{name}-{}-{}.log",
        std::process::id(),
        fastrand::u32(..)
    ));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn cloudflared_quick_tunnel_url_readiness_and_sigint() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared");
    let calls = Arc::new(AtomicUsize::new(0));
    // The fake's URL is not served anywhere (and is not on loopback): no probe.
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            Cloudflared::new()
                .binary(&fake)
                .region("us")
                .arg("--fake-log")
                .arg(log.display().to_string()),
        )
        .start(Upstream::service(hello_service(Arc::clone(&calls))))
        .await
        .unwrap();
    assert_eq!(handle.url(), "https://fake-quick-tunnel.trycloudflare.com");
    // Unprobed: cloudflared's own readiness stands for it.
    assert_eq!(
        handle.status(),
        TunnelEvent::Up {
            provider: "cloudflared".into(),
            url: handle.url(),
            verified: false,
        }
    );
    handle.close().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let argv = text.lines().next().unwrap();
    assert!(
        argv.starts_with("argv tunnel --no-autoupdate --url http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        argv.contains("--metrics 127.0.0.1:")
            && argv.contains("--region us")
            && argv.contains("--grace-period 4500ms"),
        "{text}"
    );
    // The service got a loopback port for cloudflared, and it answers.
    assert!(
        text.contains("origin 200 hello from /from-fake-cloudflared"),
        "{text}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(text.lines().any(|l| l == "SIGINT"), "{text}");
    let _ = std::fs::remove_file(log);
}

#[test]
fn cloudflared_debug_hides_secret_arguments() {
    let token = "eyJhIjoiZmFrZS10b2tlbi12YWx1ZSJ9";
    let cloudflared = Cloudflared::new()
        .arg("--protocol")
        .arg("http2")
        .arg("--token")
        .arg(token)
        .arg(format!("--TUNNEL-TOKEN={token}-eq"))
        .arg("--credentials-file")
        .arg("/secret/path/creds.json")
        .arg("--origin-ca-pool=/etc/ca.pem")
        .arg("--api-key")
        .arg(format!("{token}-key"))
        .arg("--password=hunter2");
    for text in [
        format!("{cloudflared:?}"),
        format!("{cloudflared:#?}"),
        format!("{:?}", Tunnel::builder().provider(cloudflared.clone())),
    ] {
        for secret in [
            format!("{token}\""),
            format!("{token}-eq"),
            format!("{token}-key"),
            "/secret/path".to_owned(),
            "hunter2".to_owned(),
        ] {
            assert!(!text.contains(&secret), "{secret} shown in {text}");
        }
        // What is not secret is still shown, for debugging.
        for shown in [
            "--protocol",
            "http2",
            "--token",
            "--TUNNEL-TOKEN=<redacted>",
            "--credentials-file",
            "--origin-ca-pool=/etc/ca.pem",
            "--password=<redacted>",
        ] {
            assert!(text.contains(shown), "{shown} missing from {text}");
        }
    }
}

#[tokio::test]
async fn cloudflared_that_ignores_sigint_is_killed_after_the_grace_period() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-stubborn");
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            Cloudflared::new()
                .binary(&fake)
                .stop_grace(Duration::from_millis(300))
                .arg("--fake-mode")
                .arg("stubborn")
                .arg("--fake-log")
                .arg(log.display().to_string()),
        )
        .start(service())
        .await
        .unwrap();
    let started = Instant::now();
    handle.close().await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Killed after the grace (the fake ignores SIGINT for good), not waited for.
    assert!(took < Duration::from_secs(10), "{took:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l == "SIGINT"), "{text}");
    let _ = std::fs::remove_file(log);
}

/// The error of a start of the fake cloudflared in `mode`, without the probe.
async fn cloudflared_failure(fake: &std::path::Path, mode: &str) -> String {
    Tunnel::builder()
        .probe(false)
        .provider(Cloudflared::new().binary(fake).arg("--fake-mode").arg(mode))
        .start(service())
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn cloudflared_failures_are_reported() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let text = cloudflared_failure(&fake, "crash").await;
    assert!(
        text.contains("cloudflared exited with exit status: 3"),
        "{text}"
    );
    assert!(text.contains("failed to request quick Tunnel"), "{text}");
    // cloudflared is there: no advice to install it.
    assert!(!text.contains("install cloudflared"), "{text}");

    // Output that is not UTF-8, or a line without end, neither stops the reading of cloudflared's
    // messages nor fills memory: the last line is reported, a long one cut.
    let text = cloudflared_failure(&fake, "noisy-crash").await;
    let start = &text[..text.len().min(500)];
    assert!(text.contains("exit status: 4"), "{start}");
    assert!(text.contains("ERR last words"), "{start}");
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());

    // A tunnel whose process dies later is reported Down, with its last words, then re-opened.
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            Cloudflared::new()
                .binary(&fake)
                .arg("--fake-mode")
                .arg("exit-later"),
        )
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(100))
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    // With what it said last, which comes with its exit in no set order.
    assert!(
        matches!(&down, TunnelEvent::Down { reason, .. }
            if reason.contains("exit status: 7")
                && reason.contains("ERR connection to the edge lost")),
        "{down:?}"
    );
    let up = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(up, TunnelEvent::Up { .. }), "{up:?}");
    handle.close().await;
}

/// A tunnel through the fake cloudflared in proxy mode (its URL a loopback port that forwards to
/// the origin, as the edge does), with `args` of its own and the builder's `probe_timeout`, to
/// a local hello service: up and verified.
async fn proxied_cloudflared(
    fake: &std::path::Path,
    log: &std::path::Path,
    probe_timeout: Duration,
    args: &[&str],
) -> TunnelHandle {
    let calls = Arc::new(AtomicUsize::new(0));
    let local = support::serve_locally(hello_service(Arc::clone(&calls))).await;
    let mut cloudflared = Cloudflared::new()
        .binary(fake)
        .startup_timeout(Duration::from_secs(15))
        // The fake's tunnel is a loopback port, not in trycloudflare.com.
        .domain("")
        .arg("--fake-mode")
        .arg("proxy")
        .arg("--fake-log")
        .arg(log.display().to_string());
    for arg in args {
        cloudflared = cloudflared.arg(*arg);
    }
    let handle = Tunnel::builder()
        .probe_timeout(probe_timeout)
        .provider(cloudflared)
        .start(local)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        matches!(handle.status(), TunnelEvent::Up { verified: true, .. }),
        "{:?}",
        handle.status()
    );
    handle
}

/// cloudflared forwards the public requests to the URL it is given. For a local address, that
/// must still be a port that answers the round-trip probe, or the start always fails.
#[tokio::test]
async fn cloudflared_to_a_local_address_passes_the_probe_and_forwards_requests() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-proxy");
    let handle = proxied_cloudflared(&fake, &log, Duration::from_secs(2), &[]).await;
    let (status, body) = get_url(&handle.url(), "/webhook").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from /webhook"), "{body}");
    handle.close().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("origin 200 hello from /from-fake-cloudflared"),
        "{text}"
    );
    let _ = std::fs::remove_file(log);
}

/// A quick tunnel's hostname is unreachable for a while after cloudflared is ready (the edge
/// answers 530): the probe waits for it within cloudflared's startup timeout, not only the
/// builder's shorter probe timeout. Before, the start failed after the builder's probe timeout.
#[tokio::test]
async fn cloudflared_is_probed_until_its_new_hostname_reaches_it() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-slow-edge");
    let handle = proxied_cloudflared(
        &fake,
        &log,
        Duration::from_millis(300),
        &["--fake-edge-delay", "1500"],
    )
    .await;
    handle.close().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = text.matches("edge 530").count();
    // Tried again while the edge refused, at a growing pace: 100, 200, 400, 800 ms... fit about
    // 4 to 5 attempts in 1.5 s.
    assert!(
        (2..=8).contains(&refused),
        "{refused} attempts refused: {text}"
    );
    let _ = std::fs::remove_file(log);
}

/// cloudflared that loses its edge connections keeps running, and its `/ready` answers 503:
/// once that lasts `edge_lost_after`, the tunnel is down with that reason, cloudflared is
/// stopped, and the tunnel re-opens. Before, it stayed `Up` while its URL answered 530.
#[tokio::test]
async fn cloudflared_without_an_edge_connection_is_taken_down_and_reopened() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-edge-lost");
    let handle = Tunnel::builder()
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .provider(
            Cloudflared::new()
                .binary(&fake)
                .startup_timeout(Duration::from_secs(10))
                .edge_lost_after(Duration::from_millis(400))
                .arg("--fake-edge-lost-after")
                .arg("300")
                .arg("--fake-log")
                .arg(log.display().to_string()),
        )
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut events = handle.events();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the lost edge is noticed")
        .unwrap();
    assert!(
        matches!(&down, TunnelEvent::Down { reason, .. }
            if reason.contains("no connection to Cloudflare's edge")
                && reason.contains("/ready answered 503")),
        "{down:?}"
    );
    let up = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(up.is_up(), "{up:?}");
    handle.close().await;
    let text = std::fs::read_to_string(&log).unwrap();
    // The first cloudflared was stopped (SIGINT), not left running.
    assert!(text.contains("SIGINT"), "{text}");
    let _ = std::fs::remove_file(log);
}

/// Whether the process `pid` is gone (or only waits to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A shutdown signal that fires while the tunnel is still starting (cloudflared that never gets
/// ready, 30 s to start) stops the server at once, and the half-started provider with it.
#[tokio::test]
async fn server_helper_shuts_down_while_its_tunnel_is_still_starting() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-never-ready");
    let server = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .tunnel(
            Tunnel::builder().provider(
                Cloudflared::new()
                    .binary(&fake)
                    .arg("--fake-mode")
                    .arg("never-ready")
                    .arg("--fake-log")
                    .arg(log.display().to_string()),
            ),
        )
        .with_graceful_shutdown(tokio::time::sleep(Duration::from_millis(1500)));
    let started = Instant::now();
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        server.spawn(hello_service(Arc::new(AtomicUsize::new(0)))),
    )
    .await
    .expect("spawn waited for the tunnel's whole startup after the shutdown signal")
    .unwrap();
    // Handed back stopping, without a tunnel: nothing to announce.
    assert!(running.is_stopping());
    assert_eq!(running.tunnel_url(), None);
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("the server did not stop");
    assert!(started.elapsed() < Duration::from_secs(10));

    let text = std::fs::read_to_string(&log).unwrap();
    let pid: u32 = text
        .lines()
        .find_map(|line| line.strip_prefix("pid "))
        .unwrap_or_else(|| panic!("no pid in {text}"))
        .parse()
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(3), || process_gone(pid)).await,
        "cloudflared {pid} still runs"
    );
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn server_helper_serves_an_axum_router_locally_and_through_the_tunnel() {
    let ip = Ipv4Addr::new(127, 0, 0, 13);
    let _bore = BoreServer::start(ip, None).await;
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::get(|| async { "axum got the webhook" }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .tunnel(Tunnel::builder().provider(Bore::new().server(ip.to_string())))
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        });
    let running = server.spawn(app).await.unwrap();
    assert!(!running.is_stopping());
    let url = running.tunnel_url().unwrap();
    assert!(url.starts_with("http://127.0.0.13:"), "{url}");

    let (status, body) = get_url(&url, "/webhook").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "axum got the webhook"));
    let (status, body) = get(running.local_addr(), "localhost", "/webhook")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "axum got the webhook"));
    let (status, _) = get(running.local_addr(), "localhost", "/nope")
        .await
        .unwrap();
    assert_eq!(status, 404);

    let local = running.local_addr();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .unwrap();
    assert!(tokio::net::TcpStream::connect(local).await.is_err());
    let gone = support::eventually(Duration::from_secs(3), || {
        std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err()
    })
    .await;
    assert!(gone, "tunnel still open after shutdown");
}

/// A provider like cloudflared: its public side, on a new port each time it opens, forwards to
/// the upstream's local port. With `lose_first`, the first session ends after 200 ms.
#[derive(Debug, Default)]
struct ForwardToLocalPort {
    lose_first: bool,
    opened: AtomicUsize,
}

impl Provider for ForwardToLocalPort {
    fn name(&self) -> &str {
        "forward"
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, tower_webhook::BoxError>> {
        let lost = self.lose_first && self.opened.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            let origin = upstream.local_addr().await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            Ok(Session::spawn(url, move |mut stop| async move {
                let lose = tokio::time::sleep(if lost {
                    Duration::from_millis(200)
                } else {
                    Duration::MAX
                });
                tokio::pin!(lose);
                loop {
                    tokio::select! {
                        () = stop.stopped() => return Ok(()),
                        () = &mut lose => return Err("connection to the edge lost".into()),
                        accepted = listener.accept() => {
                            let (mut public, _) = accepted?;
                            tokio::spawn(async move {
                                if let Ok(mut local) = tokio::net::TcpStream::connect(origin).await {
                                    let _ = tokio::io::copy_bidirectional(&mut public, &mut local).await;
                                }
                            });
                        }
                    }
                }
            }))
        })
    }
}

/// The server helper on a loopback port, serving `hello_service` locally and through `tunnel`;
/// the sender stops it.
async fn serve_through(tunnel: TunnelBuilder) -> (Running, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .tunnel(tunnel)
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap();
    (running, stop)
}

/// Stops a server of [`serve_through`] and waits until it is down.
async fn shut_down(running: Running, stop: tokio::sync::oneshot::Sender<()>) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .unwrap();
}

/// The server accepts on its port before the tunnel opens, so the round-trip probe of a
/// provider that forwards there (cloudflared does) reaches the service.
#[tokio::test]
async fn server_helper_serves_a_provider_that_forwards_to_its_port() {
    let (running, stop) = serve_through(
        Tunnel::builder()
            .probe_timeout(Duration::from_secs(10))
            .provider(ForwardToLocalPort::default()),
    )
    .await;
    let url = running.tunnel_url().unwrap();
    let (status, body) = get_url(&url, "/through").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from /through"), "{body}");
    shut_down(running, stop).await;
}

/// `Running::tunnel_url` follows the tunnel: re-opened at another URL, it reports the new one.
#[tokio::test]
async fn server_helper_reports_the_url_of_a_re_opened_tunnel() {
    let (running, stop) = serve_through(
        Tunnel::builder()
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .provider(ForwardToLocalPort {
                lose_first: true,
                ..Default::default()
            }),
    )
    .await;
    let first = running.tunnel_url().unwrap();
    let moved = support::eventually(Duration::from_secs(3), || {
        running.tunnel_url().is_some_and(|url| url != first)
    })
    .await;
    assert!(moved, "still {first}");
    let url = running.tunnel_url().unwrap();
    let (status, body) = get_url(&url, "/moved").await.unwrap();
    assert_eq!((status, body.starts_with("hello from /moved")), (200, true));
    shut_down(running, stop).await;
}

#[tokio::test]
async fn server_helper_without_a_tunnel() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        });
    let running = server
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap();
    assert_eq!(running.tunnel_url(), None);
    let (status, body) = get(running.local_addr(), "localhost", "/plain")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from /plain"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn ngrok_without_a_token_is_skipped_at_once() {
    // Skipped, not timed out: far sooner than its startup timeout, even on a loaded machine.
    let startup_timeout = Duration::from_secs(60);
    let started = Instant::now();
    let err = Tunnel::builder()
        .provider(Ngrok::new().startup_timeout(startup_timeout))
        .start(service())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < startup_timeout / 6, "{took:?}");
    assert!(err.to_string().contains("set TUNNEL_AUTH_TOKEN"), "{err}");
    assert!(!format!("{:?}", Ngrok::new().authtoken("hidden-token")).contains("hidden-token"));
}

/// Opt-in: `TUNNEL_AUTH_TOKEN=... cargo test --all-features --test tunnel -- --ignored`.
/// Opens a real ngrok endpoint (network access to ngrok needed).
#[tokio::test]
#[ignore = "needs an ngrok auth token and the internet"]
async fn ngrok_online_with_a_real_token() {
    let ngrok = Ngrok::from_env();
    let handle = Tunnel::builder()
        .provider(ngrok)
        .start(service())
        .await
        .expect("set TUNNEL_AUTH_TOKEN to a valid ngrok token");
    assert!(handle.url().starts_with("https://"), "{}", handle.url());
    assert_eq!(handle.provider(), "ngrok");
    handle.close().await;
}

/// A server bound to all interfaces (`0.0.0.0`) hands cloudflared its loopback address to call:
/// the unspecified address is for listening, and not every system connects to it.
#[tokio::test]
async fn server_helper_on_all_interfaces_hands_cloudflared_its_loopback_address() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-unspecified");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(([0, 0, 0, 0], 0).into())
        .await
        .unwrap()
        .tunnel(
            Tunnel::builder().probe(false).provider(
                Cloudflared::new()
                    .binary(&fake)
                    .arg("--fake-log")
                    .arg(log.display().to_string()),
            ),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap();
    let port = running.local_addr().port();
    shut_down(running, stop).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let argv = text.lines().next().unwrap();
    assert!(
        argv.contains(&format!("--url http://127.0.0.1:{port} ")),
        "{text}"
    );
    let _ = std::fs::remove_file(log);
}

/// Whether process `pid` still exists.
#[cfg(unix)]
fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A cloudflared whose probe failed is stopped while the next provider is tried; when no
/// provider works, `start` returns once it is gone. `start` returned `AllFailed` while it was
/// still in its stop grace (this one ignores SIGINT, and is killed after 1 s).
#[cfg(unix)]
#[tokio::test]
async fn a_failed_start_returns_once_a_cloudflared_whose_probe_failed_is_gone() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let log = temp_log("cloudflared-probe-failed");
    let err = Tunnel::builder()
        .probe_timeout(Duration::from_millis(300))
        .provider(
            Cloudflared::new()
                .binary(&fake)
                // Node may take seconds to start the fake on a busy machine: the probe fails
                // soon after it has.
                .startup_timeout(Duration::from_secs(5))
                .stop_grace(Duration::from_secs(1))
                // The fake's tunnel is a loopback port (the edge), not in trycloudflare.com; its
                // edge answers 530 for ten minutes, so the probe fails.
                .domain("")
                .arg("--fake-mode")
                .arg("proxy")
                .arg("--fake-edge-delay")
                .arg("600000")
                .arg("--fake-ignore-sigint")
                .arg("--fake-log")
                .arg(log.display().to_string()),
        )
        .start(service())
        .await
        .unwrap_err();
    assert!(matches!(err, TunnelError::AllFailed { .. }), "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let pid = text
        .lines()
        .find_map(|line| line.strip_prefix("pid "))
        .unwrap_or_else(|| panic!("no pid in {text}"));
    assert!(text.lines().any(|l| l == "SIGINT"), "{text}");
    assert!(
        !alive(pid),
        "cloudflared still runs after start failed:\n{text}"
    );
    let _ = std::fs::remove_file(log);
}
