//! Circuit breaker: calls that were never made (another breaker's `CircuitOpen`, a reqwest
//! builder error, a load shedder's `Overloaded`) say nothing of the upstream, through real reqwest
//! clients and an axum server on 127.0.0.1.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, KeyedCircuitBreakerLayer,
    OpenDuration,
};

/// A server on 127.0.0.1: `/down/..` answers 503, anything else 200; and its count of requests.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if uri.path().starts_with("/down") {
                (StatusCode::SERVICE_UNAVAILABLE, "down")
            } else {
                (StatusCode::OK, "up")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn timeout<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(10), f)
}

fn get(url: &str) -> reqwest::Request {
    reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap())
}

/// Sends `GET url` through `svc`, which must answer within 10 s.
async fn send<S>(svc: &mut S, url: &str) -> Result<reqwest::Response, BoxError>
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>,
{
    let call = svc.ready().await.expect("ready").call(get(url));
    timeout(call).await.expect("answered within 10 s")
}

/// The first segment of the path: one breaker per "repository".
fn per_repo(req: &reqwest::Request) -> String {
    req.url()
        .path_segments()
        .and_then(|mut segments| segments.next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_open_keyed_breaker_under_a_global_one_does_not_open_the_global_one() {
    let (base, hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let (global, global_handle) = CircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .name("api")
            .consecutive_failures(3),
    )
    .unwrap();
    let (keyed, repos) = KeyedCircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .name("repo")
            .consecutive_failures(1),
        16,
        per_repo,
    )
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(global)
        .layer(keyed)
        .service(client);

    // One repository fails once: its own breaker opens; the global one counts one failure.
    let res = send(&mut svc, &format!("{base}/down/x")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        repos.get(&"down".to_owned()).unwrap().state(),
        CircuitState::Open
    );
    assert_eq!(global_handle.snapshot().consecutive_failures, 1);

    // Its breaker refuses the next calls: they are not made, so the global breaker does not
    // hold them against the upstream.
    for _ in 0..5 {
        let err = send(&mut svc, &format!("{base}/down/x")).await.unwrap_err();
        assert_eq!(
            CircuitOpen::find(&*err).unwrap().state(),
            CircuitState::Open
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let snapshot = global_handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(snapshot.consecutive_failures, 1);
    assert_eq!(snapshot.buffered_calls, 1);

    // Every other repository is still served.
    let res = send(&mut svc, &format!("{base}/up/x")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(global_handle.state(), CircuitState::Closed);
}

#[tokio::test]
async fn keyed_breakers_over_an_open_global_one_serve_again_once_it_closes() {
    let (base, hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let (keyed, repos) = KeyedCircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .name("repo")
            .consecutive_failures(1),
        16,
        per_repo,
    )
    .unwrap();
    let (global, global_handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().name("api")).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(keyed)
        .layer(global)
        .service(client);

    // The global breaker is opened by hand: every call is refused beneath the keyed ones.
    global_handle.transition_to_forced_open().unwrap();
    for repo in ["a", "b", "a"] {
        let err = send(&mut svc, &format!("{base}/{repo}/x"))
            .await
            .unwrap_err();
        assert_eq!(
            CircuitOpen::find(&*err).unwrap().state(),
            CircuitState::ForcedOpen
        );
    }
    for repo in ["a", "b"] {
        let snapshot = repos.get(&repo.to_owned()).unwrap().snapshot();
        assert_eq!(snapshot.state, CircuitState::Closed, "{repo}");
        assert_eq!(snapshot.buffered_calls, 0, "{repo}");
    }

    // Closed again: the repositories are served at once, not after their own open duration.
    global_handle.transition_to_closed().unwrap();
    for repo in ["a", "b"] {
        let res = send(&mut svc, &format!("{base}/{repo}/x")).await.unwrap();
        assert_eq!(res.status(), 200, "{repo}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_half_open_probe_refused_beneath_gives_its_permit_back() {
    let (base, _hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let open_for = Duration::from_secs(5);
    let (outer, outer_handle) = CircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .name("outer")
            .open_duration(OpenDuration::Fixed(open_for)),
    )
    .unwrap();
    let (inner, inner_handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().name("inner")).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(client);

    outer_handle.transition_to_open().unwrap();
    inner_handle.transition_to_forced_open().unwrap();
    tokio::time::pause();
    tokio::time::advance(open_for + Duration::from_millis(1)).await;
    tokio::time::resume();
    assert_eq!(outer_handle.state(), CircuitState::HalfOpen);

    // The probe is refused by the inner breaker: no verdict, and its permit is free again.
    let err = send(&mut svc, &format!("{base}/up")).await.unwrap_err();
    assert_eq!(
        CircuitOpen::find(&*err).unwrap().state(),
        CircuitState::ForcedOpen
    );
    assert_eq!(outer_handle.state(), CircuitState::HalfOpen);
    assert_eq!(outer_handle.snapshot().half_open_permits_taken, 0);

    inner_handle.transition_to_closed().unwrap();
    let res = send(&mut svc, &format!("{base}/up")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(outer_handle.state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_reqwest_builder_error_is_not_held_against_the_upstream() {
    let (base, hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(client);

    // A URL taken from a webhook payload, in a scheme reqwest does not send.
    let err = timeout(svc.ready().await.unwrap().call(get(&format!(
        "ftp://{}/file",
        base.trim_start_matches("http://")
    ))))
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.downcast_ref::<reqwest::Error>().unwrap().is_builder());
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(snapshot.buffered_calls, 0);

    // A real failure still counts.
    let res = send(&mut svc, &format!("{base}/down")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reqwest_0_12_builder_error_boxed_by_a_layer_is_not_held_against_the_upstream() {
    let (base, _hits) = upstream().await;
    let client = reqwest_0_12::Client::builder().no_proxy().build().unwrap();
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    // An error-mapping layer beneath the breaker boxes reqwest's error.
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .map_err(BoxError::from)
        .service(client);

    let req = reqwest_0_12::Request::new(
        reqwest_0_12::Method::GET,
        format!("ftp://{}/file", base.trim_start_matches("http://"))
            .parse()
            .unwrap(),
    );
    let err = timeout(svc.ready().await.unwrap().call(req))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.downcast_ref::<reqwest_0_12::Error>()
            .unwrap()
            .is_builder()
    );
    assert_eq!(handle.snapshot().buffered_calls, 0);
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// What a call gets through an outer breaker (one failure opens it) over a layer that turns
/// an inner breaker's refusal into another error with `carried`, the inner breaker forced
/// open; the outer breaker's handle.
async fn refused_beneath(
    carried: fn(CircuitOpen) -> BoxError,
) -> (
    BoxError,
    tower_webhook::circuit_breaker::CircuitBreakerHandle,
) {
    let (outer, outer_handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    let (inner, inner_handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(outer)
        .map_err(move |err: BoxError| match err.downcast::<CircuitOpen>() {
            Ok(open) => carried(*open),
            Err(other) => other,
        })
        .layer(inner)
        .service_fn(|_: ()| async { Ok::<_, BoxError>(http::Response::new(())) });
    inner_handle.transition_to_forced_open().unwrap();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    (err, outer_handle)
}

/// A layer beneath the outer breaker answers gRPC statuses, as tonic code does: the refusal it
/// carries is neutral.
#[tokio::test]
async fn a_refusal_beneath_carried_in_a_tonic_status_is_neutral() {
    let (err, outer_handle) = refused_beneath(|open| tonic::Status::from(open).into()).await;
    let status = err
        .downcast_ref::<tonic::Status>()
        .expect("a tonic::Status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(outer_handle.state(), CircuitState::Closed);
    assert_eq!(outer_handle.snapshot().buffered_calls, 0);
}

/// A reqwest client turned into a service of `http` types (a tower stack shared with other
/// HTTP clients): `http::Response`s, errors boxed. The breaker classifies its errors as the
/// reqwest service's.
fn http_client(
    client: reqwest::Client,
) -> impl Service<
    reqwest::Request,
    Response = http::Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<reqwest::Body>, BoxError>>,
> + Clone {
    tower::service_fn(move |req: reqwest::Request| {
        let client = client.clone();
        async move {
            let res = client.execute(req).await?.error_for_status()?;
            Ok::<_, BoxError>(http::Response::from(res))
        }
    })
}

#[tokio::test]
async fn a_reqwest_builder_error_of_an_http_service_is_not_held_against_the_upstream() {
    let (base, hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(http_client(client));

    let ftp = format!("ftp://{}/file", base.trim_start_matches("http://"));
    let call = svc.ready().await.unwrap().call(get(&ftp));
    let err = timeout(call).await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<reqwest::Error>().unwrap().is_builder());
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(snapshot.buffered_calls, 0);

    // The answers `error_for_status()` made errors count by their status: a 503 is a failure.
    let call = svc
        .ready()
        .await
        .unwrap()
        .call(get(&format!("{base}/down")));
    let err = timeout(call).await.unwrap().unwrap_err();
    let status = err.downcast_ref::<reqwest::Error>().unwrap().status();
    assert_eq!(status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A layer beneath the outer breaker answers problems, as a handler's `?` into one does: a
/// problem made of the refusal (type `CIRCUIT_OPEN`) is neutral too.
#[tokio::test]
async fn a_refusal_beneath_carried_in_a_problem_is_neutral() {
    let (err, outer_handle) =
        refused_beneath(|open| tower_webhook::error::Problem::from_error(&open).into()).await;
    let problem = err
        .downcast_ref::<tower_webhook::error::Problem>()
        .expect("a Problem");
    assert_eq!(
        problem.problem_type(),
        tower_webhook::error::types::CIRCUIT_OPEN
    );
    assert_eq!(outer_handle.state(), CircuitState::Closed);
    assert_eq!(outer_handle.snapshot().buffered_calls, 0);
}

/// A load shedder beneath the breaker refusing a burst (`Overloaded`: the local concurrency
/// limit is taken) is no upstream failing: the calls were not made, and the breaker stays
/// closed. Counted as failures, ten of them opened it while the upstream answered every request
/// it was sent.
#[tokio::test]
async fn a_load_shedders_refusals_beneath_are_not_held_against_the_upstream() {
    let (base, hits) = upstream().await;
    let client = crate::client::builder().no_proxy().build().unwrap();
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .load_shed()
        .concurrency_limit(1)
        .service(client);

    // This service holds the only slot of the concurrency limit: the others are shed.
    let mut holder = svc.clone();
    holder.ready().await.unwrap();
    for _ in 0..10 {
        let err = send(&mut svc.clone(), &format!("{base}/up"))
            .await
            .unwrap_err();
        assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(snapshot.buffered_calls, 0);
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let res = timeout(holder.call(get(&format!("{base}/up"))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(handle.snapshot().buffered_calls, 1);
}
