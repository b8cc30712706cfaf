//! Bodies: the response body of `SignatureLayer`'s service (feature `signature`),
//! and a request body for plain hyper. (`WebhookErrorLayer` has its own,
//! `tower_webhook::error::ResponseBody`, which also guards the inner body while it streams.)
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_webhook::body::{RequestBody, ResponseBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A middleware's own answer, in place of the inner service's body type.
//! let answer: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"{}"));
//! assert_eq!(&answer.collect().await.unwrap().to_bytes()[..], b"{}");
//! // Any request body with `Bytes` data, as one type.
//! let request = RequestBody::new(Full::new(Bytes::from_static(b"payload")));
//! assert_eq!(&request.collect().await.unwrap().to_bytes()[..], b"payload");
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// Response body of `SignatureLayer`'s service (feature `signature`): either the
/// inner service's body, untouched, or a complete body the layer produced itself (a problem
/// document, a handshake answer).
///
/// With `RecordDelivery::AfterSuccess`, the
/// body of a gRPC call whose status comes in its trailers is watched to its end: the delivery id
/// is settled in the replay store by the trailers' `grpc-status`, and the trailers (or the end
/// of a body without them) are handed on once the store has answered. A gRPC-web answer's body
/// is read as it passes for the trailer frame that ends it, and the data frame that completes
/// it is handed on once the store has answered. Its frames are otherwise passed on as they
/// come, unchanged.
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
    /// The inner service's body, the answer of a gRPC call whose status comes at the end of the
    /// body (trailers, or gRPC-web's trailer frame): its delivery id is settled in the replay
    /// store when the status comes.
    #[cfg(feature = "signature")]
    Grpc {
        // Declared first, so dropped first: the claim of a body dropped before its end (the
        // client went away) is released before the inner body goes.
        settle: Box<crate::signature::SettleAtEnd>,
        #[pin]
        body: B,
    },
    Full(Option<Bytes>),
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_webhook::body::ResponseBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ResponseBody::new(Full::new(Bytes::from_static(b"from the handler")));
    /// assert_eq!(body.size_hint().exact(), Some(16));
    /// assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"from the handler");
    /// # }
    /// ```
    pub fn new(inner: B) -> Self {
        Self {
            kind: Kind::Inner(inner),
        }
    }

    /// A complete body made of `bytes`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::{BodyExt, Empty};
    /// use tower_webhook::body::ResponseBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let doc = Bytes::from_static(br#"{"status":401}"#);
    /// let body: ResponseBody<Empty<Bytes>> = ResponseBody::full(doc.clone());
    /// assert_eq!(body.size_hint().exact(), Some(doc.len() as u64));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), doc);
    /// # }
    /// ```
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
        }
    }

    /// An empty body.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::Full;
    /// use tower_webhook::body::ResponseBody;
    ///
    /// let body: ResponseBody<Full<Bytes>> = ResponseBody::empty();
    /// assert!(body.is_end_stream());
    /// assert_eq!(body.size_hint().exact(), Some(0));
    /// ```
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }
}

impl<B> ResponseBody<B> {
    /// Whether this is the inner service's body (not a body the middleware made).
    #[cfg(feature = "error")]
    pub(crate) fn is_inner(&self) -> bool {
        match self.kind {
            Kind::Inner(_) => true,
            #[cfg(feature = "signature")]
            Kind::Grpc { .. } => true,
            Kind::Full(_) => false,
        }
    }

    /// Wraps the inner service's body, the streamed answer of a gRPC call: `settle` settles its
    /// delivery id when the body ends (see [`SettleAtEnd`](crate::signature::SettleAtEnd)).
    #[cfg(feature = "signature")]
    pub(crate) fn settled_at_end(body: B, settle: crate::signature::SettleAtEnd) -> Self {
        Self {
            kind: Kind::Grpc {
                settle: Box::new(settle),
                body,
            },
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
            #[cfg(feature = "signature")]
            KindProj::Grpc { settle, body } => settle.poll_frame(body, cx),
            KindProj::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(inner) => inner.is_end_stream(),
            // Not before its ending was seen: hyper would end the stream without polling for it.
            #[cfg(feature = "signature")]
            Kind::Grpc { settle, body } => settle.ended() && body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(inner) => inner.size_hint(),
            // Never an exact length: over HTTP/1.1 hyper would answer with `Content-Length`,
            // and drop the body once that many bytes are out, before its trailers (the call's
            // status, which settles the delivery) were polled.
            #[cfg(feature = "signature")]
            Kind::Grpc { body, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(body.size_hint().lower());
                hint
            }
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A request body that any body converts into, and that can be built from [`Bytes`].
///
/// `SignatureLayer` (feature `signature`) hands the verified bytes on in the
/// request body type it received, so that type must be buildable from `Bytes`. axum's body is;
/// hyper's `Incoming` is not. Map `Incoming` (or any other body) to `RequestBody` first; it wraps
/// the body without reading it.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::{BodyExt, Full};
/// use tower_webhook::body::RequestBody;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // On a hyper server: `.map_request(|req: Request<Incoming>| req.map(RequestBody::new))`.
/// let req = Request::new(Full::new(Bytes::from_static(b"{}"))).map(RequestBody::new);
/// let bytes = req.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(&bytes[..], b"{}");
///
/// let verified = RequestBody::from(Bytes::from_static(b"again"));
/// assert_eq!(&verified.collect().await.unwrap().to_bytes()[..], b"again");
/// # }
/// ```
pub struct RequestBody {
    kind: RequestKind,
}

enum RequestKind {
    Full(Option<Bytes>),
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, crate::BoxError>),
}

impl RequestBody {
    /// Wraps any body whose data is `Bytes`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_webhook::body::RequestBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = RequestBody::new(Full::new(Bytes::from_static(b"payload=%7B%7D")));
    /// assert_eq!(body.size_hint().exact(), Some(14));
    /// assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"payload=%7B%7D");
    /// # }
    /// ```
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        use http_body_util::BodyExt;
        Self {
            kind: RequestKind::Boxed(body.map_err(Into::into).boxed_unsync()),
        }
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: RequestKind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::from(Bytes::new())
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Full(bytes) => f
                .debug_struct("RequestBody")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            RequestKind::Boxed(_) => f.debug_struct("RequestBody").finish_non_exhaustive(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().kind {
            RequestKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestKind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Full(bytes) => bytes.is_none(),
            RequestKind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestKind::Boxed(body) => body.size_hint(),
        }
    }
}
