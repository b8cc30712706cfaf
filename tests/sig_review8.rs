//! Signature layer, eighth review: what a Redis store says when it cannot undo a late `SET`,
//! and Gitea/Forgejo webhooks configured with the HTTP method `GET`.

#[path = "common/logs.rs"]
mod logs;

#[path = "common/redis_server.rs"]
mod redis_server;

#[path = "common/github_hook.rs"]
mod github_hook;
use github_hook::{GH_SECRET, github, send};

use std::time::Duration;

use http::StatusCode;
use logs::Logs;
use tower_webhook::signature::{RecordDelivery, RedisReplayStore, SignatureLayer};

/// A `SET` Redis carries out after the layer gave up on it (the delivery got 503) is deleted
/// again; when that delete fails, the id stays recorded and the provider's retry is refused as
/// a replay until it expires: that is logged, naming the delivery, instead of passing in
/// silence.
#[tokio::test]
async fn a_late_set_that_cannot_be_undone_is_logged() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    let (logs, _guard) = Logs::capture();
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The store's `SET` works; the script that deletes the late key is refused.
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-eval")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let store = RedisReplayStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(300));
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store)
        .record_delivery(RecordDelivery::AfterVerification);
    redis.signal("-STOP");
    let refused = send(&layer, StatusCode::OK, github("late-set-kept")).await;
    redis.signal("-CONT");
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    let mut logged = false;
    for _ in 0..500 {
        let text = logs.text();
        if text.contains("github:late-set-kept") && text.contains("could not delete it") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = logs.text();
    assert!(logged, "the failed delete was not logged: {text}");
    assert!(text.contains("ERROR"), "{text}");
    assert!(!text.contains(GH_SECRET), "{text}");
}
