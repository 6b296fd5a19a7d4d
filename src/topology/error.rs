//! Topology errors. Every error about the file names the file, the line and column of the key
//! concerned, and what was expected. Syntax and type errors carry serde_yaml's position;
//! semantic errors (clashes, overlaps) find the key's position again in the source text.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{file}: cannot read the topology file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// A problem at a known place in the file.
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A problem of the topology as a whole (no single key to point at).
    #[error("{file}: {message}")]
    File { file: String, message: String },
    /// A problem with a command-line override (`--instances`, `--listen`, `--site`, ...).
    #[error("command line: {flag}: {message}")]
    CommandLine { flag: String, message: String },
}

/// One step of a path from the document root to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Builds a path from `"ports.server"`-style dotted keys.
pub fn path(dotted: &str) -> Vec<Seg> {
    dotted
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| Seg::Key(s.to_string()))
        .collect()
}

/// Converts a serde_yaml error into [`TopologyError::At`] (or `File` when it has no position).
pub fn from_yaml(file: &str, err: &serde_yaml::Error) -> TopologyError {
    let text = err.to_string();
    match err.location() {
        Some(loc) => {
            // serde_yaml appends " at line L column C"; the position goes in front instead.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let message = plain_types(text.strip_suffix(&suffix).unwrap_or(&text));
            TopologyError::At {
                file: file.to_string(),
                line: loc.line(),
                column: loc.column(),
                message,
            }
        }
        None => TopologyError::File {
            file: file.to_string(),
            message: text,
        },
    }
}

/// serde names Rust types in its messages; operators read the topology's words instead.
fn plain_types(message: &str) -> String {
    message
        .replace("expected u16", "expected a port number from 1 to 65535")
        .replace("expected u32", "expected a whole number")
        .replace("expected usize", "expected a whole number")
        .replace("expected a string", "expected a text value")
}

/// Line and column (1-based) of the node at `path` in `text`: the key itself when the path
/// ends with a key, the element when it ends with an index. Uses serde_yaml's own parser, so
/// positions agree with those of syntax and type errors.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Locate { path }).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// The marker error raised at the node we look for; its position is the answer.
const HERE: &str = "\u{1}storeherd-locate-here\u{1}";

struct Locate<'a> {
    path: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Locate<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let want = match self.path.first() {
            None => return Err(de::Error::custom(HERE)),
            Some(Seg::Key(k)) => Some(k.as_str()),
            Some(Seg::Index(_)) => None,
        };
        while let Some(found) = map.next_key_seed(KeySeed {
            want,
            last: self.path.len() == 1,
        })? {
            if found {
                return map.next_value_seed(Locate {
                    path: &self.path[1..],
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let want = match self.path.first() {
            None => return Err(de::Error::custom(HERE)),
            Some(Seg::Index(i)) => Some(*i),
            Some(Seg::Key(_)) => None,
        };
        let mut i = 0;
        loop {
            if Some(i) == want {
                return seq
                    .next_element_seed(Locate {
                        path: &self.path[1..],
                    })
                    .map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
}

/// Reads a mapping key; answers whether it is the wanted one, or raises the marker at the
/// key itself when it is the last step of the path.
struct KeySeed<'a> {
    want: Option<&'a str>,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn check<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        let found = self.want == Some(key);
        if found && self.last {
            Err(E::custom(HERE))
        } else {
            Ok(found)
        }
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 0.0.0.0:8081
ports:
  server: 18101
  entangled: 18201
health: { interval: 1s, timeout: 2s }
shards:
  - { range: 00-3F, path: /mnt/d1 }
  - range: 40-7F
    path: /mnt/d2
";

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        assert_eq!(locate(DOC, &path("listen")), Some((1, 1)));
        assert_eq!(locate(DOC, &path("ports.server")), Some((3, 3)));
        assert_eq!(locate(DOC, &path("ports.entangled")), Some((4, 3)));
        assert_eq!(locate(DOC, &path("health.timeout")), Some((5, 25)));
        let shard1 = [Seg::Key("shards".into()), Seg::Index(1)];
        assert_eq!(locate(DOC, &shard1), Some((8, 5)));
        let range0 = [
            Seg::Key("shards".into()),
            Seg::Index(0),
            Seg::Key("range".into()),
        ];
        assert_eq!(locate(DOC, &range0), Some((7, 7)));
    }

    #[test]
    fn missing_keys_have_no_position() {
        assert_eq!(locate(DOC, &path("admin")), None);
        assert_eq!(locate(DOC, &path("ports.nope")), None);
        assert_eq!(
            locate(DOC, &[Seg::Key("shards".into()), Seg::Index(5)]),
            None
        );
    }
}
