//! From the file model to the [`Plan`]: merge site and command-line overrides, fill in the
//! defaults, validate, and point every error at the key that causes it.
//!
//! [`resolve`] reads the file, picks the site, then resolves one section at a time, in the
//! order of the plan: listeners, instances, data and store, ports, server, health, restart,
//! proxy, shards, replication, upkeep, accounts. A section only reads what the earlier ones
//! settled, so the first error found is the same whatever changes elsewhere.

mod hosts;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::defaults::*;
use super::error::{self, locate, path, Seg, TopologyError};
use super::model::{
    self, scalar_text, CommandModel, FileModel, Instances, SiteModel, INSTANCES_EXPECTED,
};
use super::{
    AdminPlan, HealthPlan, Overrides, Plan, Ports, ProxyPlan, ReplicationPlan, RestartPlan,
    ServerCommand, ServerPlan, ShardPlan, TlsPlan, UpkeepPlan,
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

/// Picks the first value present, with its origin: host override (with `hosts`), site
/// override, then top level.
fn pick<T: Clone>(
    host: Option<(T, Vec<Seg>)>,
    site: Option<(T, Vec<Seg>)>,
    top: Option<(T, Vec<Seg>)>,
) -> Option<(T, Origin)> {
    host.or(site).or(top).map(|(v, p)| (v, Origin::File(p)))
}

fn segs(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|s| Seg::Key(s.to_string())).collect()
}

/// What every section reads: the file, where its relative paths start, the command line,
/// and the site this plan is for (with the other one, its peer).
struct Input<'a> {
    ctx: Ctx<'a>,
    model: &'a FileModel,
    cwd: &'a Path,
    /// Relative paths in the file start here: the file's directory (else the working one).
    base: PathBuf,
    overrides: &'a Overrides,
    disk: Disk,
    site: Option<String>,
    /// The site's overrides (empty without sites).
    me: SiteModel,
    peer: Option<(String, SiteModel)>,
    /// The site's hosts, when it spans several, and which one this is.
    hosts: Option<hosts::Hosts>,
}

/// The public and admin listeners, with where each came from.
struct Listeners {
    listen: SocketAddr,
    listen_o: Origin,
    admin: AdminPlan,
    admin_o: Origin,
}

/// The instance count, with where it came from.
struct Count {
    n: u32,
    origin: Origin,
}

/// The data directory and the store.
struct Places {
    data: PathBuf,
    store: PathBuf,
}

pub fn resolve(
    text: &str,
    name: &str,
    file: Option<&Path>,
    cwd: &Path,
    site: Option<&str>,
    overrides: &Overrides,
    disk: Disk,
) -> Result<Plan, TopologyError> {
    let ctx = Ctx { text, name };
    let model = parse(text, name)?;
    let base = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.to_path_buf());
    let sites = model.sites.clone().unwrap_or_default();
    let (site, me, peer) = select_site(&ctx, &model, &sites, site)?;
    let hosts = hosts::select(&ctx, &model, site.as_deref(), &me, peer.as_ref(), overrides)?;
    let input = Input {
        ctx,
        model: &model,
        cwd,
        base,
        overrides,
        disk,
        site,
        me,
        peer,
        hosts,
    };
    let rel = |p: &Path| input.rel(p);

    let listeners = input.listeners()?;
    input.check_admin_reach(&listeners)?;
    let count = input.instances()?;
    let places = input.places()?;
    input.check_same_address(&listeners, &places.data)?;
    let ports = input.ports(&count, &listeners)?;
    let server = server_plan(
        &input.ctx,
        model.server.as_ref().unwrap_or(&Default::default()),
        &rel,
    )?;
    let health = health_plan(
        &input.ctx,
        model.health.as_ref().unwrap_or(&Default::default()),
    )?;
    let restart = restart_plan(
        &input.ctx,
        model.restart.as_ref().unwrap_or(&Default::default()),
    )?;
    let proxy = proxy_plan(
        &input.ctx,
        model.proxy.as_ref().unwrap_or(&Default::default()),
    )?;
    let shards = shards(
        &input.ctx,
        model.shards.as_deref().unwrap_or(&[]),
        &places.store,
        &rel,
    )?;
    let replication = input.replication(input.span(count.n), ports, &listeners, &places.data)?;
    let mut upkeep = upkeep_plan(&input.ctx, model.upkeep.as_ref())?;
    if input.hosts.as_ref().is_some_and(|h| h.me > 0) {
        // The hosts share one store: it is pruned once, by the first host's schedule.
        upkeep = UpkeepPlan::default();
    }
    let admin_key_file = input.admin_key_file(&places.data);
    // With sites, instances listen where the peer reaches them: this host's address.
    let host = match (&input.site, input.this_host()) {
        (Some(_), Some(h)) => Some(h.address.clone()),
        _ => input.me.host.clone(),
    };
    let hosts = input.host_plans(&listeners);

    Ok(Plan {
        source: file.map(Path::to_path_buf),
        site: input.site.clone(),
        listen: listeners.listen,
        admin: listeners.admin,
        instances: count.n,
        data: places.data,
        store: places.store,
        ports,
        server,
        health,
        restart,
        proxy,
        shards,
        replication,
        admin_key_file,
        host,
        upkeep,
        host_name: input.this_host().map(|h| h.name.clone()),
        hosts,
    })
}

impl Input<'_> {
    fn rel(&self, p: &Path) -> PathBuf {
        absolute(&self.base, p)
    }

    /// The path of `sites.<site>.<keys…>`; empty without sites (such a key never exists).
    fn site_path(&self, keys: &[&str]) -> Vec<Seg> {
        match &self.site {
            Some(s) => {
                let mut p = segs(&["sites", s]);
                p.extend(segs(keys));
                p
            }
            None => Vec::new(),
        }
    }

    /// `listen` and `admin`: flag, then site, then top level, then the default; an admin
    /// listener off loopback needs a token, and the two may not share a port.
    fn listeners(&self) -> Result<Listeners, TopologyError> {
        let (model, me, host) = (self.model, &self.me, self.this_host());
        let (listen, listen_o) = match self.overrides.listen {
            Some(a) => (a, Origin::Flag("--listen")),
            None => pick(
                host.and_then(|h| h.listen)
                    .map(|a| (a.0, self.host_path(&["listen"]))),
                me.listen.map(|a| (a.0, self.site_path(&["listen"]))),
                model.listen.map(|a| (a.0, path("listen"))),
            )
            .unwrap_or((DEFAULT_LISTEN, Origin::Default)),
        };
        let host_admin = host.and_then(|h| h.admin.clone()).unwrap_or_default();
        let site_admin = me.admin.clone().unwrap_or_default();
        let top_admin = model.admin.clone().unwrap_or_default();
        let (admin_listen, admin_o) = match self.overrides.admin {
            Some(a) => (a, Origin::Flag("--admin")),
            None => pick(
                host_admin
                    .listen
                    .map(|a| (a.0, self.host_path(&["admin", "listen"]))),
                site_admin
                    .listen
                    .map(|a| (a.0, self.site_path(&["admin", "listen"]))),
                top_admin.listen.map(|a| (a.0, path("admin.listen"))),
            )
            .unwrap_or((DEFAULT_ADMIN, Origin::Default)),
        };
        let token_file = host_admin
            .token_file
            .or(site_admin.token_file)
            .or(top_admin.token_file)
            .map(|p| self.rel(&p));
        if !admin_listen.ip().is_loopback() && token_file.is_none() {
            return Err(self.ctx.blame(
                &[&admin_o],
                format!(
                    "admin listener {admin_listen} is not on loopback: expected admin.token_file \
                     (the bearer token required off loopback), or a loopback address such as {DEFAULT_ADMIN}"
                ),
            ));
        }
        check_addr_clash(&self.ctx, listen, &listen_o, admin_listen, &admin_o)?;
        Ok(Listeners {
            listen,
            listen_o,
            admin: AdminPlan {
                listen: admin_listen,
                token_file,
            },
            admin_o,
        })
    }

    /// `instances`: flag, then file, then `auto` (one per logical core; not with sites);
    /// with `hosts`, this host's count.
    fn instances(&self) -> Result<Count, TopologyError> {
        if let Some(h) = self.this_host() {
            return Ok(Count {
                n: h.instances.0,
                origin: Origin::File(self.host_path(&["instances"])),
            });
        }
        let (spec, origin) = match &self.overrides.instances {
            Some(s) => (
                Instances::parse(s).ok_or_else(|| TopologyError::CommandLine {
                    flag: "--instances".into(),
                    message: format!("bad instance count `{s}`: expected {INSTANCES_EXPECTED}"),
                })?,
                Origin::Flag("--instances"),
            ),
            None => match self.model.instances {
                Some(i) => (i, Origin::File(path("instances"))),
                None => (Instances::Auto, Origin::Default),
            },
        };
        if self.site.is_some() && spec == Instances::Auto {
            return Err(self.ctx.blame(
                &[&origin, &Origin::File(path("sites"))],
                "with `sites`, instances must be a number, not auto: instance k of one site pairs \
                 with instance k of the other, so both sites need the same count",
            ));
        }
        let n = match spec {
            Instances::Count(n) => n,
            Instances::Auto => logical_cores(),
        };
        Ok(Count { n, origin })
    }

    /// `data` and `store`, both checked to be creatable (unless resolving for a control
    /// command, which only needs addresses and may run as another user).
    fn places(&self) -> Result<Places, TopologyError> {
        let (model, me, host) = (self.model, &self.me, self.this_host());
        let host_data = host.and_then(|h| h.data.as_ref());
        let data = match &self.overrides.data {
            Some(d) => absolute(self.cwd, d),
            None => host_data
                .or(me.data.as_ref())
                .or(model.data.as_ref())
                .map(|d| self.rel(d))
                .unwrap_or_else(|| self.cwd.join(DEFAULT_DATA)),
        };
        let data_o = match (&self.overrides.data, host_data, &me.data, &model.data) {
            (Some(_), _, _, _) => Origin::Flag("--data"),
            (None, Some(_), _, _) => Origin::File(self.host_path(&["data"])),
            (None, None, Some(_), _) => Origin::File(self.site_path(&["data"])),
            (None, None, None, Some(_)) => Origin::File(path("data")),
            _ => Origin::Default,
        };
        let (store, store_o) = match pick(
            host.and_then(|h| h.store.as_ref())
                .map(|s| (self.rel(s), self.host_path(&["store"]))),
            me.store
                .as_ref()
                .map(|s| (self.rel(s), self.site_path(&["store"]))),
            model.store.as_ref().map(|s| (self.rel(s), path("store"))),
        ) {
            Some(v) => v,
            None => (data.join(STORE_DIR), data_o.clone()),
        };
        let creatable = |p: &Path| match self.disk {
            Disk::Check => creatable(p),
            Disk::Skip => Ok(()),
        };
        if let Err(why) = creatable(&data) {
            return Err(self.ctx.blame(
                &[&data_o],
                format!(
                    "data directory {} cannot be created: {why}: expected a directory that this user can create or write",
                    data.display()
                ),
            ));
        }
        if let Err(why) = creatable(&store) {
            return Err(self.ctx.blame(
                &[&store_o],
                format!(
                    "store path {} cannot be created: {why}: expected a directory that this user can create or write",
                    store.display()
                ),
            ));
        }
        Ok(Places { data, store })
    }

    /// `ports`: site, then top level, then the defaults; the instances' two ranges may
    /// overlap neither each other nor the public and admin ports, and end by 65535.
    fn ports(&self, count: &Count, l: &Listeners) -> Result<Ports, TopologyError> {
        let top = self.model.ports.unwrap_or_default();
        let site = self.me.ports.unwrap_or_default();
        let field = |name: &str,
                     s: Option<u16>,
                     t: Option<u16>,
                     d: u16|
         -> Result<(u16, Origin), TopologyError> {
            let (v, o) = match (s, t) {
                (Some(v), _) => (v, Origin::File(self.site_path(&["ports", name]))),
                (None, Some(v)) => (v, Origin::File(segs(&["ports", name]))),
                _ => (d, Origin::Default),
            };
            if v == 0 {
                return Err(self.ctx.blame(
                    &[&o],
                    format!("ports.{name} is 0: expected the first port number, 1 to 65535"),
                ));
            }
            Ok((v, o))
        };
        let (server, server_o) = field("server", site.server, top.server, DEFAULT_SERVER_PORT)?;
        let (entangled, eport_o) = field(
            "entangled",
            site.entangled,
            top.entangled,
            DEFAULT_ENTANGLED_PORT,
        )?;
        let ports = Ports { server, entangled };
        // Ids run on across the hosts: the ranges hold the whole site's.
        let (n, inst_o) = (self.span(count.n), &count.origin);
        let (listen, admin) = (l.listen.port(), l.admin.listen.port());
        if let Some(why) = port_conflict(ports, n, listen, admin) {
            let max = max_instances(ports, listen, admin);
            let blame: Vec<&Origin> = match why.kind {
                Conflict::Overlap => vec![&eport_o, &server_o, inst_o],
                Conflict::Listen => vec![&server_o, &eport_o, &l.listen_o, inst_o],
                Conflict::Admin => vec![&server_o, &eport_o, &l.admin_o, inst_o],
                Conflict::TooHigh => vec![inst_o, &server_o, &eport_o],
            };
            return Err(self.ctx.blame(
                &blame,
                format!(
                    "port clash: {n} instances need server ports {} and entangled ports {}, \
                     but {}; at most {max} instances fit: expected instance port ranges that overlap \
                     neither each other nor the public and admin ports",
                    range_text(ports.server, n),
                    range_text(ports.entangled, n),
                    why.text
                ),
            ));
        }
        Ok(ports)
    }

    /// `replication` with `sites`: the shared key, the peer's pin and first ports; two
    /// sites on one host must keep their ports and data apart.
    fn replication(
        &self,
        instances: u32,
        ports: Ports,
        l: &Listeners,
        data: &Path,
    ) -> Result<Option<ReplicationPlan>, TopologyError> {
        let (Some(_), Some((peer_name, peer))) = (&self.site, &self.peer) else {
            return Ok(None);
        };
        let (ctx, model) = (&self.ctx, self.model);
        let rm = model.replication.as_ref();
        let authkey_file = rm
            .and_then(|r| r.authkey_file.as_ref())
            .map(|p| self.rel(p))
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
        let (pin, pin_path) = match (&peer.cert_sha1, rm.and_then(|r| r.peer_cert_sha1.as_ref())) {
            (Some(p), _) => (Some(p.clone()), segs(&["sites", peer_name, "cert_sha1"])),
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
        let top_ports = model.ports.unwrap_or_default();
        let pp = peer.ports.unwrap_or_default();
        let peer_ports = Ports {
            server: pp
                .server
                .or(top_ports.server)
                .unwrap_or(DEFAULT_SERVER_PORT),
            entangled: pp
                .entangled
                .or(top_ports.entangled)
                .unwrap_or(DEFAULT_ENTANGLED_PORT),
        };
        if u32::from(peer_ports.server) + instances - 1 > 65535 {
            return Err(ctx.at(
                &segs(&["sites", peer_name]),
                format!(
                    "site {peer_name}: {instances} instances need server ports {}: expected them to end at 65535 or below",
                    range_text(peer_ports.server, instances)
                ),
            ));
        }
        if self.hosts.is_some() {
            for (peer_listen, peer_admin, peer_data) in self.peer_hosts_here() {
                same_host_clash(
                    ctx,
                    peer_name,
                    [
                        (ports, l.listen.port(), l.admin.listen.port()),
                        (peer_ports, peer_listen, peer_admin),
                    ],
                    instances,
                    data == peer_data,
                )?;
            }
        } else if peer.host == self.me.host {
            self.peer_on_same_host(peer_name, peer, instances, ports, l, data, peer_ports)?;
        }
        let peer_hosts = self.peer_host_plans();
        Ok(Some(ReplicationPlan {
            peer_site: peer_name.clone(),
            peer_host: peer
                .host
                .clone()
                .or_else(|| peer_hosts.first().map(|h| h.address.clone()))
                .unwrap_or_default(),
            peer_ports,
            authkey_file,
            peer_cert_sha1,
            peer_hosts,
        }))
    }

    /// Two sites on one host (a test or a staging box): the peer's listeners and data as
    /// the peer resolves them (site, then top level, then defaults), compared with ours.
    #[allow(clippy::too_many_arguments)]
    fn peer_on_same_host(
        &self,
        peer_name: &str,
        peer: &SiteModel,
        instances: u32,
        ports: Ports,
        l: &Listeners,
        data: &Path,
        peer_ports: Ports,
    ) -> Result<(), TopologyError> {
        let model = self.model;
        let peer_listen = peer.listen.or(model.listen).map_or(DEFAULT_LISTEN, |a| a.0);
        let top_admin = model.admin.as_ref().and_then(|a| a.listen);
        let peer_admin = peer
            .admin
            .as_ref()
            .and_then(|a| a.listen)
            .or(top_admin)
            .map_or(DEFAULT_ADMIN, |a| a.0);
        let peer_data = peer
            .data
            .as_ref()
            .or(model.data.as_ref())
            .map(|d| self.rel(d))
            .unwrap_or_else(|| self.cwd.join(DEFAULT_DATA));
        same_host_clash(
            &self.ctx,
            peer_name,
            [
                (ports, l.listen.port(), l.admin.listen.port()),
                (peer_ports, peer_listen.port(), peer_admin.port()),
            ],
            instances,
            data == peer_data,
        )
    }

    /// `accounts.admin_key_file`, else `<data>/admin.key`.
    fn admin_key_file(&self, data: &Path) -> PathBuf {
        self.model
            .accounts
            .as_ref()
            .and_then(|a| a.admin_key_file.as_ref())
            .map(|p| self.rel(p))
            .unwrap_or_else(|| data.join(ADMIN_KEY_FILE))
    }
}

/// `server:`: the instance command, `config.txt` lines, TLS files and stop grace.
fn server_plan(
    ctx: &Ctx,
    server_model: &model::ServerModel,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<ServerPlan, TopologyError> {
    let command = match &server_model.command {
        None | Some(CommandModel::Builtin) => ServerCommand::Builtin,
        Some(CommandModel::Argv(argv)) => {
            check_placeholders(ctx, argv)?;
            ServerCommand::Argv(argv.clone())
        }
    };
    let config = server_config(ctx, server_model.config.as_ref())?;
    let no_tls = model::TlsModel::default();
    let tls_model = server_model.tls.as_ref().unwrap_or(&no_tls);
    if tls_model.cert.is_some() != tls_model.key.is_some() {
        return Err(ctx.at_key(
            "server.tls",
            "server.tls needs both cert and key (or neither, to generate the identity into <data>/ssl/)",
        ));
    }
    let tls = TlsPlan {
        cert: tls_model.cert.as_deref().map(rel),
        key: tls_model.key.as_deref().map(rel),
        dhparams: tls_model.dhparams.as_deref().map(rel),
    };
    let stop_grace = dur(&server_model.stop_grace, DEFAULT_STOP_GRACE);
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
fn health_plan(ctx: &Ctx, h: &model::HealthModel) -> Result<HealthPlan, TopologyError> {
    let health = HealthPlan {
        interval: dur(&h.interval, DEFAULT_HEALTH_INTERVAL),
        timeout: dur(&h.timeout, DEFAULT_HEALTH_TIMEOUT),
        unhealthy_after: h.unhealthy_after.unwrap_or(DEFAULT_UNHEALTHY_AFTER),
        start_grace: dur(&h.start_grace, DEFAULT_START_GRACE),
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
fn restart_plan(ctx: &Ctx, r: &model::RestartModel) -> Result<RestartPlan, TopologyError> {
    let no_loop = model::CrashLoopModel::default();
    let cl = r.crash_loop.as_ref().unwrap_or(&no_loop);
    let restart = RestartPlan {
        backoff_min: dur(&r.backoff_min, DEFAULT_BACKOFF_MIN),
        backoff_max: dur(&r.backoff_max, DEFAULT_BACKOFF_MAX),
        crash_loop_restarts: cl.restarts.unwrap_or(DEFAULT_CRASH_LOOP_RESTARTS),
        crash_loop_within: dur(&cl.within, DEFAULT_CRASH_LOOP_WITHIN),
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

/// `proxy:`, its defaults filled in and checked.
fn proxy_plan(ctx: &Ctx, p: &model::ProxyModel) -> Result<ProxyPlan, TopologyError> {
    let proxy = ProxyPlan {
        max_connections: p.max_connections.unwrap_or(DEFAULT_PROXY_MAX_CONNECTIONS),
        connect_timeout: dur(&p.connect_timeout, DEFAULT_PROXY_CONNECT_TIMEOUT),
        idle_timeout: dur(&p.idle_timeout, DEFAULT_PROXY_IDLE_TIMEOUT),
        drain_timeout: dur(&p.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
        balance: match p.balance.as_deref() {
            None => DEFAULT_BALANCE,
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
        if s.host.is_some() && s.hosts.is_some() {
            return Err(ctx.at(
                &segs(&["sites", name, "hosts"]),
                format!("site {name} has both host and hosts: expected one of them (`host` for a site on one machine, `hosts` for one over several)"),
            ));
        }
        match &s.host {
            // The hosts list is checked with the hosts (`hosts::select`).
            None if s.hosts.is_some() => {}
            None => {
                return Err(ctx.at(
                    &here,
                    format!("site {name} has no host: expected `host`, the address the other site reaches this one at"),
                ))
            }
            Some(h) if !valid_address(h) => {
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

/// A host name or IPv4 address that `replpeer` can carry: `replpeer` is split at its only
/// colon, so no IPv6 literal.
fn valid_address(h: &str) -> bool {
    !(h.is_empty() || h.contains(':') || h.contains(char::is_whitespace))
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
