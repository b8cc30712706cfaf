//! WebhookErrorLayer: request ids that a browser resolves to a host are no `instance`, and the
//! credentials of URLs in error chains and panic messages stay out of the log.

use crate::axum_serve;
use crate::logs;

use std::convert::Infallible;
use std::time::Duration;

use axum::response::IntoResponse;
use http::StatusCode;
use logs::Logs;
use tower::{BoxError, ServiceBuilder};
use tower_webhook::error::{Problem, WebhookErrorLayer};

/// Sends `GET /hook` with `x-request-id: id` to a real server, and returns the answer's
/// `x-request-id` and its problem document.
async fn problem_for(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    id: &str,
) -> (Option<String>, serde_json::Value) {
    let res = client
        .get(format!("http://{addr}/hook"))
        .header("x-request-id", id)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status(), 409, "{id}");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let echoed = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let doc = serde_json::from_slice(&res.bytes().await.unwrap()).expect("valid JSON");
    (echoed, doc)
}

// ---------------------------------------------------------------------------------------------
// `instance`: no scheme that browsers resolve to a host, nor one that runs

/// A request id under a scheme the URL Standard makes special (`https:evil.example`,
/// `http:/evil.example`) names a host to every WHATWG parser (browsers, the `url` crate) as
/// much as `https://evil.example` does, which the layer already kept out of `instance`; and a
/// `javascript:` or `data:` id is content of the request's own that a client showing `instance`
/// as a link would run. Both used to be copied into the document. They are left out now, and
/// still echoed in `x-request-id`; ids under other schemes (`urn:uuid:...`) and plain ids stay.
#[tokio::test]
async fn an_id_a_browser_resolves_to_a_host_or_runs_is_no_instance() {
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: axum::extract::Request| async {
            Ok::<_, Infallible>(Problem::new(StatusCode::CONFLICT).into_response())
        });
    let (addr, server) = axum_serve::serve(app).await;
    let client = crate::client::new();
    let base = reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap();

    for id in [
        "https:evil.example",
        "HTTPS:evil.example/x",
        "http:/evil.example",
        "https:/evil.example",
        "ws:evil.example",
        "wss:evil.example",
        "ftp:evil.example",
        "file:evil.example",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,x",
        "vbscript:x",
    ] {
        let (echoed, doc) = problem_for(&client, addr, id).await;
        assert!(doc.get("instance").is_none(), "{id}: {doc}");
        assert_eq!(doc["status"], 409);
        assert_eq!(echoed.as_deref(), Some(id));
    }
    // What the layer guards against: a client reading such an `instance` as a URI, or resolving
    // it against a URL of another scheme (the server's `https` one behind a proxy), is sent to
    // the host the request named.
    let https_base = reqwest::Url::parse("https://hooks.example/hook").unwrap();
    for id in [
        "https:evil.example",
        "http:/evil.example",
        "ws:evil.example",
    ] {
        let read = reqwest::Url::parse(id).unwrap();
        assert_eq!(read.host_str(), Some("evil.example"), "{id}");
    }
    let resolved = https_base.join("http:evil.example").unwrap();
    assert_eq!(resolved.host_str(), Some("evil.example"));

    for id in [
        "req-42",
        "urn:uuid:72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "tag:example.com,2026:req-1",
        "deliveries/42",
        "httpx:not-special",
    ] {
        let (echoed, doc) = problem_for(&client, addr, id).await;
        assert_eq!(doc["instance"], id, "{doc}");
        assert_eq!(echoed.as_deref(), Some(id));
        // None of them leaves the server's host.
        assert_ne!(base.join(id).unwrap().host_str(), Some("evil.example"));
    }
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// Credentials in URLs stay out of the log

/// `GET /hook` on the server at `addr`.
async fn get_hook(addr: std::net::SocketAddr) -> reqwest::Response {
    crate::client::new()
        .get(format!("http://{addr}/hook"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers")
}

/// An error that names the URL it failed on, as a client error does (here, a real reqwest error
/// from a refused connection to a URL with a token in its query) or as a message does
/// (`redis://:password@host`), used to be logged with the token and the password in it: the
/// error chain goes to the log as it is displayed. They are logged as `<redacted>` now, and the
/// rest of the chain as it was; the client still gets nothing of it.
#[tokio::test]
async fn url_credentials_in_an_error_chain_are_not_logged() {
    let (logs, _guard) = Logs::capture();
    // A port nothing listens on: bound, then closed.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |req: axum::extract::Request| async move {
            let err: BoxError = match req.uri().path() {
                "/upstream" => {
                    let url = format!(
                        "http://{refused}/v1/comments?page=2&access_token=tok-hunter2&sig=sig-hunter2"
                    );
                    let request = reqwest::Request::new(http::Method::GET, url.parse().unwrap());
                    let err = crate::client::new()
                        .execute(request)
                        .await
                        .expect_err("nothing listens there");
                    // reqwest keeps the URL it failed on, query and all.
                    assert!(err.to_string().contains("tok-hunter2"), "{err}");
                    err.into()
                }
                _ => std::io::Error::other(format!(
                    "replay store unreachable at redis://:pw-hunter2@{refused}/0"
                ))
                .into(),
            };
            Err::<axum::response::Response, _>(err)
        });
    let (addr, server) = axum_serve::serve(app).await;
    let client = crate::client::new();
    for path in ["/upstream", "/store"] {
        let res = client
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(res.status(), 500, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("hunter2"), "{body}");
    }
    server.abort();

    let text = logs.text();
    assert_eq!(text.matches("request failed").count(), 2, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // reqwest writes the URL in parentheses: the closing one is kept.
    assert!(
        text.contains("access_token=<redacted>&sig=<redacted>)"),
        "{text}"
    );
    assert!(text.contains("v1/comments?page=2&"), "{text}");
    assert!(text.contains("redis://<redacted>@127.0.0.1"), "{text}");
}

/// A tonic `Status` with a client error's code is passed on with its message, as `detail` and
/// `grpc-message`. One the handler got from a client of its own may name the URL that client
/// called: the credentials in it reach neither the client nor the log.
#[tokio::test]
async fn url_credentials_in_a_tonic_status_message_are_not_passed_on() {
    let (logs, _guard) = Logs::capture();
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: axum::extract::Request| async {
            Err::<axum::response::Response, BoxError>(
                tonic::Status::permission_denied(
                    "GET https://bot:pw-hunter2@git.example/api/v4?private_token=tok-hunter2 \
                     answered 403",
                )
                .into(),
            )
        });
    let (addr, server) = axum_serve::serve(app).await;
    let res = get_hook(addr).await;
    assert_eq!(res.status(), 403);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        doc["detail"],
        "GET https://<redacted>@git.example/api/v4?private_token=<redacted> answered 403"
    );
    server.abort();
    let text = logs.text();
    assert!(text.contains("request rejected"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A panic whose message names a URL with credentials (an `unwrap()` of such an error) is
/// logged without them, and answered 500 without any of it.
#[tokio::test]
async fn url_credentials_in_a_panic_message_are_not_logged() {
    let (logs, _guard) = Logs::capture();
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: axum::extract::Request| async {
            if true {
                panic!("cannot post to https://bot:pw-hunter2@chat.example/hooks?token=t-hunter2");
            }
            Ok::<axum::response::Response, Infallible>(StatusCode::OK.into_response())
        });
    let (addr, server) = axum_serve::serve(app).await;
    let res = get_hook(addr).await;
    assert_eq!(res.status(), 500);
    assert!(!res.text().await.unwrap().contains("hunter2"));
    server.abort();

    let text = logs.text();
    assert_eq!(text.matches("handler panicked").count(), 1, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("https://<redacted>@chat.example/hooks?token=<redacted>"),
        "{text}"
    );
}

/// A response body that fails while it streams, its error naming a URL with credentials: the
/// layer logs it redacted, and what it hands the server and the layers outside (a tracing layer
/// logs an error body's `Display`) says only that the body failed.
#[tokio::test]
async fn a_failing_body_hands_on_no_credentials() {
    use crate::failing_body::Failing;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let (logs, _guard) = Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(WebhookErrorLayer::new())
        .service_fn(
            |_req: http::Request<http_body_util::Full<bytes::Bytes>>| async move {
                Ok::<_, BoxError>(http::Response::new(Failing::error(
                    "partial",
                    "error sending request for url \
                 (https://bot:hunter2@api.example.com/comments?access_token=s3cr3t)",
                )))
            },
        );
    let req = http::Request::get("/hook")
        .body(http_body_util::Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.to_string(), "the response body failed");
    let text = logs.text();
    assert!(
        text.contains("the response body failed while it streamed"),
        "{text}"
    );
    assert!(text.contains("api.example.com"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
}
