//! Shared by the chaos, power-cut and resource-limit runs: a `storeherd up` service on a data
//! directory that outlives it (so it can be killed and started again), a STORE stream through
//! the proxy that records every block answered `DONE`, and the checks that each one is
//! readable and that no temporary file or queued block is left behind.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Digest;
use storeherd::protocol::{dt, pow};
use storeherd::wire::Client;

use crate::harness::{free_port, free_range, http, BIN};

/// A temporary directory kept (and named on stderr) if the test panics, for inspection.
pub struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(Some(tempfile::tempdir().unwrap()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("kept for inspection: {}", d.keep().display());
            }
        }
    }
}

/// A supervisor process; killed (SIGKILL, instances die with it) when dropped.
pub struct Service {
    pub child: Option<Child>,
    pub file: PathBuf,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// Where a service lives: its topology file and data directory, kept across restarts.
#[derive(Clone)]
pub struct Site {
    pub file: PathBuf,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Site {
    /// A topology in `dir` with `instances` instances on free ports. SIGKILLed instances are
    /// restarted quickly and never declared crash-looping: the runs kill them on purpose.
    pub fn new(dir: &Path, instances: u32, extra: &str) -> Site {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (sport, eport) = (free_range(12), free_range(12));
        let data = dir.join("data");
        let text = format!(
            "listen: {listen}\nadmin: {{ listen: {admin} }}\ninstances: {instances}\ndata: {}\n\
             ports: {{ server: {sport}, entangled: {eport} }}\n\
             health: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\n\
             restart: {{ backoff_min: 100ms, backoff_max: 500ms, crash_loop: {{ restarts: 10000, within: 60s }} }}\n{extra}",
            data.display()
        );
        let file = dir.join("storeherd.yaml");
        std::fs::write(&file, text).unwrap();
        Site {
            file,
            data,
            listen,
            admin,
            dir: dir.to_path_buf(),
        }
    }

    /// Starts `storeherd up`; `nofile` lowers its open-files limit first.
    pub fn start(&self, nofile: Option<u64>) -> Service {
        let log = self.dir.join("up.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("-f")
            .arg(&self.file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let mut s = Service {
            child: Some(child),
            file: self.file.clone(),
            data: self.data.clone(),
            listen: self.listen,
            admin: self.admin,
            log,
        };
        s.wait_admin();
        s
    }
}

impl Service {
    fn wait_admin(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("storeherd up exited early ({st}):\n{}", self.log());
            }
            if http(self.admin, "GET", "/status", None, None).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("admin API never answered:\n{}", self.log());
    }

    /// The whole supervisor log (`log` keeps only its tail, for failure messages).
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http(self.admin, "GET", "/status", None, None).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Waits until `n` instances are listed, all ready.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if let Some(st) = &st {
                let list = st["instances"].as_array().unwrap();
                if list.len() == n && list.iter().all(|i| i["state"] == "ready") {
                    return st.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "never {n} ready instances; last status {st:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ids of the listed instances, whatever their state (empty if /status fails).
    pub fn ids(&self) -> Option<Vec<u64>> {
        let st = self.status()?;
        Some(
            st["instances"]
                .as_array()?
                .iter()
                .filter_map(|i| i["id"].as_u64())
                .collect(),
        )
    }

    /// (id, pid) of the instances that have a process.
    pub fn pids(&self) -> Vec<(u64, i32)> {
        let Some(st) = self.status() else {
            return Vec::new();
        };
        st["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| Some((i["id"].as_u64()?, i["pid"].as_u64()? as i32)))
            .collect()
    }

    /// Runs a control subcommand against this supervisor.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .unwrap()
    }

    /// SIGKILLs the supervisor and every instance back to back (a power cut) and reaps.
    pub fn power_cut(&mut self) -> usize {
        let pids = self.pids();
        let mut child = self.child.take().unwrap();
        let all: Vec<i32> = std::iter::once(child.id() as i32)
            .chain(pids.iter().map(|p| p.1))
            .collect();
        for p in &all {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        let left = crate::harness::wait_dead(
            &all.iter().map(|p| *p as u32).collect::<Vec<_>>(),
            Duration::from_secs(10),
        );
        assert!(left.is_empty(), "still alive after SIGKILL: {left:?}");
        pids.len()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
    rt.block_on(async {
        let deadline = Instant::now() + patience;
        let mut missing: Vec<String> = keys.to_vec();
        let mut session: Option<Client> = None;
        loop {
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
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
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
    let deadline = Instant::now() + timeout;
    loop {
        let (_, queued) = leftovers(data);
        if queued.is_empty() || Instant::now() > deadline {
            return queued;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `key=value` from the environment (full runs) or the default (the test-suite version).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
