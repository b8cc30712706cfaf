//! The examples, fifteenth review: the pr_agent_server example's own comments coming back from
//! Bitbucket Data Center and Azure DevOps, Azure DevOps replies answered in their thread, and a
//! second stop signal during the drain of the open connections.

// The examples each include their shared `common/shutdown.rs`.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "common/pr_agent.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use harness::hmac_hex;

/// Set in the child process of [`a_second_stop_signal_ends_the_wait_for_open_connections`].
const SECOND_SIGNAL_CHILD: &str = "PR_AGENT_SERVER_SECOND_SIGNAL_CHILD";

/// A second Ctrl-C or `SIGTERM` was documented to cut the shutdown short, "even one sent while
/// the open requests are still answered", but the server waited for its open connections (up to
/// the server's 10 s drain) before it looked at the second signal at all. It stops waiting for
/// them at once now, says so, and still counts the comments left.
///
/// The test runs itself again as a child process, which runs the server as `main` does, keeps
/// a delivery's body half sent, and sends the child two `SIGTERM`s.
#[cfg(unix)]
#[test]
fn a_second_stop_signal_ends_the_wait_for_open_connections() {
    use std::io::{BufRead, Read, Write};
    const NAME: &str = "a_second_stop_signal_ends_the_wait_for_open_connections";
    if std::env::var_os(SECOND_SIGNAL_CHILD).is_some() {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        let left = app::run_to_exit(async {
            let settings = app::Settings::from_env().unwrap();
            let app = app::build(&settings).unwrap();
            let state = app.state.clone();
            let signals = app::StopSignals::listen().unwrap();
            let running = app::start(&settings, app, None, signals.nth(1))
                .await
                .unwrap();
            println!("listening on {}", running.local_addr());
            app::finish(running, &state, settings.shutdown_grace, &signals).await
        })
        .unwrap();
        eprintln!("comments left: {left}");
        return;
    }

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(SECOND_SIGNAL_CHILD, "1")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("GITHUB_WEBHOOK_SECRET", "s3cret")
        // A body that sends nothing is answered 408 after half of it: not within the test.
        .env("REQUEST_TIMEOUT_SECS", "600")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let mut errors = String::new();
    // Reads the child's stderr until a line contains `needle`, at most 30 s.
    let wait_for = |needle: &str, errors: &mut String| -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    errors.push_str(&line);
                    errors.push('\n');
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    };
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
        // After the test harness's "test ... " on the same line.
        if let Some((_, addr)) = line.trim().split_once("listening on ") {
            break addr.to_owned();
        }
    };

    // A delivery whose body is half sent: its request stays open. `100 Continue` says that the
    // server is reading the body, so that the request is under way when the signal comes.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    write!(
        conn,
        "POST /api/v1/github_webhooks HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-github-event: ping\r\nx-github-delivery: 5e000000-0000-4000-8000-000000000001\r\n\
         x-hub-signature-256: sha256={}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        hmac_hex("s3cret", body),
        body.len()
    )
    .unwrap();
    let mut continued = [0; 25];
    conn.read_exact(&mut continued).unwrap();
    assert!(
        continued.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&continued)
    );
    conn.write_all(&body[..10]).unwrap();

    let term = || {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    term();
    assert!(
        wait_for("draining open connections", &mut errors),
        "the drain did not start: {errors}"
    );
    term();
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(conn);
    reader.join().unwrap();
    errors.extend(lines.try_iter().map(|line| line + "\n"));
    let status = status.unwrap_or_else(|| panic!("the child never exited: {errors}"));
    assert!(status.success(), "{status}: {errors}");
    assert!(
        errors.contains("second stop signal: not waiting for the open connections"),
        "the second signal did not end the wait: {errors}"
    );
    // The open request was not waited for until the drain's end.
    assert!(
        !errors.contains("connections still open after"),
        "the open connection was waited for: {errors}"
    );
    assert!(errors.contains("comments left: 0"), "{errors}");
}
