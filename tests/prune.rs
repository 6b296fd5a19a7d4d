//! `storeherd prune`: storutil's rules on a store filled through a real `storeherd store`
//! server (and, where the protocol cannot, with files in the original's format), reads during
//! a prune, and the supervisor's schedule with several instances.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use storeherd::protocol::compose;
use storeherd::server::validate::{validate_merge, Limits};
use storeherd::wire::Client;
use support::store::{Options, TestServer, USER, USER_KEY};

const WAIT: Duration = Duration::from_secs(60);
const DAY: i64 = 86_400;
const USER2: &str = "AABBCCDDEEFF00112233445566778899AABBCCDD";
const USER2_KEY: &str = "USER2KEY0123456789";

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::seconds(days * DAY)
}

fn storeherd(args: &[&str]) -> Output {
    Command::new(support::BIN)
        .args(args)
        .env("STOREHERD_LOG", "warn")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// Every file under `dir` with its content, but the site lock (a dry run takes it too).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with("upkeep.lock") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn block_path(root: &Path, key: &str) -> PathBuf {
    root.join(&key[0..2]).join(&key[2..4]).join(key)
}

fn put(root: &Path, key: &str, bytes: &[u8]) {
    let p = block_path(root, key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A key announcement as the stock client signs it, reduced to what a prune reads (the server
/// needs a real OpenPGP signature; the prune reads Type and Date only).
fn key_announcement(date: DateTime<Utc>) -> Vec<u8> {
    format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nProofOfWork: bd,1,2\nType: key-announcement\n\
         Version: 1\nDate: {}\nExpires: {}\n\n- -----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxyz\n\
         - -----END PGP PUBLIC KEY BLOCK-----\n-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n",
        compose::format_dt(date),
        compose::format_dt(date + TimeDelta::days(7))
    )
    .into_bytes()
}

/// An entangled value file (docs/protocol.md §11) holding `value`.
fn entangled_file(value: &[u8]) -> Vec<u8> {
    let mut f = format!(
        "Source: entangled\nLastPublished: 1700000000\nOriginallyPublished: 1700000000\n\
         OriginalPublisherID: {}\nDataType: string\nData: {}\n",
        "ab".repeat(20),
        value.len()
    )
    .into_bytes();
    f.extend_from_slice(value);
    f
}

fn join(entries: &[&[u8]], sep: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(sep.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(e);
    }
    out
}

fn hashes(block: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(block)
        .lines()
        .filter_map(|l| l.strip_prefix("MessageHash: ").map(str::to_string))
        .collect()
}

async fn login(s: &TestServer, user: &str, key: &str) -> Client {
    let mut c = s.client().await;
    assert!(c.login(user, key).await.unwrap());
    c
}

#[tokio::test]
async fn prune_removes_exactly_the_expired_blocks_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = data.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let auth = format!(
        "{}{USER2} {USER2_KEY} 2026-01-01T00:00:00Z\n",
        support::store::accounts()
    );
    // The server validates with the original's ages (10 days); the topology prunes at 8.
    let s = TestServer::start_with(Options::default().auth(&auth).store(&store));
    let mut c = login(&s, USER, USER_KEY).await;
    let mut c2 = login(&s, USER2, USER2_KEY).await;

    let (d_live, b) = compose::data_block(b"live data", ago(1));
    assert!(c.store(&d_live, &b).await.unwrap());
    let (d_dead, b) = compose::data_block(b"dead data", ago(9));
    assert!(c.store(&d_dead, &b).await.unwrap());
    let (a_live, b) = compose::acknowledgment([1; 20], ago(1));
    assert!(c.store(&a_live, &b).await.unwrap());
    let (a_dead, b) = compose::acknowledgment([2; 20], ago(9));
    assert!(c.store(&a_dead, &b).await.unwrap());
    // One announcement block with two live entries and one expired; one with only expired.
    let (m_mixed, m1) = compose::message_announcement([4; 20], "in", [11; 20], &[[6; 20]], ago(1));
    let (_, m2) = compose::message_announcement([4; 20], "in", [12; 20], &[], ago(9));
    let (_, m3) = compose::message_announcement([4; 20], "in", [13; 20], &[], ago(2));
    for m in [&m1, &m2, &m3] {
        assert!(c.store(&m_mixed, m).await.unwrap());
    }
    let (m_dead, b) = compose::message_announcement([5; 20], "in", [14; 20], &[], ago(9));
    assert!(c.store(&m_dead, &b).await.unwrap());
    // Claims for one address by two users: one live, one expired; another address expired.
    let (c_mixed, cl1) = compose::address_claim(USER, "x@example.org", ago(1));
    let (_, cl2) = compose::address_claim(USER2, "x@example.org", ago(9));
    assert!(c.store(&c_mixed, &cl1).await.unwrap());
    assert!(c2.store(&c_mixed, &cl2).await.unwrap());
    let (c_dead, b) = compose::address_claim(USER, "y@example.org", ago(9));
    assert!(c.store(&c_dead, &b).await.unwrap());
    assert!(s.wait_queue_empty(WAIT));
    let mixed_before = c.get(&m_mixed, None).await.unwrap().unwrap();
    assert_eq!(
        hashes(&mixed_before).len(),
        3,
        "the server merged all three"
    );
    let claims_before = c.get(&c_mixed, None).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&claims_before).contains(USER2));

    // Key announcements need a signature to go through the protocol: files, as stored.
    let k_live = "1111111111111111111111111111111111111111";
    let k_dead = "2222222222222222222222222222222222222222";
    put(&store, k_live, &key_announcement(ago(15)));
    put(&store, k_dead, &key_announcement(ago(21)));
    // A server's temporary file and a file of no type are left alone.
    put(
        &store,
        "3333333333333333333333333333333333333333",
        b"Type: other\n",
    );
    let tmp = block_path(&store, k_dead).with_file_name("2222.99.0.tmp");
    std::fs::write(&tmp, b"Type: data\n").unwrap();

    // The shared entangled tree, in the original's format, pruned with the DHT's 10 days.
    let ent = data.join("entangled");
    let e_live = "4444444444444444444444444444444444444444";
    let e_dead = "5555555555555555555555555555555555555555";
    let e_mixed = "6666666666666666666666666666666666666666";
    let (_, b) = compose::data_block(b"dht live", ago(9));
    put(&ent, e_live, &entangled_file(&b));
    let (_, b) = compose::data_block(b"dht dead", ago(11));
    put(&ent, e_dead, &entangled_file(&b));
    let (_, em1) = compose::message_announcement([7; 20], "in", [21; 20], &[], ago(11));
    let (_, em2) = compose::message_announcement([7; 20], "in", [22; 20], &[], ago(3));
    put(
        &ent,
        e_mixed,
        &entangled_file(&join(&[&em1, &em2], "NextMessage")),
    );

    let topo = dir.path().join("t.yaml");
    std::fs::write(
        &topo,
        format!(
            "data: {}\nserver:\n  config: {{ max_age_data: 691200, max_age_ack: 691200, max_age_message: 691200, \
             max_age_claim: 691200, max_age_key: 1728000 }}\n",
            data.display()
        ),
    )
    .unwrap();
    let f = topo.to_str().unwrap();

    let before = snapshot(&data);
    let dry = json(&storeherd(&["prune", "-f", f, "--dry-run", "--json"]));
    let after = snapshot(&data);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, c)| before.get(*p) != Some(c))
        .map(|(p, _)| p)
        .chain(before.keys().filter(|p| !after.contains_key(*p)))
        .collect();
    assert!(changed.is_empty(), "a dry run changed {changed:?}");
    assert_eq!(dry["dry_run"], true);
    let wet = json(&storeherd(&["prune", "-f", f, "--json"]));
    assert_eq!(dry["store"], wet["store"], "a dry run counts the same");
    assert_eq!(dry["entangled"], wet["entangled"]);

    let t = &wet["store"]["counts"]["types"];
    let row = |ty: &str| {
        let r = &t[ty];
        [
            "examined",
            "removed",
            "rewritten",
            "entries",
            "entries_removed",
        ]
        .map(|k| r[k].as_u64().unwrap())
    };
    assert_eq!(row("data"), [2, 1, 0, 0, 0]);
    assert_eq!(row("acknowledgment"), [2, 1, 0, 0, 0]);
    assert_eq!(row("key-announcement"), [2, 1, 0, 0, 0]);
    assert_eq!(row("message-announcement"), [2, 1, 1, 4, 2]);
    assert_eq!(row("address-claim"), [2, 1, 1, 3, 2]);
    assert_eq!(wet["store"]["counts"]["other"], 1);
    let e = &wet["entangled"][0]["counts"]["types"];
    assert_eq!(e["data"]["examined"], 2);
    assert_eq!(e["data"]["removed"], 1);
    assert_eq!(e["message-announcement"]["rewritten"], 1);

    // Exactly the expired blocks are gone.
    for k in [d_live.as_str(), &a_live, &m_mixed, &c_mixed, k_live] {
        assert!(block_path(&store, k).exists(), "{k} was removed");
    }
    for k in [d_dead.as_str(), &a_dead, &m_dead, &c_dead, k_dead] {
        assert!(!block_path(&store, k).exists(), "{k} was kept");
    }
    assert!(tmp.exists(), "a server's temporary file is not touched");
    assert!(block_path(&ent, e_live).exists());
    assert!(!block_path(&ent, e_dead).exists());
    assert_eq!(
        std::fs::read(block_path(&ent, e_mixed)).unwrap(),
        entangled_file(&em2),
        "the DHT header is kept, with the new length"
    );

    // The rewritten blocks hold exactly the live entries, read through the server, and they
    // still validate: a new upload merges with both live entries.
    let mixed = c.get(&m_mixed, None).await.unwrap().unwrap();
    let want = [hex::encode([11u8; 20]), hex::encode([13u8; 20])];
    let mut got = hashes(&mixed);
    got.sort();
    assert_eq!(got, want);
    let claims =
        String::from_utf8_lossy(&c.get(&c_mixed, None).await.unwrap().unwrap()).into_owned();
    assert!(claims.contains(USER) && !claims.contains(USER2), "{claims}");
    assert!(validate_merge(
        &c_mixed,
        None,
        claims.as_bytes(),
        false,
        None,
        &Limits::default(),
        Utc::now()
    )
    .is_ok());
    let (_, m4) = compose::message_announcement([4; 20], "in", [15; 20], &[], ago(0));
    assert!(c.store(&m_mixed, &m4).await.unwrap());
    assert!(s.wait_queue_empty(WAIT));
    let merged = c.get(&m_mixed, None).await.unwrap().unwrap();
    assert_eq!(
        hashes(&merged).len(),
        3,
        "{}",
        String::from_utf8_lossy(&merged)
    );

    // The usage report sees what is left (the merge above added one announcement).
    let rep = json(&storeherd(&["report", "-f", f, "--format", "json"]));
    assert_eq!(rep[0]["tree"], "store");
    let types = &rep[0]["types"];
    assert_eq!(types["data"]["blocks"], 1);
    assert_eq!(types["key-announcement"]["blocks"], 1);
    assert_eq!(types["message-announcement"]["entries"], 3);
    assert_eq!(types["address-claim"]["entries"], 1);
    assert_eq!(rep[0]["messages"], 3);
    assert_eq!(rep[1]["tree"], "entangled");
    assert_eq!(rep[1]["types"]["data"]["blocks"], 1);
    let csv = storeherd(&["report", "-f", f, "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(
        csv.starts_with("tree,section,name,blocks,bytes,disk_bytes,entries,"),
        "{csv}"
    );
    assert!(csv.contains("\nstore,type,data,1,"), "{csv}");

    // The run is recorded for the schedule; a second prune finds nothing more to do.
    assert!(data.join("upkeep.json").exists());
    let again = json(&storeherd(&["prune", "-f", f, "--json"]));
    for ty in ["data", "message-announcement", "address-claim"] {
        assert_eq!(again["store"]["counts"]["types"][ty]["removed"], 0);
        assert_eq!(again["store"]["counts"]["types"][ty]["rewritten"], 0);
    }
}

#[test]
fn a_held_site_lock_makes_prune_report_already_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let topo = dir.path().join("t.yaml");
    std::fs::write(&topo, format!("data: {}\n", data.display())).unwrap();
    let f = topo.to_str().unwrap();
    let lock = storeherd::upkeep::SiteLock::try_acquire(&data)
        .unwrap()
        .unwrap();
    let out = storeherd(&["prune", "-f", f]);
    assert_eq!(out.status.code(), Some(75));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lock);
    assert!(storeherd(&["prune", "-f", f]).status.success());
}

#[tokio::test]
async fn reads_during_a_prune_never_see_a_torn_or_missing_block() {
    // 10,000 blocks: 1,000 announcement blocks holding a live and an expired entry (each is
    // rewritten), 1,000 expired data blocks (removed), 8,000 live data blocks (kept).
    const N: usize = 10_000;
    const REWRITTEN: usize = 1_000;
    const REMOVED: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = data.join("store");
    let (_, live) = compose::message_announcement([4; 20], "in", [1; 20], &[], ago(1));
    let (_, dead) = compose::message_announcement([4; 20], "in", [2; 20], &[], ago(11));
    let old = join(&[&live, &dead], "NextMessage");
    let (_, live_data) = compose::data_block(b"kept", ago(1));
    let (_, dead_data) = compose::data_block(b"expired", ago(11));
    let keys: Vec<String> = (0..N)
        .map(|i| hex::encode_upper(sha1_of(&i.to_le_bytes())))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let content = match i {
            i if i < REWRITTEN => &old,
            i if i < REWRITTEN + REMOVED => &dead_data,
            _ => &live_data,
        };
        put(&store, k, content);
    }
    let s = TestServer::start_with(
        Options::default()
            .auth(&support::store::accounts())
            .store(&store),
    );
    let mut c = login(&s, USER, USER_KEY).await;
    let topo = dir.path().join("t.yaml");
    std::fs::write(&topo, format!("data: {}\n", data.display())).unwrap();
    let mut prune = Command::new(support::BIN)
        .args(["prune", "--json", "-f", topo.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut reads, mut rewritten_seen) = (0u64, 0u64);
    let mut i = 0usize;
    let status = loop {
        // Mostly the blocks being rewritten; every eighth read a block that must stay.
        i += 1;
        let k = if i.is_multiple_of(8) {
            &keys[REWRITTEN + REMOVED + (i * 7919) % (N - REWRITTEN - REMOVED)]
        } else {
            &keys[(i * 7919) % REWRITTEN]
        };
        let got = c.get(k, None).await.unwrap();
        let got = got.unwrap_or_else(|| panic!("{k} missing during the prune"));
        if got == live {
            rewritten_seen += 1;
        } else if got != live_data {
            assert_eq!(got, old, "torn read of {k}");
        }
        reads += 1;
        // Paced, so that the reader leaves the prune some of the two cores.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if let Some(st) = prune.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = prune.kill();
            panic!("the prune did not end within 120 s");
        }
    };
    assert!(status.success());
    let out = prune.wait_with_output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &doc["store"]["counts"]["types"];
    assert_eq!(t["message-announcement"]["rewritten"], REWRITTEN as u64);
    assert_eq!(t["data"]["removed"], REMOVED as u64);
    assert_eq!(t["data"]["examined"], (N - REWRITTEN) as u64);
    for (i, k) in keys.iter().enumerate() {
        let got = std::fs::read(block_path(&store, k)).ok();
        let want = match i {
            i if i < REWRITTEN => Some(&live),
            i if i < REWRITTEN + REMOVED => None,
            _ => Some(&live_data),
        };
        assert_eq!(got.as_ref(), want, "{k}");
    }
    eprintln!("{reads} reads during the prune, {rewritten_seen} of rewritten blocks");
}

fn sha1_of(b: &[u8]) -> [u8; 20] {
    use sha1::Digest;
    sha1::Sha1::digest(b).into()
}

#[test]
fn each_site_prunes_its_own_store_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topo = d.join("two.yaml");
    std::fs::write(
        &topo,
        format!(
            "instances: 1\nsites:\n  a: {{ host: 127.0.0.1, data: {a} }}\n  b: {{ host: 127.0.0.2, data: {b}, ports: {{ server: 19101, entangled: 19201 }} }}\n\
             replication: {{ authkey_file: {k} }}\n",
            a = d.join("a").display(),
            b = d.join("b").display(),
            k = d.join("repl.key").display()
        ),
    )
    .unwrap();
    let (key, expired) = compose::data_block(b"expired at both sites", ago(11));
    for site in ["a", "b"] {
        put(&d.join(site).join("store"), &key, &expired);
        std::fs::create_dir_all(d.join(site).join("homes/1/sendqueue")).unwrap();
    }
    let f = topo.to_str().unwrap();
    let out = json(&storeherd(&["prune", "-f", f, "--site", "a", "--json"]));
    assert_eq!(out["store"]["counts"]["types"]["data"]["removed"], 1);
    assert!(!block_path(&d.join("a/store"), &key).exists());
    assert!(
        block_path(&d.join("b/store"), &key).exists(),
        "site b is pruned by site b only"
    );
    for site in ["a", "b"] {
        let queued = std::fs::read_dir(d.join(site).join("homes/1/sendqueue"))
            .unwrap()
            .count();
        assert_eq!(queued, 0, "a prune replicates nothing");
    }
}

#[test]
fn a_prune_and_a_shard_move_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let topo = dir.path().join("t.yaml");
    std::fs::write(
        &topo,
        format!(
            "data: {}\nadmin: {{ listen: 127.0.0.1:{} }}\nshards:\n  - {{ range: 00-7F, path: {} }}\n",
            data.display(),
            support::ports::port(),
            dir.path().join("shard").display()
        ),
    )
    .unwrap();
    let f = topo.to_str().unwrap();
    // A move holds the site lock while it runs: here, the test holds it.
    let lock = storeherd::upkeep::SiteLock::try_acquire(&data)
        .unwrap()
        .unwrap();
    let out = storeherd(&["shards", "apply", "--move", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lock);
    // An interrupted move leaves a staging folder: no prune until the move is finished.
    std::fs::create_dir_all(data.join("store/.AB.local/CD")).unwrap();
    let out = storeherd(&["prune", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unfinished `storeherd shards apply --move`"),
        "{err}"
    );
}
