//! SignatureLayer through its public API: official vectors, every provider, and bad input.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_webhook::error::{HttpError, Problem, WebhookErrorLayer, types};
use tower_webhook::signature::{
    Algorithm, ClaimToken, Clock, CustomScheme, Encoding, MemoryReplayStore, OnReplay, Provider,
    RecordDelivery, ReplayFuture, ReplayStore, Secrets, SignatureConfigError, SignatureLayer,
    SignatureValidationError, VerifiedWebhook,
};

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: u64 = 1_614_265_330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// Slack's documented example ("Verifying requests from Slack").
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: u64 = 1_531_420_618;
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

fn at(secs: u64) -> Clock {
    Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hex256(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac256(key, parts))
}

fn sw_key() -> Vec<u8> {
    B64.decode(SW_SECRET.trim_start_matches("whsec_")).unwrap()
}

/// What the handler saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Option<(Bytes, VerifiedWebhook)>>>,
}

struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    problem: Option<Problem>,
}

impl Outcome {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends `req` through `layer` to a handler that echoes the body with `status`.
async fn send_with(
    layer: &SignatureLayer,
    seen: &Seen,
    status: StatusCode,
    req: Request<Full<Bytes>>,
) -> Outcome {
    let seen2 = seen.clone();
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |req: Request<Full<Bytes>>| {
                let seen = seen2.clone();
                async move {
                    seen.calls.fetch_add(1, Ordering::SeqCst);
                    let hook = req.extensions().get::<VerifiedWebhook>().cloned().unwrap();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    *seen.last.lock().unwrap() = Some((body.clone(), hook));
                    let mut res = Response::new(Full::new(body));
                    *res.status_mut() = status;
                    Ok::<_, Infallible>(res)
                }
            });
    let res = svc.oneshot(req).await.unwrap();
    let problem = res.extensions().get::<Problem>().cloned();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Outcome {
        status,
        headers,
        body,
        problem,
    }
}

async fn send(layer: &SignatureLayer, seen: &Seen, req: Request<Full<Bytes>>) -> Outcome {
    send_with(layer, seen, StatusCode::OK, req).await
}

fn post(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/hook");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

fn github() -> SignatureLayer {
    SignatureLayer::github(GH_SECRET).unwrap()
}

/// Asserts a rejection: status, problem type, RFC 9457 shape, no reason text, handler not called.
fn assert_rejected(out: &Outcome, seen: &Seen, status: StatusCode, problem_type: &str) {
    assert_eq!(out.status, status, "body: {:?}", out.body);
    assert_eq!(out.headers["content-type"], "application/problem+json");
    // RFC 9110 §15.5.2: a 401 carries a challenge; other rejections do not.
    let challenge = out
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap());
    if status == StatusCode::UNAUTHORIZED {
        let challenge = challenge.expect("a 401 carries WWW-Authenticate");
        assert!(
            challenge.starts_with("Signature realm=\"") || challenge.starts_with("Basic realm=\""),
            "{challenge}"
        );
    } else {
        assert_eq!(challenge, None);
    }
    let json = out.json();
    assert_eq!(json["status"], status.as_u16());
    assert_eq!(json["type"], problem_type);
    assert!(
        json.get("detail").is_none(),
        "no reason for the client: {json}"
    );
    let text = String::from_utf8_lossy(&out.body).to_lowercase();
    for leak in [
        "header",
        "secret",
        "mismatch",
        "timestamp",
        "sha256",
        "match",
    ] {
        assert!(!text.contains(leak), "leaks {leak:?}: {text}");
    }
    assert_eq!(out.problem.as_ref().map(Problem::status), Some(status));
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "handler must not run");
}

/// Sends `req` through `layer` to a fresh handler and asserts it is refused ([`assert_rejected`]).
async fn assert_refused(
    layer: &SignatureLayer,
    req: Request<Full<Bytes>>,
    status: StatusCode,
    problem_type: &str,
) {
    let seen = Seen::default();
    let out = send(layer, &seen, req).await;
    assert_rejected(&out, &seen, status, problem_type);
}

// ---------------------------------------------------------------- GitHub

#[tokio::test]
async fn github_docs_vector_is_accepted_and_body_reinjected() {
    let seen = Seen::default();
    let req = post(
        &[
            ("x-hub-signature-256", GH_SIG),
            ("x-github-event", "push"),
            ("x-github-delivery", "d-1"),
        ],
        GH_BODY,
    );
    let out = send(&github(), &seen, req).await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.body[..], GH_BODY);
    let (body, hook) = seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(&body[..], GH_BODY);
    assert_eq!(hook.provider(), Provider::GitHub);
    assert_eq!(hook.event(), Some("push"));
    assert_eq!(hook.delivery_id(), Some("d-1"));
    assert_eq!(hook.secret_index(), Some(0));
    assert_eq!(hook.timestamp(), None);
}

#[tokio::test]
async fn github_uppercase_hex_is_accepted() {
    let seen = Seen::default();
    let sig = format!("sha256={}", GH_SIG["sha256=".len()..].to_uppercase());
    let out = send(
        &github(),
        &seen,
        post(&[("x-hub-signature-256", &sig)], GH_BODY),
    )
    .await;
    assert_eq!(out.status, 200);
}

#[tokio::test]
async fn github_every_tampered_body_byte_is_rejected() {
    let layer = github();
    for i in 0..GH_BODY.len() {
        for flip in [0x01u8, 0x80] {
            let mut body = GH_BODY.to_vec();
            body[i] ^= flip;
            assert_refused(
                &layer,
                post(&[("x-hub-signature-256", GH_SIG)], body),
                StatusCode::UNAUTHORIZED,
                types::INVALID_SIGNATURE,
            )
            .await;
        }
    }
    // Appended and removed bytes too.
    for body in [&b"Hello, World!\n"[..], &b"Hello, World"[..], &b""[..]] {
        assert_refused(
            &layer,
            post(&[("x-hub-signature-256", GH_SIG)], body),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
}

#[tokio::test]
async fn github_every_tampered_signature_digit_is_rejected() {
    let layer = github();
    let hex = &GH_SIG["sha256=".len()..];
    for i in 0..hex.len() {
        let mut chars: Vec<char> = hex.chars().collect();
        chars[i] = if chars[i] == '0' { '1' } else { '0' };
        let sig = format!("sha256={}", chars.into_iter().collect::<String>());
        assert_refused(
            &layer,
            post(&[("x-hub-signature-256", &sig)], GH_BODY),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
}

#[tokio::test]
async fn github_wrong_secret_is_rejected() {
    let seen = Seen::default();
    let layer = SignatureLayer::github("It's a Secret to Everybody!").unwrap();
    let out = send(
        &layer,
        &seen,
        post(&[("x-hub-signature-256", GH_SIG)], GH_BODY),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
}

#[tokio::test]
async fn github_malformed_headers_are_rejected() {
    let layer = github();
    let good_hex = &GH_SIG["sha256=".len()..];
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing header", vec![]),
        (
            "legacy header only",
            vec![("x-hub-signature", format!("sha1={good_hex}"))],
        ),
        (
            "no prefix",
            vec![("x-hub-signature-256", good_hex.to_owned())],
        ),
        (
            "wrong prefix",
            vec![("x-hub-signature-256", format!("sha1={good_hex}"))],
        ),
        (
            "uppercase prefix",
            vec![("x-hub-signature-256", format!("SHA256={good_hex}"))],
        ),
        ("empty value", vec![("x-hub-signature-256", String::new())]),
        (
            "prefix only",
            vec![("x-hub-signature-256", "sha256=".to_owned())],
        ),
        (
            "odd length",
            vec![("x-hub-signature-256", format!("sha256={}", &good_hex[1..]))],
        ),
        (
            "truncated",
            vec![("x-hub-signature-256", format!("sha256={}", &good_hex[..62]))],
        ),
        (
            "non-hex",
            vec![(
                "x-hub-signature-256",
                format!("sha256=zz{}", &good_hex[2..]),
            )],
        ),
        (
            "space inside",
            vec![("x-hub-signature-256", format!("sha256= {}", &good_hex[1..]))],
        ),
        (
            "too long",
            vec![(
                "x-hub-signature-256",
                format!("sha256={good_hex}{good_hex}{good_hex}"),
            )],
        ),
        (
            "extra byte",
            vec![("x-hub-signature-256", format!("sha256={good_hex}00"))],
        ),
        (
            "duplicated header",
            vec![
                ("x-hub-signature-256", GH_SIG.to_owned()),
                ("x-hub-signature-256", GH_SIG.to_owned()),
            ],
        ),
    ];
    for (name, headers) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = Seen::default();
        let out = send(&layer, &seen, post(&headers, GH_BODY)).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_rejected(
            &out,
            &seen,
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        );
    }
}

#[tokio::test]
async fn non_utf8_bodies_are_verified_byte_for_byte() {
    let body: Vec<u8> = (0..=255u8).rev().chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    assert!(std::str::from_utf8(&body).is_err());
    let sig = format!("sha256={}", hex256(GH_SECRET.as_bytes(), &[&body]));
    let seen = Seen::default();
    let out = send(
        &github(),
        &seen,
        post(&[("x-hub-signature-256", &sig)], body.clone()),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.body[..], &body[..]);
}

#[tokio::test]
async fn rotation_accepts_any_secret_and_reports_which() {
    let layer = SignatureLayer::github_with_secrets(["new-secret", GH_SECRET]).unwrap();
    let seen = Seen::default();
    assert_eq!(
        send(
            &layer,
            &seen,
            post(&[("x-hub-signature-256", GH_SIG)], GH_BODY)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        seen.last.lock().unwrap().as_ref().unwrap().1.secret_index(),
        Some(1)
    );

    let layer = SignatureLayer::github("new-secret")
        .unwrap()
        .secret(GH_SECRET)
        .unwrap();
    let seen = Seen::default();
    assert_eq!(
        send(
            &layer,
            &seen,
            post(&[("x-hub-signature-256", GH_SIG)], GH_BODY)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        seen.last.lock().unwrap().as_ref().unwrap().1.secret_index(),
        Some(1)
    );

    let secrets = Secrets::from_list("a-secret, It's a Secret to Everybody").unwrap();
    let layer = SignatureLayer::github_with_secrets(secrets).unwrap();
    let seen = Seen::default();
    assert_eq!(
        send(
            &layer,
            &seen,
            post(&[("x-hub-signature-256", GH_SIG)], GH_BODY)
        )
        .await
        .status,
        200
    );
}

// ---------------------------------------------------------------- size limits

/// A body that yields `chunk`-byte frames forever, counting what it produced.
struct Endless {
    chunk: usize,
    produced: Arc<AtomicUsize>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.produced.fetch_add(self.chunk, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'a'; self.chunk])))))
    }
}

impl From<Bytes> for Endless {
    fn from(_: Bytes) -> Self {
        unreachable!("an oversize body is never handed on")
    }
}

fn endless_service(
    layer: &SignatureLayer,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Endless>,
    Response = Response<tower_webhook::body::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |_req: Request<Endless>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        })
}

/// Sends an endless body with `headers` through `layer`, which must answer without reading
/// any of it or calling the handler; the answer's status and problem type.
async fn refused_unread(layer: &SignatureLayer, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let produced = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut req = Request::post("/");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Endless {
            chunk: 512,
            produced: produced.clone(),
        })
        .unwrap();
    let res = endless_service(layer, calls.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(
        produced.load(Ordering::SeqCst),
        0,
        "{headers:?}: the body was read"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "{headers:?}");
    let problem = res.extensions().get::<Problem>().unwrap();
    (res.status(), problem.problem_type().to_owned())
}

#[tokio::test]
async fn oversize_content_length_is_refused_without_reading() {
    let layer = github().max_body_size(1024);
    let (status, problem_type) = refused_unread(
        &layer,
        &[("content-length", "1025"), ("x-hub-signature-256", GH_SIG)],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_type, types::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn signatures_of_the_wrong_length_are_refused_without_reading_the_body() {
    let good_hex = &GH_SIG["sha256=".len()..];
    let sha1_length = format!("sha256={}", &good_hex[..40]);
    let sha512_length = format!("sha256={good_hex}{good_hex}");
    let github_sigs = [
        "sha256=00",
        "sha256=abcd",
        &GH_SIG[..GH_SIG.len() - 2],
        &sha1_length,
        &sha512_length,
    ];
    for sig in github_sigs {
        let (status, problem_type) =
            refused_unread(&github(), &[("x-hub-signature-256", sig)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{sig}");
        assert_eq!(problem_type, types::INVALID_SIGNATURE);
    }
    // Base64 (Shopify): a 5-byte tag where HMAC-SHA256 has 32.
    let shopify = SignatureLayer::shopify("shpss_secret").unwrap();
    let (status, problem_type) = refused_unread(
        &shopify,
        &[
            ("x-shopify-hmac-sha256", "c2hvcnQ="),
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-shop-domain", "shop.example"),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
            ("x-shopify-triggered-at", "2024-01-01T00:00:00Z"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type, types::INVALID_SIGNATURE);
}

#[tokio::test]
async fn oversize_without_content_length_stops_at_the_cap() {
    let layer = github().max_body_size(64 * 1024);
    let produced = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let req = Request::post("/")
        .header("x-hub-signature-256", GH_SIG)
        .body(Endless {
            chunk: 4096,
            produced: produced.clone(),
        })
        .unwrap();
    let res = endless_service(&layer, calls.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Read up to the cap plus the one frame that crossed it, never more.
    assert!(
        produced.load(Ordering::SeqCst) <= 64 * 1024 + 4096,
        "{}",
        produced.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn lying_content_length_is_still_capped_and_limit_is_inclusive() {
    let body = vec![b'x'; 100];
    let sig = format!("sha256={}", hex256(GH_SECRET.as_bytes(), &[&body]));
    // Exactly at the limit passes.
    let seen = Seen::default();
    let out = send(
        &github().max_body_size(100),
        &seen,
        post(&[("x-hub-signature-256", &sig)], body.clone()),
    )
    .await;
    assert_eq!(out.status, 200);
    // One byte over, with a Content-Length that claims less: refused when reading.
    let seen = Seen::default();
    let mut big = body.clone();
    big.push(b'x');
    let out = send(
        &github().max_body_size(100),
        &seen,
        post(
            &[("x-hub-signature-256", &sig), ("content-length", "10")],
            big,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::PAYLOAD_TOO_LARGE,
        types::PAYLOAD_TOO_LARGE,
    );
}

#[test]
fn default_limit_is_githubs_25_mib() {
    assert_eq!(
        tower_webhook::signature::DEFAULT_MAX_BODY_SIZE,
        25 * 1024 * 1024
    );
}

/// A body whose stream fails.
struct Broken;

impl http_body::Body for Broken {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
    }
}

impl From<Bytes> for Broken {
    fn from(_: Bytes) -> Self {
        Broken
    }
}

#[tokio::test]
async fn body_read_error_is_a_400() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(github())
        .service_fn(move |_req: Request<Broken>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
    let req = Request::post("/")
        .header("x-hub-signature-256", GH_SIG)
        .body(Broken)
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------- replay

#[tokio::test]
async fn replayed_delivery_id_is_409_by_default() {
    let layer = github();
    let seen = Seen::default();
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "abc"),
            ],
            GH_BODY,
        )
    };
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    let out = send(&layer, &seen, req()).await;
    assert_eq!(out.status, StatusCode::CONFLICT);
    assert_eq!(out.json()["type"], types::REPLAYED_DELIVERY);
    assert!(!String::from_utf8_lossy(&out.body).contains("abc"));
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    // A different delivery id is fine; so is the same id for another provider (namespaced).
    let other = post(
        &[
            ("x-hub-signature-256", GH_SIG),
            ("x-github-delivery", "abd"),
        ],
        GH_BODY,
    );
    assert_eq!(send(&layer, &seen, other).await.status, 200);
}

#[tokio::test]
async fn replayed_delivery_can_be_acknowledged_without_processing() {
    let layer = github().on_replay(OnReplay::Acknowledge(StatusCode::ACCEPTED));
    let seen = Seen::default();
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "abc"),
            ],
            GH_BODY,
        )
    };
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    let out = send(&layer, &seen, req()).await;
    assert_eq!(out.status, StatusCode::ACCEPTED);
    assert!(out.body.is_empty());
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1, "processed once");
}

#[tokio::test]
async fn record_after_success_lets_a_failed_delivery_be_redelivered() {
    // The default.
    let layer = github();
    let seen = Seen::default();
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "r-1"),
            ],
            GH_BODY,
        )
    };
    assert_eq!(
        send_with(&layer, &seen, StatusCode::INTERNAL_SERVER_ERROR, req())
            .await
            .status,
        500
    );
    assert_eq!(
        send_with(&layer, &seen, StatusCode::OK, req()).await.status,
        200
    );
    assert_eq!(
        send_with(&layer, &seen, StatusCode::OK, req()).await.status,
        409
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);

    // Recorded after verification, the failed delivery already counts.
    let layer = github().record_delivery(RecordDelivery::AfterVerification);
    let seen = Seen::default();
    assert_eq!(
        send_with(&layer, &seen, StatusCode::INTERNAL_SERVER_ERROR, req())
            .await
            .status,
        500
    );
    assert_eq!(
        send_with(&layer, &seen, StatusCode::OK, req()).await.status,
        409
    );
}

#[tokio::test]
async fn record_after_success_releases_an_abandoned_or_panicked_delivery() {
    let layer = github().record_delivery(RecordDelivery::AfterSuccess);
    let req = |id: &str| {
        post(
            &[("x-hub-signature-256", GH_SIG), ("x-github-delivery", id)],
            GH_BODY,
        )
    };
    // The handler never answers and the client goes away (the provider's own timeout).
    let hang =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
            });
    let abandoned = tokio::time::timeout(Duration::from_millis(50), hang.oneshot(req("gone")));
    assert!(abandoned.await.is_err());
    // The handler panics; an outer layer turns the panic into a response.
    let panics = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer.clone())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
    assert_eq!(panics.oneshot(req("boom")).await.unwrap().status(), 500);

    // Both redeliveries reach the handler; a third copy of a delivered one is a replay.
    let seen = Seen::default();
    for id in ["gone", "boom"] {
        assert_eq!(send(&layer, &seen, req(id)).await.status, 200, "{id}");
        assert_eq!(send(&layer, &seen, req(id)).await.status, 409, "{id}");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn acknowledge_with_after_success_waits_for_the_first_attempt() {
    let layer = github()
        .record_delivery(RecordDelivery::AfterSuccess)
        .on_replay(OnReplay::Acknowledge(StatusCode::OK));
    let req = |id: &str| {
        post(
            &[("x-hub-signature-256", GH_SIG), ("x-github-delivery", id)],
            GH_BODY,
        )
    };
    // The first attempt waits in its handler until told how to answer.
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<StatusCode>();
    let answer_rx = Arc::new(tokio::sync::Mutex::new(Some(answer_rx)));
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let slow =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |_req: Request<Full<Bytes>>| {
                let (answer_rx, entered_tx) = (answer_rx.clone(), entered_tx.clone());
                async move {
                    if let Some(tx) = entered_tx.lock().unwrap().take() {
                        tx.send(()).unwrap();
                    }
                    let rx = answer_rx.lock().await.take().unwrap();
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = rx.await.unwrap();
                    Ok::<_, Infallible>(res)
                }
            });
    let first = tokio::spawn(slow.clone().oneshot(req("a-1")));
    entered_rx.await.unwrap();

    // A copy while the first attempt runs: refused, so the provider tries again later.
    let seen = Seen::default();
    let out = send(&layer, &seen, req("a-1")).await;
    assert_rejected(&out, &seen, StatusCode::CONFLICT, types::REPLAYED_DELIVERY);

    // The first attempt fails: the next copy is processed, and once handled, copies are
    // acknowledged without running the handler.
    answer_tx.send(StatusCode::SERVICE_UNAVAILABLE).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), 503);
    assert_eq!(send(&layer, &seen, req("a-1")).await.status, 200);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    let out = send(&layer, &seen, req("a-1")).await;
    assert_eq!((out.status, out.body.len()), (StatusCode::OK, 0));
    assert!(out.problem.is_none());
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        1,
        "acknowledged, not processed"
    );
}

/// A store that answers only after a while, like a remote one.
#[derive(Debug, Default)]
struct SlowStore(Arc<MemoryReplayStore>);

impl ReplayStore for SlowStore {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        let answer = self.0.insert(key, ttl);
        ReplayFuture::new(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer.await
        })
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        let (store, key) = (Arc::clone(&self.0), key.to_owned());
        ReplayFuture::new(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            store.remove(&key).await
        })
    }
}

// Paused time: on a loaded machine both the 5 ms timeout and the store's 20 ms answer may be
// due by the time the runtime polls, and then the request completes instead of being dropped.
#[tokio::test(start_paused = true)]
async fn record_after_success_releases_a_claim_dropped_while_the_store_answers() {
    let memory = Arc::new(MemoryReplayStore::new());
    let layer = github()
        .replay_store(SlowStore(Arc::clone(&memory)))
        .record_delivery(RecordDelivery::AfterSuccess);
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "slow"),
            ],
            GH_BODY,
        )
    };
    // Dropped while the store is still answering the insert: the claim it won is released by a
    // task of its own once the answer arrives.
    let seen = Seen::default();
    let dropped = tokio::time::timeout(Duration::from_millis(5), send(&layer, &seen, req()));
    assert!(dropped.await.is_err());
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(memory.is_empty(), "the abandoned claim was released");
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    assert_eq!(send(&layer, &seen, req()).await.status, 409);
}

#[tokio::test]
async fn replay_store_is_shared_by_clones_and_routes_and_can_be_disabled() {
    let layer = github();
    let seen = Seen::default();
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "shared"),
            ],
            GH_BODY,
        )
    };
    // Two services built from the same layer (as axum does per route) share the store.
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    assert_eq!(send(&layer.clone(), &seen, req()).await.status, 409);

    let layer = github().without_replay_store();
    let seen = Seen::default();
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
}

#[tokio::test]
async fn memory_store_expires_and_is_bounded() {
    let now = Arc::new(AtomicUsize::new(1_000));
    let n = now.clone();
    let clock = Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_secs(n.load(Ordering::SeqCst) as u64)
    });
    let store = MemoryReplayStore::with_capacity(3).clock(clock);
    let ttl = Duration::from_secs(60);
    assert!(store.insert("a", ttl).await.unwrap());
    assert!(!store.insert("a", ttl).await.unwrap());
    now.fetch_add(61, Ordering::SeqCst);
    assert!(
        store.insert("a", ttl).await.unwrap(),
        "expired ids may come again"
    );
    for k in ["b", "c", "d", "e"] {
        assert!(store.insert(k, ttl).await.unwrap());
    }
    assert!(store.len() <= 3, "bounded: {}", store.len());
    assert!(store.remove("e").await.unwrap());
    assert!(store.insert("e", ttl).await.unwrap());
    for i in 0..1000 {
        store.insert(&format!("k{i}"), ttl).await.unwrap();
    }
    assert!(store.len() <= 3);
}

#[tokio::test]
async fn replay_ttl_and_clock_drive_the_default_store() {
    // A custom store with a controllable clock, used through the layer.
    let now = Arc::new(AtomicUsize::new(5_000));
    let n = now.clone();
    let store = MemoryReplayStore::new().clock(Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_secs(n.load(Ordering::SeqCst) as u64)
    }));
    let layer = github()
        .replay_store(store)
        .replay_ttl(Duration::from_secs(10));
    let seen = Seen::default();
    let req = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "ttl"),
            ],
            GH_BODY,
        )
    };
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
    assert_eq!(send(&layer, &seen, req()).await.status, 409);
    now.fetch_add(11, Ordering::SeqCst);
    assert_eq!(send(&layer, &seen, req()).await.status, 200);
}

/// A store that is down.
#[derive(Debug)]
struct Down;

impl ReplayStore for Down {
    fn insert(&self, _key: &str, _ttl: Duration) -> tower_webhook::signature::ReplayFuture {
        tower_webhook::signature::ReplayFuture::new(async { Err("connection refused".into()) })
    }
    fn remove(&self, _key: &str) -> tower_webhook::signature::ReplayFuture {
        tower_webhook::signature::ReplayFuture::ready(Err("connection refused".into()))
    }
}

#[tokio::test]
async fn unreachable_replay_store_fails_closed_with_503() {
    let layer = github().replay_store(Down);
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[("x-hub-signature-256", GH_SIG), ("x-github-delivery", "x")],
            GH_BODY,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::SERVICE_UNAVAILABLE,
        types::PROCESSING_FAILED,
    );
    assert_eq!(out.headers["retry-after"], "5");
}

#[tokio::test]
async fn malformed_delivery_id_after_authentication_is_400() {
    let seen = Seen::default();
    let long = "x".repeat(300);
    for id in [long.as_str(), "has space", ""] {
        let out = send(
            &github(),
            &seen,
            post(
                &[("x-hub-signature-256", GH_SIG), ("x-github-delivery", id)],
                GH_BODY,
            ),
        )
        .await;
        assert_rejected(
            &out,
            &seen,
            StatusCode::BAD_REQUEST,
            types::MALFORMED_DELIVERY,
        );
    }
}

// ---------------------------------------------------------------- Standard Webhooks

fn sw_headers(id: &str, ts: &str, sig: &str) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_owned()),
        ("webhook-signature", sig.to_owned()),
    ]
}

async fn sw_send(
    layer: &SignatureLayer,
    headers: Vec<(&'static str, String)>,
    body: &[u8],
) -> (Outcome, Seen) {
    let seen = Seen::default();
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = send(layer, &seen, post(&h, Bytes::copy_from_slice(body))).await;
    (out, seen)
}

fn sw_layer() -> SignatureLayer {
    SignatureLayer::standard_webhooks(SW_SECRET)
        .unwrap()
        .clock(at(SW_TS))
}

#[tokio::test]
async fn standard_webhooks_reference_vector_is_accepted() {
    let (out, seen) = sw_send(
        &sw_layer(),
        sw_headers(SW_ID, &SW_TS.to_string(), SW_SIG),
        SW_BODY,
    )
    .await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.provider(), Provider::StandardWebhooks);
    assert_eq!(hook.delivery_id(), Some(SW_ID));
    assert_eq!(
        hook.timestamp(),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(SW_TS))
    );

    // svix-* header names, a secret without the prefix, several signatures of which one is good.
    let layer = SignatureLayer::standard_webhooks(SW_SECRET.trim_start_matches("whsec_"))
        .unwrap()
        .clock(at(SW_TS));
    let headers = vec![
        ("svix-id", SW_ID.to_owned()),
        ("svix-timestamp", SW_TS.to_string()),
        (
            "svix-signature",
            format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {SW_SIG}"),
        ),
    ];
    let (out, _) = sw_send(&layer, headers, SW_BODY).await;
    assert_eq!(out.status, 200);

    // As the reference libraries do, an entry that is not a usable `v1` (no comma, not base64,
    // another version) is skipped, not a reason to refuse the `v1` beside it; only `v1`
    // entries count against `max_signatures`.
    let other_versions = ["v1a,abc"; 12].join(" ");
    let eight = [SW_SIG; 8].join(" ");
    for sig in [
        format!("{eight} v1,!!!!"),
        format!("v1g0hM9SsE {SW_SIG}"),
        format!("v1,!!!! {SW_SIG}"),
        format!("{SW_SIG} v1,"),
        format!("{other_versions} {SW_SIG}"),
    ] {
        let (out, _) = sw_send(
            &sw_layer(),
            sw_headers(SW_ID, &SW_TS.to_string(), &sig),
            SW_BODY,
        )
        .await;
        assert_eq!(out.status, 200, "{sig}");
    }
}

#[tokio::test]
async fn standard_webhooks_delivery_id_is_the_signed_header() {
    // A delivery signed with `svix-*` names, replayed with an unsigned `webhook-id` added: the
    // replay key and the handler's delivery id are the signed `svix-id`, so it is a replay.
    let layer = sw_layer();
    let svix = |extra: Option<&str>| {
        let mut headers = vec![
            ("svix-id", SW_ID.to_owned()),
            ("svix-timestamp", SW_TS.to_string()),
            ("svix-signature", SW_SIG.to_owned()),
        ];
        if let Some(id) = extra {
            headers.push(("webhook-id", id.to_owned()));
        }
        headers
    };
    let (out, seen) = sw_send(&layer, svix(Some("fresh-0")), SW_BODY).await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.delivery_id(), Some(SW_ID));
    for fresh in ["fresh-1", "fresh-2"] {
        let (out, seen) = sw_send(&layer, svix(Some(fresh)), SW_BODY).await;
        assert_rejected(&out, &seen, StatusCode::CONFLICT, types::REPLAYED_DELIVERY);
    }
    let (out, seen) = sw_send(&layer, svix(None), SW_BODY).await;
    assert_rejected(&out, &seen, StatusCode::CONFLICT, types::REPLAYED_DELIVERY);
}

#[tokio::test]
async fn standard_webhooks_bad_inputs_are_rejected() {
    let ts = SW_TS.to_string();
    let many = [SW_SIG; 9].join(" ");
    type Case<'a> = (&'a str, Vec<(&'static str, String)>, &'a [u8]);
    let cases: Vec<Case<'_>> = vec![
        (
            "tampered body",
            sw_headers(SW_ID, &ts, SW_SIG),
            br#"{"test": 2432232315}"#,
        ),
        ("other id", sw_headers("msg_other", &ts, SW_SIG), SW_BODY),
        (
            "other timestamp",
            sw_headers(SW_ID, &(SW_TS + 1).to_string(), SW_SIG),
            SW_BODY,
        ),
        (
            "stale",
            sw_headers(SW_ID, &(SW_TS - 301).to_string(), SW_SIG),
            SW_BODY,
        ),
        (
            "future",
            sw_headers(SW_ID, &(SW_TS + 301).to_string(), SW_SIG),
            SW_BODY,
        ),
        (
            "i64::MIN timestamp",
            sw_headers(SW_ID, "-9223372036854775808", SW_SIG),
            SW_BODY,
        ),
        (
            "u64::MAX timestamp",
            sw_headers(SW_ID, "18446744073709551615", SW_SIG),
            SW_BODY,
        ),
        (
            "u64 overflow",
            sw_headers(SW_ID, "18446744073709551616", SW_SIG),
            SW_BODY,
        ),
        (
            "plus sign",
            sw_headers(SW_ID, &format!("+{ts}"), SW_SIG),
            SW_BODY,
        ),
        ("exponent", sw_headers(SW_ID, "1.6e9", SW_SIG), SW_BODY),
        (
            "space in timestamp",
            sw_headers(SW_ID, &format!("{ts} "), SW_SIG),
            SW_BODY,
        ),
        (
            "no v1",
            sw_headers(
                SW_ID,
                &ts,
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            SW_BODY,
        ),
        ("no comma", sw_headers(SW_ID, &ts, "v1g0hM9SsE"), SW_BODY),
        ("bad base64", sw_headers(SW_ID, &ts, "v1,!!!!"), SW_BODY),
        (
            "too many signatures",
            sw_headers(SW_ID, &ts, &many),
            SW_BODY,
        ),
        (
            "missing id",
            vec![
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", SW_SIG.to_owned()),
            ],
            SW_BODY,
        ),
        (
            "missing timestamp",
            vec![
                ("webhook-id", SW_ID.to_owned()),
                ("webhook-signature", SW_SIG.to_owned()),
            ],
            SW_BODY,
        ),
    ];
    for (name, headers, body) in cases {
        let (out, seen) = sw_send(&sw_layer(), headers, body).await;
        assert_eq!(out.status, 401, "{name}");
        assert_rejected(
            &out,
            &seen,
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        );
    }
}

#[tokio::test]
async fn timestamp_window_is_inclusive_and_configurable() {
    let key = sw_key();
    for (offset, tolerance, ok) in [
        (300i64, 300u64, true),
        (-300, 300, true),
        (301, 300, false),
        (30, 10, false),
        (10, 10, true),
    ] {
        let ts = (SW_TS as i64 + offset) as u64;
        let sig = B64.encode(hmac256(
            &key,
            &[
                SW_ID.as_bytes(),
                b".",
                ts.to_string().as_bytes(),
                b".",
                SW_BODY,
            ],
        ));
        let layer = sw_layer().timestamp_tolerance(Duration::from_secs(tolerance));
        let (out, _) = sw_send(
            &layer,
            sw_headers(SW_ID, &ts.to_string(), &format!("v1,{sig}")),
            SW_BODY,
        )
        .await;
        assert_eq!(
            out.status == 200,
            ok,
            "offset {offset} tolerance {tolerance}: {}",
            out.status
        );
    }
}

#[test]
fn standard_webhooks_secret_must_be_base64() {
    assert!(matches!(
        SignatureLayer::standard_webhooks("whsec_not base64!"),
        Err(SignatureConfigError::InvalidStandardWebhooksSecret)
    ));
    assert!(matches!(
        SignatureLayer::standard_webhooks("whsec_"),
        Err(SignatureConfigError::EmptySecret)
    ));
}

// ---------------------------------------------------------------- Stripe

const STRIPE_SECRET: &str = "whsec_test_secret";
const STRIPE_BODY: &str =
    r#"{"id":"evt_test_webhook","object":"event","type":"payment_intent.succeeded"}"#;

fn stripe_sig(ts: u64, body: &str) -> String {
    hex256(
        STRIPE_SECRET.as_bytes(),
        &[ts.to_string().as_bytes(), b".", body.as_bytes()],
    )
}

async fn stripe_send(header: &str, body: &str) -> (Outcome, Seen) {
    let layer = SignatureLayer::stripe(STRIPE_SECRET)
        .unwrap()
        .clock(at(1_700_000_000));
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(&[("stripe-signature", header)], body.to_owned()),
    )
    .await;
    (out, seen)
}

#[tokio::test]
async fn stripe_signatures() {
    let ts = 1_700_000_000;
    let good = stripe_sig(ts, STRIPE_BODY);
    let (out, seen) = stripe_send(&format!("t={ts},v1={good}"), STRIPE_BODY).await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.delivery_id(), Some("evt_test_webhook"));
    assert_eq!(hook.event(), Some("payment_intent.succeeded"));
    // Several v1 (rotation on Stripe's side), v0 ignored, spaces after commas tolerated.
    let (out, _) = stripe_send(
        &format!("t={ts}, v1={}, v1={good}, v0=abc", "0".repeat(64)),
        STRIPE_BODY,
    )
    .await;
    assert_eq!(out.status, 200);
    // As Stripe's SDKs do: an empty item (a trailing comma) is skipped, and a `v1` that is not
    // 64 hex digits is a signature that cannot match, not a reason to refuse the others.
    for header in [
        format!("t={ts},v1={good},"),
        format!("t={ts},,v1={good}"),
        format!("t={ts},v1={},v1={good}", &good[..63]),
        format!("t={ts},v1=,v1={good}"),
        format!("t={ts},v1={},v1={good}", "z".repeat(64)),
    ] {
        let (out, _) = stripe_send(&header, STRIPE_BODY).await;
        assert_eq!(out.status, 200, "{header}");
    }

    let bad: Vec<(&str, String)> = vec![
        (
            "wrong v1",
            format!("t={ts},v1={}", stripe_sig(ts + 1, STRIPE_BODY)),
        ),
        (
            "stale",
            format!("t={},v1={}", ts - 301, stripe_sig(ts - 301, STRIPE_BODY)),
        ),
        (
            "future",
            format!("t={},v1={}", ts + 301, stripe_sig(ts + 301, STRIPE_BODY)),
        ),
        ("missing t", format!("v1={good}")),
        ("duplicate t", format!("t={ts},t={ts},v1={good}")),
        ("only v0", format!("t={ts},v0={good}")),
        ("negative t", format!("t=-9223372036854775808,v1={good}")),
        ("short v1", format!("t={ts},v1={}", &good[..63])),
        ("non-hex v1", format!("t={ts},v1={}", "z".repeat(64))),
        ("empty header", String::new()),
        ("only commas", ",,".to_owned()),
        ("item without =", format!("t={ts},v1{good}")),
        (
            "nine v1",
            format!("t={ts}{}", format!(",v1={good}").repeat(9)),
        ),
    ];
    for (name, header) in bad {
        let (out, seen) = stripe_send(&header, STRIPE_BODY).await;
        assert_eq!(out.status, 401, "{name}");
        assert_rejected(
            &out,
            &seen,
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        );
    }
    // Authentic but not an event: 400.
    let body = "not json";
    let (out, seen) = stripe_send(&format!("t={ts},v1={}", stripe_sig(ts, body)), body).await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::BAD_REQUEST,
        types::MALFORMED_DELIVERY,
    );
}

// ---------------------------------------------------------------- Slack

#[tokio::test]
async fn slack_docs_vector_and_handshake() {
    let layer = SignatureLayer::slack(SLACK_SECRET)
        .unwrap()
        .clock(at(SLACK_TS + 10));
    let seen = Seen::default();
    let ts = SLACK_TS.to_string();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-slack-signature", SLACK_SIG),
                ("x-slack-request-timestamp", &ts),
            ],
            SLACK_BODY,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.body[..], SLACK_BODY.as_bytes());

    // Tampered, stale, and a missing timestamp header.
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-slack-signature", SLACK_SIG),
                ("x-slack-request-timestamp", &ts),
            ],
            format!("{SLACK_BODY}&"),
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
    let late = SignatureLayer::slack(SLACK_SECRET)
        .unwrap()
        .clock(at(SLACK_TS + 301));
    let out = send(
        &late,
        &seen,
        post(
            &[
                ("x-slack-signature", SLACK_SIG),
                ("x-slack-request-timestamp", &ts),
            ],
            SLACK_BODY,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
    let out = send(
        &layer,
        &seen,
        post(&[("x-slack-signature", SLACK_SIG)], SLACK_BODY),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );

    // url_verification is answered by the layer, after verification.
    let body = r#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let sig = format!(
        "v0={}",
        hex256(
            SLACK_SECRET.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]
        )
    );
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-slack-signature", &sig),
                ("x-slack-request-timestamp", &ts),
                ("content-type", "application/json"),
            ],
            body,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(
        &out.body[..],
        b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    // The same handshake unsigned is refused.
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-slack-signature", SLACK_SIG),
                ("x-slack-request-timestamp", &ts),
            ],
            body,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
}

// ---------------------------------------------------------------- token schemes

#[tokio::test]
async fn gitlab_token_is_compared_exactly() {
    let layer = SignatureLayer::gitlab("glpat-webhook-token").unwrap();
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-gitlab-token", "glpat-webhook-token"),
                ("x-gitlab-event", "Merge Request Hook"),
                ("idempotency-key", "k-1"),
            ],
            "{}",
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.event(), Some("Merge Request Hook"));
    assert_eq!(hook.delivery_id(), Some("k-1"));
    for token in [
        "glpat-webhook-toke",
        "glpat-webhook-token ",
        "GLPAT-WEBHOOK-TOKEN",
        "",
        "glpat-webhook-tokenx",
    ] {
        assert_refused(
            &layer,
            post(&[("x-gitlab-token", token)], "{}"),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
    assert_refused(
        &layer,
        post(&[], "{}"),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
}

/// GitLab's delivery id is `Idempotency-Key`, kept on its retries. `X-Gitlab-Event-UUID` is
/// shared by the deliveries one request makes to a hook, and new on a retry: not an id.
#[tokio::test]
async fn gitlab_deduplicates_on_idempotency_key_only() {
    let layer = SignatureLayer::gitlab("glpat-webhook-token").unwrap();
    let seen = Seen::default();
    let delivery = |event: &str, uuid: &str, key: Option<&str>| {
        let mut headers = vec![
            ("x-gitlab-token", "glpat-webhook-token".to_owned()),
            ("x-gitlab-event", event.to_owned()),
            ("x-gitlab-event-uuid", uuid.to_owned()),
        ];
        if let Some(key) = key {
            headers.push(("idempotency-key", key.to_owned()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(&headers, "{}")
    };
    // Two events of one request (same `X-Gitlab-Event-UUID`), from a GitLab without
    // `Idempotency-Key`: both handled, neither with a delivery id.
    for event in ["Push Hook", "Merge Request Hook"] {
        let out = send(&layer, &seen, delivery(event, "uuid-1", None)).await;
        assert_eq!(out.status, 200, "{event}");
        let hook = seen.last.lock().unwrap().clone().unwrap().1;
        assert_eq!(hook.delivery_id(), None, "{event}");
    }
    // The same two from GitLab 17.4 or later: each its own key, both handled.
    for (event, key) in [("Push Hook", "key-1"), ("Merge Request Hook", "key-2")] {
        let out = send(&layer, &seen, delivery(event, "uuid-2", Some(key))).await;
        assert_eq!(out.status, 200, "{event}");
        let hook = seen.last.lock().unwrap().clone().unwrap().1;
        assert_eq!(hook.delivery_id(), Some(key));
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 4);
    // A retry: the same key under a new `X-Gitlab-Event-UUID`, refused as a replay.
    assert_refused(
        &layer,
        delivery("Merge Request Hook", "uuid-3", Some("key-2")),
        StatusCode::CONFLICT,
        types::REPLAYED_DELIVERY,
    )
    .await;
}

#[tokio::test]
async fn azure_devops_basic_credentials() {
    let layer = SignatureLayer::azure_devops("hook", "p4ssw0rd")
        .unwrap()
        .without_replay_store();
    let good = format!("Basic {}", B64.encode("hook:p4ssw0rd"));
    let body =
        r#"{"id":"03c164c2-8912-4d5e-8009-3707d5f83734","eventType":"git.pullrequest.created"}"#;
    let seen = Seen::default();
    let out = send(&layer, &seen, post(&[("authorization", &good)], body)).await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.event(), Some("git.pullrequest.created"));
    assert_eq!(
        hook.delivery_id(),
        Some("03c164c2-8912-4d5e-8009-3707d5f83734")
    );
    let lower = format!("basic {}", B64.encode("hook:p4ssw0rd"));
    let seen = Seen::default();
    assert_eq!(
        send(&layer, &seen, post(&[("authorization", &lower)], body))
            .await
            .status,
        200
    );

    let wrong = format!("Basic {}", B64.encode("hook:p4ssw0rD"));
    let bearer = format!("Bearer {}", B64.encode("hook:p4ssw0rd"));
    for header in [wrong.as_str(), bearer.as_str(), "Basic !!!", "Basic"] {
        assert_refused(
            &layer,
            post(&[("authorization", header)], body),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
    // Authentic but without an event id.
    assert_refused(
        &layer,
        post(&[("authorization", &good)], "{}"),
        StatusCode::BAD_REQUEST,
        types::MALFORMED_DELIVERY,
    )
    .await;
    assert!(SignatureLayer::azure_devops("hook", "").is_err());
}

// ---------------------------------------------------------------- other HMAC providers

#[tokio::test]
async fn bitbucket_gitea_forgejo_shopify_and_custom() {
    let secret = "s3cr3t";
    let body = br#"{"action":"opened"}"#;
    let hex = hex256(secret.as_bytes(), &[body]);

    // Bitbucket Cloud and Data Center.
    for (layer, id_header) in [
        (
            SignatureLayer::bitbucket_cloud(secret).unwrap(),
            "x-request-uuid",
        ),
        (
            SignatureLayer::bitbucket_data_center(secret).unwrap(),
            "x-request-id",
        ),
    ] {
        let seen = Seen::default();
        let sig = format!("sha256={hex}");
        let out = send(
            &layer,
            &seen,
            post(
                &[
                    ("x-hub-signature", &sig),
                    (id_header, "bb-1"),
                    ("x-event-key", "pullrequest:created"),
                ],
                &body[..],
            ),
        )
        .await;
        assert_eq!(out.status, 200);
        let hook = seen.last.lock().unwrap().clone().unwrap().1;
        assert_eq!(hook.delivery_id(), Some("bb-1"));
        assert_eq!(hook.event(), Some("pullrequest:created"));
        assert_refused(
            &layer,
            post(&[("x-hub-signature-256", &sig)], &body[..]),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
    // Bitbucket Data Center's id travels in `X-Request-Id`, which proxies add to as well: the
    // first one, Bitbucket's, is the delivery's (a second one got 400).
    let seen = Seen::default();
    let sig = format!("sha256={hex}");
    let out = send(
        &SignatureLayer::bitbucket_data_center(secret).unwrap(),
        &seen,
        post(
            &[
                ("x-hub-signature", &sig),
                ("x-request-id", "bb-1"),
                ("x-request-id", "proxy-7"),
                ("x-event-key", "pr:opened"),
            ],
            &body[..],
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.delivery_id(), Some("bb-1"));
    // A custom scheme whose id is in `X-Request-Id` still refuses two: Bitbucket's rule only.
    let custom = SignatureLayer::custom(
        CustomScheme::new("x-sig").delivery_id_header("x-request-id"),
        secret,
    )
    .unwrap();
    assert_refused(
        &custom,
        post(
            &[
                ("x-sig", &hex),
                ("x-request-id", "a"),
                ("x-request-id", "b"),
            ],
            &body[..],
        ),
        StatusCode::BAD_REQUEST,
        types::MALFORMED_DELIVERY,
    )
    .await;

    // Gitea: JSON body, and a form delivery whose decoded `payload` is what is signed.
    let gitea = SignatureLayer::gitea(secret).unwrap();
    let seen = Seen::default();
    let out = send(
        &gitea,
        &seen,
        post(
            &[
                ("x-gitea-signature", &hex),
                ("x-gitea-event", "pull_request"),
                ("content-type", "application/json"),
            ],
            &body[..],
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    let form = "payload=%7B%22action%22%3A%22opened%22%7D";
    let seen = Seen::default();
    let out = send(
        &gitea,
        &seen,
        post(
            &[
                ("x-gitea-signature", &hex),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.body[..], form.as_bytes(), "the raw form is handed on");
    assert_refused(
        &gitea,
        post(
            &[
                ("x-gitea-signature", &hex),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "other=1",
        ),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    // Fields the signature does not cover are refused, whatever their order.
    for form in [
        format!("{form}&admin=true"),
        format!("{form}&payload=%7B%7D"),
        format!("admin=true&{form}"),
    ] {
        assert_refused(
            &gitea,
            post(
                &[
                    ("x-gitea-signature", &hex),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                form,
            ),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
    assert_refused(
        &gitea,
        post(
            &[("x-gitea-signature", &format!("sha256={hex}"))],
            &body[..],
        ),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;

    // Forgejo: its own header, or the Gitea one it also sends.
    let forgejo = SignatureLayer::forgejo(secret)
        .unwrap()
        .without_replay_store();
    for header in ["x-forgejo-signature", "x-gitea-signature"] {
        let seen = Seen::default();
        let out = send(
            &forgejo,
            &seen,
            post(&[(header, &hex), ("x-forgejo-delivery", "fj-1")], &body[..]),
        )
        .await;
        assert_eq!(out.status, 200, "{header}");
        assert_eq!(
            seen.last.lock().unwrap().clone().unwrap().1.delivery_id(),
            Some("fj-1")
        );
    }

    // Shopify: base64.
    let shopify = SignatureLayer::shopify(secret).unwrap();
    let b64 = B64.encode(hmac256(secret.as_bytes(), &[body]));
    let seen = Seen::default();
    let out = send(
        &shopify,
        &seen,
        post(
            &[
                ("x-shopify-hmac-sha256", &b64),
                ("x-shopify-topic", "orders/create"),
                ("x-shopify-webhook-id", "sh-1"),
            ],
            &body[..],
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(
        seen.last.lock().unwrap().clone().unwrap().1.event(),
        Some("orders/create")
    );
    assert_refused(
        &shopify,
        post(&[("x-shopify-hmac-sha256", &hex)], &body[..]),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    // Shopify's Events deliveries: the same headers without `X-`.
    let seen = Seen::default();
    let events = |sig: &str, id: &str| {
        post(
            &[
                ("shopify-hmac-sha256", sig),
                ("shopify-topic", "Product"),
                ("shopify-webhook-id", id),
            ],
            &body[..],
        )
    };
    let out = send(&shopify, &seen, events(&b64, "ev-1")).await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.event(), Some("Product"));
    assert_eq!(hook.delivery_id(), Some("ev-1"));
    assert_refused(
        &shopify,
        events(&b64, "ev-1"),
        StatusCode::CONFLICT,
        types::REPLAYED_DELIVERY,
    )
    .await;
    let mut tampered = B64.decode(&b64).unwrap();
    tampered[0] ^= 1;
    assert_refused(
        &shopify,
        events(&B64.encode(tampered), "ev-2"),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    // Both forms in one delivery: the `X-` one is the one verified.
    assert_refused(
        &shopify,
        post(
            &[
                ("x-shopify-hmac-sha256", &hex),
                ("shopify-hmac-sha256", &b64),
            ],
            &body[..],
        ),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    let out = send(
        &shopify,
        &seen,
        post(
            &[
                ("x-shopify-hmac-sha256", &b64),
                ("shopify-hmac-sha256", "bm90IGl0"),
            ],
            &body[..],
        ),
    )
    .await;
    assert_eq!(out.status, 200);

    // Custom: GitHub's legacy SHA-1 header, and a SHA-512 base64 scheme with a timestamp.
    let legacy = CustomScheme::new("x-hub-signature")
        .prefix("sha1=")
        .algorithm(Algorithm::Sha1)
        .delivery_id_header("x-github-delivery");
    let layer = SignatureLayer::custom(legacy, GH_SECRET).unwrap();
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(GH_BODY);
    let sig = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
    let seen = Seen::default();
    assert_eq!(
        send(&layer, &seen, post(&[("x-hub-signature", &sig)], GH_BODY))
            .await
            .status,
        200
    );
    assert_eq!(
        seen.last.lock().unwrap().clone().unwrap().1.provider(),
        Provider::Custom
    );

    let scheme = CustomScheme::new("x-sig")
        .algorithm(Algorithm::Sha512)
        .encoding(Encoding::Base64)
        .timestamp_header("x-ts");
    let layer = SignatureLayer::custom(scheme, secret)
        .unwrap()
        .clock(at(1_000_000));
    let mut mac = <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"1000000.");
    mac.update(body);
    let sig = B64.encode(mac.finalize().into_bytes());
    let seen = Seen::default();
    assert_eq!(
        send(
            &layer,
            &seen,
            post(&[("x-sig", &sig), ("x-ts", "1000000")], &body[..])
        )
        .await
        .status,
        200
    );
    assert_refused(
        &layer,
        post(&[("x-sig", &sig), ("x-ts", "1000001")], &body[..]),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    assert!(matches!(
        SignatureLayer::custom(CustomScheme::new("bad header"), secret),
        Err(SignatureConfigError::InvalidHeaderName(_))
    ));

    // A window wide enough to admit any timestamp: a signed one beyond what `SystemTime`
    // holds is accepted and reported as absent, without a panic.
    let layer = SignatureLayer::custom(
        CustomScheme::new("x-sig")
            .algorithm(Algorithm::Sha512)
            .encoding(Encoding::Base64)
            .timestamp_header("x-ts"),
        secret,
    )
    .unwrap()
    .timestamp_tolerance(Duration::MAX);
    let far = "9".repeat(19);
    let mut mac = <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{far}.").as_bytes());
    mac.update(body);
    let sig = B64.encode(mac.finalize().into_bytes());
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(&[("x-sig", &sig), ("x-ts", &far)], &body[..]),
    )
    .await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.timestamp(), None);
}

// ---------------------------------------------------------------- fail closed, secrets, logs

#[test]
fn empty_or_missing_secrets_are_construction_errors() {
    assert!(matches!(
        SignatureLayer::github(""),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        SignatureLayer::gitlab(String::new()),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        SignatureLayer::stripe(Vec::<u8>::new()),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        SignatureLayer::github_with_secrets(Vec::<&str>::new()),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        SignatureLayer::github_with_secrets(["ok", ""]),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        github().secret(""),
        Err(SignatureConfigError::EmptySecret)
    ));
    assert!(matches!(
        Secrets::from_list("a,,b"),
        Err(SignatureConfigError::EmptySecret)
    ));
    // A secret that holds a comma is split at it; a short piece would be a secret of its own,
    // which a sender could guess: a list of several refuses an item under 8 bytes.
    let err = Secrets::from_list("Zq8!vP2#mR,7").unwrap_err();
    assert!(
        matches!(&err, SignatureConfigError::ShortListItem(source) if source == "the list"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("comma") && !text.contains("Zq8"), "{text}");
    assert!(Secrets::from_list("1234567,12345678").is_err());
    assert_eq!(Secrets::from_list("12345678, 87654321").unwrap().len(), 2);
    // One secret alone is never split, whatever its length.
    assert_eq!(Secrets::from_list("short").unwrap().len(), 1);
    let err = Secrets::from_env_list("TOWER_WEBHOOK_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
    assert!(
        err.to_string()
            .contains("TOWER_WEBHOOK_TEST_SURELY_UNSET_VARIABLE")
    );
    assert!(SignatureLayer::with_secrets(Provider::Custom, ["x"]).is_err());
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let layer = SignatureLayer::github("hunter2-super-secret")
        .unwrap()
        .secret("second-hunter2")
        .unwrap();
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }),
    );
    for text in [
        format!("{layer:?}"),
        format!("{layer:#?}"),
        format!("{svc:?}"),
        format!("{svc:#?}"),
        format!("{:?}", Secrets::from_list("hunter2-super-secret").unwrap()),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    let az = SignatureLayer::azure_devops("user", "hunter2-pass").unwrap();
    assert!(!format!("{az:?}").contains("hunter2"));
}

#[tokio::test]
async fn reason_goes_to_the_log_once_not_to_the_client() {
    let (logs, _guard) = Logs::capture();
    let layer = SignatureLayer::github("hunter2-log-secret").unwrap();
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[("x-hub-signature-256", GH_SIG), ("x-request-id", "r-9")],
            GH_BODY,
        ),
    )
    .await;
    assert_eq!(out.status, 401);
    let text = logs.text();
    assert_eq!(
        text.matches("no signature matches any configured secret")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("provider=\"github\"") || text.contains("provider=github"),
        "{text}"
    );
    assert!(text.contains("r-9"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!String::from_utf8_lossy(&out.body).contains("no signature"));

    // The id is read from the header the layer is told to use.
    let layer = layer.request_id_header(http::HeaderName::from_static("x-correlation-id"));
    let headers = [
        ("x-hub-signature-256", GH_SIG),
        ("x-correlation-id", "corr-7"),
        ("x-request-id", "ignored-8"),
    ];
    assert_eq!(
        send(&layer, &seen, post(&headers, GH_BODY)).await.status,
        401
    );
    let text = logs.text();
    assert!(text.contains("corr-7"), "{text}");
    assert!(!text.contains("ignored-8"), "{text}");
}

#[tokio::test]
async fn skipping_verification_needs_the_loud_opt_in() {
    let layer = SignatureLayer::dangerously_skip_verification().max_body_size(10);
    let seen = Seen::default();
    let out = send(&layer, &seen, post(&[], "anything")).await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.provider(), Provider::Unverified);
    assert_eq!(hook.secret_index(), None);
    assert_refused(
        &layer,
        post(&[], "more than ten bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
        types::PAYLOAD_TOO_LARGE,
    )
    .await;
}

use crate::logs;
use logs::Logs;

// ---------------------------------------------------------------- peers' faults

#[tokio::test]
async fn signature_is_checked_before_anything_parses_the_body() {
    // Not JSON, bad signature: 401 (not a parse error).
    assert_refused(
        &github(),
        post(&[("x-hub-signature-256", GH_SIG)], "{not json"),
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    )
    .await;
    // Not JSON, good signature: the layer does not care, the handler decides.
    let body = "{not json";
    let sig = format!(
        "sha256={}",
        hex256(GH_SECRET.as_bytes(), &[body.as_bytes()])
    );
    let seen = Seen::default();
    assert_eq!(
        send(
            &github(),
            &seen,
            post(&[("x-hub-signature-256", &sig)], body)
        )
        .await
        .status,
        200
    );
}

#[test]
fn verify_in_memory_and_error_mapping() {
    let layer = github();
    let mut headers = HeaderMap::new();
    headers.insert("x-hub-signature-256", GH_SIG.parse().unwrap());
    let hook = layer.verify(&headers, GH_BODY).unwrap();
    assert_eq!(hook.provider(), Provider::GitHub);
    let err = layer.verify(&headers, b"Hello").unwrap_err();
    assert!(matches!(err, SignatureValidationError::Mismatch));
    assert_eq!(err.status(), 401);
    let big = vec![0u8; 2048];
    let err = layer
        .clone()
        .max_body_size(1024)
        .verify(&headers, &big)
        .unwrap_err();
    assert_eq!(err.status(), 413);
    assert_eq!(SignatureValidationError::Replayed("x".into()).status(), 409);
    assert_eq!(
        SignatureValidationError::MalformedDelivery("x").status(),
        400
    );
}

// ---------------------------------------------------------------- the rest of the stack

#[tokio::test]
async fn webhook_error_layer_rerenders_with_request_id_and_grpc() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(github())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let req = post(
        &[("x-hub-signature-256", GH_SIG), ("x-request-id", "req-7")],
        "forged",
    );
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 401);
    // The layer's challenge survives the re-rendering.
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Signature realm="github""#
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["instance"], "req-7");
    assert_eq!(json["type"], types::INVALID_SIGNATURE);

    let req = post(
        &[
            ("x-hub-signature-256", GH_SIG),
            ("content-type", "application/grpc"),
        ],
        "forged",
    );
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "16");

    // A SignatureValidationError returned as an error anywhere in a chain is recognised too.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, tower::BoxError>(Box::new(
                SignatureValidationError::PayloadTooLarge { limit: 1 },
            ))
        });
    let res = svc.oneshot(post(&[], "")).await.unwrap();
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn axum_route_layer_with_json_extractor() {
    use axum::{Json, Router, routing::post as axum_post};

    async fn handler(hook: VerifiedWebhook, Json(value): Json<serde_json::Value>) -> String {
        format!("{}:{}", hook.event().unwrap_or("-"), value["action"])
    }
    let secret = "axum-secret";
    let app: Router = Router::new()
        .route("/github", axum_post(handler))
        .route_layer(SignatureLayer::github(secret).unwrap())
        .route("/health", axum::routing::get(|| async { "up" }));
    let body = r#"{"action":"opened"}"#;
    let sig = format!("sha256={}", hex256(secret.as_bytes(), &[body.as_bytes()]));
    let req = Request::post("/github")
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-hub-signature-256", sig)
        .body(axum::body::Body::from(body))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], br#"pull_request:"opened""#);

    let forged = Request::post("/github")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", GH_SIG)
        .body(axum::body::Body::from(body))
        .unwrap();
    assert_eq!(app.clone().oneshot(forged).await.unwrap().status(), 401);
    // Other routes are not guarded.
    let health = Request::get("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(health).await.unwrap().status(), 200);
}

use crate::chunks;
use chunks::Chunks;

#[tokio::test]
async fn multi_frame_bodies_are_assembled_exactly() {
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sig = format!("sha256={}", hex256(GH_SECRET.as_bytes(), &[&body]));
    for (chunk, with_length) in [(1usize, false), (7, true), (4096, false), (20_000, true)] {
        let frames = body.chunks(chunk).map(Bytes::copy_from_slice).collect();
        let svc = ServiceBuilder::new()
            .layer(github().max_body_size(20_000))
            .service_fn(|req: Request<Chunks>| async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            });
        let mut req = Request::post("/").header("x-hub-signature-256", &sig);
        if with_length {
            req = req.header("content-length", body.len());
        }
        let res = svc
            .oneshot(req.body(Chunks(frames)).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "chunk {chunk}");
        let echoed = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&echoed[..], &body[..], "chunk {chunk}");
    }
}

// ---------------------------------------------------------------- Zoom

#[tokio::test]
async fn zoom_events_and_url_validation() {
    const ZOOM_SECRET: &str = "zoom-secret-token";
    let ts = "1700000000";
    let layer = SignatureLayer::zoom(ZOOM_SECRET)
        .unwrap()
        .clock(at(1_700_000_060))
        .without_replay_store();
    let sign = |body: &str| {
        format!(
            "v0={}",
            hex256(
                ZOOM_SECRET.as_bytes(),
                &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]
            )
        )
    };

    let body =
        r#"{"event":"meeting.started","payload":{"object":{"id":"1"}},"event_ts":1700000000000}"#;
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-zm-signature", &sign(body)),
                ("x-zm-request-timestamp", ts),
            ],
            body,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    let hook = seen.last.lock().unwrap().clone().unwrap().1;
    assert_eq!(hook.provider(), Provider::Zoom);
    assert_eq!(hook.event(), Some("meeting.started"));

    // The endpoint check is answered by the layer with the HMAC of the plain token.
    let body = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-zm-signature", &sign(body)),
                ("x-zm-request-timestamp", ts),
            ],
            body,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.headers["content-type"], "application/json");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    let json = out.json();
    assert_eq!(json["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
    assert_eq!(
        json["encryptedToken"],
        hex256(ZOOM_SECRET.as_bytes(), &[b"qgg8vlvZRS6UYooatFL8Aw"])
    );

    // Unsigned, stale, or without a token: refused.
    let seen = Seen::default();
    let forged = format!("v0={}", "0".repeat(64));
    let out = send(
        &layer,
        &seen,
        post(
            &[("x-zm-signature", &forged), ("x-zm-request-timestamp", ts)],
            body,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
    let late = layer.clone().clock(at(1_700_000_301));
    let out = send(
        &late,
        &seen,
        post(
            &[
                ("x-zm-signature", &sign(body)),
                ("x-zm-request-timestamp", ts),
            ],
            body,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
    let no_token = r#"{"payload":{},"event":"endpoint.url_validation"}"#;
    let out = send(
        &layer,
        &seen,
        post(
            &[
                ("x-zm-signature", &sign(no_token)),
                ("x-zm-request-timestamp", ts),
            ],
            no_token,
        ),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::BAD_REQUEST,
        types::MALFORMED_DELIVERY,
    );

    // With handshakes off, the check reaches the handler.
    let seen = Seen::default();
    let out = send(
        &layer.clone().answer_handshakes(false),
        &seen,
        post(
            &[
                ("x-zm-signature", &sign(body)),
                ("x-zm-request-timestamp", ts),
            ],
            body,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- Twitch

/// Twitch does not sign its message-type header: a captured callback verification sent again
/// as a `notification` must not reach the handler. The handshake's id is recorded like any
/// delivery's, so the copy is a replay.
#[tokio::test]
async fn a_twitch_handshake_sent_again_as_a_notification_is_a_replay() {
    const SECRET: &str = "twitch-eventsub-secret";
    const ID: &str = "0b3f9e1c-1d1f-4f7a-9f7e-6a1b2c3d4e5f";
    let ts = "2023-07-19T10:11:12Z";
    let check = r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
    let sig = format!(
        "sha256={}",
        hex256(
            SECRET.as_bytes(),
            &[ID.as_bytes(), ts.as_bytes(), check.as_bytes()]
        )
    );
    let request = |kind: &str| {
        post(
            &[
                ("twitch-eventsub-message-id", ID),
                ("twitch-eventsub-message-timestamp", ts),
                ("twitch-eventsub-message-signature", &sig),
                ("twitch-eventsub-message-type", kind),
                ("twitch-eventsub-subscription-type", "channel.follow"),
            ],
            check.to_owned(),
        )
    };
    for record in [
        RecordDelivery::AfterVerification,
        RecordDelivery::AfterSuccess,
    ] {
        let layer = SignatureLayer::twitch(SECRET)
            .unwrap()
            .clock(at(1_689_761_472 + 30))
            .record_delivery(record);
        let seen = Seen::default();
        let out = send(&layer, &seen, request("webhook_callback_verification")).await;
        assert_eq!(out.status, 200);
        assert_eq!(&out.body[..], b"pogchamp-kappa-360noscope-vohiyo");
        // The provider asks again (its answer was lost): answered again.
        let out = send(&layer, &seen, request("webhook_callback_verification")).await;
        assert_eq!(&out.body[..], b"pogchamp-kappa-360noscope-vohiyo");

        let out = send(&layer, &seen, request("notification")).await;
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "{record:?}");
        assert!(
            out.status == 200 || out.status == 409,
            "{record:?}: {}",
            out.status
        );
    }
}

#[tokio::test]
async fn twitch_eventsub_notifications_and_verification() {
    const SECRET: &str = "twitch-eventsub-secret";
    const ID: &str = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    let instant = 1_689_761_472; // 2023-07-19T10:11:12Z
    let layer = SignatureLayer::twitch(SECRET)
        .unwrap()
        .clock(at(instant + 30))
        .without_replay_store();
    let sign = |id: &str, ts: &str, body: &str| {
        format!(
            "sha256={}",
            hex256(
                SECRET.as_bytes(),
                &[id.as_bytes(), ts.as_bytes(), body.as_bytes()]
            )
        )
    };
    let request = |ts: &str, sig: &str, kind: &str, body: &str| {
        post(
            &[
                ("twitch-eventsub-message-id", ID),
                ("twitch-eventsub-message-timestamp", ts),
                ("twitch-eventsub-message-signature", sig),
                ("twitch-eventsub-message-type", kind),
                ("twitch-eventsub-subscription-type", "channel.follow"),
            ],
            body.to_owned(),
        )
    };
    let body = r#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"1337"}}"#;
    for ts in [
        "2023-07-19T10:11:12.123456789Z",
        "2023-07-19T12:11:12+02:00",
        "2023-07-19t10:11:12z",
    ] {
        let seen = Seen::default();
        let out = send(
            &layer,
            &seen,
            request(ts, &sign(ID, ts, body), "notification", body),
        )
        .await;
        assert_eq!(out.status, 200, "{ts}");
        let hook = seen.last.lock().unwrap().clone().unwrap().1;
        assert_eq!(hook.provider(), Provider::Twitch);
        assert_eq!(hook.delivery_id(), Some(ID));
        assert_eq!(hook.event(), Some("channel.follow"));
        assert_eq!(
            hook.timestamp(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(instant))
        );
    }

    // The callback verification is answered with the challenge, after verification.
    let check = r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
    let ts = "2023-07-19T10:11:12Z";
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        request(
            ts,
            &sign(ID, ts, check),
            "webhook_callback_verification",
            check,
        ),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(&out.body[..], b"pogchamp-kappa-360noscope-vohiyo");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);

    // Tampered, other id, malformed or stale timestamps: refused.
    let bad_ts = [
        "2023-07-19 10:11:12Z",
        "2023-02-30T10:11:12Z",
        "2023-07-19T10:11:12",
        "2023-07-19T10:11:12.Z",
        "1689761472",
        "2023-07-19T24:00:00Z",
        "2023-07-19T10:11:12+2:00",
        "2023-07-19T10:01:11Z", // 601 s before the clock: Twitch's window is 10 minutes
    ];
    for ts in bad_ts {
        assert_refused(
            &layer,
            request(ts, &sign(ID, ts, body), "notification", body),
            StatusCode::UNAUTHORIZED,
            types::INVALID_SIGNATURE,
        )
        .await;
    }
    let seen = Seen::default();
    let out = send(
        &layer,
        &seen,
        request(ts, &sign(ID, ts, body), "notification", &format!("{body} ")),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
    let out = send(
        &layer,
        &seen,
        request(ts, &sign("other-id", ts, body), "notification", body),
    )
    .await;
    assert_rejected(
        &out,
        &seen,
        StatusCode::UNAUTHORIZED,
        types::INVALID_SIGNATURE,
    );
}

/// A clock that reads the time from the returned cell.
fn settable_clock() -> (Arc<std::sync::Mutex<SystemTime>>, Clock) {
    let now = Arc::new(std::sync::Mutex::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
    ));
    let cell = Arc::clone(&now);
    (now, Clock::from_fn(move || *cell.lock().unwrap()))
}

/// A store with only `insert` and `remove` (it cannot tell claims from handled ids).
#[derive(Debug)]
struct InsertOnly(MemoryReplayStore);

impl ReplayStore for InsertOnly {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.0.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.0.remove(key)
    }
}

#[tokio::test]
async fn a_store_without_claims_remembers_handled_ids_for_the_replay_ttl() {
    let (now, clock) = settable_clock();
    let layer = github()
        .replay_store(InsertOnly(MemoryReplayStore::new().clock(clock)))
        .record_delivery(RecordDelivery::AfterSuccess)
        .claim_ttl(Duration::from_secs(60));
    let deliver = || {
        post(
            &[
                ("x-hub-signature-256", GH_SIG),
                ("x-github-delivery", "d-1"),
            ],
            GH_BODY,
        )
    };
    let seen = Seen::default();
    assert_eq!(send(&layer, &seen, deliver()).await.status, 200);
    // Past the claim TTL, well within the replay TTL: still a replay.
    *now.lock().unwrap() += Duration::from_secs(3600);
    assert_eq!(send(&layer, &seen, deliver()).await.status, 409);
}

/// A handler whose calls each wait for the status they are told to answer with, in order.
#[derive(Clone, Default)]
struct Held {
    answers: Arc<
        std::sync::Mutex<std::collections::VecDeque<tokio::sync::oneshot::Receiver<StatusCode>>>,
    >,
}

impl Held {
    /// Sends `req` through `layer` to the next held call; returns the task and how to answer it.
    async fn start(
        &self,
        layer: &SignatureLayer,
        req: Request<Full<Bytes>>,
    ) -> (
        tokio::task::JoinHandle<StatusCode>,
        tokio::sync::oneshot::Sender<StatusCode>,
    ) {
        let (answer, rx) = tokio::sync::oneshot::channel();
        self.answers.lock().unwrap().push_back(rx);
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let answers = Arc::clone(&self.answers);
        let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
            move |_req: Request<Full<Bytes>>| {
                let rx = answers.lock().unwrap().pop_front().unwrap();
                let entered_tx = entered_tx.lock().unwrap().take();
                async move {
                    entered_tx.unwrap().send(()).unwrap();
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = rx.await.unwrap();
                    Ok::<_, Infallible>(res)
                }
            },
        );
        let task = tokio::spawn(async move { svc.oneshot(req).await.unwrap().status() });
        entered.await.expect("the handler was called");
        (task, answer)
    }
}

#[tokio::test]
async fn a_handler_that_outlives_its_claim_leaves_the_next_claim_alone() {
    let (now, clock) = settable_clock();
    let layer = github()
        .replay_store(MemoryReplayStore::new().clock(clock))
        .claim_ttl(Duration::from_secs(60))
        .on_replay(OnReplay::Acknowledge(StatusCode::OK));
    let req = |id: &str| {
        post(
            &[("x-hub-signature-256", GH_SIG), ("x-github-delivery", id)],
            GH_BODY,
        )
    };
    let (held, seen) = (Held::default(), Seen::default());

    // The first attempt outlives its claim; the provider's redelivery claims the id and runs.
    let (first, answer_first) = held.start(&layer, req("late-fail")).await;
    *now.lock().unwrap() += Duration::from_secs(61);
    let (second, answer_second) = held.start(&layer, req("late-fail")).await;
    // The first one fails: that must not release the claim the second one holds.
    answer_first.send(StatusCode::SERVICE_UNAVAILABLE).unwrap();
    assert_eq!(first.await.unwrap(), 503);
    let out = send(&layer, &seen, req("late-fail")).await;
    assert_rejected(&out, &seen, StatusCode::CONFLICT, types::REPLAYED_DELIVERY);
    answer_second.send(StatusCode::OK).unwrap();
    assert_eq!(second.await.unwrap(), 200);
    let out = send(&layer, &seen, req("late-fail")).await;
    assert_eq!(
        (out.status, out.body.len()),
        (StatusCode::OK, 0),
        "acknowledged"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);

    // The first attempt succeeds late, while the redelivery still runs: the id is not marked
    // handled under the second one, whose failure must still let the provider deliver again.
    let (first, answer_first) = held.start(&layer, req("late-ok")).await;
    *now.lock().unwrap() += Duration::from_secs(61);
    let (second, answer_second) = held.start(&layer, req("late-ok")).await;
    answer_first.send(StatusCode::OK).unwrap();
    assert_eq!(first.await.unwrap(), 200);
    let out = send(&layer, &seen, req("late-ok")).await;
    assert_rejected(&out, &seen, StatusCode::CONFLICT, types::REPLAYED_DELIVERY);
    answer_second
        .send(StatusCode::INTERNAL_SERVER_ERROR)
        .unwrap();
    assert_eq!(second.await.unwrap(), 500);
    assert_eq!(send(&layer, &seen, req("late-ok")).await.status, 200);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1, "processed again");
}

// ---------------------------------------------------------------- credentials the handler sees

/// A handler that logs the request it gets (`?req`, `?req.headers()`) must not print the GitLab
/// token or the Azure DevOps password: after verification they are marked sensitive.
#[tokio::test]
async fn token_and_basic_credentials_are_redacted_in_the_request_the_handler_gets() {
    let debug_of_headers = |layer: SignatureLayer, headers: Vec<(&'static str, String)>, body| async move {
        let printed = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = printed.clone();
        let svc =
            ServiceBuilder::new()
                .layer(layer)
                .service_fn(move |req: Request<Full<Bytes>>| {
                    *sink.lock().unwrap() = format!("{req:?}");
                    async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
                });
        let mut req = Request::post("/hook");
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let res = svc
            .oneshot(req.body(Full::new(Bytes::from_static(body))).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        printed.lock().unwrap().clone()
    };

    let printed = debug_of_headers(
        SignatureLayer::gitlab("glpat-webhook-token").unwrap(),
        vec![("x-gitlab-token", "glpat-webhook-token".to_owned())],
        b"{}",
    )
    .await;
    assert!(printed.contains("x-gitlab-token"), "{printed}");
    assert!(!printed.contains("glpat-webhook-token"), "{printed}");

    let basic = B64.encode("hook:p4ssw0rd");
    let printed = debug_of_headers(
        SignatureLayer::azure_devops("hook", "p4ssw0rd").unwrap(),
        vec![("authorization", format!("Basic {basic}"))],
        br#"{"id":"03c164c2-8912-4d5e-8009-3707d5f83734","eventType":"git.push"}"#,
    )
    .await;
    assert!(printed.contains("authorization"), "{printed}");
    assert!(!printed.contains(&basic), "{printed}");
}

/// An Azure DevOps credential is `username:password`: a bare password added for rotation could
/// never match a delivery, so it is refused when the layer is built.
#[test]
fn azure_devops_credentials_without_a_username_part_are_refused() {
    let layer = SignatureLayer::azure_devops("hook", "old-password").unwrap();
    let err = layer.secret("new-password").unwrap_err();
    assert!(
        matches!(
            err,
            SignatureConfigError::InvalidSetting { name: "secret", .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("username:password"), "{err}");
    assert!(SignatureLayer::with_secrets(Provider::AzureDevOps, ["new-password"]).is_err());

    // With the username, the new credential is accepted and matches.
    let layer = SignatureLayer::azure_devops("hook", "old-password")
        .unwrap()
        .secret("hook:new-password")
        .unwrap();
    let mut headers = HeaderMap::new();
    let basic = format!("Basic {}", B64.encode("hook:new-password"));
    headers.insert("authorization", basic.parse().unwrap());
    let hook = layer
        .verify(&headers, br#"{"id":"1b2a3c4d","eventType":"git.push"}"#)
        .unwrap();
    assert_eq!(hook.secret_index(), Some(1));
    // An empty username is still a username (`:password`).
    assert!(SignatureLayer::with_secrets(Provider::AzureDevOps, [":password"]).is_ok());
}

/// A full store makes room by evicting the oldest entries, but never the claim of a delivery
/// still being handled: its copies would be handled a second time. When only such claims are
/// left, a new id is an error (answered 503, the provider delivers again later), not a growth.
#[tokio::test]
async fn a_full_memory_store_never_evicts_a_claim_in_progress() {
    let now = Arc::new(AtomicUsize::new(1_000));
    let clock = || {
        let n = now.clone();
        Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_secs(n.load(Ordering::SeqCst) as u64)
        })
    };
    let store = MemoryReplayStore::with_capacity(3).clock(clock());
    let ttl = Duration::from_secs(60);
    let first = ClaimToken::unique();
    assert!(store.claim("in-progress", first, ttl).await.unwrap());
    for k in ["b", "c", "d", "e", "f"] {
        assert!(store.insert(k, ttl).await.unwrap());
        assert!(store.len() <= 3, "bounded: {}", store.len());
    }
    assert!(
        !store
            .claim("in-progress", ClaimToken::unique(), ttl)
            .await
            .unwrap(),
        "the claim in progress is still held"
    );
    assert!(store.complete("in-progress", first, ttl).await.unwrap());
    assert!(store.completed("in-progress").await.unwrap());

    // Only claims in progress: no room can be made.
    let full = MemoryReplayStore::with_capacity(2).clock(clock());
    assert!(full.claim("x", ClaimToken::unique(), ttl).await.unwrap());
    assert!(full.claim("y", ClaimToken::unique(), ttl).await.unwrap());
    let err = full.insert("z", ttl).await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert!(full.claim("z", ClaimToken::unique(), ttl).await.is_err());
    assert!(!full.claim("x", ClaimToken::unique(), ttl).await.unwrap());
    assert_eq!(full.len(), 2);

    // A claim past its TTL (its handler is gone) makes room like any expired entry.
    now.fetch_add(61, Ordering::SeqCst);
    assert!(full.insert("z", ttl).await.unwrap());
    assert!(full.claim("x", ClaimToken::unique(), ttl).await.unwrap());
    assert_eq!(full.len(), 2);
}

/// A delivery without an id whose timestamp is signed (Slack's) is told from its copies by a
/// part of its MAC; `VerifiedWebhook`'s `Debug` says it has one, without printing it.
#[test]
fn verified_webhook_debug_does_not_print_its_mac() {
    let layer = SignatureLayer::slack(SLACK_SECRET)
        .unwrap()
        .clock(at(SLACK_TS + 10));
    let mut headers = http::HeaderMap::new();
    headers.insert("x-slack-signature", SLACK_SIG.parse().unwrap());
    headers.insert(
        "x-slack-request-timestamp",
        SLACK_TS.to_string().parse().unwrap(),
    );
    let hook = layer.verify(&headers, SLACK_BODY.as_bytes()).unwrap();
    let debug = format!("{hook:?}");
    assert!(debug.contains("sig-<MAC>"), "{debug}");
    assert!(!debug.contains(&SLACK_SIG[3..19]), "{debug}");
}
