//! https for the tunnel's own requests: localtunnel registration against a TLS server and the
//! round-trip probe through an `https://` public URL, with the certificate verified (a private
//! root given through the public API, or refused as not trusted).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{LtServer, get_tls, hello_service};
use tower_webhook::tunnel::{LocalTunnel, TlsRoots, Tunnel, TunnelBuilder, TunnelEvent, Upstream};

const NAME: &str = "tls-bot";
const HOST: &str = "tls-bot.localhost";

async fn tls_server() -> (LtServer, Vec<u8>) {
    LtServer::start_tls(&["localhost", HOST]).await
}

#[tokio::test]
async fn registration_over_https_with_a_private_root_reaches_a_tower_service_and_is_probed() {
    let (server, root) = tls_server().await;
    let port = server.addr.port();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .root_certificate(root.clone())
        .unwrap()
        .provider(
            LocalTunnel::new()
                .server(format!("https://localhost:{port}"))
                .root_certificate(root.clone())
                .unwrap()
                .subdomain(NAME)
                .unwrap(),
        )
        .start(Upstream::service(hello_service(Arc::clone(&calls))))
        .await
        .unwrap();
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 1);
    let url = handle.url();
    assert_eq!(url, format!("https://{HOST}:{port}"));
    // The probe went through the https public URL and came back to this process.
    assert_eq!(
        handle.status(),
        TunnelEvent::Up {
            provider: "localtunnel".into(),
            url: url.clone(),
            verified: true,
        }
    );

    // Public https requests reach the tower service through the plain-TCP tunnel connections.
    for i in 0..3 {
        let (status, body) = get_tls(server.addr, HOST, &format!("/webhook/{i}"), &root)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("hello from /webhook/{i}")),
            "{body}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    handle.close().await;
}

/// Starts a tunnel that must fail; its error's text.
async fn refused(builder: TunnelBuilder) -> String {
    builder
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn an_unknown_certificate_authority_is_refused_as_not_trusted() {
    let (server, _root) = tls_server().await;
    let port = server.addr.port();
    let text = refused(
        Tunnel::builder().reconnect(false).provider(
            LocalTunnel::new()
                .server(format!("https://localhost:{port}"))
                .subdomain(NAME)
                .unwrap(),
        ),
    )
    .await;
    assert!(
        text.contains("the TLS certificate of localhost is not trusted"),
        "{text}"
    );
    assert!(text.contains("unknown certificate authority"), "{text}");
    // The handshake failed before any request: nothing was registered.
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_certificate_must_name_the_host_asked_for() {
    // Trusted root, but the certificate names `localhost`, not `127.0.0.1`.
    let (server, root) = tls_server().await;
    let text = refused(
        Tunnel::builder().reconnect(false).provider(
            LocalTunnel::new()
                .server(format!("https://{}", server.addr))
                .root_certificate(root)
                .unwrap()
                .subdomain(NAME)
                .unwrap(),
        ),
    )
    .await;
    assert!(
        text.contains("the TLS certificate of 127.0.0.1 is not trusted: it is not valid for the name 127.0.0.1"),
        "{text}"
    );
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_probe_verifies_the_public_url_certificate_too() {
    // The provider trusts the server, the probe does not: the probe runs over TLS and fails.
    let (server, root) = tls_server().await;
    let port = server.addr.port();
    let text = refused(
        Tunnel::builder()
            .reconnect(false)
            .tls_roots(TlsRoots::empty())
            // The probe tries again until this ends, then tells the last failure: room for a
            // handshake or two on a busy machine.
            .probe_timeout(Duration::from_secs(2))
            .provider(
                LocalTunnel::new()
                    .server(format!("https://localhost:{port}"))
                    .tls_roots(TlsRoots::empty().add_certificate(root).unwrap())
                    .subdomain(NAME)
                    .unwrap(),
            ),
    )
    .await;
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 1);
    assert!(text.contains("round-trip probe"), "{text}");
    assert!(
        text.contains(&format!("the TLS certificate of {HOST} is not trusted")),
        "{text}"
    );
}

#[test]
fn roots_refuse_bytes_that_are_not_a_certificate() {
    let err = TlsRoots::new()
        .add_certificate(b"not a certificate".to_vec())
        .unwrap_err();
    assert!(err.to_string().contains("TLS root certificate"), "{err}");
    assert!(
        LocalTunnel::new()
            .root_certificate(Vec::<u8>::new())
            .is_err()
    );
    let roots = TlsRoots::empty();
    assert!(roots.is_empty());
    assert!(TlsRoots::new().len() > 100);
}
