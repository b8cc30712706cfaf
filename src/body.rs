//! The response body shared by this crate's middleware.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// Response body of the crate's middleware: either the inner service's body, untouched, or a
/// complete body the middleware produced itself (a problem document, a handshake answer).
///
/// It is generic over the inner body so that nothing is boxed on the success path.
///
/// # Example
///
/// ```
/// use http_body_util::BodyExt;
/// use tower_webhook::body::ResponseBody;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body: ResponseBody<http_body_util::Empty<bytes::Bytes>> = ResponseBody::full("done".into());
/// let bytes = body.collect().await.unwrap().to_bytes();
/// assert_eq!(&bytes[..], b"done");
/// # }
/// ```
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    Inner(#[pin] B),
    Full(Option<Bytes>),
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn new(inner: B) -> Self {
        Self {
            kind: Kind::Inner(inner),
        }
    }

    /// A complete body made of `bytes`.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner(inner) => inner.poll_frame(cx),
            KindProj::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(inner) => inner.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(inner) => inner.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
