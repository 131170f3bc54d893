//! The fuzz targets' properties over the minimized corpora committed in
//! `fuzz/regressions/<target>/`, so what the fuzzers found keeps being checked by `cargo
//! test` (the fuzzers themselves need nightly: `make fuzz`).

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|entry| (entry.path(), std::fs::read(entry.path()).unwrap()))
        .collect();
    assert!(
        entries.len() >= 10,
        "{}: only {} inputs",
        dir.display(),
        entries.len()
    );
    entries
}

/// The first byte picks where the rest is split, as in the fuzz targets.
fn split(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (&first, stream) = data.split_first()?;
    let (head, tail) = stream.split_at(usize::from(first) * stream.len() / 255);
    Some((stream, head, tail))
}

#[test]
fn protocol_parser_corpus() {
    for (path, data) in corpus("parse") {
        let Some((stream, head, tail)) = split(&data) else {
            continue;
        };
        let whole = kai::memcache::parse::replay([stream], 1024);
        assert_eq!(
            kai::memcache::parse::replay([head, tail], 1024),
            whole,
            "{}",
            path.display()
        );
    }
}

#[test]
fn meta_parser_corpus() {
    // As the `meta` target: the first byte picks the command, then the split.
    const VERBS: [&[u8]; 6] = [b"mg ", b"ms ", b"md ", b"ma ", b"mn", b"me "];
    for (path, data) in corpus("meta") {
        let Some((&first, rest)) = data.split_first() else {
            continue;
        };
        let stream = [VERBS[usize::from(first) % VERBS.len()], rest].concat();
        let (head, tail) = stream.split_at(usize::from(first) * stream.len() / 255);
        let whole = kai::memcache::parse::replay([&stream[..]], 1024);
        assert_eq!(
            kai::memcache::parse::replay([head, tail], 1024),
            whole,
            "{}",
            path.display()
        );
    }
}

#[test]
fn rpc_frame_corpus() {
    use kai::cluster::rpc::{frame::replay, message::Message};
    for (path, data) in corpus("rpc_frame") {
        let Some((stream, head, tail)) = split(&data) else {
            continue;
        };
        let whole = replay::<Message>(&[stream], 1 << 16);
        assert_eq!(
            replay::<Message>(&[head, tail], 1 << 16),
            whole,
            "{}",
            path.display()
        );
    }
}

#[test]
fn handshake_corpus() {
    for (path, data) in corpus("handshake") {
        let accepted = kai::cluster::rpc::auth::forged_handshake_accepted(&data);
        assert!(!accepted, "{}", path.display());
    }
}

#[test]
fn config_corpus() {
    for (path, data) in corpus("config") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(error) = kai::config::from_str(Path::new("fuzz.toml"), text) {
            assert!(
                error.to_string().starts_with("fuzz.toml"),
                "{}: {error}",
                path.display()
            );
        }
    }
}

#[test]
fn binary_parser_corpus() {
    use kai::memcache::binary::frame::replay;
    for (path, data) in corpus("binary_frame") {
        let Some((stream, head, tail)) = split(&data) else {
            continue;
        };
        let whole = replay([stream], 1024);
        assert_eq!(replay([head, tail], 1024), whole, "{}", path.display());
    }
}
