//! Requests in flight: sending them on the right link, taking their replies, and acting on
//! what [`decide`](super::decide) says (follow a redirect, retry within the budget, load a
//! script, answer an error), then finishing the queue entry (merging split commands).
//!
//! Owns: where a request goes (its target through the topology snapshot, or a one-shot
//! redirect), the retry schedule, and the bookkeeping of redirects (counters, slot-table
//! patches).
//! Must not: clone reference-counted shared state per request on the common path (the node is
//! borrowed from the snapshot, the link is a worker-local `Rc`) or read the clock there.

use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

use super::decide::{self, decide, decide_exec, Action, Facts, Last, TxAction, TxFacts};
use super::queue::{part_of, Entry, FlightState, Post, Via};
use super::{pubsub, tracking, Session};
use crate::error::ProxyError;
use crate::merge::{merge, Merge};
use crate::metrics::{Outcome, RefreshReason, RetryReason};
use crate::resp::reply::ReplyScanner;
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write;
use crate::router::{self, Target};
use crate::upstream::{LinkKind, Node, Reply, UpstreamError};

impl Session {
    /// Sends (or resends) the request `tag` to where its target (or a redirect) says.
    pub(super) fn send(&mut self, tag: u64, now: Instant) {
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        match f.via {
            Via::Watch => return self.send_watch(tag, now),
            Via::Dedicated | Via::Fresh => return self.send_dedicated(tag, now),
            Via::Shared => {}
        }
        let redirect = f.redirect.take();
        let topo = self.topo.load();
        let tracked = self.tracking.is_some();
        // A read the client allows on a replica: one that can serve, if any. Not for a
        // tracking client: the masters track what it reads.
        let replica = match (&redirect, f.replica && !tracked, &f.target) {
            (None, true, Target::Slot(s)) => {
                let cfg = &self.shared.config;
                let max_lag = cfg.replica_max_lag.as_secs().min(u64::from(u32::MAX - 2)) as u32;
                let zone = cfg.availability_zone.as_deref();
                match router::replica_for(topo, *s, self.id as usize, max_lag, zone) {
                    Some(n) => Some(n),
                    None if self.read_from == crate::router::ReadFrom::Replica => {
                        let e = ProxyError::NoReplica(*s);
                        return self.retry_later(
                            tag,
                            e.frame(),
                            e.outcome(),
                            RetryReason::Unreachable,
                        );
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let (node, asking): (&Arc<Node>, bool) = match (&redirect, replica) {
            (Some((n, ask)), _) => (n, *ask),
            (None, Some(r)) => (r, false),
            (None, None) => match &f.target {
                Target::Slot(s) => match topo.master_for(*s) {
                    Some(n) => (n, false),
                    None => return self.no_master(tag),
                },
                Target::AnyMaster => match topo.any_master(self.id as usize) {
                    Some(n) => (n, false),
                    None => return self.no_master(tag),
                },
                Target::Node(n) => (n, false),
            },
        };
        // Replica reads use links of their own kind, which sent READONLY first. A tracking
        // client's keyed commands go on its own links, where the node tracks its keys.
        if tracked
            && (matches!(f.target, Target::Slot(_))
                || (matches!(f.target, Target::Node(_))
                    && self.tracking.as_ref().is_some_and(|t| t.has_link(node))))
        {
            let node = node.clone();
            return self.send_tracked(tag, node, asking, now);
        }
        let link = if replica.is_some() {
            self.worker
                .replica_link(node, self.proto, self.id as usize, self.user)
        } else {
            self.worker
                .link(node, self.proto, self.id as usize, self.user)
        };
        let sent = match link {
            Ok(link) => match link.send_batch(&f.frame, asking, tag, &self.inbox, now, f.replies) {
                Ok(()) => {
                    f.state = FlightState::InFlight;
                    f.link = Some(link);
                    true
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if sent {
            // Only when it changes: every session shares the node's reference count.
            if !f.readonly && !matches!(&self.last_write, Some(n) if Arc::ptr_eq(n, node)) {
                self.last_write = Some(node.clone());
            }
            return;
        }
        let addr = node.addr.clone();
        self.retry_unreachable(tag, addr);
    }

    /// A tracking client's keyed request: on its own link to `node`, where the node tracks
    /// the keys it reads.
    fn send_tracked(&mut self, tag: u64, node: Arc<Node>, asking: bool, now: Instant) {
        let caching = self.tracking_caching(tag);
        let link = self.tracking_link(&node);
        if let (Some(l), Some(yes)) = (&link, caching) {
            self.send_caching(l, yes, asking);
        }
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        if let Some(link) = link {
            if link
                .send_batch(&f.frame, asking, tag, &self.inbox, now, f.replies)
                .is_ok()
            {
                f.state = FlightState::InFlight;
                f.link = Some(link);
                if !f.readonly {
                    self.last_write = Some(node);
                }
                return;
            }
        }
        self.retry_unreachable(tag, node.addr.clone());
    }

    /// The node could not take the request: refresh the map, retry within the budget.
    fn retry_unreachable(&mut self, tag: u64, addr: Arc<str>) {
        let e = ProxyError::Unreachable(addr);
        self.shared
            .cluster
            .request_refresh(RefreshReason::NodeFailure);
        self.retry_later(tag, e.frame(), e.outcome(), RetryReason::Unreachable);
    }

    /// No master for the request's slot: wait for the topology, unless there never was one.
    fn no_master(&mut self, tag: u64) {
        let topo = self.topo.load();
        let stats = &self.shared.cluster.stats;
        if topo.is_empty()
            && stats.failed.load(Ordering::Relaxed) > 0
            && stats.ok.load(Ordering::Relaxed) == 0
        {
            let why = self.shared.cluster.last_error().unwrap_or_default();
            let e = ProxyError::NoTopology(why);
            return self.finish(tag, e.frame(), e.outcome());
        }
        let e = ProxyError::SlotNotServed;
        self.retry_later(tag, e.frame(), e.outcome(), RetryReason::ClusterDown);
    }

    /// A blocking command: a fresh link of its own per (re)send, under the blocked-clients
    /// limit.
    fn send_dedicated(&mut self, tag: u64, now: Instant) {
        let limit = self.shared.config.max_blocking_clients;
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        f.own = None;
        // Only a blocking command holds a place among the blocked clients.
        let permit = match (f.via, f.permit.take()) {
            (Via::Fresh, _) => None,
            (_, Some(permit)) => Some(permit),
            (_, None) => match self.shared.blocking_permit() {
                Some(p) => Some(p),
                None => {
                    let e = ProxyError::TooManyBlocked(limit);
                    return self.finish(tag, e.frame(), e.outcome());
                }
            },
        };
        let topo = self.topo.load();
        let node = match (&f.redirect, &f.target) {
            (Some((n, _)), _) => Some(n.clone()),
            (None, Target::Slot(s)) => topo.master_for(*s).cloned(),
            (None, Target::Node(n)) => Some(n.clone()),
            (None, Target::AnyMaster) => topo.any_master(self.id as usize).cloned(),
        };
        let asking = f.redirect.take().is_some_and(|r| r.1);
        let Some(node) = node else {
            return self.no_master(tag);
        };
        // A resend (the slot moved while it waited, its node failed over) waits only for what
        // is left of the client's timeout.
        if let Some(prev) = f.sent_at {
            if let Some(frame) =
                with_remaining_timeout(&f.frame, now.saturating_duration_since(prev))
            {
                f.frame = frame;
            }
        }
        f.sent_at = Some(now);
        // A blocking command's link first learns its id on the node, so CLIENT UNBLOCK from
        // another client can reach it there.
        let blocking = f.via == Via::Dedicated;
        let link = self
            .worker
            .owned(&node, self.proto, LinkKind::Dedicated, self.user)
            .filter(|l| {
                !blocking
                    || l.send(CLIENT_ID, false, tag | CLIENT_ID_TAG, &self.inbox, now)
                        .is_ok()
            })
            .filter(|l| l.send(&f.frame, asking, tag, &self.inbox, now).is_ok());
        match link {
            Some(link) => {
                f.state = FlightState::InFlight;
                f.link = Some(link.link().clone());
                f.own = Some(link);
                f.permit = permit;
            }
            None => {
                drop(permit);
                self.retry_unreachable(tag, node.addr.clone());
            }
        }
    }

    /// A WATCH, on the link that holds the client's WATCHes (opened, or moved when the
    /// WATCH was redirected before any key was held), or a watched transaction's batch on the
    /// link its flight holds.
    fn send_watch(&mut self, tag: u64, now: Instant) {
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        if f.replies > 1 {
            // A tracking client's CLIENT CACHING before MULTI lasts through the transaction.
            if let Some(yes) = self.tracking_caching(tag) {
                let own = self
                    .queue
                    .flight_mut(tag)
                    .and_then(|f| f.own.as_ref().map(|l| l.link().clone()));
                if let Some(l) = own {
                    self.send_caching(&l, yes, false);
                }
            }
            let Some(f) = self.queue.flight_mut(tag) else {
                return;
            };
            f.state = FlightState::InFlight;
            let sent = match &f.own {
                Some(l) => {
                    f.link = Some(l.link().clone());
                    let (frame, asking, replies) = (&f.frame, f.asking, f.replies);
                    l.send_batch(frame, asking, tag, &self.inbox, now, replies)
                        .is_ok()
                }
                None => false,
            };
            if !sent {
                // The connection holding the WATCHes is gone: they cannot be proved.
                return self.finish_aborted_exec(tag);
            }
            return;
        }
        let redirect = f.redirect.take();
        let slot = match f.target {
            Target::Slot(s) => s,
            _ => 0,
        };
        let held = self.watch.as_ref().is_some_and(|w| w.watching);
        let usable = self.watch.as_ref().is_some_and(|w| w.link.is_usable());
        if held && (redirect.is_some() || !usable) {
            // Keys already watched on this connection cannot follow the slot: the transaction
            // will answer null, as after a change to a watched key.
            if let Some(w) = &mut self.watch {
                w.broken = true;
            }
            return self.finish(tag, Bytes::from_static(b"+OK\r\n"), Outcome::Ok);
        }
        if redirect.is_some() || !usable {
            let (node, ask) = match redirect {
                Some(r) => r,
                None => match self.topo.load().master_for(slot) {
                    Some(n) => (n.clone(), false),
                    None => return self.no_master(tag),
                },
            };
            if !self.open_watch(node.clone(), ask) {
                return self.retry_unreachable(tag, node.addr.clone());
            }
        }
        let (Some(f), Some(w)) = (self.queue.flight_mut(tag), &mut self.watch) else {
            return;
        };
        if !w.slots.contains(&slot) {
            w.slots.push(slot);
        }
        f.link = Some(w.link.link().clone());
        f.state = FlightState::InFlight;
        if w.link
            .send(&f.frame, w.asking, tag, &self.inbox, now)
            .is_err()
        {
            let e = ProxyError::Unreachable(w.node.addr.clone());
            self.retry_later(tag, e.frame(), e.outcome(), RetryReason::Unreachable);
        }
    }

    fn finish_aborted_exec(&mut self, tag: u64) {
        let mut b = BytesMut::new();
        write::null_array(&mut b, self.proto);
        self.finish(tag, b.freeze(), Outcome::Ok);
    }

    /// A reply (or a link's failure) for one of this session's requests.
    pub(super) fn on_reply(&mut self, reply: Reply) {
        if pubsub::is_stream_tag(reply.tag) {
            return self.on_stream(reply);
        }
        if tracking::is_tracking_tag(reply.tag) {
            return self.on_tracking(reply);
        }
        if reply.tag & CLIENT_ID_TAG != 0 {
            return self.on_client_id(reply);
        }
        if super::monitor::is_monitor_tag(reply.tag) {
            return self.on_monitor(reply);
        }
        let tag = reply.tag;
        let max_redirects = self.shared.config.max_redirects;
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        if f.state != FlightState::InFlight {
            return;
        }
        if f.keyed.is_some() {
            return self.on_exec_reply(tag, reply.result);
        }
        let result = match reply.result {
            // The common case: a reply that is the client's as it is.
            Ok(frame) if frame.first() != Some(&b'-') => {
                return self.finish(tag, frame, Outcome::Ok)
            }
            other => other,
        };
        let facts = Facts {
            readonly: f.readonly,
            redirects: f.redirects,
            max_redirects,
            script_loaded: f.script_loaded,
        };
        let node = f.node_addr();
        match decide(&facts, &result, &node) {
            Action::Finish => {
                if let Ok(frame) = result {
                    let outcome = Outcome::of_reply(&frame);
                    self.finish(tag, frame, outcome);
                }
            }
            Action::Follow { slot, addr, ask } => self.follow(tag, slot, addr, ask, &node),
            Action::Retry { why, refresh, last } => {
                if let Some(r) = refresh {
                    self.shared.cluster.request_refresh(r);
                }
                let (frame, outcome) = match (last, result) {
                    (Last::Proxy(e), _) => (e.frame(), e.outcome()),
                    (Last::Reply, Ok(frame)) => (frame, Outcome::Error),
                    (Last::Reply, Err(_)) => (Bytes::new(), Outcome::Error),
                };
                self.retry_later(tag, frame, outcome, why);
            }
            Action::ReloadScript => {
                if !self.reload_script(tag) {
                    if let Ok(frame) = result {
                        self.finish(tag, frame, Outcome::Error);
                    }
                }
            }
            Action::Fail(e) => {
                if matches!(e, ProxyError::UnknownOutcome { .. }) {
                    self.shared
                        .stats
                        .unknown_outcome
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.shared
                    .cluster
                    .request_refresh(RefreshReason::NodeFailure);
                self.finish(tag, e.frame(), e.outcome());
            }
        }
    }

    /// The node's id for a blocking command's link: where CLIENT UNBLOCK must go.
    fn on_client_id(&mut self, reply: Reply) {
        let tag = reply.tag & !CLIENT_ID_TAG;
        let id = match &reply.result {
            Ok(frame) => frame
                .strip_prefix(b":")
                .and_then(|b| b.strip_suffix(b"\r\n"))
                .and_then(crate::resp::parse_i64),
            Err(_) => None,
        };
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        if let (Some(id), Some(link), FlightState::InFlight) = (id, &f.link, f.state) {
            self.me.set_blocked(Some((link.node.clone(), id)));
        }
    }

    /// Resends `tag` to where MOVED or ASK said; a MOVED also teaches the slot table, whichever
    /// connection it came on.
    fn follow(&mut self, tag: u64, slot: u16, addr: &str, ask: bool, asked: &str) {
        let stats = &self.shared.stats;
        (if ask { &stats.ask } else { &stats.moved }).fetch_add(1, Ordering::Relaxed);
        let addr = full_addr(addr, asked);
        let to = if ask {
            self.shared.cluster.registry.get_or_create(&addr)
        } else {
            self.shared.cluster.note_moved(slot, &addr)
        };
        if let Some(f) = self.queue.flight_mut(tag) {
            f.redirects = f.redirects.saturating_add(1);
            f.redirect = Some((to, ask));
        }
        self.send(tag, Instant::now());
    }

    /// The replies of a transaction's batch (or its connection's failure).
    fn on_exec_reply(&mut self, tag: u64, result: Result<Bytes, UpstreamError>) {
        let max_redirects = self.shared.config.max_redirects;
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        let facts = TxFacts {
            watched: f.via == Via::Watch,
            readonly: f.readonly,
            redirects: f.redirects,
            max_redirects,
        };
        let node = f.node_addr();
        let keyed = f.keyed.clone().unwrap_or_default();
        let whole = result.as_ref().ok().cloned().unwrap_or_default();
        let frames = result.map(|b| {
            split_replies(&b)
                .into_iter()
                .map(|(a, z)| &whole[a..z])
                .collect()
        });
        match decide_exec(&facts, &keyed, &frames, &node) {
            TxAction::Reply(frame) => {
                let outcome = Outcome::of_reply(frame);
                if let Some(frame) = self.after_exec(tag, whole.slice_ref(frame)) {
                    self.finish(tag, frame, outcome)
                }
            }
            TxAction::Aborted => {
                self.forget_after_exec(tag);
                self.finish_aborted_exec(tag)
            }
            TxAction::Follow { slot, addr, ask } => self.follow(tag, slot, addr, ask, &node),
            TxAction::Retry { why, refresh } => {
                if let Some(r) = refresh {
                    self.shared.cluster.request_refresh(r);
                }
                let (last, outcome) = match frames.as_ref().ok().and_then(|f| f.last()) {
                    Some(exec) => (whole.slice_ref(exec), Outcome::Error),
                    None => {
                        let e = ProxyError::NodeUnavailable {
                            node: node.clone(),
                            cause: UpstreamError::NotSent,
                        };
                        (e.frame(), e.outcome())
                    }
                };
                self.retry_later(tag, last, outcome, why);
            }
            TxAction::Fail(e) => {
                if matches!(e, ProxyError::UnknownOutcome { .. }) {
                    self.shared
                        .stats
                        .unknown_outcome
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .cluster
                        .request_refresh(RefreshReason::NodeFailure);
                }
                self.forget_after_exec(tag);
                self.finish(tag, e.frame(), e.outcome());
            }
        }
    }

    /// EVALSHA met `-NOSCRIPT`: if slotmux has seen the script, load it on that node (same
    /// link, so it runs first) and resend, once.
    fn reload_script(&mut self, tag: u64) -> bool {
        let Some(f) = self.queue.flight_mut(tag) else {
            return false;
        };
        f.script_loaded = true;
        if !(f.frame.starts_with(b"*") && contains_ci(&f.frame, b"evalsha")) {
            return false;
        }
        let mut buf = BytesMut::from(&f.frame[..]);
        let mut sc = RequestScanner::new(Limits::default());
        let Ok(Some(frame)) = sc.next(&mut buf) else {
            return false;
        };
        let Some(&(a, b)) = sc.args().get(1) else {
            return false;
        };
        let Some(link) = f.link.clone() else {
            return false;
        };
        let Some(body) = self.shared.scripts.get(&frame[a..b]) else {
            return false;
        };
        let load = write::encode_command([&b"SCRIPT"[..], b"LOAD", &body]);
        if link.send_silent(&load).is_err() {
            return false;
        }
        f.redirect = Some((link.node.clone(), false));
        self.send(tag, Instant::now());
        true
    }

    /// Schedules a resend with backoff, or gives the client `last` once the retry budget is
    /// spent.
    pub(super) fn retry_later(
        &mut self,
        tag: u64,
        last: Bytes,
        outcome: Outcome,
        why: RetryReason,
    ) {
        let budget = self.shared.config.retry_budget;
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        let now = Instant::now();
        let first = *f.first_failure.get_or_insert(now);
        if now.duration_since(first) >= budget {
            return self.finish(tag, last, outcome);
        }
        f.attempts = f.attempts.saturating_add(1);
        f.state = FlightState::WaitRetry;
        self.retries.push((now + decide::backoff(f.attempts), tag));
        self.shared.stats.retry(why);
    }

    pub(super) fn run_due_retries(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        self.retries.retain(|&(at, tag)| {
            if at <= now {
                due.push(tag);
                false
            } else {
                true
            }
        });
        due.sort_unstable();
        for tag in due {
            if pubsub::is_stream_tag(tag) {
                self.resubscribe(tag);
                continue;
            }
            if tag == super::dispatch::PAUSE_TAG {
                self.release_held();
                continue;
            }
            if self
                .queue
                .flight_mut(tag)
                .is_some_and(|f| f.state == FlightState::WaitRetry)
            {
                self.send(tag, now);
            }
        }
    }

    /// Records a finished request; when its whole entry is done the entry becomes `Ready`.
    pub(super) fn finish(&mut self, tag: u64, frame: Bytes, outcome: Outcome) {
        let (frame, outcome) = if self.auth_wait.as_ref().is_some_and(|w| w.tag == tag) {
            let frame = self.auth_answered(tag, frame);
            let outcome = outcome.max(Outcome::of_reply(&frame));
            (frame, outcome)
        } else {
            (frame, outcome)
        };
        let Some(entry) = self.queue.entry_mut(tag) else {
            return;
        };
        match entry {
            Entry::One(f) => {
                if f.via == Via::Dedicated {
                    self.me.set_blocked(None);
                }
                let watched = f.via == Via::Watch && f.replies == 1 && outcome == Outcome::Ok;
                let reply = match f.post {
                    Post::Scan { slot, count } => {
                        match router::scan_page(&frame, slot, self.topo.load()) {
                            None => frame,
                            Some(page) => {
                                f.scanned.extend(page.items);
                                // A short page from a finished master: the next master's keys
                                // join it in this same call (an empty cluster answers 0 at
                                // once, as one Redis does).
                                let more = page.next.filter(|_| f.scanned.len() < count);
                                match (more, router::scan_restart(&f.frame)) {
                                    (Some(next), Some(restart)) => {
                                        f.frame = restart;
                                        f.target = Target::Slot(next);
                                        f.post = Post::Scan { slot: next, count };
                                        f.redirect = None;
                                        return self.send(tag, Instant::now());
                                    }
                                    _ => router::scan_reply(page.cursor, &f.scanned),
                                }
                            }
                        }
                    }
                    _ => frame,
                };
                let request = std::mem::take(&mut f.frame);
                *entry = Entry::Ready {
                    reply,
                    outcome,
                    request: Some(request),
                };
                if watched {
                    if let Some(w) = &mut self.watch {
                        w.watching = true;
                    }
                }
            }
            Entry::Many(m) => {
                if let Some(f) = m.parts.get_mut(part_of(tag).wrapping_sub(1)) {
                    if f.state != FlightState::Done {
                        f.state = FlightState::Done;
                        f.reply = Some((frame, outcome));
                        f.own = None;
                        f.permit = None;
                        m.left -= 1;
                    }
                }
                if m.left > 0 {
                    return;
                }
                let mut worst = Outcome::Ok;
                let parts: Vec<Bytes> = m
                    .parts
                    .iter_mut()
                    .map(|f| match f.reply.take() {
                        Some((b, o)) => {
                            worst = worst.max(o);
                            b
                        }
                        None => Bytes::new(),
                    })
                    .collect();
                let merged = match (&m.merge, &m.info) {
                    (Merge::Info, Some(sections)) => {
                        let topo = self.topo.load();
                        match crate::info::render(&self.shared, topo, sections, &parts) {
                            Ok(text) => {
                                let mut b = BytesMut::new();
                                write::verbatim(&mut b, self.proto, text.as_bytes());
                                b.freeze()
                            }
                            Err(e) => e,
                        }
                    }
                    _ => merge(m.merge, &parts, &m.order),
                };
                let outcome = if merged.first() == Some(&b'-') {
                    worst.max(Outcome::Error)
                } else {
                    Outcome::Ok
                };
                let request = std::mem::take(&mut m.request);
                *entry = Entry::Ready {
                    reply: merged,
                    outcome,
                    request: Some(request),
                };
            }
            Entry::Ready { .. } | Entry::Waiting => {}
        }
    }
}

/// Asks a blocking command's link for its id on the node.
const CLIENT_ID: &[u8] = b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n";
/// Marks the tag of a `CLIENT ID` reply (the flight's tag otherwise): below the pub/sub stream
/// tags, above any entry number a session reaches.
const CLIENT_ID_TAG: u64 = 1 << 62;

/// `frame` with its blocking timeout lowered by `spent` (never to 0, which means forever:
/// at least 1 ms, so the node answers its own timeout reply). `None` when it has no timeout
/// or waits forever.
fn with_remaining_timeout(frame: &Bytes, spent: std::time::Duration) -> Option<Bytes> {
    let mut buf = BytesMut::from(&frame[..]);
    let mut sc = RequestScanner::new(Limits::default());
    let frame = sc.next(&mut buf).ok()??;
    let args = crate::command::Args {
        frame: &frame,
        ranges: sc.args(),
    };
    let spec = crate::command::lookup(args.get(0)?)?;
    let (at, unit) = crate::command::block_timeout(spec.name, args)?;
    let old = std::str::from_utf8(args.get(at)?).ok()?;
    let new = match unit {
        crate::command::TimeoutUnit::Seconds => {
            let t: f64 = old.parse().ok()?;
            if t <= 0.0 {
                return None;
            }
            format!("{:.3}", (t - spent.as_secs_f64()).max(0.001))
        }
        crate::command::TimeoutUnit::Millis => {
            let t: i64 = old.parse().ok()?;
            if t <= 0 {
                return None;
            }
            (t - spent.as_millis() as i64).max(1).to_string()
        }
    };
    let parts: Vec<&[u8]> = (0..args.len())
        .map(|i| {
            if i == at {
                new.as_bytes()
            } else {
                args.get(i).unwrap_or_default()
            }
        })
        .collect();
    Some(write::encode_command(parts))
}

/// The boundaries of the replies in a batch's reply buffer, pushes left out.
fn split_replies(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let mut sc = ReplyScanner::new();
        match sc.scan(&b[at..]) {
            Ok(Some(len)) => {
                if b[at] != b'>' {
                    out.push((at, at + len));
                }
                at += len;
            }
            _ => break,
        }
    }
    out
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .take(64)
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A redirect address with an empty host (`:7001`) means "the host you asked".
fn full_addr(addr: &str, asked: &str) -> String {
    if let Some(port) = addr.strip_prefix(':') {
        if let Some((host, _)) = asked.rsplit_once(':') {
            return format!("{host}:{port}");
        }
    }
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_blocking_command_waits_only_what_is_left() {
        let f = |parts: &[&str]| {
            write::encode_command(parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>())
        };
        let spent = std::time::Duration::from_millis(1500);
        assert_eq!(
            with_remaining_timeout(&f(&["BLPOP", "a", "b", "5"]), spent),
            Some(f(&["BLPOP", "a", "b", "3.500"]))
        );
        assert_eq!(
            with_remaining_timeout(&f(&["blmpop", "2", "1", "k", "LEFT"]), spent),
            Some(f(&["blmpop", "0.500", "1", "k", "LEFT"]))
        );
        assert_eq!(
            with_remaining_timeout(
                &f(&["XREAD", "COUNT", "1", "BLOCK", "1000", "STREAMS", "s", "$"]),
                spent
            ),
            Some(f(&[
                "XREAD", "COUNT", "1", "BLOCK", "1", "STREAMS", "s", "$"
            ]))
        );
        // 0 waits forever, and stays 0; the time already over still leaves the node 1 ms.
        assert_eq!(
            with_remaining_timeout(&f(&["BLPOP", "a", "0"]), spent),
            None
        );
        assert_eq!(
            with_remaining_timeout(&f(&["BRPOP", "a", "1"]), spent),
            Some(f(&["BRPOP", "a", "0.001"]))
        );
        assert_eq!(with_remaining_timeout(&f(&["GET", "a"]), spent), None);
    }

    #[test]
    fn empty_redirect_host_means_the_node_asked() {
        assert_eq!(full_addr(":7001", "10.0.0.5:7000"), "10.0.0.5:7001");
        assert_eq!(full_addr("10.0.0.6:7001", "10.0.0.5:7000"), "10.0.0.6:7001");
        assert_eq!(full_addr(":7001", "[::1]:7000"), "[::1]:7001");
    }
}
