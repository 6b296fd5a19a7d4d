//! `notify.txt` (docs/protocol.md §12.2): "new mail" e-mail from a real `storeherd store` to a
//! real SMTP server on a loopback port (PyPI aiosmtpd), for STORE SERVER message
//! announcements of subscribed keys.
//!
//! Without aiosmtpd the test passes after printing why it did nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use chrono::Utc;

use storeherd::protocol::compose;
use support::store::TestServer;
use support::until;

/// Takes mail on 127.0.0.1:port and writes each one to `<dir>/mailNNN`: the envelope
/// recipients, a blank line, the message.
const SINK: &str = r#"
import os, sys
from aiosmtpd.controller import Controller
out = sys.argv[2]
class Sink:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(out) if f.startswith('mail')])
        tmp = os.path.join(out, '.tmp')
        with open(tmp, 'wb') as f:
            f.write(('\n'.join(envelope.rcpt_tos) + '\n\n').encode() + envelope.content)
        os.rename(tmp, os.path.join(out, 'mail%03d' % n))
        return '250 OK'
c = Controller(Sink(), hostname='127.0.0.1', port=int(sys.argv[1]))
c.start()
print('ready', flush=True)
sys.stdin.read()
c.stop()
"#;

struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start(test: &str) -> Option<SmtpSink> {
        let have = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !support::have(have, test, "aiosmtpd", "pip install aiosmtpd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = support::ports::port();
        let mut child = Command::new("python3")
            .args(["-c", SINK, &port.to_string()])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Some(SmtpSink { child, port, dir })
    }

    fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("mail"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Waits (bounded) until `n` mails have arrived; returns them all.
    fn wait_mails(&self, n: usize) -> Vec<String> {
        let got = until(Duration::from_secs(20), || {
            let m = self.mails();
            if m.len() >= n {
                Ok(m)
            } else {
                Err(m)
            }
        });
        got.unwrap_or_else(|m| m.unwrap_or_default())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message announcement for `recipient` (a new message each call).
fn announcement(recipient: [u8; 20], n: u8, opt_out: bool) -> (String, Vec<u8>) {
    let (key, block) = compose::message_announcement(
        recipient,
        "inbox",
        [n; 20],
        &[[n.wrapping_add(1); 20]],
        Utc::now(),
    );
    let mut text = String::from_utf8(block).unwrap();
    if opt_out {
        // Not covered by the proof of work, as in the stock client's announcements.
        text = text.replace("Mailbox: inbox\n", "Mailbox: inbox\nServerNotify: False\n");
    }
    (key, text.into_bytes())
}

/// Uploads `(key, block)` with STORE SERVER as the stock client does; it must answer DONE.
fn store(c: &mut support::store::Raw, (key, block): &(String, Vec<u8>)) {
    c.send_line(&format!("STORE SERVER {key}"));
    for l in String::from_utf8_lossy(block).lines() {
        c.send_line(l);
    }
    c.send_line("EndBlock");
    assert_eq!(c.line().as_deref(), Some("DONE"));
}

fn write_notify(home: &Path, text: &str, mtime: SystemTime) {
    let path = home.join("notify.txt");
    std::fs::write(&path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn new_mail_notices_for_subscribed_keys() {
    let Some(smtp) = SmtpSink::start("new_mail_notices") else {
        return;
    };
    let (alice, bob, carol) = ([0xa1; 20], [0xb0; 20], [0xc0; 20]);
    let settings = format!(
        "# storeherd test\nfromaddr=server@example.org\nsmtpserver=127.0.0.1\nsmtpport={}\n",
        smtp.port
    );
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let first = format!(
        "{settings}{},email,alice@example.org\nthis line is broken\n{},smtp,carol@example.org\n",
        hex::encode_upper(alice),
        hex::encode(carol)
    );
    write_notify(&home, &first, SystemTime::now() - Duration::from_secs(60));
    let s = TestServer::start_in(&home, support::store::Options::default());
    let mut c = s.raw();

    store(&mut c, &announcement(alice, 1, false));
    let mails = smtp.wait_mails(1);
    assert_eq!(mails.len(), 1, "{}", s.log());
    assert!(
        mails[0].starts_with("alice@example.org\n\n"),
        "{}",
        mails[0]
    );
    assert!(
        mails[0].contains("Subject: You have new Confidant Mail"),
        "{}",
        mails[0]
    );
    assert!(
        mails[0].contains("From: server@example.org"),
        "{}",
        mails[0]
    );
    // The broken line was skipped, the lines after it kept.
    assert!(
        s.log()
            .contains("notify.txt:6: expected `keyid,type,address`"),
        "{}",
        s.log()
    );

    // Opted out, and not subscribed: no mail. Notices go out in order, so alice's next
    // one is the second mail only if nothing came between.
    store(&mut c, &announcement(carol, 2, true));
    store(&mut c, &announcement(bob, 3, false));
    store(&mut c, &announcement(alice, 4, false));
    let mails = smtp.wait_mails(2);
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        mails[1].starts_with("alice@example.org\n\n"),
        "{}",
        mails[1]
    );

    // notify.txt edited while the server runs: read again (bob in, alice and carol out).
    let second = format!("{settings}{},email,bob@example.org\n", hex::encode(bob));
    write_notify(&home, &second, SystemTime::now());
    store(&mut c, &announcement(alice, 5, false));
    store(&mut c, &announcement(bob, 6, false));
    let mails = smtp.wait_mails(3);
    assert_eq!(mails.len(), 3, "{mails:?}");
    assert!(mails[2].starts_with("bob@example.org\n\n"), "{}", mails[2]);
    store(&mut c, &announcement(carol, 7, false));
    store(&mut c, &announcement(bob, 8, false));
    let mails = smtp.wait_mails(4);
    assert_eq!(mails.len(), 4, "{mails:?}");
    assert!(mails[3].starts_with("bob@example.org\n\n"), "{}", mails[3]);
    assert_eq!(c.cmd("PING"), "PONG");
}

#[test]
fn an_smtp_server_answering_garbage_is_logged_and_processing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Answers each of the three notices with a line that is not SMTP, then hangs up.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in garbage.incoming().take(3) {
            let _ = std::io::Write::write_all(&mut conn.unwrap(), b"\x00garbage, not SMTP\r\n");
        }
    });
    let recipient = [0xd0; 20];
    write_notify(
        &home,
        &format!(
            "fromaddr=server@example.org\nsmtpserver=127.0.0.1\nsmtpport={port}\n{},email,d@example.org\n",
            hex::encode(recipient)
        ),
        SystemTime::now(),
    );
    let s = TestServer::start_in(&home, support::store::Options::default());
    let mut c = s.raw();
    for n in 0..3u8 {
        store(&mut c, &announcement(recipient, n, false));
    }
    assert!(s.wait_queue_empty(Duration::from_secs(20)));
    let _ = until(Duration::from_secs(20), || {
        s.log().matches("new-mail notice to d@example.org").count() >= 3
    });
    assert_eq!(
        s.log().matches("new-mail notice to d@example.org").count(),
        3,
        "{}",
        s.log()
    );
    assert_eq!(c.cmd("SELFTEST"), "PASS");
}

#[test]
fn a_dead_smtp_server_does_not_hold_up_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Takes connections into its backlog and never says a word: each notice would wait
    // for the SMTP timeout.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let recipient = [0xe0; 20];
    write_notify(
        &home,
        &format!(
            "fromaddr=server@example.org\nsmtpserver=127.0.0.1\nsmtpport={}\n{},email,e@example.org\n",
            dead.local_addr().unwrap().port(),
            hex::encode(recipient)
        ),
        SystemTime::now(),
    );
    let mut s = TestServer::start_in(&home, support::store::Options::default());
    let mut c = s.raw();
    for n in 0..3u8 {
        store(&mut c, &announcement(recipient, n, false));
    }
    assert!(s.wait_queue_empty(Duration::from_secs(20)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Three notices at the SMTP timeout each would take a minute.
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0), "{}", s.log());
    assert!(s.log().contains("are not sent"), "{}", s.log());
}
