//! Log output captured in memory, for tests that check what the crate logs.
//!
//! The tests of a binary run in parallel, and tracing caches, per callsite, whether any
//! subscriber wants its events; while at most one subscriber exists, it asks only the
//! subscriber of the thread that first reaches the callsite. A callsite first reached on a
//! thread without a subscriber, while one test captures on its own thread ([`Logs::capture`]),
//! is then cached as wanted by nobody, and that test misses its events. So before any
//! capture, the binary gets a global subscriber that wants every callsite and asks again at
//! each event: no callsite is cached as unwanted, and the subscriber of the thread the event
//! happens on decides. The global one writes nothing unless a test reads [`Logs::global`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_core::span::Current;

/// Captured log output.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// What was logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Captures this thread's log output until the guard is dropped.
    #[allow(dead_code)] // not every test file captures this way
    pub(crate) fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let guard = set_default(logs.subscriber());
        (logs, guard)
    }

    /// The INFO and higher lines of every thread of this test binary that no subscriber of
    /// its own captures, from the first call on. Tests pick out their own lines by what is
    /// unique to them.
    #[allow(dead_code)] // not every test binary reads the global log
    pub(crate) fn global() -> Self {
        let global = install();
        global.writing.store(true, Ordering::Release);
        global.logs.clone()
    }

    /// A subscriber that writes every level, without colours, here.
    #[allow(dead_code)] // not every test file sets its own subscriber
    pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Sets `subscriber` as this thread's until the guard is dropped, after the binary's global
/// subscriber (see the module's documentation).
#[allow(dead_code)] // not every test binary sets its own subscriber
pub(crate) fn set_default(
    subscriber: impl Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    install();
    let guard = tracing::subscriber::set_default(subscriber);
    // A callsite reached for the first time on another thread while the global subscriber
    // was being installed may have been cached with the answer of no subscriber at all.
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// The binary's global subscriber, installed on first use.
fn install() -> &'static Global {
    static GLOBAL: OnceLock<&'static Global> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let logs = Logs::default();
        let global: &'static Global = Box::leak(Box::new(Global {
            writing: AtomicBool::new(false),
            logs: logs.clone(),
        }));
        let fmt = tracing_subscriber::fmt()
            .with_writer(logs)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(Wants { global, fmt })
            .expect("no other global subscriber in a binary that captures logs");
        global
    })
}

/// What the global subscriber shares with [`Logs::global`].
struct Global {
    /// Whether a test reads the global log: until then, the global subscriber writes nothing.
    writing: AtomicBool,
    logs: Logs,
}

/// The global subscriber: wants every callsite, and writes to [`Logs::global`] once read.
struct Wants<S> {
    global: &'static Global,
    fmt: S,
}

impl<S: Subscriber> Subscriber for Wants<S> {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked again at each event, of the subscriber of the thread the event happens on.
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.global.writing.load(Ordering::Acquire) && self.fmt.enabled(metadata)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.fmt.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.fmt.record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.fmt.record_follows_from(span, follows)
    }

    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.fmt.event_enabled(event)
    }

    fn event(&self, event: &Event<'_>) {
        self.fmt.event(event)
    }

    fn enter(&self, span: &Id) {
        self.fmt.enter(span)
    }

    fn exit(&self, span: &Id) {
        self.fmt.exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.fmt.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.fmt.try_close(id)
    }

    fn current_span(&self) -> Current {
        self.fmt.current_span()
    }
}
