//! The cloudflared provider: a quick tunnel run by the `cloudflared` binary.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::Upstream;
use super::http::{BaseUrl, get};
use super::provider::{BoxFuture, Provider, Session};
use crate::BoxError;

const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often an open tunnel's `/ready` is asked, at most.
const READY_POLL: Duration = Duration::from_secs(5);
/// How long one such request may take.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// The part of the startup timeout kept for the round-trip probe, as a divisor: cloudflared's
/// start and readiness share the rest.
const PROBE_SHARE: u32 = 5;
const STDERR_LINES: usize = 5;
/// The longest stderr line kept, in bytes: the rest of a longer one is skipped.
const STDERR_LINE_MAX: usize = 4096;

#[derive(Debug, Deserialize)]
struct QuickTunnel {
    hostname: Option<String>,
}

/// A Cloudflare quick tunnel (`https://*.trycloudflare.com`) run by spawning
/// `cloudflared tunnel --url http://127.0.0.1:PORT --metrics 127.0.0.1:M`.
///
/// Tried only when the binary is found (on `PATH` unless [`binary`](Self::binary) gives a path).
/// The URL comes from the metrics endpoint `GET /quicktunnel` (a hostname in
/// `trycloudflare.com`, or in the [`domain`](Self::domain) given, or the attempt fails) and the
/// tunnel counts as up once `GET /ready` answers 200. cloudflared is given the loopback port of
/// [`Upstream::local_addr`] to call, for an address upstream too: that port answers the round-trip
/// probe and forwards every other request to the address.
/// On close the process gets SIGINT, then SIGKILL after the [grace period](Self::stop_grace);
/// cloudflared is told (`--grace-period`) to wait half a second less for the requests in
/// progress, so that it stops by itself in time.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_webhook::tunnel::{Cloudflared, Tunnel};
///
/// let handle = Tunnel::builder()
///     .provider(Cloudflared::new())
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await?;
/// println!("webhooks go to {}", handle.url());
/// # Ok(()) }
/// ```
///
/// Its `Debug` output hides the values of extra [arguments](Self::arg) that look secret (after a
/// flag whose name contains `token`, `secret`, `key`, `password` or `credential`, or in a
/// `--flag=value` form of one).
#[derive(Clone)]
pub struct Cloudflared {
    binary: PathBuf,
    region: Option<String>,
    args: Vec<String>,
    startup_timeout: Duration,
    stop_grace: Duration,
    edge_lost_after: Duration,
    domain: String,
    /// Made by [`TunnelConfig`](super::TunnelConfig): its settings (`TUNNEL_REGION`, an ngrok
    /// region such as `eu`, among them) are kept from cloudflared, which reads some of them.
    from_config: bool,
}

impl fmt::Debug for Cloudflared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloudflared")
            .field("binary", &self.binary)
            .field("region", &self.region)
            .field("args", &redacted_args(&self.args))
            .field("startup_timeout", &self.startup_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("edge_lost_after", &self.edge_lost_after)
            .field("domain", &self.domain)
            .finish()
    }
}

/// Parts of a flag name that mark its value as secret.
const SECRET_FLAG_WORDS: [&str; 5] = ["token", "secret", "key", "password", "credential"];

const REDACTED: &str = "<redacted>";

/// Whether `name` (a flag, or the name part of `name=value`) names a secret.
fn names_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_FLAG_WORDS.iter().any(|word| name.contains(word))
}

/// `args` for `Debug`: the value after a secret flag, and the value of `secret-flag=value`,
/// replaced by `<redacted>`.
fn redacted_args(args: &[String]) -> Vec<String> {
    let mut shown = Vec::with_capacity(args.len());
    let mut value_is_secret = false;
    for arg in args {
        if std::mem::take(&mut value_is_secret) {
            shown.push(REDACTED.to_owned());
            continue;
        }
        match arg.split_once('=') {
            Some((name, _)) if names_a_secret(name) => shown.push(format!("{name}={REDACTED}")),
            Some(_) => shown.push(arg.clone()),
            None => {
                value_is_secret = arg.starts_with('-') && names_a_secret(arg);
                shown.push(arg.clone());
            }
        }
    }
    shown
}

impl Default for Cloudflared {
    fn default() -> Self {
        Self::new()
    }
}

impl Cloudflared {
    /// `cloudflared` from `PATH`, 30 s to start, 5 s between SIGINT and SIGKILL.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Cloudflared, Provider};
    ///
    /// let cloudflared = Cloudflared::new();
    /// assert_eq!(cloudflared.name(), "cloudflared");
    /// assert_eq!(Provider::startup_timeout(&cloudflared), Duration::from_secs(30));
    /// assert!(format!("{cloudflared:?}").contains(r#"binary: "cloudflared""#));
    /// ```
    pub fn new() -> Self {
        Self {
            binary: PathBuf::from("cloudflared"),
            region: None,
            args: Vec::new(),
            startup_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            edge_lost_after: Duration::from_secs(30),
            domain: QUICK_TUNNEL_DOMAIN.to_owned(),
            from_config: false,
        }
    }

    /// The provider as [`TunnelConfig`](super::TunnelConfig) makes it: started without the
    /// configuration's settings in its environment.
    pub(crate) fn made_by_config(mut self) -> Self {
        self.from_config = true;
        self
    }

    /// The executable: a path, or a bare name looked up on `PATH`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Cloudflared, Tunnel, TunnelError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let missing = std::env::temp_dir().join("no-such-dir").join("cloudflared");
    /// let err = Tunnel::builder()
    ///     .provider(Cloudflared::new().binary(&missing))
    ///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
    ///     .await
    ///     .unwrap_err();
    /// let TunnelError::AllFailed { attempts } = err else { panic!("{err}") };
    /// assert!(attempts[0].reason.contains("does not exist"));
    /// # Ok(()) }
    /// ```
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Passes `--region` to cloudflared (for example `us`).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Cloudflared;
    ///
    /// let cloudflared = Cloudflared::new().region("us");
    /// assert!(format!("{cloudflared:?}").contains(r#"region: Some("us")"#));
    /// ```
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Adds an argument after the ones this provider passes (for example `--protocol http2`).
    ///
    /// The value of a secret-looking flag (`--token <value>`, `--credentials-file=<path>`) is
    /// shown as `<redacted>` by `Debug`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Cloudflared;
    ///
    /// let cloudflared = Cloudflared::new()
    ///     .arg("--protocol")
    ///     .arg("http2")
    ///     .arg("--token")
    ///     .arg("eyJhIjoiMTIzIn0");
    /// let shown = format!("{cloudflared:?}");
    /// assert!(shown.contains(r#"["--protocol", "http2", "--token", "<redacted>"]"#));
    /// assert!(!shown.contains("eyJhIjoiMTIzIn0"));
    /// ```
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The hard startup limit (default 30 s), covering cloudflared's start and the round-trip
    /// probe. cloudflared may take all of it but a fifth, kept for the probe, to report its
    /// hostname and get ready; one that is not ready by then fails the attempt with what its
    /// metrics endpoint last answered and its last messages (it cannot reach Cloudflare's edge,
    /// say).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Cloudflared, Provider};
    ///
    /// // A slow network needs longer than the default 30 s.
    /// let cloudflared = Cloudflared::new().startup_timeout(Duration::from_secs(60));
    /// assert_eq!(Provider::startup_timeout(&cloudflared), Duration::from_secs(60));
    /// ```
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Time between SIGINT and SIGKILL when the tunnel closes (default 5 s, at most 9 s).
    ///
    /// A tunnel gives its session [`SESSION_STOP_GRACE`](super::SESSION_STOP_GRACE) (10 s) to
    /// close, and cloudflared is killed (and the kill logged) within it: a longer grace is cut
    /// to 9 s, where it would have been cut short unseen.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Cloudflared;
    ///
    /// let cloudflared = Cloudflared::new().stop_grace(Duration::from_secs(1));
    /// assert!(format!("{cloudflared:?}").contains("stop_grace: 1s"));
    /// let cloudflared = Cloudflared::new().stop_grace(Duration::from_secs(30));
    /// assert!(format!("{cloudflared:?}").contains("stop_grace: 9s"));
    /// ```
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace.min(MAX_STOP_GRACE);
        self
    }

    /// How long an open tunnel may go without a connection to Cloudflare's edge before it is
    /// taken for lost (default 30 s). cloudflared that loses every edge connection keeps running
    /// and retrying while its public URL answers 530; its metrics endpoint's `/ready` then
    /// answers 503. It is asked every 5 s (or a quarter of this, if shorter); once it has not
    /// answered 200 for this long, the session ends with that reason (`TunnelEvent::Down`),
    /// cloudflared is stopped, and the tunnel is re-opened as after any drop.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::Cloudflared;
    ///
    /// let cloudflared = Cloudflared::new().edge_lost_after(Duration::from_secs(60));
    /// assert!(format!("{cloudflared:?}").contains("edge_lost_after: 60s"));
    /// ```
    pub fn edge_lost_after(mut self, lost_after: Duration) -> Self {
        self.edge_lost_after = lost_after;
        self
    }

    /// The domain the hostname cloudflared reports must be in (default `trycloudflare.com`,
    /// where quick tunnels live); an empty one accepts any hostname. Whatever the domain, a
    /// report that is no hostname (`https://` and a port may come with it) fails the attempt:
    /// what answers on cloudflared's metrics port becomes the public URL, which is logged and
    /// handed to your code.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Cloudflared;
    ///
    /// let cloudflared = Cloudflared::new();
    /// assert!(format!("{cloudflared:?}").contains(r#"domain: "trycloudflare.com""#));
    /// // A stand-in for cloudflared whose tunnels are elsewhere.
    /// let cloudflared = Cloudflared::new().domain("tunnels.example.com");
    /// assert!(format!("{cloudflared:?}").contains(r#"domain: "tunnels.example.com""#));
    /// ```
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into().trim_matches('.').to_ascii_lowercase();
        self
    }

    fn find_binary(&self) -> Result<PathBuf, BoxError> {
        if self.binary.components().count() > 1 {
            return if self.binary.is_file() {
                Ok(self.binary.clone())
            } else {
                Err(format!("{} does not exist", self.binary.display()).into())
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(&self.binary))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("{} is not on PATH", self.binary.display()).into())
    }
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

impl Provider for Cloudflared {
    fn name(&self) -> &str {
        "cloudflared"
    }

    fn startup_timeout(&self) -> Duration {
        self.startup_timeout
    }

    /// The rest of the startup timeout: cloudflared says a quick tunnel "may take some time to
    /// be reachable" once it is ready (its new hostname resolves, and the edge routes to it,
    /// seconds later), and its own tests wait 10 s before they use one.
    fn probe_timeout(&self) -> Option<Duration> {
        Some(self.startup_timeout)
    }

    /// Only when the binary is missing: when it ran and failed, its own messages say why.
    fn hint(&self) -> Option<String> {
        self.find_binary()
            .is_err()
            .then(|| "install cloudflared and put it on PATH".to_owned())
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move {
            // Readiness is waited for within the startup timeout, all but a fifth kept for the
            // round-trip probe: a cloudflared that never gets ready (it cannot reach Cloudflare's
            // edge, say) fails with what it said before the chain cuts the attempt off with
            // no reason at all.
            let limit = self.startup_timeout - self.startup_timeout / PROBE_SHARE;
            let deadline = super::time::deadline(Instant::now(), limit);
            let binary = self.find_binary()?;
            let local = upstream.local_addr().await?;
            let metrics_port = free_port().await?;
            let metrics = BaseUrl {
                https: false,
                host: "127.0.0.1".to_owned(),
                port: metrics_port,
            };
            let mut command = Command::new(&binary);
            command
                .arg("tunnel")
                .arg("--no-autoupdate")
                .arg("--url")
                .arg(format!("http://{local}"))
                .arg("--metrics")
                .arg(format!("127.0.0.1:{metrics_port}"))
                // Its own wait for requests in progress after SIGINT (30 s unless told), ended
                // before the stop grace is: it stops by itself rather than being killed.
                .arg("--grace-period")
                .arg(format!("{}ms", own_grace(self.stop_grace).as_millis()));
            if let Some(region) = &self.region {
                command.arg("--region").arg(region);
            }
            command.args(&self.args);
            // cloudflared logs every `TUNNEL_*` variable when it starts: the secrets of this
            // crate's other providers (the ngrok auth token, the bore secret) are kept from it.
            // So are the other settings of a configuration this provider was made from, which
            // are not meant for it: cloudflared reads `TUNNEL_REGION` as its `--region`, and an
            // ngrok region such as `eu` would keep it from starting (`TunnelConfig` gives it
            // `us`, the one it knows). Otherwise a `TUNNEL_REGION` is taken to be cloudflared's.
            let kept = |setting: &str| {
                !(self.from_config || super::config::SECRET_SETTINGS.contains(&setting))
            };
            for setting in super::config::SETTINGS {
                if !kept(setting) {
                    command.env_remove(setting);
                }
            }
            // The names of the variables it will list (see `without_values`).
            let listed = std::env::vars_os()
                .filter(|(name, value)| {
                    let (name, value) = (name.to_string_lossy(), value.to_string_lossy());
                    (name.contains("TUNNEL_") || value.contains("TUNNEL_"))
                        && (!super::config::SETTINGS.contains(&&*name) || kept(&name))
                })
                .map(|(name, _)| name.to_string_lossy().into_owned())
                .collect::<std::collections::BTreeSet<_>>();
            let listed = listed.into_iter().collect::<Vec<_>>().join(" ");
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .map_err(|err| format!("could not start {}: {err}", binary.display()))?;
            let stderr = Arc::new(Mutex::new(VecDeque::new()));
            let mut reader = Reader(child.stderr.take().map(|pipe| {
                let lines = Arc::clone(&stderr);
                tokio::spawn(async move {
                    let mut reader = BufReader::new(pipe);
                    let mut buf = Vec::new();
                    while let Ok(Some(line)) = next_line(&mut reader, &mut buf).await {
                        // Its messages name URLs (an origin, a proxy) that may carry credentials.
                        let line = crate::redact::redacted(without_values(line, &listed));
                        tracing::debug!(target: "tower_webhook::tunnel::cloudflared", "{line}");
                        let mut lines = lines
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        if lines.len() == STDERR_LINES {
                            lines.pop_front();
                        }
                        lines.push_back(line);
                    }
                })
            }));
            let last_lines = move || {
                let lines = stderr
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                lines.iter().cloned().collect::<Vec<_>>().join(" | ")
            };
            let hostname = loop {
                if let Some(status) = child.try_wait()? {
                    reader.drain().await;
                    return Err(
                        format!("cloudflared exited with {status}: {}", last_lines()).into(),
                    );
                }
                let waiting = match ready_hostname(&metrics, deadline).await {
                    Ok(hostname) => break hostname,
                    Err(waiting) => waiting,
                };
                if super::time::due_within(deadline, Instant::now(), POLL_INTERVAL) {
                    let said = last_lines();
                    let said = if said.is_empty() {
                        "it logged nothing".to_owned()
                    } else {
                        format!("its last messages: {said}")
                    };
                    return Err(format!(
                        "cloudflared was not ready within {} ms ({waiting}); {said}",
                        limit.as_millis()
                    )
                    .into());
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            };
            let url = quick_tunnel_url(&hostname, &self.domain).map_err(|why| {
                format!(
                    "cloudflared's metrics endpoint (127.0.0.1:{metrics_port}) reported {why}: \
                     is another program on that port?"
                )
            })?;
            tracing::info!(%url, "cloudflared quick tunnel open");
            let grace = self.stop_grace;
            let lost_after = self.edge_lost_after;
            let every = (lost_after / 4).clamp(Duration::from_millis(50), READY_POLL);
            Ok(Session::spawn(url, move |mut stop| async move {
                let mut poll = tokio::time::interval_at(Instant::now() + every, every);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Since when `/ready` has not answered 200.
                let mut not_ready: Option<(Instant, String)> = None;
                loop {
                    tokio::select! {
                        () = stop.stopped() => {
                            terminate(&mut child, grace).await;
                            drop(reader);
                            return Ok(());
                        }
                        status = child.wait() => {
                            let status = status?;
                            reader.drain().await;
                            return Err(
                                format!("cloudflared exited with {status}: {}", last_lines()).into(),
                            );
                        }
                        _ = poll.tick() => {
                            let answer = get(&metrics, "/ready", &[], every.min(READY_TIMEOUT), None).await;
                            let why = match answer {
                                Ok((status, _)) if status.is_success() => {
                                    not_ready = None;
                                    continue;
                                }
                                Ok((status, _)) => format!("/ready answered {status}"),
                                Err(err) => format!(
                                    "its metrics endpoint did not answer: {}",
                                    super::error::chain(&*err)
                                ),
                            };
                            let since = not_ready.get_or_insert_with(|| (Instant::now(), String::new()));
                            since.1 = why;
                            if since.0.elapsed() >= lost_after {
                                let reason = format!(
                                    "cloudflared has had no connection to Cloudflare's edge for {} ms ({}): the public URL does not answer; its last messages: {}",
                                    since.0.elapsed().as_millis(),
                                    since.1,
                                    last_lines()
                                );
                                terminate(&mut child, grace).await;
                                drop(reader);
                                return Err(reason.into());
                            }
                        }
                    }
                }
            }))
        })
    }
}

/// The quick tunnel's hostname, once cloudflared reports both a hostname and readiness; what
/// it is still waiting for otherwise. Each request gets a second, and no more than is left
/// before `deadline`.
async fn ready_hostname(metrics: &BaseUrl, deadline: Option<Instant>) -> Result<String, String> {
    let timeout = || {
        let left = deadline.map_or(Duration::from_secs(1), |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        left.clamp(Duration::from_millis(1), Duration::from_secs(1))
    };
    let unanswered = |err: BoxError| {
        format!(
            "its metrics endpoint {} did not answer: {}",
            metrics.authority(),
            super::error::chain(&*err)
        )
    };
    let (status, body) = get(metrics, "/quicktunnel", &[], timeout(), None)
        .await
        .map_err(unanswered)?;
    if !status.is_success() {
        return Err(format!("/quicktunnel answered {status}"));
    }
    let hostname = serde_json::from_slice::<QuickTunnel>(&body)
        .ok()
        .and_then(|answer| answer.hostname)
        .filter(|hostname| !hostname.is_empty())
        .ok_or("/quicktunnel reported no hostname yet")?;
    let (status, _) = get(metrics, "/ready", &[], timeout(), None)
        .await
        .map_err(unanswered)?;
    if !status.is_success() {
        return Err(format!("/ready answered {status}"));
    }
    Ok(hostname)
}

/// Where quick tunnels live.
const QUICK_TUNNEL_DOMAIN: &str = "trycloudflare.com";

/// The public URL for the hostname cloudflared reported (`host`, or `http(s)://host[:port]`),
/// when `host` is a hostname in `domain` (any, when it is empty); why not otherwise.
fn quick_tunnel_url(reported: &str, domain: &str) -> Result<String, String> {
    let shown = super::error::from_the_network(reported);
    let (scheme, authority) = match reported.split_once("://") {
        Some((scheme, rest)) => (scheme, rest.strip_suffix('/').unwrap_or(rest)),
        None => ("https", reported),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port != 0));
    if !matches!(scheme, "http" | "https") || !port_ok || !is_hostname(host) {
        return Err(format!("`{shown}`, which is no hostname"));
    }
    let host = host.to_ascii_lowercase();
    if !domain.is_empty() && !host.ends_with(&format!(".{domain}")) {
        return Err(format!(
            "`{shown}`, which is not in {domain} (see Cloudflared::domain)"
        ));
    }
    Ok(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// Whether `host` is a DNS hostname: dot-separated labels of 1 to 63 ASCII letters, digits and
/// dashes (not first or last), 253 characters at most.
fn is_hostname(host: &str) -> bool {
    (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

async fn free_port() -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    Ok(listener.local_addr()?.port())
}

/// The next line of `reader`, cut at [`STDERR_LINE_MAX`] bytes (the rest of it is read and
/// skipped) and decoded lossily: neither a line without end nor bytes that are not UTF-8 stop
/// the reading or fill memory. `None` at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    buf.clear();
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then(|| String::from_utf8_lossy(buf).into_owned()));
        }
        read_any = true;
        let end = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..end.unwrap_or(available.len())];
        let room = STDERR_LINE_MAX.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = end.map_or(available.len(), |at| at + 1);
        reader.consume(consumed);
        if end.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(String::from_utf8_lossy(buf).into_owned()));
        }
    }
}

/// What starts cloudflared's line of the variables whose name or value holds `TUNNEL_`.
const ENVIRONMENT: &str = "Environmental variables map[";

/// `line`, or, if it is cloudflared's list of variables, the list with their names (`listed`)
/// alone. cloudflared lists every variable whose name or value holds `TUNNEL_`, values and all
/// (`INF Environmental variables map[SSH_TUNNEL_PASSWORD:hunter2 TUNNEL_LOGLEVEL:debug]`),
/// and masks only its own tokens: the line would carry any other secret into the log and into
/// a failure's reason.
fn without_values(line: String, listed: &str) -> String {
    match line.find(ENVIRONMENT) {
        Some(at) => format!("{}{ENVIRONMENT}{listed}] (values not shown)", &line[..at]),
        None => line,
    }
}

/// cloudflared's `--grace-period` for a stop grace of `grace`: half a second shorter, for it to
/// stop by itself in time, or none (it stops at once) if that leaves none.
fn own_grace(grace: Duration) -> Duration {
    grace.saturating_sub(Duration::from_millis(500))
}

/// The longest [`Cloudflared::stop_grace`]: a second short of the session's own grace, so that
/// cloudflared is killed by [`terminate`], which logs it, before the session is cut short.
const MAX_STOP_GRACE: Duration =
    Duration::from_secs(super::provider::SESSION_STOP_GRACE.as_secs() - 1);

/// How long the lines cloudflared wrote before it exited are waited for, once it has: the exit
/// and the end of its stderr come in no set order, and its last lines say why it ended.
const LAST_LINES_WAIT: Duration = Duration::from_millis(500);

/// The task that reads cloudflared's stderr; stopped when dropped (a session that ended, an
/// open that failed or was cut off), as a process cloudflared started may hold the pipe open.
struct Reader(Option<tokio::task::JoinHandle<()>>);

impl Reader {
    /// Lets the reader take the lines written before the exit (it ends with the pipe), for at
    /// most [`LAST_LINES_WAIT`].
    async fn drain(&mut self) {
        if let Some(reader) = self.0.as_mut()
            && tokio::time::timeout(LAST_LINES_WAIT, reader).await.is_ok()
        {
            self.0 = None;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            reader.abort();
        }
    }
}

/// SIGINT (cloudflared's graceful stop), then SIGKILL after `grace`. The signal is sent by the
/// system's `kill` command (no unsafe code here): without it, SIGKILL at once.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let sent = Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        match sent {
            Err(err) => tracing::warn!(
                pid,
                error = %err,
                "could not run `kill` to send cloudflared SIGINT; killing it"
            ),
            // `kill` failed: the process is already gone (or not ours to signal).
            Ok(status) if !status.success() => {}
            Ok(_) if tokio::time::timeout(grace, child.wait()).await.is_ok() => return,
            Ok(_) => tracing::warn!(pid, "cloudflared did not stop on SIGINT; killing it"),
        }
    }
    let _ = child.kill().await;
}
