//! The supervisor's scheduled prune: once per site (not per instance), once per interval,
//! excluded by a prune by hand, visible in `/status` and `/metrics`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use storeherd::control::UpkeepStatus;
use storeherd::protocol::compose;
use storeherd::upkeep::{RunRecord, Trigger};
use support::up::Up;
use support::{eventually, BIN};

fn put(root: &Path, key: &str, bytes: &[u8]) {
    let p = root.join(&key[0..2]).join(&key[2..4]).join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Polls `/status` until `done` holds for its `upkeep` section (bounded).
fn wait_upkeep(up: &Up, what: &str, done: impl Fn(&UpkeepStatus) -> bool) -> UpkeepStatus {
    let st = up.wait_status(Duration::from_secs(40), what, |st| done(&st.upkeep));
    st.upkeep
}

#[test]
fn the_schedule_prunes_the_shared_store_once_per_interval() {
    let up = Up::start(3, "upkeep: { prune_every: 2s }\n");
    up.wait_ready(3);
    let data = up.data();
    let f = up.file.to_str().unwrap().to_string();

    // Hold the site lock as a prune by hand would: the schedule waits, and so does a second
    // prune by hand.
    // (The schedule's first run, at start, may hold it for a moment.)
    let lock = eventually(Duration::from_secs(20), "the site lock is free", || {
        storeherd::upkeep::SiteLock::try_acquire(&data).unwrap()
    });
    wait_upkeep(&up, "a scheduled prune met the held lock", |u| {
        u.busy_total > 0
    });
    let out = Command::new(BIN)
        .args(["prune", "-f", &f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    // 300 blocks in the shared store (written under the lock, so no run sees half of them).
    let store = data.join("store");
    for i in 0..300u32 {
        let age = if i < 100 { 11 } else { 1 };
        let (key, block) = compose::data_block(
            format!("block {i}").as_bytes(),
            Utc::now() - TimeDelta::days(age),
        );
        put(&store, &key, &block);
    }
    let runs_before = up.status().upkeep.runs_total;
    drop(lock);

    // Each run walks the one shared store once (300 files, not 3 × 300) and starts at least
    // prune_every after the previous one ended.
    let mut records: Vec<RunRecord> = Vec::new();
    eventually(Duration::from_secs(40), "three scheduled runs", || {
        let u = up.status().upkeep;
        if u.runs_total > runs_before + records.len() as u64 {
            assert_eq!(
                u.runs_total,
                runs_before + records.len() as u64 + 1,
                "a run was missed by the poll or counted twice"
            );
            records.push(u.last.expect("a last run"));
        }
        if records.len() == 3 {
            Ok(())
        } else {
            Err(records.len())
        }
    });
    let data_counts = |r: &RunRecord| {
        let d = &r.store.counts.types["data"];
        (d.examined, d.removed)
    };
    assert_eq!(data_counts(&records[0]), (300, 100));
    assert_eq!(data_counts(&records[1]), (200, 0));
    assert_eq!(data_counts(&records[2]), (200, 0));
    for pair in records.windows(2) {
        let gap = pair[1].started_unix - pair[0].finished_unix;
        assert!(gap >= 2, "runs closer than prune_every: {pair:?}");
        assert_eq!(pair[1].trigger, Trigger::Schedule);
    }

    // A prune by hand waits for the schedule's and is recorded for the site like it.
    let out = Command::new(BIN)
        .args(["prune", "--wait", "--json", "-f", &f])
        .output()
        .unwrap();
    support::succeeded(&out);
    let manual: RunRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manual.trigger, Trigger::Manual);
    assert_eq!(data_counts(&manual), (200, 0));
    wait_upkeep(&up, "the manual run shows in /status", |u| {
        u.last
            .as_ref()
            .is_some_and(|l| l.trigger == Trigger::Manual)
            || u.runs_total > runs_before + 3
    });

    let out = up.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("prune: scheduled; last ") && text.contains("200 examined"),
        "{text}"
    );

    let (code, metrics) = up.http("GET", "/metrics", None);
    assert_eq!(code, 200);
    for want in [
        "# TYPE storeherd_prune_runs_total counter",
        "storeherd_prune_last_files{tree=\"store\",type=\"data\",action=\"examined\"} 200",
        "storeherd_prune_last_duration_seconds ",
    ] {
        assert!(metrics.contains(want), "{want} not in:\n{metrics}");
    }
}
