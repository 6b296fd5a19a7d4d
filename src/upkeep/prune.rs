//! Removing expired blocks from a store tree: storutil's `-prune-localstore` and
//! `-prune-entangled`, rule for rule (docs/protocol.md §12.1), with atomic rewrites.
//!
//! The rules, on the header lines as storutil reads them (the lines up to `Data: n`, CR/LF
//! stripped; in an entangled value file, §11, the lines of the value):
//! - `data`, `key-announcement`, `acknowledgment`/`acknowledgement` (the **last** `Type`, any
//!   letter case): removed unless the **last** `Date` line has an age ≤ that type's max age;
//! - `message-announcement`, `address-claim`: split at `NextMessage` / `NextClaim`; a part is
//!   kept when the most recent `Date` seen so far (it carries over into a part without one)
//!   has an age ≤ the max age. No part kept: removed; all kept: left alone; otherwise
//!   rewritten as the kept lines, each ending in LF, separated by `NextMessage`/`NextClaim`;
//! - any other file (no `Type`, another type) is left alone.
//!
//! Where storutil goes wrong, this does not: a rewrite goes to a temporary file in the same
//! leaf and is renamed over the block under the leaf `LOCKFILE` (a `GET` never sees half a
//! file); a rewritten entangled file keeps its DHT header with a `Data:` length that fits the
//! new value (storutil dropped that line); the "claims trimmed" count counts; and a `Date`
//! line that has the date shape but names no real time (storutil crashed on it) leaves the
//! file alone, counted as unreadable.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::dt::{is_dt_shape, parse_dt};
use crate::protocol::header::{data_len, value, without_cr};
use crate::server::since::get_lines;
use crate::server::validate::Limits;
use crate::store::lock::LeafLock;
use crate::store::tree::{PendingWrite, Tree, LOCKFILE};
use crate::store::walk::{self, Leaf};
use crate::store::{Devices, StoreError};

/// The five block types, by the names the counts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Data,
    KeyAnnouncement,
    MessageAnnouncement,
    Acknowledgment,
    AddressClaim,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Data,
        Kind::KeyAnnouncement,
        Kind::MessageAnnouncement,
        Kind::Acknowledgment,
        Kind::AddressClaim,
    ];

    /// The `Type:` value, as counts and reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::KeyAnnouncement => "key-announcement",
            Kind::MessageAnnouncement => "message-announcement",
            Kind::Acknowledgment => "acknowledgment",
            Kind::AddressClaim => "address-claim",
        }
    }

    /// From a `Type:` value, any letter case (storutil lower-cases it).
    pub fn from_type(ty: &[u8]) -> Option<Kind> {
        let t = ty.to_ascii_lowercase();
        Some(match t.as_slice() {
            b"data" => Kind::Data,
            b"key-announcement" => Kind::KeyAnnouncement,
            b"message-announcement" => Kind::MessageAnnouncement,
            b"acknowledgment" | b"acknowledgement" => Kind::Acknowledgment,
            b"address-claim" => Kind::AddressClaim,
            _ => return None,
        })
    }

    /// The separator of a merged type's parts (as written), `None` for the others.
    fn separator(self) -> Option<&'static [u8]> {
        match self {
            Kind::MessageAnnouncement => Some(b"NextMessage"),
            Kind::AddressClaim => Some(b"NextClaim"),
            _ => None,
        }
    }

    fn max_age(self, limits: &Limits) -> i64 {
        match self {
            Kind::Data => limits.max_age_data,
            Kind::KeyAnnouncement => limits.max_age_key,
            Kind::MessageAnnouncement => limits.max_age_message,
            Kind::Acknowledgment => limits.max_age_ack,
            Kind::AddressClaim => limits.max_age_claim,
        }
    }
}

/// Counts for one block type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    /// Files of this type looked at.
    pub examined: u64,
    /// Files removed (every entry expired, or the block itself).
    pub removed: u64,
    /// Files rewritten without their expired entries.
    pub rewritten: u64,
    /// Announcements or claims inside the files (merged types only).
    pub entries: u64,
    /// Of those, expired (dropped by a rewrite or a removal).
    pub entries_removed: u64,
    /// Bytes of removed files plus what rewrites made smaller.
    pub bytes_freed: u64,
}

/// What a prune of one tree did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneCounts {
    /// Per type, named as [`Kind::as_str`].
    pub types: BTreeMap<String, TypeCounts>,
    /// Block files with no `Type`, or another type: left alone.
    pub other: u64,
    /// Block files left alone because a `Date` line names no real time.
    pub unreadable: u64,
}

impl TypeCounts {
    fn add(&mut self, c: &TypeCounts) {
        self.examined += c.examined;
        self.removed += c.removed;
        self.rewritten += c.rewritten;
        self.entries += c.entries;
        self.entries_removed += c.entries_removed;
        self.bytes_freed += c.bytes_freed;
    }
}

impl PruneCounts {
    fn entry(&mut self, kind: Kind) -> &mut TypeCounts {
        self.types.entry(kind.as_str().to_string()).or_default()
    }

    /// Sums over every type: (examined files, removed, rewritten, bytes freed).
    pub fn totals(&self) -> TypeCounts {
        let mut t = TypeCounts::default();
        for c in self.types.values() {
            t.add(c);
        }
        t.examined += self.other + self.unreadable;
        t
    }

    pub fn add(&mut self, other: &PruneCounts) {
        for (k, c) in &other.types {
            self.types.entry(k.clone()).or_default().add(c);
        }
        self.other += other.other;
        self.unreadable += other.unreadable;
    }
}

/// What to do with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Remove,
    /// Replace the file by these bytes.
    Rewrite(Vec<u8>),
}

/// The verdict on one file, with what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: not one of the five types (left alone).
    pub kind: Option<Kind>,
    pub decision: Decision,
    /// Parts and expired parts (merged types).
    pub entries: u64,
    pub entries_removed: u64,
    /// A `Date` line was not a real time: the file is kept.
    pub unreadable: bool,
}

impl Verdict {
    fn keep(kind: Option<Kind>) -> Verdict {
        Verdict {
            kind,
            decision: Decision::Keep,
            entries: 0,
            entries_removed: 0,
            unreadable: false,
        }
    }
}

/// An entangled value file (§11): the DHT header lines before `Data: n`, and the value.
pub struct Entangled<'a> {
    pub header: &'a [u8],
    pub value: &'a [u8],
}

/// Splits an entangled value file: its first line is `Source: entangled`, and the value is
/// everything after the first `Data: n` line (readers ignore n, §11 "Bug/odd"). `None` for a
/// plain block.
pub fn entangled(file: &[u8]) -> Option<Entangled<'_>> {
    let first = file.split(|&c| c == b'\n').next()?;
    if *without_cr(first) != *b"Source: entangled" {
        return None;
    }
    let mut at = 0;
    for raw in file.split(|&c| c == b'\n') {
        let end = at + raw.len() + 1;
        if value(&without_cr(raw), b"DATA: ").is_some_and(|v| data_len(v).is_some()) {
            return Some(Entangled {
                header: &file[..at],
                value: file.get(end..).unwrap_or_default(),
            });
        }
        at = end;
    }
    None
}

/// How much of a block file is read first: header lines nearly always end within it, and a
/// data block's payload (up to 8 MiB) need not be read to judge it.
const HEAD: u64 = 16 * 1024;

/// True when the header lines of `block` end with a `Data: n` line (for an entangled file,
/// its value's), so that what follows is payload.
fn headers_end(block: &[u8]) -> bool {
    let block = match entangled(block) {
        Some(e) => e.value,
        None => block,
    };
    get_lines(block)
        .any(|l| value(&without_cr(l), b"DATA: ").is_some_and(|v| data_len(v).is_some()))
}

/// Enough of a block file to judge it, and the file's length: the first [`HEAD`] bytes when
/// its header lines end inside them, else the whole file. `None` when it is gone.
pub(crate) fn read_for_headers(path: &Path) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    use std::io::Read;
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::at(path)(e)),
    };
    let len = f.metadata().map_err(StoreError::at(path))?.len();
    let mut buf = Vec::with_capacity(usize::try_from(len.min(HEAD)).unwrap_or(0));
    (&mut f)
        .take(HEAD)
        .read_to_end(&mut buf)
        .map_err(StoreError::at(path))?;
    if (buf.len() as u64) < len && !headers_end(&buf) {
        f.read_to_end(&mut buf).map_err(StoreError::at(path))?;
    }
    Ok(Some((buf, len)))
}

/// A block's header lines as storutil reads them: its lines (split at LF, CRs removed) up to
/// the first `Data: n` line.
pub(crate) fn header_lines(block: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let mut out = Vec::new();
    for raw in get_lines(block) {
        let line = without_cr(raw);
        if value(&line, b"DATA: ").is_some_and(|v| data_len(v).is_some()) {
            break;
        }
        out.push(line);
    }
    out
}

/// A `Date: DT` line's time: `None` if not a date line, `Some(None)` if not a real time.
pub(crate) fn date_of(line: &[u8]) -> Option<Option<DateTime<Utc>>> {
    value(line, b"DATE: ")
        .filter(|v| is_dt_shape(v))
        .map(parse_dt)
}

/// Age ≤ max age (a future date has a negative age and passes; §7.1).
fn live(date: DateTime<Utc>, max_age: i64, now: DateTime<Utc>) -> bool {
    TimeDelta::try_seconds(max_age).is_none_or(|max| now.signed_duration_since(date) <= max)
}

/// The storutil rules for one block (its bytes as stored, or an entangled file's value).
pub fn decide_block(block: &[u8], limits: &Limits, now: DateTime<Utc>) -> Verdict {
    let lines = header_lines(block);
    let mut ty: Option<&[u8]> = None;
    for l in &lines {
        if let Some(v) = value(l, b"TYPE: ").filter(|v| !v.is_empty()) {
            ty = Some(v);
        }
    }
    let Some(kind) = ty.and_then(Kind::from_type) else {
        return Verdict::keep(None);
    };
    let max_age = kind.max_age(limits);
    let Some(separator) = kind.separator() else {
        let mut date = None;
        for l in &lines {
            if let Some(d) = date_of(l) {
                date = Some(d);
            }
        }
        return match date {
            Some(None) => Verdict {
                unreadable: true,
                ..Verdict::keep(Some(kind))
            },
            Some(Some(d)) if live(d, max_age, now) => Verdict::keep(Some(kind)),
            _ => Verdict {
                decision: Decision::Remove,
                ..Verdict::keep(Some(kind))
            },
        };
    };
    // Merged types: storutil appends an end marker and treats it like a separator.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut part: Vec<&[u8]> = Vec::new();
    let mut date: Option<DateTime<Utc>> = None;
    let (mut entries, mut removed) = (0u64, 0u64);
    let mut any_kept = false;
    let end: &[u8] = b"EndBlock";
    for l in lines.iter().map(|l| &l[..]).chain(std::iter::once(end)) {
        match date_of(l) {
            Some(Some(d)) => date = Some(d),
            Some(None) => {
                return Verdict {
                    unreadable: true,
                    ..Verdict::keep(Some(kind))
                }
            }
            None => {}
        }
        if l.eq_ignore_ascii_case(separator) || l.eq_ignore_ascii_case(b"endblock") {
            entries += 1;
            if date.is_some_and(|d| live(d, max_age, now)) {
                if !kept.is_empty() {
                    kept.push(separator);
                }
                kept.append(&mut part);
                any_kept = true;
            } else {
                removed += 1;
                part.clear();
            }
        } else {
            part.push(l);
        }
    }
    let decision = if !any_kept {
        Decision::Remove
    } else if removed == 0 {
        Decision::Keep
    } else {
        let mut out = Vec::new();
        for l in kept {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        Decision::Rewrite(out)
    };
    Verdict {
        kind: Some(kind),
        decision,
        entries,
        entries_removed: removed,
        unreadable: false,
    }
}

/// [`decide_block`] on a stored file: an entangled value file is judged by its value, and a
/// rewrite keeps its DHT header with the new value's length.
pub fn decide_file(file: &[u8], limits: &Limits, now: DateTime<Utc>) -> Verdict {
    let Some(e) = entangled(file) else {
        return decide_block(file, limits, now);
    };
    let mut v = decide_block(e.value, limits, now);
    if let Decision::Rewrite(value) = &v.decision {
        let mut out = e.header.to_vec();
        out.extend_from_slice(format!("Data: {}\n", value.len()).as_bytes());
        out.extend_from_slice(value);
        v.decision = Decision::Rewrite(out);
    }
    v
}

/// How to prune one tree.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    pub limits: Limits,
    pub now: DateTime<Utc>,
    /// Count only: change nothing (and create no `LOCKFILE`).
    pub dry_run: bool,
}

/// Rewrites written but not yet renamed, whose leaves stay locked until they are: their
/// data is made durable with one `syncfs` per file system for the whole batch (a sync per
/// file would cost more than the walk), then they are renamed.
const BATCH: usize = 256;

/// Leaves locked with their pending rewrites (the locks are released after the renames).
#[derive(Default)]
struct Batch {
    locks: Vec<LeafLock>,
    writes: Vec<PendingWrite>,
    /// First-level folders the writes are in (with shards, on several file systems).
    dirs: Vec<PathBuf>,
}

/// A prune of one tree, first-level folder by first-level folder
/// ([`Pruner::first_level`]), then [`Pruner::finish`].
pub struct Pruner {
    tree: Tree,
    opts: PruneOptions,
    pub counts: PruneCounts,
    batch: Batch,
    devices: Devices,
    /// First-level folders where something changed, made durable at the end.
    changed: Vec<PathBuf>,
}

impl Pruner {
    pub fn new(root: &Path, opts: PruneOptions) -> Pruner {
        Pruner {
            tree: Tree::new(root),
            opts,
            counts: PruneCounts::default(),
            batch: Batch::default(),
            devices: Devices::default(),
            changed: Vec::new(),
        }
    }

    /// Prunes every leaf under `<root>/<l1>`.
    pub fn first_level(&mut self, l1: &str) -> Result<(), StoreError> {
        let root = self.tree.root().to_path_buf();
        let dir = root.join(l1);
        let mut changed = false;
        for leaf in walk::leaves_of(&root, l1)? {
            let r = prune_leaf(
                &self.tree,
                &leaf,
                &self.opts,
                &mut self.counts,
                &mut self.batch,
            );
            changed |= r.inspect_err(|_| self.abandon())?;
            if self.batch.dirs.last() != Some(&dir) && !self.batch.writes.is_empty() {
                self.batch.dirs.push(dir.clone());
            }
            if self.batch.locks.len() >= BATCH || self.batch.writes.len() >= BATCH {
                self.flush()?;
            }
        }
        if changed {
            self.changed.push(dir);
        }
        Ok(())
    }

    /// Makes the pending temporary files durable, renames them over their blocks, and
    /// releases their leaves.
    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.batch.writes.is_empty() {
            // A lock lost on a shared file system: renaming now could undo a server's write.
            if let Err(e) = LeafLock::verify_all(&self.batch.locks) {
                self.abandon();
                return Err(e.into());
            }
            let dirs = std::mem::take(&mut self.batch.dirs);
            self.devices
                .sync(dirs.iter().map(PathBuf::as_path))
                .inspect_err(|_| self.abandon())?;
            for w in self.batch.writes.drain(..) {
                w.publish()?;
            }
        }
        self.batch.locks.clear();
        Ok(())
    }

    fn abandon(&mut self) {
        for w in self.batch.writes.drain(..) {
            w.discard();
        }
        self.batch.locks.clear();
        self.batch.dirs.clear();
    }

    /// Renames what is pending, makes every rename and removal durable, and returns the
    /// counts.
    pub fn finish(mut self) -> Result<PruneCounts, StoreError> {
        self.flush()?;
        let changed = std::mem::take(&mut self.changed);
        self.devices.sync(changed.iter().map(PathBuf::as_path))?;
        Ok(std::mem::take(&mut self.counts))
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        // An error left rewrites unpublished: their temporary files go, the blocks stay.
        self.abandon();
    }
}

/// Prunes every leaf under `<root>/<l1>` (one first-level folder), adding to `counts`.
pub fn prune_first_level(
    root: &Path,
    l1: &str,
    opts: &PruneOptions,
    counts: &mut PruneCounts,
) -> Result<(), StoreError> {
    let mut p = Pruner::new(root, *opts);
    p.first_level(l1)?;
    counts.add(&p.finish()?);
    Ok(())
}

/// Judges one leaf under its `LOCKFILE` (the lock every server takes before it writes a
/// block there), so no store thread merges into a file while it is judged and replaced.
/// Removals happen at once; rewrites go to `batch`, which keeps the leaf locked until they
/// are renamed. True if something changed.
fn prune_leaf(
    tree: &Tree,
    leaf: &Leaf,
    opts: &PruneOptions,
    counts: &mut PruneCounts,
    batch: &mut Batch,
) -> Result<bool, StoreError> {
    if leaf.blocks.is_empty() {
        return Ok(false);
    }
    let lock_path = leaf.dir.join(LOCKFILE);
    let lock = if opts.dry_run {
        LeafLock::acquire_if_present(&lock_path)?
    } else {
        Some(LeafLock::acquire(&lock_path)?)
    };
    let mut changed = false;
    let mut pending = false;
    for name in &leaf.blocks {
        let path = leaf.dir.join(name);
        // Gone since the listing (another prune, a move): nothing to judge.
        let Some((bytes, len)) = read_for_headers(&path)? else {
            continue;
        };
        let v = decide_file(&bytes, &opts.limits, opts.now);
        let Some(kind) = v.kind else {
            counts.other += 1;
            continue;
        };
        if v.unreadable {
            tracing::warn!(path = %path.display(), "a Date line names no real time: left alone");
            counts.unreadable += 1;
            continue;
        }
        let c = counts.entry(kind);
        c.examined += 1;
        c.entries += v.entries;
        c.entries_removed += v.entries_removed;
        match v.decision {
            Decision::Keep => {}
            Decision::Remove => {
                if !opts.dry_run {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::at(&path)(e)),
                    }
                    changed = true;
                }
                c.removed += 1;
                c.bytes_freed += len;
            }
            Decision::Rewrite(new) => {
                if !opts.dry_run {
                    let w = tree.write_temp_in_leaf(name, &tree.temp_path(name), &new)?;
                    batch.writes.push(w);
                    pending = true;
                    changed = true;
                }
                c.rewritten += 1;
                c.bytes_freed += len.saturating_sub(new.len() as u64);
            }
        }
    }
    if let (true, Some(l)) = (pending, lock) {
        batch.locks.push(l);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compose;
    use crate::server::validate::validate_merge;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 5, 0, 0).unwrap()
    }

    fn ago(s: i64) -> DateTime<Utc> {
        now() - TimeDelta::seconds(s)
    }

    const DAY: i64 = 86_400;

    fn decide(b: &[u8]) -> Verdict {
        decide_block(b, &Limits::default(), now())
    }

    #[test]
    fn single_blocks_expire_at_their_max_age() {
        let (_, live) = compose::data_block(b"x", ago(10 * DAY));
        let (_, dead) = compose::data_block(b"x", ago(10 * DAY + 1));
        assert_eq!(decide(&live).decision, Decision::Keep);
        assert_eq!(decide(&dead).decision, Decision::Remove);
        assert_eq!(decide(&dead).kind, Some(Kind::Data));
        let (_, ack) = compose::acknowledgment([1; 20], ago(11 * DAY));
        assert_eq!(decide(&ack).decision, Decision::Remove);
        // A payload that looks like header lines is not read.
        let (_, tricky) = compose::data_block(b"Date: 1999-01-01T00:00:00Z\n", ago(DAY));
        assert_eq!(decide(&tricky).decision, Decision::Keep);
        // The last Date line counts; no date at all is expired; a future date is live.
        let two = format!(
            "Type: acknowledgment\nDate: {}\nDate: {}\n",
            compose::format_dt(ago(DAY)),
            compose::format_dt(ago(20 * DAY))
        );
        assert_eq!(decide(two.as_bytes()).decision, Decision::Remove);
        assert_eq!(decide(b"Type: data\nData: 1\nx").decision, Decision::Remove);
        let future = format!("TYPE: DATA\nDate: {}\n", compose::format_dt(ago(-DAY)));
        assert_eq!(decide(future.as_bytes()).decision, Decision::Keep);
        // Unknown or missing types are left alone; impossible dates too.
        assert_eq!(decide(b"Type: other\n").kind, None);
        assert_eq!(decide(b"hello").decision, Decision::Keep);
        let bad = decide(b"Type: data\nDate: 2026-02-30T00:00:00Z\n");
        assert!(bad.unreadable);
        assert_eq!(bad.decision, Decision::Keep);
        // Configured limits apply.
        let short = Limits {
            max_age_data: 60,
            ..Limits::default()
        };
        let (_, b) = compose::data_block(b"y", ago(61));
        assert_eq!(decide_block(&b, &short, now()).decision, Decision::Remove);
    }

    #[test]
    fn merged_blocks_lose_their_expired_entries_and_still_validate() {
        let (key, a) = compose::message_announcement([4; 20], "box", [1; 20], &[[6; 20]], ago(DAY));
        let (_, b) = compose::message_announcement([4; 20], "box", [2; 20], &[], ago(11 * DAY));
        let (_, c) = compose::message_announcement([4; 20], "box", [3; 20], &[], ago(2 * DAY));
        let mut block = a.clone();
        block.extend_from_slice(b"NextMessage\n");
        block.extend_from_slice(&b);
        block.extend_from_slice(b"nextmessage\n");
        block.extend_from_slice(&c);
        let v = decide(&block);
        assert_eq!((v.entries, v.entries_removed), (3, 1));
        let Decision::Rewrite(out) = v.decision else {
            panic!("{v:?}")
        };
        let mut want = a.clone();
        want.extend_from_slice(b"NextMessage\n");
        want.extend_from_slice(&c);
        assert_eq!(out, want);
        // The rewrite is a valid block: an empty upload merged into it keeps both entries.
        let merged = validate_merge(&key, Some(&out), &a, false, None, &Limits::default(), now());
        assert!(merged.is_ok(), "{merged:?}");
        // All live: left alone; all expired: removed.
        assert_eq!(decide(&a).decision, Decision::Keep);
        assert_eq!(decide(&b).decision, Decision::Remove);
        // Claims work the same way, with NextClaim.
        let k1 = "0123456789ABCDEF0123456789ABCDEF01234567";
        let (_, c1) = compose::address_claim(k1, "x@example.org", ago(12 * DAY));
        let (_, c2) = compose::address_claim(k1, "x@example.org", ago(DAY));
        let mut claims = c1.clone();
        claims.extend_from_slice(b"NextClaim\n");
        claims.extend_from_slice(&c2);
        let v = decide(&claims);
        assert_eq!(v.decision, Decision::Rewrite(c2.clone()));
        assert_eq!(v.kind, Some(Kind::AddressClaim));
    }

    #[test]
    fn a_part_without_a_date_inherits_the_one_before() {
        let d_old = compose::format_dt(ago(20 * DAY));
        let d_new = compose::format_dt(ago(DAY));
        let text = format!(
            "Type: message-announcement\nDate: {d_new}\nMessageHash: 1\nNextMessage\nMessageHash: 2\n\
             NextMessage\nDate: {d_old}\nMessageHash: 3\n"
        );
        let v = decide(text.as_bytes());
        assert_eq!((v.entries, v.entries_removed), (3, 1));
        assert_eq!(
            v.decision,
            Decision::Rewrite(
                format!(
                    "Type: message-announcement\nDate: {d_new}\nMessageHash: 1\nNextMessage\nMessageHash: 2\n"
                )
                .into_bytes()
            )
        );
    }

    #[test]
    fn entangled_files_are_judged_by_their_value() {
        let head = b"Source: entangled\nLastPublished: 1\nOriginallyPublished: 1\nOriginalPublisherID: ab\nDataType: string\n";
        let (_, a) = compose::message_announcement([4; 20], "box", [1; 20], &[], ago(DAY));
        let (_, b) = compose::message_announcement([4; 20], "box", [2; 20], &[], ago(11 * DAY));
        let mut value = b.clone();
        value.extend_from_slice(b"NextMessage\n");
        value.extend_from_slice(&a);
        let mut file = head.to_vec();
        // A stale length, as the original leaves after a merge.
        file.extend_from_slice(b"Data: 7\n");
        file.extend_from_slice(&value);
        let v = decide_file(&file, &Limits::default(), now());
        let mut want = head.to_vec();
        want.extend_from_slice(format!("Data: {}\n", a.len()).as_bytes());
        want.extend_from_slice(&a);
        assert_eq!(v.decision, Decision::Rewrite(want));
        // A data block inside: its own Data line ends its headers.
        let (_, d) = compose::data_block(b"payload", ago(11 * DAY));
        let mut file = head.to_vec();
        file.extend_from_slice(format!("Data: {}\n", d.len()).as_bytes());
        file.extend_from_slice(&d);
        assert_eq!(
            decide_file(&file, &Limits::default(), now()).decision,
            Decision::Remove
        );
        // The node state (pickle, no Type) is left alone.
        let mut state = head.to_vec();
        state.extend_from_slice(b"Data: 3\n\x80\x02}");
        assert_eq!(decide_file(&state, &Limits::default(), now()).kind, None);
    }

    #[test]
    fn a_tree_is_pruned_atomically_and_dry_runs_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        let (k_live, live) = compose::data_block(b"live", ago(DAY));
        let (k_dead, dead) = compose::data_block(b"dead", ago(11 * DAY));
        for (k, b) in [(&k_live, &live), (&k_dead, &dead)] {
            tree.write_atomic(k, b).unwrap();
        }
        let opts = PruneOptions {
            limits: Limits::default(),
            now: now(),
            dry_run: true,
        };
        let mut dry = PruneCounts::default();
        for l1 in walk::first_level(dir.path()).unwrap() {
            prune_first_level(dir.path(), &l1, &opts, &mut dry).unwrap();
        }
        assert!(tree.read(&k_dead).unwrap().is_some());
        let mut wet = PruneCounts::default();
        let opts = PruneOptions {
            dry_run: false,
            ..opts
        };
        for l1 in walk::first_level(dir.path()).unwrap() {
            prune_first_level(dir.path(), &l1, &opts, &mut wet).unwrap();
        }
        assert_eq!(dry, wet);
        let d = wet.types["data"];
        assert_eq!(
            (d.examined, d.removed, d.bytes_freed),
            (2, 1, dead.len() as u64)
        );
        assert!(tree.read(&k_dead).unwrap().is_none());
        assert_eq!(tree.read(&k_live).unwrap(), Some(live));
    }

    #[test]
    fn large_files_are_judged_from_their_head_or_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        // A big data block: its headers end in the first bytes; the payload is not read.
        let (k_big, big) = compose::data_block(&vec![b'x'; 100_000], ago(11 * DAY));
        tree.write_atomic(&k_big, &big).unwrap();
        let (head, len) = read_for_headers(&tree.block_path(&k_big)).unwrap().unwrap();
        assert_eq!((head.len(), len), (HEAD as usize, big.len() as u64));
        // A big announcement block (no Data line): read whole, rewritten whole.
        let mut parts = Vec::new();
        for i in 0..200u8 {
            let age = if i == 0 { 11 * DAY } else { DAY };
            parts.push(compose::message_announcement([4; 20], "in", [i; 20], &[], ago(age)).1);
        }
        let block = parts.join(&b"NextMessage\n"[..]);
        assert!(block.len() as u64 > HEAD);
        let k_ma = "ABCD".repeat(10);
        tree.write_atomic(&k_ma, &block).unwrap();
        let mut counts = PruneCounts::default();
        let opts = PruneOptions {
            limits: Limits::default(),
            now: now(),
            dry_run: false,
        };
        for l1 in walk::first_level(dir.path()).unwrap() {
            prune_first_level(dir.path(), &l1, &opts, &mut counts).unwrap();
        }
        assert!(tree.read(&k_big).unwrap().is_none());
        assert_eq!(counts.types["data"].bytes_freed, big.len() as u64);
        let want = parts[1..].join(&b"NextMessage\n"[..]);
        assert_eq!(tree.read(&k_ma).unwrap(), Some(want));
    }
}
