//! Parsing of command-state lines (docs/protocol.md §3): patterns tested in table order, first
//! match wins, letter case ignored, hash arguments upper-cased.

/// A parsed command line. Arguments other than hashes keep the client's case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    StoreServer(String),
    Replicate(String, String),
    StoreProxy(String, Option<String>),
    GetServer(String, Option<String>),
    StoreEntangled(String),
    GetEntangled(String, Option<String>),
    Login(String, String),
    AddLogin(Option<String>, String),
    RmLogin(String),
    GenLogin(String),
    RepLogin(String, String),
    DnsTxt(String),
    /// `PING` → `PONG`; `PING <rest>` → `PONG <rest>` (the raw bytes after `PING`).
    Ping(Vec<u8>),
    StartTls,
    Quit,
    SelfTest,
    Shutdown,
    Invalid,
}

fn is_h40(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_an(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `dddd-dd-ddTdd:dd:ddZ`, `T` and `Z` in any case.
pub fn is_dt(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T' || c == b't',
            13 | 16 => c == b':',
            19 => c == b'Z' || c == b'z',
            _ => c.is_ascii_digit(),
        })
}

fn word(s: &str, w: &str) -> bool {
    s.eq_ignore_ascii_case(w)
}

/// Parses one line (CRLF already stripped).
pub fn parse(line: &[u8]) -> Command {
    if let Some(c) = parse_pattern(line) {
        return c;
    }
    // Rows 16-20 compare the upper-cased line exactly (no stray-LF allowance).
    let upper = line.to_ascii_uppercase();
    if upper == b"PING" {
        return Command::Ping(Vec::new());
    }
    if upper.starts_with(b"PING ") {
        return Command::Ping(line[4..].to_vec());
    }
    match upper.as_slice() {
        b"STARTTLS" => Command::StartTls,
        b"QUIT" => Command::Quit,
        b"SELFTEST" => Command::SelfTest,
        b"SHUTDOWN" => Command::Shutdown,
        _ => Command::Invalid,
    }
}

/// Rows 1-15: regular-expression patterns in the original, whose `$` also matches before one
/// final LF — so one stray LF before the CRLF is accepted (docs/protocol.md §14.1).
fn parse_pattern(line: &[u8]) -> Option<Command> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let s = std::str::from_utf8(line).ok()?;
    if !s.is_ascii() {
        return None;
    }
    let p: Vec<&str> = s.split(' ').collect();
    let up = |h: &str| h.to_ascii_uppercase();
    use Command::*;
    let c = match p.as_slice() {
        [a, b, h] if word(a, "STORE") && word(b, "SERVER") && is_h40(h) => StoreServer(up(h)),
        [a, h, u] if word(a, "REPLICATE") && is_h40(h) && is_an(u, 4, 40) => {
            Replicate(up(h), u.to_string())
        }
        [a, b, h] if word(a, "STORE") && word(b, "PROXY") && is_h40(h) => StoreProxy(up(h), None),
        [a, b, h, c, d]
            if word(a, "STORE")
                && word(b, "PROXY")
                && is_h40(h)
                && word(c, "AFTER")
                && is_dt(d) =>
        {
            StoreProxy(up(h), Some(d.to_string()))
        }
        [a, b, h, c, d]
            if word(a, "GET") && word(b, "SERVER") && is_h40(h) && word(c, "SINCE") && is_dt(d) =>
        {
            GetServer(up(h), Some(d.to_string()))
        }
        [a, b, h] if word(a, "GET") && word(b, "SERVER") && is_h40(h) => GetServer(up(h), None),
        [a, b, h] if word(a, "STORE") && word(b, "ENTANGLED") && is_h40(h) => StoreEntangled(up(h)),
        [a, b, h, c, d]
            if word(a, "GET")
                && word(b, "ENTANGLED")
                && is_h40(h)
                && word(c, "SINCE")
                && is_dt(d) =>
        {
            GetEntangled(up(h), Some(d.to_string()))
        }
        [a, b, h] if word(a, "GET") && word(b, "ENTANGLED") && is_h40(h) => {
            GetEntangled(up(h), None)
        }
        [a, u, k] if word(a, "LOGIN") && is_an(u, 8, 40) && is_an(k, 8, 40) => {
            Login(u.to_string(), k.to_string())
        }
        [a, u, k] if word(a, "ADDLOGIN") && is_an(u, 8, 40) && is_an(k, 8, 40) => {
            AddLogin(Some(u.to_string()), k.to_string())
        }
        [a, k] if word(a, "ADDLOGIN") && is_an(k, 8, 40) => AddLogin(None, k.to_string()),
        [a, k] if word(a, "RMLOGIN") && is_an(k, 8, 40) => RmLogin(k.to_string()),
        [a, n] if word(a, "GENLOGIN") && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            GenLogin(n.to_string())
        }
        [a, u, k] if word(a, "REPLOGIN") && is_an(u, 8, 40) && is_an(k, 8, 40) => {
            RepLogin(u.to_string(), k.to_string())
        }
        [a, b, n]
            if word(a, "DNS")
                && word(b, "TXT")
                && !n.is_empty()
                && n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.') =>
        {
            DnsTxt(n.to_string())
        }
        _ => return None,
    };
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "a2129dd8a2129dd8a2129dd8a2129dd8a2129d79";

    #[test]
    fn table_rows() {
        let hu = H.to_uppercase();
        assert_eq!(
            parse(format!("store server {H}").as_bytes()),
            Command::StoreServer(hu.clone())
        );
        assert_eq!(
            parse(format!("GET SERVER {H} since 2015-06-01t12:00:00z").as_bytes()),
            Command::GetServer(hu.clone(), Some("2015-06-01t12:00:00z".into()))
        );
        assert_eq!(
            parse(format!("GET SERVER {H}\n").as_bytes()),
            Command::GetServer(hu.clone(), None)
        );
        assert_eq!(
            parse(format!("GET  SERVER {H}").as_bytes()),
            Command::Invalid
        );
        assert_eq!(
            parse(format!("REPLICATE {H} none").as_bytes()),
            Command::Replicate(hu.clone(), "none".into())
        );
        assert_eq!(
            parse(format!("REPLICATE {H} abc").as_bytes()),
            Command::Invalid
        );
        assert_eq!(
            parse(b"LOGIN user1234 Key12345"),
            Command::Login("user1234".into(), "Key12345".into())
        );
        assert_eq!(parse(b"LOGIN user123 Key12345"), Command::Invalid);
        assert_eq!(
            parse(b"ADDLOGIN Key12345"),
            Command::AddLogin(None, "Key12345".into())
        );
        assert_eq!(parse(b"GENLOGIN 0"), Command::GenLogin("0".into()));
        assert_eq!(
            parse(b"DNS TXT example.com"),
            Command::DnsTxt("example.com".into())
        );
        assert_eq!(parse(b"ping"), Command::Ping(vec![]));
        assert_eq!(parse(b"PING  x"), Command::Ping(b"  x".to_vec()));
        assert_eq!(parse(b"PING\n"), Command::Invalid);
        assert_eq!(parse(b"StartTLS"), Command::StartTls);
        assert_eq!(parse(b""), Command::Invalid);
        assert_eq!(parse(b"\xff\xfe"), Command::Invalid);
        assert_eq!(
            parse(format!("STORE SERVER {H}/../x").as_bytes()),
            Command::Invalid
        );
    }
}
