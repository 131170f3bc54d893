//! The text protocol's lexical rules, shared by the text and meta parsers: what a key may
//! hold, how numbers are read, and the error strings both answer.

/// memcached's KEY_MAX_LENGTH.
pub const MAX_KEY_LEN: usize = 250;
pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";

/// memcached keys: 1..=250 bytes. Words are split on spaces, so the bytes left to refuse
/// are the ones that break the line protocol: CR, LF and NUL (which memcached mistakes for
/// the end of the line). Other control bytes stay legal, as in memcached: load generators
/// such as memaslap put binary prefixes in their keys.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        // A fold, not `any`: without an early exit the compiler checks many bytes a step.
        && !key.iter().fold(false, |bad, &b| bad | matches!(b, b'\r' | b'\n' | 0))
}

fn digits(text: &[u8]) -> Option<&[u8]> {
    let text = text.strip_prefix(b"+").unwrap_or(text);
    (!text.is_empty() && text.iter().all(u8::is_ascii_digit)).then_some(text)
}

pub fn parse_u64(text: &[u8]) -> Option<u64> {
    digits(text)?.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A signed decimal within i32 range, as memcached's safe_strtol accepts for exptimes.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, rest) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if negative && rest.starts_with(b"+") {
        return None;
    }
    let magnitude = i64::try_from(parse_u64(rest)?).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    (i64::from(i32::MIN)..=i64::from(i32::MAX))
        .contains(&value)
        .then_some(value)
}
