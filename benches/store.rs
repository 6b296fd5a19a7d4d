//! `cargo bench --bench store`: one real `storeherd store` server; STORE SERVER of 4 KiB data
//! blocks and GET SERVER, with 1 and 16 connections. Reports blocks/s *processed* (acknowledged,
//! stored by the worker and readable: the clock stops when `inputqueue/` is empty) and the
//! latency percentiles of each request (hdrhistogram). Proofs of work are computed before the
//! clock starts.
//!
//! Environment: `STORE_BENCH_BLOCKS` (blocks per connection for 16 connections, default 1500),
//! `STORE_BENCH_ROUNDS` (STORE rounds with 16 connections, fresh blocks each, on the same
//! server; default 3, and the median is printed).
//!
//! `STORE_BENCH_BASELINE=BIN`: instead, this build against another `storeherd` binary (built
//! from an older commit) in one run, round by round, and their ratio (see `compare_mode`).
//!
//! `STORE_BENCH_LOCKS=1`: instead, the cost of the publisher's check that a leaf lock is
//! still held (`LeafLock::verify`, made once per leaf of every batch), in `/dev/shm` and in
//! the temporary folder (`TMPDIR`), per call and beside taking the lock itself.
//!
//! `STORE_BENCH_NOTIFY=1`: instead, message announcements for a recipient that `notify.txt`
//! subscribes, with 16 connections, on a server without `notify.txt` and on one whose
//! SMTP server is dead (a loopback port that takes connections and never answers): the
//! notifier must not slow the worker down.
//!
//! On a file system without a journal (this development machine's), ext4 skips inodes freed
//! in the last minutes when it allocates new ones, scanning past each of them: right after a
//! large deletion (such as the previous run's store, removed when it ends) file creation —
//! and so this benchmark — is several times slower for some minutes. Rounds within one run
//! delete nothing, and `STORE_BENCH_DIR=DIR` keeps the server's home (a new folder in DIR)
//! after the run instead of deleting it, so that back-to-back runs do not slow each other;
//! delete DIR when done.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use storeherd::protocol::compose;
use storeherd::server::identity::Identity;
use storeherd::wire::Client;

const USER: &str = "00112233445566778899AABBCCDDEEFF00112233";
const USER_KEY: &str = "USERKEY0123456789";

/// One `storeherd store` process in `home` on a free loopback port, with [`USER`] in its
/// `auth.txt`; killed when dropped.
struct Server {
    child: Child,
    home: PathBuf,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// In a new temporary home.
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(&dir.path().join("home"));
        s._dir = Some(dir);
        s
    }

    fn start_in(home: &Path) -> Server {
        Server::start_program(Path::new(env!("CARGO_BIN_EXE_storeherd")), home)
    }

    /// `program store --homedir <home>`, for a comparison with another build.
    fn start_program(program: &Path, home: &Path) -> Server {
        std::fs::create_dir_all(home).unwrap();
        Identity::generate("storeherd-bench")
            .unwrap()
            .install(&home.join("ssl"))
            .unwrap();
        std::fs::write(
            home.join("auth.txt"),
            format!("{USER} {USER_KEY} 2026-01-01T00:00:00Z\n"),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // eport 0: the DHT node takes a free UDP port.
        std::fs::write(
            home.join("config.txt"),
            format!("sport: {port}\neport: 0\nlisten_address: 127.0.0.1\nmax_connections: 100\n"),
        )
        .unwrap();
        let log = std::fs::File::create(home.join("server.log")).unwrap();
        let child = Command::new(program)
            .arg("store")
            .arg("--homedir")
            .arg(home)
            .env("STOREHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Server {
            child,
            home: home.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: None,
        };
        // Up once it greets (bounded).
        let start = Instant::now();
        while std::net::TcpStream::connect(s.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the store server did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        s
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("server.log")).unwrap_or_default()
    }

    /// Waits (bounded) until every acknowledged upload has been processed.
    fn wait_queue_empty(&self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            let n = std::fs::read_dir(self.home.join("inputqueue"))
                .map(|d| d.count())
                .unwrap_or(0);
            if n == 0 && storeherd::store::queued_uploads(&self.home) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Blocks = Arc<Vec<(String, Vec<u8>)>>;

fn make_blocks(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    let now = Utc::now();
    let threads = 2;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                (0..n)
                    .filter(|i| i % threads == t)
                    .map(|i| {
                        let mut p = format!(
                            "bench block {i} {} ",
                            now.timestamp_nanos_opt().unwrap_or(0)
                        )
                        .into_bytes();
                        p.resize(size, b'a' + (i % 26) as u8);
                        compose::data_block(&p, now)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

async fn login(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(c.login(USER, USER_KEY).await.unwrap());
    c
}

fn report(op: &str, conns: usize, n: usize, elapsed: Duration, h: &Histogram<u64>, extra: &str) {
    println!(
        "{op:<5} conns={conns:<2} blocks={n:<6} {:>9.0} blocks/s  latency µs p50={} p90={} p99={} p99.9={} max={}  {extra}",
        n as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
}

/// Returns the processed blocks per second.
async fn run_store(s: &Server, blocks: &Blocks, conns: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (blocks, addr) = (blocks.clone(), s.addr());
        tasks.push(tokio::spawn(async move {
            let mut cl = login(addr).await;
            let mut h = Histogram::<u64>::new(3).unwrap();
            for i in (c..blocks.len()).step_by(conns) {
                let t = Instant::now();
                assert!(cl.store(&blocks[i].0, &blocks[i].1).await.unwrap());
                h.record(t.elapsed().as_micros() as u64).unwrap();
            }
            h
        }));
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        h.add(t.await.unwrap()).unwrap();
    }
    let acked = start.elapsed();
    assert!(
        s.wait_queue_empty(Duration::from_secs(600)),
        "queue not drained"
    );
    let processed = start.elapsed();
    let rate = blocks.len() as f64 / processed.as_secs_f64();
    report(
        "STORE",
        conns,
        blocks.len(),
        processed,
        &h,
        &format!(
            "(all DONE after {:.2}s = {:.0}/s acknowledged; processed after {:.2}s)",
            acked.as_secs_f64(),
            blocks.len() as f64 / acked.as_secs_f64(),
            processed.as_secs_f64()
        ),
    );
    rate
}

async fn run_get(s: &Server, blocks: &Blocks, conns: usize) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (blocks, addr) = (blocks.clone(), s.addr());
        tasks.push(tokio::spawn(async move {
            let mut cl = login(addr).await;
            let mut h = Histogram::<u64>::new(3).unwrap();
            for i in (c..blocks.len()).step_by(conns) {
                let t = Instant::now();
                let got = cl.get(&blocks[i].0, None).await.unwrap();
                h.record(t.elapsed().as_micros() as u64).unwrap();
                // Readable and identical: the store phase really stored it.
                assert_eq!(
                    got.as_deref(),
                    Some(&blocks[i].1[..]),
                    "block {i} not readable"
                );
            }
            h
        }));
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        h.add(t.await.unwrap()).unwrap();
    }
    report("GET", conns, blocks.len(), start.elapsed(), &h, "");
}

/// Message announcements for one recipient, in `n` mailboxes (so `n` keys, each a notice).
fn announcements(n: usize, recipient: [u8; 20]) -> Vec<(String, Vec<u8>)> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut hash = [0u8; 20];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            compose::message_announcement(recipient, &format!("box{i}"), hash, &[], now)
        })
        .collect()
}

fn notify_mode(rt: &tokio::runtime::Runtime, n: usize) {
    let recipient = [0x5a; 20];
    // Accepts connections into its backlog and never says a word.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    for smtp in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        if smtp {
            std::fs::write(
                home.join("notify.txt"),
                format!(
                    "fromaddr=server@example.org\nsmtpserver=127.0.0.1\nsmtpport={dead_port}\n\
                     {},email,user@example.org\n",
                    hex::encode(recipient)
                ),
            )
            .unwrap();
        }
        let s = Server::start_in(&home);
        let blocks: Blocks = Arc::new(announcements(n, recipient));
        println!(
            "message announcements, {}",
            if smtp {
                "notify.txt subscribes the recipient, SMTP server dead"
            } else {
                "no notify.txt"
            }
        );
        rt.block_on(run_store(&s, &blocks, 16));
        let log = s.log();
        let dropped = log.lines().rfind(|l| l.contains("notice dropped"));
        if let Some(l) = dropped {
            println!("  last drop line: {}", l.trim());
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let per_conn: usize = std::env::var("STORE_BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("STORE_BENCH_NOTIFY").is_some() {
        notify_mode(&rt, per_conn * 16);
        return;
    }
    if std::env::var_os("STORE_BENCH_LOCKS").is_some() {
        lock_mode();
        return;
    }
    if let Some(baseline) = std::env::var_os("STORE_BENCH_BASELINE") {
        compare_mode(&rt, per_conn, Path::new(&baseline));
        return;
    }
    let s = match std::env::var_os("STORE_BENCH_DIR") {
        Some(dir) => {
            let home = std::path::Path::new(&dir).join(format!(
                "home-{}-{}",
                std::process::id(),
                Utc::now().timestamp()
            ));
            println!("  (server home kept: {})", home.display());
            Server::start_in(&home)
        }
        None => Server::start(),
    };
    println!(
        "storeherd store bench: 4 KiB data blocks, server {}",
        s.addr()
    );
    let rounds: usize = std::env::var("STORE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    for conns in [1usize, 16] {
        let n = if conns == 1 {
            per_conn * 2
        } else {
            per_conn * conns
        };
        let mut rates = Vec::new();
        let mut blocks: Blocks = Arc::new(Vec::new());
        for _ in 0..if conns == 1 { 1 } else { rounds } {
            let t = Instant::now();
            blocks = Arc::new(make_blocks(n, 4096));
            println!(
                "  ({n} blocks with proof of work built in {:.1}s)",
                t.elapsed().as_secs_f64()
            );
            rates.push(rt.block_on(run_store(&s, &blocks, conns)));
        }
        if rates.len() > 1 {
            rates.sort_by(f64::total_cmp);
            println!(
                "STORE conns={conns:<2} median of {} rounds: {:.0} processed blocks/s (min {:.0}, max {:.0})",
                rates.len(),
                rates[rates.len() / 2],
                rates[0],
                rates[rates.len() - 1]
            );
        }
        rt.block_on(run_get(&s, &blocks, conns));
    }
}

/// `STORE_BENCH_BASELINE=BIN`: this build and another (`BIN`, e.g. one built from an older
/// commit) side by side in one run: each round stores the same fresh blocks with 16
/// connections into each build's own server, in alternating order, so the machine's noise
/// falls on both; prints each build's median and their ratio. The servers' homes are under
/// `STORE_BENCH_DIR` when set (a tmpfs or a disk folder), else in the temporary folder.
fn compare_mode(rt: &tokio::runtime::Runtime, per_conn: usize, baseline: &Path) {
    let dir = match std::env::var_os("STORE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let this = Server::start_program(
        Path::new(env!("CARGO_BIN_EXE_storeherd")),
        &dir.path().join("this"),
    );
    let base = Server::start_program(baseline, &dir.path().join("baseline"));
    println!(
        "storeherd store bench, this build vs {} in {}: 4 KiB data blocks, 16 connections",
        baseline.display(),
        dir.path().display()
    );
    let rounds: usize = std::env::var("STORE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let blocks: Blocks = Arc::new(make_blocks(per_conn * 16, 4096));
        let (a, b) = if round % 2 == 0 {
            let a = rt.block_on(run_store(&this, &blocks, 16));
            (a, rt.block_on(run_store(&base, &blocks, 16)))
        } else {
            let b = rt.block_on(run_store(&base, &blocks, 16));
            (rt.block_on(run_store(&this, &blocks, 16)), b)
        };
        println!(
            "  round {}: this {a:.0}, baseline {b:.0} blocks/s, ratio {:.3}",
            round + 1,
            a / b
        );
        ours.push(a);
        theirs.push(b);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "STORE conns=16 median of {rounds} rounds: this {a:.0}, baseline {b:.0} processed blocks/s, ratio {:.3}",
        a / b
    );
}

/// `STORE_BENCH_LOCKS=1`: microseconds per `LeafLock::verify` and per `LeafLock::acquire` of
/// a fresh lock file (what a new leaf costs anyway), over 2,000 leaves.
fn lock_mode() {
    use storeherd::store::lock::LeafLock;
    const LEAVES: usize = 2000;
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let t = Instant::now();
        let locks: Vec<LeafLock> = (0..LEAVES)
            .map(|i| {
                let leaf = dir.path().join(format!("{:02X}/{:02X}", i % 256, i / 256));
                std::fs::create_dir_all(&leaf).unwrap();
                LeafLock::acquire(&leaf.join("LOCKFILE")).unwrap()
            })
            .collect();
        let acquire = t.elapsed().as_secs_f64() * 1e6 / LEAVES as f64;
        let t = Instant::now();
        for _ in 0..5 {
            for l in &locks {
                l.verify().unwrap();
            }
        }
        let verify = t.elapsed().as_secs_f64() * 1e6 / (5 * LEAVES) as f64;
        println!(
            "leaf locks in {}: verify {verify:.1} µs per leaf, mkdir + acquire of a new leaf {acquire:.1} µs",
            base.display()
        );
    }
}
