//! A response body that fails while it streams: for the tests of what the error layer does
//! once the head went out.
#![allow(dead_code)] // not every test file uses each

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tower::BoxError;

/// A body that yields `first`, waits once (as a stream waiting on its source does, so the
/// server sends what it has), then fails: with an error, or a panic.
pub(crate) struct Failing {
    first: Option<Bytes>,
    waited: bool,
    then: Option<Then>,
    /// The exact size it says it has, if any (as a proxied upstream body of a known length).
    exact: Option<u64>,
}

enum Then {
    Error(BoxError),
    Panic(String),
}

impl Failing {
    /// Fails with `error` after `first`.
    pub(crate) fn error(first: impl Into<Bytes>, error: impl Into<BoxError>) -> Self {
        Self::then(first, Then::Error(error.into()))
    }

    /// Panics with `message` after `first`.
    pub(crate) fn panic(first: impl Into<Bytes>, message: impl Into<String>) -> Self {
        Self::then(first, Then::Panic(message.into()))
    }

    fn then(first: impl Into<Bytes>, then: Then) -> Self {
        Self {
            first: Some(first.into()),
            waited: false,
            then: Some(then),
            exact: None,
        }
    }

    /// Says it has exactly `size` bytes.
    pub(crate) fn of_exact_size(mut self, size: u64) -> Self {
        self.exact = Some(size);
        self
    }
}

impl http_body::Body for Failing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if !std::mem::replace(&mut self.waited, true) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.then.take() {
            Some(Then::Error(err)) => Poll::Ready(Some(Err(err))),
            Some(Then::Panic(message)) => panic!("{message}"),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.exact.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}
