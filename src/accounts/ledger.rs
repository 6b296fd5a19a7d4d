//! The accounts ledger `<data>/accounts.txt`: an append-only log in auth.txt format
//! (docs/protocol.md §5) where a later line overrides an earlier one for the same key.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{AccountsError, Entry};

/// `undefined`: a free key that the first LOGIN binds.
pub const UNDEFINED: &str = "undefined";
/// `disabled`: a revoked key.
pub const DISABLED: &str = "disabled";

/// True for the values that are not a user: `undefined`, `disabled` (any case).
pub fn is_special(user: &str) -> bool {
    user.eq_ignore_ascii_case(UNDEFINED) || user.eq_ignore_ascii_case(DISABLED)
}

/// True for the privileged roles, which accounts never hand out.
pub fn is_privileged(user: &str) -> bool {
    user.eq_ignore_ascii_case("administrator") || user.eq_ignore_ascii_case("replication")
}

/// True when `user` is an ordinary user (what a claim binds a free key to).
pub fn is_user(user: &str) -> bool {
    !is_special(user) && !is_privileged(user)
}

/// An auth.txt-format line with both a user and a key, as the original loads it
/// ([`crate::protocol::auth`]); `None` for any other line.
pub fn parse_line(raw: &str) -> Option<Entry> {
    let e = crate::protocol::auth::entry(raw)?;
    Some(Entry {
        user: e.user.to_string(),
        key: e.key.to_string(),
        date: e.rest.unwrap_or("").to_string(),
    })
}

/// The final mapping key → entry of auth.txt-format text, and the keys in first-seen order.
#[derive(Debug, Default, Clone)]
pub struct Mapping {
    map: HashMap<String, Entry>,
    order: Vec<String>,
}

impl Mapping {
    pub fn parse(text: &str) -> Mapping {
        let mut m = Mapping::default();
        for e in text.lines().filter_map(parse_line) {
            m.set(e);
        }
        m
    }

    pub fn set(&mut self, e: Entry) {
        if !self.map.contains_key(&e.key) {
            self.order.push(e.key.clone());
        }
        self.map.insert(e.key.clone(), e);
    }

    pub fn user(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|e| e.user.as_str())
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.order.iter()
    }

    /// Every key's latest entry, in first-seen order.
    pub fn entries(&self) -> Vec<Entry> {
        self.order
            .iter()
            .filter_map(|k| self.map.get(k).cloned())
            .collect()
    }
}

/// The ledger file and its current mapping. Only the supervisor writes it.
pub struct Ledger {
    path: PathBuf,
    mapping: Mapping,
    /// Every value each key ever had here.
    history: HashMap<String, HashSet<String>>,
}

impl Ledger {
    /// Loads the ledger (provisioning has created it with its header line).
    pub fn load(path: &Path) -> Result<Ledger, AccountsError> {
        let text = fs::read_to_string(path).map_err(|source| AccountsError::Ledger {
            path: path.to_path_buf(),
            source,
        })?;
        let mut history: HashMap<String, HashSet<String>> = HashMap::new();
        for e in text.lines().filter_map(parse_line) {
            history.entry(e.key).or_default().insert(e.user);
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            mapping: Mapping::parse(&text),
            history,
        })
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    pub fn user(&self, key: &str) -> Option<&str> {
        self.mapping.user(key)
    }

    /// True when `user` was the value of `key` once but is no longer: a line asserting it
    /// again is an echo of a superseded change.
    pub fn superseded(&self, key: &str, user: &str) -> bool {
        self.user(key) != Some(user) && self.history.get(key).is_some_and(|h| h.contains(user))
    }

    /// Appends `user key date` lines and syncs them to disk before returning: the ledger is
    /// the record new instances are seeded from, so a change is durable before it is sent.
    pub fn append(&mut self, entries: &[(String, String)]) -> Result<(), AccountsError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now();
        let mut text = String::new();
        for (user, key) in entries {
            text.push_str(&format!("{user} {key} {now}\n"));
        }
        let err = |source| AccountsError::Ledger {
            path: self.path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(err)?;
        // A line cut short by a crash must not swallow the next one.
        let len = f.metadata().map_err(err)?.len();
        if len > 0 && !ends_with_newline(&self.path, len).map_err(err)? {
            text.insert(0, '\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        for (user, key) in entries {
            self.history
                .entry(key.clone())
                .or_default()
                .insert(user.clone());
            self.mapping.set(Entry {
                user: user.clone(),
                key: key.clone(),
                date: now.clone(),
            });
        }
        Ok(())
    }
}

fn ends_with_newline(path: &Path, len: u64) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// The date format auth.txt lines carry.
pub fn now() -> String {
    crate::protocol::dt::format_dt(chrono::Utc::now())
}

/// A user or key the protocol accepts in LOGIN/ADDLOGIN/RMLOGIN: 8 to 40 ASCII letters and
/// digits (the original's command patterns).
pub fn valid_token(s: &str) -> bool {
    (8..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_win_and_order_is_first_seen() {
        let m = Mapping::parse(
            "# header\n\nundefined K1 2026-01-01T00:00:00Z\nU2 K2 d\nUSER K1 d2\r\noneword\n",
        );
        assert_eq!(m.user("K1"), Some("USER"));
        assert_eq!(m.user("K2"), Some("U2"));
        assert_eq!(m.keys().cloned().collect::<Vec<_>>(), ["K1", "K2"]);
        assert_eq!(m.entries()[0].date, "d2");
    }

    #[test]
    fn append_is_durable_and_repairs_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.txt");
        fs::write(&path, "# header\nU1 K1 d").unwrap();
        let mut l = Ledger::load(&path).unwrap();
        l.append(&[("U2".into(), "K2".into()), ("disabled".into(), "K1".into())])
            .unwrap();
        assert_eq!(l.user("K1"), Some("disabled"));
        let again = Ledger::load(&path).unwrap();
        assert_eq!(again.user("K1"), Some("disabled"));
        assert_eq!(again.user("K2"), Some("U2"));
        assert!(again.superseded("K1", "U1"));
        assert!(!again.superseded("K1", "disabled"));
        assert!(!again.superseded("K2", "U1"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# header\nU1 K1 d\nU2 K2 "), "{text}");
    }

    #[test]
    fn roles_and_tokens() {
        assert!(is_user("00112233445566778899AABBCCDDEEFF00112233"));
        assert!(!is_user("Undefined"));
        assert!(!is_user("DISABLED"));
        assert!(!is_user("Administrator"));
        assert!(!is_user("replication"));
        assert!(valid_token("ABCD1234"));
        assert!(!valid_token("ABC"));
        assert!(!valid_token("ABCD 1234"));
        assert!(!valid_token(&"A".repeat(41)));
        assert!(!valid_token(""));
        assert!(!valid_token("é"));
    }
}
