//! Thirteenth review of the signature layer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tower_webhook::signature::{ClaimToken, Clock, MemoryReplayStore, ReplayStore};

/// The bytes this process holds in memory (Linux).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A `MemoryReplayStore` whose every id is a claim in progress refuses new ids (the layer
/// answers 503) until one is settled, "so the memory stays bounded". Each refusal queued every
/// held claim once more for the expiry sweep, and nothing trimmed that queue before an id was
/// let in again: a store of 256 claims grew by about 4 KB per refused delivery, 80 MB after
/// 20,000, for as long as the handlers ran (up to `claim_ttl`, 5 minutes by default).
#[test]
#[cfg(target_os = "linux")]
fn a_store_full_of_claims_does_not_grow_with_each_refused_delivery() {
    // Claims taken one millisecond apart, as deliveries arrive.
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let ms = Arc::clone(&now);
    let store = MemoryReplayStore::with_capacity(256).clock(Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.fetch_add(1, Ordering::SeqCst))
    }));
    let ttl = Duration::from_secs(300);
    let claim = |id: &str| {
        let mut future = store.claim(id, ClaimToken::unique(), ttl);
        // The memory store answers at once.
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(&mut future).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => panic!("the memory store answers at once"),
        }
    };
    for i in 0..256 {
        assert!(claim(&format!("github:running-{i}")).unwrap());
    }
    // One refusal first: what a refusal allocates for itself is freed when it returns.
    assert!(claim("github:refused").is_err());
    let before = resident();
    for i in 0..20_000 {
        assert!(claim(&format!("github:refused-{i}")).is_err(), "full of claims");
    }
    let grown = resident().saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the store grew by {grown} bytes over 20,000 refused deliveries"
    );
    // Still full of the same claims, and still refusing.
    assert_eq!(store.len(), 256);
    assert!(!claim("github:running-0").unwrap());
}
