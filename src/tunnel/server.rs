//! A webhook server with an optional tunnel and graceful shutdown.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinHandle, JoinSet};
use tower_service::Service;

use super::accept::Acceptor;
use super::provider::BoxFuture;
use super::upstream::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
use super::{TunnelBuilder, TunnelConfig, TunnelError, TunnelEvent, TunnelHandle, Upstream};
use crate::BoxError;

/// How long open connections get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Binds, optionally opens a tunnel, serves a tower service, and shuts down gracefully.
///
/// Tunnel connections are served by the service directly (no extra hop through the local port);
/// the local port serves it too. The shutdown signal (Ctrl-C, or `SIGTERM` on Unix as container
/// runtimes and service managers send it, unless
/// [`with_graceful_shutdown`](Self::with_graceful_shutdown) sets another) stops accepting on the
/// local port (but see below for cloudflared), lets open requests finish (up to 10 s, or until
/// a second Ctrl-C or `SIGTERM`), then closes the tunnel (a tunnel still
/// starting then is given up at once, without waiting for its providers; a second signal also
/// cuts the wait for its close to a second). The tunnel stays
/// open while they finish, so deliveries that reach it then are served too, one request per
/// connection, and waited for within the same 10 s. A tunnel that reaches the service through
/// the local port (cloudflared's) brings them there: the port then keeps accepting through the
/// drain, one request per connection too, and until the tunnel has stopped.
/// Connections still open after that, on the local port or through the tunnel, are ended.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower_webhook::tunnel::{Server, TunnelConfig};
///
/// let app = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
///     Ok::<_, Infallible>(Response::new(String::from("ok")))
/// });
/// Server::bind(([0, 0, 0, 0], 3000).into())
///     .await?
///     .tunnel(TunnelConfig::from_env()?.builder())
///     .serve(app)
///     .await?;
/// # Ok(()) }
/// ```
pub struct Server {
    listener: TcpListener,
    tunnel: Option<TunnelBuilder>,
    shutdown: Option<BoxFuture<'static, ()>>,
    header_read_timeout: Duration,
    max_connections: usize,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("tunnel", &self.tunnel)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// [`TunnelError::Io`] when the address cannot be bound; its message names the address.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::bind(([127, 0, 0, 1], 0).into()).await?;
    /// assert_ne!(server.local_addr()?.port(), 0);
    ///
    /// // The port is taken now: a second bind fails, naming the address.
    /// let err = Server::bind(server.local_addr()?).await.unwrap_err();
    /// assert!(err.to_string().contains(&server.local_addr()?.to_string()));
    /// # Ok(()) }
    /// ```
    pub async fn bind(addr: SocketAddr) -> Result<Self, TunnelError> {
        // The system's error alone ("Address already in use") does not say which address.
        let listener = TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::new(err.kind(), format!("could not listen on {addr}: {err}"))
        })?;
        Ok(Self {
            listener,
            tunnel: None,
            shutdown: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Io`] when the socket cannot tell.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::bind(([127, 0, 0, 1], 0).into()).await?;
    /// let addr = server.local_addr()?;
    /// assert!(addr.ip().is_loopback());
    /// println!("listening on http://{addr}");
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.listener.local_addr()?)
    }

    /// Opens this tunnel chain when serving starts.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Server, Tunnel, Upstream};
    /// # use tower_webhook::tunnel::{BoxFuture, Provider, Session};
    /// # #[derive(Debug)]
    /// # struct Loopback;
    /// # impl Provider for Loopback {
    /// #     fn name(&self) -> &str { "loopback" }
    /// #     fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, tower_webhook::BoxError>> {
    /// #         Box::pin(async move {
    /// #             let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// #             let url = format!("http://{}", listener.local_addr()?);
    /// #             Ok(Session::spawn(url, |mut stop| async move {
    /// #                 loop {
    /// #                     tokio::select! {
    /// #                         _ = stop.stopped() => return Ok(()),
    /// #                         Ok((tcp, _)) = listener.accept() => {
    /// #                             let upstream = upstream.clone();
    /// #                             tokio::spawn(async move { upstream.serve_connection(tcp).await });
    /// #                         }
    /// #                     }
    /// #                 }
    /// #             }))
    /// #         })
    /// #     }
    /// # }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// # let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// // `Loopback` is a provider whose public URL is a local port, so that this runs offline.
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .tunnel(Tunnel::builder().provider(Loopback))
    ///     .with_graceful_shutdown(async { stopped.await.ok(); })
    ///     .spawn(app)
    ///     .await?;
    /// assert!(running.tunnel_url().unwrap().starts_with("http://127.0.0.1:"));
    /// # stop.send(()).unwrap();
    /// # running.wait().await;
    /// # Ok(()) }
    /// ```
    pub fn tunnel(mut self, tunnel: TunnelBuilder) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// How long a connection, local or through the tunnel, may take to send the head of a
    /// request before it is closed (default [`DEFAULT_HEADER_READ_TIMEOUT`], 30 s); it also
    /// bounds how long an idle kept-alive connection stays open. See
    /// [`Upstream::header_read_timeout`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .header_read_timeout(Duration::from_secs(5));
    /// assert!(format!("{server:?}").contains("header_read_timeout: 5s"));
    /// # Ok(()) }
    /// ```
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How many connections are served at once on the server's port (local clients, and the
    /// public requests cloudflared forwards there) and from ngrok, together (default
    /// [`DEFAULT_MAX_CONNECTIONS`], 256; at least 1): past it, a new connection waits until one
    /// ends. bore's and localtunnel's connections have bounds of their own. See
    /// [`Upstream::max_connections`].
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .max_connections(1024);
    /// assert!(format!("{server:?}").contains("max_connections: 1024"));
    /// # Ok(()) }
    /// ```
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Shuts down when `signal` completes instead of on Ctrl-C or `SIGTERM`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .with_graceful_shutdown(async { stopped.await.ok(); })
    ///     .spawn(app)
    ///     .await?;
    /// stop.send(()).unwrap();
    /// running.wait().await; // returns once connections are drained
    /// # Ok(()) }
    /// ```
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Serves `service` until the shutdown signal. Dropping this future stops the server, its
    /// connections and its tunnel (not gracefully).
    ///
    /// # Errors
    ///
    /// [`TunnelError::AllFailed`] when the tunnel could not be opened (the server does not start),
    /// [`TunnelError::NoProviders`] when its chain is empty.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
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
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// });
    /// let server = Server::bind(([127, 0, 0, 1], 0).into()).await?;
    /// let addr = server.local_addr()?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let client = tokio::spawn(async move {
    ///     let answer = get(addr, "/health").await;
    ///     stop.send(()).unwrap();
    ///     answer
    /// });
    /// server.with_graceful_shutdown(async { stopped.await.ok(); }).serve(app).await?;
    /// assert!(client.await?.ends_with("ok"));
    /// # Ok(()) }
    /// ```
    pub async fn serve<S, B>(self, service: S) -> Result<(), TunnelError>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let running = self.spawn(service).await?;
        // This future is the server: dropped, it stops the server (aborting a task that has
        // finished does nothing).
        let _stop = AbortUnlessReturned(Some(running.task.abort_handle()));
        running.wait().await;
        Ok(())
    }

    /// Starts serving in a background task and returns with a [`Running`] handle once the tunnel,
    /// if one was asked for, is open.
    ///
    /// The local port serves from the start. When the shutdown signal fires while the tunnel is
    /// still starting, the start is given up (what it opened so far is torn down) and this
    /// returns a `Running` without a tunnel ([`tunnel_url`](Running::tunnel_url) is `None`)
    /// that is already shutting down, instead of waiting for the chain's startup timeouts.
    /// Dropping this future before it returns (a timeout around it, say) stops the server and
    /// gives up the tunnel's start, as no `Running` is left to stop it with.
    ///
    /// # Errors
    ///
    /// [`TunnelError::AllFailed`] when the tunnel could not be opened,
    /// [`TunnelError::NoProviders`] when its chain is empty.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
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
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// });
    /// let running = Server::bind(([127, 0, 0, 1], 0).into()).await?.spawn(app).await?;
    /// assert!(get(running.local_addr(), "/health").await.ends_with("ok"));
    /// assert_eq!(running.tunnel_url(), None);
    /// # Ok(()) }
    /// ```
    pub async fn spawn<S, B>(self, service: S) -> Result<Running, TunnelError>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let local_addr = self.listener.local_addr()?;
        // Local and tunnel connections alike are watched for the graceful shutdown.
        let upstream = Upstream::service(service)
            .header_read_timeout(self.header_read_timeout)
            .max_connections(self.max_connections)
            .with_local_addr(callable(local_addr))
            .with_graceful_shutdown();
        // With Ctrl-C and `SIGTERM`, a second one cuts the drain short.
        let signals = self.shutdown.is_none();
        let shutdown = self.shutdown.unwrap_or_else(|| Box::pin(stop_signal()));
        // The server accepts before the tunnel opens: a provider that forwards to this port
        // (cloudflared) reaches the service during the tunnel's round-trip probe.
        let mut acceptor = Acceptor::new(self.listener);
        tracing::info!(%local_addr, "webhook server listening");
        let (tunnel_tx, tunnel_rx) = tokio::sync::oneshot::channel::<TunnelHandle>();
        // Fires when the shutdown signal does, so that a tunnel still starting then is given up.
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        // The port's connections end after the drain, as the tunnel's do when it closes.
        let (serving, local_connections) = upstream.scoped();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stopping);
        let task = tokio::spawn(async move {
            let upstream = serving;
            let mut shutdown = shutdown;
            // The local port's connections, so that the server stops only once they are gone.
            let mut tasks = JoinSet::new();
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    (permit, stream) = next_connection(&upstream, &mut acceptor) => {
                        serve(&upstream, &mut tasks, permit, stream);
                    }
                    Some(_) = tasks.join_next() => {}
                }
            }
            // A tunnel that reaches the service through this port (cloudflared's) brings its
            // deliveries there: the port keeps accepting through the drain and the tunnel's
            // close, one request per connection, or they would be refused (and cloudflared
            // answer them 502). Otherwise it stops accepting now.
            let mut accepting = upstream.local_addr_asked().then_some(acceptor);
            // Listened for through the drain and the tunnel's close: it cuts either short.
            let second_signal = async move {
                match signals {
                    true => stop_signal().await,
                    false => std::future::pending().await,
                }
            };
            tokio::pin!(second_signal);
            let mut second_seen = false;
            // Before the tunnel's start is given up: a `Running` returned for a server that
            // stopped meanwhile says so.
            stop_seen.store(true, Ordering::Release);
            let _ = draining_tx.send(());
            // The tunnel, once it is open (none when not asked for, or given up by the signal
            // above): it stays up through the drain, for the deliveries on their way, but is not
            // re-opened if it drops meanwhile (a Ctrl-C that reached the tunnel's own process
            // too), which could open another at a new URL while the server stops.
            let tunnel = tunnel_rx.await.ok();
            if let Some(tunnel) = &tunnel {
                tunnel.stop_reconnecting();
            }
            if tunnel.is_none() {
                // No tunnel came of it (its start was given up).
                accepting = None;
            }
            tracing::info!("shutting down: draining open connections");
            let drain = async {
                if let Some((graceful, late)) = upstream.start_drain() {
                    graceful.shutdown().await;
                    // Requests that came through the tunnel, still open, during the drain.
                    late.closed().await;
                }
            };
            let late_deliveries = async {
                match &mut accepting {
                    Some(acceptor) => serve_all(&upstream, acceptor, &mut tasks).await,
                    None => std::future::pending().await,
                }
            };
            let drained = tokio::select! {
                drained = tokio::time::timeout(DRAIN, drain) => drained.is_ok(),
                never = late_deliveries => match never {},
                () = &mut second_signal => {
                    tracing::warn!("a second shutdown signal: closing the open connections now");
                    second_seen = true;
                    true
                }
            };
            if !drained {
                tracing::warn!(
                    "connections still open after {} s; closing them (with cloudflared, once it has stopped)",
                    DRAIN.as_secs()
                );
            }
            // Its close may take the tunnel's stop grace: after a second signal (during the
            // drain, or now) it gets a second more, as the handlers below do, then goes on in
            // the background.
            let close_tunnel = async {
                if let Some(tunnel) = tunnel {
                    let close = tunnel.close();
                    tokio::pin!(close);
                    if !second_seen {
                        tokio::select! {
                            () = &mut close => return,
                            () = &mut second_signal => {}
                        }
                    }
                    if tokio::time::timeout(Duration::from_secs(1), close)
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            "a second shutdown signal: the tunnel goes on closing in the background"
                        );
                    }
                }
            };
            match &mut accepting {
                // A tunnel that brings its deliveries to this port takes them until it has
                // stopped (cloudflared, until its edge has let it go, and through its grace
                // period for the requests it is forwarding): the port keeps accepting them
                // meanwhile, or they would be refused and answered 502; then it closes.
                Some(acceptor) => {
                    tokio::select! {
                        () = close_tunnel => {}
                        never = serve_all(&upstream, acceptor, &mut tasks) => match never {},
                    }
                    drop(accepting);
                    local_connections.close();
                }
                None => {
                    local_connections.close();
                    close_tunnel.await;
                }
            }
            // Told to end above, each at its next step: waited for, so that no handler runs
            // once the server has stopped (a second at most, then they are aborted).
            let ended = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(Duration::from_secs(1), ended)
                .await
                .is_err()
            {
                tasks.shutdown().await;
            }
        });
        // This future dropped before it returns (a caller's timeout around it) leaves the caller
        // no `Running` to stop the server with: the server stops with it.
        let mut abort = AbortUnlessReturned(Some(task.abort_handle()));
        let tunnel_status = match self.tunnel {
            Some(builder) => {
                // The chain may take long (each provider has its startup timeout): a shutdown
                // signal meanwhile drops the start, which tears down what it opened so far.
                let started = tokio::select! {
                    result = builder.start(upstream) => Some(result),
                    _ = draining_rx => None,
                };
                match started {
                    Some(Ok(handle)) => {
                        tracing::info!(url = %super::http::shown_url(&handle.url()), provider = %handle.provider(), "webhooks reach this server at the tunnel URL");
                        let status = handle.status_receiver();
                        // The task only ends after taking the handle, unless it was aborted.
                        let _ = tunnel_tx.send(handle);
                        Some(status)
                    }
                    Some(Err(err)) => return Err(err),
                    None => {
                        tracing::info!("shut down while the tunnel was starting: no tunnel opened");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Running {
            local_addr,
            tunnel_status,
            stopping,
            task: abort.returned(task),
        })
    }
}

/// The next connection, and the permit to serve it. The permit first: past the connection
/// limit, new ones wait in the backlog.
async fn next_connection(
    upstream: &Upstream,
    acceptor: &mut Acceptor,
) -> (OwnedSemaphorePermit, TcpStream) {
    let permit = upstream.connection_permit().await;
    let (stream, _) = acceptor.accept().await;
    let _ = stream.set_nodelay(true);
    (permit, stream)
}

/// Serves every connection `acceptor` takes, in tasks of `tasks`; never ends.
async fn serve_all(
    upstream: &Upstream,
    acceptor: &mut Acceptor,
    tasks: &mut JoinSet<()>,
) -> std::convert::Infallible {
    loop {
        let (permit, stream) = next_connection(upstream, acceptor).await;
        serve(upstream, tasks, permit, stream);
    }
}

/// Serves `stream` in a task of `tasks`.
fn serve(
    upstream: &Upstream,
    tasks: &mut JoinSet<()>,
    permit: OwnedSemaphorePermit,
    stream: TcpStream,
) {
    let upstream = upstream.clone();
    tasks.spawn(async move {
        upstream.serve_connection(stream).await;
        drop(permit);
    });
}

/// Aborts the server's task when dropped before [`returned`](Self::returned) is called.
struct AbortUnlessReturned(Option<tokio::task::AbortHandle>);

impl AbortUnlessReturned {
    /// Disarms the guard: `task` is handed to the caller.
    fn returned(&mut self, task: JoinHandle<()>) -> JoinHandle<()> {
        self.0 = None;
        task
    }
}

impl Drop for AbortUnlessReturned {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The address to call this server at, for a provider that is handed its port (cloudflared):
/// for a server bound to all interfaces (`0.0.0.0`, `::`), the loopback address of that family,
/// as the unspecified address is for listening and not every system connects to it.
fn callable(local_addr: SocketAddr) -> SocketAddr {
    let loopback = match local_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        // Kept whole, with the scope of a link-local IPv6 address.
        _ => return local_addr,
    };
    SocketAddr::new(loopback, local_addr.port())
}

/// A server started with [`Server::spawn`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{Running, Server};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// # });
/// # let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running: Running = Server::bind(([127, 0, 0, 1], 0).into())
///     .await?
///     .with_graceful_shutdown(async { stopped.await.ok(); })
///     .spawn(app)
///     .await?;
/// assert!(running.local_addr().ip().is_loopback());
/// # stop.send(()).unwrap();
/// running.wait().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    /// The tunnel's status, which carries its current URL.
    tunnel_status: Option<tokio::sync::watch::Receiver<TunnelEvent>>,
    /// Set once the shutdown signal has come.
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Running {
    /// The local address.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Server;
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
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// // Port 0: the system picks a free port, which `local_addr` tells.
    /// let running = Server::bind(([127, 0, 0, 1], 0).into()).await?.spawn(app).await?;
    /// assert_ne!(running.local_addr().port(), 0);
    /// assert!(get(running.local_addr(), "/").await.starts_with("HTTP/1.1 200"));
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The tunnel's current public URL, if a tunnel was asked for: the last one while the tunnel
    /// is down (see [`tunnel_watch`](Self::tunnel_watch) to tell). It changes when a lost
    /// tunnel is re-opened at another URL.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Server, Tunnel, Upstream};
    /// # use tower_webhook::tunnel::{BoxFuture, Provider, Session};
    /// # #[derive(Debug)]
    /// # struct Loopback;
    /// # impl Provider for Loopback {
    /// #     fn name(&self) -> &str { "loopback" }
    /// #     fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, tower_webhook::BoxError>> {
    /// #         Box::pin(async move {
    /// #             let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// #             let url = format!("http://{}", listener.local_addr()?);
    /// #             Ok(Session::spawn(url, |mut stop| async move {
    /// #                 loop {
    /// #                     tokio::select! {
    /// #                         _ = stop.stopped() => return Ok(()),
    /// #                         Ok((tcp, _)) = listener.accept() => {
    /// #                             let upstream = upstream.clone();
    /// #                             tokio::spawn(async move { upstream.serve_connection(tcp).await });
    /// #                         }
    /// #                     }
    /// #                 }
    /// #             }))
    /// #         })
    /// #     }
    /// # }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// // `Loopback` is a provider whose public URL is a local port, so that this runs offline.
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .tunnel(Tunnel::builder().provider(Loopback))
    ///     .spawn(app)
    ///     .await?;
    /// let url = running.tunnel_url().expect("a tunnel was asked for");
    /// assert!(url.starts_with("http://"));
    /// # Ok(()) }
    /// ```
    pub fn tunnel_url(&self) -> Option<String> {
        let status = self.tunnel_status.as_ref()?;
        Some(status.borrow().url().to_owned())
    }

    /// The tunnel's status as it changes (`Up`, `UrlChanged`, `Down`, `Closed`), if a tunnel was
    /// asked for: a `watch` receiver, as [`TunnelHandle::watch`](super::TunnelHandle::watch)
    /// gives. Follow it to point a provider's hook at each new URL.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Server, Tunnel, TunnelEvent, Upstream};
    /// # use tower_webhook::tunnel::{BoxFuture, Provider, Session};
    /// # #[derive(Debug)]
    /// # struct Loopback;
    /// # impl Provider for Loopback {
    /// #     fn name(&self) -> &str { "loopback" }
    /// #     fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, tower_webhook::BoxError>> {
    /// #         Box::pin(async move {
    /// #             let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// #             let url = format!("http://{}", listener.local_addr()?);
    /// #             Ok(Session::spawn(url, |mut stop| async move {
    /// #                 loop {
    /// #                     tokio::select! {
    /// #                         _ = stop.stopped() => return Ok(()),
    /// #                         Ok((tcp, _)) = listener.accept() => {
    /// #                             let upstream = upstream.clone();
    /// #                             tokio::spawn(async move { upstream.serve_connection(tcp).await });
    /// #                         }
    /// #                     }
    /// #                 }
    /// #             }))
    /// #         })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .tunnel(Tunnel::builder().provider(Loopback))
    ///     .with_graceful_shutdown(tokio::time::sleep(Duration::from_millis(100)))
    ///     .spawn(app)
    ///     .await?;
    /// let mut status = running.tunnel_watch().expect("a tunnel was asked for");
    /// assert!(status.borrow_and_update().is_up());
    /// // After the shutdown, the tunnel is closed.
    /// status.changed().await?;
    /// assert!(matches!(*status.borrow(), TunnelEvent::Closed { .. }));
    /// # Ok(()) }
    /// ```
    pub fn tunnel_watch(&self) -> Option<tokio::sync::watch::Receiver<TunnelEvent>> {
        self.tunnel_status.clone()
    }

    /// Whether the shutdown signal has come: the server no longer accepts connections (unless
    /// its tunnel reaches it through its port, as cloudflared's does, until the tunnel has
    /// stopped after the drain), and
    /// drains those still open, or is done. A server whose signal came while its tunnel was
    /// starting is returned by [`Server::spawn`] already stopping, without a tunnel: there is
    /// no URL to announce.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .with_graceful_shutdown(async { stopped.await.ok(); })
    ///     .spawn(app)
    ///     .await?;
    /// assert!(!running.is_stopping());
    /// stop.send(()).unwrap();
    /// while !running.is_stopping() {
    ///     tokio::time::sleep(Duration::from_millis(1)).await;
    /// }
    /// running.wait().await;
    /// # Ok(()) }
    /// ```
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits until the server has shut down (connections drained, tunnel closed).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// # });
    /// let running = Server::bind(([127, 0, 0, 1], 0).into())
    ///     .await?
    ///     .with_graceful_shutdown(tokio::time::sleep(Duration::from_millis(50)))
    ///     .spawn(app)
    ///     .await?;
    /// let addr = running.local_addr();
    /// running.wait().await;
    /// // Shut down: the port no longer accepts connections.
    /// assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Ctrl-C, or on Unix `SIGTERM` too. On Unix both are listened for before this returns, so a
/// signal sent once `spawn` has returned never gets its default action (the process killed on
/// the spot). A signal that cannot be listened for is never received.
fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                () = received(interrupt) => {}
                () = received(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The `start(use_tunnel)` shape: binds `addr`, opens the tunnel chain of
/// [`TunnelConfig::from_env`] when `use_tunnel` is true, serves `service` and shuts down
/// gracefully on Ctrl-C or `SIGTERM`.
///
/// # Errors
///
/// A [`TunnelError`] for a bad setting, an address that cannot be bound, or a tunnel that no
/// provider could open.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), tower_webhook::tunnel::TunnelError> {
/// use std::convert::Infallible;
/// use http::{Request, Response};
///
/// let app = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
///     Ok::<_, Infallible>(Response::new(String::from("ok")))
/// });
/// let use_tunnel = std::env::args().any(|arg| arg == "--use-tunnel");
/// tower_webhook::tunnel::start(([0, 0, 0, 0], 3000).into(), app, use_tunnel).await
/// # }
/// ```
pub async fn start<S, B>(addr: SocketAddr, service: S, use_tunnel: bool) -> Result<(), TunnelError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut server = Server::bind(addr).await?;
    if use_tunnel {
        server = server.tunnel(TunnelConfig::from_env()?.builder());
    }
    server.serve(service).await
}
