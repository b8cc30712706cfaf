//! The response body of [`WebhookError`](super::WebhookError): the inner service's body,
//! guarded while it streams, or a body the layer made.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use super::classify;
use super::grpc::GrpcCode;
use super::layer::{ErrorChain, Grpc, panic_message};
use super::problem::Problem;
use crate::BoxError;

/// Response body of [`WebhookError`](super::WebhookError): the inner service's body, guarded
/// while it streams, or a complete body the layer made (a problem document).
///
/// The status of a response is sent before its body, so a failure while the body streams can
/// no longer become an error response. The layer still answers it the way each protocol reads
/// as a failure, and logs it once (`error`, or `warn` for a gRPC client error), with the error
/// chain or the panic message:
///
/// - HTTP: the body yields an error ([`BoxError`]: "the response body failed" or "... panicked",
///   never the inner error, whose text the layer logged with credentials redacted, and which a
///   tracing layer outside would log as it is), so the server cuts the response short:
///   HTTP/2 resets the stream, HTTP/1.1 closes the connection before the body's last chunk or
///   its declared length. The client sees an incomplete response, never one that looks
///   complete. The other streams of an HTTP/2 connection go on. (An HTTP/1.0 answer without a
///   `Content-Length` is delimited by the connection's close: there the close is the only end
///   a server can give it, and its client cannot tell.)
/// - gRPC: the stream ends with `grpc-status` and `grpc-message` trailers, as gRPC servers end a
///   call that fails after its first message: the error's code as the layer maps errors (a
///   `tonic::Status` keeps its own; its message only for a client error), `Internal` for a
///   panic, an unknown error or one that says success (a `tonic::Status` whose code is `Ok`, a
///   2xx [`Problem`]: never `Ok` for a stream that failed). gRPC-web gets them as its trailer
///   frame in the body (base64-encoded for `application/grpc-web-text`), when the body failed
///   between two messages; one that failed inside a message (a proxied stream cut off), after
///   its own trailer frame, or whose base64 the layer cannot follow (a character outside the
///   standard alphabet) is cut short like an HTTP response, and logged as one (`error`): the
///   client would read the trailer frame as the rest of that message. This is for a gRPC
///   stream only: the answer to a gRPC request that is a `200` typed as the request
///   (`application/grpc...`, `application/grpc-web...`) without `grpc-status` or
///   `Content-Length` in its head. Any other answer to it (a router's `404` page, a proxy's
///   `503`, a trailers-only answer, one whose length was declared) is cut short like an HTTP
///   response: trailers, or a trailer frame inside an HTML page or past the declared length,
///   would end it as if complete.
///
/// A panic in the inner body's `poll_frame` is caught: its message goes to the log, never to
/// the client. The inner body is then dropped (a panic in its `Drop` is caught and logged too)
/// and never polled again. The error's own code is guarded too: a panic in its `Display` or its
/// `Drop` is caught and logged, and the stream still ends as above. The layer's own recognizers
/// ([`WebhookErrorLayer::recognize`]) are not consulted for a body's errors, only the errors
/// the layer knows itself.
///
/// Nothing is boxed: on the success path the body is the inner body, a tag, and the gRPC
/// protocol of the stream, if it is one, with where a gRPC-web stream is in its messages.
///
/// [`WebhookErrorLayer::recognize`]: super::WebhookErrorLayer::recognize
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, StreamBody};
/// use http_body::Frame;
/// use std::convert::Infallible;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_webhook::error::WebhookErrorLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A handler whose streamed body fails after its first chunk.
/// let svc = ServiceBuilder::new()
///     .layer(WebhookErrorLayer::new())
///     .service_fn(|_req: Request<String>| async {
///         let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
///             Ok(Frame::data(Bytes::from_static(b"partial"))),
///             Err("upstream connection lost".into()),
///         ];
///         let body = StreamBody::new(futures_util::stream::iter(chunks));
///         Ok::<_, Infallible>(Response::new(body))
///     });
/// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), 200); // already sent when the body failed
/// let mut body = res.into_body();
/// let first = body.frame().await.unwrap().unwrap();
/// assert_eq!(first.into_data().unwrap(), "partial");
/// // The error was logged; the server gets one of the layer's, and cuts the response short.
/// let err = body.frame().await.unwrap().unwrap_err();
/// assert_eq!(err.to_string(), "the response body failed");
/// assert!(body.frame().await.is_none());
/// # }
/// ```
#[pin_project]
pub struct ResponseBody<B> {
    /// The inner body, or a complete body the layer made (and, after a failure, nothing).
    #[pin]
    body: crate::body::ResponseBody<B>,
    /// The gRPC protocol of the stream the inner body is (`None`: HTTP, or not a gRPC stream).
    grpc: Option<Grpc>,
    /// Where a gRPC-web stream is in its messages.
    framing: Framing,
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body, answering an HTTP request: a failure while it streams
    /// is logged and yields an error.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_webhook::error::ResponseBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ResponseBody::new(Full::new(Bytes::from_static(b"from the handler")));
    /// assert_eq!(body.size_hint().exact(), Some(16));
    /// assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"from the handler");
    /// # }
    /// ```
    pub fn new(inner: B) -> Self {
        Self::inner(inner, None)
    }

    /// Wraps the inner service's body, answering a request of `grpc` (or HTTP, for `None`).
    #[inline]
    pub(super) fn inner(inner: B, grpc: Option<Grpc>) -> Self {
        Self {
            body: crate::body::ResponseBody::new(inner),
            grpc,
            framing: Framing::default(),
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
    /// use tower_webhook::error::ResponseBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let doc = Bytes::from_static(br#"{"status":503}"#);
    /// let body: ResponseBody<Empty<Bytes>> = ResponseBody::full(doc.clone());
    /// assert_eq!(body.size_hint().exact(), Some(doc.len() as u64));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), doc);
    /// # }
    /// ```
    pub fn full(bytes: Bytes) -> Self {
        Self {
            body: crate::body::ResponseBody::full(bytes),
            grpc: None,
            framing: Framing::default(),
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
    /// use tower_webhook::error::ResponseBody;
    ///
    /// let body: ResponseBody<Full<Bytes>> = ResponseBody::empty();
    /// assert!(body.is_end_stream());
    /// assert_eq!(body.size_hint().exact(), Some(0));
    /// ```
    pub fn empty() -> Self {
        Self {
            body: crate::body::ResponseBody::empty(),
            grpc: None,
            framing: Framing::default(),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.body.is_inner(), self.grpc) {
            (true, None) => "http",
            (true, Some(_)) => "grpc",
            (false, _) => "full",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let (mut body, grpc) = (this.body, *this.grpc);
        let failure = match catch_unwind(AssertUnwindSafe(|| body.as_mut().poll_frame(cx))) {
            Ok(Poll::Ready(Some(Ok(frame)))) => {
                if let Some(web @ (Grpc::Web | Grpc::WebText)) = grpc
                    && let Some(data) = frame.data_ref()
                {
                    this.framing.follow(web, data);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Ok(Poll::Ready(None)) => return Poll::Ready(None),
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Some(Err(err)))) => Failure::Error(err.into()),
            Err(payload) => Failure::Panic(payload),
        };
        // A gRPC-web stream cut inside a message has no room for a trailer frame.
        let grpc = grpc.filter(|&g| g == Grpc::Native || this.framing.between_messages());
        Poll::Ready(Some(fail(body, failure, grpc)))
    }

    /// A panic in the inner body's is caught (hyper asks in the connection's task, where it
    /// would end every stream of the connection): the stream is then not at its end, and the
    /// next `poll_frame` finds out how the body fails.
    fn is_end_stream(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.body.is_end_stream()))
            .unwrap_or_else(|payload| asked_in_vain("is_end_stream", payload, false))
    }

    /// As `is_end_stream`, a panic in the inner body's is caught: no size is known then.
    fn size_hint(&self) -> SizeHint {
        let hint = catch_unwind(AssertUnwindSafe(|| self.body.size_hint()))
            .unwrap_or_else(|payload| asked_in_vain("size_hint", payload, SizeHint::new()));
        match self.grpc {
            // A gRPC stream's failure ends it with trailers (a trailer frame for gRPC-web) the
            // inner body does not count: a length declared from its exact size (as hyper does
            // without a `Content-Length`) would cut gRPC-web's frame short, and end the stream
            // as if complete, and make HTTP/2 trailers after it a protocol error.
            Some(_) if hint.exact().is_some() => {
                let mut open = SizeHint::new();
                open.set_lower(hint.lower());
                open
            }
            _ => hint,
        }
    }
}

/// `answer`, for the inner body's `method` that panicked with `payload`: the panic is logged.
fn asked_in_vain<T>(method: &str, payload: Box<dyn std::any::Any + Send>, answer: T) -> T {
    tracing::error!(
        panic = &*panic_message(&*payload),
        "the response body panicked in its {method}"
    );
    crate::panic::dispose(payload);
    answer
}

/// Where a gRPC-web stream is in its messages, each a 5-byte prefix (a flag, a 32-bit length)
/// and that many bytes, so that a failure ends the stream with a trailer frame only between two
/// messages, and only before the stream sent its own. `-web-text` is followed through its
/// base64 (standard alphabet, each segment padded, as gRPC-web servers write it).
///
/// Seven bytes of alignment 1: it fits in the padding beside the body's protocol, so that no
/// response body grows for it (a larger body cost the success path of every HTTP request).
#[derive(Clone, Copy, Default)]
struct Framing {
    /// Bytes of the current message still to come; while its prefix is read, its length so far
    /// (big-endian bytes of a `u32`).
    count: [u8; 4],
    /// How many bytes of the next message's prefix were seen (0 to 4).
    prefix: u8,
    /// `-web-text`: the bits of a base64 quantum not yet a byte (at most 6).
    bits: u8,
    /// [`NBITS`], [`CHARS`], [`PADDED`], [`TRAILED`] and [`LOST`].
    flags: u8,
}

/// In [`Framing::flags`]: how many bits `bits` holds (0, 2, 4 or 6).
const NBITS: u8 = 0b111;
/// How many characters of the current base64 quantum came (0 to 3), from bit 3.
const CHARS: u8 = 0b11 << 3;
/// The quantum's padding began: only `=` may follow in it.
const PADDED: u8 = 1 << 5;
/// The stream sent a trailer frame (flag `0x80`): it told its status already.
const TRAILED: u8 = 1 << 6;
/// A character outside base64 came (a line break, the URL-safe alphabet's `-` or `_`): where
/// the stream is is not known.
const LOST: u8 = 1 << 7;

impl Framing {
    /// Follows `data`, sent on in a stream of `grpc`.
    fn follow(&mut self, grpc: Grpc, data: &Bytes) {
        if grpc == Grpc::WebText {
            for &c in data.iter() {
                self.follow_base64(c);
            }
        } else {
            self.follow_bytes(data);
        }
    }

    fn follow_bytes(&mut self, mut bytes: &[u8]) {
        let mut count = u32::from_be_bytes(self.count);
        while let Some((&byte, rest)) = bytes.split_first() {
            if self.prefix == 0 && count > 0 {
                // The message's bytes are skipped whole.
                let take = bytes.len().min(count as usize);
                count -= take as u32;
                bytes = &bytes[take..];
                continue;
            }
            bytes = rest;
            if self.prefix == 0 {
                // The flag.
                if byte & 0x80 != 0 {
                    self.flags |= TRAILED;
                }
                self.prefix = 1;
                count = 0;
            } else {
                count = (count << 8) | u32::from(byte);
                self.prefix += 1;
                if self.prefix == 5 {
                    // The length is read: that many bytes of message follow.
                    self.prefix = 0;
                }
            }
        }
        self.count = count.to_be_bytes();
    }

    /// One character of base64 (standard alphabet; each segment may end with its padding).
    fn follow_base64(&mut self, c: u8) {
        let chars = ((self.flags & CHARS) >> 3) + 1;
        self.flags = (self.flags & !CHARS) | ((chars % 4) << 3);
        let value = match c {
            // Padding: the bits left over are no byte, and the quantum ends with its 4th
            // character.
            b'=' => {
                self.bits = 0;
                self.flags &= !(NBITS | PADDED);
                if !chars.is_multiple_of(4) {
                    self.flags |= PADDED;
                }
                return;
            }
            _ if self.flags & PADDED != 0 => {
                self.flags |= LOST;
                return;
            }
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => {
                self.flags |= LOST;
                return;
            }
        };
        let mut bits = (u16::from(self.bits) << 6) | u16::from(value);
        let mut nbits = (self.flags & NBITS) + 6;
        if nbits >= 8 {
            nbits -= 8;
            let byte = (bits >> nbits) as u8;
            bits &= (1 << nbits) - 1;
            self.follow_bytes(&[byte]);
        }
        self.bits = bits as u8;
        self.flags = (self.flags & !NBITS) | nbits;
    }

    /// Whether the stream is between two messages (and, in base64, between two quanta), its
    /// status not sent.
    fn between_messages(&self) -> bool {
        self.flags & (LOST | TRAILED | CHARS) == 0 && self.prefix == 0 && self.count == [0; 4]
    }
}

/// How the inner body failed.
enum Failure {
    Error(BoxError),
    Panic(Box<dyn Any + Send>),
}

/// What an HTTP response body yields in place of the inner body's failure: the server then cuts
/// the response short. The failure itself was logged (credentials redacted); it is not passed
/// on, since what the server and the layers outside do with an error (a tracing layer logs its
/// `Display`) would show it unredacted, and a panic or an error whose `Display` panics cannot be
/// passed on at all.
#[derive(Debug)]
struct Cut(&'static str);

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cut {}

/// The failure path: log once, drop the inner body, and end the stream the protocol's way.
///
/// The error's own code (its `Display`, its `Drop`, what classifying it calls) runs under
/// `catch_unwind` here, as on the layer's error path: a panic in it is logged, never let out of
/// `poll_frame` into the server's connection task.
#[cold]
#[inline(never)]
fn fail<B>(
    mut body: Pin<&mut crate::body::ResponseBody<B>>,
    failure: Failure,
    grpc: Option<Grpc>,
) -> Result<Frame<Bytes>, BoxError> {
    // The problem a gRPC caller is told; an HTTP caller's server gets a `Cut`.
    let problem = grpc.map(|_| match &failure {
        Failure::Error(err) => catch_unwind(AssertUnwindSafe(|| classify_error(&**err)))
            .unwrap_or_else(|payload| {
                tracing::error!(
                    "the response body's error panicked while it was classified; answering Internal"
                );
                crate::panic::dispose(payload);
                classify::panicked()
            }),
        Failure::Panic(_) => classify::panicked(),
    });
    let logged = catch_unwind(AssertUnwindSafe(|| log(&failure, problem.as_ref())));
    if let Err(payload) = logged {
        tracing::error!(
            grpc_status = problem.as_ref().map(|p| p.grpc_code() as u16),
            panic = &*panic_message(&*payload),
            "the response body failed while it streamed; the response is cut short \
             (its error panicked while it was logged)"
        );
        crate::panic::dispose(payload);
    }
    // Never polled again, and dropped here: a panic in its `Drop` is caught and logged too.
    drop_logged("the response body", || {
        body.set(crate::body::ResponseBody::empty());
    });
    match (grpc, problem) {
        (Some(grpc), Some(problem)) => {
            drop_logged("the response body's error", move || match failure {
                Failure::Error(err) => drop(err),
                Failure::Panic(payload) => crate::panic::dispose(payload),
            });
            Ok(grpc_end(grpc, &problem))
        }
        _ => Err(match failure {
            Failure::Error(err) => {
                drop_logged("the response body's error", move || drop(err));
                Box::new(Cut("the response body failed"))
            }
            Failure::Panic(payload) => {
                crate::panic::dispose(payload);
                Box::new(Cut("the response body panicked"))
            }
        }),
    }
}

/// Runs `drop`, logging a panic in it as `what` panicking while it was dropped.
fn drop_logged(what: &str, drop: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(drop)) {
        tracing::error!(
            panic = &*panic_message(&*payload),
            "{what} panicked while it was dropped"
        );
        crate::panic::dispose(payload);
    }
}

/// The problem for a gRPC body's error, from what the layer knows (never `Ok`).
fn classify_error(err: &(dyn std::error::Error + Send + Sync + 'static)) -> Problem {
    let problem =
        classify::classify(err, StatusCode::GATEWAY_TIMEOUT, &[]).unwrap_or_else(classify::unknown);
    // An error that says success (a `Problem` or `HttpError` with a 2xx status, a
    // `tonic::Status` whose code is `Ok`) is a mistake, answered as the layer answers it on its
    // error path: a plain 500. Its `Ok` would tell the client the stream ended complete.
    let status = problem.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return classify::unknown();
    }
    if problem.grpc_code() == GrpcCode::Ok {
        let code = GrpcCode::from_http_status(problem.status());
        return problem.with_grpc_code(code);
    }
    problem
}

fn log(failure: &Failure, problem: Option<&Problem>) {
    let grpc_status = problem.map(|p| p.grpc_code() as u16);
    match failure {
        Failure::Panic(payload) => tracing::error!(
            grpc_status,
            panic = &*panic_message(&**payload),
            "the response body panicked while it streamed; the response is cut short"
        ),
        Failure::Error(err) => {
            let error = crate::redact::redacted(ErrorChain(&**err).to_string());
            if problem.is_some_and(|p| p.status().is_client_error()) {
                tracing::warn!(
                    grpc_status,
                    error,
                    "the response body failed while it streamed; the response is cut short"
                );
            } else {
                tracing::error!(
                    grpc_status,
                    error,
                    "the response body failed while it streamed; the response is cut short"
                );
            }
        }
    }
}

/// The last frame of a gRPC stream that failed: the trailers saying how.
fn grpc_end(grpc: Grpc, problem: &Problem) -> Frame<Bytes> {
    let mut trailers: HeaderMap = problem.to_grpc_response::<()>().into_parts().0.headers;
    // Headers of a response, not trailers: the stream's type and length were sent already.
    trailers.remove(header::CONTENT_TYPE);
    trailers.remove(header::RETRY_AFTER);
    match grpc {
        Grpc::Native => Frame::trailers(trailers),
        Grpc::Web | Grpc::WebText => {
            // gRPC-web sends trailers as a last message, flagged 0x80, in HTTP/1.1 header form;
            // the status first, as gRPC-web servers write it.
            let mut block = BytesMut::new();
            let status = header::HeaderName::from_static("grpc-status");
            let (first, rest): (Vec<_>, Vec<_>) =
                trailers.iter().partition(|(name, _)| **name == status);
            for (name, value) in first.into_iter().chain(rest) {
                block.put_slice(name.as_str().as_bytes());
                block.put_u8(b':');
                block.put_slice(value.as_bytes());
                block.put_slice(b"\r\n");
            }
            let mut frame = BytesMut::with_capacity(5 + block.len());
            frame.put_u8(0x80);
            // A few headers, far below 4 GiB.
            frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
            frame.put_slice(&block);
            let frame = frame.freeze();
            if grpc == Grpc::WebText {
                let text = base64::engine::general_purpose::STANDARD.encode(&frame);
                Frame::data(Bytes::from(text))
            } else {
                Frame::data(frame)
            }
        }
    }
}
