//! The pr_agent_server example, fifth review: each provider's own deliveries, sent to its router
//! on 127.0.0.1 by a real HTTP client.

#[path = "../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use http::StatusCode;
use serde_json::{Value, json};

fn lookup(vars: &[(&str, &str)]) -> Result<app::Settings, String> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    app::Settings::from_lookup(|name| env.get(name).cloned())
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start_server(settings: &app::Settings) -> String {
    let app = app::build(settings).unwrap();
    format!("http://{}", serve(app.router).await)
}

async fn status(client: &reqwest::Client, base: &str) -> Value {
    client
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------

/// GitLab's "Test > Merge request events" button sends the project's newest merge request with
/// `action: "open"`, whatever its state: a merged or closed one too. The server took it for a
/// merge request just opened and commented on it ("review queued" on a merge request merged
/// long ago). A merge request opened or reopened is in state `opened`: one that is not gets no
/// comment now.
#[tokio::test]
async fn a_gitlab_test_delivery_of_a_merged_merge_request_gets_no_comment() {
    let settings = lookup(&[("GITLAB_WEBHOOK_TOKEN", "gl-token")]).unwrap();
    let base = start_server(&settings).await;
    let client = reqwest::Client::new();
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
        assert_eq!(status["comments"]["jobs"], jobs, "{action} {state:?}: {status}");
    }
}
