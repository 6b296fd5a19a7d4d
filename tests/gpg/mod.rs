//! GnuPG in batch mode for a given home: shared by the key-announcement tests and bench.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `gpg` with `GNUPGHOME=home`, no passphrase and no terminal, feeding `stdin`; panics
/// with gpg's stderr when it fails.
pub fn run(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--yes",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ])
        .args(["--passphrase", ""])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gpg");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gpg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops the agent gpg started for `home`, so that no process outlives its user.
pub fn kill_agent(home: &Path) {
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home)
        .args(["--kill", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
