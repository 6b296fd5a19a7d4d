//! Site upkeep: the prune and the usage report of a site's store (`prune`, `report`),
//! and one prune of a site's store and entangled trees at a time, whoever starts it
//! (`storeherd prune` by hand, or the supervisor's schedule).
//!
//! - The lock is `<data>/upkeep.lock` (an OFD lock, as the leaf locks): a prune and a
//!   `shards apply --move` hold it, so neither runs during the other, nor two prunes.
//! - What a prune covers: the plan's store (shard links followed) with the plan's
//!   `server.config` `max_age_*` ages, and each entangled tree once — `<data>/entangled` and
//!   any home's own `entangled/` folder (not a link to the shared one) — with the DHT's fixed
//!   ages, as storutil does (docs/protocol.md §12.1).
//! - The last run is kept in `<data>/upkeep.json`, so that the schedule counts from it across
//!   restarts and a run by hand postpones the scheduled one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::dt::format_dt;
use crate::server::config::Config;
use crate::server::validate::Limits;
use crate::store::lock::LeafLock;
use crate::store::shards::{ConflictKind, EntryState, Layout};
use crate::store::{walk, StoreError};
use crate::topology::Plan;
use prune::{PruneCounts, PruneOptions, Pruner};

pub mod prune;
pub mod report;

pub const LOCK_FILE: &str = "upkeep.lock";
pub const RECORD_FILE: &str = "upkeep.json";

#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    #[error("a prune or a shard move is already running on this site (it holds {0})")]
    Busy(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the max_age_* keys of server.config: {0}")]
    Config(String),
    #[error(
        "{staging} is left by an unfinished `storeherd shards apply --move`: run that again to \
         finish the move, then prune"
    )]
    MoveUnfinished { staging: PathBuf },
    #[error("writing {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held site lock; released when dropped.
#[derive(Debug)]
pub struct SiteLock {
    _lock: LeafLock,
}

impl SiteLock {
    fn path(data: &Path) -> Result<PathBuf, StoreError> {
        std::fs::create_dir_all(data).map_err(StoreError::at(data))?;
        Ok(data.join(LOCK_FILE))
    }

    /// Takes the lock if it is free.
    pub fn try_acquire(data: &Path) -> Result<Option<SiteLock>, StoreError> {
        let path = Self::path(data)?;
        Ok(LeafLock::try_acquire(&path)?.map(|l| SiteLock { _lock: l }))
    }

    /// Takes the lock, or fails at once with [`UpkeepError::Busy`].
    pub fn acquire_now(data: &Path) -> Result<SiteLock, UpkeepError> {
        Self::try_acquire(data)?.ok_or_else(|| UpkeepError::Busy(data.join(LOCK_FILE)))
    }

    /// Waits for the lock.
    pub fn acquire(data: &Path) -> Result<SiteLock, StoreError> {
        let path = Self::path(data)?;
        Ok(SiteLock {
            _lock: LeafLock::acquire(&path)?,
        })
    }
}

/// The ages of the local store: the plan's `server.config` `max_age_*` lines, read by the
/// same parser as the server's `config.txt`.
pub fn limits(plan: &Plan) -> Result<Limits, UpkeepError> {
    let text: String = plan
        .server
        .config
        .iter()
        .filter(|(k, _)| k.starts_with("max_age_"))
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect();
    Config::parse(Path::new("server.config"), &text)
        .map(|l| l.config.limits)
        .map_err(|e| UpkeepError::Config(e.to_string()))
}

/// The entangled trees of the site, each once: `<data>/entangled` and every home's own
/// `entangled/` folder that is not the shared one.
pub fn entangled_trees(plan: &Plan) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |p: PathBuf| {
        if let Ok(real) = p.canonicalize() {
            if real.is_dir() && seen.insert(real) {
                out.push(p);
            }
        }
    };
    add(plan.data.join("entangled"));
    if let Ok(homes) = std::fs::read_dir(plan.homes()) {
        let mut homes: Vec<PathBuf> = homes.flatten().map(|e| e.path()).collect();
        homes.sort();
        for h in homes {
            add(h.join("entangled"));
        }
    }
    out
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Manual,
    Schedule,
    Disk,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Disk => "disk",
        }
    }
}

/// One finished run (`<data>/upkeep.json`, `/status`, `storeherd prune --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start time, `DT` text.
    pub started: String,
    pub started_unix: i64,
    pub finished_unix: i64,
    pub duration_ms: u64,
    pub trigger: Trigger,
    pub dry_run: bool,
    /// Stopped before the end (supervisor shutdown): the counts cover what was done.
    pub interrupted: bool,
    /// Trees walked: the store, then the entangled trees.
    pub store: TreeRun,
    pub entangled: Vec<TreeRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRun {
    pub root: String,
    pub counts: PruneCounts,
}

impl RunRecord {
    /// Store and entangled counts added up.
    pub fn total(&self) -> PruneCounts {
        let mut t = self.store.counts.clone();
        for e in &self.entangled {
            t.add(&e.counts);
        }
        t
    }
}

/// Refuses when a move left a staging folder (its files are in neither place yet).
fn check_no_move(plan: &Plan) -> Result<(), UpkeepError> {
    let layout = Layout::new(&plan.store, &plan.shards);
    for prefix in 0..=255u8 {
        if let EntryState::Conflict(ConflictKind::UnfinishedMove { staging }) =
            layout.state(prefix)?
        {
            return Err(UpkeepError::MoveUnfinished { staging });
        }
    }
    Ok(())
}

/// Progress of [`prune_site`]: first-level folders done out of all, over every tree.
pub type ProgressFn<'a> = dyn FnMut(u64, u64) + Send + 'a;

/// Prunes the site (the caller holds its lock). `stop` ends the run between two first-level
/// folders. A run that is not dry is recorded in `<data>/upkeep.json`.
pub fn prune_site(
    plan: &Plan,
    _lock: &SiteLock,
    trigger: Trigger,
    dry_run: bool,
    stop: &AtomicBool,
    progress: &mut ProgressFn<'_>,
) -> Result<RunRecord, UpkeepError> {
    check_no_move(plan)?;
    let t0 = std::time::Instant::now();
    let now: DateTime<Utc> = Utc::now();
    let store_limits = limits(plan)?;
    let mut trees: Vec<(PathBuf, Limits)> = vec![(plan.store.clone(), store_limits)];
    for e in entangled_trees(plan) {
        // The DHT tree always uses the constants (storutil reads no config for it).
        trees.push((e, Limits::default()));
    }
    let mut folders = Vec::new();
    for (root, _) in &trees {
        folders.push(walk::first_level(root)?);
    }
    let total: u64 = folders.iter().map(|f| f.len() as u64).sum();
    progress(0, total);
    let mut done = 0;
    let mut interrupted = false;
    let mut runs = Vec::new();
    for ((root, limits), l1s) in trees.iter().zip(&folders) {
        let opts = PruneOptions {
            limits: *limits,
            now,
            dry_run,
        };
        let mut pruner = Pruner::new(root, opts);
        for l1 in l1s {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            pruner.first_level(l1)?;
            done += 1;
            progress(done, total);
        }
        runs.push(TreeRun {
            root: root.display().to_string(),
            counts: pruner.finish()?,
        });
    }
    let mut runs = runs.into_iter();
    let store = runs.next().unwrap_or(TreeRun {
        root: plan.store.display().to_string(),
        counts: PruneCounts::default(),
    });
    let finished = Utc::now();
    let record = RunRecord {
        started: format_dt(now),
        started_unix: now.timestamp(),
        finished_unix: finished.timestamp(),
        duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        trigger,
        dry_run,
        interrupted,
        store,
        entangled: runs.collect(),
    };
    if !dry_run {
        write_record(&plan.data, &record)?;
    }
    Ok(record)
}

fn write_record(data: &Path, record: &RunRecord) -> Result<(), UpkeepError> {
    let path = data.join(RECORD_FILE);
    let text = serde_json::to_vec_pretty(record).map_err(|e| UpkeepError::Record {
        path: path.clone(),
        source: e.into(),
    })?;
    crate::store::replace_file(&path, &text, 0o644).map_err(|source| UpkeepError::Record {
        path: path.clone(),
        source,
    })
}

/// The last recorded run, if any (an unreadable record counts as none).
pub fn last_record(data: &Path) -> Option<RunRecord> {
    let text = std::fs::read(data.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The fullest file system holding the site's trees, as (path, percent used), with "used"
/// as `df` counts it (blocks reserved for root count as not available).
pub fn fullest_disk(plan: &Plan) -> Option<(PathBuf, u8)> {
    let mut paths = vec![plan.store.clone(), plan.data.join("entangled")];
    paths.extend(plan.shards.iter().map(|s| s.path.clone()));
    paths
        .into_iter()
        .filter_map(|p| {
            let s = nix::sys::statvfs::statvfs(&p).ok()?;
            let used = s.blocks().saturating_sub(s.blocks_free());
            let avail = s.blocks_available();
            let all = used + avail;
            (all > 0).then(|| {
                let pct = (u128::from(used) * 100).div_ceil(u128::from(all));
                (p, u8::try_from(pct.min(100)).unwrap_or(100))
            })
        })
        .max_by_key(|(_, pct)| *pct)
}
