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
                verdict(&cluster, &node, false, &e);
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
        };
        // What the node runs (a pod may come back upgraded): INFO and HELLO report the
        // lowest version of the cluster.
        if let Ok(r) = exchange(&mut stream, &[&[b"INFO", b"server"]], PROBE_TIMEOUT).await {
            if let Some(v) = version_of(&r[0]) {
                node.set_version(v);
            }
        }
        loop {
            match exchange(&mut stream, &[&[b"PING"]], PROBE_TIMEOUT).await {
                // -LOADING, -BUSY and the like: up, but not serving.
                Ok(r) if r.first().is_some_and(|f| f.first() == Some(&b'-')) => {
                    let text = String::from_utf8_lossy(&r[0]).trim().to_string();
                    verdict(&cluster, &node, false, &text);
                }
                Ok(_) => verdict(&cluster, &node, true, ""),
                Err(e) => {
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
