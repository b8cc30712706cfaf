//! Secrets: redacted in `Debug`, zeroized on drop, never empty.

use std::fmt;

use zeroize::Zeroizing;

use super::error::SignatureConfigError;

/// One webhook secret (or token, or credential).
///
/// Its bytes are wiped from memory when it is dropped and never printed: `Debug` shows
/// `Secret(<redacted>)`. Build one from a `&str`, `String`, `&[u8]` or `Vec<u8>`; an owned
/// `String` or `Vec<u8>` is moved in, so no copy is left behind. Emptiness is checked when the
/// secret is given to a [`SignatureLayer`](super::SignatureLayer) constructor, which fails
/// instead of accepting every request; a secret of only whitespace counts as empty there.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::Secret;
///
/// let secret = Secret::from("It's a Secret to Everybody");
/// assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
/// assert_eq!(secret.len(), 26);
/// ```
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The secret's length in bytes.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::Secret;
    ///
    /// assert_eq!(Secret::from("It's a Secret to Everybody").len(), 26);
    /// assert_eq!(Secret::from(vec![0u8; 32]).len(), 32);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (an empty secret is refused by every constructor).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Secret, SignatureConfigError, SignatureLayer};
    ///
    /// let secret = Secret::from(String::new()); // e.g. an unset variable read as ""
    /// assert!(secret.is_empty());
    /// let err = SignatureLayer::github(secret).unwrap_err();
    /// assert!(matches!(err, SignatureConfigError::EmptySecret));
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::from_vec(value.as_bytes().to_vec())
    }
}

impl From<&String> for Secret {
    fn from(value: &String) -> Self {
        Self::from(value.as_str())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::from_vec(value.into_bytes())
    }
}

impl From<&[u8]> for Secret {
    fn from(value: &[u8]) -> Self {
        Self::from_vec(value.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Secret {
    fn from(value: &[u8; N]) -> Self {
        Self::from_vec(value.to_vec())
    }
}

impl From<Vec<u8>> for Secret {
    fn from(value: Vec<u8>) -> Self {
        Self::from_vec(value)
    }
}

/// Several secrets accepted at once, for rotation: a delivery signed with any of them passes.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::{Secrets, SignatureLayer};
///
/// // In production: Secrets::from_env_list("WEBHOOK_SECRETS")? with WEBHOOK_SECRETS="new,old".
/// let secrets = Secrets::from_list("new-secret, old-secret").unwrap();
/// assert_eq!(secrets.len(), 2);
/// let layer = SignatureLayer::github_with_secrets(secrets).unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct Secrets(Vec<Secret>);

/// The shortest secret a list of several may hold, in bytes. See [`Secrets::from_list`].
const MIN_LISTED: usize = 8;

impl Secrets {
    /// No secrets yet.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::Secrets;
    ///
    /// let secrets = Secrets::new();
    /// assert!(secrets.is_empty());
    /// assert_eq!(secrets.with("new-secret").len(), 1);
    /// ```
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds a secret.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Secrets, SignatureLayer};
    ///
    /// let secrets = Secrets::new().with("new-secret").with(String::from("old-secret"));
    /// let layer = SignatureLayer::github_with_secrets(secrets).unwrap();
    ///
    /// // A delivery still signed with the old secret passes, and says so.
    /// let req = http::Request::post("/hook")
    ///     .header("x-hub-signature-256", "sha256=e7f4750c1d0580871565739b45147585cd7f2622003135f604ae5d6aac8f9577")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.secret_index(), Some(1));
    /// ```
    pub fn with(mut self, secret: impl Into<Secret>) -> Self {
        self.0.push(secret.into());
        self
    }

    /// Splits a comma-separated list (surrounding spaces trimmed), refusing empty items.
    ///
    /// A secret cannot hold a comma here: it would be split at it, and each piece accepted as
    /// a secret of its own. So a list of several refuses an item shorter than 8 bytes
    /// ([`SignatureConfigError::ShortListItem`]), which is what a secret split at a comma near
    /// its end leaves. A list of one item is never split; give a secret that holds a comma
    /// with [`Secrets::with`].
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Secrets, SignatureConfigError};
    ///
    /// let secrets = Secrets::from_list("new-secret, old-secret").unwrap();
    /// assert_eq!(secrets.len(), 2);
    ///
    /// let err = Secrets::from_list("new-secret,,old-secret").unwrap_err();
    /// assert!(matches!(err, SignatureConfigError::EmptySecret));
    /// ```
    pub fn from_list(list: &str) -> Result<Self, SignatureConfigError> {
        Self::split(list, "the list")
    }

    /// [`Secrets::from_list`], with `source` naming the list in a short item's error.
    fn split(list: &str, source: &str) -> Result<Self, SignatureConfigError> {
        let mut secrets = Self::new();
        for item in list.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(SignatureConfigError::EmptySecret);
            }
            secrets.0.push(Secret::from(item));
        }
        if secrets.0.len() > 1 && secrets.0.iter().any(|secret| secret.len() < MIN_LISTED) {
            return Err(SignatureConfigError::ShortListItem(source.to_owned()));
        }
        Ok(secrets)
    }

    /// Reads the environment variable `name` and splits it with [`Secrets::from_list`].
    ///
    /// A missing, non-UTF-8 or empty variable is an error naming the variable: a webhook
    /// endpoint never starts without a secret. So is an empty item (two commas in a row, or one
    /// at either end, as a rotation that removed a secret may leave):
    /// [`SignatureConfigError::EmptyEnvItem`]. So is a list of several that holds a secret
    /// shorter than 8 bytes, as a secret split at a comma leaves:
    /// [`SignatureConfigError::ShortListItem`]. The value read is wiped from memory once split.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Secrets, SignatureConfigError};
    ///
    /// // At startup, with GITHUB_WEBHOOK_SECRET="new-secret,old-secret":
    /// // let layer = SignatureLayer::github_with_secrets(Secrets::from_env_list("GITHUB_WEBHOOK_SECRET")?)?;
    /// let err = Secrets::from_env_list("TOWER_WEBHOOK_EXAMPLE_UNSET").unwrap_err();
    /// assert!(matches!(&err, SignatureConfigError::MissingEnv(name) if name == "TOWER_WEBHOOK_EXAMPLE_UNSET"));
    /// assert!(err.to_string().contains("TOWER_WEBHOOK_EXAMPLE_UNSET"));
    /// ```
    pub fn from_env_list(name: &str) -> Result<Self, SignatureConfigError> {
        let missing = || SignatureConfigError::MissingEnv(name.to_owned());
        // The bytes as they came, wiped on drop, also when they are not UTF-8 (`env::var` would
        // hand them back in its error, and drop them unwiped).
        let raw = Zeroizing::new(
            std::env::var_os(name)
                .ok_or_else(missing)?
                .into_encoded_bytes(),
        );
        let value = std::str::from_utf8(&raw).map_err(|_| missing())?;
        if value.trim().is_empty() {
            return Err(missing());
        }
        Self::split(value, &format!("environment variable `{name}`")).map_err(|err| match err {
            SignatureConfigError::EmptySecret => {
                SignatureConfigError::EmptyEnvItem(name.to_owned())
            }
            other => other,
        })
    }

    /// How many secrets there are.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::Secrets;
    ///
    /// let secrets = Secrets::from(["2024-secret", "2025-secret"]);
    /// assert_eq!(secrets.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::Secrets;
    ///
    /// assert!(Secrets::default().is_empty());
    /// assert!(!Secrets::from(vec!["secret"]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<Secret> {
        self.0
    }
}

impl<T: Into<Secret>> FromIterator<T> for Secrets {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self(iter.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Secret>, const N: usize> From<[T; N]> for Secrets {
    fn from(value: [T; N]) -> Self {
        value.into_iter().collect()
    }
}

impl<T: Into<Secret>> From<Vec<T>> for Secrets {
    fn from(value: Vec<T>) -> Self {
        value.into_iter().collect()
    }
}
