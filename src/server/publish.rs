//! The store worker's publisher: makes a batch's results durable and visible, so that the
//! worker can merge the next batch meanwhile (the `syncfs` is I/O wait, and this way it
//! overlaps with the worker's CPU work instead of stalling it).
//!
//! For each batch, in order: one `syncfs` per file system covers the batch's temporary
//! files and the renames of the batch before it; then every leaf lock of the batch is checked
//! to be still held (a network file system can lose one); then the temporary files are
//! renamed over their blocks and the leaf locks released; then the earlier batch's uploads are settled
//! (journal entries released, leftover queue files deleted), since that sync made their
//! renames durable. When no batch comes for a while, a sync of its own settles the last one.
//!
//! A batch with a lock that is not held any more is not published at all: its temporary
//! files are removed and its uploads held for the next start, and the loss is recorded
//! ([`LockLoss`]), after which no batch with results is published again by this process.
//!
//! The worker hands over a batch only when the publisher is free (a rendezvous channel), so
//! at most two batches are ever unpublished: the one here and the one being merged. Keys
//! shared by both are safe: the worker waits for the leaf lock, which the publisher holds
//! until its rename is done, and then reads the new block.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::journal::{Journal, Slot};
use crate::store::lock::{LeafLock, LockError, LockLoss};
use crate::store::queue::Queue;
use crate::store::tree::PendingWrite;
use crate::store::Devices;

/// Idle this long before a `syncfs` of its own settles the last batch; a batch arriving
/// sooner settles it with its own sync.
const SETTLE_AFTER: Duration = Duration::from_millis(20);

/// An upload to release once its result is durable.
#[derive(Debug)]
pub enum Settle {
    /// A queue file in `inputqueue/`: deleted.
    File(String),
    /// A journal entry (with its queue name, for an input entry).
    Journal(Slot, Option<String>),
}

impl Settle {
    pub fn upload(name: String, slot: Option<Slot>) -> Settle {
        match slot {
            Some(s) => Settle::Journal(s, Some(name)),
            None => Settle::File(name),
        }
    }
}

/// One batch from the worker.
#[derive(Debug, Default)]
pub struct Batch {
    /// Results in their temporary files, to make durable and rename into place.
    pub writes: Vec<PendingWrite>,
    /// Folders holding `writes` (their file systems are synced).
    pub write_dirs: BTreeSet<PathBuf>,
    /// Held until the renames are done.
    pub locks: Vec<LeafLock>,
    /// Uploads this batch settles once its renames (and files in `settle_dirs`) are durable.
    pub done: Vec<Settle>,
    /// Folders of files written for `done` besides `writes` (send-queue files).
    pub settle_dirs: BTreeSet<PathBuf>,
}

enum Msg {
    Batch(Batch),
    /// Settle everything handed over so far, then answer.
    Flush(mpsc::Sender<()>),
}

/// The worker's end.
pub struct Publisher {
    tx: Option<mpsc::SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// `loss` is shared with the worker: set here when a batch's lock is found lost.
    pub fn start(
        journal: Arc<Journal>,
        queue: Queue,
        loss: Arc<LockLoss>,
    ) -> std::io::Result<Publisher> {
        let (tx, rx) = mpsc::sync_channel(0);
        let mut state = State {
            journal,
            queue,
            loss,
            devices: Devices::default(),
            unsettled: Vec::new(),
            unsettled_dirs: BTreeSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("store-publish".into())
            .spawn(move || state.run(rx))?;
        Ok(Publisher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands a batch over; returns once the previous one is published.
    pub fn publish(&self, batch: Batch) {
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(Msg::Batch(b))) = tx.send(Msg::Batch(batch)) {
                // The thread is gone (it panicked): leave everything for the next start.
                tracing::error!(
                    "the store publisher stopped; {} results dropped",
                    b.writes.len()
                );
                for w in b.writes {
                    w.discard();
                }
            }
        }
    }

    /// Returns once every batch handed over is published and settled.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Publisher {
    /// Settles what is left and stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    journal: Arc<Journal>,
    queue: Queue,
    loss: Arc<LockLoss>,
    devices: Devices,
    /// Uploads whose results are renamed into place, not yet known to be durable.
    unsettled: Vec<Settle>,
    /// Folders whose file systems must be synced before `unsettled` settle.
    unsettled_dirs: BTreeSet<PathBuf>,
}

impl State {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let msg = match rx.recv_timeout(SETTLE_AFTER) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.settle();
                    match rx.recv() {
                        Ok(m) => m,
                        Err(_) => return,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.settle();
                    return;
                }
            };
            match msg {
                Msg::Batch(b) => self.batch(b),
                Msg::Flush(done) => {
                    self.settle();
                    let _ = done.send(());
                }
            }
        }
    }

    fn batch(&mut self, b: Batch) {
        let Batch {
            writes,
            write_dirs,
            locks,
            done,
            settle_dirs,
        } = b;
        if !writes.is_empty() {
            // One sync: this batch's data and the earlier batches' renames.
            let dirs = write_dirs.iter().chain(&self.unsettled_dirs);
            if let Err(e) = self.devices.sync(dirs.map(PathBuf::as_path)) {
                tracing::error!("syncing the store: {e}");
                for w in writes {
                    w.discard();
                }
                // Processed again at the next start.
                self.hold(done);
                return;
            }
            // The earlier batches are durable now.
            self.unsettled_dirs.clear();
            self.release();
            // Just before the renames: a block renamed into a leaf whose lock is gone could
            // overwrite another writer's update, or be overwritten by it.
            if let Some(e) = self.unheld(&locks) {
                self.loss.report(&e, writes.len());
                for w in writes {
                    w.discard();
                }
                drop(locks);
                self.hold(done);
                return;
            }
            let mut failed = false;
            for w in writes {
                if failed {
                    w.discard();
                    continue;
                }
                match w.publish() {
                    Ok(leaf) => {
                        self.unsettled_dirs
                            .insert(leaf.parent().map(PathBuf::from).unwrap_or(leaf));
                    }
                    Err(e) => {
                        tracing::error!("renaming a block into place: {e}");
                        failed = true;
                    }
                }
            }
            drop(locks);
            if failed {
                self.hold(done);
                return;
            }
        }
        self.unsettled.extend(done);
        self.unsettled_dirs.extend(settle_dirs);
    }

    /// Why the batch's locks cannot be trusted, if they cannot: a lock lost earlier in this
    /// process (nothing is published after one), else the first lock found not held.
    fn unheld(&self, locks: &[LeafLock]) -> Option<LockError> {
        if let Some(path) = self.loss.lost() {
            return Some(LockError::Lost { path: path.into() });
        }
        LeafLock::verify_all(locks).err()
    }

    /// Makes the earlier batches' renames durable, then settles their uploads.
    fn settle(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        let dirs = std::mem::take(&mut self.unsettled_dirs);
        match self.devices.sync(dirs.iter().map(PathBuf::as_path)) {
            Ok(()) => self.release(),
            Err(e) => {
                tracing::error!("syncing the store: {e}");
                let unsettled = std::mem::take(&mut self.unsettled);
                self.hold(unsettled);
            }
        }
    }

    /// Settles `unsettled`: their results are durable.
    fn release(&mut self) {
        let mut slots = Vec::new();
        let mut inputs = Vec::new();
        for s in std::mem::take(&mut self.unsettled) {
            match s {
                Settle::File(name) => {
                    if let Err(e) = self.queue.delete(&name) {
                        tracing::error!("deleting a processed queue file: {e}");
                    }
                    inputs.push(name);
                }
                Settle::Journal(slot, name) => {
                    slots.push(slot);
                    inputs.extend(name);
                }
            }
        }
        // A batch of send-queue files alone (proxy uploads) has slots but no input names.
        if !inputs.is_empty() || !slots.is_empty() {
            let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
            self.journal.settle(&slots, &names);
        }
    }

    /// Keeps uploads whose results are not known to be durable for the next start: queue
    /// files stay, journal segments keep them.
    fn hold(&mut self, uploads: Vec<Settle>) {
        let slots: Vec<Slot> = uploads
            .iter()
            .filter_map(|s| match s {
                Settle::Journal(slot, _) => Some(*slot),
                Settle::File(_) => None,
            })
            .collect();
        self.journal.hold(&slots);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::Kind;
    use crate::store::tree::Tree;

    const K: &str = "544E911BCEC185F8E09CC5AC8956E1342FE75EA1";
    const K2: &str = "9A0B911BCEC185F8E09CC5AC8956E1342FE75EA1";

    struct Setup {
        dir: tempfile::TempDir,
        tree: Tree,
        journal: Arc<Journal>,
        loss: Arc<LockLoss>,
        publisher: Publisher,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path().join("store"));
        std::fs::create_dir(dir.path().join("inputqueue")).unwrap();
        std::fs::create_dir(tree.root()).unwrap();
        let (journal, _) = Journal::open(&dir.path().join("journal")).unwrap();
        let loss = Arc::<LockLoss>::default();
        let queue = Queue::new(dir.path().join("inputqueue"));
        let publisher = Publisher::start(journal.clone(), queue, loss.clone()).unwrap();
        Setup {
            dir,
            tree,
            journal,
            loss,
            publisher,
        }
    }

    /// One block for `key` in its temporary file, under its leaf lock, settling one journal
    /// entry; the lock dropped first (as a file system losing it) when `lose`.
    fn batch(s: &Setup, key: &str, lose: bool) -> (Batch, String) {
        s.tree.ensure_leaf(key).unwrap();
        let lock = LeafLock::acquire(&s.tree.lock_path(key)).unwrap();
        if lose {
            lock.drop_lock_for_test();
        }
        let upload = format!("upload for {key}");
        let (name, slot) = s
            .journal
            .append(&[(Kind::Input, upload.as_bytes())])
            .unwrap()
            .remove(0);
        let w = s
            .tree
            .write_temp_in_leaf(key, &s.tree.temp_path(key), b"new")
            .unwrap();
        let b = Batch {
            writes: vec![w],
            write_dirs: [s.tree.root().join(&key[0..2])].into(),
            locks: vec![lock],
            done: vec![Settle::Journal(slot, Some(name.clone()))],
            settle_dirs: BTreeSet::new(),
        };
        (b, name)
    }

    fn leaf_names(s: &Setup, key: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(s.tree.leaf_dir(key))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_batch_under_held_locks_is_published_and_settled() {
        let s = setup();
        let (b, name) = batch(&s, K, false);
        s.publisher.publish(b);
        s.publisher.flush();
        assert_eq!(s.tree.read(K).unwrap().as_deref(), Some(&b"new"[..]));
        assert!(!s.journal.is_pending(&name));
        assert!(s.loss.lost().is_none());
    }

    #[test]
    fn a_batch_whose_lock_was_lost_is_not_published_and_nothing_after_it() {
        let s = setup();
        let (b, first) = batch(&s, K, true);
        s.publisher.publish(b);
        s.publisher.flush();
        // Nothing renamed into the leaf, the temporary file gone, the upload still queued.
        assert_eq!(s.tree.read(K).unwrap(), None);
        assert_eq!(leaf_names(&s, K), vec!["LOCKFILE".to_string()]);
        assert!(s.journal.is_pending(&first));
        assert_eq!(s.loss.lost(), Some(s.tree.lock_path(K).as_path()));
        // A later batch whose own lock is fine is not published either.
        let (b, second) = batch(&s, K2, false);
        s.publisher.publish(b);
        s.publisher.flush();
        assert_eq!(s.tree.read(K2).unwrap(), None);
        assert_eq!(leaf_names(&s, K2), vec!["LOCKFILE".to_string()]);
        assert!(s.journal.is_pending(&second));
        // The next start finds both uploads again.
        let Setup {
            dir,
            journal,
            publisher,
            ..
        } = s;
        drop(publisher);
        drop(journal);
        let (_, recovered) = Journal::open(&dir.path().join("journal")).unwrap();
        let names: Vec<&str> = recovered.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec![first.as_str(), second.as_str()]);
    }
}
