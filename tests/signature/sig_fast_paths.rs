//! What the signature layer's faster paths must keep: how `Content-Length` and
//! `Transfer-Encoding` are read (by a pass over small header maps, by lookups over large ones),
//! which delivery ids are refused, ids read back as sent, and replay answers from a store that
//! answers at once or later.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, MemoryReplayStore, ReplayFuture, ReplayStore, SignatureLayer, VerifiedWebhook,
};

const SECRET: &str = "It's a Secret to Everybody";
const BODY: &[u8] = b"Hello, World!";
const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Sends `req` through `layer` to a handler answering 200 with the delivery id it saw.
async fn send(layer: &SignatureLayer, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |req: Request<Full<Bytes>>| async move {
            let id = req
                .extensions()
                .get::<VerifiedWebhook>()
                .and_then(|v| v.delivery_id().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id))))
        },
    );
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A signed GitHub delivery with `headers` added first and `filler` unrelated headers after.
fn delivery(headers: &[(&str, &str)], filler: usize) -> Request<Full<Bytes>> {
    let mut req = Request::post("/github");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req = req.header("x-hub-signature-256", SIG);
    for i in 0..filler {
        req = req.header(format!("x-filler-{i}"), "1");
    }
    req.body(Full::new(Bytes::from_static(BODY))).unwrap()
}

/// Both ways of reading the framing headers agree: below and above the size where the map is
/// scanned rather than looked up.
#[tokio::test]
async fn content_length_and_transfer_encoding_are_read_the_same_in_small_and_large_maps() {
    let layer = SignatureLayer::github(SECRET)
        .unwrap()
        .without_replay_store()
        .max_body_size(64);
    for filler in [0, 40] {
        let cases: [(&[(&str, &str)], StatusCode); 7] = [
            (&[("content-length", "13")], StatusCode::OK),
            (&[("content-length", "12")], StatusCode::BAD_REQUEST),
            (&[("content-length", "65")], StatusCode::PAYLOAD_TOO_LARGE),
            // The first value counts: a second one does not rescue or spoil it.
            (
                &[("content-length", "12"), ("content-length", "13")],
                StatusCode::BAD_REQUEST,
            ),
            (
                &[("content-length", "13"), ("content-length", "12")],
                StatusCode::OK,
            ),
            // With `Transfer-Encoding`, `Content-Length` does not frame the body (but still
            // caps it).
            (
                &[("content-length", "12"), ("transfer-encoding", "chunked")],
                StatusCode::OK,
            ),
            (
                &[("transfer-encoding", "chunked"), ("content-length", "65")],
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (headers, expected) in cases {
            let (status, _) = send(&layer, delivery(headers, filler)).await;
            assert_eq!(status, expected, "{headers:?} with {filler} other headers");
        }
    }
    // A malformed length is no length: nothing to check the body against.
    let (status, _) = send(&layer, delivery(&[("content-length", "+x")], 0)).await;
    assert_eq!(status, StatusCode::OK);
}

/// Delivery ids of visible ASCII get through, read back as sent (short ones kept inline, long
/// ones not); any other byte, anywhere in the id, is refused.
#[tokio::test]
async fn delivery_ids_are_checked_at_every_byte_and_read_back_as_sent() {
    let layer = SignatureLayer::github(SECRET).unwrap();
    let long = format!("{}~", "!".repeat(200));
    for (n, id) in [
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "!",
        "~",
        &"a".repeat(48),
        &"b".repeat(49),
        &long,
    ]
    .into_iter()
    .enumerate()
    {
        let req = delivery(&[("x-github-delivery", id)], n % 2 * 30);
        assert_eq!(send(&layer, req).await, (StatusCode::OK, id.to_owned()));
    }
    let ok = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    for bad in [" ", "\t", "\u{e9}"] {
        for at in [0, 17, ok.len()] {
            let id = format!("{}{bad}{}", &ok[..at], &ok[at..]);
            let value = http::HeaderValue::from_bytes(id.as_bytes()).unwrap();
            let mut req = delivery(&[], 0);
            req.headers_mut().insert("x-github-delivery", value);
            let (status, _) = send(&layer, req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}");
        }
    }
    // Without a store the id is still checked, and still handed on.
    let plain = layer.without_replay_store();
    let req = delivery(&[("x-github-delivery", "has space")], 0);
    assert_eq!(send(&plain, req).await.0, StatusCode::BAD_REQUEST);
    let req = delivery(&[("x-github-delivery", ok)], 0);
    assert_eq!(send(&plain, req).await, (StatusCode::OK, ok.to_owned()));
    let req = delivery(&[("x-github-delivery", ok)], 0);
    assert_eq!(
        send(&plain, req).await.0,
        StatusCode::OK,
        "no store: no replay"
    );
}

/// A memory store behind futures that are pending once before they answer, or that fail.
#[derive(Default)]
struct Later {
    store: MemoryReplayStore,
    fail: bool,
    polls: Arc<AtomicUsize>,
}

impl Later {
    fn later(&self, answer: ReplayFuture) -> ReplayFuture {
        let (polls, fail) = (Arc::clone(&self.polls), self.fail);
        ReplayFuture::new(async move {
            polls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if fail {
                return Err("store unreachable".into());
            }
            answer.await
        })
    }
}

impl ReplayStore for Later {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.later(self.store.insert(key, ttl))
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.store.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.later(self.store.claim(key, token, ttl))
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

/// A new id, a replay and a store failure get the same answers whether the store answers at
/// once (the memory store) or later.
#[tokio::test]
async fn replay_answers_do_not_depend_on_when_the_store_answers() {
    let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let at_once = SignatureLayer::github(SECRET).unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let later = SignatureLayer::github(SECRET).unwrap().replay_store(Later {
        polls: Arc::clone(&polls),
        ..Later::default()
    });
    for layer in [&at_once, &later] {
        let first = send(layer, delivery(&[("x-github-delivery", id)], 0)).await;
        assert_eq!(first, (StatusCode::OK, id.to_owned()));
        let again = send(layer, delivery(&[("x-github-delivery", id)], 0)).await;
        assert_eq!(again.0, StatusCode::CONFLICT);
    }
    assert_eq!(polls.load(Ordering::SeqCst), 2, "one claim per delivery");
    let failing = SignatureLayer::github(SECRET).unwrap().replay_store(Later {
        fail: true,
        ..Later::default()
    });
    let res = send(&failing, delivery(&[("x-github-delivery", id)], 0)).await;
    assert_eq!(res.0, StatusCode::SERVICE_UNAVAILABLE);
}
