//! An Entangled (Kademlia) DHT node, compatible on the wire with the original server's
//! `entangled` package (docs/protocol.md §11): bencoded messages in its `DefaultFormat`
//! ([`message`]), split into datagrams of at most 8 KiB, the RPCs `ping`, `store`,
//! `findNode`, `findValue` and `delete`, k = 8, α = 3, a 5 s RPC timeout, a refresh check
//! every 12 minutes (stale buckets after an hour), republishing after an hour and expiry
//! after a day.
//!
//! What a peer sends is data only: an error reply's exception type is logged, never
//! evaluated (the original runs it through `exec`); nothing is unpickled. Every table is
//! bounded (routing table 160 × k plus as many replacements, split messages in progress,
//! RPCs awaiting replies, requests being served, the per-peer store limiter), every message
//! too ([`message::MAX_MESSAGE`]), and each peer address may store at most a burst then a
//! steady rate ([`Config::store_burst`], [`Config::store_per_second`]).
//!
//! Deliberate differences from the original, all on the side of safety: a `delete` RPC is
//! answered as `findNode` and deletes nothing (the original server's file store ignores
//! deletes too, and an unauthenticated delete would let any peer erase values); a `store`
//! must carry a 20-byte key and a string value (the original would pickle anything else
//! into its tree); replies are accepted only from the address the request went to.
//!
//! The node id and the routing table persist in the node's own text format ([`state`]);
//! values live wherever the node's [`store::Values`] keeps them, for a store server its
//! entangled tree (`<home>/entangled/`, §11 value files).

pub mod encoding;
pub mod message;
pub mod node;
pub mod routing;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use node::{start, Handle};

/// A 160-bit node id or key.
pub type Id = [u8; 20];

/// Kademlia's bucket size and replication factor (Entangled's `k`).
pub const K: usize = 8;
/// Parallel RPCs of a lookup (Entangled's `alpha`).
pub const ALPHA: usize = 3;
/// Entangled's `rpcTimeout`.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Entangled's `refreshTimeout`: a bucket not looked up for this long is refreshed.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(3600);
/// Entangled's `replicateInterval`: a value not republished for this long is.
pub const REPLICATE_INTERVAL: i64 = 3600;
/// Entangled's `dataExpireTimeout`: a value older than this expires (or, for its original
/// publisher, is published afresh).
pub const DATA_EXPIRE: i64 = 86400;
/// Entangled's `checkRefreshInterval`.
pub const CHECK_REFRESH_INTERVAL: Duration = Duration::from_secs(720);

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP address to listen on (`listen_address`:`eport` for a store server).
    pub bind: SocketAddr,
    /// Where the node id and contacts are kept; `None`: a new id at every start.
    pub state_path: Option<PathBuf>,
    pub rpc_timeout: Duration,
    /// Upper bound on a whole lookup (find value, find node, the lookup of a publish).
    pub lookup_timeout: Duration,
    pub refresh_interval: Duration,
    /// Stores one peer address may make at once, and per second after that.
    pub store_burst: u32,
    pub store_per_second: f64,
}

impl Config {
    pub fn new(bind: SocketAddr) -> Config {
        Config {
            bind,
            state_path: None,
            rpc_timeout: RPC_TIMEOUT,
            lookup_timeout: Duration::from_secs(30),
            refresh_interval: CHECK_REFRESH_INTERVAL,
            store_burst: 64,
            store_per_second: 4.0,
        }
    }
}
