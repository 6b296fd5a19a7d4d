//! The topology file: YAML model, defaults, validation and the resolved plan
//! (docs/design.md "Topology file", "Contract details").
//!
//! [`Plan::load`] reads a file (or takes the built-in default), applies the site's and the
//! command line's overrides, validates everything, and resolves it into a [`Plan`]: absolute
//! paths, concrete numbers, durations. The supervisor consumes only the plan.
//!
//! Choices where the design is silent:
//! - relative paths in a file are relative to the file's directory; those on the command
//!   line and the default `./storeherd-data` are relative to the working directory;
//! - instance server and entangled port ranges may not overlap each other, nor contain the
//!   public or admin port, even though one is TCP and the other UDP (the original's default
//!   uses the same number for both, which is how the clash happens);
//! - `server.config: { knode: [a:1, b:2] }` writes one `knode` line per entry, since the
//!   original reads `knode` as a repeatable key; every other list is comma-joined;
//! - with `sites`, exactly two sites, each with a `host`, and `--site` must name one.

pub mod defaults;
mod error;
mod instance;
mod model;
mod report;
mod resolve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use crate::store::shards::ShardPlan;
pub use defaults::{DEFAULT_ADMIN, DEFAULT_LISTEN};
pub use error::TopologyError;
pub use instance::InstancePlan;
pub use model::{format_duration, parse_duration};
pub use report::{PlanReport, ShardLink};
use resolve::Disk;

/// The resolved topology: everything the supervisor needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The topology file, `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// The site this plan is for (`--site`), when the topology names sites.
    pub site: Option<String>,
    pub listen: SocketAddr,
    pub admin: AdminPlan,
    /// Instances to run (`auto` resolved to the logical core count); with `hosts`, this
    /// host's, whose ids follow the earlier hosts' ([`Plan::first_id`]).
    pub instances: u32,
    pub data: PathBuf,
    pub store: PathBuf,
    pub ports: Ports,
    pub server: ServerPlan,
    pub health: HealthPlan,
    pub restart: RestartPlan,
    pub proxy: ProxyPlan,
    pub shards: Vec<ShardPlan>,
    pub replication: Option<ReplicationPlan>,
    pub admin_key_file: PathBuf,
    /// This site's host (with `hosts`, this host's address): instances' `listen_address`,
    /// and the peer's `replpeer` host. Only with `sites`: otherwise instances stay on loopback.
    pub host: Option<String>,
    pub upkeep: UpkeepPlan,
    /// This host's name, when the site spans several hosts (`--host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Every host of the site in file order, ids running on across them; empty for a site
    /// on one machine.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostPlan>,
}

/// One host of a site over several (`hosts`), as every host of the site sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    pub name: String,
    /// How the other hosts and the peer site reach it.
    pub address: String,
    pub instances: u32,
    /// Its first instance id: one more than the instances of the hosts before it.
    pub first_id: u32,
    /// Its admin API, as the other hosts reach it: `<address>:<its admin port>`.
    pub admin: String,
}

impl HostPlan {
    /// Its last instance id.
    pub fn last_id(&self) -> u32 {
        self.first_id + self.instances - 1
    }

    pub fn holds(&self, id: u32) -> bool {
        (self.first_id..=self.last_id()).contains(&id)
    }
}

/// When the supervisor prunes the site's store (once per site, never per home). Neither
/// set: never on its own (run `storeherd prune` by hand or from cron).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpkeepPlan {
    /// A prune this long after the previous one ended (whoever ran it).
    #[serde(serialize_with = "ser_opt_duration")]
    pub prune_every: Option<Duration>,
    /// A prune when a file system holding the store is fuller than this percentage.
    pub prune_when_disk_above: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminPlan {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
}

/// First ports: instance k uses `server + k - 1` (TCP) and `entangled + k - 1` (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub server: u16,
    pub entangled: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerPlan {
    pub command: ServerCommand,
    /// The executable built-in instances run (`<program> store ...`): this storeherd binary.
    /// Not part of the file, so never a reload difference; a test that runs the supervisor
    /// in-process points it at the built `storeherd`.
    #[serde(skip)]
    pub program: PathBuf,
    /// Extra `config.txt` lines from `server.config`, in file order, lists already joined.
    pub config: Vec<(String, String)>,
    pub tls: TlsPlan,
    #[serde(serialize_with = "ser_duration")]
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerCommand {
    /// `storeherd store --homedir <home>`.
    Builtin,
    /// argv with `{home}`, `{id}`, `{port}`, `{eport}` placeholders (not yet substituted).
    Argv(Vec<String>),
}

/// Where the shared TLS identity comes from; all `None` = generated once into `<data>/ssl/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsPlan {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dhparams: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthPlan {
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub unhealthy_after: u32,
    #[serde(serialize_with = "ser_duration")]
    pub start_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RestartPlan {
    #[serde(serialize_with = "ser_duration")]
    pub backoff_min: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
    pub crash_loop_restarts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub crash_loop_within: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyPlan {
    pub max_connections: usize,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    pub balance: crate::proxy::Balance,
    /// `Some`: every client must start with a PROXY header from one of these networks.
    pub accept_proxy: Option<Vec<ipnet::IpNet>>,
}

/// Two-site replication, seen from this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationPlan {
    pub peer_site: String,
    pub peer_host: String,
    /// The peer site's first ports: our instance k pairs with the peer's `server + k - 1`.
    pub peer_ports: Ports,
    /// The shared replication key (one line, mode 600); `up` generates it when missing.
    pub authkey_file: PathBuf,
    /// Pin of the peer's certificate (`repl_cert`), upper-case hex pairs joined by `:`.
    pub peer_cert_sha1: Option<String>,
    /// The peer site's hosts, when it spans several: its instance k is on the one holding k.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_hosts: Vec<HostPlan>,
}

impl ReplicationPlan {
    /// `replpeer` of instance `id`: the peer's instance `id`, at the address of the peer
    /// host that holds it.
    pub fn peer_addr(&self, id: u32) -> String {
        let port = u32::from(self.peer_ports.server) + id - 1;
        let host = self
            .peer_hosts
            .iter()
            .find(|h| h.holds(id))
            .map_or(self.peer_host.as_str(), |h| h.address.as_str());
        format!("{host}:{port}")
    }
}

/// Command-line overrides of `up` (applied after the file and the site).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub instances: Option<String>,
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    /// `--host`: which host of a site over several this is.
    pub host: Option<String>,
}

/// Name used in errors for the built-in default topology.
pub const DEFAULT_NAME: &str = "<built-in default topology>";

impl Plan {
    /// Reads and resolves `file`, or the built-in default when `None`.
    pub fn load(
        file: Option<&Path>,
        site: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Plan, TopologyError> {
        Self::load_with(file, site, overrides, Disk::Check)
    }

    /// Like [`Plan::load`], without checking that data and store can be created: for
    /// control commands (`status`, `scale`, ...), which need only the admin address and
    /// may run as a user who cannot write the data directory.
    pub fn load_for_control(
        file: Option<&Path>,
        site: Option<&str>,
        host: Option<&str>,
    ) -> Result<Plan, TopologyError> {
        let overrides = Overrides {
            host: host.map(str::to_string),
            ..Overrides::default()
        };
        Self::load_with(file, site, &overrides, Disk::Skip)
    }

    fn load_with(
        file: Option<&Path>,
        site: Option<&str>,
        overrides: &Overrides,
        disk: Disk,
    ) -> Result<Plan, TopologyError> {
        let cwd = std::env::current_dir().map_err(|source| TopologyError::Read {
            file: ".".into(),
            source,
        })?;
        match file {
            None => resolve::resolve("", DEFAULT_NAME, None, &cwd, site, overrides, disk),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                    file: name.clone(),
                    source,
                })?;
                let abs = resolve::absolute(&cwd, path);
                resolve::resolve(&text, &name, Some(&abs), &cwd, site, overrides, disk)
            }
        }
    }

    /// Resolves topology text; relative paths are taken from the working directory.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(
        text: &str,
        file_name: &str,
        site: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Plan, TopologyError> {
        let cwd = std::env::current_dir().map_err(|source| TopologyError::Read {
            file: ".".into(),
            source,
        })?;
        resolve::resolve(text, file_name, None, &cwd, site, overrides, Disk::Check)
    }

    /// The home of instance `id`: `<data>/homes/<id>`.
    pub fn home(&self, id: u32) -> PathBuf {
        self.homes().join(id.to_string())
    }

    /// Where the homes are: `<data>/homes`.
    pub fn homes(&self) -> PathBuf {
        self.data.join(defaults::HOMES_DIR)
    }

    /// The accounts ledger, `<data>/accounts.txt`.
    pub fn ledger(&self) -> PathBuf {
        self.data.join(defaults::LEDGER_FILE)
    }

    /// TCP port of instance `id` (id >= 1).
    pub fn server_port(&self, id: u32) -> u16 {
        port_of(self.ports.server, id)
    }

    /// UDP (entangled) port of instance `id` (id >= 1).
    pub fn entangled_port(&self, id: u32) -> u16 {
        port_of(self.ports.entangled, id)
    }

    /// How many instances fit before their ports clash with each other, with the public or
    /// admin port, or run past 65535. Live scale-up may go up to this. With `hosts`, this
    /// host's count: the next ids belong to the next host.
    pub fn max_instances(&self) -> u32 {
        if self.hosts.is_empty() {
            resolve::max_instances(self.ports, self.listen.port(), self.admin.listen.port())
        } else {
            self.instances
        }
    }

    /// This host's entry in `hosts`, if the site spans several.
    pub fn this_host(&self) -> Option<&HostPlan> {
        let name = self.host_name.as_deref()?;
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The first instance id on this host: 1, or with `hosts` one more than the earlier
    /// hosts' instances.
    pub fn first_id(&self) -> u32 {
        self.this_host().map_or(1, |h| h.first_id)
    }

    /// The instance ids this host runs.
    pub fn ids(&self) -> std::ops::RangeInclusive<u32> {
        let first = self.first_id();
        first..=first + self.instances - 1
    }

    /// Refuses a reload from `self` to `new` that a running supervisor cannot apply: every
    /// changed field outside [`LIVE`], each with its old and new value.
    pub fn restart_needed(&self, new: &Plan) -> Result<(), RestartNeeded> {
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(new));
        let changes = match (a, b) {
            (Ok(a), Ok(b)) => fixed_changes(&a, &b),
            // Never expected (every field serializes); refusing is the safe side.
            _ => vec![Change {
                field: "(plan)".into(),
                old: "?".into(),
                new: "?".into(),
            }],
        };
        if changes.is_empty() {
            Ok(())
        } else {
            Err(RestartNeeded(changes))
        }
    }
}

/// The plan's fields (serialized paths) that a running supervisor applies on reload. Every
/// other field needs a restart, so a field added to [`Plan`] is fixed until it is listed
/// here — it cannot become live-reloadable by accident.
pub const LIVE: [&str; 8] = [
    "source",
    "instances",
    "server.config",
    "server.stop_grace",
    "health",
    "restart",
    "proxy",
    "upkeep",
];

/// A topology field as the file spells it, where the plan names it otherwise.
fn file_name_of(path: &str) -> &str {
    match path {
        "admin_key_file" => "accounts.admin_key_file",
        p => p,
    }
}

/// One setting a reload would change: its name and old and new values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub field: String,
    pub old: String,
    pub new: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.old, self.new)
    }
}

/// A reload refused: these changes need a restart of storeherd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("these changes need a restart of storeherd: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RestartNeeded(pub Vec<Change>);

/// The changed fields of two serialized plans outside [`LIVE`], in field order.
pub fn fixed_changes(a: &serde_json::Value, b: &serde_json::Value) -> Vec<Change> {
    fn text(v: Option<&serde_json::Value>) -> String {
        match v {
            None | Some(serde_json::Value::Null) => "(none)".into(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }
    fn walk(
        path: &str,
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        out: &mut Vec<Change>,
    ) {
        if LIVE.contains(&path) || a == b {
            return;
        }
        if let (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) = (a, b) {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(&p, x.get(k), y.get(k), out);
            }
            return;
        }
        out.push(Change {
            field: file_name_of(path).to_string(),
            old: text(a),
            new: text(b),
        });
    }
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

fn port_of(first: u16, id: u32) -> u16 {
    let p = u32::from(first) + id.max(1) - 1;
    u16::try_from(p).unwrap_or(u16::MAX)
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

#[cfg(test)]
mod tests;
