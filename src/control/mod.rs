//! The supervisor's control vocabulary: instance states, the `/status` document (a contract
//! other tools read, docs/design.md "Admin API and metrics"), the control requests the
//! supervisor carries out and their typed errors. The admin API is an HTTP skin over it;
//! the accounts actor and the supervisor both speak it, so it sits below all three. With a
//! site over several hosts, `site` says where the other hosts are.

pub mod accounts;
pub mod site;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// Lifecycle state of an instance, as `/status` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Provisioning,
    Starting,
    Ready,
    Unhealthy,
    /// Failing health checks while stuck in the kernel (state `D`, waiting for I/O): out of
    /// rotation, and not killed or restarted, which could not take effect.
    Stalled,
    Draining,
    Backoff,
    Failed,
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Provisioning => "provisioning",
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Stalled => "stalled",
            InstanceState::Draining => "draining",
            InstanceState::Backoff => "backoff",
            InstanceState::Failed => "failed",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// One instance in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: u32,
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub port: u16,
    pub eport: u16,
    pub home: String,
    pub restarts: u64,
    pub connections_active: u64,
    pub connections_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub busy_total: u64,
    pub cpu_percent: f32,
    pub rss_bytes: u64,
    pub uptime_s: u64,
    /// Uploads the instance has not yet processed: files in `inputqueue/` and unsettled
    /// input-journal entries (`store::queued_uploads`).
    pub queued_blocks: u64,
    /// New clients are handed to the instance itself (its hand-off channel is up); false:
    /// relayed.
    #[serde(default)]
    pub handoff: bool,
}

/// The `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub site: Option<String>,
    pub listen: String,
    pub instances: Vec<InstanceStatus>,
    /// Clients turned away because no instance could take them.
    pub rejected_total: u64,
    /// Client connections currently open on the public port.
    pub connections_active: u64,
    /// The site's scheduled prune (absent from documents of older supervisors).
    #[serde(default)]
    pub upkeep: UpkeepStatus,
    /// Clients whose PROXY header was taken (`proxy.accept_proxy`).
    #[serde(default)]
    pub proxy_header_accepted_total: u64,
    /// Clients closed for a missing, malformed or untrusted PROXY header.
    #[serde(default)]
    pub proxy_header_rejected_total: u64,
}

/// The prune in `/status`: the schedule's counters and the last run on this site, whoever
/// ran it (`<data>/upkeep.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpkeepStatus {
    /// `upkeep` sets a schedule.
    pub scheduled: bool,
    /// A prune started by the schedule is running now.
    pub running: bool,
    /// Prunes the schedule ran since the supervisor started.
    pub runs_total: u64,
    /// Scheduled prunes skipped because another one (by hand) or a shard move held the lock.
    pub busy_total: u64,
    pub failures_total: u64,
    pub last_error: Option<String>,
    /// When the schedule will prune next (unix seconds), if it has a period.
    pub next_due_unix: Option<i64>,
    pub last: Option<crate::upkeep::RunRecord>,
}

/// A control request from the admin API to the supervisor.
#[derive(Debug)]
pub enum Request {
    Scale(u32),
    Add(u32),
    Remove {
        id: u32,
        now: bool,
    },
    Restart(u32),
    RollingRestart,
    Reload,
    /// `storeherd accounts …`: answered on its own channel with a structured report.
    Accounts {
        cmd: accounts::Command,
        reply: accounts::Reply,
    },
}

/// The supervisor's answer: a human-readable message, or an error with its HTTP status.
pub type Answer = Result<String, ControlError>;

/// Why the supervisor refused or failed a request; [`ControlError::is_refusal`] tells a
/// request the caller must change from one the supervisor could not carry out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("no instance {0}")]
    NoSuchInstance(u32),
    #[error("instances must be between 1 and {max} (the port ranges allow no more)")]
    InstancesOutOfRange { max: u32 },
    #[error("at most {max} instances fit the port ranges")]
    TooManyInstances { max: u32 },
    #[error("a rolling restart is already running")]
    RollingRestartRunning,
    #[error("running on the built-in default: there is no topology file to reload")]
    NoTopologyFile,
    #[error("refused, running state kept: {0}")]
    BadTopology(Arc<crate::topology::TopologyError>),
    #[error("refused: {0}")]
    RestartNeeded(crate::topology::RestartNeeded),
    #[error(transparent)]
    Account(#[from] accounts::Refusal),
    #[error("supervisor is shutting down")]
    ShuttingDown,
    /// Writing the accounts ledger failed; nothing was changed.
    #[error("{0}; nothing was changed")]
    Ledger(Arc<dyn std::error::Error + Send + Sync>),
}

impl ControlError {
    /// True when the request itself is wrong (as opposed to missing or not possible now).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            ControlError::NoSuchInstance(_) | ControlError::ShuttingDown | ControlError::Ledger(_)
        )
    }
}

/// What the admin server holds: the latest status and a way to send requests.
#[derive(Clone)]
pub struct Handle {
    pub status: watch::Receiver<Status>,
    pub requests: mpsc::Sender<(Request, oneshot::Sender<Answer>)>,
}

impl Handle {
    /// Sends a request and waits for the supervisor's answer.
    pub async fn request(&self, req: Request) -> Answer {
        let rx = self.submit(req).await?;
        rx.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Hands a request to the supervisor and returns where its answer will arrive, so a
    /// caller can stop waiting (a rolling restart takes minutes) knowing it was queued.
    pub async fn submit(&self, req: Request) -> Result<oneshot::Receiver<Answer>, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((req, tx))
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        Ok(rx)
    }
}

/// One line of `GET /logs`: which instance wrote it, and the line as in its `server.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance: u32,
    pub line: String,
}

/// The `GET /logs` document: lines oldest first and where to ask for the next ones
/// (`?cursor=…`, opaque to clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsPage {
    pub lines: Vec<LogLine>,
    pub cursor: String,
}
