//! Tunnel lifecycle on loopback: pooled connections that close after each request, reconnect
//! backoff of sessions that keep dropping, graceful shutdown of tunnel requests, startup
//! timeouts that must not leave work behind, TCP forwarding of server-first protocols, and the
//! limits that keep a broken peer from using up resources: paced accept failures, bore's cap on
//! concurrent connections and its heartbeat, header read timeouts, timeouts too long for a
//! deadline.

use crate::child;
use crate::support;

use crate::bore_frames;
use crate::gated;
use bore_frames::{read_frame, write_frame};
use gated::{gated, next_entered};

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
    BORE_MAX_CONNECTIONS, Bore, BoxFuture, LocalTunnel, Provider, SESSION_STOP_GRACE, Server,
    Session, Tunnel, TunnelEvent, TunnelHandle, Upstream,
};

use support::{LT_MAX_CONN, Logs, LtServer, eventually, get, get_url, hello_service};

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
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
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

/// Past `max_connections`, the server helper accepts no new connection until one ends: many
/// idle or slow clients take no more tasks and file descriptors than that. The connection
/// waiting in the backlog is served as soon as one ends, and the limit is logged once.
#[tokio::test]
async fn the_server_helper_serves_at_most_max_connections_at_once() {
    let (logs, _guard) = Logs::capture();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let calls = Arc::new(AtomicUsize::new(0));
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .max_connections(2)
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(hello_service(Arc::clone(&calls)))
        .await
        .unwrap();
    let addr = running.local_addr();
    // Two connections that send nothing yet: each holds a place.
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let waited =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer)).await;
    assert!(waited.is_err(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Logged when the server takes the third from the backlog, which a busy machine may delay.
    support::eventually(Duration::from_secs(10), || {
        logs.text().contains("connection limit reached")
    })
    .await;
    assert_eq!(
        logs.text().matches("connection limit reached").count(),
        1,
        "{}",
        logs.text()
    );
    // One ends: the third is served.
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .unwrap();
}

/// `tunnel::Server` serving `app` through `provider`, until the returned sender fires: the
/// running server and the tunnel's public `host:port`.
async fn serve_through<S>(
    provider: impl Provider + 'static,
    app: S,
) -> (
    tower_webhook::tunnel::Running,
    String,
    tokio::sync::oneshot::Sender<()>,
)
where
    S: tower::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .tunnel(Tunnel::builder().provider(provider))
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(app)
        .await
        .unwrap();
    let public = running
        .tunnel_url()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    (running, public, stop_tx)
}

/// Waits until `addr` refuses connections: the server's drain has started (it stops listening
/// first).
async fn until_refused(addr: SocketAddr) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server kept listening after its shutdown signal");
}

#[tokio::test]
async fn graceful_shutdown_lets_requests_through_the_tunnel_finish() {
    let bore = FakeBore::start().await;
    let (app, mut entered, release) = gated();
    let (running, public, stop_tx) = serve_through(bore.bore(), app).await;

    let mut stream = TcpStream::connect(&public).await.unwrap();
    stream
        .write_all(
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // The request is in the service when the shutdown starts, and stays there past its start.
    assert_eq!(next_entered(&mut entered).await, "/hook");
    stop_tx.send(()).unwrap();
    until_refused(running.local_addr()).await;
    release.add_permits(1);
    let status = status_of(stream).await;
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server did not stop");
    assert_eq!(status, Ok(200));
}

#[tokio::test]
async fn requests_that_reach_the_tunnel_during_the_drain_finish_too() {
    let bore = FakeBore::start().await;
    let (app, mut entered, release) = gated();
    let (running, public, stop_tx) = serve_through(bore.bore(), app).await;
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").into_bytes()
    };

    let mut early = TcpStream::connect(&public).await.unwrap();
    early.write_all(&post("/early")).await.unwrap();
    assert_eq!(next_entered(&mut entered).await, "/early");
    stop_tx.send(()).unwrap();
    // The drain has started; the tunnel is still open and a delivery comes through it.
    until_refused(running.local_addr()).await;
    let mut late = TcpStream::connect(&public).await.unwrap();
    late.write_all(&post("/late")).await.unwrap();
    assert_eq!(next_entered(&mut entered).await, "/late");

    // It outlives the early request, the only one open when the drain started.
    release.add_permits(1);
    let early = read_to_close(early).await;
    assert!(early.starts_with("HTTP/1.1 200 "), "{early}");
    release.add_permits(1);
    let late = read_to_close(late).await;
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server did not stop");
    assert!(late.starts_with("HTTP/1.1 200 "), "{late}");
    assert!(
        late.to_ascii_lowercase().contains("connection: close"),
        "{late}"
    );
}

/// A provider whose tunnel drops when the test says so (`drop_now`); counts its opens.
#[derive(Debug)]
struct DropsOnCue {
    opens: Arc<AtomicUsize>,
    drop_now: Arc<tokio::sync::Notify>,
}

impl Provider for DropsOnCue {
    fn name(&self) -> &str {
        "drops-on-cue"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let drop_now = Arc::clone(&self.drop_now);
        Box::pin(async move {
            Ok(Session::spawn(
                "http://127.0.0.1:9",
                |mut stop| async move {
                    tokio::select! {
                        () = stop.stopped() => Ok(()),
                        () = drop_now.notified() => Err::<(), BoxError>("the tunnel's process was stopped".into()),
                    }
                },
            ))
        })
    }
}

/// A tunnel that drops while the server drains (a Ctrl-C that reached the tunnel's own
/// process too) is not re-opened: a new tunnel, at another URL or through a fallback, would
/// outlive nothing and could be announced while the server stops. The server still drains
/// and stops.
#[tokio::test]
async fn a_tunnel_that_drops_during_the_drain_is_not_reopened() {
    let opens = Arc::new(AtomicUsize::new(0));
    let drop_now = Arc::new(tokio::sync::Notify::new());
    let (app, mut entered, release) = gated();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .tunnel(
            Tunnel::builder()
                .provider(DropsOnCue {
                    opens: Arc::clone(&opens),
                    drop_now: Arc::clone(&drop_now),
                })
                .probe(false)
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20)),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(app)
        .await
        .unwrap();
    let status = running.tunnel_watch().unwrap();
    assert_eq!(opens.load(Ordering::SeqCst), 1);

    // A delivery in the handler keeps the drain going.
    let mut stream = TcpStream::connect(running.local_addr()).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next_entered(&mut entered).await, "/hook");
    stop_tx.send(()).unwrap();
    until_refused(running.local_addr()).await;

    drop_now.notify_one();
    let down = eventually(Duration::from_secs(5), || {
        matches!(*status.borrow(), TunnelEvent::Down { .. })
    })
    .await;
    assert!(down, "the tunnel did not drop: {:?}", *status.borrow());
    // Many times the backoff: a re-open would have happened by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1,
        "re-opened during the drain"
    );

    release.add_permits(1);
    let answer = read_to_close(stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server did not stop");
    assert!(matches!(*status.borrow(), TunnelEvent::Closed { .. }));
    assert_eq!(opens.load(Ordering::SeqCst), 1);
}

/// Everything the peer sends until it closes the connection (at most 5 s).
async fn read_to_close(mut stream: TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// An SMTP-like local server on loopback: it greets first (`220 ready`), then echoes the
/// first line it reads.
async fn greeting_server() -> SocketAddr {
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
    local_addr
}

/// Through the tunnel at `url`, [`greeting_server`]'s greeting comes first, and a line sent is
/// echoed.
async fn greeted_through(url: &str) {
    let public = url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&public).await.unwrap();
    let mut greeting = [0u8; 11];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "no greeting through the tunnel: {read:?}"
    );
    assert_eq!(&greeting, b"220 ready\r\n");
    stream.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

#[tokio::test]
async fn bore_forwards_a_protocol_where_the_local_server_speaks_first() {
    // An SMTP-like local server greets first; a bore tunnel to an address pipes any protocol.
    let local_addr = greeting_server().await;
    let bore = FakeBore::start().await;
    let handle = Tunnel::builder()
        .provider(bore.bore())
        .start(local_addr)
        .await
        .unwrap();
    greeted_through(&handle.url()).await;
    handle.close().await;
}

/// A TCP relay from `listen` to `to` that hands each chunk coming back from `to` on 100 ms
/// late: a tunnel server across a real network, where a probe's request reaches the client a
/// round trip after the connection it comes on.
async fn slow_return_relay(listen: SocketAddr, to: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let forth = tokio::io::copy(&mut client_rx, &mut server_tx);
                let back = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = server_rx.read(&mut buf).await.unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if n == 0 || client_tx.write_all(&buf[..n]).await.is_err() {
                            let _ = client_tx.shutdown().await;
                            return;
                        }
                    }
                };
                let _ = tokio::join!(forth, back);
            });
        }
    })
}

/// The real bore server behind a relay that delays what it sends: the tunnel's probe request
/// comes long after the local SMTP-like server's greeting. Before, the greeting ended the wait
/// for the public side at once and the probe was piped to the local server: every start failed.
#[tokio::test]
async fn bore_starts_for_a_server_that_speaks_first_when_the_probe_comes_late() {
    let local_addr = greeting_server().await;
    // Public ports, and the relay to the control port, on one address; the server's control
    // port on another.
    let (public_ip, control_ip) = (Ipv4Addr::new(127, 0, 14, 1), Ipv4Addr::new(127, 0, 14, 2));
    let _server = support::start_bore_server(control_ip, public_ip, None).await;
    let relay = slow_return_relay((public_ip, 7835).into(), (control_ip, 7835).into()).await;
    let handle = Tunnel::builder()
        .provider(
            Bore::new()
                .server(public_ip.to_string())
                .startup_timeout(Duration::from_secs(10)),
        )
        .start(local_addr)
        .await
        .expect("the probe was answered");
    // Not starting any more: the greeting goes through at once, and the rest is piped.
    greeted_through(&handle.url()).await;
    handle.close().await;
    relay.abort();
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
                .startup_timeout(Duration::from_secs(2)),
        )
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_err();
    // Given up within the startup timeout, naming the ingress that did not answer.
    assert!(err.to_string().contains("did not answer"), "{err}");
    // Its connection waits in the backlog.
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(1), ingress.accept())
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

/// A bore control port driven by the test: the first connection is the control connection
/// (answered `Hello(port)`, then handed to the test, which writes `Connection` messages and no
/// heartbeat); every later connection is held open, its first frame (`Accept(id)`) counted.
struct ScriptedBore {
    control_port: u16,
    control: tokio::sync::oneshot::Receiver<TcpStream>,
    accepts: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedBore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedBore {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let control_port = listener.local_addr().unwrap().port();
        let (control_tx, control) = tokio::sync::oneshot::channel();
        let accepts = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (counted, holding) = (Arc::clone(&accepts), Arc::clone(&held));
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_frame(&mut stream).await.expect("no Hello");
            write_frame(&mut stream, serde_json::json!({ "Hello": 1 }))
                .await
                .unwrap();
            let _ = control_tx.send(stream);
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counted, holding) = (Arc::clone(&counted), Arc::clone(&holding));
                tasks.spawn(async move {
                    let frame = read_frame(&mut stream).await;
                    if frame.as_ref().is_some_and(|f| f.get("Accept").is_some()) {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    holding.lock().unwrap().push(stream);
                });
            }
        });
        Self {
            control_port,
            control,
            accepts,
            held,
            task,
        }
    }

    fn bore(&self) -> Bore {
        Bore::new()
            .server("127.0.0.1")
            .control_port(self.control_port)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Closes `n` held `Accept` connections.
    fn close_held(&self, n: usize) {
        let mut held = self.held.lock().unwrap();
        let keep = held.len().saturating_sub(n);
        held.truncate(keep);
    }
}

async fn announce(control: &mut TcpStream, connections: usize) {
    for _ in 0..connections {
        let id = uuid::Uuid::new_v4().to_string();
        write_frame(control, serde_json::json!({ "Connection": id }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn bore_opens_at_most_the_capped_number_of_connections_at_once() {
    let mut server = ScriptedBore::start().await;
    let handle = Tunnel::builder()
        .provider(server.bore())
        .probe(false)
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let mut control = (&mut server.control).await.unwrap();
    // A server announcing far more public connections than the client should carry at once.
    announce(&mut control, BORE_MAX_CONNECTIONS + 44).await;
    assert!(
        eventually(Duration::from_secs(10), || server.accepts()
            >= BORE_MAX_CONNECTIONS)
        .await,
        "only {} connections opened",
        server.accepts()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.accepts(),
        BORE_MAX_CONNECTIONS,
        "connections beyond the cap were opened"
    );
    // Connections that end free their places for new ones.
    server.close_held(6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    announce(&mut control, 10).await;
    assert!(
        eventually(Duration::from_secs(10), || server.accepts()
            >= BORE_MAX_CONNECTIONS + 6)
        .await,
        "freed places were not used: {} connections",
        server.accepts()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.accepts(), BORE_MAX_CONNECTIONS + 6);
    assert!(handle.status().is_up());
    handle.close().await;
}

#[tokio::test(start_paused = true)]
async fn bore_heartbeat_timeout_is_not_reset_by_connections_that_end() {
    let mut server = ScriptedBore::start().await;
    let handle = Tunnel::builder()
        .provider(server.bore())
        .probe(false)
        .reconnect(false)
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut events = handle.events();
    let mut control = (&mut server.control).await.unwrap();
    // Three connections, then silence on the control connection; the connections end one by
    // one, 5 s apart. The server is gone after 8 s without a message, whatever ends meanwhile.
    announce(&mut control, 3).await;
    assert!(eventually(Duration::from_secs(1), || server.accepts() == 3).await);
    let closer = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            server.close_held(1);
        }
        std::future::pending::<()>().await;
    };
    let down = tokio::select! {
        () = closer => unreachable!(),
        event = tokio::time::timeout(Duration::from_secs(30), events.next()) => event,
    };
    let elapsed = started.elapsed();
    match down {
        Ok(Some(TunnelEvent::Down { reason, .. })) => {
            assert!(reason.contains("no heartbeat"), "{reason}")
        }
        other => panic!("expected Down, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(10),
        "the tunnel was declared lost after {elapsed:?} of silence, not 8 s"
    );
    drop(control);
    handle.close().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_default_header_read_timeout() {
    let upstream = Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))));
    let addr = upstream.local_addr().await.unwrap();
    let started = tokio::time::Instant::now();
    // Connects and never sends a request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(120), idle.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "an idle connection was kept for 120 s");
    let elapsed = started.elapsed();
    assert!(
        (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&elapsed),
        "closed after {elapsed:?}, expected 30 s"
    );
}

#[tokio::test]
async fn a_configured_header_read_timeout_closes_idle_tunnel_connections() {
    let bore = FakeBore::start().await;
    let handle = Tunnel::builder()
        .provider(bore.bore())
        .start(
            Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
                .header_read_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let url = handle.url();
    let public = url.trim_start_matches("http://").to_owned();
    // Nothing sent; half a request head sent. The server's timers start when it takes the
    // connections, after `started`.
    let started = std::time::Instant::now();
    let silent = TcpStream::connect(&public).await.unwrap();
    let mut partial = TcpStream::connect(&public).await.unwrap();
    partial
        .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Closed after 200 ms, not the default 30 s; the bound leaves room for a loaded machine.
    for mut stream in [silent, partial] {
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "a connection without a request head was kept"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
    // A request sent in time is answered.
    let (status, body) = get_url(&url, "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    handle.close().await;
}

#[tokio::test]
async fn the_server_helper_closes_idle_connections_after_its_header_read_timeout() {
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .header_read_timeout(Duration::from_millis(200))
        .with_graceful_shutdown(std::future::pending())
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap();
    let mut idle = TcpStream::connect(running.local_addr()).await.unwrap();
    let mut sink = Vec::new();
    // Closed after 200 ms, not the default 30 s; the bound leaves room for a loaded machine.
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "an idle connection was kept");
    let (status, body) = get(running.local_addr(), "x", "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn localtunnel_pool_connections_wait_beyond_the_header_read_timeout() {
    // Pooled connections are idle until the server hands them a request: they are not public
    // clients that stall.
    let server = LtServer::start().await;
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://127.0.0.1:{}", server.addr.port()))
                .startup_timeout(Duration::from_secs(2)),
        )
        .start(
            Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
                .header_read_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let id = handle
        .url()
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let client = server.client(&id).unwrap();
    // The pool is full again after the probe used up one connection.
    let full = eventually(Duration::from_secs(10), || {
        client.connected.load(Ordering::SeqCst) == LT_MAX_CONN
    })
    .await;
    assert!(full, "the pool did not fill");
    let before = client.accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.accepted.load(Ordering::SeqCst),
        before,
        "idle pooled connections were closed and opened again"
    );
    let (status, body) = get_url(&handle.url(), "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    handle.close().await;
}

#[tokio::test]
async fn timeouts_too_long_for_a_deadline_do_not_panic() {
    let bore = FakeBore::start().await;
    let upstream = Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
        .header_read_timeout(Duration::MAX);
    let handle = Tunnel::builder()
        .provider(bore.bore().startup_timeout(Duration::MAX))
        .probe_timeout(Duration::MAX)
        .reconnect_backoff(Duration::MAX, Duration::MAX)
        .start(upstream.clone())
        .await
        .unwrap();
    assert!(matches!(
        handle.status(),
        TunnelEvent::Up { verified: true, .. }
    ));
    let (status, body) = get_url(&handle.url(), "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let local = upstream.local_addr().await.unwrap();
    let (status, body) = get(local, "x", "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    handle.close().await;
}

/// Set in the child process of [`accept_failures_are_logged_and_paced`].
const ACCEPT_CHILD: &str = "TOWER_WEBHOOK_TEST_ACCEPT_CHILD";

/// User plus system CPU time of this process, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Runs the body in a child process whose file descriptors are limited, so that `accept` fails
/// with EMFILE: the accept loops of `Upstream::local_addr` and `Server` must log the failure and
/// pause instead of trying again at once (which burns a core while the connection waits).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn accept_failures_are_logged_and_paced() {
    if std::env::var_os(ACCEPT_CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
            .arg(exe)
            .args([
                &child::test_path(module_path!(), "accept_failures_are_logged_and_paced"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ACCEPT_CHILD, "1")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("test result: ok. 1 passed"),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let logs = Logs::global();

    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = Upstream::service(hello_service(Arc::clone(&calls)));
    let upstream_addr = upstream.local_addr().await.unwrap();
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .with_graceful_shutdown(std::future::pending())
        .spawn(hello_service(Arc::clone(&calls)))
        .await
        .unwrap();
    let server_addr = running.local_addr();

    let before = cpu_ticks();
    // Use up the descriptors but two, one for a client of each listener: accepting then fails.
    let mut files = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        files.push(file);
    }
    files.truncate(files.len() - 2);
    let mut clients = Vec::new();
    for addr in [upstream_addr, server_addr] {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(files);
    let spent = cpu_ticks() - before;
    // Clock ticks are 10 ms: an accept loop that spins takes about 60.
    assert!(
        spent < 20,
        "{spent} clock ticks of CPU in 600 ms: an accept loop spins"
    );

    // Both listeners recover once descriptors are free.
    for mut client in clients {
        client
            .write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(client).await, Ok(200));
    }
    let text = logs.text();
    let warnings = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("accept failed"))
        .count();
    assert_eq!(
        warnings, 2,
        "expected one warning per listener for the run of failures:\n{text}"
    );
    assert!(
        text.contains("Too many open files") || text.contains("os error 24"),
        "{text}"
    );
}

/// A provider whose tunnel never passes the probe and whose teardown never ends, as an SDK's close
/// that waits on its service without a timeout would; its task holds `held` until it ends.
#[derive(Debug)]
struct HangingTeardown {
    url: String,
    held: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Provider for HangingTeardown {
    fn name(&self) -> &str {
        "hanging-teardown"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        let held = self.held.lock().unwrap().take();
        let url = self.url.clone();
        Box::pin(async move {
            Ok(Session::spawn(url, |mut stop| async move {
                let _held = held;
                stop.stopped().await;
                std::future::pending::<()>().await;
                Ok(())
            }))
        })
    }
}

/// The probe fails, so the chain stops the session, with the close grace (SESSION_STOP_GRACE by
/// default), while it goes on; the failed start waits for that teardown, which is aborted once
/// the grace is over.
#[tokio::test(start_paused = true)]
async fn a_session_whose_probe_failed_and_whose_teardown_hangs_is_aborted_after_the_grace() {
    let (held, mut released) = tokio::sync::oneshot::channel::<()>();
    let provider = HangingTeardown {
        url: format!("http://127.0.0.1:{}", crate::unopened::closed_port()),
        held: Mutex::new(Some(held)),
    };
    let started = tokio::time::Instant::now();
    let err = Tunnel::builder()
        .provider(provider)
        .probe_timeout(Duration::from_millis(200))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hanging-teardown"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= SESSION_STOP_GRACE,
        "the teardown got no time: {took:?}"
    );
    assert!(
        took < SESSION_STOP_GRACE + Duration::from_secs(1),
        "the teardown was not cut at its grace: {took:?}"
    );
    assert!(
        matches!(
            released.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ),
        "the task of the session still runs after the failed start"
    );
}

/// A session dropped by its owner (not closed) whose teardown hangs is aborted after
/// `SESSION_STOP_GRACE`, its task ending.
#[tokio::test(start_paused = true)]
async fn a_session_dropped_by_its_owner_whose_teardown_hangs_is_aborted_after_the_grace() {
    let (held, mut released) = tokio::sync::oneshot::channel::<()>();
    let session = Session::spawn("http://127.0.0.1:9".to_owned(), |mut stop| async move {
        let _held = held;
        stop.stopped().await;
        std::future::pending::<()>().await;
        Ok(())
    });
    drop(session);
    let second = Duration::from_secs(1);
    assert!(
        tokio::time::timeout(SESSION_STOP_GRACE - second, &mut released)
            .await
            .is_err(),
        "the teardown got no time"
    );
    let ended = tokio::time::timeout(2 * second, released).await;
    assert!(matches!(ended, Ok(Err(_))), "the task still runs");
}

#[tokio::test]
async fn the_server_helper_ends_local_connections_still_open_after_its_drain() {
    // The drain lasts its documented 10 s here: the request never finishes.
    let started = Arc::new(tokio::sync::Notify::new());
    let hanging = {
        let started = Arc::clone(&started);
        tower::service_fn(move |_req: Request<Incoming>| {
            let started = Arc::clone(&started);
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"never"))))
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(hanging)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(running.local_addr()).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the request reached the service");

    support::stop_through_the_drain(stop_tx, running).await;
    let mut rest = Vec::new();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
            .await
            .is_ok(),
        "a local request left after the drain outlived the server"
    );
}

/// A provider whose first tunnel serves the upstream on a loopback port until `lose` is
/// notified; every later one is still starting (its URL never answers the probe) and takes
/// 300 ms to tear down once asked to stop, after which it sets `torn_down`.
#[derive(Debug)]
struct SlowSecondStart {
    opens: Arc<AtomicUsize>,
    lose: Arc<tokio::sync::Notify>,
    starting: Arc<tokio::sync::Notify>,
    torn_down: Arc<std::sync::atomic::AtomicBool>,
    black_hole: SocketAddr,
}

impl SlowSecondStart {
    async fn new() -> Self {
        Self {
            opens: Arc::default(),
            lose: Arc::default(),
            starting: Arc::default(),
            torn_down: Arc::default(),
            black_hole: support::black_hole().await,
        }
    }
}

/// Closes `handle` (within a bound only a failure reaches) and asserts that the session being
/// torn down had finished by then.
async fn assert_close_waits_for(
    handle: TunnelHandle,
    torn_down: &std::sync::atomic::AtomicBool,
    message: &str,
) {
    tokio::time::timeout(Duration::from_secs(5), handle.close())
        .await
        .expect("close returns");
    assert!(torn_down.load(Ordering::SeqCst), "{message}");
}

impl Provider for SlowSecondStart {
    fn name(&self) -> &str {
        "slow-second-start"
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        let first = self.opens.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            if first {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let url = format!("http://{}", listener.local_addr()?);
                let lose = Arc::clone(&self.lose);
                return Ok(Session::spawn(url, |mut stop| async move {
                    loop {
                        tokio::select! {
                            () = stop.stopped() => return Ok(()),
                            () = lose.notified() => return Err("lost".into()),
                            Ok((tcp, _)) = listener.accept() => {
                                let upstream = upstream.clone();
                                tokio::spawn(async move { upstream.serve_connection(tcp).await });
                            }
                        }
                    }
                }));
            }
            let torn_down = Arc::clone(&self.torn_down);
            let session = Session::spawn(
                format!("http://{}", self.black_hole),
                |mut stop| async move {
                    stop.stopped().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    torn_down.store(true, Ordering::SeqCst);
                    Ok(())
                },
            );
            self.starting.notify_one();
            Ok(session)
        })
    }
}

/// `close` called while a lost tunnel is being re-opened (here: its probe is under way) returns
/// only once the tunnel being opened is torn down, as it does for an open tunnel.
#[tokio::test]
async fn closing_while_re_opening_waits_for_the_tunnel_being_opened() {
    let provider = SlowSecondStart::new().await;
    let (lose, starting, torn_down) = (
        Arc::clone(&provider.lose),
        Arc::clone(&provider.starting),
        Arc::clone(&provider.torn_down),
    );
    let handle = Tunnel::builder()
        .provider(provider)
        .probe_timeout(Duration::from_secs(10))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    lose.notify_one();
    tokio::time::timeout(Duration::from_secs(5), starting.notified())
        .await
        .expect("the tunnel is re-opened");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_close_waits_for(
        handle,
        &torn_down,
        "close returned while the tunnel being re-opened was still tearing down",
    )
    .await;
}

/// A minimum delay of zero re-opens at once the first time only: the delays still grow up to
/// the maximum while the tunnel keeps dropping, instead of re-opening in a tight loop.
#[tokio::test]
async fn a_zero_minimum_backoff_still_grows() {
    let opens = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(Flapping(Arc::clone(&opens)))
        .probe(false)
        .reconnect_backoff(Duration::ZERO, Duration::from_millis(400))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let opened = opens.load(Ordering::SeqCst);
    handle.close().await;
    assert!(
        (2..=30).contains(&opened),
        "{opened} opens in 1.2 s: the backoff does not grow from zero"
    );
}

/// A provider whose `open` never completes; notifies `started` when it is asked.
#[derive(Debug)]
struct NeverStarts {
    started: Arc<tokio::sync::Notify>,
}

impl Provider for NeverStarts {
    fn name(&self) -> &str {
        "never-starts"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        self.started.notify_one();
        Box::pin(std::future::pending())
    }
}

/// While a lost tunnel is re-opened, a provider whose session failed its probe is torn down
/// before the next provider is tried: `close` called during that next attempt returns only
/// once no session the tunnel started is still stopping.
#[tokio::test]
async fn closing_after_a_failed_probe_during_a_re_open_waits_for_that_session() {
    let provider = SlowSecondStart::new().await;
    let (lose, torn_down) = (Arc::clone(&provider.lose), Arc::clone(&provider.torn_down));
    let started = Arc::new(tokio::sync::Notify::new());
    let handle = Tunnel::builder()
        .provider(provider)
        .provider(NeverStarts {
            started: Arc::clone(&started),
        })
        .probe_timeout(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    lose.notify_one();
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the second provider is tried once the first one's probe failed");
    assert_close_waits_for(
        handle,
        &torn_down,
        "close returned while the session whose probe failed was still tearing down",
    )
    .await;
}

/// The fake cloudflared, forwarding its public requests to the server's port; `None` without
/// node.
fn proxying_cloudflared() -> Option<tower_webhook::tunnel::Cloudflared> {
    let fake = support::fake_cloudflared()?;
    Some(
        tower_webhook::tunnel::Cloudflared::new()
            .binary(&fake)
            .startup_timeout(Duration::from_secs(15))
            // The fake's tunnel is a loopback port (the edge), not in trycloudflare.com.
            .domain("")
            .arg("--fake-mode")
            .arg("proxy"),
    )
}

/// cloudflared reaches the service through the server's own port: its deliveries that arrive
/// during the drain come in there. The port stopped accepting at the shutdown signal, so they
/// were refused, and cloudflared answered them 502; it keeps accepting through the drain now,
/// one request per connection, and they are served.
#[tokio::test]
async fn deliveries_through_cloudflared_during_the_drain_are_served() {
    let Some(cloudflared) = proxying_cloudflared() else {
        return;
    };
    let (app, mut entered, release) = gated();
    let (running, public, stop_tx) = serve_through(cloudflared, app).await;
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };

    // The fake asks the origin once as it starts.
    assert_eq!(next_entered(&mut entered).await, "/from-fake-cloudflared");
    release.add_permits(1);

    // A delivery in the handler keeps the drain going.
    let mut early = TcpStream::connect(&public).await.unwrap();
    early.write_all(&post("/early")).await.unwrap();
    assert_eq!(next_entered(&mut entered).await, "/early");
    stop_tx.send(()).unwrap();
    let stopping = eventually(Duration::from_secs(5), || running.is_stopping()).await;
    assert!(stopping, "the shutdown signal was not taken");
    let mut late = TcpStream::connect(&public).await.unwrap();
    late.write_all(&post("/late")).await.unwrap();
    assert_eq!(next_entered(&mut entered).await, "/late");
    release.add_permits(2);
    let (early, late) = (read_to_close(early).await, read_to_close(late).await);
    assert!(early.starts_with("HTTP/1.1 200 "), "{early}");
    assert!(late.starts_with("HTTP/1.1 200 "), "{late}");
    let local = running.local_addr();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the server did not stop");
    assert!(TcpStream::connect(local).await.is_err(), "still accepting");
}

/// cloudflared takes deliveries until it has stopped (its edge lets it go, then its grace period
/// for the requests it forwards): the port stays open until then. It closed as soon as the drain
/// was over, before cloudflared was told to stop, so a delivery cloudflared took meanwhile was
/// refused at the port and answered 502. This cloudflared ignores SIGINT, as a real one busy
/// with its edge does for a while, and is killed after its 3 s stop grace.
#[tokio::test]
async fn a_delivery_through_cloudflared_while_it_stops_is_served() {
    let Some(cloudflared) = proxying_cloudflared() else {
        return;
    };
    let cloudflared = cloudflared
        .stop_grace(Duration::from_secs(3))
        .arg("--fake-ignore-sigint");
    let (app, mut entered, release) = gated();
    let (running, public, stop_tx) = serve_through(cloudflared, app).await;
    assert_eq!(next_entered(&mut entered).await, "/from-fake-cloudflared");
    release.add_permits(10);

    // Nothing in flight: the drain is over at once, and cloudflared is being stopped.
    stop_tx.send(()).unwrap();
    let stopping = eventually(Duration::from_secs(5), || running.is_stopping()).await;
    assert!(stopping, "the shutdown signal was not taken");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = TcpStream::connect(&public).await.unwrap();
    late.write_all(b"POST /while-stopping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(late).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(next_entered(&mut entered).await, "/while-stopping");
    let local = running.local_addr();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the server did not stop");
    assert!(TcpStream::connect(local).await.is_err(), "still accepting");
}

/// A service whose handler never answers, and is busy on its worker thread most of the time,
/// as one doing blocking work is: each request says so on the receiver once it is in; the flag
/// is set when its handler is dropped.
#[allow(clippy::type_complexity)]
fn busy() -> (
    impl tower::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    Busy,
) {
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let flag = Arc::clone(&dropped);
    let app = tower::service_fn(move |_req: Request<Incoming>| {
        let guard = SetOnDrop(Arc::clone(&flag));
        let entered = entered_tx.clone();
        async move {
            let _guard = guard;
            let _ = entered.send(());
            loop {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    (app, Busy { entered, dropped })
}

/// What [`busy`]'s requests tell.
struct Busy {
    /// A message per request in its handler.
    entered: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Set once a handler was dropped.
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl Busy {
    /// Waits (5 s at most) until the next request is in its handler.
    async fn entered(&mut self) {
        tokio::time::timeout(Duration::from_secs(5), self.entered.recv())
            .await
            .expect("no request in its handler within 5 s")
            .expect("the service is gone");
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `close` waits until everything is torn down: a request still in its handler when the tunnel
/// closes is ended by then. On a multi-thread runtime, a handler busy on another worker when
/// its connection's task was aborted was dropped only once that work was done, after `close`
/// had returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_its_handler_is_ended_when_close_returns() {
    let bore = FakeBore::start().await;
    let (app, mut busy) = busy();
    let handle = Tunnel::builder()
        .provider(bore.bore())
        .probe(false)
        .start(Upstream::service(app))
        .await
        .unwrap();
    let public = handle.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&public).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    busy.entered().await;
    handle.close().await;
    assert!(
        busy.dropped.load(Ordering::SeqCst),
        "the request was still in its handler when close returned"
    );
}

/// Runs the test `name` again alone in a child process (marked by the variable `marker`), where
/// it runs `test` on a runtime of two threads: the signals a test sends are the process's.
#[cfg(unix)]
fn alone_with_two_threads(name: &str, marker: &str, test: impl std::future::Future<Output = ()>) {
    if std::env::var_os(marker).is_none() {
        child::run_one(&mut child::alone(module_path!(), name, marker, "1"));
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// With its own stop signals (Ctrl-C, `SIGTERM`), the server drains open requests for up to 10 s
/// after the first; a second one ends the drain at once, as one pressing Ctrl-C again means it.
/// The second signal was not listened for, and the drain ran its 10 s. The server has stopped
/// once no handler runs any more: one busy on another worker ran on after `wait` returned. Run
/// alone in a child process: the signals are the process's.
#[cfg(unix)]
#[test]
fn a_second_stop_signal_cuts_the_drain_short() {
    alone_with_two_threads(
        "a_second_stop_signal_cuts_the_drain_short",
        "TOWER_WEBHOOK_SECOND_SIGNAL_CHILD",
        async {
            let (app, mut busy) = busy();
            let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .unwrap()
                .spawn(app)
                .await
                .unwrap();
            let mut held = TcpStream::connect(running.local_addr()).await.unwrap();
            held.write_all(b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            busy.entered().await;

            support::sigterm();
            let stopping = eventually(Duration::from_secs(5), || running.is_stopping()).await;
            assert!(stopping, "the first signal was not taken");
            // The request stays in its handler: the drain goes on.
            tokio::time::sleep(Duration::from_millis(300)).await;
            support::sigterm();
            let started = std::time::Instant::now();
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("the second signal did not end the drain");
            assert!(started.elapsed() < Duration::from_secs(5));
            // Stopped: no handler runs any more.
            assert!(
                busy.dropped.load(Ordering::SeqCst),
                "the request was still in its handler when the server had stopped"
            );
            let answer = read_to_close(held).await;
            assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
        },
    );
}

/// A second stop signal also ends the wait for the tunnel's close, which may take the tunnel's
/// stop grace (10 s here: this session never ends when told to). It was no longer listened for
/// once the drain was over. Run alone in a child process: the signals are the process's.
#[cfg(unix)]
#[test]
fn a_second_stop_signal_ends_the_wait_for_the_tunnel_to_close() {
    alone_with_two_threads(
        "a_second_stop_signal_ends_the_wait_for_the_tunnel_to_close",
        "TOWER_WEBHOOK_SECOND_SIGNAL_CLOSE_CHILD",
        async {
            let (held, _released) = tokio::sync::oneshot::channel::<()>();
            let provider = HangingTeardown {
                url: "http://127.0.0.1:9".to_owned(),
                held: Mutex::new(Some(held)),
            };
            let running = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .unwrap()
                .tunnel(Tunnel::builder().probe(false).provider(provider))
                .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
                .await
                .unwrap();
            support::sigterm();
            let stopping = eventually(Duration::from_secs(5), || running.is_stopping()).await;
            assert!(stopping, "the first signal was not taken");
            // Nothing to drain: the tunnel is being closed, and its session does not end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            support::sigterm();
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("the second signal did not end the wait for the tunnel's close");
        },
    );
}
