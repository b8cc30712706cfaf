//! The layers on a plain hyper server, no framework: WebhookErrorLayer outermost, then
//! SignatureLayer for GitHub, then a `service_fn` handler.
//!
//! ```text
//! GITHUB_WEBHOOK_SECRET=s3cret cargo run --example hyper_server   # 127.0.0.1:3001 (ADDR)
//! ```
//!
//! `GITHUB_WEBHOOK_SECRET` defaults to `development-secret`, `ADDR` to `127.0.0.1:3001`. It
//! prints a signed `curl` command to try it with.

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::{BoxError, ServiceBuilder};
use tower_webhook::body::RequestBody;
use tower_webhook::error::WebhookErrorLayer;
use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};

/// Answers a verified delivery: 202 and what was verified.
async fn handle(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, BoxError> {
    let hook = req
        .extensions()
        .get::<VerifiedWebhook>()
        .cloned()
        .ok_or("SignatureLayer must run before this handler")?;
    let body = req.into_body().collect().await?.to_bytes();
    let event: serde_json::Value = serde_json::from_slice(&body)?;
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let secret =
        std::env::var("GITHUB_WEBHOOK_SECRET").unwrap_or_else(|_| "development-secret".into());
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3001".into())
        .parse()?;

    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        // hyper's `Incoming` cannot be rebuilt from bytes: wrap it (nothing is read here).
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(SignatureLayer::github(secret.clone())?)
        .service_fn(handle);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "hyper_server listening on http://{}",
        listener.local_addr()?
    );
    let body = r#"{"action":"opened","number":1}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(body.as_bytes());
    println!(
        "try: curl -i http://{addr}/ -H 'X-GitHub-Event: pull_request' -H 'X-GitHub-Delivery: 1' -H 'X-Hub-Signature-256: sha256={}' --data '{body}'",
        hex::encode(mac.finalize().into_bytes())
    );

    loop {
        let (stream, _) = tokio::select! {
            conn = listener.accept() => conn?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %err, "connection closed");
            }
        });
    }
}
