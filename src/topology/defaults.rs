//! The topology's defaults, one named constant each: what a key left out of the file means.
//! Every module that needs one of these values uses the constant, so a default is changed in
//! one place (docs/design.md "Topology file", deploy/storeherd.yaml).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::Ports;

/// Port of the public proxy listener (`listen`).
pub const DEFAULT_LISTEN_PORT: u16 = 8081;
/// Port of the admin API (`admin.listen`).
pub const DEFAULT_ADMIN_PORT: u16 = 8089;
/// `listen`: loopback, so nothing is exposed until the file says so.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_LISTEN_PORT);
/// `admin.listen`: loopback, where no token is needed.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_ADMIN_PORT);

/// `data`, relative to the working directory.
pub const DEFAULT_DATA: &str = "storeherd-data";
/// The store's folder inside the data directory, without `store:`.
pub const STORE_DIR: &str = "store";
/// The instances' homes inside the data directory: `<data>/homes/<id>`.
pub const HOMES_DIR: &str = "homes";
/// The accounts ledger inside the data directory.
pub const LEDGER_FILE: &str = "accounts.txt";
/// The administrator key inside the data directory, without `accounts.admin_key_file`.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// `ports.server`: the first instance's store server port (TCP).
pub const DEFAULT_SERVER_PORT: u16 = 18101;
/// `ports.entangled`: the first instance's DHT port (UDP).
pub const DEFAULT_ENTANGLED_PORT: u16 = 18201;
pub const DEFAULT_PORTS: Ports = Ports {
    server: DEFAULT_SERVER_PORT,
    entangled: DEFAULT_ENTANGLED_PORT,
};

/// `server.stop_grace`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// `health.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// `health.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `health.unhealthy_after`.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
/// `health.start_grace`.
pub const DEFAULT_START_GRACE: Duration = Duration::from_secs(60);

/// `restart.backoff_min`.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// `restart.backoff_max`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `restart.crash_loop.restarts`.
pub const DEFAULT_CRASH_LOOP_RESTARTS: u32 = 5;
/// `restart.crash_loop.within`.
pub const DEFAULT_CRASH_LOOP_WITHIN: Duration = Duration::from_secs(60);

// The proxy's live limits default in the proxy itself (below the topology, which uses them).
pub use crate::proxy::{
    DEFAULT_BALANCE, DEFAULT_CONNECT_TIMEOUT as DEFAULT_PROXY_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT as DEFAULT_PROXY_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS as DEFAULT_PROXY_MAX_CONNECTIONS,
};
/// `proxy.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
