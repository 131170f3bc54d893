//! Reply encoding: memcached's response lines, written into a connection's output buffer.

use crate::node::Item;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Replies are flushed once this much is queued, bounding memory for huge multi-gets.
pub const FLUSH_THRESHOLD: usize = 256 * 1024;

/// Writes `out` to `stream` once it holds `FLUSH_THRESHOLD` bytes. Returns whether it did.
pub async fn flush_if_full<W: AsyncWrite + Unpin>(
    out: &mut Vec<u8>,
    stream: &mut W,
) -> std::io::Result<bool> {
    if out.len() < FLUSH_THRESHOLD {
        return Ok(false);
    }
    stream.write_all(out).await?;
    out.clear();
    Ok(true)
}

pub fn line(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `VALUE <key> <flags> <bytes> [<cas unique>]\r\n<data>\r\n`
pub fn value(out: &mut Vec<u8>, key: &[u8], item: &Item, with_cas: bool) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    number(out, u64::from(item.flags));
    out.push(b' ');
    number(out, item.value.len() as u64);
    if with_cas {
        out.push(b' ');
        number(out, item.cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&item.value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn encodes_values_and_numbers() {
        let mut out = Vec::new();
        let item = Item {
            value: Bytes::from_static(b"a\r\nb"),
            flags: 42,
            cas: 7,
            expires_at: 0,
            written_secs: 0,
            stale: false,
            recache_claimed: false,
        };
        value(&mut out, b"k", &item, true);
        number(&mut out, 0);
        line(&mut out, "");
        number(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"VALUE k 42 4 7\r\na\r\nb\r\n0\r\n18446744073709551615"
        );
    }
}
