//! Transactions: WATCH, MULTI, EXEC, DISCARD, UNWATCH.
//!
//! Owns: the transaction being built (between MULTI and EXEC slotmux checks each command the
//! way Redis does while queueing, answers `+QUEUED` itself and keeps the command), sending it
//! at EXEC as one batch (`MULTI`, the commands, `EXEC`) to the slot's current owner, and the
//! link of the session's own that holds its WATCHes. Replaying a batch that met MOVED, ASK,
//! TRYAGAIN or CLUSTERDOWN (nothing ran) is the flight code's, by `decide_exec`.
//! Must not: send an unwatched transaction anywhere but as one contiguous batch (so it may use
//! the shared links), or run a watched one anywhere but on the connection holding the WATCH.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::time::Instant;

use super::queue::{tag, Entry, Fanout, Flight, FlightState, Via};
use super::Session;
use crate::cluster::Topology;
use crate::command::{self, Args, Handling, Local, Tx};
use crate::error::ProxyError;
use crate::merge::Merge;
use crate::metrics::Outcome;
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write;
use crate::router::{Route, Target};
use crate::upstream::{LinkKind, Node, OwnedLink};

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// The connection that holds a client's WATCHes, on the watched keys' master.
pub(super) struct Watch {
    pub link: OwnedLink,
    pub node: Arc<Node>,
    /// Watched on a node importing the slot: the batch needs `ASKING` there too.
    pub asking: bool,
    /// The slots of the watched keys.
    pub slots: Vec<u16>,
    /// A WATCH went through on this link.
    pub watching: bool,
    /// The watch can no longer be proved (a later WATCH was redirected, the link broke):
    /// EXEC answers the null reply of an aborted transaction.
    pub broken: bool,
}

/// The transaction being built between MULTI and EXEC.
pub(super) struct Multi {
    /// `MULTI` and the queued commands, back to back.
    batch: BytesMut,
    /// Bytes of the client's own MULTI at the start of `batch`.
    multi_len: usize,
    count: u32,
    /// The slot of the transaction's keys (all must share one, so a replay after a slot
    /// moved can go to one node).
    slot: Option<u16>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    aborted: bool,
    /// Every queued command only reads (EXEC may be resent after a lost connection).
    readonly: bool,
    /// A queued command may write or be replicated (EXEC waits out a CLIENT PAUSE WRITE).
    writes: bool,
    /// Which queued commands have keys.
    keyed: Vec<bool>,
    /// Cluster-wide commands queued (FLUSHALL, CONFIG SET...), for the other nodes.
    echoes: Vec<Echo>,
    /// Commands slotmux answers itself, queued (SLOWLOG, CLIENT SETNAME...).
    locals: Vec<TxLocal>,
}

/// What is left to do once a transaction's EXEC has run on its master.
#[derive(Default)]
pub(super) struct AfterExec {
    echoes: Vec<Echo>,
    locals: Vec<TxLocal>,
}

/// A command slotmux answers itself, inside MULTI (SLOWLOG RESET, CLIENT SETNAME, CLIENT
/// PAUSE, CLUSTER SLOTS...). It is not sent; slotmux runs it when EXEC's reply arrives (the
/// moment the transaction ran: a pause starts after it, as in Redis) and puts its reply in
/// its place among the node's.
pub(super) struct TxLocal {
    /// Its position in the transaction, as the client counts.
    index: u32,
    cmd: Local,
    frame: Bytes,
}

/// A cluster-wide write inside MULTI (FLUSHALL, FLUSHDB, CONFIG SET, SCRIPT LOAD...). It runs
/// in the transaction on the transaction's master, atomically with the rest; once EXEC has
/// succeeded, and that command did not fail there, it is sent to every other master (every
/// node for CONFIG SET/RESETSTAT), and EXEC's reply waits for them: an error from another
/// node replaces that command's element.
pub(super) struct Echo {
    /// Its position in the transaction, as the client counts.
    index: u32,
    frame: Bytes,
    all_nodes: bool,
    name: &'static str,
}

impl Multi {
    /// Whether a queued command may write (EXEC then waits out a CLIENT PAUSE WRITE).
    pub(super) fn writes(&self) -> bool {
        self.writes
    }

    /// A command was refused while queueing: EXEC will answer EXECABORT.
    pub(super) fn fail(&mut self) {
        self.aborted = true;
    }

    /// `multi` is the client's own MULTI (and its EXEC ends the batch): MONITOR on the node
    /// shows them as the client wrote them.
    fn new(multi: &[u8]) -> Multi {
        let mut batch = BytesMut::with_capacity(256);
        batch.extend_from_slice(multi);
        Multi {
            batch,
            multi_len: multi.len(),
            count: 0,
            slot: None,
            aborted: false,
            readonly: true,
            writes: false,
            keyed: Vec::new(),
            echoes: Vec::new(),
            locals: Vec::new(),
        }
    }

    /// Commands queued, as the client counts them (CLIENT LIST's `multi`).
    fn queued(&self) -> u32 {
        self.count + self.locals.len() as u32
    }
}

/// What a command inside MULTI is, for the transaction.
enum Queueable {
    /// Goes into the batch; `Some(slot)` when it has keys.
    Yes(Option<u16>),
    /// Goes into the batch, and to the other masters (or nodes) after EXEC.
    Echo { all_nodes: bool },
    /// Answered by slotmux when EXEC has run.
    Local(Local),
    /// Refused while queueing: the client gets the error, EXEC gets EXECABORT.
    No(ProxyError),
}

impl Session {
    /// Commands queued in MULTI, or -1 outside it (CLIENT LIST's `multi`).
    pub(super) fn multi_count(&self) -> i64 {
        self.multi.as_ref().map_or(-1, |m| i64::from(m.queued()))
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
                    // Redis answers this without failing the transaction.
                    return self
                        .reply_error(ProxyError::redis("ERR MULTI calls can not be nested"));
                }
                self.multi = Some(Multi::new(&frame));
                self.publish_view();
                self.reply_local(|o, _| write::ok(o));
            }
            Tx::Watch => {
                if self.multi.is_some() {
                    return self
                        .reply_error(ProxyError::redis("ERR WATCH inside MULTI is not allowed"));
                }
                self.watch_keys(frame, args, spec, topo);
            }
            Tx::Unwatch if self.multi.is_some() => {
                // Queued, as Redis does (a no-op by the time EXEC runs it).
                self.queue_in_multi(Route::Forward(Target::AnyMaster), frame, spec, false)
            }
            Tx::Unwatch => {
                // Closing the connection that holds the WATCHes forgets them.
                self.watch = None;
                self.reply_local(|o, _| write::ok(o));
            }
            Tx::Discard => {
                if self.multi.take().is_none() {
                    return self.reply_error(ProxyError::redis("ERR DISCARD without MULTI"));
                }
                self.watch = None;
                self.publish_view();
                self.reply_local(|o, _| write::ok(o));
            }
            Tx::Exec => self.exec(&frame),
        }
    }

    fn watch_keys(
        &mut self,
        frame: Bytes,
        args: Args<'_>,
        spec: &'static command::CommandSpec,
        topo: &Topology,
    ) {
        let slot = match command::slot_of(spec, args) {
            command::SlotOf::One(s) => s,
            command::SlotOf::CrossSlot => return self.reply_error(ProxyError::CrossSlot),
            _ => {
                return self.reply_error(ProxyError::redis(
                    "ERR wrong number of arguments for 'watch' command",
                ))
            }
        };
        // No master known (a failover): the WATCH waits for one in the retry loop.
        let node = topo.master_for(slot).cloned();
        match (&mut self.watch, node) {
            // Already unprovable: EXEC will answer null whatever is watched now.
            (Some(w), _) if w.broken => return self.reply_local(|o, _| write::ok(o)),
            (Some(w), _) if w.watching && !w.link.is_usable() => {
                w.broken = true;
                return self.reply_local(|o, _| write::ok(o));
            }
            // One connection holds all of a client's WATCHes: keys of another master cannot
            // join them.
            (Some(w), Some(node)) if w.watching && !Arc::ptr_eq(&w.node, &node) => {
                return self.reply_error(ProxyError::CrossSlot)
            }
            // Nothing held yet on a connection to another node: the WATCH opens its own.
            (Some(w), Some(node)) if !Arc::ptr_eq(&w.node, &node) => self.watch = None,
            _ => {}
        }
        // The link is opened (or the WATCH retried until it can be) when it is sent.
        let f = Flight::new(frame, Target::Slot(slot), true).via(Via::Watch);
        let n = self.push(Entry::One(f));
        let now = self.now;
        self.send(tag(n, 0), now);
    }

    /// Opens the link that will hold the client's WATCHes, on `node`.
    pub(super) fn open_watch(&mut self, node: Arc<Node>, asking: bool) -> bool {
        // A tracking client watches on its tracked link to the node: the transaction's reads
        // are tracked, and the link outlives the WATCH (UNWATCH when it is let go).
        let link = if self.tracking.is_some() {
            self.tracking_link(&node)
                .map(|l| OwnedLink::lent(l, b"*1\r\n$7\r\nUNWATCH\r\n"))
        } else {
            self.worker
                .owned(&node, self.proto, LinkKind::Dedicated, self.user)
        };
        match link {
            Some(link) => {
                let slots = self.watch.take().map(|w| w.slots).unwrap_or_default();
                self.watch = Some(Watch {
                    link,
                    node,
                    asking,
                    slots,
                    watching: false,
                    broken: false,
                });
                true
            }
            None => false,
        }
    }

    fn exec(&mut self, exec: &[u8]) {
        let Some(mut m) = self.multi.take() else {
            return self.reply_error(ProxyError::redis("ERR EXEC without MULTI"));
        };
        let watch = self.watch.take();
        self.publish_view();
        if m.aborted {
            self.show_aborted_to_monitors(m.slot, &m.batch[..m.multi_len], exec);
            return self.reply_error(ProxyError::redis(EXECABORT));
        }
        if watch.as_ref().is_some_and(|w| w.broken) {
            return self.reply_local(write::null_array);
        }
        m.batch.extend_from_slice(exec);
        let target = match m.slot {
            Some(s) => Target::Slot(s),
            None => Target::AnyMaster,
        };
        let mut f = Flight::new(m.batch.freeze(), target, m.readonly);
        f.replies = m.count + 2;
        f.keyed = Some(m.keyed.into_boxed_slice());
        if let Some(w) = watch {
            // The batch goes where the WATCHes are; the flight holds that link until EXEC is
            // answered, so a WATCH pipelined after this EXEC starts a link of its own.
            f.via = Via::Watch;
            f.asking = w.asking;
            let mut link = w.link;
            // EXEC unwatches on the node: a lent link needs no UNWATCH after it (one sent
            // then could undo a WATCH pipelined behind this EXEC).
            if link.release() != crate::upstream::Release::Retire {
                link.set_release(crate::upstream::Release::Nothing);
            }
            f.own = Some(link);
        }
        let n = self.push(Entry::One(f));
        if !m.echoes.is_empty() || !m.locals.is_empty() {
            let after = AfterExec {
                echoes: std::mem::take(&mut m.echoes),
                locals: std::mem::take(&mut m.locals),
            };
            self.tx_after.push((tag(n, 0), after));
        }
        let now = self.now;
        self.send(tag(n, 0), now);
    }

    /// A transaction refused while queueing never reaches a node, but Redis shows its
    /// `multi` and `exec` to MONITOR clients: while anyone monitors, the client's MULTI and
    /// EXEC, with nothing between, go to the transaction's master (replies ignored), so they
    /// see it as from one Redis.
    fn show_aborted_to_monitors(&mut self, slot: Option<u16>, multi: &[u8], exec: &[u8]) {
        if self
            .shared
            .monitors
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            return;
        }
        let topo = self.topo.load().clone();
        let node = match slot {
            Some(s) => topo.master_for(s),
            None => topo.any_master(0),
        };
        if let Some(node) = node {
            if let Ok(link) = self.worker.link(node, self.proto, 0, self.user) {
                let mut frame = Vec::with_capacity(multi.len() + exec.len());
                frame.extend_from_slice(multi);
                frame.extend_from_slice(exec);
                let _ = link.send_silent_n(&frame, 2);
            }
        }
    }

    /// The transaction `tag` is over without running (aborted, failed): nothing to repeat.
    pub(super) fn forget_after_exec(&mut self, tag: u64) {
        if !self.tx_after.is_empty() {
            self.tx_after.retain(|e| e.0 != tag);
        }
    }

    /// EXEC was answered with `exec` by the transaction's master. When it ran (an array, not
    /// the null of a WATCH or an error), the commands slotmux answers itself run now and
    /// their replies join the node's (see [`TxLocal`]), and the cluster-wide commands that
    /// did not fail there go to the other nodes; the client gets EXEC's reply when they have
    /// answered (see [`Echo`]). Returns the reply when there is nothing to wait for.
    pub(super) fn after_exec(&mut self, tag: u64, exec: Bytes) -> Option<Bytes> {
        let Some(i) = self.tx_after.iter().position(|e| e.0 == tag) else {
            return Some(exec);
        };
        let (_, after) = self.tx_after.swap_remove(i);
        let ran = matches!(exec.first(), Some(b'*')) && !exec.starts_with(b"*-1");
        if !ran {
            return Some(exec);
        }
        let exec = self.splice_locals(exec, &after.locals);
        let echoes = after.echoes;
        let ran_on = self
            .queue
            .flight_mut(tag)
            .and_then(|f| f.link.as_ref().map(|l| l.node.clone()));
        let Some(els) = crate::merge::elements(&exec) else {
            return Some(exec);
        };
        let topo = self.topo.load().clone();
        let mut parts = Vec::new();
        let mut order = Vec::new();
        for e in &echoes {
            if els
                .get(e.index as usize)
                .is_none_or(|&(a, _)| exec.get(a) == Some(&b'-'))
            {
                continue;
            }
            self.took_effect(e);
            let replicas = topo.replicas.iter().flatten().filter(|_| e.all_nodes);
            for node in topo.masters.iter().chain(replicas) {
                if ran_on.as_ref().is_some_and(|r| Arc::ptr_eq(r, node)) {
                    continue;
                }
                parts.push(Flight::new(
                    e.frame.clone(),
                    Target::Node(node.clone()),
                    false,
                ));
                order.push((e.index, 0));
            }
        }
        if parts.is_empty() {
            return Some(exec);
        }
        let request = match self.queue.flight_mut(tag) {
            Some(f) => std::mem::take(&mut f.frame),
            None => return Some(exec),
        };
        let mut done = Flight::new(Bytes::new(), Target::AnyMaster, true);
        done.state = FlightState::Done;
        done.reply = Some((exec, Outcome::Ok));
        parts.insert(0, done);
        let count = parts.len();
        let entry = self.queue.entry_mut(tag)?;
        *entry = Entry::Many(Box::new(Fanout {
            merge: Merge::TxEcho,
            info: None,
            order,
            parts,
            left: count - 1,
            request,
        }));
        let now = Instant::now();
        for part in 2..=count {
            self.send(tag + part as u64, now);
        }
        None
    }

    /// EXEC's array with the replies of the commands slotmux answers itself in their places.
    fn splice_locals(&mut self, exec: Bytes, locals: &[TxLocal]) -> Bytes {
        if locals.is_empty() {
            return exec;
        }
        let Some(els) = crate::merge::elements(&exec) else {
            return exec;
        };
        let mut out = BytesMut::with_capacity(exec.len() + 64 * locals.len());
        write::array_header(&mut out, els.len() + locals.len());
        let mut node = els.iter();
        let mut local = locals.iter().peekable();
        for i in 0..(els.len() + locals.len()) as u32 {
            match local.next_if(|l| l.index == i) {
                Some(l) => {
                    let mut sc = RequestScanner::new(Limits::default());
                    let mut buf = BytesMut::from(&l.frame[..]);
                    if let Ok(Some(frame)) = sc.next(&mut buf) {
                        let args = Args {
                            frame: &frame,
                            ranges: sc.args(),
                        };
                        self.capture = Some(BytesMut::new());
                        self.local(l.cmd, args);
                    }
                    match self.capture.take() {
                        Some(reply) if !reply.is_empty() => out.extend_from_slice(&reply),
                        _ => write::error(&mut out, "ERR slotmux: no reply inside the transaction"),
                    }
                }
                None => match node.next() {
                    Some(&(a, b)) => out.extend_from_slice(&exec[a..b]),
                    None => write::error(&mut out, "ERR slotmux: short EXEC reply"),
                },
            }
        }
        out.freeze()
    }

    /// What slotmux itself keeps in step with a cluster-wide command that ran: its copies of
    /// scripts, its slow log's settings.
    fn took_effect(&self, e: &Echo) {
        match e.name {
            "script|flush" => self.shared.scripts.clear(),
            "config|set" => {
                let mut buf = BytesMut::from(&e.frame[..]);
                let mut sc = RequestScanner::new(Limits::default());
                if let Ok(Some(frame)) = sc.next(&mut buf) {
                    let args = sc.args();
                    for pair in args.get(2..).unwrap_or_default().chunks_exact(2) {
                        let (p, v) = (pair[0], pair[1]);
                        self.shared
                            .slowlog
                            .configure(&frame[p.0..p.1], &frame[v.0..v.1]);
                    }
                }
            }
            _ => {}
        }
    }

    /// A command between MULTI and EXEC: checked as Redis checks it while queueing, then kept
    /// for the batch and answered `+QUEUED`.
    pub(super) fn queue_in_multi(
        &mut self,
        route: Route,
        frame: Bytes,
        spec: &'static command::CommandSpec,
        writes: bool,
    ) {
        let verdict = self.queueable(&route, spec);
        let limit = self.shared.config.client_query_buffer_limit;
        let topo = self.topo.load().clone();
        let Some(m) = self.multi.as_mut() else { return };
        let slot = match verdict {
            Queueable::No(e) => {
                m.aborted = true;
                return self.reply_error(e);
            }
            Queueable::Yes(slot) => slot,
            Queueable::Local(cmd) => {
                m.locals.push(TxLocal {
                    index: m.queued(),
                    cmd,
                    frame,
                });
                self.publish_view();
                return self.reply_local(|o, _| write::simple(o, "QUEUED"));
            }
            Queueable::Echo { all_nodes } => {
                m.echoes.push(Echo {
                    index: m.queued(),
                    frame: frame.clone(),
                    all_nodes,
                    name: spec.name,
                });
                None
            }
        };
        if let Some(s) = slot {
            let joins = match (m.slot, &mut self.watch) {
                (Some(prev), _) => prev == s,
                (None, None) => true,
                // Watched: the keys must live where the WATCHes are. A watched slot that has
                // moved since counts as a change to the watched keys: EXEC answers null.
                (None, Some(w)) => {
                    let there = topo.master_for(s).is_some_and(|o| Arc::ptr_eq(o, &w.node));
                    if !there && w.slots.contains(&s) {
                        w.broken = true;
                    }
                    there || w.slots.contains(&s)
                }
            };
            if !joins {
                m.aborted = true;
                return self.reply_error(ProxyError::CrossSlot);
            }
            m.slot = Some(s);
        }
        if (m.batch.len() + frame.len()) as u64 > limit {
            m.aborted = true;
            return self.reply_error(ProxyError::redis(
                "ERR slotmux: transaction larger than --client-query-buffer-limit",
            ));
        }
        m.batch.extend_from_slice(&frame);
        m.count += 1;
        m.keyed.push(slot.is_some());
        m.readonly &= command::is_readonly(spec);
        m.writes |= writes;
        // CLIENT LIST's `multi` counts the queued commands.
        self.publish_view();
        self.reply_local(|o, _| write::simple(o, "QUEUED"));
    }

    /// Whether a routed command can be part of a transaction, and its slot.
    fn queueable(&self, route: &Route, spec: &'static command::CommandSpec) -> Queueable {
        if spec.flags & command::table::F_NO_MULTI != 0 {
            return Queueable::No(ProxyError::redis(
                "ERR Command not allowed inside a transaction",
            ));
        }
        let refuse = |why: &'static str| {
            Queueable::No(ProxyError::Refused {
                command: spec.name.replace('|', " "),
                why,
            })
        };
        match route {
            Route::Forward(Target::Slot(_)) if command::policy(spec) == Handling::PubSubNode => {
                // PUBLISH reaches every node's subscribers from any node.
                Queueable::Yes(None)
            }
            Route::Forward(Target::Slot(s)) | Route::Blocking(s) => Queueable::Yes(Some(*s)),
            Route::Forward(_) | Route::LastWrite => Queueable::Yes(None),
            Route::Local(Local::Ping | Local::Echo | Local::ClusterKeySlot | Local::Select) => {
                Queueable::Yes(None)
            }
            Route::Error(e) => Queueable::No(e.clone()),
            Route::Split(_) if matches!(command::policy(spec), Handling::Split(_)) => {
                Queueable::No(ProxyError::CrossSlot)
            }
            Route::Split(_) => match command::policy(spec) {
                Handling::AllMasters(Merge::AllOk | Merge::First) => {
                    Queueable::Echo { all_nodes: false }
                }
                Handling::AllNodes(Merge::AllOk) => Queueable::Echo { all_nodes: true },
                _ => refuse(
                    "inside a transaction would read one master only; slotmux runs it outside MULTI only",
                ),
            },
            // Answered from slotmux's own state, with no effect beyond this client or slotmux.
            Route::Local(
                l @ (Local::ClientSetName
                | Local::ClientGetName
                | Local::ClientId
                | Local::ClientInfo
                | Local::ClientList
                | Local::ClientOk
                | Local::ClientPause
                | Local::ClientUnpause
                | Local::ClusterSlots
                | Local::ClusterShards
                | Local::ClusterNodes
                | Local::ClusterMyId
                | Local::ClusterInfo
                | Local::SlowlogGet
                | Local::SlowlogLen
                | Local::SlowlogReset),
            ) => Queueable::Local(*l),
            Route::Local(_) | Route::Info | Route::Scan { .. } | Route::Subscribe(_) => {
                refuse("cannot be part of a transaction through slotmux")
            }
            Route::Transaction(_) => refuse("cannot be nested in a transaction"),
        }
    }
}
