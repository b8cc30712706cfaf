//! SignatureLayer: deliveries without a delivery id whose timestamp is signed (Zoom, a Slack
//! command, a custom scheme with a timestamp header) are told apart by their MAC, so a copy sent
//! again inside the window is a replay; before, only the window stood in its way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::WebhookErrorLayer;
use tower_webhook::signature::{
    ClaimToken, Clock, CustomScheme, MemoryReplayStore, OnReplay, RecordDelivery, ReplayFuture,
    ReplayStore, SignatureLayer, VerifiedWebhook,
};

/// When the deliveries are signed, and when the layer reads them: 60 s later.
const SIGNED_AT: u64 = 1_700_000_000;
const NOW: u64 = SIGNED_AT + 60;
/// The secret of the custom schemes.
const CUSTOM_SECRET: &str = "custom-secret";

/// A `MemoryReplayStore` that notes the key and TTL of every delivery recorded as handled.
#[derive(Debug, Default)]
struct Noting {
    store: MemoryReplayStore,
    completed: Arc<Mutex<Vec<(String, Duration)>>>,
}

impl ReplayStore for Noting {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.completed.lock().unwrap().push((key.to_owned(), ttl));
        self.store.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.store.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.store.claim(key, token, ttl)
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.completed.lock().unwrap().push((key.to_owned(), ttl));
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

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Sends requests through `layer` (under the error layer) to a handler that counts its calls and
/// keeps the last `VerifiedWebhook`.
struct Hooks {
    layer: SignatureLayer,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<VerifiedWebhook>>>,
}

impl Hooks {
    fn new(layer: SignatureLayer) -> Self {
        Self {
            layer,
            calls: Arc::default(),
            last: Arc::default(),
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> StatusCode {
        let (calls, last) = (Arc::clone(&self.calls), Arc::clone(&self.last));
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .layer(self.layer.clone())
            .service_fn(move |req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                *last.lock().unwrap() = req.extensions().get::<VerifiedWebhook>().cloned();
                async { Ok::<_, BoxError>(Response::new(Full::<Bytes>::default())) }
            });
        svc.oneshot(req).await.unwrap().status()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn post(headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/hook");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

/// A Zoom event, sent again as it was: processed once, the copy refused as a replay (409), also
/// with its signature in upper case. Another event signed in the same second is processed. The
/// MAC is remembered until the timestamp leaves the window (here 241 s more, and a minute to
/// spare for replicas whose clocks lag), not for
/// `replay_ttl` (24 h): a copy is stale after that.
#[tokio::test]
async fn a_zoom_event_sent_again_inside_the_window_is_a_replay() {
    const SECRET: &str = "zoom-secret-token";
    let store = Noting::default();
    let noted = Arc::clone(&store.completed);
    let hooks = Hooks::new(
        SignatureLayer::zoom(SECRET)
            .unwrap()
            .clock(Clock::fixed(UNIX_EPOCH + Duration::from_secs(NOW)))
            .replay_store(store),
    );
    let ts = SIGNED_AT.to_string();
    let event = |body: &str, upper: bool| {
        let mac = hmac_hex(SECRET, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]);
        let mac = if upper { mac.to_uppercase() } else { mac };
        post(
            &[
                ("x-zm-signature", &format!("v0={mac}")),
                ("x-zm-request-timestamp", &ts),
            ],
            body,
        )
    };
    let started = r#"{"event":"meeting.started","payload":{"object":{"id":"1"}}}"#;
    let ended = r#"{"event":"meeting.ended","payload":{"object":{"id":"1"}}}"#;

    assert_eq!(hooks.send(event(started, false)).await, StatusCode::OK);
    let hook = hooks.last.lock().unwrap().clone().unwrap();
    assert_eq!(hook.delivery_id(), None, "Zoom sends no delivery id");
    assert_eq!(
        hooks.send(event(started, false)).await,
        StatusCode::CONFLICT
    );
    assert_eq!(hooks.send(event(started, true)).await, StatusCode::CONFLICT);
    assert_eq!(hooks.calls(), 1);
    assert_eq!(hooks.send(event(ended, false)).await, StatusCode::OK);
    assert_eq!(hooks.calls(), 2);

    let completed = noted.lock().unwrap().clone();
    assert_eq!(completed.len(), 2, "{completed:?}");
    let mac = hmac_hex(SECRET, &[b"v0:", ts.as_bytes(), b":", started.as_bytes()]);
    assert_eq!(completed[0].0, format!("zoom:sig-{}", &mac[..32]));
    for (_, ttl) in &completed {
        // With a minute to spare for replicas whose clocks lag.
        assert_eq!(*ttl, Duration::from_secs(SIGNED_AT + 300 + 1 - NOW + 60));
    }
}

/// A Slack slash command (a form, without an `event_id`) sent again: the copy is a replay. An
/// Events API event keeps its `event_id` as its key.
#[tokio::test]
async fn a_slack_command_sent_again_is_a_replay() {
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    let hooks = Hooks::new(
        SignatureLayer::slack(SECRET)
            .unwrap()
            .clock(Clock::fixed(UNIX_EPOCH + Duration::from_secs(NOW))),
    );
    let ts = SIGNED_AT.to_string();
    let signed = |body: &str, content_type: &str| {
        let mac = hmac_hex(SECRET, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]);
        post(
            &[
                ("content-type", content_type),
                ("x-slack-request-timestamp", &ts),
                ("x-slack-signature", &format!("v0={mac}")),
            ],
            body,
        )
    };
    let form = "application/x-www-form-urlencoded";
    let command = "token=t&team_id=T1&command=%2Fdeploy&text=prod&response_url=x";
    assert_eq!(hooks.send(signed(command, form)).await, StatusCode::OK);
    assert_eq!(
        hooks.send(signed(command, form)).await,
        StatusCode::CONFLICT
    );
    assert_eq!(hooks.calls(), 1);

    let json = "application/json";
    let event = r#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}"#;
    assert_eq!(hooks.send(signed(event, json)).await, StatusCode::OK);
    let hook = hooks.last.lock().unwrap().clone().unwrap();
    assert_eq!(hook.delivery_id(), Some("Ev1"));
    assert_eq!(hooks.send(signed(event, json)).await, StatusCode::CONFLICT);
    assert_eq!(hooks.calls(), 2);
}

/// A custom scheme: with a timestamp header and no delivery id, a copy is a replay; without a
/// timestamp, nothing tells a copy from the same payload sent again on purpose (a "ping"), and
/// both are processed, as before.
#[tokio::test]
async fn a_custom_scheme_is_told_by_its_mac_only_when_it_signs_a_timestamp() {
    const SECRET: &str = "custom-secret";
    let clock = Clock::fixed(UNIX_EPOCH + Duration::from_secs(NOW));
    let timed = Hooks::new(
        SignatureLayer::custom(
            CustomScheme::new("x-signature")
                .prefix("sha256=")
                .timestamp_header("x-timestamp"),
            SECRET,
        )
        .unwrap()
        .clock(clock.clone()),
    );
    let ts = SIGNED_AT.to_string();
    let body = r#"{"ping":true}"#;
    let timed_req = || {
        let mac = hmac_hex(SECRET, &[ts.as_bytes(), b".", body.as_bytes()]);
        post(
            &[
                ("x-timestamp", &ts),
                ("x-signature", &format!("sha256={mac}")),
            ],
            body,
        )
    };
    assert_eq!(timed.send(timed_req()).await, StatusCode::OK);
    assert_eq!(timed.send(timed_req()).await, StatusCode::CONFLICT);
    assert_eq!(timed.calls(), 1);

    let untimed = Hooks::new(
        SignatureLayer::custom(CustomScheme::new("x-signature").prefix("sha256="), SECRET)
            .unwrap()
            .clock(clock),
    );
    let untimed_req = || {
        let mac = hmac_hex(SECRET, &[body.as_bytes()]);
        post(&[("x-signature", &format!("sha256={mac}"))], body)
    };
    assert_eq!(untimed.send(untimed_req()).await, StatusCode::OK);
    assert_eq!(untimed.send(untimed_req()).await, StatusCode::OK);
    assert_eq!(untimed.calls(), 2);
}

/// A custom scheme that signs `<ts>.<body>` (`x-timestamp`) and reads the delivery id from
/// `x-delivery-id`, which the signature does not cover; its clock reads `NOW`.
fn unsigned_id_layer(secret: &str) -> SignatureLayer {
    SignatureLayer::custom(
        CustomScheme::new("x-signature")
            .prefix("sha256=")
            .timestamp_header("x-timestamp")
            .delivery_id_header("x-delivery-id"),
        secret,
    )
    .unwrap()
    .clock(Clock::fixed(UNIX_EPOCH + Duration::from_secs(NOW)))
}

/// A custom scheme that signs a timestamp but not its delivery id header: a copy sent again
/// under another id, or without one, is a replay (its MAC was seen), and so is a redelivery under
/// the same id with a new timestamp (its id was seen), in both recording modes. Before, the id
/// alone was recorded, and a copy under any other id was processed.
#[tokio::test]
async fn a_copy_under_another_id_is_a_replay_when_the_mac_does_not_cover_the_id() {
    for mode in [
        RecordDelivery::AfterSuccess,
        RecordDelivery::AfterVerification,
    ] {
        let hooks = Hooks::new(unsigned_id_layer(CUSTOM_SECRET).record_delivery(mode));
        let delivery = |id: Option<&str>, signed_at: u64, body: &str| {
            let ts = signed_at.to_string();
            let mac = hmac_hex(CUSTOM_SECRET, &[ts.as_bytes(), b".", body.as_bytes()]);
            let sig = format!("sha256={mac}");
            let mut headers = vec![("x-timestamp", ts.as_str()), ("x-signature", &sig)];
            headers.extend(id.map(|id| ("x-delivery-id", id)));
            post(&headers, body)
        };
        let body = r#"{"n":1}"#;
        assert_eq!(
            hooks.send(delivery(Some("d1"), SIGNED_AT, body)).await,
            StatusCode::OK
        );
        let hook = hooks.last.lock().unwrap().clone().unwrap();
        assert_eq!(hook.delivery_id(), Some("d1"), "{mode:?}");
        for id in [Some("d2"), None] {
            assert_eq!(
                hooks.send(delivery(id, SIGNED_AT, body)).await,
                StatusCode::CONFLICT,
                "{mode:?}: the same message under the id {id:?}"
            );
        }
        assert_eq!(
            hooks.send(delivery(Some("d1"), SIGNED_AT + 5, body)).await,
            StatusCode::CONFLICT,
            "{mode:?}: a redelivery of d1 signed again"
        );
        assert_eq!(
            hooks
                .send(delivery(Some("d3"), SIGNED_AT, r#"{"n":3}"#))
                .await,
            StatusCode::OK,
            "{mode:?}: another delivery"
        );
        assert_eq!(hooks.calls(), 2, "{mode:?}");
    }
}

/// A delivery whose handler failed is not remembered, by its id nor by its MAC: the same
/// message sent again is processed, and once handled, a copy of it is a replay.
#[tokio::test]
async fn a_message_whose_handler_failed_can_be_sent_again_as_it_was() {
    failed_then_sent_again(unsigned_id_layer(CUSTOM_SECRET)).await;
}

/// Sends the same message (id `d1`) through `layer` to a handler that fails the first time: a
/// 500, then, sent again at once, a 200; then, under id `d9`, a replay.
async fn failed_then_sent_again(layer: SignatureLayer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(move |_req: Request<Full<Bytes>>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err::<Response<Full<Bytes>>, BoxError>("database unavailable".into());
                }
                Ok(Response::new(Full::<Bytes>::default()))
            }
        });
    let ts = SIGNED_AT.to_string();
    let body = r#"{"n":1}"#;
    let sig = format!(
        "sha256={}",
        hmac_hex(CUSTOM_SECRET, &[ts.as_bytes(), b".", body.as_bytes()])
    );
    let delivery = |id: &str| {
        post(
            &[
                ("x-timestamp", &ts),
                ("x-signature", &sig),
                ("x-delivery-id", id),
            ],
            body,
        )
    };
    for (id, expected) in [
        ("d1", StatusCode::INTERNAL_SERVER_ERROR),
        ("d1", StatusCode::OK),
        ("d9", StatusCode::CONFLICT),
    ] {
        let res = svc.clone().oneshot(delivery(id)).await.unwrap();
        assert_eq!(res.status(), expected, "{id}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A `MemoryReplayStore` whose every operation takes effect only once polled a second time, as
/// a remote store's does: nothing is done before its answer is awaited.
#[derive(Debug, Default)]
struct Lazy(Arc<MemoryReplayStore>);

impl Lazy {
    fn later(
        &self,
        op: impl FnOnce(&MemoryReplayStore) -> ReplayFuture + Send + 'static,
    ) -> ReplayFuture {
        let store = Arc::clone(&self.0);
        ReplayFuture::new(async move {
            tokio::task::yield_now().await;
            op(&store).await
        })
    }
}

impl ReplayStore for Lazy {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.insert(&key, ttl))
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.remove(&key))
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.claim(&key, token, ttl))
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.complete(&key, token, ttl))
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.release(&key, token))
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        let key = key.to_owned();
        self.later(move |s| s.completed(&key))
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

/// The same with a store that acts only when its answer is awaited: the record of the MAC is
/// released before the failed delivery is answered, so the sender's resend, sent at once, is
/// processed. Its release was left to a task of its own, and the resend could be refused as
/// a replay of the delivery that was never handled.
#[tokio::test]
async fn a_failed_message_sent_again_at_once_is_processed_with_a_store_that_answers_later() {
    failed_then_sent_again(unsigned_id_layer(CUSTOM_SECRET).replay_store(Lazy::default())).await;
}

/// With `OnReplay::Acknowledge`, a copy of such a message is acknowledged once the delivery it
/// copies was handled, whatever id it comes under (it was refused, the id it came under being
/// unknown), and refused while that delivery is still in flight, without its id too (it was
/// acknowledged, the MAC counting as handled at once, and lost if the delivery then failed).
#[tokio::test]
async fn a_copy_under_another_id_is_acknowledged_once_the_message_was_handled() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (held, counted) = (Arc::clone(&gate), Arc::clone(&calls));
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(unsigned_id_layer(CUSTOM_SECRET).on_replay(OnReplay::Acknowledge(StatusCode::OK)))
        .service_fn(move |_req: Request<Full<Bytes>>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            let held = Arc::clone(&held);
            async move {
                if first {
                    held.notified().await;
                }
                Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
            }
        });
    let ts = SIGNED_AT.to_string();
    let body = r#"{"n":1}"#;
    let mac = hmac_hex(CUSTOM_SECRET, &[ts.as_bytes(), b".", body.as_bytes()]);
    let sig = format!("sha256={mac}");
    let delivery = |id: Option<&str>| {
        let mut headers = vec![("x-timestamp", ts.as_str()), ("x-signature", sig.as_str())];
        headers.extend(id.map(|id| ("x-delivery-id", id)));
        post(&headers, body)
    };
    let first = tokio::spawn(svc.clone().oneshot(delivery(Some("d1"))));
    let running = async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the first delivery reaches its handler");
    let in_flight = svc.clone().oneshot(delivery(None)).await.unwrap();
    assert_eq!(
        in_flight.status(),
        StatusCode::CONFLICT,
        "the first may still fail"
    );
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    for id in [Some("d2"), None] {
        let copy = svc.clone().oneshot(delivery(id)).await.unwrap();
        assert_eq!(copy.status(), StatusCode::OK, "{id:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Two replicas share a store; the second one's clock lags the first one's by 30 s. A Zoom event
/// handled by the first is remembered past the window as the first reads it: sent again to the
/// second once the first would refuse it as stale, while the second still takes its timestamp,
/// it is a replay. It was remembered exactly until the first one's window ended, and the copy
/// was processed again by the second.
#[tokio::test]
async fn a_copy_sent_to_a_replica_whose_clock_lags_is_still_a_replay() {
    const SECRET: &str = "zoom-secret-token";
    let at = Arc::new(std::sync::atomic::AtomicU64::new(NOW));
    let (ahead, behind) = (Arc::clone(&at), Arc::clone(&at));
    let first =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(ahead.load(Ordering::SeqCst)));
    let second = Clock::from_fn(move || {
        UNIX_EPOCH + Duration::from_secs(behind.load(Ordering::SeqCst) - 30)
    });
    // The store counts time as the first replica does.
    let store = Arc::new(MemoryReplayStore::new().clock(first.clone()));
    let replica = |clock: Clock| {
        Hooks::new(
            SignatureLayer::zoom(SECRET)
                .unwrap()
                .clock(clock)
                .replay_store(Arc::clone(&store)),
        )
    };
    let (one, two) = (replica(first), replica(second));
    let ts = SIGNED_AT.to_string();
    let body = r#"{"event":"meeting.started","payload":{"object":{"id":"2"}}}"#;
    let event = || {
        let mac = hmac_hex(SECRET, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]);
        post(
            &[
                ("x-zm-signature", &format!("v0={mac}")),
                ("x-zm-request-timestamp", &ts),
            ],
            body,
        )
    };
    assert_eq!(one.send(event()).await, StatusCode::OK);
    // Past the window for the first replica (stale there), inside it for the second.
    at.store(SIGNED_AT + 310, Ordering::SeqCst);
    assert_eq!(one.send(event()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(two.send(event()).await, StatusCode::CONFLICT);
    assert_eq!(one.calls() + two.calls(), 1);
}

/// A copy whose headers come inside the window but whose body ends after the MAC's record
/// expired (a client that sends it a byte at a time, slower than any per-frame body timeout
/// notices) is stale when it is verified: refused (401), not handled a second time. The window
/// is read again once the body is in.
#[tokio::test]
async fn a_copy_whose_body_ends_after_the_window_is_stale() {
    const SECRET: &str = "zoom-secret-token";
    let at = Arc::new(std::sync::atomic::AtomicU64::new(NOW));
    let source = Arc::clone(&at);
    let clock =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(source.load(Ordering::SeqCst)));
    let layer = SignatureLayer::zoom(SECRET)
        .unwrap()
        .clock(clock.clone())
        .replay_store(MemoryReplayStore::new().clock(clock));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(move |_req: Request<axum::body::Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(Full::<Bytes>::default())) }
        });
    let ts = SIGNED_AT.to_string();
    let body = r#"{"event":"meeting.started","payload":{"object":{"id":"3"}}}"#;
    let mac = hmac_hex(SECRET, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]);
    let event = |body: axum::body::Body| {
        Request::post("/hook")
            .header("x-zm-signature", format!("v0={mac}"))
            .header("x-zm-request-timestamp", &ts)
            .body(body)
            .unwrap()
    };
    let first = svc.clone().oneshot(event(axum::body::Body::from(body)));
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);

    // The copy's headers come a second before the window closes; its body is asked for, and
    // comes 100 s later, after the MAC's record (kept until the window closed, and a minute
    // more) expired.
    at.store(SIGNED_AT + 299, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(1);
    let (asked, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = futures_util::stream::unfold((rx, Some(asked)), |(mut rx, asked)| async move {
        if let Some(asked) = asked {
            let _ = asked.send(());
        }
        rx.recv().await.map(|chunk| (chunk, (rx, None)))
    });
    let copy = tokio::spawn(
        svc.clone()
            .oneshot(event(axum::body::Body::from_stream(stream))),
    );
    asked_rx.await.expect("the copy's body is read");
    at.store(SIGNED_AT + 400, Ordering::SeqCst);
    tx.send(Ok(Bytes::from_static(body.as_bytes())))
        .await
        .unwrap();
    drop(tx);
    let status = copy.await.unwrap().unwrap().status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
