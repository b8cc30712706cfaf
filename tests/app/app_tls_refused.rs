//! The pr_agent_server example against a provider API whose TLS certificate it does not trust
//! (a self-hosted instance behind a private CA): the comment is given up at once, with the
//! reason, instead of being tried again for the better part of an hour as if the API were
//! unreachable.

use crate::harness;
use crate::logs;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::{deliver, github_opened, lookup, settled, start_server};
use http::StatusCode;
use logs::Logs;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// An HTTPS server on loopback with a certificate for `127.0.0.1` signed by nobody the client
/// trusts; it counts the connections it was offered.
async fn untrusted_api() -> (SocketAddr, Arc<AtomicUsize>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = certified.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.into()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            // The client refuses the certificate: the handshake ends there.
            tokio::spawn(async move { drop(acceptor.accept(stream).await) });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_comment_to_an_api_whose_certificate_is_refused_is_given_up_at_once() {
    let (logs, _guard) = Logs::capture();
    let (api, connections) = untrusted_api().await;
    let api_url = format!("https://{api}");
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &api_url),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let (headers, body) = github_opened("s3cret", "3f0a5c2e-0b1d-4e6f-9a7c-2d4e6f8a0b1c", 7);
    assert_eq!(
        deliver(&base, "/api/v1/github_webhooks", &headers, &body).await,
        StatusCode::ACCEPTED
    );
    let status = settled(&crate::client::new(), &base, 1).await;
    assert_eq!(status["comments"]["failed"], 1, "{status}");
    assert_eq!(status["comments"]["retries"], 0, "{status}");
    assert!(connections.load(Ordering::SeqCst) >= 1);
    let text = logs.text();
    assert!(text.contains("TLS certificate refused"), "{text}");
    assert!(text.contains("GITHUB_API_URL"), "{text}");
}
