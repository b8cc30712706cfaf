//! WebhookErrorLayer, fourth review: errors wrapped in an `io::Error`, and what a real server
//! sends.

#[path = "common/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use logs::Logs;
use serde_json::Value;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer, types};

/// Serves `svc` (the whole app) with axum on a loopback port.
async fn serve<S>(svc: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    S: Service<axum::extract::Request, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback_service(svc);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

/// Every test here logs through its own subscriber (see `err_review3.rs` for why).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

// ---------------------------------------------------------------------------------------------
// Errors inside an `io::Error`

/// A handler whose body-reading code works in `io::Result`, as code reading through `AsyncRead`
/// does: a body error becomes `io::Error::other(e)`.
async fn read_body_as_io(req: axum::extract::Request) -> Result<Response<String>, BoxError> {
    let body = Limited::new(req.into_body(), 16)
        .collect()
        .await
        .map_err(std::io::Error::other)?;
    Ok(Response::new(format!("{} bytes", body.to_bytes().len())))
}

/// `io::Error::other(e)` hides `e` from the `source()` chain (its `source()` is `e`'s source),
/// so an oversize body read through io code was answered 500 instead of 413.
#[tokio::test]
async fn a_length_limit_inside_an_io_error_is_413() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(read_body_as_io);
    let (addr, server) = serve(svc).await;

    let res = reqwest::Client::new()
        .post(format!("http://{addr}/hook"))
        .body(vec![b'x'; 1024])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let doc: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["type"], types::PAYLOAD_TOO_LARGE);

    // A body within the limit still reaches the handler.
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/hook"))
        .body("small")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "5 bytes");
    server.abort();
}

/// The same for the crate's own errors and a handler's `Problem`: whatever an `io::Error`
/// carries is recognised, also further down its chain.
#[tokio::test]
async fn an_error_carried_by_an_io_error_is_answered_as_itself() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let problem =
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail("unknown event");
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other(problem))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["detail"], "unknown event");

    // An io::Error whose inner error wraps the recognised one.
    #[derive(Debug, thiserror::Error)]
    #[error("reading the delivery")]
    struct Reading(#[source] tower::timeout::error::Elapsed);
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let err = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                Reading(tower::timeout::error::Elapsed::new()),
            );
            Err::<Response<Full<Bytes>>, _>(err)
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

    // A plain io::Error is still an unknown error.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
