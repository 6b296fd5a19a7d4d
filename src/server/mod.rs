//! The built-in store server (`storeherd store`): protocol, blocks, validation, auth.
//!
//! Network I/O runs on one thread (a tokio current-thread runtime); uploads are made durable
//! by the `ingest` committer thread and processed one block at a time by the `worker` thread,
//! as in the original (docs/protocol.md §1, §6). Two helpers take file-system work off the worker
//! without touching blocks: `leaves` makes leaf folders ahead of it, `publish` syncs and
//! renames its finished batches.
//!
//! Deliberate deviations from the original, all toward safety:
//! - `DONE` only once the upload is durable, in the input journal (`store::journal`, in
//!   place of one `inputqueue/` file per upload: one `fdatasync` per round covers the uploads
//!   of any number of connections); queue files left in `inputqueue/` (by the original
//!   server) are processed at start, torn ones dropped (they were never acknowledged).
//! - Store files are replaced atomically (temporary file in the leaf, `syncfs`, rename,
//!   `syncfs`), under an OFD fcntl lock on the leaf `LOCKFILE`, which excludes Python's
//!   `lockf`; an upload is released only after its result is durable.
//! - A failed second LOGIN leaves the session identity unchanged (§14 #1); a block that
//!   fails or panics validation is dropped and logged, the worker carries on (§14 #2).
//! - A STORE/REPLICATE with no header lines answers `FAILED` (the original is silent, §14 #3).
//! - One-word `auth.txt` lines and colon-less `config.txt` lines are skipped with a warning
//!   (§14 #16); a bad config value stops start-up with exit status 2.
//! - `Data: n` above 64 MiB is read, discarded and answered `FAILED` (never storable);
//!   `GENLOGIN n` above 100,000 answers `FAILED`; a second STARTTLS answers `FAILED`.
//! - TLS 1.2 and 1.3 (the original: 1.2 only); listens on `listen_address` (default
//!   127.0.0.1), not every interface.
//! - The idle timeout closes exactly `timeout` seconds after the last input (the original's
//!   5-second countdown closes 0–5 s later).
//!
//! Entangled store, DNS and notifier:
//! - STORE ENTANGLED and GET ENTANGLED work on the entangled tree (`entangled/`, §11) and
//!   the instance's DHT node on UDP `eport` (`crate::dht`): an upload is queued (`DONE`),
//!   validated with the DHT rules and published, this node's own copy coming back as an
//!   incoming store; GET ENTANGLED serves the tree and asks the DHT when it has no copy.
//!   Without its UDP port the server still serves the tree (the original would not
//!   start). Under `storeherd up` every instance shares one tree, each its own node.
//! - DNS TXT asks the system resolver, or `dns_resolver` (storeherd only), and gives up
//!   after `dns_timeout` seconds (default 10; Twisted's resolver tries for about a minute).
//! - The notifier (`notify.txt`, §12.2) mails from a thread of its own: a slow SMTP server
//!   never delays the worker; notices beyond its backlog are dropped with a log line, and
//!   a broken `notify.txt` line is skipped with one (the original's store thread died).
//!
//! Relay (`STORE PROXY [AFTER]`, §3.3, §10.4): the proxy file is durable (input journal)
//! before `DONE`; the sender relays it, through SOCKS5 (`route`) as configured. It logs and
//! keeps a file the original's sender would stop on for good (no `Date:`, a bad `Post-To`); an
//! embargoed file also expires `expire_days` after its embargo; `Post-To: replicate` is
//! refused; `entangled` targets get `STORE ENTANGLED` on this server, reached directly. The
//! sender writes no certificate records of its peers (§10.6).

pub mod adopt;
pub mod auth;
pub mod command;
pub mod config;
pub mod conn;
pub mod dht_values;
pub mod dns;
pub mod entangled;
pub mod framing;
pub mod identity;
pub mod ingest;
pub mod keyannounce;
pub mod leaves;
pub mod notify;
pub mod publish;
pub mod route;
pub mod run;
pub mod sender;
pub mod sendfile;
pub mod session;
pub mod since;
pub mod tls;
pub mod validate;
pub mod worker;

use std::cell::{Cell, RefCell};
use std::sync::mpsc;

pub use run::{run, Listeners, RunOptions, ServerError};

/// State shared by the sessions (all on the network thread).
pub struct Shared {
    pub config: config::Config,
    pub tree: crate::store::tree::Tree,
    /// The entangled tree, for GET ENTANGLED (docs/protocol.md §11).
    pub entangled: entangled::Entangled,
    pub dns: dns::Dns,
    /// `-logtraffic`: every line in and out is logged.
    pub log_traffic: bool,
    pub auth: RefCell<auth::AuthTable>,
    /// Bytes of `ssl/server.key` (the GENLOGIN seed).
    pub server_key: Vec<u8>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub ingest: ingest::Ingest,
    /// `sendqueue/` (docs/protocol.md §10.1).
    pub sendqueue: crate::store::queue::Queue,
    /// Starts a sender run (a session that queued something for the peer has closed).
    pub sender_kick: tokio::sync::Notify,
    pub liveness: std::sync::Arc<sender::Liveness>,
    pub worker: mpsc::Sender<worker::Job>,
    /// Open connections, refused ones included (docs/protocol.md §2).
    pub conns: Cell<usize>,
    /// The last connection closed (`conns` fell to 0): what a stopping server waits for.
    pub idle: tokio::sync::Notify,
    /// Set once the server is stopping: it accepts no more, and sessions close between
    /// commands.
    pub stop: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Stops accepting; sessions finish the command they are in and close, and the server
    /// then stops its worker and exits.
    pub fn begin_shutdown(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the server is stopping.
    pub async fn stopping(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}
