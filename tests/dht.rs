//! DHT nodes on real loopback UDP sockets: values found across nodes, persistence across a
//! restart, and hostile datagrams.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use storeherd::dht::encoding::{decode, encode, Value};
use storeherd::dht::message::{split, Message};
use storeherd::dht::store::{TreeValues, Values};
use storeherd::dht::{self, Config, Handle, Id};
use tokio::net::UdpSocket;

fn config(dir: &Path) -> Config {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap());
    c.state_path = Some(dir.join("dht.state"));
    // Loopback answers in microseconds; a short timeout keeps failure paths fast.
    c.rpc_timeout = Duration::from_millis(800);
    c.lookup_timeout = Duration::from_secs(10);
    c
}

async fn node_with(c: Config, dir: &Path) -> Handle {
    let values = Arc::new(TreeValues::new(dir.join("entangled")).unwrap());
    dht::start(c, values).await.unwrap()
}

async fn node(dir: &Path, seeds: &[SocketAddr]) -> Handle {
    let n = node_with(config(dir), dir).await;
    n.join(seeds).await;
    n
}

fn key(n: u8) -> Id {
    let mut k: Id = rand::random();
    k[0] = n;
    k
}

fn stored(dir: &Path, k: &Id) -> Option<Vec<u8>> {
    TreeValues::new(dir.join("entangled")).unwrap().get(k)
}

#[tokio::test]
async fn values_stored_through_one_node_are_found_through_the_others() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path(), &[]).await;
    let b = node(dirs[1].path(), &[a.local_addr()]).await;
    let c = node(dirs[2].path(), &[b.local_addr()]).await;
    // a learnt c from c's lookups.
    assert_eq!((a.contacts(), b.contacts(), c.contacts()), (2, 2, 2));
    let nodes = [&a, &b, &c];
    let mut keys = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let k = key(i as u8);
        let v = format!("value published through node {i}").into_bytes();
        assert_eq!(n.publish(k, v.clone()).await, 2, "stored on both peers");
        keys.push((k, v));
    }
    for (k, v) in &keys {
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.find_value(*k).await.as_ref(), Some(v), "node {i}");
            assert_eq!(
                stored(dirs[i].path(), k).as_ref(),
                Some(v),
                "node {i}'s tree"
            );
        }
    }
    // A node joining later holds nothing: what it finds comes over the network.
    let d = node(dirs[3].path(), &[c.local_addr()]).await;
    for (k, v) in &keys {
        assert_eq!(stored(dirs[3].path(), k), None);
        assert_eq!(d.find_value(*k).await.as_ref(), Some(v));
    }
    assert_eq!(d.find_value(key(9)).await, None);
    for n in [&a, &b, &c, &d] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_node_keeps_its_id_contacts_and_values() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.local_addr()]).await;
    let k = key(1);
    b.publish(k, b"kept".to_vec()).await;
    let (id, port) = (b.id(), b.local_addr());
    b.shutdown().await;
    drop(b);
    let mut c = config(db.path());
    c.bind = port;
    // The port is free once b's last task has let go of it.
    let values = Arc::new(TreeValues::new(db.path().join("entangled")).unwrap());
    let mut started = None;
    for _ in 0..100 {
        match dht::start(c.clone(), values.clone()).await {
            Ok(n) => {
                started = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let b2 = started.expect("restarted on the same port");
    assert_eq!(b2.id(), id);
    assert_eq!(b2.contacts(), 1, "a, from the saved state");
    assert_eq!(b2.find_value(k).await.as_deref(), Some(&b"kept"[..]));
    // a still knows b2 under the same id and address.
    assert_eq!(a.ping(b2.local_addr()).await.unwrap(), id);
    let text = std::fs::read_to_string(db.path().join("dht.state")).unwrap();
    assert!(text.starts_with("storeherd-dht-state 1\nid "), "{text}");
    assert!(text.contains(&hex::encode(a.id())), "{text}");
}

/// A raw UDP peer that speaks the protocol by hand.
struct Raw {
    sock: UdpSocket,
    id: Id,
}

impl Raw {
    async fn new() -> Raw {
        Raw {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            id: rand::random(),
        }
    }

    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock.send_to(bytes, to).await.unwrap();
    }

    async fn request(&self, to: SocketAddr, method: &str, args: Vec<Value>) -> Message {
        let rpc_id: Id = rand::random();
        let m = Message::Request {
            rpc_id,
            node_id: self.id,
            method: method.as_bytes().to_vec(),
            args,
        };
        self.send(to, &m.encode()).await;
        loop {
            let reply = self.recv().await.expect("a reply");
            if *reply.rpc_id() == rpc_id {
                return reply;
            }
        }
    }

    async fn recv(&self) -> Option<Message> {
        let mut buf = vec![0u8; 65536];
        let r = tokio::time::timeout(Duration::from_secs(3), self.sock.recv_from(&mut buf)).await;
        let (n, _) = r.ok()?.ok()?;
        Some(Message::decode(&buf[..n]).unwrap())
    }
}

fn is_error(m: &Message, want: &str) -> bool {
    matches!(m, Message::Error { kind, .. } if kind == want.as_bytes())
}

#[tokio::test]
async fn hostile_peers_get_nothing_executed_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.store_burst = 5;
    c.store_per_second = 0.01;
    let n = node_with(c, dir.path()).await;
    let to = n.local_addr();
    let evil = Raw::new().await;
    let marker = dir.path().join("pwned");
    let code = format!(
        "__import__(\"os\").system(\"touch {}\") or Exception",
        marker.display()
    );

    // Garbage, truncations, deep nesting, an oversized datagram, bad split headers.
    let mut junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"d".to_vec(),
        b"di0ei0ei1e5:short".to_vec(),
        b"i99999999999999999999999e".to_vec(),
        [vec![b'l'; 5000], vec![b'e'; 5000]].concat(),
        vec![b'x'; 65000],
        b"cos\nsystem\n(S'touch pwned'\ntR.".to_vec(),
    ];
    for total in [0u16, 1, 65535] {
        let mut d = vec![0, (total >> 8) as u8, total as u8, 0xff, 0xff];
        d.extend_from_slice(&[7; 20]);
        d.push(0);
        d.extend_from_slice(b"chunk");
        junk.push(d);
    }
    // More split messages than the node keeps: each a first part that never completes.
    for i in 0..200u8 {
        let mut d = vec![0, 0, 2, 0, 0];
        d.extend_from_slice(&[i; 20]);
        d.push(0);
        d.extend_from_slice(&[b'x'; 8000]);
        junk.push(d);
    }
    for j in &junk {
        evil.send(to, j).await;
    }
    // An unsolicited error reply with code in it, and a request naming code as its method.
    let err = Message::Error {
        rpc_id: rand::random(),
        node_id: evil.id,
        kind: code.clone().into_bytes(),
        text: b"x\")#".to_vec(),
    };
    evil.send(to, &err.encode()).await;
    let r = evil.request(to, &code, vec![]).await;
    assert!(is_error(&r, "exceptions.AttributeError"), "{r:?}");
    // Values that are not strings, keys that are not 20 bytes, wrong arity.
    let k = Value::bytes(vec![1; 20]);
    let list = Value::List(vec![Value::Int(1)]);
    let r = evil.request(to, "store", vec![k.clone(), list]).await;
    assert!(is_error(&r, "exceptions.TypeError"), "{r:?}");
    let r = evil
        .request(
            to,
            "store",
            vec![Value::bytes("nodeState"), Value::bytes("v")],
        )
        .await;
    assert!(is_error(&r, "exceptions.TypeError"), "{r:?}");
    let r = evil.request(to, "findNode", vec![]).await;
    assert!(is_error(&r, "exceptions.TypeError"), "{r:?}");
    // A store flood: the burst is taken, the rest refused.
    let mut ok = 0;
    for i in 0..20u8 {
        let r = evil
            .request(
                to,
                "store",
                vec![Value::bytes(vec![i; 20]), Value::bytes("v")],
            )
            .await;
        if matches!(r, Message::Response { .. }) {
            ok += 1;
        } else {
            assert!(is_error(&r, "exceptions.ValueError"), "{r:?}");
        }
    }
    assert_eq!(ok, 5);
    // A delete deletes nothing.
    evil.request(to, "delete", vec![Value::bytes(vec![0; 20])])
        .await;
    assert!(stored(dir.path(), &[0; 20]).is_some());

    // The node as a client: a "peer" that answers its RPC with the original's error form.
    let liar = Raw::new().await;
    let liar_addr = liar.sock.local_addr().unwrap();
    let join = tokio::spawn({
        let n = n.clone();
        async move { n.join(&[liar_addr]).await }
    });
    let mut buf = vec![0u8; 65536];
    let (len, from) = liar.sock.recv_from(&mut buf).await.unwrap();
    let asked = Message::decode(&buf[..len]).unwrap();
    let reply = Message::Error {
        rpc_id: *asked.rpc_id(),
        node_id: liar.id,
        kind: code.into_bytes(),
        text: b"x\")#".to_vec(),
    };
    liar.send(from, &reply.encode()).await;
    join.await.unwrap();

    // Still serving, nothing executed, the partial-message table bounded.
    let good = Raw::new().await;
    let r = good.request(to, "ping", vec![]).await;
    assert!(matches!(r, Message::Response { result: Value::Bytes(ref b), .. } if b == b"pong"));
    let r = good
        .request(to, "findValue", vec![Value::bytes(vec![3; 20])])
        .await;
    let Message::Response { result, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        result,
        Value::Dict(vec![(Value::bytes(vec![3; 20]), Value::bytes("v"))])
    );
    assert!(n.partial_messages() <= 64, "{}", n.partial_messages());
    assert!(!marker.exists());
    assert!(!Path::new("pwned").exists());
}

#[tokio::test]
async fn a_value_larger_than_a_datagram_travels_split() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.local_addr()]).await;
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let k = key(5);
    // Stored on a by a raw store RPC, split in datagrams as the original splits them.
    let raw = Raw::new().await;
    let m = Message::Request {
        rpc_id: [9; 20],
        node_id: raw.id,
        method: b"store".to_vec(),
        args: vec![Value::bytes(k.to_vec()), Value::bytes(big.clone())],
    };
    let parts = split(&m.encode(), &[9; 20]);
    assert_eq!(parts.len(), 13);
    for p in &parts {
        raw.send(a.local_addr(), p).await;
    }
    assert!(matches!(raw.recv().await, Some(Message::Response { .. })));
    // b fetches it from a: a's reply is split too.
    assert_eq!(stored(db.path(), &k), None);
    assert_eq!(b.find_value(k).await, Some(big));
    // The bencoding helpers agree with each other on the big message.
    assert_eq!(encode(&decode(&m.encode()).unwrap()), m.encode());
}
