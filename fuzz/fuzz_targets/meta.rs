//! Feeds arbitrary meta command lines to the text parser the way a connection does: the
//! first byte picks the command (`mg ms md ma mn me`) and where the stream is split. The
//! parser must never panic, must always make progress, and must parse the split stream
//! exactly as the whole.
#![no_main]

use kai::memcache::parse::replay;
use libfuzzer_sys::fuzz_target;

const VERBS: [&[u8]; 6] = [b"mg ", b"ms ", b"md ", b"ma ", b"mn", b"me "];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let stream = [VERBS[usize::from(first) % VERBS.len()], rest].concat();
    let split = usize::from(first) * stream.len() / 255;
    let (head, tail) = stream.split_at(split);
    assert_eq!(replay([head, tail], 1024), replay([&stream[..]], 1024));
});
