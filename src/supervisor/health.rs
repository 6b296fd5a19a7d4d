//! The health check of one instance: connect, `READY` greeting, `SELFTEST` → `PASS` then
//! `EndBlock`. The SELFTEST marker goes through the server's block FIFO, so a pass proves the
//! block-processing thread is alive, not just the listener (DESIGN.md "Instance lifecycle").

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::{Client, WireError};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("SELFTEST answered {0:?}")]
    SelfTestFailed(Vec<String>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One check, bounded by `timeout` as a whole.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let attempt = async {
        let mut client = Client::connect(addr, timeout).await?;
        let lines = client.selftest().await?;
        // Closing without QUIT is fine; the server treats EOF as the end of the session.
        if lines
            .first()
            .is_some_and(|l| l.eq_ignore_ascii_case("PASS"))
        {
            Ok(())
        } else {
            Err(HealthError::SelfTestFailed(lines))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| HealthError::Timeout(timeout))?
}
