use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::problem::{HttpError, types};
use crate::BoxError;

/// A webhook could not be processed.
///
/// Return it from a handler when the delivery was fine but the work failed. It answers 500, or
/// 503 with `Retry-After` when the failure is transient, so the provider redelivers later.
/// The cause is kept as the error's `source()` for the log; the client never sees it.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::error::{HttpError, WebhookProcessingError};
///
/// let err = WebhookProcessingError::new("could not reach the model API");
/// assert_eq!(err.status(), 500);
///
/// let err = WebhookProcessingError::retryable("queue is full", Duration::from_secs(10));
/// assert_eq!(err.status(), 503);
/// assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
/// ```
pub struct WebhookProcessingError {
    source: BoxError,
    retry_after: Option<Duration>,
}

/// The source as the layer logs it: its chain, with credentials redacted (a reqwest error's
/// `Debug` names the URL it called, query included).
impl fmt::Debug for WebhookProcessingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = crate::redact::redacted(super::layer::ErrorChain(&*self.source).to_string());
        f.debug_struct("WebhookProcessingError")
            .field("source", &source)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl WebhookProcessingError {
    /// A permanent processing failure (500) caused by `source`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::error::Error as _;
    /// use tower_webhook::error::{HttpError, WebhookProcessingError};
    ///
    /// let cause = std::io::Error::other("model API answered 500");
    /// let err = WebhookProcessingError::new(cause);
    /// assert!(!err.is_retryable());
    /// assert_eq!(err.status(), 500);
    /// assert_eq!(err.to_string(), "webhook processing failed");
    /// assert_eq!(err.source().unwrap().to_string(), "model API answered 500"); // for the log
    /// ```
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
            retry_after: None,
        }
    }

    /// A transient failure (503): the provider should deliver again after `after`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{WebhookErrorLayer, WebhookProcessingError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .service_fn(|_: Request<String>| async {
    ///         let busy = WebhookProcessingError::retryable("job queue is full", Duration::from_secs(30));
    ///         Err::<Response<String>, _>(busy)
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "30");
    /// # }
    /// ```
    pub fn retryable(source: impl Into<BoxError>, after: Duration) -> Self {
        Self {
            source: source.into(),
            retry_after: Some(after),
        }
    }

    /// Whether the provider should deliver again.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::error::WebhookProcessingError;
    ///
    /// let failed = WebhookProcessingError::new("unsupported event");
    /// assert!(!failed.is_retryable());
    /// let busy = WebhookProcessingError::retryable("rate limited by the API", Duration::from_secs(60));
    /// assert!(busy.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.retry_after.is_some()
    }
}

impl fmt::Display for WebhookProcessingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("webhook processing failed")
    }
}

impl std::error::Error for WebhookProcessingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl HttpError for WebhookProcessingError {
    fn status(&self) -> StatusCode {
        if self.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    fn problem_type(&self) -> &str {
        types::PROCESSING_FAILED
    }

    fn title(&self) -> &str {
        "Webhook Processing Failed"
    }

    fn detail(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
