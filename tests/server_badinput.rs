//! Bad input: garbage and binary lines, oversized payloads and lines, a payload that never
//! arrives, hostile keys, and 1,000 connections at once. Each gets a documented reply or a
//! close; the server never crashes or hangs, and writes nothing outside its store.

mod support;

use std::time::Duration;

use chrono::Utc;
use storeherd::protocol::compose;
use support::store::{accounts, Options, Raw, TestServer, USER, USER_KEY};

fn alive(s: &TestServer) {
    assert_eq!(s.raw().cmd("PING"), "PONG", "server log:\n{}", s.log());
}

#[test]
fn garbage_and_binary_lines() {
    let s = TestServer::start(&[]);
    let mut c = s.raw();
    c.send(b"\x00\x01\x02\xff\xfe\r\n");
    assert_eq!(c.line().unwrap(), "INVALID COMMAND");
    c.send(b"GET SERVER \xc3\xa9\xc3\xa9\r\n");
    assert_eq!(c.line().unwrap(), "INVALID COMMAND");
    c.send(b"\x1b[2J\tSTORE\rSERVER\r\n");
    assert_eq!(c.line().unwrap(), "INVALID COMMAND");
    assert!(c.closed());
    // Binary header lines and payloads inside a block are data, not commands.
    let mut d = s.raw();
    let k = "0123456789ABCDEF0123456789ABCDEF01234567";
    d.send(format!("STORE SERVER {k}\r\n").as_bytes());
    d.send(b"\x00\xff junk\r\nData: 4\r\n\r\n\x00\xff");
    assert_eq!(d.line().unwrap(), "DONE");
    assert!(s.wait_queue_empty(Duration::from_secs(30)));
    alive(&s);
}

#[test]
fn data_over_the_limit_is_accepted_then_dropped() {
    let s = TestServer::start_with(Options::default().auth(&accounts()));
    let payload = vec![b'z'; 8 * 1024 * 1024 + 1];
    let (key, block) = compose::data_block(&payload, Utc::now());
    let mut c = s.raw();
    assert_eq!(c.cmd(&format!("LOGIN {USER} {USER_KEY}")), "DONE");
    c.send(format!("STORE SERVER {key}\r\n").as_bytes());
    let (lines, p) = storeherd::wire::split_block(&block).unwrap();
    for l in lines {
        c.send_line(&l);
    }
    c.send(p.unwrap());
    assert_eq!(c.line().unwrap(), "DONE");
    assert!(s.wait_queue_empty(Duration::from_secs(60)));
    assert_eq!(c.cmd(&format!("GET SERVER {key}")), "NOT FOUND");
    alive(&s);
}

#[test]
fn payload_that_never_arrives_times_out() {
    let s = TestServer::start(&[("timeout", "1")]);
    let mut c = s.raw();
    c.send(b"STORE SERVER 0123456789ABCDEF0123456789ABCDEF01234567\r\nData: 100\r\nabc");
    let t = std::time::Instant::now();
    assert!(c.closed(), "idle session not closed");
    assert!(t.elapsed() < Duration::from_secs(15));
    // An idle session in command state is closed the same way.
    let mut d = s.raw();
    assert!(d.closed());
    assert!(s.wait_queue_empty(Duration::from_secs(5)));
    alive(&s);
}

#[test]
fn hostile_keys_touch_nothing_outside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = TestServer::start_in(&home, Options::default().auth(&accounts()));
    let mut c = s.raw();
    for k in [
        "../../../../../../../../../../../../etc/x",
        "0123456789ABCDEF0123456789ABCDEF0123456/",
        "0123456789abcdef0123456789abcdef0123456g",
        "..%2F..%2F0123456789ABCDEF0123456789ABCD",
        "0123456789ABCDEF0123456789ABCDEF01234567 ",
        "0123456789ABCDEF0123456789ABCDEF012345678",
    ] {
        assert_eq!(c.cmd(&format!("GET SERVER {k}")), "INVALID COMMAND", "{k}");
        assert_eq!(c.cmd("PING"), "PONG");
        c.send_line(&format!("STORE SERVER {k}"));
        assert_eq!(c.line().unwrap(), "INVALID COMMAND");
        assert_eq!(c.cmd("PING"), "PONG");
        assert_ne!(c.cmd(&format!("LOGIN {k} {k}")), "DONE");
        assert_eq!(c.cmd("PING"), "PONG");
    }
    // Nothing was created beside the home.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["home"]);
    let top: std::collections::BTreeSet<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for n in &top {
        assert!(
            [
                "ssl",
                "config.txt",
                "auth.txt",
                "server.log",
                "gpgtemp",
                "localstore",
                "inputqueue",
                "sendqueue",
                "journal",
                "entangled",
                "dht.state",
                "store-inflight.txt"
            ]
            .contains(&n.as_str()),
            "unexpected {n}"
        );
    }
    assert_eq!(
        std::fs::read_dir(home.join("localstore")).unwrap().count(),
        0
    );
}

#[test]
fn a_one_mebibyte_line_closes_silently() {
    let s = TestServer::start(&[]);
    let mut c = s.raw();
    let mut line = vec![b'A'; 1 << 20];
    line.extend_from_slice(b"\r\n");
    // The server may close before reading it all; a write error is fine too.
    let _ = std::io::Write::write_all(&mut c_writer(&c), &line);
    assert!(c.closed() || c.line().is_none());
    // Inside a block as well.
    let mut d = s.raw();
    d.send(b"STORE SERVER 0123456789ABCDEF0123456789ABCDEF01234567\r\n");
    let _ = std::io::Write::write_all(&mut c_writer(&d), &line);
    assert!(d.line().is_none());
    alive(&s);
}

fn c_writer(c: &Raw) -> std::net::TcpStream {
    c.stream().try_clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once() {
    for max in ["20", "5000"] {
        let s = TestServer::start(&[("max_connections", max)]);
        let addr = s.addr();
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            tasks.push(tokio::spawn(async move {
                let r = storeherd::wire::Client::connect_any(addr, Duration::from_secs(30)).await;
                match r {
                    Ok((mut c, storeherd::wire::Greeting::Ready)) => {
                        c.ping().await.map(|_| 'R').unwrap_or('x')
                    }
                    Ok((_, storeherd::wire::Greeting::Busy)) => 'B',
                    // A close or reset under load is a documented outcome, never a hang.
                    Err(_) => 'x',
                }
            }));
        }
        let t0 = std::time::Instant::now();
        let mut ready = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                'R' => ready += 1,
                'B' => busy += 1,
                _ => {}
            }
        }
        eprintln!(
            "max_connections {max}: {ready} ready, {busy} busy in {:?}",
            t0.elapsed()
        );
        assert!(ready >= 1);
        if max == "20" {
            assert!(busy > 0);
        }
        let mut c = s.client().await;
        c.ping().await.unwrap();
    }
}
