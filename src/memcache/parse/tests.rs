use super::*;
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn frame(input: &[u8]) -> Frame<'_> {
    match parse(input, MAX) {
        Parsed::Frame(frame) => frame,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn command(input: &[u8]) -> Command<'_> {
    frame(input).command
}

fn reply(input: &[u8]) -> Option<&'static str> {
    match command(input) {
        Command::Reply(reply) => reply,
        other => panic!("{other:?}"),
    }
}

#[test]
fn storage_commands() {
    let f = frame(b"set k 5 10 3\r\nabc\r\nget k\r\n");
    assert_eq!(f.consumed, 19);
    assert_eq!(
        f.command,
        Command::Store {
            mode: StoreMode::Set,
            cas: None,
            key: b"k",
            flags: 5,
            exptime: 10,
            data: b"abc",
            noreply: false
        }
    );
    assert!(matches!(
        command(b"cas k 0 0 1 77 noreply\r\nx\r\n"),
        Command::Store {
            mode: StoreMode::Set,
            cas: Some(77),
            noreply: true,
            ..
        }
    ));
    assert!(matches!(
        command(b"append k 0 0 0\r\n\r\n"),
        Command::Store {
            mode: StoreMode::Append,
            data: b"",
            ..
        }
    ));
    // Data containing CR LF is fine: the length decides.
    assert!(matches!(
        command(b"set k 0 0 4\r\n\r\n\r\n\r\n"),
        Command::Store {
            data: b"\r\n\r\n",
            ..
        }
    ));
    // A bare LF ends the command line, as in memcached.
    assert!(matches!(
        command(b"set k 0 0 1\nx\r\n"),
        Command::Store { data: b"x", .. }
    ));
    // An unknown sixth word is ignored, as memcached does.
    assert!(matches!(
        command(b"set k 0 0 1 norep\r\nx\r\n"),
        Command::Store { noreply: false, .. }
    ));
}

#[test]
fn incomplete_requests_wait() {
    assert_eq!(parse(b"", MAX), Parsed::Incomplete { need: 1 });
    assert_eq!(parse(b"get k", MAX), Parsed::Incomplete { need: 6 });
    assert_eq!(
        parse(b"set k 0 0 3\r\nab", MAX),
        Parsed::Incomplete { need: 18 }
    );
    assert_eq!(
        parse(b"set k 0 0 3\r\nabc\r", MAX),
        Parsed::Incomplete { need: 18 }
    );
}

#[test]
fn storage_errors_match_memcached() {
    assert_eq!(reply(b"set k 0 0 -1\r\n"), Some(BAD_FORMAT));
    assert_eq!(frame(b"set k 0 0 -1\r\n").swallow, 0);
    assert_eq!(reply(b"set k x 0 1\r\nx\r\n"), Some(BAD_FORMAT));
    assert_eq!(reply(b"set k 0 x 1\r\nx\r\n"), Some(BAD_FORMAT));
    assert_eq!(reply(b"cas k 0 0 1 -5\r\nx\r\n"), Some(BAD_FORMAT));
    assert_eq!(reply(b"set k 0 0\r\n"), Some("ERROR"));
    assert_eq!(reply(b"cas k 0 0 1\r\n"), Some("ERROR"));
    assert_eq!(reply(b"set k 0 0 1 noreply x\r\n"), Some("ERROR"));
    // Noreply silences client errors.
    assert_eq!(reply(b"set k x 0 1 noreply\r\nx\r\n"), None);
    let f = frame(b"set k 0 0 3\r\nabcde\r\n");
    assert_eq!(
        (f.command, f.consumed),
        (Command::Reply(Some(BAD_CHUNK)), 18)
    );
}

#[test]
fn refused_storage_swallows_its_data_block() {
    let long_key = format!("set {} 0 0 3\r\nabc\r\n", "k".repeat(251));
    let f = frame(long_key.as_bytes());
    assert_eq!(
        (f.command, f.swallow),
        (Command::Reply(Some(BAD_FORMAT)), 5)
    );
    let f = frame(b"set k\r1 0 0 3\r\n");
    assert_eq!(
        (f.command, f.swallow),
        (Command::Reply(Some(BAD_FORMAT)), 5)
    );
    let f = frame(b"set k\x00 0 0 3\r\n");
    assert_eq!(f.swallow, 5);
    // Other control bytes are legal in keys, as in memcached (memaslap relies on it).
    assert!(matches!(
        command(b"set \x10\x10k 0 0 1\r\nx\r\n"),
        Command::Store {
            key: b"\x10\x10k",
            ..
        }
    ));
    let f = frame(b"set big 0 0 2000000\r\n");
    assert_eq!(
        f.command,
        Command::TooLarge {
            key: b"big",
            unlink: true,
            noreply: false
        }
    );
    assert_eq!((f.consumed, f.swallow), (21, 2_000_002));
    let f = frame(b"append big 0 0 2000000 noreply\r\n");
    assert_eq!(
        f.command,
        Command::TooLarge {
            key: b"big",
            unlink: false,
            noreply: true
        }
    );
    // A billion-byte claim is refused without buffering it.
    assert_eq!(frame(b"set k 0 0 1000000000\r\n").swallow, 1_000_000_002);
}

#[test]
fn retrieval_commands() {
    let Command::Retrieve {
        keys,
        with_cas,
        touch,
    } = command(b"gets a  b c\r\n")
    else {
        panic!()
    };
    assert_eq!(keys.iter().collect::<Vec<_>>(), [&b"a"[..], b"b", b"c"]);
    assert!(with_cas && touch.is_none());
    let Command::Retrieve { keys, touch, .. } = command(b"gat -1 a\r\n") else {
        panic!()
    };
    assert_eq!((keys.iter().count(), touch), (1, Some(-1)));
    assert_eq!(reply(b"get\r\n"), Some("ERROR"));
    let Command::Retrieve { keys, .. } = command(b"gat 10\r\n") else {
        panic!()
    };
    assert_eq!(keys.iter().count(), 0);
    assert_eq!(reply(b"gat\r\n"), Some("ERROR"));
    assert_eq!(reply(b"gat x k\r\n"), Some(BAD_EXPTIME));
    let long = format!("get a {} b\r\n", "k".repeat(251));
    assert_eq!(reply(long.as_bytes()), Some(BAD_FORMAT));
    assert_eq!(reply(b"get a\rb\r\n"), Some(BAD_FORMAT));
    assert!(matches!(command(b"get a\tb\r\n"), Command::Retrieve { .. }));
    let many: String = (0..100).map(|i| format!(" key{i}")).collect();
    let line = format!("get{many}\r\n");
    let Command::Retrieve { keys, .. } = command(line.as_bytes()) else {
        panic!()
    };
    assert_eq!(keys.iter().count(), 100);
}

#[test]
fn other_commands() {
    assert_eq!(
        command(b"delete k\r\n"),
        Command::Delete {
            key: b"k",
            noreply: false
        }
    );
    assert_eq!(
        command(b"delete k 0\r\n"),
        Command::Delete {
            key: b"k",
            noreply: false
        }
    );
    assert_eq!(
        command(b"delete k noreply\r\n"),
        Command::Delete {
            key: b"k",
            noreply: true
        }
    );
    assert_eq!(
        command(b"delete k 0 noreply\r\n"),
        Command::Delete {
            key: b"k",
            noreply: true
        }
    );
    assert_eq!(reply(b"delete k 5\r\n"), Some(BAD_DELETE));
    assert_eq!(reply(b"delete\r\n"), Some("ERROR"));
    assert_eq!(
        command(b"incr k 18446744073709551615\r\n"),
        Command::Arith {
            incr: true,
            key: b"k",
            delta: u64::MAX,
            noreply: false
        }
    );
    assert_eq!(reply(b"decr k 18446744073709551616\r\n"), Some(BAD_DELTA));
    assert_eq!(reply(b"incr k -1\r\n"), Some(BAD_DELTA));
    assert_eq!(reply(b"incr k\r\n"), Some("ERROR"));
    assert_eq!(
        command(b"touch k 10 x\r\n"),
        Command::Touch {
            key: b"k",
            exptime: 10,
            noreply: false
        }
    );
    assert_eq!(reply(b"touch k abc\r\n"), Some(BAD_EXPTIME));
    assert_eq!(
        command(b"flush_all\r\n"),
        Command::FlushAll {
            delay: 0,
            noreply: false
        }
    );
    assert_eq!(
        command(b"flush_all noreply\r\n"),
        Command::FlushAll {
            delay: 0,
            noreply: true
        }
    );
    assert_eq!(
        command(b"flush_all 10 noreply\r\n"),
        Command::FlushAll {
            delay: 10,
            noreply: true
        }
    );
    assert_eq!(reply(b"flush_all abc\r\n"), Some(BAD_EXPTIME));
    assert_eq!(reply(b"flush_all a b c\r\n"), Some("ERROR"));
    assert_eq!(command(b"stats\r\n"), Command::Stats(StatsSection::General));
    assert_eq!(
        command(b"stats settings\r\n"),
        Command::Stats(StatsSection::Settings)
    );
    assert_eq!(
        command(b"stats slabs\r\n"),
        Command::Stats(StatsSection::Slabs)
    );
    assert_eq!(
        command(b"stats conns\r\n"),
        Command::Stats(StatsSection::Conns)
    );
    // memcached ignores words after a group's name.
    assert_eq!(
        command(b"stats slabs 1\r\n"),
        Command::Stats(StatsSection::Slabs)
    );
    assert_eq!(reply(b"stats nonesuch\r\n"), Some("ERROR"));
    assert_eq!(reply(b"stats detail on\r\n"), Some("OK"));
    assert_eq!(reply(b"stats detail dump\r\n"), Some("END"));
    assert_eq!(command(b"stats reset\r\n"), Command::StatsReset);
    assert_eq!(
        command(b"stats cachedump 1 10\r\n"),
        Command::CacheDump {
            class: 1,
            limit: 10
        }
    );
    assert_eq!(
        reply(b"stats cachedump\r\n"),
        Some("CLIENT_ERROR bad command line")
    );
    assert_eq!(
        command(b"cache_memlimit 64 noreply\r\n"),
        Command::MemoryLimit {
            megabytes: 64,
            noreply: true
        }
    );
    assert_eq!(
        reply(b"cache_memlimit 7\r\n"),
        Some("MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m")
    );
    assert_eq!(reply(b"slabs automove x\r\n"), Some(BAD_FORMAT));
    assert_eq!(reply(b"slabs automove 2 noreply\r\n"), None);
    assert_eq!(
        reply(b"slabs reassign 1 2\r\n"),
        Some("CLIENT_ERROR slab reassignment disabled")
    );
    assert_eq!(command(b"version x\r\n"), Command::Version);
    assert_eq!(command(b"quit\r\n"), Command::Quit);
    assert_eq!(
        command(b"verbosity 1\r\n"),
        Command::Verbosity { noreply: false }
    );
    assert_eq!(reply(b"verbosity x\r\n"), Some(BAD_FORMAT));
    assert_eq!(reply(b"verbosity\r\n"), Some("ERROR"));
    assert_eq!(reply(b"\r\n"), Some("ERROR"));
    assert_eq!(reply(b"GET k\r\n"), Some("ERROR"));
    let Command::Retrieve { keys, .. } = command(b"   get k \r\n") else {
        panic!()
    };
    assert_eq!(keys.iter().collect::<Vec<_>>(), [b"k"]);
}

#[test]
fn long_lines_are_refused() {
    let junk = vec![b'x'; MAX_LINE + 1];
    assert_eq!(parse(&junk, MAX), Parsed::LineTooLong);
    assert!(matches!(
        parse(&junk[..MAX_LINE], MAX),
        Parsed::Incomplete { .. }
    ));
    let mut long_set = b"set ".to_vec();
    long_set.extend(vec![b'k'; MAX_LINE]);
    long_set.extend(b" 0 0 1\r\nx\r\n");
    assert_eq!(parse(&long_set, MAX), Parsed::LineTooLong);
    // Retrievals may be longer, as multi-gets are.
    let long_get = format!("get{}", " k".repeat(MAX_LINE));
    assert!(matches!(
        parse(long_get.as_bytes(), MAX),
        Parsed::Incomplete { .. }
    ));
    let too_long_get = format!("get{}", " k".repeat(MAX_GET_LINE));
    assert_eq!(parse(too_long_get.as_bytes(), MAX), Parsed::LineTooLong);
}

#[test]
fn numbers() {
    assert_eq!(parse_u64(b"+5"), Some(5));
    assert_eq!(parse_u64(b"007"), Some(7));
    assert_eq!(parse_u64(b""), None);
    assert_eq!(parse_u64(b"1a"), None);
    assert_eq!(parse_i64(b"-30"), Some(-30));
    assert_eq!(parse_i64(b"2147483648"), None);
    assert_eq!(parse_i64(b"-+1"), None);
    assert_eq!(parse_u32(b"4294967296"), None);
}

/// Parses `stream` cut at `cuts`, as a connection receiving it in pieces would.
fn parse_stream(stream: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut boundaries: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    boundaries.sort_unstable();
    boundaries.push(stream.len());
    let mut start = 0;
    let chunks = boundaries.into_iter().map(|end| {
        let chunk = &stream[start..end];
        start = end;
        chunk
    });
    replay(chunks, 64)
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let key = "[a-z]{1,8}";
    prop_oneof![
        (key, 0u32..9, proptest::collection::vec(any::<u8>(), 0..100)).prop_map(|(k, f, v)| {
            let mut r = format!("set {k} {f} 0 {}\r\n", v.len()).into_bytes();
            r.extend(v);
            r.extend(b"\r\n");
            r
        }),
        key.prop_map(|k| format!("get {k} {k}x\r\n").into_bytes()),
        key.prop_map(|k| format!("incr {k} 5 noreply\r\n").into_bytes()),
        key.prop_map(|k| format!("delete {k}\n").into_bytes()),
        Just(b"set big 0 0 100\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #[test]
    fn any_split_parses_like_the_whole(
        requests in proptest::collection::vec(request(), 1..12),
        cuts in proptest::collection::vec(0usize..2000, 0..12),
    ) {
        let stream = requests.concat();
        prop_assert_eq!(parse_stream(&stream, &cuts), parse_stream(&stream, &[]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_stream(&bytes, &[bytes.len() / 2]);
    }
}

#[test]
fn a_meta_set_data_block_never_runs_as_commands() {
    // Stored as a value when accepted, swallowed when refused (a bad mode, a bad flag).
    let stream = b"ms victim 13 T0\r\ndelete victim\r\nms victim 13 MZ\r\ndelete victim\r\nms victim 13 Fx\r\ndelete victim\r\nget victim\r\n";
    let seen = replay([&stream[..]], 1024);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with("Meta(Request {"), "{}", seen[0]);
    assert!(
        seen[0].contains("[100, 101, 108, 101, 116, 101"),
        "the data block"
    );
    assert_eq!(
        seen[1],
        "Reply(Some(\"CLIENT_ERROR invalid mode for ms M token\"))"
    );
    assert_eq!(
        seen[2],
        "Reply(Some(\"CLIENT_ERROR bad command line format\"))"
    );
    assert!(seen[3].starts_with("Retrieve"), "{}", seen[3]);
    // Over the item limit: refused, and the block discarded as it streams.
    let mut big = b"ms victim 2000\r\n".to_vec();
    big.extend(vec![b'x'; 2000]);
    big.extend(b"\r\nmn\r\n");
    let seen = replay(big.chunks(100), 1024);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("Meta(TooLarge("), "{}", seen[0]);
    assert_eq!(seen[1], "Meta(Noop)");
}

#[test]
fn words_are_split_on_runs_of_spaces_and_keep_their_offsets() {
    let words = Words::split(b"  set  k 0 0 1 noreply ");
    let found: Vec<_> = (0..words.len()).map(|i| words.get(i).unwrap()).collect();
    assert_eq!(found, [&b"set"[..], b"k", b"0", b"0", b"1", b"noreply"]);
    let offsets: Vec<_> = (0..words.len()).map(|i| words.offset(i)).collect();
    assert_eq!(offsets, [2, 7, 9, 11, 13, 15]);
    assert!(words.noreply());
    assert_eq!(Words::split(b"").len(), 0);
    assert_eq!(Words::split(b"   ").len(), 0);
    // Past eight words only the count and the last word are kept.
    let long = Words::split(b"get a b c d e f g h i");
    assert_eq!((long.len(), long.get(8), long.last), (10, None, &b"i"[..]));
}
