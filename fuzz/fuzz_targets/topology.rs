//! The topology YAML loader (model, validation, resolution): never panics on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storeherd::topology::{Overrides, Plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Plan::from_str(text, "fuzz.yaml", None, &Overrides::default());
    let _ = Plan::from_str(text, "fuzz.yaml", Some("a"), &Overrides::default());
});
