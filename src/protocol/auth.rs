//! `auth.txt` lines (docs/protocol.md §5), read by the built-in server, the accounts ledger
//! and provisioning alike: CR/LF stripped, empty and `#` lines skipped, split at single
//! spaces into user, key and the rest (a date); and new login keys.

use rand::Rng;

/// One `auth.txt` line as the original splits it. `user` or `key` may be empty (two spaces
/// in a row): readers that need both check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLine<'a> {
    pub user: &'a str,
    pub key: &'a str,
    pub rest: Option<&'a str>,
}

/// What one line of `auth.txt` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty or a `#` comment.
    Blank,
    /// One word: no key (the original aborts on it, §14 #16).
    NoKey,
    Entry(AuthLine<'a>),
}

pub fn parse_line(raw: &str) -> Line<'_> {
    let line = raw.trim_end_matches(['\r', '\n']);
    if line.is_empty() || line.starts_with('#') {
        return Line::Blank;
    }
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(user), Some(key)) => Line::Entry(AuthLine {
            user,
            key,
            rest: parts.next(),
        }),
        _ => Line::NoKey,
    }
}

/// The entry of a line with both a user and a key; `None` for any other line.
pub fn entry(raw: &str) -> Option<AuthLine<'_>> {
    match parse_line(raw) {
        Line::Entry(e) if !e.user.is_empty() && !e.key.is_empty() => Some(e),
        _ => None,
    }
}

/// A new random login key: 40 upper-case hex digits (160 bits).
pub fn new_key() -> String {
    let bytes: [u8; 20] = rand::thread_rng().gen();
    hex::encode_upper(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_as_the_original_does() {
        assert_eq!(parse_line("# c\r\n"), Line::Blank);
        assert_eq!(parse_line(""), Line::Blank);
        assert_eq!(parse_line("alone"), Line::NoKey);
        let e = AuthLine {
            user: "u",
            key: "K",
            rest: Some("2026-01-01T00:00:00Z x"),
        };
        assert_eq!(parse_line("u K 2026-01-01T00:00:00Z x\r"), Line::Entry(e));
        assert_eq!(entry("u K 2026-01-01T00:00:00Z x"), Some(e));
        assert!(matches!(
            parse_line("u  K"),
            Line::Entry(AuthLine { key: "", .. })
        ));
        assert_eq!(entry("u  K"), None);
        assert_eq!(entry("u"), None);
        let k = new_key();
        assert!(
            k.len() == 40
                && k.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        );
    }
}
