//! bore against bore-cli's real server on loopback: the host of a shared `TUNNEL_SERVER` URL with a
//! path, and a probe cut short by the startup timeout keeps its reason. bore's control port is
//! fixed, so each bore test has its own loopback address (127.0.3.x).

use crate::support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::{BoreServer, get_url, hello_service};
use tower_webhook::tunnel::{Bore, Provider, Tunnel, TunnelConfig, TunnelError, Upstream};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// A shared `TUNNEL_SERVER` URL with a path (the localtunnel server's address) names the bore
/// host; the path is no part of the host name.
#[tokio::test]
async fn bore_takes_the_host_of_a_shared_server_url_with_a_path() {
    let ip = Ipv4Addr::new(127, 0, 3, 1);
    let _server = BoreServer::start(ip, None).await;
    let config = TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("bore".to_owned()),
        "TUNNEL_SERVER" => Some("http://127.0.3.1:3000/lt/".to_owned()),
        _ => None,
    })
    .unwrap();
    let handle = config.builder().start(service()).await.unwrap();
    let url = handle.url();
    assert!(url.starts_with("http://127.0.3.1:"), "{url}");
    let (status, body) = get_url(&url, "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    handle.close().await;

    for (server, shown) in [
        ("https://[::1]:8443/lt", "[::1]:7835"),
        (
            "https://bore.example.com/some/path?x=1",
            "bore.example.com:7835",
        ),
        (
            "http://user@bore.example.com:8080/",
            "bore.example.com:7835",
        ),
        ("tcp://bore.example.com:7000/", "bore.example.com:7000"),
    ] {
        let hint = Bore::new().server(server).hint().unwrap();
        assert!(
            hint.contains(&format!("runs at {shown} ")),
            "{server}: {hint}"
        );
    }
}

/// A probe that fails within a provider's startup timeout shorter than the probe timeout (here
/// the bore server's public ports are on another address than its control port, so the probe
/// is refused) is reported with the probe's reason, not as a bare startup timeout.
#[tokio::test]
async fn a_probe_cut_by_the_startup_timeout_keeps_its_reason() {
    // Owned by this test (another process may hold 127.0.3.2:7835 for a while).
    let _background =
        support::start_bore_server([127, 0, 3, 2].into(), [127, 0, 3, 3].into(), None).await;
    let err = Tunnel::builder()
        .provider(
            Bore::new()
                .server("127.0.3.2")
                .startup_timeout(Duration::from_millis(600)),
        )
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    let reason = &attempts[0].reason;
    assert!(reason.contains("round-trip probe"), "{reason}");
    assert!(
        reason.contains("could not connect to 127.0.3.2:"),
        "{reason}"
    );
    // Ended by the 600 ms startup timeout, not the probe's own 5 s (with room for a loaded CI).
    assert!(attempts[0].elapsed < Duration::from_secs(3), "{err}");
}
