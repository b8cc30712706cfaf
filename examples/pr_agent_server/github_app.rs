//! A GitHub App's credentials, and the JSON Web Token that authenticates as the app.
//!
//! GitHub signs nothing here: the server signs a short-lived JWT (RS256) with the app's private
//! key, and the app API (`/app/...`) takes it as `Authorization: Bearer <jwt>`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

/// How long before `now` a token says it was issued: GitHub advises a minute, for clock drift.
const ISSUED_BEFORE_SECS: u64 = 60;
/// How long after `now` a token expires. GitHub refuses tokens that live more than 10 minutes
/// (issue to expiry), so 9 minutes after `now` is 10 minutes after the stated issue time.
const EXPIRES_AFTER_SECS: u64 = 9 * 60;

/// A GitHub App: its id (the app id or client id, the token's issuer) and its private key.
#[derive(Clone)]
pub(crate) struct GithubApp {
    id: String,
    key: Arc<RsaKeyPair>,
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
        })
    }

    /// Whether `id` looks like an app id (digits) or a client id (`Iv1.` and hex digits).
    pub(crate) fn check_id(id: &str) -> Result<(), String> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(())
        } else {
            Err(format!(
                "{id:?} is not a GitHub App id or client id (digits, or letters, digits and ._-)"
            ))
        }
    }

    /// The app's id, as given.
    pub(crate) fn id(&self) -> &str {
        &self.id
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
    let (label, rest) = pem[start + BEGIN.len()..]
        .split_once("-----")
        .ok_or("a PEM block without the end of its `-----BEGIN` line")?;
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
        .map_err(|err| format!("the PEM block is not base64 ({err})"))?;
    Ok((label, der))
}
