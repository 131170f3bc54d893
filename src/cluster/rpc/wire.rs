//! How a [`Message`] is laid out in a frame at a given peer protocol.
//!
//! The handshake's messages keep protocol 3's layout whatever the protocol, since neither
//! side knows the other's yet: Hello and Challenge are protocol 3's messages followed by
//! an extension (the sender's build, the protocol chosen). Release 0.1.0 reads one postcard
//! value per frame and ignores what follows, so it reads them as before; this release reads
//! a Hello or Challenge without the extension as coming from protocol 3. After the
//! handshake, protocol 4 is the current messages' own postcard layout and protocol 3 is
//! `v3`'s.

use super::frame::{append, FrameError, Wire};
use super::message::{Build, Message};
use super::v3::{self, Message3};
use bytes::BytesMut;

/// postcard's tag of the first two variants (a varint, one byte below 128).
const HELLO: u8 = 0;
const CHALLENGE: u8 = 1;

impl Wire for Message {
    fn encode_into(self, protocol: u32, out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Message::Hello { ref build, .. } => {
                let extension = build.clone();
                append(&v3::to_v3(self)?, out)?;
                if let Some(build) = extension {
                    append(&build, out)?;
                }
            }
            Message::Challenge {
                protocol: chosen,
                ref build,
                ..
            } => {
                let extension = (chosen, build.clone());
                append(&v3::to_v3(self)?, out)?;
                append(&extension, out)?;
            }
            message if protocol > v3::PROTOCOL => append(&message, out)?,
            message => append(&v3::to_v3(message)?, out)?,
        }
        Ok(())
    }

    fn decode(body: &[u8], protocol: u32) -> Result<Self, FrameError> {
        match body.first() {
            Some(&(HELLO | CHALLENGE)) => {
                let (base, extension) = postcard::take_from_bytes::<Message3>(body)?;
                let mut message = v3::from_v3(base);
                if !extension.is_empty() {
                    match &mut message {
                        Message::Hello { build, .. } => {
                            *build = Some(postcard::from_bytes::<Build>(extension)?);
                        }
                        Message::Challenge {
                            protocol, build, ..
                        } => {
                            (*protocol, *build) = postcard::from_bytes(extension)?;
                        }
                        _ => {}
                    }
                }
                Ok(message)
            }
            _ if protocol > v3::PROTOCOL => Ok(postcard::from_bytes(body)?),
            _ => Ok(v3::from_v3(postcard::from_bytes(body)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::message::{Request, Response};
    use crate::ops::{DeleteOutcome, Outcome, StoreMode, StoreOutcome, WriteOp};
    use crate::record::{test_record, Versions};
    use bytes::Bytes;

    fn build() -> Build {
        Build {
            version: "9.9.9".into(),
            oldest: 3,
            newest: 4,
            capabilities: vec!["x".into()],
            finalized: 0,
        }
    }

    #[test]
    fn a_hello_reads_the_same_to_release_0_1_0_and_carries_the_build_to_this_one() {
        let hello = Message::Hello {
            protocol: 3,
            cluster: "kai".into(),
            node: "127.0.0.1:1".into(),
            nonce: [7; 32],
            build: Some(build()),
        };
        let bytes = hello.encode(4).unwrap();
        // What 0.1.0 does with a frame: one postcard value, the rest ignored.
        let old: Message3 = postcard::from_bytes(&bytes).unwrap();
        assert!(
            matches!(old, Message3::Hello { protocol: 3, ref node, .. } if node == "127.0.0.1:1")
        );
        let Message::Hello { build: read, .. } = Message::decode(&bytes, 4).unwrap() else {
            panic!()
        };
        assert_eq!(read, Some(build()));
        // 0.1.0's own Hello has no extension: no build, protocol 3.
        let bare = postcard::to_allocvec(&old).unwrap();
        assert!(matches!(
            Message::decode(&bare, 4).unwrap(),
            Message::Hello {
                protocol: 3,
                build: None,
                ..
            }
        ));
        let challenge = Message3::Challenge {
            nonce: [1; 32],
            proof: [2; 32],
            now_us: 5,
        };
        let bare = postcard::to_allocvec(&challenge).unwrap();
        assert!(matches!(
            Message::decode(&bare, 4).unwrap(),
            Message::Challenge {
                protocol: 3,
                build: None,
                now_us: 5,
                ..
            }
        ));
    }

    #[test]
    fn protocol_3_messages_round_trip_through_0_1_0s_layout() {
        let mut record = test_record("v", 0);
        record.stale = true;
        let put = Message::Request {
            id: 1,
            deadline_us: 2,
            hlc: 3,
            body: Request::Put {
                key: Bytes::from_static(b"k"),
                versions: Versions::one(record.clone()),
            },
        };
        let bytes = put.encode(3).unwrap();
        let Message3::Request { body, .. } = postcard::from_bytes(&bytes).unwrap() else {
            panic!()
        };
        assert!(matches!(body, v3::Request3::Put { ref versions, .. } if versions.len() == 1));
        let Message::Request {
            body: Request::Put { versions, .. },
            ..
        } = Message::decode(&bytes, 3).unwrap()
        else {
            panic!()
        };
        // Protocol 3 has no stale flag: the value and clock survive, the flag does not.
        assert_eq!(versions.0[0].value, record.value);
        assert_eq!(versions.0[0].clock, record.clock);
        assert!(!versions.0[0].stale);

        let cas = Message::Request {
            id: 1,
            deadline_us: 2,
            hlc: 3,
            body: Request::Write {
                key: Bytes::from_static(b"k"),
                op: WriteOp::Store {
                    mode: StoreMode::Set,
                    cas: Some(42),
                    stale_if_older: false,
                    flags: 0,
                    expires_at: 0,
                    data: Bytes::from_static(b"v"),
                },
            },
        };
        let back = Message::decode(&cas.encode(3).unwrap(), 3).unwrap();
        assert!(matches!(
            back,
            Message::Request {
                body: Request::Write {
                    op: WriteOp::Store {
                        mode: StoreMode::Set,
                        cas: Some(42),
                        ..
                    },
                    ..
                },
                ..
            }
        ));
        let reply = Message::Response {
            id: 1,
            now_us: 2,
            hlc: 3,
            body: Response::Outcome(Outcome::Deleted(DeleteOutcome::Deleted)),
        };
        assert!(matches!(
            Message::decode(&reply.encode(3).unwrap(), 3).unwrap(),
            Message::Response {
                body: Response::Outcome(Outcome::Deleted(DeleteOutcome::Deleted)),
                ..
            }
        ));
        let stored = Message::Response {
            id: 1,
            now_us: 2,
            hlc: 3,
            body: Response::Outcome(Outcome::Store(StoreOutcome::Stored, 9)),
        };
        assert!(matches!(
            Message::decode(&stored.encode(3).unwrap(), 3).unwrap(),
            Message::Response {
                body: Response::Outcome(Outcome::Store(StoreOutcome::Stored, 0)),
                ..
            }
        ));
    }

    #[test]
    fn what_protocol_3_cannot_say_is_refused_not_garbled() {
        let invalidate = || Message::Request {
            id: 1,
            deadline_us: 2,
            hlc: 3,
            body: Request::Write {
                key: Bytes::from_static(b"k"),
                op: WriteOp::Invalidate {
                    cas: None,
                    expires_at: None,
                },
            },
        };
        let err = invalidate().encode(3).unwrap_err().to_string();
        assert!(err.contains("protocol 3"), "{err}");
        assert!(invalidate().encode(4).is_ok());
    }
}
