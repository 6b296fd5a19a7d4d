//! GnuPG in batch mode in a temporary home, and real key announcements made with it (the
//! stock client's text, docs/protocol.md §7.5).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, TimeDelta, Utc};
use storeherd::protocol::dt::format_dt;
use storeherd::protocol::pow;

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

/// A temporary GnuPG home; its agent is stopped on drop (also on panic).
pub struct Gpg {
    dir: tempfile::TempDir,
}

impl Gpg {
    /// `None` (after saying so) when gpg is not installed.
    pub fn new(test: &str) -> Option<Gpg> {
        let ok = Command::new("gpg")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !super::have(ok, test, "gpg", "Debian package gnupg") {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        Some(Gpg { dir })
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        run(self.home(), args, stdin)
    }

    /// A fresh key; returns its primary fingerprint (40 upper-case hex digits).
    pub fn gen_key(&self, name: &str, algo: &str, expire: &str) -> String {
        let uid = format!("{name} <{}@example.org>", name.to_lowercase());
        self.run(&["--quick-gen-key", &uid, algo, "default", expire], b"");
        let out = self.run(&["--with-colons", "--list-keys", &uid], b"");
        let text = String::from_utf8(out.stdout).unwrap();
        let fpr = text
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("fingerprint");
        fpr.to_string()
    }

    /// Adds a signing subkey to `primary`; returns the subkey's fingerprint.
    pub fn add_signing_subkey(&self, primary: &str) -> String {
        self.run(
            &["--quick-add-key", primary, "ed25519", "sign", "never"],
            b"",
        );
        let out = self.run(&["--with-colons", "--list-keys", primary], b"");
        let text = String::from_utf8(out.stdout).unwrap();
        let fprs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:"))
            .filter_map(|l| l.split(':').find(|f| f.len() == 40))
            .collect();
        fprs.last().expect("subkey").to_string()
    }

    pub fn export(&self, fprs: &[&str]) -> String {
        let mut args = vec!["--armor", "--export"];
        args.extend_from_slice(fprs);
        String::from_utf8(self.run(&args, b"").stdout).unwrap()
    }

    pub fn export_secret(&self, fpr: &str) -> Vec<u8> {
        self.run(&["--export-secret-keys", fpr], b"").stdout
    }

    /// `gpg --clearsign` with `signer` (`FPR!` selects exactly that (sub)key).
    pub fn clearsign(&self, signer: &str, text: &[u8]) -> Vec<u8> {
        let signer = format!("{signer}!");
        self.run(&["--local-user", &signer, "--clearsign"], text)
            .stdout
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        kill_agent(self.home());
    }
}

/// The announcement's fields (the stock client's, §7.5).
pub struct Fields<'a> {
    pub date: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub key_block: &'a str,
    pub pow_bits: u32,
}

impl<'a> Fields<'a> {
    pub fn new(key_block: &'a str, date: DateTime<Utc>) -> Fields<'a> {
        Fields {
            date,
            expires: date + TimeDelta::seconds(604_800),
            key_block,
            pow_bits: 24,
        }
    }
}

/// The text the stock client signs: the ProofOfWork line over every later line (joined with
/// no separators), then the header lines, a blank line and the armoured key.
pub fn announcement_text(f: &Fields<'_>) -> String {
    let rest = format!(
        "Type: key-announcement\nVersion: 1\nDate: {}\nExpires: {}\nUserid: Test User <test@example.org>\n\
         Transport: server=127.0.0.1:8081\nMailboxes: 0123456789abcdef0123456789abcdef01234567\n\
         SenderProofOfWork: 20,2\n\n{}",
        format_dt(f.date),
        format_dt(f.expires),
        f.key_block
    );
    assert!(rest.ends_with('\n'));
    let proof = pow::generate(rest.replace('\n', "").as_bytes(), f.pow_bits, 2);
    format!("ProofOfWork: {proof}\n{rest}")
}

/// A real clear-signed announcement.
pub fn announce(gpg: &Gpg, signer: &str, f: &Fields<'_>) -> Vec<u8> {
    gpg.clearsign(signer, announcement_text(f).as_bytes())
}
