//! Replay protection: remembering delivery ids.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
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
}

impl<T: ReplayStore + ?Sized> ReplayStore for Arc<T> {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        (**self).insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        (**self).remove(key)
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
    pub fn ready(result: Result<bool, BoxError>) -> Self {
        Self(Kind::Ready(Some(result)))
    }

    /// Wraps (and boxes) an asynchronous operation.
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
/// // GitHub's "Redeliver" reuses the delivery id: let failed deliveries through again.
/// let layer = SignatureLayer::github("secret").unwrap().record_delivery(RecordDelivery::AfterSuccess);
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordDelivery {
    /// As soon as the signature is valid (default): a delivery is handed to the inner service
    /// at most once.
    #[default]
    AfterVerification,
    /// Claimed when the signature is valid (so concurrent duplicates are refused), and released
    /// again unless the inner service answers 2xx: a provider's redelivery of a failed delivery
    /// (GitHub reuses `X-GitHub-Delivery`) gets through.
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
/// # let _ = layer;
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
    /// Two independently keyed hashers: a key is remembered as its 128-bit keyed fingerprint,
    /// so an insert allocates nothing and an attacker cannot aim for collisions.
    hashers: (RandomState, RandomState),
}

/// Expiry times in milliseconds since the Unix epoch, by key fingerprint.
#[derive(Default)]
struct Entries {
    map: HashMap<u128, u64, BuildHasherDefault<FingerprintHasher>>,
    /// Insertion order, for expiry and eviction; may hold stale entries (removed or re-inserted
    /// keys), recognised by an expiry that differs from the map's.
    order: VecDeque<(u128, u64)>,
}

/// The fingerprints are already keyed hashes: use their low bits as the hash.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// Default capacity of [`MemoryReplayStore`].
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

impl MemoryReplayStore {
    /// A store of [`DEFAULT_REPLAY_CAPACITY`] entries.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_REPLAY_CAPACITY)
    }

    /// A store holding at most `capacity` ids (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            clock: Clock::system(),
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    /// Reads the time from `clock` (for tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many ids are held (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the maps consistent enough to keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fingerprint(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn now_ms(&self) -> u64 {
        let since = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn insert_now(&self, key: &str, ttl: Duration) -> bool {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let expiry = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut e = self.lock();
        let Entries { map, order } = &mut *e;
        if map.get(&fp).is_some_and(|&exp| exp > now) {
            return false;
        }
        // Purge expired entries at the front, then evict the oldest while full.
        while let Some(&(k, exp)) = order.front() {
            let live = map.get(&k) == Some(&exp);
            if live && exp > now && map.len() < self.capacity {
                break;
            }
            if live {
                map.remove(&k);
            }
            order.pop_front();
        }
        map.insert(fp, expiry);
        order.push_back((fp, expiry));
        if order.len() > 2 * self.capacity {
            order.retain(|(k, exp)| map.get(k) == Some(exp));
        }
        true
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
        ReplayFuture::ready(Ok(self.insert_now(key, ttl)))
    }

    fn remove(&self, key: &str) -> ReplayFuture {
        let fp = self.fingerprint(key);
        ReplayFuture::ready(Ok(self.lock().map.remove(&fp).is_some()))
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
    /// Each id is one key, `SET <prefix><provider>:<id> 1 NX PX <ttl>`: atomic, and expired by
    /// Redis itself. If Redis cannot be reached the delivery is refused with 503 and
    /// `Retry-After` (fail closed), so the provider delivers again later.
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
    }

    impl RedisReplayStore {
        /// Uses an existing connection manager. Keys are prefixed with `tower-webhook:replay:`.
        pub fn new(conn: ConnectionManager) -> Self {
            Self {
                conn,
                prefix: Arc::from("tower-webhook:replay:"),
            }
        }

        /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`) with a reconnecting manager.
        pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
            let client = redis::Client::open(url)?;
            Ok(Self::new(ConnectionManager::new(client).await?))
        }

        /// Prefixes every key with `prefix` instead of `tower-webhook:replay:`.
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = Arc::from(prefix.into());
            self
        }
    }

    impl fmt::Debug for RedisReplayStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisReplayStore")
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl ReplayStore for RedisReplayStore {
        fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
            let mut conn = self.conn.clone();
            let key = format!("{}{}", self.prefix, key);
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            ReplayFuture::new(async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await?;
                Ok(set.is_some())
            })
        }

        fn remove(&self, key: &str) -> ReplayFuture {
            let mut conn = self.conn.clone();
            let key = format!("{}{}", self.prefix, key);
            ReplayFuture::new(async move {
                let n: u64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
                Ok(n > 0)
            })
        }
    }
}
