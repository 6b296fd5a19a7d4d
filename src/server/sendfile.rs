//! Send-queue files (docs/protocol.md §10.1): how they are written, what the sender reads from
//! their headers (§10.4 step 1), the command each becomes for a target (§10.4 "Building each
//! command"), and the `Post-To` rewrite after a partial success (§10.4 step 3).

use chrono::NaiveDateTime;

use crate::server::config::HostPort;

/// The send-queue text of a login change (docs/protocol.md §10.1).
pub fn login_file(user: &str, key: &str) -> Vec<u8> {
    format!("StoreType: replicate\nReplogin-User: {user}\nReplogin-Auth: {key}\n").into_bytes()
}

/// The send-queue text of a `STORE PROXY [AFTER]` upload (docs/protocol.md §3.3): `body` is the
/// block as stored (header lines + LF, then the payload).
pub fn proxy_file(key: &str, embargo: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut c = format!(
        "StoreType: proxy\nStoreKeyid: {key}\nEmbargo: {}\n",
        embargo.unwrap_or("None")
    )
    .into_bytes();
    c.extend_from_slice(body);
    c
}

/// Where one `Post-To` value (or a replicate file) sends a block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The replication peer (`replpeer`), for `StoreType: replicate` files.
    Replicate,
    /// `Post-To: entangled`: `STORE ENTANGLED` to this server itself, as the original does.
    Entangled,
    /// `Post-To: server=h:p,h:p,...`: `STORE SERVER` to the first of them that takes it.
    Servers(Vec<HostPort>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Replicate => f.write_str("replicate"),
            Target::Entangled => f.write_str("entangled"),
            Target::Servers(s) => {
                f.write_str("server=")?;
                for (i, hp) in s.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{}", hp.host, hp.port)?;
                }
                Ok(())
            }
        }
    }
}

/// Parses a `Post-To` value. The original takes anything after 7 characters as a server
/// list and stops its sender on a value that is not one; here a bad value is an error the
/// sender logs. `replicate` is refused: an upload must not reach the replication peer.
pub fn parse_target(value: &str) -> Result<Target, String> {
    if value.eq_ignore_ascii_case("entangled") {
        return Ok(Target::Entangled);
    }
    let list = value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("server="))
        .map(|_| &value[7..])
        .ok_or_else(|| format!("`{value}` is neither `entangled` nor `server=host:port,...`"))?;
    let mut servers = Vec::new();
    for item in list.split(',') {
        // One colon, as the original splits it (no IPv6 literals).
        let parsed = item
            .split_once(':')
            .filter(|(h, p)| !h.is_empty() && !p.contains(':'))
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)));
        match parsed {
            Some((host, port)) => servers.push(HostPort {
                host: host.to_string(),
                port,
            }),
            None => return Err(format!("`{item}` in `{value}` is not host:port")),
        }
    }
    Ok(Target::Servers(servers))
}

/// What the sender reads from a file's headers (docs/protocol.md §10.4 step 1).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// `storetype: replicate` (any case).
    pub replicate: bool,
    /// `storetype: proxy` (any case).
    pub proxy: bool,
    /// A valid `Embargo: <DT>`; `Embargo: None` is none.
    pub embargo: Option<NaiveDateTime>,
    /// The last valid `Date: <DT>`.
    pub date: Option<NaiveDateTime>,
    /// `type: data` (any case): sent before the other files of the same target.
    pub data: bool,
    /// The `Post-To` values, as written.
    pub post_to: Vec<String>,
}

/// The header lines of a file: up to and including the first `Data: ` line, CR/LF removed.
fn header_lines(content: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || pos >= content.len() {
            return None;
        }
        let (mut line, next) = match content[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&content[pos..pos + i], pos + i + 1),
            None => (&content[pos..], content.len()),
        };
        while let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        pos = next;
        done = has_prefix(line, "data: ");
        Some((line, next))
    })
}

fn has_prefix(line: &[u8], prefix: &str) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn value_of(line: &[u8], prefix: &str) -> String {
    String::from_utf8_lossy(&line[prefix.len()..]).into_owned()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, exactly, as the original's patterns (a real date).
fn datetime(v: &[u8]) -> Option<NaiveDateTime> {
    crate::protocol::dt::parse_dt(v).map(|t| t.naive_utc())
}

pub fn headers(content: &[u8]) -> Headers {
    let mut h = Headers::default();
    for (line, _) in header_lines(content) {
        if has_prefix(line, "embargo: ") {
            if let Some(d) = datetime(&line[9..]) {
                h.embargo = Some(d);
            }
        } else if has_prefix(line, "date: ") {
            if let Some(d) = datetime(&line[6..]) {
                h.date = Some(d);
            }
        } else if line.eq_ignore_ascii_case(b"storetype: replicate") {
            h.replicate = true;
        } else if line.eq_ignore_ascii_case(b"storetype: proxy") {
            h.proxy = true;
        } else if has_prefix(line, "post-to: ") {
            h.post_to.push(value_of(line, "post-to: "));
        } else if line.eq_ignore_ascii_case(b"type: data") {
            h.data = true;
        }
    }
    h
}

/// One send-queue file, as the command it becomes (docs/protocol.md §10.4 "Building each command").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Login {
        user: String,
        key: String,
    },
    Block {
        /// `REPLICATE <key> <user>`, `STORE SERVER <key>` or `STORE ENTANGLED <key>`.
        command: String,
        /// The kept header lines, the `Data:` line included.
        lines: Vec<Vec<u8>>,
        payload: Option<Vec<u8>>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("block file without StoreKeyid")]
    NoKey,
    #[error("no header lines to send")]
    Empty,
}

/// Builds the command that sends `content` to `target`.
pub fn outgoing(content: &[u8], target: &Target) -> Result<Outgoing, FileError> {
    let mut key = None;
    let mut user = None;
    let mut login_user = None;
    let mut login_auth = None;
    let mut lines = Vec::new();
    let mut payload = None;
    for (line, next) in header_lines(content) {
        if has_prefix(line, "storetype: ")
            || has_prefix(line, "embargo: ")
            || has_prefix(line, "post-to: ")
        {
            // Never sent. `Post-To` of a replicate file is not relayed (docs/protocol.md §14 #8).
        } else if has_prefix(line, "storekeyid: ") && key.is_none() {
            key = Some(value_of(line, "storekeyid: ").to_ascii_uppercase());
        } else if has_prefix(line, "loginuser: ") {
            user = Some(value_of(line, "loginuser: "));
        } else if has_prefix(line, "replogin-user: ") {
            login_user = Some(value_of(line, "replogin-user: "));
        } else if has_prefix(line, "replogin-auth: ") {
            login_auth = Some(value_of(line, "replogin-auth: "));
        } else {
            lines.push(line.to_vec());
            if has_prefix(line, "data: ") {
                payload = Some(content[next..].to_vec());
            }
        }
    }
    if *target == Target::Replicate {
        if let Some(key) = login_auth {
            return Ok(Outgoing::Login {
                user: login_user.unwrap_or_else(|| "undefined".into()),
                key,
            });
        }
    }
    let key = key.ok_or(FileError::NoKey)?;
    if lines.is_empty() {
        return Err(FileError::Empty);
    }
    let command = match target {
        Target::Replicate => format!("REPLICATE {key} {}", user.unwrap_or_else(|| "none".into())),
        Target::Entangled => format!("STORE ENTANGLED {key}"),
        Target::Servers(_) => format!("STORE SERVER {key}"),
    };
    Ok(Outgoing::Block {
        command,
        lines,
        payload,
    })
}

impl Outgoing {
    /// The bytes of the command (CRLF lines, then `EndBlock` or the raw payload).
    pub fn to_wire(&self) -> Vec<u8> {
        match self {
            Outgoing::Login { user, key } => format!("REPLOGIN {user} {key}\r\n").into_bytes(),
            Outgoing::Block {
                command,
                lines,
                payload,
            } => {
                let mut out = format!("{command}\r\n").into_bytes();
                for l in lines {
                    out.extend_from_slice(l);
                    out.extend_from_slice(b"\r\n");
                }
                match payload {
                    Some(p) => out.extend_from_slice(p),
                    None => out.extend_from_slice(b"EndBlock\r\n"),
                }
                out
            }
        }
    }
}

/// The file with its `Post-To` lines replaced by `remaining`, written where the first one
/// was (docs/protocol.md §10.4 step 3); the payload is kept byte for byte.
pub fn rewrite_post_to(content: &[u8], remaining: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut placed = false;
    let mut end = 0;
    for (line, next) in header_lines(content) {
        end = next;
        if has_prefix(line, "post-to: ") {
            if !placed {
                for t in remaining {
                    out.extend_from_slice(b"Post-To: ");
                    out.extend_from_slice(t.as_bytes());
                    out.push(b'\n');
                }
                placed = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    // A last header line without LF gets one, as the original's rewrite gives it.
    out.extend_from_slice(content.get(end..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(t: &str) -> Target {
        parse_target(t).unwrap()
    }

    #[test]
    fn block_file_becomes_replicate() {
        let f = b"StoreType: replicate\nStoreKeyid: AB12\nLoginUser: none\nType: data\n\
                  Post-To: server=x:1\nDate: 2026-01-01T00:00:00Z\nData: 5\nhe\nlo";
        let o = outgoing(f, &Target::Replicate).unwrap();
        assert_eq!(
            o.to_wire(),
            b"REPLICATE AB12 none\r\nType: data\r\nDate: 2026-01-01T00:00:00Z\r\nData: 5\r\nhe\nlo"
        );
        let f = b"StoreType: replicate\nStoreKeyid: AB12\nLoginUser: U1234567\nA: 1\n";
        assert_eq!(
            outgoing(f, &Target::Replicate).unwrap().to_wire(),
            b"REPLICATE AB12 U1234567\r\nA: 1\r\nEndBlock\r\n"
        );
        assert_eq!(
            outgoing(b"StoreType: replicate\nType: data\n", &Target::Replicate),
            Err(FileError::NoKey)
        );
    }

    #[test]
    fn login_file_becomes_replogin() {
        let o = outgoing(
            &login_file("USERXXXX1111", "KEYXXXX11112222"),
            &Target::Replicate,
        );
        assert_eq!(
            o.unwrap().to_wire(),
            b"REPLOGIN USERXXXX1111 KEYXXXX11112222\r\n"
        );
        let o = outgoing(
            b"StoreType: replicate\nReplogin-Auth: KEYXXXX1\n",
            &Target::Replicate,
        );
        assert_eq!(o.unwrap().to_wire(), b"REPLOGIN undefined KEYXXXX1\r\n");
    }

    #[test]
    fn proxy_file_becomes_store_server_or_entangled() {
        let f = proxy_file(
            "AB12",
            Some("2026-01-02T00:00:00Z"),
            b"Post-To: server=a:1\nPost-To: entangled\nType: data\nDate: 2026-01-01T00:00:00Z\nData: 3\n\nx\n",
        );
        assert!(f.starts_with(
            b"StoreType: proxy\nStoreKeyid: AB12\nEmbargo: 2026-01-02T00:00:00Z\nPost-To: "
        ));
        let wire = b"\r\nType: data\r\nDate: 2026-01-01T00:00:00Z\r\nData: 3\r\n\nx\n";
        let mut want = b"STORE SERVER AB12".to_vec();
        want.extend_from_slice(wire);
        assert_eq!(
            outgoing(&f, &servers("server=a:1")).unwrap().to_wire(),
            want
        );
        let mut want = b"STORE ENTANGLED AB12".to_vec();
        want.extend_from_slice(wire);
        assert_eq!(outgoing(&f, &Target::Entangled).unwrap().to_wire(), want);
        let h = headers(&f);
        assert_eq!(
            h,
            Headers {
                replicate: false,
                proxy: true,
                embargo: datetime(b"2026-01-02T00:00:00Z"),
                date: datetime(b"2026-01-01T00:00:00Z"),
                data: true,
                post_to: vec!["server=a:1".into(), "entangled".into()],
            }
        );
        assert_eq!(headers(&proxy_file("AB", None, b"A: 1\n")).embargo, None);
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("ENTANGLED"), Ok(Target::Entangled));
        assert_eq!(
            servers("Server=a.onion:1,127.0.0.1:2").to_string(),
            "server=a.onion:1,127.0.0.1:2"
        );
        for bad in [
            "replicate",
            "server=",
            "server=a",
            "server=a:x",
            "server=a:1:2",
            "server=:1",
            "server=a:1,",
            "elsewhere",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn post_to_rewrite_keeps_everything_else() {
        let f = b"StoreType: proxy\nStoreKeyid: AB\nEmbargo: None\nPost-To: server=a:1\nType: data\nPost-To: server=b:2\nData: 9\nPost-To: x";
        let r = rewrite_post_to(f, &["server=b:2".into()]);
        assert_eq!(
            r,
            b"StoreType: proxy\nStoreKeyid: AB\nEmbargo: None\nPost-To: server=b:2\nType: data\nData: 9\nPost-To: x"
        );
        assert_eq!(headers(&r).post_to, vec!["server=b:2".to_string()]);
        let r = rewrite_post_to(b"Post-To: a\nB: 1", &[]);
        assert_eq!(r, b"B: 1\n");
    }
}
