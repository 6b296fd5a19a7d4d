//! The input journal: where the built-in server makes an upload durable before `DONE`.
//!
//! The original writes one `inputqueue/` file per upload. Making a new file durable costs a
//! journal commit of the file system (~2–5 ms on the disks measured), and a group commit
//! covers only the blocks that are waiting at that moment — at most one per connection — so
//! per-file queues bound a server to about `connections / commit time` acknowledged blocks
//! per second. Here a committer round instead appends its blocks to a *segment*: a file
//! written full of zeros once and then only overwritten, so that `fdatasync` writes the data
//! and flushes, with no metadata to commit (~0.2 ms).
//!
//! Layout of `<home>/journal/seg-N` (little-endian):
//! - header, [`HEADER`] bytes: magic `SHJRNL01`, generation, entries written, entries settled;
//! - entries from offset [`HEADER`], 8-byte aligned: magic `ENRJ`, kind, generation, length,
//!   the sha1 of the content (which is also its queue name), the content.
//!
//! Each use of a segment gets a new generation, so entries left from an earlier use are
//! never taken for new ones; a torn entry fails its sha1. An entry is *settled* once the
//! worker's result for it is durable; the header's settled count only ever follows that, so
//! recovery replays every entry after it (the merge rules make a replay harmless, as for a
//! crash between a block's rename and its queue file's deletion). A segment whose entries
//! are all settled is reused or deleted. Between runs, a segment holds unsettled entries
//! only after a crash: a clean stop processes everything first.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha1::{Digest as _, Sha1};

use super::{sync_dir, StoreError};

/// The journal's directory in a server home.
pub const DIR_NAME: &str = "journal";

/// Size of a normal segment; a larger entry gets a segment of its own size.
pub const SEGMENT_SIZE: u64 = 8 << 20;
/// Bytes before the first entry.
pub const HEADER: u64 = 64;
/// Fully settled normal segments kept for reuse; more are deleted.
const SPARE_SEGMENTS: usize = 2;

const SEGMENT_MAGIC: &[u8; 8] = b"SHJRNL01";
const ENTRY_MAGIC: &[u8; 4] = b"ENRJ";
/// magic 4, kind 1, pad 3, generation 8, length 4, sha1 20.
const ENTRY_HEADER: u64 = 40;

/// What an entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An input-queue file (docs/protocol.md §6.1).
    Input = 1,
    /// A send-queue file for the replication peer (docs/protocol.md §10.1).
    Send = 2,
}

/// The segment an entry lives in, to settle it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u32);

/// An entry found by [`Journal::open`] that the worker has not settled.
#[derive(Debug)]
pub struct Recovered {
    pub kind: Kind,
    /// Upper-case hex sha1 of `content`: its queue-file name.
    pub name: String,
    pub content: Vec<u8>,
    pub slot: Slot,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    generation: u64,
    /// Where the next entry goes.
    end: u64,
    entries: u64,
    settled: u64,
    /// No more entries go here.
    sealed: bool,
    /// An entry could not be settled (or its write not confirmed): the header's settled
    /// count stops here and the segment is kept, so the next start replays from it.
    held: bool,
}

#[derive(Debug, Default)]
struct State {
    segments: HashMap<u32, Segment>,
    active: Option<u32>,
    /// Fully settled normal segments, ready for a new generation.
    spare: Vec<u32>,
    next_generation: u64,
    next_index: u32,
    /// Queue names of unsettled input entries, for the "identical upload" check.
    pending: HashMap<String, u32>,
}

/// The journal of one server home; shared by the committer (appends) and the worker
/// (settles).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
}

fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("seg-{index}"))
}

/// The sha1 of an entry's content; upper-case hex, it is the queue name.
pub type Sha = [u8; 20];

pub fn digest(content: &[u8]) -> Sha {
    Sha1::digest(content).into()
}

fn encode_entry(out: &mut Vec<u8>, kind: Kind, generation: u64, sha: &Sha, content: &[u8]) {
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(sha);
    out.extend_from_slice(content);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn entry_len(content: usize) -> u64 {
    (ENTRY_HEADER + content as u64).next_multiple_of(8)
}

impl Journal {
    /// Opens (creating) `dir`, and returns the entries a crash left unsettled, oldest first.
    pub fn open(dir: &Path) -> Result<(Arc<Journal>, Vec<Recovered>), StoreError> {
        if !dir.is_dir() {
            super::ensure_dir(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut st = State::default();
        let mut found: Vec<(u64, Vec<Recovered>)> = Vec::new();
        for e in fs::read_dir(dir).map_err(StoreError::at(dir))? {
            let e = e.map_err(StoreError::at(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.ends_with(".tmp") {
                // A segment whose creation a crash interrupted: never used.
                fs::remove_file(&path).map_err(StoreError::at(&path))?;
                continue;
            }
            let Some(index) = name
                .strip_prefix("seg-")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                tracing::warn!("{}: not a journal segment; left alone", path.display());
                continue;
            };
            let (seg, entries) = read_segment(&path, index)?;
            st.next_index = st.next_index.max(index + 1);
            st.next_generation = st.next_generation.max(seg.generation + 1);
            for r in &entries {
                if r.kind == Kind::Input {
                    *st.pending.entry(r.name.clone()).or_default() += 1;
                }
            }
            let free = seg.settled == seg.entries;
            let normal = seg.size == SEGMENT_SIZE;
            found.push((seg.generation, entries));
            if free && !normal {
                fs::remove_file(&seg.path).map_err(StoreError::at(&seg.path))?;
                continue;
            }
            if free {
                st.spare.push(index);
            }
            st.segments.insert(index, seg);
        }
        st.next_generation = st.next_generation.max(1);
        if st.spare.is_empty() {
            // Made now, so that the first upload does not wait for 8 MiB of zeros.
            let index = st.next_index;
            st.next_index += 1;
            st.segments
                .insert(index, create_segment(dir, index, SEGMENT_SIZE)?);
            st.spare.push(index);
        }
        found.sort_by_key(|(g, _)| *g);
        let recovered = found.into_iter().flat_map(|(_, e)| e).collect();
        Ok((
            Arc::new(Journal {
                dir: dir.to_path_buf(),
                state: Mutex::new(st),
            }),
            recovered,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated in a way that matters:
        // recovery trusts only what is on disk.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts queue files waiting outside the journal (left in `inputqueue/`) as pending
    /// uploads too, until [`Journal::settle`] names them: an identical upload is not queued
    /// while they wait.
    pub fn add_pending<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut st = self.lock();
        for n in names {
            *st.pending.entry(n.to_string()).or_default() += 1;
        }
    }

    /// Whether an upload with this queue name is waiting to be settled.
    pub fn is_pending(&self, name: &str) -> bool {
        self.lock().pending.contains_key(name)
    }

    #[cfg(test)]
    /// Appends entries and makes them durable (one `fdatasync` per segment touched); returns
    /// each entry's queue name and slot, in order. On error nothing may be acknowledged.
    pub fn append(&self, entries: &[(Kind, &[u8])]) -> Result<Vec<(String, Slot)>, StoreError> {
        let digested: Vec<(Kind, Sha, &[u8])> =
            entries.iter().map(|&(k, c)| (k, digest(c), c)).collect();
        let slots = self.append_digested(&digested)?;
        Ok(digested
            .iter()
            .map(|(_, d, _)| hex::encode_upper(d))
            .zip(slots)
            .collect())
    }

    /// Appends entries whose contents' [`digest`]s the caller has already, and makes them
    /// durable (one `fdatasync` per segment touched); returns each entry's slot, in order. On
    /// error nothing may be acknowledged.
    pub fn append_digested(&self, entries: &[(Kind, Sha, &[u8])]) -> Result<Vec<Slot>, StoreError> {
        struct Write {
            file: Arc<File>,
            path: PathBuf,
            at: u64,
            bytes: Vec<u8>,
            index: u32,
        }
        let mut writes: Vec<Write> = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        {
            let mut st = self.lock();
            for &(kind, ref sha, content) in entries {
                let need = entry_len(content.len());
                let index = self.room_for(&mut st, need)?;
                let seg = st.segments.get_mut(&index).expect("active segment");
                if writes.last().is_none_or(|w| w.index != index) {
                    writes.push(Write {
                        file: seg.file.clone(),
                        path: seg.path.clone(),
                        at: seg.end,
                        bytes: Vec::new(),
                        index,
                    });
                }
                let w = writes.last_mut().expect("just pushed");
                encode_entry(&mut w.bytes, kind, seg.generation, sha, content);
                seg.end += need;
                seg.entries += 1;
                out.push(Slot(index));
            }
        }
        let mut result = Ok(());
        for w in &writes {
            let r = w
                .file
                .write_all_at(&w.bytes, w.at)
                .and_then(|()| {
                    let st = self.lock();
                    let seg = &st.segments[&w.index];
                    let mut head = Vec::with_capacity(24);
                    head.extend_from_slice(SEGMENT_MAGIC);
                    head.extend_from_slice(&seg.generation.to_le_bytes());
                    head.extend_from_slice(&seg.entries.to_le_bytes());
                    w.file.write_all_at(&head, 0)
                })
                .and_then(|()| w.file.sync_data());
            if let Err(e) = r {
                result = Err(StoreError::at(&w.path)(e));
            }
        }
        let mut st = self.lock();
        if let Err(e) = result {
            // What reached the disk is unknown: no more entries go to these segments, and
            // they are kept until a restart replays whatever is valid in them.
            for w in &writes {
                if let Some(seg) = st.segments.get_mut(&w.index) {
                    seg.sealed = true;
                    seg.held = true;
                }
                if st.active == Some(w.index) {
                    st.active = None;
                }
            }
            return Err(e);
        }
        for (kind, sha, _) in entries {
            if *kind == Kind::Input {
                *st.pending.entry(hex::encode_upper(sha)).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// The active segment if `need` bytes fit there, else a fresh one (sealing the old).
    fn room_for(&self, st: &mut State, need: u64) -> Result<u32, StoreError> {
        if let Some(a) = st.active {
            let seg = &st.segments[&a];
            if seg.end + need <= seg.size {
                return Ok(a);
            }
            st.segments.get_mut(&a).expect("active").sealed = true;
            st.active = None;
            self.free_if_settled(st, a)?;
        }
        let normal = HEADER + need <= SEGMENT_SIZE;
        let index = match st.spare.pop() {
            Some(i) if normal => i,
            other => {
                st.spare.extend(other);
                let index = st.next_index;
                st.next_index += 1;
                let size = if normal { SEGMENT_SIZE } else { HEADER + need };
                let seg = create_segment(&self.dir, index, size)?;
                st.segments.insert(index, seg);
                index
            }
        };
        let generation = st.next_generation;
        st.next_generation += 1;
        let seg = st.segments.get_mut(&index).expect("segment");
        seg.generation = generation;
        seg.end = HEADER;
        seg.entries = 0;
        seg.settled = 0;
        seg.sealed = false;
        seg.held = false;
        // A new generation with nothing settled, before any entry of it is written.
        let mut head = Vec::with_capacity(32);
        head.extend_from_slice(SEGMENT_MAGIC);
        head.extend_from_slice(&generation.to_le_bytes());
        head.extend_from_slice(&0u64.to_le_bytes());
        head.extend_from_slice(&0u64.to_le_bytes());
        seg.file
            .write_all_at(&head, 0)
            .map_err(StoreError::at(&seg.path))?;
        st.active = Some(index);
        Ok(index)
    }

    /// Records that the worker's results for these entries are durable. `names` are the
    /// queue names of the input entries among them.
    pub fn settle(&self, slots: &[Slot], names: &[&str]) {
        let mut st = self.lock();
        for n in names {
            if let Some(c) = st.pending.get_mut(*n) {
                *c -= 1;
                if *c == 0 {
                    st.pending.remove(*n);
                }
            }
        }
        let mut touched: Vec<u32> = Vec::new();
        for s in slots {
            if let Some(seg) = st.segments.get_mut(&s.0) {
                seg.settled += 1;
                if touched.last() != Some(&s.0) {
                    touched.push(s.0);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for index in touched {
            let seg = &st.segments[&index];
            if !seg.held {
                // Page cache only: the count is a lower bound whenever it reaches the disk.
                if let Err(e) = seg.file.write_all_at(&seg.settled.to_le_bytes(), 24) {
                    tracing::warn!("{}: recording settled entries: {e}", seg.path.display());
                }
            }
            if let Err(e) = self.free_if_settled(&mut st, index) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Marks entries whose results could not be stored: their segments keep every entry
    /// from here on for the next start.
    pub fn hold(&self, slots: &[Slot]) {
        let mut st = self.lock();
        for s in slots {
            if let Some(seg) = st.segments.get_mut(&s.0) {
                seg.held = true;
            }
        }
    }

    fn free_if_settled(&self, st: &mut State, index: u32) -> Result<(), StoreError> {
        let seg = &st.segments[&index];
        if !seg.sealed || seg.held || seg.settled < seg.entries {
            return Ok(());
        }
        if seg.size == SEGMENT_SIZE && st.spare.len() < SPARE_SEGMENTS {
            st.spare.push(index);
            return Ok(());
        }
        let seg = st.segments.remove(&index).expect("segment");
        fs::remove_file(&seg.path).map_err(StoreError::at(&seg.path))
    }
}

/// Creates a segment of `size` zero bytes, durable with its name, so that writing into it
/// later changes no metadata.
fn create_segment(dir: &Path, index: u32, size: u64) -> Result<Segment, StoreError> {
    let path = segment_path(dir, index);
    let tmp = dir.join(format!("seg-{index}.tmp"));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(StoreError::at(&tmp))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(StoreError::at(&tmp))?;
        left -= n as u64;
    }
    f.sync_all().map_err(StoreError::at(&tmp))?;
    fs::rename(&tmp, &path).map_err(StoreError::at(&path))?;
    sync_dir(dir)?;
    Ok(Segment {
        file: Arc::new(f),
        path,
        size,
        generation: 0,
        end: HEADER,
        entries: 0,
        settled: 0,
        sealed: true,
        held: false,
    })
}

/// Reads a segment: its state, and its unsettled valid entries.
fn read_segment(path: &Path, index: u32) -> Result<(Segment, Vec<Recovered>), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::at(path))?;
    let bytes = fs::read(path).map_err(StoreError::at(path))?;
    let size = bytes.len() as u64;
    let mut seg = Segment {
        file: Arc::new(file),
        path: path.to_path_buf(),
        size,
        generation: 0,
        end: HEADER,
        entries: 0,
        settled: 0,
        sealed: true,
        held: false,
    };
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if size < HEADER || &bytes[0..8] != SEGMENT_MAGIC {
        // Never used (all zeros), or not ours to read: nothing in it to replay.
        return Ok((seg, Vec::new()));
    }
    seg.generation = u64_at(8);
    let settled_mark = u64_at(24);
    let mut all = Vec::new();
    let mut at = HEADER as usize;
    while at + ENTRY_HEADER as usize <= bytes.len() {
        let h = &bytes[at..at + ENTRY_HEADER as usize];
        if &h[0..4] != ENTRY_MAGIC || u64_at(at + 8) != seg.generation {
            break;
        }
        let kind = match h[4] {
            1 => Kind::Input,
            2 => Kind::Send,
            _ => break,
        };
        let len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
        let start = at + ENTRY_HEADER as usize;
        let Some(content) = bytes.get(start..start + len) else {
            break;
        };
        let sha = Sha1::digest(content);
        if sha[..] != h[20..40] {
            break;
        }
        all.push((kind, hex::encode_upper(sha), content.to_vec()));
        at += entry_len(len) as usize;
    }
    seg.entries = all.len() as u64;
    seg.end = at as u64;
    seg.settled = settled_mark.min(seg.entries);
    let recovered = all
        .into_iter()
        .skip(seg.settled as usize)
        .map(|(kind, name, content)| Recovered {
            kind,
            name,
            content,
            slot: Slot(index),
        })
        .collect();
    Ok((seg, recovered))
}

/// Entries written and not yet settled in the journal at `dir`, from the segment headers:
/// how far behind the worker is, for the supervisor and tests (another process may read it
/// at any time; a missing journal counts as empty).
pub fn pending(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("seg-") {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        let mut head = [0u8; 32];
        if f.read_exact_at(&mut head, 0).is_err() || &head[0..8] != SEGMENT_MAGIC {
            continue;
        }
        let written = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        let settled = u64::from_le_bytes(head[24..32].try_into().expect("8 bytes"));
        total += written.saturating_sub(settled);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty journal in a temporary folder (kept alive by the first element).
    fn fresh() -> (tempfile::TempDir, PathBuf, Arc<Journal>) {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let (j, rec) = Journal::open(&jdir).unwrap();
        assert!(rec.is_empty());
        (dir, jdir, j)
    }

    fn names(r: &[Recovered]) -> Vec<&str> {
        r.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn append_settle_recover() {
        let (_dir, jdir, j) = fresh();
        let got = j
            .append(&[(Kind::Input, b"one"), (Kind::Send, b"two")])
            .unwrap();
        assert_eq!(got[0].0, crate::store::queue::name_of(b"one"));
        assert!(j.is_pending(&got[0].0));
        assert!(!j.is_pending(&got[1].0));
        let more = j.append(&[(Kind::Input, b"three")]).unwrap();
        assert_eq!(pending(&jdir), 3);
        // The first two settle; a crash now must replay only the third.
        j.settle(&[got[0].1, got[1].1], &[&got[0].0]);
        assert!(!j.is_pending(&got[0].0));
        assert_eq!(pending(&jdir), 1);
        drop(j);
        let (j, rec) = Journal::open(&jdir).unwrap();
        assert_eq!(names(&rec), vec![more[0].0.as_str()]);
        assert_eq!(rec[0].content, b"three");
        assert!(j.is_pending(&more[0].0));
        // New entries go to a new generation; the old segment frees once settled.
        let next = j.append(&[(Kind::Input, b"four")]).unwrap();
        j.settle(&[rec[0].slot], &[&rec[0].name]);
        j.settle(&[next[0].1], &[&next[0].0]);
        assert_eq!(pending(&jdir), 0);
        drop(j);
        let (_, rec) = Journal::open(&jdir).unwrap();
        assert!(rec.is_empty());
    }

    #[test]
    fn torn_entries_are_not_replayed() {
        let (_dir, jdir, j) = fresh();
        let a = j
            .append(&[(Kind::Input, b"alpha"), (Kind::Input, b"beta")])
            .unwrap();
        drop(j);
        let seg = segment_path(&jdir, 0);
        let mut bytes = fs::read(&seg).unwrap();
        let second = (HEADER + entry_len(5) + ENTRY_HEADER) as usize;
        bytes[second] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let (_, rec) = Journal::open(&jdir).unwrap();
        assert_eq!(names(&rec), vec![a[0].0.as_str()]);
    }

    #[test]
    fn entries_of_an_earlier_use_are_not_replayed() {
        let (_dir, jdir, j) = fresh();
        let a = j
            .append(&[(Kind::Input, b"alpha"), (Kind::Input, b"beta")])
            .unwrap();
        // Fills a second segment exactly, sealing the first.
        let big = vec![7u8; (SEGMENT_SIZE - HEADER - ENTRY_HEADER) as usize];
        let b = j.append(&[(Kind::Input, &big)]).unwrap();
        assert_ne!(a[0].1, b[0].1);
        j.settle(&[a[0].1, a[1].1], &[&a[0].0, &a[1].0]);
        // Reuses the first segment: "gamma" overwrites "alpha"; "beta" stays on disk,
        // valid but of the earlier generation.
        let c = j.append(&[(Kind::Input, b"gamma")]).unwrap();
        assert_eq!(c[0].1, a[0].1);
        drop(j);
        let (_, rec) = Journal::open(&jdir).unwrap();
        assert_eq!(names(&rec), vec![b[0].0.as_str(), c[0].0.as_str()]);
    }

    #[test]
    fn oversize_entry_gets_its_own_segment_and_held_segments_replay() {
        let (_dir, jdir, j) = fresh();
        let big = vec![1u8; SEGMENT_SIZE as usize];
        let a = j.append(&[(Kind::Input, &big)]).unwrap();
        let b = j.append(&[(Kind::Input, b"small")]).unwrap();
        assert_ne!(a[0].1, b[0].1);
        j.settle(&[a[0].1], &[&a[0].0]);
        // The oversize segment is gone once settled.
        for e in fs::read_dir(&jdir).unwrap() {
            assert_eq!(e.unwrap().metadata().unwrap().len(), SEGMENT_SIZE);
        }
        // A held entry keeps its segment's settled mark where it was.
        let c = j.append(&[(Kind::Input, b"later")]).unwrap();
        j.hold(&[b[0].1]);
        j.settle(&[c[0].1], &[&c[0].0]);
        drop(j);
        let (_, rec) = Journal::open(&jdir).unwrap();
        assert_eq!(names(&rec), vec![b[0].0.as_str(), c[0].0.as_str()]);
    }
}
