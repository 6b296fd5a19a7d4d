//! The DHT's messages against datagrams made by the original's own entangled code.
//!
//! The files in `tests/data/dht/` were written once, by hand, with
//! `python2.7 tests/data/dht/make_vectors.py <original source> tests/data/dht` (Python 2.7.18
//! with Twisted 20.3.0): the original's `Bencode`, `DefaultFormat` and message classes encode
//! each message, and its `KademliaProtocol._send` splits the large response.

use std::path::Path;

use storeherd::dht::encoding::Value;
use storeherd::dht::message::{split, Message, Reassembly, Received};

const NODE: [u8; 20] = [0x11; 20];
const RPC: [u8; 20] = [0x22; 20];
const KEY: [u8; 20] = [0x33; 20];

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dht")
            .join(name),
    )
    .unwrap()
}

fn request(method: &str, args: Vec<Value>) -> Message {
    Message::Request {
        rpc_id: RPC,
        node_id: NODE,
        method: method.as_bytes().to_vec(),
        args,
    }
}

fn response(result: Value) -> Message {
    Message::Response {
        rpc_id: RPC,
        node_id: NODE,
        result,
    }
}

fn found(value: &[u8]) -> Message {
    response(Value::Dict(vec![(
        Value::bytes(KEY.to_vec()),
        Value::bytes(value.to_vec()),
    )]))
}

/// Decoding the original's bytes gives the message, and encoding it gives the same bytes.
fn same(name: &str, msg: Message) {
    let bytes = vector(name);
    assert_eq!(Message::decode(&bytes).unwrap(), msg, "{name}");
    assert_eq!(msg.encode(), bytes, "{name}");
}

#[test]
fn requests_match_the_original() {
    same("ping_request.bin", request("ping", vec![]));
    same(
        "store_request.bin",
        request(
            "store",
            vec![
                Value::bytes(KEY.to_vec()),
                Value::bytes("Type: data\nvalue bytes"),
                Value::bytes(NODE.to_vec()),
                Value::Int(42),
            ],
        ),
    );
    same(
        "find_value_request.bin",
        request("findValue", vec![Value::bytes(KEY.to_vec())]),
    );
}

#[test]
fn responses_match_the_original() {
    same("pong_response.bin", response(Value::bytes("pong")));
    same("find_value_found.bin", found(b"the value"));
    let triple = |id: u8, ip: &str, port: i64| {
        Value::List(vec![
            Value::bytes(vec![id; 20]),
            Value::bytes(ip),
            Value::Int(port),
        ])
    };
    same(
        "find_node_response.bin",
        response(Value::List(vec![
            triple(0x44, "127.0.0.1", 4000),
            triple(0x55, "::1", 4001),
        ])),
    );
}

#[test]
fn error_replies_are_data() {
    same(
        "error_reply.bin",
        Message::Error {
            rpc_id: RPC,
            node_id: NODE,
            kind: b"exceptions.AttributeError".to_vec(),
            text: b"Invalid method: nosuch".to_vec(),
        },
    );
    let Message::Error { kind, .. } = Message::decode(&vector("error_reply_hostile.bin")).unwrap()
    else {
        panic!("not an error reply");
    };
    assert!(kind.starts_with(b"__import__"));
}

#[test]
fn splitting_matches_the_original() {
    let big: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    let parts: Vec<Vec<u8>> = (0..3).map(|i| vector(&format!("split_{i}.bin"))).collect();
    let ours = split(&found(&big).encode(), &RPC);
    assert_eq!(ours, parts);
    let mut r = Reassembly::new(8, std::time::Duration::from_secs(5));
    let from = "127.0.0.1:1".parse().unwrap();
    let now = std::time::Instant::now();
    assert_eq!(r.receive(from, &parts[2], now), Received::Pending);
    assert_eq!(r.receive(from, &parts[0], now), Received::Pending);
    let Received::Whole(whole) = r.receive(from, &parts[1], now) else {
        panic!("not reassembled");
    };
    assert_eq!(Message::decode(&whole).unwrap(), found(&big));
}
