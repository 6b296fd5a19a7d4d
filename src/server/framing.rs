//! The input side of a session as pure state machines (docs/protocol.md §2, §4.1): CRLF lines with
//! the 16384-byte limit, raw `Data: n` payloads, and the block-lines state of an upload. The
//! session feeds them bytes from its socket; [`replay`] feeds them from memory, so that the
//! same code can be fuzzed with input split at arbitrary points.

use crate::protocol::header::data_line_len;
use crate::server::command::{self, Command};
use crate::wire::MAX_LINE;

/// Largest `Data: n` payload buffered. The original buffers any size; a block this large can
/// never pass validation (8 MiB limit), so larger payloads are read, discarded and answered
/// `FAILED` rather than held in memory.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Bytes received and not yet consumed.
#[derive(Debug, Default)]
pub struct Input {
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    start: usize,
    /// Bytes after `start` already searched for CRLF.
    scanned: usize,
}

/// What [`Input::line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Got(Vec<u8>),
    /// No complete line yet: read more.
    More,
    /// Over [`MAX_LINE`]: the session closes silently, as Twisted does.
    TooLong,
}

impl Input {
    pub fn new() -> Input {
        Input {
            buf: Vec::with_capacity(8192),
            start: 0,
            scanned: 0,
        }
    }

    /// Unread bytes.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next CRLF-terminated line, without its CRLF.
    pub fn line(&mut self) -> Line {
        // Back one byte: a CR at the end of the scanned part may pair with a new LF.
        let from = self.start + self.scanned.saturating_sub(1);
        if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
            let end = from + i;
            if end - self.start > MAX_LINE {
                return Line::TooLong;
            }
            let line = self.buf[self.start..end].to_vec();
            self.consume(end + 2 - self.start);
            return Line::Got(line);
        }
        if self.pending() >= MAX_LINE + 2 {
            return Line::TooLong;
        }
        self.scanned = self.pending();
        Line::More
    }

    /// Takes up to `left` raw bytes (appended to `keep` if given); returns how many.
    pub fn take(&mut self, left: usize, keep: Option<&mut Vec<u8>>) -> usize {
        let n = left.min(self.pending());
        if let Some(k) = keep {
            k.extend_from_slice(&self.buf[self.start..self.start + n]);
        }
        self.consume(n);
        n
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.scanned = 0;
    }

    /// The buffer to read more bytes into (appended at its end), compacted first.
    pub fn space(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 65536 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(16384);
        &mut self.buf
    }

    /// Every unread byte, leaving the input empty (STARTTLS hands them to the handshake).
    pub fn split_off(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        rest
    }
}

/// A complete uploaded block.
#[derive(Debug, PartialEq, Eq)]
pub enum Upload {
    Block {
        lines: Vec<Vec<u8>>,
        payload: Option<Vec<u8>>,
    },
    /// `Data: n` above [`MAX_PAYLOAD`]; the bytes were read and discarded.
    TooLarge,
}

/// The block-lines state of an upload.
#[derive(Debug, Default)]
pub struct BlockLines {
    lines: Vec<Vec<u8>>,
}

/// What to do after a line of an upload.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Read another line.
    Line,
    /// Read `n` raw bytes, keeping them if `keep`, then call [`BlockLines::finish`].
    Raw {
        n: usize,
        keep: bool,
    },
    Done(Upload),
}

impl BlockLines {
    pub fn feed(&mut self, line: Vec<u8>) -> Next {
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"padding: ") {
            return Next::Line;
        }
        if line.eq_ignore_ascii_case(b"EndBlock") {
            return Next::Done(Upload::Block {
                lines: std::mem::take(&mut self.lines),
                payload: None,
            });
        }
        if let Some(n) = data_line_len(&line) {
            self.lines.push(line);
            return Next::Raw {
                n,
                keep: n <= MAX_PAYLOAD,
            };
        }
        self.lines.push(line);
        Next::Line
    }

    /// The upload once the raw bytes of `Next::Raw` are read (`None` if they were discarded).
    pub fn finish(self, payload: Option<Vec<u8>>) -> Upload {
        match payload {
            Some(p) => Upload::Block {
                lines: self.lines,
                payload: Some(p),
            },
            None => Upload::TooLarge,
        }
    }
}

/// Whether a command is followed by a block upload.
pub fn takes_block(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::StoreServer(_)
            | Command::Replicate(..)
            | Command::StoreProxy(..)
            | Command::StoreEntangled(_)
    )
}

/// One step of a session's input as [`replay`] sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    Upload(Upload),
    /// The session closes: end of input, a line too long, three invalid commands, `QUIT`,
    /// or `STARTTLS` (whose bytes go to a handshake).
    Close,
}

/// Runs the input state machines of a session over `chunks` as they would arrive from a
/// socket, the command state included (the invalid-command count, `QUIT`). Raw payloads
/// over [`MAX_PAYLOAD`] are not kept. The events must not depend on how the bytes are split.
pub fn replay<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Event> {
    let mut chunks = chunks.into_iter();
    let mut input = Input::new();
    let mut events = Vec::new();
    let mut fill = |input: &mut Input| match chunks.next() {
        Some(c) => {
            input.space().extend_from_slice(c);
            true
        }
        None => false,
    };
    let mut invalid = 0;
    // Each `loop` level mirrors the session: None from a read ends the session.
    let next_line = |input: &mut Input, fill: &mut dyn FnMut(&mut Input) -> bool| loop {
        match input.line() {
            Line::Got(l) => return Some(l),
            Line::TooLong => return None,
            Line::More => {
                if !fill(input) {
                    return None;
                }
            }
        }
    };
    'session: while let Some(line) = next_line(&mut input, &mut fill) {
        let cmd = command::parse(&line);
        if cmd == Command::Invalid {
            invalid += 1;
            events.push(Event::Command(cmd));
            if invalid >= 3 {
                break;
            }
            continue;
        }
        invalid = 0;
        let block = takes_block(&cmd);
        let close = matches!(cmd, Command::Quit | Command::StartTls);
        events.push(Event::Command(cmd));
        if close {
            break;
        }
        if !block {
            continue;
        }
        let mut up = BlockLines::default();
        loop {
            let Some(line) = next_line(&mut input, &mut fill) else {
                break 'session;
            };
            match up.feed(line) {
                Next::Line => {}
                Next::Done(u) => {
                    events.push(Event::Upload(u));
                    break;
                }
                Next::Raw { n, keep } => {
                    let mut payload = Vec::new();
                    let mut left = n;
                    loop {
                        left -= input.take(left, keep.then_some(&mut payload));
                        if left == 0 {
                            break;
                        }
                        if !fill(&mut input) {
                            break 'session;
                        }
                    }
                    events.push(Event::Upload(up.finish(keep.then_some(payload))));
                    break;
                }
            }
        }
    }
    events.push(Event::Close);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "a2129dd8a2129dd8a2129dd8a2129dd8a2129d79";

    fn split_everywhere(input: &[u8]) {
        let whole = replay([input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(replay(bytes), whole, "one byte at a time");
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(replay([a, b]), whole, "split at {cut}");
        }
    }

    #[test]
    fn upload_with_payload_split_anywhere() {
        let input = format!(
            "PING x\r\nSTORE SERVER {H}\r\npadding: zz\r\nType: data\r\nData: 5\r\nab\r\ncQUIT\r\n"
        );
        let ev = replay([input.as_bytes()]);
        assert_eq!(
            ev,
            vec![
                Event::Command(Command::Ping(b" x".to_vec())),
                Event::Command(Command::StoreServer(H.to_uppercase())),
                Event::Upload(Upload::Block {
                    lines: vec![b"Type: data".to_vec(), b"Data: 5".to_vec()],
                    payload: Some(b"ab\r\nc".to_vec()),
                }),
                Event::Command(Command::Quit),
                Event::Close,
            ]
        );
        split_everywhere(input.as_bytes());
    }

    #[test]
    fn line_limit_and_invalid_count() {
        let mut long = vec![b'a'; MAX_LINE];
        long.extend_from_slice(b"\r\n");
        // Exactly MAX_LINE bytes is a line (an invalid command), one more closes.
        assert_eq!(replay([long.as_slice()]).len(), 2);
        let mut longer = vec![b'a'; MAX_LINE + 1];
        longer.extend_from_slice(b"\r\n");
        assert_eq!(replay([longer.as_slice()]), vec![Event::Close]);
        let three = b"x\r\ny\r\nz\r\nPING\r\n";
        assert_eq!(replay([&three[..]]).len(), 4);
        split_everywhere(three);
        split_everywhere(&long);
    }

    #[test]
    fn endblock_upload_and_too_large() {
        let input = format!(
            "REPLICATE {H} none\r\nA: 1\r\nendblock\r\nSTORE SERVER {H}\r\nData: 67108865\r\nxyz"
        );
        let ev = replay([input.as_bytes()]);
        assert_eq!(
            ev[1],
            Event::Upload(Upload::Block {
                lines: vec![b"A: 1".to_vec()],
                payload: None
            })
        );
        // The oversized payload never completes: the session ends reading it.
        assert_eq!(ev.len(), 4);
        split_everywhere(input.as_bytes());
    }
}
