//! From the file model to the [`Plan`]: merge site and command-line overrides, fill in the
//! defaults, validate, and point every error at the key that causes it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::error::{self, locate, path, Seg, TopologyError};
use super::model::{
    self, scalar_text, CommandModel, FileModel, Instances, SiteModel, INSTANCES_EXPECTED,
};
use super::{
    AdminPlan, HealthPlan, Plan, Ports, ProxyPlan, ReplicationPlan, RestartPlan, ServerCommand,
    ServerPlan, ShardPlan, TlsPlan, UpkeepPlan,
};

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8089);
pub const DEFAULT_DATA: &str = "storeherd-data";
pub const DEFAULT_PORTS: Ports = Ports {
    server: 18101,
    entangled: 18201,
};

/// `config.txt` keys that storeherd writes itself from the topology.
pub const RESERVED_CONFIG_KEYS: [&str; 7] = [
    "sport",
    "eport",
    "alt_localstore",
    "listen_address",
    "replpeer",
    "repl_authkey",
    "repl_cert",
];

pub const PLACEHOLDERS: [&str; 4] = ["home", "id", "port", "eport"];

// Defaults of the topology file's keys (the proxy's limits default in `crate::proxy`).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEALTH_UNHEALTHY_AFTER: u32 = 3;
pub const HEALTH_START_GRACE: Duration = Duration::from_secs(60);
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const CRASH_LOOP_RESTARTS: u32 = 5;
pub const CRASH_LOOP_WITHIN: Duration = Duration::from_secs(60);
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether resolving looks at the disk (can data and store be created?).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    Check,
    Skip,
}

/// Where a setting came from, to point an error at it.
#[derive(Debug, Clone)]
enum Origin {
    Default,
    File(Vec<Seg>),
    Flag(&'static str),
}

struct Ctx<'a> {
    text: &'a str,
    name: &'a str,
}

impl Ctx<'_> {
    fn at(&self, p: &[Seg], message: impl Into<String>) -> TopologyError {
        let message = message.into();
        match locate(self.text, p) {
            Some((line, column)) => TopologyError::At {
                file: self.name.to_string(),
                line,
                column,
                message,
            },
            None => TopologyError::File {
                file: self.name.to_string(),
                message,
            },
        }
    }

    fn at_key(&self, dotted: &str, message: impl Into<String>) -> TopologyError {
        self.at(&path(dotted), message)
    }

    /// Blames the first origin that can be shown: a key of the file, else a flag.
    fn blame(&self, origins: &[&Origin], message: impl Into<String>) -> TopologyError {
        let message = message.into();
        for o in origins {
            if let Origin::File(p) = o {
                if let Some((line, column)) = locate(self.text, p) {
                    return TopologyError::At {
                        file: self.name.to_string(),
                        line,
                        column,
                        message,
                    };
                }
            }
        }
        for o in origins {
            if let Origin::Flag(flag) = o {
                return TopologyError::CommandLine {
                    flag: flag.to_string(),
                    message,
                };
            }
        }
        TopologyError::File {
            file: self.name.to_string(),
            message,
        }
    }
}

/// Picks the first value present, with its origin: site override, then top level.
fn pick<T: Clone>(site: Option<(T, Vec<Seg>)>, top: Option<(T, Vec<Seg>)>) -> Option<(T, Origin)> {
    site.or(top).map(|(v, p)| (v, Origin::File(p)))
}

fn segs(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|s| Seg::Key(s.to_string())).collect()
}

pub fn resolve(
    text: &str,
    name: &str,
    file: Option<&Path>,
    cwd: &Path,
    site: Option<&str>,
    overrides: &super::Overrides,
    disk: Disk,
) -> Result<Plan, TopologyError> {
    let ctx = Ctx { text, name };
    let model = parse(text, name)?;
    let base = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.to_path_buf());
    let rel = |p: &Path| absolute(&base, p);

    // --- sites
    let sites = model.sites.clone().unwrap_or_default();
    let (site_name, site_model, peer) = select_site(&ctx, &model, &sites, site)?;
    let sp = |k: &str| -> Vec<Seg> {
        match &site_name {
            Some(s) => segs(&["sites", s, k]),
            None => Vec::new(),
        }
    };

    // --- listen
    let (listen, listen_o) = match overrides.listen {
        Some(a) => (a, Origin::Flag("--listen")),
        None => pick(
            site_model.listen.map(|a| (a.0, sp("listen"))),
            model.listen.map(|a| (a.0, path("listen"))),
        )
        .unwrap_or((DEFAULT_LISTEN, Origin::Default)),
    };

    // --- admin
    let site_admin = site_model.admin.clone().unwrap_or_default();
    let top_admin = model.admin.clone().unwrap_or_default();
    let (admin_listen, admin_o) = match overrides.admin {
        Some(a) => (a, Origin::Flag("--admin")),
        None => pick(
            site_admin.listen.map(|a| {
                let mut p = sp("admin");
                p.push(Seg::Key("listen".into()));
                (a.0, p)
            }),
            top_admin.listen.map(|a| (a.0, path("admin.listen"))),
        )
        .unwrap_or((DEFAULT_ADMIN, Origin::Default)),
    };
    let token_file = site_admin
        .token_file
        .or(top_admin.token_file)
        .map(|p| rel(&p));
    if !admin_listen.ip().is_loopback() && token_file.is_none() {
        return Err(ctx.blame(
            &[&admin_o],
            format!(
                "admin listener {admin_listen} is not on loopback: expected admin.token_file \
                 (the bearer token required off loopback), or a loopback address such as 127.0.0.1:8089"
            ),
        ));
    }
    check_addr_clash(&ctx, listen, &listen_o, admin_listen, &admin_o)?;

    // --- instances
    let (instances_spec, inst_o) = match &overrides.instances {
        Some(s) => (
            Instances::parse(s).ok_or_else(|| TopologyError::CommandLine {
                flag: "--instances".into(),
                message: format!("bad instance count `{s}`: expected {INSTANCES_EXPECTED}"),
            })?,
            Origin::Flag("--instances"),
        ),
        None => match model.instances {
            Some(i) => (i, Origin::File(path("instances"))),
            None => (Instances::Auto, Origin::Default),
        },
    };
    if site_name.is_some() && instances_spec == Instances::Auto {
        return Err(ctx.blame(
            &[&inst_o, &Origin::File(path("sites"))],
            "with `sites`, instances must be a number, not auto: instance k of one site pairs \
             with instance k of the other, so both sites need the same count",
        ));
    }
    let instances = match instances_spec {
        Instances::Count(n) => n,
        Instances::Auto => logical_cores(),
    };

    // --- data, store
    let data = match &overrides.data {
        Some(d) => absolute(cwd, d),
        None => site_model
            .data
            .as_ref()
            .or(model.data.as_ref())
            .map(|d| rel(d))
            .unwrap_or_else(|| cwd.join(DEFAULT_DATA)),
    };
    let data_o = match (&overrides.data, &site_model.data, &model.data) {
        (Some(_), _, _) => Origin::Flag("--data"),
        (None, Some(_), _) => Origin::File(sp("data")),
        (None, None, Some(_)) => Origin::File(path("data")),
        _ => Origin::Default,
    };
    let (store, store_o) = match pick(
        site_model.store.as_ref().map(|s| (rel(s), sp("store"))),
        model.store.as_ref().map(|s| (rel(s), path("store"))),
    ) {
        Some(v) => v,
        None => (data.join("store"), data_o.clone()),
    };
    // Control commands (Disk::Skip) only need addresses; they may run as another user.
    let creatable = |p: &Path| match disk {
        Disk::Check => creatable(p),
        Disk::Skip => Ok(()),
    };
    if let Err(why) = creatable(&data) {
        return Err(ctx.blame(
            &[&data_o],
            format!(
                "data directory {} cannot be created: {why}: expected a directory that this user can create or write",
                data.display()
            ),
        ));
    }
    if let Err(why) = creatable(&store) {
        return Err(ctx.blame(
            &[&store_o],
            format!(
                "store path {} cannot be created: {why}: expected a directory that this user can create or write",
                store.display()
            ),
        ));
    }

    // --- ports
    let top_ports = model.ports.unwrap_or_default();
    let site_ports = site_model.ports.unwrap_or_default();
    let port_field = |name: &str,
                      s: Option<u16>,
                      t: Option<u16>,
                      d: u16|
     -> Result<(u16, Origin), TopologyError> {
        let (v, o) = match (s, t) {
            (Some(v), _) => {
                let mut p = sp("ports");
                p.push(Seg::Key(name.into()));
                (v, Origin::File(p))
            }
            (None, Some(v)) => (v, Origin::File(segs(&["ports", name]))),
            _ => (d, Origin::Default),
        };
        if v == 0 {
            return Err(ctx.blame(
                &[&o],
                format!("ports.{name} is 0: expected the first port number, 1 to 65535"),
            ));
        }
        Ok((v, o))
    };
    let (server_port, server_o) = port_field(
        "server",
        site_ports.server,
        top_ports.server,
        DEFAULT_PORTS.server,
    )?;
    let (eport, eport_o) = port_field(
        "entangled",
        site_ports.entangled,
        top_ports.entangled,
        DEFAULT_PORTS.entangled,
    )?;
    let ports = Ports {
        server: server_port,
        entangled: eport,
    };
    if let Some(why) = port_conflict(ports, instances, listen.port(), admin_listen.port()) {
        let max = max_instances(ports, listen.port(), admin_listen.port());
        let blame: Vec<&Origin> = match why.kind {
            Conflict::Overlap => vec![&eport_o, &server_o, &inst_o],
            Conflict::Listen => vec![&server_o, &eport_o, &listen_o, &inst_o],
            Conflict::Admin => vec![&server_o, &eport_o, &admin_o, &inst_o],
            Conflict::TooHigh => vec![&inst_o, &server_o, &eport_o],
        };
        return Err(ctx.blame(
            &blame,
            format!(
                "port clash: {instances} instances need server ports {} and entangled ports {}, \
                 but {}; at most {max} instances fit: expected instance port ranges that overlap \
                 neither each other nor the public and admin ports",
                range_text(ports.server, instances),
                range_text(ports.entangled, instances),
                why.text
            ),
        ));
    }

    // --- server
    let server = server_plan(&ctx, model.server.unwrap_or_default(), &rel)?;

    // --- health, restart, proxy
    let health = health_plan(&ctx, model.health.unwrap_or_default())?;
    let restart = restart_plan(&ctx, model.restart.unwrap_or_default())?;
    let proxy = proxy_plan(&ctx, model.proxy.unwrap_or_default())?;

    // --- shards
    let shards = shards(&ctx, model.shards.as_deref().unwrap_or(&[]), &store, &rel)?;

    // --- replication
    let replication = match (&site_name, peer) {
        (Some(_), Some((peer_name, peer_model))) => {
            let rm = model.replication.as_ref();
            let authkey_file = rm
                .and_then(|r| r.authkey_file.as_ref())
                .map(|p| rel(p))
                .ok_or_else(|| {
                    ctx.blame(
                        &[
                            &Origin::File(path("replication")),
                            &Origin::File(path("sites")),
                        ],
                        "with `sites`, replication.authkey_file is required: expected the path of \
                         the key both sites share (generated by `up` when missing)",
                    )
                })?;
            let (pin, pin_path) = match (
                &peer_model.cert_sha1,
                rm.and_then(|r| r.peer_cert_sha1.as_ref()),
            ) {
                (Some(p), _) => (Some(p.clone()), segs(&["sites", &peer_name, "cert_sha1"])),
                (None, Some(p)) => (Some(p.clone()), path("replication.peer_cert_sha1")),
                _ => (None, Vec::new()),
            };
            let peer_cert_sha1 = match pin {
                Some(p) => Some(normalize_sha1(&p).ok_or_else(|| {
                    ctx.at(
                        &pin_path,
                        format!("bad certificate pin `{p}`: expected a SHA-1 of 20 hex pairs joined by `:` (AB:CD:...)"),
                    )
                })?),
                None => None,
            };
            let pp = peer_model.ports.unwrap_or_default();
            let peer_ports = Ports {
                server: pp
                    .server
                    .or(top_ports.server)
                    .unwrap_or(DEFAULT_PORTS.server),
                entangled: pp
                    .entangled
                    .or(top_ports.entangled)
                    .unwrap_or(DEFAULT_PORTS.entangled),
            };
            if u32::from(peer_ports.server) + instances - 1 > 65535 {
                return Err(ctx.at(
                    &segs(&["sites", &peer_name]),
                    format!(
                        "site {peer_name}: {instances} instances need server ports {}: expected them to end at 65535 or below",
                        range_text(peer_ports.server, instances)
                    ),
                ));
            }
            if peer_model.host == site_model.host {
                let peer_listen = peer_model
                    .listen
                    .or(model.listen)
                    .map_or(DEFAULT_LISTEN, |a| a.0);
                let peer_admin = peer_model
                    .admin
                    .as_ref()
                    .and_then(|a| a.listen)
                    .or(top_admin.listen)
                    .map_or(DEFAULT_ADMIN, |a| a.0);
                let peer_data = peer_model
                    .data
                    .as_ref()
                    .or(model.data.as_ref())
                    .map(|d| rel(d))
                    .unwrap_or_else(|| cwd.join(DEFAULT_DATA));
                same_host_clash(
                    &ctx,
                    &peer_name,
                    [
                        (ports, listen.port(), admin_listen.port()),
                        (peer_ports, peer_listen.port(), peer_admin.port()),
                    ],
                    instances,
                    data == peer_data,
                )?;
            }
            Some(ReplicationPlan {
                peer_site: peer_name.clone(),
                peer_host: peer_model.host.clone().unwrap_or_default(),
                peer_ports,
                authkey_file,
                peer_cert_sha1,
            })
        }
        _ => None,
    };

    // --- upkeep
    let upkeep = upkeep_plan(&ctx, model.upkeep.as_ref())?;

    let admin_key_file = model
        .accounts
        .as_ref()
        .and_then(|a| a.admin_key_file.as_ref())
        .map(|p| rel(p))
        .unwrap_or_else(|| data.join("admin.key"));

    Ok(Plan {
        source: file.map(Path::to_path_buf),
        site: site_name,
        listen,
        admin: AdminPlan {
            listen: admin_listen,
            token_file,
        },
        instances,
        data,
        store,
        ports,
        server,
        health,
        restart,
        proxy,
        shards,
        replication,
        admin_key_file,
        host: site_model.host.clone(),
        upkeep,
    })
}

/// `server:`: the instance command, `config.txt` lines, TLS files and stop grace.
fn server_plan(
    ctx: &Ctx,
    server_model: model::ServerModel,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<ServerPlan, TopologyError> {
    let command = match server_model.command {
        None | Some(CommandModel::Builtin) => ServerCommand::Builtin,
        Some(CommandModel::Argv(argv)) => {
            check_placeholders(ctx, &argv)?;
            ServerCommand::Argv(argv)
        }
    };
    let config = server_config(ctx, server_model.config.as_ref())?;
    let tls_model = server_model.tls.unwrap_or_default();
    if tls_model.cert.is_some() != tls_model.key.is_some() {
        return Err(ctx.at_key(
            "server.tls",
            "server.tls needs both cert and key (or neither, to generate the identity into <data>/ssl/)",
        ));
    }
    let tls = TlsPlan {
        cert: tls_model.cert.map(|p| rel(&p)),
        key: tls_model.key.map(|p| rel(&p)),
        dhparams: tls_model.dhparams.map(|p| rel(&p)),
    };
    let stop_grace = dur(&server_model.stop_grace, STOP_GRACE);
    positive(ctx, "server.stop_grace", stop_grace)?;
    let server = ServerPlan {
        command,
        program: builtin_program(),
        config,
        tls,
        stop_grace,
    };
    Ok(server)
}

/// The running storeherd binary, which built-in instances run as `storeherd store`.
fn builtin_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("storeherd"))
}

/// `upkeep:`: when the supervisor prunes the site's store.
fn upkeep_plan(ctx: &Ctx, u: Option<&model::UpkeepModel>) -> Result<UpkeepPlan, TopologyError> {
    let upkeep = UpkeepPlan {
        prune_every: u.and_then(|u| u.prune_every).map(|d| d.0),
        prune_when_disk_above: u.and_then(|u| u.prune_when_disk_above).map(|p| p.0),
    };
    if let Some(every) = upkeep.prune_every {
        positive(ctx, "upkeep.prune_every", every)?;
    }
    Ok(upkeep)
}

/// `health:`, its defaults filled in and checked.
fn health_plan(ctx: &Ctx, h: model::HealthModel) -> Result<HealthPlan, TopologyError> {
    let health = HealthPlan {
        interval: dur(&h.interval, HEALTH_INTERVAL),
        timeout: dur(&h.timeout, HEALTH_TIMEOUT),
        unhealthy_after: h.unhealthy_after.unwrap_or(HEALTH_UNHEALTHY_AFTER),
        start_grace: dur(&h.start_grace, HEALTH_START_GRACE),
    };
    positive(ctx, "health.interval", health.interval)?;
    positive(ctx, "health.timeout", health.timeout)?;
    at_least_one(
        ctx,
        "health.unhealthy_after",
        u64::from(health.unhealthy_after),
        "a number of failed checks",
    )?;
    Ok(health)
}

/// `restart:`, its defaults filled in and checked.
fn restart_plan(ctx: &Ctx, r: model::RestartModel) -> Result<RestartPlan, TopologyError> {
    let cl = r.crash_loop.unwrap_or_default();
    let restart = RestartPlan {
        backoff_min: dur(&r.backoff_min, RESTART_BACKOFF_MIN),
        backoff_max: dur(&r.backoff_max, RESTART_BACKOFF_MAX),
        crash_loop_restarts: cl.restarts.unwrap_or(CRASH_LOOP_RESTARTS),
        crash_loop_within: dur(&cl.within, CRASH_LOOP_WITHIN),
    };
    positive(ctx, "restart.backoff_min", restart.backoff_min)?;
    if restart.backoff_max < restart.backoff_min {
        let key = if r.backoff_max.is_some() {
            "restart.backoff_max"
        } else {
            "restart.backoff_min"
        };
        return Err(ctx.at_key(
            key,
            format!(
                "restart.backoff_max ({}) is below restart.backoff_min ({}): expected backoff_min <= backoff_max",
                model::format_duration(restart.backoff_max),
                model::format_duration(restart.backoff_min)
            ),
        ));
    }
    at_least_one(
        ctx,
        "restart.crash_loop.restarts",
        u64::from(restart.crash_loop_restarts),
        "a number of restarts",
    )?;
    positive(ctx, "restart.crash_loop.within", restart.crash_loop_within)?;
    Ok(restart)
}

/// `proxy:`, its defaults (the proxy's own, [`crate::proxy::ProxyLimits::default`]) filled
/// in and checked.
fn proxy_plan(ctx: &Ctx, p: model::ProxyModel) -> Result<ProxyPlan, TopologyError> {
    let d = crate::proxy::ProxyLimits::default();
    let proxy = ProxyPlan {
        max_connections: p.max_connections.unwrap_or(d.max_connections),
        connect_timeout: dur(&p.connect_timeout, d.connect_timeout),
        idle_timeout: dur(&p.idle_timeout, d.idle_timeout),
        drain_timeout: dur(&p.drain_timeout, DRAIN_TIMEOUT),
        balance: match p.balance.as_deref() {
            None => d.balance,
            Some("roundrobin") => crate::proxy::Balance::RoundRobin,
            Some("leastconn") => crate::proxy::Balance::LeastConn,
            Some(other) => {
                return Err(ctx.at_key(
                    "proxy.balance",
                    format!(
                    "proxy.balance: unknown balance `{other}`: expected roundrobin or leastconn"
                ),
                ))
            }
        },
        accept_proxy: match &p.accept_proxy {
            None => None,
            Some(list) => Some(trusted_networks(ctx, list)?),
        },
    };
    at_least_one(
        ctx,
        "proxy.max_connections",
        proxy.max_connections as u64,
        "a number of client connections",
    )?;
    positive(ctx, "proxy.connect_timeout", proxy.connect_timeout)?;
    positive(ctx, "proxy.idle_timeout", proxy.idle_timeout)?;
    Ok(proxy)
}

fn parse(text: &str, name: &str) -> Result<FileModel, TopologyError> {
    // An empty file (or only comments) is the default topology.
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| error::from_yaml(name, &e))?;
    if value.is_null() {
        return Ok(FileModel::default());
    }
    serde_yaml::from_str(text).map_err(|e| error::from_yaml(name, &e))
}

type SiteChoice = (Option<String>, SiteModel, Option<(String, SiteModel)>);

fn select_site(
    ctx: &Ctx,
    model: &FileModel,
    sites: &BTreeMap<String, SiteModel>,
    site: Option<&str>,
) -> Result<SiteChoice, TopologyError> {
    if model.sites.is_none() {
        if let Some(s) = site {
            return Err(TopologyError::CommandLine {
                flag: "--site".into(),
                message: format!(
                    "{s} given, but {} names no sites: expected no --site, or a `sites` section",
                    ctx.name
                ),
            });
        }
        if model.replication.is_some() {
            return Err(ctx.at_key(
                "replication",
                "replication is set but there are no `sites`: expected a `sites` section naming the two sites that replicate",
            ));
        }
        return Ok((None, SiteModel::default(), None));
    }
    let names: Vec<&str> = sites.keys().map(String::as_str).collect();
    if sites.len() != 2 {
        return Err(ctx.at_key(
            "sites",
            format!(
                "sites names {} site(s) ({}): expected exactly two sites, whose instances replicate in pairs",
                sites.len(),
                names.join(", ")
            ),
        ));
    }
    for (name, s) in sites {
        let here = segs(&["sites", name]);
        match &s.host {
            None => {
                return Err(ctx.at(
                    &here,
                    format!("site {name} has no host: expected `host`, the address the other site reaches this one at"),
                ))
            }
            Some(h) if h.is_empty() || h.contains(':') || h.contains(char::is_whitespace) => {
                let mut p = here.clone();
                p.push(Seg::Key("host".into()));
                return Err(ctx.at(
                    &p,
                    format!("bad host `{h}` for site {name}: expected a host name or IPv4 address (replpeer is split at its only colon, so no IPv6 literal)"),
                ));
            }
            Some(_) => {}
        }
    }
    let Some(chosen) = site else {
        return Err(ctx.at_key(
            "sites",
            format!(
                "this topology names sites ({}): expected --site with one of them",
                names.join(", ")
            ),
        ));
    };
    let Some(me) = sites.get(chosen) else {
        return Err(ctx.at_key(
            "sites",
            format!(
                "--site {chosen} is not one of the sites of this topology: expected one of {}",
                names.join(", ")
            ),
        ));
    };
    let (peer_name, peer) = sites
        .iter()
        .find(|(n, _)| n.as_str() != chosen)
        .map(|(n, s)| (n.clone(), s.clone()))
        .expect("two sites");
    Ok((
        Some(chosen.to_string()),
        me.clone(),
        Some((peer_name, peer)),
    ))
}

/// Two sites on one host (a test or a staging box) must not share ports or data.
fn same_host_clash(
    ctx: &Ctx,
    peer: &str,
    sides: [(Ports, u16, u16); 2],
    n: u32,
    same_data: bool,
) -> Result<(), TopologyError> {
    let [(mine, ml, ma), (theirs, tl, ta)] = sides;
    let overlap = |a: u16, b: u16| u32::from(a).abs_diff(u32::from(b)) < n;
    let ports_overlap = [mine.server, mine.entangled].iter().any(|&a| {
        [theirs.server, theirs.entangled]
            .iter()
            .any(|&b| overlap(a, b))
    });
    let mut problems = Vec::new();
    if ports_overlap {
        problems.push("their instance port ranges overlap".to_string());
    }
    for (a, b, what) in [(ml, tl, "public"), (ma, ta, "admin")] {
        if a != 0 && a == b {
            problems.push(format!("both use {a} as {what} port"));
        }
    }
    for (port, other, what) in [
        (ml, theirs, "public"),
        (ma, theirs, "admin"),
        (tl, mine, "public"),
        (ta, mine, "admin"),
    ] {
        if in_range(port, other.server, n) || in_range(port, other.entangled, n) {
            problems.push(format!(
                "{what} port {port} is among the other site's instance ports"
            ));
        }
    }
    if same_data {
        problems.push("they use the same data directory".into());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ctx.at(
        &segs(&["sites", peer]),
        format!(
            "both sites have the same host, but {}: expected per-site ports, listen, admin and data overrides that keep them apart",
            problems.join(", ")
        ),
    ))
}

fn dur(v: &Option<model::Dur>, default: Duration) -> Duration {
    v.map(|d| d.0).unwrap_or(default)
}

fn at_least_one(ctx: &Ctx, key: &str, n: u64, what: &str) -> Result<(), TopologyError> {
    if n == 0 {
        return Err(ctx.at_key(key, format!("{key} is 0: expected {what}, at least 1")));
    }
    Ok(())
}

fn positive(ctx: &Ctx, key: &str, d: Duration) -> Result<(), TopologyError> {
    if d.is_zero() {
        return Err(ctx.at_key(key, format!("{key} is 0: expected a duration above zero")));
    }
    Ok(())
}

fn check_addr_clash(
    ctx: &Ctx,
    listen: SocketAddr,
    listen_o: &Origin,
    admin: SocketAddr,
    admin_o: &Origin,
) -> Result<(), TopologyError> {
    let same_ip =
        listen.ip() == admin.ip() || listen.ip().is_unspecified() || admin.ip().is_unspecified();
    if listen.port() != 0 && listen.port() == admin.port() && same_ip {
        return Err(ctx.blame(
            &[admin_o, listen_o],
            format!("port clash: admin listener {admin} and public listener {listen} use the same port: expected different ports"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Conflict {
    Overlap,
    Listen,
    Admin,
    TooHigh,
}

struct Why {
    kind: Conflict,
    text: String,
}

fn range_text(first: u16, n: u32) -> String {
    let last = u32::from(first) + n.max(1) - 1;
    if n <= 1 {
        format!("{first}")
    } else {
        format!("{first}-{last}")
    }
}

fn in_range(port: u16, first: u16, n: u32) -> bool {
    port != 0 && u32::from(port) >= u32::from(first) && u32::from(port) < u32::from(first) + n
}

fn port_conflict(ports: Ports, n: u32, listen: u16, admin: u16) -> Option<Why> {
    let (s, e) = (u32::from(ports.server), u32::from(ports.entangled));
    if s + n - 1 > 65535 || e + n - 1 > 65535 {
        return Some(Why {
            kind: Conflict::TooHigh,
            text: "ports end at 65535".into(),
        });
    }
    if s.abs_diff(e) < n {
        return Some(Why {
            kind: Conflict::Overlap,
            text: "the two ranges overlap".into(),
        });
    }
    for (port, kind, what) in [
        (listen, Conflict::Listen, "public listener"),
        (admin, Conflict::Admin, "admin listener"),
    ] {
        if in_range(port, ports.server, n) || in_range(port, ports.entangled, n) {
            return Some(Why {
                kind,
                text: format!("the {what} port {port} is among them"),
            });
        }
    }
    None
}

/// The largest instance count whose ports clash with nothing (see [`port_conflict`]).
pub fn max_instances(ports: Ports, listen: u16, admin: u16) -> u32 {
    let (s, e) = (u32::from(ports.server), u32::from(ports.entangled));
    let mut max = (65536 - s).min(65536 - e).min(s.abs_diff(e));
    for port in [listen, admin] {
        let p = u32::from(port);
        if port == 0 {
            continue;
        }
        for first in [s, e] {
            if p >= first {
                max = max.min(p - first);
            }
        }
    }
    max.min(model::MAX_INSTANCES)
}

fn check_placeholders(ctx: &Ctx, argv: &[String]) -> Result<(), TopologyError> {
    for (i, arg) in argv.iter().enumerate() {
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                break;
            };
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(ctx.at(
                    &[
                        Seg::Key("server".into()),
                        Seg::Key("command".into()),
                        Seg::Index(i),
                    ],
                    format!(
                        "unknown placeholder `{{{name}}}` in server.command: expected one of {{home}}, {{id}}, {{port}}, {{eport}}"
                    ),
                ));
            }
            rest = &after[close + 1..];
        }
    }
    Ok(())
}

fn server_config(
    ctx: &Ctx,
    map: Option<&serde_yaml::Mapping>,
) -> Result<Vec<(String, String)>, TopologyError> {
    let mut out = Vec::new();
    let Some(map) = map else {
        return Ok(out);
    };
    for (k, v) in map {
        let Some(key) = scalar_text(k) else {
            return Err(ctx.at_key(
                "server.config",
                "server.config has a key that is not a plain name: expected config.txt keys such as max_connections",
            ));
        };
        let here = segs(&["server", "config", &key]);
        if key.is_empty()
            || key.contains(':')
            || key.contains(char::is_whitespace)
            || key.starts_with('#')
            || key.starts_with(';')
        {
            return Err(ctx.at(
                &here,
                format!("bad config.txt key `{key}`: expected a name without `:`, spaces, or a leading `#`/`;`"),
            ));
        }
        if RESERVED_CONFIG_KEYS.contains(&key.as_str()) {
            return Err(ctx.at(
                &here,
                format!(
                    "server.config sets `{key}`, which storeherd writes itself: expected none of {} (use ports, store, sites, replication)",
                    RESERVED_CONFIG_KEYS.join(", ")
                ),
            ));
        }
        let bad = |what: &str| {
            ctx.at(
                &here,
                format!("server.config.{key} is {what}: expected a value or a list of values"),
            )
        };
        let values: Vec<String> = match v {
            serde_yaml::Value::Sequence(items) => {
                let mut vals = Vec::new();
                for item in items {
                    vals.push(scalar_text(item).ok_or_else(|| bad("a list with a nested item"))?);
                }
                if vals.is_empty() {
                    return Err(bad("an empty list"));
                }
                vals
            }
            serde_yaml::Value::Null => return Err(bad("empty")),
            other => vec![scalar_text(other).ok_or_else(|| bad("a mapping"))?],
        };
        if values.iter().any(|s| s.contains(['\n', '\r'])) {
            return Err(bad("several lines of text"));
        }
        if key == "knode" {
            // The original reads `knode` as a repeatable key: one line per bootstrap node.
            out.extend(values.into_iter().map(|v| (key.clone(), v)));
        } else {
            out.push((key, values.join(",")));
        }
    }
    Ok(out)
}

fn shards(
    ctx: &Ctx,
    list: &[model::ShardModel],
    store: &Path,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<ShardPlan>, TopologyError> {
    let mut out: Vec<ShardPlan> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let here = |k: &str| vec![Seg::Key("shards".into()), Seg::Index(i), Seg::Key(k.into())];
        let (first, last) = parse_range(&s.range).ok_or_else(|| {
            ctx.at(
                &here("range"),
                format!("bad shard range `{}`: expected two hex digits, a dash, two hex digits, low to high (such as 00-3F)", s.range),
            )
        })?;
        if let Some(other) = out.iter().find(|o| first <= o.last && o.first <= last) {
            return Err(ctx.at(
                &here("range"),
                format!(
                    "shard range {:02X}-{:02X} overlaps shard range {}: expected ranges with no folder in common",
                    first,
                    last,
                    other.range()
                ),
            ));
        }
        let path = rel(&s.path);
        if path == store || path.starts_with(store) {
            return Err(ctx.at(
                &here("path"),
                format!(
                    "shard path {} is inside the store {}: expected a directory on another device",
                    path.display(),
                    store.display()
                ),
            ));
        }
        out.push(ShardPlan { first, last, path });
    }
    Ok(out)
}

fn parse_range(text: &str) -> Option<(u8, u8)> {
    let (a, b) = text.trim().split_once('-')?;
    let hex = |s: &str| {
        if s.len() == 2 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            u8::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    let (a, b) = (hex(a)?, hex(b)?);
    (a <= b).then_some((a, b))
}

fn normalize_sha1(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if text.contains(':') && !text.split(':').all(|pair| pair.len() == 2) {
        return None;
    }
    let upper = hex.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..20).map(|i| &upper[i * 2..i * 2 + 2]).collect();
    Some(pairs.join(":"))
}

/// Logical cores, from sysinfo (at least 1).
pub fn logical_cores() -> u32 {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_list(sysinfo::CpuRefreshKind::new());
    let n = sys.cpus().len();
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    };
    u32::try_from(n).unwrap_or(1).clamp(1, model::MAX_INSTANCES)
}

/// `path` made absolute against `base` and cleaned of `.` and `..` (lexically: the path
/// may not exist yet).
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether `path` is, or can be made, a writable directory by this user.
fn creatable(path: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let mut p = path;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => {
                return Err(format!("{} exists and is not a directory", p.display()))
            }
            Ok(_) => {
                return access(p, AccessFlags::W_OK | AccessFlags::X_OK)
                    .map_err(|e| format!("{} is not writable by this user ({e})", p.display()));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::errno::Errno::ENOTDIR as i32) =>
            {
                match p.parent() {
                    Some(parent) => p = parent,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
}

/// `proxy.accept_proxy`: networks (`10.0.0.0/8`) or single addresses (`192.0.2.7`).
fn trusted_networks(ctx: &Ctx, list: &[String]) -> Result<Vec<ipnet::IpNet>, TopologyError> {
    let mut nets = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let parsed = item.parse::<ipnet::IpNet>().ok().or_else(|| {
            item.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match parsed {
            Some(n) => nets.push(n.trunc()),
            None => {
                let mut at = path("proxy.accept_proxy");
                at.push(Seg::Index(i));
                return Err(ctx.at(
                    &at,
                    format!(
                        "proxy.accept_proxy: bad network `{item}`: expected an address or a network such as 10.0.0.0/8"
                    ),
                ));
            }
        }
    }
    if nets.is_empty() {
        return Err(ctx.at_key(
            "proxy.accept_proxy",
            "proxy.accept_proxy is empty: list the balancers' networks, or leave the key out",
        ));
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("00-3F"), Some((0, 0x3f)));
        assert_eq!(parse_range("c0-ff"), Some((0xc0, 0xff)));
        assert_eq!(parse_range("3F-00"), None);
        assert_eq!(parse_range("0-3F"), None);
        assert_eq!(parse_range("00-G0"), None);
        assert_eq!(parse_range("003F"), None);
    }

    #[test]
    fn sha1_pins() {
        let colon = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01";
        let want = colon.to_ascii_uppercase();
        assert_eq!(normalize_sha1(colon).as_deref(), Some(want.as_str()));
        assert_eq!(
            normalize_sha1(&colon.replace(':', "")).as_deref(),
            Some(want.as_str())
        );
        assert_eq!(normalize_sha1("AB:CD"), None);
        assert_eq!(
            normalize_sha1("ABC:D:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"),
            None
        );
    }

    #[test]
    fn max_instances_counts_every_clash() {
        let p = Ports {
            server: 18101,
            entangled: 18201,
        };
        assert_eq!(max_instances(p, 8081, 8089), 100);
        assert_eq!(max_instances(p, 18105, 8089), 4);
        assert_eq!(max_instances(p, 8081, 18203), 2);
        assert_eq!(
            max_instances(
                Ports {
                    server: 65530,
                    entangled: 100
                },
                0,
                0
            ),
            6
        );
        assert_eq!(
            max_instances(
                Ports {
                    server: 5,
                    entangled: 5
                },
                0,
                0
            ),
            0
        );
        for n in 1..=100 {
            assert!(port_conflict(p, n, 8081, 8089).is_none());
        }
        assert!(port_conflict(p, 101, 8081, 8089).is_some());
    }

    #[test]
    fn absolute_cleans_dots() {
        let base = Path::new("/etc/storeherd");
        assert_eq!(
            absolute(base, Path::new("./data")),
            PathBuf::from("/etc/storeherd/data")
        );
        assert_eq!(
            absolute(base, Path::new("../x/./y")),
            PathBuf::from("/etc/x/y")
        );
        assert_eq!(absolute(base, Path::new("/srv/s")), PathBuf::from("/srv/s"));
    }

    #[test]
    fn creatable_detects_files_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(creatable(&dir.path().join("a/b/c")).is_ok());
        let err = creatable(&file.join("store")).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }
}
