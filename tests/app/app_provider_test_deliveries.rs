//! The pr_agent_server example: each provider's own test deliveries (a test connection, a test
//! hook, a test notification), sent to its router on 127.0.0.1 by a real HTTP client.

use crate::harness;

use harness::{lookup, start_server, status};
use hmac::{KeyInit, Mac};
use http::StatusCode;
use serde_json::json;

const BBS: &str = "bbs-secret";

fn bbs_signature(body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(BBS.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------------

/// Bitbucket Data Center's "Test connection" button sends `X-Event-Key: diagnostics:ping`
/// without `X-Hub-Signature`, even when the webhook has a secret. The server answered it `401`,
/// so the test said the webhook was broken when it was not. The ping is answered `2xx` now and
/// does nothing; any other unsigned or badly signed delivery is still refused.
#[tokio::test]
async fn a_bitbucket_data_center_test_connection_ping_is_answered_without_a_signature() {
    let settings = lookup(&[("BITBUCKET_SERVER_WEBHOOK_SECRET", BBS)]).unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let url = format!("{base}/api/v1/bitbucket_server_webhooks");
    let ping = json!({"test": true}).to_string();

    let res = client
        .post(&url)
        .header("content-type", "application/json; charset=UTF-8")
        .header("x-event-key", "diagnostics:ping")
        .header("x-request-id", "b5000000-0000-4000-8000-000000000001")
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "the test connection ping is refused: {}",
        res.status()
    );

    // A ping that is signed is verified as any delivery: a wrong signature is refused.
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-event-key", "diagnostics:ping")
        .header("x-request-id", "b5000000-0000-4000-8000-000000000002")
        .header("x-hub-signature", format!("sha256={}", "0".repeat(64)))
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-event-key", "diagnostics:ping")
        .header("x-request-id", "b5000000-0000-4000-8000-000000000003")
        .header("x-hub-signature", bbs_signature(&ping))
        .body(ping)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());

    // Any other event still needs its signature, and gets no comment without it.
    let opened = json!({
        "eventKey": "pr:opened",
        "pullRequest": {"id": 5, "title": "Fix", "state": "OPEN", "toRef": {"repository": {"slug": "repo", "project": {"key": "PROJ"}}}},
    })
    .to_string();
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-event-key", "pr:opened")
        .header("x-request-id", "b5000000-0000-4000-8000-000000000004")
        .body(opened)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // An unsigned request that names the ping in another case, or with other events, is no
    // ping either.
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-event-key", "pr:opened")
        .header("x-event-key", "diagnostics:ping")
        .header("x-request-id", "b5000000-0000-4000-8000-000000000005")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let status = status(&client, &base).await;
    assert_eq!(status["comments"]["jobs"], 0, "{status}");
    assert_eq!(status["comments"]["logged"], 0, "{status}");
    assert_eq!(status["comments"]["posted"], 0, "{status}");
}

/// GitLab's "Test > Merge request events" button sends the project's newest merge request with
/// `action: "open"`, whatever its state: a merged or closed one too. The server took it for a
/// merge request just opened and commented on it ("review queued" on a merge request merged
/// long ago). A merge request opened or reopened is in state `opened`: one that is not gets no
/// comment now.
#[tokio::test]
async fn a_gitlab_test_delivery_of_a_merged_merge_request_gets_no_comment() {
    let settings = lookup(&[("GITLAB_WEBHOOK_TOKEN", "gl-token")]).unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let deliver = |n: u32, action: &str, state: Option<&str>| {
        let mut attrs = json!({"iid": 7, "action": action, "title": "Fix", "draft": false});
        if let Some(state) = state {
            attrs["state"] = json!(state);
        }
        let body = json!({
            "object_kind": "merge_request",
            "event_type": "merge_request",
            "project": {"id": 42},
            "object_attributes": attrs,
        });
        client
            .post(format!("{base}/api/v1/gitlab_webhooks"))
            .header("x-gitlab-token", "gl-token")
            .header("x-gitlab-event", "Merge Request Hook")
            .header(
                "x-gitlab-event-uuid",
                format!("b5000000-0000-4000-8000-0000000001{n:02}"),
            )
            .json(&body)
            .send()
    };
    for (n, state) in [(1, "merged"), (2, "closed"), (3, "locked")] {
        for (m, action) in [(0, "open"), (50, "reopen")] {
            let res = deliver(n + m, action, Some(state)).await.unwrap();
            assert_eq!(res.status(), StatusCode::ACCEPTED);
            let status = status(&client, &base).await;
            assert_eq!(
                status["comments"]["jobs"], 0,
                "{action} of a {state} merge request: {status}"
            );
        }
    }
    // A merge request really opened or reopened is `opened` (older servers may not say).
    let mut jobs = 0;
    for (n, action, state) in [
        (10, "open", Some("opened")),
        (11, "reopen", Some("opened")),
        (12, "open", None),
    ] {
        let res = deliver(n, action, state).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        jobs += 1;
        let status = status(&client, &base).await;
        assert_eq!(
            status["comments"]["jobs"], jobs,
            "{action} {state:?}: {status}"
        );
    }
}

/// Azure DevOps' "Test" button in a service hook's dialog sends a sample event (Jamal
/// Hartnett's pull request 1 in the Fabrikam project), some with the subscription id all zeros
/// (no subscription has that id), others with the id of the subscription being saved. The
/// server posted a comment to that pull request, which the organization does not have: the
/// comment failed with an error in the log. A test notification gets no comment now, told by
/// its subscription id or by the sample's repository.
#[tokio::test]
async fn an_azure_devops_test_notification_gets_no_comment() {
    let settings = lookup(&[
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "azure"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "pass"),
    ])
    .unwrap();
    let base = start_server(&settings).await;
    let client = crate::client::new();
    let sample = "4bc14d40-c903-45e2-872e-0462c7748079";
    let event = |subscription: &str, id: &str, event: &str, repository: &str| {
        let mut resource = json!({
            "pullRequestId": 1,
            "title": "my first pull request",
            "status": "active",
            "isDraft": false,
            "repository": {
                "id": repository,
                "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c"},
            },
        });
        if event == "ms.vss-code.git-pullrequest-comment-event" {
            resource = json!({
                "comment": {"id": 2, "content": "/help", "commentType": "text"},
                "pullRequest": resource,
            });
        }
        json!({
            "subscriptionId": subscription,
            "notificationId": 5,
            "id": id,
            "eventType": event,
            "publisherId": "tfs",
            "message": {"text": "Jamal Hartnett created a new pull request"},
            "resource": resource,
        })
    };
    let zero = "00000000-0000-0000-0000-000000000000";
    let created = "git.pullrequest.created";
    let commented = "ms.vss-code.git-pullrequest-comment-event";
    let saved = "bed09de0-2579-4ff1-8b19-5582f8d03eba";
    let real = "b5a1b7e2-4c0e-4a55-9d1c-6f0d2c3a9e01";
    let ours = "0f3c2a1b-9d8e-4c7b-a6f5-e4d3c2b1a098";
    let cases = [
        (
            zero,
            "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e",
            created,
            sample,
            0,
        ),
        (
            zero,
            "af07be1b-f3ad-44c8-a7f1-c4835f2df06b",
            commented,
            sample,
            0,
        ),
        // The sample under the id of the subscription being saved.
        (
            saved,
            "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e",
            created,
            sample,
            0,
        ),
        (
            saved,
            "af07be1b-f3ad-44c8-a7f1-c4835f2df06b",
            commented,
            sample,
            0,
        ),
        // A real subscription's events get their comments.
        (
            real,
            "b5000000-0000-4000-8000-000000000301",
            created,
            ours,
            1,
        ),
        (
            real,
            "b5000000-0000-4000-8000-000000000302",
            commented,
            ours,
            2,
        ),
    ];
    for (subscription, id, kind, repository, jobs) in cases {
        let res = client
            .post(format!("{base}/api/v1/azuredevops_webhooks"))
            .basic_auth("azure", Some("pass"))
            .json(&event(subscription, id, kind, repository))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let status = status(&client, &base).await;
        assert_eq!(
            status["comments"]["jobs"], jobs,
            "{kind} of subscription {subscription}: {status}"
        );
    }
}

/// GitLab's "Test" of comment events sends the project's newest note again, as if just written
/// by whoever clicked Test: `user` is them, the note's `author_id` is its author. That note's
/// command was answered when it was written: it is not answered again. The same note told by
/// its author is.
#[tokio::test]
async fn a_gitlab_test_of_comment_events_answers_no_old_command() {
    let (base, fake) = harness::gitlab_server().await;
    let note = |user: u64| {
        json!({
            "object_kind": "note",
            "event_type": "note",
            "user": {"id": user, "username": format!("user{user}")},
            "project_id": 5,
            "object_attributes": {
                "id": 1244,
                "note": "/review",
                "noteable_type": "MergeRequest",
                "author_id": 1,
                "system": false,
                "action": "create"
            },
            "merge_request": {"iid": 1, "title": "Fix", "state": "opened"}
        })
        .to_string()
    };
    for (user, uuid) in [
        (9, "7a0a4a8e-0000-4000-8000-000000000801"),
        (1, "7a0a4a8e-0000-4000-8000-000000000802"),
    ] {
        let headers = [
            ("x-gitlab-token", "gl-token".to_owned()),
            ("x-gitlab-event", "Note Hook".to_owned()),
            ("idempotency-key", uuid.to_owned()),
        ];
        assert_eq!(
            harness::deliver(&base, "/api/v1/gitlab_webhooks", &headers, &note(user)).await,
            StatusCode::ACCEPTED
        );
    }
    let s = harness::settled(&crate::client::new(), &base, 1).await;
    assert_eq!(s["comments"]["posted"], 1, "{s}");
    assert_eq!(fake.received().len(), 1);
}
