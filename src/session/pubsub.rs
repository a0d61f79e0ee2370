//! Pub/sub for one client: its subscription connections and what it is subscribed to.
//!
//! Owns: the stream connection for SUBSCRIBE/PSUBSCRIBE (to the master of slot 0, where
//! PUBLISH also goes, so PUBLISH's receiver count covers every slotmux subscriber), one stream
//! per node for SSUBSCRIBE (sharded channels live on their slot's master), tracking the
//! subscribed channels from Redis's own confirmations, delivering messages in arrival order,
//! and re-subscribing elsewhere when a subscription's node dies (hiding the confirmations).
//! Must not: touch the shared connections or the request queue beyond appending frames.

use bytes::Bytes;
use std::collections::BTreeSet;
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
use crate::resp::write::{self, Proto};
use crate::upstream::{LinkKind, Node, OwnedLink, Reply};

/// Tags of stream frames: `STREAM_BASE - i` for stream `i` (0 = SUBSCRIBE/PSUBSCRIBE).
pub(super) const STREAM_BASE: u64 = u64::MAX - 1;
const MAX_STREAMS: u64 = 4096;

pub(super) fn is_stream_tag(tag: u64) -> bool {
    tag <= STREAM_BASE && tag > STREAM_BASE - MAX_STREAMS
}

struct Stream {
    node: Arc<Node>,
    conn: Option<OwnedLink>,
    /// Subscriptions on this connection, as Redis last counted them.
    count: i64,
    /// Confirmations still to hide after a re-subscribe.
    swallow: usize,
    /// Channels (sharded streams) or channels + patterns (stream 0) to restore.
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
}

#[derive(Default)]
pub(super) struct PubSub {
    /// Index 0: SUBSCRIBE/PSUBSCRIBE; others: SSUBSCRIBE per node.
    streams: Vec<Option<Stream>>,
}

impl PubSub {
    pub(super) fn subscribed(&self) -> bool {
        self.streams.iter().flatten().any(|s| s.count > 0)
    }
}

fn confirmation(proto: Proto, kind: &str, channel: Option<&[u8]>, count: i64) -> Bytes {
    let mut b = bytes::BytesMut::new();
    match proto {
        Proto::Resp2 => write::array_header(&mut b, 3),
        Proto::Resp3 => b.extend_from_slice(b">3\r\n"),
    }
    write::bulk(&mut b, kind.as_bytes());
    match channel {
        Some(c) => write::bulk(&mut b, c),
        None => write::null(&mut b, proto),
    }
    write::integer(&mut b, count);
    b.freeze()
}

impl Session {
    pub(super) fn subscribed(&self) -> bool {
        self.pubsub.as_ref().is_some_and(|p| p.subscribed())
    }

    /// Queues a push for the client, unless everything buffered for it (written output and
    /// pushes queued behind a pending command) would pass the pub/sub output limit.
    fn deliver(&mut self, frame: Bytes) {
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
            self.queue.push(Entry::ready(frame, Outcome::Ok), None);
        }
    }

    fn open_stream(&mut self, idx: usize, node: Arc<Node>) -> bool {
        let tag = STREAM_BASE - idx as u64;
        let kind = LinkKind::Stream {
            tag,
            to: self.inbox.clone(),
        };
        let Some(conn) = self.worker.owned(&node, self.proto, kind) else {
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
            }
            slot @ None => {
                *slot = Some(Stream {
                    node,
                    conn: Some(conn),
                    count: 0,
                    swallow: 0,
                    channels: BTreeSet::new(),
                    patterns: BTreeSet::new(),
                })
            }
        }
        true
    }

    fn stream_send(&self, idx: usize, frame: Bytes) -> bool {
        let Some(Some(s)) = self
            .pubsub
            .as_ref()
            .map(|p| p.streams.get(idx).and_then(|s| s.as_ref()))
        else {
            return false;
        };
        let Some(conn) = &s.conn else { return false };
        conn.send_silent(&frame).is_ok()
    }

    fn shard_index(&self, node: &Arc<Node>) -> Option<usize> {
        let ps = self.pubsub.as_ref()?;
        ps.streams
            .iter()
            .enumerate()
            .skip(1)
            .find_map(|(i, s)| match s {
                Some(s) if Arc::ptr_eq(&s.node, node) => Some(i),
                _ => None,
            })
    }

    pub(super) fn subscribe(&mut self, kind: Sub, frame: Bytes, args: crate::command::Args<'_>) {
        let topo = self.topo.load().clone();
        let channels: Vec<&[u8]> = (1..args.len()).filter_map(|i| args.get(i)).collect();
        match kind {
            Sub::Subscribe | Sub::PSubscribe => {
                let has = self.pubsub.as_ref().is_some_and(
                    |p| matches!(p.streams.first(), Some(Some(s)) if s.conn.is_some()),
                );
                if !has {
                    let Some(node) = topo.master_for(0).cloned() else {
                        return self.reply_error(ProxyError::SlotNotServed);
                    };
                    if !self.open_stream(0, node.clone()) {
                        return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                    }
                }
                self.stream_send(0, frame);
            }
            Sub::Unsubscribe | Sub::PUnsubscribe => {
                if !self.stream_send(0, frame) {
                    let name = if kind == Sub::Unsubscribe {
                        "unsubscribe"
                    } else {
                        "punsubscribe"
                    };
                    self.local_unsubscribed(name, &channels);
                }
            }
            Sub::SSubscribe => {
                let slot = match channels
                    .iter()
                    .map(|c| key_slot(c))
                    .collect::<BTreeSet<_>>()
                {
                    s if s.len() == 1 => *s.iter().next().unwrap_or(&0),
                    _ => return self.reply_error(ProxyError::CrossSlot),
                };
                let Some(node) = topo.master_for(slot).cloned() else {
                    return self.reply_error(ProxyError::SlotNotServed);
                };
                let idx = match self.shard_index(&node) {
                    Some(i) => i,
                    None => {
                        let i = self
                            .pubsub
                            .as_ref()
                            .map(|p| p.streams.len().max(1))
                            .unwrap_or(1);
                        if i as u64 >= MAX_STREAMS || !self.open_stream(i, node.clone()) {
                            return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                        }
                        i
                    }
                };
                self.stream_send(idx, frame);
            }
            Sub::SUnsubscribe => {
                let mut sent = false;
                if channels.is_empty() {
                    let n = self.pubsub.as_ref().map(|p| p.streams.len()).unwrap_or(0);
                    for i in 1..n {
                        sent |= self.stream_send(i, frame.clone());
                    }
                } else if let Some(node) = topo.master_for(key_slot(channels[0])).cloned() {
                    if let Some(i) = self.shard_index(&node) {
                        sent = self.stream_send(i, frame);
                    }
                }
                if !sent {
                    self.local_unsubscribed("sunsubscribe", &channels);
                }
            }
        }
    }

    /// Redis's answer to an unsubscribe from something never subscribed.
    fn local_unsubscribed(&mut self, kind: &str, channels: &[&[u8]]) {
        let proto = self.proto;
        if channels.is_empty() {
            let f = confirmation(proto, kind, None, 0);
            return self.reply_local(|o, _| o.extend_from_slice(&f));
        }
        for c in channels {
            let f = confirmation(proto, kind, Some(c), 0);
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
        let mut hide = false;
        if let Some(els) = elements(&frame) {
            if els.len() == 3 {
                let kind = &frame[els[0].0..els[0].1];
                let body = |r: (usize, usize)| {
                    let x = &frame[r.0..r.1];
                    let start = x
                        .iter()
                        .position(|&b| b == b'\n')
                        .map(|p| p + 1)
                        .unwrap_or(0);
                    Bytes::copy_from_slice(x[start..].strip_suffix(b"\r\n").unwrap_or(&x[start..]))
                };
                let k = body(els[0]);
                let is_conf = matches!(
                    &k[..],
                    b"subscribe"
                        | b"unsubscribe"
                        | b"psubscribe"
                        | b"punsubscribe"
                        | b"ssubscribe"
                        | b"sunsubscribe"
                );
                let _ = kind;
                if is_conf {
                    let chan = body(els[1]);
                    let raw = &frame[els[2].0..els[2].1];
                    let count = std::str::from_utf8(raw)
                        .ok()
                        .and_then(|c| c.trim().trim_start_matches(':').parse::<i64>().ok());
                    if let Some(Some(s)) = self
                        .pubsub
                        .as_mut()
                        .map(|p| p.streams.get_mut(idx).and_then(|s| s.as_mut()))
                    {
                        match &k[..] {
                            b"subscribe" | b"ssubscribe" => {
                                s.channels.insert(chan);
                            }
                            b"psubscribe" => {
                                s.patterns.insert(chan);
                            }
                            b"unsubscribe" | b"sunsubscribe" => {
                                s.channels.remove(&chan);
                            }
                            _ => {
                                s.patterns.remove(&chan);
                            }
                        }
                        if let Some(c) = count {
                            s.count = c;
                        }
                        if s.swallow > 0
                            && (&k[..] == b"subscribe"
                                || &k[..] == b"psubscribe"
                                || &k[..] == b"ssubscribe")
                        {
                            s.swallow -= 1;
                            hide = true;
                        }
                    }
                }
            }
        }
        if !hide {
            self.deliver(frame);
        }
    }

    fn stream_lost(&mut self, idx: usize) {
        let Some(Some(s)) = self
            .pubsub
            .as_mut()
            .map(|p| p.streams.get_mut(idx).and_then(|s| s.as_mut()))
        else {
            return;
        };
        s.conn = None;
        if s.channels.is_empty() && s.patterns.is_empty() {
            return;
        }
        tracing::info!(node = %s.node.addr, "subscription connection lost; re-subscribing");
        self.shared
            .cluster
            .request_refresh(RefreshReason::NodeFailure);
        self.retries.push((
            Instant::now() + Duration::from_millis(200),
            STREAM_BASE - idx as u64,
        ));
    }

    /// Re-creates a lost subscription connection on the channels' current node.
    pub(super) fn resubscribe(&mut self, tag: u64) {
        let idx = (STREAM_BASE - tag) as usize;
        let topo = self.topo.load().clone();
        let Some(Some(s)) = self
            .pubsub
            .as_ref()
            .map(|p| p.streams.get(idx).and_then(|s| s.as_ref()))
        else {
            return;
        };
        if s.conn.is_some() {
            return;
        }
        let slot = if idx == 0 {
            Some(0)
        } else {
            s.channels.iter().next().map(|c| key_slot(c))
        };
        let channels: Vec<Bytes> = s.channels.iter().cloned().collect();
        let patterns: Vec<Bytes> = s.patterns.iter().cloned().collect();
        let node = slot.and_then(|sl| topo.master_for(sl).cloned());
        let opened = match node {
            Some(n) => self.open_stream(idx, n),
            None => false,
        };
        if !opened {
            self.retries
                .push((Instant::now() + Duration::from_millis(500), tag));
            return;
        }
        let mut swallow = 0;
        if !channels.is_empty() {
            let cmd: &[u8] = if idx == 0 {
                b"SUBSCRIBE"
            } else {
                b"SSUBSCRIBE"
            };
            let parts: Vec<&[u8]> = std::iter::once(cmd)
                .chain(channels.iter().map(|c| &c[..]))
                .collect();
            swallow += channels.len();
            self.stream_send(idx, write::encode_command(parts));
        }
        if !patterns.is_empty() {
            let parts: Vec<&[u8]> = std::iter::once(&b"PSUBSCRIBE"[..])
                .chain(patterns.iter().map(|c| &c[..]))
                .collect();
            swallow += patterns.len();
            self.stream_send(idx, write::encode_command(parts));
        }
        if let Some(Some(s)) = self
            .pubsub
            .as_mut()
            .map(|p| p.streams.get_mut(idx).and_then(|s| s.as_mut()))
        {
            s.swallow = swallow;
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
