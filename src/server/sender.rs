//! The replication sender (PROTOCOL.md §10): sends the files of `sendqueue/` to `replpeer`
//! as `REPLICATE` / `REPLOGIN` commands, deleting each file only after the peer's `DONE`.
//!
//! It runs on the network thread: at start (leftovers of the last run), when a session that
//! queued something closes, and every `run_queue_interval`. After a failed run it backs off
//! per `retry_schedule`, as the original does — except that when the failure was the peer
//! being unreachable (refused or timed-out connection, a dropped link), a cheap connect probe
//! every [`PROBE_INTERVAL`] ends the back-off as soon as the peer answers `READY` again, so a
//! backlog does not wait out a long delay. A peer that answers but refuses (a wrong
//! `repl_authkey`, a pin mismatch, `FAILED`) keeps the full schedule.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::server::config::HostPort;
use crate::server::Shared;
use crate::store::queue::Queue;
use crate::wire::{Client, WireError};

/// Period of the reachability probe while backing off after the peer was unreachable.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Connect-and-greeting limit of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// When the sender's timer last ran, for SELFTEST's `FAIL SENDER <s>` (PROTOCOL.md §3.10).
#[derive(Debug)]
pub struct Liveness {
    last: AtomicI64,
    interval: u64,
}

impl Liveness {
    /// Stamped at creation: the original reports `FAIL SENDER` until its first run (18 s
    /// after start), which would take a fresh instance out of rotation for nothing.
    pub fn new(run_queue_interval: u64) -> Arc<Liveness> {
        Arc::new(Liveness {
            last: AtomicI64::new(chrono::Utc::now().timestamp()),
            interval: run_queue_interval,
        })
    }

    pub fn stamp(&self) {
        self.last
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// `PASS`, or `FAIL SENDER <s>` when the timer last ran more than 8 intervals ago.
    pub fn selftest_line(&self) -> String {
        let age = chrono::Utc::now().timestamp() - self.last.load(Ordering::Relaxed);
        if age > 8 * self.interval.max(1) as i64 {
            format!("FAIL SENDER {age}")
        } else {
            "PASS".into()
        }
    }
}

/// The send-queue text of a login change (PROTOCOL.md §10.1).
pub fn login_file(user: &str, key: &str) -> Vec<u8> {
    format!("StoreType: replicate\nReplogin-User: {user}\nReplogin-Auth: {key}\n").into_bytes()
}

/// One send-queue file, as the command it becomes (PROTOCOL.md §10.4 "Building each command").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Login {
        user: String,
        key: String,
    },
    Block {
        key: String,
        user: String,
        /// The kept header lines, the `Data:` line included.
        lines: Vec<Vec<u8>>,
        payload: Option<Vec<u8>>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("not a replicate file (only replication is sent from this server)")]
    NotReplicate,
    #[error("block file without StoreKeyid")]
    NoKey,
    #[error("no header lines to send")]
    Empty,
}

fn has_prefix(line: &[u8], prefix: &str) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn value_of(line: &[u8], prefix: &str) -> String {
    String::from_utf8_lossy(&line[prefix.len()..]).into_owned()
}

/// Parses a send-queue file into the command to send.
pub fn parse_file(content: &[u8]) -> Result<Outgoing, FileError> {
    let mut replicate = false;
    let mut key = None;
    let mut user = None;
    let mut login_user = None;
    let mut login_auth = None;
    let mut lines = Vec::new();
    let mut payload = None;
    let mut pos = 0;
    while pos < content.len() {
        let (mut line, next) = match content[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&content[pos..pos + i], pos + i + 1),
            None => (&content[pos..], content.len()),
        };
        while let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        pos = next;
        if has_prefix(line, "storetype: ") {
            replicate |= line[11..].eq_ignore_ascii_case(b"replicate");
        } else if has_prefix(line, "storekeyid: ") && key.is_none() {
            key = Some(value_of(line, "storekeyid: "));
        } else if has_prefix(line, "loginuser: ") {
            user = Some(value_of(line, "loginuser: "));
        } else if has_prefix(line, "replogin-user: ") {
            login_user = Some(value_of(line, "replogin-user: "));
        } else if has_prefix(line, "replogin-auth: ") {
            login_auth = Some(value_of(line, "replogin-auth: "));
        } else if has_prefix(line, "embargo: ") || has_prefix(line, "post-to: ") {
            // Never relayed: `Post-To` on STORE SERVER is ignored (PROTOCOL.md §14 #8).
        } else {
            lines.push(line.to_vec());
            if has_prefix(line, "data: ") {
                payload = Some(content[pos..].to_vec());
                break;
            }
        }
    }
    if !replicate {
        return Err(FileError::NotReplicate);
    }
    if let Some(key) = login_auth {
        return Ok(Outgoing::Login {
            user: login_user.unwrap_or_else(|| "undefined".into()),
            key,
        });
    }
    let key = key.ok_or(FileError::NoKey)?;
    if lines.is_empty() {
        return Err(FileError::Empty);
    }
    Ok(Outgoing::Block {
        key,
        user: user.unwrap_or_else(|| "none".into()),
        lines,
        payload,
    })
}

impl Outgoing {
    /// The bytes of the command (CRLF lines, then `EndBlock` or the raw payload).
    pub fn to_wire(&self) -> Vec<u8> {
        match self {
            Outgoing::Login { user, key } => format!("REPLOGIN {user} {key}\r\n").into_bytes(),
            Outgoing::Block {
                key,
                user,
                lines,
                payload,
            } => {
                let mut out = format!("REPLICATE {key} {user}\r\n").into_bytes();
                for l in lines {
                    out.extend_from_slice(l);
                    out.extend_from_slice(b"\r\n");
                }
                match payload {
                    Some(p) => out.extend_from_slice(p),
                    None => out.extend_from_slice(b"EndBlock\r\n"),
                }
                out
            }
        }
    }
}

/// Why a run stopped.
#[derive(Debug)]
enum Failure {
    /// No answer from the peer: connection refused or timed out, link dropped, BUSY.
    Unreachable(String),
    /// The peer answered but did not accept (TLS, pin, LOGIN or a command refused).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) => write!(f, "peer unreachable: {m}"),
            Failure::Refused(m) => write!(f, "peer refused: {m}"),
        }
    }
}

fn classify(e: WireError) -> Failure {
    match e {
        WireError::Io(_) | WireError::Timeout(..) | WireError::Closed | WireError::Busy => {
            Failure::Unreachable(e.to_string())
        }
        other => Failure::Refused(other.to_string()),
    }
}

/// Back-off state of the one target, `replicate` (PROTOCOL.md §10.5).
#[derive(Debug, Default)]
struct Backoff {
    fails: u32,
    last_failure: Option<Instant>,
    unreachable: bool,
}

impl Backoff {
    fn active(&self, schedule: &[u64], now: Instant) -> bool {
        let Some(last) = self.last_failure else {
            return false;
        };
        if self.fails == 0 || schedule.is_empty() {
            return false;
        }
        let delay = schedule[(self.fails as usize).min(schedule.len() - 1)];
        now < last + Duration::from_secs(delay)
    }
}

/// Runs the sender until the network thread stops.
pub async fn run(shared: Rc<Shared>) {
    let cfg = &shared.config;
    let interval = Duration::from_secs(cfg.run_queue_interval.max(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queue = Queue::new(shared.sendqueue.dir());
    let mut backoff = Backoff::default();
    let mut warned_no_peer = false;
    // The first run right away: blocks queued before a stop go out without waiting.
    shared.sender_kick.notify_one();
    loop {
        let probing = backoff.unreachable && backoff.active(&cfg.retry_schedule, Instant::now());
        tokio::select! {
            _ = ticker.tick() => shared.liveness.stamp(),
            _ = shared.sender_kick.notified() => {}
            _ = tokio::time::sleep(PROBE_INTERVAL), if probing => {}
        }
        let Some(peer) = &cfg.replpeer else {
            if !warned_no_peer && queue.list().map(|l| !l.is_empty()).unwrap_or(false) {
                tracing::warn!("sendqueue/ holds files but replpeer is not set: they stay");
                warned_no_peer = true;
            }
            continue;
        };
        let files = match scan(&queue) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("listing sendqueue/: {e}");
                continue;
            }
        };
        if files.is_empty() {
            continue;
        }
        if backoff.active(&cfg.retry_schedule, Instant::now()) {
            if !backoff.unreachable || !probe(peer).await {
                continue;
            }
            tracing::info!(peer = %format!("{}:{}", peer.host, peer.port), "replication peer answers again; resuming");
        }
        let started = std::time::Instant::now();
        let total = files.len();
        // The timer keeps ticking during a run, so SELFTEST follows the timer, not the run.
        let send = send_all(&shared, peer, &queue, files);
        tokio::pin!(send);
        let result = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = ticker.tick() => shared.liveness.stamp(),
            }
        };
        match result {
            Ok(sent) => {
                backoff = Backoff::default();
                tracing::info!(
                    "replicated {sent} of {total} queued entries in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
            }
            Err((sent, f)) => {
                backoff.fails += 1;
                backoff.last_failure = Some(Instant::now());
                backoff.unreachable = matches!(f, Failure::Unreachable(_));
                let delay =
                    cfg.retry_schedule[(backoff.fails as usize).min(cfg.retry_schedule.len() - 1)];
                tracing::warn!(
                    "replication run failed after {sent} of {total} entries ({f}); next attempt in {delay}s{}",
                    if backoff.unreachable { " or as soon as the peer answers" } else { "" }
                );
            }
        }
    }
}

/// The send-queue files, oldest first (by modification time, then name), so that login
/// changes reach the peer in the order they were made.
fn scan(queue: &Queue) -> Result<Vec<String>, crate::store::StoreError> {
    let mut files: Vec<(std::time::SystemTime, String)> = queue
        .list()?
        .into_iter()
        .map(|n| {
            let t = std::fs::metadata(queue.path(&n))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, n)
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, n)| n).collect())
}

async fn resolve(peer: &HostPort) -> Result<Vec<SocketAddr>, Failure> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((peer.host.as_str(), peer.port))
        .await
        .map_err(|e| Failure::Unreachable(format!("resolving {}: {e}", peer.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Unreachable(format!(
            "{} has no address",
            peer.host
        )));
    }
    Ok(addrs)
}

/// True if the peer accepts a connection and greets `READY`.
async fn probe(peer: &HostPort) -> bool {
    let Ok(addrs) = resolve(peer).await else {
        return false;
    };
    for a in addrs {
        if let Ok(mut c) = Client::connect(a, PROBE_TIMEOUT).await {
            let _ = c.send_line("QUIT").await;
            return true;
        }
    }
    false
}

async fn connect(peer: &HostPort, timeout: Duration) -> Result<Client, Failure> {
    let mut last = None;
    for a in resolve(peer).await? {
        match Client::connect(a, timeout).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(classify(e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::Unreachable("no address".into())))
}

/// One session with the peer (PROTOCOL.md §10.4): returns how many files were sent, or the
/// count before the failure.
async fn send_all(
    shared: &Shared,
    peer: &HostPort,
    queue: &Queue,
    files: Vec<String>,
) -> Result<usize, (usize, Failure)> {
    let cfg = &shared.config;
    let timeout = Duration::from_secs(cfg.timeout.max(1));
    let client = connect(peer, timeout).await.map_err(|f| (0, f))?;
    let mut client = client
        .starttls_tls12()
        .await
        .map_err(|e| (0, classify(e)))?;
    if let Some(pin) = &cfg.repl_cert {
        let got = client.peer_cert_sha1().unwrap_or_default();
        if !got.eq_ignore_ascii_case(pin.trim()) {
            tracing::error!(
                "replication peer {}:{} presents certificate {got}, not the pinned repl_cert {pin}",
                peer.host,
                peer.port
            );
            let _ = client.send_line("QUIT").await;
            return Err((
                0,
                Failure::Refused("certificate does not match repl_cert".into()),
            ));
        }
    }
    if let Some(key) = &cfg.repl_authkey {
        let reply = client
            .command(&format!("LOGIN replication {key}"))
            .await
            .map_err(|e| (0, classify(e)))?;
        if !reply.eq_ignore_ascii_case("DONE") {
            let _ = client.send_line("QUIT").await;
            return Err((0, Failure::Refused(format!("LOGIN replication: {reply}"))));
        }
    }
    let mut sent = 0;
    for name in files {
        let content = match queue.read(&name) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("reading a send-queue file: {e}");
                continue;
            }
        };
        let out = match parse_file(&content) {
            Ok(o) => o,
            Err(e) => {
                // Left in place (it may be the original's proxy file), logged once per run.
                tracing::warn!("send-queue file {name}: {e}; left unsent");
                continue;
            }
        };
        client.queue_raw(&out.to_wire());
        let reply = client.read_line().await.map_err(|e| (sent, classify(e)))?;
        if !reply.eq_ignore_ascii_case("DONE") {
            let _ = client.send_line("QUIT").await;
            return Err((sent, Failure::Refused(format!("{name}: {reply}"))));
        }
        if let Err(e) = queue.delete(&name) {
            tracing::error!("deleting a sent send-queue file: {e}");
        }
        sent += 1;
    }
    // The files are all done; a lost GOODBYE changes nothing.
    let _ = client.quit().await;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_file_becomes_replicate() {
        let f = b"StoreType: replicate\nStoreKeyid: AB12\nLoginUser: none\nType: data\n\
                  Post-To: server=x:1\nDate: 2026-01-01T00:00:00Z\nData: 5\nhe\nlo";
        let o = parse_file(f).unwrap();
        assert_eq!(
            o.to_wire(),
            b"REPLICATE AB12 none\r\nType: data\r\nDate: 2026-01-01T00:00:00Z\r\nData: 5\r\nhe\nlo"
        );
        let f = b"StoreType: replicate\nStoreKeyid: AB12\nLoginUser: U1234567\nA: 1\n";
        assert_eq!(
            parse_file(f).unwrap().to_wire(),
            b"REPLICATE AB12 U1234567\r\nA: 1\r\nEndBlock\r\n"
        );
    }

    #[test]
    fn login_file_becomes_replogin() {
        let o = parse_file(&login_file("USERXXXX1111", "KEYXXXX11112222")).unwrap();
        assert_eq!(o.to_wire(), b"REPLOGIN USERXXXX1111 KEYXXXX11112222\r\n");
        let o = parse_file(b"StoreType: replicate\nReplogin-Auth: KEYXXXX1\n").unwrap();
        assert_eq!(o.to_wire(), b"REPLOGIN undefined KEYXXXX1\r\n");
    }

    #[test]
    fn other_files_are_refused() {
        assert_eq!(
            parse_file(b"StoreType: proxy\nStoreKeyid: AB\nType: data\n"),
            Err(FileError::NotReplicate)
        );
        assert_eq!(
            parse_file(b"StoreType: replicate\nType: data\n"),
            Err(FileError::NoKey)
        );
    }

    #[test]
    fn backoff_follows_the_schedule() {
        let now = Instant::now();
        let mut b = Backoff::default();
        assert!(!b.active(&[0, 120], now));
        b.fails = 1;
        b.last_failure = Some(now);
        assert!(b.active(&[0, 120], now + Duration::from_secs(119)));
        assert!(!b.active(&[0, 120], now + Duration::from_secs(120)));
        assert!(!b.active(&[0], now + Duration::from_secs(1)));
    }

    #[test]
    fn liveness() {
        let l = Liveness::new(1);
        assert_eq!(l.selftest_line(), "PASS");
        l.last.store(0, Ordering::Relaxed);
        assert!(l.selftest_line().starts_with("FAIL SENDER "));
    }
}
