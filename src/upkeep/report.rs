//! The store usage report (storutil's report, docs/protocol.md §12.1): blocks and bytes per type,
//! per first-level folder (and the shard it lives on), and how old the blocks are. It reads
//! only and takes no lock: every storeherd write is an atomic rename, so a file is seen whole
//! or not at all (a Python server's in-place write may be seen half-done, which only skews
//! one count).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::prune::{date_of, entangled, header_lines, read_for_headers, Kind};
use crate::protocol::header::{hex20, value};
use crate::store::walk;
use crate::store::StoreError;

/// Age classes, youngest first (storutil's default limits fall on the 10 d and 31 d edges).
pub const AGE_CLASSES: [&str; 7] = [
    "future", "<1d", "1d-7d", "7d-10d", "10d-31d", ">31d", "undated",
];

fn age_class(date: Option<DateTime<Utc>>, now: DateTime<Utc>) -> usize {
    let Some(d) = date else { return 6 };
    let age = now.signed_duration_since(d);
    let days = |n| TimeDelta::days(n);
    if age < TimeDelta::zero() {
        0
    } else if age <= days(1) {
        1
    } else if age <= days(7) {
        2
    } else if age <= days(10) {
        3
    } else if age <= days(31) {
        4
    } else {
        5
    }
}

/// Blocks of one type (or of all types, in a folder's row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub blocks: u64,
    /// File sizes.
    pub bytes: u64,
    /// Sizes rounded up to the file system's allocation unit (storutil's `-blocksize`).
    pub disk_bytes: u64,
}

impl Usage {
    fn add(&mut self, len: u64, unit: u64) {
        self.blocks += 1;
        self.bytes += len;
        self.disk_bytes += len.div_ceil(unit) * unit;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeUsage {
    #[serde(flatten)]
    pub usage: Usage,
    /// Announcements or claims inside the files (merged types).
    pub entries: u64,
    /// Blocks per age class ([`AGE_CLASSES`]; a merged block counts at its newest entry).
    pub ages: BTreeMap<&'static str, u64>,
}

/// One first-level folder `XX`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolderUsage {
    pub folder: String,
    /// Where its files are: the link target of a shard, `None` for a local folder.
    pub shard: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
}

/// The report of one tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeReport {
    pub root: String,
    pub types: BTreeMap<&'static str, TypeUsage>,
    /// Distinct (recipient, message hash) pairs in the message announcements.
    pub messages: u64,
    /// Block files with no `Type` or another type.
    pub other: Usage,
    pub total: Usage,
    pub folders: Vec<FolderUsage>,
}

/// Reports on `root` (absent: an empty report). `unit` is the allocation unit for
/// `disk_bytes` (storutil's default is 512).
pub fn report_tree(root: &Path, unit: u64, now: DateTime<Utc>) -> Result<TreeReport, StoreError> {
    let unit = unit.max(1);
    let mut r = TreeReport {
        root: root.display().to_string(),
        ..TreeReport::default()
    };
    let mut messages: HashSet<([u8; 20], [u8; 20])> = HashSet::new();
    for l1 in walk::first_level(root)? {
        let entry = root.join(&l1);
        let shard = fs::read_link(&entry).ok().map(|t| t.display().to_string());
        let mut folder = FolderUsage {
            folder: l1.clone(),
            shard,
            usage: Usage::default(),
        };
        for leaf in walk::leaves_of(root, &l1)? {
            for name in &leaf.blocks {
                let path = leaf.dir.join(name);
                let Some((bytes, len)) = read_for_headers(&path)? else {
                    continue;
                };
                folder.usage.add(len, unit);
                r.total.add(len, unit);
                let block = entangled(&bytes).map_or(&bytes[..], |e| e.value);
                add_block(&mut r, &mut messages, block, len, unit, now);
            }
        }
        r.folders.push(folder);
    }
    r.messages = messages.len() as u64;
    Ok(r)
}

fn add_block(
    r: &mut TreeReport,
    messages: &mut HashSet<([u8; 20], [u8; 20])>,
    block: &[u8],
    len: u64,
    unit: u64,
    now: DateTime<Utc>,
) {
    let lines = header_lines(block);
    let mut kind = None;
    let mut last_date = None;
    let mut newest: Option<DateTime<Utc>> = None;
    let mut separators = 0;
    let mut recipient = None;
    let mut hash = None;
    for l in &lines {
        if let Some(v) = value(l, b"TYPE: ").filter(|v| !v.is_empty()) {
            kind = Kind::from_type(v);
        } else if let Some(Some(d)) = date_of(l) {
            last_date = Some(d);
            newest = Some(newest.map_or(d, |n| n.max(d)));
        } else if let Some(h) = value(l, b"RECIPIENT: ").and_then(hex20) {
            recipient = Some(h);
        } else if let Some(h) = value(l, b"MESSAGEHASH: ").and_then(hex20) {
            hash = Some(h);
        } else if l.eq_ignore_ascii_case(b"nextmessage") || l.eq_ignore_ascii_case(b"nextclaim") {
            separators += 1;
            if let (Some(rc), Some(h)) = (recipient, hash.take()) {
                messages.insert((rc, h));
            }
        }
    }
    let Some(kind) = kind else {
        r.other.add(len, unit);
        return;
    };
    let merged = matches!(kind, Kind::MessageAnnouncement | Kind::AddressClaim);
    if kind == Kind::MessageAnnouncement {
        if let (Some(rc), Some(h)) = (recipient, hash) {
            messages.insert((rc, h));
        }
    }
    let t = r.types.entry(kind.as_str()).or_default();
    t.usage.add(len, unit);
    if merged {
        t.entries += separators + 1;
    }
    let date = if merged { newest } else { last_date };
    *t.ages.entry(AGE_CLASSES[age_class(date, now)]).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compose;
    use crate::store::tree::Tree;

    #[test]
    fn counts_types_folders_and_ages() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        let now = Utc::now();
        let (k1, d1) = compose::data_block(b"one", now - TimeDelta::days(2));
        let (k2, d2) = compose::data_block(b"two", now - TimeDelta::days(40));
        let (k3, a) = compose::message_announcement([4; 20], "b", [1; 20], &[], now);
        let (_, b) = compose::message_announcement([4; 20], "b", [2; 20], &[], now);
        let mut ma = a.clone();
        ma.extend_from_slice(b"NextMessage\n");
        ma.extend_from_slice(&b);
        for (k, blk) in [(&k1, &d1), (&k2, &d2), (&k3, &ma)] {
            tree.write_atomic(k, blk).unwrap();
        }
        let r = report_tree(dir.path(), 512, now).unwrap();
        let data = &r.types["data"];
        assert_eq!(data.usage.blocks, 2);
        assert_eq!(data.usage.bytes, (d1.len() + d2.len()) as u64);
        assert_eq!(data.usage.disk_bytes, 1024);
        assert_eq!(data.ages["1d-7d"], 1);
        assert_eq!(data.ages[">31d"], 1);
        let m = &r.types["message-announcement"];
        assert_eq!((m.usage.blocks, m.entries), (1, 2));
        assert_eq!(r.messages, 2);
        assert_eq!(r.total.blocks, 3);
        assert_eq!(r.folders.iter().map(|f| f.usage.blocks).sum::<u64>(), 3);
    }
}
