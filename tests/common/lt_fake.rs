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
    /// On each of the first `count` ones, a request (as a public client sent it) is written,
    /// and the answer's status counted in `answers` once the client closes; later ones are
    /// kept.
    Forward {
        request: &'static str,
        count: usize,
        answers: &'static Answers,
    },
}

/// The statuses the tunnel's client answered [`Pool::Forward`]'s requests with.
#[allow(dead_code)] // not every test file uses each
pub(crate) struct Answers(pub(crate) std::sync::Mutex<Vec<String>>);

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
        let mut forwarded = 0;
        loop {
            tokio::select! {
                Ok((mut conn, _)) = pooled.accept() => match pool {
                    Pool::Forward { request, count, answers } if forwarded < count => {
                        forwarded += 1;
                        tokio::spawn(async move {
                            let _ = conn.write_all(request.as_bytes()).await;
                            let mut answer = Vec::new();
                            let read = conn.read_to_end(&mut answer);
                            let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
                            let head = String::from_utf8_lossy(&answer);
                            let status = head.get(..12).unwrap_or(&head).to_owned();
                            answers.0.lock().unwrap().push(status);
                        });
                    }
                    Pool::KeepFirst if !held.is_empty() => {}
                    _ => held.push(conn),
                },
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
