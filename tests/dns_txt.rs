//! `DNS TXT <name>` (docs/protocol.md §3.8) through a real `storeherd store`, against a real DNS
//! server on a loopback port (Debian's dnsmasq, package dnsmasq-base) and against a UDP
//! socket that never answers.
//!
//! Without dnsmasq the first test passes after printing why it did nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::store::{Raw, TestServer};

/// A dnsmasq answering for `*.test` only, on 127.0.0.1:port; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(test: &str) -> Option<Dnsmasq> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        if !support::have(
            bin.is_some(),
            test,
            "dnsmasq",
            "Debian package dnsmasq-base",
        ) {
            return None;
        }
        let bin = bin.unwrap();
        for _ in 0..5 {
            let port = support::ports::port();
            let mut child = Command::new(bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    // Names under .test not listed here: NXDOMAIN.
                    "--local=/test/",
                    "--txt-record=confidant.test,v=conf1 server=store.example:8081",
                    "--txt-record=multi.test,first string,second string",
                    "--txt-record=two.test,one",
                    "--txt-record=two.test,two",
                    "--host-record=host.test,127.0.0.2",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run dnsmasq");
            // It says "started" once it listens, or why it could not.
            let mut err = BufReader::new(child.stderr.take().unwrap());
            let mut said = String::new();
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 && said.lines().count() < 50 {
                said.push_str(&line);
                if line.contains("started") {
                    // Keep reading its stderr so that it never blocks on a full pipe.
                    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
                    return Some(Dnsmasq { child, port });
                }
                line.clear();
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("dnsmasq on port {port} did not start: {said}");
        }
        panic!("dnsmasq did not start");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reply to `DNS TXT name`: `NOT FOUND`/`FAILED`, or the lines up to `EndBlock`.
fn dns_txt(raw: &mut Raw, name: &str) -> Vec<String> {
    raw.send_line(&format!("DNS TXT {name}"));
    let first = raw.line().expect("a reply");
    if first == "NOT FOUND" || first == "FAILED" {
        return vec![first];
    }
    let mut lines = vec![first.clone()];
    if first != "EndBlock" {
        lines.extend(raw.lines_until_endblock());
    }
    lines
}

#[test]
fn txt_records_nxdomain_and_names_without_txt() {
    let Some(dns) = Dnsmasq::start("txt_records") else {
        return;
    };
    let resolver = format!("127.0.0.1:{}", dns.port);
    let s = TestServer::start(&[("dns_resolver", &resolver)]);
    let mut raw = s.raw();
    assert_eq!(
        dns_txt(&mut raw, "confidant.test"),
        ["TXT: v=conf1 server=store.example:8081", "EndBlock"]
    );
    // Case is the client's; only the first string of a record is sent.
    assert_eq!(
        dns_txt(&mut raw, "MULTI.test"),
        ["TXT: first string", "EndBlock"]
    );
    let mut two = dns_txt(&mut raw, "two.test");
    two.sort();
    assert_eq!(two, ["EndBlock", "TXT: one", "TXT: two"]);
    // The name exists without TXT records: a bare EndBlock, as the original.
    assert_eq!(dns_txt(&mut raw, "host.test"), ["EndBlock"]);
    // NXDOMAIN.
    assert_eq!(dns_txt(&mut raw, "missing.test"), ["NOT FOUND"]);
    assert_eq!(dns_txt(&mut raw, "a..b"), ["NOT FOUND"], "not a DNS name");
    // The session goes on.
    assert_eq!(raw.cmd("PING"), "PONG");
    assert_eq!(
        dns_txt(&mut raw, "confidant.test"),
        ["TXT: v=conf1 server=store.example:8081", "EndBlock"]
    );
}

#[test]
fn a_silent_dns_server_times_out_without_stopping_other_sessions() {
    // Takes queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = silent.local_addr().unwrap().to_string();
    let s = TestServer::start(&[("dns_resolver", &resolver), ("dns_timeout", "2")]);
    let mut waiting = s.raw();
    waiting.send_line("DNS TXT confidant.test");
    // Another session is served while the lookup waits.
    let mut other = s.raw();
    assert_eq!(other.cmd("PING"), "PONG");
    assert_eq!(
        other.cmd("GET SERVER 0123456789ABCDEF0123456789ABCDEF01234567"),
        "NOT FOUND"
    );
    let mut buf = [0u8; 512];
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the query reached the DNS server"
    );
    assert_eq!(waiting.line().as_deref(), Some("NOT FOUND"));
    assert_eq!(waiting.cmd("PING"), "PONG");
    assert!(s.log().contains("timed out"), "{}", s.log());
}
