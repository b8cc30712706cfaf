//! gRPC status codes and the HTTP <-> gRPC mapping.

use http::StatusCode;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// A gRPC status code (`grpc-status`), as defined by the gRPC protocol.
///
/// Kept here so that the error model does not need tonic; with the `tonic` feature it converts
/// to and from `tonic::Code`.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::error::GrpcCode;
///
/// assert_eq!(GrpcCode::from_http_status(StatusCode::UNAUTHORIZED), GrpcCode::Unauthenticated);
/// assert_eq!(GrpcCode::from_http_status(StatusCode::PAYLOAD_TOO_LARGE), GrpcCode::OutOfRange);
/// assert_eq!(GrpcCode::Unavailable.to_http_status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(GrpcCode::Unauthenticated as u16, 16);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the operation was cancelled.
    Cancelled = 1,
    /// 2: unknown error.
    Unknown = 2,
    /// 3: the client specified an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// 5: some requested entity was not found.
    NotFound = 5,
    /// 6: the entity already exists.
    AlreadyExists = 6,
    /// 7: the caller is not permitted to do this.
    PermissionDenied = 7,
    /// 8: some resource has been exhausted (rate limit, quota).
    ResourceExhausted = 8,
    /// 9: the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// 10: the operation was aborted (concurrency conflict).
    Aborted = 10,
    /// 11: the operation was attempted past the valid range.
    OutOfRange = 11,
    /// 12: the operation is not implemented.
    Unimplemented = 12,
    /// 13: internal error.
    Internal = 13,
    /// 14: the service is currently unavailable; retrying may help.
    Unavailable = 14,
    /// 15: unrecoverable data loss.
    DataLoss = 15,
    /// 16: the request does not have valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The gRPC code for an HTTP status, as this crate answers gRPC callers:
    ///
    /// | HTTP | gRPC |
    /// |---|---|
    /// | 2xx | `Ok` |
    /// | 400, 422 | `InvalidArgument` |
    /// | 401 | `Unauthenticated` |
    /// | 403 | `PermissionDenied` |
    /// | 404 | `NotFound` |
    /// | 405, 501 | `Unimplemented` |
    /// | 408, 504 | `DeadlineExceeded` |
    /// | 409 | `AlreadyExists` (a replayed delivery) |
    /// | 412 | `FailedPrecondition` |
    /// | 413, 416 | `OutOfRange` |
    /// | 429 | `ResourceExhausted` |
    /// | 499 | `Cancelled` |
    /// | 502, 503 | `Unavailable` |
    /// | other 4xx | `FailedPrecondition` |
    /// | other 5xx | `Internal` |
    /// | 1xx, 3xx | `Unknown` |
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::ACCEPTED), GrpcCode::Ok);
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::CONFLICT), GrpcCode::AlreadyExists);
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::TOO_MANY_REQUESTS), GrpcCode::ResourceExhausted);
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::IM_A_TEAPOT), GrpcCode::FailedPrecondition);
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::INSUFFICIENT_STORAGE), GrpcCode::Internal);
    /// ```
    pub fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Ok,
            400 | 422 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            405 | 501 => Self::Unimplemented,
            408 | 504 => Self::DeadlineExceeded,
            409 => Self::AlreadyExists,
            412 => Self::FailedPrecondition,
            413 | 416 => Self::OutOfRange,
            429 => Self::ResourceExhausted,
            499 => Self::Cancelled,
            502 | 503 => Self::Unavailable,
            400..=498 => Self::FailedPrecondition,
            500..=599 => Self::Internal,
            _ => Self::Unknown,
        }
    }

    /// The HTTP status an HTTP client is answered with for this gRPC code (the mapping of
    /// `google.rpc.Code`).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::DeadlineExceeded.to_http_status(), StatusCode::GATEWAY_TIMEOUT);
    /// assert_eq!(GrpcCode::PermissionDenied.to_http_status(), StatusCode::FORBIDDEN);
    /// assert_eq!(GrpcCode::Cancelled.to_http_status().as_u16(), 499);
    /// assert_eq!(GrpcCode::DataLoss.to_http_status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// ```
    pub fn to_http_status(self) -> StatusCode {
        crate::grpc_http::status_of(self as u16)
    }

    /// The code for a `grpc-status` number; unknown numbers are `Unknown`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::GrpcCode;
    ///
    /// // The `grpc-status` header of an upstream's trailers-only answer.
    /// let res = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
    /// let code: u16 = res.headers()["grpc-status"].to_str().unwrap().parse().unwrap();
    /// assert_eq!(GrpcCode::from_u16(code), GrpcCode::Unavailable);
    /// assert_eq!(GrpcCode::from_u16(99), GrpcCode::Unknown);
    /// ```
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => Self::Ok,
            1 => Self::Cancelled,
            3 => Self::InvalidArgument,
            4 => Self::DeadlineExceeded,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            10 => Self::Aborted,
            11 => Self::OutOfRange,
            12 => Self::Unimplemented,
            13 => Self::Internal,
            14 => Self::Unavailable,
            15 => Self::DataLoss,
            16 => Self::Unauthenticated,
            _ => Self::Unknown,
        }
    }
}

#[cfg(feature = "tonic")]
impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> Self {
        Self::from_u16(code as u16)
    }
}

#[cfg(feature = "tonic")]
impl From<GrpcCode> for tonic::Code {
    fn from(code: GrpcCode) -> Self {
        tonic::Code::from_i32(code as i32)
    }
}

/// Bytes the gRPC spec requires percent-encoded in `grpc-message`: everything outside
/// printable ASCII (0x20..=0x7E), and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Longest message, in bytes before encoding, sent in `grpc-message`: at most three times as
/// many once encoded, well inside what gRPC clients take in headers (grpc-java: 8 KiB for
/// all of them).
pub(crate) const MAX_GRPC_MESSAGE: usize = 1024;

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 protocol requires, cut to
/// [`MAX_GRPC_MESSAGE`] bytes (at a character boundary, marked with `...`).
///
/// A space at either end is encoded too (`%20`): an HTTP/2 field value must not start or end
/// with one (RFC 9113, section 8.2.1), and peers that check it reset the stream.
pub(crate) fn encode_message(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() > MAX_GRPC_MESSAGE {
        let mut end = MAX_GRPC_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let cut = format!("{}...", &message[..end]);
        return encode(&cut).into_owned().into();
    }
    encode(message)
}

fn encode(message: &str) -> std::borrow::Cow<'_, str> {
    if message.starts_with(' ') || message.ends_with(' ') {
        return encode_edge_spaces(message).into();
    }
    // utf8_percent_encode always encodes non-ASCII bytes.
    utf8_percent_encode(message, GRPC_MESSAGE).into()
}

/// [`encode_message`] of a message with a space at one end or both: the spaces there as `%20`.
#[cold]
fn encode_edge_spaces(message: &str) -> String {
    let inner = message.trim_matches(' ');
    let leading = message.len() - message.trim_start_matches(' ').len();
    let trailing = if inner.is_empty() {
        0
    } else {
        message.len() - message.trim_end_matches(' ').len()
    };
    let mut encoded = "%20".repeat(leading);
    encoded.extend(utf8_percent_encode(inner, GRPC_MESSAGE));
    encoded.push_str(&"%20".repeat(trailing));
    encoded
}
