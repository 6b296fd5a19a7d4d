//! The proxy's end of each built-in instance's hand-off channel (`crate::handoff`): hands
//! client sockets over, waits for the answer, and keeps the instance's counters from what
//! the instance reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::debug;

use super::counters::{ClientSlot, Counters};
use crate::handoff::{Channel, Msg};

/// Why a hand-off did not place the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandError {
    /// The instance is full or stopping; the socket is still ours, untouched.
    #[error("refused (full or stopping)")]
    Refused,
    /// Down before the socket was sent, or the instance died without greeting the client:
    /// the client saw nothing and can go elsewhere.
    #[error("channel down")]
    Down,
    /// The instance greeted the client, then died before answering: the client is its cut
    /// session, like any session of a killed instance.
    #[error("the instance died after greeting the client")]
    Cut,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Default)]
struct Book {
    /// Hand-offs waiting for their answer.
    pending: HashMap<u64, oneshot::Sender<bool>>,
    /// Adopted sessions not yet ended, each with the client slot it holds on the public
    /// port (so that `max_connections` still bounds every open client).
    open: HashMap<u64, Option<ClientSlot>>,
}

/// One instance's channel, as the proxy holds it.
#[derive(Debug)]
pub(crate) struct Handoff {
    chan: Channel,
    next_sid: AtomicU64,
    up: AtomicBool,
    book: Mutex<Book>,
}

impl Handoff {
    /// Connects to the channel at `path` and starts its reader, which keeps `counters`.
    pub fn connect(path: &Path, id: u32, counters: Arc<Counters>) -> std::io::Result<Arc<Handoff>> {
        let chan = Channel::connect(path)?;
        let me = Arc::new(Handoff {
            chan,
            next_sid: AtomicU64::new(1),
            up: AtomicBool::new(true),
            book: Mutex::new(Book::default()),
        });
        tokio::spawn(me.clone().read(id, counters));
        Ok(me)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // Every update is a single insert or remove: consistent even after a panic.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passes `client` to the instance. On `Ok` the instance owns the session (the caller
    /// drops its copy) and `slot` is kept until the session ends; on an error the socket is
    /// untouched and can go elsewhere.
    pub async fn hand(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
        timeout: Duration,
        slot: &mut Option<ClientSlot>,
    ) -> Result<(), HandError> {
        if !self.is_up() {
            return Err(HandError::Down);
        }
        let sid = self.next_sid.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.book().pending.insert(sid, tx);
        let msg = Msg::Hand { sid, peer };
        let answer = async {
            self.chan
                .send(&msg, Some(client.as_raw_fd()))
                .await
                .map_err(|_| HandError::Down)?;
            rx.await.map_err(|_| HandError::Down)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(true)) => {
                // Not there when the session already ended: the slot then goes with us.
                if let Some(held) = self.book().open.get_mut(&sid) {
                    *held = slot.take();
                }
                Ok(())
            }
            // A refusal writes nothing; a socket written to anyway is not placed twice.
            Ok(Ok(false)) if greeted(client) => Err(HandError::Cut),
            Ok(Ok(false)) => Err(HandError::Refused),
            Ok(Err(e)) => {
                self.book().pending.remove(&sid);
                if greeted(client) {
                    return Err(HandError::Cut);
                }
                Err(e)
            }
            Err(_) => {
                self.book().pending.remove(&sid);
                if greeted(client) {
                    // Slow to answer but serving it: its later `A` counts the session.
                    return Ok(());
                }
                // An instance this slow may still adopt the socket later; closing the
                // channel makes it drop whatever it has not answered yet.
                self.close();
                Err(HandError::Timeout(timeout))
            }
        }
    }

    pub fn close(&self) {
        self.up.store(false, Relaxed);
        self.chan.shutdown();
    }

    async fn read(self: Arc<Handoff>, id: u32, counters: Arc<Counters>) {
        let (mut seen_in, mut seen_out) = (0u64, 0u64);
        let mut totals = |bytes_in: u64, bytes_out: u64| {
            counters
                .bytes_in
                .fetch_add(bytes_in.saturating_sub(seen_in), Relaxed);
            counters
                .bytes_out
                .fetch_add(bytes_out.saturating_sub(seen_out), Relaxed);
            seen_in = seen_in.max(bytes_in);
            seen_out = seen_out.max(bytes_out);
        };
        loop {
            match self.chan.recv().await {
                Ok(Some((msg, _))) => match msg {
                    Msg::Adopted { sid } | Msg::Refused { sid } => {
                        let adopted = matches!(msg, Msg::Adopted { .. });
                        let mut book = self.book();
                        let waiter = book.pending.remove(&sid);
                        if adopted {
                            // Counted here, before any `Ended` can be read.
                            book.open.insert(sid, None);
                            counters.active.fetch_add(1, Relaxed);
                            counters.total.fetch_add(1, Relaxed);
                        }
                        drop(book);
                        if let Some(w) = waiter {
                            let _ = w.send(adopted);
                        }
                    }
                    Msg::Ended {
                        sid,
                        bytes_in,
                        bytes_out,
                    } => {
                        totals(bytes_in, bytes_out);
                        let ended = self.book().open.remove(&sid);
                        if ended.is_some() {
                            counters.active.fetch_sub(1, Relaxed);
                        }
                    }
                    Msg::Totals {
                        bytes_in,
                        bytes_out,
                    } => totals(bytes_in, bytes_out),
                    Msg::Hand { .. } => debug!(instance = id, "hand-off channel: stray H"),
                },
                Ok(None) => break,
                Err(e) => {
                    debug!(instance = id, error = %e, "hand-off channel read");
                    break;
                }
            }
        }
        // The instance is gone (or stopped listening): its sessions went with it.
        self.up.store(false, Relaxed);
        let mut book = self.book();
        book.pending.clear();
        let cut = book.open.len() as u64;
        let slots = std::mem::take(&mut book.open);
        drop(book);
        drop(slots);
        counters.active.fetch_sub(cut, Relaxed);
        debug!(instance = id, cut, "hand-off channel closed");
    }
}

/// True when anything was written to the client's socket (by whichever process holds it):
/// sent segments, or bytes still queued. A socket it cannot tell about counts as greeted,
/// so that no client ever gets two greetings.
fn greeted(client: &TcpStream) -> bool {
    use nix::libc;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes given, and the descriptor
    // is the live socket `client` borrows.
    let rc = unsafe {
        libc::getsockopt(
            client.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    rc != 0 || info.tcpi_data_segs_out > 0 || info.tcpi_notsent_bytes > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_socket_written_to_by_anyone_counts_as_greeted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        assert!(!greeted(&server));
        // Another process's write on a shared socket shows the same way as our own.
        server.write_all(b"READY\r\n").await.unwrap();
        assert!(greeted(&server));
    }
}
