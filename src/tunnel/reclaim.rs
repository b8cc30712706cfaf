//! What a provider remembers of its tunnels that ended (a localtunnel subdomain, a bore public
//! port), so that a re-opened tunnel asks the server for its own again and keeps its URL.
//!
//! A tunnel's value joins the memory only when its session ends (or its start fails after the
//! server gave it), so a second tunnel opened through the same provider while the first is up
//! never asks for the first's. A value belongs to the tunnel whose session had it
//! ([`Upstream::tunnel_scope`](super::Upstream::tunnel_scope)): while that tunnel is being
//! re-opened, only it asks for the value; once it is closed (or for a session of no tunnel), any
//! tunnel of the provider may. So two tunnels lost together (a server restart) do not swap URLs.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

/// How many values of tunnels that are over a provider remembers.
const REMEMBERED: usize = 8;
/// How many values a provider remembers at most, those of tunnels being re-opened included: each
/// such tunnel keeps its own (a server restart ends all of a provider's tunnels at once), up to
/// this many.
const REMEMBERED_MAX: usize = 64;

/// The values of a provider's tunnels that ended, most recent last; the provider's clones share
/// them.
pub(super) struct Memory<T>(Arc<Mutex<VecDeque<Ended<T>>>>);

impl<T> Clone for Memory<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for Memory<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Memory<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The value of an ended tunnel, and the tunnel it belongs to.
#[derive(Debug)]
struct Ended<T> {
    value: T,
    /// The tunnel whose session had it: while that tunnel is being re-opened, the value is its
    /// own; once it is closed (or for a session of no tunnel), any tunnel may ask for it.
    owner: Option<watch::Receiver<()>>,
    /// When the session that had it ended (`None` while it is open).
    at: Option<Instant>,
}

impl<T> Ended<T> {
    fn owned_by(&self, tunnel: Option<&watch::Receiver<()>>) -> bool {
        matches!((&self.owner, tunnel), (Some(owner), Some(tunnel)) if owner.same_channel(tunnel))
    }

    /// Whether the tunnel it belongs to is over (closed or dropped), or it belongs to none.
    fn free(&self) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|owner| owner.has_changed().unwrap_or(true))
    }
}

impl<T> Memory<T> {
    /// Takes out the value `tunnel` should ask for again: its own, else the most recent value of
    /// a tunnel that is over. Never the value of another tunnel that is being re-opened, which
    /// asks for it itself.
    pub(super) fn reclaim(&self, tunnel: Option<&watch::Receiver<()>>) -> Option<Held<T>> {
        let mut ended = self.lock();
        let at = ended
            .iter()
            .rposition(|value| value.owned_by(tunnel))
            .or_else(|| ended.iter().rposition(Ended::free))?;
        ended.remove(at).map(|value| self.held(value))
    }

    /// Takes out the value `tunnel` had when it ended, if it has one: it is being re-opened.
    pub(super) fn reclaim_own(&self, tunnel: Option<&watch::Receiver<()>>) -> Option<Held<T>> {
        let mut ended = self.lock();
        let at = ended.iter().rposition(|value| value.owned_by(tunnel))?;
        ended.remove(at).map(|value| self.held(value))
    }

    /// The value the server gave a session of `tunnel`, remembered as ended once it is dropped.
    pub(super) fn hold(&self, value: T, tunnel: Option<watch::Receiver<()>>) -> Held<T> {
        self.held(Ended {
            value,
            owner: tunnel,
            at: None,
        })
    }

    fn held(&self, value: Ended<T>) -> Held<T> {
        Held {
            memory: self.clone(),
            value: Some(value),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Ended<T>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A value to be asked for again once its holder is dropped: that of an open tunnel, remembered
/// as ended when its session ends, whichever way; or that of an ended tunnel, taken out for one
/// attempt to open and put back unless a tunnel opened (an attempt that failed, or was dropped
/// at the startup timeout or a close, does not forget it).
pub(super) struct Held<T> {
    memory: Memory<T>,
    /// `None` once forgotten.
    value: Option<Ended<T>>,
}

impl<T> Held<T> {
    pub(super) fn value(&self) -> &T {
        &self.ended().value
    }

    /// When the session that had the value ended (`None` for that of an open session).
    pub(super) fn ended_at(&self) -> Option<Instant> {
        self.ended().at
    }

    fn ended(&self) -> &Ended<T> {
        self.value
            .as_ref()
            .expect("a held value is only taken out when it is dropped or forgotten")
    }

    /// Lets go of the value without remembering it.
    pub(super) fn forget(mut self) {
        self.value = None;
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        let Some(mut value) = self.value.take() else {
            return;
        };
        value.at.get_or_insert_with(Instant::now);
        let mut ended = self.memory.lock();
        ended.push_back(value);
        // At most `REMEMBERED` values of tunnels that are over, the oldest going first (tunnels
        // end over time: those that were being re-opened may be over by now); those of tunnels
        // being re-opened, which ask for them, go only past `REMEMBERED_MAX` values in all.
        let mut excess = ended.iter().filter(|value| value.free()).count();
        excess = excess.saturating_sub(REMEMBERED);
        ended.retain(|value| {
            let goes = excess > 0 && value.free();
            excess -= usize::from(goes);
            !goes
        });
        let over = ended.len().saturating_sub(REMEMBERED_MAX);
        ended.drain(..over);
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn a_tunnel_being_re_opened_gets_its_own_value_and_no_other_live_tunnels() {
        let memory = Memory::default();
        let (first_tx, first) = tokio::sync::watch::channel(());
        let (second_tx, second) = tokio::sync::watch::channel(());
        drop(memory.hold(1u16, Some(first.clone())));
        drop(memory.hold(2u16, Some(second.clone())));
        // Both are being re-opened: each gets its own, a third tunnel neither.
        let (_third_tx, third) = tokio::sync::watch::channel(());
        assert!(memory.reclaim(Some(&third)).is_none());
        let own = memory.reclaim(Some(&first)).unwrap();
        assert_eq!(*own.value(), 1);
        assert!(own.ended_at().is_some());
        // Put back when the attempt fails.
        drop(own);
        assert_eq!(*memory.reclaim_own(Some(&first)).unwrap().value(), 1);
        // Once the second tunnel is closed, its value is free for another tunnel.
        drop(second_tx);
        let taken = memory.reclaim(Some(&third)).unwrap();
        assert_eq!(*taken.value(), 2);
        taken.forget();
        assert!(memory.reclaim(Some(&third)).is_none());
        assert!(memory.reclaim_own(Some(&second)).is_none());
        drop(first_tx);
    }

    #[test]
    fn remembers_the_last_eight() {
        let memory = Memory::default();
        for value in 0..10u16 {
            drop(memory.hold(value, None));
        }
        let mut left = Vec::new();
        while let Some(held) = memory.reclaim(None) {
            left.push(*held.value());
            held.forget();
        }
        assert_eq!(left, [9, 8, 7, 6, 5, 4, 3, 2]);
    }

    /// More tunnels than `REMEMBERED` end together (a server restart): each one being re-opened
    /// keeps its own value, and the values of tunnels that are over make room first. Past
    /// `REMEMBERED_MAX`, the oldest goes.
    #[test]
    fn the_values_of_tunnels_being_re_opened_outlast_those_of_tunnels_that_are_over() {
        let memory = Memory::default();
        let over: Vec<_> = (100..108u16)
            .map(|value| {
                let (tx, rx) = tokio::sync::watch::channel(());
                drop(memory.hold(value, Some(rx)));
                tx
            })
            .collect();
        drop(over);
        let live: Vec<_> = (0..12u16)
            .map(|value| {
                let (tx, rx) = tokio::sync::watch::channel(());
                drop(memory.hold(value, Some(rx.clone())));
                (tx, rx, value)
            })
            .collect();
        for (_tx, rx, value) in &live {
            let own = memory.reclaim_own(Some(rx)).expect("its own value");
            assert_eq!(own.value(), value);
            own.forget();
        }
        // The values of tunnels that are over are kept too, as room allows.
        let mut left = Vec::new();
        while let Some(held) = memory.reclaim(None) {
            left.push(*held.value());
            held.forget();
        }
        assert_eq!(left, [107, 106, 105, 104, 103, 102, 101, 100]);

        // Tunnels that were being re-opened and are over now: no more than `REMEMBERED` of
        // their values stay once another value comes.
        let ended: Vec<_> = (0..20u16)
            .map(|value| {
                let (tx, rx) = tokio::sync::watch::channel(());
                drop(memory.hold(value, Some(rx)));
                tx
            })
            .collect();
        drop(ended);
        drop(memory.hold(20, None));
        let mut left = Vec::new();
        while let Some(held) = memory.reclaim(None) {
            left.push(*held.value());
            held.forget();
        }
        assert_eq!(left, [20, 19, 18, 17, 16, 15, 14, 13]);

        let live: Vec<_> = (0..super::REMEMBERED_MAX as u16 + 2)
            .map(|value| {
                let (tx, rx) = tokio::sync::watch::channel(());
                drop(memory.hold(value, Some(rx.clone())));
                (tx, rx)
            })
            .collect();
        assert!(memory.reclaim_own(Some(&live[0].1)).is_none());
        assert!(memory.reclaim_own(Some(&live[1].1)).is_none());
        assert_eq!(*memory.reclaim_own(Some(&live[2].1)).unwrap().value(), 2);
    }
}
