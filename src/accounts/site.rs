//! The cross-host leg of accounts: with a site over several hosts, every change this host
//! takes first — an administrator's command, a claim or another line seen in one of its
//! instances' auth.txt — goes to every other host's admin API (`POST /site/accounts`),
//! which writes it to its own ledger and sends it to its own instances. One sender per
//! other host keeps the changes in order and tries each one again until it is taken; a
//! host never forwards what it was forwarded, so nothing comes back.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::deliver::Op;
use crate::admin::client::AdminClient;
use crate::control::accounts::{AccountOp, ChangeKind, Command, HostDelivery};
use crate::control::site::{HostLink, SiteHosts};

/// First pause after a failed attempt; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Bound on one request body: below the admin API's body limit (4 KiB), with room to spare.
const MAX_BODY: usize = 3000;
/// A failure is logged on the first attempt and then once every this many.
const LOG_EVERY: u32 = 30;

/// What one other host answered, or will.
pub struct HostWait {
    pub host: String,
    pub admin: String,
    pub rx: oneshot::Receiver<Result<(), String>>,
}

struct Outgoing {
    kind: ChangeKind,
    ops: Vec<Op>,
    /// The first outcome: taken, or the first failure (it is tried again all the same).
    first: Option<oneshot::Sender<Result<(), String>>>,
}

struct Peer {
    link: HostLink,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// The senders to the other hosts of the site.
pub struct Leg {
    hosts: SiteHosts,
    peers: Vec<Peer>,
}

impl Leg {
    /// Starts one sender per other host (on the current tokio runtime).
    pub fn start(hosts: SiteHosts) -> Leg {
        let peers = hosts
            .others()
            .map(|link| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(sender(
                    hosts.me.clone(),
                    link.clone(),
                    hosts.token.clone(),
                    rx,
                ));
                Peer {
                    link: link.clone(),
                    tx,
                }
            })
            .collect();
        Leg { hosts, peers }
    }

    pub fn me(&self) -> &str {
        &self.hosts.me
    }

    /// A host's place in the site's list; unknown names come last.
    pub fn rank(&self, name: &str) -> usize {
        self.hosts.rank(name).unwrap_or(usize::MAX)
    }

    /// Queues `ops` for every other host; with `report`, one [`HostWait`] per host.
    pub fn forward(&self, kind: ChangeKind, ops: &[Op], report: bool) -> Vec<HostWait> {
        let mut waits = Vec::new();
        if ops.is_empty() {
            return waits;
        }
        for p in &self.peers {
            let (first, rx) = if report {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let out = Outgoing {
                kind,
                ops: ops.to_vec(),
                first,
            };
            if p.tx.send(out).is_err() {
                continue;
            }
            if let Some(rx) = rx {
                waits.push(HostWait {
                    host: p.link.name.clone(),
                    admin: p.link.admin.clone(),
                    rx,
                });
            }
        }
        waits
    }
}

/// Sends one host the changes, in order, each until it is taken.
async fn sender(
    me: String,
    to: HostLink,
    token: Option<String>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        let mut first = out.first;
        for ops in chunks(&out.ops) {
            let cmd = Command::Forwarded {
                from: me.clone(),
                kind: out.kind,
                ops,
            };
            let mut pause = RETRY_MIN;
            let mut failures = 0u32;
            loop {
                match send(&to, token.clone(), &cmd).await {
                    Ok(()) => break,
                    Err(e) => {
                        if let Some(f) = first.take() {
                            let _ = f.send(Err(e.clone()));
                        }
                        if failures.is_multiple_of(LOG_EVERY) {
                            warn!(
                                host = %to.name,
                                admin = %to.admin,
                                "account change not taken by host {} yet: {e}; trying again",
                                to.name
                            );
                        }
                        failures += 1;
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_MAX);
                    }
                }
            }
            if failures > 0 {
                info!(host = %to.name, failures, "account change taken by host {}", to.name);
            }
        }
        if let Some(f) = first {
            let _ = f.send(Ok(()));
        }
    }
}

async fn send(to: &HostLink, token: Option<String>, cmd: &Command) -> Result<(), String> {
    let client = AdminClient::resolve(&to.admin, token)
        .await
        .map_err(|e| e.to_string())?;
    client.forward(cmd).await.map_err(|e| e.to_string())
}

/// `ops` cut into requests that each fit the admin API's body limit.
fn chunks(ops: &[Op]) -> Vec<Vec<AccountOp>> {
    let mut out = Vec::new();
    let mut cur: Vec<AccountOp> = Vec::new();
    let mut size = 0;
    for (user, key) in ops {
        // `{"user":"…","key":"…"},` and a little more.
        let one = user.len() + key.len() + 32;
        if !cur.is_empty() && size + one > MAX_BODY {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += one;
        cur.push(AccountOp {
            user: user.clone(),
            key: key.clone(),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The reports of the hosts a command was forwarded to, waited for until `deadline`.
pub async fn collect(waits: Vec<HostWait>, deadline: tokio::time::Instant) -> Vec<HostDelivery> {
    let mut out = Vec::new();
    for w in waits {
        let (done, error) = match tokio::time::timeout_at(deadline, w.rx).await {
            Ok(Ok(Ok(()))) => (true, None),
            Ok(Ok(Err(e))) => (false, Some(e)),
            Ok(Err(_)) => (false, Some("the supervisor is stopping".into())),
            Err(_) => (false, Some("no answer yet; still trying".into())),
        };
        out.push(HostDelivery {
            host: w.host,
            admin: w.admin,
            done,
            error,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_body_limit_and_keep_the_order() {
        let key = |i: usize| format!("{i:040}");
        let ops: Vec<Op> = (0..500)
            .map(|i| ("undefined".to_string(), key(i)))
            .collect();
        let parts = chunks(&ops);
        assert!(parts.len() > 1);
        let mut seen = 0;
        for part in &parts {
            let cmd = Command::Forwarded {
                from: "h1".into(),
                kind: ChangeKind::Command,
                ops: part.clone(),
            };
            let body = serde_json::to_string(&cmd).unwrap();
            assert!(body.len() < 4096, "{}", body.len());
            for op in part {
                assert_eq!(op.key, key(seen));
                seen += 1;
            }
        }
        assert_eq!(seen, 500);
        assert!(chunks(&[]).is_empty());
    }
}
