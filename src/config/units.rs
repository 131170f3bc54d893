//! Human-readable sizes ("1MiB") and durations ("5s") for kai.toml.
//!
//! Both accept a bare integer too (bytes, seconds), so `memory_limit = 0` works.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A byte count written as `"64MiB"`, `"1MB"`, `"512"` or a TOML integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A time span written as `"250ms"`, `"5s"`, `"10m"`, `"1h"`, `"1d"` or a TOML integer (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim()))
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text).ok_or_else(|| {
            format!("invalid size {text:?}: expected a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)")
        })?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "k" | "K" | "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "M" | "MB" => 1000 * 1000,
            "MiB" => 1 << 20,
            "G" | "GB" => 1000 * 1000 * 1000,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n % (1 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Span {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text).ok_or_else(|| {
            format!("invalid duration {text:?}: expected a number with a unit (ms, s, m, h, d)")
        })?;
        let millis: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" | "min" => 60 * 1000,
            "h" => 3600 * 1000,
            "d" => 86400 * 1000,
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ))
            }
        };
        number
            .checked_mul(millis)
            .map(|ms| Span(Duration::from_millis(ms)))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms != 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        if ms == 0 {
            write!(f, "0s")
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Accepts either a string (parsed by `parse`) or a non-negative integer (given to `from_int`).
struct TextOrInt<T> {
    what: &'static str,
    parse: fn(&str) -> Result<T, String>,
    from_int: fn(u64) -> Result<T, String>,
}

impl<T> de::Visitor<'_> for TextOrInt<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
        (self.from_int)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_int)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt {
            what: "a size such as \"64MiB\" or a byte count",
            parse: ByteSize::parse,
            from_int: |n| Ok(ByteSize(n)),
        })
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt {
            what: "a duration such as \"5s\" or \"250ms\"",
            parse: Span::parse,
            from_int: |n| {
                n.checked_mul(1000)
                    .map(|ms| Span(Duration::from_millis(ms)))
                    .ok_or_else(|| format!("duration {n}s is too large"))
            },
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("20MiB"), Ok(ByteSize(20 << 20)));
        assert_eq!(ByteSize::parse("1MB"), Ok(ByteSize(1_000_000)));
        assert_eq!(ByteSize::parse("0"), Ok(ByteSize(0)));
        assert_eq!(ByteSize::parse(" 512 B "), Ok(ByteSize(512)));
        assert!(ByteSize::parse("1XB").unwrap_err().contains("unknown unit"));
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("-1").is_err());
        assert!(ByteSize::parse("99999999999999999TiB").is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn spans() {
        assert_eq!(Span::parse("5s"), Ok(Span(Duration::from_secs(5))));
        assert_eq!(Span::parse("250ms"), Ok(Span(Duration::from_millis(250))));
        assert_eq!(Span::parse("1h"), Ok(Span(Duration::from_secs(3600))));
        assert_eq!(Span::parse("0s"), Ok(Span(Duration::ZERO)));
        assert!(Span::parse("5 fortnights").is_err());
        assert_eq!(Span(Duration::from_secs(3600)).to_string(), "1h");
        assert_eq!(Span(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Span(Duration::ZERO).to_string(), "0s");
    }
}
