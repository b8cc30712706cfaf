//! Replay stores: the in-memory store under a settable clock, the layer's use of claims, and
//! the Redis store against a real `redis-server` started here on 127.0.0.1.

use crate::logs;

use crate::redis_server;

use crate::github_hook;
use github_hook::{GH_SECRET, github, send};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, Clock, MemoryReplayStore, RecordDelivery, ReplayFuture, ReplayStore, SignatureLayer,
};

fn clocked(capacity: usize) -> (MemoryReplayStore, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let n = now.clone();
    let store = MemoryReplayStore::with_capacity(capacity).clock(Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
    }));
    (store, now)
}

/// A memory store whose `complete` and `release` fail while `down` is set (Redis went away
/// while the handler ran).
struct SettleFails {
    store: MemoryReplayStore,
    down: AtomicBool,
}

impl SettleFails {
    fn failing(&self) -> Option<ReplayFuture> {
        self.down
            .load(Ordering::SeqCst)
            .then(|| ReplayFuture::ready(Err("connection refused".into())))
    }
}

impl ReplayStore for SettleFails {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.store.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.store.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.store.claim(key, token, ttl)
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.failing()
            .unwrap_or_else(|| self.store.complete(key, token, ttl))
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        self.failing()
            .unwrap_or_else(|| self.store.release(key, token))
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.store.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

/// A layer recording after success, with a 60 s `claim_ttl`, over a store whose settling fails
/// while `down` is set (it is at first), and the store's clock in milliseconds.
fn settle_fails_layer() -> (SignatureLayer, Arc<SettleFails>, Arc<AtomicU64>) {
    let (memory, now) = clocked(100);
    let store = Arc::new(SettleFails {
        store: memory,
        down: AtomicBool::new(true),
    });
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .record_delivery(RecordDelivery::AfterSuccess)
        .claim_ttl(Duration::from_secs(60));
    (layer, store, now)
}

/// The first line logged at `ERROR`.
fn first_error(logs: &Logs) -> String {
    let text = logs.text();
    text.lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error logged: {text}"))
        .to_owned()
}

/// A handled delivery whose id could not be marked handled keeps its claim until `claim_ttl`:
/// copies are refused meanwhile, and one that comes after is processed again. The error says
/// so, and names the delivery.
#[tokio::test]
async fn a_failed_completion_is_logged_with_the_delivery_and_what_follows() {
    let (logs, _guard) = Logs::capture();
    let (layer, store, now) = settle_fails_layer();
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-complete")).await,
        200
    );
    let line = first_error(&logs);
    assert!(line.contains("github:d-complete"), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    assert!(line.contains("claim_ttl"), "{line}");
    assert!(line.contains("processed again"), "{line}");
    // As logged: refused while the claim lasts, processed again after it.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-complete")).await,
        409
    );
    now.fetch_add(60_001, Ordering::SeqCst);
    assert_eq!(
        send(&layer, StatusCode::OK, github("d-complete")).await,
        200
    );
}

/// A failed delivery whose claim could not be released: the redelivery is refused until
/// `claim_ttl`, then processed. The error names the delivery and says until when.
#[tokio::test]
async fn a_failed_release_is_logged_with_the_delivery_and_what_follows() {
    let (logs, _guard) = Logs::capture();
    let (layer, store, now) = settle_fails_layer();
    assert_eq!(
        send(&layer, StatusCode::BAD_GATEWAY, github("d-release")).await,
        502
    );
    let line = first_error(&logs);
    assert!(line.contains("github:d-release"), "{line}");
    assert!(line.contains("claim_ttl"), "{line}");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(send(&layer, StatusCode::OK, github("d-release")).await, 409);
    now.fetch_add(60_001, Ordering::SeqCst);
    assert_eq!(send(&layer, StatusCode::OK, github("d-release")).await, 200);
}

/// A full `MemoryReplayStore` under a settable clock: expired ids are counted by `len()` until
/// something is recorded, then purged first; the oldest handled id is evicted next; claims in
/// progress never are, and a store of nothing else refuses new ids (503 with `Retry-After`
/// through the layer) until one is settled or expires.
#[tokio::test]
async fn a_full_memory_store_purges_evicts_and_refuses_as_documented() {
    let (store, now) = clocked(2);
    let ttl = Duration::from_secs(10);
    assert!(store.insert("github:a", ttl).await.unwrap());
    assert!(store.insert("github:b", ttl).await.unwrap());
    now.fetch_add(10_000, Ordering::SeqCst);
    assert_eq!(store.len(), 2, "expired ids are held until purged");
    assert!(
        !store.completed("github:a").await.unwrap(),
        "but not handled"
    );
    assert!(store.insert("github:c", ttl).await.unwrap());
    assert_eq!(store.len(), 1, "both expired ids purged");
    assert!(store.insert("github:d", ttl).await.unwrap());
    assert!(store.insert("github:e", ttl).await.unwrap());
    assert_eq!(store.len(), 2);
    assert!(
        store.insert("github:c", ttl).await.unwrap(),
        "the oldest was evicted"
    );

    // Through the layer: two handlers hold claims; a third delivery is refused with 503.
    let (store, now) = clocked(2);
    let store = Arc::new(store);
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .claim_ttl(Duration::from_secs(60));
    let (a, b) = (ClaimToken::unique(), ClaimToken::unique());
    assert!(
        store
            .claim("github:x", a, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim("github:y", b, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            });
    let res = svc.oneshot(github("z")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(store.len(), 2, "nothing held for the refused delivery");
    // One claim is settled: the delivery goes through (and the handled id can be evicted).
    assert!(store.complete("github:x", a, ttl).await.unwrap());
    assert_eq!(send(&layer, StatusCode::OK, github("z")).await, 200);
    // The other claim expires: the next id goes through too.
    now.fetch_add(60_001, Ordering::SeqCst);
    assert_eq!(send(&layer, StatusCode::OK, github("w")).await, 200);
    assert!(store.len() <= 2);
}

use tower_webhook::signature::RedisReplayStore;

/// Inserts fresh ids until one is recorded, for at most `within`.
async fn recovers(store: &RedisReplayStore, within: Duration) -> Result<Duration, String> {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store
            .insert(&format!("github:back-{attempt}"), Duration::from_secs(60))
            .await
        {
            Ok(true) => return Ok(started.elapsed()),
            other => {
                if started.elapsed() > within {
                    return Err(format!("still {other:?} after {:?}", started.elapsed()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis stopped for longer than one round of reconnection attempts (six, at most a second
/// apart), then started again on its port: the store made by `connect` takes deliveries again
/// within seconds, and so does one made by `new` with a manager whose backoff is as short.
#[tokio::test]
async fn the_store_recovers_after_redis_restarts() {
    let Some(mut redis) = redis_server::start().await else {
        return;
    };
    let url = redis.url();
    let timeout = Duration::from_millis(300);
    let connected = RedisReplayStore::connect(&url)
        .await
        .unwrap()
        .timeout(timeout);
    let client = redis::Client::open(url.as_str()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new().set_max_delay(Duration::from_secs(1));
    let manager = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let given = RedisReplayStore::new(manager).timeout(timeout);
    let ttl = Duration::from_secs(60);
    assert!(connected.insert("github:before", ttl).await.unwrap());
    assert!(given.insert("github:before-2", ttl).await.unwrap());
    redis.kill();
    let down = std::time::Instant::now();
    let mut i = 0;
    while down.elapsed() < Duration::from_secs(8) {
        i += 1;
        let id = format!("github:down-{i}");
        assert!(connected.insert(&id, ttl).await.is_err(), "fails closed");
        assert!(given.insert(&id, ttl).await.is_err(), "fails closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart().await;
    recovers(&connected, Duration::from_secs(5)).await.unwrap();
    recovers(&given, Duration::from_secs(5)).await.unwrap();
    // What was recorded during the outage was not: those ids are new.
    assert!(connected.insert("github:down-1", ttl).await.unwrap());
}

/// An Azure DevOps delivery refused by `verify()` outside the layer: the error does not know its
/// scheme, and says `Signature`, as the docs now say (they claimed `Basic`); the documented
/// way out sends the layer's own challenge.
#[tokio::test]
async fn a_verify_error_rendered_outside_the_layer_names_signature_unless_told() {
    use tower_webhook::BoxError;
    use tower_webhook::error::{Problem, WebhookErrorLayer};

    let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
    for own_challenge in [false, true] {
        let verifier = layer.clone();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(move |req: Request<Full<Bytes>>| {
                let verifier = verifier.clone();
                async move {
                    let body = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    match verifier.verify(&http::HeaderMap::new(), &body) {
                        Ok(_) => Ok(Response::new(Full::<Bytes>::default())),
                        Err(err) if own_challenge => Err(BoxError::from(
                            Problem::from_error(&err)
                                .with_challenge(r#"Basic realm="azure-devops""#),
                        )),
                        Err(err) => Err(BoxError::from(err)),
                    }
                }
            });
        let req = Request::post("/azure-devops")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let challenge = res.headers()["www-authenticate"].to_str().unwrap();
        if own_challenge {
            assert_eq!(challenge, r#"Basic realm="azure-devops""#);
        } else {
            assert_eq!(challenge, "Signature");
        }
    }
    // The layer itself knows its scheme.
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let res = svc
        .oneshot(
            Request::post("/azure-devops")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Basic realm="azure-devops""#
    );
}

/// Commands Redis carries out after the layer gave up on them (it was stopped, then went on):
/// a late `SET` of an id recorded at verification is deleted again, so the provider's retry of
/// the refused delivery is processed; a late completion still records the handled id.
#[tokio::test]
async fn late_commands_leave_the_right_state() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value = |conn: &mut redis::aio::MultiplexedConnection, key: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(format!("tower-webhook:replay:{key}"))
                .query_async::<Option<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    let store = RedisReplayStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(300));
    let at_verification = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .record_delivery(RecordDelivery::AfterVerification);
    redis.signal("-STOP");
    let refused = send(&at_verification, StatusCode::OK, github("late-set")).await;
    redis.signal("-CONT");
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    let mut gone = false;
    for _ in 0..300 {
        if value(&mut conn, "github:late-set").await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the late SET was not undone");
    // Let a reopened connection settle in before the retry.
    recovers(&store, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        send(&at_verification, StatusCode::OK, github("late-set")).await,
        200
    );

    // A completion that times out while Redis is stopped, carried out once it goes on.
    let after_success = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .record_delivery(RecordDelivery::AfterSuccess);
    let pid = redis.child.id();
    let svc = ServiceBuilder::new()
        .layer(after_success.clone())
        .service_fn(move |_: Request<Full<Bytes>>| async move {
            // The handler runs with the claim held; Redis stops before it answers.
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let handled = svc.oneshot(github("late-complete")).await.unwrap().status();
    redis.signal("-CONT");
    assert_eq!(handled, StatusCode::OK, "handled, whatever the store says");
    let mut done = false;
    for _ in 0..300 {
        if value(&mut conn, "github:late-complete").await.as_deref() == Some("1") {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done, "the late completion was not recorded");
    recovers(&store, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        send(&after_success, StatusCode::OK, github("late-complete")).await,
        409
    );
}

/// A store made with `RedisReplayStore::new` over a connection manager whose own response
/// timeout (200 ms here; redis' default is 500 ms) is shorter than the store's: the manager gives
/// up on the `SET` of an id recorded at verification while Redis is stopped, and Redis carries
/// it out once it goes on. The id was recorded for its whole TTL, and the provider's retry of
/// the refused delivery was refused as a replay; the `SET` is deleted again now, and only its
/// own value: another delivery's record of the same id stays.
#[tokio::test]
async fn a_set_the_connection_manager_gave_up_on_is_undone() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(200)));
    let manager = redis::aio::ConnectionManager::new_with_config(client.clone(), config)
        .await
        .unwrap();
    let store = RedisReplayStore::new(manager);
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .record_delivery(RecordDelivery::AfterVerification);

    redis.signal("-STOP");
    let refused = send(&layer, StatusCode::OK, github("managed-late-set")).await;
    redis.signal("-CONT");
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    let gone = redis
        .gone_within(
            "tower-webhook:replay:github:managed-late-set",
            Duration::from_secs(5),
        )
        .await;
    assert!(gone, "the SET the manager gave up on was not undone");
    assert_eq!(
        send(&layer, StatusCode::OK, github("managed-late-set")).await,
        StatusCode::OK
    );
    assert_eq!(
        send(&layer, StatusCode::OK, github("managed-late-set")).await,
        StatusCode::CONFLICT,
        "the retry that was handled is recorded"
    );

    // Another replica's record of an id: the `SET` given up on finds it there, and its undo
    // leaves it.
    let key = "tower-webhook:replay:github:recorded-elsewhere";
    redis::cmd("SET")
        .arg(key)
        .arg("1:another-replica")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis.signal("-STOP");
    let given_up = store
        .insert("github:recorded-elsewhere", Duration::from_secs(60))
        .await;
    redis.signal("-CONT");
    assert!(given_up.is_err(), "{given_up:?}");
    // The undo is asked at once, and answered once Redis goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("1:another-replica"));
}

/// The store gives up first (its timeout, 200 ms, shorter than the manager's, 500 ms), then the
/// manager gives up too, while Redis is stopped; Redis carries the `SET` out once it goes on.
/// The late answer is then the manager's timeout, not the `SET`'s: the key was left, and the
/// provider's retry refused as a replay for the whole TTL. It is undone now, as when the
/// manager gives up first.
#[tokio::test]
async fn a_set_given_up_by_the_store_then_by_the_manager_is_undone() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(500)));
    let manager = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let store = RedisReplayStore::new(manager).timeout(Duration::from_millis(200));
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store.clone())
        .record_delivery(RecordDelivery::AfterVerification);

    redis.signal("-STOP");
    let refused = send(&layer, StatusCode::OK, github("twice-given-up")).await;
    // Past the manager's own timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.signal("-CONT");
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    let gone = redis
        .gone_within(
            "tower-webhook:replay:github:twice-given-up",
            Duration::from_secs(5),
        )
        .await;
    assert!(gone, "the SET given up on twice was not undone");
    recovers(&store, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        send(&layer, StatusCode::OK, github("twice-given-up")).await,
        StatusCode::OK
    );
}
