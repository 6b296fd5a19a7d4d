//! The entangled tree shared by every instance of one `storeherd up` (docs/protocol.md §11):
//! `<data>/entangled`, with each home's `entangled` a symbolic link to it, which the
//! original server follows too.
//!
//! A home that still has a real `entangled/` folder (from an earlier version, or an original
//! server's home) has its files moved into the shared tree first. A value the shared tree
//! already holds under the same key is not overwritten: the home's copy becomes an
//! `entangled-incoming` queue file of that home, which its server merges with the DHT rules
//! at start, so no value is lost either way.

use std::fs;
use std::io;
use std::path::Path;

use crate::server::entangled::split_headers;
use crate::store::tree::LOCKFILE;
use crate::store::{queue, sync_dir};

/// Makes `home_link` a link to `shared` (which must exist), moving any files first.
pub fn link_home(shared: &Path, home_link: &Path) -> io::Result<()> {
    match fs::symlink_metadata(home_link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(home_link)? == shared {
                return Ok(());
            }
            tracing::warn!(
                link = %home_link.display(),
                "entangled link pointed elsewhere; now points to {}",
                shared.display()
            );
            fs::remove_file(home_link)?;
        }
        Ok(m) if m.is_dir() => {
            let home = home_link.parent().unwrap_or(Path::new("."));
            let moved = move_tree(home_link, shared, &home.join("inputqueue"))?;
            if moved > 0 {
                tracing::info!(
                    home = %home.display(),
                    "moved {moved} entangled files into the shared tree {}",
                    shared.display()
                );
            }
            fs::remove_dir(home_link)?;
        }
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is a file, not the entangled folder",
                home_link.display()
            )))
        }
    }
    std::os::unix::fs::symlink(shared, home_link)?;
    if let Some(parent) = home_link.parent() {
        sync_dir(parent).map_err(|e| e.source)?;
    }
    Ok(())
}

/// Moves every file under `from` into the same place under `to`, then removes `from`'s
/// emptied folders and lock files (not `from` itself). Returns the files moved or queued.
fn move_tree(from: &Path, to: &Path, inputqueue: &Path) -> io::Result<usize> {
    let mut count = 0;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(&dst)?;
            count += move_tree(&src, &dst, inputqueue)?;
            fs::remove_dir(&src)?;
        } else if entry.file_name() == LOCKFILE {
            fs::remove_file(&src)?;
        } else {
            move_file(&src, &dst, inputqueue)?;
            count += 1;
        }
    }
    Ok(count)
}

fn move_file(src: &Path, dst: &Path, inputqueue: &Path) -> io::Result<()> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if !dst.exists() {
        match fs::rename(src, dst) {
            Ok(()) => return Ok(()),
            // Another file system: copy, make durable, then remove.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                fs::copy(src, dst)?;
                fs::File::open(dst)?.sync_all()?;
                return fs::remove_file(src);
            }
            Err(e) => return Err(e),
        }
    }
    let bytes = fs::read(src)?;
    if fs::read(dst)? == bytes {
        return fs::remove_file(src);
    }
    let is_key = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if is_key {
        // Both trees hold a value for this key: the server merges the home's in.
        let (headers, _) = split_headers(&bytes);
        if headers.starts_with(b"Source: entangled\n") {
            let mut content =
                format!("StoreType: entangled-incoming\nStoreKeyid: {name}\n").into_bytes();
            content.extend_from_slice(&bytes);
            let q = queue::Queue::new(inputqueue);
            let qname = queue::name_of(&content);
            if !q.exists(&qname) {
                let written = q.write_unsynced(&qname, &content).map_err(|e| e.source)?;
                q.sync_all(&[written]).map_err(|e| e.source)?;
            }
            return fs::remove_file(src);
        }
    }
    // Anything else keeps its bytes under a name of its own beside the shared one.
    let mut alt = dst.as_os_str().to_owned();
    alt.push(format!(".moved-{}", std::process::id()));
    fs::rename(src, alt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "544E911BCEC185F8E09CC5AC8956E1342FE75EA1";
    const K2: &str = "AA4E911BCEC185F8E09CC5AC8956E1342FE75EA1";

    #[test]
    fn moves_files_and_queues_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("entangled");
        let home = dir.path().join("home");
        for d in [
            shared.join("54/4E"),
            home.join("entangled/54/4E"),
            home.join("entangled/AA/4E"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(home.join("inputqueue")).unwrap();
        let value = |v: &str| {
            format!("Source: entangled\nLastPublished: 1\nOriginallyPublished: 1\nOriginalPublisherID: ab\nDataType: string\nData: 1\n{v}")
        };
        fs::write(shared.join("54/4E").join(K), value("a")).unwrap();
        fs::write(home.join("entangled/54/4E").join(K), value("b")).unwrap();
        fs::write(home.join("entangled/54/4E/LOCKFILE"), "").unwrap();
        fs::write(home.join("entangled/AA/4E").join(K2), value("c")).unwrap();

        link_home(&shared, &home.join("entangled")).unwrap();
        assert_eq!(fs::read_link(home.join("entangled")).unwrap(), shared);
        assert_eq!(
            fs::read_to_string(shared.join("54/4E").join(K)).unwrap(),
            value("a")
        );
        assert_eq!(
            fs::read_to_string(shared.join("AA/4E").join(K2)).unwrap(),
            value("c")
        );
        let queued: Vec<_> = fs::read_dir(home.join("inputqueue")).unwrap().collect();
        assert_eq!(
            queued.len(),
            1,
            "the conflicting value waits in the input queue"
        );
        let q = fs::read_to_string(queued[0].as_ref().unwrap().path()).unwrap();
        assert!(q.starts_with(&format!(
            "StoreType: entangled-incoming\nStoreKeyid: {K}\nSource: entangled\n"
        )));
        assert!(q.ends_with("\nb"));
        // Again: nothing to do.
        link_home(&shared, &home.join("entangled")).unwrap();
    }
}
