//! `storeherd up`: a real supervisor on free loopback ports with a topology file in a
//! temporary directory (kept, and named on stderr, when a test panics), read through its admin
//! API as typed [`Status`] documents.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use storeherd::control::{InstanceState, Status};

use super::admin::Admin;
use super::wait::{eventually, With};
use super::{ports, procs, BIN};

/// Where a supervisor listens: public and admin ports, and the first of the consecutive ports
/// of its instances (store server and DHT).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub sport: u16,
    pub eport: u16,
}

impl Ports {
    /// Free ports, with room for `room` instances. All below the ephemeral range, so that a
    /// supervisor started again finds them still free.
    pub fn free(room: u16) -> Ports {
        let one = || SocketAddr::from(([127, 0, 0, 1], ports::range(1)));
        Ports {
            listen: one(),
            admin: one(),
            sport: ports::range(room),
            eport: ports::range(room),
        }
    }
}

/// Room for instances a test may add.
const ROOM: u16 = 12;

/// The topology of a test supervisor: fast health checks, fast restarts, short proxy
/// timeouts, plus what a test adds; and how to run it.
#[derive(Debug, Clone)]
pub struct Topology {
    pub instances: String,
    /// The `restart:` mapping.
    pub restart: String,
    /// The `proxy:` mapping; `None`: no `proxy:` key (the product's defaults).
    pub proxy: Option<String>,
    /// Keys after `listen` in the `admin:` mapping.
    pub admin: String,
    /// More YAML lines.
    pub extra: String,
    /// Arguments after `up -f FILE`.
    pub args: Vec<String>,
    /// The supervisor's open-files limit, lowered before it starts.
    pub nofile: Option<u64>,
}

impl Topology {
    pub fn new(instances: impl ToString) -> Topology {
        Topology {
            instances: instances.to_string(),
            restart:
                "backoff_min: 100ms, backoff_max: 1s, crash_loop: { restarts: 3, within: 30s }"
                    .into(),
            proxy: Some("connect_timeout: 1s, idle_timeout: 60s, drain_timeout: 3s".into()),
            admin: String::new(),
            extra: String::new(),
            args: Vec::new(),
            nofile: None,
        }
    }

    pub fn extra(mut self, yaml: &str) -> Topology {
        self.extra.push_str(yaml);
        self
    }

    /// The whole `proxy:` mapping (its keys, without braces), or `None` for none.
    pub fn proxy(mut self, keys: Option<&str>) -> Topology {
        self.proxy = keys.map(str::to_string);
        self
    }

    /// SIGKILLed instances come back quickly and are never declared crash-looping: for runs
    /// that kill them on purpose.
    pub fn kills_expected(mut self) -> Topology {
        self.restart =
            "backoff_min: 100ms, backoff_max: 500ms, crash_loop: { restarts: 10000, within: 60s }"
                .into();
        self
    }

    pub fn admin_keys(mut self, keys: &str) -> Topology {
        self.admin = format!(", {keys}");
        self
    }

    pub fn args(mut self, args: &[&str]) -> Topology {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn nofile(mut self, n: u64) -> Topology {
        self.nofile = Some(n);
        self
    }

    /// The file's text, with the data directory under `dir`.
    pub fn text(&self, dir: &Path, p: &Ports) -> String {
        let proxy = self
            .proxy
            .as_ref()
            .map(|k| format!("proxy: {{ {k} }}\n"))
            .unwrap_or_default();
        format!(
            "listen: {}\nadmin: {{ listen: {}{} }}\ninstances: {}\ndata: {}\nports: {{ server: {}, entangled: {} }}\n\
             health: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\n\
             restart: {{ {} }}\n{proxy}{}",
            p.listen,
            p.admin,
            self.admin,
            self.instances,
            dir.join("data").display(),
            p.sport,
            p.eport,
            self.restart,
            self.extra
        )
    }

    /// Writes the file on free ports and starts the supervisor; returns once its admin API
    /// answers.
    pub fn start(self) -> Up {
        let mut up = self.launch();
        up.wait_admin();
        up
    }

    /// As [`Topology::start`], without waiting for anything.
    pub fn launch(self) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storeherd.yaml");
        self.launch_in(dir, file)
    }

    /// As [`Topology::launch`], with the data in `dir` (which may hold one already) and the
    /// topology written to `file`, on fresh ports.
    pub fn launch_in(self, dir: tempfile::TempDir, file: PathBuf) -> Up {
        let ports = Ports::free(ROOM);
        std::fs::write(&file, self.text(dir.path(), &ports)).unwrap();
        let mut up = Up::new(dir, file, ports);
        up.args = self.args;
        up.nofile = self.nofile;
        up.respawn();
        up
    }
}

/// A `storeherd up` process (SIGKILLed when dropped: its instances die with it, by their
/// parent-death signal) and where it lives.
pub struct Up {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub sport: u16,
    pub eport: u16,
    /// Its stderr, appended to across starts.
    pub log_file: PathBuf,
    /// Program and arguments put before `storeherd` (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
    pub args: Vec<String>,
    pub nofile: Option<u64>,
    /// The admin API's bearer token, for the reads of this handle.
    pub token: Option<String>,
}

impl Up {
    /// `instances` instances of the test topology plus `extra` YAML; returns once the admin
    /// API answers.
    pub fn start(instances: u32, extra: &str) -> Up {
        Topology::new(instances).extra(extra).start()
    }

    /// A supervisor of the topology file `file` (written by the caller), not started yet:
    /// see [`Up::respawn`].
    pub fn new(dir: tempfile::TempDir, file: PathBuf, ports: Ports) -> Up {
        let log_file = dir.path().join("up.log");
        Up {
            child: None,
            dir,
            file,
            listen: ports.listen,
            admin: ports.admin,
            sport: ports.sport,
            eport: ports.eport,
            log_file,
            prefix: Vec::new(),
            args: Vec::new(),
            nofile: None,
            token: None,
        }
    }

    /// Starts `[prefix…] storeherd up -f FILE ARGS…` (again, after [`Up::terminate`] or
    /// [`Up::power_cut`]); its log is appended to.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the supervisor is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("up")
            .arg("-f")
            .arg(&self.file)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Waits (bounded) until the admin API answers (whatever it answers).
    pub fn wait_admin(&mut self) {
        let admin = self.api();
        let log = self.log_file.clone();
        let child = &mut self.child;
        eventually(
            Duration::from_secs(30),
            With {
                what: "the admin API answers",
                more: || read(&log),
            },
            || {
                if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                    panic!("storeherd up exited early ({st}):\n{}", read(&log));
                }
                admin.http("GET", "/status", None).is_ok()
            },
        );
    }

    /// The admin API, with this handle's token.
    pub fn api(&self) -> Admin {
        Admin {
            addr: self.admin,
            token: self.token.clone(),
        }
    }

    pub fn log(&self) -> String {
        read(&self.log_file)
    }

    /// The log's last 60 lines, for failure messages of long runs.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `what`, followed by the supervisor's log when displayed (a wait's failure message).
    pub fn with_log<'a>(&'a self, what: &'a str) -> impl Display + 'a {
        With {
            what,
            more: move || self.log_tail(),
        }
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

    /// A home's `server.log`.
    pub fn server_log(&self, id: u32) -> String {
        read(&self.data().join(format!("homes/{id}/server.log")))
    }

    /// The address of instance `id`'s own store server port.
    pub fn instance_addr(&self, id: u32) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sport + id as u16 - 1))
    }

    /// One request to the admin API: (status code, body).
    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        self.api().http(method, path, body)
    }

    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_http(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// `/status`, or why it could not be read.
    pub fn try_status(&self) -> Result<Status, String> {
        self.api().status()
    }

    pub fn status(&self) -> Status {
        self.try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Waits (bounded) until `/status` satisfies `ok`; returns that document.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Status) -> bool,
    ) -> Status {
        // The last document (or error) seen goes into the message on timeout.
        eventually(timeout, self.with_log(what), || match self.try_status() {
            Ok(st) if ok(&st) => Ok(st),
            other => Err(Box::new(other)),
        })
    }

    /// Waits until exactly the ids in `ids` are listed and all of them are ready.
    pub fn wait_ready_ids(&self, ids: &[u32], timeout: Duration) -> Status {
        let what = format!("instances {ids:?}, all ready");
        self.wait_status(timeout, &what, |st| {
            st.instances.iter().map(|i| i.id).eq(ids.iter().copied()) && all_ready(st)
        })
    }

    /// Waits until instances 1 to `n` are listed, all ready.
    pub fn wait_ready(&self, n: u32) -> Status {
        let ids: Vec<u32> = (1..=n).collect();
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

    /// `storeherd accounts ARGS…` against this supervisor: (exit code, stdout, stderr).
    pub fn accounts(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["accounts"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        (
            out.status.code().unwrap_or(-1),
            super::text(&out.stdout),
            super::text(&out.stderr),
        )
    }

    /// Instance `id`'s `auth.txt` ("" while it has none).
    pub fn auth_txt(&self, id: u32) -> String {
        std::fs::read_to_string(self.data().join(format!("homes/{id}/auth.txt")))
            .unwrap_or_default()
    }

    /// Runs a control subcommand that must succeed.
    pub fn ctl_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.ctl(args);
        super::succeeded(&out);
        out
    }

    /// Pids of the instances that have a process (from /status).
    pub fn pids(&self) -> Vec<u32> {
        self.status()
            .instances
            .iter()
            .filter_map(|i| i.pid)
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait (bounded) for the exit status; SIGKILL if it does not come.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        procs::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let status = procs::exit_within(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// SIGKILLs the supervisor and every instance back to back (a power cut) and reaps;
    /// returns how many instances had a process.
    pub fn power_cut(&mut self) -> usize {
        let pids = self.try_status().map(|st| {
            st.instances
                .iter()
                .filter_map(|i| i.pid)
                .collect::<Vec<_>>()
        });
        let pids = pids.unwrap_or_default();
        let mut child = self.child.take().unwrap();
        let all: Vec<u32> = std::iter::once(child.id())
            .chain(pids.iter().copied())
            .collect();
        for p in &all {
            procs::signal(*p, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.wait();
        let left = procs::wait_dead(&all, Duration::from_secs(10));
        assert!(left.is_empty(), "still alive after SIGKILL: {left:?}");
        pids.len()
    }
}

/// Every listed instance is ready.
pub fn all_ready(st: &Status) -> bool {
    st.instances.iter().all(|i| i.state == InstanceState::Ready)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
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
