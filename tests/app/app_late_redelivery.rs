//! The pr_agent_server example: a delivery sent again by hand days after it came, and an API
//! token set without its API's URL.

use crate::app;
use crate::harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use harness::{FakeProvider, deliver, github_opened, lookup, serve, settled};
use http::StatusCode;
use tower_webhook::signature::Clock;

/// GitHub's "Redeliver" sends a delivery of the last 3 days again with its `X-GitHub-Delivery`
/// (GitHub Enterprise Server: of the last 7 days). The routes remembered a delivery for 24 h
/// only, so that a delivery whose comment was posted, delivered again a day or more later,
/// was processed again and commented on a second time. It is remembered 7 days now, or
/// `COMMENT_MAX_AGE_SECS` if that is longer; past that it is processed again.
#[tokio::test]
async fn a_delivery_sent_again_days_later_is_not_commented_on_twice() {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    assert_eq!(app::replay_ttl(&settings), Duration::from_secs(7 * 86_400));
    // The clock the routes remember deliveries by, moved by hand.
    let start = SystemTime::now();
    let elapsed = Arc::new(AtomicU64::new(0));
    let clock = {
        let elapsed = elapsed.clone();
        Clock::from_fn(move || start + Duration::from_secs(elapsed.load(Ordering::SeqCst)))
    };
    let app = app::build_with_clock(&settings, clock).unwrap();
    let base = format!("http://{}", serve(app.router).await);
    let client = crate::client::new();
    let route = "/api/v1/github_webhooks";
    let (headers, body) = github_opened("s3cret", "8d6f3c40-1d2e-11f0-8a4e-5f1c2b3a4d01", 21);

    assert_eq!(
        deliver(&base, route, &headers, &body).await,
        StatusCode::ACCEPTED
    );
    settled(&client, &base, 1).await;
    assert_eq!(fake.received().len(), 1);

    // Delivered again a day and an hour later, then after 3 days and 6 days: acknowledged,
    // not processed.
    for hours in [25, 3 * 24 + 1, 6 * 24] {
        elapsed.store(hours * 3600, Ordering::SeqCst);
        assert_eq!(
            deliver(&base, route, &headers, &body).await,
            StatusCode::OK,
            "delivered again after {hours} h"
        );
    }
    let s = settled(&client, &base, 1).await;
    assert_eq!(s["deliveries"]["duplicates"], 3, "{s}");
    assert_eq!(fake.received().len(), 1, "commented on once");

    // Past 7 days the id is forgotten: delivered again, it is processed.
    elapsed.store(7 * 86_400 + 60, Ordering::SeqCst);
    assert_eq!(
        deliver(&base, route, &headers, &body).await,
        StatusCode::ACCEPTED
    );
    settled(&client, &base, 2).await;
    assert_eq!(fake.received().len(), 2);
}

/// A comment may be tried for up to `COMMENT_MAX_AGE_SECS` (up to 30 days): its delivery is
/// remembered at least that long, so that a copy delivered meanwhile is not processed again.
#[test]
fn deliveries_are_remembered_as_long_as_their_comment_may_be_tried() {
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("COMMENT_MAX_AGE_SECS", "2592000"),
    ])
    .unwrap();
    assert_eq!(app::replay_ttl(&settings), Duration::from_secs(30 * 86_400));
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("COMMENT_MAX_AGE_SECS", "60"),
    ])
    .unwrap();
    assert_eq!(app::replay_ttl(&settings), app::REDELIVERY_WINDOW);
}

/// `GITHUB_TOKEN` set without `GITHUB_API_URL` (as PR-Agent users set it, whose GitHub API
/// is implied) was ignored without a word: the startup text said only that no GitHub API was
/// configured, and every comment was logged instead of posted. It now warns, naming the
/// setting that is missing and its value for the provider.
#[test]
fn a_token_without_its_api_url_is_warned_about() {
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_TOKEN", "ghp_token"),
        ("GITLAB_WEBHOOK_TOKEN", "gl-t0ken"),
        ("GITLAB_TOKEN", "glpat-token"),
        // Blank: as good as unset, nothing to warn about.
        ("GITEA_TOKEN", " "),
    ])
    .unwrap();
    let warnings = settings.warnings();
    assert_eq!(
        warnings,
        [
            "GITHUB_TOKEN is set without GITHUB_API_URL: nothing is posted to github, its comments are logged; set GITHUB_API_URL to its API's base URL (e.g. https://api.github.com)",
            "GITLAB_TOKEN is set without GITLAB_API_URL: nothing is posted to gitlab, its comments are logged; set GITLAB_API_URL to its API's base URL (e.g. https://gitlab.com/api/v4)",
        ]
    );
    let mut out = Vec::new();
    app::announce(&mut out, &settings, "http://127.0.0.1:3000", None).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("warning: GITHUB_TOKEN is set without GITHUB_API_URL"),
        "{out}"
    );
    // The token is not shown.
    assert!(!out.contains("ghp_token"), "{out}");
    assert!(!format!("{settings:?}").contains("ghp_token"));

    // With its URL, no such warning.
    let settings = lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "ghp_token"),
    ])
    .unwrap();
    assert_eq!(settings.warnings(), Vec::<String>::new());
}
