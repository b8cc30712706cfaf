//! Edge cases of `SignatureLayer` and its replay stores found in review, through the public API.

use std::time::Duration;

use tower_webhook::signature::{MemoryReplayStore, ReplayStore};

/// A capacity meant as "no practical bound" is taken as such, without an arithmetic overflow.
#[tokio::test]
async fn a_memory_store_of_the_largest_capacity_records_ids() {
    for capacity in [usize::MAX, usize::MAX / 2 + 1] {
        let store = MemoryReplayStore::with_capacity(capacity);
        let ttl = Duration::from_secs(60);
        assert!(store.insert("github:1", ttl).await.unwrap());
        assert!(!store.insert("github:1", ttl).await.unwrap());
        assert!(store.insert("github:2", ttl).await.unwrap());
        assert_eq!(store.len(), 2);
    }
}
