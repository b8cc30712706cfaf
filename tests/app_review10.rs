//! The examples, tenth review: the tonic_server example's connections that never send a
//! preface.

// The examples each include their shared `common/shutdown.rs`.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "common/pr_agent.rs"]
#[allow(dead_code)]
mod harness;
#[path = "common/logs.rs"]
mod logs;
#[path = "../examples/tonic_server.rs"]
#[allow(dead_code)]
mod tonic_server;

use std::time::Duration;

use logs::Logs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
/// server stops; calls are answered as before.
#[tokio::test]
async fn a_grpc_connection_that_sends_no_preface_is_closed_and_does_not_hold_up_shutdown() {
    let (_logs, _guard) = Logs::capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic_server::serve(
        listener,
        async {
            let _ = stopped.await;
        },
        Duration::from_millis(500),
    ));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let reply = echo::say(
        addr,
        tonic::Request::new(echo::Echo {
            message: "hello".into(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.into_inner().message, "hello");
    assert!(closed_within(&mut silent, Duration::from_secs(30)).await);
    assert!(closed_within(&mut partial, Duration::from_secs(30)).await);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();

    // A connection that sends nothing, open when the server is told to stop, long before its
    // preface deadline: the server stops all the same.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic_server::serve(
        listener,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(3600),
    ));
    let mut held = TcpStream::connect(addr).await.unwrap();
    let reply = echo::say(
        addr,
        tonic::Request::new(echo::Echo {
            message: "accepted".into(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.into_inner().message, "accepted");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(closed_within(&mut held, Duration::from_secs(30)).await);
}
