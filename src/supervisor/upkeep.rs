//! The site's scheduled prune (topology `upkeep`): one task per supervisor, so once per site
//! whatever the number of instances. The walk runs on a blocking thread, never on the
//! reconcile loop, so health checks and the proxy go on while it works.
//!
//! A prune is due `prune_every` after the last recorded one ended (`<data>/upkeep.json`,
//! which a prune by hand writes too), at once when there is no record; and, with
//! `prune_when_disk_above`, when a file system of the store is fuller than that (checked
//! every [`DISK_CHECK_EVERY`], at most once per [`DISK_GAP`] after the last run). A prune
//! already holding the site lock (by hand, or a shard move) makes the schedule wait and try
//! again shortly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::control::UpkeepStatus;
use crate::topology::Plan;
use crate::upkeep::{self, SiteLock, Trigger, UpkeepError};

pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(60);
pub const DISK_GAP: Duration = Duration::from_secs(3600);
/// How often the last run is read again from `<data>/upkeep.json` for `/status` (a prune by
/// hand writes it).
const RECORD_REFRESH: Duration = Duration::from_secs(30);
/// Wait after finding the lock held.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Wait after a failed prune before the next try.
const FAILURE_RETRY: Duration = Duration::from_secs(60);

pub struct Upkeep {
    pub status: Arc<Mutex<UpkeepStatus>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upkeep {
    pub fn spawn(plan_rx: watch::Receiver<Arc<Plan>>) -> Upkeep {
        let status = Arc::new(Mutex::new(UpkeepStatus::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(schedule(plan_rx, status.clone(), stop.clone()));
        Upkeep { status, stop, task }
    }

    /// The status to publish.
    pub fn snapshot(&self) -> UpkeepStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops scheduling; a running walk ends after its current first-level folder.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

fn update(status: &Mutex<UpkeepStatus>, f: impl FnOnce(&mut UpkeepStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

enum Outcome {
    Done(Box<upkeep::RunRecord>),
    Busy,
    Failed(String),
}

async fn schedule(
    mut plan_rx: watch::Receiver<Arc<Plan>>,
    status: Arc<Mutex<UpkeepStatus>>,
    stop: Arc<AtomicBool>,
) {
    let mut pause: Option<Duration> = None;
    loop {
        let plan = plan_rx.borrow_and_update().clone();
        let up = plan.upkeep;
        let record = {
            let data = plan.data.clone();
            tokio::task::spawn_blocking(move || upkeep::last_record(&data))
                .await
                .ok()
                .flatten()
        };
        let now_ms = Utc::now().timestamp_millis();
        let last_end_ms = record.as_ref().map(|r| r.finished_unix * 1000);
        let due_ms = up.prune_every.map(|every| {
            let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            last_end_ms.map_or(now_ms, |end| end.saturating_add(every))
        });
        update(&status, |s| {
            s.scheduled = up.prune_every.is_some() || up.prune_when_disk_above.is_some();
            s.next_due_unix = due_ms.map(|d| d.div_euclid(1000));
            s.last = record.clone();
        });
        let mut wait =
            due_ms.map(|d| Duration::from_millis(u64::try_from(d - now_ms).unwrap_or(0)));
        if up.prune_when_disk_above.is_some() {
            wait = Some(wait.map_or(DISK_CHECK_EVERY, |w| w.min(DISK_CHECK_EVERY)));
        }
        let mut wait = wait.map_or(RECORD_REFRESH, |w| w.min(RECORD_REFRESH));
        if let Some(p) = pause.take() {
            wait = wait.max(p);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = plan_rx.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        let now_ms = Utc::now().timestamp_millis();
        let trigger = if due_ms.is_some_and(|d| d <= now_ms) {
            Trigger::Schedule
        } else if let Some(limit) = up.prune_when_disk_above {
            let gap_ok = last_end_ms.is_none_or(|end| {
                now_ms - end >= i64::try_from(DISK_GAP.as_millis()).unwrap_or(i64::MAX)
            });
            let p = plan.clone();
            let fullest = tokio::task::spawn_blocking(move || upkeep::fullest_disk(&p))
                .await
                .ok()
                .flatten();
            match fullest {
                Some((path, pct)) if gap_ok && pct > limit => {
                    info!(path = %path.display(), used = pct, limit, "disk over the upkeep limit: pruning");
                    Trigger::Disk
                }
                _ => continue,
            }
        } else {
            continue;
        };
        update(&status, |s| s.running = true);
        let p = plan.clone();
        let st = stop.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let lock = match SiteLock::try_acquire(&p.data) {
                Ok(Some(l)) => l,
                Ok(None) => return Outcome::Busy,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            match upkeep::prune_site(&p, &lock, trigger, false, &st, &mut |_, _| {}) {
                Ok(r) => Outcome::Done(Box::new(r)),
                Err(UpkeepError::Busy(_)) => Outcome::Busy,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|e| Outcome::Failed(format!("the prune thread ended: {e}")));
        update(&status, |s| s.running = false);
        match outcome {
            Outcome::Done(r) => {
                let t = r.total().totals();
                info!(
                    trigger = ?r.trigger,
                    ms = r.duration_ms,
                    examined = t.examined,
                    removed = t.removed,
                    rewritten = t.rewritten,
                    bytes_freed = t.bytes_freed,
                    "prune done"
                );
                update(&status, |s| {
                    s.runs_total += 1;
                    s.last_error = None;
                    s.last = Some(*r);
                });
            }
            Outcome::Busy => {
                info!("a prune or a shard move holds the site lock: the scheduled prune waits");
                update(&status, |s| s.busy_total += 1);
                pause = Some(BUSY_RETRY);
            }
            Outcome::Failed(e) => {
                warn!("scheduled prune failed: {e}");
                update(&status, |s| {
                    s.failures_total += 1;
                    s.last_error = Some(e);
                });
                pause = Some(FAILURE_RETRY);
            }
        }
    }
}
