//! The signature layer's request path, checked end to end: a claim held by a handler whose
//! client went away, signature headers as hyper hands them on (folded, repeated, joined, padded,
//! huge, not ASCII), and a replay store that settles slowly or not at all.
//!
//! These guard behaviour that was already correct; they are regression tests, not fixes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::body::RequestBody;
use tower_webhook::signature::{
    ClaimToken, MemoryReplayStore, OnReplay, ReplayFuture, ReplayStore, SignatureLayer,
};

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// A signed GitHub delivery as bytes on the wire, with `extra` header lines (each ending in
/// CRLF) and the signature header line `sig_line`.
fn wire(sig_line: &str, extra: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /github HTTP/1.1\r\nhost: 127.0.0.1\r\n{sig_line}\r\ncontent-length: {}\r\n",
        GH_BODY.len()
    )
    .into_bytes();
    req.extend_from_slice(extra);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(GH_BODY);
    req
}

fn delivery(id: &str) -> Vec<u8> {
    wire(
        &format!("x-hub-signature-256: {GH_SIG}"),
        format!("x-github-delivery: {id}\r\n").as_bytes(),
    )
}

/// A hyper server behind the layer whose handler hangs on its first call (after telling
/// `entered`) and answers 200 afterwards; it counts the calls.
async fn serve(layer: SignatureLayer) -> (SocketAddr, Arc<AtomicUsize>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let (counter, notify) = (calls.clone(), entered.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (calls, entered) = (counter.clone(), notify.clone());
            let svc = ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
                .layer(layer.clone())
                .service_fn(move |_req: Request<RequestBody>| {
                    let (calls, entered) = (calls.clone(), entered.clone());
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            entered.notify_one();
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    (addr, calls, entered)
}

/// Sends `request` on a new connection and returns the status line of the answer (2 s at most).
async fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("an answer within 2 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// The provider gives up on a slow handler and closes the connection: hyper drops the layer's
/// future, the claim goes with it, and the provider's redelivery runs the handler again.
#[tokio::test]
async fn a_client_that_hangs_up_on_a_running_handler_leaves_the_id_to_its_redelivery() {
    let (addr, calls, entered) = serve(SignatureLayer::github(GH_SECRET).unwrap()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&delivery("d-hung-up")).await.unwrap();
    entered.notified().await;
    drop(stream);
    let mut answer = String::new();
    // Hyper notices the closed connection on its next read: give it a few rounds.
    for _ in 0..50 {
        answer = status_line(addr, &delivery("d-hung-up")).await;
        if !answer.contains("409") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer, "HTTP/1.1 200 OK");
    assert_eq!(
        status_line(addr, &delivery("d-hung-up")).await,
        "HTTP/1.1 409 Conflict"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the hung call and the redelivery"
    );
}

/// Signature headers as they reach the layer through hyper: a folded line is refused by hyper,
/// repeated or comma-joined signatures and huge values by the layer; padding around the value is
/// not part of it; a delivery id with bytes outside ASCII is an authentic but malformed delivery.
#[tokio::test]
async fn signature_headers_folded_repeated_joined_padded_huge_or_not_ascii() {
    let (addr, calls, entered) = serve(SignatureLayer::github(GH_SECRET).unwrap()).await;
    // The handler's first call hangs: spend it on a delivery of its own.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&delivery("d-first")).await.unwrap();
    entered.notified().await;

    let sig = format!("x-hub-signature-256: {GH_SIG}");
    let refused = [
        (
            "folded",
            wire(
                "x-hub-signature-256: sha256=",
                format!(" {}\r\n", &GH_SIG[7..]).as_bytes(),
            ),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "repeated",
            wire(&sig, format!("{sig}\r\n").as_bytes()),
            "HTTP/1.1 401 Unauthorized",
        ),
        (
            "joined",
            wire(&format!("{sig}, {GH_SIG}"), b""),
            "HTTP/1.1 401 Unauthorized",
        ),
        (
            "huge",
            wire(
                &format!("x-hub-signature-256: sha256={}", "a".repeat(60_000)),
                b"",
            ),
            "HTTP/1.1 401 Unauthorized",
        ),
        (
            "not ascii id",
            wire(&sig, b"x-github-delivery: d\xe9\xff-1\r\n"),
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (what, request, expected) in refused {
        assert_eq!(status_line(addr, &request).await, expected, "{what}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no refused delivery reached the handler"
    );
    let padded = wire(&format!("x-hub-signature-256: \t {GH_SIG} \t"), b"");
    assert_eq!(status_line(addr, &padded).await, "HTTP/1.1 200 OK");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A store whose `complete` and `release` answer late, or fail.
#[derive(Debug)]
struct Laggy {
    memory: Arc<MemoryReplayStore>,
    delay: Duration,
    fail: bool,
}

impl Laggy {
    fn settle(
        &self,
        op: impl FnOnce(&MemoryReplayStore) -> ReplayFuture + Send + 'static,
    ) -> ReplayFuture {
        let (memory, delay, fail) = (self.memory.clone(), self.delay, self.fail);
        ReplayFuture::new(async move {
            tokio::time::sleep(delay).await;
            if fail {
                return Err("replay store down".into());
            }
            op(&memory).await
        })
    }
}

impl ReplayStore for Laggy {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.memory.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.memory.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.memory.claim(key, token, ttl)
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let key = key.to_owned();
        self.settle(move |m| m.complete(&key, token, ttl))
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        let key = key.to_owned();
        self.settle(move |m| m.release(&key, token))
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.memory.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

fn github(id: &str) -> Request<Full<Bytes>> {
    Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .header("x-github-delivery", id)
        .body(Full::new(Bytes::from_static(GH_BODY)))
        .unwrap()
}

/// A handler answering `status`, counting its calls.
fn answering(
    status: StatusCode,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = Response::new(Full::<Bytes>::default());
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    })
}

/// An outer timeout cuts the wait for a slow store after the handler answered: the claim is
/// still settled, completed after a 2xx (a redelivery is a replay) and released after a 500 (a
/// redelivery runs the handler again).
#[tokio::test(start_paused = true)]
async fn a_settlement_cut_short_by_an_outer_timeout_still_lands() {
    for (status, redelivered, handled) in [
        (StatusCode::OK, StatusCode::CONFLICT, 1),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
        ),
    ] {
        let memory = Arc::new(MemoryReplayStore::new());
        let store = Laggy {
            memory: memory.clone(),
            delay: Duration::from_millis(50),
            fail: false,
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = SignatureLayer::github(GH_SECRET)
            .unwrap()
            .replay_store(store);
        let svc = ServiceBuilder::new()
            .timeout(Duration::from_millis(10))
            .layer(layer.clone())
            .service(answering(status, calls.clone()));
        assert!(
            svc.oneshot(github("d-slow")).await.is_err(),
            "{status}: cut by the timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Settled in the store: completed after the 2xx (a claim left pending would refuse the
        // redelivery with the same 409), released after the 500.
        assert_eq!(
            memory.completed("github:d-slow").await.unwrap(),
            status == StatusCode::OK,
            "{status}"
        );
        // Without the timeout this time, so the redelivery waits for its own settlement.
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(answering(status, calls.clone()));
        let res = svc.oneshot(github("d-slow")).await.unwrap();
        assert_eq!(res.status(), redelivered, "{status}");
        assert_eq!(calls.load(Ordering::SeqCst), handled, "{status}");
    }
}

/// A store that cannot settle a claim leaves it in place: copies are refused with the replay
/// problem, not acknowledged (the first attempt's outcome is unknown to the store), until the
/// claim expires.
#[tokio::test]
async fn a_claim_the_store_cannot_settle_keeps_copies_out_and_unacknowledged() {
    for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
        let store = Laggy {
            memory: Arc::new(MemoryReplayStore::new()),
            delay: Duration::ZERO,
            fail: true,
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = SignatureLayer::github(GH_SECRET)
            .unwrap()
            .replay_store(store)
            .on_replay(OnReplay::Acknowledge(StatusCode::OK));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(answering(status, calls.clone()));
        assert_eq!(
            svc.clone()
                .oneshot(github("d-stuck"))
                .await
                .unwrap()
                .status(),
            status
        );
        let copy = svc.oneshot(github("d-stuck")).await.unwrap();
        assert_eq!(copy.status(), StatusCode::CONFLICT, "{status}");
        let body = copy.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("replayed-delivery"),
            "{status}: {body:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}");
    }
}
