//! The one test kit of the integration tests (`mod support;`): free loopback ports, bounded
//! waits, built-in store servers, `storeherd up` supervisors read through their admin API,
//! two sites, client loads, GnuPG. Everything it starts is a real process, killed and reaped
//! when its handle is dropped (also when a test panics).
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod gpg;
pub mod load;
pub mod ports;
pub mod procs;
pub mod sites;
pub mod store;
pub mod up;
pub mod wait;

pub use wait::{eventually, eventually_async, until, until_async};

/// The `storeherd` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_storeherd");

/// A multi-threaded runtime of two workers (the machine has two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime on the test's own thread, for a few sequential client calls.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Two account ids and a key the accounts tests add, claim and remove.
pub const USER_X: &str = "00112233445566778899AABBCCDDEEFF00112233";
pub const USER_Y: &str = "FFEEDDCCBBAA99887766554433221100FFEEDDCC";
pub const USER_KEY: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

/// `NAME=value` from the environment (the full runs) or `default` (the test-suite version).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether an outside tool a test needs is here. Missing, it is a loud skip outside CI and a
/// failure under CI (`.ci/run` installs every tool and sets CI).
pub fn have(present: bool, test: &str, tool: &str, install: &str) -> bool {
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed; .ci/run installs it ({install})"
        );
        eprintln!("SKIPPED {test}: {tool} is not installed ({install})");
    }
    present
}

/// Asserts that a command exited 0, with its stderr as the message.
#[track_caller]
pub fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `String::from_utf8_lossy`, owned: for a process's output in assertion messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
