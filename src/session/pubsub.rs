//! Pub/sub for one client: its subscription connections and what it is subscribed to.
//!
//! Owns: the stream connection for SUBSCRIBE/PSUBSCRIBE (stream 0, on the master of slot 0,
//! where PUBLISH also goes, so PUBLISH's receiver count covers every slotmux subscriber), one
//! stream per node for SSUBSCRIBE (sharded channels live on their slot's master), tracking the
//! subscriptions from Redis's own confirmations, delivering messages in arrival order, and
//! keeping subscriptions alive while the cluster changes: a stream whose node dies is
//! re-subscribed on the current owner, and a shard channel that a node drops because its slot
//! moved (an unasked-for `sunsubscribe`), or whose SSUBSCRIBE met MOVED, is re-subscribed on
//! the slot's new master. Confirmations of what slotmux re-subscribes are hidden; shard
//! confirmations carry the client's total, as one Redis would count it. Keyspace
//! notifications are published by each node for its own keys only: a subscription that can
//! match `__keyspace@...`/`__keyevent@...` is mirrored on every other master (hidden), and
//! only keyspace messages are taken from those mirrors (PUBLISH reaches every node, so the
//! rest would come twice).
//! Must not: touch the shared connections or the request queue beyond appending frames.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::queue::Entry;
use super::Session;
use crate::cluster::key_slot;
use crate::command::Sub;
use crate::error::ProxyError;
use crate::merge::elements;
use crate::metrics::{Outcome, RefreshReason};
use crate::resp::reply::{classify, Redirect};
use crate::resp::write::{self, Proto};
use crate::upstream::{LinkKind, Node, OwnedLink, Reply};

/// Tags of stream frames: `STREAM_BASE - i` for stream `i` (0 = SUBSCRIBE/PSUBSCRIBE).
pub(super) const STREAM_BASE: u64 = u64::MAX - 1;
const MAX_STREAMS: u64 = 4096;
/// The retry tag for shard channels waiting for a home.
const ORPHANS_TAG: u64 = STREAM_BASE - (MAX_STREAMS - 1);
/// The retry tag for putting the keyspace mirrors in line with the masters.
const MIRRORS_TAG: u64 = STREAM_BASE - (MAX_STREAMS - 2);
/// How often a keyspace subscriber's mirrors are checked against the masters (new ones).
const MIRROR_CHECK: Duration = Duration::from_secs(5);

pub(super) fn is_stream_tag(tag: u64) -> bool {
    tag <= STREAM_BASE && tag > STREAM_BASE - MAX_STREAMS
}

/// A subscribe command sent on a stream and not yet fully confirmed.
struct Pending {
    channels: Vec<Bytes>,
    /// PSUBSCRIBE (stream 0 carries SUBSCRIBE and PSUBSCRIBE).
    pattern: bool,
    /// Confirmations still to come.
    left: usize,
    /// slotmux's own re-subscription: the client must not see its confirmations.
    hidden: bool,
}

struct Stream {
    node: Arc<Node>,
    conn: Option<OwnedLink>,
    /// Subscriptions on this connection, as Redis last counted them.
    count: i64,
    /// Channels (and, on stream 0, patterns) the node confirmed.
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    /// Subscribe commands in flight, in order.
    sent: VecDeque<Pending>,
    /// Unsubscribes the client asked for, not yet confirmed: any other unsubscribe
    /// confirmation is the node's own doing.
    leaving: BTreeSet<Bytes>,
    /// A keyspace mirror on another master (see the module doc), not a shard stream.
    mirror: bool,
}

impl Stream {
    fn new(node: Arc<Node>, conn: OwnedLink, mirror: bool) -> Stream {
        Stream {
            node,
            mirror,
            conn: Some(conn),
            count: 0,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            sent: VecDeque::new(),
            leaving: BTreeSet::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct PubSub {
    /// Index 0: SUBSCRIBE/PSUBSCRIBE; others: SSUBSCRIBE per node.
    streams: Vec<Option<Stream>>,
    /// Shard channels whose node dropped them (or died), waiting to be subscribed on their
    /// slot's master; `true` when the client already has its confirmation (slotmux's own
    /// re-subscription, hidden), `false` when the client still waits for it.
    orphans: BTreeMap<Bytes, bool>,
    /// Stream 0's subscribe commands that were in flight when it was lost: sent again,
    /// visibly, when it is back (`true` for patterns).
    unconfirmed: Vec<(Bytes, bool)>,
    /// The client's channels and patterns (`true`) that can match keyspace notifications:
    /// what every mirror subscribes.
    keyspace: BTreeSet<(Bytes, bool)>,
}

/// Whether a channel (or a pattern) can carry keyspace notifications.
fn keyspace_name(name: &[u8], pattern: bool) -> bool {
    const NAMES: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];
    if !pattern {
        return NAMES.iter().any(|n| name.starts_with(n));
    }
    // The literal start of the pattern must agree with one of the two prefixes.
    let lit = name
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .map_or(name, |i| &name[..i]);
    NAMES
        .iter()
        .any(|n| n.starts_with(lit) || lit.starts_with(n))
}

impl PubSub {
    pub(super) fn subscribed(&self) -> bool {
        self.streams.iter().flatten().any(|s| s.count > 0)
            || !self.orphans.is_empty()
            || !self.unconfirmed.is_empty()
    }

    fn stream(&mut self, idx: usize) -> Option<&mut Stream> {
        self.streams.get_mut(idx).and_then(|s| s.as_mut())
    }

    /// The client's shard channels, wherever they live now.
    fn shard_count(&self) -> i64 {
        let held: usize = self
            .streams
            .iter()
            .skip(1)
            .flatten()
            .filter(|s| !s.mirror)
            .map(|s| s.channels.len())
            .sum();
        (held + self.orphans.len()) as i64
    }
}

fn confirmation(proto: Proto, kind: &[u8], channel: Option<&[u8]>, count: i64) -> Bytes {
    let mut b = bytes::BytesMut::new();
    match proto {
        Proto::Resp2 => write::array_header(&mut b, 3),
        Proto::Resp3 => b.extend_from_slice(b">3\r\n"),
    }
    write::bulk(&mut b, kind);
    match channel {
        Some(c) => write::bulk(&mut b, c),
        None => write::null(&mut b, proto),
    }
    write::integer(&mut b, count);
    b.freeze()
}

/// The body of a bulk element of `frame` spanning `r` (header line cut off).
fn body(frame: &[u8], r: (usize, usize)) -> Bytes {
    let x = &frame[r.0..r.1];
    let start = x
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    Bytes::copy_from_slice(x[start..].strip_suffix(b"\r\n").unwrap_or(&x[start..]))
}

impl Session {
    pub(super) fn subscribed(&self) -> bool {
        self.pubsub.as_ref().is_some_and(|p| p.subscribed())
    }

    /// Queues a push for the client, unless everything buffered for it (written output and
    /// pushes queued behind a pending command) would pass the pub/sub output limit.
    pub(super) fn deliver(&mut self, frame: Bytes) {
        // Pub/sub messages and confirmations are not silenced by CLIENT REPLY OFF: Redis
        // 7 sends them regardless (its CLIENT_PUSHING).
        let limit = self.shared.config.pubsub_output_limit;
        if (self.out.len() + self.push_bytes + frame.len()) as u64 > limit {
            // Counted once: more frames of the same batch arrive after `kill` is set.
            if !self.closing && !self.kill {
                tracing::info!(client = %self.peer, limit, "closing subscriber that does not read (pub/sub output limit)");
                self.shared
                    .stats
                    .output_limit_disconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.kill = true;
            return;
        }
        if self.queue.is_empty() {
            self.out.extend_from_slice(&frame);
        } else {
            self.push_bytes += frame.len();
            self.queue
                .push(Entry::ready(frame, Outcome::Ok), None, false);
        }
    }

    /// Opens (or reopens) stream `idx` on `node`.
    fn open_stream(&mut self, idx: usize, node: Arc<Node>, mirror: bool) -> bool {
        let tag = STREAM_BASE - idx as u64;
        let kind = LinkKind::Stream {
            tag,
            to: self.inbox.clone(),
        };
        let Some(conn) = self.worker.owned(&node, self.proto, kind, self.user) else {
            return false;
        };
        let ps = self.pubsub.get_or_insert_with(PubSub::default);
        while ps.streams.len() <= idx {
            ps.streams.push(None);
        }
        match &mut ps.streams[idx] {
            Some(s) => {
                s.node = node;
                s.conn = Some(conn);
                s.sent.clear();
                s.count = 0;
            }
            slot @ None => *slot = Some(Stream::new(node, conn, mirror)),
        }
        true
    }

    /// A free stream index (not 0).
    fn free_stream(&mut self) -> Option<usize> {
        let ps = self.pubsub.get_or_insert_with(PubSub::default);
        let free = ps
            .streams
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, s)| s.is_none())
            .map(|(i, _)| i)
            .unwrap_or(ps.streams.len().max(1));
        ((free as u64) < MAX_STREAMS - 2).then_some(free)
    }

    /// The shard stream on `node`, opened if needed.
    fn shard_stream(&mut self, node: &Arc<Node>) -> Option<usize> {
        let ps = self.pubsub.get_or_insert_with(PubSub::default);
        let found = ps.streams.iter().enumerate().skip(1).find_map(|(i, s)| {
            s.as_ref()
                .filter(|s| !s.mirror && Arc::ptr_eq(&s.node, node) && s.conn.is_some())
                .map(|_| i)
        });
        if found.is_some() {
            return found;
        }
        let free = self.free_stream()?;
        if !self.open_stream(free, node.clone(), false) {
            return None;
        }
        Some(free)
    }

    /// Sends a command on stream `idx`; a subscribe command is recorded to match its
    /// confirmations.
    fn stream_send(
        &mut self,
        idx: usize,
        frame: &[u8],
        sub: Option<(Vec<Bytes>, bool, bool)>,
    ) -> bool {
        let Some(s) = self.pubsub.as_mut().and_then(|p| p.stream(idx)) else {
            return false;
        };
        let Some(conn) = &s.conn else { return false };
        if conn.send_silent(frame).is_err() {
            return false;
        }
        if let Some((channels, pattern, hidden)) = sub {
            s.sent.push_back(Pending {
                left: channels.len(),
                channels,
                pattern,
                hidden,
            });
        }
        true
    }

    /// Subscribes `channels` on the stream of `kind` (`b"SUBSCRIBE"`, `b"PSUBSCRIBE"`,
    /// `b"SSUBSCRIBE"`), `hidden` for slotmux's own re-subscriptions.
    fn send_subscribe(
        &mut self,
        idx: usize,
        kind: &[u8],
        channels: Vec<Bytes>,
        hidden: bool,
    ) -> bool {
        let frame = write::encode_command(
            std::iter::once(kind)
                .chain(channels.iter().map(|c| &c[..]))
                .collect::<Vec<_>>(),
        );
        self.stream_send(idx, &frame, Some((channels, kind == b"PSUBSCRIBE", hidden)))
    }

    pub(super) fn subscribe(&mut self, kind: Sub, frame: Bytes, args: crate::command::Args<'_>) {
        let topo = self.topo.load().clone();
        let channels: Vec<Bytes> = (1..args.len())
            .filter_map(|i| args.get(i))
            .map(Bytes::copy_from_slice)
            .collect();
        match kind {
            Sub::Subscribe | Sub::PSubscribe => {
                let has = self.pubsub.as_ref().is_some_and(
                    |p| matches!(p.streams.first(), Some(Some(s)) if s.conn.is_some()),
                );
                if !has {
                    let Some(node) = topo.master_for(0).cloned() else {
                        return self.reply_error(ProxyError::SlotNotServed);
                    };
                    if !self.open_stream(0, node.clone(), false) {
                        return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                    }
                }
                let pattern = kind == Sub::PSubscribe;
                self.stream_send(0, &frame, Some((channels.clone(), pattern, false)));
                self.mirror_subscribe(&channels, pattern);
            }
            Sub::Unsubscribe | Sub::PUnsubscribe => {
                let name: &[u8] = if kind == Sub::Unsubscribe {
                    b"unsubscribe"
                } else {
                    b"punsubscribe"
                };
                if let Some(s) = self.pubsub.as_mut().and_then(|p| p.stream(0)) {
                    if s.conn.is_some() {
                        let all = if kind == Sub::Unsubscribe {
                            &s.channels
                        } else {
                            &s.patterns
                        };
                        let leaving: Vec<Bytes> = if channels.is_empty() {
                            all.iter().cloned().collect()
                        } else {
                            channels.clone()
                        };
                        s.leaving.extend(leaving.iter().cloned());
                        self.stream_send(0, &frame, None);
                        self.mirror_unsubscribe(&leaving, kind == Sub::PUnsubscribe);
                        return;
                    }
                }
                self.local_unsubscribed(name, &channels, 0);
            }
            Sub::SSubscribe => {
                let slots: BTreeSet<u16> = channels.iter().map(|c| key_slot(c)).collect();
                let &[slot] = slots.iter().copied().collect::<Vec<_>>().as_slice() else {
                    return self.reply_error(ProxyError::CrossSlot);
                };
                let Some(node) = topo.master_for(slot).cloned() else {
                    return self.reply_error(ProxyError::SlotNotServed);
                };
                let Some(idx) = self.shard_stream(&node) else {
                    return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                };
                if let Some(ps) = &mut self.pubsub {
                    for c in &channels {
                        ps.orphans.remove(c);
                    }
                }
                self.stream_send(idx, &frame, Some((channels, false, false)));
            }
            Sub::SUnsubscribe => self.sunsubscribe(channels),
        }
    }

    fn sunsubscribe(&mut self, channels: Vec<Bytes>) {
        let Some(ps) = self.pubsub.as_mut() else {
            return self.local_unsubscribed(b"sunsubscribe", &channels, 0);
        };
        // Orphans are the client's too: unsubscribing them needs no node.
        let wanted: Vec<Bytes> = if channels.is_empty() {
            let mut all: Vec<Bytes> = ps.orphans.keys().cloned().collect();
            for s in ps.streams.iter().skip(1).flatten().filter(|s| !s.mirror) {
                all.extend(s.channels.iter().cloned());
            }
            all
        } else {
            channels.clone()
        };
        let mut local = Vec::new();
        let mut targets: Vec<(usize, Vec<Bytes>)> = Vec::new();
        for c in wanted {
            if ps.orphans.remove(&c).is_some() {
                local.push(c);
                continue;
            }
            let at = ps.streams.iter().enumerate().skip(1).find_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| !s.mirror && s.conn.is_some() && s.channels.contains(&c))
                    .map(|_| i)
            });
            match at {
                Some(i) => match targets.iter_mut().find(|t| t.0 == i) {
                    Some(t) => t.1.push(c),
                    None => targets.push((i, vec![c])),
                },
                None => local.push(c),
            }
        }
        for (i, cs) in &targets {
            if let Some(s) = ps.stream(*i) {
                s.leaving.extend(cs.iter().cloned());
            }
        }
        for (i, cs) in targets {
            let frame = write::encode_command(
                std::iter::once(&b"SUNSUBSCRIBE"[..])
                    .chain(cs.iter().map(|c| &c[..]))
                    .collect::<Vec<_>>(),
            );
            self.stream_send(i, &frame, None);
        }
        if !local.is_empty() || (channels.is_empty() && self.pubsub_shard_count() == 0) {
            let count = self.pubsub_shard_count();
            self.local_unsubscribed(b"sunsubscribe", &local, count);
        }
    }

    /// (channels, patterns, shard channels) the client is subscribed to, for CLIENT LIST.
    pub(super) fn pubsub_counts(&self) -> (usize, usize, usize) {
        let Some(ps) = &self.pubsub else {
            return (0, 0, 0);
        };
        let (sub, psub) = ps
            .streams
            .first()
            .and_then(|s| s.as_ref())
            .map_or((0, 0), |s| (s.channels.len(), s.patterns.len()));
        (sub, psub, ps.shard_count().max(0) as usize)
    }

    fn pubsub_shard_count(&self) -> i64 {
        self.pubsub.as_ref().map(|p| p.shard_count()).unwrap_or(0)
    }

    /// Redis's answer to an unsubscribe from something not (or no longer) subscribed (a
    /// confirmation: sent even under CLIENT REPLY OFF).
    fn local_unsubscribed(&mut self, kind: &[u8], channels: &[Bytes], count: i64) {
        self.silent = false;
        let proto = self.proto;
        if channels.is_empty() {
            let f = confirmation(proto, kind, None, count);
            return self.reply_local(|o, _| o.extend_from_slice(&f));
        }
        for c in channels {
            let f = confirmation(proto, kind, Some(c), count);
            self.reply_local(|o, _| o.extend_from_slice(&f));
        }
    }

    /// A frame (or the end) of stream `idx`.
    pub(super) fn on_stream(&mut self, reply: Reply) {
        let idx = (STREAM_BASE - reply.tag) as usize;
        let frame = match reply.result {
            Ok(f) => f,
            Err(_) => return self.stream_lost(idx),
        };
        if frame.first() == Some(&b'-') {
            return self.stream_error(idx, frame);
        }
        let mirror = self
            .pubsub
            .as_mut()
            .and_then(|p| p.stream(idx))
            .is_some_and(|s| s.mirror);
        if mirror {
            return self.on_mirror(idx, frame);
        }
        let Some(els) = elements(&frame).filter(|e| e.len() == 3) else {
            return self.deliver(frame);
        };
        let kind = body(&frame, els[0]);
        let subscribe = matches!(&kind[..], b"subscribe" | b"psubscribe" | b"ssubscribe");
        let unsubscribe = matches!(
            &kind[..],
            b"unsubscribe" | b"punsubscribe" | b"sunsubscribe"
        );
        if !subscribe && !unsubscribe {
            return self.deliver(frame);
        }
        let chan = body(&frame, els[1]);
        let count = std::str::from_utf8(&frame[els[2].0..els[2].1])
            .ok()
            .and_then(|c| c.trim().trim_start_matches(':').parse::<i64>().ok());
        let shard = &kind[..] == b"ssubscribe" || &kind[..] == b"sunsubscribe";
        let Some(ps) = self.pubsub.as_mut() else {
            return self.deliver(frame);
        };
        let Some(s) = ps.stream(idx) else {
            return self.deliver(frame);
        };
        if let Some(c) = count {
            s.count = c;
        }
        let mut hide = false;
        let mut orphan = None;
        if subscribe {
            if &kind[..] == b"psubscribe" {
                s.patterns.insert(chan.clone());
            } else {
                s.channels.insert(chan.clone());
            }
            if let Some(p) = s.sent.front_mut() {
                hide = p.hidden;
                p.left = p.left.saturating_sub(1);
                if p.left == 0 {
                    s.sent.pop_front();
                }
            }
        } else {
            let asked = s.leaving.remove(&chan) || frame_has_null_channel(&frame, els[1]);
            if &kind[..] == b"punsubscribe" {
                s.patterns.remove(&chan);
            } else {
                s.channels.remove(&chan);
            }
            if !asked && shard {
                // The node dropped a shard channel the client still wants: its slot moved.
                hide = true;
                orphan = Some(chan.clone());
            }
        }
        if let Some(c) = orphan {
            ps.orphans.insert(c, true);
            self.shared.cluster.request_refresh(RefreshReason::Moved);
            self.adopt_orphans();
        }
        self.publish_view();
        if hide {
            return;
        }
        if shard {
            // Redis counts all of the client's shard channels; each node knows only its own.
            let total = self.pubsub_shard_count();
            let f = confirmation(self.proto_of(&frame), &kind, Some(&chan), total);
            return self.deliver(f);
        }
        self.deliver(frame);
    }

    fn proto_of(&self, frame: &[u8]) -> Proto {
        if frame.first() == Some(&b'>') {
            Proto::Resp3
        } else {
            self.proto
        }
    }

    /// An error reply on a stream answers its oldest subscribe command: a MOVED for an
    /// SSUBSCRIBE re-homes its channels; other errors are the client's unless slotmux sent it.
    fn stream_error(&mut self, idx: usize, frame: Bytes) {
        let pending = self
            .pubsub
            .as_mut()
            .and_then(|p| p.stream(idx))
            .and_then(|s| s.sent.pop_front());
        if let (Some(p), Some(redirect)) = (&pending, classify(&frame)) {
            if idx > 0 {
                match redirect {
                    Redirect::Moved { slot, addr } => {
                        self.shared
                            .stats
                            .moved
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.shared.cluster.note_moved(slot, addr);
                    }
                    _ => self.shared.cluster.request_refresh(RefreshReason::Moved),
                }
                if let Some(ps) = self.pubsub.as_mut() {
                    ps.orphans
                        .extend(p.channels.iter().map(|c| (c.clone(), p.hidden)));
                }
                return self.adopt_orphans();
            }
        }
        if !pending.is_some_and(|p| p.hidden) {
            self.deliver(frame);
        }
    }

    /// Subscribes every orphaned shard channel on its slot's current master, or tries again
    /// shortly.
    fn adopt_orphans(&mut self) {
        let orphans: Vec<(Bytes, bool)> = match self.pubsub.as_mut() {
            Some(ps) => std::mem::take(&mut ps.orphans).into_iter().collect(),
            None => return,
        };
        let topo = self.topo.load().clone();
        // One SSUBSCRIBE per (master, hidden or not).
        let mut homes: Vec<(Arc<Node>, bool, Vec<Bytes>)> = Vec::new();
        let mut left = Vec::new();
        for (c, hidden) in orphans {
            match topo.master_for(key_slot(&c)) {
                Some(n) => {
                    match homes
                        .iter_mut()
                        .find(|h| Arc::ptr_eq(&h.0, n) && h.1 == hidden)
                    {
                        Some(h) => h.2.push(c),
                        None => homes.push((n.clone(), hidden, vec![c])),
                    }
                }
                None => left.push((c, hidden)),
            }
        }
        for (node, hidden, channels) in homes {
            let sent = match self.shard_stream(&node) {
                Some(idx) => self.send_subscribe(idx, b"SSUBSCRIBE", channels.clone(), hidden),
                None => false,
            };
            if !sent {
                left.extend(channels.into_iter().map(|c| (c, hidden)));
            }
        }
        if !left.is_empty() {
            if let Some(ps) = self.pubsub.as_mut() {
                ps.orphans.extend(left);
            }
            self.retries
                .push((Instant::now() + Duration::from_millis(200), ORPHANS_TAG));
        }
    }

    fn stream_lost(&mut self, idx: usize) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let Some(s) = ps.stream(idx) else { return };
        s.conn = None;
        s.leaving.clear();
        // Subscribe commands still unconfirmed are made again: hidden when slotmux sent them,
        // visibly when the client waits for their confirmations.
        let pending: Vec<(Bytes, bool, bool)> = s
            .sent
            .drain(..)
            .flat_map(|p| {
                let (pattern, hidden) = (p.pattern, p.hidden);
                p.channels.into_iter().map(move |c| (c, pattern, hidden))
            })
            .collect();
        let node = s.node.addr.clone();
        if s.mirror {
            ps.streams[idx] = None;
            self.retries
                .push((Instant::now() + Duration::from_millis(200), MIRRORS_TAG));
            return;
        }
        if idx > 0 {
            // Each shard channel goes back to its own slot's master, wherever that is now.
            let channels = std::mem::take(&mut s.channels);
            ps.streams[idx] = None;
            ps.orphans.extend(channels.into_iter().map(|c| (c, true)));
            ps.orphans
                .extend(pending.into_iter().map(|(c, _, hidden)| (c, hidden)));
            if ps.orphans.is_empty() {
                return;
            }
            tracing::info!(node = %node, "shard subscription connection lost; re-subscribing");
            self.shared
                .cluster
                .request_refresh(RefreshReason::NodeFailure);
            self.retries
                .push((Instant::now() + Duration::from_millis(200), ORPHANS_TAG));
            return;
        }
        let visible: Vec<(Bytes, bool)> = pending
            .into_iter()
            .filter(|p| !p.2)
            .map(|(c, pattern, _)| (c, pattern))
            .collect();
        let empty = s.channels.is_empty() && s.patterns.is_empty() && visible.is_empty();
        ps.unconfirmed.extend(visible);
        if empty {
            return;
        }
        tracing::info!(node = %node, "subscription connection lost; re-subscribing");
        self.shared
            .cluster
            .request_refresh(RefreshReason::NodeFailure);
        self.retries
            .push((Instant::now() + Duration::from_millis(200), STREAM_BASE));
    }

    /// A retry tag of pub/sub came due: stream 0 or the orphans.
    pub(super) fn resubscribe(&mut self, tag: u64) {
        if tag == ORPHANS_TAG {
            return self.adopt_orphans();
        }
        if tag == MIRRORS_TAG {
            return self.sync_mirrors();
        }
        if tag != STREAM_BASE {
            return;
        }
        let topo = self.topo.load().clone();
        let Some(s) = self.pubsub.as_mut().and_then(|p| p.stream(0)) else {
            return;
        };
        if s.conn.is_some() {
            return;
        }
        let channels: Vec<Bytes> = s.channels.iter().cloned().collect();
        let patterns: Vec<Bytes> = s.patterns.iter().cloned().collect();
        let unconfirmed = self
            .pubsub
            .as_mut()
            .map(|p| std::mem::take(&mut p.unconfirmed))
            .unwrap_or_default();
        let opened = match topo.master_for(0).cloned() {
            Some(n) => self.open_stream(0, n, false),
            None => false,
        };
        if !opened {
            if let Some(p) = self.pubsub.as_mut() {
                p.unconfirmed = unconfirmed;
            }
            self.retries
                .push((Instant::now() + Duration::from_millis(500), tag));
            return;
        }
        if !channels.is_empty() {
            self.send_subscribe(0, b"SUBSCRIBE", channels, true);
        }
        if !patterns.is_empty() {
            self.send_subscribe(0, b"PSUBSCRIBE", patterns, true);
        }
        for (c, pattern) in unconfirmed {
            let kind: &[u8] = if pattern { b"PSUBSCRIBE" } else { b"SUBSCRIBE" };
            self.send_subscribe(0, kind, vec![c], false);
        }
        // Stream 0 may now be on a node that had a mirror.
        self.sync_mirrors();
    }

    /// New keyspace-capable subscriptions of the client: on every mirror too (hidden), and
    /// mirrors opened where missing.
    fn mirror_subscribe(&mut self, names: &[Bytes], pattern: bool) {
        let fresh: Vec<Bytes> = names
            .iter()
            .filter(|n| keyspace_name(n, pattern))
            .cloned()
            .collect();
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let fresh: Vec<Bytes> = fresh
            .into_iter()
            .filter(|n| ps.keyspace.insert((n.clone(), pattern)))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let kind: &[u8] = if pattern { b"PSUBSCRIBE" } else { b"SUBSCRIBE" };
        for idx in self.mirror_indexes() {
            self.send_subscribe(idx, kind, fresh.clone(), true);
        }
        self.sync_mirrors();
    }

    /// The client left these (all of its kind when `names` lists them all): off the mirrors.
    fn mirror_unsubscribe(&mut self, names: &[Bytes], pattern: bool) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let gone: Vec<Bytes> = names
            .iter()
            .filter(|n| ps.keyspace.remove(&((*n).clone(), pattern)))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        if ps.keyspace.is_empty() {
            for s in ps.streams.iter_mut().skip(1) {
                if s.as_ref().is_some_and(|s| s.mirror) {
                    *s = None;
                }
            }
            return;
        }
        let kind: &[u8] = if pattern {
            b"PUNSUBSCRIBE"
        } else {
            b"UNSUBSCRIBE"
        };
        let frame = write::encode_command(
            std::iter::once(kind)
                .chain(gone.iter().map(|c| &c[..]))
                .collect::<Vec<_>>(),
        );
        for idx in self.mirror_indexes() {
            self.stream_send(idx, &frame, None);
        }
    }

    fn mirror_indexes(&self) -> Vec<usize> {
        self.pubsub
            .as_ref()
            .map(|ps| {
                ps.streams
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.as_ref().is_some_and(|s| s.mirror && s.conn.is_some()))
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One mirror on every master but stream 0's while the client has keyspace-capable
    /// subscriptions: opened where missing (subscribing them all, hidden), dropped where the
    /// node is no longer a master; checked again later for masters to come.
    fn sync_mirrors(&mut self) {
        let topo = self.topo.load().clone();
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        if ps.keyspace.is_empty() {
            return;
        }
        let main = ps
            .streams
            .first()
            .and_then(|s| s.as_ref())
            .filter(|s| s.conn.is_some())
            .map(|s| s.node.clone());
        let wanted: Vec<Arc<Node>> = topo
            .masters
            .iter()
            .filter(|m| !main.as_ref().is_some_and(|n| Arc::ptr_eq(n, m)))
            .cloned()
            .collect();
        for s in ps.streams.iter_mut().skip(1) {
            let stale = s
                .as_ref()
                .is_some_and(|s| s.mirror && !wanted.iter().any(|m| Arc::ptr_eq(m, &s.node)));
            if stale {
                *s = None;
            }
        }
        let missing: Vec<Arc<Node>> = wanted
            .into_iter()
            .filter(|m| {
                !ps.streams
                    .iter()
                    .flatten()
                    .any(|s| s.mirror && s.conn.is_some() && Arc::ptr_eq(&s.node, m))
            })
            .collect();
        let channels: Vec<Bytes> = ps
            .keyspace
            .iter()
            .filter(|k| !k.1)
            .map(|k| k.0.clone())
            .collect();
        let patterns: Vec<Bytes> = ps
            .keyspace
            .iter()
            .filter(|k| k.1)
            .map(|k| k.0.clone())
            .collect();
        let mut again = Duration::from_secs(0);
        for node in missing {
            let opened = match self.free_stream() {
                Some(idx) if self.open_stream(idx, node, true) => Some(idx),
                _ => None,
            };
            let Some(idx) = opened else {
                again = Duration::from_millis(500);
                continue;
            };
            if !channels.is_empty() {
                self.send_subscribe(idx, b"SUBSCRIBE", channels.clone(), true);
            }
            if !patterns.is_empty() {
                self.send_subscribe(idx, b"PSUBSCRIBE", patterns.clone(), true);
            }
        }
        let next = if again.is_zero() { MIRROR_CHECK } else { again };
        if !self.retries.iter().any(|r| r.1 == MIRRORS_TAG) {
            self.retries.push((Instant::now() + next, MIRRORS_TAG));
        }
    }

    /// A frame of a keyspace mirror: only keyspace messages reach the client.
    fn on_mirror(&mut self, idx: usize, frame: Bytes) {
        let Some(els) = elements(&frame) else { return };
        let Some(&first) = els.first() else { return };
        let kind = body(&frame, first);
        let channel = match (&kind[..], els.len()) {
            (b"message", 3) => body(&frame, els[1]),
            (b"pmessage", 4) => body(&frame, els[2]),
            (b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe", 3) => {
                if let Some(s) = self.pubsub.as_mut().and_then(|p| p.stream(idx)) {
                    if matches!(&kind[..], b"subscribe" | b"psubscribe") {
                        if let Some(p) = s.sent.front_mut() {
                            p.left = p.left.saturating_sub(1);
                            if p.left == 0 {
                                s.sent.pop_front();
                            }
                        }
                    }
                }
                return;
            }
            _ => return,
        };
        if keyspace_name(&channel, false) {
            self.deliver(frame);
        }
    }

    /// RESP2 clients in subscribed state may only send these (Redis's rule).
    pub(super) fn refuse_in_subscribed_state(&mut self, name: &[u8]) -> bool {
        if self.proto != Proto::Resp2 || !self.subscribed() {
            return false;
        }
        let allowed = [
            &b"subscribe"[..],
            b"unsubscribe",
            b"psubscribe",
            b"punsubscribe",
            b"ssubscribe",
            b"sunsubscribe",
            b"ping",
            b"quit",
            b"reset",
        ];
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return false;
        }
        self.reply_error(ProxyError::redis(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            String::from_utf8_lossy(name).to_ascii_lowercase()
        )));
        true
    }
}

/// Whether the channel element of an unsubscribe confirmation is null (unsubscribing with
/// nothing subscribed): always an answer to the client.
fn frame_has_null_channel(frame: &[u8], r: (usize, usize)) -> bool {
    let x = &frame[r.0..r.1];
    x.starts_with(b"$-1") || x.starts_with(b"_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names() {
        assert!(keyspace_name(b"__keyspace@0__:foo", false));
        assert!(keyspace_name(b"__keyevent@0__:set", false));
        assert!(!keyspace_name(b"news", false));
        for p in [
            "*",
            "__key*",
            "__keyevent@*",
            "__keyspace@0__:*",
            "_*",
            "?*",
        ] {
            assert!(keyspace_name(p.as_bytes(), true), "{p}");
        }
        for p in ["news*", "__other*", "k*"] {
            assert!(!keyspace_name(p.as_bytes(), true), "{p}");
        }
    }
}
