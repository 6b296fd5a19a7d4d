//! The input-queue committer (PROTOCOL.md §6.1, with durability): sessions hand it queue
//! files; it writes every file that has arrived since its last round, makes them all durable
//! with one round of syncs (a group commit: the blocks of several connections share one
//! directory fsync and one journal commit), passes their names and contents to the worker
//! (which so need not read them back), and only then
//! lets the sessions answer `DONE`. A block bound for the replication peer brings its
//! `sendqueue/` copy (PROTOCOL.md §3.1), made durable by the same round of syncs.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::server::worker::Job;
use crate::store::queue::{name_of, Queue};
use crate::store::sync_filesystems;

/// Most queue files made durable by one group commit.
const MAX_BATCH: usize = 256;

/// One queue file to make durable; the reply says whether it is (then `DONE` may be sent).
pub struct Request {
    pub content: Vec<u8>,
    /// The `replicate` send-queue file to write with it (when `replpeer` is set).
    pub replicate: Option<Vec<u8>>,
    pub reply: oneshot::Sender<bool>,
}

/// Handle for the sessions; dropping every clone stops the committer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
}

impl Ingest {
    /// Starts the committer thread; names of durable files go to `worker` in commit order.
    pub fn start(
        queue: Queue,
        sendqueue: Queue,
        worker: mpsc::Sender<Job>,
    ) -> std::io::Result<(Ingest, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Request>();
        let handle = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || run(&queue, &sendqueue, rx, worker))?;
        Ok((Ingest { tx }, handle))
    }

    /// Queues `content`; resolves to true once it is durable in `inputqueue/`.
    /// With `replicate`, that send-queue file is durable too.
    pub async fn submit(&self, content: Vec<u8>, replicate: Option<Vec<u8>>) -> bool {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            content,
            replicate,
            reply,
        };
        if self.tx.send(req).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

fn run(queue: &Queue, sendqueue: &Queue, rx: mpsc::Receiver<Request>, worker: mpsc::Sender<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        commit(queue, sendqueue, batch, &worker);
    }
}

fn commit(queue: &Queue, sendqueue: &Queue, mut batch: Vec<Request>, worker: &mpsc::Sender<Job>) {
    let names: Vec<String> = batch.iter().map(|r| name_of(&r.content)).collect();
    // Send-queue copies first: a request whose copy could not be written is not acknowledged.
    let mut peer_files = Vec::new();
    let mut peer_names = Vec::new();
    let mut peer_ok: Vec<bool> = Vec::with_capacity(batch.len());
    for req in &batch {
        let Some(rep) = &req.replicate else {
            peer_ok.push(true);
            continue;
        };
        let name = name_of(rep);
        // An existing name is never rewritten (PROTOCOL.md §10.1); it is durable already or
        // belongs to this batch.
        if sendqueue.exists(&name) {
            peer_ok.push(true);
            continue;
        }
        match sendqueue.write_unsynced(&name, rep) {
            Ok(f) => {
                peer_files.push(f);
                peer_names.push(name);
                peer_ok.push(true);
            }
            Err(e) => {
                tracing::error!("writing a send-queue file: {e}");
                peer_ok.push(false);
            }
        }
    }
    let mut files = Vec::new();
    let mut new_names = Vec::new();
    // Per distinct name: written (or already present) without error.
    let mut fate: HashMap<&str, bool> = HashMap::new();
    for (req, name) in batch.iter_mut().zip(&names) {
        if fate.contains_key(name.as_str()) {
            continue;
        }
        // An identical file already queued (and durable, since only durable files are ever
        // acknowledged) is not written or queued again (PROTOCOL.md §6.1).
        if queue.exists(name) {
            fate.insert(name, true);
            continue;
        }
        match queue.write_unsynced(name, &req.content) {
            Ok(f) => {
                files.push(f);
                // The worker gets the bytes with the name; the reply needs only the name.
                new_names.push((name.clone(), std::mem::take(&mut req.content)));
                fate.insert(name, true);
            }
            Err(e) => {
                tracing::error!("writing a queue file: {e}");
                fate.insert(name, false);
            }
        }
    }
    // One syncfs per file system covers both queues (normally one: both live in the home).
    let mut dirs = Vec::new();
    if !files.is_empty() {
        dirs.push(queue.dir());
    }
    if !peer_files.is_empty() {
        dirs.push(sendqueue.dir());
    }
    let durable = match sync_filesystems(&dirs) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("making queue files durable: {e}");
            false
        }
    };
    drop(files);
    drop(peer_files);
    if !durable {
        for name in peer_names {
            let _ = sendqueue.delete(&name);
        }
    }
    for (name, content) in new_names {
        if durable {
            let _ = worker.send(Job::Block(name, Some(content)));
        } else {
            // Never acknowledged: remove it, so that a later identical upload is written anew.
            let _ = queue.delete(&name);
        }
    }
    let replies: Vec<bool> = names
        .iter()
        .zip(&peer_ok)
        .map(|(n, &p)| durable && p && fate.get(n.as_str()).copied().unwrap_or(false))
        .collect();
    for (req, good) in batch.into_iter().zip(replies) {
        let _ = req.reply.send(good);
    }
}
