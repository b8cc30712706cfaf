//! Configuration from the environment.

use std::fmt;
use std::str::FromStr;

use super::secret::Secret;
use super::{Bore, Cloudflared, LocalTunnel, TunnelBuilder, TunnelError};

/// The environment variables [`TunnelConfig::from_env`] reads.
pub(crate) const SETTINGS: [&str; 6] = [
    "TUNNEL_SERVICE",
    "TUNNEL_AUTH_TOKEN",
    "NGROK_AUTHTOKEN",
    "TUNNEL_REGION",
    "TUNNEL_SERVER",
    "TUNNEL_SECRET",
];

/// Those of [`SETTINGS`] that hold secrets.
pub(crate) const SECRET_SETTINGS: [&str; 3] =
    ["TUNNEL_AUTH_TOKEN", "NGROK_AUTHTOKEN", "TUNNEL_SECRET"];

/// One kind of provider, as named in `TUNNEL_SERVICE`.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::ProviderKind;
///
/// let kind: ProviderKind = "lt".parse().unwrap();
/// assert_eq!(kind, ProviderKind::LocalTunnel);
/// assert_eq!(kind.to_string(), "localtunnel");
/// assert!("carrier-pigeon".parse::<ProviderKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// `Ngrok` (feature `ngrok`).
    Ngrok,
    /// [`LocalTunnel`].
    LocalTunnel,
    /// [`Bore`].
    Bore,
    /// [`Cloudflared`].
    Cloudflared,
}

impl ProviderKind {
    /// The name used in `TUNNEL_SERVICE`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::ProviderKind;
    ///
    /// assert_eq!(ProviderKind::Cloudflared.as_str(), "cloudflared");
    /// assert_eq!("cloudflare".parse::<ProviderKind>().unwrap().as_str(), "cloudflared");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ngrok => "ngrok",
            Self::LocalTunnel => "localtunnel",
            Self::Bore => "bore",
            Self::Cloudflared => "cloudflared",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = TunnelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ngrok" => Ok(Self::Ngrok),
            "localtunnel" | "lt" => Ok(Self::LocalTunnel),
            "bore" => Ok(Self::Bore),
            "cloudflared" | "cloudflare" => Ok(Self::Cloudflared),
            other => Err(TunnelError::Config {
                setting: "TUNNEL_SERVICE",
                message: format!(
                    "unknown provider `{other}`: use ngrok, localtunnel, bore or cloudflared, or a \
                     comma-separated chain such as `ngrok,localtunnel,bore`"
                ),
            }),
        }
    }
}

/// Tunnel settings from the environment:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `TUNNEL_SERVICE` | one provider or a comma-separated chain: `ngrok`, `localtunnel`, `bore`, `cloudflared` | `ngrok,cloudflared,localtunnel,bore` (ngrok only with the `ngrok` feature) |
/// | `TUNNEL_AUTH_TOKEN` | ngrok auth token (`NGROK_AUTHTOKEN` also works) | none: ngrok is skipped |
/// | `TUNNEL_REGION` | ngrok ingress region (`eu`, `ap`, `us`...); cloudflared's `--region` when it is `us`, the only one cloudflared knows | none |
/// | `TUNNEL_SERVER` | self-hosted localtunnel server (URL; a bare host means `http://host`) or bore server (`host` or `host:control_port`) | the public servers |
/// | `TUNNEL_SECRET` | the bore server's secret | none |
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{ProviderKind, TunnelConfig};
///
/// let config = TunnelConfig::from_lookup(|name| match name {
///     "TUNNEL_SERVICE" => Some("localtunnel, bore".to_owned()),
///     "TUNNEL_SERVER" => Some("127.0.0.1".to_owned()),
///     "TUNNEL_SECRET" => Some("s3cret".to_owned()),
///     _ => None,
/// })
/// .unwrap();
/// assert_eq!(config.chain(), [ProviderKind::LocalTunnel, ProviderKind::Bore]);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.builder().provider_names(), ["localtunnel", "bore"]);
/// ```
pub struct TunnelConfig {
    chain: Vec<ProviderKind>,
    auth_token: Option<Secret>,
    region: Option<String>,
    server: Option<String>,
    secret: Option<Secret>,
}

impl fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("chain", &self.chain)
            .field("auth_token", &self.auth_token)
            .field("region", &self.region)
            .field(
                "server",
                &self.server.as_deref().map(super::http::shown_url),
            )
            .field("secret", &self.secret)
            .finish()
    }
}

impl TunnelConfig {
    /// Reads the process environment.
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] naming the variable that is wrong, or whose value is not UTF-8.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{TunnelConfig, TunnelError};
    ///
    /// match TunnelConfig::from_env() {
    ///     Ok(config) => assert_eq!(config.builder().provider_names().len(), config.chain().len()),
    ///     // The error names the variable to fix.
    ///     Err(err) => assert!(matches!(err, TunnelError::Config { .. })),
    /// }
    /// ```
    pub fn from_env() -> Result<Self, TunnelError> {
        // A value that is not UTF-8 is named, not taken for unset. Read as bytes, wiped on drop:
        // some of these are secrets.
        for setting in SETTINGS {
            let Some(value) = std::env::var_os(setting) else {
                continue;
            };
            let bytes = zeroize::Zeroizing::new(value.into_encoded_bytes());
            if std::str::from_utf8(&bytes).is_err() {
                return Err(TunnelError::Config {
                    setting,
                    message: "the value is not UTF-8 text".to_owned(),
                });
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name in, its value out).
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] naming the variable that is wrong.
    ///
    /// # Example
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tower_webhook::tunnel::{ProviderKind, TunnelConfig};
    ///
    /// // Settings from a file or a secret store instead of the process environment.
    /// let settings = HashMap::from([("TUNNEL_SERVER", "bore.internal:7835"), ("TUNNEL_SECRET", "s3cret")]);
    /// let config = TunnelConfig::from_lookup(|name| settings.get(name).map(|v| v.to_string())).unwrap();
    /// // Without TUNNEL_SERVICE, the default chain.
    /// assert!(config.chain().ends_with(&[ProviderKind::Cloudflared, ProviderKind::LocalTunnel, ProviderKind::Bore]));
    /// assert_eq!(config.server(), Some("bore.internal:7835"));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TunnelError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // Values that hold a secret: the string read is wiped too, not only the trimmed copy
        // kept.
        let get_secret = |name: &str| {
            let raw = zeroize::Zeroizing::new(lookup(name)?);
            let value = raw.trim();
            (!value.is_empty()).then(|| zeroize::Zeroizing::new(value.to_owned()))
        };
        let chain = match get("TUNNEL_SERVICE") {
            Some(list) => {
                let mut chain = Vec::new();
                for name in list.split(',').filter(|n| !n.trim().is_empty()) {
                    let kind: ProviderKind = name.parse()?;
                    if !chain.contains(&kind) {
                        chain.push(kind);
                    }
                }
                if chain.is_empty() {
                    return Err(TunnelError::Config {
                        setting: "TUNNEL_SERVICE",
                        message: "the list is empty".to_owned(),
                    });
                }
                chain
            }
            None => {
                let mut chain = Vec::new();
                if cfg!(feature = "ngrok") {
                    chain.push(ProviderKind::Ngrok);
                }
                chain.extend([
                    ProviderKind::Cloudflared,
                    ProviderKind::LocalTunnel,
                    ProviderKind::Bore,
                ]);
                chain
            }
        };
        if chain.contains(&ProviderKind::Ngrok) && !cfg!(feature = "ngrok") {
            return Err(TunnelError::Config {
                setting: "TUNNEL_SERVICE",
                message: "ngrok needs tower-webhook's `ngrok` cargo feature; enable it or \
                          choose localtunnel, bore or cloudflared"
                    .to_owned(),
            });
        }
        Ok(Self {
            chain,
            auth_token: get_secret("TUNNEL_AUTH_TOKEN")
                .or_else(|| get_secret("NGROK_AUTHTOKEN"))
                .map(|mut token| Secret::new(std::mem::take(&mut *token))),
            region: get("TUNNEL_REGION"),
            // No provider uses a URL's user info; a password there stays out of `Debug`.
            server: get_secret("TUNNEL_SERVER")
                .map(|server| super::http::without_user_info(&server)),
            secret: get_secret("TUNNEL_SECRET")
                .map(|mut secret| Secret::new(std::mem::take(&mut *secret))),
        })
    }

    /// The providers, in order.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{ProviderKind, TunnelConfig};
    ///
    /// let config = TunnelConfig::from_lookup(|name| {
    ///     (name == "TUNNEL_SERVICE").then(|| "bore, lt, bore".to_owned())
    /// })
    /// .unwrap();
    /// assert_eq!(config.chain(), [ProviderKind::Bore, ProviderKind::LocalTunnel]);
    /// ```
    pub fn chain(&self) -> &[ProviderKind] {
        &self.chain
    }

    /// The region, if set.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelConfig;
    ///
    /// let config = TunnelConfig::from_lookup(|name| (name == "TUNNEL_REGION").then(|| "eu".to_owned())).unwrap();
    /// assert_eq!(config.region(), Some("eu"));
    /// ```
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The self-hosted server, if set, without the user info of a URL (`user:password@`),
    /// which no provider uses.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelConfig;
    ///
    /// let config = TunnelConfig::from_lookup(|name| {
    ///     (name == "TUNNEL_SERVER").then(|| " https://lt.internal ".to_owned())
    /// })
    /// .unwrap();
    /// assert_eq!(config.server(), Some("https://lt.internal"));
    /// ```
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// Whether an ngrok auth token is set.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TunnelConfig;
    ///
    /// let config = TunnelConfig::from_lookup(|name| {
    ///     (name == "NGROK_AUTHTOKEN").then(|| "2abcTOKEN".to_owned())
    /// })
    /// .unwrap();
    /// assert!(config.has_auth_token());
    /// assert!(!format!("{config:?}").contains("2abcTOKEN"));
    /// ```
    pub fn has_auth_token(&self) -> bool {
        self.auth_token.is_some()
    }

    /// A [`TunnelBuilder`] with the configured chain.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::TunnelConfig;
    ///
    /// let config = TunnelConfig::from_lookup(|name| match name {
    ///     "TUNNEL_SERVICE" => Some("bore".to_owned()),
    ///     "TUNNEL_SECRET" => Some("s3cret".to_owned()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// let builder = config.builder().probe_timeout(Duration::from_secs(2));
    /// assert_eq!(builder.provider_names(), ["bore"]);
    /// assert!(!format!("{builder:?}").contains("s3cret"));
    /// ```
    pub fn builder(&self) -> TunnelBuilder {
        let mut builder = TunnelBuilder::new();
        for kind in &self.chain {
            builder = match kind {
                #[cfg(feature = "ngrok")]
                ProviderKind::Ngrok => {
                    let mut ngrok = super::Ngrok::new();
                    if let Some(token) = &self.auth_token {
                        ngrok = ngrok.authtoken(token.expose());
                    }
                    if let Some(region) = &self.region {
                        ngrok = ngrok.region(region);
                    }
                    builder.provider(ngrok)
                }
                #[cfg(not(feature = "ngrok"))]
                ProviderKind::Ngrok => builder,
                ProviderKind::LocalTunnel => {
                    let mut lt = LocalTunnel::new();
                    if let Some(server) = &self.server {
                        lt = lt.server(server.clone());
                    }
                    builder.provider(lt)
                }
                ProviderKind::Bore => {
                    let mut bore = Bore::new();
                    if let Some(server) = &self.server {
                        bore = bore.server(server.clone());
                    }
                    if let Some(secret) = &self.secret {
                        bore = bore.secret(secret.expose());
                    }
                    builder.provider(bore)
                }
                ProviderKind::Cloudflared => {
                    let mut cf = Cloudflared::new().made_by_config();
                    // cloudflared's one region is `us` (the global network otherwise): an ngrok
                    // region such as `eu` would keep it from starting.
                    match self.region.as_deref() {
                        Some(region) if region.eq_ignore_ascii_case("us") => cf = cf.region("us"),
                        Some(region) => tracing::debug!(
                            region,
                            "TUNNEL_REGION is no cloudflared region: cloudflared uses the global network"
                        ),
                        None => {}
                    }
                    builder.provider(cf)
                }
            };
        }
        builder
    }
}
