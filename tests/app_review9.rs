//! The pr_agent_server example, ninth review: a provider API whose connection never opens, and a
//! port already in use.

// The example includes its shared `common/shutdown.rs`.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "common/pr_agent.rs"]
#[allow(dead_code)]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A listener on 127.0.0.1 that never accepts, its queue full: the kernel drops the next
/// connection's SYN, so that connection never opens, as with an API host that drops packets
/// (down, or behind a firewall). Keep the listener and the connections held while in use.
async fn unopened_address() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(conn) => held.push(conn.unwrap()),
            Err(_) => return (addr, listener, held),
        }
    }
    panic!("the listener's queue never filled");
}

/// A provider API whose connection never opened ran into the whole request's 30 s deadline,
/// an error that cannot tell a request never sent from one the provider may have acted on: the
/// comment was given up as "may have been posted", and never tried again, though nothing had
/// been sent. The client now gives up opening the connection first, a connect error, so the
/// comment is tried again later (as with a refused connection).
#[tokio::test]
async fn a_comment_whose_connection_never_opens_counts_as_not_sent() {
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
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let settings =
        harness::lookup(&[("GITHUB_WEBHOOK_SECRET", "s3cret"), ("PORT", &port)]).unwrap();
    let app = app::build(&settings).unwrap();
    let err = app::start(&settings, app, None, std::future::pending())
        .await
        .err()
        .expect("the port is taken")
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("PORT"), "{err}");
}
