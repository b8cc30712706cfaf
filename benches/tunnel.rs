//! Tunnel benches on loopback, against a real bore server (bore-cli's, in-process):
//!
//! - `bore_requests`: requests per second through the tunnel for our bore client serving a tower
//!   service directly, our bore client forwarding to a local port, and the reference client
//!   (`bore local`, bore-cli's `client::Client`) forwarding to the same local port. The local
//!   service is the same in all three. The three run interleaved (see `bore_requests`).
//! - `start_to_url`: time from `start` to a verified URL (bore and localtunnel), against the
//!   reference client's time to a remote port (no verification).
//!
//! Run: `cargo bench -p tower-webhook-benches --bench tunnel -- --warm-up-time 1 --measurement-time 3`.
#![allow(missing_docs, unreachable_pub)]

#[path = "../tests/common/logs.rs"]
#[allow(dead_code)]
mod logs;
#[path = "../tests/common/ports.rs"]
#[allow(dead_code)]
mod ports;
#[path = "../tests/tunnel/support.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{BoreServer, LtServer, hello_service, serve_locally};
use tokio::net::TcpStream;
use tower_webhook::tunnel::{Bore, LocalTunnel, Tunnel, TunnelBuilder, TunnelHandle, Upstream};

const BORE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
const CONNECTIONS: usize = 8;
const REQUESTS_PER_CONNECTION: usize = 25;
const FRESH_PER_TASK: usize = 5;

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// `CONNECTIONS` concurrent keep-alive connections, `per_connection` requests each.
async fn load(addr: SocketAddr, per_connection: usize) {
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for _ in 0..per_connection {
                let req = Request::get("/webhook")
                    .header("host", "bench")
                    .body(Empty::new())
                    .unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// One fresh connection per request (`CONNECTIONS` at a time), as many webhook senders do.
async fn load_fresh(addr: SocketAddr, per_task: usize) {
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let (status, _) = support::get(addr, "bench", "/webhook").await.unwrap();
                assert_eq!(status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Fixture {
    _server: BoreServer,
    ours_service: TunnelHandle,
    ours_address: TunnelHandle,
    reference_port: u16,
}

async fn fixture() -> Fixture {
    let server = BoreServer::start(BORE_IP, None).await;
    let service = hello_service(Arc::new(AtomicUsize::new(0)));
    let local = serve_locally(service.clone()).await;
    let bore = || Bore::new().server(BORE_IP.to_string());
    let ours_service = Tunnel::builder()
        .provider(bore())
        .start(Upstream::service(service))
        .await
        .unwrap();
    let ours_address = Tunnel::builder()
        .provider(bore())
        .start(local)
        .await
        .unwrap();
    let reference =
        bore_cli::client::Client::new("127.0.0.1", local.port(), &BORE_IP.to_string(), 0, None)
            .await
            .unwrap();
    let reference_port = reference.remote_port();
    tokio::spawn(reference.listen());
    Fixture {
        _server: server,
        ours_service,
        ours_address,
        reference_port,
    }
}

/// One bench function per target; every iteration runs all targets in turn, in a rotating order
/// so no target always follows the same one, and each function keeps its own target's time.
fn rotating_group<F, Fut>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    elements: u64,
    targets: &[(&str, u16)],
    addrs: &[SocketAddr],
    run: F,
) where
    F: Fn(SocketAddr) -> Fut + Copy,
    Fut: std::future::Future<Output = ()>,
{
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(elements));
    for (me, (name, _)) in targets.iter().enumerate() {
        group.bench_function(*name, |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut mine = Duration::ZERO;
                for round in 0..iters as usize {
                    for step in 0..addrs.len() {
                        let which = (round + step) % addrs.len();
                        let started = Instant::now();
                        run(addrs[which]).await;
                        if which == me {
                            mine += started.elapsed();
                        }
                    }
                }
                mine
            });
        });
    }
    group.finish();
}

fn bore_requests(c: &mut Criterion) {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let targets = [
        ("bore_cli_reference", fx.reference_port),
        ("ours_address", port_of(&fx.ours_address.url())),
        ("ours_service", port_of(&fx.ours_service.url())),
    ];

    // The machine is shared, so load drifts: every iteration runs all three targets in turn (in a
    // rotating order) and each bench function keeps the time of its own target only, so all
    // three see the same load.
    let addrs: Vec<SocketAddr> = targets
        .iter()
        .map(|(_, port)| SocketAddr::from((BORE_IP, *port)))
        .collect();

    rotating_group(
        c,
        &rt,
        "bore_requests_keepalive",
        (CONNECTIONS * REQUESTS_PER_CONNECTION) as u64,
        &targets,
        &addrs,
        |addr| load(addr, REQUESTS_PER_CONNECTION),
    );
    rotating_group(
        c,
        &rt,
        "bore_requests_fresh_connection",
        (CONNECTIONS * FRESH_PER_TASK) as u64,
        &targets,
        &addrs,
        |addr| load_fresh(addr, FRESH_PER_TASK),
    );
    rt.block_on(async move {
        fx.ours_service.close().await;
        fx.ours_address.close().await;
    });
}

/// Time from `start` to a URL, summed over `iters` tunnels built by `builder` (closing excluded).
async fn time_starts(
    iters: u64,
    local: SocketAddr,
    builder: impl Fn() -> TunnelBuilder,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let started = Instant::now();
        let handle = builder().start(local).await.unwrap();
        total += started.elapsed();
        handle.close().await;
    }
    total
}

fn start_to_url(c: &mut Criterion) {
    let rt = runtime();
    let (server, lt, local) = rt.block_on(async {
        let server = BoreServer::start(Ipv4Addr::new(127, 0, 0, 51), None).await;
        let lt = LtServer::start().await;
        let local = serve_locally(hello_service(Arc::new(AtomicUsize::new(0)))).await;
        (server, lt, local)
    });
    let mut group = c.benchmark_group("start_to_url");
    group.sample_size(20);
    let bore = || Bore::new().server("127.0.0.51");
    group.bench_function("ours_bore_verified", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| time_starts(iters, local, || Tunnel::builder().provider(bore())));
    });
    group.bench_function("ours_bore_unverified", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            time_starts(iters, local, || {
                Tunnel::builder().provider(bore()).probe(false)
            })
        });
    });
    group.bench_function("bore_cli_reference_unverified", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let client =
                    bore_cli::client::Client::new("127.0.0.1", local.port(), "127.0.0.51", 0, None)
                        .await
                        .unwrap();
                total += started.elapsed();
                drop(client);
            }
            total
        });
    });
    let lt_server = format!("http://{}", lt.addr);
    group.bench_function("ours_localtunnel_verified", |b| {
        let lt_server = lt_server.clone();
        b.to_async(&rt).iter_custom(move |iters| {
            let lt_server = lt_server.clone();
            time_starts(iters, local, move || {
                Tunnel::builder().provider(
                    LocalTunnel::new()
                        .server(lt_server.clone())
                        .subdomain("bench-start")
                        .unwrap(),
                )
            })
        });
    });
    group.finish();
    drop((server, lt));
}

criterion_group!(benches, bore_requests, start_to_url);
criterion_main!(benches);
