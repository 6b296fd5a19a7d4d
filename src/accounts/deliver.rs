//! Sends account changes to one instance: one worker per instance, so the changes reach it
//! in the order the ledger took them. Each batch is one session on the instance's own port:
//! `LOGIN administrator <key>`, then ADDLOGIN / RMLOGIN lines, each answered `DONE`.
//!
//! With a peer site, ADDLOGIN and RMLOGIN also queue a REPLOGIN to the paired instance. A
//! change that must stay local (it came from the peer, or only repairs an instance that
//! missed it) goes as `LOGIN replication <key>` + REPLOGIN, which queues nothing: otherwise
//! the two sites would echo changes back and forth.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::ledger::{is_special, DISABLED, UNDEFINED};
use crate::wire::{Client, WireError};

/// Bound on the connect and on each reply.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Commands sent before their replies are read: the replies of one chunk fit any socket
/// buffer, so neither side blocks on a full one.
const CHUNK: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("`LOGIN {0}` failed: its auth.txt lacks that key")]
    Login(&'static str),
    #[error("`{command}` answered {reply:?}")]
    Refused { command: String, reply: String },
}

/// A change for one instance: the key's new value, `undefined` and `disabled` included.
pub type Op = (String, String);

/// The protocol line that gives `key` the value `user` (REPLOGIN when `local`).
pub fn command_line(user: &str, key: &str, local: bool) -> String {
    if local {
        format!("REPLOGIN {user} {key}")
    } else if user.eq_ignore_ascii_case(DISABLED) {
        format!("RMLOGIN {key}")
    } else if user.eq_ignore_ascii_case(UNDEFINED) {
        format!("ADDLOGIN {key}")
    } else {
        debug_assert!(!is_special(user));
        format!("ADDLOGIN {user} {key}")
    }
}

/// The keys a worker logs in with.
#[derive(Clone)]
pub struct Keys {
    pub admin: String,
    pub replication: Option<String>,
}

pub struct Batch {
    pub addr: SocketAddr,
    pub ops: Vec<Op>,
    /// Let the instance pass the changes on to its peer (ADDLOGIN/RMLOGIN), or not.
    pub replicate: bool,
    /// Where the outcome goes when a command is waiting for it.
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What a worker tells the actor after each batch.
pub struct Delivered {
    pub id: u32,
    pub keys: Vec<String>,
    pub replicate: bool,
    pub result: Result<(), String>,
}

/// Runs batches for instance `id` until its queue closes.
pub async fn worker(
    id: u32,
    keys: Keys,
    mut batches: mpsc::UnboundedReceiver<Batch>,
    results: mpsc::UnboundedSender<Delivered>,
) {
    while let Some(batch) = batches.recv().await {
        let login = match (&keys.replication, batch.replicate) {
            (Some(k), false) => ("replication", k.as_str()),
            _ => ("administrator", keys.admin.as_str()),
        };
        let result = session(batch.addr, login, &batch.ops)
            .await
            .map_err(|e| e.to_string());
        debug!(
            instance = id,
            ops = batch.ops.len(),
            ?result,
            "account changes sent"
        );
        if let Some(done) = batch.done {
            let _ = done.send(result.clone());
        }
        let keys = batch.ops.into_iter().map(|(_, k)| k).collect();
        let done = Delivered {
            id,
            keys,
            replicate: batch.replicate,
            result,
        };
        if results.send(done).is_err() {
            return;
        }
    }
}

async fn session(
    addr: SocketAddr,
    (user, key): (&'static str, &str),
    ops: &[Op],
) -> Result<(), DeliverError> {
    let mut c = Client::connect(addr, TIMEOUT).await?;
    if !c.login(user, key).await? {
        return Err(DeliverError::Login(user));
    }
    let local = user == "replication";
    for chunk in ops.chunks(CHUNK) {
        let lines: Vec<String> = chunk
            .iter()
            .map(|(u, k)| command_line(u, k, local))
            .collect();
        for line in &lines {
            c.queue_line(line);
        }
        for line in lines {
            let reply = c.read_line().await?;
            if reply != "DONE" {
                return Err(DeliverError::Refused {
                    command: line,
                    reply,
                });
            }
        }
    }
    // The changes are in; a failed goodbye changes nothing.
    let _ = c.quit().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(command_line("U", "K", false), "ADDLOGIN U K");
        assert_eq!(command_line("undefined", "K", false), "ADDLOGIN K");
        assert_eq!(command_line("disabled", "K", false), "RMLOGIN K");
        assert_eq!(command_line("disabled", "K", true), "REPLOGIN disabled K");
        assert_eq!(command_line("U", "K", true), "REPLOGIN U K");
    }
}
