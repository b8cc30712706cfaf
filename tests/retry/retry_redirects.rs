//! The retry policy and reqwest clients that follow redirects: a `POST` the upstream acted on and
//! redirected is sent again only as the docs say, and an answer to the redirected request is no
//! refusal of the `POST`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

use crate::unopened::closed_port;

/// A server whose `POST /comments` records a comment and answers `303 See Other` to a host
/// that refuses connections; its base URL and the count of the comments it recorded.
async fn posts_then_redirects_to_a_closed_port() -> (String, Arc<AtomicUsize>) {
    let posted = Arc::new(AtomicUsize::new(0));
    let seen = posted.clone();
    let location = format!("http://127.0.0.1:{}/comments/1", closed_port());
    let app = axum::Router::new().route(
        "/comments",
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            let location = location.clone();
            async move { (axum::http::StatusCode::SEE_OTHER, [("location", location)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), posted)
}

macro_rules! redirect_hops_are_not_told_apart {
    ($name:ident, $reqwest:ident) => {
        /// What the docs say of a client that follows redirects: the upstream acted on the
        /// `POST` and redirected to a host that refuses connections; reqwest's connect error
        /// does not tell that hop from the first, so the policy sends the `POST` again. With
        /// redirects off, as the docs advise for such calls, the `303` comes back and the
        /// comment is posted once.
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            let post = |base: &str| {
                let url: reqwest::Url = format!("{base}/comments").parse().unwrap();
                let mut req = reqwest::Request::new(reqwest::Method::POST, url);
                *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
                req
            };
            let policy = || {
                RetryPolicy::new()
                    .max_retries(2)
                    .backoff(Duration::from_millis(1), Duration::from_millis(5))
                    .into_layer()
            };

            let (base, posted) = posts_then_redirects_to_a_closed_port().await;
            let following = reqwest::Client::builder().no_proxy().build().unwrap();
            let err = ServiceBuilder::new()
                .layer(policy())
                .service(following)
                .oneshot(post(&base))
                .await
                .unwrap_err();
            assert!(err.is_connect(), "{err}");
            assert_eq!(
                posted.load(Ordering::SeqCst),
                3,
                "sent again: the documented limit"
            );

            let (base, posted) = posts_then_redirects_to_a_closed_port().await;
            let not_following = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let res = ServiceBuilder::new()
                .layer(policy())
                .service(not_following)
                .oneshot(post(&base))
                .await
                .unwrap();
            assert_eq!(res.status(), 303);
            assert_eq!(posted.load(Ordering::SeqCst), 1, "posted once");
        }
    };
}

redirect_hops_are_not_told_apart!(
    a_reqwest_client_that_follows_redirects_is_as_documented,
    reqwest
);
redirect_hops_are_not_told_apart!(
    a_reqwest_0_12_client_that_follows_redirects_is_as_documented,
    reqwest_0_12
);

/// A server whose `POST /comments` records a comment and answers `303 See Other` to `/limited`,
/// which answers every request `429 Too Many Requests`; its base URL and the count of the
/// comments it recorded.
async fn posts_then_redirects_to_a_limited_page() -> (String, Arc<AtomicUsize>) {
    let posted = Arc::new(AtomicUsize::new(0));
    let seen = posted.clone();
    let app = axum::Router::new()
        .route(
            "/comments",
            axum::routing::post(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::SEE_OTHER,
                        [("location", "/limited")],
                    )
                }
            }),
        )
        .route(
            "/limited",
            axum::routing::any(|| async { axum::http::StatusCode::TOO_MANY_REQUESTS }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), posted)
}

macro_rules! a_redirected_answer_is_no_refusal {
    ($name:ident, $reqwest:ident) => {
        /// A 429 is a refusal of the request it answers. After reqwest followed a redirect, it
        /// answers another request (the `GET` of a `303 See Other`), and says nothing of the
        /// `POST`, which the upstream acted on: the `POST` is not sent again (it was, twice,
        /// and each time the upstream posted the comment again).
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            let (base, posted) = posts_then_redirects_to_a_limited_page().await;
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let url: reqwest::Url = format!("{base}/comments").parse().unwrap();
            let mut req = reqwest::Request::new(reqwest::Method::POST, url);
            *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
            let res = ServiceBuilder::new()
                .layer(
                    RetryPolicy::new()
                        .max_retries(2)
                        .backoff(Duration::from_millis(1), Duration::from_millis(5))
                        .into_layer(),
                )
                .service(client)
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(res.status(), 429);
            assert_eq!(res.url().path(), "/limited");
            assert_eq!(posted.load(Ordering::SeqCst), 1, "posted once");

            // The same answer as an error (`error_for_status`), which keeps its URL.
            posted.store(0, Ordering::SeqCst);
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let url: reqwest::Url = format!("{base}/comments").parse().unwrap();
            let mut req = reqwest::Request::new(reqwest::Method::POST, url);
            *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
            let err = ServiceBuilder::new()
                .layer(
                    RetryPolicy::new()
                        .max_retries(2)
                        .backoff(Duration::from_millis(1), Duration::from_millis(5))
                        .into_layer(),
                )
                .and_then(|res: reqwest::Response| async move { res.error_for_status() })
                .service(client)
                .oneshot(req)
                .await
                .unwrap_err();
            assert_eq!(err.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS));
            assert_eq!(
                posted.load(Ordering::SeqCst),
                1,
                "posted once, error_for_status"
            );
        }
    };
}

a_redirected_answer_is_no_refusal!(
    a_reqwest_post_answered_after_a_redirect_is_not_sent_again,
    reqwest
);
a_redirected_answer_is_no_refusal!(
    a_reqwest_0_12_post_answered_after_a_redirect_is_not_sent_again,
    reqwest_0_12
);
