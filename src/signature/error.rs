//! Rejections and configuration errors.

use std::time::Duration;

use http::StatusCode;

use crate::error::{GrpcCode, HttpError, types};

/// Why a delivery was rejected.
///
/// [`SignatureLayer`](super::SignatureLayer) answers each of these itself with an RFC 9457
/// problem response (its `Display` text goes to the log, never to the client), and
/// [`SignatureLayer::verify`](super::SignatureLayer::verify) returns them. It implements
/// [`HttpError`], so an outer [`WebhookErrorLayer`](crate::error::WebhookErrorLayer) renders it
/// wherever it shows up in an error chain.
///
/// | variant | status | problem type |
/// |---|---|---|
/// | missing, duplicated or malformed header, too many signatures, stale timestamp, no match | 401 | [`types::INVALID_SIGNATURE`] |
/// | [`PayloadTooLarge`](Self::PayloadTooLarge), [`Body`](Self::Body) from an outer length limit (`http_body_util::LengthLimitError`) | 413 | [`types::PAYLOAD_TOO_LARGE`] |
/// | [`Body`](Self::Body) from an outer body timeout (tower-http's `RequestBodyTimeoutLayer`, or 0.7's `RequestBodyDeadlineLayer`) | 408 | [`types::TIMEOUT`] |
/// | [`MalformedDelivery`](Self::MalformedDelivery), any other [`Body`](Self::Body) error | 400 | [`types::MALFORMED_DELIVERY`] |
/// | [`Replayed`](Self::Replayed) | 409 | [`types::REPLAYED_DELIVERY`] |
/// | [`ReplayStore`](Self::ReplayStore) | 503 + `Retry-After` | [`types::PROCESSING_FAILED`] |
///
/// # Example
///
/// ```
/// use tower_webhook::error::HttpError;
/// use tower_webhook::signature::SignatureValidationError;
///
/// let err = SignatureValidationError::Mismatch;
/// assert_eq!(err.status(), 401);
/// assert_eq!(err.detail(), None); // nothing for the client
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureValidationError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(http::HeaderName),
    /// A header that must appear once appears several times.
    #[error("header `{0}` appears more than once")]
    DuplicateHeader(http::HeaderName),
    /// A header's value does not follow the provider's format.
    #[error("malformed header `{0}`")]
    MalformedHeader(http::HeaderName),
    /// More signatures than the configured cap.
    #[error("more than {0} signatures in one delivery")]
    TooManySignatures(usize),
    /// The signed timestamp is outside the accepted window.
    #[error("timestamp {timestamp} is outside the {tolerance:?} window around {now}")]
    TimestampOutOfWindow {
        /// The timestamp sent, in Unix seconds.
        timestamp: u64,
        /// The receiver's clock, in Unix seconds.
        now: u64,
        /// The window.
        tolerance: Duration,
    },
    /// No signature matched any secret.
    #[error("no signature matches any configured secret")]
    Mismatch,
    /// The body is larger than the limit.
    #[error("body larger than the {limit} byte limit")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the request body failed (413 when an outer length limit stopped it, 408 when an
    /// outer body timeout did, else 400; also when that error arrives inside an `io::Error`).
    #[error("could not read the request body")]
    Body(#[source] crate::BoxError),
    /// The delivery is authentic but lacks what the layer needs (e.g. a delivery id).
    #[error("authenticated delivery is malformed: {0}")]
    MalformedDelivery(&'static str),
    /// The delivery id was seen before.
    #[error("delivery `{0}` was already received")]
    Replayed(String),
    /// The replay store could not be reached; the delivery is refused (fail closed).
    #[error("replay store unavailable")]
    ReplayStore(#[source] crate::BoxError),
}

/// What stopped a body that could not be read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFailure {
    /// An outer length limit (`http_body_util::Limited`, as tower-http's
    /// `RequestBodyLimitLayer` uses): the body is too large, not malformed.
    OverLimit,
    /// An outer body timeout (tower-http's `RequestBodyTimeoutLayer`): the client stopped
    /// sending.
    TimedOut,
    /// Anything else: the body is malformed.
    Other,
}

impl SignatureValidationError {
    /// The class of a [`Body`](Self::Body) error, from the first known error in its chain.
    fn body_failure(&self) -> Option<BodyFailure> {
        let Self::Body(source) = self else {
            return None;
        };
        // As the error layer walks it: bounded (a broken `Error` impl can make the chain a
        // cycle), and an `io::Error` made from another error (`io::Error::other(e)`, a body read
        // through `AsyncRead`) stands for that error, which its `source()` skips.
        for err in crate::error::classify::chain(source.as_ref()) {
            if err.is::<http_body_util::LengthLimitError>() {
                return Some(BodyFailure::OverLimit);
            }
            if crate::error::classify::is_body_timeout(err) {
                return Some(BodyFailure::TimedOut);
            }
        }
        Some(BodyFailure::Other)
    }
}

impl HttpError for SignatureValidationError {
    fn status(&self) -> StatusCode {
        match self.body_failure() {
            Some(BodyFailure::OverLimit) => return StatusCode::PAYLOAD_TOO_LARGE,
            Some(BodyFailure::TimedOut) => return StatusCode::REQUEST_TIMEOUT,
            Some(BodyFailure::Other) | None => {}
        }
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MalformedDelivery(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::Replayed(_) => StatusCode::CONFLICT,
            Self::ReplayStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn problem_type(&self) -> &str {
        match self.body_failure() {
            Some(BodyFailure::OverLimit) => return types::PAYLOAD_TOO_LARGE,
            Some(BodyFailure::TimedOut) => return types::TIMEOUT,
            Some(BodyFailure::Other) | None => {}
        }
        match self {
            Self::PayloadTooLarge { .. } => types::PAYLOAD_TOO_LARGE,
            Self::MalformedDelivery(_) | Self::Body(_) => types::MALFORMED_DELIVERY,
            Self::Replayed(_) => types::REPLAYED_DELIVERY,
            Self::ReplayStore(_) => types::PROCESSING_FAILED,
            _ => types::INVALID_SIGNATURE,
        }
    }

    fn title(&self) -> &str {
        match self.body_failure() {
            Some(BodyFailure::OverLimit) => return "Payload Too Large",
            Some(BodyFailure::TimedOut) => return "Request Timeout",
            Some(BodyFailure::Other) | None => {}
        }
        match self {
            Self::PayloadTooLarge { .. } => "Payload Too Large",
            Self::MalformedDelivery(_) | Self::Body(_) => "Malformed Delivery",
            Self::Replayed(_) => "Replayed Delivery",
            Self::ReplayStore(_) => "Webhook Processing Failed",
            _ => "Invalid Signature",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::ReplayStore(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// `Signature` for the errors answered 401: the client must send a valid signature.
    fn challenge(&self) -> Option<std::borrow::Cow<'_, str>> {
        (self.status() == StatusCode::UNAUTHORIZED)
            .then_some(std::borrow::Cow::Borrowed("Signature"))
    }

    fn grpc_code(&self) -> GrpcCode {
        match self.body_failure() {
            Some(BodyFailure::OverLimit) => return GrpcCode::OutOfRange,
            Some(BodyFailure::TimedOut) => return GrpcCode::DeadlineExceeded,
            Some(BodyFailure::Other) | None => {}
        }
        match self {
            Self::PayloadTooLarge { .. } => GrpcCode::OutOfRange,
            Self::MalformedDelivery(_) | Self::Body(_) => GrpcCode::InvalidArgument,
            Self::Replayed(_) => GrpcCode::AlreadyExists,
            Self::ReplayStore(_) => GrpcCode::Unavailable,
            _ => GrpcCode::Unauthenticated,
        }
    }
}

/// A [`SignatureLayer`](super::SignatureLayer) could not be built: the layer fails closed
/// instead of accepting unverified deliveries.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::{SignatureConfigError, SignatureLayer};
///
/// let err = SignatureLayer::github("").unwrap_err();
/// assert!(matches!(err, SignatureConfigError::EmptySecret));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureConfigError {
    /// A secret is empty or nothing but whitespace (as an unset secret often arrives: a lone
    /// newline, a space), or none was given.
    #[error(
        "webhook secret is empty or blank: set the secret the provider signs with (refusing to run unverified)"
    )]
    EmptySecret,
    /// An environment variable holding secrets is unset, empty or not UTF-8 text.
    #[error(
        "environment variable `{0}` is unset, empty or not UTF-8 text: set it to the webhook secret (comma-separated for several)"
    )]
    MissingEnv(String),
    /// An environment variable read by [`Secrets::from_env_list`](super::Secrets::from_env_list)
    /// holds an empty item in its comma-separated list: two commas in a row, or one at either
    /// end.
    ///
    /// ```
    /// use tower_webhook::signature::SignatureConfigError;
    ///
    /// // What `Secrets::from_env_list("GITHUB_WEBHOOK_SECRET")` answers for `new-secret,`.
    /// let err = SignatureConfigError::EmptyEnvItem("GITHUB_WEBHOOK_SECRET".into());
    /// assert!(err.to_string().contains("`GITHUB_WEBHOOK_SECRET`"));
    /// ```
    #[error(
        "environment variable `{0}` holds an empty item in its comma-separated list of secrets (two commas in a row, or one at either end): remove the extra comma"
    )]
    EmptyEnvItem(String),
    /// A comma-separated list of several secrets ([`Secrets::from_list`](super::Secrets::from_list),
    /// [`Secrets::from_env_list`](super::Secrets::from_env_list)) holds one shorter than 8
    /// bytes: most likely a secret that holds a comma, split at it, whose short piece would be
    /// a secret of its own that a sender could guess. Names the list (`the list`, or
    /// ``environment variable `NAME` ``), never the secrets.
    ///
    /// ```
    /// use tower_webhook::signature::{Secrets, SignatureConfigError};
    ///
    /// let err = Secrets::from_list("Zq8!vP2#mR,7").unwrap_err();
    /// assert!(matches!(err, SignatureConfigError::ShortListItem(_)));
    /// ```
    #[error(
        "{0} holds a secret shorter than 8 bytes in its comma-separated list: commas separate the secrets of a rotation, so a secret that holds one is split at it, and its short piece would be accepted alone; give such a secret with `Secrets::with`, or use secrets of 8 bytes or more"
    )]
    ShortListItem(String),
    /// A Standard Webhooks secret is not `whsec_` followed by base64.
    #[error("Standard Webhooks secret must be base64, optionally prefixed with `whsec_`")]
    InvalidStandardWebhooksSecret,
    /// A header name given to a custom scheme is not a valid header name.
    #[error("`{0}` is not a valid header name")]
    InvalidHeaderName(String),
    /// A setting is out of range.
    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}
