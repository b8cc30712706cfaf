//! The signature layer's `MemoryReplayStore` when full: expired ids are forgotten before a live one
//! between sweeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tower_webhook::signature::{Clock, MemoryReplayStore, ReplayStore};

/// A clock that reads `secs` (seconds since the Unix epoch).
fn clock(secs: &Arc<AtomicU64>) -> Clock {
    let secs = Arc::clone(secs);
    Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst))
    })
}

/// A full `MemoryReplayStore` purged the ids that expired behind live ones (a shorter TTL
/// recorded after a longer one) only once per quarter of its queue of new ids: in between, it
/// evicted the oldest live id while expired ones were still held, and a replay of that id, well
/// within its TTL, was taken for a new delivery. Expired ids now always go first.
#[tokio::test]
async fn a_full_memory_store_forgets_expired_ids_before_a_live_one_between_sweeps() {
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let store = MemoryReplayStore::with_capacity(1_000).clock(clock(&now));
    let (long, short) = (Duration::from_secs(3600), Duration::from_secs(1));
    for i in 0..1_000 {
        assert!(
            store
                .insert(&format!("github:long-{i}"), long)
                .await
                .unwrap()
        );
    }
    // Full: a short-lived id takes the oldest's place (nothing has expired yet).
    assert!(store.insert("github:short-0", short).await.unwrap());
    now.fetch_add(2, Ordering::SeqCst);
    // `short-0` expired: it makes room for `x`.
    assert!(store.insert("github:x", long).await.unwrap());
    assert!(!store.insert("github:long-1", long).await.unwrap(), "live");
    // Full of live ids again: another short-lived one evicts the oldest.
    assert!(store.insert("github:short-1", short).await.unwrap());
    now.fetch_add(2, Ordering::SeqCst);
    // `short-1` expired: it, not a live id, makes room for `y`.
    assert!(store.insert("github:y", long).await.unwrap());
    assert_eq!(store.len(), 1_000);
    for i in 2..1_000 {
        assert!(
            !store
                .insert(&format!("github:long-{i}"), long)
                .await
                .unwrap(),
            "long-{i} was evicted while an expired id was held: its replay was taken as new"
        );
    }
    for id in ["github:x", "github:y"] {
        assert!(!store.insert(id, long).await.unwrap(), "{id}");
    }
}
