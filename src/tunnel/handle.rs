//! The provider chain, the round-trip probe, the handle and its supervisor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{Attempt, chain};
use super::http::{BaseUrl, get};
use super::provider::{Provider, Session};
use super::upstream::{PROBE_HEADER, PROBE_PATH};
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
    pub fn new() -> Self {
        Self {
            providers: Vec::new(),
            probe: true,
            probe_timeout: Duration::from_secs(5),
            reconnect: true,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            close_grace: Duration::from_secs(10),
            tls: TlsRoots::new(),
        }
    }

    /// Adds a provider at the end of the chain.
    pub fn provider(mut self, provider: impl Provider) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }

    /// Adds a provider to try when the ones before it fail (the same as
    /// [`provider`](Self::provider), named for reading).
    pub fn fallback(self, provider: impl Provider) -> Self {
        self.provider(provider)
    }

    /// Adds an already shared provider.
    pub fn provider_arc(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// The names of the providers, in order.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Turns the round-trip probe on or off (default on).
    ///
    /// The probe sends `GET` [`PROBE_PATH`](super::PROBE_PATH) with a random nonce through the
    /// public URL and requires the nonce back from this process. An `https://` URL (ngrok,
    /// cloudflared, hosted localtunnel) is probed over TLS, its certificate verified against
    /// [`tls_roots`](Self::tls_roots).
    pub fn probe(mut self, enabled: bool) -> Self {
        self.probe = enabled;
        self
    }

    /// The certificate authorities the probe trusts for an `https://` public URL (default
    /// [`TlsRoots::new`], the Mozilla root set). A provider's own https requests use the roots
    /// given to that provider (e.g. [`LocalTunnel::tls_roots`](super::LocalTunnel::tls_roots)).
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
    pub fn root_certificate(mut self, der: impl Into<Vec<u8>>) -> Result<Self, TunnelError> {
        self.tls = self.tls.add_certificate(der)?;
        Ok(self)
    }

    /// How long the probe may take, within the provider's startup timeout (default 5 s).
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Re-open the tunnel when it drops (default on).
    pub fn reconnect(mut self, enabled: bool) -> Self {
        self.reconnect = enabled;
        self
    }

    /// The delay before re-opening: `min` doubling per failed round up to `max`, with jitter.
    /// A re-opened tunnel that drops again within `max` counts as a failed round.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Opens the first provider of the chain that works and verifies it with the probe.
    ///
    /// # Errors
    ///
    /// [`TunnelError::NoProviders`] for an empty chain, [`TunnelError::AllFailed`] with every
    /// provider's reason when none works.
    pub async fn start(self, upstream: impl Into<Upstream>) -> Result<TunnelHandle, TunnelError> {
        let upstream = upstream.into();
        if self.providers.is_empty() {
            return Err(TunnelError::NoProviders);
        }
        let chain = Arc::new(self);
        let opened = chain
            .open(&upstream)
            .await
            .map_err(|attempts| TunnelError::AllFailed { attempts })?;
        let first = TunnelEvent::Up {
            provider: opened.provider.clone(),
            url: opened.session.url().to_owned(),
            verified: opened.verified,
        };
        let (status_tx, status_rx) = watch::channel(first.clone());
        let (events_tx, _) = broadcast::channel(64);
        let (close_tx, close_rx) = oneshot::channel();
        let supervisor = Supervisor {
            chain,
            upstream,
            status: status_tx,
            events: events_tx.clone(),
        };
        let task = tokio::spawn(supervisor.run(opened, close_rx));
        Ok(TunnelHandle {
            status: status_rx,
            events: events_tx,
            close: Some(close_tx),
            task: Some(task),
        })
    }

    /// Tries each provider in turn; the attempts of all failures otherwise.
    async fn open(&self, upstream: &Upstream) -> Result<Opened, Vec<Attempt>> {
        let mut attempts = Vec::new();
        for provider in &self.providers {
            let name = provider.name().to_owned();
            let limit = provider.startup_timeout();
            let started = Instant::now();
            let attempt = async {
                let session = provider.open(upstream.clone()).await?;
                let verified = if self.probe {
                    probe(session.url(), upstream, self.probe_timeout, &self.tls).await?
                } else {
                    false
                };
                Ok::<_, BoxError>((session, verified))
            };
            let reason = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok((session, verified))) => {
                    tracing::info!(provider = %name, url = %session.url(), verified, "tunnel up");
                    return Ok(Opened {
                        provider: name,
                        session,
                        verified,
                    });
                }
                Ok(Err(err)) => chain(&*err),
                Err(_) => format!("did not start within {} ms", limit.as_millis()),
            };
            tracing::warn!(provider = %name, %reason, "tunnel provider failed");
            attempts.push(Attempt {
                provider: name,
                reason,
                hint: provider.hint(),
                elapsed: started.elapsed(),
            });
        }
        Err(attempts)
    }

    fn backoff(&self, round: u32) -> Duration {
        let factor = 2u32.saturating_pow(round.min(16));
        let delay = self
            .backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max);
        // Jitter in [delay/2, delay].
        let half = delay / 2;
        half.saturating_add(half.mul_f64(fastrand::f64()))
    }
}

struct Opened {
    provider: String,
    session: Session,
    verified: bool,
}

/// The pause between probe attempts.
const PROBE_RETRY: Duration = Duration::from_millis(100);

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
        if super::time::due_within(deadline, Instant::now(), PROBE_RETRY) {
            return Err(format!(
                "the round-trip probe through {url} did not reach this service within {} ms: {last}",
                limit.as_millis()
            )
            .into());
        }
        tokio::time::sleep(PROBE_RETRY).await;
    }
}

/// A change of a tunnel's status. See [`TunnelHandle::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl TunnelEvent {
    /// The URL this event is about (the new one for [`UrlChanged`](Self::UrlChanged)).
    pub fn url(&self) -> &str {
        match self {
            Self::Up { url, .. } | Self::Down { url, .. } | Self::Closed { url, .. } => url,
            Self::UrlChanged { new, .. } => new,
        }
    }

    /// The provider this event is about.
    pub fn provider(&self) -> &str {
        match self {
            Self::Up { provider, .. }
            | Self::Down { provider, .. }
            | Self::Closed { provider, .. }
            | Self::UrlChanged { provider, .. } => provider,
        }
    }

    /// Whether the tunnel is open after this event.
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
}

impl TunnelHandle {
    /// The public URL (the last one, while the tunnel is down).
    pub fn url(&self) -> String {
        self.status.borrow().url().to_owned()
    }

    /// The provider that opened the current tunnel.
    pub fn provider(&self) -> String {
        self.status.borrow().provider().to_owned()
    }

    /// The latest event.
    pub fn status(&self) -> TunnelEvent {
        self.status.borrow().clone()
    }

    /// A watch of the latest event (starts with the `Up` of the first start).
    pub fn watch(&self) -> watch::Receiver<TunnelEvent> {
        self.status.clone()
    }

    /// Every event from now on.
    pub fn events(&self) -> TunnelEvents {
        TunnelEvents {
            rx: self.events.subscribe(),
        }
    }

    /// Closes the tunnel and waits until it is torn down.
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
#[derive(Debug)]
pub struct TunnelEvents {
    rx: broadcast::Receiver<TunnelEvent>,
}

impl TunnelEvents {
    /// The next event; `None` once the tunnel is closed and all events were read.
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
    status: watch::Sender<TunnelEvent>,
    events: broadcast::Sender<TunnelEvent>,
}

impl Supervisor {
    fn emit(&self, event: TunnelEvent) {
        let _ = self.events.send(event.clone());
        self.status.send_replace(event);
    }

    async fn run(self, opened: Opened, mut close: oneshot::Receiver<()>) {
        let Opened {
            mut provider,
            mut session,
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
                    self.emit(TunnelEvent::Closed { provider, url });
                    return;
                }
                reason = session.ended() => reason,
            };
            tracing::warn!(%provider, %url, %reason, "tunnel down");
            self.emit(TunnelEvent::Down {
                provider: provider.clone(),
                url: url.clone(),
                reason,
            });
            drop(session);
            if !self.chain.reconnect {
                let _ = close.await;
                self.emit(TunnelEvent::Closed { provider, url });
                return;
            }
            if up_since.elapsed() >= self.chain.backoff_max {
                round = 0;
            }
            let reopened = loop {
                let delay = self.chain.backoff(round);
                round = round.saturating_add(1);
                let result = tokio::select! {
                    _ = &mut close => None,
                    result = async {
                        tokio::time::sleep(delay).await;
                        self.chain.open(&self.upstream).await
                    } => Some(result),
                };
                match result {
                    None => {
                        self.emit(TunnelEvent::Closed { provider, url });
                        return;
                    }
                    Some(Ok(opened)) => break opened,
                    Some(Err(attempts)) => {
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
                tracing::info!(old = %url, new = %new_url, "tunnel URL changed");
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
        }
    }
}
