//! The operator's view and commands: `kai cluster join|leave|remove|digests` arrive here
//! over rpc, `kai cluster status` and `stats cluster` read the member table.

use super::coordinator::Coordinator;
use super::placement;
use crate::address::resolve;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Resolve(#[from] crate::address::ResolveError),
    #[error(transparent)]
    Membership(#[from] super::membership::MembershipError),
    #[error("{0:?} is not a host:port rpc address")]
    BadAddress(String),
    #[error("cannot reach {peer}: {source}")]
    Unreachable {
        peer: SocketAddr,
        source: super::error::PeerError,
    },
    #[error(transparent)]
    Finalize(#[from] super::upgrade::FinalizeError),
}

/// A backup page holds about this many bytes of records (one rpc frame, well under 64 MiB).
const BACKUP_PAGE: usize = 4 << 20;

/// `version=… protocols=oldest-newest capabilities=a,b finalized=N`.
pub fn build_line(build: &super::rpc::message::Build) -> String {
    format!(
        "version={} protocols={}-{} capabilities={} finalized={}",
        build.version,
        build.oldest,
        build.newest,
        build.capabilities.join(","),
        build.finalized
    )
}

impl Coordinator {
    /// Joins through `seed` (one of this node's seeds, or `kai cluster join`).
    pub async fn join(&self, seed: &str) -> Result<(), AdminError> {
        let addr = resolve(seed)?;
        self.membership.rejoin();
        (self.membership.exchange(&self.peers, addr).await)
            .map_err(|source| AdminError::Unreachable { peer: addr, source })
    }

    /// This node leaves: every member hears it at once.
    pub async fn leave(&self) -> Result<(), AdminError> {
        self.membership.retire(self.me)?;
        self.push_members(None).await;
        Ok(())
    }

    /// Removes `node` from the cluster (it hears it too, if it is still running).
    pub async fn remove(&self, node: &str) -> Result<SocketAddr, AdminError> {
        let addr = (node.parse::<SocketAddr>()).map_err(|_| AdminError::BadAddress(node.into()))?;
        self.membership.retire(addr)?;
        self.push_members(Some(addr)).await;
        Ok(addr)
    }

    /// Tells every member (and `also`) about a membership change right away.
    async fn push_members(&self, also: Option<SocketAddr>) {
        let calls: FuturesUnordered<_> = (self.membership.active().into_iter())
            .chain(also)
            .filter(|&m| m != self.me)
            .map(|member| async move { self.membership.exchange(&self.peers, member).await })
            .collect();
        let _: Vec<_> = calls.collect().await;
    }

    pub fn upgrade(&self) -> &super::upgrade::Upgrade {
        &self.upgrade
    }

    /// The other active members.
    fn others(&self) -> Vec<SocketAddr> {
        (self.membership.active().into_iter())
            .filter(|&m| m != self.me)
            .collect()
    }

    /// The `stats` lines about builds: this node's, the capabilities every active member
    /// supports, the releases running, and how long they have differed.
    pub fn build_stats(&self) -> Vec<(&'static str, String)> {
        let others = self.others();
        let (versions, mixed_for) = self.upgrade.versions(&others);
        vec![
            ("kai_build", build_line(&self.upgrade.local_build())),
            (
                "kai_capabilities_active",
                self.upgrade.active_capabilities(&others).join(","),
            ),
            (
                "kai_member_versions",
                versions.into_iter().collect::<Vec<_>>().join(","),
            ),
            ("kai_version_mix_secs", mixed_for.as_secs().to_string()),
        ]
    }

    /// Keeps the version-mix clock running between `stats` calls and logs when the members
    /// start and stop running different releases. Ends at shutdown.
    pub async fn watch_versions(
        self: std::sync::Arc<Self>,
        every: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last: Option<Vec<String>> = None;
        loop {
            let (versions, _) = self.upgrade.versions(&self.others());
            let versions: Vec<String> = versions.into_iter().collect();
            if last.as_ref() != Some(&versions) {
                match versions.len() {
                    1 if last.is_some() => log::info!("every member runs {}", versions[0]),
                    1 => {}
                    _ => log::info!(
                        "members run different releases: {} (a rolling upgrade; \
                         kai cluster finalize once it is done)",
                        versions.join(", ")
                    ),
                }
                last = Some(versions);
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = crate::shutdown::requested(&mut shutdown) => return,
            }
        }
    }

    /// `kai cluster finalize`: once every active member runs this release, records the
    /// newest protocol as final here and on each of them (one that misses it adopts it
    /// from the next handshake with any member). From then on the new on-disk formats are
    /// written and older releases are refused: there is no rolling back.
    pub async fn finalize_upgrade(&self) -> Result<String, AdminError> {
        let others = self.others();
        let behind = self.upgrade.behind(&others);
        if !behind.is_empty() {
            let named: Vec<String> = (behind.iter())
                .map(|m| format!("{m} ({})", self.upgrade.version_of(*m)))
                .collect();
            return Err(super::upgrade::FinalizeError::NotUpgraded(named.join(", ")).into());
        }
        let protocol = super::rpc::message::PEER_PROTOCOL;
        self.upgrade.finalize(protocol)?;
        let calls: FuturesUnordered<_> = (others.iter())
            .map(|&member| async move {
                let request = super::rpc::message::Request::Finalize { protocol };
                (member, self.peers.call(member, request).await)
            })
            .collect();
        let results: Vec<_> = calls.collect().await;
        let mut report = vec![format!(
            "finalised peer protocol {protocol} on {} of {} members",
            1 + results.iter().filter(|(_, r)| r.is_ok()).count(),
            1 + others.len()
        )];
        for (member, result) in results {
            if let Err(err) = result {
                report.push(format!(
                    "{member}: {err} (it adopts it at its next handshake)"
                ));
            }
        }
        Ok(report.join("\n"))
    }

    /// `kai store backup`: this node's keys whose ring hash is in `low..=high`, in (hash,
    /// key) order after `after`, every version of each as the store holds it, up to about
    /// `BACKUP_PAGE` bytes; true when the range holds more. Each key is read atomically.
    pub fn backup_page(
        &self,
        low: u32,
        high: u32,
        after: Option<bytes::Bytes>,
    ) -> (Vec<(bytes::Bytes, crate::record::Versions)>, bool) {
        use crate::keyspace::key_hash;
        let store = self.replica.store();
        let mut keys: Vec<(u32, bytes::Bytes)> = (store.keys_in(low, high).into_iter())
            .map(|(key, _)| (key_hash(&key), key))
            .collect();
        keys.sort_unstable();
        let start = after.map_or(0, |after| {
            let cursor = (key_hash(&after), after);
            keys.partition_point(|k| *k <= cursor)
        });
        let now = crate::time::unix_secs();
        let (mut page, mut bytes) = (Vec::new(), 0);
        for (_, key) in &keys[start..] {
            if bytes >= BACKUP_PAGE {
                return (page, true);
            }
            if let Some(versions) = store.get(key, now) {
                bytes += versions.footprint(key);
                page.push((key.clone(), versions));
            }
        }
        (page, false)
    }

    /// `kai cluster digests`: "bucket digest keys" for every bucket this node owns.
    pub fn digest_report(&self) -> String {
        let ring = self.membership.ring();
        let digests = self.replica.store().digests();
        let mut out = Vec::new();
        for bucket in 0..ring.buckets().min(digests.buckets()) {
            if ring
                .preference_list(bucket)
                .take(self.replicas())
                .any(|o| o == self.me)
            {
                let summary = digests.summary(bucket);
                out.push(format!("{bucket} {:016x} {}", summary.digest, summary.keys));
            }
        }
        out.join("\n")
    }

    /// `kai cluster status`: each member, its liveness, owned buckets, pending hints and zone.
    pub fn status(&self) -> Vec<String> {
        let owned = placement::owned_buckets(&self.membership.ring(), self.replicas());
        let offsets: std::collections::HashMap<_, _> =
            self.peers.clock_offsets().into_iter().collect();
        (self.membership.records().into_iter())
            .map(|record| {
                let clock = match offsets.get(&record.addr) {
                    _ if record.addr == self.me => String::new(),
                    Some(o) => format!(" clock_offset_ms={:+}", o.offset_us / 1000),
                    None => " clock_offset_ms=unmeasured".to_string(),
                };
                let state = if record.left {
                    "left"
                } else {
                    self.membership.liveness(record.addr).name()
                };
                let version = if record.addr == self.me {
                    env!("CARGO_PKG_VERSION").to_string()
                } else {
                    self.upgrade.version_of(record.addr)
                };
                let zone =
                    (record.zone.as_ref()).map_or_else(String::new, |z| format!(" zone={z}"));
                format!(
                    "{} {state} buckets={} hints={} version={version}{zone}{clock}{}",
                    record.addr,
                    owned.get(&record.addr).copied().unwrap_or(0),
                    self.hints.count_for(record.addr),
                    if record.addr == self.me { " self" } else { "" }
                )
            })
            .collect()
    }
}
