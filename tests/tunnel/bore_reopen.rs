//! A re-opened bore tunnel asks bore-cli's real server (in-process on loopback) for the public
//! port it had, so that its URL, where the webhooks are registered, stays the same; when the
//! port was taken meanwhile, it comes back on a new one.
//!
//! bore's control port is fixed, so each test uses its own loopback address (127.0.0.60 ...).

use crate::logs;
use crate::support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use logs::Logs;
use support::{BoreServer, get_url, hello_service, relay_to};
use tower_webhook::tunnel::{Bore, Tunnel, TunnelEvent, TunnelEvents, TunnelHandle, Upstream};

fn bore_to(ip: Ipv4Addr) -> Bore {
    Bore::new()
        .server(ip.to_string())
        .startup_timeout(Duration::from_secs(5))
}

/// Starts a tunnel through `bore` to a service counting its calls in `calls`, re-opened after
/// `backoff` (jittered down to half of it).
async fn start(bore: Bore, calls: &Arc<AtomicUsize>, backoff: Duration) -> TunnelHandle {
    Tunnel::builder()
        .provider(bore)
        .reconnect_backoff(backoff, backoff)
        .start(Upstream::service(hello_service(Arc::clone(calls))))
        .await
        .unwrap()
}

/// The next event of `events` within 10 s.
async fn next_event(events: &mut TunnelEvents) -> TunnelEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no tunnel event in time")
        .expect("the tunnel closed")
}

/// Waits for the tunnel's next event, which must be `Up` at `url` again: the re-opened tunnel got
/// its port back.
async fn back_at(url: &str, events: &mut TunnelEvents) {
    assert_eq!(
        next_event(events).await,
        TunnelEvent::Up {
            provider: "bore".into(),
            url: url.to_owned(),
            verified: true,
        },
        "the re-opened tunnel did not get its port back"
    );
}

/// Waits for the `Down` event of `events`.
async fn down(events: &mut TunnelEvents) {
    let down = next_event(events).await;
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
}

/// The `host:port` of a bore tunnel's URL.
fn address(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Kills `server` and waits until the public ports of `urls` are closed with it.
async fn kill(server: &mut BoreServer, urls: &[&str]) {
    server.kill();
    let closed = support::eventually(Duration::from_secs(5), || {
        urls.iter()
            .all(|url| std::net::TcpStream::connect(address(url)).is_err())
    })
    .await;
    assert!(closed, "a public port outlived its server");
}

/// `GET {url}/{path}` answers 200 from the service counting its calls in `calls`.
async fn reaches(url: &str, path: &str, calls: &AtomicUsize) {
    let before = calls.load(Ordering::SeqCst);
    let (status, body) = get_url(url, path).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("hello from {path}")), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "{url}{path}");
}

/// A bore server restart ends the session; the re-opened tunnel asks the new server for the
/// port it had, so it comes back `Up` at the same URL (no `UrlChanged`: the webhooks registered
/// there keep arriving), and that port forwards to the service again.
#[tokio::test]
async fn a_bore_tunnel_re_opened_after_a_server_restart_keeps_its_url() {
    let ip = Ipv4Addr::new(127, 0, 0, 60);
    let mut server = BoreServer::start(ip, None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = start(bore_to(ip), &calls, Duration::from_millis(200)).await;
    let url = handle.url();
    let mut events = handle.events();
    reaches(&url, "/before", &calls).await;

    kill(&mut server, &[&url]).await;
    down(&mut events).await;
    let _server = BoreServer::start(ip, None).await;
    back_at(&url, &mut events).await;
    reaches(&url, "/after", &calls).await;
    handle.close().await;
}

/// Ten tunnels through one provider, all ended by one server restart: each re-opened tunnel
/// gets its own port back. The provider remembered eight ports of ended tunnels, and the ninth
/// and tenth tunnels came back at new URLs.
#[tokio::test]
async fn ten_bore_tunnels_re_opened_after_a_server_restart_all_keep_their_urls() {
    let ip = Ipv4Addr::new(127, 0, 0, 67);
    let mut server = BoreServer::start(ip, None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let bore = bore_to(ip);
    let mut tunnels = Vec::new();
    for _ in 0..10 {
        let handle = start(bore.clone(), &calls, Duration::from_millis(300)).await;
        let events = handle.events();
        tunnels.push((handle.url(), events, handle));
    }
    let urls: Vec<&str> = tunnels.iter().map(|(url, ..)| url.as_str()).collect();
    kill(&mut server, &urls).await;
    for (_, events, _) in &mut tunnels {
        down(events).await;
    }
    let _server = BoreServer::start(ip, None).await;
    for (url, events, _) in &mut tunnels {
        back_at(url, events).await;
    }
    for (n, (url, _, handle)) in tunnels.into_iter().enumerate() {
        reaches(&url, &format!("/tunnel-{n}"), &calls).await;
        handle.close().await;
    }
}

/// The control connection is cut while the server runs on (a relay in front of it restarted,
/// say). bore-cli's server keeps the port until its heartbeats into the cut connection fail,
/// about a second later, while the tunnel re-opens sooner: the port is refused as in use at
/// first, asked for again once the server has let it go, and the tunnel comes back at the same
/// URL instead of a new one.
#[tokio::test]
async fn a_bore_tunnel_whose_control_connection_is_cut_comes_back_at_its_url() {
    let ip = Ipv4Addr::new(127, 0, 0, 61);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let bore = bore_to(ip).control_port(relay_port);
    let handle = start(bore, &calls, Duration::from_millis(100)).await;
    let url = handle.url();
    let mut events = handle.events();

    cut.send(()).unwrap();
    down(&mut events).await;
    back_at(&url, &mut events).await;
    reaches(&url, "/after-the-cut", &calls).await;
    handle.close().await;
}

/// The same for a tunnel that asks for a fixed port, with a fallback provider: it asked for its
/// port once, was refused it as in use while the server still held it for the cut session, and
/// the chain moved on to the fallback, so the URL registered with the provider was gone
/// (`UrlChanged`). The port is asked for again once the server has let the session go, and the
/// tunnel comes back at its URL.
#[tokio::test]
async fn a_bore_tunnel_with_a_fixed_port_whose_control_connection_is_cut_comes_back_at_its_url() {
    let (ip, fallback_ip) = (Ipv4Addr::new(127, 0, 0, 65), Ipv4Addr::new(127, 0, 0, 66));
    let _server = BoreServer::start(ip, None).await;
    let _fallback = BoreServer::start(fallback_ip, None).await;
    let port = {
        let free = std::net::TcpListener::bind((ip, 0)).unwrap();
        free.local_addr().unwrap().port()
    };
    let (relay_port, cut) = relay_to(ip).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(bore_to(ip).control_port(relay_port).remote_port(port))
        .fallback(bore_to(fallback_ip))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(100))
        .start(Upstream::service(hello_service(Arc::clone(&calls))))
        .await
        .unwrap();
    let url = handle.url();
    assert_eq!(url, format!("http://{ip}:{port}"));
    let mut events = handle.events();

    cut.send(()).unwrap();
    down(&mut events).await;
    back_at(&url, &mut events).await;
    reaches(&url, "/after-the-cut", &calls).await;
    handle.close().await;
}

/// While the server restarts, another program binds the tunnel's public port: the server
/// refuses it to the re-opened tunnel ("port already in use"), which then asks for any port on
/// a new control connection, comes back at a new URL told as `UrlChanged`, and logs why at info.
#[tokio::test]
async fn a_bore_tunnel_whose_port_was_taken_meanwhile_re_opens_at_a_new_url() {
    let (logs, _guard) = Logs::capture();
    let ip = Ipv4Addr::new(127, 0, 0, 62);
    let mut server = BoreServer::start(ip, None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = start(bore_to(ip), &calls, Duration::from_millis(200)).await;
    let old = handle.url();
    let mut events = handle.events();

    kill(&mut server, &[&old]).await;
    down(&mut events).await;
    let taken = std::net::TcpListener::bind(address(&old)).unwrap();
    let _server = BoreServer::start(ip, None).await;
    let back = next_event(&mut events).await;
    let TunnelEvent::UrlChanged {
        provider,
        old: was,
        new,
        verified,
    } = &back
    else {
        panic!("expected UrlChanged, got {back:?}")
    };
    assert_eq!((provider.as_str(), was, verified), ("bore", &old, &true));
    assert_ne!(new, &old);
    assert_eq!(&handle.url(), new);
    reaches(new, "/moved", &calls).await;

    let port = old.rsplit(':').next().unwrap();
    let logged = logs.text();
    let refused = logged
        .lines()
        .find(|line| line.contains("refused the tunnel's previous port: asking for any port"))
        .unwrap_or_else(|| panic!("no log line tells the refusal:\n{logged}"));
    assert!(refused.contains(" INFO "), "{refused}");
    assert!(refused.contains(&format!("port={port}")), "{refused}");
    assert!(refused.contains("port already in use"), "{refused}");
    drop(taken);
    handle.close().await;
}

/// Two tunnels through one `Bore` (clones share what it remembers) are lost together when the
/// server restarts: each asks for its own port again and gets it, neither takes the other's, so
/// each URL still reaches its own service.
#[tokio::test]
async fn two_bore_tunnels_of_one_provider_each_get_their_own_port_back() {
    let ip = Ipv4Addr::new(127, 0, 0, 63);
    let mut server = BoreServer::start(ip, None).await;
    let bore = bore_to(ip);
    let calls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let first = start(bore.clone(), &calls[0], Duration::from_millis(200)).await;
    let second = start(bore.clone(), &calls[1], Duration::from_millis(400)).await;
    let urls = [first.url(), second.url()];
    assert_ne!(urls[0], urls[1]);
    let mut events = [first.events(), second.events()];

    kill(&mut server, &[&urls[0], &urls[1]]).await;
    for events in &mut events {
        down(events).await;
    }
    let _server = BoreServer::start(ip, None).await;
    for (events, url) in events.iter_mut().zip(&urls) {
        let back = next_event(events).await;
        assert_eq!(
            back,
            TunnelEvent::Up {
                provider: "bore".into(),
                url: url.clone(),
                verified: true,
            },
            "a re-opened tunnel did not get its own port back"
        );
    }
    reaches(&urls[0], "/first", &calls[0]).await;
    reaches(&urls[1], "/second", &calls[1]).await;
    first.close().await;
    second.close().await;
}

/// A new tunnel through the same `Bore` never takes the port of a tunnel that is being
/// re-opened (which asks for it itself), but may take that of a tunnel that was closed.
#[tokio::test]
async fn a_new_bore_tunnel_takes_a_closed_tunnels_port_never_one_being_re_opened() {
    let ip = Ipv4Addr::new(127, 0, 0, 64);
    let mut server = BoreServer::start(ip, None).await;
    let bore = bore_to(ip);
    let calls = Arc::new(AtomicUsize::new(0));
    // Waits 1 to 2 s before it re-opens.
    let lost = start(bore.clone(), &calls, Duration::from_secs(2)).await;
    let lost_url = lost.url();
    let mut events = lost.events();
    kill(&mut server, &[&lost_url]).await;
    down(&mut events).await;
    let _server = BoreServer::start(ip, None).await;

    // Started while the lost tunnel waits to re-open: a port of its own.
    let new = start(bore.clone(), &calls, Duration::from_millis(200)).await;
    let new_url = new.url();
    assert_ne!(new_url, lost_url);
    let back = next_event(&mut events).await;
    assert_eq!(back.url(), lost_url, "{back:?}");
    assert!(back.is_up(), "{back:?}");

    // Once closed, its port is the next new tunnel's.
    new.close().await;
    let after = start(bore.clone(), &calls, Duration::from_millis(200)).await;
    assert_eq!(after.url(), new_url);
    reaches(&new_url, "/taken-over", &calls).await;
    after.close().await;
    lost.close().await;
}

/// A server restarted with another secret refuses the re-opened tunnel for its secret: that is
/// the attempt's reason at once. The refusal was taken for one of the tunnel's previous port,
/// logged as such, and any port asked for on a second control connection, refused the same way.
#[tokio::test]
async fn a_bore_tunnel_refused_for_its_secret_does_not_ask_for_any_port() {
    let (logs, _guard) = Logs::capture();
    let ip = Ipv4Addr::new(127, 0, 0, 68);
    let mut server = BoreServer::start(ip, Some("old-secret")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = start(
        bore_to(ip).secret("old-secret"),
        &calls,
        Duration::from_millis(200),
    )
    .await;
    let url = handle.url();
    let mut events = handle.events();

    kill(&mut server, &[&url]).await;
    down(&mut events).await;
    let _server = BoreServer::start(ip, Some("new-secret")).await;
    let refused = support::eventually(Duration::from_secs(5), || {
        logs.text()
            .lines()
            .any(|line| line.contains("tunnel provider failed") && line.contains("invalid secret"))
    })
    .await;
    let logged = logs.text();
    assert!(refused, "no attempt failed for the secret:\n{logged}");
    assert!(
        !logged.contains("asking for any port"),
        "taken for a refusal of the port:\n{logged}"
    );
    handle.close().await;
}
