//! Multi-node harness: real `kai` processes on their own loopback addresses
//! (127.0.<net>.<i>), joined through seeds, killed and restarted with their data dirs, and
//! partitioned with nftables rules that reset their rpc connections.

use super::{free_port, Client, Kai, KAI};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Member {
    pub index: usize,
    pub host: String,
    pub rpc: SocketAddr,
    pub memcache: SocketAddr,
    /// Kept across restarts: the member list, hints and (disk engine) the store.
    pub data: tempfile::TempDir,
    pub process: Option<Kai>,
}

#[derive(Clone, Copy, Debug)]
pub enum Cut {
    Reset,
    Drop,
}

pub struct Cluster {
    pub net: u8,
    pub members: Vec<Member>,
    /// Lines added to every node's [cluster] section (quorum, conflict resolution…).
    pub extra: String,
    /// Lines added to every node's [rpc] section (secret file…).
    pub rpc_extra: String,
    rpc_port: u16,
    memcache_port: u16,
    partition: Option<String>,
    /// Extra environment of node i's process (libfaketime for a skewed clock).
    pub env: HashMap<usize, Vec<(String, String)>>,
    /// Nodes started from now on serve Prometheus metrics on their host, port 0.
    pub metrics: bool,
    /// The kai binary node i runs from its next start, if not this build's.
    pub binary: HashMap<usize, std::path::PathBuf>,
    /// Node i's `[node] zone`, if any.
    pub zones: HashMap<usize, String>,
}

impl Cluster {
    /// `size` nodes on 127.0.`net`.1..=size (`net` unique per test), each seeded with node 1.
    pub fn start(net: u8, size: usize, extra: &str) -> Cluster {
        Cluster::start_with(net, size, extra, "")
    }

    pub fn start_with(net: u8, size: usize, extra: &str, rpc_extra: &str) -> Cluster {
        Cluster::start_zoned(net, &vec![""; size], extra, rpc_extra)
    }

    /// One node per entry of `zones` (its `[node] zone`; "" for none).
    pub fn start_zoned(net: u8, zones: &[&str], extra: &str, rpc_extra: &str) -> Cluster {
        // Two probes may hand out the same free port; the listeners need two.
        let rpc_port = free_port();
        let memcache_port = std::iter::repeat_with(free_port)
            .find(|&p| p != rpc_port)
            .unwrap();
        let mut cluster = Cluster {
            net,
            members: Vec::new(),
            extra: extra.to_string(),
            rpc_extra: rpc_extra.to_string(),
            rpc_port,
            memcache_port,
            partition: None,
            env: HashMap::new(),
            metrics: false,
            binary: HashMap::new(),
            zones: (zones.iter().enumerate())
                .filter(|(_, z)| !z.is_empty())
                .map(|(i, z)| (i, z.to_string()))
                .collect(),
        };
        for _ in zones {
            let i = cluster.add_member();
            cluster.start_node(i, true);
        }
        cluster
    }

    /// Adds (but does not start) node number `len + 1`; returns its index.
    pub fn add_member(&mut self) -> usize {
        let index = self.members.len() + 1;
        let host = format!("127.0.{}.{index}", self.net);
        self.members.push(Member {
            index,
            rpc: format!("{host}:{}", self.rpc_port).parse().unwrap(),
            memcache: format!("{host}:{}", self.memcache_port).parse().unwrap(),
            host,
            data: tempfile::tempdir().unwrap(),
            process: None,
        });
        index - 1
    }

    pub fn config(&self, i: usize, seeded: bool) -> String {
        let m = &self.members[i];
        let seeds = if seeded {
            format!("seeds = [\"{}\"]\n", self.members[0].rpc)
        } else {
            String::new()
        };
        let metrics = if self.metrics {
            format!("\n[metrics]\nlisten = \"{}:0\"\n", m.host)
        } else {
            String::new()
        };
        let zone = (self.zones.get(&i)).map_or_else(String::new, |z| format!("zone = \"{z}\"\n"));
        format!(
            "[node]\nhostname = \"{}\"\ndata_dir = \"{}\"\n{zone}[memcache]\nlisten = \"{}\"\n[rpc]\nlisten = \"{}\"\ntimeout = \"1s\"\n{}[cluster]\n{seeds}gossip_interval = \"250ms\"\n{}{metrics}",
            m.host,
            m.data.path().display(),
            m.memcache,
            m.rpc,
            self.rpc_extra,
            self.extra
        )
    }

    /// Starts node `i` (again); `seeded` false proves it rejoins from its data dir alone.
    pub fn start_node(&mut self, i: usize, seeded: bool) {
        let config = self.config(i, seeded);
        let env = self.env.get(&i).cloned().unwrap_or_default();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let binary = (self.binary.get(&i).cloned()).unwrap_or_else(|| super::KAI.into());
        let kai = Kai::start_binary(&binary, tempfile::tempdir().unwrap(), &config, &env, &[]);
        self.members[i].process = Some(kai);
    }

    /// Writes node `i`'s config to a file (for `kai --config … cluster …`).
    pub fn config_file(&self, i: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), self.config(i, false)).unwrap();
        file
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut kai) = self.members[i].process.take() {
            kai.child.kill().unwrap(); // SIGKILL
            kai.child.wait().unwrap();
        }
    }

    /// Runs node `i` (from its next start) with its wall clock `offset` off, e.g. "-30s"
    /// (libfaketime; timers keep the real monotonic clock).
    pub fn skew_clock(&mut self, i: usize, offset: &str) {
        let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
        assert!(
            std::path::Path::new(lib).exists(),
            "libfaketime is not installed"
        );
        self.env.insert(
            i,
            vec![
                ("LD_PRELOAD".into(), lib.into()),
                ("FAKETIME".into(), offset.into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ("FAKETIME_DONT_RESET".into(), "1".into()),
            ],
        );
    }

    /// Starts node `i` again with an empty data dir (a replaced disk, a reinstalled host).
    pub fn wipe(&mut self, i: usize) {
        self.members[i].data = tempfile::tempdir().unwrap();
    }

    pub fn node(&self, i: usize) -> &Kai {
        self.members[i].process.as_ref().expect("node running")
    }

    pub fn client(&self, i: usize) -> Client {
        Client::connect(self.members[i].memcache)
    }

    pub fn stats(&self, i: usize) -> HashMap<String, String> {
        self.client(i).stats("stats")
    }

    /// Every running node's log, for failure messages.
    pub fn logs(&self) -> String {
        (self.members.iter())
            .filter_map(|m| {
                Some(format!(
                    "--- node {} ---\n{}",
                    m.index,
                    m.process.as_ref()?.log()
                ))
            })
            .collect()
    }

    pub fn rpc_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.rpc.to_string()).collect()
    }

    /// Waits until every running node sees exactly `up` as its members up, with one ring
    /// digest among them.
    pub fn wait_converged(&self, up: &[usize], limit: Duration) -> bool {
        let mut want: Vec<String> = up
            .iter()
            .map(|&i| self.members[i].rpc.to_string())
            .collect();
        want.sort();
        let want = want.join(" ");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let views: Vec<_> = up
                .iter()
                .map(|&i| {
                    let stats = self.stats(i);
                    (
                        stats["kai_curr_nodes"].clone(),
                        stats["kai_ring_digest"].clone(),
                    )
                })
                .collect();
            if views.iter().all(|v| v.0 == want && v.1 == views[0].1) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Cuts node `isolated` off from every other node's rpc port (and them from its): new
    /// connections and established ones are reset. Client traffic still reaches every node.
    pub fn isolate(&mut self, isolated: usize) {
        self.cut_off(isolated, Cut::Reset);
    }

    /// Like `isolate`, with the packets either refused (`Cut::Reset`) or silently dropped
    /// (`Cut::Drop`: what a dead switch port does; senders learn only from timeouts).
    pub fn cut_off(&mut self, isolated: usize, how: Cut) {
        let verdict = match how {
            Cut::Reset => "reject with tcp reset",
            Cut::Drop => "drop",
        };
        let table = format!("kai_test_{}_{}", std::process::id(), self.net);
        let me = &self.members[isolated].host;
        let others: Vec<&str> = (self.members.iter())
            .filter(|m| m.index != isolated + 1)
            .map(|m| m.host.as_str())
            .collect();
        let others = others.join(", ");
        let port = self.rpc_port;
        let mut rules = String::new();
        for direction in ["dport", "sport"] {
            for (from, to) in [
                (me.clone(), format!("{{ {others} }}")),
                (format!("{{ {others} }}"), me.clone()),
            ] {
                rules.push_str(&format!(
                    "add rule inet {table} out ip saddr {from} ip daddr {to} tcp {direction} {port} {verdict}\n"
                ));
            }
        }
        let script = format!(
            "add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0 ; }}\n{rules}"
        );
        nft(&script);
        self.partition = Some(table);
    }

    pub fn heal(&mut self) {
        if let Some(table) = self.partition.take() {
            nft(&format!("delete table inet {table}\n"));
        }
    }

    /// Runs the kai CLI; returns exit code and stdout.
    pub fn kai(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(KAI).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    /// The versions node `i` holds of `key` (its own replica, through `kai cluster inspect`).
    pub fn inspect(&self, i: usize, key: &str) -> String {
        let config = self.config_file(i);
        let path = config.path().to_str().unwrap().to_string();
        let (code, text) = self.kai(&["--config", &path, "cluster", "inspect", key]);
        assert_eq!(code, 0, "{text}");
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.heal();
    }
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables) is needed for partition tests");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed on:\n{script}");
}

/// The values a `gets` returns, in reply order (a SERVER_ERROR line is returned as is).
pub fn values(client: &mut Client, key: &str) -> Vec<String> {
    client.send(format!("gets {key}\r\n").as_bytes());
    let mut out = Vec::new();
    loop {
        let line = client.line();
        if line.starts_with("VALUE ") {
            out.push(client.line().trim_end().to_string());
        } else if line == "END\r\n" {
            return out;
        } else {
            out.push(line.trim_end().to_string());
            return out;
        }
    }
}
