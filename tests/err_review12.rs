//! WebhookErrorLayer, twelfth review: an inner service's own `WWW-Authenticate` against the
//! layer's challenge.

#[path = "common/axum_serve.rs"]
mod axum_serve;
#[path = "common/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer};

const INNER: &str = r#"Basic realm="inner""#;
const LAYERS: &str = r#"Bearer realm="hooks""#;

/// Every `WWW-Authenticate` value of a response.
fn challenges(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// GETs `path` from a real server.
async fn get(addr: std::net::SocketAddr, path: &str) -> reqwest::Response {
    reqwest::Client::new()
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
        assert_eq!(challenges(&res), [INNER], "{path}");
    }
    let res = get(addr, "/problem").await;
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = get(addr, "/two").await;
    assert_eq!(challenges(&res), [INNER, "Signature"]);
    let res = get(addr, "/none").await;
    assert_eq!(challenges(&res), [LAYERS]);
    server.abort();
    // Each problem is logged once, as a rejection; nothing else went wrong.
    let text = logs.text();
    assert_eq!(text.matches("request rejected").count(), 5, "{text}");
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
    let got: Vec<_> = res
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .collect();
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
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, BoxError>(Problem::new(StatusCode::UNAUTHORIZED).into())
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let got: Vec<_> = res
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .collect();
    assert_eq!(got, [INNER]);
}
