//! The built-in server's DHT values ([`crate::dht::store::Values`]): read from the
//! entangled tree; a peer's store into this node goes through the ingest as an
//! `entangled-incoming` upload (docs/protocol.md §6.1, §11), validated by the worker.

use crate::dht::store::{parse_value_file, tree_keys, Meta, Values};
use crate::dht::Id;
use crate::server::entangled::incoming_file;
use crate::server::ingest::Ingest;
use crate::store::tree::Tree;

/// A server's DHT values: read from the entangled tree; a peer's store goes through the
/// ingest as an `entangled-incoming` upload, validated by the worker. The tree is never
/// pruned by the node (the original's file store ignores deletes; storutil prunes).
pub struct ServerValues {
    tree: Tree,
    /// Taken away at shutdown ([`ServerValues::close`]).
    ingest: std::sync::Mutex<Option<Ingest>>,
    rt: tokio::runtime::Handle,
}

impl ServerValues {
    /// `rt` is the runtime the ingest's replies are awaited on (the network thread's).
    pub fn new(tree: Tree, ingest: Ingest, rt: tokio::runtime::Handle) -> ServerValues {
        ServerValues {
            tree,
            ingest: std::sync::Mutex::new(Some(ingest)),
            rt,
        }
    }

    /// Lets go of the ingest (the server is stopping); later stores are refused.
    pub fn close(&self) {
        self.ingest.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Values for ServerValues {
    fn get(&self, key: &Id) -> Option<Vec<u8>> {
        let file = self.tree.read(&hex::encode_upper(key)).ok()??;
        parse_value_file(&file).map(|(_, v)| v.to_vec())
    }

    fn put(&self, key: &Id, value: &[u8], meta: Meta) {
        let k = hex::encode_upper(key);
        let content = incoming_file(&k, value, &meta);
        let ingest = self
            .ingest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(ingest) = ingest else {
            return;
        };
        // Called on a blocking thread: wait until the upload is durable.
        if !self.rt.block_on(ingest.submit(&k, content, None)) {
            tracing::warn!(key = %k, "a DHT store could not be queued");
        }
    }

    fn entries(&self, max: usize) -> Vec<(Id, Meta)> {
        tree_keys(self.tree.root(), max)
            .into_iter()
            .filter_map(|k| {
                let file = self.tree.read(&hex::encode_upper(k)).ok()??;
                parse_value_file(&file).map(|(m, _)| (k, m))
            })
            .collect()
    }

    fn expire(&self, _key: &Id) {}
}
