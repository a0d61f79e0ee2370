//! INFO: the sections slotmux answers itself, in Redis's format.
//!
//! Owns: which sections an `INFO [section ...]` asks for, and the text of slotmux's own
//! sections (server, clients, stats, cluster). `keyspace` is summed over the masters by the
//! session (it needs the nodes).
//! Must not: do I/O.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::Topology;
use crate::metrics::RetryReason;
use crate::shared::Shared;

/// INFO sections slotmux answers itself, in order. `keyspace` is summed over the masters.
pub const INFO_SECTIONS: [&str; 5] = ["server", "clients", "stats", "cluster", "keyspace"];

/// Which sections an `INFO [section ...]` asks for (Redis's rules: none, `default`, `all`
/// and `everything` mean every section).
pub fn sections(args: &[&[u8]]) -> Vec<&'static str> {
    if args.is_empty() {
        return INFO_SECTIONS.to_vec();
    }
    let mut out = Vec::new();
    for a in args {
        let a = String::from_utf8_lossy(a).to_ascii_lowercase();
        if matches!(a.as_str(), "default" | "all" | "everything") {
            return INFO_SECTIONS.to_vec();
        }
        if let Some(s) = INFO_SECTIONS.iter().find(|s| **s == a) {
            if !out.contains(s) {
                out.push(*s);
            }
        }
    }
    out
}

/// The text of slotmux's own INFO sections (everything but `keyspace`), in Redis's format.
pub fn text(shared: &Shared, topo: &Topology, sections: &[&str]) -> String {
    let up = shared.started.elapsed().as_secs();
    let s = &shared.stats;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let replicas: usize = topo.replicas.iter().map(|r| r.len()).sum();
    let mut out = String::new();
    let mut section = |name: &str, body: String| {
        if sections.contains(&name) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&body);
        }
    };
    section(
        "server",
        format!(
            "# Server\r\nredis_version:{}\r\nslotmux_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
            crate::REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.config.listen.rsplit(':').next().unwrap_or(""),
            up,
            up / 86400,
        ),
    );
    section(
        "clients",
        format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n",
            shared.clients.load(Ordering::Relaxed),
            shared.config.maxclients,
            shared.blocked.load(Ordering::Relaxed),
        ),
    );
    section(
        "stats",
        format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\nrejected_connections:{}\r\nslotmux_moved_redirections:{}\r\nslotmux_ask_redirections:{}\r\nslotmux_retries:{}\r\nslotmux_unknown_outcome_errors:{}\r\nslotmux_output_limit_disconnects:{}\r\nslowlog_len:{}\r\n",
            ld(&s.accepted),
            shared.metrics.total_commands.load(Ordering::Relaxed),
            ld(&s.ops_per_sec),
            ld(&s.rejected_maxclients),
            ld(&s.moved),
            ld(&s.ask),
            RetryReason::ALL.iter().map(|r| ld(&s.retries[r.index()])).sum::<u64>(),
            ld(&s.unknown_outcome),
            ld(&s.output_limit_disconnects),
            shared.slowlog.len(),
        ),
    );
    let rs = &shared.cluster.stats;
    section(
        "cluster",
        format!(
            "# Cluster\r\ncluster_enabled:0\r\nslotmux_cluster_state:{}\r\nslotmux_masters:{}\r\nslotmux_replicas:{}\r\nslotmux_slots_covered:{}\r\nslotmux_topology_source:{}\r\nslotmux_topology_age_seconds:{}\r\nslotmux_last_refresh_unix:{}\r\nslotmux_refreshes_ok:{}\r\nslotmux_refreshes_failed:{}\r\n",
            if shared.readiness().is_ok() { "ok" } else { "fail" },
            topo.masters.len(),
            replicas,
            topo.covered_slots(),
            topo.source.as_deref().unwrap_or("-"),
            topo.fetched_at.elapsed().as_secs(),
            ld(&rs.last_ok_unix),
            ld(&rs.ok),
            ld(&rs.failed),
        ),
    );
    out
}
