//! One client connection: read commands, route them, write replies in request order.
//!
//! Owns: the per-client state (protocol version, name, authentication), the ordered queue of
//! commands in flight, redirection and retry handling (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
//! lost connections) within the retry budget, split commands waiting for their parts,
//! backpressure (stop reading at `max_pipeline` commands in flight), and coalesced writes.
//! Must not: block on a backend (everything backend-bound goes through unbounded queues and
//! comes back as [`Reply`] messages), allocate per forwarded single-key command in the steady
//! state, or resend a command that may have run unless it is read-only.

mod local;
mod pubsub;

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cluster::refresh::Reason;
use crate::cluster::Topology;
use crate::command::Tx;
use crate::command::{self, Args};
use crate::merge::{merge, Merge};
use crate::metrics::SessionStats;
use crate::resp::reply::{classify, Redirect};
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write::{self, Proto};
use crate::router::{self, Route, Target};
use crate::server::{Shared, RETRY_CLUSTERDOWN, RETRY_LOST, RETRY_TRYAGAIN, RETRY_UNREACHABLE};
use crate::upstream::conn::{ConnHandle, Mode};
use crate::upstream::{Node, Reply, Request, UpstreamError};

const READ_CHUNK: usize = 16 * 1024;
/// The first read of a new client: most first commands are small.
const FIRST_READ: usize = 512;
/// Stop reading from a client while this much output waits for it.
const OUT_HIGH: usize = 1 << 20;
/// Tags are `entry << SUB_BITS | part`, part 0 being the entry's own request.
const SUB_BITS: u32 = 24;
const SUB_MASK: u64 = (1 << SUB_BITS) - 1;
/// Tag for requests whose replies nobody waits for (the MULTI slotmux sends when it pins a
/// transaction, and the commands it had already answered QUEUED for).
const DISCARD_TAG: u64 = u64::MAX;

#[derive(Debug)]
enum FlightState {
    InFlight,
    WaitRetry,
    Done(Bytes),
}

/// What to do with a finished reply before the client sees it.
#[derive(Debug, Clone, Copy)]
enum Post {
    None,
    /// Rewrite a node's SCAN cursor into slotmux's.
    Scan {
        slot: u16,
    },
    /// The transaction is over after this reply (EXEC, DISCARD, UNWATCH): release the pinned
    /// connection.
    Unpin,
}

/// Which connection a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The node's shared, multiplexed connections.
    Shared,
    /// A connection of its own, opened per send (blocking commands).
    Dedicated,
    /// The session's pinned transaction connection; no redirects are followed (Redis reports
    /// them inside a transaction too).
    Pinned,
}

/// The connection a transaction (WATCH ... MULTI ... EXEC) is pinned to.
struct Pinned {
    conn: ConnHandle,
    node: Arc<Node>,
}

/// State between MULTI and EXEC/DISCARD.
#[derive(Default)]
struct Multi {
    slot: Option<u16>,
    aborted: bool,
    /// Keyless commands answered QUEUED before the transaction had a node.
    buffered: Vec<Bytes>,
}

/// One request to one node, with its redirect and retry state.
#[derive(Debug)]
struct Flight {
    frame: Bytes,
    target: Target,
    /// The node it was last sent to (for errors, WAIT and MOVED with an empty host).
    node: Option<Arc<Node>>,
    /// One-shot destination from MOVED or ASK (`true` for ASK: send ASKING first).
    redirect: Option<(Arc<Node>, bool)>,
    readonly: bool,
    redirects: u8,
    attempts: u8,
    first_failure: Option<Instant>,
    state: FlightState,
    post: Post,
    via: Via,
    /// The dedicated connection of a blocking command (closed when the flight is dropped),
    /// with its slot in the blocking-clients limit.
    #[allow(dead_code)]
    // held only so the connection and the permit live as long as the flight
    own: Option<(ConnHandle, crate::server::Permit)>,
}

impl Flight {
    fn new(frame: Bytes, target: Target, readonly: bool) -> Self {
        Flight {
            frame,
            target,
            node: None,
            redirect: None,
            readonly,
            redirects: 0,
            attempts: 0,
            first_failure: None,
            state: FlightState::InFlight,
            post: Post::None,
            via: Via::Shared,
            own: None,
        }
    }

    fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }
}

/// A command split into parts whose replies are merged.
#[derive(Debug)]
struct Fanout {
    merge: Merge,
    /// INFO: slotmux's own sections, put before the merged keyspace.
    prefix: Option<String>,
    order: Vec<(u32, u32)>,
    parts: Vec<Flight>,
    left: usize,
}

#[derive(Debug)]
enum Entry {
    Ready(Bytes),
    One(Flight),
    Many(Box<Fanout>),
}

/// What a queued entry is, for metrics and the slow log.
struct Meta {
    name: &'static str,
    started: Instant,
    frame: Bytes,
}

type TopoCache = arc_swap::Cache<Arc<arc_swap::ArcSwap<Topology>>, Arc<Topology>>;

pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    proto: Proto,
    name: Option<Bytes>,
    authed: bool,
    topo: TopoCache,
    tx: mpsc::UnboundedSender<Reply>,
    pending: VecDeque<Entry>,
    /// Parallel to `pending`: the command each entry answers (`None` for pushes).
    meta: VecDeque<Option<Meta>>,
    /// The command being handled, until it is queued or answered.
    cur: Option<Meta>,
    stats: SessionStats,
    /// Entry number of `pending[0]`; entry numbers are consecutive.
    base: u64,
    retries: Vec<(Instant, u64)>,
    out: BytesMut,
    closing: bool,
    /// Drop the client now, without flushing (output limit reached).
    kill: bool,
    last_write: Option<Arc<Node>>,
    pinned: Option<Pinned>,
    multi: Option<Multi>,
    pubsub: Option<pubsub::PubSub>,
}

impl Session {
    /// Serves one client until it quits, breaks the protocol, or shutdown drains it.
    pub async fn run(
        shared: Arc<Shared>,
        mut stream: TcpStream,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let topo = arc_swap::Cache::new(shared.cluster.cell());
        let mut s = Session {
            authed: shared.config.requirepass.is_none(),
            shared,
            id,
            peer,
            local,
            proto: Proto::Resp2,
            name: None,
            topo,
            tx,
            pending: VecDeque::new(),
            meta: VecDeque::new(),
            cur: None,
            stats: SessionStats::default(),
            base: 0,
            retries: Vec::new(),
            // Buffers grow on first use: an idle client costs a few KiB, not 32.
            out: BytesMut::new(),
            closing: false,
            kill: false,
            last_write: None,
            pinned: None,
            multi: None,
            pubsub: None,
        };
        let cfg = s.shared.config.clone();
        let mut scanner = RequestScanner::new(Limits {
            max_bulk_len: cfg.proto_max_bulk_len.min(usize::MAX as u64) as usize,
            max_args: i32::MAX as usize,
        });
        let query_limit = cfg.client_query_buffer_limit.min(usize::MAX as u64) as usize;
        let max_pipeline = cfg.max_pipeline as usize;
        let idle = cfg.idle_timeout;
        let mut inbuf = BytesMut::new();
        let (mut rd, mut wr) = stream.split();
        let retry_sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(retry_sleep);
        let never = Duration::from_secs(86400 * 365);
        let idle_sleep = tokio::time::sleep(if idle.is_zero() { never } else { idle });
        tokio::pin!(idle_sleep);
        let mut retry_armed = false;
        let mut yielded = false;
        if *shutdown.borrow() {
            return;
        }
        // Created once: a fresh `changed()` per loop turn would lock the watch's waiter list
        // on every command.
        let stop = shutdown.changed();
        tokio::pin!(stop);

        loop {
            // Parse whatever is buffered while there is room in the pipeline.
            if !s.closing && !inbuf.is_empty() {
                // One clock read for all the commands of this read (16 at pipeline 16): their
                // latency counts from when slotmux took them up, nanoseconds apart.
                let now = Instant::now();
                while s.pending.len() < max_pipeline && !s.closing {
                    match scanner.next(&mut inbuf) {
                        Ok(Some(frame)) => s.handle(frame, scanner.args(), now),
                        Ok(None) => break,
                        Err(e) => {
                            s.reply_local(|o, _| write::error(o, &format!("ERR {e}")));
                            s.closing = true;
                            inbuf.clear();
                        }
                    }
                }
                if inbuf.len() > query_limit {
                    tracing::info!(client = %s.peer, "closing client that reached the query buffer limit");
                    s.reply_local(|o, _| {
                        write::error(o, "ERR Protocol error: client query buffer limit reached")
                    });
                    s.closing = true;
                    inbuf.clear();
                }
            }
            crate::upstream::conn::shrink(&mut inbuf);
            s.flush_ready();
            if s.kill || (s.closing && s.pending.is_empty() && s.out.is_empty()) {
                break;
            }
            if !retry_armed {
                if let Some(next) = s.retries.iter().map(|r| r.0).min() {
                    retry_sleep.as_mut().reset(next);
                    retry_armed = true;
                }
            }
            let can_read = !s.closing && s.pending.len() < max_pipeline && s.out.len() < OUT_HIGH;
            if can_read && inbuf.capacity() - inbuf.len() < FIRST_READ / 2 {
                // Small until the client shows it sends more.
                inbuf.reserve(if inbuf.capacity() == 0 {
                    FIRST_READ
                } else {
                    READ_CHUNK
                });
            }
            if !s.out.is_empty() && !s.pending.is_empty() && !yielded {
                // More replies are on their way (a pipeline spread over several nodes): let
                // the other backend connections deliver theirs first, so one write carries
                // them all. At most once per write, so a slow node delays nothing.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                Some(reply) = rx.recv() => {
                    s.on_reply(reply);
                    while let Ok(reply) = rx.try_recv() {
                        s.on_reply(reply);
                    }
                }
                r = wr.write_buf(&mut s.out), if !s.out.is_empty() => {
                    match r {
                        Ok(n) => {
                            yielded = false;
                            s.stats.bytes_out += n as u64;
                            crate::upstream::conn::shrink(&mut s.out);
                            // Like Redis, a reply counts as interaction for the idle timeout.
                            if !idle.is_zero() {
                                idle_sleep.as_mut().reset(Instant::now() + idle);
                            }
                        }
                        Err(_) => break,
                    }
                }
                r = rd.read_buf(&mut inbuf), if can_read => {
                    match r {
                        Ok(0) | Err(_) => {
                            // Half-close: answer what was sent, then close. A blocked command
                            // or a transaction would wait for ever for a client that is gone:
                            // those end now (closing their connections releases the node).
                            if s.holds_dedicated() {
                                break;
                            }
                            s.closing = true;
                            inbuf.clear();
                        }
                        Ok(n) => {
                            s.stats.bytes_in += n as u64;
                            if !idle.is_zero() {
                                idle_sleep.as_mut().reset(Instant::now() + idle);
                            }
                        }
                    }
                }
                () = &mut retry_sleep, if retry_armed => {
                    retry_armed = false;
                    s.run_due_retries();
                }
                // As in Redis, subscribers are exempt from the idle timeout.
                () = &mut idle_sleep, if !idle.is_zero() && s.pending.is_empty() && s.pubsub.is_none() => {
                    tracing::debug!(client = %s.peer, "closing idle client");
                    break;
                }
                r = &mut stop, if !s.closing => {
                    let _ = r;
                    s.closing = true;
                }
            }
        }
        let _ = wr.shutdown().await;
        s.stats.flush(&s.shared.metrics, 0);
    }

    /// Queues a reply slotmux makes itself, keeping request order.
    fn reply_local(&mut self, f: impl FnOnce(&mut BytesMut, Proto)) {
        if self.pending.is_empty() {
            f(&mut self.out, self.proto);
        } else {
            let mut b = BytesMut::new();
            f(&mut b, self.proto);
            self.push(Entry::Ready(b.freeze()));
        }
    }

    fn reply_error(&mut self, msg: &str) {
        self.reply_local(|o, _| write::error(o, msg));
    }

    /// Queues an entry with the metadata of the command being handled (if any).
    fn push(&mut self, e: Entry) {
        self.pending.push_back(e);
        self.meta.push_back(self.cur.take());
    }

    fn flush_ready(&mut self) {
        let mut now = None;
        while let Some(Entry::Ready(frame)) = self.pending.front() {
            self.out.extend_from_slice(frame);
            if let Some(Some(m)) = self.meta.pop_front() {
                let t = *now.get_or_insert_with(Instant::now);
                let took = t.saturating_duration_since(m.started);
                self.stats
                    .record(&self.shared.metrics, m.name, frame, took.as_secs_f64());
                if took >= self.shared.config.slowlog_threshold {
                    self.shared
                        .slowlog
                        .record(took, &m.frame, self.peer, self.name.as_ref());
                }
            }
            self.pending.pop_front();
            self.base += 1;
        }
        if let Some(t) = now {
            self.stats
                .maybe_flush(&self.shared.metrics, t.into_std(), self.pending.len());
        }
    }

    fn handle(&mut self, frame: Bytes, ranges: &[(usize, usize)], started: Instant) {
        let out_before = self.out.len();
        self.cur = Some(Meta {
            name: "unknown",
            started,
            frame: frame.clone(),
        });
        self.handle_inner(frame, ranges);
        // Answered at once (a local reply straight into the output): record it now.
        if let Some(m) = self.cur.take() {
            let reply = self.out.get(out_before..).unwrap_or_default();
            self.stats.record(
                &self.shared.metrics,
                m.name,
                reply,
                m.started.elapsed().as_secs_f64(),
            );
        }
    }

    fn handle_inner(&mut self, frame: Bytes, ranges: &[(usize, usize)]) {
        let args = Args {
            frame: &frame,
            ranges,
        };
        let Some(name) = args.get(0) else { return };
        let Some(mut spec) = command::lookup(name) else {
            if !self.authed {
                return self.reply_error("NOAUTH Authentication required.");
            }
            return self.reply_error(&unknown_command(args));
        };
        if !self.authed && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
            return self.reply_error("NOAUTH Authentication required.");
        }
        if !spec.subcommands.is_empty() && args.len() >= 2 {
            let sub = args.get(1).unwrap_or_default();
            match command::lookup_sub(spec, sub) {
                Some(s) => spec = s,
                None => {
                    let msg = format!(
                        "ERR unknown subcommand '{}'. Try {} HELP.",
                        String::from_utf8_lossy(&sub[..sub.len().min(128)]),
                        spec.name.to_ascii_uppercase()
                    );
                    return self.reply_error(&msg);
                }
            }
        }
        if let Some(m) = &mut self.cur {
            m.name = spec.name;
        }
        if !command::arity_ok(spec, args.len()) {
            return self.reply_error(&format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            ));
        }
        if self.pubsub.is_some() && self.refuse_in_subscribed_state(name) {
            return;
        }
        let readonly = command::is_readonly(spec);
        if matches!(spec.name, "eval" | "eval_ro" | "script|load") {
            let body = args
                .get(if spec.name == "script|load" { 2 } else { 1 })
                .unwrap_or_default();
            self.shared.scripts.remember(body);
        }
        // The snapshot is borrowed, not cloned, on the common path.
        let route = router::route(spec, args, self.topo.load(), &self.shared.cluster.registry);
        if let Route::Subscribe(k) = route {
            return self.subscribe(k, frame.clone(), args);
        }
        if let Route::Transaction(t) = route {
            let topo = self.topo.load().clone();
            return self.transaction(t, frame.clone(), args, spec, &topo);
        }
        if self.multi.is_some() {
            return self.queue_in_multi(route, frame.clone(), args);
        }
        let entry = self.base + self.pending.len() as u64;
        match route {
            Route::Transaction(_) | Route::Subscribe(_) => {}
            Route::Info => {
                let topo = self.topo.load().clone();
                let wanted: Vec<&[u8]> = (1..args.len()).filter_map(|i| args.get(i)).collect();
                let sections = crate::server::info_sections(&wanted);
                let text = crate::server::info_text(&self.shared, &topo, &sections);
                if !sections.contains(&"keyspace") || topo.masters.is_empty() {
                    return self.reply_local(|o, p| write::verbatim(o, p, text.as_bytes()));
                }
                let ask = Bytes::from_static(b"*2\r\n$4\r\nINFO\r\n$8\r\nkeyspace\r\n");
                let parts: Vec<Flight> = topo
                    .masters
                    .iter()
                    .map(|m| Flight::new(ask.clone(), Target::Node(m.clone()), true))
                    .collect();
                let n = parts.len();
                self.push(Entry::Many(Box::new(Fanout {
                    merge: Merge::Keyspace,
                    prefix: Some(text),
                    order: Vec::new(),
                    parts,
                    left: n,
                })));
                for i in 0..n {
                    self.send(entry << SUB_BITS | (i as u64 + 1));
                }
            }
            Route::Blocking(slot) => {
                self.push(Entry::One(
                    Flight::new(frame, Target::Slot(slot), readonly).via(Via::Dedicated),
                ));
                self.send(entry << SUB_BITS);
            }
            Route::Forward(target) => {
                self.push(Entry::One(Flight::new(frame, target, readonly)));
                self.send(entry << SUB_BITS);
            }
            Route::Local(l) => self.local(l, args),
            Route::Error(msg) => self.reply_error(&msg),
            Route::Scan { frame, slot } => {
                let mut f = Flight::new(frame, Target::Slot(slot), true);
                f.post = Post::Scan { slot };
                self.push(Entry::One(f));
                self.send(entry << SUB_BITS);
            }
            Route::LastWrite => {
                let target = match &self.last_write {
                    Some(n) => Target::Node(n.clone()),
                    None => Target::AnyMaster,
                };
                self.push(Entry::One(Flight::new(frame, target, true)));
                self.send(entry << SUB_BITS);
            }
            Route::Split(plan) => {
                if plan.parts.is_empty() {
                    return self.reply_error("CLUSTERDOWN Hash slot not served");
                }
                let n = plan.parts.len();
                let parts = plan
                    .parts
                    .into_iter()
                    .map(|(t, f)| Flight::new(f, t, readonly))
                    .collect();
                self.push(Entry::Many(Box::new(Fanout {
                    prefix: None,
                    merge: plan.merge,
                    order: plan.order,
                    parts,
                    left: n,
                })));
                for i in 0..n {
                    self.send(entry << SUB_BITS | (i as u64 + 1));
                }
            }
        }
    }

    /// Opens the transaction's own connection to `node`.
    fn pin(&mut self, node: Arc<Node>) -> bool {
        match node.dedicated(self.proto, Mode::Dedicated) {
            Some(conn) => {
                self.pinned = Some(Pinned { conn, node });
                true
            }
            None => false,
        }
    }

    /// Sends on the pinned connection a request whose reply slotmux already gave.
    fn send_pinned_silently(&self, frame: Bytes) {
        if let Some(p) = &self.pinned {
            let _ = p.conn.send(Request {
                frame,
                asking: false,
                tag: DISCARD_TAG,
                reply_to: self.tx.clone(),
            });
        }
    }

    fn push_pinned(&mut self, frame: Bytes, post: Post) {
        let entry = self.base + self.pending.len() as u64;
        let mut f = Flight::new(frame, Target::AnyMaster, false).via(Via::Pinned);
        f.post = post;
        self.push(Entry::One(f));
        self.send(entry << SUB_BITS);
    }

    fn transaction(
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
                    return self.reply_error("ERR MULTI calls can not be nested");
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
                    return self.reply_error("ERR WATCH inside MULTI is not allowed");
                }
                let slot = match command::slot_of(spec, args) {
                    command::SlotOf::One(s) => s,
                    command::SlotOf::CrossSlot => {
                        return self
                            .reply_error("CROSSSLOT Keys in request don't hash to the same slot")
                    }
                    _ => {
                        return self
                            .reply_error("ERR wrong number of arguments for 'watch' command")
                    }
                };
                let Some(node) = topo.master_for(slot).cloned() else {
                    return self.reply_error("CLUSTERDOWN Hash slot not served");
                };
                match &self.pinned {
                    Some(p) if !Arc::ptr_eq(&p.node, &node) => {
                        return self
                            .reply_error("CROSSSLOT Keys in request don't hash to the same slot")
                    }
                    Some(_) => {}
                    None => {
                        if !self.pin(node.clone()) {
                            return self.reply_error(&format!(
                                "CLUSTERDOWN slotmux cannot reach node {}",
                                node.addr
                            ));
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
                    return self.reply_error("ERR DISCARD without MULTI");
                }
                if self.pinned.is_some() {
                    self.push_pinned(frame, Post::Unpin);
                } else {
                    self.reply_local(|o, _| write::ok(o));
                }
            }
            Tx::Exec => {
                let Some(m) = self.multi.take() else {
                    return self.reply_error("ERR EXEC without MULTI");
                };
                if m.aborted {
                    // Closing the connection discards the transaction and the WATCHes.
                    self.pinned = None;
                    return self.reply_error(
                        "EXECABORT Transaction discarded because of previous errors.",
                    );
                }
                if self.pinned.is_none() {
                    // Only keyless commands were queued: any master runs them.
                    let Some(node) = topo.any_master(self.id as usize).cloned() else {
                        return self.reply_error("CLUSTERDOWN Hash slot not served");
                    };
                    if !self.pin(node.clone()) {
                        return self.reply_error(&format!(
                            "CLUSTERDOWN slotmux cannot reach node {}",
                            node.addr
                        ));
                    }
                    self.send_pinned_silently(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"));
                    for b in m.buffered {
                        self.send_pinned_silently(b);
                    }
                }
                self.push_pinned(frame, Post::Unpin);
            }
        }
    }

    /// A command between MULTI and EXEC: all keys of a transaction must share one slot, the
    /// first key pins the transaction to that slot's master.
    fn queue_in_multi(&mut self, route: Route, frame: Bytes, args: Args<'_>) {
        let slot = match &route {
            Route::Forward(Target::Slot(s)) | Route::Blocking(s) => Some(*s),
            Route::Scan { slot, .. } => Some(*slot),
            Route::Split(_) => {
                if let Some(m) = &mut self.multi {
                    m.aborted = true;
                }
                return self.reply_error("CROSSSLOT Keys in request don't hash to the same slot");
            }
            Route::Error(msg) => {
                if let Some(m) = &mut self.multi {
                    m.aborted = true;
                }
                let msg = msg.to_string();
                return self.reply_error(&msg);
            }
            Route::Local(crate::command::Local::Quit) => {
                return self.local(crate::command::Local::Quit, args)
            }
            _ => None,
        };
        let Some(m) = self.multi.as_mut() else { return };
        if m.aborted {
            return self.reply_local(|o, _| write::simple(o, "QUEUED"));
        }
        if let Some(s) = slot {
            match m.slot {
                Some(prev) if prev != s => {
                    m.aborted = true;
                    return self
                        .reply_error("CROSSSLOT Keys in request don't hash to the same slot");
                }
                Some(_) => {}
                None => {
                    m.slot = Some(s);
                    if self.pinned.is_none() {
                        let topo = self.topo.load().clone();
                        let Some(node) = topo.master_for(s).cloned() else {
                            if let Some(m) = &mut self.multi {
                                m.aborted = true;
                            }
                            return self.reply_error("CLUSTERDOWN Hash slot not served");
                        };
                        if !self.pin(node.clone()) {
                            if let Some(m) = &mut self.multi {
                                m.aborted = true;
                            }
                            return self.reply_error(&format!(
                                "CLUSTERDOWN slotmux cannot reach node {}",
                                node.addr
                            ));
                        }
                        let buffered = self
                            .multi
                            .as_mut()
                            .map(|m| std::mem::take(&mut m.buffered))
                            .unwrap_or_default();
                        self.send_pinned_silently(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"));
                        for b in buffered {
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

    fn holds_dedicated(&self) -> bool {
        self.pinned.is_some()
            || self.pubsub.is_some()
            || self
                .pending
                .iter()
                .any(|e| matches!(e, Entry::One(f) if f.via == Via::Dedicated))
    }

    fn flight(&mut self, tag: u64) -> Option<&mut Flight> {
        let i = (tag >> SUB_BITS).checked_sub(self.base)? as usize;
        match (self.pending.get_mut(i)?, tag & SUB_MASK) {
            (Entry::One(f), 0) => Some(f),
            (Entry::Many(m), part) if part > 0 => m.parts.get_mut(part as usize - 1),
            _ => None,
        }
    }

    /// Records a finished part; when the whole entry is done it becomes `Ready`.
    fn finish(&mut self, tag: u64, frame: Bytes) {
        let Some(i) = (tag >> SUB_BITS).checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        let Some(entry) = self.pending.get_mut(i) else {
            return;
        };
        match entry {
            Entry::One(f) => {
                let unpin = matches!(f.post, Post::Unpin);
                let frame = match f.post {
                    Post::None | Post::Unpin => frame,
                    Post::Scan { slot } if frame.first() == Some(&b'*') => {
                        router::scan_reply(&frame, slot, self.topo.load())
                    }
                    Post::Scan { .. } => frame,
                };
                *entry = Entry::Ready(frame);
                if unpin && self.multi.is_none() {
                    self.pinned = None;
                }
            }
            Entry::Many(m) => {
                let part = (tag & SUB_MASK) as usize;
                if let Some(f) = m.parts.get_mut(part.wrapping_sub(1)) {
                    if !matches!(f.state, FlightState::Done(_)) {
                        f.state = FlightState::Done(frame);
                        m.left -= 1;
                    }
                }
                if m.left == 0 {
                    let parts: Vec<Bytes> = m
                        .parts
                        .iter()
                        .map(|f| match &f.state {
                            FlightState::Done(b) => b.clone(),
                            _ => Bytes::new(),
                        })
                        .collect();
                    let merged = match (&m.merge, &m.prefix) {
                        (Merge::Keyspace, Some(prefix)) => {
                            match crate::merge::keyspace_text(&parts) {
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
                            }
                        }
                        _ => merge(m.merge, &parts, &m.order),
                    };
                    *entry = Entry::Ready(merged);
                }
            }
            Entry::Ready(_) => {}
        }
    }

    /// Sends (or resends) the request `tag` to where its target says.
    fn send(&mut self, tag: u64) {
        let lane = self.id as usize;
        let proto = self.proto;
        let reply_to = self.tx.clone();
        let pinned = self
            .pinned
            .as_ref()
            .map(|p| (p.conn.sender(), p.node.clone()));
        let permit = match self.flight(tag).map(|f| f.via) {
            Some(Via::Dedicated) => match self.shared.blocking_permit() {
                Some(p) => Some(p),
                None => {
                    let msg = format!(
                        "ERR slotmux: too many blocked clients (--max-blocking-clients {})",
                        self.shared.config.max_blocking_clients
                    );
                    return self.finish(tag, error_frame(&msg));
                }
            },
            _ => None,
        };
        let Some(f) = self.flight(tag) else { return };
        if f.via == Via::Pinned {
            let req = Request {
                frame: f.frame.clone(),
                asking: false,
                tag,
                reply_to,
            };
            f.state = FlightState::InFlight;
            let sent = match pinned {
                Some((conn, node)) => {
                    f.node = Some(node);
                    conn.send(req).is_ok()
                }
                None => false,
            };
            if !sent {
                self.finish(tag, error_frame("ERR slotmux: the transaction's connection was lost; the transaction was discarded"));
            }
            return;
        }
        let (node, asking) = match f.redirect.take() {
            Some((n, asking)) => (Some(n), asking),
            None => match &f.target {
                Target::Slot(s) => {
                    let s = *s;
                    (self.topo.load().master_for(s).cloned(), false)
                }
                Target::AnyMaster => (self.topo.load().any_master(lane).cloned(), false),
                Target::Node(n) => (Some(n.clone()), false),
            },
        };
        let Some(f) = self.flight(tag) else { return };
        let Some(node) = node else {
            let topo = self.topo.load().clone();
            let stats = &self.shared.cluster.stats;
            if topo.is_empty()
                && stats.failed.load(Ordering::Relaxed) > 0
                && stats.ok.load(Ordering::Relaxed) == 0
            {
                let why = self.shared.cluster.last_error().unwrap_or_default();
                let msg = format!("CLUSTERDOWN slotmux has no cluster topology yet ({why})");
                return self.finish(tag, error_frame(&msg));
            }
            return self.retry_later(
                tag,
                error_frame("CLUSTERDOWN Hash slot not served"),
                RETRY_CLUSTERDOWN,
            );
        };
        let req = Request {
            frame: f.frame.clone(),
            asking,
            tag,
            reply_to,
        };
        f.state = FlightState::InFlight;
        let readonly = f.readonly;
        let result = if f.via == Via::Dedicated {
            // A fresh connection per (re)send; the old one, if any, closes here.
            f.own = None;
            match (node.dedicated(proto, Mode::Dedicated), permit) {
                (Some(conn), Some(permit)) => {
                    let r = conn.send(req).map_err(|_| ());
                    f.own = Some((conn, permit));
                    r
                }
                _ => Err(()),
            }
        } else {
            node.send(proto, lane, req).map_err(|_| ())
        };
        let unreachable = match result {
            Ok(()) => {
                if !readonly && !matches!(&self.last_write, Some(n) if Arc::ptr_eq(n, &node)) {
                    self.last_write = Some(node.clone());
                }
                None
            }
            Err(_) => Some(format!(
                "CLUSTERDOWN slotmux cannot reach node {}",
                node.addr
            )),
        };
        // Moved, not cloned: every session shares the node's reference count, so each extra
        // clone is a cache line bouncing between cores on every request.
        if let Some(f) = self.flight(tag) {
            f.node = Some(node);
        }
        if let Some(msg) = unreachable {
            self.shared.cluster.request_refresh(Reason::NodeFailure);
            self.retry_later(tag, error_frame(&msg), RETRY_UNREACHABLE);
        }
    }

    /// EVALSHA met `-NOSCRIPT`: if slotmux has seen the script, load it on that node (same
    /// connection, so it runs first) and resend, once.
    fn reload_script(&mut self, tag: u64) -> bool {
        let lane = self.id as usize;
        let proto = self.proto;
        let reply_to = self.tx.clone();
        let Some(f) = self.flight(tag) else {
            return false;
        };
        if f.attempts == u8::MAX
            || !(f.frame.starts_with(b"*") && contains_ci(&f.frame, b"evalsha"))
        {
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
        let Some(node) = f.node.clone() else {
            return false;
        };
        f.attempts = u8::MAX;
        let Some(body) = self.shared.scripts.get(&frame[a..b]) else {
            return false;
        };
        let load = router::encode([&b"SCRIPT"[..], b"LOAD", &body].into_iter());
        let _ = node.send(
            proto,
            lane,
            Request {
                frame: load,
                asking: false,
                tag: DISCARD_TAG,
                reply_to,
            },
        );
        if let Some(f) = self.flight(tag) {
            f.redirect = Some((node, false));
        }
        self.send(tag);
        true
    }

    /// Schedules a resend with backoff, or gives the client `last_error` once the retry budget
    /// is spent.
    fn retry_later(&mut self, tag: u64, last_error: Bytes, why: usize) {
        let budget = self.shared.config.retry_budget;
        let Some(f) = self.flight(tag) else { return };
        let now = Instant::now();
        let first = *f.first_failure.get_or_insert(now);
        if now.duration_since(first) >= budget {
            return self.finish(tag, last_error);
        }
        f.attempts = f.attempts.saturating_add(1);
        let delay = Duration::from_millis((5u64 << f.attempts.min(7)).min(500));
        f.state = FlightState::WaitRetry;
        self.retries.push((now + delay, tag));
        self.shared.stats.retries[why].fetch_add(1, Ordering::Relaxed);
    }

    fn run_due_retries(&mut self) {
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
            if matches!(
                self.flight(tag).map(|f| &f.state),
                Some(FlightState::WaitRetry)
            ) {
                self.send(tag);
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        if pubsub::is_stream_tag(reply.tag) {
            return self.on_stream(reply);
        }
        let tag = reply.tag;
        let max_redirects = self.shared.config.max_redirects;
        let Some(f) = self.flight(tag) else { return };
        if !matches!(f.state, FlightState::InFlight) {
            return;
        }
        let frame = match reply.result {
            Ok(frame) => frame,
            Err(e) => return self.on_upstream_error(tag, e),
        };
        if frame.first() != Some(&b'-') || f.via == Via::Pinned {
            return self.finish(tag, frame);
        }
        match classify(&frame) {
            Some(Redirect::Moved { slot, addr }) | Some(Redirect::Ask { slot, addr }) => {
                let ask = frame.starts_with(b"-ASK ");
                f.redirects += 1;
                let over = f.redirects > max_redirects;
                let addr = full_addr(addr, f.node.as_deref());
                let stats = &self.shared.stats;
                let stat = if ask { &stats.ask } else { &stats.moved };
                stat.fetch_add(1, Ordering::Relaxed);
                if over {
                    return self.finish(tag, frame);
                }
                let node = if ask {
                    self.shared.cluster.registry.get_or_create(&addr)
                } else {
                    self.shared.cluster.note_moved(slot, &addr)
                };
                if let Some(f) = self.flight(tag) {
                    f.redirect = Some((node, ask));
                }
                self.send(tag);
            }
            Some(Redirect::ClusterDown) => {
                self.shared.cluster.request_refresh(Reason::ClusterDown);
                self.retry_later(tag, frame, RETRY_CLUSTERDOWN);
            }
            Some(Redirect::TryAgain) | Some(Redirect::Loading) => {
                self.retry_later(tag, frame, RETRY_TRYAGAIN)
            }
            None if frame.starts_with(b"-NOSCRIPT") && self.reload_script(tag) => {}
            None => self.finish(tag, frame),
        }
    }

    fn on_upstream_error(&mut self, tag: u64, e: UpstreamError) {
        self.shared.cluster.request_refresh(Reason::NodeFailure);
        let Some(f) = self.flight(tag) else { return };
        let addr = f
            .node
            .as_ref()
            .map(|n| n.addr.to_string())
            .unwrap_or_default();
        if e.always_retryable() || f.readonly {
            let msg = format!("CLUSTERDOWN slotmux: node {addr} unavailable ({e})");
            let why = if e.always_retryable() {
                RETRY_UNREACHABLE
            } else {
                RETRY_LOST
            };
            return self.retry_later(tag, error_frame(&msg), why);
        }
        self.shared
            .stats
            .unknown_outcome
            .fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "ERR slotmux: {e} on node {addr} after the command was sent; it may or may not have been executed"
        );
        self.finish(tag, error_frame(&msg));
    }
}

fn error_frame(msg: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 3);
    write::error(&mut b, msg);
    b.freeze()
}

/// Redis's text for an unknown command, with the first arguments quoted.
fn unknown_command(args: Args<'_>) -> String {
    let name = args.get(0).unwrap_or_default();
    let mut rest = String::new();
    for i in 1..args.len() {
        if rest.len() >= 128 {
            break;
        }
        let a = args.get(i).unwrap_or_default();
        let room = 128 - rest.len();
        rest.push('\'');
        rest.push_str(&String::from_utf8_lossy(&a[..a.len().min(room)]));
        rest.push_str("' ");
    }
    format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(&name[..name.len().min(128)]),
        rest
    )
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .take(64)
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A redirect address with an empty host (`:7001`) means "the host you asked".
fn full_addr(addr: &str, asked: Option<&Node>) -> String {
    if let Some(port) = addr.strip_prefix(':') {
        if let Some(n) = asked {
            if let Some((host, _)) = n.addr.rsplit_once(':') {
                return format!("{host}:{port}");
            }
        }
    }
    addr.to_string()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
