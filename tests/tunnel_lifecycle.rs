//! Tunnel lifecycle on loopback: pooled connections that close after each request, reconnect
//! backoff of sessions that keep dropping, graceful shutdown of tunnel requests, startup
//! timeouts that must not leave work behind, and TCP forwarding of server-first protocols.

#[path = "tunnel/support.rs"]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_webhook::BoxError;
use tower_webhook::tunnel::{
    Bore, BoxFuture, LocalTunnel, Provider, Server, Session, Tunnel, Upstream,
};

use support::{LtServer, get_url, hello_service};

/// A bore server written for these tests, on 127.0.0.1 with a control port of its own: answers
/// `Hello` with a fresh public port, announces each public connection with `Connection(id)` and
/// pipes it into the control connection that sends `Accept(id)`. No secret, no heartbeat.
struct FakeBore {
    control_port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Pending = Arc<Mutex<HashMap<String, TcpStream>>>;

async fn read_frame(stream: &mut TcpStream) -> Option<serde_json::Value> {
    let mut frame = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        if byte[0] == 0 {
            return serde_json::from_slice(&frame).ok();
        }
        frame.push(byte[0]);
    }
}

async fn write_frame(stream: &mut TcpStream, value: serde_json::Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(&value).unwrap();
    bytes.push(0);
    stream.write_all(&bytes).await
}

impl FakeBore {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let control_port = listener.local_addr().unwrap().port();
        let pending: Pending = Arc::default();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                tasks.spawn(Self::control(stream, Arc::clone(&pending)));
            }
        });
        Self { control_port, task }
    }

    async fn control(mut stream: TcpStream, pending: Pending) {
        let Some(first) = read_frame(&mut stream).await else {
            return;
        };
        if first.get("Hello").is_some() {
            let public = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = public.local_addr().unwrap().port();
            if write_frame(&mut stream, serde_json::json!({ "Hello": port }))
                .await
                .is_err()
            {
                return;
            }
            while let Ok((conn, _)) = public.accept().await {
                let id = uuid::Uuid::new_v4().to_string();
                pending.lock().unwrap().insert(id.clone(), conn);
                let message = serde_json::json!({ "Connection": id });
                if write_frame(&mut stream, message).await.is_err() {
                    return;
                }
            }
        } else if let Some(id) = first.get("Accept").and_then(|id| id.as_str()) {
            let conn = pending.lock().unwrap().remove(id);
            if let Some(mut conn) = conn {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut conn).await;
            }
        }
    }

    fn bore(&self) -> Bore {
        Bore::new()
            .server("127.0.0.1")
            .control_port(self.control_port)
            .startup_timeout(Duration::from_secs(2))
    }
}

/// Reads one HTTP answer from `stream` until the peer closes; the status code.
async fn status_of(mut stream: TcpStream) -> Result<u16, String> {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
        .map_err(|err| format!("connection failed: {err}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
}

#[tokio::test]
async fn localtunnel_keeps_its_tunnel_when_requests_close_their_connections() {
    // The localtunnel server forwards the public request's headers, `Connection: close`
    // included, so each such request uses up one pooled connection: that is normal traffic,
    // not a server that drops the client.
    let server = LtServer::start().await;
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://127.0.0.1:{}", server.addr.port()))
                .max_connections(1)
                .startup_timeout(Duration::from_secs(2)),
        )
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let url = handle.url();
    let mut events = handle.events();
    for i in 0..10 {
        // `get_url` sends `Connection: close`.
        let (status, body) = get_url(&url, &format!("/hook/{i}")).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        server.state.registrations.load(Ordering::SeqCst),
        1,
        "the tunnel was re-registered"
    );
    let event = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
    assert!(event.is_err(), "unexpected event {event:?}");
    assert!(handle.status().is_up());
    handle.close().await;
}

/// A provider whose tunnels drop as soon as they open.
#[derive(Debug)]
struct Flapping(Arc<AtomicUsize>);

impl Provider for Flapping {
    fn name(&self) -> &str {
        "flapping"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Ok(Session::spawn("http://127.0.0.1:9", |_stop| async {
                Err::<(), BoxError>("dropped at once".into())
            }))
        })
    }
}

#[tokio::test]
async fn a_tunnel_that_keeps_dropping_is_reopened_with_growing_delays() {
    let opens = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(Flapping(Arc::clone(&opens)))
        .probe(false)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let opened = opens.load(Ordering::SeqCst);
    handle.close().await;
    // With delays of 50 ms doubling to 400 ms (jitter halves them at most), 1.2 s leave room
    // for about 7 opens; a backoff that restarts at 50 ms after each open gives 25 or more.
    assert!(
        (2..=10).contains(&opened),
        "{opened} opens in 1.2 s: the backoff does not grow"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_requests_through_the_tunnel_finish() {
    let bore = FakeBore::start().await;
    let app = tower::service_fn(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .tunnel(Tunnel::builder().provider(bore.bore()))
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(app)
        .await
        .unwrap();
    let url = running.tunnel_url().unwrap();
    let public = url.trim_start_matches("http://").to_owned();

    let mut stream = TcpStream::connect(&public).await.unwrap();
    stream
        .write_all(
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // The request is in the service when the shutdown starts.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop_tx.send(()).unwrap();
    let status = status_of(stream).await;
    tokio::time::timeout(Duration::from_secs(2), running.wait())
        .await
        .expect("the server did not stop");
    assert_eq!(status, Ok(200));
}

#[tokio::test]
async fn bore_forwards_a_protocol_where_the_local_server_speaks_first() {
    // An SMTP-like local server greets first; a bore tunnel to an address pipes any protocol.
    let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let local_addr = local.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = local.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"220 ready\r\n").await;
                let mut line = [0u8; 64];
                let n = stream.read(&mut line).await.unwrap_or(0);
                let _ = stream.write_all(&line[..n]).await;
            });
        }
    });
    let bore = FakeBore::start().await;
    let handle = Tunnel::builder()
        .provider(bore.bore())
        .start(local_addr)
        .await
        .unwrap();
    let public = handle.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&public).await.unwrap();
    let mut greeting = [0u8; 11];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut greeting)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "no greeting through the tunnel: {read:?}"
    );
    assert_eq!(&greeting, b"220 ready\r\n");
    stream.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
    handle.close().await;
}

#[cfg(feature = "ngrok")]
#[tokio::test]
async fn an_ngrok_start_that_times_out_leaves_no_connection_behind() {
    use tower_webhook::tunnel::Ngrok;
    // An ingress that accepts TCP and never answers the TLS handshake.
    let ingress = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = ingress.local_addr().unwrap();
    let err = Tunnel::builder()
        .provider(
            Ngrok::new()
                .authtoken("test-token")
                .server_addr(addr.to_string())
                .startup_timeout(Duration::from_millis(300)),
        )
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not start"), "{err}");
    let (mut conn, _) = tokio::time::timeout(Duration::from_millis(500), ingress.accept())
        .await
        .expect("ngrok never connected")
        .unwrap();
    // The attempt is over: its connection must be closed, not left handshaking forever.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the timed-out ngrok attempt still holds its connection"
    );
}
