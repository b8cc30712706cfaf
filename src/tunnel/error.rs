//! Errors of the tunnel bootstrapper.

use std::fmt;
use std::time::Duration;

/// Why a tunnel could not be opened, or why its configuration is wrong.
///
/// The [`Display`](fmt::Display) output is written for the person who must act: when every
/// provider of the chain failed it lists each provider, its reason and what can be done about it.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{TunnelConfig, TunnelError};
///
/// let err = TunnelConfig::from_lookup(|name| {
///     (name == "TUNNEL_SERVICE").then(|| "carrier-pigeon".to_owned())
/// })
/// .unwrap_err();
/// assert!(matches!(err, TunnelError::Config { setting: "TUNNEL_SERVICE", .. }));
/// assert!(err.to_string().contains("TUNNEL_SERVICE"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TunnelError {
    /// A setting is invalid.
    Config {
        /// The name of the setting, such as `TUNNEL_SERVICE`.
        setting: &'static str,
        /// What is wrong with it and how to fix it.
        message: String,
    },
    /// The provider chain is empty.
    NoProviders,
    /// Every provider of the chain failed; one [`Attempt`] per provider, in order.
    AllFailed {
        /// The failed attempts.
        attempts: Vec<Attempt>,
    },
    /// The local server could not bind or serve.
    Io(std::io::Error),
}

/// One failed attempt of one provider. See [`TunnelError::AllFailed`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{Bore, Tunnel, TunnelError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A port where no bore server listens.
/// let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
/// let err = Tunnel::builder()
///     .provider(Bore::new().server("127.0.0.1").control_port(port))
///     .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
///     .await
///     .unwrap_err();
/// let TunnelError::AllFailed { attempts } = err else { panic!("{err}") };
/// assert_eq!(attempts[0].provider, "bore");
/// assert!(attempts[0].hint.as_ref().unwrap().contains(&format!("127.0.0.1:{port}")));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The provider's name (`ngrok`, `localtunnel`, `bore`, `cloudflared`, ...).
    pub provider: String,
    /// Why it failed.
    pub reason: String,
    /// What the user can do about it, if the provider knows.
    pub hint: Option<String>,
    /// How long the attempt took.
    pub elapsed: Duration,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (after {} ms)",
            self.provider,
            self.reason,
            self.elapsed.as_millis()
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { setting, message } => write!(f, "invalid {setting}: {message}"),
            Self::NoProviders => f.write_str(
                "no tunnel provider configured: add one with TunnelBuilder::provider or set \
                 TUNNEL_SERVICE (ngrok, localtunnel, bore, cloudflared or a comma-separated chain)",
            ),
            Self::AllFailed { attempts } => {
                write!(f, "no tunnel could be opened; tried {}:", attempts.len())?;
                for attempt in attempts {
                    write!(f, "\n  - {attempt}")?;
                }
                Ok(())
            }
            Self::Io(err) => write!(f, "local server error: {err}"),
        }
    }
}

impl std::error::Error for TunnelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<std::io::Error> for TunnelError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// Formats an error with its chain of sources, `outer: inner: innermost`, with the credentials
/// of the URLs it names redacted (a service's reqwest error names the URL it called).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    // Bounded: a broken `Error` impl can make the chain a cycle.
    for (i, inner) in crate::error_chain::sources(err).enumerate() {
        let text = inner.to_string();
        if i == 0 {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    crate::redact::redacted(out)
}

/// Longest part of a server's message shown in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// A server's message as it may be shown to the operator (errors, logs): cut to
/// [`MAX_MESSAGE_CHARS`], control characters escaped, so that it cannot forge log lines.
pub(crate) fn from_the_network(message: &str) -> String {
    let mut shown = String::new();
    for c in message.chars().take(MAX_MESSAGE_CHARS) {
        // Printable characters as they are; the others as `\n`, `\u{1b}`.
        if c.is_control() || c == '\\' {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        shown.push_str("...");
    }
    shown
}
