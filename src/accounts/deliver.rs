//! Sends account changes to one instance: one worker per instance, so the changes reach it
//! in the order the ledger took them. Each batch is one session on the instance's own port:
//! `LOGIN administrator <key>`, then ADDLOGIN / RMLOGIN lines, each answered `DONE`.

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
    #[error("`LOGIN administrator` failed: its auth.txt lacks the administrator key")]
    AdminLogin,
    #[error("`{command}` answered {reply:?}")]
    Refused { command: String, reply: String },
}

/// A change for one instance: the key's new value, `undefined` and `disabled` included.
pub type Op = (String, String);

/// The protocol line that gives `key` the value `user`.
pub fn command_line(user: &str, key: &str) -> String {
    if user.eq_ignore_ascii_case(DISABLED) {
        format!("RMLOGIN {key}")
    } else if user.eq_ignore_ascii_case(UNDEFINED) {
        format!("ADDLOGIN {key}")
    } else {
        debug_assert!(!is_special(user));
        format!("ADDLOGIN {user} {key}")
    }
}

pub struct Batch {
    pub addr: SocketAddr,
    pub ops: Vec<Op>,
    /// Where the outcome goes when a command is waiting for it.
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What a worker tells the actor after each batch.
pub struct Delivered {
    pub id: u32,
    pub keys: Vec<String>,
    pub result: Result<(), String>,
}

/// Runs batches for instance `id` until its queue closes.
pub async fn worker(
    id: u32,
    admin_key: String,
    mut batches: mpsc::UnboundedReceiver<Batch>,
    results: mpsc::UnboundedSender<Delivered>,
) {
    while let Some(batch) = batches.recv().await {
        let result = session(batch.addr, &admin_key, &batch.ops)
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
        if results.send(Delivered { id, keys, result }).is_err() {
            return;
        }
    }
}

async fn session(addr: SocketAddr, admin_key: &str, ops: &[Op]) -> Result<(), DeliverError> {
    let mut c = Client::connect(addr, TIMEOUT).await?;
    if !c.login("administrator", admin_key).await? {
        return Err(DeliverError::AdminLogin);
    }
    for chunk in ops.chunks(CHUNK) {
        let lines: Vec<String> = chunk.iter().map(|(u, k)| command_line(u, k)).collect();
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
        assert_eq!(command_line("U", "K"), "ADDLOGIN U K");
        assert_eq!(command_line("undefined", "K"), "ADDLOGIN K");
        assert_eq!(command_line("disabled", "K"), "RMLOGIN K");
    }
}
