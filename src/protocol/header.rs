//! Header-line matching shared by validation and the GET filters: the original's
//! case-insensitive `^NAME: (value)$` patterns, on byte lines (docs/protocol.md §7.1–§7.2).

use std::borrow::Cow;

/// The value after `name` (given in upper case, with its `: `) if `line` starts with it in
/// any letter case.
pub fn value<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    if line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
        Some(&line[name.len()..])
    } else {
        None
    }
}

/// `[0-9a-fA-F]{40}` as raw bytes.
pub fn hex20(v: &[u8]) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    if v.len() != 40 {
        return None;
    }
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

/// Python 2's `\S+` on a byte string: at least one byte, none of them ASCII whitespace.
pub fn is_token(v: &[u8]) -> bool {
    !v.is_empty()
        && !v
            .iter()
            .any(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
}

/// A proof as the PoW pattern accepts it: `bd,[0-9a-f]+(,[0-9a-f]+)+`, any letter case.
pub fn is_pow(v: &[u8]) -> bool {
    let Some(rest) = value(v, b"BD,") else {
        return false;
    };
    let mut groups = 0;
    for g in rest.split(|&c| c == b',') {
        if g.is_empty() || !g.iter().all(u8::is_ascii_hexdigit) {
            return false;
        }
        groups += 1;
    }
    groups >= 2
}

/// The length in a `Data: n` value: `[1-9][0-9]*`. Lengths past `usize` saturate (no block
/// is that long, so they never yield a payload).
pub fn data_len(v: &[u8]) -> Option<usize> {
    match v.first() {
        Some(b'1'..=b'9') if v.iter().all(u8::is_ascii_digit) => {
            Some(v.iter().fold(0usize, |n, &c| {
                n.saturating_mul(10).saturating_add(usize::from(c - b'0'))
            }))
        }
        _ => None,
    }
}

/// `line` with every CR removed; borrowed when it had none.
pub fn without_cr(line: &[u8]) -> Cow<'_, [u8]> {
    if line.contains(&b'\r') {
        Cow::Owned(line.iter().copied().filter(|&c| c != b'\r').collect())
    } else {
        Cow::Borrowed(line)
    }
}

/// `Data: <n>`, n a positive decimal without a leading zero, any case (docs/protocol.md §4.1).
/// Over 18 digits is not a length line here: such a length is never read raw.
pub fn data_line_len(line: &[u8]) -> Option<usize> {
    if line.len() < 7 || !line[..6].eq_ignore_ascii_case(b"data: ") || line.len() > 6 + 18 {
        return None;
    }
    data_len(&line[6..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(value(b"dAtE: x", b"DATE: "), Some(&b"x"[..]));
        assert_eq!(value(b"Date:x", b"DATE: "), None);
        assert!(hex20(b"0123456789abcdefABCDEF0123456789abcdef01").is_some());
        assert!(hex20(b"0123456789abcdefABCDEF0123456789abcdef0g").is_none());
        assert!(is_token(b"inbox\x80"));
        assert!(!is_token(b"in box"));
        assert!(!is_token(b""));
        assert!(is_pow(b"bd,1,2"));
        assert!(is_pow(b"BD,Af,0,9"));
        assert!(!is_pow(b"bd,1"));
        assert!(!is_pow(b"bd,1,"));
        assert!(!is_pow(b"bd,,1"));
        assert!(!is_pow(b"bd,1,x"));
        assert_eq!(data_len(b"16"), Some(16));
        assert_eq!(data_len(b"016"), None);
        assert_eq!(data_len(b"0"), None);
        assert_eq!(data_len(b"99999999999999999999999999"), Some(usize::MAX));
        assert_eq!(data_len(b"1 "), None);
        assert_eq!(without_cr(b"a\rb\r"), Cow::<[u8]>::Owned(b"ab".to_vec()));
    }

    #[test]
    fn data_length_rules() {
        assert_eq!(data_line_len(b"DATA: 12"), Some(12));
        assert_eq!(data_line_len(b"Data: 0"), None);
        assert_eq!(data_line_len(b"Data: 01"), None);
        assert_eq!(data_line_len(b"Data: 1234567890123456789"), None);
    }
}
