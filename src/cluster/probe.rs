//! Health probes: every master and replica of the slot table is pinged about once a second on
//! a connection of the prober's own, so a dead or hung node is noticed with or without client
//! traffic.
//!
//! Owns: one probe task per node (started and stopped as nodes enter and leave the table),
//! the probe's verdict in the node's `Health` (down at the first failed PING, closed
//! connection or refused connect; up at the first answer), and asking the refresher for a
//! refresh whenever a verdict changes.
//! Must not: touch client traffic or the workers' links (a probe's verdict changes readiness,
//! the refresh cadence and the choice between topology views, not requests in flight).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::Cluster;
use crate::metrics::RefreshReason;
use crate::resp::write::Proto;
use crate::upstream::connect::{connect, exchange};
use crate::upstream::Node;

/// How often each node is pinged.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a PING may take before the node counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Keeps one probe task per node of the current table until the cluster is dropped.
pub fn spawn(cluster: &Arc<Cluster>) -> JoinHandle<()> {
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut probes: HashMap<usize, (Arc<Node>, JoinHandle<()>)> = HashMap::new();
        loop {
            let Some(cluster) = weak.upgrade() else { break };
            let topo = cluster.snapshot();
            let wanted: Vec<Arc<Node>> = topo.nodes().cloned().collect();
            drop(cluster);
            probes.retain(|_, (node, task)| {
                let keep = wanted.iter().any(|n| Arc::ptr_eq(n, node));
                if !keep {
                    task.abort();
                }
                keep
            });
            for node in wanted {
                if let std::collections::hash_map::Entry::Vacant(e) = probes.entry(node.id) {
                    let task = tokio::spawn(probe(weak.clone(), node.clone()));
                    e.insert((node, task));
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        for (_, (_, task)) in probes {
            task.abort();
        }
    })
}

/// Records a verdict; a change is logged once and asks for a refresh.
fn verdict(cluster: &Weak<Cluster>, node: &Node, up: bool, why: &str) {
    let changed = if up {
        node.health().probe_ok()
    } else {
        node.health().probe_failed()
    };
    node.metrics.probe_up.set(i64::from(up));
    if !changed {
        return;
    }
    if up {
        tracing::info!(node = %node.addr, "probe: node answers again");
    } else {
        tracing::warn!(node = %node.addr, reason = why, "probe: node unreachable");
    }
    if let Some(c) = cluster.upgrade() {
        c.request_refresh(RefreshReason::NodeFailure);
    }
}

async fn probe(cluster: Weak<Cluster>, node: Arc<Node>) {
    let settings = node.settings().clone();
    loop {
        let mut stream = match connect(&node.addr, Proto::Resp2, &settings).await {
            Ok(s) => s,
            Err(e) => {
                verdict(&cluster, &node, false, &e.to_string());
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
        };
        // What the node runs (a pod may come back upgraded): INFO and HELLO report the
        // lowest version of the cluster.
        if let Ok(r) = exchange(
            &mut stream,
            &[&[b"INFO", b"server"], &[b"HELLO"]],
            PROBE_TIMEOUT,
        )
        .await
        {
            if let Some(v) = r.first().and_then(|r| version_of(r)) {
                node.set_version(v);
            }
            // Valkey 8.1+ announces its availability zone; Redis does not.
            if let Some(zone) = r.get(1).and_then(|r| zone_of(r)) {
                node.replica.set_zone(zone);
            }
        }
        loop {
            match exchange(&mut stream, &[&[b"PING"]], PROBE_TIMEOUT).await {
                // -LOADING, -BUSY and the like: up, but not serving.
                Ok(r) if r.first().is_some_and(|f| f.first() == Some(&b'-')) => {
                    node.set_busy(r[0].starts_with(b"-BUSY"));
                    let text = String::from_utf8_lossy(&r[0]).trim().to_string();
                    verdict(&cluster, &node, false, &text);
                }
                Ok(_) => {
                    node.set_busy(false);
                    verdict(&cluster, &node, true, "");
                    // Whether it can serve reads as a replica, and (as a master) how far
                    // behind its replicas are.
                    if let Ok(r) =
                        exchange(&mut stream, &[&[b"INFO", b"replication"]], PROBE_TIMEOUT).await
                    {
                        replication(&cluster, &node, &String::from_utf8_lossy(&r[0]));
                    }
                }
                Err(e) => {
                    node.set_busy(false);
                    verdict(&cluster, &node, false, &format!("PING: {e}"));
                    break;
                }
            }
            // Until the next PING, notice at once a connection the node closes (it died).
            let mut byte = [0u8; 1];
            tokio::select! {
                () = tokio::time::sleep(PROBE_EVERY) => {}
                r = stream.read(&mut byte) => {
                    let why = match r {
                        Ok(0) => "connection closed".to_string(),
                        Ok(_) => "unexpected data".to_string(),
                        Err(e) => e.to_string(),
                    };
                    verdict(&cluster, &node, false, &why);
                    break;
                }
            }
        }
    }
}

/// `redis_version` from an `INFO server` reply.
fn version_of(reply: &[u8]) -> Option<String> {
    String::from_utf8_lossy(reply).lines().find_map(|l| {
        l.strip_prefix("redis_version:")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

/// `availability_zone` from a RESP2 `HELLO` reply (a flat array of names and values).
fn zone_of(reply: &[u8]) -> Option<String> {
    let frame = crate::upstream::connect::decode(reply)?;
    let redis_protocol::resp2::types::OwnedFrame::Array(items) = frame else {
        return None;
    };
    items.chunks(2).find_map(|kv| {
        let key = crate::cluster::topology::text(kv.first()?)?;
        (key == "availability_zone")
            .then(|| crate::cluster::topology::text(kv.get(1)?))
            .flatten()
            .filter(|z| !z.is_empty())
    })
}

/// Applies a node's `INFO replication`: as a replica, whether it is in sync with its master;
/// as a master, each replica's acknowledgement lag (`lag=`, seconds; a replica not yet
/// `online` gets an unbounded lag).
fn replication(cluster: &Weak<Cluster>, node: &Node, info: &str) {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(str::trim)
    };
    match field("role") {
        Some("slave") => node.replica.set_synced(
            field("master_link_status") == Some("up")
                && field("master_sync_in_progress") != Some("1"),
        ),
        Some("master") => {
            node.replica.set_synced(false);
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            for (addr, lag) in replica_lags(info) {
                if let Some(r) = cluster.registry.get(&addr) {
                    r.replica.set_lag(lag);
                }
            }
        }
        _ => {}
    }
}

/// `(host:port, lag seconds)` of every `slaveN:` line of a master's INFO replication.
fn replica_lags(info: &str) -> Vec<(String, u32)> {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains(":ip="))
        .filter_map(|l| {
            let (_, kv) = l.split_once(':')?;
            let get = |k: &str| {
                kv.split(',')
                    .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            };
            let port: i64 = get("port")?.trim().parse().ok()?;
            let addr = crate::cluster::topology::join_addr(get("ip")?, port);
            let lag = if get("state") == Some("online") {
                get("lag")?.trim().parse().unwrap_or(u32::MAX - 1)
            } else {
                u32::MAX - 1
            };
            Some((addr, lag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_lags_are_read_from_a_masters_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=10.0.0.5,port=6379,state=online,offset=1234,lag=0\r\n\
                    slave1:ip=::1,port=7001,state=wait_bgsave,offset=0,lag=3\r\n\
                    master_repl_offset:1234\r\n";
        assert_eq!(
            replica_lags(info),
            vec![
                ("10.0.0.5:6379".to_string(), 0),
                ("[::1]:7001".to_string(), u32::MAX - 1)
            ]
        );
    }

    #[test]
    fn the_zone_is_read_from_hello() {
        let with = b"*4\r\n$6\r\nserver\r\n$6\r\nvalkey\r\n$17\r\navailability_zone\r\n$10\r\nus-east-1a\r\n";
        assert_eq!(zone_of(with).as_deref(), Some("us-east-1a"));
        let without = b"*2\r\n$6\r\nserver\r\n$5\r\nredis\r\n";
        assert_eq!(zone_of(without), None);
    }
}
