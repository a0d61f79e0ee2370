//! INFO, answered as one Redis would answer it for the whole cluster.
//!
//! Owns: which sections an `INFO [section ...]` asks for (Redis 7's rules for none, `default`,
//! `all` and `everything`), which of them slotmux writes itself (server, clients,
//! replication, cpu, modules, cluster: about the proxy and what it serves) and which come from
//! the masters, merged where a merge means something (memory, persistence, stats, errorstats,
//! keyspace, commandstats: counters summed, per-call averages recomputed, `*_human` sizes
//! rewritten; text fields from the first master), and the final text in Redis's order.
//! `latencystats` is not answered: percentiles of several nodes cannot be combined.
//! Must not: do I/O (the session asks the masters).

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::Topology;
use crate::metrics::RetryReason;
use crate::shared::Shared;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Proxy,
    Masters,
}

/// Every section slotmux answers, in Redis's order: (name, who writes it, in `default`).
const SECTIONS: [(&str, Source, bool); 12] = [
    ("server", Source::Proxy, true),
    ("clients", Source::Proxy, true),
    ("memory", Source::Masters, true),
    ("persistence", Source::Masters, true),
    ("stats", Source::Masters, true),
    ("replication", Source::Proxy, true),
    ("cpu", Source::Proxy, true),
    ("modules", Source::Proxy, true),
    ("errorstats", Source::Masters, true),
    ("cluster", Source::Proxy, true),
    ("keyspace", Source::Masters, true),
    ("commandstats", Source::Masters, false),
];

/// Which sections an `INFO [section ...]` asks for, in Redis's order.
pub fn sections(args: &[&[u8]]) -> Vec<&'static str> {
    let mut want = [false; SECTIONS.len()];
    if args.is_empty() {
        for (i, s) in SECTIONS.iter().enumerate() {
            want[i] = s.2;
        }
    }
    for a in args {
        let a = String::from_utf8_lossy(a).to_ascii_lowercase();
        for (i, s) in SECTIONS.iter().enumerate() {
            want[i] |= match a.as_str() {
                "default" => s.2,
                "all" | "everything" => true,
                name => name == s.0,
            };
        }
    }
    SECTIONS
        .iter()
        .zip(want)
        .filter(|(_, w)| *w)
        .map(|(s, _)| s.0)
        .collect()
}

/// The `INFO ...` request for the masters' part of `sections`, if any.
pub fn node_request(sections: &[&str]) -> Option<Bytes> {
    let wanted: Vec<&[u8]> = SECTIONS
        .iter()
        .filter(|s| s.1 == Source::Masters && sections.contains(&s.0))
        .map(|s| s.0.as_bytes())
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let parts: Vec<&[u8]> = std::iter::once(&b"INFO"[..]).chain(wanted).collect();
    Some(crate::resp::write::encode_command(parts))
}

/// The text of a bulk (`$`) or verbatim (`=`, "txt:" prefix) reply.
fn text_of(frame: &[u8]) -> Option<&[u8]> {
    let nl = frame.iter().position(|&b| b == b'\n')?;
    let body = frame[nl + 1..].strip_suffix(b"\r\n")?;
    match frame.first() {
        Some(b'$') => Some(body),
        Some(b'=') => Some(body.get(4..).unwrap_or_default()),
        _ => None,
    }
}

/// One node's INFO text as sections of `(key, value)` lines, keyed by lower-case name.
fn parse(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# ") {
            current = name.trim().to_ascii_lowercase();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once(':') {
            out.entry(current.clone())
                .or_default()
                .push((k.to_string(), v.trim_end().to_string()));
        }
    }
    out
}

/// The whole INFO text: slotmux's own sections and the masters' merged ones, in order.
/// `parts` are the masters' replies to [`node_request`]; an error among them is returned.
pub fn render(
    shared: &Shared,
    topo: &Topology,
    sections: &[&str],
    parts: &[Bytes],
) -> Result<String, Bytes> {
    if let Some(err) = parts.iter().find(|p| p.first() == Some(&b'-')) {
        return Err(err.clone());
    }
    let nodes: Vec<BTreeMap<String, Vec<(String, String)>>> = parts
        .iter()
        .map(|p| parse(&String::from_utf8_lossy(text_of(p).unwrap_or_default())))
        .collect();
    let mut out = String::new();
    for &name in sections {
        let body = match name {
            "server" => server(shared, topo),
            "clients" => clients(shared),
            "replication" => replication(shared),
            "cpu" => cpu(),
            "modules" => String::new(),
            "cluster" => cluster(shared, topo),
            "keyspace" => keyspace(&nodes),
            "commandstats" => per_call(&nodes, "commandstats"),
            "errorstats" => summed(&nodes, "errorstats"),
            "stats" => stats(shared, &nodes),
            other => summed(&nodes, other),
        };
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let title = match name {
            "cpu" => "CPU".to_string(),
            n => {
                let mut c = n.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        };
        out.push_str(&format!("# {title}\r\n{body}"));
    }
    Ok(out)
}

/// The lowest version the cluster's nodes report (what the cluster as a whole supports),
/// or the version of slotmux's command table when no node has been asked yet.
pub fn cluster_version(topo: &Topology) -> String {
    let mut lowest: Option<(Vec<u64>, String)> = None;
    for n in topo.nodes() {
        let Some(v) = n.version() else { continue };
        let key: Vec<u64> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        if lowest.as_ref().is_none_or(|l| key < l.0) {
            lowest = Some((key, v));
        }
    }
    lowest.map_or_else(|| crate::REDIS_VERSION.to_string(), |l| l.1)
}

fn server(shared: &Shared, topo: &Topology) -> String {
    let up = shared.started.elapsed().as_secs();
    format!(
        "redis_version:{}\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\nredis_build_id:0\r\nslotmux_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nmultiplexing_api:epoll\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\nexecutable:{}\r\n",
        cluster_version(topo),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::process::id(),
        shared.run_id,
        shared.config.listen.rsplit(':').next().unwrap_or(""),
        up,
        up / 86400,
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    )
}

fn clients(shared: &Shared) -> String {
    format!(
        "connected_clients:{}\r\ncluster_connections:0\r\nmaxclients:{}\r\nblocked_clients:{}\r\ntracking_clients:{}\r\nclients_in_timeout_table:0\r\n",
        shared.clients.load(Ordering::Relaxed),
        shared.config.maxclients,
        // Clients whose command the node holds (known once the node answered the id of
        // their connection, read in the same batch as the blocking command).
        shared
            .client_list
            .all()
            .iter()
            .filter(|c| c.is_blocked())
            .count(),
        shared.tracking.load(Ordering::Relaxed),
    )
}

/// slotmux presents itself as one master without replicas (the cluster's own replicas are
/// each master's business); the fields are those of such a Redis, so scripts reading them
/// find them.
fn replication(shared: &Shared) -> String {
    format!(
        "role:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\n\
         master_replid:{}\r\nmaster_replid2:0000000000000000000000000000000000000000\r\n\
         master_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\n\
         repl_backlog_size:0\r\nrepl_backlog_first_byte_offset:0\r\nrepl_backlog_histlen:0\r\n",
        shared.run_id
    )
}

/// slotmux's own CPU time, from /proc/self/stat (clock ticks of 10 ms).
fn cpu() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or_default();
    let field = |i: usize| -> f64 {
        rest.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let (user, sys) = (field(11), field(12));
    format!(
        "used_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n"
    )
}

fn cluster(shared: &Shared, topo: &Topology) -> String {
    let s = &shared.cluster.stats;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let replicas: usize = topo.replicas.iter().map(|r| r.len()).sum();
    format!(
        "cluster_enabled:0\r\nslotmux_cluster_state:{}\r\nslotmux_masters:{}\r\nslotmux_replicas:{}\r\nslotmux_slots_covered:{}\r\nslotmux_topology_source:{}\r\nslotmux_topology_age_seconds:{}\r\nslotmux_last_refresh_unix:{}\r\nslotmux_refreshes_ok:{}\r\nslotmux_refreshes_failed:{}\r\n",
        if shared.readiness().is_ok() { "ok" } else { "fail" },
        topo.masters.len(),
        replicas,
        topo.covered_slots(),
        topo.source.as_deref().unwrap_or("-"),
        topo.fetched_at.elapsed().as_secs(),
        ld(&s.last_ok_unix),
        ld(&s.ok),
        ld(&s.failed),
    )
}

/// Redis's stats summed over the masters, with what clients see of slotmux in place of the
/// masters' own client-facing counters.
fn stats(shared: &Shared, nodes: &[BTreeMap<String, Vec<(String, String)>>]) -> String {
    let s = &shared.stats;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ours: [(&str, u64); 5] = [
        ("total_connections_received", ld(&s.accepted)),
        (
            "total_commands_processed",
            shared.metrics.total_commands.load(Ordering::Relaxed),
        ),
        ("instantaneous_ops_per_sec", ld(&s.ops_per_sec)),
        ("rejected_connections", ld(&s.rejected_maxclients)),
        // Tracked keys are the masters' (summed); prefixes are the clients', each counted
        // once (every master of a BCAST client has its prefixes).
        (
            "tracking_total_prefixes",
            shared.client_list.tracking_prefixes() as u64,
        ),
    ];
    let mut lines = merged_lines(nodes, "stats");
    for (k, v) in ours {
        match lines.iter_mut().find(|l| l.0 == k) {
            Some(l) => l.1 = v.to_string(),
            None => lines.push((k.to_string(), v.to_string())),
        }
    }
    let extra: [(&str, u64); 6] = [
        ("slotmux_moved_redirections", ld(&s.moved)),
        ("slotmux_ask_redirections", ld(&s.ask)),
        (
            "slotmux_retries",
            RetryReason::ALL
                .iter()
                .map(|r| ld(&s.retries[r.index()]))
                .sum(),
        ),
        ("slotmux_unknown_outcome_errors", ld(&s.unknown_outcome)),
        (
            "slotmux_output_limit_disconnects",
            ld(&s.output_limit_disconnects),
        ),
        ("slowlog_len", shared.slowlog.len() as u64),
    ];
    lines.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    join(&lines)
}

fn join(lines: &[(String, String)]) -> String {
    lines.iter().map(|(k, v)| format!("{k}:{v}\r\n")).collect()
}

fn summed(nodes: &[BTreeMap<String, Vec<(String, String)>>], section: &str) -> String {
    join(&merged_lines(nodes, section))
}

/// One section over every master: integers summed (cached scripts: the largest count),
/// `*_human` sizes rewritten from their
/// summed base, `key=value,...` lists summed field by field, anything else from the first
/// master that has it. Keys keep the first master's order.
fn merged_lines(
    nodes: &[BTreeMap<String, Vec<(String, String)>>],
    section: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for node in nodes {
        for (k, v) in node.get(section).into_iter().flatten() {
            match out.iter_mut().find(|l| &l.0 == k) {
                None => out.push((k.clone(), v.clone())),
                Some(l) => {
                    if let (Ok(a), Ok(b)) = (l.1.parse::<i64>(), v.parse::<i64>()) {
                        // SCRIPT LOAD reaches every master: one Redis would count each
                        // script once, not once per master.
                        l.1 = if k == "number_of_cached_scripts" {
                            a.max(b)
                        } else {
                            a + b
                        }
                        .to_string();
                    } else if l.1.contains('=') {
                        l.1 = sum_fields(&l.1, v);
                    }
                }
            }
        }
    }
    let bases: Vec<(String, i64)> = out
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.parse::<i64>().ok()?)))
        .collect();
    for (k, v) in out.iter_mut() {
        if let Some(base) = k.strip_suffix("_human") {
            if let Some((_, n)) = bases.iter().find(|b| b.0 == base) {
                *v = human(*n);
            }
        }
    }
    out
}

/// `a=1,b=2` + `a=3,b=4` → `a=4,b=6` (integers summed, others kept from the first).
fn sum_fields(a: &str, b: &str) -> String {
    let theirs: Vec<(&str, &str)> = b.split(',').filter_map(|f| f.split_once('=')).collect();
    a.split(',')
        .map(|f| match f.split_once('=') {
            Some((k, v)) => {
                let other = theirs.iter().find(|t| t.0 == k).map(|t| t.1);
                match (v.parse::<i64>(), other.and_then(|o| o.parse::<i64>().ok())) {
                    (Ok(x), Some(y)) => format!("{k}={}", x + y),
                    _ => f.to_string(),
                }
            }
            None => f.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Redis's `bytesToHuman`.
fn human(n: i64) -> String {
    let d = n as f64;
    if n < 1024 {
        format!("{n}B")
    } else if n < 1024 * 1024 {
        format!("{:.2}K", d / 1024.0)
    } else if n < 1024 * 1024 * 1024 {
        format!("{:.2}M", d / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", d / (1024.0 * 1024.0 * 1024.0))
    }
}

/// commandstats: counters summed, `usec_per_call` recomputed.
fn per_call(nodes: &[BTreeMap<String, Vec<(String, String)>>], section: &str) -> String {
    let lines: Vec<(String, String)> = merged_lines(nodes, section)
        .into_iter()
        .map(|(k, v)| {
            let field = |name: &str| {
                v.split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|x| x.parse::<f64>().ok())
            };
            let v = match (field("calls"), field("usec")) {
                (Some(calls), Some(usec)) if calls > 0.0 => v
                    .split(',')
                    .map(|f| match f.split_once('=') {
                        Some(("usec_per_call", _)) => {
                            format!("usec_per_call={:.2}", usec / calls)
                        }
                        _ => f.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => v,
            };
            (k, v)
        })
        .collect();
    join(&lines)
}

/// `dbN:keys=..,expires=..,avg_ttl=..` summed; avg_ttl weighted by each node's expiring keys.
fn keyspace(nodes: &[BTreeMap<String, Vec<(String, String)>>]) -> String {
    let mut dbs: BTreeMap<u32, (u64, u64, u128)> = BTreeMap::new();
    for node in nodes {
        for (db, fields) in node.get("keyspace").into_iter().flatten() {
            let Some(n) = db.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let (mut keys, mut expires, mut ttl) = (0u64, 0u64, 0u64);
            for kv in fields.split(',') {
                match kv.split_once('=') {
                    Some(("keys", v)) => keys = v.parse().unwrap_or(0),
                    Some(("expires", v)) => expires = v.parse().unwrap_or(0),
                    Some(("avg_ttl", v)) => ttl = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            let e = dbs.entry(n).or_default();
            e.0 += keys;
            e.1 += expires;
            e.2 += ttl as u128 * expires as u128;
        }
    }
    dbs.into_iter()
        .map(|(db, (keys, expires, ttl_sum))| {
            let avg = if expires > 0 {
                ttl_sum / expires as u128
            } else {
                0
            };
            format!("db{db}:keys={keys},expires={expires},avg_ttl={avg}\r\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_selection_follows_redis() {
        let d = sections(&[]);
        assert!(d.contains(&"server") && d.contains(&"keyspace") && d.contains(&"cpu"));
        assert!(!d.contains(&"commandstats"));
        assert_eq!(sections(&[b"default"]), d);
        assert!(sections(&[b"all"]).contains(&"commandstats"));
        assert_eq!(
            sections(&[b"KEYSPACE", b"server"]),
            vec!["server", "keyspace"]
        );
        assert_eq!(sections(&[b"nosuch"]), Vec::<&str>::new());
        assert_eq!(node_request(&["server", "cpu"]), None);
        assert_eq!(
            node_request(&["stats", "keyspace"]).as_deref(),
            Some(&b"*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$8\r\nkeyspace\r\n"[..])
        );
    }

    #[test]
    fn masters_sections_are_merged() {
        let a = parse("# Stats\r\nexpired_keys:3\r\nrdb_last_bgsave_status:ok\r\n# Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=1\r\n# Errorstats\r\nerrorstat_ERR:count=1\r\n# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=100\r\n");
        let b = parse("# Stats\r\nexpired_keys:4\r\nrdb_last_bgsave_status:err\r\n# Commandstats\r\ncmdstat_get:calls=6,usec=30,usec_per_call=5.00,rejected_calls=1,failed_calls=0\r\n# Errorstats\r\nerrorstat_ERR:count=2\r\nerrorstat_WRONGTYPE:count=1\r\n# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=300\r\n");
        let nodes = [a, b];
        assert_eq!(
            summed(&nodes, "stats"),
            "expired_keys:7\r\nrdb_last_bgsave_status:ok\r\n"
        );
        assert_eq!(
            per_call(&nodes, "commandstats"),
            "cmdstat_get:calls=8,usec=40,usec_per_call=5.00,rejected_calls=1,failed_calls=1\r\n"
        );
        assert_eq!(
            summed(&nodes, "errorstats"),
            "errorstat_ERR:count=3\r\nerrorstat_WRONGTYPE:count=1\r\n"
        );
        assert_eq!(
            summed(&nodes, "memory"),
            "used_memory:2097152\r\nused_memory_human:2.00M\r\n"
        );
        assert_eq!(keyspace(&nodes), "db0:keys=5,expires=2,avg_ttl=200\r\n");
    }

    #[test]
    fn bulk_and_verbatim_replies_are_read() {
        assert_eq!(text_of(b"$3\r\na:1\r\n"), Some(&b"a:1"[..]));
        assert_eq!(text_of(b"=7\r\ntxt:a:1\r\n"), Some(&b"a:1"[..]));
        assert_eq!(text_of(b"-ERR x\r\n"), None);
    }
}
