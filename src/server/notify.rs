//! The "new mail" notifier (docs/protocol.md §12.2): e-mail to the address `notify.txt` names
//! for a recipient key, when a `STORE SERVER` upload brought that key a message.
//!
//! The original mails from its store thread, so a slow SMTP server stalls every upload
//! behind it. Here the worker only hands the recipient to a bounded channel; a notifier
//! thread reads `notify.txt` (again whenever its mtime changes, after its `.lock` file goes)
//! and sends one plain mail per notice. A full channel drops the notice with a log line;
//! a failed send is logged and not retried. A broken `notify.txt` line is skipped with a
//! log line (the original's store thread died on it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Notices waiting for the notifier thread; more are dropped.
pub const BACKLOG: usize = 1024;
/// How long the notifier waits for `notify.txt.lock` to go, as the original.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Bound on one SMTP exchange (connect, each command).
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
const TEXT: &str = "You have new Confidant Mail";

/// The worker's handle; dropping it stops the thread once it has sent what is queued.
pub struct Notifier {
    tx: mpsc::SyncSender<String>,
    dropped: u64,
}

impl Notifier {
    /// Starts the notifier thread for `<home>/notify.txt`.
    pub fn start(home: &Path) -> std::io::Result<(Notifier, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel::<String>(BACKLOG);
        let mut table = NotifyTable::new(home.join("notify.txt"));
        // Read once at start, as the original (its warnings show up early).
        table.refresh();
        let handle = std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || {
                for recipient in rx {
                    table.notify(&recipient);
                }
            })?;
        Ok((Notifier { tx, dropped: 0 }, handle))
    }

    /// Asks for a notice to `recipient` (lower-case hex fingerprint); never blocks.
    pub fn notify(&mut self, recipient: &str) {
        match self.tx.try_send(recipient.to_string()) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                // One line for the first drop and every hundredth: a dead SMTP server must
                // not turn into a flood of log lines either.
                self.dropped += 1;
                if self.dropped % 100 == 1 {
                    tracing::warn!(
                        recipient,
                        dropped = self.dropped,
                        "notifier busy (SMTP server slow or down): new-mail notice dropped"
                    );
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                tracing::warn!(recipient, "notifier stopped: new-mail notice dropped");
            }
        }
    }
}

/// True if a stored block asks for no notice: a line `ServerNotify: False` (any case,
/// whitespace around it allowed).
pub fn opted_out(block: &[u8]) -> bool {
    block
        .split(|&b| b == b'\n')
        .any(|l| l.trim_ascii().eq_ignore_ascii_case(b"ServerNotify: False"))
}

/// The settings and entries of `notify.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub from: Option<String>,
    pub server: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// keyid (lower case) → (type, address).
    pub entries: HashMap<String, (String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            from: None,
            server: "localhost".into(),
            port: 25,
            user: None,
            pass: None,
            entries: HashMap::new(),
        }
    }
}

impl Settings {
    /// Parses `notify.txt`; broken lines are skipped with a warning naming file and line.
    /// Settings not given keep `self`'s values, as the original's reload does; the entries
    /// are replaced.
    pub fn parse(mut self, path: &Path, text: &str) -> Settings {
        self.entries.clear();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.trim_end_matches(['\r', '\n', '\t', ' ']);
            let at = || format!("{}:{}", path.display(), i + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(v) = line.strip_prefix("fromaddr=") {
                self.from = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("smtpserver=") {
                self.server = v.to_string();
            } else if let Some(v) = line.strip_prefix("smtpport=") {
                match v.trim().parse() {
                    Ok(p) => self.port = p,
                    Err(_) => tracing::warn!("{}: smtpport is not a port number; ignored", at()),
                }
            } else if let Some(v) = line.strip_prefix("smtpuser=") {
                self.user = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("smtppass=") {
                self.pass = Some(v.to_string());
            } else {
                let mut parts = line.splitn(3, ',');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(k), Some(t), Some(a)) => {
                        self.entries
                            .insert(k.to_lowercase(), (t.to_string(), a.to_string()));
                    }
                    _ => tracing::warn!(
                        "{}: expected `keyid,type,address` or a setting; line skipped",
                        at()
                    ),
                }
            }
        }
        self
    }
}

/// `notify.txt` as last read, re-read when its mtime changes.
struct NotifyTable {
    path: PathBuf,
    read_mtime: Option<SystemTime>,
    settings: Settings,
}

impl NotifyTable {
    fn new(path: PathBuf) -> NotifyTable {
        NotifyTable {
            path,
            read_mtime: None,
            settings: Settings::default(),
        }
    }

    fn refresh(&mut self) {
        let mut lock = self.path.clone().into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let waited = std::time::Instant::now();
        while lock.exists() && waited.elapsed() < LOCK_WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        let Ok(mtime) = std::fs::metadata(&self.path).and_then(|m| m.modified()) else {
            return; // no notify.txt: nothing changes, as the original
        };
        if self.read_mtime == Some(mtime) {
            return;
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                self.settings = std::mem::take(&mut self.settings).parse(&self.path, &text);
                self.read_mtime = Some(mtime);
                tracing::debug!(
                    entries = self.settings.entries.len(),
                    "read {}",
                    self.path.display()
                );
            }
            Err(e) => tracing::warn!("{}: {e}", self.path.display()),
        }
    }

    fn notify(&mut self, recipient: &str) {
        self.refresh();
        let Some((kind, address)) = self.settings.entries.get(recipient) else {
            return;
        };
        if kind != "email" && kind != "smtp" {
            return;
        }
        tracing::info!("notifying e-mail address {address} for keyid {recipient}");
        if let Err(e) = send(&self.settings, address) {
            tracing::warn!("new-mail notice to {address} for keyid {recipient} failed: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("notify.txt has no fromaddr= line")]
    NoFrom,
    #[error("bad address: {0}")]
    Address(#[from] lettre::address::AddressError),
    #[error("building the message: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// One plain mail, as the original's smtplib sends it (no TLS; login when a user is set).
fn send(s: &Settings, to: &str) -> Result<(), SendError> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};

    let from: Mailbox = s.from.as_deref().ok_or(SendError::NoFrom)?.parse()?;
    let to: Mailbox = to.parse()?;
    let msg = Message::builder()
        .from(from)
        .to(to)
        .subject(TEXT)
        .header(ContentType::TEXT_PLAIN)
        .body(TEXT.to_string())?;
    let mut transport = SmtpTransport::builder_dangerous(&s.server)
        .port(s.port)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some(user) = &s.user {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            s.pass.clone().unwrap_or_default(),
        ));
    }
    transport.build().send(&msg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings_entries_and_skips_broken_lines() {
        let s = Settings::default().parse(
            Path::new("notify.txt"),
            "# c\nfromaddr=a@b.example\nsmtpserver=127.0.0.1 \nsmtpport=2525\r\n\
             ABCD,email,x@y.example\nbroken line\nab,only\nsmtpport=x\n",
        );
        assert_eq!(s.from.as_deref(), Some("a@b.example"));
        assert_eq!((s.server.as_str(), s.port), ("127.0.0.1", 2525));
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries["abcd"], ("email".into(), "x@y.example".into()));
    }

    #[test]
    fn opt_out_line() {
        assert!(opted_out(b"Type: x\n  serverNotify: FALSE \r\nData: 1\n"));
        assert!(!opted_out(b"ServerNotify: True\nX-ServerNotify: False\n"));
    }
}
