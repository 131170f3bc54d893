use super::*;

fn line(text: &str) -> Line<'_> {
    let words: Vec<&[u8]> = (text.as_bytes().split(|&b| b == b' '))
        .filter(|w| !w.is_empty())
        .collect();
    let verb = Verb::named(words[0]).expect("a meta command");
    parse(verb, &words, text.as_bytes())
}

fn refused(text: &str) -> (&'static str, Option<u64>) {
    match line(text) {
        Line::Refused { reply, swallow } => (reply, swallow),
        other => panic!("{text:?} parsed as {other:?}"),
    }
}

fn request(text: &str) -> Request<'_> {
    match line(text) {
        Line::Request(request) => request,
        other => panic!("{text:?} parsed as {other:?}"),
    }
}

#[test]
fn flags_are_read_as_memcached_reads_them() {
    let get = request("mg key v c f k s t Oab q u h N30 R-5 T+7");
    let flags = &get.flags;
    assert_eq!(&*get.key.bytes, b"key");
    assert!(flags.value && flags.quiet && flags.no_bump && flags.history);
    assert_eq!(
        (flags.vivify, flags.recache, flags.touch),
        (Some(30), Some(-5), Some(7))
    );
    let order: Vec<u8> = flags.iter().map(|t| t[0]).collect();
    assert_eq!(order, b"vcfkstOquhNRT");
    let set = request("ms key 5 F7 C99 I ME T60");
    let flags = &set.flags;
    assert_eq!(flags.client_flags, 7);
    assert_eq!(flags.compare_cas, Some(99));
    assert!(flags.invalidate);
    assert_eq!((flags.mode, flags.touch), (Some(b'E'), Some(60)));
    let arith = request("ma n J5 D10 MD N0");
    assert_eq!((arith.flags.initial, arith.flags.delta), (5, 10));
    assert_eq!(request("ma n").flags.delta, 1, "the default delta");
    // P and L are proxy hints, ignored.
    assert!(matches!(line("md k P/a Lb"), Line::Request(_)));
}

#[test]
fn base64_keys_decode_and_bad_ones_are_refused() {
    let get = request("mg dGVzdA== b v k");
    assert_eq!((&*get.key.bytes, get.key.base64), (&b"test"[..], true));
    assert_eq!(get.key.token, b"dGVzdA==");
    // Binary keys may hold spaces; NUL, CR and LF are refused as everywhere in kai.
    assert_eq!(&*request("mg YSBi b").key.bytes, b"a b");
    assert_eq!(refused("mg AA== b").0, BAD_FORMAT);
    assert_eq!(refused("mg !!! b").0, "CLIENT_ERROR error decoding key");
    match line("me dGVzdA== b") {
        Line::Debug(key) => assert_eq!(&*key.bytes, b"test"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused("me !!! b").0, BAD_FORMAT);
}

#[test]
fn errors_carry_memcacheds_strings() {
    let cases = [
        ("mg", "ERROR"),
        ("md", "ERROR"),
        ("mg k zz", "CLIENT_ERROR invalid flag"),
        ("mg k v v", "CLIENT_ERROR duplicate flag"),
        ("mg k Nabc", "CLIENT_ERROR bad token in command line format"),
        ("mg k T", "CLIENT_ERROR bad token in command line format"),
        ("mg k MAB", "CLIENT_ERROR incorrect length for M token"),
        ("ma k Dx", "CLIENT_ERROR invalid or duplicate flag"),
        ("md k Ox Ox", "CLIENT_ERROR invalid or duplicate flag"),
        ("ma k MX", "CLIENT_ERROR invalid mode for ma M token"),
        ("me", BAD_FORMAT),
        ("ms k", BAD_FORMAT),
        ("ms k abc", BAD_FORMAT),
        ("ms k -1", BAD_FORMAT),
        (
            "mg k a b c d e f g h i j k l m n o p q r s",
            "CLIENT_ERROR options flags are too long",
        ),
        (
            "md k a b c d e f g h i j k l m n o p q r s",
            "CLIENT_ERROR options flags too long",
        ),
    ];
    for (text, reply) in cases {
        assert_eq!(refused(text).0, reply, "{text}");
    }
    let opaque = format!("mg k O{}", "x".repeat(MAX_OPAQUE_LEN));
    assert_eq!(refused(&opaque).0, OPAQUE_TOO_LONG);
    let opaque = format!("mg k O{}", "x".repeat(MAX_OPAQUE_LEN - 1));
    assert!(matches!(line(&opaque), Line::Request(_)));
    let key = format!("mg {}", "k".repeat(MAX_KEY_LEN + 1));
    assert_eq!(refused(&key).0, BAD_FORMAT);
    // The last bad token is the one reported, unless a fatal flag error comes later.
    assert_eq!(
        refused("ma k Jx Dy").0,
        "CLIENT_ERROR invalid or duplicate flag"
    );
    assert_eq!(
        refused("mg k Jx Dy").0,
        "CLIENT_ERROR invalid numeric delta value"
    );
    assert_eq!(refused("mg k Jx zz").0, "CLIENT_ERROR invalid flag");
    // F without a usable number has no message of its own.
    assert_eq!(refused("ms k 1 Fx").0, BAD_FORMAT);
}

#[test]
fn a_refused_meta_set_names_the_data_block_to_swallow() {
    assert_eq!(refused("ms k 5 MZ").1, Some(7));
    assert_eq!(refused("ms k 5 v v").1, Some(7));
    let key = format!("ms {} 5", "k".repeat(MAX_KEY_LEN + 1));
    assert_eq!(refused(&key), (BAD_FORMAT, Some(7)));
    assert_eq!(refused("ms k abc").1, None, "no length to swallow");
    assert_eq!(refused("mg k zz").1, None);
}
