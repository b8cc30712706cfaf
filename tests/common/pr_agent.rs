//! What the tests of the `pr_agent_server` example share: settings from a list of variables, the
//! app served on a loopback port, and its `/status`. The including file declares `mod app;`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use serde_json::Value;

use super::app;

/// Settings read from `vars` alone, as if they were the environment.
pub(crate) fn lookup(vars: &[(&str, &str)]) -> Result<app::Settings, String> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    app::Settings::from_lookup(|name| env.get(name).cloned())
}

/// Serves `router` on a loopback port.
pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Builds the app from `settings` and serves it: its base URL.
pub(crate) async fn start_server(settings: &app::Settings) -> String {
    let app = app::build(settings).unwrap();
    format!("http://{}", serve(app.router).await)
}

/// Posts `body` (JSON) to `route` of `base` with `headers`: the answer's status.
#[allow(dead_code)] // not every test file delivers this way
pub(crate) async fn deliver(
    base: &str,
    route: &str,
    headers: &[(&str, String)],
    body: &str,
) -> http::StatusCode {
    let mut req = crate::client::new()
        .post(format!("{base}{route}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap().status()
}

/// Runs the server from the environment as `main` does, in a test's child process: prints
/// `listening on {addr}` to stdout once it listens, and `comments left: {n}` to stderr at exit,
/// its log going to stderr too.
#[allow(dead_code)] // only the tests that run the server as a process
pub(crate) fn run_as_child() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let left = app::run_to_exit(async {
        let settings = app::Settings::from_env().unwrap();
        let app = app::build(&settings).unwrap();
        let state = app.state.clone();
        let signals = app::StopSignals::listen().unwrap();
        let running = app::start(&settings, app, None, signals.nth(1))
            .await
            .unwrap();
        println!("listening on {}", running.local_addr());
        app::finish(running, &state, settings.shutdown_grace, &signals).await
    })
    .unwrap();
    eprintln!("comments left: {left}");
}

/// The server's `/status` document.
#[allow(dead_code)] // not every test file reads it
pub(crate) async fn status(client: &reqwest::Client, base: &str) -> Value {
    client
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A request the fake provider API received: path, headers (lower-case names), JSON body.
#[allow(dead_code)]
pub(crate) type Received = (String, HashMap<String, String>, Value);

/// A fake provider API on 127.0.0.1: stores every request it receives, then answers with the
/// next status of `answers` (`201 Created` once they are used up). A `5xx` in `answers` is
/// answered after the comment was stored, as a provider failing after the write does.
/// A server taking GitLab's deliveries (webhook token `gl-token`) and posting its notes to a
/// fake GitLab API (token `glpat-abc`): its base URL, and the fake.
#[allow(dead_code)] // not every test file talks to GitLab
pub(crate) async fn gitlab_server() -> (String, std::sync::Arc<FakeProvider>) {
    let (api, fake) = FakeProvider::start(&[]).await;
    let settings = lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl-token"),
        ("GITLAB_API_URL", &api),
        ("GITLAB_TOKEN", "glpat-abc"),
    ])
    .unwrap();
    (start_server(&settings).await, fake)
}

#[allow(dead_code)]
#[derive(Default)]
pub(crate) struct FakeProvider {
    pub(crate) received: std::sync::Mutex<Vec<Received>>,
    pub(crate) answers: std::sync::Mutex<std::collections::VecDeque<http::StatusCode>>,
}

#[allow(dead_code)]
impl FakeProvider {
    /// Serves a fake provider that answers `answers` first: its base URL and itself.
    pub(crate) async fn start(
        answers: &[http::StatusCode],
    ) -> (String, std::sync::Arc<FakeProvider>) {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        let fake = std::sync::Arc::new(FakeProvider {
            received: Default::default(),
            answers: std::sync::Mutex::new(answers.iter().copied().collect()),
        });
        let router = Router::new()
            .fallback(
                |State(fake): State<std::sync::Arc<FakeProvider>>, req: Request| async move {
                    let path = req.uri().to_string();
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    fake.received.lock().unwrap().push((path, headers, json));
                    let status = fake
                        .answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(http::StatusCode::CREATED);
                    status.into_response()
                },
            )
            .with_state(fake.clone());
        (format!("http://{}", serve(router).await), fake)
    }

    /// The requests received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Waits until `/status` says no comment is pending and `jobs` were made, at most 10 s (the
/// bound only ends a failing test): the document then.
#[allow(dead_code)]
pub(crate) async fn settled(client: &reqwest::Client, base: &str, jobs: u64) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = status(client, base).await;
        if s["comments"]["jobs"] == jobs && s["comments"]["pending"] == 0 {
            return s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "comments still pending: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret`, as GitHub signs a delivery.
#[allow(dead_code)] // not every test file signs deliveries
pub(crate) fn hmac_hex(secret: &str, body: impl AsRef<[u8]>) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_ref());
    hex::encode(mac.finalize().into_bytes())
}

/// A GitHub `pull_request` `opened` delivery `delivery` of pull request `pr` in
/// `octo-org/hello-world`, signed with `secret`: its headers and body, for [`deliver`].
#[allow(dead_code)] // not every test file delivers this one
pub(crate) fn github_opened(
    secret: &str,
    delivery: &str,
    pr: u64,
) -> (Vec<(&'static str, String)>, String) {
    let body = serde_json::json!({
        "action": "opened",
        "number": pr,
        "pull_request": {"number": pr, "title": "Cache the lookups", "draft": false},
        "repository": {"full_name": "octo-org/hello-world"},
    })
    .to_string();
    let headers = vec![
        ("x-github-event", "pull_request".to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        (
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(secret, &body)),
        ),
    ];
    (headers, body)
}
