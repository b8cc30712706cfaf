//! The pr_agent_server example at startup and exit: a provider API whose connection never opens, a
//! port already in use, settings that do not parse, and a comment on its way when the process
//! exits.

use crate::app;
use crate::harness;
use crate::logs;
use crate::unopened::unopened_address;

use harness::hmac_hex;
use std::time::Duration;

use logs::Logs;
use tokio::net::TcpListener;

/// A provider API whose connection never opened ran into the whole request's 30 s deadline,
/// an error that cannot tell a request never sent from one the provider may have acted on: the
/// comment was given up as "may have been posted", and never tried again, though nothing had
/// been sent. The client now gives up opening the connection first, a connect error, so the
/// comment is tried again later (as with a refused connection).
#[tokio::test]
async fn a_comment_whose_connection_never_opens_counts_as_not_sent() {
    let (_logs, _guard) = Logs::capture();
    let (addr, _listener, _held) = unopened_address().await;
    let client = app::api_client().unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        client
            .post(format!("http://{addr}/repos/o/r/issues/1/comments"))
            .header("content-type", "application/json")
            .body("{}")
            .send(),
    )
    .await
    .expect("the client gives up on its own")
    .unwrap_err();
    assert!(app::was_not_sent(&err), "{err:?}");
    assert!(app::API_CONNECT_TIMEOUT < Duration::from_secs(30));
}

/// A `PORT` already in use stopped the server with "local server error: Address already in use",
/// naming neither the address nor the settings that chose it. The message now names both.
#[tokio::test]
async fn a_port_in_use_stops_the_server_with_a_message_naming_it() {
    let (_logs, _guard) = Logs::capture();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let settings =
        harness::lookup(&[("GITHUB_WEBHOOK_SECRET", "s3cret"), ("PORT", &port)]).unwrap();
    let app = app::build(&settings).unwrap();
    let Err(err) = app::start(&settings, app, None, std::future::pending()).await else {
        panic!("the port is taken");
    };
    let err = err.to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("PORT"), "{err}");
}

/// A comment whose request was on its way to the provider when the process exited (the
/// shutdown grace over) was logged "comment not posted: the server stopped first; deliver it
/// again", though the provider may have posted it: delivered again, it would show twice. The
/// log now says that it may have been posted, to deliver it again only if it is missing.
#[test]
fn a_comment_on_its_way_when_the_process_exits_is_not_logged_as_not_posted() {
    use tokio::io::AsyncReadExt;
    let (logs, _guard) = Logs::capture();
    // One thread: the tasks log, and are dropped, where the capture is.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A provider API that reads the comment and never answers.
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let (received, on_its_way) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = api.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !String::from_utf8_lossy(&request).contains("Review of") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            received.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        let settings = harness::lookup(&[
            ("GITHUB_WEBHOOK_SECRET", "s3cret"),
            ("GITHUB_API_URL", &api_url),
            ("GITHUB_TOKEN", "t0ken"),
        ])
        .unwrap();
        let base = harness::start_server(&settings).await;
        let body = serde_json::json!({
            "action": "opened",
            "number": 7,
            "pull_request": { "number": 7, "title": "Add a cache", "draft": false },
            "repository": { "full_name": "octo/repo" },
        })
        .to_string();
        let res = crate::client::new()
            .post(format!("{base}/api/v1/github_webhooks"))
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", "on-its-way")
            .header(
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex("s3cret", &body)),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::ACCEPTED);
        tokio::time::timeout(Duration::from_secs(30), on_its_way)
            .await
            .expect("the comment reaches the API")
            .unwrap();
    });
    // The process exits: its tasks are dropped, the comment's among them.
    drop(runtime);
    let text = logs.text();
    assert!(text.contains("on-its-way"), "{text}");
    assert!(text.contains("may have posted it"), "{text}");
    assert!(
        !text.contains("comment not posted: the server stopped first"),
        "{text}"
    );
}

/// `GITHUB_HOOK_REPOSITORY` read from a file (a mounted secret or config map ends with a line
/// break) stopped the server ("is not `owner/name`"), where every other setting is trimmed. It
/// is trimmed too now.
#[test]
fn the_github_hook_repository_is_trimmed_like_the_other_settings() {
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "t0ken"),
        ("GITHUB_HOOK_REPOSITORY", " octo/repo\n"),
        ("GITHUB_HOOK_ID", "42\n"),
    ])
    .unwrap();
    let hook = settings.github_hook.unwrap();
    assert_eq!((hook.repository.as_str(), hook.id), ("octo/repo", 42));
}

/// A `RUST_LOG` that does not parse (`info,tower_webhook=verbose`) was taken for `info`
/// without a word: the logs asked for were silently not written. It stops the server with a
/// message naming the setting now; unset or blank is `info`, as documented.
#[test]
fn a_rust_log_that_does_not_parse_stops_the_server() {
    for wrong in ["info,tower_webhook=verbose", "tower_webhook[=debug"] {
        let err = app::log_filter(Some(wrong)).unwrap_err();
        assert!(err.contains("RUST_LOG") && err.contains(wrong), "{err}");
    }
    for fine in ["debug", "info,tower_webhook=debug", "warn,app=trace"] {
        assert!(app::log_filter(Some(fine)).is_ok(), "{fine}");
    }
    for unset in [None, Some(""), Some("  ")] {
        let filter = app::log_filter(unset).unwrap();
        assert_eq!(filter.to_string(), "info", "{unset:?}");
    }
}

/// The routes are printed for a server that runs, and not for one that a stop signal ended while
/// its tunnel was starting: they came after "shut down", for a server no longer there.
#[tokio::test]
async fn a_server_stopped_while_its_tunnel_starts_is_not_announced() {
    use tower_webhook::tunnel::{Bore, Tunnel};

    let settings = harness::lookup(&[("PORT", "0"), ("GITHUB_WEBHOOK_SECRET", "s3cret")]).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = app::start(&settings, app::build(&settings).unwrap(), None, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert!(!running.is_stopping());
    let mut out = Vec::new();
    app::announce_running(&mut out, &settings, &running).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("/api/v1/github_webhooks"), "{out}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the server stops");

    // A bore server that takes the control connection and never answers: the tunnel's start
    // waits on it, and the stop signal comes then.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (connection, _) = silent.accept().await.unwrap();
        stop.send(()).unwrap();
        std::future::pending::<()>().await;
        drop(connection);
    });
    let tunnel = Tunnel::builder().provider(Bore::new().server("127.0.0.1").control_port(port));
    let stopping = async {
        let _ = stopped.await;
    };
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        app::start(
            &settings,
            app::build(&settings).unwrap(),
            Some(tunnel),
            stopping,
        ),
    )
    .await
    .expect("the tunnel's start is given up at the stop signal")
    .unwrap();
    assert!(running.is_stopping());
    assert_eq!(running.tunnel_url(), None);
    let mut out = Vec::new();
    app::announce_running(&mut out, &settings, &running).unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the server stops");
    server.abort();
}
