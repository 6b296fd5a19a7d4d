//! The leaves known to exist, and a helper thread that makes the leaves of queued blocks
//! ahead of the worker.
//!
//! In a young store nearly every block lands in a leaf that does not exist yet, and creating
//! the two folder levels and the `LOCKFILE` is about a third of the worker's time per block
//! (a `perf` profile under a 16-connection store load). The committer hands each acknowledged
//! block's key to the helper, which creates the leaf and its `LOCKFILE` (both idempotent, as
//! when the original's store thread meets them) while the worker merges earlier blocks; the
//! worker then only opens and locks. The helper never takes a lock and never touches a block,
//! so the worker still processes blocks one at a time in FIFO order.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::tree::Tree;

/// Leaves (first four hex digits of their keys) this process knows to exist with their
/// `LOCKFILE`; shared by the helper and the worker. The server never deletes a leaf.
#[derive(Debug, Default)]
pub struct Known(Mutex<HashSet<[u8; 4]>>);

fn leaf_of(key: &str) -> Option<[u8; 4]> {
    key.as_bytes().get(0..4)?.try_into().ok()
}

impl Known {
    pub fn contains(&self, key: &str) -> bool {
        leaf_of(key).is_some_and(|l| self.lock().contains(&l))
    }

    pub fn insert(&self, key: &str) {
        if let Some(l) = leaf_of(key) {
            self.lock().insert(l);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Some(l) = leaf_of(key) {
            self.lock().remove(&l);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 4]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The committer's handle: keys of blocks that will reach the worker.
#[derive(Clone)]
pub struct Preparer {
    tx: mpsc::Sender<String>,
}

impl Preparer {
    /// Starts the helper thread; it ends when every `Preparer` is dropped.
    pub fn start(tree: Tree, known: Arc<Known>) -> std::io::Result<(Preparer, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<String>();
        let handle = std::thread::Builder::new()
            .name("store-leaves".into())
            .spawn(move || {
                for key in rx {
                    prepare(&tree, &known, &key);
                }
            })?;
        Ok((Preparer { tx }, handle))
    }

    /// Asks for `key`'s leaf (40 hex digits, as the worker requires; anything else is
    /// ignored).
    pub fn ask(&self, key: &str) {
        if key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = self.tx.send(key.to_ascii_uppercase());
        }
    }
}

fn prepare(tree: &Tree, known: &Known, key: &str) {
    if known.contains(key) {
        return;
    }
    // Failures are left to the worker, which makes the leaf itself and reports them.
    let made = tree.ensure_leaf(key).is_ok()
        && OpenOptions::new()
            .append(true)
            .create(true)
            .open(tree.lock_path(key))
            .is_ok();
    if made {
        known.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_the_leaf_and_its_lockfile_once() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        let known = Arc::new(Known::default());
        let key = "544E911BCEC185F8E09CC5AC8956E1342FE75EA1";
        let (p, handle) = Preparer::start(tree.clone(), known.clone()).unwrap();
        p.ask(key);
        p.ask("../../etc");
        drop(p);
        handle.join().unwrap();
        assert!(tree.lock_path(key).is_file());
        assert!(known.contains(key));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
