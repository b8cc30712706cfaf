//! reqwest through tower, protected by a circuit breaker and a retry policy.
//!
//! Starts a local "provider API" on 127.0.0.1 that fails on command, then calls it through
//! `RetryPolicy` -> `CircuitBreakerLayer` -> `reqwest::Client` and prints what happens: the
//! retries, the breaker opening (calls rejected without touching the API), the half-open probe
//! and the recovery. Exits non-zero if the breaker did not behave.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use http::StatusCode;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, OpenDuration,
};
use tower_webhook::retry::RetryPolicy;

#[derive(Clone, Default)]
struct Api {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn comments(State(api): State<Api>) -> StatusCode {
    api.hits.fetch_add(1, Ordering::SeqCst);
    if api.failing.load(Ordering::SeqCst) {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::CREATED
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
    let client = reqwest::Client::builder()
        .no_proxy()
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

    let post = |url: &str, comment: u32| {
        let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().expect("valid URL"));
        // An idempotency key makes the POST safe to send again: one key per comment, the same
        // for each of its attempts, so the API posts each comment once.
        req.headers_mut().insert(
            "idempotency-key",
            format!("comment-{comment}").parse().expect("valid header"),
        );
        *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
        req
    };

    let mut comments = 0;
    let mut call = async |label: &str| -> Result<Answer, BoxError> {
        let before = api.hits.load(Ordering::SeqCst);
        comments += 1;
        let result = svc.ready().await?.call(post(&url, comments)).await;
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
        Ok(match &result {
            Ok(res) => Answer::Status(res.status()),
            Err(err) if CircuitOpen::find(&**err).is_some() => Answer::CircuitOpen,
            Err(_) => Answer::Failed,
        })
    };

    println!("-- the API works");
    let first = call("comment").await?;
    println!("-- the API starts failing (502)");
    api.failing.store(true, Ordering::SeqCst);
    let failing = call("comment (retried)").await?;
    let rejected = call("comment").await?;
    let state_while_down = handle.state();
    let hits_while_open = api.hits.load(Ordering::SeqCst);
    let _ = call("comment").await?;
    let untouched = api.hits.load(Ordering::SeqCst) == hits_while_open;

    println!("-- the API recovers; waiting for the open duration");
    api.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let probe = call("comment (half-open probe)").await?;
    let after = call("comment").await?;
    let snapshot = handle.snapshot();
    println!("-- final snapshot: {}", serde_json::to_string(&snapshot)?);

    let created = Answer::Status(StatusCode::CREATED);
    let ok = first == created
        && failing == Answer::Status(StatusCode::BAD_GATEWAY)
        // Refused by the open breaker itself, not failed some other way (the API gone, say).
        && rejected == Answer::CircuitOpen
        && state_while_down == CircuitState::Open
        && untouched
        && probe == created
        && after == created
        && handle.state() == CircuitState::Closed;
    if ok {
        println!("breaker opened, protected the API, and recovered");
        Ok(())
    } else {
        Err("the breaker did not behave as expected".into())
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
