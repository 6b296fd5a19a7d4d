//! `cargo bench --bench prune`: blocks examined per second by `storeherd prune` on a
//! 100,000-block store, on tmpfs and on disk, beside storutil (the original's prune) on the
//! same store.
//!
//! The store: 90 % live data blocks (1 KiB payload), 5 % expired data blocks (removed), 5 %
//! message-announcement blocks with a live and an expired entry (rewritten), in the
//! original's layout, with the `LOCKFILE` that a server leaves in every leaf it wrote (on a
//! tree without them, creating 65,536 of them dominates the first real prune). Each tool runs twice on each file system: a dry run (`--dry-run`,
//! storutil's `-prune-simulate`), then a real prune on a freshly written store. The page
//! cache is warm (the store was just written, then synced); nothing here drops caches, which would slow
//! every other process on the machine.
//!
//! Environment: `PRUNE_BENCH_BLOCKS` (default 100000); `PRUNE_BENCH_TMPFS` (default
//! `/dev/shm`) and `PRUNE_BENCH_DISK` (default the temporary directory); `STORUTIL`, the path
//! of the original's `storutil.py`, and `PYTHON2` (default `python2`): the storutil columns
//! are skipped when either is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use storeherd::protocol::compose;

const BIN: &str = env!("CARGO_BIN_EXE_storeherd");

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Writes the store under `<base>/data/store` (and a storutil home beside it).
fn build(base: &Path, n: usize) {
    let store = base.join("data/store");
    let now = Utc::now();
    let (_, live_ma) = compose::message_announcement([4; 20], "in", [1; 20], &[], now);
    let (_, dead_ma) =
        compose::message_announcement([4; 20], "in", [2; 20], &[], now - TimeDelta::days(11));
    let mut ma = live_ma;
    ma.extend_from_slice(b"NextMessage\n");
    ma.extend_from_slice(&dead_ma);
    let payload = vec![b'p'; 1024];
    let live = format!(
        "Type: data\nDate: {}\nVersion: 1\nProofOfWork: bd,1,2\nData: 1024\n",
        compose::format_dt(now)
    );
    let dead = format!(
        "Type: data\nDate: {}\nVersion: 1\nProofOfWork: bd,1,2\nData: 1024\n",
        compose::format_dt(now - TimeDelta::days(11))
    );
    for i in 0..n {
        let key = hex::encode_upper(<sha1::Sha1 as sha1::Digest>::digest(i.to_le_bytes()));
        let leaf = store.join(&key[0..2]).join(&key[2..4]);
        if !leaf.is_dir() {
            std::fs::create_dir_all(&leaf).unwrap();
            std::fs::write(leaf.join("LOCKFILE"), b"").unwrap();
        }
        let content: Vec<u8> = match i % 20 {
            0 => ma.clone(),
            1 => [dead.as_bytes(), &payload].concat(),
            _ => [live.as_bytes(), &payload].concat(),
        };
        std::fs::write(leaf.join(&key), content).unwrap();
    }
    let home = base.join("home");
    std::fs::create_dir_all(home.join("entangled")).unwrap();
    std::fs::write(
        home.join("config.txt"),
        format!("alt_localstore: {}\n", store.display()),
    )
    .unwrap();
    std::fs::write(
        base.join("t.yaml"),
        format!("data: {}\n", base.join("data").display()),
    )
    .unwrap();
    // Written back before the clock starts: otherwise the first `syncfs` of a prune pays for
    // writing the whole new store, which storutil (it never syncs) leaves to the kernel.
    storeherd::store::syncfs(base).unwrap();
}

/// `storeherd prune` on the store: (seconds, files examined).
fn ours(base: &Path, dry: bool) -> (f64, u64) {
    let t = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(["prune", "--json", "-f"]).arg(base.join("t.yaml"));
    if dry {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types = doc["store"]["counts"]["types"].as_object().unwrap();
    let examined = types
        .values()
        .map(|t| t["examined"].as_u64().unwrap())
        .sum();
    (secs, examined)
}

/// storutil on the same store: seconds, or `None` when it is not available.
fn storutil(base: &Path, dry: bool, python: &str, script: &Path) -> Option<f64> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("-homedir")
        .arg(base.join("home"))
        .arg("-prune-localstore")
        .current_dir(script.parent()?);
    if dry {
        cmd.arg("-prune-simulate");
    }
    let t = Instant::now();
    let out = cmd.output().ok()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!("storutil failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(secs)
}

fn main() {
    let n: usize = env_or("PRUNE_BENCH_BLOCKS", "100000").parse().unwrap();
    let python = env_or("PYTHON2", "python2");
    let script = std::env::var("STORUTIL").ok().map(PathBuf::from);
    let have_storutil = script.as_ref().is_some_and(|s| s.exists())
        && Command::new(&python).arg("-V").output().is_ok();
    if !have_storutil {
        println!("storutil: skipped (set STORUTIL=/path/to/storutil.py and PYTHON2)");
    }
    let places = [
        (
            "tmpfs",
            PathBuf::from(env_or("PRUNE_BENCH_TMPFS", "/dev/shm")),
        ),
        (
            "disk",
            PathBuf::from(env_or(
                "PRUNE_BENCH_DISK",
                &std::env::temp_dir().display().to_string(),
            )),
        ),
    ];
    println!("{n} blocks: 90% live data (1 KiB), 5% expired data, 5% announcements to rewrite");
    println!(
        "{:<6} {:<8} {:>22} {:>22}",
        "where", "run", "storeherd blocks/s", "storutil blocks/s"
    );
    for (name, dir) in places {
        if !dir.is_dir() {
            println!("{name}: {} missing, skipped", dir.display());
            continue;
        }
        for dry in [true, false] {
            let base = tempfile::tempdir_in(&dir).unwrap();
            build(base.path(), n);
            let (secs, examined) = ours(base.path(), dry);
            assert_eq!(examined, n as u64);
            let theirs = if have_storutil {
                // A fresh copy of the store for a real prune: the first one was pruned.
                let other = tempfile::tempdir_in(&dir).unwrap();
                if !dry {
                    build(other.path(), n);
                }
                let at = if dry { base.path() } else { other.path() };
                storutil(at, dry, &python, script.as_deref().unwrap_or(Path::new("")))
            } else {
                None
            };
            println!(
                "{name:<6} {:<8} {:>22.0} {:>22}",
                if dry { "dry-run" } else { "prune" },
                n as f64 / secs,
                theirs.map_or("-".to_string(), |s| format!("{:.0}", n as f64 / s))
            );
        }
    }
}
