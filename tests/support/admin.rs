//! The admin API of a running supervisor over plain blocking HTTP/1.1 (one connection per
//! request), and `/status` read into the supervisor's own [`Status`] type.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use storeherd::control::Status;

/// The keys docs/design.md promises in every `/status` document…
pub const STATUS_KEYS: &[&str] = &["site", "listen", "instances"];

/// …and in each of its instances (checked on the JSON itself: an `Option` field would
/// decode from a missing key).
pub const INSTANCE_KEYS: &[&str] = &[
    "id",
    "state",
    "pid",
    "port",
    "eport",
    "home",
    "restarts",
    "connections_active",
    "connections_total",
    "cpu_percent",
    "rss_bytes",
    "uptime_s",
];

/// An admin API: its address and, when it wants one, the bearer token.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin { addr, token: None }
    }

    /// One request: (status code, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let body = body.unwrap_or("");
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP reply {out:?}")))?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// `GET /status`, decoded; the error says what went wrong (unreachable, a refusal, a
    /// document that is not a status).
    pub fn status(&self) -> Result<Status, String> {
        let (code, body) = self
            .http("GET", "/status", None)
            .map_err(|e| format!("GET /status: {e}"))?;
        if code != 200 {
            return Err(format!("GET /status: {code} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET /status: {e}: {body}"))
    }
}
