//! The examples: the pr_agent_server example's settings it warns about or refuses, its startup
//! output and log lines, comments of deliveries sent again, and the connections of the tonic_server
//! and hyper_server examples that never send a request.

use crate::app;
use crate::child;
use crate::echo;
use crate::harness;
use crate::hyper_server;
use crate::logs;
use crate::tonic_server;

use harness::hmac_hex;
use std::time::Duration;

use logs::Logs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A writer whose reader went away after `room` bytes, as stdout piped into `head`.
struct ClosedAfter {
    room: usize,
    written: Vec<u8>,
}

impl std::io::Write for ClosedAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A tunnel whose URL is plain http (bore's) is warned about where its URLs are printed:
/// deliveries through it cross the internet unencrypted. An https one is not.
#[test]
fn a_plain_http_tunnel_url_is_warned_about() {
    let settings = harness::lookup(&[("GITHUB_WEBHOOK_SECRET", "s3cret-s3cret-s3cret")]).unwrap();
    let local = "http://127.0.0.1:3000";
    for (public, warned) in [
        ("http://bore.pub:41234", true),
        ("https://abc.trycloudflare.com", false),
    ] {
        let mut out = Vec::new();
        app::announce(&mut out, &settings, local, Some(public)).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains(&format!("  {public}/api/v1/github_webhooks")),
            "{out}"
        );
        assert_eq!(
            out.contains("warning: the tunnel's URL is plain http"),
            warned,
            "{out}"
        );
    }
}

/// The server printed its routes and its development help with `println!`, which panics when
/// stdout is closed: `pr_agent_server | head -1` killed the server as soon as `head` exited. The
/// text is written through a writer now, whose error ends the printing, not the server (the
/// scripted run in `.ci/examples.sh` starts the binary with its stdout closed).
#[test]
fn the_startup_text_stops_at_a_closed_stdout_without_panicking() {
    let (_logs, _guard) = Logs::capture();
    // Development mode: the longest text, with the secret and the two commands.
    let settings = harness::lookup(&[]).unwrap();
    let local = "http://127.0.0.1:3000";
    let mut whole = Vec::new();
    app::announce(&mut whole, &settings, local, None).unwrap();
    let whole = String::from_utf8(whole).unwrap();
    assert!(
        whole.starts_with("pr_agent_server listening on http://127.0.0.1:3000\n"),
        "{whole}"
    );
    assert!(whole.contains("expect 202 Accepted"), "{whole}");
    assert!(whole.contains("expect 401"), "{whole}");
    for room in [0, 1, 40, whole.len() / 2, whole.len() - 1] {
        let mut out = ClosedAfter {
            room,
            written: Vec::new(),
        };
        let err = app::announce(&mut out, &settings, local, None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        // The delivery ids of the commands are new each time: the first line is the same.
        assert_eq!(out.written.len(), room);
        let same = room.min(whole.find('\n').unwrap());
        assert_eq!(out.written[..same], whole.as_bytes()[..same]);
    }
}

/// `TUNNEL_SERVICE` and the other tunnel settings do nothing without `--use-tunnel`, and were
/// ignored without a word: a server started without the flag served on its local address only,
/// while its user waited for a public URL. A warning names the settings now (not their values,
/// among them a token and a secret).
#[tokio::test]
async fn tunnel_settings_without_use_tunnel_are_warned_about() {
    let (logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("PORT", "0"),
        ("TUNNEL_SERVICE", "bore"),
        ("TUNNEL_SECRET", "tunnel-s3cret-value"),
        ("TUNNEL_REGION", " "),
    ])
    .unwrap();
    start_and_stop(&settings).await;
    let text = logs.text();
    let warning = text
        .lines()
        .find(|line| line.contains("--use-tunnel") && line.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    assert!(
        warning.contains("TUNNEL_SERVICE, TUNNEL_SECRET"),
        "{warning}"
    );
    assert!(!warning.contains("TUNNEL_REGION"), "{warning}");
    assert!(!text.contains("tunnel-s3cret-value"), "{text}");

    // Without them, no such warning.
    let (logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[("GITHUB_WEBHOOK_SECRET", "s3cret"), ("PORT", "0")]).unwrap();
    start_and_stop(&settings).await;
    assert!(!logs.text().contains("--use-tunnel"), "{}", logs.text());
}

/// `GITLAB_API_URL=https://gitlab.example.com` (without `/api/v4`) or a Gitea URL without
/// `/api/v1` started the server without a word, and then every comment was answered 404 and
/// logged "provider refused the comment". The startup text now warns about such a URL, naming
/// the setting and the path it lacks; a URL with the prefix, below a sub-path too, gets none.
#[test]
fn an_api_url_without_its_path_prefix_is_warned_about() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl"),
        ("GITEA_WEBHOOK_SECRET", "gt"),
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "t"),
        ("GITLAB_API_URL", "https://gitlab.example.com"),
        ("GITLAB_TOKEN", "t"),
        ("GITEA_API_URL", "https://git.example.com/gitea/"),
        ("GITEA_TOKEN", "t"),
        ("BITBUCKET_API_URL", "https://api.bitbucket.org/2.0"),
        ("BITBUCKET_TOKEN", "t"),
    ])
    .unwrap();
    warned(
        &settings,
        &[
            "GITLAB_API_URL does not end with /api/v4",
            "GITEA_API_URL does not end with /api/v1",
        ],
    );
    let mut out = Vec::new();
    app::announce(&mut out, &settings, "http://127.0.0.1:3000", None).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("warning: GITLAB_API_URL does not end with /api/v4"),
        "{out}"
    );
    assert!(
        out.contains("warning: GITEA_API_URL does not end with /api/v1"),
        "{out}"
    );

    let settings = harness::lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl"),
        ("GITLAB_API_URL", "https://example.com/gitlab/api/v4/"),
        ("GITLAB_TOKEN", "t"),
        ("GITEA_API_URL", "http://127.0.0.1:3000/api/v1"),
        ("GITEA_TOKEN", "t"),
    ])
    .unwrap();
    warned(&settings, &[]);
}

/// An API URL in plain http sends the provider's token unencrypted with every comment (and
/// the public APIs answer it with a redirect, which fails every comment): warned about, except
/// on a loopback address (a local proxy, a stand-in).
#[test]
fn an_api_url_in_plain_http_is_warned_about_unless_it_is_a_loopback() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl"),
        ("GITLAB_API_URL", "http://gitlab.com/api/v4"),
        ("GITLAB_TOKEN", "t"),
        ("GITHUB_WEBHOOK_SECRET", "gh"),
        ("GITHUB_API_URL", "http://10.0.0.7/api/v3"),
        ("GITHUB_TOKEN", "t"),
    ])
    .unwrap();
    warned(
        &settings,
        &[
            "GITHUB_API_URL is plain http: the github token would cross the network unencrypted",
            "GITLAB_API_URL is plain http: the gitlab token would cross the network unencrypted",
        ],
    );
    for loopback in [
        "http://127.0.0.1:3000/api/v4",
        "http://localhost:3000/api/v4",
        "http://[::1]:3000/api/v4",
    ] {
        let settings = harness::lookup(&[
            ("GITLAB_WEBHOOK_TOKEN", "gl"),
            ("GITLAB_API_URL", loopback),
            ("GITLAB_TOKEN", "t"),
        ])
        .unwrap();
        warned(&settings, &[]);
    }
}

/// A webhook secret short enough to be guessed is warned about at startup (the shortest of a
/// rotation list, an Azure DevOps password too), but not the one development mode makes up.
#[test]
fn a_short_webhook_secret_is_warned_about() {
    let (_logs, _guard) = Logs::capture();
    let long = "4f1c8e2a9b7d3f60c5e1a8d2b4f7c9e0";
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITLAB_WEBHOOK_TOKEN", &format!("{long},glpat-short")),
        ("GITEA_WEBHOOK_SECRET", long),
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "svc-hooks"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "hunter2"),
    ])
    .unwrap();
    // The settings' `Debug` shows no part of a credential, the Azure DevOps user name included.
    let debug = format!("{settings:?}");
    for secret in ["s3cret", "glpat-short", long, "svc-hooks", "hunter2"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    let warnings = settings.secret_warnings();
    let starts = [
        "GITHUB_WEBHOOK_SECRET holds a secret of 6 characters",
        "GITLAB_WEBHOOK_TOKEN holds a secret of 11 characters",
        "AZURE_DEVOPS_WEBHOOK_PASSWORD holds a secret of 7 characters",
    ];
    assert_eq!(warnings.len(), starts.len(), "{warnings:?}");
    for start in starts {
        assert!(
            warnings.iter().any(|w| w.starts_with(start)),
            "{warnings:?}"
        );
    }
    let text = warnings.join("\n");
    assert!(!text.contains("s3cret") && !text.contains("hunter2") && !text.contains("glpat"));
    let mut out = Vec::new();
    app::announce(&mut out, &settings, "http://127.0.0.1:3000", None).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("warning: GITHUB_WEBHOOK_SECRET holds a secret of 6 characters"),
        "{out}"
    );

    // Development mode: the secret it makes up is long, and not the user's to change.
    let development = harness::lookup(&[]).unwrap();
    assert_eq!(development.secret_warnings(), Vec::<String>::new());
}

/// The backoff between a comment's attempts when the provider named no wait doubles from
/// 400 ms up to 300 s, each wait between half of it and all of it: the comments an outage held
/// back used to come back all at the same instant.
#[test]
fn the_backoff_between_attempts_is_jittered_within_its_bounds() {
    for attempts in 0..20 {
        let base =
            Duration::from_millis(200u64 << attempts.clamp(1, 12)).min(Duration::from_secs(300));
        let waits: Vec<Duration> = (0..64).map(|_| app::backoff_after(attempts)).collect();
        for wait in &waits {
            assert!(
                *wait >= base / 2 && *wait <= base,
                "{attempts}: {wait:?} of {base:?}"
            );
        }
        assert!(
            waits.iter().any(|w| *w != waits[0]),
            "{attempts}: no jitter"
        );
    }
}

/// Asserts that `settings` warn about their API URLs with lines that start with `expected`, in
/// order, and with no other.
fn warned(settings: &app::Settings, expected: &[&str]) {
    let warnings = settings.api_url_warnings();
    assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
    for (warning, start) in warnings.iter().zip(expected) {
        assert!(warning.starts_with(start), "{warnings:?}");
    }
}

/// `GITHUB_API_URL=https://github.com` (the website), `BITBUCKET_API_URL` without its `/2.0`, or
/// `BITBUCKET_SERVER_API_URL` ending with the `/rest/api/1.0` the comment's path adds again:
/// every comment failed (a 404, or a redirect), with nothing said at startup. Each is warned
/// about now; the documented URLs are not.
#[test]
fn an_api_url_of_a_website_or_a_doubled_path_is_warned_about() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "gh"),
        ("GITHUB_API_URL", "https://github.com/"),
        ("GITHUB_TOKEN", "t"),
        ("BITBUCKET_API_URL", "https://api.bitbucket.org"),
        ("BITBUCKET_TOKEN", "t"),
        (
            "BITBUCKET_SERVER_API_URL",
            "https://git.example.com/rest/api/1.0/",
        ),
        ("BITBUCKET_SERVER_TOKEN", "t"),
    ])
    .unwrap();
    warned(
        &settings,
        &[
            "GITHUB_API_URL names the website, not the API (e.g. https://api.github.com)",
            "BITBUCKET_API_URL does not end with /2.0",
            "BITBUCKET_SERVER_API_URL ends with /rest/api/1.0",
        ],
    );
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "gh"),
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "t"),
        ("BITBUCKET_API_URL", "https://api.bitbucket.org/2.0/"),
        ("BITBUCKET_TOKEN", "t"),
        (
            "BITBUCKET_SERVER_API_URL",
            "https://git.example.com/bitbucket",
        ),
        ("BITBUCKET_SERVER_TOKEN", "t"),
        ("AZURE_DEVOPS_API_URL", "https://dev.azure.com/org"),
        ("AZURE_DEVOPS_TOKEN", "t"),
    ])
    .unwrap();
    warned(&settings, &[]);
}

/// A GitHub Enterprise Server's API is under `/api/v3`, and `AZURE_DEVOPS_API_URL` is the
/// organization's URL, to which each comment's path adds the project: a GHES URL without its
/// `/api/v3`, or an Azure DevOps URL with the project in it or with no organization, failed every
/// comment with nothing said at startup. Each is warned about now; GitHub.com, GitHub Enterprise
/// Cloud (`api.<name>.ghe.com`), a GHES URL with `/api/v3`, an organization's URL, and a loopback
/// or an address (a stand-in, or a proxy) are not.
#[test]
fn a_github_enterprise_url_without_api_v3_or_an_azure_devops_project_is_warned_about() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "gh"),
        ("GITHUB_API_URL", "https://github.example.com/"),
        ("GITHUB_TOKEN", "t"),
        ("AZURE_DEVOPS_API_URL", "https://dev.azure.com/org/project/"),
        ("AZURE_DEVOPS_TOKEN", "t"),
    ])
    .unwrap();
    warned(
        &settings,
        &[
            "GITHUB_API_URL does not end with /api/v3",
            "AZURE_DEVOPS_API_URL names more than the organization",
        ],
    );
    // The bare host, as other providers' base URLs are: Azure read the project as the
    // organization, and every comment was refused.
    for bare in ["https://dev.azure.com", "https://dev.azure.com/"] {
        let settings = harness::lookup(&[
            ("GITHUB_WEBHOOK_SECRET", "gh"),
            ("AZURE_DEVOPS_API_URL", bare),
            ("AZURE_DEVOPS_TOKEN", "t"),
        ])
        .unwrap();
        warned(&settings, &["AZURE_DEVOPS_API_URL names no organization,"]);
    }
    // The older form names the organization in the host: a project after it (or after its
    // collection) is warned about too.
    for project in [
        "https://fabrikam.visualstudio.com/Fabrikam",
        "https://fabrikam.visualstudio.com/DefaultCollection/Fabrikam/",
    ] {
        let settings = harness::lookup(&[
            ("GITHUB_WEBHOOK_SECRET", "gh"),
            ("AZURE_DEVOPS_API_URL", project),
            ("AZURE_DEVOPS_TOKEN", "t"),
        ])
        .unwrap();
        warned(
            &settings,
            &["AZURE_DEVOPS_API_URL names more than the organization"],
        );
    }
    for (github, azure) in [
        (
            "https://github.example.com/api/v3/",
            "https://dev.azure.com/org/",
        ),
        ("https://api.octo.ghe.com", "https://dev.azure.com/org"),
        ("http://127.0.0.1:8080", "https://org.visualstudio.com"),
        (
            "https://api.github.com",
            "https://org.visualstudio.com/DefaultCollection/",
        ),
        ("http://[::1]:8080", "http://127.0.0.1:8080/org/project"),
        ("http://localhost:8080", "https://dev.azure.com/org"),
    ] {
        let settings = harness::lookup(&[
            ("GITHUB_WEBHOOK_SECRET", "gh"),
            ("GITHUB_API_URL", github),
            ("GITHUB_TOKEN", "t"),
            ("AZURE_DEVOPS_API_URL", azure),
            ("AZURE_DEVOPS_TOKEN", "t"),
        ])
        .unwrap();
        warned(&settings, &[]);
    }
}

/// GitHub's primary rate limit says when it resets (`X-RateLimit-Reset`, seconds since the
/// epoch on GitHub's clock). The wait was read against the local clock: with GitHub's clock an
/// hour ahead of ours, a reset two seconds away was waited out for an hour (the longest wait).
/// It is read against the answer's `Date` now, as `Retry-After` is.
#[tokio::test]
async fn a_rate_limit_reset_is_read_against_the_answers_date() {
    use axum::response::IntoResponse;
    let (_logs, _guard) = Logs::capture();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let api = harness::serve(axum::Router::new().fallback(move || {
        let calls = counted.clone();
        async move {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                return http::StatusCode::CREATED.into_response();
            }
            // GitHub's clock, an hour ahead of ours.
            let github_now = std::time::SystemTime::now() + Duration::from_secs(3600);
            let reset = github_now
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 2;
            (
                http::StatusCode::FORBIDDEN,
                [
                    ("date", httpdate::fmt_http_date(github_now)),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                "API rate limit exceeded",
            )
                .into_response()
        }
    }))
    .await;
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &format!("http://{api}")),
        ("GITHUB_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    assert_eq!(github_opened(&client, &base, "rate-limited").await, 202);
    // Posted once the reset has passed: a few seconds, not an hour.
    let start = std::time::Instant::now();
    loop {
        let status = harness::status(&client, &base).await;
        if status["comments"]["posted"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not posted after the reset: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `conn` until the server closes it: `true` if it did within `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A client that connected to the tonic_server example and sent nothing (or part of the HTTP/2
/// preface) held its connection forever, and held up the graceful shutdown forever too: hyper
/// waits for the preface before it can close a connection, and tonic waits for every connection
/// to close. Such a connection is closed once the preface deadline has passed now, or when the
/// server stops; one that sent the preface and then went silent (no answer to pings) is closed
/// too, and holds up the shutdown no longer than its grace of 10 s. Calls are answered as before.
#[tokio::test]
async fn a_grpc_connection_that_sends_no_preface_is_closed_and_does_not_hold_up_shutdown() {
    let (_logs, _guard) = Logs::capture();
    let (addr, stop, server) = start_tonic_server(Duration::from_millis(500)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface_only = TcpStream::connect(addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    echoes(addr, "hello").await;
    assert!(closed_within(&mut silent, Duration::from_secs(30)).await);
    assert!(closed_within(&mut partial, Duration::from_secs(30)).await);
    assert!(closed_within(&mut preface_only, Duration::from_secs(30)).await);
    stops(stop, server).await;

    // A connection that sends nothing, open when the server is told to stop, long before its
    // preface deadline: the server stops all the same.
    let (addr, stop, server) = start_tonic_server(Duration::from_secs(3600)).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    echoes(addr, "accepted").await;
    stops(stop, server).await;
    assert!(closed_within(&mut held, Duration::from_secs(30)).await);

    // One that sent its preface and went silent: the graceful shutdown waits for its answer to
    // a ping, which the keepalive gives an hour. The server stops after its grace all the same
    // (the example's process then exits, which closes the connection; tonic's connection task
    // outlives `serve` in this test's runtime).
    let (addr, stop, server) = start_tonic_server(Duration::from_secs(3600)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(PREFACE).await.unwrap();
    echoes(addr, "accepted").await;
    let asked = tokio::time::Instant::now();
    stops(stop, server).await;
    assert!(
        asked.elapsed() < tonic_server::GRACE + Duration::from_secs(5),
        "stopped after {:?}",
        asked.elapsed()
    );
    drop(silent);
}

/// The tonic_server example on a free loopback port, with `deadline` for a connection's preface
/// and for the answer to a ping; its address, what stops it, and its task.
async fn start_tonic_server(
    deadline: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tower_webhook::BoxError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic_server::serve(
        listener,
        async {
            let _ = stopped.await;
        },
        deadline,
        deadline,
    ));
    (addr, stop, server)
}

/// A call to the server at `addr` is answered.
async fn echoes(addr: std::net::SocketAddr, message: &str) {
    let reply = echo::say(
        addr,
        tonic::Request::new(echo::Echo {
            message: message.into(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.into_inner().message, message);
}

/// Tells the server to stop, and waits for it to.
async fn stops(
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tower_webhook::BoxError>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

/// The hyper_server example says that a client taking more than 10 s to send its request head
/// is cut off, but one that sent nothing at all, or part of the HTTP/2 preface, was held
/// forever: hyper's `header_read_timeout` starts only once the connection has sent enough to
/// tell HTTP/1 from HTTP/2. Such a connection is closed at the same deadline now, and an HTTP/2
/// one that sent its preface and then went silent (no answer to pings) too.
#[tokio::test]
async fn a_hyper_connection_that_sends_no_request_is_closed() {
    let (_logs, _guard) = Logs::capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_server::serve(
        listener,
        "s3cret",
        std::future::pending::<()>(),
        Duration::from_millis(500),
    ));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface_only = TcpStream::connect(addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    // A request is answered as before (unsigned: 401).
    let res = crate::client::new()
        .post(format!("http://{addr}/"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::UNAUTHORIZED);
    assert!(closed_within(&mut silent, Duration::from_secs(30)).await);
    assert!(closed_within(&mut partial, Duration::from_secs(30)).await);
    assert!(closed_within(&mut preface_only, Duration::from_secs(30)).await);
}

/// A GitHub `pull_request` `opened` delivery `id`, signed with `s3cret`: its status.
async fn github_opened(client: &reqwest::Client, base: &str, id: &str) -> http::StatusCode {
    let body = serde_json::json!({
        "action": "opened",
        "number": 7,
        "pull_request": { "number": 7, "title": "Add a cache", "draft": false },
        "repository": { "full_name": "octo/repo" },
    })
    .to_string();
    let signature = format!("sha256={}", hmac_hex("s3cret", &body));
    let headers = [
        ("x-github-event", "pull_request"),
        ("x-github-delivery", id),
        ("x-hub-signature-256", &signature),
    ];
    post_json(
        client,
        &format!("{base}/api/v1/github_webhooks"),
        &headers,
        body,
    )
    .await
}

/// POSTs the JSON `body` with `headers` to `url`: the answer's status.
async fn post_json(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> http::StatusCode {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status()
}

/// A comment given up after a `502` is logged "if it is missing, deliver it again from the
/// provider's webhook log"; but GitHub's redelivery keeps the delivery id, which the server had
/// recorded as handled when it answered `202`: the redelivery was acknowledged `200` as a
/// duplicate and never processed, for 24 hours. A delivery whose comment failed (given up,
/// refused) is forgotten now, so delivered again it is processed again; once its comment is
/// posted, it is a duplicate as before.
#[tokio::test]
async fn a_delivery_whose_comment_failed_is_processed_when_delivered_again() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) =
        harness::FakeProvider::start(&[http::StatusCode::BAD_GATEWAY, http::StatusCode::NOT_FOUND])
            .await;
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let id = "redelivered";
    // 502: it may have been posted, and is not sent again; the log says to deliver it again.
    assert_eq!(github_opened(&client, &base, id).await, 202);
    let status = harness::settled(&client, &base, 1).await;
    assert_eq!(status["comments"]["failed"], 1, "{status}");
    // Delivered again: processed, and refused (404).
    assert_eq!(github_opened(&client, &base, id).await, 202);
    let status = harness::settled(&client, &base, 2).await;
    assert_eq!(status["comments"]["failed"], 2, "{status}");
    // Delivered again: posted.
    assert_eq!(github_opened(&client, &base, id).await, 202);
    let status = harness::settled(&client, &base, 3).await;
    assert_eq!(status["comments"]["posted"], 1, "{status}");
    // Once posted, the same delivery is a duplicate.
    assert_eq!(github_opened(&client, &base, id).await, 200);
    assert_eq!(fake.received().len(), 3);
}

/// A Bitbucket Cloud `pullrequest:` delivery `id` of pull request 31, a draft or not, signed
/// with `s3cret`: its status.
async fn bitbucket_pr(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    id: &str,
    draft: bool,
) -> http::StatusCode {
    let body = serde_json::json!({
        "pullrequest": { "id": 31, "title": "Add a cache", "draft": draft, "state": "OPEN" },
        "repository": { "full_name": "team/repo" },
    })
    .to_string();
    let signature = format!("sha256={}", hmac_hex("s3cret", &body));
    let headers = [
        ("x-event-key", event),
        ("x-request-uuid", id),
        ("x-hub-signature", &signature),
    ];
    post_json(
        client,
        &format!("{base}/api/v1/bitbucket_webhooks"),
        &headers,
        body,
    )
    .await
}

/// Bitbucket Cloud says a draft was published only by an update that shows it no longer a
/// draft: the server takes the draft from its memory of drafts and comments once. When that
/// comment failed, the delivery was forgotten (so that delivered again it is processed), but
/// the draft was not put back: the delivery, delivered again, was processed and asked for no
/// comment. The draft is remembered again now, and the redelivery gets its comment.
#[tokio::test]
async fn a_published_draft_whose_comment_failed_gets_it_when_delivered_again() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) = harness::FakeProvider::start(&[http::StatusCode::NOT_FOUND]).await;
    let settings = harness::lookup(&[
        ("BITBUCKET_WEBHOOK_SECRET", "s3cret"),
        ("BITBUCKET_API_URL", &format!("{api}/2.0")),
        ("BITBUCKET_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let created = "{00000000-0000-4000-8000-00000000d001}";
    let published = "{00000000-0000-4000-8000-00000000d002}";
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:created", created, true).await,
        202
    );
    // Published: its comment is refused (404) and given up.
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:updated", published, false).await,
        202
    );
    let status = harness::settled(&client, &base, 1).await;
    assert_eq!(status["comments"]["failed"], 1, "{status}");
    // Delivered again: the comment of the draft published is posted.
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:updated", published, false).await,
        202
    );
    let status = harness::settled(&client, &base, 2).await;
    assert_eq!(status["comments"]["posted"], 1, "{status}");
    let received = fake.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(
        received
            .iter()
            .all(|(path, ..)| path == "/2.0/repositories/team/repo/pullrequests/31/comments"),
        "{received:?}"
    );
    // Once posted, a later update is only an update.
    assert_eq!(
        bitbucket_pr(
            &client,
            &base,
            "pullrequest:updated",
            "{00000000-0000-4000-8000-00000000d003}",
            false
        )
        .await,
        202
    );
    let status = harness::settled(&client, &base, 2).await;
    assert_eq!(status["comments"]["posted"], 1, "{status}");
    assert_eq!(fake.received().len(), 2);
}

/// `GITLAB_API_URL=gitlab.com/api/v4` (no scheme) stopped the server with "set it to the API's
/// base URL, e.g. https://api.github.com": GitHub's URL, for every provider, which for GitLab
/// or Gitea leads to a URL without the `/api/v4` or `/api/v1` every comment needs. The example
/// is the provider's own now.
#[test]
fn a_wrong_api_url_is_refused_with_an_example_of_its_provider() {
    let (_logs, _guard) = Logs::capture();
    for (var, secret, example) in [
        (
            "GITLAB_API_URL",
            "GITLAB_WEBHOOK_TOKEN",
            "https://gitlab.com/api/v4",
        ),
        (
            "GITEA_API_URL",
            "GITEA_WEBHOOK_SECRET",
            "https://gitea.example.com/api/v1",
        ),
        (
            "BITBUCKET_API_URL",
            "BITBUCKET_WEBHOOK_SECRET",
            "https://api.bitbucket.org/2.0",
        ),
        (
            "GITHUB_API_URL",
            "GITHUB_WEBHOOK_SECRET",
            "https://api.github.com",
        ),
    ] {
        let err = harness::lookup(&[(secret, "s"), (var, "example.com/api")]).unwrap_err();
        assert!(err.starts_with(var), "{err}");
        assert!(err.ends_with(&format!("e.g. {example}")), "{err}");
    }
}

/// A writer into a buffer shared with the test, whose reader goes away after `room` bytes.
#[derive(Clone)]
struct Pipe(std::sync::Arc<std::sync::Mutex<ClosedAfter>>);

impl Pipe {
    fn new(room: usize) -> Self {
        Pipe(std::sync::Arc::new(std::sync::Mutex::new(ClosedAfter {
            room,
            written: Vec::new(),
        })))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().written.clone()).unwrap()
    }
}

impl std::io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server logs to stdout. With its reader gone (`pr_agent_server | head`), every log line
/// after that was lost, and each one made tracing print "Unable to write an event" to stderr.
/// The log lines go to stderr from the first one stdout refuses, and to stdout again never.
#[test]
fn log_lines_go_to_stderr_once_stdout_is_gone() {
    let (stdout, stderr) = (Pipe::new(1 << 20), Pipe::new(1 << 20));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(app::LogOutput::new(stdout.clone(), stderr.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("first line");
        stdout.0.lock().unwrap().room = 0; // the reader exits
        tracing::info!("second line");
        tracing::warn!("third line");
        stdout.0.lock().unwrap().room = 1 << 20; // a write would succeed again: not tried
        tracing::info!("fourth line");
    });
    let (out, err) = (stdout.text(), stderr.text());
    assert!(
        out.contains("first line") && out.lines().count() == 1,
        "{out}"
    );
    assert_eq!(err.lines().count(), 3, "{err}");
    for (line, text) in err
        .lines()
        .zip(["second line", "third line", "fourth line"])
    {
        assert!(line.ends_with(text), "{err}");
    }
    // Any other failure of stdout is the subscriber's to report, as before.
    let failing = app::LogOutput::new(FailsWith(std::io::ErrorKind::Other), stderr.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(failing)
        .finish();
    tracing::subscriber::with_default(subscriber, || tracing::info!("fifth line"));
    assert!(!stderr.text().contains("fifth line"), "{}", stderr.text());
}

/// A writer that fails every write with `kind`.
struct FailsWith(std::io::ErrorKind);

impl std::io::Write for FailsWith {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(self.0.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Development mode (no webhook secret) prints a signed sample delivery for
/// `octo-org/hello-world`. With a GitHub token configured, sending it as printed posted a real
/// comment there as the token's owner. The server now refuses to start and says how to go on;
/// the API without a token, or a token with a secret, still starts.
#[test]
fn development_mode_refuses_a_github_token() {
    let err = harness::lookup(&[
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "ghp_example"),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("GITHUB_TOKEN is set but no webhook secret is"),
        "{err}"
    );
    assert!(err.contains("set GITHUB_WEBHOOK_SECRET"), "{err}");
    assert!(!err.contains("ghp_example"), "{err}");
    // A token without its API URL posts nothing, and other providers' tokens are not used
    // by the GitHub sample.
    harness::lookup(&[("GITHUB_TOKEN", "ghp_example")]).unwrap();
    harness::lookup(&[
        ("GITLAB_API_URL", "https://gitlab.example.com/api/v4"),
        ("GITLAB_TOKEN", "glpat-example"),
    ])
    .unwrap();
    harness::lookup(&[("GITHUB_API_URL", "https://api.github.com")]).unwrap();
    let settings = harness::lookup(&[
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_TOKEN", "ghp_example"),
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
    ])
    .unwrap();
    assert!(settings.apis.contains_key(&app::Forge::GitHub));
}

/// Starts the server with `settings` (no tunnel) and stops it at once: what it logs on the way.
async fn start_and_stop(settings: &app::Settings) {
    let app = app::build(settings).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = app::start(settings, app, None, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    running.wait().await;
}

/// A Bitbucket Cloud draft published whose comment was answered `502` (the provider may have
/// posted it, so it is not sent again) was remembered again as a draft, for the update delivered
/// again to get its comment: but any later update of the pull request (an approval, a push)
/// then posted that comment too, a second time. The draft is remembered for the delivery
/// delivered again only now: other updates get no comment, the redelivery gets it.
#[tokio::test]
async fn a_published_draft_whose_comment_may_have_been_posted_is_not_commented_on_again() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) =
        harness::FakeProvider::start(&[http::StatusCode::BAD_GATEWAY, http::StatusCode::NOT_FOUND])
            .await;
    let settings = harness::lookup(&[
        ("BITBUCKET_WEBHOOK_SECRET", "s3cret"),
        ("BITBUCKET_API_URL", &format!("{api}/2.0")),
        ("BITBUCKET_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let published = "{00000000-0000-4000-8000-00000000e002}";
    assert_eq!(
        bitbucket_pr(
            &client,
            &base,
            "pullrequest:created",
            "{00000000-0000-4000-8000-00000000e001}",
            true
        )
        .await,
        202
    );
    // Published: the provider stores the comment and answers 502; it is not sent again.
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:updated", published, false).await,
        202
    );
    let status = harness::settled(&client, &base, 1).await;
    assert_eq!(status["comments"]["failed"], 1, "{status}");
    assert_eq!(fake.received().len(), 1);
    // Later updates of the pull request are only updates: no second comment.
    for (event, id) in [
        (
            "pullrequest:approved",
            "{00000000-0000-4000-8000-00000000e003}",
        ),
        (
            "pullrequest:updated",
            "{00000000-0000-4000-8000-00000000e004}",
        ),
    ] {
        assert_eq!(bitbucket_pr(&client, &base, event, id, false).await, 202);
    }
    let status = harness::settled(&client, &base, 1).await;
    assert_eq!(fake.received().len(), 1, "{:?}", fake.received());
    assert_eq!(status["comments"]["posted"], 0, "{status}");
    // The update delivered again from the webhook log, as the log says: its comment is
    // refused (404) this time, and the draft is still kept for that update only.
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:updated", published, false).await,
        202
    );
    let status = harness::settled(&client, &base, 2).await;
    assert_eq!(status["comments"]["failed"], 2, "{status}");
    assert_eq!(
        bitbucket_pr(
            &client,
            &base,
            "pullrequest:approved",
            "{00000000-0000-4000-8000-00000000e005}",
            false
        )
        .await,
        202
    );
    harness::settled(&client, &base, 2).await;
    assert_eq!(fake.received().len(), 2, "{:?}", fake.received());
    // Delivered again once more: posted.
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:updated", published, false).await,
        202
    );
    let status = harness::settled(&client, &base, 3).await;
    assert_eq!(status["comments"]["posted"], 1, "{status}");
    assert_eq!(fake.received().len(), 3);
}

/// The server wrote its log lines with colours wherever they went: in a file, a pipe or a
/// container's log, ANSI escape sequences sat between each field's name and its value, so that
/// searching the log for `delivery=<id>` (the delivery it says to deliver again) found nothing.
/// The lines are coloured on a terminal only now, and not with `NO_COLOR` set.
#[test]
fn log_lines_are_plain_text_unless_written_to_a_terminal() {
    let no_color = std::ffi::OsStr::new("1");
    assert!(!app::log_colors(false, None));
    assert!(!app::log_colors(false, Some(no_color)));
    assert!(!app::log_colors(true, Some(no_color)));
    assert!(app::log_colors(true, None));
    // `NO_COLOR` set but empty asks for nothing (no-color.org).
    assert!(app::log_colors(true, Some(std::ffi::OsStr::new(""))));

    // Written as the server writes them, to a file or a pipe: the field reads as it is.
    let (stdout, stderr) = (Pipe::new(1 << 20), Pipe::new(1 << 20));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(app::log_colors(false, None))
        .with_writer(app::LogOutput::new(stdout.clone(), stderr.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::error!(delivery = %"d1", "comment not posted");
    });
    let out = stdout.text();
    assert!(out.contains("delivery=d1"), "{out:?}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
}

/// An Azure DevOps delivery `body`, with the Basic credentials `hooks` / `p4ss`: its status.
async fn azure_devops(client: &reqwest::Client, base: &str, body: &serde_json::Value) -> u16 {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("hooks:p4ss");
    client
        .post(format!("{base}/api/v1/azuredevops_webhooks"))
        .header("content-type", "application/json")
        .header("authorization", format!("Basic {basic}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The server's comments on Azure DevOps were new threads marked `active` (status 1): with the
/// branch policy "Check for comment resolution", common on protected branches, every pull
/// request then had an unresolved thread of the bot's ("Review of ... is queued", the answer to
/// `/help`) that someone had to resolve by hand before it could be completed. The threads are
/// created `closed` now (status 4): shown on the pull request, blocking nothing.
#[tokio::test]
async fn an_azure_devops_comment_does_not_leave_an_active_thread_blocking_completion() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) = harness::FakeProvider::start(&[]).await;
    let settings = harness::lookup(&[
        ("AZURE_DEVOPS_WEBHOOK_USERNAME", "hooks"),
        ("AZURE_DEVOPS_WEBHOOK_PASSWORD", "p4ss"),
        ("AZURE_DEVOPS_API_URL", &format!("{api}/org")),
        ("AZURE_DEVOPS_TOKEN", "pat"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let repository = serde_json::json!({"id": "repo-guid", "project": {"id": "proj-guid"}});
    let created = serde_json::json!({
        "id": "e0000000-0000-4000-8000-000000000001",
        "subscriptionId": "b0c8a2f1-3d4e-4f5a-9b6c-7d8e9f0a1b2c",
        "eventType": "git.pullrequest.created",
        "resource": {"pullRequestId": 7, "title": "Add a cache", "isDraft": false,
                     "status": "active", "repository": repository},
    });
    let command = serde_json::json!({
        "id": "e0000000-0000-4000-8000-000000000002",
        "subscriptionId": "b0c8a2f1-3d4e-4f5a-9b6c-7d8e9f0a1b2c",
        "eventType": "ms.vss-code.git-pullrequest-comment-event",
        "resource": {
            "comment": {"id": 3, "content": "/help", "commentType": "text"},
            "pullRequest": {"pullRequestId": 7, "title": "Add a cache", "status": "active",
                            "isDraft": false, "repository": repository},
        },
    });
    assert_eq!(azure_devops(&client, &base, &created).await, 202);
    assert_eq!(azure_devops(&client, &base, &command).await, 202);
    let status = harness::settled(&client, &base, 2).await;
    assert_eq!(status["comments"]["posted"], 2, "{status}");
    let received = fake.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for (path, _, body) in &received {
        assert_eq!(
            path,
            "/org/proj-guid/_apis/git/repositories/repo-guid/pullRequests/7/threads?api-version=5.0"
        );
        assert_eq!(body["status"], 4, "{body}");
        assert_eq!(body["comments"][0]["commentType"], 1, "{body}");
    }
}

/// Bitbucket Data Center's "Test connection" ping comes unsigned, and is answered `202` without
/// being verified. `/status` counted each one in `deliveries.accepted`, "verified deliveries
/// handed to the handler": anyone could send such pings and make the count of accepted
/// deliveries say what they liked. The unsigned ping is answered as before, and counted as no
/// delivery now; a signed one is verified and counted as any delivery.
#[tokio::test]
async fn an_unsigned_ping_is_not_counted_as_an_accepted_delivery() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[("BITBUCKET_SERVER_WEBHOOK_SECRET", "s3cret")]).unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let url = format!("{base}/api/v1/bitbucket_server_webhooks");
    let ping = serde_json::json!({"test": true}).to_string();
    for n in 1..=3 {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-event-key", "diagnostics:ping")
            .header("x-request-id", format!("ping-{n}"))
            .body(ping.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let status = harness::status(&client, &base).await;
    assert_eq!(
        status["deliveries"],
        serde_json::json!({"accepted": 0, "duplicates": 0, "rejected": 0}),
        "{status}"
    );
    // Signed, it is a delivery, verified and counted.
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-event-key", "diagnostics:ping")
        .header("x-request-id", "ping-signed")
        .header(
            "x-hub-signature",
            format!("sha256={}", hmac_hex("s3cret", &ping)),
        )
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let status = harness::status(&client, &base).await;
    assert_eq!(status["deliveries"]["accepted"], 1, "{status}");
}

/// A GitLab delivery of `event` (`X-Gitlab-Event`) with the token `gl-t0ken`, id `id`: its
/// status.
async fn gitlab(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    id: &str,
    body: &serde_json::Value,
) -> http::StatusCode {
    let headers = [
        ("x-gitlab-event", event),
        ("x-gitlab-token", "gl-t0ken"),
        ("x-gitlab-event-uuid", id),
        ("idempotency-key", id),
    ];
    post_json(
        client,
        &format!("{base}/api/v1/gitlab_webhooks"),
        &headers,
        body.to_string(),
    )
    .await
}

/// `MAX_PENDING_COMMENTS` bounded the comments of all providers together: while one provider's
/// API was down (its comments pending for up to `COMMENT_MAX_AGE_SECS`, waiting on its breaker),
/// they filled the bound, and every other provider's deliveries were answered 503 too, though
/// their APIs worked (and GitHub does not deliver a refused delivery again by itself). Each
/// provider has its own bound now: the one down gets 503 past it, the others are served.
#[tokio::test]
async fn one_providers_pending_comments_do_not_refuse_another_providers_deliveries() {
    let (_logs, _guard) = Logs::capture();
    let (github_api, github_fake) =
        harness::FakeProvider::start(&[http::StatusCode::SERVICE_UNAVAILABLE; 200]).await;
    let (gitlab_api, gitlab_fake) = harness::FakeProvider::start(&[]).await;
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &github_api),
        ("GITHUB_TOKEN", "t0ken"),
        ("GITLAB_WEBHOOK_TOKEN", "gl-t0ken"),
        ("GITLAB_API_URL", &format!("{gitlab_api}/api/v4")),
        ("GITLAB_TOKEN", "glpat"),
        ("MAX_PENDING_COMMENTS", "1"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    // GitHub's API is down: its comment stays pending, and fills GitHub's bound.
    assert_eq!(github_opened(&client, &base, "pending-1").await, 202);
    let start = std::time::Instant::now();
    while github_fake.received().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(github_opened(&client, &base, "pending-2").await, 503);
    // GitLab's deliveries are still taken, and their comments posted.
    let opened = serde_json::json!({
        "object_kind": "merge_request",
        "project": {"id": 42},
        "object_attributes": {"iid": 5, "action": "open", "state": "opened", "title": "Fix"},
    });
    assert_eq!(
        gitlab(&client, &base, "Merge Request Hook", "pending-3", &opened).await,
        202
    );
    let start = std::time::Instant::now();
    while gitlab_fake.received().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no GitLab comment"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gitlab_fake.received()[0].0,
        "/api/v4/projects/42/merge_requests/5/notes"
    );
    let status = harness::status(&client, &base).await;
    assert_eq!(status["comments"]["jobs"], 2, "{status}");
    assert_eq!(status["deliveries"]["accepted"], 2, "{status}");
}

/// GitLab's payloads flag no bot (the `user.bot` the server looked at is not sent), so a `/review`
/// by a project or group access token's bot user or a service account (another bot, a CI job)
/// was answered, against "comments by bots get none", as GitHub's and Bitbucket Cloud's are not.
/// Those users are told by their usernames now; a person's note is answered as before.
#[tokio::test]
async fn a_gitlab_command_by_a_bot_user_gets_no_answer() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) = harness::FakeProvider::start(&[]).await;
    let settings = harness::lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl-t0ken"),
        ("GITLAB_API_URL", &format!("{api}/api/v4")),
        ("GITLAB_TOKEN", "glpat"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    let note = |username: &str| {
        serde_json::json!({
            "object_kind": "note",
            "event_type": "note",
            "user": {"id": 9, "name": "Review Bot", "username": username},
            "project_id": 42,
            "project": {"id": 42},
            "object_attributes": {"note": "/review", "noteable_type": "MergeRequest",
                                  "action": "create", "system": false},
            "merge_request": {"iid": 5, "title": "Fix"},
        })
    };
    let bots = [
        "project_42_bot_5f3a9c0e1b2d4e6f8a7b9c0d1e2f3a4b",
        "project_42_bot",
        "project_42_bot2",
        "group_7_bot_0a1b2c3d4e5f",
        "service_account_6a1b2c3d4e5f",
        "service_account_group_7_0a1b2c3d",
    ];
    for (n, bot) in bots.iter().enumerate() {
        let id = format!("bot-{n}");
        assert_eq!(
            gitlab(&client, &base, "Note Hook", &id, &note(bot)).await,
            202
        );
    }
    // People, with names like those.
    for (n, person) in ["alice", "project_manager", "group_7_botanist_x"]
        .iter()
        .enumerate()
    {
        let id = format!("person-{n}");
        assert_eq!(
            gitlab(&client, &base, "Note Hook", &id, &note(person)).await,
            202
        );
    }
    let status = harness::status(&client, &base).await;
    assert_eq!(status["deliveries"]["accepted"], 9, "{status}");
    let status = harness::settled(&client, &base, 3).await;
    assert_eq!(status["comments"]["posted"], 3, "{status}");
    assert_eq!(fake.received().len(), 3);
}

/// `GITLAB_API_URL` and `GITLAB_TOKEN` set, but the hook's token under another name (the other
/// providers' `*_WEBHOOK_SECRET`) or not at all: the server started with no GitLab route and
/// said nothing, and every delivery from GitLab was answered 404. The startup text warns about
/// an API whose provider has no route now, naming the setting that enables it.
#[test]
fn an_api_of_a_provider_without_its_webhook_route_is_warned_about() {
    let (_logs, _guard) = Logs::capture();
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITLAB_WEBHOOK_SECRET", "misnamed"),
        ("GITLAB_API_URL", "https://gitlab.com/api/v4"),
        ("GITLAB_TOKEN", "glpat"),
        ("AZURE_DEVOPS_API_URL", "https://dev.azure.com/org"),
        ("AZURE_DEVOPS_TOKEN", "pat"),
    ])
    .unwrap();
    let warnings = settings.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("GITLAB_API_URL is set without GITLAB_WEBHOOK_TOKEN:"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with(
            "AZURE_DEVOPS_API_URL is set without AZURE_DEVOPS_WEBHOOK_USERNAME and AZURE_DEVOPS_WEBHOOK_PASSWORD:"
        ),
        "{warnings:?}"
    );
    let mut out = Vec::new();
    app::announce(&mut out, &settings, "http://127.0.0.1:3000", None).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("warning: GITLAB_API_URL is set without GITLAB_WEBHOOK_TOKEN"),
        "{out}"
    );
    // With the route, no such warning.
    let settings = harness::lookup(&[
        ("GITLAB_WEBHOOK_TOKEN", "gl-t0ken"),
        ("GITLAB_API_URL", "https://gitlab.com/api/v4"),
        ("GITLAB_TOKEN", "glpat"),
    ])
    .unwrap();
    assert_eq!(settings.warnings(), Vec::<String>::new());
}

/// Waits until `logs` hold a line with `needle` (at most 10 s): that line.
async fn logged_line(logs: &Logs, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some(line) = logs.text().lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no line with {needle:?}: {}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A comment whose request failed was logged with reqwest's own message alone, "error sending
/// request for url (...)": nothing said whether the API refused the connection, its name did
/// not resolve, the request timed out or the connection was lost once the comment was sent,
/// which is what an operator needs to know (and, for a comment that may have been posted,
/// whether to deliver it again). The log names the cause now, after that message.
#[tokio::test]
async fn a_comment_whose_request_failed_is_logged_with_the_cause() {
    let (logs, _guard) = Logs::capture();
    // Nothing listens there: every connection is refused.
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &format!("http://{refused_addr}")),
        ("GITHUB_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    assert_eq!(github_opened(&client, &base, "cause-1").await, 202);
    let line = logged_line(&logs, "provider API unreachable").await;
    assert!(line.contains("error sending request for url"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");

    // An API that reads the comment and closes the connection without an answer.
    let lost = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lost_addr = lost.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = lost.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            drop(conn);
        }
    });
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &format!("http://{lost_addr}")),
        ("GITHUB_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    assert_eq!(github_opened(&client, &base, "cause-2").await, 202);
    let line = logged_line(&logs, "comment not sent again").await;
    assert!(line.contains("cause-2"), "{line}");
    assert!(
        line.contains("connection closed before message completed"),
        "{line}"
    );
}

/// While a provider's API failed, each attempt of a comment was logged "provider API failing;
/// comment scheduled again" with the provider and the status only: during an outage, a stream
/// of such lines that said neither which pull request nor which delivery, the one to look up or
/// deliver again. Each line names the comment's target and delivery now, as the line of a
/// comment given up does.
#[tokio::test]
async fn a_comment_scheduled_again_is_logged_with_its_target_and_delivery() {
    let (logs, _guard) = Logs::capture();
    let (api, _fake) = harness::FakeProvider::start(&[http::StatusCode::SERVICE_UNAVAILABLE]).await;
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "t0ken"),
        ("BITBUCKET_WEBHOOK_SECRET", "s3cret"),
        ("BITBUCKET_API_URL", &format!("http://{refused_addr}/2.0")),
        ("BITBUCKET_TOKEN", "t0ken"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    assert_eq!(github_opened(&client, &base, "again-1").await, 202);
    let line = logged_line(&logs, "provider API failing").await;
    assert!(line.contains("delivery=again-1"), "{line}");
    assert!(line.contains("target=octo/repo#7"), "{line}");
    let id = "{00000000-0000-4000-8000-00000000f001}";
    assert_eq!(
        bitbucket_pr(&client, &base, "pullrequest:created", id, false).await,
        202
    );
    let line = logged_line(&logs, "provider API unreachable").await;
    assert!(line.contains(&format!("delivery={id}")), "{line}");
    assert!(line.contains("target=team/repo#31"), "{line}");
}

/// A 5xx the server answered itself (here a 503: the provider's pending comments are at their
/// bound) was logged twice at error level: by the error layer ("request failed", with the
/// request id) and by tower-http's `TraceLayer` ("response failed", without it), so an operator
/// counting errors counted each failure twice, and one of the two lines could not be tied to
/// its request. Each failed request is logged once at error level now, with its request id.
#[tokio::test]
async fn a_5xx_answer_is_logged_once_at_error_level_with_its_request_id() {
    let (logs, _guard) = Logs::capture();
    let (github_api, github_fake) =
        harness::FakeProvider::start(&[http::StatusCode::SERVICE_UNAVAILABLE; 200]).await;
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &github_api),
        ("GITHUB_TOKEN", "t0ken"),
        ("MAX_PENDING_COMMENTS", "1"),
    ])
    .unwrap();
    let base = harness::start_server(&settings).await;
    let client = crate::client::new();
    // GitHub's API is down: the first comment stays pending and fills the bound.
    assert_eq!(github_opened(&client, &base, "once-1").await, 202);
    let start = std::time::Instant::now();
    while github_fake.received().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second is refused 503; its request id is the one it was sent with.
    let body = serde_json::json!({
        "action": "opened",
        "number": 8,
        "pull_request": { "number": 8, "title": "Add a cache", "draft": false },
        "repository": { "full_name": "octo/repo" },
    })
    .to_string();
    let signature = format!("sha256={}", hmac_hex("s3cret", &body));
    let request_id = "once-request-id";
    let headers = [
        ("x-github-event", "pull_request"),
        ("x-github-delivery", "once-2"),
        ("x-hub-signature-256", signature.as_str()),
        ("x-request-id", request_id),
    ];
    let status = post_json(
        &client,
        &format!("{base}/api/v1/github_webhooks"),
        &headers,
        body,
    )
    .await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    // The answer's lines are written before the client reads it; give the trace's a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = logs.text();
    let errors: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("ERROR") && line.contains("503"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains(request_id), "{text}");
}

/// A 5xx that no one logged (a handler's own `502`, with no problem in it) is still logged once
/// at error level by the server's trace layer, now with the request id; a `4xx` is no failure.
#[tokio::test]
async fn a_5xx_the_error_layer_passed_through_is_logged_once_with_its_request_id() {
    use tower::ServiceBuilder;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let (logs, _guard) = Logs::capture();
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let router = axum::Router::new()
        .route(
            "/bad-gateway",
            axum::routing::get(|| async { http::StatusCode::BAD_GATEWAY }),
        )
        .route(
            "/conflict",
            axum::routing::get(|| async { http::StatusCode::CONFLICT }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    x_request_id.clone(),
                    MakeRequestUuid,
                ))
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(app::trace_layer())
                .layer(tower_webhook::error::WebhookErrorLayer::new()),
        );
    let base = format!("http://{}", harness::serve(router).await);
    let client = crate::client::new();
    for (path, status) in [("/bad-gateway", 502), ("/conflict", 409)] {
        let res = client
            .get(format!("{base}{path}"))
            .header("x-request-id", format!("trace{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = logs.text();
    let errors: Vec<&str> = text.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("502"), "{text}");
    assert!(errors[0].contains("trace/bad-gateway"), "{text}");
}

/// Set in the child process of
/// [`the_process_exits_within_the_grace_while_a_comments_host_name_is_being_resolved`].
const SLOW_DNS_CHILD: &str = "PR_AGENT_SERVER_SLOW_DNS_CHILD";

/// A comment's API host name is resolved by the system resolver on one of tokio's blocking
/// threads, which cannot be cancelled, and a tokio runtime dropped waits for its blocking
/// threads: with the resolver's name server not answering, the process stayed alive after
/// `SHUTDOWN_GRACE_SECS` for as long as the lookup took (10 s with the default `resolv.conf`
/// options, more with search domains), past a container's stop timeout. It exits within the
/// grace and a short wait now, after logging the comment left.
///
/// The test runs itself again as a child process, as `main` runs the server, in a mount namespace
/// of its own whose `resolv.conf` names a name server on a loopback address that never answers
/// (this test's UDP socket). Where it cannot (not Linux, no `unshare`, no right to mount or to
/// bind port 53), it says so and passes.
#[cfg(target_os = "linux")]
#[test]
fn the_process_exits_within_the_grace_while_a_comments_host_name_is_being_resolved() {
    use std::io::{BufRead, Read};
    use std::time::Instant;
    const NAME: &str =
        "the_process_exits_within_the_grace_while_a_comments_host_name_is_being_resolved";
    if std::env::var_os(SLOW_DNS_CHILD).is_some() {
        harness::run_as_child();
        return;
    }

    // A name server that never answers, on a loopback address of this process's own.
    let octet = (std::process::id() % 200 + 20) as u8;
    let Ok(dns) = std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 53, octet, 53), 53))
    else {
        eprintln!("skipped: cannot bind port 53 on a loopback address");
        return;
    };
    let dns_ip = dns.local_addr().unwrap().ip();
    let dir = std::env::temp_dir().join(format!("slow-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {dns_ip}\n")).unwrap();
    let usable = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf"#)
        .arg(&resolv)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !usable {
        eprintln!("skipped: cannot mount a resolv.conf of its own in a mount namespace");
        return;
    }

    let grace = Duration::from_secs(1);
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&resolv)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child::test_path(module_path!(), NAME),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SLOW_DNS_CHILD, "1")
        .env("PORT", "0")
        .env("GITHUB_WEBHOOK_SECRET", "s3cret")
        // Not in /etc/hosts: asked of the name server, which never answers. The lookup gives
        // up after 30 s (the longest the resolver allows).
        .env("GITHUB_API_URL", "http://api.github.slow-dns.test")
        .env("GITHUB_TOKEN", "t")
        .env("SHUTDOWN_GRACE_SECS", grace.as_secs().to_string())
        .env("RES_OPTIONS", "timeout:30 attempts:1")
        .env_remove("LOCALDOMAIN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
        // After the test harness's "test ... " on the same line.
        if let Some((_, addr)) = line.trim().split_once("listening on ") {
            break addr.to_owned();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = crate::client::new();
        let status = github_opened(
            &client,
            &format!("http://{addr}"),
            "d0000000-0000-4000-8000-000000000001",
        )
        .await;
        assert_eq!(status, http::StatusCode::ACCEPTED);
    });
    // The comment's post is under way: its host name is being looked up.
    dns.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut query = [0; 512];
    let asked = dns.recv_from(&mut query);
    assert!(asked.is_ok(), "no lookup: {asked:?}");
    let asked = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(asked.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stopped.elapsed();
    let errors = errors.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    drop(dns);
    let status = status.unwrap_or_else(|| panic!("the child never exited: {errors}"));
    assert!(status.success(), "{status}: {errors}");
    // The grace, then a short wait for the runtime's threads: not the 30 s of the lookup.
    assert!(
        took < grace + Duration::from_secs(10),
        "exited {took:?} after SIGTERM: {errors}"
    );
    assert!(errors.contains("comments left: 1"), "{errors}");
    let logged = errors.lines().find(|line| {
        line.contains("ERROR") && line.contains("d0000000-0000-4000-8000-000000000001")
    });
    assert!(logged.is_some(), "the comment left is not logged: {errors}");
}

/// A comment waiting on its provider's open breaker at shutdown keeps that wait (the breaker
/// refuses calls until then): once the open period ends within `SHUTDOWN_GRACE_SECS`, the
/// comment is sent, and posted if the API is back, before the process exits.
#[tokio::test]
async fn a_comment_waiting_on_an_open_breaker_is_posted_when_it_closes_within_the_grace() {
    let (_logs, _guard) = Logs::capture();
    let (api, fake) = harness::FakeProvider::start(&[http::StatusCode::SERVICE_UNAVAILABLE]).await;
    let settings = harness::lookup(&[
        ("PORT", "0"),
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_TOKEN", "t"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "2"),
        ("SHUTDOWN_GRACE_SECS", "30"),
    ])
    .unwrap();
    let app = app::build(&settings).unwrap();
    let state = app.state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = app::start(&settings, app, None, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = crate::client::new();
    let status = github_opened(&client, &base, "e0000000-0000-4000-8000-000000000001").await;
    assert_eq!(status, http::StatusCode::ACCEPTED);
    // The 503 opens the breaker: the comment waits for it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // Its answer read, the breaker opens.
    tokio::time::timeout(Duration::from_secs(10), async {
        while state.breakers[&app::Forge::GitHub].state().to_string() != "OPEN" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the breaker opens");
    stop.send(()).unwrap();
    running.wait().await;
    let left = state.drain_comments(settings.shutdown_grace).await;
    assert_eq!(left, 0);
    assert_eq!(fake.received().len(), 2);
}

/// The example server puts its `TraceLayer` outside `WebhookErrorLayer`: a delivery whose body
/// trickles in past the request's deadline is answered 504, and the layer's line for it is
/// inside the request's span. The tracing layer used to be inside the error layer, so that line,
/// and every other the layer logs, came without the span.
#[tokio::test]
async fn the_example_servers_error_lines_are_inside_the_request_span() {
    /// How the example server's `TraceLayer` names its span.
    const SPAN: &str = "request{method=";

    let (logs, _guard) = Logs::capture();
    // A body that keeps trickling in: the body timeout (0.5 s without data) never fires, the
    // request's deadline (1 s) does, inside the stack.
    let settings = harness::lookup(&[
        ("GITHUB_WEBHOOK_SECRET", "s3cret"),
        ("REQUEST_TIMEOUT_SECS", "1"),
    ])
    .unwrap();
    let addr = harness::serve(app::build(&settings).unwrap().router).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: x\r\nx-github-event: ping\r\n\
         x-github-delivery: 7a1c\r\nx-hub-signature-256: sha256={}\r\n\
         content-length: 100\r\n\r\n{{\"zen\":",
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut res = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&res).contains('}') {
            tokio::select! {
                n = stream.read(&mut chunk) => {
                    let n = n.unwrap();
                    assert!(n > 0, "closed before the answer");
                    res.extend_from_slice(&chunk[..n]);
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let _ = stream.write_all(b" ").await;
                }
            }
        }
    })
    .await
    .expect("an answer before the client gives up");
    let res = String::from_utf8_lossy(&res);
    assert!(res.starts_with("HTTP/1.1 504 "), "{res}");

    let text = logs.text();
    let failed: Vec<_> = text
        .lines()
        .filter(|l| l.contains("request failed") && l.contains("status=504"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(
        failed[0].contains(SPAN),
        "not in the request's span: {text}"
    );
}
