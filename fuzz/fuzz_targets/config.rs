//! Arbitrary text as kai.toml: the loader answers Ok or an error naming the file, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = kai::config::from_str(Path::new("fuzz.toml"), text) {
        assert!(error.to_string().starts_with("fuzz.toml"), "{error}");
    }
});
