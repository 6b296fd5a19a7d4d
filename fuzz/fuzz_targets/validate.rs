//! validate_merge on arbitrary old and new blocks: never panics. Input: a flags byte, the
//! old block's length (2 bytes, little-endian), the 40-character key, then old and new.
//! Seeds (fuzz/seeds/validate, from `cargo test --test fuzz_seeds -- --ignored`) hold valid
//! blocks of every type with their keys, so mutations reach the merge rules.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use storeherd::server::validate::{validate_merge, Limits};

fuzz_target!(|data: &[u8]| {
    if data.len() < 43 {
        return;
    }
    let flags = data[0];
    let old_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let key = String::from_utf8_lossy(&data[3..43]);
    let rest = &data[43..];
    let (old, new) = rest.split_at(old_len.min(rest.len()));
    let old = (flags & 1 != 0).then_some(old);
    let poster = match (flags >> 2) & 3 {
        0 => None,
        1 => Some("NONE"),
        2 => Some("administrator"),
        _ => Some("a2129dd8a2129dd8a2129dd8a2129dd8a2129d79"),
    };
    // The seeds are dated 2015-06-01T11:00:00Z.
    let now = Utc.with_ymd_and_hms(2015, 6, 1, 12, 0, 0).unwrap();
    let _ = validate_merge(&key, old, new, flags & 2 != 0, poster, &Limits::default(), now);
});
