//! The proxy's greeting reader: fed its 256-byte buffer in arbitrary reads, it never panics
//! and decides as it would on the same bytes read at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::proxy::greeting::{judge, Verdict};

const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut buf = Vec::with_capacity(MAX);
    let mut pos = 0;
    let verdict = loop {
        let n = step.min(MAX - buf.len()).min(input.len() - pos);
        if n == 0 {
            break Verdict::More; // the backend closed (or the buffer is full: judged below)
        }
        let scanned = buf.len();
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        match judge(&buf, scanned) {
            Verdict::More => {}
            v => break v,
        }
    };
    if verdict != Verdict::More {
        let at_once = &input[..buf.len()];
        assert_eq!(judge(at_once, 0), verdict);
    } else {
        assert!(buf.len() < MAX);
    }
});
