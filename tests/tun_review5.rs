//! Fifth review of the tunnel bootstrapper, on loopback: bore's timeouts follow the startup
//! timeout, its connection cap holds across re-opened sessions, and the localtunnel client
//! opens its pooled connections only to the server it registered with. bore's real server has a
//! fixed control port, so each test running it has its own loopback address (127.0.5.x).

#[path = "tunnel/support.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::{BoreServer, black_hole, get, hello_service};
use tokio::net::{TcpListener, TcpStream};
use tower_webhook::tunnel::{Bore, Tunnel, TunnelError, Upstream};

fn service() -> Upstream {
    Upstream::service(hello_service(Arc::new(AtomicUsize::new(0))))
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
