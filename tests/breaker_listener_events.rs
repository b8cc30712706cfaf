//! Regressions of the circuit breaker: the events a listener is told (their order, one
//! exceeded threshold per trip), gRPC's pushback in the trailers, and what a full keyed
//! breaker logs.
//!
//! Its own test binary: it sets a global log subscriber, which would format the events of every
//! other test in a shared binary (a million transitions' worth in the breaker's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitEvent, CircuitState,
    OpenDuration,
};

#[path = "common/logs.rs"]
mod logs;
#[path = "common/trailer_body.rs"]
mod trailer_body;
use trailer_body::TrailerBody;

/// The transitions a listener was told of, in the order it was told.
type Told = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

/// Sets, once, a global subscriber that takes every event (and drops it). The tests run on
/// parallel threads of one process and hit the same log callsites; one first reached on a
/// thread without any subscriber, while another thread installs its own, could be cached as
/// disabled, and the test that reacts to that event would never see it.
fn log_sink() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sink = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _ = tracing::subscriber::set_global_default(sink);
    });
}

fn told_breaker(config: CircuitBreakerConfig) -> (CircuitBreakerHandle, Told) {
    let told: Told = Arc::default();
    let seen = told.clone();
    let config = config.on_event(move |event| {
        if let CircuitEvent::StateTransition { from, to, .. } = event {
            seen.lock().unwrap().push((*from, *to));
        }
    });
    let (_layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    (handle, told)
}

/// Each transition the listener is told of starts where the one before it ended, and the
/// last one ends in the breaker's state.
fn assert_told_in_order(told: &Told, handle: &CircuitBreakerHandle) {
    let told = told.lock().unwrap();
    for pair in told.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "transition {:?} told after {:?}: out of order",
            pair[1], pair[0]
        );
    }
    let last = told.last().expect("no transition told").1;
    assert_eq!(last, handle.snapshot().state, "the last transition told");
    assert_eq!(
        told.len() as u32,
        handle.snapshot().generation,
        "one event per transition"
    );
}

/// Transitions made by two threads at once reach the listener in the order they happened:
/// a status page or gauge fed by the listener ends on the breaker's real state.
#[test]
fn transitions_racing_on_two_threads_are_told_in_order() {
    log_sink();
    let (handle, told) = told_breaker(CircuitBreakerConfig::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    std::thread::scope(|scope| {
        for targets in [
            [CircuitState::ForcedOpen, CircuitState::Closed],
            [CircuitState::Disabled, CircuitState::Open],
        ] {
            let handle = handle.clone();
            let enter = runtime.handle().clone();
            scope.spawn(move || {
                let _guard = enter.enter();
                for i in 0..20_000 {
                    let _ = handle.transition_to(targets[i % 2]);
                }
            });
        }
    });
    assert_told_in_order(&told, &handle);
}

/// The same interleaving made deterministic: a transition that runs while another one's
/// event is not yet delivered (here started by a `tracing` subscriber that logs the first)
/// is told after it.
#[test]
fn a_transition_started_before_the_previous_one_is_told_comes_after_it() {
    log_sink();
    use tracing_subscriber::layer::SubscriberExt;

    struct ResetOnOpen {
        handle: CircuitBreakerHandle,
        done: AtomicBool,
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ResetOnOpen {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().level() == &tracing::Level::WARN
                && !self.done.swap(true, Ordering::SeqCst)
            {
                // Another part of the program resets the breaker as soon as it opens.
                self.handle.reset();
            }
        }
    }

    let (handle, told) = told_breaker(CircuitBreakerConfig::default());
    let subscriber = tracing_subscriber::registry().with(ResetOnOpen {
        handle: handle.clone(),
        done: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    tracing::subscriber::with_default(subscriber, || {
        handle.transition_to_open().unwrap();
    });
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(
        *told.lock().unwrap(),
        [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::Closed)
        ]
    );
    assert_told_in_order(&told, &handle);
}

/// gRPC's `Retry-After` is `grpc-retry-pushback-ms`; a server that has sent messages (or
/// sends its status apart from its headers) puts it in the trailers, next to its
/// `UNAVAILABLE`. The breaker stays open as long as it asks, as for a trailers-only answer.
#[tokio::test(start_paused = true)]
async fn a_grpc_pushback_in_the_trailers_keeps_the_breaker_open_as_asked() {
    log_sink();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(5)))
        .honor_retry_after(Duration::from_secs(600));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<()>| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            trailers.insert("grpc-retry-pushback-ms", HeaderValue::from_static("90000"));
            let mut res = Response::new(TrailerBody {
                data: Some(Bytes::from_static(b"\0\0\0\0\0")),
                trailers: Some(trailers),
            });
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok::<_, BoxError>(res)
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().retry_after_ms, Some(90_000));
}

/// Failures that complete together on several threads, while the listener is still being
/// told the first one exceeded the threshold: the breaker opens once, and the listener
/// hears once that a threshold was exceeded, as resilience4j tells it once per trip.
#[test]
fn failures_completing_together_report_one_exceeded_threshold_per_trip() {
    log_sink();
    use futures_util::FutureExt;
    use tower::Service;
    use tower_webhook::circuit_breaker::Outcome;

    const THREADS: usize = 4;
    let exceeded = Arc::new(Mutex::new(0u32));
    let opened = Arc::new(Mutex::new(0u32));
    let (seen_exceeded, seen_opened) = (exceeded.clone(), opened.clone());
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .on_event(move |event| match event {
            CircuitEvent::ThresholdExceeded { .. } => {
                *seen_exceeded.lock().unwrap() += 1;
                // A listener that takes a moment (a log line, a channel send).
                std::thread::sleep(Duration::from_millis(20));
            }
            CircuitEvent::StateTransition {
                to: CircuitState::Open,
                ..
            } => *seen_opened.lock().unwrap() += 1,
            _ => {}
        });
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Failure))
        .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (mut svc, barrier, enter) = (svc.clone(), &barrier, runtime.handle().clone());
            scope.spawn(move || {
                let _guard = enter.enter();
                // Every call is admitted while CLOSED, then they all complete together.
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .now_or_never()
                    .unwrap()
                    .unwrap();
                let call = svc.call(());
                barrier.wait();
                call.now_or_never().unwrap().unwrap();
            });
        }
    });
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(*opened.lock().unwrap(), 1);
    assert_eq!(*exceeded.lock().unwrap(), 1, "threshold exceeded events");
}

/// A keyed breaker whose every slot holds an open breaker sends new keys to its overflow
/// breaker, and says so once, not once per request: keys come from requests (hosts,
/// repositories), and a flood of new ones must not flood the log. Once a key finds a slot
/// again, the next time it is full is told again.
#[tokio::test(start_paused = true)]
async fn a_full_keyed_breaker_warns_once_per_time_it_is_full() {
    use tower_webhook::circuit_breaker::KeyedCircuitBreakerLayer;
    log_sink();
    let logs = logs::Logs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .name("hosts");
    let key = |req: &Request<(String, u16)>| req.body().0.clone();
    let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 2, key).unwrap();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|req: Request<(String, u16)>| async move {
                let mut res = Response::new(String::new());
                *res.status_mut() = http::StatusCode::from_u16(req.body().1)?;
                Ok::<_, BoxError>(res)
            });
    let mut hit = async |host: String, status: u16| {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new((host, status)))
            .await
    };
    let warnings = || logs.text().matches("keyed circuit breaker is full").count();
    // Two open breakers fill it.
    hit("a".into(), 500).await.unwrap();
    hit("b".into(), 500).await.unwrap();
    assert_eq!(warnings(), 0);
    for i in 0..50 {
        let _ = hit(format!("new-{i}"), 200).await;
    }
    assert_eq!(warnings(), 1, "{}", logs.text());
    // A slot comes free (a's breaker closes and is idle): the next new key takes it.
    handle.get(&"a".to_owned()).unwrap().reset();
    hit("c".into(), 500).await.unwrap();
    assert!(handle.get(&"c".to_owned()).is_some());
    for i in 50..100 {
        let _ = hit(format!("new-{i}"), 200).await;
    }
    assert_eq!(warnings(), 2, "{}", logs.text());
}
