//! Opening a backend: connect, then read its greeting line before any client byte is relayed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::wire::{parse_greeting, Greeting, GREETING_READY};

/// Longest greeting line taken (the stock one is 40 bytes); longer is garbage.
const MAX_GREETING: usize = 256;

/// The greeting as received (line and anything after it), forwarded to the client verbatim.
pub(crate) struct Received {
    buf: [u8; MAX_GREETING],
    len: usize,
}

impl Received {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Why a backend could not take the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("answered BUSY")]
    Busy,
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("no greeting within {0:?}")]
    Timeout(Duration),
    #[error("closed before its greeting")]
    Closed,
    #[error("unexpected greeting {0:?}")]
    Garbage(String),
}

/// Connects to `addr` and reads its greeting, all within `timeout`.
pub(crate) async fn open(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(TcpStream, Received), OpenError> {
    match tokio::time::timeout(timeout, connect_and_greet(addr)).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Timeout(timeout)),
    }
}

async fn connect_and_greet(addr: SocketAddr) -> Result<(TcpStream, Received), OpenError> {
    let mut stream = TcpStream::connect(addr).await.map_err(OpenError::Connect)?;
    // Every reply is one small write; batching them would add a delayed-ACK round trip.
    stream.set_nodelay(true).map_err(OpenError::Connect)?;
    let mut got = Received {
        buf: [0; MAX_GREETING],
        len: 0,
    };
    loop {
        let n = stream
            .read(&mut got.buf[got.len..])
            .await
            .map_err(OpenError::Connect)?;
        if n == 0 {
            return Err(OpenError::Closed);
        }
        let scanned = got.len;
        got.len += n;
        match judge(&got.buf[..got.len], scanned) {
            Verdict::More => {}
            Verdict::Ready => return Ok((stream, got)),
            Verdict::Busy => return Err(OpenError::Busy),
            Verdict::Garbage(text) => return Err(OpenError::Garbage(text)),
        }
    }
}

/// What the bytes received so far from a backend say.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No complete line yet, and room for more.
    More,
    Ready,
    Busy,
    Garbage(String),
}

/// Judges the greeting in `got`, of which the first `scanned` bytes held no LF. Pure, so the
/// proxy's reader can be fuzzed.
pub fn judge(got: &[u8], scanned: usize) -> Verdict {
    let scanned = scanned.min(got.len());
    if let Some(lf) = got[scanned..].iter().position(|&b| b == b'\n') {
        let line = &got[..scanned + lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // The stock greeting, matched without the general parser's allocation.
        if line == GREETING_READY.as_bytes() {
            return Verdict::Ready;
        }
        let text = String::from_utf8_lossy(line);
        return match parse_greeting(&text) {
            Some(Greeting::Ready) => Verdict::Ready,
            Some(Greeting::Busy) => Verdict::Busy,
            None => Verdict::Garbage(text.into_owned()),
        };
    }
    if got.len() >= MAX_GREETING {
        return Verdict::Garbage(String::from_utf8_lossy(got).into_owned());
    }
    Verdict::More
}
