//! The values a node holds, in the entangled tree's value files (docs/protocol.md §11): the lines
//! `Source: entangled`, `LastPublished: <int>`, `OriginallyPublished: <int>`,
//! `OriginalPublisherID: <hex>`, `DataType: string`, `Data: <n>`, then the value bytes. A
//! reader takes everything after the `Data:` line, as the original does (§14 #14).
//!
//! The node reaches its values through [`Values`]: [`TreeValues`] keeps them in such a tree
//! directly (a stand-alone node); a store server routes a peer's store through its own
//! validation instead, and reads the same tree. Files of `DataType: pickle` (the original's
//! own `nodeState`) are never read.

use std::path::{Path, PathBuf};

use super::Id;
use crate::store::lock::LeafLock;
use crate::store::tree::Tree;
use crate::store::StoreError;

/// Bookkeeping of one stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Unix seconds when this node last received (or republished) it.
    pub last_published: i64,
    /// Unix seconds of the first publication (the sender's now − age).
    pub originally_published: i64,
    pub publisher: Id,
}

/// A value file (§11) for `value`.
pub fn value_file(value: &[u8], meta: &Meta) -> Vec<u8> {
    let mut out = format!(
        "Source: entangled\nLastPublished: {}\nOriginallyPublished: {}\n\
         OriginalPublisherID: {}\nDataType: string\nData: {}\n",
        meta.last_published,
        meta.originally_published,
        hex::encode(meta.publisher),
        value.len()
    )
    .into_bytes();
    out.extend_from_slice(value);
    out
}

/// The metadata and value of a value file; `None` for a pickled or malformed file.
pub fn parse_value_file(file: &[u8]) -> Option<(Meta, &[u8])> {
    let mut last = None;
    let mut orig = None;
    let mut publisher = None;
    let mut rest = file;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[nl + 1..];
        let text = std::str::from_utf8(line).ok();
        let field = |p: &str| text.and_then(|t| t.strip_prefix(p));
        if let Some(v) = field("LastPublished: ") {
            last = v.trim().parse().ok();
        } else if let Some(v) = field("OriginallyPublished: ") {
            orig = v.trim().parse().ok();
        } else if let Some(v) = field("OriginalPublisherID: ") {
            publisher = hex::decode(v.trim())
                .ok()
                .and_then(|b| Id::try_from(b.as_slice()).ok());
        } else if line.starts_with(b"DataType: pickle") {
            return None;
        } else if line.starts_with(b"Data: ") {
            let meta = Meta {
                last_published: last?,
                originally_published: orig?,
                publisher: publisher?,
            };
            return Some((meta, rest));
        }
    }
}

/// Where a node keeps the values peers store into it.
pub trait Values: Send + Sync + 'static {
    /// The value under `key`, without its header lines.
    fn get(&self, key: &Id) -> Option<Vec<u8>>;
    /// A store: from a peer, from this node's own publish, or a republish.
    fn put(&self, key: &Id, value: &[u8], meta: Meta);
    /// Up to `max` stored keys with their metadata (for republishing).
    fn entries(&self, max: usize) -> Vec<(Id, Meta)>;
    /// Drops an expired value. A store server keeps its tree (the original's file store
    /// ignores deletes; storutil prunes it), so its implementation does nothing.
    fn expire(&self, key: &Id);
}

/// Values in a tree of value files under `root`, written atomically under the leaf lock.
#[derive(Debug, Clone)]
pub struct TreeValues {
    tree: Tree,
}

fn key_hex(key: &Id) -> String {
    hex::encode_upper(key)
}

impl TreeValues {
    pub fn new(root: impl Into<PathBuf>) -> Result<TreeValues, StoreError> {
        let root = root.into();
        crate::store::ensure_dir(&root)?;
        Ok(TreeValues {
            tree: Tree::new(root),
        })
    }

    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    /// The value file under `key`, as stored.
    pub fn file(&self, key: &Id) -> Option<Vec<u8>> {
        match self.tree.read(&key_hex(key)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("reading a DHT value: {e}");
                None
            }
        }
    }

    fn write(&self, key: &Id, value: &[u8], meta: &Meta) -> Result<(), StoreError> {
        let k = key_hex(key);
        self.tree.ensure_leaf(&k)?;
        let lock = LeafLock::acquire(&self.tree.lock_path(&k))?;
        let file = value_file(value, meta);
        // Not into a leaf whose lock a network file system lost meanwhile.
        lock.verify()?;
        self.tree.write_atomic(&k, &file)
    }
}

/// The 40-hex-digit names of the value files under a tree root, at most `max`.
pub fn tree_keys(root: &Path, max: usize) -> Vec<Id> {
    let mut keys = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for l1 in dirs(root) {
        for l2 in dirs(&l1) {
            for f in dirs(&l2) {
                let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.len() != 40 {
                    continue;
                }
                if let Some(id) = hex::decode(name)
                    .ok()
                    .and_then(|b| Id::try_from(b.as_slice()).ok())
                {
                    keys.push(id);
                    if keys.len() >= max {
                        return keys;
                    }
                }
            }
        }
    }
    keys
}

impl Values for TreeValues {
    fn get(&self, key: &Id) -> Option<Vec<u8>> {
        let f = self.file(key)?;
        parse_value_file(&f).map(|(_, v)| v.to_vec())
    }

    fn put(&self, key: &Id, value: &[u8], meta: Meta) {
        if let Err(e) = self.write(key, value, &meta) {
            tracing::warn!("storing a DHT value: {e}");
        }
    }

    fn entries(&self, max: usize) -> Vec<(Id, Meta)> {
        tree_keys(self.tree.root(), max)
            .into_iter()
            .filter_map(|k| {
                let f = self.file(&k)?;
                parse_value_file(&f).map(|(m, _)| (k, m))
            })
            .collect()
    }

    fn expire(&self, key: &Id) {
        let path = self.tree.block_path(&key_hex(key));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_files_as_the_original_writes_them() {
        let meta = Meta {
            last_published: 1433156400,
            originally_published: 1433156000,
            publisher: [0xab; 20],
        };
        let f = value_file(b"Type: data\nxy", &meta);
        assert_eq!(
            f,
            format!(
                "Source: entangled\nLastPublished: 1433156400\nOriginallyPublished: 1433156000\n\
                 OriginalPublisherID: {}\nDataType: string\nData: 13\nType: data\nxy",
                "ab".repeat(20)
            )
            .into_bytes()
        );
        let (m, v) = parse_value_file(&f).unwrap();
        assert_eq!((m, v), (meta, &b"Type: data\nxy"[..]));
        let pickled = b"Source: entangled\nLastPublished: 1\nOriginallyPublished: 1\nOriginalPublisherID: 00\nDataType: pickle\nData: 3\n(d.";
        assert_eq!(parse_value_file(pickled), None);
    }

    #[test]
    fn tree_values_store_list_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let v = TreeValues::new(dir.path().join("entangled")).unwrap();
        let meta = Meta {
            last_published: 2,
            originally_published: 1,
            publisher: [1; 20],
        };
        v.put(&[0x5a; 20], b"value", meta);
        assert_eq!(v.get(&[0x5a; 20]).as_deref(), Some(&b"value"[..]));
        assert_eq!(v.entries(10), vec![([0x5a; 20], meta)]);
        assert!(dir
            .path()
            .join("entangled/5A/5A")
            .join("5A".repeat(20))
            .is_file());
        v.expire(&[0x5a; 20]);
        assert_eq!(v.get(&[0x5a; 20]), None);
    }
}
