//! Generations that wrap: windows, the half-open word and the run of consecutive failures
//! keep only the low bits of the generation they were written in, so a value left untouched
//! through exactly 2^16 (or 2^21) transitions must not pass for a current one. Manual
//! transitions make such a long outage quick to replay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::{BoxError, Service, ServiceExt};
use tower_layer::Layer;
use tower_webhook::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
    OpenDuration, Outcome, SlidingWindow,
};

/// The number of generations a 16-bit tag tells apart.
const TAG_PERIOD: u32 = 1 << 16;

/// Answers at once: `true` succeeds, `false` fails.
#[derive(Clone, Copy, Debug)]
struct Upstream;

impl Service<bool> for Upstream {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ok: bool) -> Self::Future {
        Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
    }
}

type Classifier = fn(&Result<(), BoxError>) -> Outcome;

fn classify(result: &Result<(), BoxError>) -> Outcome {
    if result.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

type Svc = CircuitBreaker<Upstream, Classifier>;

fn breaker(config: CircuitBreakerConfig) -> (Svc, CircuitBreakerHandle) {
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    (
        layer
            .with_classifier(classify as Classifier)
            .layer(Upstream),
        handle,
    )
}

/// Only the failure-rate rule of a count window of `n` can open the breaker.
fn rate_config(n: u32, rate: f64, min: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(n))
        .failure_rate_threshold(rate)
        .minimum_calls(min)
        .consecutive_failures(0)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
}

async fn call(svc: &mut Svc, ok: bool) {
    let _ = svc.ready().await.unwrap().call(ok).await;
}

/// `n` manual transitions that each start a fresh CLOSED period.
fn resets(handle: &CircuitBreakerHandle, n: u32) {
    for _ in 0..n {
        handle.reset();
    }
}

/// Counts of the window: (buffered, failed, successful).
fn counts(handle: &CircuitBreakerHandle) -> (u32, u32, u32) {
    let s = handle.snapshot();
    (s.buffered_calls, s.failed_calls, s.successful_calls)
}

/// Failures recorded 2^16 resets ago are not in the fresh window, and do not add up with the
/// new period's outcomes to open the breaker.
#[tokio::test(start_paused = true)]
async fn a_count_window_untouched_for_a_tag_period_reads_empty() {
    let (mut svc, handle) = breaker(rate_config(10, 50.0, 10));
    for _ in 0..3 {
        call(&mut svc, false).await;
    }
    assert_eq!(counts(&handle), (3, 3, 0));
    resets(&handle, TAG_PERIOD);
    assert_eq!(counts(&handle), (0, 0, 0), "a reset window");

    // Seven calls, three of them failures: fewer than `minimum_calls`, nothing to decide.
    for ok in [false, true, false, true, false, true, true] {
        call(&mut svc, ok).await;
    }
    assert_eq!(counts(&handle), (7, 3, 4));
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// Slots of the ring written 2^16 generations ago and not since are empty to the current
/// generation: their outcomes are never taken out of a total they were never added to.
#[tokio::test(start_paused = true)]
async fn stale_ring_slots_are_not_subtracted_from_a_fresh_window() {
    let (mut svc, handle) = breaker(rate_config(4, 50.0, 4));
    // Slots 0 and 1 hold failures of generation 0.
    call(&mut svc, false).await;
    call(&mut svc, false).await;
    resets(&handle, TAG_PERIOD - 1);
    // Slots 2 and 3 hold successes of the generation just before a tag period ends.
    call(&mut svc, true).await;
    call(&mut svc, true).await;
    assert_eq!(counts(&handle), (2, 0, 2));
    resets(&handle, 1);
    assert_eq!(counts(&handle), (0, 0, 0));

    for expected in 1..=4 {
        call(&mut svc, true).await;
        assert_eq!(counts(&handle), (expected, 0, expected));
    }
    // Two failures among the last four calls: 50 %, the breaker opens.
    call(&mut svc, false).await;
    assert_eq!(counts(&handle), (4, 1, 3));
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&mut svc, false).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

/// The same for a time window: buckets of the current span written 2^16 generations ago are
/// not the new generation's.
#[tokio::test(start_paused = true)]
async fn a_time_window_untouched_for_a_tag_period_reads_empty() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            span: Duration::from_secs(60),
            buckets: 6,
        })
        .failure_rate_threshold(50.0)
        .minimum_calls(4)
        .consecutive_failures(0);
    let (mut svc, handle) = breaker(config);
    for _ in 0..3 {
        call(&mut svc, false).await;
    }
    assert_eq!(counts(&handle), (3, 3, 0));
    resets(&handle, TAG_PERIOD);
    assert_eq!(counts(&handle), (0, 0, 0), "a reset window");
    // One failure and two successes: under `minimum_calls`, and 33 %.
    for ok in [false, true, true] {
        call(&mut svc, ok).await;
    }
    assert_eq!(counts(&handle), (3, 1, 2));
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A half-open period 2^16 generations after another one starts with all its permits free
/// and no probe counted: one successful probe of two leaves it HALF_OPEN.
#[tokio::test(start_paused = true)]
async fn a_half_open_period_a_tag_period_later_starts_afresh() {
    let config = CircuitBreakerConfig::default()
        .half_open_probes(2)
        .consecutive_failures(0);
    let (mut svc, handle) = breaker(config);
    handle.transition_to_open().unwrap();
    handle.transition_to_half_open().unwrap();
    call(&mut svc, false).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (1, 1));
    assert_eq!(s.half_open_permits_taken, 1);
    // OPEN and HALF_OPEN again, a tag period later.
    for _ in 0..TAG_PERIOD / 2 {
        handle.transition_to_open().unwrap();
        handle.transition_to_half_open().unwrap();
    }
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let s = handle.snapshot();
    assert_eq!(
        (s.buffered_calls, s.failed_calls, s.half_open_permits_taken),
        (0, 0, 0)
    );
    call(&mut svc, true).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen, "one probe of two");
    call(&mut svc, true).await;
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// The run of consecutive failures keeps the whole generation, which wraps after 2^21
/// transitions: a run left counting then is not continued.
#[tokio::test(start_paused = true)]
async fn a_run_of_failures_does_not_survive_a_generation_wrap() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(10))
        .consecutive_failures(3);
    let (mut svc, handle) = breaker(config);
    call(&mut svc, false).await;
    call(&mut svc, false).await;
    assert_eq!(handle.snapshot().consecutive_failures, 2);
    let started = handle.snapshot().generation;
    resets(&handle, 1 << 21);
    let s = handle.snapshot();
    assert_eq!(s.generation, started, "the generation wrapped");
    assert_eq!((s.consecutive_failures, s.buffered_calls), (0, 0));
    call(&mut svc, false).await;
    assert_eq!(handle.snapshot().consecutive_failures, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// Threads record outcomes while another one keeps forcing transitions, for well over a tag
/// period. Whatever the interleaving, a count window never holds more calls than it has room
/// for, and once everything is quiet a fresh period counts exactly what it is given.
#[test]
fn recorders_racing_transitions_keep_the_window_consistent() {
    const N: u32 = 16;
    for window in [
        SlidingWindow::Count(N),
        SlidingWindow::Time {
            span: Duration::from_secs(3600),
            buckets: N,
        },
    ] {
        let config = CircuitBreakerConfig::default()
            .sliding_window(window)
            .minimum_calls(1)
            .failure_rate_threshold(100.0)
            .consecutive_failures(0);
        let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
        let svc = layer
            .with_classifier(classify as Classifier)
            .layer(Upstream);
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorders: Vec<_> = (0..3u64)
            .map(|t| {
                let (mut svc, stop) = (svc.clone(), stop.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            call(&mut svc, x % 3 != 0).await;
                        }
                    })
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut transitions = 0u32;
        // Transitions that stay where outcomes are recorded, then some that do not.
        while transitions < 3 * TAG_PERIOD && Instant::now() < deadline
            || transitions < TAG_PERIOD + 8
        {
            match transitions % 4 {
                0 => handle.reset(),
                1 => handle.transition_to_metrics_only().unwrap(),
                2 => handle.transition_to_closed().unwrap(),
                _ => handle.transition_to_disabled().unwrap(),
            }
            transitions += 1;
            if transitions.is_multiple_of(64) {
                let s = handle.snapshot();
                // A count window holds at most N calls; a time window's buckets, any number.
                let bounded = matches!(window, SlidingWindow::Count(_));
                if bounded && s.buffered_calls > N {
                    violations.lock().unwrap().push(format!("{s:?}"));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in recorders {
            r.join().unwrap();
        }
        let violations = violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "{window:?}, after {transitions} transitions: {} inconsistent snapshots, first {}",
            violations.len(),
            violations[0]
        );

        // Quiet now: a fresh period counts exactly what it is given, whatever the slots
        // and buckets were left holding.
        handle.transition_to_metrics_only().unwrap();
        assert_eq!(counts(&handle), (0, 0, 0), "{window:?}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut svc = svc;
        rt.block_on(async {
            for i in 1..=N {
                call(&mut svc, i % 4 != 0).await;
                assert_eq!(counts(&handle), (i, i / 4, i - i / 4), "{window:?}");
            }
            if let SlidingWindow::Count(_) = window {
                // The ring turns over: only the last N outcomes remain.
                for _ in 0..N {
                    call(&mut svc, false).await;
                }
                assert_eq!(counts(&handle), (N, N, 0));
            }
        });
    }
}

/// Transitions that leave a time window's bucket alone for a while must not bring its old
/// counts back, however many they are: a bucket's counts belong to the stamp they were
/// counted under, and a quiet stretch of transitions (a long outage, resets) changes the
/// stamps of buckets nobody records into.
#[tokio::test(start_paused = true)]
async fn a_time_window_bucket_left_alone_through_transitions_does_not_resurrect() {
    for buckets in [1, 3] {
        for transitions in 1..(300 * buckets) {
            let config = CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::Time {
                    span: Duration::from_secs(60),
                    buckets,
                })
                .failure_rate_threshold(50.0)
                .minimum_calls(100)
                .consecutive_failures(0);
            let (mut svc, handle) = breaker(config);
            for _ in 0..3 {
                call(&mut svc, false).await;
            }
            resets(&handle, transitions);
            call(&mut svc, true).await;
            assert_eq!(
                counts(&handle),
                (1, 0, 1),
                "{buckets} buckets, {transitions} transitions"
            );
        }
    }
}
