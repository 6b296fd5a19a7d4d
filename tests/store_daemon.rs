//! `storeherd store` with the original server's options (server.py): `-daemon -pidfile`
//! detaches, `-logfile` takes the log, `-logtraffic` logs every line; SIGTERM stops it.

mod support;

use std::process::Command;
use std::time::Duration;

use storeherd::server::identity::Identity;
use support::procs::{alive, wait_dead};
use support::store::Raw;
use support::{eventually, until};

/// SIGKILLs the daemon if a test ends with it still running.
struct Daemon(Option<u32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[test]
fn daemon_writes_its_pidfile_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    Identity::generate("storeherd-test")
        .unwrap()
        .install(&home.join("ssl"))
        .unwrap();
    let port = support::ports::port();
    std::fs::write(
        home.join("config.txt"),
        format!("sport: {port}\nlisten_address: 127.0.0.1\n"),
    )
    .unwrap();
    let pidfile = dir.path().join("store.pid");
    let logfile = dir.path().join("store.log");

    // The original's spelling; the command returns once the daemon is detached.
    let out = Command::new(support::BIN)
        .args(["store", "-homedir"])
        .arg(&home)
        .args(["-daemon", "-logtraffic", "-pidfile"])
        .arg(&pidfile)
        .arg("-logfile")
        .arg(&logfile)
        .env("STOREHERD_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut guard = Daemon(None);

    let greeting = eventually(Duration::from_secs(20), "the daemon greets", || {
        let mut raw = Raw::connect(([127, 0, 0, 1], port).into()).ok()?;
        let greeting = raw.line()?;
        assert_eq!(raw.cmd("PING hello"), "PONG hello");
        assert_eq!(raw.cmd("QUIT"), "GOODBYE");
        Some(greeting)
    });
    assert!(greeting.ends_with("READY"));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    guard.0 = Some(pid);
    assert!(alive(pid));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("store"),
        "the pid file names the server"
    );
    // Detached: a session of its own, and the log in the log file, traffic included.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(sid.as_raw() as u32, pid);
    let log = until(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&logfile).unwrap_or_default();
        if log.contains("> PONG hello") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    let log = log.unwrap_or_else(|last| last.unwrap_or_default());
    assert!(log.contains("< PING hello"), "{log}");
    assert!(log.contains("> PONG hello"), "{log}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_dead(&[pid], Duration::from_secs(20)).is_empty());
    eventually(
        Duration::from_secs(5),
        "the pid file is removed on a clean stop",
        || !pidfile.exists(),
    );
    assert!(std::fs::read_to_string(&logfile)
        .unwrap()
        .contains("SIGTERM"));
}
