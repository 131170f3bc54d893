//! memcached's operation semantics, below every protocol parser: the storage modes, the
//! exptime rule, and what each write does to a key's versions as one pure transition. The
//! single-node path runs it under the store's per-key lock, the cluster coordinator between
//! its quorum read and quorum write; a `WriteOp` is also what a node forwards to a replica.
//! Text, binary and meta parsers all produce these operations and render these outcomes.

use crate::causality::{NodeId, VectorClock};
use crate::record::{Record, Versions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Exptimes above this many seconds are absolute Unix times (memcached's REALTIME_MAXDELTA).
pub const RELATIVE_EXPTIME_LIMIT: i64 = 30 * 24 * 60 * 60;

/// The storage commands. Part of the peer wire format (inside a forwarded `WriteOp`).
/// Text `cas` is `Set` with a cas guard; binary and meta put a guard on any mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

/// A compare-and-swap guard: the write happens only if a live version has this cas unique.
/// `None` writes unconditionally.
pub type CasGuard = Option<u64>;

/// What an incr/decr on a missing key does: nothing (text), or create the key with an
/// initial value (binary's initial/expiration, meta's `N`/`J` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vivify {
    pub initial: u64,
    pub expires_at: u64,
}

/// memcached's exptime rule: 0 never expires, negative is already expired, up to 30 days is
/// relative, anything larger is an absolute Unix time. Returns Unix seconds (0 = never).
pub fn expiry(exptime: i64, now_secs: u64) -> u64 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e <= RELATIVE_EXPTIME_LIMIT => now_secs + e as u64,
        e => e as u64,
    }
}

/// A write as the coordinator sees it: relative times already turned absolute by the node
/// that received the command, so a forwarded op means the same everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Store {
        mode: StoreMode,
        cas: CasGuard,
        /// Meta `ms … C<cas> I`: a cas older than the current version's still stores (set
        /// and replace only), but the new version is stale and keeps the old expiry.
        stale_if_older: bool,
        flags: u32,
        expires_at: u64,
        data: Bytes,
    },
    Delete {
        cas: CasGuard,
    },
    /// Meta `md … I`: instead of deleting, a new version with the same value, marked
    /// stale (so the next reader wins the recache), optionally with a new expiry.
    Invalidate {
        cas: CasGuard,
        expires_at: Option<u64>,
    },
    Arith {
        incr: bool,
        delta: u64,
        cas: CasGuard,
        vivify: Option<Vivify>,
        /// Meta `ma … T`: the expiry of the updated counter.
        touch: Option<u64>,
    },
    /// touch, and gat/gats (which also want the touched value back).
    Touch {
        expires_at: u64,
    },
    /// The write side of a meta get: touch (`T`), create an empty placeholder on a miss
    /// (`N`), hand out the recache token (`W`) for a stale version or one expiring before
    /// `recache_before` (`R`). Amends the version in place, as a touch does.
    Fetch {
        touch: Option<u64>,
        vivify: Option<u64>,
        recache_before: Option<u64>,
    },
}

impl WriteOp {
    /// A plain `set` needs no quorum read: it supersedes whatever the coordinator holds
    /// (a version it lacks stays a concurrent sibling). Everything else decides on the
    /// current value, and a delete must supersede every version a quorum holds, or a
    /// version its coordinator lacked would outlive the tombstone (the simulation found it).
    pub fn needs_read(&self) -> bool {
        !matches!(
            self,
            WriteOp::Store {
                mode: StoreMode::Set,
                cas: None,
                ..
            }
        )
    }

    /// Whether deciding reads the current value or keeps it in the new version (append,
    /// incr, touch, a meta get): for the rest the store need not copy the value out.
    pub fn reads_value(&self) -> bool {
        match self {
            WriteOp::Store { mode, .. } => matches!(mode, StoreMode::Append | StoreMode::Prepend),
            WriteOp::Delete { .. } => false,
            WriteOp::Invalidate { .. }
            | WriteOp::Arith { .. }
            | WriteOp::Touch { .. }
            | WriteOp::Fetch { .. } => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOutcome {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArithOutcome {
    Value(u64),
    NotFound,
    NonNumeric,
    /// The cas guard matched no live version.
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteOutcome {
    /// Deleted, or (meta invalidate) marked stale.
    Deleted,
    NotFound,
    /// The cas guard matched no live version.
    Exists,
}

/// What a write answers. `cas` is the cas unique of the version it created (0 when it
/// wrote nothing): binary and meta clients get it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Store(StoreOutcome, u64),
    Deleted(DeleteOutcome),
    Arith {
        outcome: ArithOutcome,
        cas: u64,
        /// The counter's expiry (meta `t`).
        expires_at: u64,
    },
    /// The touched value (its cas is that of the new version).
    Touched(Option<Record>),
    Fetched(Fetched),
}

/// What a meta get's write side found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// The version as it is now (touched, claimed or created).
    pub record: Option<Record>,
    /// This reader won the recache token (`W`).
    pub won: bool,
    /// An earlier reader had won it (`Z`).
    pub claimed_before: bool,
    /// The record is the placeholder `N` created on a miss.
    pub created: bool,
}

impl Outcome {
    /// Takes what the client is told about the version this write stored from the stored
    /// version (after the coordinator raised its clock, not the one decided on).
    pub fn set_stored(&mut self, stored: &Record) {
        match self {
            Outcome::Store(_, cas) => *cas = cas_unique(stored),
            Outcome::Arith {
                cas, expires_at, ..
            } => {
                *cas = cas_unique(stored);
                *expires_at = stored.expires_at;
            }
            Outcome::Touched(touched) => *touched = Some(stored.clone()),
            Outcome::Fetched(fetched) => fetched.record = Some(stored.clone()),
            Outcome::Deleted(_) => {}
        }
    }
}

/// The guard's verdict against the live versions (with siblings, any one may match).
/// A cas unique handed out by release 0.1.0 (a full 64-bit digest) still matches, so a
/// client that read through a 0.1.0 node can write through an upgraded one mid-roll.
fn guard_holds(cas: CasGuard, current: Option<&Versions>) -> bool {
    cas.is_none_or(|unique| {
        (current.into_iter().flat_map(Versions::live))
            .any(|r| cas_unique(r) == unique || legacy_cas_unique(r) == unique)
    })
}

/// Release 0.1.0's cas unique of a version.
fn legacy_cas_unique(record: &Record) -> u64 {
    (record.clock.digest() ^ record.timestamp.wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1)
}

/// The content of the version a write creates; the caller adds clock and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewValue {
    pub value: Bytes,
    pub flags: u32,
    pub expires_at: u64,
    pub tombstone: bool,
    pub stale: bool,
    pub recache_claimed: bool,
    /// An amendment (touch, recache claim): the version keeps its clock and write time
    /// (so its cas stays, as in memcached); only expiry and claim change.
    pub touches: Option<Record>,
}

impl NewValue {
    fn fresh(value: Bytes, flags: u32, expires_at: u64) -> NewValue {
        NewValue {
            value,
            flags,
            expires_at,
            tombstone: false,
            stale: false,
            recache_claimed: false,
            touches: None,
        }
    }

    fn amending(record: &Record, expires_at: u64, recache_claimed: bool) -> NewValue {
        NewValue {
            recache_claimed,
            touches: Some(record.clone()),
            ..NewValue::fresh(record.value.clone(), record.flags, expires_at)
        }
    }
}

/// Decides `op` against the key's current versions: what to write (if anything) and what
/// to answer. A delete's tombstone never expires: anti-entropy purges it once every
/// replica holds it and `tombstone_grace` has passed since its timestamp.
pub fn decide(mut op: WriteOp, current: Option<&Versions>) -> (Option<NewValue>, Outcome) {
    let newest = current.and_then(Versions::newest_live);
    match &mut op {
        WriteOp::Store {
            mode,
            cas,
            stale_if_older,
            flags,
            expires_at,
            data,
        } => {
            let refuse = |outcome| (None, Outcome::Store(outcome, 0));
            let stored = Outcome::Store(StoreOutcome::Stored, 0);
            let (value, flags, expires_at) = match (mode, newest) {
                (StoreMode::Add, Some(_)) | (StoreMode::Replace, None) => {
                    return refuse(StoreOutcome::NotStored)
                }
                (StoreMode::Append | StoreMode::Prepend, None) => {
                    return refuse(StoreOutcome::NotStored)
                }
                (StoreMode::Set, None) if cas.is_some() => return refuse(StoreOutcome::NotFound),
                // With siblings, a cas taken from any of them may resolve them all.
                (StoreMode::Set | StoreMode::Replace, Some(record))
                    if *stale_if_older && cas.is_some() && !guard_holds(*cas, current) =>
                {
                    // memcached's "set-to-invalid": a cas of an older version still
                    // stores, marked stale, keeping the current expiry and recache claim.
                    // (memcached compares counters; kai's cas are digests, and a token that
                    // names no current version was taken from an older one.)
                    let new = NewValue {
                        stale: true,
                        recache_claimed: record.recache_claimed,
                        ..NewValue::fresh(std::mem::take(data), *flags, record.expires_at)
                    };
                    return (Some(new), stored);
                }
                (_, Some(_)) if !guard_holds(*cas, current) => return refuse(StoreOutcome::Exists),
                (StoreMode::Append, Some(record)) => (
                    Bytes::from([&record.value[..], data].concat()),
                    record.flags,
                    record.expires_at,
                ),
                (StoreMode::Prepend, Some(record)) => (
                    Bytes::from([&data[..], &record.value[..]].concat()),
                    record.flags,
                    record.expires_at,
                ),
                // Moved, not cloned: a clone of the request's value cost an allocation
                // and three atomic operations per set.
                _ => (std::mem::take(data), *flags, *expires_at),
            };
            (Some(NewValue::fresh(value, flags, expires_at)), stored)
        }
        WriteOp::Delete { cas } => {
            if newest.is_some() && !guard_holds(*cas, current) {
                return (None, Outcome::Deleted(DeleteOutcome::Exists));
            }
            let found = match newest {
                Some(_) => DeleteOutcome::Deleted,
                None => DeleteOutcome::NotFound,
            };
            let tombstone = NewValue {
                tombstone: true,
                ..NewValue::fresh(Bytes::new(), 0, 0)
            };
            (Some(tombstone), Outcome::Deleted(found))
        }
        WriteOp::Invalidate { cas, expires_at } => {
            let Some(record) = newest else {
                return (None, Outcome::Deleted(DeleteOutcome::NotFound));
            };
            if !guard_holds(*cas, current) {
                return (None, Outcome::Deleted(DeleteOutcome::Exists));
            }
            // A new version (so a new cas), stale, with no recache token handed out yet.
            let expiry = expires_at.unwrap_or(record.expires_at);
            let new = NewValue {
                stale: true,
                ..NewValue::fresh(record.value.clone(), record.flags, expiry)
            };
            (Some(new), Outcome::Deleted(DeleteOutcome::Deleted))
        }
        WriteOp::Arith {
            incr,
            delta,
            cas,
            vivify,
            touch,
        } => {
            let answer = |outcome| Outcome::Arith {
                outcome,
                cas: 0,
                expires_at: 0,
            };
            let Some(record) = newest else {
                let Some(vivify) = vivify else {
                    return (None, answer(ArithOutcome::NotFound));
                };
                // A created counter holds the initial value as is (memcached's rule).
                let value = Bytes::from(vivify.initial.to_string().into_bytes());
                let new = NewValue::fresh(value, 0, vivify.expires_at);
                return (Some(new), answer(ArithOutcome::Value(vivify.initial)));
            };
            if !guard_holds(*cas, current) {
                return (None, answer(ArithOutcome::Exists));
            }
            let Some(number) = numeric_value(&record.value) else {
                return (None, answer(ArithOutcome::NonNumeric));
            };
            let result = if *incr {
                number.wrapping_add(*delta)
            } else {
                number.saturating_sub(*delta)
            };
            // memcached rewrites a shorter number in place, padded with spaces to the old length.
            let text = format!("{result:<width$}", width = record.value.len());
            let expiry = touch.unwrap_or(record.expires_at);
            let new = NewValue::fresh(Bytes::from(text.into_bytes()), record.flags, expiry);
            (Some(new), answer(ArithOutcome::Value(result)))
        }
        WriteOp::Touch { expires_at } => match newest {
            None => (None, Outcome::Touched(None)),
            Some(record) => {
                let new = NewValue::amending(record, *expires_at, record.recache_claimed);
                // The caller fills in the new version's record.
                (Some(new), Outcome::Touched(None))
            }
        },
        WriteOp::Fetch {
            touch,
            vivify,
            recache_before,
        } => {
            let fetched = |record: Option<&Record>, won: bool, created: bool| {
                Outcome::Fetched(Fetched {
                    record: record.cloned(),
                    won,
                    claimed_before: record.is_some_and(|r| r.recache_claimed) && !created,
                    created,
                })
            };
            let Some(record) = newest else {
                let Some(expires_at) = vivify else {
                    return (None, fetched(None, false, false));
                };
                // The placeholder: empty, and its creator holds the recache token.
                let new = NewValue {
                    recache_claimed: true,
                    ..NewValue::fresh(Bytes::new(), 0, *expires_at)
                };
                return (Some(new), fetched(None, true, true));
            };
            let expiring = recache_before
                .is_some_and(|before| record.expires_at != 0 && record.expires_at < before);
            let won = !record.recache_claimed && (record.stale || expiring);
            if !won && touch.is_none() {
                return (None, fetched(Some(record), false, false));
            }
            let expiry = touch.unwrap_or(record.expires_at);
            let new = NewValue::amending(record, expiry, record.recache_claimed || won);
            (Some(new), fetched(Some(record), won, false))
        }
    }
}

/// What a write does to a key: the record it creates (a tombstone for a delete), if any,
/// and the answer for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub record: Option<Record>,
    pub outcome: Outcome,
    /// The record amends a current version (touch, recache claim): it keeps that
    /// version's clock, where any other write gets a clock descending every version.
    pub amends: bool,
}

/// The one write rule: decide `op` against `current`, then build the new record on
/// `writer` with timestamp `stamp` (a hybrid clock reading later than every version in
/// `current`), superseding every version in `current`. A touch answers with the record it
/// creates.
pub fn transition(
    op: WriteOp,
    current: Option<&Versions>,
    writer: NodeId,
    stamp: u64,
) -> Transition {
    let (new, mut outcome) = decide(op, current);
    let amends = new.as_ref().is_some_and(|new| new.touches.is_some());
    let record = new.map(|new| {
        let base = current.map(Versions::merged_clock).unwrap_or_default();
        new_record(new, &base, writer, stamp)
    });
    if let Some(record) = &record {
        outcome.set_stored(record);
    }
    Transition {
        record,
        outcome,
        amends,
    }
}

/// The version a write creates on `writer`: its clock supersedes `base` (every version the
/// writer knew of), its timestamp orders it among siblings.
fn new_record(new: NewValue, base: &VectorClock, writer: NodeId, stamp: u64) -> Record {
    if let Some(touched) = new.touches {
        return Record {
            expires_at: new.expires_at,
            recache_claimed: new.recache_claimed,
            ..touched
        };
    }
    Record {
        value: new.value,
        flags: new.flags,
        expires_at: new.expires_at,
        timestamp: stamp,
        clock: base.advanced(writer, stamp),
        tombstone: new.tombstone,
        stale: new.stale,
        recache_claimed: new.recache_claimed,
    }
}

/// A cas unique: a 32-bit digest of the version (its clock and write time); never 0.
/// memcached's counter is 64 bits but stays small for years, and clients rely on that:
/// meta-memcache reads any cas above 2^32 as none. Two versions of one key share a cas
/// with odds of 1 in 2^32, which a guarded write racing another would then overwrite.
pub fn cas_unique(record: &Record) -> u64 {
    let mixed = (record.clock.digest() ^ record.timestamp.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd);
    u64::from((mixed >> 32) as u32).max(1)
}

/// Parses an incr/decr operand as memcached does: leading blanks, digits, then blanks or end.
pub fn numeric_value(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &value[start..];
    let end = text
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 || !text[end..].first().is_none_or(u8::is_ascii_whitespace) {
        return None;
    }
    (text[..end].iter()).try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &str, timestamp: u64, writer: u64) -> Record {
        Record {
            value: Bytes::copy_from_slice(value.as_bytes()),
            flags: 5,
            expires_at: 0,
            timestamp,
            clock: VectorClock::new().incremented(writer),
            tombstone: false,
            stale: false,
            recache_claimed: false,
        }
    }

    fn counted(outcome: ArithOutcome) -> Outcome {
        Outcome::Arith {
            outcome,
            cas: 0,
            expires_at: 0,
        }
    }

    fn store(mode: StoreMode, data: &str) -> WriteOp {
        guarded(mode, None, data)
    }

    fn guarded(mode: StoreMode, cas: CasGuard, data: &str) -> WriteOp {
        WriteOp::Store {
            mode,
            cas,
            stale_if_older: false,
            flags: 1,
            expires_at: 0,
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    #[test]
    fn exptime_rules() {
        assert_eq!(expiry(0, 1000), 0);
        assert_eq!(expiry(-1, 1000), 1);
        assert_eq!(expiry(10, 1000), 1010);
        assert_eq!(
            expiry(RELATIVE_EXPTIME_LIMIT, 1000),
            1000 + RELATIVE_EXPTIME_LIMIT as u64
        );
        assert_eq!(
            expiry(RELATIVE_EXPTIME_LIMIT + 1, 1000),
            RELATIVE_EXPTIME_LIMIT as u64 + 1
        );
    }

    #[test]
    fn a_transition_supersedes_every_current_version() {
        let siblings = Versions(vec![record("a", 1, 1), record("b", 2, 2)]);
        let stamp = 9;
        let done = transition(store(StoreMode::Set, "c"), Some(&siblings), 3, stamp);
        let new = done.record.expect("a set writes");
        assert!(siblings.0.iter().all(|s| new.clock.descends(&s.clock)));
        assert_eq!(
            (new.timestamp, done.outcome),
            (9, Outcome::Store(StoreOutcome::Stored, cas_unique(&new)))
        );
        // A touch keeps clock and cas, and answers with the touched record.
        let touch = WriteOp::Touch { expires_at: 77 };
        let done = transition(
            touch.clone(),
            Some(&Versions::one(record("a", 1, 1))),
            3,
            stamp,
        );
        let touched = done.record.expect("a touch writes");
        assert_eq!((touched.expires_at, touched.timestamp), (77, 1));
        assert_eq!(done.outcome, Outcome::Touched(Some(touched)));
    }

    #[test]
    fn numeric_values_as_memcached_reads_them() {
        assert_eq!(numeric_value(b"12"), Some(12));
        assert_eq!(numeric_value(b" 12"), Some(12));
        assert_eq!(numeric_value(b"99 "), Some(99));
        assert_eq!(numeric_value(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(numeric_value(b"18446744073709551616"), None);
        for bad in [&b""[..], b"12a", b"-1", b" ", b"a"] {
            assert_eq!(numeric_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn storage_modes_against_present_absent_and_deleted_keys() {
        let present = Versions::one(record("old", 1, 1));
        let deleted = Versions::one(Record {
            tombstone: true,
            ..record("", 2, 1)
        });
        let outcome = |op: &WriteOp, current| decide(op.clone(), current).1;
        let stored = Outcome::Store(StoreOutcome::Stored, 0);
        let not_stored = Outcome::Store(StoreOutcome::NotStored, 0);
        assert_eq!(
            outcome(&store(StoreMode::Add, "x"), Some(&present)),
            not_stored
        );
        assert_eq!(outcome(&store(StoreMode::Add, "x"), Some(&deleted)), stored);
        assert_eq!(
            outcome(&store(StoreMode::Replace, "x"), Some(&deleted)),
            not_stored
        );
        let (new, _) = decide(store(StoreMode::Append, "!"), Some(&present));
        assert_eq!(new.map(|n| (n.value, n.flags)), Some(("old!".into(), 5)));
        assert_eq!(
            outcome(&WriteOp::Delete { cas: None }, Some(&deleted)),
            Outcome::Deleted(DeleteOutcome::NotFound)
        );
        assert_eq!(
            outcome(&WriteOp::Delete { cas: None }, Some(&present)),
            Outcome::Deleted(DeleteOutcome::Deleted)
        );
    }

    #[test]
    fn cas_and_arith_use_the_newest_sibling() {
        let older = record("7", 1, 1);
        let newer = record("41", 2, 2);
        let siblings = Versions(vec![newer.clone(), older.clone()]);
        let (new, outcome) = decide(
            WriteOp::Arith {
                incr: true,
                delta: 1,
                cas: None,
                vivify: None,
                touch: None,
            },
            Some(&siblings),
        );
        assert_eq!(outcome, counted(ArithOutcome::Value(42)));
        assert_eq!(new.unwrap().value, "42");
        // Either sibling's cas resolves the conflict; a foreign one does not.
        for unique in [cas_unique(&older), cas_unique(&newer)] {
            let op = guarded(StoreMode::Set, Some(unique), "v");
            assert_eq!(
                decide(op.clone(), Some(&siblings)).1,
                Outcome::Store(StoreOutcome::Stored, 0)
            );
        }
        let op = guarded(StoreMode::Set, Some(cas_unique(&older) ^ 1), "v");
        assert_eq!(
            decide(op.clone(), Some(&siblings)).1,
            Outcome::Store(StoreOutcome::Exists, 0)
        );
    }

    #[test]
    fn guards_on_delete_arith_and_append_and_vivified_counters() {
        let present = Versions::one(record("5", 1, 1));
        let unique = cas_unique(&present.0[0]);
        let outcome = |op: &WriteOp, current| decide(op.clone(), current).1;
        let delete = |cas| WriteOp::Delete { cas };
        assert_eq!(
            outcome(&delete(Some(unique ^ 1)), Some(&present)),
            Outcome::Deleted(DeleteOutcome::Exists)
        );
        assert_eq!(
            outcome(&delete(Some(unique)), Some(&present)),
            Outcome::Deleted(DeleteOutcome::Deleted)
        );
        let arith = |cas, vivify| WriteOp::Arith {
            incr: false,
            delta: 9,
            cas,
            vivify,
            touch: None,
        };
        assert_eq!(
            outcome(&arith(Some(unique ^ 1), None), Some(&present)),
            counted(ArithOutcome::Exists)
        );
        assert_eq!(
            outcome(&arith(Some(unique), None), Some(&present)),
            counted(ArithOutcome::Value(0))
        );
        let appended = guarded(StoreMode::Append, Some(unique ^ 1), "!");
        assert_eq!(
            outcome(&appended, Some(&present)),
            Outcome::Store(StoreOutcome::Exists, 0)
        );
        // A missing counter is created with the initial value itself, not initial - delta.
        let vivify = Vivify {
            initial: 100,
            expires_at: 7,
        };
        let (new, answer) = decide(arith(None, Some(vivify)), None);
        let new = new.expect("vivify writes");
        assert_eq!((new.value, new.expires_at, new.flags), ("100".into(), 7, 0));
        assert_eq!(answer, counted(ArithOutcome::Value(100)));
        // A cas guard on a missing key: set answers not found, append not stored.
        let cas_set = guarded(StoreMode::Set, Some(1), "v");
        assert_eq!(
            outcome(&cas_set, None),
            Outcome::Store(StoreOutcome::NotFound, 0)
        );
        let cas_append = guarded(StoreMode::Append, Some(1), "v");
        assert_eq!(
            outcome(&cas_append, None),
            Outcome::Store(StoreOutcome::NotStored, 0)
        );
    }

    fn fetch(touch: Option<u64>, vivify: Option<u64>, recache_before: Option<u64>) -> WriteOp {
        WriteOp::Fetch {
            touch,
            vivify,
            recache_before,
        }
    }

    fn fetched(outcome: &Outcome) -> &Fetched {
        match outcome {
            Outcome::Fetched(fetched) => fetched,
            other => panic!("a fetch answered {other:?}"),
        }
    }

    #[test]
    fn one_reader_wins_the_recache_of_a_stale_expiring_or_missing_item() {
        // A miss with N creates an empty placeholder whose creator holds the token.
        let done = transition(fetch(None, Some(50), None), None, 1, 10);
        let created = done.record.expect("vivify writes");
        assert!(created.value.is_empty() && created.recache_claimed && !done.amends);
        let answer = fetched(&done.outcome);
        assert!(answer.won && answer.created && !answer.claimed_before);
        assert_eq!(answer.record.as_ref(), Some(&created));
        // The next reader is told someone else holds it, and nothing is written.
        let held = Versions::one(created);
        let (new, outcome) = decide(fetch(None, Some(50), None), Some(&held));
        assert!(new.is_none());
        assert!(!fetched(&outcome).won && fetched(&outcome).claimed_before);

        // R: an item expiring before the mark is won once, amended in place.
        let expiring = Versions::one(Record {
            expires_at: 100,
            ..record("v", 1, 1)
        });
        let (new, outcome) = decide(fetch(None, None, Some(99)), Some(&expiring));
        assert!(
            new.is_none() && !fetched(&outcome).won,
            "not close enough yet"
        );
        let done = transition(fetch(None, None, Some(101)), Some(&expiring), 2, 20);
        let claimed = done.record.expect("a win writes the claim");
        assert!(done.amends && claimed.recache_claimed);
        assert_eq!(
            cas_unique(&claimed),
            cas_unique(&expiring.0[0]),
            "cas stays"
        );
        assert!(fetched(&done.outcome).won);

        // md I: a new, stale version; its first reader wins, and only that one.
        let invalidate = WriteOp::Invalidate {
            cas: None,
            expires_at: Some(30),
        };
        let done = transition(invalidate.clone(), Some(&Versions::one(claimed)), 2, 30);
        let stale = done.record.expect("invalidate writes");
        assert!(stale.stale && !stale.recache_claimed && stale.expires_at == 30);
        assert_ne!(cas_unique(&stale), cas_unique(&expiring.0[0]));
        let stale = Versions::one(stale);
        let done = transition(fetch(None, None, None), Some(&stale), 2, 40);
        assert!(fetched(&done.outcome).won);
        let again = Versions::one(done.record.unwrap());
        let (_, outcome) = decide(fetch(None, None, None), Some(&again));
        assert!(!fetched(&outcome).won && fetched(&outcome).claimed_before);
        assert_eq!(
            decide(invalidate.clone(), None).1,
            Outcome::Deleted(DeleteOutcome::NotFound)
        );
    }

    #[test]
    fn an_older_cas_with_invalidate_stores_a_stale_version() {
        let old = record("old", 5, 1);
        let current = Versions::one(Record {
            expires_at: 77,
            recache_claimed: true,
            ..record("current", 9, 1)
        });
        let op = |cas| WriteOp::Store {
            mode: StoreMode::Set,
            cas: Some(cas),
            stale_if_older: true,
            flags: 1,
            expires_at: 0,
            data: Bytes::from_static(b"new"),
        };
        let (new, outcome) = decide(op(cas_unique(&old)), Some(&current));
        let new = new.expect("an older cas stores");
        assert_eq!(outcome, Outcome::Store(StoreOutcome::Stored, 0));
        assert!(new.stale && new.recache_claimed && new.expires_at == 77);
        // Without I, the same old cas is a mismatch.
        let mut plain = op(cas_unique(&old));
        if let WriteOp::Store { stale_if_older, .. } = &mut plain {
            *stale_if_older = false;
        }
        assert_eq!(
            decide(plain.clone(), Some(&current)).1,
            Outcome::Store(StoreOutcome::Exists, 0)
        );
        // The matching cas stores a fresh version.
        let (new, _) = decide(op(cas_unique(&current.0[0])), Some(&current));
        assert!(!new.unwrap().stale);
    }

    #[test]
    fn a_cas_unique_from_release_0_1_0_still_guards() {
        let current = record("a", 1_700_000_000_000_000, 1);
        let other = record("a", 1_700_000_000_000_001, 1);
        let old_unique = legacy_cas_unique(&current);
        assert!(old_unique > u64::from(u32::MAX));
        assert!(guard_holds(Some(old_unique), Some(&Versions::one(current))));
        assert!(!guard_holds(Some(old_unique), Some(&Versions::one(other))));
    }

    #[test]
    fn cas_uniques_fit_32_bits_and_tell_versions_apart() {
        let uniques: std::collections::HashSet<u64> = (0..10_000)
            .map(|t| cas_unique(&record("a", 1_700_000_000_000_000 + t, 1 + t % 3)))
            .collect();
        assert_eq!(uniques.len(), 10_000);
        assert!(uniques.iter().all(|&c| c != 0 && c <= u64::from(u32::MAX)));
    }

    /// Every kind of write, guarded by `cas` where it takes a guard.
    fn every_write(cas: CasGuard, data: &str) -> Vec<WriteOp> {
        let modes = [
            StoreMode::Set,
            StoreMode::Add,
            StoreMode::Replace,
            StoreMode::Append,
            StoreMode::Prepend,
        ];
        let mut writes: Vec<WriteOp> = modes.iter().map(|&mode| guarded(mode, cas, data)).collect();
        let mut stale_if_older = guarded(StoreMode::Set, cas, data);
        if let WriteOp::Store { stale_if_older, .. } = &mut stale_if_older {
            *stale_if_older = true;
        }
        writes.push(stale_if_older);
        let vivify = Some(Vivify {
            initial: 7,
            expires_at: 0,
        });
        writes.extend([
            WriteOp::Delete { cas },
            WriteOp::Invalidate {
                cas,
                expires_at: Some(50),
            },
            WriteOp::Arith {
                incr: true,
                delta: 2,
                cas,
                vivify,
                touch: None,
            },
            WriteOp::Touch { expires_at: 60 },
            WriteOp::Fetch {
                touch: Some(70),
                vivify: Some(80),
                recache_before: Some(90),
            },
        ]);
        writes
    }

    #[test]
    fn plain_stores_and_deletes_read_no_value() {
        for write in every_write(None, "v") {
            let plain = matches!(
                write,
                WriteOp::Store {
                    mode: StoreMode::Set | StoreMode::Add | StoreMode::Replace,
                    ..
                } | WriteOp::Delete { .. }
            );
            assert_eq!(write.reads_value(), !plain, "{write:?}");
        }
    }

    proptest::proptest! {
        /// What lets a store skip copying values out (`Store::overwrite`).
        #[test]
        fn a_write_that_reads_no_value_decides_the_same_without_the_values(
            records in proptest::collection::vec(crate::record::arbitrary_record(), 1..3),
            guard in 0usize..3,
        ) {
            let current = Versions(records);
            let mut without_values = current.clone();
            for record in &mut without_values.0 {
                record.value = Bytes::new();
            }
            let cas = [None, Some(cas_unique(&current.0[0])), Some(12_345)][guard];
            for write in every_write(cas, "12") {
                if write.reads_value() {
                    continue;
                }
                let stamp = u64::MAX;
                proptest::prop_assert_eq!(
                    transition(write.clone(), Some(&current), 1, stamp),
                    transition(write.clone(), Some(&without_values), 1, stamp),
                    "{:?}", write
                );
            }
        }
    }
}
