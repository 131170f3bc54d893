use super::*;
use proptest::prelude::*;

/// A request packet: header, extras, key, value.
fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let body = (extras.len() + key.len() + value.len()) as u32;
    let mut out = vec![REQUEST_MAGIC, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    out.extend_from_slice(&body.to_be_bytes());
    out.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
    [flags.to_be_bytes(), exptime.to_be_bytes()].concat()
}

fn request(buf: &[u8]) -> (Header, Request<'_>) {
    match parse(buf, 1 << 20) {
        Parsed::Request {
            header,
            request,
            consumed,
        } => {
            assert_eq!(consumed, buf.len());
            (header, request)
        }
        other => panic!("{other:?}"),
    }
}

fn refused(buf: &[u8], max_item_size: usize) -> (Status, usize, u64, bool) {
    match parse(buf, max_item_size) {
        Parsed::Refused {
            status,
            consumed,
            swallow,
            close,
            ..
        } => (status, consumed, swallow, close),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parses_every_request_kind() {
    let set = packet(opcode::SETQ, &set_extras(7, 60), b"k", b"value", 42);
    let (header, parsed) = request(&set);
    assert_eq!((header.opaque, header.cas), (0xdead_beef, 42));
    assert_eq!(
        parsed,
        Request::Store {
            mode: StoreMode::Set,
            key: b"k",
            flags: 7,
            exptime: 60,
            value: b"value",
            quiet: true
        }
    );
    let incr_extras = [5u64.to_be_bytes(), 9u64.to_be_bytes()].concat();
    let incr_extras = [&incr_extras[..], &u32::MAX.to_be_bytes()].concat();
    let incr = packet(opcode::DECREMENT, &incr_extras, b"n", b"", 0);
    assert_eq!(
        request(&incr).1,
        Request::Arith {
            incr: false,
            key: b"n",
            delta: 5,
            initial: 9,
            exptime: u32::MAX,
            quiet: false
        }
    );
    let getkq = packet(opcode::GETKQ, &[], b"key", b"", 0);
    assert_eq!(
        request(&getkq).1,
        Request::Get {
            key: b"key",
            touch: None,
            quiet: true,
            with_key: true
        }
    );
    let gat = packet(opcode::GATK, &9u32.to_be_bytes(), b"key", b"", 0);
    assert!(matches!(
        request(&gat).1,
        Request::Get {
            touch: Some(9),
            with_key: true,
            quiet: false,
            ..
        }
    ));
    let append = packet(opcode::PREPENDQ, &[], b"k", b"pre", 0);
    assert!(matches!(
        request(&append).1,
        Request::Store {
            mode: StoreMode::Prepend,
            quiet: true,
            flags: 0,
            ..
        }
    ));
    let flush = packet(opcode::FLUSH, &30u32.to_be_bytes(), b"", b"", 0);
    assert_eq!(
        request(&flush).1,
        Request::Flush {
            delay: 30,
            quiet: false
        }
    );
    let stat = packet(opcode::STAT, &[], b"settings", b"", 0);
    assert_eq!(request(&stat).1, Request::Stat { group: b"settings" });
    let sasl = packet(opcode::SASL_AUTH, &[], b"PLAIN", b"\0u\0p", 0);
    assert_eq!(
        request(&sasl).1,
        Request::SaslAuth {
            mechanism: b"PLAIN",
            data: b"\0u\0p"
        }
    );
    for (op, wanted) in [
        (opcode::NOOP, Request::Noop),
        (opcode::VERSION, Request::Version),
        (opcode::QUITQ, Request::Quit { quiet: true }),
        (opcode::SASL_LIST_MECHS, Request::SaslListMechanisms),
    ] {
        assert_eq!(request(&packet(op, &[], b"", b"", 0)).1, wanted);
    }
}

#[test]
fn limits_and_malformed_headers() {
    // A value over the item limit is refused on its header: the value is swallowed, the
    // key of a set is unlinked.
    let big = packet(opcode::SET, &set_extras(0, 0), b"k", &[b'x'; 100], 0);
    let head = HEADER_LEN + 8 + 1;
    match parse(&big[..head], 99) {
        Parsed::Refused {
            status: Status::TooLarge,
            consumed,
            swallow: 100,
            close: false,
            unlink: Some(b"k"),
            ..
        } => assert_eq!(consumed, head),
        other => panic!("{other:?}"),
    }
    // An unknown opcode is answered and its body skipped; the connection stays.
    let unknown = packet(0x1b, &[0; 4], b"", b"", 0);
    assert_eq!(
        refused(&unknown, 1 << 20),
        (Status::UnknownCommand, HEADER_LEN, 4, false)
    );
    // Lengths that cannot be: answered, then the connection closes.
    let mut overrun = packet(opcode::GET, &[], b"key", b"", 0);
    overrun[8..12].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(refused(&overrun, 1 << 20).0, Status::UnknownCommand);
    assert!(refused(&overrun, 1 << 20).3);
    let long_key = packet(opcode::GET, &[], &[b'k'; 251], b"", 0);
    assert_eq!(
        refused(&long_key, 1 << 20),
        (Status::InvalidArguments, HEADER_LEN, 0, true)
    );
    for bad in [
        packet(opcode::GET, &[0; 4], b"k", b"", 0),
        packet(opcode::GET, &[], b"k", b"extra", 0),
        packet(opcode::SET, &[0; 4], b"k", b"v", 0),
        packet(opcode::NOOP, &[], b"k", b"", 0),
        packet(opcode::INCREMENT, &[0; 8], b"k", b"", 0),
        packet(opcode::STAT, &[], b"k", b"v", 0),
    ] {
        assert_eq!(
            refused(&bad, 1 << 20),
            (Status::InvalidArguments, HEADER_LEN, 0, true),
            "{bad:?}"
        );
    }
    let mut huge = packet(opcode::SET, &set_extras(0, 0), b"k", b"", 0);
    huge[8..12].copy_from_slice(&(MAX_BODY + 1).to_be_bytes());
    assert!(refused(&huge, usize::MAX).3);
    let mechanism = packet(opcode::SASL_AUTH, &[], &[b'M'; 33], b"", 0);
    assert_eq!(refused(&mechanism, 1 << 20).0, Status::InvalidArguments);
    assert_eq!(parse(b"\x81\x00", 100), Parsed::Incomplete { need: 24 });
    assert_eq!(parse(&[0x81; 24], 100), Parsed::Invalid { magic: 0x81 });
}

proptest! {
    /// A packet split anywhere parses the same once whole: every prefix is incomplete and
    /// asks for no more than the packet holds.
    #[test]
    fn every_prefix_is_incomplete(
        key in proptest::collection::vec(any::<u8>(), 1..40),
        value in proptest::collection::vec(any::<u8>(), 0..300),
        flags: u32,
    ) {
        let whole = packet(opcode::SET, &set_extras(flags, 0), &key, &value, 0);
        for cut in 0..whole.len() {
            match parse(&whole[..cut], 1 << 20) {
                Parsed::Incomplete { need } => prop_assert!(need > cut && need <= whole.len()),
                other => prop_assert!(false, "{cut}: {other:?}"),
            }
        }
        let parsed = request(&whole).1;
        prop_assert!(
            matches!(parsed, Request::Store { key: k, value: v, flags: f, .. }
                if k == &key[..] && v == &value[..] && f == flags),
            "parsed wrongly"
        );
    }

    /// Arbitrary bytes never panic, and a request never claims more than it was given.
    #[test]
    fn arbitrary_bytes_parse_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = bytes;
        if let Some(first) = bytes.first_mut() {
            *first = REQUEST_MAGIC;
        }
        if let Parsed::Request { consumed, .. } = parse(&bytes, 64) {
            prop_assert!(consumed <= bytes.len());
        }
    }
}

proptest! {
    /// A stream of valid and refused requests split anywhere parses as the whole stream.
    #[test]
    fn split_streams_parse_as_whole(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..6),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut stream = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let key = format!("key{i}");
            stream.extend(packet(opcode::SETQ, &set_extras(i as u32, 0), key.as_bytes(), value, 0));
            stream.extend(packet(opcode::GETK, &[], key.as_bytes(), b"", 0));
            stream.extend(packet(0x60, &[], b"", value, 0));
        }
        let cut = cut.index(stream.len() + 1);
        let whole = replay([&stream[..]], 64);
        prop_assert_eq!(replay([&stream[..cut], &stream[cut..]], 64), whole.clone());
        prop_assert_eq!(whole.len(), values.len() * 3);
    }
}
