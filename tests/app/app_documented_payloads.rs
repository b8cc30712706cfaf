//! The examples: the pr_agent_server example's router on 127.0.0.1 against a fake provider API on
//! 127.0.0.1, fed deliveries shaped like the providers' documented payloads, with the headers the
//! providers send.

use crate::harness;

use base64::Engine;
use harness::hmac_hex;
use harness::{FakeProvider, deliver, lookup, settled, start_server};
use http::StatusCode;
use serde_json::{Value, json};

/// The one request the fake API received once the server settled: path, headers, body.
async fn only_request(base: &str, fake: &FakeProvider) -> harness::Received {
    let s = settled(&crate::client::new(), base, 1).await;
    assert_eq!(s["comments"]["posted"], 1, "{s}");
    let mut received = fake.received();
    assert_eq!(received.len(), 1, "{received:?}");
    received.remove(0)
}

/// GitLab's documented Note Hook of a comment on a merge request: the answer goes to the merge
/// request's `iid` in the note's project, with `PRIVATE-TOKEN`.
#[tokio::test]
async fn a_gitlab_note_hook_as_documented_is_answered_on_its_merge_request() {
    let (base, fake) = harness::gitlab_server().await;
    let body = json!({
        "object_kind": "note",
        "event_type": "note",
        "user": {"id": 1, "name": "Administrator", "username": "root", "email": "admin@example.com"},
        "project_id": 5,
        "project": {"id": 5, "name": "Gitlab Test", "path_with_namespace": "gitlab-org/gitlab-test"},
        "repository": {"name": "Gitlab Test"},
        "object_attributes": {
            "id": 1244,
            "note": "/review",
            "noteable_type": "MergeRequest",
            "author_id": 1,
            "project_id": 5,
            "system": false,
            "noteable_id": 7,
            "internal": false,
            "action": "create"
        },
        "merge_request": {
            "id": 7,
            "iid": 1,
            "target_project_id": 5,
            "source_project_id": 5,
            "title": "Tempora et eos debitis quae laborum et.",
            "state": "opened"
        }
    })
    .to_string();
    let headers = [
        ("x-gitlab-token", "gl-token".to_owned()),
        ("x-gitlab-event", "Note Hook".to_owned()),
        (
            "x-gitlab-event-uuid",
            "7a0a4a8e-0000-4000-8000-000000000701".to_owned(),
        ),
    ];
    assert_eq!(
        deliver(&base, "/api/v1/gitlab_webhooks", &headers, &body).await,
        StatusCode::ACCEPTED
    );
    let (path, headers, body) = only_request(&base, &fake).await;
    assert_eq!(path, "/projects/5/merge_requests/1/notes");
    assert_eq!(headers["private-token"], "glpat-abc");
    assert_eq!(
        body,
        json!({"body": "Queued `/review` of \"Tempora et eos debitis quae laborum et.\"."})
    );
}

/// Gitea's comment on a pull request, with the headers Gitea sends (`X-Gitea-Event:
/// issue_comment`, and the GitHub- and Gogs-style copies): the answer goes to the pull
/// request's issue, with `Authorization: token`.
#[tokio::test]
async fn a_gitea_pull_request_comment_as_sent_is_answered_on_its_pull_request() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("GITEA_WEBHOOK_SECRET", "gt-secret"),
        ("GITEA_API_URL", &api),
        ("GITEA_TOKEN", "gitea-token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let body = json!({
        "action": "created",
        "issue": {
            "id": 11,
            "number": 3,
            "title": "Add a README",
            "state": "open",
            "pull_request": {"merged": false, "merged_at": null},
            "user": {"id": 1, "login": "gitea"}
        },
        "comment": {"id": 21, "body": "/help", "user": {"id": 1, "login": "gitea"}},
        "repository": {"id": 1, "name": "repo", "full_name": "gitea/repo", "owner": {"login": "gitea"}},
        "sender": {"id": 1, "login": "gitea"},
        "is_pull": true
    })
    .to_string();
    let signature = hmac_hex("gt-secret", &body);
    let delivery = "5d6a7b8c-0000-4000-8000-000000000702".to_owned();
    let headers = [
        ("x-gitea-delivery", delivery.clone()),
        ("x-gitea-event", "issue_comment".to_owned()),
        ("x-gitea-event-type", "pull_request_comment".to_owned()),
        ("x-gitea-signature", signature.clone()),
        ("x-gogs-delivery", delivery.clone()),
        ("x-gogs-event", "issue_comment".to_owned()),
        ("x-gogs-signature", signature.clone()),
        ("x-github-delivery", delivery),
        ("x-github-event", "issue_comment".to_owned()),
        ("x-hub-signature-256", format!("sha256={signature}")),
    ];
    assert_eq!(
        deliver(&base, "/api/v1/gitea_webhooks", &headers, &body).await,
        StatusCode::ACCEPTED
    );
    let (path, headers, body) = only_request(&base, &fake).await;
    assert_eq!(path, "/repos/gitea/repo/issues/3/comments");
    assert_eq!(headers["authorization"], "token gitea-token");
    assert!(
        body["body"].as_str().unwrap().starts_with("Commands: "),
        "{body}"
    );
}

/// Bitbucket Data Center's documented `pr:comment:added`: the answer is a reply to the comment,
/// on the pull request of its target repository.
#[tokio::test]
async fn a_bitbucket_data_center_comment_as_documented_is_answered_as_a_reply() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("BITBUCKET_SERVER_WEBHOOK_SECRET", "bbs-secret"),
        ("BITBUCKET_SERVER_API_URL", &api),
        ("BITBUCKET_SERVER_TOKEN", "http-access-token"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let repository = |slug: &str, key: &str| {
        json!({
            "slug": slug, "id": 84, "name": slug, "scmId": "git", "state": "AVAILABLE",
            "project": {"key": key, "id": 84, "name": key, "type": "NORMAL"}
        })
    };
    let body = json!({
        "eventKey": "pr:comment:added",
        "date": "2017-09-19T11:16:44+1000",
        "actor": {"name": "admin", "id": 1, "slug": "admin", "type": "NORMAL"},
        "pullRequest": {
            "id": 9,
            "version": 3,
            "title": "file edited online with Bitbucket",
            "state": "OPEN",
            "open": true,
            "closed": false,
            "fromRef": {"id": "refs/heads/admin/file-1505781548644", "repository": repository("fork", "~ADMIN")},
            "toRef": {"id": "refs/heads/master", "repository": repository("repository", "PROJ")},
            "locked": false
        },
        "comment": {"properties": {"repositoryId": 84}, "id": 62, "version": 0, "text": "/improve"},
        "commentParentId": 43
    })
    .to_string();
    let headers = [
        ("x-event-key", "pr:comment:added".to_owned()),
        (
            "x-request-id",
            "c2d1e0f9-0000-4000-8000-000000000703".to_owned(),
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
    let (path, headers, body) = only_request(&base, &fake).await;
    assert_eq!(
        path,
        "/rest/api/1.0/projects/PROJ/repos/repository/pull-requests/9/comments"
    );
    assert_eq!(headers["authorization"], "Bearer http-access-token");
    assert_eq!(body["parent"], json!({"id": 62}));
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("Queued `/improve`"),
        "{body}"
    );
}

/// Azure DevOps' documented `ms.vss-code.git-pullrequest-comment-event` (in a repository of
/// its own: the sample's is the one the "Test" button sends), without the comment's `_links`
/// (so its thread is unknown, although it is a reply): the answer is a new thread on the
/// pull request, in its repository's project, with the token as a Basic password. A reply whose
/// links name its thread is answered there (`app_own_comments`).
#[tokio::test]
async fn an_azure_devops_comment_whose_thread_is_unknown_is_answered_in_a_new_thread() {
    let (api, fake) = FakeProvider::start(&[StatusCode::OK]).await;
    let settings = lookup(&[
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "hooks"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "p4ss"),
        ("AZURE_DEVOPS_API_URL", &api),
        ("AZURE_DEVOPS_TOKEN", "pat"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let repository = json!({
        "id": "9f1c7e2a-3b4d-4e5f-8a6b-7c8d9e0f1a2b",
        "name": "Fabrikam",
        "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "name": "Fabrikam", "state": "wellFormed"}
    });
    let body = json!({
        "subscriptionId": "b0c8a2f1-3d4e-4f5a-9b6c-7d8e9f0a1b2c",
        "notificationId": 3,
        "id": "af07be1b-f3ad-44c8-a7f1-c4835f2df06b",
        "eventType": "ms.vss-code.git-pullrequest-comment-event",
        "publisherId": "tfs",
        "message": {"text": "Jamal Hartnett has edited a pull request comment"},
        "resource": {
            "comment": {
                "id": 2,
                "parentCommentId": 1,
                "author": {"displayName": "Jamal Hartnett", "uniqueName": "fabrikamfiber4@hotmail.com"},
                "content": "/ask Why is this lock needed?",
                "publishedDate": "2014-06-17T16:58:33.123889Z",
                "lastUpdatedDate": "2014-06-17T16:58:33.123889Z",
                "lastContentUpdatedDate": "2014-06-17T16:58:33.123889Z",
                "commentType": "text"
            },
            "pullRequest": {
                "repository": repository,
                "pullRequestId": 1,
                "status": "active",
                "title": "my first pull request",
                "isDraft": false
            }
        },
        "resourceVersion": "2.0",
        "createdDate": "2016-09-19T13:03:27.2879096Z"
    })
    .to_string();
    let basic = base64::engine::general_purpose::STANDARD.encode("hooks:p4ss");
    let headers = [("authorization", format!("Basic {basic}"))];
    assert_eq!(
        deliver(&base, "/api/v1/azuredevops_webhooks", &headers, &body).await,
        StatusCode::ACCEPTED
    );
    let (path, headers, body) = only_request(&base, &fake).await;
    assert_eq!(
        path,
        "/6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c/_apis/git/repositories/9f1c7e2a-3b4d-4e5f-8a6b-7c8d9e0f1a2b/pullRequests/1/threads?api-version=5.0"
    );
    let pat = base64::engine::general_purpose::STANDARD.encode(":pat");
    assert_eq!(headers["authorization"], format!("Basic {pat}"));
    // Closed: an active thread would block the pull request's completion (see
    // app_settings_and_logs).
    assert_eq!(body["status"], 4);
    let comment: &Value = &body["comments"][0];
    assert_eq!(comment["parentCommentId"], 0);
    assert_eq!(comment["commentType"], 1);
    assert!(
        comment["content"]
            .as_str()
            .unwrap()
            .contains("Why is this lock needed?")
    );
}
