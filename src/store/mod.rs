//! The local store tree, its lock files, and the flat queues: shared by the server and the tools.

pub mod journal;
pub mod lock;
pub mod mounts;
pub mod queue;
pub mod shards;
pub mod tree;
pub mod walk;

use std::path::PathBuf;

/// An I/O failure on a path of the store or a queue.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl StoreError {
    pub(crate) fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError { path, source }
    }
}

/// Uploads a server home holds that its worker has not yet settled: files in `inputqueue/`
/// (40-character names, as the server lists them) and unsettled input-journal entries. Zero
/// means caught up.
pub fn queued_uploads(home: &std::path::Path) -> u64 {
    let files = queue::Queue::new(home.join("inputqueue"))
        .list()
        .map_or(0, |names| names.len() as u64);
    files + journal::pending(&home.join(journal::DIR_NAME))
}

/// Upper-cases `key` and deletes every character that is not a hex digit (docs/protocol.md §9.2).
pub fn clean_key(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// An NFS client's placeholder for a file removed or replaced while still open on this host
/// (`.nfsXXXX`, a "silly rename"): not data, and the client removes it itself once the file
/// is closed, so walks neither count, copy nor delete it.
pub fn is_nfs_placeholder(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".nfs")
}

/// Replaces the whole file `path` with `bytes`, atomically and durably: a temporary file
/// `.<name>.<pid>.tmp` in the same folder (created with `mode`), written and synced, renamed
/// over `path`, then the folder synced. Readers see the old file or the new one, never half,
/// and once this returns the new one survives a power cut. Every whole-file replacement
/// outside the store tree uses it (the tree's blocks have their own batched path).
pub fn replace_file(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_name(path);
    write_synced(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// This process's temporary name for `path`, in the same folder: `.<name>.<pid>.tmp`.
pub fn temp_name(path: &std::path::Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` as the whole of `path` (created with `mode`) and syncs it.
pub fn write_synced(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // `mode` applies only on creation; a leftover temporary file gets it too.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `fsync` of a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::at(dir))
}

/// `mkdir` that treats "already exists" as success (two processes may race, docs/protocol.md §14.1).
pub fn ensure_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(StoreError {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// `syncfs(2)` on the file system holding `path`: everything written there — file data, new
/// names, renames, new directories — becomes durable, in one call whatever the number of
/// files. It also flushes other writers' data on that file system, which is the price of
/// the group commit.
pub fn syncfs(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(StoreError::at(path))?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| StoreError::at(path)(e.into()))
}

/// Which file system each folder is on, looked up once per folder: a long-running group
/// committer then needs no `stat` per file to know what to `syncfs`.
#[derive(Debug, Default)]
pub struct Devices {
    by_dir: std::collections::HashMap<PathBuf, u64>,
}

impl Devices {
    /// `syncfs` once for each distinct file system holding one of `dirs`.
    pub fn sync<'a>(
        &mut self,
        dirs: impl IntoIterator<Item = &'a std::path::Path>,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut done = std::collections::HashSet::new();
        for d in dirs {
            let dev = match self.by_dir.get(d) {
                Some(&dev) => dev,
                None => {
                    let dev = std::fs::metadata(d).map_err(StoreError::at(d))?.dev();
                    self.by_dir.insert(d.to_path_buf(), dev);
                    dev
                }
            };
            if done.insert(dev) {
                syncfs(d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean() {
        assert_eq!(clean_key("ab/../cd-EF"), "ABCDEF");
        assert_eq!(clean_key(""), "");
    }
}
