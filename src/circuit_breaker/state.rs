//! The atomic core shared by every clone of a breaker.
//!
//! One `AtomicU64` holds the state, the generation and the state's deadline:
//! `deadline_ms (40) | generation (21) | state (3)`. A transition is one compare-and-swap of
//! that word that bumps the generation; windows, the consecutive-failure counter and the
//! half-open permits are tagged with the generation and reset themselves lazily, so nothing
//! else has to happen atomically with the transition. Tags keep only the low bits of the
//! generation (16 in windows and the half-open word, 21 elsewhere), so the winner of each
//! transition then sweeps: it rewrites the words of other generations (and a few window slots)
//! to "empty, current generation", which keeps every stored tag far younger than a tag period
//! (see [`Core::sweep`] and the window module's docs).
//!
//! Hot path (CLOSED, count window, no slow-call rule): `call` loads the state word, and the
//! response future carries a small id instead of a reference-counted pointer, so calls on many
//! threads do not fight over one reference count. The id finds the core again through a
//! per-thread cache (see [`with_core`]). A success that completes while the window is full of
//! successes of its generation and no run of failures is counting writes nothing: recording it
//! would only replace one success of the ring by another.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{CircuitBreakerConfig, Listener, SlidingWindow};
use super::error::{CircuitOpen, IllegalTransition};
use super::event::{CircuitEvent, CircuitState, Snapshot, TripReason};
use super::window::{CALL, CountWindow, Counts, FAILED, SLOW, TimeWindow, Window, newer};

const STATE_BITS: u32 = 3;
const GEN_BITS: u32 = 21;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const DEADLINE_SHIFT: u32 = STATE_BITS + GEN_BITS;
const DEADLINE_MAX: u64 = (1 << (64 - DEADLINE_SHIFT)) - 1;

/// The deadline of a HALF_OPEN period under `max_half_open_wait` that has admitted no probe yet:
/// its wait is counted from its first probe (a period entered by reading the state, or by
/// hand, has nothing to time out before one).
const CLOCK_UNSTARTED: u64 = DEADLINE_MAX;

#[inline]
fn pack(state: CircuitState, generation: u32, deadline_ms: u64) -> u64 {
    (deadline_ms.min(DEADLINE_MAX) << DEADLINE_SHIFT)
        | ((u64::from(generation) & GEN_MASK) << STATE_BITS)
        | state.to_bits()
}

#[derive(Clone, Copy, Debug)]
struct Word {
    state: CircuitState,
    generation: u32,
    deadline_ms: u64,
    raw: u64,
}

impl Word {
    /// When this HALF_OPEN period ends at the latest: `None` without a maximum wait, or before
    /// its first probe started the wait.
    fn half_open_until(&self) -> Option<u64> {
        (self.state == CircuitState::HalfOpen
            && self.deadline_ms != 0
            && self.deadline_ms != CLOCK_UNSTARTED)
            .then_some(self.deadline_ms)
    }

    /// Whether this is a HALF_OPEN period whose maximum wait has passed at `now_ms`.
    fn half_open_lapsed(&self, now_ms: u64) -> bool {
        self.half_open_until().is_some_and(|until| now_ms >= until)
    }
}

#[inline]
fn unpack(raw: u64) -> Word {
    Word {
        state: CircuitState::from_bits(raw),
        generation: ((raw >> STATE_BITS) & GEN_MASK) as u32,
        deadline_ms: raw >> DEADLINE_SHIFT,
        raw,
    }
}

#[inline]
fn tag(generation: u32) -> u16 {
    generation as u16
}

/// Whether generation `their`, read from a shared word, is newer than `mine`: whether it lies
/// in `(mine, current]` on the 21 bits kept, where `current` is the generation now, read after
/// `their` (see [`newer`], which does the same for 16-bit tags).
#[inline]
fn generation_newer(their: u32, mine: u32, current: u32) -> bool {
    let d = |a: u32, b: u32| u64::from(a.wrapping_sub(b)) & GEN_MASK;
    d(their, mine) != 0 && d(their, mine) <= d(current, mine)
}

/// When the state a transition enters ends, and what entering it consumes. Computed without
/// side effects; [`Core::transition`] applies them only when it wins.
#[derive(Clone, Copy, Debug, Default)]
struct Deadline {
    ms: u64,
    /// The backoff attempt an automatic opening counts.
    attempt: Option<u32>,
    /// The upstream's `Retry-After` instant this opening consumes (0: none).
    upstream_ms: u64,
}

impl Deadline {
    const NONE: Self = Self {
        ms: 0,
        attempt: None,
        upstream_ms: 0,
    };
}

/// How a call ended, as far as the breaker is concerned.
///
/// See the [module docs](super).
///
/// # Example
///
/// ```
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer.with_classifier(|r: &Result<u32, BoxError>| match r {
///         Ok(0) => Outcome::Neutral, // nothing to sync: says nothing about the upstream
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     }))
///     .service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
/// svc.oneshot(0).await.unwrap();
/// assert_eq!(handle.snapshot().buffered_calls, 0);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked (or failed for reasons that say nothing about the upstream's health,
    /// like a 404).
    Success,
    /// The call failed in a way that counts against the upstream.
    Failure,
    /// The call says nothing either way (cancelled, or a probe whose body was dropped, unless
    /// the call or its body panicked, which is a failure); it is not recorded, and a half-open
    /// probe gives its permit back.
    Neutral,
}

/// Weak references to live cores, found by a small id: fast-path recorders carry that id
/// instead of an `Arc`. Touched when a core is created or dropped, and when a thread meets a
/// core for the first time.
struct Registry {
    slots: Vec<(u32, Weak<Core>)>,
    free: Vec<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RegId {
    index: u32,
    tag: u32,
}

const REG_INDEX_BITS: u32 = 20;
const REG_TAG_MASK: u32 = (1 << 20) - 1;

impl RegId {
    /// index (20) | tag (20), or `None` when the index does not fit.
    fn pack(self) -> Option<u64> {
        (self.index < 1 << REG_INDEX_BITS)
            .then(|| u64::from(self.index) | (u64::from(self.tag & REG_TAG_MASK) << REG_INDEX_BITS))
    }

    fn unpack(bits: u64) -> Self {
        Self {
            index: (bits & ((1 << REG_INDEX_BITS) - 1)) as u32,
            tag: ((bits >> REG_INDEX_BITS) as u32) & REG_TAG_MASK,
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn register(weak: Weak<Core>) -> RegId {
    let mut reg = registry();
    if let Some(index) = reg.free.pop() {
        let slot = &mut reg.slots[index as usize];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = weak;
        RegId {
            index,
            tag: slot.0 & REG_TAG_MASK,
        }
    } else {
        let index = reg.slots.len() as u32;
        reg.slots.push((0, weak));
        RegId { index, tag: 0 }
    }
}

fn unregister(id: RegId) {
    let mut reg = registry();
    if let Some(slot) = reg.slots.get_mut(id.index as usize)
        && slot.0 & REG_TAG_MASK == id.tag
    {
        slot.1 = Weak::new();
        // A slot is given out again with the next tag, until its tags run out: then it is
        // retired, so that a recorder still pending for the core it held can never find
        // another core under the same id.
        if id.tag != REG_TAG_MASK {
            reg.free.push(id.index);
        }
    }
}

fn lookup(packed: u64) -> Option<Arc<Core>> {
    let id = RegId::unpack(packed);
    let reg = registry();
    reg.slots
        .get(id.index as usize)
        .filter(|slot| slot.0 & REG_TAG_MASK == id.tag)
        .and_then(|slot| slot.1.upgrade())
}

/// Cores this thread has finished fast-path calls for, by packed id: found again without a
/// lock and without touching a shared reference count.
const CACHED_CORES: usize = 32;

thread_local! {
    static CORES: RefCell<Vec<(u64, Arc<Core>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the core of `packed`, if it is still alive.
///
/// The per-thread cache is only borrowed shared while `f` runs, so `f` may finish other
/// recorders (a listener can); only filling the cache needs it exclusively, and is skipped
/// when that is not possible.
#[inline]
fn with_core<F: FnOnce(&Core)>(packed: u64, f: F) {
    let mut f = Some(f);
    let _ = CORES.try_with(|cores| {
        if let Ok(cores) = cores.try_borrow()
            && let Some((_, core)) = cores.iter().find(|(id, _)| *id == packed)
            && let Some(f) = f.take()
        {
            f(core);
        }
    });
    if let Some(f) = f {
        with_core_uncached(packed, f);
    }
}

/// [`with_core`] for a core this thread has not cached: found in the registry, then cached.
#[cold]
#[inline(never)]
fn with_core_uncached(packed: u64, f: impl FnOnce(&Core)) {
    let Some(core) = lookup(packed) else {
        return; // the breaker is gone: nothing to record
    };
    f(&core);
    let _ = CORES.try_with(|cores| {
        if let Ok(mut cores) = cores.try_borrow_mut() {
            // Forget breakers nobody else holds any more, then make room.
            cores.retain(|(_, c)| Arc::strong_count(c) > 1);
            if cores.iter().any(|(id, _)| *id == packed) {
                return; // cached meanwhile by a call `f` made
            }
            if cores.len() >= CACHED_CORES {
                cores.remove(0);
            }
            cores.push((packed, core));
        }
    });
}

/// The probe count of `Core::probes_in_flight`.
const PROBE_COUNT: u64 = u32::MAX as u64;

/// Half-open word: tag (16) | taken (12) | successes (12) | failures (12) | slow (12).
const HALF_FIELD: u64 = (1 << 12) - 1;

#[inline]
fn half_fields(word: u64, tag: u16) -> [u64; 4] {
    if (word >> 48) as u16 != tag {
        return [0; 4];
    }
    [
        (word >> 36) & HALF_FIELD,
        (word >> 24) & HALF_FIELD,
        (word >> 12) & HALF_FIELD,
        word & HALF_FIELD,
    ]
}

#[inline]
fn half_pack(tag: u16, f: [u64; 4]) -> u64 {
    (u64::from(tag) << 48) | (f[0] << 36) | (f[1] << 24) | (f[2] << 12) | f[3]
}

/// The words a fast-path call reads when it completes: the consecutive-failure count and the
/// count window's aggregate. They live outside the core, in memory that is never freed (a
/// finished core hands its beacon to the next one), so a recorder reaches them through a plain
/// `&'static` and decides whether its success changes anything without finding the core.
#[repr(align(64))]
pub(crate) struct Beacon {
    /// The packed registry id of the core using it, `u64::MAX` when none does.
    owner: AtomicU64,
    /// generation (32) | consecutive failures (32)
    consecutive: AtomicU64,
    /// The count window's aggregate word.
    pub(crate) agg: AtomicU64,
    /// The aggregate of a window full of successes, tag 0 (none for a time window).
    all_ok: AtomicU64,
}

static FREE_BEACONS: Mutex<Vec<&'static Beacon>> = Mutex::new(Vec::new());

impl Beacon {
    /// A beacon for a new core, reset: reused if one was handed back, else allocated for good.
    fn take() -> &'static Beacon {
        let free = FREE_BEACONS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let beacon = free.unwrap_or_else(|| {
            Box::leak(Box::new(Beacon {
                owner: AtomicU64::new(u64::MAX),
                consecutive: AtomicU64::new(0),
                agg: AtomicU64::new(0),
                all_ok: AtomicU64::new(u64::MAX),
            }))
        });
        beacon.consecutive.store(0, Ordering::Relaxed);
        beacon.agg.store(0, Ordering::Relaxed);
        beacon
    }

    fn give_back(&'static self) {
        self.owner.store(u64::MAX, Ordering::Release);
        FREE_BEACONS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(self);
    }

    /// Whether a success of `generation` would change nothing now: the count window is full of
    /// successes that were not slow, and no run of failures is counting.
    ///
    /// The consecutive-failure word is read first: a failure raises it before it enters the
    /// window, so a failure whose window entry is not seen here has not been counted yet
    /// either, and the success is ordered before it.
    #[inline]
    fn success_changes_nothing(&self, generation: u32) -> bool {
        let consecutive = self.consecutive.load(Ordering::Acquire);
        let counting = consecutive >> 32 == u64::from(generation) && consecutive as u32 != 0;
        !counting
            && self.agg.load(Ordering::Acquire)
                == self.all_ok.load(Ordering::Relaxed) | (u64::from(tag(generation)) << 48)
    }
}

pub(crate) struct Core {
    /// The configuration, without its listener (see `listener`).
    pub(crate) config: CircuitBreakerConfig,
    /// The event listener, held weakly: a [`Breaker`] (or a keyed layer's configuration)
    /// keeps it alive, so it goes with the breaker even while per-thread caches still hold
    /// the core.
    listener: Option<WeakListener>,
    id: RegId,
    beacon: &'static Beacon,
    /// The registry id packed for fast-path recorders: with a count window and no slow-call
    /// rule, when it fits.
    fast_id: Option<u64>,
    base: Instant,
    word: AtomicU64,
    window: Window,
    half: AtomicU64,
    /// generation (32) | backoff attempt (32): the attempt as of the transition that set it.
    attempts: AtomicU64,
    upstream_until_ms: AtomicU64,
    not_permitted: AtomicU64,
    /// generation (32) | rules reported (bits): the exceeded rules already reported in a
    /// METRICS_ONLY period.
    reported: AtomicU64,
    /// generation (32) | probes (32): the probes admitted in half-open periods of this
    /// generation or later and not finished yet. A new half-open period admits only as many
    /// as leave this under `half_open_probes`, so a probe of an earlier period that is still
    /// running counts against the next one: never more than `half_open_probes` calls are
    /// inside a recovering upstream. A half-open period that ends at its `max_half_open_wait`
    /// abandons the probes still running (as resilience4j does): the generation moves past
    /// theirs, so they no longer count, and a probe that never ends cannot keep every later
    /// period from probing. So does a move to a state that admits every call (CLOSED,
    /// DISABLED, METRICS_ONLY): the probes still running are then calls like any other.
    probes_in_flight: AtomicU64,
    /// Tasks whose `poll_ready` waits for OPEN to end (backpressure mode), woken by the next
    /// transition: a reset or a manual move ends OPEN before its deadline. By waiter: a
    /// service that stops waiting (dropped with a cancelled request, or ready) takes its waker
    /// back, so wakers of callers that gave up do not pile up while OPEN lasts.
    parked: Mutex<HashMap<u64, Waker>>,
    /// The id of the next waiter in `parked`.
    next_waiter: AtomicU64,
    /// Transition events not told to the listener yet (see [`Told`]).
    told: Mutex<Told>,
    min_calls: u32,
    slow_nanos: Option<u64>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = unpack(self.word.load(Ordering::Relaxed));
        f.debug_struct("Core")
            .field("name", &self.config.name)
            .field("state", &word.state)
            .field("generation", &word.generation)
            .finish_non_exhaustive()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        unregister(self.id);
        self.beacon.give_back();
    }
}

/// A listener held weakly (see [`Breaker`]).
type WeakListener = Weak<dyn Fn(&CircuitEvent) + Send + Sync>;

/// A breaker as its layer, services and handles hold it: the core and the event listener.
///
/// Fast-path recorders find the core through per-thread caches (see [`with_core`]), which
/// hold it strongly and may keep it a while after the breaker is gone. The core holds its
/// listener only weakly, so the listener, and what it holds (the sending half of a channel,
/// say), goes as soon as the last layer, service and handle do.
pub(crate) struct Breaker {
    core: Arc<Core>,
    _listener: Option<Listener>,
}

impl Breaker {
    /// A breaker: its core, and its listener kept alive by the returned holder.
    pub(crate) fn new(config: CircuitBreakerConfig) -> Arc<Self> {
        let listener = config.listener.clone();
        Arc::new(Self {
            core: Core::build(config, true),
            _listener: listener,
        })
    }

    /// A holder of `core`, keeping its listener alive (if whoever made the core still does).
    pub(crate) fn adopt(core: Arc<Core>) -> Arc<Self> {
        let listener = core.listener.as_ref().and_then(Weak::upgrade);
        Arc::new(Self {
            core,
            _listener: listener,
        })
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl std::ops::Deref for Breaker {
    type Target = Arc<Core>;

    #[inline]
    fn deref(&self) -> &Arc<Core> {
        &self.core
    }
}

/// A call admitted by [`Core::admit_ahead`].
pub(crate) enum Admission {
    /// Admitted while CLOSED in this generation; the recorder is made when the call happens.
    Closed(u32),
    /// Admitted otherwise (a half-open probe holding its permit, DISABLED).
    Recorded(Recorder),
}

impl Admission {
    /// The generation the call was admitted in.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        match self {
            Admission::Closed(generation) => *generation,
            Admission::Recorded(recorder) => recorder.generation(),
        }
    }

    /// Whether this admits a half-open probe.
    #[inline]
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Admission::Recorded(recorder) if recorder.bits & PROBE != 0)
    }

    /// The recorder of the call, which happens now.
    #[inline]
    pub(crate) fn into_recorder(self, core: &Arc<Core>) -> Recorder {
        match self {
            Admission::Closed(generation) => core.closed_recorder(generation),
            // A probe admitted ahead was stamped when it was admitted; the time the inner
            // service then took to be ready is no part of the call.
            Admission::Recorded(mut recorder) => {
                if let Some(core) = &recorder.core
                    && core.slow_nanos.is_some()
                {
                    recorder.bits = (recorder.bits & !PAYLOAD) | (core.start_units() & PAYLOAD);
                }
                recorder
            }
        }
    }
}

/// Why [`Core::admit`] refused a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refusal {
    state: CircuitState,
    /// When the refusing state ends at the latest (the core's milliseconds): OPEN's deadline,
    /// or HALF_OPEN's under `max_half_open_wait`; none in FORCED_OPEN, which only a hand ends.
    /// The wait is computed when the refusal is answered, which may be later than the
    /// decision (`poll_ready`, then `call`).
    until_ms: Option<u64>,
    /// The generation of the period that refused: if another one has begun by the time the
    /// refusal is answered, the wait is that period's (see [`Core::refuse`]).
    generation: u32,
}

impl Refusal {
    fn new(state: CircuitState, until_ms: Option<u64>, generation: u32) -> Self {
        Self {
            state,
            until_ms,
            generation,
        }
    }

    /// The refusal of the refusing period in `word`: OPEN until its deadline, HALF_OPEN (no
    /// probe permit left) until its deadline when `max_half_open_wait` set one, FORCED_OPEN
    /// with no end.
    fn of(word: Word) -> Self {
        let until_ms = match word.state {
            CircuitState::Open => Some(word.deadline_ms),
            CircuitState::HalfOpen => word.half_open_until(),
            _ => None,
        };
        Self::new(word.state, until_ms, word.generation)
    }
}

/// Recorder bits: probe (1) | fast (1) | stopped (1) | generation (21) | 40 bits of payload:
/// the start time in units of 1024 ns (it wraps after 13 days, far beyond any slow-call
/// threshold), or once the clock is stopped the call's length in those units, or for a fast
/// recorder, which holds no `Arc`, the core's registry id.
const PROBE: u64 = 1 << 63;
const FAST: u64 = 1 << 62;
const STOPPED: u64 = 1 << 61;
const GEN_SHIFT: u32 = 40;
const PAYLOAD: u64 = (1 << GEN_SHIFT) - 1;

#[inline]
const fn recorder_bits(generation: u32, start_units: u64) -> u64 {
    (((generation as u64) & GEN_MASK) << GEN_SHIFT) | (start_units & PAYLOAD)
}

impl Core {
    /// A core whose calls each hold a reference to it, so that
    /// `Arc::strong_count(core) == 1` means no call is in flight (keyed breakers evict such
    /// cores). It never takes the fast path, whose recorders hold only an id. The caller
    /// keeps the listener of `config` alive.
    pub(crate) fn new_counted(config: CircuitBreakerConfig) -> Arc<Self> {
        Self::build(config, false)
    }

    fn build(mut config: CircuitBreakerConfig, fast: bool) -> Arc<Self> {
        let listener = config.listener.take().map(|l| Arc::downgrade(&l));
        let beacon = Beacon::take();
        let (window, min_calls) = match config.window {
            SlidingWindow::Count(n) => (
                Window::Count(CountWindow::new(n, &beacon.agg)),
                config.minimum_calls.min(n),
            ),
            SlidingWindow::Time { span, buckets } => (
                Window::Time(TimeWindow::new(
                    u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
                    buckets,
                )),
                config.minimum_calls,
            ),
        };
        let slow_nanos = config
            .slow_rate
            .map(|_| u64::try_from(config.slow_duration.as_nanos()).unwrap_or(u64::MAX));
        Arc::new_cyclic(|weak| {
            let id = register(weak.clone());
            // The fast path needs no start time, so the id travels in its place.
            let fast_id = match (&window, slow_nanos) {
                (Window::Count(_), None) if fast => id.pack(),
                _ => None,
            };
            let all_ok = match &window {
                Window::Count(w) => w.all_ok_word(0),
                Window::Time(_) => u64::MAX,
            };
            beacon.all_ok.store(all_ok, Ordering::Relaxed);
            beacon
                .owner
                .store(fast_id.unwrap_or(u64::MAX), Ordering::Release);
            Core {
                listener,
                id,
                beacon,
                fast_id,
                base: Instant::now(),
                word: AtomicU64::new(pack(CircuitState::Closed, 0, 0)),
                window,
                half: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                upstream_until_ms: AtomicU64::new(0),
                not_permitted: AtomicU64::new(0),
                reported: AtomicU64::new(0),
                probes_in_flight: AtomicU64::new(0),
                parked: Mutex::new(HashMap::new()),
                next_waiter: AtomicU64::new(0),
                told: Mutex::new(Told {
                    next: 1,
                    waiting: Vec::new(),
                    telling: false,
                }),
                min_calls,
                slow_nanos,
                config,
            }
        })
    }

    #[inline]
    fn now_nanos(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// The start time of a call, for the slow-call rule (0 when the rule is off).
    #[inline]
    fn start_units(&self) -> u64 {
        if self.slow_nanos.is_some() {
            self.now_nanos() >> 10
        } else {
            0
        }
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    fn ms_of(d: Duration) -> u64 {
        // Round up so a deadline is never early.
        let ms = d.as_millis() + u128::from(!d.as_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    pub(crate) fn deadline_instant(&self, deadline_ms: u64) -> Instant {
        self.base + Duration::from_millis(deadline_ms)
    }

    /// The current generation.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        unpack(self.word.load(Ordering::Acquire)).generation
    }

    /// The state as stored, without applying the transitions that time made due (OPEN to
    /// HALF_OPEN, HALF_OPEN to OPEN): nothing runs, no listener is called.
    pub(crate) fn stored_state(&self) -> CircuitState {
        unpack(self.word.load(Ordering::Acquire)).state
    }

    /// Whether the breaker is OPEN past its open duration, or HALF_OPEN: its wait is over and
    /// it is waiting for a probe. Read from the stored word, without applying transitions or
    /// calling the listener.
    pub(crate) fn open_lapsed(&self) -> bool {
        let word = unpack(self.word.load(Ordering::Acquire));
        match word.state {
            CircuitState::Open => self.now_ms() >= word.deadline_ms,
            CircuitState::HalfOpen => true,
            _ => false,
        }
    }

    /// Whether the current generation has recorded what could open it: a failure (in its
    /// window, or a run of consecutive failures), or, with a slow-call rule, a slow call in its
    /// window. Read without applying transitions or calling the listener.
    pub(crate) fn has_failures_on_record(&self) -> bool {
        let generation = self.generation();
        let consecutive = self.beacon.consecutive.load(Ordering::Acquire);
        if consecutive >> 32 == u64::from(generation) && consecutive as u32 > 0 {
            return true;
        }
        let counts = self.window.read(tag(generation), self.now_nanos());
        counts.failures > 0 || (self.config.slow_rate.is_some() && counts.slow > 0)
    }

    /// The tag of the current generation, as windows and the half-open word store it.
    #[inline]
    fn current_tag(&self) -> u16 {
        tag(self.generation())
    }

    /// The instant OPEN ends, when the breaker is OPEN and that is still in the future.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        let word = unpack(self.word.load(Ordering::Acquire));
        (word.state == CircuitState::Open && self.now_ms() < word.deadline_ms)
            .then(|| self.deadline_instant(word.deadline_ms))
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes `waker` at the next transition, as the waker of `waiter` (given an id if it has
    /// none), replacing the one it left before. Call it before reading whether OPEN still
    /// lasts, so a transition in between is not missed.
    pub(crate) fn park(&self, waiter: &mut Option<u64>, waker: &Waker) {
        let id = *waiter.get_or_insert_with(|| self.next_waiter.fetch_add(1, Ordering::Relaxed));
        let mut parked = self.parked();
        if !parked.get(&id).is_some_and(|w| w.will_wake(waker)) {
            parked.insert(id, waker.clone());
        }
    }

    /// Takes back the waker `waiter` left, if any: it no longer waits.
    pub(crate) fn unpark(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            self.parked().remove(&id);
        }
    }

    /// Wakes every task parked by [`park`](Self::park).
    fn unpark_all(&self) {
        let parked = std::mem::take(&mut *self.parked());
        for waker in parked.into_values() {
            waker.wake();
        }
    }

    /// Decides whether a call may go through. A refusal is neither counted nor reported
    /// until it is turned into an error by [`refuse`](Self::refuse).
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Recorder, Refusal> {
        let word = unpack(self.word.load(Ordering::Acquire));
        match word.state {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                Ok(self.closed_recorder(word.generation))
            }
            CircuitState::Disabled => Ok(Recorder::passthrough(word.generation)),
            _ => self.admit_slow(),
        }
    }

    /// The generation, if the breaker is CLOSED or METRICS_ONLY (every call is admitted).
    #[inline]
    pub(crate) fn closed_generation(&self) -> Option<u32> {
        let word = unpack(self.word.load(Ordering::Acquire));
        matches!(word.state, CircuitState::Closed | CircuitState::MetricsOnly)
            .then_some(word.generation)
    }

    /// Decides whether a call may go through, ahead of the call: a CLOSED admission is kept as
    /// its generation, and its recorder made by [`Admission::into_recorder`] when the call
    /// happens (so a service holds one small word between `poll_ready` and `call`).
    #[inline]
    pub(crate) fn admit_ahead(self: &Arc<Self>) -> Result<Admission, Refusal> {
        let word = unpack(self.word.load(Ordering::Acquire));
        match word.state {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                Ok(Admission::Closed(word.generation))
            }
            CircuitState::Disabled => {
                Ok(Admission::Recorded(Recorder::passthrough(word.generation)))
            }
            _ => self.admit_slow().map(Admission::Recorded),
        }
    }

    /// The recorder of a call admitted while CLOSED (or METRICS_ONLY) in `generation`.
    #[inline]
    pub(crate) fn closed_recorder(self: &Arc<Self>, generation: u32) -> Recorder {
        if let Some(id) = self.fast_id {
            return Recorder {
                core: None,
                beacon: Some(self.beacon),
                bits: FAST | recorder_bits(generation, id),
            };
        }
        Recorder {
            core: Some(Arc::clone(self)),
            beacon: None,
            bits: recorder_bits(generation, self.start_units()),
        }
    }

    #[cold]
    fn admit_slow(self: &Arc<Self>) -> Result<Recorder, Refusal> {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            match word.state {
                CircuitState::Closed | CircuitState::MetricsOnly => {
                    return Ok(self.closed_recorder(word.generation));
                }
                CircuitState::Disabled => return Ok(Recorder::passthrough(word.generation)),
                CircuitState::ForcedOpen => {
                    return Err(Refusal::of(word));
                }
                CircuitState::Open => {
                    let now = self.now_ms();
                    if now < word.deadline_ms {
                        return Err(Refusal::of(word));
                    }
                    // This call is the period's first probe: its wait starts now.
                    let deadline = self.half_open_deadline(now, true);
                    self.transition(word, CircuitState::HalfOpen, deadline, None);
                }
                CircuitState::HalfOpen => {
                    if word.deadline_ms == CLOCK_UNSTARTED {
                        // The first probe of a period entered without one starts its wait. The
                        // generation stays: no call of this period has been admitted to record.
                        let started = pack(
                            CircuitState::HalfOpen,
                            word.generation,
                            self.half_open_deadline(self.now_ms(), true).ms,
                        );
                        let _ = self.word.compare_exchange(
                            word.raw,
                            started,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        continue;
                    }
                    if word.half_open_lapsed(self.now_ms()) {
                        self.half_open_timed_out(word);
                        continue;
                    }
                    if !self.enter_probe(word.generation) {
                        if self.generation() != word.generation {
                            continue;
                        }
                        return Err(Refusal::of(word));
                    }
                    if self.take_permit(tag(word.generation)) {
                        // Re-check: a verdict may have ended this half-open period meanwhile.
                        let now_word = unpack(self.word.load(Ordering::Acquire));
                        if now_word.generation != word.generation {
                            self.leave_probe(word.generation);
                            continue;
                        }
                        return Ok(Recorder {
                            core: Some(Arc::clone(self)),
                            beacon: None,
                            bits: PROBE | recorder_bits(word.generation, self.start_units()),
                        });
                    }
                    self.leave_probe(word.generation);
                    if self.generation() != word.generation {
                        continue;
                    }
                    return Err(Refusal::of(word));
                }
            }
        }
    }

    /// Records the outcome of a call admitted with recorder `bits`.
    #[inline]
    fn complete(&self, bits: u64, outcome: Outcome, retry_after: Option<Duration>) {
        let generation = ((bits >> GEN_SHIFT) & GEN_MASK) as u32;
        let probe = bits & PROBE != 0;
        if !probe && outcome == Outcome::Success && self.success_changes_nothing(generation) {
            return;
        }
        // The probe's slot is given back however recording ends.
        let _slot = probe.then(|| LeaveProbe(self, generation));
        self.record(
            generation,
            probe,
            outcome,
            bits & (STOPPED | PAYLOAD),
            retry_after,
        );
    }

    /// Whether recording a success of `generation` now would change nothing: the count window
    /// is full of successes that were not slow, and no run of failures is counting. Recording
    /// it would only replace the oldest success of the ring by another one.
    ///
    /// The consecutive-failure word is read first: a failure raises it before it enters the
    /// window, so a failure whose window entry is not seen here has not been counted yet
    /// either, and the success is ordered before it.
    #[inline]
    fn success_changes_nothing(&self, generation: u32) -> bool {
        matches!(self.window, Window::Count(_))
            && self.slow_nanos.is_none()
            && self.beacon.success_changes_nothing(generation)
    }

    /// Counts one more probe of `generation` inside the upstream, unless `half_open_probes`
    /// already are, or that generation's probes are no longer counted (it has ended).
    fn enter_probe(&self, generation: u32) -> bool {
        let limit = u64::from(self.config.half_open_probes);
        self.probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let ended = self.probes_abandoned(word, generation);
                (!ended && (word & PROBE_COUNT) < limit).then(|| word + 1)
            })
            .is_ok()
    }

    /// A probe admitted in `generation` finished (any outcome) or was dropped. One that a
    /// half-open timeout abandoned is no longer counted.
    fn leave_probe(&self, generation: u32) {
        let _ = self
            .probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let abandoned = self.probes_abandoned(word, generation);
                (word & PROBE_COUNT != 0 && !abandoned).then(|| word - 1)
            });
    }

    /// Whether the probes of `generation` no longer count in the `probes_in_flight` value
    /// `word`: a half-open timeout abandoned them, and it counts a later generation's.
    fn probes_abandoned(&self, word: u64, generation: u32) -> bool {
        let since = (word >> 32) as u32;
        since != generation && generation_newer(since, generation, self.generation())
    }

    /// Stops counting the probes still running: from `generation` on, only probes admitted
    /// in it or later count. Run by the winner of a half-open timeout, and of a move to a
    /// state that admits every call.
    fn abandon_probes(&self, generation: u32) {
        let _ = self
            .probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let since = (word >> 32) as u32;
                (since != generation && !generation_newer(since, generation, self.generation()))
                    .then_some(u64::from(generation) << 32)
            });
    }

    /// The deadline of a HALF_OPEN period entered at `now_ms`: none without a maximum wait;
    /// `probing` when the call entering it is its first probe, which starts the wait; the wait
    /// starts with the first probe otherwise.
    fn half_open_deadline(&self, now_ms: u64, probing: bool) -> Deadline {
        let ms = match self.config.max_half_open_wait {
            None => 0,
            Some(_) if !probing => CLOCK_UNSTARTED,
            Some(wait) => now_ms
                .saturating_add(Self::ms_of(wait))
                .clamp(1, CLOCK_UNSTARTED - 1),
        };
        Deadline {
            ms,
            ..Deadline::NONE
        }
    }

    /// Ends the HALF_OPEN period `word` whose maximum wait has passed: OPEN again, from the
    /// moment the wait ended rather than from whenever this is seen (so when the open duration
    /// has passed too, the next admission probes at once). False if another thread moved first.
    fn half_open_timed_out(&self, word: Word) -> bool {
        let deadline = self.open_deadline(word.deadline_ms, true);
        self.transition(
            word,
            CircuitState::Open,
            deadline,
            Some(TripReason::HalfOpenTimeout),
        )
    }

    /// The deadline of a new OPEN period starting now; `automatic` counts it as an attempt.
    /// Nothing is stored: the transition that wins applies the attempt and consumes the
    /// upstream's `Retry-After`.
    fn open_deadline(&self, now_ms: u64, automatic: bool) -> Deadline {
        let attempt = (self.attempts.load(Ordering::Acquire) as u32).saturating_add(1);
        self.open_deadline_of(now_ms, attempt, automatic)
    }

    /// The deadline of a trip from CLOSED: the first opening since the breaker was closed,
    /// whatever count is stored. The move to CLOSED resets the count after its transition has
    /// won, so a trip right after it may still read the count of the openings before.
    fn trip_deadline(&self, now_ms: u64) -> Deadline {
        self.open_deadline_of(now_ms, 1, true)
    }

    fn open_deadline_of(&self, now_ms: u64, attempt: u32, automatic: bool) -> Deadline {
        let mut duration = self.config.open_duration.pick(attempt);
        let mut upstream_ms = 0;
        if let Some(cap) = self.config.retry_after_cap {
            upstream_ms = self.upstream_until_ms.load(Ordering::Acquire);
            if upstream_ms > now_ms {
                duration = duration.max(Duration::from_millis(upstream_ms - now_ms).min(cap));
            }
        }
        Deadline {
            ms: now_ms.saturating_add(Self::ms_of(duration).max(1)),
            attempt: automatic.then_some(attempt),
            upstream_ms,
        }
    }

    /// Stores the backoff attempt as of `generation`, unless a newer generation has stored
    /// one already.
    fn set_attempt(&self, generation: u32, attempt: u32) {
        let next = (u64::from(generation) << 32) | u64::from(attempt);
        let _ = self
            .attempts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let stored = (current >> 32) as u32;
                (stored == generation || !generation_newer(stored, generation, self.generation()))
                    .then_some(next)
            });
    }

    /// Takes a probe permit of the half-open period tagged `tag`; false when they are all
    /// taken, or when a newer period owns the word (which is then left alone).
    fn take_permit(&self, tag: u16) -> bool {
        let limit = u64::from(self.config.half_open_probes);
        let mut word = self.half.load(Ordering::Acquire);
        loop {
            let their = (word >> 48) as u16;
            if their != tag && newer(their, tag, self.current_tag()) {
                return false;
            }
            let mut f = half_fields(word, tag);
            if f[0] >= limit {
                return false;
            }
            f[0] += 1;
            match self.half.compare_exchange_weak(
                word,
                half_pack(tag, f),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    fn release_permit(&self, generation: u32) {
        let tag = tag(generation);
        let mut word = self.half.load(Ordering::Acquire);
        loop {
            if (word >> 48) as u16 != tag {
                return;
            }
            let mut f = half_fields(word, tag);
            if f[0] == 0 {
                return;
            }
            f[0] -= 1;
            match self.half.compare_exchange_weak(
                word,
                half_pack(tag, f),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// The rejection for a call whose `poll_ready` skipped the inner service.
    #[cold]
    pub(crate) fn reject_unready(&self) -> CircuitOpen {
        let word = unpack(self.word.load(Ordering::Acquire));
        let until = match word.state {
            CircuitState::Open => Some(word.deadline_ms),
            CircuitState::HalfOpen => word.half_open_until(),
            _ => None,
        }
        .filter(|&until| until > self.now_ms());
        self.refuse(Refusal::new(word.state, until, word.generation))
    }

    /// The error for a refused call, counted and reported.
    ///
    /// A refusal decided in `poll_ready` may be answered by a `call` made after the refusing
    /// period ended: its wait would then be that of a period that is over (an OPEN deadline
    /// already past while the breaker has opened again, say). The wait told is the current
    /// period's: until the deadline of the OPEN (or timed HALF_OPEN) period now refusing, none
    /// in FORCED_OPEN, and zero once the breaker admits calls again.
    #[cold]
    pub(crate) fn refuse(&self, refusal: Refusal) -> CircuitOpen {
        let Refusal {
            mut state,
            mut until_ms,
            generation,
        } = refusal;
        let word = unpack(self.word.load(Ordering::Acquire));
        if word.generation != generation {
            if matches!(
                word.state,
                CircuitState::Open | CircuitState::HalfOpen | CircuitState::ForcedOpen
            ) {
                let now = Refusal::of(word);
                (state, until_ms) = (now.state, now.until_ms);
            } else {
                until_ms = Some(0); // the refusing period is over: no wait
            }
        }
        let retry_after =
            until_ms.map(|until| Duration::from_millis(until.saturating_sub(self.now_ms())));
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            breaker = &*self.config.name,
            state = state.as_str(),
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "circuit breaker rejected a call"
        );
        self.emit(|| CircuitEvent::Rejected {
            name: self.config.name.clone(),
            state,
            retry_after,
        });
        CircuitOpen::new(state, retry_after)
    }

    /// Moves from exactly `from` to `to`. Returns false if another thread moved first.
    fn transition(
        &self,
        from: Word,
        to: CircuitState,
        deadline: Deadline,
        reason: Option<TripReason>,
    ) -> bool {
        self.transition_as(from, to, deadline, reason, Cause::Other)
    }

    /// Opens a CLOSED breaker because the rule `reason` was exceeded, which is reported first.
    /// Only the call whose transition wins reports it: failures that complete together all
    /// find the rule exceeded, but it is one trip.
    fn trip(&self, from: Word, deadline: Deadline, reason: TripReason) -> bool {
        self.transition_as(
            from,
            CircuitState::Open,
            deadline,
            Some(reason),
            Cause::Trip,
        )
    }

    fn transition_as(
        &self,
        from: Word,
        to: CircuitState,
        deadline: Deadline,
        reason: Option<TripReason>,
        cause: Cause,
    ) -> bool {
        let generation = from.generation.wrapping_add(1) & GEN_MASK as u32;
        let next = pack(to, generation, deadline.ms);
        if self
            .word
            .compare_exchange(from.raw, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let exceeded = reason.filter(|_| cause == Cause::Trip);
        // Queued at once, so the next generation's event never waits on this one for long.
        self.queue_transition(
            generation,
            [
                exceeded.map(|reason| CircuitEvent::ThresholdExceeded {
                    name: self.config.name.clone(),
                    reason,
                }),
                // A move to the state the breaker is in (a reset of a CLOSED breaker, a manual
                // move to the current state) starts a new window but changes no state: as in
                // resilience4j, no transition is told. Its turn is still queued, so the events
                // after it keep their order.
                (from.state != to).then(|| CircuitEvent::StateTransition {
                    name: self.config.name.clone(),
                    from: from.state,
                    to,
                    reason,
                }),
                // As in resilience4j, a reset is told after its transition, and also when the
                // breaker was CLOSED already.
                (cause == Cause::Reset).then(|| CircuitEvent::Reset {
                    name: self.config.name.clone(),
                }),
            ],
        );
        if let Some(reason) = exceeded {
            tracing::debug!(breaker = &*self.config.name, reason = ?reason, "circuit breaker threshold exceeded");
        }
        self.sweep();
        // Probes still running stop counting when their period ends at its maximum wait, and
        // when the breaker enters a state that admits every call: they are then calls in
        // flight like any other, and one that never ends must not hold a permit of every
        // later half-open period (a reset would not bring the breaker back).
        if (from.state == CircuitState::HalfOpen && reason == Some(TripReason::HalfOpenTimeout))
            || matches!(
                to,
                CircuitState::Closed | CircuitState::Disabled | CircuitState::MetricsOnly
            )
        {
            self.abandon_probes(generation);
        }
        if deadline.upstream_ms != 0 {
            // Consumed by this opening; one recorded since stays for the next.
            let _ = self.upstream_until_ms.compare_exchange(
                deadline.upstream_ms,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        if from.state == CircuitState::Open {
            self.unpark_all();
        }
        if to == CircuitState::Closed {
            self.set_attempt(generation, 0);
        } else if let Some(attempt) = deadline.attempt {
            self.set_attempt(generation, attempt);
        }
        if to == CircuitState::Open || to == CircuitState::ForcedOpen {
            tracing::warn!(
                breaker = &*self.config.name,
                from = from.state.as_str(),
                to = to.as_str(),
                reason = ?reason,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                breaker = &*self.config.name,
                from = from.state.as_str(),
                to = to.as_str(),
                "circuit breaker state changed"
            );
        }
        self.tell_transitions();
        true
    }

    fn told(&self) -> std::sync::MutexGuard<'_, Told> {
        self.told
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps the events of the transition that started `generation` (the threshold exceeded
    /// that caused it, if any; the transition, none for a move to the same state; the reset
    /// that asked for it, if one did) until it is their turn.
    fn queue_transition(&self, generation: u32, events: [Option<CircuitEvent>; 3]) {
        if self.listener.is_some() {
            self.told().waiting.push((generation, events));
        }
    }

    /// Tells the listener the queued transition events, in the order of their generations.
    ///
    /// Two transitions made at once by two threads (or one started while the listener or a
    /// `tracing` subscriber runs for another) each win their compare-and-swap in turn, but
    /// nothing orders what they do next: told directly, the later one could reach the
    /// listener first, and whoever follows the events would end on a state the breaker has
    /// left. So one thread at a time tells, and it tells every event queued meanwhile by
    /// others, each after the one of the generation before it; the listener is called
    /// without the lock held, so it may itself cause transitions (told after it returns).
    fn tell_transitions(&self) {
        if self.listener.is_none() {
            return;
        }
        {
            let mut told = self.told();
            if told.telling {
                return; // the thread telling now tells this one too, in its turn
            }
            told.telling = true;
        }
        // Should telling unwind, the next transition tells what is left.
        let teller = Teller(self);
        loop {
            let mut told = self.told();
            let next = told.next;
            let Some(at) = told.waiting.iter().position(|(g, ..)| *g == next) else {
                // The next one is not queued yet: its transition's thread tells it.
                told.telling = false;
                drop(told);
                std::mem::forget(teller);
                return;
            };
            let (_, events) = told.waiting.swap_remove(at);
            told.next = next.wrapping_add(1) & GEN_MASK as u32;
            drop(told);
            for event in events.into_iter().flatten() {
                self.emit(|| event);
            }
        }
    }

    /// Keeps the generation tags of the shared words young, so that a value left untouched
    /// for a whole tag period (2^16 generations, 2^21 for the full generation) is never taken
    /// for a current one: the window's aggregate and next slots (see
    /// [`Window::sweep`](super::window::Window::sweep)), the half-open word, the run of
    /// consecutive failures and the rules reported in METRICS_ONLY, when they hold another
    /// generation's value, become "empty, current generation". Run by each transition's
    /// winner.
    ///
    /// Each word is read before the current generation, so its value is of that generation or
    /// an older one; an older value means "empty" to every reader and writer of the current
    /// generation, and so does the one swapped in, by compare-and-swap of the exact value read:
    /// nothing counted in the current generation is ever overwritten.
    fn sweep(&self) {
        self.window.sweep(|| self.current_tag());
        let mut half = self.half.load(Ordering::Acquire);
        loop {
            let tag = self.current_tag(); // read after the word
            if (half >> 48) as u16 == tag {
                break;
            }
            match self.half.compare_exchange_weak(
                half,
                half_pack(tag, [0; 4]),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => half = actual,
            }
        }
        // The probes word, only while no probe counts: its generation tells which probes do.
        let mut probes = self.probes_in_flight.load(Ordering::Acquire);
        loop {
            let generation = u64::from(self.generation()); // read after the word
            if probes & PROBE_COUNT != 0 || probes >> 32 == generation {
                break;
            }
            match self.probes_in_flight.compare_exchange_weak(
                probes,
                generation << 32,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => probes = actual,
            }
        }
        for word in [&self.beacon.consecutive, &self.reported] {
            let mut value = word.load(Ordering::Acquire);
            loop {
                let generation = u64::from(self.generation()); // read after the word
                if value >> 32 == generation {
                    break;
                }
                match word.compare_exchange_weak(
                    value,
                    generation << 32,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(actual) => value = actual,
                }
            }
        }
    }

    fn threshold_exceeded(&self, reason: TripReason) {
        tracing::debug!(breaker = &*self.config.name, reason = ?reason, "circuit breaker threshold exceeded");
        self.emit(|| CircuitEvent::ThresholdExceeded {
            name: self.config.name.clone(),
            reason,
        });
    }

    /// Gives an event to the listener, if there is one. A listener that panics (a channel
    /// send that fails at shutdown, say) is logged at error level; the panic never unwinds
    /// into the breaker, whose state stays consistent.
    fn emit(&self, event: impl FnOnce() -> CircuitEvent) {
        let Some(listener) = self.listener.as_ref().and_then(Weak::upgrade) else {
            return; // none, or the breaker is gone
        };
        let event = event();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener(&event))) {
            // A listener's panic message may name a URL with its credentials (an `unwrap` of a
            // failed call to a metrics endpoint): redacted, as the error layer does.
            let message =
                crate::redact::redact(crate::panic::message(&*panic).unwrap_or("(not a string)"));
            tracing::error!(
                breaker = &*self.config.name,
                event = ?event,
                panic = &*message,
                "circuit breaker event listener panicked"
            );
            crate::panic::dispose(panic);
        }
    }

    fn record(
        &self,
        generation: u32,
        probe: bool,
        outcome: Outcome,
        timing: u64,
        upstream_retry_after: Option<Duration>,
    ) {
        if outcome == Outcome::Neutral {
            if probe {
                self.release_permit(generation);
            }
            return;
        }
        let failed = outcome == Outcome::Failure;
        // The clock is read only when something needs it.
        let needs_clock = self.slow_nanos.is_some()
            || matches!(self.window, Window::Time(_))
            || (failed && upstream_retry_after.is_some() && self.config.retry_after_cap.is_some());
        let now = if needs_clock { self.now_nanos() } else { 0 };
        let slow = self.slow_nanos.is_some_and(|limit| {
            // Both ends are rounded down to units of 1024 ns, so `units * 1024` may exceed the
            // call's true length by up to 1023 ns: one unit less is strictly shorter than it.
            // A call is slow only when it took longer than `limit` (resilience4j: "above"),
            // so one that took exactly `limit` never is.
            let units = if timing & STOPPED != 0 {
                timing & PAYLOAD
            } else {
                (now >> 10).wrapping_sub(timing) & PAYLOAD
            };
            units
                .checked_sub(1)
                .is_some_and(|shorter| shorter << 10 >= limit)
        });
        let word = unpack(self.word.load(Ordering::Acquire));
        if word.generation != generation {
            // Admitted in an older generation: it must not drive this one.
            return;
        }
        if self.config.retry_after_cap.is_some() {
            if let (true, Some(after)) = (failed, upstream_retry_after) {
                let until = (now / 1_000_000).saturating_add(Self::ms_of(after));
                self.upstream_until_ms.fetch_max(until, Ordering::AcqRel);
            } else if !failed
                && !probe
                && upstream_retry_after.is_none()
                && self.upstream_until_ms.load(Ordering::Acquire) != 0
            {
                // The upstream answered since it asked for a wait: that wait no longer says
                // how long a later opening should last. (A success after a failure always
                // gets here: the failure keeps the window, or the run of failures, from the
                // state in which a success changes nothing.) The probes of a half-open period
                // are one verdict: a success among them keeps the wait another one asked for
                // until the verdict (one that closes the breaker ends it, see `record_probe`);
                // so does a success that asks for a wait itself (a 429 not held against the
                // upstream).
                self.upstream_until_ms.store(0, Ordering::Release);
            }
        }
        let code = CALL | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match word.state {
            CircuitState::HalfOpen if probe => {
                if word.half_open_lapsed(self.now_ms()) {
                    // The maximum wait in HALF_OPEN has passed: that period ended without a
                    // verdict, whether or not anyone has looked at the state since, so this
                    // late outcome does not count; the timeout is applied instead.
                    self.state();
                    return;
                }
                self.record_probe(word, code)
            }
            CircuitState::Closed | CircuitState::MetricsOnly if !probe => {
                self.record_closed(word, code, now)
            }
            _ => {}
        }
    }

    fn record_closed(&self, word: Word, code: u32, now_nanos: u64) {
        let generation = u64::from(word.generation);
        let mut current = self.beacon.consecutive.load(Ordering::Acquire);
        let consecutive = if code & FAILED != 0 {
            loop {
                let stored = (current >> 32) as u32;
                if stored != word.generation
                    && generation_newer(stored, word.generation, self.generation())
                {
                    // A newer generation counts its own run: this outcome is stale.
                    return;
                }
                let count = if stored == word.generation {
                    (current as u32).saturating_add(1)
                } else {
                    1
                };
                match self.beacon.consecutive.compare_exchange_weak(
                    current,
                    (generation << 32) | u64::from(count),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break count,
                    Err(actual) => current = actual,
                }
            }
        } else {
            // Ends the run, unless a newer generation has stored its own count.
            while current != generation << 32
                && !generation_newer((current >> 32) as u32, word.generation, self.generation())
            {
                match self.beacon.consecutive.compare_exchange_weak(
                    current,
                    generation << 32,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
            0
        };
        let recorded = self
            .window
            .record(tag(word.generation), code, now_nanos, || self.current_tag());
        // An outcome the window does not take (a later bucket or a newer generation owns its
        // slot: its clock was read before the bucket rolled over) still counts in the run of
        // failures above, which is this generation's: the run's rule is checked without the
        // window's (a trip from a generation that has ended fails harmlessly).
        let counts = match recorded {
            Some(counts) => counts,
            None if consecutive > 0 => Counts::default(),
            None => return,
        };
        let reasons = self.evaluate(counts, consecutive);
        if word.state == CircuitState::Closed {
            let Some(reason) = reasons.into_iter().flatten().next() else {
                return;
            };
            let deadline = self.trip_deadline(self.now_ms());
            self.trip(word, deadline, reason);
        } else {
            // METRICS_ONLY never opens, so a rule stays exceeded call after call: each rule
            // is reported once per METRICS_ONLY period (as resilience4j does).
            for (rule, reason) in reasons.into_iter().enumerate() {
                if let Some(reason) = reason
                    && self.first_report(word.generation, rule)
                {
                    self.threshold_exceeded(reason);
                }
            }
        }
    }

    /// The rules exceeded now, by rule: consecutive failures, failure rate, slow-call rate.
    fn evaluate(&self, counts: Counts, consecutive: u32) -> [Option<TripReason>; 3] {
        let cfg = &self.config;
        let mut reasons = [None; 3];
        if cfg.consecutive_failures > 0 && consecutive >= cfg.consecutive_failures {
            reasons[0] = Some(TripReason::ConsecutiveFailures(consecutive));
        }
        if counts.calls == 0 || counts.calls < self.min_calls {
            return reasons;
        }
        let calls = f64::from(counts.calls);
        if let Some(threshold) = cfg.failure_rate {
            let rate = f64::from(counts.failures) * 100.0 / calls;
            if rate >= threshold {
                reasons[1] = Some(TripReason::FailureRate(rate));
            }
        }
        if let Some(threshold) = cfg.slow_rate {
            let rate = f64::from(counts.slow) * 100.0 / calls;
            if rate >= threshold {
                reasons[2] = Some(TripReason::SlowCallRate(rate));
            }
        }
        reasons
    }

    /// Whether `rule` (an index of [`evaluate`](Self::evaluate)'s answer) is reported for the
    /// first time in `generation`; it is then marked as reported.
    fn first_report(&self, generation: u32, rule: usize) -> bool {
        let bit = 1u64 << rule;
        self.reported
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let stored = (current >> 32) as u32;
                let done = if stored == generation {
                    current & u64::from(u32::MAX)
                } else if generation_newer(stored, generation, self.generation()) {
                    return None; // a later period reports its own
                } else {
                    0
                };
                (done & bit == 0).then_some((u64::from(generation) << 32) | done | bit)
            })
            .is_ok()
    }

    fn record_probe(&self, word: Word, code: u32) {
        let tag = tag(word.generation);
        let limit = u64::from(self.config.half_open_probes);
        let mut current = self.half.load(Ordering::Acquire);
        let fields = loop {
            if (current >> 48) as u16 != tag {
                return;
            }
            let mut f = half_fields(current, tag);
            if code & FAILED != 0 {
                f[2] += 1;
            } else {
                f[1] += 1;
            }
            if code & SLOW != 0 {
                f[3] += 1;
            }
            match self.half.compare_exchange_weak(
                current,
                half_pack(tag, f),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break f,
                Err(actual) => current = actual,
            }
        };
        let done = fields[1] + fields[2];
        if done < limit {
            return;
        }
        let calls = done as f64;
        let failure_rate = fields[2] as f64 * 100.0 / calls;
        let slow_rate = fields[3] as f64 * 100.0 / calls;
        // Without a failure rate, a failed probe reopens only if failures open the breaker in
        // CLOSED too (the consecutive-failures rule): a rule turned off stays off.
        let reopen = match self.config.failure_rate {
            Some(threshold) => failure_rate >= threshold,
            None => self.config.consecutive_failures > 0 && fields[2] > 0,
        } || self.config.slow_rate.is_some_and(|t| slow_rate >= t);
        if reopen {
            let deadline = self.open_deadline(self.now_ms(), true);
            self.transition(
                word,
                CircuitState::Open,
                deadline,
                Some(TripReason::ProbesFailed),
            );
        } else {
            // The verdict is the upstream answering again: a wait a failed probe asked for
            // before it no longer says how long a later opening should last. Only the value
            // read before the verdict is cleared: a wait asked for since, in CLOSED, stays.
            let asked = self.upstream_until_ms.load(Ordering::Acquire);
            if self.transition(word, CircuitState::Closed, Deadline::NONE, None) && asked != 0 {
                let _ = self.upstream_until_ms.compare_exchange(
                    asked,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The generation a decision held since `admission` must still be in: for a probe, once
    /// the transitions that time made due are applied (its half-open period may have ended at
    /// its maximum wait with no call to apply that yet).
    pub(crate) fn generation_for(&self, admission: &Admission) -> u32 {
        if admission.is_probe() {
            self.state();
        }
        self.generation()
    }

    /// Applies the transitions that are due because time passed (OPEN to HALF_OPEN, HALF_OPEN
    /// to OPEN after the maximum wait), then returns the state.
    pub(crate) fn state(&self) -> CircuitState {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            let now = self.now_ms();
            match word.state {
                CircuitState::Open if now >= word.deadline_ms => {
                    let deadline = self.half_open_deadline(now, false);
                    self.transition(word, CircuitState::HalfOpen, deadline, None);
                }
                CircuitState::HalfOpen if word.half_open_lapsed(now) => {
                    self.half_open_timed_out(word);
                }
                state => return state,
            }
        }
    }

    /// A manual transition.
    pub(crate) fn transition_to(&self, to: CircuitState) -> Result<(), IllegalTransition> {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            if !word.state.can_transition_to(to) {
                return Err(IllegalTransition {
                    from: word.state,
                    to,
                });
            }
            let now = self.now_ms();
            let deadline = match to {
                CircuitState::Open => self.open_deadline(now, false),
                CircuitState::HalfOpen => self.half_open_deadline(now, false),
                _ => Deadline::NONE,
            };
            let reason = matches!(to, CircuitState::Open | CircuitState::ForcedOpen)
                .then_some(TripReason::Manual);
            if self.transition(word, to, deadline, reason) {
                return Ok(());
            }
        }
    }

    /// Back to a fresh CLOSED: windows, counters and the backoff attempt are cleared.
    pub(crate) fn reset(&self) {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            self.upstream_until_ms.store(0, Ordering::Relaxed);
            if self.transition_as(
                word,
                CircuitState::Closed,
                Deadline::NONE,
                None,
                Cause::Reset,
            ) {
                tracing::info!(breaker = &*self.config.name, "circuit breaker reset");
                return;
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        self.state();
        let word = unpack(self.word.load(Ordering::Acquire));
        let tag = tag(word.generation);
        let (counts, taken) = if word.state == CircuitState::HalfOpen {
            let f = half_fields(self.half.load(Ordering::Acquire), tag);
            (
                Counts {
                    calls: (f[1] + f[2]) as u32,
                    failures: f[2] as u32,
                    slow: f[3] as u32,
                },
                f[0] as u32,
            )
        } else {
            (self.window.read(tag, self.now_nanos()), 0)
        };
        let consecutive = self.beacon.consecutive.load(Ordering::Acquire);
        let consecutive = if consecutive >> 32 == u64::from(word.generation) {
            consecutive as u32
        } else {
            0
        };
        let enough = counts.calls > 0
            && (counts.calls >= self.min_calls || word.state == CircuitState::HalfOpen);
        let rate = |n: u32| enough.then(|| f64::from(n) * 100.0 / f64::from(counts.calls));
        let now = self.now_ms();
        Snapshot {
            name: self.config.name.to_string(),
            state: word.state,
            failure_rate: rate(counts.failures),
            slow_call_rate: rate(counts.slow),
            buffered_calls: counts.calls,
            failed_calls: counts.failures,
            successful_calls: counts.calls.saturating_sub(counts.failures),
            slow_calls: counts.slow,
            consecutive_failures: consecutive,
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
            half_open_permits_taken: taken,
            retry_after_ms: (word.state == CircuitState::Open && word.deadline_ms > now)
                .then(|| word.deadline_ms - now),
            generation: word.generation,
        }
    }
}

/// Records the outcome of one admitted call. It is handed to a
/// [`ClassifyOutcome`](super::ClassifyOutcome) with the inner service's result.
///
/// Dropping it without recording counts as [`Outcome::Neutral`]: a half-open probe gives its
/// permit back. See the [module docs](super).
///
/// # Example
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, ClassifyOutcome, Outcome, Recorder};
///
/// /// Any `Err` is a failure, any `Ok` a success.
/// #[derive(Clone)]
/// struct ErrorsAreFailures;
///
/// impl<Res, E> ClassifyOutcome<Res, E> for ErrorsAreFailures {
///     type Response = Res;
///     fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<Res, E> {
///         recorder.record(if result.is_ok() { Outcome::Success } else { Outcome::Failure });
///         result
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let layer = layer.with_classifier(ErrorsAreFailures);
/// for ok in [true, false, false] {
///     let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(move |_: ()| async move {
///         if ok { Ok(()) } else { Err(std::io::Error::other("refused")) }
///     });
///     let _ = svc.oneshot(()).await;
/// }
/// let snapshot = handle.snapshot();
/// assert_eq!((snapshot.successful_calls, snapshot.failed_calls), (1, 2));
/// # }
/// ```
pub struct Recorder {
    core: Option<Arc<Core>>,
    /// For a fast recorder: where it reads whether its success changes anything.
    beacon: Option<&'static Beacon>,
    bits: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("generation", &((self.bits >> GEN_SHIFT) & GEN_MASK))
            .field("probe", &(self.bits & PROBE != 0))
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder that records nothing (DISABLED, or already used).
    #[inline]
    pub(crate) const fn untracked() -> Self {
        Self {
            core: None,
            beacon: None,
            bits: 0,
        }
    }

    /// A recorder for a call admitted without being tracked (DISABLED) in `generation`.
    #[inline]
    const fn passthrough(generation: u32) -> Self {
        Self {
            core: None,
            beacon: None,
            bits: recorder_bits(generation, 0),
        }
    }

    /// The generation the call was admitted in.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        ((self.bits >> GEN_SHIFT) & GEN_MASK) as u32
    }

    /// Records how the call ended.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, ClassifyOutcome, Outcome, Recorder};
    ///
    /// #[derive(Clone)]
    /// struct ErrorsAreFailures;
    ///
    /// impl<Res, E> ClassifyOutcome<Res, E> for ErrorsAreFailures {
    ///     type Response = Res;
    ///     fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<Res, E> {
    ///         recorder.record(if result.is_ok() { Outcome::Success } else { Outcome::Failure });
    ///         result
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.with_classifier(ErrorsAreFailures))
    ///     .service_fn(|_: ()| async { Err::<(), BoxError>("connection refused".into()) });
    /// svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    #[inline]
    pub fn record(self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// Ends the call's time for the slow-call rule now, though its outcome is recorded later:
    /// the answer has come, and what follows (a stream read to its end for its trailers) is
    /// the caller's reading, not the upstream's slowness. Called again, or on a recorder of a
    /// breaker without a slow-call rule, it does nothing.
    ///
    /// [`DefaultClassifier`](super::DefaultClassifier) stops the clock when a gRPC stream's
    /// head arrives: a long-lived stream (a watch) is not slow for lasting.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, ClassifyOutcome, Outcome, Recorder};
    ///
    /// /// Answers whose outcome is known only later: the time of the answer is what counts.
    /// #[derive(Clone)]
    /// struct LaterOutcome;
    ///
    /// impl<E> ClassifyOutcome<u32, E> for LaterOutcome {
    ///     type Response = (u32, Recorder);
    ///     fn classify(&self, result: Result<u32, E>, mut recorder: Recorder) -> Result<(u32, Recorder), E> {
    ///         recorder.stop_clock();
    ///         result.map(|answer| (answer, recorder))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default().slow_call_rate_threshold(50.0, Duration::from_secs(1));
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.with_classifier(LaterOutcome))
    ///     .service_fn(|_: ()| async { Ok::<u32, std::io::Error>(7) });
    /// let (answer, recorder) = svc.oneshot(()).await.unwrap();
    /// tokio::time::sleep(Duration::from_secs(5)).await; // the caller takes its time
    /// recorder.record(if answer == 7 { Outcome::Success } else { Outcome::Failure });
    /// assert_eq!(handle.snapshot().slow_calls, 0);
    /// # }
    /// ```
    #[inline]
    pub fn stop_clock(&mut self) {
        if self.bits & (FAST | STOPPED) != 0 {
            return;
        }
        if let Some(core) = &self.core
            && core.slow_nanos.is_some()
        {
            let units = (core.now_nanos() >> 10).wrapping_sub(self.bits & PAYLOAD) & PAYLOAD;
            self.bits = (self.bits & !PAYLOAD) | STOPPED | units;
        }
    }

    /// Records how the call ended, with the upstream's `Retry-After` (used when this failure
    /// opens the breaker and [`honor_retry_after`](super::CircuitBreakerConfig::honor_retry_after)
    /// is set).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Response;
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, ClassifyOutcome, Outcome, Recorder};
    ///
    /// /// Reads the `RateLimit-Reset` header (seconds) of a rate-limited answer.
    /// #[derive(Clone)]
    /// struct RateLimitAware;
    ///
    /// impl<B, E> ClassifyOutcome<Response<B>, E> for RateLimitAware {
    ///     type Response = Response<B>;
    ///     fn classify(&self, result: Result<Response<B>, E>, recorder: Recorder) -> Result<Response<B>, E> {
    ///         match &result {
    ///             Ok(res) if res.status() == 429 => {
    ///                 let reset = res.headers().get("ratelimit-reset").and_then(|v| v.to_str().ok());
    ///                 let wait = reset.and_then(|v| v.parse().ok()).map(Duration::from_secs);
    ///                 recorder.record_with_retry_after(Outcome::Failure, wait);
    ///             }
    ///             Ok(res) if res.status().is_server_error() => recorder.record(Outcome::Failure),
    ///             Ok(_) => recorder.record(Outcome::Success),
    ///             Err(_) => recorder.record(Outcome::Failure),
    ///         }
    ///         result
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let config = CircuitBreakerConfig::default()
    ///     .consecutive_failures(1)
    ///     .honor_retry_after(Duration::from_secs(600));
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// let svc = ServiceBuilder::new().layer(layer.with_classifier(RateLimitAware)).service_fn(|_: ()| async {
    ///     Ok::<_, BoxError>(Response::builder().status(429).header("ratelimit-reset", "90").body(()).unwrap())
    /// });
    /// svc.oneshot(()).await.unwrap();
    /// assert_eq!(handle.snapshot().retry_after_ms, Some(90_000));
    /// # }
    /// ```
    #[inline]
    pub fn record_with_retry_after(self, outcome: Outcome, retry_after: Option<Duration>) {
        self.finish(outcome, retry_after);
    }

    #[inline]
    fn finish(mut self, outcome: Outcome, retry_after: Option<Duration>) {
        let bits = std::mem::take(&mut self.bits);
        if let Some(core) = self.core.take() {
            core.complete(bits, outcome, retry_after);
        } else if bits & FAST != 0 {
            let id = bits & PAYLOAD;
            let generation = ((bits >> GEN_SHIFT) & GEN_MASK) as u32;
            if outcome == Outcome::Success
                && let Some(beacon) = self.beacon
                && beacon.owner.load(Ordering::Acquire) == id
                && beacon.success_changes_nothing(generation)
            {
                return;
            }
            // No slow-call rule on this path: the payload is the core's id, not a start time.
            with_core(id, |core| {
                core.complete(bits & !FAST & !PAYLOAD, outcome, retry_after)
            });
        }
    }
}

impl Drop for Recorder {
    #[inline]
    fn drop(&mut self) {
        // A call dropped before its outcome was recorded was cancelled: nothing is recorded,
        // also when a panic elsewhere (another branch of a `join!`) drops it while unwinding.
        // A panic of the call itself is recorded as a failure (by `FailOnUnwind`, or, in the
        // inner service's `call`, where the call is made).
        if self.bits & PROBE != 0 {
            self.release();
        }
    }
}

/// Records a failure with the recorder it guards if a panic unwinds through the poll of the
/// inner service's future or body that it guards: a call that panicked failed, as an
/// exception does for resilience4j. (A panic in the inner service's `call` is caught where the
/// call is made, and resumed: a guard there would keep the new recorder out of registers.)
/// Forgotten when the guarded code returns, so it costs nothing then; a recorder dropped by a
/// panic of anything else records nothing.
pub(crate) struct FailOnUnwind<'a>(pub(crate) &'a mut Recorder);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        std::mem::replace(self.0, Recorder::untracked()).finish(Outcome::Failure, None);
    }
}

/// What asked for a transition, for the events told with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A rule was exceeded: its `ThresholdExceeded` event comes first.
    Trip,
    /// [`Core::reset`]: a `Reset` event comes after the transition.
    Reset,
    /// Anything else.
    Other,
}

/// Transition events on their way to the listener, told in the order of the generations
/// their transitions started (see [`Core::tell_transitions`]).
struct Told {
    /// The generation whose transition is told next.
    next: u32,
    /// Events of transitions that won their compare-and-swap and are not told yet, by
    /// generation: the threshold exceeded that caused the transition (if any), the
    /// transition (none for a move to the state the breaker was in), then the reset that
    /// asked for it (if one did).
    waiting: Vec<(u32, [Option<CircuitEvent>; 3])>,
    /// Whether a thread is telling events now.
    telling: bool,
}

/// Lets another thread tell transition events if telling unwinds.
struct Teller<'a>(&'a Core);

impl Drop for Teller<'_> {
    fn drop(&mut self) {
        self.0.told().telling = false;
    }
}

/// Gives the slot in the upstream of a probe admitted in a generation back when dropped, also
/// while unwinding.
struct LeaveProbe<'a>(&'a Core, u32);

impl Drop for LeaveProbe<'_> {
    fn drop(&mut self) {
        self.0.leave_probe(self.1);
    }
}

impl Recorder {
    #[cold]
    fn release(&mut self) {
        if let Some(core) = self.core.take() {
            let generation = ((self.bits >> GEN_SHIFT) & GEN_MASK) as u32;
            let _slot = LeaveProbe(&core, generation);
            core.release_permit(generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::circuit_breaker::OpenDuration;

    fn failures(core: &Core) -> u32 {
        core.snapshot().failed_calls
    }

    /// A recorder may outlive its core: the core's id must never be given to another one, or
    /// a late outcome would be counted there. Ids are reused with a new tag, and a slot whose
    /// tags have run out is retired rather than given out with a tag it had before.
    #[test]
    fn a_registry_id_is_never_given_out_twice() {
        let first = register(Weak::new());
        unregister(first);
        for _ in 0..=REG_TAG_MASK + 1 {
            let id = register(Weak::new());
            assert_ne!(id, first, "given out again");
            unregister(id);
        }
    }

    /// Fast-path recorders carry an id, not the core: they find it from any thread, finish
    /// others from inside a listener, and record nothing once the breaker is gone.
    #[test]
    fn fast_recorders_find_their_core_from_anywhere() {
        let core = Breaker::new(CircuitBreakerConfig::default().consecutive_failures(100));
        assert!(core.fast_id.is_some());
        let recorder = core.admit().unwrap_or_else(|_| panic!("closed"));
        assert_eq!(
            Arc::strong_count(&core.core),
            1,
            "no reference held by the call"
        );
        std::thread::spawn(move || recorder.record(Outcome::Failure))
            .join()
            .unwrap();
        assert_eq!(failures(&core), 1);
        for _ in 0..(CACHED_CORES + 3) {
            // Many short-lived breakers on this thread: the cache stays bounded.
            let other = Breaker::new(CircuitBreakerConfig::default());
            let r = other.admit().unwrap_or_else(|_| panic!("closed"));
            r.record(Outcome::Failure);
            assert_eq!(failures(&other), 1);
        }
        CORES.with(|c| assert!(c.borrow().len() <= CACHED_CORES));
        let r = core.admit().unwrap_or_else(|_| panic!("closed"));
        r.record(Outcome::Failure);
        assert_eq!(failures(&core), 2);

        // The breaker is dropped while calls are in flight: their outcomes go nowhere, also
        // when its beacon already serves a new breaker.
        let late = core.admit().unwrap_or_else(|_| panic!("closed"));
        let later = core.admit().unwrap_or_else(|_| panic!("closed"));
        drop(core);
        late.record(Outcome::Failure);
        // Most likely on the beacon just handed back (the free list is last in, first out).
        let next = Breaker::new(CircuitBreakerConfig::default());
        later.record(Outcome::Success);
        assert_eq!(next.snapshot().buffered_calls, 0);

        // A listener finishing another call while the first one is being recorded.
        let parked: Arc<Mutex<Option<Recorder>>> = Arc::default();
        let inside = parked.clone();
        let core = Breaker::new(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .on_event(move |_event| {
                    if let Some(r) = inside.lock().unwrap().take() {
                        r.record(Outcome::Success);
                    }
                }),
        );
        *parked.lock().unwrap() = Some(core.admit().unwrap_or_else(|_| panic!("closed")));
        core.admit()
            .unwrap_or_else(|_| panic!("closed"))
            .record(Outcome::Failure);
        assert!(
            parked.lock().unwrap().is_none(),
            "the listener ran the other"
        );
        assert_eq!(core.state(), CircuitState::Open);
    }

    /// Two threads compute the next OPEN period from the same HALF_OPEN word; the one that
    /// loses the transition must neither count a backoff attempt nor consume the upstream's
    /// `Retry-After`, which belong to the winner.
    #[tokio::test(start_paused = true)]
    async fn a_transition_that_loses_its_race_consumes_nothing() {
        let core = Breaker::new(
            CircuitBreakerConfig::default()
                .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
                .honor_retry_after(Duration::from_secs(120)),
        );
        core.transition_to(CircuitState::Open).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(core.state(), CircuitState::HalfOpen);
        let now = core.now_ms();
        core.upstream_until_ms
            .store(now + 60_000, Ordering::Relaxed);

        let word = unpack(core.word.load(Ordering::Acquire));
        let lost = core.open_deadline(now, true);
        let won = core.open_deadline(now, true);
        assert!(core.transition(word, CircuitState::Open, won, None));
        assert!(!core.transition(word, CircuitState::Open, lost, None));

        let open = unpack(core.word.load(Ordering::Acquire));
        assert_eq!(open.state, CircuitState::Open);
        assert_eq!(open.deadline_ms - now, 60_000, "the upstream's Retry-After");
        assert_eq!(core.attempts.load(Ordering::Relaxed) as u32, 1);
        assert_eq!(core.upstream_until_ms.load(Ordering::Relaxed), 0);
    }

    /// A trip right after a move to CLOSED, before that move has reset the backoff count, is
    /// still the first opening since the breaker was closed: it opens for the initial
    /// duration, and the reset that lands after it does not undo its count.
    #[tokio::test(start_paused = true)]
    async fn a_trip_before_the_close_resets_the_count_is_a_first_opening() {
        let core = Breaker::new(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_duration(OpenDuration::Backoff {
                    initial: Duration::from_secs(5),
                    multiplier: 2.0,
                    max: Duration::from_secs(300),
                    jitter: 0.0,
                }),
        );
        // Five openings before, the last move to CLOSED has won its transition, and its
        // reset of the count has not landed yet.
        let closed = unpack(core.word.load(Ordering::Acquire));
        assert_eq!(closed.state, CircuitState::Closed);
        core.attempts
            .store((u64::from(closed.generation) << 32) | 5, Ordering::Relaxed);

        let now = core.now_ms();
        let recorder = core.admit().unwrap_or_else(|_| panic!("closed"));
        recorder.record(Outcome::Failure);
        let open = unpack(core.word.load(Ordering::Acquire));
        assert_eq!(open.state, CircuitState::Open);
        assert_eq!(open.deadline_ms - now, 5_000, "the initial duration");
        // The late reset of the move to CLOSED is refused: the count is the trip's.
        core.set_attempt(closed.generation, 0);
        assert_eq!(core.attempts.load(Ordering::Relaxed) as u32, 1);
    }

    /// A caller that read an older half-open word's generation does not take a permit from,
    /// nor reset, a newer half-open period's word.
    #[tokio::test(start_paused = true)]
    async fn a_stale_permit_request_leaves_a_newer_half_open_word_alone() {
        let core = Breaker::new(CircuitBreakerConfig::default().half_open_probes(3));
        let newer_word = half_pack(5, [1, 1, 0, 0]);
        core.half.store(newer_word, Ordering::Relaxed);
        assert!(!core.take_permit(4));
        assert_eq!(core.half.load(Ordering::Relaxed), newer_word);
        assert!(core.take_permit(5));
        assert_eq!(
            core.half.load(Ordering::Relaxed),
            half_pack(5, [2, 1, 0, 0])
        );
    }

    /// An outcome of an older generation that reaches the consecutive-failure count late
    /// neither resets nor restarts a newer generation's run.
    #[tokio::test(start_paused = true)]
    async fn a_stale_outcome_leaves_a_newer_run_of_failures_alone() {
        let core = Breaker::new(CircuitBreakerConfig::default().consecutive_failures(10));
        let newer_run = (5 << 32) | 2;
        core.beacon.consecutive.store(newer_run, Ordering::Relaxed);
        let stale = unpack(pack(CircuitState::Closed, 4, 0));
        core.record_closed(stale, CALL, 0);
        assert_eq!(core.beacon.consecutive.load(Ordering::Relaxed), newer_run);
        core.record_closed(stale, CALL | FAILED, 0);
        assert_eq!(core.beacon.consecutive.load(Ordering::Relaxed), newer_run);

        let current = unpack(pack(CircuitState::Closed, 5, 0));
        core.record_closed(current, CALL | FAILED, 0);
        assert_eq!(
            core.beacon.consecutive.load(Ordering::Relaxed),
            (5 << 32) | 3
        );
        core.record_closed(current, CALL, 0);
        assert_eq!(core.beacon.consecutive.load(Ordering::Relaxed), 5 << 32);
    }

    /// A failure whose clock was read before its bucket rolled over is not counted in the
    /// window (a later bucket owns the slot), but it is still a failure of the run: when it is
    /// the one that reaches the threshold, the breaker opens then, not a call later.
    #[tokio::test(start_paused = true)]
    async fn a_failure_the_window_refuses_still_completes_a_run() {
        let core = Breaker::new(
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::Time {
                    span: Duration::from_secs(1),
                    buckets: 1,
                })
                .consecutive_failures(2),
        );
        let word = unpack(core.word.load(Ordering::Acquire));
        assert_eq!(word.state, CircuitState::Closed);
        // The first failure is recorded at 11 s: the one bucket is the 11th second's.
        core.record_closed(word, CALL | FAILED, 11_000_000_000);
        assert_eq!(
            unpack(core.word.load(Ordering::Acquire)).state,
            CircuitState::Closed
        );
        let counts = core.window.read(tag(word.generation), 11_000_000_000);
        assert_eq!(counts.failures, 1);
        // The second read its clock at 10.5 s: the bucket has moved on past it.
        core.record_closed(word, CALL | FAILED, 10_500_000_000);
        assert_eq!(
            unpack(core.word.load(Ordering::Acquire)).state,
            CircuitState::Open,
            "two failures in a row"
        );
    }
}
