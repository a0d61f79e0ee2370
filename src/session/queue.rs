//! The reply queue of one session: one entry per command, in the client's order.
//!
//! Owns: [`Entry`] (a finished reply, one request in flight, or a split command's parts),
//! [`Flight`] (one request to one node with its redirect and retry state), the tags that name
//! a request (`entry number << SUB_BITS | part`), and finding a flight by its tag.
//! Must not: send anything or decide what a reply means (`flight` and `decide` do).

use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use tokio::time::Instant;

use crate::merge::Merge;
use crate::metrics::Outcome;
use crate::router::Target;
use crate::shared::Permit;
use crate::upstream::{Link, Node, OwnedLink};

/// Tags are `entry << SUB_BITS | part`, part 0 being the entry's own request.
pub(super) const SUB_BITS: u32 = 24;
const SUB_MASK: u64 = (1 << SUB_BITS) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlightState {
    InFlight,
    WaitRetry,
    Done,
}

/// What to do with a finished reply before the client sees it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Post {
    None,
    /// Rewrite a node's SCAN cursor into slotmux's; while the page is short of `count` and
    /// the master is done, go on with the next one in the same call.
    Scan {
        slot: u16,
        count: usize,
    },
}

/// Which connection a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// The worker's shared, multiplexed link to the node.
    Shared,
    /// A link of its own, opened per send (blocking commands), under the blocked-clients
    /// limit.
    Dedicated,
    /// A link of its own for one request (SCRIPT KILL: the shared one may wait behind the
    /// script it kills).
    Fresh,
    /// The link that holds the client's WATCHes: WATCH itself, and a watched transaction's
    /// batch (the flight then holds that link in `own`).
    Watch,
}

/// One request to one node, with its redirect and retry state.
pub(super) struct Flight {
    pub frame: Bytes,
    pub target: Target,
    /// The link it was last sent on (for errors, and MOVED with an empty host).
    pub link: Option<Rc<Link>>,
    /// One-shot destination from MOVED or ASK (`true` for ASK: send ASKING first).
    pub redirect: Option<(Arc<Node>, bool)>,
    pub readonly: bool,
    pub redirects: u8,
    pub attempts: u8,
    /// An EVALSHA that met NOSCRIPT already had its script loaded once.
    pub script_loaded: bool,
    pub first_failure: Option<Instant>,
    pub state: FlightState,
    /// The reply of a finished part of a split command.
    pub reply: Option<(Bytes, Outcome)>,
    pub post: Post,
    pub via: Via,
    /// Replies the request gets: 1, or a transaction batch's MULTI + commands + EXEC.
    pub replies: u32,
    /// Send `ASKING` first even without a redirect (a batch for WATCHes held on a node that
    /// imports the slot).
    pub asking: bool,
    /// A link of the flight's own, closed when the flight is dropped: a blocking command's
    /// (with its place in the blocking-clients limit), or a watched transaction's.
    pub own: Option<OwnedLink>,
    pub permit: Option<Permit>,
    /// A transaction batch: which of its queued commands have keys.
    pub keyed: Option<Box<[bool]>>,
    /// A blocking command: when it was last sent (a resend waits only what is left).
    pub sent_at: Option<Instant>,
    /// SCAN: the keys of the masters already scanned in this call.
    pub scanned: Vec<Bytes>,
    /// A read the client allows on a replica (`--read-from`, READONLY).
    pub replica: bool,
    /// A tracking client's CLIENT CACHING applies to this request (yes or no), on every send.
    pub caching: Option<bool>,
}

impl Flight {
    pub fn new(frame: Bytes, target: Target, readonly: bool) -> Self {
        Flight {
            frame,
            target,
            link: None,
            redirect: None,
            readonly,
            redirects: 0,
            attempts: 0,
            script_loaded: false,
            first_failure: None,
            state: FlightState::InFlight,
            reply: None,
            post: Post::None,
            via: Via::Shared,
            replies: 1,
            asking: false,
            own: None,
            permit: None,
            keyed: None,
            sent_at: None,
            scanned: Vec::new(),
            replica: false,
            caching: None,
        }
    }

    pub fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    /// The address of the node it was last sent to.
    pub fn node_addr(&self) -> Arc<str> {
        self.link
            .as_ref()
            .map(|l| l.node.addr.clone())
            .unwrap_or_else(|| Arc::from(""))
    }
}

/// A command split into parts whose replies are merged.
pub(super) struct Fanout {
    pub merge: Merge,
    /// INFO: the sections asked for.
    pub info: Option<Vec<&'static str>>,
    pub order: Vec<(u32, u32)>,
    pub parts: Vec<Flight>,
    pub left: usize,
    /// The client's command, for the slow log.
    pub request: Bytes,
}

pub(super) enum Entry {
    /// The reply is complete; `request` is kept for the slow log.
    Ready {
        reply: Bytes,
        outcome: Outcome,
        request: Option<Bytes>,
    },
    One(Flight),
    Many(Box<Fanout>),
    /// A reply slotmux completes itself once something happened (MONITOR's `+OK` once every
    /// master monitors).
    Waiting,
}

impl Entry {
    pub fn ready(reply: Bytes, outcome: Outcome) -> Entry {
        Entry::Ready {
            reply,
            outcome,
            request: None,
        }
    }
}

/// What a queued entry answers, for metrics and the slow log (`None` for pub/sub pushes).
pub(super) struct Meta {
    pub name: &'static str,
    pub started: Instant,
    /// The client's command (a reference to its bytes), for the slow log.
    pub request: Bytes,
    /// Redis keeps the command out of its slow log (EXEC, AUTH, HELLO...).
    pub skip_slowlog: bool,
}

pub(super) struct Slot {
    pub entry: Entry,
    pub meta: Option<Meta>,
    /// The client asked for no reply (CLIENT REPLY OFF or SKIP): counted, not written.
    pub silent: bool,
}

/// The entries of one session in request order.
#[derive(Default)]
pub(super) struct Queue {
    slots: VecDeque<Slot>,
    /// Entry number of the front slot; numbers are consecutive.
    base: u64,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The number the next pushed entry will have.
    pub fn next_number(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    pub fn push(&mut self, entry: Entry, meta: Option<Meta>, silent: bool) -> u64 {
        let n = self.next_number();
        self.slots.push_back(Slot {
            entry,
            meta,
            silent,
        });
        n
    }

    pub fn front(&self) -> Option<&Slot> {
        self.slots.front()
    }

    pub fn pop_front(&mut self) -> Option<Slot> {
        let s = self.slots.pop_front()?;
        self.base += 1;
        Some(s)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// The entry a tag belongs to.
    pub fn entry_mut(&mut self, tag: u64) -> Option<&mut Entry> {
        let i = (tag >> SUB_BITS).checked_sub(self.base)?;
        self.slots.get_mut(i as usize).map(|s| &mut s.entry)
    }

    /// The request a tag names, while it is not finished.
    pub fn flight_mut(&mut self, tag: u64) -> Option<&mut Flight> {
        match (self.entry_mut(tag)?, tag & SUB_MASK) {
            (Entry::One(f), 0) => Some(f),
            (Entry::Many(m), part) if part > 0 => m.parts.get_mut(part as usize - 1),
            _ => None,
        }
    }
}

/// The tag of part `part` (0: the entry's own request) of entry `n`.
pub(super) fn tag(n: u64, part: usize) -> u64 {
    n << SUB_BITS | part as u64
}

/// Which part of its entry a tag names (0: the entry's own request).
pub(super) fn part_of(tag: u64) -> usize {
    (tag & SUB_MASK) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_find_their_flights_after_the_front_moves() {
        let mut q = Queue::default();
        let f = |s: &'static [u8]| Flight::new(Bytes::from_static(s), Target::AnyMaster, true);
        let a = q.push(Entry::One(f(b"a")), None, false);
        let b = q.push(
            Entry::Many(Box::new(Fanout {
                merge: Merge::Sum,
                info: None,
                order: Vec::new(),
                parts: vec![f(b"b1"), f(b"b2")],
                left: 2,
                request: Bytes::new(),
            })),
            None,
            false,
        );
        assert_eq!((a, b), (0, 1));
        assert_eq!(&q.flight_mut(tag(b, 2)).unwrap().frame[..], b"b2");
        assert!(q.flight_mut(tag(b, 0)).is_none());
        assert!(q.flight_mut(tag(b, 3)).is_none());
        q.pop_front();
        assert!(q.flight_mut(tag(a, 0)).is_none());
        assert_eq!(&q.flight_mut(tag(b, 1)).unwrap().frame[..], b"b1");
        assert_eq!(q.next_number(), 2);
        assert_eq!(part_of(tag(b, 2)), 2);
    }
}
