//! The input-queue committer (docs/protocol.md §6.1, with durability): sessions hand it uploads;
//! it appends every upload that has arrived since its last round to the input journal
//! (`store::journal`) and makes them all durable with one `fdatasync` (a group commit: the
//! blocks of several connections share one flush), passes them to the worker, and only then
//! lets the sessions answer `DONE`. A block bound for the replication peer brings its
//! `sendqueue/` copy (docs/protocol.md §3.1) as a journal entry of its own, in the same round (a
//! `STORE PROXY` upload is such an entry alone, §3.3);
//! the copy is also written into `sendqueue/` before `DONE`, so that the sender finds it
//! when the session ends, and the worker makes that file durable before releasing the entry.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::server::leaves::Preparer;
use crate::server::worker::Job;
use crate::store::journal::{digest, Journal, Kind, Sha};
use crate::store::queue::Queue;

/// A round smaller than this waits up to [`GATHER`] for more uploads: a flush costs about
/// the same for 2 blocks as for 16, and fewer flushes leave the disk to the store's syncs.
const GATHER_BELOW: usize = 8;
const GATHER: std::time::Duration = std::time::Duration::from_micros(200);

/// Most uploads made durable by one group commit.
const MAX_BATCH: usize = 256;

/// One upload to make durable; the reply says whether it is (then `DONE` may be sent).
pub struct Request {
    /// The input-queue entry (none for a `STORE PROXY` upload, which is only relayed).
    pub content: Option<Vec<u8>>,
    /// The block's key, for the leaf helper.
    pub key: String,
    /// The send-queue file to write with it: the `replicate` copy (when `replpeer` is set)
    /// or the `proxy` file (docs/protocol.md §10.1).
    pub send: Option<Vec<u8>>,
    pub reply: oneshot::Sender<bool>,
}

/// Handle for the sessions; dropping every clone stops the committer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
}

impl Ingest {
    /// Starts the committer thread; durable entries go to `worker` in commit order.
    pub fn start(
        journal: Arc<Journal>,
        sendqueue: Queue,
        worker: mpsc::Sender<Job>,
        leaves: Preparer,
    ) -> std::io::Result<(Ingest, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Request>();
        let handle = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || run(&journal, &sendqueue, rx, worker, leaves))?;
        Ok((Ingest { tx }, handle))
    }

    /// Queues `content`; resolves to true once it is durable in the input journal.
    /// With `replicate`, that send-queue copy is durable too.
    pub async fn submit(&self, key: &str, content: Vec<u8>, replicate: Option<Vec<u8>>) -> bool {
        self.request(key, Some(content), replicate).await
    }

    /// Queues a send-queue file alone (a proxy upload); resolves to true once it is durable.
    pub async fn submit_send(&self, key: &str, file: Vec<u8>) -> bool {
        self.request(key, None, Some(file)).await
    }

    async fn request(&self, key: &str, content: Option<Vec<u8>>, send: Option<Vec<u8>>) -> bool {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            content,
            key: key.to_string(),
            send,
            reply,
        };
        if self.tx.send(req).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

fn run(
    journal: &Journal,
    sendqueue: &Queue,
    rx: mpsc::Receiver<Request>,
    worker: mpsc::Sender<Job>,
    leaves: Preparer,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = std::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    // A lone upload goes at once: one connection must not wait for others.
                    if batch.len() < 2 || batch.len() >= GATHER_BELOW || left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
            }
        }
        commit(journal, sendqueue, batch, &worker, &leaves);
    }
}

fn commit(
    journal: &Journal,
    sendqueue: &Queue,
    batch: Vec<Request>,
    worker: &mpsc::Sender<Job>,
    leaves: &Preparer,
) {
    // An identical upload still waiting (in the journal, in this round, or as a file left
    // in inputqueue/) is not queued again (docs/protocol.md §6.1); it is answered like the first.
    let mut seen: HashSet<Sha> = HashSet::new();
    let mut entries: Vec<(Kind, Sha, &[u8])> = Vec::with_capacity(batch.len() * 2);
    for req in &batch {
        if let Some(content) = &req.content {
            let sha = digest(content);
            if seen.insert(sha) && !journal.is_pending(&hex::encode_upper(sha)) {
                entries.push((Kind::Input, sha, content));
                // Entangled uploads go to the entangled tree, not to a local-store leaf.
                if !content.starts_with(b"StoreType: entangled") {
                    leaves.ask(&req.key);
                }
            }
        }
        if let Some(rep) = &req.send {
            entries.push((Kind::Send, digest(rep), rep));
        }
    }
    let durable = match journal.append_digested(&entries) {
        Ok(written) => {
            for ((kind, sha, content), slot) in entries.iter().zip(written) {
                let name = hex::encode_upper(sha);
                let job = match kind {
                    Kind::Input => Job::Block(name, Some(content.to_vec()), Some(slot)),
                    Kind::Send => {
                        // Durable in the journal already; the file is for the sender. On
                        // failure the worker writes it.
                        match sendqueue.put_new(&name, content) {
                            Ok(()) => Job::Send(name, None, slot),
                            Err(e) => {
                                tracing::warn!("writing a send-queue file: {e}");
                                Job::Send(name, Some(content.to_vec()), slot)
                            }
                        }
                    }
                };
                let _ = worker.send(job);
            }
            true
        }
        Err(e) => {
            tracing::error!("making uploads durable in the input journal: {e}");
            false
        }
    };
    for req in batch {
        let _ = req.reply.send(durable);
    }
}
