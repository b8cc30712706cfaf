//! The tunnel bootstrapper, on loopback: a localtunnel subdomain set by the user and refused by the
//! server, a bore server that assigns port 0 or another port than asked, and a probe timeout too
//! short for any probe.

use crate::support;

use crate::lt_scripted;
use lt_scripted::ScriptedLt;

use crate::bore_frames;
use bore_frames::{read_frame, write_frame};

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::hello_service;
use tokio::net::TcpListener;
use tower_webhook::tunnel::{
    Bore, LocalTunnel, Tunnel, TunnelError, TunnelEvent, TunnelHandle, Upstream,
};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// A localtunnel provider for the scripted `server` that asks for the subdomain `review-bot`.
fn review_bot(server: &ScriptedLt) -> LocalTunnel {
    LocalTunnel::new()
        .server(format!("http://{}", server.api))
        .subdomain("review-bot")
        .unwrap()
        .startup_timeout(Duration::from_secs(5))
}

/// Starts a tunnel through `provider` that re-opens quickly, probe off; it must start under the
/// name `review-bot`.
async fn start_reopening(provider: LocalTunnel) -> TunnelHandle {
    let handle = Tunnel::builder()
        .provider(provider)
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(service())
        .await
        .unwrap();
    let url = handle.url();
    assert!(url.starts_with("http://review-bot.localhost:"), "{url}");
    handle
}

/// A subdomain set with `LocalTunnel::subdomain` that the server refuses on the first start
/// fails the start with an error that names the subdomain (the server's message may not), after
/// one request: the user's name is not swapped for another behind their back.
#[tokio::test]
async fn a_chosen_localtunnel_subdomain_refused_at_start_is_named_in_the_error() {
    let server = ScriptedLt::start().await;
    server.taken.lock().unwrap().insert("review-bot".to_owned());
    let err = Tunnel::builder()
        .provider(review_bot(&server))
        .probe(false)
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts.len(), 1, "{err}");
    let reason = &attempts[0].reason;
    assert!(reason.contains("`review-bot`"), "{reason}");
    assert!(reason.contains("that name is in use"), "{reason}");
    assert_eq!(server.asked(), ["/review-bot"]);
}

/// The localtunnel server does not refuse a name in use: it gives the client another one. A
/// subdomain set with `LocalTunnel::subdomain` answered that way on the first start fails it too,
/// naming both; on a re-open, the other name is the tunnel's new name (`UrlChanged`).
#[tokio::test]
async fn a_chosen_localtunnel_subdomain_answered_with_another_name() {
    let server = ScriptedLt::start().await;
    server.renaming.store(true, Ordering::SeqCst);
    server.taken.lock().unwrap().insert("review-bot".to_owned());
    let provider = review_bot(&server);
    let err = Tunnel::builder()
        .provider(provider.clone())
        .probe(false)
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    let reason = &attempts[0].reason;
    assert!(
        reason.contains("`review-bot`") && reason.contains("`fresh0name`"),
        "{reason}"
    );

    server.taken.lock().unwrap().clear();
    let handle = start_reopening(provider).await;
    let mut events = handle.events();
    server.taken.lock().unwrap().insert("review-bot".to_owned());
    let up = server.bounce(&mut events).await;
    match &up {
        TunnelEvent::UrlChanged { new, .. } => {
            assert!(new.starts_with("http://fresh1name.localhost:"), "{new}")
        }
        other => panic!("not re-opened under the name given: {other:?}"),
    }
    handle.close().await;
}

/// The docs promise that a re-opened localtunnel whose name the server now refuses gets a new
/// name, reported as `UrlChanged`. A subdomain set by the user failed every re-open instead,
/// for ever. It now asks for its own name first, then takes a new one; and once the tunnel drops
/// again, it asks for the user's name first and gets it back when it is free.
#[tokio::test]
async fn a_re_opened_localtunnel_whose_chosen_subdomain_is_refused_gets_a_new_name() {
    let server = ScriptedLt::start().await;
    let handle = start_reopening(review_bot(&server)).await;
    let first = handle.url();
    let mut events = handle.events();

    // The server drops the tunnel and refuses its name from now on.
    server.taken.lock().unwrap().insert("review-bot".to_owned());
    let up = server.bounce(&mut events).await;
    match &up {
        TunnelEvent::UrlChanged { old, new, .. } => {
            assert_eq!(old, &first);
            assert!(new.starts_with("http://fresh0name.localhost:"), "{new}");
        }
        other => panic!("not re-opened under a new name: {other:?}"),
    }
    assert_eq!(
        server.asked(),
        ["/review-bot", "/review-bot", "/?new"],
        "asked for"
    );

    // The name is free again, and the tunnel drops again: it gets the user's name back.
    server.taken.lock().unwrap().clear();
    let up = server.bounce(&mut events).await;
    match &up {
        TunnelEvent::UrlChanged { new, .. } => assert_eq!(new, &first),
        other => panic!("the chosen name was not asked for again: {other:?}"),
    }
    assert_eq!(handle.url(), first);
    handle.close().await;
}

/// A bore control port that answers every `Hello` with `Hello(port)` and then sends heartbeats.
async fn bore_assigning(port: u16) -> std::net::SocketAddr {
    let control = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = control.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = control.accept().await {
            tokio::spawn(async move {
                let frame = read_frame(&mut stream).await;
                if frame.as_ref().is_some_and(|f| f.get("Hello").is_some()) {
                    let _ = write_frame(&mut stream, serde_json::json!({ "Hello": port })).await;
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if write_frame(&mut stream, serde_json::json!("Heartbeat"))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Starts a tunnel through the bore control port `addr` with `bore`'s settings and reconnects
/// off: the reason its only attempt failed (the start must fail).
async fn bore_start_failure(addr: std::net::SocketAddr, bore: Bore, probe: bool) -> String {
    let started = Tunnel::builder()
        .provider(
            bore.server("127.0.0.1")
                .control_port(addr.port())
                .startup_timeout(Duration::from_secs(5)),
        )
        .probe(probe)
        .reconnect(false)
        .start(service())
        .await;
    let err = match started {
        Ok(handle) => {
            let url = handle.url();
            handle.close().await;
            panic!("started with {url} (probe {probe})");
        }
        Err(err) => err,
    };
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    attempts[0].reason.clone()
}

/// A bore server that assigns port 0 (no port at all) gave the tunnel the URL
/// `http://host:0`, which nobody can reach: with the probe off the start succeeded with it.
/// The server's answer is invalid, and the attempt now fails saying so.
#[tokio::test]
async fn a_bore_server_assigning_port_zero_fails_the_attempt() {
    let addr = bore_assigning(0).await;
    for probe in [false, true] {
        let reason = bore_start_failure(addr, Bore::new(), probe).await;
        assert!(reason.contains("port 0"), "{reason}");
    }
}

/// A bore server that assigns another port than the one asked for with `remote_port` gave the
/// tunnel a URL other than the one registered with the provider, and the start succeeded. The
/// attempt now fails, naming both ports.
#[tokio::test]
async fn a_bore_server_assigning_another_port_than_asked_fails_the_attempt() {
    let addr = bore_assigning(40_001).await;
    let reason = bore_start_failure(addr, Bore::new().remote_port(40_000), false).await;
    assert!(
        reason.contains("port 40001, not the port 40000 asked for"),
        "{reason}"
    );
}

/// `probe_timeout(Duration::ZERO)` made every start fail (the probe had no time at all); it
/// is refused where it is set now, as the signature layer refuses a TTL under 1 ms, with a
/// message pointing to `probe(false)`.
#[test]
fn a_probe_timeout_under_a_millisecond_is_refused_where_it_is_set() {
    for short in [Duration::ZERO, Duration::from_micros(999)] {
        let panicked = std::panic::catch_unwind(|| Tunnel::builder().probe_timeout(short))
            .expect_err("a probe timeout under 1 ms was taken");
        let message = panicked
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("probe(false)"), "{message}");
    }
    let builder = Tunnel::builder().probe_timeout(Duration::from_millis(1));
    assert!(format!("{builder:?}").contains("probe_timeout: 1ms"));
}
