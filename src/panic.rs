//! What a caught panic says.

use std::any::Any;

/// The message of a panic payload, when it is a string (as `panic!` makes it).
pub(crate) fn message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
