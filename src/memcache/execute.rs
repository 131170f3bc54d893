//! Runs one parsed command against the node and encodes its reply.

use super::parse::Command;
use super::reply;
use crate::node::{ArithOutcome, Node, NodeError, StoreOutcome};
use std::sync::Arc;

/// Whether the connection continues after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

pub async fn execute(command: Command<'_>, node: &Arc<Node>, out: &mut Vec<u8>) -> Flow {
    let start = out.len();
    match run(command, node, out).await {
        Ok(flow) => flow,
        Err(error) => {
            // A failed request discards its partial reply, answers SERVER_ERROR and keeps
            // the connection.
            out.truncate(start);
            reply::line(out, &format!("SERVER_ERROR {error}"));
            Flow::Continue
        }
    }
}

async fn run(command: Command<'_>, node: &Arc<Node>, out: &mut Vec<u8>) -> Result<Flow, NodeError> {
    match command {
        Command::Retrieve {
            keys,
            with_cas,
            touch,
        } => {
            for key in keys.iter() {
                for item in node.get(key, touch).await? {
                    reply::value(out, key, &item, with_cas);
                }
            }
            reply::line(out, "END");
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            data,
            noreply,
        } => {
            let outcome = node.store(mode, key, flags, exptime, data).await?;
            if !noreply {
                reply::line(
                    out,
                    match outcome {
                        StoreOutcome::Stored => "STORED",
                        StoreOutcome::NotStored => "NOT_STORED",
                        StoreOutcome::Exists => "EXISTS",
                        StoreOutcome::NotFound => "NOT_FOUND",
                    },
                );
            }
        }
        Command::TooLarge {
            key,
            unlink,
            noreply,
        } => {
            if unlink {
                node.unlink(key).await?;
            }
            if !noreply {
                reply::line(out, super::parse::TOO_LARGE);
            }
        }
        Command::Delete { key, noreply } => {
            let found = node.delete(key).await?;
            if !noreply {
                reply::line(out, if found { "DELETED" } else { "NOT_FOUND" });
            }
        }
        Command::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            let outcome = node.arith(key, incr, delta).await?;
            if !noreply {
                match outcome {
                    ArithOutcome::Value(n) => {
                        reply::number(out, n);
                        out.extend_from_slice(b"\r\n");
                    }
                    ArithOutcome::NotFound => reply::line(out, "NOT_FOUND"),
                    ArithOutcome::NonNumeric => reply::line(
                        out,
                        "CLIENT_ERROR cannot increment or decrement non-numeric value",
                    ),
                }
            }
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            let found = node.touch(key, exptime).await?;
            if !noreply {
                reply::line(out, if found { "TOUCHED" } else { "NOT_FOUND" });
            }
        }
        Command::FlushAll { delay, noreply } => {
            node.flush_all(delay);
            if !noreply {
                reply::line(out, "OK");
            }
        }
        Command::Stats(section) => crate::stats::render(&node.stats(section), out),
        Command::Version => reply::line(out, &format!("VERSION {}", crate::node::PROTOCOL_VERSION)),
        Command::Verbosity { noreply } => {
            if !noreply {
                reply::line(out, "OK");
            }
        }
        Command::Quit => return Ok(Flow::Close),
        Command::Reply(Some(text)) => reply::line(out, text),
        Command::Reply(None) => {}
    }
    Ok(Flow::Continue)
}
