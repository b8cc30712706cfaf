//! The atomic core shared by every clone of a breaker.
//!
//! One `AtomicU64` holds the state, the generation and the state's deadline:
//! `deadline_ms (40) | generation (21) | state (3)`. A transition is one compare-and-swap of
//! that word that bumps the generation; windows, the consecutive-failure counter and the
//! half-open permits are tagged with the generation and reset themselves lazily, so nothing
//! else has to happen atomically with the transition.
//!
//! Hot path (CLOSED, count window, no slow-call rule): `call` loads the state word and the
//! response future holds the core. A success that completes while the window is full of
//! successes of its generation and no run of failures is counting writes nothing: recording
//! it would only replace one success of the ring by another.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::error::{CircuitOpen, IllegalTransition};
use super::event::{CircuitEvent, CircuitState, Snapshot, TripReason};
use super::window::{CALL, CountWindow, Counts, FAILED, SLOW, TimeWindow, Window, newer};

const STATE_BITS: u32 = 3;
const GEN_BITS: u32 = 21;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const DEADLINE_SHIFT: u32 = STATE_BITS + GEN_BITS;
const DEADLINE_MAX: u64 = (1 << (64 - DEADLINE_SHIFT)) - 1;

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

/// Whether generation `a` is newer than `b` (serial number arithmetic on the 21 bits kept).
#[inline]
fn generation_newer(a: u32, b: u32) -> bool {
    let d = u64::from(a.wrapping_sub(b)) & GEN_MASK;
    d != 0 && d < 1 << (GEN_BITS - 1)
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked (or failed for reasons that say nothing about the upstream's health,
    /// like a 404).
    Success,
    /// The call failed in a way that counts against the upstream.
    Failure,
    /// The call says nothing either way (cancelled, or a probe whose body was dropped); it is
    /// not recorded, and a half-open probe gives its permit back.
    Neutral,
}

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

pub(crate) struct Core {
    pub(crate) config: CircuitBreakerConfig,
    base: Instant,
    word: AtomicU64,
    window: Window,
    /// generation (32) | consecutive failures (32)
    consecutive: AtomicU64,
    half: AtomicU64,
    /// generation (32) | backoff attempt (32): the attempt as of the transition that set it.
    attempts: AtomicU64,
    upstream_until_ms: AtomicU64,
    not_permitted: AtomicU64,
    /// Probes admitted in any half-open period and not finished yet. A new half-open period
    /// admits only as many as leave this under `half_open_probes`, so a probe of an earlier
    /// period that is still running counts against the next one: never more than
    /// `half_open_probes` calls are inside a recovering upstream.
    probes_in_flight: AtomicU32,
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

/// Why [`Core::admit`] refused a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refusal {
    state: CircuitState,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(state: CircuitState, retry_after: Option<Duration>) -> Self {
        Self { state, retry_after }
    }
}

/// Recorder bits: probe (1) | generation (21) | the start time in units of 1024 ns (40 bits;
/// it wraps after 13 days, far beyond any slow-call threshold).
const PROBE: u64 = 1 << 63;
const GEN_SHIFT: u32 = 40;
const PAYLOAD: u64 = (1 << GEN_SHIFT) - 1;

#[inline]
const fn recorder_bits(generation: u32, start_units: u64) -> u64 {
    (((generation as u64) & GEN_MASK) << GEN_SHIFT) | (start_units & PAYLOAD)
}

impl Core {
    pub(crate) fn new(config: CircuitBreakerConfig) -> Arc<Self> {
        let (window, min_calls) = match config.window {
            SlidingWindow::Count(n) => (
                Window::Count(CountWindow::new(n)),
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
        Arc::new(Core {
            base: Instant::now(),
            word: AtomicU64::new(pack(CircuitState::Closed, 0, 0)),
            window,
            consecutive: AtomicU64::new(0),
            half: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            upstream_until_ms: AtomicU64::new(0),
            not_permitted: AtomicU64::new(0),
            probes_in_flight: AtomicU32::new(0),
            min_calls,
            slow_nanos,
            config,
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

    /// The instant OPEN ends, when the breaker is OPEN and that is still in the future.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        let word = unpack(self.word.load(Ordering::Acquire));
        (word.state == CircuitState::Open && self.now_ms() < word.deadline_ms)
            .then(|| self.deadline_instant(word.deadline_ms))
    }

    /// Decides whether a call may go through. A refusal is neither counted nor reported
    /// until it is turned into an error by [`refuse`](Self::refuse).
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Recorder, Refusal> {
        let word = unpack(self.word.load(Ordering::Acquire));
        match word.state {
            CircuitState::Closed | CircuitState::MetricsOnly => Ok(self.admit_closed(word)),
            CircuitState::Disabled => Ok(Recorder::passthrough(word.generation)),
            _ => self.admit_slow(),
        }
    }

    #[inline]
    fn admit_closed(self: &Arc<Self>, word: Word) -> Recorder {
        Recorder {
            core: Some(Arc::clone(self)),
            bits: recorder_bits(word.generation, self.start_units()),
        }
    }

    #[cold]
    fn admit_slow(self: &Arc<Self>) -> Result<Recorder, Refusal> {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            match word.state {
                CircuitState::Closed | CircuitState::MetricsOnly => {
                    return Ok(self.admit_closed(word));
                }
                CircuitState::Disabled => return Ok(Recorder::passthrough(word.generation)),
                CircuitState::ForcedOpen => {
                    return Err(Refusal::new(CircuitState::ForcedOpen, None));
                }
                CircuitState::Open => {
                    let now = self.now_ms();
                    if now < word.deadline_ms {
                        let after = Duration::from_millis(word.deadline_ms - now);
                        return Err(Refusal::new(CircuitState::Open, Some(after)));
                    }
                    let deadline = self.half_open_deadline(now);
                    self.transition(word, CircuitState::HalfOpen, deadline, None);
                }
                CircuitState::HalfOpen => {
                    if word.deadline_ms != 0 && self.now_ms() >= word.deadline_ms {
                        let deadline = self.open_deadline(self.now_ms(), true);
                        self.transition(
                            word,
                            CircuitState::Open,
                            deadline,
                            Some(TripReason::HalfOpenTimeout),
                        );
                        continue;
                    }
                    if !self.enter_probe() {
                        return Err(Refusal::new(CircuitState::HalfOpen, None));
                    }
                    if self.take_permit(tag(word.generation)) {
                        // Re-check: a verdict may have ended this half-open period meanwhile.
                        let now_word = unpack(self.word.load(Ordering::Acquire));
                        if now_word.generation != word.generation {
                            self.leave_probe();
                            continue;
                        }
                        return Ok(Recorder {
                            core: Some(Arc::clone(self)),
                            bits: PROBE | recorder_bits(word.generation, self.start_units()),
                        });
                    }
                    self.leave_probe();
                    if self.generation() != word.generation {
                        continue;
                    }
                    return Err(Refusal::new(CircuitState::HalfOpen, None));
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
        let _slot = probe.then(|| LeaveProbe(self));
        self.record(generation, probe, outcome, bits & PAYLOAD, retry_after);
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
        let Window::Count(window) = &self.window else {
            return false;
        };
        if self.slow_nanos.is_some() {
            return false;
        }
        let consecutive = self.consecutive.load(Ordering::Acquire);
        let counting = consecutive >> 32 == u64::from(generation) && consecutive as u32 != 0;
        !counting && window.all_ok(tag(generation))
    }

    /// Counts one more probe inside the upstream, unless `half_open_probes` already are.
    fn enter_probe(&self) -> bool {
        let limit = self.config.half_open_probes;
        self.probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then(|| n + 1)
            })
            .is_ok()
    }

    /// A probe finished (any outcome) or was dropped.
    fn leave_probe(&self) {
        self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn half_open_deadline(&self, now_ms: u64) -> Deadline {
        Deadline {
            ms: self
                .config
                .max_half_open_wait
                .map_or(0, |wait| now_ms.saturating_add(Self::ms_of(wait)).max(1)),
            ..Deadline::NONE
        }
    }

    /// The deadline of a new OPEN period starting now; `automatic` counts it as an attempt.
    /// Nothing is stored: the transition that wins applies the attempt and consumes the
    /// upstream's `Retry-After`.
    fn open_deadline(&self, now_ms: u64, automatic: bool) -> Deadline {
        let attempt = (self.attempts.load(Ordering::Acquire) as u32).saturating_add(1);
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
                (!generation_newer((current >> 32) as u32, generation)).then_some(next)
            });
    }

    /// Takes a probe permit of the half-open period tagged `tag`; false when they are all
    /// taken, or when a newer period owns the word (which is then left alone).
    fn take_permit(&self, tag: u16) -> bool {
        let limit = u64::from(self.config.half_open_probes);
        let mut word = self.half.load(Ordering::Acquire);
        loop {
            if newer((word >> 48) as u16, tag) {
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
        let now = self.now_ms();
        let after = (word.state == CircuitState::Open && word.deadline_ms > now)
            .then(|| Duration::from_millis(word.deadline_ms - now));
        self.refuse(Refusal::new(word.state, after))
    }

    /// The error for a refused call, counted and reported.
    #[cold]
    pub(crate) fn refuse(&self, refusal: Refusal) -> CircuitOpen {
        let Refusal { state, retry_after } = refusal;
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
        let generation = from.generation.wrapping_add(1) & GEN_MASK as u32;
        let next = pack(to, generation, deadline.ms);
        if self
            .word
            .compare_exchange(from.raw, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
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
        self.emit(|| CircuitEvent::StateTransition {
            name: self.config.name.clone(),
            from: from.state,
            to,
            reason,
        });
        true
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
        let Some(listener) = &self.config.listener else {
            return;
        };
        let event = event();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener(&event))) {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            tracing::error!(
                breaker = &*self.config.name,
                event = ?event,
                panic = message,
                "circuit breaker event listener panicked"
            );
        }
    }

    fn record(
        &self,
        generation: u32,
        probe: bool,
        outcome: Outcome,
        start_units: u64,
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
            let elapsed = ((now >> 10).wrapping_sub(start_units) & PAYLOAD) << 10;
            elapsed >= limit
        });
        if let (true, Some(after), Some(_)) =
            (failed, upstream_retry_after, self.config.retry_after_cap)
        {
            let until = (now / 1_000_000).saturating_add(Self::ms_of(after));
            self.upstream_until_ms.fetch_max(until, Ordering::AcqRel);
        }
        let word = unpack(self.word.load(Ordering::Acquire));
        if word.generation != generation {
            // Admitted in an older generation: it must not drive this one.
            return;
        }
        let code = CALL | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match word.state {
            CircuitState::HalfOpen if probe => self.record_probe(word, code),
            CircuitState::Closed | CircuitState::MetricsOnly if !probe => {
                self.record_closed(word, code, now)
            }
            _ => {}
        }
    }

    fn record_closed(&self, word: Word, code: u32, now_nanos: u64) {
        let generation = u64::from(word.generation);
        let mut current = self.consecutive.load(Ordering::Acquire);
        let consecutive = if code & FAILED != 0 {
            loop {
                let stored = (current >> 32) as u32;
                if generation_newer(stored, word.generation) {
                    // A newer generation counts its own run: this outcome is stale.
                    return;
                }
                let count = if stored == word.generation {
                    (current as u32).saturating_add(1)
                } else {
                    1
                };
                match self.consecutive.compare_exchange_weak(
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
                && !generation_newer((current >> 32) as u32, word.generation)
            {
                match self.consecutive.compare_exchange_weak(
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
        let Some(counts) = self.window.record(tag(word.generation), code, now_nanos) else {
            return;
        };
        let Some(reason) = self.evaluate(counts, consecutive) else {
            return;
        };
        self.threshold_exceeded(reason);
        if word.state == CircuitState::Closed {
            let deadline = self.open_deadline(self.now_ms(), true);
            self.transition(word, CircuitState::Open, deadline, Some(reason));
        }
    }

    fn evaluate(&self, counts: Counts, consecutive: u32) -> Option<TripReason> {
        let cfg = &self.config;
        if cfg.consecutive_failures > 0 && consecutive >= cfg.consecutive_failures {
            return Some(TripReason::ConsecutiveFailures(consecutive));
        }
        if counts.calls == 0 || counts.calls < self.min_calls {
            return None;
        }
        let calls = f64::from(counts.calls);
        if let Some(threshold) = cfg.failure_rate {
            let rate = f64::from(counts.failures) * 100.0 / calls;
            if rate >= threshold {
                return Some(TripReason::FailureRate(rate));
            }
        }
        if let Some(threshold) = cfg.slow_rate {
            let rate = f64::from(counts.slow) * 100.0 / calls;
            if rate >= threshold {
                return Some(TripReason::SlowCallRate(rate));
            }
        }
        None
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
        let reopen = match self.config.failure_rate {
            Some(threshold) => failure_rate >= threshold,
            None => fields[2] > 0,
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
            self.transition(word, CircuitState::Closed, Deadline::NONE, None);
        }
    }

    /// Applies the transitions that are due because time passed (OPEN to HALF_OPEN, HALF_OPEN
    /// to OPEN after the maximum wait), then returns the state.
    pub(crate) fn state(&self) -> CircuitState {
        loop {
            let word = unpack(self.word.load(Ordering::Acquire));
            let now = self.now_ms();
            match word.state {
                CircuitState::Open if now >= word.deadline_ms => {
                    let deadline = self.half_open_deadline(now);
                    self.transition(word, CircuitState::HalfOpen, deadline, None);
                }
                CircuitState::HalfOpen if word.deadline_ms != 0 && now >= word.deadline_ms => {
                    let deadline = self.open_deadline(now, true);
                    self.transition(
                        word,
                        CircuitState::Open,
                        deadline,
                        Some(TripReason::HalfOpenTimeout),
                    );
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
                CircuitState::HalfOpen => self.half_open_deadline(now),
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
            if self.transition(word, CircuitState::Closed, Deadline::NONE, None) {
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
        let consecutive = self.consecutive.load(Ordering::Acquire);
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
/// use tower_webhook::circuit_breaker::{ClassifyOutcome, Outcome, Recorder};
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
/// ```
pub struct Recorder {
    core: Option<Arc<Core>>,
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
            bits: 0,
        }
    }

    /// A recorder for a call admitted without being tracked (DISABLED) in `generation`.
    #[inline]
    const fn passthrough(generation: u32) -> Self {
        Self {
            core: None,
            bits: recorder_bits(generation, 0),
        }
    }

    /// The generation the call was admitted in.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        ((self.bits >> GEN_SHIFT) & GEN_MASK) as u32
    }

    /// Records how the call ended.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// Records how the call ended, with the upstream's `Retry-After` (used when this failure
    /// opens the breaker and [`honor_retry_after`](super::CircuitBreakerConfig::honor_retry_after)
    /// is set).
    #[inline]
    pub fn record_with_retry_after(self, outcome: Outcome, retry_after: Option<Duration>) {
        self.finish(outcome, retry_after);
    }

    #[inline]
    fn finish(mut self, outcome: Outcome, retry_after: Option<Duration>) {
        let bits = std::mem::take(&mut self.bits);
        if let Some(core) = self.core.take() {
            core.complete(bits, outcome, retry_after);
        }
    }
}

impl Drop for Recorder {
    #[inline]
    fn drop(&mut self) {
        if self.bits & PROBE != 0 {
            self.release();
        }
    }
}

/// Gives a probe's slot in the upstream back when dropped, also while unwinding.
struct LeaveProbe<'a>(&'a Core);

impl Drop for LeaveProbe<'_> {
    fn drop(&mut self) {
        self.0.leave_probe();
    }
}

impl Recorder {
    #[cold]
    fn release(&mut self) {
        if let Some(core) = self.core.take() {
            let _slot = LeaveProbe(&core);
            core.release_permit(((self.bits >> GEN_SHIFT) & GEN_MASK) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::circuit_breaker::OpenDuration;

    /// Two threads compute the next OPEN period from the same HALF_OPEN word; the one that
    /// loses the transition must neither count a backoff attempt nor consume the upstream's
    /// `Retry-After`, which belong to the winner.
    #[tokio::test(start_paused = true)]
    async fn a_transition_that_loses_its_race_consumes_nothing() {
        let core = Core::new(
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

    /// A caller that read an older half-open word's generation does not take a permit from,
    /// nor reset, a newer half-open period's word.
    #[tokio::test(start_paused = true)]
    async fn a_stale_permit_request_leaves_a_newer_half_open_word_alone() {
        let core = Core::new(CircuitBreakerConfig::default().half_open_probes(3));
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
        let core = Core::new(CircuitBreakerConfig::default().consecutive_failures(10));
        let newer_run = (5 << 32) | 2;
        core.consecutive.store(newer_run, Ordering::Relaxed);
        let stale = unpack(pack(CircuitState::Closed, 4, 0));
        core.record_closed(stale, CALL, 0);
        assert_eq!(core.consecutive.load(Ordering::Relaxed), newer_run);
        core.record_closed(stale, CALL | FAILED, 0);
        assert_eq!(core.consecutive.load(Ordering::Relaxed), newer_run);

        let current = unpack(pack(CircuitState::Closed, 5, 0));
        core.record_closed(current, CALL | FAILED, 0);
        assert_eq!(core.consecutive.load(Ordering::Relaxed), (5 << 32) | 3);
        core.record_closed(current, CALL, 0);
        assert_eq!(core.consecutive.load(Ordering::Relaxed), 5 << 32);
    }
}
