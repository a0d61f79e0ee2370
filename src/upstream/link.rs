//! One pipelined connection to one node, owned by one worker, and the inbox replies land in.
//!
//! Owns: the socket, the hand-off in both directions, the in-order matching of replies to
//! requests, the `ASKING` prefix, and failing every request cleanly when the connection ends
//! (`NotSent` for what was never completely written, `Lost`/`Timeout` for what was).
//!
//! The hand-off costs no message and no allocation: a session appends its request bytes to the
//! link's output buffer plus a small record of who waits, and wakes the link's task only if it
//! is parked. The task writes everything that accumulated in one write, scans the replies, and
//! pushes each straight into the waiting session's [`Inbox`], waking the session only if it is
//! parked. Everything here is `Rc`/`RefCell`: a link never leaves its worker's thread.
//!
//! Must not: retry or reconnect by itself (the worker opens a new link on next use), parse
//! replies beyond their boundaries, or be shared across threads.

use bytes::{Buf, Bytes, BytesMut};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::connect::{connect, ConnectError, Credentials};
use super::{Node, Reply, UpstreamError};
use crate::metrics::NodeMetrics;
use crate::resp::reply::ReplyScanner;
use crate::resp::write::Proto;

const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
const READ_CHUNK: usize = 16 * 1024;
/// Socket reads per task turn before the link lets the sessions it woke run.
const MAX_READS_PER_TURN: usize = 8;

/// Where one session's replies land, and its worker's signals. Filled by links and the
/// worker, drained by the session: the one thing a session waits on besides its socket.
#[derive(Default)]
pub struct Inbox {
    st: RefCell<InboxState>,
}

/// What a worker tells one of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Shutdown: answer what is in flight, read nothing more, close.
    Drain = 1,
    /// CLIENT KILL: close now.
    Kill = 2,
    /// CLIENT UNPAUSE: a command held by the pause may go.
    Unpause = 4,
}

impl Signal {
    /// Whether `set` (from [`Inbox::take_signals`]) holds this signal.
    pub fn raised_in(self, set: u8) -> bool {
        set & self as u8 != 0
    }
}

#[derive(Default)]
struct InboxState {
    q: VecDeque<Reply>,
    waker: Option<Waker>,
    closed: bool,
    /// Raised signals, as bits.
    signals: u8,
}

impl Inbox {
    /// Delivers a reply, waking the session if it is parked.
    pub fn push(&self, reply: Reply) {
        let waker = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            st.q.push_back(reply);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Raises a signal, waking the session if it is parked.
    pub fn signal(&self, s: Signal) {
        let waker = {
            let mut st = self.st.borrow_mut();
            st.signals |= s as u8;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The signals raised since the last call (see [`Signal::raised_in`]).
    pub fn take_signals(&self) -> u8 {
        std::mem::take(&mut self.st.borrow_mut().signals)
    }

    /// Ready when a reply or a signal is waiting; otherwise remembers who to wake.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.st.borrow_mut();
        if !st.q.is_empty() || st.signals != 0 {
            return Poll::Ready(());
        }
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    pub fn pop(&self) -> Option<Reply> {
        self.st.borrow_mut().q.pop_front()
    }

    /// The session is gone: drop what is queued and whatever arrives later.
    pub fn close(&self) {
        let mut st = self.st.borrow_mut();
        st.closed = true;
        st.q.clear();
        st.waker = None;
    }
}

/// How a link is used.
#[derive(Clone)]
pub enum LinkKind {
    /// Shared by the worker's sessions: replies matched to requests in order, reply timeout
    /// on (checked by the worker's tick).
    Shared,
    /// Owned by one session (transactions, blocking commands): replies matched in order, no
    /// reply timeout (a BLPOP may wait forever), closed as soon as the owner lets go, even
    /// with a request in flight.
    Dedicated,
    /// Owned by one session for pub/sub: every frame the node sends is delivered with `tag`
    /// to `to`; requests get no reply of their own. When the connection ends, `to` gets one
    /// `Err(Lost)` with the tag (unless the owner closed it).
    Stream { tag: u64, to: Rc<Inbox> },
    /// Owned by one session with `CLIENT TRACKING` on: replies matched in order as
    /// `Dedicated`, plus a second connection (RESP3) that the node redirects this one's
    /// invalidations to; every frame it sends is delivered with `tag` to `to`. When either
    /// connection ends, `to` gets one `Err(Lost)` with the tag (unless the owner closed it):
    /// invalidations may have been missed.
    Tracked {
        tag: u64,
        to: Rc<Inbox>,
        track: Rc<Tracked>,
    },
}

/// The node-side tracking of a [`LinkKind::Tracked`] link.
#[derive(Default)]
pub struct Tracked {
    /// `CLIENT TRACKING on` arguments after `REDIRECT id` (BCAST, PREFIX..., OPTIN...).
    opts: RefCell<Vec<Bytes>>,
    /// The node's id of the invalidation connection, once known (0 before).
    redirect: std::cell::Cell<i64>,
    /// The node accepted `CLIENT TRACKING on`: it may have tracked keys here since.
    started: std::cell::Cell<bool>,
}

impl Tracked {
    pub fn new(opts: Vec<Bytes>) -> Rc<Tracked> {
        Rc::new(Tracked {
            opts: RefCell::new(opts),
            redirect: std::cell::Cell::new(0),
            started: std::cell::Cell::new(false),
        })
    }
}

/// Why a link ended.
#[derive(Debug)]
enum End {
    /// Closed on purpose: idle and retired, or its owner let go.
    Idle,
    ConnectFailed(String),
    /// The node refused the handshake's credentials (a client's user whose password changed
    /// or who was removed since its AUTH): the node is fine.
    Refused(String),
    Broken(String),
    Timeout,
    /// Closed by the worker: a tracked link to a node that is down or no longer a master (the
    /// node's tracking of the client's keys no longer covers them).
    Abandoned(&'static str),
}

struct Waiter {
    /// `None` for replies nobody waits for (our own `ASKING`, silent requests).
    to: Option<Rc<Inbox>>,
    tag: u64,
    /// Stream offset just past this request's bytes: written completely once `written`
    /// reaches it.
    end: u64,
    sent: Instant,
    /// Replies it gets (a transaction sent as one batch gets one per command), delivered
    /// together as one buffer.
    replies: u32,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Connecting,
    Up,
    Closed,
}

struct State {
    wbuf: BytesMut,
    appended: u64,
    written: u64,
    waiting: VecDeque<Waiter>,
    /// The link's task, while it is parked.
    waker: Option<Waker>,
    phase: Phase,
    /// Shared: out of the worker's table, close once idle. Owned: the owner let go.
    retired: bool,
    timed_out: bool,
    abandoned: Option<&'static str>,
    /// Counted in the connections gauge (it connected).
    counted: bool,
    stats: LinkStats,
}

/// One connection to one node inside one worker.
pub struct Link {
    pub node: Arc<Node>,
    proto: Proto,
    kind: LinkKind,
    /// A client's user (`--auth-mode passthrough`); `None`: slotmux's backend identity.
    creds: Option<Arc<Credentials>>,
    st: RefCell<State>,
}

impl Link {
    /// Opens a link; its task runs on the current worker (a `LocalSet`).
    pub fn open(node: Arc<Node>, proto: Proto, kind: LinkKind) -> Rc<Link> {
        Self::open_as(node, proto, kind, None)
    }

    /// Opens a link that authenticates as `creds` (slotmux's own identity when `None`).
    pub fn open_as(
        node: Arc<Node>,
        proto: Proto,
        kind: LinkKind,
        creds: Option<Arc<Credentials>>,
    ) -> Rc<Link> {
        let stats = LinkStats::new(&node.metrics);
        let link = Rc::new(Link {
            node,
            proto,
            kind,
            creds,
            st: RefCell::new(State {
                wbuf: BytesMut::new(),
                appended: 0,
                written: 0,
                waiting: VecDeque::new(),
                waker: None,
                phase: Phase::Connecting,
                retired: false,
                timed_out: false,
                abandoned: None,
                counted: false,
                stats,
            }),
        });
        tokio::task::spawn_local(run(link.clone()));
        link
    }

    /// Whether new requests may still be sent here.
    pub fn is_usable(&self) -> bool {
        let st = self.st.borrow();
        st.phase != Phase::Closed && !st.retired
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.st.borrow().phase == Phase::Closed
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Queues `frame` (after `ASKING` when `asking`); its reply goes to `to` with `tag`.
    #[inline]
    pub fn send(
        &self,
        frame: &[u8],
        asking: bool,
        tag: u64,
        to: &Rc<Inbox>,
        now: Instant,
    ) -> Result<(), UpstreamError> {
        self.queue(frame, asking, Some((tag, to)), now, 1)
    }

    /// Queues `frame`, several commands back to back (MULTI ... EXEC), whose `replies` replies
    /// come back together in one buffer: nothing from other sessions can come between them.
    pub fn send_batch(
        &self,
        frame: &[u8],
        asking: bool,
        tag: u64,
        to: &Rc<Inbox>,
        now: Instant,
        replies: u32,
    ) -> Result<(), UpstreamError> {
        self.queue(frame, asking, Some((tag, to)), now, replies.max(1))
    }

    /// Queues `frame` whose reply nobody waits for (pub/sub commands, a `SCRIPT LOAD` before a
    /// retried `EVALSHA`).
    pub fn send_silent(&self, frame: &[u8]) -> Result<(), UpstreamError> {
        self.queue(frame, false, None, Instant::now(), 1)
    }

    /// [`Link::send_silent`] for `frame` holding `replies` commands.
    pub fn send_silent_n(&self, frame: &[u8], replies: u32) -> Result<(), UpstreamError> {
        self.queue(frame, false, None, Instant::now(), replies.max(1))
    }

    fn queue(
        &self,
        frame: &[u8],
        asking: bool,
        to: Option<(u64, &Rc<Inbox>)>,
        now: Instant,
        replies: u32,
    ) -> Result<(), UpstreamError> {
        let waker = {
            let mut st = self.st.borrow_mut();
            if st.phase == Phase::Closed || st.retired {
                return Err(UpstreamError::NotSent);
            }
            let stream = matches!(self.kind, LinkKind::Stream { .. });
            if asking {
                st.wbuf.extend_from_slice(ASKING);
                st.appended += ASKING.len() as u64;
                let end = st.appended;
                st.waiting.push_back(Waiter {
                    to: None,
                    tag: 0,
                    end,
                    sent: now,
                    replies: 1,
                });
            }
            st.wbuf.extend_from_slice(frame);
            st.appended += frame.len() as u64;
            st.stats.requests += 1;
            if !stream {
                let end = st.appended;
                let (tag, to) = match to {
                    Some((tag, to)) => (tag, Some(to.clone())),
                    None => (0, None),
                };
                st.waiting.push_back(Waiter {
                    to,
                    tag,
                    end,
                    sent: now,
                    replies,
                });
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Closes the link once it is idle (shared) or at once (owned); no new requests.
    pub fn retire(&self) {
        let waker = {
            let mut st = self.st.borrow_mut();
            st.retired = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// When the oldest request still waiting for its reply was sent.
    pub fn oldest_wait(&self) -> Option<Instant> {
        self.st.borrow().waiting.front().map(|w| w.sent)
    }

    /// Closes the link as failed (its owner hears of it), without counting the node down.
    pub fn abandon(&self, why: &'static str) {
        let waker = {
            let mut st = self.st.borrow_mut();
            st.abandoned = Some(why);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The worker's tick: drops a shared (or tracked) link whose oldest request waited longer than `limit`
    /// (a hung node), and flushes its metric counts.
    pub fn tick(&self, now: Instant, limit: Duration) {
        let waker = {
            let mut st = self.st.borrow_mut();
            st.stats.flush();
            let late = st
                .waiting
                .front()
                .is_some_and(|w| now.saturating_duration_since(w.sent) >= limit);
            let timed = matches!(self.kind, LinkKind::Shared | LinkKind::Tracked { .. });
            if !(late && timed && st.phase == Phase::Up) {
                return;
            }
            st.timed_out = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn drive(&self, cx: &mut Context<'_>, io: &mut Io) -> Poll<End> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let mut reads = 0;
        loop {
            if st.timed_out {
                return Poll::Ready(End::Timeout);
            }
            if let Some(why) = st.abandoned {
                return Poll::Ready(End::Abandoned(why));
            }
            // A tracked link is left like a shared one: what its client sent before it let go
            // (CLIENT TRACKING off, RESET) still gets its replies.
            if st.retired
                && (!matches!(self.kind, LinkKind::Shared | LinkKind::Tracked { .. })
                    || (st.waiting.is_empty() && st.wbuf.is_empty()))
            {
                return Poll::Ready(End::Idle);
            }
            let mut progress = false;
            // Through `poll_write`/`poll_read`, not `try_*`: on a partial write or read Tokio
            // knows the socket is full or drained and skips the system call that would only
            // say "would block".
            while !st.wbuf.is_empty() {
                match Pin::new(&mut io.stream).poll_write(cx, &st.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::Broken("write returned 0".into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        st.wbuf.advance(n);
                        st.written += n as u64;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Broken(e.to_string())),
                    Poll::Pending => break,
                }
            }
            // TLS may keep part of a record back; plain TCP's flush is a no-op.
            if let Poll::Ready(Err(e)) = Pin::new(&mut io.stream).poll_flush(cx) {
                return Poll::Ready(End::Broken(e.to_string()));
            }
            if st.wbuf.is_empty() && st.wbuf.capacity() > 1 << 20 {
                st.wbuf = BytesMut::new();
            }
            if reads >= MAX_READS_PER_TURN {
                // Plenty read this turn: let the sessions just woken run, then come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if io.rbuf.capacity() - io.rbuf.len() < READ_CHUNK / 4 {
                io.rbuf.reserve(READ_CHUNK);
            }
            let read = {
                let fut = io.stream.read_buf(&mut io.rbuf);
                tokio::pin!(fut);
                fut.poll(cx)
            };
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(End::Broken("closed by peer".into())),
                Poll::Ready(Ok(_)) => {
                    reads += 1;
                    progress = true;
                    if let Err(e) = self.dispatch(st, io) {
                        return Poll::Ready(End::Broken(e));
                    }
                }
                // A TLS node that dies sends no close_notify: it closed, like a plain one.
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(End::Broken("closed by peer".into()))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(End::Broken(e.to_string())),
                Poll::Pending => {}
            }
            if !progress {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
    }

    /// Hands every complete reply in the read buffer to the session waiting for it.
    fn dispatch(&self, st: &mut State, io: &mut Io) -> Result<(), String> {
        let now = Instant::now();
        loop {
            // `batch`: bytes of the front request's replies scanned so far, when it gets several.
            match io.scanner.scan(&io.rbuf[io.batch..]) {
                Ok(Some(len)) => {
                    if let LinkKind::Stream { tag, to } = &self.kind {
                        to.push(Reply {
                            tag: *tag,
                            result: Ok(io.rbuf.split_to(len).freeze()),
                        });
                        continue;
                    }
                    if io.batch == 0 && io.rbuf.first() == Some(&b'>') {
                        // An out-of-band push: no subscriptions live on these connections.
                        let _ = io.rbuf.split_to(len);
                        continue;
                    }
                    let Some(front) = st.waiting.front() else {
                        return Err("reply without a request".into());
                    };
                    io.batch += len;
                    io.got += 1;
                    if io.got < front.replies {
                        continue;
                    }
                    let frame = io.rbuf.split_to(io.batch).freeze();
                    io.batch = 0;
                    io.got = 0;
                    let Some(w) = st.waiting.pop_front() else {
                        return Err("reply without a request".into());
                    };
                    st.stats
                        .reply(&frame, now.saturating_duration_since(w.sent));
                    if let Some(to) = w.to {
                        to.push(Reply {
                            tag: w.tag,
                            result: Ok(frame),
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("bad reply: {e}")),
            }
        }
        if io.rbuf.is_empty() && io.rbuf.capacity() > 1 << 20 {
            io.rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(())
    }

    /// Fails everything still waiting, and tells the node and the refresher why.
    fn close(&self, end: End) {
        let (waiting, written, retired) = {
            let mut st = self.st.borrow_mut();
            st.phase = Phase::Closed;
            st.wbuf = BytesMut::new();
            st.waker = None;
            st.stats.flush();
            (std::mem::take(&mut st.waiting), st.written, st.retired)
        };
        let after_write = match end {
            End::Timeout => UpstreamError::Timeout,
            _ => UpstreamError::Lost,
        };
        for w in waiting {
            if let Some(to) = w.to {
                if let (End::Refused(why), 1) = (&end, w.replies) {
                    // Never ran: the client gets the node's own words (WRONGPASS...).
                    to.push(Reply {
                        tag: w.tag,
                        result: Ok(Bytes::from(format!("-{why}\r\n"))),
                    });
                    continue;
                }
                let e = if w.end <= written {
                    after_write
                } else {
                    UpstreamError::NotSent
                };
                to.push(Reply {
                    tag: w.tag,
                    result: Err(e),
                });
            }
        }
        // A tracked link that never tracked (it could not connect, the node refused the
        // client's user) lost nothing: no word of it.
        let lost_tracking = match &self.kind {
            LinkKind::Tracked { track, .. } => track.started.get(),
            _ => true,
        };
        if let (LinkKind::Stream { tag, to } | LinkKind::Tracked { tag, to, .. }, true) =
            (&self.kind, lost_tracking)
        {
            if !retired {
                to.push(Reply {
                    tag: *tag,
                    result: Err(UpstreamError::Lost),
                });
            }
        }
        let node = &self.node;
        if std::mem::take(&mut self.st.borrow_mut().counted) {
            self.gauge().dec();
        }
        match end {
            End::Idle => {}
            End::Refused(e) => {
                tracing::warn!(node = %node.addr, user = self.creds.as_ref().map_or("(slotmux)", |c| c.user_name()), error = %e, "backend refused the connection's setup (credentials, or CLIENT TRACKING for this user)");
            }
            End::ConnectFailed(e) => {
                node.health().failed();
                tracing::warn!(node = %node.addr, error = %e, "backend connect failed");
                node.report_failure();
            }
            End::Broken(e) => {
                tracing::warn!(node = %node.addr, error = %e, "backend connection broken");
                node.report_failure();
            }
            End::Abandoned(why) => {
                tracing::info!(node = %node.addr, why, "tracking connection closed");
            }
            End::Timeout => {
                tracing::warn!(node = %node.addr, "backend reply timeout; connection dropped");
                node.report_failure();
            }
        }
    }

    /// A [`LinkKind::Tracked`] link whose node accepted `CLIENT TRACKING on`.
    pub fn tracking_started(&self) -> bool {
        matches!(&self.kind, LinkKind::Tracked { track, .. } if track.started.get())
    }

    /// New tracking options for a [`LinkKind::Tracked`] link: `all` if its tracking is not
    /// set up yet, else `change` (the node adds prefixes to those it has) sent now.
    pub fn retrack(&self, all: Vec<Bytes>, change: &[Bytes]) {
        let LinkKind::Tracked { track, .. } = &self.kind else {
            return;
        };
        let id = track.redirect.get();
        if id == 0 {
            *track.opts.borrow_mut() = all;
            return;
        }
        let _ = self.send_silent(&tracking_command(id, change));
    }

    fn gauge(&self) -> &prometheus::IntGauge {
        match self.kind {
            LinkKind::Shared => &self.node.metrics.shared,
            LinkKind::Dedicated => &self.node.metrics.dedicated,
            LinkKind::Tracked { .. } => &self.node.metrics.tracking,
            LinkKind::Stream { .. } => &self.node.metrics.pubsub,
        }
    }
}

struct Io {
    stream: super::connect::NodeStream,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    /// Bytes, and replies, of a batch request's replies received so far.
    batch: usize,
    got: u32,
}

async fn run(link: Rc<Link>) {
    let as_user;
    let settings = match &link.creds {
        Some(c) => {
            as_user = link.node.settings().as_user(c);
            &as_user
        }
        None => &**link.node.settings(),
    };
    let end = match connect(&link.node.addr, link.proto, settings).await {
        Ok(mut stream) => 'up: {
            let mut pushes = None;
            if let LinkKind::Tracked { track, .. } = &link.kind {
                match start_tracking(&link.node, settings, &mut stream, track).await {
                    Ok(s) => pushes = Some(s),
                    Err(e) => break 'up e,
                }
            }
            link.gauge().inc();
            link.st.borrow_mut().counted = true;
            if link.node.health().failures() > 0 {
                tracing::info!(node = %link.node.addr, "backend reachable again");
            }
            link.node.health().connected();
            link.st.borrow_mut().phase = Phase::Up;
            let mut io = Io {
                stream,
                rbuf: BytesMut::new(),
                scanner: ReplyScanner::new(),
                batch: 0,
                got: 0,
            };
            match (pushes, &link.kind) {
                (Some(p), LinkKind::Tracked { tag, to, .. }) => {
                    tokio::select! {
                        end = poll_fn(|cx| link.drive(cx, &mut io)) => end,
                        end = forward_pushes(p, *tag, to) => end,
                    }
                }
                _ => poll_fn(|cx| link.drive(cx, &mut io)).await,
            }
        }
        Err(ConnectError::Refused(e)) if link.creds.is_some() => End::Refused(e),
        Err(e) => End::ConnectFailed(e.to_string()),
    };
    link.close(end);
}

/// `CLIENT TRACKING on REDIRECT id opts...`.
fn tracking_command(id: i64, opts: &[Bytes]) -> Bytes {
    let id = id.to_string();
    let head: [&[u8]; 5] = [b"CLIENT", b"TRACKING", b"on", b"REDIRECT", id.as_bytes()];
    let parts: Vec<&[u8]> = head
        .into_iter()
        .chain(opts.iter().map(|o| &o[..]))
        .collect();
    crate::resp::write::encode_command(parts)
}

/// Opens the connection a tracked link's invalidations go to (as slotmux's own user: a
/// client's user needs no more than on one Redis, `client|tracking`), and turns tracking on
/// for `stream` with its redirect there.
async fn start_tracking(
    node: &Node,
    settings: &super::connect::ConnSettings,
    stream: &mut super::connect::NodeStream,
    track: &Tracked,
) -> Result<super::connect::NodeStream, End> {
    use super::connect::exchange;
    let limit = settings.reply_timeout;
    let mut pushes = connect(&node.addr, Proto::Resp3, node.settings())
        .await
        .map_err(|e| End::ConnectFailed(e.to_string()))?;
    let id = exchange(&mut pushes, &[&[b"CLIENT", b"ID"]], limit)
        .await
        .map_err(End::Broken)?;
    if let Some(e) = id.first().filter(|r| r.first() == Some(&b'-')) {
        return Err(End::Refused(
            String::from_utf8_lossy(&e[1..]).trim_end().to_string(),
        ));
    }
    let id = id
        .first()
        .and_then(|r| r.strip_prefix(b":"))
        .and_then(|r| r.strip_suffix(b"\r\n"))
        .and_then(crate::resp::parse_i64)
        .ok_or_else(|| End::Broken("CLIENT ID: unexpected reply".into()))?;
    track.redirect.set(id);
    let cmd = tracking_command(id, &track.opts.borrow());
    let mut req = BytesMut::from(&cmd[..]);
    let reply = tokio::time::timeout(limit, async {
        use tokio::io::AsyncWriteExt;
        stream.write_all_buf(&mut req).await?;
        super::connect::read_replies(stream, 1).await
    })
    .await
    .map_err(|_| End::Broken("CLIENT TRACKING: timed out".into()))?
    .map_err(|e| End::Broken(format!("CLIENT TRACKING: {e}")))?;
    match reply.first() {
        // The node refuses the options (validated before, so unexpected): its words, and the
        // node is not counted down.
        Some(r) if r.first() == Some(&b'-') => Err(End::Refused(
            String::from_utf8_lossy(&r[1..]).trim_end().to_string(),
        )),
        _ => {
            track.started.set(true);
            Ok(pushes)
        }
    }
}

/// Hands every frame the node sends on a tracked link's invalidation connection to its
/// session, until the connection ends.
async fn forward_pushes(mut stream: super::connect::NodeStream, tag: u64, to: &Rc<Inbox>) -> End {
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::new();
    loop {
        loop {
            match scanner.scan(&buf) {
                Ok(Some(len)) => to.push(Reply {
                    tag,
                    result: Ok(buf.split_to(len).freeze()),
                }),
                Ok(None) => break,
                Err(e) => return End::Broken(format!("invalidation connection: bad frame: {e}")),
            }
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return End::Broken("invalidation connection closed by peer".into()),
            Ok(_) => {}
            Err(e) => return End::Broken(format!("invalidation connection: {e}")),
        }
    }
}

/// A link owned by one session (dedicated or pub/sub): closes when dropped. Or one lent to
/// a use of the session's that ends before the link does (a tracking client's WATCH on its
/// tracked link): dropping it sends a frame that undoes that use (UNWATCH), or nothing.
pub struct OwnedLink {
    link: Rc<Link>,
    release: Release,
}

/// What dropping an [`OwnedLink`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Closes the link (its owner's): the default.
    Retire,
    /// Sends this frame on it and leaves it open (lent).
    Send(&'static [u8]),
    /// Leaves it open (lent, nothing to undo).
    Nothing,
}

impl OwnedLink {
    pub fn open(
        node: Arc<Node>,
        proto: Proto,
        kind: LinkKind,
        creds: Option<Arc<Credentials>>,
    ) -> OwnedLink {
        OwnedLink {
            link: Link::open_as(node, proto, kind, creds),
            release: Release::Retire,
        }
    }

    /// `link`, kept open when this is dropped: `release` is sent on it then.
    pub fn lent(link: Rc<Link>, release: &'static [u8]) -> OwnedLink {
        OwnedLink {
            link,
            release: Release::Send(release),
        }
    }

    pub fn link(&self) -> &Rc<Link> {
        &self.link
    }

    pub fn release(&self) -> Release {
        self.release
    }

    /// Changes what dropping it does (the link changes hands).
    pub fn set_release(&mut self, r: Release) {
        self.release = r;
    }
}

impl std::ops::Deref for OwnedLink {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.link
    }
}

impl Drop for OwnedLink {
    fn drop(&mut self) {
        match self.release {
            Release::Retire => self.link.retire(),
            Release::Send(frame) => {
                let _ = self.link.send_silent(frame);
            }
            Release::Nothing => {}
        }
    }
}

/// Per-link metric counts, flushed by the worker's tick (no shared atomics per reply).
struct LinkStats {
    m: NodeMetrics,
    hist: prometheus::local::LocalHistogram,
    requests: u64,
    errors: u64,
}

impl LinkStats {
    fn new(m: &NodeMetrics) -> Self {
        LinkStats {
            hist: m.latency.local(),
            m: m.clone(),
            requests: 0,
            errors: 0,
        }
    }

    #[inline]
    fn reply(&mut self, frame: &Bytes, took: Duration) {
        if frame.first() == Some(&b'-') {
            self.errors += 1;
        }
        self.hist.observe(took.as_secs_f64());
    }

    fn flush(&mut self) {
        if self.requests > 0 {
            self.m.requests.inc_by(std::mem::take(&mut self.requests));
        }
        if self.errors > 0 {
            self.m.errors.inc_by(std::mem::take(&mut self.errors));
        }
        self.hist.flush();
    }
}
