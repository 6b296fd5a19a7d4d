//! Every proxy counter, and the slots that keep the open-session counts right however a
//! session ends. The pool owns them; a hand-off channel updates its instance's counters and
//! holds the client slots of the sessions it handed over, so they sit below both.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

/// Counters of one instance; shared by the snapshot entry, every session relayed to it and
/// its hand-off channel.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connect_failures: AtomicU64,
    pub busy_total: AtomicU64,
}

impl Counters {
    pub fn read(&self) -> InstanceStats {
        InstanceStats {
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            busy_total: self.busy_total.load(Relaxed),
        }
    }
}

/// Counters of one instance (ids keep theirs across removal and re-adding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InstanceStats {
    /// Sessions open now, relayed or handed over.
    pub active: u64,
    /// Sessions since start: relayed (greeted `READY`) or adopted by the instance.
    pub total: u64,
    /// Bytes client → instance.
    pub bytes_in: u64,
    /// Bytes instance → client (the greeting included).
    pub bytes_out: u64,
    /// Refused or timed-out connects, and greetings that were neither READY nor BUSY.
    pub connect_failures: u64,
    /// `BUSY` greetings.
    pub busy_total: u64,
}

/// The proxy's client connections, whichever instance they went to.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    pub active: AtomicU64,
    pub rejected_total: AtomicU64,
    pub over_limit_total: AtomicU64,
    pub header_accepted_total: AtomicU64,
    pub header_rejected_total: AtomicU64,
    lingering: AtomicUsize,
}

impl Clients {
    /// Takes a client slot; `None` when that would make more than `max` open.
    pub fn admit(self: &Arc<Clients>, max: u64) -> Option<ClientSlot> {
        let now = self.active.fetch_add(1, Relaxed) + 1;
        let slot = ClientSlot(self.clone());
        if now > max {
            self.over_limit_total.fetch_add(1, Relaxed);
            self.rejected_total.fetch_add(1, Relaxed);
            return None; // the slot is released by the drop
        }
        Some(slot)
    }

    /// A turned-away client may linger until it closes, unless `max` already do.
    pub fn linger(self: &Arc<Clients>, max: usize) -> Option<Lingering> {
        let slot = Lingering(self.clone());
        (self.lingering.fetch_add(1, Relaxed) < max).then_some(slot)
    }
}

/// One admitted client connection; released on drop (for a handed-off session, when the
/// instance reports its end).
#[derive(Debug)]
pub(crate) struct ClientSlot(Arc<Clients>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// One turned-away client waiting for its close; released on drop.
#[derive(Debug)]
pub(crate) struct Lingering(Arc<Clients>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Relaxed);
    }
}

/// One relayed session on an instance; keeps `active` right however the session ends.
#[derive(Debug)]
pub(crate) struct InstanceSlot(pub Arc<Counters>);

impl InstanceSlot {
    pub fn open(counters: Arc<Counters>) -> InstanceSlot {
        counters.active.fetch_add(1, Relaxed);
        counters.total.fetch_add(1, Relaxed);
        InstanceSlot(counters)
    }
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
