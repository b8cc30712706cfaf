//! `MemoryReplayStore` with entries of several lifetimes, and what the layer makes of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_webhook::signature::{ClaimToken, Clock, MemoryReplayStore, ReplayStore, SignatureLayer};

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// A clock the test moves by hand, in seconds.
fn manual_clock() -> (Arc<AtomicU64>, Clock) {
    let secs = Arc::new(AtomicU64::new(1_700_000_000));
    let source = secs.clone();
    let clock =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(source.load(Ordering::SeqCst)));
    (secs, clock)
}

const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

/// A full store makes room from an expired entry even when it was recorded after a live one
/// with a longer lifetime: the live id is still known, and its replay still refused.
#[tokio::test]
async fn a_full_store_purges_an_expired_id_queued_behind_a_live_one() {
    let (secs, clock) = manual_clock();
    let store = MemoryReplayStore::with_capacity(2).clock(clock);
    assert!(store.insert("github:long", HOUR).await.unwrap());
    assert!(store.insert("stripe:short", SECOND).await.unwrap());
    secs.fetch_add(2, Ordering::SeqCst); // `short` expired, `long` has an hour to go
    assert!(store.insert("github:next", HOUR).await.unwrap());
    assert_eq!(store.len(), 2);
    assert!(
        !store.insert("github:long", HOUR).await.unwrap(),
        "a live id was evicted while an expired one held a slot"
    );
    assert!(!store.insert("github:next", HOUR).await.unwrap());
    // Expired: new again.
    assert!(store.insert("stripe:short", SECOND).await.unwrap());
}

/// The same through the layer: two routes with different `replay_ttl`s share one store; a
/// GitHub redelivery is refused while its id is live, whatever the other route recorded.
#[tokio::test]
async fn routes_with_different_replay_ttls_sharing_a_full_store_keep_live_ids() {
    let (secs, clock) = manual_clock();
    let store = Arc::new(MemoryReplayStore::with_capacity(2).clock(clock));
    let long = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .replay_ttl(HOUR);
    let short = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .replay_ttl(SECOND);
    let send = |layer: &SignatureLayer, delivery: &str| {
        let svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
        let req = Request::post("/hook")
            .header("x-hub-signature-256", GH_SIG)
            .header("x-github-delivery", delivery)
            .body(Full::new(Bytes::from_static(GH_BODY)))
            .unwrap();
        async move { svc.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(send(&long, "d-long").await, StatusCode::OK);
    assert_eq!(send(&short, "d-short").await, StatusCode::OK);
    secs.fetch_add(2, Ordering::SeqCst);
    assert_eq!(send(&long, "d-next").await, StatusCode::OK);
    assert_eq!(
        send(&long, "d-long").await,
        StatusCode::CONFLICT,
        "a replay of a live delivery was let through"
    );
}

/// Claims and handled ids of different lifetimes: a full store whose only room is an expired
/// claim queued behind live entries uses that room, and never evicts a claim in progress.
#[tokio::test]
async fn an_expired_claim_behind_live_ids_makes_room_before_they_are_evicted() {
    let (secs, clock) = manual_clock();
    let store = MemoryReplayStore::with_capacity(3).clock(clock);
    assert!(store.insert("github:done", HOUR).await.unwrap());
    let running = ClaimToken::unique();
    assert!(store.claim("github:running", running, HOUR).await.unwrap());
    assert!(
        store
            .claim("github:crashed", ClaimToken::unique(), SECOND)
            .await
            .unwrap()
    );
    secs.fetch_add(2, Ordering::SeqCst); // the crashed handler's claim expired
    assert!(store.insert("github:new", HOUR).await.unwrap());
    assert!(!store.insert("github:done", HOUR).await.unwrap());
    assert!(!store.insert("github:running", HOUR).await.unwrap());
    assert!(
        store
            .complete("github:running", running, HOUR)
            .await
            .unwrap()
    );
    assert!(store.completed("github:running").await.unwrap());
}

/// A clock that goes backwards keeps ids for at least their TTL from the latest time seen, and
/// never panics.
#[tokio::test]
async fn a_clock_going_backwards_neither_panics_nor_forgets_live_ids() {
    let (secs, clock) = manual_clock();
    let store = MemoryReplayStore::with_capacity(2).clock(clock);
    assert!(store.insert("a", HOUR).await.unwrap());
    secs.fetch_sub(600, Ordering::SeqCst);
    assert!(store.insert("b", SECOND).await.unwrap());
    assert!(!store.insert("a", HOUR).await.unwrap());
    secs.fetch_add(602, Ordering::SeqCst);
    assert!(store.insert("c", HOUR).await.unwrap());
    assert!(!store.insert("a", HOUR).await.unwrap(), "live id evicted");
}
