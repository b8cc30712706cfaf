//! The provider chain, the round-trip probe, the handle and its supervisor.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{Attempt, chain};
use super::http::{BaseUrl, get, shown_url};
use super::provider::{Provider, SESSION_STOP_GRACE, Session};
use super::upstream::{Connections, PROBE_HEADER, PROBE_PATH};
use super::{TlsRoots, TunnelError, Upstream};
use crate::BoxError;

/// Entry point of the tunnel bootstrapper. See the [module docs](super).
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{Bore, LocalTunnel, Tunnel};
///
/// let handle = Tunnel::builder()
///     .provider(LocalTunnel::new())
///     .fallback(Bore::new())
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// println!("webhooks go to {}", handle.url());
/// handle.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Tunnel(());

impl Tunnel {
    /// An empty chain with the default probe and reconnect settings.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Tunnel, TunnelError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let builder = Tunnel::builder();
    /// assert!(builder.provider_names().is_empty());
    /// let err = builder.start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000))).await.unwrap_err();
    /// assert!(matches!(err, TunnelError::NoProviders));
    /// # Ok(()) }
    /// ```
    pub fn builder() -> TunnelBuilder {
        TunnelBuilder::new()
    }
}

/// Builds a provider chain and starts it. See the [module docs](super).
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_webhook::tunnel::{Bore, TunnelBuilder};
///
/// let handle = TunnelBuilder::new()
///     .provider(Bore::new().server("127.0.0.1"))
///     .probe_timeout(Duration::from_secs(2))
///     .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(10))
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TunnelBuilder {
    providers: Vec<Arc<dyn Provider>>,
    probe: bool,
    probe_timeout: Duration,
    reconnect: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    close_grace: Duration,
    tls: TlsRoots,
}

impl fmt::Debug for TunnelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelBuilder")
            .field("providers", &self.providers)
            .field("probe", &self.probe)
            .field("probe_timeout", &self.probe_timeout)
            .field("reconnect", &self.reconnect)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for TunnelBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TunnelBuilder {
    /// An empty chain; probe on (5 s), reconnect on (backoff 250 ms doubling to 30 s).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelBuilder;
    ///
    /// let shown = format!("{:?}", TunnelBuilder::new());
    /// assert!(shown.contains("probe: true, probe_timeout: 5s, reconnect: true"));
    /// assert!(shown.contains("backoff_min: 250ms, backoff_max: 30s"));
    /// ```
    pub fn new() -> Self {
        Self {
            providers: Vec::new(),
            probe: true,
            probe_timeout: Duration::from_secs(5),
            reconnect: true,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            close_grace: SESSION_STOP_GRACE,
            tls: TlsRoots::new(),
        }
    }

    /// Adds a provider at the end of the chain.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, Cloudflared, Tunnel};
    ///
    /// let builder = Tunnel::builder()
    ///     .provider(Cloudflared::new())
    ///     .provider(Bore::new().server("bore.example.com"));
    /// assert_eq!(builder.provider_names(), ["cloudflared", "bore"]);
    /// ```
    pub fn provider(mut self, provider: impl Provider) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }

    /// Adds a provider to try when the ones before it fail (the same as
    /// [`provider`](Self::provider), named for reading).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, LocalTunnel, Tunnel};
    ///
    /// let builder = Tunnel::builder()
    ///     .provider(LocalTunnel::new())
    ///     .fallback(Bore::new());
    /// assert_eq!(builder.provider_names(), ["localtunnel", "bore"]);
    /// ```
    pub fn fallback(self, provider: impl Provider) -> Self {
        self.provider(provider)
    }

    /// Adds an already shared provider.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_webhook::tunnel::{Bore, Provider, Tunnel};
    ///
    /// // One provider shared by the chains of two servers.
    /// let bore: Arc<dyn Provider> = Arc::new(Bore::new().server("bore.example.com"));
    /// let api = Tunnel::builder().provider_arc(Arc::clone(&bore));
    /// let hooks = Tunnel::builder().provider_arc(Arc::clone(&bore));
    /// assert_eq!(api.provider_names(), hooks.provider_names());
    /// assert_eq!(Arc::strong_count(&bore), 3);
    /// ```
    pub fn provider_arc(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// The names of the providers, in order.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelConfig;
    ///
    /// let config = TunnelConfig::from_lookup(|name| {
    ///     (name == "TUNNEL_SERVICE").then(|| "cloudflared,bore".to_owned())
    /// })
    /// .unwrap();
    /// assert_eq!(config.builder().provider_names(), ["cloudflared", "bore"]);
    /// ```
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Turns the round-trip probe on or off (default on).
    ///
    /// The probe sends `GET` [`PROBE_PATH`] with a random nonce through the
    /// public URL and requires the nonce back from this process. An `https://` URL (ngrok,
    /// cloudflared, hosted localtunnel) is probed over TLS, its certificate verified against
    /// [`tls_roots`](Self::tls_roots).
    ///
    /// The probe goes to the public URL's scheme, host and port, at a path of its own, without
    /// the URL's user info, path or query: a provider whose front end asks for those (basic
    /// credentials, a token in the query, a path prefix it routes by) fails the probe; start
    /// such a tunnel with the probe off.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Tunnel, TunnelEvent, Upstream};
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
    /// let handle = Tunnel::builder()
    ///     .provider(Loopback)
    ///     .probe(false)
    ///     .start(Upstream::service(app))
    ///     .await?;
    /// assert!(matches!(handle.status(), TunnelEvent::Up { verified: false, .. }));
    /// handle.close().await;
    /// # Ok(()) }
    /// ```
    pub fn probe(mut self, enabled: bool) -> Self {
        self.probe = enabled;
        self
    }

    /// The certificate authorities the probe trusts for an `https://` public URL (default
    /// [`TlsRoots::new`], the Mozilla root set). A provider's own https requests use the roots
    /// given to that provider (e.g. [`LocalTunnel::tls_roots`](super::LocalTunnel::tls_roots)).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{TlsRoots, Tunnel};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// // Trust only the private CA of a self-hosted tunnel server.
    /// let roots = TlsRoots::empty().add_certificate(private_ca_der)?;
    /// let builder = Tunnel::builder().tls_roots(roots);
    /// assert!(format!("{builder:?}").contains("TlsRoots { roots: 1, added: 1 }"));
    /// # Ok::<(), tower_webhook::tunnel::TunnelError>(())
    /// ```
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls = roots;
        self
    }

    /// Also trusts this CA certificate (DER) for the probe through an `https://` public URL.
    /// See [`TlsRoots::add_certificate`].
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] when the bytes are not a DER certificate.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Tunnel, TunnelError};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// let builder = Tunnel::builder().root_certificate(private_ca_der)?;
    /// assert!(format!("{builder:?}").contains("added: 1"));
    ///
    /// let err = Tunnel::builder().root_certificate(b"-----BEGIN CERTIFICATE-----".to_vec()).unwrap_err();
    /// assert!(matches!(err, TunnelError::Config { .. }));
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn root_certificate(mut self, der: impl Into<Vec<u8>>) -> Result<Self, TunnelError> {
        self.tls = self.tls.add_certificate(der)?;
        Ok(self)
    }

    /// How long the probe may take, within the provider's startup timeout (default 5 s). A
    /// provider whose URLs take longer to become reachable asks for more with
    /// [`Provider::probe_timeout`](super::Provider::probe_timeout) (cloudflared: the rest of its
    /// startup timeout). Failed attempts are repeated after 100 ms, then twice as long each
    /// time, up to 1 s.
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than a millisecond: no probe could come back in time, and every
    /// start would fail. Use [`probe(false)`](Self::probe) to turn the probe off.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Tunnel;
    ///
    /// let builder = Tunnel::builder().probe_timeout(Duration::from_secs(2));
    /// assert!(format!("{builder:?}").contains("probe_timeout: 2s"));
    ///
    /// // No time at all is a mistake, refused here rather than failing every start.
    /// assert!(std::panic::catch_unwind(|| Tunnel::builder().probe_timeout(Duration::ZERO)).is_err());
    /// ```
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "TunnelBuilder::probe_timeout must be at least 1 ms, got {timeout:?}: every probe \
             would fail, and every start with it (use probe(false) to turn the probe off)"
        );
        self.probe_timeout = timeout;
        self
    }

    /// Re-open the tunnel when it drops (default on).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, Tunnel};
    ///
    /// // In a test, a dropped tunnel should fail loudly rather than come back.
    /// let builder = Tunnel::builder().provider(Bore::new()).reconnect(false);
    /// assert!(format!("{builder:?}").contains("reconnect: false"));
    /// ```
    pub fn reconnect(mut self, enabled: bool) -> Self {
        self.reconnect = enabled;
        self
    }

    /// The delay before re-opening: `min` doubling per failed round up to `max`, with jitter.
    /// A re-opened tunnel that drops again within `max` counts as a failed round. A `min` of
    /// zero re-opens at once the first time, then waits 2 ms, 4 ms, ... up to `max`. A `max`
    /// below 100 ms is raised to 100 ms, so that a tunnel that keeps dropping, or a provider that
    /// keeps failing, is never re-opened in a tight loop.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Tunnel;
    ///
    /// let builder = Tunnel::builder().reconnect_backoff(Duration::from_millis(100), Duration::from_secs(10));
    /// assert!(format!("{builder:?}").contains("backoff_min: 100ms, backoff_max: 10s"));
    ///
    /// // A maximum below the minimum is raised to it.
    /// let builder = Tunnel::builder().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1));
    /// assert!(format!("{builder:?}").contains("backoff_min: 2s, backoff_max: 2s"));
    ///
    /// // No delay at all would spin: the maximum is at least 100 ms.
    /// let builder = Tunnel::builder().reconnect_backoff(Duration::ZERO, Duration::ZERO);
    /// assert!(format!("{builder:?}").contains("backoff_min: 0ns, backoff_max: 100ms"));
    /// ```
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min).max(BACKOFF_MAX_FLOOR);
        self
    }

    /// Opens the first provider of the chain that works and verifies it with the probe.
    ///
    /// # Errors
    ///
    /// [`TunnelError::NoProviders`] for an empty chain, [`TunnelError::AllFailed`] with every
    /// provider's reason when none works.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Tunnel, Upstream};
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
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello from the bot")))
    /// });
    /// // `Loopback` is a provider whose public URL is a local port, so that this runs offline.
    /// let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    ///
    /// let addr = handle.url().strip_prefix("http://").unwrap().parse()?;
    /// assert!(get(addr, "/webhook").await.ends_with("hello from the bot"));
    /// handle.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(self, upstream: impl Into<Upstream>) -> Result<TunnelHandle, TunnelError> {
        if self.providers.is_empty() {
            return Err(TunnelError::NoProviders);
        }
        // Every connection this tunnel serves ends with it, those that outlive the session that
        // received them included (dropped at once when no provider works).
        let (upstream, connections) = upstream.into().scoped();
        let chain = Arc::new(self);
        let opened = chain
            .open(&upstream, &mut std::future::pending::<()>())
            .await
            .map_err(|failed| TunnelError::AllFailed {
                attempts: failed.unwrap_or_default(),
            })?;
        let first = TunnelEvent::Up {
            provider: opened.provider.clone(),
            url: opened.session.url().to_owned(),
            verified: opened.verified,
        };
        let (status_tx, status_rx) = watch::channel(first.clone());
        let (events_tx, _) = broadcast::channel(64);
        let (close_tx, close_rx) = oneshot::channel();
        let no_reconnect = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            chain,
            upstream,
            connections,
            status: status_tx,
            events: events_tx.clone(),
            no_reconnect: Arc::clone(&no_reconnect),
        };
        let task = tokio::spawn(supervisor.run(opened, close_rx));
        Ok(TunnelHandle {
            status: status_rx,
            events: events_tx,
            close: Some(close_tx),
            task: Some(task),
            no_reconnect,
        })
    }

    /// Tries each provider in turn; the attempts of all failures otherwise, or `None` when
    /// `cancel` completed first. A session opened by then (its probe under way, or failed
    /// before the provider being tried) is closed, and waited for, before this returns `None`
    /// or the failures, so that closing a tunnel being re-opened waits for its teardown as
    /// closing an open one does, and nothing a failed start opened outlives it. The teardowns
    /// still running when a provider works go with it, for its close to wait for.
    async fn open<C>(
        &self,
        upstream: &Upstream,
        cancel: &mut C,
    ) -> Result<Opened, Option<Vec<Attempt>>>
    where
        C: Future + Unpin,
    {
        let mut attempts = Vec::new();
        // The teardowns of sessions whose probe failed: they run while the next provider is
        // tried, and a cancel waits for them as for the session it closes.
        let mut stopping = Vec::new();
        for provider in &self.providers {
            let name = provider.name().to_owned();
            let limit = provider.startup_timeout();
            let started = Instant::now();
            let deadline = super::time::deadline(started, limit);
            let timed_out = || format!("did not start within {} ms", limit.as_millis());
            let opening = tokio::select! {
                _ = &mut *cancel => {
                    stopped(stopping).await;
                    return Err(None);
                }
                opening = within(deadline, open_catching(&**provider, upstream.clone())) => opening,
            };
            let reason = match opening {
                None => timed_out(),
                Some(Err(err)) => chain(&*err),
                Some(Ok(mut session)) => {
                    let probed = if self.probe {
                        // Within what is left of the startup timeout, so that a failing probe
                        // ends with its own reason (refused, not trusted, answered 404) rather
                        // than being cut off by the startup deadline with none.
                        // A provider may ask for longer (cloudflared), within its startup
                        // timeout only: without one (`Duration::MAX`), the builder's bounds it.
                        // Its probe ends a little before the startup deadline, so that it fails
                        // with its own reason.
                        let limit = match (deadline, provider.probe_timeout()) {
                            (Some(deadline), Some(own)) if own > self.probe_timeout => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                own.min(left.saturating_sub(PROBE_MARGIN))
                                    .max(self.probe_timeout.min(left))
                            }
                            (Some(deadline), _) => self
                                .probe_timeout
                                .min(deadline.saturating_duration_since(Instant::now())),
                            (None, _) => self.probe_timeout,
                        };
                        let url = session.url().to_owned();
                        let probing = probe(&url, upstream, limit, &self.tls);
                        tokio::select! {
                            _ = &mut *cancel => {
                                session.close(self.close_grace).await;
                                stopped(stopping).await;
                                return Err(None);
                            }
                            probed = within(deadline, probing) => probed,
                            // A tunnel lost while it is probed (its process exited, its server
                            // refused it) fails the attempt with why, at once, rather than with
                            // the probe's own failure once its time is up.
                            lost = session.ended() => Some(Err(format!(
                                "the tunnel ended during the round-trip probe: {lost}"
                            )
                            .into())),
                        }
                    } else {
                        Some(Ok(false))
                    };
                    let reason = match probed {
                        None => timed_out(),
                        Some(Err(err)) => chain(&*err),
                        Some(Ok(verified)) => {
                            tracing::info!(provider = %name, url = %shown_url(session.url()), verified, "tunnel up");
                            return Ok(Opened {
                                provider: name,
                                session,
                                verified,
                                stopping,
                            });
                        }
                    };
                    // A failed probe stops the session in the background, as the next
                    // provider is tried; a cancel (a `close`) waits for it.
                    stopping.push(tokio::spawn(session.close(self.close_grace)));
                    reason
                }
            };
            tracing::warn!(provider = %name, %reason, "tunnel provider failed");
            attempts.push(Attempt {
                provider: name,
                reason,
                hint: provider.hint(),
                elapsed: started.elapsed(),
            });
        }
        // Nothing this attempt opened outlives it: a cloudflared whose probe failed is still in
        // its stop grace, say.
        stopped(stopping).await;
        Err(Some(attempts))
    }

    fn backoff(&self, round: u32) -> Duration {
        // Doubling from `min`, or from BACKOFF_FLOOR when `min` is zero: zero doubles to
        // nothing, and a tunnel that keeps dropping would be re-opened in a tight loop.
        let delay = match round {
            0 => self.backoff_min,
            _ => self
                .backoff_min
                .max(BACKOFF_FLOOR)
                .saturating_mul(2u32.saturating_pow(round.min(16))),
        }
        .min(self.backoff_max);
        // Jitter in [delay/2, delay].
        let half = delay / 2;
        half.saturating_add(half.mul_f64(fastrand::f64()))
    }
}

/// `provider.open(upstream)`, with a panic (a provider's bug) turned into the error of this
/// attempt: the chain moves on to the next provider, and a supervisor re-opening the tunnel
/// retries, instead of the panic ending the start or the supervisor (which would leave the tunnel
/// down for good, its events never ending).
async fn open_catching(provider: &dyn Provider, upstream: Upstream) -> Result<Session, BoxError> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let panicked = |payload: Box<dyn std::any::Any + Send>| -> BoxError {
        let message = crate::panic::message(&*payload).unwrap_or("no message");
        let err = format!("the provider panicked: {message}").into();
        crate::panic::dispose(payload);
        err
    };
    let mut opening =
        catch_unwind(AssertUnwindSafe(|| provider.open(upstream))).map_err(panicked)?;
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| opening.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(opened)) => std::task::Poll::Ready(opened),
            Err(payload) => std::task::Poll::Ready(Err(panicked(payload))),
        },
    )
    .await
}

/// Waits for the teardowns of [`TunnelBuilder::open`]'s failed sessions.
async fn stopped(stopping: Vec<tokio::task::JoinHandle<()>>) {
    for teardown in stopping {
        let _ = teardown.await;
    }
}

/// `work`'s output, or `None` when `deadline` (none: no limit) passes first.
async fn within<F: Future>(deadline: Option<Instant>, work: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

struct Opened {
    provider: String,
    session: Session,
    verified: bool,
    /// The teardowns, still running, of the sessions opened before this one whose probe
    /// failed: a close waits for them too.
    stopping: Vec<tokio::task::JoinHandle<()>>,
}

/// What the reconnect delays double from after the first round when the minimum is zero.
const BACKOFF_FLOOR: Duration = Duration::from_millis(1);

/// The least maximum reconnect delay: a tunnel re-opened sooner than this after it dropped
/// counts as a failed round, and the delays grow up to at least this.
const BACKOFF_MAX_FLOOR: Duration = Duration::from_millis(100);

/// What a probe that takes a provider's longer time leaves of its startup timeout, for its own
/// reason to be told rather than the startup deadline's.
const PROBE_MARGIN: Duration = Duration::from_millis(250);

/// The first pause between probe attempts; it doubles after each, up to [`PROBE_RETRY_MAX`].
const PROBE_RETRY: Duration = Duration::from_millis(100);

/// The longest pause between probe attempts: a URL still unreachable after a few seconds (a
/// new hostname not yet resolved) is asked once a second, not ten times.
const PROBE_RETRY_MAX: Duration = Duration::from_secs(1);

/// Sends the round-trip probe through `url` (over TLS for `https://`, trusting `tls`).
async fn probe(
    url: &str,
    upstream: &Upstream,
    limit: Duration,
    tls: &TlsRoots,
) -> Result<bool, BoxError> {
    let base = BaseUrl::parse(url, false)?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    upstream.probes().insert(&nonce);
    struct Forget<'a>(&'a Upstream, &'a str);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.probes().remove(self.1);
        }
    }
    let _forget = Forget(upstream, &nonce);
    // `None` for a limit too long to be a deadline (`Duration::MAX`): the provider's startup
    // timeout still bounds the probe.
    let deadline = super::time::deadline(Instant::now(), limit);
    let headers = [
        (PROBE_HEADER, nonce.as_str()),
        ("bypass-tunnel-reminder", "1"),
    ];
    let mut last;
    let mut pause = PROBE_RETRY;
    loop {
        let left = deadline.map_or(limit, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        match get(
            &base,
            PROBE_PATH,
            &headers,
            left.max(Duration::from_millis(1)),
            Some(tls),
        )
        .await
        {
            Ok((status, body)) if status.is_success() && body == nonce.as_bytes() => {
                return Ok(true);
            }
            Ok((status, _)) => last = format!("answered {status} without the nonce"),
            Err(err) => last = chain(&*err),
        }
        if super::time::due_within(deadline, Instant::now(), pause) {
            return Err(format!(
                "the round-trip probe through {} did not reach this service within {} ms: {last}",
                shown_url(url),
                limit.as_millis()
            )
            .into());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PROBE_RETRY_MAX);
    }
}

/// A change of a tunnel's status. See [`TunnelHandle::events`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::TunnelEvent;
///
/// fn describe(event: &TunnelEvent) -> String {
///     match event {
///         TunnelEvent::Up { url, .. } => format!("webhooks go to {url}"),
///         TunnelEvent::UrlChanged { new, .. } => format!("update the webhook URL to {new}"),
///         TunnelEvent::Down { reason, .. } => format!("tunnel down ({reason}), re-opening"),
///         _ => "tunnel closed".to_owned(),
///     }
/// }
///
/// let event = TunnelEvent::UrlChanged {
///     provider: "localtunnel".to_owned(),
///     old: "https://old-name.loca.lt".to_owned(),
///     new: "https://new-name.loca.lt".to_owned(),
///     verified: true,
/// };
/// assert_eq!(describe(&event), "update the webhook URL to https://new-name.loca.lt");
///
/// // `Debug` leaves out the credentials of a URL (a provider of your own may give one with a
/// // password or a token); the fields keep it whole.
/// let event = TunnelEvent::Up {
///     provider: "mine".to_owned(),
///     url: "https://hook:s3cret@hooks.example.com".to_owned(),
///     verified: false,
/// };
/// assert!(!format!("{event:?}").contains("s3cret"));
/// assert!(event.url().contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelEvent {
    /// The tunnel is open (first start, or re-opened with the same URL).
    Up {
        /// The provider that opened it.
        provider: String,
        /// The public URL.
        url: String,
        /// Whether the round-trip probe came back through the URL.
        verified: bool,
    },
    /// The tunnel was re-opened with a different URL: update the webhook settings.
    UrlChanged {
        /// The provider that opened it.
        provider: String,
        /// The URL before.
        old: String,
        /// The URL now.
        new: String,
        /// Whether the round-trip probe came back through the new URL.
        verified: bool,
    },
    /// The tunnel dropped; the supervisor is re-opening it unless reconnects are off.
    Down {
        /// The provider whose tunnel dropped.
        provider: String,
        /// The URL that no longer works.
        url: String,
        /// Why.
        reason: String,
    },
    /// The tunnel was closed.
    Closed {
        /// The provider of the last tunnel.
        provider: String,
        /// The last URL.
        url: String,
    },
}

impl fmt::Debug for TunnelEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Up {
                provider,
                url,
                verified,
            } => f
                .debug_struct("Up")
                .field("provider", provider)
                .field("url", &shown_url(url))
                .field("verified", verified)
                .finish(),
            Self::UrlChanged {
                provider,
                old,
                new,
                verified,
            } => f
                .debug_struct("UrlChanged")
                .field("provider", provider)
                .field("old", &shown_url(old))
                .field("new", &shown_url(new))
                .field("verified", verified)
                .finish(),
            Self::Down {
                provider,
                url,
                reason,
            } => f
                .debug_struct("Down")
                .field("provider", provider)
                .field("url", &shown_url(url))
                .field("reason", reason)
                .finish(),
            Self::Closed { provider, url } => f
                .debug_struct("Closed")
                .field("provider", provider)
                .field("url", &shown_url(url))
                .finish(),
        }
    }
}

impl TunnelEvent {
    /// The URL this event is about (the new one for [`UrlChanged`](Self::UrlChanged)).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    ///
    /// let event = TunnelEvent::UrlChanged {
    ///     provider: "bore".to_owned(),
    ///     old: "http://bore.pub:41001".to_owned(),
    ///     new: "http://bore.pub:41002".to_owned(),
    ///     verified: true,
    /// };
    /// assert_eq!(event.url(), "http://bore.pub:41002");
    /// ```
    pub fn url(&self) -> &str {
        match self {
            Self::Up { url, .. } | Self::Down { url, .. } | Self::Closed { url, .. } => url,
            Self::UrlChanged { new, .. } => new,
        }
    }

    /// The provider this event is about.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    ///
    /// let event = TunnelEvent::Down {
    ///     provider: "bore".to_owned(),
    ///     url: "http://bore.pub:41001".to_owned(),
    ///     reason: "no heartbeat for 8 s".to_owned(),
    /// };
    /// assert_eq!(event.provider(), "bore");
    /// ```
    pub fn provider(&self) -> &str {
        match self {
            Self::Up { provider, .. }
            | Self::Down { provider, .. }
            | Self::Closed { provider, .. }
            | Self::UrlChanged { provider, .. } => provider,
        }
    }

    /// Whether the tunnel is open after this event.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    ///
    /// let up = TunnelEvent::Up {
    ///     provider: "cloudflared".to_owned(),
    ///     url: "https://quiet-river.trycloudflare.com".to_owned(),
    ///     verified: true,
    /// };
    /// let closed = TunnelEvent::Closed { provider: up.provider().to_owned(), url: up.url().to_owned() };
    /// assert!(up.is_up());
    /// assert!(!closed.is_up());
    /// ```
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up { .. } | Self::UrlChanged { .. })
    }
}

/// A running tunnel: its URL, its status and events, and the way to close it.
///
/// Dropping the handle closes the tunnel too (in the background); [`close`](Self::close) waits
/// until everything is torn down.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{Bore, Tunnel, TunnelEvent};
///
/// let handle = Tunnel::builder().provider(Bore::new()).start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000))).await?;
/// let mut events = handle.events();
/// while let Some(event) = events.next().await {
///     if let TunnelEvent::UrlChanged { new, .. } = event {
///         println!("update the webhook URL to {new}");
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TunnelHandle {
    status: watch::Receiver<TunnelEvent>,
    events: broadcast::Sender<TunnelEvent>,
    close: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Set once the tunnel may no longer be re-opened.
    no_reconnect: Arc<AtomicBool>,
}

impl TunnelHandle {
    /// The public URL (the last one, while the tunnel is down).
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let url = handle.url();
    /// assert!(url.starts_with("http://127.0.0.1:"));
    /// println!("set the webhook URL to {url}/webhook");
    /// # handle.close().await;
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> String {
        self.status.borrow().url().to_owned()
    }

    /// A receiver of the status, for the server helper to report the current URL.
    pub(crate) fn status_receiver(&self) -> watch::Receiver<TunnelEvent> {
        self.status.clone()
    }

    /// The provider that opened the current tunnel.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// assert_eq!(handle.provider(), "loopback");
    /// # handle.close().await;
    /// # Ok(()) }
    /// ```
    pub fn provider(&self) -> String {
        self.status.borrow().provider().to_owned()
    }

    /// The latest event.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let TunnelEvent::Up { verified, .. } = handle.status() else { panic!("not up") };
    /// assert!(verified, "the round-trip probe came back");
    /// # handle.close().await;
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> TunnelEvent {
        self.status.borrow().clone()
    }

    /// A watch of the latest event (starts with the `Up` of the first start).
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let mut status = handle.watch();
    /// assert!(status.borrow_and_update().is_up());
    /// handle.close().await;
    /// // The last status is kept after the tunnel is gone.
    /// assert!(!status.borrow().is_up());
    /// # Ok(()) }
    /// ```
    pub fn watch(&self) -> watch::Receiver<TunnelEvent> {
        self.status.clone()
    }

    /// Every event from now on. The events wait for the receiver in a queue of 64: one that falls
    /// further behind misses the oldest (logged as a warning with how many); [`watch`](Self::watch)
    /// always has the latest.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let mut events = handle.events();
    /// handle.close().await;
    /// assert!(matches!(events.next().await, Some(TunnelEvent::Closed { .. })));
    /// assert_eq!(events.next().await, None);
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> TunnelEvents {
        TunnelEvents {
            rx: self.events.subscribe(),
        }
    }

    /// Keeps the tunnel open, but no longer re-opens it if it drops: for a server that is
    /// draining, whose deliveries on their way still come through the tunnel, and which must
    /// not open a new one (at another URL, through a fallback provider) while it stops. A
    /// re-open already under way finishes; [`close`](Self::close) still ends the tunnel.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// // The shutdown signal came: the drain begins, the tunnel stays up for it.
    /// handle.stop_reconnecting();
    /// assert!(handle.status().is_up());
    /// // ... the drain ends.
    /// handle.close().await;
    /// # Ok(()) }
    /// ```
    pub fn stop_reconnecting(&self) {
        self.no_reconnect.store(true, Ordering::Release);
    }

    /// Closes the tunnel and waits until it is torn down, also when it is being re-opened: a
    /// tunnel whose probe is under way then is closed and waited for too, and so is one whose
    /// probe failed while the next provider is tried.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let status = handle.watch();
    /// handle.close().await;
    /// assert!(!status.borrow().is_up());
    /// # Ok(()) }
    /// ```
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TunnelHandle {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

/// The events of a tunnel. See [`TunnelHandle::events`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{TunnelEvent, TunnelEvents};
/// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
/// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
/// let mut events: TunnelEvents = handle.events();
/// let watcher = tokio::spawn(async move {
///     let mut seen = Vec::new();
///     while let Some(event) = events.next().await {
///         seen.push(event.is_up());
///     }
///     seen
/// });
/// handle.close().await;
/// assert_eq!(watcher.await?, [false]); // one `Closed`, then the end
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TunnelEvents {
    rx: broadcast::Receiver<TunnelEvent>,
}

impl TunnelEvents {
    /// The next event; `None` once the tunnel is closed and all events were read.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelEvent;
    /// # use tower_webhook::tunnel::{Tunnel, Upstream};
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
    /// # let handle = Tunnel::builder().provider(Loopback).start(Upstream::service(app)).await?;
    /// let mut events = handle.events();
    /// drop(handle); // closes the tunnel in the background
    /// let event = events.next().await.unwrap();
    /// assert!(matches!(event, TunnelEvent::Closed { ref provider, .. } if provider == "loopback"));
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<TunnelEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "tunnel events were missed");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

struct Supervisor {
    chain: Arc<TunnelBuilder>,
    upstream: Upstream,
    /// Ends the connections served through `upstream` when the tunnel closes (or this is dropped).
    connections: Connections,
    status: watch::Sender<TunnelEvent>,
    events: broadcast::Sender<TunnelEvent>,
    /// See [`TunnelHandle::stop_reconnecting`].
    no_reconnect: Arc<AtomicBool>,
}

impl Supervisor {
    fn emit(&self, event: TunnelEvent) {
        // The status first: a listener woken by the event (on another thread) that reads
        // `status()` or `url()` then finds that event, not the one before.
        self.status.send_replace(event.clone());
        let _ = self.events.send(event);
    }

    /// The tunnel is closed: ends the connections still open (those kept from a session that
    /// lost its tunnel server included) and waits for them, for up to the close grace, then
    /// reports it.
    async fn closed(&self, provider: String, url: String) {
        if !self
            .connections
            .close_and_wait(self.chain.close_grace)
            .await
        {
            tracing::warn!(
                %provider,
                "tunnel connections still open {} ms after the tunnel closed",
                self.chain.close_grace.as_millis()
            );
        }
        self.emit(TunnelEvent::Closed { provider, url });
    }

    async fn run(self, opened: Opened, mut close: oneshot::Receiver<()>) {
        let Opened {
            mut provider,
            mut session,
            stopping: mut teardowns,
            ..
        } = opened;
        // Re-opening rounds since the last tunnel that stayed up: a tunnel that drops soon after
        // each re-open keeps the backoff growing instead of restarting it at the minimum.
        let mut round = 0;
        loop {
            let up_since = Instant::now();
            let url = session.url().to_owned();
            let reason = tokio::select! {
                _ = &mut close => {
                    session.close(self.chain.close_grace).await;
                    stopped(teardowns).await;
                    self.closed(provider, url).await;
                    return;
                }
                reason = session.ended() => reason,
            };
            tracing::warn!(%provider, url = %shown_url(&url), %reason, "tunnel down");
            self.emit(TunnelEvent::Down {
                provider: provider.clone(),
                url: url.clone(),
                reason,
            });
            drop(session);
            // The earlier teardowns are over by the time the next round starts, or are waited for
            // here: the list does not grow.
            stopped(std::mem::take(&mut teardowns)).await;
            if !self.chain.reconnect || self.no_reconnect.load(Ordering::Acquire) {
                let _ = close.await;
                self.closed(provider, url).await;
                return;
            }
            if up_since.elapsed() >= self.chain.backoff_max {
                round = 0;
            }
            let reopened = loop {
                let delay = self.chain.backoff(round);
                round = round.saturating_add(1);
                let waited = tokio::select! {
                    _ = &mut close => false,
                    () = tokio::time::sleep(delay) => true,
                };
                if waited && self.no_reconnect.load(Ordering::Acquire) {
                    let _ = close.await;
                    self.closed(provider, url).await;
                    return;
                }
                // A close during the attempt tears down what it opened before this returns.
                let result = match waited {
                    true => self.chain.open(&self.upstream, &mut close).await,
                    false => Err(None),
                };
                match result {
                    Err(None) => {
                        self.closed(provider, url).await;
                        return;
                    }
                    Ok(opened) => break opened,
                    Err(Some(attempts)) => {
                        tracing::warn!(
                            error = %TunnelError::AllFailed { attempts },
                            "tunnel could not be re-opened; retrying"
                        );
                    }
                }
            };
            let new_url = reopened.session.url().to_owned();
            let event = if new_url == url {
                TunnelEvent::Up {
                    provider: reopened.provider.clone(),
                    url: new_url,
                    verified: reopened.verified,
                }
            } else {
                tracing::info!(old = %shown_url(&url), new = %shown_url(&new_url), "tunnel URL changed");
                TunnelEvent::UrlChanged {
                    provider: reopened.provider.clone(),
                    old: url,
                    new: new_url,
                    verified: reopened.verified,
                }
            };
            self.emit(event);
            provider = reopened.provider;
            session = reopened.session;
            teardowns = reopened.stopping;
        }
    }
}
