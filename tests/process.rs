//! Instance processes, with real processes: output capture and rotation, stop/kill of the
//! whole group, exit reporting, stale-process clean-up and the parent-death signal.
//!
//! Some tests run this test binary again as a helper process (an `#[ignore]`d test selected
//! by name, driven by an environment variable): a listener "from a previous run", and a tiny
//! supervisor that is then killed with SIGKILL.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use storeherd::supervisor::logs::LogLimits;
use storeherd::supervisor::process::{kill_stale, spawn, Child, Exit, Spawn, PIDFILE};
use support::procs::{alive, Reaped as Guard};
use support::{eventually, eventually_async};

const LISTENER_ENV: &str = "STOREHERD_TEST_LISTENER_PORTFILE";
const SUPERVISOR_ENV: &str = "STOREHERD_TEST_SUPERVISOR_HOME";
/// Upper bound for anything a test waits for; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

fn sh(id: u32, home: &Path, script: &str) -> Spawn {
    Spawn {
        id,
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        home: home.to_owned(),
        port: 0,
        log: LogLimits::default(),
    }
}

/// This test binary, running one helper test.
fn helper(name: &str, env: (&str, &Path), cwd: &Path) -> Guard {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    Guard(child)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Waits until server.log holds `needle`; returns the log's text.
async fn log_has(home: &Path, needle: &str) -> String {
    let what = format!("server.log has {needle:?}");
    eventually_async(PATIENCE, what, || async {
        let text = read(&home.join("server.log"));
        if text.contains(needle) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
}

/// The number on the log line that starts with `word` (the start note quotes the script,
/// so the word alone is not enough).
fn number_after(text: &str, word: &str) -> u32 {
    let line = text.lines().find(|l| l.starts_with(word)).unwrap();
    line[word.len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn output_lines_reach_server_log_and_pidfile_follows_the_process() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(
        1,
        home.path(),
        "pwd; echo out-line; echo 'ERROR bad thing' >&2; printf 'no newline'; read x; exit 3",
    ))
    .await
    .unwrap();
    // stdin is null: `read` sees end of file at once, so this exits by itself.
    let pidfile = home.path().join(PIDFILE);
    let exit = child.wait().await;
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.to_string(), "exit status 3");
    assert!(!pidfile.exists(), "pidfile left after reaping");

    let log = read(&home.path().join("server.log"));
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.contains(&"out-line"), "{log}");
    let home_canon = fs::canonicalize(home.path()).unwrap();
    assert!(lines.contains(&home_canon.to_str().unwrap()), "cwd: {log}");
    assert!(lines.contains(&"ERROR bad thing"), "{log}");
    assert!(lines.contains(&"no newline"), "{log}");
    assert!(lines[0].contains("started pid"), "{log}");
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with(&format!("pid {} ended: exit status 3", child.pid())),
        "{log}"
    );
    // Reaped: waiting again answers the same at once.
    assert_eq!(child.wait().await, exit);
}

#[tokio::test]
async fn pidfile_names_the_running_process() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(2, home.path(), "echo up; exec sleep 60"))
        .await
        .unwrap();
    let pidfile = home.path().join(PIDFILE);
    assert_eq!(read(&pidfile).trim(), child.pid().to_string());
    // kill_stale must not touch a live instance of this very supervisor.
    assert_eq!(kill_stale(home.path(), 0).unwrap(), None);
    assert!(pidfile.exists());
    let exit = child.stop(Duration::from_secs(10)).await;
    assert_eq!(exit.signal, Some(15));
    assert!(!pidfile.exists());
}

#[tokio::test]
async fn rotation_bounds_the_total_size() {
    let home = tempfile::tempdir().unwrap();
    let mut spec = sh(
        3,
        home.path(),
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the chatty server\"; i=$((i+1)); done",
    );
    spec.log = LogLimits {
        max_bytes: 4096,
        files: 3,
    };
    let mut child = spawn(&spec).await.unwrap();
    assert!(child.wait().await.success());

    let mut total = 0;
    let mut names = Vec::new();
    for entry in fs::read_dir(home.path()).unwrap() {
        let entry = entry.unwrap();
        let len = entry.metadata().unwrap().len();
        assert!(len <= 4096, "{:?} holds {len} bytes", entry.file_name());
        total += len;
        names.push(entry.file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(names, ["server.log", "server.log.1", "server.log.2"]);
    assert!(total <= 3 * 4096);
    let current = read(&home.path().join("server.log"));
    assert!(
        current.contains("line 2999 of the chatty server\n"),
        "{current}"
    );
}

#[tokio::test]
async fn stop_sends_term_then_kill_after_grace() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(
        4,
        home.path(),
        "trap 'echo got-term' TERM; echo trapped; while :; do sleep 0.05; done",
    ))
    .await
    .unwrap();
    log_has(home.path(), "\ntrapped").await;
    let exit = child.stop(Duration::from_millis(500)).await;
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert_eq!(exit.to_string(), "killed by signal 9 (SIGKILL)");
    let log = log_has(home.path(), "\ngot-term").await;
    assert!(log.contains("ended: killed by signal 9 (SIGKILL)"), "{log}");
    assert!(!home.path().join(PIDFILE).exists());
}

#[tokio::test]
async fn stop_of_a_polite_server_is_sigterm() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(5, home.path(), "exec sleep 60")).await.unwrap();
    let exit = child.stop(Duration::from_secs(10)).await;
    assert_eq!(
        exit,
        Exit {
            code: None,
            signal: Some(15)
        }
    );
    assert_eq!(exit.to_string(), "killed by signal 15 (SIGTERM)");
    // Stopping again is harmless and answers the same.
    assert_eq!(child.stop(Duration::from_secs(1)).await, exit);
}

#[tokio::test]
async fn stop_kills_a_grandchild_that_ignores_term() {
    let home = tempfile::tempdir().unwrap();
    // The background job ignores TERM (ignored signals survive exec); the leader does not.
    let mut child = spawn(&sh(
        6,
        home.path(),
        "(trap '' TERM; exec sleep 60) & echo \"grandchild $!\"; wait",
    ))
    .await
    .unwrap();
    let log = log_has(home.path(), "\ngrandchild ").await;
    let grandchild = number_after(&log, "grandchild ");
    assert!(alive(grandchild));
    let exit = child.stop(Duration::from_millis(500)).await;
    assert_eq!(exit.signal, Some(15), "{exit}");
    eventually(PATIENCE, "the grandchild dies", || !alive(grandchild));
}

#[tokio::test]
async fn the_group_dies_with_a_crashed_leader() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(
        7,
        home.path(),
        "sleep 60 & echo \"grandchild $!\"; read x; kill -9 $$",
    ))
    .await
    .unwrap();
    let exit = child.wait().await;
    assert_eq!(exit.to_string(), "killed by signal 9 (SIGKILL)");
    let log = read(&home.path().join("server.log"));
    let grandchild = number_after(&log, "grandchild ");
    eventually(PATIENCE, "the grandchild dies", || !alive(grandchild));
}

#[tokio::test]
async fn kill_is_sigkill_to_the_group() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(
        8,
        home.path(),
        "sleep 60 & echo \"grandchild $!\"; wait",
    ))
    .await
    .unwrap();
    let log = log_has(home.path(), "\ngrandchild ").await;
    let grandchild = number_after(&log, "grandchild ");
    child.kill();
    let exit = child.wait().await;
    assert_eq!(exit.signal, Some(9));
    eventually(PATIENCE, "the grandchild dies", || !alive(grandchild));
}

#[tokio::test]
async fn dropping_a_child_kills_it() {
    let home = tempfile::tempdir().unwrap();
    let child = spawn(&sh(9, home.path(), "exec sleep 60")).await.unwrap();
    let pid = child.pid();
    drop(child);
    eventually(PATIENCE, "the dropped child dies", || !alive(pid));
    assert!(!home.path().join(PIDFILE).exists());
}

#[tokio::test]
async fn a_missing_program_is_an_error() {
    let home = tempfile::tempdir().unwrap();
    let mut spec = sh(10, home.path(), "");
    spec.argv = vec!["/nonexistent/storeherd-test-server".into()];
    let err = spawn(&spec).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/storeherd-test-server"),
        "{err}"
    );
    assert!(!home.path().join(PIDFILE).exists());
    spec.argv.clear();
    assert!(spawn(&spec).await.is_err());
}

/// Forking happens on a thread that lives as long as the process, so an instance survives
/// the end of the thread that asked for it (the parent-death signal follows the forking
/// thread, not the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_survives_the_thread_that_spawned_it() {
    let home = tempfile::tempdir().unwrap();
    let spec = sh(11, home.path(), "exec sleep 60");
    let handle = tokio::runtime::Handle::current();
    let mut child: Child = std::thread::spawn(move || handle.block_on(spawn(&spec)))
        .join()
        .unwrap()
        .unwrap();
    // Were the death signal tied to that thread, the child would already be dying.
    let early = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
    assert!(early.is_err(), "the child died with its spawning thread");
    assert!(alive(child.pid()));
    assert_eq!(child.stop(Duration::from_secs(10)).await.signal, Some(15));
}

/// Helper process: listens on an ephemeral loopback port, writes the port, sleeps.
#[test]
#[ignore = "helper process, run by kill_stale tests"]
fn helper_listener() {
    let portfile = PathBuf::from(std::env::var_os(LISTENER_ENV).expect(LISTENER_ENV));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tmp = portfile.with_extension("tmp");
    fs::File::create(&tmp)
        .unwrap()
        .write_all(port.to_string().as_bytes())
        .unwrap();
    fs::rename(tmp, portfile).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Starts a listener helper in `cwd`; returns it and its port.
fn start_listener(cwd: &Path, scratch: &Path) -> (Guard, u16) {
    let portfile = scratch.join(format!("port-{}", rand_suffix()));
    let guard = helper("helper_listener", (LISTENER_ENV, &portfile), cwd);
    let port = eventually(PATIENCE, "the listener writes its port", || {
        read(&portfile).trim().parse::<u16>().ok()
    });
    (guard, port)
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn kill_stale_stops_a_previous_server_holding_the_port() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (mut old, port) = start_listener(home.path(), scratch.path());
    let pid = old.0.id();
    fs::write(home.path().join(PIDFILE), format!("{pid}\n")).unwrap();

    assert_eq!(kill_stale(home.path(), port).unwrap(), Some(pid));
    let status = old.0.wait().unwrap();
    assert_eq!(
        Exit::from(status).to_string(),
        "killed by signal 15 (SIGTERM)"
    );
    assert!(!home.path().join(PIDFILE).exists());
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
}

#[test]
fn kill_stale_leaves_unrelated_processes_alone() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let pidfile = home.path().join(PIDFILE);

    // Holds the port, but runs in another directory: an unrelated process that got the pid.
    let (mut unrelated, port) = start_listener(elsewhere.path(), scratch.path());
    fs::write(&pidfile, format!("{}\n", unrelated.0.id())).unwrap();
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
    assert!(!pidfile.exists());
    assert!(unrelated.0.try_wait().unwrap().is_none());

    // Runs in the home, but does not hold the port.
    let (mut other, _) = start_listener(home.path(), scratch.path());
    fs::write(&pidfile, format!("{}\n", other.0.id())).unwrap();
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
    assert!(!pidfile.exists());
    assert!(other.0.try_wait().unwrap().is_none());

    // A dead process, and garbage.
    let mut dead = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
    assert!(!pidfile.exists());
    fs::write(&pidfile, "not a pid\n").unwrap();
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
    assert!(!pidfile.exists());
    assert_eq!(kill_stale(home.path(), port).unwrap(), None);
}

#[tokio::test]
async fn spawn_clears_a_stale_server_first() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (mut old, port) = start_listener(home.path(), scratch.path());
    fs::write(home.path().join(PIDFILE), format!("{}\n", old.0.id())).unwrap();
    let mut spec = sh(12, home.path(), "exec sleep 60");
    spec.port = port;
    let mut child = spawn(&spec).await.unwrap();
    assert!(old.0.try_wait().unwrap().is_some() || !alive(old.0.id()));
    assert_eq!(
        read(&home.path().join(PIDFILE)).trim(),
        child.pid().to_string()
    );
    child.stop(Duration::from_secs(10)).await;
}

/// Kills a process group when the test ends, also on panic.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// The pidfile's leader is gone, but a process it forked (same group, same home) still
/// holds the port: PDEATHSIG reaches only direct children, so this is how a stale server
/// survives a killed supervisor when its command is a wrapper that forks.
#[test]
fn kill_stale_finds_an_orphan_of_the_old_group() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let portfile = scratch.path().join("port");
    let exe = std::env::current_exe().unwrap();
    let mut wrapper = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "\"$0\" --exact helper_listener --ignored --test-threads=1 >/dev/null &",
        ])
        .arg(&exe)
        .env(LISTENER_ENV, &portfile)
        .current_dir(home.path())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let leader = wrapper.id();
    let _group = GroupGuard(leader);
    assert!(wrapper.wait().unwrap().success());
    let port = eventually(PATIENCE, "the orphan writes its port", || {
        read(&portfile).trim().parse::<u16>().ok()
    });
    fs::write(home.path().join(PIDFILE), format!("{leader}\n")).unwrap();

    assert_eq!(kill_stale(home.path(), port).unwrap(), Some(leader));
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    assert!(!home.path().join(PIDFILE).exists());
}

/// Helper process: a tiny supervisor that starts one instance and waits to be killed.
#[test]
#[ignore = "helper process, run by the pdeathsig test"]
fn helper_supervisor() {
    let home = PathBuf::from(std::env::var_os(SUPERVISOR_ENV).expect(SUPERVISOR_ENV));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _child = spawn(&sh(1, &home, "exec sleep 60")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn an_instance_dies_with_a_killed_supervisor() {
    let home = tempfile::tempdir().unwrap();
    let mut supervisor = helper(
        "helper_supervisor",
        (SUPERVISOR_ENV, home.path()),
        home.path(),
    );
    let pidfile = home.path().join(PIDFILE);
    let instance = eventually(PATIENCE, "the instance writes its pidfile", || {
        read(&pidfile).trim().parse::<u32>().ok()
    });
    assert!(alive(instance));
    kill(Pid::from_raw(supervisor.0.id() as i32), Signal::SIGKILL).unwrap();
    supervisor.0.wait().unwrap();
    let died = support::until(Duration::from_secs(2), || !alive(instance));
    if died.is_err() {
        // Do not leave it behind for other tests.
        let _ = kill(Pid::from_raw(instance as i32), Signal::SIGKILL);
        panic!("instance {instance} outlived its SIGKILLed supervisor by 2 s");
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn output_lines_reach_tracing_with_the_instance_field() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The current-thread runtime polls the capture tasks on this thread.
    let _default = tracing::subscriber::set_default(subscriber);
    // Callsites cache their interest process-wide: one first hit by another test's thread,
    // with no subscriber there, stays "never" for this thread's subscriber too until rebuilt.
    tracing::callsite::rebuild_interest_cache();
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn(&sh(
        13,
        home.path(),
        "echo hello-out; echo 'ERROR: boom' >&2; echo plain-err >&2; echo 'DEBUG detail' >&2",
    ))
    .await
    .unwrap();
    child.wait().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle) && l.contains("instance{instance=13}"))
            .unwrap_or_else(|| panic!("no {needle:?} line with the instance span: {text}"))
            .to_owned()
    };
    assert!(line("hello-out").contains(" INFO "), "{text}");
    assert!(line("boom").contains(" ERROR "), "{text}");
    assert!(line("plain-err").contains(" WARN "), "{text}");
    assert!(line("detail").contains(" DEBUG "), "{text}");
    assert!(line("hello-out").contains("stream=\"stdout\""), "{text}");
}
