//! `storeherd remove` hands the removed instance's queued proxy files (docs/protocol.md §10.1) to
//! a running instance: they are self-contained, and the original delivers them from whichever
//! server holds them. Replication files stay: they belong to the removed instance's own peer.
//!
//! Each file is moved without loss or lasting duplicate: written into the target's
//! `sendqueue/` under the queue's own name (sha1 of the content) with fsync and rename, then
//! unlinked from the source. A crash in between leaves a copy in both, and the next hand-off
//! of the same home finds the name taken and only unlinks the source.

use std::path::Path;

use crate::server::sendfile;
use crate::store::queue::{name_of, Queue};
use crate::store::StoreError;

/// Moves the proxy files of `from_home/sendqueue` into `to_home/sendqueue`; returns how many.
pub fn proxy_files(from_home: &Path, to_home: &Path) -> Result<usize, StoreError> {
    let from = Queue::new(from_home.join("sendqueue"));
    let to = Queue::new(to_home.join("sendqueue"));
    if !from.dir().is_dir() {
        return Ok(0);
    }
    let mut moved = 0;
    for name in from.list()? {
        let Some(content) = from.read(&name)? else {
            continue;
        };
        if !sendfile::headers(&content).proxy {
            continue;
        }
        let target = name_of(&content);
        if !to.exists(&target) {
            // The age and the sender's order go with the file.
            let mtime = std::fs::metadata(from.path(&name))
                .and_then(|m| m.modified())
                .ok();
            to.install(&target, &content, mtime)?;
        }
        from.delete(&name)?;
        moved += 1;
    }
    if moved > 0 {
        std::fs::File::open(from.dir())
            .and_then(|d| d.sync_all())
            .map_err(StoreError::at(from.dir()))?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_proxy_files_only_and_is_idempotent() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for h in [a.path(), b.path()] {
            std::fs::create_dir(h.join("sendqueue")).unwrap();
        }
        let qa = Queue::new(a.path().join("sendqueue"));
        let qb = Queue::new(b.path().join("sendqueue"));
        let proxy = sendfile::proxy_file("AB", None, b"Post-To: server=x:1\nA: 1\n");
        let repl = sendfile::login_file("U", "K");
        // A proxy file rewritten after a partial success keeps its old name.
        let rewritten = sendfile::proxy_file("CD", None, b"Post-To: server=y:2\nB: 2\n");
        qa.put_new(&name_of(&proxy), &proxy).unwrap();
        qa.put_new(&name_of(&repl), &repl).unwrap();
        qa.put_new(&format!("{:040}", 7), &rewritten).unwrap();
        // A copy left by an interrupted earlier hand-off.
        qb.put_new(&name_of(&proxy), &proxy).unwrap();
        assert_eq!(proxy_files(a.path(), b.path()).unwrap(), 2);
        assert_eq!(qa.list().unwrap(), vec![name_of(&repl)]);
        let mut got = qb.list().unwrap();
        got.sort();
        let mut want = vec![name_of(&proxy), name_of(&rewritten)];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(qb.read(&name_of(&rewritten)).unwrap(), Some(rewritten));
        assert_eq!(proxy_files(a.path(), b.path()).unwrap(), 0);
    }
}
