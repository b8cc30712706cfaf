//! The bore provider: a native client of bore's control protocol.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::Upstream;
use super::http::{connect, host_for_url, without_user_info};
use super::io::Rewind;
use super::provider::{BoxFuture, Provider, Session};
use super::reclaim::{Held, Memory};
use super::secret::Secret;
use crate::BoxError;

/// bore's default control port.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{BORE_CONTROL_PORT, Bore, Provider};
///
/// assert_eq!(BORE_CONTROL_PORT, 7835);
/// let bore = Bore::new().server("bore.example.com");
/// assert!(bore.hint().unwrap().contains("bore.example.com:7835"));
/// ```
pub const BORE_CONTROL_PORT: u16 = 7835;
/// The public bore server.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{BORE_PUBLIC_SERVER, Bore, Provider};
///
/// assert_eq!(BORE_PUBLIC_SERVER, "bore.pub");
/// assert!(Bore::new().hint().unwrap().contains("bore.pub:7835"));
/// ```
pub const BORE_PUBLIC_SERVER: &str = "bore.pub";
/// Largest frame bore sends or accepts.
const MAX_FRAME: usize = 256;
/// The part of the startup timeout kept for the round-trip probe, as a divisor: connecting,
/// authenticating and the server's `Hello` answer share the rest.
const PROBE_SHARE: u32 = 5;
/// bore servers send a heartbeat every 500 ms; silence this long means the server is gone.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long after a session's end a bore server may still hold its public port: bore-cli's
/// server lets the port go when a heartbeat to the closed control connection fails, which is
/// the second one after the close (one every 500 ms), so about a second later.
const PORT_RELEASE: Duration = Duration::from_millis(1_500);
/// bore-cli's server's refusal of a `Hello` for a port that is bound already.
const PORT_IN_USE: &str = "port already in use";
/// The most public connections one bore tunnel proxies at a time.
///
/// Each `Connection` message of the server opens a TCP connection back to it; past this many
/// open at once (those kept from an earlier session of the same tunnel, whose control connection
/// was lost, included), a new one is not opened (the server drops it after its own wait, as if
/// nobody had accepted it) and a warning is logged, so a broken or hostile server cannot make the
/// client open connections without bound.
///
/// # Example
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_webhook::tunnel::{BORE_MAX_CONNECTIONS, Upstream};
///
/// // Serve as many requests at once as one bore tunnel brings, and no more.
/// let app = ServiceBuilder::new()
///     .concurrency_limit(BORE_MAX_CONNECTIONS)
///     .service_fn(|_req: http::Request<hyper::body::Incoming>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
///     });
/// let upstream = Upstream::service(app);
/// assert_eq!(BORE_MAX_CONNECTIONS, 256);
/// assert_eq!(format!("{upstream:?}"), "Upstream(service)");
/// ```
pub const BORE_MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Serialize)]
enum ClientMessage {
    Authenticate(String),
    Hello(u16),
    Accept(Uuid),
}

#[derive(Debug, Deserialize)]
enum ServerMessage {
    Challenge(Uuid),
    Hello(u16),
    Heartbeat,
    Connection(Uuid),
    Error(String),
}

/// A tunnel through a [bore](https://github.com/ekzhang/bore) server: plain TCP, the public URL is
/// `http://{server}:{port}`.
///
/// Implemented natively: null-delimited JSON frames on the control port, HMAC challenge
/// authentication when the server has a secret, and one `Accept` connection per public
/// connection, at most [`BORE_MAX_CONNECTIONS`] at a time. The control port is 7835 unless set
/// with [`control_port`](Self::control_port). The tunnel counts as lost when the server sends no
/// message (it sends a heartbeat every 500 ms) for 8 s. A server that assigns port 0, which is
/// no port, fails the attempt: its answer is invalid; so does one that assigns another port than
/// the [`remote_port`](Self::remote_port) asked for.
///
/// When the session ends (the server restarted, the control connection was lost) and
/// [`TunnelHandle`](super::TunnelHandle) re-opens it, a tunnel that takes any port (no
/// [`remote_port`](Self::remote_port) set) asks the server for the port it had, so its URL
/// usually stays the same. When the server refuses it (another client took it meanwhile, or the
/// server no longer allows it), a new control connection asks for any port, and the new URL is
/// reported as [`TunnelEvent::UrlChanged`](super::TunnelEvent::UrlChanged). A bore server keeps
/// a port until it notices that the control connection that had it is gone, about a second
/// after that connection closed: a port refused as in use that soon after the session ended is
/// asked for once more 1.5 s after the end (a server still sending heartbeats into a connection
/// that was lost on the way may keep the port much longer; the tunnel then gets a new one).
/// Only the ports of tunnels that ended are asked for again: two tunnels open at once through
/// one `Bore` (or its clones, which share that memory) keep their own ports. A tunnel being
/// re-opened asks for its own port; a new tunnel may take the port of one that was closed,
/// never that of one being re-opened, so two tunnels lost together (a server restart) do not
/// swap URLs. A [`remote_port`](Self::remote_port) set is the port asked for on every open.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{Bore, Tunnel};
///
/// let handle = Tunnel::builder()
///     .provider(Bore::new().server("bore.example.com").secret("s3cret"))
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// println!("webhooks go to {}", handle.url());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bore {
    server: String,
    control_port: u16,
    secret: Option<Arc<Secret>>,
    remote_port: u16,
    startup_timeout: Duration,
    /// The connection places of each open tunnel of this provider (and its clones): the
    /// sessions of one tunnel share them, so that connections which outlived a lost control
    /// connection still count in the re-opened session.
    places: Arc<Mutex<Vec<Places>>>,
    /// The public ports of this provider's tunnels that ended, asked for again when a tunnel
    /// that takes any port re-opens; a port belongs to its tunnel while that is being re-opened.
    ended: Memory<u16>,
}

/// The places for [`BORE_MAX_CONNECTIONS`] connections of one tunnel.
struct Places {
    /// The tunnel ([`Upstream::tunnel_scope`]); its entry goes once it is closed.
    tunnel: watch::Receiver<()>,
    places: Arc<Semaphore>,
}

/// The places of the tunnel `upstream` serves, shared by all its sessions; new ones for an
/// upstream of no tunnel.
fn places_for(registry: &Mutex<Vec<Places>>, upstream: &Upstream) -> Arc<Semaphore> {
    let new = || Arc::new(Semaphore::new(BORE_MAX_CONNECTIONS));
    let Some(tunnel) = upstream.tunnel_scope() else {
        return new();
    };
    let mut registry = registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Those of closed tunnels are forgotten (their connections have ended with them).
    registry.retain(|entry| matches!(entry.tunnel.has_changed(), Ok(false)));
    if let Some(entry) = registry
        .iter()
        .find(|entry| entry.tunnel.same_channel(&tunnel))
    {
        return Arc::clone(&entry.places);
    }
    let places = new();
    registry.push(Places {
        tunnel,
        places: Arc::clone(&places),
    });
    places
}

impl fmt::Debug for Bore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bore")
            .field("server", &self.server)
            .field("control_port", &self.control_port)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("remote_port", &self.remote_port)
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

impl Default for Bore {
    fn default() -> Self {
        Self::new()
    }
}

impl Bore {
    /// The public server `bore.pub`, port 7835, no secret, any remote port, 10 s to start.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Bore, Provider};
    ///
    /// let bore = Bore::new();
    /// assert_eq!(bore.name(), "bore");
    /// assert_eq!(Provider::startup_timeout(&bore), Duration::from_secs(10));
    /// assert!(format!("{bore:?}").contains(r#"server: "bore.pub", control_port: 7835, secret: None"#));
    /// ```
    pub fn new() -> Self {
        Self {
            server: BORE_PUBLIC_SERVER.to_owned(),
            control_port: BORE_CONTROL_PORT,
            secret: None,
            remote_port: 0,
            startup_timeout: Duration::from_secs(10),
            places: Arc::default(),
            ended: Memory::default(),
        }
    }

    /// The server's host name or IP address; `host:port` also sets the control port.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, Provider};
    ///
    /// // `host:port` sets the control port too.
    /// let bore = Bore::new().server("tunnel.example.com:9000");
    /// assert!(bore.hint().unwrap().contains("tunnel.example.com:9000"));
    ///
    /// // A shared TUNNEL_SERVER URL names the host; bore's control port stays 7835, and the
    /// // URL's port, path and user info are not bore's either.
    /// let bore = Bore::new().server("https://tunnel.example.com:8443/lt/");
    /// assert!(bore.hint().unwrap().contains("runs at tunnel.example.com:7835 "));
    /// ```
    pub fn server(mut self, server: impl Into<String>) -> Self {
        // A password with an unencoded `/`, `?` or `#` in the user info goes whole with it.
        let server = without_user_info(server.into().trim());
        let (scheme, rest) = match server.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, server.as_str()),
        };
        // The authority alone: a path, query or fragment (a shared TUNNEL_SERVER URL of a
        // localtunnel server may have one) and user info are no part of the host.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        // An http(s) URL (a shared TUNNEL_SERVER) names the host; its port is not bore's.
        let http = matches!(scheme.as_deref(), Some("http" | "https"));
        match split_host_port(authority) {
            Some((host, port)) => {
                self.server = host;
                if !http {
                    self.control_port = port;
                }
            }
            None => {
                self.server = authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            }
        }
        self
    }

    /// The control port (default 7835).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, Provider};
    ///
    /// let bore = Bore::new().server("10.0.0.5").control_port(17835);
    /// assert!(bore.hint().unwrap().contains("10.0.0.5:17835"));
    /// ```
    pub fn control_port(mut self, port: u16) -> Self {
        self.control_port = port;
        self
    }

    /// The server's secret (`bore server --secret`).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Bore;
    ///
    /// let bore = Bore::new().server("bore.example.com").secret("s3cret");
    /// let shown = format!("{bore:?}");
    /// assert!(shown.contains(r#"secret: Some("<redacted>")"#));
    /// assert!(!shown.contains("s3cret"));
    /// ```
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Arc::new(Secret::new(secret.into())));
        self
    }

    /// Asks for this public port (default 0: any free port, and on a re-open the port the
    /// tunnel had first, see [`Bore`]). A server that assigns another port fails the attempt:
    /// the webhook URL registered with the provider names this one. One that refuses it as in
    /// use is asked again 1.5 s later, when the startup timeout leaves the time: a bore server
    /// holds a port for about a second after the session that had it ended, so a tunnel that
    /// re-opens, or a process that restarts at once, would lose it otherwise.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Bore;
    ///
    /// // A fixed public port, so the webhook URL survives restarts.
    /// let bore = Bore::new().server("bore.example.com").remote_port(40_000);
    /// assert!(format!("{bore:?}").contains("remote_port: 40000"));
    /// ```
    pub fn remote_port(mut self, port: u16) -> Self {
        self.remote_port = port;
        self
    }

    /// The hard startup limit (default 10 s), covering the control connection and the probe.
    /// Connecting to the server, authenticating and its `Hello` answer share it, all but a
    /// fifth kept for the round-trip probe, so a slow server is waited for as long as it allows,
    /// and one that does not answer fails with its own reason within it. Each public
    /// connection's connection back to the server and its authentication get the whole of it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Bore, Provider};
    ///
    /// let bore = Bore::new().startup_timeout(Duration::from_secs(3));
    /// assert_eq!(Provider::startup_timeout(&bore), Duration::from_secs(3));
    /// ```
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Opens the control connection and asks for the public port: first for `reclaimed`, the
    /// port of a tunnel that ended, when there is one; when the server refuses it (bore-cli's
    /// server answers with an `Error` and closes the control connection), a new control
    /// connection asks for [`remote_port`](Self::remote_port), any port. A fixed
    /// `remote_port` refused as in use is asked for once more after [`PORT_RELEASE`].
    async fn open_control(&self, reclaimed: Option<&Held<u16>>) -> Result<(Frames, u16), BoxError> {
        // Within the startup timeout, all but the part kept for the probe: a slow server is
        // waited for as long as the configuration allows, and one that does not answer in a
        // short startup timeout fails with its own reason before the chain cuts the attempt off.
        let limit = self.startup_timeout - self.startup_timeout / PROBE_SHARE;
        let deadline = super::time::deadline(Instant::now(), limit);
        if let Some(reclaimed) = reclaimed {
            let port = *reclaimed.value();
            match self.ask_again(port, reclaimed.ended_at(), deadline).await? {
                Hello::Open(control, port) => return Ok((control, port)),
                // Refused for something else than the port (its secret, say): any port would
                // be refused the same way.
                Hello::Refused(message) if !refuses_the_port(&message) => {
                    let message = super::error::from_the_network(&message);
                    return Err(format!("the bore server refused the tunnel: {message}").into());
                }
                Hello::Refused(message) => {
                    let message = super::error::from_the_network(&message);
                    tracing::info!(
                        port,
                        reason = %message,
                        "the bore server refused the tunnel's previous port: asking for any port"
                    );
                }
            }
        }
        // A fixed port refused as in use may be the tunnel's own, still held by the server for
        // a session that has just ended (a re-open, a restart of the process): asked for once
        // more when the server has had the time to let that session go.
        let answer = match self.remote_port {
            0 => self.hello(0, deadline).await?,
            port => self.ask_again(port, Some(Instant::now()), deadline).await?,
        };
        match answer {
            Hello::Open(control, port) => Ok((control, port)),
            Hello::Refused(message) => {
                let message = super::error::from_the_network(&message);
                Err(format!("the bore server refused the tunnel: {message}").into())
            }
        }
    }

    /// Asks for `port`, that of a session that ended at `ended`. A bore server lets a port go
    /// only once it notices that the control connection that had it is gone: a port refused as
    /// in use within [`PORT_RELEASE`] of the end is asked for once more when that time is over,
    /// if the deadline leaves time for it.
    async fn ask_again(
        &self,
        port: u16,
        ended: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Result<Hello, BoxError> {
        let answer = self.hello(port, deadline).await?;
        if let Hello::Refused(message) = &answer
            && message == PORT_IN_USE
            && let Some(released) = ended.and_then(|ended| ended.checked_add(PORT_RELEASE))
            && Instant::now() < released
            && !super::time::due_within(deadline, released, PORT_RELEASE)
        {
            tracing::debug!(
                port,
                "the bore server still holds the port: asking again once it has let an ended \
                 session go"
            );
            tokio::time::sleep_until(released).await;
            return self.hello(port, deadline).await;
        }
        Ok(answer)
    }

    /// Opens a control connection and asks for `port` (0: any), before `deadline`.
    async fn hello(&self, port: u16, deadline: Option<Instant>) -> Result<Hello, BoxError> {
        let stream = connect(&self.server, self.control_port, left(deadline)).await?;
        let mut control = Frames::new(stream);
        handshake(&mut control, self.secret.as_deref(), deadline).await?;
        control.send(&ClientMessage::Hello(port)).await?;
        let port = match control.recv_until(deadline).await? {
            // Port 0 is no port: `http://host:0` would be a URL nobody can reach.
            Some(ServerMessage::Hello(0)) => {
                return Err(
                    "the bore server assigned port 0, which is no port: its answer is invalid"
                        .into(),
                );
            }
            // A port asked for is the URL the provider was given: another one would take the
            // webhooks nowhere the provider sends them. (A tunnel's previous port is only asked
            // for: another one is the tunnel's new URL.)
            Some(ServerMessage::Hello(port))
                if self.remote_port != 0 && port != self.remote_port =>
            {
                return Err(format!(
                    "the bore server assigned port {port}, not the port {} asked for",
                    self.remote_port
                )
                .into());
            }
            Some(ServerMessage::Hello(port)) => port,
            Some(ServerMessage::Error(message)) => return Ok(Hello::Refused(message)),
            Some(ServerMessage::Challenge(_)) => {
                return Err("the bore server requires a secret: set TUNNEL_SECRET".into());
            }
            Some(other) => return Err(format!("unexpected first message {other:?}").into()),
            None => return Err("the bore server closed the connection".into()),
        };
        Ok(Hello::Open(control, port))
    }
}

/// Whether a bore server's refusal of a `Hello` is one of the port asked for (bore-cli's
/// "port already in use", "client port number not in allowed range", "failed to bind to port",
/// and "permission denied" for a port below 1024), rather than of the client (its secret).
fn refuses_the_port(message: &str) -> bool {
    message.contains("port") || message == "permission denied"
}

/// A bore server's answer to a `Hello`.
enum Hello {
    /// The control connection, and the public port the server assigned.
    Open(Frames, u16),
    /// The server's refusal, as it sent it (text from the network).
    Refused(String),
}

fn split_host_port(input: &str) -> Option<(String, u16)> {
    if let Some(rest) = input.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = tail.strip_prefix(':')?.parse().ok()?;
        return Some((host.to_owned(), port));
    }
    let (host, port) = input.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

impl Provider for Bore {
    fn name(&self) -> &str {
        "bore"
    }

    fn startup_timeout(&self) -> Duration {
        self.startup_timeout
    }

    fn hint(&self) -> Option<String> {
        Some(format!(
            "check that a bore server runs at {}:{} (TUNNEL_SERVER) and that TUNNEL_SECRET matches its secret",
            host_for_url(&self.server),
            self.control_port
        ))
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move {
            // A tunnel that takes any port asks for the port it had (else that of a closed
            // tunnel of this provider), taken out so that no other tunnel asks for it at the
            // same time; put back when this attempt ends without a tunnel, however it ends.
            let tunnel = upstream.tunnel_scope();
            let reclaimed = match self.remote_port {
                0 => self.ended.reclaim(tunnel.as_ref()),
                _ => None,
            };
            let (control, port) = self.open_control(reclaimed.as_ref()).await?;
            if let Some(reclaimed) = reclaimed {
                reclaimed.forget();
            }
            // From now on the port the server gave is the one to ask for again, also when the
            // probe fails.
            let held = (self.remote_port == 0).then(|| self.ended.hold(port, tunnel));
            let url = format!("http://{}:{port}", host_for_url(&self.server));
            let places = places_for(&self.places, &upstream);
            tracing::info!(%url, "bore tunnel open");
            let accept = Arc::new(AcceptConfig {
                server: self.server.clone(),
                control_port: self.control_port,
                secret: self.secret.clone(),
                timeout: self.startup_timeout,
                upstream,
            });
            Ok(Session::spawn(url, move |mut stop| async move {
                let _port = held;
                let mut control = control;
                let mut connections = JoinSet::new();
                // Reset only by a message from the server: connection tasks that end do not show
                // that the server is still there.
                let heartbeat = tokio::time::sleep(HEARTBEAT_TIMEOUT);
                tokio::pin!(heartbeat);
                // Connections refused at the cap since the cap was last reached.
                let mut refused = 0u64;
                let lost: BoxError = loop {
                    tokio::select! {
                        () = stop.stopped() => {
                            // Closed: its connections end before the close returns.
                            connections.shutdown().await;
                            return Ok(());
                        }
                        () = &mut heartbeat => break format!(
                            "no heartbeat from the bore server for {} s",
                            HEARTBEAT_TIMEOUT.as_secs()
                        ).into(),
                        message = control.recv() => {
                            heartbeat.set(tokio::time::sleep(HEARTBEAT_TIMEOUT));
                            match message {
                                Err(err) => break err,
                                Ok(None) => break "the bore server closed the control connection".into(),
                                Ok(Some(ServerMessage::Heartbeat)) => {}
                                Ok(Some(ServerMessage::Connection(id))) => {
                                    while connections.try_join_next().is_some() {}
                                    // Connections of this tunnel's earlier sessions that are
                                    // still open hold places too.
                                    let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
                                        refused += 1;
                                        if refused == 1 {
                                            tracing::warn!(
                                                %id,
                                                open = BORE_MAX_CONNECTIONS,
                                                "bore connection not accepted: {BORE_MAX_CONNECTIONS} connections are open already"
                                            );
                                        } else {
                                            tracing::debug!(%id, refused, "bore connection not accepted: at the limit");
                                        }
                                        continue;
                                    };
                                    if refused > 0 {
                                        tracing::info!(refused, "bore connections are accepted again");
                                        refused = 0;
                                    }
                                    let accept = Arc::clone(&accept);
                                    connections.spawn(async move {
                                        let _place = place;
                                        if let Err(err) = accept.accept(id).await {
                                            tracing::warn!(%id, error = %super::error::chain(&*err), "bore connection failed");
                                        }
                                    });
                                }
                                Ok(Some(ServerMessage::Error(message))) => {
                                    let message = super::error::from_the_network(&message);
                                    break format!("bore server error: {message}").into();
                                }
                                Ok(Some(other)) => tracing::debug!(?other, "unexpected bore message"),
                            }
                        },
                        Some(_) = connections.join_next() => {}
                    }
                };
                // Each public connection has its own socket to the server, which outlives the
                // control connection: let the requests in flight finish instead of cutting them.
                // Each ends with its connection (idle ones after the header read timeout), or
                // when the tunnel is closed: the tunnel's upstream ends every connection it
                // serves then, these included.
                connections.detach_all();
                Err(lost)
            }))
        })
    }
}

struct AcceptConfig {
    server: String,
    control_port: u16,
    secret: Option<Arc<Secret>>,
    /// The startup timeout, which bounds connecting and authenticating each connection too.
    timeout: Duration,
    upstream: Upstream,
}

impl AcceptConfig {
    async fn accept(&self, id: Uuid) -> Result<(), BoxError> {
        let deadline = super::time::deadline(Instant::now(), self.timeout);
        let stream = connect(&self.server, self.control_port, left(deadline)).await?;
        let mut frames = Frames::new(stream);
        handshake(&mut frames, self.secret.as_deref(), deadline).await?;
        frames.send(&ClientMessage::Accept(id)).await?;
        let (stream, read_ahead) = frames.into_parts();
        if read_ahead.is_empty() {
            self.upstream.serve_tcp_connection(stream).await;
        } else {
            self.upstream
                .serve_tcp_connection(Rewind::new(read_ahead, stream))
                .await;
        }
        Ok(())
    }
}

/// The time left until `deadline` (a far-future timeout for none).
fn left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(super::time::FAR_FUTURE, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    })
}

/// Answers the server's challenge, if a secret is set, before `deadline`. A server without a
/// secret sends none and hangs up after its own 3 s wait for a first message, which is
/// recognised by its close.
async fn handshake(
    frames: &mut Frames,
    secret: Option<&Secret>,
    deadline: Option<Instant>,
) -> Result<(), BoxError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let wait = left(deadline);
    match tokio::time::timeout(wait, frames.recv()).await {
        Ok(Ok(Some(ServerMessage::Challenge(challenge)))) => {
            frames
                .send(&ClientMessage::Authenticate(answer(
                    secret.expose(),
                    &challenge,
                )))
                .await
        }
        Ok(Ok(Some(ServerMessage::Error(message)))) => {
            let message = super::error::from_the_network(&message);
            Err(format!("the bore server refused the connection: {message}").into())
        }
        Ok(Ok(Some(other))) => {
            Err(format!("expected an authentication challenge, got {other:?}").into())
        }
        Ok(Ok(None)) => Err(
            "the bore server closed the connection with no authentication challenge: \
             it may have no secret, unset TUNNEL_SECRET"
                .into(),
        ),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(format!(
            "the bore server sent no authentication challenge within {} ms: it may have no \
             secret, unset TUNNEL_SECRET",
            wait.as_millis()
        )
        .into()),
    }
}

/// bore's challenge answer: lowercase hex of HMAC-SHA256(key = SHA-256(secret), uuid bytes).
/// The key, as good as the secret to bore, is wiped once used, as the HMAC's state is.
fn answer(secret: &str, challenge: &Uuid) -> String {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.finalize_into((&mut *key).into());
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(&*key).expect("HMAC takes any key length");
    mac.update(challenge.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Null-delimited JSON frames over a TCP stream.
struct Frames {
    stream: TcpStream,
    buf: BytesMut,
}

impl Frames {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(MAX_FRAME),
        }
    }

    async fn send(&mut self, message: &ClientMessage) -> Result<(), BoxError> {
        let mut bytes = serde_json::to_vec(message)?;
        bytes.push(0);
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<ServerMessage>, BoxError> {
        loop {
            if let Some(end) = self.buf.iter().position(|byte| *byte == 0) {
                let frame = self.buf.split_to(end);
                self.buf.advance(1);
                if frame.len() > MAX_FRAME {
                    return Err("bore frame longer than 256 bytes".into());
                }
                // serde's error quotes what it did not expect (the name of an unknown message)
                // as it was sent: text from the network, escaped as the server's own messages.
                return serde_json::from_slice(&frame).map(Some).map_err(|err| {
                    let err = super::error::from_the_network(&err.to_string());
                    format!("invalid bore frame: {err}").into()
                });
            }
            if self.buf.len() > MAX_FRAME {
                return Err("bore frame longer than 256 bytes".into());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("the bore server closed the connection mid-frame".into())
                };
            }
        }
    }

    async fn recv_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<ServerMessage>, BoxError> {
        let wait = left(deadline);
        tokio::time::timeout(wait, self.recv()).await.map_err(|_| {
            format!(
                "no answer from the bore server within {} ms",
                wait.as_millis()
            )
        })?
    }

    fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers() {
        let bore = Bore::new().server("127.0.0.2:9000");
        assert_eq!(
            (bore.server.as_str(), bore.control_port),
            ("127.0.0.2", 9000)
        );
        let bore = Bore::new().server("tcp://[::1]:7000");
        assert_eq!((bore.server.as_str(), bore.control_port), ("::1", 7000));
        let bore = Bore::new().server("::1");
        assert_eq!((bore.server.as_str(), bore.control_port), ("::1", 7835));
        let bore = Bore::new().server("http://lt.example.com:8080/");
        assert_eq!(
            (bore.server.as_str(), bore.control_port),
            ("lt.example.com", 7835)
        );
        let bore = Bore::new().server("bore.example.com");
        assert_eq!(bore.server, "bore.example.com");
    }

    #[test]
    fn answers_like_bore() {
        // Same construction as bore's Authenticator: HMAC key is SHA-256(secret).
        let challenge = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let tag = answer("secret", &challenge);
        assert_eq!(tag.len(), 64);
        assert_ne!(tag, answer("other", &challenge));
    }
}
