//! A fake localtunnel server on loopback for tests: registrations answered as the test says,
//! pooled connections kept as it says.

use std::time::Duration;

/// Which pooled connections [`fake_server`] keeps.
#[derive(Clone, Copy)]
#[allow(dead_code)] // not every test file uses each
pub(crate) enum Pool {
    /// Every one.
    KeepAll,
    /// The first one; every later one is closed at once.
    KeepFirst,
}

/// A localtunnel server on loopback that answers every registration, after `delay`, with
/// `registration(api_port, pool_port)`, and takes the pooled connections as `pool` says.
pub(crate) async fn fake_server(
    registration: impl FnOnce(u16, u16) -> serde_json::Value,
    delay: Duration,
    pool: Pool,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = api.local_addr().unwrap();
    let pooled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let body = registration(addr.port(), pooled.local_addr().unwrap().port()).to_string();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((conn, _)) = pooled.accept() => {
                    if matches!(pool, Pool::KeepAll) || held.is_empty() {
                        held.push(conn);
                    }
                }
                Ok((mut conn, _)) = api.accept() => {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut head = [0u8; 4096];
                        let _ = conn.read(&mut head).await;
                        tokio::time::sleep(delay).await;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            }
        }
    });
    (addr, server)
}
