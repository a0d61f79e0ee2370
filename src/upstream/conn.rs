//! One multiplexed, pipelined connection to one Redis node, shared by many client sessions.
//!
//! Owns: the socket, the write batching (every request queued since the last write goes out in
//! one write), the in-order matching of replies to requests, the `ASKING` prefix, the reply
//! timeout, and failing every request cleanly when the connection breaks (`NotSent` for what
//! was never written, `Lost`/`Timeout` for what was).
//! Must not: retry or reconnect by itself (the pool makes a new connection on next use), or
//! parse replies beyond their boundaries.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::{Reply, Request, UpstreamError};
use crate::metrics::NodeMetrics;
use crate::resp::reply::ReplyScanner;
use crate::resp::write::Proto;

const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
/// Stop taking new requests while this much is waiting to be written.
const WRITE_HIGH: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Settings shared by every backend connection.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// The handle sessions send through. Cheap to share; the task behind it owns the socket.
#[derive(Debug)]
pub struct ConnHandle {
    tx: UnboundedSender<Request>,
    alive: Arc<AtomicBool>,
}

impl ConnHandle {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// A sender for this connection (keeps it open while held).
    pub fn sender(&self) -> UnboundedSender<Request> {
        self.tx.clone()
    }

    /// Queues a request. Gives it back if the connection is already closed.
    pub fn send(&self, req: Request) -> Result<(), Request> {
        self.tx.send(req).map_err(|e| e.0)
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnEnd {
    /// Every handle was dropped and all in-flight work finished.
    Idle,
    ConnectFailed(String),
    Broken(String),
    Timeout,
}

/// How a connection is used.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Shared by many sessions: replies matched to requests in order, reply timeout on.
    Shared,
    /// Owned by one session (transactions, blocking commands): replies matched in order, no
    /// reply timeout (a BLPOP may wait forever), and closed as soon as the handle is dropped,
    /// even with a request in flight.
    Dedicated,
    /// Owned by one session for pub/sub: every frame the node sends is delivered with this tag
    /// to this sender; requests get no reply of their own. Closed when the handle is dropped;
    /// when the connection ends, the sender gets one `Err(Lost)` with the tag.
    Stream {
        tag: u64,
        to: UnboundedSender<Reply>,
    },
}

/// Starts a connection task to `addr`. `on_end` runs once when the task ends, with why.
pub fn spawn(
    addr: Arc<str>,
    proto: Proto,
    settings: Arc<ConnSettings>,
    mode: Mode,
    metrics: NodeMetrics,
    on_connected: impl FnOnce() + Send + 'static,
    on_end: impl FnOnce(&ConnEnd) + Send + 'static,
) -> ConnHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    tokio::spawn(async move {
        let end = run(
            &addr,
            proto,
            &settings,
            &mode,
            &metrics,
            rx,
            &flag,
            on_connected,
        )
        .await;
        if let Mode::Stream { tag, to } = &mode {
            let _ = to.send(Reply {
                tag: *tag,
                result: Err(UpstreamError::Lost),
            });
        }
        on_end(&end);
    });
    ConnHandle { tx, alive }
}

struct Inflight {
    tag: u64,
    /// `None` for the reply to our own `ASKING`, which nobody waits for.
    reply_to: Option<UnboundedSender<Reply>>,
    sent: Instant,
}

#[allow(clippy::too_many_arguments)] // one private call site; a struct would only rename them
async fn run(
    addr: &str,
    proto: Proto,
    settings: &ConnSettings,
    mode: &Mode,
    metrics: &NodeMetrics,
    mut rx: UnboundedReceiver<Request>,
    alive: &AtomicBool,
    on_connected: impl FnOnce(),
) -> ConnEnd {
    let mut q: VecDeque<Inflight> = VecDeque::with_capacity(64);
    let end = match connect(addr, proto, settings).await {
        Ok(mut stream) => {
            on_connected();
            let mut local = Local::new(metrics);
            let end = pump(
                &mut stream,
                &mut rx,
                &mut q,
                settings.reply_timeout,
                mode,
                &mut local,
            )
            .await;
            local.flush();
            end
        }
        Err(e) => ConnEnd::ConnectFailed(e),
    };
    alive.store(false, Ordering::Relaxed);
    rx.close();
    let written_err = match end {
        ConnEnd::Timeout => UpstreamError::Timeout,
        _ => UpstreamError::Lost,
    };
    for f in q.drain(..) {
        if let Some(tx) = f.reply_to {
            let _ = tx.send(Reply {
                tag: f.tag,
                result: Err(written_err),
            });
        }
    }
    while let Ok(req) = rx.try_recv() {
        let _ = req.reply_to.send(Reply {
            tag: req.tag,
            result: Err(UpstreamError::NotSent),
        });
    }
    end
}

/// Writes `args` as a RESP command (cold path: handshakes only).
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Opens a connection and runs the handshake (`HELLO 3` for RESP3 pools, `AUTH` when
/// configured). Errors are strings: they only end up in logs.
pub async fn connect(
    addr: &str,
    proto: Proto,
    settings: &ConnSettings,
) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let mut init = BytesMut::new();
    let mut expected = 0;
    let user = settings.user.as_deref().unwrap_or("default").as_bytes();
    match (proto, settings.password.as_deref()) {
        (Proto::Resp3, Some(pw)) => {
            encode_command(&mut init, &[b"HELLO", b"3", b"AUTH", user, pw.as_bytes()]);
            expected += 1;
        }
        (Proto::Resp3, None) => {
            encode_command(&mut init, &[b"HELLO", b"3"]);
            expected += 1;
        }
        (Proto::Resp2, Some(pw)) => {
            encode_command(&mut init, &[b"AUTH", user, pw.as_bytes()]);
            expected += 1;
        }
        (Proto::Resp2, None) => {}
    }
    if expected > 0 {
        let replies = tokio::time::timeout(settings.reply_timeout, async {
            stream.write_all(&init).await?;
            read_replies(&mut stream, expected).await
        })
        .await
        .map_err(|_| format!("handshake with {addr} timed out"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
        for r in replies {
            if r.first() == Some(&b'-') {
                return Err(format!(
                    "handshake with {addr} refused: {}",
                    String::from_utf8_lossy(&r[1..]).trim_end()
                ));
            }
        }
    }
    Ok(stream)
}

/// Reads exactly `n` complete replies from a fresh connection (cold path).
pub async fn read_replies(stream: &mut TcpStream, n: usize) -> std::io::Result<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(n);
    let mut scanner = ReplyScanner::new();
    while out.len() < n {
        match scanner.scan(&buf) {
            Ok(Some(len)) => {
                out.push(buf.split_to(len).freeze());
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

/// Gives back the memory of a buffer that once held a huge command or reply, once it is empty.
pub(crate) fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 1 << 20 {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
}

/// Per-connection metric counts, flushed about once a second (no shared atomics per reply).
struct Local {
    m: NodeMetrics,
    hist: prometheus::local::LocalHistogram,
    requests: u64,
    errors: u64,
    last: Instant,
}

impl Local {
    fn new(m: &NodeMetrics) -> Self {
        Local {
            hist: m.latency.local(),
            m: m.clone(),
            requests: 0,
            errors: 0,
            last: Instant::now(),
        }
    }

    #[inline]
    fn reply(&mut self, frame: &[u8], took: Duration) {
        if frame.first() == Some(&b'-') {
            self.errors += 1;
        }
        self.hist.observe(took.as_secs_f64());
    }

    fn maybe_flush(&mut self, now: Instant) {
        if now.duration_since(self.last) >= Duration::from_secs(1) {
            self.flush();
            self.last = now;
        }
    }

    fn flush(&mut self) {
        self.m.requests.inc_by(std::mem::take(&mut self.requests));
        self.m.errors.inc_by(std::mem::take(&mut self.errors));
        self.hist.flush();
    }
}

fn enqueue(
    wbuf: &mut BytesMut,
    q: &mut VecDeque<Inflight>,
    req: Request,
    now: Instant,
    mode: &Mode,
) {
    if let Mode::Stream { .. } = mode {
        wbuf.extend_from_slice(&req.frame);
        return;
    }
    if req.asking {
        wbuf.extend_from_slice(ASKING);
        q.push_back(Inflight {
            tag: 0,
            reply_to: None,
            sent: now,
        });
    }
    wbuf.extend_from_slice(&req.frame);
    q.push_back(Inflight {
        tag: req.tag,
        reply_to: Some(req.reply_to),
        sent: now,
    });
}

async fn pump(
    stream: &mut TcpStream,
    rx: &mut UnboundedReceiver<Request>,
    q: &mut VecDeque<Inflight>,
    timeout: Duration,
    mode: &Mode,
    local: &mut Local,
) -> ConnEnd {
    let timeout_on = matches!(mode, Mode::Shared);
    let (mut rd, mut wr) = stream.split();
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::new();
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut armed = false;
    let mut rx_open = true;
    loop {
        if !rx_open && q.is_empty() && wbuf.is_empty() {
            return ConnEnd::Idle;
        }
        if !armed && timeout_on {
            if let Some(front) = q.front() {
                sleep.as_mut().reset(front.sent + timeout);
                armed = true;
            }
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            r = rd.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => return ConnEnd::Broken("closed by peer".into()),
                    Ok(_) => {}
                    Err(e) => return ConnEnd::Broken(e.to_string()),
                }
                let now = Instant::now();
                local.maybe_flush(now);
                loop {
                    match scanner.scan(&rbuf) {
                        Ok(Some(len)) => {
                            let frame = rbuf.split_to(len).freeze();
                            if let Mode::Stream { tag, to } = mode {
                                if to.send(Reply { tag: *tag, result: Ok(frame) }).is_err() {
                                    return ConnEnd::Idle;
                                }
                                continue;
                            }
                            if frame[0] == b'>' {
                                // Out-of-band push (no subscriptions live on shared connections).
                                continue;
                            }
                            let Some(f) = q.pop_front() else {
                                return ConnEnd::Broken("reply without a request".into());
                            };
                            local.reply(&frame, now.saturating_duration_since(f.sent));
                            if let Some(tx) = f.reply_to {
                                let _ = tx.send(Reply { tag: f.tag, result: Ok(frame) });
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return ConnEnd::Broken(format!("bad reply: {e}")),
                    }
                }
                shrink(&mut rbuf);
            }
            r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                if let Err(e) = r {
                    return ConnEnd::Broken(e.to_string());
                }
                shrink(&mut wbuf);
            }
            req = rx.recv(), if rx_open && wbuf.len() < WRITE_HIGH => {
                match req {
                    // A session-owned connection closes with its owner, in flight or not.
                    None if !matches!(mode, Mode::Shared) => return ConnEnd::Idle,
                    None => rx_open = false,
                    Some(req) => {
                        let now = Instant::now();
                        local.requests += 1;
                        enqueue(&mut wbuf, q, req, now, mode);
                        let mut batch = 1;
                        for round in 0..2 {
                            while wbuf.len() < WRITE_HIGH {
                                match rx.try_recv() {
                                    Ok(req) => {
                                        local.requests += 1;
                                        batch += 1;
                                        enqueue(&mut wbuf, q, req, now, mode)
                                    }
                                    Err(_) => break,
                                }
                            }
                            // Woken by one session's send, tokio runs this task at once (LIFO
                            // slot): let the other ready sessions queue their commands first, so
                            // one write carries many.
                            if round == 0 && batch == 1 && matches!(mode, Mode::Shared) {
                                tokio::task::yield_now().await;
                            } else {
                                break;
                            }
                        }
                    }
                }
            }
            () = &mut sleep, if armed => {
                armed = false;
                if let Some(front) = q.front() {
                    if Instant::now() >= front.sent + timeout {
                        return ConnEnd::Timeout;
                    }
                }
            }
        }
    }
}
