//! The binary request parser: pure and incremental, like the text one. It reads the 24-byte
//! header, checks every length against the opcode's shape and the limits before waiting for
//! the body, and only then borrows key, extras and value from the buffer.
//!
//! The checks and their order follow memcached 1.6 (`proto_bin.c`): a header whose key and
//! extras overrun the body, or whose body exceeds 1 GiB, is answered and the connection
//! closed; so is a key over 250 bytes or extras/key/body lengths the opcode does not take.
//! Two deliberate tightenings: Stat and the touch family must carry nothing beyond their key
//! and extras (memcached would parse the rest as the next request), and an unknown opcode's
//! body is discarded exactly (memcached discards its extras and key twice).

use crate::memcache::parse::MAX_KEY_LEN;
use crate::ops::StoreMode;

pub const HEADER_LEN: usize = 24;
pub const REQUEST_MAGIC: u8 = 0x80;
pub const RESPONSE_MAGIC: u8 = 0x81;
/// memcached's ITEM_SIZE_MAX_UPPER_LIMIT: no request body may be longer.
pub const MAX_BODY: u32 = 1 << 30;
/// memcached's MAX_SASL_MECH_LEN.
pub const MAX_SASL_MECHANISM: usize = 32;
/// A SASL PLAIN message is a user and a password: a few hundred bytes at most.
pub const MAX_SASL_DATA: usize = 4096;

/// Opcodes (memcached's protocol_binary.h).
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses, with the body memcached sends with each error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    InvalidArguments = 0x04,
    NotStored = 0x05,
    NonNumeric = 0x06,
    AuthError = 0x20,
    UnknownCommand = 0x81,
    /// kai's answer when its store failed (memcached never sends it).
    InternalError = 0x84,
    /// kai's answer when the cluster could not serve the request (no quorum, not joined).
    TemporaryFailure = 0x86,
}

impl Status {
    pub fn message(self) -> &'static str {
        match self {
            Status::Success => "",
            Status::KeyNotFound => "Not found",
            Status::KeyExists => "Data exists for key.",
            Status::TooLarge => "Too large.",
            Status::InvalidArguments => "Invalid arguments",
            Status::NotStored => "Not stored.",
            Status::NonNumeric => "Non-numeric server-side value for incr or decr",
            Status::AuthError => "Auth failure.",
            Status::UnknownCommand => "Unknown command",
            Status::InternalError => "Internal error",
            Status::TemporaryFailure => "Temporary failure",
        }
    }
}

/// The fields of a request header a response echoes or a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub opcode: u8,
    pub key_len: u16,
    pub extras_len: u8,
    pub body_len: u32,
    pub opaque: u32,
    pub cas: u64,
}

impl Header {
    fn read(buf: &[u8]) -> Header {
        let u16_at = |at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        Header {
            opcode: buf[1],
            key_len: u16_at(2),
            extras_len: buf[4],
            body_len: u32_at(8),
            opaque: u32_at(12),
            cas: u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Get, GetQ, GetK, GetKQ; with `touch` (the new exptime) GAT, GATQ, GATK, GATKQ.
    Get {
        key: &'a [u8],
        touch: Option<u32>,
        quiet: bool,
        with_key: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: u32,
    },
    /// Set, Add, Replace, Append, Prepend and their quiet forms; the cas guard is the
    /// header's cas (0: none).
    Store {
        mode: StoreMode,
        key: &'a [u8],
        flags: u32,
        exptime: u32,
        value: &'a [u8],
        quiet: bool,
    },
    Delete {
        key: &'a [u8],
        quiet: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        initial: u64,
        /// 0xffffffff: a missing key is not created.
        exptime: u32,
        quiet: bool,
    },
    Quit {
        quiet: bool,
    },
    Flush {
        delay: u32,
        quiet: bool,
    },
    Noop,
    Version,
    Stat {
        group: &'a [u8],
    },
    SaslListMechanisms,
    SaslAuth {
        mechanism: &'a [u8],
        data: &'a [u8],
    },
    SaslStep {
        mechanism: &'a [u8],
        data: &'a [u8],
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Incomplete {
        need: usize,
    },
    Request {
        header: Header,
        request: Request<'a>,
        consumed: usize,
    },
    /// Answer `status`, drop `consumed` bytes and then `swallow` more (which may not have
    /// arrived), and close the connection after the answer when `close`.
    Refused {
        header: Header,
        status: Status,
        consumed: usize,
        swallow: u64,
        close: bool,
        /// A refused (too large) set also drops the key's old value, as memcached does,
        /// so a stale value cannot be read.
        unlink: Option<&'a [u8]>,
    },
    /// Not a binary request (bad magic): close without an answer.
    Invalid {
        magic: u8,
    },
}

/// Whether a request with these lengths has the shape its opcode takes (memcached's
/// dispatch checks); `None` for an opcode kai does not know.
fn shape_ok(opcode: u8, extras: usize, key: usize, body: usize) -> Option<bool> {
    use opcode::*;
    let bare = extras == 0 && key == 0 && body == 0;
    let keyed = |ext: usize| key > 0 && extras == ext && body == key + ext;
    Some(match opcode {
        VERSION | NOOP | QUIT | QUITQ | SASL_LIST_MECHS => bare,
        FLUSH | FLUSHQ => key == 0 && body == extras && (extras == 0 || extras == 4),
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ => extras == 8 && key > 0,
        APPEND | APPENDQ | PREPEND | PREPENDQ => extras == 0 && key > 0,
        GET | GETQ | GETK | GETKQ | DELETE | DELETEQ => keyed(0),
        INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => keyed(20),
        TOUCH | GAT | GATQ | GATK | GATKQ => keyed(4),
        STAT => extras == 0 && body == key,
        SASL_AUTH | SASL_STEP => extras == 0 && key > 0,
        _ => return None,
    })
}

/// Parses the request at the front of `buf`; `max_item_size` bounds stored values.
pub fn parse(buf: &[u8], max_item_size: usize) -> Parsed<'_> {
    if buf.len() < HEADER_LEN {
        return Parsed::Incomplete { need: HEADER_LEN };
    }
    if buf[0] != REQUEST_MAGIC {
        return Parsed::Invalid { magic: buf[0] };
    }
    let header = Header::read(buf);
    let (extras_len, key_len) = (usize::from(header.extras_len), usize::from(header.key_len));
    let body_len = header.body_len as usize;
    let refuse = |status, consumed, swallow, close| Parsed::Refused {
        header,
        status,
        consumed,
        swallow,
        close,
        unlink: None,
    };
    if key_len + extras_len > body_len {
        return refuse(Status::UnknownCommand, HEADER_LEN, 0, true);
    }
    if header.body_len > MAX_BODY || key_len > MAX_KEY_LEN {
        return refuse(Status::InvalidArguments, HEADER_LEN, 0, true);
    }
    match shape_ok(header.opcode, extras_len, key_len, body_len) {
        None => return refuse(Status::UnknownCommand, HEADER_LEN, body_len as u64, false),
        Some(false) => return refuse(Status::InvalidArguments, HEADER_LEN, 0, true),
        Some(true) => {}
    }
    let head_len = HEADER_LEN + extras_len + key_len;
    let value_len = body_len - extras_len - key_len;
    let limit = match header.opcode {
        opcode::SASL_AUTH | opcode::SASL_STEP if key_len > MAX_SASL_MECHANISM => {
            Some(Status::InvalidArguments)
        }
        opcode::SASL_AUTH | opcode::SASL_STEP if value_len > MAX_SASL_DATA => {
            Some(Status::InvalidArguments)
        }
        _ if value_len > max_item_size => Some(Status::TooLarge),
        _ => None,
    };
    if let Some(status) = limit {
        // Refused on its lengths alone: the value is discarded as it arrives.
        if buf.len() < head_len {
            return Parsed::Incomplete { need: head_len };
        }
        let is_set = matches!(header.opcode, opcode::SET | opcode::SETQ);
        return Parsed::Refused {
            header,
            status,
            consumed: head_len,
            swallow: value_len as u64,
            close: false,
            unlink: is_set.then(|| &buf[HEADER_LEN + extras_len..head_len]),
        };
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Parsed::Incomplete { need: total };
    }
    let extras = &buf[HEADER_LEN..HEADER_LEN + extras_len];
    let key = &buf[HEADER_LEN + extras_len..head_len];
    let value = &buf[head_len..total];
    Parsed::Request {
        header,
        request: request(header.opcode, extras, key, value),
        consumed: total,
    }
}

/// Builds the request of a header `shape_ok` accepted.
fn request<'a>(op: u8, extras: &[u8], key: &'a [u8], value: &'a [u8]) -> Request<'a> {
    use opcode::*;
    let u32_at = |at: usize| u32::from_be_bytes(extras[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(extras[at..at + 8].try_into().expect("8 bytes"));
    let store = |mode, quiet| Request::Store {
        mode,
        key,
        flags: if extras.len() == 8 { u32_at(0) } else { 0 },
        exptime: if extras.len() == 8 { u32_at(4) } else { 0 },
        value,
        quiet,
    };
    let arith = |incr, quiet| Request::Arith {
        incr,
        key,
        delta: u64_at(0),
        initial: u64_at(8),
        exptime: u32_at(16),
        quiet,
    };
    let get = |touch, quiet, with_key| Request::Get {
        key,
        touch,
        quiet,
        with_key,
    };
    let gat = |quiet, with_key| get(Some(u32_at(0)), quiet, with_key);
    match op {
        GET | GETQ | GETK | GETKQ => {
            get(None, matches!(op, GETQ | GETKQ), matches!(op, GETK | GETKQ))
        }
        GAT => gat(false, false),
        GATQ => gat(true, false),
        GATK => gat(false, true),
        GATKQ => gat(true, true),
        TOUCH => Request::Touch {
            key,
            exptime: u32_at(0),
        },
        SET => store(StoreMode::Set, false),
        SETQ => store(StoreMode::Set, true),
        ADD => store(StoreMode::Add, false),
        ADDQ => store(StoreMode::Add, true),
        REPLACE => store(StoreMode::Replace, false),
        REPLACEQ => store(StoreMode::Replace, true),
        APPEND => store(StoreMode::Append, false),
        APPENDQ => store(StoreMode::Append, true),
        PREPEND => store(StoreMode::Prepend, false),
        PREPENDQ => store(StoreMode::Prepend, true),
        DELETE | DELETEQ => Request::Delete {
            key,
            quiet: op == DELETEQ,
        },
        INCREMENT => arith(true, false),
        INCREMENTQ => arith(true, true),
        DECREMENT => arith(false, false),
        DECREMENTQ => arith(false, true),
        QUIT | QUITQ => Request::Quit { quiet: op == QUITQ },
        FLUSH | FLUSHQ => Request::Flush {
            delay: if extras.len() == 4 { u32_at(0) } else { 0 },
            quiet: op == FLUSHQ,
        },
        NOOP => Request::Noop,
        VERSION => Request::Version,
        STAT => Request::Stat { group: key },
        SASL_LIST_MECHS => Request::SaslListMechanisms,
        SASL_AUTH => Request::SaslAuth {
            mechanism: key,
            data: value,
        },
        SASL_STEP => Request::SaslStep {
            mechanism: key,
            data: value,
        },
        _ => unreachable!("shape_ok accepts only the opcodes above"),
    }
}

/// Feeds `chunks` to the parser the way a connection does (buffer, parse, consume, swallow)
/// and describes every request parsed or refused, ending at the first one that closes the
/// connection. The property tests and the fuzz target compare split and whole streams with
/// it; it also asserts that the parser always makes progress and never claims bytes it was
/// not given.
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
            if swallow > 0 || buffer.is_empty() {
                break;
            }
            match parse(&buffer, max_item_size) {
                Parsed::Incomplete { need } => {
                    assert!(need > buffer.len());
                    break;
                }
                Parsed::Request {
                    header,
                    request,
                    consumed,
                } => {
                    assert!(consumed >= HEADER_LEN && consumed <= buffer.len());
                    seen.push(format!("{header:?} {request:?}"));
                    buffer.drain(..consumed);
                }
                Parsed::Refused {
                    header,
                    status,
                    consumed,
                    swallow: more,
                    close,
                    unlink,
                } => {
                    assert!(consumed >= HEADER_LEN && consumed <= buffer.len());
                    seen.push(format!("{header:?} refused {status:?} {unlink:?}"));
                    if close {
                        return seen;
                    }
                    buffer.drain(..consumed);
                    swallow = more;
                }
                Parsed::Invalid { magic } => {
                    seen.push(format!("invalid magic {magic}"));
                    return seen;
                }
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests;
