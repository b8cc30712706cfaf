//! `tunnel::Server` stops gracefully on `SIGTERM`, as container runtimes and service managers
//! send it. Its own test binary: the signal goes to the whole process.
#![cfg(all(unix, feature = "tunnel"))]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tower_webhook::tunnel::Server;

#[tokio::test]
async fn sigterm_drains_open_requests_then_stops() {
    // A request that answers only when told to: it is provably open across the signal.
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let slow = tower::service_fn({
        let (entered, release) = (entered.clone(), release.clone());
        move |_req: Request<hyper::body::Incoming>| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(Response::new(String::from("finished")))
            }
        }
    });
    let running = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
        .spawn(slow)
        .await
        .unwrap();
    let addr = running.local_addr();

    let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the request reaches the service");
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", std::process::id())])
        .status()
        .unwrap();
    assert!(kill.success());

    // The signal stops the listener (no new connection is served) while the request is open.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server stops listening on SIGTERM");

    // The open request is let finish: it gets its answer, and the server then stops (well
    // within its 10 s drain).
    release.notify_one();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), open.read_to_string(&mut answer))
        .await
        .expect("the open request is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server stops on SIGTERM");
}
