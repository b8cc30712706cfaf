//! Serving a whole app with axum on a loopback port, for tests that need a real server.

use std::convert::Infallible;
use std::net::SocketAddr;

use tower::Service;

/// Serves `svc` (the whole app) with axum on a loopback port.
pub(crate) async fn serve<S>(svc: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
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
