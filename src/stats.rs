//! Counters behind the `stats` command, and its text (docs/design.md, "Stats": the names are a contract
//! with cacti and Nagios checks).
//!
//! Kai semantics kept on purpose: `cmd_get` counts keys that returned a value, `bytes_read`
//! counts value bytes sent to clients and `bytes_write` value bytes received from them.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SLOTS: usize = 8;

#[derive(Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// A counter bumped from every worker thread. Each thread adds to its own cache line, so
/// the request path never fights over one (a shared atomic cost ~10% of set throughput on
/// two cores); reading sums the slots.
#[derive(Default)]
pub struct Counter([Slot; SLOTS]);

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

impl Counter {
    pub fn add(&self, amount: u64) {
        let slot = THREAD_SLOT.with(|slot| *slot);
        self.0[slot].0.fetch_add(amount, Ordering::Relaxed);
    }

    /// Subtracts (for gauges such as curr_connections); slots wrap, the sum stays right.
    pub fn sub(&self, amount: u64) {
        let slot = THREAD_SLOT.with(|slot| *slot);
        self.0[slot].0.fetch_sub(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, slot| {
            sum.wrapping_add(slot.0.load(Ordering::Relaxed))
        })
    }

    fn reset(&self) {
        for slot in &self.0 {
            slot.0.store(0, Ordering::Relaxed);
        }
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Event counters and gauges, bumped without locks on the request path.
        #[derive(Default)]
        pub struct Counters {
            $(pub $name: Counter,)*
        }

        impl Counters {
            /// `stats reset`: every event counter back to 0; the gauge (open
            /// connections) stays.
            pub fn reset(&self) {
                $(if stringify!($name) != "curr_connections" {
                    self.$name.reset();
                })*
            }
        }
    };
}

counters!(
    curr_connections,
    total_connections,
    rejected_connections,
    ssl_handshake_errors,
    auth_cmds,
    auth_errors,
    http_requests_closed,
    cmd_get,
    cmd_set,
    cmd_touch,
    cmd_flush,
    get_hits,
    get_misses,
    delete_hits,
    delete_misses,
    cas_hits,
    cas_misses,
    cas_badval,
    incr_hits,
    incr_misses,
    decr_hits,
    decr_misses,
    touch_hits,
    touch_misses,
    total_items,
    bytes_read,
    bytes_write,
);

/// The open client connections, for `stats conns`.
#[derive(Default)]
pub struct Clients {
    /// The memcache listener's bound address (the configured one may name port 0).
    listening: Mutex<Option<SocketAddr>>,
    next_id: AtomicU64,
    open: Arc<Mutex<std::collections::BTreeMap<u64, Arc<Client>>>>,
}

/// One open client connection as `stats conns` shows it.
pub struct Client {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Unix seconds of the last request received.
    pub last_request: AtomicU64,
}

/// Removes its connection from the table when dropped.
pub struct ClientEntry {
    open: Arc<Mutex<std::collections::BTreeMap<u64, Arc<Client>>>>,
    id: u64,
    pub client: Arc<Client>,
}

impl Clients {
    pub fn set_listening(&self, address: SocketAddr) {
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
    }

    pub fn listening(&self) -> Option<SocketAddr> {
        *self.listening.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, its last request taken as `now_secs` (Unix seconds).
    pub fn register(&self, peer: SocketAddr, local: SocketAddr, now_secs: u64) -> ClientEntry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let client = Arc::new(Client {
            peer,
            local,
            last_request: AtomicU64::new(now_secs),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(id, Arc::clone(&client));
        ClientEntry {
            open: Arc::clone(&self.open),
            id,
            client,
        }
    }

    /// `(id, connection)` for every open connection, oldest first.
    pub fn list(&self) -> Vec<(u64, Arc<Client>)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().map(|(&id, c)| (id, Arc::clone(c))).collect()
    }
}

impl ClientEntry {
    /// Notes that a request arrived at `now_secs` (Unix seconds). Written only when the
    /// second changes, so a busy connection mostly reads the line.
    pub fn seen(&self, now_secs: u64) {
        let last_request = &self.client.last_request;
        if last_request.load(Ordering::Relaxed) != now_secs {
            last_request.store(now_secs, Ordering::Relaxed);
        }
    }
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&self.id);
    }
}

/// Kai's `kai_unreconciled_get`: for reads that met 2, 3, … versions, how many were left
/// unreconciled (U) out of how many (T), printed as `U(T) U(T) …`.
pub struct Unreconciled(Mutex<Vec<(u64, u64)>>);

impl Unreconciled {
    /// Starts with N−1 slots, as Kai did (`0(0) 0(0)` for N = 3).
    pub fn new(replicas: u32) -> Self {
        Unreconciled(Mutex::new(vec![
            (0, 0);
            replicas.saturating_sub(1).max(1) as usize
        ]))
    }

    /// Records a read that gathered `versions` (≥ 2) versions and kept `left` after reconciling.
    pub fn record(&self, versions: usize, left: usize) {
        if versions < 2 {
            return;
        }
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = versions - 2;
        if slots.len() <= slot {
            slots.resize(slot + 1, (0, 0));
        }
        slots[slot].1 += 1;
        if left > 1 {
            slots[slot].0 += 1;
        }
    }

    pub fn render(&self) -> String {
        let slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (i, (unreconciled, total)) in slots.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{unreconciled}({total})");
        }
        out
    }
}

/// `STAT name value` lines in order, closed by `END`.
pub fn render(stats: &[(String, String)], out: &mut Vec<u8>) {
    for (name, value) in stats {
        out.extend_from_slice(b"STAT ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"END\r\n");
}

/// CPU time as memcached prints it: seconds.microseconds.
pub fn rusage() -> (String, String) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let fmt = |t: nix::sys::time::TimeVal| format!("{}.{:06}", t.tv_sec(), t.tv_usec());
            (fmt(usage.user_time()), fmt(usage.system_time()))
        }
        Err(_) => ("0.000000".into(), "0.000000".into()),
    }
}

/// The process's resident memory in bytes: its own pages (heap, stacks) and pages of files
/// it maps, which for the disk engine is the part of its log that reads touched. The kernel
/// reclaims the second kind under memory pressure; an operator graphing RSS needs the two
/// apart. Zero where /proc/self/status has no such line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    pub anon_bytes: u64,
    pub file_bytes: u64,
}

pub fn resident() -> Resident {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_resident(&status)
}

fn parse_resident(status: &str) -> Resident {
    let bytes_of = |field: &str| {
        (status.lines())
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Resident {
        anon_bytes: bytes_of("RssAnon:"),
        file_bytes: bytes_of("RssFile:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_from_proc_status() {
        let status =
            "VmRSS:\t   30 kB\nRssAnon:\t    12 kB\nRssFile:\t   16 kB\nRssShmem:\t 2 kB\n";
        assert_eq!(
            parse_resident(status),
            Resident {
                anon_bytes: 12 * 1024,
                file_bytes: 16 * 1024
            }
        );
        assert_eq!(parse_resident("VmRSS: 3 kB\n"), Resident::default());
        assert!(resident().anon_bytes > 0, "this test process has a heap");
    }

    #[test]
    fn unreconciled_in_kai_format() {
        let u = Unreconciled::new(3);
        assert_eq!(u.render(), "0(0) 0(0)");
        u.record(2, 1);
        u.record(2, 2);
        u.record(4, 3);
        u.record(1, 1);
        assert_eq!(u.render(), "1(2) 0(0) 1(1)");
        assert_eq!(Unreconciled::new(2).render(), "0(0)");
    }

    #[test]
    fn counters_sum_across_threads() {
        let counter = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = std::sync::Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.add(2);
                    }
                    counter.sub(1000);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.get(), 4000);
        counter.sub(1);
        assert_eq!(counter.get(), 3999);
    }

    #[test]
    fn renders_stat_lines() {
        let mut out = Vec::new();
        render(
            &[
                ("pid".into(), "7".into()),
                ("kai_quorum".into(), "3,2,2".into()),
            ],
            &mut out,
        );
        assert_eq!(out, b"STAT pid 7\r\nSTAT kai_quorum 3,2,2\r\nEND\r\n");
    }
}
