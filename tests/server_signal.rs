//! `tunnel::Server` stops gracefully on `SIGTERM`, as container runtimes and service managers
//! send it. Its own test binary: the signal goes to the whole process.
#![cfg(all(unix, feature = "tunnel"))]

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_webhook::tunnel::Server;

/// A request that takes a while: the drain lets it finish after the signal.
async fn slow(_req: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Response::new(String::from("finished")))
}

#[tokio::test]
async fn sigterm_drains_open_requests_then_stops() {
    let running = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .spawn(tower::service_fn(slow))
        .await
        .unwrap();
    let addr = running.local_addr();

    let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // The request is in the service (it sleeps 300 ms) when the signal comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", std::process::id())])
        .status()
        .unwrap();
    assert!(kill.success());

    // The server stops (well within its 10 s drain), and the open request got its answer.
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("the server stops on SIGTERM");
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");
    // No new connection is served.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
