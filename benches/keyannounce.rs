//! Key announcements verified per second: in-process (`validate_merge`, sequoia) versus one
//! `gpg --verify` process per announcement, and versus the original's import + verify +
//! delete. Run with `cargo bench --bench keyannounce`; needs `gpg`.
//!
//! The in-process figure is the whole §7.5 check (parts, 24-bit PoW, key parse, signature,
//! owner, age); the `gpg --verify` figure is the signature alone, with the key already in
//! the keyring, so the comparison favours gpg.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use storeherd::protocol::dt::format_dt;
use storeherd::protocol::pow;
use storeherd::server::validate::{validate_merge, Limits};

/// Time spent measuring each method.
const BUDGET: Duration = Duration::from_secs(5);
/// Upper bound on runs per method.
const MAX_RUNS: usize = 100_000;

/// Runs `gpg` in batch mode with `GNUPGHOME=home`, no passphrase, feeding `stdin`; its
/// stdout. Panics with gpg's stderr when it fails.
fn gpg(home: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
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
    out.stdout
}

/// Stops the agent gpg started for `home`, so that no process outlives the bench.
fn kill_agent(home: &Path) {
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home)
        .args(["--kill", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A clear-signed announcement of a fresh `algo` key; returns (fingerprint, key, block).
fn make(home: &Path, algo: &str, date: DateTime<Utc>) -> (String, String, Vec<u8>) {
    let uid = format!("Bench {algo} <bench@example.org>");
    gpg(
        home,
        &["--quick-gen-key", &uid, algo, "default", "never"],
        b"",
    );
    let list = String::from_utf8(gpg(home, &["--with-colons", "--list-keys", &uid], b"")).unwrap();
    let fpr = list
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| f.len() == 40))
        .unwrap()
        .to_string();
    let key = String::from_utf8(gpg(home, &["--armor", "--export", &fpr], b"")).unwrap();
    let rest = format!(
        "Type: key-announcement\nVersion: 1\nDate: {}\nExpires: {}\nTransport: server=127.0.0.1:8081\n\
         Mailboxes: 0123456789abcdef0123456789abcdef01234567\nSenderProofOfWork: 20,2\n\n{key}",
        format_dt(date),
        format_dt(date + TimeDelta::seconds(604_800)),
    );
    let proof = pow::generate(rest.replace('\n', "").as_bytes(), 24, 2);
    let text = format!("ProofOfWork: {proof}\n{rest}");
    let block = gpg(
        home,
        &["--local-user", &format!("{fpr}!"), "--clearsign"],
        text.as_bytes(),
    );
    (fpr, key, block)
}

/// Runs `f` until the budget is spent; returns (runs, per second).
fn rate(mut f: impl FnMut()) -> (usize, f64) {
    let start = Instant::now();
    let mut n = 0;
    while n < MAX_RUNS && start.elapsed() < BUDGET {
        f();
        n += 1;
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    if !Command::new("gpg")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("keyannounce bench skipped: gpg is not installed");
        return;
    }
    let signer = tempfile::tempdir().unwrap();
    let verifier = tempfile::tempdir().unwrap();
    let date = DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    for algo in ["rsa3072", "ed25519"] {
        let (fpr, key, block) = make(signer.path(), algo, date);
        let file = verifier.path().join(format!("{algo}.asc"));
        std::fs::write(&file, &block).unwrap();
        let file = file.to_str().unwrap().to_string();
        let now = Utc::now();
        let check = || {
            let r = validate_merge(
                &fpr,
                None,
                &block,
                false,
                Some(&fpr),
                &Limits::default(),
                now,
            );
            assert_eq!(r.expect("valid announcement").block, block);
        };
        check();
        let (n_in, in_process) = rate(check);

        // gpg --verify, key already imported: one process per announcement.
        gpg(verifier.path(), &["--import"], key.as_bytes());
        let (n_gpg, gpg_verify) = rate(|| {
            gpg(
                verifier.path(),
                &["--status-fd", "1", "--verify", &file],
                b"",
            );
        });
        // What the original did per announcement: import, verify, delete.
        let (n_orig, original) = rate(|| {
            gpg(verifier.path(), &["--import"], key.as_bytes());
            gpg(
                verifier.path(),
                &["--status-fd", "1", "--verify", &file],
                b"",
            );
            gpg(verifier.path(), &["--delete-keys", &fpr], b"");
        });
        println!(
            "key announcements verified per second ({algo} key, {} bytes):",
            block.len()
        );
        println!("  in-process (validate_merge, sequoia): {in_process:10.1}/s  ({n_in} runs)");
        println!("  gpg --verify process each:            {gpg_verify:10.1}/s  ({n_gpg} runs)");
        println!("  gpg import + verify + delete:         {original:10.1}/s  ({n_orig} runs)");
        println!(
            "  ratio in-process / gpg --verify: {:.1}x; / import+verify+delete: {:.1}x",
            in_process / gpg_verify,
            in_process / original
        );
    }
    kill_agent(signer.path());
    kill_agent(verifier.path());
}
