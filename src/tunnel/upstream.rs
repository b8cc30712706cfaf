//! What a tunnel leads to: a local address or a tower service.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;
use tower_service::Service;

use super::accept::Acceptor;
use crate::BoxError;

/// How long connecting to an address upstream's local server may take: one whose address drops
/// connection attempts (a host that is down, a firewall) is given up then, rather than after
/// the kernel's own limit (about two minutes on Linux).
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection served by an [`Upstream`] may take to send the head of a request
/// (request line and headers), by default. See [`Upstream::header_read_timeout`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::tunnel::{DEFAULT_HEADER_READ_TIMEOUT, Server};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_secs(30));
/// let server = Server::bind(([127, 0, 0, 1], 0).into()).await?;
/// assert!(format!("{server:?}").contains("header_read_timeout: 30s"));
/// # Ok(()) }
/// ```
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection piped to an address upstream is kept while neither side sends a byte,
/// by default. See [`Upstream::idle_timeout`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::tunnel::{DEFAULT_IDLE_TIMEOUT, Upstream};
///
/// assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(120));
/// // The default, said out loud.
/// let upstream = Upstream::address(([127, 0, 0, 1], 3000).into()).idle_timeout(DEFAULT_IDLE_TIMEOUT);
/// # let _ = upstream;
/// ```
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How many connections an [`Upstream`] serves at once on the ports it accepts on itself, by
/// default. See [`Upstream::max_connections`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{DEFAULT_MAX_CONNECTIONS, Server};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(DEFAULT_MAX_CONNECTIONS, 256);
/// let server = Server::bind(([127, 0, 0, 1], 0).into()).await?;
/// assert!(format!("{server:?}").contains("max_connections: 256"));
/// # Ok(()) }
/// ```
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The path of the round-trip probe request. See [`Upstream`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{PROBE_PATH, Upstream};
/// # async fn get(addr: std::net::SocketAddr, path: &str) -> String {
/// #     use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// #     let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
/// #     let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
/// #     tcp.write_all(head.as_bytes()).await.unwrap();
/// #     let mut answer = String::new();
/// #     tcp.read_to_string(&mut answer).await.unwrap();
/// #     answer
/// # }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
///     Ok::<_, std::convert::Infallible>(http::Response::new(format!("app saw {}", req.uri().path())))
/// });
/// let upstream = Upstream::service(app);
/// // Without the nonce of a probe in flight, the probe path is an ordinary request.
/// let answer = get(upstream.local_addr().await?, PROBE_PATH).await;
/// assert!(answer.ends_with(&format!("app saw {PROBE_PATH}")));
/// # Ok(()) }
/// ```
pub const PROBE_PATH: &str = "/.well-known/tower-webhook/tunnel-probe";
/// The header that carries the probe's nonce.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{PROBE_HEADER, PROBE_PATH};
///
/// // What a probe request looks like on the wire.
/// let probe = http::Request::get(PROBE_PATH)
///     .header(PROBE_HEADER, "5f0c6e0b8d2a4b7c9e1f3a5b7c9d1e2f")
///     .body(())
///     .unwrap();
/// assert_eq!(probe.headers()["x-tower-webhook-probe"], "5f0c6e0b8d2a4b7c9e1f3a5b7c9d1e2f");
/// ```
pub const PROBE_HEADER: &str = "x-tower-webhook-probe";

type BoxBody = UnsyncBoxBody<Bytes, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How one connection is served, besides the service.
struct ConnOptions {
    probes: Arc<Probes>,
    /// Fires when the server helper's drain starts; held until the connection is over, so the
    /// drain waits for it.
    watcher: Option<watch::Receiver<()>>,
    /// Set for a connection that arrives during the server helper's drain: it serves one
    /// request, and the drain waits for it while it is open.
    late: Option<CountedConnection>,
    /// `None`: wait for a request's head as long as the peer keeps the connection.
    header_read_timeout: Option<Duration>,
    /// Set once the peer starts a request on the connection, whether hyper takes it or not (a
    /// localtunnel pooled connection, which is used up normally then, however soon it closes:
    /// after a request, or after a head hyper refused, as one of over 100 headers).
    served: Option<Arc<AtomicBool>>,
    /// Set for a pooled connection that arrives during the server helper's drain: it waits,
    /// idle, and is not waited for; from its first request on, it counts as a late connection
    /// (see `late`) until it closes, which it does after answering.
    late_on_request: Option<Arc<CountedConnections>>,
}

/// What a connection notes when a request arrives on it (see [`ConnOptions`]).
struct OnRequest {
    /// Set for a localtunnel pooled connection (see `ConnOptions::served`).
    served: Option<Arc<AtomicBool>>,
    late: Option<Arc<CountedConnections>>,
    /// Held from the first request on, until the connection, and this with it, is dropped.
    entered: Mutex<Option<CountedConnection>>,
}

impl OnRequest {
    fn new(options: &ConnOptions) -> Arc<Self> {
        Arc::new(Self {
            served: options.served.clone(),
            late: options.late_on_request.clone(),
            entered: Mutex::new(None),
        })
    }

    fn request(&self) {
        if let Some(served) = &self.served {
            served.store(true, Ordering::Relaxed);
        }
        if let Some(late) = &self.late {
            lock(&self.entered).get_or_insert_with(|| late.enter());
        }
    }

    /// Closes a pooled connection after the answer to a request that asked for an upgrade
    /// (`asked_upgrade`) it did not get. The localtunnel server hands such a request the public
    /// client's socket, raw, and pipes whatever the client sends next, without a timeout of its
    /// own; a pooled connection waits for heads without one, as the server reads each head
    /// before it sends it on: a client that asked for an upgrade, was refused and then stayed
    /// silent held the connection for good, and a few of them every connection of the pool.
    fn answered<B>(&self, asked_upgrade: bool, response: &mut Response<B>) {
        if self.served.is_some()
            && asked_upgrade
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
}

/// Serves one tunnel connection; erases the user's service type.
trait ServeConn: Send + Sync + 'static {
    fn serve(&self, io: Box<dyn Io>, options: ConnOptions) -> BoxFuture<()>;
}

/// Nonces of probes in flight; a probe request carrying one is answered here, not by the service.
#[derive(Debug, Default)]
pub(crate) struct Probes(Mutex<HashSet<String>>);

impl Probes {
    pub(crate) fn insert(&self, nonce: &str) {
        lock(&self.0).insert(nonce.to_owned());
    }

    fn contains(&self, nonce: &str) -> bool {
        lock(&self.0).contains(nonce)
    }

    pub(crate) fn remove(&self, nonce: &str) {
        lock(&self.0).remove(nonce);
    }

    /// Whether a probe is in flight (a tunnel is starting).
    fn in_flight(&self) -> bool {
        !lock(&self.0).is_empty()
    }

    /// The answer to a probe request of a probe in flight; `None` for any other request.
    fn answer<B>(&self, request: &Request<B>) -> Option<Response<BoxBody>> {
        if request.uri().path() != PROBE_PATH {
            return None;
        }
        let nonce = request
            .headers()
            .get(PROBE_HEADER)
            .and_then(|value| value.to_str().ok())?;
        if !lock(&self.0).contains(nonce) {
            return None;
        }
        let mut response = Response::new(full(Bytes::copy_from_slice(nonce.as_bytes())));
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Some(response)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn full(bytes: Bytes) -> BoxBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Where the traffic of a tunnel goes: a local address (requests are forwarded to it) or a tower
/// [`Service`] served directly on each tunnel connection, so no local port is needed.
///
/// Every tunnel connection is served as HTTP/1.1. A connection that does not send the head of a
/// request within the [header read timeout](Self::header_read_timeout) (30 s by default) is
/// closed, whether it is new or kept alive after an answer, so idle or stalled clients do not hold
/// connections and tasks. A request answered `101 Switching Protocols` (a WebSocket upgrade)
/// keeps its connection for the new protocol: the service gets it through
/// `hyper::upgrade::on`, an address upstream copies its bytes to and from the local server; it
/// ends, as the others do, when the tunnel closes. Requests to [`PROBE_PATH`] that carry a
/// nonce of a probe in flight in the [`PROBE_HEADER`] header are answered by the tunnel itself:
/// that is how the round-trip probe proves a public URL reaches this process. All other
/// requests reach the service or the address unchanged.
///
/// Providers get an `Upstream` in [`Provider::open`](super::Provider::open) and hand it each
/// connection they receive with [`serve_connection`](Self::serve_connection). Connections served
/// through the copy a tunnel gives its providers end when that tunnel is closed
/// ([`TunnelHandle::close`](super::TunnelHandle::close), or dropping the handle), also those that
/// outlived the provider session that received them, such as bore connections still carrying a
/// request when the control connection dropped.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower_webhook::tunnel::Upstream;
///
/// let to_port = Upstream::address(([127, 0, 0, 1], 3000).into());
/// let to_service = Upstream::service(tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
///     Ok::<_, Infallible>(Response::new(String::from("hello")))
/// }));
/// assert!(format!("{to_port:?}").contains("127.0.0.1:3000"));
/// assert!(format!("{to_service:?}").contains("service"));
/// ```
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
    /// `None`: no header read timeout.
    header_read_timeout: Option<Duration>,
    /// `None`: piped connections are kept however long they stay silent.
    idle_timeout: Option<Duration>,
    /// The connections served at once on the ports accepted on here, shared by the copies.
    limit: Arc<ConnectionLimit>,
    /// Set on a [scoped](Self::scoped) copy (the one a tunnel hands its providers, the one the
    /// server helper serves its port with): fires, or its sender is dropped, when the owner
    /// closes, and every connection served through that copy ends then.
    closed: Option<watch::Receiver<()>>,
    /// Set with `closed`: the connections served through this copy (and its clones).
    open: Option<Arc<CountedConnections>>,
}

/// A bound on the connections served at once: a connection is accepted only with a permit, held
/// until it ends, so that past the bound new ones wait in the listener's backlog rather than
/// each taking a task and a file descriptor.
struct ConnectionLimit {
    max: usize,
    permits: Arc<Semaphore>,
    /// Whether the bound was reached and said so, since connections last went in freely.
    full: AtomicBool,
}

impl ConnectionLimit {
    fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            full: AtomicBool::new(false),
        }
    }

    /// A permit for the next connection, waiting for one to end when `max` are open (said once
    /// per run of it). Cancel-safe.
    async fn permit(&self) -> OwnedSemaphorePermit {
        match self.try_permit("new connections wait until one ends") {
            Some(permit) => permit,
            // Never closed: the semaphore lives as long as `self`.
            None => match Arc::clone(&self.permits).acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => std::future::pending().await,
            },
        }
    }

    /// A permit if one is free; the limit reached is logged once per run of it (`then`: what
    /// becomes of the connection), a run that ends once half the permits are free again, so
    /// that a load that hovers at the limit is not logged at every swing.
    fn try_permit(&self, then: &str) -> Option<OwnedSemaphorePermit> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                if self.permits.available_permits() >= self.max / 2
                    && self.full.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(max = self.max, "below the connection limit again");
                }
                Some(permit)
            }
            Err(_) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(max = self.max, "connection limit reached: {then}");
                }
                None
            }
        }
    }
}

/// Held by the owner of a [scoped](Upstream::scoped) upstream (a tunnel, the server helper):
/// closing it (or dropping it) ends every connection served through that copy, those that
/// outlived the provider session that received them included (bore connections in flight when
/// the control connection dropped).
pub(crate) struct Connections {
    closed: watch::Sender<()>,
    open: Arc<CountedConnections>,
}

impl Connections {
    /// Ends the connections (those still open, and any handed over later).
    pub(crate) fn close(&self) {
        self.closed.send_replace(());
    }

    /// Ends the connections, then waits until each has ended (its request's handler dropped),
    /// for up to `limit`. False if some were still open then.
    pub(crate) async fn close_and_wait(&self, limit: Duration) -> bool {
        self.close();
        tokio::time::timeout(limit, self.open.closed())
            .await
            .is_ok()
    }
}

struct Inner {
    address: Option<SocketAddr>,
    serve: Arc<dyn ServeConn>,
    probes: Arc<Probes>,
    local: OnceCell<SocketAddr>,
    /// Whether `local` was asked for.
    local_asked: AtomicBool,
    local_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Set by the server helper: every connection served is watched, tunnel connections
    /// included, so that a graceful shutdown lets their requests finish.
    graceful: Mutex<Option<Graceful>>,
}

/// How the connections of the server helper are watched for its graceful shutdown.
enum Graceful {
    /// Running: every connection served is watched.
    Watching(GracefulShutdown),
    /// Draining: the tunnel stays open until the drain ends, so connections still arrive
    /// through it. Each serves one request and is counted, so the drain waits for it too.
    Draining(Arc<CountedConnections>),
}

/// Tells the connections being watched that the drain started (each then closes once its request
/// in flight is answered), and waits until they are over. (hyper-util's `GracefulShutdown` does
/// the same, but cannot watch a connection that may be upgraded.)
pub(crate) struct GracefulShutdown(watch::Sender<()>);

impl GracefulShutdown {
    fn new() -> Self {
        Self(watch::channel(()).0)
    }

    fn watcher(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }

    /// Starts the graceful shutdown of every connection watched, and waits until they are over.
    pub(crate) async fn shutdown(self) {
        self.0.send_replace(());
        self.0.closed().await;
    }
}

/// Connections counted while they are open, so that something can wait until none is: those
/// that arrived during a drain, and those served through a [scoped](Upstream::scoped) copy.
#[derive(Default)]
pub(crate) struct CountedConnections {
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

impl CountedConnections {
    fn enter(self: &Arc<Self>) -> CountedConnection {
        self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CountedConnection(Arc::clone(self))
    }

    /// Waits until no counted connection is open.
    pub(crate) async fn closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// Counts one connection while it is open.
struct CountedConnection(Arc<CountedConnections>);

impl Drop for CountedConnection {
    fn drop(&mut self) {
        if self
            .0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.closed.notify_waiters();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.local_task).take() {
            task.abort();
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.address {
            Some(addr) => write!(f, "Upstream(address {addr})"),
            None => f.write_str("Upstream(service)"),
        }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Self::address(addr)
    }
}

impl Upstream {
    /// Forwards every request to the HTTP server at `addr`.
    ///
    /// A request the server cannot be reached for gets `502 Bad Gateway`, and a TCP connection
    /// piped to it is closed; connecting may take 10 s at most (an address that drops
    /// connection attempts, as a host that is down or a firewall does, is given up then).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// // A webhook server already running on port 3000.
    /// let upstream = Upstream::address(([127, 0, 0, 1], 3000).into());
    /// assert_eq!(format!("{upstream:?}"), "Upstream(address 127.0.0.1:3000)");
    /// ```
    pub fn address(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new()).build({
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(LOCAL_CONNECT_TIMEOUT));
            connector
        });
        Self::from_parts(Some(addr), Arc::new(Forward { addr, client }))
    }

    /// Serves `service` on every tunnel connection (a clone per connection, as hyper does).
    ///
    /// Any `Service<Request<Incoming>>` fits, an axum `Router` included.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Upstream;
    /// # async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    /// #     use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// #     let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    /// #     let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    /// #     tcp.write_all(head.as_bytes()).await.unwrap();
    /// #     let mut answer = String::new();
    /// #     tcp.read_to_string(&mut answer).await.unwrap();
    /// #     answer
    /// # }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    /// });
    /// let upstream = Upstream::service(app);
    /// assert_eq!(format!("{upstream:?}"), "Upstream(service)");
    /// assert!(get(upstream.local_addr().await?, "/").await.ends_with("hello"));
    /// # Ok(()) }
    /// ```
    pub fn service<S, B>(service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::from_parts(
            None,
            Arc::new(ServeService {
                service: Mutex::new(service),
            }),
        )
    }

    /// How long a connection may take to send the head of a request (the request line and
    /// headers) before it is closed; default [`DEFAULT_HEADER_READ_TIMEOUT`] (30 s).
    ///
    /// The clock starts when the connection is ready for a request: when it opens, and again
    /// after each answer on a kept-alive connection, so it also bounds how long an idle
    /// connection is kept. It applies to every connection served as HTTP:
    /// [`serve_connection`](Self::serve_connection), TCP tunnel connections of a service
    /// upstream (bore), the port of [`local_addr`](Self::local_addr) and the
    /// [`Server`](super::Server) helper's port; not to localtunnel's pooled connections, which
    /// wait for the server to hand them a request (the localtunnel server reads the public
    /// request's head itself). A TCP connection piped to an address upstream
    /// ([`serve_tcp_connection`](Self::serve_tcp_connection)) is not HTTP: it is closed if neither
    /// side (the public client, the local server) has sent a byte this long after it opened;
    /// once either side has sent one, this timeout no longer applies (the
    /// [idle timeout](Self::idle_timeout) does), so protocols where the server speaks first
    /// (SMTP, SSH) work. While the local
    /// server cannot be reached, only a round-trip probe can be answered, and the connection gets
    /// this long to send its head.
    ///
    /// A timeout too long for a deadline (such as `Duration::MAX`) means none.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::io::AsyncReadExt;
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let upstream = Upstream::service(app).header_read_timeout(Duration::from_millis(200));
    /// // A client that connects and says nothing is cut off.
    /// let mut idle = tokio::net::TcpStream::connect(upstream.local_addr().await?).await?;
    /// let mut rest = Vec::new();
    /// tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await??;
    /// # Ok(()) }
    /// ```
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = super::time::bounded(timeout);
        self
    }

    /// How long a connection piped to an address upstream (see
    /// [`serve_tcp_connection`](Self::serve_tcp_connection)) is kept while neither side, the
    /// public client or the local server, sends a byte; default [`DEFAULT_IDLE_TIMEOUT`] (two
    /// minutes). It is closed after a silence of at least the timeout, and at most a quarter of
    /// it more. The local server's own idle timeout closes only its side of a kept-alive
    /// connection, and a local server without one (plain `axum::serve`) closes nothing: without
    /// this bound, public clients that send a request, read its answer and stay connected would
    /// each hold a connection (and a bore connection slot) for as long as they like. Set it
    /// longer than the silences of the protocols you pipe (a WebSocket's pings, say).
    /// Connections an upstream serves as HTTP are bounded by the
    /// [header read timeout](Self::header_read_timeout) instead.
    ///
    /// A timeout too long for a deadline (such as `Duration::MAX`) means none; a zero timeout
    /// closes every piped connection a few milliseconds into its first silence.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A local server that greets each connection, then keeps it open and says nothing more.
    /// let local = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = local.local_addr()?;
    /// tokio::spawn(async move {
    ///     let mut held = Vec::new();
    ///     while let Ok((mut conn, _)) = local.accept().await {
    ///         let _ = conn.write_all(b"hello\n").await;
    ///         held.push(conn);
    ///     }
    /// });
    /// let upstream = Upstream::address(addr).idle_timeout(Duration::from_millis(200));
    /// let (mut public, tunnel_side) = tokio::io::duplex(4096);
    /// tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    ///
    /// // The greeting comes through; 200 ms of silence later, the connection is closed.
    /// let mut seen = String::new();
    /// tokio::time::timeout(Duration::from_secs(5), public.read_to_string(&mut seen)).await??;
    /// assert_eq!(seen, "hello\n");
    /// # Ok(()) }
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = super::time::bounded(timeout);
        self
    }

    /// How many connections are served at once on the ports this upstream accepts on itself:
    /// the port of [`local_addr`](Self::local_addr) (which cloudflared forwards the public
    /// requests to), the [`Server`](super::Server) helper's port, and ngrok's connections;
    /// default [`DEFAULT_MAX_CONNECTIONS`] (256), at least 1.
    ///
    /// Past it, a new connection is not accepted until one ends: it waits in the listener's
    /// backlog, and a warning is logged once per run of it. ngrok's connections cannot wait
    /// (those left unread would stall the whole session): past the limit, one is closed at once,
    /// and ngrok answers its client 502. Each
    /// connection takes a task and a file descriptor (two for an address upstream, which opens
    /// one to the local server), so many clients, or one that opens connections and sends
    /// requests slowly, cannot use up the process's file descriptors, which the tunnel's own
    /// connections need too. A connection upgraded to another protocol (a WebSocket) counts
    /// until it closes. localtunnel's pool and bore have bounds of their own (32 and
    /// [`BORE_MAX_CONNECTIONS`](super::BORE_MAX_CONNECTIONS)); connections a custom provider
    /// hands to [`serve_connection`](Self::serve_connection) are its own to bound.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let upstream = Upstream::service(app).max_connections(1);
    /// let addr = upstream.local_addr().await?;
    /// let held = tokio::net::TcpStream::connect(addr).await?; // open, says nothing yet
    /// tokio::time::sleep(Duration::from_millis(100)).await; // served: it holds the one permit
    /// let mut next = tokio::net::TcpStream::connect(addr).await?; // queued in the backlog
    /// next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    /// let mut answer = Vec::new();
    /// let waited = tokio::time::timeout(Duration::from_millis(300), next.read_to_end(&mut answer)).await;
    /// assert!(waited.is_err(), "not served while the first is open");
    /// drop(held); // the first ends: the second is served
    /// tokio::time::timeout(Duration::from_secs(10), next.read_to_end(&mut answer)).await??;
    /// assert!(answer.ends_with(b"ok"));
    /// # Ok(()) }
    /// ```
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limit = Arc::new(ConnectionLimit::new(max));
        self
    }

    /// A permit to serve one more connection accepted here (see
    /// [`max_connections`](Self::max_connections)): taken before accepting, held until the
    /// connection ends. Cancel-safe.
    pub(crate) async fn connection_permit(&self) -> OwnedSemaphorePermit {
        self.limit.permit().await
    }

    /// A permit to serve one more connection if one is free, for connections that cannot wait
    /// (ngrok's: see [`max_connections`](Self::max_connections)).
    #[cfg_attr(not(feature = "ngrok"), allow(dead_code))]
    pub(crate) fn try_connection_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.try_permit("new ones are closed at once")
    }

    /// A service upstream that is also listening on `addr` already (used by the server helper,
    /// so that providers needing a local port, such as cloudflared, use that one).
    pub(crate) fn with_local_addr(self, addr: SocketAddr) -> Self {
        let _ = self.inner.local.set(addr);
        self
    }

    /// Whether a provider asked for [`local_addr`](Self::local_addr): its tunnel reaches the
    /// service through that port (cloudflared's does).
    pub(crate) fn local_addr_asked(&self) -> bool {
        self.inner.local_asked.load(Ordering::Acquire)
    }

    /// Watches every connection served from now on for a graceful shutdown (used by the server
    /// helper); [`start_drain`](Self::start_drain) starts it.
    pub(crate) fn with_graceful_shutdown(self) -> Self {
        *lock(&self.inner.graceful) = Some(Graceful::Watching(GracefulShutdown::new()));
        self
    }

    /// Starts the drain: the caller shuts down the connections being watched and waits for the
    /// late ones, which arrive from now on.
    pub(crate) fn start_drain(&self) -> Option<(GracefulShutdown, Arc<CountedConnections>)> {
        let mut graceful = lock(&self.inner.graceful);
        let late = Arc::new(CountedConnections::default());
        match graceful.replace(Graceful::Draining(Arc::clone(&late)))? {
            Graceful::Watching(shutdown) => Some((shutdown, late)),
            Graceful::Draining(_) => None,
        }
    }

    fn from_parts(address: Option<SocketAddr>, serve: Arc<dyn ServeConn>) -> Self {
        Self {
            inner: Arc::new(Inner {
                address,
                serve,
                probes: Arc::new(Probes::default()),
                local: OnceCell::new(),
                local_asked: AtomicBool::new(false),
                local_task: Mutex::new(None),
                graceful: Mutex::new(None),
            }),
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            limit: Arc::new(ConnectionLimit::new(DEFAULT_MAX_CONNECTIONS)),
            closed: None,
            open: None,
        }
    }

    /// A copy of this upstream whose connections all end when the returned [`Connections`] is
    /// closed or dropped: a tunnel serves its connections with one, and the server helper its
    /// port.
    pub(crate) fn scoped(&self) -> (Self, Connections) {
        let (closed_tx, closed_rx) = watch::channel(());
        let open = Arc::new(CountedConnections::default());
        let upstream = Self {
            closed: Some(closed_rx),
            open: Some(Arc::clone(&open)),
            ..self.clone()
        };
        let connections = Connections {
            closed: closed_tx,
            open,
        };
        (upstream, connections)
    }

    /// What tells the tunnel this copy was scoped for from others (`same_channel`), and whether
    /// that tunnel is closed (`has_changed` is not `Ok(false)`); `None` for an unscoped copy.
    pub(crate) fn tunnel_scope(&self) -> Option<watch::Receiver<()>> {
        self.closed.clone()
    }

    /// Serves `io` until it is over: a connection upgraded by a request on it (a WebSocket) is
    /// handed to the service, and is over once the service drops it. A provider that counts the
    /// connections it serves (bore's slots, localtunnel's pool) thus counts it while it is open.
    /// For a scoped copy, it ends when the owner closes.
    async fn serve_held<I>(&self, io: I, options: ConnOptions)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (held, released) = tokio::sync::oneshot::channel::<()>();
        let mut io = Served::new(io, held, self.closed.as_ref());
        // Told by the bytes (a head hyper refuses counts), and by a request hyper takes.
        io.request_start = options.served.clone().map(RequestStart::new);
        let serve = self.inner.serve.serve(Box::new(io), options);
        self.until_closed(async move {
            serve.await;
            let _ = released.await;
        })
        .await;
    }

    /// Runs `serve` until it ends or, for a scoped copy, until its owner closes.
    async fn until_closed(&self, serve: impl Future<Output = ()>) {
        // Counted until `serve` is over or dropped (declared first, dropped last).
        let _open = self.open.as_ref().map(CountedConnections::enter);
        let Some(closed) = &self.closed else {
            return serve.await;
        };
        let mut closed = closed.clone();
        tokio::select! {
            () = serve => {}
            // A value or a dropped sender: either way the owner closed.
            _ = closed.changed() => tracing::debug!("connection ended: its tunnel or server closed"),
        }
    }

    /// `pooled`: a connection that waits, idle, for the tunnel server's requests. During a drain
    /// it is not waited for while idle (it may stay so until the tunnel closes), only once it
    /// carries a request.
    fn options(&self, header_read_timeout: Option<Duration>, pooled: bool) -> ConnOptions {
        let (watcher, late, late_on_request) = match &*lock(&self.inner.graceful) {
            Some(Graceful::Watching(shutdown)) => (Some(shutdown.watcher()), None, None),
            Some(Graceful::Draining(late)) if !pooled => (None, Some(late.enter()), None),
            Some(Graceful::Draining(late)) => (None, None, Some(Arc::clone(late))),
            None => (None, None, None),
        };
        ConnOptions {
            probes: Arc::clone(&self.inner.probes),
            watcher,
            late,
            header_read_timeout,
            served: None,
            late_on_request,
        }
    }

    /// Serves one tunnel connection as HTTP/1.1 until either side closes it, or until it sends
    /// no request head within the [header read timeout](Self::header_read_timeout).
    /// A connection a request upgraded (`101 Switching Protocols`) is handed to the service,
    /// and this returns once the service has dropped it.
    ///
    /// # Example
    ///
    /// ```
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("served")))
    /// });
    /// let upstream = Upstream::service(app);
    /// // One end stands for a connection a provider received from its server.
    /// let (mut client, tunnel_side) = tokio::io::duplex(4096);
    /// tokio::spawn(async move { upstream.serve_connection(tunnel_side).await });
    ///
    /// client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    /// let mut answer = String::new();
    /// client.read_to_string(&mut answer).await?;
    /// assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("served"));
    /// # Ok(()) }
    /// ```
    pub async fn serve_connection<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let options = self.options(self.header_read_timeout, false);
        self.serve_held(io, options).await;
    }

    /// Serves a pooled connection that waits, idle, for the tunnel server to hand it requests
    /// (localtunnel): as [`serve_connection`](Self::serve_connection), without the header read
    /// timeout. `served` turns true once the tunnel server starts a request on the connection
    /// (its first bytes are a method and a request target; bytes that are no request do not
    /// count), whether hyper takes it or refuses it: a head of over 100 headers gets 431 and
    /// the connection is closed at once, but a public client sent it all the same.
    pub(crate) async fn serve_pooled_connection<I>(&self, io: I, served: Arc<AtomicBool>)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut options = self.options(None, true);
        options.served = Some(served);
        // An upgraded connection is still held by the server, which counts it against the
        // client's limit: the slot waits for it before opening another (one opened at once
        // would be closed by a server at its limit, and the slot given up).
        self.serve_held(io, options).await;
    }

    /// Serves a tunnel connection that carries exactly one public TCP connection (bore, TCP
    /// tunnels). An address upstream pipes its bytes to the local address unchanged (any protocol
    /// works, upgrades included), answering only a probe that opens the connection; the pipe
    /// ends when both sides have closed, or 5 s after the local server closed its side (a public
    /// client that stays connected and silent does not keep it), or when neither side has sent a
    /// byte within the [header read timeout](Self::header_read_timeout) (a public client and a
    /// local server that both stay silent, the local server having no idle timeout of its own, do
    /// not keep it either), or when neither has sent one for the
    /// [idle timeout](Self::idle_timeout) since. A service upstream serves it as
    /// [`serve_connection`](Self::serve_connection) does.
    ///
    /// # Example
    ///
    /// ```
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use tower_webhook::tunnel::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("local server")))
    /// # });
    /// # let local_server = Upstream::service(app);
    /// # let addr = local_server.local_addr().await?;
    /// // `addr`: a local HTTP server. Its upstream pipes each public TCP connection to it.
    /// let upstream = Upstream::address(addr);
    /// let (mut public, tunnel_side) = tokio::io::duplex(4096);
    /// tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    ///
    /// public.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    /// let mut answer = String::new();
    /// public.read_to_string(&mut answer).await?;
    /// assert!(answer.ends_with("local server"));
    /// # Ok(()) }
    /// ```
    pub async fn serve_tcp_connection<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match self.inner.address {
            Some(addr) => {
                self.until_closed(async {
                    let timeouts = PipeTimeouts {
                        header_read: self.header_read_timeout,
                        idle: self.idle_timeout,
                    };
                    if let Err(err) = pipe(io, addr, &self.inner.probes, timeouts).await {
                        tracing::debug!(%addr, error = %err, "tunnel connection to the local server ended");
                    }
                })
                .await;
            }
            None => self.serve_connection(io).await,
        }
    }

    /// A local `http://` address that serves this upstream, for providers that must be given one
    /// (cloudflared). The first call binds a loopback port that serves it as a tunnel connection
    /// is served: requests of a round-trip probe in flight are answered there, every other one
    /// reaches the service, or is forwarded to the address of an [`address`](Self::address)
    /// upstream. (Handing a provider the address itself would send the probe to the local server,
    /// which cannot answer it, and the tunnel would never start.)
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Upstream;
    /// # async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    /// #     use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// #     let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    /// #     let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    /// #     tcp.write_all(head.as_bytes()).await.unwrap();
    /// #     let mut answer = String::new();
    /// #     tcp.read_to_string(&mut answer).await.unwrap();
    /// #     answer
    /// # }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("from the app")))
    /// # });
    /// let upstream = Upstream::service(app);
    /// let addr = upstream.local_addr().await?;
    /// assert!(addr.ip().is_loopback());
    /// // Bound once: later calls give the same port.
    /// assert_eq!(upstream.local_addr().await?, addr);
    ///
    /// // An address upstream gets a port of its own too, which forwards to the address.
    /// let forwarding = Upstream::address(addr);
    /// let port = forwarding.local_addr().await?;
    /// assert_ne!(port, addr);
    /// assert!(get(port, "/").await.ends_with("from the app"));
    /// # Ok(()) }
    /// ```
    pub async fn local_addr(&self) -> std::io::Result<SocketAddr> {
        let inner = &self.inner;
        inner.local_asked.store(true, Ordering::Release);
        inner
            .local
            .get_or_try_init(|| async {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let addr = listener.local_addr()?;
                let serve = Arc::clone(&inner.serve);
                let probes = Arc::clone(&inner.probes);
                let header_read_timeout = self.header_read_timeout;
                let limit = Arc::clone(&self.limit);
                let task = tokio::spawn(async move {
                    let mut acceptor = Acceptor::new(listener);
                    loop {
                        let permit = limit.permit().await;
                        let (stream, _) = acceptor.accept().await;
                        let _ = stream.set_nodelay(true);
                        let options = ConnOptions {
                            probes: Arc::clone(&probes),
                            watcher: None,
                            late: None,
                            header_read_timeout,
                            served: None,
                            late_on_request: None,
                        };
                        // An upgraded connection (a WebSocket) counts until the service drops it.
                        let (held, released) = tokio::sync::oneshot::channel::<()>();
                        let io = Served::new(stream, held, None);
                        let served = serve.serve(Box::new(io), options);
                        tokio::spawn(async move {
                            served.await;
                            let _ = released.await;
                            drop(permit);
                        });
                    }
                });
                *lock(&inner.local_task) = Some(task.abort_handle());
                Ok(addr)
            })
            .await
            .copied()
    }

    pub(crate) fn probes(&self) -> &Probes {
        &self.inner.probes
    }
}

/// A connection being served. It tells, by dropping `_held`, when it is dropped: by hyper, or
/// by the service it was handed to after an upgrade. Served through a scoped upstream, it fails
/// (reads and writes) once the owner (a tunnel, the server helper) closes. The connection's
/// future ends then anyway; this also ends a connection hyper handed to the service after
/// `101 Switching Protocols` (a WebSocket), which lives on in a task of the service's own.
struct Served<T> {
    inner: T,
    _held: tokio::sync::oneshot::Sender<()>,
    /// The owner's close, for a scoped upstream.
    closing: Option<Closing>,
    /// Watches the first bytes read, until they tell (see `ConnOptions::served`).
    request_start: Option<RequestStart>,
}

/// Tells, from the first bytes a peer sends, whether they start an HTTP/1 request: a method
/// (a token, as HTTP defines one), a space, and a request target, after any empty lines (which
/// hyper skips). Sets its flag if they do.
struct RequestStart {
    seen: [u8; Self::DECIDED_BY],
    len: usize,
    started: Arc<AtomicBool>,
}

impl RequestStart {
    /// The longest method taken (`M-SEARCH`, `PROPPATCH` and the like are far shorter).
    const MAX_METHOD: usize = 20;
    /// Enough bytes to decide: a method, its space, and the target's first byte.
    const DECIDED_BY: usize = Self::MAX_METHOD + 2;

    fn new(started: Arc<AtomicBool>) -> Self {
        Self {
            seen: [0; Self::DECIDED_BY],
            len: 0,
            started,
        }
    }

    /// Takes the next bytes read; `true` once they have told, either way.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        if self.len == 0 {
            let start = bytes
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(bytes.len());
            bytes = &bytes[start..];
        }
        let take = bytes.len().min(Self::DECIDED_BY - self.len);
        self.seen[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        match Self::verdict(&self.seen[..self.len]) {
            Some(started) => {
                if started {
                    self.started.store(true, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Whether `prefix` starts a request; `None` while it cannot tell yet.
    fn verdict(prefix: &[u8]) -> Option<bool> {
        for (i, &b) in prefix.iter().enumerate() {
            match b {
                b'!'
                | b'#'..=b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
                | b'0'..=b'9'
                | b'a'..=b'z'
                | b'A'..=b'Z'
                    if i < Self::MAX_METHOD => {}
                b' ' if i > 0 => {
                    return prefix
                        .get(i + 1)
                        .map(|target| !matches!(target, b' ' | b'\r' | b'\n'));
                }
                _ => return Some(false),
            }
        }
        None
    }
}

/// The close of a scoped upstream's owner, as a connection served through it sees it.
struct Closing {
    /// One per direction, so that a reader and a writer in different tasks are both woken.
    read: Pin<Box<dyn Future<Output = ()> + Send>>,
    write: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
}

impl<T> Served<T> {
    fn new(
        inner: T,
        held: tokio::sync::oneshot::Sender<()>,
        closed: Option<&watch::Receiver<()>>,
    ) -> Self {
        let owner_closed = |mut closed: watch::Receiver<()>| async move {
            // A value or a dropped sender: either way the owner closed.
            let _ = closed.changed().await;
        };
        Self {
            inner,
            _held: held,
            closing: closed.map(|closed| Closing {
                read: Box::pin(owner_closed(closed.clone())),
                write: Box::pin(owner_closed(closed.clone())),
                closed: false,
            }),
            request_start: None,
        }
    }

    fn check(&mut self, cx: &mut std::task::Context<'_>, read: bool) -> std::io::Result<()> {
        let Some(closing) = &mut self.closing else {
            return Ok(());
        };
        if !closing.closed {
            let closed = if read {
                closing.read.as_mut()
            } else {
                closing.write.as_mut()
            };
            closing.closed = closed.poll(cx).is_ready();
        }
        if closing.closed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the tunnel or server closed",
            ));
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Served<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx, true)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(start) = &mut self.request_start
            && start.feed(&buf.filled()[before..])
        {
            self.request_start = None;
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Served<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx, false)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx, false)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The bounds of a piped connection (`None`: none): its first byte, either way, within
/// `header_read` of its opening; then no silence, both ways, as long as `idle`.
#[derive(Clone, Copy)]
struct PipeTimeouts {
    header_read: Option<Duration>,
    idle: Option<Duration>,
}

/// Copies a public connection to `addr`; a probe request that opens it is answered here.
async fn pipe<I>(
    mut io: I,
    addr: SocketAddr,
    probes: &Probes,
    timeouts: PipeTimeouts,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let header_read_timeout = timeouts.header_read;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAX_HEAD: usize = 8 * 1024;
    let probe_line = format!("GET {PROBE_PATH} ");
    let mut head = bytes::BytesMut::with_capacity(1024);
    // Connect to the local server while the first bytes arrive. (No TCP_NODELAY on this hop:
    // measured slower with it for one request per connection.) When the local server speaks
    // first (SMTP, SSH, ...), the connection is no probe: forward it at once.
    let connect = async move {
        tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to the local server at {addr} took over {} s",
                        LOCAL_CONNECT_TIMEOUT.as_secs()
                    ),
                ))
            })
    };
    tokio::pin!(connect);
    // Until either side sends a byte, the connection gets the header read timeout: a public
    // client that says nothing to a local server that says nothing (and has no idle timeout of
    // its own) would otherwise hold the connection, and a bore connection slot, for ever.
    // (No timeout: a timer that never fires in the life of the process.)
    let silence = tokio::time::sleep(header_read_timeout.unwrap_or(super::time::FAR_FUTURE));
    tokio::pin!(silence);
    // While a probe is in flight, the local server speaking first does not end the wait for the
    // public side's first bytes at once: through a tunnel server over a real network, the
    // probe's request comes a round trip after the connection, long after a local greeting
    // (SMTP's `220`), and would be piped to the local server instead of answered. For at most
    // `PROBE_GRACE`: a client of such a protocol waits for the greeting.
    let mut probing = probes.in_flight();
    let grace = tokio::time::sleep(PROBE_GRACE);
    tokio::pin!(grace);
    let mut local = None;
    let first = loop {
        match &local {
            None => tokio::select! {
                read = io.read_buf(&mut head) => break Some(read?),
                stream = &mut connect => local = Some(stream),
                () = &mut silence => return silent_end(header_read_timeout),
            },
            Some(Ok(stream)) => tokio::select! {
                read = io.read_buf(&mut head) => break Some(read?),
                // Readiness only, no read: costs no system call while the client speaks first.
                spoke = stream.readable(), if !probing => {
                    spoke?;
                    break None;
                }
                () = &mut grace, if probing => probing = false,
                () = &mut silence => return silent_end(header_read_timeout),
            },
            Some(Err(_)) => tokio::select! {
                read = io.read_buf(&mut head) => break Some(read?),
                // No local server, and no probe within the header read timeout.
                () = &mut silence => break Some(0),
            },
        }
    };
    let local = match local {
        Some(result) => result,
        None => connect.await,
    };
    let Some(mut n) = first else {
        return splice(io, local?, timeouts.idle).await;
    };
    if n == 0
        && let Ok(stream) = &local
    {
        // The public side closed its sending side without a byte: the connection is still
        // silent until the local server sends something (or closes).
        tokio::select! {
            ready = stream.readable() => ready?,
            () = &mut silence => return silent_end(header_read_timeout),
        }
    }
    // Read on only as long as the bytes may still be a probe request.
    loop {
        let prefix = head.len().min(probe_line.len());
        let maybe_probe = head[..prefix] == probe_line.as_bytes()[..prefix];
        if n == 0 || !maybe_probe || head.len() > MAX_HEAD {
            break;
        }
        if head.len() >= probe_line.len() && head.windows(4).any(|w| w == b"\r\n\r\n") {
            let end = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(head.len());
            let nonce = std::str::from_utf8(&head[..end]).ok().and_then(|text| {
                text.split("\r\n").skip(1).find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case(PROBE_HEADER)
                        .then(|| value.trim().to_owned())
                })
            });
            if let Some(nonce) = nonce.filter(|n| probes.contains(n)) {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{nonce}",
                    nonce.len()
                );
                io.write_all(answer.as_bytes()).await?;
                return io.shutdown().await;
            }
            break;
        }
        n = match &local {
            // The local server closing (its idle timeout) or speaking ends the sniffing, and so
            // does the header read timeout (from the connection's start): the bytes go to the
            // local server, whose own limits then apply, and the connection ends as any piped
            // one does.
            // While a probe is in flight, a local greeting does not end it either: the rest of
            // a probe's head may come in a later read (up to `PROBE_GRACE`).
            Ok(stream) => tokio::select! {
                read = io.read_buf(&mut head) => read?,
                ready = stream.readable(), if !probing => {
                    ready?;
                    break;
                }
                () = &mut grace, if probing => {
                    probing = false;
                    continue;
                }
                () = &mut silence => break,
            },
            // Nothing but a probe can be answered: it gets the header read timeout (from the
            // connection's start) to send its head, as over HTTP, instead of being waited for
            // without end.
            Err(_) => tokio::select! {
                read = io.read_buf(&mut head) => read?,
                () = &mut silence => break,
            },
        };
    }
    let mut local = match local {
        Ok(local) => local,
        // Not a probe, and nowhere to take it: said as the HTTP forwarding says it, since the
        // public client only sees its connection closed.
        Err(err) => {
            tracing::warn!(%addr, error = %err, "tunnel could not reach the local server");
            return Ok(());
        }
    };
    local.write_all(&head).await?;
    splice(io, local, timeouts.idle).await
}

/// Ends a piped connection on which neither side sent a byte in time (logged).
fn silent_end(header_read_timeout: Option<Duration>) -> std::io::Result<()> {
    tracing::debug!(
        ?header_read_timeout,
        "piped connection ended: neither side sent a byte within the header read timeout"
    );
    Ok(())
}

/// How long a piped connection opened while a probe is in flight waits for the public side's
/// first bytes when the local server speaks first (see [`pipe`]).
const PROBE_GRACE: Duration = Duration::from_secs(2);

/// How long a piped connection still carries the public side's bytes after the local server
/// closed its side.
const PIPE_LINGER: Duration = Duration::from_secs(5);

/// Copies bytes both ways until the connection is over: when the public side closes, once the
/// local server has closed too (as `copy_bidirectional` does); when the local server closes,
/// once the public side closes too or [`PIPE_LINGER`] later. A public client that keeps a
/// connection open and silent would otherwise hold it (and a bore connection slot) for ever, as
/// the local server's own idle timeout only closes the local side. Whatever the sides do, it
/// ends when neither has sent a byte for `idle`.
async fn splice<I>(
    io: I,
    local: tokio::net::TcpStream,
    idle: Option<Duration>,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Activity::new();
    let piped = splice_until_closed(io, local, &activity);
    let Some(idle) = idle else {
        return piped.await;
    };
    tokio::select! {
        piped = piped => piped,
        () = activity.silent_for(idle) => {
            tracing::debug!(?idle, "piped connection ended: neither side sent a byte within the idle timeout");
            Ok(())
        }
    }
}

/// Whether either side of a piped connection has sent a byte lately: a flag set by each read,
/// so that a read costs no clock reading, and looked at (and cleared) by [`silent_for`]'s timer.
///
/// [`silent_for`]: Activity::silent_for
struct Activity {
    seen: AtomicBool,
}

impl Activity {
    /// The timer's ticks in an idle timeout: a connection is closed after a silence of at least
    /// the timeout, and at most a tick longer.
    const TICKS: u32 = 4;

    fn new() -> Self {
        Self {
            seen: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.seen.store(true, Ordering::Relaxed);
    }

    /// Completes once no byte has passed for `idle` (to a tick, a quarter of it, more).
    async fn silent_for(&self, idle: Duration) {
        let tick = (idle / Self::TICKS).max(Duration::from_millis(1));
        let mut next = tokio::time::Instant::now();
        let mut quiet = 0;
        loop {
            next += tick;
            tokio::time::sleep_until(next).await;
            if self.seen.swap(false, Ordering::Relaxed) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= Self::TICKS {
                    return;
                }
            }
        }
    }
}

/// A reader that notes in an [`Activity`] when it reads a byte.
struct Noting<'a, R> {
    inner: R,
    activity: &'a Activity,
}

impl<R: AsyncRead + Unpin> AsyncRead for Noting<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        read
    }
}

async fn splice_until_closed<I>(
    io: I,
    local: tokio::net::TcpStream,
    activity: &Activity,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use tokio::io::AsyncWriteExt;

    let (public_read, mut public_write) = tokio::io::split(io);
    let (local_read, mut local_write) = local.into_split();
    let mut public_read = Noting {
        inner: public_read,
        activity,
    };
    let mut local_read = Noting {
        inner: local_read,
        activity,
    };
    let to_local = async {
        tokio::io::copy(&mut public_read, &mut local_write).await?;
        local_write.shutdown().await
    };
    let to_public = async {
        tokio::io::copy(&mut local_read, &mut public_write).await?;
        public_write.shutdown().await
    };
    tokio::pin!(to_local, to_public);
    tokio::select! {
        sent = &mut to_local => {
            sent?;
            to_public.await
        }
        answered = &mut to_public => {
            answered?;
            match tokio::time::timeout(PIPE_LINGER, to_local).await {
                Ok(sent) => sent,
                Err(_) => {
                    tracing::debug!("public side still open {PIPE_LINGER:?} after the local server closed; ended");
                    Ok(())
                }
            }
        }
    }
}

struct ServeService<S> {
    service: Mutex<S>,
}

impl<S, B> ServeConn for ServeService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn serve(&self, io: Box<dyn Io>, options: ConnOptions) -> BoxFuture<()> {
        let service = lock(&self.service).clone();
        let probes = Arc::clone(&options.probes);
        let on_request = OnRequest::new(&options);
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            on_request.request();
            let answered = probes.answer(&request);
            let service = service.clone();
            let on_request = Arc::clone(&on_request);
            let asked_upgrade = request.headers().contains_key(http::header::UPGRADE);
            async move {
                match answered {
                    Some(response) => Ok(response),
                    None => {
                        let mut response = service.oneshot(request).await.map_err(Into::into)?;
                        on_request.answered(asked_upgrade, &mut response);
                        Ok::<_, BoxError>(
                            response.map(|body| body.map_err(Into::into).boxed_unsync()),
                        )
                    }
                }
            }
        });
        Box::pin(serve_http1(io, handler, options))
    }
}

struct Forward {
    addr: SocketAddr,
    client: Client<HttpConnector, Incoming>,
}

impl ServeConn for Forward {
    fn serve(&self, io: Box<dyn Io>, options: ConnOptions) -> BoxFuture<()> {
        let addr = self.addr;
        let probes = Arc::clone(&options.probes);
        let client = self.client.clone();
        let on_request = OnRequest::new(&options);
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            on_request.request();
            let answered = probes.answer(&request);
            let client = client.clone();
            let on_request = Arc::clone(&on_request);
            let asked_upgrade = request.headers().contains_key(http::header::UPGRADE);
            let forwarded = async move {
                if let Some(response) = answered {
                    return Ok::<_, BoxError>(response);
                }
                let mut request = request;
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned();
                // A target that names no path (`OPTIONS *`, a `CONNECT` authority) is not
                // forwarded, nor a `CONNECT` at all (one with a path would go on as a `CONNECT`
                // to the local server's own address): scanners send them, and they mean nothing
                // to the local server.
                let uri = (request.method() != http::Method::CONNECT
                    && request
                        .uri()
                        .path_and_query()
                        .is_some_and(|pq| pq.as_str().starts_with('/')))
                .then(|| format!("http://{addr}{path}").parse().ok())
                .flatten();
                let Some(uri) = uri else {
                    tracing::debug!(target = %super::error::from_the_network(&path), "request target not forwarded");
                    let mut response = Response::new(full(Bytes::from_static(
                        b"this request target is not forwarded\n",
                    )));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    return Ok(response);
                };
                *request.uri_mut() = uri;
                // A request that asks for an upgrade (a WebSocket, say) carries hyper's handle
                // on the public connection's upgrade; taken here, before the request goes on.
                let public_upgrade = request
                    .extensions_mut()
                    .remove::<hyper::upgrade::OnUpgrade>();
                match client.request(request).await {
                    Ok(mut response) => {
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS
                            && let Some(public_upgrade) = public_upgrade
                        {
                            let local_upgrade = hyper::upgrade::on(&mut response);
                            tokio::spawn(splice_upgraded(public_upgrade, local_upgrade, addr));
                        }
                        Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                    }
                    Err(err) => {
                        tracing::warn!(%addr, error = %super::error::chain(&err), "tunnel could not reach the local server");
                        let mut response = Response::new(full(Bytes::from_static(
                            b"the tunnel could not reach the local server\n",
                        )));
                        *response.status_mut() = StatusCode::BAD_GATEWAY;
                        Ok(response)
                    }
                }
            };
            async move {
                let mut response = forwarded.await?;
                on_request.answered(asked_upgrade, &mut response);
                Ok::<_, BoxError>(response)
            }
        });
        Box::pin(serve_http1(io, handler, options))
    }
}

/// Copies the bytes of an upgraded connection both ways, once both the public connection and
/// the one to the local server have switched protocols.
async fn splice_upgraded(
    public: hyper::upgrade::OnUpgrade,
    local: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    let (public, local) = match tokio::try_join!(public, local) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%addr, error = %err, "an upgraded tunnel connection could not be taken over");
            return;
        }
    };
    let (mut public, mut local) = (TokioIo::new(public), TokioIo::new(local));
    if let Err(err) = tokio::io::copy_bidirectional(&mut public, &mut local).await {
        tracing::debug!(%addr, error = %err, "upgraded tunnel connection to the local server ended");
    }
}

async fn serve_http1<H>(io: Box<dyn Io>, handler: H, options: ConnOptions)
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<BoxBody>, Error = BoxError>
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A late connection (see `ConnOptions::late`) answers one request, then closes, and so
    // does a pooled one that arrived during the drain (`late_on_request`).
    builder.keep_alive(options.late.is_none() && options.late_on_request.is_none());
    // hyper arms the timer at `now + timeout`: `bounded` (in `header_read_timeout`) keeps that
    // from overflowing.
    if let Some(timeout) = options.header_read_timeout {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    } else {
        builder.header_read_timeout(None);
    }
    // With upgrades: a service that answers `101 Switching Protocols` (a WebSocket, say) gets
    // the connection, as `axum::serve` gives it.
    let conn = builder
        .serve_connection(TokioIo::new(io), handler)
        .with_upgrades();
    tokio::pin!(conn);
    let result = match options.watcher {
        // Held until the connection is over: the drain waits for it.
        Some(mut drain) => tokio::select! {
            result = conn.as_mut() => result,
            // The drain started (or its sender is gone): the request in flight, if any, is
            // answered, then the connection closes.
            _ = drain.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        },
        None => conn.await,
    };
    if let Err(err) = result {
        // hyper's own text names the kind of error only: the cause is its source.
        let error = super::error::chain(&err);
        if err.is_user() {
            // The service failed (no answer went out), or its response body did once the head
            // was sent (the answer is cut short): hyper closed the connection either way.
            tracing::warn!(
                %error,
                "the service or its response body failed a tunnel request; the connection was \
                 closed (the sender got no answer, or one cut short)"
            );
        } else {
            tracing::debug!(%error, "tunnel connection ended with an error");
        }
    }
    drop(options.late);
}

#[cfg(test)]
mod tests {
    use super::RequestStart;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether `bytes`, read in pieces of `step` bytes, start a request; and whether that was
    /// told before their end.
    fn starts(bytes: &[u8], step: usize) -> (bool, bool) {
        let flag = Arc::new(AtomicBool::new(false));
        let mut start = RequestStart::new(Arc::clone(&flag));
        let told = bytes.chunks(step).any(|piece| start.feed(piece));
        (flag.load(Ordering::Relaxed), told)
    }

    #[test]
    fn a_request_line_is_told_from_other_bytes_however_it_is_split() {
        for step in [1, 2, 5, 64] {
            assert_eq!(starts(b"GET /hook HTTP/1.1\r\n", step), (true, true));
            assert_eq!(starts(b"M-SEARCH * HTTP/1.1\r\n", step), (true, true));
            assert_eq!(starts(b"GET /\xff HTTP/1.1\r\n", step), (true, true));
            // Empty lines before it, and a method of any token, as hyper takes them.
            assert_eq!(starts(b"\r\n\r\nGET / HTTP/1.1\r\n", step), (true, true));
            assert_eq!(starts(b"get / HTTP/1.1\r\n", step), (true, true));
            assert_eq!(starts(b"SSH-2.0-OpenSSH_9.6\r\n", step), (false, true));
            assert_eq!(starts(b"HTTP/1.1 200 OK\r\n", step), (false, true));
            assert_eq!(starts(b"\x16\x03\x01\x02\x00", step), (false, true));
            assert_eq!(starts(b" GET / HTTP/1.1", step), (false, true));
            assert_eq!(starts(b"GET  / HTTP/1.1", step), (false, true));
            assert_eq!(starts(&[b'A'; 30], step), (false, true));
            // Not told yet: a method with nothing after it.
            assert_eq!(starts(b"POST", step), (false, false));
            assert_eq!(starts(b"POST ", step), (false, false));
        }
    }
}
