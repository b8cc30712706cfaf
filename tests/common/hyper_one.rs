//! One hyper connection on a loopback port, and reading an HTTP/1.1 answer's head from a raw
//! socket: for the tests of what the error layer's answers say about the connection.
#![allow(dead_code)] // not every test file uses each

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, Service};

/// The HTTP version [`serve_one`] speaks.
#[derive(Clone, Copy)]
pub(crate) enum Http {
    One,
    Two,
}

/// Serves one connection with hyper, speaking `http`, on a loopback port: `svc` is the whole app.
pub(crate) async fn serve_one<S, B>(http: Http, svc: S) -> SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let _ = match http {
            Http::One => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
            }
            Http::Two => {
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            }
        };
    });
    addr
}

/// Reads one HTTP/1.1 answer's head from `stream`, lower-cased.
pub(crate) async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("the server answers")
            .unwrap();
        assert_eq!(n, 1, "the connection closed before the answer's head ended");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// An HTTP/2 client connection to `addr` (the connection runs on a task): its request sender.
pub(crate) async fn http2_sender(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `request` (raw HTTP/1.x) over a new connection to `addr` and reads until the server
/// closes it, at most 10 s: everything the client received.
pub(crate) async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .ok();
    received
}
