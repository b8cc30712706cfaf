//! Our bore client against bore-cli's real server, in-process on loopback.
//!
//! bore's control port is fixed, so each test uses its own loopback address (127.0.0.2 ...).

use crate::support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{BoreServer, get_url, hello_service, relay_to, serve_locally};
use tower_webhook::tunnel::{
    Bore, Server, Tunnel, TunnelError, TunnelEvent, TunnelEvents, Upstream,
};

fn bore_to(ip: Ipv4Addr) -> Bore {
    Bore::new()
        .server(ip.to_string())
        .startup_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn serves_a_tower_service_without_a_local_port() {
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let _server = BoreServer::start(ip, None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = Tunnel::builder()
        .provider(bore_to(ip))
        .start(Upstream::service(hello_service(Arc::clone(&calls))))
        .await
        .unwrap();

    let url = handle.url();
    assert!(url.starts_with("http://127.0.0.2:"), "{url}");
    assert_eq!(handle.provider(), "bore");
    assert_eq!(
        handle.status(),
        TunnelEvent::Up {
            provider: "bore".into(),
            url: url.clone(),
            verified: true
        }
    );
    // The probe was answered by the tunnel itself, not by the service.
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    for i in 0..3 {
        let (status, body) = get_url(&url, &format!("/hook/{i}")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(&format!("hello from /hook/{i}")), "{body}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    handle.close().await;
    assert!(
        support::eventually(Duration::from_secs(3), || {
            std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err()
        })
        .await,
        "public port still open after close"
    );
}

#[tokio::test]
async fn forwards_to_a_local_address_with_a_secret() {
    let ip = Ipv4Addr::new(127, 0, 0, 3);
    let _server = BoreServer::start(ip, Some("correct horse")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let local = serve_locally(hello_service(Arc::clone(&calls))).await;
    let handle = Tunnel::builder()
        .provider(bore_to(ip).secret("correct horse"))
        .start(local)
        .await
        .unwrap();
    let (status, body) = get_url(&handle.url(), "/via-address").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from /via-address"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.close().await;
}

#[tokio::test]
async fn wrong_or_missing_secret_is_rejected() {
    let ip = Ipv4Addr::new(127, 0, 0, 4);
    let _server = BoreServer::start(ip, Some("correct horse")).await;
    let upstream = || Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))));

    let err = Tunnel::builder()
        .provider(bore_to(ip).secret("battery staple"))
        .start(upstream())
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].provider, "bore");
    assert!(attempts[0].reason.contains("invalid secret"), "{err}");
    assert!(!err.to_string().contains("battery staple"));
    assert!(err.to_string().contains("TUNNEL_SECRET"), "{err}");

    let err = Tunnel::builder()
        .provider(bore_to(ip))
        .start(upstream())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requires a secret"), "{err}");
}

#[tokio::test]
async fn a_secret_for_a_server_without_one_is_reported() {
    let ip = Ipv4Addr::new(127, 0, 0, 5);
    let _server = BoreServer::start(ip, None).await;
    let err = Tunnel::builder()
        .provider(bore_to(ip).secret("unneeded"))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no authentication challenge"),
        "{err}"
    );
}

/// A killed server ends the session (`Down`); the tunnel re-opens once a server is back: at its
/// old URL when the new server gives it its port again (`bore_reopen` checks that it does),
/// else at a new one told as `UrlChanged`.
#[tokio::test]
async fn server_killed_gives_down_then_reopens_once_a_server_is_back() {
    let ip = Ipv4Addr::new(127, 0, 0, 6);
    let mut server = BoreServer::start(ip, None).await;
    let handle = Tunnel::builder()
        .provider(bore_to(ip))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let first = handle.url();
    let mut events = handle.events();

    server.kill();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a Down event")
        .unwrap();
    match &down {
        TunnelEvent::Down {
            provider,
            url,
            reason,
        } => {
            assert_eq!(provider, "bore");
            assert_eq!(url, &first);
            assert!(reason.contains("closed the control connection"), "{reason}");
        }
        other => panic!("expected Down, got {other:?}"),
    }
    assert!(!handle.status().is_up());

    // While the server is gone, re-opening fails and is retried; then a new server comes up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = BoreServer::start(ip, None).await;
    let back = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the tunnel comes back")
        .unwrap();
    assert!(back.is_up(), "{back:?}");
    let second = handle.url();
    assert_eq!(back.url(), second);
    if second != first {
        assert!(matches!(back, TunnelEvent::UrlChanged { ref old, .. } if *old == first));
    }
    let (status, _) = get_url(&second, "/again").await.unwrap();
    assert_eq!(status, 200);

    handle.close().await;
    let closed = events.next().await.unwrap();
    assert!(matches!(closed, TunnelEvent::Closed { .. }), "{closed:?}");
}

#[tokio::test]
async fn dropping_the_handle_closes_the_tunnel() {
    let ip = Ipv4Addr::new(127, 0, 0, 7);
    let _server = BoreServer::start(ip, None).await;
    let handle = Tunnel::builder()
        .provider(bore_to(ip))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let url = handle.url();
    let mut watch = handle.watch();
    drop(handle);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(*watch.borrow_and_update(), TunnelEvent::Closed { .. }) {
            if watch.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .unwrap();
    // The bore server notices the control connection is gone and frees the port.
    let freed = support::eventually(Duration::from_secs(3), || {
        std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err()
    })
    .await;
    assert!(freed, "public port still open after drop");
}

#[tokio::test]
async fn an_address_upstream_carries_any_tcp_protocol_through_bore() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ip = Ipv4Addr::new(127, 0, 0, 8);
    let _server = BoreServer::start(ip, None).await;
    // A line echo server: not HTTP at all.
    let echo = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // The probe is answered by the tunnel, so the echo server never sees it.
    let handle = Tunnel::builder()
        .provider(bore_to(ip))
        .start(echo_addr)
        .await
        .unwrap();
    assert!(handle.status().is_up());
    let mut public = tokio::net::TcpStream::connect(handle.url().trim_start_matches("http://"))
        .await
        .unwrap();
    for word in ["ping\n", "\0binary\x01\n", "GET /not-http-either\n"] {
        public.write_all(word.as_bytes()).await.unwrap();
        let mut back = vec![0u8; word.len()];
        tokio::time::timeout(Duration::from_secs(5), public.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, word.as_bytes());
    }
    handle.close().await;
}

/// A public client that sends a request, reads its answer and stays connected holds its bore
/// connection only for the address upstream's idle timeout, even when the local server has no
/// idle timeout of its own (plain `axum::serve`).
#[tokio::test]
async fn a_piped_connection_left_idle_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ip = Ipv4Addr::new(127, 0, 0, 18);
    let _server = BoreServer::start(ip, None).await;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let local = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    // One request on the kept-alive connection, its answer read in full.
    async fn ask(public: &mut tokio::net::TcpStream) {
        public
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"hi") {
            let n = tokio::time::timeout(Duration::from_secs(5), public.read(&mut buf))
                .await
                .expect("answered")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    }

    for (idle, closed) in [(Duration::from_secs(1), true), (Duration::MAX, false)] {
        let handle = Tunnel::builder()
            .provider(bore_to(ip))
            .start(Upstream::address(local).idle_timeout(idle))
            .await
            .unwrap();
        let url = handle.url();
        let mut public = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        // Bytes reset the clock: three requests 700 ms apart on a 1 s timeout are all served.
        ask(&mut public).await;
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            ask(&mut public).await;
        }
        assert_eq!(
            closed_within(&mut public, Duration::from_secs(3)).await,
            closed,
            "idle timeout {idle:?}"
        );
        handle.close().await;
    }
}

#[tokio::test]
async fn without_reconnect_a_dropped_tunnel_stays_down() {
    let ip = Ipv4Addr::new(127, 0, 0, 9);
    let mut server = BoreServer::start(ip, None).await;
    let handle = Tunnel::builder()
        .provider(bore_to(ip))
        .reconnect(false)
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let mut events = handle.events();
    server.kill();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
    let _server = BoreServer::start(ip, None).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), events.next())
            .await
            .is_err(),
        "no event may follow without reconnect"
    );
    assert!(!handle.status().is_up());
    handle.close().await;
    assert!(matches!(
        events.next().await,
        Some(TunnelEvent::Closed { .. })
    ));
}

#[tokio::test]
async fn losing_the_control_connection_lets_requests_in_flight_finish() {
    let ip = Ipv4Addr::new(127, 0, 0, 14);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let started = Arc::clone(&started);
        tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let started = Arc::clone(&started);
            async move {
                if req.uri().path() == "/slow" {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"finished"),
                )))
            }
        })
    };
    let handle = Tunnel::builder()
        .provider(bore_to(ip).control_port(relay_port))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(Upstream::service(slow))
        .await
        .unwrap();
    let url = handle.url();
    let mut events = handle.events();

    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { get_url(&url, "/slow").await }
    });
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the request reached the service");
    cut_control(cut, &mut events).await;

    // The request's own connection to the server was not cut with the control connection.
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "finished"));
    handle.close().await;
}

/// A local line echo server that keeps each connection open until its client closes it.
async fn echo_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let echo = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Writes `line` on `stream` and reads it back within 2 s.
async fn echoes(stream: &mut tokio::net::TcpStream, line: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if stream.write_all(line.as_bytes()).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; line.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == line.as_bytes()
}

/// Whether the peer closes `stream` within `limit` (whatever it sends before).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;

    let mut rest = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// A service whose `/hang` requests never get an answer; `started` is notified for each.
fn hanging_service(
    started: Arc<tokio::sync::Notify>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let started = Arc::clone(&started);
        async move {
            if req.uri().path() == "/hang" {
                started.notify_one();
                std::future::pending::<()>().await;
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )))
        }
    })
}

/// Cuts bore's control connection through the relay, and waits for the tunnel's `Down` event.
async fn cut_control(cut: tokio::sync::oneshot::Sender<()>, events: &mut TunnelEvents) {
    cut.send(()).unwrap();
    let down = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a Down event")
        .unwrap();
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
}

/// Opens a public connection to `url` and sends a `/hang` request on it.
async fn hang_request(url: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;

    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn closing_the_tunnel_ends_piped_connections_that_outlived_the_control_connection() {
    let ip = Ipv4Addr::new(127, 0, 0, 15);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let handle = Tunnel::builder()
        .provider(bore_to(ip).control_port(relay_port))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start(echo_server().await)
        .await
        .unwrap();
    let mut events = handle.events();
    let mut public = tokio::net::TcpStream::connect(handle.url().trim_start_matches("http://"))
        .await
        .unwrap();
    assert!(echoes(&mut public, "before\n").await);

    cut_control(cut, &mut events).await;
    // Losing the control connection does not cut the piped connection...
    assert!(echoes(&mut public, "after the cut\n").await);

    // ...closing the tunnel does, although the client would keep it open.
    handle.close().await;
    assert!(
        closed_within(&mut public, Duration::from_secs(3)).await,
        "a connection piped before the control connection dropped outlived the tunnel"
    );
}

/// `close` returns once the requests still in their handler are gone, those on connections
/// kept from a control connection that was lost included: nothing of the tunnel's runs after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_requests_that_outlived_the_control_connection() {
    /// Notes when the handler holding it is dropped.
    struct Held(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let ip = Ipv4Addr::new(127, 0, 0, 19);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let (started, go, dropped) = (Arc::clone(&started), Arc::clone(&go), Arc::clone(&dropped));
        tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (started, go, dropped) =
                (Arc::clone(&started), Arc::clone(&go), Arc::clone(&dropped));
            async move {
                if req.uri().path() == "/hang" {
                    let _held = Held(dropped);
                    started.notify_one();
                    // Busy on its worker thread as the tunnel closes: its task sees the close
                    // only afterwards.
                    go.notified().await;
                    std::thread::sleep(Duration::from_millis(300));
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            }
        })
    };
    let handle = Tunnel::builder()
        .provider(bore_to(ip).control_port(relay_port))
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .start(Upstream::service(service))
        .await
        .unwrap();
    let mut events = handle.events();
    let _public = hang_request(&handle.url()).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the request reached the service");
    cut_control(cut, &mut events).await;
    go.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.close().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "a request's handler still ran after close returned"
    );
}

#[tokio::test]
async fn dropping_the_handle_ends_requests_that_outlived_the_control_connection() {
    let ip = Ipv4Addr::new(127, 0, 0, 16);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let handle = Tunnel::builder()
        .provider(bore_to(ip).control_port(relay_port))
        // Closed while it waits to re-open.
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .start(Upstream::service(hanging_service(Arc::clone(&started))))
        .await
        .unwrap();
    let mut events = handle.events();
    let mut public = hang_request(&handle.url()).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the request reached the service");

    cut_control(cut, &mut events).await;
    assert!(
        !closed_within(&mut public, Duration::from_millis(300)).await,
        "losing the control connection cut the request in flight"
    );

    drop(handle);
    let closed = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a Closed event")
        .unwrap();
    assert!(matches!(closed, TunnelEvent::Closed { .. }), "{closed:?}");
    assert!(
        closed_within(&mut public, Duration::from_secs(3)).await,
        "a request in flight when the control connection dropped outlived the tunnel"
    );
}

#[tokio::test]
async fn the_server_helper_ends_tunnel_connections_still_open_after_its_drain() {
    // The drain lasts its documented 10 s here: the request never finishes.
    let ip = Ipv4Addr::new(127, 0, 0, 17);
    let _server = BoreServer::start(ip, None).await;
    let (relay_port, cut) = relay_to(ip).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = Server::bind((Ipv4Addr::LOCALHOST, 0).into())
        .await
        .unwrap()
        .tunnel(
            Tunnel::builder()
                .provider(bore_to(ip).control_port(relay_port))
                .reconnect(false),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .spawn(hanging_service(Arc::clone(&started)))
        .await
        .unwrap();
    let mut status = running.tunnel_watch().unwrap();
    let mut public = hang_request(&running.tunnel_url().unwrap()).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the request reached the service");

    cut.send(()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|event| matches!(event, TunnelEvent::Down { .. })),
    )
    .await
    .expect("a Down status")
    .unwrap();

    support::stop_through_the_drain(stop_tx, running).await;
    assert!(
        closed_within(&mut public, Duration::from_secs(3)).await,
        "a tunnel request left after the drain outlived the server"
    );
}

/// A bore server's `Error` message is shown to the operator (in the error and the logs) as
/// text from the network: control characters escaped, so it cannot forge log lines.
#[tokio::test]
async fn a_bore_servers_error_message_cannot_forge_log_lines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let Ok(Ok((mut conn, _))) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
        else {
            return;
        };
        let mut hello = [0u8; 256];
        let _ = conn.read(&mut hello).await;
        let _ = conn
            .write_all(
                b"{\"Error\":\"port taken\\n2026-01-01T00:00:00Z  INFO forged\\u001b[2J\"}\0",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let err = Tunnel::builder()
        .probe(false)
        .provider(Bore::new().server(addr.to_string()))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_err();
    server.abort();
    let text = err.to_string();
    assert!(
        text.contains(r"the bore server refused the tunnel: port taken\n2026-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        !text.contains("\n2026") && !text.contains('\u{1b}'),
        "{text:?}"
    );
}
