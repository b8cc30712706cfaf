//! The PR-Agent-style webhook server: settings, router, background worker.
//!
//! `main.rs` runs it; `tests/app/pr_agent_server.rs` builds the same router against a fake provider
//! API on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos,
    ServerErrorsFailureClass,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutBody};
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnBodyChunk, DefaultOnEos, DefaultOnRequest, DefaultOnResponse,
    OnFailure, TraceLayer,
};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
};
use tower_webhook::error::{Problem, WebhookErrorLayer, WebhookProcessingError, types};
use tower_webhook::retry::{RetryPolicy, retry_after};
// Whether a comment's request failed before it was sent (no connection within
// `API_CONNECT_TIMEOUT`, a refused one...): then it is sent again later.
pub(crate) use tower_webhook::retry::was_not_sent;
use tower_webhook::signature::{
    Clock, MemoryReplayStore, OnReplay, Provider, RecordDelivery, ReplayStore, Secrets,
    SignatureConfigError, SignatureLayer, VerifiedWebhook,
};
use tower_webhook::tunnel::{Running, Server, TunnelBuilder, TunnelEvent};

#[path = "drafts.rs"]
pub(crate) mod drafts;
#[path = "github_app.rs"]
pub(crate) mod github_app;
#[path = "../common/secret.rs"]
mod secret;
#[path = "../common/shutdown.rs"]
#[allow(dead_code)] // `shutdown_signal` is the other servers'
pub(crate) mod shutdown;
use drafts::DraftMemory;
pub(crate) use github_app::GithubApp;
use github_app::{InstallationChange, InstallationTokens, TokenError};

/// The six providers the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Forge {
    /// GitHub (`X-Hub-Signature-256`).
    GitHub,
    /// GitLab (`X-Gitlab-Token`).
    GitLab,
    /// Bitbucket Cloud (`X-Hub-Signature`, delivery id `X-Request-UUID`).
    Bitbucket,
    /// Bitbucket Data Center, formerly Server (`X-Hub-Signature`, delivery id `X-Request-Id`).
    /// Self-hosted, with its own API and payloads, so it has its own route and settings.
    BitbucketServer,
    /// Gitea and Forgejo (`X-Gitea-Signature`).
    Gitea,
    /// Azure DevOps (Basic authentication).
    AzureDevOps,
}

impl Forge {
    /// Every provider, in route order.
    pub(crate) const ALL: [Forge; 6] = [
        Forge::GitHub,
        Forge::GitLab,
        Forge::Bitbucket,
        Forge::BitbucketServer,
        Forge::Gitea,
        Forge::AzureDevOps,
    ];

    /// The short name used in routes, logs and `/status`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Bitbucket => "bitbucket",
            Forge::BitbucketServer => "bitbucket_server",
            Forge::Gitea => "gitea",
            Forge::AzureDevOps => "azuredevops",
        }
    }

    /// The webhook route, e.g. `/api/v1/github_webhooks`.
    pub(crate) fn route(self) -> String {
        format!("/api/v1/{}_webhooks", self.name())
    }

    pub(crate) fn api_url_var(self) -> &'static str {
        match self {
            Forge::GitHub => "GITHUB_API_URL",
            Forge::GitLab => "GITLAB_API_URL",
            Forge::Bitbucket => "BITBUCKET_API_URL",
            Forge::BitbucketServer => "BITBUCKET_SERVER_API_URL",
            Forge::Gitea => "GITEA_API_URL",
            Forge::AzureDevOps => "AZURE_DEVOPS_API_URL",
        }
    }

    /// The base URL of the provider's hosted API, or of a self-hosted one, for messages.
    fn api_url_example(self) -> &'static str {
        match self {
            Forge::GitHub => "https://api.github.com",
            Forge::GitLab => "https://gitlab.com/api/v4",
            Forge::Bitbucket => "https://api.bitbucket.org/2.0",
            Forge::BitbucketServer => "https://bitbucket.example.com",
            Forge::Gitea => "https://gitea.example.com/api/v1",
            Forge::AzureDevOps => "https://dev.azure.com/{organization}",
        }
    }

    /// The setting that enables the provider's webhook route.
    fn webhook_var(self) -> &'static str {
        match self {
            Forge::GitHub => "GITHUB_WEBHOOK_SECRET",
            Forge::GitLab => "GITLAB_WEBHOOK_TOKEN",
            Forge::Bitbucket => "BITBUCKET_WEBHOOK_SECRET",
            Forge::BitbucketServer => "BITBUCKET_SERVER_WEBHOOK_SECRET",
            Forge::Gitea => "GITEA_WEBHOOK_SECRET",
            Forge::AzureDevOps => "AZURE_DEVOPS_WEBHOOK_USERNAME and AZURE_DEVOPS_WEBHOOK_PASSWORD",
        }
    }

    fn token_var(self) -> &'static str {
        match self {
            Forge::GitHub => "GITHUB_TOKEN",
            Forge::GitLab => "GITLAB_TOKEN",
            Forge::Bitbucket => "BITBUCKET_TOKEN",
            Forge::BitbucketServer => "BITBUCKET_SERVER_TOKEN",
            Forge::Gitea => "GITEA_TOKEN",
            Forge::AzureDevOps => "AZURE_DEVOPS_TOKEN",
        }
    }
}

/// How one provider's deliveries are verified.
#[derive(Clone)]
pub(crate) enum Verification {
    /// HMAC or token secrets; several for rotation.
    Secrets(Vec<String>),
    /// Azure DevOps Basic credentials: a user name and one or more passwords.
    Basic {
        username: String,
        passwords: Vec<String>,
    },
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verification::Secrets(s) => write!(f, "Secrets([{} redacted])", s.len()),
            // The user name is half of the credential: redacted too.
            Verification::Basic { passwords, .. } => {
                write!(f, "Basic(user redacted, [{} redacted])", passwords.len())
            }
        }
    }
}

/// Where comments for one provider are posted.
#[derive(Clone)]
pub(crate) struct ApiTarget {
    /// Base URL of the provider API, e.g. `https://api.github.com`.
    pub(crate) base_url: String,
    /// The API token (never logged).
    pub(crate) token: Option<String>,
    /// With it, the token is sent as the password of HTTP Basic authentication, this the user
    /// name (Bitbucket Cloud's `BITBUCKET_USERNAME`: the Atlassian account's email with an API
    /// token, the Bitbucket username with an app password); without it, the provider's own way.
    pub(crate) username: Option<String>,
}

impl std::fmt::Debug for ApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTarget")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            // The other half of the Basic credential: redacted too.
            .field("username", &self.username.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything the server reads from its environment.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Address to bind (`HOST`, `PORT`; default 127.0.0.1:3000).
    pub(crate) addr: SocketAddr,
    /// Enabled providers and how they are verified.
    pub(crate) forges: BTreeMap<Forge, Verification>,
    /// Provider APIs; a provider without one has its comments logged instead.
    pub(crate) apis: BTreeMap<Forge, ApiTarget>,
    /// The outbound circuit breaker settings (`CIRCUIT_BREAKER_*`).
    pub(crate) breaker: CircuitBreakerConfig,
    /// Deadline of one webhook request (`REQUEST_TIMEOUT_SECS`, default 10, at most 600); a
    /// body that sends nothing for half of it is answered 408.
    pub(crate) request_timeout: Duration,
    /// Largest accepted body (`MAX_BODY_BYTES`, default 25 MiB, GitHub's largest payload;
    /// 1 KiB to 1 GiB).
    pub(crate) max_body_bytes: u64,
    /// Deliveries read at once, all providers together (`MAX_CONCURRENT_DELIVERIES`, default
    /// 64, 1 to 65536). A delivery is read whole before its signature can be checked, so this
    /// times `MAX_BODY_BYTES` bounds the memory anyone can make the server spend on bodies;
    /// past it, deliveries are answered 503 with `Retry-After`.
    pub(crate) max_concurrent_deliveries: usize,
    /// Comment jobs of one provider that may be pending at once, queued or waiting to be tried
    /// again (`MAX_PENDING_COMMENTS`, default 4096); past that, that provider's deliveries are
    /// answered 503. Each provider has its own bound: one whose API is down for hours, its
    /// comments waiting, does not get the deliveries of the others refused.
    pub(crate) max_pending_comments: usize,
    /// Comments posted at once to one provider's API (`COMMENTS_IN_FLIGHT_PER_PROVIDER`,
    /// default 8, at most 256). Each provider has its own slots.
    pub(crate) comments_in_flight_per_provider: usize,
    /// The least time between two GitHub comments (`GITHUB_COMMENT_INTERVAL_MS`, default 1000,
    /// at most 60000; 0: none): GitHub asks clients that create content to wait at least a
    /// second between such requests, and meets a burst with a secondary rate limit.
    pub(crate) github_comment_interval: Duration,
    /// Attempts that reach a provider's API before a comment that keeps failing transiently
    /// is given up (`COMMENT_MAX_ATTEMPTS`, default 20, at most 1000). Calls refused by an
    /// open breaker do not count.
    pub(crate) comment_max_attempts: u32,
    /// How long after its delivery a comment is still tried (`COMMENT_MAX_AGE_SECS`, default
    /// 86400 = 24 h, at most 30 days); past that it is given up.
    pub(crate) comment_max_age: Duration,
    /// How long the server waits at shutdown for pending comments, after its connections are
    /// closed (`SHUTDOWN_GRACE_SECS`, default 20, at most 3600; 0 does not wait).
    pub(crate) shutdown_grace: Duration,
    /// Open drafts remembered, so that a Bitbucket or Azure DevOps draft gets its comment when
    /// it is published (`MAX_REMEMBERED_DRAFTS`, default 10000, at most 1048576); past that,
    /// the one seen least recently is forgotten.
    pub(crate) max_remembered_drafts: usize,
    /// The GitHub repository hook to point at the tunnel's URL (`GITHUB_HOOK_REPOSITORY` +
    /// `GITHUB_HOOK_ID`), with `--use-tunnel`.
    pub(crate) github_hook: Option<GithubHook>,
    /// The GitHub App whose webhook is pointed at the tunnel's URL (`GITHUB_APP_ID` +
    /// `GITHUB_APP_PRIVATE_KEY` or `GITHUB_APP_PRIVATE_KEY_PATH`), with `--use-tunnel`.
    pub(crate) github_app: Option<GithubApp>,
    /// Set when no secret was configured and a development secret was made for GitHub.
    pub(crate) generated_github_secret: Option<String>,
    /// The user the server comments as, per provider whose payloads do not flag the server's
    /// own comments (`BITBUCKET_SERVER_BOT_USER`, `AZURE_DEVOPS_BOT_USER`): a comment by it
    /// comes back as a delivery, and is not answered.
    pub(crate) own_users: BTreeMap<Forge, String>,
    /// The tunnel settings (`TUNNEL_*`) that are set, by name: without `--use-tunnel` they do
    /// nothing, which [`start`] warns about.
    pub(crate) tunnel_settings: Vec<&'static str>,
    /// The providers whose API token (`GITHUB_TOKEN`, ...) is set without their API's URL:
    /// their comments are logged, not posted, which [`Settings::warnings`] says.
    pub(crate) tokens_without_api: Vec<Forge>,
}

/// The settings of the tunnel `--use-tunnel` opens (read by `TunnelConfig::from_env`).
const TUNNEL_SETTINGS: [&str; 5] = [
    "TUNNEL_SERVICE",
    "TUNNEL_AUTH_TOKEN",
    "TUNNEL_REGION",
    "TUNNEL_SERVER",
    "TUNNEL_SECRET",
];

/// A GitHub repository hook whose URL the server keeps pointed at its tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GithubHook {
    /// `owner/name`.
    pub(crate) repository: String,
    /// The hook's id, as in `/repos/{owner}/{repo}/hooks/{id}`.
    pub(crate) id: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("forges", &self.forges)
            .field("apis", &self.apis)
            .field("breaker", &self.breaker)
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_concurrent_deliveries", &self.max_concurrent_deliveries)
            .field("max_pending_comments", &self.max_pending_comments)
            .field(
                "comments_in_flight_per_provider",
                &self.comments_in_flight_per_provider,
            )
            .field("github_comment_interval", &self.github_comment_interval)
            .field("comment_max_attempts", &self.comment_max_attempts)
            .field("comment_max_age", &self.comment_max_age)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_remembered_drafts", &self.max_remembered_drafts)
            .field("github_hook", &self.github_hook)
            .field("github_app", &self.github_app)
            .field(
                "generated_github_secret",
                &self.generated_github_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("tunnel_settings", &self.tunnel_settings)
            .field("tokens_without_api", &self.tokens_without_api)
            .field("own_users", &self.own_users)
            .finish()
    }
}

/// The comma-separated secrets of setting `name`: `None` when it is unset, an error when it is
/// set but holds none (an empty secret never means "no check"), or when one of its items is
/// empty (two commas in a row, or one at either end, as a rotation that removed a secret may
/// leave, or a secret that holds a comma), or when a list of several holds one shorter than 8
/// bytes (a secret split at a comma), as `Secrets::from_env_list` refuses them.
fn secrets(name: &str, value: Option<String>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.iter().all(|item| item.is_empty()) {
        return Err(format!(
            "{name} is set but empty: set it to the webhook secret (comma-separated for several), or unset it"
        ));
    }
    // The library's rules for a list of secrets, with messages that name the setting.
    match Secrets::from_list(&value) {
        Ok(_) => Ok(Some(items.into_iter().map(str::to_owned).collect())),
        Err(SignatureConfigError::ShortListItem(_)) => Err(format!(
            "{name} holds a secret shorter than 8 bytes in its comma-separated list: commas separate the secrets of a rotation, so a secret that holds one is split at it, and its short piece would be accepted alone; use secrets of 8 bytes or more, without commas"
        )),
        Err(_) => Err(format!(
            "{name} has an empty item (two commas in a row, or one at either end): commas separate the secrets of a rotation, and a secret cannot hold one"
        )),
    }
}

impl Settings {
    /// What looks like a mistake in these settings without stopping the server, one line each:
    /// an API without its token (GitHub's is not needed with a GitHub App), whose provider
    /// would refuse every comment; an API of a provider whose webhook route is not enabled (its
    /// secret unset, or set under another name), whose deliveries would all be answered 404.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let without_token = self
            .apis
            .iter()
            .filter(|(forge, api)| {
                api.token.is_none() && !(**forge == Forge::GitHub && self.github_app.is_some())
            })
            .map(|(forge, _)| {
                format!(
                    "{} is set without {}: {} will refuse the comments",
                    forge.api_url_var(),
                    forge.token_var(),
                    forge.name()
                )
            });
        let without_route = self
            .apis
            .keys()
            .filter(|forge| !self.forges.contains_key(forge))
            .map(|forge| {
                format!(
                    "{} is set without {}: {} has no webhook route, and its deliveries are answered 404",
                    forge.api_url_var(),
                    forge.webhook_var(),
                    forge.name()
                )
            });
        // A token alone does not say where the API is (GitHub Enterprise, a self-hosted
        // GitLab): nothing is posted with it, and the comments are logged.
        let without_url = self.tokens_without_api.iter().map(|forge| {
            format!(
                "{} is set without {}: nothing is posted to {}, its comments are logged; set {} to its API's base URL (e.g. {})",
                forge.token_var(),
                forge.api_url_var(),
                forge.name(),
                forge.api_url_var(),
                forge.api_url_example()
            )
        });
        // Every delivery verified with the GitHub secret may name one of the App's
        // installations: a repository hook signed with it too makes that secret known to
        // whoever can set the hook, and lets them have the App comment in any installation.
        let hook_with_app = (self.github_hook.is_some() && self.github_app.is_some()).then(|| {
            "GITHUB_HOOK_REPOSITORY is set with GITHUB_APP_ID: the repository hook is verified \
             with GITHUB_WEBHOOK_SECRET, the App's, whose deliveries may name any of the App's \
             installations; keep that secret the App's alone, and point only the App's hook at \
             the server"
                .to_owned()
        });
        without_token
            .chain(without_route)
            .chain(without_url)
            .chain(hook_with_app)
            .collect()
    }

    /// The webhook secrets short enough to be guessed, one line each (of a rotation list, the
    /// shortest): whoever guesses one signs deliveries the server takes. Not the secret made up
    /// in development mode.
    pub(crate) fn secret_warnings(&self) -> Vec<String> {
        self.forges
            .iter()
            .filter(|(forge, _)| {
                !(**forge == Forge::GitHub && self.generated_github_secret.is_some())
            })
            .filter_map(|(forge, verification)| {
                let (var, secrets) = match verification {
                    Verification::Secrets(secrets) => (forge.webhook_var(), secrets),
                    Verification::Basic { passwords, .. } => {
                        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", passwords)
                    }
                };
                let shortest = secrets.iter().map(|s| s.chars().count()).min()?;
                (shortest < MIN_SECRET_CHARS).then(|| {
                    format!(
                        "{var} holds a secret of {shortest} characters, short enough to be guessed, and whoever guesses it can sign deliveries: use {MIN_SECRET_CHARS} or more random characters (e.g. `openssl rand -hex 32`), in the provider's webhook settings too"
                    )
                })
            })
            .collect()
    }

    /// The `*_API_URL`s that cannot be the provider's API, one line each: GitLab's `/api/v4`,
    /// Gitea's `/api/v1`, Bitbucket Cloud's `/2.0` and a GitHub Enterprise Server's `/api/v3`
    /// are part of the base URL; `github.com` and `bitbucket.org` are the websites, not the
    /// APIs; Bitbucket Data Center's `/rest/api/1.0` and an Azure DevOps project are in the
    /// comment's path already. Every comment would fail (404, or a redirect), and be
    /// given up as refused. A warning, not an error: a proxy in front of the API may serve it at
    /// another path.
    pub(crate) fn api_url_warnings(&self) -> Vec<String> {
        self.apis
            .iter()
            .filter_map(|(&forge, api)| {
                let url = reqwest::Url::parse(&api.base_url).ok()?;
                let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
                let path = url.path().trim_end_matches('/');
                let website = |site: &str| host == site || host == format!("www.{site}");
                let address = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host == "localhost"
                    || address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if url.scheme() == "http" && !loopback {
                    // The token goes with every comment; the public APIs redirect to https,
                    // which a comment does not follow (it would drop the token or leak it).
                    return Some(format!(
                        "{} is plain http: the {} token would cross the network unencrypted, and an API that redirects to https fails every comment; use https (e.g. {})",
                        forge.api_url_var(),
                        forge.name(),
                        forge.api_url_example()
                    ));
                }
                let why = match forge {
                    Forge::GitLab if !path.ends_with("/api/v4") => {
                        "does not end with /api/v4, the path of gitlab's API"
                    }
                    Forge::Gitea if !path.ends_with("/api/v1") => {
                        "does not end with /api/v1, the path of gitea's API"
                    }
                    Forge::GitHub if website("github.com") => "names the website, not the API",
                    // GitHub Enterprise Server serves its API under `/api/v3`; GitHub.com and
                    // GitHub Enterprise Cloud (`api.<name>.ghe.com`) at the root. A loopback or
                    // an address is taken for a proxy or a stand-in.
                    Forge::GitHub
                        if host != "api.github.com"
                            && !host.ends_with(".ghe.com")
                            && host != "localhost"
                            && address.parse::<IpAddr>().is_err()
                            && !path.ends_with("/api/v3") =>
                    {
                        "does not end with /api/v3, the path of a GitHub Enterprise Server's API (https://github.example.com/api/v3)"
                    }
                    Forge::Bitbucket if website("bitbucket.org") => {
                        "names the website, not the API"
                    }
                    Forge::Bitbucket if host == "api.bitbucket.org" && path != "/2.0" => {
                        "does not end with /2.0, the path of bitbucket's API"
                    }
                    // The organization's URL: the comment's path adds the project.
                    Forge::AzureDevOps
                        if host == "dev.azure.com" && path.trim_matches('/').is_empty() =>
                    {
                        "names no organization, which the comment's path does not add"
                    }
                    Forge::AzureDevOps
                        if host == "dev.azure.com" && path.split('/').count() > 2 =>
                    {
                        "names more than the organization (a project?), which the comment's path adds"
                    }
                    // The older form of an organization's URL names it in the host, and may add
                    // its one collection.
                    Forge::AzureDevOps
                        if host.ends_with(".visualstudio.com")
                            && !matches!(
                                path.trim_matches('/').to_ascii_lowercase().as_str(),
                                "" | "defaultcollection"
                            ) =>
                    {
                        "names more than the organization (a project?), which the comment's path adds"
                    }
                    Forge::BitbucketServer if path.ends_with("/rest/api/1.0") => {
                        "ends with /rest/api/1.0, which the comment's path adds again: set it to the server's base URL"
                    }
                    _ => return None,
                };
                Some(format!(
                    "{} {why} (e.g. {}): every comment to {} would fail",
                    forge.api_url_var(),
                    forge.api_url_example(),
                    forge.name()
                ))
            })
            .collect()
    }

    /// Reads the settings from the process environment. A variable whose value is not UTF-8
    /// is an error naming it (not its value), as the crate's own settings are: taken for
    /// unset, a secret's provider would silently go unserved, a limit silently get its default.
    pub(crate) fn from_env() -> Result<Self, String> {
        let not_utf8 = std::cell::RefCell::new(None::<String>);
        let settings = Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                not_utf8.borrow_mut().get_or_insert_with(|| name.to_owned());
                None
            }
        });
        // Before any other error, which the value taken for unset may have caused.
        if let Some(name) = not_utf8.into_inner() {
            return Err(format!(
                "{name} is set to a value that is not UTF-8: set it to UTF-8 text"
            ));
        }
        settings
    }

    /// Reads the settings through `lookup` (tests pass a map).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        // An address or a number left empty (`PORT: ${PORT}` in a compose file, the variable
        // unset) is unset, as the URLs and tokens are: its default. (A secret left empty is
        // refused instead: it would otherwise turn verification off or make one up.)
        let setting = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let host: IpAddr = match setting("HOST") {
            Some(h) => h.trim().parse().map_err(|_| {
                format!("HOST={h:?} is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)")
            })?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let port: u16 = match setting("PORT") {
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("PORT={p:?} is not a port number (0-65535)"))?,
            None => 3000,
        };
        // A whole number in `range`: 0 would make every request time out, every body too
        // large or every comment fail, so no setting takes it.
        let number = |name: &str,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>|
         -> Result<u64, String> {
            let Some(v) = setting(name) else {
                return Ok(default);
            };
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a whole number"))?;
            if !range.contains(&n) {
                return Err(format!(
                    "{name}={n} is out of range ({}-{})",
                    range.start(),
                    range.end()
                ));
            }
            Ok(n)
        };
        let mut forges = BTreeMap::new();
        for (forge, var) in [
            (Forge::GitHub, "GITHUB_WEBHOOK_SECRET"),
            (Forge::GitLab, "GITLAB_WEBHOOK_TOKEN"),
            (Forge::Bitbucket, "BITBUCKET_WEBHOOK_SECRET"),
            (Forge::BitbucketServer, "BITBUCKET_SERVER_WEBHOOK_SECRET"),
            (Forge::Gitea, "GITEA_WEBHOOK_SECRET"),
        ] {
            if let Some(secrets) = secrets(var, lookup(var))? {
                forges.insert(forge, Verification::Secrets(secrets));
            }
        }
        // Trimmed like the secrets: a value read from a file often ends with a line break.
        match (
            lookup("AZURE_DEVOPS_WEBHOOK_USERNAME").map(|u| u.trim().to_owned()),
            secrets(
                "AZURE_DEVOPS_WEBHOOK_PASSWORD",
                lookup("AZURE_DEVOPS_WEBHOOK_PASSWORD"),
            )?,
        ) {
            (Some(username), _) if username.is_empty() => {
                return Err("AZURE_DEVOPS_WEBHOOK_USERNAME is set but empty".into());
            }
            (Some(username), Some(passwords)) => {
                forges.insert(
                    Forge::AzureDevOps,
                    Verification::Basic {
                        username,
                        passwords,
                    },
                );
            }
            (None, None) => {}
            _ => {
                return Err("set both AZURE_DEVOPS_WEBHOOK_USERNAME and AZURE_DEVOPS_WEBHOOK_PASSWORD, or neither".into());
            }
        }
        let mut generated_github_secret = None;
        if forges.is_empty() {
            let secret = secret::random_secret();
            forges.insert(Forge::GitHub, Verification::Secrets(vec![secret.clone()]));
            generated_github_secret = Some(secret);
        }
        let mut apis = BTreeMap::new();
        let mut tokens_without_api = Vec::new();
        for forge in Forge::ALL {
            let Some(base_url) = lookup(forge.api_url_var()).filter(|u| !u.trim().is_empty())
            else {
                if lookup(forge.token_var()).is_some_and(|token| !token.trim().is_empty()) {
                    tokens_without_api.push(forge);
                }
                continue;
            };
            let token = api_token(forge.token_var(), lookup(forge.token_var()))?;
            let username = match forge {
                Forge::Bitbucket => {
                    api_username("BITBUCKET_USERNAME", lookup("BITBUCKET_USERNAME"))?
                }
                _ => None,
            };
            if username.is_some() && token.is_none() {
                return Err("BITBUCKET_USERNAME is set without BITBUCKET_TOKEN: set BITBUCKET_TOKEN to the API token (or app password) that goes with it".into());
            }
            apis.insert(
                forge,
                ApiTarget {
                    base_url: api_base_url(forge, &base_url)?,
                    token,
                    username,
                },
            );
        }
        // Only Bitbucket Cloud's API takes the username: without its URL, no comment would be
        // posted, and the username never sent.
        if !apis.contains_key(&Forge::Bitbucket)
            && api_username("BITBUCKET_USERNAME", lookup("BITBUCKET_USERNAME"))?.is_some()
        {
            return Err("BITBUCKET_USERNAME is set without BITBUCKET_API_URL: set BITBUCKET_API_URL to Bitbucket Cloud's API, https://api.bitbucket.org/2.0 (and BITBUCKET_TOKEN to the API token or app password), or unset BITBUCKET_USERNAME".into());
        }
        // Trimmed like the other settings (`GITHUB_HOOK_ID` too, as a number).
        let github_hook = match (
            lookup("GITHUB_HOOK_REPOSITORY").map(|r| r.trim().to_owned()),
            lookup("GITHUB_HOOK_ID"),
        ) {
            (None, None) => None,
            (Some(repository), Some(_)) => {
                // Not `.` or `..`, which a URL would resolve to another path.
                let valid = |part: &str| {
                    !matches!(part, "" | "." | "..")
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                };
                if !matches!(repository.split_once('/'), Some((o, n)) if valid(o) && valid(n)) {
                    return Err(format!(
                        "GITHUB_HOOK_REPOSITORY={repository:?} is not `owner/name`"
                    ));
                }
                let id = number("GITHUB_HOOK_ID", 0, 1..=u64::MAX)?;
                if apis
                    .get(&Forge::GitHub)
                    .is_none_or(|api| api.token.is_none())
                {
                    return Err("GITHUB_HOOK_REPOSITORY and GITHUB_HOOK_ID need GITHUB_API_URL and GITHUB_TOKEN (a token that may edit the repository's hooks)".into());
                }
                Some(GithubHook { repository, id })
            }
            _ => {
                return Err(
                    "set both GITHUB_HOOK_REPOSITORY and GITHUB_HOOK_ID, or neither".into(),
                );
            }
        };
        let github_app = github_app(&lookup, &apis)?;
        // The hook's deliveries are signed with the secret set on GitHub: without it (no GitHub
        // route, or a made-up development secret) every one of them would be refused.
        let github_secret_set =
            forges.contains_key(&Forge::GitHub) && generated_github_secret.is_none();
        let needs_secret = match (&github_hook, &github_app) {
            (Some(_), _) => Some("GITHUB_HOOK_REPOSITORY and GITHUB_HOOK_ID need"),
            (None, Some(_)) => Some("GITHUB_APP_ID needs"),
            (None, None) => None,
        };
        if let Some(needs) = needs_secret
            && !github_secret_set
        {
            return Err(format!(
                "{needs} GITHUB_WEBHOOK_SECRET, the secret set on the GitHub hook: without it, every delivery of the hook would be refused"
            ));
        }
        // Development mode prints a signed sample delivery for a public repository: with a
        // real token, sending it would post a comment there as the token's owner.
        if generated_github_secret.is_some()
            && apis
                .get(&Forge::GitHub)
                .is_some_and(|api| api.token.is_some())
        {
            return Err("GITHUB_TOKEN is set but no webhook secret is: development mode would print a sample delivery that posts a comment to octo-org/hello-world with that token; set GITHUB_WEBHOOK_SECRET to the secret of your hook, or unset GITHUB_TOKEN to try the server without posting".into());
        }
        let breaker = CircuitBreakerConfig::from_env_with(setting).map_err(|e| e.to_string())?;
        let mut own_users = BTreeMap::new();
        for (forge, name) in OWN_USER_SETTINGS {
            let Some(value) = lookup(name) else { continue };
            let value = value.trim();
            if value.is_empty() {
                return Err(format!(
                    "{name} is set but empty: set it to the user the server comments as, or unset it"
                ));
            }
            own_users.insert(forge, value.to_owned());
        }
        let max_pending_comments = number(
            "MAX_PENDING_COMMENTS",
            QUEUE_CAPACITY as u64,
            1..=MAX_QUEUE_CAPACITY,
        )? as usize;
        Ok(Self {
            addr: SocketAddr::new(host, port),
            forges,
            apis,
            breaker,
            request_timeout: Duration::from_secs(number("REQUEST_TIMEOUT_SECS", 10, 1..=600)?),
            max_body_bytes: number("MAX_BODY_BYTES", 25 * 1024 * 1024, 1024..=1 << 30)?,
            max_concurrent_deliveries: number(
                "MAX_CONCURRENT_DELIVERIES",
                MAX_CONCURRENT_DELIVERIES as u64,
                1..=1 << 16,
            )? as usize,
            max_pending_comments,
            comments_in_flight_per_provider: number(
                "COMMENTS_IN_FLIGHT_PER_PROVIDER",
                IN_FLIGHT_PER_PROVIDER as u64,
                1..=256,
            )? as usize,
            github_comment_interval: Duration::from_millis(number(
                "GITHUB_COMMENT_INTERVAL_MS",
                1000,
                0..=60_000,
            )?),
            comment_max_attempts: number("COMMENT_MAX_ATTEMPTS", 20, 1..=1000)? as u32,
            comment_max_age: Duration::from_secs(number(
                "COMMENT_MAX_AGE_SECS",
                24 * 3600,
                1..=30 * 24 * 3600,
            )?),
            shutdown_grace: Duration::from_secs(number("SHUTDOWN_GRACE_SECS", 20, 0..=3600)?),
            max_remembered_drafts: number("MAX_REMEMBERED_DRAFTS", 10_000, 1..=1 << 20)? as usize,
            github_hook,
            github_app,
            generated_github_secret,
            tunnel_settings: TUNNEL_SETTINGS
                .into_iter()
                .filter(|name| lookup(name).is_some_and(|value| !value.trim().is_empty()))
                .collect(),
            own_users,
            tokens_without_api,
        })
    }
}

/// The settings naming the user the server comments as, for the providers whose payloads do not
/// flag the server's own comments: Bitbucket Data Center's user name or slug (a personal HTTP
/// access token's owner, or the bot user of a project or repository token, as its comments
/// show it), Azure DevOps' identity, its `uniqueName` or `id` (the owner of the personal access
/// token).
const OWN_USER_SETTINGS: [(Forge, &str); 2] = [
    (Forge::BitbucketServer, "BITBUCKET_SERVER_BOT_USER"),
    (Forge::AzureDevOps, "AZURE_DEVOPS_BOT_USER"),
];

/// The API token of setting `name`, trimmed as the webhook secrets are (a token read from a
/// file often ends with a line break); `None` when unset or empty. A token with a character
/// no token has (a space, a control character, a non-ASCII one) is an error naming the setting
/// and not showing the token: no header could carry it, and every comment would fail.
fn api_token(name: &str, value: Option<String>) -> Result<Option<String>, String> {
    let Some(token) = value.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{name} holds a space, a control or a non-ASCII character, which no API token has: set it to the token alone"
        ));
    }
    Ok(Some(token))
}

/// The user name of setting `name` for HTTP Basic authentication, trimmed; `None` when unset or
/// blank. One with a `:` (which would end the user name in the header) or a control character is
/// an error naming the setting: every comment would be refused.
fn api_username(name: &str, value: Option<String>) -> Result<Option<String>, String> {
    let Some(username) = value.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if username.chars().any(|c| c == ':' || c.is_control()) {
        return Err(format!(
            "{name} holds a `:` or a control character, which no user name or email has: set it to the account's email (API token) or username (app password)"
        ));
    }
    Ok(Some(username))
}

/// The base URL of `forge`'s API setting, without its trailing `/`: an `http` or `https` URL
/// with a host, no credentials and no query or fragment (the comment's path is appended to it),
/// or an error naming the setting and showing a URL of that provider. Otherwise every comment
/// would fail, one by one, at run time. The error does not repeat the value: a token pasted
/// there by mistake would go to the log.
fn api_base_url(forge: Forge, value: &str) -> Result<String, String> {
    let value = value.trim();
    let refused = |why: &str| {
        format!(
            "{} {why}: set it to the API's base URL, e.g. {}",
            forge.api_url_var(),
            forge.api_url_example()
        )
    };
    let url =
        reqwest::Url::parse(value).map_err(|err| refused(&format!("is not a URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refused("is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refused("names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refused(
            "holds credentials, which belong in the provider's token setting",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refused(
            "has a query or a fragment, which the comment's path would follow",
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// The GitHub App of `GITHUB_APP_ID` and its private key, from `GITHUB_APP_PRIVATE_KEY` (the
/// PEM itself) or `GITHUB_APP_PRIVATE_KEY_PATH` (a file holding it).
fn github_app(
    lookup: impl Fn(&str) -> Option<String>,
    apis: &BTreeMap<Forge, ApiTarget>,
) -> Result<Option<GithubApp>, String> {
    // Trimmed like the other settings: a value read from a file often ends with a line break.
    let id = lookup("GITHUB_APP_ID").map(|id| id.trim().to_owned());
    let pem = match (
        lookup("GITHUB_APP_PRIVATE_KEY"),
        lookup("GITHUB_APP_PRIVATE_KEY_PATH").map(|path| path.trim().to_owned()),
    ) {
        (Some(_), Some(_)) => {
            return Err(
                "set GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH, not both".into(),
            );
        }
        (Some(pem), None) => Some(("GITHUB_APP_PRIVATE_KEY", pem)),
        (None, Some(path)) => {
            // The key itself, set here by mistake, is not repeated in the message.
            let key_like = path.contains("-----")
                || path.contains('\n')
                || path.contains("\\n")
                || path.len() > 1024;
            let pem = std::fs::read_to_string(&path).map_err(|err| match key_like {
                true => format!("GITHUB_APP_PRIVATE_KEY_PATH cannot be read ({err}): it looks like a key, not the path of a file; a key goes in GITHUB_APP_PRIVATE_KEY"),
                false => format!("GITHUB_APP_PRIVATE_KEY_PATH={path:?} cannot be read: {err}"),
            })?;
            Some(("GITHUB_APP_PRIVATE_KEY_PATH", pem))
        }
        (None, None) => None,
    };
    let (id, (key_var, pem)) = match (id, pem) {
        (None, None) => return Ok(None),
        (Some(id), Some(pem)) => (id, pem),
        _ => {
            return Err(
                "set GITHUB_APP_ID and its private key (GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH), or neither"
                    .into(),
            );
        }
    };
    if !apis.contains_key(&Forge::GitHub) {
        return Err("GITHUB_APP_ID needs GITHUB_API_URL (e.g. https://api.github.com)".into());
    }
    GithubApp::check_id(&id).map_err(|err| format!("GITHUB_APP_ID: {err}"))?;
    // The key's own text is never part of an error.
    GithubApp::new(&id, &pem)
        .map(Some)
        .map_err(|err| format!("{key_var}: {err}"))
}

/// Counters shown by `/status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Verified deliveries handed to the handler.
    pub(crate) accepted: AtomicU64,
    /// Deliveries refused (bad signature, too large, malformed).
    pub(crate) rejected: AtomicU64,
    /// Deliveries whose id was seen before: acknowledged, not processed.
    pub(crate) duplicates: AtomicU64,
    /// Pull-request events turned into a comment job.
    pub(crate) jobs: AtomicU64,
    /// Comments the provider API accepted.
    pub(crate) comments_posted: AtomicU64,
    /// Comments logged because no API is configured.
    pub(crate) comments_logged: AtomicU64,
    /// Comments the provider refused for good (4xx), and comments given up after
    /// `COMMENT_MAX_ATTEMPTS` attempts or `COMMENT_MAX_AGE_SECS`.
    pub(crate) comments_failed: AtomicU64,
    /// Comment attempts that failed transiently and were scheduled again.
    pub(crate) comment_retries: AtomicU64,
    /// Jobs waiting or in flight.
    pub(crate) pending: AtomicU64,
}

/// A comment to post.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Which provider.
    pub(crate) forge: Forge,
    /// The delivery that asked for it.
    pub(crate) delivery: String,
    /// Where and what.
    pub(crate) comment: Comment,
    /// The GitHub App installation the delivery came through, if any: with `GITHUB_APP_*`,
    /// the comment is posted as the app, with that installation's token.
    pub(crate) installation: Option<u64>,
    /// Attempts that reached the provider's API so far (a 429 that names no wait is not one).
    pub(crate) attempts: u32,
    /// Rate limits naming no wait met so far (a 429 of Bitbucket's, GitLab's...): the wait
    /// after each grows with them, as the job's backoff would with its attempts.
    pub(crate) limits: u32,
    /// When the delivery was accepted; the job is given up `COMMENT_MAX_AGE_SECS` later.
    pub(crate) accepted_at: tokio::time::Instant,
    /// The draft whose publishing this comment announces, taken from the memory of drafts:
    /// put back if the comment fails, for the delivery, delivered again, to get it.
    pub(crate) draft: Option<drafts::TakenDraft>,
}

/// An API call that posts one comment.
#[derive(Debug, Clone)]
pub(crate) struct Comment {
    /// Path below the API base URL.
    pub(crate) path: String,
    /// JSON body.
    pub(crate) body: Value,
    /// A human-readable target, for logs ("octo/repo#7").
    pub(crate) target: String,
}

/// Shared state of the server.
#[derive(Debug)]
pub(crate) struct AppState {
    /// Delivery and comment counters.
    pub(crate) counters: Counters,
    /// One breaker per provider API.
    pub(crate) breakers: BTreeMap<Forge, CircuitBreakerHandle>,
    /// Each job is `Unfinished` from the moment it is queued: one dropped with the queue is
    /// logged too.
    jobs: mpsc::Sender<Unfinished>,
    /// The pending jobs of each provider (all of them are in `counters.pending`).
    pending_by_forge: BTreeMap<Forge, AtomicU64>,
    /// Bound on each of `pending_by_forge`.
    max_pending: u64,
    /// Attempts before a comment is given up.
    max_attempts: u32,
    /// Age at which a comment is given up.
    max_age: Duration,
    /// Notified when the last pending job is done.
    idle: tokio::sync::Notify,
    /// What each pending job is about, logged when the shutdown's grace starts.
    unfinished: Arc<Registry>,
    /// Set when the server drains its comments at shutdown: a comment waiting out its own
    /// backoff is then tried once more at once, within the grace.
    draining: watch::Sender<bool>,
    /// The open drafts seen lately, of the providers whose events do not say that a pull
    /// request was one.
    pub(crate) drafts: DraftMemory,
    /// With `GITHUB_APP_*`: the installation tokens, which `installation` events drop.
    tokens: Option<Arc<InstallationTokens>>,
    /// The delivery ids each route has handled, by its signature scheme: a delivery whose
    /// comment failed is forgotten there, so that delivered again it is processed again.
    replay: BTreeMap<Forge, (Provider, Arc<MemoryReplayStore>)>,
    /// The user the server comments as, per provider ([`Settings::own_users`]).
    own_users: BTreeMap<Forge, String>,
    /// The tasks that point GitHub hooks at the tunnel, and back once it is closed.
    hooks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl AppState {
    /// How long a GitHub App installation's suspension, as its `installation` event told,
    /// holds before a comment asks GitHub for a token again (default 10 minutes).
    #[cfg_attr(not(test), allow(dead_code))] // set by the tests
    pub(crate) fn recheck_suspensions_after(&self, after: Duration) {
        if let Some(tokens) = &self.tokens {
            tokens.recheck_suspensions_after(after);
        }
    }

    /// Forgets that `job`'s delivery was handled, its comment having failed: the logs say to
    /// deliver it again from the provider's webhook log if the comment is missing, and GitHub's
    /// redelivery keeps the delivery id, which would otherwise be acknowledged as a duplicate
    /// (for [`replay_ttl`], 7 days) and not processed. `maybe_posted`: the provider failed after
    /// receiving the comment, and may have posted it.
    async fn forget_delivery(&self, job: &Job, maybe_posted: bool) {
        // The draft too: its publishing was taken from the memory for this comment, and the
        // delivery, processed again, finds it there only if it is remembered again. For that
        // delivery only when the comment may have been posted: the next update of the pull
        // request would post it again.
        if let Some(draft) = job.draft.clone() {
            self.drafts
                .put_back(draft, maybe_posted.then_some(job.delivery.as_str()));
        }
        let Some((provider, store)) = self.replay.get(&job.forge) else {
            return;
        };
        if job.delivery == "-" {
            return; // no delivery id: nothing was recorded
        }
        let key = format!("{}:{}", provider.as_str(), job.delivery);
        // The layer records the delivery once its handler has answered: a comment that failed
        // at once may be done first. Removed before that, the id would be recorded again.
        for _ in 0..50 {
            if store.completed(&key).await.unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = store.remove(&key).await;
    }

    /// One pending job of `forge` less: done, given up, or never queued.
    fn finish_pending(&self, forge: Forge) {
        self.pending_by_forge[&forge].fetch_sub(1, Ordering::AcqRel);
        if self.counters.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no comment is pending, or `grace` has passed, and returns how many are
    /// still pending. For shutdown, once no delivery can come in any more: the comments of
    /// deliveries already answered `202` are posted before the process exits, if the provider
    /// lets them through in time. Each one still pending when the process exits is logged.
    ///
    /// A comment waiting out the backoff of its failed attempts (not a wait the provider or the
    /// breaker named) is tried once more at once: the API may be back, and the backoff can
    /// outlast the grace.
    pub(crate) async fn drain_comments(&self, grace: Duration) -> u64 {
        self.draining.send_replace(true);
        // Each one now, not only when the grace is over: a process stopped with less time
        // than the grace (`docker stop` kills after 10 s) never gets there.
        self.unfinished.log_pending(grace);
        let idle = async {
            loop {
                // Registered before the check, so a job finishing in between is not missed.
                let mut notified = std::pin::pin!(self.idle.notified());
                notified.as_mut().enable();
                if self.counters.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, idle).await;
        self.counters.pending.load(Ordering::Acquire)
    }
}

/// The running application: its router and state.
#[derive(Debug)]
pub(crate) struct App {
    /// The router, with every layer in place.
    pub(crate) router: Router,
    /// Counters, breakers and pending comments.
    pub(crate) state: Arc<AppState>,
    /// Point the GitHub hooks at the tunnel: the repository hook of `GITHUB_HOOK_*` and the
    /// app's hook of `GITHUB_APP_*`, those that are set.
    pub(crate) hook_updaters: Vec<HookUpdater>,
}

/// A GitHub webhook whose URL the server keeps pointed at its tunnel.
#[derive(Clone, Debug)]
pub(crate) enum HookTarget {
    /// A repository hook, edited with the API token.
    Repository(GithubHook),
    /// A GitHub App's hook, edited as the app.
    App(GithubApp),
}

impl std::fmt::Display for HookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookTarget::Repository(hook) => write!(f, "hook {} of {}", hook.id, hook.repository),
            HookTarget::App(app) => write!(f, "the hook of GitHub App {}", app.id()),
        }
    }
}

/// Keeps a GitHub hook pointed at the server's public URL, through the same breaker and retry
/// policy as the comments.
pub(crate) struct HookUpdater {
    target: HookTarget,
    api: ApiTarget,
    caller: Caller,
}

impl std::fmt::Debug for HookUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookUpdater")
            .field("target", &self.target)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Why the hook could not be pointed at a URL.
enum HookError {
    /// Worth trying again, after at least the wait the API asked for: the API failed or could
    /// not be reached (5xx, 429, a connection error, an open breaker). The flag: a GitHub
    /// secondary rate limit naming no delay, whose wait grows while it persists.
    Transient(String, Option<Duration>, bool),
    /// The API refused the request (a wrong token, hook or repository): trying again cannot
    /// help.
    Refused(String),
}

impl HookUpdater {
    /// `<method> /repos/{owner}/{repo}/hooks/{id}/config` or `<method> /app/hook/config`.
    fn config_request(&self, method: Method, body: &Value) -> Result<reqwest::Request, HookError> {
        match &self.target {
            HookTarget::Repository(hook) => {
                let path = format!("/repos/{}/hooks/{}/config", hook.repository, hook.id);
                api_request(Forge::GitHub, &self.api, method, &path, body)
            }
            HookTarget::App(app) => app_request(app, &self.api, method, "/app/hook/config", body),
        }
        .map_err(|err| HookError::Refused(err.to_string()))
    }

    /// Sends a request about the hook's config: the answer's body (64 KiB at most), or why not.
    async fn send(&self, request: reqwest::Request) -> Result<Vec<u8>, HookError> {
        // As the app: its token was dated with the skew of now.
        let dated = match &self.target {
            HookTarget::App(app) => Some((app, app.skew())),
            HookTarget::Repository(_) => None,
        };
        let res = self
            .caller
            .clone()
            .oneshot(request)
            .await
            .map_err(|err| HookError::Transient(error_chain(&*err), None, false))?;
        if let Some((app, skew)) = dated
            && app.refused_for_the_clock(res.status(), res.headers(), skew)
        {
            return Err(HookError::Transient(
                "GitHub refused the app's token, dated by a clock its answer shows to be off; the next one is dated by GitHub's".into(),
                None,
                false,
            ));
        }
        if res.status().is_success() {
            return match read_at_most(res, 64 * 1024).await {
                Ok(body) => Ok(body),
                Err(Unread::TooLarge(_)) => Err(HookError::Refused(
                    "GitHub's answer about the hook is larger than 64 KiB".into(),
                )),
                Err(Unread::Failed(err)) => {
                    Err(HookError::Transient(error_chain(&err), None, false))
                }
            };
        }
        let (status, wait, secondary_limit, says) = status_and_limit(Forge::GitHub, res).await;
        if status.is_server_error() || wait.is_some() {
            return Err(HookError::Transient(
                answered(format!("GitHub answered {status}"), says.as_deref()),
                wait,
                secondary_limit,
            ));
        }
        Err(HookError::Refused(answered(
            format!("GitHub answered {status}"),
            says.as_deref(),
        )))
    }

    /// The URL the hook delivers to now (`GET` of its config).
    async fn current_url(&self) -> Result<String, HookError> {
        let body = self
            .send(self.config_request(Method::GET, &Value::Null)?)
            .await?;
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|config| config["url"].as_str().map(str::to_owned))
            .ok_or_else(|| HookError::Refused("GitHub's hook config names no URL".into()))
    }

    /// `PATCH` of the hook's config with `url` (its secret and other settings are kept).
    async fn set_url(&self, url: &str) -> Result<(), HookError> {
        let request = self.config_request(Method::PATCH, &json!({ "url": url }))?;
        self.send(request).await.map(drop)
    }

    /// Points the hook at the webhook route under the tunnel's URL `public`.
    async fn point_to(&self, public: &str) -> Result<(), HookError> {
        let url = format!("{public}{}", Forge::GitHub.route());
        self.set_url(&url).await?;
        tracing::info!(hook = %self.target, %url, "GitHub hook now points at the tunnel");
        Ok(())
    }

    /// Once the tunnel is closed for good (the server stops): points the hook back at the URL
    /// it had before it followed the tunnel, so that the deliveries of a hook (or an app) that
    /// also serves elsewhere do not keep going to a tunnel that is gone. One attempt.
    async fn point_back(&self, original: &str) {
        let answer = tokio::time::timeout(POINT_BACK_WAIT, self.set_url(original))
            .await
            .unwrap_or_else(|_| {
                Err(HookError::Transient(
                    format!("no answer within {} s", POINT_BACK_WAIT.as_secs()),
                    None,
                    false,
                ))
            });
        match answer {
            Ok(()) => tracing::info!(
                hook = %self.target,
                url = %without_secrets(original),
                "GitHub hook pointed back at the URL it had before the tunnel"
            ),
            Err(HookError::Transient(err, ..) | HookError::Refused(err)) => tracing::error!(
                hook = %self.target,
                url = %without_secrets(original),
                error = %err,
                "could not point the GitHub hook back at the URL it had before the tunnel: set it by hand"
            ),
        }
    }

    /// Points the hook at every URL the tunnel opens at, until the tunnel is closed; then back
    /// at the URL it had before (read before the first update). A failure
    /// worth retrying is tried again after a growing delay (1 s to 1 min), or as long as a
    /// `Retry-After` asks (up to an hour); a GitHub secondary rate limit naming no delay, after
    /// a minute, then twice as long each time it is met again (up to an hour).
    pub(crate) async fn follow(self, mut status: watch::Receiver<TunnelEvent>) {
        // The URL the hook had before its first update, once read; whether it was asked for.
        let mut original: Option<String> = None;
        let mut asked = false;
        // Whether the hook was pointed at a tunnel URL.
        let mut moved = false;
        // The URL the hook points at, or was given up for.
        let mut settled: Option<String> = None;
        // A URL whose update failed, and when it may be tried again: a tunnel that drops and
        // comes back at the same URL meanwhile does not cut the wait short.
        let mut pending: Option<(String, tokio::time::Instant)> = None;
        let mut delay = Duration::from_secs(1);
        // GitHub secondary rate limits naming no delay met in a row: their wait grows on its
        // own (see `secondary_limit_wait`), apart from `delay`.
        let mut secondary_limits = 0;
        loop {
            let (url, closed) = {
                let event = status.borrow_and_update();
                (
                    event.is_up().then(|| event.url().to_owned()),
                    matches!(*event, TunnelEvent::Closed { .. }),
                )
            };
            if closed {
                break;
            }
            if let Some(url) = url
                && settled.as_deref() != Some(url.as_str())
                && pending
                    .as_ref()
                    .is_none_or(|(failed, at)| *failed != url || tokio::time::Instant::now() >= *at)
            {
                let (hook, route) = (&self.target, Forge::GitHub.route());
                // Read before the hook is first moved, until it is known or refused: a passing
                // failure is one of the update, tried again as the update is.
                let read = if asked {
                    Ok(())
                } else {
                    match self.current_url().await {
                        Ok(url) => {
                            tracing::info!(%hook, url = %without_secrets(&url), "the GitHub hook's URL before the tunnel: pointed back there when the server stops");
                            original = Some(url);
                            asked = true;
                            Ok(())
                        }
                        Err(HookError::Refused(err)) => {
                            tracing::warn!(%hook, error = %err, "could not read the GitHub hook's URL: it is not pointed back when the server stops");
                            asked = true;
                            Ok(())
                        }
                        Err(HookError::Transient(err, wait, secondary_limit)) => {
                            Err(HookError::Transient(
                                format!("reading its URL first: {err}"),
                                wait,
                                secondary_limit,
                            ))
                        }
                    }
                };
                let updated = match read {
                    Ok(()) => self.point_to(&url).await,
                    Err(err) => Err(err),
                };
                match updated {
                    Ok(()) => {
                        moved = true;
                        settled = Some(url);
                        pending = None;
                        delay = Duration::from_secs(1);
                        secondary_limits = 0;
                    }
                    Err(HookError::Transient(err, wait, secondary_limit)) => {
                        // A secondary rate limit met again is waited out twice as long, up to
                        // an hour; other failures from a second to a minute, or as long as the
                        // API asks.
                        let wait = if secondary_limit {
                            secondary_limits += 1;
                            secondary_limit_wait(secondary_limits)
                        } else {
                            secondary_limits = 0;
                            let wait = delay.max(wait.unwrap_or_default());
                            delay = (wait * 2).min(Duration::from_secs(60));
                            wait
                        };
                        tracing::warn!(%hook, error = %err, retry_in = ?wait, "could not point the GitHub hook at {url}{route} yet");
                        pending = Some((url, tokio::time::Instant::now() + wait));
                    }
                    Err(HookError::Refused(err)) => {
                        tracing::error!(%hook, error = %err, "could not point the GitHub hook at {url}{route}: set it by hand");
                        settled = Some(url);
                        pending = None;
                    }
                }
            }
            // Wake up for the next attempt if one is due later; otherwise only for a change.
            match &pending {
                Some((_, at)) if *at > tokio::time::Instant::now() => tokio::select! {
                    changed = status.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep_until(*at) => {}
                },
                _ => {
                    if status.changed().await.is_err() {
                        break;
                    }
                }
            }
        }
        // The tunnel is closed for good.
        if let Some(original) = original.as_deref().filter(|_| moved) {
            self.point_back(original).await;
        }
    }
}

/// How long the server waits, as it stops, for a hook to be pointed back at its URL from before
/// the tunnel.
const POINT_BACK_WAIT: Duration = Duration::from_secs(10);

/// `url` as the log shows it: its scheme, host and port only. The rest may be a secret: user
/// info, a query, and a path that holds a token (a smee.io channel, a `/hooks/<token>` URL).
fn without_secrets(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => match url.port() {
            Some(port) => format!(
                "{}://{}:{port}/...",
                url.scheme(),
                url.host_str().unwrap_or("")
            ),
            None => format!("{}://{}/...", url.scheme(), url.host_str().unwrap_or("")),
        },
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// How many comment jobs of one provider may be pending (queued, in flight, or waiting to be
/// tried again) by default; past that, its deliveries are answered 503 + `Retry-After`: refused,
/// not dropped. A provider that retries delivers them again later; GitHub does not deliver a
/// failed delivery again by itself, it stays in the hook's delivery log, marked failed, to be
/// redelivered there.
const QUEUE_CAPACITY: usize = 4096;
/// Deliveries read at once by default (`MAX_CONCURRENT_DELIVERIES`).
const MAX_CONCURRENT_DELIVERIES: usize = 64;
/// The largest `MAX_PENDING_COMMENTS`.
const MAX_QUEUE_CAPACITY: u64 = 1 << 20;
/// Comments posted at once to one provider's API by default. Each provider has its own slots, so
/// one that stalls or keeps a job waiting on a long `Retry-After` holds only its own.
const IN_FLIGHT_PER_PROVIDER: usize = 8;
/// Longest wait between two attempts of a comment when the provider gave no delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Webhook secrets shorter than this are warned about at startup.
const MIN_SECRET_CHARS: usize = 16;

/// Whether the command line (`args`, without the program's name) asks for a tunnel: it holds
/// `--use-tunnel` or nothing. Any other argument is an error naming it: a misspelt
/// `--use_tunnel` or `--tunnel` would otherwise start a server no provider can reach, without a
/// word.
pub(crate) fn use_tunnel(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<bool, String> {
    let mut tunnel = false;
    for arg in args {
        match arg.to_str() {
            Some("--use-tunnel") => tunnel = true,
            _ => {
                return Err(format!(
                    "unknown argument {:?}: the only one is --use-tunnel; the settings are environment variables",
                    arg.to_string_lossy()
                ));
            }
        }
    }
    Ok(tunnel)
}

/// Where the log lines go: `primary` (stdout) until a write there fails because its reader is
/// gone (the output piped into `head`, which exited), then `fallback` (stderr) for good. Without
/// it, every line after that was lost, and each one printed "Unable to write an event" to stderr.
#[derive(Debug)]
pub(crate) struct LogOutput<P, F> {
    primary: std::sync::Mutex<P>,
    fallback: std::sync::Mutex<F>,
    primary_gone: std::sync::atomic::AtomicBool,
}

impl<P: std::io::Write, F: std::io::Write> LogOutput<P, F> {
    pub(crate) fn new(primary: P, fallback: F) -> Self {
        Self {
            primary: std::sync::Mutex::new(primary),
            fallback: std::sync::Mutex::new(fallback),
            primary_gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Writes one formatted log line (tracing hands each event over whole).
    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        if !self.primary_gone.load(Ordering::Relaxed) {
            let mut primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
            match primary.write_all(line).and_then(|()| primary.flush()) {
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                    self.primary_gone.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let mut fallback = self.fallback.lock().unwrap_or_else(|e| e.into_inner());
        fallback.write_all(line).and_then(|()| fallback.flush())
    }
}

/// One event's writer, handed out by [`LogOutput`].
#[derive(Debug)]
pub(crate) struct LogLine<'a, P, F>(&'a LogOutput<P, F>);

impl<P: std::io::Write, F: std::io::Write> std::io::Write for LogLine<'_, P, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_line(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, P: std::io::Write + 'a, F: std::io::Write + 'a> tracing_subscriber::fmt::MakeWriter<'a>
    for LogOutput<P, F>
{
    type Writer = LogLine<'a, P, F>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine(self)
    }
}

/// Whether the log lines carry colours (ANSI escape sequences): only when stdout, where they
/// go, is a terminal (`stdout_is_terminal`), and `NO_COLOR` (`no_color`) is unset or empty. In a
/// file, a pipe or a container's log the sequences would sit between each field's name and its
/// value, and a search for `delivery=<id>`, the delivery a log line says to deliver again, would
/// find nothing.
pub(crate) fn log_colors(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The log filter of `RUST_LOG` (`value`): `info` when unset or blank. One that does not parse
/// (a level misspelt after a `=`, a stray bracket) is an error naming the setting, as with the
/// other settings: taken for `info`, the `debug` logs asked for would silently not be written.
pub(crate) fn log_filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(tracing_subscriber::EnvFilter::new("info")),
        Some(v) => tracing_subscriber::EnvFilter::builder()
            .parse(v)
            .map_err(|err| {
                format!("RUST_LOG={v:?} is not a log filter ({err}): e.g. debug, or info,tower_webhook=debug")
            }),
    }
}

/// Builds the router and starts the background worker (on the current tokio runtime).
pub(crate) fn build(settings: &Settings) -> Result<App, BoxError> {
    build_with_clock(settings, Clock::system())
}

/// How long a delivery id is remembered at least: a delivery can be sent again by hand from the
/// provider's webhook log that long after it came, GitHub's "Redeliver" taking the deliveries of
/// the last 3 days (7 on GitHub Enterprise Server) with their `X-GitHub-Delivery`. Remembered
/// only 24 h (the layer's default), a delivery whose comment was posted got it again when
/// delivered again a day or more later.
pub(crate) const REDELIVERY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the routes remember a delivery they handled: [`REDELIVERY_WINDOW`], or as long as
/// its comment may still be tried (`COMMENT_MAX_AGE_SECS`) if that is longer, so that a copy
/// that comes meanwhile is not processed a second time.
pub(crate) fn replay_ttl(settings: &Settings) -> Duration {
    REDELIVERY_WINDOW.max(settings.comment_max_age)
}

/// [`build`], with the delivery ids remembered by `clock` (tests pass one they move).
pub(crate) fn build_with_clock(settings: &Settings, clock: Clock) -> Result<App, BoxError> {
    // Every job in the channel is pending, so with at most `max_pending_comments` pending jobs
    // per provider the channel never refuses one for lack of room.
    let (tx, rx) = mpsc::channel(settings.max_pending_comments * Forge::ALL.len());
    let client = api_client()?;
    let mut breakers = BTreeMap::new();
    let mut callers = BTreeMap::new();
    for (&forge, api) in &settings.apis {
        let config = settings.breaker.clone().name(forge.name());
        let (layer, handle) = CircuitBreakerLayer::pair(config)?;
        // A 429 is a rate limit of the token (Bitbucket's lasts up to an hour and names no
        // wait; GitHub's secondary one, a minute): waited out by the comment's job, which holds
        // back the provider's other comments too (see `Hold`), not sent again within two
        // seconds.
        let retry = RetryPolicy::new()
            .max_retries(3)
            .backoff(Duration::from_millis(100), Duration::from_secs(2))
            .no_retry_on_status(StatusCode::TOO_MANY_REQUESTS);
        let svc = ServiceBuilder::new()
            .layer(retry.into_layer())
            .layer(layer)
            .service(client.clone());
        breakers.insert(forge, handle);
        callers.insert(
            forge,
            (api.clone(), tower::util::BoxCloneSyncService::new(svc)),
        );
    }
    let targets = (settings.github_hook.clone().map(HookTarget::Repository))
        .into_iter()
        .chain(settings.github_app.clone().map(HookTarget::App));
    let hook_updaters = match callers.get(&Forge::GitHub) {
        Some((api, caller)) => targets
            .map(|target| HookUpdater {
                target,
                api: api.clone(),
                caller: caller.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    let tokens = settings.github_app.clone().and_then(|app| {
        let (api, caller) = callers.get(&Forge::GitHub)?;
        Some(Arc::new(InstallationTokens::new(
            app,
            api.clone(),
            caller.clone(),
            settings.comments_in_flight_per_provider,
        )))
    });
    // One store per route, as the layer would make by itself, kept to forget a delivery whose
    // comment failed.
    let mut layers = BTreeMap::new();
    let mut replay = BTreeMap::new();
    for (&forge, verification) in &settings.forges {
        let store = Arc::new(MemoryReplayStore::new().clock(clock.clone()));
        let layer = signature_layer(forge, verification)?
            .replay_store(store.clone())
            .replay_ttl(replay_ttl(settings));
        replay.insert(forge, (layer.provider(), store));
        layers.insert(forge, layer);
    }
    let state = Arc::new(AppState {
        counters: Counters::default(),
        breakers,
        jobs: tx,
        pending_by_forge: Forge::ALL
            .into_iter()
            .map(|forge| (forge, AtomicU64::new(0)))
            .collect(),
        max_pending: settings.max_pending_comments as u64,
        max_attempts: settings.comment_max_attempts,
        max_age: settings.comment_max_age,
        idle: tokio::sync::Notify::new(),
        unfinished: Arc::default(),
        draining: watch::Sender::new(false),
        drafts: DraftMemory::new(settings.max_remembered_drafts),
        tokens: tokens.clone(),
        replay,
        own_users: settings.own_users.clone(),
        hooks: std::sync::Mutex::new(Vec::new()),
    });
    tokio::spawn(worker(
        rx,
        Apis {
            callers,
            tokens,
            holds: Holds::default(),
            github_comment_interval: settings.github_comment_interval,
            next_turn: std::sync::Mutex::default(),
        },
        settings.comments_in_flight_per_provider,
        state.clone(),
    ));

    let mut hooks = Router::new();
    for (forge, layer) in layers {
        let layer = layer
            .max_body_size(settings.max_body_bytes)
            .record_delivery(RecordDelivery::AfterSuccess)
            .on_replay(OnReplay::Acknowledge(StatusCode::OK));
        // On the `POST` handler only: another method is answered `405 Method Not Allowed` with
        // `Allow: POST`, not `401` as if it were a delivery badly signed.
        let mut handler = post(move |s, h, hd, b| handle(forge, s, h, hd, b)).route_layer(layer);
        if forge == Forge::BitbucketServer {
            // Before the signature is checked: Bitbucket Data Center's test ping has none.
            handler = handler.route_layer(middleware::from_fn(unsigned_ping));
        }
        let route = Router::new()
            .route(&forge.route(), handler)
            // The layer has already capped the body at MAX_BODY_BYTES; without this, axum's
            // `Bytes` extractor would refuse a verified delivery over its own 2 MB default.
            .layer(DefaultBodyLimit::max(
                usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX),
            ));
        hooks = hooks.merge(route);
    }
    // Every delivery is buffered whole before its signature is checked: at most
    // `max_concurrent_deliveries` of them at once, for all routes together (a global limit:
    // `Router::layer` wraps each route on its own). Past it, 503 + `Retry-After`.
    let hooks = hooks
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    too_many_deliveries(&err)
                }))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    settings.max_concurrent_deliveries,
                )),
        )
        // Around the webhook routes only: a request to a path no provider delivers to is
        // answered 404 by the fallback, and is no delivery.
        .route_layer(middleware::from_fn_with_state(state.clone(), count));

    let x_request_id = HeaderName::from_static("x-request-id");
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/status", get(status))
        .merge(hooks)
        .with_state(state.clone())
        .layer(
            ServiceBuilder::new()
                // Outside the error layer, so that errors raised anywhere inside (a timeout, a
                // panic) are answered and logged with the request id too.
                .layer(SetRequestIdLayer::new(
                    x_request_id.clone(),
                    MakeRequestUuid,
                ))
                .layer(PropagateRequestIdLayer::new(x_request_id))
                // Outside the error layer, so that its lines (an error answered, a body that
                // fails while it streams) are logged inside the request's span. An error the
                // layer answered is logged there, with the request id and its cause: the trace
                // logs only a 5xx that no one logged (see `UnloggedServerErrors`).
                .layer(trace_layer())
                .layer(WebhookErrorLayer::new())
                .layer(tower::timeout::TimeoutLayer::new(settings.request_timeout))
                // A client that stops sending its body gets 408, before the whole request's
                // deadline (504) would end it.
                .layer(RequestBodyTimeoutLayer::new(settings.request_timeout / 2))
                .map_request(|req: Request<TimeoutBody<Body>>| req.map(Body::new)),
        );
    Ok(App {
        router,
        state,
        hook_updaters,
    })
}

/// Which answers `TraceLayer` logs as failed: a 5xx (or an error of the inner service) that the
/// error layer did not log. One that carries a [`Problem`] was rendered by `WebhookErrorLayer`,
/// which logged it at error level with the request id and its cause: a second error line
/// (tower-http's "response failed", without the request id) would count each failure twice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnloggedServerErrors;

/// [`UnloggedServerErrors`] for one request: its id (set by `SetRequestIdLayer`, outside).
#[derive(Clone)]
pub(crate) struct TraceClassifier {
    request_id: Option<HeaderValue>,
}

/// A failure `TraceLayer` logs: what failed, and the id of the request.
pub(crate) struct TraceFailure {
    request_id: Option<HeaderValue>,
    class: ServerErrorsFailureClass,
}

/// tower-http's `TraceLayer` as the server uses it: a failure is logged at error level, with
/// the request id, unless the error layer logged it (see [`UnloggedServerErrors`]).
pub(crate) fn trace_layer() -> TraceLayer<
    UnloggedServerErrors,
    DefaultMakeSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    LogTraceFailure,
> {
    TraceLayer::new(UnloggedServerErrors).on_failure(LogTraceFailure)
}

/// Logs a [`TraceFailure`]: one error line, with the request id, as the error layer's lines
/// have it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogTraceFailure;

impl OnFailure<TraceFailure> for LogTraceFailure {
    fn on_failure(&mut self, failure: TraceFailure, latency: Duration, _: &tracing::Span) {
        let request_id = failure
            .request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
            .unwrap_or("-");
        tracing::error!(
            request_id,
            classification = %failure.class,
            latency_ms = latency.as_millis(),
            "response failed"
        );
    }
}

impl MakeClassifier for UnloggedServerErrors {
    type Classifier = TraceClassifier;
    type FailureClass = TraceFailure;
    type ClassifyEos = NeverClassifyEos<TraceFailure>;

    fn make_classifier<B>(&self, req: &http::Request<B>) -> TraceClassifier {
        TraceClassifier {
            request_id: req.headers().get("x-request-id").cloned(),
        }
    }
}

impl ClassifyResponse for TraceClassifier {
    type FailureClass = TraceFailure;
    type ClassifyEos = NeverClassifyEos<TraceFailure>;

    fn classify_response<B>(
        self,
        res: &http::Response<B>,
    ) -> ClassifiedResponse<TraceFailure, NeverClassifyEos<TraceFailure>> {
        let status = res.status();
        if status.is_server_error() && res.extensions().get::<Problem>().is_none() {
            ClassifiedResponse::Ready(Err(TraceFailure {
                request_id: self.request_id,
                class: ServerErrorsFailureClass::StatusCode(status),
            }))
        } else {
            ClassifiedResponse::Ready(Ok(()))
        }
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> TraceFailure {
        TraceFailure {
            request_id: self.request_id,
            class: ServerErrorsFailureClass::Error(error.to_string()),
        }
    }
}

/// How long a connection to a provider API (TCP and TLS) may take to open. Past it, nothing was
/// sent: the call fails as a connect error, and the comment is tried again later. Without it,
/// an API whose host drops packets (down, or behind a firewall) would run into the whole
/// request's timeout, which cannot tell a request never sent from one the provider may have
/// acted on, and the comment would be given up.
pub(crate) const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client of the provider APIs: a deadline for each request, a shorter one for opening
/// its connection ([`API_CONNECT_TIMEOUT`]), the redirects of [`api_redirect`] only, and TLS
/// trusting the system's roots (a self-hosted instance behind a private CA) and the public ones
/// (an image without a CA bundle still reaches github.com).
pub(crate) fn api_client() -> Result<reqwest::Client, BoxError> {
    // The process's TLS provider, ring (this example builds reqwest without one of its own,
    // `rustls-no-provider`); installed once, and a no-op when one is already there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let public_roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(reqwest::Client::builder()
        .user_agent(concat!("pr-agent-server/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .connect_timeout(API_CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::custom(api_redirect))
        .tls_certs_merge(public_roots)
        .build()?)
}

/// Which redirects of a provider API are followed: a `307` or `308` (the method and the body
/// are kept, as GitHub answers a `POST` to a renamed repository) to the same scheme, host and
/// port, a few at most. Not a `301`, `302` or `303`, after which a client sends a `GET` without
/// the body: the `200` of that listing would be taken for the comment posted. Not one to another
/// origin either, where a GitLab `PRIVATE-TOKEN` would follow. The redirect is the answer then,
/// and the comment is refused with its status (an `*_API_URL` set to `http://` where the server
/// sends clients to `https://`, say).
fn api_redirect(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let keeps_request = matches!(
        attempt.status(),
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
    );
    let same_origin = attempt.previous().last().is_some_and(|previous| {
        let next = attempt.url();
        previous.scheme() == next.scheme()
            && previous.host_str() == next.host_str()
            && previous.port_or_known_default() == next.port_or_known_default()
    });
    if keeps_request && same_origin && attempt.previous().len() <= 5 {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// Binds `settings.addr`, opens `tunnel` when given, and serves the app in the background until
/// `stop` completes (graceful: open requests finish, then the tunnel closes; see [`finish`]).
/// With a tunnel and `GITHUB_HOOK_*`, the GitHub hook is pointed at each URL the tunnel opens at.
pub(crate) async fn start(
    settings: &Settings,
    app: App,
    tunnel: Option<TunnelBuilder>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, BoxError> {
    // The error names the address, not the settings that chose it.
    let mut server = Server::bind(settings.addr)
        .await
        .map_err(|err| {
            format!("{err}: set PORT (and HOST) to an address of this machine that is free")
        })?
        .with_graceful_shutdown(stop);
    let tunnel_opened = tunnel.is_some();
    if let Some(tunnel) = tunnel {
        server = server.tunnel(tunnel);
    }
    if !tunnel_opened && !settings.tunnel_settings.is_empty() {
        tracing::warn!(
            "{} set without --use-tunnel: no tunnel is opened, and they are ignored",
            settings.tunnel_settings.join(", ")
        );
    }
    let running = server.spawn(app.router).await?;
    if let Some(tokens) = app.state.tokens.clone() {
        tokio::spawn(async move { tokens.check().await });
    }
    for updater in app.hook_updaters {
        match running.tunnel_watch() {
            Some(status) => {
                let task = tokio::spawn(updater.follow(status));
                app.state
                    .hooks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task);
            }
            None => tracing::info!(
                hook = %updater.target,
                "GITHUB_HOOK_* and GITHUB_APP_* point hooks at the tunnel, with --use-tunnel only; the hook is left as it is"
            ),
        }
    }
    Ok(running)
}

/// How long the process waits, once the server is done (after [`finish`]), for the work left on
/// its runtime: the tasks are dropped at once, each pending comment logged; work on a blocking
/// thread still running after this is abandoned to the process's exit.
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(1);

/// How long the process waits past [`EXIT_WAIT`] for the runtime's threads to log the comments
/// dropped with their tasks, should there be so many that logging them takes longer.
const EXIT_LOG_WAIT: Duration = Duration::from_secs(10);

/// Comment jobs not yet dropped, done or not: each one not done is logged when it is dropped.
static LIVE_JOBS: AtomicU64 = AtomicU64::new(0);

/// Runs `server` (the whole server, up to [`finish`]) on a new multi-thread tokio runtime, and
/// shuts the runtime down once it is done, within [`EXIT_WAIT`].
///
/// The runtime is not just dropped: that waits for its blocking threads, and a comment whose
/// API host name is being looked up holds one (std's `getaddrinfo`, which nothing can cancel)
/// for as long as the lookup takes, 10 s or more with a name server that does not answer: the
/// process stayed alive that long past `SHUTDOWN_GRACE_SECS`.
pub(crate) fn run_to_exit<F: std::future::Future>(server: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(server);
    runtime.shutdown_timeout(EXIT_WAIT);
    // The comments dropped with their tasks are logged on the runtime's threads: all of them,
    // before the process exits.
    let until = std::time::Instant::now() + EXIT_LOG_WAIT;
    while LIVE_JOBS.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(out)
}

/// The server's stop signals: Ctrl-C and, on Unix, `SIGTERM`, counted from the moment they are
/// listened for.
#[derive(Clone, Debug)]
pub(crate) struct StopSignals(watch::Receiver<u32>);

impl StopSignals {
    /// Listens for the stop signals from now on (on the current tokio runtime).
    pub(crate) fn listen() -> std::io::Result<Self> {
        Ok(Self(shutdown::count_stop_signals()?))
    }

    /// Completes once the `n`th stop signal has come, or at once if it already has; never
    /// when signals can no longer be received.
    pub(crate) fn nth(&self, n: u32) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut count = self.0.clone();
        async move {
            let received = count.wait_for(|count| *count >= n).await.is_ok();
            if !received {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The end of the server started with `signals.nth(1)` ([`start`]): waits until `running` has
/// shut down (open requests answered, at most the server's 10 s drain, then the tunnel closed),
/// then gives the pending comments `grace` to be posted. A second stop signal ends either wait at
/// once: one that comes while the open requests are still being answered stops waiting for them
/// (they are dropped with the runtime, their deliveries unanswered, for the provider to deliver
/// again) and for the pending comments. Returns how many comments are still pending: each one
/// is logged when the runtime goes.
pub(crate) async fn finish(
    running: Running,
    state: &AppState,
    grace: Duration,
    signals: &StopSignals,
) -> u64 {
    let again = signals.nth(2);
    tokio::pin!(again);
    tokio::select! {
        biased;
        () = running.wait() => {}
        () = &mut again => {
            let left = state.counters.pending.load(Ordering::Acquire);
            tracing::error!(
                pending = left,
                "second stop signal: not waiting for the open connections to close, nor for pending comments; each comment left is logged below"
            );
            return left;
        }
    }
    // The tunnel is closed: the hooks that followed it are pointed back meanwhile (within
    // `POINT_BACK_WAIT` in all).
    let hooks = std::mem::take(&mut *state.hooks.lock().unwrap_or_else(|e| e.into_inner()));
    let pointed_back = async {
        let aborts: Vec<_> = hooks.iter().map(|hook| hook.abort_handle()).collect();
        // A second more than a hook's own bound, so that a hook that took it says so first.
        let joined = tokio::time::timeout(POINT_BACK_WAIT + Duration::from_secs(1), async {
            for hook in hooks {
                let _ = hook.await;
            }
        })
        .await;
        if joined.is_err() {
            // An update still on its way when the tunnel closed took the time.
            tracing::error!(
                "a GitHub hook was not pointed back within {} s: set its URL by hand",
                POINT_BACK_WAIT.as_secs()
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    };
    // No delivery comes in any more: the comments of those answered 202 get their chance,
    // unless a second stop signal says not to wait (the grace may be up to an hour). Nothing
    // pending is nothing to stop waiting for, whatever the signals said.
    let drained = async {
        let (left, ()) = tokio::join!(state.drain_comments(grace), pointed_back);
        left
    };
    tokio::select! {
        biased;
        left = drained => {
            if left > 0 {
                tracing::error!(
                    pending = left,
                    "comments still pending after SHUTDOWN_GRACE_SECS ({} s); each is logged below",
                    grace.as_secs()
                );
            }
            left
        }
        () = again => {
            let left = state.counters.pending.load(Ordering::Acquire);
            tracing::error!(
                pending = left,
                "second stop signal: not waiting for pending comments; each is logged below"
            );
            left
        }
    }
}

fn signature_layer(forge: Forge, verification: &Verification) -> Result<SignatureLayer, BoxError> {
    Ok(match (forge, verification) {
        (Forge::GitHub, Verification::Secrets(s)) => {
            SignatureLayer::github_with_secrets(s.clone())?
        }
        (Forge::GitLab, Verification::Secrets(s)) => {
            with_rotation(SignatureLayer::gitlab(s[0].clone())?, s)?
        }
        (Forge::Bitbucket, Verification::Secrets(s)) => {
            with_rotation(SignatureLayer::bitbucket_cloud(s[0].clone())?, s)?
        }
        (Forge::BitbucketServer, Verification::Secrets(s)) => {
            with_rotation(SignatureLayer::bitbucket_data_center(s[0].clone())?, s)?
        }
        (Forge::Gitea, Verification::Secrets(s)) => {
            with_rotation(SignatureLayer::gitea(s[0].clone())?, s)?
        }
        (
            Forge::AzureDevOps,
            Verification::Basic {
                username,
                passwords,
            },
        ) => {
            let mut layer = SignatureLayer::azure_devops(username, passwords[0].clone())?;
            for extra in &passwords[1..] {
                // An Azure DevOps secret is the whole `user:password` credential.
                layer = layer.secret(format!("{username}:{extra}"))?;
            }
            layer
        }
        (forge, v) => return Err(format!("{} cannot be verified with {v:?}", forge.name()).into()),
    })
}

/// The answer to a delivery refused because `MAX_CONCURRENT_DELIVERIES` are being read.
fn too_many_deliveries(err: &BoxError) -> Problem {
    if !err.is::<tower::load_shed::error::Overloaded>() {
        // Nothing else fails in these layers; answered as the error layer would.
        tracing::error!(error = %err, "webhook route failed");
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR);
    }
    tracing::warn!("MAX_CONCURRENT_DELIVERIES deliveries are being read: one refused");
    Problem::from_error(&WebhookProcessingError::retryable(
        "too many deliveries at once",
        Duration::from_secs(5),
    ))
    .with_detail("too many deliveries are being read at once; deliver again later")
}

/// Adds the second and later secrets of a rotation.
fn with_rotation(
    mut layer: SignatureLayer,
    secrets: &[String],
) -> Result<SignatureLayer, BoxError> {
    for extra in &secrets[1..] {
        layer = layer.secret(extra.clone())?;
    }
    Ok(layer)
}

/// Counts what the webhook routes answered to deliveries (`POST`s): 202 accepted, 200 duplicate
/// (acknowledged by the signature layer without calling the handler), 4xx rejected. A request
/// with another method (answered 405), or an unsigned test ping ([`unsigned_ping`], which
/// anyone can send), is no delivery.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let delivery = req.method() == Method::POST;
    let res = next.run(req).await;
    if !delivery || res.extensions().get::<UnsignedPing>().is_some() {
        return res;
    }
    let counter = match res.status() {
        StatusCode::ACCEPTED => &state.counters.accepted,
        StatusCode::OK => &state.counters.duplicates,
        s if s.is_client_error() => &state.counters.rejected,
        _ => return res,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    res
}

/// Marks the answer to an unsigned test ping: not verified, it is not counted as a delivery.
#[derive(Clone, Copy, Debug)]
struct UnsignedPing;

/// Bitbucket Data Center's "Test connection" sends `X-Event-Key: diagnostics:ping` without
/// `X-Hub-Signature`, even when the webhook has a secret: such a ping is answered `202` at once,
/// and does nothing (nor counts in `/status`). A ping that is signed, and every other delivery,
/// is verified as usual.
async fn unsigned_ping(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let mut events = headers.get_all("x-event-key").iter();
    let ping = matches!(
        (events.next(), events.next()),
        (Some(event), None) if event.as_bytes().trim_ascii() == b"diagnostics:ping"
    );
    if ping && !headers.contains_key("x-hub-signature") {
        tracing::debug!(
            provider = Forge::BitbucketServer.name(),
            "unsigned test connection ping answered"
        );
        let mut res = StatusCode::ACCEPTED.into_response();
        res.extensions_mut().insert(UnsignedPing);
        return res;
    }
    next.run(req).await
}

/// Answers a verified delivery at once: 202, and a comment job when it opened a pull request.
async fn handle(
    forge: Forge,
    State(state): State<Arc<AppState>>,
    hook: VerifiedWebhook,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Problem> {
    let malformed = || {
        Problem::new(StatusCode::BAD_REQUEST)
            .with_type(types::MALFORMED_DELIVERY)
            .with_title("Malformed Delivery")
            .with_detail("The body is not JSON.")
    };
    // GitHub and Gitea can deliver `application/x-www-form-urlencoded`: the JSON is the
    // `payload` field (GitHub's API creates hooks with this content type by default).
    let is_form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let payload: Value = if is_form {
        let (_, json) = form_urlencoded::parse(&body)
            .find(|(name, _)| name == "payload")
            .ok_or_else(malformed)?;
        serde_json::from_str(&json).map_err(|_| malformed())?
    } else {
        serde_json::from_slice(&body).map_err(|_| malformed())?
    };
    let event = hook.event().map(str::to_owned).or_else(|| {
        headers
            .get("x-event-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let delivery = hook.delivery_id().unwrap_or("-").to_owned();
    if forge == Forge::GitHub && event.as_deref() == Some("installation") {
        installation_event(&state, &payload, &delivery);
    }
    if forge == Forge::AzureDevOps && azure_devops_test(&payload) {
        tracing::info!(provider = forge.name(), ?event, %delivery, "test notification: no comment");
        return Ok(StatusCode::ACCEPTED);
    }
    let found = state
        .drafts
        .comment_for(forge, event.as_deref(), &delivery, &payload);
    // After the drafts' memory has seen the pull request in it, as in any event.
    let own = state.own_users.get(&forge);
    if own.is_some_and(|user| comment_by(forge, event.as_deref(), &payload, user)) {
        if let Some((_, Some(draft))) = found {
            state.drafts.put_back(draft, None);
        }
        tracing::debug!(provider = forge.name(), ?event, %delivery, "the server's own comment: no answer");
        return Ok(StatusCode::ACCEPTED);
    }
    let Some((comment, draft)) = found else {
        tracing::debug!(provider = forge.name(), ?event, %delivery, "delivery needs no comment");
        return Ok(StatusCode::ACCEPTED);
    };
    let installation = match forge {
        Forge::GitHub => payload["installation"]["id"].as_u64(),
        _ => None,
    };
    let job = Job {
        forge,
        delivery,
        comment,
        installation,
        attempts: 0,
        limits: 0,
        accepted_at: tokio::time::Instant::now(),
        draft: draft.clone(),
    };
    // A job stays pending until it is done, including while it waits to be tried again, so
    // the bound holds while the provider API is down; each provider has its own, so that one
    // down for hours does not get the others' deliveries refused. Counted before it is queued:
    // the worker may finish it before `try_send` returns.
    let pending = &state.pending_by_forge[&forge];
    let queue_full = || {
        // A provider that retries delivers again later (GitHub does not: its delivery log shows
        // the 503, to redeliver from); the delivery id is released because the answer is not
        // 2xx (RecordDelivery::AfterSuccess). A draft published is remembered again,
        // for that delivery to get its comment.
        if let Some(draft) = draft.clone() {
            state.drafts.put_back(draft, None);
        }
        Problem::from_error(&WebhookProcessingError::retryable(
            "comment queue is full",
            Duration::from_secs(30),
        ))
        // For the provider's delivery log and ours (the error layer logs a problem's detail).
        .with_detail("the comment queue is full; deliver again later")
    };
    if pending
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < state.max_pending).then_some(n + 1)
        })
        .is_err()
    {
        return Err(queue_full());
    }
    state.counters.pending.fetch_add(1, Ordering::AcqRel);
    match state.jobs.try_send(Unfinished::new(job, &state.unfinished)) {
        Ok(()) => {
            state.counters.jobs.fetch_add(1, Ordering::Relaxed);
            Ok(StatusCode::ACCEPTED)
        }
        Err(refused) => {
            // Answered 503, which the provider's delivery log shows: nothing to log here.
            let mut refused = refused.into_inner();
            refused.done = true;
            state.finish_pending(forge);
            Err(queue_full())
        }
    }
}

/// A GitHub App's `installation` event: a suspended or uninstalled installation's token is
/// dropped at once, and its pending comments are given up without asking for another.
fn installation_event(state: &AppState, payload: &Value, delivery: &str) {
    let (Some(tokens), Some(id), Some(action)) = (
        &state.tokens,
        payload["installation"]["id"].as_u64(),
        payload["action"].as_str(),
    ) else {
        return;
    };
    match tokens.installation_event(id, action) {
        Some(InstallationChange::Gone(gone)) => {
            tracing::info!(installation = id, %delivery, "GitHub App installation {gone}: its token is dropped and its comments are given up");
        }
        Some(InstallationChange::Back) => {
            tracing::info!(installation = id, %delivery, "GitHub App installation unsuspended: its comments fetch a token again");
        }
        Some(InstallationChange::NewPermissions) => {
            tracing::info!(installation = id, %delivery, "GitHub App installation accepted new permissions: its next comment fetches a token that carries them");
        }
        None => {}
    }
}

/// Whether a Gitea / Forgejo title marks a draft, by their default `WORK_IN_PROGRESS_PREFIXES`
/// (`WIP:` and `[WIP]`, in any case).
fn gitea_work_in_progress(title: &str) -> bool {
    ["WIP:", "[WIP]"].iter().any(|prefix| {
        title
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    })
}

/// Whether a GitLab title marks a draft: it starts with `Draft:`, `[Draft]` or `(Draft)`, in
/// any case. Not `WIP:`, `[WIP]` or `Draft - `: GitLab 14.0 dropped them, so on a current
/// server a rename that drops one publishes no draft (and names no `changes.draft`).
fn gitlab_draft_title(title: &str) -> bool {
    let title = title.trim_start();
    ["draft:", "[draft]", "(draft)"].iter().any(|prefix| {
        title
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    })
}

/// The comment a delivery asks for by itself, if any (see the module docs of `main.rs` for the
/// events of each provider; [`DraftMemory::comment_for`] adds the drafts published that only a
/// memory of the drafts seen can tell):
/// - one when a pull request becomes ready for review, that is opened or reopened while not a
///   draft, or a draft marked ready; drafts, edits, new commits, closes and merges get none;
/// - an answer to a command (`/review`, `/ask ...`) in a new comment on a pull request.
pub(crate) fn comment_for(forge: Forge, event: Option<&str>, p: &Value) -> Option<Comment> {
    ready_for_review(forge, event, p).or_else(|| command(forge, event, p))
}

/// `true` only when the payload says so: older servers send no draft field, and a missing
/// `system` or `bot` flag is a person's.
fn flag(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// The comment on a pull request that became ready for review.
fn ready_for_review(forge: Forge, event: Option<&str>, p: &Value) -> Option<Comment> {
    let text = ready_text;
    let draft = flag;
    match forge {
        Forge::GitHub => {
            let pr = &p["pull_request"];
            let ready = match p["action"].as_str()? {
                "opened" | "reopened" => !draft(&pr["draft"]),
                "ready_for_review" => true,
                _ => false,
            };
            if event != Some("pull_request") || !ready {
                return None;
            }
            let repo = p["repository"]["full_name"].as_str()?;
            let number = pr["number"].as_u64().or_else(|| p["number"].as_u64())?;
            issue_comment(repo, number, text(pr["title"].as_str().unwrap_or("")))
        }
        Forge::GitLab => {
            let attrs = &p["object_attributes"];
            let ready = match attrs["action"].as_str()? {
                // Opened or reopened, it is `opened`. GitLab's "Test" button sends the newest
                // merge request as an `open` whatever its state, a merged one too.
                "open" | "reopen" => {
                    !draft(&attrs["draft"])
                        && !draft(&attrs["work_in_progress"])
                        && attrs["state"]
                            .as_str()
                            .is_none_or(|state| state == "opened")
                }
                // "Mark as ready": an update whose changes take `draft` from true to false.
                // Servers before 16.3 do not name `draft` in the changes: the title loses its
                // draft prefix (or, on some, `work_in_progress` goes from true to false).
                "update" => {
                    let changes = &p["changes"];
                    let cleared = |change: &Value| {
                        draft(&change["previous"]) && change["current"].as_bool() == Some(false)
                    };
                    let published = if changes["draft"].is_object() {
                        cleared(&changes["draft"])
                    } else if changes["work_in_progress"].is_object() {
                        cleared(&changes["work_in_progress"])
                    } else {
                        let title = &changes["title"];
                        title["previous"].as_str().is_some_and(gitlab_draft_title)
                            && title["current"]
                                .as_str()
                                .is_some_and(|current| !gitlab_draft_title(current))
                    };
                    published
                        && !draft(&attrs["draft"])
                        && !draft(&attrs["work_in_progress"])
                        // Not a closed or merged one renamed.
                        && attrs["state"].as_str().is_none_or(|state| state == "opened")
                }
                _ => false,
            };
            if p["object_kind"].as_str()? != "merge_request" || !ready {
                return None;
            }
            let project = p["project"]["id"].as_u64()?;
            let iid = attrs["iid"].as_u64()?;
            Some(gitlab_note(
                project,
                iid,
                text(attrs["title"].as_str().unwrap_or("")),
            ))
        }
        Forge::Bitbucket => {
            let pr = &p["pullrequest"];
            if event != Some("pullrequest:created") || draft(&pr["draft"]) {
                return None;
            }
            bitbucket_comment(p, text(pr["title"].as_str().unwrap_or("")), None)
        }
        Forge::BitbucketServer => {
            let pr = &p["pullRequest"];
            // Data Center, unlike Cloud, reopens a declined pull request, but its list of
            // webhook events names no reopen: `pr:reopened` is taken should one come.
            if !matches!(event, Some("pr:opened" | "pr:reopened")) || draft(&pr["draft"]) {
                return None;
            }
            bitbucket_server_comment(pr, text(pr["title"].as_str().unwrap_or("")), None)
        }
        Forge::Gitea => {
            let pr = &p["pull_request"];
            let title = pr["title"].as_str().unwrap_or("");
            let ready = match p["action"].as_str()? {
                // Servers before `draft` was part of the payload say it by the title only.
                "opened" | "reopened" => !draft(&pr["draft"]) && !gitea_work_in_progress(title),
                // Gitea marks a draft by its title's prefix: "mark as ready" is an edit whose
                // old title had one and whose new title has none.
                "edited" => {
                    p["changes"]["title"]["from"]
                        .as_str()
                        .is_some_and(gitea_work_in_progress)
                        && !gitea_work_in_progress(title)
                        && !draft(&pr["draft"])
                        // Not a closed or merged one renamed.
                        && pr["state"].as_str().is_none_or(|state| state == "open")
                }
                _ => false,
            };
            if event != Some("pull_request") || !ready {
                return None;
            }
            let repo = p["repository"]["full_name"].as_str()?;
            let number = p["number"].as_u64().or_else(|| pr["number"].as_u64())?;
            issue_comment(repo, number, text(title))
        }
        Forge::AzureDevOps => {
            let r = &p["resource"];
            if p["eventType"].as_str()? != "git.pullrequest.created" || draft(&r["isDraft"]) {
                return None;
            }
            azure_devops_thread(r, text(r["title"].as_str().unwrap_or("")))
        }
    }
}

/// The comment on a pull request titled `title` that became ready for review.
fn ready_text(title: &str) -> String {
    let title = without_mentions(title);
    format!("Thanks for the pull request! Review of \"{title}\" is queued.")
}

/// `text` (a title, a question) to quote in a comment, its mentions made inert: a zero-width
/// space after each `@` that could start one. A mention in a pull request's title notifies
/// nobody, but the same `@team`, or GitLab's `@all`, in a comment would; the text reads the
/// same.
///
/// An `@` after a letter, digit or `_` (an e-mail address) starts no mention, nor one in a code
/// span or in a link (`https://`, `http://`, `www.`), where the providers look for none: those
/// are left as they are, so that code copied from the comment, or the link's address, holds
/// no zero-width space. A backtick that closes no code span opens none.
fn without_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut previous: Option<char> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        // A code span: a run of backticks up to the next run of the same length.
        if c == '`' {
            let run = rest.len() - rest.trim_start_matches('`').len();
            if let Some(end) = closing_backticks(&rest[run..], run) {
                let span = run + end + run;
                out.push_str(&rest[..span]);
                previous = Some('`');
                rest = &rest[span..];
                continue;
            }
            out.push_str(&rest[..run]);
            previous = Some('`');
            rest = &rest[run..];
            continue;
        }
        // A link, autolinked where it starts a word: up to the next space or `<`.
        if previous.is_none_or(|p| p.is_whitespace() || "*_~(\"'".contains(p)) && starts_link(rest)
        {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '<')
                .unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            previous = rest[..end].chars().next_back();
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        if c == '@' && !previous.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_') {
            out.push('\u{200B}');
        }
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Where in `text` the first run of exactly `n` backticks starts, if any.
fn closing_backticks(text: &str, n: usize) -> Option<usize> {
    let mut at = 0;
    while let Some(found) = text[at..].find('`') {
        let start = at + found;
        let len = text[start..].len() - text[start..].trim_start_matches('`').len();
        if len == n {
            return Some(start);
        }
        at = start + len;
    }
    None
}

/// Whether `text` starts with a link the providers turn into one by themselves: the prefix,
/// then a host name (not `https://@all`, which no provider links).
fn starts_link(text: &str) -> bool {
    ["https://", "http://", "www."].iter().any(|prefix| {
        text.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
            && text[prefix.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// The comment on a Bitbucket Cloud, Bitbucket Data Center or Azure DevOps pull request that
/// the memory of drafts ([`DraftMemory`]) tells was published.
fn draft_published(forge: Forge, p: &Value) -> Option<Comment> {
    let title = |pr: &Value| ready_text(pr["title"].as_str().unwrap_or(""));
    match forge {
        Forge::Bitbucket => bitbucket_comment(p, title(&p["pullrequest"]), None),
        Forge::BitbucketServer => {
            let pr = &p["pullRequest"];
            bitbucket_server_comment(pr, title(pr), None)
        }
        Forge::AzureDevOps => azure_devops_thread(&p["resource"], title(&p["resource"])),
        _ => None,
    }
}

/// The commands a comment can give, by PR-Agent's names.
pub(crate) const COMMANDS: &str = "`/review`, `/describe`, `/improve`, `/ask <question>`, `/help`";

/// The longest question quoted back in the answer to `/ask`, in characters.
const QUESTION_QUOTED_MAX: usize = 200;

/// The answer to the command a comment gives, if it gives one: its first non-blank line is
/// `/name`, then arguments. Other comments, and unknown commands (GitLab's own quick actions,
/// other bots'), get none.
///
/// No answer starts with `/`, so the server never answers its own comments, whatever the
/// provider says about who wrote them.
pub(crate) fn answer_to_command(comment: &str, title: &str) -> Option<String> {
    let line = comment
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())?;
    let rest = line.strip_prefix('/')?;
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((name, args)) => (name, args.trim()),
        None => (rest, ""),
    };
    let title = without_mentions(title);
    Some(match name {
        "review" | "describe" | "improve" => format!("Queued `/{name}` of \"{title}\"."),
        "ask" if args.is_empty() => {
            "A question is missing: `/ask Why is this lock needed?`".to_owned()
        }
        "ask" => {
            let question: String = args.chars().take(QUESTION_QUOTED_MAX).collect();
            let cut = if question.len() < args.len() {
                "..."
            } else {
                ""
            };
            let question = without_mentions(&question);
            format!("Queued `/ask` about \"{title}\":\n\n> {question}{cut}")
        }
        "help" => format!("Commands: {COMMANDS}."),
        _ => return None,
    })
}

/// The answer to a command in a new comment on a pull request, if the delivery is one.
/// Comments on issues, edited or deleted ones, and those by bots or the provider itself
/// (system notes) get none.
fn command(forge: Forge, event: Option<&str>, p: &Value) -> Option<Comment> {
    match forge {
        Forge::GitHub | Forge::Gitea => {
            let (issue, comment) = (&p["issue"], &p["comment"]);
            // GitHub marks a pull request's issue with `pull_request`; Gitea also says `is_pull`.
            let on_pull_request = issue["pull_request"].is_object() || flag(&p["is_pull"]);
            let by_bot = comment["user"]["type"] == "Bot" || p["sender"]["type"] == "Bot";
            if event != Some("issue_comment")
                || p["action"] != "created"
                || !on_pull_request
                || by_bot
            {
                return None;
            }
            let title = issue["title"].as_str().unwrap_or("");
            let answer = answer_to_command(comment["body"].as_str()?, title)?;
            let repo = p["repository"]["full_name"].as_str()?;
            issue_comment(repo, issue["number"].as_u64()?, answer)
        }
        Forge::GitLab => {
            let (attrs, mr) = (&p["object_attributes"], &p["merge_request"]);
            if p["object_kind"] != "note"
                || attrs["noteable_type"] != "MergeRequest"
                || flag(&attrs["system"])
                || gitlab_bot(&p["user"])
                // Newer servers say `create` or `update`; older ones send new notes only.
                || attrs["action"].as_str().is_some_and(|action| action != "create")
                // A note told by someone else than its author: GitLab's "Test" of comment
                // events sends the project's newest note again as if just written by whoever
                // clicked Test, and an old command would be answered again.
                || matches!(
                    (p["user"]["id"].as_u64(), attrs["author_id"].as_u64()),
                    (Some(user), Some(author)) if user != author
                )
            {
                return None;
            }
            let answer =
                answer_to_command(attrs["note"].as_str()?, mr["title"].as_str().unwrap_or(""))?;
            let project = p["project_id"]
                .as_u64()
                .or_else(|| p["project"]["id"].as_u64())?;
            let mut note = gitlab_note(project, mr["iid"].as_u64()?, answer);
            // An internal note (a "Confidential Note Hook", flagged `internal`, or `confidential`
            // by its older name) is answered with one: the answer quotes the question, which
            // people who may not read internal notes would read in a public one.
            if flag(&attrs["internal"]) || flag(&attrs["confidential"]) {
                note.body["internal"] = json!(true);
            }
            Some(note)
        }
        Forge::Bitbucket => {
            let (pr, comment) = (&p["pullrequest"], &p["comment"]);
            if event != Some("pullrequest:comment_created") || p["actor"]["type"] == "app_user" {
                return None;
            }
            let answer = answer_to_command(
                comment["content"]["raw"].as_str()?,
                pr["title"].as_str().unwrap_or(""),
            )?;
            bitbucket_comment(p, answer, comment["id"].as_u64())
        }
        Forge::BitbucketServer => {
            let (pr, comment) = (&p["pullRequest"], &p["comment"]);
            if event != Some("pr:comment:added") {
                return None;
            }
            let answer = answer_to_command(
                comment["text"].as_str()?,
                pr["title"].as_str().unwrap_or(""),
            )?;
            bitbucket_server_comment(pr, answer, comment["id"].as_u64())
        }
        Forge::AzureDevOps => {
            let (pr, comment) = (&p["resource"]["pullRequest"], &p["resource"]["comment"]);
            if p["eventType"] != "ms.vss-code.git-pullrequest-comment-event"
                || comment["commentType"] == "system"
                || flag(&comment["isDeleted"])
                || azure_devops_edited(comment)
            {
                return None;
            }
            let answer = answer_to_command(
                comment["content"].as_str()?,
                pr["title"].as_str().unwrap_or(""),
            )?;
            // A reply in a thread is answered in that thread; a comment that starts one
            // (`parentCommentId` 0) in a new thread, as the others.
            let reply = comment["parentCommentId"]
                .as_u64()
                .is_some_and(|id| id != 0);
            match (
                reply,
                azure_devops_thread_id(comment),
                comment["id"].as_u64(),
            ) {
                (true, Some(thread), Some(id)) => azure_devops_reply(pr, thread, id, answer),
                _ => azure_devops_thread(pr, answer),
            }
        }
    }
}

/// Whether the `user` of a GitLab delivery is a bot. GitLab's payloads carry no flag for it (a
/// `bot` one is taken if present), but its bot users have usernames no person can have: a
/// project or group access token's is `project_{id}_bot` or `group_{id}_bot`, followed by a
/// number or by `_` and a random suffix (by GitLab version), and a service account's starts with
/// `service_account_`.
fn gitlab_bot(user: &Value) -> bool {
    let username = user["username"].as_str().unwrap_or_default();
    let access_token_bot = ["project_", "group_"].iter().any(|kind| {
        username.strip_prefix(kind).is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let Some(suffix) = rest[digits..].strip_prefix("_bot") else {
                return false;
            };
            let number = suffix.bytes().all(|b| b.is_ascii_digit());
            let random = suffix.strip_prefix('_').is_some_and(|random| {
                !random.is_empty() && random.bytes().all(|b| b.is_ascii_alphanumeric())
            });
            digits > 0 && (number || random)
        })
    });
    flag(&user["bot"]) || access_token_bot || username.starts_with("service_account_")
}

/// Whether delivery `p` is a new comment by `user`, the user the server comments as: Bitbucket
/// Data Center's `pr:comment:added` whose `actor` or `comment.author` has that `name` or `slug`,
/// Azure DevOps' `ms.vss-code.git-pullrequest-comment-event` whose `resource.comment.author`
/// has that `uniqueName` or `id`. Neither flags a comment posted through the API, and the
/// server's own comments come back as deliveries. User names are compared without case, as
/// both providers take them.
fn comment_by(forge: Forge, event: Option<&str>, p: &Value, user: &str) -> bool {
    let is = |v: &Value| v.as_str().is_some_and(|v| v.eq_ignore_ascii_case(user));
    match forge {
        Forge::BitbucketServer => {
            event == Some("pr:comment:added")
                && [&p["actor"], &p["comment"]["author"]]
                    .iter()
                    .any(|who| is(&who["name"]) || is(&who["slug"]))
        }
        Forge::AzureDevOps => {
            let author = &p["resource"]["comment"]["author"];
            p["eventType"] == "ms.vss-code.git-pullrequest-comment-event"
                && (is(&author["uniqueName"]) || is(&author["id"]))
        }
        _ => false,
    }
}

/// The id of the thread of an Azure DevOps pull request comment, from its links:
/// `_links.threads.href` (`.../pullRequests/{id}/threads/{threadId}`) or `_links.self.href`
/// (`.../threads/{threadId}/comments/{commentId}`).
fn azure_devops_thread_id(comment: &Value) -> Option<u64> {
    ["threads", "self"].iter().find_map(|link| {
        let href = comment["_links"][link]["href"].as_str()?;
        let (_, rest) = href.rsplit_once("/threads/")?;
        rest.split(['/', '?', '#']).next()?.parse().ok()
    })
}

/// Whether an Azure DevOps delivery is the "Test" of a service hook's dialog: a sample event
/// (Jamal Hartnett's pull request in the Fabrikam project). Some carry a subscription id of all
/// zeros, which no subscription has; others the id of the subscription being saved, so the
/// sample's repository (`Fabrikam-Fiber-Git`, whose id no organization's repository has) tells
/// them too.
fn azure_devops_test(payload: &Value) -> bool {
    const SAMPLE_REPOSITORY: &str = "4bc14d40-c903-45e2-872e-0462c7748079";
    let zeros = payload["subscriptionId"]
        .as_str()
        .is_some_and(|id| id.contains('0') && id.bytes().all(|b| b == b'0' || b == b'-'));
    let resource = &payload["resource"];
    let repository = resource["repository"]["id"]
        .as_str()
        .or_else(|| resource["pullRequest"]["repository"]["id"].as_str());
    zeros || repository.is_some_and(|id| id.eq_ignore_ascii_case(SAMPLE_REPOSITORY))
}

/// Whether an Azure DevOps pull request comment was edited. The service sends the same event
/// for a new comment and for an edited one; an edited one's `lastContentUpdatedDate` is later
/// than its `publishedDate` (a new one's are the same, give or take the second they straddle).
fn azure_devops_edited(comment: &Value) -> bool {
    // `2024-06-17T16:58:33.123889Z`: the whole seconds, in UTC.
    let second = |field: &str| {
        let text = comment[field].as_str()?;
        github_app::parse_github_time(&format!("{}Z", text.get(..19)?))
    };
    match (second("publishedDate"), second("lastContentUpdatedDate")) {
        (Some(published), Some(changed)) => {
            changed.duration_since(published).unwrap_or_default() > Duration::from_secs(1)
        }
        _ => false,
    }
}

/// `value`, a name a delivery gives an owner, repository, project or workspace, if it can go
/// into an API path as it is: ASCII letters, digits, `.`, `_`, `-` and `~` (Bitbucket Data
/// Center's personal projects), and neither `.` nor `..`. Every provider's names are such names
/// (its ids too: GUIDs for Azure DevOps). Anything else, `../../admin` or `a#` say, which the URL
/// parser would resolve or cut into a request on another path, no provider sends: whoever has the
/// webhook's secret can sign it, though, so such a delivery gets no comment, and a warning.
fn path_name<'a>(what: &str, value: &'a str) -> Option<&'a str> {
    let plain = !value.is_empty()
        && value.len() <= 256
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'));
    if !plain {
        tracing::warn!(
            name = what,
            "a signed delivery names {what} no provider would (not a plain name): no comment"
        );
    }
    plain.then_some(value)
}

/// A repository's `owner/name`, as GitHub, Gitea and Bitbucket Cloud give it (`full_name`), if
/// both parts are [plain names](path_name).
fn repository_path(full_name: &str) -> Option<&str> {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, ""));
    path_name("a repository", owner)?;
    path_name("a repository", name)?;
    Some(full_name)
}

/// A comment on a GitHub or Gitea pull request (their API posts it as an issue comment).
fn issue_comment(repo: &str, number: u64, text: String) -> Option<Comment> {
    let repo = repository_path(repo)?;
    Some(Comment {
        path: format!("/repos/{repo}/issues/{number}/comments"),
        body: json!({ "body": text }),
        target: format!("{repo}#{number}"),
    })
}

/// A note on a GitLab merge request.
fn gitlab_note(project: u64, iid: u64, text: String) -> Comment {
    Comment {
        path: format!("/projects/{project}/merge_requests/{iid}/notes"),
        body: json!({ "body": text }),
        target: format!("project {project}!{iid}"),
    }
}

/// A comment on the Bitbucket Cloud pull request of delivery `p`, a reply to `parent` if given.
fn bitbucket_comment(p: &Value, text: String, parent: Option<u64>) -> Option<Comment> {
    let repo = repository_path(p["repository"]["full_name"].as_str()?)?;
    let id = p["pullrequest"]["id"].as_u64()?;
    let mut body = json!({ "content": { "raw": text } });
    if let Some(parent) = parent {
        body["parent"] = json!({ "id": parent });
    }
    Some(Comment {
        path: format!("/repositories/{repo}/pullrequests/{id}/comments"),
        body,
        target: format!("{repo}#{id}"),
    })
}

/// A comment on Bitbucket Data Center pull request `pr`, a reply to `parent` if given.
fn bitbucket_server_comment(pr: &Value, text: String, parent: Option<u64>) -> Option<Comment> {
    // The pull request lives in its target repository.
    let repo = &pr["toRef"]["repository"];
    let project = path_name("a project", repo["project"]["key"].as_str()?)?;
    let slug = path_name("a repository", repo["slug"].as_str()?)?;
    let id = pr["id"].as_u64()?;
    let mut body = json!({ "text": text });
    if let Some(parent) = parent {
        body["parent"] = json!({ "id": parent });
    }
    Some(Comment {
        path: format!("/rest/api/1.0/projects/{project}/repos/{slug}/pull-requests/{id}/comments"),
        body,
        target: format!("{project}/{slug}#{id}"),
    })
}

/// The project, repository and id of Azure DevOps pull request `pr`, for the API's paths.
fn azure_devops_pull_request(pr: &Value) -> Option<(&str, &str, u64)> {
    let project = path_name("a project", pr["repository"]["project"]["id"].as_str()?)?;
    let repo = path_name("a repository", pr["repository"]["id"].as_str()?)?;
    Some((project, repo, pr["pullRequestId"].as_u64()?))
}

/// A new comment thread on Azure DevOps pull request `pr`, created closed: an active thread
/// would have to be resolved by hand before a pull request under the branch policy "Check for
/// comment resolution" could be completed, which nothing the server says calls for.
fn azure_devops_thread(pr: &Value, text: String) -> Option<Comment> {
    let (project, repo, id) = azure_devops_pull_request(pr)?;
    Some(Comment {
        // 5.0, the newest version Azure DevOps Server 2019 takes (2020 takes 6.0, 2022 7.0);
        // the service takes them all.
        path: format!(
            "/{project}/_apis/git/repositories/{repo}/pullRequests/{id}/threads?api-version=5.0"
        ),
        // `commentType` 1 is `text`; `status` 4 is `closed` (1 would be `active`).
        body: json!({
            "comments": [{ "parentCommentId": 0, "content": text, "commentType": 1 }],
            "status": 4,
        }),
        target: format!("{repo}!{id}"),
    })
}

/// A reply to comment `parent` in thread `thread` of Azure DevOps pull request `pr`. The
/// thread's status is left as it is.
fn azure_devops_reply(pr: &Value, thread: u64, parent: u64, text: String) -> Option<Comment> {
    let (project, repo, id) = azure_devops_pull_request(pr)?;
    Some(Comment {
        // The API version of `azure_devops_thread`.
        path: format!(
            "/{project}/_apis/git/repositories/{repo}/pullRequests/{id}/threads/{thread}/comments?api-version=5.0"
        ),
        // `commentType` 1 is `text`.
        body: json!({ "parentCommentId": parent, "content": text, "commentType": 1 }),
        target: format!("{repo}!{id}"),
    })
}

/// `GET /status`: breakers and counters as JSON.
async fn status(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let c = &state.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let breakers: BTreeMap<&str, _> = state
        .breakers
        .iter()
        .map(|(forge, handle)| (forge.name(), handle.snapshot()))
        .collect();
    Json(json!({
        "deliveries": {
            "accepted": get(&c.accepted),
            "rejected": get(&c.rejected),
            "duplicates": get(&c.duplicates),
        },
        "comments": {
            "jobs": get(&c.jobs),
            "posted": get(&c.comments_posted),
            "logged": get(&c.comments_logged),
            "failed": get(&c.comments_failed),
            "retries": get(&c.comment_retries),
            "pending": get(&c.pending),
        },
        "breakers": breakers,
    }))
}

type Caller = tower::util::BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

/// Posts comments in the background, at most `COMMENTS_IN_FLIGHT_PER_PROVIDER` at once per
/// provider. A comment refused transiently (upstream 503, 429 or 408 after retries, no
/// connection made, open breaker) is tried again after the provider's or the breaker's delay or a
/// capped backoff: comments are not lost, and an upstream that is down is not stormed. One whose
/// failure may have come after the provider created it (another 5xx, a timeout, a connection
/// lost once sent) is given up at once rather than posted twice. One that still
/// fails after `COMMENT_MAX_ATTEMPTS` attempts, or would be tried again more than
/// `COMMENT_MAX_AGE_SECS` after its delivery, is given up and counted as failed.
async fn worker(
    mut rx: mpsc::Receiver<Unfinished>,
    apis: Apis,
    in_flight_per_provider: usize,
    state: Arc<AppState>,
) {
    let apis = Arc::new(apis);
    let slots: BTreeMap<Forge, Arc<Semaphore>> = Forge::ALL
        .into_iter()
        .map(|forge| (forge, Arc::new(Semaphore::new(in_flight_per_provider))))
        .collect();
    // Every job gets its own task at once and waits for a slot of its provider there, so a
    // provider whose slots are all taken never holds up the jobs of another. There are at most
    // `MAX_PENDING_COMMENTS` such tasks per provider: each one is a pending job.
    while let Some(job) = rx.recv().await {
        let slots = slots[&job.job.forge].clone();
        tokio::spawn(run_job(job, slots, apis.clone(), state.clone()));
    }
}

/// Posts one comment until it is done or given up.
async fn run_job(
    mut run: Unfinished,
    slots: Arc<Semaphore>,
    apis: Arc<Apis>,
    state: Arc<AppState>,
) {
    let counters = &state.counters;
    let job = &mut run.job;
    let mut draining = state.draining.subscribe();
    // Whether the shutdown already cut a backoff of this job short: once is enough.
    let mut woken = false;
    // Waits asked of a comment hold back those sent with the same credential.
    let hold = apis.hold(
        job.forge,
        job.installation.filter(|_| apis.tokens.is_some()),
    );
    let spaced = job.forge == Forge::GitHub
        && !apis.github_comment_interval.is_zero()
        && apis.callers.contains_key(&Forge::GitHub);
    // When the last attempt (a token request, a comment) was sent.
    let mut sent: tokio::time::Instant;
    'run: loop {
        // Held back by a wait the provider asked of another comment: not an attempt.
        if let Some(left) = hold.left() {
            if job.accepted_at.elapsed().saturating_add(left) > state.max_age {
                give_up(
                    &state,
                    job,
                    "its provider asks to wait past COMMENT_MAX_AGE_SECS",
                )
                .await;
                break;
            }
            tokio::time::sleep(left).await;
            continue;
        }
        let outcome = 'attempt: {
            // An installation token is had before a slot is taken: comments waiting for a token
            // GitHub is slow to hand out hold no slot of the comments that have theirs. Its
            // request is an attempt too: a secondary rate limit it meets is a new one.
            sent = tokio::time::Instant::now();
            let token = match installation_token(&apis, &state, job).await {
                Err(outcome) => break 'attempt outcome,
                Ok(token) => token,
            };
            let asked = tokio::time::Instant::now();
            // The semaphore is never closed.
            let Ok(_slot) = slots.acquire().await else {
                break 'run;
            };
            // A wait asked while this job waited for its slot, or then for its turn (a turn
            // is not taken while held).
            if hold.left().is_some() {
                continue 'run;
            }
            if spaced {
                tokio::time::sleep_until(apis.turn(apis.github_comment_interval)).await;
                if hold.left().is_some() {
                    continue 'run;
                }
            }
            if job.accepted_at.elapsed() > state.max_age {
                give_up(
                    &state,
                    job,
                    "it waited past COMMENT_MAX_AGE_SECS for its turn",
                )
                .await;
                break 'run;
            }
            // Looked at again after a long wait for a slot and a turn, which the token may not
            // have outlived: the one kept if it is still good; else the slot is let go and a
            // new one asked for without it, as first (GitHub may be slow to hand it out).
            let token = match token {
                Some((id, _)) if asked.elapsed() >= TOKEN_ASKED_AGAIN_AFTER => {
                    match apis.tokens.as_ref().and_then(|tokens| tokens.kept(id)) {
                        Some(kept) => Some((id, kept)),
                        None => continue 'run,
                    }
                }
                token => token,
            };
            // Dropped in between (the process exits), the comment may have been posted.
            run.posting = true;
            sent = tokio::time::Instant::now();
            let outcome = post_comment(&apis, &state, job, token).await;
            run.posting = false;
            outcome
        };
        let (delay, attempted) = match outcome {
            Outcome::Done => {
                hold.no_secondary_limit();
                break;
            }
            Outcome::Failed => {
                state.forget_delivery(job, false).await;
                break;
            }
            Outcome::MaybePosted => {
                state.forget_delivery(job, true).await;
                break;
            }
            // A failure is not the provider taking a request again: a secondary limit met
            // after it is the one met before, and its wait doubles still.
            Outcome::Later { delay, attempted } => {
                // Asked by the provider (or an open breaker): of every comment with the same
                // credential.
                if let Some(delay) = delay {
                    hold.extend(delay);
                }
                (delay, attempted)
            }
            Outcome::SecondaryLimit => {
                // Met again by any comment of the credential, the wait doubles.
                let wait = secondary_limit_wait(hold.secondary_limit(sent));
                hold.extend(wait);
                (Some(wait), true)
            }
            Outcome::Limited => {
                // The credential's limit: the provider's other comments wait too.
                job.limits += 1;
                let wait = backoff_after(job.limits);
                hold.extend(wait);
                (Some(wait), false)
            }
        };
        if attempted {
            job.attempts += 1;
        }
        let backoff = delay.is_none();
        let delay = delay.unwrap_or_else(|| backoff_after(job.attempts));
        let age = job.accepted_at.elapsed();
        if job.attempts >= state.max_attempts || age.saturating_add(delay) > state.max_age {
            give_up(&state, job, "the provider API kept failing").await;
            break;
        }
        counters.comment_retries.fetch_add(1, Ordering::Relaxed);
        if backoff && !woken {
            // At shutdown, the job's own backoff is cut short, once.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = draining.wait_for(|draining| *draining) => woken = true,
            }
        } else {
            tokio::time::sleep(delay).await;
        }
    }
    run.done = true;
    state.finish_pending(run.job.forge);
}

/// Gives `job` up, for `why`: logged, counted as failed, and its delivery forgotten (delivered
/// again, it is processed again).
async fn give_up(state: &AppState, job: &mut Job, why: &str) {
    let age = job.accepted_at.elapsed();
    tracing::error!(
        provider = job.forge.name(),
        target = %job.comment.target,
        delivery = %job.delivery,
        attempts = job.attempts,
        age_secs = age.as_secs(),
        "comment given up: {why}"
    );
    state
        .counters
        .comments_failed
        .fetch_add(1, Ordering::Relaxed);
    state.forget_delivery(job, false).await;
}

/// How long a job may wait for a slot and its turn before it asks for its installation token
/// again.
const TOKEN_ASKED_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The wait after `attempts` failed attempts when the provider named none: doubling from
/// 400 ms up to [`MAX_BACKOFF`], and between half of that and all of it ("equal jitter"), so
/// that the comments an outage held back do not all come back at the same instant.
pub(crate) fn backoff_after(attempts: u32) -> Duration {
    let base = Duration::from_millis(200u64 << attempts.clamp(1, 12)).min(MAX_BACKOFF);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

/// A comment job, from the moment it is queued until it is done. One dropped before that, in
/// the queue or on its way, is logged: the process is exiting (past `SHUTDOWN_GRACE_SECS`).
/// Its delivery was answered `202`, so the provider will not send it again by itself; the log
/// names it, to be delivered again by hand. One dropped while its request was on its way to the
/// provider may have been posted: the log says so, to deliver it again only if it is missing.
struct Unfinished {
    job: Job,
    done: bool,
    /// Its request to the provider's API is on its way.
    posting: bool,
    /// Where it is known as pending, and by which number.
    registry: Arc<Registry>,
    number: u64,
}

impl Unfinished {
    fn new(job: Job, registry: &Arc<Registry>) -> Self {
        LIVE_JOBS.fetch_add(1, Ordering::AcqRel);
        let number = registry.add(&job);
        Self {
            job,
            done: false,
            posting: false,
            registry: Arc::clone(registry),
            number,
        }
    }
}

/// The pending jobs by number: their provider, delivery and target, for the log.
#[derive(Debug, Default)]
struct Registry {
    jobs: std::sync::Mutex<BTreeMap<u64, (Forge, String, String)>>,
    next: AtomicU64,
}

impl Registry {
    fn add(&self, job: &Job) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let about = (job.forge, job.delivery.clone(), job.comment.target.clone());
        self.lock().insert(number, about);
        number
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Forge, String, String)>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs each pending comment, as the shutdown's grace starts.
    fn log_pending(&self, grace: Duration) {
        for (forge, delivery, target) in self.lock().values() {
            tracing::warn!(
                provider = forge.name(),
                %target,
                %delivery,
                "comment pending at shutdown: tried for up to SHUTDOWN_GRACE_SECS ({} s); if the process is stopped before it is posted, deliver it again from the provider's webhook log",
                grace.as_secs()
            );
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.number);
        // Once logged below, if it is to be.
        let _live = LiveJob;
        if self.done {
            return;
        }
        if self.posting {
            tracing::error!(
                provider = self.job.forge.name(),
                target = %self.job.comment.target,
                delivery = %self.job.delivery,
                "comment not confirmed: the server stopped while its request was on its way, and the provider may have posted it; if it is missing, deliver it again from the provider's webhook log"
            );
            return;
        }
        tracing::error!(
            provider = self.job.forge.name(),
            target = %self.job.comment.target,
            delivery = %self.job.delivery,
            "comment not posted: the server stopped first; deliver it again from the provider's webhook log"
        );
    }
}

/// Counts an [`Unfinished`] out of [`LIVE_JOBS`] when dropped.
struct LiveJob;

impl Drop for LiveJob {
    fn drop(&mut self) {
        LIVE_JOBS.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Outcome {
    /// Posted, or logged.
    Done,
    /// Not posted: refused for good (logged, and counted as failed).
    Failed,
    /// Maybe not posted: given up after a failure that may have come once the provider created
    /// it (logged, and counted as failed).
    MaybePosted,
    /// Try again after `delay` (a capped backoff when `None`). `attempted` is false when the
    /// request never reached the provider's API (an open breaker refused it).
    Later {
        delay: Option<Duration>,
        attempted: bool,
    },
    /// GitHub's secondary rate limit, naming no delay: try again after a minute, and twice as
    /// long each time it is met again in a row ([`secondary_limit_wait`]).
    SecondaryLimit,
    /// Another provider's rate limit, naming no wait (a 429 without `Retry-After`: Bitbucket
    /// Cloud's lasts up to an hour): try again after the job's backoff for the limits it met,
    /// and not as an attempt, so that the comment is tried until `COMMENT_MAX_AGE_SECS`.
    Limited,
}

/// The wait after the `n`th GitHub secondary rate limit in a row that named no delay: "wait
/// for at least one minute before retrying. If your request continues to fail due to a
/// secondary rate limit, wait for an exponentially increasing amount of time between retries"
/// (GitHub's REST API docs). A minute, then two, four, ..., at most an hour.
fn secondary_limit_wait(n: u32) -> Duration {
    SECONDARY_LIMIT_WAIT
        .saturating_mul(1 << n.saturating_sub(1).min(6))
        .min(Duration::from_secs(3600))
}

/// The provider APIs comments go to.
struct Apis {
    callers: BTreeMap<Forge, (ApiTarget, Caller)>,
    /// With `GITHUB_APP_*`: the tokens GitHub comments are posted with, for deliveries that came
    /// through an installation of the app.
    tokens: Option<Arc<InstallationTokens>>,
    /// What the comment jobs sent with one credential wait for.
    holds: Holds,
    /// `GITHUB_COMMENT_INTERVAL_MS`.
    github_comment_interval: Duration,
    /// The earliest the next GitHub comment may be sent (one client: the app's or the token's
    /// user, whose content-creating requests GitHub asks to space).
    next_turn: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Apis {
    /// The hold of the comments of `forge` sent with `installation`'s token (or the provider's).
    fn hold(&self, forge: Forge, installation: Option<u64>) -> Arc<Hold> {
        self.holds.get((forge, installation))
    }

    /// Takes the next turn to send a GitHub comment, `interval` after the one before: when it
    /// comes.
    fn turn(&self, interval: Duration) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut next = self.next_turn.lock().unwrap_or_else(|e| e.into_inner());
        let at = next.map_or(now, |next| next.max(now));
        *next = Some(at + interval);
        at
    }
}

/// A provider, and for GitHub the installation of the app whose token a comment is sent with
/// (`None`: the provider's own token).
type Credential = (Forge, Option<u64>);

/// The hold of each credential comments are sent with: per provider, and for GitHub per
/// installation of the app. Once there are many (an app installed on thousands of accounts),
/// those no job holds and whose wait has lapsed are dropped as new ones come, so that the map
/// does not keep every installation ever seen.
#[derive(Default)]
struct Holds(std::sync::Mutex<BTreeMap<Credential, Arc<Hold>>>);

impl Holds {
    /// How many holds are kept before the unused ones are dropped.
    const KEPT: usize = 1024;

    fn get(&self, credential: Credential) -> Arc<Hold> {
        let mut holds = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if holds.len() >= Self::KEPT && !holds.contains_key(&credential) {
            // A hold no job has (the map's is the only reference) and that holds nothing back
            // says nothing a new one would not. (Its count of secondary limits goes with it: no
            // job is meeting them.)
            holds.retain(|_, hold| Arc::strong_count(hold) > 1 || hold.left().is_some());
        }
        Arc::clone(holds.entry(credential).or_default())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What the comment jobs sent with one credential wait for. A wait the provider asked of one
/// job (a rate limit, a 503 with `Retry-After`, an open breaker's time left) holds back all of
/// them: the limit is the credential's, not the comment's, and each job that tried anyway would
/// spend an attempt on the same refusal (and GitHub may ban a client that keeps trying while
/// limited).
#[derive(Default)]
struct Hold {
    /// Not before then.
    until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// GitHub secondary rate limits naming no delay met in a row, by any of the jobs (each one
    /// waits twice as long as the one before), and when the last one was met: the answers to
    /// requests sent before it belong to the same limit, and do not count again.
    secondary_limits: std::sync::Mutex<(u32, Option<tokio::time::Instant>)>,
}

impl Hold {
    /// Holds every job back for `wait` from now, unless they are held longer already.
    fn extend(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut held = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|held| held < until) {
            *held = Some(until);
        }
    }

    /// A secondary rate limit met by a request sent at `sent`: how many were met in a row,
    /// counting it unless it was sent before the last one was met (the same limit, seen by
    /// several requests in flight).
    fn secondary_limit(&self, sent: tokio::time::Instant) -> u32 {
        let mut met = self
            .secondary_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if met.1.is_none_or(|last| sent >= last) {
            *met = (met.0 + 1, Some(tokio::time::Instant::now()));
        }
        met.0.max(1)
    }

    /// The provider took a request again: the next secondary limit is a new one.
    fn no_secondary_limit(&self) {
        *self
            .secondary_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (0, None);
    }

    /// How long jobs are still held back, if they are.
    fn left(&self) -> Option<Duration> {
        let until = (*self.until.lock().unwrap_or_else(|e| e.into_inner()))?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// With `GITHUB_APP_*`, the token of the installation `job`'s delivery came through, if it came
/// through one; `Err` when there is none to be had now (try again later) or at all (given up).
async fn installation_token(
    apis: &Apis,
    state: &AppState,
    job: &Job,
) -> Result<Option<(u64, String)>, Outcome> {
    let Some((id, tokens)) = job.installation.zip(apis.tokens.as_ref()) else {
        return Ok(None);
    };
    let forge = job.forge.name();
    match tokens.token(id).await {
        Ok(token) => Ok(Some((id, token))),
        Err(TokenError::Transient {
            reason,
            wait,
            attempted,
            secondary_limit,
        }) => {
            tracing::warn!(provider = forge, installation = id, error = %reason, target = %job.comment.target, delivery = %job.delivery, "no installation token yet; comment scheduled again");
            Err(match secondary_limit {
                true => Outcome::SecondaryLimit,
                false => Outcome::Later {
                    delay: wait,
                    attempted,
                },
            })
        }
        Err(TokenError::Refused(reason)) => {
            tracing::error!(provider = forge, installation = id, error = %reason, target = %job.comment.target, delivery = %job.delivery, "no installation token: comment not posted");
            state
                .counters
                .comments_failed
                .fetch_add(1, Ordering::Relaxed);
            Err(Outcome::Failed)
        }
    }
}

/// Posts `job`'s comment, as the app with `installation`'s token when given.
async fn post_comment(
    apis: &Apis,
    state: &AppState,
    job: &Job,
    installation: Option<(u64, String)>,
) -> Outcome {
    let forge = job.forge.name();
    let Some((api, caller)) = apis.callers.get(&job.forge) else {
        tracing::info!(provider = forge, target = %job.comment.target, body = %job.comment.body, "no API configured: comment not posted");
        state
            .counters
            .comments_logged
            .fetch_add(1, Ordering::Relaxed);
        return Outcome::Done;
    };
    // As the app, when the delivery came through one of its installations.
    let as_app;
    let (api, installation) = match installation.zip(apis.tokens.as_ref()) {
        // The app is set, but this delivery did not come through one of its installations (a
        // repository or organization webhook with the same secret), and there is no token of
        // its own: sent without credentials, it could only be refused.
        None if job.forge == Forge::GitHub && apis.tokens.is_some() && api.token.is_none() => {
            tracing::error!(
                provider = forge,
                target = %job.comment.target,
                delivery = %job.delivery,
                "a GitHub delivery that names no installation of the app (a repository or organization webhook's), and GITHUB_TOKEN is not set: comment not posted; set GITHUB_TOKEN to comment on such deliveries"
            );
            state
                .counters
                .comments_failed
                .fetch_add(1, Ordering::Relaxed);
            return Outcome::Failed;
        }
        None => (api, None),
        Some(((id, token), tokens)) => {
            as_app = ApiTarget {
                base_url: api.base_url.clone(),
                token: Some(token),
                username: None,
            };
            (&as_app, Some((id, tokens)))
        }
    };
    let request = match build_request(job, api) {
        Ok(r) => r,
        Err(err) => {
            tracing::error!(provider = forge, error = %err, "cannot build the comment request");
            state
                .counters
                .comments_failed
                .fetch_add(1, Ordering::Relaxed);
            return Outcome::Failed;
        }
    };
    let result = match caller.clone().oneshot(request).await {
        Ok(res) => Ok(status_and_limit(job.forge, res).await),
        Err(err) => Err(err),
    };
    match result {
        Ok((status, _, _, _)) if accepted(job.forge, status) => {
            tracing::info!(provider = forge, target = %job.comment.target, delivery = %job.delivery, "comment posted");
            state
                .counters
                .comments_posted
                .fetch_add(1, Ordering::Relaxed);
            Outcome::Done
        }
        Ok((status, Some(_), true, _)) => {
            tracing::warn!(
                provider = forge,
                status = status.as_u16(),
                target = %job.comment.target,
                delivery = %job.delivery,
                "GitHub secondary rate limit; comment scheduled again"
            );
            Outcome::SecondaryLimit
        }
        // Over a rate limit (GitHub answers 403 or 429), or down for a while (503 with
        // `Retry-After`): wait as long as the provider says.
        Ok((status, Some(wait), _, _)) => {
            tracing::warn!(
                provider = forge,
                status = status.as_u16(),
                ?wait,
                target = %job.comment.target,
                delivery = %job.delivery,
                "provider API asks to wait; comment scheduled again"
            );
            Outcome::Later {
                delay: Some(wait),
                attempted: true,
            }
        }
        // Refused before it was acted on: unavailable (503), over a limit (429), the request
        // not received whole (408). Sent again later. A 503 is what a provider answers while it
        // is down or in maintenance, before it acts; the retry policy alone does not send a
        // `POST` again after one without `Retry-After`, as a gateway also answers 503 when its
        // connection to the backend reset, maybe after the write. Taking it for a refusal here
        // keeps a provider's downtime from losing comments, at that rare risk.
        Ok((status, None, _, says))
            if status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT =>
        {
            tracing::warn!(
                provider = forge,
                status = status.as_u16(),
                says = says.as_deref(),
                target = %job.comment.target,
                delivery = %job.delivery,
                "provider API failing; comment scheduled again"
            );
            // A 429 that names no wait (Bitbucket's) is the credential's rate limit all the
            // same: waited out, holding back its other comments too, and not an attempt.
            if status == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Limited
            } else {
                Outcome::Later {
                    delay: None,
                    attempted: true,
                }
            }
        }
        // An installation token GitHub no longer takes (revoked, or the app's permissions
        // changed): fetched again for the next attempt.
        Ok((StatusCode::UNAUTHORIZED, None, _, _)) if installation.is_some() => {
            if let (Some((id, tokens)), Some(refused)) = (installation, &api.token) {
                tokens.forget(id, refused);
            }
            tracing::warn!(
                provider = forge,
                target = %job.comment.target,
                delivery = %job.delivery,
                "installation token refused; comment scheduled again with a new one"
            );
            Outcome::Later {
                delay: None,
                attempted: true,
            }
        }
        // Any other 5xx (500, 502, 504) may come after the provider created the comment: a
        // gateway that timed out waiting for it, a failure after the write. Posted again, it
        // could show twice, so it is not; the log names the delivery to send again by hand if
        // the comment is missing.
        Ok((status, None, _, _)) if status.is_server_error() => {
            may_have_been_posted(state, job, &format!("status {}", status.as_u16()));
            Outcome::MaybePosted
        }
        Ok((status, None, _, _)) if status.is_redirection() => {
            tracing::error!(provider = forge, status = status.as_u16(), target = %job.comment.target, delivery = %job.delivery, "provider API answered the comment with a redirect, not followed: comment not posted; check {} (a URL the server sends elsewhere) and the token (a sign-in page)", job.forge.api_url_var());
            state
                .counters
                .comments_failed
                .fetch_add(1, Ordering::Relaxed);
            Outcome::Failed
        }
        Ok((status, None, _, says)) => {
            // What the provider says is its own text, not a secret: a missing scope, a
            // repository the token cannot see, a locked conversation.
            tracing::error!(provider = forge, status = status.as_u16(), says = says.as_deref(), target = %job.comment.target, delivery = %job.delivery, "provider refused the comment");
            state
                .counters
                .comments_failed
                .fetch_add(1, Ordering::Relaxed);
            Outcome::Failed
        }
        Err(err) => {
            let err: &(dyn std::error::Error + 'static) = &*err;
            match (CircuitOpen::find(err), refused_certificate(err)) {
                (Some(open), _) => {
                    tracing::debug!(provider = forge, retry_after = ?open.retry_after(), target = %job.comment.target, delivery = %job.delivery, "breaker open; comment waits");
                    Outcome::Later {
                        delay: Some(open.retry_after().unwrap_or(Duration::from_secs(1))),
                        attempted: false,
                    }
                }
                // Never sent, and no attempt will be: the provider's certificate is refused.
                (None, Some(refused)) => {
                    tracing::error!(provider = forge, error = %error_chain(err), target = %job.comment.target, delivery = %job.delivery, "provider API's TLS certificate refused ({refused}): comment not posted; a self-hosted instance behind a private CA needs that CA in the system's trust store (or SSL_CERT_FILE), and {} must name the host its certificate is for", job.forge.api_url_var());
                    state
                        .counters
                        .comments_failed
                        .fetch_add(1, Ordering::Relaxed);
                    Outcome::Failed
                }
                (None, None) if was_not_sent(err) => {
                    tracing::warn!(provider = forge, error = %error_chain(err), target = %job.comment.target, delivery = %job.delivery, "provider API unreachable; comment scheduled again");
                    Outcome::Later {
                        delay: None,
                        attempted: true,
                    }
                }
                // A timeout or a connection lost once the request was sent: the provider may
                // have created the comment.
                (None, None) => {
                    may_have_been_posted(state, job, &error_chain(err));
                    Outcome::MaybePosted
                }
            }
        }
    }
}

/// Gives up `job`'s comment after a failure that may have come after the provider created it
/// (`why`): sending it again could post it twice.
fn may_have_been_posted(state: &AppState, job: &Job, why: &str) {
    tracing::error!(
        provider = job.forge.name(),
        target = %job.comment.target,
        delivery = %job.delivery,
        failure = why,
        "comment not sent again: the provider failed after receiving it and may have posted it; if it is missing, deliver it again from the provider's webhook log"
    );
    state
        .counters
        .comments_failed
        .fetch_add(1, Ordering::Relaxed);
}

/// The refusal of the provider's TLS certificate in `err`'s chain (untrusted, for another name,
/// expired, or none presented), which no later attempt can mend. rustls' error travels inside
/// I/O errors (reqwest's inside tokio-rustls'), whose `source` skips what they wrap: each one
/// is looked into.
pub(crate) fn refused_certificate(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    // The error itself, or what the I/O errors around it wrap, a few deep.
    fn unwrapped<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        for _ in 0..8 {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        }
        None
    }
    // Bounded: a broken `Error` impl can make the chain a cycle.
    std::iter::successors(Some(err), |e| e.source())
        .take(32)
        .filter_map(unwrapped)
        .find(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
        .map(ToString::to_string)
}

/// `err` and its sources, for the logs: reqwest's own message ("error sending request for url
/// (...)") says nothing of the cause (a connection refused, a name that does not resolve, a
/// timeout, a connection lost once the request was sent), which its sources name. A source whose
/// message the text holds already is left out.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    for source in std::iter::successors(err.source(), |e| e.source()) {
        let message = source.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
    }
    text
}

/// Whether `status` says that `forge` took the comment. Azure DevOps answers a token it does
/// not take (expired, revoked) with its sign-in page, as `203 Non-Authoritative Information`
/// (or a redirect to it, which `X-TFS-FedAuthRedirect: Suppress` turns into a `401`): no
/// comment was made.
fn accepted(forge: Forge, status: StatusCode) -> bool {
    status.is_success()
        && !(forge == Forge::AzureDevOps && status == StatusCode::NON_AUTHORITATIVE_INFORMATION)
}

/// How long GitHub's secondary rate limit is waited out the first time when it names no delay:
/// "wait for at least one minute before retrying".
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The status of `forge`'s answer, how long to wait before calling again when it is a rate
/// limit ([`rate_limit_wait`]), and whether that wait is GitHub's secondary rate limit naming
/// no delay. Such a limit (a 429, or a 403 whose message names it, without `Retry-After` or
/// `X-RateLimit-Remaining: 0`) is waited out for a minute the first time: "wait for at least
/// one minute before retrying"; longer when it persists ([`secondary_limit_wait`]).
async fn status_and_limit(
    forge: Forge,
    res: reqwest::Response,
) -> (StatusCode, Option<Duration>, bool, Option<String>) {
    let status = res.status();
    let wait = rate_limit_wait(status, res.headers());
    if wait.is_some() || !status.is_client_error() {
        return (status, wait, false, None);
    }
    // A refusal: what the provider says about it (a missing scope, a repository the token
    // cannot see, a locked conversation) is the operator's only clue. At most 64 KiB is read.
    let body = match read_at_most(res, 64 * 1024).await {
        Ok(body) | Err(Unread::TooLarge(body)) => body,
        Err(Unread::Failed(_)) => Vec::new(),
    };
    // A GitHub secondary rate limit names no delay: its error message says what it is (the
    // test octokit's throttling plugin makes). So does a comment GitHub turns away with
    // `422 Validation Failed`, "was submitted too quickly", which GitHub's staff say to try
    // again after minutes (cli/cli#4801).
    let says = || String::from_utf8_lossy(&body).to_ascii_lowercase();
    let unnamed = forge == Forge::GitHub
        && (status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && says().contains("secondary rate"))
            || (status == StatusCode::UNPROCESSABLE_ENTITY
                && says().contains("submitted too quickly")));
    (
        status,
        unnamed.then_some(SECONDARY_LIMIT_WAIT),
        unnamed,
        provider_says(&body),
    )
}

/// The longest part of a provider's error message that is logged.
const SAYS_AT_MOST: usize = 300;

/// What a provider's error answer says, cut to [`SAYS_AT_MOST`] characters: the message of its
/// JSON error (GitHub, Gitea, Azure DevOps: `message`; GitLab: `message` or
/// `error_description` and `error`; Bitbucket Cloud: `error.message` and `error.detail`;
/// Bitbucket Data Center: `errors[].message`). Only those fields: anything else (an HTML page of
/// a proxy or a sign-in service, with its links) is told by its size alone. `None` for an
/// empty body.
pub(crate) fn provider_says(body: &[u8]) -> Option<String> {
    fn text(value: &Value) -> Option<String> {
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_owned()),
            // GitLab's validation errors: `{"message": {"note": ["can't be blank"]}}`.
            other => Some(other.to_string()),
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let doc = serde_json::from_slice::<Value>(body).ok();
    let parts: Vec<String> = doc
        .iter()
        .flat_map(|doc| {
            let error = &doc["error"];
            [
                text(&doc["message"]),
                text(&doc["error_description"]),
                text(&error["message"]).or_else(|| error.as_str().and_then(|_| text(error))),
                text(&error["detail"]),
                text(&doc["errors"][0]["message"]),
            ]
        })
        .flatten()
        .collect();
    let says = if parts.is_empty() {
        format!(
            "{} bytes, {}",
            body.len(),
            if doc.is_some() {
                "JSON without a message"
            } else {
                "not JSON"
            }
        )
    } else {
        parts.join(": ")
    };
    let mut cut: String = says.chars().take(SAYS_AT_MOST).collect();
    if cut.len() < says.len() {
        cut.push('…');
    }
    Some(cut)
}

/// `what` (what answered what), and what the answer said, quoted.
pub(crate) fn answered(what: String, says: Option<&str>) -> String {
    match says {
        Some(says) => format!("{what}: {says:?}"),
        None => what,
    }
}

/// Why [`read_at_most`] gave no whole body.
pub(crate) enum Unread {
    /// The body goes on past the limit: what was read, the limit's worth and a chunk at most.
    TooLarge(Vec<u8>),
    /// Reading it failed.
    Failed(reqwest::Error),
}

/// An API answer's body, read whole if it holds at most `limit` bytes: an API (or whatever
/// answers at its URL) that sends more is not buffered whole.
pub(crate) async fn read_at_most(
    mut res: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Unread> {
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Err(Unread::TooLarge(body));
                }
            }
            Ok(None) => return Ok(body),
            Err(err) => return Err(Unread::Failed(err)),
        }
    }
}

/// How long to wait before posting again when `status` and `headers` say a rate limit was hit
/// (403 or 429 with `Retry-After`, in seconds or as an HTTP date, or with
/// `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`, read against the answer's `Date`, a
/// minute without the reset) or the API is down for a while (503 with `Retry-After`, which the
/// retry policy leaves to the caller past its own cap), from 1 s to an hour. `None` when the headers say no such thing (see
/// [`status_and_limit`] for GitHub's limits that name no delay).
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let limited = status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS;
    if !limited && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    const LONGEST: Duration = Duration::from_secs(3600);
    if let Some(wait) = retry_after(headers) {
        // A date already past (not after the answer's `Date`) is no reason to call at once.
        return Some(wait.clamp(Duration::from_secs(1), LONGEST));
    }
    if !limited {
        return None;
    }
    if number("x-ratelimit-remaining") == Some(0) {
        // The reset is on GitHub's clock: read against the answer's `Date`, as `Retry-After`
        // is, so that a local clock off GitHub's neither cuts the wait short nor stretches it.
        let now = headers
            .get(http::header::DATE)
            .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok())
            .unwrap_or_else(std::time::SystemTime::now)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let wait = number("x-ratelimit-reset")
            .map(|reset| Duration::from_secs(reset).saturating_sub(now))
            .unwrap_or(Duration::from_secs(60));
        return Some(wait.clamp(Duration::from_secs(1), LONGEST));
    }
    None
}

fn build_request(job: &Job, api: &ApiTarget) -> Result<reqwest::Request, BoxError> {
    api_request(
        job.forge,
        api,
        Method::POST,
        &job.comment.path,
        &job.comment.body,
    )
}

/// A request to the GitHub App API (`/app/...`), authenticated as `app` with a fresh token.
fn app_request(
    app: &GithubApp,
    api: &ApiTarget,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<reqwest::Request, BoxError> {
    let without_token = ApiTarget {
        base_url: api.base_url.clone(),
        token: None,
        username: None,
    };
    let mut req = api_request(Forge::GitHub, &without_token, method, path, body)?;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", app.jwt(app.github_now())?))?;
    value.set_sensitive(true);
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    Ok(req)
}

/// A JSON request to `forge`'s API at `path`, with the provider's way of sending the token; with
/// no body for a `body` of `null`.
fn api_request(
    forge: Forge,
    api: &ApiTarget,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<reqwest::Request, BoxError> {
    let url = reqwest::Url::parse(&format!("{}{}", api.base_url, path))?;
    let mut req = reqwest::Request::new(method, url);
    let headers = req.headers_mut();
    if !body.is_null() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    // GitHub documents its own media type for its REST API.
    let accept = match forge {
        Forge::GitHub => "application/vnd.github+json",
        _ => "application/json",
    };
    headers.insert(http::header::ACCEPT, HeaderValue::from_static(accept));
    if let (Some(token), Some(username)) = (&api.token, &api.username) {
        // Bitbucket Cloud's API tokens and app passwords: the password of Basic authentication.
        use base64::Engine;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{token}"));
        let mut v = HeaderValue::from_str(&format!("Basic {credentials}"))?;
        v.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, v);
    } else if let Some(token) = &api.token {
        let value = match forge {
            // Bitbucket Cloud without `BITBUCKET_USERNAME`: a repository, project or workspace
            // access token. Bitbucket Data Center: an HTTP access token.
            Forge::GitHub | Forge::Bitbucket | Forge::BitbucketServer => {
                format!("Bearer {token}")
            }
            Forge::Gitea => format!("token {token}"),
            Forge::GitLab => String::new(),
            Forge::AzureDevOps => {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!(":{token}"))
                )
            }
        };
        if forge == Forge::GitLab {
            let mut v = HeaderValue::from_str(token)?;
            v.set_sensitive(true);
            headers.insert("private-token", v);
        } else {
            let mut v = HeaderValue::from_str(&value)?;
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    match forge {
        Forge::GitHub => {
            headers.insert(
                "x-github-api-version",
                HeaderValue::from_static("2022-11-28"),
            );
        }
        // A token Azure DevOps does not take is answered 401, not with a redirect to its
        // sign-in page (which a client following redirects reads as a `200`).
        Forge::AzureDevOps => {
            headers.insert(
                "x-tfs-fedauthredirect",
                HeaderValue::from_static("Suppress"),
            );
        }
        _ => {}
    }
    // `null`: a request without a body (a `GET`).
    if !body.is_null() {
        *req.body_mut() = Some(serde_json::to_vec(body)?.into());
    }
    Ok(req)
}

/// The URL a client on this machine reaches a server listening at `addr` by: a server bound
/// to every interface (`HOST=0.0.0.0` or `::`) is reached at the loopback address of the same
/// family, since 0.0.0.0 is no address to send to (some systems refuse to connect to it).
pub(crate) fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// [`announce`] for `running`, at its local URL and its tunnel's: nothing when it is stopping
/// already, as after a stop signal that came while its tunnel was starting (its routes would
/// come after "shut down", for a server no longer there).
pub(crate) fn announce_running(
    out: &mut impl std::io::Write,
    settings: &Settings,
    running: &Running,
) -> std::io::Result<()> {
    if running.is_stopping() {
        return Ok(());
    }
    let public = running.tunnel_url();
    announce(
        out,
        settings,
        &local_url(running.local_addr()),
        public.as_deref(),
    )
}

/// What the server prints once it listens at `local` (and `public`, through a tunnel): its
/// routes, what looks wrong in `settings`, and in development mode the secret it made up and two
/// commands to try it with. A write that fails (stdout closed: the output piped into `head`,
/// say) ends the printing with its error, for the caller to pass over: the server runs on.
pub(crate) fn announce(
    out: &mut impl std::io::Write,
    settings: &Settings,
    local: &str,
    public: Option<&str>,
) -> std::io::Result<()> {
    if settings.addr.ip().is_unspecified() {
        writeln!(
            out,
            "pr_agent_server listening on every interface (HOST={}), here at {local}",
            settings.addr.ip()
        )?;
    } else {
        writeln!(out, "pr_agent_server listening on {local}")?;
    }
    writeln!(out, "  GET  {local}/        health")?;
    writeln!(out, "  GET  {local}/status  breakers and counters")?;
    for forge in settings.forges.keys() {
        writeln!(out, "  POST {local}{}", forge.route())?;
    }
    if let Some(public) = public {
        writeln!(out, "public webhook URLs (give these to the provider):")?;
        for forge in settings.forges.keys() {
            writeln!(out, "  {public}{}", forge.route())?;
        }
        if public.starts_with("http://") {
            writeln!(
                out,
                "warning: the tunnel's URL is plain http: deliveries cross the internet \
                 unencrypted (signatures still keep forged ones out); put an https provider \
                 first in TUNNEL_SERVICE (ngrok, cloudflared, localtunnel)"
            )?;
        }
    }
    for warning in settings
        .warnings()
        .into_iter()
        .chain(settings.api_url_warnings())
        .chain(settings.secret_warnings())
    {
        writeln!(out, "warning: {warning}")?;
    }
    for forge in Forge::ALL {
        if settings.forges.contains_key(&forge) && !settings.apis.contains_key(&forge) {
            writeln!(
                out,
                "note: no {} API configured: comments for {} are logged, not posted",
                forge.name(),
                forge.name()
            )?;
        }
    }
    if let Some(secret) = &settings.generated_github_secret {
        development_help(out, local, secret)?;
    }
    out.flush()
}

/// Development mode: the secret that was made up, and two commands to try the server with.
fn development_help(
    out: &mut impl std::io::Write,
    local: &str,
    secret: &str,
) -> std::io::Result<()> {
    let (body, signature) = sample_github_delivery(secret);
    let delivery = uuid::Uuid::new_v4();
    let mut forged = signature.clone();
    let last = if forged.ends_with('0') { '1' } else { '0' };
    forged.pop();
    forged.push(last);
    let route = Forge::GitHub.route();
    writeln!(out)?;
    writeln!(
        out,
        "No webhook secret is set: development mode with a random GitHub secret:"
    )?;
    writeln!(out, "  GITHUB_WEBHOOK_SECRET={secret}")?;
    writeln!(out)?;
    writeln!(
        out,
        "Send a correctly signed pull_request delivery (expect 202 Accepted):"
    )?;
    writeln!(
        out,
        "  curl -i -X POST {local}{route} -H 'Content-Type: application/json' -H 'X-GitHub-Event: pull_request' -H 'X-GitHub-Delivery: {delivery}' -H 'X-Hub-Signature-256: {signature}' --data '{body}'"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Send it with a bad signature (expect 401 and a problem+json body):"
    )?;
    writeln!(
        out,
        "  curl -i -X POST {local}{route} -H 'Content-Type: application/json' -H 'X-GitHub-Event: pull_request' -H 'X-GitHub-Delivery: {}' -H 'X-Hub-Signature-256: {forged}' --data '{body}'",
        uuid::Uuid::new_v4()
    )?;
    writeln!(out)
}

/// A signed sample `pull_request` delivery, for the printed `curl` commands.
pub(crate) fn sample_github_delivery(secret: &str) -> (String, String) {
    use hmac::{KeyInit, Mac};
    let body = json!({
        "action": "opened",
        "number": 1,
        "pull_request": { "number": 1, "title": "Add a README" },
        "repository": { "full_name": "octo-org/hello-world" },
    })
    .to_string();
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    (body, signature)
}

#[cfg(test)]
mod tests {
    use super::{Forge, Holds};
    use std::time::Duration;

    /// An app installed on many accounts: the holds of installations with no comment in flight
    /// and no wait left are dropped once there are `Holds::KEPT` of them; those a job has, or
    /// that still hold comments back, are kept.
    #[tokio::test(start_paused = true)]
    async fn holds_of_installations_done_with_are_dropped() {
        let holds = Holds::default();
        let in_flight = holds.get((Forge::GitHub, Some(1)));
        holds
            .get((Forge::GitHub, Some(2)))
            .extend(Duration::from_secs(60));
        for installation in 3..=Holds::KEPT as u64 {
            holds.get((Forge::GitHub, Some(installation)));
        }
        assert_eq!(holds.len(), Holds::KEPT);
        holds.get((Forge::GitLab, None));
        // The two in use, and the new one.
        assert_eq!(holds.len(), 3);
        assert!(std::sync::Arc::ptr_eq(
            &in_flight,
            &holds.get((Forge::GitHub, Some(1)))
        ));
        let waiting = std::sync::Arc::downgrade(&holds.get((Forge::GitHub, Some(2))));
        assert!(waiting.upgrade().unwrap().left().is_some());
        // Its wait over, the second goes at the next sweep.
        tokio::time::advance(Duration::from_secs(61)).await;
        for installation in 10_000..10_000 + Holds::KEPT as u64 {
            holds.get((Forge::GitHub, Some(installation)));
        }
        assert!(holds.len() <= Holds::KEPT, "{}", holds.len());
        assert!(waiting.upgrade().is_none(), "the lapsed hold was kept");
        drop(in_flight);
    }
}
