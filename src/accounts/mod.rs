//! Accounts across instances (DESIGN.md "Accounts across instances"): the ledger
//! `<data>/accounts.txt`, the fan-out of every change to each local instance (`LOGIN
//! administrator` + ADDLOGIN/RMLOGIN on its own port, not through the proxy), retries of the
//! instances that missed a change, and the propagation of claims (a free key bound by a
//! first LOGIN on one instance) and of REPLOGIN lines from the peer site.
//!
//! The supervisor owns one [`Accounts`] actor; the admin API hands it [`Command`]s and it
//! answers with a [`Report`].

mod actor;
mod deliver;
pub mod ledger;
mod tail;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::admin::api::{ControlError, InstanceState};
use crate::supervisor::provision::Prepared;

/// Most keys one `gen` makes.
pub const MAX_GEN: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("accounts ledger {path}: {source}")]
    Ledger {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One account line: user (or `undefined`/`disabled`), key, and the date it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub user: String,
    pub key: String,
    pub date: String,
}

/// What `storeherd accounts …` asks of the supervisor (`POST /accounts`, `GET /accounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Bind `key` to `user` everywhere.
    Add { user: String, key: String },
    /// Add a free key (`undefined`) everywhere.
    AddKey { key: String },
    /// Disable `key` everywhere.
    Rm { key: String },
    /// Make `count` new free keys and add them everywhere.
    Gen { count: u32 },
    /// The ledger's current mapping.
    List,
}

/// How one instance took a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: u32,
    pub addr: String,
    /// Every command answered `DONE`.
    pub done: bool,
    /// Why not, when not; the change stays pending for this instance and is sent again once
    /// it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub message: String,
    /// The keys `gen` made.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The ledger's mapping (`list`).
    #[serde(default)]
    pub accounts: Vec<Entry>,
    /// One entry per local instance the change was sent to.
    #[serde(default)]
    pub instances: Vec<Delivery>,
}

impl Report {
    /// The instances that did not answer `DONE`.
    pub fn missed(&self) -> impl Iterator<Item = &Delivery> {
        self.instances.iter().filter(|d| !d.done)
    }
}

/// Where a [`Command`]'s answer goes.
pub type Reply = oneshot::Sender<Result<Report, ControlError>>;

enum Msg {
    Command(Command, Reply),
    Instance {
        id: u32,
        addr: SocketAddr,
        home: PathBuf,
        state: InstanceState,
    },
    Gone(u32),
}

/// The supervisor's handle on the accounts actor. Dropping every handle stops it.
#[derive(Clone)]
pub struct Accounts {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Accounts {
    /// Loads the ledger and starts the actor (on the current tokio runtime).
    pub fn start(prepared: Arc<Prepared>) -> Result<Accounts, AccountsError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = actor::Actor::new(&prepared)?;
        tokio::spawn(actor.run(rx));
        Ok(Accounts { tx })
    }

    /// Carries out `cmd`; the answer arrives on `reply`.
    pub fn submit(&self, cmd: Command, reply: Reply) {
        if let Err(mpsc::error::SendError(Msg::Command(_, reply))) =
            self.tx.send(Msg::Command(cmd, reply))
        {
            let _ = reply.send(Err(ControlError::ShuttingDown));
        }
    }

    /// What the supervisor knows of instance `id` now (sent on every change).
    pub fn instance(&self, id: u32, addr: SocketAddr, home: PathBuf, state: InstanceState) {
        let _ = self.tx.send(Msg::Instance {
            id,
            addr,
            home,
            state,
        });
    }

    /// Instance `id` is gone (removed, or the supervisor is stopping).
    pub fn gone(&self, id: u32) {
        let _ = self.tx.send(Msg::Gone(id));
    }
}
