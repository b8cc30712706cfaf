//! tower-http 0.7's body timeouts (`RequestBodyTimeoutLayer`, and its new
//! `RequestBodyDeadlineLayer`) are recognised like 0.6's: a client that stops sending, or
//! trickles past the deadline, is answered 408 by `WebhookErrorLayer` and by `SignatureLayer`,
//! over a real hyper connection on 127.0.0.1.

use crate::github_hook;
use crate::hyper_one;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use github_hook::{GH_SECRET, GH_SIG};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, read_head, serve_one};
use tokio::io::AsyncWriteExt;
use tower::{BoxError, ServiceBuilder};
use tower_http_0_7::timeout::{RequestBodyDeadlineLayer, RequestBodyTimeoutLayer};
use tower_webhook::body::RequestBody;
use tower_webhook::error::WebhookErrorLayer;
use tower_webhook::signature::SignatureLayer;

/// Sends a request head announcing 13 bytes and `sent` of them, then waits for the answer's head.
async fn answer_to_a_short_body(addr: std::net::SocketAddr, sent: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{sent}"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    read_head(&mut stream).await
}

/// A handler that reads its whole body with `?`.
async fn read_all<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = req.into_body().collect().await.map_err(Into::into)?;
    Ok(Response::new(Full::new(body.to_bytes())))
}

#[tokio::test]
async fn the_error_layer_answers_tower_http_0_7_body_timeouts_408() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(100)))
        .service_fn(read_all);
    let head = answer_to_a_short_body(serve_one(Http::One, svc).await, "Hello").await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );

    // The deadline is over the whole body: a client still sending, too slowly, is cut too.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(RequestBodyDeadlineLayer::new(Duration::from_millis(100)))
        .service_fn(read_all);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        for byte in b"Hello, World" {
            tokio::time::sleep(Duration::from_millis(40)).await;
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
}

#[tokio::test]
async fn the_signature_layer_answers_a_tower_http_0_7_body_timeout_408() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(100)))
        .map_request(|req: Request<_>| req.map(RequestBody::new))
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service_fn(move |_: Request<RequestBody>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
    let addr = serve_one(Http::One, svc).await;
    let head = answer_to_a_short_body(addr, "Hello").await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
