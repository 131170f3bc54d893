//! A would-be peer that does not know the secret sends arbitrary handshake messages: the
//! server side never panics and never accepts it.
#![no_main]

use kai::cluster::rpc::auth::forged_handshake_accepted;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(!forged_handshake_accepted(data), "a proof without the secret was accepted");
});
