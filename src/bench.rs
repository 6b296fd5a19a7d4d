//! The load generator behind `storeherd bench`: persistent PING round trips, connect/QUIT
//! cycles, STORE SERVER of valid data blocks, GET SERVER of blocks it stored, or a mix.
//! Every run is bounded by its duration and a per-operation timeout, and drops all of its
//! connections when it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use sha1::Digest;

use crate::protocol::{dt, pow};
use crate::wire::{Client, Greeting, WireError};

/// No single operation may take longer than this.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on waiting without progress for stored blocks to become readable (`--verify`,
/// `get` setup): each block that turns up restarts it, so a slow store (a shared file
/// system) is waited for as long as it keeps merging, a stuck one is not.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Blocks pre-computed per second of run and per core (several times the store rate seen on
/// 2 cores: ~600 DONE/s per instance), shared out among the connections; one that uses up
/// its share stops early, with a warning, rather than compute proofs of work while the
/// clock runs. Scaled by cores so that a small machine does not spend most of a short run's
/// time on proofs it will never send.
const BLOCKS_PER_SEC_PER_CORE: usize = 2_500;
/// Blocks stored before a `get` run, spread over the keys the GETs pick from.
const GET_SET: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Ping,
    Connect,
    Store,
    Get,
    Mixed,
}

impl std::str::FromStr for Op {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Op, BenchError> {
        Ok(match s {
            "ping" => Op::Ping,
            "connect" => Op::Connect,
            "store" => Op::Store,
            "get" => Op::Get,
            "mixed" => Op::Mixed,
            other => return Err(BenchError::BadOp(other.to_string())),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown --op {0:?}: expected ping, connect, store, get or mixed")]
    BadOp(String),
    #[error("cannot reach {addr}")]
    Unreachable { addr: SocketAddr, source: WireError },
    #[error("--login must be USER:KEY")]
    BadLogin,
    #[error("GET SERVER hides data blocks from anonymous sessions: `{0}` needs --login USER:KEY (e.g. administrator and the key in <data>/admin.key)")]
    NeedsLogin(&'static str),
    #[error("login as {0} refused")]
    LoginRefused(String),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub targets: Vec<SocketAddr>,
    pub op: Op,
    pub connections: usize,
    pub duration: Duration,
    pub size: usize,
    pub tls: bool,
    pub login: Option<(String, String)>,
    pub verify: bool,
    /// Fixed-rate mode: operations per second across all connections. Each connection starts
    /// its operations on a schedule and latency counts from the scheduled start, so a stall
    /// is charged to every operation it delays (no coordinated omission). `None`: each
    /// connection goes as fast as it can.
    pub rate: Option<f64>,
}

/// One connection's schedule in fixed-rate mode.
struct Pacer {
    next: tokio::time::Instant,
    every: Duration,
}

impl Pacer {
    /// Connection `idx` of `n` at `rate` operations per second in total, spread over the
    /// first interval so the connections do not fire together.
    fn new(rate: f64, idx: usize, n: usize) -> Pacer {
        let every = Duration::from_secs_f64(n as f64 / rate.max(1e-3));
        let offset = every.mul_f64(idx as f64 / n.max(1) as f64);
        Pacer {
            next: tokio::time::Instant::now() + offset,
            every,
        }
    }

    /// Waits for the next scheduled start and returns it.
    async fn wait(&mut self) -> Instant {
        tokio::time::sleep_until(self.next).await;
        let at = self.next;
        self.next += self.every;
        at.into_std()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub op: Op,
    pub targets: Vec<String>,
    pub connections: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_per_sec: Option<f64>,
}

/// Live counter for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// A data block whose proof of work is already computed; its payload is rebuilt on send
/// from the block number, so millions of them fit in memory.
#[derive(Clone)]
struct Prepared {
    n: u64,
    key: String,
    proof: String,
}

fn payload(n: u64, size: usize) -> Vec<u8> {
    let mut p = vec![b'.'; size.max(8)];
    p[..8].copy_from_slice(&n.to_be_bytes());
    p
}

fn prepare(n: u64, size: usize, date: &str) -> Prepared {
    let body = payload(n, size);
    let key = hex::encode_upper(sha1::Sha1::digest(&body));
    let proof = pow::generate_parts(&[date.as_bytes(), &body], 8, 2);
    Prepared { n, key, proof }
}

/// The error kind of a GET answered with other bytes than the block stored under its key.
pub const TORN: &str = "torn";

/// Does a block read back carry block `n`'s payload, whole? The server may rewrite the
/// header lines, never the payload after `Data:`.
fn intact(block: &[u8], n: u64, size: usize) -> bool {
    block.ends_with(&payload(n, size))
}

fn block_bytes(p: &Prepared, size: usize, date: &str) -> Vec<u8> {
    let body = payload(p.n, size);
    let mut b = format!(
        "Type: data\nDate: {date}\nVersion: 1\nProofOfWork: {}\nData: {}\n",
        p.proof,
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(&body);
    b
}

/// Computes `count` blocks on every core, numbered from `base`.
fn prepare_many(base: u64, count: usize, size: usize, date: &str) -> Vec<Prepared> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let lo = t * chunk;
                    let hi = ((t + 1) * chunk).min(count);
                    (lo..hi)
                        .map(|i| prepare(base + i as u64, size, date))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("block preparation thread"))
            .collect()
    })
}

fn error_kind(e: &WireError) -> &'static str {
    match e {
        WireError::Io(_) => "io",
        WireError::Timeout(..) => "timeout",
        WireError::Busy => "busy",
        WireError::BadGreeting(_) => "bad_greeting",
        WireError::Closed => "closed",
        WireError::LineTooLong => "line_too_long",
        WireError::Unexpected { .. } => "unexpected_reply",
        WireError::Tls(_) => "tls",
        WireError::BadBlock(_) => "bad_block",
        WireError::Socks(_) => "socks",
    }
}

/// Opens one ready session (TLS and login as configured).
async fn open(cfg: &Config, addr: SocketAddr) -> Result<Client, WireError> {
    let mut c = Client::connect(addr, OP_TIMEOUT).await?;
    if cfg.tls {
        c = c.starttls(None).await?;
    }
    if let Some((user, key)) = &cfg.login {
        if !c.login(user, key).await? {
            return Err(WireError::Unexpected {
                expected: "DONE to LOGIN",
                got: "FAILED".into(),
            });
        }
    }
    Ok(c)
}

struct Worker {
    hist: Histogram<u64>,
    ops: u64,
    errors: BTreeMap<String, u64>,
    stored: Vec<(String, u64)>,
}

impl Worker {
    fn new() -> Worker {
        Worker {
            hist: new_histogram(),
            ops: 0,
            errors: BTreeMap::new(),
            stored: Vec::new(),
        }
    }
    fn ok(&mut self, started: Instant, progress: &Progress) {
        let us = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = self.hist.record(us);
        self.ops += 1;
        progress.ops.fetch_add(1, Ordering::Relaxed);
    }
    fn err(&mut self, kind: &str, progress: &Progress) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

struct Shared {
    cfg: Config,
    date: String,
    /// The GET set: key and block number (its payload is rebuilt to check what is read).
    get_keys: Vec<(String, u64)>,
    progress: Arc<Progress>,
}

/// One client connection's loop until the deadline.
async fn connection(
    shared: Arc<Shared>,
    idx: usize,
    mut blocks: Vec<Prepared>,
    deadline: tokio::time::Instant,
) -> Worker {
    let cfg = &shared.cfg;
    let addr = cfg.targets[idx % cfg.targets.len()];
    let progress = &shared.progress;
    let mut w = Worker::new();
    let mut rng_state = (idx as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next_rand = move || {
        // xorshift: cheap; the benchmark only needs a spread, not quality.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut session: Option<Client> = None;
    let mut pacer = cfg.rate.map(|r| Pacer::new(r, idx, cfg.connections.max(1)));
    while tokio::time::Instant::now() < deadline {
        let scheduled = match pacer.as_mut() {
            Some(p) => Some(p.wait().await),
            None => None,
        };
        if cfg.op == Op::Connect {
            let t = scheduled.unwrap_or_else(Instant::now);
            let r = tokio::time::timeout_at(deadline, async {
                let (c, g) = Client::connect_any(addr, OP_TIMEOUT).await?;
                if g == Greeting::Busy {
                    return Err(WireError::Busy);
                }
                c.quit().await
            })
            .await;
            match r {
                Ok(Ok(())) => w.ok(t, progress),
                Ok(Err(e)) => w.err(error_kind(&e), progress),
                Err(_) => break,
            }
            continue;
        }
        let client = match session.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout_at(deadline, open(cfg, addr)).await {
                Ok(Ok(c)) => session.insert(c),
                Ok(Err(e)) => {
                    w.err(error_kind(&e), progress);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => break,
            },
        };
        let do_store = match cfg.op {
            Op::Store => true,
            Op::Mixed => next_rand() % 5 == 0,
            _ => false,
        };
        let t = scheduled.unwrap_or_else(Instant::now);
        let result = if cfg.op == Op::Ping {
            tokio::time::timeout_at(deadline, client.ping()).await
        } else if do_store {
            let Some(p) = blocks.pop() else {
                tracing::warn!(
                    connection = idx,
                    "out of pre-computed blocks before the deadline; ops/s is understated"
                );
                break;
            };
            let bytes = block_bytes(&p, cfg.size, &shared.date);
            let r = tokio::time::timeout_at(deadline, client.store(&p.key, &bytes)).await;
            match r {
                Ok(Ok(true)) => {
                    w.stored.push((p.key, p.n));
                    Ok(Ok(()))
                }
                Ok(Ok(false)) => Ok(Err(WireError::Unexpected {
                    expected: "DONE",
                    got: "FAILED".into(),
                })),
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        } else {
            let (key, n) = &shared.get_keys[(next_rand() % shared.get_keys.len() as u64) as usize];
            let r = tokio::time::timeout_at(deadline, client.get(key, None)).await;
            match r {
                Ok(Ok(Some(bytes))) if !intact(&bytes, *n, cfg.size) => {
                    // Counted apart: a read of other bytes than were stored is the one result
                    // a store must never give, whatever else fails.
                    w.err(TORN, progress);
                    continue;
                }
                Ok(Ok(Some(_))) => Ok(Ok(())),
                Ok(Ok(None)) => Ok(Err(WireError::Unexpected {
                    expected: "the stored block",
                    got: "NOT FOUND".into(),
                })),
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(Ok(())) => w.ok(t, progress),
            Ok(Err(e)) => {
                w.err(error_kind(&e), progress);
                session = None;
            }
            // The deadline cut an operation in flight: not an error of the target.
            Err(_) => break,
        }
    }
    w
}

/// Waits until every key is readable; returns the moment the last one was seen.
async fn wait_readable(cfg: &Config, keys: &[(String, u64)]) -> Result<Instant, BenchError> {
    let conns = cfg.connections.clamp(1, 8);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let chunk: Vec<(String, u64)> = keys.iter().skip(i).step_by(conns).cloned().collect();
        let cfg = cfg.clone();
        let addr = cfg.targets[i % cfg.targets.len()];
        tasks.push(tokio::spawn(async move {
            let mut deadline = Instant::now() + VERIFY_TIMEOUT;
            let mut session: Option<Client> = None;
            for (key, n) in chunk {
                loop {
                    // A session cut (an instance restarted under the run) is opened again.
                    let got = match session.as_mut() {
                        Some(c) => c.get(&key, None).await,
                        None => match open(&cfg, addr).await {
                            Ok(c) => session.insert(c).get(&key, None).await,
                            Err(e) => Err(e),
                        },
                    };
                    match got {
                        Ok(Some(bytes)) if intact(&bytes, n, cfg.size) => {
                            deadline = Instant::now() + VERIFY_TIMEOUT;
                            break;
                        }
                        Ok(Some(_)) => return Err(format!("block {key} read back torn")),
                        Ok(None) | Err(_) if Instant::now() > deadline => {
                            let why = got.err().map(|e| format!(" ({e})")).unwrap_or_default();
                            let wait = format!("{VERIFY_TIMEOUT:?} of the last one");
                            return Err(format!("block {key} not readable within {wait}{why}"));
                        }
                        Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(_) => {
                            session = None;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            Ok::<Instant, String>(Instant::now())
        }));
    }
    let mut last = Instant::now();
    for t in tasks {
        let at = t
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .map_err(BenchError::Setup)?;
        last = last.max(at);
    }
    Ok(last)
}

/// Stores the GET set through one session, opened again when cut (bounded by
/// [`VERIFY_TIMEOUT`] without progress); a refused block is an error at once.
async fn store_get_set(cfg: &Config, set: &[Prepared], date: &str) -> Result<(), BenchError> {
    let setup = |e: WireError| BenchError::Setup(format!("storing the GET set: {e}"));
    let mut deadline = Instant::now() + VERIFY_TIMEOUT;
    let mut session: Option<Client> = None;
    for p in set {
        loop {
            let stored = match session.as_mut() {
                Some(c) => c.store(&p.key, &block_bytes(p, cfg.size, date)).await,
                None => match open(cfg, cfg.targets[0]).await {
                    Ok(c) => {
                        let c = session.insert(c);
                        c.store(&p.key, &block_bytes(p, cfg.size, date)).await
                    }
                    Err(e) => Err(e),
                },
            };
            match stored {
                Ok(true) => {
                    deadline = Instant::now() + VERIFY_TIMEOUT;
                    break;
                }
                Ok(false) => {
                    return Err(BenchError::Setup("the target refused a valid block".into()))
                }
                Err(e) if Instant::now() > deadline => return Err(setup(e)),
                Err(_) => {
                    session = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// Runs the benchmark; `progress` is updated live for a display.
pub async fn run(cfg: Config, progress: Arc<Progress>) -> Result<Report, BenchError> {
    if cfg.login.is_none() {
        match cfg.op {
            Op::Get => return Err(BenchError::NeedsLogin("--op get")),
            Op::Mixed => return Err(BenchError::NeedsLogin("--op mixed")),
            _ if cfg.verify => return Err(BenchError::NeedsLogin("--verify")),
            _ => {}
        }
    }
    // A wrong target fails here, at once and clearly, instead of as a run of errors.
    for &addr in &cfg.targets {
        let c = Client::connect(addr, Duration::from_secs(5))
            .await
            .map_err(|source| BenchError::Unreachable { addr, source })?;
        let _ = c.quit().await;
    }
    if let Some((user, _)) = &cfg.login {
        let c = open(&cfg, cfg.targets[0]).await.map_err(|e| match e {
            WireError::Unexpected { .. } => BenchError::LoginRefused(user.clone()),
            source => BenchError::Unreachable {
                addr: cfg.targets[0],
                source,
            },
        })?;
        let _ = c.quit().await;
    }
    let now: DateTime<Utc> = Utc::now();
    let date = dt::format_dt(now);
    // Distinct block numbers per run, so repeated runs against one store store new blocks.
    let base = (now.timestamp_micros() as u64) << 16;
    let stores = matches!(cfg.op, Op::Store | Op::Mixed);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_sec = BLOCKS_PER_SEC_PER_CORE * cores;
    let per_conn = if stores {
        ((cfg.duration.as_secs_f64() * per_sec as f64) as usize / cfg.connections.max(1)).max(64)
    } else {
        0
    };
    let (size, date2) = (cfg.size, date.clone());
    let mut all = tokio::task::spawn_blocking(move || {
        prepare_many(base, per_conn * cfg.connections.max(1), size, &date2)
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))?;

    let mut get_keys = Vec::new();
    if matches!(cfg.op, Op::Get | Op::Mixed) {
        let (size, date2) = (cfg.size, date.clone());
        let set = tokio::task::spawn_blocking(move || {
            prepare_many(base + (1 << 15), GET_SET, size, &date2)
        })
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        store_get_set(&cfg, &set, &date).await?;
        get_keys.extend(set.iter().map(|p| (p.key.clone(), p.n)));
        wait_readable(&cfg, &get_keys).await?;
    }

    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        date,
        get_keys,
        progress,
    });
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut tasks = Vec::new();
    for i in 0..cfg.connections.max(1) {
        let mine: Vec<Prepared> = if stores {
            all.split_off(all.len().saturating_sub(per_conn))
        } else {
            Vec::new()
        };
        tasks.push(tokio::spawn(connection(shared.clone(), i, mine, deadline)));
    }
    let mut hist = new_histogram();
    let mut ops = 0;
    let mut errors = BTreeMap::new();
    let mut stored = Vec::new();
    for t in tasks {
        let w = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        let _ = hist.add(&w.hist);
        ops += w.ops;
        for (k, v) in w.errors {
            *errors.entry(k).or_default() += v;
        }
        stored.extend(w.stored);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let processed_per_sec = if cfg.verify && !stored.is_empty() {
        let last = wait_readable(&cfg, &stored).await?;
        Some(stored.len() as f64 / last.duration_since(started).as_secs_f64())
    } else {
        None
    };
    Ok(Report {
        op: cfg.op,
        targets: cfg.targets.iter().map(|a| a.to_string()).collect(),
        connections: cfg.connections,
        duration_s: elapsed,
        ops,
        ops_per_sec: ops as f64 / elapsed,
        errors,
        latency_us: Latency {
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        processed_per_sec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_blocks_are_valid_data_blocks() {
        let now = Utc::now();
        let date = dt::format_dt(now);
        let blocks = prepare_many(7, 5, 300, &date);
        assert_eq!(blocks.len(), 5);
        for p in &blocks {
            let bytes = block_bytes(p, 300, &date);
            let merged = crate::server::validate::validate_merge(
                &p.key,
                None,
                &bytes,
                false,
                Some("NONE"),
                &crate::server::validate::Limits::default(),
                now,
            );
            assert!(merged.is_ok(), "{merged:?}");
        }
        let keys: std::collections::HashSet<_> = blocks.iter().map(|p| &p.key).collect();
        assert_eq!(keys.len(), 5);
        let whole = block_bytes(&blocks[0], 300, &date);
        assert!(intact(&whole, blocks[0].n, 300));
        assert!(!intact(&whole[..whole.len() - 1], blocks[0].n, 300));
        assert!(!intact(&whole, blocks[1].n, 300));
    }
}
