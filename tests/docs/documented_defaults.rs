//! The defaults and limits the docs state (docs/signature.md, docs/circuit-breaker.md,
//! docs/tunnel.md, README), checked through the public API.

use std::time::Duration;

/// docs/signature.md, "Configuration": `max_body_size` 25 MiB, `timestamp_tolerance` 300 s,
/// `max_signatures` 8, a replay store on, `replay_ttl` 24 h, `claim_ttl` 5 min,
/// `record_delivery` `AfterSuccess`, `on_replay` `Reject`, `request_id_header` `x-request-id`.
#[test]
fn signature_layer_defaults_are_the_documented_ones() {
    use tower_webhook::signature::SignatureLayer;

    let shown = format!("{:?}", SignatureLayer::github("secret").unwrap());
    for part in [
        "max_body: 26214400",
        "tolerance: 300s",
        "max_signatures: 8",
        "replay_store: true",
        "replay_ttl: 86400s",
        "claim_ttl: 300s",
        "request_id_header: \"x-request-id\"",
        "record: AfterSuccess",
        "on_replay: Reject",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    let off = format!(
        "{:?}",
        SignatureLayer::github("secret")
            .unwrap()
            .without_replay_store()
    );
    assert!(off.contains("replay_store: false"), "{off}");
}

/// docs/signature.md: `max_signatures(n)` takes 1 to 8; values outside are brought into that
/// range rather than turning the check off (0) or raising the documented maximum.
#[test]
fn max_signatures_stays_within_one_to_eight() {
    use tower_webhook::signature::SignatureLayer;

    let at = |n: usize| {
        format!(
            "{:?}",
            SignatureLayer::github("s").unwrap().max_signatures(n)
        )
    };
    assert!(at(0).contains("max_signatures: 1,"), "{}", at(0));
    assert!(at(3).contains("max_signatures: 3,"), "{}", at(3));
    assert!(at(1000).contains("max_signatures: 8,"), "{}", at(1000));
}

/// docs/signature.md: `replay_ttl` and `claim_ttl` under 1 ms panic; 1 ms is accepted.
#[test]
fn replay_and_claim_ttl_under_a_millisecond_panic() {
    use tower_webhook::signature::SignatureLayer;

    let layer = || SignatureLayer::github("s").unwrap();
    let _ = layer().replay_ttl(Duration::from_millis(1));
    let _ = layer().claim_ttl(Duration::from_millis(1));
    for set in [
        (|l: SignatureLayer| l.replay_ttl(Duration::from_micros(999))) as fn(_) -> _,
        |l: SignatureLayer| l.claim_ttl(Duration::from_micros(999)),
    ] {
        let l = layer();
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || set(l))).is_err());
    }
}

/// docs/signature.md: `MemoryReplayStore` holds 100 000 ids by default.
#[test]
fn memory_replay_store_holds_a_hundred_thousand_ids_by_default() {
    use tower_webhook::signature::MemoryReplayStore;

    let shown = format!("{:?}", MemoryReplayStore::default());
    assert!(shown.contains("capacity: 100000"), "{shown}");
}

/// docs/circuit-breaker.md: a failure rate of 50 % over at least 100 calls, 5 consecutive
/// failures and 30 s open by default, the last two from the environment variables when set.
#[test]
fn circuit_breaker_defaults_are_the_documented_ones() {
    use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration};

    let shown = format!("{:?}", CircuitBreakerConfig::default());
    for part in [
        "failure_rate: Some(50.0)",
        "minimum_calls: 100",
        "consecutive_failures: 5",
        "half_open_probes: 1",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    let open = format!("{:?}", OpenDuration::Fixed(Duration::from_secs(30)));
    assert!(shown.contains(&open), "{open} not in {shown}");

    let from_env = CircuitBreakerConfig::from_env_with(|_| None).unwrap();
    assert_eq!(
        format!("{from_env:?}"),
        shown,
        "unset variables give the defaults"
    );
}

/// docs/circuit-breaker.md, "Retries": up to 3 retries, backoff from 100 ms doubling up to 10 s,
/// `Retry-After` up to 60 s, a retry budget.
#[test]
fn retry_policy_defaults_are_the_documented_ones() {
    use tower_webhook::retry::RetryPolicy;

    let policy = RetryPolicy::new();
    let shown = format!("{policy:?}");
    for part in [
        "max_retries: 3",
        "base: 100ms",
        "cap: 10s",
        "max_retry_after: 60s",
        "budget: true",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    assert_eq!(policy.max_delay(0), Duration::from_millis(100));
    assert_eq!(policy.max_delay(1), Duration::from_millis(200));
    assert_eq!(policy.max_delay(20), Duration::from_secs(10));
}

/// docs/tunnel.md: startup timeouts bore 10 s, localtunnel 10 s, cloudflared 30 s; the probe
/// is bounded by 5 s; reconnects back off from 250 ms to 30 s.
#[test]
fn tunnel_defaults_are_the_documented_ones() {
    use tower_webhook::tunnel::{Bore, Cloudflared, LocalTunnel, Provider, Tunnel};

    assert_eq!(
        Provider::startup_timeout(&Bore::new()),
        Duration::from_secs(10)
    );
    assert_eq!(
        Provider::startup_timeout(&LocalTunnel::new()),
        Duration::from_secs(10)
    );
    assert_eq!(
        Provider::startup_timeout(&Cloudflared::new()),
        Duration::from_secs(30)
    );
    let shown = format!("{:?}", Tunnel::builder());
    for part in [
        "probe: true",
        "probe_timeout: 5s",
        "reconnect: true",
        "backoff_min: 250ms",
        "backoff_max: 30s",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
}

/// docs/errors.md: a custom renderer's answer still gets what an error's response needs and the
/// renderer left out: the request id (echoed in its header) and, for a 408 or a 413 over
/// HTTP/1.x, `Connection: close`; over HTTP/2 no `Connection` header (it is forbidden there).
#[tokio::test]
async fn a_renderer_answer_gets_the_request_id_and_connection_close() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode, Version};
    use http_body_util::Full;
    use tower::{BoxError, ServiceBuilder, ServiceExt};
    use tower_webhook::error::{Problem, WebhookErrorLayer};

    for status in [StatusCode::PAYLOAD_TOO_LARGE, StatusCode::REQUEST_TIMEOUT] {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let svc = ServiceBuilder::new()
                .layer(WebhookErrorLayer::new().render_with(|p: &Problem| {
                    let mut res = Response::new(Bytes::from(format!("<h1>{}</h1>", p.title())));
                    *res.status_mut() = p.status();
                    res
                }))
                .service_fn(move |_req: Request<Full<Bytes>>| async move {
                    Err::<Response<Full<Bytes>>, BoxError>(Problem::new(status).into())
                });
            let req = Request::post("/hook")
                .version(version)
                .header("x-request-id", "req-7")
                .body(Full::default())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), status);
            assert_eq!(
                res.headers()["x-request-id"],
                "req-7",
                "{status} {version:?}"
            );
            let connection = res.headers().get("connection");
            if version == Version::HTTP_11 {
                assert_eq!(connection.unwrap(), "close", "{status}");
            } else {
                assert!(connection.is_none(), "{status} {version:?}: {connection:?}");
            }
        }
    }
}

/// src/signature/mod.rs: `OnReplay::Acknowledge` with a status that is not 2xx is refused when
/// set (a panic), like a TTL under a millisecond; 200 and 202 are taken.
#[test]
fn acknowledging_replays_with_a_non_2xx_status_panics() {
    use http::StatusCode;
    use tower_webhook::signature::{OnReplay, SignatureLayer};

    let layer = || SignatureLayer::github("s").unwrap();
    let _ = layer().on_replay(OnReplay::Acknowledge(StatusCode::OK));
    let _ = layer().on_replay(OnReplay::Acknowledge(StatusCode::ACCEPTED));
    for status in [StatusCode::CONFLICT, StatusCode::MOVED_PERMANENTLY] {
        let l = layer();
        let set = std::panic::AssertUnwindSafe(move || l.on_replay(OnReplay::Acknowledge(status)));
        assert!(std::panic::catch_unwind(set).is_err(), "{status}");
    }
}

/// docs/circuit-breaker.md: under `WebhookErrorLayer`, a call an OPEN breaker refuses is
/// answered 503 with `Retry-After` and a `circuit-open` problem; in FORCED_OPEN, which ends only
/// by hand, the 503 has no `Retry-After`.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_a_503_with_retry_after_and_a_forced_open_one_without() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use tower::{BoxError, ServiceBuilder};
    use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    use tower_webhook::error::{WebhookErrorLayer, types};

    let (breaker, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(breaker)
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
        });

    handle.transition_to_open().unwrap();
    let (status, retry_after, kind) = answer(svc.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        retry_after.as_deref(),
        Some("30"),
        "the default open duration"
    );
    assert_eq!(kind, types::CIRCUIT_OPEN);

    handle.transition_to_forced_open().unwrap();
    let (status, retry_after, kind) = answer(svc).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after, None);
    assert_eq!(kind, types::CIRCUIT_OPEN);
}

/// Sends one request; returns the status, the `Retry-After` and the problem's `type`.
async fn answer<S, B>(svc: S) -> (http::StatusCode, Option<String>, String)
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
        >,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let res = svc
        .oneshot(http::Request::new(Default::default()))
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        status,
        retry_after,
        problem["type"].as_str().unwrap().to_owned(),
    )
}

/// README and docs/signature.md: axum's extractors stop at 2 MB of body unless
/// `DefaultBodyLimit` says otherwise, so a verified 3 MB delivery is refused 413 by the `String`
/// extractor in a router without it, and reaches the handler (202) in the README's router, which
/// raises the limit to the layer's 25 MiB.
#[tokio::test]
async fn the_readme_router_takes_a_verified_delivery_over_axums_default_limit() {
    use axum::{Router, extract::DefaultBodyLimit, routing::post};
    use hmac::{Hmac, KeyInit, Mac};
    use http::{Request, StatusCode};
    use tower::ServiceExt;
    use tower_webhook::{
        error::WebhookErrorLayer,
        signature::{SignatureLayer, VerifiedWebhook},
    };

    async fn on_github(hook: VerifiedWebhook, body: String) -> StatusCode {
        assert_eq!(hook.event(), Some("push"));
        assert_eq!(body.len(), 3 * 1024 * 1024);
        StatusCode::ACCEPTED
    }
    let secret = "It's a Secret to Everybody";
    let body = "x".repeat(3 * 1024 * 1024);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let delivery = || {
        Request::post("/api/v1/github_webhooks")
            .header("x-hub-signature-256", &signature)
            .header("x-github-event", "push")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .body(axum::body::Body::from(body.clone()))
            .unwrap()
    };
    let route = || {
        Router::new().route(
            "/api/v1/github_webhooks",
            post(on_github).route_layer(SignatureLayer::github(secret).unwrap()),
        )
    };

    let readme: Router = route()
        .layer(DefaultBodyLimit::max(25 * 1024 * 1024))
        .layer(WebhookErrorLayer::new());
    let res = readme.oneshot(delivery()).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let without: Router = route().layer(WebhookErrorLayer::new());
    let res = without.oneshot(delivery()).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// docs/circuit-breaker.md, "Status endpoint": the documented snapshot of a CLOSED breaker with
/// a count window of 16 calls, 4 of them failed, the last 2 in a row, is what the handle gives.
#[tokio::test]
async fn the_documented_closed_snapshot_is_what_the_handle_gives() {
    use http::{Request, Response, StatusCode};
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    use tower_webhook::circuit_breaker::{
        CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow,
    };

    let config = CircuitBreakerConfig::default()
        .name("github-api")
        .sliding_window(SlidingWindow::Count(16));
    let (breaker, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(|req: Request<u16>| async move {
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::from_u16(*req.body()).unwrap();
            Ok::<_, BoxError>(res)
        });
    let mut statuses = vec![200; 16];
    for failed in [3, 9, 14, 15] {
        statuses[failed] = 500;
    }
    for status in statuses {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(status))
            .await
            .unwrap();
    }
    let documented: serde_json::Value = serde_json::from_str(
        r#"{"name":"github-api","state":"CLOSED","failure_rate":25.0,"slow_call_rate":0.0,
 "buffered_calls":16,"failed_calls":4,"successful_calls":12,"slow_calls":0,
 "consecutive_failures":2,"not_permitted_calls":0,"half_open_permits_taken":0,
 "retry_after_ms":null,"generation":0}"#,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(handle.snapshot()).unwrap(), documented);
}

/// docs/circuit-breaker.md, "Status endpoint": once OPEN the counts are empty and the snapshot
/// tells how long the breaker stays open and how many calls it refused, as documented.
#[tokio::test(start_paused = true)]
async fn the_documented_open_snapshot_is_what_the_handle_gives() {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};

    let config = CircuitBreakerConfig::default().name("github-api");
    let (breaker, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(|_: Request<()>| async {
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            Ok::<_, BoxError>(res)
        });
    for _ in 0..5 {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_millis(2500)).await;
    for _ in 0..3 {
        let refused = svc.ready().await.unwrap().call(Request::new(())).await;
        assert!(refused.is_err());
    }
    let documented: serde_json::Value = serde_json::from_str(
        r#"{"name":"github-api","state":"OPEN","failure_rate":null,"slow_call_rate":null,
 "buffered_calls":0,"failed_calls":0,"successful_calls":0,"slow_calls":0,
 "consecutive_failures":0,"not_permitted_calls":3,"half_open_permits_taken":0,
 "retry_after_ms":27500,"generation":1}"#,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(handle.snapshot()).unwrap(), documented);
}
