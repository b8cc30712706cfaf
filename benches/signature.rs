//! SignatureLayer against a bare HMAC and against the `svix` crate, over the same bytes.
//!
//! - `raw_hmac`: HMAC-SHA256 over the body with a key prepared once, and a tag comparison: the
//!   floor any verifier pays.
//! - `layer`: a complete request through `SignatureLayer::github` (header parsing, body
//!   collection, verification, replay store with a fresh delivery id, body re-injection) to a
//!   ready service.
//! - `layer_without_replay_store`: the same without delivery-id deduplication.
//! - `service_without_layer`: the same request to the same service without the layer.
//! - `svix`: the `svix` crate verifying a Standard Webhooks signature over the same bytes.
//!
//! Run: `cargo bench -p tower-webhook-benches --bench signature -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response};
use http_body_util::Full;
use sha2::Sha256;
use tower::{Layer, Service};
use tower_webhook::signature::SignatureLayer;

const SECRET: &str = "It's a Secret to Everybody";
/// The delivery id of the functions that do not deduplicate.
const FIXED_DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// ASCII JSON-like bytes (svix only accepts UTF-8).
fn body(len: usize) -> Bytes {
    let pattern = br#"{"action":"opened","number":42,"pull_request":{"title":"Fix it"}},"#;
    Bytes::from(
        pattern
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect::<Vec<u8>>(),
    )
}

/// A GitHub delivery of `payload` as GitHub sends it: five headers and the body.
fn github_request(payload: &Bytes, delivery: &str, signature: &str) -> Request<Full<Bytes>> {
    Request::post("/webhooks/github")
        .header("content-type", "application/json")
        .header("content-length", payload.len())
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(Full::new(payload.clone()))
        .unwrap()
}

/// Polls a future that completes without waiting (everything here is ready).
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn bench(c: &mut Criterion) {
    for (name, len) in [
        ("signature_1KiB", 1024),
        ("signature_64KiB", 64 * 1024),
        ("signature_1MiB", 1024 * 1024),
    ] {
        let payload = body(len);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(len as u64));

        let key = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
        let mut mac = key.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        group.bench_function("raw_hmac", |b| {
            b.iter(|| {
                let mut mac = key.clone();
                mac.update(black_box(&payload));
                mac.verify_slice(black_box(&tag)).unwrap();
            })
        });

        let signature = format!("sha256={}", hex::encode(tag));
        let layer = SignatureLayer::github(SECRET).unwrap();
        let mut svc = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(req.into_body()))
        }));
        let mut delivery = 0u64;
        group.bench_function("layer", |b| {
            b.iter_batched(
                || {
                    delivery += 1;
                    let id = format!("72d3162e-cc78-11e3-81ab-{delivery:012x}");
                    github_request(&payload, &id, &signature)
                },
                |req| {
                    let res = run_ready(svc.call(req)).unwrap();
                    assert_eq!(res.status(), 200);
                    res
                },
                BatchSize::NumIterations(16),
            )
        });

        // The same request without the in-memory replay store, to show what deduplication costs.
        let layer = SignatureLayer::github(SECRET)
            .unwrap()
            .without_replay_store();
        let mut svc = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(req.into_body()))
        }));
        group.bench_function("layer_without_replay_store", |b| {
            b.iter_batched(
                || github_request(&payload, FIXED_DELIVERY, &signature),
                |req| run_ready(svc.call(req)).unwrap(),
                BatchSize::NumIterations(16),
            )
        });

        // The request alone to the same service, without the layer: the fixed cost of a request
        // (building excluded, teardown included) that `layer` pays on top of the HMAC.
        let mut plain = tower::service_fn(|req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(req.into_body()))
        });
        group.bench_function("service_without_layer", |b| {
            b.iter_batched(
                || github_request(&payload, FIXED_DELIVERY, &signature),
                |req| run_ready(plain.call(req)).unwrap(),
                BatchSize::NumIterations(16),
            )
        });

        let wh = svix::webhooks::Webhook::new(SVIX_SECRET).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let sig = wh
            .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", now, &payload)
            .unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "webhook-id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
        );
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", sig.parse().unwrap());
        group.bench_function("svix", |b| {
            b.iter(|| wh.verify(black_box(&payload), black_box(&headers)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
