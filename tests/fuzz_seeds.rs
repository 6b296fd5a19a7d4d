//! Writes the seed inputs of the fuzz targets into `fuzz/seeds/<target>/`:
//! `cargo test --test fuzz_seeds -- --ignored`. Valid blocks (with proofs of work) and
//! well-formed files let the fuzzers start past the first checks.

use std::path::Path;

use chrono::{TimeZone, Utc};
use storeherd::protocol::compose;
use storeherd::server::validate::{validate_merge, Limits};

fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// flags, old length, key, old, new (the validate target's layout).
fn validate_input(flags: u8, key: &str, old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(old.len() as u16).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(old);
    v.extend_from_slice(new);
    v
}

#[test]
#[ignore = "writes fuzz/seeds"]
fn write_fuzz_seeds() {
    let date = Utc.with_ymd_and_hms(2015, 6, 1, 11, 0, 0).unwrap();
    let later = Utc.with_ymd_and_hms(2015, 6, 1, 11, 30, 0).unwrap();
    let (dkey, data) = compose::data_block(b"hello world data", date);
    seed("validate", "data", &validate_input(0, &dkey, b"", &data));
    let (akey, ack) = compose::acknowledgment([7; 20], date);
    let (_, ack2) = compose::acknowledgment([7; 20], later);
    seed(
        "validate",
        "ack",
        &validate_input(1 | 2, &akey, &ack, &ack2),
    );
    let (mkey, m1) = compose::message_announcement([1; 20], "inbox", [2; 20], &[[3; 20]], date);
    let (_, m2) =
        compose::message_announcement([1; 20], "inbox", [4; 20], &[[5; 20], [6; 20]], later);
    seed(
        "validate",
        "message",
        &validate_input(1 | 4, &mkey, &m1, &m2),
    );
    let (ckey, claim) = compose::address_claim(&"ab".repeat(20), "user@example.com", date);
    seed("validate", "claim", &validate_input(4, &ckey, b"", &claim));

    // The seeds must get past validation, or the fuzzer starts at the first reject.
    let now = Utc.with_ymd_and_hms(2015, 6, 1, 12, 0, 0).unwrap();
    let limits = Limits::default();
    validate_merge(&dkey, None, &data, false, None, &limits, now).unwrap();
    validate_merge(&akey, Some(&ack), &ack2, true, None, &limits, now).unwrap();
    validate_merge(&mkey, Some(&m1), &m2, false, Some("NONE"), &limits, now).unwrap();

    let h = "A2129DD8A2129DD8A2129DD8A2129DD8A2129D79";
    let mut up = format!("\x03\x10\x00\x30\x00STORE SERVER {dkey}\r\n").into_bytes();
    for line in data.split(|&b| b == b'\n').take(5) {
        up.extend_from_slice(line);
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(b"hello world dataPING x\r\nQUIT\r\n");
    seed("session", "store", &up);
    seed(
        "session",
        "mixed",
        format!("\x00LOGIN user1234 key12345\r\nREPLICATE {h} none\r\nA: 1\r\npadding: x\r\nEndBlock\r\nGET SERVER {h}\r\nbad\r\nSTARTTLS\r\n").as_bytes(),
    );
    seed("command", "store", format!("STORE SERVER {h}").as_bytes());
    seed(
        "command",
        "get",
        format!("GET SERVER {h} SINCE 2015-06-01T00:00:00Z\n").as_bytes(),
    );
    seed("command", "login", b"LOGIN user1234 Key12345");
    seed("config", "config", b"sport: 8081\neport: 8082\nmax_connections: 20\ntimeout: 60\nalt_localstore: /x\nreplpeer: host:1\nlisten_address: 127.0.0.1\n# c\n");
    seed(
        "auth",
        "auth",
        b"administrator key12345678 2015-06-01T00:00:00Z\nundefined k2 x\n# c\nbad\n",
    );
    seed(
        "greeting",
        "ready",
        b"\x07CONFIDANT MAIL SERVER PROTOCOL 1 READY\r\n",
    );
    seed(
        "greeting",
        "busy",
        b"\x40CONFIDANT MAIL SERVER PROTOCOL 1 BUSY\r\n",
    );
    let topo =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/storeherd.yaml")).unwrap();
    seed("topology", "deploy", &topo);
    seed(
        "topology",
        "small",
        b"listen: 127.0.0.1:8081\ninstances: 4\ndata: /tmp/x\nports: { server: 18101, entangled: 18201 }\nhealth: { interval: 200ms }\nproxy: { max_connections: 100 }\n",
    );
    // The original's own datagrams (tests/dht_wire.rs), and its split message in one input.
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dht");
    let mut split = Vec::new();
    for e in std::fs::read_dir(&vectors).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".bin") else {
            continue;
        };
        let bytes = std::fs::read(&path).unwrap();
        if stem.starts_with("split_") {
            split.push((stem.to_string(), bytes));
        } else {
            seed("dht", stem, &bytes);
        }
    }
    split.sort();
    let joined: Vec<Vec<u8>> = split.into_iter().map(|(_, b)| b).collect();
    seed("dht", "split", &joined.join(&0xfe));
}
