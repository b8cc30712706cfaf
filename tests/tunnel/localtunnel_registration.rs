//! The tunnel bootstrapper, on loopback against the test peers of `tunnel/support.rs` (a
//! localtunnel server that speaks the real protocol, bore-cli's server): localtunnel registrations
//! (the subdomain a re-opened tunnel asks for, a registration URL that is no URL, a slow
//! registration, fewer connections than advertised, requests the tunnel refuses), a provider that
//! panics while re-opening, and the status a listener of the events reads.

use crate::lt_fake;
use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lt_fake::{Pool, fake_server};
use support::{LtServer, get, get_url, hello_service};
use tower_webhook::tunnel::{LocalTunnel, Tunnel, TunnelEvent, Upstream};

/// The next event of `events` within `limit`.
async fn next_event(
    events: &mut tower_webhook::tunnel::TunnelEvents,
    limit: Duration,
) -> TunnelEvent {
    tokio::time::timeout(limit, events.next())
        .await
        .expect("no tunnel event in time")
        .expect("the tunnel closed")
}

/// Two tunnels share one `LocalTunnel` (clones share its memory of ended names). The first is
/// lost on the server and is being re-opened when the second is closed: the first asks for its
/// own subdomain again, not for the one the second just left, so its URL stays the same and
/// keeps reaching its own service. (The same holds when a server restart ends both at once: each
/// gets its own name back, instead of the two swapping URLs and services.)
#[tokio::test]
async fn a_re_opened_localtunnel_asks_for_its_own_subdomain_not_the_last_ended_one() {
    let server = LtServer::start().await;
    let lt = LocalTunnel::new()
        .server(format!("http://{}", server.addr))
        .max_connections(1);
    let calls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let first = Tunnel::builder()
        .provider(lt.clone())
        // The first re-open waits 1 to 2 s: the second is closed well before.
        .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(2))
        .start(Upstream::service(hello_service(Arc::clone(&calls[0]))))
        .await
        .unwrap();
    let second = Tunnel::builder()
        .provider(lt.clone())
        .start(Upstream::service(hello_service(Arc::clone(&calls[1]))))
        .await
        .unwrap();
    let first_url = first.url();
    assert_ne!(first_url, second.url());
    let mut events = first.events();

    // Another registration of the first tunnel's name takes it over on this server, which
    // closes the first tunnel's port and connections: its session is lost.
    let id = first_url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let (status, _) = get(server.addr, "localhost", &format!("/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let down = next_event(&mut events, Duration::from_secs(10)).await;
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");

    // While the first waits to re-open, the second is closed: its name is free now.
    second.close().await;

    let reopened = next_event(&mut events, Duration::from_secs(10)).await;
    assert_eq!(
        reopened,
        TunnelEvent::Up {
            provider: "localtunnel".into(),
            url: first_url.clone(),
            verified: true,
        },
        "the re-opened tunnel did not get its own subdomain back"
    );
    let before = calls[0].load(Ordering::SeqCst);
    let (status, body) = get_url(&first_url, "/after").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls[0].load(Ordering::SeqCst), before + 1);
    first.close().await;
}

/// The public URL a localtunnel server answers is text from the network too: one that is no
/// http(s) URL (here with a new line, a carriage return and an escape sequence that would forge
/// log lines) fails the attempt with the URL shown escaped, instead of becoming the tunnel's URL
/// (and the text of its events and logs), or the raw text of the probe's error.
#[tokio::test]
async fn a_registration_url_that_is_no_url_fails_the_attempt_and_is_shown_escaped() {
    let url = "http://abcd.localhost\n2026-01-01T00:00:00Z  INFO tunnel: forged\r\u{1b}[2J";
    let (addr, server) = fake_server(
        |_, pool_port| serde_json::json!({ "id": "abcd", "port": pool_port, "max_conn_count": 1, "url": url }),
        Duration::ZERO,
        Pool::KeepAll,
    )
    .await;
    for probe in [false, true] {
        let started = Tunnel::builder()
            .probe(probe)
            .provider(
                LocalTunnel::new()
                    .server(format!("http://{addr}"))
                    .startup_timeout(Duration::from_secs(3)),
            )
            .start(Upstream::address(([127, 0, 0, 1], 9).into()))
            .await;
        let err = match started {
            Ok(handle) => {
                let url = handle.url();
                handle.close().await;
                panic!("probe {probe}: the tunnel opened with the URL {url:?}");
            }
            Err(err) => err.to_string(),
        };
        assert!(
            err.contains(r"abcd.localhost\n2026-01-01"),
            "probe {probe}: {err:?}"
        );
        assert!(
            !err.contains("\n2026") && !err.contains('\r') && !err.contains('\u{1b}'),
            "probe {probe}: {err:?}"
        );
    }
    server.abort();
}

/// A localtunnel server that takes longer than 3 s to answer the registration (the public server
/// under load) is waited for within the provider's startup timeout, which is the documented
/// limit, instead of being cut off after a fixed 3 s whatever that timeout is.
#[tokio::test]
async fn a_slow_localtunnel_registration_is_waited_for_within_the_startup_timeout() {
    let (addr, server) = fake_server(
        |api_port, pool_port| {
            serde_json::json!({
                "id": "slowpoke",
                "port": pool_port,
                "max_conn_count": 1,
                "url": format!("http://slowpoke.localhost:{api_port}"),
            })
        },
        Duration::from_millis(3_500),
        Pool::KeepAll,
    )
    .await;
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            LocalTunnel::new()
                .server(format!("http://{addr}"))
                .subdomain("slowpoke")
                .unwrap()
                .startup_timeout(Duration::from_secs(10)),
        )
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        handle.url(),
        format!("http://slowpoke.localhost:{}", addr.port())
    );
    handle.close().await;
    server.abort();
}

/// A localtunnel server that advertises more pooled connections than it accepts (it closes the
/// ones past its real limit at once) keeps the tunnel: the pool holds the connections it
/// accepts, instead of the whole session being taken for lost and re-opened over and over.
#[tokio::test]
async fn a_server_accepting_fewer_connections_than_it_advertises_keeps_the_tunnel() {
    let (addr, server) = fake_server(
        |api_port, pool_port| {
            serde_json::json!({
                "id": "stingy",
                "port": pool_port,
                "max_conn_count": 3,
                "url": format!("http://stingy.localhost:{api_port}"),
            })
        },
        Duration::ZERO,
        Pool::KeepFirst,
    )
    .await;
    let handle = Tunnel::builder()
        .probe(false)
        .provider(
            LocalTunnel::new()
                .server(format!("http://{addr}"))
                .subdomain("stingy")
                .unwrap(),
        )
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut events = handle.events();
    // The refused connections are retried about ten times, 100 ms apart, before the pool gives
    // them up: well within this wait.
    let event = tokio::time::timeout(Duration::from_secs(3), events.next()).await;
    assert!(event.is_err(), "the tunnel did not stay up: {event:?}");
    assert!(handle.status().is_up(), "{:?}", handle.status());
    handle.close().await;
    server.abort();
}

/// Public requests the tunnel's HTTP server refuses without calling the service (over 100
/// headers: 431; a path that is not UTF-8 would be 400), then closes the pooled connection
/// they came on, quickly. Those connections were used, not refused by the server: a public
/// client sending such requests over and over must not make the pool give its slots up, and
/// the tunnel go down as if the server kept closing new connections.
#[tokio::test]
async fn requests_the_tunnel_refuses_do_not_take_its_pool_down() {
    static ANSWERS: lt_fake::Answers = lt_fake::Answers(std::sync::Mutex::new(Vec::new()));
    const COUNT: usize = 40;
    let mut request = String::from("GET /hook HTTP/1.1\r\nhost: busy.localhost\r\n");
    for i in 0..101 {
        request.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let (addr, server) = fake_server(
        |api_port, pool_port| {
            serde_json::json!({
                "id": "busy",
                "port": pool_port,
                "max_conn_count": 2,
                "url": format!("http://busy.localhost:{api_port}"),
            })
        },
        Duration::ZERO,
        Pool::Forward {
            request: request.leak(),
            count: COUNT,
            answers: &ANSWERS,
        },
    )
    .await;
    let handle = Tunnel::builder()
        .probe(false)
        .provider(LocalTunnel::new().server(format!("http://{addr}")))
        .start(Upstream::address(([127, 0, 0, 1], 9).into()))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut events = handle.events();
    // Ten quick closes in a row per slot made each give up, in about a second.
    let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(event.is_err(), "the tunnel did not stay up: {event:?}");
    assert!(handle.status().is_up(), "{:?}", handle.status());
    handle.close().await;
    server.abort();
    let answers = ANSWERS.0.lock().unwrap().clone();
    assert_eq!(answers.len(), COUNT, "{answers:?}");
    assert!(answers.iter().all(|a| a == "HTTP/1.1 431"), "{answers:?}");
}

/// A provider for these tests: loopback tunnels, each on a new port, lost once `lose` is
/// notified. A `panicky` one is a provider with a bug: its second open panics, and only its
/// first tunnel can be lost.
#[derive(Debug)]
struct Loopback {
    opens: AtomicUsize,
    lose: Arc<tokio::sync::Notify>,
    panicky: bool,
}

impl tower_webhook::tunnel::Provider for Loopback {
    fn name(&self) -> &str {
        if self.panicky { "panicky" } else { "fragile" }
    }

    fn open(
        &self,
        upstream: Upstream,
    ) -> tower_webhook::tunnel::BoxFuture<
        '_,
        Result<tower_webhook::tunnel::Session, tower_webhook::BoxError>,
    > {
        let open = self.opens.fetch_add(1, Ordering::SeqCst);
        let lose = Arc::clone(&self.lose);
        let panicky = self.panicky;
        Box::pin(async move {
            if panicky && open == 1 {
                panic!("a bug in the provider");
            }
            loopback_session(upstream, (!panicky || open == 0).then_some(lose)).await
        })
    }
}

/// A loopback tunnel serving `upstream` on a new port, lost once `lose` (if any) is notified.
async fn loopback_session(
    upstream: Upstream,
    lose: Option<Arc<tokio::sync::Notify>>,
) -> Result<tower_webhook::tunnel::Session, tower_webhook::BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok(tower_webhook::tunnel::Session::spawn(
        url,
        move |mut stop| async move {
            let lost = async {
                match &lose {
                    Some(lose) => lose.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.stopped() => Ok(()),
                () = lost => Err("lost".into()),
                () = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let upstream = upstream.clone();
                        tokio::spawn(async move { upstream.serve_connection(tcp).await });
                    }
                } => Ok(()),
            }
        },
    ))
}

/// A provider that panics while the tunnel is being re-opened fails that attempt, as an error
/// would: the supervisor retries and the tunnel comes back, instead of the supervisor dying with
/// the tunnel left `Down` for good and its events never ending.
#[tokio::test]
async fn a_provider_that_panics_while_re_opening_fails_that_attempt_only() {
    let lose = Arc::new(tokio::sync::Notify::new());
    let handle = Tunnel::builder()
        .provider(Loopback {
            opens: AtomicUsize::new(0),
            lose: Arc::clone(&lose),
            panicky: true,
        })
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let mut events = handle.events();
    lose.notify_one();
    let down = next_event(&mut events, Duration::from_secs(5)).await;
    assert!(matches!(down, TunnelEvent::Down { .. }), "{down:?}");
    let back = next_event(&mut events, Duration::from_secs(5)).await;
    assert!(back.is_up(), "{back:?}");
    let (status, body) = get_url(&handle.url(), "/back").await.unwrap();
    assert_eq!(status, 200, "{body}");
    handle.close().await;
}

/// `status()` and `url()` are the latest event by the time a listener receives it, on a
/// runtime whose threads run the listener and the supervisor at once: a listener that
/// registers the webhook again with `handle.url()` on `UrlChanged` gets the new URL. The event
/// used to be sent before the status was updated, so such a listener could read the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_the_event_a_listener_just_received() {
    let lose = Arc::new(tokio::sync::Notify::new());
    let handle = Tunnel::builder()
        .probe(false)
        .provider(Loopback {
            opens: AtomicUsize::new(0),
            lose: Arc::clone(&lose),
            panicky: false,
        })
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(100))
        .start(Upstream::service(hello_service(Arc::new(
            AtomicUsize::new(0),
        ))))
        .await
        .unwrap();
    let mut events = handle.events();
    for round in 0..30 {
        lose.notify_one();
        let down = next_event(&mut events, Duration::from_secs(5)).await;
        assert!(
            matches!(down, TunnelEvent::Down { .. }),
            "{round}: {down:?}"
        );
        // Read at once, as a listener does: the status may already be the next event, never
        // one before this.
        let status = handle.status();
        assert!(
            status == down || matches!(status, TunnelEvent::UrlChanged { .. }),
            "{round}: received {down:?}, status {status:?}"
        );
        let changed = next_event(&mut events, Duration::from_secs(5)).await;
        let url = handle.url();
        assert!(
            matches!(&changed, TunnelEvent::UrlChanged { new, .. } if *new == url),
            "{round}: received {changed:?}, url {url}"
        );
    }
    handle.close().await;
}
