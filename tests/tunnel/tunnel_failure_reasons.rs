//! The tunnel bootstrapper, on loopback, says why it fails: a cloudflared that never gets ready
//! fails with what it said rather than a bare timeout; a localtunnel pool port that answers every
//! connection with bytes that are no request and closes it is not reconnected to in a tight loop; a
//! public connection through bore to a local server that is down says why in the log; a session
//! task that panics is reported `Down` with the panic's message; a bore message of an unknown name
//! is shown escaped; a public URL's credentials stay out of logs and `Debug` output.

use crate::support;

use crate::bore_frames;
use crate::child;
use crate::gated;
use crate::logs;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bore_frames::{read_frame, write_frame};
use bytes::Bytes;
use gated::{gated, next_entered};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use support::hello_service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_webhook::BoxError;
use tower_webhook::tunnel::{
    Bore, BoxFuture, Cloudflared, LocalTunnel, Ngrok, Provider, Server, Session, Tunnel,
    TunnelError, TunnelEvent, Upstream,
};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// Why a tunnel through `provider` alone failed to start (it must fail).
async fn failure_of(provider: impl Provider) -> String {
    match Tunnel::builder().provider(provider).start(service()).await {
        Err(TunnelError::AllFailed { attempts }) => attempts[0].reason.clone(),
        other => panic!("{other:?}"),
    }
}

/// A cloudflared that runs but never gets ready (it cannot reach Cloudflare's edge, say) fails
/// the attempt within its startup timeout with what it said and what its metrics endpoint
/// answered, not with a bare "did not start" that leaves the user guessing.
#[tokio::test]
async fn a_cloudflared_that_never_gets_ready_fails_with_its_own_reason() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let reason = failure_of(
        Cloudflared::new()
            .binary(&fake)
            .arg("--fake-mode")
            .arg("never-ready")
            // Room for node to start the fake and answer its metrics endpoint on a busy
            // machine: the reason quotes what that endpoint last answered.
            .startup_timeout(Duration::from_secs(6)),
    )
    .await;
    assert!(!reason.contains("did not start within"), "{reason}");
    assert!(reason.contains("not ready"), "{reason}");
    assert!(reason.contains("/ready answered 503"), "{reason}");
    assert!(
        reason.contains("Failed to dial a quic connection"),
        "{reason}"
    );
}

/// cloudflared logs every `TUNNEL_*` variable it was started with, values and all, and reads
/// `TUNNEL_REGION` as its `--region`. It is started without the secrets of this crate's other
/// providers (the ngrok auth token, the bore secret), so neither its log nor a failure's reason
/// shows them; made by `TunnelConfig`, also without the configuration's other settings (an
/// ngrok region). Its own `TUNNEL_*` settings still reach it.
///
/// The test runs itself again as a child process, with those variables in its environment and
/// a `cloudflared` on its `PATH` that runs the fake one.
#[cfg(unix)]
#[test]
fn cloudflared_is_started_without_this_crates_settings() {
    const CHILD: &str = "TOWER_WEBHOOK_CLOUDFLARED_ENV_CHILD";
    const NAME: &str = "cloudflared_is_started_without_this_crates_settings";
    // This crate's secrets, and another program's that cloudflared would list too.
    const SECRETS: [&str; 3] = [
        "ngrok-token-0123456789",
        "bore-secret-0123456789",
        "ssh-password-0123456789",
    ];
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    if std::env::var_os(CHILD).is_none() {
        // A `cloudflared` for `TunnelConfig` to find: the fake, failing at once, logging to the
        // file the child names in `FAKE_CLOUDFLARED_LOG`.
        let dir = std::env::temp_dir().join(format!(
            "tower-webhook-cloudflared-path-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = dir.join("cloudflared");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" --fake-mode crash --fake-log \"$FAKE_CLOUDFLARED_LOG\"\n",
                fake.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        child::run_one(
            child::alone(module_path!(), NAME, CHILD, "1")
                .env("FAKE_CLOUDFLARED_LOG", dir.join("configured.log"))
                .env("PATH", path)
                .env("TUNNEL_SERVICE", "cloudflared")
                .env("TUNNEL_AUTH_TOKEN", SECRETS[0])
                .env("NGROK_AUTHTOKEN", SECRETS[0])
                .env("TUNNEL_REGION", "eu")
                .env("TUNNEL_SERVER", "bore.example.com")
                .env("TUNNEL_SECRET", SECRETS[1])
                .env("TUNNEL_LOGLEVEL", "debug")
                .env("SSH_TUNNEL_PASSWORD", SECRETS[2]),
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Started through `attempt`, logging to `log`: the names of the `TUNNEL_*`/`NGROK_*`
    // variables cloudflared got. Neither its log nor the failure's reason holds a secret.
    let started = |attempt: std::pin::Pin<Box<dyn std::future::Future<Output = Result<_, _>>>>,
                   log: &std::path::Path| {
        let reason = match runtime.block_on(attempt) {
            Err(TunnelError::AllFailed { attempts }) => attempts[0].reason.clone(),
            other => panic!("{other:?}"),
        };
        let text = std::fs::read_to_string(log).unwrap();
        let _ = std::fs::remove_file(log);
        for secret in SECRETS {
            assert!(!reason.contains(secret), "{reason}");
            assert!(!text.contains(secret), "{text}");
        }
        // What cloudflared printed is in the reason: its list of variables, their names alone.
        assert!(
            reason.contains("INF Environmental variables map[")
                && reason.contains("SSH_TUNNEL_PASSWORD")
                && reason.contains("TUNNEL_LOGLEVEL")
                && reason.contains("] (values not shown)"),
            "{reason}"
        );
        assert!(!reason.contains(":debug"), "{reason}");
        let env = text.lines().find(|line| line.starts_with("env ")).unwrap();
        env.split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // Made directly: the secrets are kept from it; `TUNNEL_REGION` is taken to be its own.
    let log = std::env::temp_dir().join(format!(
        "tower-webhook-cloudflared-env-{}-{}.log",
        std::process::id(),
        fastrand::u32(..)
    ));
    let provider = Cloudflared::new()
        .binary(&fake)
        .arg("--fake-mode")
        .arg("crash")
        .arg("--fake-log")
        .arg(log.display().to_string());
    let names = started(
        Box::pin(Tunnel::builder().provider(provider).start(service())),
        &log,
    );
    assert_eq!(
        names,
        [
            "TUNNEL_LOGLEVEL",
            "TUNNEL_REGION",
            "TUNNEL_SERVER",
            "TUNNEL_SERVICE"
        ],
        "{names:?}"
    );

    // Made by `TunnelConfig` (`TUNNEL_SERVICE=cloudflared`): none of its settings reach it.
    let log = std::path::PathBuf::from(std::env::var("FAKE_CLOUDFLARED_LOG").unwrap());
    let config = tower_webhook::tunnel::TunnelConfig::from_env().unwrap();
    let names = started(Box::pin(config.builder().start(service())), &log);
    assert_eq!(names, ["TUNNEL_LOGLEVEL"], "{names:?}");
}

/// What the pool port of [`lt_with_a_pool_port`] does with each connection.
#[derive(Clone, Copy)]
enum PoolPort {
    /// Something else answers there: it greets with a banner (as an SSH server does) and
    /// closes the connection.
    Greets,
    /// It closes the connection unused this long after accepting it, as a server past its
    /// limit does seen over a link with this round-trip time.
    ClosesAfter(Duration),
}

/// A localtunnel server whose registration names a pool port that does `what` with each
/// connection. Returns the server's address and the count of pool connections.
async fn lt_with_a_pool_port(what: PoolPort) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let api = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let pool = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let (addr, pool_port) = (api.local_addr().unwrap(), pool.local_addr().unwrap().port());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = pool.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            match what {
                PoolPort::Greets => {
                    let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
                }
                PoolPort::ClosesAfter(delay) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        drop(conn);
                    });
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = api.accept().await {
            let mut head = vec![0u8; 4096];
            let _ = conn.read(&mut head).await;
            let body = serde_json::json!({
                "id": "greeted",
                "port": pool_port,
                "max_conn_count": 4,
                "url": format!("http://greeted.localhost:{}", addr.port()),
            })
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    (addr, connections)
}

/// Pool connections that the far end closes at once, having sent bytes that are no request,
/// carried nothing: the pool paces its reconnects and reports the tunnel lost, as for any
/// connection closed at once, instead of reconnecting in a tight loop for as long as the
/// tunnel lives.
#[tokio::test]
async fn a_pool_port_that_greets_and_closes_is_not_reconnected_to_in_a_tight_loop() {
    let opened = reported_lost(PoolPort::Greets, Duration::from_secs(10)).await;
    // Four slots, each giving up after ten connections closed at once.
    assert!(opened <= 60, "{opened} pool connections");
}

/// Opens a tunnel through a localtunnel server whose pool port behaves as `port`, and waits up
/// to `within` for the tunnel to be reported lost because its connections keep closing; the
/// number of pool connections opened by then.
async fn reported_lost(port: PoolPort, within: Duration) -> usize {
    let (server, connections) = lt_with_a_pool_port(port).await;
    let handle = Tunnel::builder()
        .probe(false)
        .reconnect(false)
        .provider(LocalTunnel::new().server(format!("http://{server}")))
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let down = tokio::time::timeout(within, events.next()).await;
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        matches!(&down, Ok(Some(TunnelEvent::Down { reason, .. })) if reason.contains("keeps closing")),
        "{down:?} after {opened} pool connections"
    );
    handle.close().await;
    opened
}

/// What a `POST /webhook` through the tunnel at `url` (`http://host:port`) gets back within 5 s
/// (nothing, when the connection is closed without an answer).
async fn post_through(url: &str) -> Vec<u8> {
    let public = url.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(public).await.unwrap();
    conn.write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    answer
}

/// With an address upstream, bore pipes each public connection to the local server. When that
/// server is down, the public client only sees its connection closed: the log says why, as it
/// does for requests forwarded over HTTP (a warning naming the address), not in a debug line
/// nobody sees.
#[tokio::test]
async fn a_piped_connection_to_a_local_server_that_is_down_is_logged() {
    let (logs, _guard) = logs::Logs::capture();
    let ip = Ipv4Addr::new(127, 0, 10, 1);
    let _server = support::BoreServer::start(ip, None).await;
    let local = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, crate::unopened::closed_port()));
    let handle = Tunnel::builder()
        .provider(Bore::new().server(ip.to_string()))
        .start(local)
        .await
        .unwrap();
    let answer = post_through(&handle.url()).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let logged = support::eventually(Duration::from_secs(5), || {
        logs.text().lines().any(|line| {
            line.contains("WARN")
                && line.contains("could not reach the local server")
                && line.contains(&local.to_string())
        })
    })
    .await;
    assert!(logged, "{}", logs.text());
    handle.close().await;
}

/// A service behind the tunnel that fails (its own call to an API failed, and the error names
/// the URL with its credentials) is logged with those credentials redacted.
#[tokio::test]
async fn a_failing_service_is_logged_without_the_credentials_its_error_names() {
    let (logs, _guard) = logs::Logs::capture();
    let ip = Ipv4Addr::new(127, 0, 10, 2);
    let _server = support::BoreServer::start(ip, None).await;
    let failing = tower::service_fn(|_req: Request<Incoming>| async {
        Err::<Response<Full<Bytes>>, BoxError>(
            "error sending request for url (https://bot:hunter2@api.example/v1?access_token=tok123)"
                .into(),
        )
    });
    let handle = Tunnel::builder()
        .provider(Bore::new().server(ip.to_string()))
        .start(Upstream::service(failing))
        .await
        .unwrap();
    // No answer: the service failed before one went out.
    let answer = post_through(&handle.url()).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let logged = support::eventually(Duration::from_secs(5), || {
        logs.text().lines().any(|line| {
            line.contains("WARN") && line.contains("the service or its response body failed")
        })
    })
    .await;
    let text = logs.text();
    assert!(logged, "{text}");
    assert!(text.contains("https://<redacted>@api.example/v1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("tok123"), "{text}");
    handle.close().await;
}

/// A provider whose session task panics (a bug) once the tunnel is up.
#[derive(Debug)]
struct PanicsWhenUp;

impl Provider for PanicsWhenUp {
    fn name(&self) -> &str {
        "panics-when-up"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move {
            Ok(Session::spawn("http://127.0.0.1:9", |_stop| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("slot table index 7 out of range for https://api.example/v1?token=s3cret");
            }))
        })
    }
}

/// A session task that panics ends the tunnel as any loss does, and the `Down` event says what
/// the panic said, as the error of a panic in `open` does: "the tunnel task panicked" alone
/// leaves the bug unnamed.
#[tokio::test]
async fn a_session_task_that_panics_is_reported_down_with_its_message() {
    let handle = Tunnel::builder()
        .probe(false)
        .reconnect(false)
        .provider(PanicsWhenUp)
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(
        matches!(&down, Ok(Some(TunnelEvent::Down { reason, .. }))
            if reason.contains("panicked") && reason.contains("slot table index 7 out of range")
                && reason.contains("token=<redacted>") && !reason.contains("s3cret")),
        "{down:?}"
    );
    handle.close().await;
}

/// A provider whose `open` panics (a bug) with a credential in its message.
#[derive(Debug)]
struct PanicsInOpen;

impl Provider for PanicsInOpen {
    fn name(&self) -> &str {
        "panics-in-open"
    }

    fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        Box::pin(async move { panic!("no tunnel from https://bot:hunter2@tunnels.example/") })
    }
}

/// A panic's message is what names the bug, and is told as the attempt's reason, but the
/// credentials it names are redacted there as in every other reason.
#[tokio::test]
async fn a_panic_in_open_is_told_without_the_credentials_it_names() {
    let (logs, _guard) = logs::Logs::capture();
    let err = Tunnel::builder()
        .reconnect(false)
        .provider(PanicsInOpen)
        .start(service())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("panicked"), "{text}");
    assert!(
        text.contains("https://<redacted>@tunnels.example/"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!logs.text().contains("hunter2"), "{}", logs.text());
}

/// A delivery through the localtunnel test server to the tunnel `id`.
async fn deliver(server: std::net::SocketAddr, id: &str, path: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {id}.localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn read_to_close(mut stream: tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The server helper keeps its tunnel open while it drains, and a delivery that reaches the
/// tunnel meanwhile is served and waited for (docs/tunnel.md). Through localtunnel too: the
/// request arrives on a pooled connection opened during the drain, and the drain must not end,
/// closing the tunnel under it, as soon as the requests that were open when it started are
/// done.
#[tokio::test]
async fn a_delivery_through_localtunnel_during_the_drain_is_waited_for() {
    let lt = support::LtServer::start().await;
    let (app, mut entered, release) = gated();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .tunnel(
            Tunnel::builder().provider(LocalTunnel::new().server(format!("http://{}", lt.addr))),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(app)
        .await
        .unwrap();
    let url = running.tunnel_url().unwrap();
    let id = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('.').next())
        .unwrap()
        .to_owned();
    let client = lt.client(&id).unwrap();

    let early = deliver(lt.addr, &id, "/early").await;
    assert_eq!(next_entered(&mut entered).await, "/early");
    let accepted = client.accepted.load(Ordering::SeqCst);
    stop_tx.send(()).unwrap();
    // The drain has started: the port refuses, and the idle pooled connections it closed were
    // opened again.
    let local = running.local_addr();
    let drained = support::eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(local).is_err()
            && client.accepted.load(Ordering::SeqCst) > accepted
    })
    .await;
    assert!(
        drained,
        "the drain did not start, or no pooled connection came back"
    );
    let late = deliver(lt.addr, &id, "/late").await;
    assert_eq!(next_entered(&mut entered).await, "/late");

    release.add_permits(1);
    let early = read_to_close(early).await;
    assert!(early.starts_with("HTTP/1.1 200 "), "{early}");
    // The late delivery is still in the service: the drain waits for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.add_permits(1);
    let late = read_to_close(late).await;
    assert!(late.starts_with("HTTP/1.1 200 "), "{late:?}");
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the server did not stop");
}

/// A server past its pooled-connection limit closes each connection past it at once, unused;
/// over a link with a round-trip time of a few hundred milliseconds, "at once" is that long
/// after the client's connect completed. The pool treats such connections as closed at once
/// (paced, then given up, or the tunnel reported lost) rather than reconnecting them for as
/// long as the tunnel lives.
#[tokio::test]
async fn a_pool_connection_closed_unused_after_a_long_round_trip_counts_as_closed_at_once() {
    reported_lost(
        PoolPort::ClosesAfter(Duration::from_millis(300)),
        Duration::from_secs(15),
    )
    .await;
}

/// A tunnel lost while its round-trip probe runs (here cloudflared exits 1.5 s after it
/// started, while the probe of its URL, which leads nowhere, is still trying) fails the attempt
/// with why it was lost, not with the probe's failure once the probe's time is up, which says
/// nothing of it.
#[tokio::test]
async fn a_tunnel_lost_during_its_probe_fails_with_why() {
    let Some(fake) = support::fake_cloudflared() else {
        return;
    };
    let reason = failure_of(
        Cloudflared::new()
            .binary(&fake)
            .arg("--fake-mode")
            .arg("exit-later")
            // `https://nowhere.localhost`: loopback port 443, where nothing answers.
            .arg("--fake-hostname")
            .arg("nowhere.localhost")
            .domain("localhost"),
    )
    .await;
    assert!(reason.contains("exit status: 7"), "{reason}");
    assert!(reason.contains("connection to the edge lost"), "{reason}");
}

/// ngrok with an auth token that fails for another reason (here its ingress cannot be
/// reached) is not told to "set TUNNEL_AUTH_TOKEN": the token is set, and that advice sends the
/// user after the wrong thing. Without a token, the advice stays.
#[tokio::test]
async fn ngrok_with_a_token_is_not_told_to_set_one() {
    let port = crate::unopened::closed_port();
    let err = Tunnel::builder()
        .provider(
            Ngrok::new()
                .authtoken("offline-test-token")
                .server_addr(format!("127.0.0.1:{port}")),
        )
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].hint, None, "{err}");
    assert!(!err.to_string().contains("set TUNNEL_AUTH_TOKEN"), "{err}");

    let err = Tunnel::builder()
        .provider(Ngrok::new())
        .start(service())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("set TUNNEL_AUTH_TOKEN"), "{err}");
}

/// When the service behind a tunnel fails a request (a tower `Service` may: a timeout layer, a
/// database that is down), hyper closes the connection without an answer, so the sender sees a
/// reset. The log must say so, with the service's own error: it used to be a debug line reading
/// only "error from user's Service", the cause dropped.
#[tokio::test]
async fn a_service_error_is_logged_with_its_cause() {
    let (logs, _guard) = logs::Logs::capture();
    let failing = tower::service_fn(|_req: Request<Incoming>| async {
        Err::<Response<Full<Bytes>>, BoxError>("the review database is unavailable".into())
    });
    let upstream = Upstream::service(failing);
    let (mut client, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_connection(tunnel_side).await });
    client
        .write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap();
    let text = logs.text();
    assert!(
        text.lines().any(
            |line| line.contains("WARN") && line.contains("the review database is unavailable")
        ),
        "{text}"
    );
}

/// `Server::bind` (and `tunnel::start`) on an address that is taken fails with an error that
/// names the address, not the system's "Address already in use" alone.
#[tokio::test]
async fn an_address_the_server_cannot_listen_on_is_named() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Server::bind(addr).await.unwrap_err();
    assert!(matches!(err, TunnelError::Io(_)), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    let app = hello_service(Arc::new(AtomicUsize::new(0)));
    let err = tower_webhook::tunnel::start(addr, app, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// An ngrok ingress that accepts and never answers (a proxy or firewall that swallows the TLS
/// handshake) fails the attempt within the startup timeout naming the ingress, as bore and
/// localtunnel do for a silent server, not with a bare "did not start within 3000 ms".
#[tokio::test]
async fn a_silent_ngrok_ingress_fails_with_its_own_reason() {
    let ingress = support::black_hole().await;
    let reason = failure_of(
        Ngrok::new()
            .authtoken("offline-test-token")
            .server_addr(ingress.to_string())
            .startup_timeout(Duration::from_secs(3)),
    )
    .await;
    assert!(!reason.contains("did not start within"), "{reason}");
    assert!(reason.contains(&ingress.to_string()), "{reason}");
    assert!(reason.contains("did not answer"), "{reason}");
}

/// The name of a message no bore server sends, with what would forge a log line: an escape
/// sequence that clears a terminal and a line break before a made-up entry.
const FORGED: &str = "\u{1b}[2J\n2026-12-01T00:00:00Z  INFO tunnel up url=http://forged.example";

/// A bore control port that answers `Hello` with a message named [`FORGED`]: at once when
/// `first`, else after `Hello(40002)` and a heartbeat.
async fn bore_sending_forged(first: bool) -> std::net::SocketAddr {
    let control = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = control.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = control.accept().await {
            tokio::spawn(async move {
                let frame = read_frame(&mut stream).await;
                if frame.as_ref().is_none_or(|f| f.get("Hello").is_none()) {
                    return;
                }
                if !first {
                    let _ = write_frame(&mut stream, serde_json::json!({ "Hello": 40_002 })).await;
                    let _ = write_frame(&mut stream, serde_json::json!("Heartbeat")).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let forged = serde_json::Map::from_iter([(FORGED.to_owned(), 1.into())]);
                let _ = write_frame(&mut stream, forged.into()).await;
                // Held open: the client ends it.
                let _ = read_frame(&mut stream).await;
            });
        }
    });
    addr
}

fn assert_escaped(reason: &str) {
    assert!(!reason.contains(['\u{1b}', '\n']), "{reason:?}");
    assert!(reason.contains("invalid bore frame"), "{reason}");
    assert!(reason.contains("\\u{1b}[2J\\n2026"), "{reason}");
}

/// A bore server's frame that is no message bore knows failed the attempt with serde's error,
/// which quotes the unknown message's name as it was sent: a server could clear the terminal
/// and forge log lines through the warning and the error that show the reason. It is now
/// escaped, as the server's own error messages are.
#[tokio::test]
async fn an_unknown_bore_message_is_shown_escaped_when_it_fails_the_start() {
    let (logs, _guard) = logs::Logs::capture();
    let addr = bore_sending_forged(true).await;
    let reason = failure_of(
        Bore::new()
            .server("127.0.0.1")
            .control_port(addr.port())
            .startup_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_escaped(&reason);
    let logged = logs.text();
    assert!(logged.contains("invalid bore frame"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
    assert!(!logged.contains("\n2026-12-01T00:00:00Z"), "{logged:?}");
}

/// The same frame on an open tunnel ends it (the control connection can no longer be read),
/// and the `Down` event says why with the name escaped.
#[tokio::test]
async fn an_unknown_bore_message_is_shown_escaped_when_it_ends_the_tunnel() {
    let addr = bore_sending_forged(false).await;
    let handle = Tunnel::builder()
        .provider(Bore::new().server("127.0.0.1").control_port(addr.port()))
        .probe(false)
        .reconnect(false)
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    let Ok(Some(TunnelEvent::Down { reason, .. })) = down else {
        panic!("{down:?}")
    };
    assert_escaped(&reason);
    handle.close().await;
}

/// A provider of one's own whose public URL carries credentials (a tunnel behind basic auth,
/// a token in the query), as webhook senders accept them. Its session serves the upstream on a
/// loopback port and ends, as a lost tunnel does, after `lasts`; with `reachable` false the URL
/// names a port where nothing listens.
#[derive(Debug)]
struct WithCredentials {
    reachable: bool,
    lasts: Duration,
}

impl Provider for WithCredentials {
    fn name(&self) -> &str {
        "with-credentials"
    }

    fn startup_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }

    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
        let (reachable, lasts) = (self.reachable, self.lasts);
        Box::pin(async move {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let port = match reachable {
                true => listener.local_addr()?.port(),
                false => crate::unopened::closed_port(),
            };
            let url = format!("http://hook:s3cret@127.0.0.1:{port}/?token=t0ken");
            Ok(Session::spawn(url, move |mut stop| async move {
                let serving = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let upstream = upstream.clone();
                        tokio::spawn(async move { upstream.serve_connection(tcp).await });
                    }
                };
                tokio::select! {
                    () = stop.stopped() => Ok(()),
                    () = serving => Ok(()),
                    () = tokio::time::sleep(lasts) => Err("the relay went away".into()),
                }
            }))
        })
    }
}

/// The password and the query token of a provider's public URL were logged as the tunnel came
/// up and went down, and shown by the `Debug` output of the handle, its events and the
/// provider's `Session`. They are now left out there; `url()` and the events' fields keep the
/// URL whole, as the webhook sender needs it.
#[tokio::test]
async fn the_credentials_of_a_public_url_stay_out_of_logs_and_debug() {
    let (logs, _guard) = logs::Logs::capture();
    let handle = Tunnel::builder()
        .provider(WithCredentials {
            reachable: true,
            lasts: Duration::from_secs(1),
        })
        .reconnect(false)
        .start(service())
        .await
        .unwrap();
    assert!(handle.url().contains("hook:s3cret@"), "{}", handle.url());
    assert!(handle.url().ends_with("?token=t0ken"), "{}", handle.url());
    let mut events = handle.events();
    let shown = format!("{handle:?} {:?}", handle.status());
    assert!(shown.contains("http://127.0.0.1:"), "{shown}");
    let down = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    let Ok(Some(down @ TunnelEvent::Down { .. })) = down else {
        panic!("{down:?}")
    };
    assert!(down.url().contains("s3cret"), "{down:?}");
    let shown = format!("{shown} {down:?}");
    let logged = logs.text();
    assert!(
        logged.contains("tunnel up") && logged.contains("tunnel down"),
        "{logged}"
    );
    for secret in ["s3cret", "t0ken"] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!logged.contains(secret), "{logged}");
    }
    handle.close().await;

    // The server helper's line naming the tunnel's URL, and its `Running`'s `Debug`.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind(std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
        .tunnel(Tunnel::builder().provider(WithCredentials {
            reachable: true,
            lasts: Duration::MAX,
        }))
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .spawn(hello_service(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap();
    assert!(running.tunnel_url().unwrap().contains("s3cret"));
    let shown = format!("{running:?}");
    let _ = stop.send(());
    running.wait().await;
    let logged = logs.text();
    assert!(logged.contains("webhooks reach this server"), "{logged}");
    for secret in ["s3cret", "t0ken"] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!logged.contains(secret), "{logged}");
    }

    let session = Session::spawn(
        "https://hook:s3cret@hooks.example.com",
        |mut stop| async move {
            stop.stopped().await;
            Ok(())
        },
    );
    let shown = format!("{session:?}");
    assert!(
        shown.contains("hooks.example.com") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(session.url().contains("s3cret"));
}

/// A round-trip probe that fails through such a URL named it whole in the attempt's reason,
/// the final error and the warning logged.
#[tokio::test]
async fn a_failed_probe_names_the_public_url_without_its_credentials() {
    let (logs, _guard) = logs::Logs::capture();
    let reason = failure_of(WithCredentials {
        reachable: false,
        lasts: Duration::MAX,
    })
    .await;
    assert!(
        reason.contains("round-trip probe through http://127.0.0.1:"),
        "{reason}"
    );
    let logged = logs.text();
    for secret in ["s3cret", "t0ken"] {
        assert!(!reason.contains(secret), "{reason}");
        assert!(!logged.contains(secret), "{logged}");
    }
}
