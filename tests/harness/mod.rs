//! Test harness for `storeherd up`: a real supervisor process on free loopback ports, with
//! a topology file in a temporary directory, and helpers to read its admin API.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_storeherd");

/// A free TCP port on loopback (the OS picks it; the listener is closed at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A base port with `n` consecutive free TCP and UDP ports.
pub fn free_range(n: u16) -> u16 {
    for _ in 0..200 {
        // Below Linux's ephemeral range (32768+), so outgoing connections do not take them.
        let base = 20_000 + (rand::random::<u16>() % 12_000);
        let ok = (0..n).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
        });
        if ok {
            return base;
        }
    }
    panic!("no free port range of {n}");
}

pub struct Up {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub sport: u16,
    pub eport: u16,
    pub stderr_log: PathBuf,
    /// Program and arguments put before `storeherd` (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
    pub args: Vec<String>,
}

impl Up {
    /// Topology text for `instances` instances on free ports, plus `extra` YAML lines.
    pub fn topology(
        dir: &Path,
        instances: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        sport: u16,
        eport: u16,
        extra: &str,
    ) -> String {
        format!(
            "listen: {listen}\nadmin: {{ listen: {admin} }}\ninstances: {instances}\ndata: {}\nports: {{ server: {sport}, entangled: {eport} }}\nhealth: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\nrestart: {{ backoff_min: 100ms, backoff_max: 1s, crash_loop: {{ restarts: 3, within: 30s }} }}\nproxy: {{ connect_timeout: 1s, idle_timeout: 60s, drain_timeout: 3s }}\n{extra}",
            dir.join("data").display()
        )
    }

    /// Starts `storeherd up -f <file>` with `instances` instances (room for 8).
    pub fn start(instances: u32, extra: &str) -> Up {
        Self::start_with(&instances.to_string(), extra, &[])
    }

    pub fn start_with(instances: &str, extra: &str, args: &[&str]) -> Up {
        Self::start_edited(instances, extra, args, |t| t)
    }

    /// As [`Up::start_with`], with `edit` applied to the topology text first (to add keys
    /// to one of its mappings, such as `proxy:`).
    pub fn start_edited(
        instances: &str,
        extra: &str,
        args: &[&str],
        edit: impl Fn(String) -> String,
    ) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let sport = free_range(8);
        let eport = free_range(8);
        let file = dir.path().join("storeherd.yaml");
        std::fs::write(
            &file,
            edit(Self::topology(
                dir.path(),
                instances,
                listen,
                admin,
                sport,
                eport,
                extra,
            )),
        )
        .unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut up = Up::launch(dir, file, listen, admin, sport, eport, Vec::new(), args);
        up.wait_admin();
        up
    }

    /// Starts `[prefix…] storeherd up -f <file> <args…>` for a topology written by the
    /// caller (e.g. one site of a two-site file, or inside a network namespace with
    /// `ip netns exec NS` as the prefix). Does not wait for anything.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        dir: tempfile::TempDir,
        file: PathBuf,
        listen: SocketAddr,
        admin: SocketAddr,
        sport: u16,
        eport: u16,
        prefix: Vec<String>,
        args: Vec<String>,
    ) -> Up {
        let stderr_log = dir.path().join("up.log");
        let mut up = Up {
            child: None,
            dir,
            file,
            listen,
            admin,
            sport,
            eport,
            stderr_log,
            prefix,
            args,
        };
        up.respawn();
        up
    }

    /// Starts the supervisor again (after [`Up::terminate`]) with the same file and
    /// arguments; its log is appended to.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the supervisor is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("up")
            .arg("-f")
            .arg(&self.file)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits (bounded) until the admin API answers.
    pub fn wait_admin_up(&mut self) {
        self.wait_admin();
    }

    fn wait_admin(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("storeherd up exited early ({st}):\n{}", self.log());
                }
            }
            if self.try_http("GET", "/status", None).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("admin API never answered:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The administrator key `up` generated (GET of data blocks needs a logged-in session).
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A session through `addr` logged in as administrator.
    pub async fn admin_session(&self, addr: SocketAddr) -> storeherd::wire::Client {
        let mut c = storeherd::wire::Client::connect(addr, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(c.login("administrator", &self.admin_key()).await.unwrap());
        c
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One HTTP/1.1 request to the admin API: (status code, body).
    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        http(self.admin, method, path, body, None)
    }

    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_http(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until exactly the ids in `ids` are listed and all of them are ready.
    pub fn wait_ready_ids(&self, ids: &[u64], timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            let list = st["instances"].as_array().unwrap();
            let got: Vec<u64> = list.iter().map(|i| i["id"].as_u64().unwrap()).collect();
            if got == ids && list.iter().all(|i| i["state"] == "ready") {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "instances never became {ids:?} all ready; last status {st:#}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_ready(&self, n: u64) -> serde_json::Value {
        let ids: Vec<u64> = (1..=n).collect();
        self.wait_ready_ids(&ids, Duration::from_secs(60))
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

    /// Pids of the instances (from /status).
    pub fn pids(&self) -> Vec<u32> {
        self.status()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.dir.path().display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
        if let Some(mut child) = self.child.take() {
            // SIGKILL: the instances die with the supervisor (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive, or `timeout`; returns those still alive.
pub fn wait_dead(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 request (the admin API is HTTP/1), with an optional bearer token.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP reply {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

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
