//! Circuit breaker and retry policy: time windows whose buckets roll over under concurrent
//! calls.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `tests/common/logs.rs`).
use crate::logs;

use std::sync::Barrier;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Outcome, SlidingWindow,
};

/// Threads that call together, epoch after epoch, through a breaker whose time window has 4
/// buckets of 10 ms: at each epoch they race to roll a bucket over from the epoch 4 before.
/// After every epoch the window holds exactly the outcomes of the last 4 epochs: none lost,
/// none counted twice, and none of the epoch a bucket held before (failures come every fifth
/// epoch, so a bucket holds failures one time round and none the next).
///
/// The clock is a paused runtime's, read by the calling threads through its handle, so every
/// call of an epoch completes in it.
#[test]
fn outcomes_racing_bucket_rollovers_are_each_counted_once() {
    let (_logs, _guard) = Logs::capture();
    const THREADS: usize = 2;
    const PER_EPOCH: u32 = 16;
    const EPOCHS: u32 = 1_500;
    const BUCKET: Duration = Duration::from_millis(10);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let clock = runtime.handle().clone();
    let _entered = runtime.enter();
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            span: BUCKET * 4,
            buckets: 4,
        })
        .without_failure_rate()
        .consecutive_failures(u32::MAX);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    // `true` succeeds, `false` fails.
    let svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|r: &Result<bool, BoxError>| match r {
            Ok(true) => Outcome::Success,
            _ => Outcome::Failure,
        }))
        .service_fn(|ok: bool| async move { Ok::<_, BoxError>(ok) });
    let failing = |epoch: u32| epoch.is_multiple_of(5);
    let start = Barrier::new(THREADS + 1);
    let done = Barrier::new(THREADS + 1);
    let unanswered = AtomicU32::new(0);
    // Failed checks are collected: a panic here would leave the other threads at a barrier.
    let mut wrong = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (svc, clock, start, done, unanswered) =
                (svc.clone(), clock.clone(), &start, &done, &unanswered);
            scope.spawn(move || {
                let _entered = clock.enter();
                let mut svc = svc;
                for epoch in 0..EPOCHS {
                    start.wait();
                    for _ in 0..PER_EPOCH {
                        // Ready at once, answered at once: nothing here waits.
                        let answered = ServiceExt::<bool>::ready(&mut svc)
                            .now_or_never()
                            .and_then(Result::ok)
                            .and_then(|ready| ready.call(!failing(epoch)).now_or_never());
                        if !matches!(answered, Some(Ok(ok)) if ok != failing(epoch)) {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.wait();
                }
            });
        }
        let per_epoch = THREADS as u32 * PER_EPOCH;
        for epoch in 0..EPOCHS {
            start.wait();
            done.wait();
            let held = epoch.saturating_sub(3)..=epoch;
            let failures = held.clone().filter(|e| failing(*e)).count() as u32 * per_epoch;
            let snapshot = handle.snapshot();
            let expected = (
                CircuitState::Closed,
                held.count() as u32 * per_epoch,
                failures,
            );
            let seen = (
                snapshot.state,
                snapshot.buffered_calls,
                snapshot.failed_calls,
            );
            if seen != expected {
                wrong.push((epoch, seen, expected));
            }
            runtime.block_on(tokio::time::advance(BUCKET));
        }
    });
    assert_eq!(unanswered.load(Ordering::Relaxed), 0);
    assert!(wrong.is_empty(), "(epoch, seen, expected): {wrong:?}");
}

/// A time window's buckets are fixed slices of time that leave the window whole, as
/// `SlidingWindow::Time` says: a call counts until the end of the `buckets`-th bucket from
/// its own, so for between `span - span / buckets` and `span`.
#[tokio::test(start_paused = true)]
async fn a_time_window_bucket_leaves_the_window_whole() {
    let (_logs, _guard) = Logs::capture();
    for (buckets, counted_for) in [(4, 35), (1, 5)] {
        let config = CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::Time {
                span: Duration::from_millis(40),
                buckets,
            })
            .without_failure_rate()
            .consecutive_failures(u32::MAX);
        let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(layer.with_classifier(|r: &Result<bool, BoxError>| match r {
                Ok(true) => Outcome::Success,
                _ => Outcome::Failure,
            }))
            .service_fn(|ok: bool| async move { Ok::<_, BoxError>(ok) });
        // 35 ms in: 5 ms into the fourth bucket of 10 ms, or 35 ms into the one of 40 ms.
        tokio::time::advance(Duration::from_millis(35)).await;
        svc.ready().await.unwrap().call(false).await.unwrap();
        tokio::time::advance(Duration::from_millis(counted_for - 1)).await;
        assert_eq!(handle.snapshot().failed_calls, 1, "{buckets} buckets");
        // One millisecond later its bucket ends its time in the window.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(handle.snapshot().failed_calls, 0, "{buckets} buckets");
    }
}
