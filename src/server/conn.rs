//! The byte stream of one session: plain TCP, or TLS after STARTTLS.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes moved by the sessions of one hand-off channel, reported to the proxy (which
/// counted them itself when it relayed).
#[derive(Debug, Default)]
pub struct Tally {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

/// The session's TCP socket, counting its bytes into a [`Tally`] when it has one.
pub struct Tcp {
    inner: TcpStream,
    tally: Option<Rc<Tally>>,
}

impl Tcp {
    pub fn new(inner: TcpStream, tally: Option<Rc<Tally>>) -> Tcp {
        Tcp { inner, tally }
    }
}

fn add(c: &Cell<u64>, n: usize) {
    c.set(c.get().wrapping_add(n as u64));
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Some(t) = &me.tally {
            add(&t.bytes_in, buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, b);
        if let (Some(t), Poll::Ready(Ok(n))) = (&me.tally, &r) {
            add(&t.bytes_out, *n);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// TCP with bytes already read (by the line reader) replayed first, so that a client that
/// starts its TLS handshake without waiting for `PROCEED` loses nothing.
pub struct Rewind {
    pre: Vec<u8>,
    pos: usize,
    inner: Tcp,
}

impl Rewind {
    pub fn new(pre: Vec<u8>, inner: Tcp) -> Rewind {
        Rewind { pre, pos: 0, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos < me.pre.len() {
            let n = (me.pre.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.pre[me.pos..me.pos + n]);
            me.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A session's connection: plain, or TLS after STARTTLS.
pub type Conn = crate::wire::Stream<Tcp, tokio_rustls::server::TlsStream<Rewind>>;
