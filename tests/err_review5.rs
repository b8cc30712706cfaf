//! WebhookErrorLayer, fifth review: cyclic error chains, 413 and the connection, the pushback of
//! a `CircuitOpen` answered by tonic.

#[path = "common/logs.rs"]
mod logs;

use std::error::Error;
use std::fmt;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::WebhookErrorLayer;

/// Every test here logs through its own subscriber (see `err_review3.rs` for why).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

/// Runs `f` on a thread of its own and waits for it at most 20 s: a walk that never ends fails
/// the test instead of hanging the suite (the looping thread is then left behind).
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the error's chain was walked forever")
}

/// Runs the future `make` makes on a current-thread runtime, within the deadline.
fn run<T: Send + 'static, F: std::future::Future<Output = T>>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    within_deadline(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
}

// ---------------------------------------------------------------------------------------------
// Cyclic source chains

/// A broken `Error` whose `source()` is itself.
#[derive(Debug)]
struct OwnSource;

impl fmt::Display for OwnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("i am my own cause")
    }
}

impl Error for OwnSource {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self)
    }
}

/// Two errors, each the other's source.
#[derive(Debug)]
struct Ping(usize);

static PAIR: [Ping; 2] = [Ping(0), Ping(1)];

impl fmt::Display for Ping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ping {}", self.0)
    }
}

impl Error for Ping {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&PAIR[(self.0 + 1) % 2])
    }
}

/// An error that wraps `inner` and names it as its source.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not handle the delivery")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// The layer answered an error whose chain loops by walking it forever (and building an
/// endless log line): the request hung and a core spun at 100 %.
#[test]
fn an_error_whose_source_is_itself_is_answered_500() {
    let (logs, res) = run(|| async {
        let (logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(OwnSource))))
            });
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        (logs, res)
    });
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = logs.text();
    assert!(
        text.contains("could not handle the delivery: i am my own cause"),
        "{text}"
    );
    // The loop is cut short and said to be: not repeated as far as the walk goes.
    assert!(text.matches("i am my own cause").count() <= 2, "{text}");
    assert!(text.contains("i am my own cause: ..."), "{text}");
}

#[test]
fn an_error_in_a_cycle_of_two_is_answered_500() {
    let res = run(|| async {
        let (_logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(Ping(0)))))
            });
        svc.oneshot(Request::new(Full::default())).await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A known error before the loop is still recognised.
#[test]
fn a_known_error_before_a_cycle_is_still_recognised() {
    use tower_webhook::error::HttpError;
    /// A recognised error whose chain goes on into a loop.
    #[derive(Debug)]
    struct Conflict;
    impl fmt::Display for Conflict {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("conflict")
        }
    }
    impl Error for Conflict {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&PAIR[0])
        }
    }
    impl HttpError for Conflict {
        fn status(&self) -> StatusCode {
            StatusCode::CONFLICT
        }
        fn problem_type(&self) -> &str {
            "urn:example:conflict"
        }
    }
    let res = run(|| async {
        let (_logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new().recognize::<Conflict>())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(Conflict))))
            });
        svc.oneshot(Request::new(Full::default())).await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

/// `CircuitOpen::find` and `is_in` walked a cyclic chain forever.
#[test]
fn circuit_open_find_ends_on_a_cyclic_chain() {
    use tower_webhook::circuit_breaker::CircuitOpen;
    let found = within_deadline(|| {
        let err = Wrapped(Box::new(OwnSource));
        (
            CircuitOpen::find(&err).is_some(),
            CircuitOpen::is_in(&PAIR[1]),
        )
    });
    assert_eq!(found, (false, false));
}

/// The retry policy walked a failed call's cyclic chain forever.
#[test]
fn the_retry_policy_ends_on_a_cyclic_chain() {
    use tower_webhook::retry::RetryPolicy;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let res = run(move || async move {
        let svc = ServiceBuilder::new()
            .layer(
                RetryPolicy::new()
                    .backoff(Duration::from_millis(1), Duration::from_millis(2))
                    .into_layer(),
            )
            .service_fn(move |_req: Request<String>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Err::<Response<String>, BoxError>(Box::new(Wrapped(Box::new(Ping(1))))) }
            });
        svc.oneshot(Request::get("/").body(String::new()).unwrap())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert_eq!(res.unwrap_err(), "could not handle the delivery");
    // A GET failing with an unknown error is retried as usual.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}

/// A signature layer's body error whose cause loops was classified by walking it forever.
#[test]
fn a_signature_body_error_with_a_cyclic_cause_is_a_400() {
    use tower_webhook::error::HttpError;
    use tower_webhook::signature::SignatureValidationError;
    let status = within_deadline(|| {
        SignatureValidationError::Body(Box::new(Wrapped(Box::new(OwnSource)))).status()
    });
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
