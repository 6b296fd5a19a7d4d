//! The accept loop and the life of one client connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::counters::{ClientSlot, Counters, InstanceSlot};
use super::greeting::{self, OpenError, Received};
use super::handoff::HandError;
use super::header;
use super::pool::Pool;
use super::relay::relay;
use super::ProxyError;

/// Pause after an accept error caused by a resource limit (EMFILE…), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Pause between placement passes while no instance can take a client.
const PLACE_RETRY: Duration = Duration::from_millis(50);
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
                Ok((client, peer)) => admit(client, peer, &pool),
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

fn admit(client: TcpStream, peer: SocketAddr, pool: &Pool) {
    // Small request/reply lines: Nagle would hold replies for a delayed ACK.
    let _ = client.set_nodelay(true);
    match pool.admit() {
        Some(slot) => {
            tokio::spawn(session(client, peer, pool.clone(), slot));
        }
        None => {
            debug!("over max_connections; BUSY");
            tokio::spawn(turn_away(client, pool.clone()));
        }
    }
}

async fn session(mut client: TcpStream, mut peer: SocketAddr, pool: Pool, slot: ClientSlot) {
    // Held until the session ends here, or handed with the socket to the instance's channel.
    let mut slot = Some(slot);
    let mut via_header = false;
    if let Some(nets) = pool.accept_proxy() {
        match header::read(&mut client, peer, &nets, pool.connect_timeout()).await {
            Ok(from) => {
                pool.inner
                    .clients
                    .header_accepted_total
                    .fetch_add(1, Relaxed);
                debug!(client = %from, via = %peer, "PROXY header");
                peer = from;
                via_header = true;
            }
            Err(e) => {
                pool.inner
                    .clients
                    .header_rejected_total
                    .fetch_add(1, Relaxed);
                info!(source = %peer, "closed: {e}");
                return;
            }
        }
    }
    let (mut server, greeting, id, counters) = match place(&pool, &client, peer, &mut slot).await {
        Some(Placed::Handed(id)) => {
            // The instance serves the client now; our copy of the socket closes here.
            debug!(instance = id, client = %peer, "handed off");
            return;
        }
        Some(Placed::Relay(server, greeting, id, counters)) => {
            // A relayed instance cannot learn the carried address: it is logged here.
            if via_header {
                info!(instance = id, client = %peer, "relaying a client (PROXY header)");
            }
            (server, greeting, id, counters)
        }
        None => {
            pool.count_rejected();
            debug!("no instance can take the client; BUSY");
            turn_away(client, pool).await;
            return;
        }
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
        Ok(end) => debug!(instance = id, client = %peer, ?end, "session ended"),
        Err(e) => debug!(instance = id, client = %peer, error = %e, "session cut"),
    }
}

/// Where a client went.
enum Placed {
    /// Its socket was handed to this instance.
    Handed(u32),
    /// Connected to the instance, which greeted READY: relay.
    Relay(TcpStream, Box<Received>, u32, Arc<Counters>),
}

/// Tries each ready instance at most once, starting where the balance says, until one
/// adopts the socket or greets `READY`. An instance with a hand-off channel gets the
/// socket; one without (or whose channel is down) is connected to and relayed. When none
/// can, it tries again with the current ready set for up to `connect_timeout`: a moment
/// with no ready instance (a kill, a rolling restart and a removal at once) then costs the
/// client a short wait instead of a BUSY line.
async fn place(
    pool: &Pool,
    client: &TcpStream,
    peer: SocketAddr,
    slot: &mut Option<ClientSlot>,
) -> Option<Placed> {
    let timeout = pool.connect_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (snapshot, start) = pool.pick();
        let n = snapshot.backends.len();
        for i in 0..n {
            let backend = &snapshot.backends[start.wrapping_add(i) % n];
            if let Some(h) = backend.handoff.load_full() {
                match h.hand(client, peer, timeout, slot).await {
                    Ok(()) => return Some(Placed::Handed(backend.id)),
                    Err(HandError::Refused) => {
                        backend.counters.busy_total.fetch_add(1, Relaxed);
                        debug!(instance = backend.id, "instance full; trying the next");
                        continue;
                    }
                    Err(e @ HandError::Timeout(_)) => {
                        backend.counters.connect_failures.fetch_add(1, Relaxed);
                        debug!(instance = backend.id, error = %e, "hand-off failed; trying the next");
                        continue;
                    }
                    // Greeted by an instance that then died: its cut session, as with relay.
                    Err(HandError::Cut) => {
                        debug!(
                            instance = backend.id,
                            "instance died after greeting a handed client"
                        );
                        return Some(Placed::Handed(backend.id));
                    }
                    // The channel is gone but the instance may still serve: relay.
                    Err(HandError::Down) => {}
                }
            }
            match greeting::open(backend.addr, timeout).await {
                Ok((server, greeting)) => {
                    return Some(Placed::Relay(
                        server,
                        Box::new(greeting),
                        backend.id,
                        backend.counters.clone(),
                    ))
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
        if tokio::time::Instant::now() + PLACE_RETRY >= deadline {
            return None;
        }
        tokio::time::sleep(PLACE_RETRY).await;
    }
}

/// Sends the BUSY line and closes. The client's own bytes are read and dropped until it
/// closes (briefly), because closing with unread input would reset the connection and could
/// discard the line before the client reads it.
async fn turn_away(mut client: TcpStream, pool: Pool) {
    if client.write_all(crate::protocol::BUSY_LINE).await.is_err()
        || client.shutdown().await.is_err()
    {
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

    /// The listener's accept queue is widened past tokio's 128, as the kernel reports it
    /// (`ss` prints a listening socket's maximum backlog as its Send-Q).
    #[tokio::test]
    async fn the_accept_queue_is_widened() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        widen_backlog(&listener, "test");
        let out = match std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
        {
            Ok(out) => out,
            Err(e) => panic!("`ss` (iproute2, installed by .ci/run) is needed here: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unexpected `ss` output {text:?}"));
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(4096);
        assert!(backlog > 128 && backlog <= somaxconn, "{text}");
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
