//! SignatureLayer: claims left behind by a failing replay store, TTLs that remember nothing, ids
//! forgotten while their signed timestamp is still accepted.

use crate::github_hook;
use github_hook::{GH_BODY, GH_SECRET, GH_SIG, github, send};

use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, Clock, MemoryReplayStore, RecordDelivery, ReplayFuture, ReplayStore, SignatureLayer,
};

/// A store whose claim is carried out, but whose answer is lost once (a connection dropped
/// after the command was sent): the layer sees an error, the store holds the claim.
#[derive(Debug, Default)]
struct LostAnswer {
    store: MemoryReplayStore,
    failed_once: AtomicBool,
}

impl ReplayStore for LostAnswer {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.store.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.store.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let claimed = self.store.claim(key, token, ttl);
        if self.failed_once.swap(true, Ordering::SeqCst) {
            return claimed;
        }
        ReplayFuture::new(async move {
            claimed.await?;
            Err("connection reset before the answer arrived".into())
        })
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.store.complete(key, token, ttl)
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        self.store.release(key, token)
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.store.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

/// A claim whose answer was an error is released: the delivery got 503 with `Retry-After`,
/// and the provider's retry of it is processed, not refused as a replay of itself for the
/// whole `claim_ttl`.
#[tokio::test]
async fn a_claim_answered_with_an_error_is_released_for_the_retry() {
    let store = Arc::new(LostAnswer::default());
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone());
    let first = send(&layer, StatusCode::OK, github("72d3162e-lost")).await;
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(store.store.len(), 0, "the claim was released");
    let retry = send(&layer, StatusCode::OK, github("72d3162e-lost")).await;
    assert_eq!(retry, StatusCode::OK);
    // Handled now: a copy is a replay.
    let copy = send(&layer, StatusCode::OK, github("72d3162e-lost")).await;
    assert_eq!(copy, StatusCode::CONFLICT);
}

/// The same when the client goes away while the store answers: the claim is released once the
/// error arrives, without an owner.
#[tokio::test]
async fn a_claim_answered_with_an_error_after_the_client_left_is_released() {
    /// Claims at once in the inner store, answers (an error) when told.
    #[derive(Debug, Default)]
    struct Late {
        store: MemoryReplayStore,
        answer: Arc<tokio::sync::Notify>,
    }
    impl ReplayStore for Late {
        fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
            self.store.insert(key, ttl)
        }
        fn remove(&self, key: &str) -> ReplayFuture {
            self.store.remove(key)
        }
        fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
            let claimed = self.store.claim(key, token, ttl);
            let answer = self.answer.clone();
            ReplayFuture::new(async move {
                claimed.await?;
                answer.notified().await;
                Err("connection reset before the answer arrived".into())
            })
        }
        fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
            self.store.release(key, token)
        }
        fn completed(&self, key: &str) -> ReplayFuture {
            self.store.completed(key)
        }
        fn tracks_claims(&self) -> bool {
            true
        }
    }
    let store = Arc::new(Late::default());
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone());
    let pending = tokio::spawn({
        let layer = layer.clone();
        async move { send(&layer, StatusCode::OK, github("72d3162e-gone")).await }
    });
    // Until the claim is held, the request is still on its way.
    for _ in 0..1_000 {
        if store.store.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.store.len(), 1, "claimed");
    pending.abort();
    let _ = pending.await;
    store.answer.notify_one();
    for _ in 0..1_000 {
        if store.store.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.store.is_empty(), "the claim was released");
}

/// A TTL under a millisecond (the stores' unit) would remember nothing: the layer refuses it
/// when it is set, as it refuses a non-2xx acknowledgement.
#[test]
fn ttls_that_remember_nothing_are_refused() {
    let layer = || SignatureLayer::github(GH_SECRET).unwrap();
    for ttl in [Duration::ZERO, Duration::from_micros(999)] {
        let replay = catch_unwind(AssertUnwindSafe(|| layer().replay_ttl(ttl)));
        let message = replay.err().map(|p| panic_message(&p));
        assert!(
            message.as_deref().is_some_and(|m| m.contains("replay_ttl")),
            "{ttl:?}: {message:?}"
        );
        let claim = catch_unwind(AssertUnwindSafe(|| layer().claim_ttl(ttl)));
        let message = claim.err().map(|p| panic_message(&p));
        assert!(
            message.as_deref().is_some_and(|m| m.contains("claim_ttl")),
            "{ttl:?}: {message:?}"
        );
    }
    // A millisecond is the shortest accepted.
    let _ = layer()
        .replay_ttl(Duration::from_millis(1))
        .claim_ttl(Duration::from_millis(1));
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

const STRIPE_SECRET: &str = "whsec_test_ttls";
const TS: u64 = 1_700_000_000;

fn stripe(body: &'static str) -> Request<Full<Bytes>> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).unwrap();
    mac.update(format!("{TS}.{body}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    Request::post("/stripe")
        .header("stripe-signature", format!("t={TS},v1={sig}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A clock a test moves by hand, in seconds since the epoch.
fn settable(start: u64) -> (Arc<AtomicU64>, Clock) {
    let secs = Arc::new(AtomicU64::new(start));
    let source = secs.clone();
    let clock =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(source.load(Ordering::SeqCst)));
    (secs, clock)
}

/// A `replay_ttl` shorter than the timestamp window: a captured delivery resent after the TTL,
/// its signed timestamp still inside the window, is a replay. Ids are remembered until their
/// signed timestamp has left the window, then the timestamp refuses the copy.
#[tokio::test]
async fn an_id_is_remembered_while_its_signed_timestamp_is_accepted() {
    for record in [
        RecordDelivery::AfterSuccess,
        RecordDelivery::AfterVerification,
    ] {
        // The delivery arrives 200 s before its timestamp (a sender's clock ahead of ours):
        // accepted until TS + 300 s, 500 s later.
        let (now, clock) = settable(TS - 200);
        let store = MemoryReplayStore::new().clock(clock.clone());
        let layer = SignatureLayer::stripe(STRIPE_SECRET)
            .unwrap()
            .clock(clock)
            .replay_store(store)
            .record_delivery(record)
            .replay_ttl(Duration::from_secs(60));
        let body = r#"{"id":"evt_ttls","type":"invoice.paid"}"#;
        assert_eq!(
            send(&layer, StatusCode::OK, stripe(body)).await,
            StatusCode::OK
        );
        for at in [TS - 100, TS, TS + 300] {
            now.store(at, Ordering::SeqCst);
            assert_eq!(
                send(&layer, StatusCode::OK, stripe(body)).await,
                StatusCode::CONFLICT,
                "{record:?}: resent at {at}, past the 60 s replay_ttl"
            );
        }
        now.store(TS + 301, Ordering::SeqCst);
        assert_eq!(
            send(&layer, StatusCode::OK, stripe(body)).await,
            StatusCode::UNAUTHORIZED,
            "{record:?}: out of the window"
        );
    }
}

/// Without a signed timestamp (GitHub), `replay_ttl` is the whole story: the id is forgotten
/// after it.
#[tokio::test]
async fn without_a_signed_timestamp_the_replay_ttl_is_kept() {
    let (now, clock) = settable(TS);
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(MemoryReplayStore::new().clock(clock))
        .replay_ttl(Duration::from_secs(60));
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-1")).await,
        StatusCode::OK
    );
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-1")).await,
        StatusCode::CONFLICT
    );
    now.fetch_add(61, Ordering::SeqCst);
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-1")).await,
        StatusCode::OK
    );
}

/// An outer length limit whose error reaches the layer inside an `io::Error` (a body read
/// through `AsyncRead`, as a decompression layer does, or mapped with `io::Error::other`) is
/// still a body over the limit, 413, not a malformed delivery: `io::Error::source` skips the
/// error it wraps, so the layer looks inside.
#[tokio::test]
async fn a_length_limit_inside_an_io_error_is_413() {
    use http_body_util::{BodyExt, Limited};
    use tower_webhook::error::types;

    let limit = Limited::new(Full::new(Bytes::from_static(GH_BODY)), 4)
        .collect()
        .await
        .unwrap_err();
    assert!(limit.is::<http_body_util::LengthLimitError>());
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(&GH_BODY[..4])),
        Err(std::io::Error::other(limit)),
    ];
    let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
    let req = Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .body(body)
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service_fn(|_: Request<axum::body::Body>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], types::PAYLOAD_TOO_LARGE);
}
