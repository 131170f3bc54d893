//! RPC framing: a 4-byte big-endian length, then that many bytes of a postcard-encoded
//! message in the connection's peer protocol ([`Wire`]). A frame claiming more than `max_frame` bytes is refused before any of it is
//! buffered, so a hostile or confused peer cannot make a node allocate.

use bytes::{Buf, BufMut, BytesMut};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// docs/design.md ("Cluster"): frames over 64 MiB are refused.
pub const MAX_FRAME: usize = 64 << 20;
const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error(transparent)]
    Inexpressible(#[from] super::v3::Inexpressible),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A message with a layout per peer protocol.
pub trait Wire: Sized {
    /// Appends the message's bytes to `out`.
    fn encode_into(self, protocol: u32, out: &mut BytesMut) -> Result<(), FrameError>;
    fn decode(body: &[u8], protocol: u32) -> Result<Self, FrameError>;

    /// The message's bytes on their own (tests; connections use `encode_into`).
    #[cfg(test)]
    fn encode(self, protocol: u32) -> Result<Vec<u8>, FrameError> {
        let mut out = BytesMut::new();
        self.encode_into(protocol, &mut out)?;
        Ok(out.to_vec())
    }
}

/// postcard output straight into a connection's write buffer: no body of its own to
/// grow and copy (a 1 KiB reply's body grew through eight reallocations before).
struct Appending<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Appending<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// `value`'s postcard bytes appended to `out`.
pub(super) fn append<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    Ok(postcard::serialize_with_flavor(value, Appending(out))?)
}

/// Encodes and decodes messages of type `M` as length-prefixed postcard frames.
pub struct FrameCodec<M> {
    max_frame: usize,
    /// The peer protocol: the newest until the handshake settles the connection's.
    pub protocol: u32,
    message: PhantomData<fn() -> M>,
}

impl<M> FrameCodec<M> {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            protocol: super::message::PEER_PROTOCOL,
            message: PhantomData,
        }
    }
}

impl<M> Default for FrameCodec<M> {
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME)
    }
}

impl<M: Wire> Decoder for FrameCodec<M> {
    type Item = M;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<M>, FrameError> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if length > self.max_frame {
            return Err(FrameError::TooLarge(length, self.max_frame));
        }
        if src.len() < HEADER + length {
            src.reserve(HEADER + length - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let body = src.split_to(length);
        Ok(Some(M::decode(&body, self.protocol)?))
    }
}

impl<M: Wire> Encoder<M> for FrameCodec<M> {
    type Error = FrameError;

    fn encode(&mut self, message: M, dst: &mut BytesMut) -> Result<(), FrameError> {
        // The body goes after a length written once its size is known; a frame that fails
        // leaves the buffer as it found it.
        let start = dst.len();
        dst.put_u32(0);
        let encoded = message.encode_into(self.protocol, dst);
        let length = dst.len() - start - HEADER;
        if let Err(err) = encoded {
            dst.truncate(start);
            return Err(err);
        }
        if length > self.max_frame {
            dst.truncate(start);
            return Err(FrameError::TooLarge(length, self.max_frame));
        }
        dst[start..start + HEADER].copy_from_slice(&(length as u32).to_be_bytes());
        Ok(())
    }
}

/// Decodes a stream delivered in `parts`, the way a connection reads it: the messages (as
/// Debug text) and whether the stream ended in an error. The fuzz target and its
/// regression test check that a split stream decodes exactly as the whole.
pub fn replay<M: Wire + std::fmt::Debug>(parts: &[&[u8]], max_frame: usize) -> (Vec<String>, bool) {
    let mut codec = FrameCodec::<M>::new(max_frame);
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    for part in parts {
        buffer.extend_from_slice(part);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(message)) => messages.push(format!("{message:?}")),
                Ok(None) => break,
                Err(_) => return (messages, true),
            }
        }
    }
    (messages, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping(u64),
        Put { key: Vec<u8>, value: Vec<u8> },
    }

    impl Wire for Message {
        fn encode_into(self, _protocol: u32, out: &mut BytesMut) -> Result<(), FrameError> {
            append(&self, out)
        }

        fn decode(body: &[u8], _protocol: u32) -> Result<Self, FrameError> {
            Ok(postcard::from_bytes(body)?)
        }
    }

    fn encoded(messages: &[Message]) -> BytesMut {
        let mut codec = FrameCodec::<Message>::default();
        let mut out = BytesMut::new();
        for message in messages {
            codec.encode(message.clone(), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn round_trip_at_every_split() {
        let messages = [
            Message::Ping(7),
            Message::Put {
                key: b"k".to_vec(),
                value: vec![0xff; 300],
            },
        ];
        let wire = encoded(&messages);
        assert_eq!(&wire[..4], &[0, 0, 0, 2], "big-endian length of Ping(7)");
        for split in 0..=wire.len() {
            let mut codec = FrameCodec::<Message>::default();
            let mut buffer = BytesMut::from(&wire[..split]);
            let mut decoded = Vec::new();
            while let Some(message) = codec.decode(&mut buffer).unwrap() {
                decoded.push(message);
            }
            buffer.extend_from_slice(&wire[split..]);
            while let Some(message) = codec.decode(&mut buffer).unwrap() {
                decoded.push(message);
            }
            assert_eq!(decoded, messages, "split at {split}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut codec = FrameCodec::<Message>::default();
        let mut claim = BytesMut::from(&((MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        let err = codec.decode(&mut claim).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n, MAX_FRAME) if n == MAX_FRAME + 1));
        assert!(
            claim.capacity() < 1024,
            "nothing reserved for the claimed frame"
        );
        let mut small = FrameCodec::<Message>::new(16);
        let mut out = BytesMut::new();
        let big = Message::Put {
            key: vec![],
            value: vec![1; 64],
        };
        assert!(matches!(
            small.encode(big, &mut out),
            Err(FrameError::TooLarge(..))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = FrameCodec::<Message>::default();
        let mut garbage = BytesMut::from(&[0, 0, 0, 3, 9, 9, 9][..]);
        assert!(matches!(
            codec.decode(&mut garbage),
            Err(FrameError::Malformed(_))
        ));
    }
}
