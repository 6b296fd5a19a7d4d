//! The accept loop and the life of one client connection.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::greeting::{self, OpenError, Received};
use super::pool::{ClientSlot, Counters, InstanceSlot, Pool};
use super::relay::relay;
use super::ProxyError;

/// What a client gets when no instance can take it.
const BUSY_LINE: &[u8] = b"CONFIDANT MAIL SERVER PROTOCOL 1 BUSY\r\n";
/// Pause after an accept error caused by a resource limit (EMFILE…), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a turned-away client may take to close after the BUSY line.
const TURN_AWAY_LINGER: Duration = Duration::from_secs(1);
/// Turned-away clients lingering at once; past it they are closed at once, so a flood of
/// rejected clients cannot pile up descriptors.
const MAX_LINGERING: usize = 1024;

/// Accepts on `listener` until `shutdown` turns true (or its sender is dropped), then stops
/// accepting at once and returns; sessions already open run on as their own tasks.
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    widen_backlog(&listener, &addr);
    info!(listen = %addr, "proxy accepting");
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => admit(client, &pool),
                Err(e) => match classify(&e) {
                    AcceptError::Fatal => return Err(ProxyError::Accept { addr, source: e }),
                    AcceptError::PerConnection => debug!(error = %e, "accept"),
                    AcceptError::Resources => {
                        warn!(error = %e, "accept failed; pausing");
                        tokio::select! {
                            _ = shutdown.changed() => {}
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                },
            },
        }
    }
    info!(listen = %addr, "proxy stopped accepting");
    Ok(())
}

/// tokio's `TcpListener::bind` listens with a backlog of 128: a burst of more connects than
/// that (clients reconnecting after a restart, the idle-connection benchmark) overflows the
/// accept queue, the kernel drops the SYNs, and each of those clients waits a 1 s (then 3 s)
/// SYN retransmit. Calling listen(2) again on a listening socket only resizes its queue
/// (capped by `net.core.somaxconn`), whoever bound it; haproxy asks for the same.
fn widen_backlog(listener: &TcpListener, addr: &str) {
    use nix::sys::socket::{listen, Backlog};
    if let Err(e) = listen(listener, Backlog::MAXCONN) {
        warn!(listen = %addr, error = %e, "cannot widen the accept backlog; bursts may wait");
    }
}

enum AcceptError {
    /// The listener is unusable.
    Fatal,
    /// Out of descriptors, buffers or memory: retrying at once would spin.
    Resources,
    /// That one connection failed (aborted before accept, firewall…).
    PerConnection,
}

fn classify(e: &io::Error) -> AcceptError {
    use nix::libc;
    match e.raw_os_error() {
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT) => {
            AcceptError::Fatal
        }
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Resources,
        _ => AcceptError::PerConnection,
    }
}

fn admit(client: TcpStream, pool: &Pool) {
    // Small request/reply lines: Nagle would hold replies for a delayed ACK.
    let _ = client.set_nodelay(true);
    match pool.admit() {
        Some(slot) => {
            tokio::spawn(session(client, pool.clone(), slot));
        }
        None => {
            debug!("over max_connections; BUSY");
            tokio::spawn(turn_away(client, pool.clone()));
        }
    }
}

async fn session(mut client: TcpStream, pool: Pool, _slot: ClientSlot) {
    let Some((mut server, greeting, id, counters)) = place(&pool).await else {
        pool.count_rejected();
        debug!("no instance can take the client; BUSY");
        turn_away(client, pool).await;
        return;
    };
    let instance = InstanceSlot::open(counters);
    let counters = &instance.0;
    if let Err(e) = client.write_all(greeting.bytes()).await {
        debug!(instance = id, error = %e, "client gone before its greeting");
        return;
    }
    counters
        .bytes_out
        .fetch_add(greeting.bytes().len() as u64, Relaxed);
    let idle = pool.idle_timeout();
    match relay(
        &mut client,
        &mut server,
        idle,
        &counters.bytes_in,
        &counters.bytes_out,
    )
    .await
    {
        Ok(end) => debug!(instance = id, ?end, "session ended"),
        Err(e) => debug!(instance = id, error = %e, "session cut"),
    }
}

/// Tries each ready instance at most once, starting at the round-robin cursor, until one
/// greets `READY`.
async fn place(pool: &Pool) -> Option<(TcpStream, Received, u32, Arc<Counters>)> {
    let (snapshot, start) = pool.pick();
    let n = snapshot.backends.len();
    let timeout = pool.connect_timeout();
    for i in 0..n {
        let backend = &snapshot.backends[start.wrapping_add(i) % n];
        match greeting::open(backend.addr, timeout).await {
            Ok((server, greeting)) => {
                return Some((server, greeting, backend.id, backend.counters.clone()))
            }
            Err(OpenError::Busy) => {
                backend.counters.busy_total.fetch_add(1, Relaxed);
                debug!(instance = backend.id, "instance BUSY; trying the next");
            }
            Err(e) => {
                backend.counters.connect_failures.fetch_add(1, Relaxed);
                debug!(instance = backend.id, error = %e, "instance failed; trying the next");
            }
        }
    }
    None
}

/// Sends the BUSY line and closes. The client's own bytes are read and dropped until it
/// closes (briefly), because closing with unread input would reset the connection and could
/// discard the line before the client reads it.
async fn turn_away(mut client: TcpStream, pool: Pool) {
    if client.write_all(BUSY_LINE).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    let Some(_lingering) = pool.linger(MAX_LINGERING) else {
        return;
    };
    let drain = async {
        let mut sink = [0u8; 64];
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(TURN_AWAY_LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc;

    /// More simultaneous connects than tokio's default backlog of 128, none accepted yet:
    /// with the widened queue every handshake completes (no SYN dropped). A dropped SYN is
    /// only visible as the kernel's retransmit, at least 1 s later: the bound below tells the
    /// two apart, it is not a speed requirement.
    #[tokio::test]
    async fn a_burst_of_connects_fits_the_accept_queue() {
        const SYN_RETRANSMIT: Duration = Duration::from_millis(950);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        widen_backlog(&listener, "test");
        let mut held = Vec::new();
        for _ in 0..400 {
            let c = tokio::time::timeout(SYN_RETRANSMIT, TcpStream::connect(addr))
                .await
                .expect("connect waited for a SYN retransmit: the accept queue overflowed")
                .unwrap();
            held.push(c);
        }
        drop(listener);
    }

    #[test]
    fn only_a_broken_listener_stops_the_accept_loop() {
        let kind = |errno| classify(&io::Error::from_raw_os_error(errno));
        assert!(matches!(kind(libc::EBADF), AcceptError::Fatal));
        assert!(matches!(kind(libc::EINVAL), AcceptError::Fatal));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(matches!(kind(errno), AcceptError::Resources));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EPROTO, libc::EINTR] {
            assert!(matches!(kind(errno), AcceptError::PerConnection));
        }
    }
}
