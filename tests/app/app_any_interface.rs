//! The pr_agent_server example bound to every interface (`HOST=0.0.0.0`, or `::`): what it
//! prints is a URL a client on this machine can send to, not `http://0.0.0.0:PORT`.

use crate::app;
use crate::harness;

use std::net::SocketAddr;

/// The pieces of a printed `curl -i -X POST URL -H 'Name: value'... --data 'BODY'` command.
struct Curl {
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn parse_curl(line: &str) -> Curl {
    let rest = line.trim().strip_prefix("curl -i -X POST ").unwrap();
    let (url, mut rest) = rest.split_once(' ').unwrap();
    let mut headers = Vec::new();
    while let Some(after) = rest.strip_prefix("-H '") {
        let (header, after) = after.split_once("' ").unwrap();
        let (name, value) = header.split_once(": ").unwrap();
        headers.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
    let body = rest
        .strip_prefix("--data '")
        .and_then(|body| body.strip_suffix('\''))
        .unwrap();
    Curl {
        url: url.to_owned(),
        headers,
        body: body.to_owned(),
    }
}

/// Starts the server in development mode on `host`, port 0; returns what it prints and where
/// it listens. The server stops when the returned sender is dropped.
async fn start_on(host: &str) -> (String, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let settings = harness::lookup(&[("HOST", host), ("PORT", "0")]).unwrap();
    let app = app::build(&settings).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = app::start(&settings, app, None, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let addr = running.local_addr();
    tokio::spawn(running.wait());
    let mut out = Vec::new();
    app::announce(&mut out, &settings, &app::local_url(addr), None).unwrap();
    (String::from_utf8(out).unwrap(), addr, stop)
}

/// The commands printed for `HOST=0.0.0.0` sent to `http://0.0.0.0:PORT`, which Linux happens to
/// route to this machine but other systems refuse; they name 127.0.0.1 now, and the first line
/// says the server listens on every interface. The signed delivery the text prints is taken at
/// the URL it names.
#[tokio::test]
async fn the_printed_commands_name_a_loopback_address_for_host_0_0_0_0() {
    let (text, addr, _stop) = start_on("0.0.0.0").await;
    assert!(addr.ip().is_unspecified(), "{addr}");
    let here = format!("http://127.0.0.1:{}", addr.port());
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!("pr_agent_server listening on every interface (HOST=0.0.0.0), here at {here}")
    );
    assert!(!text.contains("0.0.0.0:"), "{text}");
    assert!(
        text.contains(&format!("  POST {here}/api/v1/github_webhooks")),
        "{text}"
    );

    let mut lines = text.lines();
    lines
        .find(|line| line.contains("expect 202 Accepted"))
        .unwrap();
    let curl = parse_curl(lines.next().unwrap());
    assert!(curl.url.starts_with(&here), "{}", curl.url);
    let mut req = crate::client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&curl.url)
        .body(curl.body);
    for (name, value) in &curl.headers {
        req = req.header(name, value);
    }
    assert_eq!(
        req.send().await.unwrap().status(),
        http::StatusCode::ACCEPTED
    );
}

/// A server bound to `::` is reached at `[::1]` (when this machine has IPv6).
#[tokio::test]
async fn the_printed_commands_name_a_loopback_address_for_host_ipv6_any() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let (text, addr, _stop) = start_on("::").await;
    let here = format!("http://[::1]:{}", addr.port());
    assert!(
        text.starts_with(&format!(
            "pr_agent_server listening on every interface (HOST=::), here at {here}\n"
        )),
        "{text}"
    );
    assert!(!text.contains("[::]:"), "{text}");
}

/// A server bound to one address prints that address, as before.
#[tokio::test]
async fn a_server_bound_to_loopback_prints_its_address() {
    let (text, addr, _stop) = start_on("127.0.0.1").await;
    assert!(
        text.starts_with(&format!("pr_agent_server listening on http://{addr}\n")),
        "{text}"
    );
}
