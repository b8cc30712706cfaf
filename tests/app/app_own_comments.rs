//! The examples: the pr_agent_server example's own comments coming back from Bitbucket Data Center
//! and Azure DevOps, Azure DevOps replies answered in their thread, and a second stop signal during
//! the drain of the open connections.

use crate::app;
use crate::child;
use crate::harness;

use std::time::Duration;

use base64::Engine;
use harness::{FakeProvider, deliver, hmac_hex, lookup, start_server};
use http::StatusCode;
use serde_json::{Value, json};

/// Set in the child process of [`a_second_stop_signal_ends_the_wait_for_open_connections`].
const SECOND_SIGNAL_CHILD: &str = "PR_AGENT_SERVER_SECOND_SIGNAL_CHILD";

/// A second Ctrl-C or `SIGTERM` was documented to cut the shutdown short, "even one sent while
/// the open requests are still answered", but the server waited for its open connections (up to
/// the server's 10 s drain) before it looked at the second signal at all. It stops waiting for
/// them at once now, says so, and still counts the comments left.
///
/// The test runs itself again as a child process, which runs the server as `main` does, keeps
/// a delivery's body half sent, and sends the child two `SIGTERM`s.
#[cfg(unix)]
#[test]
fn a_second_stop_signal_ends_the_wait_for_open_connections() {
    use std::io::{BufRead, Read, Write};
    const NAME: &str = "a_second_stop_signal_ends_the_wait_for_open_connections";
    if std::env::var_os(SECOND_SIGNAL_CHILD).is_some() {
        harness::run_as_child();
        return;
    }

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child::test_path(module_path!(), NAME),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SECOND_SIGNAL_CHILD, "1")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("GITHUB_WEBHOOK_SECRET", "s3cret")
        // A body that sends nothing is answered 408 after half of it: not within the test.
        .env("REQUEST_TIMEOUT_SECS", "600")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let mut errors = String::new();
    // Reads the child's stderr until a line contains `needle`, at most 30 s.
    let wait_for = |needle: &str, errors: &mut String| -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    errors.push_str(&line);
                    errors.push('\n');
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    };
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
        // After the test harness's "test ... " on the same line.
        if let Some((_, addr)) = line.trim().split_once("listening on ") {
            break addr.to_owned();
        }
    };

    // A delivery whose body is half sent: its request stays open. `100 Continue` says that the
    // server is reading the body, so that the request is under way when the signal comes.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    write!(
        conn,
        "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-github-event: ping\r\nx-github-delivery: 5e000000-0000-4000-8000-000000000001\r\n\
         x-hub-signature-256: sha256={}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        hmac_hex("s3cret", body),
        body.len()
    )
    .unwrap();
    let mut continued = [0; 25];
    conn.read_exact(&mut continued).unwrap();
    assert!(
        continued.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&continued)
    );
    conn.write_all(&body[..10]).unwrap();

    let term = || {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    term();
    assert!(
        wait_for("draining open connections", &mut errors),
        "the drain did not start: {errors}"
    );
    term();
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(conn);
    reader.join().unwrap();
    errors.extend(lines.try_iter().map(|line| line + "\n"));
    let status = status.unwrap_or_else(|| panic!("the child never exited: {errors}"));
    assert!(status.success(), "{status}: {errors}");
    assert!(
        errors.contains("second stop signal: not waiting for the open connections"),
        "the second signal did not end the wait: {errors}"
    );
    // The open request was not waited for until the drain's end.
    assert!(
        !errors.contains("connections still open after"),
        "the open connection was waited for: {errors}"
    );
    assert!(errors.contains("comments left: 0"), "{errors}");
}

/// Waits until the server has answered `deliveries` deliveries and has no comment pending, at
/// most 10 s (the bound only ends a failing test): the requests the fake API received.
async fn received_after(
    base: &str,
    fake: &FakeProvider,
    deliveries: u64,
) -> Vec<harness::Received> {
    let client = crate::client::new();
    let start = std::time::Instant::now();
    loop {
        let s = harness::status(&client, base).await;
        if s["deliveries"]["accepted"] == deliveries && s["comments"]["pending"] == 0 {
            return fake.received();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not settled: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Bitbucket Data Center `pr:comment:added` as documented, by `user`, saying `text`.
fn bitbucket_dc_comment(user: &str, comment_id: u64, text: &str) -> String {
    let who = json!({
        "name": user, "emailAddress": format!("{user}@example.com"), "id": 7,
        "displayName": user, "active": true, "slug": user.to_lowercase(), "type": "NORMAL"
    });
    let repository = json!({
        "slug": "repository", "id": 84, "name": "repository", "scmId": "git", "state": "AVAILABLE",
        "project": {"key": "PROJ", "id": 84, "name": "PROJ", "type": "NORMAL"}
    });
    json!({
        "eventKey": "pr:comment:added",
        "date": "2017-09-19T11:16:44+1000",
        "actor": who,
        "pullRequest": {
            "id": 9, "version": 3, "title": "Fix the lock", "state": "OPEN", "open": true,
            "closed": false,
            "fromRef": {"id": "refs/heads/fix", "repository": repository},
            "toRef": {"id": "refs/heads/master", "repository": repository},
        },
        "comment": {
            "properties": {"repositoryId": 84}, "id": comment_id, "version": 0, "text": text,
            "author": who, "createdDate": 1505783804000u64, "updatedDate": 1505783804000u64
        }
    })
    .to_string()
}

/// Bitbucket Data Center's payloads do not flag a comment posted through the API: a comment by
/// the user the server comments as (`BITBUCKET_SERVER_BOT_USER`) was answered like anyone's,
/// so that a command in it, or an answer that quoted one, would be acted on again. It gets no
/// answer now; the same command by someone else still does.
#[tokio::test]
async fn a_bitbucket_data_center_comment_by_the_servers_own_user_gets_no_answer() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("BITBUCKET_SERVER_WEBHOOK_SECRET", "bbs-secret"),
        ("BITBUCKET_SERVER_API_URL", &api),
        ("BITBUCKET_SERVER_TOKEN", "http-access-token"),
        ("BITBUCKET_SERVER_BOT_USER", " pr-agent "),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    for (n, user, id) in [(1, "PR-Agent", 62), (2, "alice", 63)] {
        let body = bitbucket_dc_comment(user, id, "/review");
        let headers = [
            ("x-event-key", "pr:comment:added".to_owned()),
            (
                "x-request-id",
                format!("c2d1e0f9-0000-4000-8000-00000000150{n}"),
            ),
            (
                "x-hub-signature",
                format!("sha256={}", hmac_hex("bbs-secret", &body)),
            ),
        ];
        assert_eq!(
            deliver(&base, "/api/v1/bitbucket_server_webhooks", &headers, &body).await,
            StatusCode::ACCEPTED
        );
    }
    let received = received_after(&base, &fake, 2).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let (path, _, body) = &received[0];
    assert_eq!(
        path,
        "/rest/api/1.0/projects/PROJ/repos/repository/pull-requests/9/comments"
    );
    assert_eq!(body["parent"], json!({"id": 63}), "alice's is answered");
}

/// An Azure DevOps `ms.vss-code.git-pullrequest-comment-event` as documented: comment
/// `comment_id` in thread `thread`, a reply to `parent` (0: the comment that starts the thread).
fn azure_devops_comment(
    author: Value,
    thread: u64,
    comment_id: u64,
    parent: u64,
    text: &str,
) -> Value {
    let repo = "9f1c7e2a-3b4d-4e5f-8a6b-7c8d9e0f1a2b";
    let api = format!(
        "https://fabrikam.visualstudio.com/DefaultCollection/_apis/git/repositories/{repo}"
    );
    json!({
        "subscriptionId": "b0c8a2f1-3d4e-4f5a-9b6c-7d8e9f0a1b2c",
        "notificationId": 3,
        "id": format!("af07be1b-f3ad-44c8-a7f1-c4835f{thread:02}{comment_id:04}"),
        "eventType": "ms.vss-code.git-pullrequest-comment-event",
        "publisherId": "tfs",
        "message": {"text": "Jamal Hartnett has commented on a pull request"},
        "resource": {
            "comment": {
                "id": comment_id,
                "parentCommentId": parent,
                "author": author,
                "content": text,
                "publishedDate": "2024-06-17T16:58:33.123889Z",
                "lastUpdatedDate": "2024-06-17T16:58:33.123889Z",
                "lastContentUpdatedDate": "2024-06-17T16:58:33.123889Z",
                "commentType": "text",
                "_links": {
                    "self": {"href": format!("{api}/pullRequests/1/threads/{thread}/comments/{comment_id}")},
                    "repository": {"href": api},
                    "threads": {"href": format!("{api}/pullRequests/1/threads/{thread}")}
                }
            },
            "pullRequest": {
                "repository": {
                    "id": repo,
                    "name": "Fabrikam",
                    "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "name": "Fabrikam", "state": "wellFormed"}
                },
                "pullRequestId": 1,
                "status": "active",
                "title": "my first pull request",
                "isDraft": false
            }
        },
        "resourceVersion": "2.0",
        "createdDate": "2024-06-17T16:58:34.2879096Z"
    })
}

fn jamal() -> Value {
    json!({
        "displayName": "Jamal Hartnett",
        "id": "54d125f7-69f7-4191-904f-c5b96b6261c8",
        "uniqueName": "fabrikamfiber4@hotmail.com"
    })
}

/// Azure DevOps settings with `extra`, against the fake API at `api`.
fn azure_devops_settings(api: &str, extra: &[(&str, &str)]) -> app::Settings {
    let mut vars = vec![
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "hooks"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "p4ss"),
        ("AZURE_DEVOPS_API_URL", api),
        ("AZURE_DEVOPS_TOKEN", "pat"),
    ];
    vars.extend_from_slice(extra);
    lookup(&vars).unwrap()
}

async fn azure_devops(base: &str, body: &Value) -> StatusCode {
    let basic = base64::engine::general_purpose::STANDARD.encode("hooks:p4ss");
    let headers = [("authorization", format!("Basic {basic}"))];
    deliver(
        base,
        "/api/v1/azuredevops_webhooks",
        &headers,
        &body.to_string(),
    )
    .await
}

/// With only a personal access token, the server comments as the token's owner, and Azure
/// DevOps' payloads do not flag a comment posted through the API: a comment by that identity
/// (`AZURE_DEVOPS_BOT_USER`, its `uniqueName` or its `id`) was answered like anyone's. It gets
/// no answer now; the same command by someone else still does.
#[tokio::test]
async fn an_azure_devops_comment_by_the_servers_own_identity_gets_no_answer() {
    for own in [
        "PR-Agent@Fabrikam.example",
        "0f0e0d0c-1111-4222-8333-944455556666",
    ] {
        let (api, fake) = FakeProvider::start(&[StatusCode::OK]).await;
        let base = start_server(&azure_devops_settings(
            &api,
            &[("AZURE_DEVOPS_BOT_USER", own)],
        ))
        .await;
        let bot = json!({
            "displayName": "PR Agent",
            "id": "0F0E0D0C-1111-4222-8333-944455556666",
            "uniqueName": "pr-agent@fabrikam.example"
        });
        for body in [
            azure_devops_comment(bot, 5, 1, 0, "/review"),
            azure_devops_comment(jamal(), 6, 1, 0, "/describe"),
        ] {
            assert_eq!(azure_devops(&base, &body).await, StatusCode::ACCEPTED);
        }
        let received = received_after(&base, &fake, 2).await;
        assert_eq!(received.len(), 1, "{own}: {received:?}");
        let text = received[0].2["comments"][0]["content"]
            .as_str()
            .unwrap_or("");
        assert!(
            text.starts_with("Queued `/describe`"),
            "{own}: {received:?}"
        );
    }
}

/// A command given as a reply in an existing Azure DevOps thread was answered in a new thread,
/// away from the conversation. It is answered in the same thread now (`POST
/// .../threads/{threadId}/comments`, a reply to the command), the thread id read from the
/// comment's links; a command that starts a thread still gets a new thread, created closed.
#[tokio::test]
async fn an_azure_devops_command_given_as_a_reply_is_answered_in_its_thread() {
    let (api, fake) = FakeProvider::start(&[StatusCode::OK, StatusCode::OK]).await;
    let base = start_server(&azure_devops_settings(&api, &[])).await;
    let reply = azure_devops_comment(jamal(), 5, 2, 1, "/ask Why is this lock needed?");
    assert_eq!(azure_devops(&base, &reply).await, StatusCode::ACCEPTED);
    let received = received_after(&base, &fake, 1).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let (path, headers, body) = &received[0];
    assert_eq!(
        path,
        "/6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c/_apis/git/repositories/9f1c7e2a-3b4d-4e5f-8a6b-7c8d9e0f1a2b/pullRequests/1/threads/5/comments?api-version=5.0"
    );
    let pat = base64::engine::general_purpose::STANDARD.encode(":pat");
    assert_eq!(headers["authorization"], format!("Basic {pat}"));
    assert_eq!(body["parentCommentId"], 2, "{body}");
    assert_eq!(body["commentType"], 1, "{body}");
    assert!(
        body.get("status").is_none(),
        "the thread's status is left alone: {body}"
    );
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .contains("Why is this lock needed?"),
        "{body}"
    );

    // A command that starts its own thread: a new thread, closed, as before.
    let top = azure_devops_comment(jamal(), 6, 1, 0, "/review");
    assert_eq!(azure_devops(&base, &top).await, StatusCode::ACCEPTED);
    let received = received_after(&base, &fake, 2).await;
    assert_eq!(received.len(), 2, "{received:?}");
    let (path, _, body) = &received[1];
    assert!(
        path.ends_with("/pullRequests/1/threads?api-version=5.0"),
        "{path}"
    );
    assert_eq!(body["status"], 4, "{body}");
    assert_eq!(body["comments"][0]["parentCommentId"], 0, "{body}");
}
