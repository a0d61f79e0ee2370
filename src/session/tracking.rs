//! Client-side caching: `CLIENT TRACKING`, `CLIENT CACHING`, `CLIENT GETREDIR` and
//! `CLIENT TRACKINGINFO`, and the invalidation messages a tracking client gets.
//!
//! Owns: a tracking client's options (checked as Redis checks them), its links of its own,
//! one per master it sent keyed commands to (every master in BCAST mode), on which the node
//! itself tracks the keys the client reads (so OPTIN, OPTOUT, NOLOOP, BCAST prefixes, the
//! tracking table's limit and flushes behave as on that node), and turning the invalidations
//! those nodes send into what Redis sends: a RESP3 push to the client, or a message to the
//! client it redirects to (a RESP3 push, or a `__redis__:invalidate` message for a RESP2
//! subscriber), `tracking-redir-broken` when that client is gone.
//! A link that ends (its node failed, or was removed) may have missed invalidations: the
//! client then gets an invalidation of everything (the null one a FLUSHALL sends).
//! Must not: put a tracking client's keyed commands on the shared links (the node would
//! track the shared connection, not the client), or touch anything of a client without
//! tracking (its commands never come here).

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use super::queue::{tag, Entry};
use super::Session;
use crate::command::Args;
use crate::metrics::Outcome;
use crate::resp::write::{self, Proto};
use crate::upstream::{Link, LinkKind, Node, OwnedLink, Release, Reply, Tracked};

/// Tag of the invalidations the session's tracked links deliver (and of their loss).
pub(super) const TRACKING_TAG: u64 = 1 << 59;
/// Tag of invalidations another client's tracking redirects to this one.
pub(super) const REDIRECTED_TAG: u64 = TRACKING_TAG | 1;

/// Tags of the PINGs that confirm a CLIENT TRACKING took effect on a link:
/// `ACK_TAG | entry` (the entry of the CLIENT TRACKING).
const ACK_TAG: u64 = 1 << 58;

pub(super) fn is_tracking_tag(tag: u64) -> bool {
    tag == TRACKING_TAG || tag == REDIRECTED_TAG || tag >> 58 == 1
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

const PUSH_HEAD: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";
const CACHING_YES: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nyes\r\n";
const CACHING_NO: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$2\r\nno\r\n";
const RESP3_NULL: &[u8] = b"_\r\n";

/// A client's tracking state, while `CLIENT TRACKING` is on.
pub(super) struct Tracking {
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    /// The client invalidations go to (0: this one).
    redirect: u64,
    /// The redirect client was gone when an invalidation was due.
    broken: bool,
    /// BCAST prefixes ("" for all keys), in the order given.
    prefixes: Vec<Bytes>,
    /// CLIENT CACHING was given: it applies to the next command (`Some(yes)`).
    caching_next: Option<bool>,
    /// The queue entry that next command became, whose sends carry the CACHING.
    caching_for: Option<(u64, bool)>,
    links: Vec<(Arc<Node>, OwnedLink)>,
    /// CLIENT TRACKING replies waiting for their links to confirm: (entry, links left, the
    /// first refusal).
    acks: Vec<(u64, usize, Option<Bytes>)>,
    /// BCAST: the topology snapshot links were last opened against (every master needs one).
    seen_topology: usize,
    shared: Arc<crate::shared::Shared>,
    /// Its place under `--max-tracking-clients`.
    _permit: crate::shared::Permit,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        let c = &self.shared.client_list;
        for p in &self.prefixes {
            c.remove_prefix(p);
        }
    }
}

impl Tracking {
    /// `CLIENT TRACKING on` arguments for a node (after `REDIRECT id`).
    fn node_opts(&self, prefixes: &[Bytes]) -> Vec<Bytes> {
        let mut o = Vec::new();
        if self.bcast {
            o.push(Bytes::from_static(b"BCAST"));
            for p in prefixes.iter().filter(|p| !p.is_empty()) {
                o.push(Bytes::from_static(b"PREFIX"));
                o.push(p.clone());
            }
        }
        for (on, name) in [
            (self.optin, &b"OPTIN"[..]),
            (self.optout, b"OPTOUT"),
            (self.noloop, b"NOLOOP"),
        ] {
            if on {
                o.push(Bytes::from_static(name));
            }
        }
        o
    }

    fn open(&mut self, node: &Arc<Node>, worker: &crate::worker::Worker, s: &SessionLinks) {
        let kind = LinkKind::Tracked {
            tag: TRACKING_TAG,
            to: s.inbox.clone(),
            track: Tracked::new(self.node_opts(&self.prefixes)),
        };
        if let Some(l) = worker.owned(node, s.proto, kind, s.user) {
            self.links.retain(|(n, _)| !Arc::ptr_eq(n, node));
            self.links.push((node.clone(), l));
        }
    }

    /// Whether the client has a tracked link to `node` already (keyless commands to that node
    /// use it: WAIT must follow the client's writes, which went there).
    pub(super) fn has_link(&self, node: &Arc<Node>) -> bool {
        self.link(node).is_some()
    }

    fn link(&self, node: &Arc<Node>) -> Option<&OwnedLink> {
        self.links
            .iter()
            .find(|(n, l)| Arc::ptr_eq(n, node) && l.is_usable())
            .map(|(_, l)| l)
    }

    /// The flags CLIENT TRACKINGINFO shows.
    fn flags(&self) -> Vec<&'static str> {
        let mut f = vec!["on"];
        if self.bcast {
            f.push("bcast");
        }
        let caching = self.caching_next.is_some();
        if self.optin {
            f.push("optin");
            if caching {
                f.push("caching-yes");
            }
        }
        if self.optout {
            f.push("optout");
            if caching {
                f.push("caching-no");
            }
        }
        if self.noloop {
            f.push("noloop");
        }
        if self.broken {
            f.push("broken_redirect");
        }
        f
    }
}

/// What opening a link takes from the session.
struct SessionLinks {
    inbox: std::rc::Rc<crate::upstream::Inbox>,
    proto: Proto,
    user: crate::worker::UserId,
}

/// `CLIENT TRACKING`'s arguments, parsed.
#[derive(Default)]
struct Options {
    redirect: Option<i64>,
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    prefixes: Vec<Bytes>,
}

/// `exists`: whether a client id is connected (checked while parsing, as Redis does).
fn parse(args: &Args<'_>, exists: impl Fn(i64) -> bool) -> Result<Options, String> {
    let mut o = Options::default();
    let mut j = 3;
    while j < args.len() {
        let a = args.get(j).unwrap_or_default();
        let more = j + 1 < args.len();
        if a.eq_ignore_ascii_case(b"REDIRECT") && more {
            j += 1;
            if o.redirect.is_some_and(|r| r != 0) {
                return Err("ERR A client can only redirect to a single other client".into());
            }
            match crate::resp::parse_i64(args.get(j).unwrap_or_default()) {
                Some(id) if exists(id) => o.redirect = Some(id),
                Some(_) => {
                    return Err("ERR The client ID you want redirect to does not exist".into())
                }
                None => return Err("ERR value is not an integer or out of range".into()),
            }
        } else if a.eq_ignore_ascii_case(b"BCAST") {
            o.bcast = true;
        } else if a.eq_ignore_ascii_case(b"OPTIN") {
            o.optin = true;
        } else if a.eq_ignore_ascii_case(b"OPTOUT") {
            o.optout = true;
        } else if a.eq_ignore_ascii_case(b"NOLOOP") {
            o.noloop = true;
        } else if a.eq_ignore_ascii_case(b"PREFIX") && more {
            j += 1;
            o.prefixes
                .push(Bytes::copy_from_slice(args.get(j).unwrap_or_default()));
        } else {
            return Err("ERR syntax error".into());
        }
        j += 1;
    }
    Ok(o)
}

/// Redis's test for overlapping prefixes: one starts with the other.
fn overlap(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

fn check_prefixes(have: &[Bytes], new: &[Bytes]) -> Result<(), String> {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (i, p) in new.iter().enumerate() {
        if let Some(old) = have.iter().find(|h| overlap(h, p)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                s(p),
                s(old)
            ));
        }
        if let Some(other) = new[i + 1..].iter().find(|q| overlap(p, q)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                s(p),
                s(other)
            ));
        }
    }
    Ok(())
}

impl Session {
    pub(super) fn client_tracking(&mut self, args: Args<'_>) {
        if let Err(e) = self.client_tracking_inner(&args) {
            return self.reply_local(|o, _| write::error(o, &e));
        }
        // The reply waits until every link of the client tracks as asked (a PING behind the
        // change on each): after `+OK`, a write by anyone is seen, as with one Redis.
        let n = self.queue.next_number();
        let now = self.now;
        let mut sent = 0;
        if self.capture.is_none() {
            if let Some(t) = &self.tracking {
                for (_, l) in &t.links {
                    if l.send(PING, false, ACK_TAG | n, &self.inbox, now).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        match self.tracking.as_mut() {
            Some(t) if sent > 0 => {
                t.acks.push((n, sent, None));
                self.push(Entry::Waiting);
            }
            _ => self.reply_local(|o, _| write::ok(o)),
        }
    }

    /// Tracking ends (CLIENT TRACKING off, RESET): its links close; a CLIENT TRACKING still
    /// waiting for them is answered.
    pub(super) fn tracking_off(&mut self) {
        let Some(mut t) = self.tracking.take() else {
            return;
        };
        self.keep_watch_link(&mut t);
        for (n, _, _) in &t.acks {
            if let Some(e) = self.queue.entry_mut(tag(*n, 0)) {
                *e = Entry::ready(Bytes::from_static(b"+OK\r\n"), Outcome::Ok);
            }
        }
        self.me.set_view(|v| v.redir = None);
    }

    /// The link holding the client's WATCHes, if it is one of the tracked ones about to close:
    /// it becomes the WATCH's own (closed with it), so the transaction still runs there.
    fn keep_watch_link(&mut self, t: &mut Tracking) {
        let Some(w) = &mut self.watch else { return };
        let Some(i) = t
            .links
            .iter()
            .position(|(_, l)| std::rc::Rc::ptr_eq(l.link(), w.link.link()))
        else {
            return;
        };
        let (_, mut l) = t.links.swap_remove(i);
        l.set_release(Release::Nothing);
        w.link.set_release(Release::Retire);
    }

    /// A link confirmed (or failed to) a CLIENT TRACKING: its `+OK` once all have, or the
    /// first refusal a node sent (the client's user may not track: `NOPERM`), which also turns
    /// tracking off again. A link that could not connect counts as done: its loss already
    /// invalidates everything, and the next command opens another.
    fn on_tracking_ack(&mut self, n: u64, result: Result<Bytes, crate::upstream::UpstreamError>) {
        let Some(t) = &mut self.tracking else { return };
        let Some(i) = t.acks.iter().position(|a| a.0 == n) else {
            return;
        };
        let a = &mut t.acks[i];
        a.1 -= 1;
        if let Ok(f) = result {
            if f.first() == Some(&b'-') && a.2.is_none() {
                a.2 = Some(f);
            }
        }
        if a.1 > 0 {
            return;
        }
        let refused = t.acks.swap_remove(i).2;
        let reply = match &refused {
            Some(e) => Entry::ready(e.clone(), Outcome::Error),
            None => Entry::ready(Bytes::from_static(b"+OK\r\n"), Outcome::Ok),
        };
        if let Some(e) = self.queue.entry_mut(tag(n, 0)) {
            *e = reply;
        }
        if refused.is_some() {
            self.tracking_off();
        }
    }

    fn client_tracking_inner(&mut self, args: &Args<'_>) -> Result<(), String> {
        let clients = &self.shared.client_list;
        let o = parse(args, |id| {
            u64::try_from(id)
                .ok()
                .and_then(|id| clients.get(id))
                .is_some()
        })?;
        let mode = args.get(2).unwrap_or_default();
        if mode.eq_ignore_ascii_case(b"off") {
            self.tracking_off();
            return Ok(());
        }
        if !mode.eq_ignore_ascii_case(b"on") {
            return Err("ERR syntax error".into());
        }
        if !o.bcast && !o.prefixes.is_empty() {
            return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
        }
        if let Some(t) = &self.tracking {
            if t.bcast != o.bcast {
                return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
            }
        }
        if o.bcast && (o.optin || o.optout) {
            return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
        }
        if o.optin && o.optout {
            return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
        }
        if let Some(t) = &self.tracking {
            if (o.optin && t.optout) || (o.optout && t.optin) {
                return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
            }
        }
        let have: &[Bytes] = self
            .tracking
            .as_ref()
            .map_or(&[], |t| t.prefixes.as_slice());
        if o.bcast {
            check_prefixes(have, &o.prefixes)?;
        }
        let mut new_prefixes = o.prefixes;
        if o.bcast && new_prefixes.is_empty() && !have.iter().any(|p| p.is_empty()) {
            new_prefixes.push(Bytes::new());
        }
        let shared = self.shared.clone();
        if self.tracking.is_none() {
            let Some(permit) = shared.tracking_permit() else {
                return Err(format!(
                    "ERR slotmux: too many tracking clients (--max-tracking-clients {})",
                    shared.config.max_tracking_clients
                ));
            };
            self.tracking = Some(Box::new(Tracking {
                bcast: false,
                optin: false,
                optout: false,
                noloop: false,
                redirect: 0,
                broken: false,
                prefixes: Vec::new(),
                caching_next: None,
                caching_for: None,
                links: Vec::new(),
                acks: Vec::new(),
                seen_topology: 0,
                shared: shared.clone(),
                _permit: permit,
            }));
        }
        let Some(t) = self.tracking.as_mut() else {
            return Ok(());
        };
        t.bcast = o.bcast;
        t.optin = o.optin;
        t.optout = o.optout;
        t.noloop = o.noloop;
        t.redirect = o.redirect.unwrap_or(0).max(0) as u64;
        t.broken = false;
        for p in &new_prefixes {
            shared.client_list.add_prefix(p);
            t.prefixes.push(p.clone());
        }
        // The node replaces the flags and adds prefixes, as Redis does for one client.
        let all = t.node_opts(&t.prefixes);
        let change = t.node_opts(&new_prefixes);
        for (_, l) in &t.links {
            l.retrack(all.clone(), &change);
        }
        let redir = t.redirect as i64;
        let first = t.links.is_empty();
        self.me.set_view(|v| v.redir = Some(redir));
        if o.bcast {
            self.ensure_bcast_links();
        } else if first {
            // One link now, so a cluster that refuses this user CLIENT TRACKING says so to
            // this command, as one Redis would (not to the first read).
            let topo = self.topo.load().clone();
            if let Some(node) = topo.any_master(self.id as usize) {
                self.tracking_link(node);
            }
        }
        Ok(())
    }

    pub(super) fn client_caching(&mut self, args: Args<'_>) {
        let opt = args.get(2).unwrap_or_default();
        let r = match &mut self.tracking {
            None => Err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"),
            Some(t) if opt.eq_ignore_ascii_case(b"yes") => {
                if t.optin {
                    t.caching_next = Some(true);
                    Ok(())
                } else {
                    Err("ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.")
                }
            }
            Some(t) if opt.eq_ignore_ascii_case(b"no") => {
                if t.optout {
                    t.caching_next = Some(false);
                    Ok(())
                } else {
                    Err("ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.")
                }
            }
            Some(_) => Err("ERR syntax error"),
        };
        match r {
            Ok(()) => self.reply_local(|o, _| write::ok(o)),
            Err(e) => self.reply_local(|o, _| write::error(o, e)),
        }
    }

    pub(super) fn client_getredir(&mut self) {
        let r = self.tracking.as_ref().map_or(-1, |t| t.redirect as i64);
        self.reply_local(|o, _| write::integer(o, r));
    }

    pub(super) fn client_trackinginfo(&mut self) {
        let (flags, redirect, prefixes) = match &self.tracking {
            None => (vec!["off"], -1, Vec::new()),
            Some(t) => (t.flags(), t.redirect as i64, t.prefixes.clone()),
        };
        self.reply_local(|o, p| {
            write::map_header(o, p, 3);
            write::bulk(o, b"flags");
            if p == Proto::Resp3 {
                o.extend_from_slice(format!("~{}\r\n", flags.len()).as_bytes());
            } else {
                write::array_header(o, flags.len());
            }
            for f in &flags {
                write::bulk(o, f.as_bytes());
            }
            write::bulk(o, b"redirect");
            write::integer(o, redirect);
            write::bulk(o, b"prefixes");
            write::array_header(o, prefixes.len());
            for pfx in &prefixes {
                write::bulk(o, pfx);
            }
        });
    }

    /// At each command of a tracking client: which command a pending CLIENT CACHING applies
    /// to (Redis keeps it across CLIENT commands and MULTI's queueing), and in BCAST mode a
    /// link to every master.
    pub(super) fn tracking_begin(&mut self, name: &str) {
        let Some(t) = &mut self.tracking else { return };
        let keeps = name.starts_with("client|")
            || name == "multi"
            || (self.multi.is_some() && name != "exec" && name != "discard");
        if !keeps {
            let n = self.queue.next_number();
            t.caching_for = t.caching_next.take().map(|yes| (n, yes));
        }
        if t.bcast {
            self.ensure_bcast_links();
        }
    }

    /// BCAST: a link to every master (new masters after a failover or a scale-out, and
    /// masters whose link was lost).
    fn ensure_bcast_links(&mut self) {
        let topo = self.topo.load().clone();
        let s = SessionLinks {
            inbox: self.inbox.clone(),
            proto: self.proto,
            user: self.user,
        };
        let Some(t) = &mut self.tracking else { return };
        let seen = Arc::as_ptr(&topo) as usize;
        let lost = t.links.iter().any(|(_, l)| !l.is_usable());
        if seen == t.seen_topology && !lost {
            return;
        }
        t.seen_topology = seen;
        t.links.retain(|(_, l)| l.is_usable());
        for node in topo.masters() {
            if t.link(node).is_none() {
                t.open(node, &self.worker, &s);
            }
        }
    }

    /// The client's tracked link to `node`, opened if it has none (`None`: not tracking, or
    /// the node is in backoff).
    pub(super) fn tracking_link(&mut self, node: &Arc<Node>) -> Option<std::rc::Rc<Link>> {
        let s = SessionLinks {
            inbox: self.inbox.clone(),
            proto: self.proto,
            user: self.user,
        };
        let t = self.tracking.as_mut()?;
        if t.link(node).is_none() {
            t.open(node, &self.worker, &s);
        }
        t.link(node).map(|l| l.link().clone())
    }

    /// Whether the client's CLIENT CACHING applies to request `tag` (and which), on each of
    /// its sends.
    pub(super) fn tracking_caching(&mut self, tag: u64) -> Option<bool> {
        let t = self.tracking.as_ref()?;
        let entry = tag >> super::queue::SUB_BITS;
        let from_cmd = t.caching_for.filter(|c| c.0 == entry).map(|c| c.1);
        let f = self.queue.flight_mut(tag)?;
        if f.caching.is_none() {
            f.caching = from_cmd;
        }
        f.caching
    }

    /// Sends CLIENT CACHING on `link` before a request. After `ASKING` a node forgets CACHING
    /// (and the other way round), so an OPTIN read through ASK is not tracked: the client is
    /// told to drop everything after its reply instead.
    pub(super) fn send_caching(&mut self, link: &Link, yes: bool, asking: bool) {
        if asking {
            if yes {
                self.deliver_invalidation_all();
            }
            return;
        }
        let _ = link.send_silent(if yes { CACHING_YES } else { CACHING_NO });
    }

    /// An invalidation of everything, queued behind the client's pending replies.
    fn deliver_invalidation_all(&mut self) {
        self.send_invalidation(Bytes::from_static(RESP3_NULL));
    }

    /// The client authenticated as another user: its tracked links (the old user's) close,
    /// and with them what the masters tracked, so the client drops everything; new links
    /// open as the new user.
    pub(super) fn tracking_user_changed(&mut self) {
        let Some(mut t) = self.tracking.take() else {
            return;
        };
        let had_links = !t.links.is_empty();
        if had_links {
            self.keep_watch_link(&mut t);
            t.links.clear();
            t.seen_topology = 0;
        }
        self.tracking = Some(t);
        if had_links {
            self.send_invalidation(Bytes::from_static(RESP3_NULL));
        }
    }

    /// HELLO changed the protocol: the tracked links follow (they keep what they track).
    pub(super) fn tracking_proto(&mut self, proto: Proto) {
        let Some(t) = &self.tracking else { return };
        let cmd: &[u8] = match proto {
            Proto::Resp3 => b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
            Proto::Resp2 => b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n",
        };
        for (_, l) in &t.links {
            let _ = l.send_silent(cmd);
        }
    }

    /// An invalidation from one of the session's tracked links, a link's loss, or one
    /// redirected here by another client.
    pub(super) fn on_tracking(&mut self, reply: Reply) {
        if reply.tag >> 58 == 1 {
            return self.on_tracking_ack(reply.tag & !ACK_TAG, reply.result);
        }
        if reply.tag == REDIRECTED_TAG {
            if let Ok(keys) = reply.result {
                self.receive_invalidation(&keys);
            }
            return;
        }
        let keys = match reply.result {
            // Nothing else is expected on that connection.
            Ok(frame) if frame.starts_with(PUSH_HEAD) => frame.slice(PUSH_HEAD.len()..),
            Ok(_) => return,
            // A tracked link ended without its owner closing it (each says so once).
            Err(_) => {
                let Some(t) = &mut self.tracking else { return };
                // Only a link that tracked says it ended (see `Link::close`).
                t.links.retain(|(_, l)| l.is_usable());
                self.shared
                    .stats
                    .tracking_resets
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // What that node tracked is gone, and invalidations may have been missed:
                // the client drops its whole cache, as after FLUSHALL.
                Bytes::from_static(RESP3_NULL)
            }
        };
        self.send_invalidation(keys);
    }

    /// Sends an invalidation (keys as an array, or null for all) where the client's tracking
    /// says.
    fn send_invalidation(&mut self, keys: Bytes) {
        let Some(t) = &mut self.tracking else { return };
        if t.redirect == 0 {
            if self.proto == Proto::Resp3 {
                self.deliver(push(&keys));
            }
            return;
        }
        let to = t.redirect;
        match self.shared.client_list.get(to) {
            Some(c) => c.send_invalidation(keys),
            None => {
                t.broken = true;
                if self.proto == Proto::Resp3 {
                    let mut b = BytesMut::new();
                    b.extend_from_slice(b">2\r\n$21\r\ntracking-redir-broken\r\n");
                    write::integer(&mut b, to as i64);
                    self.deliver(b.freeze());
                }
            }
        }
    }

    /// An invalidation another client redirects here: a push in RESP3, a message on
    /// `__redis__:invalidate` to a RESP2 subscriber, nothing otherwise (as Redis).
    fn receive_invalidation(&mut self, keys: &[u8]) {
        if self.proto == Proto::Resp3 {
            return self.deliver(push(keys));
        }
        if !self.subscribed() {
            return;
        }
        let mut b = BytesMut::new();
        b.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n");
        if keys == RESP3_NULL {
            b.extend_from_slice(b"$-1\r\n");
        } else {
            b.extend_from_slice(keys);
        }
        self.deliver(b.freeze());
    }
}

/// A RESP3 `invalidate` push of `keys` (an array, or RESP3's null).
fn push(keys: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PUSH_HEAD.len() + keys.len());
    b.extend_from_slice(PUSH_HEAD);
    b.extend_from_slice(keys);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_overlap_as_redis_checks_them() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(check_prefixes(&[], &[b("FOO"), b("BAR")]).is_ok());
        let e = check_prefixes(&[], &[b("FOOBAR"), b("FOO")]).unwrap_err();
        assert!(e.starts_with("ERR Prefix 'FOOBAR' overlaps with another provided prefix 'FOO'"));
        let e = check_prefixes(&[b("FOO"), b("BAR")], &[b("FO")]).unwrap_err();
        assert!(e.starts_with("ERR Prefix 'FO' overlaps with an existing prefix 'FOO'"));
        let e = check_prefixes(&[b("FOO"), b("BAR")], &[b("BARB")]).unwrap_err();
        assert!(e.contains("'BARB'") && e.contains("'BAR'"));
        // The empty prefix overlaps everything.
        assert!(check_prefixes(&[b("")], &[b("a")]).is_err());
    }

    #[test]
    fn invalidations_are_resp3_pushes() {
        assert_eq!(
            &push(b"*1\r\n$1\r\na\r\n")[..],
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n"
        );
    }
}
