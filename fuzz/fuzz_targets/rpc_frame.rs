//! Arbitrary bytes from a peer, through the rpc frame decoder and message decoder the way a
//! connection reads them (split where the first byte says): never a panic, and the split
//! stream decodes exactly as the whole.
#![no_main]

use kai::cluster::rpc::frame::replay;
use kai::cluster::rpc::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let split = usize::from(first) * stream.len() / 255;
    let (head, tail) = stream.split_at(split);
    assert_eq!(
        replay::<Message>(&[head, tail], 1 << 16),
        replay::<Message>(&[stream], 1 << 16)
    );
});
