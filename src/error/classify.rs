//! Turning a `BoxError` into a [`Problem`].

use std::error::Error;

use http::StatusCode;

use super::WebhookProcessingError;
use super::grpc::GrpcCode;
use super::problem::{Problem, types};

/// A function that recognises one error type in an error chain.
pub(crate) type Recognizer = fn(&(dyn Error + 'static)) -> Option<Problem>;

/// Recognises `E` by downcasting.
pub(crate) fn recognize_as<E: super::HttpError>(error: &(dyn Error + 'static)) -> Option<Problem> {
    error.downcast_ref::<E>().map(Problem::from_error)
}

/// Classifies `error`, looking at each error in its `source()` chain, first match wins (a
/// `tonic::Status` with a source only when nothing it wraps is recognised).
pub(crate) fn classify(
    error: &(dyn Error + Send + Sync + 'static),
    timeout_status: StatusCode,
    extra: &[Recognizer],
) -> Option<Problem> {
    // A `tonic::Status` made from another error (the crate's `From<CircuitOpen>`, or what a
    // tonic client makes of a transport failure) stands for it: what it wraps is answered when
    // it is recognised, the status otherwise, as a failure of this server's.
    let mut wrapper: Option<Problem> = None;
    // Bounded: a broken `Error` impl can make the chain a cycle.
    for err in chain(error) {
        if err.source().is_some() && is_tonic_status(err) {
            if wrapper.is_none() {
                // A status a handler made, with a cause attached for the log
                // (`Status::set_source`), is an answer like one without.
                wrapper = if made_by_transport(err) {
                    made_from_an_error(err)
                } else {
                    classify_one(err, timeout_status, extra)
                };
            }
            continue;
        }
        if let Some(problem) = classify_one(err, timeout_status, extra) {
            return Some(problem);
        }
    }
    wrapper
}

/// The problem for a `tonic::Status` made from an error that nothing recognises: tonic's client
/// makes one of a transport failure on the way to an upstream (a connection closed under the
/// call, a stream the upstream reset with `CANCEL` or `ENHANCE_YOUR_CALM`), with the failure as
/// its `source()` (see [`made_by_transport`]), where a status an upstream answered has none,
/// and one a handler answered none or one of its own. The failure is
/// this server's, not the client's: a code whose HTTP equivalent is a client error (`Cancelled`
/// is 499, `ResourceExhausted` 429, `PermissionDenied` 403) is answered as 502 / `Unavailable`,
/// and its message, which describes the transport ("h2 protocol error: ..."), stays in the log.
#[cfg(feature = "tonic")]
fn made_from_an_error(err: &(dyn Error + 'static)) -> Option<Problem> {
    let status = err.downcast_ref::<tonic::Status>()?;
    let code = GrpcCode::from(status.code());
    let (status, code) = match code.to_http_status() {
        status if status.is_client_error() => (StatusCode::BAD_GATEWAY, GrpcCode::Unavailable),
        status => (status, code),
    };
    Some(Problem::from_static(status, types::GRPC_STATUS, "gRPC Error").with_grpc_code(code))
}

#[cfg(not(feature = "tonic"))]
fn made_from_an_error(_: &(dyn Error + 'static)) -> Option<Problem> {
    None
}

/// Whether `status`, a `tonic::Status` with a source, is what tonic made of a transport
/// failure: its source is, or wraps, an HTTP/2 or a hyper error (a stream reset with `CANCEL`,
/// `ENHANCE_YOUR_CALM` or `INADEQUATE_SECURITY`; a connection closed under the call), as tonic
/// builds such statuses. Any other source is one a handler attached to its own answer.
#[cfg(feature = "tonic")]
fn made_by_transport(status: &(dyn Error + 'static)) -> bool {
    chain(status)
        .skip(1)
        .any(|e| e.is::<h2::Error>() || e.is::<hyper::Error>())
}

#[cfg(not(feature = "tonic"))]
fn made_by_transport(_: &(dyn Error + 'static)) -> bool {
    false
}

/// `err` and the errors after it, as the layer looks for them: each once, at most
/// [`MAX_DEPTH`](crate::error_chain::MAX_DEPTH) of them, an `io::Error` made from another error
/// followed by that error.
pub(crate) fn chain<'a>(err: &'a (dyn Error + 'static)) -> crate::error_chain::Walk<'a> {
    crate::error_chain::links(err)
}

#[cfg(feature = "tonic")]
fn is_tonic_status(err: &(dyn Error + 'static)) -> bool {
    err.is::<tonic::Status>()
}

#[cfg(not(feature = "tonic"))]
fn is_tonic_status(_: &(dyn Error + 'static)) -> bool {
    false
}

fn classify_one(
    err: &(dyn Error + 'static),
    timeout_status: StatusCode,
    extra: &[Recognizer],
) -> Option<Problem> {
    if let Some(problem) = err.downcast_ref::<Problem>() {
        return Some(problem.clone());
    }
    if let Some(e) = err.downcast_ref::<WebhookProcessingError>() {
        return Some(Problem::from_error(e));
    }
    #[cfg(feature = "signature")]
    if let Some(problem) = crate::signature::recognize(err) {
        return Some(problem);
    }
    #[cfg(feature = "circuit-breaker")]
    if let Some(problem) = crate::circuit_breaker::recognize(err) {
        return Some(problem);
    }
    if err.is::<tower::timeout::error::Elapsed>() {
        return Some(timeout(timeout_status));
    }
    // A tonic client's deadline (`Endpoint::timeout`, a `grpc-timeout` it sent): the call to an
    // upstream took too long, whatever `timeout_status` says of the layer's own deadline.
    #[cfg(feature = "tonic")]
    if err.is::<tonic::TimeoutExpired>() {
        return Some(timeout(StatusCode::GATEWAY_TIMEOUT));
    }
    if is_body_timeout(err) {
        // The client stopped sending the body (tower-http's `RequestBodyTimeoutLayer`).
        return Some(timeout(StatusCode::REQUEST_TIMEOUT));
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return Some(Problem::from_static(
            StatusCode::SERVICE_UNAVAILABLE,
            types::OVERLOADED,
            "Service Overloaded",
        ));
    }
    if err.is::<http_body_util::LengthLimitError>() {
        return Some(Problem::from_static(
            StatusCode::PAYLOAD_TOO_LARGE,
            types::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
        ));
    }
    #[cfg(feature = "tonic")]
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        let code = GrpcCode::from(status.code());
        let mut problem =
            Problem::from_static(code.to_http_status(), types::GRPC_STATUS, "gRPC Error")
                .with_grpc_code(code);
        // A client error's message is meant for the client; a server error's (a transport
        // failure, "error trying to connect: dns error ...") describes internals.
        // Redacted, as a log line is: a status passed on from a client of the handler's own
        // may name the URL that client called, with its credentials.
        if !status.message().is_empty() && problem.status().is_client_error() {
            let message = crate::redact::redact(status.message()).into_owned();
            problem = problem
                .with_detail(message.clone())
                .with_grpc_message(message);
        }
        // So are its rich error details (`grpc-status-details-bin`) and custom metadata, which a
        // tonic server sends with the status; a server error's may describe internals too (a
        // `DebugInfo`'s stack trace, an upstream's headers).
        if problem.status().is_client_error()
            && (!status.metadata().is_empty() || !status.details().is_empty())
        {
            let mut headers = http::HeaderMap::new();
            if status.add_header(&mut headers).is_ok() {
                problem = problem.with_grpc_metadata(headers);
            }
        }
        // The wait its author asked of the client (gRPC's server pushback) is passed on: as
        // `grpc-retry-pushback-ms` to gRPC callers, `Retry-After` to HTTP ones; so is a request
        // not to retry, to gRPC callers.
        match pushback(status.metadata()) {
            Some(Pushback::Wait(after)) => problem = problem.with_retry_after(after),
            Some(Pushback::DoNotRetry) => problem = problem.with_grpc_no_retry(),
            None => {}
        }
        return Some(problem);
    }
    extra.iter().find_map(|recognize| recognize(err))
}

/// The problem for a deadline that passed, answered with `status`, titled with the status's own
/// name ("Gateway Timeout", "Request Timeout"; "Timeout" for one that has none).
fn timeout(status: StatusCode) -> Problem {
    let title = status.canonical_reason().unwrap_or("Timeout");
    Problem::from_static(status, types::TIMEOUT, title).with_grpc_code(GrpcCode::DeadlineExceeded)
}

/// What a status's `grpc-retry-pushback-ms` asks of the client (gRPC A6).
#[cfg(feature = "tonic")]
enum Pushback {
    /// Retry after this long: milliseconds as digits.
    Wait(std::time::Duration),
    /// Do not retry: a negative value, or one that is no whole number, as gRPC A6 reads them.
    DoNotRetry,
}

/// The pushback a status asks for; `None` without one.
#[cfg(feature = "tonic")]
fn pushback(metadata: &tonic::metadata::MetadataMap) -> Option<Pushback> {
    let value = metadata.get("grpc-retry-pushback-ms")?.as_bytes();
    let (negative, digits) = match value {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Some(Pushback::DoNotRetry);
    }
    // `-0` is zero: a retry without a wait.
    if negative && digits.iter().any(|&d| d != b'0') {
        return Some(Pushback::DoNotRetry);
    }
    // Digits only: a number too large for `u64` is a wait as long as can be.
    let millis = std::str::from_utf8(digits).map_or(u64::MAX, |d| d.parse().unwrap_or(u64::MAX));
    Some(Pushback::Wait(std::time::Duration::from_millis(millis)))
}

/// The problem for an error nobody recognised: 500 and nothing else.
/// tower-http's body timeout error (its `RequestBodyTimeoutLayer`, and 0.7's
/// `RequestBodyDeadlineLayer`), from tower-http 0.6 or 0.7.
pub(crate) fn is_body_timeout(err: &(dyn Error + 'static)) -> bool {
    err.is::<tower_http::timeout::TimeoutError>()
        || err.is::<tower_http_0_7::timeout::TimeoutError>()
}

pub(crate) fn unknown() -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The problem for a panic: 500 / `Internal`, never the panic message.
pub(crate) fn panicked() -> Problem {
    Problem::from_static(
        StatusCode::INTERNAL_SERVER_ERROR,
        types::PANIC,
        "Internal Server Error",
    )
    .with_grpc_code(GrpcCode::Internal)
}
