//! The printable plan of `storeherd check`: the resolved settings, every instance, every
//! shard link, and what `up` would create or change on disk.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::instance::InstancePlan;
use super::Plan;
use crate::store::shards::Layout;

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub plan: Plan,
    /// How many instances live scaling may reach before ports clash.
    pub max_instances: u32,
    pub instances: Vec<InstanceReport>,
    pub shard_links: Vec<ShardLink>,
    /// What `up` would create or rewrite on disk, in order; it never deletes anything.
    pub changes: Vec<String>,
    /// Why `up` would refuse to start: store folders whose data is not where the shards say,
    /// or a file system of the store that loses or hides blocks between hosts (each with
    /// what to do). `check` exits 1 when there is any.
    pub conflicts: Vec<String>,
    /// Settings that could not be checked (e.g. a JuiceFS mount process not visible here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub id: u32,
    pub home: PathBuf,
    pub port: u16,
    pub eport: u16,
    pub argv: Vec<String>,
    /// `config.txt` lines as written (the replication key shown as its file).
    pub config: Vec<String>,
    pub replpeer: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardLink {
    pub range: String,
    pub link: PathBuf,
    pub target: PathBuf,
    /// `missing`, `link` (in place), `empty-directory` (replaced by the link), `wrong-link`
    /// (points elsewhere), `directory` (data to move) or `unfinished-move` (see
    /// [`crate::store::shards::EntryState::as_str`]).
    pub state: &'static str,
}

impl From<&InstancePlan> for InstanceReport {
    fn from(i: &InstancePlan) -> Self {
        InstanceReport {
            id: i.id,
            home: i.home.clone(),
            port: i.port,
            eport: i.eport,
            argv: i.argv.clone(),
            config: i.config.iter().map(|(k, v)| format!("{k}: {v}")).collect(),
            replpeer: i.replpeer().map(str::to_string),
        }
    }
}

impl Plan {
    /// The plan as `check` prints it; looks at the disk (read-only) to say what `up` would do.
    pub fn report(&self) -> PlanReport {
        let instances: Vec<InstancePlan> = self.ids().map(|id| self.instance(id)).collect();
        let layout = Layout::new(&self.store, &self.shards);
        let mut conflicts: Vec<String> = match layout.conflicts() {
            Ok(list) => list.iter().map(ToString::to_string).collect(),
            Err(e) => vec![format!("cannot inspect the store: {e}")],
        };
        let (mounts, warnings) = layout.mounts();
        conflicts.extend(mounts.iter().map(ToString::to_string));
        let shard_links = self
            .shards
            .iter()
            .flat_map(|s| {
                let range = s.range();
                let layout = &layout;
                s.links(&self.store).into_iter().map(move |(link, target)| {
                    let state = link_state(layout, &link);
                    ShardLink {
                        range: range.clone(),
                        link,
                        target,
                        state,
                    }
                })
            })
            .collect::<Vec<_>>();
        let mut changes = Vec::new();
        for (p, what) in [
            (self.data.clone(), "data directory"),
            (self.store.clone(), "store"),
            (self.homes(), "homes directory"),
        ] {
            if !p.exists() {
                changes.push(format!("create {what} {}", p.display()));
            }
        }
        for shard in &self.shards {
            let range = shard.range();
            let mine: Vec<&ShardLink> = shard_links.iter().filter(|l| l.range == range).collect();
            let missing = mine.iter().filter(|l| l.state == "missing").count();
            if missing > 0 {
                changes.push(format!(
                    "link {missing} missing folders of shard {range}: {}/XX -> {}/XX",
                    self.store.display(),
                    shard.path.display()
                ));
            }
            for l in mine.iter().filter(|l| l.state == "empty-directory") {
                changes.push(format!(
                    "replace {} (a folder without files) with its link to {}",
                    l.link.display(),
                    l.target.display()
                ));
            }
        }
        match (&self.server.tls.cert, &self.server.tls.key) {
            (Some(c), Some(k)) if c.exists() && k.exists() => {}
            (Some(c), Some(k)) => changes.push(format!(
                "generate the TLS identity into {} and {}",
                c.display(),
                k.display()
            )),
            _ => {
                let ssl = self.data.join("ssl");
                if !ssl.join("server.crt").exists() {
                    changes.push(format!("generate the TLS identity into {}", ssl.display()));
                }
            }
        }
        if !self.admin_key_file.exists() {
            changes.push(format!(
                "generate the administrator key {} (mode 600)",
                self.admin_key_file.display()
            ));
        }
        let ledger = self.ledger();
        if !ledger.exists() {
            changes.push(format!("create the accounts ledger {}", ledger.display()));
        }
        if let Some(r) = &self.replication {
            if !r.authkey_file.exists() {
                changes.push(format!(
                    "generate the replication key {} (mode 600), to be copied to site {}",
                    r.authkey_file.display(),
                    r.peer_site
                ));
            }
        }
        let repl_key = self
            .replication
            .as_ref()
            .and_then(|r| std::fs::read_to_string(&r.authkey_file).ok())
            .map(|k| k.trim().to_string());
        for i in &instances {
            if !i.home.exists() {
                changes.push(format!(
                    "create home {} (config.txt, auth.txt, ssl/, gpgtemp/, inputqueue/, sendqueue/, entangled/)",
                    i.home.display()
                ));
                continue;
            }
            let path = i.home.join("config.txt");
            let want = i.config_text(repl_key.as_deref());
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                changes.push(format!("rewrite {}", path.display()));
            }
        }
        PlanReport {
            plan: self.clone(),
            max_instances: self.max_instances(),
            instances: instances.iter().map(InstanceReport::from).collect(),
            shard_links,
            changes,
            conflicts,
            warnings,
        }
    }
}

fn link_state(layout: &Layout, link: &Path) -> &'static str {
    let prefix = link
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| u8::from_str_radix(n, 16).ok());
    match prefix.map(|p| layout.state(p)) {
        Some(Ok(state)) => state.as_str(),
        _ => "unreadable",
    }
}
