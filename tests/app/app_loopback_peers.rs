//! The pr_agent_server example's router on 127.0.0.1 against peers on 127.0.0.1 (a provider API
//! over TLS, an Azure DevOps Server 2019 API), driven by a real HTTP client: comments, refused
//! settings, other methods, a second stop signal.

use crate::app;
use crate::harness;

use std::time::Duration;

use axum::Router;
use harness::{lookup, serve, start_server, status};
use hmac::{KeyInit, Mac};
use http::StatusCode;
use serde_json::json;
use tokio::io::AsyncReadExt;

/// How long a test waits for something due at once: the bound only ends a failing test.
const PATIENCE: Duration = Duration::from_secs(10);

const GH: &str = "gh-secret";

/// A GitHub `pull_request` `opened` delivery of pull request `pr`, signed with `GH` (with a
/// signature that is wrong when `forged`).
fn github_pull_request(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    pr: u64,
    forged: bool,
) -> reqwest::RequestBuilder {
    let body = json!({
        "action": "opened",
        "number": pr,
        "pull_request": {"number": pr, "title": "Fix"},
        "repository": {"full_name": "octo/repo"},
    })
    .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GH.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let mut signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    if forged {
        signature = format!("sha256={}", "0".repeat(64));
    }
    client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", signature)
        .body(body)
}

// ---------------------------------------------------------------------------------------------

/// Provider APIs are `https` (`https://api.github.com`, a self-hosted GitLab): the comment is
/// sent over TLS. The example's HTTP client was built without TLS, so it refused every `https`
/// URL before connecting, and no comment ever reached a real provider.
#[tokio::test]
async fn comments_go_to_an_https_api_over_tls() {
    // Stands in for the API: reads the first bytes of the first connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 3];
        stream.read_exact(&mut head).await.unwrap();
        head
    });
    let url = format!("https://{api}");
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITHUB_API_URL", &url),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let res = github_pull_request(
        &client,
        &base,
        "a4000000-0000-4000-8000-000000000001",
        1,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let head = tokio::time::timeout(PATIENCE, first_bytes)
        .await
        .expect("the comment reaches the https API")
        .unwrap();
    // A TLS record of a handshake (the ClientHello), not a request in clear text.
    assert_eq!(head[0], 0x16, "{head:?}");
    assert_eq!(head[1], 0x03, "{head:?}");
}

/// A private key for a GitHub App, made by `openssl` (PKCS#1 or PKCS#8, both are taken);
/// `None` where `openssl` is missing, unless `TOWER_WEBHOOK_REQUIRE_INTEROP=1` (CI, whose
/// `.ci/signature.sh` installs it), where that fails the test.
fn app_key() -> Option<String> {
    let key = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8(out.stdout).unwrap());
    assert!(
        key.is_some() || !std::env::var("TOWER_WEBHOOK_REQUIRE_INTEROP").is_ok_and(|v| v == "1"),
        "TOWER_WEBHOOK_REQUIRE_INTEROP=1: openssl is missing (.ci/signature.sh installs it)"
    );
    key
}

/// `GITHUB_HOOK_*` and `GITHUB_APP_*` name a GitHub hook whose deliveries are signed with the
/// secret set on GitHub. Without `GITHUB_WEBHOOK_SECRET` the server served no GitHub route (or
/// one with a made-up development secret) and still pointed the hook at it: every delivery was
/// refused. It now stops with a message naming the variable.
#[test]
fn a_github_hook_or_app_without_the_webhook_secret_is_refused() {
    let api = [
        ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ("GITHUB_TOKEN", "t"),
    ];
    let hook = [
        ("GITHUB_HOOK_REPOSITORY", "octo/repo"),
        ("GITHUB_HOOK_ID", "42"),
    ];
    // Development mode (no secret at all), and another provider's secret only.
    for others in [&[][..], &[("GITLAB_WEBHOOK_TOKEN", "gl")][..]] {
        let vars = [&api[..], &hook[..], others].concat();
        let err = lookup(&vars).unwrap_err();
        assert!(err.contains("GITHUB_WEBHOOK_SECRET"), "{vars:?}: {err}");
        assert!(err.contains("GITHUB_HOOK_REPOSITORY"), "{vars:?}: {err}");
    }
    let ok = lookup(&[&api[..], &hook[..], &[("GITHUB_WEBHOOK_SECRET", GH)]].concat()).unwrap();
    assert!(ok.github_hook.is_some());

    let Some(key) = app_key() else {
        eprintln!("openssl is missing: the GitHub App half is skipped");
        return;
    };
    let app = [
        ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ("GITHUB_APP_ID", "4242"),
        ("GITHUB_APP_PRIVATE_KEY", key.as_str()),
    ];
    for others in [&[][..], &[("GITLAB_WEBHOOK_TOKEN", "gl")][..]] {
        let vars = [&app[..], others].concat();
        let err = lookup(&vars).unwrap_err();
        assert!(err.contains("GITHUB_WEBHOOK_SECRET"), "{err}");
        assert!(err.contains("GITHUB_APP_ID"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    let ok = lookup(&[&app[..], &[("GITHUB_WEBHOOK_SECRET", GH)]].concat()).unwrap();
    assert!(ok.github_app.is_some());
    assert_eq!(ok.warnings(), Vec::<String>::new());

    // A repository hook beside the App is verified with the App's secret: warned about.
    let secret = [("GITHUB_WEBHOOK_SECRET", GH), ("GITHUB_TOKEN", "t")];
    let both = lookup(&[&app[..], &hook[..], &secret[..]].concat()).unwrap();
    let warnings = both.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("GITHUB_HOOK_REPOSITORY is set with GITHUB_APP_ID"),
        "{warnings:?}"
    );
}

/// A webhook route takes `POST`s only: another method is answered `405` with `Allow: POST`, as
/// HTTP asks, not `401` as if it were a delivery badly signed, and is not counted as a rejected
/// delivery. A delivery badly signed is still `401`, and counted.
#[tokio::test]
async fn a_webhook_route_answers_other_methods_405_with_allow() {
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITLAB_WEBHOOK_TOKEN", "gl"),
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "pass"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    for route in ["github", "gitlab", "azuredevops"] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let res = client
                .request(method.clone(), format!("{base}/api/v1/{route}_webhooks"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {route}"
            );
            let allow = res
                .headers()
                .get(http::header::ALLOW)
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(allow.as_deref(), Some("POST"), "{method} {route}");
        }
    }
    assert_eq!(status(&client, &base).await["deliveries"]["rejected"], 0);

    // A delivery badly signed, and one signed right.
    let res = github_pull_request(
        &client,
        &base,
        "a4000000-0000-4000-8000-000000000002",
        2,
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = github_pull_request(
        &client,
        &base,
        "a4000000-0000-4000-8000-000000000003",
        3,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let deliveries = &status(&client, &base).await["deliveries"];
    assert_eq!(deliveries["rejected"], 1, "{deliveries}");
    assert_eq!(deliveries["accepted"], 1, "{deliveries}");
}

/// "A second Ctrl-C or `SIGTERM` ends the wait [for pending comments] at once": also a second
/// signal that comes while the first one's open requests are still being answered. It was
/// listened for only once they were, so it was lost, and the server waited the whole
/// `SHUTDOWN_GRACE_SECS` (up to an hour) for comments to an API that was down.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_while_requests_are_answered_ends_the_wait_for_comments() {
    use tokio::io::AsyncWriteExt;
    // An API where nothing listens: the comment keeps failing and stays pending.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}");
    let settings = lookup(&[
        ("PORT", "0"),
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITHUB_API_URL", &url),
        ("GITHUB_TOKEN", "t"),
        ("SHUTDOWN_GRACE_SECS", "600"),
        ("REQUEST_TIMEOUT_SECS", "120"),
    ])
    .unwrap();
    let app = app::build(&settings).unwrap();
    let state = app.state.clone();
    let signals = app::StopSignals::listen().unwrap();
    let running = app::start(&settings, app, None, signals.nth(1))
        .await
        .unwrap();
    let addr = running.local_addr();
    let base = format!("http://{addr}");
    let client = crate::client::new();
    let res = github_pull_request(
        &client,
        &base,
        "a4000000-0000-4000-8000-000000000004",
        4,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(
        state
            .counters
            .pending
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A delivery still being sent: its headers and half of its body.
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GH.as_bytes()).unwrap();
    mac.update(body);
    let head = format!(
        "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-github-event: ping\r\nx-github-delivery: a4000000-0000-4000-8000-000000000005\r\nx-hub-signature-256: sha256={}\r\n\r\n",
        body.len(),
        hex::encode(mac.finalize().into_bytes())
    );
    let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
    open.write_all(head.as_bytes()).await.unwrap();
    open.write_all(&body[..10]).await.unwrap();

    // The first signal: the server stops taking connections, and waits for the open request.
    crate::support::sigterm();
    tokio::time::timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server stops listening on SIGTERM");
    // The second one, while the request is still open.
    crate::support::sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    // The second signal ends the wait for the pending comment, long before the grace is over.
    let left = tokio::time::timeout(
        PATIENCE,
        app::finish(running, &state, settings.shutdown_grace, &signals),
    )
    .await
    .expect("a second stop signal ends the wait for pending comments");
    assert_eq!(left, 1);
}

/// `GITHUB_APP_ID` and `GITHUB_APP_PRIVATE_KEY_PATH` are read without surrounding spaces or line
/// breaks, as the secrets, tokens and numbers are: a value written to a file or a secret store
/// with its line break stopped the server ("not a GitHub App id", "cannot be read").
#[test]
fn the_github_app_id_and_key_path_are_trimmed_like_the_other_settings() {
    let Some(key) = app_key() else {
        eprintln!("openssl is missing: skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("app-loopback-peers-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.pem");
    std::fs::write(&path, &key).unwrap();
    let padded = format!(" {}\n", path.to_str().unwrap());
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ("GITHUB_APP_ID", " 4242\n"),
        ("GITHUB_APP_PRIVATE_KEY_PATH", &padded),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let app = settings.unwrap().github_app.expect("the app is set");
    assert_eq!(app.id(), "4242");
}

/// Azure DevOps Server 2019 takes REST API versions up to 5.0 and 2020 up to 6.0 (Microsoft's
/// versioning table); a newer one is answered `400` ("The requested REST API version of 7.0 is
/// out of range for this server"). The comment asked for 7.0, so no comment was ever posted to
/// an Azure DevOps Server before 2022.
#[tokio::test]
async fn an_azure_devops_server_2019_takes_the_comment() {
    use std::sync::{Arc, Mutex};
    let posted: Arc<Mutex<Vec<String>>> = Arc::default();
    let api = serve(Router::new().fallback({
        let posted = posted.clone();
        move |uri: http::Uri| {
            let posted = posted.clone();
            async move {
                let version = uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("api-version=")))
                    .unwrap_or("")
                    .to_owned();
                let major: u32 = version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(u32::MAX);
                if major > 5 {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("The requested REST API version of {version} is out of range for this server. The latest REST API version this server supports is 5.0."),
                    );
                }
                posted.lock().unwrap().push(uri.to_string());
                (StatusCode::OK, "{}".to_owned())
            }
        }
    }))
    .await;
    let url = format!("http://{api}/tfs/DefaultCollection");
    let settings = lookup(&[
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "pass"),
        ("AZURE_DEVOPS_API_URL", &url),
        ("AZURE_DEVOPS_TOKEN", "pat"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let body = json!({
        "id": "a4000000-0000-4000-8000-000000000006",
        "eventType": "git.pullrequest.created",
        "resource": {
            "pullRequestId": 6,
            "title": "Fix",
            "status": "active",
            "repository": {"id": "repo-guid", "project": {"id": "proj-guid"}},
        },
    });
    let res = client
        .post(format!("{base}/api/v1/azuredevops_webhooks"))
        .basic_auth("azure", Some("pass"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let start = std::time::Instant::now();
    loop {
        let comments = &status(&client, &base).await["comments"];
        if comments["posted"] == 1 {
            break;
        }
        assert!(
            comments["failed"] == 0 && start.elapsed() < PATIENCE,
            "the comment is not posted: {comments}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posted = posted.lock().unwrap().clone();
    assert_eq!(
        posted,
        [
            "/tfs/DefaultCollection/proj-guid/_apis/git/repositories/repo-guid/pullRequests/6/threads?api-version=5.0"
        ]
    );
}
