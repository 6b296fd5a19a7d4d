//! One client session (docs/protocol.md §2–4): greeting, line reading with the 16384-byte limit,
//! raw payloads after `Data: n`, the idle timeout, the invalid-command count, and every
//! command of §3.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::server::auth::LoginResult;
use crate::server::command::{self, Command};
use crate::server::conn::{Conn, Rewind, Tally, Tcp};
use crate::server::dns::TxtAnswer;
use crate::server::framing::{BlockLines, Input, Line, Next, Upload};
use crate::server::worker::Job;
use crate::server::{since, Shared};
use crate::wire::{GREETING_BUSY, GREETING_READY};

pub use crate::server::framing::MAX_PAYLOAD;

/// Largest `GENLOGIN n` served in one command (the original has no limit and would stall).
pub const MAX_GENLOGIN: u64 = 100_000;

/// Header prefixes a client may not send (docs/protocol.md §4.1), lower case.
const FORBIDDEN: [&[u8]; 6] = [
    b"storetype: ",
    b"storekeyid: ",
    b"loginuser: ",
    b"embargo: ",
    b"replogin-user: ",
    b"replogin-auth: ",
];

/// Counts this connection in the open-connection total until it is dropped.
pub struct Counted(Rc<Shared>);

impl Counted {
    pub fn take(shared: &Rc<Shared>) -> Counted {
        shared.conns.set(shared.conns.get() + 1);
        Counted(shared.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let left = self.0.conns.get() - 1;
        self.0.conns.set(left);
        if left == 0 {
            // A stored permit, so a stopping server that starts waiting later still wakes.
            self.0.idle.notify_one();
        }
    }
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    shared: Rc<Shared>,
    conn: Conn,
    input: Input,
    out: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    /// The authenticated userhash.
    user: Option<String>,
    invalid: u32,
    id: u64,
    /// Something was queued for the sender: it runs when the session ends.
    queued_for_peer: bool,
}

/// Runs a session accepted on the server's own port to its end; every error just closes
/// the connection.
pub async fn serve(shared: Rc<Shared>, tcp: TcpStream, id: u64) {
    let _ = tcp.set_nodelay(true);
    if let Ok(peer) = tcp.peer_addr() {
        tracing::debug!(conn = id, client = %peer, "session");
    }
    let counted = Counted::take(&shared);
    run(shared, Tcp::new(tcp, None), id, counted, Greet::Due).await;
}

/// What a session still has to send of its greeting.
pub enum Greet {
    /// READY or BUSY, by the open-connection count.
    Due,
    /// READY was written already (by `adopt`), but for these bytes.
    Sent { rest: Vec<u8> },
}

/// Runs a session whose socket the proxy handed over (`adopt`); the client's address is
/// the one the proxy saw, or the one its PROXY header carried.
pub async fn serve_handed(
    shared: Rc<Shared>,
    tcp: TcpStream,
    id: u64,
    peer: std::net::SocketAddr,
    tally: Rc<Tally>,
    counted: Counted,
    greet: Greet,
) {
    tracing::info!(conn = id, client = %peer, "session handed over by the proxy");
    run(shared, Tcp::new(tcp, Some(tally)), id, counted, greet).await;
}

async fn run(shared: Rc<Shared>, tcp: Tcp, id: u64, counted: Counted, greet: Greet) {
    let timeout = Duration::from_secs(shared.config.timeout);
    let mut s = Session {
        shared,
        conn: Conn::Plain(tcp),
        input: Input::new(),
        out: Vec::with_capacity(1024),
        deadline: Instant::now() + timeout,
        timeout,
        user: None,
        invalid: 0,
        id,
        queued_for_peer: false,
    };
    match greet {
        Greet::Sent { rest } => {
            if s.shared.log_traffic {
                tracing::info!("C{}> {GREETING_READY}", s.id);
            }
            s.out.extend_from_slice(&rest);
            s.run().await;
        }
        Greet::Due if s.shared.conns.get() > s.shared.config.max_connections => {
            s.line(GREETING_BUSY.as_bytes());
        }
        Greet::Due => {
            s.line(GREETING_READY.as_bytes());
            s.run().await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        if s.flush().await {
            let _ = s.conn.shutdown().await;
        }
    })
    .await;
    if s.queued_for_peer {
        s.shared.sender_kick.notify_one();
    }
    drop(counted);
}

impl Session {
    async fn run(&mut self) {
        let shared = self.shared.clone();
        loop {
            // Between commands a stopping server closes the session; a command under way
            // (an upload waiting for its DONE) runs to its reply. The last reply is written
            // first, so that stopping never cuts it.
            if !self.flush().await {
                return;
            }
            let line = tokio::select! {
                biased;
                _ = shared.stopping() => None,
                line = self.next_line() => line,
            };
            let Some(line) = line else { break };
            let cmd = command::parse(&line);
            if cmd == Command::Invalid {
                self.invalid += 1;
                self.line(b"INVALID COMMAND");
                if self.invalid >= 3 {
                    return;
                }
                continue;
            }
            self.invalid = 0;
            match self.handle(cmd).await {
                Flow::Continue => {}
                Flow::Close => return,
            }
        }
    }

    // ----- output -----

    fn line(&mut self, l: &[u8]) {
        if self.shared.log_traffic {
            tracing::info!("C{}> {}", self.id, String::from_utf8_lossy(l));
        }
        self.out.extend_from_slice(l);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes buffered output; false if the peer is gone.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let ok = self.conn.write_all(&out).await.is_ok() && self.conn.flush().await.is_ok();
        self.out = out;
        self.out.clear();
        ok
    }

    // ----- input -----

    /// Reads more bytes before the idle deadline; false on EOF, error or timeout.
    async fn fill(&mut self) -> bool {
        if !self.flush().await {
            return false;
        }
        let space = self.input.space();
        match tokio::time::timeout_at(self.deadline, self.conn.read_buf(space)).await {
            Ok(Ok(n)) if n > 0 => true,
            Ok(_) => false,
            Err(_) => {
                tracing::debug!(conn = self.id, "idle timeout");
                false
            }
        }
    }

    fn touch(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// The next CRLF-terminated line; `None` closes the session (EOF, idle timeout, or a line
    /// over the limit — closed silently, as Twisted does).
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.input.line() {
                Line::Got(line) => {
                    self.touch();
                    if self.shared.log_traffic {
                        tracing::info!("C{}< {}", self.id, String::from_utf8_lossy(&line));
                    }
                    return Some(line);
                }
                Line::TooLong => return None,
                Line::More => {
                    if !self.fill().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Exactly `n` raw bytes (kept only if `keep`); `None` if the session ended first.
    async fn raw(&mut self, n: usize, keep: bool) -> Option<Vec<u8>> {
        let mut got = Vec::with_capacity(if keep { n.min(1 << 20) } else { 0 });
        let mut left = n;
        loop {
            left -= self.input.take(left, keep.then_some(&mut got));
            if left == 0 {
                return Some(got);
            }
            if !self.fill().await {
                return None;
            }
            self.touch();
        }
    }

    /// Block-lines and block-bytes states (docs/protocol.md §4.1).
    async fn read_upload(&mut self) -> Option<Upload> {
        let mut up = BlockLines::default();
        loop {
            let line = self.next_line().await?;
            match up.feed(line) {
                Next::Line => {}
                Next::Done(u) => return Some(u),
                Next::Raw { n, keep } => {
                    let payload = self.raw(n, keep).await?;
                    return Some(up.finish(keep.then_some(payload)));
                }
            }
        }
    }

    // ----- commands -----

    fn is_admin(&self) -> bool {
        self.user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("administrator"))
    }

    fn reply(&mut self, ok: bool) {
        self.line(if ok { b"DONE" } else { b"FAILED" });
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        let now = || crate::protocol::dt::format_dt(chrono::Utc::now());
        match cmd {
            Command::StoreServer(key) => {
                let Some(up) = self.read_upload().await else {
                    return Flow::Close;
                };
                let user = self.user.clone().unwrap_or_else(|| "none".into());
                // With `replpeer` set, a `replicate` copy goes to `sendqueue/`, durable with
                // the input-queue file before DONE (docs/protocol.md §3.1).
                let peer = self.shared.config.replpeer.is_some();
                let ok = self
                    .queue_upload(up, "server", &key, Some(&user), peer)
                    .await;
                self.queued_for_peer |= ok && peer;
                self.reply(ok);
            }
            Command::Replicate(key, from) => {
                let Some(up) = self.read_upload().await else {
                    return Flow::Close;
                };
                // Exactly `replication`, case-sensitive, as the original (docs/protocol.md §14 #6).
                let ok = if self.user.as_deref() == Some("replication") {
                    // Nothing is queued for this server's own peer (no loops).
                    self.queue_upload(up, "repl-in", &key, Some(&from), false)
                        .await
                } else {
                    false
                };
                self.reply(ok);
            }
            Command::StoreProxy(key, after) => {
                let Some(up) = self.read_upload().await else {
                    return Flow::Close;
                };
                // Relayed by the sender, neither validated nor stored here (docs/protocol.md §3.3).
                let allowed = self.user.is_some() || !self.shared.config.proxy_requires_login;
                let ok = allowed && self.queue_proxy(up, &key, after.as_deref()).await;
                self.queued_for_peer |= ok;
                self.reply(ok);
            }
            Command::StoreEntangled(key) => {
                let Some(up) = self.read_upload().await else {
                    return Flow::Close;
                };
                // Queued now, validated by the worker (docs/protocol.md §3.5); no login needed.
                let ok = self
                    .queue_upload(up, "entangled-outgoing", &key, None, false)
                    .await;
                self.reply(ok);
            }
            Command::GetEntangled(key, since) => {
                if !self.flush().await {
                    return Flow::Close;
                }
                let value = self.shared.entangled.find_value(&key).await;
                self.get_entangled(value, since.as_deref());
            }
            Command::DnsTxt(name) => {
                if !self.shared.config.permit_dns_txt {
                    self.line(b"FAILED");
                    return Flow::Continue;
                }
                if !self.flush().await {
                    return Flow::Close;
                }
                match self.shared.dns.lookup_txt(&name).await {
                    TxtAnswer::Records(records) => {
                        for r in records {
                            let mut l = b"TXT: ".to_vec();
                            l.extend_from_slice(&r);
                            self.line(&l);
                        }
                        self.line(b"EndBlock");
                    }
                    TxtAnswer::Failed => self.line(b"NOT FOUND"),
                }
                // The lookup may have taken a while: the idle clock starts again.
                self.touch();
            }
            Command::GetServer(key, since) => self.get_server(&key, since.as_deref()),
            Command::Login(user, key) => {
                let ok = if self.user.is_some() || user.eq_ignore_ascii_case("undefined") {
                    false
                } else {
                    let r = self.shared.auth.borrow_mut().login(&user, &key, &now());
                    match r {
                        Ok(LoginResult::Ok(u)) => {
                            self.user = Some(u);
                            true
                        }
                        Ok(LoginResult::Failed) => false,
                        Err(e) => {
                            tracing::error!("auth.txt: {e}");
                            false
                        }
                    }
                };
                // A failed LOGIN leaves the session identity as it was (docs/protocol.md §14 #1).
                self.reply(ok);
            }
            Command::AddLogin(user, key) => {
                let user = user.unwrap_or_else(|| "undefined".into());
                let ok = self.is_admin() && self.set_login(&user, &key, &now(), true);
                self.reply(ok);
            }
            Command::RmLogin(key) => {
                let ok = self.is_admin() && self.set_login("disabled", &key, &now(), true);
                self.reply(ok);
            }
            Command::RepLogin(user, key) => {
                let repl = self
                    .user
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case("replication"));
                // Not queued for this server's peer (docs/protocol.md §3.7: no loops).
                let ok = repl && self.set_login(&user, &key, &now(), false);
                self.reply(ok);
            }
            Command::GenLogin(n) => {
                let n = n.parse::<u64>().ok().filter(|&n| n <= MAX_GENLOGIN);
                match n {
                    Some(n) if self.is_admin() => {
                        let r = {
                            let mut auth = self.shared.auth.borrow_mut();
                            auth.generate(n, &self.shared.server_key, &now())
                        };
                        let r = r.map_err(|e| e.to_string()).and_then(|keys| {
                            let changes: Vec<(&str, &str)> =
                                keys.iter().map(|k| ("undefined", k.as_str())).collect();
                            self.queue_logins(&changes)?;
                            Ok(keys)
                        });
                        match r {
                            Ok(keys) => {
                                for k in keys {
                                    self.line(k.as_bytes());
                                }
                                self.line(b"EndBlock");
                            }
                            Err(e) => {
                                tracing::error!("GENLOGIN: {e}");
                                self.line(b"FAILED");
                            }
                        }
                    }
                    _ => self.line(b"FAILED"),
                }
            }
            Command::Ping(rest) => {
                let mut l = b"PONG".to_vec();
                l.extend_from_slice(&rest);
                self.line(&l);
            }
            Command::StartTls => return self.starttls().await,
            Command::Quit => {
                self.line(b"GOODBYE");
                return Flow::Close;
            }
            Command::SelfTest => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if self.shared.worker.send(Job::SelfTest(tx)).is_ok() {
                    if !self.flush().await {
                        return Flow::Close;
                    }
                    // No reply if the worker has died, as the original.
                    if let Ok(result) = rx.await {
                        self.line(result.as_bytes());
                        self.line(b"EndBlock");
                    }
                }
            }
            Command::Shutdown => {
                if self.is_admin() {
                    self.line(b"GOODBYE");
                    tracing::info!(conn = self.id, "SHUTDOWN by the administrator");
                    self.shared.begin_shutdown();
                    return Flow::Close;
                }
                self.line(b"FAILED");
            }
            Command::Invalid => unreachable!("handled by the caller"),
        }
        Flow::Continue
    }

    /// ADDLOGIN / RMLOGIN / REPLOGIN: key → user, appended to `auth.txt`; with `replicate`
    /// (ADDLOGIN, RMLOGIN), also queued for the peer before the reply.
    fn set_login(&mut self, user: &str, key: &str, now: &str, replicate: bool) -> bool {
        let r = {
            let mut auth = self.shared.auth.borrow_mut();
            auth.set(user, key, now).and_then(|_| auth.flush())
        };
        if let Err(e) = r {
            tracing::error!("auth.txt: {e}");
            return false;
        }
        if !replicate {
            return true;
        }
        match self.queue_logins(&[(user, key)]) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        }
    }

    /// Queues REPLOGIN files for the peer, durably, when `replpeer` is set (docs/protocol.md
    /// §10.1). A name already queued gets a fresh modification time instead: the sender goes
    /// oldest first, so the peer applies login changes in the order they were made.
    fn queue_logins(&mut self, changes: &[(&str, &str)]) -> Result<(), String> {
        if self.shared.config.replpeer.is_none() || changes.is_empty() {
            return Ok(());
        }
        let q = &self.shared.sendqueue;
        let mut files = Vec::new();
        for (user, key) in changes {
            let content = crate::server::sendfile::login_file(user, key);
            let name = crate::store::queue::name_of(&content);
            if q.exists(&name) {
                let touched = std::fs::File::options()
                    .write(true)
                    .open(q.path(&name))
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                if let Err(e) = touched {
                    tracing::warn!("touching send-queue file {name}: {e}");
                }
                continue;
            }
            files.push(
                q.write_unsynced(&name, &content)
                    .map_err(|e| e.to_string())?,
            );
        }
        q.sync_all(&files).map_err(|e| e.to_string())?;
        self.queued_for_peer = true;
        Ok(())
    }

    /// Checks an upload and makes it durable in the input queue; true → `DONE`.
    /// With `replicate`, the `replicate` copy for the peer is made durable with it.
    async fn queue_upload(
        &mut self,
        up: Upload,
        store_type: &str,
        key: &str,
        user: Option<&str>,
        replicate: bool,
    ) -> bool {
        let Some(body) = upload_body(up) else {
            return false;
        };
        // Entangled uploads have no LoginUser line (docs/protocol.md §6.1).
        let user_line = user.map_or(String::new(), |u| format!("LoginUser: {u}\n"));
        let with_prefix = |t: &str| {
            let mut c = format!("StoreType: {t}\nStoreKeyid: {key}\n{user_line}").into_bytes();
            c.extend_from_slice(&body);
            c
        };
        let content = with_prefix(store_type);
        let peer_copy = replicate.then(|| with_prefix("replicate"));
        if !self.flush().await {
            return false;
        }
        self.shared.ingest.submit(key, content, peer_copy).await
    }

    /// Makes a `STORE PROXY [AFTER]` upload durable as a `sendqueue/` proxy file
    /// (docs/protocol.md §3.3); true → `DONE`.
    async fn queue_proxy(&mut self, up: Upload, key: &str, embargo: Option<&str>) -> bool {
        let Some(body) = upload_body(up) else {
            return false;
        };
        let file = crate::server::sendfile::proxy_file(key, embargo, &body);
        if !self.flush().await {
            return false;
        }
        self.shared.ingest.submit_send(key, file).await
    }

    fn get_server(&mut self, key: &str, since: Option<&str>) {
        let block = match self.shared.tree.read(key) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("reading a block: {e}");
                None
            }
        };
        let block = match (block, since) {
            (Some(b), Some(d)) => since::since_filter(&b, d),
            (b, None) => b,
            (None, Some(_)) => None,
        };
        let block = block.filter(|b| self.user.is_some() || !since::hidden_from_anonymous(b));
        let Some(block) = block else {
            self.line(b"NOT FOUND");
            return;
        };
        let sent = send_block(&mut self.out, &block, DataLine::Prefix);
        self.slow_deadline(sent);
    }

    /// The rest of GET ENTANGLED (docs/protocol.md §3.5): no type hiding, and the data line is
    /// the full `Data: <n>` pattern.
    fn get_entangled(&mut self, value: Option<Vec<u8>>, since: Option<&str>) {
        let value = match (value, since) {
            (Some(v), Some(d)) => since::since_filter(&v, d),
            (v, None) => v,
            (None, Some(_)) => None,
        };
        let Some(value) = value else {
            self.line(b"NOT FOUND");
            return;
        };
        if self.shared.log_traffic {
            tracing::info!("C{}> ({} bytes of block)", self.id, value.len());
        }
        let sent = send_block(&mut self.out, &value, DataLine::Pattern);
        self.slow_deadline(sent);
    }

    /// A long reply gets the time a slowest-allowed client needs to read it.
    fn slow_deadline(&mut self, sent: usize) {
        let slow = sent as u64 / self.shared.config.slowest_connection.max(1);
        self.deadline = Instant::now() + self.timeout.max(Duration::from_secs(slow));
    }

    async fn starttls(&mut self) -> Flow {
        let Conn::Plain(_) = self.conn else {
            self.line(b"FAILED");
            return Flow::Continue;
        };
        self.line(b"PROCEED");
        if !self.flush().await {
            return Flow::Close;
        }
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Closed) else {
            return Flow::Close;
        };
        let early = self.input.split_off();
        let acceptor = self.shared.tls.clone();
        let hs = tokio::time::timeout_at(self.deadline, acceptor.accept(Rewind::new(early, tcp)));
        match hs.await {
            Ok(Ok(tls)) => {
                self.conn = Conn::Tls(Box::new(tls));
                self.touch();
                self.line(b"ENCRYPTED");
                Flow::Continue
            }
            Ok(Err(e)) => {
                tracing::debug!(conn = self.id, "TLS handshake failed: {e}");
                Flow::Close
            }
            Err(_) => Flow::Close,
        }
    }
}

/// The block of an upload as queued (lines + LF, then the payload), or `None` if it may not
/// be queued: not a block, a forbidden header, or no header lines (the original sends no
/// reply at all to an empty block, docs/protocol.md §14 #3).
fn upload_body(up: Upload) -> Option<Vec<u8>> {
    let Upload::Block { lines, payload } = up else {
        return None;
    };
    if lines.is_empty() || lines.iter().any(|l| forbidden(l)) {
        return None;
    }
    let mut body = Vec::new();
    for l in &lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    if let Some(p) = payload {
        body.extend_from_slice(&p);
    }
    Some(body)
}

fn forbidden(line: &[u8]) -> bool {
    let lower = line.get(..16).unwrap_or(line).to_ascii_lowercase();
    FORBIDDEN.iter().any(|p| lower.starts_with(p))
}

/// How [`send_block`] knows the line after which the payload follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLine {
    /// Starts with `Data: ` in any case (GET SERVER).
    Prefix,
    /// Is `Data: <n>` with n a number without leading zero, any case (GET ENTANGLED).
    Pattern,
}

impl DataLine {
    fn matches(self, line: &[u8]) -> bool {
        let Some((head, n)) = line.split_at_checked(6) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(b"data: ") {
            return false;
        }
        match self {
            DataLine::Prefix => true,
            DataLine::Pattern => {
                n.first().is_some_and(|&c| (b'1'..=b'9').contains(&c))
                    && n.iter().all(u8::is_ascii_digit)
            }
        }
    }
}

/// Writes a stored block as docs/protocol.md §4.2 says; returns the bytes added to `out`.
pub fn send_block(out: &mut Vec<u8>, block: &[u8], data: DataLine) -> usize {
    let before = out.len();
    let mut pos = 0;
    while pos < block.len() {
        let (piece, next) = match block[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&block[pos..pos + i], pos + i + 1),
            None => (&block[pos..], block.len()),
        };
        let mut line = piece;
        while let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        pos = next;
        if data.matches(line) {
            out.extend_from_slice(&block[pos..]);
            return out.len() - before;
        }
    }
    out.extend_from_slice(b"EndBlock\r\n");
    out.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sending() {
        let mut out = Vec::new();
        send_block(
            &mut out,
            b"Type: data\nDate: x\r\nData: 5\nhe\nlo",
            DataLine::Prefix,
        );
        assert_eq!(out, b"Type: data\r\nDate: x\r\nData: 5\r\nhe\nlo");
        out.clear();
        send_block(&mut out, b"A: 1\nB: 2\n", DataLine::Prefix);
        assert_eq!(out, b"A: 1\r\nB: 2\r\nEndBlock\r\n");
        // GET ENTANGLED: only a real length ends the header lines.
        out.clear();
        send_block(&mut out, b"DATA: 05\nData: 2\nab", DataLine::Pattern);
        assert_eq!(out, b"DATA: 05\r\nData: 2\r\nab");
        out.clear();
        send_block(&mut out, b"data: x\nB\n", DataLine::Pattern);
        assert_eq!(out, b"data: x\r\nB\r\nEndBlock\r\n");
    }

    #[test]
    fn upload_line_rules() {
        assert!(forbidden(b"LoginUser: x"));
        assert!(forbidden(b"storetype: x"));
        assert!(!forbidden(b"LoginUser:x"));
        assert!(!forbidden(b"Post-To: server=x"));
    }
}
