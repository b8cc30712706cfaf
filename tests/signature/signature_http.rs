//! `SignatureLayer` on real HTTP/1.1 connections (hyper 1, 127.0.0.1).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_webhook::body::RequestBody;
use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Serves `layer` in front of a handler that echoes the body, on a fresh port.
async fn serve(layer: SignatureLayer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let calls = counter.clone();
            let svc = ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
                .layer(layer.clone())
                .service_fn(move |req: Request<RequestBody>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert!(req.extensions().get::<VerifiedWebhook>().is_some());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    (addr, calls)
}

/// Reads one response (head, and a body of its `Content-Length`) within 2 s.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = header(&text, "content-length").map_or(0, |v| v.parse().unwrap());
                if buf.len() >= end + 4 + length {
                    break;
                }
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response within 2 s");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends raw bytes on a fresh connection and reads one response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_401_carries_a_www_authenticate_challenge() {
    // RFC 9110 §15.5.2: a 401 MUST send WWW-Authenticate.
    let (addr, calls) = serve(SignatureLayer::github(GH_SECRET).unwrap()).await;
    let unsigned = exchange(
        addr,
        b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert!(unsigned.starts_with("HTTP/1.1 401 "), "{unsigned}");
    assert_eq!(
        header(&unsigned, "www-authenticate"),
        Some(r#"Signature realm="github""#),
        "{unsigned}"
    );
    assert_eq!(
        header(&unsigned, "content-type"),
        Some("application/problem+json")
    );
    let forged = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ncontent-length: 13\r\n\r\nHello, World?"
    );
    let forged = exchange(addr, forged.as_bytes()).await;
    assert!(forged.starts_with("HTTP/1.1 401 "), "{forged}");
    assert_eq!(
        header(&forged, "www-authenticate"),
        Some(r#"Signature realm="github""#)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Azure DevOps authenticates with HTTP Basic: its challenge is a Basic one.
    let (addr, _) = serve(SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap()).await;
    let wrong = exchange(
        addr,
        b"POST /hook HTTP/1.1\r\nhost: x\r\nauthorization: Basic aG9va3M6Z3Vlc3M=\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
    assert_eq!(
        header(&wrong, "www-authenticate"),
        Some(r#"Basic realm="azure-devops""#)
    );

    // Other rejections are not about credentials: no challenge.
    let (addr, _) = serve(SignatureLayer::github(GH_SECRET).unwrap().max_body_size(4)).await;
    let large = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ncontent-length: 13\r\n\r\nHello, World!"
    );
    let large = exchange(addr, large.as_bytes()).await;
    assert!(large.starts_with("HTTP/1.1 413 "), "{large}");
    assert_eq!(header(&large, "www-authenticate"), None);
}

/// Like [`serve`], with the request body wrapped in `http_body_util::Limited` (what tower-http's
/// `RequestBodyLimitLayer` does when no `Content-Length` announces the size).
async fn serve_limited(layer: SignatureLayer, limit: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = ServiceBuilder::new()
                .map_request(move |req: Request<Incoming>| {
                    req.map(|body| RequestBody::new(http_body_util::Limited::new(body, limit)))
                })
                .layer(layer.clone())
                .service_fn(|req: Request<RequestBody>| async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_outer_body_limit_hit_while_reading_is_a_413() {
    let addr = serve_limited(SignatureLayer::github(GH_SECRET).unwrap(), 8).await;
    // 13 bytes, chunked: only the outer limit of 8 can stop it, while the layer reads.
    let req = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nHello\r\n8\r\n, World!\r\n0\r\n\r\n"
    );
    let res = exchange(addr, req.as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 413 "), "{res}");
    assert!(
        res.contains(r#""type":"urn:tower-webhook:problem:payload-too-large""#),
        "{res}"
    );
    // Within the outer limit the delivery goes through.
    let addr = serve_limited(SignatureLayer::github(GH_SECRET).unwrap(), 13).await;
    let res = exchange(addr, req.as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 200 "), "{res}");
    assert!(res.ends_with("Hello, World!"), "{res}");

    // The same through axum's body, whose error wraps the limit's.
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service_fn(|_: Request<axum::body::Body>| async {
            Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::default()))
        });
    let body =
        http_body_util::Limited::new(Full::new(bytes::Bytes::from_static(b"Hello, World!")), 8);
    let req = Request::post("/hook")
        .header("x-hub-signature-256", GH_SIG)
        .body(axum::body::Body::new(body))
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc, req).await.unwrap();
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn a_rejection_on_headers_sends_no_100_continue_and_keeps_a_drained_connection() {
    let (addr, calls) = serve(SignatureLayer::github(GH_SECRET).unwrap()).await;
    // `Expect: 100-continue` and no signature: the final answer comes first, the body is never
    // asked for.
    let res = exchange(
        addr,
        b"POST /hook HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 13\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 401 "), "{res}");
    assert!(!res.contains("100 Continue"), "{res}");

    // A rejected request whose body had fully arrived leaves the connection usable.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\nHello, World!")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 401 "), "{first}");
    assert!(first.ends_with("\"status\":401}"), "{first}");
    let signed = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ncontent-length: 13\r\n\r\nHello, World!"
    );
    stream.write_all(signed.as_bytes()).await.unwrap();
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
    assert!(second.ends_with("Hello, World!"), "{second}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_outer_body_timeout_hit_while_reading_is_a_408() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = counter.clone();
            let svc = ServiceBuilder::new()
                .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                    Duration::from_millis(100),
                ))
                .map_request(|req: Request<_>| req.map(RequestBody::new))
                .layer(SignatureLayer::github(GH_SECRET).unwrap())
                .service_fn(move |_: Request<RequestBody>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::default())) }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    // 13 bytes announced, 5 sent, then the client goes quiet.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {GH_SIG}\r\ncontent-length: 13\r\n\r\nHello"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let res = read_response(&mut stream).await;
    assert!(res.starts_with("HTTP/1.1 408 "), "{res}");
    assert!(
        res.contains(r#""type":"urn:tower-webhook:problem:timeout""#),
        "{res}"
    );
    assert_eq!(header(&res, "www-authenticate"), None);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
