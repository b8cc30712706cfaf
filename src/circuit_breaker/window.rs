//! Sliding windows of outcomes, made of atomics only.
//!
//! Every value written is tagged with the low 16 bits of the breaker's generation, so a
//! transition resets a window by bumping the generation: a slot or an aggregate with another
//! tag counts as empty, and a recorder from an older generation never overwrites a newer value.

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

/// Whether tag `a` is newer than tag `b` (16-bit serial number arithmetic).
#[inline]
pub(crate) fn newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn record(&self, tag: u16, code: u32, now_nanos: u64) -> Option<Counts> {
        match self {
            Self::Count(w) => w.record(tag, code),
            Self::Time(w) => w.record(tag, code, now_nanos),
        }
    }

    pub(crate) fn read(&self, tag: u16, now_nanos: u64) -> Counts {
        match self {
            Self::Count(w) => w.read(tag),
            Self::Time(w) => w.read(tag, now_nanos),
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
    agg: AtomicU64,
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
    pub(crate) fn new(n: u32) -> Self {
        Self {
            n,
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
            head: AtomicU64::new(0),
            agg: AtomicU64::new(0),
        }
    }

    /// Whether the window is full of successes that were not slow, in generation `tag`: then
    /// one more such success changes nothing but the ring's rotation, and can be skipped.
    #[inline]
    pub(crate) fn all_ok(&self, tag: u16) -> bool {
        self.agg.load(Ordering::Relaxed) == pack_agg(tag, self.n as i32, 0, 0)
    }

    fn record(&self, tag: u16, code: u32) -> Option<Counts> {
        let index = (self.head.fetch_add(1, Ordering::Relaxed) % u64::from(self.n)) as usize;
        let slot = &self.slots[index];
        let new = (u32::from(tag) << 16) | code;
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0 {
                let their = (current >> 16) as u16;
                if their != tag && newer(their, tag) {
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
            } else if newer(their, tag) {
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

    fn read(&self, tag: u16) -> Counts {
        let (their, calls, failures, slow) = unpack_agg(self.agg.load(Ordering::Acquire));
        if their == tag {
            counts_of(calls, failures, slow)
        } else {
            Counts::default()
        }
    }
}

/// `n` buckets of `bucket_nanos` each. A bucket has a stamp (generation tag and epoch, the
/// bucket's absolute index in time) and a counts word: calls (21) | failures (21) | slow (21).
/// A bucket whose stamp is not the one expected for its position counts as empty, so buckets
/// expire by themselves, also across idle gaps of any length.
pub(crate) struct TimeWindow {
    n: u32,
    bucket_nanos: u64,
    stamps: Box<[AtomicU64]>,
    counts: Box<[AtomicU64]>,
}

const EPOCH_MASK: u64 = (1 << 48) - 1;
const FIELD: u64 = (1 << 21) - 1;

#[inline]
fn stamp(tag: u16, epoch: u64) -> u64 {
    (u64::from(tag) << 48) | ((epoch + 1) & EPOCH_MASK)
}

#[inline]
fn delta(code: u32) -> u64 {
    let bit = |mask: u32| u64::from(code & mask != 0);
    (bit(CALL) << 42) | (bit(FAILED) << 21) | bit(SLOW)
}

impl TimeWindow {
    pub(crate) fn new(span_nanos: u64, n: u32) -> Self {
        Self {
            n,
            bucket_nanos: (span_nanos / u64::from(n)).max(1),
            stamps: (0..n).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, tag: u16, code: u32, now_nanos: u64) -> Option<Counts> {
        let epoch = now_nanos / self.bucket_nanos;
        let index = (epoch % u64::from(self.n)) as usize;
        let want = stamp(tag, epoch);
        let current = self.stamps[index].load(Ordering::Acquire);
        if current != want {
            if current != 0 {
                let their = (current >> 16 >> 32) as u16;
                let their_epoch = current & EPOCH_MASK;
                if (their != tag && newer(their, tag))
                    || (their == tag && their_epoch > (want & EPOCH_MASK))
                {
                    return None;
                }
            }
            match self.stamps[index].compare_exchange(
                current,
                want,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => self.counts[index].store(delta(code), Ordering::Release),
                Err(actual) if actual == want => self.add(index, code),
                Err(_) => return None,
            }
        } else {
            self.add(index, code);
        }
        Some(self.read(tag, now_nanos))
    }

    fn add(&self, index: usize, code: u32) {
        let counts = &self.counts[index];
        let mut word = counts.load(Ordering::Acquire);
        loop {
            let mut base = word;
            if (base >> 42) & FIELD >= FIELD - 1 {
                // Halve all three counts: rates are kept, nothing overflows.
                let half = |shift: u32| ((base >> shift) & FIELD) / 2;
                base = (half(42) << 42) | (half(21) << 21) | half(0);
            }
            match counts.compare_exchange_weak(
                word,
                base + delta(code),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
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
            if self.stamps[index].load(Ordering::Acquire) == stamp(tag, e) {
                let word = self.counts[index].load(Ordering::Acquire);
                total.calls += ((word >> 42) & FIELD) as u32;
                total.failures += ((word >> 21) & FIELD) as u32;
                total.slow += (word & FIELD) as u32;
            }
        }
        total
    }
}
