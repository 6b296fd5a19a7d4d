//! The store protocol's command-line parser: never panics, and hash arguments come out as
//! 40 upper-case hex digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::server::command::{parse, Command};

fn hash_ok(h: &str) -> bool {
    h.len() == 40 && h.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fuzz_target!(|line: &[u8]| {
    let h = match parse(line) {
        Command::StoreServer(h)
        | Command::Replicate(h, _)
        | Command::StoreProxy(h, _)
        | Command::GetServer(h, _)
        | Command::StoreEntangled(h)
        | Command::GetEntangled(h, _) => h,
        _ => return,
    };
    assert!(hash_ok(&h), "{h:?}");
});
