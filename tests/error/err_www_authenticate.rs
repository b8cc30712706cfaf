//! WebhookErrorLayer: an inner service's own `WWW-Authenticate` against the layer's challenge, and
//! the layer's log lines inside the request's span.

use crate::axum_serve;
use crate::failing_body;
use crate::logs;

use std::convert::Infallible;
use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use failing_body::Failing;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer};

const INNER: &str = r#"Basic realm="inner""#;
const LAYERS: &str = r#"Bearer realm="hooks""#;

/// Every `WWW-Authenticate` value of a response's `headers`.
fn challenges(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// GETs `path` from a real server.
async fn get(addr: std::net::SocketAddr, path: &str) -> reqwest::Response {
    crate::client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers")
}

// ---------------------------------------------------------------------------------------------
// The layer's challenge does not replace an inner service's own

/// A handler's own 401 that names its challenge keeps it, whether the layer passes the response
/// through or re-renders the `Problem` it carries: the layer's `.challenge(..)` is only for a
/// 401 that has none. It used to replace the handler's `Basic` with the layer's `Bearer` on a
/// re-rendered problem, so the client was told to authenticate in a scheme the handler does not
/// accept.
#[tokio::test]
async fn an_inner_401s_own_challenge_is_kept_and_the_layers_only_fills_in() {
    let (logs, _guard) = Logs::capture();
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge(LAYERS))
        .service_fn(|req: axum::extract::Request| async move {
            let res = match req.uri().path() {
                // A plain 401 of the handler's, with its challenge: passed through.
                "/plain" => (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, INNER)],
                    "no",
                )
                    .into_response(),
                // A problem whose response carries the handler's challenge: re-rendered.
                "/problem" => (
                    [(header::WWW_AUTHENTICATE, INNER)],
                    Problem::new(StatusCode::UNAUTHORIZED),
                )
                    .into_response(),
                // Two challenges of the handler's: both kept, in order.
                "/two" => {
                    let mut res = Problem::new(StatusCode::UNAUTHORIZED).into_response();
                    let headers = res.headers_mut();
                    headers.append(header::WWW_AUTHENTICATE, INNER.parse().unwrap());
                    headers.append(header::WWW_AUTHENTICATE, "Signature".parse().unwrap());
                    res
                }
                // A problem that names its challenge, sent by the handler under another one:
                // the header the handler set is what goes out.
                "/own" => (
                    [(header::WWW_AUTHENTICATE, INNER)],
                    Problem::new(StatusCode::UNAUTHORIZED).with_challenge("Signature"),
                )
                    .into_response(),
                // No challenge of the handler's: the layer's fills in.
                _ => Problem::new(StatusCode::UNAUTHORIZED).into_response(),
            };
            Ok::<_, Infallible>(res)
        });
    let (addr, server) = axum_serve::serve(app).await;

    for path in ["/plain", "/problem", "/own"] {
        let res = get(addr, path).await;
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(challenges(res.headers()), [INNER], "{path}");
    }
    let res = get(addr, "/problem").await;
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = get(addr, "/two").await;
    assert_eq!(challenges(res.headers()), [INNER, "Signature"]);
    let res = get(addr, "/none").await;
    assert_eq!(challenges(res.headers()), [LAYERS]);
    server.abort();
    // Each problem is logged once, as a rejection; nothing else went wrong.
    let text = logs.text();
    assert_eq!(text.matches("request rejected").count(), 5, "{text}");
}

/// A 401 the inner stack answered itself without a challenge (a handler's bare
/// `StatusCode::UNAUTHORIZED`) gets the layer's, as a 401 the layer renders does: a 401 must
/// carry one (RFC 9110, section 15.5.2). It used to go out without any, though the layer had one
/// for every 401 that names none. Other statuses, and a layer without a challenge, add nothing.
#[tokio::test]
async fn a_passed_through_401_without_a_challenge_gets_the_layers() {
    let (_logs, _guard) = Logs::capture();
    let handler = |req: axum::extract::Request| async move {
        let status = match req.uri().path() {
            "/forbidden" => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Ok::<_, Infallible>((status, "no").into_response())
    };
    // Sent without the spaces at its ends, as on the layer's own 401.
    let with = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge(format!(" {LAYERS}\t")))
        .service_fn(handler);
    let (addr, server) = axum_serve::serve(with).await;
    let res = get(addr, "/plain").await;
    assert_eq!(res.status(), 401);
    assert_eq!(challenges(res.headers()), [LAYERS]);
    assert_eq!(res.text().await.unwrap(), "no");
    let res = get(addr, "/forbidden").await;
    assert_eq!(res.status(), 403);
    assert!(challenges(res.headers()).is_empty());
    server.abort();

    let without = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(handler);
    let (addr, server) = axum_serve::serve(without).await;
    let res = get(addr, "/plain").await;
    assert_eq!(res.status(), 401);
    assert!(challenges(res.headers()).is_empty());
    server.abort();
}

/// A `Problem` a tower service puts in its 401's extensions, without a `WWW-Authenticate`
/// header (a hyper handler or a middleware, where axum's `IntoResponse` would have written the
/// header): the problem's own challenge goes out, and the layer's only for a problem that names
/// none. The layer's used to be written into the response before the problem was found, and
/// was then kept as one the inner stack set, so the client was sent a scheme the endpoint does
/// not accept.
#[tokio::test]
async fn a_problem_in_a_responses_extensions_keeps_its_own_challenge() {
    let (_logs, _guard) = Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge(LAYERS))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let mut problem = Problem::new(StatusCode::UNAUTHORIZED);
            if req.uri().path() == "/named" {
                problem = problem.with_challenge(INNER);
            }
            let mut res = Response::new(Full::<Bytes>::default());
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            res.extensions_mut().insert(problem);
            Ok::<_, Infallible>(res)
        });
    for (path, challenge) in [("/named", INNER), ("/unnamed", LAYERS)] {
        let req = Request::get(path).body(Full::default()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(challenges(res.headers()), [challenge], "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["status"], 401, "{path}");
    }
}

/// The same through two layers: an inner `WebhookErrorLayer`'s challenge is the inner stack's
/// own, and an outer layer with another one keeps it. An error the layer renders itself keeps a
/// challenge its renderer set.
#[tokio::test]
async fn an_inner_layers_challenge_and_a_renderers_are_kept() {
    let (_logs, _guard) = Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge(LAYERS))
        .layer(WebhookErrorLayer::new().challenge(INNER))
        .service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, BoxError>(Problem::new(StatusCode::UNAUTHORIZED).into())
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), 401);
    let got = challenges(res.headers());
    assert_eq!(got, [INNER]);

    let layer = WebhookErrorLayer::new()
        .challenge(LAYERS)
        .render_with(|p: &Problem| {
            Response::builder()
                .status(p.status())
                .header(header::WWW_AUTHENTICATE, INNER)
                .body(Bytes::new())
                .unwrap()
        });
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(
                    Problem::new(StatusCode::UNAUTHORIZED).into(),
                )
            });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let got = challenges(res.headers());
    assert_eq!(got, [INNER]);
    // On a response of the inner stack that carries a problem and its own challenge, that one
    // is kept in place of the renderer's.
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<Full<Bytes>>| async {
            let mut res = Response::new(Full::<Bytes>::default());
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            let signature = http::HeaderValue::from_static("Signature");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, signature);
            res.extensions_mut()
                .insert(Problem::new(StatusCode::UNAUTHORIZED));
            Ok::<_, Infallible>(res)
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let got = challenges(res.headers());
    assert_eq!(got, ["Signature"]);
}

// ---------------------------------------------------------------------------------------------
// The layer's log lines inside the request's span

/// The span tower-http's `TraceLayer` opens for a request, as the log shows it.
const SPAN: &str = "request{method=";

/// With a tracing layer outside it, as the guide places it, every line the layer logs is inside
/// the request's span: an error it answers, and a body that fails after the head went out.
#[tokio::test]
async fn a_tracing_layer_outside_the_error_layer_spans_its_log_lines() {
    let (logs, _guard) = Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(WebhookErrorLayer::new())
        .service_fn(|req: Request<Full<Bytes>>| async move {
            match req.uri().path() {
                "/error" => Err::<_, BoxError>("database connection reset".into()),
                _ => Ok(Response::new(Failing::error(
                    "partial",
                    "upstream connection lost",
                ))),
            }
        });
    let req = |path: &str| Request::get(path).body(Full::default()).unwrap();
    let res = svc.clone().oneshot(req("/error")).await.unwrap();
    assert_eq!(res.status(), 500);
    let res = svc.oneshot(req("/body")).await.unwrap();
    assert!(res.into_body().collect().await.is_err());

    let text = logs.text();
    for line in [
        "request failed",
        "the response body failed while it streamed",
    ] {
        let logged: Vec<_> = text.lines().filter(|l| l.contains(line)).collect();
        assert_eq!(logged.len(), 1, "{text}");
        assert!(
            logged[0].contains(SPAN),
            "not in the request's span: {text}"
        );
    }
}

/// A challenge of only spaces (a realm read from an empty setting) is no challenge: a 401 must
/// carry at least one (RFC 9110, section 15.5.2), and an empty `WWW-Authenticate` carries none.
/// A problem's is left out and the layer's takes its place; a layer's own empty one adds
/// nothing to a 401 that has none. Both are logged.
#[tokio::test]
async fn an_empty_challenge_is_left_out_and_the_layers_takes_its_place() {
    let (logs, _guard) = Logs::capture();
    let handler = |req: axum::extract::Request| async move {
        match req.uri().path() {
            "/problem" => Err::<Response<Full<Bytes>>, BoxError>(
                Problem::new(StatusCode::UNAUTHORIZED)
                    .with_challenge(" \t ")
                    .into(),
            ),
            _ => {
                let mut res = Response::new(Full::new(Bytes::from_static(b"no")));
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                Ok(res)
            }
        }
    };
    let with = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge(LAYERS))
        .service_fn(handler);
    let (addr, server) = axum_serve::serve(with).await;
    let res = get(addr, "/problem").await;
    assert_eq!(res.status(), 401);
    assert_eq!(challenges(res.headers()), [LAYERS]);
    server.abort();

    let empty = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().challenge("  "))
        .service_fn(handler);
    let (addr, server) = axum_serve::serve(empty).await;
    for path in ["/problem", "/plain"] {
        let res = get(addr, path).await;
        assert_eq!(res.status(), 401, "{path}");
        assert!(challenges(res.headers()).is_empty(), "{path}");
    }
    server.abort();
    assert!(
        logs.text()
            .contains("challenge is empty or not a valid header value"),
        "{}",
        logs.text()
    );
}
