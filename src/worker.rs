//! Shared-nothing workers: each one an OS thread with a current-thread Tokio runtime that owns
//! its client sessions and its own connections to every node.
//!
//! Owns: starting and stopping the worker threads, placing each accepted client on the least
//! loaded worker, and inside a worker the table of its shared backend links (indexed by node
//! id, protocol and lane: no lock, no hashing, no atomic per request), the tick that drops hung
//! or forgotten links and flushes their metrics, and the per-worker filter that keeps EVAL from
//! locking the shared script store for scripts it has already seen, and its hot-key sampler.
//! Must not: route or parse (sessions do), or let anything on the request path cross threads:
//! the only shared structures a request touches are read-only (configuration, the topology
//! snapshot).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::resp::write::Proto;
use crate::session::Session;
use crate::shared::{Permit, Shared};
use crate::upstream::connect::Credentials;
use crate::upstream::{Inbox, Link, LinkKind, Node, OwnedLink, Signal, UpstreamError};

/// How often a worker checks its links for hung nodes and flushes their metrics.
const TICK: Duration = Duration::from_millis(100);

/// What a worker is told from other threads.
pub enum WorkerMsg {
    /// A client to serve.
    Client(Incoming),
    /// CLIENT KILL of one of its clients.
    Kill(u64),
    /// Shutdown: every session finishes what is in flight and closes.
    Drain,
    /// The end: the worker's remaining sessions are dropped and its thread returns.
    Stop,
    /// CLIENT UNPAUSE: sessions holding a paused command try it again.
    Unpause,
    /// An invalidation for a client that another client's tracking redirects to.
    Invalidate(u64, bytes::Bytes),
}

/// One worker's state, shared (`Rc`) by its sessions.
pub struct Worker {
    pub index: usize,
    pub shared: Arc<Shared>,
    /// This worker's own channel (its clients' registry entries kill through it).
    pub tx: Option<mpsc::UnboundedSender<WorkerMsg>>,
    /// Its sessions' inboxes, by client id, for kills and the drain.
    sessions: RefCell<HashMap<u64, Weak<Inbox>>>,
    draining: std::cell::Cell<bool>,
    lanes: usize,
    /// Shared links by user (0: the sessions' default identity), then node, protocol, reads
    /// and lane.
    links: RefCell<Vec<Vec<Option<Rc<Link>>>>>,
    /// Client users with links of their own here (`--auth-mode passthrough`), by [`UserId`];
    /// entry 0 stays empty (the default identity).
    users: RefCell<Vec<Option<UserSlot>>>,
    /// What user 0's links authenticate as: slotmux's backend identity (`None`), or in
    /// passthrough mode no AUTH at all (a client that has not authenticated is Redis's
    /// `default` user).
    default_creds: Option<Arc<Credentials>>,
    /// Links taken out of the table (their node was forgotten) that still wait for replies:
    /// ticked for the reply timeout until they end.
    retiring: RefCell<Vec<Rc<Link>>>,
    /// One connected, unused dedicated link per node and protocol that has needed one: a
    /// blocking command or a WATCH is written at once, in the order the clients sent them,
    /// instead of after a connect (which let a later command of another client overtake it).
    spare: RefCell<Vec<Spare>>,
    /// Tracking clients' links: ticked like the shared ones (a hung node times them out).
    tracked: RefCell<Vec<Weak<Link>>>,
    /// Fast hashes of script bodies this worker has put in the shared store, and the store's
    /// eviction count when the set was last valid.
    scripts_seen: RefCell<(u64, HashSet<u64>)>,
    /// The hot-key sampler (`--hotkeys off`: none) and when it last published.
    hot: Option<RefCell<crate::hotkeys::Sketch>>,
    hot_published: std::cell::Cell<Instant>,
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        tx: Option<mpsc::UnboundedSender<WorkerMsg>>,
    ) -> Worker {
        let hot = shared.config.hotkeys == "on";
        let passthrough = shared.config.auth_mode == "passthrough";
        Worker {
            index,
            tx,
            sessions: RefCell::new(HashMap::new()),
            draining: std::cell::Cell::new(false),
            lanes: usize::from(shared.config.backend_connections.max(1)),
            shared,
            links: RefCell::new(Vec::new()),
            users: RefCell::new(vec![None]),
            default_creds: passthrough.then(|| Arc::new(Credentials::default())),
            retiring: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            tracked: RefCell::new(Vec::new()),
            scripts_seen: RefCell::new((0, HashSet::new())),
            hot: hot.then(|| {
                RefCell::new(crate::hotkeys::Sketch::new(
                    (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ std::process::id() as u64,
                ))
            }),
            hot_published: std::cell::Cell::new(Instant::now()),
        }
    }

    /// A test worker on the current thread (must run inside a `LocalSet`).
    pub fn for_tests(shared: Arc<Shared>) -> Rc<Worker> {
        let w = Rc::new(Worker::new(0, shared, None));
        tokio::task::spawn_local(w.clone().tick_loop());
        w
    }

    /// Registers a session's inbox (kills and the drain reach it); a session that starts
    /// after the drain began is told at once.
    pub fn enter(&self, id: u64, inbox: &Rc<Inbox>) {
        self.sessions.borrow_mut().insert(id, Rc::downgrade(inbox));
        if self.draining.get() {
            inbox.signal(Signal::Drain);
        }
    }

    pub fn leave(&self, id: u64) {
        self.sessions.borrow_mut().remove(&id);
    }

    /// An invalidation redirected to session `id`, if it is still here.
    fn deliver(&self, id: u64, keys: bytes::Bytes) {
        let inbox = self.sessions.borrow().get(&id).and_then(Weak::upgrade);
        if let Some(inbox) = inbox {
            inbox.push(crate::upstream::Reply {
                tag: crate::session::REDIRECTED_TAG,
                result: Ok(keys),
            });
        }
    }

    fn signal(&self, id: Option<u64>, s: Signal) {
        let sessions = self.sessions.borrow();
        let targets: Vec<Rc<Inbox>> = match id {
            Some(id) => sessions
                .get(&id)
                .and_then(Weak::upgrade)
                .into_iter()
                .collect(),
            None => sessions.values().filter_map(Weak::upgrade).collect(),
        };
        drop(sessions);
        for inbox in targets {
            inbox.signal(s);
        }
    }

    /// This worker's shared link `lane` to `node` for protocol `proto`, opened if needed.
    /// `NotSent` when the node is in connect backoff.
    #[inline]
    pub fn link(
        &self,
        node: &Arc<Node>,
        proto: Proto,
        lane: usize,
        user: UserId,
    ) -> Result<Rc<Link>, UpstreamError> {
        self.shared_link(node, proto, lane, false, user)
    }

    /// Like [`Worker::link`], for reads on a replica: a link of its own kind that sends
    /// `READONLY` first (a master's links never do, so a master demoted to replica answers
    /// them MOVED instead of serving stale reads).
    #[inline]
    pub fn replica_link(
        &self,
        node: &Arc<Node>,
        proto: Proto,
        lane: usize,
        user: UserId,
    ) -> Result<Rc<Link>, UpstreamError> {
        self.shared_link(node, proto, lane, true, user)
    }

    #[inline]
    fn shared_link(
        &self,
        node: &Arc<Node>,
        proto: Proto,
        lane: usize,
        reads: bool,
        user: UserId,
    ) -> Result<Rc<Link>, UpstreamError> {
        let i = ((node.id * 2 + proto.index()) * 2 + usize::from(reads)) * self.lanes
            + lane % self.lanes;
        if let Some(Some(l)) = self
            .links
            .borrow()
            .get(usize::from(user))
            .and_then(|t| t.get(i))
        {
            if Arc::ptr_eq(&l.node, node) && l.is_usable() {
                return Ok(l.clone());
            }
        }
        self.open_shared(i, node, proto, reads, user)
    }

    #[cold]
    fn open_shared(
        &self,
        i: usize,
        node: &Arc<Node>,
        proto: Proto,
        reads: bool,
        user: UserId,
    ) -> Result<Rc<Link>, UpstreamError> {
        if node.health().in_backoff() {
            return Err(UpstreamError::NotSent);
        }
        let fresh = Link::open_as(node.clone(), proto, LinkKind::Shared, self.creds(user));
        if reads {
            fresh.send_silent(b"*1\r\n$8\r\nREADONLY\r\n")?;
        }
        let mut tables = self.links.borrow_mut();
        let u = usize::from(user);
        if tables.len() <= u {
            tables.resize_with(u + 1, Vec::new);
        }
        let links = &mut tables[u];
        if links.len() <= i {
            links.resize(i + 1, None);
        }
        if let Some(old) = links[i].replace(fresh.clone()) {
            old.retire();
            if !old.is_closed() {
                self.retiring.borrow_mut().push(old);
            }
        }
        Ok(fresh)
    }

    /// A link of the caller's own (transactions, blocking commands, pub/sub); closed when the
    /// handle is dropped. `None` when the node is in connect backoff. A dedicated link comes
    /// from the spare one already connected when there is one, and a new spare is opened.
    pub fn owned(
        &self,
        node: &Arc<Node>,
        proto: Proto,
        kind: LinkKind,
        user: UserId,
    ) -> Option<OwnedLink> {
        if node.health().in_backoff() {
            return None;
        }
        let creds = self.creds(user);
        if let LinkKind::Tracked { .. } = kind {
            let l = OwnedLink::open(node.clone(), proto, kind, creds);
            self.tracked.borrow_mut().push(Rc::downgrade(l.link()));
            return Some(l);
        }
        if !matches!(kind, LinkKind::Dedicated) {
            return Some(OwnedLink::open(node.clone(), proto, kind, creds));
        }
        let mut spare = self.spare.borrow_mut();
        let taken = spare
            .iter()
            .position(|(n, p, u, l)| {
                Arc::ptr_eq(n, node) && *p == proto && *u == user && l.is_usable()
            })
            .map(|i| spare.swap_remove(i).3);
        let open = || OwnedLink::open(node.clone(), proto, LinkKind::Dedicated, creds.clone());
        spare.push((node.clone(), proto, user, open()));
        Some(taken.unwrap_or_else(open))
    }

    /// The name of `user` for CLIENT LIST (`None`: default).
    pub fn user_name(&self, user: UserId) -> Option<Arc<str>> {
        let creds = self.creds(user)?;
        creds.user.as_deref().map(Arc::from)
    }

    /// A master with a request on one of this worker's shared links sent before `before`
    /// and still unanswered (busy with a script past its busy threshold, or with a slow
    /// command), or one the health probe found busy (a script another worker's client runs).
    /// Scans the link table: for PING only, never per data command.
    pub fn slow_master(
        &self,
        topo: &crate::cluster::Topology,
        before: Instant,
    ) -> Option<Arc<Node>> {
        let tables = self.links.borrow();
        tables
            .iter()
            .flatten()
            .flatten()
            .filter(|l| l.oldest_wait().is_some_and(|t| t < before))
            .map(|l| &l.node)
            .find(|n| topo.masters.iter().any(|m| Arc::ptr_eq(m, n)))
            .or_else(|| topo.masters.iter().find(|m| m.is_busy()))
            .cloned()
    }

    /// What user `user`'s links authenticate as.
    fn creds(&self, user: UserId) -> Option<Arc<Credentials>> {
        match user {
            0 => self.default_creds.clone(),
            u => self
                .users
                .borrow()
                .get(usize::from(u))
                .and_then(|s| s.as_ref())
                .map(|s| s.creds.clone()),
        }
    }

    /// A session authenticated as `creds` (`--auth-mode passthrough`): its place in this
    /// worker's link tables, shared with the other sessions of the same user. A user whose
    /// links sat unused longest gives its place up when all `--max-backend-users` are
    /// taken; `Err(limit)` when every place has sessions.
    pub fn join_user(&self, creds: Credentials) -> Result<UserId, usize> {
        let limit = self.shared.config.max_backend_users as usize;
        let now = Instant::now();
        let mut users = self.users.borrow_mut();
        if let Some(i) = users
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| *s.creds == creds))
        {
            if let Some(s) = users[i].as_mut() {
                s.holders += 1;
                s.last_used = now;
            }
            return Ok(i as UserId);
        }
        let free = users
            .iter()
            .skip(1)
            .position(Option::is_none)
            .map(|i| i + 1);
        let place = match free {
            Some(i) => i,
            None if users.len() <= limit && users.len() <= usize::from(UserId::MAX) => {
                users.push(None);
                users.len() - 1
            }
            None => {
                let idle = users
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                    .filter(|(_, s)| s.holders == 0)
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i);
                let Some(i) = idle else {
                    return Err(limit);
                };
                drop(users);
                self.free_user(i as UserId);
                users = self.users.borrow_mut();
                i
            }
        };
        users[place] = Some(UserSlot {
            creds: Arc::new(creds),
            holders: 1,
            last_used: now,
        });
        Ok(place as UserId)
    }

    /// A session no longer authenticated as `user` (it ended, re-authenticated, or RESET).
    pub fn leave_user(&self, user: UserId) {
        if let Some(Some(s)) = self.users.borrow_mut().get_mut(usize::from(user)) {
            s.holders = s.holders.saturating_sub(1);
            s.last_used = Instant::now();
        }
    }

    /// Closes a user's links (their requests finish first) and frees its place.
    fn free_user(&self, user: UserId) {
        let u = usize::from(user);
        if let Some(table) = self.links.borrow_mut().get_mut(u) {
            let mut retiring = self.retiring.borrow_mut();
            for l in table.drain(..).flatten() {
                l.retire();
                if !l.is_closed() {
                    retiring.push(l);
                }
            }
        }
        self.spare.borrow_mut().retain(|s| s.2 != user);
        if let Some(s) = self.users.borrow_mut().get_mut(u) {
            *s = None;
        }
    }

    /// Puts a script body in the shared store unless this worker already did: one hash per
    /// EVAL instead of a SHA1 and a lock.
    /// Counts a command for the hot-key sampler, and records its keys when it is sampled.
    #[inline]
    pub fn sample_keys(
        &self,
        spec: &crate::command::table::CommandSpec,
        args: crate::command::Args<'_>,
    ) {
        if let Some(hot) = &self.hot {
            if let Ok(mut h) = hot.try_borrow_mut() {
                if h.due() {
                    h.record_command(spec, args);
                }
            }
        }
    }

    pub fn remember_script(&self, body: &[u8]) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let key = h.finish();
        let evictions = self.shared.scripts.evictions.load(Ordering::Relaxed);
        let mut seen = self.scripts_seen.borrow_mut();
        if seen.0 != evictions || seen.1.len() >= 100_000 {
            // The store forgot something: this worker may have to remember it again.
            seen.1.clear();
            seen.0 = evictions;
        }
        if seen.1.insert(key) {
            self.shared.scripts.remember(body);
        }
    }

    async fn tick_loop(self: Rc<Self>) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = Instant::now();
            if let Some(hot) = &self.hot {
                if now.duration_since(self.hot_published.get()) >= Duration::from_secs(1) {
                    self.hot_published.set(now);
                    let view = hot.borrow_mut().publish(now.into_std());
                    self.shared.hotkeys.publish(self.index, view);
                }
            }
            let limit = self.shared.config.backend_timeout;
            // Spares of nodes gone or dead are dropped (a new one comes with the next use).
            self.spare
                .borrow_mut()
                .retain(|(n, _, _, l)| !n.is_forgotten() && l.is_usable());
            // Users nobody is authenticated as any more, idle long enough: links closed.
            let idle = self.shared.config.backend_user_idle_timeout;
            let gone: Vec<UserId> = self
                .users
                .borrow()
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .filter(|(_, s)| s.holders == 0 && now.duration_since(s.last_used) >= idle)
                .map(|(i, _)| i as UserId)
                .collect();
            for u in gone {
                self.free_user(u);
            }
            // Tracking clients' links: a node that is down (by the probe), became a replica
            // or left the cluster no longer sees the writes to what it tracked for them:
            // closed, and their clients invalidate everything. (A master with no slots yet,
            // the target of a migration, is in neither list: kept.)
            let mut tracked = self.tracked.borrow_mut();
            if !tracked.is_empty() {
                let topo = self.shared.cluster.snapshot();
                tracked.retain(|l| match l.upgrade() {
                    Some(l) if !l.is_closed() => {
                        l.tick(now, limit);
                        if topo.is_replica(&l.node) {
                            l.abandon("its node is now a replica");
                        } else if l.node.is_forgotten() {
                            l.abandon("its node left the cluster");
                        } else if l.node.health().is_down() {
                            l.abandon("its node is down");
                        }
                        true
                    }
                    _ => false,
                });
            }
            drop(tracked);
            let mut retiring = self.retiring.borrow_mut();
            retiring.retain(|l| {
                l.tick(now, limit);
                !l.is_closed()
            });
            let mut tables = self.links.borrow_mut();
            for slot in tables.iter_mut().flatten() {
                let Some(l) = slot else { continue };
                if l.node.is_forgotten() || !l.is_usable() {
                    l.retire();
                    if !l.is_closed() {
                        retiring.push(l.clone());
                    }
                    *slot = None;
                    continue;
                }
                l.tick(now, limit);
            }
        }
    }
}

/// A connected dedicated link kept ready: for this node, protocol and user.
type Spare = (Arc<Node>, Proto, UserId, OwnedLink);

/// A place in a worker's link tables: 0 is the sessions' default identity, others are client
/// users (`--auth-mode passthrough`).
pub type UserId = u16;

/// A client user's links in one worker.
struct UserSlot {
    creds: Arc<Credentials>,
    /// Sessions authenticated as this user now.
    holders: usize,
    /// When a session last joined or left: idle places are freed after
    /// `--backend-user-idle-timeout`.
    last_used: Instant,
}

/// An accepted client on its way to a worker.
pub struct Incoming {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub permit: Permit,
    /// Came in on `--tls-listen`.
    pub tls: bool,
}

struct Handle {
    tx: mpsc::UnboundedSender<WorkerMsg>,
    load: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The worker threads, as the acceptor sees them.
pub struct Workers {
    handles: Vec<Handle>,
}

/// The default number of workers: half the cores the process may use (cgroup limits
/// included), rounded up. Measured on 2 cores (docs/BENCHMARKS.md, run 9): one worker used
/// 5-16% less CPU per request than two at equal throughput (2.71 instead of 3.18 system calls
/// per GET at pipeline 1: with two, each worker sleeps in epoll and is woken more often),
/// because the clients and the kernel's network work need the other core. A sidecar with a
/// one- or two-core limit gets one worker.
pub fn default_count() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cores.div_ceil(2)
}

impl Workers {
    /// Starts `n` workers.
    pub fn start(shared: &Arc<Shared>, n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        for index in 0..n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (sh, ld, me) = (shared.clone(), load.clone(), tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("slotmux-w{index}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, worker_main(index, sh, me, rx, ld));
                })?;
            handles.push(Handle {
                tx,
                load,
                thread: Some(thread),
            });
        }
        let _ = shared
            .workers
            .set(handles.iter().map(|h| h.tx.clone()).collect());
        Ok(Workers { handles })
    }

    /// Hands a client to the worker with the fewest clients (kernel hashing of
    /// SO_REUSEPORT skews workers; a count does not).
    pub fn hand_over(&self, inc: Incoming) {
        let mut order: Vec<&Handle> = self.handles.iter().collect();
        order.sort_by_key(|h| h.load.load(Ordering::Relaxed));
        let mut msg = WorkerMsg::Client(inc);
        for h in order {
            match h.tx.send(msg) {
                Ok(()) => return,
                Err(e) => msg = e.0,
            }
        }
        if let WorkerMsg::Client(inc) = msg {
            tracing::error!(client = %inc.peer, "no worker left to serve the client");
        }
    }

    /// Shutdown begins: every session answers what is in flight, reads nothing more, closes.
    pub fn drain(&self) {
        for h in &self.handles {
            let _ = h.tx.send(WorkerMsg::Drain);
        }
    }

    /// Stops the workers (their remaining sessions are dropped) and waits for their threads.
    pub async fn stop(mut self) {
        for h in &self.handles {
            let _ = h.tx.send(WorkerMsg::Stop);
        }
        let threads: Vec<_> = self
            .handles
            .iter_mut()
            .filter_map(|h| h.thread.take())
            .collect();
        self.handles.clear();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Decrements a worker's client count however its session ends.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn worker_main(
    index: usize,
    shared: Arc<Shared>,
    me: mpsc::UnboundedSender<WorkerMsg>,
    mut rx: mpsc::UnboundedReceiver<WorkerMsg>,
    load: Arc<AtomicUsize>,
) {
    let worker = Rc::new(Worker::new(index, shared, Some(me)));
    tokio::task::spawn_local(worker.clone().tick_loop());
    while let Some(msg) = rx.recv().await {
        let inc = match msg {
            WorkerMsg::Client(inc) => inc,
            WorkerMsg::Kill(id) => {
                worker.signal(Some(id), Signal::Kill);
                continue;
            }
            WorkerMsg::Drain => {
                worker.draining.set(true);
                worker.signal(None, Signal::Drain);
                continue;
            }
            WorkerMsg::Stop => break,
            WorkerMsg::Unpause => {
                worker.signal(None, Signal::Unpause);
                continue;
            }
            WorkerMsg::Invalidate(id, keys) => {
                worker.deliver(id, keys);
                continue;
            }
        };
        let stream = match tokio::net::TcpStream::from_std(inc.stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %inc.peer, error = %e, "cannot register client socket");
                continue;
            }
        };
        load.fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard(load.clone());
        let (w, permit) = (worker.clone(), inc.permit);
        tokio::task::spawn_local(async move {
            Session::run(w, stream, inc.peer, inc.tls).await;
            drop(permit);
            drop(guard);
        });
    }
}
