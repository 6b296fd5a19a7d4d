//! The OS-process side of one instance: spawn in its own process group with a parent-death
//! signal, capture its output, stop or kill the whole group, reap it, keep a pidfile, and
//! clear away a stale process of a previous run that still holds the instance's port.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc as std_mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpid, getppid, Pid};
use tokio::sync::oneshot;

pub use super::logs::LogLimits;
use super::logs::{self, LogSink, Stream};

/// File name of the pidfile in a home.
pub const PIDFILE: &str = "storeherd.pid";
/// File name of the captured output in a home.
pub use crate::serverlog::FILE as SERVER_LOG;

/// How long a stale process gets after SIGTERM, and again after SIGKILL, to disappear.
const STALE_WAIT: Duration = Duration::from_secs(3);
/// How often a stale process or a stopping group is checked for.
const POLL: Duration = Duration::from_millis(25);
/// How long a reaped instance's last output may take to reach its log.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// What to start for one instance. `argv` is final (placeholders already filled in).
#[derive(Debug, Clone)]
pub struct Spawn {
    pub id: u32,
    pub argv: Vec<String>,
    pub home: PathBuf,
    pub port: u16,
    pub log: LogLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("instance {id}: empty command")]
    EmptyCommand { id: u32 },
    #[error("instance {id}: cannot start {program}: {source}")]
    Spawn {
        id: u32,
        program: String,
        source: io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot write the pidfile {}: {source}", path.display())]
    Pidfile { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Proc { path: PathBuf, source: io::Error },
    #[error("cannot signal stale process {pid}: {source}")]
    Signal { pid: u32, source: Errno },
    #[error("stale process {pid} holding port {port} survived SIGKILL")]
    StaleSurvived { pid: u32, port: u16 },
    #[error("the process spawner thread is gone")]
    SpawnerGone,
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Exit {
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            (None, None) => write!(f, "exit status unknown"),
        }
    }
}

/// One running (or reaped) instance process, leader of its own process group.
///
/// Dropping a `Child` that was not reaped kills its group: no instance outlives its handle.
#[derive(Debug)]
pub struct Child {
    id: u32,
    pid: u32,
    inner: tokio::process::Child,
    pidfile: PathBuf,
    sink: LogSink,
    /// The stdout/stderr readers, awaited after reaping so the log is complete.
    captures: Vec<tokio::task::JoinHandle<()>>,
    exit: Option<Exit>,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The instance number this process serves.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The exit, once the process has been reaped.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Waits for the process to end and reaps it; what is left of its group is killed, the
    /// pidfile removed. Cancel-safe; after the first return, returns the same exit at once.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let status = self.inner.wait().await;
        let exit = self.reaped(status);
        self.finish_log(exit).await;
        exit
    }

    /// SIGTERM to the process group; SIGKILL to the group when anything of it is still alive
    /// after `grace`; reaps the leader. Safe to call again, or after `wait`.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let deadline = Instant::now() + grace;
        self.signal_group(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.inner.wait()).await {
            Ok(status) => {
                // The leader is gone; its group (a forked helper) gets the rest of the grace.
                while group_alive(self.pid) && Instant::now() < deadline {
                    tokio::time::sleep(POLL).await;
                }
                status
            }
            Err(_) => {
                tracing::warn!(
                    instance = self.id,
                    pid = self.pid,
                    "still running {grace:?} after SIGTERM; sending SIGKILL"
                );
                self.signal_group(Signal::SIGKILL);
                self.inner.wait().await
            }
        };
        let exit = self.reaped(status);
        self.finish_log(exit).await;
        exit
    }

    /// SIGKILL to the whole process group, now. Does not reap: `wait` does.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            self.signal_group(Signal::SIGKILL);
        }
    }

    /// Signals the group. Only called while the leader is unreaped, so its pid, which is
    /// the group id, cannot have been reused.
    fn signal_group(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.pid as i32), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(instance = self.id, pid = self.pid, "killpg {signal}: {e}"),
        }
    }

    fn reaped(&mut self, status: io::Result<ExitStatus>) -> Exit {
        let exit = match status {
            Ok(status) => Exit::from(status),
            Err(e) => {
                tracing::error!(instance = self.id, pid = self.pid, "cannot reap: {e}");
                Exit {
                    code: None,
                    signal: None,
                }
            }
        };
        self.exit = Some(exit);
        live_instances().retain(|&p| p != self.pid);
        // Leftovers of the group (children the server forked) must not hold the port or
        // the store for the next start. The group still exists if any member is alive, so
        // its id has not been reused.
        if let Err(e) = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            if e != Errno::ESRCH {
                tracing::warn!(instance = self.id, pid = self.pid, "killpg SIGKILL: {e}");
            }
        }
        remove_pidfile(&self.pidfile, self.pid);
        exit
    }

    /// Lets the readers take the last lines (the group is dead, so the pipes are closing),
    /// adds the end note, and waits for the file. Bounded: a process outside the group
    /// (one that called setsid) may keep a pipe open for ever.
    async fn finish_log(&mut self, exit: Exit) {
        let captures = std::mem::take(&mut self.captures);
        let _ = tokio::time::timeout(LOG_DRAIN, async {
            for capture in captures {
                let _ = capture.await;
            }
        })
        .await;
        let note = format!("storeherd: {} pid {} ended: {exit}", now(), self.pid);
        let _ = tokio::time::timeout(LOG_DRAIN, async {
            self.sink.write(note.into_bytes()).await;
            self.sink.flush().await;
        })
        .await;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // tokio reaps it in the background (kill_on_drop).
            self.signal_group(Signal::SIGKILL);
            remove_pidfile(&self.pidfile, self.pid);
            live_instances().retain(|&p| p != self.pid);
        }
    }
}

/// Starts the instance: clears a stale process of a previous run (see [`kill_stale`]),
/// spawns `argv` with cwd = home, stdin null, stdout/stderr captured into tracing and
/// `<home>/server.log`, in a new process group, with SIGKILL as its parent-death signal,
/// then writes `<home>/storeherd.pid`.
pub async fn spawn(spec: &Spawn) -> Result<Child, ProcessError> {
    let id = spec.id;
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or(ProcessError::EmptyCommand { id })?;

    let (home, port) = (spec.home.clone(), spec.port);
    let stale = tokio::task::spawn_blocking(move || kill_stale(&home, port))
        .await
        .map_err(|_| ProcessError::SpawnerGone)??;
    if let Some(pid) = stale {
        tracing::warn!(
            instance = id,
            pid,
            port,
            "stopped a stale server of a previous run"
        );
    }

    let log_path = spec.home.join(SERVER_LOG);
    let sink = LogSink::open(id, &log_path, spec.log).map_err(|source| ProcessError::Log {
        path: log_path.clone(),
        source,
    })?;

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&spec.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Python block-buffers a piped stdout: lines would reach the log minutes late.
        .env("PYTHONUNBUFFERED", "1")
        .process_group(0)
        .kill_on_drop(true);
    let parent = getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            // The parent may have died before prctl took effect: then nobody would kill us.
            if getppid() != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }

    let mut inner = spawn_on_spawner_thread(cmd)
        .await?
        .map_err(|source| ProcessError::Spawn {
            id,
            program: program.clone(),
            source,
        })?;
    let pid = inner.id().unwrap_or(0);
    live_instances().push(pid);
    sink.note(format!(
        "storeherd: {} instance {id} started pid {pid}: {}",
        now(),
        spec.argv.join(" ")
    ));
    let mut captures = Vec::with_capacity(2);
    if let Some(out) = inner.stdout.take() {
        captures.push(logs::capture(id, Stream::Stdout, out, sink.clone()));
    }
    if let Some(err) = inner.stderr.take() {
        captures.push(logs::capture(id, Stream::Stderr, err, sink.clone()));
    }
    let pidfile = spec.home.join(PIDFILE);
    let mut child = Child {
        id,
        pid,
        inner,
        pidfile: pidfile.clone(),
        sink,
        captures,
        exit: None,
    };
    if let Err(source) = write_pidfile(&pidfile, pid) {
        // Without a pidfile a later run could not find this process: do not run it.
        child.kill();
        child.wait().await;
        return Err(ProcessError::Pidfile {
            path: pidfile,
            source,
        });
    }
    tracing::info!(instance = id, pid, port = spec.port, "started");
    Ok(child)
}

type SpawnJob = (
    tokio::process::Command,
    tokio::runtime::Handle,
    oneshot::Sender<io::Result<tokio::process::Child>>,
);

/// Forks on one thread that lives as long as the process. The parent-death signal fires
/// when the *thread* that forked the child ends, not the process: forking on a runtime
/// thread that later retires (blocking pool, `block_in_place`) would kill the instance.
async fn spawn_on_spawner_thread(
    cmd: tokio::process::Command,
) -> Result<io::Result<tokio::process::Child>, ProcessError> {
    static SPAWNER: OnceLock<Mutex<std_mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("storeherd-spawner".into())
            .spawn(move || {
                for (mut cmd, handle, reply) in rx {
                    // The child's pipes and reaping belong to the caller's runtime.
                    let _guard = handle.enter();
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply, result) = oneshot::channel();
    let job = (cmd, tokio::runtime::Handle::current(), reply);
    spawner
        .lock()
        .map_err(|_| ProcessError::SpawnerGone)?
        .send(job)
        .map_err(|_| ProcessError::SpawnerGone)?;
    result.await.map_err(|_| ProcessError::SpawnerGone)
}

fn write_pidfile(path: &Path, pid: u32) -> io::Result<()> {
    crate::store::replace_file(path, format!("{pid}\n").as_bytes(), 0o644)
}

/// Removes the pidfile if it still names `pid` (a newer run may have replaced it).
fn remove_pidfile(path: &Path, pid: u32) {
    if read_pidfile(path) == Some(pid) {
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove pidfile: {e}");
        }
    }
}

fn read_pidfile(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Finds the process named by `<home>/storeherd.pid` from a previous run and, when it (or a
/// member of its process group) runs in `home` and holds a listening TCP socket on `port`,
/// stops its group: SIGTERM, up to 3 s, SIGKILL, up to 3 s. Returns the pid from the pidfile
/// when something was stopped. A pidfile naming a dead or unrelated process is just removed;
/// a pidfile naming a live child of this process is left alone. Blocks for up to 6 s: call
/// it from a blocking context.
pub fn kill_stale(home: &Path, port: u16) -> Result<Option<u32>, ProcessError> {
    let pidfile = home.join(PIDFILE);
    let text = match fs::read_to_string(&pidfile) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProcessError::Proc {
                path: pidfile,
                source,
            })
        }
    };
    let remove = || match fs::remove_file(&pidfile) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ProcessError::Pidfile {
            path: pidfile.clone(),
            source,
        }),
    };
    let pid = match text.trim().parse::<u32>() {
        Ok(pid) if pid > 1 && pid <= i32::MAX as u32 => pid,
        _ => {
            tracing::warn!(path = %pidfile.display(), "ignoring a malformed pidfile");
            remove()?;
            return Ok(None);
        }
    };
    if is_live_instance(pid) {
        // Started by this supervisor and not yet reaped: not stale.
        return Ok(None);
    }

    let home_canon = fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    let members: Vec<u32> = group_members(pid)
        .into_iter()
        .filter(|&p| runs_in(p, &home_canon))
        .collect();
    let listening = listening_inodes(port)?;
    let holder = members
        .iter()
        .copied()
        .find(|&p| holds_socket(p, &listening));
    let Some(holder) = holder else {
        if !members.is_empty() {
            tracing::warn!(pid, port, home = %home.display(),
                "the old pidfile's process runs in this home but does not hold the port; left alone");
        }
        remove()?;
        return Ok(None);
    };
    tracing::warn!(pid, holder, port, home = %home.display(),
        "a server of a previous run still holds the port; stopping it");

    // Our instances lead their own group; then the whole group goes, helpers included.
    let is_group = proc_stat(holder).is_some_and(|s| s.pgrp == pid);
    let send = |signal: Signal| {
        let target = Pid::from_raw(pid as i32);
        let result = if is_group {
            killpg(target, signal)
        } else {
            kill(Pid::from_raw(holder as i32), signal)
        };
        match result {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(ProcessError::Signal { pid, source }),
        }
    };
    let all_gone = || members.iter().all(|&p| !alive(p));
    send(Signal::SIGTERM)?;
    if !wait_until(all_gone, STALE_WAIT) {
        send(Signal::SIGKILL)?;
        if !wait_until(all_gone, STALE_WAIT) {
            return Err(ProcessError::StaleSurvived { pid, port });
        }
    }
    remove()?;
    Ok(Some(pid))
}

fn wait_until(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Pids of the instances this process started and has not reaped yet.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live_instances() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // The list stays consistent even if a holder panicked: each change is one push/retain.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_live_instance(pid: u32) -> bool {
    live_instances().contains(&pid)
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// The state letter: `R`, `S`, `D`, `Z` …
    state: char,
    pgrp: u32,
    /// Zombie or dead: no longer runs, holds nothing.
    dead: bool,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    stat_at(&format!("/proc/{pid}/stat"))
}

fn stat_at(path: &str) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(path).ok()?)
}

/// One `/proc/<pid>/stat` (or `task/<tid>/stat`) line.
fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat {
        state: state.chars().next()?,
        pgrp,
        dead: matches!(state, "Z" | "X" | "x"),
    })
}

/// The state letters of every thread of `pid` (none when it is gone).
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = format!("/proc/{pid}/task/{}/stat", t.file_name().to_string_lossy());
            stat_at(&stat).map(|s| s.state)
        })
        .collect()
}

/// Whether `pid`, or any thread of it, is in uninterruptible sleep (`D`): waiting in the
/// kernel, typically for I/O — on a hung NFS server, for as long as the server is away. A
/// thread counts because a server's store thread can hang while its listener still runs.
/// Signals, SIGKILL among them, may not take effect until that wait ends.
pub fn in_uninterruptible_sleep(pid: u32) -> bool {
    thread_states(pid).contains(&'D')
}

fn alive(pid: u32) -> bool {
    match proc_stat(pid) {
        None => false,
        Some(s) if !s.dead => true,
        // A leader thread that exited first shows as a zombie while its other threads still
        // run and hold the process's files (its listening socket among them).
        Some(_) => fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                let stat = format!("/proc/{pid}/task/{}/stat", t.file_name().to_string_lossy());
                stat_at(&stat).is_some_and(|s| !s.dead)
            })
        }),
    }
}

/// True while any process of group `pgid` exists (a zombie counts until reaped).
fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// `pid` itself if alive, and every live process whose group is `pid`.
fn group_members(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if alive(pid) {
        out.push(pid);
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if p != pid && proc_stat(p).is_some_and(|s| s.pgrp == pid && !s.dead) {
            out.push(p);
        }
    }
    out
}

/// `pid` is alive (a zombie leader with a live thread counts) and works in `home`, as spelled
/// or resolved: for tools that find a server through its pidfile.
pub fn alive_in(pid: u32, home: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let canon = fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    runs_in(pid, home) || (canon != home && runs_in(pid, &canon))
}

/// The process works in `home` (our instances run with cwd = home) or names it in its
/// command line (`-homedir DIR`).
fn runs_in(pid: u32, home: &Path) -> bool {
    if fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == home) {
        return true;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let home = home.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == home)
}

/// Inodes of the TCP sockets (v4 and v6) listening on `port`.
fn listening_inodes(port: u16) -> Result<Vec<u64>, ProcessError> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            // No IPv6 in this kernel or namespace.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ProcessError::Proc {
                    path: table.into(),
                    source,
                })
            }
        };
        out.extend(parse_listeners(&text, port));
    }
    Ok(out)
}

/// Parses a `/proc/net/tcp{,6}` table: `sl local rem st … uid timeout inode`.
fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let matches = u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == LISTEN;
            matches.then(|| f.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_display() {
        let e = Exit {
            code: Some(3),
            signal: None,
        };
        assert_eq!(e.to_string(), "exit status 3");
        let e = Exit {
            code: None,
            signal: Some(9),
        };
        assert_eq!(e.to_string(), "killed by signal 9 (SIGKILL)");
        let e = Exit::from(ExitStatus::from_raw(15));
        assert_eq!(e.to_string(), "killed by signal 15 (SIGTERM)");
        assert_eq!(Exit::from(ExitStatus::from_raw(2 << 8)).code, Some(2));
    }

    #[test]
    fn stat_lines_parse() {
        // A command name with spaces and parentheses, even a ") D (" of its own.
        let line = "4242 (my (odd) D 1 2 name) D 1 4240 4240 0 -1 4194560 183 0 0 0 3 1 0 0 20 0 \
                    3 0 1234 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'D',
                pgrp: 4240,
                dead: false
            })
        );
        let s = parse_stat("7 (sleep) S 1 7 7 0 -1 0").unwrap();
        assert_eq!((s.state, s.pgrp, s.dead), ('S', 7, false));
        assert!(parse_stat("9 (gone) Z 1 9 9").unwrap().dead);
        assert_eq!(parse_stat("9 (broken"), None);
        assert_eq!(parse_stat("9 (short) R 1"), None);
    }

    #[test]
    fn thread_states_of_a_live_process() {
        // This test process: at least the thread running it, each with a state letter.
        let states = thread_states(std::process::id());
        assert!(!states.is_empty());
        assert!(states.iter().all(|c| c.is_ascii_alphabetic()), "{states:?}");
        assert!(thread_states(u32::MAX).is_empty());
        assert!(!in_uninterruptible_sleep(u32::MAX));
    }

    #[test]
    fn listeners_parse() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listeners(table, 8081), vec![4242]);
        assert_eq!(parse_listeners(table, 22), vec![17]);
        assert!(parse_listeners(table, 80).is_empty());
    }
}
