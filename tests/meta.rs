//! The meta commands, session by session against Debian's memcached: byte for byte, cas
//! uniques, TTLs and `me`'s sizes compared by shape. Also the text admin surface that came
//! with them (disabled features, `stats reset`).

mod common;

use common::{Client, Kai, Memcached};
use std::collections::HashMap;

/// Replaces what legitimately differs in meta replies: cas uniques (`c…`, `cas=`), TTLs
/// (`t…`; a second may tick between the two servers), `me`'s sizes, access times and
/// kai's sibling count.
fn normalize(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        let body = line.trim_end_matches("\r\n");
        let mut words = body.split(' ');
        let code = words.next().unwrap_or_default();
        if code == "VALUE" {
            // A text `gets` reply's cas.
            let fields: Vec<&str> = body.split(' ').collect();
            out.push_str(&format!("{} <cas>\r\n", fields[..4].join(" ")));
            continue;
        }
        if !["HD", "VA", "EN", "NS", "EX", "NF", "ME"].contains(&code) {
            out.push_str(line);
            continue;
        }
        let mut shaped = vec![code.to_string()];
        for word in words {
            let digits = |prefix: &str| {
                (word.strip_prefix(prefix)).is_some_and(|n| n.parse::<u64>().is_ok())
            };
            shaped.push(match word {
                _ if digits("c") => "c<cas>".into(),
                _ if digits("t") => "t<ttl>".into(),
                _ if digits("cas=") => "cas=<cas>".into(),
                _ if digits("size=") => "size=<size>".into(),
                _ if digits("la=") => "la=<secs>".into(),
                _ if digits("exp=") => "exp=<ttl>".into(),
                _ if digits("siblings=") => continue,
                _ => word.into(),
            });
        }
        out.push_str(&shaped.join(" "));
        out.push_str("\r\n");
    }
    out
}

fn scripts() -> Vec<(&'static str, Vec<u8>)> {
    let mut quiet_batch = Vec::new();
    for i in 0..50 {
        quiet_batch.extend(format!("ms q{i} 1 q F{i}\r\n{}\r\n", i % 10).bytes());
    }
    for i in 0..60 {
        quiet_batch.extend(format!("mg q{i} v f q k O{i}\r\n").bytes());
    }
    quiet_batch.extend(b"mn\r\n");
    let mut all_bytes = b"ms bin 258 F3\r\n".to_vec();
    all_bytes.extend((0..=255u8).collect::<Vec<_>>());
    all_bytes.extend(b"\r\n\r\nmg bin v s f\r\n");
    let big = vec![b'b'; (1 << 20) + 4096];
    let mut too_large = b"ms big 5\r\nsmall\r\n".to_vec();
    too_large.extend(format!("ms big {} MA\r\n", big.len()).bytes());
    too_large.extend(&big);
    too_large.extend(b"\r\nmg big v\r\nmn\r\n");
    let long_opaque = format!("mg k O{}\r\nmg k O{}\r\n", "o".repeat(31), "o".repeat(32));
    let long_key = format!("mg {} v\r\nmd {}\r\n", "k".repeat(251), "k".repeat(250));
    vec![
        (
            "get and set flags",
            b"ms a 5 F7 T0 c\r\nhello\r\nmg a v f c s t k Oab\r\nmg a\r\nmg a k q\r\nmg a s v\r\n"
                .to_vec(),
        ),
        (
            "misses and quiet mode",
            b"mg none v Oxy k\r\nmg none v q\r\nmg none k q Oz\r\nmn\r\nmd none q\r\nma none q\r\nmn\r\n"
                .to_vec(),
        ),
        (
            "set modes",
            b"ms b 2 MA\r\nxx\r\nms b 2 MP\r\nxx\r\nms b 2 MR\r\nxx\r\nms b 1 ME\r\nx\r\nms b 1 ME\r\ny\r\nms b 1 MA\r\nz\r\nms b 2 MP F9\r\n<<\r\nms b 1 MS\r\n!\r\nmg b v f\r\nms b 1 MR\r\n?\r\nmg b v\r\n"
                .to_vec(),
        ),
        (
            "set with cas on missing and mismatched items",
            b"ms c 1 C1\r\nx\r\nms c 1 C1 MR\r\nx\r\nms c 1 C1 MA\r\nx\r\nms c 1\r\nx\r\nms c 1 C1 c\r\ny\r\nms c 1 C1 MA k\r\ny\r\nms c 1 C1 ME c\r\ny\r\nmg c v\r\n"
                .to_vec(),
        ),
        (
            "quiet set and delete",
            b"ms d 1 q\r\nx\r\nms d 1 q ME\r\ny\r\nmd d q\r\nmd d q\r\nmd d q Oo k\r\nmn\r\n".to_vec(),
        ),
        (
            "delete",
            b"ms e 1\r\nx\r\nmd e C1 Oa k\r\nmd e k Ob\r\nmd e\r\nmg e v\r\nmd e T30\r\n".to_vec(),
        ),
        (
            "arithmetic",
            b"ma n\r\nma n N0 J5 v\r\nma n D10 v t c\r\nma n MD D100 v\r\nma n M- v\r\nma n M+ D3 v\r\nma n MI v\r\nma n q\r\nma n v k Oo1\r\nma n C1 v\r\nma n J9 v\r\nms t 3\r\nabc\r\nma t\r\nms cnt 2 T0\r\n10\r\nma cnt T100 t v\r\nma newc N50 J3 t v\r\nma n D18446744073709551615 v\r\n"
                .to_vec(),
        ),
        (
            "errors",
            b"mg k zz\r\nmg k v v\r\nmg\r\nms\r\nmd\r\nma\r\nms k\r\nms k abc\r\nms k -1\r\nmx\r\nme\r\nmg k Nabc\r\nmg k T\r\nmg k MAB\r\nmd k Ox Ox\r\nma k Dx\r\nma k Jx\r\nma k MX\r\nmg k a b c d e f g h i j k l m n o p q r s\r\nmd k a b c d e f g h i j k l m n o p q r s\r\nmg k c f h k l s t u v O q\r\nmg k Jx Dy\r\nmg k Jx zz\r\n"
                .to_vec(),
        ),
        (
            "refused sets swallow their data",
            b"ms k 1 MZ\r\nx\r\nms k 1 Fx\r\nx\r\nms k 1 Fx Dy\r\nx\r\nms k 2 v v\r\nxy\r\nms k 1\r\nxyz\r\nmg k v\r\n".to_vec(),
        ),
        ("key and opaque limits", [long_opaque, long_key].concat().into_bytes()),
        (
            "base64 keys",
            b"mg dGVzdA== b v k\r\nms dGVzdA== 1 b k c\r\nz\r\nmg dGVzdA== b v k\r\nmg test v\r\nmd dGVzdA== b k q\r\nmg dGVzdA== b v\r\nmg !!! b\r\nma bg== b N0 J1 v k\r\n"
                .to_vec(),
        ),
        (
            "hit before and last access",
            b"ms h 1\r\nx\r\nmg h h l t\r\nmg h h l t\r\nmg h2 h\r\nms h 1\r\ny\r\nmg h h u\r\nmg h h\r\n".to_vec(),
        ),
        (
            "stale while revalidate",
            b"ms s 1 T100\r\nx\r\nmd s I T30\r\nmg s v c t\r\nmg s v c t\r\nmg s v\r\nmd s I\r\nmg s v\r\nmd s q I\r\nmd none I\r\nmn\r\n".to_vec(),
        ),
        (
            "vivify and recache",
            b"mg newkey N30 v c t\r\nmg newkey N30 v t\r\nmg newkey v\r\nms newkey 3 T60\r\nabc\r\nmg newkey v R30 t\r\nmg newkey v R90\r\nmg newkey v R90\r\nms forever 1\r\nx\r\nmg forever v R90\r\nmg n2 N30 q\r\nmg n2 q\r\nmn\r\n"
                .to_vec(),
        ),
        (
            "touch",
            b"ms tt 1 T100\r\nx\r\nmg tt T0 t v\r\nmg tt t\r\nmg tt T-1 v\r\nmg tt v\r\nmg none T10\r\n".to_vec(),
        ),
        (
            "debug",
            b"me none\r\nms dbg 3\r\nabc\r\nme dbg\r\nmg dbg v\r\nme dbg\r\nme dbg zz\r\n".to_vec(),
        ),
        ("quiet pipelined batch", quiet_batch),
        ("binary values", all_bytes),
        ("too large", too_large),
        (
            "meta and text on one connection",
            b"set m 5 0 2\r\nhi\r\nmg m v f\r\nms m 3 F1\r\nbye\r\ngets m\r\nma m2 N0 J41\r\nincr m2 1\r\nmg m2 v\r\n".to_vec(),
        ),
        (
            "admin commands kai does not have",
            b"slabs automove invalid\r\nslabs automove 1\r\nslabs automove 3\r\nslabs automove ratio 0.5\r\nslabs automove ratio x\r\nslabs automove 1 noreply\r\nshutdown\r\nstats detail dump\r\nmn\r\n"
                .to_vec(),
        ),
    ]
}

#[test]
fn meta_sessions_match_memcached() {
    let kai = Kai::start("");
    let memcached = Memcached::start();
    common::assert_sessions_match(&kai, &memcached, scripts(), normalize);
}

fn cas_of(reply: &str) -> String {
    let word = reply.split_whitespace().find(|w| w.starts_with('c'));
    word.expect("a cas flag")[1..].trim().to_string()
}

/// A revalidation round with real cas uniques: a reader fetches (cas A), an invalidation
/// bumps the cas, the recacher sets with the old cas and `I` (stored, still stale), a
/// fresh cas then clears it.
fn revalidation(client: &mut Client) -> Vec<String> {
    let mut seen = vec![normalize(&client.script(b""))];
    let mut call = |request: String, lines: usize| {
        client.send(request.as_bytes());
        let reply: String = (0..lines).map(|_| client.line()).collect();
        seen.push(normalize(reply.as_bytes()));
        reply
    };
    call("ms sw 3 T100\r\nold\r\n".into(), 1);
    let old_cas = cas_of(&call("mg sw c\r\n".into(), 1));
    call("md sw I T30\r\n".into(), 1);
    let stale_cas = cas_of(&call("mg sw c t v\r\n".into(), 2));
    assert_ne!(stale_cas, old_cas, "invalidation bumps the cas");
    call(format!("ms sw 3 I C{old_cas} c\r\nnew\r\n"), 1);
    call("mg sw t v\r\n".into(), 2);
    let current = cas_of(&call("mg sw c\r\n".into(), 1));
    call(format!("ms sw 4 C{current}\r\nnew2\r\n"), 1);
    call("mg sw v t\r\n".into(), 2);
    call(format!("md sw C{current} q\r\nmn\r\n"), 2);
    let current = cas_of(&call("mg sw c\r\n".into(), 1));
    call(format!("md sw C{current} q\r\nmn\r\n"), 1);
    call(format!("ma sw C{current}\r\n"), 1);
    seen
}

#[test]
fn revalidation_with_cas_matches_memcached() {
    let kai = Kai::start("");
    let memcached = Memcached::start();
    let expected = revalidation(&mut memcached.client());
    assert_eq!(revalidation(&mut kai.client()), expected);
    assert!(expected.contains(&"VA 3 t<ttl> Z X\r\nnew\r\n".to_string()));
}

/// What kai adds or answers its own way: `me` reports the sibling count, cas uniques fit
/// 32 bits, `stats reset` zeroes the event counters but not the open connections,
/// `stats cachedump` lists what the node holds and `cache_memlimit` changes the memory
/// engine's limit until restart.
#[test]
fn kai_extensions_and_admin_commands() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.send(b"ms k 1\r\nx\r\nmg k c\r\n");
    assert_eq!(client.line(), "HD\r\n");
    let first: u64 = cas_of(&client.line()).parse().unwrap();
    client.send(b"ms k 1 c\r\ny\r\n");
    let second: u64 = cas_of(&client.line()).parse().unwrap();
    assert_ne!(second, first);
    assert!(
        first.max(second) <= u64::from(u32::MAX),
        "clients read 32 bits"
    );
    let debug = client.call("me k\r\n");
    assert!(debug.ends_with(" siblings=1\r\n"), "{debug}");
    client.call("mg k v\r\n");
    let before: HashMap<String, String> = client.stats("stats");
    assert_ne!(before["get_hits"], "0");
    assert_eq!(client.call("stats reset\r\n"), "RESET\r\n");
    let after = client.stats("stats");
    for name in ["get_hits", "cmd_get", "cmd_set", "total_connections"] {
        assert_eq!(after[name], "0", "{name}");
    }
    assert_eq!(after["curr_connections"], before["curr_connections"]);
    assert_eq!(after["curr_items"], "1");
    // memcached runs an LRU crawler; kai has none and answers as memcached does with the
    // crawler disabled.
    assert_eq!(
        client.call("lru_crawler crawl all\r\n"),
        "CLIENT_ERROR lru crawler disabled\r\n"
    );
    // A key stored under base64 and read back as text (or the reverse) is echoed by `k`
    // as the request named it; memcached remembers how it was stored.
    client.send(b"ms dGVzdA== 1 b\r\nz\r\nmg test k v\r\n");
    assert_eq!(client.line(), "HD\r\n");
    assert_eq!(client.line(), "VA 1 ktest\r\n");
    assert_eq!(client.line(), "z\r\n");
    client.send(b"ms dump 3 T0\r\nabc\r\n");
    assert_eq!(client.line(), "HD\r\n");
    let dump = client.call_until("stats cachedump 1 0\r\n", "END\r\n");
    assert!(dump.contains("ITEM dump [3 b; 0 s]\r\n"), "{dump}");
    assert_eq!(dump.matches("ITEM ").count(), 3, "{dump}");
    let one = client.call_until("stats cachedump 1 1\r\n", "END\r\n");
    assert_eq!(one.matches("ITEM ").count(), 1, "{one}");
    assert_eq!(client.call("stats cachedump 2 0\r\n"), "END\r\n");
    assert_eq!(client.call("cache_memlimit 8\r\n"), "OK\r\n");
    assert_eq!(
        client.stats("stats")["limit_maxbytes"],
        (8u64 << 20).to_string()
    );
    assert_eq!(
        client.stats("stats settings")["maxbytes"],
        (8u64 << 20).to_string()
    );
    // Filled past the new limit, the memory engine evicts.
    let value = vec![b'v'; 100_000];
    for i in 0..200 {
        client.send(format!("ms fill{i} {} q\r\n", value.len()).as_bytes());
        client.send(&value);
        client.send(b"\r\n");
    }
    assert_eq!(client.call("mn\r\n"), "MN\r\n");
    let stats = client.stats("stats");
    assert!(
        stats["bytes"].parse::<u64>().unwrap() <= 8 << 20,
        "{stats:?}"
    );
    assert_ne!(stats["evictions"], "0");
}
