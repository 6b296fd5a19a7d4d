//! Replication (docs/protocol.md §10) between real `storeherd store` processes, and two sites of
//! `storeherd up` replicating to each other: on loopback, after a stop, and across a network
//! cut between two network namespaces.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use storeherd::protocol::compose;
use storeherd::server::identity::Identity;
use storeherd::wire::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use support::sites::{ready, wait_file, TwoSites};
use support::store::{accounts, Options, TestServer, ADMIN_KEY, REPL_KEY};
use support::up::{Ports, Up};
use support::{eventually, eventually_async, until_async};

/// The two-site tests start many processes: one at a time on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// (a) The wire, against a recording peer and a real receiver
// ---------------------------------------------------------------------------------------------

/// What the recording peer saw: the plaintext before TLS, the bytes inside TLS, the TLS
/// version.
struct Recorded {
    plain: Vec<u8>,
    encrypted: Vec<u8>,
    version: Option<rustls::ProtocolVersion>,
}

/// Plays the peer of §10.4's observed session for one connection: READY, PROCEED, TLS,
/// ENCRYPTED, DONE to LOGIN, REPLICATE and REPLOGIN, GOODBYE to QUIT.
/// With `fail_first`, the first REPLICATE is answered `FAILED`.
async fn recording_peer(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    fail_first: bool,
) -> Recorded {
    let mut failed_one = !fail_first;
    let (mut tcp, _) = listener.accept().await.unwrap();
    tcp.write_all(b"CONFIDANT MAIL SERVER PROTOCOL 1 READY\r\n")
        .await
        .unwrap();
    let mut plain = Vec::new();
    // Byte by byte, so that nothing of the TLS handshake is read as plaintext.
    while !plain.ends_with(b"\r\n") {
        let b = tcp.read_u8().await.unwrap();
        plain.push(b);
    }
    tcp.write_all(b"PROCEED\r\n").await.unwrap();
    let tls = acceptor.accept(tcp).await.unwrap();
    let version = tls.get_ref().1.protocol_version();
    let mut r = BufReader::new(tls);
    r.get_mut().write_all(b"ENCRYPTED\r\n").await.unwrap();
    let mut encrypted = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await.unwrap() == 0 {
            break;
        }
        encrypted.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).to_string();
        let reply: &[u8] = if text.starts_with("REPLICATE ") {
            // The block: lines up to EndBlock, or a Data: n line and n raw bytes.
            loop {
                let mut l = Vec::new();
                r.read_until(b'\n', &mut l).await.unwrap();
                encrypted.extend_from_slice(&l);
                let t = String::from_utf8_lossy(&l).trim_end().to_string();
                if t == "EndBlock" {
                    break;
                }
                if let Some(n) = storeherd::wire::data_line_len(&t) {
                    let mut p = vec![0u8; n];
                    r.read_exact(&mut p).await.unwrap();
                    encrypted.extend_from_slice(&p);
                    break;
                }
            }
            if failed_one {
                b"DONE\r\n"
            } else {
                failed_one = true;
                b"FAILED\r\n"
            }
        } else if text == "QUIT\r\n" {
            r.get_mut().write_all(b"GOODBYE\r\n").await.unwrap();
            break;
        } else {
            b"DONE\r\n"
        };
        r.get_mut().write_all(reply).await.unwrap();
    }
    Recorded {
        plain,
        encrypted,
        version,
    }
}

fn tls_identity(dir: &Path) -> (tokio_rustls::TlsAcceptor, String) {
    let id = Identity::generate("replication-peer").unwrap();
    id.install(dir).unwrap();
    let der = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (acceptor, _) = storeherd::server::tls::load(dir).unwrap();
    (acceptor, storeherd::wire::cert_sha1(der.as_ref()))
}

fn sendqueue_files(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("sendqueue"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_speaks_the_original_wire() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, pin) = tls_identity(&dir.path().join("peer-ssl"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(recording_peer(listener, acceptor, false));
    let peer_s = peer_addr.to_string();
    // A long interval: the only run is the one started when the storing session closes.
    let a = TestServer::start_with(Options::default().auth(&accounts()).config(&[
        ("replpeer", peer_s.as_str()),
        ("repl_authkey", "KEYFORPEER12345"),
        ("repl_cert", pin.as_str()),
        ("run_queue_interval", "600"),
        ("timeout", "10"),
    ]));

    let payload = b"hello, replica!";
    let (key, block) = compose::data_block(payload, Utc::now());
    let mut c = a.client().await;
    assert!(c.store(&key, &block).await.unwrap());
    // In sendqueue/ before DONE (durable in the input journal), named by the sha1 of its
    // content (§10.1).
    let mut expected_file =
        format!("StoreType: replicate\nStoreKeyid: {key}\nLoginUser: none\n").into_bytes();
    expected_file.extend_from_slice(&block);
    let files = sendqueue_files(a.home());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), expected_file);
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        storeherd::store::queue::name_of(&expected_file)
    );
    assert!(c.login("administrator", ADMIN_KEY).await.unwrap());
    assert!(c
        .simple("ADDLOGIN USERXXXX11112222 KEYXXXX111122223333")
        .await
        .unwrap());
    c.quit().await.unwrap();

    let rec = tokio::time::timeout(Duration::from_secs(30), peer)
        .await
        .unwrap_or_else(|_| panic!("the sender never finished a session:\n{}", a.log()))
        .unwrap();
    assert_eq!(rec.plain, b"STARTTLS\r\n");
    assert_eq!(rec.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let mut want =
        format!("LOGIN replication KEYFORPEER12345\r\nREPLICATE {key} none\r\n").into_bytes();
    for l in block.split(|&b| b == b'\n').take(5) {
        want.extend_from_slice(l);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(payload);
    want.extend_from_slice(b"REPLOGIN USERXXXX11112222 KEYXXXX111122223333\r\nQUIT\r\n");
    assert_eq!(
        String::from_utf8_lossy(&rec.encrypted),
        String::from_utf8_lossy(&want)
    );
    // Each file is deleted after the peer's DONE.
    let left = until_async(Duration::from_secs(10), || {
        std::future::ready(sendqueue_files(a.home()).is_empty())
    });
    let _ = left.await;
    assert!(sendqueue_files(a.home()).is_empty());
}

/// An entry the peer refuses waits out its own back-off; the entries after it still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_does_not_hold_back_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, _) = tls_identity(&dir.path().join("peer-ssl"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_s = listener.local_addr().unwrap().to_string();
    let peer = tokio::spawn(recording_peer(listener, acceptor, true));
    let a = TestServer::start_with(Options::default().config(&[
        ("replpeer", peer_s.as_str()),
        ("repl_authkey", "KEYFORPEER12345"),
        ("run_queue_interval", "600"),
        ("retry_schedule", "0,600"),
    ]));
    let (k1, b1) = compose::data_block(b"refused by the peer", Utc::now());
    let (k2, b2) = compose::data_block(b"accepted by the peer", Utc::now());
    let mut c = a.client().await;
    assert!(c.store(&k1, &b1).await.unwrap());
    assert!(c.store(&k2, &b2).await.unwrap());
    c.quit().await.unwrap();
    let rec = tokio::time::timeout(Duration::from_secs(30), peer)
        .await
        .unwrap_or_else(|_| panic!("the sender never finished a session:\n{}", a.log()))
        .unwrap();
    let text = String::from_utf8_lossy(&rec.encrypted).to_string();
    let first = text.find(&format!("REPLICATE {k1} none")).expect(&text);
    let second = text.find(&format!("REPLICATE {k2} none")).expect(&text);
    assert!(first < second && text.ends_with("QUIT\r\n"), "{text}");
    // Only the refused entry is left, for a later run.
    let settled = until_async(Duration::from_secs(10), || {
        std::future::ready(sendqueue_files(a.home()).len() == 1)
    });
    let _ = settled.await;
    let left = sendqueue_files(a.home());
    assert_eq!(left.len(), 1);
    let content = std::fs::read_to_string(&left[0]).unwrap();
    assert!(
        content.contains(&format!("StoreKeyid: {k1}\n")),
        "{content}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_takes_replicate_only_after_login_replication() {
    // B has a peer of its own (nobody listens there): nothing B receives by replication may
    // be queued for it.
    let nowhere = format!("127.0.0.1:{}", support::ports::port());
    let b = TestServer::start_with(
        Options::default()
            .auth(&accounts())
            .config(&[("replpeer", nowhere.as_str())]),
    );
    let (key, block) = compose::data_block(b"replicated block", Utc::now());
    let mut c = b.client().await;
    let r = c
        .upload(&format!("REPLICATE {key} none"), &block)
        .await
        .unwrap();
    assert_eq!(r, "FAILED");
    let mut c = c.starttls(None).await.unwrap();
    assert!(c.login("replication", REPL_KEY).await.unwrap());
    let r = c
        .upload(&format!("REPLICATE {key} none"), &block)
        .await
        .unwrap();
    assert_eq!(r, "DONE");
    assert!(c
        .simple("REPLOGIN USERXXXX11112222 KEYXXXX111122223333")
        .await
        .unwrap());
    c.quit().await.unwrap();
    assert!(b.wait_queue_empty(Duration::from_secs(20)));
    let mut admin = b.client().await;
    assert!(admin.login("administrator", ADMIN_KEY).await.unwrap());
    assert_eq!(admin.get(&key, None).await.unwrap(), Some(block));
    let auth = std::fs::read_to_string(b.home().join("auth.txt")).unwrap();
    assert!(
        auth.contains("\nUSERXXXX11112222 KEYXXXX111122223333 "),
        "{auth}"
    );
    assert!(sendqueue_files(b.home()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_sends_nothing_and_keeps_the_queue() {
    let b = TestServer::start_with(Options::default().auth(&accounts()));
    let peer = b.addr().to_string();
    let a = TestServer::start_with(Options::default().config(&[
        ("replpeer", peer.as_str()),
        ("repl_authkey", REPL_KEY),
        (
            "repl_cert",
            "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33",
        ),
        ("run_queue_interval", "1"),
        ("retry_schedule", "0,1"),
    ]));
    let (key, block) = compose::data_block(b"pinned away", Utc::now());
    let mut c = a.client().await;
    assert!(c.store(&key, &block).await.unwrap());
    c.quit().await.unwrap();
    let logged = until_async(Duration::from_secs(20), || {
        std::future::ready(a.log().contains("not the pinned repl_cert"))
    });
    let _ = logged.await;
    assert!(a.log().contains("not the pinned repl_cert"), "{}", a.log());
    assert_eq!(sendqueue_files(a.home()).len(), 1);
    let mut g = b.client().await;
    assert!(g.login("administrator", ADMIN_KEY).await.unwrap());
    assert_eq!(g.get(&key, None).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Two sites of `storeherd up`
// ---------------------------------------------------------------------------------------------

fn blocks(tag: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| compose::data_block(format!("{tag} block {i}").as_bytes(), Utc::now()))
        .collect()
}

async fn store_all(addr: SocketAddr, blocks: &[(String, Vec<u8>)]) {
    let mut c = Client::connect(addr, Duration::from_secs(10))
        .await
        .unwrap();
    for (key, block) in blocks {
        assert!(c.store(key, block).await.unwrap(), "STORE {key} failed");
    }
    c.quit().await.unwrap();
}

/// Polls `addr` (as administrator) until every block is readable there; returns the time
/// it took, or the keys still missing at `within`.
async fn wait_readable(
    addr: SocketAddr,
    admin_key: &str,
    blocks: &[(String, Vec<u8>)],
    within: Duration,
) -> Result<Duration, Vec<String>> {
    let start = Instant::now();
    let missing = std::cell::RefCell::new(blocks.iter().collect::<Vec<_>>());
    let done = until_async(within, || async {
        if let Ok(mut c) = Client::connect(addr, Duration::from_secs(5)).await {
            if c.login("administrator", admin_key).await.unwrap_or(false) {
                let mut still = Vec::new();
                for b in missing.take() {
                    match c.get(&b.0, None).await {
                        Ok(Some(got)) => assert_eq!(got, b.1, "block {} differs", b.0),
                        _ => still.push(b),
                    }
                }
                missing.replace(still);
            }
        }
        missing.borrow().is_empty()
    })
    .await;
    match done {
        Ok(()) => Ok(start.elapsed()),
        Err(_) => Err(missing.take().iter().map(|b| b.0.clone()).collect()),
    }
}

#[test]
fn two_sites_replicate_both_ways() {
    let _g = serial();
    // Held outside the runtime that runs the body.
    support::runtime().block_on(two_sites_body());
}

async fn two_sites_body() {
    let s = TwoSites::on_loopback();

    let to_b = blocks("a-to-b", 4);
    store_all(s.a.listen, &to_b).await;
    let t = wait_readable(s.b.listen, &s.b.admin_key(), &to_b, Duration::from_secs(30))
        .await
        .unwrap_or_else(|m| panic!("not on site b: {m:?}\n{}\n{}", s.a.log(), s.b.log()));
    println!("4 blocks stored on site a were readable on site b after {t:?}");

    let to_a = blocks("b-to-a", 4);
    store_all(s.b.listen, &to_a).await;
    let t = wait_readable(s.a.listen, &s.a.admin_key(), &to_a, Duration::from_secs(30))
        .await
        .unwrap_or_else(|m| panic!("not on site a: {m:?}\n{}\n{}", s.a.log(), s.b.log()));
    println!("4 blocks stored on site b were readable on site a after {t:?}");

    // An account added on a site reaches the other site's instances by REPLOGIN.
    let mut c = s.a.admin_session(s.a.listen).await;
    assert!(c
        .simple("ADDLOGIN USERXXXX11112222 KEYXXXX111122223333")
        .await
        .unwrap());
    c.quit().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the REPLOGIN reaches site b",
        || {
            (1..=2).any(|k| {
                std::fs::read_to_string(s.b.data().join(format!("homes/{k}/auth.txt")))
                    .unwrap_or_default()
                    .contains("\nUSERXXXX11112222 KEYXXXX111122223333 ")
            })
        },
    );

    // `storeherd accounts add` on site a reaches every instance of both sites: site a's
    // supervisor fans it out locally, each pair replicates it, and site b's supervisor
    // spreads what arrived by REPLOGIN to its other instances.
    let (user, key) = ("USERYYYY33334444", "KEYYYYY555566667777");
    let out = s.a.ctl(&["accounts", "add", user, key]);
    support::succeeded(&out);
    for up in [&s.a, &s.b] {
        wait_login_everywhere(up, user, key, true).await;
    }
    // `accounts rm` disables it everywhere.
    let out = s.a.ctl(&["accounts", "rm", key]);
    support::succeeded(&out);
    for up in [&s.a, &s.b] {
        wait_login_everywhere(up, user, key, false).await;
    }
}

/// Waits (bounded) until `LOGIN user key` answers `works` on both instances of a site.
async fn wait_login_everywhere(up: &Up, user: &str, key: &str, works: bool) {
    for k in 0..2u16 {
        let addr: SocketAddr = format!("127.0.0.1:{}", up.sport + k).parse().unwrap();
        let what = format!(
            "LOGIN {user} on {addr} answers {}",
            if works { "DONE" } else { "FAILED" }
        );
        eventually_async(Duration::from_secs(30), up.with_log(&what), || async {
            let mut c = storeherd::wire::Client::connect(addr, Duration::from_secs(5))
                .await
                .unwrap();
            c.login(user, key).await.unwrap() == works
        })
        .await;
    }
}

#[test]
fn backlog_reaches_a_site_that_was_stopped() {
    let _g = serial();
    // Held outside the runtime that runs the body.
    support::runtime().block_on(backlog_after_stop_body());
}

async fn backlog_after_stop_body() {
    let mut s = TwoSites::on_loopback();
    let admin_b = s.b.admin_key();

    assert!(
        s.b.terminate(Duration::from_secs(20)).is_some(),
        "site b did not stop"
    );
    let backlog = blocks("backlog-stop", 100);
    store_all(s.a.listen, &backlog).await;
    // Let every sender of site a fail at least once: the back-off (60 s) is now running.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restarted = Instant::now();
    s.b.respawn();
    ready(&mut s.b);
    let ready_after = restarted.elapsed();
    let t = wait_readable(s.b.listen, &admin_b, &backlog, Duration::from_secs(60))
        .await
        .unwrap_or_else(|m| {
            panic!(
                "{} blocks never reached site b\n{}\n{}",
                m.len(),
                s.a.log(),
                s.b.log()
            )
        });
    // Only the reachability probe can end site a's 60 s back-off this early.
    let logs: String = (1..=2)
        .map(|k| {
            std::fs::read_to_string(s.a.data().join(format!("homes/{k}/server.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(logs.contains("replication run failed"), "{logs}");
    assert!(logs.contains("replication peer answers again"), "{logs}");
    println!(
        "backlog of 100 blocks: site b ready {ready_after:?} after restart, all 100 readable there {t:?} later ({:?} after restart)",
        restarted.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// (d) A network cut between two namespaces
// ---------------------------------------------------------------------------------------------

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair, deleted on drop.
struct Netns {
    names: [String; 2],
    links: [String; 2],
}

const NET_A: &str = "10.213.77.1";
const NET_B: &str = "10.213.77.2";

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let n = Netns {
            names: [format!("shrA{id}"), format!("shrB{id}")],
            links: [format!("shvA{id}"), format!("shvB{id}")],
        };
        ip(&["netns", "add", &n.names[0]])?;
        ip(&["netns", "add", &n.names[1]])?;
        ip(&[
            "link",
            "add",
            &n.links[0],
            "type",
            "veth",
            "peer",
            "name",
            &n.links[1],
        ])?;
        for i in 0..2 {
            let addr = [NET_A, NET_B][i];
            ip(&["link", "set", &n.links[i], "netns", &n.names[i]])?;
            n.exec(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &n.links[i],
                ],
            )?;
            n.exec(i, &["ip", "link", "set", &n.links[i], "up"])?;
            n.exec(i, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    fn prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.names[i].clone(),
        ]
    }

    fn exec(&self, i: usize, argv: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.names[i]];
        args.extend_from_slice(argv);
        ip(&args)
    }

    /// Runs this test binary's `netns_helper` inside namespace `i`.
    fn helper(&self, i: usize, env: &[(&str, String)]) -> String {
        let exe = std::env::current_exe().unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(exe).args([
            "--exact",
            "netns_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "helper failed in {}: {stdout}\n{}",
            self.names[i],
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
        let _ = ip(&["link", "del", &self.links[0]]);
    }
}

/// Not a test: the client side of `backlog_crosses_a_network_cut`, run by it inside a
/// network namespace (`ip netns exec NS <this binary> --exact netns_helper --ignored`).
/// `REPL_HELPER=store` stores blocks `REPL_TAG` 0..`REPL_N` at `REPL_ADDR`;
/// `REPL_HELPER=wait` waits until they are all readable there with `REPL_ADMIN_KEY`.
#[tokio::test]
#[ignore = "helper run by backlog_crosses_a_network_cut inside a namespace"]
async fn netns_helper() {
    let Ok(action) = std::env::var("REPL_HELPER") else {
        return;
    };
    let addr: SocketAddr = std::env::var("REPL_ADDR").unwrap().parse().unwrap();
    let tag = std::env::var("REPL_TAG").unwrap();
    let n: usize = std::env::var("REPL_N").unwrap().parse().unwrap();
    // Blocks are rebuilt from the tag: the date must be the same in both helpers.
    let date = chrono::DateTime::parse_from_rfc3339(&std::env::var("REPL_DATE").unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let bl: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| compose::data_block(format!("{tag} block {i}").as_bytes(), date))
        .collect();
    // The public port answers once the site's instances are ready.
    let what = format!("{addr} becomes ready");
    eventually_async(Duration::from_secs(60), what, || async {
        match Client::connect(addr, Duration::from_secs(2)).await {
            Ok(mut c) => c.selftest().await.is_ok_and(|l| l == ["PASS"]),
            Err(_) => false,
        }
    })
    .await;
    match action.as_str() {
        "store" => store_all(addr, &bl).await,
        "wait" => {
            let key = std::env::var("REPL_ADMIN_KEY").unwrap();
            match wait_readable(addr, &key, &bl, Duration::from_secs(90)).await {
                Ok(t) => println!("HELPER all {n} readable after {:.3}s", t.as_secs_f64()),
                Err(m) => panic!("{} of {n} blocks missing", m.len()),
            }
        }
        other => panic!("unknown helper action {other}"),
    }
}

#[test]
fn backlog_crosses_a_network_cut() {
    let _g = serial();
    let net = match Netns::create() {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED backlog_crosses_a_network_cut: cannot create network namespaces and a veth pair (needs root and iproute2): {e}");
            return;
        }
    };
    // Inside the namespaces every port is free; the public and admin listeners are on each
    // namespace's own loopback, the instances on the veth addresses.
    let ports = |base: u16| Ports {
        listen: format!("127.0.0.1:{base}").parse().unwrap(),
        admin: format!("127.0.0.1:{}", base + 1).parse().unwrap(),
        sport: base + 100,
        eport: base + 200,
    };
    let mut s = TwoSites::start(
        [NET_A, NET_B],
        [ports(18000), ports(19000)],
        [net.prefix(0), net.prefix(1)],
    );
    let date = format_date();
    let env = |action: &str, addr: SocketAddr, tag: &str, n: usize, key: &str| {
        vec![
            ("REPL_HELPER", action.to_string()),
            ("REPL_ADDR", addr.to_string()),
            ("REPL_TAG", tag.to_string()),
            ("REPL_N", n.to_string()),
            ("REPL_DATE", date.clone()),
            ("REPL_ADMIN_KEY", key.to_string()),
        ]
    };
    let key_b = wait_file(&s.b.data().join("admin.key"));
    // The pair works before the cut.
    net.helper(0, &env("store", s.a.listen, "before-cut", 2, ""));
    net.helper(1, &env("wait", s.b.listen, "before-cut", 2, &key_b));

    net.exec(0, &["ip", "link", "set", &net.links[0], "down"])
        .unwrap();
    net.helper(0, &env("store", s.a.listen, "across-cut", 100, ""));
    // Every sender of site a fails at least once while the link is down.
    std::thread::sleep(Duration::from_secs(3));
    let healed = Instant::now();
    net.exec(0, &["ip", "link", "set", &net.links[0], "up"])
        .unwrap();
    let out = net.helper(1, &env("wait", s.b.listen, "across-cut", 100, &key_b));
    // libtest prints `test netns_helper ... ` before the helper's own output.
    let line = out
        .lines()
        .find_map(|l| l.split_once("HELPER ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no result line from the helper: {out}"));
    let logs: String = (1..=2)
        .map(|k| {
            std::fs::read_to_string(s.a.data().join(format!("homes/{k}/server.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(logs.contains("replication run failed"), "{logs}");
    assert!(logs.contains("replication peer answers again"), "{logs}");
    println!(
        "network cut: 100 blocks queued on site a during the cut; on site b {line} of waiting; {:?} after the link came back",
        healed.elapsed()
    );
    let _ = s.a.terminate(Duration::from_secs(20));
    let _ = s.b.terminate(Duration::from_secs(20));
}

fn format_date() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// deploy/two-site/storeherd.yaml, checked for each site: instance k pairs with the other
/// site's instance k, listens on its own site's host, and shares the key file.
#[test]
fn two_site_example_pairs_instance_k_with_instance_k() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/two-site/storeherd.yaml");
    let dir = tempfile::tempdir().unwrap();
    // System paths moved under the temporary directory, so that the check does not depend
    // on who runs it.
    let body = std::fs::read_to_string(&src)
        .unwrap()
        .replace(" /var/lib/", &format!(" {}/var/lib/", dir.path().display()));
    let file = dir.path().join("storeherd.yaml");
    std::fs::write(&file, body).unwrap();
    for (site, own, peer) in [("a", "10.0.0.1", "10.0.0.2"), ("b", "10.0.0.2", "10.0.0.1")] {
        let out = Command::new(support::BIN)
            .args([
                "check",
                "-f",
                file.to_str().unwrap(),
                "--site",
                site,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "site {site}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let instances = doc["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 4);
        for (k, inst) in instances.iter().enumerate() {
            let port = 18101 + k;
            assert_eq!(inst["replpeer"], format!("{peer}:{port}"), "site {site}");
            let config: Vec<&str> = inst["config"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            assert!(config.contains(&format!("listen_address: {own}").as_str()));
            assert!(config.contains(&format!("replpeer: {peer}:{port}").as_str()));
            assert!(config.iter().any(|l| l.starts_with("repl_authkey: ")));
        }
    }
}
