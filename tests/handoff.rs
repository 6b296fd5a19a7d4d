//! The proxy hands accepted clients to built-in instances (`--handoff`) and relays the
//! others; `max_connections` refusals, `proxy.balance: leastconn`, PROXY protocol headers
//! (`proxy.accept_proxy`) and a kill under load, all through a real `storeherd up`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use storeherd::control::InstanceState::Ready;
use storeherd::control::Status;
use support::load::ClientLoop;
use support::up::{all_ready, Topology, Up};
use support::{eventually, BIN};

const T: Duration = Duration::from_secs(20);
const READY: &str = "CONFIDANT MAIL SERVER PROTOCOL 1 READY";

/// Instance 1 takes handed-off sockets, the others do not (the same server without
/// `--handoff`, as any server that cannot take a socket).
fn mixed_command() -> String {
    format!(
        "server: {{ command: [/bin/sh, -c, \"if [ {{id}} = 1 ]; then exec {BIN} store --homedir {{home}} --handoff; else exec {BIN} store --homedir {{home}}; fi\"] }}\n"
    )
}

/// Adds `keys` to the test topology's `proxy:` mapping (in a topology file's text).
fn proxy_keys(keys: &str) -> impl Fn(String) -> String + '_ {
    move |t| t.replace("proxy: { ", &format!("proxy: {{ {keys}, "))
}

/// Waits until `/status` says which instances take handed-off clients.
fn wait_handoff(up: &Up, want: &[bool]) -> Status {
    let what = format!("hand-off {want:?}");
    up.wait_status(Duration::from_secs(30), &what, |st| {
        st.instances
            .iter()
            .map(|i| i.handoff)
            .eq(want.iter().copied())
            && all_ready(st)
    })
}

/// A blocking line client through the public port.
struct Line {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Line {
    fn over(s: TcpStream) -> Line {
        s.set_read_timeout(Some(T)).unwrap();
        Line {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn connect(addr: SocketAddr) -> Line {
        Line::over(TcpStream::connect_timeout(&addr, T).unwrap())
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    fn cmd(&mut self, c: &str) -> String {
        self.w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.line()
    }

    fn local(&self) -> SocketAddr {
        self.w.local_addr().unwrap()
    }

    /// True when the server closed the connection (EOF or reset) without a line.
    fn closed(&mut self) -> bool {
        let mut l = String::new();
        matches!(self.r.read_line(&mut l), Ok(0) | Err(_)) && l.is_empty()
    }
}

/// The socket inode of the server side of a client connection from `client` (whose peer
/// is `server`), from /proc/net/tcp.
fn server_side_inode(server: SocketAddr, client: SocketAddr) -> Option<String> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("loopback v4 only"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| f[9].to_string())
    })
}

/// True when process `pid` has the socket with this inode open.
fn holds_socket(pid: u32, inode: &str) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l.to_string_lossy() == want)
}

/// One counter of every instance, in id order.
fn column(st: &Status, counter: impl Fn(&storeherd::control::InstanceStatus) -> u64) -> Vec<u64> {
    st.instances.iter().map(counter).collect()
}

fn wait_log(up: &Up, id: u32, needle: &str) {
    let what = format!("instance {id} logged {needle:?}");
    eventually(T, what, || {
        let log = up.server_log(id);
        if log.contains(needle) {
            Ok(())
        } else {
            Err(log)
        }
    });
}

#[test]
fn built_in_instances_get_the_socket_and_others_are_relayed_in_one_up() {
    let up = Up::start(2, &mixed_command());
    up.wait_ready(2);
    wait_handoff(&up, &[true, false]);
    let sup = up.pid();
    let st = up.status();
    let pids: Vec<u32> = st.instances.iter().map(|i| i.pid.unwrap()).collect();

    // Round robin: two sessions on each instance, held open.
    let mut clients: Vec<Line> = (0..4).map(|_| Line::connect(up.listen)).collect();
    for c in &mut clients {
        assert_eq!(c.line(), READY);
        assert_eq!(c.cmd("PING"), "PONG");
    }
    let mut handed = 0;
    let mut relayed = 0;
    for c in &clients {
        let inode = server_side_inode(up.listen, c.local()).expect("the server side socket");
        let in_sup = holds_socket(sup, &inode);
        if holds_socket(pids[0], &inode) {
            // Handed over: the instance has it, the supervisor none, and it logged the
            // client's own address.
            assert!(!in_sup, "the supervisor still holds a handed-off socket");
            wait_log(&up, 1, &format!("client={}", c.local()));
            handed += 1;
        } else {
            // Relayed: the supervisor holds the client side, the instance its own.
            assert!(
                in_sup,
                "a relayed session's socket is not in the supervisor"
            );
            relayed += 1;
        }
    }
    assert_eq!((handed, relayed), (2, 2));
    up.wait_status(T, "active [2, 2]", |st| {
        column(st, |i| i.connections_active) == [2, 2] && st.connections_active == 4
    });
    for c in &mut clients {
        assert_eq!(c.cmd("QUIT"), "GOODBYE");
    }
    drop(clients);
    up.wait_status(T, "the counters settled", |st| {
        let i = &st.instances;
        i.iter().all(|i| i.connections_active == 0)
            && i.iter().all(|i| i.connections_total == 2)
            // greeting + PONG + GOODBYE, twice, on each path.
            && i.iter().all(|i| i.bytes_out == 2 * (40 + 6 + 9))
            && i.iter().all(|i| i.bytes_in == 2 * (6 + 6))
    });
    let (_, metrics) = up.http("GET", "/metrics", None);
    assert!(metrics.contains("storeherd_instance_handoff{instance=\"1\"} 1"));
    assert!(metrics.contains("storeherd_instance_handoff{instance=\"2\"} 0"));
}

#[test]
fn a_full_instance_refuses_the_socket_and_the_next_one_takes_the_client() {
    let up = Up::start(2, "server: { config: { max_connections: 1 } }\n");
    up.wait_ready(2);
    wait_handoff(&up, &[true, true]);
    // A on instance 1, B on instance 2; B closes, so that the cursor's next pick is the
    // full instance 1.
    let mut a = Line::connect(up.listen);
    assert_eq!(a.line(), READY);
    let mut b = Line::connect(up.listen);
    assert_eq!(b.line(), READY);
    assert_eq!(b.cmd("QUIT"), "GOODBYE");
    drop(b);
    let which = |st: &Status| column(st, |i| i.connections_active);
    up.wait_status(T, "active [1, 0]", |st| which(st) == [1, 0]);
    let busy_before = up.status().instances[0].busy_total;
    let mut c = Line::connect(up.listen);
    assert_eq!(
        c.line(),
        READY,
        "a client got no READY while instance 2 was free"
    );
    assert_eq!(c.cmd("PING"), "PONG");
    wait_log(&up, 2, &format!("client={}", c.local()));
    up.wait_status(T, "one session on each, instance 1 refusing", |st| {
        which(st) == [1, 1] && st.instances[0].busy_total > busy_before
    });
    assert_eq!(a.cmd("PING"), "PONG");
}

#[test]
fn leastconn_reloaded_live_sends_new_clients_past_long_sessions() {
    let up = Up::start(1, "");
    up.wait_ready(1);
    let mut long: Vec<Line> = (0..3).map(|_| Line::connect(up.listen)).collect();
    for c in &mut long {
        assert_eq!(c.line(), READY);
    }
    // Three instances, least connections first, applied live.
    let text = std::fs::read_to_string(&up.file).unwrap();
    let text = proxy_keys("balance: leastconn")(text).replace("instances: 1", "instances: 3");
    std::fs::write(&up.file, text).unwrap();
    up.wait_ready(3);
    wait_handoff(&up, &[true, true, true]);
    eventually(T, up.with_log("the topology reloaded"), || {
        up.log().contains("topology reloaded")
    });
    let mut fresh = Vec::new();
    for _ in 0..4 {
        let mut c = Line::connect(up.listen);
        assert_eq!(c.line(), READY);
        assert_eq!(c.cmd("PING"), "PONG");
        // Counted when the instance's answer is read: long before this round trip ends.
        fresh.push(c);
    }
    up.wait_status(T, "totals [3, 2, 2]", |st| {
        column(st, |i| i.connections_total) == [3, 2, 2]
    });
    drop((long, fresh));
}

/// A client from `from` (a loopback address) to `to`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = support::current_thread();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(from).unwrap();
        sock.connect(to).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s
}

#[test]
fn proxy_headers_from_trusted_sources_set_the_client_address() {
    let up = Topology::new(1)
        .proxy(Some(
            "accept_proxy: [127.0.0.2, 10.9.0.0/16], connect_timeout: 1s, idle_timeout: 60s, drain_timeout: 3s",
        ))
        .start();
    up.wait_ready(1);
    wait_handoff(&up, &[true]);

    // v1, with the client's first command in the same segment: nothing after the header
    // may be lost.
    let mut s = connect_from("127.0.0.2", up.listen);
    s.write_all(
        format!(
            "PROXY TCP4 192.0.2.7 127.0.0.1 40001 {}\r\nPING\r\n",
            up.listen.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut v1 = Line::over(s);
    assert_eq!(v1.line(), READY);
    assert_eq!(v1.line(), "PONG");
    wait_log(&up, 1, "client=192.0.2.7:40001");

    // v2, binary.
    let src: SocketAddr = "198.51.100.9:40002".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, up.listen),
    )
    .build()
    .unwrap();
    let mut s = connect_from("127.0.0.2", up.listen);
    s.write_all(&header).unwrap();
    let mut v2 = Line::over(s);
    assert_eq!(v2.line(), READY);
    assert_eq!(v2.cmd("PING"), "PONG");
    wait_log(&up, 1, "client=198.51.100.9:40002");

    // Malformed from a trusted source; a good header from an untrusted one (127.0.0.1);
    // no header at all from the untrusted one: all closed, never greeted.
    let mut bad = connect_from("127.0.0.2", up.listen);
    bad.write_all(b"HELLO there\r\n").unwrap();
    assert!(Line::over(bad).closed());
    let mut untrusted = TcpStream::connect(up.listen).unwrap();
    untrusted
        .write_all(b"PROXY TCP4 192.0.2.99 127.0.0.1 40003 8081\r\n")
        .unwrap();
    assert!(Line::over(untrusted).closed());
    assert!(Line::connect(up.listen).closed());
    assert!(!up.server_log(1).contains("192.0.2.99"));

    up.wait_status(T, "header counters 2 accepted, 3 rejected", |st| {
        st.proxy_header_accepted_total == 2 && st.proxy_header_rejected_total == 3
    });
    let (_, metrics) = up.http("GET", "/metrics", None);
    assert!(
        metrics.contains("storeherd_proxy_header_rejected_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("storeherd_proxy_header_accepted_total 2"),
        "{metrics}"
    );
}

#[test]
fn an_instance_killed_under_a_connect_ping_quit_loop_fails_no_client() {
    let up = Up::start(3, "");
    let st = up.wait_ready(3);
    wait_handoff(&up, &[true, true, true]);
    let victim = st.instances[1].pid.unwrap();
    let clients = ClientLoop::start(up.listen, 8);
    std::thread::sleep(Duration::from_millis(500));
    support::procs::signal(victim, nix::sys::signal::Signal::SIGKILL);
    up.wait_status(Duration::from_secs(30), "instance 2 comes back", |st| {
        let i = &st.instances[1];
        i.state == Ready && i.pid != Some(victim) && i.handoff
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = clients.stop();
    assert!(r.ok > 50);
    assert!(
        r.failures.is_empty(),
        "client failures: {:?}\n{}",
        r.failures,
        up.log()
    );
    assert!(r.cut <= 8, "cut: {}", r.cut);
    // Every handed session the killed instance had was taken off its count.
    up.wait_status(T, "no session left counted", |st| {
        st.instances.iter().all(|i| i.connections_active == 0)
    });
}
