//! One client connection, on one worker: read commands, route them, write replies in order.
//!
//! Owns: the per-client state (protocol version, name, authentication), the socket loop and
//! its buffers, backpressure (stop reading at `max_pipeline` commands in flight or with
//! `OUT_HIGH` bytes of unsent replies), coalesced writes, and the output side of the reply
//! queue. The rest of a session lives in its submodules: [`queue`] (the entries in request
//! order), [`dispatch`] (from a command to queue entries), [`flight`] (sending, replies,
//! redirects and retries), [`decide`] (the pure rules for a reply), [`tx`] (transactions),
//! [`local`] (commands slotmux answers itself) and [`pubsub`].
//! Must not: block on a backend (requests go into the worker's links, replies come back
//! through the session's inbox), allocate per forwarded single-key command in the steady
//! state, or resend a command that may have run unless it is read-only.

mod auth;
mod decide;
mod dispatch;
mod flight;
mod local;
mod monitor;
mod pubsub;
mod queue;
mod tracking;
mod tx;

/// The inbox tag of invalidations redirected to a session by another client's tracking.
pub const REDIRECTED_TAG: u64 = tracking::REDIRECTED_TAG;

use bytes::{Bytes, BytesMut};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clients::ClientEntry;
use crate::cluster::Topology;
use crate::error::ProxyError;
use crate::metrics::{Outcome, SessionStats};
use crate::resp::request::{Limits, RequestScanner};
use crate::resp::write::Proto;
use crate::shared::Shared;
use crate::upstream::{Inbox, Node, Signal};
use crate::worker::Worker;
use queue::{Entry, Meta, Queue, Slot};

const READ_CHUNK: usize = 16 * 1024;
/// The first read of a new client: most first commands are small.
const FIRST_READ: usize = 512;
/// Stop reading from a client while this much output waits for it.
const OUT_HIGH: usize = 1 << 20;

type TopoCache = arc_swap::Cache<Arc<arc_swap::ArcSwap<Topology>>, Arc<Topology>>;

pub struct Session {
    worker: Rc<Worker>,
    /// This client in the registry CLIENT LIST reads.
    me: Arc<ClientEntry>,
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    proto: Proto,
    name: Option<Bytes>,
    authed: bool,
    topo: TopoCache,
    inbox: Rc<Inbox>,
    queue: Queue,
    /// The command being handled, until it is queued or answered.
    cur: Option<Meta>,
    /// When the current batch of client input was read: the send time of its commands.
    now: Instant,
    stats: SessionStats,
    /// Resends due at a time: (when, tag).
    retries: Vec<(Instant, u64)>,
    out: BytesMut,
    /// Bytes of replies queued without a command of their own (pub/sub pushes behind a
    /// pending command): they count against the pub/sub output limit like `out`.
    push_bytes: usize,
    closing: bool,
    /// Drop the client now, without flushing (output limit reached).
    kill: bool,
    last_write: Option<Arc<Node>>,
    watch: Option<tx::Watch>,
    multi: Option<tx::Multi>,
    /// Transactions sent with work left for when EXEC has run (commands slotmux answers,
    /// cluster-wide commands for the other nodes): (tag, work). Usually empty.
    tx_after: Vec<(u64, tx::AfterExec)>,
    /// Replies slotmux makes go here instead of to the client (a command it answers inside a
    /// transaction, run when EXEC's reply arrives).
    capture: Option<BytesMut>,
    pubsub: Option<pubsub::PubSub>,
    /// CLIENT REPLY: whether replies are written.
    reply_mode: ReplyMode,
    /// A command held by CLIENT PAUSE (its frame and argument ranges): nothing after it is
    /// read until it goes.
    held: Option<(Bytes, Vec<(usize, usize)>)>,
    /// MONITOR's streams, once the client asked for it.
    monitor: Option<monitor::Monitor>,
    /// The command being handled gets no reply (CLIENT REPLY OFF, or SKIP before it).
    silent: bool,
    /// Where this client's reads go (`--read-from`, then READONLY/READWRITE).
    read_from: crate::router::ReadFrom,
    /// Whose links its commands use: 0, the default identity, or the user it authenticated
    /// as (`--auth-mode passthrough`).
    user: crate::worker::UserId,
    /// An AUTH the cluster is checking (passthrough): reading waits for it. Boxed: rare,
    /// and every idle client would carry its room.
    auth_wait: Option<Box<auth::AuthWait>>,
    /// CLIENT TRACKING, while on. Boxed: rare.
    tracking: Option<Box<tracking::Tracking>>,
    /// `held` waits for the client's earlier commands to be answered, not for a pause: it
    /// moves the client's commands between the shared and its tracked links (CLIENT
    /// TRACKING, or AUTH/HELLO/RESET while tracking), and nothing sent before may be overtaken.
    drain_hold: bool,
}

/// CLIENT REPLY's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// The next command's reply is dropped (CLIENT REPLY SKIP).
    SkipNext,
}

impl Session {
    /// Serves one client until it quits, breaks the protocol, is killed, or shutdown drains
    /// it.
    /// `tls`: the client came in on `--tls-listen`; the handshake runs here, on the worker.
    pub async fn run(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, tls: bool) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream) as i64;
        if !tls {
            let mut stream = stream;
            let (rd, wr) = stream.split();
            return Self::serve(worker, rd, wr, (peer, local, fd), false).await;
        }
        // Boxed: the TLS state machine is large, and a plain client's task must not carry
        // room for it (an idle plain client costs a few KiB in all).
        Box::pin(Self::run_tls(worker, stream, (peer, local, fd))).await
    }

    async fn run_tls(worker: Rc<Worker>, stream: TcpStream, at: (SocketAddr, SocketAddr, i64)) {
        let Some(server) = worker.shared.tls.server.clone() else {
            return;
        };
        if let Some(stream) = server.accept(stream, at.0).await {
            // One TLS state for both directions: the halves share it behind a lock that only
            // this task takes.
            let (rd, wr) = tokio::io::split(stream);
            Self::serve(worker, rd, wr, at, true).await
        }
    }

    /// The session loop over a connection's two halves. `flushes`: writes may leave bytes
    /// buffered in the stream (TLS records), which a flush pushes out.
    async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        worker: Rc<Worker>,
        mut rd: R,
        mut wr: W,
        (peer, local, fd): (SocketAddr, SocketAddr, i64),
        flushes: bool,
    ) {
        let shared = worker.shared.clone();
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let me = shared
            .client_list
            .register(id, peer, local, fd, worker.tx.clone());
        let inbox = Rc::new(Inbox::default());
        worker.enter(id, &inbox);
        let _listed = Listed(shared.clone(), worker.clone(), id);
        let topo = arc_swap::Cache::new(shared.cluster.cell());
        let mut s = Session {
            authed: shared.config.requirepass.is_none() || shared.config.auth_mode == "passthrough",
            worker,
            me: me.clone(),
            shared,
            id,
            peer,
            proto: Proto::Resp2,
            name: None,
            topo,
            inbox: inbox.clone(),
            queue: Queue::default(),
            tx_after: Vec::new(),
            capture: None,
            cur: None,
            now: Instant::now(),
            stats: SessionStats::default(),
            retries: Vec::new(),
            // Buffers grow on first use: an idle client costs a few KiB, not 32.
            out: BytesMut::new(),
            push_bytes: 0,
            closing: false,
            kill: false,
            last_write: None,
            watch: None,
            multi: None,
            pubsub: None,
            reply_mode: ReplyMode::On,
            held: None,
            monitor: None,
            silent: false,
            read_from: crate::router::ReadFrom::Master,
            user: 0,
            auth_wait: None,
            tracking: None,
            drain_hold: false,
        };
        s.read_from = crate::router::ReadFrom::parse(&s.shared.config.read_from);
        let cfg = s.shared.config.clone();
        let mut scanner = RequestScanner::new(Limits {
            max_bulk_len: cfg.proto_max_bulk_len.min(usize::MAX as u64) as usize,
            max_args: i32::MAX as usize,
        });
        let query_limit = cfg.client_query_buffer_limit.min(usize::MAX as u64) as usize;
        let max_pipeline = cfg.max_pipeline as usize;
        let idle = cfg.idle_timeout;
        let mut inbuf = BytesMut::new();
        let mut unflushed = false;
        let retry_sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(retry_sleep);
        let never = Duration::from_secs(86400 * 365);
        let idle_sleep = tokio::time::sleep(if idle.is_zero() { never } else { idle });
        tokio::pin!(idle_sleep);
        // When the retry timer fires, if it is armed: an earlier retry re-arms it.
        let mut retry_at: Option<Instant> = None;
        let mut yielded = false;

        loop {
            // Parse whatever is buffered while there is room in the pipeline.
            if !s.closing && !inbuf.is_empty() {
                while s.queue.len() < max_pipeline
                    && !s.closing
                    && s.held.is_none()
                    && !s.auth_pending()
                {
                    match scanner.next(&mut inbuf) {
                        Ok(Some(frame)) => {
                            let args = crate::command::Args {
                                frame: &frame,
                                ranges: scanner.args(),
                            };
                            match s.paused_until(args) {
                                Some(until) => s.hold(frame.clone(), scanner.args(), until),
                                None => s.handle(frame, scanner.args()),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            s.reply_error(ProxyError::redis(format!("ERR {e}")));
                            s.closing = true;
                            inbuf.clear();
                        }
                    }
                }
                if inbuf.len() > query_limit {
                    tracing::info!(client = %s.peer, "closing client that reached the query buffer limit");
                    s.reply_error(ProxyError::redis(
                        "ERR Protocol error: client query buffer limit reached",
                    ));
                    s.closing = true;
                    inbuf.clear();
                }
            }
            shrink(&mut inbuf);
            s.flush_ready();
            if s.drain_hold && s.queue.is_empty() {
                s.release_drained();
                continue;
            }
            if s.kill || (s.closing && s.queue.is_empty() && s.out.is_empty()) {
                break;
            }
            if let Some(next) = s.retries.iter().map(|r| r.0).min() {
                if needs_rearm(retry_at, next) {
                    retry_sleep.as_mut().reset(next);
                    retry_at = Some(next);
                }
            }
            let can_read = !s.closing
                && s.held.is_none()
                && !s.auth_pending()
                && s.queue.len() < max_pipeline
                && s.out.len() < OUT_HIGH;
            if can_read && inbuf.capacity() - inbuf.len() < FIRST_READ / 2 {
                // Small until the client shows it sends more.
                inbuf.reserve(if inbuf.capacity() == 0 {
                    FIRST_READ
                } else {
                    READ_CHUNK
                });
            }
            if !s.out.is_empty() && !s.queue.is_empty() && !yielded {
                // More replies are on their way (a pipeline spread over several nodes): let
                // the links deliver theirs first, so one write carries them all. At most once
                // per write, so a slow node delays nothing.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                () = poll_fn(|cx| inbox.poll_ready(cx)) => {
                    // Kills and the drain come through the inbox too: no other waker to poll
                    // on every turn.
                    let signals = inbox.take_signals();
                    if Signal::Kill.raised_in(signals) {
                        tracing::debug!(client = %s.peer, "client killed by CLIENT KILL");
                        break;
                    }
                    if Signal::Drain.raised_in(signals) {
                        s.closing = true;
                    }
                    if Signal::Unpause.raised_in(signals) {
                        s.release_held();
                    }
                    while let Some(reply) = inbox.pop() {
                        s.on_reply(reply);
                    }
                }
                // Writes what is ready; with nothing left to write, flushes what TLS kept back
                // (a write answers Ok(0) only for an empty buffer, so 0 means "flushed").
                r = async {
                    if s.out.is_empty() {
                        wr.flush().await.map(|()| 0)
                    } else {
                        wr.write_buf(&mut s.out).await
                    }
                }, if !s.out.is_empty() || unflushed => {
                    match r {
                        Ok(0) => unflushed = false,
                        Ok(n) => {
                            yielded = false;
                            unflushed = flushes;
                            s.stats.bytes_out += n as u64;
                            shrink(&mut s.out);
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
                            // One clock read for all the commands of this read (16 at
                            // pipeline 16): their latency counts from here.
                            s.now = Instant::now();
                            s.stats.bytes_in += n as u64;
                            if !idle.is_zero() {
                                idle_sleep.as_mut().reset(s.now + idle);
                            }
                        }
                    }
                }
                () = &mut retry_sleep, if retry_at.is_some() => {
                    retry_at = None;
                    s.run_due_retries();
                }
                // As in Redis, subscribers are exempt from the idle timeout.
                () = &mut idle_sleep, if !idle.is_zero() && s.queue.is_empty() && s.pubsub.is_none() => {
                    tracing::debug!(client = %s.peer, "closing idle client");
                    break;
                }

            }
        }
        inbox.close();
        // Tracking ends with the session, before its user: nobody is told to drop a cache.
        s.tracking = None;
        s.become_user(0);
        // A TLS close_notify to a client that reads nothing must not hold the task.
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        s.stats.flush(&s.shared.metrics, 0);
    }

    /// Answers the current command with a reply slotmux makes itself, keeping request order.
    /// Its outcome is read off the reply (an error reply counts as Redis's error).
    fn reply_local(&mut self, f: impl FnOnce(&mut BytesMut, Proto)) {
        self.reply_with(None, f)
    }

    /// Answers the current command with one of slotmux's errors.
    fn reply_error(&mut self, e: ProxyError) {
        let frame = e.frame();
        self.reply_with(Some(e.outcome()), |o, _| o.extend_from_slice(&frame));
    }

    fn reply_with(&mut self, outcome: Option<Outcome>, f: impl FnOnce(&mut BytesMut, Proto)) {
        if let Some(c) = self.capture.as_mut() {
            return f(c, self.proto);
        }
        let meta = self.cur.take();
        if self.queue.is_empty() {
            let start = self.out.len();
            f(&mut self.out, self.proto);
            if let Some(m) = meta {
                let outcome = outcome.unwrap_or_else(|| Outcome::of_reply(&self.out[start..]));
                let took = m.started.elapsed();
                self.stats
                    .record(&self.shared.metrics, m.name, outcome, took.as_secs_f64());
                self.maybe_slowlog(&m, took, None);
            }
            if self.silent {
                self.out.truncate(start);
            }
        } else {
            let mut b = BytesMut::new();
            f(&mut b, self.proto);
            let outcome = outcome.unwrap_or_else(|| Outcome::of_reply(&b));
            if meta.is_none() {
                self.push_bytes += b.len();
            }
            self.queue
                .push(Entry::ready(b.freeze(), outcome), meta, self.silent);
        }
    }

    /// Queues an entry answering the current command; returns its number.
    fn push(&mut self, e: Entry) -> u64 {
        let meta = self.cur.take();
        self.queue.push(e, meta, self.silent)
    }

    /// Moves finished replies at the front of the queue to the output, in order.
    fn flush_ready(&mut self) {
        let mut now = None;
        while let Some(Slot {
            entry: Entry::Ready { .. },
            ..
        }) = self.queue.front()
        {
            let Some(Slot {
                entry:
                    Entry::Ready {
                        reply,
                        outcome,
                        request,
                    },
                meta,
                silent,
            }) = self.queue.pop_front()
            else {
                break;
            };
            if !silent {
                self.out.extend_from_slice(&reply);
            }
            if meta.is_none() {
                self.push_bytes = self.push_bytes.saturating_sub(reply.len());
            }
            if let Some(m) = meta {
                let t = *now.get_or_insert_with(Instant::now);
                let took = t.saturating_duration_since(m.started);
                self.stats
                    .record(&self.shared.metrics, m.name, outcome, took.as_secs_f64());
                self.maybe_slowlog(&m, took, request);
            }
        }
        if let Some(t) = now {
            self.stats
                .maybe_flush(&self.shared.metrics, t.into_std(), self.queue.len());
        }
    }

    /// Logs a finished command that took at least `slowlog-log-slower-than`, as Redis does
    /// (replies slotmux makes itself included: PING is logged too).
    fn maybe_slowlog(&self, m: &Meta, took: std::time::Duration, request: Option<Bytes>) {
        if m.skip_slowlog || self.shared.slowlog.threshold().is_none_or(|t| took < t) {
            return;
        }
        let request = request.unwrap_or_else(|| m.request.clone());
        self.shared
            .slowlog
            .record(took, &request, self.peer, self.name.as_ref());
    }

    /// Tells the client registry what changed (name, protocol, subscriptions, MULTI): cold,
    /// called when one of those changes.
    fn publish_view(&self) {
        let name = self.name.clone();
        let resp = self.proto.number();
        let (sub, psub, ssub) = self.pubsub_counts();
        let multi = self.multi_count();
        let user = self.worker.user_name(self.user);
        self.me.set_view(|v| {
            v.user = user;
            v.name = name;
            v.resp = resp;
            v.sub = sub;
            v.psub = psub;
            v.ssub = ssub;
            v.multi = multi;
        });
    }

    /// Whether the session holds a connection of its own that must close with the client.
    fn holds_dedicated(&self) -> bool {
        self.watch.is_some()
            || self.pubsub.is_some()
            || self.monitor.is_some()
            || self
                .queue
                .iter()
                .any(|s| matches!(&s.entry, Entry::One(f) if f.via == queue::Via::Dedicated))
    }
}

/// Whether the retry timer, armed for `armed` (if at all), must be moved to `next`: a retry
/// due sooner than the armed one must not wait for it (a 10 ms TRYAGAIN behind a 250 ms
/// CLUSTERDOWN backoff).
fn needs_rearm(armed: Option<Instant>, next: Instant) -> bool {
    armed.is_none_or(|at| next < at)
}

/// Takes a client out of the registry and its worker's list when its session ends, however
/// it ends.
struct Listed(Arc<Shared>, Rc<Worker>, u64);

impl Drop for Listed {
    fn drop(&mut self) {
        self.0.client_list.remove(self.2);
        self.1.leave(self.2);
    }
}

/// Gives back the memory of a buffer that once held a huge command or reply, once it is empty.
fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 1 << 20 {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_retry_moves_the_timer() {
        let now = Instant::now();
        let soon = now + Duration::from_millis(10);
        let late = now + Duration::from_millis(250);
        assert!(needs_rearm(None, late));
        assert!(
            needs_rearm(Some(late), soon),
            "10 ms must not wait behind 250 ms"
        );
        assert!(!needs_rearm(Some(soon), late));
        assert!(!needs_rearm(Some(soon), soon));
    }
}
