//! What a caught panic says, and how its payload is let go.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The message of a panic payload, when it is a string (as `panic!` makes it).
pub(crate) fn message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Drops a caught panic's payload. One whose own `Drop` panics (`std::panic::panic_any` of such
/// a type) would unwind from where the first panic was caught: that panic is caught too and
/// logged, and its own payload forgotten rather than dropped in turn.
#[cfg_attr(not(feature = "error"), allow(dead_code))]
pub(crate) fn dispose(payload: Box<dyn Any + Send>) {
    if let Err(nested) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        let shown =
            crate::redact::redact(message(&*nested).unwrap_or("<non-string panic payload>"));
        tracing::error!(
            panic = &*shown,
            "a panic's payload panicked while it was dropped"
        );
        drop(shown);
        std::mem::forget(nested);
    }
}
