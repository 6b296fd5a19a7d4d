//! `config.txt` of a home (docs/protocol.md §9.5), plus storeherd's own keys (the original warns
//! about them and goes on): `listen_address`, `dns_resolver`, `dns_timeout`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::server::validate::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: bad value for `{key}`: {msg}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        msg: String,
    },
}

/// A `host:port` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sport: u16,
    pub eport: u16,
    pub listen_address: IpAddr,
    pub replpeer: Option<HostPort>,
    pub repl_authkey: Option<String>,
    pub repl_cert: Option<String>,
    pub knode: Vec<HostPort>,
    pub timeout: u64,
    pub max_connections: usize,
    pub retry_schedule: Vec<u64>,
    pub expire_days: u64,
    pub run_queue_interval: u64,
    pub tor_proxy: Option<HostPort>,
    pub i2p_proxy: Option<HostPort>,
    pub socks_proxy: Option<HostPort>,
    pub use_exit_node: bool,
    pub preferred_connection: String,
    pub alt_localstore: Option<PathBuf>,
    pub slowest_connection: u64,
    pub limits: Limits,
    pub proxy_requires_login: bool,
    pub enable_ipv6: bool,
    pub permit_dns_txt: bool,
    /// storeherd only: the DNS server for `DNS TXT` (`ip:port`); none = `/etc/resolv.conf`.
    pub dns_resolver: Option<SocketAddr>,
    /// storeherd only: seconds a `DNS TXT` lookup may take in all.
    pub dns_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sport: 8081,
            eport: 8081,
            listen_address: IpAddr::from([127, 0, 0, 1]),
            replpeer: None,
            repl_authkey: None,
            repl_cert: None,
            knode: Vec::new(),
            timeout: 60,
            max_connections: 20,
            retry_schedule: vec![0, 120, 300, 1800, 3600],
            expire_days: 7,
            run_queue_interval: 120,
            tor_proxy: None,
            i2p_proxy: None,
            socks_proxy: None,
            use_exit_node: false,
            preferred_connection: "Direct".into(),
            alt_localstore: None,
            slowest_connection: 768,
            limits: Limits::default(),
            proxy_requires_login: false,
            enable_ipv6: false,
            permit_dns_txt: true,
            dns_resolver: None,
            dns_timeout: 10,
        }
    }
}

/// The parsed file and the warnings to log (unknown keys, lines without a colon).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &String::from_utf8_lossy(&text))
    }

    /// Parses the text of `config.txt`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
        let mut c = Config::default();
        let mut warnings = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let lineno = i + 1;
            let line = raw.trim_end_matches(['\r', '\n']);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                // The original aborts here (docs/protocol.md §14 #16); be lenient.
                warnings.push(format!(
                    "{}:{lineno}: line without `:` ignored",
                    path.display()
                ));
                continue;
            };
            let value = value.trim_start_matches([' ', '\t']);
            let bad = |msg: &str| ConfigError::BadValue {
                path: path.to_path_buf(),
                line: lineno,
                key: name.to_string(),
                msg: msg.to_string(),
            };
            let int = || {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad("not a whole number"))
            };
            let port = || {
                value
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| bad("not a port number (0-65535)"))
            };
            let boolean = || match value.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad("expected `true` or `false`")),
            };
            let hostport = |last: bool| -> Result<HostPort, ConfigError> {
                let v = value.trim();
                let split = if last {
                    v.rsplit_once(':')
                } else {
                    v.split_once(':')
                };
                let (host, p) = split.ok_or_else(|| bad("expected host:port"))?;
                let port = p.parse::<u16>().map_err(|_| bad("expected host:port"))?;
                if host.is_empty() {
                    return Err(bad("expected host:port"));
                }
                Ok(HostPort {
                    host: host.to_string(),
                    port,
                })
            };
            let text_opt = || (!value.is_empty()).then(|| value.to_string());
            let age = || -> Result<i64, ConfigError> {
                i64::try_from(int()?).map_err(|_| bad("number too large"))
            };
            match name {
                "sport" => c.sport = port()?,
                "eport" => c.eport = port()?,
                "listen_address" => {
                    c.listen_address = value.trim().parse().map_err(|_| bad("not an IP address"))?
                }
                "replpeer" => {
                    let v = value.trim();
                    if v.matches(':').count() != 1 {
                        return Err(bad("expected host:port with a single colon"));
                    }
                    c.replpeer = Some(hostport(false)?)
                }
                "repl_authkey" => c.repl_authkey = text_opt(),
                "repl_cert" => c.repl_cert = text_opt(),
                "knode" => c.knode.push(hostport(true)?),
                "timeout" => c.timeout = int()?.max(1),
                "max_connections" => {
                    c.max_connections =
                        usize::try_from(int()?).map_err(|_| bad("number too large"))?
                }
                "retry_schedule" => {
                    c.retry_schedule = value
                        .split(',')
                        .map(|s| s.trim().parse::<u64>())
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("expected comma-separated whole numbers"))?;
                    if c.retry_schedule.is_empty() {
                        return Err(bad("empty list"));
                    }
                }
                "expire_days" => c.expire_days = int()?,
                "run_queue_interval" => c.run_queue_interval = int()?,
                "tor_proxy" => c.tor_proxy = Some(hostport(true)?),
                "i2p_proxy" => c.i2p_proxy = Some(hostport(true)?),
                "socks_proxy" => c.socks_proxy = Some(hostport(true)?),
                "use_exit_node" => c.use_exit_node = boolean()?,
                "preferred_connection" => {
                    let up = value.to_ascii_uppercase();
                    c.preferred_connection = if up == "DIRECT" { "Direct".into() } else { up };
                }
                "alt_localstore" => {
                    if value.is_empty() {
                        return Err(bad("empty path"));
                    }
                    c.alt_localstore = Some(PathBuf::from(value))
                }
                "slowest_connection" => c.slowest_connection = int()?.max(1),
                "max_age_key" => c.limits.max_age_key = age()?,
                "max_age_data" => c.limits.max_age_data = age()?,
                "max_age_message" => c.limits.max_age_message = age()?,
                "max_age_ack" => c.limits.max_age_ack = age()?,
                "max_age_claim" => c.limits.max_age_claim = age()?,
                "proxy_requires_login" => c.proxy_requires_login = boolean()?,
                "enable_ipv6" => c.enable_ipv6 = boolean()?,
                "permit_dns_txt" => c.permit_dns_txt = boolean()?,
                "dns_resolver" => {
                    c.dns_resolver = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| bad("expected ip:port, e.g. 127.0.0.1:53"))?,
                    )
                }
                "dns_timeout" => c.dns_timeout = int()?.max(1),
                _ => warnings.push(format!(
                    "{}:{lineno}: unknown key `{name}` ignored",
                    path.display()
                )),
            }
        }
        Ok(Loaded {
            config: c,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Config::parse(Path::new("config.txt"), text)
    }

    #[test]
    fn every_key() {
        let l = parse(
            "# comment\n; other\n\nsport: 9000\r\neport:\t9001\nlisten_address: ::1\n\
             replpeer: peer.example:8081\nrepl_authkey: KEY\nrepl_cert: AB:CD\n\
             knode: a:1\nknode: b:2\ntimeout: 5\nmax_connections: 3\nretry_schedule: 0, 5,30\n\
             expire_days: 2\nrun_queue_interval: 7\ntor_proxy: t:9050\ni2p_proxy: i:1\n\
             socks_proxy: s:2\nuse_exit_node: true\npreferred_connection: direct\n\
             alt_localstore: /srv/store \nslowest_connection: 100\nmax_age_key: 1\n\
             max_age_data: 2\nmax_age_message: 3\nmax_age_ack: 4\nmax_age_claim: 5\n\
             proxy_requires_login: TRUE\nenable_ipv6: false\npermit_dns_txt: false\n\
             dns_resolver: 127.0.0.1:5353\ndns_timeout: 3\n",
        )
        .unwrap();
        let c = l.config;
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!((c.sport, c.eport), (9000, 9001));
        assert_eq!(c.listen_address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.replpeer.unwrap().port, 8081);
        assert_eq!(c.knode.len(), 2);
        assert_eq!(c.retry_schedule, vec![0, 5, 30]);
        assert_eq!(c.preferred_connection, "Direct");
        assert_eq!(c.alt_localstore, Some(PathBuf::from("/srv/store ")));
        assert_eq!(c.limits.max_age_claim, 5);
        assert!(c.proxy_requires_login && c.use_exit_node);
        assert!(!c.permit_dns_txt && !c.enable_ipv6);
        assert_eq!(c.dns_resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.dns_timeout, 3);
    }

    #[test]
    fn unknown_keys_and_colonless_lines_warn() {
        let l = parse("sport : 1\nnonsense\nfoo: bar\n").unwrap();
        assert_eq!(l.warnings.len(), 3);
        assert_eq!(l.config.sport, 8081);
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let e = parse("# x\nsport: 80a\n").unwrap_err().to_string();
        assert!(e.contains("config.txt:2") && e.contains("`sport`"), "{e}");
        assert!(parse("replpeer: [::1]:80\n").is_err());
        assert!(parse("proxy_requires_login: yes\n").is_err());
        assert!(parse("dns_resolver: localhost\n").is_err());
    }
}
