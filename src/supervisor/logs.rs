//! An instance's output: each line of its stdout/stderr goes to tracing (span `instance`) and to
//! `<home>/server.log`, which is rotated by size so that the files of one home stay bounded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Size limits of one home's `server.log` family.
///
/// `files` counts every file kept, `server.log` included: `server.log`, `server.log.1` …
/// `server.log.<files-1>`. The total on disk never exceeds `max_bytes × files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Largest size of one file, in bytes.
    pub max_bytes: u64,
    /// Number of files kept, the current one included (at least 1).
    pub files: u32,
}

impl Default for LogLimits {
    /// 10 MiB × 5 files: a few days of a busy original server's chatter, 50 MiB per home.
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 * 1024 * 1024,
            files: 5,
        }
    }
}

/// Longest line passed on whole; longer output is cut into pieces of this size, so that a
/// child writing without newlines cannot make the supervisor buffer without limit.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines waiting for the file writer; beyond this the readers wait, and so does the child
/// (back-pressure through the pipe, as if it wrote the file itself).
const QUEUE_LINES: usize = 1024;

/// `server.log` of one home, appended line by line and rotated by size.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens (or creates) `path` for appending; an existing file's size counts.
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<RotatingLog> {
        let limits = LogLimits {
            max_bytes: limits.max_bytes.max(2),
            files: limits.files.max(1),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            limits,
            file,
            size,
        })
    }

    /// The path of rotated file `n` (`server.log.n`).
    pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
        crate::serverlog::rotated_path(path, n)
    }

    /// Appends one line (a newline is added). A line longer than a whole file is cut to fit.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let room = (self.limits.max_bytes - 1) as usize;
        let line = &line[..line.len().min(room)];
        let need = line.len() as u64 + 1;
        if self.size > 0 && self.size + need > self.limits.max_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += need;
        Ok(())
    }

    /// server.log.(n-1) → .n … server.log → .1, the oldest dropped; then a fresh server.log.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.files - 1;
        if keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        match fs::remove_file(Self::rotated_path(&self.path, keep)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for n in (1..keep).rev() {
            match fs::rename(
                Self::rotated_path(&self.path, n),
                Self::rotated_path(&self.path, n + 1),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, Self::rotated_path(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Level of a line as tracing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Where an instance's lines go: the file writer thread, fed through a queue.
///
/// Clones share the writer; it ends (and closes the file) when every clone is dropped.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Entry>,
}

#[derive(Debug)]
enum Entry {
    Line(Vec<u8>),
    /// Answered once every entry queued before it is written.
    Flush(oneshot::Sender<()>),
}

impl LogSink {
    /// Opens `path` and starts its writer thread. File errors after opening are reported
    /// through tracing (once per streak of failures) and do not stop the instance.
    pub fn open(id: u32, path: &Path, limits: LogLimits) -> io::Result<LogSink> {
        let mut log = RotatingLog::open(path, limits)?;
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE_LINES);
        // A plain thread, not the runtime's blocking pool: file writes may stall on a slow
        // disk, and a runtime shutting down must not wait for it.
        std::thread::Builder::new()
            .name(format!("log-{id}"))
            .spawn(move || {
                let mut failing = false;
                while let Some(entry) = rx.blocking_recv() {
                    let line = match entry {
                        Entry::Line(line) => line,
                        Entry::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    match log.write_line(&line) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::error!(instance = id, path = %log.path.display(),
                                "cannot write the server log: {e}");
                        }
                        Err(_) => {}
                    }
                }
            })?;
        Ok(LogSink { tx })
    }

    /// Queues one line for the file (waits while the queue is full).
    pub async fn write(&self, line: Vec<u8>) {
        // An error only means the writer thread is gone (it never stops on its own).
        let _ = self.tx.send(Entry::Line(line)).await;
    }

    /// Returns once every line queued so far is in the file (written, not fsynced).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Entry::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Queues a line without waiting; dropped if the queue is full. For the supervisor's own
    /// notes (start, exit), which must never block the caller.
    pub fn note(&self, line: String) {
        let _ = self.tx.try_send(Entry::Line(line.into_bytes()));
    }
}

/// Starts the task that reads `pipe` line by line into tracing and `sink`, in the span
/// `instance` with field `instance = id`. It ends at end of file.
pub fn capture<R>(id: u32, stream: Stream, pipe: R, sink: LogSink) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let span = tracing::info_span!("instance", instance = id);
    tokio::spawn(
        async move {
            let mut reader = BufReader::with_capacity(8 * 1024, pipe);
            let mut buf = Vec::with_capacity(256);
            loop {
                buf.clear();
                match read_line_limited(&mut reader, &mut buf, MAX_LINE).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("reading the server's {stream:?}: {e}");
                        break;
                    }
                }
                let line = clean_line(&buf);
                emit(stream, &line);
                sink.write(line).await;
            }
        }
        .instrument(span),
    )
}

/// Reads up to and including `\n`, or `limit` bytes, whichever comes first. Returns the
/// number of bytes read (0 at end of file).
async fn read_line_limited<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    out: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let want = limit - out.len();
        let (take, done) = match available.iter().take(want).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => {
                let take = available.len().min(want);
                (take, out.len() + take >= limit)
            }
        };
        out.extend_from_slice(&available[..take]);
        reader.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

/// Drops the line ending and terminal colour sequences (the built-in server's tracing output
/// carries ANSI colours even into a pipe).
pub fn clean_line(raw: &[u8]) -> Vec<u8> {
    let mut end = raw.len();
    while end > 0 && (raw[end - 1] == b'\n' || raw[end - 1] == b'\r') {
        end -= 1;
    }
    let raw = &raw[..end];
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == 0x1b && raw.get(i + 1) == Some(&b'[') {
            // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e.
            let mut j = i + 2;
            while j < raw.len() && !(0x40..=0x7e).contains(&raw[j]) {
                j += 1;
            }
            i = j + 1;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// The level a line announces in one of its first three words (`2026-… INFO msg`,
/// `WARNING:root:msg`, `[error] msg`), and the text after that word; `None` when it names
/// none.
pub fn level_prefix(line: &str) -> Option<(Level, &str)> {
    let mut pos = 0;
    for _ in 0..3 {
        let rest = &line[pos..];
        let word_start = pos + (rest.len() - rest.trim_start().len());
        let rest = &line[word_start..];
        if rest.is_empty() {
            return None;
        }
        let word_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..word_len];
        let inner = word.trim_start_matches('[');
        let name_len = inner.find([':', ']']).unwrap_or(inner.len());
        let level = match inner[..name_len].to_ascii_uppercase().as_str() {
            "ERROR" | "CRITICAL" | "FATAL" => Some(Level::Error),
            "WARN" | "WARNING" => Some(Level::Warn),
            "INFO" | "NOTICE" => Some(Level::Info),
            "DEBUG" => Some(Level::Debug),
            "TRACE" => Some(Level::Trace),
            _ => None,
        };
        if let Some(level) = level {
            let name_end = word_start + (word.len() - inner.len()) + name_len;
            let after = line[name_end..].trim_start_matches([']', ':']).trim_start();
            return Some((level, after));
        }
        pos = word_start + word_len;
    }
    None
}

/// Sends one line to tracing: stdout at info, stderr at the level it announces or warn.
fn emit(stream: Stream, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let (level, msg) = match (stream, level_prefix(&text)) {
        (_, Some((level, msg))) => (level, msg),
        (Stream::Stdout, None) => (Level::Info, &*text),
        (Stream::Stderr, None) => (Level::Warn, &*text),
    };
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    match level {
        Level::Error => tracing::error!(stream, "{msg}"),
        Level::Warn => tracing::warn!(stream, "{msg}"),
        Level::Info => tracing::info!(stream, "{msg}"),
        Level::Debug => tracing::debug!(stream, "{msg}"),
        Level::Trace => tracing::trace!(stream, "{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_found_in_common_formats() {
        assert_eq!(
            level_prefix("2026-11-24T05:30:57.123Z  INFO accepted 127.0.0.1"),
            Some((Level::Info, "accepted 127.0.0.1"))
        );
        assert_eq!(
            level_prefix("WARNING:root:queue is slow"),
            Some((Level::Warn, "root:queue is slow"))
        );
        assert_eq!(
            level_prefix("[error] disk full"),
            Some((Level::Error, "disk full"))
        );
        assert_eq!(level_prefix("Traceback (most recent call last):"), None);
        assert_eq!(level_prefix(""), None);
        assert_eq!(level_prefix("a b c ERROR late"), None);
    }

    #[test]
    fn colours_and_line_endings_are_removed() {
        let raw = b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m hello\r\n";
        assert_eq!(clean_line(raw), b"2026  INFO hello".to_vec());
    }

    #[test]
    fn rotation_keeps_at_most_files_times_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let limits = LogLimits {
            max_bytes: 100,
            files: 3,
        };
        let mut log = RotatingLog::open(&path, limits).unwrap();
        for i in 0..200 {
            log.write_line(format!("line {i:04} ......").as_bytes())
                .unwrap();
        }
        log.write_line(&[b'x'; 500]).unwrap();
        let mut total = 0;
        for entry in fs::read_dir(dir.path()).unwrap() {
            let len = entry.unwrap().metadata().unwrap().len();
            assert!(len <= 100, "a file holds {len} bytes");
            total += len;
        }
        assert!(total <= 300);
        assert!(RotatingLog::rotated_path(&path, 2).exists());
        assert!(!RotatingLog::rotated_path(&path, 3).exists());
        // The newest complete line before the long one sits in server.log.1.
        let prev = fs::read_to_string(RotatingLog::rotated_path(&path, 1)).unwrap();
        assert!(prev.ends_with("line 0199 ......\n"), "{prev:?}");
        assert_eq!(fs::read(&path).unwrap().len(), 100);
    }

    #[test]
    fn one_file_is_truncated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let limits = LogLimits {
            max_bytes: 10,
            files: 1,
        };
        let mut log = RotatingLog::open(&path, limits).unwrap();
        for _ in 0..5 {
            log.write_line(b"abcd").unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "abcd\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn long_lines_are_cut() {
        let data = vec![b'a'; MAX_LINE * 2 + 5];
        let mut reader = BufReader::new(&data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_limited(&mut reader, &mut buf, MAX_LINE)
                .await
                .unwrap(),
            MAX_LINE
        );
        buf.clear();
        read_line_limited(&mut reader, &mut buf, MAX_LINE)
            .await
            .unwrap();
        buf.clear();
        assert_eq!(
            read_line_limited(&mut reader, &mut buf, MAX_LINE)
                .await
                .unwrap(),
            5
        );
    }
}
