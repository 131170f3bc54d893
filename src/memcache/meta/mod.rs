//! memcached's meta commands (`mg ms md ma mn me`), which share the text protocol's
//! connections and framing: `parse` reads a request line, `execute` runs it on the node and
//! writes memcached's reply codes and flags.

pub mod execute;
pub mod parse;

pub use parse::{Key, Request};

/// A complete meta request, its `ms` data block included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meta<'a> {
    Noop,
    Debug(Key<'a>),
    /// `mg`, `md`, `ma`; and `ms` with its data.
    Request {
        request: Request<'a>,
        data: &'a [u8],
    },
    /// An `ms` whose value exceeds `max_item_size`: refused, its data swallowed, and the
    /// key's old value dropped, as memcached does.
    TooLarge(Request<'a>),
}
