//! Circuit breaker overhead around a ready service, against failsafe and tower-resilience,
//! measured in the same run; and a keyed breaker's calls when its map of keys is full.
//!
//! `cargo bench -p tower-webhook-benches --bench circuit_breaker -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use tower::{BoxError, Service, ServiceExt};
use tower_layer::Layer;
use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Outcome};

type Fut = std::future::Ready<Result<u64, BoxError>>;

fn ready_service() -> tower::util::ServiceFn<fn(u64) -> Fut> {
    fn answer(x: u64) -> Fut {
        std::future::ready(Ok(x))
    }
    tower::service_fn(answer as fn(u64) -> Fut)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// One way of making a call, cloned into each thread.
trait Caller: Clone + Send + 'static {
    fn run(&mut self, iters: u64) -> impl std::future::Future<Output = ()>;
}

#[repr(align(128))]
struct Padded<T>([u8; 0], T);

#[derive(Clone)]
struct Svc<S>(S);

impl<S> Caller for Svc<S>
where
    S: Service<u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    async fn run(&mut self, iters: u64) {
        for i in 0..iters {
            let out = self.0.ready().await.unwrap().call(black_box(i)).await;
            black_box(out.is_ok());
        }
    }
}

#[derive(Clone)]
struct Failsafe<S> {
    inner: S,
    breaker: failsafe::StateMachine<
        failsafe::failure_policy::OrElse<
            failsafe::failure_policy::SuccessRateOverTimeWindow<failsafe::backoff::EqualJittered>,
            failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::EqualJittered>,
        >,
        (),
    >,
}

impl<S> Caller for Failsafe<S>
where
    S: Service<u64, Error = BoxError> + Clone + Send + 'static,
{
    async fn run(&mut self, iters: u64) {
        for i in 0..iters {
            let inner = self.inner.ready().await.unwrap();
            let out = self.breaker.call(inner.call(black_box(i))).await;
            black_box(out.is_ok());
        }
    }
}

/// Runs `iters` calls and returns how long they took.
type Timed = Box<dyn FnMut(u64) -> Duration + Send>;
/// Makes a fresh [`Timed`] (with its own runtime) around a clone of the same breaker.
type MakeTimed = Box<dyn Fn() -> Timed + Sync>;

fn callers() -> Vec<(&'static str, MakeTimed)> {
    fn timed<C: Caller>(caller: C) -> Timed {
        let rt = runtime();
        // Each thread's service on its own cache lines, as it would be in its own task: two
        // small boxes side by side would otherwise share a line and measure false sharing.
        let mut caller = Box::new(Padded([], caller));
        Box::new(move |iters| {
            rt.block_on(async {
                let start = Instant::now();
                caller.1.run(iters).await;
                start.elapsed()
            })
        })
    }
    let ours = CircuitBreakerLayer::new(CircuitBreakerConfig::default())
        .unwrap()
        .with_classifier(|result: &Result<u64, BoxError>| {
            if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        });
    let failsafe = failsafe::Config::new().build();
    let resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap();
    vec![
        ("bare", Box::new(|| timed(Svc(ready_service())))),
        (
            "layer",
            Box::new(move || timed(Svc(ours.layer(ready_service())))),
        ),
        (
            "failsafe",
            Box::new(move || {
                timed(Failsafe {
                    inner: ready_service(),
                    breaker: failsafe.clone(),
                })
            }),
        ),
        (
            "tower_resilience",
            Box::new(move || timed(Svc(resilience.layer(ready_service())))),
        ),
    ]
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_breaker_closed");
    group.throughput(Throughput::Elements(1));
    for (name, make) in callers() {
        let mut run = make();
        group.bench_function(name, |b| b.iter_custom(&mut run));
    }
    group.finish();
}

/// The same breaker (or service) shared by 2 threads, each on its own current-thread runtime
/// with its own clone; reported as calls per second of both threads together.
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_breaker_contended");
    group.throughput(Throughput::Elements(2));
    for (name, make) in callers() {
        let mut runs = [make(), make()];
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                std::thread::scope(|scope| {
                    let handles: Vec<_> = runs
                        .iter_mut()
                        .map(|run| {
                            let barrier = barrier.clone();
                            scope.spawn(move || {
                                barrier.wait();
                                run(iters)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap_or_default()
                })
            })
        });
    }
    group.finish();
}

/// A keyed breaker whose map is full (10,000 keys) of breakers that each count a failure, so
/// that none is forgotten before the others: a call with a key it has (`known_key`), and one
/// with a new key (`new_key`), which looks for the breaker to forget among them all and
/// replaces it with its own, failing too, so that the map stays as it was. No rule opens them
/// (the one they have is a slow-call rule no call meets): the millions of failures `known_key`
/// counts would open every breaker, and `new_key` would then find none to forget and measure
/// the way to the overflow breaker instead.
fn keyed_full(c: &mut Criterion) {
    use tower_webhook::circuit_breaker::KeyedCircuitBreakerLayer;
    const KEYS: u64 = 10_000;
    let mut group = c.benchmark_group("circuit_breaker_keyed_full");
    group.throughput(Throughput::Elements(1));
    let rt = runtime();
    // The one rule a breaker needs is one no call here meets: an hour-long call.
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(0)
        .without_failure_rate()
        .slow_call_rate_threshold(100.0, std::time::Duration::from_secs(3600));
    let layer = KeyedCircuitBreakerLayer::new(config, KEYS as usize, |key: &u64| *key)
        .unwrap()
        .with_classifier(|r: &Result<u64, BoxError>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        });
    let failing =
        tower::service_fn(|_: u64| std::future::ready(Err::<u64, BoxError>("down".into())));
    let mut svc = layer.layer(failing);
    rt.block_on(async {
        for key in 0..KEYS {
            let _ = svc.ready().await.unwrap().call(key).await;
        }
    });
    group.bench_function("known_key", |b| {
        let mut key = 0;
        b.iter(|| {
            key = (key + 1) % KEYS;
            rt.block_on(async { black_box(svc.ready().await.unwrap().call(key).await.is_err()) })
        })
    });
    let mut next = KEYS;
    group.bench_function("new_key", |b| {
        b.iter(|| {
            next += 1;
            rt.block_on(async { black_box(svc.ready().await.unwrap().call(next).await.is_err()) })
        })
    });
    group.finish();
}

criterion_group!(benches, closed, contended, keyed_full);
criterion_main!(benches);
