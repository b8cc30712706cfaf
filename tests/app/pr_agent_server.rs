//! End to end: the pr_agent_server example's router on 127.0.0.1, against a fake provider API
//! on 127.0.0.1, driven by a real HTTP client.

use crate::app;
use crate::child;
use crate::harness;
use crate::peers;
use crate::support;

use harness::hmac_hex;
use harness::{serve, status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// A fake provider API: records comments, fails on command.

/// A comment the fake API received: path, headers, JSON body.
type Received = (String, HashMap<String, String>, Value);

/// How long a fake API answers a rate limit, when that ends once it began, and the answer.
type Limit = (Duration, Option<Instant>, fn() -> Response);

#[derive(Default)]
struct FakeApi {
    comments: Mutex<Vec<Received>>,
    requests: AtomicUsize,
    failing: AtomicBool,
    /// Requests still to answer as GitHub does when a rate limit is exceeded: 403 with
    /// `Retry-After` and `X-RateLimit-Remaining: 0`.
    rate_limited: AtomicUsize,
    /// For this long from the first request on, every request is answered with the answer
    /// (a rate limit); then when it ends.
    limited_for: Mutex<Option<Limit>>,
    /// When each comment arrived.
    arrived: Mutex<Vec<Instant>>,
}

/// The URL a fake GitHub says a hook delivers to before it follows the tunnel.
const HOOK_URL_BEFORE: &str = "https://hooks.example.com/github";

/// A fake GitHub's answer to `GET` of a hook's config.
fn hook_config() -> Response {
    axum::Json(json!({"url": HOOK_URL_BEFORE, "content_type": "json", "insecure_ssl": "0"}))
        .into_response()
}

async fn fake_api_handler(State(api): State<Arc<FakeApi>>, req: Request) -> Response {
    if req.method() == http::Method::GET && req.uri().path().ends_with("/config") {
        return hook_config();
    }
    api.requests.fetch_add(1, Ordering::SeqCst);
    if api.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let limited = match &mut *api.limited_for.lock().unwrap() {
        Some((window, until, answer)) => {
            (Instant::now() < *until.get_or_insert(Instant::now() + *window)).then_some(*answer)
        }
        None => None,
    };
    if let Some(answer) = limited {
        return answer();
    }
    if api
        .rate_limited
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::FORBIDDEN,
            [("retry-after", "1"), ("x-ratelimit-remaining", "0")],
            "You have exceeded a secondary rate limit.",
        )
            .into_response();
    }
    let path = req.uri().to_string();
    let mut headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.insert(":method".to_owned(), req.method().to_string());
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    api.comments.lock().unwrap().push((path, headers, json));
    api.arrived.lock().unwrap().push(Instant::now());
    StatusCode::CREATED.into_response()
}

async fn start_fake_api() -> (SocketAddr, Arc<FakeApi>) {
    let api = Arc::new(FakeApi::default());
    let router = Router::new()
        .fallback(fake_api_handler)
        .with_state(api.clone());
    (serve(router).await, api)
}

// ---------------------------------------------------------------------------------------------
// The server under test.

const GH: &str = "gh-secret-new,gh-secret-old";
const GL: &str = "gitlab-token";
const BB: &str = "bitbucket-secret";
const BBS: &str = "bitbucket-server-secret";
const GT: &str = "gitea-secret";

fn settings(api: SocketAddr, extra: &[(&str, &str)]) -> app::Settings {
    let base = format!("http://{api}");
    let mut env: HashMap<String, String> = [
        ("GITHUB_WEBHOOK_SECRET", GH),
        ("GITLAB_WEBHOOK_TOKEN", GL),
        ("BITBUCKET_WEBHOOK_SECRET", BB),
        ("BITBUCKET_SERVER_WEBHOOK_SECRET", BBS),
        ("GITEA_WEBHOOK_SECRET", GT),
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "azure-pass"),
        ("GITHUB_TOKEN", "ghp_token"),
        ("GITLAB_TOKEN", "glpat"),
        ("BITBUCKET_TOKEN", "bb-token"),
        ("BITBUCKET_SERVER_TOKEN", "bbs-token"),
        ("GITEA_TOKEN", "gitea-token"),
        ("AZURE_DEVOPS_TOKEN", "ado-pat"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for var in [
        "GITHUB_API_URL",
        "GITLAB_API_URL",
        "BITBUCKET_API_URL",
        "BITBUCKET_SERVER_API_URL",
        "GITEA_API_URL",
        "AZURE_DEVOPS_API_URL",
    ] {
        env.insert(var.to_owned(), base.clone());
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    app::Settings::from_lookup(|name| env.get(name).cloned()).unwrap()
}

async fn start_server(settings: &app::Settings) -> (String, Arc<app::AppState>) {
    let app = app::build(settings).unwrap();
    let addr = serve(app.router).await;
    (format!("http://{addr}"), app.state)
}

// ---------------------------------------------------------------------------------------------
// Deliveries, signed as each provider signs them.

struct Delivery {
    route: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// A `pull_request`-opened delivery (or each provider's equivalent) for pull request `pr`.
fn delivery(forge: app::Forge, id: &str, pr: u64) -> Delivery {
    use app::Forge::*;
    let (event, body) = match forge {
        GitHub => (
            "pull_request",
            json!({"action": "opened", "number": pr, "pull_request": {"number": pr, "title": "Fix"}, "repository": {"full_name": "octo/repo"}}),
        ),
        GitLab => (
            "Merge Request Hook",
            json!({"object_kind": "merge_request", "project": {"id": 42}, "object_attributes": {"iid": pr, "action": "open", "title": "Fix"}}),
        ),
        Bitbucket => (
            "pullrequest:created",
            json!({"pullrequest": {"id": pr, "title": "Fix"}, "repository": {"full_name": "team/repo"}}),
        ),
        // Bitbucket Data Center: the pull request and its target repository.
        BitbucketServer => (
            "pr:opened",
            json!({"eventKey": "pr:opened", "pullRequest": {"id": pr, "title": "Fix", "draft": false, "toRef": {"repository": {"slug": "repo", "project": {"key": "PROJ"}}}, "links": {"self": [{"href": "https://bitbucket.example.com/projects/PROJ/repos/repo/pull-requests/1"}]}}}),
        ),
        Gitea => (
            "pull_request",
            json!({"action": "opened", "number": pr, "pull_request": {"number": pr, "title": "Fix"}, "repository": {"full_name": "org/repo"}}),
        ),
        AzureDevOps => (
            "-",
            json!({"id": id, "eventType": "git.pullrequest.created", "resource": {"pullRequestId": pr, "title": "Fix", "repository": {"id": "repo-guid", "project": {"id": "proj-guid"}}}}),
        ),
    };
    signed(forge, id, event, body.to_string().into_bytes())
}

/// A new comment saying `text` on pull request `pr`, as each provider delivers it.
fn comment_delivery(forge: app::Forge, id: &str, pr: u64, text: &str) -> Delivery {
    use app::Forge::*;
    let (event, body) = match forge {
        GitHub => (
            "issue_comment",
            json!({"action": "created", "issue": {"number": pr, "title": "Fix", "pull_request": {"url": "-"}}, "comment": {"id": 9, "body": text, "user": {"login": "dev", "type": "User"}}, "repository": {"full_name": "octo/repo"}, "sender": {"login": "dev", "type": "User"}}),
        ),
        GitLab => (
            "Note Hook",
            json!({"object_kind": "note", "project_id": 42, "user": {"username": "dev"}, "object_attributes": {"id": 9, "note": text, "noteable_type": "MergeRequest", "system": false, "action": "create"}, "merge_request": {"iid": pr, "title": "Fix"}}),
        ),
        Bitbucket => (
            "pullrequest:comment_created",
            json!({"actor": {"type": "user"}, "comment": {"id": 9, "content": {"raw": text}}, "pullrequest": {"id": pr, "title": "Fix"}, "repository": {"full_name": "team/repo"}}),
        ),
        BitbucketServer => (
            "pr:comment:added",
            json!({"eventKey": "pr:comment:added", "comment": {"id": 9, "text": text}, "pullRequest": {"id": pr, "title": "Fix", "toRef": {"repository": {"slug": "repo", "project": {"key": "PROJ"}}}}}),
        ),
        Gitea => (
            "issue_comment",
            json!({"action": "created", "is_pull": true, "issue": {"number": pr, "title": "Fix"}, "comment": {"id": 9, "body": text}, "repository": {"full_name": "org/repo"}}),
        ),
        AzureDevOps => (
            "-",
            json!({"id": id, "eventType": "ms.vss-code.git-pullrequest-comment-event", "resource": {"comment": {"id": 1, "content": text, "commentType": "text"}, "pullRequest": {"pullRequestId": pr, "title": "Fix", "repository": {"id": "repo-guid", "project": {"id": "proj-guid"}}}}}),
        ),
    };
    signed(forge, id, event, body.to_string().into_bytes())
}

/// `body` as `forge` delivers and signs it, with event `event` and delivery id `id`.
fn signed(forge: app::Forge, id: &str, event: &str, body: Vec<u8>) -> Delivery {
    use app::Forge::*;
    let headers = match forge {
        // Signed with the older secret of the rotation: still accepted.
        GitHub => vec![
            ("x-github-event", event.into()),
            ("x-github-delivery", id.into()),
            (
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex("gh-secret-old", &body)),
            ),
        ],
        GitLab => vec![
            ("x-gitlab-event", event.into()),
            ("idempotency-key", id.into()),
            ("x-gitlab-event-uuid", id.into()),
            ("x-gitlab-token", GL.into()),
        ],
        Bitbucket => vec![
            ("x-event-key", event.into()),
            ("x-request-uuid", id.into()),
            ("x-hub-signature", format!("sha256={}", hmac_hex(BB, &body))),
        ],
        BitbucketServer => vec![
            ("x-event-key", event.into()),
            ("x-request-id", id.into()),
            (
                "x-hub-signature",
                format!("sha256={}", hmac_hex(BBS, &body)),
            ),
        ],
        Gitea => vec![
            ("x-gitea-event", event.into()),
            ("x-gitea-delivery", id.into()),
            ("x-gitea-signature", hmac_hex(GT, &body)),
        ],
        // Azure DevOps names its event in the body, and its delivery id is the body's `id`.
        AzureDevOps => vec![(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("azure:azure-pass")
            ),
        )],
    };
    Delivery {
        route: match forge {
            GitHub => "/api/v1/github_webhooks",
            GitLab => "/api/v1/gitlab_webhooks",
            Bitbucket => "/api/v1/bitbucket_webhooks",
            BitbucketServer => "/api/v1/bitbucket_server_webhooks",
            Gitea => "/api/v1/gitea_webhooks",
            AzureDevOps => "/api/v1/azuredevops_webhooks",
        },
        headers,
        body,
    }
}

async fn send(client: &reqwest::Client, base: &str, d: &Delivery) -> reqwest::Response {
    let mut req = client
        .post(format!("{base}{}", d.route))
        .header("content-type", "application/json")
        .body(d.body.clone());
    for (k, v) in &d.headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap()
}

/// How long a test waits for something that is due to happen at once: the bound only ends a
/// failing test, so it leaves room for a slow, loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn comment_count(api: &FakeApi) -> usize {
    api.comments.lock().unwrap().len()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_provider_is_accepted_and_processed_exactly_once() {
    let (api_addr, api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();

    for (i, forge) in app::Forge::ALL.into_iter().enumerate() {
        let d = delivery(forge, &format!("0b8c7a52-1c0e-4c1f-9a55-00000000000{i}"), 7);
        let res = send(&client, &base, &d).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{forge:?}");
        // The same delivery again: acknowledged, not processed.
        let res = send(&client, &base, &d).await;
        assert_eq!(res.status(), StatusCode::OK, "{forge:?} duplicate");
    }
    eventually("six comments", Duration::from_secs(10), || {
        comment_count(&api) == 6
    })
    .await;
    // Nothing more arrives: every delivery was processed exactly once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let comments = api.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 6);

    let by_path: HashMap<&str, &HashMap<String, String>> =
        comments.iter().map(|(p, h, _)| (p.as_str(), h)).collect();
    assert_eq!(
        by_path["/repos/octo/repo/issues/7/comments"]["authorization"],
        "Bearer ghp_token"
    );
    assert_eq!(
        by_path["/projects/42/merge_requests/7/notes"]["private-token"],
        "glpat"
    );
    assert_eq!(
        by_path["/repositories/team/repo/pullrequests/7/comments"]["authorization"],
        "Bearer bb-token"
    );
    assert_eq!(
        by_path["/repos/org/repo/issues/7/comments"]["authorization"],
        "token gitea-token"
    );
    assert_eq!(
        by_path["/rest/api/1.0/projects/PROJ/repos/repo/pull-requests/7/comments"]["authorization"],
        "Bearer bbs-token"
    );
    let ado = "/proj-guid/_apis/git/repositories/repo-guid/pullRequests/7/threads?api-version=5.0";
    assert!(by_path[ado]["authorization"].starts_with("Basic "));
    for (path, _, body) in &comments {
        assert!(
            body.to_string().contains("Thanks for the pull request"),
            "{path}: {body}"
        );
    }

    let s = status(&client, &base).await;
    assert_eq!(s["deliveries"]["accepted"], 6);
    assert_eq!(s["deliveries"]["duplicates"], 6);
    assert_eq!(s["deliveries"]["rejected"], 0);
    assert_eq!(s["comments"]["posted"], 6);
    assert_eq!(s["comments"]["pending"], 0);
}

#[tokio::test]
async fn bad_deliveries_are_rejected_and_never_processed() {
    let (api_addr, api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[("MAX_BODY_BYTES", "65536")])).await;
    let client = crate::client::new();

    for forge in app::Forge::ALL {
        // One byte of the body changed after signing.
        let mut d = delivery(forge, "5d1f3f4e-0000-4000-8000-000000000001", 9);
        if forge == app::Forge::GitLab || forge == app::Forge::AzureDevOps {
            // Token schemes: a wrong token instead.
            for (k, v) in d.headers.iter_mut() {
                if *k == "x-gitlab-token" {
                    *v = "wrong-token".into();
                }
                if *k == "authorization" {
                    *v = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("azure:wrong")
                    );
                }
            }
        } else {
            let last = d.body.len() - 2;
            d.body[last] ^= 0x01;
        }
        let res = send(&client, &base, &d).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{forge:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(res.headers().contains_key("x-request-id"));
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["status"], 401);
        assert!(
            problem["instance"].is_string(),
            "the request id is the instance"
        );
    }

    // Oversize: 413 before the handler.
    let big = vec![b' '; 100 * 1024];
    let sig = format!("sha256={}", hmac_hex("gh-secret-new", &big));
    let res = client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "5d1f3f4e-0000-4000-8000-000000000002")
        .header("x-hub-signature-256", sig)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Authentic but not JSON: 400.
    let body = b"not json".to_vec();
    let sig = format!("sha256={}", hmac_hex("gh-secret-new", &body));
    let res = client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "5d1f3f4e-0000-4000-8000-000000000003")
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(comment_count(&api), 0, "nothing unverified was processed");
    assert_eq!(api.requests.load(Ordering::SeqCst), 0);
    let s = status(&client, &base).await;
    assert_eq!(s["deliveries"]["rejected"], 8);
    assert_eq!(s["deliveries"]["accepted"], 0);
}

#[tokio::test]
async fn failing_api_opens_the_breaker_and_no_comment_is_lost() {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();

    const N: u64 = 12;
    for pr in 1..=N {
        let d = delivery(
            app::Forge::GitHub,
            &format!("9f0c2b8e-0000-4000-8000-{pr:012}"),
            pr,
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }

    // The breaker opens, and /status shows it.
    let open = async {
        loop {
            let s = status(&client, &base).await;
            if s["breakers"]["github"]["state"] == json!("OPEN")
                || s["breakers"]["github"]["state"] == json!("open")
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let s = tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .expect("breaker opened");
    assert!(
        s["breakers"]["github"]["not_permitted_calls"]
            .as_u64()
            .is_some()
    );

    // No storm: while the API is down, the upstream sees a handful of calls per recovery
    // period (3 failures to open, then one probe per second), not one per pending comment.
    let before = api.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = api.requests.load(Ordering::SeqCst) - before;
    assert!(
        during <= 12,
        "{during} upstream calls in 2.5 s while the breaker is open"
    );
    assert_eq!(comment_count(&api), 0);

    // The API comes back: the breaker closes and every comment is posted, once.
    api.failing.store(false, Ordering::SeqCst);
    eventually("all comments posted", Duration::from_secs(30), || {
        comment_count(&api) == N as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let comments = api.comments.lock().unwrap().clone();
    let mut prs: Vec<&str> = comments.iter().map(|(p, _, _)| p.as_str()).collect();
    prs.sort();
    prs.dedup();
    assert_eq!(prs.len(), N as usize, "each comment exactly once");
    let s = status(&client, &base).await;
    assert_eq!(s["comments"]["posted"], N);
    assert_eq!(s["comments"]["pending"], 0);
    assert!(s["comments"]["retries"].as_u64().unwrap() > 0);
    assert_eq!(
        state.breakers[&app::Forge::GitHub]
            .snapshot()
            .state
            .to_string()
            .to_lowercase(),
        "closed"
    );
}

/// `payload=<urlencoded JSON>`, as GitHub and Gitea send a delivery whose content type is
/// `application/x-www-form-urlencoded` (the GitHub API's default for new hooks).
fn form_body(json: &[u8]) -> Vec<u8> {
    let mut out = b"payload=".to_vec();
    for &b in json {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
    out
}

#[tokio::test]
async fn form_encoded_deliveries_are_processed() {
    let (api_addr, api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();

    // GitHub signs the form body as sent.
    let json = json!({"action": "opened", "number": 21, "pull_request": {"number": 21, "title": "Form + JSON"}, "repository": {"full_name": "octo/repo"}}).to_string();
    let body = form_body(json.as_bytes());
    let sig = format!("sha256={}", hmac_hex("gh-secret-new", &body));
    let res = client
        .post(format!("{base}/api/v1/github_webhooks"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "f0f0f0f0-0000-4000-8000-000000000001")
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "GitHub form delivery");

    // Gitea signs the decoded JSON payload.
    let json = json!({"action": "opened", "number": 22, "pull_request": {"number": 22, "title": "Fix"}, "repository": {"full_name": "org/repo"}}).to_string();
    let sig = hmac_hex(GT, json.as_bytes());
    let res = client
        .post(format!("{base}/api/v1/gitea_webhooks"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-gitea-event", "pull_request")
        .header("x-gitea-delivery", "f0f0f0f0-0000-4000-8000-000000000002")
        .header("x-gitea-signature", sig)
        .body(form_body(json.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "Gitea form delivery");

    eventually("two comments", PATIENCE, || comment_count(&api) == 2).await;
    let comments = api.comments.lock().unwrap().clone();
    let paths: Vec<&str> = comments.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(
        paths.contains(&"/repos/octo/repo/issues/21/comments"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/repos/org/repo/issues/22/comments"),
        "{paths:?}"
    );
    assert!(
        comments
            .iter()
            .any(|(_, _, b)| b.to_string().contains("Form + JSON"))
    );
}

#[tokio::test]
async fn a_rate_limited_comment_is_posted_later_not_dropped() {
    let (api_addr, api) = start_fake_api().await;
    // GitHub answers 403 + `Retry-After` to a client over its rate limit.
    api.rate_limited.store(1, Ordering::SeqCst);
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();

    let d = delivery(
        app::Forge::GitHub,
        "ab000000-0000-4000-8000-000000000001",
        5,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the comment, after the rate limit", PATIENCE, || {
        comment_count(&api) == 1
    })
    .await;
    let s = status(&client, &base).await;
    assert_eq!(s["comments"]["failed"], 0);
    assert_eq!(s["comments"]["posted"], 1);
    assert_eq!(api.requests.load(Ordering::SeqCst), 2);
}

/// `forge`'s API answers every comment with `answer`: the comment is tried once, then waits
/// (not sent again within 1.5 s), neither given up nor dropped.
async fn comment_waits_after_one_attempt(forge: app::Forge, answer: fn() -> Response, id: &str) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let provider = serve(Router::new().fallback(move || {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { answer() }
    }))
    .await;
    let (api_addr, _api) = start_fake_api().await;
    let provider = format!("http://{provider}");
    let (base, state) = start_server(&settings(
        api_addr,
        &[(forge.api_url_var(), provider.as_str())],
    ))
    .await;
    let client = crate::client::new();
    let d = delivery(forge, id, 6);
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the first attempt", PATIENCE, || {
        calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{id}: not sent again yet");
    assert_eq!(
        state.counters.comments_failed.load(Ordering::SeqCst),
        0,
        "{id}: not given up"
    );
    assert_eq!(
        state.counters.pending.load(Ordering::SeqCst),
        1,
        "{id}: still pending"
    );
}

/// A provider down for maintenance answers 503 with a `Retry-After` longer than the retry
/// policy waits by itself (a minute): the comment waits that long, not the worker's short
/// backoff, and is neither given up nor sent again at once.
#[tokio::test]
async fn a_503_with_a_long_retry_after_is_waited_out() {
    comment_waits_after_one_attempt(
        app::Forge::GitLab,
        || (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "120")]).into_response(),
        "ab000000-0000-4000-8000-000000000503",
    )
    .await;
}

/// GitHub answers a secondary rate limit with 403 or 429 and may send no `retry-after` and no
/// `x-ratelimit-remaining: 0`: "If you exceed a secondary rate limit, you will receive a `403` or
/// `429` response and an error message that indicates that you exceeded a secondary rate limit.
/// [...] Otherwise, wait for at least one minute before retrying." (github/docs,
/// content/rest/using-the-rest-api/rate-limits-for-the-rest-api.md). Octokit waits 60 s when the
/// header is missing: "The Retry-After header can sometimes be blank when hitting a secondary
/// rate limit" (octokit/plugin-throttling.js, src/index.ts). Such a comment must be neither
/// given up nor sent again at once.
#[tokio::test]
async fn a_github_secondary_rate_limit_without_headers_is_waited_out_not_dropped() {
    fn limited(code: StatusCode) -> Response {
        (
            code,
            [("content-type", "application/json")],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}"#,
        )
            .into_response()
    }
    comment_waits_after_one_attempt(
        app::Forge::GitHub,
        || limited(StatusCode::FORBIDDEN),
        "ab000000-0000-4000-8000-000000000403",
    )
    .await;
    comment_waits_after_one_attempt(
        app::Forge::GitHub,
        || limited(StatusCode::TOO_MANY_REQUESTS),
        "ab000000-0000-4000-8000-000000000429",
    )
    .await;
}

#[tokio::test]
async fn pending_comments_are_bounded_and_the_rest_is_deferred_to_the_provider() {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(api_addr, &[("MAX_PENDING_COMMENTS", "3")])).await;
    let client = crate::client::new();

    let mut statuses = Vec::new();
    for pr in 1..=5 {
        let d = delivery(
            app::Forge::GitHub,
            &format!("cd000000-0000-4000-8000-{pr:012}"),
            pr,
        );
        let res = send(&client, &base, &d).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(res.headers().contains_key("retry-after"));
        }
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 503, 503]);
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 3);
}

#[test]
fn settings_debug_does_not_show_the_development_secret() {
    let settings = app::Settings::from_lookup(|_| None).unwrap();
    let secret = settings.generated_github_secret.clone().unwrap();
    let debug = format!("{settings:?}");
    assert!(!debug.contains(&secret), "{debug}");
}

#[tokio::test]
async fn development_mode_generates_a_secret_and_its_sample_delivery_works() {
    let settings = app::Settings::from_lookup(|_| None).unwrap();
    assert_eq!(settings.addr.to_string(), "127.0.0.1:3000");
    let secret = settings
        .generated_github_secret
        .clone()
        .expect("a development secret");
    assert_eq!(secret.len(), 64);
    assert_eq!(settings.forges.len(), 1, "only GitHub is enabled");

    let (base, _) = start_server(&settings).await;
    let client = crate::client::new();
    let (body, signature) = app::sample_github_delivery(&secret);
    let post = |sig: String, id: &'static str| {
        client
            .post(format!("{base}/api/v1/github_webhooks"))
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", sig)
            .body(body.clone())
            .send()
    };
    assert_eq!(
        post(signature.clone(), "d-1").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let mut forged = signature;
    forged.replace_range(forged.len() - 1.., "x");
    assert_eq!(
        post(forged, "d-2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Health, and routes of disabled providers do not exist.
    assert_eq!(
        client
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let res = client
        .post(format!("{base}/api/v1/gitlab_webhooks"))
        .body(Bytes::new())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[test]
fn host_and_port_are_read_around_spaces_like_the_numbers() {
    // As a `.env` file or a YAML block can leave them: the other numbers are trimmed too.
    let settings = app::Settings::from_lookup(|n| match n {
        "HOST" => Some(" 0.0.0.0\n".to_owned()),
        "PORT" => Some("8080 ".to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(settings.addr.to_string(), "0.0.0.0:8080");
}

/// An address or a number set but empty (`PORT: ${PORT}` in a compose file, with `PORT` unset)
/// is unset, as an empty API URL or token is: its default, not a refusal to start.
#[test]
fn empty_addresses_and_numbers_take_their_defaults() {
    let settings = app::Settings::from_lookup(|n| match n {
        "HOST"
        | "PORT"
        | "REQUEST_TIMEOUT_SECS"
        | "MAX_CONCURRENT_DELIVERIES"
        | "CIRCUIT_BREAKER_FAILURE_THRESHOLD" => Some(" ".to_owned()),
        _ => None,
    })
    .unwrap();
    let defaults = app::Settings::from_lookup(|_| None).unwrap();
    assert_eq!(settings.addr, defaults.addr);
    assert_eq!(settings.request_timeout, defaults.request_timeout);
}

/// Settings with only `name` set to `value` are refused, with a message naming `name`.
fn refused_naming_it(name: &str, value: &str) {
    let err = app::Settings::from_lookup(|n| (n == name).then(|| value.to_owned()))
        .expect_err(&format!("{name}={value:?} is refused"));
    assert!(err.contains(name), "{name}={value:?}: {err}");
}

#[test]
fn settings_errors_name_the_variable() {
    let err = app::Settings::from_lookup(|n| (n == "PORT").then(|| "http".to_owned())).unwrap_err();
    assert!(err.contains("PORT"), "{err}");
    let err = app::Settings::from_lookup(|n| {
        (n == "AZURE_DEVOPS_WEBHOOK_USERNAME").then(|| "u".to_owned())
    })
    .unwrap_err();
    assert!(err.contains("AZURE_DEVOPS_WEBHOOK_PASSWORD"), "{err}");
    let err = app::Settings::from_lookup(|n| {
        (n == "CIRCUIT_BREAKER_FAILURE_THRESHOLD").then(|| "many".to_owned())
    })
    .unwrap_err();
    assert!(err.contains("CIRCUIT_BREAKER_FAILURE_THRESHOLD"), "{err}");

    // A secret variable that is set but empty is an error, not "unset" (nor development mode).
    for (name, value) in [
        ("GITHUB_WEBHOOK_SECRET", ""),
        ("GITHUB_WEBHOOK_SECRET", " , "),
        ("GITLAB_WEBHOOK_TOKEN", ""),
        ("GITEA_WEBHOOK_SECRET", ","),
        // An empty item among secrets: a rotation that removed one, or a secret with a comma,
        // which would be split into shorter secrets, each taken alone.
        ("GITHUB_WEBHOOK_SECRET", "new-secret,,old-secret"),
        ("GITLAB_WEBHOOK_TOKEN", "gl-token-with-a-comma,"),
        ("BITBUCKET_WEBHOOK_SECRET", ",bb-secret"),
        // A secret that holds a comma near its end: the short piece would be a secret alone.
        ("GITEA_WEBHOOK_SECRET", "Zq8!vP2#mR,7"),
    ] {
        refused_naming_it(name, value);
    }
    let err = app::Settings::from_lookup(|n| match n {
        "AZURE_DEVOPS_WEBHOOK_USERNAME" => Some("azure".to_owned()),
        "AZURE_DEVOPS_WEBHOOK_PASSWORD" => Some(String::new()),
        _ => None,
    })
    .unwrap_err();
    assert!(err.contains("AZURE_DEVOPS_WEBHOOK_PASSWORD"), "{err}");
    let err = app::Settings::from_lookup(|n| match n {
        "AZURE_DEVOPS_WEBHOOK_USERNAME" => Some(" ".to_owned()),
        "AZURE_DEVOPS_WEBHOOK_PASSWORD" => Some("p".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert!(err.contains("AZURE_DEVOPS_WEBHOOK_USERNAME"), "{err}");

    // The GitHub hook to follow the tunnel: both variables, a repository, a token to edit it.
    let hook = |vars: &[(&str, &str)]| {
        app::Settings::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let api = [
        ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ("GITHUB_TOKEN", "t"),
    ];
    // (repository, id, API settings given, the variable the error must name)
    for (repository, id, with_api, named) in [
        (None, "42", true, "GITHUB_HOOK_REPOSITORY"),
        (Some("octo"), "42", true, "GITHUB_HOOK_REPOSITORY"),
        (Some("../repo"), "42", true, "GITHUB_HOOK_REPOSITORY"),
        (Some("octo/."), "42", true, "GITHUB_HOOK_REPOSITORY"),
        (Some("octo/repo"), "0", true, "GITHUB_HOOK_ID"),
        (Some("octo/repo"), "42", false, "GITHUB_TOKEN"),
    ] {
        let mut vars = vec![("GITHUB_HOOK_ID", id)];
        vars.extend(repository.map(|r| ("GITHUB_HOOK_REPOSITORY", r)));
        if with_api {
            vars.extend(api);
        }
        let err = hook(&vars).unwrap_err();
        assert!(err.contains(named), "{vars:?}: {err}");
    }
    let ok = hook(&[
        ("GITHUB_HOOK_REPOSITORY", "octo/hello-world.rs"),
        ("GITHUB_HOOK_ID", "42"),
        ("GITHUB_WEBHOOK_SECRET", "s"),
        api[0],
        api[1],
    ])
    .unwrap();
    assert_eq!(
        ok.github_hook,
        Some(app::GithubHook {
            repository: "octo/hello-world.rs".into(),
            id: 42
        })
    );
}

/// The updates of hook 42 of `octo/repo` the fake API received: method, authorization, body.
fn hook_updates(api: &FakeApi) -> Vec<(String, String, Value)> {
    api.comments
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _, _)| path == "/repos/octo/repo/hooks/42/config")
        .map(|(_, headers, body)| {
            (
                headers[":method"].clone(),
                headers["authorization"].clone(),
                body.clone(),
            )
        })
        .collect()
}

/// Settings with hook 42 of `octo/repo` to follow the tunnel, on any free port.
fn hook_settings(api: SocketAddr) -> app::Settings {
    settings(
        api,
        &[
            ("PORT", "0"),
            ("GITHUB_HOOK_REPOSITORY", "octo/repo"),
            ("GITHUB_HOOK_ID", "42"),
        ],
    )
}

/// GitHub's API fails when the tunnel opens: the hook update is tried again until it works.
#[tokio::test]
async fn a_hook_update_that_fails_for_a_while_is_tried_again() {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 44);
    let _bore = support::BoreServer::start(ip, None).await;
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let settings = hook_settings(api_addr);
    let running = start_with_bore(&settings, ip).await;
    let url = running.tunnel_url().unwrap();
    eventually("a first attempt", PATIENCE, || {
        api.requests.load(Ordering::SeqCst) > 0
    })
    .await;
    api.failing.store(false, Ordering::SeqCst);
    eventually("the hook update, tried again", PATIENCE, || {
        !hook_updates(&api).is_empty()
    })
    .await;
    assert_eq!(
        hook_updates(&api)[0].2,
        json!({"url": format!("{url}/api/v1/github_webhooks")})
    );
}

/// With `--use-tunnel` and `GITHUB_HOOK_*`, the GitHub hook is pointed at the tunnel's URL, and
/// again when the tunnel re-opens at another one (a real bore server, killed and restarted).
#[tokio::test]
async fn the_github_hook_follows_the_tunnel_url() {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 43);
    let mut bore = support::BoreServer::start(ip, None).await;
    let (api_addr, api) = start_fake_api().await;
    let settings = hook_settings(api_addr);
    let running = start_with_bore(&settings, ip).await;
    let first = running.tunnel_url().unwrap();
    let hook_updates = || hook_updates(&api);
    eventually("the hook points at the tunnel", PATIENCE, || {
        !hook_updates().is_empty()
    })
    .await;
    let updates = hook_updates();
    assert_eq!(updates.len(), 1);
    let (method, authorization, body) = &updates[0];
    assert_eq!(method, "PATCH");
    assert_eq!(authorization, "Bearer ghp_token");
    assert_eq!(
        body,
        &json!({"url": format!("{first}/api/v1/github_webhooks")})
    );
    // What the hook now points at works.
    let client = crate::client::new();
    let d = delivery(app::Forge::GitHub, "hook-0001", 12);
    assert_eq!(
        send(&client, &first, &d).await.status(),
        StatusCode::ACCEPTED
    );

    // The bore server goes away and comes back: the tunnel re-opens on another port.
    let mut status = running.tunnel_watch().unwrap();
    bore.kill();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| !s.is_up()))
        .await
        .expect("the tunnel goes down")
        .unwrap();
    let _bore = support::BoreServer::start(ip, None).await;
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.is_up()))
        .await
        .expect("the tunnel comes back")
        .unwrap();
    let second = running.tunnel_url().unwrap();
    if second == first {
        // The server gave the same port again: the hook is right as it is.
        return;
    }
    eventually("the hook follows the new URL", PATIENCE, || {
        hook_updates().len() == 2
    })
    .await;
    assert_eq!(
        hook_updates()[1].2,
        json!({"url": format!("{second}/api/v1/github_webhooks")})
    );
    let d = delivery(app::Forge::GitHub, "hook-0002", 13);
    assert_eq!(
        send(&client, &second, &d).await.status(),
        StatusCode::ACCEPTED
    );
}

/// Starts the server as `--use-tunnel` with `TUNNEL_SERVICE=bore` does, against the bore server
/// on `ip`; a lost tunnel is re-opened within 200 ms.
async fn start_with_bore(
    settings: &app::Settings,
    ip: std::net::Ipv4Addr,
) -> tower_webhook::tunnel::Running {
    let app = app::build(settings).unwrap();
    start_app_with_bore(settings, app, ip, std::future::pending()).await
}

/// [`start_with_bore`] with `app`, stopped when `stop` resolves.
async fn start_app_with_bore(
    settings: &app::Settings,
    app: app::App,
    ip: std::net::Ipv4Addr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tower_webhook::tunnel::Running {
    let tunnel = tower_webhook::tunnel::TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("bore".to_owned()),
        "TUNNEL_SERVER" => Some(ip.to_string()),
        _ => None,
    })
    .unwrap()
    .builder()
    .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    app::start(settings, app, Some(tunnel), stop).await.unwrap()
}

/// When the server stops, the GitHub hook that followed its tunnel is pointed back at the URL
/// it had before, before the process exits.
#[tokio::test]
async fn the_github_hook_is_pointed_back_when_the_server_stops() {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 45);
    let _bore = support::BoreServer::start(ip, None).await;
    let (api_addr, api) = start_fake_api().await;
    let settings = hook_settings(api_addr);
    let app = app::build(&settings).unwrap();
    let state = app.state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = start_app_with_bore(&settings, app, ip, async {
        let _ = stopped.await;
    })
    .await;
    let url = running.tunnel_url().unwrap();
    eventually("the hook points at the tunnel", PATIENCE, || {
        !hook_updates(&api).is_empty()
    })
    .await;
    stop.send(()).unwrap();
    let signals = app::StopSignals::listen().unwrap();
    tokio::time::timeout(
        PATIENCE,
        app::finish(running, &state, settings.shutdown_grace, &signals),
    )
    .await
    .expect("the server stops");
    // Done by the time `finish` returns, the process's last step.
    let bodies: Vec<Value> = hook_updates(&api).into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(
        bodies,
        [
            json!({"url": format!("{url}/api/v1/github_webhooks")}),
            json!({ "url": HOOK_URL_BEFORE }),
        ]
    );
}

/// `--use-tunnel`: the server opens a tunnel through a real bore server (bore-cli's, on a
/// loopback address of its own) and deliveries sent to the public URL are verified and processed.
#[tokio::test]
async fn use_tunnel_serves_the_routes_through_a_real_bore_server() {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 42);
    let _bore = support::BoreServer::start(ip, None).await;

    let (api_addr, api) = start_fake_api().await;
    let settings = settings(api_addr, &[("PORT", "0")]);
    let running = start_with_bore(&settings, ip).await;
    let public = running.tunnel_url().expect("a public URL");
    assert!(public.starts_with("http://127.0.0.42:"), "{public}");

    let client = crate::client::new();
    let d = delivery(app::Forge::GitHub, "tunnel-0001", 11);
    let res = send(&client, &public, &d).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = send(&client, &public, &d).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "a duplicate through the tunnel too"
    );
    eventually("the comment", Duration::from_secs(10), || {
        comment_count(&api) == 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Comment jobs: bounded attempts and age, per-provider slots.

#[tokio::test]
async fn a_comment_that_keeps_failing_is_given_up_after_max_attempts() {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("COMMENT_MAX_ATTEMPTS", "2"),
            // The breaker stays closed: every attempt reaches the API.
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "100"),
        ],
    ))
    .await;
    let client = crate::client::new();

    let d = delivery(
        app::Forge::GitHub,
        "e1000000-0000-4000-8000-000000000001",
        3,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the comment given up", PATIENCE, || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 0);
    assert_eq!(api.requests.load(Ordering::SeqCst), 2, "two attempts");
    // Given up for good: no further attempt.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 2);
    let s = status(&client, &base).await;
    assert_eq!(s["comments"]["failed"], 1);
    assert_eq!(s["comments"]["posted"], 0);
    assert_eq!(s["comments"]["pending"], 0);
}

/// A refused comment's log says what the provider said about it: a missing permission reads
/// differently from a repository the token cannot see. Before, only the status was logged.
#[tokio::test]
async fn a_refused_comment_is_logged_with_what_the_provider_said() {
    let (logs, _guard) = support::Logs::capture();
    let refusing = Router::new().fallback(|| async {
        (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json")],
            r#"{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest/issues/comments"}"#,
        )
    });
    let api_addr = serve(refusing).await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let d = delivery(
        app::Forge::GitHub,
        "e1000000-0000-4000-8000-00000000000f",
        3,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the comment given up", PATIENCE, || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("provider refused the comment"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("status=403"), "{line}");
    assert!(
        line.contains(r#"says="Resource not accessible by integration""#),
        "{line}"
    );
}

#[test]
fn what_each_provider_says_in_its_error_answer_is_read() {
    for (body, says) in [
        // GitHub, Gitea, Azure DevOps.
        (
            r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest"}"#,
            "Not Found",
        ),
        // GitLab: a scope error, and a validation error.
        (
            r#"{"error":"insufficient_scope","error_description":"The request requires higher privileges than provided by the access token."}"#,
            "The request requires higher privileges than provided by the access token.: insufficient_scope",
        ),
        (
            r#"{"message":{"note":["can't be blank"]}}"#,
            r#"{"note":["can't be blank"]}"#,
        ),
        // Bitbucket Cloud and Data Center.
        (
            r#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"granted":["repository"],"required":["pullrequest:write"]}}}"#,
            r#"Your credentials lack one or more required privilege scopes.: {"granted":["repository"],"required":["pullrequest:write"]}"#,
        ),
        (
            r#"{"errors":[{"context":null,"message":"You are not permitted to access this resource","exceptionName":"com.atlassian.bitbucket.AuthorisationException"}]}"#,
            "You are not permitted to access this resource",
        ),
        // Not JSON, or JSON that names no message: only its size, not what it holds.
        (
            "<html><a href=\"https://sso.example.com/s/abc\">sign in</a></html>",
            "64 bytes, not JSON",
        ),
        (r#"{"session":"abc"}"#, "17 bytes, JSON without a message"),
    ] {
        assert_eq!(
            app::provider_says(body.as_bytes()).as_deref(),
            Some(says),
            "{body}"
        );
    }
    assert_eq!(app::provider_says(b""), None);
    assert_eq!(app::provider_says(b"  "), None);
    // Cut, on a character boundary.
    let long = serde_json::json!({ "message": "é".repeat(1000) }).to_string();
    let says = app::provider_says(long.as_bytes()).unwrap();
    assert_eq!(says.chars().count(), 301, "{says}");
    assert!(says.ends_with('…'));
}

/// A rate limit one comment meets holds back the provider's other comments until it ends:
/// they do not each spend an attempt on the same refusal. Before, each tried and was refused.
#[tokio::test]
async fn a_rate_limit_one_comment_meets_holds_back_the_others() {
    let (api_addr, api) = start_fake_api().await;
    *api.limited_for.lock().unwrap() = Some((Duration::from_millis(1500), None, primary_limit));
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "1"),
            ("GITHUB_COMMENT_INTERVAL_MS", "0"),
        ],
    ))
    .await;
    let client = crate::client::new();
    send_accepted(
        &client,
        &base,
        app::Forge::GitHub,
        "e3000000-0000-4000-8000-00000000000",
        10,
        3,
    )
    .await;
    eventually("three comments", PATIENCE, || comment_count(&api) == 3).await;
    // One refusal, then the three comments after the wait it asked for.
    assert_eq!(api.requests.load(Ordering::SeqCst), 4);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 0);
}

/// Sends `n` deliveries of `forge` to `base`, with ids `{prefix}0`, `{prefix}1`... about pull
/// requests `pr`, `pr + 1`...; each is answered 202.
async fn send_accepted(
    client: &reqwest::Client,
    base: &str,
    forge: app::Forge,
    prefix: &str,
    pr: u64,
    n: u64,
) {
    for i in 0..n {
        let d = delivery(forge, &format!("{prefix}{i}"), pr + i);
        assert_eq!(send(client, base, &d).await.status(), StatusCode::ACCEPTED);
    }
}

/// GitHub's answer over its primary rate limit, asking for 2 s.
fn primary_limit() -> Response {
    (
        StatusCode::FORBIDDEN,
        [("retry-after", "2"), ("x-ratelimit-remaining", "0")],
        "API rate limit exceeded.",
    )
        .into_response()
}

/// A 429 that names no wait (Bitbucket's, GitLab's) holds back the provider's other comments
/// for the backoff of the one that met it; before, they kept sending meanwhile, and were refused.
#[tokio::test]
async fn a_429_naming_no_wait_holds_back_the_other_comments_too() {
    let (api_addr, api) = start_fake_api().await;
    *api.limited_for.lock().unwrap() = Some((Duration::from_millis(150), None, || {
        StatusCode::TOO_MANY_REQUESTS.into_response()
    }));
    let (base, state) = start_server(&settings(
        api_addr,
        &[("COMMENTS_IN_FLIGHT_PER_PROVIDER", "1")],
    ))
    .await;
    let client = crate::client::new();
    send_accepted(
        &client,
        &base,
        app::Forge::GitLab,
        "e6000000-0000-4000-8000-00000000000",
        40,
        3,
    )
    .await;
    eventually("three comments", PATIENCE, || comment_count(&api) == 3).await;
    // One 429 (not sent again within its attempt), then the three comments after its backoff.
    assert_eq!(api.requests.load(Ordering::SeqCst), 4);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 0);
}

/// A 429 that names no wait is a rate limit, not a failure: waited out (a backoff that grows
/// to 5 minutes) until `COMMENT_MAX_AGE_SECS`, not counted against `COMMENT_MAX_ATTEMPTS`.
/// Bitbucket Cloud's limit lasts up to an hour and names no wait; each 429 counted as an
/// attempt, and with the default 20 the comments were given up after about half an hour.
#[tokio::test]
async fn a_429_naming_no_wait_does_not_count_against_the_attempts() {
    let (api_addr, api) = start_fake_api().await;
    *api.limited_for.lock().unwrap() = Some((Duration::from_millis(1200), None, || {
        StatusCode::TOO_MANY_REQUESTS.into_response()
    }));
    let (base, state) = start_server(&settings(api_addr, &[("COMMENT_MAX_ATTEMPTS", "2")])).await;
    let client = crate::client::new();
    send_accepted(
        &client,
        &base,
        app::Forge::Bitbucket,
        "e6100000-0000-4000-8000-00000000000",
        41,
        1,
    )
    .await;
    eventually("the comment", PATIENCE, || comment_count(&api) == 1).await;
    // Refused twice or more within the 1.2 s, then posted.
    assert!(api.requests.load(Ordering::SeqCst) >= 3);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 0);
}

/// GitHub also turns comments away with `422 Validation Failed`, "was submitted too quickly",
/// a secondary limit it documents nowhere else: waited out as one, not a comment refused for
/// good (with every comment after it meeting the same answer).
#[tokio::test]
async fn a_github_comment_submitted_too_quickly_is_waited_out() {
    comment_waits_after_one_attempt(
        app::Forge::GitHub,
        || {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                [("content-type", "application/json")],
                r#"{"message":"Validation Failed","errors":[{"resource":"IssueComment","code":"unprocessable","field":"data","message":"was submitted too quickly"}],"documentation_url":"https://docs.github.com/rest/issues/comments#create-an-issue-comment","status":"422"}"#,
            )
                .into_response()
        },
        "ab000000-0000-4000-8000-000000000422",
    )
    .await;
}

/// A comment held back by a wait longer than it may still be tried is given up at once, as
/// the comment that met the wait is, not posted past `COMMENT_MAX_AGE_SECS`.
#[tokio::test]
async fn a_comment_held_back_past_its_max_age_is_given_up() {
    let (api_addr, api) = start_fake_api().await;
    *api.limited_for.lock().unwrap() = Some((Duration::from_secs(10), None, primary_limit));
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "1"),
            ("GITHUB_COMMENT_INTERVAL_MS", "0"),
            ("COMMENT_MAX_AGE_SECS", "1"),
        ],
    ))
    .await;
    let client = crate::client::new();
    send_accepted(
        &client,
        &base,
        app::Forge::GitHub,
        "e7000000-0000-4000-8000-00000000000",
        50,
        2,
    )
    .await;
    // At once, not when the 10 s wait ends.
    eventually("both given up", Duration::from_secs(5), || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 1);
    assert_eq!(comment_count(&api), 0);
}

/// GitHub's comments are sent a `GITHUB_COMMENT_INTERVAL_MS` apart (a second by default), as
/// GitHub asks of clients that create content; other providers' are not spaced.
#[tokio::test]
async fn github_comments_are_sent_an_interval_apart() {
    let (api_addr, api) = start_fake_api().await;
    let (base, _state) = start_server(&settings(
        api_addr,
        &[("GITHUB_COMMENT_INTERVAL_MS", "1000")],
    ))
    .await;
    let client = crate::client::new();
    send_accepted(
        &client,
        &base,
        app::Forge::GitHub,
        "e4000000-0000-4000-8000-00000000000",
        20,
        3,
    )
    .await;
    eventually("three comments", PATIENCE, || comment_count(&api) == 3).await;
    let arrived = api.arrived.lock().unwrap().clone();
    for pair in arrived.windows(2) {
        let gap = pair[1] - pair[0];
        // Sent 1 s apart; they may arrive closer (the first one also opened the connection).
        assert!(gap >= Duration::from_millis(500), "{gap:?} apart");
    }
    // GitLab's are not spaced (spaced as GitHub's, three would take 2 s).
    api.arrived.lock().unwrap().clear();
    send_accepted(
        &client,
        &base,
        app::Forge::GitLab,
        "e5000000-0000-4000-8000-00000000000",
        30,
        3,
    )
    .await;
    eventually("three more comments", PATIENCE, || comment_count(&api) == 6).await;
    let arrived = api.arrived.lock().unwrap().clone();
    let spread = arrived[2] - arrived[0];
    assert!(spread < Duration::from_millis(1500), "{spread:?} for three");
}

#[tokio::test]
async fn a_comment_is_given_up_rather_than_tried_after_its_max_age() {
    let (api_addr, api) = start_fake_api().await;
    // Rate limited with `Retry-After: 1`, for good.
    api.rate_limited.store(usize::MAX, Ordering::SeqCst);
    let (base, state) = start_server(&settings(api_addr, &[("COMMENT_MAX_AGE_SECS", "1")])).await;
    let client = crate::client::new();

    let d = delivery(
        app::Forge::GitLab,
        "e2000000-0000-4000-8000-000000000001",
        4,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    // The next attempt would come after the age limit: the comment is given up at once.
    eventually("the comment given up", PATIENCE, || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 1, "one attempt");
    assert_eq!(comment_count(&api), 0);
}

/// A provider API that never answers.
async fn start_stalled_api() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .fallback(|State(calls): State<Arc<AtomicUsize>>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::CREATED
        })
        .with_state(calls.clone());
    (serve(router).await, calls)
}

/// Sends GitHub deliveries for pull requests 1 to `count` (delivery ids starting with `prefix`),
/// each accepted.
async fn send_pull_requests(client: &reqwest::Client, base: &str, prefix: &str, count: u64) {
    for pr in 1..=count {
        let d = delivery(
            app::Forge::GitHub,
            &format!("{prefix}-0000-4000-8000-{pr:012}"),
            pr,
        );
        assert_eq!(send(client, base, &d).await.status(), StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn a_stalled_provider_does_not_hold_up_the_comments_of_another() {
    let (api_addr, api) = start_fake_api().await;
    let (stalled_addr, stalled_calls) = start_stalled_api().await;
    let github = format!("http://{stalled_addr}");
    let (base, state) =
        start_server(&settings(api_addr, &[("GITHUB_API_URL", github.as_str())])).await;
    let client = crate::client::new();

    // More GitHub comments than the server ever posts at once, all stuck upstream.
    send_pull_requests(&client, &base, "e3000000", 24).await;
    eventually("GitHub's slots taken", PATIENCE, || {
        stalled_calls.load(Ordering::SeqCst) >= 8
    })
    .await;

    // GitLab's comment still goes out at once.
    let started = Instant::now();
    let d = delivery(
        app::Forge::GitLab,
        "e3000000-0000-4000-8000-100000000000",
        5,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("GitLab's comment", PATIENCE, || comment_count(&api) == 1).await;
    // At once: GitHub's comments stall for an hour.
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(
        api.comments.lock().unwrap()[0].0,
        "/projects/42/merge_requests/5/notes"
    );
    // GitHub's comments are still pending, not lost.
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 24);
}

#[tokio::test]
async fn comments_in_flight_per_provider_is_a_setting() {
    let (api_addr, _api) = start_fake_api().await;
    let (stalled_addr, stalled_calls) = start_stalled_api().await;
    let github = format!("http://{stalled_addr}");
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("GITHUB_API_URL", github.as_str()),
            ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "2"),
        ],
    ))
    .await;
    let client = crate::client::new();
    send_pull_requests(&client, &base, "e4000000", 5).await;
    eventually("two of GitHub's comments in flight", PATIENCE, || {
        stalled_calls.load(Ordering::SeqCst) == 2
    })
    .await;
    // No third one goes out while the first two are stuck.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stalled_calls.load(Ordering::SeqCst), 2);
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 5);
}

/// A server whose provider API fails, with one comment pending after a failed attempt.
async fn a_comment_pending(
    forge: app::Forge,
    id: &str,
    pr: u64,
) -> (Arc<FakeApi>, Arc<app::AppState>) {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(
        api_addr,
        &[("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "100")],
    ))
    .await;
    // Nothing pending: no wait.
    assert_eq!(state.drain_comments(Duration::from_secs(60)).await, 0);
    let res = send(&crate::client::new(), &base, &delivery(forge, id, pr)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    eventually("a failed attempt", PATIENCE, || {
        api.requests.load(Ordering::SeqCst) >= 1
    })
    .await;
    // The grace passes with the comment still pending.
    assert_eq!(state.drain_comments(Duration::from_millis(50)).await, 1);
    (api, state)
}

/// At shutdown, pending comments get `SHUTDOWN_GRACE_SECS` to be posted.
#[tokio::test]
async fn a_pending_comment_is_posted_during_the_shutdown_grace() {
    let (api, state) = a_comment_pending(
        app::Forge::GitHub,
        "f1000000-0000-4000-8000-000000000001",
        61,
    )
    .await;
    // The API recovers during the grace: the drain ends when the comment is posted, long
    // before the grace is over.
    api.failing.store(false, Ordering::SeqCst);
    let start = Instant::now();
    assert_eq!(state.drain_comments(Duration::from_secs(30)).await, 0);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(comment_count(&api), 1);
}

/// When the shutdown's grace starts, each pending comment is logged with its delivery: a
/// process stopped before the grace is over (`docker stop` kills after 10 s, and the grace is
/// 20 s) used to leave no record of them.
#[tokio::test]
async fn pending_comments_are_logged_when_the_shutdown_grace_starts() {
    let (logs, _guard) = support::Logs::capture();
    let id = "f4000000-0000-4000-8000-000000000004";
    let pending = |text: &str| {
        text.lines()
            .filter(|line| line.contains("comment pending at shutdown") && line.contains(id))
            .count()
    };
    // Drained once already, for 50 ms: logged then.
    let (_api, state) = a_comment_pending(app::Forge::GitHub, id, 64).await;
    assert_eq!(pending(&logs.text()), 1, "{}", logs.text());
    let draining = tokio::spawn({
        let state = Arc::clone(&state);
        async move { state.drain_comments(Duration::from_secs(60)).await }
    });
    eventually("the pending comment logged", PATIENCE, || {
        pending(&logs.text()) == 2
    })
    .await;
    assert!(!draining.is_finished(), "logged as the grace starts");
    let line = logs.text();
    let line = line.lines().find(|l| l.contains(id)).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("octo/repo#64"), "{line}");
    draining.abort();
}

/// A comment still pending when the process exits is logged with its delivery id.
#[test]
fn a_comment_left_at_exit_is_logged_with_its_delivery() {
    let logs = support::Logs::global();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = "f2000000-0000-4000-8000-000000000002";
    runtime.block_on(a_comment_pending(app::Forge::GitLab, id, 62));
    // Other tests of this binary may log comments of their own: this one is found by its id.
    let left = |text: &str| {
        text.lines()
            .find(|line| line.contains("comment not posted") && line.contains(id))
            .map(str::to_owned)
    };
    assert_eq!(left(&logs.text()), None, "logged before the exit");
    drop(runtime);
    let text = logs.text();
    let line = left(&text).unwrap_or_else(|| panic!("no log of the comment left: {text}"));
    assert!(line.contains("project 42!62"), "{line}");
    assert!(line.contains("ERROR"), "{line}");
}

/// A comment still in the queue, not yet taken by the worker, when the process exits is
/// logged too. On a current-thread runtime the worker does not run before the handler's answer
/// is back unless the test yields, so the job is still queued when the runtime goes.
#[test]
fn a_comment_still_queued_at_exit_is_logged_with_its_delivery() {
    use tower::ServiceExt;
    let logs = support::Logs::global();
    let id = "f3000000-0000-4000-8000-000000000003";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let api: SocketAddr = ([127, 0, 0, 1], 9).into();
        let app = app::build(&settings(api, &[])).unwrap();
        let d = delivery(app::Forge::GitHub, id, 63);
        let mut req = http::Request::post(d.route)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(d.body.clone()))
            .unwrap();
        for (name, value) in &d.headers {
            req.headers_mut()
                .insert(*name, http::HeaderValue::from_str(value).unwrap());
        }
        let res = app.router.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(app.state.counters.pending.load(Ordering::SeqCst), 1);
    });
    drop(runtime);
    let text = logs.text();
    assert!(
        text.lines()
            .any(|line| line.contains("comment not posted") && line.contains(id)),
        "no log of the queued comment: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Settings.

#[test]
fn an_api_without_its_token_is_warned_about() {
    let api: SocketAddr = ([127, 0, 0, 1], 9).into();
    assert_eq!(settings(api, &[]).warnings(), Vec::<String>::new());
    let settings = settings(api, &[("GITLAB_TOKEN", ""), ("AZURE_DEVOPS_TOKEN", "")]);
    assert_eq!(
        settings.warnings(),
        [
            "GITLAB_API_URL is set without GITLAB_TOKEN: gitlab will refuse the comments",
            "AZURE_DEVOPS_API_URL is set without AZURE_DEVOPS_TOKEN: azuredevops will refuse the comments",
        ]
    );
}

#[test]
fn numeric_settings_refuse_zero_and_absurd_values() {
    for (name, value) in [
        ("REQUEST_TIMEOUT_SECS", "0"),
        ("REQUEST_TIMEOUT_SECS", "31536000000"),
        ("MAX_BODY_BYTES", "0"),
        ("MAX_BODY_BYTES", "18446744073709551615"),
        ("MAX_PENDING_COMMENTS", "0"),
        ("MAX_PENDING_COMMENTS", "4294967296"),
        ("COMMENT_MAX_ATTEMPTS", "0"),
        ("COMMENT_MAX_ATTEMPTS", "4294967296"),
        ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "0"),
        ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "257"),
        ("GITHUB_COMMENT_INTERVAL_MS", "60001"),
        ("GITHUB_COMMENT_INTERVAL_MS", "-1"),
        ("COMMENT_MAX_AGE_SECS", "0"),
        ("COMMENT_MAX_AGE_SECS", "18446744073709551615"),
        ("COMMENT_MAX_AGE_SECS", "-1"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "0"),
        ("MAX_REMEMBERED_DRAFTS", "0"),
        ("MAX_REMEMBERED_DRAFTS", "1048577"),
    ] {
        refused_naming_it(name, value);
    }

    let settings = app::Settings::from_lookup(|n| {
        match n {
            "REQUEST_TIMEOUT_SECS" => Some("1"),
            "MAX_BODY_BYTES" => Some("1024"),
            "COMMENT_MAX_ATTEMPTS" => Some("1"),
            "COMMENT_MAX_AGE_SECS" => Some("60"),
            _ => None,
        }
        .map(str::to_owned)
    })
    .unwrap();
    assert_eq!(settings.request_timeout, Duration::from_secs(1));
    assert_eq!(settings.max_body_bytes, 1024);
    assert_eq!(settings.comment_max_attempts, 1);
    assert_eq!(settings.comment_max_age, Duration::from_secs(60));

    let defaults = app::Settings::from_lookup(|_| None).unwrap();
    assert_eq!(defaults.request_timeout, Duration::from_secs(10));
    assert_eq!(defaults.comment_max_attempts, 20);
    assert_eq!(defaults.comment_max_age, Duration::from_secs(24 * 3600));
    assert_eq!(defaults.comments_in_flight_per_provider, 8);
    assert_eq!(defaults.github_comment_interval, Duration::from_secs(1));
    assert_eq!(defaults.max_remembered_drafts, 10_000);
}

// ---------------------------------------------------------------------------------------------
// Which events get a comment.

#[test]
fn a_comment_when_a_pull_request_becomes_ready_for_review_on_every_provider() {
    use app::Forge::*;
    let gh = |action: &str, draft: bool| json!({"action": action, "number": 1, "pull_request": {"number": 1, "title": "T", "draft": draft}, "repository": {"full_name": "o/r"}});
    let gl = |action: &str, draft: bool, changes: Value| json!({"object_kind": "merge_request", "project": {"id": 1}, "object_attributes": {"iid": 1, "action": action, "title": "T", "draft": draft}, "changes": changes});
    let bb = |draft: bool| json!({"pullrequest": {"id": 1, "title": "T", "draft": draft}, "repository": {"full_name": "t/r"}});
    let bbs = |draft: bool| json!({"pullRequest": {"id": 3, "title": "T", "draft": draft, "toRef": {"repository": {"slug": "my-repo", "project": {"key": "PRJ"}}}}});
    let gitea_edit = |from: &str, title: &str, draft: Option<bool>| {
        let mut p = json!({"action": "edited", "number": 1, "pull_request": {"number": 1, "title": title}, "changes": {"title": {"from": from}}, "repository": {"full_name": "o/r"}});
        if let Some(draft) = draft {
            p["pull_request"]["draft"] = json!(draft);
        }
        p
    };
    let gitea_state = |state: &str| {
        let mut p = gitea_edit("WIP: T", "T", Some(false));
        p["pull_request"]["state"] = json!(state);
        p
    };
    let gl_state = |state: &str| {
        let mut p = gl(
            "update",
            false,
            json!({"draft": {"previous": true, "current": false}}),
        );
        p["object_attributes"]["state"] = json!(state);
        p
    };
    let ado = |event: &str, draft: bool| json!({"eventType": event, "resource": {"pullRequestId": 1, "title": "T", "isDraft": draft, "repository": {"id": "r", "project": {"id": "p"}}}});
    let comments = |forge, event: &str, payload: &Value| {
        app::comment_for(forge, Some(event), payload).is_some()
    };
    let no_changes = json!({});
    let ready = json!({"draft": {"previous": true, "current": false}});
    let to_draft = json!({"draft": {"previous": false, "current": true}});

    let cases = [
        // GitHub.
        (GitHub, "pull_request", gh("opened", false), true),
        (GitHub, "pull_request", gh("reopened", false), true),
        (GitHub, "pull_request", gh("ready_for_review", false), true),
        (GitHub, "pull_request", gh("opened", true), false),
        (GitHub, "pull_request", gh("reopened", true), false),
        (GitHub, "pull_request", gh("synchronize", false), false),
        (GitHub, "pull_request", gh("closed", false), false),
        (GitHub, "issues", gh("opened", false), false),
        // GitLab.
        (
            GitLab,
            "Merge Request Hook",
            gl("open", false, no_changes.clone()),
            true,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("reopen", false, no_changes.clone()),
            true,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("update", false, ready),
            true,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("open", true, no_changes.clone()),
            false,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("reopen", true, no_changes.clone()),
            false,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("update", true, to_draft),
            false,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("update", false, no_changes.clone()),
            false,
        ),
        (
            GitLab,
            "Merge Request Hook",
            gl("close", false, no_changes),
            false,
        ),
        (GitLab, "Merge Request Hook", gl_state("opened"), true),
        (GitLab, "Merge Request Hook", gl_state("merged"), false),
        (GitLab, "Merge Request Hook", gl_state("closed"), false),
        // Bitbucket Cloud.
        (Bitbucket, "pullrequest:created", bb(false), true),
        (Bitbucket, "pullrequest:created", bb(true), false),
        (Bitbucket, "pullrequest:updated", bb(false), false),
        // Bitbucket Data Center.
        (BitbucketServer, "pr:opened", bbs(false), true),
        (BitbucketServer, "pr:opened", bbs(true), false),
        (BitbucketServer, "pr:modified", bbs(false), false),
        (BitbucketServer, "pr:from_ref_updated", bbs(false), false),
        // Gitea.
        (Gitea, "pull_request", gh("opened", false), true),
        (Gitea, "pull_request", gh("reopened", false), true),
        (Gitea, "pull_request", gh("opened", true), false),
        (Gitea, "pull_request", gh("synchronized", false), false),
        (Gitea, "pull_request", gh("closed", false), false),
        // Gitea: a draft is a title prefix; marked ready, the title loses it.
        (Gitea, "pull_request", gitea_edit("WIP: T", "T", None), true),
        (
            Gitea,
            "pull_request",
            gitea_edit("[wip] T", "T", Some(false)),
            true,
        ),
        (Gitea, "pull_request", gitea_edit("wip:T", "T", None), true),
        (
            Gitea,
            "pull_request",
            gitea_edit("WIP: T", "[WIP] T", None),
            false,
        ),
        (
            Gitea,
            "pull_request",
            gitea_edit("WIP: T", "T", Some(true)),
            false,
        ),
        (
            Gitea,
            "pull_request",
            gitea_edit("T", "WIP: T", Some(true)),
            false,
        ),
        (Gitea, "pull_request", gitea_edit("Old", "T", None), false),
        (Gitea, "pull_request", gh("edited", false), false),
        (Gitea, "pull_request", gitea_edit("WIP:", "T", None), true),
        (Gitea, "pull_request", gitea_edit("WI", "T", None), false),
        (Gitea, "pull_request", gitea_edit("é", "T", None), false),
        (Gitea, "pull_request", gitea_state("open"), true),
        (Gitea, "pull_request", gitea_state("closed"), false),
        // Azure DevOps.
        (
            AzureDevOps,
            "-",
            ado("git.pullrequest.created", false),
            true,
        ),
        (
            AzureDevOps,
            "-",
            ado("git.pullrequest.created", true),
            false,
        ),
        (
            AzureDevOps,
            "-",
            ado("git.pullrequest.updated", false),
            false,
        ),
    ];
    for (forge, event, payload, expected) in &cases {
        assert_eq!(
            comments(*forge, event, payload),
            *expected,
            "{forge:?} {event} {payload}"
        );
    }

    let c = app::comment_for(BitbucketServer, Some("pr:opened"), &bbs(false)).unwrap();
    assert_eq!(
        c.path,
        "/rest/api/1.0/projects/PRJ/repos/my-repo/pull-requests/3/comments"
    );
    assert!(
        c.body["text"].as_str().unwrap().contains("\"T\""),
        "{}",
        c.body
    );
}

#[test]
fn a_command_is_the_first_line_of_a_comment_and_no_answer_is_a_command() {
    for (comment, answer) in [
        ("/review", Some("Queued `/review` of \"T\".")),
        (
            "  \n\n  /describe  \nmore text",
            Some("Queued `/describe` of \"T\"."),
        ),
        ("/improve\tplease", Some("Queued `/improve` of \"T\".")),
        (
            "/ask  Why is this lock needed? ",
            Some("Queued `/ask` about \"T\":\n\n> Why is this lock needed?"),
        ),
        (
            "/ask",
            Some("A question is missing: `/ask Why is this lock needed?`"),
        ),
        ("/help", Some(&*format!("Commands: {}.", app::COMMANDS))),
        // Not commands, or not ours.
        ("LGTM", None),
        ("please /review", None),
        ("/reviewer", None),
        ("/REVIEW", None),
        ("/approve", None),
        ("/", None),
        ("", None),
        ("\n  \n", None),
    ] {
        assert_eq!(
            app::answer_to_command(comment, "T").as_deref(),
            answer,
            "{comment:?}"
        );
    }

    // A long question is cut, on a character boundary.
    let long = format!("/ask {}", "é".repeat(500));
    let answer = app::answer_to_command(&long, "T").unwrap();
    assert!(
        answer.ends_with(&format!("> {}...", "é".repeat(200))),
        "{answer}"
    );

    // The server never answers itself: no answer is a command, whatever the comment.
    for command in [
        "/review",
        "/describe",
        "/improve",
        "/ask x",
        "/ask",
        "/help",
    ] {
        for title in ["T", "/review", "\n/review"] {
            let answer = app::answer_to_command(command, title).unwrap();
            assert_eq!(app::answer_to_command(&answer, title), None, "{answer}");
        }
    }
}

#[test]
fn only_new_comments_by_people_on_pull_requests_are_answered() {
    use app::Forge::*;
    let answered = |forge, event: &str, p: &Value| app::comment_for(forge, Some(event), p);
    let gh = |edit: &dyn Fn(&mut Value)| {
        let mut p = json!({"action": "created", "issue": {"number": 7, "title": "T", "pull_request": {"url": "-"}}, "comment": {"body": "/review", "user": {"type": "User"}}, "repository": {"full_name": "o/r"}, "sender": {"type": "User"}});
        edit(&mut p);
        p
    };
    let c = answered(GitHub, "issue_comment", &gh(&|_| {})).unwrap();
    assert_eq!(c.path, "/repos/o/r/issues/7/comments");
    assert_eq!(c.body["body"], "Queued `/review` of \"T\".");
    for (why, p) in [
        ("edited", gh(&|p| p["action"] = json!("edited"))),
        ("deleted", gh(&|p| p["action"] = json!("deleted"))),
        (
            "on an issue",
            gh(&|p| {
                p["issue"]
                    .as_object_mut()
                    .unwrap()
                    .remove("pull_request")
                    .map(drop)
                    .unwrap()
            }),
        ),
        (
            "by a bot",
            gh(&|p| p["comment"]["user"]["type"] = json!("Bot")),
        ),
        ("sent by a bot", gh(&|p| p["sender"]["type"] = json!("Bot"))),
        (
            "not a command",
            gh(&|p| p["comment"]["body"] = json!("nice")),
        ),
    ] {
        assert!(answered(GitHub, "issue_comment", &p).is_none(), "{why}");
    }
    assert!(answered(GitHub, "pull_request_review_comment", &gh(&|_| {})).is_none());

    let gl = |edit: &dyn Fn(&mut Value)| {
        let mut p = json!({"object_kind": "note", "project": {"id": 5}, "user": {"username": "dev"}, "object_attributes": {"note": "/help", "noteable_type": "MergeRequest"}, "merge_request": {"iid": 3, "title": "T"}});
        edit(&mut p);
        p
    };
    // Older servers send neither `action` nor `system`, and `project` instead of `project_id`.
    let c = answered(GitLab, "Note Hook", &gl(&|_| {})).unwrap();
    assert_eq!(c.path, "/projects/5/merge_requests/3/notes");
    assert!(
        answered(
            GitLab,
            "Note Hook",
            &gl(&|p| p["object_attributes"]["action"] = json!("create"))
        )
        .is_some()
    );
    for (why, p) in [
        (
            "updated",
            gl(&|p| p["object_attributes"]["action"] = json!("update")),
        ),
        (
            "a system note",
            gl(&|p| p["object_attributes"]["system"] = json!(true)),
        ),
        ("by a bot", gl(&|p| p["user"]["bot"] = json!(true))),
        (
            "on an issue",
            gl(&|p| p["object_attributes"]["noteable_type"] = json!("Issue")),
        ),
        (
            "on a commit",
            gl(&|p| p["object_attributes"]["noteable_type"] = json!("Commit")),
        ),
    ] {
        assert!(answered(GitLab, "Note Hook", &p).is_none(), "{why}");
    }

    let gitea = |is_pull: bool| json!({"action": "created", "is_pull": is_pull, "issue": {"number": 4, "title": "T"}, "comment": {"body": "/review"}, "repository": {"full_name": "o/r"}});
    assert!(answered(Gitea, "issue_comment", &gitea(true)).is_some());
    assert!(answered(Gitea, "issue_comment", &gitea(false)).is_none());

    let bb = |actor: &str| json!({"actor": {"type": actor}, "comment": {"id": 11, "content": {"raw": "/review"}}, "pullrequest": {"id": 2, "title": "T"}, "repository": {"full_name": "t/r"}});
    let c = answered(Bitbucket, "pullrequest:comment_created", &bb("user")).unwrap();
    assert_eq!(c.body["parent"]["id"], 11, "a reply to the command");
    assert!(answered(Bitbucket, "pullrequest:comment_created", &bb("app_user")).is_none());
    assert!(answered(Bitbucket, "pullrequest:comment_updated", &bb("user")).is_none());

    let bbs = json!({"comment": {"id": 12, "text": "/review"}, "pullRequest": {"id": 3, "title": "T", "toRef": {"repository": {"slug": "s", "project": {"key": "P"}}}}});
    let c = answered(BitbucketServer, "pr:comment:added", &bbs).unwrap();
    assert_eq!(
        c.path,
        "/rest/api/1.0/projects/P/repos/s/pull-requests/3/comments"
    );
    assert_eq!(c.body["parent"]["id"], 12);
    assert!(answered(BitbucketServer, "pr:comment:edited", &bbs).is_none());

    let ado = |kind: &str| json!({"eventType": "ms.vss-code.git-pullrequest-comment-event", "resource": {"comment": {"content": "/review", "commentType": kind}, "pullRequest": {"pullRequestId": 1, "title": "T", "repository": {"id": "r", "project": {"id": "p"}}}}});
    let c = answered(AzureDevOps, "-", &ado("text")).unwrap();
    assert_eq!(
        c.path,
        "/p/_apis/git/repositories/r/pullRequests/1/threads?api-version=5.0"
    );
    assert!(answered(AzureDevOps, "-", &ado("system")).is_none());
}

#[tokio::test]
async fn a_command_gets_one_answer_on_every_provider_and_the_answer_gets_none() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let mut sent = 0u32;
    let mut send_comment = async |forge, pr, text: &str| {
        sent += 1;
        let id = format!("c0000000-0000-4000-8000-{sent:012}");
        let res = send(&client, &base, &comment_delivery(forge, &id, pr, text)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{forge:?} {text}");
    };
    for (pr, forge) in (30..).zip(app::Forge::ALL) {
        send_comment(forge, pr, "/review").await;
        send_comment(forge, pr, "LGTM").await;
    }
    eventually("six answers", PATIENCE, || comment_count(&api) == 6).await;
    let answers = api.comments.lock().unwrap().clone();
    for forge in app::Forge::ALL {
        let marker = match forge {
            app::Forge::GitHub => "/repos/octo/repo/",
            app::Forge::GitLab => "/projects/42/",
            app::Forge::Bitbucket => "/repositories/team/repo/",
            app::Forge::BitbucketServer => "/projects/PROJ/",
            app::Forge::Gitea => "/repos/org/repo/",
            app::Forge::AzureDevOps => "/repo-guid/",
        };
        let (_, _, body) = answers
            .iter()
            .find(|(path, _, _)| path.contains(marker))
            .unwrap_or_else(|| panic!("no answer for {forge:?} in {answers:?}"));
        let text = [
            &body["body"],
            &body["content"]["raw"],
            &body["text"],
            &body["comments"][0]["content"],
        ]
        .into_iter()
        .find_map(Value::as_str)
        .unwrap_or_else(|| panic!("no text in {body}"));
        assert_eq!(text, "Queued `/review` of \"Fix\".", "{forge:?}");
        // The provider delivers the server's own comment back: it asks for nothing.
        send_comment(forge, 99, text).await;
    }
    // Every delivery was answered 202 and handled before its answer: only the six commands
    // were queued.
    assert_eq!(state.counters.jobs.load(Ordering::SeqCst), 6);
    assert_eq!(comment_count(&api), 6);
}

#[tokio::test]
async fn a_bitbucket_data_center_opened_and_a_gitea_reopened_pull_request_get_a_comment() {
    let (api_addr, api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();

    // Bitbucket Data Center `pr:opened`, signed, with its `X-Request-Id` as the delivery id.
    let d = delivery(
        app::Forge::BitbucketServer,
        "e4000000-0000-4000-8000-000000000001",
        12,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::OK,
        "a duplicate is acknowledged"
    );

    // Gitea `reopened`.
    let body = json!({"action": "reopened", "number": 13, "pull_request": {"number": 13, "title": "Again"}, "repository": {"full_name": "org/repo"}}).to_string();
    let res = client
        .post(format!("{base}/api/v1/gitea_webhooks"))
        .header("content-type", "application/json")
        .header("x-gitea-event", "pull_request")
        .header("x-gitea-delivery", "e4000000-0000-4000-8000-000000000002")
        .header("x-gitea-signature", hmac_hex(GT, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    eventually("two comments", PATIENCE, || comment_count(&api) == 2).await;
    let comments = api.comments.lock().unwrap().clone();
    let dc = comments
        .iter()
        .find(|(p, _, _)| p == "/rest/api/1.0/projects/PROJ/repos/repo/pull-requests/12/comments")
        .expect("the Bitbucket Data Center comment");
    assert_eq!(dc.1["authorization"], "Bearer bbs-token");
    assert!(
        dc.2["text"]
            .as_str()
            .is_some_and(|t| t.contains("Thanks for the pull request")),
        "{}",
        dc.2
    );
    let gitea = comments
        .iter()
        .find(|(p, _, _)| p == "/repos/org/repo/issues/13/comments")
        .expect("the Gitea comment");
    assert!(gitea.2["body"].as_str().unwrap().contains("Again"));
}

#[tokio::test]
async fn a_delivery_larger_than_axums_default_body_limit_is_accepted() {
    // MAX_BODY_BYTES is 25 MiB by default; axum's extractors stop at 2 MB unless told otherwise.
    let (api_addr, _api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let padding = "x".repeat(3 << 20);
    let body = json!({"action": "opened", "number": 9, "pull_request": {"number": 9, "title": "Fix", "body": padding}, "repository": {"full_name": "octo/repo"}}).to_string().into_bytes();
    let d = Delivery {
        route: "/api/v1/github_webhooks",
        headers: vec![
            ("x-github-event", "pull_request".into()),
            (
                "x-github-delivery",
                "5e1f3c2a-0d4b-4a6e-8f9c-3b2a1d0e9f8c".into(),
            ),
            (
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex("gh-secret-new", &body)),
            ),
        ],
        body,
    };
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    // Past MAX_BODY_BYTES the layer still refuses it.
    let (base, _) = start_server(&settings(api_addr, &[("MAX_BODY_BYTES", "1048576")])).await;
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

/// Sends a GitHub delivery whose 100-byte body never arrives to a server with
/// `REQUEST_TIMEOUT_SECS=timeout_secs`, one space every 200 ms when `trickle` (else nothing),
/// and reads the answer. The signature has the right shape: the body must be read before it can
/// be checked.
async fn slow_body_delivery(timeout_secs: &str, trickle: bool) -> (String, Arc<FakeApi>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (api_addr, api) = start_fake_api().await;
    let (base, _) = start_server(&settings(
        api_addr,
        &[("REQUEST_TIMEOUT_SECS", timeout_secs)],
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: x\r\nx-github-event: ping\r\nx-github-delivery: 7a1c\r\nx-hub-signature-256: sha256={}\r\ncontent-length: 100\r\n\r\n{{\"zen\":",
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut res = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                n = stream.read(&mut chunk) => {
                    let n = n.unwrap();
                    res.extend_from_slice(&chunk[..n]);
                    if n == 0 || String::from_utf8_lossy(&res).contains('}') {
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(200)), if trickle => {
                    let _ = stream.write_all(b" ").await;
                }
            }
        }
    })
    .await
    .expect("an answer before the client gives up");
    (String::from_utf8_lossy(&res).into_owned(), api)
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_a_408() {
    // Body idle timeout: half of REQUEST_TIMEOUT_SECS, 1 s here.
    let (res, api) = slow_body_delivery("2", false).await;
    assert!(res.starts_with("HTTP/1.1 408 "), "{res}");
    assert!(res.contains("urn:tower-webhook:problem:timeout"), "{res}");
    assert_eq!(comment_count(&api), 0);
}

#[tokio::test]
async fn errors_raised_inside_the_stack_carry_the_request_id() {
    // A body that keeps trickling in: the body timeout (0.5 s without data) never fires, the
    // request's deadline (1 s) does, inside the stack: 504.
    let (res, _) = slow_body_delivery("1", true).await;
    assert!(res.starts_with("HTTP/1.1 504 "), "{res}");
    let id = res
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id: {res}"))
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert!(res.contains(&format!(r#""instance":"{id}""#)), "{res}");
}

/// The tunnel's `Up` event at `url`.
fn up_at(url: &str) -> tower_webhook::tunnel::TunnelEvent {
    tower_webhook::tunnel::TunnelEvent::Up {
        provider: "bore".to_owned(),
        url: url.to_owned(),
        verified: true,
    }
}

/// The tunnel's `Closed` event, its last URL `url`.
fn closed_at(url: &str) -> tower_webhook::tunnel::TunnelEvent {
    tower_webhook::tunnel::TunnelEvent::Closed {
        provider: "bore".to_owned(),
        url: url.to_owned(),
    }
}

/// A fake GitHub for hook updates: the `n`-th `GET` of a hook's config (from 0) is answered
/// `read(n)`, any other request 200. Its address, the bodies of the `PATCH`es it got, and how
/// many reads it answered.
async fn hook_github(
    read: fn(usize) -> Response,
) -> (SocketAddr, Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>) {
    let patched: Arc<Mutex<Vec<Value>>> = Arc::default();
    let reads = Arc::new(AtomicUsize::new(0));
    let (seen, counted) = (patched.clone(), reads.clone());
    let github = serve(Router::new().fallback(
        move |method: http::Method, body: axum::body::Bytes| {
            let answer = match method {
                http::Method::GET => Some(read(counted.fetch_add(1, Ordering::SeqCst))),
                _ => {
                    if method == http::Method::PATCH {
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                    }
                    None
                }
            };
            async move { answer.unwrap_or_else(|| StatusCode::OK.into_response()) }
        },
    ))
    .await;
    (github, patched, reads)
}

/// A repository hook that followed the tunnel is pointed back at the URL it had before once
/// the tunnel is closed: a hook that also serves elsewhere (a production app's) does not keep
/// delivering to a tunnel that is gone. Before, it stayed on the last tunnel URL. A hook whose
/// URL could not be read is left where it is.
#[tokio::test]
async fn a_hook_that_followed_the_tunnel_is_pointed_back_when_it_closes() {
    let (logs, _guard) = support::Logs::capture();
    let (github, patched, _) = hook_github(|_| hook_config()).await;
    let tx = follow_hook_at(github).await;
    eventually("the hook points at the tunnel", PATIENCE, || {
        patched.lock().unwrap().len() == 1
    })
    .await;
    tx.send(closed_at("http://127.0.0.1:4000")).unwrap();
    eventually("the hook pointed back", PATIENCE, || {
        patched.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        *patched.lock().unwrap(),
        [
            json!({"url": "http://127.0.0.1:4000/api/v1/github_webhooks"}),
            json!({ "url": HOOK_URL_BEFORE }),
        ]
    );
    let text = logs.text();
    assert!(
        text.contains("pointed back at the URL it had before"),
        "{text}"
    );
    // Its scheme and host only: a hook URL's path may hold its token (a smee.io channel).
    assert!(text.contains("url=https://hooks.example.com/..."), "{text}");
    assert!(!text.contains("hooks.example.com/github"), "{text}");

    // GitHub does not say where the hook pointed: it stays on the tunnel's URL, with a warning.
    let (github, patched, _) = hook_github(|_| StatusCode::NOT_FOUND.into_response()).await;
    let tx = follow_hook_at(github).await;
    eventually("the hook points at the tunnel", PATIENCE, || {
        patched.lock().unwrap().len() == 1
    })
    .await;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(patched.lock().unwrap().len(), 1);
    let text = logs.text();
    assert!(
        text.contains("could not read the GitHub hook's URL: it is not pointed back"),
        "{text}"
    );
}

/// The hook's URL could not be read at first (GitHub answered 503): the hook is not moved yet;
/// the read and the update are tried again together, and the hook is still pointed back.
#[tokio::test]
async fn a_hook_whose_url_could_not_be_read_yet_is_read_again_before_it_moves() {
    // The first attempt's read and its 3 retries are refused.
    let (github, patched, reads) = hook_github(|n| match n {
        0..4 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => hook_config(),
    })
    .await;
    let tx = follow_hook_at(github).await;
    eventually("the hook points at the tunnel", PATIENCE, || {
        patched.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        5,
        "read again before it moved"
    );
    tx.send(closed_at("http://127.0.0.1:4000")).unwrap();
    eventually("the hook pointed back", PATIENCE, || {
        patched.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        patched.lock().unwrap()[1],
        json!({ "url": HOOK_URL_BEFORE })
    );
}

/// The hook updater of `octo/repo`'s hook 42 on the GitHub API at `github`, following a tunnel
/// that is up at `http://127.0.0.1:4000`: the sender of the tunnel's status.
async fn follow_hook_at(
    github: std::net::SocketAddr,
) -> tokio::sync::watch::Sender<tower_webhook::tunnel::TunnelEvent> {
    let (api_addr, _api) = start_fake_api().await;
    let github = format!("http://{github}");
    let settings = settings(
        api_addr,
        &[
            ("GITHUB_API_URL", github.as_str()),
            ("GITHUB_HOOK_REPOSITORY", "octo/repo"),
            ("GITHUB_HOOK_ID", "42"),
        ],
    );
    let updater = app::build(&settings).unwrap().hook_updaters.remove(0);
    let (tx, rx) = tokio::sync::watch::channel(up_at("http://127.0.0.1:4000"));
    tokio::spawn(updater.follow(rx));
    tx
}

/// GitHub's answer to a request over a secondary rate limit that names no delay.
fn secondary_limit() -> Response {
    (
        StatusCode::FORBIDDEN,
        [("content-type", "application/json")],
        r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#,
    )
        .into_response()
}

/// A hook updater following a tunnel that is up at `http://127.0.0.1:4000`, against a fake GitHub
/// that answers `first` to the first request and 200 to the others: the count of requests and
/// the sender of the tunnel's status.
async fn follow_with_first_answer(
    first: fn() -> Response,
) -> (
    Arc<AtomicUsize>,
    tokio::sync::watch::Sender<tower_webhook::tunnel::TunnelEvent>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let github = serve(Router::new().fallback(move |method: http::Method| {
        // The config read before the first update is not counted.
        let call = (method != http::Method::GET).then(|| seen.fetch_add(1, Ordering::SeqCst));
        async move {
            match call {
                None => hook_config(),
                Some(0) => first(),
                Some(_) => StatusCode::OK.into_response(),
            }
        }
    }))
    .await;
    let tx = follow_hook_at(github).await;
    (calls, tx)
}

/// Waits (in paused time, `tries` steps of `step`) until `calls` reaches `n`.
async fn calls_reach(calls: &AtomicUsize, n: usize, step: Duration, tries: u32) {
    for _ in 0..tries {
        if calls.load(Ordering::SeqCst) >= n {
            break;
        }
        tokio::time::sleep(step).await;
    }
}

/// Waits (in paused time) for the hook updater's first request, and checks it was the only one.
async fn first_attempt_refused(calls: &AtomicUsize) {
    calls_reach(calls, 1, Duration::from_millis(10), 100).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the first attempt, refused"
    );
}

/// A hook update that meets a GitHub secondary rate limit without `retry-after` or
/// `x-ratelimit-remaining: 0` (a 403 whose message names it) is tried again after a minute, as a
/// comment is, instead of being given up until the tunnel's URL changes.
#[tokio::test(start_paused = true)]
async fn a_hook_update_over_a_secondary_rate_limit_is_tried_again() {
    let (calls, tx) = follow_with_first_answer(secondary_limit).await;
    // Virtual time: the minute passes at once once everything waits.
    calls_reach(&calls, 2, Duration::from_millis(500), 400).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the hook update is tried again after the rate limit"
    );
    drop(tx);
}

/// While a hook update waits out a rate limit, the tunnel drops and comes back at the same URL:
/// the wait GitHub asked for still holds.
#[tokio::test(start_paused = true)]
async fn a_tunnel_flap_does_not_cut_a_rate_limit_wait_short() {
    let (calls, tx) =
        follow_with_first_answer(|| StatusCode::TOO_MANY_REQUESTS.into_response()).await;
    first_attempt_refused(&calls).await;
    // A flap, ten seconds into the minute's wait.
    tokio::time::sleep(Duration::from_secs(10)).await;
    tx.send(tower_webhook::tunnel::TunnelEvent::Down {
        provider: "bore".to_owned(),
        url: "http://127.0.0.1:4000".to_owned(),
        reason: "flap".to_owned(),
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(up_at("http://127.0.0.1:4000")).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "still waiting");
    // After the minute, it is tried again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(tx);
}

/// `answer` with a `Retry-After` that is an HTTP date two minutes ahead (RFC 9110 allows a date
/// as well as delta-seconds).
fn retry_at_a_date(answer: StatusCode) -> Response {
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    (answer, [("retry-after", at)]).into_response()
}

/// A rate limit whose `Retry-After` is an HTTP date is waited out for as long as the date says:
/// a 429 not cut to the minute a 429 without a readable wait gets, a 403 not taken for a refusal.
#[tokio::test(start_paused = true)]
async fn a_retry_after_given_as_an_http_date_is_honoured() {
    let answers: [fn() -> Response; 2] = [
        || retry_at_a_date(StatusCode::TOO_MANY_REQUESTS),
        || retry_at_a_date(StatusCode::FORBIDDEN),
    ];
    for first in answers {
        let (calls, tx) = follow_with_first_answer(first).await;
        first_attempt_refused(&calls).await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "still waiting for the date"
        );
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "tried again at the date");
        drop(tx);
    }
}

// ---------------------------------------------------------------------------------------------
// A GitHub App: its hook follows the tunnel, authenticated with a token PyJWT accepts.

/// A fresh 2048-bit RSA key from Python's cryptography: PKCS#1 and PKCS#8 private PEMs, and the
/// public PEM.
fn app_key(python: &std::path::Path) -> (String, String, String) {
    let mut cmd = std::process::Command::new(python);
    cmd.arg(peers::root().join("tests/interop/github_app.py"));
    let key = peers::run(cmd, &json!({"op": "keygen"}));
    let pem = |k: &str| key[k].as_str().unwrap().to_owned();
    (pem("pkcs1"), pem("pkcs8"), pem("public"))
}

/// The claims of `jwt` once PyJWT has checked its RS256 signature against `public`, its issuer,
/// and its times as GitHub does; or why it refused the token.
fn verify_app_jwt(
    python: &std::path::Path,
    jwt: &str,
    public: &str,
    issuer: &str,
) -> Result<Value, String> {
    let mut cmd = std::process::Command::new(python);
    cmd.arg(peers::root().join("tests/interop/github_app.py"));
    let input = json!({"op": "verify", "jwt": jwt, "public": public, "issuer": issuer});
    peers::try_run(cmd, &input).map(|out| serde_json::from_slice(&out).unwrap())
}

/// The app hook updates the fake API received: authorization and body.
fn app_hook_updates(api: &FakeApi) -> Vec<(String, Value)> {
    api.comments
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, headers, _)| path == "/app/hook/config" && headers[":method"] == "PATCH")
        .map(|(_, headers, body)| (headers["authorization"].clone(), body.clone()))
        .collect()
}

/// With the app set and no `GITHUB_TOKEN`, a delivery that names no installation (a repository
/// hook's, with the same secret) has no credentials to comment with: it is logged as such, and
/// nothing is sent. Before, the comment went out without credentials, and was refused.
#[tokio::test]
async fn a_delivery_outside_the_app_without_a_token_is_not_commented_on_unauthenticated() {
    let Some(python) = peers::python() else {
        return;
    };
    let (logs, _guard) = support::Logs::capture();
    let (pkcs1, _, _) = app_key(&python);
    let (api_addr, api) = start_fake_api().await;
    let one_line = pkcs1.trim_end().replace('\n', "\\n");
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("GITHUB_APP_ID", "123456"),
            ("GITHUB_APP_PRIVATE_KEY", one_line.as_str()),
            ("GITHUB_TOKEN", ""),
        ],
    ))
    .await;
    let client = crate::client::new();
    let d = delivery(
        app::Forge::GitHub,
        "e1000000-0000-4000-8000-00000000001f",
        5,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the comment given up", PATIENCE, || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(comment_count(&api), 0);
    assert_eq!(api.requests.load(Ordering::SeqCst), 0);
    let text = logs.text();
    assert!(
        text.contains("names no installation of the app") && text.contains("set GITHUB_TOKEN"),
        "{text}"
    );
}

#[tokio::test]
async fn the_github_app_hook_follows_the_tunnel_with_tokens_pyjwt_accepts() {
    let Some(python) = peers::python() else {
        return;
    };
    let (pkcs1, pkcs8, public) = app_key(&python);
    let (api_addr, api) = start_fake_api().await;
    // The key on one line, as it often is in an environment variable.
    let one_line = pkcs1.trim_end().replace('\n', "\\n");
    let with_app = settings(
        api_addr,
        &[
            ("GITHUB_APP_ID", "123456"),
            ("GITHUB_APP_PRIVATE_KEY", one_line.as_str()),
        ],
    );
    let shown = format!("{with_app:?}");
    assert!(
        shown.contains("123456") && !shown.contains("PRIVATE KEY"),
        "{shown}"
    );
    // The app needs no GITHUB_TOKEN: nothing to warn about without one.
    let without_token = settings(
        api_addr,
        &[
            ("GITHUB_APP_ID", "123456"),
            ("GITHUB_APP_PRIVATE_KEY", one_line.as_str()),
            ("GITHUB_TOKEN", ""),
        ],
    );
    assert_eq!(without_token.warnings(), Vec::<String>::new());
    let mut updaters = app::build(&with_app).unwrap().hook_updaters;
    assert_eq!(updaters.len(), 1);
    let (tx, rx) = tokio::sync::watch::channel(up_at("http://127.0.0.1:4000"));
    tokio::spawn(updaters.remove(0).follow(rx));
    eventually("the app hook points at the tunnel", PATIENCE, || {
        !app_hook_updates(&api).is_empty()
    })
    .await;
    let (authorization, body) = app_hook_updates(&api).remove(0);
    assert_eq!(
        body,
        json!({"url": "http://127.0.0.1:4000/api/v1/github_webhooks"})
    );
    // As the app, not with the API token.
    let jwt = authorization.strip_prefix("Bearer ").unwrap();
    let claims = verify_app_jwt(&python, jwt, &public, "123456").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        (now - 70..=now - 50).contains(&iat),
        "issued a minute ago: {claims}"
    );
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 600, "{claims}");
    // The peer checks for real: one changed byte, another issuer or another key is refused.
    let mut tampered = jwt.as_bytes().to_vec();
    let at = jwt.rfind('.').unwrap() + 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(verify_app_jwt(&python, &tampered, &public, "123456").is_err());
    let err = verify_app_jwt(&python, jwt, &public, "654321").unwrap_err();
    assert!(err.contains("Issuer"), "{err}");
    let (_, _, other_public) = app_key(&python);
    assert!(verify_app_jwt(&python, jwt, &other_public, "123456").is_err());

    // The tunnel re-opens elsewhere: the hook follows, with a new token.
    tx.send(up_at("http://127.0.0.1:4001")).unwrap();
    eventually("the app hook follows", PATIENCE, || {
        app_hook_updates(&api).len() == 2
    })
    .await;
    let (authorization, body) = app_hook_updates(&api).remove(1);
    assert_eq!(
        body,
        json!({"url": "http://127.0.0.1:4001/api/v1/github_webhooks"})
    );
    let jwt = authorization.strip_prefix("Bearer ").unwrap();
    verify_app_jwt(&python, jwt, &public, "123456").unwrap();

    // The tunnel is closed (the server stops): the hook is pointed back where it was.
    tx.send(closed_at("http://127.0.0.1:4001")).unwrap();
    eventually("the app hook pointed back", PATIENCE, || {
        app_hook_updates(&api).len() == 3
    })
    .await;
    let (authorization, body) = app_hook_updates(&api).remove(2);
    assert_eq!(body, json!({ "url": HOOK_URL_BEFORE }));
    verify_app_jwt(
        &python,
        authorization.strip_prefix("Bearer ").unwrap(),
        &public,
        "123456",
    )
    .unwrap();

    // A PKCS#8 key from a file, with a client id as the issuer.
    let dir = std::env::temp_dir().join(format!("pr-agent-app-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.pem");
    std::fs::write(&path, &pkcs8).unwrap();
    let from_file = settings(
        api_addr,
        &[
            ("GITHUB_APP_ID", "Iv1.8a61f9b3a7aba766"),
            ("GITHUB_APP_PRIVATE_KEY_PATH", path.to_str().unwrap()),
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let app = from_file.github_app.unwrap();
    let jwt = app.jwt(std::time::SystemTime::now()).unwrap();
    verify_app_jwt(&python, &jwt, &public, "Iv1.8a61f9b3a7aba766").unwrap();
}

#[test]
fn github_app_settings_errors_name_the_variable() {
    let lookup = |vars: &[(&str, &str)]| {
        app::Settings::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let api = ("GITHUB_API_URL", "http://127.0.0.1:9");
    let garbage = "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----";
    // (variables, the variable the error must name)
    for (vars, named) in [
        (vec![("GITHUB_APP_ID", "1"), api], "GITHUB_APP_PRIVATE_KEY"),
        (
            vec![("GITHUB_APP_PRIVATE_KEY", garbage), api],
            "GITHUB_APP_ID",
        ),
        (
            vec![("GITHUB_APP_ID", "1"), ("GITHUB_APP_PRIVATE_KEY", garbage)],
            "GITHUB_API_URL",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1 2"),
                ("GITHUB_APP_PRIVATE_KEY", garbage),
                api,
            ],
            "GITHUB_APP_ID",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY", garbage),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY", "not a pem"),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY", garbage),
                ("GITHUB_APP_PRIVATE_KEY_PATH", "/k.pem"),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY_PATH", "/nonexistent/app.pem"),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                (
                    "GITHUB_APP_PRIVATE_KEY",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                ),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                (
                    "GITHUB_APP_PRIVATE_KEY",
                    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----",
                ),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
    ] {
        let err = lookup(&vars).unwrap_err();
        assert!(err.contains(named), "{vars:?}: {err}");
        assert!(!err.contains("bm90IGEga2V5"), "the key is not shown: {err}");
    }
}

/// A fake GitHub that hands out installation tokens (`ghs_<installation>_<n>`) to the app, and
/// records the comments with the token they came with.
#[derive(Default)]
struct FakeGithubApp {
    /// Token requests: installation id and the app's JWT.
    token_requests: Mutex<Vec<(u64, String)>>,
    /// Comments: path and authorization.
    comments: Mutex<Vec<(String, String)>>,
    /// The `expires_at` of the tokens handed out; far ahead when empty.
    expires_at: Mutex<String>,
    /// A token refused from now on, as GitHub does with a revoked one.
    revoked: Mutex<Option<String>>,
    /// Installations suspended or uninstalled: no token for them (403), and theirs refused
    /// (401).
    gone: Mutex<Vec<u64>>,
    /// Comments refused.
    refused: AtomicUsize,
    /// Token requests of installations 1000 to 1999, which take 150 ms: how many are being
    /// answered, and the most at once.
    slow_fetches: AtomicUsize,
    most_slow_fetches: AtomicUsize,
    /// `GET /app` is refused (401), as for a wrong app id or a key of another app.
    app_refused: AtomicBool,
    /// How far GitHub's clock is ahead of this machine's, in seconds: every answer is dated by
    /// it, and an app token expired on it is refused (401), as GitHub does.
    clock_ahead: std::sync::atomic::AtomicI64,
    /// App tokens refused for being expired on GitHub's clock.
    expired_tokens: AtomicUsize,
    /// When the token requests of installation 429, always over a secondary rate limit, came.
    secondary_limited: Mutex<Vec<tokio::time::Instant>>,
    /// When the token requests of installation 4290 came: over a secondary rate limit, then
    /// answered 503, in turn.
    limited_then_unavailable: Mutex<Vec<tokio::time::Instant>>,
    /// When the stalled token request of installation 600 came, and each comment.
    arrivals: Mutex<Vec<(String, tokio::time::Instant)>>,
}

impl FakeGithubApp {
    /// The authorization the comment on pull request `pr` came with, once it came.
    fn comment_authorization(&self, pr: u64) -> Option<String> {
        let path = format!("/repos/octo/repo/issues/{pr}/comments");
        let comments = self.comments.lock().unwrap();
        comments
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, a)| a.clone())
    }
}

/// [`fake_github_app_answer`], on a clock `clock_ahead` seconds ahead of this machine's.
async fn fake_github_app(State(gh): State<Arc<FakeGithubApp>>, req: Request) -> Response {
    let ahead = gh.clock_ahead.load(Ordering::SeqCst);
    let github_now = if ahead >= 0 {
        std::time::SystemTime::now() + Duration::from_secs(ahead.unsigned_abs())
    } else {
        std::time::SystemTime::now() - Duration::from_secs(ahead.unsigned_abs())
    };
    let app_token = req.uri().path().starts_with("/app");
    let expired = app_token && {
        let authorization = req.headers()["authorization"].to_str().unwrap();
        let claims = authorization
            .strip_prefix("Bearer ")
            .and_then(|jwt| jwt.split('.').nth(1))
            .and_then(|claims| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(claims)
                    .ok()
            })
            .and_then(|claims| serde_json::from_slice::<Value>(&claims).ok())
            .unwrap();
        let now = github_now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims["exp"].as_u64().unwrap() <= now || claims["iat"].as_u64().unwrap() > now + 60
    };
    let mut res = if expired {
        gh.expired_tokens.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::UNAUTHORIZED,
            r#"{"message":"'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"}"#,
        )
            .into_response()
    } else {
        fake_github_app_answer(gh, req).await
    };
    res.headers_mut().insert(
        http::header::DATE,
        httpdate::fmt_http_date(github_now).parse().unwrap(),
    );
    res
}

async fn fake_github_app_answer(gh: Arc<FakeGithubApp>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let authorization = req.headers()["authorization"].to_str().unwrap().to_owned();
    if path == "/app" {
        assert_eq!(req.method(), http::Method::GET);
        assert!(authorization.starts_with("Bearer ey"), "{authorization}");
        assert!(
            !req.headers().contains_key("content-type"),
            "a GET without a body"
        );
        if gh.app_refused.load(Ordering::SeqCst) {
            let message = r#"{"message":"A JSON web token could not be decoded"}"#;
            return (StatusCode::UNAUTHORIZED, message).into_response();
        }
        return axum::Json(json!({"id": 4242, "slug": "review-bot"})).into_response();
    }
    let installation = path
        .strip_prefix("/app/installations/")
        .and_then(|rest| rest.strip_suffix("/access_tokens"));
    if let Some(installation) = installation {
        assert_eq!(req.method(), http::Method::POST);
        let installation: u64 = installation.parse().unwrap();
        if gh.gone.lock().unwrap().contains(&installation) {
            gh.token_requests
                .lock()
                .unwrap()
                .push((installation, String::new()));
            return (
                StatusCode::FORBIDDEN,
                r#"{"message":"This installation has been suspended"}"#,
            )
                .into_response();
        }
        if installation == 404 {
            return (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response();
        }
        if installation == 429 {
            let now = tokio::time::Instant::now();
            gh.secondary_limited.lock().unwrap().push(now);
            return secondary_limit();
        }
        if installation == 4290 {
            let mut asked = gh.limited_then_unavailable.lock().unwrap();
            asked.push(tokio::time::Instant::now());
            if asked.len() % 2 == 1 {
                return secondary_limit();
            }
            return (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response();
        }
        if installation == 413 {
            // Whatever answers there sends more than a token answer could be.
            let padding = "x".repeat(2 * 1024 * 1024);
            let body = json!({"token": "ghs_413_huge", "padding": padding});
            return (StatusCode::CREATED, axum::Json(body)).into_response();
        }
        let jwt = authorization.strip_prefix("Bearer ").unwrap().to_owned();
        gh.token_requests.lock().unwrap().push((installation, jwt));
        if installation == 500 {
            // GitHub stalls on this one.
            std::future::pending::<()>().await;
        }
        if installation == 600
            && gh
                .token_requests
                .lock()
                .unwrap()
                .iter()
                .filter(|(i, _)| *i == 600)
                .count()
                > 1
        {
            // And on this one, after its first token.
            let now = tokio::time::Instant::now();
            gh.arrivals.lock().unwrap().push(("token 600".into(), now));
            std::future::pending::<()>().await;
        }
        if (1000..2000).contains(&installation) {
            let now = gh.slow_fetches.fetch_add(1, Ordering::SeqCst) + 1;
            gh.most_slow_fetches.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            gh.slow_fetches.fetch_sub(1, Ordering::SeqCst);
        }
        let requests = gh.token_requests.lock().unwrap();
        let n = requests.iter().filter(|(i, _)| *i == installation).count();
        let expires_at = match gh.expires_at.lock().unwrap().as_str() {
            // Installation 600's tokens lapse at once: each serves its comment, none is kept.
            _ if installation == 600 => "2016-07-11T22:14:10Z".to_owned(),
            "" => "2999-12-31T23:59:59Z".to_owned(),
            set => set.to_owned(),
        };
        let token = format!("ghs_{installation}_{n}");
        return (
            StatusCode::CREATED,
            axum::Json(json!({"token": token, "expires_at": expires_at})),
        )
            .into_response();
    }
    let of_gone = gh
        .gone
        .lock()
        .unwrap()
        .iter()
        .any(|id| authorization.starts_with(&format!("Bearer ghs_{id}_")));
    if of_gone || gh.revoked.lock().unwrap().as_deref() == authorization.strip_prefix("Bearer ") {
        gh.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, r#"{"message":"Bad credentials"}"#).into_response();
    }
    // Pull requests 71 to 79: GitHub takes 25 s to create their comments.
    if (71..80).any(|pr| path == format!("/repos/octo/repo/issues/{pr}/comments")) {
        tokio::time::sleep(Duration::from_secs(25)).await;
    }
    let now = tokio::time::Instant::now();
    gh.arrivals.lock().unwrap().push((path.clone(), now));
    gh.comments.lock().unwrap().push((path, authorization));
    StatusCode::CREATED.into_response()
}

/// A GitHub pull request delivery for `pr`, through app installation `installation` if given.
fn github_delivery(installation: Option<u64>, pr: u64) -> Delivery {
    let mut body = json!({"action": "opened", "number": pr, "pull_request": {"number": pr, "title": "Fix"}, "repository": {"full_name": "octo/repo"}});
    if let Some(id) = installation {
        body["installation"] =
            json!({"id": id, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="});
    }
    let id = format!("app-delivery-{pr}");
    signed(
        app::Forge::GitHub,
        &id,
        "pull_request",
        body.to_string().into_bytes(),
    )
}

/// The server as GitHub App 4242, with a fresh key and `extra` settings, against a fake GitHub
/// API that hands out installation tokens: the app's public key (PEM), the fake API, the
/// server's base URL and state.
async fn start_as_github_app(
    python: &std::path::Path,
    extra: &[(&str, &str)],
) -> (String, Arc<FakeGithubApp>, String, Arc<app::AppState>) {
    let (pkcs1, _, public) = app_key(python);
    let gh = Arc::new(FakeGithubApp::default());
    let gh_addr = serve(
        Router::new()
            .fallback(fake_github_app)
            .with_state(gh.clone()),
    )
    .await;
    // The other providers' API: this server lives as long as the test's runtime.
    let (api_addr, _) = start_fake_api().await;
    let gh_url = format!("http://{gh_addr}");
    let mut env = vec![
        ("GITHUB_API_URL", gh_url.as_str()),
        ("GITHUB_APP_ID", "4242"),
        ("GITHUB_APP_PRIVATE_KEY", pkcs1.as_str()),
    ];
    env.extend_from_slice(extra);
    let (base, state) = start_server(&settings(api_addr, &env)).await;
    (public, gh, base, state)
}

/// GitHub's clock is 20 minutes ahead of this machine's: an app token dated by this machine's
/// clock has expired on GitHub's, and is refused. The server learns GitHub's clock from its
/// answers' `Date`, says so, and dates the next tokens by it: the comment is posted as the app.
/// Before, every token request was refused for good, and the log blamed the app id or key.
#[tokio::test]
async fn app_tokens_are_dated_by_githubs_clock_when_this_one_is_off() {
    let Some(python) = peers::python() else {
        return;
    };
    let (logs, _guard) = support::Logs::capture();
    let (pkcs1, _, _) = app_key(&python);
    let gh = Arc::new(FakeGithubApp::default());
    gh.clock_ahead.store(20 * 60, Ordering::SeqCst);
    let gh_addr = serve(
        Router::new()
            .fallback(fake_github_app)
            .with_state(gh.clone()),
    )
    .await;
    let (api_addr, _) = start_fake_api().await;
    let gh_url = format!("http://{gh_addr}");
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("GITHUB_API_URL", gh_url.as_str()),
            ("GITHUB_APP_ID", "4242"),
            ("GITHUB_APP_PRIVATE_KEY", pkcs1.as_str()),
        ],
    ))
    .await;
    let client = crate::client::new();
    let res = send(&client, &base, &github_delivery(Some(7), 88)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    eventually("the comment, as the app", PATIENCE, || {
        gh.comment_authorization(88).is_some()
    })
    .await;
    assert_eq!(
        gh.comment_authorization(88).unwrap(),
        "Bearer ghs_7_1",
        "the installation's token"
    );
    // The first token request was refused, dated by this machine's clock; the next one passed.
    assert_eq!(gh.expired_tokens.load(Ordering::SeqCst), 1);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 0);
    let text = logs.text();
    assert!(
        text.contains("this machine's clock is 1200 s behind GitHub's"),
        "{text}"
    );
}

#[tokio::test]
async fn comments_of_app_installations_are_posted_with_installation_tokens() {
    let Some(python) = peers::python() else {
        return;
    };
    // One comment at a time: one waiting for a token must not hold the slot.
    let (public, gh, base, state) =
        start_as_github_app(&python, &[("COMMENTS_IN_FLIGHT_PER_PROVIDER", "1")]).await;
    let client = crate::client::new();
    let deliver = |installation: Option<u64>, pr: u64| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let res = send(&client, &base, &github_delivery(installation, pr)).await;
            assert_eq!(res.status(), StatusCode::ACCEPTED);
        }
    };
    let posted = |pr: u64| {
        let gh = gh.clone();
        async move {
            eventually(&format!("comment {pr}"), PATIENCE, || {
                gh.comment_authorization(pr).is_some()
            })
            .await;
            gh.comment_authorization(pr).unwrap()
        }
    };

    // Through installation 77: as the app, with a token fetched with a JWT PyJWT accepts.
    deliver(Some(77), 1).await;
    assert_eq!(posted(1).await, "Bearer ghs_77_1");
    let (installation, jwt) = gh.token_requests.lock().unwrap()[0].clone();
    assert_eq!(installation, 77);
    verify_app_jwt(&python, &jwt, &public, "4242").unwrap();
    // The token is kept for the next comments of that installation.
    deliver(Some(77), 2).await;
    assert_eq!(posted(2).await, "Bearer ghs_77_1");
    assert_eq!(gh.token_requests.lock().unwrap().len(), 1);
    // Not through the app: the API token.
    deliver(None, 3).await;
    assert_eq!(posted(3).await, "Bearer ghp_token");

    // A revoked token is refused: a new one is fetched and the comment goes out with it.
    *gh.revoked.lock().unwrap() = Some("ghs_77_1".into());
    deliver(Some(77), 4).await;
    assert_eq!(posted(4).await, "Bearer ghs_77_2");

    // A token that lapses within minutes serves its comment, and is not kept.
    *gh.expires_at.lock().unwrap() = "2016-07-11T22:14:10Z".into();
    deliver(Some(88), 5).await;
    assert_eq!(posted(5).await, "Bearer ghs_88_1");
    deliver(Some(88), 6).await;
    assert_eq!(posted(6).await, "Bearer ghs_88_2");

    // An installation GitHub does not know: the comment is given up, not retried.
    deliver(Some(404), 7).await;
    eventually("the comment given up", PATIENCE, || {
        state.counters.comments_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(gh.comment_authorization(7).is_none());
    assert_eq!(state.counters.comments_posted.load(Ordering::SeqCst), 6);
    assert_eq!(state.counters.pending.load(Ordering::SeqCst), 0);

    // While GitHub stalls on one installation's token, the others' comments still go out, and
    // the comment waiting for it holds none of GitHub's slots.
    deliver(Some(500), 8).await;
    eventually("the stalled token request", PATIENCE, || {
        gh.token_requests
            .lock()
            .unwrap()
            .iter()
            .any(|(i, _)| *i == 500)
    })
    .await;
    deliver(Some(77), 9).await;
    assert_eq!(posted(9).await, "Bearer ghs_77_2");
}

/// A comment that waited over a minute for its slot, whose installation's token lapsed
/// meanwhile, lets the slot go to ask for a new one: GitHub stalls on that request here, and the
/// comments of other installations still go out at once. It asked while it held the slot (and
/// its spacing turn), so the stalled request held the only GitHub slot, and every other comment
/// waited behind it until the API client gave the request up.
#[tokio::test(start_paused = true)]
async fn a_token_asked_again_after_a_long_wait_holds_no_slot() {
    let Some(python) = peers::python() else {
        return;
    };
    let (_, gh, base, _state) = start_as_github_app(
        &python,
        &[
            ("COMMENTS_IN_FLIGHT_PER_PROVIDER", "1"),
            ("GITHUB_COMMENT_INTERVAL_MS", "0"),
        ],
    )
    .await;
    let client = crate::client::new();
    // Three slow comments of installation 77 hold the slot for 75 s; installation 600's comment
    // waits for it with its first token (which lapses at once, and is not kept), then 77's
    // comment on pull request 5, with 77's token, which is. (The wait for a
    // slot is real: this runtime's clock is paused, and moves on when nothing else can.)
    for (installation, pr) in [(77, 71), (77, 72), (77, 73), (600, 4), (77, 5)] {
        let res = send(&client, &base, &github_delivery(Some(installation), pr)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        // In that order.
        tokio::task::yield_now().await;
    }
    eventually("comment 5", Duration::from_secs(30), || {
        gh.comment_authorization(5).is_some()
    })
    .await;
    // Installation 600 asked for a second token (on which GitHub stalls), and posted nothing;
    // comment 5 went out while that request still hung, not after the API client gave it up
    // (30 s).
    let arrivals = gh.arrivals.lock().unwrap().clone();
    let at = |what: &str| arrivals.iter().find(|(w, _)| w == what).map(|(_, at)| *at);
    let stalled = at("token 600").expect("asked again");
    let posted = at("/repos/octo/repo/issues/5/comments").unwrap();
    assert!(posted - stalled < Duration::from_secs(5), "{arrivals:?}");
    let asked = gh
        .token_requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| *i == 600)
        .count();
    assert_eq!(asked, 2);
    assert!(gh.comment_authorization(4).is_none());
}

/// A token answer is read up to 1 MiB: an API (or whatever answers at `GITHUB_API_URL`) that
/// sends more is not buffered whole, and the comment waits to be tried again.
#[tokio::test]
async fn a_token_answer_too_large_is_not_read_whole() {
    let Some(python) = peers::python() else {
        return;
    };
    let (logs, _guard) = support::Logs::capture();
    let (_, gh, base, _) = start_as_github_app(&python, &[]).await;
    let client = crate::client::new();
    let res = send(&client, &base, &github_delivery(Some(413), 1)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    eventually("the refused answer, logged", PATIENCE, || {
        logs.text()
            .contains("GitHub's token answer could not be read: it is larger than 1024 KiB")
    })
    .await;
    assert!(gh.comment_authorization(1).is_none());
}

/// A token request that keeps meeting a secondary rate limit is waited out a minute, then two,
/// then four, as a comment that does: the limit met by each request is a new one. The time the
/// request was sent was that of the job's last comment attempt (or its start), before the last
/// limit was met, so every such limit counted as the one already met: a minute each time.
#[tokio::test(start_paused = true)]
async fn a_token_request_over_a_persisting_secondary_rate_limit_waits_longer_each_time() {
    let Some(python) = peers::python() else {
        return;
    };
    let (_, gh, base, state) = start_as_github_app(&python, &[("COMMENT_MAX_ATTEMPTS", "4")]).await;
    let res = send(&crate::client::new(), &base, &github_delivery(Some(429), 1)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(state.drain_comments(Duration::from_secs(3600)).await, 0);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 1);
    let asked = gh.secondary_limited.lock().unwrap().clone();
    let waits: Vec<u64> = asked.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(waits, [60, 120, 240], "{waits:?}");
    assert!(gh.comment_authorization(1).is_none());
}

/// A failure between two secondary rate limits (GitHub answering 503) is not GitHub taking a
/// request again: the second limit is the first one still met, and its wait doubles. A 503
/// counted as a request taken, so the wait started over at a minute.
#[tokio::test(start_paused = true)]
async fn a_failure_between_two_secondary_rate_limits_does_not_start_their_waits_over() {
    let Some(python) = peers::python() else {
        return;
    };
    let (_, gh, base, state) = start_as_github_app(&python, &[("COMMENT_MAX_ATTEMPTS", "4")]).await;
    let res = send(
        &crate::client::new(),
        &base,
        &github_delivery(Some(4290), 1),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(state.drain_comments(Duration::from_secs(3600)).await, 0);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 1);
    let asked = gh.limited_then_unavailable.lock().unwrap().clone();
    assert_eq!(asked.len(), 4, "limit, 503, limit, 503");
    // The wait after each limit: a minute, then two.
    let waits = [
        (asked[1] - asked[0]).as_secs(),
        (asked[3] - asked[2]).as_secs(),
    ];
    assert_eq!(waits, [60, 120], "{asked:?}");
}

/// A backlog of comments of many installations (after a restart, after GitHub was down) asks
/// for their tokens at most `COMMENTS_IN_FLIGHT_PER_PROVIDER` at once: they used to go all at
/// once (up to `MAX_PENDING_COMMENTS`), into GitHub's secondary rate limit.
#[tokio::test]
async fn installation_tokens_are_fetched_a_few_at_a_time() {
    let Some(python) = peers::python() else {
        return;
    };
    let (_, gh, base, _) =
        start_as_github_app(&python, &[("COMMENTS_IN_FLIGHT_PER_PROVIDER", "2")]).await;
    let client = crate::client::new();
    let deliveries = (1..=8).map(|n| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let res = send(&client, &base, &github_delivery(Some(1000 + n), n)).await;
            assert_eq!(res.status(), StatusCode::ACCEPTED);
        }
    });
    futures_util::future::join_all(deliveries).await;
    eventually("the 8 comments", PATIENCE, || {
        gh.comments.lock().unwrap().len() == 8
    })
    .await;
    for n in 1..=8 {
        let token = format!("Bearer ghs_{}_1", 1000 + n);
        assert_eq!(gh.comment_authorization(n), Some(token));
    }
    let most = gh.most_slow_fetches.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} token requests at once");
}

/// At startup, the server asks GitHub who the app is: credentials GitHub refuses (a wrong
/// `GITHUB_APP_ID`, a key of another app) are said at once, at error level; before, the first
/// comment found out, and every comment through the app was given up.
#[tokio::test]
async fn the_app_credentials_are_checked_with_github_at_startup() {
    let Some(python) = peers::python() else {
        return;
    };
    let (pkcs1, _, _) = app_key(&python);
    for refused in [false, true] {
        let (logs, _guard) = support::Logs::capture();
        let gh = Arc::new(FakeGithubApp::default());
        gh.app_refused.store(refused, Ordering::SeqCst);
        let gh_addr = serve(
            Router::new()
                .fallback(fake_github_app)
                .with_state(gh.clone()),
        )
        .await;
        let (api_addr, _) = start_fake_api().await;
        let gh_url = format!("http://{gh_addr}");
        let settings = settings(
            api_addr,
            &[
                ("GITHUB_API_URL", gh_url.as_str()),
                ("GITHUB_APP_ID", "4242"),
                ("GITHUB_APP_PRIVATE_KEY", pkcs1.as_str()),
                ("PORT", "0"),
            ],
        );
        let app = app::build(&settings).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = app::start(&settings, app, None, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let said = if refused {
            "GitHub refused the app's credentials"
        } else {
            "GitHub App credentials accepted by GitHub"
        };
        eventually(said, PATIENCE, || logs.text().contains(said)).await;
        let text = logs.text();
        let line = text.lines().find(|line| line.contains(said)).unwrap();
        if refused {
            assert!(
                line.contains("ERROR") && line.contains("GITHUB_APP_ID"),
                "{line}"
            );
        } else {
            assert!(line.contains("review-bot"), "{line}");
        }
        assert!(!text.contains("BEGIN RSA"), "{text}");
        drop(stop);
        running.wait().await;
    }
}

#[test]
fn github_times_are_read_as_utc() {
    use app::github_app::parse_github_time;
    let at = |secs: u64| Some(std::time::UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(parse_github_time("2016-07-11T22:14:10Z"), at(1_468_275_250));
    assert_eq!(parse_github_time("2000-02-29T00:00:00Z"), at(951_782_400));
    assert_eq!(parse_github_time("1970-01-01T00:00:00Z"), at(0));
    assert_eq!(
        parse_github_time("2999-12-31T23:59:59Z"),
        at(32_503_679_999)
    );
    for bad in [
        "",
        "2016-07-11 22:14:10Z",
        "2016-07-11T22:14:10",
        "2016-07-11T22:14:10+00:00",
        "2016-13-11T22:14:10Z",
        "2001-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2016-07-11T24:00:00Z",
        "2016-07-11T22:60:10Z",
        "2016-07-11T22:14:60Z",
        "+016-07-11T22:14:10Z",
        "2016-07-00T22:14:10Z",
        "2016-07-11T22:14:1éZ",
    ] {
        assert_eq!(parse_github_time(bad), None, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Provider events as the providers send them.

/// Bitbucket Data Center reopens a declined pull request (`pr:reopened`, Cloud cannot): like an
/// opened one, it gets its comment, unless it is a draft.
#[tokio::test]
async fn a_reopened_bitbucket_data_center_pull_request_gets_a_comment() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let pr = |id: u64, draft: bool| json!({"id": id, "title": "Back", "draft": draft, "state": "OPEN", "toRef": {"repository": {"slug": "repo", "project": {"key": "PROJ"}}}});
    for (delivery, id, draft) in [
        ("e5000000-0000-4000-8000-000000000001", 14, false),
        ("e5000000-0000-4000-8000-000000000002", 15, true),
    ] {
        let body = json!({"eventKey": "pr:reopened", "pullRequest": pr(id, draft)});
        let d = signed(
            app::Forge::BitbucketServer,
            delivery,
            "pr:reopened",
            body.to_string().into_bytes(),
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    eventually("the comment", PATIENCE, || comment_count(&api) == 1).await;
    assert_eq!(state.drain_comments(Duration::from_secs(2)).await, 0);
    let comments = api.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 1, "the draft gets none: {comments:?}");
    assert_eq!(
        comments[0].0,
        "/rest/api/1.0/projects/PROJ/repos/repo/pull-requests/14/comments"
    );
}

/// Azure DevOps sends `ms.vss-code.git-pullrequest-comment-event` for an edited comment too
/// ("has edited a pull request comment"), and for a deleted one: a command answered when it
/// was made is not answered again.
#[tokio::test]
async fn an_edited_or_deleted_azure_devops_comment_is_not_answered_again() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let event = |id: &str, published: &str, changed: &str, deleted: bool| {
        json!({
            "id": id,
            "eventType": "ms.vss-code.git-pullrequest-comment-event",
            "resource": {
                "comment": {
                    "id": 2, "parentCommentId": 0, "content": "/review", "commentType": "text",
                    "isDeleted": deleted,
                    "publishedDate": published,
                    "lastUpdatedDate": changed,
                    "lastContentUpdatedDate": changed,
                },
                "pullRequest": {"pullRequestId": 16, "title": "Fix", "repository": {"id": "repo-guid", "project": {"id": "proj-guid"}}},
            },
        })
    };
    for body in [
        // New: both dates the same, or straddling a second.
        event(
            "e6000000-0000-4000-8000-000000000001",
            "2024-06-17T11:22:33.456789Z",
            "2024-06-17T11:22:33.456789Z",
            false,
        ),
        // Edited hours later, then deleted.
        event(
            "e6000000-0000-4000-8000-000000000002",
            "2024-06-17T11:22:33.456789Z",
            "2024-06-17T16:58:33.123889Z",
            false,
        ),
        event(
            "e6000000-0000-4000-8000-000000000003",
            "2024-06-17T11:22:33.456789Z",
            "2024-06-17T17:00:00.000000Z",
            true,
        ),
    ] {
        let id = body["id"].as_str().unwrap().to_owned();
        let d = signed(
            app::Forge::AzureDevOps,
            &id,
            "-",
            body.to_string().into_bytes(),
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    eventually("the answer", PATIENCE, || comment_count(&api) >= 1).await;
    assert_eq!(state.drain_comments(Duration::from_secs(2)).await, 0);
    assert_eq!(comment_count(&api), 1, "{:?}", api.comments.lock().unwrap());
    assert_eq!(state.counters.jobs.load(Ordering::SeqCst), 1);

    // A new comment whose dates straddle a second is still new.
    let body = event(
        "e6000000-0000-4000-8000-000000000004",
        "2024-06-17T11:22:33.999Z",
        "2024-06-17T11:22:34.001Z",
        false,
    );
    let d = signed(
        app::Forge::AzureDevOps,
        "e6000000-0000-4000-8000-000000000004",
        "-",
        body.to_string().into_bytes(),
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    eventually("the second answer", PATIENCE, || comment_count(&api) == 2).await;
}

/// A Gitea or Forgejo server whose payloads carry no `draft` field says a draft by its title's
/// prefix only: a pull request opened as `WIP:` gets no comment, and one comment when the prefix
/// goes, not two.
#[tokio::test]
async fn a_gitea_pull_request_opened_as_wip_gets_one_comment_when_marked_ready() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let opened = json!({"action": "opened", "number": 17, "pull_request": {"number": 17, "title": "WIP: Fix", "state": "open"}, "repository": {"full_name": "org/repo"}});
    let edited = json!({"action": "edited", "number": 17, "pull_request": {"number": 17, "title": "Fix", "state": "open"}, "changes": {"title": {"from": "WIP: Fix"}}, "repository": {"full_name": "org/repo"}});
    for (id, body) in [
        ("e7000000-0000-4000-8000-000000000001", opened),
        ("e7000000-0000-4000-8000-000000000002", edited),
    ] {
        let d = signed(
            app::Forge::Gitea,
            id,
            "pull_request",
            body.to_string().into_bytes(),
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    eventually("the comment", PATIENCE, || comment_count(&api) >= 1).await;
    assert_eq!(state.drain_comments(Duration::from_secs(2)).await, 0);
    assert_eq!(comment_count(&api), 1, "{:?}", api.comments.lock().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Drafts published where the provider's event does not say that they were drafts.

/// Sends each `(event, body)` to `forge` with delivery ids `{prefix}-...-{n}`, each answered 202.
async fn deliver_all(
    client: &reqwest::Client,
    base: &str,
    forge: app::Forge,
    prefix: &str,
    deliveries: &[(&str, Value)],
) {
    for (n, (event, body)) in deliveries.iter().enumerate() {
        let mut body = body.clone();
        let id = format!("{prefix}-0000-4000-8000-{n:012}");
        if forge == app::Forge::AzureDevOps {
            body["id"] = json!(id);
        }
        let d = signed(forge, &id, event, body.to_string().into_bytes());
        assert_eq!(
            send(client, base, &d).await.status(),
            StatusCode::ACCEPTED,
            "{event} {body}"
        );
    }
}

/// The paths of the comments the fake API received, once every pending one is done.
async fn posted_paths(api: &FakeApi, state: &app::AppState) -> Vec<String> {
    assert_eq!(state.drain_comments(Duration::from_secs(5)).await, 0);
    let comments = api.comments.lock().unwrap();
    comments.iter().map(|(path, _, _)| path.clone()).collect()
}

/// A Bitbucket Cloud pull request event's body.
fn bb_pr(id: u64, draft: bool, state: &str) -> Value {
    json!({"pullrequest": {"id": id, "title": "Fix", "draft": draft, "state": state}, "repository": {"full_name": "team/repo"}})
}

fn bb_comment_path(id: u64) -> String {
    format!("/repositories/team/repo/pullrequests/{id}/comments")
}

/// Bitbucket Cloud says a draft was published with a `pullrequest:updated` whose pull request is
/// no longer a draft, nothing more: the server remembers the drafts it saw and comments once on
/// the first update that shows one of them published.
#[tokio::test]
async fn a_bitbucket_cloud_draft_gets_one_comment_when_published() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let mut comment = bb_pr(24, false, "OPEN");
    comment["comment"] = json!({"id": 9, "content": {"raw": "/help"}});
    comment["actor"] = json!({"type": "user"});
    deliver_all(
        &client,
        &base,
        app::Forge::Bitbucket,
        "f1000000",
        &[
            ("pullrequest:created", bb_pr(21, true, "OPEN")),
            ("pullrequest:updated", bb_pr(21, true, "OPEN")),
            ("pullrequest:updated", bb_pr(21, false, "OPEN")),
            // Once: later updates of the published pull request get none.
            ("pullrequest:updated", bb_pr(21, false, "OPEN")),
            // Never seen as a draft: an update is only an update.
            ("pullrequest:updated", bb_pr(22, false, "OPEN")),
            // A draft declined is forgotten.
            ("pullrequest:created", bb_pr(23, true, "OPEN")),
            ("pullrequest:rejected", bb_pr(23, true, "DECLINED")),
            ("pullrequest:updated", bb_pr(23, false, "DECLINED")),
            // A command on a published draft is answered, and the next update still gets the
            // comment of the draft published.
            ("pullrequest:created", bb_pr(24, true, "OPEN")),
            ("pullrequest:comment_created", comment),
            ("pullrequest:updated", bb_pr(24, false, "OPEN")),
        ],
    )
    .await;
    let paths = posted_paths(&api, &state).await;
    assert_eq!(
        paths,
        [
            bb_comment_path(21),
            bb_comment_path(24),
            bb_comment_path(24)
        ],
        "{:?}",
        api.comments.lock().unwrap()
    );
    let comments = api.comments.lock().unwrap();
    let text = |i: usize| comments[i].2["content"]["raw"].as_str().unwrap().to_owned();
    assert!(
        text(0).contains("Review of \"Fix\" is queued"),
        "{}",
        text(0)
    );
    assert!(text(1).starts_with("Commands:"), "{}", text(1));
    assert!(
        text(2).contains("Review of \"Fix\" is queued"),
        "{}",
        text(2)
    );
}

/// The drafts remembered are bounded (`MAX_REMEMBERED_DRAFTS`): past the bound, the one seen
/// least recently is forgotten, and gets no comment when published.
#[tokio::test]
async fn remembered_drafts_are_bounded_and_the_least_recently_seen_goes_first() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[("MAX_REMEMBERED_DRAFTS", "2")])).await;
    let client = crate::client::new();
    deliver_all(
        &client,
        &base,
        app::Forge::Bitbucket,
        "f2000000",
        &[
            ("pullrequest:created", bb_pr(61, true, "OPEN")),
            ("pullrequest:created", bb_pr(62, true, "OPEN")),
            // Seen again: 61 is now the most recent, so 63 pushes 62 out.
            ("pullrequest:updated", bb_pr(61, true, "OPEN")),
            ("pullrequest:created", bb_pr(63, true, "OPEN")),
            ("pullrequest:updated", bb_pr(62, false, "OPEN")),
            ("pullrequest:updated", bb_pr(61, false, "OPEN")),
            ("pullrequest:updated", bb_pr(63, false, "OPEN")),
        ],
    )
    .await;
    assert_eq!(
        posted_paths(&api, &state).await,
        [bb_comment_path(61), bb_comment_path(63)]
    );
}

/// A published draft whose comment cannot be queued (503, the queue is full) is remembered
/// again: the provider's next attempt gets the comment.
#[tokio::test]
async fn a_published_draft_refused_for_a_full_queue_gets_its_comment_when_delivered_again() {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("MAX_PENDING_COMMENTS", "1"),
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "100"),
        ],
    ))
    .await;
    let client = crate::client::new();
    let created = signed(
        app::Forge::Bitbucket,
        "f3000000-0000-4000-8000-000000000001",
        "pullrequest:created",
        bb_pr(71, true, "OPEN").to_string().into_bytes(),
    );
    assert_eq!(
        send(&client, &base, &created).await.status(),
        StatusCode::ACCEPTED
    );
    // The only slot of the queue is taken by a comment the API keeps failing.
    let d = delivery(
        app::Forge::Bitbucket,
        "f3000000-0000-4000-8000-000000000002",
        70,
    );
    assert_eq!(
        send(&client, &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    let published = signed(
        app::Forge::Bitbucket,
        "f3000000-0000-4000-8000-000000000003",
        "pullrequest:updated",
        bb_pr(71, false, "OPEN").to_string().into_bytes(),
    );
    assert_eq!(
        send(&client, &base, &published).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    api.failing.store(false, Ordering::SeqCst);
    assert_eq!(state.drain_comments(Duration::from_secs(5)).await, 0);
    // Bitbucket delivers it again.
    assert_eq!(
        send(&client, &base, &published).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        posted_paths(&api, &state).await,
        [bb_comment_path(70), bb_comment_path(71)]
    );
}

/// A Bitbucket Data Center pull request event's body.
fn bbs_pr(id: u64, draft: bool, state: &str) -> Value {
    json!({"pullRequest": {"id": id, "title": "Fix", "draft": draft, "state": state, "open": state == "OPEN", "toRef": {"repository": {"slug": "repo", "project": {"key": "PROJ"}}}}})
}

fn bbs_comment_path(id: u64) -> String {
    format!("/rest/api/1.0/projects/PROJ/repos/repo/pull-requests/{id}/comments")
}

/// Bitbucket Data Center (8.18 and later) has drafts too, and no event that says one was
/// published: the first pull request event that shows a remembered draft published comments.
#[tokio::test]
async fn a_bitbucket_data_center_draft_gets_one_comment_when_published() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let with_key = |key: &str, mut body: Value| {
        body["eventKey"] = json!(key);
        (key.to_owned(), body)
    };
    let deliveries = [
        with_key("pr:opened", bbs_pr(31, true, "OPEN")),
        with_key("pr:from_ref_updated", bbs_pr(31, true, "OPEN")),
        with_key("pr:modified", bbs_pr(31, false, "OPEN")),
        with_key("pr:modified", bbs_pr(31, false, "OPEN")),
        with_key("pr:modified", bbs_pr(32, false, "OPEN")),
        // Declined as a draft, then reopened as one: still a draft, no comment; published
        // later, one comment.
        with_key("pr:opened", bbs_pr(33, true, "OPEN")),
        with_key("pr:declined", bbs_pr(33, true, "DECLINED")),
        with_key("pr:reopened", bbs_pr(33, true, "OPEN")),
        with_key("pr:from_ref_updated", bbs_pr(33, false, "OPEN")),
    ];
    let deliveries: Vec<(&str, Value)> = deliveries
        .iter()
        .map(|(key, body)| (key.as_str(), body.clone()))
        .collect();
    deliver_all(
        &client,
        &base,
        app::Forge::BitbucketServer,
        "f4000000",
        &deliveries,
    )
    .await;
    assert_eq!(
        posted_paths(&api, &state).await,
        [bbs_comment_path(31), bbs_comment_path(33)]
    );
}

/// An Azure DevOps pull request event's body.
fn ado_pr(event: &str, id: u64, draft: bool, status: &str, message: &str) -> Value {
    json!({
        "eventType": event,
        "message": {"text": message},
        "resource": {"pullRequestId": id, "title": "Fix", "isDraft": draft, "status": status, "repository": {"id": "repo-guid", "project": {"id": "proj-guid"}}},
    })
}

/// `event` without its pull request's `isDraft`.
fn without_is_draft(mut event: Value) -> Value {
    event["resource"].as_object_mut().unwrap().remove("isDraft");
    event
}

fn ado_thread_path(id: u64) -> String {
    format!("/proj-guid/_apis/git/repositories/repo-guid/pullRequests/{id}/threads?api-version=5.0")
}

/// Azure DevOps says a draft was published with a `git.pullrequest.updated` whose pull request
/// is no longer a draft. The server comments on it once when it saw the draft, or when the
/// event's message says the pull request was published.
#[tokio::test]
async fn an_azure_devops_draft_gets_one_comment_when_published() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let (created, updated) = ("git.pullrequest.created", "git.pullrequest.updated");
    let pushed = "Jamal Hartnett updated the source branch of pull request 41";
    deliver_all(
        &client,
        &base,
        app::Forge::AzureDevOps,
        "f5000000",
        &[
            (
                "-",
                ado_pr(
                    created,
                    41,
                    true,
                    "active",
                    "Jamal Hartnett created a new pull request",
                ),
            ),
            ("-", ado_pr(updated, 41, true, "active", pushed)),
            (
                "-",
                ado_pr(
                    updated,
                    41,
                    false,
                    "active",
                    "Jamal Hartnett published the pull request",
                ),
            ),
            ("-", ado_pr(updated, 41, false, "active", pushed)),
            // Not seen as a draft (it was before a restart), but the message says it.
            (
                "-",
                ado_pr(
                    updated,
                    42,
                    false,
                    "active",
                    "Jamal Hartnett published the pull request",
                ),
            ),
            // Neither: an update.
            ("-", ado_pr(updated, 43, false, "active", pushed)),
            // A draft abandoned is forgotten.
            (
                "-",
                ado_pr(
                    created,
                    44,
                    true,
                    "active",
                    "Jamal Hartnett created a new pull request",
                ),
            ),
            (
                "-",
                ado_pr(
                    updated,
                    44,
                    true,
                    "abandoned",
                    "Jamal Hartnett abandoned the pull request",
                ),
            ),
            (
                "-",
                ado_pr(
                    updated,
                    44,
                    false,
                    "active",
                    "Jamal Hartnett reactivated the pull request",
                ),
            ),
            // Seen as a draft, and published: the message need not say it.
            (
                "-",
                ado_pr(
                    created,
                    45,
                    true,
                    "active",
                    "Jamal Hartnett created a new pull request",
                ),
            ),
            (
                "-",
                ado_pr(
                    updated,
                    45,
                    false,
                    "active",
                    "Jamal Hartnett a publié la demande de tirage",
                ),
            ),
            // Without `isDraft`, as in the service's samples of its events: the message says
            // it was published, or it is an update.
            (
                "-",
                without_is_draft(ado_pr(
                    updated,
                    46,
                    false,
                    "active",
                    "Jamal Hartnett published the pull request",
                )),
            ),
            (
                "-",
                without_is_draft(ado_pr(updated, 47, false, "active", pushed)),
            ),
        ],
    )
    .await;
    assert_eq!(
        posted_paths(&api, &state).await,
        [
            ado_thread_path(41),
            ado_thread_path(42),
            ado_thread_path(45),
            ado_thread_path(46)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// GitHub App installations suspended, unsuspended and uninstalled.

/// An `installation` delivery: `action` on installation `id`.
fn installation_delivery(id: u64, action: &str) -> Delivery {
    let body = json!({"action": action, "installation": {"id": id, "account": {"login": "octo"}}, "sender": {"login": "octo", "type": "User"}});
    let delivery = format!("installation-{action}-{id}");
    signed(
        app::Forge::GitHub,
        &delivery,
        "installation",
        body.to_string().into_bytes(),
    )
}

/// A server running as a GitHub App, and what its tests ask of it.
struct AppUnderTest {
    gh: Arc<FakeGithubApp>,
    base: String,
    state: Arc<app::AppState>,
    client: reqwest::Client,
}

impl AppUnderTest {
    async fn start(python: &std::path::Path) -> Self {
        let (_, gh, base, state) = start_as_github_app(python, &[]).await;
        let client = crate::client::new();
        Self {
            gh,
            base,
            state,
            client,
        }
    }

    /// Sends `d`, which is accepted.
    async fn deliver(&self, d: Delivery) {
        let status = send(&self.client, &self.base, &d).await.status();
        assert_eq!(status, StatusCode::ACCEPTED);
    }

    /// Waits for the pending comments to be done.
    async fn done(&self) {
        assert_eq!(self.state.drain_comments(Duration::from_secs(5)).await, 0);
    }

    /// The token requests of `installation` so far.
    fn token_requests(&self, installation: u64) -> usize {
        let requests = self.gh.token_requests.lock().unwrap();
        requests.iter().filter(|(i, _)| *i == installation).count()
    }
}

/// GitHub tells the app when an installation is suspended or uninstalled: its token is dropped
/// at once, and a comment still pending for it is given up without asking GitHub for a token it
/// will refuse. Unsuspended, the installation's comments fetch a new token.
#[tokio::test]
async fn a_suspended_or_uninstalled_installation_drops_its_token_and_asks_for_none() {
    let Some(python) = peers::python() else {
        return;
    };
    let app = AppUnderTest::start(&python).await;
    let (gh, state) = (&app.gh, &app.state);
    let failed = || state.counters.comments_failed.load(Ordering::SeqCst);

    app.deliver(github_delivery(Some(77), 1)).await;
    app.done().await;
    assert_eq!(
        gh.comment_authorization(1).as_deref(),
        Some("Bearer ghs_77_1")
    );

    // Suspended: GitHub refuses the installation's tokens from now on.
    gh.gone.lock().unwrap().push(77);
    app.deliver(installation_delivery(77, "suspend")).await;
    // A comment of it still pending (its delivery came before) is given up, without a token
    // request and without trying the dropped token.
    app.deliver(github_delivery(Some(77), 2)).await;
    app.done().await;
    assert_eq!(failed(), 1);
    assert_eq!(app.token_requests(77), 1, "no token asked for");
    assert_eq!(gh.refused.load(Ordering::SeqCst), 0, "no comment tried");
    assert!(gh.comment_authorization(2).is_none());

    // Unsuspended: a new token, not the one from before.
    gh.gone.lock().unwrap().clear();
    app.deliver(installation_delivery(77, "unsuspend")).await;
    app.deliver(github_delivery(Some(77), 3)).await;
    app.done().await;
    assert_eq!(
        gh.comment_authorization(3).as_deref(),
        Some("Bearer ghs_77_2")
    );

    // Uninstalled: the same, for good.
    app.deliver(github_delivery(Some(88), 4)).await;
    app.done().await;
    assert_eq!(
        gh.comment_authorization(4).as_deref(),
        Some("Bearer ghs_88_1")
    );
    gh.gone.lock().unwrap().push(88);
    app.deliver(installation_delivery(88, "deleted")).await;
    app.deliver(github_delivery(Some(88), 5)).await;
    app.done().await;
    assert_eq!(failed(), 2);
    assert_eq!(app.token_requests(88), 1, "no token asked for");
    assert_eq!(gh.refused.load(Ordering::SeqCst), 0, "no comment tried");

    // Other installations are not concerned, and other actions change nothing.
    app.deliver(installation_delivery(77, "created")).await;
    app.deliver(github_delivery(Some(77), 6)).await;
    app.done().await;
    assert_eq!(
        gh.comment_authorization(6).as_deref(),
        Some("Bearer ghs_77_2")
    );
    // New permissions accepted: the token made with the old ones is dropped.
    app.deliver(installation_delivery(77, "new_permissions_accepted"))
        .await;
    app.deliver(github_delivery(Some(77), 7)).await;
    app.done().await;
    assert_eq!(
        gh.comment_authorization(7).as_deref(),
        Some("Bearer ghs_77_3")
    );
    assert_eq!(state.counters.comments_posted.load(Ordering::SeqCst), 5);
}

/// GitHub does not promise its deliveries' order, and the server handles several at once: an
/// `unsuspend` handled before the `suspend` it follows left the installation suspended until
/// the server restarted, every comment of it given up. A suspension now holds for a while
/// (10 minutes; none here), after which a comment asks GitHub again: a token issued says the
/// installation is back, and one refused keeps it suspended for another while.
#[tokio::test]
async fn an_installation_suspension_is_checked_with_github_again_after_a_while() {
    let Some(python) = peers::python() else {
        return;
    };
    let app = AppUnderTest::start(&python).await;
    let (gh, state) = (&app.gh, &app.state);
    state.recheck_suspensions_after(Duration::ZERO);

    // Out of order: the unsuspend first, then the suspend that came before it.
    app.deliver(installation_delivery(77, "unsuspend")).await;
    app.deliver(installation_delivery(77, "suspend")).await;
    app.deliver(github_delivery(Some(77), 1)).await;
    app.done().await;
    assert_eq!(app.token_requests(77), 1, "GitHub asked again");
    assert_eq!(
        gh.comment_authorization(1).as_deref(),
        Some("Bearer ghs_77_1")
    );
    // Known back: its token is kept, and no longer asked for.
    app.deliver(github_delivery(Some(77), 2)).await;
    app.done().await;
    assert_eq!(app.token_requests(77), 1);
    assert_eq!(
        gh.comment_authorization(2).as_deref(),
        Some("Bearer ghs_77_1")
    );

    // Really suspended: GitHub refuses the token, and the comment is given up.
    gh.gone.lock().unwrap().push(88);
    app.deliver(installation_delivery(88, "suspend")).await;
    app.deliver(github_delivery(Some(88), 3)).await;
    app.done().await;
    assert_eq!(app.token_requests(88), 1);
    assert!(gh.comment_authorization(3).is_none());
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 1);
    // Uninstalled is for good: never asked again.
    gh.gone.lock().unwrap().push(99);
    app.deliver(installation_delivery(99, "deleted")).await;
    app.deliver(github_delivery(Some(99), 4)).await;
    app.done().await;
    assert_eq!(app.token_requests(99), 0);
}

/// A `suspend` that comes while a token is on its way (GitHub takes 150 ms for installation
/// 1001) is GitHub's newer word: the token that comes is not used, and the suspension stands.
/// The token's arrival must not be taken for GitHub saying the installation is back.
#[tokio::test]
async fn a_suspension_told_while_a_token_is_on_its_way_stands() {
    let Some(python) = peers::python() else {
        return;
    };
    let app = AppUnderTest::start(&python).await;
    app.deliver(github_delivery(Some(1001), 1)).await;
    eventually("the token request", PATIENCE, || {
        app.token_requests(1001) == 1
    })
    .await;
    app.deliver(installation_delivery(1001, "suspend")).await;
    app.done().await;
    assert!(app.gh.comment_authorization(1).is_none());
    assert_eq!(app.state.counters.comments_failed.load(Ordering::SeqCst), 1);
    // Still suspended: the next comment asks GitHub for nothing.
    app.deliver(github_delivery(Some(1001), 2)).await;
    app.done().await;
    assert_eq!(app.token_requests(1001), 1);
    assert_eq!(app.state.counters.comments_failed.load(Ordering::SeqCst), 2);
}

/// Azure DevOps answers a request whose token it does not take (expired, revoked) with its
/// sign-in page: a `302` to it, or `203 Non-Authoritative Information` and the page's HTML,
/// unless the request carries `X-TFS-FedAuthRedirect: Suppress`, which makes it answer `401`
/// (microsoft/azure-devops-auth-samples#52: "a POST and GET request where we receive a 203
/// status code when the access token is expired"). Neither the page nor a `203` is a comment
/// posted.
#[tokio::test]
async fn an_azure_devops_sign_in_page_is_not_a_comment_posted() {
    async fn azure_devops(req: Request) -> Response {
        let suppressed = req
            .headers()
            .get("x-tfs-fedauthredirect")
            .is_some_and(|v| v == "Suppress");
        let sign_in = [("content-type", "text/html; charset=utf-8")];
        match (req.uri().path(), suppressed) {
            ("/_signin", _) => (sign_in, "<html>Sign in</html>").into_response(),
            (_, false) => (StatusCode::FOUND, [("location", "/_signin")]).into_response(),
            (_, true) => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
    async fn non_authoritative() -> Response {
        (
            StatusCode::NON_AUTHORITATIVE_INFORMATION,
            [("content-type", "text/html; charset=utf-8")],
            "<html>Sign in</html>",
        )
            .into_response()
    }
    let (api_addr, _api) = start_fake_api().await;
    for (provider, id) in [
        (
            serve(Router::new().fallback(azure_devops)).await,
            "ad000000-0000-4000-8000-000000000302",
        ),
        (
            serve(Router::new().fallback(non_authoritative)).await,
            "ad000000-0000-4000-8000-000000000203",
        ),
    ] {
        let provider = format!("http://{provider}");
        let (base, state) = start_server(&settings(
            api_addr,
            &[("AZURE_DEVOPS_API_URL", provider.as_str())],
        ))
        .await;
        let client = crate::client::new();
        let d = delivery(app::Forge::AzureDevOps, id, 8);
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(state.drain_comments(Duration::from_secs(5)).await, 0);
        let s = status(&client, &base).await;
        assert_eq!(s["comments"]["posted"], 0, "{id}: {}", s["comments"]);
        assert_eq!(s["comments"]["failed"], 1, "{id}: {}", s["comments"]);
    }
}

/// An API URL every comment would fail with (no scheme, a scheme the client does not speak, a
/// query the comment's path would land in) stops the server with a message naming the
/// variable, rather than failing each comment at run time.
#[test]
fn an_api_url_comments_cannot_be_posted_to_is_refused_at_startup() {
    for forge in app::Forge::ALL {
        for value in [
            "api.github.com",
            "localhost:8080/api/v4",
            "ftp://git.example.com",
            "https://dev.azure.com/org?api-version=7.0",
            "https://git.example.com/api#v1",
            "https://",
        ] {
            refused_naming_it(forge.api_url_var(), value);
        }
        let var = forge.api_url_var();
        let settings = app::Settings::from_lookup(|n| {
            (n == var).then(|| " https://git.example.com/api/v4/ ".to_owned())
        })
        .unwrap();
        assert_eq!(
            settings.apis[&forge].base_url, "https://git.example.com/api/v4",
            "{var}"
        );
    }
}

/// A token pasted into an API URL by mistake, or credentials in it, never reach the log: an
/// URL with credentials is refused (they belong in the token setting), and the refusal does
/// not repeat the value.
#[test]
fn an_api_url_holding_a_secret_is_refused_without_showing_it() {
    for forge in app::Forge::ALL {
        let var = forge.api_url_var();
        for value in [
            "https://x-access-token:sekrit-123@api.github.com",
            "https://sekrit-123@git.example.com/api/v4",
            "https://git.example.com/api?private_token=sekrit-123",
            "ghp_sekrit-123",
        ] {
            let err = app::Settings::from_lookup(|n| (n == var).then(|| value.to_owned()))
                .expect_err(&format!("{var} with a secret is refused"));
            assert!(err.contains(var), "{err}");
            assert!(
                !err.contains("sekrit"),
                "{var}: the error shows the secret: {err}"
            );
        }
    }
}

/// A token read from a file or a secret store often ends with a line break, which no header
/// can carry: it is trimmed, as the webhook secrets are, and the comments go out with the
/// token. A token with a character no token has stops the server, naming the variable (and
/// not showing the token).
#[tokio::test]
async fn api_tokens_are_trimmed_and_checked_at_startup() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("GITHUB_TOKEN", "ghp_token\n"),
            ("GITLAB_TOKEN", " glpat\r\n"),
            ("BITBUCKET_TOKEN", "bb-token\n"),
            ("BITBUCKET_SERVER_TOKEN", "\tbbs-token"),
            ("GITEA_TOKEN", "gitea-token\n"),
            ("AZURE_DEVOPS_TOKEN", "ado-pat\n"),
        ],
    ))
    .await;
    let client = crate::client::new();
    for (i, forge) in app::Forge::ALL.into_iter().enumerate() {
        let d = delivery(forge, &format!("7c000000-0000-4000-8000-00000000000{i}"), 3);
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(state.drain_comments(Duration::from_secs(5)).await, 0);
    let s = status(&client, &base).await;
    assert_eq!(s["comments"]["posted"], 6, "{}", s["comments"]);
    let comments = api.comments.lock().unwrap().clone();
    let auth = |path: &str, header: &str| {
        let (_, headers, _) = comments.iter().find(|(p, _, _)| p == path).unwrap();
        headers[header].clone()
    };
    assert_eq!(
        auth("/repos/octo/repo/issues/3/comments", "authorization"),
        "Bearer ghp_token"
    );
    assert_eq!(
        auth("/projects/42/merge_requests/3/notes", "private-token"),
        "glpat"
    );
    let ado = "/proj-guid/_apis/git/repositories/repo-guid/pullRequests/3/threads?api-version=5.0";
    assert_eq!(
        auth(ado, "authorization"),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(":ado-pat")
        )
    );

    for forge in app::Forge::ALL {
        let token_var = match forge {
            app::Forge::GitHub => "GITHUB_TOKEN",
            app::Forge::GitLab => "GITLAB_TOKEN",
            app::Forge::Bitbucket => "BITBUCKET_TOKEN",
            app::Forge::BitbucketServer => "BITBUCKET_SERVER_TOKEN",
            app::Forge::Gitea => "GITEA_TOKEN",
            app::Forge::AzureDevOps => "AZURE_DEVOPS_TOKEN",
        };
        for token in ["two words", "line\nbreak", "t\u{f6}ken"] {
            let err = app::Settings::from_lookup(|n| match n {
                n if n == forge.api_url_var() => Some("https://git.example.com".to_owned()),
                n if n == token_var => Some(token.to_owned()),
                _ => None,
            })
            .expect_err(token);
            assert!(err.contains(token_var), "{err}");
            assert!(!err.contains(token), "the token is not shown: {err}");
        }
    }
}

/// The Azure DevOps user name, like its password and every other secret, is read without the
/// line break a secret file ends with: deliveries signed `azure:azure-pass` are accepted.
#[tokio::test]
async fn the_azure_devops_user_name_is_trimmed_like_its_password() {
    let (api_addr, _api) = start_fake_api().await;
    let (base, _) = start_server(&settings(
        api_addr,
        &[
            ("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure\n"),
            ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "azure-pass\n"),
        ],
    ))
    .await;
    let d = delivery(
        app::Forge::AzureDevOps,
        "ad000000-0000-4000-8000-00000000000a",
        4,
    );
    assert_eq!(
        send(&crate::client::new(), &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
}

/// GitLab has named a draft's change in `changes.draft` since 16.3; before, marking a draft
/// ready shows only as its title losing its `Draft:` (or `[Draft]`, `(Draft)`) prefix in
/// `changes.title`, or as `changes.work_in_progress` going from
/// true to false, with `work_in_progress` instead of `draft` in the attributes. Such a draft
/// marked ready gets its comment too; other renames do not.
#[test]
fn a_gitlab_draft_marked_ready_on_servers_before_changes_draft_gets_a_comment() {
    let update = |changes: Value, state: &str| json!({"object_kind": "merge_request", "project": {"id": 1}, "object_attributes": {"iid": 1, "action": "update", "title": "Fix", "work_in_progress": false, "state": state}, "changes": changes});
    let retitled = |previous: &str, current: &str| json!({"title": {"previous": previous, "current": current}});
    let comments = |payload: &Value| {
        app::comment_for(app::Forge::GitLab, Some("Merge Request Hook"), payload).is_some()
    };
    for previous in ["Draft: Fix", "draft:Fix", "[Draft] Fix", "(Draft) Fix"] {
        assert!(
            comments(&update(retitled(previous, "Fix"), "opened")),
            "{previous:?} -> \"Fix\""
        );
    }
    assert!(comments(&update(
        json!({"work_in_progress": {"previous": true, "current": false}}),
        "opened"
    )));
    for (changes, state) in [
        // Renames that publish nothing.
        (retitled("Fix", "Fix it"), "opened"),
        (retitled("Draft: Fix", "Draft: Fix it"), "opened"),
        (retitled("Fix", "Draft: Fix"), "opened"),
        // Not an open merge request.
        (retitled("Draft: Fix", "Fix"), "closed"),
        (retitled("Draft: Fix", "Fix"), "merged"),
        // A server that names the draft change says this one was none.
        (
            json!({"title": {"previous": "Draft: Fix", "current": "Fix"}, "draft": {"previous": false, "current": false}}),
            "opened",
        ),
        (
            json!({"work_in_progress": {"previous": false, "current": true}}),
            "opened",
        ),
    ] {
        assert!(
            !comments(&update(changes.clone(), state)),
            "{changes} {state}"
        );
    }
}

/// GitLab 14.0 dropped `WIP:`, `[WIP]` and `Draft - ` as draft prefixes (its draft title is
/// `\A(?i)(\[draft\]|\(draft\)|draft:)`): on a current server a merge request titled
/// `WIP: Fix` is not a draft, and a rename to `Fix` changes no draft status (no
/// `changes.draft`). It is no draft marked ready and gets no comment; a `Draft:` prefix, which
/// every server since 13.2 reads as a draft, still counts.
#[test]
fn a_gitlab_rename_dropping_a_wip_prefix_is_no_draft_marked_ready() {
    let renamed = |previous: &str| json!({"object_kind": "merge_request", "project": {"id": 1}, "object_attributes": {"iid": 1, "action": "update", "title": "Fix", "draft": false, "work_in_progress": false, "state": "opened"}, "changes": {"title": {"previous": previous, "current": "Fix"}}});
    let comments = |payload: &Value| {
        app::comment_for(app::Forge::GitLab, Some("Merge Request Hook"), payload).is_some()
    };
    for previous in ["WIP: Fix", "[WIP] Fix", "wip:Fix", "Draft - Fix"] {
        assert!(!comments(&renamed(previous)), "{previous:?} -> \"Fix\"");
    }
    assert!(comments(&renamed("Draft: Fix")));
}

/// GitHub: "If your request continues to fail due to a secondary rate limit, wait for an
/// exponentially increasing amount of time between retries [...] Continuing to make requests
/// while you are rate limited may result in the banning of your integration." (github/docs,
/// rate-limits-for-the-rest-api.md). A comment that keeps meeting a secondary limit that names
/// no delay waits a minute, then two, then four; not a minute each time.
#[tokio::test(start_paused = true)]
async fn a_secondary_rate_limit_that_persists_is_waited_out_longer_each_time() {
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let seen = attempts.clone();
    let github = serve(Router::new().fallback(move || {
        seen.lock().unwrap().push(tokio::time::Instant::now());
        async { secondary_limit() }
    }))
    .await;
    let (api_addr, _api) = start_fake_api().await;
    let github = format!("http://{github}");
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("GITHUB_API_URL", github.as_str()),
            ("COMMENT_MAX_ATTEMPTS", "4"),
        ],
    ))
    .await;
    let d = delivery(
        app::Forge::GitHub,
        "ab000000-0000-4000-8000-00000000403e",
        9,
    );
    assert_eq!(
        send(&crate::client::new(), &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(state.drain_comments(Duration::from_secs(3600)).await, 0);
    assert_eq!(state.counters.comments_failed.load(Ordering::SeqCst), 1);
    let attempts = attempts.lock().unwrap().clone();
    let waits: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(waits, [60, 120, 240], "{waits:?}");
}

/// The hook update meets the same guidance: a secondary rate limit that persists is waited out
/// a minute, then two, then four, not a minute each time, for as long as the tunnel lives.
#[tokio::test(start_paused = true)]
async fn a_hook_update_over_a_persisting_secondary_rate_limit_waits_longer_each_time() {
    let waits = hook_update_waits(|_| secondary_limit(), 4).await;
    assert_eq!(waits[..3], [60, 120, 240], "{waits:?}");
}

/// The waits, in seconds, between the first `attempts` requests of a hook updater to a fake
/// GitHub answering its `n`-th request (from 1) with `answer(n)`.
async fn hook_update_waits(answer: fn(usize) -> Response, attempts: usize) -> Vec<u64> {
    let seen: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let times = seen.clone();
    let github = serve(Router::new().fallback(move |method: http::Method| {
        // The config read before the first update is not counted.
        let call = (method != http::Method::GET).then(|| {
            let mut times = times.lock().unwrap();
            times.push(tokio::time::Instant::now());
            times.len()
        });
        async move { call.map_or_else(hook_config, answer) }
    }))
    .await;
    let _tx = follow_hook_at(github).await;
    for _ in 0..4000 {
        if seen.lock().unwrap().len() >= attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen = seen.lock().unwrap().clone();
    seen.windows(2)
        .take(attempts - 1)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect()
}

/// The growing wait of a persisting secondary rate limit is that limit's own: once GitHub
/// answers something else worth trying again (here a 429 asking for one second), the hook update
/// waits as its other failures do, a second to a minute, not the secondary limit's last wait
/// doubled (eight minutes after three of them).
#[tokio::test(start_paused = true)]
async fn a_hook_update_failing_otherwise_after_secondary_limits_waits_at_most_a_minute() {
    let waits = hook_update_waits(
        |call| match call {
            1..=3 => secondary_limit(),
            4 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response(),
            _ => StatusCode::OK.into_response(),
        },
        5,
    )
    .await;
    assert_eq!(waits.len(), 4, "{waits:?}");
    assert_eq!(waits[..3], [60, 120, 240], "{waits:?}");
    assert!((1..=60).contains(&waits[3]), "{waits:?}");
}

/// A setting whose value is not UTF-8 stops the server with a message naming it (and not
/// showing it), as the crate's own settings do: taken for unset, a secret's provider would
/// silently go unserved (or the server start in development mode with a made-up secret), a
/// breaker setting silently get its default. The test runs itself again as a child process
/// with such a value, since a test may not change its own environment.
#[cfg(unix)]
#[test]
fn a_setting_that_is_not_utf8_is_named_not_taken_for_unset() {
    use std::os::unix::ffi::OsStrExt;
    const CHILD: &str = "PR_AGENT_SERVER_ENV_TEST_CHILD";
    if let Some(var) = std::env::var_os(CHILD) {
        let var = var.to_str().unwrap();
        let err = app::Settings::from_env().expect_err(var);
        assert!(err.contains(var), "{err}");
        assert!(err.contains("UTF-8"), "{err}");
        assert!(!err.contains("cret"), "the value is not shown: {err}");
        return;
    }
    for var in [
        "GITHUB_WEBHOOK_SECRET",
        "AZURE_DEVOPS_WEBHOOK_PASSWORD",
        "GITLAB_TOKEN",
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
    ] {
        let mut command = child::alone(
            module_path!(),
            "a_setting_that_is_not_utf8_is_named_not_taken_for_unset",
            CHILD,
            var,
        );
        command
            .env("GITLAB_WEBHOOK_TOKEN", "gitlab-token")
            .env("GITLAB_API_URL", "https://gitlab.example.com/api/v4")
            .env("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure")
            .env("AZURE_DEVOPS_WEBHOOK_PASSWORD", "azure-pass")
            .env(var, std::ffi::OsStr::from_bytes(b"s\xffcret"));
        child::run_one(&mut command);
    }
}

/// A mention in a pull request's title notifies nobody (GitHub, GitLab and the others parse
/// mentions in descriptions and comments), but the same `@team` or GitLab `@all` in the
/// server's comment would: a title repeated in a comment, or a question quoted back, keeps its
/// text but mentions nobody.
#[test]
fn a_title_or_question_quoted_in_a_comment_mentions_nobody() {
    use app::Forge::*;
    let title = "Fix for @octo-org/security, cc @all (mail dev@example.com)";
    // An `@` before a name, not after a letter, digit or `_` (as in an e-mail address).
    let mentions = |text: &str| {
        let bytes = text.as_bytes();
        (0..bytes.len()).any(|i| {
            bytes[i] == b'@'
                && bytes
                    .get(i + 1)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'{')
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        })
    };
    let gh = json!({"action": "opened", "number": 1, "pull_request": {"number": 1, "title": title}, "repository": {"full_name": "o/r"}});
    let gl = json!({"object_kind": "merge_request", "project": {"id": 1}, "object_attributes": {"iid": 1, "action": "open", "title": title}});
    let bb = json!({"pullrequest": {"id": 1, "title": title}, "repository": {"full_name": "t/r"}});
    let ado = json!({"eventType": "git.pullrequest.created", "resource": {"pullRequestId": 1, "title": title, "repository": {"id": "r", "project": {"id": "p"}}}});
    for (forge, event, payload) in [
        (GitHub, "pull_request", &gh),
        (GitLab, "Merge Request Hook", &gl),
        (Bitbucket, "pullrequest:created", &bb),
        (AzureDevOps, "-", &ado),
    ] {
        let c = app::comment_for(forge, Some(event), payload).unwrap();
        let text = c.body.to_string();
        assert!(!mentions(&text), "{forge:?}: {text}");
        assert!(text.contains("octo-org/security"), "{forge:?}: {text}");
    }
    for (comment, title) in [
        ("/review", title),
        ("/ask @alice, is @{557058:c0ffee} right?", "T"),
    ] {
        let answer = app::answer_to_command(comment, title).unwrap();
        assert!(!mentions(&answer), "{answer}");
    }
}

/// Only what the providers read as a mention is made inert: an `@` that starts the text or
/// follows a character that is not a letter, digit or `_`, outside code spans and links. A
/// code span (`` `@Override` ``), a link (`https://example.com/@alice/post`) or an e-mail
/// address in a title is quoted unchanged: a zero-width space there would end up inside the
/// code copied from the comment, or in the link's address.
#[test]
fn a_title_quoted_in_a_comment_keeps_its_code_links_and_addresses() {
    use app::Forge::*;
    let title = "Handle `@Override` and `` @Nullable `` per https://example.com/@alice/post (dev@example.com), cc @all";
    let gl = json!({"object_kind": "merge_request", "project": {"id": 1}, "object_attributes": {"iid": 1, "action": "open", "title": title}});
    let gh = json!({"action": "opened", "number": 1, "pull_request": {"number": 1, "title": title}, "repository": {"full_name": "o/r"}});
    for (forge, event, payload) in [
        (GitHub, "pull_request", &gh),
        (GitLab, "Merge Request Hook", &gl),
    ] {
        let c = app::comment_for(forge, Some(event), payload).unwrap();
        let text = c.body.to_string();
        for kept in [
            "`@Override`",
            "`` @Nullable ``",
            "https://example.com/@alice/post",
            "dev@example.com",
        ] {
            assert!(text.contains(kept), "{forge:?}: {kept} in {text}");
        }
        assert!(text.contains("cc @\u{200B}all"), "{forge:?}: {text}");
    }
    let answer = app::answer_to_command("/ask is `@Inject` needed, @bob?", "T").unwrap();
    assert!(answer.contains("`@Inject`"), "{answer}");
    assert!(answer.contains("@\u{200B}bob"), "{answer}");
    // An unclosed backtick opens no code span, nor does a scheme without a host make a link:
    // the mentions after them are still made inert.
    let answer = app::answer_to_command("/ask why ` @carol", "T").unwrap();
    assert!(answer.contains("@\u{200B}carol"), "{answer}");
    let answer = app::answer_to_command("/ask see https://@all", "T").unwrap();
    assert!(answer.contains("@\u{200B}all"), "{answer}");
}

/// At shutdown, a comment waiting out a long backoff after the API failed many times (no wait
/// named by the provider) is tried once more during `SHUTDOWN_GRACE_SECS`, rather than slept
/// through the grace and lost: the API may be back by then.
#[tokio::test(start_paused = true)]
async fn a_comment_in_a_long_backoff_is_tried_again_during_the_shutdown_grace() {
    let (api_addr, api) = start_fake_api().await;
    api.failing.store(true, Ordering::SeqCst);
    let (base, state) = start_server(&settings(
        api_addr,
        &[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1000"),
            ("COMMENT_MAX_ATTEMPTS", "1000"),
        ],
    ))
    .await;
    let d = delivery(
        app::Forge::GitLab,
        "f4000000-0000-4000-8000-000000000004",
        64,
    );
    assert_eq!(
        send(&crate::client::new(), &base, &d).await.status(),
        StatusCode::ACCEPTED
    );
    // Ten failed attempts (virtual time): the next one is more than three minutes away.
    for _ in 0..5000 {
        if api.requests.load(Ordering::SeqCst) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.requests.load(Ordering::SeqCst), 10);
    api.failing.store(false, Ordering::SeqCst);
    // Shutdown, with a grace of 20 s: the comment is posted within it.
    assert_eq!(state.drain_comments(Duration::from_secs(20)).await, 0);
    assert_eq!(comment_count(&api), 1);
}

/// Deliveries are read whole (up to `MAX_BODY_BYTES`) before their signature can be checked, so
/// anyone can make the server buffer: `MAX_CONCURRENT_DELIVERIES` bounds how many it reads at
/// once. Past it, a delivery is answered 503 with `Retry-After` (the provider delivers it again
/// later), and once those in flight end, deliveries are taken again.
#[tokio::test]
async fn deliveries_read_at_once_are_bounded() {
    use tokio::io::AsyncWriteExt;

    let (api_addr, _api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[("MAX_CONCURRENT_DELIVERIES", "2")])).await;
    // Two deliveries whose bodies are still on their way (unsigned: nobody needs a secret to
    // send these).
    let mut stalled = Vec::new();
    for n in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: x\r\nx-github-event: ping\r\nx-github-delivery: stalled-{n}\r\nx-hub-signature-256: sha256={}\r\ncontent-length: 1000000\r\n\r\n{{\"zen\":",
            "0".repeat(64)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let client = crate::client::new();
    // Once both are being read, a third is refused (waited for: the server reads the heads at
    // its own pace).
    let mut refused = None;
    for n in 0..200 {
        let res = send(
            &client,
            &base,
            &delivery(app::Forge::GitHub, &format!("third-{n}"), n),
        )
        .await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("a third delivery read while two are in flight");
    assert!(refused.headers().contains_key("retry-after"));
    let body = refused.text().await.unwrap();
    assert!(body.contains("urn:tower-webhook:problem:"), "{body}");

    // The stalled ones go away: deliveries are read again.
    drop(stalled);
    let mut accepted = false;
    for n in 0..200 {
        let res = send(
            &client,
            &base,
            &delivery(app::Forge::GitHub, &format!("fourth-{n}"), n),
        )
        .await;
        if res.status() == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        accepted,
        "deliveries are taken again once the stalled ones ended"
    );
}
#[test]
fn max_concurrent_deliveries_is_checked() {
    refused_naming_it("MAX_CONCURRENT_DELIVERIES", "0");
    refused_naming_it("MAX_CONCURRENT_DELIVERIES", "65537");
    let defaults = app::Settings::from_lookup(|_| None).unwrap();
    assert_eq!(defaults.max_concurrent_deliveries, 64);
}

// =============================================================================================
// Redirects of a provider API, and keys set in the wrong variable.
// =============================================================================================

/// A request a redirecting fake API received: method, path, headers.
type Seen = (String, String, HashMap<String, String>);

/// A fake provider API that redirects the comments of some pull requests: `301` (71), `302`
/// (72) and `307` (73) to `/moved/<n>` on itself, and GitLab's note of 74 with a `307` to
/// `elsewhere`. Under `/moved/`, a `GET` lists comments (`200`) and a `POST` makes one (`201`).
async fn start_redirecting_api(elsewhere: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let handler = move |State(seen): State<Arc<Mutex<Vec<Seen>>>>, req: Request| async move {
        let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        seen.lock()
            .unwrap()
            .push((method.clone(), path.clone(), headers));
        let redirect =
            |status: StatusCode, to: String| (status, [("location", to)], "moved").into_response();
        match (method.as_str(), path.as_str()) {
            ("POST", "/repos/octo/repo/issues/71/comments") => {
                redirect(StatusCode::MOVED_PERMANENTLY, "/moved/71".into())
            }
            ("POST", "/repos/octo/repo/issues/72/comments") => {
                redirect(StatusCode::FOUND, "/moved/72".into())
            }
            ("POST", "/repos/octo/repo/issues/73/comments") => {
                redirect(StatusCode::TEMPORARY_REDIRECT, "/moved/73".into())
            }
            ("POST", "/projects/42/merge_requests/74/notes") => redirect(
                StatusCode::TEMPORARY_REDIRECT,
                format!("http://{elsewhere}/notes"),
            ),
            ("GET", p) if p.starts_with("/moved/") => (StatusCode::OK, "[]").into_response(),
            ("POST", p) if p.starts_with("/moved/") => StatusCode::CREATED.into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    };
    let router = Router::new().fallback(handler).with_state(seen.clone());
    (serve(router).await, seen)
}

/// A comment `POST` answered with a `301` or `302` (an `*_API_URL` set to `http://` on a server
/// that sends clients to `https://`, a repository moved) is not followed with a `GET`, whose
/// `200` listing was taken for the comment posted: it is refused, counted as failed. A `307` to
/// the same API, which keeps the method and the body, is still followed; one to another host,
/// where GitLab's `PRIVATE-TOKEN` would go too, is not.
#[tokio::test]
async fn a_redirected_comment_is_not_taken_for_posted_nor_sent_elsewhere() {
    // Another host: 127.0.0.2.
    let other = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let elsewhere = other.local_addr().unwrap();
    let stolen = Arc::new(Mutex::new(Vec::<HashMap<String, String>>::new()));
    let record = stolen.clone();
    let router = Router::new().fallback(move |req: Request| {
        let record = record.clone();
        async move {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            record.lock().unwrap().push(headers);
            StatusCode::CREATED
        }
    });
    tokio::spawn(async move { axum::serve(other, router).await.unwrap() });

    let (api_addr, seen) = start_redirecting_api(elsewhere).await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    for (forge, pr) in [
        (app::Forge::GitHub, 71),
        (app::Forge::GitHub, 72),
        (app::Forge::GitHub, 73),
        (app::Forge::GitLab, 74),
    ] {
        let d = delivery(
            forge,
            &format!("a0000000-0000-4000-8000-0000000000{pr}"),
            pr,
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let mut counters = Value::Null;
    for _ in 0..500 {
        counters = status(&client, &base).await["comments"].clone();
        if counters["pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(method, path, _)| (method.clone(), path.clone()))
        .collect();
    assert!(
        !requests.iter().any(|(method, _)| method == "GET"),
        "a comment POST became a GET: {requests:?}"
    );
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the comment went to another host, with its token: {:?}",
        stolen.lock().unwrap()
    );
    assert_eq!(counters["pending"], 0, "{counters}");
    // 73's 307 to the same API keeps its POST and body.
    assert!(
        requests.contains(&("POST".into(), "/moved/73".into())),
        "{requests:?}"
    );
    assert_eq!(counters["posted"], 1, "{counters}");
    assert_eq!(counters["failed"], 3, "{counters}");
}

/// A private key put in `GITHUB_APP_PRIVATE_KEY_PATH` or `GITHUB_APP_ID` by mistake is not
/// repeated in the error that stops the server (it goes to the terminal and to the logs).
#[test]
fn a_key_in_the_wrong_github_app_variable_is_not_shown() {
    let lookup = |vars: &[(&str, &str)]| {
        app::Settings::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let api = ("GITHUB_API_URL", "http://127.0.0.1:9");
    let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA";
    let pem = format!("-----BEGIN RSA PRIVATE KEY-----\n{secret}\n-----END RSA PRIVATE KEY-----\n");
    let one_line = pem.replace('\n', "\\n");
    // The base64 alone, as long as a 2048-bit key's, with its `/` and `+`.
    let bare = format!("{secret}/+").repeat(60);
    let cut = pem.replacen("KEY-----\n", "KEY\n", 1);
    let cut_end = format!("-----BEGIN RSA PRIVATE KEY\n{secret}\n");
    for (vars, named) in [
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY_PATH", &*pem),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY_PATH", &*one_line),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY_PATH", &*bare),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("GITHUB_APP_ID", &*pem),
                ("GITHUB_APP_PRIVATE_KEY", &*pem),
                api,
            ],
            "GITHUB_APP_ID",
        ),
        // A `-----BEGIN` line cut short: its label runs into the key.
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY", &*cut),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            vec![
                ("GITHUB_APP_ID", "1"),
                ("GITHUB_APP_PRIVATE_KEY", &*cut_end),
                api,
            ],
            "GITHUB_APP_PRIVATE_KEY",
        ),
    ] {
        let err = lookup(&vars).unwrap_err();
        assert!(err.contains(named), "names {named}: {err}");
        assert!(!err.contains(secret), "the key is shown: {err}");
    }
    // A path that is one is still named, to find the file.
    let err = lookup(&[
        ("GITHUB_APP_ID", "1"),
        ("GITHUB_APP_PRIVATE_KEY_PATH", "/nonexistent/app.pem"),
        api,
    ])
    .unwrap_err();
    assert!(err.contains("/nonexistent/app.pem"), "{err}");
}

/// A command in a GitLab internal note (delivered as a "Confidential Note Hook") is answered
/// with an internal note: the answer quotes the question, which a public note would show to
/// people who may not read internal notes. A public note is answered in public.
#[tokio::test]
async fn a_gitlab_internal_note_is_answered_with_an_internal_note() {
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let note = |id: u64, internal: bool, text: &str| json!({"object_kind": "note", "event_type": if internal { "confidential_note" } else { "note" }, "project_id": 42, "user": {"username": "dev"}, "object_attributes": {"id": id, "note": text, "noteable_type": "MergeRequest", "system": false, "action": "create", "internal": internal, "confidential": internal}, "merge_request": {"iid": 81, "title": "Fix"}});
    for (id, internal, event, text) in [
        (
            1,
            true,
            "Confidential Note Hook",
            "/ask Does this close the embargoed CVE?",
        ),
        (2, false, "Note Hook", "/ask Is the changelog updated?"),
    ] {
        let d = signed(
            app::Forge::GitLab,
            &format!("c0000000-0000-4000-8000-00000000008{id}"),
            event,
            note(id, internal, text).to_string().into_bytes(),
        );
        assert_eq!(
            send(&client, &base, &d).await.status(),
            StatusCode::ACCEPTED
        );
    }
    eventually("both answers", PATIENCE, || {
        state.counters.comments_posted.load(Ordering::SeqCst) == 2
    })
    .await;
    let comments = api.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 2, "{comments:?}");
    let answer = |question: &str| {
        comments
            .iter()
            .find(|(_, _, body)| body["body"].as_str().unwrap_or("").contains(question))
            .unwrap_or_else(|| panic!("no answer quoting {question:?}: {comments:?}"))
            .clone()
    };
    let (path, _, internal) = answer("embargoed CVE");
    assert_eq!(path, "/projects/42/merge_requests/81/notes");
    assert_eq!(internal["internal"], true, "{internal}");
    let (_, _, public) = answer("changelog");
    assert_ne!(public["internal"], true, "{public}");
}

/// `/status` counts deliveries: a request to a path no provider delivers to (a scanner, a
/// probe) is answered 404 and is no rejected delivery; a delivery with a bad signature is one.
#[tokio::test]
async fn a_request_to_no_webhook_route_is_not_counted_as_a_rejected_delivery() {
    let (api_addr, _api) = start_fake_api().await;
    let (base, _) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/wp-login.php"),
        (reqwest::Method::POST, "/api/v1/jenkins_webhooks"),
        (reqwest::Method::GET, "/.env"),
    ] {
        let res = client
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(status(&client, &base).await["deliveries"]["rejected"], 0);
    let mut forged = delivery(
        app::Forge::GitHub,
        "d0000000-0000-4000-8000-000000000091",
        91,
    );
    forged.headers[2].1 = format!("sha256={}", "0".repeat(64));
    assert_eq!(
        send(&client, &base, &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&client, &base).await["deliveries"]["rejected"], 1);
}

/// A signed delivery whose repository, project or workspace is no plain name gets no comment:
/// the URL parser would have resolved `octo/../../admin/users/x#` into a request on another
/// path of the API (`/admin/users/x`), with the server's token. Whoever has a webhook's secret
/// can sign such a delivery; no provider sends one. Names as the providers give them (dots,
/// underscores, dashes, a Bitbucket Data Center personal project's `~`) still get theirs.
#[tokio::test]
async fn deliveries_naming_a_repository_no_provider_would_get_no_comment() {
    use app::Forge::*;
    let (api_addr, api) = start_fake_api().await;
    let (base, state) = start_server(&settings(api_addr, &[])).await;
    let client = crate::client::new();
    let mut n = 0u32;
    // Each delivery of `forge` that names something, with `name` (a JSON string in the body)
    // replaced by `with`, signed again: how many were answered 202.
    let mut send_renamed = async |forge: app::Forge, name: &str, with: &str| {
        let mut accepted = 0;
        for comment in [false, true] {
            n += 1;
            let id = format!("d1000000-0000-4000-8000-{n:012}");
            let d = match comment {
                false => delivery(forge, &id, 5),
                true => comment_delivery(forge, &id, 5, "/review"),
            };
            let body = String::from_utf8(d.body).unwrap();
            let name = serde_json::to_string(name).unwrap();
            assert!(body.contains(&name), "{name} is not in {body}");
            let body = body.replace(&name, &serde_json::to_string(with).unwrap());
            let event = d
                .headers
                .iter()
                .find(|(header, _)| header.ends_with("-event") || *header == "x-event-key")
                .map_or("-", |(_, event)| event.as_str());
            let res = send(
                &client,
                &base,
                &signed(forge, &id, event, body.into_bytes()),
            )
            .await;
            accepted += usize::from(res.status() == StatusCode::ACCEPTED);
        }
        accepted
    };
    let named = [
        (GitHub, "octo/repo", "octo/"),
        (Gitea, "org/repo", "org/"),
        (Bitbucket, "team/repo", "team/"),
        (BitbucketServer, "PROJ", ""),
        (BitbucketServer, "repo", ""),
        (AzureDevOps, "proj-guid", ""),
        (AzureDevOps, "repo-guid", ""),
    ];
    let mut sent = 0;
    for (forge, name, owner) in named {
        for bad in [
            "../../admin/users/x#",
            "..",
            ".",
            "",
            "a#",
            "a?per_page=1",
            "%2e%2e",
            "a/b",
            "a b",
            "répo",
            "a\\b",
        ] {
            let with = format!("{owner}{bad}");
            sent += 2;
            assert_eq!(
                send_renamed(forge, name, &with).await,
                2,
                "{forge:?} {with:?}"
            );
        }
    }
    // GitHub's, Gitea's and Bitbucket Cloud's owner is checked as its repository is.
    sent += 2;
    assert_eq!(send_renamed(GitHub, "octo/repo", "../repo").await, 2);
    assert_eq!(
        state.counters.jobs.load(Ordering::SeqCst),
        0,
        "{sent} deliveries"
    );
    assert_eq!(api.requests.load(Ordering::SeqCst), 0);

    for (forge, name, with, path) in [
        (
            GitHub,
            "octo/repo",
            "my-org/my.repo_2",
            "/repos/my-org/my.repo_2/issues/5/comments",
        ),
        (
            Gitea,
            "org/repo",
            "a.b/c~d",
            "/repos/a.b/c~d/issues/5/comments",
        ),
        (
            Bitbucket,
            "team/repo",
            "my_team/re.po",
            "/repositories/my_team/re.po/pullrequests/5/comments",
        ),
        (
            BitbucketServer,
            "PROJ",
            "~ADMIN",
            "/rest/api/1.0/projects/~ADMIN/repos/repo/pull-requests/5/comments",
        ),
        (
            AzureDevOps,
            "repo-guid",
            "3411ebc1-d5aa-464f-9615-0b527bc66719",
            "/proj-guid/_apis/git/repositories/3411ebc1-d5aa-464f-9615-0b527bc66719/pullRequests/5/threads?api-version=5.0",
        ),
    ] {
        let before = comment_count(&api);
        assert_eq!(send_renamed(forge, name, with).await, 2, "{forge:?} {with}");
        eventually("two comments", PATIENCE, || {
            comment_count(&api) == before + 2
        })
        .await;
        let comments = api.comments.lock().unwrap();
        for (got, _, _) in &comments[before..] {
            assert_eq!(got, path, "{forge:?}");
        }
    }
}
