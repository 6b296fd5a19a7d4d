//! The topology file as written: a serde model of the YAML, every key optional, unknown keys
//! refused. Values keep the file's spelling here; `resolve` turns them into a [`super::Plan`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of topology keys (listen, admin, instances, data, store, ports, server, health, restart, proxy, shards, sites, replication, accounts, upkeep, hosts)"
)]
pub struct FileModel {
    pub listen: Option<Addr>,
    pub admin: Option<AdminModel>,
    pub instances: Option<Instances>,
    pub data: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub ports: Option<PortsModel>,
    pub server: Option<ServerModel>,
    pub health: Option<HealthModel>,
    pub restart: Option<RestartModel>,
    pub proxy: Option<ProxyModel>,
    pub shards: Option<Vec<ShardModel>>,
    pub sites: Option<BTreeMap<String, SiteModel>>,
    pub replication: Option<ReplicationModel>,
    pub accounts: Option<AccountsModel>,
    pub upkeep: Option<UpkeepModel>,
    /// One site over several hosts sharing one store (last, so the keys above keep their
    /// order in serde's "expected one of" lists).
    pub hosts: Option<Vec<HostModel>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with listen and token_file"
)]
pub struct AdminModel {
    pub listen: Option<Addr>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with server and entangled (first port numbers)"
)]
pub struct PortsModel {
    pub server: Option<u16>,
    pub entangled: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with command, config, tls and stop_grace"
)]
pub struct ServerModel {
    pub command: Option<CommandModel>,
    pub config: Option<serde_yaml::Mapping>,
    pub tls: Option<TlsModel>,
    pub stop_grace: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with cert, key and dhparams (file paths)"
)]
pub struct TlsModel {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dhparams: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with interval, timeout, unhealthy_after and start_grace"
)]
pub struct HealthModel {
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub unhealthy_after: Option<u32>,
    pub start_grace: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with backoff_min, backoff_max and crash_loop"
)]
pub struct RestartModel {
    pub backoff_min: Option<Dur>,
    pub backoff_max: Option<Dur>,
    pub crash_loop: Option<CrashLoopModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with restarts and within")]
pub struct CrashLoopModel {
    pub restarts: Option<u32>,
    pub within: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with max_connections, connect_timeout, idle_timeout, drain_timeout, balance and accept_proxy"
)]
pub struct ProxyModel {
    pub max_connections: Option<usize>,
    pub connect_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub drain_timeout: Option<Dur>,
    /// `roundrobin` or `leastconn`.
    pub balance: Option<String>,
    /// Trusted source networks of PROXY protocol headers (`10.0.0.0/8`, `192.0.2.7`).
    pub accept_proxy: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with range (such as 00-3F) and path"
)]
pub struct ShardModel {
    pub range: String,
    pub path: PathBuf,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with host, hosts, listen, admin, data, store, ports and cert_sha1"
)]
pub struct SiteModel {
    pub host: Option<String>,
    /// The site's hosts, when it spans several (instead of `host`).
    pub hosts: Option<Vec<HostModel>>,
    pub listen: Option<Addr>,
    pub admin: Option<AdminModel>,
    pub data: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub ports: Option<PortsModel>,
    /// SHA-1 pin of this site's certificate; the other site writes it as `repl_cert`.
    pub cert_sha1: Option<String>,
}

/// One host of a site that spans several: instance ids run on across the list in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with name, address and instances (required), and listen, admin, data and store"
)]
pub struct HostModel {
    /// Unique in the site: `up --host NAME` picks it.
    pub name: String,
    /// A host name or IP by which the other hosts and the peer site reach this one.
    pub address: String,
    pub instances: HostCount,
    pub listen: Option<Addr>,
    pub admin: Option<AdminModel>,
    /// This host's own data directory (homes, ledger, keys stay local).
    pub data: Option<PathBuf>,
    /// The shared store's mount point on this host, if it differs.
    pub store: Option<PathBuf>,
}

/// A host's instance count: a number, never `auto`, since every host must compute every
/// host's ids from the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCount(pub u32);

pub const HOST_COUNT_EXPECTED: &str =
    "a number of instances from 1 to 1000 (not auto: every host computes every host's ids from the file)";

impl<'de> Deserialize<'de> for HostCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HostCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(HOST_COUNT_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HostCount, E> {
                match Instances::parse(v) {
                    Some(Instances::Count(n)) => Ok(HostCount(n)),
                    _ => Err(E::custom(format_args!(
                        "bad instance count `{v}` for a host: expected {HOST_COUNT_EXPECTED}"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HostCount, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HostCount, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with authkey_file and peer_cert_sha1"
)]
pub struct ReplicationModel {
    pub authkey_file: Option<PathBuf>,
    pub peer_cert_sha1: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with admin_key_file")]
pub struct AccountsModel {
    pub admin_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with prune_every and prune_when_disk_above"
)]
pub struct UpkeepModel {
    pub prune_every: Option<Dur>,
    pub prune_when_disk_above: Option<Percent>,
}

/// A disk usage threshold: `85%` (or `85`), from 1 to 99.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u8);

pub const PERCENT_EXPECTED: &str = "a percentage of the disk from 1% to 99%, such as 85%";

impl Percent {
    pub fn parse(text: &str) -> Option<Percent> {
        let n: u8 = text.trim().trim_end_matches('%').trim_end().parse().ok()?;
        (1..=99).contains(&n).then_some(Percent(n))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PERCENT_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).ok_or_else(|| {
                    E::custom(format_args!(
                        "bad percentage `{v}`: expected {PERCENT_EXPECTED}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Err(E::custom(format_args!(
                    "bad percentage `{v}`: expected {PERCENT_EXPECTED} (a whole number)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written with a unit: `500ms`, `2s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

pub const DURATION_EXPECTED: &str = "a duration with a unit, such as 500ms, 2s, 5m or 1h";

/// Parses `500ms`, `2s`, `5m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// The inverse of [`parse_duration`], in the largest unit that is exact.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    E::custom(format_args!(
                        "bad duration `{v}`: expected {DURATION_EXPECTED}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format_args!(
                    "bad duration `{v}` (no unit): expected {DURATION_EXPECTED}"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format_args!(
                    "bad duration `{v}`: expected {DURATION_EXPECTED}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format_args!(
                    "bad duration `{v}`: expected {DURATION_EXPECTED}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A socket address written `host:port` with an IP literal (`[::1]:8081` for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

pub const ADDR_EXPECTED: &str = "an address such as 127.0.0.1:8081 or [::1]:8081";

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(ADDR_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                v.trim().parse().map(Addr).map_err(|_| {
                    E::custom(format_args!("bad address `{v}`: expected {ADDR_EXPECTED}"))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Addr, E> {
                Err(E::custom(format_args!(
                    "bad address `{v}`: expected {ADDR_EXPECTED} (a port alone is not enough)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// `instances: auto` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Auto,
    Count(u32),
}

pub const INSTANCES_EXPECTED: &str = "`auto` or a number of instances from 1 to 1000";

/// The most instances a topology may ask for: far above any core count, low enough that a
/// typo (`instances: 80000`) is caught before it exhausts ports and processes.
pub const MAX_INSTANCES: u32 = 1000;

impl Instances {
    pub fn parse(text: &str) -> Option<Instances> {
        let text = text.trim();
        if text == "auto" {
            return Some(Instances::Auto);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=MAX_INSTANCES).contains(&n) => Some(Instances::Count(n)),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Instances;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(INSTANCES_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Instances, E> {
                Instances::parse(v).ok_or_else(|| {
                    E::custom(format_args!(
                        "bad instance count `{v}`: expected {INSTANCES_EXPECTED}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Instances, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Instances, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// `server.command`: `builtin` or an argv list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandModel {
    Builtin,
    Argv(Vec<String>),
}

pub const COMMAND_EXPECTED: &str =
    "`builtin` or a list of arguments such as [python2, /opt/confmail/server.py, -homedir, \"{home}\"]";

impl<'de> Deserialize<'de> for CommandModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandModel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(COMMAND_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandModel, E> {
                if v == "builtin" {
                    Ok(CommandModel::Builtin)
                } else {
                    Err(E::custom(format_args!(
                        "bad command `{v}`: expected {COMMAND_EXPECTED}"
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandModel, A::Error> {
                let mut argv = Vec::new();
                while let Some(v) = seq.next_element::<serde_yaml::Value>()? {
                    match scalar_text(&v) {
                        Some(s) => argv.push(s),
                        None => {
                            return Err(de::Error::custom(format_args!(
                                "argument {} of the command is not a plain value: expected {COMMAND_EXPECTED}",
                                argv.len() + 1
                            )))
                        }
                    }
                }
                if argv.is_empty() {
                    return Err(de::Error::custom(format_args!(
                        "empty command: expected {COMMAND_EXPECTED}"
                    )));
                }
                Ok(CommandModel::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// The text of a YAML scalar as it would be written into a config file or argv.
pub fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("2s", 2000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_millis(ms));
            assert_eq!(format_duration(d), text);
        }
        for bad in ["", "5", "ms", "2 s", "1.5s", "-2s", "3d", "s5"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn instances_parse() {
        assert_eq!(Instances::parse("auto"), Some(Instances::Auto));
        assert_eq!(Instances::parse("7"), Some(Instances::Count(7)));
        assert_eq!(Instances::parse("0"), None);
        assert_eq!(Instances::parse("1001"), None);
        assert_eq!(Instances::parse("many"), None);
    }
}
