//! Runs one parsed command against the node and encodes its reply.

use super::parse::{Command, Keys};
use super::reply;
use crate::node::{ArithOutcome, DeleteOutcome, Node, NodeError, StoreOutcome, StoreRequest};
use std::sync::Arc;
use tokio::io::AsyncWrite;

/// Whether the connection continues after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// Runs `command`, appending its reply to `out`. A multi-get writes `out` to `stream`
/// whenever a quarter MiB is queued, so a huge one never sits in memory whole.
pub async fn execute<W: AsyncWrite + Unpin>(
    command: Command<'_>,
    node: &Arc<Node>,
    out: &mut Vec<u8>,
    stream: &mut W,
) -> Flow {
    if let Command::Retrieve {
        keys,
        with_cas,
        touch,
    } = command
    {
        return retrieve(keys, with_cas, touch, node, out, stream).await;
    }
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

async fn retrieve<W: AsyncWrite + Unpin>(
    keys: Keys<'_>,
    with_cas: bool,
    touch: Option<i64>,
    node: &Arc<Node>,
    out: &mut Vec<u8>,
    stream: &mut W,
) -> Flow {
    let start = out.len();
    let mut streamed = false;
    for key in keys.iter() {
        match node.get(key, touch).await {
            Ok(items) => {
                for item in items {
                    reply::value(out, key, &item, with_cas);
                }
            }
            Err(error) if !streamed => {
                // Nothing sent yet: discard the partial reply, keep the connection.
                out.truncate(start);
                reply::line(out, &format!("SERVER_ERROR {error}"));
                return Flow::Continue;
            }
            Err(error) => {
                // Part of the reply is on the wire: the client cannot tell where it ends.
                reply::line(out, &format!("SERVER_ERROR {error}"));
                return Flow::Close;
            }
        }
        match reply::flush_if_full(out, stream).await {
            Ok(flushed) => streamed |= flushed,
            Err(_) => return Flow::Close,
        }
    }
    reply::line(out, "END");
    Flow::Continue
}

async fn run(command: Command<'_>, node: &Arc<Node>, out: &mut Vec<u8>) -> Result<Flow, NodeError> {
    match command {
        Command::Retrieve { .. } => unreachable!("retrievals stream through retrieve()"),
        Command::Store {
            mode,
            cas,
            key,
            flags,
            exptime,
            data,
            noreply,
        } => {
            let request = StoreRequest {
                mode,
                cas,
                stale_if_older: false,
                flags,
                exptime,
                data,
            };
            let (outcome, _) = node.store_item(key, request).await?;
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
            let found = node.delete(key, None).await? == DeleteOutcome::Deleted;
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
            let counted = node.arith(key, incr, delta, None, None, None).await?;
            if !noreply {
                match counted.outcome {
                    ArithOutcome::Value(n) => {
                        reply::number(out, n);
                        out.extend_from_slice(b"\r\n");
                    }
                    // (Text incr/decr carries no cas guard, so Exists cannot happen.)
                    ArithOutcome::NotFound | ArithOutcome::Exists => reply::line(out, "NOT_FOUND"),
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
            let found = node.touch(key, exptime).await?.is_some();
            if !noreply {
                reply::line(out, if found { "TOUCHED" } else { "NOT_FOUND" });
            }
        }
        Command::FlushAll { delay, noreply } => {
            node.flush_all(delay).await;
            if !noreply {
                reply::line(out, "OK");
            }
        }
        Command::Stats(section) => crate::stats::render(&node.stats(section), out),
        Command::CacheDump { class, limit } => {
            for (key, size, expires_at) in node.cache_dump(class, limit) {
                out.extend_from_slice(b"ITEM ");
                out.extend_from_slice(&key);
                reply::line(out, &format!(" [{size} b; {expires_at} s]"));
            }
            reply::line(out, "END");
        }
        Command::MemoryLimit { megabytes, noreply } => {
            let reply = match node.set_memory_limit(megabytes) {
                true => "OK",
                false => "CLIENT_ERROR cache_memlimit: the disk engine has no memory limit",
            };
            if !noreply {
                reply::line(out, reply);
            }
        }
        Command::StatsReset => {
            node.counters().reset();
            reply::line(out, "RESET");
        }
        Command::Version => reply::line(out, &format!("VERSION {}", crate::node::SERVER_VERSION)),
        Command::Verbosity { noreply } => {
            if !noreply {
                reply::line(out, "OK");
            }
        }
        Command::Quit => return Ok(Flow::Close),
        Command::HttpRequest => {
            node.counters().http_requests_closed.add(1);
            log::debug!("closing a client connection that sent an HTTP request line");
            return Ok(Flow::Close);
        }
        Command::Meta(meta) => super::meta::execute::execute(meta, node, out).await?,
        Command::Reply(Some(text)) => reply::line(out, text),
        Command::Reply(None) => {}
    }
    Ok(Flow::Continue)
}
