//! Follows one home's `auth.txt` as it grows: the server appends a line per claim,
//! ADDLOGIN, RMLOGIN, GENLOGIN and REPLOGIN (docs/protocol.md §5). Polled, not notified: a size
//! check every few hundred milliseconds is cheap and sees every append, whatever the file
//! system.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::ledger::{parse_line, Mapping};
use super::Entry;

/// Bound on one read, so a huge burst is taken in several polls.
const MAX_READ: u64 = 4 << 20;

pub struct Tail {
    path: PathBuf,
    ino: u64,
    offset: u64,
    /// An unfinished last line, completed by a later append.
    partial: Vec<u8>,
    /// The file's current mapping (as the server's table would load it).
    pub mapping: Mapping,
}

pub enum Polled {
    /// Complete lines appended since the last poll (possibly none).
    Lines(Vec<Entry>),
    /// The file was replaced or truncated: open it afresh.
    Reset,
}

impl Tail {
    /// Reads the whole file (a missing file is empty) and follows it from its end.
    pub fn open(path: &Path) -> io::Result<Tail> {
        let mut t = Tail {
            path: path.to_path_buf(),
            ino: 0,
            offset: 0,
            partial: Vec::new(),
            mapping: Mapping::default(),
        };
        match t.poll()? {
            Polled::Lines(_) => Ok(t),
            // A file replaced between the two reads: just read it again.
            Polled::Reset => Tail::open(path),
        }
    }

    pub fn poll(&mut self) -> io::Result<Polled> {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(if self.offset == 0 {
                    Polled::Lines(Vec::new())
                } else {
                    Polled::Reset
                });
            }
            Err(e) => return Err(e),
        };
        if self.offset > 0 && (meta.ino() != self.ino || meta.len() < self.offset) {
            return Ok(Polled::Reset);
        }
        self.ino = meta.ino();
        if meta.len() == self.offset {
            return Ok(Polled::Lines(Vec::new()));
        }
        let mut f = fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let want = (meta.len() - self.offset).min(MAX_READ);
        let mut buf = Vec::with_capacity(want as usize);
        f.take(want).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(Polled::Lines(Vec::new()));
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let lines: Vec<Entry> = String::from_utf8_lossy(&complete)
            .split('\n')
            .filter_map(parse_line)
            .collect();
        for e in &lines {
            self.mapping.set(e.clone());
        }
        Ok(Polled::Lines(lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appends_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.txt");
        fs::write(&path, "administrator AK d\nundefined K1 d\n").unwrap();
        let mut t = Tail::open(&path).unwrap();
        assert_eq!(t.mapping.user("K1"), Some("undefined"));
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"USER K1 d2\nUS").unwrap();
        let Polled::Lines(l) = t.poll().unwrap() else {
            panic!("reset")
        };
        assert_eq!(l.len(), 1);
        assert_eq!(t.mapping.user("K1"), Some("USER"));
        f.write_all(b"ER2 K2 d3\n").unwrap();
        let Polled::Lines(l) = t.poll().unwrap() else {
            panic!("reset")
        };
        assert_eq!(l[0].user, "USER2");
        assert_eq!(l[0].key, "K2");
        let Polled::Lines(l) = t.poll().unwrap() else {
            panic!("reset")
        };
        assert!(l.is_empty());
        // Replaced by a shorter file: start over.
        fs::write(&path, "x K d\n").unwrap();
        assert!(matches!(t.poll().unwrap(), Polled::Reset));
    }
}
