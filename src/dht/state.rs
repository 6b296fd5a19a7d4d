//! A node's saved identity and contacts (in place of the original's pickled `nodeState`).
//!
//! The file is text, one record a line:
//!
//! ```text
//! storeherd-dht-state 1
//! id <40 hex digits>
//! contact <40 hex digits> <ip:port | [ipv6]:port>
//! ```
//!
//! It is replaced atomically (temporary file, fsync, rename). Lines that do not parse are
//! skipped with a warning; a file without a good `id` line yields a fresh identity.

use std::net::SocketAddr;
use std::path::Path;

use super::routing::Contact;
use super::Id;

const MAGIC: &str = "storeherd-dht-state 1";
/// Most contacts read back (the routing table holds at most 160 × k).
pub const MAX_CONTACTS: usize = 160 * super::K;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: Id,
    pub contacts: Vec<Contact>,
}

fn parse_id(s: &str) -> Option<Id> {
    hex::decode(s)
        .ok()
        .and_then(|b| Id::try_from(b.as_slice()).ok())
}

impl State {
    pub fn to_text(&self) -> String {
        let mut s = format!("{MAGIC}\nid {}\n", hex::encode(self.id));
        for c in &self.contacts {
            s.push_str(&format!("contact {} {}\n", hex::encode(c.id), c.addr));
        }
        s
    }

    /// Parses a state file; the warnings name the file and line.
    pub fn parse(path: &Path, text: &str) -> (Option<State>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut id = None;
        let mut contacts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut w = line.split_whitespace();
            let ok = match (w.next(), w.next(), w.next(), w.next()) {
                (Some("storeherd-dht-state"), Some("1"), None, None) if i == 0 => true,
                (Some("id"), Some(h), None, None) => parse_id(h).map(|v| id = Some(v)).is_some(),
                (Some("contact"), Some(h), Some(a), None) => {
                    match (parse_id(h), a.parse::<SocketAddr>()) {
                        (Some(cid), Ok(addr)) if contacts.len() < MAX_CONTACTS => {
                            contacts.push(Contact { id: cid, addr });
                            true
                        }
                        _ => false,
                    }
                }
                (None, ..) => true,
                _ => false,
            };
            if !ok {
                warnings.push(format!(
                    "{}:{}: expected `id <hex40>` or `contact <hex40> <ip:port>`; line skipped",
                    path.display(),
                    i + 1
                ));
            }
        }
        (id.map(|id| State { id, contacts }), warnings)
    }

    /// Reads `path`; `Ok(None)` when it does not exist or holds no id.
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        match std::fs::read(path) {
            Ok(b) => {
                let (state, warnings) = State::parse(path, &String::from_utf8_lossy(&b));
                for w in warnings {
                    tracing::warn!("{w}");
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        crate::store::replace_file(path, self.to_text().as_bytes(), 0o644).map_err(|source| {
            StateError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.state");
        let s = State {
            id: [7; 20],
            contacts: vec![
                Contact {
                    id: [1; 20],
                    addr: "127.0.0.1:4000".parse().unwrap(),
                },
                Contact {
                    id: [2; 20],
                    addr: "[::1]:4001".parse().unwrap(),
                },
            ],
        };
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(s));
        assert_eq!(State::load(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn bad_lines_are_skipped_with_their_line_number() {
        let text = format!(
            "{MAGIC}\nid {}\ncontact zz 1.2.3.4:5\nrubbish\ncontact {} 127.0.0.1:9\n",
            "07".repeat(20),
            "01".repeat(20)
        );
        let (s, w) = State::parse(Path::new("f"), &text);
        let s = s.unwrap();
        assert_eq!(s.id, [7; 20]);
        assert_eq!(s.contacts.len(), 1);
        assert_eq!(w.len(), 2);
        assert!(w[0].starts_with("f:3:"), "{w:?}");
        let (none, _) = State::parse(Path::new("f"), "id nothex\n");
        assert!(none.is_none());
    }
}
