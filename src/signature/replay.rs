//! Replay protection: remembering delivery ids.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::clock::Clock;
use crate::BoxError;

/// Remembers delivery ids for a while, so a delivery is processed once.
///
/// [`insert`](ReplayStore::insert) must be atomic: of two concurrent inserts of one key, exactly
/// one reports it as new. [`MemoryReplayStore`] (the default) serves one process;
/// `RedisReplayStore` (feature `redis`) is shared by replicas.
///
/// Keys are `<provider>:<delivery id>`.
///
/// # Example
///
/// A store is any type with these two methods; this one forwards to the memory store:
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::signature::{MemoryReplayStore, ReplayFuture, ReplayStore};
///
/// #[derive(Debug, Default)]
/// struct Counting(MemoryReplayStore);
///
/// impl ReplayStore for Counting {
///     fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
///         self.0.insert(key, ttl)
///     }
///     fn remove(&self, key: &str) -> ReplayFuture {
///         self.0.remove(key)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = Counting::default();
/// assert!(store.insert("github:1", Duration::from_secs(60)).await.unwrap());
/// assert!(!store.insert("github:1", Duration::from_secs(60)).await.unwrap());
/// # }
/// ```
pub trait ReplayStore: Send + Sync + 'static {
    /// Records `key` for `ttl`. Resolves to `true` if it was new, `false` if it was already
    /// recorded and not expired.
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture;

    /// Forgets `key` (used when the inner service failed and the provider should be able to
    /// deliver again). Resolves to whether it was present.
    fn remove(&self, key: &str) -> ReplayFuture;

    /// Like [`insert`](ReplayStore::insert), for a delivery that is still being handled
    /// ([`RecordDelivery::AfterSuccess`]): until [`complete`](ReplayStore::complete) is called,
    /// [`completed`](ReplayStore::completed) reports it as in progress. `ttl` is the claim's
    /// own, short life (the layer's `claim_ttl`): a claim whose holder died (a crash) lets the
    /// delivery through again once it expires.
    ///
    /// The default is `insert`: a store that does not tell claims from completed deliveries
    /// reports every recorded key as completed.
    fn claim(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.insert(key, ttl)
    }

    /// The delivery that claimed `key` was handled (the inner service answered 2xx): `key` is
    /// now recorded as handled for `ttl` from now (the layer's `replay_ttl`). Resolves to whether
    /// the claim was still there. The default does nothing.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// assert!(store.claim("github:1", Duration::from_secs(300)).await.unwrap());
    /// assert!(!store.completed("github:1").await.unwrap()); // still being handled
    /// assert!(store.complete("github:1", Duration::from_secs(86_400)).await.unwrap());
    /// assert!(store.completed("github:1").await.unwrap());
    /// # }
    /// ```
    fn complete(&self, key: &str, ttl: Duration) -> ReplayFuture {
        let _ = (key, ttl);
        ReplayFuture::ready(Ok(true))
    }

    /// Whether `key` is recorded as handled: `false` while the delivery that claimed it is still
    /// being handled, or once it was released. The default answers `true`.
    fn completed(&self, key: &str) -> ReplayFuture {
        let _ = key;
        ReplayFuture::ready(Ok(true))
    }

    /// Whether this store tells claims from handled deliveries (it implements
    /// [`claim`](ReplayStore::claim), [`complete`](ReplayStore::complete) and
    /// [`completed`](ReplayStore::completed)). Only then does the layer give a claim its own
    /// short life and extend it on completion; otherwise the claim is recorded for the whole
    /// `replay_ttl` at once. The default is `false`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// assert!(MemoryReplayStore::new().tracks_claims());
    /// ```
    fn tracks_claims(&self) -> bool {
        false
    }
}

impl<T: ReplayStore + ?Sized> ReplayStore for Arc<T> {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        (**self).insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        (**self).remove(key)
    }
    fn claim(&self, key: &str, ttl: Duration) -> ReplayFuture {
        (**self).claim(key, ttl)
    }
    fn complete(&self, key: &str, ttl: Duration) -> ReplayFuture {
        (**self).complete(key, ttl)
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        (**self).completed(key)
    }
    fn tracks_claims(&self) -> bool {
        (**self).tracks_claims()
    }
}

/// The future a [`ReplayStore`] returns: ready at once (no allocation) or boxed.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::ReplayFuture;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(ReplayFuture::ready(Ok(true)).await.unwrap());
/// assert!(!ReplayFuture::new(async { Ok(false) }).await.unwrap());
/// # }
/// ```
pub struct ReplayFuture(Kind);

enum Kind {
    Ready(Option<Result<bool, BoxError>>),
    Boxed(Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>>),
}

impl ReplayFuture {
    /// A future already resolved to `result`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::ReplayFuture;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert!(ReplayFuture::ready(Ok(true)).await.unwrap());
    /// let failed = ReplayFuture::ready(Err("replay store is read-only".into()));
    /// assert_eq!(failed.await.unwrap_err().to_string(), "replay store is read-only");
    /// # }
    /// ```
    pub fn ready(result: Result<bool, BoxError>) -> Self {
        Self(Kind::Ready(Some(result)))
    }

    /// Wraps (and boxes) an asynchronous operation.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::ReplayFuture;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A store that asks a remote service: the answer arrives later.
    /// let lookup = ReplayFuture::new(async {
    ///     tokio::time::sleep(Duration::from_millis(1)).await;
    ///     Ok(false)
    /// });
    /// assert!(!lookup.await.unwrap());
    /// # }
    /// ```
    pub fn new(future: impl Future<Output = Result<bool, BoxError>> + Send + 'static) -> Self {
        Self(Kind::Boxed(Box::pin(future)))
    }
}

impl fmt::Debug for ReplayFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFuture").finish_non_exhaustive()
    }
}

impl Future for ReplayFuture {
    type Output = Result<bool, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Kind::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err("ReplayFuture polled after completion".into())),
            ),
            Kind::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

/// When a delivery id is recorded in the [`ReplayStore`].
///
/// See the [module docs](super#replay-protection).
///
/// ```
/// use tower_webhook::signature::{RecordDelivery, SignatureLayer};
///
/// // At most once, even if the handler fails: retries of a failed delivery are refused.
/// let layer = SignatureLayer::github("secret").unwrap().record_delivery(RecordDelivery::AfterVerification);
/// assert!(format!("{layer:?}").contains("record: AfterVerification"));
/// assert_eq!(RecordDelivery::default(), RecordDelivery::AfterSuccess);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordDelivery {
    /// As soon as the signature is valid: a delivery is handed to the inner service at most
    /// once. A delivery whose handler failed is lost: the provider's retries (Stripe, Svix) and
    /// redeliveries (GitHub reuses `X-GitHub-Delivery`) are refused as replays.
    AfterVerification,
    /// Claimed when the signature is valid (so concurrent duplicates are refused), kept if the
    /// inner service answers 2xx and released otherwise (a failure, a panic, an abandoned
    /// delivery): a provider's retry or redelivery of a failed delivery gets through (default).
    #[default]
    AfterSuccess,
}

/// What a delivery whose id was already recorded gets.
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::signature::{OnReplay, SignatureLayer};
///
/// // Duplicates are answered 200 and not processed twice.
/// let layer = SignatureLayer::github("secret").unwrap().on_replay(OnReplay::Acknowledge(StatusCode::OK));
/// assert!(format!("{layer:?}").contains("on_replay: Acknowledge(200)"));
/// assert_eq!(OnReplay::default(), OnReplay::Reject);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnReplay {
    /// `409 Conflict` with a [`REPLAYED_DELIVERY`](crate::error::types::REPLAYED_DELIVERY)
    /// problem (default).
    #[default]
    Reject,
    /// An empty response with this (2xx) status, without calling the inner service: the
    /// provider sees success and stops redelivering, and the work is not done twice.
    ///
    /// With [`RecordDelivery::AfterSuccess`], only copies of a delivery that was handled are
    /// acknowledged: a copy that arrives while the first attempt is still running gets the
    /// `409` of [`Reject`](OnReplay::Reject), so that if that attempt fails, the provider still
    /// delivers again. (This needs a store that tells claims from completed deliveries, as
    /// [`MemoryReplayStore`] and `RedisReplayStore` do.)
    Acknowledge(StatusCode),
}

/// The default [`ReplayStore`]: in memory, bounded, entries expire after their TTL.
///
/// When full, the oldest entry is evicted first. It serves one process: replicas behind a load
/// balancer need a shared store such as `RedisReplayStore` (feature `redis`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::signature::{MemoryReplayStore, ReplayStore, SignatureLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryReplayStore::with_capacity(10_000);
/// assert!(store.insert("github:abc", Duration::from_secs(60)).await.unwrap());
/// assert!(!store.insert("github:abc", Duration::from_secs(60)).await.unwrap());
/// assert_eq!(store.len(), 1);
///
/// let layer = SignatureLayer::github("secret").unwrap().replay_store(store);
/// # let _ = layer;
/// # }
/// ```
pub struct MemoryReplayStore {
    inner: Mutex<Entries>,
    capacity: usize,
    clock: Clock,
    /// A key is remembered as its 64-bit keyed fingerprint, so an insert allocates nothing and
    /// nobody can aim for collisions without the per-store key.
    hasher: RandomState,
}

/// The ids held, by fingerprint, and their insertion order.
#[derive(Default)]
struct Entries {
    table: Table,
    /// Insertion order, for expiry and eviction; may hold stale entries (removed or re-inserted
    /// keys), recognised by an expiry that differs from the table's.
    order: VecDeque<(u64, u64)>,
}

/// One slot of [`Table`]: a fingerprint (0 = empty) and its expiry in milliseconds since the
/// Unix epoch, whose top bit is [`PENDING`].
#[derive(Clone, Copy, Default)]
struct Slot {
    fp: u64,
    expiry: u64,
}

/// In a slot's expiry: the delivery that claimed the id is still being handled.
const PENDING: u64 = 1 << 63;

/// An open-addressing hash table of fingerprints, linear probing, kept at most half full, with
/// backward-shift deletion (no tombstones, so probe sequences stay short under constant churn).
///
/// Fingerprint and expiry share one 16-byte slot: a lookup touches one cache line, where a map
/// with separate control bytes and buckets touches two.
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    len: usize,
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, fp: u64) -> usize {
        // Fingerprints are uniformly distributed keyed hashes: their low bits are a fine index.
        (fp as usize) & self.mask()
    }

    /// `Ok(slot)` holding `fp`, or `Err(empty slot)` where it would go. The table is not empty.
    fn find(&self, fp: u64) -> Result<usize, usize> {
        let mut i = self.home(fp);
        loop {
            match self.slots[i].fp {
                f if f == fp => return Ok(i),
                0 => return Err(i),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    /// The expiry of `fp` and whether it is [`PENDING`].
    fn entry(&self, fp: u64) -> Option<(u64, bool)> {
        if self.slots.is_empty() {
            return None;
        }
        let raw = self.slots[self.find(fp).ok()?].expiry;
        Some((raw & !PENDING, raw & PENDING != 0))
    }

    fn get(&self, fp: u64) -> Option<u64> {
        self.entry(fp).map(|(expiry, _)| expiry)
    }

    /// Clears the [`PENDING`] mark of `fp` and gives it `expiry`; the expiry it had (without the
    /// mark), if it was there.
    fn complete(&mut self, fp: u64, expiry: u64) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.find(fp).ok()?;
        let previous = self.slots[i].expiry & !PENDING;
        self.slots[i].expiry = expiry & !PENDING;
        Some(previous)
    }

    fn insert(&mut self, fp: u64, expiry: u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.find(fp) {
            Ok(i) => self.slots[i].expiry = expiry,
            Err(i) => {
                self.slots[i] = Slot { fp, expiry };
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, fp: u64) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let found = self.find(fp).ok()?;
        let expiry = self.slots[found].expiry & !PENDING;
        // Shift back every following entry of the cluster whose probe path crosses the hole.
        let mask = self.mask();
        let mut hole = found;
        let mut j = (found + 1) & mask;
        loop {
            let slot = self.slots[j];
            if slot.fp == 0 {
                break;
            }
            let home = self.home(slot.fp);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
        Some(expiry)
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.fp != 0) {
            let i = self.find(slot.fp).unwrap_err();
            self.slots[i] = slot;
            self.len += 1;
        }
    }
}

/// Default capacity of [`MemoryReplayStore`].
///
/// # Example
///
/// ```
/// use tower_webhook::signature::{DEFAULT_REPLAY_CAPACITY, MemoryReplayStore};
///
/// assert_eq!(DEFAULT_REPLAY_CAPACITY, 100_000);
/// let store = MemoryReplayStore::new();
/// assert_eq!(format!("{store:?}"), "MemoryReplayStore { len: 0, capacity: 100000 }");
/// ```
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

impl MemoryReplayStore {
    /// A store of [`DEFAULT_REPLAY_CAPACITY`] entries.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let ttl = Duration::from_secs(24 * 60 * 60);
    /// assert!(store.insert("github:72d3162e", ttl).await.unwrap()); // new
    /// assert!(!store.insert("github:72d3162e", ttl).await.unwrap()); // a replay
    /// # }
    /// ```
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_REPLAY_CAPACITY)
    }

    /// A store holding at most `capacity` ids (at least 1).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::with_capacity(2);
    /// let ttl = Duration::from_secs(3600);
    /// for id in ["github:1", "github:2", "github:3"] {
    ///     assert!(store.insert(id, ttl).await.unwrap());
    /// }
    /// assert_eq!(store.len(), 2);
    /// // The oldest id was evicted to make room: it counts as new again.
    /// assert!(store.insert("github:1", ttl).await.unwrap());
    /// # }
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            clock: Clock::system(),
            hasher: RandomState::new(),
        }
    }

    /// Reads the time from `clock` (for tests).
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let secs = Arc::new(AtomicU64::new(1_700_000_000));
    /// let source = secs.clone();
    /// let clock = Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(source.load(Ordering::SeqCst)));
    /// let store = MemoryReplayStore::new().clock(clock);
    ///
    /// let ttl = Duration::from_secs(60);
    /// assert!(store.insert("stripe:evt_1", ttl).await.unwrap());
    /// assert!(!store.insert("stripe:evt_1", ttl).await.unwrap());
    /// secs.fetch_add(61, Ordering::SeqCst); // the TTL has passed
    /// assert!(store.insert("stripe:evt_1", ttl).await.unwrap());
    /// # }
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many ids are held (expired ones included until they are purged).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let ttl = Duration::from_secs(60);
    /// store.insert("github:1", ttl).await.unwrap();
    /// store.insert("gitlab:1", ttl).await.unwrap();
    /// assert_eq!(store.len(), 2);
    /// assert!(store.remove("github:1").await.unwrap());
    /// assert_eq!(store.len(), 1);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.lock().table.len
    }

    /// Whether no id is held.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// assert!(store.is_empty());
    /// store.insert("github:1", Duration::from_secs(60)).await.unwrap();
    /// assert!(!store.is_empty());
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the maps consistent enough to keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keyed fingerprint of `key`; never 0 (the empty slot).
    fn fingerprint(&self, key: &str) -> u64 {
        self.hasher.hash_one(key).max(1)
    }

    fn now_ms(&self) -> u64 {
        let since = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// `ttl` from `now`, in the table's milliseconds.
    fn expiry(now: u64, ttl: Duration) -> u64 {
        // The top bit is the pending mark: expiries stop short of it (292 million years).
        now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .min(PENDING - 1)
    }

    fn insert_now(&self, key: &str, ttl: Duration, pending: bool) -> bool {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let expiry = Self::expiry(now, ttl);
        let mut e = self.lock();
        let Entries { table, order } = &mut *e;
        if table.get(fp).is_some_and(|exp| exp > now) {
            return false;
        }
        // Purge expired entries at the front, then evict the oldest while full. An entry that is
        // neither expired nor needed for room ends the loop without a table lookup.
        while let Some(&(k, exp)) = order.front() {
            if exp > now && table.len < self.capacity {
                break;
            }
            if table.get(k) == Some(exp) {
                table.remove(k);
            }
            order.pop_front();
        }
        table.insert(fp, if pending { expiry | PENDING } else { expiry });
        Self::push_order(table, order, fp, expiry, self.capacity);
        true
    }

    /// Queues `fp`'s new `expiry` for purging; entries it replaces are skipped when they come up.
    fn push_order(
        table: &Table,
        order: &mut VecDeque<(u64, u64)>,
        fp: u64,
        expiry: u64,
        capacity: usize,
    ) {
        order.push_back((fp, expiry));
        if order.len() > 2 * capacity {
            order.retain(|&(k, exp)| table.get(k) == Some(exp));
        }
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(Ok(self.insert_now(key, ttl, false)))
    }

    fn remove(&self, key: &str) -> ReplayFuture {
        let fp = self.fingerprint(key);
        ReplayFuture::ready(Ok(self.lock().table.remove(fp).is_some()))
    }

    fn claim(&self, key: &str, ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(Ok(self.insert_now(key, ttl, true)))
    }

    fn complete(&self, key: &str, ttl: Duration) -> ReplayFuture {
        let fp = self.fingerprint(key);
        let expiry = Self::expiry(self.now_ms(), ttl);
        let mut e = self.lock();
        let Entries { table, order } = &mut *e;
        let previous = table.complete(fp, expiry);
        // An unchanged expiry is queued already: a second entry would never be purged.
        if previous.is_some_and(|previous| previous != expiry) {
            Self::push_order(table, order, fp, expiry, self.capacity);
        }
        ReplayFuture::ready(Ok(previous.is_some()))
    }

    fn completed(&self, key: &str) -> ReplayFuture {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let entry = self.lock().table.entry(fp);
        ReplayFuture::ready(Ok(
            entry.is_some_and(|(expiry, pending)| expiry > now && !pending)
        ))
    }

    fn tracks_claims(&self) -> bool {
        true
    }
}

#[cfg(feature = "redis")]
pub use self::redis_store::RedisReplayStore;

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use redis::aio::ConnectionManager;

    /// A [`ReplayStore`] in Redis, shared by every replica that points at the same server.
    ///
    /// Each id is one key, `SET <prefix><provider>:<id> <value> NX PX <ttl>`: atomic, and
    /// expired by Redis itself. The value is `pending` while a delivery that claimed the id is
    /// being handled (for the layer's `claim_ttl` at most), `1` once it was (then for its
    /// `replay_ttl`). If Redis cannot be
    /// reached, or does not answer within [`timeout`](RedisReplayStore::timeout), the delivery is
    /// refused with 503 and `Retry-After` (fail closed), so the provider delivers again later.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use tower_webhook::signature::{RedisReplayStore, SignatureLayer};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisReplayStore::connect("redis://127.0.0.1:6379/").await?;
    /// let layer = SignatureLayer::github("secret")?.replay_store(store);
    /// # let _ = layer; Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct RedisReplayStore {
        conn: ConnectionManager,
        prefix: Arc<str>,
        timeout: Duration,
        /// Bounds the tasks that wait for the late answer of a timed-out `SET`.
        late_answers: Arc<tokio::sync::Semaphore>,
    }

    impl RedisReplayStore {
        /// Uses an existing connection manager. Keys are prefixed with `tower-webhook:replay:`.
        ///
        /// # Example
        ///
        /// ```no_run
        /// use redis::aio::ConnectionManager;
        /// use tower_webhook::signature::{RedisReplayStore, SignatureLayer};
        ///
        /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
        /// let conn = ConnectionManager::new(client).await?; // may be shared with the rest of the app
        /// let store = RedisReplayStore::new(conn);
        /// assert!(format!("{store:?}").contains("tower-webhook:replay:"));
        /// let layer = SignatureLayer::github("secret")?.replay_store(store);
        /// # let _ = layer; Ok(()) }
        /// ```
        pub fn new(conn: ConnectionManager) -> Self {
            Self {
                conn,
                prefix: Arc::from("tower-webhook:replay:"),
                timeout: DEFAULT_TIMEOUT,
                late_answers: Arc::new(tokio::sync::Semaphore::new(MAX_LATE_ANSWERS)),
            }
        }

        /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`) with a reconnecting manager. A lost
        /// connection is tried again at most every second (redis' default backoff grows to a
        /// minute), and each attempt gives up after the [default timeout](Self::timeout), so
        /// deliveries go through again soon after Redis is back.
        ///
        /// # Example
        ///
        /// ```no_run
        /// use std::time::Duration;
        /// use tower_webhook::signature::{RedisReplayStore, ReplayStore};
        ///
        /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_webhook::BoxError> {
        /// let store = RedisReplayStore::connect("redis://127.0.0.1:6379/").await?;
        /// let ttl = Duration::from_secs(24 * 60 * 60);
        /// assert!(store.insert("github:72d3162e", ttl).await?);
        /// assert!(!store.insert("github:72d3162e", ttl).await?);
        /// # Ok(()) }
        /// ```
        pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
            let client = redis::Client::open(url)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_max_delay(MAX_RECONNECT_DELAY_MS)
                .set_connection_timeout(DEFAULT_TIMEOUT);
            Ok(Self::new(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }

        /// Prefixes every key with `prefix` instead of `tower-webhook:replay:`.
        ///
        /// # Example
        ///
        /// ```no_run
        /// use tower_webhook::signature::RedisReplayStore;
        ///
        /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// // Two bots sharing one Redis keep their delivery ids apart.
        /// let store = RedisReplayStore::connect("redis://127.0.0.1:6379/").await?.prefix("review-bot:replay:");
        /// assert!(format!("{store:?}").contains("review-bot:replay:"));
        /// # Ok(()) }
        /// ```
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = Arc::from(prefix.into());
            self
        }

        /// How long one operation may take (default 2 s), reconnecting included. Past it the
        /// delivery is refused with 503 and `Retry-After`, as when Redis cannot be reached, so a
        /// Redis that hangs does not hang requests.
        ///
        /// # Example
        ///
        /// ```no_run
        /// use std::time::Duration;
        /// use tower_webhook::signature::RedisReplayStore;
        ///
        /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let store = RedisReplayStore::connect("redis://127.0.0.1:6379/").await?.timeout(Duration::from_millis(500));
        /// assert!(format!("{store:?}").contains("500ms"));
        /// # Ok(()) }
        /// ```
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }
    }

    impl fmt::Debug for RedisReplayStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisReplayStore")
                .field("prefix", &self.prefix)
                .field("timeout", &self.timeout)
                .finish_non_exhaustive()
        }
    }

    /// The longest TTL sent to Redis: 100 years, in milliseconds.
    const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    /// The value of a handled delivery's key.
    const DONE: &str = "1";
    /// The value of a key claimed by a delivery still being handled.
    const PENDING_VALUE: &str = "pending";
    /// How long one operation may take by default.
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Longest wait between two attempts to reconnect, in milliseconds.
    const MAX_RECONNECT_DELAY_MS: u64 = 1000;
    /// Timed-out `SET`s whose late answer is waited for at once, per store (and its clones).
    const MAX_LATE_ANSWERS: usize = 1024;

    /// An error instead of a panic where no tokio runtime runs (a response future dropped
    /// elsewhere finishes its store operation at once): the timer needs one.
    fn runtime() -> Result<(), BoxError> {
        tokio::runtime::Handle::try_current()
            .map(drop)
            .map_err(|_| "no tokio runtime to run the Redis operation on".into())
    }

    /// `command` on `conn`, or an error once `timeout` has passed.
    async fn query<T: redis::FromRedisValue>(
        command: redis::Cmd,
        mut conn: ConnectionManager,
        timeout: Duration,
    ) -> Result<T, BoxError> {
        runtime()?;
        match tokio::time::timeout(timeout, command.query_async(&mut conn)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(timed_out(timeout)),
        }
    }

    fn timed_out(timeout: Duration) -> BoxError {
        format!("Redis did not answer within {timeout:?}").into()
    }

    impl RedisReplayStore {
        fn key(&self, key: &str) -> String {
            format!("{}{}", self.prefix, key)
        }

        /// `SET key value NX PX ttl`: whether the key was new.
        fn set_new(&self, key: &str, ttl: Duration, value: &'static str) -> ReplayFuture {
            let conn = self.conn.clone();
            let key = self.key(key);
            let timeout = self.timeout;
            let late_answers = Arc::clone(&self.late_answers);
            // Redis refuses expiry times past its own range: very long TTLs are capped at a
            // century, which is forever for a delivery id.
            let ms = u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_TTL_MS);
            ReplayFuture::new(async move {
                runtime()?;
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(value).arg("NX").arg("PX").arg(ms);
                let mut answer = Box::pin({
                    let mut conn = conn.clone();
                    async move { set.query_async::<Option<String>>(&mut conn).await }
                });
                match tokio::time::timeout(timeout, answer.as_mut()).await {
                    Ok(set) => Ok(set?.is_some()),
                    Err(_) => {
                        // The delivery is refused, but Redis may still carry the command out
                        // later: the key is then deleted again, or the provider's retry of this
                        // delivery would be refused as a replay until the key expires. While
                        // Redis hangs, at most `MAX_LATE_ANSWERS` such waits are kept.
                        let Ok(permit) = late_answers.try_acquire_owned() else {
                            tracing::warn!(%key, "Redis keeps timing out; if it still records this delivery id, a redelivery will be treated as a replay until it expires");
                            return Err(timed_out(timeout));
                        };
                        tokio::spawn(async move {
                            let _permit = permit;
                            let late = Duration::from_millis(ms);
                            if let Ok(Ok(Some(_))) = tokio::time::timeout(late, answer).await {
                                let mut del = redis::cmd("DEL");
                                del.arg(&key);
                                let _ = query::<u64>(del, conn, timeout).await;
                            }
                        });
                        Err(timed_out(timeout))
                    }
                }
            })
        }
    }

    impl ReplayStore for RedisReplayStore {
        fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
            self.set_new(key, ttl, DONE)
        }

        fn claim(&self, key: &str, ttl: Duration) -> ReplayFuture {
            self.set_new(key, ttl, PENDING_VALUE)
        }

        fn complete(&self, key: &str, ttl: Duration) -> ReplayFuture {
            let ms = u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_TTL_MS);
            let mut command = redis::cmd("SET");
            command
                .arg(self.key(key))
                .arg(DONE)
                .arg("XX")
                .arg("PX")
                .arg(ms);
            let answer = query::<Option<String>>(command, self.conn.clone(), self.timeout);
            ReplayFuture::new(async move { Ok(answer.await?.is_some()) })
        }

        fn completed(&self, key: &str) -> ReplayFuture {
            let mut command = redis::cmd("GET");
            command.arg(self.key(key));
            let answer = query::<Option<String>>(command, self.conn.clone(), self.timeout);
            ReplayFuture::new(async move { Ok(answer.await?.is_some_and(|v| v != PENDING_VALUE)) })
        }

        fn remove(&self, key: &str) -> ReplayFuture {
            let mut command = redis::cmd("DEL");
            command.arg(self.key(key));
            let answer = query::<u64>(command, self.conn.clone(), self.timeout);
            ReplayFuture::new(async move { Ok(answer.await? > 0) })
        }

        fn tracks_claims(&self) -> bool {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64, bool),
        Remove(u64),
        Get(u64),
        Complete(u64, u64),
    }

    fn op(keys: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..=keys, 0..PENDING, any::<bool>()).prop_map(|(k, e, p)| Op::Insert(k, e, p)),
            2 => (1..=keys).prop_map(Op::Remove),
            2 => (1..=keys).prop_map(Op::Get),
            1 => (1..=keys, 0..PENDING).prop_map(|(k, e)| Op::Complete(k, e)),
        ]
    }

    proptest! {
        // Small key spaces with keys chosen to share home slots: long clusters that wrap around
        // the end of the table, the cases backward-shift deletion must get right.
        #[test]
        fn table_behaves_like_a_map(
            ops in proptest::collection::vec(op(40), 1..400),
            spread in prop_oneof![Just(1u64), Just(16), Just(1 << 20)],
        ) {
            let mut table = Table::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, e, pending) => {
                        table.insert(k * spread, if pending { e | PENDING } else { e });
                        model.insert(k * spread, (e, pending));
                    }
                    Op::Remove(k) => prop_assert_eq!(
                        table.remove(k * spread),
                        model.remove(&(k * spread)).map(|(e, _)| e)
                    ),
                    Op::Get(k) => {
                        prop_assert_eq!(table.entry(k * spread), model.get(&(k * spread)).copied());
                        prop_assert_eq!(table.get(k * spread), model.get(&(k * spread)).map(|v| v.0));
                    }
                    Op::Complete(k, e) => {
                        let had = model
                            .get_mut(&(k * spread))
                            .map(|v| *v = (e, false))
                            .is_some();
                        prop_assert_eq!(table.complete(k * spread, e).is_some(), had);
                    }
                }
                prop_assert_eq!(table.len, model.len());
                prop_assert!(table.len * 2 <= table.slots.len());
            }
            for (k, e) in &model {
                prop_assert_eq!(table.entry(*k), Some(*e));
            }
        }

        // The store against the same policy written over plain keys: expired ids come again,
        // the oldest is evicted when full, removed ids come again, never more than `capacity`.
        #[test]
        fn store_follows_the_policy(
            steps in proptest::collection::vec((0u8..12, 0u64..4, 1u64..6, any::<bool>()), 1..300),
            capacity in 1usize..6,
        ) {
            let now = Arc::new(AtomicU64::new(1_000_000));
            let n = now.clone();
            let store = MemoryReplayStore::with_capacity(capacity)
                .clock(Clock::from_fn(move || SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))));
            let mut map: HashMap<String, u64> = HashMap::new();
            let mut order: VecDeque<(String, u64)> = VecDeque::new();
            for (key, advance, ttl, remove) in steps {
                let t = now.fetch_add(advance, Ordering::SeqCst) + advance;
                let key = format!("github:{key}");
                if remove {
                    let got = block_on(store.remove(&key));
                    prop_assert_eq!(got, map.remove(&key).is_some());
                    continue;
                }
                let expected = if map.get(&key).is_some_and(|&e| e > t) {
                    false
                } else {
                    while let Some((k, e)) = order.front().cloned() {
                        if e > t && map.len() < capacity {
                            break;
                        }
                        if map.get(&k) == Some(&e) {
                            map.remove(&k);
                        }
                        order.pop_front();
                    }
                    map.insert(key.clone(), t + ttl);
                    order.push_back((key.clone(), t + ttl));
                    true
                };
                prop_assert_eq!(block_on(store.insert(&key, Duration::from_millis(ttl))), expected);
                prop_assert!(store.len() <= capacity);
                prop_assert_eq!(store.len(), map.len());
            }
        }
    }

    fn block_on(mut future: ReplayFuture) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(result) => result.unwrap(),
            Poll::Pending => panic!("the memory store answers at once"),
        }
    }

    #[test]
    fn churn_past_capacity_keeps_the_table_small() {
        let store = MemoryReplayStore::with_capacity(1_000);
        for i in 0..50_000 {
            assert!(block_on(
                store.insert(&format!("github:{i}"), Duration::from_secs(60))
            ));
        }
        let e = store.lock();
        assert_eq!(e.table.len, 1_000);
        assert_eq!(e.table.slots.len(), 2_048);
        assert!(e.order.len() <= 2_000);
        drop(e);
        // The newest ids are still known, the oldest were evicted.
        assert!(!block_on(
            store.insert("github:49999", Duration::from_secs(60))
        ));
        assert!(block_on(store.insert("github:0", Duration::from_secs(60))));
    }

    #[test]
    fn claims_are_in_progress_until_completed_and_expire_like_ids() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let store = MemoryReplayStore::with_capacity(10).clock(Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
        }));
        let ttl = Duration::from_secs(1);
        assert!(block_on(store.claim("github:a", ttl)));
        assert!(!block_on(store.claim("github:a", ttl)));
        assert!(!block_on(store.insert("github:a", ttl)));
        assert!(!block_on(store.completed("github:a")), "in progress");
        assert!(block_on(store.complete("github:a", ttl)));
        assert!(block_on(store.completed("github:a")));
        assert!(
            !block_on(store.claim("github:a", ttl)),
            "handled ids stay recorded"
        );
        // Released, unknown and expired ids are not handled, and can be claimed again.
        assert!(block_on(store.claim("github:b", ttl)));
        assert!(block_on(store.remove("github:b")));
        assert!(!block_on(store.completed("github:b")));
        assert!(!block_on(store.complete("github:b", ttl)));
        assert!(!block_on(store.completed("github:never")));
        assert!(block_on(store.insert("github:c", ttl)));
        assert!(
            block_on(store.completed("github:c")),
            "inserted ids are handled"
        );
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(!block_on(store.completed("github:a")), "expired");
        assert!(block_on(store.claim("github:a", ttl)));
        assert!(!block_on(store.completed("github:a")));
        // The longest TTL keeps the pending mark apart from the expiry.
        assert!(block_on(store.claim("github:d", Duration::MAX)));
        assert!(!block_on(store.completed("github:d")));
        assert!(block_on(store.complete("github:d", Duration::MAX)));
        assert!(block_on(store.completed("github:d")));
        // A short claim, completed for longer: the id is remembered for the longer time.
        assert!(block_on(store.claim("github:e", ttl)));
        assert!(block_on(
            store.complete("github:e", Duration::from_secs(10))
        ));
        now.fetch_add(5_000, Ordering::SeqCst);
        assert!(block_on(store.completed("github:e")));
        assert!(!block_on(store.claim("github:e", ttl)));
        // A claim that is never completed (its holder died) lets the id through once it expires.
        assert!(block_on(store.claim("github:f", ttl)));
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(block_on(store.claim("github:f", ttl)));
    }

    #[test]
    fn completing_with_an_unchanged_expiry_queues_nothing() {
        // A frozen clock: the claim and its completions fall in the same millisecond.
        let store = MemoryReplayStore::with_capacity(2).clock(Clock::from_fn(|| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30)
        }));
        let ttl = Duration::from_secs(60);
        assert!(block_on(store.claim("github:a", ttl)));
        for _ in 0..100 {
            assert!(block_on(store.complete("github:a", ttl)));
        }
        assert_eq!(store.lock().order.len(), 1);
        assert!(block_on(store.completed("github:a")));
    }
}
