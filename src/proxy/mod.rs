//! The public round-robin TCP proxy: accept loop, backend pool, relay.
//!
//! It takes the place of haproxy in front of the instances (docs/design.md "Proxy"). Each client
//! connection goes to the next ready instance in round-robin order; the proxy reads the
//! instance's greeting first and moves on to the next one on `BUSY`, a refused or timed-out
//! connect or a garbled greeting, so a client sees `BUSY` only when no instance can take it.
//! The supervisor publishes the ready set with [`Pool::set_backends`]; the accept path reads
//! it without locks.
//!
//! A built-in instance whose hand-off channel is up gets the client socket itself
//! (`handoff`): it greets the client and serves it directly, and the proxy keeps no
//! descriptor for the session. Other instances are relayed.

mod accept;
mod counters;
pub mod fds;
pub mod greeting;
mod handoff;
mod header;
mod pool;
mod relay;

use std::io;
use std::time::Duration;

pub use accept::serve;
pub use counters::InstanceStats;
pub use pool::{Pool, ProxyStats};

/// Limits the supervisor can change live with [`Pool::set_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Client connections open at once; the next ones get the BUSY line.
    pub max_connections: usize,
    /// For the connect to an instance and its greeting together.
    pub connect_timeout: Duration,
    /// A session with no byte either way for this long is closed (zero: never).
    pub idle_timeout: Duration,
    pub balance: Balance,
}

/// `proxy.balance`: how the next instance is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The fewest active sessions first, in turn among equals (for long sessions).
    LeastConn,
}

/// `proxy.max_connections` when the topology leaves it out.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `proxy.connect_timeout` when the topology leaves it out.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `proxy.idle_timeout` when the topology leaves it out.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `proxy.balance` when the topology leaves it out.
pub const DEFAULT_BALANCE: Balance = Balance::RoundRobin;

impl Default for ProxyLimits {
    /// The topology file's defaults.
    fn default() -> ProxyLimits {
        ProxyLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            balance: DEFAULT_BALANCE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket itself is unusable (not a transient accept error).
    #[error("accept on {addr}: {source}")]
    Accept {
        addr: String,
        #[source]
        source: io::Error,
    },
}
