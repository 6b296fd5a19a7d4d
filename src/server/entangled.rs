//! The entangled store (PROTOCOL.md §11): the tree `<home>/entangled/` of DHT value files,
//! each the six DHT header lines (`Source: entangled` … `Data: <n>`) and then the value.
//!
//! There is no DHT node here yet, so this node behaves as an Entangled node with no
//! contacts: its iterative store stores on itself (the original does so with fewer than k
//! contacts), and its iterative find-value finds only what it holds. [`Entangled::publish`]
//! and [`Entangled::find_value`] are the two places a DHT node plugs in to.

use std::path::PathBuf;

use rand::Rng;

use crate::store::tree::Tree;

/// The DHT header lines of a value file, before the value.
pub const HEADER_LINES: usize = 6;

/// The entangled tree and this node's identity.
#[derive(Debug, Clone)]
pub struct Entangled {
    tree: Tree,
    /// This node's id: random at every start, as the original's (its saved state is never
    /// read back, PROTOCOL.md §11).
    node_id: [u8; 20],
}

impl Entangled {
    pub fn new(root: impl Into<PathBuf>) -> Entangled {
        Entangled {
            tree: Tree::new(root),
            node_id: rand::thread_rng().gen(),
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// GET ENTANGLED's lookup: the value stored under `key` (a clean key), as the DHT's
    /// find-value returns it. Without a DHT node, only this node's tree is asked (the
    /// original also falls back to its own tree when the network has no copy).
    pub async fn find_value(&self, key: &str) -> Option<Vec<u8>> {
        match self.tree.read(key) {
            Ok(file) => file.map(|f| value_of(&f).to_vec()),
            Err(e) => {
                tracing::error!("reading an entangled value: {e}");
                None
            }
        }
    }

    /// The DHT's iterative store of a validated outgoing value. A node that stores on itself
    /// hands its own store a value file published now by this node; that file is returned,
    /// to be merged into the tree as an incoming DHT store is (PROTOCOL.md §6.2).
    pub fn publish(&self, value: &[u8]) -> Vec<u8> {
        let now = chrono::Utc::now().timestamp();
        value_file(value, now, now, &self.node_id)
    }
}

/// A value file: the six DHT header lines, then the value (PROTOCOL.md §11).
pub fn value_file(
    value: &[u8],
    last_published: i64,
    originally_published: i64,
    publisher: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "Source: entangled\nLastPublished: {last_published}\n\
         OriginallyPublished: {originally_published}\nOriginalPublisherID: {}\n\
         DataType: string\nData: {}\n",
        hex::encode(publisher),
        value.len()
    )
    .into_bytes();
    out.extend_from_slice(value);
    out
}

/// An `entangled-incoming` queue file (PROTOCOL.md §6.1), as the original's store writes
/// one for a DHT store into this node (entangled_store.py).
pub fn incoming_file(
    key: &str,
    value: &[u8],
    last_published: i64,
    originally_published: i64,
    publisher: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "StoreType: entangled-incoming\nStoreKeyid: {}\n",
        key.to_ascii_lowercase()
    )
    .into_bytes();
    out.extend(value_file(
        value,
        last_published,
        originally_published,
        publisher,
    ));
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
        let f = incoming_file("AB", b"Type: x\nData: 2\nhi", 5, 4, &[0xab, 1]);
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(text.starts_with(
            "StoreType: entangled-incoming\nStoreKeyid: ab\nSource: entangled\nLastPublished: 5\n\
             OriginallyPublished: 4\nOriginalPublisherID: ab01\nDataType: string\nData: 18\n"
        ));
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
