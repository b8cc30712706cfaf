//! The examples: the load test's servers against a client that never finishes its request head, and
//! the pr_agent_server example's settings and GitHub API requests (against a fake provider API on
//! 127.0.0.1).

use crate::harness;
use crate::load_test;

use harness::hmac_hex;
use std::time::Duration;

use harness::{FakeProvider, lookup, settled, start_server};
use http::StatusCode;
use serde_json::json;

/// `load_test serve` ran plain `axum::serve`, which has no header read timeout: a client that
/// sent half a request head held its connection for ever (and a few thousand of them every
/// file descriptor). Both servers now close such a connection after 10 s, as `hyper_server`
/// does, and still answer deliveries; and one that sends nothing at all.
#[tokio::test]
async fn the_load_test_servers_cut_off_a_client_that_never_finishes_its_request_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for mode in ["layers", "bare"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = load_test::router(mode, "s3cret").unwrap();
        tokio::spawn(load_test::serve_on(listener, router));

        // A delivery is still served.
        let body = r#"{"action":"opened","number":1}"#;
        let res = crate::client::new()
            .post(format!("http://{addr}/hook"))
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", "load-1")
            .header(
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex("s3cret", body)),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{mode}");

        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: pull")
            .await
            .unwrap();
        // One that sends nothing at all: hyper's own timeout starts only once the connection
        // has told HTTP/1 from HTTP/2, and it was held for ever.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The bound only ends a failing test: the server is due to close both after 10 s.
        for (what, conn) in [("a partial head", &mut conn), ("nothing", &mut silent)] {
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(40), conn.read_to_end(&mut rest)).await;
            assert!(
                read.is_ok(),
                "{mode}: the connection that sent {what} is still open after 40 s"
            );
        }
    }
}

/// `BITBUCKET_USERNAME` is only used with `BITBUCKET_API_URL`: set without it, it was ignored
/// without a word (comments were logged, not posted, and the username never sent). It stops the
/// server now with a message naming both variables and Bitbucket Cloud's API URL, as a username
/// without its token does.
#[test]
fn a_bitbucket_username_without_the_api_url_stops_the_server() {
    for vars in [
        vec![
            ("BITBUCKET_USERNAME", "dev@example.com"),
            ("BITBUCKET_TOKEN", "ATATT-api-token"),
        ],
        vec![("BITBUCKET_USERNAME", "dev@example.com")],
    ] {
        let mut vars = vars;
        vars.push(("BITBUCKET_WEBHOOK_SECRET", "bb-secret"));
        let err = lookup(&vars).unwrap_err();
        assert!(
            err.contains("BITBUCKET_USERNAME") && err.contains("BITBUCKET_API_URL"),
            "{err}"
        );
        assert!(err.contains("https://api.bitbucket.org/2.0"), "{err}");
        assert!(!err.contains("ATATT"), "{err}");
    }
    // Blank, it is unset.
    let settings = lookup(&[
        ("BITBUCKET_USERNAME", " \n"),
        ("BITBUCKET_WEBHOOK_SECRET", "bb-secret"),
    ]);
    assert!(settings.is_ok(), "{:?}", settings.err());
}

/// GitHub documents `Accept: application/vnd.github+json` for its REST API; the example sent
/// `application/json` to GitHub too. GitHub's requests carry GitHub's media type now; the other
/// providers' keep `application/json`.
#[tokio::test]
async fn github_api_requests_accept_githubs_media_type() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "gh-secret"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "ghp_token"),
        ("GITEA_WEBHOOK_SECRET", "gitea-secret"),
        ("GITEA_API_URL", &api),
        ("GITEA_TOKEN", "gitea-token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let body = json!({
        "action": "opened",
        "number": 7,
        "pull_request": {"number": 7, "title": "Fix"},
        "repository": {"full_name": "octo/repo"},
    })
    .to_string();
    let res = client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "r8000000-0000-4000-8000-000000000001")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex("gh-secret", &body)),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let s = settled(&client, &base, 1).await;
    assert_eq!(s["comments"]["posted"], 1, "{s}");
    let received = fake.received();
    let (path, headers, _) = &received[0];
    assert_eq!(path, "/repos/octo/repo/issues/7/comments");
    assert_eq!(headers["accept"], "application/vnd.github+json");
    assert_eq!(headers["x-github-api-version"], "2022-11-28");

    // Gitea keeps `application/json`.
    let res = client
        .post(format!("{base}/api/v1/gitea_webhooks"))
        .header("content-type", "application/json")
        .header("x-gitea-event", "pull_request")
        .header("x-gitea-delivery", "r8000000-0000-4000-8000-000000000002")
        .header("x-gitea-signature", hmac_hex("gitea-secret", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let s = settled(&client, &base, 2).await;
    assert_eq!(s["comments"]["posted"], 2, "{s}");
    let received = fake.received();
    let (path, headers, _) = &received[1];
    assert!(path.starts_with("/repos/octo/repo/"), "{path}");
    assert_eq!(headers["accept"], "application/json");
}

/// `load_test generate URL 0 N` (or `SECS` 0) sent nothing and reported `"ok": true`, and a
/// count that was not a number failed with a bare `ParseIntError`. Both are refused now, naming
/// the argument.
#[test]
fn the_load_test_generator_refuses_a_run_that_would_send_nothing() {
    assert_eq!(load_test::run_size("30", "8"), Ok((30, 8)));
    for (secs, conns, named) in [
        ("0", "8", "SECS"),
        ("30", "0", "CONNS"),
        ("thirty", "8", "SECS"),
        ("30", "-1", "CONNS"),
        ("", "8", "SECS"),
    ] {
        let err = load_test::run_size(secs, conns).unwrap_err();
        assert!(err.starts_with(named), "{secs} {conns}: {err}");
    }
}

/// `load_test generate` waited for each answer without a bound: a server that stopped answering
/// (the deadlock a load test is there to find) hung the run for ever, past its length, with no
/// report. Each answer is waited for 10 s now; the run ends, and fails, reporting it.
#[tokio::test]
async fn the_load_test_generator_ends_when_the_server_stops_answering() {
    // Takes connections and requests, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    // The bound only ends a failing test: the run is due to end about 11 s from now.
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        load_test::generate(&format!("http://{addr}/hook"), 1, 2, None),
    )
    .await;
    let result = run.expect("the generator is still waiting after 60 s");
    let err = result.expect_err("a run with no answer passed").to_string();
    assert!(err.contains("no answer within 10 s"), "{err}");
}

/// A generator pointed at the wrong port, or at a URL it cannot use, says why: every failed
/// connection was counted as an "other" answer, and the run failed with "invariants violated"
/// alone; a URL that was not one panicked in every task.
#[tokio::test]
async fn the_load_test_generator_names_why_its_requests_failed() {
    // A port nothing listens on.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], crate::unopened::closed_port()));
    let err = load_test::generate(&format!("http://{closed}/hook"), 1, 1, None)
        .await
        .expect_err("no server")
        .to_string();
    assert!(
        err.contains("the first request that got no answer"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connect"), "{err}");
    for url in ["not a url", "https://127.0.0.1:1/hook"] {
        let err = load_test::generate(url, 1, 1, None)
            .await
            .expect_err(url)
            .to_string();
        assert!(err.contains(url), "{err}");
    }
}

/// An answer other than 202, 200 or 401 fails the run, as the generator's docs say: a server
/// that answered 500 to every forged or duplicate delivery passed, as only valid deliveries
/// not accepted and invalid ones accepted were counted against it.
#[tokio::test]
async fn the_load_test_generator_fails_a_run_with_other_answers() {
    use axum::response::IntoResponse;
    // The `layers` server, with its refusals turned into 500s.
    let router = load_test::router("layers", "load-test-secret")
        .unwrap()
        .layer(axum::middleware::map_response(
            |res: axum::response::Response| async move {
                match res.status() {
                    StatusCode::UNAUTHORIZED => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    _ => res,
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        load_test::generate(&format!("http://{addr}/hook"), 1, 2, None),
    )
    .await
    .expect("the run ends")
    .expect_err("500s passed")
    .to_string();
    assert!(err.contains("answers other than 202, 200 or 401"), "{err}");
}
