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

use super::decide::{self, decide, Action, Facts, Last};
use super::queue::{part_of, Entry, FlightState, Post, Via};
use super::{pubsub, Session};
use crate::error::ProxyError;
use crate::merge::{merge, Merge};
use crate::metrics::{Outcome, RefreshReason, RetryReason};
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write;
use crate::router::{self, Target};
use crate::upstream::{LinkKind, Node, Reply};

impl Session {
    /// Sends (or resends) the request `tag` to where its target (or a redirect) says.
    pub(super) fn send(&mut self, tag: u64, now: Instant) {
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        match f.via {
            Via::Pinned => return self.send_pinned(tag, now),
            Via::Dedicated => return self.send_dedicated(tag, now),
            Via::Shared => {}
        }
        let redirect = f.redirect.take();
        let topo = self.topo.load();
        let (node, asking): (&Arc<Node>, bool) = match &redirect {
            Some((n, ask)) => (n, *ask),
            None => match &f.target {
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
        let sent = match self.worker.link(node, self.proto, self.id as usize) {
            Ok(link) => match link.send(&f.frame, asking, tag, &self.inbox, now) {
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
        let e = ProxyError::Unreachable(node.addr.clone());
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
        let permit = match f.own.take() {
            Some((_, permit)) => Some(permit),
            None => self.shared.blocking_permit(),
        };
        let Some(permit) = permit else {
            let e = ProxyError::TooManyBlocked(limit);
            return self.finish(tag, e.frame(), e.outcome());
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
        let link = self
            .worker
            .owned(&node, self.proto, LinkKind::Dedicated)
            .filter(|l| l.send(&f.frame, asking, tag, &self.inbox, now).is_ok());
        match link {
            Some(link) => {
                f.state = FlightState::InFlight;
                f.link = Some(link.link().clone());
                f.own = Some((link, permit));
            }
            None => {
                drop(permit);
                let e = ProxyError::Unreachable(node.addr.clone());
                self.shared
                    .cluster
                    .request_refresh(RefreshReason::NodeFailure);
                self.retry_later(tag, e.frame(), e.outcome(), RetryReason::Unreachable);
            }
        }
    }

    /// A request of a transaction, on its pinned link.
    fn send_pinned(&mut self, tag: u64, now: Instant) {
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        let sent = match &self.pinned {
            Some(p) => {
                f.link = Some(p.link.link().clone());
                p.link.send(&f.frame, false, tag, &self.inbox, now).is_ok()
            }
            None => false,
        };
        f.state = FlightState::InFlight;
        if !sent {
            let e = ProxyError::TransactionLost;
            self.finish(tag, e.frame(), e.outcome());
        }
    }

    /// A reply (or a link's failure) for one of this session's requests.
    pub(super) fn on_reply(&mut self, reply: Reply) {
        if pubsub::is_stream_tag(reply.tag) {
            return self.on_stream(reply);
        }
        let tag = reply.tag;
        let max_redirects = self.shared.config.max_redirects;
        let Some(f) = self.queue.flight_mut(tag) else {
            return;
        };
        if f.state != FlightState::InFlight {
            return;
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
            pinned: f.via == Via::Pinned,
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
            Action::Follow { slot, addr, ask } => {
                let stats = &self.shared.stats;
                (if ask { &stats.ask } else { &stats.moved }).fetch_add(1, Ordering::Relaxed);
                let addr = full_addr(addr, &node);
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
        let Some(entry) = self.queue.entry_mut(tag) else {
            return;
        };
        match entry {
            Entry::One(f) => {
                let unpin = matches!(f.post, Post::Unpin);
                let reply = match f.post {
                    Post::Scan { slot } if frame.first() == Some(&b'*') => {
                        router::scan_reply(&frame, slot, self.topo.load())
                    }
                    _ => frame,
                };
                let request = std::mem::take(&mut f.frame);
                *entry = Entry::Ready {
                    reply,
                    outcome,
                    request: Some(request),
                };
                if unpin && self.multi.is_none() {
                    self.pinned = None;
                }
            }
            Entry::Many(m) => {
                if let Some(f) = m.parts.get_mut(part_of(tag).wrapping_sub(1)) {
                    if f.state != FlightState::Done {
                        f.state = FlightState::Done;
                        f.reply = Some((frame, outcome));
                        f.own = None;
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
                let merged = match (&m.merge, &m.prefix) {
                    (Merge::Keyspace, Some(prefix)) => match crate::merge::keyspace_text(&parts) {
                        Ok(ks) => {
                            let text = if prefix.is_empty() {
                                ks
                            } else {
                                format!("{prefix}\r\n{ks}")
                            };
                            let mut b = BytesMut::new();
                            write::verbatim(&mut b, self.proto, text.as_bytes());
                            b.freeze()
                        }
                        Err(e) => e,
                    },
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
            Entry::Ready { .. } => {}
        }
    }
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
    fn empty_redirect_host_means_the_node_asked() {
        assert_eq!(full_addr(":7001", "10.0.0.5:7000"), "10.0.0.5:7001");
        assert_eq!(full_addr("10.0.0.6:7001", "10.0.0.5:7000"), "10.0.0.6:7001");
        assert_eq!(full_addr(":7001", "[::1]:7000"), "[::1]:7001");
    }
}
