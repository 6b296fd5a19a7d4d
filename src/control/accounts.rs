//! The accounts vocabulary: what `storeherd accounts …` asks of the supervisor and what it
//! answers (`POST /accounts`, `GET /accounts`).

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::ControlError;

/// An accounts command refused for what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0:?} is not a key: keys are 8 to 40 letters and digits")]
    NotAKey(String),
    #[error("that is the administrator's or the replication key")]
    RoleKey,
    #[error("{0:?} is not a userhash: 8 to 40 letters and digits (normally the 40-digit key fingerprint)")]
    NotAUserhash(String),
    #[error("{0} is a reserved name; use add-key for a free key, rm to disable one")]
    ReservedName(String),
    #[error("the key is bound to {0}; `accounts rm` it first, or `accounts add` another user")]
    KeyBound(String),
    #[error("gen makes 1 to {max} keys")]
    GenCount { max: u32 },
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
