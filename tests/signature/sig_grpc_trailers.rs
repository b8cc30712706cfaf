//! `RecordDelivery::AfterSuccess` on a gRPC call whose status comes in the trailers (a
//! server-streaming method, a unary answer that is not trailers-only): the delivery id is
//! settled when the body ends, by the trailers' `grpc-status`, not by the head. Real tonic
//! servers behind `SignatureLayer` on loopback ports, called by tonic clients.

use crate::echo;
use crate::incoming;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use echo::{Echo, codec};
use http::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;
use tower_webhook::body::{RequestBody, ResponseBody};
use tower_webhook::signature::{MemoryReplayStore, OnReplay, SignatureLayer};

const SECRET: &str = "It's a Secret to Everybody";

use crate::watch;
use watch::Server;

/// A tonic server on a loopback port, behind `layer`.
async fn serve(layer: SignatureLayer) -> Server {
    let (addr, incoming) = incoming::loopback().await;
    let processed = Arc::new(AtomicUsize::new(0));
    let (tx, dropped) = mpsc::unbounded_channel();
    let counter = Arc::clone(&processed);
    // tonic's body cannot be built from bytes: the layer sees a `RequestBody`.
    let stack = tower::ServiceBuilder::new()
        .map_request(|req: Request<tonic::body::Body>| req.map(RequestBody::new))
        .map_response(|res: Response<ResponseBody<tonic::body::Body>>| {
            res.map(tonic::body::Body::new)
        })
        .layer(layer)
        .map_request(move |req: Request<RequestBody>| {
            counter.fetch_add(1, Ordering::SeqCst);
            req.map(tonic::body::Body::new)
        })
        .into_inner();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(stack)
            .add_service(watch::StreamService { dropped: tx })
            .add_service(echo::EchoService)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    Server {
        addr,
        processed,
        dropped,
        task,
    }
}

impl Server {
    async fn client(&self) -> tonic::client::Grpc<tonic::transport::Channel> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        client
    }
}

/// `message` as GitHub delivery `delivery`, signed over the gRPC frame tonic sends for it (one
/// uncompressed message: flag, length, protobuf).
fn signed(message: &str, delivery: &str) -> tonic::Request<Echo> {
    use prost::Message as _;
    let echo = Echo {
        message: message.to_owned(),
    };
    let encoded = echo.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, &frame);
    let signature: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut request = tonic::Request::new(echo);
    let metadata = request.metadata_mut();
    metadata.insert("x-github-delivery", delivery.parse().unwrap());
    metadata.insert(
        "x-hub-signature-256",
        format!("sha256={signature}").parse().unwrap(),
    );
    request
}

/// Opens `test.Stream/Watch` with `message` as delivery `delivery`.
async fn watch(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    message: &str,
    delivery: &str,
) -> Result<tonic::Streaming<Echo>, Status> {
    client.ready().await.unwrap();
    let response = client
        .server_streaming(
            signed(message, delivery),
            http::uri::PathAndQuery::from_static(watch::WATCH),
            codec(),
        )
        .await?;
    Ok(response.into_inner())
}

/// Reads a stream to its end: its messages, and its status (`None`: `OK`).
async fn read_all(stream: &mut tonic::Streaming<Echo>) -> (Vec<String>, Option<Status>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(echo)) => messages.push(echo.message),
            Ok(None) => return (messages, None),
            Err(status) => return (messages, Some(status)),
        }
    }
}

/// The whole call: its messages and status, or the status it was refused with.
async fn watch_all(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    message: &str,
    delivery: &str,
) -> Result<(Vec<String>, Option<Status>), Status> {
    let mut stream = watch(client, message, delivery).await?;
    Ok(read_all(&mut stream).await)
}

fn github() -> SignatureLayer {
    SignatureLayer::github(SECRET).unwrap()
}

use crate::later_store;
use later_store::{Gate, Later};

/// A streamed call that fails in its trailers (`grpc-status: 13` after a message) was taken as
/// handled: its id was kept when the head (200, no `grpc-status`) arrived, and the sender's
/// retry was refused as a replay. Now the id is released when the trailers say the call failed,
/// before the client sees them: the retry is processed, with the in-memory store and with one
/// that answers later.
#[tokio::test]
async fn a_stream_that_fails_in_its_trailers_is_processed_again() {
    for layer in [github(), github().replay_store(Later::new())] {
        let server = serve(layer).await;
        let mut client = server.client().await;
        for attempt in 1..=2 {
            let (messages, status) = watch_all(&mut client, "fail", "s-fail")
                .await
                .expect("the call is processed");
            assert_eq!(messages, ["one"]);
            let status = status.expect("the call fails");
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert_eq!(server.processed(), attempt);
        }
    }
}

/// A stream that ends with `grpc-status: 0` was handled: a copy is refused as a replay.
#[tokio::test]
async fn a_stream_that_succeeds_in_its_trailers_is_kept() {
    let server = serve(github()).await;
    let mut client = server.client().await;
    let (messages, status) = watch_all(&mut client, "ok", "s-ok").await.unwrap();
    assert_eq!(messages, ["one", "two"]);
    assert!(status.is_none(), "{status:?}");
    // Refused as gRPC refuses a call (the 409 of an HTTP answer): `ALREADY_EXISTS`.
    let copy = watch_all(&mut client, "ok", "s-ok").await;
    let Err(refused) = &copy else {
        panic!("{copy:?}")
    };
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert_eq!(server.processed(), 1);
}

/// A client that goes away mid-stream never saw the call succeed: the id is released when the
/// server drops the body, and the resend is processed.
#[tokio::test]
async fn a_stream_the_client_cancels_is_released() {
    let mut server = serve(github()).await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "hang", "s-hang").await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.message, "one");
    drop(stream);
    // The server drops the body (its claim first, then the handler's stream).
    tokio::time::timeout(Duration::from_secs(10), server.dropped.recv())
        .await
        .expect("the server drops the cancelled stream")
        .unwrap();
    let mut again = watch(&mut client, "hang", "s-hang")
        .await
        .expect("the resend is processed");
    assert_eq!(again.message().await.unwrap().unwrap().message, "one");
    assert_eq!(server.processed(), 2);
}

/// Unary calls as before: a success (data, then `grpc-status: 0` trailers) is kept, a failure
/// answered trailers-only (`grpc-status` in the head) is released.
#[tokio::test]
async fn unary_calls_are_settled_as_before() {
    let server = serve(github()).await;
    let mut client = server.client().await;
    let mut unary = async |message: &str, delivery: &str| {
        client.ready().await.unwrap();
        client
            .unary(
                signed(message, delivery),
                http::uri::PathAndQuery::from_static(echo::SAY),
                codec(),
            )
            .await
    };
    let reply = unary("hi", "u-ok").await.unwrap();
    assert_eq!(reply.into_inner().message, "hi");
    assert!(unary("hi", "u-ok").await.is_err(), "a copy is refused");
    assert_eq!(server.processed(), 1);

    for attempt in 1..=2 {
        let failed = unary("fail", "u-fail").await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        assert_eq!(server.processed(), 1 + attempt);
    }
}

/// With a store that answers later, the trailers wait for the store: a sender that resends at
/// once after seeing `grpc-status: 0` gets the duplicate's answer (acknowledged here), not a
/// second run of the handler.
#[tokio::test]
async fn the_trailers_wait_for_the_store() {
    let (started, mut complete_started) = mpsc::unbounded_channel();
    let open = Arc::new(Semaphore::new(0));
    let store = Later {
        inner: Arc::new(MemoryReplayStore::new()),
        gate: Some(Gate {
            started,
            open: Arc::clone(&open),
        }),
    };
    let layer = github()
        .replay_store(store)
        .on_replay(OnReplay::Acknowledge(StatusCode::OK));
    let server = serve(layer).await;
    let mut client = server.client().await;
    let mut stream =
        tokio::time::timeout(Duration::from_secs(10), watch(&mut client, "ok", "s-later"))
            .await
            .expect("the head comes")
            .unwrap();
    let mut messages = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message comes");
        messages.push(message.unwrap().unwrap().message);
    }
    assert_eq!(messages, ["one", "two"]);
    tokio::time::timeout(Duration::from_secs(10), complete_started.recv())
        .await
        .expect("the id is marked handled at the end of the body")
        .unwrap();
    // The store has not answered: the call's status has not been sent.
    let early = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(
        early.is_err(),
        "the trailers went before the store answered: {early:?}"
    );
    open.add_permits(1);
    let (rest, status) = read_all(&mut stream).await;
    assert!(rest.is_empty() && status.is_none(), "{rest:?} {status:?}");
    // At once: the copy is acknowledged (the id is handled), not processed.
    let (copy, status) = watch_all(&mut client, "ok", "s-later").await.unwrap();
    assert!(copy.is_empty() && status.is_none(), "{copy:?} {status:?}");
    assert_eq!(server.processed(), 1);
}

/// gRPC-web carries the call's status in a trailer frame at the end of the body, not in
/// trailers: a successful call whose body ends without trailers, but with `grpc-status:0` in
/// its trailer frame, is kept, and a copy is refused.
#[tokio::test]
async fn a_grpc_web_answer_whose_trailer_frame_says_ok_is_kept() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};

    let processed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&processed);
    let svc = ServiceBuilder::new()
        .layer(github())
        .service_fn(move |_: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                // One empty message, then the trailer frame (flag 0x80) with `grpc-status:0`.
                let mut body = vec![0, 0, 0, 0, 0, 0x80, 0, 0, 0, 14];
                body.extend_from_slice(b"grpc-status:0\n");
                let mut res = Response::new(Full::new(Bytes::from(body)));
                res.headers_mut().insert(
                    "content-type",
                    "application/grpc-web+proto".parse().unwrap(),
                );
                Ok::<_, std::convert::Infallible>(res)
            }
        });
    let call = || {
        let frame = [0u8, 0, 0, 0, 0];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&key, &frame);
        let signature: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Request::post("/test.Echo/Say")
            .header("content-type", "application/grpc-web+proto")
            .header("x-github-delivery", "w-1")
            .header("x-hub-signature-256", format!("sha256={signature}"))
            .body(Full::new(Bytes::copy_from_slice(&frame)))
            .unwrap()
    };
    let first = svc.clone().oneshot(call()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();
    let copy = svc.oneshot(call()).await.unwrap();
    assert_eq!(copy.status(), StatusCode::OK);
    assert_eq!(copy.headers()["grpc-status"], "6", "ALREADY_EXISTS");
    assert_eq!(copy.headers()["content-type"], "application/grpc-web+proto");
    assert_eq!(processed.load(Ordering::SeqCst), 1);
}

/// A gRPC call the layer refuses, with no `WebhookErrorLayer` around it, is refused as gRPC
/// refuses a call: HTTP 200, trailers-only, its `grpc-status` the refusal's (`UNAUTHENTICATED`
/// for a bad signature), under the call's content type. It was a `401` problem document, which a
/// gRPC client reads as a broken call (tonic: `UNKNOWN`, or a message made of the document).
#[tokio::test]
async fn a_refused_grpc_call_is_answered_with_its_grpc_status() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};

    let svc = ServiceBuilder::new()
        .layer(github())
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let req = Request::post("/test.Echo/Say")
        .header("content-type", "application/grpc+proto")
        .header("x-github-delivery", "g-bad")
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(res.headers()["content-type"], "application/grpc+proto");
    assert!(
        res.extensions()
            .get::<tower_webhook::error::Problem>()
            .is_some()
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "{body:?}");
}

/// A gRPC answer over HTTP/1.1 whose body has a known length and its status in trailers (a
/// handler's `Full` body `with_trailers`): the delivery is settled by those trailers, kept on
/// `grpc-status: 0`, and a copy is a replay. The layer passed the body's exact length on, so
/// hyper answered with `Content-Length`, stopped once that many bytes were out, and dropped
/// the body before its trailers: the call counted as abandoned, its id was released, and the
/// copy was processed again. (The answer is served boxed as a `BoxBody`, which it could not be
/// while the settling body held a future that is not `Sync`.)
#[tokio::test]
async fn an_http1_answer_of_known_length_is_settled_by_its_trailers() {
    use bytes::Bytes;
    use hmac::{KeyInit, Mac};
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&processed);
    // The answer is boxed as a `BoxBody`, which asks for a `Sync` body: the error layer's and
    // the signature layer's, settling the claim at its end, hold the store's future and are.
    let svc = tower::ServiceBuilder::new()
        .map_response(|res: Response<_>| res.map(BodyExt::boxed))
        .layer(tower_webhook::error::WebhookErrorLayer::new())
        .map_request(|req: Request<hyper::body::Incoming>| req.map(RequestBody::new))
        .layer(github())
        .service_fn(move |_: Request<RequestBody>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                    .with_trailers(async move { Some(Ok(trailers)) });
                let res = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap();
                Ok::<_, std::convert::Infallible>(res)
            }
        });
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    let message = b"\0\0\0\0\x04\x0a\x02hi";
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(message);
    let signature = hex::encode(mac.finalize().into_bytes());
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /echo.Echo/Say HTTP/1.1\r\nhost: test\r\ncontent-type: application/grpc\r\n\
             te: trailers\r\nconnection: close\r\nx-github-event: push\r\n\
             x-github-delivery: d-http1\r\nx-hub-signature-256: sha256={signature}\r\n\
             content-length: {}\r\n\r\n",
            message.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(message).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
    }
    assert_eq!(processed.load(Ordering::SeqCst), 1, "the copy is a replay");
    server.abort();
}
