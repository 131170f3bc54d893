//! Runs a meta request on the node and writes memcached's reply: a two-letter code, then
//! the return flags in the order the request gave them, then the data block if any.

use super::parse::{Key, Request, Verb};
use super::Meta;
use crate::memcache::reply;
use crate::node::{
    ArithOutcome, DeleteOutcome, FetchRequest, Node, NodeError, StoreOutcome, StoreRequest,
};
use crate::ops::StoreMode;
use crate::time::unix_secs;
use base64::Engine;

pub async fn execute(meta: Meta<'_>, node: &Node, out: &mut Vec<u8>) -> Result<(), NodeError> {
    match meta {
        Meta::Noop => reply::line(out, "MN"),
        Meta::Debug(key) => debug(&key, node, out).await?,
        Meta::TooLarge(request) => {
            node.unlink(&request.key.bytes).await?;
            reply::line(out, crate::memcache::token::TOO_LARGE);
        }
        Meta::Request { request, data } => match request.verb {
            Verb::Get => get(&request, node, out).await?,
            Verb::Set => set(&request, data, node, out).await?,
            Verb::Delete => delete(&request, node, out).await?,
            Verb::Arith => arith(&request, node, out).await?,
            Verb::Noop | Verb::Debug => unreachable!("parsed as their own lines"),
        },
    }
    Ok(())
}

async fn get(request: &Request<'_>, node: &Node, out: &mut Vec<u8>) -> Result<(), NodeError> {
    let flags = &request.flags;
    let fetch = FetchRequest {
        touch: flags.touch,
        vivify: flags.vivify,
        recache: flags.recache,
        bump: !flags.no_bump,
        history: flags.history,
    };
    let fetched = node.fetch(&request.key.bytes, fetch).await?;
    let Some(item) = &fetched.item else {
        if !flags.quiet {
            out.extend_from_slice(b"EN");
            echo(request, out);
            out.extend_from_slice(b"\r\n");
        }
        return Ok(());
    };
    let now = unix_secs();
    match flags.value {
        true => {
            out.extend_from_slice(b"VA ");
            reply::number(out, item.value.len() as u64);
        }
        false => out.extend_from_slice(b"HD"),
    }
    for token in flags.iter() {
        match token[0] {
            b's' => flag(out, b's', item.value.len() as u64),
            b't' => ttl(out, item.expires_at, now),
            b'c' => flag(out, b'c', item.cas),
            b'f' => flag(out, b'f', u64::from(item.flags)),
            b'l' => {
                let last = fetched.history.map_or(now, |h| h.last_access_secs);
                flag(out, b'l', now.saturating_sub(last));
            }
            b'h' => flag(
                out,
                b'h',
                u64::from(fetched.history.is_some_and(|h| h.fetched)),
            ),
            b'O' => opaque(out, token),
            b'k' => key(out, &request.key),
            _ => {}
        }
    }
    if fetched.claimed_before {
        out.extend_from_slice(b" Z");
    }
    if item.stale {
        out.extend_from_slice(b" X");
    }
    if fetched.won {
        out.extend_from_slice(b" W");
    }
    out.extend_from_slice(b"\r\n");
    if flags.value {
        out.extend_from_slice(&item.value);
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

async fn set(
    request: &Request<'_>,
    data: &[u8],
    node: &Node,
    out: &mut Vec<u8>,
) -> Result<(), NodeError> {
    let flags = &request.flags;
    let mode = match flags.mode {
        Some(b'E') => StoreMode::Add,
        Some(b'A') => StoreMode::Append,
        Some(b'P') => StoreMode::Prepend,
        // memcached turns a replace with a cas into a cas (a guarded set).
        Some(b'R') if flags.compare_cas.is_none() => StoreMode::Replace,
        _ => StoreMode::Set,
    };
    let store = StoreRequest {
        mode,
        cas: flags.compare_cas,
        stale_if_older: flags.invalidate && mode == StoreMode::Set,
        flags: flags.client_flags,
        exptime: flags.touch.unwrap_or(0),
        data,
    };
    let (outcome, cas) = node.store_item(&request.key.bytes, store).await?;
    let code = match outcome {
        StoreOutcome::Stored if flags.quiet => return Ok(()),
        StoreOutcome::Stored => "HD",
        StoreOutcome::NotStored => "NS",
        StoreOutcome::Exists => "EX",
        StoreOutcome::NotFound => "NF",
    };
    out.extend_from_slice(code.as_bytes());
    for token in flags.iter() {
        match token[0] {
            b'O' => opaque(out, token),
            b'k' => key(out, &request.key),
            b'c' => flag(out, b'c', cas),
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

async fn delete(request: &Request<'_>, node: &Node, out: &mut Vec<u8>) -> Result<(), NodeError> {
    let flags = &request.flags;
    let key_bytes = &request.key.bytes;
    let outcome = match flags.invalidate {
        true => {
            node.invalidate(key_bytes, flags.compare_cas, flags.touch)
                .await?
        }
        false => node.delete(key_bytes, flags.compare_cas).await?,
    };
    let code = match outcome {
        DeleteOutcome::Deleted if flags.quiet => return Ok(()),
        DeleteOutcome::Deleted => "HD",
        DeleteOutcome::NotFound => "NF",
        DeleteOutcome::Exists => "EX",
    };
    out.extend_from_slice(code.as_bytes());
    echo(request, out);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

async fn arith(request: &Request<'_>, node: &Node, out: &mut Vec<u8>) -> Result<(), NodeError> {
    let flags = &request.flags;
    let incr = !matches!(flags.mode, Some(b'D' | b'-'));
    let vivify = flags.vivify.map(|ttl| (flags.initial, ttl));
    let counted = node
        .arith(
            &request.key.bytes,
            incr,
            flags.delta,
            flags.compare_cas,
            vivify,
            flags.touch,
        )
        .await?;
    let number = match counted.outcome {
        ArithOutcome::Value(_) if flags.quiet => return Ok(()),
        ArithOutcome::Value(number) => number.to_string(),
        ArithOutcome::NonNumeric => {
            reply::line(
                out,
                "CLIENT_ERROR cannot increment or decrement non-numeric value",
            );
            return Ok(());
        }
        ArithOutcome::NotFound | ArithOutcome::Exists => {
            let code = match counted.outcome {
                ArithOutcome::NotFound => "NF",
                _ => "EX",
            };
            out.extend_from_slice(code.as_bytes());
            echo(request, out);
            out.extend_from_slice(b"\r\n");
            return Ok(());
        }
    };
    match flags.value {
        true => {
            out.extend_from_slice(b"VA ");
            reply::number(out, number.len() as u64);
        }
        false => out.extend_from_slice(b"HD"),
    }
    let now = unix_secs();
    for token in flags.iter() {
        match token[0] {
            b'c' => flag(out, b'c', counted.cas),
            b't' => ttl(out, counted.expires_at, now),
            b'O' => opaque(out, token),
            b'k' => key(out, &request.key),
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    if flags.value {
        out.extend_from_slice(number.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// `me`: memcached's fields (one size class, `cls=1`), then kai's sibling count.
async fn debug(key_token: &Key<'_>, node: &Node, out: &mut Vec<u8>) -> Result<(), NodeError> {
    let Some(found) = node.debug(&key_token.bytes).await? else {
        reply::line(out, "EN");
        return Ok(());
    };
    let now = unix_secs();
    out.extend_from_slice(b"ME ");
    out.extend_from_slice(key_token.token);
    let exp = match found.item.expires_at {
        0 => -1,
        at => at.saturating_sub(now) as i64,
    };
    let line = format!(
        " exp={exp} la={} cas={} fetch={} cls=1 size={} siblings={}",
        now.saturating_sub(found.history.last_access_secs),
        found.item.cas,
        if found.history.fetched { "yes" } else { "no" },
        found.size,
        found.siblings,
    );
    reply::line(out, &line);
    Ok(())
}

/// The `O` and `k` flags, the only ones a reply without an item echoes.
fn echo(request: &Request<'_>, out: &mut Vec<u8>) {
    for token in request.flags.iter() {
        match token[0] {
            b'O' => opaque(out, token),
            b'k' => key(out, &request.key),
            _ => {}
        }
    }
}

fn flag(out: &mut Vec<u8>, name: u8, value: u64) {
    out.extend_from_slice(&[b' ', name]);
    reply::number(out, value);
}

/// `t`: seconds left, -1 for never.
fn ttl(out: &mut Vec<u8>, expires_at: u64, now: u64) {
    match expires_at {
        0 => out.extend_from_slice(b" t-1"),
        at => flag(out, b't', at.saturating_sub(now)),
    }
}

fn opaque(out: &mut Vec<u8>, token: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(token);
}

/// `k`: the key as sent; a base64 key is re-encoded and marked with `b`.
fn key(out: &mut Vec<u8>, key: &Key<'_>) {
    out.extend_from_slice(b" k");
    match key.base64 {
        true => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&key.bytes);
            out.extend_from_slice(encoded.as_bytes());
            out.extend_from_slice(b" b");
        }
        false => out.extend_from_slice(&key.bytes),
    }
}
