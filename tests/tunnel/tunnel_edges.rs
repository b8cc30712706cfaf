//! Edge cases of tunnel connections: how a piped connection ends when one side is gone or when
//! nobody speaks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_webhook::tunnel::Upstream;

/// A local server that accepts one connection and closes it at once, as a server does with a
/// client that sent nothing within its own idle timeout. Returns its address.
async fn closing_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        drop(stream);
    });
    addr
}

/// Reads a request's head (up to its blank line) from `stream`.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    head
}

/// A public client that connects and never sends a byte must not hold the tunnel connection (one
/// of bore's `BORE_MAX_CONNECTIONS` slots) forever once the local server has closed its side.
#[tokio::test(start_paused = true)]
async fn a_piped_connection_ends_after_the_local_server_closed_it() {
    let addr = closing_server().await;
    let upstream = Upstream::address(addr);
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });

    // The local server's close reaches the public side (no timer involved).
    let mut rest = Vec::new();
    public.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // The public client stays connected and silent: the tunnel connection still ends.
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the tunnel connection stayed open after the local server closed it")
        .unwrap();
    drop(public);
}

/// A request is forwarded and answered; a public client that keeps its end open after the local
/// server closed (`connection: close`) does not keep the tunnel connection.
#[tokio::test(start_paused = true)]
async fn a_piped_connection_still_forwards_a_request_and_its_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await
            .unwrap();
    });
    let upstream = Upstream::address(addr);
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public
        .write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    public.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the tunnel connection stayed open after the answer")
        .unwrap();
}

/// A public client that opens like a round-trip probe (`GET /.well-known/...`) and then stops
/// sending is not read from for ever: the tunnel sees the local server close, as for any other
/// connection, and ends the connection.
#[tokio::test]
async fn a_stalled_probe_look_alike_ends_when_the_local_server_closes() {
    let addr = closing_server().await;
    let upstream = Upstream::address(addr);
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public
        .write_all(
            format!(
                "GET {} HTTP/1.1\r\nhost: x\r\n",
                tower_webhook::tunnel::PROBE_PATH
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Bounds a failure only: with the fix the close arrives as soon as the local server's does.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), public.read_to_end(&mut rest))
        .await
        .expect("the local server's close never reached the public side")
        .unwrap();
    tokio::time::pause();
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the tunnel connection stayed open after the local server closed it")
        .unwrap();
}

/// The same while the local server cannot be reached at all: a connection that can only be a
/// probe is given the header read timeout to send its head, not for ever.
#[tokio::test(start_paused = true)]
async fn a_stalled_probe_look_alike_ends_when_the_local_server_is_down() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_secs(2));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public
        .write_all(format!("GET {} HTTP/1.1\r\n", tower_webhook::tunnel::PROBE_PATH).as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the tunnel connection stayed open with no local server")
        .unwrap();
}

/// A local server that accepts one connection and never sends a byte, with no idle timeout of
/// its own (as plain `axum::serve`). Returns its address, and a receiver that fires once the
/// tunnel has closed the connection (the server reads end of file).
async fn silent_server() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        let _ = closed_tx.send(received);
    });
    (addr, closed_rx)
}

/// A public client that connects and never sends a byte, to a local server that never sends one
/// either and has no idle timeout, does not hold the tunnel connection (one of bore's
/// `BORE_MAX_CONNECTIONS` slots) for ever: it is closed after the header read timeout, on both
/// sides.
#[tokio::test]
async fn a_piped_connection_where_nobody_speaks_ends_after_the_header_read_timeout() {
    let (addr, local_closed) = silent_server().await;
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_millis(200));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });

    // Bounds a failure only: with the timeout, everything ends about 200 ms in.
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("an idle piped connection stayed open past the header read timeout")
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), public.read_to_end(&mut rest))
        .await
        .expect("the public side was not closed")
        .unwrap();
    assert!(rest.is_empty());
    let received = tokio::time::timeout(Duration::from_secs(10), local_closed)
        .await
        .expect("the connection to the local server was not closed")
        .unwrap();
    assert!(received.is_empty());
}

/// The same when the public client closes its sending side without a byte (a half-close the
/// local server may not act on): nobody spoke, so the connection ends after the timeout.
#[tokio::test]
async fn a_piped_connection_half_closed_without_a_byte_ends_after_the_header_read_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Keeps its side open and silent, whatever it reads, until the test is over.
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        let _ = done_rx.await;
        drop(stream);
    });
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_millis(200));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public.shutdown().await.unwrap();

    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("a half-closed idle piped connection stayed open past the header read timeout")
        .unwrap();
    let mut rest = Vec::new();
    public.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(done_tx);
}

/// Once a side has sent a byte, the header read timeout no longer applies: a public client that
/// sent its request gets an answer the local server takes longer than the timeout to give.
#[tokio::test]
async fn a_piped_connection_that_spoke_outlives_the_header_read_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut ping = [0u8; 5];
        stream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping\n");
        // Slower than the header read timeout.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(b"pong\n").await.unwrap();
    });
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_millis(100));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public.write_all(b"ping\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), public.read_to_string(&mut answer))
        .await
        .expect("the answer never came")
        .unwrap();
    assert_eq!(answer, "pong\n");
}

/// The same when the local server speaks first (SMTP, SSH): its greeting counts, and a public
/// client that answers it later than the header read timeout is still connected.
#[tokio::test]
async fn a_piped_connection_where_the_local_server_spoke_outlives_the_header_read_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 ready\r\n").await.unwrap();
        let mut line = [0u8; 8];
        stream.read_exact(&mut line).await.unwrap();
        stream.write_all(&line).await.unwrap();
    });
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_millis(100));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), public.read_exact(&mut greeting))
        .await
        .expect("no greeting")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    // Slower than the header read timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    public.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), public.read_exact(&mut echo))
        .await
        .expect("the connection was cut after the greeting")
        .unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

/// A provider whose tunnel never opens (within its long startup timeout).
#[derive(Debug)]
struct NeverOpens;

impl tower_webhook::tunnel::Provider for NeverOpens {
    fn name(&self) -> &str {
        "never"
    }

    fn startup_timeout(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn open(
        &self,
        _upstream: Upstream,
    ) -> tower_webhook::tunnel::BoxFuture<
        '_,
        Result<tower_webhook::tunnel::Session, tower_webhook::BoxError>,
    > {
        Box::pin(std::future::pending())
    }
}

/// Asserts that the server at `addr` answers a request (waiting up to 10 s for its port to
/// open and its answer).
async fn assert_served(addr: std::net::SocketAddr) {
    let served = async {
        let mut stream = loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                break stream;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap_or_else(|_| panic!("{addr} did not answer within 10 s"));
    assert!(answer.ends_with("ok"), "{answer}");
}

/// Whether connections to `addr` are refused, waited for within a bound that only a failure
/// reaches.
async fn refused(addr: std::net::SocketAddr) -> bool {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// `Server::spawn` given up before it returned (its caller's own timeout, say) leaves no server
/// behind: the caller has no `Running` to stop it with, so the port would stay served until the
/// process gets a shutdown signal.
#[tokio::test]
async fn a_server_whose_spawn_is_dropped_stops_serving() {
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    });
    let server = tower_webhook::tunnel::Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .tunnel(tower_webhook::tunnel::Tunnel::builder().provider(NeverOpens))
        .with_graceful_shutdown(std::future::pending());
    let addr = server.local_addr().unwrap();
    let spawning = tokio::spawn(server.spawn(app));
    // The port serves while the tunnel starts.
    assert_served(addr).await;

    spawning.abort();
    let _ = spawning.await;
    assert!(
        refused(addr).await,
        "the port is still served after the spawn was dropped"
    );
}

/// The same for `Server::serve` (and `tunnel::start`), whose future is the server: dropped (a
/// `select!` that took another branch, say), it stops serving.
#[tokio::test]
async fn a_server_whose_serve_is_dropped_stops_serving() {
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    });
    let server = tower_webhook::tunnel::Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .with_graceful_shutdown(std::future::pending());
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(app));
    assert_served(addr).await;

    serving.abort();
    let _ = serving.await;
    assert!(
        refused(addr).await,
        "the port is still served after serve was dropped"
    );
}

/// A public client whose first bytes could begin a probe request (`G`) and that then stalls is
/// not held back from the local server for ever: after the header read timeout the tunnel stops
/// looking for a probe and hands what it read to the local server, whose own limits (a header
/// read timeout, an idle timeout) then apply as to any connection.
#[tokio::test]
async fn the_first_bytes_of_a_stalled_probe_look_alike_reach_the_local_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        let _ = got_tx.send(first);
        // Silent, and still open: as a server waiting for the rest of a request.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let upstream = Upstream::address(addr).header_read_timeout(Duration::from_millis(200));
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
    public.write_all(b"G").await.unwrap();
    // Bounds a failure only: the byte arrives about 200 ms in.
    let first = tokio::time::timeout(Duration::from_secs(10), got_rx)
        .await
        .expect("the first byte was held back from the local server")
        .unwrap();
    assert_eq!(&first, b"G");
}

/// localtunnel has no use for user info in its server URL: a password put there must not
/// show in the provider's `Debug`, its hint, the chain's error, nor the configuration's `Debug`.
#[tokio::test]
async fn a_password_in_a_localtunnel_server_url_is_never_shown() {
    use tower_webhook::tunnel::{LocalTunnel, Provider, Tunnel, TunnelConfig, TunnelError};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://bot:hunter2-secret@127.0.0.1:{port}/");
    let lt = LocalTunnel::new().server(url.as_str());
    assert!(!format!("{lt:?}").contains("hunter2"), "{lt:?}");
    let hint = lt.hint().unwrap();
    assert!(!hint.contains("hunter2"), "{hint}");
    assert!(hint.contains(&format!("http://127.0.0.1:{port}")), "{hint}");
    let err = Tunnel::builder()
        .provider(lt)
        .start(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
        .await
        .unwrap_err();
    let TunnelError::AllFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts.len(), 1);
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let config = TunnelConfig::from_lookup(|name| match name {
        "TUNNEL_SERVICE" => Some("localtunnel".to_owned()),
        "TUNNEL_SERVER" => Some(url.clone()),
        _ => None,
    })
    .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
}

/// A local server whose address drops connection attempts (a host that is down, a firewall)
/// is given up after `LOCAL_CONNECT_TIMEOUT` (10 s), not after the kernel's own limit (two
/// minutes on Linux): a forwarded request gets its 502 then, and a piped connection is closed.
#[tokio::test]
async fn a_local_server_that_drops_connection_attempts_is_given_up_after_10_s() {
    let (addr, _listener, _held) = crate::unopened::unopened_address().await;
    let upstream = Upstream::address(addr);

    let forwarded = {
        let upstream = upstream.clone();
        async move {
            let (mut public, tunnel_side) = tokio::io::duplex(4096);
            tokio::spawn(async move { upstream.serve_connection(tunnel_side).await });
            public
                .write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            public.read_exact(&mut head).await.unwrap();
            head
        }
    };
    let piped = async move {
        let (mut public, tunnel_side) = tokio::io::duplex(4096);
        tokio::spawn(async move { upstream.serve_tcp_connection(tunnel_side).await });
        public.write_all(b"EHLO client\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = public.read_to_end(&mut rest).await;
        rest
    };
    let started = std::time::Instant::now();
    let (head, rest) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(forwarded, piped)
    })
    .await
    .expect("both ended within 20 s");
    let elapsed = started.elapsed();
    assert_eq!(&head, b"HTTP/1.1 502");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(elapsed >= Duration::from_secs(9), "{elapsed:?}");
}

/// `OPTIONS *` and `CONNECT host:port` (scanners send them) name no path to forward: answered
/// 400 by the tunnel, and the connection goes on serving. So is a `CONNECT` with a path, which
/// went on as a `CONNECT` to the local server's own address.
#[tokio::test]
async fn an_asterisk_target_is_answered_400_and_not_forwarded() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with(b"GET /after "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    });
    let upstream = Upstream::address(addr);
    let (mut public, tunnel_side) = tokio::io::duplex(4096);
    tokio::spawn(async move { upstream.serve_connection(tunnel_side).await });

    public
        .write_all(b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\nCONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\nCONNECT /x HTTP/1.1\r\nhost: x\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answers = String::new();
    tokio::time::timeout(Duration::from_secs(10), public.read_to_string(&mut answers))
        .await
        .unwrap()
        .unwrap();
    assert!(answers.starts_with("HTTP/1.1 400 "), "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 400 ").count(), 3, "{answers}");
    assert!(answers.contains("HTTP/1.1 200 OK"), "{answers}");
    assert!(answers.ends_with("ok"), "{answers}");
}
