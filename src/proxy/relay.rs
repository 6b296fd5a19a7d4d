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
/// write shutdown, so half-closed sessions finish), an I/O error, or `idle` without a byte
/// (a zero `idle` means no idle limit).
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
    let sleep = deadline(last, idle).map(tokio::time::sleep_until);
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
        match sleep.as_mut().as_pin_mut() {
            Some(sleep) => poll_idle(cx, sleep, last, idle),
            None => Poll::Pending,
        }
    })
    .await
}

/// When a session idle since `last` times out; `None` for no limit (zero, or too far off).
fn deadline(last: Instant, idle: Duration) -> Option<Instant> {
    if idle.is_zero() {
        return None;
    }
    last.checked_add(idle)
}

fn poll_idle(
    cx: &mut Context<'_>,
    mut sleep: Pin<&mut Sleep>,
    last: Instant,
    idle: Duration,
) -> Poll<io::Result<End>> {
    loop {
        ready!(sleep.as_mut().poll(cx));
        let Some(deadline) = deadline(last, idle) else {
            return Poll::Pending;
        };
        if deadline <= Instant::now() {
            return Poll::Ready(Ok(End::Idle));
        }
        sleep.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outer = TcpStream::connect(listener.local_addr().unwrap());
        let (outer, inner) = tokio::join!(outer, listener.accept());
        (outer.unwrap(), inner.unwrap().0)
    }

    struct Rig {
        client: TcpStream,
        server: TcpStream,
        task: tokio::task::JoinHandle<io::Result<End>>,
        bytes_in: std::sync::Arc<AtomicU64>,
        bytes_out: std::sync::Arc<AtomicU64>,
    }

    async fn rig(idle: Duration) -> Rig {
        let (client, mut client_side) = pair().await;
        let (mut server_side, server) = pair().await;
        let bytes_in = std::sync::Arc::new(AtomicU64::new(0));
        let bytes_out = std::sync::Arc::new(AtomicU64::new(0));
        let (i, o) = (bytes_in.clone(), bytes_out.clone());
        let task =
            tokio::spawn(
                async move { relay(&mut client_side, &mut server_side, idle, &i, &o).await },
            );
        Rig {
            client,
            server,
            task,
            bytes_in,
            bytes_out,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bulk_both_ways_with_a_slow_reader_arrives_intact() {
        let r = rig(Duration::from_secs(30)).await;
        let up = pattern(3 << 20, 1);
        let down = pattern(2 << 20, 7);
        let (mut cr, mut cw) = r.client.into_split();
        let (mut sr, mut sw) = r.server.into_split();
        let (up2, down2) = (up.clone(), down.clone());
        let writers = tokio::spawn(async move {
            let a = async {
                cw.write_all(&up2).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let b = async {
                sw.write_all(&down2).await.unwrap();
                sw.shutdown().await.unwrap();
            };
            tokio::join!(a, b);
        });
        // The server side reads in small, delayed steps so the relay's writes back up.
        let slow = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            for step in 0u64.. {
                let n = sr.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if step % 64 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            got
        };
        let fast = async {
            let mut got = Vec::new();
            cr.read_to_end(&mut got).await.unwrap();
            got
        };
        let (at_server, at_client) = tokio::join!(slow, fast);
        writers.await.unwrap();
        assert!(at_server == up, "client → server bytes differ");
        assert!(at_client == down, "server → client bytes differ");
        assert_eq!(r.task.await.unwrap().unwrap(), End::Closed);
        assert_eq!(r.bytes_in.load(Relaxed), up.len() as u64);
        assert_eq!(r.bytes_out.load(Relaxed), down.len() as u64);
    }

    #[tokio::test]
    async fn half_close_passes_eof_and_keeps_the_other_way_open() {
        let mut r = rig(Duration::from_secs(30)).await;
        r.client.write_all(b"QUIT\r\n").await.unwrap();
        r.client.shutdown().await.unwrap();
        let mut at_server = Vec::new();
        r.server.read_to_end(&mut at_server).await.unwrap();
        assert_eq!(at_server, b"QUIT\r\n");
        // The server still talks after the client's EOF.
        r.server.write_all(b"GOODBYE\r\n").await.unwrap();
        let mut line = [0u8; 9];
        r.client.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GOODBYE\r\n");
        assert!(!r.task.is_finished());
        drop(r.server);
        let mut rest = Vec::new();
        r.client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(r.task.await.unwrap().unwrap(), End::Closed);
    }

    #[tokio::test]
    async fn idle_session_is_closed_and_traffic_keeps_it_open() {
        let mut r = rig(Duration::from_secs(1)).await;
        // Traffic for twice the idle timeout, in steps well inside it.
        for _ in 0..10 {
            r.client.write_all(b"PING\r\n").await.unwrap();
            let mut got = [0u8; 6];
            r.server.read_exact(&mut got).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!r.task.is_finished());
        let end = tokio::time::timeout(Duration::from_secs(10), r.task)
            .await
            .expect("idle timeout fired")
            .unwrap()
            .unwrap();
        assert_eq!(end, End::Idle);
    }

    #[tokio::test]
    async fn zero_or_huge_idle_timeout_means_no_limit() {
        for idle in [Duration::ZERO, Duration::MAX] {
            let mut r = rig(idle).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!r.task.is_finished(), "{idle:?}");
            r.client.write_all(b"PING\r\n").await.unwrap();
            let mut got = [0u8; 6];
            r.server.read_exact(&mut got).await.unwrap();
            drop((r.client, r.server));
            assert!(r.task.await.unwrap().is_ok());
        }
    }
}
