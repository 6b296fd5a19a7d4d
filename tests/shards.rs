//! Shards: a store spread over four directories. Blocks stored through `storeherd up` land
//! under their shard; `storeherd shards apply --move` moves an unsharded store into place,
//! resumes after an interruption and loses nothing; `up` refuses data outside its shard.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storeherd::protocol::compose;
use storeherd::store::shards::{Layout, MoveOptions};
use storeherd::topology::{Overrides, Plan};
use storeherd::wire::Client;
use support::procs::Reaped;
use support::up::{Ports, Topology, Up};
use support::{eventually, runtime as rt, BIN};

const BLOCKS: usize = 1000;
const T: Duration = Duration::from_secs(20);

/// Four shards of 64 first-level folders each, on four directories under `root`.
fn shards_yaml(root: &Path) -> (String, Vec<PathBuf>) {
    let dirs: Vec<PathBuf> = (1..=4).map(|i| root.join(format!("d{i}"))).collect();
    let mut yaml = String::from("shards:\n");
    for (i, d) in dirs.iter().enumerate() {
        let first = i * 64;
        yaml.push_str(&format!(
            "  - {{ range: {:02X}-{:02X}, path: {} }}\n",
            first,
            first + 63,
            d.display()
        ));
    }
    (yaml, dirs)
}

/// The shard directory (of `dirs`) that holds key `k`.
fn shard_of<'a>(dirs: &'a [PathBuf], k: &str) -> &'a Path {
    let first = u8::from_str_radix(&k[0..2], 16).unwrap();
    &dirs[usize::from(first / 64)]
}

fn rel(k: &str) -> PathBuf {
    Path::new(&k[0..2]).join(&k[2..4]).join(k)
}

fn blocks(tag: &str) -> Vec<(String, Vec<u8>)> {
    let now = chrono::Utc::now();
    (0..BLOCKS)
        .map(|i| compose::data_block(format!("{tag} block {i}").as_bytes(), now))
        .collect()
}

/// Stores every block through `addr` on 4 connections, pipelined in batches of 50; every
/// upload must be answered `DONE`.
async fn store_all(addr: SocketAddr, blocks: &[(String, Vec<u8>)]) {
    let chunks: Vec<Vec<(String, Vec<u8>)>> =
        blocks.chunks(BLOCKS / 4).map(<[_]>::to_vec).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, T).await.unwrap();
            for batch in chunk.chunks(50) {
                for (k, b) in batch {
                    c.queue_upload(&format!("STORE SERVER {k}"), b).unwrap();
                }
                c.flush().await.unwrap();
                for (k, _) in batch {
                    assert_eq!(c.read_line().await.unwrap(), "DONE", "storing {k}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits (bounded) until every block's file exists under `root_of(key)`.
fn wait_files(blocks: &[(String, Vec<u8>)], root_of: impl Fn(&str) -> PathBuf, up: &Up) {
    let what = up.with_log("every block reaches the store");
    eventually(Duration::from_secs(120), what, || {
        let missing = blocks
            .iter()
            .filter(|(k, _)| !root_of(k).join(rel(k)).is_file())
            .count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} blocks missing"))
        }
    });
}

/// Every block readable by GET through the proxy, byte for byte.
async fn get_all(up: &Up, blocks: &[(String, Vec<u8>)]) {
    let mut c = up.admin_session(up.listen).await;
    for (k, b) in blocks {
        let got = c.get(k, None).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b[..]), "GET {k}");
    }
}

/// Every first-level entry of the store is the planned link.
fn assert_all_linked(store: &Path, dirs: &[PathBuf]) {
    for b in 0..=255u8 {
        let name = format!("{b:02X}");
        let link = store.join(&name);
        let target = dirs[usize::from(b / 64)].join(&name);
        assert_eq!(
            std::fs::read_link(&link).ok().as_deref(),
            Some(target.as_path()),
            "{}",
            link.display()
        );
    }
}

fn shards_apply(file: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["shards", "apply"])
        .args(extra)
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `storeherd up -f file`, which must exit by itself (bounded): its status and stderr.
fn up_expecting_exit(file: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Reaped(
        Command::new(BIN)
            .arg("up")
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = child.exit_within(T).unwrap_or_else(|| {
        panic!("`storeherd up` kept running although the store does not match its shards")
    });
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn stored_blocks_land_under_their_shard() {
    let shard_root = tempfile::tempdir().unwrap();
    let (yaml, dirs) = shards_yaml(shard_root.path());
    let up = Up::start(2, &yaml);
    up.wait_ready(2);
    let store = up.data().join("store");
    assert_all_linked(&store, &dirs);
    let blocks = blocks("sharded");
    let rt = rt();
    rt.block_on(store_all(up.listen, &blocks));
    wait_files(&blocks, |k| shard_of(&dirs, k).to_path_buf(), &up);
    for (k, b) in &blocks {
        let at = shard_of(&dirs, k).join(rel(k));
        assert_eq!(std::fs::read(&at).unwrap(), *b, "{}", at.display());
        // Under no other shard.
        for d in dirs.iter().filter(|d| d.as_path() != shard_of(&dirs, k)) {
            assert!(!d.join(rel(k)).exists());
        }
    }
    // The blocks spread over all four shards, and the store itself holds only links.
    for d in &dirs {
        let n = blocks
            .iter()
            .filter(|(k, _)| shard_of(&dirs, k) == d.as_path())
            .count();
        assert!(n > 100, "{n} blocks under {}", d.display());
    }
    assert_all_linked(&store, &dirs);
    rt.block_on(get_all(&up, &blocks));
}

#[test]
fn apply_move_from_an_unsharded_store_resumes_and_loses_nothing() {
    let shard_root = tempfile::tempdir().unwrap();
    let (yaml, dirs) = shards_yaml(shard_root.path());
    let mut up = Up::start(2, "");
    up.wait_ready(2);
    let store = up.data().join("store");
    let blocks = blocks("unsharded");
    let rt = rt();
    rt.block_on(store_all(up.listen, &blocks));
    wait_files(&blocks, |_| store.clone(), &up);

    // The topology gets shards; moving is refused while storeherd runs.
    let mut text = std::fs::read_to_string(&up.file).unwrap();
    text.push_str(&yaml);
    std::fs::write(&up.file, &text).unwrap();
    let out = shards_apply(&up.file, &["--move"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("storeherd is running"), "{err}");
    assert!(
        store.join("00").is_dir() && !dirs[0].exists(),
        "nothing moved"
    );
    let st = up.terminate(Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "{}", up.log());

    // An interrupted move: stopped after 400 files, with some copies made at both ends.
    let plan = Plan::load(Some(&up.file), None, &Overrides::default()).unwrap();
    let layout = Layout::new(&plan.store, &plan.shards);
    let r = layout
        .apply_move(
            MoveOptions {
                limit: Some(400),
                ..MoveOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
    assert!(r.interrupted && r.files_moved == 400, "{r:?}");
    for (k, _) in &blocks {
        assert!(
            store.join(rel(k)).is_file() || shard_of(&dirs, k).join(rel(k)).is_file(),
            "block {k} lost"
        );
    }

    // `up` and `check` refuse the half-moved store, saying what to do.
    let (status, err) = up_expecting_exit(&up.file);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is a folder holding"), "{err}");
    assert!(err.contains("storeherd shards apply --move"), "{err}");
    let check = Command::new(BIN)
        .arg("check")
        .arg("-f")
        .arg(&up.file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("would refuse to start"), "{out}");

    // The command itself, killed (SIGKILL) once it has copied more files: it resumes too.
    let mut child = Reaped(
        Command::new(BIN)
            .args(["shards", "apply", "--move", "-f"])
            .arg(&up.file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Killed once 600 blocks are in place, unless it finished first (or the wait ends).
    let placed_600 = support::until(Duration::from_secs(60), || {
        let placed = dirs
            .iter()
            .flat_map(|d| walk(d))
            .filter(|p| p.file_name().unwrap().len() == 40)
            .count();
        if placed >= 600 {
            Some(true)
        } else {
            child.0.try_wait().unwrap().map(|_| false)
        }
    });
    let killed = placed_600 == Ok(true) && {
        let _ = child.0.kill();
        child.0.wait().unwrap().code().is_none()
    };
    drop(child);
    let placed = dirs
        .iter()
        .flat_map(|d| walk(d))
        .filter(|p| p.file_name().unwrap().len() == 40)
        .count();
    eprintln!("shards apply --move killed mid-run: {killed}, {placed} blocks in their shard");
    for (k, _) in &blocks {
        assert!(
            store.join(rel(k)).is_file() || shard_of(&dirs, k).join(rel(k)).is_file(),
            "block {k} lost"
        );
    }

    // Running the command again finishes it.
    let t0 = Instant::now();
    let out = shards_apply(&up.file, &["--move"]);
    eprintln!(
        "shards apply --move finished the move in {:?}",
        t0.elapsed()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("moved"), "{text}");
    assert_all_linked(&store, &dirs);
    for (k, b) in &blocks {
        let at = shard_of(&dirs, k).join(rel(k));
        assert_eq!(std::fs::read(&at).unwrap(), *b, "{}", at.display());
    }
    let leftovers: Vec<_> = dirs
        .iter()
        .flat_map(|d| walk(d))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n != "LOCKFILE" && n.len() != 40
        })
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // Again: nothing left to do.
    let out = shards_apply(&up.file, &["--move"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved 0 file(s)"));

    // Started again on the moved store: every block readable through the proxy.
    let again = restart(&mut up);
    rt.block_on(get_all(&again, &blocks));
}

#[test]
fn up_refuses_data_outside_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, dirs) = shards_yaml(dir.path());
    let data = dir.path().join("data");
    let store = data.join("store");
    // 3A holds a block in the store itself; C1 links to another place; 41 is fine.
    let key = format!("3AB0{}", "7".repeat(36));
    std::fs::create_dir_all(store.join("3A/B0")).unwrap();
    std::fs::write(store.join("3A/B0").join(&key), "block").unwrap();
    std::fs::create_dir_all(dir.path().join("old/C1")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("old/C1"), store.join("C1")).unwrap();
    let file = dir.path().join("storeherd.yaml");
    let p = Ports::free(1);
    std::fs::write(
        &file,
        format!(
            "listen: {}\nadmin: {{ listen: {} }}\ninstances: 1\ndata: {}\nports: {{ server: {}, entangled: {} }}\n{yaml}",
            p.listen,
            p.admin,
            data.display(),
            p.sport,
            p.eport
        ),
    )
    .unwrap();
    let (status, err) = up_expecting_exit(&file);
    assert_eq!(status.code(), Some(1), "{err}");
    let want = [
        format!(
            "{} is a folder holding 1 file(s), but shard 00-3F puts it at {}",
            store.join("3A").display(),
            dirs[0].join("3A").display()
        ),
        format!(
            "{} links to {}, but shard C0-FF puts it at {}",
            store.join("C1").display(),
            dir.path().join("old/C1").display(),
            dirs[3].join("C1").display()
        ),
        "not starting any instance".to_string(),
        "storeherd shards apply --move".to_string(),
        "ln -sfn".to_string(),
    ];
    for w in &want {
        assert!(err.contains(w.as_str()), "missing {w:?} in:\n{err}");
    }
    // Nothing was started and nothing changed: no home, no link, the block in place.
    assert!(!data.join("homes/1").exists());
    assert!(std::fs::symlink_metadata(store.join("00")).is_err());
    assert_eq!(
        std::fs::read_to_string(store.join("3A/B0").join(&key)).unwrap(),
        "block"
    );

    // `shards apply` without --move links what it can and names what needs moving.
    let out = shards_apply(&file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--move"));
    assert!(store.join("00").is_symlink());
    // With --move, the block goes to its shard and the wrong link is redone.
    let out = shards_apply(&file, &["--move"]);
    support::succeeded(&out);
    assert_all_linked(&store, &dirs);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join(rel(&key))).unwrap(),
        "block"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A new `storeherd up` on the same data and shards as the stopped `up`, on fresh ports:
/// while it was stopped, another process may have taken one of the old ones.
fn restart(up: &mut Up) -> Up {
    let dir = std::mem::replace(&mut up.dir, tempfile::tempdir().unwrap());
    let text = std::fs::read_to_string(&up.file).unwrap();
    let shards = &text[text.find("shards:").unwrap()..];
    let mut again = Topology::new(2)
        .extra(shards)
        .launch_in(dir, up.file.clone());
    again.wait_admin();
    again.wait_ready(2);
    again
}
