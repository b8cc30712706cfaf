//! The ngrok provider, through the official `ngrok` crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ngrok::prelude::{EndpointInfo, TunnelBuilder as _};
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
}

impl fmt::Debug for Ngrok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ngrok")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "<redacted>"))
            .field("server_addr", &self.server_addr)
            .field("domain", &self.domain)
            .field("startup_timeout", &self.startup_timeout)
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
        let token = ["TUNNEL_AUTH_TOKEN", "NGROK_AUTHTOKEN"]
            .into_iter()
            .find_map(|name| match std::env::var(name) {
                Ok(v) => Some(v.trim().to_owned()).filter(|v| !v.is_empty()),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    tracing::warn!(setting = name, "not UTF-8, so not an ngrok token: ignored");
                    None
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
                            Some(Err(err)) => break Err(explain(super::error::chain(&err), shown.expose()).into()),
                            None => break Err("the ngrok endpoint was closed".into()),
                        },
                        Some(_) = connections.join_next() => {}
                    }
                };
                // The connections end with the tunnel, without waiting for the session.
                drop(connections);
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
    use super::explain;

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
