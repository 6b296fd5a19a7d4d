//! The leaf `LOCKFILE` lock (docs/protocol.md §9.3).
//!
//! Python's `fcntl.lockf(fd, LOCK_EX)` takes a classic POSIX record lock (write lock, whole
//! file). We take a Linux *open-file-description* lock (`F_OFD_SETLKW`) with the same range:
//! OFD locks and classic record locks conflict with each other, so the original server and
//! storutil are excluded, while an OFD lock belongs to our descriptor rather than to the whole
//! process — closing some other descriptor of the same file cannot silently drop it, and two
//! threads (or two `LeafLock`s) of one process exclude each other too.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use super::StoreError;

/// A held lock on one `LOCKFILE`; released when dropped (closing the descriptor).
#[derive(Debug)]
pub struct LeafLock {
    file: File,
}

impl LeafLock {
    /// Opens `path` for append (created if absent, as the original does) and waits for an
    /// exclusive lock on the whole file.
    pub fn acquire(path: &Path) -> Result<LeafLock, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::at(path))?;
        Self::wait(file, path)
    }

    fn wait(file: File, path: &Path) -> Result<LeafLock, StoreError> {
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        loop {
            match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&fl)) {
                Ok(_) => return Ok(LeafLock { file }),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(StoreError {
                        path: path.to_path_buf(),
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// As [`LeafLock::acquire`], but only if `path` exists: `None` when it does not (a reader
    /// that must create nothing, such as a dry-run prune; no server has written that leaf).
    pub fn acquire_if_present(path: &Path) -> Result<Option<LeafLock>, StoreError> {
        match OpenOptions::new().append(true).open(path) {
            Ok(file) => Self::wait(file, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::at(path)(e)),
        }
    }

    /// Tries once without waiting: `None` if someone else holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<LeafLock>, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::at(path))?;
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => Ok(Some(LeafLock { file })),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => Ok(None),
            Err(e) => Err(StoreError {
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

impl Drop for LeafLock {
    fn drop(&mut self) {
        let fl = whole_file(libc::F_UNLCK as libc::c_short);
        // Closing the descriptor releases it anyway; unlocking first is just explicit.
        let _ = fcntl(self.file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl));
    }
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY-free: flock is plain data; zero means "from offset 0, to the end, pid 0",
    // which is what lockf(LOCK_EX) locks and what OFD locks require (l_pid must be 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        let a = LeafLock::acquire(&path).unwrap();
        assert!(LeafLock::try_acquire(&path).unwrap().is_none());
        drop(a);
        assert!(LeafLock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn conflicts_with_a_classic_record_lock_of_another_process() {
        // `flock(1)` is not fcntl; use python3's lockf when present, else skip honestly.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        let script = format!(
            "import fcntl,sys,time\nf=open('{}','a')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.readline()\n",
            path.display()
        );
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("python3 not available: skipping the cross-process lock check");
            return;
        };
        use std::io::{BufRead, Write};
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        assert!(LeafLock::try_acquire(&path).unwrap().is_none());
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        child.wait().unwrap();
        assert!(LeafLock::try_acquire(&path).unwrap().is_some());
    }
}
