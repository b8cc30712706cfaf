//! Webhook signature verification (work in progress on this branch).

/// Recognises this module's errors for [`WebhookErrorLayer`](crate::error::WebhookErrorLayer).
pub(crate) fn recognize(_err: &(dyn std::error::Error + 'static)) -> Option<crate::error::Problem> {
    None
}
