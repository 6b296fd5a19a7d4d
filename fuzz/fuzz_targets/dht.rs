//! The DHT datagram decoder: never panics; a datagram is either dropped, kept as part of a
//! split message, or decodes to a message whose encoding is stable: decoding and encoding it
//! again gives the same bytes (floats lose digits once, as Python's `%f` does).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use storeherd::dht::message::{Message, Reassembly, Received};

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembly::new(4, Duration::from_secs(5));
    let from = "127.0.0.1:1".parse().unwrap();
    let now = Instant::now();
    // The input may hold several datagrams, separated by 0xfe bytes.
    let mut whole = Vec::new();
    for d in data.split(|&b| b == 0xfe) {
        if let Received::Whole(m) = r.receive(from, d, now) {
            whole.push(m);
        }
    }
    assert!(r.in_progress() <= 4);
    for m in whole {
        if let Ok(msg) = Message::decode(&m) {
            let bytes = msg.encode();
            let again = Message::decode(&bytes).expect("re-encoded message decodes");
            assert_eq!(again.encode(), bytes);
        }
    }
});
