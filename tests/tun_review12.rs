//! Twelfth review of the tunnel bootstrapper, on loopback: an HTTP/1.1 upgrade (a WebSocket, say)
//! answered `101 Switching Protocols` by the service carries bytes afterwards, on the server
//! helper's port, through a tunnel to a service and through a tunnel to an address.

#[path = "tunnel/support.rs"]
mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::BoreServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_webhook::tunnel::{Bore, Server, Tunnel, Upstream};

/// A service that answers an `upgrade: echo` request with 101 and then echoes every byte of
/// the upgraded connection back; any other request gets 200 "plain".
#[derive(Clone)]
struct EchoUpgrade;

impl tower::Service<Request<Incoming>> for EchoUpgrade {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if request.headers().get(header::UPGRADE).is_none() {
            return std::future::ready(Ok(Response::new(Full::from("plain"))));
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    eprintln!("upgrade failed: {err}");
                    return;
                }
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::CONNECTION, "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert(header::UPGRADE, "echo".parse().unwrap());
        std::future::ready(Ok(response))
    }
}

/// Upgrades a connection to `addr` (with `host`) and sends bytes through it; the head of the
/// answer and what came back (or why nothing did).
async fn upgrade_and_echo(addr: SocketAddr, host: &str) -> Result<(String, String), String> {
    upgraded(addr, host)
        .await
        .map(|(head, echoed, _)| (head, echoed))
}

/// As `upgrade_and_echo`, with the upgraded connection, still open.
async fn upgraded(addr: SocketAddr, host: &str) -> Result<(String, String, TcpStream), String> {
    let work = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let head = format!(
            "GET /ws HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
        );
        tcp.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
            answer.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&answer).into_owned();
        let mut echoed = Vec::new();
        for word in ["ping ", "through ", "the upgrade"] {
            tcp.write_all(word.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut got = vec![0u8; word.len()];
            tcp.read_exact(&mut got)
                .await
                .map_err(|e| format!("after {head:?}: {e}"))?;
            echoed.extend_from_slice(&got);
        }
        Ok((head, String::from_utf8_lossy(&echoed).into_owned(), tcp))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// `EchoUpgrade` on a loopback port of its own, upgrades enabled (as `axum::serve` serves).
async fn serve_with_upgrades() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request| {
                    use tower::ServiceExt;
                    EchoUpgrade.oneshot(request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Whether `tcp` is closed (or reset) by the other end within 5 s.
async fn ends(mut tcp: TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn assert_echoed(result: Result<(String, String), String>) {
    let (head, echoed) = result.unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echoed, "ping through the upgrade");
}

/// `Server` (and `tunnel::start`) serve any tower service, as `axum::serve` does: a WebSocket
/// route answered 101 must get its upgraded connection, not an error.
#[tokio::test]
async fn the_server_helper_port_carries_an_upgraded_connection() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::bind((Ipv4Addr::LOCALHOST, 0).into()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let running = server
        .with_graceful_shutdown(async {
            stopped.await.ok();
        })
        .spawn(EchoUpgrade)
        .await
        .unwrap();
    assert_echoed(upgrade_and_echo(addr, "localhost").await);
    // Plain requests are still answered.
    let (status, body) = support::get(addr, "localhost", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server shut down");
}

/// A service upstream serves each tunnel connection itself: the upgrade works through it.
#[tokio::test]
async fn a_service_upstream_carries_an_upgraded_connection_through_bore() {
    let ip = Ipv4Addr::new(127, 0, 12, 1);
    let _bore = BoreServer::start(ip, None).await;
    let handle = Tunnel::builder()
        .provider(
            Bore::new()
                .server(ip.to_string())
                .startup_timeout(Duration::from_secs(5)),
        )
        .start(Upstream::service(EchoUpgrade))
        .await
        .unwrap();
    let uri: http::Uri = handle.url().parse().unwrap();
    let public = SocketAddr::new(ip.into(), uri.port_u16().unwrap());
    assert_echoed(upgrade_and_echo(public, uri.authority().unwrap().as_str()).await);
    handle.close().await;
}

/// An address upstream forwards requests to the local server over HTTP (the port cloudflared is
/// given, localtunnel's pooled connections): the 101 and the bytes after it go both ways.
#[tokio::test]
async fn an_address_upstream_forwards_an_upgraded_connection() {
    let local = serve_with_upgrades().await;
    let upstream = Upstream::address(local);
    let port = upstream.local_addr().await.unwrap();
    assert_echoed(upgrade_and_echo(port, "localhost").await);
    let (status, body) = support::get(port, "localhost", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
}

/// An upgraded connection served through a tunnel ends when the tunnel is closed, as every
/// connection served through it does: it does not keep a connection to the tunnel server (and
/// the public client) open after `close()`.
#[tokio::test]
async fn an_upgraded_connection_through_a_tunnel_ends_when_it_closes() {
    let ip = Ipv4Addr::new(127, 0, 12, 2);
    let _bore = BoreServer::start(ip, None).await;
    let handle = Tunnel::builder()
        .provider(
            Bore::new()
                .server(ip.to_string())
                .startup_timeout(Duration::from_secs(5)),
        )
        .start(Upstream::service(EchoUpgrade))
        .await
        .unwrap();
    let uri: http::Uri = handle.url().parse().unwrap();
    let public = SocketAddr::new(ip.into(), uri.port_u16().unwrap());
    let (head, echoed, tcp) = upgraded(public, uri.authority().unwrap().as_str())
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echoed, "ping through the upgrade");
    handle.close().await;
    assert!(
        ends(tcp).await,
        "the upgraded connection outlived the tunnel"
    );
}

/// The server helper's port: its connections end after the drain, upgraded ones too.
#[tokio::test]
async fn an_upgraded_connection_on_the_server_port_ends_with_the_server() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::bind((Ipv4Addr::LOCALHOST, 0).into()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let running = server
        .with_graceful_shutdown(async {
            stopped.await.ok();
        })
        .spawn(EchoUpgrade)
        .await
        .unwrap();
    let (_, echoed, tcp) = upgraded(addr, "localhost").await.unwrap();
    assert_eq!(echoed, "ping through the upgrade");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server shut down");
    assert!(
        ends(tcp).await,
        "the upgraded connection outlived the server"
    );
}
