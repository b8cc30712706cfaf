//! Replay protection: remembering delivery ids.

use std::cmp::Reverse;
use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use sync_wrapper::SyncWrapper;

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
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture;

    /// Forgets `key` (used when the inner service failed and the provider should be able to
    /// deliver again). Resolves to whether it was present.
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
    /// assert!(store.insert("github:1", ttl).await.unwrap());
    /// assert!(store.remove("github:1").await.unwrap());
    /// assert!(!store.remove("github:1").await.unwrap()); // no longer there
    /// assert!(store.insert("github:1", ttl).await.unwrap()); // new again
    /// # }
    /// ```
    fn remove(&self, key: &str) -> ReplayFuture;

    /// Like [`insert`](ReplayStore::insert), for a delivery that is still being handled
    /// ([`RecordDelivery::AfterSuccess`]): until [`complete`](ReplayStore::complete) is called,
    /// [`completed`](ReplayStore::completed) reports it as in progress. `ttl` is the claim's
    /// own, short life (the layer's `claim_ttl`): a claim whose holder died (a crash) lets the
    /// delivery through again once it expires.
    ///
    /// `token` names this claim: only [`complete`](ReplayStore::complete) and
    /// [`release`](ReplayStore::release) with the same token act on it. A handler that outlives
    /// its claim cannot then settle the claim another delivery of the id took after it expired.
    ///
    /// When it resolves to an error, the layer refuses the delivery (503) and, for a store that
    /// [tracks claims](ReplayStore::tracks_claims), calls `release` with the same token, in case
    /// the claim was recorded all the same (an answer lost on the way back): `release` then
    /// answers `false` for a claim that was never taken.
    ///
    /// The default is `insert`: a store that does not tell claims from completed deliveries
    /// reports every recorded key as completed.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{ClaimToken, MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let claim_ttl = Duration::from_secs(300);
    /// assert!(store.claim("github:1", ClaimToken::unique(), claim_ttl).await.unwrap());
    /// // A copy that arrives while the first delivery is handled finds the id taken.
    /// assert!(!store.claim("github:1", ClaimToken::unique(), claim_ttl).await.unwrap());
    /// assert!(!store.completed("github:1").await.unwrap());
    /// # }
    /// ```
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let _ = token;
        self.insert(key, ttl)
    }

    /// The delivery that claimed `key` with `token` was handled (the inner service answered
    /// 2xx): `key` is now recorded as handled for `ttl` from now (the layer's `replay_ttl`).
    ///
    /// Resolves to `true` if it is recorded by this call: the claim was still this token's, or
    /// nothing live holds the id any more (this claim expired, and so did any other delivery's
    /// since). A claim another delivery holds now, or an id already recorded as handled, is left
    /// alone (`false`). The default does
    /// nothing and answers `true`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{ClaimToken, MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let (mine, theirs) = (ClaimToken::unique(), ClaimToken::unique());
    /// assert!(store.claim("github:1", mine, Duration::from_secs(300)).await.unwrap());
    /// assert!(!store.completed("github:1").await.unwrap()); // still being handled
    /// // Only the claim's own token settles it.
    /// assert!(!store.complete("github:1", theirs, Duration::from_secs(86_400)).await.unwrap());
    /// assert!(store.complete("github:1", mine, Duration::from_secs(86_400)).await.unwrap());
    /// assert!(store.completed("github:1").await.unwrap());
    /// # }
    /// ```
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let _ = (key, token, ttl);
        ReplayFuture::ready(Ok(true))
    }

    /// The delivery that claimed `key` with `token` failed or was abandoned: forgets the claim,
    /// so that the provider's next delivery of the id is processed. Resolves to whether the
    /// claim was removed. A store that tracks claims leaves a claim with another token, or an id
    /// recorded as handled, alone.
    ///
    /// The default is [`remove`](ReplayStore::remove), which forgets `key` whatever holds it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{ClaimToken, MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let token = ClaimToken::unique();
    /// assert!(store.claim("github:1", token, Duration::from_secs(300)).await.unwrap());
    /// assert!(!store.release("github:1", ClaimToken::unique()).await.unwrap()); // not its claim
    /// assert!(store.release("github:1", token).await.unwrap());
    /// assert!(store.claim("github:1", ClaimToken::unique(), Duration::from_secs(300)).await.unwrap());
    /// # }
    /// ```
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        let _ = token;
        self.remove(key)
    }

    /// Whether `key` is recorded as handled: `false` while the delivery that claimed it is still
    /// being handled, or once it was released. The default answers `true`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::{ClaimToken, MemoryReplayStore, ReplayStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryReplayStore::new();
    /// let token = ClaimToken::unique();
    /// store.claim("github:1", token, Duration::from_secs(300)).await.unwrap();
    /// assert!(!store.completed("github:1").await.unwrap()); // in progress
    /// store.complete("github:1", token, Duration::from_secs(86_400)).await.unwrap();
    /// assert!(store.completed("github:1").await.unwrap()); // handled
    /// # }
    /// ```
    fn completed(&self, key: &str) -> ReplayFuture {
        let _ = key;
        ReplayFuture::ready(Ok(true))
    }

    /// Whether this store tells claims from handled deliveries (it implements
    /// [`claim`](ReplayStore::claim), [`complete`](ReplayStore::complete),
    /// [`release`](ReplayStore::release) and [`completed`](ReplayStore::completed)). Only then does the layer give a claim its own
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
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        (**self).claim(key, token, ttl)
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        (**self).complete(key, token, ttl)
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        (**self).release(key, token)
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        (**self).completed(key)
    }
    fn tracks_claims(&self) -> bool {
        (**self).tracks_claims()
    }
}

/// Names one claim on a delivery id (see [`ReplayStore::claim`]), so that only the delivery
/// that took a claim completes or releases it.
///
/// Tokens are unique within a process, and each process starts at its own random point, so
/// replicas sharing a store do not take each other's claims for their own.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::ClaimToken;
///
/// let (a, b) = (ClaimToken::unique(), ClaimToken::unique());
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 16); // 64 bits, in hex
/// assert_eq!(ClaimToken::from_u64(a.get()), a);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(u64);

impl ClaimToken {
    /// A token no other call in this process returns.
    ///
    /// # Example
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use tower_webhook::signature::ClaimToken;
    ///
    /// let tokens: HashSet<_> = (0..1000).map(|_| ClaimToken::unique()).collect();
    /// assert_eq!(tokens.len(), 1000);
    /// ```
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static START: OnceLock<u64> = OnceLock::new();
        // `RandomState` is keyed from the OS's randomness.
        let start = *START.get_or_init(|| RandomState::new().hash_one(std::process::id()));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // An odd multiplier makes this a bijection of the counter: no two tokens are equal.
        Self(start.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The token with this value (for a store that keeps tokens as numbers).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::ClaimToken;
    ///
    /// assert_eq!(ClaimToken::from_u64(255).to_string(), "00000000000000ff");
    /// ```
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::ClaimToken;
    ///
    /// assert_eq!(ClaimToken::from_u64(7).get(), 7);
    /// ```
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimToken({self})")
    }
}

/// Sixteen lowercase hex digits.
impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
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
    /// Only ever reached through `&mut`, so the future need not be `Sync` for this to be: a
    /// response body that holds one (a gRPC answer settling its claim) stays `Sync`, as
    /// `BoxBody` asks.
    Boxed(SyncWrapper<BoxedLookup>),
}

/// A store's boxed operation.
type BoxedLookup = Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>>;

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
        Self(Kind::Boxed(SyncWrapper::new(Box::pin(future))))
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
            Kind::Boxed(future) => future.get_mut().as_mut().poll(cx),
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
    /// redeliveries (GitHub reuses `X-GitHub-Delivery`) are refused as replays. So is one whose
    /// request ended while its id was being recorded (the client went away, an outer timeout
    /// dropped it) or whose store answered an error after it may have written the id (a
    /// connection to Redis lost once the command was sent; the delivery is answered 503): the
    /// id may be recorded though the handler never ran. `AfterSuccess` has neither loss.
    AfterVerification,
    /// Claimed when the signature is valid (so concurrent duplicates are refused), kept if the
    /// inner service answers 2xx and released otherwise (a failure, a gRPC answer whose headers
    /// carry a `grpc-status` other than 0, a panic, an abandoned delivery): a provider's retry or
    /// redelivery of a failed delivery gets through (default).
    ///
    /// A gRPC call (`application/grpc[+codec]`) answered `200` under that type without
    /// `grpc-status` in its head (a streamed answer, or a unary one that is not trailers-only)
    /// is settled when its body ends, before its trailers are handed on: kept if they carry
    /// `grpc-status: 0`, released if they carry another status, if the body ends without one or
    /// fails, or if it is dropped before its end (the client went away). A gRPC-web call
    /// (`application/grpc-web[+codec]`, `application/grpc-web-text[+codec]`: base64) answered
    /// so is settled the same way by the trailer frame that ends its body (flag `0x80`, header
    /// lines such as `grpc-status:0`), read as the body passes (its frames are handed on as
    /// they are, the one that completes the trailer frame once the store has answered). A body
    /// that is not gRPC-web frames, data after the trailer frame in the chunk that completes
    /// it, or a trailer frame over 64 KiB release the id. Chunks after the one that settled it
    /// are handed on unread.
    ///
    /// An abandoned delivery is released as a failed one is, so that the provider's
    /// redelivery of a delivery it gave up on (the handler too slow for its timeout, say) is
    /// handled: the handler may then run for it twice. By the same rule, a sender holding a
    /// signed delivery (a captured copy, within its timestamp window where one is signed) can
    /// have it handled again by hanging up before each answer. Keep handlers quick (queue the
    /// work, answer 2xx), or use `AfterVerification` where a delivery must never be handled
    /// twice.
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
    /// provider sees success and stops redelivering, and the work is not done twice. A gRPC call
    /// (`application/grpc*`) is answered 200 with `grpc-status: 0` under its content type and
    /// no message: a streaming call that succeeded without a message. A unary call's client
    /// wants exactly one message, which the layer cannot make for the method, and reports the
    /// answer as a failure (tonic: `Internal`, "Missing response message."): in front of unary
    /// methods, use [`Reject`](OnReplay::Reject), whose `ALREADY_EXISTS` tells the client the
    /// delivery was a copy.
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
/// When full, it first forgets the expired entries (also those recorded with a shorter TTL after
/// live ones), then evicts the oldest entry, but never the claim of a delivery still being
/// handled (see [`RecordDelivery::AfterSuccess`]): a copy let in then would be handled twice. A
/// store whose every entry is such a claim refuses new ids with an error, which the layer
/// answers `503` with `Retry-After`, until a claim is settled or expires. It serves one process:
/// replicas behind a load balancer need a shared store such as `RedisReplayStore` (feature
/// `redis`).
///
/// An id takes about 90 to 126 bytes, however long it is (a claim about 33 more, for its
/// token): the store keeps a 64-bit fingerprint of the key (SipHash, keyed per store), its
/// expiry, and its place in the order of eviction, named by a 64-bit identity. Two ids with one
/// fingerprint would count as one (the second refused as a replay); with a key per store nobody
/// can aim for that, and by chance it takes some 10^14 ids at the default capacity. Expiries
/// are read on the system clock (or the layer's `Clock`): a clock stepped forward forgets ids
/// early. At the default capacity that is 9.4 to 12.6 MB; memory grows
/// with the ids held, up to that. The queues that order eviction (one of handled ids, one of
/// claims, each with a heap of the expiries recorded out of order) may hold up to twice the
/// capacity in 24-byte records before they are compacted (the queues keep their room after):
/// a handler that runs long while many others are handled (its claim holds its queue's
/// front), or ids recorded with TTLs shorter than those before them, add about 6 MB a queue or
/// heap at the default capacity, 25 MB at worst.
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

/// The ids held, by fingerprint, and the order in which they go.
#[derive(Default)]
struct Entries {
    table: Table,
    /// Ids recorded as handled (by `insert` or `complete`), oldest first: purged once expired,
    /// and evicted oldest first when room is needed.
    handled: Queue,
    /// Claims of deliveries being handled, oldest first: purged once expired, never evicted.
    /// Apart from `handled`, so that a settled claim's record is known stale from the small map
    /// of pending claims (without a read of the table), a store full of claims refuses an id
    /// without walking them, and claims (`claim_ttl`, shorter than the `replay_ttl` of the ids
    /// handled before them) do not fall out of order behind handled ids.
    claims: Queue,
}

/// Which of [`Entries`]' queues a [`Record`] is in: what it stands for while the table holds
/// it, in that state.
#[derive(Clone, Copy)]
enum Held {
    Handled,
    Claim,
}

/// One record of an id, as queued: its fingerprint, its expiry, and its identity in the table.
///
/// The identity (a number the table gives each record) tells the record from an earlier one of
/// the same id with the same expiry (removed, and recorded again to expire in the very same
/// millisecond): taken for the new one, the old record's place in the queue would evict the new
/// one too early.
///
/// Ordered by expiry first, as [`Behind`]'s heap takes them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Record {
    expiry: u64,
    fp: u64,
    seq: u64,
}

/// [`Record`]s in the order they were queued. May hold stale ones (removed, settled or
/// re-recorded ids), recognised by a table that holds their fingerprint otherwise.
#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    /// What is known of the expiries queued out of order, for purging them.
    behind: Behind,
}

impl Queue {
    /// Queues `record`; the records it replaces are skipped when they come up.
    #[inline]
    fn push(&mut self, table: &Table, held: Held, record: Record, capacity: usize) {
        self.records.push_back(record);
        self.behind.push(record);
        // Saturating: a capacity above `usize::MAX / 2` means "no practical bound".
        let bound = capacity.saturating_mul(2);
        if self.records.len() > bound || self.behind.heap.len() > bound {
            self.compact(table, held);
        }
    }

    /// Drops the stale records from the whole queue, which bounds its length (and the heap's)
    /// by the number of ids held, and works `behind` out again from what is left. Expired
    /// entries stay, purged as usual.
    #[cold]
    #[inline(never)]
    fn compact(&mut self, table: &Table, held: Held) {
        let mut max = 0;
        let mut heap = Vec::new();
        self.records.retain(|&record| {
            if !table.holds(held, record) {
                return false;
            }
            if record.expiry < max {
                heap.push(Reverse(record));
            } else {
                max = record.expiry;
            }
            true
        });
        self.behind = Behind {
            max,
            heap: BinaryHeap::from(heap),
        };
    }
}

/// Records queued out of order: with one TTL (and a clock that does not go back) every entry of a
/// queue expires after those queued before it, so when the front of the queue is live, all are.
/// An entry with a shorter TTL queued after one with a longer TTL (routes with different TTLs
/// sharing a store) may expire first, behind a live front: such entries are also kept in a heap
/// by expiry, so that when the store is full, those that expired are purged before a live entry
/// is evicted, at the cost of a heap operation each (none for entries queued in order).
#[derive(Default)]
struct Behind {
    /// The latest expiry queued in order: a record queued with an earlier one goes to `heap`.
    /// Every record of the queue that is not in `heap` expires no earlier than those before it.
    max: u64,
    /// The records queued out of order, earliest expiry first; may hold stale ones, recognised
    /// as in the queue.
    heap: BinaryHeap<Reverse<Record>>,
}

impl Behind {
    #[inline]
    fn push(&mut self, record: Record) {
        if record.expiry < self.max {
            self.heap.push(Reverse(record));
        } else {
            self.max = record.expiry;
        }
    }

    /// Purges from `table` the entries of this queue, held as `held`, queued out of order that
    /// expired by `now`; whether any was.
    fn purge(&mut self, table: &mut Table, held: Held, now: u64) -> bool {
        let mut purged = false;
        while let Some(&Reverse(record)) = self.heap.peek() {
            if record.expiry > now {
                break;
            }
            self.heap.pop();
            // The record itself is held: it expired (else it is stale).
            if table.holds(held, record) {
                table.remove(record.fp);
                purged = true;
            }
        }
        purged
    }
}

/// One slot of [`Table`]: a fingerprint (0 = empty), its expiry in milliseconds since the Unix
/// epoch, whose top bit is [`PENDING`], and the identity of the record (see [`Record`]).
#[derive(Clone, Copy, Default)]
struct Slot {
    fp: u64,
    expiry: u64,
    seq: u64,
}

/// The pending claims, by fingerprint: few (the deliveries being handled), so the map stays small
/// and in cache while the table's slots stay 24 bytes.
type Claims = HashMap<u64, Claim, BuildHasherDefault<FingerprintHasher>>;

/// A pending claim's token, and its record's identity (the slot's): kept here too, so that a
/// record of the claims queue is known stale or live without a read of the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Claim {
    token: u64,
    seq: u64,
}

/// Fingerprints are keyed hashes already, uniformly spread: they are their own hash.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What [`Table`] holds for a fingerprint.
#[derive(Clone, Copy)]
struct Entry {
    /// Milliseconds since the Unix epoch.
    expiry: u64,
    /// The [`ClaimToken`] of a claim still being handled.
    claim: Option<u64>,
}

/// In a slot's expiry: the delivery that claimed the id is still being handled.
const PENDING: u64 = 1 << 63;

/// An open-addressing hash table of fingerprints, linear probing, kept at most half full, with
/// backward-shift deletion (no tombstones, so probe sequences stay short under constant churn).
///
/// Fingerprint, expiry and identity share one 24-byte slot: a lookup mostly touches one cache
/// line, where a map with separate control bytes and buckets touches two. The tokens of pending
/// claims are kept aside, in [`Claims`], with their identities.
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    len: usize,
    claims: Claims,
    /// Records made so far: the next one's identity.
    records: u64,
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

    /// What is held for `fp`.
    fn entry(&self, fp: u64) -> Option<Entry> {
        self.index(fp).map(|i| self.entry_at(i))
    }

    /// Whether `record` is held, as `held`: the queued record is the entry's own. A claim is
    /// answered from [`Claims`] alone.
    #[inline]
    fn holds(&self, held: Held, record: Record) -> bool {
        match held {
            Held::Claim => self
                .claims
                .get(&record.fp)
                .is_some_and(|c| c.seq == record.seq),
            // A settled claim's slot has the identity of its settling: a handled record.
            Held::Handled => self
                .index(record.fp)
                .is_some_and(|i| self.slots[i].seq == record.seq),
        }
    }

    /// The identity of a new record.
    fn next_seq(&mut self) -> u64 {
        self.records += 1;
        self.records
    }

    /// The slot holding `fp`.
    fn index(&self, fp: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.find(fp).ok()
    }

    /// What slot `i`, which is in use, holds.
    fn entry_at(&self, i: usize) -> Entry {
        let slot = self.slots[i];
        let claim = (slot.expiry & PENDING != 0).then(|| {
            let claim = self.claims.get(&slot.fp);
            debug_assert!(claim.is_some(), "a pending slot has its token");
            claim.map_or(0, |c| c.token)
        });
        Entry {
            expiry: slot.expiry & !PENDING,
            claim,
        }
    }

    /// The expiry of `fp`.
    fn get(&self, fp: u64) -> Option<u64> {
        self.index(fp).map(|i| self.slots[i].expiry & !PENDING)
    }

    /// Marks `fp` as handled until `expiry`, if it is held; whether it was.
    #[cfg(test)]
    fn settle(&mut self, fp: u64, expiry: u64) -> bool {
        self.index(fp).map(|i| self.settle_at(i, expiry)).is_some()
    }

    /// Marks slot `i`, which is in use, as handled until `expiry`.
    #[cfg(test)]
    fn settle_at(&mut self, i: usize, expiry: u64) {
        let seq = self.next_seq();
        let slot = &mut self.slots[i];
        if slot.expiry & PENDING != 0 {
            self.claims.remove(&slot.fp);
        }
        slot.expiry = expiry & !PENDING;
        slot.seq = seq;
    }

    /// If slot `i`, which is in use, is claimed by `token`: marks it as handled until `expiry`
    /// and answers the new record, else answers `Err` with its expiry, unchanged. The token is
    /// looked up once, and removed.
    fn settle_claim_at(&mut self, i: usize, token: u64, expiry: u64) -> Result<Record, u64> {
        let slot = self.slots[i];
        let held = slot.expiry & !PENDING;
        if slot.expiry & PENDING == 0 {
            return Err(held);
        }
        match self.claims.entry(slot.fp) {
            MapEntry::Occupied(claim) if claim.get().token == token => drop(claim.remove()),
            _ => return Err(held),
        }
        let record = Record {
            fp: slot.fp,
            expiry: expiry & !PENDING,
            seq: self.next_seq(),
        };
        self.slots[i] = Slot {
            expiry: record.expiry,
            seq: record.seq,
            ..slot
        };
        Ok(record)
    }

    /// Holds `fp` until `expiry`, as claimed by `claim` if there is one; answers the record.
    fn insert(&mut self, fp: u64, expiry: u64, claim: Option<u64>) -> Record {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let seq = self.next_seq();
        let slot = Slot {
            fp,
            expiry: if claim.is_some() {
                expiry | PENDING
            } else {
                expiry
            },
            seq,
        };
        match self.find(fp) {
            Ok(i) => {
                if self.slots[i].expiry & PENDING != 0 && claim.is_none() {
                    self.claims.remove(&fp);
                }
                self.slots[i] = slot;
            }
            Err(i) => {
                self.slots[i] = slot;
                self.len += 1;
            }
        }
        if let Some(token) = claim {
            self.claims.insert(fp, Claim { token, seq });
        }
        Record {
            fp,
            expiry: slot.expiry & !PENDING,
            seq,
        }
    }

    fn remove(&mut self, fp: u64) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let found = self.find(fp).ok()?;
        let raw = self.slots[found].expiry;
        if raw & PENDING != 0 {
            self.claims.remove(&fp);
        }
        let expiry = raw & !PENDING;
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
    ///
    /// SipHash, keyed per store, stays: the store only sees verified deliveries, but a GitHub
    /// delivery id, like most providers' ids, is not signed, so anyone holding one authentic
    /// delivery can resend it under ids of their choosing, and each reaches the store. Without
    /// the key nobody can aim for fingerprints that share their low bits (long probe runs) or
    /// collide (a later delivery refused as a replay). The key's bytes are hashed alone: `str`'s
    /// `Hash` adds a terminator byte, a second call into the hasher that one key per hash does
    /// not need.
    fn fingerprint(&self, key: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        hasher.finish().max(1)
    }

    fn now_ms(&self) -> u64 {
        let since = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// `ttl` from `now`, in the table's whole milliseconds (`ttl` rounded up: a TTL of a
    /// fraction of a millisecond is not none).
    fn expiry(now: u64, ttl: Duration) -> u64 {
        let ttl = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        // The top bit is the pending mark: expiries stop short of it (292 million years).
        now.saturating_add(ttl).min(PENDING - 1)
    }

    /// Records `key` for `ttl` unless it is held, as claimed by `claim` if there is one.
    fn insert_now(
        &self,
        key: &str,
        ttl: Duration,
        claim: Option<ClaimToken>,
    ) -> Result<bool, BoxError> {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let expiry = Self::expiry(now, ttl);
        let mut entries = self.lock();
        if entries.table.get(fp).is_some_and(|exp| exp > now) {
            return Ok(false);
        }
        self.record(&mut entries, fp, now, expiry, claim.map(ClaimToken::get))?;
        Ok(true)
    }

    /// Holds `fp`, which is not held, until `expiry`, making room first.
    ///
    /// Room is made by purging expired entries, then by evicting the oldest handled id, but
    /// never a claim in progress (pending and not expired): its delivery is being handled, and a
    /// copy let in now would be handled twice. When the store holds nothing else, `fp` is
    /// refused with [`StoreFull`]: the memory stays bounded, and the layer answers 503, so that
    /// the provider delivers again later.
    ///
    /// Before a live id is evicted, expired entries queued behind live ones (shorter TTLs
    /// recorded after longer ones) are purged (see [`Behind`]).
    fn record(
        &self,
        entries: &mut Entries,
        fp: u64,
        now: u64,
        expiry: u64,
        claim: Option<u64>,
    ) -> Result<(), StoreFull> {
        let Entries {
            table,
            handled,
            claims,
        } = entries;
        // The records of settled claims, and expired claims, leave the front of their queue; the
        // map of pending claims tells which is which.
        while let Some(&record) = claims.records.front() {
            let pending = table.holds(Held::Claim, record);
            if pending && record.expiry > now {
                break;
            }
            claims.records.pop_front();
            if pending {
                table.remove(record.fp);
            }
        }
        // Purge expired ids at the front, then evict the oldest while full. An id that is
        // neither expired nor needed for room ends the loop without a table lookup.
        while let Some(&record) = handled.records.front() {
            if record.expiry > now {
                if table.len < self.capacity {
                    break;
                }
                // A live id would be evicted: first purge what expired behind live entries.
                let purged = handled.behind.purge(table, Held::Handled, now);
                if purged | claims.behind.purge(table, Held::Claim, now) {
                    continue;
                }
            }
            handled.records.pop_front();
            if table.holds(Held::Handled, record) {
                table.remove(record.fp);
            }
        }
        // Nothing left but claims in progress, and those of them that expired behind live ones.
        if table.len >= self.capacity {
            claims.behind.purge(table, Held::Claim, now);
            if table.len >= self.capacity {
                return Err(StoreFull {
                    capacity: self.capacity,
                });
            }
        }
        let record = table.insert(fp, expiry, claim);
        if claim.is_some() {
            claims.push(table, Held::Claim, record, self.capacity);
        } else {
            handled.push(table, Held::Handled, record, self.capacity);
        }
        Ok(())
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

/// Why [`MemoryReplayStore`] refused a new id: every entry it holds is a claim in progress.
#[derive(Debug)]
struct StoreFull {
    capacity: usize,
}

impl fmt::Display for StoreFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the replay store is full: its {} entries are all deliveries being handled",
            self.capacity
        )
    }
}

impl std::error::Error for StoreFull {}

impl ReplayStore for MemoryReplayStore {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(self.insert_now(key, ttl, None))
    }

    fn remove(&self, key: &str) -> ReplayFuture {
        let fp = self.fingerprint(key);
        ReplayFuture::ready(Ok(self.lock().table.remove(fp).is_some()))
    }

    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(self.insert_now(key, ttl, Some(token)))
    }

    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let expiry = Self::expiry(now, ttl);
        let mut entries = self.lock();
        // One probe: the slot is read, then written, by its index.
        let found = entries.table.index(fp);
        let Entries { table, handled, .. } = &mut *entries;
        let recorded = match found.map(|i| table.settle_claim_at(i, token.get(), expiry)) {
            Some(Ok(record)) => {
                // The claim's record is stale now, dropped when it comes up.
                handled.push(table, Held::Handled, record, self.capacity);
                true
            }
            // Another delivery's claim, or already handled.
            Some(Err(held)) if held > now => false,
            // The claim expired and nobody took the id since: it was handled all the same.
            _ => match self.record(&mut entries, fp, now, expiry, None) {
                Ok(()) => true,
                Err(full) => return ReplayFuture::ready(Err(full.into())),
            },
        };
        ReplayFuture::ready(Ok(recorded))
    }

    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        let fp = self.fingerprint(key);
        let mut entries = self.lock();
        let ours = entries
            .table
            .entry(fp)
            .is_some_and(|held| held.claim == Some(token.get()));
        if ours {
            entries.table.remove(fp);
        }
        ReplayFuture::ready(Ok(ours))
    }

    fn completed(&self, key: &str) -> ReplayFuture {
        let fp = self.fingerprint(key);
        let now = self.now_ms();
        let entry = self.lock().table.entry(fp);
        ReplayFuture::ready(Ok(
            entry.is_some_and(|held| held.expiry > now && held.claim.is_none())
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
    use std::sync::atomic::AtomicBool;

    /// A [`ReplayStore`] in Redis, shared by every replica that points at the same server.
    ///
    /// Each id is one key, `SET <prefix><provider>:<id> <value> NX PX <ttl>`: atomic, and
    /// expired by Redis itself. The value is `pending:<claim token>` while a delivery that claimed
    /// the id is being handled (for the layer's `claim_ttl` at most), `1` once it was (then for its
    /// `replay_ttl`), and `1:<token>` for an id recorded at once
    /// ([`RecordDelivery::AfterVerification`]). A claim
    /// is completed or released by a script that first checks its token, so a handler that
    /// outlived its claim leaves the next one alone; a `SET` that Redis did not answer in time,
    /// but may carry out later, is deleted again by the same check of its own value, so the
    /// provider's redelivery is not taken for a replay. If Redis cannot be
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
        conn: Arc<Connection>,
        prefix: Arc<str>,
        timeout: Duration,
        /// Bounds the tasks that wait for the late answer of a timed-out `SET`.
        late_answers: Arc<tokio::sync::Semaphore>,
    }

    impl RedisReplayStore {
        /// Uses an existing connection manager. Keys are prefixed with `tower-webhook:replay:`.
        ///
        /// The manager reconnects on its own schedule, the one its
        /// [`ConnectionManagerConfig`](redis::aio::ConnectionManagerConfig) sets: deliveries are
        /// refused (503) until it is back. [`connect`](Self::connect) tries every one to two
        /// seconds; set [`set_max_delay`](redis::aio::ConnectionManagerConfig::set_max_delay) for
        /// the same here. The manager's own response timeout (redis' default: 500 ms) answers
        /// before the store's [`timeout`](Self::timeout) when it is shorter. Unlike `connect`,
        /// the store does not replace a connection that stops answering. A `SET` the manager's
        /// own timeout gave up on is deleted again, as one the store's timeout gave up on is:
        /// by a command on the same connection, which Redis carries out after it, asked once a
        /// second until Redis answers.
        ///
        /// # Example
        ///
        /// ```no_run
        /// use redis::aio::{ConnectionManager, ConnectionManagerConfig};
        /// use std::time::Duration;
        /// use tower_webhook::signature::{RedisReplayStore, SignatureLayer};
        ///
        /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
        /// // Reconnect at least every second once Redis is back.
        /// let config = ConnectionManagerConfig::new().set_max_delay(Duration::from_secs(1));
        /// let conn = ConnectionManager::new_with_config(client, config).await?; // may be shared with the rest of the app
        /// let store = RedisReplayStore::new(conn);
        /// assert!(format!("{store:?}").contains("tower-webhook:replay:"));
        /// let layer = SignatureLayer::github("secret")?.replay_store(store);
        /// # let _ = layer; Ok(()) }
        /// ```
        pub fn new(conn: ConnectionManager) -> Self {
            Self::with_connection(Connection {
                current: Mutex::new((0, conn)),
                reopen: None,
                reopening: AtomicBool::new(false),
            })
        }

        fn with_connection(conn: Connection) -> Self {
            Self {
                conn: Arc::new(conn),
                prefix: Arc::from("tower-webhook:replay:"),
                timeout: DEFAULT_TIMEOUT,
                late_answers: Arc::new(tokio::sync::Semaphore::new(MAX_LATE_ANSWERS)),
            }
        }

        /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`) with a reconnecting manager. A lost
        /// connection is tried again every one to two seconds, and each attempt gives up after
        /// the [default timeout](Self::timeout) of 2 s, so deliveries go through again soon after
        /// Redis is back. Each operation is bounded by the store's [`timeout`](Self::timeout)
        /// alone (the manager's own response timeout is off).
        ///
        /// Redis must be reachable when the store is made: after six retries at the same pace
        /// `connect` fails, after 4 to 7 s when nothing listens on the address (a
        /// [connection refusal](redis::RedisError::is_connection_refusal)), and after 18 to
        /// 21 s when something accepts the connection but never answers (a stopped server, a
        /// proxy without a backend: a [timeout](redis::RedisError::is_timeout)). A replica then
        /// does not start, rather than refuse every delivery; neither the error nor the store's
        /// `Debug` shows a password given in `url`.
        ///
        /// A connection that stops answering without being closed (Redis moved to another
        /// address, a NAT or load balancer forgot the flow) is not reported by the system for
        /// many minutes: after an operation [times out](Self::timeout), the store opens a new
        /// connection in the background and uses it once it is up. A store made with
        /// [`new`](Self::new) keeps the manager it was given.
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
                .set_max_delay(MAX_RECONNECT_DELAY)
                .set_connection_timeout(Some(DEFAULT_TIMEOUT))
                // The store bounds each operation itself (`timeout`), and knows a timed-out one
                // for what it is: a connection that may have stopped answering.
                .set_response_timeout(None);
            let manager =
                ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
            Ok(Self::with_connection(Connection {
                current: Mutex::new((0, manager)),
                reopen: Some((client, config)),
                reopening: AtomicBool::new(false),
            }))
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
        /// # Panics
        ///
        /// If `timeout` is shorter than a millisecond: no operation could finish in it, and
        /// every delivery would be refused with 503.
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
            assert!(
                timeout >= Duration::from_millis(1),
                "RedisReplayStore::timeout({timeout:?}) leaves no time for any operation: every \
                 delivery would be refused with 503; give Redis at least a millisecond"
            );
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
    /// The value of a handled delivery's key, once its claim is completed.
    const DONE: &str = "1";
    /// What starts the value of a delivery's key recorded at once (`insert`): this, then a
    /// token of that insert alone.
    const DONE_PREFIX: &str = "1:";
    /// How often a `SET` given up on is asked to be undone until Redis answers.
    const UNDO_PACE: Duration = Duration::from_secs(1);
    /// How long a `SET` given up on is asked to be undone at most.
    const UNDO_LIMIT: Duration = Duration::from_secs(600);
    /// The value of a key claimed by a delivery still being handled: this, then the claim's token.
    const PENDING_PREFIX: &str = "pending:";
    /// `KEYS[1]` holds the claim `ARGV[1]`, or nothing: it becomes `ARGV[2]` for `ARGV[3]` ms.
    const COMPLETE_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
        if v == ARGV[1] or not v then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end \
        return 0";
    /// `KEYS[1]` is deleted if it holds `ARGV[1]`.
    const DELETE_IF_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
        return redis.call('DEL', KEYS[1]) end return 0";
    /// How long one operation may take by default.
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Longest wait between two attempts to reconnect.
    const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
    /// Timed-out `SET`s whose late answer is waited for at once, per store (and its clones).
    const MAX_LATE_ANSWERS: usize = 1024;

    /// An error instead of a panic where no tokio runtime runs (a response future dropped
    /// elsewhere finishes its store operation at once): the timer needs one.
    fn runtime() -> Result<(), BoxError> {
        tokio::runtime::Handle::try_current()
            .map(drop)
            .map_err(|_| "no tokio runtime to run the Redis operation on".into())
    }

    /// The store's connection to Redis, replaced after a timeout when the store knows how to
    /// open another.
    struct Connection {
        /// The connection, and how many times it was replaced.
        current: Mutex<(u64, ConnectionManager)>,
        /// What opens a new one: stores made by `connect` only.
        reopen: Option<(redis::Client, redis::aio::ConnectionManagerConfig)>,
        /// A new connection is being opened.
        reopening: AtomicBool,
    }

    impl Connection {
        fn get(&self) -> (u64, ConnectionManager) {
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// An operation on `used` timed out: the connection may be dead without the system
        /// knowing (a peer gone silent is only reported when TCP gives up, many minutes
        /// later), so a new one is opened in the background, one at a time, and replaces it.
        /// Operations in flight on the old one finish there.
        fn timed_out(self: &Arc<Self>, used: u64, timeout: Duration) -> BoxError {
            if let Some((client, config)) = &self.reopen
                && !self.reopening.swap(true, Ordering::AcqRel)
            {
                let (client, config) = (client.clone(), config.clone());
                let this = Arc::downgrade(self);
                tokio::spawn(async move {
                    let opened = tokio::time::timeout(
                        timeout.max(DEFAULT_TIMEOUT),
                        ConnectionManager::new_with_config(client, config),
                    )
                    .await;
                    let Some(this) = this.upgrade() else {
                        return; // the store is gone
                    };
                    match opened {
                        Ok(Ok(manager)) => {
                            let mut current =
                                this.current.lock().unwrap_or_else(|e| e.into_inner());
                            if current.0 == used {
                                *current = (used.wrapping_add(1), manager);
                                tracing::info!(
                                    "Redis stopped answering: a new connection replaces the old one"
                                );
                            }
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(error = %crate::redact::redacted(err.to_string()), "Redis stopped answering, and a new connection failed");
                        }
                        Err(_) => {
                            tracing::warn!(
                                "Redis stopped answering, and a new connection did not open in time"
                            );
                        }
                    }
                    this.reopening.store(false, Ordering::Release);
                });
            }
            timed_out(timeout)
        }
    }

    /// `command` on the store's connection, or an error once `timeout` has passed.
    async fn query<T: redis::FromRedisValue>(
        command: redis::Cmd,
        conns: Arc<Connection>,
        timeout: Duration,
    ) -> Result<T, BoxError> {
        runtime()?;
        let (used, mut conn) = conns.get();
        match tokio::time::timeout(timeout, command.query_async(&mut conn)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(conns.timed_out(used, timeout)),
        }
    }

    /// `ttl` in milliseconds for Redis, which refuses expiry times past its own range: very long
    /// TTLs are capped at a century, which is forever for a delivery id.
    fn ttl_ms(ttl: Duration) -> u64 {
        u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_MS)
    }

    /// The value of a key claimed with `token`.
    fn pending(token: ClaimToken) -> String {
        format!("{PENDING_PREFIX}{token}")
    }

    /// Deletes `key` if it holds `value`, atomically.
    fn delete_if(key: &str, value: &str) -> redis::Cmd {
        let mut command = redis::cmd("EVAL");
        command.arg(DELETE_IF_SCRIPT).arg(1).arg(key).arg(value);
        command
    }

    fn timed_out(timeout: Duration) -> BoxError {
        format!("Redis did not answer within {timeout:?}").into()
    }

    impl RedisReplayStore {
        fn key(&self, key: &str) -> String {
            format!("{}{}", self.prefix, key)
        }

        /// `SET key value NX PX ttl`: whether the key was new.
        fn set_new(&self, key: &str, ttl: Duration, value: String) -> ReplayFuture {
            let conns = Arc::clone(&self.conn);
            let key = self.key(key);
            let timeout = self.timeout;
            let late_answers = Arc::clone(&self.late_answers);
            let ms = ttl_ms(ttl);
            ReplayFuture::new(async move {
                runtime()?;
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&value).arg("NX").arg("PX").arg(ms);
                let (used, mut conn) = conns.get();
                let mut answer =
                    Box::pin(async move { set.query_async::<Option<String>>(&mut conn).await });
                match tokio::time::timeout(timeout, answer.as_mut()).await {
                    Ok(Ok(set)) => Ok(set.is_some()),
                    // Given up on by the connection itself (its own response timeout, or lost
                    // once the command was sent): Redis may still carry it out, then the key is
                    // deleted again, as below. `value` is this call's own, so only its record is.
                    Ok(Err(err)) if err.is_timeout() || err.is_connection_dropped() => {
                        if let Ok(permit) = late_answers.try_acquire_owned() {
                            let late_conns = Arc::clone(&conns);
                            let ttl = Duration::from_millis(ms);
                            tokio::spawn(async move {
                                let _permit = permit;
                                undo(&key, &value, late_conns, timeout, ttl).await;
                            });
                        }
                        Err(err.into())
                    }
                    Ok(Err(err)) => Err(err.into()),
                    Err(_) => {
                        // The delivery is refused, but Redis may still carry the command out
                        // later: the key is then deleted again, or the provider's retry of this
                        // delivery would be refused as a replay until the key expires. While
                        // Redis hangs, at most `MAX_LATE_ANSWERS` such waits are kept.
                        let Ok(permit) = late_answers.try_acquire_owned() else {
                            tracing::warn!(%key, "Redis keeps timing out; if it still records this delivery id, a redelivery will be treated as a replay until it expires");
                            return Err(conns.timed_out(used, timeout));
                        };
                        let late_conns = Arc::clone(&conns);
                        tokio::spawn(async move {
                            let _permit = permit;
                            let late = Duration::from_millis(ms);
                            match tokio::time::timeout(late, answer).await {
                                Ok(Ok(Some(_))) => {
                                    // Only the value set here: the key may have expired since.
                                    let del = delete_if(&key, &value);
                                    if let Err(err) = query::<u64>(del, late_conns, timeout).await {
                                        tracing::error!(%key, error = %crate::redact::redacted(err.to_string()), "Redis recorded a delivery id after the delivery was refused for taking too long, and could not delete it again: the provider's redelivery is treated as a replay until the id expires");
                                    }
                                }
                                // Given up on by the connection too (its own response timeout,
                                // or lost): Redis may still carry it out, as above.
                                Ok(Err(err)) if err.is_timeout() || err.is_connection_dropped() => {
                                    undo(&key, &value, late_conns, timeout, late).await;
                                }
                                // Not set (the key was there), refused, or no answer within the
                                // TTL, past which the key would be gone anyway.
                                _ => {}
                            }
                        });
                        Err(conns.timed_out(used, timeout))
                    }
                }
            })
        }
    }

    /// Deletes `key` if it holds `value`, the value of a `SET` given up on that Redis may carry
    /// out later: asked until Redis answers (a command sent on the same connection is carried
    /// out after the `SET`), once a second, for `ttl` (after which the key is gone anyway) or
    /// [`UNDO_LIMIT`] at most: a task of [`MAX_LATE_ANSWERS`] each, while Redis is away.
    async fn undo(
        key: &str,
        value: &str,
        conns: Arc<Connection>,
        timeout: Duration,
        ttl: Duration,
    ) {
        let until = tokio::time::Instant::now() + ttl.min(UNDO_LIMIT);
        loop {
            match query::<u64>(delete_if(key, value), Arc::clone(&conns), timeout).await {
                Ok(_) => return,
                Err(_) if tokio::time::Instant::now() + UNDO_PACE < until => {
                    tokio::time::sleep(UNDO_PACE).await;
                }
                Err(err) => {
                    tracing::error!(%key, error = %crate::redact::redacted(err.to_string()), "Redis may have recorded a delivery id after the delivery was refused for taking too long, and could not be asked to delete it again: the provider's redelivery is treated as a replay until the id expires");
                    return;
                }
            }
        }
    }

    impl ReplayStore for RedisReplayStore {
        fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
            // Each insert's own value, for a `SET` given up on to be undone without deleting
            // another's record of the id.
            self.set_new(key, ttl, format!("{DONE_PREFIX}{}", ClaimToken::unique()))
        }

        fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
            self.set_new(key, ttl, pending(token))
        }

        fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
            let mut command = redis::cmd("EVAL");
            command
                .arg(COMPLETE_SCRIPT)
                .arg(1)
                .arg(self.key(key))
                .arg(pending(token))
                .arg(DONE)
                .arg(ttl_ms(ttl));
            let answer = query::<u64>(command, Arc::clone(&self.conn), self.timeout);
            ReplayFuture::new(async move { Ok(answer.await? == 1) })
        }

        fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
            let command = delete_if(&self.key(key), &pending(token));
            let answer = query::<u64>(command, Arc::clone(&self.conn), self.timeout);
            ReplayFuture::new(async move { Ok(answer.await? > 0) })
        }

        fn completed(&self, key: &str) -> ReplayFuture {
            let mut command = redis::cmd("GET");
            command.arg(self.key(key));
            let answer = query::<Option<String>>(command, Arc::clone(&self.conn), self.timeout);
            // Anything else is a claim (`pending` alone was one before claims had tokens).
            ReplayFuture::new(async move {
                Ok(answer
                    .await?
                    .is_some_and(|v| v == DONE || v.starts_with(DONE_PREFIX)))
            })
        }

        fn remove(&self, key: &str) -> ReplayFuture {
            let mut command = redis::cmd("DEL");
            command.arg(self.key(key));
            let answer = query::<u64>(command, Arc::clone(&self.conn), self.timeout);
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
        Insert(u64, u64, Option<u64>),
        Remove(u64),
        Get(u64),
        Complete(u64, u64),
    }

    fn op(keys: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..=keys, 0..PENDING, any::<Option<u64>>()).prop_map(|(k, e, c)| Op::Insert(k, e, c)),
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
                    Op::Insert(k, e, claim) => {
                        table.insert(k * spread, e, claim);
                        model.insert(k * spread, (e, claim));
                    }
                    Op::Remove(k) => prop_assert_eq!(
                        table.remove(k * spread),
                        model.remove(&(k * spread)).map(|(e, _)| e)
                    ),
                    Op::Get(k) => {
                        prop_assert_eq!(
                            table.entry(k * spread).map(|e| (e.expiry, e.claim)),
                            model.get(&(k * spread)).copied()
                        );
                        prop_assert_eq!(table.get(k * spread), model.get(&(k * spread)).map(|v| v.0));
                    }
                    Op::Complete(k, e) => {
                        let had = model
                            .get_mut(&(k * spread))
                            .map(|v| *v = (e, None))
                            .is_some();
                        prop_assert_eq!(table.settle(k * spread, e), had);
                    }
                }
                prop_assert_eq!(table.len, model.len());
                prop_assert!(table.len * 2 <= table.slots.len());
                // A token is kept exactly for each pending claim.
                prop_assert_eq!(
                    table.claims.len(),
                    model.values().filter(|(_, claim)| claim.is_some()).count()
                );
            }
            for (k, e) in &model {
                prop_assert_eq!(table.entry(*k).map(|e| (e.expiry, e.claim)), Some(*e));
            }
        }

        // The store against the same policy written over plain keys: expired ids come again,
        // when full every expired id goes first (also those queued behind live ones: TTLs and
        // steps vary, so ids of short TTLs are recorded after ids of long ones), then the oldest,
        // removed ids come again, never more than `capacity`. Each record is told from the
        // others of its id, also one removed and recorded again with the same expiry.
        //
        // `wide`: a store of about a hundred ids, TTLs of up to 300 steps, so that the queue is
        // long and ids expire behind live ones while it is full.
        #[test]
        fn store_follows_the_policy(
            steps in proptest::collection::vec((0u16..400, 0u64..4, 1u64..6, 0u8..8), 1..600),
            small in 1usize..6,
            wide in any::<bool>(),
        ) {
            let (capacity, keys, scale) = if wide { (small * 20, 400, 50) } else { (small, 12, 1) };
            let now = Arc::new(AtomicU64::new(1_000_000));
            let n = now.clone();
            let store = MemoryReplayStore::with_capacity(capacity)
                .clock(Clock::from_fn(move || SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))));
            // key -> (expiry, record), and the records in their order
            let mut map: HashMap<String, (u64, u64)> = HashMap::new();
            let mut order: VecDeque<(String, u64, u64)> = VecDeque::new();
            for (record, (key, advance, ttl, remove)) in steps.into_iter().enumerate() {
                let record = record as u64;
                let (ttl, remove) = (ttl * scale, if wide { remove == 0 } else { remove < 4 });
                let t = now.fetch_add(advance, Ordering::SeqCst) + advance;
                let key = format!("github:{}", key % keys);
                if remove {
                    let got = block_on(store.remove(&key));
                    match map.remove(&key) {
                        Some((e, _)) if e > t => prop_assert!(got, "a live id is held"),
                        // An expired one the store may have purged already (see below).
                        Some(_) => {}
                        None => prop_assert!(!got, "an id the policy does not hold"),
                    }
                    continue;
                }
                let expected = if map.get(&key).is_some_and(|&(e, _)| e > t) {
                    false
                } else {
                    while let Some((k, e, r)) = order.front().cloned() {
                        if e > t {
                            if map.len() < capacity {
                                break;
                            }
                            if map.values().any(|&(e, _)| e <= t) {
                                // Every expired entry goes; stale records stay, skipped when
                                // they come up.
                                map.retain(|_, (e, _)| *e > t);
                                order.retain(|(_, e, _)| *e > t);
                                continue;
                            }
                        }
                        if map.get(&k) == Some(&(e, r)) {
                            map.remove(&k);
                        }
                        order.pop_front();
                    }
                    map.insert(key.clone(), (t + ttl, record));
                    order.push_back((key.clone(), t + ttl, record));
                    true
                };
                prop_assert_eq!(block_on(store.insert(&key, Duration::from_millis(ttl))), expected);
                prop_assert!(store.len() <= capacity);
                // The same live ids. Which expired ones are still held may differ (they are
                // purged when reached or when room is needed): the model keeps every stale
                // record, where the store drops them when its queue is compacted.
                let live = store
                    .lock()
                    .table
                    .slots
                    .iter()
                    .filter(|s| s.fp != 0 && s.expiry & !PENDING > t)
                    .count();
                prop_assert_eq!(live, map.values().filter(|&&(e, _)| e > t).count());
            }
        }
    }

    /// One step of [`store_keeps_claims_by_the_policy`]: an operation on a key, after the clock
    /// moved on.
    #[derive(Clone, Debug)]
    enum Step {
        Insert { ttl: u64 },
        Claim { token: u64, ttl: u64 },
        Complete { token: u64, ttl: u64 },
        Release { token: u64 },
        Completed,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (1u64..40).prop_map(|ttl| Step::Insert { ttl }),
            4 => (0u64..3, 1u64..12).prop_map(|(token, ttl)| Step::Claim { token, ttl }),
            3 => (0u64..3, 1u64..40).prop_map(|(token, ttl)| Step::Complete { token, ttl }),
            1 => (0u64..3).prop_map(|token| Step::Release { token }),
            1 => Just(Step::Completed),
        ]
    }

    proptest! {
        // Claims and handled ids together against the policy written over plain keys: an id is
        // new when nothing live holds it; expired entries at the front of their queue go when an
        // id is recorded; when full, every expired entry goes first, then the oldest handled
        // id; a claim in progress is never evicted, and a store holding nothing else refuses
        // new ids; a claim is settled by its own token only, even once expired, unless another
        // took the id; each record is told from the others of its id (a claim released and
        // taken again with the same expiry); the same ids are held after every step.
        #[test]
        fn store_keeps_claims_by_the_policy(
            steps in proptest::collection::vec((0u64..8, 0u64..4, step()), 1..400),
            capacity in 1usize..6,
        ) {
            let now = Arc::new(AtomicU64::new(1_000_000));
            let n = now.clone();
            let store = MemoryReplayStore::with_capacity(capacity)
                .clock(Clock::from_fn(move || SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))));
            // key -> (expiry, claim token); key -> its record (set with every entry of `map`);
            // the queues of records (key, expiry, record)
            let mut map: HashMap<u64, (u64, Option<u64>)> = HashMap::new();
            let mut records: HashMap<u64, u64> = HashMap::new();
            let (mut handled, mut claims) = (VecDeque::new(), VecDeque::new());
            for (record, (key, advance, step)) in steps.into_iter().enumerate() {
                let record = record as u64;
                let t = now.fetch_add(advance, Ordering::SeqCst) + advance;
                let name = format!("github:{key}");
                let live = map.get(&key).copied().filter(|&(e, _)| e > t);
                // Makes room as the policy says; whether there is room. Expired entries at the
                // front of either queue go at once, every expired one when the store is full.
                let room = |map: &mut HashMap<u64, (u64, Option<u64>)>,
                            records: &HashMap<u64, u64>,
                            handled: &mut VecDeque<(u64, u64, u64)>,
                            claims: &mut VecDeque<(u64, u64, u64)>| {
                    let ours = |k: u64, r: u64| records.get(&k) == Some(&r);
                    while let Some(&(k, e, r)) = claims.front() {
                        let pending = ours(k, r) && matches!(map.get(&k), Some(&(held, Some(_))) if held == e);
                        if pending && e > t {
                            break;
                        }
                        claims.pop_front();
                        if pending {
                            map.remove(&k);
                        }
                    }
                    while let Some(&(k, e, r)) = handled.front() {
                        if e > t {
                            if map.len() < capacity {
                                break;
                            }
                            if map.values().any(|&(e, _)| e <= t) {
                                map.retain(|_, (e, _)| *e > t);
                                continue;
                            }
                        }
                        handled.pop_front();
                        if ours(k, r) && map.get(&k) == Some(&(e, None)) {
                            map.remove(&k);
                        }
                    }
                    if map.len() >= capacity {
                        map.retain(|_, (e, _)| *e > t);
                    }
                    map.len() < capacity
                };
                match step {
                    Step::Insert { ttl } | Step::Claim { ttl, .. } => {
                        let claim = match step { Step::Claim { token, .. } => Some(token), _ => None };
                        let expected = if live.is_some() {
                            Ok(false)
                        } else if room(&mut map, &records, &mut handled, &mut claims) {
                            map.insert(key, (t + ttl, claim));
                            records.insert(key, record);
                            if claim.is_none() {
                                handled.push_back((key, t + ttl, record));
                            } else {
                                claims.push_back((key, t + ttl, record));
                            }
                            Ok(true)
                        } else {
                            Err(())
                        };
                        let ttl = Duration::from_millis(ttl);
                        let got = match claim {
                            Some(token) => try_block_on(store.claim(&name, ClaimToken::from_u64(token), ttl)),
                            None => try_block_on(store.insert(&name, ttl)),
                        };
                        match got {
                            Ok(got) => prop_assert_eq!(Ok(got), expected),
                            Err(e) => {
                                prop_assert!(e.is::<StoreFull>(), "{e}");
                                prop_assert_eq!(expected, Err(()));
                            }
                        }
                    }
                    Step::Complete { token, ttl } => {
                        let expected = match map.get(&key).copied() {
                            Some((_, Some(held))) if held == token => {
                                map.insert(key, (t + ttl, None));
                                records.insert(key, record);
                                handled.push_back((key, t + ttl, record));
                                Ok(true)
                            }
                            Some((e, _)) if e > t => Ok(false),
                            _ => {
                                if room(&mut map, &records, &mut handled, &mut claims) {
                                    map.insert(key, (t + ttl, None));
                                    records.insert(key, record);
                                    handled.push_back((key, t + ttl, record));
                                    Ok(true)
                                } else {
                                    Err(())
                                }
                            }
                        };
                        let got = try_block_on(store.complete(&name, ClaimToken::from_u64(token), Duration::from_millis(ttl)));
                        match got {
                            Ok(got) => prop_assert_eq!(Ok(got), expected),
                            Err(e) => {
                                prop_assert!(e.is::<StoreFull>(), "{e}");
                                prop_assert_eq!(expected, Err(()));
                            }
                        }
                    }
                    Step::Release { token } => {
                        let got = block_on(store.release(&name, ClaimToken::from_u64(token)));
                        match map.get(&key).copied() {
                            Some((_, Some(held))) if held == token => {
                                map.remove(&key);
                                prop_assert!(got, "a claim, even expired, is its holder's to release");
                            }
                            _ => prop_assert!(!got, "not this token's claim"),
                        }
                    }
                    Step::Completed => {
                        let got = block_on(store.completed(&name));
                        prop_assert_eq!(got, live.is_some_and(|(_, claim)| claim.is_none()));
                    }
                }
                prop_assert!(store.len() <= capacity);
                let e = store.lock();
                // The same ids, expired ones included: the store purges them as the policy does.
                let mut held: Vec<(u64, Option<u64>)> = e
                    .table
                    .slots
                    .iter()
                    .filter(|s| s.fp != 0)
                    .map(|s| (s.expiry & !PENDING, e.table.entry(s.fp).and_then(|h| h.claim)))
                    .collect();
                let mut want: Vec<(u64, Option<u64>)> = map.values().copied().collect();
                held.sort_unstable();
                want.sort_unstable();
                prop_assert_eq!(held, want, "the same ids");
                prop_assert_eq!(e.table.claims.len(), e.table.slots.iter().filter(|s| s.fp != 0 && s.expiry & PENDING != 0).count());
            }
        }
    }

    fn block_on(future: ReplayFuture) -> bool {
        try_block_on(future).unwrap()
    }

    fn try_block_on(mut future: ReplayFuture) -> Result<bool, BoxError> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(result) => result,
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
        assert!(e.handled.records.len() <= 2_000);
        assert!(e.claims.records.is_empty());
        drop(e);
        // The newest ids are still known, the oldest were evicted.
        assert!(!block_on(
            store.insert("github:49999", Duration::from_secs(60))
        ));
        assert!(block_on(store.insert("github:0", Duration::from_secs(60))));
    }

    /// What the docs say an id costs: about 90 to 126 bytes in the table and the queue, filled to
    /// the default capacity and churned past it.
    #[test]
    fn an_id_costs_what_the_docs_say() {
        let store = MemoryReplayStore::new();
        let bytes = |store: &MemoryReplayStore| {
            let e = store.lock();
            (e.table.slots.capacity() * size_of::<Slot>()
                + e.handled.records.capacity() * size_of::<Record>()
                + e.claims.records.capacity() * size_of::<Record>())
                / DEFAULT_REPLAY_CAPACITY
        };
        for i in 0..3 * DEFAULT_REPLAY_CAPACITY {
            let key = format!("github:{i:0>200}"); // long ids cost no more
            assert!(block_on(store.insert(&key, Duration::from_secs(60))));
            if i + 1 == DEFAULT_REPLAY_CAPACITY {
                let per_id = bytes(&store);
                assert!(
                    (90..=126).contains(&per_id),
                    "{per_id} bytes per id when just full"
                );
            }
        }
        let per_id = bytes(&store);
        assert!(
            (90..=126).contains(&per_id),
            "{per_id} bytes per id after churn"
        );
    }

    #[test]
    fn claims_settled_at_capacity_leave_no_pair_out_of_order() {
        // Deliveries as the layer records them by default: a claim (`claim_ttl`, shorter than
        // the `replay_ttl` of the ids handled before it), then its completion, past capacity.
        let store = MemoryReplayStore::with_capacity(1_000);
        let (claim_ttl, replay_ttl) = (Duration::from_secs(300), Duration::from_secs(86_400));
        for i in 0..20_000 {
            let (key, token) = (format!("github:{i}"), ClaimToken::unique());
            assert!(block_on(store.claim(&key, token, claim_ttl)));
            assert!(block_on(store.complete(&key, token, replay_ttl)));
        }
        let e = store.lock();
        assert_eq!(e.table.len, 1_000);
        assert!(e.table.claims.is_empty());
        // Nothing went to a heap: no record was out of order in its queue.
        assert!(e.handled.behind.heap.is_empty() && e.claims.behind.heap.is_empty());
        // One record per id handled; the last claim's (settled) one only, until the next one.
        assert_eq!(e.handled.records.len(), 1_000);
        assert!(e.claims.records.len() <= 1);
    }

    /// A TTL of a fraction of a millisecond is rounded up, not down to none: the id is held
    /// for that millisecond.
    #[test]
    fn a_ttl_under_a_millisecond_is_not_none() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let store = MemoryReplayStore::with_capacity(4).clock(Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
        }));
        let ttl = Duration::from_micros(900);
        assert!(block_on(store.insert("github:a", ttl)));
        assert!(!block_on(store.insert("github:a", ttl)));
        now.fetch_add(1, Ordering::SeqCst);
        assert!(block_on(store.insert("github:a", ttl)));
    }

    #[test]
    fn claims_are_in_progress_until_completed_and_expire_like_ids() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let store = MemoryReplayStore::with_capacity(10).clock(Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
        }));
        let ttl = Duration::from_secs(1);
        let t = ClaimToken::unique();
        assert!(block_on(store.claim("github:a", t, ttl)));
        assert!(!block_on(store.claim(
            "github:a",
            ClaimToken::unique(),
            ttl
        )));
        assert!(!block_on(store.insert("github:a", ttl)));
        assert!(!block_on(store.completed("github:a")), "in progress");
        assert!(block_on(store.complete("github:a", t, ttl)));
        assert!(block_on(store.completed("github:a")));
        assert!(
            !block_on(store.claim("github:a", ClaimToken::unique(), ttl)),
            "handled ids stay recorded"
        );
        assert!(
            !block_on(store.release("github:a", t)),
            "handled, not claimed"
        );
        assert!(block_on(store.completed("github:a")));
        // Released, unknown and expired ids are not handled, and can be claimed again.
        let b = ClaimToken::unique();
        assert!(block_on(store.claim("github:b", b, ttl)));
        assert!(block_on(store.release("github:b", b)));
        assert!(!block_on(store.completed("github:b")));
        assert!(!block_on(store.completed("github:never")));
        assert!(block_on(store.insert("github:c", ttl)));
        assert!(
            block_on(store.completed("github:c")),
            "inserted ids are handled"
        );
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(!block_on(store.completed("github:a")), "expired");
        assert!(block_on(store.claim("github:a", ClaimToken::unique(), ttl)));
        assert!(!block_on(store.completed("github:a")));
        // The longest TTL keeps the pending mark apart from the expiry.
        let d = ClaimToken::unique();
        assert!(block_on(store.claim("github:d", d, Duration::MAX)));
        assert!(!block_on(store.completed("github:d")));
        assert!(block_on(store.complete("github:d", d, Duration::MAX)));
        assert!(block_on(store.completed("github:d")));
        // A short claim, completed for longer: the id is remembered for the longer time.
        let e = ClaimToken::unique();
        assert!(block_on(store.claim("github:e", e, ttl)));
        assert!(block_on(store.complete(
            "github:e",
            e,
            Duration::from_secs(10)
        )));
        now.fetch_add(5_000, Ordering::SeqCst);
        assert!(block_on(store.completed("github:e")));
        assert!(!block_on(store.claim(
            "github:e",
            ClaimToken::unique(),
            ttl
        )));
        // A claim that is never completed (its holder died) lets the id through once it expires.
        assert!(block_on(store.claim("github:f", ClaimToken::unique(), ttl)));
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(block_on(store.claim("github:f", ClaimToken::unique(), ttl)));
    }

    #[test]
    fn a_claim_is_settled_only_by_its_own_token() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let store = MemoryReplayStore::with_capacity(10).clock(Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
        }));
        let (claim_ttl, replay_ttl) = (Duration::from_secs(1), Duration::from_secs(60));
        // The first holder outlives its claim; a redelivery claims the id again.
        let (first, second) = (ClaimToken::unique(), ClaimToken::unique());
        assert!(block_on(store.claim("github:a", first, claim_ttl)));
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(block_on(store.claim("github:a", second, claim_ttl)));
        // The first one finishing touches neither way the second one's claim.
        assert!(!block_on(store.release("github:a", first)));
        assert!(!block_on(store.complete("github:a", first, replay_ttl)));
        assert!(!block_on(store.completed("github:a")), "still the second's");
        assert!(!block_on(store.claim(
            "github:a",
            ClaimToken::unique(),
            claim_ttl
        )));
        assert!(block_on(store.release("github:a", second)));
        // A holder whose claim expired, with nobody else on the id: its success is recorded.
        let late = ClaimToken::unique();
        assert!(block_on(store.claim("github:b", late, claim_ttl)));
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(block_on(store.complete("github:b", late, replay_ttl)));
        assert!(block_on(store.completed("github:b")));
        now.fetch_add(30_000, Ordering::SeqCst);
        assert!(!block_on(store.claim(
            "github:b",
            ClaimToken::unique(),
            claim_ttl
        )));
        // An expired claim is still its holder's to release.
        let gone = ClaimToken::unique();
        assert!(block_on(store.claim("github:c", gone, claim_ttl)));
        now.fetch_add(1_001, Ordering::SeqCst);
        assert!(block_on(store.release("github:c", gone)));
        assert_eq!(store.len(), 1, "only github:b is left");
    }

    #[test]
    fn tokens_of_evicted_or_expired_claims_are_not_kept() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let store = MemoryReplayStore::with_capacity(4).clock(Clock::from_fn(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
        }));
        let (mut held, mut refused) = (0, 0);
        for i in 0..1_000 {
            let ttl = Duration::from_millis(1 + i % 3);
            // Claims in progress are never evicted: a full store of them refuses new ones.
            match try_block_on(store.claim(&format!("github:{i}"), ClaimToken::unique(), ttl)) {
                Ok(true) => held += 1,
                Err(full) if full.is::<StoreFull>() => refused += 1,
                other => panic!("{other:?}"),
            }
            now.fetch_add(i % 2, Ordering::SeqCst);
        }
        assert!(held > 500 && refused > 0, "{held} held, {refused} refused");
        let e = store.lock();
        assert!(e.table.len <= 4);
        assert_eq!(
            e.table.claims.len(),
            e.table.len,
            "all pending, none leaked"
        );
    }

    #[test]
    fn an_id_removed_and_recorded_again_is_the_newest() {
        // A frozen clock: `a`'s two records have the same expiry.
        let store = MemoryReplayStore::with_capacity(2).clock(Clock::from_fn(|| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30)
        }));
        let ttl = Duration::from_secs(60);
        assert!(block_on(store.insert("github:a", ttl)));
        assert!(block_on(store.insert("github:b", ttl)));
        assert!(block_on(store.remove("github:a")));
        assert!(block_on(store.insert("github:a", ttl)));
        // Full: the oldest record goes, `b`'s, not `a`'s second one.
        assert!(block_on(store.insert("github:c", ttl)));
        assert!(!block_on(store.insert("github:a", ttl)), "a is still held");
        assert!(block_on(store.insert("github:b", ttl)), "b was evicted");
    }

    #[test]
    fn completing_with_an_unchanged_expiry_queues_nothing() {
        // A frozen clock: the claim and its completions fall in the same millisecond.
        let store = MemoryReplayStore::with_capacity(2).clock(Clock::from_fn(|| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30)
        }));
        let ttl = Duration::from_secs(60);
        let token = ClaimToken::unique();
        assert!(block_on(store.claim("github:a", token, ttl)));
        assert!(block_on(store.complete("github:a", token, ttl)));
        for _ in 0..100 {
            assert!(
                !block_on(store.complete("github:a", token, ttl)),
                "done once"
            );
        }
        assert_eq!(store.lock().handled.records.len(), 1);
        assert!(block_on(store.completed("github:a")));
    }
}
