//! Tenth review of the tunnel bootstrapper, on loopback: a cloudflared that never gets ready
//! fails with what it said rather than a bare timeout.

#[path = "tunnel/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::hello_service;
use tower_webhook::tunnel::{Cloudflared, Tunnel, TunnelError, Upstream};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

fn fake_cloudflared() -> Option<std::path::PathBuf> {
    support::node_available("fake cloudflared").then(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tunnel/fake-cloudflared")
    })
}

/// A cloudflared that runs but never gets ready (it cannot reach Cloudflare's edge, say) fails
/// the attempt within its startup timeout with what it said and what its metrics endpoint
/// answered, not with a bare "did not start" that leaves the user guessing.
#[tokio::test]
async fn a_cloudflared_that_never_gets_ready_fails_with_its_own_reason() {
    let Some(fake) = fake_cloudflared() else {
        return;
    };
    let err = Tunnel::builder()
        .provider(
            Cloudflared::new()
                .binary(&fake)
                .arg("--fake-mode")
                .arg("never-ready")
                .startup_timeout(Duration::from_secs(3)),
        )
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    let reason = &attempts[0].reason;
    assert!(!reason.contains("did not start within"), "{reason}");
    assert!(reason.contains("not ready"), "{reason}");
    assert!(reason.contains("/ready answered 503"), "{reason}");
    assert!(
        reason.contains("Failed to dial a quic connection"),
        "{reason}"
    );
}
