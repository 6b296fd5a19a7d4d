//! A home's `server.log` family as `storeherd logs` reads it: the file names (`server.log`,
//! then `server.log.1` … oldest last, as the supervisor's writer rotates them), the last
//! lines across rotations, the lines written since a [`Cursor`], and several homes' lines
//! interleaved by time.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// The file an instance's output goes to, in its home.
pub const FILE: &str = "server.log";

/// More rotated files than any limit would keep: the bound of the search for them.
const MAX_FAMILY: u32 = 1000;

/// The path of rotated file `n` (`server.log.n`).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Where a reader of one family stopped: a file (by inode, which a rotation's rename keeps)
/// and the byte after the last complete line read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub inode: u64,
    pub offset: u64,
}

/// The family's files that exist, oldest first, opened at once so that a rotation while
/// reading renames them under us without changing what we read.
fn open_family(path: &Path) -> io::Result<Vec<(File, u64)>> {
    let mut files = Vec::new();
    for n in (0..MAX_FAMILY).map(|n| (n > 0).then_some(n)) {
        let p = n.map_or_else(|| path.to_owned(), |n| rotated_path(path, n));
        match File::open(&p) {
            Ok(f) => {
                let ino = f.metadata()?.ino();
                files.push((f, ino));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
    }
    files.reverse();
    Ok(files)
}

/// Reads `file` from `from`, at most `max` bytes, keeping complete lines only; returns the
/// lines and the offset after the last one.
fn read_lines(file: &mut File, from: u64, max: usize) -> io::Result<(Vec<String>, u64)> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(max as u64).read_to_end(&mut buf)?;
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = buf[..end]
        .split_inclusive(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(&l[..l.len() - 1]).into_owned())
        .collect();
    Ok((lines, from + end as u64))
}

/// The last `n` lines of the family (newest last), at most `max_bytes` of them, and the
/// cursor at the end of `server.log`.
pub fn tail(path: &Path, n: usize, max_bytes: usize) -> io::Result<(Vec<String>, Cursor)> {
    let mut files = open_family(path)?;
    let mut cursor = Cursor::default();
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let (mut have, mut bytes) = (0, 0);
    for (k, (file, ino)) in files.iter_mut().rev().enumerate() {
        let len = file.metadata()?.len();
        // Only the end of a file can hold the lines wanted; the bound keeps reads short.
        let from = len.saturating_sub(max_bytes as u64);
        let (mut lines, end) = read_lines(file, from, max_bytes)?;
        if from > 0 && !lines.is_empty() {
            // The first piece may be the end of a line cut by the window.
            lines.remove(0);
        }
        if k == 0 {
            cursor = Cursor {
                inode: *ino,
                offset: end,
            };
        }
        have += lines.len();
        bytes += lines.iter().map(|l| l.len() + 1).sum::<usize>();
        chunks.push(lines);
        if have >= n || bytes >= max_bytes {
            break;
        }
    }
    chunks.reverse();
    let mut lines = chunks.concat();
    lines.drain(..lines.len().saturating_sub(n));
    // Drop the oldest lines that would carry the answer past `max_bytes`.
    let mut total: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut cut = 0;
    while total > max_bytes && cut < lines.len() {
        total -= lines[cut].len() + 1;
        cut += 1;
    }
    lines.drain(..cut);
    Ok((lines, cursor))
}

/// The lines written after `cursor` (at most about `max_bytes`, complete lines only), and
/// the cursor after them. A cursor whose file is gone (rotated out of the family) reads the
/// family from its oldest line; a file shorter than the cursor (truncated) from its start.
pub fn since(path: &Path, cursor: Cursor, max_bytes: usize) -> io::Result<(Vec<String>, Cursor)> {
    let mut files = open_family(path)?;
    let start = files.iter().position(|(_, ino)| *ino == cursor.inode);
    let mut out = Vec::new();
    let mut budget = max_bytes;
    let mut at = cursor;
    let first = start.unwrap_or(0);
    for (k, (file, ino)) in files.iter_mut().enumerate().skip(first) {
        let len = file.metadata()?.len();
        let from = match start {
            Some(s) if s == k && cursor.offset <= len => cursor.offset,
            _ => 0,
        };
        let (lines, end) = read_lines(file, from, budget)?;
        budget = budget.saturating_sub((end - from) as usize);
        out.extend(lines);
        at = Cursor {
            inode: *ino,
            offset: end,
        };
        // Stop in this file when the budget ran out (or a line is still being written).
        if end < len {
            break;
        }
    }
    if files.is_empty() {
        at = Cursor::default();
    }
    Ok((out, at))
}

/// The time a line starts with: RFC 3339 in one of its first three words (the built-in
/// server's tracing, the supervisor's own notes), or the original server's
/// `2026-11-24 05:30:57,123` (Python logging's local time).
pub fn line_time(line: &str) -> Option<DateTime<Utc>> {
    let words: Vec<&str> = line.split_whitespace().take(3).collect();
    for w in &words {
        if let Ok(t) = DateTime::parse_from_rfc3339(w) {
            return Some(t.with_timezone(&Utc));
        }
    }
    if let [date, time, ..] = words.as_slice() {
        let naive =
            NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S,%3f")
                .ok()?;
        return chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc));
    }
    None
}

/// Every stream's lines in one list ordered by time (ties: stream order). A line without a
/// time of its own (a traceback, a wrapped message) stays with the line before it; leading
/// ones take the time of the first line that has one.
pub fn interleave<K: Copy>(streams: Vec<(K, Vec<String>)>) -> Vec<(K, String)> {
    // (time, stream, position): sorting on it keeps each stream's own order.
    type Key = (Option<DateTime<Utc>>, usize, usize);
    let mut keyed: Vec<(Key, K, String)> = Vec::new();
    for (s, (key, lines)) in streams.into_iter().enumerate() {
        let first = lines.iter().find_map(|l| line_time(l));
        let mut last = first;
        for (i, line) in lines.into_iter().enumerate() {
            if let Some(t) = line_time(&line) {
                last = Some(t);
            }
            keyed.push(((last, s, i), key, line));
        }
    }
    keyed.sort_by_key(|e| e.0);
    keyed.into_iter().map(|(_, k, l)| (k, l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn tail_reads_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(FILE);
        write(&rotated_path(&log, 2), "a1\na2\n");
        write(&rotated_path(&log, 1), "b1\nb2\n");
        write(&log, "c1\nc2\n");
        let (lines, cur) = tail(&log, 5, 1 << 20).unwrap();
        assert_eq!(lines, ["a2", "b1", "b2", "c1", "c2"]);
        assert_eq!(cur.offset, 6);
        let (lines, _) = tail(&log, 100, 1 << 20).unwrap();
        assert_eq!(lines.len(), 6);
        let (lines, _) = tail(&log, 1, 1 << 20).unwrap();
        assert_eq!(lines, ["c2"]);
        // The byte bound keeps the newest lines.
        let (lines, _) = tail(&log, 100, 7).unwrap();
        assert_eq!(lines, ["c1", "c2"]);
        // A line still being written is left for the next read.
        write(&log, "c1\nc2\npartial");
        let (lines, cur) = tail(&log, 2, 1 << 20).unwrap();
        assert_eq!(
            (lines, cur.offset),
            (vec!["c1".to_string(), "c2".into()], 6)
        );
    }

    #[test]
    fn since_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(FILE);
        write(&log, "one\n");
        let (_, cur) = tail(&log, 10, 1 << 20).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        // Rotated as the writer does: server.log → server.log.1, a fresh server.log.
        std::fs::rename(&log, rotated_path(&log, 1)).unwrap();
        write(&log, "three\n");
        let (lines, cur) = since(&log, cur, 1 << 20).unwrap();
        assert_eq!(lines, ["two", "three"]);
        let (lines, cur2) = since(&log, cur, 1 << 20).unwrap();
        assert!(lines.is_empty());
        assert_eq!(cur, cur2);
        // The budget stops at a line boundary; the rest comes next time.
        write(&log, "three\nfour\nfive\n");
        let (lines, cur) = since(&log, cur, 5).unwrap();
        assert_eq!(lines, ["four"]);
        let (lines, _) = since(&log, cur, 1 << 20).unwrap();
        assert_eq!(lines, ["five"]);
    }

    #[test]
    fn a_lost_cursor_rereads_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(FILE);
        write(&log, "x\ny\n");
        let gone = Cursor {
            inode: u64::MAX,
            offset: 3,
        };
        assert_eq!(since(&log, gone, 1 << 20).unwrap().0, ["x", "y"]);
        let missing = dir.path().join("nothing.log");
        assert_eq!(
            since(&missing, gone, 1 << 20).unwrap(),
            (vec![], Cursor::default())
        );
    }

    #[test]
    fn times_of_every_writer() {
        let t = |s: &str| line_time(s).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-11-24T05:30:57.123456Z  INFO accepted"),
            Some("2026-11-24T05:30:57.123456+00:00".into())
        );
        assert_eq!(
            t("storeherd: 2026-11-24T05:30:58.000Z instance 1 started pid 7"),
            Some("2026-11-24T05:30:58+00:00".into())
        );
        assert!(t("2026-11-24 05:30:57,123 INFO  __main__ MainThread hello").is_some());
        assert_eq!(t("Traceback (most recent call last):"), None);
    }

    #[test]
    fn interleaving_orders_by_time_and_keeps_untimed_lines_in_place() {
        let a = vec![
            "2026-01-01T00:00:01Z a1".to_string(),
            "  continuation of a1".to_string(),
            "2026-01-01T00:00:03Z a3".to_string(),
        ];
        let b = vec![
            "untimed start".to_string(),
            "2026-01-01T00:00:02Z b2".to_string(),
        ];
        let merged: Vec<(u32, String)> = interleave(vec![(1, a), (2, b)]);
        let order: Vec<String> = merged.iter().map(|(k, l)| format!("{k} {l}")).collect();
        assert_eq!(
            order,
            [
                "1 2026-01-01T00:00:01Z a1",
                "1   continuation of a1",
                "2 untimed start",
                "2 2026-01-01T00:00:02Z b2",
                "1 2026-01-01T00:00:03Z a3",
            ]
        );
    }
}
