//! Walking a store tree (docs/protocol.md §9.2) leaf by leaf, for the prune and the report.
//!
//! Level-1 entries are followed through symlinks (shard links); only names the tree itself
//! makes are walked: two upper-case hex digits at both levels, and block files named by their
//! 40-digit key inside their own leaf. Everything else — `LOCKFILE`, the temporary files of
//! running servers (`544E.<pid>.<n>.tmp`), a move's `*.move` copies and its `.XX.local`
//! staging folders — is not a block and is never touched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::StoreError;

/// One leaf directory `<root>/XX/YY` and the block files in it.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub dir: PathBuf,
    /// The block names (40 upper-case hex digits, starting with `XXYY`), sorted.
    pub blocks: Vec<String>,
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
}

/// True for a first- or second-level folder name the tree makes: `XX`.
pub fn is_level_name(name: &str) -> bool {
    name.len() == 2 && is_upper_hex(name)
}

/// True for a block file name that belongs in leaf `XXYY`.
pub fn is_block_name(name: &str, leaf_prefix: &str) -> bool {
    name.len() == 40 && is_upper_hex(name) && name.starts_with(leaf_prefix)
}

fn read_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // Removed meanwhile (a shard link to a missing folder reads as absent too).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(StoreError::at(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(StoreError::at(dir))?;
        if let Ok(name) = e.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The first-level folders of `root` (`XX`, links followed), sorted. Empty if `root` is
/// absent.
pub fn first_level(root: &Path) -> Result<Vec<String>, StoreError> {
    Ok(read_names(root)?
        .into_iter()
        .filter(|n| is_level_name(n) && root.join(n).is_dir())
        .collect())
}

/// The leaves under `<root>/<l1>`, each with its block files.
pub fn leaves_of(root: &Path, l1: &str) -> Result<Vec<Leaf>, StoreError> {
    let dir1 = root.join(l1);
    let mut out = Vec::new();
    for l2 in read_names(&dir1)? {
        let dir = dir1.join(&l2);
        if !is_level_name(&l2) || !dir.is_dir() {
            continue;
        }
        let prefix = format!("{l1}{l2}");
        let blocks = read_names(&dir)?
            .into_iter()
            .filter(|n| is_block_name(n, &prefix))
            .collect();
        out.push(Leaf { dir, blocks });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tree_names_are_walked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let key = "544E911BCEC185F8E09CC5AC8956E1342FE75EA1";
        let leaf = root.join("54/4E");
        fs::create_dir_all(&leaf).unwrap();
        fs::create_dir_all(root.join(".54.local/4E")).unwrap();
        fs::create_dir_all(root.join("zz/4E")).unwrap();
        for n in [
            key,
            "LOCKFILE",
            "544E.12.0.tmp",
            "544E911BCEC185F8E09CC5AC8956E1342FE75EA1.move",
            "AAAA911BCEC185F8E09CC5AC8956E1342FE75EA1",
            "544e911bcec185f8e09cc5ac8956e1342fe75ea1",
        ] {
            fs::write(leaf.join(n), b"x").unwrap();
        }
        fs::write(root.join("stray"), b"x").unwrap();
        assert_eq!(first_level(root).unwrap(), vec!["54".to_string()]);
        let leaves = leaves_of(root, "54").unwrap();
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].blocks, vec![key.to_string()]);
        assert!(first_level(&root.join("absent")).unwrap().is_empty());
    }

    #[test]
    fn shard_links_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("shard");
        fs::create_dir_all(shard.join("AB/CD")).unwrap();
        let key = format!("ABCD{}", "0".repeat(36));
        fs::write(shard.join("AB/CD").join(&key), b"x").unwrap();
        let store = dir.path().join("store");
        fs::create_dir(&store).unwrap();
        std::os::unix::fs::symlink(shard.join("AB"), store.join("AB")).unwrap();
        assert_eq!(first_level(&store).unwrap(), vec!["AB".to_string()]);
        assert_eq!(leaves_of(&store, "AB").unwrap()[0].blocks, vec![key]);
    }
}
