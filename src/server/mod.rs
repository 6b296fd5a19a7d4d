//! The built-in store server (`storeherd store`): protocol, blocks, validation, auth.
//!
//! Network I/O runs on one thread (a tokio current-thread runtime); uploads are made durable
//! by the `ingest` committer thread and processed one block at a time by the `worker` thread,
//! as in the original (PROTOCOL.md §1, §6). Two helpers take file-system work off the worker
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
//! - `STORE PROXY [AFTER]` files are durable (input journal) before `DONE`; the sender
//!   (`sender`) relays them, through SOCKS5 (`route`) as configured, and logs and keeps a file
//!   the original's sender would stop on for good (no `Date:`, a bad `Post-To`, §10.4); an
//!   embargoed file also expires `expire_days` after its embargo; `Post-To: replicate` is
//!   refused; `entangled` targets are reached directly, never through a proxy.
//!
//! Not supported (answered as the original answers when it cannot serve): `STORE ENTANGLED`
//! reads the block and answers `FAILED` (so `Post-To: entangled` targets are retried per
//! `retry_schedule` until they expire); `GET ENTANGLED` answers `NOT FOUND`; `DNS TXT` answers
//! `NOT FOUND` (a failed lookup), or `FAILED` with `permit_dns_txt: false`. No notifier
//! (`notify.txt`), no certificate records of sender peers (§10.6), no key-announcement
//! verification.

pub mod auth;
pub mod command;
pub mod compose;
pub mod config;
pub mod conn;
pub mod dt;
pub mod framing;
pub mod header;
pub mod identity;
pub mod ingest;
pub mod keyannounce;
pub mod leaves;
pub mod pow;
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

pub use run::{run, ServerError};

/// State shared by the sessions (all on the network thread).
pub struct Shared {
    pub config: config::Config,
    pub tree: crate::store::tree::Tree,
    pub auth: RefCell<auth::AuthTable>,
    /// Bytes of `ssl/server.key` (the GENLOGIN seed).
    pub server_key: Vec<u8>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub ingest: ingest::Ingest,
    /// `sendqueue/` (PROTOCOL.md §10.1).
    pub sendqueue: crate::store::queue::Queue,
    /// Starts a sender run (a session that queued something for the peer has closed).
    pub sender_kick: tokio::sync::Notify,
    pub liveness: std::sync::Arc<sender::Liveness>,
    pub worker: mpsc::Sender<worker::Job>,
    /// Open connections, refused ones included (PROTOCOL.md §2).
    pub conns: Cell<usize>,
    pub stopping: Cell<bool>,
    pub stop: tokio::sync::Notify,
}

impl Shared {
    /// Stops accepting; the server then stops its worker and exits.
    pub fn begin_shutdown(&self) {
        self.stopping.set(true);
        self.stop.notify_one();
    }
}
