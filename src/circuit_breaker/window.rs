//! Sliding windows of outcomes, made of atomics only.
//!
//! Every value written is tagged with the low 16 bits of the breaker's generation, so a
//! transition resets a window by bumping the generation: a slot or an aggregate with another
//! tag counts as empty, and a recorder from an older generation never overwrites a newer value.
//!
//! # Tags that wrap
//!
//! A tag alone cannot tell the current generation from one 65536 generations older: a ring
//! slot, a bucket or an aggregate left untouched that long would pass for a current one (its
//! outcomes counted again, or taken out of a total they were never added to). So every stored
//! tag is kept young: the single thread whose compare-and-swap starts a generation (the
//! transition's winner) calls [`Window::sweep`], which rewrites the aggregate word and the next
//! `ceil(len / SWEEP_PERIOD)` slots or buckets, in turn from a shared cursor, from any other
//! generation's value to "empty, current generation". Each slot is thus rewritten at least
//! once every [`SWEEP_PERIOD`] generations (a quarter of the tag period), tags only move
//! forward in between (a writer of an older generation backs off from a newer tag), and no
//! value is ever stored for a generation after the current one: no stored tag is more than
//! about `SWEEP_PERIOD` generations old, so equal tags mean the same generation.
//!
//! The sweep is lock-free and races with recorders harmlessly. For each word it reads the
//! value, *then* the current generation's tag: the value's tag is that one or an older one.
//! When it is older, the sweep swaps that exact value (compare-and-swap) for "empty, current
//! generation":
//!
//! - a value of the current generation is never replaced, so no outcome it counted is lost;
//!   one written after the sweep's reads makes its compare-and-swap fail, and it reads again;
//! - an older generation's value and "empty, current generation" mean the same to every
//!   reader and writer of the current generation (empty: nothing added, nothing subtracted)
//!   and of older ones (a newer tag: back off), so the swap changes no count. If a newer
//!   generation has started meanwhile, the empty value written is an older one's: still empty;
//! - the single winner per generation only sets the pace; sweeps that overlap are harmless.
//!
//! Only a thread stalled, between reading a tag and using it, for tens of thousands of
//! transitions can still misjudge a tag's age. The hot path (recording) does not change.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// An outcome as stored in a window: bit 0 = a call, bit 1 = failed, bit 2 = slow.
pub(crate) const CALL: u32 = 1;
pub(crate) const FAILED: u32 = 2;
pub(crate) const SLOW: u32 = 4;

/// Counts of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// Whether `their`, a tag read from a window or a half-open word, belongs to a generation after
/// `mine`.
///
/// Tags wrap at 16 bits, so two tags alone cannot tell a newer generation from an older one.
/// The tag of the current generation, `current`, read after `their`, can: no value is ever
/// stored for a generation after the current one, and the sweep keeps every stored tag less
/// than a tag period old (see the [module docs](self)), so `their` is newer than `mine` only
/// when it lies in `(mine, current]`.
#[inline]
pub(crate) fn newer(their: u16, mine: u16, current: u16) -> bool {
    their != mine && their.wrapping_sub(mine) <= current.wrapping_sub(mine)
}

/// Every slot and bucket of a window is swept at least once per this many generations.
pub(crate) const SWEEP_PERIOD: u32 = 1 << 14;

/// The slots (or buckets) of a window of `n` that the next sweep rewrites: the next
/// `ceil(n / SWEEP_PERIOD)` after the shared `cursor`, which moves on past them.
fn sweep_range(cursor: &AtomicU32, n: u32) -> impl Iterator<Item = usize> {
    let chunk = n.div_ceil(SWEEP_PERIOD);
    let start = cursor
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
            Some((at + chunk) % n)
        })
        .unwrap_or(0);
    (0..chunk).map(move |k| ((start + k) % n) as usize)
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records an outcome of generation `tag`; `current_tag` reads the tag of the generation now.
    pub(crate) fn record(
        &self,
        tag: u16,
        code: u32,
        now_nanos: u64,
        current_tag: impl Fn() -> u16,
    ) -> Option<Counts> {
        match self {
            Self::Count(w) => w.record(tag, code, current_tag),
            Self::Time(w) => w.record(tag, code, now_nanos, current_tag),
        }
    }

    pub(crate) fn read(&self, tag: u16, now_nanos: u64) -> Counts {
        match self {
            Self::Count(w) => w.read(tag),
            Self::Time(w) => w.read(tag, now_nanos),
        }
    }

    /// Keeps the window's tags young (see the [module docs](self)). Called once per
    /// generation, by the thread whose transition started it; `current_tag` reads the tag of
    /// the generation now.
    pub(crate) fn sweep(&self, current_tag: impl Fn() -> u16) {
        match self {
            Self::Count(w) => w.sweep(current_tag),
            Self::Time(w) => w.sweep(current_tag),
        }
    }
}

/// A ring of the last `n` outcomes plus an aggregate word kept in step with it.
///
/// Aggregate layout: tag (16) | calls (16) | failures (16) | slow (16); the three counts are
/// two's complement so that a transient negative (two recorders racing on one slot) decodes.
pub(crate) struct CountWindow {
    n: u32,
    slots: Box<[AtomicU32]>,
    head: AtomicU64,
    /// Where the next sweep starts.
    sweep_at: AtomicU32,
    /// Kept in the breaker's beacon, where fast-path calls read it.
    agg: &'static AtomicU64,
}

#[inline]
fn unpack_agg(word: u64) -> (u16, i32, i32, i32) {
    (
        (word >> 48) as u16,
        i32::from((word >> 32) as u16 as i16),
        i32::from((word >> 16) as u16 as i16),
        i32::from(word as u16 as i16),
    )
}

#[inline]
fn pack_agg(tag: u16, calls: i32, failures: i32, slow: i32) -> u64 {
    (u64::from(tag) << 48)
        | (u64::from(calls as i16 as u16) << 32)
        | (u64::from(failures as i16 as u16) << 16)
        | u64::from(slow as i16 as u16)
}

fn counts_of(calls: i32, failures: i32, slow: i32) -> Counts {
    Counts {
        calls: calls.max(0) as u32,
        failures: failures.max(0) as u32,
        slow: slow.max(0) as u32,
    }
}

impl CountWindow {
    /// A window of `n` outcomes whose aggregate word is `agg` (reset to 0 by the caller).
    pub(crate) fn new(n: u32, agg: &'static AtomicU64) -> Self {
        Self {
            n,
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
            head: AtomicU64::new(0),
            sweep_at: AtomicU32::new(0),
            agg,
        }
    }

    /// The aggregate word of a window full of successes that were not slow, in generation
    /// `tag`: then one more such success changes nothing but the ring's rotation.
    #[inline]
    pub(crate) fn all_ok_word(&self, tag: u16) -> u64 {
        pack_agg(tag, self.n as i32, 0, 0)
    }

    fn record(&self, tag: u16, code: u32, current_tag: impl Fn() -> u16) -> Option<Counts> {
        let index = (self.head.fetch_add(1, Ordering::Relaxed) % u64::from(self.n)) as usize;
        let slot = &self.slots[index];
        let new = (u32::from(tag) << 16) | code;
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0 {
                let their = (current >> 16) as u16;
                if their != tag && newer(their, tag, current_tag()) {
                    // A newer generation owns the window: this result is stale.
                    return None;
                }
            }
            match slot.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let old = if current != 0 && (current >> 16) as u16 == tag {
            current & 0xFFFF
        } else {
            0
        };
        let bit = |code: u32, mask: u32| i32::from(code & mask != 0);
        let mut word = self.agg.load(Ordering::Acquire);
        loop {
            let (their, calls, failures, slow) = unpack_agg(word);
            let (calls, failures, slow) = if their == tag {
                (calls, failures, slow)
            } else if newer(their, tag, current_tag()) {
                return None;
            } else {
                (0, 0, 0)
            };
            let calls = calls + bit(code, CALL) - bit(old, CALL);
            let failures = failures + bit(code, FAILED) - bit(old, FAILED);
            let slow = slow + bit(code, SLOW) - bit(old, SLOW);
            let next = pack_agg(tag, calls, failures, slow);
            match self
                .agg
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(counts_of(calls, failures, slow)),
                Err(actual) => word = actual,
            }
        }
    }

    /// Empties the aggregate and the next slots of the ring if they hold another
    /// generation's values.
    fn sweep(&self, current_tag: impl Fn() -> u16) {
        let mut word = self.agg.load(Ordering::Acquire);
        loop {
            let tag = current_tag(); // read after the value
            if (word >> 48) as u16 == tag {
                break;
            }
            match self.agg.compare_exchange_weak(
                word,
                pack_agg(tag, 0, 0, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        for index in sweep_range(&self.sweep_at, self.n) {
            let slot = &self.slots[index];
            let mut value = slot.load(Ordering::Acquire);
            loop {
                let tag = current_tag(); // read after the value
                if (value >> 16) as u16 == tag {
                    break;
                }
                match slot.compare_exchange_weak(
                    value,
                    u32::from(tag) << 16,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(actual) => value = actual,
                }
            }
        }
    }

    fn read(&self, tag: u16) -> Counts {
        let (their, calls, failures, slow) = unpack_agg(self.agg.load(Ordering::Acquire));
        if their == tag {
            counts_of(calls, failures, slow)
        } else {
            Counts::default()
        }
    }
}

/// `n` buckets of `bucket_nanos` each (at least 1 ms). A bucket is two words:
///
/// - a stamp, generation tag (16) | version (8) | epoch + 1 (40), where the epoch is the
///   bucket's absolute index in time (40 bits of milliseconds last 34 years);
/// - counts, version (8) | calls (18) | failures (18) | slow (18).
///
/// The stamp's version goes up by one each time the stamp changes, and counts are only ever
/// current for the stamp whose version they carry. The writer that moves a stamp on does not
/// store fresh counts afterwards (a writer that already saw the new stamp may have counted in
/// between); instead every writer under the new stamp finds counts with an older version and
/// replaces them in the same compare-and-swap that adds its outcome, so a reset and an
/// addition never overwrite each other, and a reader never takes the old epoch's counts for
/// the new one's. Every writer reads the stamp again right before its compare-and-swap on the
/// counts, so a version that wrapped (256 changes of one bucket's stamp while a writer was held
/// up between claiming and counting) does not let an outcome into a later epoch's counts; only
/// a stall of 256 rollovers between that read and the compare-and-swap could, and then only
/// onto counts equal bit for bit to those it read.
///
/// A bucket whose stamp is not the one expected for its position counts as empty, so buckets
/// expire by themselves, also across idle gaps of any length. A swept bucket's stamp carries
/// the current tag, its version unchanged and no epoch (0, which no `epoch + 1` equals): empty
/// to everyone, and claimed like any stamp of an earlier epoch. The version stays, because
/// only a claim is followed by fresh counts: a sweep that moved it on would, after 256 sweeps
/// of a bucket nobody records into, bring the version back to that of the bucket's old counts,
/// and the next claim would take them for its own.
pub(crate) struct TimeWindow {
    n: u32,
    bucket_nanos: u64,
    stamps: Box<[AtomicU64]>,
    counts: Box<[AtomicU64]>,
    /// Where the next sweep starts.
    sweep_at: AtomicU32,
}

const EPOCH_BITS: u32 = 40;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const VERSION_MASK: u64 = 0xFF;
const VERSION_SHIFT: u32 = 56;
const COUNTS_MASK: u64 = (1 << VERSION_SHIFT) - 1;
const FIELD_BITS: u32 = 18;
const FIELD: u64 = (1 << FIELD_BITS) - 1;
const CALLS_SHIFT: u32 = 2 * FIELD_BITS;
const FAILURES_SHIFT: u32 = FIELD_BITS;

#[inline]
fn stamp(tag: u16, version: u64, epoch: u64) -> u64 {
    (u64::from(tag) << 48) | ((version & VERSION_MASK) << EPOCH_BITS) | ((epoch + 1) & EPOCH_MASK)
}

#[inline]
fn stamp_version(stamp: u64) -> u64 {
    (stamp >> EPOCH_BITS) & VERSION_MASK
}

/// Which generation and epoch a stamp stands for, without its version.
#[inline]
fn stamp_key(stamp: u64) -> u64 {
    stamp & !(VERSION_MASK << EPOCH_BITS)
}

#[inline]
fn delta(code: u32) -> u64 {
    let bit = |mask: u32| u64::from(code & mask != 0);
    (bit(CALL) << CALLS_SHIFT) | (bit(FAILED) << FAILURES_SHIFT) | bit(SLOW)
}

impl TimeWindow {
    pub(crate) fn new(span_nanos: u64, n: u32) -> Self {
        Self {
            n,
            bucket_nanos: (span_nanos / u64::from(n)).max(1),
            stamps: (0..n).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sweep_at: AtomicU32::new(0),
        }
    }

    /// Empties the next buckets if their stamps carry another generation's tag.
    fn sweep(&self, current_tag: impl Fn() -> u16) {
        for index in sweep_range(&self.sweep_at, self.n) {
            let stamps = &self.stamps[index];
            let mut current = stamps.load(Ordering::Acquire);
            // A bucket never used (0) has no epoch and can pass for nothing.
            while current != 0 {
                let tag = current_tag(); // read after the stamp
                if (current >> 48) as u16 == tag {
                    break;
                }
                let empty = (u64::from(tag) << 48) | (stamp_version(current) << EPOCH_BITS);
                match stamps.compare_exchange_weak(
                    current,
                    empty,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    fn record(
        &self,
        tag: u16,
        code: u32,
        now_nanos: u64,
        current_tag: impl Fn() -> u16,
    ) -> Option<Counts> {
        let epoch = now_nanos / self.bucket_nanos;
        let index = (epoch % u64::from(self.n)) as usize;
        loop {
            let held = self.claim(index, tag, epoch, &current_tag)?;
            if self.add(index, held, code) {
                return Some(self.read(tag, now_nanos));
            }
        }
    }

    /// The stamp of bucket `index` for generation `tag` and `epoch`, moving an older stamp on
    /// if needed; `None` when a newer generation or a later epoch owns the bucket.
    fn claim(
        &self,
        index: usize,
        tag: u16,
        epoch: u64,
        current_tag: impl Fn() -> u16,
    ) -> Option<u64> {
        let key = stamp(tag, 0, epoch);
        let mut current = self.stamps[index].load(Ordering::Acquire);
        loop {
            if stamp_key(current) == key {
                return Some(current);
            }
            if current != 0 {
                let their = (current >> 48) as u16;
                if (their != tag && newer(their, tag, current_tag()))
                    || (their == tag && current & EPOCH_MASK > key & EPOCH_MASK)
                {
                    return None;
                }
            }
            let next = stamp(tag, stamp_version(current) + 1, epoch);
            match self.stamps[index].compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next),
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds an outcome to bucket `index` under stamp `held`. Counts of an earlier stamp are
    /// replaced; either way only while `held` is still the bucket's stamp: false when it is
    /// not any more (the caller claims the bucket again).
    ///
    /// The stamp is read again just before each compare-and-swap, also when the counts carry
    /// `held`'s version: versions wrap, so after 256 rollovers of the bucket while this writer
    /// was held up between claiming and counting (a preempted thread, a window of one short
    /// bucket), counts of that version belong to a later epoch, and the outcome would be
    /// counted into it.
    fn add(&self, index: usize, held: u64, code: u32) -> bool {
        let version = stamp_version(held);
        let counts = &self.counts[index];
        let mut word = counts.load(Ordering::Acquire);
        loop {
            if self.stamps[index].load(Ordering::Acquire) != held {
                return false;
            }
            let base = if word >> VERSION_SHIFT == version {
                let base = word & COUNTS_MASK;
                if (base >> CALLS_SHIFT) & FIELD >= FIELD - 1 {
                    // Halve all three counts: rates are kept, nothing overflows.
                    let half = |shift: u32| ((base >> shift) & FIELD) / 2;
                    (half(CALLS_SHIFT) << CALLS_SHIFT)
                        | (half(FAILURES_SHIFT) << FAILURES_SHIFT)
                        | half(0)
                } else {
                    base
                }
            } else {
                // Counts of an earlier stamp: this outcome starts the bucket afresh.
                0
            };
            match counts.compare_exchange_weak(
                word,
                (version << VERSION_SHIFT) | (base + delta(code)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    fn read(&self, tag: u16, now_nanos: u64) -> Counts {
        let epoch = now_nanos / self.bucket_nanos;
        let mut total = Counts::default();
        for k in 0..u64::from(self.n).min(epoch + 1) {
            let e = epoch - k;
            let index = (e % u64::from(self.n)) as usize;
            let current = self.stamps[index].load(Ordering::Acquire);
            if stamp_key(current) != stamp(tag, 0, e) {
                continue;
            }
            let word = self.counts[index].load(Ordering::Acquire);
            if word >> VERSION_SHIFT == stamp_version(current) {
                total.calls += ((word >> CALLS_SHIFT) & FIELD) as u32;
                total.failures += ((word >> FAILURES_SHIFT) & FIELD) as u32;
                total.slow += (word & FIELD) as u32;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    const MS: u64 = 1_000_000;

    fn leaked_agg() -> &'static AtomicU64 {
        Box::leak(Box::new(AtomicU64::new(0)))
    }

    /// The counts the slots of generation `tag` add up to.
    fn slot_counts(window: &CountWindow, tag: u16) -> Counts {
        let mut total = Counts::default();
        for slot in &window.slots {
            let value = slot.load(Ordering::Acquire);
            if value != 0 && (value >> 16) as u16 == tag {
                total.calls += value & CALL;
                total.failures += (value & FAILED) >> 1;
                total.slow += (value & SLOW) >> 2;
            }
        }
        total
    }

    /// A sweep empties what an older generation left, leaves the current generation's values
    /// alone, and an older generation's recorder still backs off from the swept slots.
    #[test]
    fn a_sweep_empties_older_values_only() {
        let window = CountWindow::new(4, leaked_agg());
        window.record(1, CALL | FAILED, || 1);
        window.record(1, CALL | FAILED, || 1);
        // Generation 2 starts; one outcome is recorded before its sweep runs.
        window.record(2, CALL, || 2);
        window.sweep(|| 2);
        assert_eq!(window.read(2), slot_counts(&window, 2));
        assert_eq!(window.read(2).calls, 1);
        // The swept slot 0 (after the cursor: the first one) is "empty, generation 2".
        assert_eq!(window.slots[0].load(Ordering::Relaxed), 2 << 16);
        assert_eq!(
            window.record(1, CALL | FAILED, || 2),
            None,
            "a stale outcome"
        );
        // Slot 1 still holds generation 1's failure: the next sweep empties it.
        window.sweep(|| 2);
        assert_eq!(window.slots[1].load(Ordering::Relaxed), 2 << 16);
        assert_eq!(window.read(2), slot_counts(&window, 2));
    }

    /// Slots of a ring are swept in turn, `ceil(n / SWEEP_PERIOD)` per generation: after
    /// `SWEEP_PERIOD` generations, none has a tag older than that, whatever the ring's size.
    #[test]
    fn sweeps_reach_every_slot_within_a_sweep_period() {
        let largest = crate::circuit_breaker::MAX_WINDOW_CALLS;
        for n in [1, 7, largest, 3 * SWEEP_PERIOD + 5] {
            let window = CountWindow::new(n, leaked_agg());
            for _ in 0..n.min(100) {
                window.record(0, CALL | FAILED, || 0);
            }
            for generation in 1..=SWEEP_PERIOD {
                window.sweep(|| generation as u16);
                assert_eq!(window.read(generation as u16), Counts::default());
            }
            let oldest = window
                .slots
                .iter()
                .map(|s| s.load(Ordering::Relaxed) >> 16)
                .min()
                .unwrap();
            assert!(oldest >= 1, "ring of {n}: a slot was never swept");
        }
    }

    /// The rounds of the racing tests below that must be judged: a round where a recorder stalled
    /// is not (see below), and rounds are run until this many were.
    const JUDGED: u32 = 3;
    /// The most rounds the racing tests run: on a machine so loaded that fewer than [`JUDGED`]
    /// of them can be judged, they fail.
    const MAX_ROUNDS: u32 = 24;

    /// Recorders of the current generation race a thread that keeps starting generations and
    /// sweeping, for several tag periods. Each time they all stop, the aggregate is exactly
    /// what the slots of the current generation add up to: a sweep never erased a counted
    /// outcome, and no stale slot was taken out of (or into) the total.
    ///
    /// Except after a recorder stalled, inside one `record`, for most of a tag period of
    /// transitions: the module's documented limit (its tag may then pass for a current one). The
    /// transitions here come thousands a millisecond, so a recorder descheduled on a loaded
    /// machine can meet it; such a round is not judged, and rounds are run until [`JUDGED`] of
    /// them were (at most [`MAX_ROUNDS`]).
    #[test]
    fn sweeps_racing_recorders_keep_the_aggregate_exact() {
        const N: u32 = 8;
        let window = CountWindow::new(N, leaked_agg());
        let generation = AtomicU32::new(0);
        let current = || generation.load(Ordering::Acquire) as u16;
        let mut judged = 0;
        for round in 0..MAX_ROUNDS {
            if judged == JUDGED {
                break;
            }
            let stop = AtomicBool::new(false);
            let stalled = AtomicBool::new(false);
            std::thread::scope(|scope| {
                for t in 0..3u32 {
                    let (window, generation, stop, stalled) =
                        (&window, &generation, &stop, &stalled);
                    scope.spawn(move || {
                        let mut x = (t + 1).wrapping_mul(0x9E37_79B9) | 1;
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 17;
                            x ^= x << 5;
                            let before = generation.load(Ordering::Acquire);
                            let code = CALL | (x & (FAILED | SLOW));
                            window.record(before as u16, code, || {
                                generation.load(Ordering::Acquire) as u16
                            });
                            let after = generation.load(Ordering::Acquire);
                            if after.wrapping_sub(before) >= (1 << 16) - SWEEP_PERIOD {
                                stalled.store(true, Ordering::Relaxed);
                            }
                        }
                    });
                }
                // Transitions: only the winner sweeps, once per generation.
                for _ in 0..(1 << 16) + 100 * round {
                    generation.fetch_add(1, Ordering::AcqRel);
                    window.sweep(current);
                }
                // The last generation records a while before everything stops.
                std::thread::sleep(std::time::Duration::from_millis(5));
                stop.store(true, Ordering::Relaxed);
            });
            if stalled.load(Ordering::Relaxed) {
                continue;
            }
            judged += 1;
            let tag = current();
            let agg = unpack_agg(window.agg.load(Ordering::Acquire));
            let expected = slot_counts(&window, tag);
            if agg.0 == tag {
                assert_eq!(
                    (agg.1, agg.2, agg.3),
                    (
                        expected.calls as i32,
                        expected.failures as i32,
                        expected.slow as i32
                    ),
                    "round {round}"
                );
            } else {
                assert_eq!(expected, Counts::default(), "round {round}");
            }
        }
        assert_eq!(
            judged, JUDGED,
            "only {judged} of {MAX_ROUNDS} rounds judged"
        );
    }

    /// The same for a time window: once everything stops, the current generation's buckets
    /// hold exactly the outcomes its recorders were told were counted.
    #[test]
    fn sweeps_racing_time_recorders_lose_and_resurrect_nothing() {
        let window = TimeWindow::new(4 * MS, 4);
        let generation = AtomicU32::new(0);
        let current = || generation.load(Ordering::Acquire) as u16;
        // As in the test above, a round where a recorder stalled for most of a tag period
        // inside one `record` is not judged.
        let mut judged = 0;
        for round in 0..MAX_ROUNDS {
            if judged == JUDGED {
                break;
            }
            let stop = AtomicBool::new(false);
            let stalled = AtomicBool::new(false);
            let counted = AtomicU64::new(0);
            let transitions = (1 << 16) + 7 * round;
            // The generation the loop below ends on, known before any recorder starts: a
            // recorder of it counts from its first call on, before the loop's end is seen.
            let last = AtomicU32::new(generation.load(Ordering::Acquire) + transitions);
            std::thread::scope(|scope| {
                for t in 0..3u64 {
                    let (window, generation, stop, counted, last, stalled) =
                        (&window, &generation, &stop, &counted, &last, &stalled);
                    scope.spawn(move || {
                        let mut i = t;
                        while !stop.load(Ordering::Relaxed) {
                            i += 1;
                            let g = generation.load(Ordering::Acquire);
                            // Four epochs, two of them in the window at the end.
                            let now = (i % 4) * MS;
                            let recorded = window.record(g as u16, CALL, now, || {
                                generation.load(Ordering::Acquire) as u16
                            });
                            let after = generation.load(Ordering::Acquire);
                            if after.wrapping_sub(g) >= (1 << 16) - SWEEP_PERIOD {
                                stalled.store(true, Ordering::Relaxed);
                            }
                            if recorded.is_some()
                                && g == last.load(Ordering::Acquire)
                                && now == 3 * MS
                            {
                                counted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                for _ in 0..transitions {
                    generation.fetch_add(1, Ordering::AcqRel);
                    window.sweep(current);
                }
                // The last generation records a while: until it has counted in epoch 3 (on
                // a loaded machine, a fixed few milliseconds may not be enough), then 5 ms.
                let waited = std::time::Instant::now();
                while counted.load(Ordering::Relaxed) == 0
                    && waited.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::thread::yield_now();
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                stop.store(true, Ordering::Relaxed);
            });
            if stalled.load(Ordering::Relaxed) {
                continue;
            }
            judged += 1;
            // Epoch 3 alone, read at epoch 6 (the window holds epochs 3 to 6).
            let calls = u64::from(window.read(current(), 6 * MS).calls);
            assert!(
                calls > 0,
                "round {round}: the last generation recorded nothing"
            );
            assert_eq!(calls, counted.load(Ordering::Relaxed), "round {round}");
        }
        assert_eq!(
            judged, JUDGED,
            "only {judged} of {MAX_ROUNDS} rounds judged"
        );
    }

    /// The writer that moves a bucket on to a new epoch is overtaken, between moving the
    /// stamp and counting, by a writer of the same epoch: neither outcome is lost and the old
    /// epoch's counts never show up as the new one's.
    #[test]
    fn an_overtaken_rollover_keeps_both_outcomes_and_drops_the_old_ones() {
        let window = TimeWindow::new(4 * MS, 4);
        for _ in 0..3 {
            window.record(1, CALL | FAILED, 0, || 1);
        }
        assert_eq!(window.read(1, 0).failures, 3);

        // Epoch 4 lands in the bucket of epoch 0. The first writer moves the stamp on...
        let held = window.claim(0, 1, 4, || 1).unwrap();
        // ...and a second writer counts before the first one does.
        let seen = window.record(1, CALL, 4 * MS, || 1).unwrap();
        assert_eq!(
            seen,
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert!(window.add(0, held, CALL | SLOW));
        assert_eq!(
            window.read(1, 4 * MS),
            Counts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
    }

    /// A writer that read a stamp which has moved on since does not count into the new
    /// epoch's bucket under the old stamp, nor wipe the new epoch's counts.
    #[test]
    fn a_stale_stamp_never_resets_newer_counts() {
        let window = TimeWindow::new(2 * MS, 2);
        window.record(1, CALL, 0, || 1);
        let stale = window.claim(0, 1, 0, || 1).unwrap();
        window.record(1, CALL | FAILED, 2 * MS, || 1);
        window.record(1, CALL | FAILED, 2 * MS, || 1);
        // The stale writer's counts word has a newer version now: it must start over.
        assert!(!window.add(0, stale, CALL));
        assert_eq!(window.claim(0, 1, 0, || 1), None);
        assert_eq!(window.read(1, 2 * MS).failures, 2);
        assert_eq!(window.read(1, 2 * MS).calls, 2);
    }

    /// A writer held up between claiming a bucket and counting, while the bucket rolls over
    /// 256 times (its stamp's version comes round to the one held), does not count its
    /// outcome into the bucket's latest epoch: that epoch's counts stay those of its calls.
    #[test]
    fn a_writer_held_up_through_256_rollovers_counts_into_no_later_epoch() {
        let window = TimeWindow::new(MS, 1);
        window.record(1, CALL, 0, || 1);
        let held = window.claim(0, 1, 0, || 1).unwrap();
        for epoch in 1..=256 {
            window.record(1, CALL, epoch * MS, || 1);
        }
        assert_eq!(
            stamp_version(window.stamps[0].load(Ordering::Relaxed)),
            stamp_version(held)
        );
        assert!(!window.add(0, held, CALL | FAILED));
        assert_eq!(window.claim(0, 1, 0, || 1), None, "epoch 0 has expired");
        assert_eq!(
            window.read(1, 256 * MS),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    /// Threads that start every epoch together race to roll its bucket over; after each
    /// epoch the window holds exactly what was recorded in the last two epochs. Failures are
    /// recorded in one epoch of four, so counts left over from two epochs earlier show.
    #[test]
    fn concurrent_rollovers_lose_nothing_and_resurrect_nothing() {
        const THREADS: u64 = 2;
        const PER_EPOCH: u64 = 8;
        const EPOCHS: u64 = 20_000;
        let window = Arc::new(TimeWindow::new(2 * MS, 2));
        let epoch = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let failing = |e: u64| e.is_multiple_of(4);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let (window, epoch, done, errors) = (&window, &epoch, &done, &errors);
                scope.spawn(move || {
                    for e in 0..EPOCHS {
                        let mut spins = 0u32;
                        while epoch.load(Ordering::Acquire) != e {
                            spins += 1;
                            if spins.is_multiple_of(64) {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        let code = if failing(e) { CALL | FAILED } else { CALL };
                        for _ in 0..PER_EPOCH {
                            window.record(1, code, e * MS, || 1);
                        }
                        if done.fetch_add(1, Ordering::AcqRel) + 1 == THREADS * (e + 1) {
                            let per = THREADS * PER_EPOCH;
                            let fails = |e: u64| if failing(e) { per } else { 0 };
                            let (calls, failures) = if e == 0 {
                                (per, fails(0))
                            } else {
                                (2 * per, fails(e) + fails(e - 1))
                            };
                            let counts = window.read(1, e * MS);
                            if (u64::from(counts.calls), u64::from(counts.failures))
                                != (calls, failures)
                            {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            epoch.store(e + 1, Ordering::Release);
                        }
                    }
                });
            }
        });
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "epochs with wrong counts"
        );
    }
}
