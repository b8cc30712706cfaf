//! The HTTP status of the same meaning as a gRPC code, shared by the error layer and the retry
//! policy.

use http::StatusCode;

/// The HTTP status for gRPC code `code` (the mapping of `google.rpc.Code`); codes gRPC does not
/// define are `Unknown`, a 500.
pub(crate) fn status_of(code: u16) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        // Cancelled: 499, "Client Closed Request".
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        // InvalidArgument, FailedPrecondition, OutOfRange.
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        // AlreadyExists, Aborted.
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        // Unknown, Internal, DataLoss, and numbers gRPC does not define.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
