//! The store worker's publisher: makes a batch's results durable and visible, so that the
//! worker can merge the next batch meanwhile (the `syncfs` is I/O wait, and this way it
//! overlaps with the worker's CPU work instead of stalling it).
//!
//! For each batch, in order: one `syncfs` per file system covers the batch's temporary
//! files and the renames of the batch before it; then the temporary files are renamed over
//! their blocks and the leaf locks released; then the earlier batch's uploads are settled
//! (journal entries released, leftover queue files deleted), since that sync made their
//! renames durable. When no batch comes for a while, a sync of its own settles the last one.
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
use crate::store::lock::LeafLock;
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
    pub fn start(journal: Arc<Journal>, queue: Queue) -> std::io::Result<Publisher> {
        let (tx, rx) = mpsc::sync_channel(0);
        let mut state = State {
            journal,
            queue,
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
