//! Walking an error's `source()` chain, bounded.
//!
//! A broken `Error` impl can make its chain cyclic (a `source()` that returns itself, or an
//! error further up): every walk goes through [`sources`], which stops at an error already seen
//! and after [`MAX_DEPTH`] errors, so it ends whatever the chain.

use std::error::Error;

/// Most errors a walk visits, the first one included. Real chains are a handful deep.
pub(crate) const MAX_DEPTH: usize = 32;

/// `err` and the errors after it, outermost first, as `next` finds them (usually
/// `Error::source`), each once and at most [`MAX_DEPTH`] of them.
pub(crate) fn walk<'a>(
    err: &'a (dyn Error + 'static),
    next: fn(&'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)>,
) -> Walk<'a> {
    Walk {
        next_err: Some(err),
        next,
        seen: [None; MAX_DEPTH],
        count: 0,
        truncated: false,
    }
}

/// `err` and its `source()` chain, outermost first, each error once and at most
/// [`MAX_DEPTH`] of them.
#[cfg(any(feature = "error", feature = "tunnel"))]
pub(crate) fn sources<'a>(err: &'a (dyn Error + 'static)) -> Walk<'a> {
    walk(err, |e| e.source())
}

/// `err` and the errors it is made of, outermost first, each once and at most [`MAX_DEPTH`] of
/// them: its `source()` chain, except that an `io::Error` made from another error
/// (`io::Error::other(e)`, a body error read through `AsyncRead`) is followed by that error.
/// Such an `io::Error` is `e` in disguise: its `source()` skips `e` and goes on to `e`'s own
/// source, so a walk by `source()` alone never sees `e` (a `CircuitOpen`, or a `hyper::Error`
/// that says the connection was open). This is the walk for looking errors up by type; the
/// `source()` walk ([`sources`]) is the one for messages.
#[cfg(any(feature = "error", feature = "retry"))]
pub(crate) fn links<'a>(err: &'a (dyn Error + 'static)) -> Walk<'a> {
    walk(err, |e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            return Some(inner);
        }
        e.source()
    })
}

/// The iterator of [`walk`].
pub(crate) struct Walk<'a> {
    next_err: Option<&'a (dyn Error + 'static)>,
    next: fn(&'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)>,
    seen: [Option<*const (dyn Error + 'static)>; MAX_DEPTH],
    count: usize,
    truncated: bool,
}

impl Walk<'_> {
    /// Whether the walk stopped before the chain's end: a cycle, or a chain deeper than
    /// [`MAX_DEPTH`].
    #[cfg_attr(not(feature = "error"), allow(dead_code))]
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = &'a (dyn Error + 'static);

    fn next(&mut self) -> Option<Self::Item> {
        let err = self.next_err.take()?;
        let ptr: *const (dyn Error + 'static) = err;
        // The same object seen through the same vtable: a cycle. Two different errors never
        // compare equal (a newtype and the error it wraps share an address, not a vtable); the
        // same error reached through two vtables (`dyn Error + Send + Sync`, `dyn Error`) is
        // caught on its next round, and the depth bound ends any walk.
        #[allow(ambiguous_wide_pointer_comparisons)]
        let again = self.seen[..self.count]
            .iter()
            .any(|seen| seen.is_some_and(|seen| std::ptr::eq(seen, ptr)));
        if again || self.count == MAX_DEPTH {
            self.truncated = true;
            return None;
        }
        self.seen[self.count] = Some(ptr);
        self.count += 1;
        self.next_err = (self.next)(err);
        Some(err)
    }
}
