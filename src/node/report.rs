//! What `stats` answers, section by section (docs/design.md, "Stats": the names are a
//! contract with cacti, Nagios and the Prometheus exporter).

use super::{Node, StatsSection, SERVER_VERSION, VERSION};
use crate::cluster::counters::ClusterCounters;
use crate::stats;
use crate::time::unix_secs;
use md5::{Digest, Md5};
use std::sync::atomic::AtomicU64;

impl Node {
    pub fn stats(&self, section: StatsSection) -> Vec<(String, String)> {
        let named = |stats: Vec<(&str, String)>| {
            (stats.into_iter())
                .map(|(name, value)| (name.to_string(), value))
                .collect()
        };
        match section {
            StatsSection::General => named(self.general_stats()),
            StatsSection::Settings => named(self.settings_stats()),
            StatsSection::Kai => named(self.kai_stats()),
            StatsSection::Cluster => named(self.cluster_stats()),
            StatsSection::Slabs => named(self.slab_stats()),
            StatsSection::Items => named(self.item_stats()),
            StatsSection::Sizes => vec![("sizes_status".into(), "disabled".into())],
            StatsSection::Conns => self.connection_stats(),
        }
    }

    /// kai allocates each item on its own: one class, as large as the largest item, holds
    /// them all; its counters are the node's totals.
    fn slab_stats(&self) -> Vec<(&'static str, String)> {
        let c = &self.counters;
        let read = |counter: &crate::stats::Counter| counter.get().to_string();
        let store = self.store.stats();
        let items = store.items.to_string();
        if store.items == 0 {
            return vec![("active_slabs", "0".into()), ("total_malloced", "0".into())];
        }
        vec![
            (
                "1:chunk_size",
                self.config().memcache.max_item_size.0.to_string(),
            ),
            ("1:chunks_per_page", items.clone()),
            ("1:total_pages", "1".into()),
            ("1:total_chunks", items.clone()),
            ("1:used_chunks", items),
            ("1:free_chunks", "0".into()),
            ("1:free_chunks_end", "0".into()),
            ("1:get_hits", read(&c.get_hits)),
            ("1:cmd_set", read(&c.cmd_set)),
            ("1:delete_hits", read(&c.delete_hits)),
            ("1:incr_hits", read(&c.incr_hits)),
            ("1:decr_hits", read(&c.decr_hits)),
            ("1:cas_hits", read(&c.cas_hits)),
            ("1:cas_badval", read(&c.cas_badval)),
            ("1:touch_hits", read(&c.touch_hits)),
            ("active_slabs", "1".into()),
            ("total_malloced", store.bytes.to_string()),
        ]
    }

    fn item_stats(&self) -> Vec<(&'static str, String)> {
        let store = self.store.stats();
        if store.items == 0 {
            return Vec::new();
        }
        vec![
            ("items:1:number", store.items.to_string()),
            ("items:1:mem_requested", store.bytes.to_string()),
            ("items:1:evicted", store.evictions.to_string()),
            ("items:1:outofmemory", "0".into()),
        ]
    }

    /// memcached's `stats conns`: the listener, then each client connection.
    fn connection_stats(&self) -> Vec<(String, String)> {
        let now = unix_secs();
        let listen = match self.clients.listening() {
            Some(address) => address.to_string(),
            None => self.config().memcache.listen.clone(),
        };
        let mut out = vec![
            ("0:addr".into(), format!("tcp:{listen}")),
            ("0:state".into(), "conn_listening".into()),
        ];
        for (id, client) in self.clients.list() {
            let last = client
                .last_request
                .load(std::sync::atomic::Ordering::Relaxed);
            out.push((format!("{id}:addr"), format!("tcp:{}", client.peer)));
            out.push((format!("{id}:listen_addr"), format!("tcp:{}", client.local)));
            out.push((format!("{id}:state"), "conn_parse_cmd".into()));
            out.push((
                format!("{id}:secs_since_last_cmd"),
                now.saturating_sub(last).to_string(),
            ));
        }
        out
    }

    fn general_stats(&self) -> Vec<(&'static str, String)> {
        let c = &self.counters;
        let read = |counter: &crate::stats::Counter| counter.get().to_string();
        let store = self.store.stats();
        let (user, system) = stats::rusage();
        let mut out = vec![
            ("uptime", self.started.elapsed().as_secs().to_string()),
            ("time", unix_secs().to_string()),
            ("version", SERVER_VERSION.to_string()),
            ("pid", std::process::id().to_string()),
            ("pointer_size", (usize::BITS).to_string()),
            ("rusage_user", user),
            ("rusage_system", system),
            (
                "max_connections",
                self.config().memcache.max_connections.to_string(),
            ),
            ("curr_connections", read(&c.curr_connections)),
            ("total_connections", read(&c.total_connections)),
            ("rejected_connections", read(&c.rejected_connections)),
            ("ssl_handshake_errors", read(&c.ssl_handshake_errors)),
            ("threads", self.worker_threads.to_string()),
            ("bytes", store.bytes.to_string()),
            ("curr_items", store.items.to_string()),
            ("total_items", read(&c.total_items)),
            ("cmd_get", read(&c.cmd_get)),
            ("cmd_set", read(&c.cmd_set)),
            ("cmd_touch", read(&c.cmd_touch)),
            ("cmd_flush", read(&c.cmd_flush)),
            ("get_hits", read(&c.get_hits)),
            ("get_misses", read(&c.get_misses)),
            ("delete_hits", read(&c.delete_hits)),
            ("delete_misses", read(&c.delete_misses)),
            ("cas_hits", read(&c.cas_hits)),
            ("cas_misses", read(&c.cas_misses)),
            ("cas_badval", read(&c.cas_badval)),
            ("incr_hits", read(&c.incr_hits)),
            ("incr_misses", read(&c.incr_misses)),
            ("decr_hits", read(&c.decr_hits)),
            ("decr_misses", read(&c.decr_misses)),
            ("touch_hits", read(&c.touch_hits)),
            ("touch_misses", read(&c.touch_misses)),
            ("auth_cmds", read(&c.auth_cmds)),
            ("auth_errors", read(&c.auth_errors)),
            ("evictions", store.evictions.to_string()),
            ("limit_maxbytes", store.limit_bytes.to_string()),
            ("bytes_read", read(&c.bytes_read)),
            ("bytes_write", read(&c.bytes_write)),
        ];
        out.extend(self.kai_stats());
        let metrics = tokio::runtime::Handle::try_current().map(|h| h.metrics());
        out.push((
            "runtime_tasks",
            metrics.map_or(0, |m| m.num_alive_tasks()).to_string(),
        ));
        out.push(("runtime_version", env!("KAI_RUNTIME_VERSION").to_string()));
        out
    }

    /// One `STAT member <host:port> <state> buckets=<owned> hints=<pending> [self]` per member.
    fn cluster_stats(&self) -> Vec<(&'static str, String)> {
        match self.cluster.get() {
            Some(cluster) => cluster
                .status()
                .into_iter()
                .map(|line| ("member", line))
                .collect(),
            None => vec![(
                "member",
                format!("{} up buckets=0 hints=0 self", self.address),
            )],
        }
    }

    fn kai_stats(&self) -> Vec<(&'static str, String)> {
        let config = self.config();
        let q = config.cluster.quorum;
        let up = self.members_up();
        let members = self.members();
        let digest = Md5::digest(self.ring_layout().as_bytes());
        let ring_digest: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let count = |read: fn(&ClusterCounters) -> &AtomicU64| {
            (self.cluster.get())
                .map_or(0, |cluster| ClusterCounters::get(read(cluster.counters())))
                .to_string()
        };
        let hints = self
            .cluster
            .get()
            .map_or(0, |cluster| cluster.hints().total());
        let store = self.store.stats();
        let resident = stats::resident();
        let offsets = self.clock_offsets();
        let max_offset_ms = (offsets.iter())
            .map(|(_, ms)| ms.unsigned_abs())
            .max()
            .unwrap_or(0);
        let offsets: Vec<String> = (offsets.iter())
            .map(|(peer, ms)| format!("{peer}={ms}"))
            .collect();
        vec![
            ("kai_version", VERSION.to_string()),
            ("kai_node", self.address.clone()),
            ("kai_quorum", format!("{},{},{}", q.n, q.r, q.w)),
            ("kai_number_of_buckets", config.cluster.buckets.to_string()),
            (
                "kai_number_of_virtual_nodes",
                config.cluster.virtual_nodes.to_string(),
            ),
            ("kai_store", config.store.engine.name().to_string()),
            ("kai_cluster_state", self.cluster_state().to_string()),
            ("kai_curr_nodes", up.join(" ")),
            ("kai_members", members.len().to_string()),
            ("kai_ring_digest", ring_digest),
            ("kai_unreconciled_get", self.unreconciled.render()),
            ("kai_hinted_handoffs", count(|c| &c.hinted_handoffs)),
            ("kai_pending_hints", hints.to_string()),
            ("kai_read_repairs", count(|c| &c.read_repairs)),
            (
                "kai_read_quorum_failures",
                count(|c| &c.read_quorum_failures),
            ),
            (
                "kai_write_quorum_failures",
                count(|c| &c.write_quorum_failures),
            ),
            ("kai_forward_failures", count(|c| &c.forward_failures)),
            ("kai_sync_keys", count(|c| &c.sync_keys)),
            ("kai_sync_bytes", count(|c| &c.sync_bytes)),
            ("kai_sync_pending_buckets", count(|c| &c.pending_buckets)),
            ("kai_purged_tombstones", count(|c| &c.purged_tombstones)),
            (
                "kai_http_requests_closed",
                self.counters.http_requests_closed.get().to_string(),
            ),
            ("kai_clock_offsets", offsets.join(" ")),
            ("kai_rss_anon_bytes", resident.anon_bytes.to_string()),
            ("kai_rss_file_bytes", resident.file_bytes.to_string()),
            ("kai_store_file_bytes", store.file_bytes.to_string()),
            ("kai_store_dead_bytes", store.dead_bytes.to_string()),
            ("kai_store_compactions", store.compactions.to_string()),
            (
                "kai_store_compacted_bytes",
                store.compacted_bytes.to_string(),
            ),
            ("kai_store_write_errors", store.write_errors.to_string()),
            (
                "kai_store_write_failing",
                u8::from(store.write_failing).to_string(),
            ),
        ]
        .into_iter()
        .chain(self.build_stats())
        .chain([
            ("kai_max_clock_offset_ms", max_offset_ms.to_string()),
            (
                "kai_max_clock_skew_ms",
                config.cluster.max_clock_skew.0.as_millis().to_string(),
            ),
        ])
        .collect()
    }

    /// Build lines: from the cluster once it runs, else this release on its own.
    fn build_stats(&self) -> Vec<(&'static str, String)> {
        match self.cluster.get() {
            Some(cluster) => cluster.build_stats(),
            None => {
                let upgrade = crate::cluster::upgrade::Upgrade::in_memory();
                vec![
                    (
                        "kai_build",
                        crate::cluster::admin::build_line(&upgrade.local_build()),
                    ),
                    ("kai_capabilities_active", String::new()),
                    ("kai_member_versions", VERSION.to_string()),
                    ("kai_version_mix_secs", "0".to_string()),
                ]
            }
        }
    }

    fn settings_stats(&self) -> Vec<(&'static str, String)> {
        let c = self.config();
        let (host, port) = c
            .memcache
            .listen
            .rsplit_once(':')
            .unwrap_or((&c.memcache.listen, ""));
        let files: Vec<String> = (self.config_sources.read())
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let on_off = |on: bool| if on { "on" } else { "off" }.to_string();
        let limit = self.store.stats().limit_bytes;
        vec![
            ("maxbytes", limit.to_string()),
            ("maxconns", c.memcache.max_connections.to_string()),
            ("tcpport", port.to_string()),
            ("udpport", "0".to_string()),
            ("inter", host.trim_matches(['[', ']']).to_string()),
            ("evictions", on_off(limit != 0)),
            ("cas_enabled", "yes".to_string()),
            ("num_threads", self.worker_threads.to_string()),
            ("item_size_max", c.memcache.max_item_size.0.to_string()),
            (
                "idle_timeout",
                c.memcache.idle_timeout.0.as_secs().to_string(),
            ),
            ("flush_enabled", "yes".to_string()),
            (
                "kai_config_files",
                if files.is_empty() {
                    "embedded".into()
                } else {
                    files.join(",")
                },
            ),
            ("kai_hostname", c.node.hostname.clone()),
            ("kai_data_dir", c.node.data_dir.display().to_string()),
            ("kai_rpc_listen", c.rpc.listen.clone()),
            ("kai_rpc_timeout", c.rpc.timeout.to_string()),
            ("kai_store_engine", c.store.engine.name().to_string()),
            (
                "kai_conflict_resolution",
                format!("{:?}", c.cluster.conflict_resolution),
            ),
            ("kai_max_siblings", c.cluster.max_siblings.to_string()),
            ("kai_log_level", format!("{:?}", c.log.level).to_lowercase()),
        ]
    }
}
