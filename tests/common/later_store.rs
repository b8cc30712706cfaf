//! A replay store whose every answer comes later, for the tests of settling a delivery id at
//! the end of a gRPC body (`sig_grpc_trailers`, `sig_grpc_web_trailers`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tower_webhook::signature::{ClaimToken, MemoryReplayStore, ReplayFuture, ReplayStore};

/// A store whose every answer comes later: each operation is pending once before the in-memory
/// store's answer, and with a gate, `complete` also waits until the test opens it.
#[derive(Clone)]
pub(crate) struct Later {
    pub(crate) inner: Arc<MemoryReplayStore>,
    pub(crate) gate: Option<Gate>,
}

#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) started: mpsc::UnboundedSender<()>,
    pub(crate) open: Arc<Semaphore>,
}

impl Later {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(MemoryReplayStore::new()),
            gate: None,
        }
    }
}

/// Pending once (waking its task at once), then `answer`'s answer.
fn later(answer: ReplayFuture) -> ReplayFuture {
    struct PendingOnce(bool);
    impl Future for PendingOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    ReplayFuture::new(async move {
        PendingOnce(false).await;
        answer.await
    })
}

impl ReplayStore for Later {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        later(self.inner.insert(key, ttl))
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        later(self.inner.remove(key))
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        later(self.inner.claim(key, token, ttl))
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let Some(gate) = self.gate.clone() else {
            return later(self.inner.complete(key, token, ttl));
        };
        let (inner, key) = (Arc::clone(&self.inner), key.to_owned());
        ReplayFuture::new(async move {
            let _ = gate.started.send(());
            gate.open.acquire().await.unwrap().forget();
            inner.complete(&key, token, ttl).await
        })
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        later(self.inner.release(key, token))
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        later(self.inner.completed(key))
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}
