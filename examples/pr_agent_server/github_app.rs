//! A GitHub App: the JSON Web Token that authenticates as the app, and the installation
//! tokens that comment as the app.
//!
//! The server signs a short-lived JWT (RS256) with the app's private key; the app API
//! (`/app/...`) takes it as `Authorization: Bearer <jwt>`. With it, the server asks for an
//! installation's access token (an hour's life), which the rest of the API takes like any token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_webhook::circuit_breaker::CircuitOpen;

use super::{ApiTarget, Caller, Forge, answered, app_request, status_and_limit};

/// How long before `now` a token says it was issued: GitHub advises a minute, for clock drift.
const ISSUED_BEFORE_SECS: u64 = 60;
/// How long after `now` a token expires. GitHub refuses a token whose expiry is more than 10
/// minutes ahead; 9 minutes after `now` also keeps it within 10 minutes of its stated issue time.
const EXPIRES_AFTER_SECS: u64 = 9 * 60;

/// How far this machine's clock may be off GitHub's before the app's tokens are dated by
/// GitHub's clock (as its answers' `Date` tells it), in seconds: within it, a token's minute of
/// leeway covers the difference.
const SKEW_TOLERATED_SECS: i64 = 30;

/// The largest difference between the clocks taken from a `Date`, in seconds: a day.
const SKEW_BELIEVED_SECS: i64 = 24 * 3600;

/// A GitHub App: its id (the app id or client id, the token's issuer) and its private key.
#[derive(Clone)]
pub(crate) struct GithubApp {
    id: String,
    key: Arc<RsaKeyPair>,
    /// GitHub's clock minus this machine's, in seconds, once an answer's `Date` said they
    /// differ by more than [`SKEW_TOLERATED_SECS`]; shared by the clones.
    skew: Arc<AtomicI64>,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl GithubApp {
    /// The app `id` with the private key in `pem`: PKCS#1 (`RSA PRIVATE KEY`, the `.pem` file
    /// GitHub hands out) or PKCS#8 (`PRIVATE KEY`), unencrypted. A literal `\n` counts as a line
    /// break, for a key kept on one line of an environment variable.
    pub(crate) fn new(id: &str, pem: &str) -> Result<Self, String> {
        Self::check_id(id)?;
        let pem = pem.replace("\\n", "\n");
        let (label, der) = pem_block(&pem)?;
        let key = match label {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            other => return Err(format!("a PEM `{other}` is not an RSA private key")),
        }
        .map_err(|err| format!("not a usable RSA private key ({err})"))?;
        Ok(Self {
            id: id.to_owned(),
            key: Arc::new(key),
            skew: Arc::default(),
        })
    }

    /// Whether `id` looks like an app id (digits) or a client id (`Iv1.` and hex digits).
    pub(crate) fn check_id(id: &str) -> Result<(), String> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        // The value is not repeated: a key or a secret set here by mistake would go to the log.
        if valid {
            Ok(())
        } else {
            Err("not a GitHub App id or client id (digits, or letters, digits and ._-)".to_owned())
        }
    }

    /// The app's id, as given.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Now, on GitHub's clock as far as its answers told: what the app's tokens are dated by.
    /// GitHub refuses a token issued in its future or expired in its past, so a machine whose
    /// clock is off by more than a minute (a VM after a suspend, a host without NTP) would have
    /// every one refused.
    pub(crate) fn github_now(&self) -> SystemTime {
        let skew = self.skew.load(Ordering::Relaxed);
        let now = SystemTime::now();
        let by = Duration::from_secs(skew.unsigned_abs());
        if skew >= 0 {
            now.checked_add(by).unwrap_or(now)
        } else {
            now.checked_sub(by).unwrap_or(now)
        }
    }

    /// Learns GitHub's clock from the `Date` of one of its answers, and says so when the
    /// clocks were found to differ by more than [`SKEW_TOLERATED_SECS`] (or to agree again)
    /// since the last answer that said so.
    fn learn_clock(&self, headers: &http::HeaderMap) {
        let Some(date) = headers
            .get(http::header::DATE)
            .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok())
        else {
            return;
        };
        let seconds = |t: SystemTime| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        };
        let diff = seconds(date).saturating_sub(seconds(SystemTime::now()));
        if diff.abs() > SKEW_BELIEVED_SECS {
            // No clock is a day off: a `Date` rewritten on the way (a proxy), not GitHub's.
            return;
        }
        let before = self.skew.load(Ordering::Relaxed);
        // Taken up past the tolerance, given up only well within it: a skew near the bound
        // does not flip at every answer.
        let skew = if diff.abs() > SKEW_TOLERATED_SECS
            || (before != 0 && diff.abs() > SKEW_TOLERATED_SECS / 2)
        {
            diff
        } else {
            0
        };
        self.skew.store(skew, Ordering::Relaxed);
        if skew.abs_diff(before) <= SKEW_TOLERATED_SECS.unsigned_abs() {
            return;
        }
        if skew == 0 {
            tracing::info!("this machine's clock agrees with GitHub's again");
        } else {
            tracing::warn!(
                skew_secs = skew,
                "this machine's clock is {} s {} GitHub's (the Date of its answers): the GitHub App's tokens are dated by GitHub's clock; set this machine's clock right (NTP)",
                skew.unsigned_abs(),
                if skew > 0 { "behind" } else { "ahead of" }
            );
        }
    }

    /// GitHub's clock minus this machine's, in seconds, as the app's tokens are dated now.
    pub(crate) fn skew(&self) -> i64 {
        self.skew.load(Ordering::Relaxed)
    }

    /// Whether an answer to a request whose token was dated with `skew` was refused for the
    /// clock: a 401 whose `Date`, or another answer's since, moved the skew by more than the
    /// tolerance. The next token is dated differently: worth trying again.
    pub(crate) fn refused_for_the_clock(
        &self,
        status: StatusCode,
        headers: &http::HeaderMap,
        skew: i64,
    ) -> bool {
        self.learn_clock(headers);
        status == StatusCode::UNAUTHORIZED
            && self.skew().abs_diff(skew) > SKEW_TOLERATED_SECS.unsigned_abs()
    }

    /// A token that authenticates as the app at `now`, for 10 minutes at most.
    pub(crate) fn jwt(&self, now: SystemTime) -> Result<String, String> {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_owned())?
            .as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iat": secs.saturating_sub(ISSUED_BEFORE_SECS),
            "exp": secs + EXPIRES_AFTER_SECS,
            "iss": self.id,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let message = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "could not sign the GitHub App token".to_owned())?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The label and the decoded bytes of the first PEM block in `pem`.
fn pem_block(pem: &str) -> Result<(&str, Vec<u8>), String> {
    const BEGIN: &str = "-----BEGIN ";
    let start = pem
        .find(BEGIN)
        .ok_or("no PEM block (`-----BEGIN ...-----`) in the key")?;
    let cut = "a PEM block without the end of its `-----BEGIN` line";
    let (label, rest) = pem[start + BEGIN.len()..].split_once("-----").ok_or(cut)?;
    // A label is a few capital letters and spaces. Anything else is a `-----BEGIN` line cut
    // short, whose label ran on into the key: it is never part of an error.
    if label.len() > 64 || !label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
        return Err(cut.into());
    }
    let end = format!("-----END {label}-----");
    let body = rest
        .find(&end)
        .map(|at| &rest[..at])
        .ok_or_else(|| format!("the PEM block has no `{end}` line"))?;
    if body.contains(':') {
        return Err("an encrypted PEM key: decrypt it first (`openssl rsa -in key.pem`)".into());
    }
    let base64: String = body.split_ascii_whitespace().collect();
    let der = STANDARD
        .decode(base64)
        // Not the decoder's error: it would show a character of the key.
        .map_err(|_| "the PEM block is not base64".to_owned())?;
    Ok((label, der))
}

/// An installation token is fetched again this long before it expires, so that a comment never
/// goes out with one about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The life assumed for a token whose answer states no readable expiry.
const ASSUMED_LIFE: Duration = Duration::from_secs(10 * 60);
/// Installations whose token is kept at once; past that, the one that lapses first goes.
const MAX_INSTALLATIONS: usize = 4096;

/// How long an installation GitHub said was suspended is taken to be, before a comment of it
/// asks GitHub for a token again: GitHub does not promise its deliveries' order, and the server
/// handles several at once, so a `suspend` may be handled after the `unsuspend` that followed
/// it.
const SUSPENSION_RECHECK: Duration = Duration::from_secs(10 * 60);
/// The most of a GitHub answer (the app, an installation token) read: a few KiB are expected;
/// whatever answers at `GITHUB_API_URL` must not make the server buffer more.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// The access tokens of a GitHub App's installations: fetched as the app when a comment needs
/// one, through the GitHub breaker and retry policy, and kept until shortly before they expire.
pub(crate) struct InstallationTokens {
    app: GithubApp,
    api: ApiTarget,
    caller: Caller,
    /// By installation id. The map's lock is held only to find a slot; a slot's lock is held
    /// across its fetch, so that comments waiting for one installation's token fetch it once,
    /// and a slow fetch holds up no other installation's unless every one of `fetches` is
    /// taken (each for as long as its request takes, the retry policy's included: up to four
    /// tries of at most 30 s, and the waits a `Retry-After` asks for between them), nor any
    /// comment slot (the worker gets the token before it takes one).
    slots: std::sync::Mutex<HashMap<u64, Slot>>,
    /// Installations GitHub said were suspended or uninstalled (`installation` events), and
    /// since when: no token is fetched for them, until one is unsuspended, or, for a
    /// suspension, until `suspension_recheck` has passed and GitHub issues one again. At most
    /// `MAX_INSTALLATIONS`.
    gone: std::sync::Mutex<HashMap<u64, (Gone, std::time::Instant)>>,
    /// [`SUSPENSION_RECHECK`], in milliseconds.
    suspension_recheck: AtomicU64,
    /// Fetches at once, of all installations (`COMMENTS_IN_FLIGHT_PER_PROVIDER`): a backlog of
    /// comments of many installations (after a restart, after GitHub was down) asks GitHub for
    /// their tokens a few at a time, not all at once into its secondary rate limit.
    fetches: tokio::sync::Semaphore,
}

/// Why an installation has no token to be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gone {
    /// `installation` `suspend`: until `unsuspend`.
    Suspended,
    /// `installation` `deleted`: the app was uninstalled.
    Deleted,
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Gone::Suspended => "suspended",
            Gone::Deleted => "uninstalled",
        })
    }
}

/// What an `installation` event changed for the installation's comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InstallationChange {
    /// Suspended or uninstalled: no token until it comes back.
    Gone(Gone),
    /// Unsuspended: its comments fetch a token again.
    Back,
    /// New permissions accepted: its token was dropped, the next one carries them.
    NewPermissions,
}

/// One installation's token, if one was fetched.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

struct Cached {
    token: String,
    refresh_at: SystemTime,
}

impl std::fmt::Debug for InstallationTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationTokens")
            .field("app", &self.app)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Why no installation token could be had.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// Worth trying again, after `wait` if given. `attempted` is false when the breaker refused
    /// the call before it reached GitHub. `secondary_limit`: GitHub's secondary rate limit,
    /// naming no delay, whose wait grows while it persists.
    Transient {
        reason: String,
        wait: Option<Duration>,
        attempted: bool,
        secondary_limit: bool,
    },
    /// GitHub refused (the app is not installed there any more, a wrong app id or key): trying
    /// again cannot help.
    Refused(String),
}

impl InstallationTokens {
    /// Fetches at most `fetches_at_once` tokens at once (at least one).
    pub(crate) fn new(
        app: GithubApp,
        api: ApiTarget,
        caller: Caller,
        fetches_at_once: usize,
    ) -> Self {
        Self {
            app,
            api,
            caller,
            slots: std::sync::Mutex::new(HashMap::new()),
            gone: std::sync::Mutex::new(HashMap::new()),
            suspension_recheck: AtomicU64::new(SUSPENSION_RECHECK.as_millis() as u64),
            fetches: tokio::sync::Semaphore::new(fetches_at_once.max(1)),
        }
    }

    /// How long a suspension GitHub told of holds before a comment asks GitHub again
    /// (default 10 minutes).
    pub(crate) fn recheck_suspensions_after(&self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.suspension_recheck.store(ms, Ordering::Relaxed);
    }

    /// Takes in an `installation` event of `installation` (the app receives them without
    /// subscribing): `deleted` or `suspend` drops its token at once, and its comments are given
    /// up without asking GitHub for another (for a suspension, for `suspension_recheck`, then
    /// GitHub is asked again); `unsuspend` lets them fetch one again;
    /// `new_permissions_accepted` drops its token, which carries the permissions it was made
    /// with, so the next comment fetches one with the new ones. Other actions change nothing.
    /// Returns what changed, if anything.
    pub(crate) fn installation_event(
        &self,
        installation: u64,
        action: &str,
    ) -> Option<InstallationChange> {
        let now = match action {
            "deleted" => Some(Gone::Deleted),
            "suspend" => Some(Gone::Suspended),
            "unsuspend" | "new_permissions_accepted" => None,
            _ => return None,
        };
        // A fetch or a comment in flight keeps the slot it holds; the next one starts afresh.
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&installation);
        if action == "new_permissions_accepted" {
            return Some(InstallationChange::NewPermissions);
        }
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        match now {
            Some(why) => {
                if !gone.contains_key(&installation)
                    && gone.len() >= MAX_INSTALLATIONS
                    && let Some(&any) = gone.keys().next()
                {
                    // Forgetting one costs at most a token request for a comment of it.
                    gone.remove(&any);
                }
                gone.insert(installation, (why, std::time::Instant::now()));
                Some(InstallationChange::Gone(why))
            }
            None => {
                gone.remove(&installation);
                Some(InstallationChange::Back)
            }
        }
    }

    /// Whether GitHub said `installation` was uninstalled, or suspended less than
    /// `suspension_recheck` ago.
    fn gone(&self, installation: u64) -> Option<Gone> {
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        let &(why, since) = gone.get(&installation)?;
        let recheck = Duration::from_millis(self.suspension_recheck.load(Ordering::Relaxed));
        (why == Gone::Deleted || since.elapsed() < recheck).then_some(why)
    }

    /// What GitHub's answer to a token request says of a suspension it told of before the
    /// request was decided on (`asked`), whose recheck was due then: a token issued, that the
    /// installation is back (its `unsuspend` was handled first, or missed); a refusal, that it
    /// is still suspended, for another while. A suspension told of since is GitHub's newer
    /// word, and stands.
    fn suspension_checked(&self, installation: u64, asked: std::time::Instant, issued: bool) {
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        let Some((Gone::Suspended, since)) = gone.get_mut(&installation) else {
            return;
        };
        if *since >= asked {
            return;
        }
        if issued {
            gone.remove(&installation);
            tracing::info!(
                installation,
                "GitHub issued a token for an installation it said was suspended: it is back (its unsuspend event came first, or was missed)"
            );
        } else {
            *since = std::time::Instant::now();
        }
    }

    /// A token of `installation`, from the cache or fetched now; refused without asking GitHub
    /// for an installation it said was suspended or uninstalled.
    pub(crate) async fn token(&self, installation: u64) -> Result<String, TokenError> {
        let refused = |why: Gone| {
            TokenError::Refused(format!("the installation was {why} (installation event)"))
        };
        if let Some(why) = self.gone(installation) {
            return Err(refused(why));
        }
        let slot = self.slot(installation);
        let mut cached = slot.lock().await;
        let asked = std::time::Instant::now();
        // Suspended or uninstalled while this waited for the slot, which the event took out of
        // the map: its token is not used.
        if let Some(why) = self.gone(installation) {
            return Err(refused(why));
        }
        // `expires_at` is on GitHub's clock.
        if let Some(kept) = &*cached
            && kept.refresh_at > self.app.github_now()
        {
            return Ok(kept.token.clone());
        }
        let fetched = {
            // The semaphore is never closed.
            let _fetching = self.fetches.acquire().await.ok();
            self.fetch(installation).await
        };
        match &fetched {
            Ok(_) => self.suspension_checked(installation, asked, true),
            Err(TokenError::Refused(_)) => self.suspension_checked(installation, asked, false),
            Err(TokenError::Transient { .. }) => {}
        }
        let (token, expires_at) = fetched?;
        // Suspended or uninstalled while the token was on its way.
        if let Some(why) = self.gone(installation) {
            return Err(refused(why));
        }
        // A token that lapses within the margin is used for this comment and not kept.
        *cached = Some(Cached {
            token: token.clone(),
            refresh_at: expires_at.checked_sub(REFRESH_MARGIN).unwrap_or(UNIX_EPOCH),
        });
        Ok(token)
    }

    /// The kept token of `installation` if it is still good, without asking GitHub: `None`
    /// when none is kept, when it lapsed, or while another comment is fetching one (it holds
    /// the installation's lock), for a comment that holds a slot and must not wait for GitHub.
    pub(crate) fn kept(&self, installation: u64) -> Option<String> {
        if self.gone(installation).is_some() {
            return None;
        }
        let slot = self.slot(installation);
        let cached = slot.try_lock().ok()?;
        cached
            .as_ref()
            .filter(|kept| kept.refresh_at > self.app.github_now())
            .map(|kept| kept.token.clone())
    }

    /// Drops the kept token of `installation` if it is still `refused` (GitHub refused it:
    /// revoked, or the app's permissions changed), so the next comment fetches a new one. Not
    /// waited for: the comment that tells it holds a slot, and the installation's lock may be
    /// held by a fetch GitHub is slow to answer (which replaces the token anyway).
    pub(crate) fn forget(&self, installation: u64, refused: &str) {
        fn drop_if(cached: &mut Option<Cached>, refused: &str) {
            if cached.as_ref().is_some_and(|kept| kept.token == refused) {
                *cached = None;
            }
        }
        let slot = self.slot(installation);
        if let Ok(mut cached) = slot.try_lock() {
            drop_if(&mut cached, refused);
            return;
        }
        let refused = refused.to_owned();
        tokio::spawn(async move { drop_if(&mut *slot.lock().await, &refused) });
    }

    /// The slot of `installation`, made if needed. Past `MAX_INSTALLATIONS` slots, idle ones
    /// whose token lapsed go first, then the idle one that lapses first; slots in use stay, so
    /// the map holds at most that many plus the comments in flight.
    fn slot(&self, installation: u64) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&installation) && slots.len() >= MAX_INSTALLATIONS {
            let now = self.app.github_now();
            // The refresh time of an idle slot (`None`: one in use, being fetched or read).
            let idle = |slot: &Slot| {
                let cached = slot.try_lock().ok()?;
                (Arc::strong_count(slot) == 1)
                    .then(|| cached.as_ref().map_or(UNIX_EPOCH, |kept| kept.refresh_at))
            };
            slots.retain(|_, slot| idle(slot).is_none_or(|refresh_at| refresh_at > now));
            if slots.len() >= MAX_INSTALLATIONS
                && let Some(first) = slots
                    .iter()
                    .filter_map(|(id, slot)| Some((idle(slot)?, *id)))
                    .min()
                    .map(|(_, id)| id)
            {
                slots.remove(&first);
            }
        }
        Arc::clone(slots.entry(installation).or_default())
    }

    /// Asks GitHub who the app is (`GET /app`, as the app), once at startup: a wrong
    /// `GITHUB_APP_ID` (an installation's id, another app's) or a key of another app is refused
    /// there, and said at once, at error level, rather than at the first comment. Without an
    /// answer (GitHub unreachable, slow) nothing is concluded: the comments find out.
    pub(crate) async fn check(&self) {
        self.check_once(false).await;
    }

    /// [`check`](Self::check); `again` once it was refused for a clock found off GitHub's.
    async fn check_once(&self, again: bool) {
        let skew = self.app.skew();
        let request = match app_request(&self.app, &self.api, Method::GET, "/app", &Value::Null) {
            Ok(request) => request,
            Err(err) => {
                tracing::error!(error = %err, "the GitHub App's token could not be made");
                return;
            }
        };
        let res = match self.caller.clone().oneshot(request).await {
            Ok(res) => res,
            Err(err) => {
                let err: &(dyn std::error::Error + 'static) = &*err;
                tracing::debug!(error = %super::error_chain(err), "GitHub not asked about the app at startup");
                return;
            }
        };
        let status = res.status();
        let clock = self.app.refused_for_the_clock(status, res.headers(), skew);
        if clock && !again {
            // Dated by this machine's clock, which GitHub's answer says is off: once more.
            return Box::pin(self.check_once(true)).await;
        }
        if status.is_success() {
            let answer: Value = super::read_at_most(res, ANSWER_LIMIT)
                .await
                .ok()
                .and_then(|body| serde_json::from_slice(&body).ok())
                .unwrap_or_default();
            let slug = answer["slug"].as_str().unwrap_or_default();
            tracing::info!(app = slug, "GitHub App credentials accepted by GitHub");
        } else if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ) {
            tracing::error!(
                status = status.as_u16(),
                "GitHub refused the app's credentials: every comment through the app will fail; check that GITHUB_APP_ID is the app's App ID or Client ID (its settings page), not an installation's id, and that the private key is one of that app's"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                "GitHub did not say who the app is at startup"
            );
        }
    }

    /// `POST /app/installations/{id}/access_tokens`, as the app.
    async fn fetch(&self, installation: u64) -> Result<(String, SystemTime), TokenError> {
        let path = format!("/app/installations/{installation}/access_tokens");
        let skew = self.app.skew();
        let request = app_request(&self.app, &self.api, Method::POST, &path, &json!({}))
            .map_err(|err| TokenError::Refused(err.to_string()))?;
        let res = match self.caller.clone().oneshot(request).await {
            Ok(res) => res,
            Err(err) => {
                let err: &(dyn std::error::Error + 'static) = &*err;
                if let Some(refused) = super::refused_certificate(err) {
                    return Err(TokenError::Refused(format!(
                        "GitHub's TLS certificate was refused ({refused}): {}",
                        super::error_chain(err)
                    )));
                }
                let open = CircuitOpen::find(err);
                return Err(TokenError::Transient {
                    reason: super::error_chain(err),
                    wait: open.map(|open| open.retry_after().unwrap_or(Duration::from_secs(1))),
                    attempted: open.is_none(),
                    secondary_limit: false,
                });
            }
        };
        let status = res.status();
        let clock = self.app.refused_for_the_clock(status, res.headers(), skew);
        if status.is_success() {
            let unreadable = |why: String| TokenError::Transient {
                reason: format!("GitHub's token answer could not be read: {why}"),
                wait: None,
                attempted: true,
                secondary_limit: false,
            };
            let body =
                super::read_at_most(res, ANSWER_LIMIT)
                    .await
                    .map_err(|unread| match unread {
                        super::Unread::TooLarge(_) => {
                            unreadable(format!("it is larger than {} KiB", ANSWER_LIMIT / 1024))
                        }
                        super::Unread::Failed(err) => unreadable(err.to_string()),
                    })?;
            let answer: Value =
                serde_json::from_slice(&body).map_err(|err| unreadable(err.to_string()))?;
            let token = answer["token"]
                .as_str()
                .filter(|token| !token.is_empty())
                .ok_or_else(|| {
                    TokenError::Refused("GitHub's token answer holds no token".into())
                })?;
            let expires_at = answer["expires_at"]
                .as_str()
                .and_then(parse_github_time)
                .unwrap_or_else(|| self.app.github_now() + ASSUMED_LIFE);
            return Ok((token.to_owned(), expires_at));
        }
        let (status, wait, secondary_limit, says) = status_and_limit(Forge::GitHub, res).await;
        let reason = answered(
            format!("GitHub answered {status} to the installation token request"),
            says.as_deref(),
        );
        // A token refused, dated by a clock GitHub's answers have shown to be off since: the
        // next one is dated by GitHub's clock.
        if status.is_server_error()
            || wait.is_some()
            || clock
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(TokenError::Transient {
                reason,
                wait,
                attempted: true,
                secondary_limit,
            })
        } else {
            Err(TokenError::Refused(reason))
        }
    }
}

/// A time as GitHub writes it, `2016-07-11T22:14:10Z` (UTC, whole seconds); `None` for anything
/// else.
pub(crate) fn parse_github_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let shape = b.len() == 20
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'Z'),
        ]
        .iter()
        .all(|&(at, c)| b[at] == c);
    if !shape {
        return None;
    }
    let field = |at: usize, len: usize| -> Option<u64> {
        let digits = &b[at..at + len];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let (year, month, day) = (field(0, 4)?, field(5, 2)?, field(8, 2)?);
    let (hour, minute, second) = (field(11, 2)?, field(14, 2)?, field(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && (1..=month_days[month as usize - 1]).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let leap_years = |y: u64| y / 4 - y / 100 + y / 400;
    let days = (year - 1970) * 365 + leap_years(year - 1) - leap_years(1969)
        + month_days[..month as usize - 1].iter().sum::<u64>()
        + (day - 1);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}
