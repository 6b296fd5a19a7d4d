//! The built-in store server (`storeherd store`): protocol, blocks, validation, auth.
//!
//! Network I/O runs on one thread (a tokio current-thread runtime); uploads are made durable
//! by the `ingest` committer thread and processed one block at a time by the `worker` thread,
//! as in the original (PROTOCOL.md §1, §6).

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
pub mod pow;
pub mod run;
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
