//! The examples: comments of the pr_agent_server example's router on 127.0.0.1 that a fake provider
//! API on 127.0.0.1 answers with an error or drops, posted once and tried again; and the other
//! examples' servers, driven by a real HTTP client.

use crate::app;
use crate::harness;
use crate::hyper_server;
use crate::load_test;

use harness::hmac_hex;
use std::time::Duration;

use base64::Engine;
use harness::{FakeProvider, lookup, serve, settled, start_server, status};
use http::StatusCode;
use serde_json::json;

const GH: &str = "gh-secret";
const BB: &str = "bb-secret";

/// A GitHub `pull_request` `opened` delivery of pull request `pr`, signed with `GH`.
async fn github_opened(client: &reqwest::Client, base: &str, id: &str, pr: u64) -> StatusCode {
    let body = json!({
        "action": "opened",
        "number": pr,
        "pull_request": {"number": pr, "title": "Fix"},
        "repository": {"full_name": "octo/repo"},
    })
    .to_string();
    client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", id)
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(GH, &body)),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A Bitbucket Cloud `pullrequest:created` delivery of pull request `pr`, signed with `BB`.
async fn bitbucket_created(client: &reqwest::Client, base: &str, id: &str, pr: u64) -> StatusCode {
    let body = json!({
        "pullrequest": {"id": pr, "title": "Fix", "draft": false, "state": "OPEN"},
        "repository": {"full_name": "team/repo"},
    })
    .to_string();
    client
        .post(format!("{base}/api/v1/bitbucket_webhooks"))
        .header("content-type", "application/json")
        .header("x-event-key", "pullrequest:created")
        .header("x-request-uuid", id)
        .header("x-hub-signature", format!("sha256={}", hmac_hex(BB, &body)))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

// ---------------------------------------------------------------------------------------------

/// `hyper_server` took `GITHUB_WEBHOOK_SECRET` as it was, where the other examples trim it: a
/// secret read from a file (`GITHUB_WEBHOOK_SECRET=$(cat secret)` keeps no line break, but
/// `env_file`s and secrets mounted by an orchestrator often do) ended with a line break GitHub's
/// copy has not, and every delivery was refused. It is trimmed now, and one blank or not UTF-8
/// is an error rather than a secret no delivery matches.
#[test]
fn the_hyper_server_trims_its_secret() {
    assert_eq!(
        hyper_server::webhook_secret(Ok("s3cret\n".into())).unwrap(),
        ("s3cret".to_owned(), false)
    );
    assert_eq!(
        hyper_server::webhook_secret(Ok("  s3cret\r\n".into())).unwrap(),
        ("s3cret".to_owned(), false)
    );
    assert!(hyper_server::webhook_secret(Ok("\n".into())).is_err());
    // Unset: a random secret for the run, never a fixed one anyone can read here.
    let unset = || hyper_server::webhook_secret(Err(std::env::VarError::NotPresent)).unwrap();
    let (first, made_up) = unset();
    assert!(made_up);
    assert!(first.len() >= 64, "{first}");
    assert_ne!(first, unset().0);
    // The load test's servers and generator read the same variable, the same way.
    assert_eq!(
        load_test::secret_from(Ok("s3cret\n".into())).unwrap(),
        "s3cret"
    );
    assert_eq!(
        load_test::secret_from(Err(std::env::VarError::NotPresent)).unwrap(),
        "load-test-secret"
    );
    // Set but blank, or not UTF-8: an error, not the public default.
    assert!(load_test::secret_from(Ok(" \n".into())).is_err());
    let not_utf8 = std::ffi::OsString::from("x");
    assert!(load_test::secret_from(Err(std::env::VarError::NotUnicode(not_utf8))).is_err());
}

/// `load_test serve layers` put `SignatureLayer` over the whole route with
/// `Router::route_layer`: a `GET /hook` was answered `401` as a delivery badly signed, where the
/// docs (and the `bare` server) answer `405 Method Not Allowed` with `Allow: POST`. The layer is
/// on the `POST` handler now; a `POST` is still verified.
#[tokio::test]
async fn the_load_test_layers_server_answers_another_method_405() {
    let router = load_test::router("layers", "s3cret").unwrap();
    let base = format!("http://{}", serve(router).await);
    let client = crate::client::new();
    let res = client.get(format!("{base}/hook")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    // A POST without a signature is still refused, one signed with the secret accepted.
    let res = client
        .post(format!("{base}/hook"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "delivery-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let key = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(b"s3cret").unwrap();
    let res = client
        .post(format!("{base}/hook"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "delivery-2")
        .header("x-hub-signature-256", load_test::sign(&key, b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

/// Bitbucket Cloud API tokens (and the app passwords they replace) are used with HTTP Basic
/// authentication: the Atlassian account's email (the username for an app password) and the
/// token. The server sent every `BITBUCKET_TOKEN` as `Bearer`, which only an access token is,
/// so an API token's comments were all refused `401`. With `BITBUCKET_USERNAME` the token is
/// sent as Basic credentials now; without it, still as a `Bearer` access token.
#[tokio::test]
async fn a_bitbucket_cloud_api_token_is_sent_with_basic_auth_and_the_account_email() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let client = crate::client::new();
    let settings = lookup(&[
        ("BITBUCKET_WEBHOOK_SECRET", BB),
        ("BITBUCKET_API_URL", &api),
        ("BITBUCKET_TOKEN", "ATATT-api-token\n"),
        ("BITBUCKET_USERNAME", " dev@example.com\n"),
    ])
    .unwrap();
    // Neither shown in the settings' `Debug`: the token and the user name are redacted.
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("ATATT") && !debug.contains("dev@example.com"),
        "{debug}"
    );
    let base = start_server(&settings).await;
    assert_eq!(
        bitbucket_created(&client, &base, "{r6000000-0000-4000-8000-000000000001}", 1).await,
        StatusCode::ACCEPTED
    );
    let s = settled(&client, &base, 1).await;
    assert_eq!(s["comments"]["posted"], 1, "{s}");
    let received = fake.received();
    assert_eq!(received.len(), 1);
    let (path, headers, _) = &received[0];
    assert_eq!(path, "/repositories/team/repo/pullrequests/1/comments");
    let expected =
        base64::engine::general_purpose::STANDARD.encode("dev@example.com:ATATT-api-token");
    assert_eq!(headers["authorization"], format!("Basic {expected}"));

    // Without a username, the token is an access token.
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("BITBUCKET_WEBHOOK_SECRET", BB),
        ("BITBUCKET_API_URL", &api),
        ("BITBUCKET_TOKEN", "access-token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    assert_eq!(
        bitbucket_created(&client, &base, "{r6000000-0000-4000-8000-000000000002}", 1).await,
        StatusCode::ACCEPTED
    );
    settled(&client, &base, 1).await;
    assert_eq!(fake.received()[0].1["authorization"], "Bearer access-token");

    // A username without its token, or one no header could carry, stops the server.
    for (vars, named) in [
        (
            vec![("BITBUCKET_USERNAME", "dev@example.com")],
            "BITBUCKET_TOKEN",
        ),
        (
            vec![("BITBUCKET_USERNAME", "dev:x"), ("BITBUCKET_TOKEN", "t")],
            "BITBUCKET_USERNAME",
        ),
    ] {
        let mut vars = vars;
        vars.push(("BITBUCKET_WEBHOOK_SECRET", BB));
        vars.push(("BITBUCKET_API_URL", &api));
        let err = lookup(&vars).unwrap_err();
        assert!(err.contains(named), "{err}");
    }
}

/// A comment `POST` answered `502` (or `500`, `504`) may have been acted on: GitHub, behind its
/// gateway, often creates the comment and then answers `502`. The worker posted it again after
/// its backoff, and the pull request got the same comment twice. It is not sent again now: it is
/// given up, logged with its delivery id, and counted as failed.
#[tokio::test]
async fn a_comment_answered_502_after_it_was_stored_is_not_posted_twice() {
    for answer in [
        StatusCode::BAD_GATEWAY,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::GATEWAY_TIMEOUT,
    ] {
        let (api, fake) = FakeProvider::start(&[answer]).await;
        let client = crate::client::new();
        let settings = lookup(&[
            ("GITHUB_WEBHOOK_SECRET", GH),
            ("GITHUB_API_URL", &api),
            ("GITHUB_TOKEN", "ghp_token"),
        ])
        .unwrap();
        let base = start_server(&settings).await;
        assert_eq!(
            github_opened(&client, &base, "r6000000-0000-4000-8000-000000000010", 3).await,
            StatusCode::ACCEPTED
        );
        let s = settled(&client, &base, 1).await;
        // Long enough for a second attempt after the first backoff (0.4 s), had there been one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fake.received().len(), 1, "{answer}: posted twice");
        assert_eq!(s["comments"]["failed"], 1, "{answer}: {s}");
        assert_eq!(s["comments"]["posted"], 0, "{answer}: {s}");
    }
}

/// A provider that says it did not take the comment (`503`, `429`) still gets it again later:
/// no comment is lost where sending it again is safe.
#[tokio::test]
async fn a_comment_refused_503_or_429_is_still_posted_later() {
    for answer in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let (api, fake) = FakeProvider::start(&[answer]).await;
        let client = crate::client::new();
        let settings = lookup(&[
            ("GITLAB_WEBHOOK_TOKEN", "gl-token"),
            ("GITLAB_API_URL", &api),
            ("GITLAB_TOKEN", "glpat"),
        ])
        .unwrap();
        let base = start_server(&settings).await;
        let res = client
            .post(format!("{base}/api/v1/gitlab_webhooks"))
            .header("x-gitlab-token", "gl-token")
            .header("x-gitlab-event", "Merge Request Hook")
            .header("x-gitlab-event-uuid", "r6000000-0000-4000-8000-000000000020")
            .json(&json!({
                "object_kind": "merge_request",
                "project": {"id": 42},
                "object_attributes": {"iid": 7, "action": "open", "title": "Fix", "state": "opened"},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let s = settled(&client, &base, 1).await;
        assert_eq!(s["comments"]["posted"], 1, "{answer}: {s}");
        assert_eq!(s["comments"]["failed"], 0, "{answer}: {s}");
        assert!(fake.received().len() >= 2, "{answer}");
    }
}

/// A connection lost once the comment's request was sent (the provider read it, then the
/// connection dropped) may come after the comment was created: it is not sent again either.
#[tokio::test]
async fn a_comment_whose_connection_is_lost_after_sending_is_not_posted_twice() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // Reads the whole request, then closes the connection without an answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    let client = crate::client::new();
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    assert_eq!(
        github_opened(&client, &base, "r6000000-0000-4000-8000-000000000030", 4).await,
        StatusCode::ACCEPTED
    );
    let s = settled(&client, &base, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(s["comments"]["failed"], 1, "{s}");
}

/// An API no connection can be made to (nothing listens) took nothing: the comment waits and is
/// tried again, not given up.
#[tokio::test]
async fn a_comment_to_an_api_that_refuses_connections_is_tried_again() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let client = crate::client::new();
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    assert_eq!(
        github_opened(&client, &base, "r6000000-0000-4000-8000-000000000040", 5).await,
        StatusCode::ACCEPTED
    );
    let start = std::time::Instant::now();
    loop {
        let s = status(&client, &base).await;
        if s["comments"]["retries"].as_u64() >= Some(1) {
            assert_eq!(s["comments"]["failed"], 0, "{s}");
            assert_eq!(s["comments"]["pending"], 1, "{s}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no retry: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `hyper_server` bounded a request once its head was read (the 10 s timeout layer), but not the
/// head itself: hyper's `header_read_timeout` is enforced only with a timer, which the example
/// did not set, so a client that sent half a request head held its connection open for ever.
/// The head must now come within 10 s, or the connection is closed.
#[tokio::test]
async fn the_hyper_server_cuts_off_a_client_that_never_finishes_its_request_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = spawn_hyper_server("s3cret").await;
    // A delivery is still served.
    assert_eq!(
        hyper_delivery(addr, "hyper-1", "s3cret").await,
        StatusCode::ACCEPTED
    );

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: pull")
        .await
        .unwrap();
    // The bound only ends a failing test: the server is due to close the connection after 10 s.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(40), conn.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is still open after 40 s");
}

/// `GITHUB_WEBHOOK_SECRET` is a comma-separated list while a hook's secret is rotated, as the
/// guide sets it: the hyper server took the whole list as one secret, and refused every
/// delivery (401). It takes deliveries signed with either secret now, and no other.
#[tokio::test]
async fn the_hyper_server_takes_a_list_of_secrets_while_one_is_rotated() {
    let addr = spawn_hyper_server("new-secret, old-secret").await;
    for (delivery, secret, status) in [
        ("rotate-1", "new-secret", StatusCode::ACCEPTED),
        ("rotate-2", "old-secret", StatusCode::ACCEPTED),
        (
            "rotate-3",
            "new-secret, old-secret",
            StatusCode::UNAUTHORIZED,
        ),
        ("rotate-4", "other-secret", StatusCode::UNAUTHORIZED),
    ] {
        let answered = hyper_delivery(addr, delivery, secret).await;
        assert_eq!(answered, status, "signed with {secret:?}");
    }
}

/// The hyper_server example's stack on a free loopback port, with `secret`, until the test ends.
async fn spawn_hyper_server(secret: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_server::serve(
        listener,
        secret,
        std::future::pending::<()>(),
        hyper_server::HEAD_TIMEOUT,
    ));
    addr
}

/// The status of a GitHub `pull_request` delivery `delivery`, signed with `secret`, to `addr`.
async fn hyper_delivery(addr: std::net::SocketAddr, delivery: &str, secret: &str) -> StatusCode {
    let body = r#"{"action":"opened","number":1}"#;
    crate::client::new()
        .post(format!("http://{addr}/"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(secret, body)),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// `pr_agent_server` looked for `--use-tunnel` among its arguments and ignored every other: a
/// misspelt `--use_tunnel` or `--tunnel` started a server on 127.0.0.1 only, which no provider
/// can reach, and said nothing. Another argument is an error naming it now.
#[test]
fn the_pr_agent_server_refuses_an_argument_it_does_not_know() {
    let args = |list: &[&str]| -> Vec<std::ffi::OsString> { list.iter().map(Into::into).collect() };
    assert_eq!(app::use_tunnel(args(&[])), Ok(false));
    assert_eq!(app::use_tunnel(args(&["--use-tunnel"])), Ok(true));
    for wrong in ["--use_tunnel", "--tunnel", "use-tunnel"] {
        let err = app::use_tunnel(args(&["--use-tunnel", wrong])).unwrap_err();
        assert!(err.contains(wrong) && err.contains("--use-tunnel"), "{err}");
    }
}
