//! The sender (docs/protocol.md §10): sends the files of `sendqueue/` — replication files to
//! `replpeer` (`REPLICATE` / `REPLOGIN`), proxy files (`STORE PROXY [AFTER]`, §3.3) to their
//! `Post-To` targets (`STORE SERVER`, anonymously, or `STORE ENTANGLED` to this server itself,
//! as the original) — removing each file only once every target answered `DONE`. A proxy file
//! done for some targets is rewritten to name only the ones still owed.
//!
//! It runs on the network thread: at start (leftovers of the last run), when a session that
//! queued something closes, every `run_queue_interval`, and when an embargo or a back-off
//! ends. Each target backs off per `retry_schedule` after a failed attempt, as the original
//! does — except that when the replication peer was unreachable (refused or timed-out
//! connection, a dropped link), a cheap connect probe every [`PROBE_INTERVAL`] ends its
//! back-off as soon as it answers `READY` again, so a backlog does not wait out a long delay
//! (relay targets are other people's servers: they get the plain schedule). A peer that
//! answers but refuses (a wrong `repl_authkey`, a pin mismatch) keeps the full schedule. An
//! entry a target answers `FAILED` waits out its own back-off while the others are sent.
//! Connections go through the SOCKS5 proxies of `route`.
//!
//! A file the original's sender would stop on for good (docs/protocol.md §10.4: no `Date:`, a
//! `Post-To` that is not a server list) is logged once and kept: without a date its age counts
//! from when it was queued; a bad target is never tried, the file stays until it expires.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::time::Instant;

use crate::server::config::{Config, HostPort};
use crate::server::route::{self, Route};
use crate::server::sendfile::{self, Target};
use crate::server::Shared;
use crate::store::queue::Queue;
use crate::wire::{Client, WireError};

/// Period of the reachability probe while backing off after the peer was unreachable.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Connect-and-greeting limit of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// When the sender's timer last ran, for SELFTEST's `FAIL SENDER <s>` (docs/protocol.md §3.10).
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

/// Why an attempt at a server stopped.
#[derive(Debug)]
enum Failure {
    /// No answer: connection refused or timed out, link dropped, BUSY, SOCKS refused.
    Unreachable(String),
    /// The server answered but did not accept (TLS, pin, LOGIN, an unexpected reply).
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
        WireError::Io(_)
        | WireError::Timeout(..)
        | WireError::Closed
        | WireError::Busy
        | WireError::Socks(_) => Failure::Unreachable(e.to_string()),
        other => Failure::Refused(other.to_string()),
    }
}

/// Back-off state of one target (docs/protocol.md §10.5).
#[derive(Debug, Default)]
struct Backoff {
    fails: u32,
    last_failure: Option<Instant>,
    unreachable: bool,
}

impl Backoff {
    /// When the back-off ends, if one is running.
    fn until(&self, schedule: &[u64]) -> Option<Instant> {
        let last = self.last_failure?;
        if self.fails == 0 || schedule.is_empty() {
            return None;
        }
        let delay = schedule[(self.fails as usize).min(schedule.len() - 1)];
        Some(last + Duration::from_secs(delay))
    }

    fn active(&self, schedule: &[u64], now: Instant) -> bool {
        self.until(schedule).is_some_and(|u| now < u)
    }
}

/// Per-entry back-off for entries a target answered `FAILED` (the session itself worked).
#[derive(Debug, Default)]
struct Delayed {
    entries: HashMap<(Target, String), (u32, Instant)>,
}

impl Delayed {
    /// Forgets entries whose files are gone (sent, or removed by hand).
    fn retain(&mut self, present: &HashSet<String>) {
        self.entries.retain(|(_, n), _| present.contains(n));
    }

    /// When the entry may be sent again, if it waits.
    fn waiting(&self, target: &Target, name: &str, now: Instant) -> Option<Instant> {
        self.entries
            .get(&(target.clone(), name.to_string()))
            .map(|&(_, until)| until)
            .filter(|&until| until > now)
    }

    /// Records a refusal; returns how long the entry now waits.
    fn failed(&mut self, target: &Target, name: &str, schedule: &[u64], now: Instant) -> Duration {
        let e = self
            .entries
            .entry((target.clone(), name.to_string()))
            .or_insert((0, now));
        e.0 += 1;
        let secs = schedule
            .get((e.0 as usize).min(schedule.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        e.1 = now + Duration::from_secs(secs);
        Duration::from_secs(secs)
    }

    fn done(&mut self, target: &Target, name: &str) {
        self.entries.remove(&(target.clone(), name.to_string()));
    }
}

/// What the sender remembers between runs.
#[derive(Default)]
struct State {
    backoff: HashMap<Target, Backoff>,
    delayed: Delayed,
    /// Problems already logged, per file, so that a bad file is reported once.
    warned: HashMap<String, HashSet<String>>,
    /// The earliest embargo or back-off end seen by the last run.
    wake: Option<Instant>,
}

impl State {
    fn warn_once(&mut self, name: &str, problem: String) {
        if self
            .warned
            .entry(name.to_string())
            .or_default()
            .insert(problem.clone())
        {
            tracing::warn!("send-queue file {name}: {problem}");
        }
    }

    fn wake_at(&mut self, t: Instant) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    fn replicate_probing(&self, schedule: &[u64]) -> bool {
        self.backoff
            .get(&Target::Replicate)
            .is_some_and(|b| b.unreachable && b.active(schedule, Instant::now()))
    }
}

/// Runs the sender until the network thread stops.
pub async fn run(shared: Rc<Shared>) {
    let cfg = &shared.config;
    let interval = Duration::from_secs(cfg.run_queue_interval.max(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queue = Queue::new(shared.sendqueue.dir());
    let mut state = State::default();
    // The first run right away: files queued before a stop go out without waiting.
    shared.sender_kick.notify_one();
    loop {
        let probing = state.replicate_probing(&cfg.retry_schedule);
        let wake = state.wake;
        tokio::select! {
            _ = ticker.tick() => shared.liveness.stamp(),
            _ = shared.sender_kick.notified() => {}
            _ = tokio::time::sleep(PROBE_INTERVAL), if probing => {}
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
        // The timer keeps ticking during a run, so SELFTEST follows the timer, not the run.
        let send = run_once(&shared, &queue, &mut state);
        tokio::pin!(send);
        loop {
            tokio::select! {
                () = &mut send => break,
                _ = ticker.tick() => shared.liveness.stamp(),
            }
        }
    }
}

/// The files of one target in this run: data files first (relay targets), each group oldest
/// first.
struct Batch {
    target: Target,
    data: Vec<String>,
    other: Vec<String>,
}

/// One run (docs/protocol.md §10.4): scan, then each target in turn.
async fn run_once(shared: &Shared, queue: &Queue, state: &mut State) {
    let cfg = &shared.config;
    state.wake = None;
    let batches = match plan(cfg, queue, state) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("listing sendqueue/: {e}");
            return;
        }
    };
    for b in batches {
        let target = b.target;
        let files: VecDeque<String> = b.data.into_iter().chain(b.other).collect();
        let total = files.len();
        let backoff = state.backoff.entry(target.clone()).or_default();
        if let Some(until) = backoff
            .until(&cfg.retry_schedule)
            .filter(|&u| Instant::now() < u)
        {
            let resumed = match (&target, &cfg.replpeer) {
                (Target::Replicate, Some(peer)) if backoff.unreachable => probe(peer, cfg).await,
                _ => false,
            };
            if !resumed {
                state.wake_at(until);
                continue;
            }
            tracing::info!("replication peer answers again; resuming");
        }
        let started = std::time::Instant::now();
        let result = send_target(shared, queue, state, &target, files).await;
        let backoff = state.backoff.entry(target.clone()).or_default();
        let (done, run) = match target {
            Target::Replicate => ("replicated".to_string(), "replication run".to_string()),
            ref t => (format!("relayed to {t}"), format!("relay to {t}")),
        };
        match result {
            Ok(sent) => {
                *backoff = Backoff::default();
                tracing::info!(
                    "{done} {sent} of {total} queued entries in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
            }
            Err((sent, f)) => {
                backoff.fails += 1;
                backoff.last_failure = Some(Instant::now());
                backoff.unreachable = matches!(f, Failure::Unreachable(_));
                let probing = backoff.unreachable && target == Target::Replicate;
                let until = backoff.until(&cfg.retry_schedule);
                let delay =
                    cfg.retry_schedule[(backoff.fails as usize).min(cfg.retry_schedule.len() - 1)];
                tracing::warn!(
                    "{run} failed after {sent} of {total} entries ({f}); next attempt in {delay}s{}",
                    if probing { " or as soon as the peer answers" } else { "" }
                );
                if let Some(u) = until {
                    state.wake_at(u);
                }
            }
        }
    }
}

/// Step 1: reads every file's headers, drops expired proxy files, and lists each file under
/// each of its targets.
fn plan(
    cfg: &Config,
    queue: &Queue,
    state: &mut State,
) -> Result<Vec<Batch>, crate::store::StoreError> {
    let files = scan(queue)?;
    let present: HashSet<String> = files.iter().map(|(_, n)| n.clone()).collect();
    // Back-off of targets that no file due now names is forgotten (at the end).
    state.delayed.retain(&present);
    state.warned.retain(|n, _| present.contains(n));
    let mut batches: Vec<Batch> = Vec::new();
    let now = Instant::now();
    let utc_now = chrono::Utc::now().naive_utc();
    let expire = chrono::Duration::days(i64::try_from(cfg.expire_days).unwrap_or(i64::MAX / 2))
        .max(chrono::Duration::zero());
    for (mtime, name) in files {
        let content = match queue.read(&name) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("reading a send-queue file: {e}");
                continue;
            }
        };
        let h = sendfile::headers(&content);
        let mut targets = Vec::new();
        if h.replicate {
            // `Post-To` of a replicate file is not relayed (docs/protocol.md §14 #8).
            if cfg.replpeer.is_none() {
                state.warn_once(
                    &name,
                    "a replication file, but replpeer is not set: it stays".into(),
                );
                continue;
            }
            targets.push(Target::Replicate);
        } else {
            if let Some(e) = h.embargo.filter(|&e| e > utc_now) {
                state.wake_at(now + (e - utc_now).to_std().unwrap_or_default());
                continue;
            }
            let date = match h.date {
                Some(d) => d,
                None => {
                    state.warn_once(
                        &name,
                        "no valid `Date:` line; its age counts from when it was queued".into(),
                    );
                    chrono::DateTime::<chrono::Utc>::from(mtime).naive_utc()
                }
            };
            if expired(date, h.embargo, utc_now, expire) {
                tracing::info!(
                    "send-queue file {name}: undelivered for over {} days; deleted",
                    cfg.expire_days
                );
                if let Err(e) = queue.delete(&name) {
                    tracing::error!("deleting an expired send-queue file: {e}");
                }
                continue;
            }
            if h.post_to.is_empty() {
                state.warn_once(&name, "no `Post-To:` target; kept until it expires".into());
            }
            for v in &h.post_to {
                match sendfile::parse_target(v) {
                    Ok(t) if !targets.contains(&t) => targets.push(t),
                    Ok(_) => {}
                    Err(e) => state.warn_once(
                        &name,
                        format!(
                            "bad `Post-To:` ({e}): never tried; the file stays until it expires"
                        ),
                    ),
                }
            }
        }
        for t in targets {
            if let Some(until) = state.delayed.waiting(&t, &name, now) {
                state.wake_at(until);
                continue;
            }
            let i = match batches.iter().position(|b| b.target == t) {
                Some(i) => i,
                None => {
                    batches.push(Batch {
                        target: t,
                        data: Vec::new(),
                        other: Vec::new(),
                    });
                    batches.len() - 1
                }
            };
            // Relay targets get data blocks before the announcements that point at them, as
            // the original; replication keeps the order the changes were made in.
            if h.data && batches[i].target != Target::Replicate {
                batches[i].data.push(name.clone());
            } else {
                batches[i].other.push(name.clone());
            }
        }
    }
    state
        .backoff
        .retain(|t, _| batches.iter().any(|b| b.target == *t));
    Ok(batches)
}

/// docs/protocol.md §10.4 "Expiry": older than `expire_days`, or embargoed to more than
/// `expire_days` after its date, as the original; and also — where the original keeps an
/// undeliverable embargoed file forever — undelivered `expire_days` after its embargo.
fn expired(
    date: NaiveDateTime,
    embargo: Option<NaiveDateTime>,
    now: NaiveDateTime,
    expire: chrono::Duration,
) -> bool {
    match embargo {
        None => now - date > expire,
        Some(e) => e - date > expire || now - e.max(date) > expire,
    }
}

/// The send-queue files with their modification times, oldest first (then by name), so that
/// login changes reach the peer in the order they were made.
fn scan(queue: &Queue) -> Result<Vec<(std::time::SystemTime, String)>, crate::store::StoreError> {
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
    Ok(files)
}

/// This server's own address, for `entangled` targets (the original: `localhost:<sport>`).
fn own_address(cfg: &Config) -> HostPort {
    let ip = match cfg.listen_address {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    };
    HostPort {
        host: ip.to_string(),
        port: cfg.sport,
    }
}

async fn resolve(server: &HostPort) -> Result<Vec<SocketAddr>, Failure> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|e| Failure::Unreachable(format!("resolving {}: {e}", server.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Unreachable(format!(
            "{} has no address",
            server.host
        )));
    }
    Ok(addrs)
}

/// Connects to `server` by `route` and reads a `READY` greeting.
async fn connect(server: &HostPort, route: &Route, timeout: Duration) -> Result<Client, Failure> {
    if let Route::Socks(proxy) = route {
        return Client::connect_socks(
            (proxy.host.as_str(), proxy.port),
            &server.host,
            server.port,
            timeout,
        )
        .await
        .map_err(classify);
    }
    let mut last = None;
    for a in resolve(server).await? {
        match Client::connect(a, timeout).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(classify(e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::Unreachable("no address".into())))
}

/// True if the replication peer accepts a connection and greets `READY`.
async fn probe(peer: &HostPort, cfg: &Config) -> bool {
    let Some(route) = route::route(&peer.host, cfg) else {
        return false;
    };
    match connect(peer, &route, PROBE_TIMEOUT).await {
        Ok(mut c) => {
            let _ = c.send_line("QUIT").await;
            true
        }
        Err(_) => false,
    }
}

/// Step 2 for one target: its servers in turn until one takes every file; returns how many
/// files it took, or that count and the last server's failure.
async fn send_target(
    shared: &Shared,
    queue: &Queue,
    state: &mut State,
    target: &Target,
    mut files: VecDeque<String>,
) -> Result<usize, (usize, Failure)> {
    let cfg = &shared.config;
    let servers = match target {
        Target::Replicate => cfg.replpeer.iter().cloned().collect(),
        Target::Entangled => vec![own_address(cfg)],
        Target::Servers(list) => route::order(list, cfg),
    };
    let mut sent = 0;
    let mut last = Failure::Unreachable("no server to try".into());
    for server in servers {
        // This server itself is reached directly, whatever the proxies.
        let route = match target {
            Target::Entangled => Some(Route::Direct),
            _ => route::route(&server.host, cfg),
        };
        let Some(route) = route else {
            last = Failure::Unreachable(format!(
                "{}:{} needs a proxy that is not configured",
                server.host, server.port
            ));
            continue;
        };
        match session(
            shared, queue, state, target, &server, &route, &mut files, &mut sent,
        )
        .await
        {
            Ok(()) => return Ok(sent),
            Err(f) => {
                tracing::debug!("{target}: {}:{} {f}", server.host, server.port);
                last = f;
            }
        }
    }
    Err((sent, last))
}

/// One session with one server (docs/protocol.md §10.4 "Session"): sends `files` from the front,
/// taking each off the list once it is answered.
#[allow(clippy::too_many_arguments)]
async fn session(
    shared: &Shared,
    queue: &Queue,
    state: &mut State,
    target: &Target,
    server: &HostPort,
    route: &Route,
    files: &mut VecDeque<String>,
    sent: &mut usize,
) -> Result<(), Failure> {
    let cfg = &shared.config;
    let timeout = Duration::from_secs(cfg.timeout.max(1));
    let client = connect(server, route, timeout).await?;
    let mut client = client.starttls_tls12().await.map_err(classify)?;
    if *target == Target::Replicate {
        if let Some(pin) = &cfg.repl_cert {
            let got = client.peer_cert_sha1().unwrap_or_default();
            if !got.eq_ignore_ascii_case(pin.trim()) {
                tracing::error!(
                    "replication peer {}:{} presents certificate {got}, not the pinned repl_cert {pin}",
                    server.host,
                    server.port
                );
                let _ = client.send_line("QUIT").await;
                return Err(Failure::Refused(
                    "certificate does not match repl_cert".into(),
                ));
            }
        }
        if let Some(key) = &cfg.repl_authkey {
            let reply = client
                .command(&format!("LOGIN replication {key}"))
                .await
                .map_err(classify)?;
            if !reply.eq_ignore_ascii_case("DONE") {
                let _ = client.send_line("QUIT").await;
                return Err(Failure::Refused(format!("LOGIN replication: {reply}")));
            }
        }
    }
    while let Some(name) = files.front().cloned() {
        let content = match queue.read(&name) {
            Ok(Some(c)) => c,
            Ok(None) => {
                files.pop_front();
                continue;
            }
            Err(e) => {
                tracing::error!("reading a send-queue file: {e}");
                files.pop_front();
                continue;
            }
        };
        let out = match sendfile::outgoing(&content, target) {
            Ok(o) => o,
            Err(e) => {
                state.warn_once(&name, format!("{e}; left unsent"));
                files.pop_front();
                continue;
            }
        };
        client.queue_raw(&out.to_wire());
        let reply = client.read_line().await.map_err(classify)?;
        if reply.eq_ignore_ascii_case("FAILED") {
            // This entry only: it waits out its own back-off while the others go on, so one
            // entry a target refuses cannot hold back everything queued after it.
            let wait = state
                .delayed
                .failed(target, &name, &cfg.retry_schedule, Instant::now());
            tracing::warn!(
                "{target} answered FAILED to {name}; retried in {}s",
                wait.as_secs()
            );
            state.wake_at(Instant::now() + wait);
            files.pop_front();
            continue;
        }
        if !reply.eq_ignore_ascii_case("DONE") {
            let _ = client.send_line("QUIT").await;
            return Err(Failure::Refused(format!("{name}: {reply:?}")));
        }
        files.pop_front();
        state.delayed.done(target, &name);
        if let Err(e) = settle(queue, &name, &content, target) {
            tracing::error!("updating a sent send-queue file: {e}");
        }
        *sent += 1;
    }
    // The files are all answered; a lost GOODBYE changes nothing.
    let _ = client.quit().await;
    Ok(())
}

/// Step 3 for one file done for `target`: deleted when no target is left, else rewritten
/// (same name, as the original) to name only the targets still owed.
fn settle(
    queue: &Queue,
    name: &str,
    content: &[u8],
    target: &Target,
) -> Result<(), crate::store::StoreError> {
    if *target == Target::Replicate {
        return queue.delete(name);
    }
    let remaining: Vec<String> = sendfile::headers(content)
        .post_to
        .into_iter()
        .filter(|v| sendfile::parse_target(v).ok().as_ref() != Some(target))
        .collect();
    if remaining.is_empty() {
        return queue.delete(name);
    }
    queue.replace(name, &sendfile::rewrite_post_to(content, &remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn refused_entries_wait_alone() {
        let now = Instant::now();
        let mut d = Delayed::default();
        let t = Target::Replicate;
        assert_eq!(d.failed(&t, "A", &[0, 30], now), Duration::from_secs(30));
        assert!(d.waiting(&t, "A", now).is_some());
        assert!(d.waiting(&Target::Entangled, "A", now).is_none());
        assert!(d.waiting(&t, "B", now).is_none());
        assert!(d.waiting(&t, "A", now + Duration::from_secs(30)).is_none());
        d.done(&t, "A");
        assert!(d.entries.is_empty());
        d.failed(&t, "A", &[0, 30], now);
        d.retain(&HashSet::new());
        assert!(d.entries.is_empty());
    }

    #[test]
    fn expiry_counts_to_the_embargo() {
        let d = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").unwrap();
        let week = chrono::Duration::days(7);
        let date = d("2026-01-01T00:00:00Z");
        assert!(!expired(date, None, d("2026-01-08T00:00:00Z"), week));
        assert!(expired(date, None, d("2026-01-08T00:00:01Z"), week));
        let late = Some(d("2026-01-09T00:00:00Z"));
        assert!(expired(date, late, d("2026-01-02T00:00:00Z"), week));
        let soon = Some(d("2026-01-03T00:00:00Z"));
        assert!(!expired(date, soon, d("2026-01-10T00:00:00Z"), week));
        assert!(expired(date, soon, d("2026-01-10T00:00:01Z"), week));
    }

    #[test]
    fn plan_puts_data_first_for_relays_only_and_skips_embargoes() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        let date = crate::protocol::dt::format_dt(chrono::Utc::now());
        let put = |c: Vec<u8>| {
            let n = crate::store::queue::name_of(&c);
            q.put_new(&n, &c).unwrap();
            n
        };
        let announce = put(sendfile::proxy_file(
            "AA",
            None,
            format!("Post-To: server=h:1\nType: message-announcement\nDate: {date}\n").as_bytes(),
        ));
        let data = put(sendfile::proxy_file(
            "BB",
            None,
            format!("Post-To: server=h:1\nPost-To: entangled\nType: data\nDate: {date}\n")
                .as_bytes(),
        ));
        put(sendfile::proxy_file(
            "CC",
            Some("2999-01-01T00:00:00Z"),
            format!("Post-To: server=h:1\nType: data\nDate: {date}\n").as_bytes(),
        ));
        let login = put(sendfile::login_file("U", "K"));
        let block = put(b"StoreType: replicate\nStoreKeyid: DD\nType: data\nA: 1\n".to_vec());
        let cfg = Config {
            replpeer: Some(HostPort {
                host: "peer".into(),
                port: 1,
            }),
            ..Config::default()
        };
        let mut state = State::default();
        let batches = plan(&cfg, &q, &mut state).unwrap();
        let order: Vec<(String, Vec<String>)> = batches
            .into_iter()
            .map(|b| {
                (
                    b.target.to_string(),
                    b.data.into_iter().chain(b.other).collect(),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                ("server=h:1".to_string(), vec![data.clone(), announce]),
                ("entangled".to_string(), vec![data]),
                ("replicate".to_string(), vec![login, block]),
            ]
        );
        assert!(state.wake.is_some(), "the embargo end is a wake-up");
    }

    #[test]
    fn liveness() {
        let l = Liveness::new(1);
        assert_eq!(l.selftest_line(), "PASS");
        l.last.store(0, Ordering::Relaxed);
        assert!(l.selftest_line().starts_with("FAIL SENDER "));
    }
}
