//! Processes a test starts or watches: liveness by pid, bounded waits for an exit, and a
//! guard that kills and reaps.

use std::process::{Child, ExitStatus};
use std::time::Duration;

use super::wait::until;

/// True while a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X")),
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive, or `timeout`; returns those still alive.
pub fn wait_dead(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let left = until(timeout, || {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    left.err().flatten().unwrap_or_default()
}

/// Sends `signal` to `pid` (ignoring a process already gone).
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Waits (bounded) for `child` to exit by itself; its status, or `None` if it still runs.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    until(timeout, || child.try_wait().unwrap()).ok()
}

/// A child process killed (SIGKILL) and reaped when dropped, also when a test panics.
pub struct Reaped(pub Child);

impl Reaped {
    /// Waits (bounded) for the exit; `None` if it still runs.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.0, timeout)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
