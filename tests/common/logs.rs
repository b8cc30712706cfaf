//! Log output captured in memory, for tests that check what the crate logs.

use std::sync::{Arc, Mutex};

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
        let guard = tracing::subscriber::set_default(logs.subscriber());
        // A callsite first reached on another thread while this subscriber was being set (the
        // tests of a binary run in parallel) can stay cached as disabled: its interest
        // was computed before this subscriber existed, and stored after the cache was rebuilt
        // for it. Rebuilt once more, every callsite known by now sees this subscriber.
        tracing::callsite::rebuild_interest_cache();
        (logs, guard)
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
