//! reqwest through tower, protected by a circuit breaker and a retry policy.
//!
//! Starts a local "provider API" on 127.0.0.1 that fails on command, then posts comments to it
//! through `RetryPolicy` -> `CircuitBreakerLayer` -> `reqwest::Client` and prints what happens:
//! a `502` that is not sent again (the API may have posted the comment before it failed), a
//! `503` with `Retry-After` that is (the API says it did nothing), the breaker opening and
//! stopping the retries (calls rejected without touching the API), the half-open probe and the
//! recovery. Exits non-zero if the policy or the breaker did not behave.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::StatusCode;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, OpenDuration,
};
use tower_webhook::retry::RetryPolicy;

#[derive(Clone, Default)]
struct Api {
    /// How the API answers: 0 works, 1 fails with a `502`, 2 refuses with a `503` and
    /// `Retry-After`.
    mode: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
}

const WORKS: usize = 0;
const BAD_GATEWAY: usize = 1;
const UNAVAILABLE: usize = 2;

async fn comments(State(api): State<Api>) -> Response {
    api.hits.fetch_add(1, Ordering::SeqCst);
    match api.mode.load(Ordering::SeqCst) {
        WORKS => StatusCode::CREATED.into_response(),
        BAD_GATEWAY => StatusCode::BAD_GATEWAY.into_response(),
        // "Try again at once": the policy then waits its own backoff.
        _ => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // The provider API, on loopback.
    let api = Api::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/repos/octo/repo/issues/1/comments",
        listener.local_addr()?
    );
    let router = Router::new()
        .route("/repos/octo/repo/issues/1/comments", post(comments))
        .with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // The client: retry outside the breaker, so every attempt counts and an open breaker
    // stops the retries at once.
    let config = CircuitBreakerConfig::default()
        .name("github-api")
        .consecutive_failures(3)
        .open_duration(OpenDuration::Fixed(Duration::from_millis(500)));
    let (breaker, handle) = CircuitBreakerLayer::pair(config)?;
    // Timeouts, so a hung API counts as a failure instead of holding the call forever.
    // The process's TLS provider, ring (this example builds reqwest without one of its own,
    // `rustls-no-provider`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Redirects off: an answer after a redirect (a `303` the API may send once it posted the
    // comment) answers another request, and says nothing of this one.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::new()
                .max_retries(2)
                .backoff(Duration::from_millis(10), Duration::from_millis(50))
                .into_layer(),
        )
        .layer(breaker)
        .service(client);

    // A plain POST, as a provider's comment API takes it: none of them deduplicates comments,
    // so it is sent again only when the answer says the API did not act on it (a 429, a 503
    // with `Retry-After`, a refused connection), never after a 502 or a timeout. (An
    // `Idempotency-Key` would make every failure safe to retry, with an API that honours one.)
    let post = |url: &str| {
        let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().expect("valid URL"));
        *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
        req
    };

    let mut call = async |label: &str| -> Result<(Answer, usize), BoxError> {
        let before = api.hits.load(Ordering::SeqCst);
        let result = svc.ready().await?.call(post(&url)).await;
        let hits = api.hits.load(Ordering::SeqCst) - before;
        let outcome = match &result {
            Ok(res) => format!("HTTP {}", res.status().as_u16()),
            Err(err) => match CircuitOpen::find(&**err) {
                Some(open) => format!(
                    "rejected: circuit open, retry after {:?}",
                    open.retry_after()
                ),
                None => format!("error: {err}"),
            },
        };
        println!(
            "{label:<28} {outcome:<48} api calls: {hits}  breaker: {}",
            handle.state()
        );
        let answer = match &result {
            Ok(res) => Answer::Status(res.status()),
            Err(err) if CircuitOpen::find(&**err).is_some() => Answer::CircuitOpen,
            Err(_) => Answer::Failed,
        };
        Ok((answer, hits))
    };

    println!("-- the API works");
    let first = call("comment").await?;
    println!("-- the API fails after it may have posted (502): not sent again");
    api.mode.store(BAD_GATEWAY, Ordering::SeqCst);
    let bad_gateway = call("comment").await?;
    println!("-- the API refuses (503, Retry-After): sent again, until the breaker opens");
    api.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let refused = call("comment (retried)").await?;
    let state_while_down = handle.state();
    let rejected = call("comment").await?;

    println!("-- the API recovers; waiting for the open duration");
    api.mode.store(WORKS, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let probe = call("comment (half-open probe)").await?;
    let after = call("comment").await?;
    let snapshot = handle.snapshot();
    println!("-- final snapshot: {}", serde_json::to_string(&snapshot)?);

    let created = (Answer::Status(StatusCode::CREATED), 1);
    let ok = first == created
        // One attempt: a 502 may come after the API posted the comment.
        && bad_gateway == (Answer::Status(StatusCode::BAD_GATEWAY), 1)
        // Two attempts, the third failure of a row opens the breaker, whose refusal (not
        // another failure, say the API gone) ends the retries.
        && refused == (Answer::CircuitOpen, 2)
        && state_while_down == CircuitState::Open
        && rejected == (Answer::CircuitOpen, 0)
        && probe == created
        && after == created
        && handle.state() == CircuitState::Closed;
    if ok {
        println!("no comment sent twice; the breaker opened, protected the API, and recovered");
        Ok(())
    } else {
        Err("the retry policy or the breaker did not behave as expected".into())
    }
}

/// How a call turned out.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The API answered.
    Status(StatusCode),
    /// The breaker refused the call without making it.
    CircuitOpen,
    /// Any other failure.
    Failed,
}
