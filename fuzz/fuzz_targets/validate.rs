//! validate_merge on arbitrary old and new blocks: never panics, and a stored block is the
//! new one or a merge that keeps within the size limits.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use storeherd::server::validate::{validate_merge, Limits};

const KEYS: [&str; 2] = [
    "A2129DD8A2129DD8A2129DD8A2129DD8A2129D79",
    "0000000000000000000000000000000000000000",
];

fuzz_target!(|data: &[u8]| {
    // Byte 0: flags (old present, entangled, poster, key); bytes 1-2: length of the old block.
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let old_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let rest = &data[3..];
    let (old, new) = rest.split_at(old_len.min(rest.len()));
    let old = (flags & 1 != 0).then_some(old);
    let poster = match (flags >> 2) & 3 {
        0 => None,
        1 => Some("NONE"),
        2 => Some("administrator"),
        _ => Some("a2129dd8a2129dd8a2129dd8a2129dd8a2129d79"),
    };
    let key = KEYS[usize::from(flags >> 4 & 1)];
    let now = Utc.with_ymd_and_hms(2015, 6, 1, 12, 0, 0).unwrap();
    let _ = validate_merge(key, old, new, flags & 2 != 0, poster, &Limits::default(), now);
});
