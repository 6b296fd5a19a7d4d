//! Flat queues (docs/protocol.md §9.4): a directory of files, each named by the upper-case hex
//! sha1 of its whole content.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use super::{clean_key, syncfs, StoreError};

#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// The queue name of `content`: upper-case hex sha1.
pub fn name_of(content: &[u8]) -> String {
    hex::encode_upper(Sha1::digest(content))
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Queue {
        Queue { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(clean_key(name))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Writes `content` under `name` (create/truncate, write) and returns the open file, so
    /// that the caller can make several files durable together ([`Queue::sync_all`]).
    /// The file is stamped with the precise current time: the sender takes files oldest first
    /// by modification time, and the kernel's own file times are coarser (one tick) than the
    /// gap between two writes — a file stamped by the kernel can look older than one stamped
    /// precisely a moment before it.
    pub fn write_unsynced(&self, name: &str, content: &[u8]) -> Result<File, StoreError> {
        let path = self.path(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(StoreError::at(&path))?;
        f.write_all(content).map_err(StoreError::at(&path))?;
        f.set_modified(std::time::SystemTime::now())
            .map_err(StoreError::at(&path))?;
        Ok(f)
    }

    /// Writes `content` under `name` unless that name exists (a queue file is never
    /// rewritten, docs/protocol.md §10.1), not synced.
    pub fn put_new(&self, name: &str, content: &[u8]) -> Result<(), StoreError> {
        if self.exists(name) {
            return Ok(());
        }
        self.write_unsynced(name, content).map(drop)
    }

    /// Makes written files and their directory entries durable: one `syncfs` of the queue's
    /// file system covers every file of a batch, however many (a group commit).
    pub fn sync_all(&self, files: &[File]) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        syncfs(&self.dir)
    }

    /// Writes `content` under `name` atomically — a temporary file (its name is not a queue
    /// name, so never listed), fsync, rename, directory fsync — with modification time
    /// `mtime` (else now). An existing `name` is replaced.
    pub fn install(
        &self,
        name: &str,
        content: &[u8],
        mtime: Option<std::time::SystemTime>,
    ) -> Result<(), StoreError> {
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{}.tmp", clean_key(name)));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(content)?;
            f.set_modified(mtime.unwrap_or_else(std::time::SystemTime::now))?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(StoreError::at(&path))
    }

    /// Rewrites an existing file atomically, keeping its name and modification time (its
    /// place in the sender's order, its age).
    pub fn replace(&self, name: &str, content: &[u8]) -> Result<(), StoreError> {
        let mtime = fs::metadata(self.path(name))
            .and_then(|m| m.modified())
            .ok();
        self.install(name, content, mtime)
    }

    /// Names of the regular files with 40-character names, in directory order.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(StoreError::at(&self.dir))? {
            let e = e.map_err(StoreError::at(&self.dir))?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.len() == 40 && e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The file's content; `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError { path, source: e }),
        }
    }

    /// Deletes a file; a missing one is not an error.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError { path, source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_list_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        let name = name_of(b"hello");
        assert_eq!(name, "AAF4C61DDCC5E8A2DABEDE0F3B482CD9AEA9434D");
        let f = q.write_unsynced(&name, b"hello").unwrap();
        q.sync_all(&[f]).unwrap();
        fs::write(dir.path().join("short"), b"x").unwrap();
        assert_eq!(q.list().unwrap(), vec![name.clone()]);
        assert!(q.exists(&name));
        assert_eq!(q.read(&name).unwrap().as_deref(), Some(&b"hello"[..]));
        q.delete(&name).unwrap();
        q.delete(&name).unwrap();
        assert!(q.list().unwrap().is_empty());
    }

    /// Files written one after another, by either writing path, never look older than
    /// the one before (the sender's order). Kernel-stamped times lag the clock by up to a
    /// tick, so a mix of precise and kernel stamps broke this.
    #[test]
    fn later_writes_never_look_older() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        let mtime = |n: &str| fs::metadata(q.path(n)).unwrap().modified().unwrap();
        let mut last = None;
        for i in 0..200u32 {
            let content = i.to_be_bytes();
            let name = name_of(&content);
            if i % 2 == 0 {
                q.put_new(&name, &content).unwrap();
            } else {
                drop(q.write_unsynced(&name, &content).unwrap());
            }
            let t = mtime(&name);
            if let Some(prev) = last {
                assert!(t >= prev, "file {i} looks older than the one before");
            }
            last = Some(t);
        }
    }
}
