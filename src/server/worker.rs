//! The store worker (PROTOCOL.md §6.2): takes uploads in FIFO order — journal entries from
//! the committer, and queue files left in `inputqueue/` — and, for each block, under the
//! key's leaf `LOCKFILE`: reads the stored block, runs `validate_merge`, and replaces the
//! stored block atomically. An upload is settled (its journal entry released, its queue file
//! deleted) only once its result is durable, so a crash at any moment loses no acknowledged
//! block. Journal entries for the replication peer become `sendqueue/` files here.
//!
//! Blocks that are waiting are taken as a batch: their leaf locks are taken in sorted order
//! (a global order, so two storeherd instances cannot deadlock; the original holds one lock
//! at a time), blocks are merged one at a time in FIFO order, the temporary files of the whole
//! batch are made durable by one `syncfs` per file system (a group commit), renamed into
//! place under the locks, and the renames (and any new directories) made durable by a second
//! `syncfs` before the queue files are deleted.
//!
//! Throughput: the committer passes each block's bytes with it, so the worker reads queue
//! files only when they are left from an earlier run; leaves ensured once are remembered
//! (the server never deletes a leaf directory); a small batch waits briefly for the
//! committer's next round so that one `syncfs` covers more blocks; and the settling `syncfs`
//! runs only when no work has come for a while (otherwise the next batch's sync settles the
//! previous one for free). Leftover queue files are unlinked by a helper thread: an unlink
//! waits for a journal commit of the file system, and deleting a durable result's queue file
//! later is always safe (at worst it is processed again after a crash, which the merge rules
//! make harmless, as for any crash between rename and delete).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::server::validate::{validate_merge, Limits};
use crate::store::journal::{Journal, Slot};
use crate::store::lock::LeafLock;
use crate::store::queue::{name_of, Queue};
use crate::store::tree::{PendingWrite, Tree};
use crate::store::{sync_filesystems, StoreError};

/// Most blocks processed in one batch.
const MAX_BATCH: usize = 256;

/// A batch smaller than this waits (up to [`GATHER`]) for the committer's next round.
const GATHER_BELOW: usize = 64;
/// How long a small batch waits for more blocks: about one committer round (a `syncfs`).
const GATHER: Duration = Duration::from_millis(2);
/// Idle this long before a `syncfs` of its own settles the last batch; a batch arriving
/// sooner settles it with its own sync.
const SETTLE_AFTER: Duration = Duration::from_millis(20);

/// Name, in the home, of the list of temporary files a batch is about to create; start-up
/// removes any that a crash left behind.
pub const INFLIGHT: &str = "store-inflight.txt";

pub enum Job {
    /// A durable upload, by queue name, with its content when it is in memory (`None`: read
    /// it from `inputqueue/`, as for files left there), and its journal entry if it has one.
    Block(String, Option<Vec<u8>>, Option<Slot>),
    /// A durable journal entry holding a `sendqueue/` file, by name.
    Send(String, Vec<u8>, Slot),
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
    /// The sender's timer, for SELFTEST.
    liveness: std::sync::Arc<crate::server::sender::Liveness>,
    /// Uploads whose results are renamed into place (or send-queue files written), not yet
    /// known to be durable; settled after the next sync of `unsettled_dirs`' file systems.
    /// The next batch's first sync does that at no extra cost.
    unsettled: Vec<Settle>,
    unsettled_dirs: BTreeSet<PathBuf>,
    /// Leaves (first four hex digits) known to exist, so not `mkdir`ed or `stat`ed again.
    leaves: HashSet<String>,
    /// The queue-file deleter, while the worker thread runs (else files are deleted inline).
    deleter: Option<mpsc::Sender<Vec<String>>>,
}

/// An upload to release once its result is durable.
enum Settle {
    /// A queue file in `inputqueue/`: deleted.
    File(String),
    /// A journal entry (with its queue name, for an input entry).
    Journal(Slot, Option<String>),
}

impl Settle {
    fn upload(name: String, slot: Option<Slot>) -> Settle {
        match slot {
            Some(s) => Settle::Journal(s, Some(name)),
            None => Settle::File(name),
        }
    }
}

/// What a queue file asks for (its prefix, PROTOCOL.md §6.2).
struct Entry {
    name: String,
    slot: Option<Slot>,
    key: String,
    user: String,
    block: Vec<u8>,
}

impl Worker {
    pub fn new(
        tree: Tree,
        queue: Queue,
        sendqueue: Queue,
        journal: Arc<Journal>,
        limits: Limits,
        inflight: PathBuf,
        liveness: std::sync::Arc<crate::server::sender::Liveness>,
    ) -> Worker {
        Worker {
            tree,
            queue,
            sendqueue,
            journal,
            limits,
            inflight,
            liveness,
            unsettled: Vec::new(),
            unsettled_dirs: BTreeSet::new(),
            leaves: HashSet::new(),
            deleter: None,
        }
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
        std::thread::Builder::new()
            .name("store-worker".into())
            .spawn(move || self.run_with_deleter(rx))
    }

    /// Runs the worker with its deleter thread; returns once every settled file is deleted.
    fn run_with_deleter(mut self, rx: mpsc::Receiver<Job>) {
        let (tx, del_rx) = mpsc::channel::<Vec<String>>();
        let queue = self.queue.clone();
        let deleter = std::thread::Builder::new()
            .name("queue-deleter".into())
            .spawn(move || {
                for names in del_rx {
                    delete_all(&queue, names);
                }
            });
        match deleter {
            Ok(handle) => {
                self.deleter = Some(tx);
                self.run(rx);
                let _ = handle.join();
            }
            Err(e) => {
                tracing::warn!("starting the queue-file deleter: {e}; deleting inline");
                self.run(rx);
            }
        }
    }

    /// Consumes the worker: dropping it on return closes the deleter's channel.
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match rx.recv_timeout(SETTLE_AFTER) {
                    Ok(j) => j,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.settle();
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Idle: settle the last batch before waiting.
                        self.settle();
                        match rx.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        }
                    }
                },
            };
            match job {
                Job::Stop => {
                    self.settle();
                    return;
                }
                Job::SelfTest(reply) => {
                    self.settle();
                    let _ = reply.send(self.liveness.selftest_line());
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
                    self.batch(jobs);
                }
            }
        }
    }

    /// Makes the renames of earlier batches durable, then settles their uploads.
    fn settle(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        let dirs = std::mem::take(&mut self.unsettled_dirs);
        let paths: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
        match sync_filesystems(&paths) {
            Ok(()) => self.delete_settled(),
            Err(e) => {
                // Keep the queue files and journal entries: they are processed again at the
                // next start.
                tracing::error!("syncing the store: {e}");
                let held: Vec<Slot> = std::mem::take(&mut self.unsettled)
                    .into_iter()
                    .filter_map(|s| match s {
                        Settle::Journal(slot, _) => Some(slot),
                        Settle::File(_) => None,
                    })
                    .collect();
                self.journal.hold(&held);
            }
        }
    }

    fn delete_settled(&mut self) {
        let settled = std::mem::take(&mut self.unsettled);
        if settled.is_empty() {
            return;
        }
        let mut names = Vec::new();
        let mut slots = Vec::new();
        let mut inputs = Vec::new();
        for s in &settled {
            match s {
                Settle::File(n) => names.push(n.clone()),
                Settle::Journal(slot, name) => {
                    slots.push(*slot);
                    inputs.extend(name.as_deref());
                }
            }
        }
        if !slots.is_empty() {
            self.journal.settle(&slots, &inputs);
        }
        if names.is_empty() {
            return;
        }
        let names = match &self.deleter {
            Some(tx) => match tx.send(names) {
                Ok(()) => return,
                Err(mpsc::SendError(names)) => names,
            },
            None => names,
        };
        delete_all(&self.queue, names);
    }

    fn batch(&mut self, jobs: Vec<Job>) {
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
        match self.store(&entries) {
            Ok(()) => done.extend(
                entries
                    .into_iter()
                    .map(|e| Settle::upload(e.name, e.slot)),
            ),
            Err(e) => {
                // Leave them: queue files and journal entries are processed again at the
                // next start.
                tracing::error!("storing a batch of {} blocks: {e}", entries.len());
                let held: Vec<Slot> = entries.iter().filter_map(|e| e.slot).collect();
                self.journal.hold(&held);
            }
        }
        // After the batch's sync: the next sync makes these files durable with its renames.
        for (name, content, slot) in sends {
            // An existing name is never rewritten (PROTOCOL.md §10.1).
            if self.sendqueue.exists(&name) {
                done.push(Settle::Journal(slot, None));
                continue;
            }
            match self.sendqueue.write_unsynced(&name, &content) {
                Ok(_) => {
                    self.unsettled_dirs
                        .insert(self.sendqueue.dir().to_path_buf());
                    done.push(Settle::Journal(slot, None));
                }
                Err(e) => {
                    tracing::error!("writing a send-queue file: {e}");
                    self.journal.hold(&[slot]);
                }
            }
        }
        self.unsettled.extend(done);
    }

    fn load(&self, name: &str, content: Option<Vec<u8>>) -> Load {
        // From the committer: the very bytes it made durable under this name.
        if let Some(content) = content {
            return Self::parse(name, content);
        }
        let content = match self.queue.read(name) {
            Ok(Some(c)) => c,
            Ok(None) => return Load::Keep, // a duplicate entry, already processed
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

    /// Merges and stores a batch. Errors are I/O errors; rejected blocks are only logged.
    fn store(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
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
                    if let Some(r) = &merged.notify {
                        // The notifier (PROTOCOL.md §12.2) is not built; say who it was for.
                        tracing::debug!(recipient = %r, "new message announcement");
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
        let mut pending: Vec<PendingWrite> = Vec::with_capacity(order.len());
        let mut temps = String::new();
        let names: Vec<PathBuf> = order.iter().map(|k| self.tree.temp_path(k)).collect();
        for n in &names {
            temps.push_str(&n.to_string_lossy());
            temps.push('\n');
        }
        // Recorded before the temporary files exist, so that start-up can remove them.
        fs::write(&self.inflight, temps.as_bytes()).map_err(StoreError::at(&self.inflight))?;
        let result = (|| {
            for (k, tmp) in order.iter().zip(&names) {
                pending.push(self.tree.write_temp_in_leaf(k, tmp, &results[k])?);
            }
            // One sync makes this batch's data and the earlier batches' renames durable.
            let mut paths: Vec<&std::path::Path> = pending.iter().map(|w| w.temp_path()).collect();
            paths.extend(self.unsettled_dirs.iter().map(PathBuf::as_path));
            sync_filesystems(&paths)
        })();
        if let Err(e) = result {
            for w in pending {
                w.discard();
            }
            return Err(e);
        }
        let mut dirs = BTreeSet::new();
        for w in pending {
            dirs.insert(w.publish()?);
        }
        drop(locks);
        // The previous batches are durable now (the sync above covered their file systems).
        self.unsettled_dirs.clear();
        self.delete_settled();
        self.unsettled_dirs.extend(dirs);
        Ok(())
    }

    /// Locks a key's leaf, creating the leaf first unless this process already has.
    fn lock_leaf(&mut self, key: &str) -> Result<LeafLock, StoreError> {
        let lock_path = self.tree.lock_path(key);
        if self.leaves.contains(&key[0..4]) {
            match LeafLock::acquire(&lock_path) {
                Ok(l) => return Ok(l),
                // Gone after all (removed by hand?): forget it and create it again.
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {
                    self.leaves.remove(&key[0..4]);
                }
                Err(e) => return Err(e),
            }
        }
        self.tree.ensure_leaf(key)?;
        let lock = LeafLock::acquire(&lock_path)?;
        self.leaves.insert(key[0..4].to_string());
        Ok(lock)
    }
}

fn delete_all(queue: &Queue, names: Vec<String>) {
    for name in names {
        if let Err(e) = queue.delete(&name) {
            tracing::error!("deleting a processed queue file: {e}");
        }
    }
}

enum Load {
    Entry(Entry),
    /// Malformed or torn: delete it.
    Drop,
    /// Not ours to process now (missing, or a type this server does not handle): leave it.
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
    if stype != "SERVER" && stype != "REPL-IN" {
        tracing::warn!("queue file {name} has type {stype}, which this server does not process");
        return Ok(None);
    }
    let user = field(next_line(&content), "LoginUser: ").ok_or("no LoginUser line")?;
    if !(4..=40).contains(&user.len()) || !user.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("bad LoginUser");
    }
    Ok(Some(Entry {
        name: name.to_string(),
        slot: None,
        key: key.to_ascii_uppercase(),
        user: user.to_ascii_uppercase(),
        block: content[pos..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
