//! `hosts`: one site over several hosts that share one store. The list is in order and
//! instance ids run on across it, so every host computes every host's ids, ports and admin
//! address from the same file; `--host` says which one this is.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::super::defaults::{DEFAULT_ADMIN_PORT, DEFAULT_DATA};
use super::super::model::{FileModel, HostModel, SiteModel, MAX_INSTANCES};
use super::super::{HostPlan, Overrides};
use super::{path, segs, valid_address, Ctx, Input, Listeners, Origin, Seg, TopologyError};

/// The hosts list of the site this plan is for, and which entry is this host.
pub(super) struct Hosts {
    pub list: Vec<HostModel>,
    /// Where the list is in the file: `hosts`, or `sites.<site>.hosts`.
    pub at: Vec<Seg>,
    pub me: usize,
    /// With sites, the peer site's list (both sites have one, or neither).
    pub peer: Option<Vec<HostModel>>,
}

/// Finds this host in the site's list (`--host`), after checking both sites' lists.
/// `Ok(None)`: the site is on one machine.
pub(super) fn select(
    ctx: &Ctx,
    model: &FileModel,
    site: Option<&str>,
    me: &SiteModel,
    peer: Option<&(String, SiteModel)>,
    overrides: &Overrides,
) -> Result<Option<Hosts>, TopologyError> {
    if model.hosts.is_some() && model.sites.is_some() {
        return Err(ctx.at_key(
            "hosts",
            "hosts is set at the top level, but this topology names sites: expected each site's own list (sites: { a: { hosts: [...] }, b: { hosts: [...] } })",
        ));
    }
    let (list, at) = match site {
        Some(s) => (me.hosts.clone(), segs(&["sites", s, "hosts"])),
        None => (model.hosts.clone(), path("hosts")),
    };
    if let (Some(s), Some((peer_name, peer))) = (site, peer) {
        match (&list, &peer.hosts) {
            (Some(_), None) => return Err(one_sided(ctx, peer_name, s)),
            (None, Some(_)) => return Err(one_sided(ctx, s, peer_name)),
            _ => {}
        }
    }
    let Some(list) = list else {
        if let Some(h) = &overrides.host {
            let whose = match site {
                Some(s) => format!("site {s} of {}", ctx.name),
                None => ctx.name.to_string(),
            };
            return Err(TopologyError::CommandLine {
                flag: "--host".into(),
                message: format!(
                    "{h} given, but {whose} names no hosts: expected no --host, or a `hosts` list"
                ),
            });
        }
        return Ok(None);
    };
    if model.instances.is_some() {
        return Err(ctx.at_key(
            "instances",
            "instances is set, but `hosts` gives each host's count: expected no top-level instances with hosts",
        ));
    }
    if overrides.instances.is_some() {
        return Err(TopologyError::CommandLine {
            flag: "--instances".into(),
            message: "this topology's hosts give each host's count: expected no --instances".into(),
        });
    }
    check_list(ctx, &list, &at)?;
    let peer_list = match (site, peer) {
        (Some(s), Some((peer_name, peer))) => {
            let peer_list = peer.hosts.clone().unwrap_or_default();
            let peer_at = segs(&["sites", peer_name, "hosts"]);
            check_list(ctx, &peer_list, &peer_at)?;
            let (mine, theirs) = (total(&list), total(&peer_list));
            if mine != theirs {
                return Err(ctx.at(
                    &peer_at,
                    format!(
                        "site {s}'s hosts run {mine} instances and site {peer_name}'s run {theirs}: expected the same total (instance k of one site pairs with instance k of the other)"
                    ),
                ));
            }
            Some(peer_list)
        }
        _ => None,
    };
    let names: Vec<&str> = list.iter().map(|h| h.name.as_str()).collect();
    let Some(chosen) = &overrides.host else {
        return Err(ctx.at(
            &at,
            format!(
                "this site has several hosts ({}): expected --host with one of them",
                names.join(", ")
            ),
        ));
    };
    let Some(me) = list.iter().position(|h| &h.name == chosen) else {
        return Err(ctx.at(
            &at,
            format!(
                "--host {chosen} is not one of the hosts of this site: expected one of {}",
                names.join(", ")
            ),
        ));
    };
    Ok(Some(Hosts {
        list,
        at,
        me,
        peer: peer_list,
    }))
}

fn one_sided(ctx: &Ctx, without: &str, with: &str) -> TopologyError {
    ctx.at(
        &segs(&["sites", without]),
        format!("site {with} has hosts but site {without} has none: expected `hosts` in both sites or in neither (instance k of one site pairs with instance k of the other)"),
    )
}

fn total(list: &[HostModel]) -> u32 {
    list.iter().map(|h| h.instances.0).sum()
}

/// A host name as `--host` takes it.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One site's list: not empty, unique valid names, addresses `replpeer` can carry, and no
/// more instances in all than a topology may have.
fn check_list(ctx: &Ctx, list: &[HostModel], at: &[Seg]) -> Result<(), TopologyError> {
    if list.is_empty() {
        return Err(ctx.at(
            at,
            "hosts is empty: expected at least one host (name, address, instances)",
        ));
    }
    let key = |i: usize, k: &str| {
        let mut p = at.to_vec();
        p.push(Seg::Index(i));
        p.push(Seg::Key(k.into()));
        p
    };
    for (i, h) in list.iter().enumerate() {
        if !valid_name(&h.name) {
            return Err(ctx.at(
                &key(i, "name"),
                format!(
                    "bad host name `{}`: expected letters, digits, `-`, `_` or `.`",
                    h.name
                ),
            ));
        }
        if list[..i].iter().any(|o| o.name == h.name) {
            return Err(ctx.at(
                &key(i, "name"),
                format!(
                    "host name {} is used twice in this site: expected a unique name per host",
                    h.name
                ),
            ));
        }
        if !valid_address(&h.address) {
            return Err(ctx.at(
                &key(i, "address"),
                format!(
                    "bad address `{}` for host {}: expected a host name or IPv4 address (replpeer is split at its only colon, so no IPv6 literal)",
                    h.address, h.name
                ),
            ));
        }
    }
    let n = total(list);
    if n > MAX_INSTANCES {
        return Err(ctx.at(
            at,
            format!("the hosts run {n} instances in all: expected at most {MAX_INSTANCES}"),
        ));
    }
    Ok(())
}

/// The host entries of one site's list, ids running on across it; `admin_port` gives each
/// host's admin port by its index.
fn plans(list: &[HostModel], admin_port: impl Fn(usize) -> u16) -> Vec<HostPlan> {
    let mut first_id = 1;
    let mut out = Vec::with_capacity(list.len());
    for (i, h) in list.iter().enumerate() {
        let n = h.instances.0;
        out.push(HostPlan {
            name: h.name.clone(),
            address: h.address.clone(),
            instances: n,
            first_id,
            admin: format!("{}:{}", h.address, admin_port(i)),
        });
        first_id += n;
    }
    out
}

/// A host's own value, else its site's, else the top level's.
fn layered<T>(host: Option<T>, site: Option<T>, top: Option<T>) -> Option<T> {
    host.or(site).or(top)
}

impl Input<'_> {
    pub(super) fn this_host(&self) -> Option<&HostModel> {
        self.hosts.as_ref().map(|h| &h.list[h.me])
    }

    /// The path of this host's `<keys…>` in its list; empty without hosts.
    pub(super) fn host_path(&self, keys: &[&str]) -> Vec<Seg> {
        match &self.hosts {
            Some(h) => {
                let mut p = h.at.clone();
                p.push(Seg::Index(h.me));
                p.extend(segs(keys));
                p
            }
            None => Vec::new(),
        }
    }

    /// The last instance id of the site (all hosts), which the port ranges must hold.
    pub(super) fn span(&self, count: u32) -> u32 {
        self.hosts.as_ref().map_or(count, |h| total(&h.list))
    }

    /// Admin port of another host of `site` (this one's or the peer's), as it resolves it.
    fn admin_port_of(&self, h: &HostModel, site: &SiteModel) -> u16 {
        let top = self.model.admin.as_ref().and_then(|a| a.listen);
        layered(
            h.admin.as_ref().and_then(|a| a.listen),
            site.admin.as_ref().and_then(|a| a.listen),
            top,
        )
        .map_or(DEFAULT_ADMIN_PORT, |a| a.0.port())
    }

    /// Public port and data directory of a host of `site`, as it resolves them (no flags:
    /// those are that host's own).
    fn listen_and_data_of(&self, h: &HostModel, site: &SiteModel) -> (u16, PathBuf) {
        let listen = layered(h.listen, site.listen, self.model.listen)
            .map_or(super::DEFAULT_LISTEN, |a| a.0)
            .port();
        let data = layered(
            h.data.as_ref(),
            site.data.as_ref(),
            self.model.data.as_ref(),
        )
        .map(|d| self.rel(d))
        .unwrap_or_else(|| self.cwd.join(DEFAULT_DATA));
        (listen, data)
    }

    /// Every host of this site, with its ids and admin address (this host's own admin port
    /// as resolved, flags included).
    pub(super) fn host_plans(&self, l: &Listeners) -> Vec<HostPlan> {
        let Some(hosts) = &self.hosts else {
            return Vec::new();
        };
        plans(&hosts.list, |i| {
            if i == hosts.me {
                l.admin.listen.port()
            } else {
                self.admin_port_of(&hosts.list[i], &self.me)
            }
        })
    }

    /// The peer site's hosts, with their ids and admin addresses.
    pub(super) fn peer_host_plans(&self) -> Vec<HostPlan> {
        let (Some(hosts), Some((_, peer))) = (&self.hosts, &self.peer) else {
            return Vec::new();
        };
        let list = hosts.peer.as_deref().unwrap_or(&[]);
        plans(list, |i| self.admin_port_of(&list[i], peer))
    }

    /// With several hosts, the others call this host's admin API at `<address>:<port>`: a
    /// listener they cannot reach there is refused.
    pub(super) fn check_admin_reach(&self, l: &Listeners) -> Result<(), TopologyError> {
        let (Some(hosts), Some(h)) = (&self.hosts, self.this_host()) else {
            return Ok(());
        };
        if hosts.list.len() < 2 {
            return Ok(());
        }
        let admin = l.admin.listen;
        let address_ip = h.address.parse::<IpAddr>().ok();
        let address_is_loopback =
            address_ip.is_some_and(|ip| ip.is_loopback()) || h.address == "localhost";
        let unreachable = if admin.ip().is_unspecified() {
            false
        } else if admin.ip().is_loopback() {
            !address_is_loopback
        } else {
            address_ip.is_some_and(|ip| ip != admin.ip())
        };
        if unreachable {
            return Err(self.ctx.blame(
                &[&l.admin_o, &Origin::File(self.host_path(&["address"]))],
                format!(
                    "host {}'s admin listener {admin} is not where the other hosts of the site reach it ({}:{}): expected admin.listen on {} or 0.0.0.0 (with admin.token_file, the same token on every host)",
                    h.name,
                    h.address,
                    admin.port(),
                    h.address
                ),
            ));
        }
        Ok(())
    }

    /// Hosts with the same address (a test, a staging box) must keep their public and
    /// admin ports and their data directories apart.
    pub(super) fn check_same_address(
        &self,
        l: &Listeners,
        data: &Path,
    ) -> Result<(), TopologyError> {
        let Some(hosts) = &self.hosts else {
            return Ok(());
        };
        let side = |i: usize| -> (u16, u16, PathBuf) {
            if i == hosts.me {
                (l.listen.port(), l.admin.listen.port(), data.to_path_buf())
            } else {
                let h = &hosts.list[i];
                let (listen, data) = self.listen_and_data_of(h, &self.me);
                (listen, self.admin_port_of(h, &self.me), data)
            }
        };
        for j in 1..hosts.list.len() {
            for i in 0..j {
                let (a, b) = (&hosts.list[i], &hosts.list[j]);
                if a.address != b.address {
                    continue;
                }
                let ((la, aa, da), (lb, ab, db)) = (side(i), side(j));
                let mut problems = Vec::new();
                for (x, y, what) in [(la, lb, "public"), (aa, ab, "admin")] {
                    if x != 0 && x == y {
                        problems.push(format!("both use {x} as {what} port"));
                    }
                }
                if da == db {
                    problems.push("they use the same data directory".to_string());
                }
                if problems.is_empty() {
                    continue;
                }
                let mut at = hosts.at.clone();
                at.push(Seg::Index(j));
                return Err(self.ctx.at(
                    &at,
                    format!(
                        "hosts {} and {} have the same address {}, but {}: expected per-host listen, admin and data that keep them apart",
                        a.name,
                        b.name,
                        a.address,
                        problems.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// With sites over hosts: the peer's hosts at this host's address, each with its public
    /// port, admin port and data directory, for the two-sites-on-one-machine check.
    pub(super) fn peer_hosts_here(&self) -> Vec<(u16, u16, PathBuf)> {
        let (Some(hosts), Some(h), Some((_, peer))) = (&self.hosts, self.this_host(), &self.peer)
        else {
            return Vec::new();
        };
        hosts
            .peer
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .filter(|p| p.address == h.address)
            .map(|p| {
                let (listen, data) = self.listen_and_data_of(p, peer);
                (listen, self.admin_port_of(p, peer), data)
            })
            .collect()
    }
}
