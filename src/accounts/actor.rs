//! The accounts actor: owns the ledger, knows every local instance (address, home, state),
//! sends changes through one delivery worker per instance, keeps per instance the keys it
//! has not confirmed yet, and follows every home's `auth.txt` for claims and REPLOGIN lines.
//!
//! A key is "busy" on an instance while a change for it is queued, in flight or pending
//! there: its auth.txt may legitimately disagree with the ledger until the change lands, so
//! such keys are judged again once it has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::deliver::{self, Batch, Delivered, Keys, Op};
use super::ledger::{is_privileged, is_special, is_user, valid_token, Ledger, DISABLED, UNDEFINED};
use super::site::{self, HostWait, Leg};
use super::tail::{Polled, Tail};
use super::{AccountsError, Command, Delivery, Msg, Reply, Report, Setup, MAX_GEN};
use crate::control::accounts::{AccountOp, ChangeKind, Refusal};
use crate::control::{ControlError, InstanceState};
use crate::protocol::auth::new_key;

/// How often every home's auth.txt is checked for new lines without a notification (some
/// file systems, NFS among them, send none).
const POLL: Duration = Duration::from_millis(200);
/// How often changes that a ready instance missed (an error, BUSY) are sent again.
const RETRY: Duration = Duration::from_secs(3);
/// How long a command waits for the instances before answering with what it has.
const REPORT_WAIT: Duration = Duration::from_secs(20);

struct Inst {
    addr: SocketAddr,
    home: PathBuf,
    state: InstanceState,
    worker: mpsc::UnboundedSender<Batch>,
    /// Changes queued or in flight, per key.
    inflight: HashMap<String, u32>,
    /// Keys whose ledger value this instance has not confirmed, sent when it is ready; and
    /// whether the change is to be passed on to the peer (a command's) or stays local.
    pending: BTreeMap<String, bool>,
    /// Its auth.txt, followed from its first time ready.
    tail: Option<Tail>,
    tail_failing: bool,
}

impl Inst {
    fn ready(&self) -> bool {
        self.state == InstanceState::Ready
    }

    fn busy(&self, key: &str) -> bool {
        self.inflight.get(key).is_some_and(|n| *n > 0) || self.pending.contains_key(key)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// New lines while the instance runs: a line that disagrees with the ledger came from
    /// someone else (a claim, REPLOGIN from the peer, an administrator's session).
    Steady,
    /// The instance (re)became ready: what disagrees is a change it missed, except claims
    /// and keys the ledger does not know.
    Reconcile,
}

enum Action {
    Adopt(String),
    Push,
}

/// Which instances a change goes to, and whether each may pass it on to its peer.
type Targets<'a> = &'a dyn Fn(u32) -> Option<bool>;

/// What one instance answered, or will.
enum Wait {
    Now(Delivery),
    Later {
        id: u32,
        addr: SocketAddr,
        rx: oneshot::Receiver<Result<(), String>>,
    },
}

pub struct Actor {
    ledger: Ledger,
    admin_key: String,
    replication_key: Option<String>,
    insts: BTreeMap<u32, Inst>,
    results: mpsc::UnboundedSender<Delivered>,
    results_rx: Option<mpsc::UnboundedReceiver<Delivered>>,
    /// Notifications of writes to the followed auth.txt files: a claim then reaches the other
    /// instances in milliseconds, keeping short the time a second claim could slip in.
    watcher: Option<RecommendedWatcher>,
    wake_rx: Option<mpsc::UnboundedReceiver<()>>,
    /// With a site over several hosts: the senders to the other hosts.
    site: Option<Leg>,
    /// Keys whose ledger value came from a claim, and the host where it was made: of two
    /// claims of one key on two hosts at once, the one on the host listed first wins.
    claimed: HashMap<String, String>,
}

/// The start of a key, for logs: keys are secrets.
fn short(key: &str) -> String {
    format!("{}…", &key[..key.len().min(6)])
}

impl Actor {
    pub fn new(setup: Setup) -> Result<Actor, AccountsError> {
        let (results, results_rx) = mpsc::unbounded_channel();
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|ev| ev.kind.is_modify() || ev.kind.is_create()) {
                let _ = wake_tx.send(());
            }
        })
        .map_err(|e| warn!("not watching auth.txt files ({e}); polling them"))
        .ok();
        Ok(Actor {
            ledger: Ledger::load(&setup.ledger)?,
            admin_key: setup.admin_key,
            replication_key: setup.replication_key,
            insts: BTreeMap::new(),
            results,
            results_rx: Some(results_rx),
            watcher,
            wake_rx: Some(wake_rx),
            site: setup.site.map(Leg::start),
            claimed: HashMap::new(),
        })
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut results_rx = self.results_rx.take().expect("run once");
        let mut wake_rx = self.wake_rx.take().expect("run once");
        let mut poll = interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut retry = interval(RETRY);
        retry.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Command(cmd, reply)) => self.command(cmd, reply),
                    Some(Msg::Instance { id, addr, home, state }) => self.on_instance(id, addr, home, state),
                    Some(Msg::Gone(id)) => self.on_gone(id),
                    None => break,
                },
                Some(d) = results_rx.recv() => self.on_delivered(d),
                Some(()) = wake_rx.recv() => {
                    while wake_rx.try_recv().is_ok() {}
                    let ids: Vec<u32> = self.insts.keys().copied().collect();
                    for id in ids {
                        self.poll_one(id);
                    }
                }
                _ = poll.tick() => {
                    let ids: Vec<u32> = self.insts.keys().copied().collect();
                    for id in ids {
                        self.poll_one(id);
                    }
                }
                _ = retry.tick() => {
                    let ids: Vec<u32> = self
                        .insts
                        .iter()
                        .filter(|(_, i)| i.ready() && !i.pending.is_empty() && i.inflight.is_empty())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.flush(id);
                    }
                }
            }
        }
    }

    fn is_role_key(&self, key: &str) -> bool {
        key == self.admin_key || self.replication_key.as_deref() == Some(key)
    }

    fn command(&mut self, cmd: Command, reply: Reply) {
        let planned = match cmd {
            Command::Forwarded { from, kind, ops } => {
                self.take_forwarded(from, kind, ops, reply);
                return;
            }
            Command::List => {
                let accounts = self.ledger.mapping().entries();
                let _ = reply.send(Ok(Report {
                    message: format!("{} keys in the ledger", accounts.len()),
                    accounts,
                    ..Report::default()
                }));
                return;
            }
            Command::Add { user, key } => self.plan_add(user, key),
            Command::AddKey { key } => self.plan_add_key(key),
            Command::Rm { key } => self.check_key(&key).map(|()| {
                let msg = match self.ledger.user(&key) {
                    Some(u) if u.eq_ignore_ascii_case(DISABLED) => "key was already disabled",
                    Some(_) => "key disabled",
                    None => "key disabled (it was not in the ledger)",
                };
                (
                    vec![(DISABLED.to_string(), key)],
                    msg.to_string(),
                    Vec::new(),
                )
            }),
            Command::Gen { count } => {
                if !(1..=MAX_GEN).contains(&count) {
                    Err(Refusal::GenCount { max: MAX_GEN })
                } else {
                    let keys: Vec<String> = (0..count).map(|_| new_key()).collect();
                    let ops = keys.iter().map(|k| (UNDEFINED.to_string(), k.clone()));
                    Ok((
                        ops.collect(),
                        format!("{count} free keys made"),
                        keys.clone(),
                    ))
                }
            }
        };
        let (ops, message, keys) = match planned {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(ControlError::Account(e)));
                return;
            }
        };
        if let Err(e) = self.ledger.append(&ops) {
            let _ = reply.send(Err(ControlError::Ledger(std::sync::Arc::new(e))));
            return;
        }
        for (_, k) in &ops {
            self.claimed.remove(k);
        }
        let waits = self.fan_out(&ops, &|_| Some(true), true);
        let host_waits = self.forward(ChangeKind::Command, &ops, true);
        let report = Report {
            message,
            keys,
            ..Report::default()
        };
        tokio::spawn(collect(waits, host_waits, report, reply));
    }

    /// Queues `ops` for the site's other hosts, if any.
    fn forward(&self, kind: ChangeKind, ops: &[Op], report: bool) -> Vec<HostWait> {
        match &self.site {
            Some(leg) => leg.forward(kind, ops, report),
            None => Vec::new(),
        }
    }

    /// Changes another host of the site took first: into the ledger and to every local
    /// instance, never forwarded again. What this host already has, echoes of values it
    /// has since replaced, and a claim that loses to one made here are left out.
    fn take_forwarded(
        &mut self,
        from: String,
        kind: ChangeKind,
        ops: Vec<AccountOp>,
        reply: Reply,
    ) {
        let given = ops.len();
        let mut take: Vec<Op> = Vec::new();
        for AccountOp { user, key } in ops {
            if !valid_token(&key)
                || !valid_token(&user)
                || is_privileged(&user)
                || self.is_role_key(&key)
            {
                warn!(host = %from, key = %short(&key), "forwarded account change refused: not an account line");
                continue;
            }
            // A later op of the same batch on the same key wins, as in the ledger.
            take.retain(|(_, k)| *k != key);
            let now = self.ledger.user(&key);
            if now == Some(user.as_str()) {
                continue;
            }
            let wanted = match kind {
                ChangeKind::Command => true,
                ChangeKind::Claim => match now {
                    None => true,
                    Some(v) if v.eq_ignore_ascii_case(UNDEFINED) => true,
                    // Two claims at once: the host listed first wins on every host.
                    Some(_) => self.claimed.get(&key).is_some_and(|by| {
                        self.site
                            .as_ref()
                            .is_some_and(|leg| leg.rank(&from) < leg.rank(by))
                    }),
                },
                ChangeKind::Change => !self.ledger.superseded(&key, &user),
            };
            if wanted {
                take.push((user, key));
            }
        }
        if let Err(e) = self.ledger.append(&take) {
            let _ = reply.send(Err(ControlError::Ledger(std::sync::Arc::new(e))));
            return;
        }
        for (_, k) in &take {
            match kind {
                ChangeKind::Claim => self.claimed.insert(k.clone(), from.clone()),
                _ => self.claimed.remove(k),
            };
        }
        if !take.is_empty() {
            info!(
                host = %from,
                kind = ?kind,
                changes = take.len(),
                "account changes from another host of the site; sending them to the instances here"
            );
        }
        // A command goes on to the peer site through every instance's pair, as on the
        // sending host; claims and other changes reach the peer from where they were made.
        let replicate = kind == ChangeKind::Command;
        self.fan_out(&take, &|_| Some(replicate), false);
        let _ = reply.send(Ok(Report {
            message: format!("{} of {given} change(s) from host {from} taken", take.len()),
            ..Report::default()
        }));
    }

    fn check_key(&self, key: &str) -> Result<(), Refusal> {
        if !valid_token(key) {
            return Err(Refusal::NotAKey(key.to_string()));
        }
        if self.is_role_key(key) {
            return Err(Refusal::RoleKey);
        }
        Ok(())
    }

    fn plan_add(
        &self,
        user: String,
        key: String,
    ) -> Result<(Vec<Op>, String, Vec<String>), Refusal> {
        self.check_key(&key)?;
        if !valid_token(&user) {
            return Err(Refusal::NotAUserhash(user));
        }
        if !is_user(&user) {
            return Err(Refusal::ReservedName(user));
        }
        let message = match self.ledger.user(&key) {
            Some(u) if u == user => format!("account {user} already had this key; sent again"),
            Some(u) if is_user(u) => format!("key moved from {u} to {user}"),
            _ => format!("account {user} added"),
        };
        Ok((vec![(user, key)], message, Vec::new()))
    }

    fn plan_add_key(&self, key: String) -> Result<(Vec<Op>, String, Vec<String>), Refusal> {
        self.check_key(&key)?;
        if let Some(u) = self.ledger.user(&key).filter(|u| is_user(u)) {
            return Err(Refusal::KeyBound(u.to_string()));
        }
        Ok((
            vec![(UNDEFINED.to_string(), key)],
            "free key added".into(),
            Vec::new(),
        ))
    }

    /// Sends `ops` to the instances `targets` names: at once to the ready ones, and into the
    /// pending set of the others.
    fn fan_out(&mut self, ops: &[Op], targets: Targets, report: bool) -> Vec<Wait> {
        let mut waits = Vec::new();
        for (&id, inst) in self.insts.iter_mut() {
            let Some(replicate) = targets(id) else {
                continue;
            };
            let not_ready = |inst: &mut Inst, why: String| {
                for (_, k) in ops {
                    add_pending(&mut inst.pending, k.clone(), replicate);
                }
                Wait::Now(Delivery {
                    id,
                    addr: inst.addr.to_string(),
                    done: false,
                    error: Some(why),
                })
            };
            if !inst.ready() {
                let why = format!("{}, not ready", inst.state.as_str());
                waits.push(not_ready(inst, why));
                continue;
            }
            let (done, rx) = if report {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let batch = Batch {
                addr: inst.addr,
                ops: ops.to_vec(),
                replicate,
                done,
            };
            if inst.worker.send(batch).is_err() {
                waits.push(not_ready(inst, "its delivery worker stopped".into()));
                continue;
            }
            for (_, k) in ops {
                *inst.inflight.entry(k.clone()).or_default() += 1;
            }
            if let Some(rx) = rx {
                waits.push(Wait::Later {
                    id,
                    addr: inst.addr,
                    rx,
                });
            }
        }
        waits
    }

    fn on_instance(&mut self, id: u32, addr: SocketAddr, home: PathBuf, state: InstanceState) {
        let results = self.results.clone();
        let keys = Keys {
            admin: self.admin_key.clone(),
            replication: self.replication_key.clone(),
        };
        let inst = self.insts.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(deliver::worker(id, keys, rx, results));
            Inst {
                addr,
                home: home.clone(),
                state: InstanceState::Provisioning,
                worker: tx,
                inflight: HashMap::new(),
                pending: BTreeMap::new(),
                tail: None,
                tail_failing: false,
            }
        });
        inst.addr = addr;
        inst.home = home;
        let was_ready = inst.ready();
        inst.state = state;
        if was_ready || !inst.ready() {
            return;
        }
        // (Re)ready: provisioning has seeded its auth.txt from the ledger; whatever still
        // differs is a change it missed, or a claim made while nobody was looking.
        if inst.tail.is_none() {
            self.open_tail(id);
        } else {
            self.poll_one(id);
        }
        self.reconcile(id);
        if let Some(inst) = self.insts.get(&id) {
            if !inst.pending.is_empty() {
                info!(
                    instance = id,
                    keys = inst.pending.len(),
                    "ready: sending the account changes it missed"
                );
            }
        }
        self.flush(id);
    }

    fn on_gone(&mut self, id: u32) {
        if let (Some(inst), Some(w)) = (self.insts.remove(&id), self.watcher.as_mut()) {
            if inst.tail.is_some() {
                let _ = w.unwatch(&inst.home.join("auth.txt"));
            }
        }
    }

    fn open_tail(&mut self, id: u32) {
        let Some(inst) = self.insts.get_mut(&id) else {
            return;
        };
        let path = inst.home.join("auth.txt");
        match Tail::open(&path) {
            Ok(t) => {
                inst.tail = Some(t);
                inst.tail_failing = false;
                if let Some(w) = self.watcher.as_mut() {
                    // Without a notification the poll still sees every line.
                    if let Err(e) = w.watch(&path, RecursiveMode::NonRecursive) {
                        debug!(instance = id, "not watching {}: {e}", path.display());
                    }
                }
            }
            Err(e) => {
                inst.tail = None;
                if !inst.tail_failing {
                    warn!(instance = id, "cannot read {}: {e}", path.display());
                    inst.tail_failing = true;
                }
            }
        }
    }

    /// Judges every key the ledger or the home knows.
    fn reconcile(&mut self, id: u32) {
        let Some(inst) = self.insts.get(&id) else {
            return;
        };
        let mut keys: BTreeSet<String> = self.ledger.mapping().keys().cloned().collect();
        if let Some(t) = &inst.tail {
            keys.extend(t.mapping.keys().cloned());
        }
        for k in keys {
            self.evaluate(id, &k, Mode::Reconcile);
        }
    }

    fn poll_one(&mut self, id: u32) {
        let Some(inst) = self.insts.get_mut(&id) else {
            return;
        };
        let Some(tail) = inst.tail.as_mut() else {
            // It could not be read when the instance became ready: try again.
            if inst.tail_failing {
                self.open_tail(id);
                if self.insts.get(&id).is_some_and(|i| i.tail.is_some()) {
                    self.reconcile(id);
                    self.flush(id);
                }
            }
            return;
        };
        match tail.poll() {
            Ok(Polled::Lines(lines)) => {
                inst.tail_failing = false;
                if lines.is_empty() {
                    return;
                }
                let keys: BTreeSet<String> = lines.into_iter().map(|e| e.key).collect();
                for k in keys {
                    self.evaluate(id, &k, Mode::Steady);
                }
                self.flush(id);
            }
            Ok(Polled::Reset) => {
                warn!(
                    instance = id,
                    "auth.txt was replaced or cut short; reading it afresh"
                );
                self.open_tail(id);
                self.reconcile(id);
                self.flush(id);
            }
            Err(e) => {
                if !inst.tail_failing {
                    warn!(instance = id, "reading auth.txt: {e}");
                    inst.tail_failing = true;
                }
            }
        }
    }

    /// Compares `key` in the instance's auth.txt with the ledger and acts on a difference.
    fn evaluate(&mut self, id: u32, key: &str, mode: Mode) {
        if self.is_role_key(key) {
            return;
        }
        let Some(inst) = self.insts.get(&id) else {
            return;
        };
        let Some(tail) = &inst.tail else {
            return;
        };
        if inst.busy(key) {
            return;
        }
        let home = tail.mapping.user(key);
        let ledger = self.ledger.user(key);
        let superseded = home.is_some_and(|h| self.ledger.superseded(key, h));
        let Some(action) = decide(home, ledger, superseded, mode) else {
            return;
        };
        match action {
            Action::Push => {
                // A repair: the peer has this value already, or gets it from its own side.
                if let Some(inst) = self.insts.get_mut(&id) {
                    add_pending(&mut inst.pending, key.to_string(), false);
                }
            }
            Action::Adopt(user) => self.adopt(id, user, key),
        }
    }

    /// Takes a change first seen in instance `id`'s auth.txt into the ledger and sends it to
    /// the other instances as a local change. A claim also goes back to `id` itself, by
    /// ADDLOGIN, when there is a peer site: the server does not replicate the bind, and this
    /// queues the REPLOGIN that carries it to the paired instance.
    fn adopt(&mut self, id: u32, user: String, key: &str) {
        let was = self.ledger.user(key).unwrap_or("nothing").to_string();
        let claim = was.eq_ignore_ascii_case(UNDEFINED) && !is_special(&user);
        let what = if claim { "claimed" } else { "changed" };
        info!(
            instance = id,
            key = %short(key),
            user = %user,
            was = %was,
            "key {what} on this instance; recording it and binding it on the others"
        );
        let op = (user, key.to_string());
        if let Err(e) = self.ledger.append(std::slice::from_ref(&op)) {
            warn!(instance = id, "not recorded: {e}");
            return;
        }
        let to_origin = claim && self.replication_key.is_some();
        let targets = move |i: u32| match i == id {
            true => to_origin.then_some(true),
            false => Some(false),
        };
        self.fan_out(std::slice::from_ref(&op), &targets, false);
        if claim {
            if let Some(leg) = &self.site {
                self.claimed.insert(op.1.clone(), leg.me().to_string());
            }
        } else {
            self.claimed.remove(&op.1);
        }
        let kind = if claim {
            ChangeKind::Claim
        } else {
            ChangeKind::Change
        };
        self.forward(kind, &[op], false);
    }

    /// Sends the ledger's value of every pending key to a ready instance.
    fn flush(&mut self, id: u32) {
        let Some(inst) = self.insts.get_mut(&id) else {
            return;
        };
        if !inst.ready() || inst.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut inst.pending);
        for replicate in [true, false] {
            let ops: Vec<Op> = pending
                .iter()
                .filter(|(_, r)| **r == replicate)
                .filter_map(|(k, _)| self.ledger.user(k).map(|u| (u.to_string(), k.clone())))
                .collect();
            if ops.is_empty() {
                continue;
            }
            let batch = Batch {
                addr: inst.addr,
                ops: ops.clone(),
                replicate,
                done: None,
            };
            if inst.worker.send(batch).is_err() {
                for (_, k) in ops {
                    add_pending(&mut inst.pending, k, replicate);
                }
                continue;
            }
            for (_, k) in ops {
                *inst.inflight.entry(k).or_default() += 1;
            }
        }
    }

    fn on_delivered(&mut self, d: Delivered) {
        let Some(inst) = self.insts.get_mut(&d.id) else {
            return;
        };
        for k in &d.keys {
            if let Some(n) = inst.inflight.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    inst.inflight.remove(k);
                }
            }
        }
        match d.result {
            Err(e) => {
                warn!(
                    instance = d.id,
                    keys = d.keys.len(),
                    "account changes not applied: {e}; sent again when it is ready"
                );
                for k in d.keys {
                    add_pending(&mut inst.pending, k, d.replicate);
                }
            }
            Ok(()) => {
                // Lines that arrived while these keys were busy are judged now.
                self.poll_one(d.id);
                for k in d.keys {
                    self.evaluate(d.id, &k, Mode::Steady);
                }
                self.flush(d.id);
            }
        }
    }
}

/// Marks `key` pending; a change for the peer stays one even if a local repair joins it.
fn add_pending(pending: &mut BTreeMap<String, bool>, key: String, replicate: bool) {
    *pending.entry(key).or_default() |= replicate;
}

/// What to do when an instance's value of a key (`home`) is not the ledger's: take it into
/// the ledger (and to the other instances), or send the ledger's value to the instance.
fn decide(
    home: Option<&str>,
    ledger: Option<&str>,
    superseded: bool,
    mode: Mode,
) -> Option<Action> {
    if home == ledger {
        return None;
    }
    Some(match (home, ledger) {
        (None, None) => return None,
        (None, Some(_)) => Action::Push,
        // Roles are the topology's business, never the ledger's.
        (Some(h), _) if is_privileged(h) => return None,
        (Some(h), None) => Action::Adopt(h.to_string()),
        // A claim: the first LOGIN on a free key bound it.
        (Some(h), Some(l)) if l.eq_ignore_ascii_case(UNDEFINED) && is_user(h) => {
            Action::Adopt(h.to_string())
        }
        // A bound key is never made free again by a stray line.
        (Some(h), Some(l)) if is_user(l) && h.eq_ignore_ascii_case(UNDEFINED) => Action::Push,
        // An old value coming back is an echo (the peer site passing on a change it had
        // from us), not news: the instance gets the ledger's value again.
        (Some(_), Some(_)) if superseded => Action::Push,
        (Some(h), Some(_)) => match mode {
            Mode::Steady => Action::Adopt(h.to_string()),
            Mode::Reconcile => Action::Push,
        },
    })
}

/// Waits (bounded) for the instances' and the other hosts' answers and sends the report.
async fn collect(waits: Vec<Wait>, host_waits: Vec<HostWait>, mut report: Report, reply: Reply) {
    let deadline = Instant::now() + REPORT_WAIT;
    for w in waits {
        let d = match w {
            Wait::Now(d) => d,
            Wait::Later { id, addr, rx } => {
                let (done, error) = match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(()))) => (true, None),
                    Ok(Ok(Err(e))) => (false, Some(e)),
                    Ok(Err(_)) => (false, Some("the instance went away".into())),
                    Err(_) => (
                        false,
                        Some(format!("no answer within {REPORT_WAIT:?}; still trying")),
                    ),
                };
                Delivery {
                    id,
                    addr: addr.to_string(),
                    done,
                    error,
                }
            }
        };
        report.instances.push(d);
    }
    report.instances.sort_by_key(|d| d.id);
    report.hosts = site::collect(host_waits, deadline).await;
    let _ = reply.send(Ok(report));
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: &str = "00112233445566778899AABBCCDDEEFF00112233";
    const Y: &str = "FFEEDDCCBBAA99887766554433221100FFEEDDCC";

    fn d(home: Option<&str>, ledger: Option<&str>, superseded: bool, mode: Mode) -> String {
        match decide(home, ledger, superseded, mode) {
            None => "nothing".into(),
            Some(Action::Push) => "push".into(),
            Some(Action::Adopt(u)) => format!("adopt {u}"),
        }
    }

    #[test]
    fn decisions() {
        use Mode::{Reconcile as R, Steady as S};
        for m in [S, R] {
            assert_eq!(d(Some(X), Some(X), false, m), "nothing");
            assert_eq!(d(None, Some(X), false, m), "push");
            // Claims are taken, whenever seen.
            assert_eq!(
                d(Some(X), Some("undefined"), false, m),
                format!("adopt {X}")
            );
            // Unknown keys are taken.
            assert_eq!(d(Some("undefined"), None, false, m), "adopt undefined");
            // A claimed key is not freed; roles are left alone.
            assert_eq!(d(Some("undefined"), Some(X), false, m), "push");
            assert_eq!(d(Some("administrator"), Some(X), false, m), "nothing");
            // Echoes of old values are repaired.
            assert_eq!(d(Some(X), Some("disabled"), true, m), "push");
        }
        // A new value while running is news (REPLOGIN from the peer); after a restart it
        // is a change the instance missed.
        assert_eq!(d(Some(Y), Some(X), false, S), format!("adopt {Y}"));
        assert_eq!(d(Some("disabled"), Some(X), false, S), "adopt disabled");
        assert_eq!(d(Some(Y), Some(X), false, R), "push");
    }

    fn op(user: &str, key: &str) -> AccountOp {
        AccountOp {
            user: user.into(),
            key: key.into(),
        }
    }

    /// What `take_forwarded` answered: how many changes it took.
    fn take(a: &mut Actor, from: &str, kind: ChangeKind, ops: Vec<AccountOp>) -> String {
        let (tx, mut rx) = oneshot::channel();
        a.take_forwarded(from.into(), kind, ops, tx);
        rx.try_recv().unwrap().unwrap().message
    }

    #[tokio::test]
    async fn forwarded_changes_leave_out_echoes_and_lost_ties() {
        use crate::control::site::{HostLink, SiteHosts};
        const K: &str = "0123456789ABCDEF0123456789ABCDEF01234567";
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("accounts.txt");
        std::fs::write(&ledger, "# ledger\n").unwrap();
        let link = |n: &str| HostLink {
            name: n.into(),
            // Never called: nothing here forwards.
            admin: "127.0.0.1:9".into(),
        };
        let mut a = Actor::new(Setup {
            ledger: ledger.clone(),
            admin_key: "ADMINKEY0123456789".into(),
            replication_key: None,
            site: Some(SiteHosts {
                me: "h2".into(),
                hosts: vec![link("h1"), link("h2"), link("h3")],
                token: None,
            }),
        })
        .unwrap();
        // A free key from a command, then a claim of it on h3.
        assert!(
            take(&mut a, "h1", ChangeKind::Command, vec![op("undefined", K)]).starts_with("1 of 1")
        );
        assert!(take(&mut a, "h3", ChangeKind::Claim, vec![op(X, K)]).starts_with("1 of 1"));
        assert_eq!(a.ledger.user(K), Some(X));
        // The same claim again is nothing new; h1's claim at the same time wins (listed
        // first), a later one of h3 no longer does.
        assert!(take(&mut a, "h3", ChangeKind::Claim, vec![op(X, K)]).starts_with("0 of 1"));
        assert!(take(&mut a, "h1", ChangeKind::Claim, vec![op(Y, K)]).starts_with("1 of 1"));
        assert!(take(&mut a, "h3", ChangeKind::Claim, vec![op(X, K)]).starts_with("0 of 1"));
        assert_eq!(a.ledger.user(K), Some(Y));
        // An old value seen again on another host is an echo; a command is applied as given.
        assert!(take(&mut a, "h3", ChangeKind::Change, vec![op(X, K)]).starts_with("0 of 1"));
        assert!(take(&mut a, "h1", ChangeKind::Command, vec![op(X, K)]).starts_with("1 of 1"));
        // Roles are never accounts.
        assert!(take(
            &mut a,
            "h1",
            ChangeKind::Command,
            vec![op("administrator", K)]
        )
        .starts_with("0 of 1"));
        assert_eq!(a.ledger.user(K), Some(X));
        let text = std::fs::read_to_string(&ledger).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains(K)).count(), 4, "{text}");
    }
}
