//! A real `redis-server` on 127.0.0.1, started for a test and killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process on 127.0.0.1, killed on drop.
pub(crate) struct Redis {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Arguments beyond the defaults, given again on `restart`.
    extra: Vec<String>,
}

#[allow(dead_code)] // not every test file uses each
impl Redis {
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server for good (until `restart`).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server on the same port, with the same arguments.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let extra = std::mem::take(&mut self.extra);
        let back = spawn(self.port, extra)
            .await
            .expect("redis-server restarts");
        *self = back;
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Redis {
    /// Whether `key` is gone from the server within `within`, asked every 10 ms.
    pub(crate) async fn gone_within(&self, key: &str, within: std::time::Duration) -> bool {
        let client = redis::Client::open(self.url().as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let until = tokio::time::Instant::now() + within;
        loop {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !exists {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        self.kill();
    }
}

/// `None` (the test skips) without `redis-server`, unless `TOWER_WEBHOOK_REQUIRE_INTEROP=1`.
pub(crate) async fn start() -> Option<Redis> {
    start_with(&[]).await
}

/// [`start`] with `extra` arguments for `redis-server` (e.g. `--requirepass`), kept on restart.
pub(crate) async fn start_with(extra: &[&str]) -> Option<Redis> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let msg = "redis-server not found on PATH (run .ci/signature.sh to install it)";
        assert!(
            !std::env::var("TOWER_WEBHOOK_REQUIRE_INTEROP").is_ok_and(|v| v == "1"),
            "TOWER_WEBHOOK_REQUIRE_INTEROP=1: {msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    for _attempt in 0..5 {
        let port = crate::ports::server_port();
        let extra = extra.iter().map(|arg| arg.to_string()).collect();
        if let Some(redis) = spawn(port, extra).await {
            return Some(redis);
        }
    }
    panic!("redis-server did not start");
}

async fn spawn(port: u16, extra: Vec<String>) -> Option<Redis> {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .args(&extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let redis = Redis { child, port, extra };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(redis);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
