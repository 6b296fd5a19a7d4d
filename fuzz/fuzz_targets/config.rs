//! The config.txt parser: never panics on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::server::config::Config;

fuzz_target!(|data: &[u8]| {
    let _ = Config::parse(std::path::Path::new("config.txt"), &String::from_utf8_lossy(data));
});
