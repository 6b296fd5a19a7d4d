//! Relaying one session both ways, sized for many idle mail sessions.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per session for its whole life.
//! Here the bytes go through one scratch buffer per worker thread: a read is written on to
//! the other socket within the same poll, so an idle session holds no buffer at all. Only
//! when the destination cannot take everything is the rest copied into a per-direction
//! `Vec`, freed again once written, and that direction stops reading until then.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes moved per read. Mail sessions are small lines and blocks of a few KiB; large block
/// uploads still move in big steps.
const SCRATCH_LEN: usize = 32 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// How a relayed session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed their sending side.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
}

/// One direction: bytes read from one socket and written to the other.
#[derive(Default)]
struct Half {
    /// Bytes the destination has not taken yet (empty, unallocated, while flowing).
    pending: Vec<u8>,
    written: usize,
    /// The source sent EOF.
    eof: bool,
    /// EOF passed on: the destination's write side is shut down.
    done: bool,
}

impl Half {
    /// Moves what is available now. `Ready(Ok(true))` when some byte moved or EOF passed,
    /// `Ready(Ok(false))` when nothing can move until a waker fires.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        counter: &AtomicU64,
    ) -> Poll<io::Result<bool>> {
        let mut moved = false;
        loop {
            if self.done {
                return Poll::Ready(Ok(moved));
            }
            while self.written < self.pending.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        counter.fetch_add(n as u64, Relaxed);
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Ready(Ok(moved)),
                }
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                // A TCP shutdown completes at once; a peer already gone is no error here.
                let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(true));
            }
            match SCRATCH.with(|s| self.read_through(cx, src, dst, &mut s.borrow_mut(), counter)) {
                Poll::Ready(Ok(())) => moved = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Ready(Ok(moved)),
            }
        }
    }

    /// One read into the scratch buffer, written on at once; what the destination does not
    /// take is kept in `pending`. Pending when the source has nothing.
    fn read_through(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        scratch: &mut [u8],
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>> {
        let mut rb = ReadBuf::new(scratch);
        ready!(Pin::new(&mut *src).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let data = &scratch[..n];
        let mut off = 0;
        while off < n {
            match Pin::new(&mut *dst).poll_write(cx, &data[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(k)) => {
                    off += k;
                    counter.fetch_add(k as u64, Relaxed);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if off < n {
            self.pending = data[off..].to_vec();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Relays until both sides have closed their sending side (each EOF is passed on as a
/// write shutdown, so half-closed sessions finish), an I/O error, or `idle` without a byte.
pub(crate) async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    bytes_in: &AtomicU64,
    bytes_out: &AtomicU64,
) -> io::Result<End> {
    let mut up = Half::default();
    let mut down = Half::default();
    let mut last = Instant::now();
    let sleep = tokio::time::sleep_until(last + idle);
    tokio::pin!(sleep);
    poll_fn(|cx| {
        let moved_up = ready!(up.poll_move(cx, client, server, bytes_in))?;
        let moved_down = ready!(down.poll_move(cx, server, client, bytes_out))?;
        if up.done && down.done {
            return Poll::Ready(Ok(End::Closed));
        }
        if moved_up || moved_down {
            // The timer is moved lazily, when it fires; activity only records the time.
            last = Instant::now();
        }
        poll_idle(cx, sleep.as_mut(), last, idle)
    })
    .await
}

fn poll_idle(
    cx: &mut Context<'_>,
    mut sleep: Pin<&mut Sleep>,
    last: Instant,
    idle: Duration,
) -> Poll<io::Result<End>> {
    loop {
        ready!(sleep.as_mut().poll(cx));
        let deadline = last + idle;
        if deadline <= Instant::now() {
            return Poll::Ready(Ok(End::Idle));
        }
        sleep.as_mut().reset(deadline);
    }
}
