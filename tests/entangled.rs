//! STORE ENTANGLED / GET ENTANGLED (docs/protocol.md §3.5, §6.2, §11) on real `storeherd store`
//! processes, and the stock client's four-step key posting through a real `storeherd up`
//! whose instances share one entangled tree.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{TimeDelta, Utc};

use storeherd::dht::store::Meta;
use storeherd::protocol::compose;
use storeherd::server::entangled::incoming_file;
use storeherd::server::validate::{validate_merge, Limits};
use storeherd::store::tree::Tree;
use support::gpg::{announce, Fields, Gpg};
use support::store::{Raw, TestServer};
use support::until;

const T: Duration = Duration::from_secs(20);

/// Sends an upload the way the stock client does: the command, header lines, then
/// `EndBlock` or the payload after its `Data: n` line; returns the reply line.
fn upload(raw: &mut Raw, command: &str, block: &[u8]) -> String {
    let (lines, payload) = storeherd::wire::split_block(block).unwrap();
    raw.send_line(command);
    for l in &lines {
        raw.send_line(l);
    }
    match payload {
        Some(p) => raw.send(p),
        None => raw.send_line("EndBlock"),
    }
    raw.line().expect("a reply to the upload")
}

/// The exact bytes the original sends for a found value (§4.2, CRLF line ends): header
/// lines up to the `Data: n` line, then the payload; or the lines and `EndBlock`.
fn expected_reply(value: &[u8]) -> Vec<u8> {
    let (lines, payload) = storeherd::wire::split_block(value).unwrap();
    let mut out = Vec::new();
    for l in &lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match payload {
        Some(p) => out.extend_from_slice(p),
        None => out.extend_from_slice(b"EndBlock\r\n"),
    }
    out
}

/// The reply to `GET ENTANGLED …` or `GET SERVER …` as raw bytes: `NOT FOUND`, or the block as sent.
fn get_block(raw: &mut Raw, command: &str) -> Vec<u8> {
    raw.send_line(command);
    let mut out = Vec::new();
    loop {
        let l = raw.line().expect("a reply line");
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
        if l == "NOT FOUND" || l == "EndBlock" {
            return out;
        }
        if let Some(n) = storeherd::wire::data_line_len(&l) {
            out.extend(raw.raw_bytes(n));
            return out;
        }
    }
}

/// Polls a GET command on fresh connections until it is not `NOT FOUND` (bounded).
fn wait_found(addr: std::net::SocketAddr, command: &str) -> Vec<u8> {
    let got = until(T, || {
        let mut raw = Raw::connect(addr).unwrap();
        raw.line().unwrap();
        let got = get_block(&mut raw, command);
        if got != b"NOT FOUND\r\n" {
            Ok(got)
        } else {
            Err(got)
        }
    });
    got.unwrap_or_else(|last| last.unwrap_or_default())
}

fn value_file(root: &Path, key: &str) -> Vec<u8> {
    let path = Tree::new(root).block_path(key);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn store_entangled_is_queued_validated_and_served() {
    let s = TestServer::start(&[]);
    let mut raw = s.raw();
    let now = Utc::now();
    let (key, block) = compose::dht_data_block(b"entangled payload\r\nwith lines\n", now);

    // Anonymous, queued first: DONE, then validated with the DHT rules.
    assert_eq!(
        upload(&mut raw, &format!("STORE ENTANGLED {key}"), &block),
        "DONE"
    );
    assert!(s.wait_queue_empty(T));
    let expected = expected_reply(&block);
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {key}")),
        expected
    );
    // Any case; a data block is not filtered by SINCE.
    let since = format!(
        "get entangled {} since 2000-01-01T00:00:00Z",
        key.to_lowercase()
    );
    assert_eq!(get_block(&mut raw, &since), expected);
    // No type hiding (a data block is hidden from anonymous GET SERVER), and not in the
    // local store.
    assert_eq!(raw.cmd(&format!("GET SERVER {key}")), "NOT FOUND");

    // The original's value file: six DHT header lines, published by this node now.
    let file = value_file(&s.home().join("entangled"), &key);
    let text = String::from_utf8_lossy(&file);
    let lines: Vec<&str> = text.splitn(7, '\n').collect();
    assert_eq!(lines[0], "Source: entangled");
    let published: i64 = lines[1]
        .strip_prefix("LastPublished: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((published - now.timestamp()).abs() < 60, "{published}");
    assert_eq!(lines[2], format!("OriginallyPublished: {published}"));
    let id = lines[3].strip_prefix("OriginalPublisherID: ").unwrap();
    assert!(
        id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(lines[4], "DataType: string");
    assert_eq!(lines[5], format!("Data: {}", block.len()));
    assert_eq!(lines[6].as_bytes(), &block[..]);

    // Unknown keys, and bad input: nothing stored, the session and the worker go on.
    let unknown = "0123456789ABCDEF0123456789ABCDEF01234567";
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {unknown}")),
        b"NOT FOUND\r\n"
    );
    // A block the original's store thread died on (docs/protocol.md §6.3): no Date line.
    let (nd_key, dated) = compose::dht_data_block(b"no date", now);
    let no_date: Vec<u8> = String::from_utf8(dated)
        .unwrap()
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("Date: "))
        .collect::<String>()
        .into_bytes();
    assert_eq!(
        upload(&mut raw, &format!("STORE ENTANGLED {nd_key}"), &no_date),
        "DONE"
    );
    assert_eq!(
        upload(
            &mut raw,
            &format!("STORE ENTANGLED {key}"),
            b"StoreType: server\nType: data\n"
        ),
        "FAILED",
        "forbidden header"
    );
    let (key2, block2) = compose::dht_data_block(b"second", now);
    assert_eq!(
        upload(&mut raw, &format!("STORE ENTANGLED {key2}"), &block2),
        "DONE"
    );
    assert!(s.wait_queue_empty(T));
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {nd_key}")),
        b"NOT FOUND\r\n"
    );
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {key2}")),
        expected_reply(&block2)
    );
    assert!(
        s.log().contains("entangled value not stored"),
        "{}",
        s.log()
    );
    assert_eq!(raw.cmd("PING"), "PONG");
}

#[test]
fn incoming_dht_store_left_in_the_queue_is_merged_at_start() {
    // An original server's DHT node queues `entangled-incoming` files; ours takes them too.
    let mut s = TestServer::start(&[]);
    let (key, block) = compose::dht_data_block(b"from a DHT peer", Utc::now());
    let meta = Meta {
        last_published: 1_700_000_100,
        originally_published: 1_700_000_000,
        publisher: [0xab; 20],
    };
    let content = incoming_file(&key, &block, &meta);
    let name = storeherd::store::queue::name_of(&content);
    s.kill9();
    std::fs::write(s.home().join("inputqueue").join(&name), &content).unwrap();
    s.restart();
    assert!(s.wait_queue_empty(T));
    let file = value_file(&s.home().join("entangled"), &key);
    let body = &content[content.iter().position(|&b| b == b'\n').unwrap() + 1..];
    let body = &body[body.iter().position(|&b| b == b'\n').unwrap() + 1..];
    assert_eq!(file, body, "stored with the incoming DHT header lines");
    let mut raw = s.raw();
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {key}")),
        expected_reply(&block)
    );
}

#[test]
fn stock_client_key_posting_through_up_is_served_by_another_instance() {
    let Some(gpg) = Gpg::new("stock_client_key_posting") else {
        return;
    };
    let fpr = gpg.gen_key("Carol", "default", "never");
    let key_block = gpg.export(&[&fpr]);
    let date = Utc::now() - TimeDelta::seconds(60);
    let announcement = announce(&gpg, &fpr, &Fields::new(&key_block, date));
    let (claim_key, claim_text) = compose::address_claim(&fpr, "carol@example.org", date);
    let claim = gpg.clearsign(&fpr, &claim_text);

    let up = support::up::Up::start(2, "");
    up.wait_ready(2);
    let authkey = "CAROLKEY01234567";
    let out = up.ctl(&["accounts", "add", &fpr, authkey]);
    support::succeeded(&out);

    // Instance 1, one connection, as keyannounce.py posts (after its LOGIN).
    let one = std::net::SocketAddr::from(([127, 0, 0, 1], up.sport));
    let two = std::net::SocketAddr::from(([127, 0, 0, 1], up.sport + 1));
    let mut raw = Raw::connect(one).unwrap();
    assert!(raw.line().unwrap().ends_with("READY"));
    assert_eq!(raw.cmd(&format!("LOGIN {fpr} {authkey}")), "DONE");
    for (cmd, block) in [
        (format!("STORE SERVER {fpr}"), &announcement),
        (format!("STORE ENTANGLED {fpr}"), &announcement),
        (format!("STORE SERVER {claim_key}"), &claim),
        (format!("STORE ENTANGLED {claim_key}"), &claim),
    ] {
        assert_eq!(upload(&mut raw, &cmd, block), "DONE", "{cmd}");
    }
    assert_eq!(raw.cmd("QUIT"), "GOODBYE");

    // Instance 2, its own port: the claim from the shared store, the key from the shared
    // entangled tree.
    let got = wait_found(two, &format!("GET ENTANGLED {fpr}"));
    assert_eq!(got, expected_reply(&announcement), "{}", up.log());
    // Claims are rebuilt (§7.7): as the server rules store it, and as the DHT rules store
    // it after the outgoing merge and this node's own incoming store.
    let merge = |old: Option<&[u8]>, new: &[u8], dht: bool, user: Option<&str>| {
        validate_merge(
            &claim_key,
            old,
            new,
            dht,
            user,
            &Limits::default(),
            Utc::now(),
        )
        .unwrap()
        .block
    };
    let in_dht = merge(None, &merge(None, &claim, true, None), true, None);
    let got = wait_found(two, &format!("GET ENTANGLED {claim_key}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected_reply(&in_dht))
    );
    let lines = wait_found(two, &format!("GET SERVER {claim_key}"));
    let on_server = merge(None, &claim, false, Some(&fpr));
    assert_eq!(lines, expected_reply(&on_server));
    assert!(String::from_utf8_lossy(&lines).contains(&format!("Keyid: {fpr}")));

    // One tree: every home's `entangled` links to <data>/entangled.
    let shared = up.data().join("entangled");
    for id in 1..=2 {
        let link = up.data().join(format!("homes/{id}/entangled"));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            shared,
            "{}",
            link.display()
        );
    }
    let file = value_file(&shared, &fpr);
    assert!(file.ends_with(&announcement));
}

#[test]
fn three_store_servers_find_each_others_values_through_the_dht() {
    // A ← B ← C: each joins through the one before it (`knode`), each with its own tree.
    let start = |knode: Option<u16>| {
        // A free port for its DHT node, so that the next one can name it in `knode`.
        let eport = support::ports::port();
        let e = eport.to_string();
        let k = knode.map(|p| format!("127.0.0.1:{p}"));
        let mut extra = vec![("eport", e.as_str())];
        if let Some(k) = &k {
            extra.push(("knode", k.as_str()));
        }
        (TestServer::start(&extra), eport)
    };
    let (a, a_port) = start(None);
    let (b, b_port) = start(Some(a_port));
    let (c, c_port) = start(Some(b_port));
    let servers = [a, b, c];

    let now = Utc::now();
    let mut values = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let payload = format!("published through server {i}\n");
        let (key, block) = compose::dht_data_block(payload.as_bytes(), now);
        let mut raw = s.raw();
        let cmd = format!("STORE ENTANGLED {key}");
        assert_eq!(upload(&mut raw, &cmd, &block), "DONE", "server {i}");
        values.push((key, block));
    }
    for (key, block) in &values {
        for (i, s) in servers.iter().enumerate() {
            let got = wait_found(s.addr(), &format!("GET ENTANGLED {key}"));
            assert_eq!(got, expected_reply(block), "server {i}: {}", s.log());
        }
    }
    // A server joining later holds none of them: it finds them over the DHT.
    let (late, _) = start(Some(c_port));
    for (key, block) in &values {
        assert!(!Tree::new(late.home().join("entangled"))
            .block_path(key)
            .exists());
        let got = wait_found(late.addr(), &format!("GET ENTANGLED {key}"));
        assert_eq!(got, expected_reply(block), "{}", late.log());
    }
    let (missing, _) = compose::dht_data_block(b"never published", now);
    let mut raw = late.raw();
    assert_eq!(
        get_block(&mut raw, &format!("GET ENTANGLED {missing}")),
        b"NOT FOUND\r\n"
    );
}
