//! A webhook server with an optional tunnel and graceful shutdown.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::accept::Acceptor;
use super::provider::BoxFuture;
use super::upstream::DEFAULT_HEADER_READ_TIMEOUT;
use super::{TunnelBuilder, TunnelConfig, TunnelError, Upstream};
use crate::BoxError;

/// How long open connections get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Binds, optionally opens a tunnel, serves a tower service, and shuts down gracefully.
///
/// Tunnel connections are served by the service directly (no extra hop through the local port);
/// the local port serves it too. The shutdown signal (Ctrl-C unless
/// [`with_graceful_shutdown`](Self::with_graceful_shutdown) sets another) stops accepting, lets
/// open requests finish (up to 10 s), then closes the tunnel.
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
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("tunnel", &self.tunnel)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// [`TunnelError::Io`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<Self, TunnelError> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            tunnel: None,
            shutdown: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Io`] when the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.listener.local_addr()?)
    }

    /// Opens this tunnel chain when serving starts.
    pub fn tunnel(mut self, tunnel: TunnelBuilder) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// How long a connection, local or through the tunnel, may take to send the head of a
    /// request before it is closed (default [`DEFAULT_HEADER_READ_TIMEOUT`], 30 s); it also
    /// bounds how long an idle kept-alive connection stays open. See
    /// [`Upstream::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Shuts down when `signal` completes instead of on Ctrl-C.
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Serves `service` until the shutdown signal.
    ///
    /// # Errors
    ///
    /// [`TunnelError::AllFailed`] when the tunnel could not be opened (the server does not start).
    pub async fn serve<S, B>(self, service: S) -> Result<(), TunnelError>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.spawn(service).await?.wait().await;
        Ok(())
    }

    /// Starts serving in a background task and returns at once with a [`Running`] handle.
    ///
    /// # Errors
    ///
    /// [`TunnelError::AllFailed`] when the tunnel could not be opened.
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
            .with_local_addr(local_addr)
            .with_graceful_shutdown();
        let tunnel = match self.tunnel {
            Some(builder) => {
                let handle = builder.start(upstream.clone()).await?;
                tracing::info!(url = %handle.url(), provider = %handle.provider(), "webhooks reach this server at the tunnel URL");
                Some(handle)
            }
            None => None,
        };
        let (url_tx, url_rx) = tokio::sync::watch::channel(tunnel.as_ref().map(|t| t.url()));
        let shutdown = self.shutdown.unwrap_or_else(|| {
            Box::pin(async {
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        let mut acceptor = Acceptor::new(self.listener);
        tracing::info!(%local_addr, "webhook server listening");
        let task = tokio::spawn(async move {
            let mut shutdown = shutdown;
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    (stream, _) = acceptor.accept() => {
                        let _ = stream.set_nodelay(true);
                        let upstream = upstream.clone();
                        tokio::spawn(async move { upstream.serve_connection(stream).await });
                    }
                }
            }
            drop(acceptor);
            tracing::info!("shutting down: draining open connections");
            let drain = async {
                if let Some(graceful) = upstream.take_graceful() {
                    graceful.shutdown().await;
                }
            };
            if tokio::time::timeout(DRAIN, drain).await.is_err() {
                tracing::warn!(
                    "connections still open after {} s; closing them",
                    DRAIN.as_secs()
                );
            }
            if let Some(tunnel) = tunnel {
                tunnel.close().await;
            }
            drop(url_tx);
        });
        Ok(Running {
            local_addr,
            tunnel_url: url_rx,
            task,
        })
    }
}

/// A server started with [`Server::spawn`].
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    tunnel_url: tokio::sync::watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The public URL the tunnel had when serving started, if a tunnel was asked for.
    pub fn tunnel_url(&self) -> Option<String> {
        self.tunnel_url.borrow().clone()
    }

    /// Waits until the server has shut down (connections drained, tunnel closed).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The `start(use_tunnel)` shape: binds `addr`, opens the tunnel chain of
/// [`TunnelConfig::from_env`] when `use_tunnel` is true, serves `service` and shuts down
/// gracefully on Ctrl-C.
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
