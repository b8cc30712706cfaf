//! Signature layer: how deliveries are refused and the refusals logged: a late Redis `SET` that
//! cannot be undone, Gitea/Forgejo webhooks configured with the HTTP method `GET`, a Twitch copy
//! under another message type, and the body cap over the wire.

use crate::hyper_one;
use crate::logs;

use crate::redis_server;

use crate::github_hook;
use github_hook::{GH_SECRET, github, send};

use std::time::Duration;

use http::StatusCode;
use logs::Logs;
use tower_webhook::signature::{RecordDelivery, RedisReplayStore, SignatureLayer};

/// A `SET` Redis carries out after the layer gave up on it (the delivery got 503) is deleted
/// again; when that delete fails, the id stays recorded and the provider's retry is refused as
/// a replay until it expires: that is logged, naming the delivery, instead of passing in
/// silence.
#[tokio::test]
async fn a_late_set_that_cannot_be_undone_is_logged() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let (logs, _guard) = Logs::capture();
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The store's `SET` works; the script that deletes the late key is refused.
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-eval")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let store = RedisReplayStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(300));
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store)
        .record_delivery(RecordDelivery::AfterVerification);
    redis.signal("-STOP");
    let refused = send(&layer, StatusCode::OK, github("late-set-kept")).await;
    redis.signal("-CONT");
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    let mut logged = false;
    for _ in 0..500 {
        let text = logs.text();
        if text.contains("github:late-set-kept") && text.contains("could not delete it") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = logs.text();
    assert!(logged, "the failed delete was not logged: {text}");
    assert!(text.contains("ERROR"), "{text}");
    assert!(!text.contains(GH_SECRET), "{text}");
}

use crate::axum_serve;

/// Gitea's delivery of a webhook set to the HTTP method `GET`: no body, the JSON payload in the
/// query string's `payload` parameter (after the URL's own parameters), signed as for `POST`.
fn gitea_get_url(addr: std::net::SocketAddr, payload: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "abc")
        .append_pair("payload", payload)
        .finish();
    format!("http://{addr}/hooks/gitea?{query}")
}

fn hex_hmac(secret: &str, message: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, message.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Gitea or Forgejo webhook set to `GET` is authentic, but the layer verifies bodies, and
/// its payload travels in the query string: it is answered 400 (not 401, which would send the
/// operator looking for a wrong secret), with nothing about the delivery or the secret in the
/// answer, and the log says to set the webhook's method to `POST`. A `GET` whose signature does
/// not match is still 401. Over a real server on 127.0.0.1.
#[tokio::test]
async fn gitea_and_forgejo_get_deliveries_are_named_in_the_log() {
    const SECRET: &str = "gitea-webhook-secret";
    let (logs, _guard) = Logs::capture();
    let payload = r#"{"ref":"refs/heads/main","after":"1a2b3c"}"#;
    let signature = hex_hmac(SECRET, payload);
    for (provider, layer) in [
        ("gitea", SignatureLayer::gitea(SECRET).unwrap()),
        ("forgejo", SignatureLayer::forgejo(SECRET).unwrap()),
    ] {
        let app = axum::Router::new()
            .route("/hooks/gitea", axum::routing::any(|| async { "handled" }))
            .layer(layer);
        let (addr, server) = axum_serve::serve(app).await;
        let client = crate::client::builder().no_proxy().build().unwrap();
        let get = |signature: String| {
            client
                .get(gitea_get_url(addr, payload))
                .header(format!("x-{provider}-event"), "push")
                .header(
                    format!("x-{provider}-delivery"),
                    "5f6e7d8c-1b2a-4c3d-9e8f-7a6b5c4d3e2f",
                )
                .header(format!("x-{provider}-signature"), signature)
                .send()
        };

        let res = get(signature.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{provider}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{provider}"
        );
        assert!(
            res.headers().get("www-authenticate").is_none(),
            "{provider}"
        );
        let body = res.text().await.unwrap();
        assert!(body.contains("malformed-delivery"), "{provider}: {body}");
        for secret in [SECRET, "GET", "refs/heads", signature.as_str()] {
            assert!(!body.contains(secret), "{provider}: {body}");
        }

        let forged = get("0".repeat(64)).await.unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "{provider}");
        server.abort();
    }
    let text = logs.text();
    assert_eq!(
        text.matches("HTTP method GET").count(),
        2,
        "one line per authentic GET delivery: {text}"
    );
    assert!(text.contains("POST"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

/// Twitch signs its message id, timestamp and body, not the message type: a captured
/// notification resent with another type is a replay of its signed id (409), and one resent as
/// a `webhook_callback_verification` has no challenge to answer (400); the handler sees neither.
#[tokio::test]
async fn a_twitch_copy_under_another_message_type_reaches_no_handler() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;
    use tower::ServiceExt;
    use tower_webhook::signature::Clock;

    const SECRET: &str = "twitch-eventsub-secret";
    let (id, ts) = (
        "e7a4b3c2-1d0e-4f5a-8b9c-0d1e2f3a4b5c",
        "2023-11-14T22:13:20Z",
    );
    let body = r#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"1337"}}"#;
    let signature = format!("sha256={}", hex_hmac(SECRET, &format!("{id}{ts}{body}")));
    let layer = SignatureLayer::twitch(SECRET).unwrap().clock(Clock::fixed(
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn(
        move |_: http::Request<http_body_util::Full<bytes::Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) }
        },
    );
    let delivery = |kind: &str| {
        http::Request::post("/twitch")
            .header("twitch-eventsub-message-id", id)
            .header("twitch-eventsub-message-timestamp", ts)
            .header("twitch-eventsub-message-signature", &signature)
            .header("twitch-eventsub-message-type", kind)
            .header("twitch-eventsub-subscription-type", "channel.follow")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    let status = |kind: &'static str| {
        let svc = svc.clone();
        async move { svc.oneshot(delivery(kind)).await.unwrap().status() }
    };
    assert_eq!(status("webhook_callback_verification").await, 400);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(status("notification").await, 200);
    assert_eq!(status("revocation").await, 409);
    assert_eq!(status("webhook_callback_verification").await, 400);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Twitch's window is its own: its EventSub docs say to refuse a message older than 10
/// minutes, so one checked 7 minutes after it was signed (past the 5 minutes of the other
/// providers) is taken, and one past 10 minutes is refused as out of the window, either way.
#[test]
fn a_twitch_message_is_taken_for_ten_minutes() {
    use std::time::UNIX_EPOCH;
    use tower_webhook::signature::{Clock, SignatureValidationError};

    const SECRET: &str = "twitch-eventsub-secret";
    // 2023-11-14T22:13:20Z.
    const SIGNED: u64 = 1_700_000_000;
    let (id, ts) = (
        "e7a4b3c2-1d0e-4f5a-8b9c-0d1e2f3a4b5c",
        "2023-11-14T22:13:20Z",
    );
    let body = r#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"1337"}}"#;
    let signature = format!("sha256={}", hex_hmac(SECRET, &format!("{id}{ts}{body}")));
    let req = http::Request::post("/twitch")
        .header("twitch-eventsub-message-id", id)
        .header("twitch-eventsub-message-timestamp", ts)
        .header("twitch-eventsub-message-signature", &signature)
        .header("twitch-eventsub-message-type", "notification")
        .header("twitch-eventsub-subscription-type", "channel.follow")
        .body(body)
        .unwrap();
    let checked_at = |secs: u64| {
        SignatureLayer::twitch(SECRET)
            .unwrap()
            .clock(Clock::fixed(UNIX_EPOCH + Duration::from_secs(secs)))
            .verify(req.headers(), body.as_bytes())
    };
    for taken in [SIGNED + 420, SIGNED + 600, SIGNED - 600] {
        assert!(checked_at(taken).is_ok(), "checked at {taken}");
    }
    for refused in [SIGNED + 601, SIGNED - 601] {
        assert!(
            matches!(
                checked_at(refused),
                Err(SignatureValidationError::TimestampOutOfWindow { .. })
            ),
            "checked at {refused}"
        );
    }
    // The other providers keep 5 minutes.
    let stripe = SignatureLayer::stripe("whsec_test")
        .unwrap()
        .clock(Clock::fixed(UNIX_EPOCH + Duration::from_secs(SIGNED + 420)));
    let message = format!("{SIGNED}.{body}");
    let stripe_signature = format!("t={SIGNED},v1={}", hex_hmac("whsec_test", &message));
    let mut headers = http::HeaderMap::new();
    headers.insert("stripe-signature", stripe_signature.parse().unwrap());
    assert!(matches!(
        stripe.verify(&headers, body.as_bytes()),
        Err(SignatureValidationError::TimestampOutOfWindow { .. })
    ));
}

/// Reads from `stream` until the head of a response has arrived (at most 5 s).
async fn response_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer within 5 s");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The layer's own cap over a real hyper server: a `Content-Length` over it is answered 413
/// before any body byte is sent, and a chunked body is answered 413 as soon as it passes the
/// cap, while the client is still sending (it never ends its body here).
#[tokio::test]
async fn the_body_cap_answers_413_over_the_wire_with_and_without_content_length() {
    use tokio::io::AsyncWriteExt;
    let layer = SignatureLayer::github(GH_SECRET).unwrap().max_body_size(16);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(|| async { "handled" }))
        .layer(layer);
    let (addr, server) = axum_serve::serve(app).await;
    let head = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {}\r\n",
        github_hook::GH_SIG
    );

    let mut announced = tokio::net::TcpStream::connect(addr).await.unwrap();
    announced
        .write_all(format!("{head}content-length: 17\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = response_head(&mut announced).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let mut chunked = tokio::net::TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(format!("{head}transfer-encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..2 {
        chunked.write_all(b"a\r\n0123456789\r\n").await.unwrap();
    }
    let answer = response_head(&mut chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    server.abort();
}

/// A signed body replayed as a `GET` with a query string of one's own: axum's `Form` (and the
/// `RawForm` it reads) takes a `GET`'s query, not its body, so the handler would get fields no
/// signature covers. Refused (400), and named; the same body with `POST` or `HEAD` (whose form
/// is read from the body), or a `GET` without a query, goes through.
#[tokio::test]
async fn a_verified_get_with_a_query_string_is_refused() {
    use axum::extract::RawForm;
    use tower::ServiceExt;

    let (logs, _guard) = Logs::capture();
    let layer = SignatureLayer::github(GH_SECRET).unwrap();
    let app = axum::Router::new()
        .route(
            "/github",
            axum::routing::any(|RawForm(form): RawForm| async move { form }),
        )
        .layer(layer);
    let request = |method: http::Method, uri: &str, delivery: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-hub-signature-256", github_hook::GH_SIG)
            .header("x-github-delivery", delivery)
            .body(axum::body::Body::from(github_hook::GH_BODY))
            .unwrap()
    };
    for (method, uri, delivery, expected) in [
        (
            http::Method::GET,
            "/github?payload=evil",
            "get-1",
            StatusCode::BAD_REQUEST,
        ),
        (
            http::Method::HEAD,
            "/github?payload=evil",
            "head-1",
            StatusCode::OK,
        ),
        (
            http::Method::POST,
            "/github?payload=evil",
            "post-1",
            StatusCode::OK,
        ),
        (http::Method::GET, "/github", "get-2", StatusCode::OK),
    ] {
        let res = app
            .clone()
            .oneshot(request(method.clone(), uri, delivery))
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "{method} {uri}");
        if expected == StatusCode::OK {
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert!(!body.windows(4).any(|w| w == b"evil"), "{method} {uri}");
        }
    }
    assert!(
        logs.text()
            .contains("a query string, which the signature does not cover"),
        "{}",
        logs.text()
    );
}

/// RFC 9110 §9.3.2: the layer's own answer to a `HEAD` has no content. Over HTTP/2 hyper sends
/// whatever the body holds, and the client resets the stream on DATA after a HEAD: an unsigned
/// `HEAD` got its 401 with the problem's JSON, as if it were a `GET`.
#[tokio::test]
async fn the_answer_to_a_head_has_no_content_over_http2() {
    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    let svc = tower::ServiceBuilder::new()
        .map_request(|req: http::Request<hyper::body::Incoming>| {
            req.map(tower_webhook::body::RequestBody::new)
        })
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service_fn(|_: http::Request<tower_webhook::body::RequestBody>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Full::<Bytes>::default(),
            ))
        });
    let addr = hyper_one::serve_one(hyper_one::Http::Two, svc).await;
    let mut client = hyper_one::http2_sender(addr).await;
    for (method, content) in [(http::Method::HEAD, false), (http::Method::POST, true)] {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}/github"))
            .body(http_body_util::Full::default())
            .unwrap();
        let res = client.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method}");
        let length: usize = res.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("no DATA after a HEAD")
            .to_bytes();
        assert_eq!(body.len(), if content { length } else { 0 }, "{method}");
        assert!(length > 0, "{method}: the length of the answer to GET");
    }
}
