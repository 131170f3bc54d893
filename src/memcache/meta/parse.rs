//! The meta commands' request lines (`mg ms md ma mn me`), parsed as memcached 1.6 parses
//! them: the same flag set for every command, the same checks in the same order and the
//! same error strings. Pure, like the text parser that hands it the line: the caller has
//! already found the line's end and reads the `ms` data block with [`Line::data_len`].

use crate::memcache::token::{parse_i64, parse_u64, valid_key, BAD_FORMAT, MAX_KEY_LEN};
use base64::Engine;
use std::borrow::Cow;

/// memcached's MFLAG_MAX_OPT_LENGTH: a command line holds fewer tokens than this, counting
/// the empty one memcached's tokenizer ends with.
const MAX_TOKENS: usize = 20;
/// Longest opaque token, its `O` included.
pub const MAX_OPAQUE_LEN: usize = 32;
pub const OPAQUE_TOO_LONG: &str = "CLIENT_ERROR opaque token too long";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Set,
    Delete,
    Arith,
    Noop,
    Debug,
}

impl Verb {
    pub fn named(name: &[u8]) -> Option<Verb> {
        Some(match name {
            b"mg" => Verb::Get,
            b"ms" => Verb::Set,
            b"md" => Verb::Delete,
            b"ma" => Verb::Arith,
            b"mn" => Verb::Noop,
            b"me" => Verb::Debug,
            _ => return None,
        })
    }
}

/// A key as the client named it: decoded from base64 under the `b` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// The token as sent (echoed by `k`).
    pub token: &'a [u8],
    pub base64: bool,
}

/// What the flags of one request ask for. Flags that only choose what the reply shows
/// (`k s t c f h l O`) are read again from `tokens`, in the order sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags<'a> {
    /// The flag tokens, space separated, as sent.
    pub tokens: &'a [u8],
    pub value: bool,
    pub quiet: bool,
    pub no_bump: bool,
    /// `h` or `l`: the access history is wanted.
    pub history: bool,
    pub invalidate: bool,
    pub base64: bool,
    pub vivify: Option<i64>,
    pub touch: Option<i64>,
    pub recache: Option<i64>,
    pub client_flags: u32,
    pub compare_cas: Option<u64>,
    pub mode: Option<u8>,
    pub initial: u64,
    pub delta: u64,
}

impl<'a> Flags<'a> {
    /// Every flag token, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.tokens.split(|&b| b == b' ').filter(|t| !t.is_empty())
    }
}

/// A meta request that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub verb: Verb,
    pub key: Key<'a>,
    pub flags: Flags<'a>,
}

/// One meta command line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Noop,
    /// `me`: only the key (and `b`) matter.
    Debug(Key<'a>),
    Request(Request<'a>),
    /// Refused with this reply. For `ms`, `swallow` is the data block's length (with its
    /// CRLF) when it could be read from the line, so the value never runs as commands.
    Refused {
        reply: &'static str,
        swallow: Option<u64>,
    },
}

impl Line<'_> {
    /// For an `ms` line, the length its data block declares (without the CRLF).
    pub fn data_len(words: &[&[u8]]) -> Option<usize> {
        let length = parse_i64(words.get(2)?)?;
        (0..=i64::from(i32::MAX) - 2)
            .contains(&length)
            .then_some(length as usize)
    }
}

fn refuse(reply: &'static str) -> Line<'static> {
    Line::Refused {
        reply,
        swallow: None,
    }
}

/// Parses the words of one meta command line (`words[0]` is the command).
pub fn parse<'a>(verb: Verb, words: &[&'a [u8]], line: &'a [u8]) -> Line<'a> {
    let mc_tokens = words.len() + 1;
    match verb {
        Verb::Noop => return Line::Noop,
        Verb::Debug => return debug(words),
        _ if mc_tokens < 3 => return refuse("ERROR"),
        _ => {}
    }
    // ms refusals swallow the data block once its length is known.
    let swallow = match verb {
        Verb::Set => Line::data_len(words).map(|len| len as u64 + 2),
        _ => None,
    };
    let refused = |reply| Line::Refused { reply, swallow };
    if words[1].len() > MAX_KEY_LEN {
        return refused(BAD_FORMAT);
    }
    if verb == Verb::Set && mc_tokens == 3 {
        return refused(BAD_FORMAT);
    }
    if mc_tokens > MAX_TOKENS {
        return refused(match verb {
            Verb::Get => "CLIENT_ERROR options flags are too long",
            _ => "CLIENT_ERROR options flags too long",
        });
    }
    if verb == Verb::Set && swallow.is_none() {
        return refused(BAD_FORMAT);
    }
    let first_flag = if verb == Verb::Set { 3 } else { 2 };
    let tokens = match words.get(first_flag) {
        Some(first) => {
            let start = first.as_ptr() as usize - line.as_ptr() as usize;
            &line[start..]
        }
        None => &[],
    };
    let (flags, key) = match preparse(words[1], tokens) {
        Ok(parsed) => parsed,
        Err(reply) => {
            return refused(match verb {
                Verb::Get | Verb::Set => reply,
                _ => "CLIENT_ERROR invalid or duplicate flag",
            })
        }
    };
    if flags
        .iter()
        .any(|t| t[0] == b'O' && t.len() > MAX_OPAQUE_LEN)
    {
        return refused(OPAQUE_TOO_LONG);
    }
    let valid_mode = match (verb, flags.mode) {
        (_, None) => true,
        (Verb::Set, Some(mode)) => b"EAPRS".contains(&mode),
        (Verb::Arith, Some(mode)) => b"I+D-".contains(&mode),
        _ => true,
    };
    if !valid_mode {
        return refused(match verb {
            Verb::Set => "CLIENT_ERROR invalid mode for ms M token",
            _ => "CLIENT_ERROR invalid mode for ma M token",
        });
    }
    // kai's keys are never empty nor hold NUL, CR or LF, base64 or not.
    if !valid_key(&key.bytes) {
        return refused(BAD_FORMAT);
    }
    Line::Request(Request { verb, key, flags })
}

fn debug<'a>(words: &[&'a [u8]]) -> Line<'a> {
    let Some(&token) = words.get(1).filter(|k| k.len() <= MAX_KEY_LEN) else {
        return refuse(BAD_FORMAT);
    };
    let base64 = words.get(2) == Some(&&b"b"[..]);
    let bytes = match base64 {
        true => match decode_key(token) {
            Some(bytes) => Cow::Owned(bytes),
            None => return refuse(BAD_FORMAT),
        },
        false => Cow::Borrowed(token),
    };
    if !valid_key(&bytes) {
        return refuse(BAD_FORMAT);
    }
    Line::Debug(Key {
        bytes,
        token,
        base64,
    })
}

fn decode_key(token: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .filter(|key| !key.is_empty())
}

/// memcached's flag pass: a repeated or unknown flag stops at once; a bad token marks the
/// request failed and the pass goes on (the last such error is the one reported).
fn preparse<'a>(key: &'a [u8], tokens: &'a [u8]) -> Result<(Flags<'a>, Key<'a>), &'static str> {
    let mut flags = Flags {
        tokens,
        delta: 1,
        ..Flags::default()
    };
    let mut seen = [false; 128];
    let mut decoded: Option<Vec<u8>> = None;
    let mut failure: Option<&'static str> = None;
    let mut failed = false;
    let mut fail = |error: Option<&'static str>| {
        failed = true;
        if error.is_some() {
            failure = error;
        }
    };
    const BAD_TOKEN: Option<&str> = Some("CLIENT_ERROR bad token in command line format");
    for token in flags.iter() {
        let flag = token[0];
        if flag >= 127 || seen[flag as usize] {
            return Err("CLIENT_ERROR duplicate flag");
        }
        seen[flag as usize] = true;
        let argument = &token[1..];
        match flag {
            b'b' => {
                flags.base64 = true;
                match decode_key(key) {
                    Some(bytes) => decoded = Some(bytes),
                    None => fail(Some("CLIENT_ERROR error decoding key")),
                }
            }
            b'N' => match parse_i64(argument) {
                Some(ttl) => flags.vivify = Some(ttl),
                None => fail(BAD_TOKEN),
            },
            b'T' => match parse_i64(argument) {
                Some(ttl) => flags.touch = Some(ttl),
                None => fail(BAD_TOKEN),
            },
            b'R' => match parse_i64(argument) {
                Some(ttl) => flags.recache = Some(ttl),
                None => fail(BAD_TOKEN),
            },
            b'l' | b'h' => flags.history = true,
            b'O' | b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' => {}
            b'v' => flags.value = true,
            b'u' => flags.no_bump = true,
            b'q' => flags.quiet = true,
            b'F' => match parse_u64(argument).and_then(|n| u32::try_from(n).ok()) {
                Some(client_flags) => flags.client_flags = client_flags,
                None => fail(None),
            },
            b'C' => match parse_u64(argument) {
                Some(cas) => flags.compare_cas = Some(cas),
                None => fail(BAD_TOKEN),
            },
            b'M' => match argument {
                [mode] => flags.mode = Some(*mode),
                _ => fail(Some("CLIENT_ERROR incorrect length for M token")),
            },
            b'J' => match parse_u64(argument) {
                Some(initial) => flags.initial = initial,
                None => fail(Some("CLIENT_ERROR invalid numeric initial value")),
            },
            b'D' => match parse_u64(argument) {
                Some(delta) => flags.delta = delta,
                None => fail(Some("CLIENT_ERROR invalid numeric delta value")),
            },
            b'I' => flags.invalidate = true,
            _ => return Err("CLIENT_ERROR invalid flag"),
        }
    }
    if failed {
        return Err(failure.unwrap_or(BAD_FORMAT));
    }
    let key = Key {
        base64: decoded.is_some(),
        bytes: decoded.map_or(Cow::Borrowed(key), Cow::Owned),
        token: key,
    };
    Ok((flags, key))
}

#[cfg(test)]
mod tests;
