//! The leaf `LOCKFILE` lock (docs/protocol.md §9.3).
//!
//! Python's `fcntl.lockf(fd, LOCK_EX)` takes a classic POSIX record lock (write lock, whole
//! file). We take a Linux *open-file-description* lock (`F_OFD_SETLKW`) with the same range:
//! OFD locks and classic record locks conflict with each other, so the original server and
//! storutil are excluded, while an OFD lock belongs to our descriptor rather than to the whole
//! process — closing some other descriptor of the same file cannot silently drop it, and two
//! threads (or two `LeafLock`s) of one process exclude each other too.
//!
//! On a network file system a lock can also be lost while we think we hold it: the NFS
//! client's lease expired while the server was unreachable, or the server restarted and the
//! lock could not be reclaimed. [`LeafLock::verify`] asks the file system whether it is still
//! ours, so that a writer can check just before it makes a change visible.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use super::StoreError;

/// Why a leaf lock could not be taken or is not held.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened (or created): an ordinary I/O failure.
    #[error(transparent)]
    Open(#[from] StoreError),
    /// The lock call itself failed. On NFS, `EIO` and `ENOLCK` say the lock service is
    /// unreachable or refuses (lease expired, server restarted, no lock daemon).
    #[error("{}: the lock call failed: {source}", path.display())]
    Failed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A lock taken earlier is no longer held: the file system dropped it (or the lock
    /// file was replaced, so the lock is on a file nobody else opens any more).
    #[error("{}: the leaf lock is no longer held", path.display())]
    Lost { path: PathBuf },
}

impl LockError {
    /// A failure of the locking itself (as opposed to opening the file): whoever sees it
    /// can no longer trust that it excludes anyone.
    pub fn is_lock_failure(&self) -> bool {
        matches!(self, LockError::Failed { .. } | LockError::Lost { .. })
    }

    /// The lock file concerned.
    pub fn path(&self) -> &Path {
        match self {
            LockError::Open(e) => &e.path,
            LockError::Failed { path, .. } | LockError::Lost { path } => path,
        }
    }

    /// An error from `fcntl` on the lock file at `path`.
    fn call(path: &Path, errno: Errno) -> LockError {
        LockError::Failed {
            path: path.to_path_buf(),
            source: errno.into(),
        }
    }
}

/// For callers that treat every failure alike (tools, prune, shard moves): the path and an
/// `io::Error` that keeps the errno.
impl From<LockError> for StoreError {
    fn from(e: LockError) -> StoreError {
        match e {
            LockError::Open(e) => e,
            LockError::Failed { path, source } => StoreError { path, source },
            LockError::Lost { path } => StoreError {
                path,
                source: std::io::Error::other("the leaf lock is no longer held"),
            },
        }
    }
}

/// A held lock on one `LOCKFILE`; released when dropped (closing the descriptor).
#[derive(Debug)]
pub struct LeafLock {
    file: File,
    path: PathBuf,
}

impl LeafLock {
    /// Opens `path` for append (created if absent, as the original does) and waits for an
    /// exclusive lock on the whole file.
    pub fn acquire(path: &Path) -> Result<LeafLock, LockError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::at(path))?;
        Self::wait(file, path)
    }

    fn wait(file: File, path: &Path) -> Result<LeafLock, LockError> {
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        loop {
            match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&fl)) {
                Ok(_) => {
                    return Ok(LeafLock {
                        file,
                        path: path.to_path_buf(),
                    })
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(LockError::call(path, e)),
            }
        }
    }

    /// As [`LeafLock::acquire`], but only if `path` exists: `None` when it does not (a reader
    /// that must create nothing, such as a dry-run prune; no server has written that leaf).
    pub fn acquire_if_present(path: &Path) -> Result<Option<LeafLock>, LockError> {
        match OpenOptions::new().append(true).open(path) {
            Ok(file) => Self::wait(file, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::at(path)(e).into()),
        }
    }

    /// Tries once without waiting: `None` if someone else holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<LeafLock>, LockError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::at(path))?;
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => Ok(Some(LeafLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => Ok(None),
            Err(e) => Err(LockError::call(path, e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`LeafLock::verify`] of every lock of a batch: the first one no longer held. Checked
    /// just before a batch's renames, since a rename into a leaf whose lock is gone could
    /// undo another writer's update.
    pub fn verify_all(locks: &[LeafLock]) -> Result<(), LockError> {
        locks.iter().try_for_each(LeafLock::verify)
    }

    /// Checks with the file system that the lock is still ours, with two `F_OFD_GETLK`
    /// tests: from our own descriptor, which sees no conflict while only our lock is there
    /// (a conflict means someone else holds it, so ours is gone); and from a second open of
    /// the same path — a separate open file description, which our lock must conflict with
    /// (no conflict means ours is gone, or the path now names another file). The two cost
    /// an `open` and two lock tests, which on NFS are calls to the server: that is the
    /// point. A lock can still be lost right after this returns; it narrows the window to
    /// the moment before the caller's change, it cannot close it.
    pub fn verify(&self) -> Result<(), LockError> {
        let lost = || LockError::Lost {
            path: self.path.clone(),
        };
        if test_lock(&self.file, &self.path)? != libc::F_UNLCK as libc::c_short {
            return Err(lost());
        }
        let second = match OpenOptions::new().append(true).open(&self.path) {
            Ok(f) => f,
            // Removed: our lock is on a file nobody else will open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(lost()),
            Err(e) => return Err(StoreError::at(&self.path)(e).into()),
        };
        if test_lock(&second, &self.path)? == libc::F_UNLCK as libc::c_short {
            return Err(lost());
        }
        Ok(())
    }

    /// Drops the lock while keeping the descriptor open, as a file system that loses a
    /// lock does: for tests of what a lost lock leads to. Not for anything else.
    #[doc(hidden)]
    pub fn drop_lock_for_test(&self) {
        let fl = whole_file(libc::F_UNLCK as libc::c_short);
        let _ = fcntl(self.file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl));
    }
}

/// `F_OFD_GETLK` for a whole-file write lock from `file`: the type of a conflicting lock,
/// or `F_UNLCK` when nothing conflicts.
fn test_lock(file: &File, path: &Path) -> Result<libc::c_short, LockError> {
    let mut fl = whole_file(libc::F_WRLCK as libc::c_short);
    loop {
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => return Ok(fl.l_type),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(LockError::call(path, e)),
        }
    }
}

/// Remembers the first lock found lost in a server, for its health: once set, the store
/// worker stores nothing more and SELFTEST fails, until the process is restarted (a new
/// process takes its locks afresh and replays what was held back).
#[derive(Debug, Default)]
pub struct LockLoss {
    first: OnceLock<PathBuf>,
}

impl LockLoss {
    /// Records `e`, an error that left a lock untaken or unconfirmed; the first one is
    /// logged, with what to look at. `blocks`: how many results were kept back by it.
    pub fn report(&self, e: &LockError, blocks: usize) {
        let path = e.path().to_path_buf();
        let leaf = leaf_of(&path);
        if self.first.set(path).is_ok() {
            tracing::error!(
                leaf = %leaf,
                "{e}: {blocks} block(s) not stored, and this instance stores nothing more until it \
                 is restarted (every accepted upload stays queued and is processed then); SELFTEST \
                 now fails, so the supervisor takes the instance out of rotation. On NFS, check \
                 whether the client's lease expired (server unreachable for longer than its lease \
                 time), whether the NFS server restarted, and that nfsdcld runs on it so that \
                 clients can reclaim their locks"
            );
        } else {
            tracing::debug!(leaf = %leaf, "{e}: {blocks} more block(s) kept back");
        }
    }

    /// The lock file of the first loss, if any.
    pub fn lost(&self) -> Option<&Path> {
        self.first.get().map(PathBuf::as_path)
    }
}

/// `XX/YY` for `<root>/XX/YY/LOCKFILE`, else the path as it is.
fn leaf_of(lockfile: &Path) -> String {
    let parts: Vec<_> = lockfile
        .iter()
        .rev()
        .skip(1)
        .take(2)
        .map(|p| p.to_string_lossy())
        .collect();
    match parts.as_slice() {
        [yy, xx] => format!("{xx}/{yy}"),
        _ => lockfile.display().to_string(),
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
    fn verify_tells_a_held_lock_from_a_lost_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        let a = LeafLock::acquire(&path).unwrap();
        a.verify().unwrap();
        a.verify().unwrap();
        // The file system forgets it; our descriptor stays open.
        a.drop_lock_for_test();
        let e = a.verify().unwrap_err();
        assert!(
            matches!(&e, LockError::Lost { path: p } if *p == path),
            "{e:?}"
        );
        assert!(e.is_lock_failure());
    }

    #[test]
    fn verify_sees_someone_else_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        let a = LeafLock::acquire(&path).unwrap();
        a.drop_lock_for_test();
        // Lost, and taken meanwhile by another holder (as a second host would after the
        // lease expired): the second open conflicts either way, our own descriptor tells.
        let b = LeafLock::try_acquire(&path).unwrap().expect("free");
        assert!(matches!(a.verify(), Err(LockError::Lost { .. })));
        b.verify().unwrap();
    }

    #[test]
    fn verify_sees_a_replaced_or_removed_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        let a = LeafLock::acquire(&path).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(matches!(a.verify(), Err(LockError::Lost { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(a.verify(), Err(LockError::Lost { .. })));
    }

    #[test]
    fn a_failing_lock_call_is_a_typed_error() {
        // A real failure of the lock call: a write lock on a descriptor not open for
        // writing fails with EBADF. EIO and ENOLCK come only from a network file system's
        // lock service, which a test cannot make fail for real; they go through the same
        // mapping, checked directly.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCKFILE");
        std::fs::write(&path, b"").unwrap();
        let read_only = File::open(&path).unwrap();
        match LeafLock::wait(read_only, &path) {
            Err(LockError::Failed { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.raw_os_error(), Some(libc::EBADF));
            }
            other => panic!("{other:?}"),
        }
        for errno in [Errno::EIO, Errno::ENOLCK] {
            let e = LockError::call(&path, errno);
            assert!(e.is_lock_failure());
            assert!(e.to_string().contains("the lock call failed"), "{e}");
            let io: StoreError = e.into();
            assert_eq!(io.path, path);
            assert_eq!(io.source.raw_os_error(), Some(errno as i32));
        }
        let open = LeafLock::acquire(&dir.path().join("no/such/LOCKFILE")).unwrap_err();
        assert!(matches!(open, LockError::Open(_)) && !open.is_lock_failure());
    }

    #[test]
    fn the_first_loss_is_kept() {
        let loss = LockLoss::default();
        assert!(loss.lost().is_none());
        let first = Path::new("/s/AB/CD/LOCKFILE");
        loss.report(&LockError::Lost { path: first.into() }, 3);
        loss.report(
            &LockError::call(Path::new("/s/EF/01/LOCKFILE"), Errno::EIO),
            1,
        );
        assert_eq!(loss.lost(), Some(first));
        assert_eq!(leaf_of(first), "AB/CD");
        assert_eq!(leaf_of(Path::new("LOCKFILE")), "LOCKFILE");
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
