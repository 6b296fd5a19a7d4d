//! The relay sender (docs/protocol.md §3.3, §10.4) between real `storeherd store` processes:
//! `STORE PROXY [AFTER]` uploads delivered to their `Post-To` targets, now or after the
//! embargo, `entangled` included; a target that is down, then up; a partial success that rewrites `Post-To`;
//! relay and replication through a real SOCKS5 server (Dante); bad queue files; and the
//! hand-off of a removed instance's proxy files under `storeherd up`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use storeherd::protocol::compose;
use storeherd::server::sendfile::{proxy_file, rewrite_post_to};
use storeherd::store::queue::name_of;
use storeherd::wire::Client;

use support::store::{accounts, Options, TestServer, ADMIN_KEY, REPL_KEY};
use support::up::Up;
use support::wait::With;
use support::{eventually, eventually_async, until_async};

/// A fast sender: runs every second, retries a failed target after a second.
const FAST: &[(&str, &str)] = &[
    ("run_queue_interval", "1"),
    ("retry_schedule", "0,1"),
    ("timeout", "5"),
];

fn target() -> TestServer {
    TestServer::start_with(Options::default().auth(&accounts()))
}

fn relay(extra: &[(&str, &str)]) -> TestServer {
    TestServer::start_with(Options::default().config(FAST).config(extra))
}

fn server(addr: SocketAddr) -> String {
    format!("server={addr}")
}

/// A data block, and the same block with `Post-To` lines for `targets` in front.
fn block(tag: &str, targets: &[String]) -> (String, Vec<u8>, Vec<u8>) {
    let (key, plain) = compose::data_block(tag.as_bytes(), Utc::now());
    let mut with = Vec::new();
    for t in targets {
        with.extend_from_slice(format!("Post-To: {t}\n").as_bytes());
    }
    with.extend_from_slice(&plain);
    (key, plain, with)
}

async fn upload(addr: SocketAddr, command: &str, block: &[u8]) -> String {
    let mut c = Client::connect(addr, Duration::from_secs(10))
        .await
        .unwrap();
    let reply = c.upload(command, block).await.unwrap();
    c.quit().await.unwrap();
    reply
}

/// The block under `key` at `addr`, read as administrator (data is hidden from anonymous).
async fn read_block(addr: SocketAddr, key: &str) -> Option<Vec<u8>> {
    let mut c = Client::connect(addr, Duration::from_secs(5)).await.ok()?;
    if !c.login("administrator", ADMIN_KEY).await.ok()? {
        return None;
    }
    c.get(key, None).await.ok()?
}

async fn wait_block(addr: SocketAddr, key: &str, within: Duration) -> Option<Vec<u8>> {
    until_async(within, || read_block(addr, key)).await.ok()
}

fn queue_dir(home: &Path) -> PathBuf {
    home.join("sendqueue")
}

fn queued(home: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(queue_dir(home).join(name)).ok()
}

fn queue_names(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(queue_dir(home))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 40)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    until_async(within, || std::future::ready(ok()))
        .await
        .is_ok()
}

fn format_dt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_now_and_only_after_the_embargo() {
    let a = target();
    let b = target();
    let r = relay(&[]);
    let (k1, plain1, up1) = block("now", &[server(a.addr()), server(b.addr())]);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {k1}"), &up1).await,
        "DONE"
    );
    let embargo = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(4);
    let (k2, plain2, up2) = block("later", &[server(a.addr())]);
    let cmd = format!("STORE PROXY {k2} AFTER {}", format_dt(embargo));
    assert_eq!(upload(r.addr(), &cmd, &up2).await, "DONE");

    // Queued in the original's proxy-file format, named by its sha1.
    let mut file = format!(
        "StoreType: proxy\nStoreKeyid: {k2}\nEmbargo: {}\n",
        format_dt(embargo)
    )
    .into_bytes();
    file.extend_from_slice(&up2);
    assert_eq!(queued(r.home(), &name_of(&file)), Some(file));

    assert_eq!(wait_block(a.addr(), &k1, WAIT).await, Some(plain1.clone()));
    assert_eq!(wait_block(b.addr(), &k1, WAIT).await, Some(plain1));

    let got = eventually_async(WAIT, "the embargoed block is delivered", || {
        read_block(a.addr(), &k2)
    })
    .await;
    let seen = Utc::now();
    assert!(
        seen >= embargo,
        "delivered before its embargo {embargo} (seen {seen})"
    );
    assert_eq!(got, plain2);
    assert!(
        wait_until(WAIT, || queue_names(r.home()).is_empty()).await,
        "{:?}",
        queue_names(r.home())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_rewrites_post_to_then_the_late_target_gets_it() {
    let a = target();
    let b_port = support::ports::port();
    let b_addr = SocketAddr::from(([127, 0, 0, 1], b_port));
    let r = relay(&[]);
    let (key, plain, up) = block("partial", &[server(a.addr()), server(b_addr)]);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {key}"), &up).await,
        "DONE"
    );
    let file = proxy_file(&key, None, &up);
    let name = name_of(&file);

    assert_eq!(wait_block(a.addr(), &key, WAIT).await, Some(plain.clone()));
    // Same name, `Post-To` naming only the target still owed, the rest byte for byte.
    let mut want =
        format!("StoreType: proxy\nStoreKeyid: {key}\nEmbargo: None\nPost-To: server={b_addr}\n")
            .into_bytes();
    want.extend_from_slice(&plain);
    assert_eq!(rewrite_post_to(&file, &[server(b_addr)]), want);
    assert!(
        wait_until(WAIT, || queued(r.home(), &name).as_deref()
            == Some(&want[..]))
        .await,
        "not rewritten: {:?}",
        queued(r.home(), &name).map(|c| String::from_utf8_lossy(&c).into_owned())
    );

    // The target was down from the start; once it is up, the sender's retry reaches it.
    let b = TestServer::start_with(Options::default().auth(&accounts()).port(b_port));
    assert_eq!(wait_block(b.addr(), &key, WAIT).await, Some(plain));
    assert!(wait_until(WAIT, || queue_names(r.home()).is_empty()).await);
    assert!(
        r.log().contains(&format!(
            "relay to server={b_addr} failed after 0 of 1 entries"
        )),
        "{}",
        r.log()
    );
}

/// `Post-To: entangled`: `STORE ENTANGLED` to the relay itself, as the original sends it to
/// its own port; GET ENTANGLED then serves it from the relay's entangled store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entangled_target_is_stored_by_this_server() {
    let r = TestServer::start_with(Options::default().config(FAST).auth(&accounts()));
    let (key, plain) = compose::dht_data_block(b"relayed into the entangled store", Utc::now());
    let mut up = b"Post-To: entangled\n".to_vec();
    up.extend_from_slice(&plain);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {key}"), &up).await,
        "DONE"
    );
    let what = With {
        what: "stored in the entangled store",
        more: || r.log(),
    };
    let (r, key) = (&r, &key);
    let got = eventually_async(WAIT, what, move || async move {
        let mut c = r.client().await;
        assert!(c.login("administrator", ADMIN_KEY).await.unwrap());
        c.send_line(&format!("GET ENTANGLED {key}")).await.unwrap();
        c.read_reply().await.unwrap().to_block_bytes()
    })
    .await;
    assert_eq!(got, plain);
    assert!(wait_until(WAIT, || queue_names(r.home()).is_empty()).await);
}

/// A Dante SOCKS5 server on a loopback port, logging every connection; killed (with its
/// children) on drop.
struct Dante {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dante {
    fn start() -> Dante {
        let dir = tempfile::tempdir().unwrap();
        let port = support::ports::port();
        let log = dir.path().join("danted.log");
        let conf = dir.path().join("danted.conf");
        std::fs::write(
            &conf,
            format!(
                "logoutput: {}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
                 socksmethod: none\nclientmethod: none\n\
                 user.privileged: root\nuser.unprivileged: nobody\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect error }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect error }}\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("danted")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path().join("danted.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("danted (Debian package dante-server, installed by .ci/run)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut d = Dante {
            child,
            addr,
            log,
            _dir: dir,
        };
        let log = d.log.clone();
        let what = With {
            what: "danted listens",
            more: || std::fs::read_to_string(&log).unwrap_or_default(),
        };
        eventually(Duration::from_secs(10), what, || {
            assert!(
                d.child.try_wait().unwrap().is_none(),
                "danted exited: {}",
                d.log()
            );
            std::net::TcpStream::connect(addr).is_ok()
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dante {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_replication_go_through_the_socks_proxy() {
    let dante = Dante::start();
    let a = target();
    let peer = target();
    let socks = dante.addr.to_string();
    let peer_addr = peer.addr().to_string();
    let r = relay(&[
        ("socks_proxy", &socks),
        ("replpeer", &peer_addr),
        ("repl_authkey", REPL_KEY),
    ]);
    let (k1, plain1, up1) = block("via socks", &[server(a.addr())]);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {k1}"), &up1).await,
        "DONE"
    );
    let (k2, plain2) = compose::data_block(b"replicated via socks", Utc::now());
    assert_eq!(
        upload(r.addr(), &format!("STORE SERVER {k2}"), &plain2).await,
        "DONE"
    );
    assert_eq!(wait_block(a.addr(), &k1, WAIT).await, Some(plain1));
    assert_eq!(wait_block(peer.addr(), &k2, WAIT).await, Some(plain2));
    // Dante logs each relayed connection with its destination as `127.0.0.1.<port>`.
    for port in [a.addr().port(), peer.addr().port()] {
        let dest = format!("127.0.0.1.{port}");
        assert!(
            wait_until(Duration::from_secs(10), || dante.log().contains(&dest)).await,
            "no SOCKS connection to {dest}: {}",
            dante.log()
        );
    }
}

/// A listener that greets like a store server, then answers every line with garbage.
struct Garbage {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Garbage {
    fn start() -> Garbage {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                n.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let mut w = tcp.try_clone().unwrap();
                let _ = w.write_all(b"CONFIDANT MAIL SERVER PROTOCOL 1 READY\r\n");
                let mut line = String::new();
                if BufReader::new(tcp).read_line(&mut line).is_ok() {
                    let _ = w.write_all(b"WHAT IS THIS\r\n");
                }
            }
        });
        Garbage {
            addr,
            connections,
            stop,
        }
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queue_files_are_logged_kept_and_skipped() {
    let a = target();
    let garbage = Garbage::start();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(queue_dir(&home)).unwrap();
    let put = |content: &[u8]| {
        let name = name_of(content);
        std::fs::write(queue_dir(&home).join(&name), content).unwrap();
        name
    };
    let (k_bad, _, up_bad) = block("bad post-to", &["nowhere".into()]);
    let bad_post_to = proxy_file(&k_bad, None, &up_bad);
    let bad_name = put(&bad_post_to);
    let no_date = proxy_file(
        "00112233445566778899AABBCCDDEEFF00112233",
        None,
        format!(
            "Post-To: {}\nType: data\nVersion: 1\nData: 3\nabc",
            server(a.addr())
        )
        .as_bytes(),
    );
    let no_date_name = put(&no_date);
    let (k_g, plain_g, up_g) = block("garbage", &[server(garbage.addr), server(a.addr())]);
    let garbage_file = proxy_file(&k_g, None, &up_g);
    let garbage_name = put(&garbage_file);
    let (k_ok, plain_ok, up_ok) = block("fine", &[server(a.addr())]);
    put(&proxy_file(&k_ok, None, &up_ok));

    let r = TestServer::start_in(&home, Options::default().config(FAST));
    assert_eq!(wait_block(a.addr(), &k_ok, WAIT).await, Some(plain_ok));
    assert_eq!(wait_block(a.addr(), &k_g, WAIT).await, Some(plain_g));
    // The garbage target is tried, refused, and stays owed.
    let owed = rewrite_post_to(&garbage_file, &[server(garbage.addr)]);
    assert!(
        wait_until(WAIT, || queued(&home, &garbage_name).as_deref()
            == Some(&owed[..]))
        .await,
        "{}",
        r.log()
    );
    // Tried after the other target or before it: wait for the attempt and its log line.
    assert!(
        wait_until(WAIT, || garbage.connections.load(Ordering::Relaxed) >= 1
            && r.log().contains("WHAT IS THIS"))
        .await,
        "{}",
        r.log()
    );
    // No date: sent anyway (the target decides), with a warning.
    assert!(wait_until(WAIT, || queued(&home, &no_date_name).is_none()).await);
    assert!(
        r.log()
            .contains(&format!("{no_date_name}: no valid `Date:`")),
        "{}",
        r.log()
    );
    // A bad target: logged once, never tried, the file kept as it was.
    assert_eq!(queued(&home, &bad_name), Some(bad_post_to));
    assert_eq!(
        r.log()
            .matches(&format!("{bad_name}: bad `Post-To:`"))
            .count(),
        1,
        "{}",
        r.log()
    );

    // The sender is still alive: a new upload goes out.
    let (k_new, plain_new, up_new) = block("after all that", &[server(a.addr())]);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {k_new}"), &up_new).await,
        "DONE"
    );
    assert_eq!(wait_block(a.addr(), &k_new, WAIT).await, Some(plain_new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_requires_login() {
    let r = TestServer::start_with(
        Options::default()
            .config(FAST)
            .config(&[("proxy_requires_login", "true")])
            .auth(&accounts()),
    );
    let (key, _, up) = block("login first", &["server=127.0.0.1:9".into()]);
    assert_eq!(
        upload(r.addr(), &format!("STORE PROXY {key}"), &up).await,
        "FAILED"
    );
    assert!(queue_names(r.home()).is_empty());
    let mut c = r.client().await;
    assert!(c
        .login(support::store::USER, support::store::USER_KEY)
        .await
        .unwrap());
    // Forbidden headers and empty blocks are refused as on every STORE (docs/protocol.md §4.1).
    let mut forbidden = b"Embargo: 2026-01-01T00:00:00Z\n".to_vec();
    forbidden.extend_from_slice(&up);
    assert_eq!(
        c.upload(&format!("STORE PROXY {key}"), &forbidden)
            .await
            .unwrap(),
        "FAILED"
    );
    assert_eq!(
        c.upload(&format!("STORE PROXY {key}"), b"").await.unwrap(),
        "FAILED"
    );
    assert_eq!(
        c.upload(&format!("STORE PROXY {key}"), &up).await.unwrap(),
        "DONE"
    );
    assert_eq!(
        queue_names(r.home()),
        vec![name_of(&proxy_file(&key, None, &up))]
    );
}

#[test]
fn removed_instance_hands_its_proxy_files_over() {
    let mut up = Up::start(
        2,
        "server:\n  config: { run_queue_interval: 1, retry_schedule: [0, 1], timeout: 5 }\n",
    );
    up.wait_ready(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t_port = support::ports::port();
    let t_addr = SocketAddr::from(([127, 0, 0, 1], t_port));
    let second = SocketAddr::from(([127, 0, 0, 1], up.sport + 1));
    let (key, plain, with) = block("handed over", &[server(t_addr)]);
    let reply = rt.block_on(upload(second, &format!("STORE PROXY {key}"), &with));
    assert_eq!(reply, "DONE");
    let name = name_of(&proxy_file(&key, None, &with));
    let home1 = up.data().join("homes/1");
    let home2 = up.data().join("homes/2");
    assert!(queued(&home2, &name).is_some());

    let out = up.ctl(&["remove", "2"]);
    support::succeeded(&out);
    let moved = rt.block_on(wait_until(WAIT, || {
        queued(&home1, &name).is_some() && queued(&home2, &name).is_none()
    }));
    assert!(moved, "not handed over: {}", up.log());

    let t = rt.block_on(async {
        let t = TestServer::start_with(Options::default().auth(&accounts()).port(t_port));
        assert_eq!(wait_block(t.addr(), &key, WAIT).await, Some(plain));
        t
    });
    assert!(rt.block_on(wait_until(WAIT, || queued(&home1, &name).is_none())));
    drop(t);
    up.terminate(Duration::from_secs(10));
}
