//! Transactions: WATCH, MULTI, EXEC, DISCARD, UNWATCH.
//!
//! Owns: pinning a transaction to the master of its first key on a link of the session's own,
//! the keyless commands queued before that master is known, and Redis's own errors for misuse
//! (nested MULTI, EXEC without MULTI, keys in two slots).
//! Must not: send transaction commands on the shared links.

use bytes::Bytes;
use std::sync::Arc;

use super::queue::{tag, Entry, Flight, Post, Via};
use super::Session;
use crate::cluster::Topology;
use crate::command::{self, Args, Tx};
use crate::error::ProxyError;
use crate::resp::write;
use crate::router::{Route, Target};
use crate::upstream::{LinkKind, Node, OwnedLink};

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";

/// The link a transaction (WATCH ... MULTI ... EXEC) is pinned to.
pub(super) struct Pinned {
    pub link: OwnedLink,
    pub node: Arc<Node>,
}

/// State between MULTI and EXEC/DISCARD.
#[derive(Default)]
pub(super) struct Multi {
    slot: Option<u16>,
    aborted: bool,
    /// Keyless commands answered QUEUED before the transaction had a node.
    buffered: Vec<Bytes>,
}

impl Session {
    /// Opens the transaction's own link to `node`.
    fn pin(&mut self, node: Arc<Node>) -> bool {
        match self.worker.owned(&node, self.proto, LinkKind::Dedicated) {
            Some(link) => {
                self.pinned = Some(Pinned { link, node });
                true
            }
            None => false,
        }
    }

    /// Sends on the pinned link a request whose reply slotmux already gave.
    fn send_pinned_silently(&self, frame: &[u8]) {
        if let Some(p) = &self.pinned {
            let _ = p.link.send_silent(frame);
        }
    }

    fn push_pinned(&mut self, frame: Bytes, post: Post) {
        let mut f = Flight::new(frame, Target::AnyMaster, false).via(Via::Pinned);
        f.post = post;
        let n = self.push(Entry::One(f));
        let now = self.now;
        self.send(tag(n, 0), now);
    }

    fn abort_multi(&mut self, e: ProxyError) {
        if let Some(m) = &mut self.multi {
            m.aborted = true;
        }
        self.reply_error(e);
    }

    pub(super) fn transaction(
        &mut self,
        t: Tx,
        frame: Bytes,
        args: Args<'_>,
        spec: &'static command::CommandSpec,
        topo: &Topology,
    ) {
        match t {
            Tx::Multi => {
                if self.multi.is_some() {
                    return self
                        .reply_error(ProxyError::redis("ERR MULTI calls can not be nested"));
                }
                self.multi = Some(Multi::default());
                if self.pinned.is_some() {
                    self.push_pinned(frame, Post::None);
                } else {
                    self.reply_local(|o, _| write::ok(o));
                }
            }
            Tx::Watch => {
                if self.multi.is_some() {
                    return self
                        .reply_error(ProxyError::redis("ERR WATCH inside MULTI is not allowed"));
                }
                let slot = match command::slot_of(spec, args) {
                    command::SlotOf::One(s) => s,
                    command::SlotOf::CrossSlot => return self.reply_error(ProxyError::CrossSlot),
                    _ => {
                        return self.reply_error(ProxyError::redis(
                            "ERR wrong number of arguments for 'watch' command",
                        ))
                    }
                };
                let Some(node) = topo.master_for(slot).cloned() else {
                    return self.reply_error(ProxyError::SlotNotServed);
                };
                match &self.pinned {
                    Some(p) if !Arc::ptr_eq(&p.node, &node) => {
                        return self.reply_error(ProxyError::CrossSlot)
                    }
                    Some(_) => {}
                    None => {
                        if !self.pin(node.clone()) {
                            return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                        }
                    }
                }
                self.push_pinned(frame, Post::None);
            }
            Tx::Unwatch => match (&self.pinned, &self.multi) {
                (Some(_), None) => self.push_pinned(frame, Post::Unpin),
                (Some(_), Some(_)) => self.push_pinned(frame, Post::None),
                (None, _) => self.reply_local(|o, _| write::ok(o)),
            },
            Tx::Discard => {
                if self.multi.take().is_none() {
                    return self.reply_error(ProxyError::redis("ERR DISCARD without MULTI"));
                }
                if self.pinned.is_some() {
                    self.push_pinned(frame, Post::Unpin);
                } else {
                    self.reply_local(|o, _| write::ok(o));
                }
            }
            Tx::Exec => {
                let Some(m) = self.multi.take() else {
                    return self.reply_error(ProxyError::redis("ERR EXEC without MULTI"));
                };
                if m.aborted {
                    // Closing the link discards the transaction and the WATCHes.
                    self.pinned = None;
                    return self.reply_error(ProxyError::redis(
                        "EXECABORT Transaction discarded because of previous errors.",
                    ));
                }
                if self.pinned.is_none() {
                    // Only keyless commands were queued: any master runs them.
                    let Some(node) = topo.any_master(self.id as usize).cloned() else {
                        return self.reply_error(ProxyError::SlotNotServed);
                    };
                    if !self.pin(node.clone()) {
                        return self.reply_error(ProxyError::Unreachable(node.addr.clone()));
                    }
                    self.send_pinned_silently(MULTI);
                    for b in &m.buffered {
                        self.send_pinned_silently(b);
                    }
                }
                self.push_pinned(frame, Post::Unpin);
            }
        }
    }

    /// A command between MULTI and EXEC: all keys of a transaction must share one slot, the
    /// first key pins the transaction to that slot's master.
    pub(super) fn queue_in_multi(&mut self, route: Route, frame: Bytes, args: Args<'_>) {
        let slot = match &route {
            Route::Forward(Target::Slot(s)) | Route::Blocking(s) => Some(*s),
            Route::Scan { slot, .. } => Some(*slot),
            Route::Split(_) => return self.abort_multi(ProxyError::CrossSlot),
            Route::Error(e) => return self.abort_multi(e.clone()),
            Route::Local(command::Local::Quit) => return self.local(command::Local::Quit, args),
            _ => None,
        };
        let Some(m) = self.multi.as_mut() else { return };
        if m.aborted {
            return self.reply_local(|o, _| write::simple(o, "QUEUED"));
        }
        if let Some(s) = slot {
            match m.slot {
                Some(prev) if prev != s => return self.abort_multi(ProxyError::CrossSlot),
                Some(_) => {}
                None => {
                    m.slot = Some(s);
                    if self.pinned.is_none() {
                        let topo = self.topo.load().clone();
                        let Some(node) = topo.master_for(s).cloned() else {
                            return self.abort_multi(ProxyError::SlotNotServed);
                        };
                        if !self.pin(node.clone()) {
                            return self.abort_multi(ProxyError::Unreachable(node.addr.clone()));
                        }
                        let buffered = self
                            .multi
                            .as_mut()
                            .map(|m| std::mem::take(&mut m.buffered))
                            .unwrap_or_default();
                        self.send_pinned_silently(MULTI);
                        for b in &buffered {
                            self.send_pinned_silently(b);
                        }
                    }
                }
            }
        }
        if self.pinned.is_some() {
            self.push_pinned(frame, Post::None);
        } else if let Some(m) = self.multi.as_mut() {
            m.buffered.push(frame);
            self.reply_local(|o, _| write::simple(o, "QUEUED"));
        }
    }
}
