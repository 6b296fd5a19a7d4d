//! Accounts across instances (docs/design.md "Accounts across instances"): the ledger
//! `<data>/accounts.txt`, the fan-out of every change to each local instance (`LOGIN
//! administrator` + ADDLOGIN/RMLOGIN on its own port, not through the proxy), retries of the
//! instances that missed a change, and the propagation of claims (a free key bound by a
//! first LOGIN on one instance) and of REPLOGIN lines from the peer site; with a site over
//! several hosts, the forwarding of all of these to the other hosts (`site.rs`).
//!
//! The supervisor owns one [`Accounts`] actor; the admin API hands it [`Command`]s and it
//! answers with a [`Report`] (their vocabulary lives in [`crate::control::accounts`]).

mod actor;
mod deliver;
pub mod ledger;
mod site;
mod tail;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::control::{ControlError, InstanceState};

pub use crate::control::accounts::{Command, Delivery, Entry, Reply, Report};

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

/// What the actor starts from: the ledger and the two keys every home must keep.
pub struct Setup {
    /// The accounts ledger, `<data>/accounts.txt` (auth.txt format).
    pub ledger: PathBuf,
    pub admin_key: String,
    /// The shared replication key, with `sites`.
    pub replication_key: Option<String>,
    /// With a site over several hosts: where the other hosts' admin APIs are, which get
    /// every change this host takes first.
    pub site: Option<crate::control::site::SiteHosts>,
}

// The keys stay out of logs and panics.
impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

/// The supervisor's handle on the accounts actor. Dropping every handle stops it.
#[derive(Clone)]
pub struct Accounts {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Accounts {
    /// Loads the ledger and starts the actor (on the current tokio runtime).
    pub fn start(setup: Setup) -> Result<Accounts, AccountsError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = actor::Actor::new(setup)?;
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
