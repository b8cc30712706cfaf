//! The tunnel bootstrapper, on loopback: bore's timeouts follow the startup timeout, its connection
//! cap holds across re-opened sessions, and the localtunnel client opens its pooled connections
//! only to the server it registered with. bore's real server has a fixed control port, so each test
//! running it has its own loopback address (127.0.5.x).

use crate::lt_fake;
use crate::support;

use crate::bore_frames;
use bore_frames::{read_frame, write_frame};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lt_fake::{Pool, fake_server};
use support::{BoreServer, black_hole, eventually, get, hello_service};
use tokio::net::{TcpListener, TcpStream};
use tower_webhook::tunnel::{
    BORE_MAX_CONNECTIONS, Bore, LocalTunnel, Tunnel, TunnelError, TunnelEvent, Upstream,
};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
}

/// The next event of `events` within `limit`.
async fn next_event(
    events: &mut tower_webhook::tunnel::TunnelEvents,
    limit: Duration,
) -> TunnelEvent {
    tokio::time::timeout(limit, events.next())
        .await
        .expect("no tunnel event in time")
        .expect("the tunnel closed")
}

/// A TCP proxy on loopback to `target` that holds back what the server sends on the first
/// connection for `delay` (a slow server at the end of a long link); later connections pass
/// at once.
async fn slow_first_answer(target: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let wait = if first { delay } else { Duration::ZERO };
            first = false;
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::io::copy(&mut client_read, &mut server_write);
                let down = async {
                    tokio::time::sleep(wait).await;
                    tokio::io::copy(&mut server_read, &mut client_write).await
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    addr
}

/// A bore server whose answer to `Hello` takes 3.5 s to arrive is waited for within the startup
/// timeout (10 s here), instead of being given up after a fixed 3 s whatever that timeout says.
/// (No secret: bore's server gives the answer to its challenge 3 s, which a 3.5 s link cannot
/// keep whatever the client does.)
#[tokio::test]
async fn a_slow_bore_server_is_waited_for_within_the_startup_timeout() {
    let ip = Ipv4Addr::new(127, 0, 5, 1);
    let _server = BoreServer::start(ip, None).await;
    let proxy = slow_first_answer((ip, 7835).into(), Duration::from_millis(3_500)).await;
    let handle = Tunnel::builder()
        // The public port is on the server's address, not the proxy's: no probe through it.
        .probe(false)
        .provider(
            Bore::new()
                .server(proxy.to_string())
                .startup_timeout(Duration::from_secs(10)),
        )
        .start(service())
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let port: u16 = handle.url().rsplit(':').next().unwrap().parse().unwrap();
    // The tunnel works: a public request reaches the service.
    let (status, body) = get((ip, port).into(), "localhost", "/hook").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from /hook"), "{body}");
    handle.close().await;
}

/// A bore server that never answers, with a startup timeout shorter than 3 s, fails the attempt
/// with its own reason (no answer, no challenge) within that timeout, instead of the bare
/// "did not start" of the chain cutting off a wait of a fixed 3 s (or 2 s for the challenge).
#[tokio::test]
async fn a_silent_bore_server_fails_with_its_reason_within_a_short_startup_timeout() {
    let silent = black_hole().await;
    for (secret, expected) in [
        (None, "no answer from the bore server"),
        (Some("s3cret"), "no authentication challenge"),
    ] {
        let mut bore = Bore::new()
            .server(silent.to_string())
            .startup_timeout(Duration::from_millis(800));
        if let Some(secret) = secret {
            bore = bore.secret(secret);
        }
        let err = Tunnel::builder()
            .provider(bore)
            .start(service())
            .await
            .unwrap_err();
        let TunnelError::AllFailed { attempts } = err else {
            panic!("{err}")
        };
        assert!(
            attempts[0].reason.contains(expected),
            "{secret:?}: {}",
            attempts[0].reason
        );
    }
}

/// A bore control port driven by the test: each connection that says `Hello` is a control
/// connection, answered `Hello(1)` and handed to the test, which writes `Connection` messages;
/// each connection that says `Accept(id)` is counted and held open.
struct ScriptedBore {
    control_port: u16,
    controls: tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
    accepts: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedBore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedBore {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let control_port = listener.local_addr().unwrap().port();
        let (control_tx, controls) = tokio::sync::mpsc::unbounded_channel();
        let accepts = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (counted, holding) = (Arc::clone(&accepts), Arc::clone(&held));
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counted, holding) = (Arc::clone(&counted), Arc::clone(&holding));
                let control_tx = control_tx.clone();
                tasks.spawn(async move {
                    let frame = read_frame(&mut stream).await;
                    if frame.as_ref().is_some_and(|f| f.get("Hello").is_some()) {
                        let hello = serde_json::json!({ "Hello": 1 });
                        if write_frame(&mut stream, hello).await.is_ok() {
                            let _ = control_tx.send(stream);
                        }
                    } else if frame.as_ref().is_some_and(|f| f.get("Accept").is_some()) {
                        counted.fetch_add(1, Ordering::SeqCst);
                        holding.lock().unwrap().push(stream);
                    }
                });
            }
        });
        Self {
            control_port,
            controls,
            accepts,
            held,
            task,
        }
    }

    async fn next_control(&mut self) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), self.controls.recv())
            .await
            .expect("no control connection in time")
            .unwrap()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn announce(control: &mut TcpStream, connections: usize) {
    for _ in 0..connections {
        let id = uuid::Uuid::new_v4().to_string();
        write_frame(control, serde_json::json!({ "Connection": id }))
            .await
            .unwrap();
    }
}

/// The public connections still open when the control connection drops keep going, and still
/// count toward `BORE_MAX_CONNECTIONS` in the re-opened session: the client never carries more
/// than the cap at once, however often the server drops the control connection.
#[tokio::test]
async fn the_bore_connection_cap_holds_across_re_opened_sessions() {
    let mut server = ScriptedBore::start().await;
    let handle = Tunnel::builder()
        .provider(
            Bore::new()
                .server("127.0.0.1")
                .control_port(server.control_port),
        )
        .probe(false)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .start(service())
        .await
        .unwrap();
    let mut events = handle.events();
    let mut control = server.next_control().await;
    announce(&mut control, BORE_MAX_CONNECTIONS).await;
    assert!(
        eventually(Duration::from_secs(10), || server.accepts()
            >= BORE_MAX_CONNECTIONS)
        .await,
        "only {} connections opened",
        server.accepts()
    );

    // The server drops the control connection; the public connections stay open.
    drop(control);
    let down = next_event(&mut events, Duration::from_secs(10)).await;
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
    let mut control = server.next_control().await;
    let up = next_event(&mut events, Duration::from_secs(10)).await;
    assert!(up.is_up(), "{up:?}");

    // The new session is at the cap already: these are not accepted.
    announce(&mut control, 50).await;
    // One connection of the first session ends: its place is free for one more. Messages are
    // handled in order, so once a new connection arrives, the 50 above were handled.
    server.held.lock().unwrap().pop();
    let more = async {
        while server.accepts() == BORE_MAX_CONNECTIONS {
            announce(&mut control, 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), more)
        .await
        .expect("the freed place was not used");
    assert_eq!(
        server.accepts(),
        BORE_MAX_CONNECTIONS + 1,
        "connections beyond the cap were opened after the re-open"
    );
    handle.close().await;
}

/// A fake localtunnel server on 127.0.0.1 whose registration names `ip` as its address, and a
/// listener on `decoy`'s address at the same port as its pool: the server's address, the
/// number of connections the decoy got, and the server's task.
async fn lt_naming(
    ip: &str,
    decoy: Ipv4Addr,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let ip = ip.to_owned();
    let (addr, server) = fake_server(
        move |api_port, pool_port| {
            port_tx.send(pool_port).unwrap();
            serde_json::json!({
                "id": "named",
                "port": pool_port,
                "max_conn_count": 1,
                "ip": ip,
                "url": format!("http://named.localhost:{api_port}"),
            })
        },
        Duration::ZERO,
        Pool::KeepAll,
    )
    .await;
    let pool_port = port_rx.recv().unwrap();
    let decoy = TcpListener::bind((decoy, pool_port)).await.unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reached);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = decoy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, reached, server)
}

/// The address a localtunnel server names in its registration answer (`ip`) is where the client
/// would connect and answer requests: a non-public one that is not an address of the server's
/// host (here another loopback address, where something else listens on the same port), or no
/// IP address at all, is ignored, and the pool connects to the server's host.
#[tokio::test]
async fn a_localtunnel_registration_cannot_send_the_pool_elsewhere() {
    for (n, named) in ["127.0.5.9", "127.0.5.9\r\nforged", "0.0.0.0"]
        .into_iter()
        .enumerate()
    {
        let (addr, reached, server) = lt_naming(named, Ipv4Addr::new(127, 0, 5, 9)).await;
        let handle = Tunnel::builder()
            .probe(false)
            .provider(
                LocalTunnel::new()
                    .server(format!("http://{addr}"))
                    .subdomain("named")
                    .unwrap(),
            )
            .start(service())
            .await
            .unwrap_or_else(|err| panic!("{named:?}: {err}"));
        assert!(handle.status().is_up());
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "case {n}: the pool connected to the address the server named"
        );
        handle.close().await;
        server.abort();
    }
}

/// With `trust_registration_ip(true)`, the address the server names is used whatever it is (a
/// server on a private network whose backends name their private addresses).
#[tokio::test]
async fn a_trusted_localtunnel_registration_ip_is_used() {
    let (addr, reached, server) = lt_naming("127.0.5.10", Ipv4Addr::new(127, 0, 5, 10)).await;
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            LocalTunnel::new()
                .server(format!("http://{addr}"))
                .subdomain("named")
                .unwrap()
                .trust_registration_ip(true),
        )
        .start(service())
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        eventually(Duration::from_secs(5), || reached.load(Ordering::SeqCst)
            >= 1)
        .await,
        "the pool did not connect to the named address"
    );
    handle.close().await;
    server.abort();
}

/// A localtunnel server that never answers the registration, with a startup timeout shorter
/// than 3 s, fails the attempt with its own reason (no answer) within that timeout, instead of
/// the bare "did not start" of the chain cutting off a registration wait of at least 3 s.
#[tokio::test]
async fn a_silent_localtunnel_server_fails_with_its_reason_within_a_short_startup_timeout() {
    let silent = black_hole().await;
    let err = Tunnel::builder()
        .provider(
            LocalTunnel::new()
                .server(format!("http://{silent}"))
                .startup_timeout(Duration::from_millis(800)),
        )
        .start(service())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = err else {
        panic!("{err}")
    };
    assert!(
        attempts[0].reason.contains("got no answer"),
        "{}",
        attempts[0].reason
    );
}
