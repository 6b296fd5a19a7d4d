//! The instance's end of the hand-off channel (`crate::handoff`): takes client sockets from
//! the supervisor's proxy and serves them as its own sessions (greeting first, then the
//! answer), and reports their end and their bytes.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::handoff::{Channel, Listener, Msg};
use crate::server::conn::Tally;
use crate::server::session::{self, Counted, Greet};
use crate::server::Shared;
use crate::wire::GREETING_READY;

/// How often byte totals go to the proxy while handed sessions are open.
const TOTALS_EVERY: Duration = Duration::from_millis(500);

/// Accepts the proxy's channel connections (one at a time in practice; a new one after a
/// supervisor restart) until the server stops.
pub async fn listen(shared: Rc<Shared>, listener: Listener, ids: Rc<Cell<u64>>) {
    loop {
        match listener.accept().await {
            Ok(chan) => {
                tracing::debug!("hand-off channel connected");
                tokio::task::spawn_local(serve_channel(shared.clone(), Rc::new(chan), ids.clone()));
            }
            Err(e) => {
                tracing::warn!("hand-off channel accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_channel(shared: Rc<Shared>, chan: Rc<Channel>, ids: Rc<Cell<u64>>) {
    let tally = Rc::new(Tally::default());
    let open = Rc::new(Cell::new(0usize));
    let reporter = tokio::task::spawn_local(report(chan.clone(), tally.clone(), open.clone()));
    loop {
        let (sid, peer, fd) = match chan.recv().await {
            Ok(Some((Msg::Hand { sid, peer }, fd))) => (sid, peer, fd),
            Ok(Some((other, _))) => {
                tracing::debug!("hand-off channel: unexpected {other:?}");
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("hand-off channel: {e}");
                break;
            }
        };
        let full = shared.is_stopping() || shared.conns.get() >= shared.config.max_connections;
        // The greeting goes out before the answer: should this process die in between, the
        // proxy sees on the socket itself whether the client was greeted (then it is this
        // instance's cut session) or not (then it places the client elsewhere).
        let line = greeting();
        let greeted = match fd {
            Some(fd) if !full => greet_raw(fd, &line),
            _ => None,
        };
        let Some((tcp, sent)) = greeted else {
            // Full, stopping, or no usable socket: nothing was written; the proxy still
            // holds its own copy and places the client elsewhere; ours is closed by the drop.
            if chan.send(&Msg::Refused { sid }, None).await.is_err() {
                break;
            }
            continue;
        };
        let counted = Counted::take(&shared);
        tally.bytes_out.set(tally.bytes_out.get() + sent as u64);
        let greet = Greet::Sent {
            rest: line[sent..].to_vec(),
        };
        // Served even if the answer cannot be sent: the client is greeted, and the proxy,
        // seeing that, leaves it to this instance.
        let answered = chan.send(&Msg::Adopted { sid }, None).await.is_ok();
        let id = ids.get() + 1;
        ids.set(id);
        open.set(open.get() + 1);
        let (shared, chan, tally, open) =
            (shared.clone(), chan.clone(), tally.clone(), open.clone());
        tokio::task::spawn_local(async move {
            session::serve_handed(shared, tcp, id, peer, tally.clone(), counted, greet).await;
            open.set(open.get() - 1);
            let end = Msg::Ended {
                sid,
                bytes_in: tally.bytes_in.get(),
                bytes_out: tally.bytes_out.get(),
            };
            let _ = chan.send(&end, None).await;
        });
        if !answered {
            break;
        }
    }
    reporter.abort();
}

fn greeting() -> Vec<u8> {
    [GREETING_READY.as_bytes(), b"\r\n"].concat()
}

/// Writes the greeting on the handed socket with a plain non-blocking write (tokio's
/// `try_write` would report a socket it has not polled yet as not writable) and takes the
/// socket into the runtime. Returns how much of the line went out: all of it, on a fresh
/// socket. `None` when the socket is unusable and nothing was written.
fn greet_raw(fd: std::os::fd::OwnedFd, line: &[u8]) -> Option<(TcpStream, usize)> {
    use std::io::Write;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true).ok()?;
    let sent = match (&std).write(line) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return None,
    };
    // Past a write, the socket is this instance's whatever happens: it must not be refused.
    match TcpStream::from_std(std) {
        Ok(tcp) => Some((tcp, sent)),
        Err(_) if sent == 0 => None,
        Err(e) => {
            tracing::warn!("handed socket greeted but not usable: {e}");
            None
        }
    }
}

/// Sends the byte totals while sessions are open and the totals move, so that the proxy's
/// counters follow long sessions too, not only their ends.
async fn report(chan: Rc<Channel>, tally: Rc<Tally>, open: Rc<Cell<usize>>) {
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(TOTALS_EVERY).await;
        let now = (tally.bytes_in.get(), tally.bytes_out.get());
        if open.get() == 0 || now == last {
            continue;
        }
        last = now;
        let msg = Msg::Totals {
            bytes_in: now.0,
            bytes_out: now.1,
        };
        if chan.send(&msg, None).await.is_err() {
            return;
        }
    }
}
