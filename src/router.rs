//! Where a command goes: one node, several (split by slot or sent to every master), slotmux
//! itself, or nowhere (an error).
//!
//! Owns: turning a parsed command into a [`Route`] — the forward target for the common case
//! (the client's frame unchanged), the split plan with one sub-command per slot or per master,
//! and SCAN's cursor scheme over all masters.
//! Must not: hold session state or do I/O; allocate on the single-target path.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::{key_slot, Topology};
use crate::command::{self, Args, CommandSpec, Handling, Local, SlotOf};
use crate::error::ProxyError;
use crate::merge::Merge;
use crate::resp::write::encode_command;
use crate::upstream::Node;

/// Where one request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Slot(u16),
    AnyMaster,
    Node(Arc<Node>),
}

/// A command split into sub-commands whose replies are merged.
#[derive(Debug)]
pub struct Plan {
    pub merge: Merge,
    pub parts: Vec<(Target, Bytes)>,
    /// For MGET: client key index → (part, element).
    pub order: Vec<(u32, u32)>,
    /// Each part on a connection of its own, not the shared links.
    pub fresh: bool,
}

/// What each master is asked for RANDOMKEY: its key count and a key, as one batch.
pub const RANDOMKEY_BATCH: &[u8] = b"*1\r\n$6\r\nDBSIZE\r\n*1\r\n$9\r\nRANDOMKEY\r\n";

#[derive(Debug)]
pub enum Route {
    /// Forward the client's bytes unchanged.
    Forward(Target),
    Split(Plan),
    Local(Local),
    /// SCAN over all masters: the rewritten frame, the slot that names the master, and the
    /// COUNT the client asked for.
    Scan {
        frame: Bytes,
        slot: u16,
        count: usize,
    },
    /// WAIT goes to the node of the client's last write.
    LastWrite,
    /// A blocking command for this slot, on a connection of the client's own.
    Blocking(u16),
    Transaction(command::Tx),
    Subscribe(command::Sub),
    Info,
    Error(ProxyError),
}

/// Routes a command whose spec (subcommand resolved) and arity were checked.
pub fn route(spec: &'static CommandSpec, args: Args<'_>, topo: &Topology) -> Route {
    match command::policy(spec) {
        Handling::Local(l) => Route::Local(l),
        Handling::AnyMaster => Route::Forward(Target::AnyMaster),
        Handling::Refused(why) => Route::Error(ProxyError::Refused {
            command: String::from_utf8_lossy(args.get(0).unwrap_or_default()).to_ascii_lowercase(),
            why,
        }),
        Handling::Blocking => blocking(spec, args),
        Handling::KeyedUnlessBlock if has_block_arg(args) => blocking(spec, args),
        Handling::Transaction(t) => Route::Transaction(t),
        Handling::Subscribe(k) => Route::Subscribe(k),
        Handling::Info => Route::Info,
        Handling::SlotArg => {
            match std::str::from_utf8(args.get(2).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
            {
                Some(slot) if (slot as usize) < crate::cluster::slot::SLOTS => {
                    Route::Forward(Target::Slot(slot))
                }
                _ => Route::Forward(Target::AnyMaster),
            }
        }
        // Slot 0's master holds every subscription made through slotmux.
        Handling::PubSubNode => Route::Forward(Target::Slot(0)),
        Handling::Keyed | Handling::KeyedUnlessBlock => match command::slot_of(spec, args) {
            SlotOf::One(s) => Route::Forward(Target::Slot(s)),
            SlotOf::NoKeys | SlotOf::BadArgs => Route::Forward(Target::AnyMaster),
            SlotOf::CrossSlot => Route::Error(ProxyError::CrossSlot),
        },
        Handling::Split(merge) => match command::slot_of(spec, args) {
            SlotOf::One(s) => Route::Forward(Target::Slot(s)),
            SlotOf::NoKeys | SlotOf::BadArgs => Route::Forward(Target::AnyMaster),
            SlotOf::CrossSlot => Route::Split(split_by_slot(merge, args)),
        },
        Handling::AllMasters(merge) => Route::Split(Plan {
            merge,
            parts: topo
                .masters
                .iter()
                .map(|m| {
                    let frame = if merge == Merge::RandomKey {
                        Bytes::from_static(RANDOMKEY_BATCH)
                    } else {
                        whole(args)
                    };
                    (Target::Node(m.clone()), frame)
                })
                .collect(),
            order: Vec::new(),
            fresh: false,
        }),
        Handling::AllNodes(merge) => {
            let mut parts: Vec<(Target, Bytes)> = topo
                .masters
                .iter()
                .map(|m| (Target::Node(m.clone()), whole(args)))
                .collect();
            for r in topo.replicas.iter().flatten() {
                parts.push((Target::Node(r.clone()), whole(args)));
            }
            Route::Split(Plan {
                merge,
                parts,
                order: Vec::new(),
                fresh: false,
            })
        }
        Handling::KillScripts(merge) => Route::Split(Plan {
            merge,
            parts: topo
                .masters
                .iter()
                .map(|m| (Target::Node(m.clone()), whole(args)))
                .collect(),
            order: Vec::new(),
            fresh: true,
        }),
        Handling::Scan => scan(args, topo),
        Handling::LastWrite => Route::LastWrite,
    }
}

/// Where a client's read-only commands go (`--read-from`, READONLY/READWRITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Master,
    /// Replicas only: when none can serve, retried, then an error.
    Replica,
    /// A replica when one can serve, else the master.
    PreferReplica,
}

impl ReadFrom {
    /// From `--read-from`'s value (already validated by the flag's parser).
    pub fn parse(s: &str) -> ReadFrom {
        match s {
            "replica" => ReadFrom::Replica,
            "prefer-replica" => ReadFrom::PreferReplica,
            _ => ReadFrom::Master,
        }
    }
}

/// A replica of `slot`'s master that can serve reads (reachable, in sync, acknowledged within
/// `max_lag_secs`): one in `zone` when that zone has one, else any; `spread` picks among them
/// so sessions share the load. `None`: no replica can serve. Allocates nothing.
pub fn replica_for<'a>(
    topo: &'a Topology,
    slot: u16,
    spread: usize,
    max_lag_secs: u32,
    zone: Option<&str>,
) -> Option<&'a Arc<Node>> {
    let all = topo.replicas_for(slot);
    let ok = |n: &&Arc<Node>| !n.health().is_down() && n.replica.serves_reads(max_lag_secs);
    if let Some(z) = zone {
        let here = |n: &&Arc<Node>| ok(n) && n.replica.zone() == Some(z);
        let count = all.iter().filter(here).count();
        if count > 0 {
            return all.iter().filter(here).nth(spread % count);
        }
    }
    let count = all.iter().filter(ok).count();
    if count == 0 {
        return None;
    }
    all.iter().filter(ok).nth(spread % count)
}

fn blocking(spec: &'static CommandSpec, args: Args<'_>) -> Route {
    match command::slot_of(spec, args) {
        SlotOf::One(s) => Route::Blocking(s),
        SlotOf::CrossSlot => Route::Error(ProxyError::CrossSlot),
        // Malformed: any master produces Redis's own error (without blocking).
        SlotOf::NoKeys | SlotOf::BadArgs => Route::Forward(Target::AnyMaster),
    }
}

fn whole(args: Args<'_>) -> Bytes {
    Bytes::copy_from_slice(args.frame)
}

fn has_block_arg(args: Args<'_>) -> bool {
    (1..args.len()).any(|i| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"BLOCK"))
    })
}

/// One sub-command per slot, keys in the client's order within each; MSET keeps pairs.
fn split_by_slot(merge: Merge, args: Args<'_>) -> Plan {
    let name = args.get(0).unwrap_or_default();
    let step = if merge == Merge::AllOk { 2 } else { 1 };
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut by_slot: HashMap<u16, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut i = 1;
    while i + step - 1 < args.len() {
        let slot = key_slot(args.get(i).unwrap_or_default());
        let g = *by_slot.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        order.push((g as u32, groups[g].1.len() as u32));
        groups[g].1.push(i);
        i += step;
    }
    let parts = groups
        .into_iter()
        .map(|(slot, keys)| {
            let mut items: Vec<&[u8]> = Vec::with_capacity(1 + keys.len() * step);
            items.push(name);
            for k in keys {
                for j in 0..step {
                    items.push(args.get(k + j).unwrap_or_default());
                }
            }
            (Target::Slot(slot), encode_command(items))
        })
        .collect();
    Plan {
        merge,
        parts,
        order: if merge == Merge::Mget {
            order
        } else {
            Vec::new()
        },
        fresh: false,
    }
}

/// Masters in SCAN order (by the first slot each owns), as (first slot, master index).
fn scan_order(topo: &Topology) -> Vec<(u16, usize)> {
    let mut firsts: Vec<(u16, usize)> = Vec::new();
    for (start, _, m) in topo.ranges() {
        if !firsts.iter().any(|f| f.1 == m) {
            firsts.push((start, m));
        }
    }
    firsts.sort();
    firsts
}

const SLOTS: u64 = crate::cluster::slot::SLOTS as u64;

/// SCAN's client cursor is `node_cursor * 16384 + slot`, where `slot` is the first slot of the
/// master being scanned. A full iteration visits every master, one after the other.
fn scan(args: Args<'_>, topo: &Topology) -> Route {
    let Some(cursor) = std::str::from_utf8(args.get(1).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Route::Error(ProxyError::redis("ERR invalid cursor"));
    };
    let order = scan_order(topo);
    let Some(&(first, _)) = order.first() else {
        return Route::Error(ProxyError::SlotNotServed);
    };
    let (node_cursor, slot) = if cursor == 0 {
        (0, first)
    } else {
        (cursor / SLOTS, (cursor % SLOTS) as u16)
    };
    let node_cursor = node_cursor.to_string();
    let items = (0..args.len()).map(|i| {
        if i == 1 {
            node_cursor.as_bytes()
        } else {
            args.get(i).unwrap_or_default()
        }
    });
    Route::Scan {
        frame: encode_command(items.collect::<Vec<_>>()),
        slot,
        count: scan_count(args),
    }
}

/// One node's SCAN reply, read against slotmux's cursor scheme.
pub struct ScanPage {
    /// The keys of this page (each a complete reply element).
    pub items: Vec<Bytes>,
    /// The client cursor that continues after this page (0: the whole cluster is done).
    pub cursor: u64,
    /// This master is done and another one follows: its first slot.
    pub next: Option<u16>,
}

/// Reads a node's SCAN reply (to a request sent to the master of `slot`). `None` when it is
/// not a SCAN reply (an error, say), which the client then gets as it is.
pub fn scan_page(frame: &Bytes, slot: u16, topo: &Topology) -> Option<ScanPage> {
    let els = crate::merge::elements(frame)?;
    let (&(a, b), &(c, d)) = (els.first()?, els.get(1)?);
    let node_next = frame[a..b]
        .strip_suffix(b"\r\n")
        .and_then(|x| x.splitn(2, |&c| c == b'\n').nth(1))
        .and_then(|x| std::str::from_utf8(x).ok())
        .and_then(|x| x.parse::<u64>().ok())?;
    let keys = frame.slice(c..d);
    let items = crate::merge::elements(&keys)?
        .into_iter()
        .map(|(x, y)| keys.slice(x..y))
        .collect();
    if node_next != 0 {
        return Some(ScanPage {
            items,
            cursor: node_next.saturating_mul(SLOTS) + slot as u64,
            next: None,
        });
    }
    let order = scan_order(topo);
    let cur = topo
        .master_for(slot)
        .and_then(|m| topo.masters.iter().position(|x| Arc::ptr_eq(x, m)));
    let pos = order.iter().position(|o| Some(o.1) == cur);
    let next = pos.and_then(|p| order.get(p + 1)).map(|&(s, _)| s);
    Some(ScanPage {
        items,
        cursor: next.map_or(0, u64::from),
        next,
    })
}

/// A SCAN reply: `cursor` and `items`.
pub fn scan_reply(cursor: u64, items: &[Bytes]) -> Bytes {
    let cursor = cursor.to_string();
    let mut out = BytesMut::with_capacity(32 + items.iter().map(|i| i.len()).sum::<usize>());
    crate::resp::write::array_header(&mut out, 2);
    crate::resp::write::bulk(&mut out, cursor.as_bytes());
    crate::resp::write::array_header(&mut out, items.len());
    for i in items {
        out.extend_from_slice(i);
    }
    out.freeze()
}

/// The SCAN request `frame` started over at node cursor 0 (for the next master).
pub fn scan_restart(frame: &Bytes) -> Option<Bytes> {
    let mut buf = BytesMut::from(&frame[..]);
    let mut sc = crate::resp::request::RequestScanner::new(Default::default());
    let f = sc.next(&mut buf).ok()??;
    let args = Args {
        frame: &f,
        ranges: sc.args(),
    };
    let parts: Vec<&[u8]> = (0..args.len())
        .map(|i| {
            if i == 1 {
                &b"0"[..]
            } else {
                args.get(i).unwrap_or_default()
            }
        })
        .collect();
    Some(encode_command(parts))
}

/// SCAN's COUNT (10 when not given, as in Redis).
pub fn scan_count(args: Args<'_>) -> usize {
    (2..args.len())
        .find(|&i| {
            args.get(i)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"COUNT"))
        })
        .and_then(|i| args.get(i + 1))
        .and_then(crate::resp::parse_i64)
        .map_or(10, |n| n.clamp(1, i64::from(u32::MAX)) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::args_of;

    #[test]
    fn replicas_serve_reads_only_when_in_sync_and_in_zone_first() {
        use crate::cluster::topology::SlotRange;
        use crate::upstream::connect::ConnSettings;
        use std::time::Duration;
        let registry = crate::upstream::Registry::new(
            Arc::new(crate::metrics::Metrics::new()),
            ConnSettings {
                connect_timeout: Duration::from_secs(1),
                reply_timeout: Duration::from_secs(1),
                user: None,
                password: None,
                tls: None,
            },
        );
        let ranges = [SlotRange {
            start: 0,
            end: 16383,
            master: "m:1".into(),
            replicas: vec!["r:1".into(), "r:2".into(), "r:3".into()],
        }];
        let t = Topology::build(&ranges, &registry, "m:1".into(), 1);
        let pick = |spread, zone| replica_for(&t, 7, spread, 10, zone).map(|n| n.addr.to_string());
        // Nothing known from the probes yet: no replica serves.
        assert_eq!(pick(0, None), None);
        let r = |a: &str| registry.get(a).unwrap();
        r("r:1").replica.set_synced(true);
        r("r:2").replica.set_synced(true);
        assert_eq!(pick(0, None).as_deref(), Some("r:1"));
        assert_eq!(pick(1, None).as_deref(), Some("r:2"));
        // Lagging beyond 10 s: out.
        r("r:2").replica.set_lag(11);
        assert_eq!(pick(1, None).as_deref(), Some("r:1"));
        r("r:2").replica.set_lag(0);
        // A zone with a replica in it wins; a zone with none falls back to every replica.
        r("r:3").replica.set_synced(true);
        r("r:3").replica.set_zone("az-b".into());
        assert_eq!(pick(0, Some("az-b")).as_deref(), Some("r:3"));
        assert_eq!(pick(5, Some("az-b")).as_deref(), Some("r:3"));
        assert_eq!(pick(2, Some("az-c")).as_deref(), Some("r:3"));
        assert_eq!(pick(0, Some("az-c")).as_deref(), Some("r:1"));
        // Down by the probe: out.
        r("r:3").health().probe_failed();
        assert_eq!(pick(0, Some("az-b")).as_deref(), Some("r:1"));
    }

    #[test]
    fn mget_split_keeps_client_order() {
        let (f, r) = args_of(&["MGET", "a", "b", "{a}x", "c"]);
        let plan = split_by_slot(
            Merge::Mget,
            Args {
                frame: &f,
                ranges: &r,
            },
        );
        // a and {a}x share a slot: one part with both, in order.
        assert_eq!(plan.parts.len(), 3);
        assert_eq!(
            &plan.parts[0].1[..],
            b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$4\r\n{a}x\r\n"
        );
        assert_eq!(plan.order, vec![(0, 0), (1, 0), (0, 1), (2, 0)]);
    }

    #[test]
    fn mset_split_keeps_pairs() {
        let (f, r) = args_of(&["MSET", "a", "1", "b", "2", "{a}y", "3"]);
        let plan = split_by_slot(
            Merge::AllOk,
            Args {
                frame: &f,
                ranges: &r,
            },
        );
        assert_eq!(plan.parts.len(), 2);
        assert_eq!(
            &plan.parts[0].1[..],
            b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$4\r\n{a}y\r\n$1\r\n3\r\n"
        );
        assert!(plan.order.is_empty());
    }
}
