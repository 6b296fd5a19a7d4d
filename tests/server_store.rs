//! Storing and reading blocks: one server, two servers on one local store, STARTTLS with
//! TLS 1.2, and the worker's crash safety (kill -9 during a stream of uploads).

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use storeherd::protocol::compose;
use storeherd::wire::Client;
use support::store::{accounts, Options, TestServer, USER, USER_KEY};

const WAIT: Duration = Duration::from_secs(60);

async fn user_client(s: &TestServer) -> Client {
    let mut c = s.client().await;
    assert!(c.login(USER, USER_KEY).await.unwrap());
    c
}

fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut p = format!("block {i} ").into_bytes();
    p.resize(size, b'a' + (i % 26) as u8);
    p
}

/// A queue file (docs/protocol.md §6.1) of an anonymous upload of `block` to `key`, as written by
/// hand here: `store_type` is `server` for the input queue, `replicate` for the peer's copy.
fn queue_file(store_type: &str, key: &str, block: &[u8]) -> Vec<u8> {
    let mut c =
        format!("StoreType: {store_type}\nStoreKeyid: {key}\nLoginUser: none\n").into_bytes();
    c.extend_from_slice(block);
    c
}

/// Every file in a store tree is a block (40 hex digits) or a LOCKFILE inside a leaf: no
/// temporary, partial or stray file anywhere.
fn assert_clean_tree(root: &Path) {
    for l1 in std::fs::read_dir(root).unwrap() {
        let l1 = l1.unwrap();
        assert!(
            l1.file_type().unwrap().is_dir(),
            "file in level 1: {:?}",
            l1.path()
        );
        for l2 in std::fs::read_dir(l1.path()).unwrap() {
            let l2 = l2.unwrap();
            assert!(
                l2.file_type().unwrap().is_dir(),
                "file in level 2: {:?}",
                l2.path()
            );
            for f in std::fs::read_dir(l2.path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().into_string().unwrap();
                assert!(
                    name == "LOCKFILE"
                        || (name.len() == 40 && name.chars().all(|c| c.is_ascii_hexdigit())),
                    "stray file {:?}",
                    f.path()
                );
            }
        }
    }
}

#[tokio::test]
async fn store_then_get_data_block() {
    let s = TestServer::start_with(Options::default().auth(&accounts()));
    let (key, block) = compose::data_block(&payload(1, 4096), Utc::now());
    let mut anon = s.client().await;
    assert!(anon.store(&key, &block).await.unwrap());
    assert!(s.wait_queue_empty(WAIT));
    // Stored, but data blocks look absent to anonymous sessions.
    assert_eq!(anon.get(&key, None).await.unwrap(), None);
    let mut c = user_client(&s).await;
    assert_eq!(
        c.get(&key, None).await.unwrap().as_deref(),
        Some(&block[..])
    );
    // Replay: unchanged. A block whose key does not match is not stored.
    assert!(c.store(&key, &block).await.unwrap());
    let (_, other) = compose::data_block(b"other", Utc::now());
    let wrong = "0000000000000000000000000000000000000001";
    assert!(c.store(wrong, &other).await.unwrap());
    assert!(s.wait_queue_empty(WAIT));
    assert_eq!(c.get(wrong, None).await.unwrap(), None);
    assert_eq!(
        c.get(&key, None).await.unwrap().as_deref(),
        Some(&block[..])
    );
    assert_clean_tree(&s.home().join("localstore"));
}

#[tokio::test]
async fn starttls_tls12_store_and_get() {
    let s = TestServer::start_with(Options::default().auth(&accounts()));
    let mut c = tls12_session(s.addr()).await;
    let (key, block) = compose::data_block(&payload(7, 1000), Utc::now());
    assert_eq!(c.cmd(&format!("LOGIN {USER} {USER_KEY}")).await, "DONE");
    c.send(format!("STORE SERVER {key}\r\n").as_bytes()).await;
    let (lines, p) = storeherd::wire::split_block(&block).unwrap();
    for l in &lines {
        c.send(format!("{l}\r\n").as_bytes()).await;
    }
    c.send(p.unwrap()).await;
    assert_eq!(c.line().await, "DONE");
    assert!(s.wait_queue_empty(WAIT));
    c.send(format!("GET SERVER {key}\r\n").as_bytes()).await;
    let mut got = Vec::new();
    for _ in 0..lines.len() {
        let l = c.line().await;
        got.extend_from_slice(l.as_bytes());
        got.push(b'\n');
    }
    got.extend_from_slice(&c.raw(p.unwrap().len()).await);
    assert_eq!(got, block);
    assert_eq!(c.cmd("QUIT").await, "GOODBYE");
}

/// A STARTTLS session whose client only offers TLS 1.2.
struct Tls12 {
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

async fn tls12_session(addr: std::net::SocketAddr) -> Tls12 {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    read_line_plain(&mut tcp, &mut buf).await;
    tcp.write_all(b"STARTTLS\r\n").await.unwrap();
    assert_eq!(read_line_plain(&mut tcp, &mut buf).await, "PROCEED");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("storeherd.invalid").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut t = Tls12 { s, buf: Vec::new() };
    assert_eq!(t.line().await, "ENCRYPTED");
    t
}

async fn read_line_plain(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return l;
        }
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&b[..n]);
    }
}

impl Tls12 {
    async fn send(&mut self, b: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(b).await.unwrap();
        self.s.flush().await.unwrap();
    }
    async fn fill(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        self.buf.extend_from_slice(&b[..n]);
    }
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return l;
            }
            self.fill().await;
        }
    }
    async fn raw(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }
    async fn cmd(&mut self, l: &str) -> String {
        self.send(format!("{l}\r\n").as_bytes()).await;
        self.line().await
    }
}

#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn two_servers_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let opts = Options::default().auth(&accounts()).store(&store);
    let a = TestServer::start_in(&dir.path().join("a"), opts.clone());
    let b = TestServer::start_in(&dir.path().join("b"), opts);

    // A block stored through one is read through the other.
    let (key, block) = compose::data_block(&payload(3, 4096), Utc::now());
    assert!(user_client(&a).await.store(&key, &block).await.unwrap());
    assert!(a.wait_queue_empty(WAIT));
    let got = user_client(&b).await.get(&key, None).await.unwrap();
    assert_eq!(got.as_deref(), Some(&block[..]));

    // 200 message announcements to one key, sent concurrently through both.
    let recipient = [0x42u8; 20];
    let now = Utc::now();
    let mut blocks = Vec::new();
    for i in 0..200u32 {
        let mut mh = [0u8; 20];
        mh[..4].copy_from_slice(&i.to_be_bytes());
        mh[19] = 0x99;
        blocks.push(compose::message_announcement(
            recipient,
            "inbox",
            mh,
            &[],
            now,
        ));
    }
    let mkey = blocks[0].0.clone();
    assert!(blocks.iter().all(|(k, _)| *k == mkey));
    let mut tasks = Vec::new();
    for (n, chunk) in blocks.chunks(25).enumerate() {
        let addr = if n % 2 == 0 { a.addr() } else { b.addr() };
        let chunk: Vec<_> = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, Duration::from_secs(20))
                .await
                .unwrap();
            for (k, bl) in chunk {
                assert!(c.store(&k, &bl).await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(a.wait_queue_empty(WAIT) && b.wait_queue_empty(WAIT));
    let stored = user_client(&a)
        .await
        .get(&mkey, None)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(stored).unwrap();
    let hashes: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("MessageHash: "))
        .collect();
    assert_eq!(hashes.len(), 200);
    assert_eq!(text.lines().filter(|l| *l == "NextMessage").count(), 199);
    assert_clean_tree(&store);
}

#[tokio::test]
async fn kill9_during_stores_loses_no_done_block() {
    let mut s = TestServer::start_with(Options::default().auth(&accounts()));
    let now = Utc::now();
    let blocks: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| compose::data_block(&payload(i, 2048), now))
        .collect();
    let blocks = Arc::new(blocks);
    let done = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let (blocks, done, addr) = (blocks.clone(), done.clone(), s.addr());
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = Client::connect(addr, Duration::from_secs(20)).await else {
                return;
            };
            for i in (conn..blocks.len()).step_by(8) {
                match c.store(&blocks[i].0, &blocks[i].1).await {
                    Ok(true) => done.lock().unwrap().push(i),
                    _ => return,
                }
            }
        }));
    }
    // Kill once a good part of the stream has been acknowledged (bounded wait).
    for _ in 0..2000 {
        if done.lock().unwrap().len() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = done.lock().unwrap().clone();
    assert!(acked.len() >= 150, "only {} acknowledged", acked.len());
    let left = storeherd::store::queued_uploads(s.home());
    eprintln!(
        "{} of 500 acknowledged before kill -9; {left} uploads left unsettled",
        acked.len()
    );
    s.restart();
    assert!(s.wait_queue_empty(WAIT));
    let mut c = user_client(&s).await;
    for &i in &acked {
        let got = c.get(&blocks[i].0, None).await.unwrap();
        assert_eq!(got.as_deref(), Some(&blocks[i].1[..]), "block {i} lost");
    }
    assert_clean_tree(&s.home().join("localstore"));
}

#[tokio::test]
async fn leftover_queue_files_are_processed_at_start_and_torn_ones_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let q = home.join("inputqueue");
    std::fs::create_dir_all(&q).unwrap();
    let (key, block) = compose::data_block(&payload(11, 3000), Utc::now());
    let content = queue_file("server", &key, &block);
    let name = storeherd::store::queue::name_of(&content);
    std::fs::write(q.join(&name), &content).unwrap();
    // Torn: its name is the sha1 of the full content, but only half was written.
    let (key2, block2) = compose::data_block(&payload(12, 3000), Utc::now());
    let full2 = queue_file("server", &key2, &block2);
    let name2 = storeherd::store::queue::name_of(&full2);
    std::fs::write(q.join(&name2), &full2[..full2.len() / 2]).unwrap();

    let s = TestServer::start_in(&home, Options::default().auth(&accounts()));
    assert!(s.wait_queue_empty(WAIT));
    let mut c = user_client(&s).await;
    assert_eq!(
        c.get(&key, None).await.unwrap().as_deref(),
        Some(&block[..])
    );
    assert_eq!(c.get(&key2, None).await.unwrap(), None);
    // The client, never told DONE, sends the block again (same queue-file name): stored now.
    let mut anon = s.client().await;
    assert!(anon.store(&key2, &block2).await.unwrap());
    assert!(s.wait_queue_empty(WAIT));
    assert_eq!(
        c.get(&key2, None).await.unwrap().as_deref(),
        Some(&block2[..])
    );
    assert!(s.log().contains("torn"));
}

/// A crash after `DONE` and before the worker settled: the journal holds the upload and its
/// replication copy, and neither the block nor the `sendqueue/` file exists. The next start
/// replays both (the copy's file is written from the journal, not assumed to have survived).
#[tokio::test]
async fn unsettled_journal_entries_are_replayed_at_start() {
    use storeherd::store::journal::{self, Journal, Kind};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (key, block) = compose::data_block(&payload(21, 3000), Utc::now());
    let input = queue_file("server", &key, &block);
    let copy = queue_file("replicate", &key, &block);
    {
        let jdir = home.join(journal::DIR_NAME);
        std::fs::create_dir_all(&jdir).unwrap();
        let (j, recovered) = Journal::open(&jdir).unwrap();
        assert!(recovered.is_empty());
        j.append_digested(&[
            (Kind::Input, journal::digest(&input), &input),
            (Kind::Send, journal::digest(&copy), &copy),
        ])
        .unwrap();
        // Dropped unsettled, as a crash leaves it.
    }
    assert_eq!(storeherd::store::queued_uploads(&home), 2);

    // A peer that is never there: the copy stays in sendqueue/ to be looked at.
    let peer = format!("127.0.0.1:{}", support::ports::port());
    let s = TestServer::start_in(
        &home,
        Options::default().auth(&accounts()).config(&[
            ("replpeer", peer.as_str()),
            ("repl_authkey", "KEYFORPEER12345"),
            ("run_queue_interval", "600"),
        ]),
    );
    assert!(s.wait_queue_empty(WAIT), "{}", s.log());
    let mut c = user_client(&s).await;
    assert_eq!(
        c.get(&key, None).await.unwrap().as_deref(),
        Some(&block[..])
    );
    let name = storeherd::store::queue::name_of(&copy);
    let file = home.join("sendqueue").join(&name);
    assert_eq!(std::fs::read(&file).unwrap(), copy, "{}", s.log());
    assert_clean_tree(&home.join("localstore"));
}
