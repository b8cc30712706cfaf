//! Load test for the webhook stack: a server and a load generator, run by `scripts/load.sh`
//! with each pinned to its own core.
//!
//! ```text
//! cargo run --release --example load_test -- serve layers ADDR  # axum + WebhookErrorLayer +
//!     # SignatureLayer::github, 202 handler (no replay store: the bare server has none to
//!     # compare with)
//! cargo run --release --example load_test -- serve bare ADDR    # axum handler that checks
//!     # the same HMAC itself
//! cargo run --release --example load_test -- generate URL SECS CONNS [--status URL]
//! ```
//!
//! The generator sends a mix of deliveries signed with `GITHUB_WEBHOOK_SECRET` (trimmed; default
//! `load-test-secret`, which the servers use too when it is unset): 70 % valid
//! (fresh delivery ids), 15 % with a bad signature, 15 % duplicates of an earlier valid one
//! (answered 202 by both servers above, which do not deduplicate; 200 by pr_agent_server).
//! It prints one JSON line with what it sent and what came back; with `--status` it also
//! compares the counts with the server's `/status` (pr_agent_server) and fails if an unverified
//! delivery was processed or a valid one lost.
//!
//! The servers cut off a client that takes more than 10 s to send its request head, as
//! `hyper_server` does. The generator waits 10 s at most for each answer: one that does not
//! come counts as `other`, and fails the run.

#[path = "common/preface.rs"]
mod preface;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tower::BoxError;
use tower_webhook::error::WebhookErrorLayer;
use tower_webhook::signature::SignatureLayer;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// `GITHUB_WEBHOOK_SECRET`, trimmed as the other examples trim it (a secret read from a file
/// often ends with a line break), or `load-test-secret` when it is unset. One that is blank or
/// not UTF-8 is an error naming the variable, as `hyper_server`'s: taken for unset, the server
/// would take deliveries signed with the public default.
fn secret() -> Result<String, BoxError> {
    secret_from(std::env::var("GITHUB_WEBHOOK_SECRET"))
}

pub(crate) fn secret_from(value: Result<String, std::env::VarError>) -> Result<String, BoxError> {
    match value {
        Ok(secret) if secret.trim().is_empty() => {
            Err("GITHUB_WEBHOOK_SECRET is set but empty: set it, or unset it".into())
        }
        Ok(secret) => Ok(secret.trim().to_owned()),
        Err(std::env::VarError::NotPresent) => Ok("load-test-secret".into()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("GITHUB_WEBHOOK_SECRET is set to a value that is not UTF-8".into())
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", mode, addr] => runtime.block_on(serve(mode, addr)),
        ["generate", url, secs, conns, rest @ ..] => {
            let status = match rest {
                ["--status", url] => Some((*url).to_owned()),
                [] => None,
                _ => return Err("usage: load_test generate URL SECS CONNS [--status URL]".into()),
            };
            let (secs, conns) = run_size(secs, conns)?;
            runtime.block_on(generate(url, secs, conns, status))
        }
        _ => Err("usage: load_test serve (layers|bare) ADDR | load_test generate URL SECS CONNS [--status URL]".into()),
    }
}

/// `generate`'s `SECS` and `CONNS`: whole numbers above 0. Zero of either sends nothing, and a
/// run that sent nothing would report success.
pub(crate) fn run_size(secs: &str, conns: &str) -> Result<(u64, usize), String> {
    let positive = |name: &str, value: &str| match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{name} must be a whole number above 0, not `{value}`"
        )),
    };
    let secs = positive("SECS", secs)?;
    let conns = positive("CONNS", conns)?;
    let conns = usize::try_from(conns).map_err(|_| format!("CONNS is too large: {conns}"))?;
    Ok((secs, conns))
}

// ---------------------------------------------------------------------------------------------
// Servers

async fn serve(mode: &str, addr: &str) -> Result<(), BoxError> {
    let router = router(mode, &secret()?)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("serving {mode} on {}", listener.local_addr()?);
    serve_on(listener, router).await
}

/// How long a client may take to send its request head (`hyper_server` gives the same).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener`. A client that sends its request head slowly, or never
/// finishes it, is cut off after 10 s (`axum::serve` sets no such timeout: half a request head
/// would hold its connection for ever). hyper enforces the timeout only with a timer, and only
/// once the connection has sent enough to tell HTTP/1 from HTTP/2: until then, a
/// `PrefaceDeadline` keeps it, so a client that sends nothing is cut off too. An HTTP/2 client
/// gone silent is found by its pings.
pub(crate) async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
) -> Result<(), BoxError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    server
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HEADER_READ_TIMEOUT)
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: the listener still works, so wait and go on.
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let svc = TowerToHyperService::new(router.clone());
        let stream = preface::PrefaceDeadline::new(stream, tokio::time::sleep(HEADER_READ_TIMEOUT));
        let conn = server
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// The server of `mode` (`layers` or `bare`), checking signatures made with `secret`.
pub(crate) fn router(mode: &str, secret: &str) -> Result<Router, BoxError> {
    Ok(match mode {
        // The signature layer on the `POST` handler only: another method is answered `405` with
        // `Allow: POST`, not `401` as a delivery badly signed.
        "layers" => Router::new()
            .route(
                "/hook",
                post(|| async { StatusCode::ACCEPTED })
                    .route_layer(SignatureLayer::github(secret.to_owned())?.without_replay_store()),
            )
            .layer(WebhookErrorLayer::new()),
        "bare" => {
            let key = HmacSha256::new_from_slice(secret.as_bytes())?;
            Router::new().route(
                "/hook",
                post(move |headers: HeaderMap, body: Bytes| {
                    let key = key.clone();
                    async move { bare_check(key, &headers, &body) }
                }),
            )
        }
        other => return Err(format!("unknown server mode {other:?}").into()),
    })
}

/// What a careful hand-written handler does: parse the header, HMAC the body, compare in
/// constant time.
fn bare_check(mut mac: HmacSha256, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|hex| hex::decode(hex).ok())
    else {
        return StatusCode::UNAUTHORIZED;
    };
    mac.update(body);
    match mac.verify_slice(&sig) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

// ---------------------------------------------------------------------------------------------
// Generator

#[derive(Default)]
struct Tally {
    sent_valid: AtomicU64,
    sent_invalid: AtomicU64,
    sent_duplicate: AtomicU64,
    accepted: AtomicU64,
    duplicates_acked: AtomicU64,
    rejected: AtomicU64,
    other: AtomicU64,
    /// The first request that failed without an answer, and why: reported, so that a wrong
    /// port or a server that went away is named rather than counted.
    first_failure: std::sync::Mutex<Option<String>>,
    valid_not_accepted: AtomicU64,
    invalid_accepted: AtomicU64,
}

fn payload(n: u64) -> Vec<u8> {
    // About 2 KiB, the shape of a pull_request delivery.
    json!({
        "action": "opened",
        "number": n,
        "pull_request": {
            "number": n,
            "title": format!("Load test pull request {n}"),
            "body": "x".repeat(1800),
        },
        "repository": { "full_name": "load/test" },
    })
    .to_string()
    .into_bytes()
}

pub(crate) fn sign(key: &HmacSha256, body: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How long the generator waits for one answer before counting it as `other`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends deliveries to `url` for `secs` seconds on `conns` connections and prints the report;
/// an error when an invariant was violated.
pub(crate) async fn generate(
    url: &str,
    secs: u64,
    conns: usize,
    status_url: Option<String>,
) -> Result<(), BoxError> {
    let key = HmacSha256::new_from_slice(secret()?.as_bytes())?;
    // Checked once, before any connection: the client speaks plain HTTP only.
    let uri: http::Uri = url
        .parse()
        .map_err(|err| format!("{url} is not a URL: {err}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("{url} is not an http:// URL with a host").into());
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build_http();
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    // Bodies and signatures are made up front, so the generator spends its core on sending;
    // GitHub signs the body only, so fresh delivery ids need no new signature.
    let bodies: Arc<Vec<(Bytes, String, String)>> = Arc::new(
        (0..64)
            .map(|n| {
                let body = payload(n);
                let sig = sign(&key, &body);
                let mut forged = sig.clone();
                let last = if forged.ends_with('0') { "1" } else { "0" };
                forged.replace_range(forged.len() - 1.., last);
                (Bytes::from(body), sig, forged)
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for conn in 0..conns as u64 {
        let (client, bodies, tally, url) = (
            client.clone(),
            bodies.clone(),
            tally.clone(),
            url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut last_valid: Option<(String, Bytes, String)> = None;
            while Instant::now() < deadline {
                n += 1;
                let (body, sig, forged) = &bodies[(n % 64) as usize];
                let kind = n % 20; // 0..14 valid, 14..17 invalid, 17..20 duplicate
                let (id, body, sig, expect) = if kind < 14 || last_valid.is_none() {
                    let id = format!("{conn}-{n}");
                    last_valid = Some((id.clone(), body.clone(), sig.clone()));
                    tally.sent_valid.fetch_add(1, Ordering::Relaxed);
                    (id, body.clone(), sig.clone(), "valid")
                } else if kind < 17 {
                    tally.sent_invalid.fetch_add(1, Ordering::Relaxed);
                    (
                        format!("{conn}-{n}-forged"),
                        body.clone(),
                        forged.clone(),
                        "invalid",
                    )
                } else {
                    let (id, body, sig) = last_valid.clone().expect("checked above");
                    tally.sent_duplicate.fetch_add(1, Ordering::Relaxed);
                    (id, body, sig, "duplicate")
                };
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("x-github-event", "pull_request")
                    .header("x-github-delivery", id)
                    .header("x-hub-signature-256", sig)
                    .body(Full::new(body))
                    .expect("valid request");
                // Bounded: a server that stops answering fails the run instead of hanging it.
                let exchange = async {
                    let res = client.request(req).await?;
                    let status = res.status();
                    // An answer cut short is no answer.
                    res.into_body().collect().await?;
                    Ok::<_, BoxError>(status)
                };
                let failure = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(err)) => Err((StatusCode::BAD_GATEWAY, error_chain(&*err))),
                    Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "no answer within 10 s".into())),
                };
                let status = match failure {
                    Ok(status) => status,
                    Err((status, why)) => {
                        let mut first = tally
                            .first_failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert(why);
                        status
                    }
                };
                let counter = match status {
                    StatusCode::ACCEPTED => &tally.accepted,
                    StatusCode::OK => &tally.duplicates_acked,
                    StatusCode::UNAUTHORIZED => &tally.rejected,
                    _ => &tally.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if expect == "valid" && status != StatusCode::ACCEPTED {
                    tally.valid_not_accepted.fetch_add(1, Ordering::Relaxed);
                }
                if expect == "invalid" && status.is_success() {
                    tally.invalid_accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let total = get(&tally.accepted)
        + get(&tally.duplicates_acked)
        + get(&tally.rejected)
        + get(&tally.other);
    let mut report = json!({
        "seconds": elapsed,
        "connections": conns,
        "requests": total,
        "requests_per_second": total as f64 / elapsed,
        "sent": { "valid": get(&tally.sent_valid), "invalid": get(&tally.sent_invalid), "duplicate": get(&tally.sent_duplicate) },
        "answers": { "202": get(&tally.accepted), "200": get(&tally.duplicates_acked), "401": get(&tally.rejected), "other": get(&tally.other) },
        "valid_not_accepted": get(&tally.valid_not_accepted),
        "invalid_accepted": get(&tally.invalid_accepted),
    });
    let first_failure = tally
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(why) = &first_failure {
        report["first_failure"] = json!(why);
    }
    // An answer other than 202, 200 or 401 (a 5xx, a reset, no answer within 10 s) fails the
    // run too.
    let mut ok = get(&tally.valid_not_accepted) == 0
        && get(&tally.invalid_accepted) == 0
        && get(&tally.other) == 0;
    if let Some(status_url) = status_url {
        // Let the background worker drain, then compare with the server's own counts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let read = async {
            let res = client.get(status_url.parse()?).await?;
            Ok::<_, BoxError>(res.into_body().collect().await?.to_bytes())
        };
        let body = tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| format!("{status_url} did not answer within 10 s"))??;
        let status: serde_json::Value = serde_json::from_slice(&body)?;
        let accepted = status["deliveries"]["accepted"].as_u64().unwrap_or(0);
        let processed = status["comments"]["jobs"].as_u64().unwrap_or(0);
        let done = status["comments"]["logged"].as_u64().unwrap_or(0)
            + status["comments"]["posted"].as_u64().unwrap_or(0);
        // Every accepted delivery became exactly one job, and nothing else did: no unverified
        // delivery was processed, no valid one lost.
        ok &= accepted == get(&tally.accepted) && processed == accepted && done == accepted;
        ok &= status["deliveries"]["rejected"].as_u64() == Some(get(&tally.rejected));
        ok &= status["deliveries"]["duplicates"].as_u64() == Some(get(&tally.duplicates_acked));
        report["server_status"] = status;
    }
    report["ok"] = json!(ok);
    println!("{report}");
    if ok {
        Ok(())
    } else {
        Err(match first_failure {
            Some(why) => format!(
                "load test invariants violated; the first request that got no answer: {why}"
            ),
            None => {
                let counts = [
                    (get(&tally.valid_not_accepted), "valid deliveries not accepted"),
                    (get(&tally.invalid_accepted), "invalid deliveries accepted"),
                    (get(&tally.other), "answers other than 202, 200 or 401"),
                ];
                let what: Vec<String> = counts
                    .iter()
                    .filter(|(n, _)| *n > 0)
                    .map(|(n, what)| format!("{n} {what}"))
                    .collect();
                match what.is_empty() {
                    true => "load test invariants violated (the server's /status disagrees; see the report)".to_owned(),
                    false => format!("load test invariants violated: {}", what.join(", ")),
                }
            }
        }
        .into())
    }
}

/// `err` and its sources, `a: b: c`: hyper-util's own message ("client error (Connect)")
/// does not say what failed.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    for source in std::iter::successors(err.source(), |e| e.source()).take(16) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}
