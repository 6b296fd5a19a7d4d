//! The auth.txt parser: never panics, and every key it maps is a non-empty word.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::server::auth::parse;

fuzz_target!(|data: &[u8]| {
    let (map, _warnings) = parse(std::path::Path::new("auth.txt"), data);
    for key in map.keys() {
        assert!(!key.contains(' ') && !key.contains('\n'), "{key:?}");
    }
});
