//! The memcached text protocol parser: pure, incremental and zero-copy.
//!
//! `parse` looks at the front of a connection's read buffer. It first checks that a whole
//! request (command line and, for storage commands, the data block) is buffered, then parses
//! it into a [`Command`] that borrows from the buffer. Nothing here does I/O, so the parser is
//! unit-tested, property-tested against arbitrary splits and fuzzed (`fuzz/`).
//!
//! Error replies follow memcached 1.6's wording. Two deliberate differences (docs/design.md, "Client protocol"): a
//! storage command rejected after its length parsed (bad key, bad flags) swallows its data
//! block, so the value is never executed as commands; and a command line over
//! `MAX_LINE` bytes is answered with `CLIENT_ERROR line too long` before the close.

/// Longest command line, except for retrieval commands.
pub const MAX_LINE: usize = 2048;
/// Longest retrieval line (`get k1 k2 …`): some 8,000 maximum-length keys, or 200,000
/// of 10 bytes. memcached bounds these lines only by memory; this is far beyond what
/// clients send, and bounds what one connection can make the server hold. The keys are
/// answered one by one, the replies streamed.
pub const MAX_GET_LINE: usize = 2 * 1024 * 1024;
pub const BAD_CHUNK: &str = "CLIENT_ERROR bad data chunk";
pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument";
pub const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument";
pub const BAD_DELETE: &str = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";
pub const LINE_TOO_LONG: &str = "CLIENT_ERROR line too long";

use super::meta::{self, parse::Line, parse::Verb as MetaVerb, Meta};
pub use super::token::{parse_i64, parse_u64, valid_key, BAD_FORMAT, MAX_KEY_LEN, TOO_LARGE};
pub use crate::node::StatsSection;
pub use crate::ops::StoreMode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets` (exptime None) and `gat`/`gats` (exptime Some).
    Retrieve {
        keys: Keys<'a>,
        with_cas: bool,
        touch: Option<i64>,
    },
    Store {
        mode: StoreMode,
        /// Set for `cas`.
        cas: Option<u64>,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        data: &'a [u8],
        noreply: bool,
    },
    /// A storage command whose value exceeds `max_item_size`; its data block is swallowed.
    /// memcached also unlinks the old item of a failed `set`, so stale data cannot linger.
    TooLarge {
        key: &'a [u8],
        unlink: bool,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Stats(StatsSection),
    /// `stats reset`: the event counters back to 0.
    StatsReset,
    /// `stats cachedump <class> <limit>`: keys held here (class 1 holds them all).
    CacheDump {
        class: u32,
        limit: u32,
    },
    /// `cache_memlimit <MiB>`.
    MemoryLimit {
        megabytes: u64,
        noreply: bool,
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Quit,
    /// An HTTP request line (its last word starts with `HTTP/`): a browser tricked into
    /// posting to this port. The connection is closed without a reply, as memcached does,
    /// so nothing after the line (a body holding memcached commands) runs.
    HttpRequest,
    /// A meta command (`mg ms md ma mn me`).
    Meta(Meta<'a>),
    /// A complete request that only earns a fixed reply (`ERROR`, `CLIENT_ERROR …`), or
    /// nothing when the client asked for `noreply`.
    Reply(Option<&'static str>),
}

/// Keys of a retrieval command, validated, iterated lazily without allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys<'a>(&'a [u8]);

impl<'a> Keys<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.split(|&b| b == b' ').filter(|w| !w.is_empty())
    }
}

/// One request taken from the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub command: Command<'a>,
    /// Bytes of the buffer this request used.
    pub consumed: usize,
    /// Further bytes to discard (the data block of a refused storage command), which may not
    /// have arrived yet.
    pub swallow: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Frame(Frame<'a>),
    /// More bytes are needed; at least this many in total.
    Incomplete {
        need: usize,
    },
    /// The line exceeds its limit: reply `LINE_TOO_LONG` and close the connection.
    LineTooLong,
}

/// Parses the request at the front of `buf`. `max_item_size` bounds storage values.
pub fn parse(buf: &[u8], max_item_size: usize) -> Parsed<'_> {
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > line_limit(buf) {
            Parsed::LineTooLong
        } else {
            Parsed::Incomplete {
                need: buf.len() + 1,
            }
        };
    };
    let line_end = newline + 1;
    let mut line = &buf[..newline];
    if line.len() > line_limit(line) {
        return Parsed::LineTooLong;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let words = Words::split(line);
    let frame = |command| {
        Parsed::Frame(Frame {
            command,
            consumed: line_end,
            swallow: 0,
        })
    };
    let Some(name) = words.get(0) else {
        return frame(Command::Reply(Some("ERROR")));
    };
    let n = words.len();
    match name {
        b"get" | b"gets" if n >= 2 => frame(retrieval(line, &words, 1, name == b"gets", None)),
        b"gat" | b"gats" if n >= 2 => {
            let command = match parse_i64(words.get(1).unwrap_or_default()) {
                Some(exptime) => retrieval(line, &words, 2, name == b"gats", Some(exptime)),
                None => Command::Reply(Some(BAD_EXPTIME)),
            };
            frame(command)
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" if n == 5 || n == 6 => {
            storage(buf, line_end, &words, false, max_item_size)
        }
        b"cas" if n == 6 || n == 7 => storage(buf, line_end, &words, true, max_item_size),
        b"delete" if (2..=4).contains(&n) => frame(delete(&words)),
        b"incr" | b"decr" if n == 3 || n == 4 => frame(arith(&words, name == b"incr")),
        b"touch" if n == 3 || n == 4 => frame(touch(&words)),
        b"flush_all" if n <= 3 => frame(flush_all(&words)),
        b"stats" => frame(match words.get(1) {
            None => Command::Stats(StatsSection::General),
            Some(b"reset") => Command::StatsReset,
            Some(b"cachedump") => match (
                words.get(2).and_then(parse_u32),
                words.get(3).and_then(parse_u32),
            ) {
                (Some(class), Some(limit)) => Command::CacheDump { class, limit },
                _ if n < 4 => Command::Reply(Some("CLIENT_ERROR bad command line")),
                _ => Command::Reply(Some(BAD_FORMAT)),
            },
            // kai keeps no per-prefix stats: on and off are accepted, a dump is empty.
            Some(b"detail") => match words.get(2) {
                Some(b"on" | b"off") => Command::Reply(Some("OK")),
                Some(b"dump") => Command::Reply(Some("END")),
                _ => Command::Reply(Some("ERROR")),
            },
            // Like memcached, a named group ignores further words.
            Some(name) => match StatsSection::named(name) {
                Some(section) => Command::Stats(section),
                None => Command::Reply(Some("ERROR")),
            },
        }),
        // Admin features kai does not have, answered as memcached answers them disabled.
        b"cache_memlimit" if n == 2 || n == 3 => {
            frame(match parse_u32(words.get(1).unwrap_or_default()) {
                Some(megabytes) if megabytes < 8 => Command::Reply(
                    (!words.noreply())
                        .then_some("MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"),
                ),
                Some(megabytes) => Command::MemoryLimit {
                    megabytes: u64::from(megabytes),
                    noreply: words.noreply(),
                },
                None => Command::Reply((!words.noreply()).then_some("ERROR")),
            })
        }
        b"shutdown" => frame(Command::Reply(Some("ERROR: shutdown not enabled"))),
        b"lru_crawler" if n >= 2 => {
            frame(Command::Reply(Some("CLIENT_ERROR lru crawler disabled")))
        }
        b"slabs" if n >= 3 && words.get(1) == Some(b"reassign") => frame(Command::Reply(Some(
            "CLIENT_ERROR slab reassignment disabled",
        ))),
        b"slabs" if n >= 3 && words.get(1) == Some(b"automove") => frame(slabs_automove(&words)),
        b"version" => frame(Command::Version),
        b"quit" => frame(Command::Quit),
        b"verbosity" if n == 2 || n == 3 => {
            let noreply = words.noreply();
            frame(match parse_u32(words.get(1).unwrap_or_default()) {
                Some(_) => Command::Verbosity { noreply },
                None => Command::Reply((!noreply).then_some(BAD_FORMAT)),
            })
        }
        _ if MetaVerb::named(name).is_some() => {
            let verb = MetaVerb::named(name).expect("matched");
            meta(buf, line, line_end, verb, max_item_size)
        }
        _ if n > 1 && words.last.starts_with(b"HTTP/") => frame(Command::HttpRequest),
        _ => frame(Command::Reply(Some("ERROR"))),
    }
}

/// A meta command line (and an `ms` data block).
fn meta<'a>(
    buf: &'a [u8],
    line: &'a [u8],
    line_end: usize,
    verb: MetaVerb,
    max_item_size: usize,
) -> Parsed<'a> {
    // A few words past memcached's limit of 20 tokens are enough to refuse a longer line.
    let mut words: [&[u8]; 24] = [&[]; 24];
    let mut count = 0;
    for word in line.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        if count == words.len() {
            break;
        }
        words[count] = word;
        count += 1;
    }
    let words = &words[..count];
    let frame = |command, consumed, swallow| {
        Parsed::Frame(Frame {
            command,
            consumed,
            swallow,
        })
    };
    let request = match meta::parse::parse(verb, words, line) {
        Line::Noop => return frame(Command::Meta(Meta::Noop), line_end, 0),
        Line::Debug(key) => return frame(Command::Meta(Meta::Debug(key)), line_end, 0),
        Line::Refused { reply, swallow } => {
            return frame(Command::Reply(Some(reply)), line_end, swallow.unwrap_or(0))
        }
        Line::Request(request) => request,
    };
    if verb != MetaVerb::Set {
        let command = Command::Meta(Meta::Request { request, data: &[] });
        return frame(command, line_end, 0);
    }
    let length = Line::data_len(words).expect("checked by the meta parser");
    if length > max_item_size {
        return frame(
            Command::Meta(Meta::TooLarge(request)),
            line_end,
            length as u64 + 2,
        );
    }
    let total = line_end + length + 2;
    if buf.len() < total {
        return Parsed::Incomplete { need: total };
    }
    if &buf[line_end + length..total] != b"\r\n" {
        return frame(Command::Reply(Some(BAD_CHUNK)), total, 0);
    }
    let data = &buf[line_end..line_end + length];
    frame(Command::Meta(Meta::Request { request, data }), total, 0)
}

fn line_limit(line: &[u8]) -> usize {
    let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    let command = &line[start..];
    let is_retrieval = [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|prefix| command.starts_with(prefix));
    if is_retrieval {
        MAX_GET_LINE
    } else {
        MAX_LINE
    }
}

fn retrieval<'a>(
    line: &'a [u8],
    words: &Words<'a>,
    first_key: usize,
    with_cas: bool,
    touch: Option<i64>,
) -> Command<'a> {
    // Keys are re-split lazily from the line; here they are only validated. Like memcached,
    // one bad key fails the whole request, with no partial VALUE output.
    let keys = match first_key < words.len() {
        true => &line[words.offset(first_key)..],
        false => &[],
    };
    for key in keys.split(|&b| b == b' ').filter(|key| !key.is_empty()) {
        if !valid_key(key) {
            return Command::Reply(Some(BAD_FORMAT));
        }
    }
    Command::Retrieve {
        keys: Keys(keys),
        with_cas,
        touch,
    }
}

fn storage<'a>(
    buf: &'a [u8],
    line_end: usize,
    words: &Words<'a>,
    is_cas: bool,
    max_item_size: usize,
) -> Parsed<'a> {
    let noreply = words.noreply();
    let reply = |text: &'static str, swallow: u64| {
        Parsed::Frame(Frame {
            command: Command::Reply((!noreply).then_some(text)),
            consumed: line_end,
            swallow,
        })
    };
    let Some(length) = parse_i64(words.get(4).unwrap_or_default())
        .filter(|&len| (0..=i64::from(i32::MAX) - 2).contains(&len))
    else {
        return reply(BAD_FORMAT, 0);
    };
    let length = length as usize;
    let swallow = length as u64 + 2;
    let key = words.get(1).unwrap_or_default();
    let flags = parse_u32(words.get(2).unwrap_or_default());
    let exptime = parse_i64(words.get(3).unwrap_or_default());
    let cas = match is_cas {
        true => parse_u64(words.get(5).unwrap_or_default()).map(Some),
        false => Some(None),
    };
    let (Some(flags), Some(exptime), Some(cas), true) = (flags, exptime, cas, valid_key(key))
    else {
        return reply(BAD_FORMAT, swallow);
    };
    let mode = match words.get(0).unwrap_or_default() {
        b"add" => StoreMode::Add,
        b"replace" => StoreMode::Replace,
        b"append" => StoreMode::Append,
        b"prepend" => StoreMode::Prepend,
        _ => StoreMode::Set,
    };
    if length > max_item_size {
        let unlink = mode == StoreMode::Set && cas.is_none();
        return Parsed::Frame(Frame {
            command: Command::TooLarge {
                key,
                unlink,
                noreply,
            },
            consumed: line_end,
            swallow,
        });
    }
    let total = line_end + length + 2;
    if buf.len() < total {
        return Parsed::Incomplete { need: total };
    }
    if &buf[line_end + length..total] != b"\r\n" {
        return Parsed::Frame(Frame {
            command: Command::Reply((!noreply).then_some(BAD_CHUNK)),
            consumed: total,
            swallow: 0,
        });
    }
    let data = &buf[line_end..line_end + length];
    Parsed::Frame(Frame {
        command: Command::Store {
            mode,
            cas,
            key,
            flags,
            exptime,
            data,
            noreply,
        },
        consumed: total,
        swallow: 0,
    })
}

fn delete<'a>(words: &Words<'a>) -> Command<'a> {
    let key = words.get(1).unwrap_or_default();
    let noreply = words.noreply();
    let hold_is_zero = words.get(2) == Some(b"0");
    let valid = match words.len() {
        2 => true,
        3 => hold_is_zero || noreply,
        _ => hold_is_zero && noreply,
    };
    if !valid {
        // memcached's noreply silences errors as well.
        return Command::Reply((!noreply).then_some(BAD_DELETE));
    }
    if !valid_key(key) {
        return Command::Reply((!noreply).then_some(BAD_FORMAT));
    }
    Command::Delete { key, noreply }
}

fn arith<'a>(words: &Words<'a>, incr: bool) -> Command<'a> {
    let key = words.get(1).unwrap_or_default();
    let noreply = words.noreply();
    if !valid_key(key) {
        return Command::Reply((!noreply).then_some(BAD_FORMAT));
    }
    match parse_u64(words.get(2).unwrap_or_default()) {
        Some(delta) => Command::Arith {
            incr,
            key,
            delta,
            noreply,
        },
        None => Command::Reply((!noreply).then_some(BAD_DELTA)),
    }
}

fn touch<'a>(words: &Words<'a>) -> Command<'a> {
    let key = words.get(1).unwrap_or_default();
    let noreply = words.noreply();
    if !valid_key(key) {
        return Command::Reply((!noreply).then_some(BAD_FORMAT));
    }
    match parse_i64(words.get(2).unwrap_or_default()) {
        Some(exptime) => Command::Touch {
            key,
            exptime,
            noreply,
        },
        None => Command::Reply((!noreply).then_some(BAD_EXPTIME)),
    }
}

/// `slabs automove`: kai has one size class, so nothing ever moves, but the setting is
/// checked and acknowledged as memcached does (tools set it at start-up).
fn slabs_automove<'a>(words: &Words<'a>) -> Command<'a> {
    let noreply = words.noreply();
    let reply = match words.get(2).unwrap_or_default() {
        b"ratio" => match words
            .get(3)
            .map(|w| std::str::from_utf8(w).map(str::parse::<f64>))
        {
            Some(Ok(Ok(_))) => "OK",
            _ => "ERROR",
        },
        level => match parse_u32(level) {
            Some(0..=2) => "OK",
            Some(_) => "ERROR",
            None => BAD_FORMAT,
        },
    };
    Command::Reply((!noreply).then_some(reply))
}

fn flush_all<'a>(words: &Words<'a>) -> Command<'a> {
    let noreply = words.noreply();
    let delay = match words.get(1) {
        None | Some(b"noreply") => Some(0),
        Some(word) => parse_i64(word),
    };
    match delay {
        Some(delay) => Command::FlushAll { delay, noreply },
        None => Command::Reply((!noreply).then_some(BAD_EXPTIME)),
    }
}

/// The space-separated words of a command line. Commands have at most 8 words; longer
/// lines (only retrievals are legal) keep their first 8 and the total count.
struct Words<'a> {
    words: [&'a [u8]; 8],
    offsets: [usize; 8],
    count: usize,
    last: &'a [u8],
}

impl<'a> Words<'a> {
    fn split(line: &'a [u8]) -> Self {
        let mut words = Words {
            words: [&[]; 8],
            offsets: [0; 8],
            count: 0,
            last: &[],
        };
        let mut start = 0;
        // memchr finds the spaces many bytes a step; a split by byte took 400 instructions
        // of a set's line.
        let ends = memchr::memchr_iter(b' ', line).chain(std::iter::once(line.len()));
        for end in ends {
            let (offset, word) = (start, &line[start..end]);
            start = end + 1;
            if word.is_empty() {
                continue;
            }
            if words.count < 8 {
                words.words[words.count] = word;
                words.offsets[words.count] = offset;
            }
            words.count += 1;
            words.last = word;
        }
        words
    }

    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> Option<&'a [u8]> {
        (index < self.count.min(8)).then(|| self.words[index])
    }

    /// Byte offset of word `index` within the line.
    fn offset(&self, index: usize) -> usize {
        self.offsets[index]
    }

    /// memcached's rule: the request is silent when its last word is exactly "noreply".
    fn noreply(&self) -> bool {
        self.count > 1 && self.last == b"noreply"
    }
}

fn parse_u32(text: &[u8]) -> Option<u32> {
    parse_u64(text).and_then(|v| u32::try_from(v).ok())
}

/// Feeds `chunks` to the parser the way a connection does (buffer, parse, consume, swallow)
/// and describes every request parsed, ending with "line too long" if that closes the
/// stream. The property tests and the fuzz target compare split and whole streams with it;
/// it also asserts that the parser always makes progress.
pub fn replay<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max_item_size: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buffer = Vec::new();
    let mut swallow = 0u64;
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        loop {
            let dropped = swallow.min(buffer.len() as u64) as usize;
            buffer.drain(..dropped);
            swallow -= dropped as u64;
            if swallow > 0 {
                break;
            }
            match parse(&buffer, max_item_size) {
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
                Parsed::LineTooLong => {
                    seen.push("line too long".into());
                    return seen;
                }
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests;
