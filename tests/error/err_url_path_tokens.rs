//! WebhookErrorLayer: hook URLs whose token is in the path, passwords with an unencoded `/`, `?`
//! or `#`, and tokens in a fragment stay out of the log.

use crate::axum_serve;
use crate::logs;

use std::time::Duration;

use logs::Logs;
use tower::{BoxError, ServiceBuilder};
use tower_webhook::error::WebhookErrorLayer;

/// A bot that posts to a chat hook and fails logs reqwest's error, which names the hook's URL,
/// token and all. The hosts are resolved to a refused port on 127.0.0.1, so the errors are real
/// reqwest errors and nothing leaves the machine.
#[tokio::test]
async fn hook_tokens_in_url_paths_and_passwords_with_a_slash_are_not_logged() {
    let (logs, _guard) = Logs::capture();
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], crate::unopened::closed_port()));
    let port = refused.port();
    let client = crate::client::builder()
        .resolve("hooks.slack.com", refused)
        .resolve("discord.com", refused)
        .resolve("api.telegram.org", refused)
        .resolve("acme.webhook.office.com", refused)
        .build()
        .unwrap();
    let urls = [
        format!("http://hooks.slack.com:{port}/services/T01/B02/slack-hunter2"),
        format!("http://discord.com:{port}/api/webhooks/123/discord-hunter2?wait=true"),
        format!("http://api.telegram.org:{port}/bot123:tg-hunter2/sendMessage"),
        format!(
            "http://acme.webhook.office.com:{port}/webhookb2/a@b/IncomingWebhook/teams-hunter2/c"
        ),
    ];
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |req: axum::extract::Request| {
            let (client, urls) = (client.clone(), urls.clone());
            async move {
                let err: BoxError = match req.uri().path() {
                    "/password" => std::io::Error::other(
                        "cannot reach https://bot:pw/hunter2@chat.example/api: refused",
                    )
                    .into(),
                    // Connection strings with a generated password, and an OAuth callback.
                    "/question" => {
                        std::io::Error::other("connect redis://:pa?hunter2@cache:6379/0 failed")
                            .into()
                    }
                    "/hash" => "connect postgres://bot:pa#hunter2@db/app failed".into(),
                    "/fragment" => {
                        "bad redirect https://app.example/cb#access_token=hunter2&state=s1".into()
                    }
                    path => {
                        let i: usize = path[1..].parse().unwrap();
                        let err = client
                            .post(&urls[i])
                            .body("{}")
                            .send()
                            .await
                            .expect_err("nothing listens there");
                        assert!(err.to_string().contains("hunter2"), "{err}");
                        err.into()
                    }
                };
                Err::<axum::response::Response, _>(err)
            }
        });
    let (addr, server) = axum_serve::serve(app).await;
    let http = crate::client::new();
    let paths = [
        "/0",
        "/1",
        "/2",
        "/3",
        "/password",
        "/question",
        "/hash",
        "/fragment",
    ];
    for path in paths {
        let res = http
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(res.status(), 500, "{path}");
        assert!(!res.text().await.unwrap().contains("hunter2"));
    }
    server.abort();

    let text = logs.text();
    assert_eq!(
        text.matches("request failed").count(),
        paths.len(),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    for kept in [
        format!("hooks.slack.com:{port}/<redacted>)"),
        format!("discord.com:{port}/api/webhooks/<redacted>?wait=true)"),
        format!("api.telegram.org:{port}/bot<redacted>/sendMessage)"),
        format!("acme.webhook.office.com:{port}/<redacted>)"),
        "https://<redacted>@chat.example/api: refused".to_owned(),
        "redis://<redacted>@cache:6379/0 failed".to_owned(),
        "postgres://<redacted>@db/app failed".to_owned(),
        "https://app.example/cb#access_token=<redacted>&state=s1".to_owned(),
    ] {
        assert!(text.contains(&kept), "{kept} in {text}");
    }
}
