//! Async client for the Confidant Mail store protocol (docs/protocol.md §2–4).
//!
//! Used by the health checker, the accounts fan-out, the load generator and the tests, so it
//! speaks the protocol exactly as the stock client does: CRLF lines, `EndBlock` or
//! `Data: n` + n raw bytes to end a block, `Padding:` lines ignored on replies.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub use crate::protocol::{GREETING_BUSY, GREETING_READY, MAX_LINE};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Transparent, so that an error chain (`{:#}`) names the cause once.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("server answered BUSY")]
    Busy,
    #[error("unexpected greeting {0:?}")]
    BadGreeting(String),
    #[error("connection closed by the server")]
    Closed,
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("expected {expected}, got {got:?}")]
    Unexpected { expected: &'static str, got: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("malformed block: {0}")]
    BadBlock(&'static str),
    /// The SOCKS5 proxy refused or failed the connection.
    #[error("SOCKS5 proxy: {0}")]
    Socks(String),
}

pub type Result<T> = std::result::Result<T, WireError>;

/// What the greeting said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    Ready,
    Busy,
}

/// Classifies a greeting line as the stock client does: case-insensitive, any text, then
/// `CONFIDANT MAIL SERVER PROTOCOL <digits> READY|BUSY` at the end of the line.
pub fn parse_greeting(line: &str) -> Option<Greeting> {
    let upper = line.to_ascii_uppercase();
    let (rest, kind) = if let Some(r) = upper.strip_suffix(" READY") {
        (r, Greeting::Ready)
    } else if let Some(r) = upper.strip_suffix(" BUSY") {
        (r, Greeting::Busy)
    } else {
        return None;
    };
    let digits_start = rest.trim_end_matches(|c: char| c.is_ascii_digit());
    if digits_start.len() == rest.len() {
        return None;
    }
    digits_start
        .ends_with("CONFIDANT MAIL SERVER PROTOCOL ")
        .then_some(kind)
}

/// A reply to GET SERVER / GET ENTANGLED, or any other multi-line reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `NOT FOUND`, `FAILED` or `INVALID COMMAND` (the whole reply).
    Status(String),
    /// Lines up to `EndBlock`, or up to a `Data: n` line (kept) followed by the payload.
    Block {
        lines: Vec<String>,
        payload: Option<Vec<u8>>,
    },
}

impl Reply {
    /// The block as the server stores it: each line + LF, then the raw payload.
    pub fn to_block_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Reply::Status(_) => None,
            Reply::Block { lines, payload } => {
                let mut out = Vec::new();
                for l in lines {
                    out.extend_from_slice(l.as_bytes());
                    out.push(b'\n');
                }
                if let Some(p) = payload {
                    out.extend_from_slice(p);
                }
                Some(out)
            }
        }
    }
}

/// Splits block bytes (kept lines each ending in LF, then an optional payload announced by a
/// `Data: n` line) into header lines and payload, the inverse of [`Reply::to_block_bytes`].
pub fn split_block(block: &[u8]) -> Result<(Vec<String>, Option<&[u8]>)> {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        let end = match block[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i,
            None => return Err(WireError::BadBlock("header line without LF")),
        };
        let line = String::from_utf8_lossy(&block[pos..end])
            .trim_end_matches('\r')
            .to_string();
        pos = end + 1;
        if let Some(n) = data_line_len(&line) {
            lines.push(line);
            let payload = &block[pos..];
            if payload.len() != n {
                return Err(WireError::BadBlock("payload length differs from Data: n"));
            }
            return Ok((lines, Some(payload)));
        }
        lines.push(line);
    }
    Ok((lines, None))
}

/// `Data: <n>` with n a positive decimal without a leading zero (docs/protocol.md §4.1), any case:
/// the server's own framing rule, so client and server agree on what ends a block.
pub fn data_line_len(line: &str) -> Option<usize> {
    crate::protocol::header::data_line_len(line.as_bytes())
}

/// A connection before or after STARTTLS, on either side: the client's here, the built-in
/// server's in `server::conn`. `Closed` only stands in while STARTTLS swaps the stream.
pub enum Stream<P, T> {
    Plain(P),
    Tls(Box<T>),
    Closed,
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for Stream<P, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for Stream<P, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

type ClientStream = Stream<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// One protocol session. Every read is bounded by `timeout`.
pub struct Client {
    stream: ClientStream,
    buf: Vec<u8>,
    timeout: Duration,
    /// Bytes written since the last flush; flushed before every read.
    pending: Vec<u8>,
}

impl Client {
    /// Connects and reads the greeting; `BUSY` is an error ([`WireError::Busy`]).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client> {
        let (client, greeting) = Self::connect_any(addr, timeout).await?;
        match greeting {
            Greeting::Ready => Ok(client),
            Greeting::Busy => Err(WireError::Busy),
        }
    }

    /// Connects and reads the greeting, returning it whatever it is.
    pub async fn connect_any(addr: SocketAddr, timeout: Duration) -> Result<(Client, Greeting)> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout(timeout, "connect"))??;
        Self::greeted(tcp, timeout).await
    }

    /// Connects to `host:port` through the SOCKS5 proxy `socks` (no authentication, the
    /// host name resolved by the proxy, as the stock client does) and reads a `READY`
    /// greeting. The whole setup may take twice `timeout`, as the stock client allows.
    pub async fn connect_socks(
        socks: (&str, u16),
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Client> {
        let setup = timeout * 2;
        let stream = tokio::time::timeout(
            setup,
            tokio_socks::tcp::Socks5Stream::connect(socks, (host, port)),
        )
        .await
        .map_err(|_| WireError::Timeout(setup, "SOCKS5 connect"))?
        .map_err(|e| match e {
            tokio_socks::Error::Io(e) => WireError::Io(e),
            other => WireError::Socks(other.to_string()),
        })?;
        match Self::greeted(stream.into_inner(), timeout).await? {
            (client, Greeting::Ready) => Ok(client),
            (_, Greeting::Busy) => Err(WireError::Busy),
        }
    }

    /// Wraps a connected stream and reads the greeting.
    async fn greeted(tcp: TcpStream, timeout: Duration) -> Result<(Client, Greeting)> {
        tcp.set_nodelay(true)?;
        let mut client = Client {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(1024),
            timeout,
            pending: Vec::new(),
        };
        let line = client.read_line().await?;
        match parse_greeting(&line) {
            Some(g) => Ok((client, g)),
            None => Err(WireError::BadGreeting(line)),
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Queues a line (CRLF added); it is sent with the next flush or read.
    pub fn queue_line(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.extend_from_slice(b"\r\n");
    }

    /// Queues raw bytes (a payload).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let timeout = self.timeout;
        let data = std::mem::take(&mut self.pending);
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&data).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| WireError::Timeout(timeout, "write"))??;
        Ok(())
    }

    /// Sends one line at once.
    pub async fn send_line(&mut self, line: &str) -> Result<()> {
        self.queue_line(line);
        self.flush().await
    }

    /// Reads one line, CRLF stripped (a bare LF does not end a line).
    pub async fn read_line(&mut self) -> Result<String> {
        self.flush().await?;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE + 2 {
                return Err(WireError::LineTooLong);
            }
            self.fill().await?;
        }
    }

    /// Reads exactly `n` raw bytes.
    pub async fn read_raw(&mut self, n: usize) -> Result<Vec<u8>> {
        self.flush().await?;
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
            .await
            .map_err(|_| WireError::Timeout(self.timeout, "reply"))??;
        if n == 0 {
            return Err(WireError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends a command and reads its one-line reply.
    pub async fn command(&mut self, line: &str) -> Result<String> {
        self.send_line(line).await?;
        self.read_line().await
    }

    /// Reads a multi-line reply as the stock client does (docs/protocol.md §4.2).
    pub async fn read_reply(&mut self) -> Result<Reply> {
        let first = self.read_line().await?;
        let upper = first.to_ascii_uppercase();
        if upper == "NOT FOUND" || upper == "FAILED" || upper == "INVALID COMMAND" {
            return Ok(Reply::Status(first));
        }
        let mut lines = Vec::new();
        let mut line = first;
        loop {
            if line.eq_ignore_ascii_case("EndBlock") {
                return Ok(Reply::Block {
                    lines,
                    payload: None,
                });
            }
            if let Some(n) = data_line_len(&line) {
                lines.push(line);
                let payload = self.read_raw(n).await?;
                return Ok(Reply::Block {
                    lines,
                    payload: Some(payload),
                });
            }
            if !line
                .get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("padding: "))
            {
                lines.push(line);
            }
            line = self.read_line().await?;
        }
    }

    /// `PING` → `PONG`.
    pub async fn ping(&mut self) -> Result<()> {
        expect(self.command("PING").await?, "PONG")
    }

    /// `LOGIN user key`: true on `DONE`, false on `FAILED`.
    pub async fn login(&mut self, user: &str, key: &str) -> Result<bool> {
        done_or_failed(self.command(&format!("LOGIN {user} {key}")).await?)
    }

    /// Sends a one-line command that answers `DONE` or `FAILED`.
    pub async fn simple(&mut self, line: &str) -> Result<bool> {
        done_or_failed(self.command(line).await?)
    }

    /// Queues an upload: the command line, the block's header lines, then `EndBlock` or the
    /// `Data: n` line and payload. Nothing is sent until the next flush or read, so several
    /// uploads can be pipelined.
    pub fn queue_upload(&mut self, command: &str, block: &[u8]) -> Result<()> {
        let (lines, payload) = split_block(block)?;
        self.queue_line(command);
        for l in &lines {
            self.queue_line(l);
        }
        match payload {
            Some(p) => self.queue_raw(p),
            None => self.queue_line("EndBlock"),
        }
        Ok(())
    }

    /// Uploads a block with `command` (`STORE SERVER <key>`, `REPLICATE <key> <user>`, …) and
    /// returns the reply line (`DONE` or `FAILED`).
    pub async fn upload(&mut self, command: &str, block: &[u8]) -> Result<String> {
        self.queue_upload(command, block)?;
        self.read_line().await
    }

    /// `STORE SERVER <key>` with the block; true on `DONE`.
    pub async fn store(&mut self, key: &str, block: &[u8]) -> Result<bool> {
        done_or_failed(self.upload(&format!("STORE SERVER {key}"), block).await?)
    }

    /// `GET SERVER <key> [SINCE d]`: the block bytes, or None on `NOT FOUND`.
    pub async fn get(&mut self, key: &str, since: Option<&str>) -> Result<Option<Vec<u8>>> {
        let cmd = match since {
            Some(d) => format!("GET SERVER {key} SINCE {d}"),
            None => format!("GET SERVER {key}"),
        };
        self.send_line(&cmd).await?;
        match self.read_reply().await? {
            Reply::Status(s) if s.eq_ignore_ascii_case("NOT FOUND") => Ok(None),
            Reply::Status(s) => Err(WireError::Unexpected {
                expected: "a block or NOT FOUND",
                got: s,
            }),
            block => Ok(block.to_block_bytes()),
        }
    }

    /// `SELFTEST`: the lines before `EndBlock` (`PASS`, or `FAIL SENDER <s>`).
    pub async fn selftest(&mut self) -> Result<Vec<String>> {
        self.send_line("SELFTEST").await?;
        match self.read_reply().await? {
            Reply::Block {
                lines,
                payload: None,
            } => Ok(lines),
            other => Err(WireError::Unexpected {
                expected: "SELFTEST lines then EndBlock",
                got: format!("{other:?}"),
            }),
        }
    }

    /// `GENLOGIN n` (administrator): the new keys.
    pub async fn genlogin(&mut self, n: usize) -> Result<Vec<String>> {
        self.send_line(&format!("GENLOGIN {n}")).await?;
        match self.read_reply().await? {
            Reply::Block {
                lines,
                payload: None,
            } => Ok(lines),
            other => Err(WireError::Unexpected {
                expected: "keys then EndBlock",
                got: format!("{other:?}"),
            }),
        }
    }

    /// `STARTTLS`: `PROCEED`, a TLS handshake (certificate not checked, as the stock client
    /// does; see `pinned_sha1` to pin one), then `ENCRYPTED` inside TLS.
    pub async fn starttls(self, pinned_sha1: Option<&str>) -> Result<Client> {
        self.starttls_with(tls_client_config(), pinned_sha1).await
    }

    /// `STARTTLS` offering TLS 1.2 only, as the original client does (the replication
    /// sender uses it; check the peer with [`Client::peer_cert_sha1`]).
    pub async fn starttls_tls12(self) -> Result<Client> {
        self.starttls_with(tls12_client_config(), None).await
    }

    /// The SHA-1 of the server's certificate in `repl_cert` form, once encrypted.
    pub fn peer_cert_sha1(&self) -> Option<String> {
        match &self.stream {
            Stream::Tls(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| cert_sha1(c.as_ref())),
            Stream::Plain(_) | Stream::Closed => None,
        }
    }

    async fn starttls_with(
        mut self,
        config: Arc<rustls::ClientConfig>,
        pinned_sha1: Option<&str>,
    ) -> Result<Client> {
        expect(self.command("STARTTLS").await?, "PROCEED")?;
        if !self.buf.is_empty() {
            return Err(WireError::Tls(
                "data after PROCEED before the handshake".into(),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(WireError::Tls("already encrypted".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("storeherd.invalid")
            .map_err(|e| WireError::Tls(e.to_string()))?;
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| WireError::Timeout(self.timeout, "TLS handshake"))?
            .map_err(|e| WireError::Tls(e.to_string()))?;
        if let Some(pin) = pinned_sha1 {
            let got = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| cert_sha1(c.as_ref()))
                .unwrap_or_default();
            if !got.eq_ignore_ascii_case(pin) {
                return Err(WireError::Tls(format!(
                    "peer certificate {got} does not match the pinned {pin}"
                )));
            }
        }
        let mut client = Client {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::new(),
            timeout: self.timeout,
            pending: Vec::new(),
        };
        expect(client.read_line().await?, "ENCRYPTED")?;
        Ok(client)
    }

    /// `QUIT` → `GOODBYE`, then close.
    pub async fn quit(mut self) -> Result<()> {
        let reply = self.command("QUIT").await?;
        let _ = self.stream.shutdown().await;
        expect(reply, "GOODBYE")
    }
}

/// SHA-1 of a DER certificate as upper-case hex pairs joined by `:` (pyOpenSSL's digest form,
/// which `repl_cert` uses).
pub fn cert_sha1(der: &[u8]) -> String {
    use sha1::Digest;
    let d = sha1::Sha1::digest(der);
    d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn expect(got: String, want: &'static str) -> Result<()> {
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(WireError::Unexpected {
            expected: want,
            got,
        })
    }
}

fn done_or_failed(got: String) -> Result<bool> {
    if got.eq_ignore_ascii_case("DONE") {
        Ok(true)
    } else if got.eq_ignore_ascii_case("FAILED") {
        Ok(false)
    } else {
        Err(WireError::Unexpected {
            expected: "DONE or FAILED",
            got,
        })
    }
}

/// [`tls_client_config`] limited to TLS 1.2.
fn tls12_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("ring supports TLS 1.2")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A TLS client config that accepts any certificate: the protocol's clients never check the
/// server against a CA (docs/protocol.md §3.9); identity comes from `repl_cert` pinning instead.
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_forms() {
        assert_eq!(parse_greeting(GREETING_READY), Some(Greeting::Ready));
        assert_eq!(parse_greeting(GREETING_BUSY), Some(Greeting::Busy));
        assert_eq!(
            parse_greeting("hello confidant mail server protocol 12 ready"),
            Some(Greeting::Ready)
        );
        assert_eq!(parse_greeting("CONFIDANT MAIL SERVER PROTOCOL READY"), None);
        assert_eq!(parse_greeting("READY"), None);
    }

    #[test]
    fn data_line() {
        assert_eq!(data_line_len("Data: 15"), Some(15));
        assert_eq!(data_line_len("DATA: 1"), Some(1));
        assert_eq!(data_line_len("Data: 0"), None);
        assert_eq!(data_line_len("Data: 012"), None);
        assert_eq!(data_line_len("Data:12"), None);
        assert_eq!(data_line_len("Data: 1x"), None);
    }

    #[test]
    fn block_round_trip() {
        let block = b"Type: data\nDate: 2015-06-01T12:00:00Z\nData: 5\nhe\nlo";
        let (lines, payload) = split_block(block).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(payload, Some(&b"he\nlo"[..]));
        let reply = Reply::Block {
            lines,
            payload: payload.map(|p| p.to_vec()),
        };
        assert_eq!(reply.to_block_bytes().unwrap(), block.to_vec());
        assert!(split_block(b"Type: data\nData: 9\nshort").is_err());
        let (lines, payload) = split_block(b"A: 1\nB: 2\n").unwrap();
        assert_eq!(lines, vec!["A: 1", "B: 2"]);
        assert!(payload.is_none());
    }
}
