//! The proxy's share of the supervisor's file descriptors. Each proxied session holds two
//! (client and instance side); if sessions could take them all, the admin API and the health
//! checks, which run in the same process, would fail to accept or connect.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept back for everything but sessions (admin API, health checks, instance
/// pipes and logs, the topology watcher): a quarter of the limit, at most 512.
pub fn reserved(nofile: u64) -> u64 {
    (nofile / 4).min(512)
}

/// The most sessions that `nofile` descriptors carry beside the reserve.
pub fn sessions_within(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(reserved(nofile)) / 2).unwrap_or(usize::MAX)
}

/// Raises the soft open-files limit to the hard one (a default soft limit of 1024 would cap
/// the proxy at a few hundred clients) and returns the limit in force.
fn raise_nofile() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// How many sessions this process can hold (its limit raised first, once).
pub fn session_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| raise_nofile().map_or(usize::MAX, sessions_within))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_leave_room_for_the_rest() {
        assert_eq!(sessions_within(256), 96);
        assert_eq!(sessions_within(20_000), 9_744);
        assert_eq!(sessions_within(1_048_576), 524_032);
        assert_eq!(sessions_within(0), 0);
    }
}
