//! The circuit breaker's state machine through the public API, with paused time.

use crate::child;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{BoxError, Service, ServiceExt};
use tower_layer::Layer;
use tower_webhook::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitEvent,
    CircuitOpen, CircuitState, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer, OpenDuration,
    Outcome, SlidingWindow, TripReason,
};

#[derive(Clone, Copy, Debug)]
enum Call {
    Ok,
    Fail,
    Neutral,
    /// Succeeds after this many milliseconds.
    Slow(u64),
    /// Fails after this many milliseconds.
    FailAfter(u64),
    /// Waits for a permit of the upstream's gate, then succeeds.
    Gated,
}

type Res = Result<&'static str, BoxError>;

#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Upstream {
    fn new() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Service<Call> for Upstream {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Res> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.clone();
        Box::pin(async move {
            match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err("boom".into()),
                Call::Neutral => Ok("neutral"),
                Call::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok("slow")
                }
                Call::FailAfter(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Err("late".into())
                }
                Call::Gated => {
                    let _permit = gate.acquire().await.map_err(|e| -> BoxError { e.into() })?;
                    Ok("gated")
                }
            }
        })
    }
}

type Classifier = fn(&Res) -> Outcome;

fn classify(result: &Res) -> Outcome {
    match result {
        Ok("neutral") => Outcome::Neutral,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

type Svc = CircuitBreaker<Upstream, Classifier>;

fn breaker(config: CircuitBreakerConfig) -> (Svc, CircuitBreakerHandle, Upstream) {
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let upstream = Upstream::new();
    let svc = layer
        .with_classifier(classify as Classifier)
        .layer(upstream.clone());
    (svc, handle, upstream)
}

/// A config where only the rule under test can open the breaker.
fn rate_config(window: u32, rate: f64, min: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(window))
        .failure_rate_threshold(rate)
        .minimum_calls(min)
        .consecutive_failures(0)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
}

async fn call(svc: &mut Svc, c: Call) -> Res {
    svc.ready().await?.call(c).await
}

/// Admits every call of `plan` before any completes, then completes them in order.
async fn admit_all_then_complete(svc: &mut Svc, plan: impl IntoIterator<Item = Call>) {
    let mut futures = Vec::new();
    for c in plan {
        futures.push(svc.ready().await.unwrap().call(c));
    }
    for future in futures {
        let _ = future.await;
    }
}

fn open_error(result: Res) -> CircuitOpen {
    let err = result.expect_err("expected a rejection");
    err.downcast_ref::<CircuitOpen>()
        .unwrap_or_else(|| panic!("expected CircuitOpen, got {err}"))
        .clone()
}

#[tokio::test(start_paused = true)]
async fn trips_when_the_window_fills_and_the_threshold_is_reached_inclusively() {
    let (mut svc, handle, _) = breaker(rate_config(10, 50.0, 10));
    for _ in 0..5 {
        assert!(call(&mut svc, Call::Fail).await.is_err());
    }
    for _ in 0..4 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    // 9 calls, 5 failures: the window is not full yet.
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().failure_rate, None);
    // The 10th call fills it: 5/10 = 50 %, and the threshold is inclusive.
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn threshold_just_above_the_rate_does_not_trip() {
    let (mut svc, handle, _) = breaker(rate_config(10, 40.1, 10));
    for c in [Call::Fail; 4].into_iter().chain([Call::Ok; 6]) {
        let _ = call(&mut svc, c).await;
    }
    assert_eq!(handle.snapshot().failure_rate, Some(40.0));
    assert_eq!(handle.state(), CircuitState::Closed);

    let (mut svc, handle, _) = breaker(rate_config(10, 40.0, 10));
    for c in [Call::Fail; 4].into_iter().chain([Call::Ok; 6]) {
        let _ = call(&mut svc, c).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn minimum_number_of_calls_is_respected() {
    let (mut svc, handle, _) = breaker(rate_config(100, 50.0, 5));
    for _ in 0..4 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_is_a_true_sliding_ring() {
    let (mut svc, handle, _) = breaker(rate_config(10, 50.0, 10));
    for _ in 0..100 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.snapshot().buffered_calls, 10);
    for i in 0..4 {
        let _ = call(&mut svc, Call::Fail).await;
        assert_eq!(handle.snapshot().failed_calls, i + 1);
        assert_eq!(handle.state(), CircuitState::Closed);
    }
    // The 5th failure evicts the 6th-newest success: 5 of the last 10 failed.
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_slide_out_of_the_count_window() {
    let (mut svc, handle, _) = breaker(rate_config(4, 50.0, 4));
    let _ = call(&mut svc, Call::Fail).await;
    for _ in 0..3 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.snapshot().failed_calls, 1);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.snapshot().failed_calls, 0);
    assert_eq!(handle.snapshot().buffered_calls, 4);
}

#[tokio::test(start_paused = true)]
async fn time_buckets_expire_also_across_idle_gaps() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        })
        .failure_rate_threshold(50.0)
        .minimum_calls(4)
        .consecutive_failures(0);
    let (mut svc, handle, _) = breaker(config);
    for _ in 0..3 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.snapshot().buffered_calls, 3);
    // Half the window later the failures still count.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.snapshot().failed_calls, 3);
    // A full window later they have expired.
    tokio::time::advance(Duration::from_millis(5_500)).await;
    assert_eq!(handle.snapshot().buffered_calls, 0);
    let _ = call(&mut svc, Call::Fail).await;
    for _ in 0..3 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    // 1 failure in 4: the old failures would have made it 4 in 7.
    assert_eq!(handle.snapshot().failure_rate, Some(25.0));
    assert_eq!(handle.state(), CircuitState::Closed);

    // A long idle gap (many times the window, a multiple of the bucket count) leaves nothing.
    tokio::time::advance(Duration::from_secs(10_000)).await;
    assert_eq!(handle.snapshot().buffered_calls, 0);
    for _ in 0..2 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    for _ in 0..2 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(4))
        .without_failure_rate()
        .slow_call_rate_threshold(50.0, Duration::from_secs(1))
        .minimum_calls(4)
        .consecutive_failures(0);
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let config = config.on_event(move |e| {
        if let CircuitEvent::StateTransition {
            reason: Some(r), ..
        } = e
        {
            seen.lock().unwrap().push(*r);
        }
    });
    let (mut svc, handle, _) = breaker(config);
    call(&mut svc, Call::Slow(1_500)).await.unwrap();
    call(&mut svc, Call::Ok).await.unwrap();
    call(&mut svc, Call::Slow(999)).await.unwrap();
    assert_eq!(handle.snapshot().slow_calls, 1);
    call(&mut svc, Call::Slow(2_000)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(matches!(reasons.lock().unwrap()[..], [TripReason::SlowCallRate(r)] if r == 50.0));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_rule() {
    let config = CircuitBreakerConfig::default().consecutive_failures(3);
    let (mut svc, handle, _) = breaker(config);
    for _ in 0..2 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    call(&mut svc, Call::Ok).await.unwrap();
    for _ in 0..2 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 2);
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

/// Calls admitted together while the window is full of successes: each success that
/// completes after a failure still breaks the run of consecutive failures.
#[tokio::test(start_paused = true)]
async fn successes_admitted_together_break_a_run_of_failures() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(10))
        .consecutive_failures(3);
    let (mut svc, handle, _) = breaker(config);
    for _ in 0..10 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    let plan = [Call::Fail, Call::Ok, Call::Fail, Call::Ok, Call::Fail];
    admit_all_then_complete(&mut svc, plan).await;
    assert_eq!(handle.state(), CircuitState::Closed);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.consecutive_failures, 1);
    assert_eq!(snapshot.failed_calls, 3);
    assert_eq!(snapshot.buffered_calls, 10);
}

/// Calls admitted together while the window is full of successes: the ring still holds
/// exactly the last N outcomes in the order they completed.
#[tokio::test(start_paused = true)]
async fn count_window_holds_the_last_n_outcomes_of_calls_admitted_together() {
    let (mut svc, handle, _) = breaker(rate_config(4, 50.0, 4));
    for _ in 0..4 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    let plan = [
        Call::Fail,
        Call::Ok,
        Call::Ok,
        Call::Ok,
        Call::Ok,
        Call::Fail,
    ];
    admit_all_then_complete(&mut svc, plan).await;
    // The last four outcomes are ok, ok, ok, fail: 25 %.
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().failed_calls, 1);
    assert_eq!(handle.snapshot().failure_rate, Some(25.0));
}

#[tokio::test(start_paused = true)]
async fn open_rejects_with_a_retry_after_that_counts_down_then_half_opens() {
    let (mut svc, handle, upstream) =
        breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    let before = upstream.calls.load(Ordering::SeqCst);

    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        open_error(call(&mut svc, Call::Ok).await).retry_after(),
        Some(Duration::from_secs(20))
    );
    tokio::time::advance(Duration::from_millis(19_999)).await;
    assert_eq!(
        open_error(call(&mut svc, Call::Ok).await).retry_after(),
        Some(Duration::from_millis(1))
    );
    // Rejected calls never reached the upstream.
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before);
    assert_eq!(handle.snapshot().not_permitted_calls, 3);

    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_made_ready_earlier_reports_the_wait_left_when_called() {
    let (mut svc, _handle, _upstream) =
        breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    let _ = call(&mut svc, Call::Fail).await;
    // `poll_ready` decides the refusal; the call comes 10 s later.
    let ready = svc.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let open = open_error(ready.call(Call::Ok).await);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_of_100_concurrent_callers() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(3);
    let (mut svc, handle, upstream) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let before = upstream.calls.load(Ordering::SeqCst);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut svc = svc.clone();
        tasks.spawn(async move { call(&mut svc, Call::Gated).await });
    }
    // Let every caller reach the breaker; the admitted ones wait at the gate.
    tokio::task::yield_now().await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(upstream.calls.load(Ordering::SeqCst) - before, 3);
    assert_eq!(handle.snapshot().half_open_permits_taken, 3);
    upstream.gate.add_permits(3);
    let mut admitted = 0;
    let mut rejected = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => admitted += 1,
            Err(err) => {
                assert!(err.is::<CircuitOpen>());
                rejected += 1;
            }
        }
    }
    assert_eq!((admitted, rejected), (3, 97));
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A probe of an earlier half-open period that is still running counts against the next
/// period: the recovering upstream never sees more than `half_open_probes` calls at once.
#[tokio::test(start_paused = true)]
async fn probes_still_running_count_against_the_next_half_open_period() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(2)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(1)));
    let (mut svc, handle, upstream) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;

    // A probe hangs at the gate while the half-open period ends (here by hand; a
    // `max_half_open_wait` or a verdict does the same).
    let mut slow = svc.clone();
    let hanging = tokio::spawn(async move { call(&mut slow, Call::Gated).await });
    tokio::task::yield_now().await;
    handle.transition_to_open().unwrap();

    // The next half-open period has room for one probe only while the first still runs.
    tokio::time::advance(Duration::from_secs(1)).await;
    let before = upstream.calls.load(Ordering::SeqCst);
    let mut second = svc.clone();
    let admitted = tokio::spawn(async move { call(&mut second, Call::Gated).await });
    tokio::task::yield_now().await;
    open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(upstream.calls.load(Ordering::SeqCst) - before, 1);

    // Once they finish, probes are admitted again.
    upstream.gate.add_permits(2);
    assert!(hanging.await.unwrap().is_ok());
    assert!(admitted.await.unwrap().is_ok());
    assert!(call(&mut svc, Call::Ok).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn half_open_verdicts_close_or_reopen() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .failure_rate_threshold(50.0)
        .half_open_probes(2);
    // Both probes succeed: CLOSED.
    let (mut svc, handle, _) = breaker(config.clone());
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // One of two fails: 50 % >= 50 %, back to OPEN.
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    call(&mut svc, Call::Ok).await.unwrap();
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(
        call(&mut svc, Call::Ok)
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
}

#[tokio::test(start_paused = true)]
async fn neutral_and_dropped_probes_return_their_permit() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1);
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    // A neutral outcome is not a verdict and frees the permit.
    call(&mut svc, Call::Neutral).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);

    // A probe whose future is dropped before completion frees it too.
    let future = svc.ready().await.unwrap().call(Call::Slow(10_000));
    assert_eq!(handle.snapshot().half_open_permits_taken, 1);
    assert!(
        call(&mut svc, Call::Ok)
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    drop(future);
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);

    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A listener that panics (a channel send that fails at shutdown) neither reaches the caller
/// nor keeps a probe's slot: every later half-open period still admits its probe.
#[tokio::test(start_paused = true)]
async fn a_panicking_listener_does_not_wedge_half_open() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1)
        .on_event(|event| {
            if let CircuitEvent::StateTransition {
                to: CircuitState::Closed,
                ..
            } = event
            {
                panic!("the receiver is gone");
            }
        });
    let (mut svc, handle, _) = breaker(config);
    for round in 0..3 {
        let _ = call(&mut svc, Call::Fail).await;
        assert_eq!(handle.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        let mut probe = svc.clone();
        let outcome = tokio::spawn(async move { call(&mut probe, Call::Ok).await }).await;
        assert!(
            matches!(outcome, Ok(Ok("ok"))),
            "round {round}: {outcome:?}"
        );
        assert_eq!(handle.state(), CircuitState::Closed);
    }

    // A listener that panics on every event: rejections are still plain errors.
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .on_event(|_| panic!("always"));
    let (svc, handle, _) = breaker(config);
    let mut failing = svc.clone();
    let outcome = tokio::spawn(async move { call(&mut failing, Call::Fail).await }).await;
    assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
    assert_eq!(handle.state(), CircuitState::Open);
    let mut rejected = svc.clone();
    let outcome = tokio::spawn(async move { call(&mut rejected, Call::Ok).await }).await;
    assert!(
        matches!(&outcome, Ok(Err(err)) if err.is::<CircuitOpen>()),
        "{outcome:?}"
    );
}

/// An inner service whose `poll_ready` reserves capacity that only `call` or dropping the
/// service gives back, like `tower::buffer::Buffer` or `tower::limit::ConcurrencyLimit`.
struct Reserving {
    upstream: Upstream,
    reserved: Arc<AtomicUsize>,
    holds: bool,
}

impl Reserving {
    fn new() -> Self {
        Self {
            upstream: Upstream::new(),
            reserved: Arc::new(AtomicUsize::new(0)),
            holds: false,
        }
    }
}

impl Clone for Reserving {
    fn clone(&self) -> Self {
        Self {
            upstream: self.upstream.clone(),
            reserved: self.reserved.clone(),
            holds: false,
        }
    }
}

impl Drop for Reserving {
    fn drop(&mut self) {
        if self.holds {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Service<Call> for Reserving {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Res> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.holds {
            self.holds = true;
            self.reserved.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        assert!(self.holds, "called without poll_ready");
        self.holds = false;
        self.reserved.fetch_sub(1, Ordering::SeqCst);
        self.upstream.call(call)
    }
}

/// A call rejected in HALF_OPEN (no free probe permit) leaves no capacity of the inner service
/// reserved by the service that was asked, which may live long (a connection's clone).
#[tokio::test(start_paused = true)]
async fn half_open_rejections_reserve_no_inner_capacity() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let inner = Reserving::new();
    let reserved = inner.reserved.clone();
    let mut svc = layer.with_classifier(classify as Classifier).layer(inner);
    let _ = svc.ready().await.unwrap().call(Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    let mut probe = svc.clone();
    let probe_call = probe.ready().await.unwrap().call(Call::Slow(1_000));
    assert_eq!(reserved.load(Ordering::SeqCst), 0);

    let mut other = svc.clone();
    let err = other
        .ready()
        .await
        .unwrap()
        .call(Call::Ok)
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(
        reserved.load(Ordering::SeqCst),
        0,
        "held by a rejected call"
    );

    // A probe that is never called gives its permit back; a service made ready holds none (its
    // call takes one), and a clone copies no reservation.
    drop(probe_call);
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);
    let mut waiting = svc.clone();
    std::future::poll_fn(|cx| waiting.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);
    assert_eq!(reserved.load(Ordering::SeqCst), 1);
    let mut copy = waiting.clone();
    drop(waiting);
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);
    assert_eq!(reserved.load(Ordering::SeqCst), 0);
    assert_eq!(
        copy.ready().await.unwrap().call(Call::Ok).await.unwrap(),
        "ok"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// The keyed breaker cannot decide before it sees the request: when it rejects, it releases
/// what the inner service reserved.
#[tokio::test(start_paused = true)]
async fn keyed_rejections_release_inner_capacity() {
    let config = CircuitBreakerConfig::default().consecutive_failures(1);
    let layer = KeyedCircuitBreakerLayer::new(config, 8, |_: &Call| "upstream")
        .unwrap()
        .with_classifier(classify as Classifier);
    let inner = Reserving::new();
    let reserved = inner.reserved.clone();
    let mut svc = layer.layer(inner);
    let _ = svc.ready().await.unwrap().call(Call::Fail).await;
    let err = svc.ready().await.unwrap().call(Call::Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(
        reserved.load(Ordering::SeqCst),
        0,
        "held by a rejected call"
    );
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_goes_back_to_open() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .max_half_open_wait(Duration::from_secs(5));
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = svc.ready().await.unwrap().call(Call::Gated);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.state(), CircuitState::Open);
    drop(probe);
}

/// A breaker that opens for 10 s at a failure, with a maximum wait of 5 s in HALF_OPEN: opened,
/// and its 10 s over.
async fn open_for_10s_then_half_open_for_5s() -> (Svc, CircuitBreakerHandle, Upstream) {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(10)))
        .max_half_open_wait(Duration::from_secs(5));
    let (mut svc, handle, upstream) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    (svc, handle, upstream)
}

/// The wait of a half-open period starts with its first probe: a period entered by reading the
/// state (a status endpoint) admits the next call as its probe however long nobody called.
#[tokio::test(start_paused = true)]
async fn a_half_open_period_read_but_not_probed_waits_for_its_probe() {
    let (mut svc, handle, upstream) = open_for_10s_then_half_open_for_5s().await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(
        handle.state(),
        CircuitState::HalfOpen,
        "no probe to time out"
    );
    let before = upstream.calls.load(Ordering::SeqCst);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before + 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    // A probe's wait is its own: 5 s from the probe, not from when the period was entered.
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(4)).await;
    let probe = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, Call::Gated).await }
    });
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        handle.state(),
        CircuitState::HalfOpen,
        "4 s into the probe's 5"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), CircuitState::Open);
    probe.abort();
}

/// A half-open period that timed out is followed by OPEN from the moment its wait ended,
/// however late anyone sees it: the open duration is not counted again from that moment.
#[tokio::test(start_paused = true)]
async fn a_half_open_timeout_seen_late_opens_from_when_it_was_due() {
    let (mut svc, handle, upstream) = open_for_10s_then_half_open_for_5s().await;
    // A probe that hangs: its period ends 5 s later, with nobody looking.
    let hanging = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, Call::Gated).await }
    });
    tokio::task::yield_now().await;
    // 10 s on: OPEN since 5 s, for 5 s more.
    tokio::time::advance(Duration::from_secs(10)).await;
    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
    // Long after: that OPEN period is over too, and this call is the next probe.
    tokio::time::advance(Duration::from_secs(100)).await;
    let before = upstream.calls.load(Ordering::SeqCst);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before + 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    hanging.abort();
}

/// A probe admitted by `poll_ready` whose half-open period timed out before its `call` (with
/// nobody applying the timeout in between) is decided again: it does not reach the upstream.
#[tokio::test(start_paused = true)]
async fn a_probe_called_after_its_period_timed_out_is_decided_again() {
    let (mut svc, handle, upstream) = open_for_10s_then_half_open_for_5s().await;
    let before = upstream.calls.load(Ordering::SeqCst);
    let ready = svc.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    let open = open_error(ready.call(Call::Ok).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(9)));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before);
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn results_from_an_older_generation_are_ignored() {
    let (mut svc, handle, _) = breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    let generation = handle.snapshot().generation;
    let late = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, Call::FailAfter(5_000)).await }
    });
    tokio::task::yield_now().await;
    handle.transition_to_forced_open().unwrap();
    handle.transition_to_closed().unwrap();
    assert_eq!(handle.snapshot().generation, generation + 2);
    // The late failure was admitted two generations ago: it must not open the breaker.
    assert!(late.await.unwrap().is_err());
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().failed_calls, 0);

    // Same for a probe admitted in a half-open period that has ended.
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, Call::FailAfter(1_000)).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    handle.reset();
    assert!(probe.await.unwrap().is_err());
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_duration_backs_off_by_attempt_up_to_the_cap() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.0,
        });
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    for expected in [1, 2, 4, 8, 10, 10] {
        let after = open_error(call(&mut svc, Call::Ok).await).retry_after();
        assert_eq!(after, Some(Duration::from_secs(expected)));
        tokio::time::advance(Duration::from_secs(expected)).await;
        // The probe fails: back to OPEN for longer.
        let _ = call(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // Closing resets the attempt count.
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(
        open_error(call(&mut svc, Call::Ok).await).retry_after(),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_the_open_duration_within_bounds() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Backoff {
            initial: Duration::from_secs(100),
            multiplier: 1.0,
            max: Duration::from_secs(100),
            jitter: 0.5,
        });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (mut svc, _, _) = breaker(config.clone());
        let _ = call(&mut svc, Call::Fail).await;
        let after = open_error(call(&mut svc, Call::Ok).await)
            .retry_after()
            .unwrap();
        assert!(
            after >= Duration::from_secs(50) && after <= Duration::from_secs(100),
            "{after:?}"
        );
        seen.insert(after);
    }
    assert!(seen.len() > 1, "jitter produced a single value");
}

#[tokio::test(start_paused = true)]
async fn special_states() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let config = rate_config(4, 50.0, 4).on_event(move |e| log.lock().unwrap().push(e.clone()));
    let (mut svc, handle, upstream) = breaker(config);

    // DISABLED: everything passes, nothing is recorded.
    handle.transition_to_disabled().unwrap();
    for _ in 0..10 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    assert_eq!(handle.snapshot().buffered_calls, 0);

    // FORCED_OPEN: everything is rejected, with no retry_after, whatever the time.
    handle.transition_to_forced_open().unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let calls = upstream.calls.load(Ordering::SeqCst);
    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(
        (open.state(), open.retry_after()),
        (CircuitState::ForcedOpen, None)
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), calls);
    assert_eq!(handle.state(), CircuitState::ForcedOpen);

    // METRICS_ONLY: recorded, thresholds raise events, never opens.
    handle.transition_to_metrics_only().unwrap();
    for _ in 0..8 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::MetricsOnly);
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (4, 4));
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        CircuitEvent::ThresholdExceeded { reason: TripReason::FailureRate(r), .. } if *r == 100.0
    )));

    // Illegal transitions are refused and change nothing.
    let err = handle.transition_to_open().unwrap_err();
    assert_eq!(
        (err.from(), err.to()),
        (CircuitState::MetricsOnly, CircuitState::Open)
    );
    assert!(handle.transition_to_half_open().is_err());
    handle.transition_to_closed().unwrap();
    assert!(handle.transition_to_half_open().is_err());
    assert_eq!(handle.state(), CircuitState::Closed);

    // Reset from OPEN gives a fresh CLOSED.
    handle.transition_to_open().unwrap();
    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().buffered_calls, 0);

    let transitions: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CircuitEvent::StateTransition { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    use CircuitState::*;
    assert_eq!(
        transitions,
        [Disabled, ForcedOpen, MetricsOnly, Closed, Open, Closed]
    );
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        CircuitEvent::Rejected {
            state: ForcedOpen,
            retry_after: None,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn state_is_shared_by_every_clone_and_every_layered_service() {
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(2)).unwrap();
    let layer = layer.with_classifier(classify as Classifier);
    let mut a = layer.layer(Upstream::new());
    let mut b = layer.layer(Upstream::new()).clone();
    let _ = call(&mut a, Call::Fail).await;
    let _ = call(&mut b, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(
        call(&mut a, Call::Ok)
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    assert_eq!(a.handle().snapshot(), b.handle().snapshot());
}

#[tokio::test(start_paused = true)]
async fn snapshot_serializes_for_a_status_endpoint() {
    let (mut svc, handle, _) = breaker(rate_config(10, 50.0, 2).name("github-api"));
    call(&mut svc, Call::Ok).await.unwrap();
    let _ = call(&mut svc, Call::Fail).await;
    let json = serde_json::to_value(handle.snapshot()).unwrap();
    assert_eq!(json["name"], "github-api");
    assert_eq!(json["state"], "OPEN");
    assert_eq!(json["not_permitted_calls"], 0);
    assert_eq!(json["retry_after_ms"], 30_000);
}

#[test]
fn config_errors_name_the_setting_or_variable() {
    // An upstream `Retry-After` is honoured for a day at most.
    let day = Duration::from_secs(24 * 3600);
    assert!(
        CircuitBreakerConfig::default()
            .honor_retry_after(day)
            .validate()
            .is_ok()
    );
    for cap in [day + Duration::from_secs(1), Duration::MAX] {
        let err = CircuitBreakerConfig::default()
            .honor_retry_after(cap)
            .validate()
            .unwrap_err();
        assert_eq!(err.setting(), "honor_retry_after");
    }
    let err = CircuitBreakerConfig::from_env_with(|name| {
        (name == "CIRCUIT_BREAKER_FAILURE_THRESHOLD").then(|| "five".to_owned())
    })
    .unwrap_err();
    assert_eq!(err.setting(), "CIRCUIT_BREAKER_FAILURE_THRESHOLD");
    assert!(err.to_string().contains("five"), "{err}");
    let err = CircuitBreakerConfig::from_env_with(|name| {
        (name == "CIRCUIT_BREAKER_FAILURE_THRESHOLD").then(|| "0".to_owned())
    })
    .unwrap_err();
    assert_eq!(err.setting(), "CIRCUIT_BREAKER_FAILURE_THRESHOLD");
    for bad in ["-1", "0", "NaN", "inf", "", "1e-10"] {
        let err = CircuitBreakerConfig::from_env_with(|name| {
            (name == "CIRCUIT_BREAKER_RECOVERY_TIMEOUT").then(|| bad.to_owned())
        })
        .unwrap_err();
        assert_eq!(err.setting(), "CIRCUIT_BREAKER_RECOVERY_TIMEOUT");
    }
    let config = CircuitBreakerConfig::from_env_with(|name| match name {
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD" => Some(" 7 ".to_owned()),
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT" => Some("2.5".to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(config.consecutive_failure_threshold(), 7);
    assert_eq!(
        config.open_duration_setting(),
        OpenDuration::Fixed(Duration::from_millis(2_500))
    );
    let defaults = CircuitBreakerConfig::from_env_with(|_| None).unwrap();
    assert_eq!(defaults.consecutive_failure_threshold(), 5);
    assert_eq!(
        defaults.open_duration_setting(),
        OpenDuration::Fixed(Duration::from_secs(30))
    );

    for (config, setting) in [
        (
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::Count(0)),
            "sliding_window",
        ),
        (
            CircuitBreakerConfig::default().failure_rate_threshold(0.0),
            "failure_rate_threshold",
        ),
        (
            CircuitBreakerConfig::default().failure_rate_threshold(101.0),
            "failure_rate_threshold",
        ),
        (
            CircuitBreakerConfig::default().minimum_calls(0),
            "minimum_calls",
        ),
        (
            CircuitBreakerConfig::default().open_duration(OpenDuration::Fixed(Duration::ZERO)),
            "open_duration",
        ),
        // HALF_OPEN would end before any probe could be admitted, so the breaker would
        // never close again (resilience4j reads 0 as "no limit").
        (
            CircuitBreakerConfig::default().max_half_open_wait(Duration::ZERO),
            "max_half_open_wait",
        ),
        // Every call would be slow, every probe too: the breaker would never close again.
        (
            CircuitBreakerConfig::default().slow_call_rate_threshold(50.0, Duration::ZERO),
            "slow_call_rate_threshold",
        ),
        // A call's time is kept for 13 days: one slower than 30 days would never be slow.
        (
            CircuitBreakerConfig::default()
                .slow_call_rate_threshold(50.0, Duration::from_secs(30 * 86_400)),
            "slow_call_rate_threshold",
        ),
        // All of the open duration could be taken off.
        (
            CircuitBreakerConfig::default().open_duration(OpenDuration::Backoff {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max: Duration::from_secs(60),
                jitter: 1.0,
            }),
            "open_duration",
        ),
    ] {
        assert_eq!(
            CircuitBreakerLayer::new(config).unwrap_err().setting(),
            setting
        );
    }
}

/// `from_env` itself, in a child process that has the variables set.
#[test]
fn from_env_reads_the_process_environment() {
    if std::env::var_os("CB_FROM_ENV_CHILD").is_some() {
        let config = CircuitBreakerConfig::from_env().unwrap();
        assert_eq!(config.consecutive_failure_threshold(), 9);
        let err = CircuitBreakerLayer::from_env();
        assert!(err.is_ok());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new(&exe)
        .args([
            "--exact",
            &child::test_path(module_path!(), "from_env_reads_the_process_environment"),
            "--nocapture",
        ])
        .env("CB_FROM_ENV_CHILD", "1")
        .env("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "9")
        .env("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "12")
        .status()
        .unwrap();
    assert!(status.success());
    let output = std::process::Command::new(&exe)
        .args([
            "--exact",
            &child::test_path(module_path!(), "from_env_reads_the_process_environment"),
            "--nocapture",
        ])
        .env("CB_FROM_ENV_CHILD", "1")
        .env("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "lots")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("CIRCUIT_BREAKER_FAILURE_THRESHOLD"), "{text}");
}

/// Window slots and half-open words carry a 16-bit tag of the generation. A long outage that
/// flaps OPEN and HALF_OPEN for more than 32768 generations leaves the window holding tags
/// that look newer than the current one; the window must still count once CLOSED again.
#[tokio::test(start_paused = true)]
async fn the_window_still_counts_after_a_very_long_outage() {
    let time = SlidingWindow::Time {
        span: Duration::from_secs(60),
        buckets: 6,
    };
    for window in [SlidingWindow::Count(10), time] {
        let config = rate_config(10, 50.0, 10)
            .sliding_window(window)
            .open_duration(OpenDuration::Fixed(Duration::from_secs(1)));
        let (mut svc, handle, _) = breaker(config);
        for _ in 0..10 {
            call(&mut svc, Call::Ok).await.unwrap();
        }
        handle.transition_to_open().unwrap();
        // Every second a probe goes through and fails: two generations per second.
        for _ in 0..16_384 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(call(&mut svc, Call::Fail).await.is_err());
            assert_eq!(handle.state(), CircuitState::Open);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&mut svc, Call::Ok).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Closed);
        assert!(handle.snapshot().generation > 32_768);

        for _ in 0..9 {
            let _ = call(&mut svc, Call::Fail).await;
        }
        assert_eq!(handle.snapshot().failed_calls, 9, "{window:?}");
        let _ = call(&mut svc, Call::Fail).await;
        assert_eq!(handle.state(), CircuitState::Open, "{window:?}");
    }
}

/// The same with the half-open permit word: a breaker that cycles between OPEN and HALF_OPEN
/// (each period's probe given up before its call, and the period timed out) still admits a
/// probe afterwards.
#[tokio::test(start_paused = true)]
async fn half_open_still_admits_a_probe_after_a_very_long_idle_outage() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(1)))
        .max_half_open_wait(Duration::from_secs(1));
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = call(&mut svc, Call::Fail).await;
    for _ in 0..16_385 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut probe = svc.clone();
        probe.ready().await.unwrap();
        drop(probe);
        assert_eq!(handle.state(), CircuitState::HalfOpen);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(handle.state(), CircuitState::Open);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(handle.snapshot().generation > 32_768);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// The consecutive-failure run is tagged with 21 bits of the generation: a run left from
/// more than 2^20 generations ago must not look newer than the current generation.
#[tokio::test(start_paused = true)]
async fn consecutive_failures_still_count_after_a_million_transitions() {
    let (mut svc, handle, _) = breaker(CircuitBreakerConfig::default().consecutive_failures(3));
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().consecutive_failures, 1);
    for _ in 0..(1 << 19) + 1 {
        handle.transition_to_disabled().unwrap();
        handle.transition_to_closed().unwrap();
    }
    assert!(handle.snapshot().generation > 1 << 20);
    for _ in 0..3 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A keyed breaker of two keys at most over the test upstream, keyed by the call's name; and
/// its handle.
fn two_keys(
    config: CircuitBreakerConfig,
) -> (
    impl Service<(String, Call), Error = BoxError>,
    KeyedCircuitBreakerHandle<String>,
) {
    let (layer, handle) =
        KeyedCircuitBreakerLayer::pair(config, 2, |c: &(String, Call)| c.0.clone()).unwrap();
    let inner = tower::service_fn(|(_, c): (String, Call)| {
        let mut upstream = Upstream::new();
        upstream.call(c)
    });
    (
        layer.with_classifier(classify as Classifier).layer(inner),
        handle,
    )
}

/// Two keys at most: `key` calls `call` five times, each between calls to a key seen once (a
/// healthy one). The state of `key`'s breaker at the end, and how many breakers there are.
async fn a_key_that_comes_and_goes(
    config: CircuitBreakerConfig,
    key: &str,
    call: Call,
) -> (CircuitState, usize) {
    let (mut svc, handle) = two_keys(config);
    for i in 0..5 {
        for (key, call) in [(key.to_owned(), call), (format!("healthy-{i}"), Call::Ok)] {
            let _ = svc.ready().await.unwrap().call((key, call)).await;
        }
    }
    (handle.get(&key.to_owned()).unwrap().state(), handle.len())
}

/// A key whose call is in flight keeps its breaker, however many new keys come meanwhile: its
/// outcome, once in, is counted there (and opens it), not lost with a breaker replaced.
#[tokio::test(start_paused = true)]
async fn a_key_whose_call_is_in_flight_keeps_its_breaker() {
    let (mut svc, handle) = two_keys(CircuitBreakerConfig::default().consecutive_failures(1));
    let slow = "slow".to_owned();
    let call = svc
        .ready()
        .await
        .unwrap()
        .call((slow.clone(), Call::FailAfter(1_000)));
    for i in 0..4 {
        let key = format!("healthy-{i}");
        svc.ready()
            .await
            .unwrap()
            .call((key, Call::Ok))
            .await
            .unwrap();
    }
    assert_eq!(handle.len(), 2);
    assert!(call.await.is_err());
    let slow = handle
        .get(&slow)
        .expect("kept while its call was in flight");
    assert_eq!(slow.state(), CircuitState::Open);
}

/// A key named `overflow` has a breaker of its own, which is not the overflow breaker's name:
/// events and snapshots told by name keep them apart.
#[tokio::test(start_paused = true)]
async fn a_key_named_overflow_is_not_the_overflow_breaker() {
    let (mut svc, handle) = two_keys(CircuitBreakerConfig::default().consecutive_failures(1));
    // Both slots hold an open breaker, so a third key shares the overflow breaker.
    for key in ["a", "overflow"] {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call((key.to_owned(), Call::Fail))
            .await;
    }
    svc.ready()
        .await
        .unwrap()
        .call(("b".to_owned(), Call::Ok))
        .await
        .unwrap();
    let key = handle.get("overflow").unwrap();
    let overflow = handle.overflow();
    assert_eq!(key.name(), "default/overflow");
    assert_eq!(overflow.name(), "default:overflow");
    assert_eq!(key.state(), CircuitState::Open);
    assert_eq!(overflow.state(), CircuitState::Closed);
    assert_eq!(overflow.snapshot().successful_calls, 1);
}

/// When the keyed breaker is full and looks for an idle breaker to forget, it must not run
/// time-driven transitions (and so the listener) while it holds its key map: a listener that
/// reads the keyed handle would wait for that map for ever.
#[tokio::test(start_paused = true)]
async fn a_full_keyed_layer_keeps_the_breaker_that_counts_failures() {
    let config = CircuitBreakerConfig::default().consecutive_failures(5);
    // The failing key's breaker was never forgotten, so its five failures opened it.
    assert_eq!(
        a_key_that_comes_and_goes(config, "failing", Call::Fail).await,
        (CircuitState::Open, 2)
    );
}

/// The same for a key whose calls are slow, under a slow-call rule: its breaker is counting
/// toward opening too, and is not the one forgotten. It was taken for an idle one (no failure
/// on record), so a slow host that came and went never opened.
#[tokio::test(start_paused = true)]
async fn a_full_keyed_layer_keeps_the_breaker_that_counts_slow_calls() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(5)
        .slow_call_rate_threshold(50.0, Duration::from_millis(100));
    // 5 slow calls of 5 opened it.
    assert_eq!(
        a_key_that_comes_and_goes(config, "slow", Call::Slow(500)).await,
        (CircuitState::Open, 2)
    );
}

/// A full keyed layer whose other slot holds a key that opened long ago (its open duration has
/// passed, and it was never called again) forgets that one before the key counting failures,
/// which opens. It forgot the counting one first, so a failing key that came and went beside a
/// dead one never opened, and the dead one kept its slot.
#[tokio::test(start_paused = true)]
async fn a_full_keyed_layer_forgets_a_lapsed_breaker_before_one_that_counts_failures() {
    let (mut svc, handle) = two_keys(CircuitBreakerConfig::default().consecutive_failures(2));
    let dead = "dead".to_owned();
    for _ in 0..2 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call((dead.clone(), Call::Fail))
            .await;
    }
    assert_eq!(handle.get(&dead).unwrap().state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(31)).await;
    for i in 0..2 {
        for (key, call) in [
            ("flaky".to_owned(), Call::Fail),
            (format!("healthy-{i}"), Call::Ok),
        ] {
            let _ = svc.ready().await.unwrap().call((key, call)).await;
        }
    }
    assert_eq!(
        handle.get(&"flaky".to_owned()).unwrap().state(),
        CircuitState::Open
    );
    assert!(handle.get(&dead).is_none());
}

#[test]
fn a_listener_may_read_the_keyed_handle_while_a_key_is_replaced() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let keyed: Arc<OnceLock<KeyedCircuitBreakerHandle<&'static str>>> = Arc::default();
            let seen = keyed.clone();
            let config = CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .on_event(move |event| {
                    if let (CircuitEvent::StateTransition { .. }, Some(handle)) =
                        (event, seen.get())
                    {
                        let _ = handle.len();
                    }
                });
            let (layer, handle) =
                KeyedCircuitBreakerLayer::pair(config, 1, |c: &(&'static str, Call)| c.0).unwrap();
            keyed.set(handle.clone()).unwrap();
            let inner = tower::service_fn(|(_, c): (&'static str, Call)| {
                let mut upstream = Upstream::new();
                upstream.call(c)
            });
            let mut svc = layer.with_classifier(classify as Classifier).layer(inner);
            let _ = svc.ready().await.unwrap().call(("a", Call::Fail)).await;
            assert_eq!(handle.get(&"a").unwrap().state(), CircuitState::Open);
            tokio::time::advance(Duration::from_secs(30)).await;
            // "a" is OPEN past its open duration; "b" makes the map look for room.
            let _ = svc.ready().await.unwrap().call(("b", Call::Ok)).await;
        });
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the keyed breaker deadlocked");
}

/// A probe that answers after the maximum wait in HALF_OPEN comes too late: HALF_OPEN has
/// ended (back to OPEN) whether or not anyone looked at the state in between, so the late
/// success does not close the breaker.
#[tokio::test(start_paused = true)]
async fn a_probe_that_answers_after_the_max_half_open_wait_does_not_close() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .max_half_open_wait(Duration::from_secs(5));
    let (mut svc, handle, _) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    // Nobody reads the state while the probe runs for 10 s.
    call(&mut svc, Call::Slow(10_000)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(open.state(), CircuitState::Open);
}

/// A HALF_OPEN refusal (every probe permit taken) says how long the period lasts at most
/// under `max_half_open_wait`, counted when the refusal is answered; without a maximum wait
/// the end is unknown, as it is in FORCED_OPEN.
#[tokio::test(start_paused = true)]
async fn a_half_open_refusal_carries_the_time_left_of_the_max_wait() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
        .max_half_open_wait(Duration::from_secs(10));
    let (mut svc, handle, upstream) = breaker(config);
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, Call::Gated).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(handle.snapshot().half_open_permits_taken, 1);

    tokio::time::advance(Duration::from_secs(4)).await;
    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(
        (open.state(), open.retry_after()),
        (CircuitState::HalfOpen, Some(Duration::from_secs(6)))
    );
    // Refused in `poll_ready`, answered in `call` 2.5 s later: the wait left then.
    let mut late = svc.clone();
    late.ready().await.unwrap();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    let open = open_error(late.call(Call::Ok).await);
    assert_eq!(open.retry_after(), Some(Duration::from_millis(3_500)));

    // The probe succeeds: CLOSED before the wait ran out.
    upstream.gate.add_permits(1);
    probe.await.unwrap().unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // Without a maximum wait, the end of HALF_OPEN is unknown.
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1);
    let (mut svc, handle, _) = breaker(config);
    handle.transition_to_open().unwrap();
    handle.transition_to_half_open().unwrap();
    let _probe = svc.ready().await.unwrap().call(Call::Gated);
    let open = open_error(call(&mut svc, Call::Ok).await);
    assert_eq!(
        (open.state(), open.retry_after()),
        (CircuitState::HalfOpen, None)
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_readied_before_the_breaker_opened_is_refused() {
    let (mut svc, handle, upstream) =
        breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    // Readied while CLOSED; a clone's failure opens the breaker before the call is made.
    let ready = svc.ready().await.unwrap();
    let _ = call(&mut ready.clone(), Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    let before = upstream.calls.load(Ordering::SeqCst);
    let refused = open_error(ready.call(Call::Ok).await);
    assert_eq!(refused.state(), CircuitState::Open);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before);
    assert_eq!(handle.snapshot().not_permitted_calls, 1);

    // A probe readied in a half-open period that has ended is refused too, and gives its
    // permit back.
    let (mut svc, handle, upstream) =
        breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    let _ = call(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let ready = svc.ready().await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    handle.transition_to_open().unwrap();
    let before = upstream.calls.load(Ordering::SeqCst);
    open_error(ready.call(Call::Ok).await);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), before);

    // Readied in a generation that ended in a new CLOSED one: the call is made, and counts.
    let (mut svc, handle, upstream) =
        breaker(CircuitBreakerConfig::default().consecutive_failures(1));
    let ready = svc.ready().await.unwrap();
    handle.transition_to_forced_open().unwrap();
    handle.transition_to_closed().unwrap();
    assert!(ready.call(Call::Fail).await.is_err());
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.state(), CircuitState::Open);
}
