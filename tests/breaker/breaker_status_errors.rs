//! Circuit breaker: a reqwest error made by `error_for_status()` is classified by its status, as
//! the response it was: a 404 or a 429 is not the upstream failing, a 503 is. Every such error
//! counted as a failure, and a bot that asked for a few deleted pull requests opened the
//! breaker of an API that was up. Through real reqwest clients (0.13 and 0.12) and an axum
//! server on 127.0.0.1.

use std::time::Duration;

use axum::http::StatusCode;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};

/// A server on 127.0.0.1 that answers `/{status}` with that status.
async fn upstream() -> String {
    let app = axum::Router::new().route(
        "/{status}",
        axum::routing::get(
            |axum::extract::Path(status): axum::extract::Path<u16>| async move {
                StatusCode::from_u16(status).unwrap()
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The breaker's state after one call answered `status`, turned into an error by
/// `error_for_status()` (reqwest 0.13), with the error as is or boxed.
async fn state_after(base: &str, status: u16, boxed: bool) -> CircuitState {
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    let client = crate::client::builder().no_proxy().build().unwrap();
    let url = format!("{base}/{status}");
    let get = || reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap());
    if boxed {
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: reqwest::Request| {
                let client = client.clone();
                async move { Ok::<_, BoxError>(client.execute(req).await?.error_for_status()?) }
            });
        let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(get()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.downcast_ref::<reqwest::Error>()
                .unwrap()
                .status()
                .is_some()
        );
    } else {
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: reqwest::Request| {
                let client = client.clone();
                async move { client.execute(req).await?.error_for_status() }
            });
        let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(get()))
            .await
            .unwrap()
            .unwrap_err();
        let err = err.downcast_ref::<reqwest::Error>().unwrap();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
    }
    handle.state()
}

#[tokio::test]
async fn a_reqwest_status_error_is_classified_by_its_status() {
    let base = upstream().await;
    for boxed in [false, true] {
        for (status, state) in [
            (404, CircuitState::Closed),
            (422, CircuitState::Closed),
            (429, CircuitState::Closed),
            (500, CircuitState::Open),
            (503, CircuitState::Open),
        ] {
            assert_eq!(
                state_after(&base, status, boxed).await,
                state,
                "{status}, boxed: {boxed}"
            );
        }
    }
}

/// The same through reqwest 0.12.
#[tokio::test]
async fn a_reqwest_0_12_status_error_is_classified_by_its_status() {
    let base = upstream().await;
    for (status, state) in [(404, CircuitState::Closed), (502, CircuitState::Open)] {
        let (layer, handle) =
            CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1))
                .unwrap();
        let client = reqwest_0_12::Client::builder().no_proxy().build().unwrap();
        let svc =
            ServiceBuilder::new()
                .layer(layer)
                .service_fn(move |req: reqwest_0_12::Request| {
                    let client = client.clone();
                    async move { client.execute(req).await?.error_for_status() }
                });
        let req = reqwest_0_12::Request::new(
            reqwest_0_12::Method::GET,
            format!("{base}/{status}").parse().unwrap(),
        );
        let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
            .await
            .unwrap()
            .unwrap_err();
        let err = err.downcast_ref::<reqwest_0_12::Error>().unwrap();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(handle.state(), state, "{status}");
    }
}

/// The same through a reqwest client turned into a service of `http::Response`s, its errors
/// boxed: the breaker classifies them as the reqwest service's.
#[tokio::test]
async fn a_reqwest_status_error_of_an_http_service_is_classified_by_its_status() {
    let base = upstream().await;
    for (status, state) in [(404, CircuitState::Closed), (503, CircuitState::Open)] {
        let (layer, handle) =
            CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1))
                .unwrap();
        let client = crate::client::builder().no_proxy().build().unwrap();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: reqwest::Request| {
                let client = client.clone();
                async move {
                    let res = client.execute(req).await?.error_for_status()?;
                    Ok::<_, BoxError>(http::Response::from(res))
                }
            });
        let req = reqwest::Request::new(
            reqwest::Method::GET,
            format!("{base}/{status}").parse().unwrap(),
        );
        let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
            .await
            .unwrap()
            .unwrap_err();
        let err = err.downcast_ref::<reqwest::Error>().unwrap();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(handle.state(), state, "{status}");
    }
}
