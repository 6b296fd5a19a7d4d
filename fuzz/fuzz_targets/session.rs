//! The session's input state machines (command lines, block lines, raw `Data:` payloads):
//! never panic, and what they make of the bytes does not depend on how the bytes are split.
//! The first bytes choose the split points; the rest is the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::server::framing::replay;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(cuts % 16);
    if rest.len() < cuts * 2 {
        return;
    }
    let (seeds, input) = rest.split_at(cuts * 2);
    let whole = replay([input]);
    let mut points: Vec<usize> = seeds
        .chunks(2)
        .map(|s| usize::from(u16::from_le_bytes([s[0], s[1]])) % (input.len() + 1))
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for p in points {
        chunks.push(&input[at..p]);
        at = p;
    }
    chunks.push(&input[at..]);
    assert_eq!(replay(chunks), whole);
    if input.len() <= 512 {
        assert_eq!(replay(input.chunks(1)), whole, "one byte at a time");
    }
});
