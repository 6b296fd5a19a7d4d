//! Free loopback ports, from one registry per test binary: a port handed out once is never
//! handed out again by this process, so two servers of one test binary cannot be given the
//! same port. A port is free when both TCP and UDP can bind it (a store server's DHT node
//! takes UDP).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// A free port the kernel picked (from its ephemeral range).
pub fn port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port");
}

/// `127.0.0.1:<a free port>`.
pub fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port()))
}

/// The first of `n` consecutive free ports, below Linux's ephemeral range (32768 and up), so
/// that no outgoing connection takes one of them while a server is down.
pub fn range(n: u16) -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let base = 20_000 + rand::random::<u16>() % (12_000 - n);
        let ports = base..base + n;
        if ports.clone().all(|p| !given.contains(&p) && bindable(p)) {
            given.extend(ports);
            return base;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}
