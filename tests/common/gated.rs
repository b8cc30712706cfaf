//! A service that holds each request until the test lets it go: a request is provably in
//! flight for as long as a test needs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

/// A service that reports the path of each request reaching it and answers `done` only once
/// let go (one permit of the returned semaphore per request, in arrival order): a request is
/// provably in flight for as long as a test needs.
#[allow(clippy::type_complexity)]
pub(crate) fn gated() -> (
    impl tower::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<tokio::sync::Semaphore>,
) {
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = tower::service_fn({
        let release = Arc::clone(&release);
        move |req: Request<Incoming>| {
            let (entered_tx, release) = (entered_tx.clone(), Arc::clone(&release));
            async move {
                entered_tx.send(req.uri().path().to_owned()).unwrap();
                release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        }
    });
    (app, entered, release)
}

/// The path of the next request to reach a [`gated`] service.
pub(crate) async fn next_entered(
    entered: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> String {
    tokio::time::timeout(Duration::from_secs(10), entered.recv())
        .await
        .expect("no request reached the service")
        .unwrap()
}
