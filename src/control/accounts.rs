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
    /// Changes another host of the site took first (`POST /site/accounts` only): applied
    /// to this host's ledger and instances, never forwarded again.
    Forwarded {
        /// The sending host's name.
        from: String,
        kind: ChangeKind,
        ops: Vec<AccountOp>,
    },
}

/// One account line: the key's new value (a user, `undefined` or `disabled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountOp {
    pub user: String,
    pub key: String,
}

/// Where a forwarded change started on the sending host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// An administrator's command (add, add-key, rm, gen): applied as given, and this
    /// host's instances pass it on to their peers as the sender's do.
    Command,
    /// A free key bound by a first LOGIN on one of the sender's instances.
    Claim,
    /// Another line seen in a sender's instance's auth.txt (a REPLOGIN from the peer site,
    /// an administrator's own session): applied here only.
    Change,
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
    /// With `hosts`, one entry per other host of the site the change was forwarded to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostDelivery>,
}

/// How another host of the site took a forwarded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDelivery {
    pub host: String,
    /// Its admin API, as this host calls it.
    pub admin: String,
    /// Its ledger has the change.
    pub done: bool,
    /// Why not yet, when not; the change is sent again until it is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// The instances that did not answer `DONE`.
    pub fn missed(&self) -> impl Iterator<Item = &Delivery> {
        self.instances.iter().filter(|d| !d.done)
    }

    /// The other hosts that have not taken the change yet.
    pub fn missed_hosts(&self) -> impl Iterator<Item = &HostDelivery> {
        self.hosts.iter().filter(|d| !d.done)
    }
}

/// Where a [`Command`]'s answer goes.
pub type Reply = oneshot::Sender<Result<Report, ControlError>>;
