//! The store worker (docs/protocol.md §6.2): takes uploads in FIFO order — journal entries from
//! the committer, and queue files left in `inputqueue/` — and, for each block, under the
//! key's leaf `LOCKFILE`: reads the stored block, runs `validate_merge`, and replaces the
//! stored block atomically. An upload is settled (its journal entry released, its queue file
//! deleted) only once its result is durable, so a crash at any moment loses no acknowledged
//! block. Journal entries for the replication peer become `sendqueue/` files here.
//!
//! Blocks that are waiting are taken as a batch: their leaf locks are taken in sorted order
//! (a global order, so two storeherd instances cannot deadlock; the original holds one lock
//! at a time), blocks are merged one at a time in FIFO order, and the results written to
//! temporary files in their leaves. The publisher thread (`publish`) then makes them durable
//! with one `syncfs` per file system (a group commit), renames them into place, releases the
//! locks and settles the uploads once a later sync covers the renames — while the worker
//! merges the next batch.
//!
//! Entangled uploads (`entangled-outgoing` from STORE ENTANGLED, `entangled-incoming` from
//! the DHT or left by the original) are merged with the DHT rules into the entangled tree
//! (docs/protocol.md §6.2, §11), one at a time under that tree's leaf lock, and written with the
//! same atomic, durable replacement before they are settled.
//!
//! Message announcements stored by `STORE SERVER` are handed to the notifier (§12.2) once
//! their batch is stored; the notifier never holds up the worker.
//!
//! A leaf lock that cannot be taken (the lock call fails: `EIO`, `ENOLCK` on NFS) or is found
//! lost before a publish stops the storing for good in this process ([`LockLoss`]): every
//! upload from then on is held in the journal or left in `inputqueue/`, and SELFTEST answers
//! `FAIL LOCK <lock file>`, so the supervisor takes the instance out of rotation and in the
//! end restarts it; the new process takes its locks afresh and processes what was held.
//!
//! Throughput: the committer passes each block's bytes with it, so the worker reads queue
//! files only when they are left from an earlier run; leaves ensured once are remembered
//! (the server never deletes a leaf directory); a small batch waits briefly for the
//! committer's next round so that one `syncfs` covers more blocks.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::server::entangled::{split_headers, Entangled};
use crate::server::leaves::Known;
use crate::server::notify::{opted_out, Notifier};
use crate::server::publish::{Batch, Publisher, Settle};
use crate::server::validate::{validate_merge, Limits};
use crate::store::journal::{Journal, Slot};
use crate::store::lock::{LeafLock, LockError, LockLoss};
use crate::store::queue::{name_of, Queue};
use crate::store::tree::{PendingWrite, Tree};
use crate::store::StoreError;

/// Most blocks processed in one batch.
const MAX_BATCH: usize = 256;

/// A batch smaller than this waits (up to [`GATHER`]) for the committer's next round.
const GATHER_BELOW: usize = 64;
/// How long a small batch waits for more blocks: about one committer round (a `syncfs`).
const GATHER: Duration = Duration::from_millis(2);
/// Name, in the home, of the list of temporary files a batch is about to create; start-up
/// removes any that a crash left behind.
pub const INFLIGHT: &str = "store-inflight.txt";

pub enum Job {
    /// A durable upload, by queue name, with its content when it is in memory (`None`: read
    /// it from `inputqueue/`, as for files left there), and its journal entry if it has one.
    Block(String, Option<Vec<u8>>, Option<Slot>),
    /// A durable journal entry holding a `sendqueue/` file, by name, with its content when
    /// the file still has to be written (`None`: the committer wrote it; writing it again
    /// could bring back a file the sender has already delivered and deleted).
    Send(String, Option<Vec<u8>>, Slot),
    /// SELFTEST: answered with the result line once every earlier job is done.
    SelfTest(oneshot::Sender<String>),
    /// Stop after every earlier job.
    Stop,
}

pub struct Worker {
    tree: Tree,
    queue: Queue,
    sendqueue: Queue,
    journal: Arc<Journal>,
    limits: Limits,
    /// `<home>/store-inflight.txt`.
    inflight: PathBuf,
    /// It, open, with the length last written (rewritten in place, never truncated:
    /// freeing blocks costs a discard on some file systems).
    inflight_file: Option<(fs::File, usize)>,
    /// Temporary files of the batch handed to the publisher last, which may not be
    /// renamed yet (one line each).
    last_temps: String,
    /// The sender's timer, for SELFTEST.
    liveness: std::sync::Arc<crate::server::sender::Liveness>,
    /// Leaves (first four hex digits) known to exist, so not `mkdir`ed or `stat`ed again.
    leaves: Arc<Known>,
    entangled: Entangled,
    notifier: Notifier,
    /// Set once a leaf lock fails or is lost (here or in the publisher).
    loss: Arc<LockLoss>,
    /// Tests: drop every leaf lock right after taking it, as a file system losing them.
    #[cfg(test)]
    lose_locks: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a batch (or an entangled upload) was not stored.
#[derive(Debug, thiserror::Error)]
enum StoreFailure {
    #[error(transparent)]
    Io(#[from] StoreError),
    /// The locking itself failed ([`LockError::is_lock_failure`]).
    #[error(transparent)]
    Lock(LockError),
}

impl From<LockError> for StoreFailure {
    fn from(e: LockError) -> StoreFailure {
        match e {
            LockError::Open(e) => StoreFailure::Io(e),
            e => StoreFailure::Lock(e),
        }
    }
}

/// Where the worker's results go besides the local store.
pub struct Outputs {
    /// `sendqueue/`, for journal entries bound for the replication peer.
    pub sendqueue: Queue,
    /// The entangled tree (entangled uploads).
    pub entangled: Entangled,
    /// New-mail notices.
    pub notifier: Notifier,
}

/// What a queue file's `StoreType` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Server,
    ReplIn,
    EntangledOut,
    EntangledIn,
}

impl EntryKind {
    fn is_entangled(self) -> bool {
        matches!(self, EntryKind::EntangledOut | EntryKind::EntangledIn)
    }
}

/// What a queue file asks for (its prefix, docs/protocol.md §6.2).
struct Entry {
    name: String,
    slot: Option<Slot>,
    kind: EntryKind,
    key: String,
    /// Upper case; empty for the entangled types, which have none.
    user: String,
    block: Vec<u8>,
}

impl Worker {
    pub fn new(
        tree: Tree,
        queue: Queue,
        journal: Arc<Journal>,
        limits: Limits,
        inflight: PathBuf,
        liveness: std::sync::Arc<crate::server::sender::Liveness>,
        outputs: Outputs,
    ) -> Worker {
        Worker {
            tree,
            queue,
            journal,
            limits,
            inflight,
            inflight_file: None,
            last_temps: String::new(),
            liveness,
            leaves: Arc::default(),
            sendqueue: outputs.sendqueue,
            entangled: outputs.entangled,
            notifier: outputs.notifier,
            loss: Arc::default(),
            #[cfg(test)]
            lose_locks: Arc::default(),
        }
    }

    /// The SELFTEST line: `FAIL LOCK <lock file>` once a lock was lost, else the sender's.
    fn selftest_line(&self) -> String {
        match self.loss.lost() {
            Some(path) => format!("FAIL LOCK {}", path.display()),
            None => self.liveness.selftest_line(),
        }
    }

    /// The leaves it knows to exist, for the helper that makes them ahead of it.
    pub fn leaves(&self) -> Arc<Known> {
        self.leaves.clone()
    }

    /// Removes temporary files that a crashed run left in the tree.
    pub fn recover(&self) -> Result<(), StoreError> {
        let text = match fs::read_to_string(&self.inflight) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::at(&self.inflight)(e)),
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            match fs::remove_file(line) {
                Ok(()) => tracing::info!("removed a temporary file left by a crash: {line}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("removing {line}: {e}"),
            }
        }
        fs::write(&self.inflight, b"").map_err(StoreError::at(&self.inflight))
    }

    pub fn start(self, rx: mpsc::Receiver<Job>) -> std::io::Result<JoinHandle<()>> {
        let publisher =
            Publisher::start(self.journal.clone(), self.queue.clone(), self.loss.clone())?;
        std::thread::Builder::new()
            .name("store-worker".into())
            .spawn(move || self.run(rx, publisher))
    }

    /// Dropping `publisher` on return stops it once it has settled everything.
    fn run(mut self, rx: mpsc::Receiver<Job>, publisher: Publisher) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            match job {
                Job::Stop => return,
                Job::SelfTest(reply) => {
                    publisher.flush();
                    let _ = reply.send(self.selftest_line());
                }
                job @ (Job::Block(..) | Job::Send(..)) => {
                    let mut jobs = vec![job];
                    let deadline = Instant::now() + GATHER;
                    while jobs.len() < MAX_BATCH {
                        let got = match rx.try_recv() {
                            Ok(j) => Some(j),
                            Err(mpsc::TryRecvError::Disconnected) => None,
                            Err(mpsc::TryRecvError::Empty) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                if jobs.len() >= GATHER_BELOW || left.is_zero() {
                                    None
                                } else {
                                    rx.recv_timeout(left).ok()
                                }
                            }
                        };
                        match got {
                            Some(j @ (Job::Block(..) | Job::Send(..))) => jobs.push(j),
                            Some(other) => {
                                next = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.batch(jobs, &publisher);
                }
            }
        }
    }

    fn batch(&mut self, jobs: Vec<Job>, publisher: &Publisher) {
        let mut entries = Vec::new();
        let mut done = Vec::new();
        let mut sends = Vec::new();
        for job in jobs {
            match job {
                Job::Block(name, content, slot) => match self.load(&name, content) {
                    Load::Entry(mut e) => {
                        e.slot = slot;
                        entries.push(e);
                    }
                    Load::Drop => done.push(Settle::upload(name, slot)),
                    // Only a file can be left for later; the committer journals only
                    // uploads that this worker processes.
                    Load::Keep => done.extend(slot.map(|s| Settle::Journal(s, Some(name)))),
                },
                Job::Send(name, content, slot) => sends.push((name, content, slot)),
                Job::SelfTest(_) | Job::Stop => {}
            }
        }
        let (dht, mut entries): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.kind.is_entangled());
        for e in dht {
            if self.loss.lost().is_some() {
                self.journal.hold(&e.slot.into_iter().collect::<Vec<_>>());
                continue;
            }
            // Durable once stored: settled with the batch.
            match self.store_entangled(&e) {
                Ok(()) => done.push(Settle::upload(e.name, e.slot)),
                Err(err) => {
                    if let StoreFailure::Lock(l) = &err {
                        self.loss.report(l, 1);
                    } else {
                        tracing::error!(key = %e.key, "storing an entangled value: {err}");
                    }
                    self.journal.hold(&e.slot.into_iter().collect::<Vec<_>>());
                }
            }
        }
        if self.loss.lost().is_some() && !entries.is_empty() {
            // Nothing more goes into the store: held for the next process.
            let held: Vec<Slot> = entries.iter().filter_map(|e| e.slot).collect();
            self.journal.hold(&held);
            tracing::debug!("{} blocks held: a leaf lock was lost", entries.len());
            entries.clear();
        }
        let mut out = Batch::default();
        let mut temps = String::new();
        let mut notices = Vec::new();
        match self.store(&entries, &mut out, &mut temps, &mut notices) {
            Ok(()) => {
                for r in &notices {
                    self.notifier.notify(r);
                }
                done.extend(entries.into_iter().map(|e| Settle::upload(e.name, e.slot)))
            }
            Err(e) => {
                // Left for the next start: queue files stay, journal segments keep them.
                match &e {
                    StoreFailure::Lock(l) => self.loss.report(l, entries.len()),
                    StoreFailure::Io(_) => {
                        tracing::error!("storing a batch of {} blocks: {e}", entries.len())
                    }
                }
                let held: Vec<Slot> = entries.iter().filter_map(|e| e.slot).collect();
                self.journal.hold(&held);
            }
        }
        for (name, content, slot) in sends {
            // Normally written by the committer already (not synced): only made durable.
            let written = match content {
                Some(c) => self.sendqueue.put_new(&name, &c),
                None => Ok(()),
            };
            match written {
                Ok(()) => {
                    out.settle_dirs.insert(self.sendqueue.dir().to_path_buf());
                    done.push(Settle::Journal(slot, None));
                }
                Err(e) => {
                    tracing::error!("writing a send-queue file: {e}");
                    self.journal.hold(&[slot]);
                }
            }
        }
        out.done = done;
        publisher.publish(out);
        // The batch before is published now; this one's temporary files are the open ones.
        self.last_temps = temps;
    }

    fn load(&self, name: &str, content: Option<Vec<u8>>) -> Load {
        // From the committer: the very bytes it made durable under this name.
        if let Some(content) = content {
            return Self::parse(name, content);
        }
        let content = match self.queue.read(name) {
            Ok(Some(c)) => c,
            // Already processed (a duplicate entry): settling it forgets the name.
            Ok(None) => return Load::Drop,
            Err(e) => {
                tracing::error!("reading a queue file: {e}");
                return Load::Keep;
            }
        };
        if name_of(&content) != name {
            // Only a write torn by a crash can do this, and such a file was never
            // acknowledged (DONE waits for the fsync).
            tracing::warn!("queue file {name} does not match its content; dropped");
            return Load::Drop;
        }
        Self::parse(name, content)
    }

    fn parse(name: &str, content: Vec<u8>) -> Load {
        match parse_entry(name, content) {
            Ok(Some(e)) => Load::Entry(e),
            Ok(None) => Load::Keep,
            Err(why) => {
                tracing::warn!("queue file {name}: {why}; dropped");
                Load::Drop
            }
        }
    }

    /// Merges a batch and writes its results to temporary files, filling `out` for the
    /// publisher and `temps` with their names. Errors are I/O errors; rejected blocks are
    /// only logged.
    fn store(
        &mut self,
        entries: &[Entry],
        out: &mut Batch,
        temps: &mut String,
        notices: &mut Vec<String>,
    ) -> Result<(), StoreFailure> {
        if entries.is_empty() {
            return Ok(());
        }
        let leaves: BTreeSet<&str> = entries.iter().map(|e| &e.key[0..4]).collect();
        let mut locks = Vec::with_capacity(leaves.len());
        for &leaf in &leaves {
            let key = entries
                .iter()
                .find(|e| &e.key[0..4] == leaf)
                .map(|e| e.key.as_str());
            let key = key.unwrap_or_default();
            locks.push(self.lock_leaf(key)?);
        }
        #[cfg(test)]
        if self.lose_locks.load(std::sync::atomic::Ordering::Relaxed) {
            for l in &locks {
                l.drop_lock_for_test();
            }
        }
        let now = chrono::Utc::now();
        // Results of this batch, by key: later blocks merge against them.
        let mut results: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for e in entries {
            let existing = match results.get(e.key.as_str()) {
                Some(b) => Some(b.clone()),
                None => self.tree.read(&e.key)?,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                validate_merge(
                    &e.key,
                    existing.as_deref(),
                    &e.block,
                    false,
                    Some(&e.user),
                    &self.limits,
                    now,
                )
            }));
            match outcome {
                Ok(Ok(merged)) => {
                    // Replicated blocks never notify (docs/protocol.md §6.2).
                    let notify = merged.notify.as_deref().filter(|r| {
                        e.kind == EntryKind::Server && !r.is_empty() && !opted_out(&merged.block)
                    });
                    if let Some(r) = notify {
                        notices.push(r.to_string());
                    }
                    tracing::debug!(key = %e.key, "stored");
                    if !results.contains_key(e.key.as_str()) {
                        order.push(&e.key);
                    }
                    results.insert(&e.key, merged.block);
                }
                Ok(Err(why)) => tracing::info!(key = %e.key, "block not stored: {why}"),
                Err(_) => tracing::error!(key = %e.key, "validation panicked; block dropped"),
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let names: Vec<PathBuf> = order.iter().map(|k| self.tree.temp_path(k)).collect();
        for n in &names {
            temps.push_str(&n.to_string_lossy());
            temps.push('\n');
        }
        // Recorded before the temporary files exist, so that start-up can remove them;
        // with the previous batch's, which the publisher may not have renamed yet.
        let list = format!("{}{temps}", self.last_temps);
        self.record_inflight(&list)?;
        let mut writes: Vec<PendingWrite> = Vec::with_capacity(order.len());
        for (k, tmp) in order.iter().zip(&names) {
            match self.tree.write_temp_in_leaf(k, tmp, &results[k]) {
                Ok(w) => writes.push(w),
                Err(e) => {
                    for w in writes {
                        w.discard();
                    }
                    return Err(e.into());
                }
            }
        }
        out.write_dirs = order
            .iter()
            .map(|k| self.tree.root().join(&k[0..2]))
            .collect();
        out.writes = writes;
        out.locks = locks;
        Ok(())
    }

    /// Merges one entangled upload into the entangled tree under its leaf lock (docs/protocol.md
    /// §6.2): the value is validated with the DHT rules against the stored value (the DHT
    /// header lines split off both), and stored after the new header lines. An outgoing
    /// value is first merged against the local copy and published to the DHT, whose store
    /// into this node is then merged the same way (directly when there is no DHT node).
    fn store_entangled(&mut self, e: &Entry) -> Result<(), StoreFailure> {
        let tree = self.entangled.tree().clone();
        tree.ensure_leaf(&e.key)?;
        let lock = LeafLock::acquire(&tree.lock_path(&e.key))?;
        let existing_file = tree.read(&e.key)?;
        let existing = existing_file.as_deref().map(|f| split_headers(f).1);
        let published;
        let incoming: &[u8] = match e.kind {
            EntryKind::EntangledOut => {
                let Some(value) = self.merge_dht(&e.key, existing, &e.block) else {
                    return Ok(());
                };
                let Some(own) = self.entangled.publish(&e.key, &value) else {
                    return Ok(());
                };
                published = own;
                &published
            }
            _ => &e.block,
        };
        let (headers, value) = split_headers(incoming);
        let Some(merged) = self.merge_dht(&e.key, existing, value) else {
            return Ok(());
        };
        let mut file = headers.to_vec();
        file.extend_from_slice(&merged);
        lock.verify()?;
        tree.write_atomic(&e.key, &file)?;
        tracing::debug!(key = %e.key, "stored in the entangled tree");
        Ok(())
    }

    /// `validate_merge` with the DHT rules; `None` (logged) if nothing is to be stored.
    fn merge_dht(&self, key: &str, existing: Option<&[u8]>, new: &[u8]) -> Option<Vec<u8>> {
        let now = chrono::Utc::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            validate_merge(key, existing, new, true, None, &self.limits, now)
        }));
        match outcome {
            Ok(Ok(merged)) => Some(merged.block),
            Ok(Err(why)) => {
                tracing::info!(key, "entangled value not stored: {why}");
                None
            }
            Err(_) => {
                tracing::error!(key, "validation panicked; entangled value dropped");
                None
            }
        }
    }

    /// Replaces the in-flight list: written over the old one in place, padded with empty
    /// lines (which start-up skips), so the file is never truncated.
    fn record_inflight(&mut self, text: &str) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let at = StoreError::at(&self.inflight);
        if self.inflight_file.is_none() {
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.inflight)
                .map_err(StoreError::at(&self.inflight))?;
            let len = f.metadata().map_err(StoreError::at(&self.inflight))?.len() as usize;
            self.inflight_file = Some((f, len));
        }
        let (f, len) = self.inflight_file.as_mut().expect("opened above");
        let mut bytes = text.as_bytes().to_vec();
        if bytes.len() < *len {
            bytes.resize(*len, b'\n');
        }
        f.write_all_at(&bytes, 0).map_err(at)?;
        *len = bytes.len();
        Ok(())
    }

    /// Locks a key's leaf, creating the leaf first unless this process already has.
    fn lock_leaf(&mut self, key: &str) -> Result<LeafLock, LockError> {
        let lock_path = self.tree.lock_path(key);
        if self.leaves.contains(key) {
            match LeafLock::acquire(&lock_path) {
                Ok(l) => return Ok(l),
                // Gone after all (removed by hand?): forget it and create it again.
                Err(LockError::Open(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                    self.leaves.remove(key);
                }
                Err(e) => return Err(e),
            }
        }
        self.tree.ensure_leaf(key)?;
        let lock = LeafLock::acquire(&lock_path)?;
        self.leaves.insert(key);
        Ok(lock)
    }
}

enum Load {
    Entry(Entry),
    /// Malformed, torn or gone: delete it (if still there) and forget it.
    Drop,
    /// Not ours to process (a type this server does not handle): leave it.
    Keep,
}

/// Parses the queue-file prefix: `StoreType`, `StoreKeyid`, and for SERVER/REPL-IN
/// `LoginUser` (case-insensitive, CR ignored). `Ok(None)`: a type this server leaves alone.
fn parse_entry(name: &str, content: Vec<u8>) -> Result<Option<Entry>, &'static str> {
    let mut pos = 0;
    let mut next_line = |content: &[u8]| -> Option<String> {
        let end = content[pos..].iter().position(|&b| b == b'\n')? + pos;
        let line = String::from_utf8_lossy(&content[pos..end]).replace('\r', "");
        pos = end + 1;
        Some(line)
    };
    let field = |line: Option<String>, prefix: &str| -> Option<String> {
        let line = line?;
        let (k, v) = line.split_at_checked(prefix.len())?;
        k.eq_ignore_ascii_case(prefix).then(|| v.to_string())
    };
    let stype = field(next_line(&content), "StoreType: ").ok_or("no StoreType line")?;
    if stype.is_empty() || !stype.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err("bad StoreType");
    }
    let stype = stype.to_ascii_uppercase();
    let key = field(next_line(&content), "StoreKeyid: ").ok_or("no StoreKeyid line")?;
    if key.len() != 40 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("bad StoreKeyid");
    }
    let kind = match stype.as_str() {
        "SERVER" => EntryKind::Server,
        "REPL-IN" => EntryKind::ReplIn,
        "ENTANGLED-OUTGOING" => EntryKind::EntangledOut,
        "ENTANGLED-INCOMING" => EntryKind::EntangledIn,
        _ => {
            tracing::warn!(
                "queue file {name} has type {stype}, which this server does not process"
            );
            return Ok(None);
        }
    };
    let user = if kind.is_entangled() {
        String::new()
    } else {
        let user = field(next_line(&content), "LoginUser: ").ok_or("no LoginUser line")?;
        if !(4..=40).contains(&user.len()) || !user.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("bad LoginUser");
        }
        user
    };
    Ok(Some(Entry {
        name: name.to_string(),
        slot: None,
        kind,
        key: key.to_ascii_uppercase(),
        user: user.to_ascii_uppercase(),
        block: content[pos..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compose;
    use crate::server::sender::Liveness;
    use crate::store::journal::Kind;
    use std::sync::atomic::Ordering;

    /// A worker on a fresh home's journal and store, started; its lock-dropping switch.
    struct Running {
        jobs: mpsc::Sender<Job>,
        thread: JoinHandle<()>,
        lose_locks: Arc<std::sync::atomic::AtomicBool>,
        journal: Arc<Journal>,
        tree: Tree,
    }

    fn start(home: &std::path::Path) -> (Running, Vec<crate::store::journal::Recovered>) {
        for d in ["inputqueue", "sendqueue", "localstore", "entangled"] {
            crate::store::ensure_dir(&home.join(d)).unwrap();
        }
        let (journal, recovered) = Journal::open(&home.join("journal")).unwrap();
        let tree = Tree::new(home.join("localstore"));
        let (notifier, _) = Notifier::start(home).unwrap();
        let worker = Worker::new(
            tree.clone(),
            Queue::new(home.join("inputqueue")),
            journal.clone(),
            Limits::default(),
            home.join(INFLIGHT),
            Liveness::new(10),
            Outputs {
                sendqueue: Queue::new(home.join("sendqueue")),
                entangled: Entangled::new(home.join("entangled")),
                notifier,
            },
        );
        worker.recover().unwrap();
        let lose_locks = worker.lose_locks.clone();
        let (jobs, rx) = mpsc::channel();
        let thread = worker.start(rx).unwrap();
        let running = Running {
            jobs,
            thread,
            lose_locks,
            journal,
            tree,
        };
        (running, recovered)
    }

    impl Running {
        /// Journals an upload of a fresh data block, as the committer does, and queues it.
        fn upload(&self, payload: &[u8]) -> (String, String) {
            let (key, block) = compose::data_block(payload, chrono::Utc::now());
            let mut content =
                format!("StoreType: SERVER\nStoreKeyid: {key}\nLoginUser: NONE\n").into_bytes();
            content.extend_from_slice(&block);
            let (name, slot) = self
                .journal
                .append(&[(Kind::Input, &content)])
                .unwrap()
                .remove(0);
            self.jobs
                .send(Job::Block(name.clone(), Some(content), Some(slot)))
                .unwrap();
            (key, name)
        }

        fn selftest(&self) -> String {
            let (tx, rx) = oneshot::channel();
            self.jobs.send(Job::SelfTest(tx)).unwrap();
            rx.blocking_recv().unwrap()
        }

        fn stop(self) {
            self.jobs.send(Job::Stop).unwrap();
            self.thread.join().unwrap();
        }
    }

    #[test]
    fn a_lost_lock_stores_nothing_more_fails_selftest_and_loses_no_upload() {
        let home = tempfile::tempdir().unwrap();
        let (w, _) = start(home.path());
        let (stored, _) = w.upload(b"stored while the lock holds");
        assert_eq!(w.selftest(), "PASS");
        assert!(w.tree.read(&stored).unwrap().is_some());

        // The file system loses the locks between taking them and the publish.
        w.lose_locks.store(true, Ordering::Relaxed);
        let (first, first_name) = w.upload(b"first after the loss");
        let line = w.selftest();
        let lockfile = w.tree.lock_path(&first);
        assert_eq!(line, format!("FAIL LOCK {}", lockfile.display()));
        assert!(w.tree.read(&first).unwrap().is_none());
        assert!(w.journal.is_pending(&first_name));

        // Locks are fine again: still nothing is stored by this process.
        w.lose_locks.store(false, Ordering::Relaxed);
        let (second, second_name) = w.upload(b"second after the loss");
        assert!(w.selftest().starts_with("FAIL LOCK "));
        assert!(w.tree.read(&second).unwrap().is_none());
        assert!(w.journal.is_pending(&second_name));
        let leaf: Vec<String> = fs::read_dir(w.tree.leaf_dir(&first))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leaf, vec!["LOCKFILE".to_string()], "no temporary file left");
        let journal = w.journal.clone();
        w.stop();
        drop(journal);

        // The next process (same home) gets both uploads back and stores them.
        let (w, recovered) = start(home.path());
        let names: Vec<&str> = recovered.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec![first_name.as_str(), second_name.as_str()]);
        for r in recovered {
            w.jobs
                .send(Job::Block(r.name, Some(r.content), Some(r.slot)))
                .unwrap();
        }
        assert_eq!(w.selftest(), "PASS");
        assert!(w.tree.read(&first).unwrap().is_some());
        assert!(w.tree.read(&second).unwrap().is_some());
        w.stop();
    }

    #[test]
    fn prefix_parsing() {
        let k = "CDF7C1DF00000000000000000000000000000008";
        let c = format!(
            "StoreType: server\r\nstorekeyid: {}\nLoginUser: none\nType: data\n",
            k.to_lowercase()
        );
        let e = parse_entry("N", c.into_bytes()).unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.user.as_str()), (k, "NONE"));
        assert_eq!(e.block, b"Type: data\n");
        assert!(parse_entry("N", b"StoreType: server\nStoreKeyid: 12\n".to_vec()).is_err());
        assert!(parse_entry(
            "N",
            format!("StoreType: proxy\nStoreKeyid: {k}\n").into_bytes()
        )
        .unwrap()
        .is_none());
        assert!(parse_entry(
            "N",
            format!("StoreType: server\nStoreKeyid: {k}\nLoginUser: a/b\n").into_bytes()
        )
        .is_err());
    }
}
