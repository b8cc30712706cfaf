//! The breaker against a simple reference model (proptest), and its atomic core under
//! concurrency (a stress test with invariants).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tower::{BoxError, Service, ServiceExt};
use tower_layer::Layer;
use tower_webhook::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
    CircuitState, OpenDuration, Outcome, SlidingWindow,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ok,
    Fail,
    Neutral,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Call(Kind),
    Advance(u64),
    Transition(CircuitState),
    Reset,
}

const STATES: [CircuitState; 6] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::Disabled,
    CircuitState::ForcedOpen,
    CircuitState::MetricsOnly,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![Just(Kind::Ok), Just(Kind::Fail), Just(Kind::Neutral)].prop_map(Op::Call),
        2 => (0u64..3_000).prop_map(Op::Advance),
        1 => (0usize..6).prop_map(|i| Op::Transition(STATES[i])),
        1 => Just(Op::Reset),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Params {
    window: usize,
    min_calls: usize,
    rate: f64,
    consecutive: u32,
    probes: u32,
    initial_ms: u64,
    cap_ms: u64,
}

fn params() -> impl Strategy<Value = Params> {
    (
        1usize..8,
        1usize..10,
        1u32..=100,
        0u32..5,
        1u32..4,
        100u64..2_000,
        1u64..4,
    )
        .prop_map(
            |(window, min_calls, rate, consecutive, probes, initial_ms, cap_factor)| Params {
                window,
                min_calls,
                rate: f64::from(rate),
                consecutive,
                probes,
                initial_ms,
                cap_ms: initial_ms * cap_factor,
            },
        )
}

/// The reference: a plain sequential state machine.
struct Model {
    p: Params,
    now: u64,
    state: CircuitState,
    window: VecDeque<bool>,
    consecutive: u32,
    open_until: u64,
    attempts: u32,
    probes_ok: u32,
    probes_failed: u32,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Admitted,
    Rejected(CircuitState, Option<Duration>),
}

impl Model {
    fn new(p: Params) -> Self {
        Self {
            p,
            now: 0,
            state: CircuitState::Closed,
            window: VecDeque::new(),
            consecutive: 0,
            open_until: 0,
            attempts: 0,
            probes_ok: 0,
            probes_failed: 0,
        }
    }

    fn open_ms(&mut self, automatic: bool) -> u64 {
        let attempt = self.attempts + 1;
        if automatic {
            self.attempts = attempt;
        }
        let ms = self
            .p
            .initial_ms
            .saturating_mul(1u64 << (attempt - 1).min(20));
        ms.min(self.p.cap_ms)
    }

    fn enter(&mut self, to: CircuitState, automatic: bool) {
        if to == CircuitState::Open {
            self.open_until = self.now + self.open_ms(automatic);
        }
        if to == CircuitState::Closed {
            self.attempts = 0;
        }
        self.state = to;
        self.window.clear();
        self.consecutive = 0;
        self.probes_ok = 0;
        self.probes_failed = 0;
    }

    fn tick(&mut self) {
        if self.state == CircuitState::Open && self.now >= self.open_until {
            self.enter(CircuitState::HalfOpen, false);
        }
    }

    fn call(&mut self, kind: Kind) -> Answer {
        self.tick();
        match self.state {
            CircuitState::Disabled => Answer::Admitted,
            CircuitState::ForcedOpen => Answer::Rejected(CircuitState::ForcedOpen, None),
            CircuitState::Open => Answer::Rejected(
                CircuitState::Open,
                Some(Duration::from_millis(self.open_until - self.now)),
            ),
            CircuitState::HalfOpen => {
                match kind {
                    Kind::Neutral => {}
                    Kind::Ok => self.probes_ok += 1,
                    Kind::Fail => self.probes_failed += 1,
                }
                let done = self.probes_ok + self.probes_failed;
                if done >= self.p.probes {
                    let rate = f64::from(self.probes_failed) * 100.0 / f64::from(done);
                    if rate >= self.p.rate {
                        self.enter(CircuitState::Open, true);
                    } else {
                        self.enter(CircuitState::Closed, true);
                    }
                }
                Answer::Admitted
            }
            CircuitState::Closed | CircuitState::MetricsOnly => {
                if kind == Kind::Neutral {
                    return Answer::Admitted;
                }
                let failed = kind == Kind::Fail;
                if self.window.len() == self.p.window {
                    self.window.pop_front();
                }
                self.window.push_back(failed);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let calls = self.window.len();
                let failures = self.window.iter().filter(|f| **f).count();
                let trips = (self.p.consecutive > 0 && self.consecutive >= self.p.consecutive)
                    || (calls >= self.p.min_calls.min(self.p.window)
                        && failures as f64 * 100.0 / calls as f64 >= self.p.rate);
                if trips && self.state == CircuitState::Closed {
                    self.enter(CircuitState::Open, true);
                }
                Answer::Admitted
            }
        }
    }

    fn transition(&mut self, to: CircuitState) -> bool {
        if !self.state.can_transition_to(to) {
            return false;
        }
        self.enter(to, false);
        true
    }

    /// (state, buffered, failed, consecutive) as the snapshot shows them.
    fn observe(&mut self) -> (CircuitState, u32, u32, u32) {
        self.tick();
        match self.state {
            CircuitState::HalfOpen => (
                self.state,
                self.probes_ok + self.probes_failed,
                self.probes_failed,
                0,
            ),
            CircuitState::Disabled | CircuitState::ForcedOpen | CircuitState::Open => {
                (self.state, 0, 0, 0)
            }
            _ => (
                self.state,
                self.window.len() as u32,
                self.window.iter().filter(|f| **f).count() as u32,
                self.consecutive,
            ),
        }
    }
}

#[derive(Clone)]
struct Echo;

impl Service<Kind> for Echo {
    type Response = Kind;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Kind, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, kind: Kind) -> Self::Future {
        std::future::ready(match kind {
            Kind::Fail => Err("fail".into()),
            other => Ok(other),
        })
    }
}

type Classifier = fn(&Result<Kind, BoxError>) -> Outcome;

fn classify(result: &Result<Kind, BoxError>) -> Outcome {
    match result {
        Ok(Kind::Neutral) => Outcome::Neutral,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

fn build(p: Params) -> (CircuitBreaker<Echo, Classifier>, CircuitBreakerHandle) {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(p.window as u32))
        .minimum_calls(p.min_calls as u32)
        .failure_rate_threshold(p.rate)
        .consecutive_failures(p.consecutive)
        .half_open_probes(p.probes)
        .open_duration(OpenDuration::Backoff {
            initial: Duration::from_millis(p.initial_ms),
            multiplier: 2.0,
            max: Duration::from_millis(p.cap_ms),
            jitter: 0.0,
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    (
        layer.with_classifier(classify as Classifier).layer(Echo),
        handle,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(p in params(), ops in proptest::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut svc, handle) = build(p);
            let mut model = Model::new(p);
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Op::Call(kind) => {
                        let expected = model.call(kind);
                        let result = svc.ready().await.unwrap().call(kind).await;
                        let actual = match result {
                            Ok(_) => Answer::Admitted,
                            Err(err) => match err.downcast_ref::<CircuitOpen>() {
                                Some(open) => Answer::Rejected(open.state(), open.retry_after()),
                                None => Answer::Admitted,
                            },
                        };
                        prop_assert_eq!(actual, expected, "op {} {:?}", i, op);
                    }
                    Op::Advance(ms) => {
                        model.now += ms;
                        tokio::time::advance(Duration::from_millis(ms)).await;
                    }
                    Op::Transition(to) => {
                        model.tick();
                        handle.state();
                        let allowed = model.transition(to);
                        prop_assert_eq!(handle.transition_to(to).is_ok(), allowed, "op {} {:?}", i, op);
                    }
                    Op::Reset => {
                        model.tick();
                        handle.state();
                        model.enter(CircuitState::Closed, false);
                        handle.reset();
                    }
                }
                let (state, buffered, failed, consecutive) = model.observe();
                let s = handle.snapshot();
                prop_assert_eq!(
                    (s.state, s.buffered_calls, s.failed_calls, s.consecutive_failures),
                    (state, buffered, failed, consecutive),
                    "after op {} {:?}", i, op
                );
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------- concurrency

/// Fails after holding the call for a moment; counts concurrent calls.
#[derive(Clone)]
struct Probe {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<bool> for Probe {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, neutral: bool) -> Self::Future {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(300)).await;
            drop(guard);
            if neutral { Ok(()) } else { Err("down".into()) }
        })
    }
}

/// Leaves the upstream when the call completes or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Threads hammer a breaker whose probes always fail (some are dropped, some neutral): at no
/// moment may more than `probes` calls be inside the upstream, and permits must never leak
/// (half-open periods keep coming).
#[test]
fn half_open_never_admits_more_than_n_under_contention() {
    const PROBES: u32 = 3;
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(PROBES)
        .open_duration(OpenDuration::Fixed(Duration::from_millis(2)));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let probe = Probe {
        in_flight: Arc::new(AtomicUsize::new(0)),
        max_in_flight: Arc::new(AtomicUsize::new(0)),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let classify = |r: &Result<(), BoxError>| {
        if r.is_ok() {
            Outcome::Neutral
        } else {
            Outcome::Failure
        }
    };
    let svc = layer.with_classifier(classify).layer(probe.clone());
    handle.transition_to_open().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let svc = svc.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let mut svc = svc.clone();
                        let fut = svc.ready().await.unwrap().call(i.is_multiple_of(7));
                        if (i + t).is_multiple_of(5) {
                            // Dropped before completion: the permit must come back.
                            let _ = tokio::time::timeout(Duration::from_micros(50), fut).await;
                        } else {
                            let _ = fut.await;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
        })
        .collect();
    // At least 400 ms of contention, and (on a loaded machine, where the threads get little of
    // it) on until enough probes went through; leaked permits stop them for good.
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    while probe.calls.load(Ordering::SeqCst) < 10 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let max = probe.max_in_flight.load(Ordering::SeqCst);
    let calls = probe.calls.load(Ordering::SeqCst);
    assert!(
        max <= PROBES as usize,
        "{max} calls were in the upstream at once"
    );
    assert!(
        calls >= 10,
        "only {calls} probes went through: permits leaked?"
    );
    assert!(handle.snapshot().not_permitted_calls > 0);
}

/// Outcomes recorded from many threads keep the window's counts exact: once the threads are
/// done, N failures then N successes must read exactly (N, N) then (N, 0).
#[test]
fn window_counts_stay_exact_under_contention() {
    const N: u32 = 64;
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(N))
        .minimum_calls(1);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    handle.transition_to_metrics_only().unwrap();
    let svc = layer.with_classifier(classify as Classifier).layer(Echo);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let mut svc = svc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..50_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let kind = match x % 3 {
                            0 => Kind::Ok,
                            1 => Kind::Fail,
                            _ => Kind::Neutral,
                        };
                        let _ = svc.ready().await.unwrap().call(kind).await;
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = handle.snapshot();
    assert_eq!(s.buffered_calls, N);
    assert!(s.failed_calls <= N);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut svc = svc;
    rt.block_on(async {
        for _ in 0..N {
            let _ = svc.ready().await.unwrap().call(Kind::Fail).await;
        }
        let s = handle.snapshot();
        assert_eq!((s.buffered_calls, s.failed_calls), (N, N));
        for _ in 0..N {
            svc.ready().await.unwrap().call(Kind::Ok).await.unwrap();
        }
        let s = handle.snapshot();
        assert_eq!((s.buffered_calls, s.failed_calls), (N, 0));
    });
    assert_eq!(handle.state(), CircuitState::MetricsOnly);
}
