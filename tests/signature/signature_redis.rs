//! `RedisReplayStore` against a real `redis-server` started here on 127.0.0.1, a random port.
//!
//! Needs `redis-server` on PATH (`.ci/signature.sh` installs it). Without it the tests skip with
//! a message, unless `TOWER_WEBHOOK_REQUIRE_INTEROP=1`, where they fail.

use crate::redis_server;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, OnReplay, RecordDelivery, RedisReplayStore, ReplayStore, SignatureLayer,
};

const SECRET: &str = "It's a Secret to Everybody";
const BODY: &[u8] = b"Hello, World!";
const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

struct Replica {
    layer: SignatureLayer,
    calls: Arc<AtomicUsize>,
}

impl Replica {
    async fn new(
        redis: &redis_server::Redis,
        configure: impl FnOnce(SignatureLayer) -> SignatureLayer,
    ) -> Self {
        // Each replica has its own connection to the shared server.
        let store = RedisReplayStore::connect(&redis.url()).await.unwrap();
        Self {
            layer: configure(SignatureLayer::github(SECRET).unwrap().replay_store(store)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn deliver(&self, id: &str, answer: StatusCode) -> StatusCode {
        let calls = self.calls.clone();
        let svc = ServiceBuilder::new().layer(self.layer.clone()).service_fn(
            move |_req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut res = Response::new(Full::<Bytes>::default());
                    *res.status_mut() = answer;
                    Ok::<_, Infallible>(res)
                }
            },
        );
        let req = Request::post("/hook")
            .header("x-hub-signature-256", SIG)
            .header("x-github-delivery", id)
            .body(Full::new(Bytes::from_static(BODY)))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
            .await
            .expect("no hang")
            .unwrap()
            .status()
    }
}

#[tokio::test]
async fn store_semantics_against_real_redis() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let store = RedisReplayStore::connect(&redis.url())
        .await
        .unwrap()
        .prefix("test:");
    assert!(
        store
            .insert("github:a", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert("github:a", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(store.remove("github:a").await.unwrap());
    assert!(!store.remove("github:a").await.unwrap());
    assert!(
        store
            .insert("github:a", Duration::from_secs(60))
            .await
            .unwrap()
    );
    // Expiry is Redis' own.
    assert!(
        store
            .insert("github:short", Duration::from_millis(150))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .insert("github:short", Duration::from_secs(60))
            .await
            .unwrap()
    );
    // Claims: in progress until completed; gone once released.
    let token = ClaimToken::unique();
    assert!(
        store
            .claim("github:c", token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim("github:c", ClaimToken::unique(), Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(!store.completed("github:c").await.unwrap());
    assert!(
        store
            .complete("github:c", token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(store.completed("github:c").await.unwrap());
    assert!(
        !store
            .insert("github:c", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store.release("github:c", token).await.unwrap(),
        "handled, not claimed"
    );
    assert!(store.remove("github:c").await.unwrap());
    assert!(!store.completed("github:c").await.unwrap());
    let released = ClaimToken::unique();
    assert!(
        store
            .claim("github:r", released, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(store.release("github:r", released).await.unwrap());
    assert!(!store.completed("github:r").await.unwrap());
    assert!(
        store.completed("github:a").await.unwrap(),
        "inserted ids are handled"
    );
    // A TTL beyond Redis' range is capped, not refused.
    assert!(store.insert("github:forever", Duration::MAX).await.unwrap());
    assert!(!store.insert("github:forever", Duration::MAX).await.unwrap());
    // Concurrent inserts of one key: exactly one wins.
    let results = futures_join(&store, "github:race").await;
    assert_eq!(results.iter().filter(|new| **new).count(), 1, "{results:?}");
}

async fn futures_join(store: &RedisReplayStore, key: &str) -> Vec<bool> {
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        let k = key.to_owned();
        handles.push(tokio::spawn(async move {
            s.insert(&k, Duration::from_secs(60)).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn two_replicas_share_the_store() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let a = Replica::new(&redis, |l| l).await;
    let b = Replica::new(&redis, |l| l).await;
    assert_eq!(
        a.deliver("delivery-1", StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(
        b.deliver("delivery-1", StatusCode::OK).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        a.deliver("delivery-1", StatusCode::OK).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        b.deliver("delivery-2", StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.calls.load(Ordering::SeqCst), 1);

    // A replica that acknowledges duplicates answers 2xx without processing.
    let c = Replica::new(&redis, |l| {
        l.on_replay(OnReplay::Acknowledge(StatusCode::OK))
    })
    .await;
    assert_eq!(
        c.deliver("delivery-1", StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(c.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn failed_delivery_is_released_for_the_other_replica() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let a = Replica::new(&redis, |l| l.record_delivery(RecordDelivery::AfterSuccess)).await;
    let b = Replica::new(&redis, |l| l.record_delivery(RecordDelivery::AfterSuccess)).await;
    assert_eq!(
        a.deliver("retry-1", StatusCode::SERVICE_UNAVAILABLE).await,
        503
    );
    assert_eq!(b.deliver("retry-1", StatusCode::OK).await, 200);
    assert_eq!(a.deliver("retry-1", StatusCode::OK).await, 409);

    // Acknowledging replicas: a copy is acknowledged once the delivery was handled on the
    // other replica, and refused while it is only claimed.
    let c = Replica::new(&redis, |l| {
        l.record_delivery(RecordDelivery::AfterSuccess)
            .on_replay(OnReplay::Acknowledge(StatusCode::OK))
    })
    .await;
    assert_eq!(c.deliver("retry-1", StatusCode::OK).await, 200);
    assert_eq!(
        c.calls.load(Ordering::SeqCst),
        0,
        "acknowledged, not processed"
    );
    let store = RedisReplayStore::connect(&redis.url()).await.unwrap();
    let token = ClaimToken::unique();
    assert!(
        store
            .claim("github:in-flight", token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(c.deliver("in-flight", StatusCode::OK).await, 409);
    assert!(
        store
            .complete("github:in-flight", token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(c.deliver("in-flight", StatusCode::OK).await, 200);
    assert_eq!(c.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redis_going_away_fails_closed() {
    let Some(mut redis) = redis_server::start().await else {
        return;
    };
    let a = Replica::new(&redis, |l| l).await;
    assert_eq!(a.deliver("before", StatusCode::OK).await, 200);
    redis.kill();
    // The first delivery finds the connection closed; the next ones find the connection
    // manager waiting between reconnection attempts, and are refused all the same.
    for id in ["after-1", "after-2"] {
        assert_eq!(
            a.deliver(id, StatusCode::OK).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "{id}"
        );
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);

    // Redis comes back on its port: deliveries go through again within seconds, not after the
    // connection manager's backoff has grown to a minute.
    redis.restart().await;
    let started = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if a.deliver(&format!("back-{attempt}"), StatusCode::OK).await == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still refused {:?} after Redis came back",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn hung_redis_fails_closed_instead_of_hanging() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let a = Replica::new(&redis, |l| l).await;
    assert_eq!(a.deliver("before", StatusCode::OK).await, 200);
    // The server still holds the connection but answers nothing.
    redis.signal("-STOP");
    let status = a.deliver("while-hung", StatusCode::OK).await;
    redis.signal("-CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);

    // Redis then carries out the claim it had received: the id is released again, so the
    // provider's retry of the refused delivery is processed, not refused as a replay.
    let key = "tower-webhook:replay:github:while-hung";
    // The bound only ends a failing test: the retry below says what went wrong.
    let _ = redis.gone_within(key, Duration::from_secs(2)).await;
    assert_eq!(a.deliver("while-hung", StatusCode::OK).await, 200);
    assert_eq!(a.calls.load(Ordering::SeqCst), 2);
}

/// A response future holding a claim, dropped where no tokio runtime runs: releasing the claim
/// cannot run there, and must not panic (the store's timer needs a runtime).
#[test]
fn a_claiming_future_dropped_outside_a_runtime_does_not_panic() {
    use tower::{Layer, Service};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(redis) = runtime.block_on(redis_server::start()) else {
        return;
    };
    let future = runtime.block_on(async {
        let store = RedisReplayStore::connect(&redis.url()).await.unwrap();
        let layer = SignatureLayer::github(SECRET)
            .unwrap()
            .replay_store(store)
            .record_delivery(RecordDelivery::AfterSuccess);
        let mut svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        }));
        let req = Request::post("/hook")
            .header("x-hub-signature-256", SIG)
            .header("x-github-delivery", "dropped-elsewhere")
            .body(Full::new(Bytes::from_static(BODY)))
            .unwrap();
        let mut future = Box::pin(svc.call(req));
        // The delivery is claimed and the handler runs (it never answers).
        assert!(
            tokio::time::timeout(Duration::from_millis(300), future.as_mut())
                .await
                .is_err()
        );
        // Handed out of the runtime, not awaited.
        Some(future)
    });
    std::thread::spawn(move || drop(future))
        .join()
        .expect("dropping the future outside a runtime does not panic");
    drop(redis);
}

/// A replica that dies while its handler runs leaves a claim behind: it lasts `claim_ttl`, not
/// `replay_ttl`, so the provider's redelivery is processed by another replica. A handled id is
/// remembered for the `replay_ttl`.
#[tokio::test]
async fn a_claim_left_by_a_crashed_replica_expires_after_the_claim_ttl() {
    use tower::{Layer, Service};

    let Some(redis) = redis_server::start().await else {
        return;
    };
    // Long enough that replica B surely asks while the claim holds, even on a loaded machine.
    let claim_ttl = Duration::from_secs(2);
    let short = move |l: SignatureLayer| {
        l.record_delivery(RecordDelivery::AfterSuccess)
            .claim_ttl(claim_ttl)
    };
    // Replica A claims the delivery, and dies before its handler answers: its future is never
    // dropped, so nothing releases the claim.
    let a = Replica::new(&redis, short).await;
    let mut svc = a
        .layer
        .clone()
        .layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        }));
    let req = Request::post("/hook")
        .header("x-hub-signature-256", SIG)
        .header("x-github-delivery", "crashed-1")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap();
    let claimed_after = std::time::Instant::now();
    let mut crashed = Box::pin(svc.call(req));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), crashed.as_mut())
            .await
            .is_err()
    );
    std::mem::forget(crashed);

    let b = Replica::new(&redis, short).await;
    assert_eq!(b.deliver("crashed-1", StatusCode::OK).await, 409, "claimed");
    // Refused until the claim expires (not before its TTL), then taken over.
    let mut attempt = 0;
    loop {
        let status = b.deliver("crashed-1", StatusCode::OK).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, 409, "still claimed");
        attempt += 1;
        assert!(attempt < 200, "the claim never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        claimed_after.elapsed() >= claim_ttl,
        "the claim expired after {:?}",
        claimed_after.elapsed()
    );

    // Handled ids outlive the claim TTL.
    tokio::time::sleep(claim_ttl + Duration::from_millis(100)).await;
    assert_eq!(b.deliver("crashed-1", StatusCode::OK).await, 409, "handled");
}

#[tokio::test]
async fn only_a_claims_own_token_settles_it_in_redis() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    // Two replicas, each with its own connection.
    let a = RedisReplayStore::connect(&redis.url()).await.unwrap();
    let b = RedisReplayStore::connect(&redis.url()).await.unwrap();
    let (claim_ttl, replay_ttl) = (Duration::from_millis(200), Duration::from_secs(60));
    // Replica a's handler outlives its claim; b claims the redelivery.
    let (first, second) = (ClaimToken::unique(), ClaimToken::unique());
    assert!(a.claim("github:x", first, claim_ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.claim("github:x", second, claim_ttl * 50).await.unwrap());
    // a finishing, either way, leaves b's claim alone.
    assert!(!a.release("github:x", first).await.unwrap());
    assert!(!a.complete("github:x", first, replay_ttl).await.unwrap());
    assert!(!b.completed("github:x").await.unwrap(), "still b's claim");
    assert!(
        !a.claim("github:x", ClaimToken::unique(), claim_ttl)
            .await
            .unwrap()
    );
    assert!(b.complete("github:x", second, replay_ttl).await.unwrap());
    assert!(a.completed("github:x").await.unwrap());
    // A claim that expired with nobody else on the id: its success is still recorded.
    let late = ClaimToken::unique();
    assert!(a.claim("github:y", late, claim_ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.complete("github:y", late, replay_ttl).await.unwrap());
    assert!(b.completed("github:y").await.unwrap());
    assert!(
        !b.claim("github:y", ClaimToken::unique(), claim_ttl)
            .await
            .unwrap()
    );
    // A key claimed before claims had tokens reads as in progress.
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg("tower-webhook:replay:github:old")
        .arg("pending")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(!a.completed("github:old").await.unwrap());
}

/// A TCP proxy on 127.0.0.1 in front of Redis that can black-hole the connections it holds:
/// they stay open but nothing passes any more, as when a NAT or a load balancer forgets the
/// flow. Connections made after that pass again.
struct BlackHoleProxy {
    url: String,
    /// Bumped by `black_hole`: connections accepted before stop forwarding.
    era: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl BlackHoleProxy {
    async fn start(redis: &redis_server::Redis) -> Self {
        let upstream = format!("127.0.0.1:{}", redis.port);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let era = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let era = Arc::clone(&era);
            async move {
                // Bounded: the test makes a handful of connections.
                for _ in 0..16 {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let born = era.load(Ordering::SeqCst);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(forward(client_read, server_write, Arc::clone(&era), born));
                    tokio::spawn(forward(server_read, client_write, Arc::clone(&era), born));
                }
            }
        });
        Self { url, era, accept }
    }

    fn black_hole(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while the connection's era lasts, then holds both ends open silently.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    era: Arc<AtomicUsize>,
    born: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if era.load(Ordering::SeqCst) != born {
            // Black-holed: the bytes are dropped and the sockets stay open, for the test's
            // length at most (the runtime ends with it).
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A connection that stops answering without being closed is never reported by the system
/// before its TCP retransmissions give up (about 15 minutes on Linux). The store opens a new
/// one after a timeout instead of sending every delivery to the dead one until then.
#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced() {
    replaced_after_a_timeout(Duration::from_millis(300)).await;
}

/// The store's own timeout decides, also when it is longer than the client library's default
/// response timeout (500 ms), which would otherwise answer first with an error of its own.
#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced_after_a_timeout_over_500_ms() {
    replaced_after_a_timeout(Duration::from_millis(900)).await;
}

async fn replaced_after_a_timeout(timeout: Duration) {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let proxy = BlackHoleProxy::start(&redis).await;
    let store = RedisReplayStore::connect(&proxy.url)
        .await
        .unwrap()
        .timeout(timeout);
    let ttl = Duration::from_secs(60);
    assert!(store.insert("github:before", ttl).await.unwrap());

    proxy.black_hole();
    let lost = store.insert("github:lost", ttl).await;
    assert!(lost.is_err(), "a black-holed connection cannot answer");

    let mut answered = None;
    for attempt in 0..20 {
        if let Ok(new) = store.insert(&format!("github:after-{attempt}"), ttl).await {
            answered = Some((attempt, new));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (attempt, new) = answered.expect("the store kept sending to the dead connection");
    assert!(new, "attempt {attempt}: a fresh id is new");
}
