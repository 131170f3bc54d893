//! Feeds arbitrary bytes to the binary protocol parser the way a connection does: the first
//! byte picks where the stream is split, and the parser must never panic, must always make
//! progress, and must parse the split stream exactly as the whole.
#![no_main]

use kai::memcache::binary::frame::replay;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let split = usize::from(first) * stream.len() / 255;
    let (head, tail) = stream.split_at(split);
    assert_eq!(replay([head, tail], 1024), replay([stream], 1024));
});
