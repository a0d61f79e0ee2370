//! One client connection: read commands, route them, write replies in request order.
//!
//! Owns: the per-client state (protocol version, name, authentication), the ordered queue of
//! in-flight commands, redirection and retry handling (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
//! lost connections) within the retry budget, backpressure (stop reading at `max_pipeline`
//! commands in flight), and coalesced writes to the client.
//! Must not: block on a backend (everything backend-bound goes through unbounded queues and
//! comes back as [`Reply`] messages), allocate per forwarded command in the steady state, or
//! resend a command that may have run unless it is read-only.

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

use crate::cluster::key_slot;
use crate::command::{self, Args, Handling, Local, SlotOf};
use crate::resp::reply::{classify, Redirect};
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write::{self, Proto};
use crate::server::Shared;
use crate::upstream::{Node, Reply, Request, UpstreamError};

const READ_CHUNK: usize = 16 * 1024;
/// Stop reading from a client while this much output waits for it.
const OUT_HIGH: usize = 1 << 20;

/// Where a command goes.
#[derive(Debug, Clone)]
enum Target {
    Slot(u16),
    AnyMaster,
}

#[derive(Debug)]
enum State {
    InFlight,
    WaitRetry,
    Ready(Bytes),
}

#[derive(Debug)]
struct Pending {
    frame: Bytes,
    state: State,
    target: Target,
    /// The node it was last sent to (for errors and MOVED with an empty host).
    node: Option<Arc<Node>>,
    readonly: bool,
    /// One-shot destination from MOVED or ASK (with `true` for ASK: send ASKING first).
    redirect: Option<(Arc<Node>, bool)>,
    redirects: u8,
    attempts: u8,
    first_failure: Option<Instant>,
}

pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    proto: Proto,
    name: Option<Bytes>,
    authed: bool,
    topo: arc_swap::Cache<
        Arc<arc_swap::ArcSwap<crate::cluster::Topology>>,
        Arc<crate::cluster::Topology>,
    >,
    tx: mpsc::UnboundedSender<Reply>,
    pending: VecDeque<Pending>,
    /// Tag of `pending[0]`; tags are consecutive.
    base_tag: u64,
    retries: Vec<(Instant, u64)>,
    out: BytesMut,
    closing: bool,
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
            pending: VecDeque::with_capacity(16),
            base_tag: 0,
            retries: Vec::new(),
            out: BytesMut::with_capacity(READ_CHUNK),
            closing: false,
        };
        let cfg = s.shared.config.clone();
        let mut scanner = RequestScanner::new(Limits {
            max_bulk_len: cfg.proto_max_bulk_len.min(usize::MAX as u64) as usize,
            max_args: i32::MAX as usize,
        });
        let query_limit = cfg.client_query_buffer_limit.min(usize::MAX as u64) as usize;
        let max_pipeline = cfg.max_pipeline as usize;
        let idle = cfg.idle_timeout;
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let (mut rd, mut wr) = stream.split();
        let retry_sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(retry_sleep);
        let idle_sleep = tokio::time::sleep(if idle.is_zero() {
            Duration::from_secs(86400 * 365)
        } else {
            idle
        });
        tokio::pin!(idle_sleep);
        let mut retry_armed = false;
        if *shutdown.borrow() {
            return;
        }

        loop {
            // Parse whatever is buffered while there is room in the pipeline.
            if !s.closing && !inbuf.is_empty() {
                while s.pending.len() < max_pipeline && !s.closing {
                    match scanner.next(&mut inbuf) {
                        Ok(Some(frame)) => s.handle(frame, scanner.args()),
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
            s.flush_ready();
            if s.closing && s.pending.is_empty() && s.out.is_empty() {
                break;
            }
            if !retry_armed {
                if let Some(next) = s.retries.iter().map(|r| r.0).min() {
                    retry_sleep.as_mut().reset(next);
                    retry_armed = true;
                }
            }
            let can_read = !s.closing && s.pending.len() < max_pipeline && s.out.len() < OUT_HIGH;
            if can_read && inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                inbuf.reserve(READ_CHUNK);
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
                    if r.is_err() {
                        break;
                    }
                }
                r = rd.read_buf(&mut inbuf), if can_read => {
                    match r {
                        Ok(0) | Err(_) => {
                            // Half-close: answer what was sent, then close, as Redis does.
                            s.closing = true;
                            inbuf.clear();
                        }
                        Ok(_) => {
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
                () = &mut idle_sleep, if !idle.is_zero() && s.pending.is_empty() => {
                    tracing::debug!(client = %s.peer, "closing idle client");
                    break;
                }
                r = shutdown.changed(), if !s.closing => {
                    let _ = r;
                    s.closing = true;
                }
            }
        }
        let _ = wr.shutdown().await;
    }

    fn next_tag(&self) -> u64 {
        self.base_tag + self.pending.len() as u64
    }

    /// Queues a reply slotmux makes itself, keeping request order.
    fn reply_local(&mut self, f: impl FnOnce(&mut BytesMut, Proto)) {
        if self.pending.is_empty() {
            f(&mut self.out, self.proto);
        } else {
            let mut b = BytesMut::new();
            f(&mut b, self.proto);
            self.push_ready(b.freeze());
        }
    }

    fn push_ready(&mut self, frame: Bytes) {
        self.pending.push_back(Pending {
            frame: Bytes::new(),
            state: State::Ready(frame),
            target: Target::AnyMaster,
            node: None,
            readonly: true,
            redirect: None,
            redirects: 0,
            attempts: 0,
            first_failure: None,
        });
    }

    fn flush_ready(&mut self) {
        while let Some(p) = self.pending.front() {
            if let State::Ready(frame) = &p.state {
                self.out.extend_from_slice(frame);
                self.pending.pop_front();
                self.base_tag += 1;
            } else {
                break;
            }
        }
    }

    fn handle(&mut self, frame: Bytes, ranges: &[(usize, usize)]) {
        let args = Args {
            frame: &frame,
            ranges,
        };
        let Some(name) = args.get(0) else { return };
        let Some(mut spec) = command::lookup(name) else {
            if !self.authed {
                return self.reply_local(|o, _| write::error(o, "NOAUTH Authentication required."));
            }
            let msg = unknown_command(args);
            return self.reply_local(|o, _| write::error(o, &msg));
        };
        if !self.authed && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
            return self.reply_local(|o, _| write::error(o, "NOAUTH Authentication required."));
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
                    return self.reply_local(|o, _| write::error(o, &msg));
                }
            }
        }
        if !command::arity_ok(spec, args.len()) {
            let msg = format!("ERR wrong number of arguments for '{}' command", spec.name);
            return self.reply_local(|o, _| write::error(o, &msg));
        }
        let readonly = command::is_readonly(spec);
        let target = match command::policy(spec) {
            Handling::Local(l) => return self.local(l, args),
            Handling::Refused(why) => {
                let msg = format!(
                    "ERR slotmux: '{}' {why}",
                    String::from_utf8_lossy(name).to_ascii_lowercase()
                );
                return self.reply_local(|o, _| write::error(o, &msg));
            }
            Handling::AnyMaster => Target::AnyMaster,
            Handling::KeyedUnlessBlock | Handling::Keyed => {
                if command::policy(spec) == Handling::KeyedUnlessBlock && has_block_arg(args) {
                    return self.reply_local(|o, _| {
                        write::error(o, "ERR slotmux: XREAD/XREADGROUP with BLOCK is a blocking command; slotmux does not give blocking commands a dedicated connection yet")
                    });
                }
                match command::slot_of(spec, args) {
                    SlotOf::One(s) => Target::Slot(s),
                    SlotOf::NoKeys | SlotOf::BadArgs => Target::AnyMaster,
                    SlotOf::CrossSlot => {
                        return self.reply_local(|o, _| {
                            write::error(o, "CROSSSLOT Keys in request don't hash to the same slot")
                        })
                    }
                }
            }
        };
        let tag = self.next_tag();
        self.pending.push_back(Pending {
            frame,
            state: State::InFlight,
            target,
            node: None,
            readonly,
            redirect: None,
            redirects: 0,
            attempts: 0,
            first_failure: None,
        });
        self.send(tag);
    }

    fn index_of(&self, tag: u64) -> Option<usize> {
        let i = tag.checked_sub(self.base_tag)? as usize;
        (i < self.pending.len()).then_some(i)
    }

    /// Sends (or resends) pending command `tag` to where its target says.
    fn send(&mut self, tag: u64) {
        let Some(i) = self.index_of(tag) else { return };
        let lane = self.id as usize;
        let topo = self.topo.load();
        let p = &mut self.pending[i];
        let (node, asking) = match p.redirect.take() {
            Some((n, asking)) => (Some(n), asking),
            None => match &p.target {
                Target::Slot(s) => (topo.master_for(*s).cloned(), false),
                Target::AnyMaster => (topo.any_master(lane).cloned(), false),
            },
        };
        let Some(node) = node else {
            let stats = &self.shared.cluster.stats;
            if topo.is_empty()
                && stats.failed.load(Ordering::Relaxed) > 0
                && stats.ok.load(Ordering::Relaxed) == 0
            {
                let why = self.shared.cluster.last_error().unwrap_or_default();
                let msg = format!("CLUSTERDOWN slotmux has no cluster topology yet ({why})");
                p.state = State::Ready(error_frame(&msg));
                return;
            }
            return self.retry_later(tag, error_frame("CLUSTERDOWN Hash slot not served"));
        };
        let req = Request {
            frame: p.frame.clone(),
            asking,
            tag,
            reply_to: self.tx.clone(),
        };
        p.state = State::InFlight;
        match node.send(self.proto, lane, req) {
            Ok(()) => p.node = Some(node),
            Err(_) => {
                p.node = Some(node.clone());
                self.shared.cluster.request_refresh();
                let msg = format!("CLUSTERDOWN slotmux cannot reach node {}", node.addr);
                self.retry_later(tag, error_frame(&msg));
            }
        }
    }

    /// Schedules a resend with backoff, or gives the client `last_error` once the retry budget
    /// is spent.
    fn retry_later(&mut self, tag: u64, last_error: Bytes) {
        let budget = self.shared.config.retry_budget;
        let Some(i) = self.index_of(tag) else { return };
        let p = &mut self.pending[i];
        let now = Instant::now();
        let first = *p.first_failure.get_or_insert(now);
        if now.duration_since(first) >= budget {
            p.state = State::Ready(last_error);
            return;
        }
        p.attempts = p.attempts.saturating_add(1);
        let delay = Duration::from_millis((5u64 << p.attempts.min(7)).min(500));
        p.state = State::WaitRetry;
        self.retries.push((now + delay, tag));
        self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
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
            if let Some(i) = self.index_of(tag) {
                if matches!(self.pending[i].state, State::WaitRetry) {
                    self.send(tag);
                }
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(i) = self.index_of(reply.tag) else {
            return;
        };
        if !matches!(self.pending[i].state, State::InFlight) {
            return;
        }
        let frame = match reply.result {
            Ok(frame) => frame,
            Err(e) => return self.on_upstream_error(reply.tag, i, e),
        };
        if frame.first() != Some(&b'-') {
            self.pending[i].state = State::Ready(frame);
            return;
        }
        let max_redirects = self.shared.config.max_redirects;
        match classify(&frame) {
            Some(Redirect::Moved { slot, addr }) => {
                self.shared.stats.moved.fetch_add(1, Ordering::Relaxed);
                let p = &mut self.pending[i];
                p.redirects += 1;
                if p.redirects > max_redirects {
                    p.state = State::Ready(frame);
                    return;
                }
                let addr = full_addr(addr, p.node.as_deref());
                let node = self.shared.cluster.note_moved(slot, &addr);
                self.pending[i].redirect = Some((node, false));
                self.send(reply.tag);
            }
            Some(Redirect::Ask { addr, .. }) => {
                self.shared.stats.ask.fetch_add(1, Ordering::Relaxed);
                let p = &mut self.pending[i];
                p.redirects += 1;
                if p.redirects > max_redirects {
                    p.state = State::Ready(frame);
                    return;
                }
                let addr = full_addr(addr, p.node.as_deref());
                let node = self.shared.cluster.registry.get_or_create(&addr);
                self.pending[i].redirect = Some((node, true));
                self.send(reply.tag);
            }
            Some(Redirect::TryAgain) | Some(Redirect::ClusterDown) | Some(Redirect::Loading) => {
                if matches!(classify(&frame), Some(Redirect::ClusterDown)) {
                    self.shared.cluster.request_refresh();
                }
                self.retry_later(reply.tag, frame);
            }
            None => self.pending[i].state = State::Ready(frame),
        }
    }

    fn on_upstream_error(&mut self, tag: u64, i: usize, e: UpstreamError) {
        let p = &self.pending[i];
        let addr = p
            .node
            .as_ref()
            .map(|n| n.addr.to_string())
            .unwrap_or_default();
        self.shared.cluster.request_refresh();
        if e.always_retryable() || p.readonly {
            let msg = format!("CLUSTERDOWN slotmux: node {addr} unavailable ({e})");
            return self.retry_later(tag, error_frame(&msg));
        }
        self.shared
            .stats
            .unknown_outcome
            .fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "ERR slotmux: {e} on node {addr} after the command was sent; it may or may not have been executed"
        );
        self.pending[i].state = State::Ready(error_frame(&msg));
    }

    fn local(&mut self, cmd: Local, args: Args<'_>) {
        let arg = |i: usize| args.get(i).unwrap_or_default();
        match cmd {
            Local::Ping => match args.len() {
                1 => self.reply_local(|o, _| write::simple(o, "PONG")),
                2 => self.reply_local(|o, _| write::bulk(o, arg(1))),
                _ => self.reply_local(|o, _| {
                    write::error(o, "ERR wrong number of arguments for 'ping' command")
                }),
            },
            Local::Echo => self.reply_local(|o, _| write::bulk(o, arg(1))),
            Local::Quit => {
                self.reply_local(|o, _| write::ok(o));
                self.closing = true;
            }
            Local::Select => match crate::resp::parse_i64(arg(1)) {
                Some(0) => self.reply_local(|o, _| write::ok(o)),
                Some(_) => self.reply_local(|o, _| {
                    write::error(o, "ERR SELECT is not allowed in cluster mode")
                }),
                None => self.reply_local(|o, _| {
                    write::error(o, "ERR value is not an integer or out of range")
                }),
            },
            Local::ReadOnlyWrite | Local::ClientOk => self.reply_local(|o, _| write::ok(o)),
            Local::Auth => self.auth(args),
            Local::Hello => self.hello(args),
            Local::Reset => {
                self.proto = Proto::Resp2;
                self.name = None;
                self.authed = self.shared.config.requirepass.is_none();
                self.reply_local(|o, _| write::simple(o, "RESET"));
            }
            Local::ClientSetName => {
                let name = arg(2);
                if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                    return self.reply_local(|o, _| {
                        write::error(o, "ERR Client names cannot contain spaces, newlines or special characters.")
                    });
                }
                self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
                self.reply_local(|o, _| write::ok(o));
            }
            Local::ClientGetName => {
                let name = self.name.clone();
                self.reply_local(|o, p| match &name {
                    Some(n) => write::bulk(o, n),
                    None => write::null(o, p),
                });
            }
            Local::ClientId => {
                let id = self.id as i64;
                self.reply_local(|o, _| write::integer(o, id));
            }
            Local::ClientInfo => {
                let line = self.client_line();
                self.reply_local(|o, p| write::verbatim(o, p, line.as_bytes()));
            }
            Local::ClusterKeySlot => {
                let slot = key_slot(arg(2)) as i64;
                self.reply_local(|o, _| write::integer(o, slot));
            }
            Local::Info => {
                let text = crate::server::info_text(&self.shared, self.topo.load());
                self.reply_local(|o, p| write::verbatim(o, p, text.as_bytes()));
            }
        }
    }

    fn client_line(&self) -> String {
        format!(
            "id={} addr={} laddr={} name={} db=0 resp={} lib=slotmux\n",
            self.id,
            self.peer,
            self.local,
            self.name
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            self.proto.number()
        )
    }

    fn check_password(&self, user: &[u8], pass: &[u8]) -> Result<(), &'static str> {
        const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
        match &self.shared.config.requirepass {
            // The default user has no password: Redis accepts any password for it.
            None if user == b"default" => Ok(()),
            None => Err(WRONGPASS),
            Some(want) if user == b"default" && constant_time_eq(want.as_bytes(), pass) => Ok(()),
            Some(_) => Err(WRONGPASS),
        }
    }

    fn auth(&mut self, args: Args<'_>) {
        let (user, pass) = match args.len() {
            2 => {
                if self.shared.config.requirepass.is_none() {
                    return self.reply_local(|o, _| write::error(o, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"));
                }
                (&b"default"[..], args.get(1).unwrap_or_default())
            }
            3 => (
                args.get(1).unwrap_or_default(),
                args.get(2).unwrap_or_default(),
            ),
            _ => return self.reply_local(|o, _| write::error(o, "ERR syntax error")),
        };
        match self.check_password(user, pass) {
            Ok(()) => {
                self.authed = true;
                self.reply_local(|o, _| write::ok(o));
            }
            Err(e) => self.reply_local(|o, _| write::error(o, e)),
        }
    }

    fn hello(&mut self, args: Args<'_>) {
        let mut proto = self.proto;
        let mut i = 1;
        if let Some(v) = args.get(1) {
            match crate::resp::parse_i64(v) {
                Some(2) => proto = Proto::Resp2,
                Some(3) => proto = Proto::Resp3,
                Some(_) => {
                    return self.reply_local(|o, _| {
                        write::error(o, "NOPROTO unsupported protocol version")
                    })
                }
                None => {
                    return self.reply_local(|o, _| {
                        write::error(o, "ERR Protocol version is not an integer or out of range")
                    })
                }
            }
            i = 2;
        }
        let mut name: Option<Option<Bytes>> = None;
        let mut auth: Option<(&[u8], &[u8])> = None;
        while i < args.len() {
            let opt = args.get(i).unwrap_or_default();
            let more = args.len() - i - 1;
            if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                auth = Some((
                    args.get(i + 1).unwrap_or_default(),
                    args.get(i + 2).unwrap_or_default(),
                ));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                let n = args.get(i + 1).unwrap_or_default();
                if n.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                    return self.reply_local(|o, _| {
                        write::error(o, "ERR Client names cannot contain spaces, newlines or special characters.")
                    });
                }
                name = Some((!n.is_empty()).then(|| Bytes::copy_from_slice(n)));
                i += 2;
            } else {
                let msg = format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                );
                return self.reply_local(|o, _| write::error(o, &msg));
            }
        }
        if let Some((user, pass)) = auth {
            if let Err(e) = self.check_password(user, pass) {
                return self.reply_local(|o, _| write::error(o, e));
            }
            self.authed = true;
        }
        if !self.authed {
            return self.reply_local(|o, _| {
                write::error(o, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
            });
        }
        if let Some(n) = name {
            self.name = n;
        }
        self.proto = proto;
        let id = self.id as i64;
        self.reply_local(|o, p| {
            write::map_header(o, p, 7);
            write::bulk(o, b"server");
            write::bulk(o, b"redis");
            write::bulk(o, b"version");
            write::bulk(o, crate::REDIS_VERSION.as_bytes());
            write::bulk(o, b"proto");
            write::integer(o, p.number());
            write::bulk(o, b"id");
            write::integer(o, id);
            write::bulk(o, b"mode");
            write::bulk(o, b"standalone");
            write::bulk(o, b"role");
            write::bulk(o, b"master");
            write::bulk(o, b"modules");
            write::array_header(o, 0);
        });
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

fn has_block_arg(args: Args<'_>) -> bool {
    (1..args.len()).any(|i| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"BLOCK"))
    })
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
