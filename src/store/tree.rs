//! The local store tree (docs/protocol.md §9.2): `<root>/XX/YY/<KEY>`, one `LOCKFILE` per leaf.
//!
//! Reads take no lock. Writes replace a block atomically: the new bytes go to a temporary
//! file in the same leaf directory (a name that is not 40 characters long and starts with the
//! key's first four hex digits, so a storutil walk locks the same leaf), are made durable, and
//! are renamed over the block (docs/protocol.md §13 implementer note).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{clean_key, ensure_dir, sync_dir, StoreError};

/// Name of the lock file in every leaf directory.
pub const LOCKFILE: &str = "LOCKFILE";

#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

/// A block written to its temporary file, not yet visible under its key.
#[derive(Debug)]
pub struct PendingWrite {
    /// Kept open only when the caller syncs this one file ([`PendingWrite::sync`]).
    file: Option<File>,
    tmp: PathBuf,
    target: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Tree {
    pub fn new(root: impl Into<PathBuf>) -> Tree {
        Tree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The clean key, if it has the 40 hex digits a block key needs.
    pub fn key(key: &str) -> Option<String> {
        let c = clean_key(key);
        (c.len() == 40).then_some(c)
    }

    /// `<root>/XX/YY` for a clean key.
    pub fn leaf_dir(&self, clean: &str) -> PathBuf {
        self.root.join(&clean[0..2]).join(&clean[2..4])
    }

    /// `<root>/XX/YY/<KEY>` for a clean key.
    pub fn block_path(&self, clean: &str) -> PathBuf {
        self.leaf_dir(clean).join(clean)
    }

    pub fn lock_path(&self, clean: &str) -> PathBuf {
        self.leaf_dir(clean).join(LOCKFILE)
    }

    /// Creates both directory levels of a key's leaf, tolerating "already exists". The leaf
    /// is tried first: its level-1 folder usually exists, so one `mkdir` does.
    pub fn ensure_leaf(&self, clean: &str) -> Result<PathBuf, StoreError> {
        let leaf = self.leaf_dir(clean);
        match fs::create_dir(&leaf) {
            Ok(()) => return Ok(leaf),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return ensure_dir(&leaf).map(|()| leaf),
        }
        ensure_dir(&self.root.join(&clean[0..2]))?;
        ensure_dir(&leaf)?;
        Ok(leaf)
    }

    /// The stored block, without a lock; `None` when absent. Never creates directories.
    pub fn read(&self, clean: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.block_path(clean);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError { path, source: e }),
        }
    }

    /// A fresh temporary path in the key's leaf: `<first 4 hex digits>.<pid>.<n>.tmp`.
    pub fn temp_path(&self, clean: &str) -> PathBuf {
        let mut name = format!(
            "{}.{}.{}.tmp",
            &clean[0..4],
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        if name.len() == 40 {
            name.push('x');
        }
        self.leaf_dir(clean).join(name)
    }

    /// Writes `bytes` to a new temporary file in the key's leaf (created if needed). The
    /// caller makes it durable ([`PendingWrite::sync`]) and then publishes it
    /// ([`PendingWrite::publish`]) while holding the leaf lock.
    pub fn write_temp(&self, clean: &str, bytes: &[u8]) -> Result<PendingWrite, StoreError> {
        let tmp = self.temp_path(clean);
        self.write_temp_at(clean, &tmp, bytes)
    }

    /// As [`Tree::write_temp`], at a path from [`Tree::temp_path`].
    pub fn write_temp_at(
        &self,
        clean: &str,
        tmp: &Path,
        bytes: &[u8],
    ) -> Result<PendingWrite, StoreError> {
        self.ensure_leaf(clean)?;
        self.write_temp_file(clean, tmp, bytes, true)
    }

    /// As [`Tree::write_temp_at`], for a caller that knows the key's leaf exists (it holds
    /// the leaf lock): no `mkdir`/`stat` of the leaf. The file is closed once written (the
    /// caller makes a whole batch durable with `syncfs`), so that a batch holds no
    /// descriptor per block.
    pub fn write_temp_in_leaf(
        &self,
        clean: &str,
        tmp: &Path,
        bytes: &[u8],
    ) -> Result<PendingWrite, StoreError> {
        self.write_temp_file(clean, tmp, bytes, false)
    }

    fn write_temp_file(
        &self,
        clean: &str,
        tmp: &Path,
        bytes: &[u8],
        keep_open: bool,
    ) -> Result<PendingWrite, StoreError> {
        let leaf = self.leaf_dir(clean);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(StoreError::at(tmp))?;
        if let Err(e) = file.write_all(bytes) {
            let _ = fs::remove_file(tmp);
            return Err(StoreError {
                path: tmp.to_path_buf(),
                source: e,
            });
        }
        Ok(PendingWrite {
            file: keep_open.then_some(file),
            tmp: tmp.to_path_buf(),
            target: leaf.join(clean),
        })
    }

    /// Atomic, durable replacement of one block (temp file, fdatasync, rename, dir fsync).
    /// The caller holds the leaf lock.
    pub fn write_atomic(&self, clean: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let w = self.write_temp(clean, bytes)?;
        w.sync()?;
        let leaf = w.publish()?;
        sync_dir(&leaf)
    }
}

impl PendingWrite {
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Makes the temporary file's content durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let r = match &self.file {
            Some(f) => f.sync_data(),
            None => File::open(&self.tmp).and_then(|f| f.sync_data()),
        };
        r.map_err(StoreError::at(&self.tmp))
    }

    /// Renames the temporary file over the block; returns the leaf directory, which the caller
    /// fsyncs before relying on the rename.
    pub fn publish(self) -> Result<PathBuf, StoreError> {
        fs::rename(&self.tmp, &self.target).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            StoreError {
                path: self.target.clone(),
                source: e,
            }
        })?;
        Ok(self
            .target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default())
    }

    /// Removes the temporary file (the write is abandoned).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "544E911BCEC185F8E09CC5AC8956E1342FE75EA1";

    #[test]
    fn layout_and_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tree::new(dir.path());
        let k = Tree::key(&K.to_lowercase()).unwrap();
        assert_eq!(t.read(&k).unwrap(), None);
        assert!(!dir.path().join("54").exists(), "a read creates nothing");
        t.write_atomic(&k, b"one").unwrap();
        t.write_atomic(&k, b"two").unwrap();
        assert_eq!(t.read(&k).unwrap().as_deref(), Some(&b"two"[..]));
        let leaf: Vec<_> = fs::read_dir(dir.path().join("54/4E"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leaf, vec![K.to_string()], "no temp file left behind");
    }

    #[test]
    fn temp_names_are_not_block_names() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tree::new(dir.path());
        let w = t.write_temp(K, b"x").unwrap();
        let name = w
            .temp_path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(name.starts_with("544E"));
        assert_ne!(name.len(), 40);
        w.discard();
        assert!(Tree::key("../etc/passwd").is_none());
    }
}
