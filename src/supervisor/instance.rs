//! One instance's lifecycle, run as its own task: provisioning → starting → ready, health
//! checks, crash → backoff → starting, crash loop → failed, stalled while stuck in I/O, and
//! draining before a stop (docs/design.md "Instance lifecycle"). The supervisor talks to it through [`Ctl`] and hears
//! from it through [`Event`].

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::health::{self, HealthError};
use super::process::{self, Child, ProcessError, Spawn};
use super::provision::{self, Prepared, ProvisionError};
use crate::control::InstanceState;
use crate::proxy::Pool;
use crate::store::queued_uploads;
use crate::topology::{InstancePlan, Plan};
use crate::wire::WireError;

/// A healthy minute resets the restart backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Health-check period of an instance that has not been ready yet.
const STARTING_CHECK: Duration = Duration::from_millis(100);
/// How often draining polls connection counts and the input queue.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// What the instance task reports about itself.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub started: Option<Instant>,
    pub addr: SocketAddr,
}

#[derive(Debug)]
pub enum Event {
    Info {
        id: u32,
        info: InstanceInfo,
    },
    /// The task ended (removed or shut down); its home stays on disk.
    Gone {
        id: u32,
    },
}

/// Why a restart did not end with the instance ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    /// Not there, or being removed.
    #[error("no instance {0}")]
    NoSuchInstance(u32),
    #[error("superseded by another restart")]
    Superseded,
    #[error("instance {0} failed (crash loop)")]
    CrashLoop(u32),
}

/// Where a restart's outcome goes, once the instance is ready again (or is not to be).
pub type RestartReply = oneshot::Sender<Result<(), RestartError>>;

/// Why a new process could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Requests from the supervisor. The supervisor takes the instance out of the proxy's
/// rotation before sending any of them.
#[derive(Debug)]
pub enum Ctl {
    /// Drain (unless `now`), wait for the input queue to empty, stop, end the task.
    Remove { now: bool },
    /// Drain (if `drain`), stop, start again; `ready` answers once it is ready (or failed).
    Restart { drain: bool, ready: RestartReply },
    /// Drain, stop, end the task (supervisor shutdown); the queue stays for the next start.
    Shutdown,
}

pub struct Runner {
    pub id: u32,
    pub plan: watch::Receiver<Arc<Plan>>,
    pub prepared: Arc<Prepared>,
    pub pool: Pool,
    pub events: mpsc::UnboundedSender<Event>,
    pub ctl: mpsc::Receiver<Ctl>,
}

/// Why supervising a running child stopped.
enum Outcome {
    Exited(process::Exit),
    Hung(String),
    Ctl(Option<Ctl>),
}

/// What to do once the current child is gone.
enum Next {
    Respawn,
    End,
}

struct State {
    info: InstanceInfo,
    backoff: Duration,
    crashes: VecDeque<Instant>,
    /// Answer to a restart request, sent when the new process is ready.
    pending_ready: Option<RestartReply>,
    /// A removal in progress survives a crash of the child: it is respawned to drain its queue.
    removing: Option<bool>,
}

/// The address the instance listens on: its `listen_address` and `sport`.
pub fn instance_addr(ip: &InstancePlan) -> SocketAddr {
    let host = ip
        .config
        .iter()
        .find(|(k, _)| k == "listen_address")
        .and_then(|(_, v)| v.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(host, ip.port)
}

/// What is known when a health check has failed (and did not count as busy or local).
#[derive(Debug, Clone, Copy)]
struct Failed {
    state: InstanceState,
    ever_ready: bool,
    /// Failed checks in a row, this one included.
    fails: u32,
    unhealthy_after: u32,
    since_start: Duration,
    start_grace: Duration,
    since_answer: Duration,
    stop_grace: Duration,
    /// The process, or a thread of it, is in uninterruptible sleep (`D`).
    in_io: bool,
}

/// Why an instance is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// Never ready within `health.start_grace`.
    StartGrace,
    /// No answer for longer than `server.stop_grace` after it was ready.
    NoAnswer,
}

/// What a failed health check leads to: the state to show, and whether to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    state: InstanceState,
    kill: Option<Kill>,
}

/// The rules for a failed check. A process in `D` is `stalled`: out of rotation, never
/// killed — a kill would not take effect until the wait ends, and a new server on the same
/// hung file system would stall too, so restarting would only loop. Once it is out of `D`
/// the usual rules apply again (the caller restarts their clocks while it is stalled).
fn judge(f: &Failed) -> Verdict {
    if f.in_io {
        return Verdict {
            state: InstanceState::Stalled,
            kill: None,
        };
    }
    let state = match f.state {
        InstanceState::Stalled if f.ever_ready => InstanceState::Unhealthy,
        InstanceState::Stalled => InstanceState::Starting,
        InstanceState::Ready if f.ever_ready && f.fails >= f.unhealthy_after => {
            InstanceState::Unhealthy
        }
        s => s,
    };
    let kill = if !f.ever_ready && f.since_start > f.start_grace {
        Some(Kill::StartGrace)
    } else if f.ever_ready && f.since_answer > f.stop_grace {
        Some(Kill::NoAnswer)
    } else {
        None
    };
    Verdict { state, kill }
}

/// Tells whether an instance's input queue shrank since the last look.
#[derive(Default)]
struct QueueWatch {
    last: Option<u64>,
}

impl QueueWatch {
    fn progressed(&mut self, home: &Path) -> bool {
        let now = queued_uploads(home);
        let progressed = self.last.is_some_and(|before| now < before);
        self.last = Some(now);
        progressed
    }
}

impl Runner {
    pub async fn run(mut self) {
        let plan = self.plan.borrow().clone();
        let ip = plan.instance(self.id);
        let mut st = State {
            info: InstanceInfo {
                state: InstanceState::Provisioning,
                pid: None,
                restarts: 0,
                started: None,
                addr: instance_addr(&ip),
            },
            backoff: plan.restart.backoff_min,
            crashes: VecDeque::new(),
            pending_ready: None,
            removing: None,
        };
        let mut first = true;
        loop {
            if !first {
                st.info.restarts += 1;
            }
            first = false;
            let next = self.one_life(&mut st).await;
            match next {
                Next::Respawn => continue,
                Next::End => break,
            }
        }
        st.info.pid = None;
        self.set(&mut st, InstanceState::Stopped);
        let _ = self.events.send(Event::Gone { id: self.id });
    }

    fn set(&self, st: &mut State, state: InstanceState) {
        if st.info.state != state {
            debug!(
                instance = self.id,
                from = st.info.state.as_str(),
                to = state.as_str(),
                "state"
            );
        }
        st.info.state = state;
        let _ = self.events.send(Event::Info {
            id: self.id,
            info: st.info.clone(),
        });
    }

    /// Provision, spawn and supervise one process; then decide what comes next.
    async fn one_life(&mut self, st: &mut State) -> Next {
        let plan = self.plan.borrow().clone();
        let ip = plan.instance(self.id);
        st.info.addr = instance_addr(&ip);
        self.set(st, InstanceState::Provisioning);
        let mut child = match self.start(&plan, &ip).await {
            Ok(c) => c,
            Err(e) => {
                error!(instance = self.id, "cannot start: {e}");
                return self.after_crash(st, &plan).await;
            }
        };
        st.info.pid = Some(child.pid());
        st.info.started = Some(Instant::now());
        self.set(st, InstanceState::Starting);

        if let Some(now) = st.removing {
            return self.remove(st, &plan, &ip, &mut child, now).await;
        }
        match self.supervise(st, &mut child).await {
            Outcome::Exited(exit) => {
                warn!(instance = self.id, "server exited: {exit}");
                st.info.pid = None;
                self.after_crash(st, &plan).await
            }
            Outcome::Hung(why) => {
                warn!(instance = self.id, "server hung ({why}); killing it");
                child.kill();
                let exit = child.wait().await;
                info!(instance = self.id, "hung server ended: {exit}");
                st.info.pid = None;
                self.after_crash(st, &plan).await
            }
            Outcome::Ctl(ctl) => self.handle_ctl(st, &plan, &ip, &mut child, ctl).await,
        }
    }

    async fn start(&self, plan: &Plan, ip: &InstancePlan) -> Result<Child, StartError> {
        provision::provision_home(plan, &self.prepared, self.id)?;
        // spawn() first stops any stale server of an earlier run that holds the port.
        process::spawn(&Spawn {
            id: self.id,
            argv: ip.argv.clone(),
            home: ip.home.clone(),
            port: ip.port,
            log: super::logs::LogLimits::default(),
        })
        .await
        .map_err(StartError::from)
    }

    /// Health checks until the child exits, hangs, or a control request arrives.
    async fn supervise(&mut self, st: &mut State, child: &mut Child) -> Outcome {
        let mut started = Instant::now();
        let mut ever_ready = false;
        let mut last_answer = Instant::now();
        let mut ready_since: Option<Instant> = None;
        let mut fails = 0u32;
        let mut next_check = tokio::time::Instant::now();
        let home = self.plan.borrow().home(self.id);
        let mut queue = QueueWatch::default();
        loop {
            let plan = self.plan.borrow().clone();
            let h = plan.health;
            tokio::select! {
                exit = child.wait() => return Outcome::Exited(exit),
                ctl = self.ctl.recv() => return Outcome::Ctl(ctl),
                _ = tokio::time::sleep_until(next_check) => {}
            }
            // Until the first pass, check often: a new server is usually ready within
            // milliseconds, and every moment out of rotation is capacity lost.
            let every = if ever_ready {
                h.interval
            } else {
                h.interval.min(STARTING_CHECK)
            };
            next_check = tokio::time::Instant::now() + every;
            // The check runs beside exit and control watching, so neither waits for it.
            let check = health::check(st.info.addr, h.timeout);
            tokio::pin!(check);
            let result = tokio::select! {
                exit = child.wait() => return Outcome::Exited(exit),
                ctl = self.ctl.recv() => return Outcome::Ctl(ctl),
                r = &mut check => r,
            };
            // Sampled at every check, so that a timeout compares with the check before it.
            let draining_queue = queue.progressed(&home);
            match result {
                Ok(()) => {
                    fails = 0;
                    last_answer = Instant::now();
                    ever_ready = true;
                    let since = *ready_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= BACKOFF_RESET_AFTER {
                        st.backoff = plan.restart.backoff_min;
                        st.crashes.clear();
                    }
                    // Before it enters rotation, so that its first clients are handed over.
                    self.attach_handoff(&home);
                    if st.info.state == InstanceState::Stalled {
                        info!(instance = self.id, "no longer stalled in I/O");
                    }
                    if st.info.state != InstanceState::Ready {
                        info!(instance = self.id, "ready");
                        self.set(st, InstanceState::Ready);
                    }
                    if let Some(tx) = st.pending_ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                // BUSY proves the process answers; it is full, not broken, so it stays.
                Err(HealthError::Wire(WireError::Busy)) => last_answer = Instant::now(),
                // SELFTEST waits behind every queued block: under a store backlog it can
                // outlast the timeout while the worker is plainly alive, taking blocks off
                // the queue. That is a busy instance, not a failed one.
                Err(HealthError::Timeout(_)) if draining_queue => {
                    last_answer = Instant::now();
                    debug!(
                        instance = self.id,
                        "health check timed out behind a draining queue"
                    );
                }
                // Our own descriptors ran out: no verdict on the instance either way.
                Err(e) if e.is_local() => {
                    debug!(instance = self.id, "health check not made: {e}")
                }
                Err(e) => {
                    fails += 1;
                    ready_since = None;
                    debug!(instance = self.id, fails, "health check failed: {e}");
                    let verdict = judge(&Failed {
                        state: st.info.state,
                        ever_ready,
                        fails,
                        unhealthy_after: h.unhealthy_after,
                        since_start: started.elapsed(),
                        start_grace: h.start_grace,
                        since_answer: last_answer.elapsed(),
                        stop_grace: plan.server.stop_grace,
                        in_io: process::in_uninterruptible_sleep(child.pid()),
                    });
                    if verdict.state != st.info.state {
                        match verdict.state {
                            InstanceState::Stalled => warn!(
                                instance = self.id,
                                pid = child.pid(),
                                "stalled: the server fails its health check ({e}) while it \
                                 waits in the kernel (state D, as on a hung NFS server); out of \
                                 rotation, and not killed or restarted until it leaves that \
                                 state — check the store's file system"
                            ),
                            InstanceState::Unhealthy if st.info.state == InstanceState::Ready => {
                                warn!(
                                    instance = self.id,
                                    "unhealthy after {fails} failed checks: {e}"
                                )
                            }
                            _ => info!(
                                instance = self.id,
                                "no longer stalled in I/O, still failing health checks: {e}"
                            ),
                        }
                        self.set(st, verdict.state);
                    }
                    if verdict.state == InstanceState::Stalled {
                        // Time spent stuck does not count as time without an answer.
                        last_answer = Instant::now();
                        started = Instant::now();
                    }
                    match verdict.kill {
                        Some(Kill::StartGrace) => {
                            return Outcome::Hung(format!(
                                "not ready within start_grace {:?}: {e}",
                                h.start_grace
                            ))
                        }
                        Some(Kill::NoAnswer) => {
                            return Outcome::Hung(format!(
                                "no answer for {:?}: {e}",
                                last_answer.elapsed()
                            ))
                        }
                        None => {}
                    }
                }
            }
        }
    }

    async fn handle_ctl(
        &mut self,
        st: &mut State,
        plan: &Plan,
        ip: &InstancePlan,
        child: &mut Child,
        ctl: Option<Ctl>,
    ) -> Next {
        match ctl {
            Some(Ctl::Restart { drain, ready }) => {
                if let Some(old) = st.pending_ready.replace(ready) {
                    let _ = old.send(Err(RestartError::Superseded));
                }
                self.set(st, InstanceState::Draining);
                if drain {
                    self.drain_connections(plan.proxy.drain_timeout).await;
                }
                let exit = child.stop(plan.server.stop_grace).await;
                info!(instance = self.id, "stopped for restart: {exit}");
                st.info.pid = None;
                Next::Respawn
            }
            Some(Ctl::Remove { now }) => {
                st.removing = Some(now);
                self.remove(st, plan, ip, child, now).await
            }
            Some(Ctl::Shutdown) | None => {
                self.set(st, InstanceState::Draining);
                self.drain_connections(plan.proxy.drain_timeout).await;
                let exit = child.stop(plan.server.stop_grace).await;
                info!(instance = self.id, "stopped: {exit}");
                Next::End
            }
        }
    }

    /// Removal: drain connections, then wait until every queued block is processed (no block
    /// answered `DONE` may be lost), then stop. A crash meanwhile respawns the server.
    async fn remove(
        &mut self,
        st: &mut State,
        plan: &Plan,
        ip: &InstancePlan,
        child: &mut Child,
        now: bool,
    ) -> Next {
        self.set(st, InstanceState::Draining);
        if !now {
            self.drain_connections(plan.proxy.drain_timeout).await;
        }
        let mut last_log = Instant::now();
        loop {
            let queued = queued_uploads(&ip.home);
            if queued == 0 {
                break;
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                info!(
                    instance = self.id,
                    queued, "waiting for the input queue to empty before removal"
                );
                last_log = Instant::now();
            }
            tokio::select! {
                exit = child.wait() => {
                    warn!(instance = self.id, "server exited while draining its queue: {exit}; starting it again");
                    st.info.pid = None;
                    return Next::Respawn;
                }
                ctl = self.ctl.recv() => {
                    if matches!(ctl, Some(Ctl::Shutdown) | None) {
                        info!(instance = self.id, queued, "shutdown during removal; queued blocks stay in the home for the next start");
                        break;
                    }
                }
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
        }
        let exit = child.stop(plan.server.stop_grace).await;
        info!(instance = self.id, "removed: {exit}");
        Next::End
    }

    /// Opens the instance's hand-off channel when it is not up (first ready, restarted, or
    /// the channel dropped). Built-in instances listen on one (`--handoff`); an instance
    /// without a listening channel (the original server) is relayed, per instance.
    fn attach_handoff(&self, home: &Path) {
        if self.pool.handoff_up(self.id) {
            return;
        }
        let path = crate::handoff::socket_path(home);
        match self.pool.attach_handoff(self.id, &path) {
            Ok(()) => debug!(instance = self.id, "hand-off channel up"),
            Err(e) => debug!(
                instance = self.id,
                "no hand-off channel at {} ({e}); relaying",
                path.display()
            ),
        }
    }

    /// Waits until the proxy has no session open on this instance, or `timeout`.
    async fn drain_connections(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pool.active_for(self.id) > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = self.pool.active_for(self.id);
        if left > 0 {
            info!(
                instance = self.id,
                left, "drain timeout; cutting the remaining sessions"
            );
        }
    }

    /// After a crash: count it, go to `failed` on a crash loop, else back off and respawn.
    async fn after_crash(&mut self, st: &mut State, plan: &Plan) -> Next {
        let now = Instant::now();
        st.crashes.push_back(now);
        while st
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > plan.restart.crash_loop_within)
        {
            st.crashes.pop_front();
        }
        if st.crashes.len() as u32 >= plan.restart.crash_loop_restarts {
            error!(
                instance = self.id,
                crashes = st.crashes.len(),
                "crash loop: kept down until `storeherd restart {}`",
                self.id
            );
            self.set(st, InstanceState::Failed);
            if let Some(tx) = st.pending_ready.take() {
                let _ = tx.send(Err(RestartError::CrashLoop(self.id)));
            }
            return match self.ctl.recv().await {
                Some(Ctl::Restart { ready, .. }) => {
                    st.pending_ready = Some(ready);
                    st.crashes.clear();
                    st.backoff = plan.restart.backoff_min;
                    Next::Respawn
                }
                // Nothing runs, so nothing to drain; queued blocks stay in the home and are
                // processed if the instance is added again.
                Some(Ctl::Remove { .. }) | Some(Ctl::Shutdown) | None => Next::End,
            };
        }
        self.set(st, InstanceState::Backoff);
        let delay = st.backoff;
        st.backoff = (st.backoff * 2).min(plan.restart.backoff_max);
        info!(
            instance = self.id,
            "restarting after backoff {}",
            crate::topology::format_duration(delay)
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => Next::Respawn,
            ctl = self.ctl.recv() => match ctl {
                Some(Ctl::Restart { ready, .. }) => {
                    st.pending_ready = Some(ready);
                    Next::Respawn
                }
                Some(Ctl::Remove { now }) => {
                    st.removing = Some(now);
                    // Respawn so that its queue is processed before it goes.
                    Next::Respawn
                }
                Some(Ctl::Shutdown) | None => Next::End,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ready instance failing its first check, well within every grace.
    fn failed() -> Failed {
        Failed {
            state: InstanceState::Ready,
            ever_ready: true,
            fails: 1,
            unhealthy_after: 3,
            since_start: Duration::from_secs(100),
            start_grace: Duration::from_secs(30),
            since_answer: Duration::from_secs(1),
            stop_grace: Duration::from_secs(10),
            in_io: false,
        }
    }

    fn keep(state: InstanceState) -> Verdict {
        Verdict { state, kill: None }
    }

    #[test]
    fn a_failed_check_in_state_d_stalls_and_never_kills() {
        // However long without an answer, and before or after it was ever ready.
        for (state, ever_ready) in [
            (InstanceState::Ready, true),
            (InstanceState::Unhealthy, true),
            (InstanceState::Stalled, true),
            (InstanceState::Starting, false),
        ] {
            let f = Failed {
                state,
                ever_ready,
                fails: 50,
                since_start: Duration::from_secs(3600),
                since_answer: Duration::from_secs(3600),
                in_io: true,
                ..failed()
            };
            assert_eq!(judge(&f), keep(InstanceState::Stalled), "{state:?}");
        }
    }

    #[test]
    fn out_of_state_d_the_usual_rules_apply() {
        assert_eq!(judge(&failed()), keep(InstanceState::Ready));
        let third = Failed {
            fails: 3,
            ..failed()
        };
        assert_eq!(judge(&third), keep(InstanceState::Unhealthy));
        let silent = Failed {
            since_answer: Duration::from_secs(11),
            ..third
        };
        assert_eq!(
            judge(&silent),
            Verdict {
                state: InstanceState::Unhealthy,
                kill: Some(Kill::NoAnswer)
            }
        );
        let never_ready = Failed {
            state: InstanceState::Starting,
            ever_ready: false,
            since_start: Duration::from_secs(31),
            ..failed()
        };
        assert_eq!(
            judge(&never_ready),
            Verdict {
                state: InstanceState::Starting,
                kill: Some(Kill::StartGrace)
            }
        );
        // Left D but still failing: out of rotation as unhealthy (or back to starting),
        // killed only once the grace runs out.
        let left = Failed {
            state: InstanceState::Stalled,
            ..failed()
        };
        assert_eq!(judge(&left), keep(InstanceState::Unhealthy));
        let left_early = Failed {
            state: InstanceState::Stalled,
            ever_ready: false,
            since_start: Duration::from_secs(1),
            ..failed()
        };
        assert_eq!(judge(&left_early), keep(InstanceState::Starting));
    }

    #[test]
    fn queue_watch_sees_a_shrinking_queue() {
        let home = tempfile::tempdir().unwrap();
        let q = home.path().join("inputqueue");
        std::fs::create_dir(&q).unwrap();
        for i in 0..3 {
            std::fs::write(q.join(format!("{i:040}")), b"x").unwrap();
        }
        // Not a block: only 40-character names count.
        std::fs::write(q.join("short"), b"x").unwrap();
        let mut w = QueueWatch::default();
        assert!(!w.progressed(home.path()), "nothing to compare with yet");
        assert_eq!(queued_uploads(home.path()), 3);
        assert!(!w.progressed(home.path()), "same length is no progress");
        std::fs::remove_file(q.join(format!("{:040}", 0))).unwrap();
        assert!(w.progressed(home.path()));
        assert!(!w.progressed(home.path()));
    }
}
