//! The ngrok provider, through the official `ngrok` crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ngrok::prelude::{EndpointInfo, TunnelBuilder as _};
use ngrok::session::{ConnectError, IoStream, default_connect};
use ngrok::tunnel::AcceptError;
use tokio::task::JoinSet;

use super::Upstream;
use super::provider::{BoxFuture, Provider, Session};
use super::secret::Secret;
use crate::BoxError;

/// An ngrok HTTP endpoint, opened with the official [`ngrok`] crate (feature `ngrok`).
///
/// Tried only when an auth token is configured ([`authtoken`](Self::authtoken), or
/// `TUNNEL_AUTH_TOKEN` / `NGROK_AUTHTOKEN` with [`from_env`](Self::from_env)); without one it
/// fails at once so the chain moves on. Each connection of the endpoint is served by the
/// [`Upstream`], so no local port is needed.
///
/// ngrok's TLS uses rustls's process-wide crypto provider. When none is installed as the
/// tunnel opens, it installs `ring`'s, the provider this crate's TLS uses (rustls cannot choose
/// by itself when the application's build holds another one too, such as reqwest's
/// `aws-lc-rs`). An application that installs its own provider must do so before it starts
/// the tunnel: `CryptoProvider::install_default` fails once one is set, and an `.expect()` on it
/// then panics.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{Bore, Ngrok, Tunnel};
///
/// let handle = Tunnel::builder()
///     .provider(Ngrok::from_env())
///     .fallback(Bore::new())
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// println!("webhooks go to {}", handle.url());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Ngrok {
    authtoken: Option<Arc<Secret>>,
    server_addr: Option<String>,
    domain: Option<String>,
    startup_timeout: Duration,
    reconnect_within: Duration,
}

impl fmt::Debug for Ngrok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ngrok")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "<redacted>"))
            .field("server_addr", &self.server_addr)
            .field("domain", &self.domain)
            .field("startup_timeout", &self.startup_timeout)
            .field("reconnect_within", &self.reconnect_within)
            .finish()
    }
}

impl Default for Ngrok {
    fn default() -> Self {
        Self::new()
    }
}

impl Ngrok {
    /// No auth token yet, ngrok's default server, 15 s to start.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Ngrok, Provider};
    ///
    /// let ngrok = Ngrok::new();
    /// assert_eq!(Provider::startup_timeout(&ngrok), Duration::from_secs(15));
    /// // Without a token it fails at once, and says what to do.
    /// assert!(format!("{ngrok:?}").contains("authtoken: None"));
    /// assert!(ngrok.hint().unwrap().contains("TUNNEL_AUTH_TOKEN"));
    /// ```
    pub fn new() -> Self {
        Self {
            authtoken: None,
            server_addr: None,
            domain: None,
            startup_timeout: Duration::from_secs(15),
            reconnect_within: Duration::from_secs(30),
        }
    }

    /// Takes the token from `TUNNEL_AUTH_TOKEN`, else `NGROK_AUTHTOKEN`, trimmed; a blank value
    /// is unset, and one that is not UTF-8 is ignored with a warning.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::from_env();
    /// let token_set = ["TUNNEL_AUTH_TOKEN", "NGROK_AUTHTOKEN"]
    ///     .iter()
    ///     .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    /// // The token itself never shows.
    /// assert_eq!(format!("{ngrok:?}").contains("<redacted>"), token_set);
    /// ```
    pub fn from_env() -> Self {
        // As `TunnelConfig` reads it: trimmed (a token pasted with its newline), and a blank
        // value is unset.
        // The value as read is wiped on drop, not only the trimmed copy kept.
        let token = ["TUNNEL_AUTH_TOKEN", "NGROK_AUTHTOKEN"]
            .into_iter()
            .find_map(|name| {
                let raw = zeroize::Zeroizing::new(std::env::var_os(name)?.into_encoded_bytes());
                match std::str::from_utf8(&raw) {
                    Ok(v) => Some(v.trim().to_owned()).filter(|v| !v.is_empty()),
                    Err(_) => {
                        tracing::warn!(setting = name, "not UTF-8, so not an ngrok token: ignored");
                        None
                    }
                }
            });
        match token {
            Some(token) => Self::new().authtoken(token),
            None => Self::new(),
        }
    }

    /// The ngrok auth token.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::new().authtoken("2abcEXAMPLEtoken");
    /// let shown = format!("{ngrok:?}");
    /// assert!(shown.contains(r#"authtoken: Some("<redacted>")"#));
    /// assert!(!shown.contains("2abcEXAMPLEtoken"));
    /// ```
    pub fn authtoken(mut self, token: impl Into<String>) -> Self {
        self.authtoken = Some(Arc::new(Secret::new(token.into())));
        self
    }

    /// The ngrok ingress to dial (`host:port`), for a custom agent ingress.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::new().server_addr("ngrok-ingress.internal:443");
    /// assert!(format!("{ngrok:?}").contains(r#"server_addr: Some("ngrok-ingress.internal:443")"#));
    /// ```
    pub fn server_addr(mut self, addr: impl Into<String>) -> Self {
        self.server_addr = Some(addr.into());
        self
    }

    /// A regional ingress: `connect.{region}.ngrok-agent.com:443` (for example `eu`).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::new().region("eu");
    /// assert!(format!("{ngrok:?}").contains(r#"server_addr: Some("connect.eu.ngrok-agent.com:443")"#));
    /// ```
    pub fn region(self, region: impl AsRef<str>) -> Self {
        let addr = format!("connect.{}.ngrok-agent.com:443", region.as_ref());
        self.server_addr(addr)
    }

    /// A reserved domain for the endpoint.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::new().domain("review-bot.ngrok.app");
    /// assert!(format!("{ngrok:?}").contains(r#"domain: Some("review-bot.ngrok.app")"#));
    /// ```
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The hard startup limit (default 15 s), covering the connection to ngrok and the
    /// round-trip probe. Connecting and opening the endpoint may take all of it but a fifth, kept
    /// for the probe; an ingress that does not answer by then fails the attempt naming it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Ngrok, Provider};
    ///
    /// let ngrok = Ngrok::new().startup_timeout(Duration::from_secs(30));
    /// assert_eq!(Provider::startup_timeout(&ngrok), Duration::from_secs(30));
    /// ```
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// How long a lost ngrok session may take to come back (default 30 s). The SDK notices a
    /// lost session when its heartbeats go unanswered (15 s by default), then connects again
    /// and re-binds the endpoint, keeping its URL. Connections are tried again here, 250 ms
    /// apart then twice as long each time, up to 4 s, for this long at most; past it (or
    /// should the session's re-start, sign-in or re-binding fail twice once connected), the
    /// tunnel is reported lost ([`TunnelEvent::Down`](super::TunnelEvent::Down)) and the chain
    /// opens a tunnel again, with its fallbacks. Without this limit the SDK's own attempts come
    /// 50 ms, 2.5 s, 125 s, then 104 minutes apart, and the tunnel stayed `Up` all that time
    /// while its URL answered nothing.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Ngrok;
    ///
    /// let ngrok = Ngrok::new().reconnect_within(Duration::from_secs(10));
    /// assert!(format!("{ngrok:?}").contains("reconnect_within: 10s"));
    /// ```
    pub fn reconnect_within(mut self, limit: Duration) -> Self {
        self.reconnect_within = limit;
        self
    }
}

/// The first wait between two attempts to connect again to ngrok, doubled after each.
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to connect again to ngrok.
const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(4);

/// Connects the ngrok session: the first time as the SDK does; after the session was lost,
/// trying again for [`Ngrok::reconnect_within`] at most, then cancelling the SDK's own
/// reconnects, whose waits grow fifty-fold each time, so that the tunnel is reported lost.
#[derive(Clone)]
struct Reconnect {
    within: Duration,
    /// Why the session was given up, for the tunnel's `Down` reason.
    gave_up: Arc<std::sync::Mutex<Option<String>>>,
    /// When the session was last lost, and how many times since a connection came back on
    /// which it could not be re-established.
    outage: Arc<std::sync::Mutex<(tokio::time::Instant, u32)>>,
    /// The auth token, hidden in what is logged: ngrok's refusal of a sign-in may quote it.
    token: Arc<Secret>,
}

/// How many times a lost session may come back without being re-established (started, signed
/// in to, its endpoint bound again) before it is given up: the SDK calls again 50 ms after the
/// first such failure, 2.5 s after the second, and 125 s after the third.
const MAX_REESTABLISH_FAILURES: u32 = 2;

impl Reconnect {
    fn new(within: Duration, token: Arc<Secret>) -> Self {
        Self {
            within,
            gave_up: Arc::default(),
            outage: Arc::new(std::sync::Mutex::new((tokio::time::Instant::now(), 0))),
            token,
        }
    }

    /// How long the connection may still be tried for after `lost`, or why the session is
    /// given up.
    fn time_left(&self, lost: &AcceptError) -> Result<Duration, String> {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let AcceptError::Reconnect(failed) = lost else {
            // Lost anew: the whole limit.
            *outage = (tokio::time::Instant::now(), 0);
            return Ok(self.within);
        };
        // A connection came back, but the session could not be re-established on it.
        outage.1 += 1;
        let left = self.within.saturating_sub(outage.0.elapsed());
        if outage.1 >= MAX_REESTABLISH_FAILURES || left.is_zero() {
            return Err(format!(
                "the ngrok session was lost and could not be re-established: {}",
                super::error::chain(&**failed)
            ));
        }
        Ok(left)
    }
}

impl Reconnect {
    async fn connect(
        self,
        host: String,
        port: u16,
        tls: Arc<tokio_rustls::rustls::ClientConfig>,
        lost: Option<AcceptError>,
    ) -> Result<Box<dyn IoStream>, ConnectError> {
        let connect = || default_connect(host.clone(), port, Arc::clone(&tls), None);
        let Some(lost) = lost else {
            return connect().await;
        };
        let error = explain(super::error::chain(&lost), self.token.expose());
        tracing::warn!(%error, "the ngrok session was lost; connecting again");
        let why = match self.time_left(&lost) {
            Ok(left) => match retry_within(left, connect).await {
                Ok(io) => return Ok(io),
                Err(last) => format!(
                    "the ngrok session was lost and ngrok could not be reached again within {} s: {last}",
                    self.within.as_secs_f32()
                ),
            },
            Err(why) => why,
        };
        *self.gave_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Err(ConnectError::Canceled)
    }
}

/// Calls `attempt` until it succeeds, for `within` at most (an attempt that hangs is cut off
/// then), waiting [`RECONNECT_FIRST_WAIT`] after the first failure and twice as long after each
/// next one, up to [`RECONNECT_MAX_WAIT`]. The last error's text once the time is up.
async fn retry_within<T, E, F, Fut>(within: Duration, mut attempt: F) -> Result<T, String>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let deadline = super::time::bounded(within).map(|within| started + within);
    let mut wait = RECONNECT_FIRST_WAIT;
    let mut failed = None;
    loop {
        let outcome = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let hung = "an attempt got no answer";
                    return Err(failed.map_or(hung.to_owned(), |f| format!("{f}; then {hung}")));
                }
            },
            None => attempt().await,
        };
        let err = match outcome {
            Ok(done) => return Ok(done),
            Err(err) => super::error::chain(&err),
        };
        failed = Some(err.clone());
        tracing::debug!(error = %err, "connecting to ngrok again failed");
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() + wait >= deadline) {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX_WAIT);
    }
}

/// The part of the startup timeout kept for the round-trip probe, as a divisor: connecting to
/// ngrok and opening the endpoint share the rest.
const PROBE_SHARE: u32 = 5;

/// The ingress the ngrok SDK dials unless [`Ngrok::server_addr`] sets another.
const DEFAULT_INGRESS: &str = "connect.ngrok-agent.com:443";

/// How long closing the ngrok session may take once the tunnel is closed or lost.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Adds what the user can do to the ngrok error codes worth explaining, and hides `token`
/// should the service's message quote it: the message is logged and shown to the user.
fn explain(message: String, token: &str) -> String {
    let message = if token.is_empty() {
        message
    } else {
        message.replace(token, "<redacted>")
    };
    if message.contains("ERR_NGROK_4018") {
        format!("{message} (the auth token is missing or invalid: set TUNNEL_AUTH_TOKEN)")
    } else if message.contains("ERR_NGROK_108") {
        format!("{message} (the account's session limit is reached: stop the other ngrok agent)")
    } else {
        message
    }
}

impl Provider for Ngrok {
    fn name(&self) -> &str {
        "ngrok"
    }

    fn startup_timeout(&self) -> Duration {
        self.startup_timeout
    }

    /// Only when no auth token is configured: with one, setting it is no remedy, and the error
    /// itself says what went wrong (a token ngrok refuses is explained there).
    fn hint(&self) -> Option<String> {
        self.authtoken
            .is_none()
            .then(|| "set TUNNEL_AUTH_TOKEN (or NGROK_AUTHTOKEN) to an ngrok auth token".to_owned())
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move {
            let Some(token) = self.authtoken.clone() else {
                return Err("no ngrok auth token is configured".into());
            };
            // For the redaction of error messages.
            let shown = Arc::clone(&token);
            let server_addr = self.server_addr.clone();
            let domain = self.domain.clone();
            let reconnect = Reconnect::new(self.reconnect_within, Arc::clone(&token));
            let gave_up = Arc::clone(&reconnect.gave_up);
            // ngrok's TLS asks rustls for the process-wide crypto provider. With `ring` (this
            // crate's, and ngrok's as this crate builds it) and another provider in the build
            // (an application's reqwest brings `aws-lc-rs`), rustls cannot pick one by itself:
            // install `ring`'s unless the application already installed one.
            use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
            if CryptoProvider::get_default().is_none() {
                // Losing a race with another install is fine: then a provider is set.
                let _ = ring::default_provider().install_default();
            }
            // A task of its own, so that a panic inside the SDK becomes an error of this attempt;
            // aborted when this attempt is dropped (startup timeout), so that a late connect does
            // not leave a session open in the background.
            let mut connect = AbortOnDrop(tokio::spawn(async move {
                let mut builder = ngrok::Session::builder();
                builder.authtoken(token.expose());
                builder.connector(
                    move |host: String,
                          port: u16,
                          tls: Arc<tokio_rustls::rustls::ClientConfig>,
                          lost: Option<AcceptError>| {
                        reconnect.clone().connect(host, port, tls, lost)
                    },
                );
                if let Some(addr) = server_addr {
                    builder.server_addr(addr)?;
                }
                let session = builder.connect().await?;
                let mut endpoint = session.http_endpoint();
                if let Some(domain) = domain {
                    endpoint.domain(domain);
                }
                let tunnel = endpoint.listen().await?;
                Ok::<_, BoxError>((session, tunnel))
            }));
            // Within the startup timeout, all but a fifth kept for the round-trip probe: an
            // ingress that never answers fails with its own reason before the chain cuts the
            // attempt off with none.
            let limit = self.startup_timeout - self.startup_timeout / PROBE_SHARE;
            let joined = match super::time::bounded(limit) {
                Some(limit) => tokio::time::timeout(limit, &mut connect.0)
                    .await
                    .map_err(|_| {
                        let ingress = self.server_addr.as_deref().unwrap_or(DEFAULT_INGRESS);
                        format!(
                            "the ngrok service at {ingress} did not answer within {} ms",
                            limit.as_millis()
                        )
                    })?,
                None => (&mut connect.0).await,
            };
            let (mut session, mut tunnel) = joined
                .map_err(|err| explain(format!("the ngrok client failed: {err}"), shown.expose()))?
                .map_err(|err| explain(super::error::chain(&*err), shown.expose()))?;
            let url = tunnel.url().to_owned();
            tracing::info!(%url, "ngrok tunnel open");
            Ok(Session::spawn(url, move |mut stop| async move {
                let mut connections = JoinSet::new();
                let result = loop {
                    tokio::select! {
                        () = stop.stopped() => break Ok(()),
                        next = std::future::poll_fn(|cx| {
                            futures_core::Stream::poll_next(std::pin::Pin::new(&mut tunnel), cx)
                        }) => match next {
                            // Past the upstream's connection limit, a connection is closed at
                            // once (ngrok answers 502): left unread, the ones after it would
                            // fill the session's queues and stall every stream on it.
                            Some(Ok(conn)) => match upstream.try_connection_permit() {
                                Some(permit) => {
                                    let upstream = upstream.clone();
                                    connections.spawn(async move {
                                        upstream.serve_connection(conn).await;
                                        drop(permit);
                                    });
                                }
                                None => drop(conn),
                            },
                            Some(Err(err)) => {
                                // Given up on a lost session: why, rather than the SDK's
                                // "the connect function gave up".
                                let why = gave_up.lock().unwrap_or_else(|e| e.into_inner()).take();
                                let why = why.unwrap_or_else(|| super::error::chain(&err));
                                break Err(explain(why, shown.expose()).into());
                            }
                            None => break Err("the ngrok endpoint was closed".into()),
                        },
                        Some(_) = connections.join_next() => {}
                    }
                };
                // The connections end with the tunnel, without waiting for the session (and
                // before a close returns).
                connections.shutdown().await;
                // The SDK's close waits for the session's RPC lock, which its calls to the ngrok
                // service (an unlisten, say) hold with no timeout, then for room in the session's
                // frame queue: bounded, so that neither a close nor the report of a lost endpoint
                // can hang here.
                if tokio::time::timeout(CLOSE_TIMEOUT, session.close())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "the ngrok session did not close within {} s; dropped",
                        CLOSE_TIMEOUT.as_secs()
                    );
                }
                result
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Reconnect, explain, retry_within};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
    }

    /// An outage shorter than the limit: the attempts go on, further and further apart, until
    /// one succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_lost_session_is_connected_again_within_the_limit() {
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let done = retry_within(Duration::from_secs(30), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 4 { Err(refused()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(done, Ok(4));
        // Waits of 250, 500, 1000 and 2000 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(3750));
    }

    /// An outage longer than the limit: the last error once the limit is reached, the waits
    /// capped at 4 s.
    #[tokio::test(start_paused = true)]
    async fn a_session_lost_for_longer_than_the_limit_is_given_up() {
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let given_up = retry_within(Duration::from_secs(30), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(refused()) }
        })
        .await;
        assert_eq!(given_up, Err("connection refused".to_owned()));
        let elapsed = started.elapsed();
        assert!(elapsed <= Duration::from_secs(30), "{elapsed:?}");
        assert!(elapsed > Duration::from_secs(26), "{elapsed:?}");
        // 0, .25, .75, 1.75, 3.75, then every 4 s to 27.75.
        assert_eq!(calls.load(Ordering::SeqCst), 11);
    }

    /// An attempt that hangs (packets to ngrok dropped) is cut off at the limit.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_hangs_is_cut_off_at_the_limit() {
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let given_up = retry_within(Duration::from_secs(10), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Err(refused());
                }
                std::future::pending::<Result<(), std::io::Error>>().await
            }
        })
        .await;
        assert_eq!(
            given_up,
            Err("connection refused; then an attempt got no answer".to_owned())
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    /// A lost session whose ingress refuses connections (a loopback port nothing listens on)
    /// is given up once the limit is reached, through the SDK's own connect.
    #[tokio::test]
    async fn a_lost_session_whose_ingress_refuses_is_given_up() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let reconnect = Reconnect::new(Duration::from_secs(1), token());
        let started = Instant::now();
        let outcome = reconnect
            .clone()
            .connect("127.0.0.1".into(), port, tls(), Some(lost()))
            .await;
        assert!(matches!(
            outcome,
            Err(ngrok::session::ConnectError::Canceled)
        ));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let why = reconnect.gave_up.lock().unwrap().clone().unwrap();
        assert!(
            why.contains("could not be reached again within 1 s")
                && why.contains("failed to establish tcp connection"),
            "{why}"
        );
    }

    /// A session lost, as the SDK tells it when its heartbeats go unanswered.
    fn lost() -> ngrok::tunnel::AcceptError {
        ngrok::tunnel::AcceptError::ListenerClosed {
            message: "heartbeat timed out".into(),
            error_code: None,
        }
    }

    /// A connection back, on which the session could not be re-established for `err`.
    fn not_re_established(err: std::io::Error) -> ngrok::tunnel::AcceptError {
        ngrok::tunnel::AcceptError::Reconnect(Arc::new(ngrok::session::ConnectError::Tcp(err)))
    }

    fn token() -> Arc<super::Secret> {
        Arc::new(super::Secret::new("2abcEXAMPLEtoken_secret".into()))
    }

    fn tls() -> Arc<tokio_rustls::rustls::ClientConfig> {
        Arc::new(
            tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
    }

    /// A session that came back but could not be re-established (its endpoint could not be
    /// bound again, say) is tried once more within the limit; the second time, or past the
    /// limit, it is given up at once, with the reason kept for the tunnel's `Down`. A session
    /// lost anew gets the whole limit again.
    #[tokio::test(start_paused = true)]
    async fn a_session_that_cannot_be_re_established_is_given_up() {
        let reconnect = Reconnect::new(Duration::from_secs(30), token());
        let failed = || not_re_established(refused());
        assert_eq!(reconnect.time_left(&lost()), Ok(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(reconnect.time_left(&failed()), Ok(Duration::from_secs(25)));
        let why = reconnect.time_left(&failed()).unwrap_err();
        assert!(
            why.contains("could not be re-established") && why.contains("connection refused"),
            "{why}"
        );
        // Lost anew, later: the whole limit; past it, a first failure is given up too.
        assert_eq!(reconnect.time_left(&lost()), Ok(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(reconnect.time_left(&failed()).is_err());

        // Through the connector: given up at once, the reason kept.
        let reconnect = Reconnect::new(Duration::from_secs(30), token());
        assert!(reconnect.time_left(&lost()).is_ok());
        assert!(reconnect.time_left(&failed()).is_ok());
        let started = Instant::now();
        let outcome = reconnect
            .clone()
            .connect("127.0.0.1".into(), 9, tls(), Some(failed()))
            .await;
        assert!(matches!(
            outcome,
            Err(ngrok::session::ConnectError::Canceled)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let why = reconnect.gave_up.lock().unwrap().clone().unwrap();
        assert!(why.contains("could not be re-established"), "{why}");
    }

    /// Appends what is logged to a shared buffer.
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// ngrok's refusal of a sign-in may quote the auth token: the warning that the session was
    /// lost hides it.
    #[tokio::test(start_paused = true)]
    async fn a_token_quoted_in_why_the_session_was_lost_is_not_logged() {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Captured(Arc::clone(&sink)))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let refused = || {
            not_re_established(std::io::Error::other(
                "ERR_NGROK_4018: the authtoken 2abcEXAMPLEtoken_secret is invalid",
            ))
        };
        let reconnect = Reconnect::new(Duration::from_secs(30), token());
        assert!(reconnect.time_left(&refused()).is_ok());
        let outcome = reconnect
            .clone()
            .connect("127.0.0.1".into(), 9, tls(), Some(refused()))
            .await;
        assert!(matches!(
            outcome,
            Err(ngrok::session::ConnectError::Canceled)
        ));
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(text.contains("the ngrok session was lost"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("2abcEXAMPLEtoken_secret"), "{text}");
    }

    #[test]
    fn a_token_quoted_by_the_service_is_hidden() {
        let token = "2abcEXAMPLEtoken_secret";
        let message =
            format!("failed to connect: ERR_NGROK_4018: the authtoken {token} is invalid; {token}");
        let shown = explain(message, token);
        assert!(!shown.contains(token), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
        assert!(shown.contains("set TUNNEL_AUTH_TOKEN"), "{shown}");
        assert_eq!(explain("no route to host".into(), ""), "no route to host");
    }
}
