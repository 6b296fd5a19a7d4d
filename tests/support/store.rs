//! Built-in store servers (`storeherd store`) on free loopback ports, and a blocking
//! byte-level connection to talk to one. A [`TestServer`] is killed and reaped when dropped,
//! also when a test panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use storeherd::server::identity::Identity;

use super::wait::until;
use super::{ports, BIN};

/// How long a server may take to answer its first greeting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestServer {
    child: Option<Child>,
    home: PathBuf,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

/// Everything that can vary between test servers.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra `config.txt` lines (`key: value`).
    pub config: Vec<(String, String)>,
    /// Initial `auth.txt` text.
    pub auth: String,
    /// A shared local store (`alt_localstore`).
    pub store: Option<PathBuf>,
    /// This port rather than a free one (a server started where a sender expects it).
    pub port: Option<u16>,
}

impl Options {
    pub fn config(mut self, extra: &[(&str, &str)]) -> Options {
        self.config
            .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
    pub fn auth(mut self, text: &str) -> Options {
        self.auth = text.to_string();
        self
    }
    pub fn store(mut self, dir: &Path) -> Options {
        self.store = Some(dir.to_path_buf());
        self
    }
    pub fn port(mut self, port: u16) -> Options {
        self.port = Some(port);
        self
    }
}

/// An `auth.txt` with an administrator (`administrator` / [`ADMIN_KEY`]), a replication
/// account (`replication` / [`REPL_KEY`]) and a user ([`USER`] / [`USER_KEY`]).
pub const ADMIN_KEY: &str = "ADMINKEY0123456789";
pub const REPL_KEY: &str = "REPLKEY0123456789";
pub const USER: &str = "00112233445566778899AABBCCDDEEFF00112233";
pub const USER_KEY: &str = "USERKEY0123456789";

pub fn accounts() -> String {
    format!(
        "administrator {ADMIN_KEY} 2026-01-01T00:00:00Z\nreplication {REPL_KEY} 2026-01-01T00:00:00Z\n{USER} {USER_KEY} 2026-01-01T00:00:00Z\n"
    )
}

impl TestServer {
    /// A server in a new temporary home, with `extra_config` added to `config.txt`.
    pub fn start(extra_config: &[(&str, &str)]) -> TestServer {
        TestServer::start_with(Options::default().config(extra_config))
    }

    pub fn start_with(opts: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let mut s = TestServer::start_in(&home, opts);
        s._dir = Some(dir);
        s
    }

    /// A server in `home` (created and provisioned if needed). Retries on a port race.
    pub fn start_in(home: &Path, opts: Options) -> TestServer {
        std::fs::create_dir_all(home).unwrap();
        if !home.join("ssl/server.key").exists() {
            Identity::generate("storeherd-test")
                .unwrap()
                .install(&home.join("ssl"))
                .unwrap();
        }
        if !opts.auth.is_empty() {
            std::fs::write(home.join("auth.txt"), &opts.auth).unwrap();
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = opts.port.unwrap_or_else(ports::port);
            // eport 0: the DHT node takes a free UDP port (the default 8081 would be shared).
            let mut text = format!("sport: {port}\neport: 0\nlisten_address: 127.0.0.1\n");
            if let Some(store) = &opts.store {
                text.push_str(&format!("alt_localstore: {}\n", store.display()));
            }
            for (k, v) in &opts.config {
                text.push_str(&format!("{k}: {v}\n"));
            }
            std::fs::write(home.join("config.txt"), text).unwrap();
            let mut s = TestServer {
                child: None,
                home: home.to_path_buf(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("the store server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("server.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("store")
            .arg("--homedir")
            .arg(&self.home)
            .env("STOREHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let ready = until(START_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(Err(format!("exited with {status}: {}", self.log())));
            }
            let mut raw = Raw::connect(self.addr).ok()?;
            if !raw.line().is_some_and(|l| l.ends_with("READY")) {
                return None;
            }
            // Closed by the server before returning, so the probe no longer counts against
            // `max_connections` (a test may fill every slot).
            raw.cmd("QUIT");
            raw.closed();
            Some(Ok(()))
        });
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(exited)) => {
                self.child = None;
                Err(exited)
            }
            Err(_) => {
                self.kill9();
                Err(format!("no READY greeting within {START_TIMEOUT:?}"))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit by itself; its exit code, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status = super::procs::exit_within(self.child.as_mut()?, within)?;
        self.child = None;
        status.code()
    }

    /// Starts the server again in the same home, on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        // The old socket may linger briefly: a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    eprintln!("restart retry: {e}");
                    last = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("restart failed: {last}");
    }

    /// `inputqueue/` is empty and the input journal holds no unsettled entry: every
    /// acknowledged block has been processed.
    pub fn wait_queue_empty(&self, within: Duration) -> bool {
        until(within, || {
            let n = std::fs::read_dir(self.home.join("inputqueue"))
                .map(|d| d.count())
                .unwrap_or(0);
            n == 0 && storeherd::store::queued_uploads(&self.home) == 0
        })
        .is_ok()
    }

    /// A blocking raw connection (greeting already read).
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(self.addr).expect("connect");
        let g = r.line().expect("greeting");
        assert_eq!(g, "CONFIDANT MAIL SERVER PROTOCOL 1 READY");
        r
    }

    pub async fn client(&self) -> storeherd::wire::Client {
        storeherd::wire::Client::connect(self.addr, Duration::from_secs(20))
            .await
            .expect("connect")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking byte-level connection for transcript tests; every read is bounded.
pub struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Ok(Raw {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// The underlying socket (e.g. to write without the helpers' unwraps).
    pub fn stream(&self) -> &TcpStream {
        &self.w
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.w.set_read_timeout(Some(t)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Sends `line` + CRLF.
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// One CRLF line; `None` on EOF, error or timeout.
    pub fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        loop {
            let mut b = [0u8; 1];
            match self.r.read(&mut b) {
                Ok(1) => {
                    buf.push(b[0]);
                    if buf.ends_with(b"\r\n") {
                        buf.truncate(buf.len() - 2);
                        return Some(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
                _ => return None,
            }
        }
    }

    /// Sends a line and returns the one-line reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_line(line);
        self.line()
            .unwrap_or_else(|| panic!("no reply to {line:?}"))
    }

    /// Lines up to and including `EndBlock` (bounded).
    pub fn lines_until_endblock(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let l = self.line().expect("reply line");
            let end = l == "EndBlock";
            out.push(l);
            if end {
                return out;
            }
        }
        panic!("no EndBlock");
    }

    /// Exactly `n` raw bytes.
    pub fn raw_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).unwrap();
        b
    }

    /// True if the server closes the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }

    pub fn fill_line(&mut self) -> Option<String> {
        let mut s = String::new();
        self.r.read_line(&mut s).ok()?;
        Some(s)
    }
}
