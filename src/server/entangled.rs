//! The entangled store (docs/protocol.md §11): the tree `<home>/entangled/` of DHT value files,
//! each the six DHT header lines (`Source: entangled` … `Data: <n>`) and then the value, and
//! the instance's DHT node ([`crate::dht`]) on UDP `eport`.
//!
//! GET ENTANGLED looks in the tree first and asks the DHT when the value is not there;
//! STORE ENTANGLED's validated value is stored here and published to the DHT. A peer's DHT
//! store into this node becomes an `entangled-incoming` upload (`server::dht_values`), made
//! durable by the ingest and validated by the worker as the original's store thread does
//! (§6.2); the node answers `OK` once it is durable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rand::Rng;

use crate::dht::store::{value_file, Meta, Values};
use crate::dht::{self, Id};
use crate::store::tree::Tree;

/// The DHT header lines of a value file, before the value.
pub const HEADER_LINES: usize = 6;

/// The entangled tree and this instance's DHT node, once started.
#[derive(Clone)]
pub struct Entangled {
    tree: Tree,
    dht: Arc<OnceLock<dht::Handle>>,
    /// The publisher id until the node is up (its id from then on).
    fallback_id: Id,
}

impl std::fmt::Debug for Entangled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entangled")
            .field("tree", &self.tree)
            .field("dht", &self.dht.get().map(|d| d.local_addr()))
            .finish()
    }
}

/// A 40-hex-digit key as a DHT key.
fn dht_key(key: &str) -> Option<Id> {
    hex::decode(key)
        .ok()
        .and_then(|b| Id::try_from(b.as_slice()).ok())
}

impl Entangled {
    pub fn new(root: impl Into<PathBuf>) -> Entangled {
        Entangled {
            tree: Tree::new(root),
            dht: Arc::new(OnceLock::new()),
            fallback_id: rand::thread_rng().gen(),
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Plugs the running DHT node in (once).
    pub fn attach(&self, node: dht::Handle) {
        let _ = self.dht.set(node);
    }

    pub fn dht(&self) -> Option<&dht::Handle> {
        self.dht.get()
    }

    fn node_id(&self) -> Id {
        self.dht.get().map_or(self.fallback_id, dht::Handle::id)
    }

    /// GET ENTANGLED's lookup: the value stored under `key` (a clean key). The tree first;
    /// when it has no copy, the DHT (bounded by the node's lookup timeout).
    pub async fn find_value(&self, key: &str) -> Option<Vec<u8>> {
        match self.tree.read(key) {
            Ok(Some(file)) => return Some(value_of(&file).to_vec()),
            Ok(None) => {}
            Err(e) => tracing::error!("reading an entangled value: {e}"),
        }
        let node = self.dht.get()?;
        node.find_value(dht_key(key)?).await
    }

    /// The DHT's iterative store of a validated outgoing value (docs/protocol.md §6.2): handed to
    /// the DHT node, which stores it on the k closest nodes in the background, this node
    /// included when it is among them (its store comes back as an incoming upload, as in
    /// the original). Without a node, this node's own copy is returned instead, to be
    /// merged into the tree as an incoming DHT store is.
    pub fn publish(&self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        if let (Some(node), Some(k)) = (self.dht.get(), dht_key(key)) {
            node.publish_detached(k, value.to_vec());
            return None;
        }
        let now = chrono::Utc::now().timestamp();
        let meta = Meta {
            last_published: now,
            originally_published: now,
            publisher: self.node_id(),
        };
        Some(value_file(value, &meta))
    }
}

/// Starts the instance's DHT node on `bind` (`listen_address`:`eport`), its id and
/// contacts kept in `state`, and joins through `knode` in the background. Runs on the
/// current runtime.
pub async fn start_node(
    bind: SocketAddr,
    state: PathBuf,
    knode: Vec<(String, u16)>,
    values: Arc<dyn Values>,
) -> Result<dht::Handle, dht::DhtError> {
    let mut config = dht::Config::new(bind);
    config.state_path = Some(state);
    let node = dht::start(config, values).await?;
    let joining = node.clone();
    tokio::spawn(async move {
        let mut seeds = Vec::new();
        for (host, port) in knode {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => seeds.extend(addrs),
                Err(e) => tracing::warn!("knode {host}:{port}: {e}"),
            }
        }
        let n = joining.join(&seeds).await;
        tracing::info!("DHT node joined with {n} contacts");
    });
    Ok(node)
}

/// An `entangled-incoming` queue file (docs/protocol.md §6.1), as the original's store writes
/// one for a DHT store into this node (entangled_store.py): the key, then the value file.
pub fn incoming_file(key: &str, value: &[u8], meta: &Meta) -> Vec<u8> {
    let mut out = format!(
        "StoreType: entangled-incoming\nStoreKeyid: {}\n",
        key.to_ascii_lowercase()
    )
    .into_bytes();
    out.extend(value_file(value, meta));
    out
}

/// Splits a value file (or the body of an `entangled-incoming` queue file) into its header
/// lines, each with its LF, and the value: at the first [`HEADER_LINES`] LFs, as the
/// original's `split('\n', 6)`. With fewer LFs, the last piece is the value.
pub fn split_headers(file: &[u8]) -> (&[u8], &[u8]) {
    let mut cut = 0;
    for _ in 0..HEADER_LINES {
        match file[cut..].iter().position(|&b| b == b'\n') {
            Some(i) => cut += i + 1,
            None => break,
        }
    }
    file.split_at(cut)
}

/// The value of a value file: everything after its first line starting with `Data: `
/// (nothing if it has none), as the original's store reads it.
pub fn value_of(file: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < file.len() {
        let end = file[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(file.len(), |i| pos + i + 1);
        let is_data = file[pos..end].starts_with(b"Data: ");
        pos = end;
        if is_data {
            return &file[pos..];
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_files() {
        let meta = Meta {
            last_published: 5,
            originally_published: 4,
            publisher: [0xab; 20],
        };
        let f = incoming_file("AB", b"Type: x\nData: 2\nhi", &meta);
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(text.starts_with(&format!(
            "StoreType: entangled-incoming\nStoreKeyid: ab\nSource: entangled\nLastPublished: 5\n\
             OriginallyPublished: 4\nOriginalPublisherID: {}\nDataType: string\nData: 18\n",
            "ab".repeat(20)
        )));
        let body = &f[text.find("Source").unwrap()..];
        let (headers, value) = split_headers(body);
        assert_eq!(value, b"Type: x\nData: 2\nhi");
        assert!(headers.ends_with(b"Data: 18\n"));
        assert_eq!(value_of(body), value);
        assert_eq!(value_of(b"Source: entangled\n"), b"");
    }

    #[test]
    fn short_files_split_as_python_does() {
        // "a\nb".split('\n', 6) == ['a', 'b']: header "a", value "b".
        assert_eq!(split_headers(b"a\nb"), (&b"a\n"[..], &b"b"[..]));
        assert_eq!(split_headers(b"a"), (&b""[..], &b"a"[..]));
        assert_eq!(split_headers(b""), (&b""[..], &b""[..]));
    }
}
