//! Feeds arbitrary bytes to the memcached protocol parser the way a connection does: the
//! first byte picks where the stream is split, and the parser must never panic, must always
//! make progress, and must parse the split stream exactly as the whole.
#![no_main]

use kai::memcache::parse::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fn run(stream: &[u8], split: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buffer = Vec::new();
    let mut swallow = 0u64;
    for chunk in [&stream[..split], &stream[split..]] {
        buffer.extend_from_slice(chunk);
        loop {
            let dropped = swallow.min(buffer.len() as u64) as usize;
            buffer.drain(..dropped);
            swallow -= dropped as u64;
            if swallow > 0 {
                break;
            }
            match parse(&buffer, 1024) {
                Parsed::Frame(frame) => {
                    assert!(frame.consumed > 0 && frame.consumed <= buffer.len());
                    seen.push(format!("{:?}", frame.command));
                    swallow = frame.swallow;
                    buffer.drain(..frame.consumed);
                }
                Parsed::Incomplete { need } => {
                    assert!(need > buffer.len());
                    break;
                }
                Parsed::LineTooLong => return seen,
            }
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let split = usize::from(first) * stream.len() / 255;
    assert_eq!(run(stream, split), run(stream, stream.len()));
});
