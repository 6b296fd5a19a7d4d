//! The health check of one instance: connect, `READY` greeting, `SELFTEST` → `PASS` then
//! `EndBlock`. The SELFTEST marker goes through the server's block FIFO, so a pass proves the
//! block-processing thread is alive, not just the listener (docs/design.md "Instance lifecycle").

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

impl HealthError {
    /// The check could not be made for lack of a local resource (the supervisor out of file
    /// descriptors or memory): it says nothing about the instance, so it must not count as a
    /// failure — else a proxy full of clients would get every healthy instance killed.
    pub fn is_local(&self) -> bool {
        use nix::libc;
        matches!(self, HealthError::Wire(WireError::Io(e))
            if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_is_not_the_instance_failing() {
        let io = |errno| HealthError::Wire(WireError::Io(std::io::Error::from_raw_os_error(errno)));
        assert!(io(nix::libc::EMFILE).is_local());
        assert!(io(nix::libc::ENFILE).is_local());
        assert!(!io(nix::libc::ECONNREFUSED).is_local());
        assert!(!HealthError::Timeout(Duration::from_secs(1)).is_local());
    }
}
