//! The retry policy: an HTTP/2 stream the server refused (`RST_STREAM(REFUSED_STREAM)`, RFC 9113
//! section 8.7: not processed) is retried like a refused connection, even for a `POST`; a stream
//! reset for another reason is not.
//!
//! The server is a real HTTP/2 server on 127.0.0.1 (the `h2` crate, which resets each stream
//! with the reason a test picks) and the clients are real ones speaking HTTP/2 (prior
//! knowledge): reqwest (0.13 and 0.12, whose HTTP/2 the tests enable) and hyper-util's.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http_body_util::Full;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

use crate::retry_connect_timeouts::ping;

/// What the server does with one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `RST_STREAM(REFUSED_STREAM)` at once, before reading anything of the request.
    Refuse,
    /// Reads the whole request (it acted on it), then `RST_STREAM(reason)`.
    ResetAfterRead(Reason),
    /// Reads the whole request and answers `201 Created`.
    Created,
}

/// What the server saw of one stream: its method, its body (when it read it) and its answer.
type Seen = (String, Option<Bytes>, Answer);

/// An HTTP/2 (prior knowledge) server on 127.0.0.1 that answers its streams, in the order
/// they come, as `plan` says, and `Created` after the plan. Returns its URL and what it saw.
async fn h2_server(plan: Vec<Answer>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let plan = plan.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let log = log.clone();
                    let plan = plan.clone();
                    tokio::spawn(async move {
                        let method = req.method().to_string();
                        let answer = {
                            let log = log.lock().unwrap();
                            plan.get(log.len()).copied().unwrap_or(Answer::Created)
                        };
                        if answer == Answer::Refuse {
                            log.lock().unwrap().push((method, None, answer));
                            respond.send_reset(Reason::REFUSED_STREAM);
                            return;
                        }
                        // Reserve the slot before reading, so the plan follows arrival order.
                        let slot = {
                            let mut log = log.lock().unwrap();
                            log.push((method, None, answer));
                            log.len() - 1
                        };
                        let mut body = req.into_body();
                        let mut read = Vec::new();
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            read.extend_from_slice(&chunk);
                        }
                        log.lock().unwrap()[slot].1 = Some(Bytes::from(read));
                        match answer {
                            Answer::ResetAfterRead(reason) => respond.send_reset(reason),
                            _ => {
                                let res = http::Response::builder().status(201).body(()).unwrap();
                                let _ = respond.send_response(res, true);
                            }
                        }
                    });
                }
            });
        }
    });
    (
        format!("http://{addr}/repos/octo/repo/issues/1/comments"),
        seen,
    )
}

/// A policy that retries up to `max` times with short waits.
fn policy(max: u32) -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(max)
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
}

const COMMENT: &str = r#"{"body":"LGTM"}"#;

/// A reqwest client speaking HTTP/2 to the server; `own_retries: false` turns off reqwest's own
/// retries of refused streams, so each refusal reaches the policy.
fn client(own_retries: bool) -> reqwest_0_12::Client {
    let builder = reqwest_0_12::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10));
    let builder = if own_retries {
        builder
    } else {
        builder.retry(reqwest_0_12::retry::never())
    };
    builder.build().unwrap()
}

/// Posts the comment through the policy with `client`; the result is its status or the error's
/// chain of messages.
async fn post(client: reqwest_0_12::Client, policy: RetryPolicy, url: &str) -> Result<u16, String> {
    let svc = ServiceBuilder::new()
        .layer(policy.into_layer())
        .service(client);
    let mut req = reqwest_0_12::Request::new(reqwest_0_12::Method::POST, url.parse().unwrap());
    *req.body_mut() = Some(reqwest_0_12::Body::from(COMMENT));
    let res = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("the call ends");
    res.map(|res| res.status().as_u16())
        .map_err(|err| chain(&err))
}

/// An error's message and those of its sources, joined.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    chain.join(": ")
}

/// The same post with reqwest 0.13 (the `reqwest` integration), its own retries turned off.
async fn post_with_reqwest_0_13(policy: RetryPolicy, url: &str) -> Result<u16, String> {
    let client = crate::client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .retry(reqwest::retry::never())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(policy.into_layer())
        .service(client);
    let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
    *req.body_mut() = Some(reqwest::Body::from(COMMENT));
    let res = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("the call ends");
    res.map(|res| res.status().as_u16())
        .map_err(|err| chain(&err))
}

#[tokio::test]
async fn a_post_whose_stream_was_refused_is_retried_and_posted_once() {
    let (url, seen) = h2_server(vec![Answer::Refuse]).await;
    let status = post(client(false), policy(3), &url).await;
    assert_eq!(status, Ok(201), "{:?}", seen.lock().unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [
            ("POST".to_owned(), None, Answer::Refuse),
            (
                "POST".to_owned(),
                Some(Bytes::from(COMMENT)),
                Answer::Created
            ),
        ]
    );
}

#[tokio::test]
async fn refused_streams_are_retried_up_to_max_retries_then_the_error_is_returned() {
    let (url, seen) = h2_server(vec![Answer::Refuse; 10]).await;
    let err = post(client(false), policy(2), &url).await.unwrap_err();
    assert!(err.contains("refused stream"), "{err}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "the first call and 2 retries: {seen:?}");
    assert!(
        seen.iter()
            .all(|(_, body, answer)| body.is_none() && *answer == Answer::Refuse)
    );
}

#[tokio::test]
async fn refused_streams_past_reqwests_own_retries_are_retried_by_the_policy() {
    // reqwest retries a refused stream by itself a few times, at once; when the server keeps
    // refusing, the policy retries after its backoff.
    let (url, seen) = h2_server(vec![Answer::Refuse; 5]).await;
    let status = post(client(true), policy(5), &url).await;
    assert_eq!(status, Ok(201), "{:?}", seen.lock().unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(
        seen.iter().filter(|(_, body, _)| body.is_some()).count(),
        1,
        "posted once: {seen:?}"
    );
}

#[tokio::test]
async fn a_post_reset_after_the_server_read_it_is_not_retried() {
    for reason in [Reason::INTERNAL_ERROR, Reason::CANCEL, Reason::NO_ERROR] {
        let (url, seen) = h2_server(vec![Answer::ResetAfterRead(reason)]).await;
        let err = post(client(false), policy(3), &url).await.unwrap_err();
        assert!(!err.contains("refused stream"), "{err}");
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            [(
                "POST".to_owned(),
                Some(Bytes::from(COMMENT)),
                Answer::ResetAfterRead(reason)
            )],
            "{reason:?} is sent once"
        );
    }
}

#[tokio::test]
async fn a_get_reset_after_the_server_read_it_is_still_retried() {
    // The control: an idempotent request is retried whatever the reset.
    let (url, seen) = h2_server(vec![Answer::ResetAfterRead(Reason::INTERNAL_ERROR)]).await;
    let svc = ServiceBuilder::new()
        .layer(policy(3).into_layer())
        .service(client(false));
    let req = reqwest_0_12::Request::new(reqwest_0_12::Method::GET, url.parse().unwrap());
    let res = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("the call ends")
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_stream_is_retried_with_reqwest_0_13_too() {
    let (url, seen) = h2_server(vec![Answer::Refuse; 2]).await;
    let status = post_with_reqwest_0_13(policy(3), &url).await;
    assert_eq!(status, Ok(201), "{:?}", seen.lock().unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen.iter().filter(|(_, body, _)| body.is_some()).count(),
        1,
        "posted once: {seen:?}"
    );
    assert_eq!(seen[2].1.as_deref(), Some(COMMENT.as_bytes()));
}

#[tokio::test]
async fn a_post_reset_after_the_server_read_it_is_not_retried_with_reqwest_0_13() {
    let (url, seen) = h2_server(vec![Answer::ResetAfterRead(Reason::INTERNAL_ERROR)]).await;
    let err = post_with_reqwest_0_13(policy(3), &url).await.unwrap_err();
    assert!(!err.contains("refused stream"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1, "{err}");
}

/// Posts the comment to `url` through the policy over hyper-util's HTTP/2 client: hyper's
/// HTTP/2 error in a `BoxError`, as a service over that client returns it.
async fn post_with_hyper_util(
    url: &str,
) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(policy(3).into_layer())
        .map_err(BoxError::from)
        .service(client);
    let req = http::Request::post(url)
        .body(Full::new(Bytes::from(COMMENT)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("the call ends")
}

#[tokio::test]
async fn a_refused_stream_is_retried_with_hyper_utils_client_too() {
    let (url, seen) = h2_server(vec![Answer::Refuse; 2]).await;
    let res = post_with_hyper_util(&url).await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2].1.as_deref(), Some(COMMENT.as_bytes()));
}

#[tokio::test]
async fn a_post_reset_after_the_server_read_it_is_not_retried_with_hyper_utils_client() {
    let (url, seen) = h2_server(vec![Answer::ResetAfterRead(Reason::INTERNAL_ERROR)]).await;
    let res = post_with_hyper_util(&url).await;
    assert!(res.is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_grpc_call_whose_stream_was_refused_through_tonic() {
    // A tonic client's call, as a service of `http::Request<()>` (the message) returning
    // `tonic::Status`: a refused stream is sent again; the server refuses every stream here, so
    // it sees the call and 2 retries.
    let (url, seen) = h2_server(vec![Answer::Refuse; 10]).await;
    let base = url.split("/repos").next().unwrap().to_owned();
    let channel = tonic::transport::Endpoint::from_shared(base)
        .unwrap()
        .connect_lazy();
    let calls = AtomicUsize::new(0);
    let svc = ServiceBuilder::new()
        .layer(policy(2).into_layer())
        .service_fn(|_: http::Request<()>| ping(channel.clone(), &calls));
    let req = http::Request::post("/test.Pinger/Ping").body(()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("the call ends");
    let status = res.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(seen.lock().unwrap().len(), 3, "{status:?}");
}
