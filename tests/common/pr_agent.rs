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
