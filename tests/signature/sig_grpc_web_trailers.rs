//! `RecordDelivery::AfterSuccess` on gRPC-web calls: the call's status is in the trailer frame
//! at the end of the body (`application/grpc-web`, and base64 for `application/grpc-web-text`),
//! and the delivery id is settled by it, not by the head (`200`, no `grpc-status`). Real tonic
//! servers behind tonic-web's `GrpcWebLayer` and `SignatureLayer` on loopback ports, called by
//! tonic clients through tonic-web's `GrpcWebClientLayer` over HTTP/1.1, or by hand-built
//! `grpc-web-text` requests.

use crate::echo;
use crate::incoming;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use echo::{Echo, codec};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;
use tower::Layer as _;
use tower_webhook::body::{RequestBody, ResponseBody};
use tower_webhook::signature::{MemoryReplayStore, OnReplay, SignatureLayer};

const SECRET: &str = "It's a Secret to Everybody";

use crate::watch;
use watch::Server;

/// A tonic server speaking gRPC-web (HTTP/1.1 accepted) on a loopback port, behind
/// `layer`.
async fn serve(layer: SignatureLayer) -> Server {
    let (addr, incoming) = incoming::loopback().await;
    let processed = Arc::new(AtomicUsize::new(0));
    let (tx, dropped) = mpsc::unbounded_channel();
    let counter = Arc::clone(&processed);
    // tonic's body cannot be built from bytes: the layer sees a `RequestBody`. tonic-web, behind
    // it, turns gRPC-web calls into gRPC ones and their answers back.
    let stack = tower::ServiceBuilder::new()
        .map_request(|req: Request<tonic::body::Body>| req.map(RequestBody::new))
        .map_response(|res: Response<ResponseBody<tonic::body::Body>>| {
            res.map(tonic::body::Body::new)
        })
        .layer(layer)
        .map_request(move |req: Request<RequestBody>| {
            counter.fetch_add(1, Ordering::SeqCst);
            req
        })
        .layer(tonic_web::GrpcWebLayer::new())
        .into_inner();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .accept_http1(true)
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

type WebClient = tonic::client::Grpc<
    tonic_web::GrpcWebClientService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >,
>;

impl Server {
    /// A tonic client speaking gRPC-web over HTTP/1.1.
    async fn web_client(&self) -> WebClient {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let web = tonic_web::GrpcWebClientLayer::new().layer(client);
        let origin: http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let mut grpc = tonic::client::Grpc::with_origin(web, origin);
        grpc.ready().await.unwrap();
        grpc
    }
}

/// The gRPC frame of `message` (one uncompressed message: flag, length, protobuf).
fn grpc_frame(message: &str) -> Vec<u8> {
    use prost::Message as _;
    let encoded = Echo {
        message: message.to_owned(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame
}

/// GitHub's signature header value over `body`.
fn signature(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// `message` as GitHub delivery `delivery`, signed over the frame tonic sends for it (gRPC-web
/// sends the same bytes as gRPC).
fn signed(message: &str, delivery: &str) -> tonic::Request<Echo> {
    let mut request = tonic::Request::new(Echo {
        message: message.to_owned(),
    });
    let metadata = request.metadata_mut();
    metadata.insert("x-github-delivery", delivery.parse().unwrap());
    metadata.insert(
        "x-hub-signature-256",
        signature(&grpc_frame(message)).parse().unwrap(),
    );
    request
}

/// Opens `test.Stream/Watch` with `message` as delivery `delivery`.
async fn watch(
    client: &mut WebClient,
    message: &str,
    delivery: &str,
) -> Result<tonic::Streaming<Echo>, Status> {
    client.ready().await.unwrap();
    let call = client.server_streaming(
        signed(message, delivery),
        http::uri::PathAndQuery::from_static(watch::WATCH),
        codec(),
    );
    let response = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the head comes")?;
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
    client: &mut WebClient,
    message: &str,
    delivery: &str,
) -> Result<(Vec<String>, Option<Status>), Status> {
    let mut stream = watch(client, message, delivery).await?;
    Ok(read_all(&mut stream).await)
}

/// Calls `test.Echo/Say` with `message` as delivery `delivery`.
async fn say(client: &mut WebClient, message: &str, delivery: &str) -> Result<String, Status> {
    client.ready().await.unwrap();
    let call = client.unary(
        signed(message, delivery),
        http::uri::PathAndQuery::from_static(echo::SAY),
        codec(),
    );
    let reply = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")?;
    Ok(reply.into_inner().message)
}

fn github() -> SignatureLayer {
    SignatureLayer::github(SECRET).unwrap()
}

/// A streamed gRPC-web call that fails in its trailer frame (`grpc-status:13` after a message,
/// under a `200` without `grpc-status` in its head) was taken as handled: its id was kept when
/// the head arrived, and the sender's retry was refused as a replay. Now the id is released
/// when the trailer frame says the call failed: the retry is processed, with the in-memory
/// store and with one that answers later.
#[tokio::test]
async fn a_grpc_web_stream_that_fails_in_its_trailer_frame_is_processed_again() {
    for layer in [github(), github().replay_store(Later::new())] {
        let server = serve(layer).await;
        let mut client = server.web_client().await;
        for attempt in 1..=2 {
            let (messages, status) = watch_all(&mut client, "fail", "w-fail")
                .await
                .expect("the call is processed");
            assert_eq!(messages, ["one"]);
            let status = status.expect("the call fails");
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert_eq!(status.message(), "the source broke");
            assert_eq!(server.processed(), attempt);
        }
    }
}

/// A gRPC-web call whose trailer frame says `grpc-status:0` was handled: a copy is refused as a
/// replay, streamed or unary.
#[tokio::test]
async fn a_grpc_web_call_that_succeeds_is_kept_and_its_copy_refused() {
    let server = serve(github()).await;
    let mut client = server.web_client().await;
    let (messages, status) = watch_all(&mut client, "ok", "w-ok").await.unwrap();
    assert_eq!(messages, ["one", "two"]);
    assert!(status.is_none(), "{status:?}");
    // Refused as gRPC refuses a call (the 409 of an HTTP answer): `ALREADY_EXISTS`.
    let copy = watch_all(&mut client, "ok", "w-ok").await;
    let Err(refused) = &copy else {
        panic!("{copy:?}")
    };
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert_eq!(server.processed(), 1);

    assert_eq!(say(&mut client, "hi", "w-say").await.unwrap(), "hi");
    let copy = say(&mut client, "hi", "w-say").await;
    assert!(copy.is_err(), "a copy is refused: {copy:?}");
    assert_eq!(server.processed(), 2);
}

/// A unary handler that returns an error is answered trailers-only (`grpc-status` in the
/// head): released by its head, and the retry is processed.
#[tokio::test]
async fn a_grpc_web_handler_error_answered_trailers_only_is_released() {
    let server = serve(github()).await;
    let mut client = server.web_client().await;
    for attempt in 1..=2 {
        let failed = say(&mut client, "fail", "w-say-fail").await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        assert_eq!(server.processed(), attempt);
    }
}

/// A client that goes away mid-stream never saw the call's status: the id is released when the
/// server drops the body, and the resend is processed.
#[tokio::test]
async fn a_grpc_web_stream_the_client_drops_is_released() {
    let mut server = serve(github()).await;
    let mut client = server.web_client().await;
    let mut stream = watch(&mut client, "hang", "w-hang").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message comes");
    assert_eq!(first.unwrap().unwrap().message, "one");
    drop(stream);
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server.dropped.recv())
        .await
        .expect("the server drops the abandoned stream")
        .unwrap();
    let mut client = server.web_client().await;
    let mut again = watch(&mut client, "hang", "w-hang")
        .await
        .expect("the resend is processed");
    let first = tokio::time::timeout(Duration::from_secs(10), again.message())
        .await
        .expect("a message comes");
    assert_eq!(first.unwrap().unwrap().message, "one");
    assert_eq!(server.processed(), 2);
}

/// A `grpc-web-text` call, by hand over HTTP/1.1: its answer's status, read from the body
/// (base64, each chunk padded on its own), and the body's frames.
async fn web_text(addr: SocketAddr, message: &str, delivery: &str) -> (StatusCode, Vec<u8>) {
    let body = STANDARD.encode(grpc_frame(message));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = Request::post(format!("http://{addr}{}", watch::WATCH))
        .header("content-type", "application/grpc-web-text+proto")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature(body.as_bytes()))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.unwrap();
        let status = response.status();
        if status == StatusCode::OK {
            let content_type = &response.headers()["content-type"];
            assert_eq!(content_type, "application/grpc-web-text+proto");
        }
        let text = response.into_body().collect().await.unwrap().to_bytes();
        (status, text)
    };
    let (status, text) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the call ends");
    if status != StatusCode::OK {
        return (status, Vec::new());
    }
    // Padded segments follow each other: decoded four characters at a time.
    let decoded = text
        .chunks(4)
        .flat_map(|quad| STANDARD.decode(quad).expect("base64"))
        .collect();
    (status, decoded)
}

/// The trailer frame's lines of a gRPC-web body (after its messages).
fn trailer_lines(mut body: &[u8]) -> String {
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        if body[0] == 0x80 {
            return String::from_utf8(body[5..5 + len].to_vec()).unwrap();
        }
        body = &body[5 + len..];
    }
    panic!("no trailer frame")
}

/// `grpc-web-text`: the body is base64, the trailer frame too. A failed stream's retry is
/// processed; a successful stream's copy is refused.
#[tokio::test]
async fn a_grpc_web_text_stream_is_settled_by_its_trailer_frame() {
    let server = serve(github()).await;
    for attempt in 1..=2 {
        let (status, body) = web_text(server.addr, "fail", "t-fail").await;
        assert_eq!(status, StatusCode::OK);
        let lines = trailer_lines(&body);
        assert!(lines.starts_with("grpc-status:13\r\n"), "{lines}");
        assert_eq!(server.processed(), attempt);
    }
    let (status, body) = web_text(server.addr, "ok", "t-ok").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        trailer_lines(&body).starts_with("grpc-status:0\r\n"),
        "{body:?}"
    );
    // Refused trailers-only, `ALREADY_EXISTS`.
    let (copy, body) = web_text(server.addr, "ok", "t-ok").await;
    assert_eq!(copy, StatusCode::OK);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(server.processed(), 3);
}

use crate::later_store;
use later_store::{Gate, Later};

/// With a store that answers later, the trailer frame waits for the store: a sender that
/// resends at once after seeing `grpc-status:0` gets the duplicate's answer (acknowledged
/// here), not a second run of the handler.
#[tokio::test]
async fn the_trailer_frame_waits_for_the_store() {
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
    let mut client = server.web_client().await;
    let mut stream = watch(&mut client, "ok", "w-later").await.unwrap();
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
        .expect("the id is marked handled when the trailer frame comes")
        .unwrap();
    // The store has not answered: the call's status has not been sent.
    let early = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(
        early.is_err(),
        "the trailer frame went before the store answered: {early:?}"
    );
    open.add_permits(1);
    let (rest, status) = read_all(&mut stream).await;
    assert!(rest.is_empty() && status.is_none(), "{rest:?} {status:?}");
    // At once: the copy is acknowledged (the id is handled), not processed.
    let (copy, status) = watch_all(&mut client, "ok", "w-later").await.unwrap();
    assert!(copy.is_empty() && status.is_none(), "{copy:?} {status:?}");
    assert_eq!(server.processed(), 1);
}
