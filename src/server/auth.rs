//! The login table and `auth.txt` (docs/protocol.md §5): an append-only log of
//! `<userhash> <authkey> <date>` lines; a later line overrides an earlier one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::protocol::auth;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct AuthError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct AuthTable {
    map: HashMap<String, String>,
    file: File,
    path: PathBuf,
}

/// What a LOGIN attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    /// Authenticated as this userhash (a free key may just have been bound to it).
    Ok(String),
    Failed,
}

/// The key → user map of `auth.txt` bytes, and warnings for the lines skipped (`path` only
/// names the file in them).
pub fn parse(path: &Path, bytes: &[u8]) -> (HashMap<String, String>, Vec<String>) {
    let mut map = HashMap::new();
    let mut warnings = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    for (i, raw) in text.split('\n').enumerate() {
        match auth::parse_line(raw) {
            auth::Line::Blank => {}
            auth::Line::Entry(e) => {
                map.insert(e.key.to_string(), e.user.to_string());
            }
            auth::Line::NoKey => warnings.push(format!(
                "{}:{}: line without a user and a key ignored",
                path.display(),
                i + 1
            )),
        }
    }
    (map, warnings)
}

impl AuthTable {
    /// Loads `path` (created if missing) and keeps it open for appending. Lines of one word
    /// are skipped with a warning (the original aborts, docs/protocol.md §14 #16).
    pub fn load(path: &Path) -> Result<(AuthTable, Vec<String>), AuthError> {
        let err = |source| AuthError {
            path: path.to_path_buf(),
            source,
        };
        let (map, warnings) = match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(err)?;
        Ok((
            AuthTable {
                map,
                file,
                path: path.to_path_buf(),
            },
            warnings,
        ))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// LOGIN rules of docs/protocol.md §3.6 (the caller has already refused a second LOGIN and
    /// the user `undefined`). Binding a free key appends to `auth.txt`.
    pub fn login(&mut self, user: &str, key: &str, now: &str) -> Result<LoginResult, AuthError> {
        let Some(v) = self.map.get(key).cloned() else {
            return Ok(LoginResult::Failed);
        };
        let lower_user = user.to_ascii_lowercase();
        if v.eq_ignore_ascii_case("undefined")
            && lower_user != "administrator"
            && lower_user != "replication"
        {
            self.set(user, key, now)?;
            self.flush()?;
            return Ok(LoginResult::Ok(user.to_string()));
        }
        if v == "disabled" {
            return Ok(LoginResult::Failed);
        }
        if v == user {
            return Ok(LoginResult::Ok(user.to_string()));
        }
        Ok(LoginResult::Failed)
    }

    /// Sets key → user and appends the line (not yet flushed: call [`AuthTable::flush`]).
    pub fn set(&mut self, user: &str, key: &str, now: &str) -> Result<(), AuthError> {
        self.map.insert(key.to_string(), user.to_string());
        writeln!(self.file, "{user} {key} {now}").map_err(|source| AuthError {
            path: self.path.clone(),
            source,
        })
    }

    /// Makes the appended lines durable.
    pub fn flush(&mut self) -> Result<(), AuthError> {
        self.file
            .flush()
            .and_then(|_| self.file.sync_data())
            .map_err(|source| AuthError {
                path: self.path.clone(),
                source,
            })
    }

    /// `n` new free keys (GENLOGIN, docs/protocol.md §3.7): key_i = upper hex of
    /// sha1(str(i) ‖ seed ‖ str(i)), seed = server key bytes ‖ every authkey ‖ now, plus 32
    /// random bytes so the keys stay unpredictable even to someone who knows the table.
    pub fn generate(
        &mut self,
        n: u64,
        server_key: &[u8],
        now: &str,
    ) -> Result<Vec<String>, AuthError> {
        let mut seed = server_key.to_vec();
        for k in self.map.keys() {
            seed.extend_from_slice(k.as_bytes());
        }
        seed.extend_from_slice(now.as_bytes());
        seed.extend_from_slice(&rand::random::<[u8; 32]>());
        let mut keys = Vec::new();
        for i in 0..n {
            let mut h = Sha1::new();
            h.update(i.to_string().as_bytes());
            h.update(&seed);
            h.update(i.to_string().as_bytes());
            let key = hex::encode_upper(h.finalize());
            self.set("undefined", &key, now)?;
            keys.push(key);
        }
        self.flush()?;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-24T04:24:15Z";

    #[test]
    fn load_bind_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.txt");
        std::fs::write(
            &path,
            "# c\n\nadministrator ADMINKEY1 x\nlonely\nundefined FREEKEY01 x\nu1 GONEKEY01\ndisabled GONEKEY01 y\n",
        )
        .unwrap();
        let (mut t, w) = AuthTable::load(&path).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(
            t.login("administrator", "ADMINKEY1", NOW).unwrap(),
            LoginResult::Ok("administrator".into())
        );
        assert_eq!(
            t.login("Administrator", "ADMINKEY1", NOW).unwrap(),
            LoginResult::Failed
        );
        assert_eq!(
            t.login("u1", "GONEKEY01", NOW).unwrap(),
            LoginResult::Failed
        );
        assert_eq!(
            t.login("administrator", "FREEKEY01", NOW).unwrap(),
            LoginResult::Failed
        );
        assert_eq!(
            t.login("someuser", "FREEKEY01", NOW).unwrap(),
            LoginResult::Ok("someuser".into())
        );
        assert_eq!(
            t.login("other", "FREEKEY01", NOW).unwrap(),
            LoginResult::Failed
        );
        let keys = t.generate(2, b"k", NOW).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.len() == 40
            && k.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())));
        drop(t);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("someuser FREEKEY01 {NOW}\n")));
        let (t, _) = AuthTable::load(&path).unwrap();
        assert_eq!(t.get("FREEKEY01"), Some("someuser"));
        assert_eq!(t.get(&keys[1]), Some("undefined"));
    }
}
