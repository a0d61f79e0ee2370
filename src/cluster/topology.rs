//! The slot table: which master owns each of the 16,384 slots, as one immutable snapshot.
//!
//! Owns: the snapshot type, building it from `CLUSTER SLOTS`, and patching one slot after a
//! MOVED. A snapshot never changes after it is built; the refresher swaps in a new one, so
//! the hot path reads it with no lock (an `ArcSwap` load, or a per-session cache).
//! Must not: do I/O.

use redis_protocol::resp2::types::OwnedFrame;
use std::sync::Arc;
use std::time::Instant;

use super::slot::SLOTS;
use crate::upstream::{Node, Registry};

const NO_NODE: u16 = u16::MAX;

/// One row of `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: String,
    pub replicas: Vec<String>,
}

pub struct Topology {
    slots: Box<[u16]>,
    pub masters: Vec<Arc<Node>>,
    /// Replicas of each master, same order as `masters`.
    pub replicas: Vec<Vec<Arc<Node>>>,
    /// Which node's view this is (`None` for the empty start-up snapshot).
    pub source: Option<String>,
    pub generation: u64,
    pub fetched_at: Instant,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field(
                "masters",
                &self.masters.iter().map(|m| &m.addr).collect::<Vec<_>>(),
            )
            .field("covered", &self.covered_slots())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Topology {
    pub fn empty() -> Self {
        Topology {
            slots: vec![NO_NODE; SLOTS].into_boxed_slice(),
            masters: Vec::new(),
            replicas: Vec::new(),
            source: None,
            generation: 0,
            fetched_at: Instant::now(),
        }
    }

    /// True until the first successful refresh.
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    #[inline]
    pub fn master_for(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.slots.get(slot as usize)?;
        self.masters.get(i as usize)
    }

    /// The replicas of `slot`'s master (empty when it has none, or no master).
    #[inline]
    pub fn replicas_for(&self, slot: u16) -> &[Arc<Node>] {
        match self.slots.get(slot as usize) {
            Some(&i) if i != NO_NODE => self.replicas.get(i as usize).map_or(&[], |v| &v[..]),
            _ => &[],
        }
    }

    pub fn covered_slots(&self) -> usize {
        self.slots.iter().filter(|&&s| s != NO_NODE).count()
    }

    /// A master for keyless commands; `lane` spreads sessions over the masters.
    pub fn any_master(&self, lane: usize) -> Option<&Arc<Node>> {
        if self.masters.is_empty() {
            None
        } else {
            self.masters.get(lane % self.masters.len())
        }
    }

    /// The slot ranges, as `(start, end, master index)`, for INFO and tests.
    pub fn ranges(&self) -> Vec<(u16, u16, usize)> {
        let mut out: Vec<(u16, u16, usize)> = Vec::new();
        for (slot, &m) in self.slots.iter().enumerate() {
            if m == NO_NODE {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.2 == m as usize && last.1 as usize + 1 == slot => {
                    last.1 = slot as u16
                }
                _ => out.push((slot as u16, slot as u16, m as usize)),
            }
        }
        out
    }

    pub fn build(
        ranges: &[SlotRange],
        registry: &Registry,
        source: String,
        generation: u64,
    ) -> Self {
        let mut t = Topology::empty();
        t.source = Some(source);
        t.generation = generation;
        for r in ranges {
            let idx = match t.masters.iter().position(|m| *m.addr == *r.master) {
                Some(i) => i,
                None => {
                    t.masters.push(registry.get_or_create(&r.master));
                    t.replicas.push(Vec::new());
                    t.masters.len() - 1
                }
            };
            for rep in &r.replicas {
                if !t.replicas[idx].iter().any(|n| *n.addr == **rep) {
                    t.replicas[idx].push(registry.get_or_create(rep));
                }
            }
            for s in r.start..=r.end.min(SLOTS as u16 - 1) {
                t.slots[s as usize] = idx as u16;
            }
        }
        t
    }

    pub fn masters(&self) -> &[Arc<Node>] {
        &self.masters
    }

    /// Whether `node` is a replica in this map.
    pub fn is_replica(&self, node: &Arc<Node>) -> bool {
        self.replicas.iter().flatten().any(|r| Arc::ptr_eq(r, node))
    }

    /// Every node of the map: masters, then replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.masters.iter().chain(self.replicas.iter().flatten())
    }

    /// The slot ranges of the master `node`, as `a-b` text (for readiness messages).
    pub fn slots_of(&self, node: &Arc<Node>) -> String {
        self.ranges()
            .iter()
            .filter(|r| Arc::ptr_eq(&self.masters[r.2], node))
            .map(|&(a, b, _)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A copy of this snapshot with `slot` owned by `node` (after a MOVED).
    pub fn with_slot(&self, slot: u16, node: Arc<Node>) -> Self {
        let mut masters = self.masters.clone();
        let mut replicas = self.replicas.clone();
        let idx = match masters.iter().position(|m| Arc::ptr_eq(m, &node)) {
            Some(i) => i,
            None => {
                masters.push(node);
                replicas.push(Vec::new());
                masters.len() - 1
            }
        };
        let mut slots = self.slots.clone();
        slots[slot as usize] = idx as u16;
        Topology {
            slots,
            masters,
            replicas,
            source: self.source.clone(),
            generation: self.generation,
            fetched_at: self.fetched_at,
        }
    }
}

/// Formats a host and port as one address, bracketing IPv6 literals.
pub fn join_addr(host: &str, port: i64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A bulk or simple string of a decoded reply (cold-path helpers shared with command learning).
pub fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

pub fn int(f: &OwnedFrame) -> Option<i64> {
    match f {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

/// Parses a `CLUSTER SLOTS` reply. `asked_host` replaces an empty endpoint, which Redis uses
/// to mean "the host you asked"; nodes with an unknown endpoint (`?`) are skipped.
pub fn parse_cluster_slots(frame: &OwnedFrame, asked_host: &str) -> Result<Vec<SlotRange>, String> {
    let OwnedFrame::Array(rows) = frame else {
        return Err(match frame {
            OwnedFrame::Error(e) => format!("CLUSTER SLOTS failed: {e}"),
            _ => "CLUSTER SLOTS: not an array".into(),
        });
    };
    let node = |f: &OwnedFrame| -> Option<String> {
        let OwnedFrame::Array(parts) = f else {
            return None;
        };
        let host = text(parts.first()?)?;
        let port = int(parts.get(1)?)?;
        if host == "?" || !(1..=65535).contains(&port) {
            return None;
        }
        let host = if host.is_empty() {
            asked_host.to_string()
        } else {
            host
        };
        Some(join_addr(&host, port))
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let OwnedFrame::Array(cols) = row else {
            return Err("CLUSTER SLOTS: row is not an array".into());
        };
        let (Some(start), Some(end)) = (cols.first().and_then(int), cols.get(1).and_then(int))
        else {
            return Err("CLUSTER SLOTS: bad slot range".into());
        };
        if !(0..SLOTS as i64).contains(&start) || !(start..SLOTS as i64).contains(&end) {
            return Err(format!(
                "CLUSTER SLOTS: slot range {start}-{end} out of bounds"
            ));
        }
        let Some(master) = cols.get(2).and_then(node) else {
            continue;
        };
        let replicas = cols.iter().skip(3).filter_map(node).collect();
        out.push(SlotRange {
            start: start as u16,
            end: end as u16,
            master,
            replicas,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::decode::decode;

    #[test]
    fn parses_redis7_cluster_slots() {
        let raw = b"*2\r\n*4\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$40\r\nabcdefabcdefabcdefabcdefabcdefabcdefabcd\r\n*0\r\n*4\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n*0\r\n*3\r\n:5461\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n";
        let (frame, _) = decode(raw).unwrap().unwrap();
        let r = parse_cluster_slots(&frame, "10.0.0.9").unwrap();
        assert_eq!(
            r,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    master: "127.0.0.1:7000".into(),
                    replicas: vec!["127.0.0.1:7003".into()]
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    master: "10.0.0.9:7001".into(),
                    replicas: vec![]
                },
            ]
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(join_addr("::1", 7000), "[::1]:7000");
        assert_eq!(join_addr("redis-0.redis", 6379), "redis-0.redis:6379");
    }
}
