//! The backend pool: an immutable snapshot of the ready instances behind an `ArcSwap`, the
//! round-robin cursor, the live limits, and each instance's counters and hand-off channel.
//!
//! The accept path only loads the snapshot and touches atomics; the mutex guards the id →
//! instance registry, which only `set_backends`, the hand-off calls, `stats` and
//! `active_for` use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;
use serde::Serialize;

use super::counters::{ClientSlot, Clients, Counters, InstanceStats, Lingering};
use super::handoff::Handoff;
use super::{Balance, ProxyLimits};

/// What the pool keeps per instance id, in and out of rotation alike.
#[derive(Debug, Clone, Default)]
struct Entry {
    counters: Arc<Counters>,
    /// The instance's hand-off channel, while one is up (built-in instances only).
    handoff: Arc<ArcSwapOption<Handoff>>,
}

/// One ready backend as the accept path sees it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub id: u32,
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    pub handoff: Arc<ArcSwapOption<Handoff>>,
}

/// The ready set in round-robin order; replaced whole, never mutated.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub backends: Vec<Backend>,
}

/// A point-in-time copy of every proxy counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Client connections open now (relayed, handed to an instance, or being placed).
    pub active: u64,
    /// Clients sent the BUSY line: no instance could take them, or over `max_connections`.
    pub rejected_total: u64,
    /// The part of `rejected_total` turned away by `max_connections`.
    pub over_limit_total: u64,
    /// Connections whose PROXY header was taken (`proxy.accept_proxy`).
    pub header_accepted_total: u64,
    /// Connections closed for a missing, malformed or untrusted PROXY header.
    pub header_rejected_total: u64,
    /// Per instance id, every id ever set.
    pub instances: BTreeMap<u32, InstanceStats>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub snapshot: ArcSwap<Snapshot>,
    pub rr: AtomicUsize,
    pub clients: Arc<Clients>,
    leastconn: AtomicBool,
    /// `proxy.accept_proxy`: the networks whose PROXY headers are believed.
    accept_proxy: ArcSwapOption<Vec<IpNet>>,
    max_connections: AtomicUsize,
    connect_timeout_us: AtomicU64,
    idle_timeout_us: AtomicU64,
    registry: Mutex<BTreeMap<u32, Entry>>,
}

/// The proxy's view of the instances: cheap to clone, shared with `serve`.
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Pool {
    pub fn new(limits: ProxyLimits) -> Pool {
        let pool = Pool {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                rr: AtomicUsize::new(0),
                clients: Arc::default(),
                leastconn: Default::default(),
                accept_proxy: ArcSwapOption::empty(),
                max_connections: AtomicUsize::new(0),
                connect_timeout_us: AtomicU64::new(0),
                idle_timeout_us: AtomicU64::new(0),
                registry: Mutex::new(BTreeMap::new()),
            }),
        };
        pool.set_limits(limits);
        pool
    }

    /// Replaces the ready set (in round-robin order). New connections use it at once;
    /// sessions already relayed are not touched.
    pub fn set_backends(&self, ready: Vec<(u32, SocketAddr)>) {
        let mut registry = self.registry();
        let backends = ready
            .into_iter()
            .map(|(id, addr)| {
                let Entry { counters, handoff } = registry.entry(id).or_default().clone();
                Backend {
                    id,
                    addr,
                    counters,
                    handoff,
                }
            })
            .collect();
        // Stored under the registry lock so that two concurrent calls cannot interleave.
        self.inner.snapshot.store(Arc::new(Snapshot { backends }));
    }

    /// The ids and addresses in the current ready set, in round-robin order.
    pub fn backends(&self) -> Vec<(u32, SocketAddr)> {
        self.inner
            .snapshot
            .load()
            .backends
            .iter()
            .map(|b| (b.id, b.addr))
            .collect()
    }

    pub fn set_limits(&self, limits: ProxyLimits) {
        let i = &self.inner;
        i.max_connections.store(limits.max_connections, Relaxed);
        i.connect_timeout_us
            .store(micros(limits.connect_timeout), Relaxed);
        i.idle_timeout_us
            .store(micros(limits.idle_timeout), Relaxed);
        i.leastconn
            .store(limits.balance == Balance::LeastConn, Relaxed);
    }

    /// `proxy.accept_proxy`: `Some(networks)` makes every client start with a PROXY
    /// header from one of them; `None` takes clients as they come.
    pub fn set_accept_proxy(&self, trusted: Option<Vec<IpNet>>) {
        self.inner.accept_proxy.store(trusted.map(Arc::new));
    }

    pub(crate) fn accept_proxy(&self) -> Option<Arc<Vec<IpNet>>> {
        self.inner.accept_proxy.load_full()
    }

    /// Opens instance `id`'s hand-off channel at `path` (replacing a dead one): new
    /// clients placed on it are then handed over instead of relayed.
    pub fn attach_handoff(&self, id: u32, path: &std::path::Path) -> std::io::Result<()> {
        let entry = self.registry().entry(id).or_default().clone();
        let h = Handoff::connect(path, id, entry.counters)?;
        if let Some(old) = entry.handoff.swap(Some(h)) {
            old.close();
        }
        Ok(())
    }

    /// True while instance `id` takes clients over its hand-off channel.
    pub fn handoff_up(&self, id: u32) -> bool {
        self.registry()
            .get(&id)
            .and_then(|e| e.handoff.load_full())
            .is_some_and(|h| h.is_up())
    }

    /// Closes instance `id`'s hand-off channel (the process is being stopped).
    pub fn detach_handoff(&self, id: u32) {
        if let Some(e) = self.registry().get(&id) {
            if let Some(old) = e.handoff.swap(None) {
                old.close();
            }
        }
    }

    pub fn limits(&self) -> ProxyLimits {
        let i = &self.inner;
        ProxyLimits {
            max_connections: i.max_connections.load(Relaxed),
            connect_timeout: Duration::from_micros(i.connect_timeout_us.load(Relaxed)),
            idle_timeout: Duration::from_micros(i.idle_timeout_us.load(Relaxed)),
            balance: if i.leastconn.load(Relaxed) {
                Balance::LeastConn
            } else {
                Balance::RoundRobin
            },
        }
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.inner.clients;
        ProxyStats {
            active: c.active.load(Relaxed),
            rejected_total: c.rejected_total.load(Relaxed),
            over_limit_total: c.over_limit_total.load(Relaxed),
            header_accepted_total: c.header_accepted_total.load(Relaxed),
            header_rejected_total: c.header_rejected_total.load(Relaxed),
            instances: self
                .registry()
                .iter()
                .map(|(id, e)| (*id, e.counters.read()))
                .collect(),
        }
    }

    /// Sessions (relayed or handed over) open on instance `id` (0 for an id never seen).
    pub fn active_for(&self, id: u32) -> u64 {
        self.registry()
            .get(&id)
            .map_or(0, |e| e.counters.active.load(Relaxed))
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a client slot; `None` when that would exceed `max_connections`.
    pub(crate) fn admit(&self) -> Option<ClientSlot> {
        let max = self.inner.max_connections.load(Relaxed) as u64;
        self.inner.clients.admit(max)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_micros(self.inner.connect_timeout_us.load(Relaxed))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_micros(self.inner.idle_timeout_us.load(Relaxed))
    }

    /// The snapshot and the index to start from for one client connection: the round-robin
    /// cursor, or with `leastconn` the instance with the fewest active sessions, the first
    /// such from the cursor on (round robin among equals).
    pub(crate) fn pick(&self) -> (Arc<Snapshot>, usize) {
        let snapshot = self.inner.snapshot.load_full();
        let start = self.inner.rr.fetch_add(1, Relaxed);
        let n = snapshot.backends.len();
        if n < 2 || !self.inner.leastconn.load(Relaxed) {
            return (snapshot, start);
        }
        let best = (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .min_by_key(|&k| snapshot.backends[k].counters.active.load(Relaxed))
            .unwrap_or(0);
        (snapshot, best)
    }

    /// A turned-away client may linger until it closes, unless `max` already do.
    pub(crate) fn linger(&self, max: usize) -> Option<Lingering> {
        self.inner.clients.linger(max)
    }

    pub(crate) fn count_rejected(&self) {
        self.inner.clients.rejected_total.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::counters::InstanceSlot;

    fn limits(max: usize) -> ProxyLimits {
        ProxyLimits {
            max_connections: max,
            connect_timeout: Duration::from_millis(1500),
            idle_timeout: Duration::from_secs(300),
            balance: Balance::RoundRobin,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn round_robin_walks_the_snapshot_in_order() {
        let pool = Pool::new(limits(10));
        pool.set_backends(vec![(1, addr(1001)), (2, addr(1002)), (3, addr(1003))]);
        let picked: Vec<u32> = (0..6)
            .map(|_| {
                let (s, start) = pool.pick();
                s.backends[start % s.backends.len()].id
            })
            .collect();
        assert_eq!(picked, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn leastconn_takes_the_least_loaded_and_rotates_among_equals() {
        let pool = Pool::new(ProxyLimits {
            balance: Balance::LeastConn,
            ..limits(10)
        });
        pool.set_backends(vec![(1, addr(1001)), (2, addr(1002)), (3, addr(1003))]);
        let (s, _) = pool.pick();
        let busy: Vec<InstanceSlot> = (0..3)
            .map(|_| InstanceSlot::open(s.backends[0].counters.clone()))
            .collect();
        let picked: Vec<u32> = (0..4)
            .map(|_| {
                let (s, start) = pool.pick();
                s.backends[start].id
            })
            .collect();
        assert!(!picked.contains(&1), "{picked:?}");
        assert!(picked.contains(&2) && picked.contains(&3), "{picked:?}");
        let one = InstanceSlot::open(s.backends[1].counters.clone());
        let (s2, start) = pool.pick();
        assert_eq!(s2.backends[start].id, 3);
        drop((busy, one));
        pool.set_limits(limits(10));
        assert_eq!(pool.limits().balance, Balance::RoundRobin);
    }

    #[test]
    fn stats_survive_removal_and_re_adding() {
        let pool = Pool::new(limits(10));
        pool.set_backends(vec![(1, addr(1001)), (2, addr(1002))]);
        let (s, _) = pool.pick();
        let slot = InstanceSlot::open(s.backends[1].counters.clone());
        s.backends[1].counters.bytes_in.fetch_add(7, Relaxed);
        drop(s);

        pool.set_backends(vec![(1, addr(1001))]);
        assert_eq!(pool.backends(), vec![(1, addr(1001))]);
        // Removed from rotation, its open session still counts (what draining waits for).
        assert_eq!(pool.active_for(2), 1);
        drop(slot);
        assert_eq!(pool.active_for(2), 0);

        pool.set_backends(vec![(2, addr(2002)), (1, addr(1001))]);
        let stats = pool.stats();
        assert_eq!(stats.instances[&2].total, 1);
        assert_eq!(stats.instances[&2].bytes_in, 7);
        assert_eq!(stats.instances[&1].total, 0);
        assert_eq!(pool.backends()[0], (2, addr(2002)));
        assert_eq!(pool.active_for(99), 0);
    }

    #[test]
    fn admit_bounds_client_connections_and_releases_on_drop() {
        let pool = Pool::new(limits(2));
        let a = pool.admit().expect("first");
        let b = pool.admit().expect("second");
        assert!(pool.admit().is_none());
        assert_eq!(pool.stats().active, 2);
        assert_eq!(pool.stats().rejected_total, 1);
        assert_eq!(pool.stats().over_limit_total, 1);
        drop(a);
        let c = pool.admit().expect("a slot was freed");
        pool.set_limits(limits(1));
        assert!(pool.admit().is_none());
        drop((b, c));
        assert_eq!(pool.stats().active, 0);
        assert_eq!(pool.limits().max_connections, 1);
        assert_eq!(pool.limits().connect_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn lingering_is_bounded_and_released_on_drop() {
        let pool = Pool::new(limits(2));
        let a = pool.linger(2).expect("first");
        let b = pool.linger(2).expect("second");
        assert!(pool.linger(2).is_none());
        drop(a);
        let c = pool.linger(2).expect("a place was freed");
        drop((b, c));
        assert!(pool.linger(1).is_some());
    }
}
