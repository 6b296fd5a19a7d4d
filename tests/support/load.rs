//! Client load through a service's public port, and what it leaves: connect / PING / QUIT
//! loops ([`ClientLoop`]), a STORE stream that records every block answered `DONE`
//! ([`StoreStream`]), whether each one is readable, and what is left on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Digest;
use storeherd::protocol::{dt, pow};
use storeherd::wire::Client;

use super::wait::until;

/// `n` clients doing connect / PING / QUIT in a loop through `addr` until [`ClientLoop::stop`]
/// (60 s at most): a connection without a READY greeting is a client failure (kept with its
/// error); a session cut after the greeting (its instance killed mid-session) is counted
/// apart.
pub struct ClientLoop {
    rt: tokio::runtime::Runtime,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    cut: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`ClientLoop`] saw.
pub struct LoopResult {
    pub ok: u64,
    pub cut: u64,
    pub failures: Vec<String>,
}

impl ClientLoop {
    pub fn start(addr: SocketAddr, n: usize) -> ClientLoop {
        use std::sync::atomic::Ordering::Relaxed;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t = Duration::from_secs(20);
        let clients = (0..n)
            .map(|_| {
                let (failures, cut, ok, stop) =
                    (failures.clone(), cut.clone(), ok.clone(), stop.clone());
                rt.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Relaxed) && Instant::now() < deadline {
                        let mut c = match storeherd::wire::Client::connect(addr, t).await {
                            Ok(c) => c,
                            Err(e) => {
                                failures.lock().unwrap().push(e.to_string());
                                continue;
                            }
                        };
                        let r = async {
                            c.ping().await?;
                            c.quit().await
                        }
                        .await;
                        match r {
                            Ok(()) => ok.fetch_add(1, Relaxed),
                            Err(_) => cut.fetch_add(1, Relaxed),
                        };
                    }
                })
            })
            .collect();
        ClientLoop {
            rt,
            stop,
            failures,
            cut,
            ok,
            clients,
        }
    }

    /// Stops the clients and waits for them.
    pub fn stop(self) -> LoopResult {
        use std::sync::atomic::Ordering::Relaxed;
        self.stop.store(true, Relaxed);
        self.rt.block_on(async {
            for c in self.clients {
                c.await.unwrap();
            }
        });
        let failures = self.failures.lock().unwrap().clone();
        LoopResult {
            ok: self.ok.load(Relaxed),
            cut: self.cut.load(Relaxed),
            failures,
        }
    }
}

/// A valid data block numbered `n` of run `run` (4 KiB payload; the key is its SHA-1).
pub fn block(run: u64, n: u64, date: &str) -> (String, Vec<u8>) {
    let mut body = format!("reliability run {run:016x} block {n:012}\n").into_bytes();
    body.resize(1024, b'.');
    let key = hex::encode_upper(sha1::Sha1::digest(&body));
    let proof = pow::generate_parts(&[date.as_bytes(), &body], 8, 2);
    let mut b = format!(
        "Type: data\nDate: {date}\nVersion: 1\nProofOfWork: {proof}\nData: {}\n",
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(&body);
    (key, b)
}

/// An operation that failed, with the life of the connection it ran on.
#[derive(Debug, Clone)]
pub struct OpFailure {
    pub conn_start: Instant,
    pub at: Instant,
    pub error: String,
}

/// What a STORE stream saw.
#[derive(Debug, Default)]
pub struct Record {
    /// Keys answered `DONE`.
    pub acked: Vec<String>,
    /// Keys answered `FAILED` (valid blocks: should not happen).
    pub refused: Vec<String>,
    pub connects: u64,
    pub connect_failures: Vec<(Instant, String)>,
    pub op_failures: Vec<OpFailure>,
}

/// Connections storing valid blocks one after another through the proxy; each connection
/// stores a few blocks and quits, so new connections keep spreading over the instances.
pub struct StoreStream {
    stop: Arc<AtomicBool>,
    rec: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const PER_CONN: usize = 16;
const OP_TIMEOUT: Duration = Duration::from_secs(10);

impl StoreStream {
    pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr, conns: usize) -> StoreStream {
        let stop = Arc::new(AtomicBool::new(false));
        let rec = Arc::new(Mutex::new(Record::default()));
        let next = Arc::new(AtomicU64::new(0));
        let run: u64 = rand::random();
        let date = dt::format_dt(chrono::Utc::now());
        let tasks = (0..conns)
            .map(|_| {
                let (stop, rec, next, date) =
                    (stop.clone(), rec.clone(), next.clone(), date.clone());
                rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let conn_start = Instant::now();
                        rec.lock().unwrap().connects += 1;
                        let mut c = match Client::connect(addr, OP_TIMEOUT).await {
                            Ok(c) => c,
                            Err(e) => {
                                let failed = (Instant::now(), e.to_string());
                                rec.lock().unwrap().connect_failures.push(failed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let mut clean = true;
                        for _ in 0..PER_CONN {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let (key, b) = block(run, next.fetch_add(1, Ordering::Relaxed), &date);
                            match c.store(&key, &b).await {
                                Ok(true) => rec.lock().unwrap().acked.push(key),
                                Ok(false) => rec.lock().unwrap().refused.push(key),
                                Err(e) => {
                                    rec.lock().unwrap().op_failures.push(OpFailure {
                                        conn_start,
                                        at: Instant::now(),
                                        error: e.to_string(),
                                    });
                                    clean = false;
                                    break;
                                }
                            }
                        }
                        if clean {
                            let _ = tokio::time::timeout(OP_TIMEOUT, c.quit()).await;
                        }
                    }
                })
            })
            .collect();
        StoreStream { stop, rec, tasks }
    }

    pub fn acked(&self) -> usize {
        self.rec.lock().unwrap().acked.len()
    }

    /// Stops after the operations in flight and returns the record.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = rt.block_on(t);
        }
        std::mem::take(&mut *self.rec.lock().unwrap())
    }
}

/// The keys of `keys` that a session logged in as administrator cannot read through `addr`,
/// waiting up to `patience` for queued blocks to be processed.
pub fn unreadable(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    admin_key: &str,
    keys: &[String],
    patience: Duration,
) -> Vec<String> {
    let mut missing: Vec<String> = keys.to_vec();
    let mut session: Option<Client> = None;
    let left = until(patience, || {
        rt.block_on(async {
            let mut still = Vec::new();
            for k in &missing {
                if session.is_none() {
                    let mut c = match Client::connect(addr, OP_TIMEOUT).await {
                        Ok(c) => c,
                        Err(_) => {
                            still.push(k.clone());
                            continue;
                        }
                    };
                    if !c.login("administrator", admin_key).await.unwrap_or(false) {
                        still.push(k.clone());
                        continue;
                    }
                    session = Some(c);
                }
                match session.as_mut().unwrap().get(k, None).await {
                    Ok(Some(_)) => {}
                    Ok(None) => still.push(k.clone()),
                    Err(_) => {
                        session = None;
                        still.push(k.clone());
                    }
                }
            }
            missing = still;
        });
        missing.is_empty()
    });
    if left.is_ok() {
        Vec::new()
    } else {
        missing
    }
}

/// Files in the store tree that are not blocks (temporary or partial), and files still in
/// any instance's `inputqueue/` (plus its `journal/` while that holds unsettled entries).
pub fn leftovers(data: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut store = Vec::new();
    walk(&data.join("store"), &mut store);
    let temps = store
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // A block is named by its 40-hex key; LOCKFILE guards each leaf.
            !(name == "LOCKFILE"
                || (name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())))
        })
        .collect();
    let mut queued = Vec::new();
    if let Ok(rd) = std::fs::read_dir(data.join("homes")) {
        for home in rd.flatten() {
            walk(&home.path().join("inputqueue"), &mut queued);
            let journal = home.path().join(storeherd::store::journal::DIR_NAME);
            if storeherd::store::journal::pending(&journal) > 0 {
                queued.push(journal);
            }
        }
    }
    (temps, queued)
}

/// Waits until no instance's input queue holds a file; returns those left.
pub fn wait_drained(data: &Path, timeout: Duration) -> Vec<PathBuf> {
    let left = until(timeout, || {
        let (_, queued) = leftovers(data);
        if queued.is_empty() {
            Ok(())
        } else {
            Err(queued)
        }
    });
    left.err().flatten().unwrap_or_default()
}
