//! The layers on a plain hyper server, no framework: WebhookErrorLayer outermost, then a 10 s
//! timeout (504, GitHub gives up after 10 s), then SignatureLayer for GitHub, then a
//! `service_fn` handler.
//!
//! ```text
//! cargo run --example hyper_server                                # 127.0.0.1:3001 (ADDR)
//! GITHUB_WEBHOOK_SECRET=s3cret cargo run --example hyper_server   # the hook's secret
//! ```
//!
//! `GITHUB_WEBHOOK_SECRET` (spaces and line breaks around it are dropped, as a secret read from a
//! file often ends with one; a comma-separated list, `new-secret,old-secret`, takes deliveries
//! signed with any of them while the hook's secret is rotated); without it, a random secret is made
//! for the run and printed, with a signed `curl` command to try the server with: 202 the first
//! time, 409 when the same delivery id comes again (a replay). With the hook's secret set, nothing
//! signed with it is printed: a log line that held a valid signature would let its readers send
//! that payload again under fresh delivery ids. `ADDR` defaults to `127.0.0.1:3001`. Ctrl-C or
//! `SIGTERM` stops it gracefully: requests in flight are answered first (for up to 10 s). A client
//! that takes more than 10 s to send its request head is cut off too, one that sends nothing at all
//! included; an HTTP/2 connection that does not answer a ping within 10 s (idle ones are pinged
//! every 10 s) too.

#[path = "common/preface.rs"]
mod preface;
#[path = "common/secret.rs"]
mod secret;
#[path = "common/shutdown.rs"]
mod shutdown;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::{BoxError, ServiceBuilder};
use tower_webhook::body::RequestBody;
use tower_webhook::error::{Problem, WebhookErrorLayer};
use tower_webhook::signature::{Provider, Secrets, SignatureLayer, VerifiedWebhook};

/// Answers a verified delivery: 202 and what was verified.
async fn handle(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, BoxError> {
    let hook = req
        .extensions()
        .get::<VerifiedWebhook>()
        .cloned()
        .ok_or("SignatureLayer must run before this handler")?;
    let body = req.into_body().collect().await?.to_bytes();
    // Signed but not JSON (a delivery sent form-encoded, say): the sender's fault, so 400.
    let event: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| Problem::new(StatusCode::BAD_REQUEST))?;
    let text = format!(
        "accepted {} delivery {} (action {})\n",
        hook.event().unwrap_or("?"),
        hook.delivery_id().unwrap_or("?"),
        event["action"].as_str().unwrap_or("none"),
    );
    let mut res = Response::new(Full::from(text));
    *res.status_mut() = StatusCode::ACCEPTED;
    Ok(res)
}

/// The webhook secret from `GITHUB_WEBHOOK_SECRET`'s value, trimmed (a secret read from a file
/// often ends with a line break, which GitHub's copy has not: every delivery would be refused),
/// and whether it was made up for this run: a random one when the variable is unset (a fixed
/// one, readable here, would let anyone sign for a server deployed without its secret). One
/// that is empty or not UTF-8 is an error naming the variable, not taken for unset.
pub(crate) fn webhook_secret(
    value: Result<String, std::env::VarError>,
) -> Result<(String, bool), BoxError> {
    match value {
        Ok(secret) if secret.trim().is_empty() => Err(
            "GITHUB_WEBHOOK_SECRET is set but empty: set it to the hook's secret, or unset it"
                .into(),
        ),
        Ok(secret) => Ok((secret.trim().to_owned(), false)),
        Err(std::env::VarError::NotPresent) => {
            Ok((format!("dev-{}", secret::random_secret()), true))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("GITHUB_WEBHOOK_SECRET is set to a value that is not UTF-8".into())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Colours only on a terminal, and not with `NO_COLOR`: in a file or a pipe the escape
    // sequences would sit between each field's name and its value.
    let colors = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(colors)
        .init();
    let (secret, made_up) = webhook_secret(std::env::var("GITHUB_WEBHOOK_SECRET"))?;
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3001".into())
        .parse()
        .map_err(|err| format!("ADDR is not an address and port (e.g. 127.0.0.1:3001): {err}"))?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown::shutdown_signal()?;
    println!("hyper_server listening on http://{addr}");
    if made_up {
        println!(
            "GITHUB_WEBHOOK_SECRET is not set: deliveries are verified with a random secret for this run:"
        );
        println!("  GITHUB_WEBHOOK_SECRET={secret}");
        let body = r#"{"action":"opened","number":1}"#;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
        mac.update(body.as_bytes());
        println!(
            "try: curl -i http://{addr}/ -H 'X-GitHub-Event: pull_request' -H 'X-GitHub-Delivery: 1' -H 'X-Hub-Signature-256: sha256={}' --data '{body}'",
            hex::encode(mac.finalize().into_bytes())
        );
    } else {
        println!("deliveries signed with GITHUB_WEBHOOK_SECRET are taken at http://{addr}/");
    }

    serve(listener, &secret, shutdown, HEAD_TIMEOUT).await
}

/// How long a client may take to send its request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the webhook stack on `listener`, deliveries signed with `secret` (or with any secret
/// of a comma-separated list), until `shutdown`
/// completes; then answers the open requests (for up to 10 s). A connection whose request head
/// has not come within `head_timeout` is closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    secret: &str,
    shutdown: impl std::future::Future<Output = ()>,
    head_timeout: Duration,
) -> Result<(), BoxError> {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        // Also bounds a client that sends its body slowly: SignatureLayer reads it inside.
        .timeout(Duration::from_secs(10))
        // hyper's `Incoming` cannot be rebuilt from bytes: wrap it (nothing is read here).
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(SignatureLayer::with_secrets(
            Provider::GitHub,
            Secrets::from_list(secret)?,
        )?)
        .service_fn(handle);

    let mut server = auto::Builder::new(TokioExecutor::new());
    // A client that sends its request head slowly, or never finishes it, is cut off after
    // `head_timeout`: the timeout layer above starts only once the head is read. hyper enforces
    // it only with a timer, and only once the connection has sent enough to tell HTTP/1 from
    // HTTP/2: until then, `PrefaceDeadline` keeps the deadline.
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    // An HTTP/2 peer gone silent after its preface (or gone for good) is found by its pings.
    server
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(head_timeout)
        .keep_alive_timeout(head_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => stream,
                // Out of file descriptors, a connection reset before it was accepted: the
                // listener still works, so wait a moment and go on serving.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = TowerToHyperService::new(svc.clone());
        let stream = preface::PrefaceDeadline::new(stream, tokio::time::sleep(head_timeout));
        let conn = graceful.watch(
            server
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection closed");
            }
        });
    }
    // No new connections; idle ones close now, open requests are answered first.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("requests still open after 10 s: dropped");
        }
    }
    Ok(())
}
