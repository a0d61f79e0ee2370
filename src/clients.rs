//! The clients slotmux serves, as `CLIENT LIST`, `CLIENT KILL` and `CLIENT UNBLOCK` see them
//! from any worker.
//!
//! Owns: the registry of connected clients (an entry per session, added and removed with it),
//! each client's view for `CLIENT LIST` (what changes per command is two relaxed atomic
//! stores by the owning session; the rest changes rarely, behind a lock), the kill signal a
//! session listens for, and where a client is blocked (node and the node's own client id) so
//! `CLIENT UNBLOCK` can reach it.
//! Must not: be locked per command (only connects, disconnects and rare state changes lock).

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

use crate::upstream::Node;
use crate::worker::WorkerMsg;

/// A client's state that changes rarely (names, subscriptions, transactions).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub name: Option<Bytes>,
    pub resp: i64,
    pub sub: usize,
    pub psub: usize,
    pub ssub: usize,
    /// Commands queued in MULTI, or -1.
    pub multi: i64,
    /// The ACL user it authenticated as (`--auth-mode passthrough`); `None`: default.
    pub user: Option<std::sync::Arc<str>>,
    /// CLIENT TRACKING is on, redirecting to this client id (0: none).
    pub redir: Option<i64>,
}

/// One connected client.
pub struct ClientEntry {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub fd: i64,
    started: Instant,
    /// Milliseconds since `started` of the last command, and its id (`command::command_id`).
    active_ms: AtomicU64,
    cmd: AtomicU16,
    view: Mutex<View>,
    killed: AtomicBool,
    /// A command of the client waits for a CLIENT PAUSE to end (Redis counts it blocked).
    postponed: AtomicBool,
    /// The worker that serves the client: a kill goes through it.
    worker: Option<UnboundedSender<WorkerMsg>>,
    /// Where the client waits in a blocking command: the node, and that node's id for the
    /// connection (for `CLIENT UNBLOCK`).
    blocked: Mutex<Option<(Arc<Node>, i64)>>,
}

impl ClientEntry {
    /// The session's last command and when it came (hot: two relaxed stores).
    #[inline]
    pub fn touch(&self, cmd: u16, at: Instant) {
        self.cmd.store(cmd, Ordering::Relaxed);
        self.active_ms.store(
            at.saturating_duration_since(self.started).as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    pub fn set_view(&self, f: impl FnOnce(&mut View)) {
        if let Ok(mut v) = self.view.lock() {
            f(&mut v);
        }
    }

    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn set_blocked(&self, on: Option<(Arc<Node>, i64)>) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = on;
        }
    }

    pub fn blocked_on(&self) -> Option<(Arc<Node>, i64)> {
        self.blocked.lock().ok().and_then(|b| b.clone())
    }

    pub fn set_postponed(&self, on: bool) {
        self.postponed.store(on, Ordering::Relaxed);
    }

    /// Blocked, for INFO and CLIENT LIST: held by a node or by a pause.
    pub fn is_blocked(&self) -> bool {
        self.postponed.load(Ordering::Relaxed) || self.blocked_on().is_some()
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Hands an invalidation that another client's tracking redirects here to this client's
    /// session (through its worker, from any thread).
    pub fn send_invalidation(&self, keys: Bytes) {
        if let Some(w) = &self.worker {
            let _ = w.send(WorkerMsg::Invalidate(self.id, keys));
        }
    }

    /// Asks the session to close the connection (through its worker, from any thread).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        if let Some(w) = &self.worker {
            let _ = w.send(WorkerMsg::Kill(self.id));
        }
    }

    /// The client's `CLIENT LIST` line (Redis 7.0's fields; the memory ones are 0). `qbuf`:
    /// the bytes of its input slotmux holds (the command being answered, for the caller).
    pub fn line(&self, now: Instant, qbuf: usize) -> String {
        let v = self.view();
        let idle_ms = now
            .saturating_duration_since(self.started)
            .as_millis()
            .saturating_sub(u128::from(self.active_ms.load(Ordering::Relaxed)));
        let mut flags = String::new();
        if v.sub + v.psub + v.ssub > 0 {
            flags.push('P');
        }
        if v.multi >= 0 {
            flags.push('x');
        }
        if self.is_blocked() {
            flags.push('b');
        }
        if v.redir.is_some() {
            flags.push('t');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db=0 sub={} psub={} ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir={} resp={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            v.name
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            now.saturating_duration_since(self.started).as_secs(),
            idle_ms / 1000,
            flags,
            v.sub,
            v.psub,
            v.ssub,
            v.multi,
            qbuf,
            crate::command::command_name(self.cmd.load(Ordering::Relaxed)),
            v.user.as_deref().unwrap_or("default"),
            v.redir.unwrap_or(-1),
            v.resp,
        )
    }
}

/// Every connected client, by id.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// BCAST prefixes of those clients, with how many clients use each (INFO's
    /// `tracking_total_prefixes` counts them once, as Redis's prefix table does).
    prefixes: Mutex<HashMap<Bytes, usize>>,
}

impl Clients {
    pub fn add_prefix(&self, p: &Bytes) {
        if let Ok(mut m) = self.prefixes.lock() {
            *m.entry(p.clone()).or_default() += 1;
        }
    }

    pub fn remove_prefix(&self, p: &Bytes) {
        if let Ok(mut m) = self.prefixes.lock() {
            if let Some(n) = m.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    m.remove(p);
                }
            }
        }
    }

    pub fn tracking_prefixes(&self) -> usize {
        self.prefixes.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Clients {
    /// Adds a client; the session removes it when it ends ([`Clients::remove`], from a drop
    /// guard, so a panicking session is removed too).
    pub fn register(
        &self,
        id: u64,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i64,
        worker: Option<UnboundedSender<WorkerMsg>>,
    ) -> Arc<ClientEntry> {
        let entry = Arc::new(ClientEntry {
            id,
            addr,
            laddr,
            fd,
            started: Instant::now(),
            active_ms: AtomicU64::new(0),
            cmd: AtomicU16::new(u16::MAX),
            view: Mutex::new(View {
                resp: 2,
                multi: -1,
                ..View::default()
            }),
            killed: AtomicBool::new(false),
            postponed: AtomicBool::new(false),
            worker,
            blocked: Mutex::new(None),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, entry.clone());
        }
        entry
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&id);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.map.lock().ok().and_then(|m| m.get(&id).cloned())
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<Arc<ClientEntry>> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// What `CLIENT KILL` selects.
#[derive(Debug, Default, PartialEq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    /// `normal` or `pubsub` (slotmux has no replica or master clients).
    pub kind: Option<String>,
    pub user: Option<String>,
    pub skipme: bool,
    /// The old form (`CLIENT KILL addr:port`): answers OK or an error, not a count.
    pub old_form: bool,
    /// `USER` may name any user (`--auth-mode passthrough`: the cluster's users).
    pub any_user: bool,
}

impl KillFilter {
    /// Parses `CLIENT KILL` arguments after the subcommand, with Redis's error texts.
    pub fn parse(args: &[&[u8]]) -> Result<KillFilter, std::borrow::Cow<'static, str>> {
        Self::parse_with(args, false)
    }

    /// Like [`KillFilter::parse`]; `any_user`: the cluster's users come through
    /// (passthrough), so `USER` may name any of them.
    pub fn parse_with(
        args: &[&[u8]],
        any_user: bool,
    ) -> Result<KillFilter, std::borrow::Cow<'static, str>> {
        if let [addr] = args {
            return Ok(KillFilter {
                addr: Some(String::from_utf8_lossy(addr).into_owned()),
                old_form: true,
                skipme: false,
                ..KillFilter::default()
            });
        }
        if args.is_empty() || args.len() % 2 != 0 {
            return Err(std::borrow::Cow::Borrowed("ERR syntax error"));
        }
        let mut f = KillFilter {
            skipme: true,
            any_user,
            ..KillFilter::default()
        };
        for pair in args.chunks(2) {
            let key = String::from_utf8_lossy(pair[0]).to_ascii_lowercase();
            let val = String::from_utf8_lossy(pair[1]).into_owned();
            match key.as_str() {
                "id" => {
                    f.id = Some(
                        val.parse::<u64>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or("ERR client-id should be greater than 0")?,
                    )
                }
                "addr" => f.addr = Some(val),
                "laddr" => f.laddr = Some(val),
                "type" => {
                    let t = val.to_ascii_lowercase();
                    if !matches!(
                        t.as_str(),
                        "normal" | "pubsub" | "master" | "replica" | "slave"
                    ) {
                        return Err(std::borrow::Cow::Borrowed("ERR Unknown client type"));
                    }
                    f.kind = Some(t);
                }
                // In proxy mode slotmux has one user, `default` (its --requirepass); the
                // cluster's users come through in passthrough mode (`with_users`).
                "user" if val == "default" || f.any_user => f.user = Some(val),
                "user" => return Err(format!("ERR No such user '{val}'").into()),
                "skipme" => match val.to_ascii_lowercase().as_str() {
                    "yes" => f.skipme = true,
                    "no" => f.skipme = false,
                    _ => return Err("ERR syntax error".into()),
                },
                "maxage" => {}
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, c: &ClientEntry, me: u64) -> bool {
        if self.skipme && c.id == me {
            return false;
        }
        let v = c.view();
        let pubsub = v.sub + v.psub + v.ssub > 0;
        self.id.is_none_or(|id| id == c.id)
            && self.addr.as_ref().is_none_or(|a| *a == c.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == c.laddr.to_string())
            && self
                .user
                .as_ref()
                .is_none_or(|u| *u == *v.user.as_deref().unwrap_or("default"))
            && self.kind.as_deref().is_none_or(|k| match k {
                "pubsub" => pubsub,
                "normal" => !pubsub,
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_filters_parse_like_redis() {
        let p = |a: &[&str]| {
            let v: Vec<&[u8]> = a.iter().map(|s| s.as_bytes()).collect();
            KillFilter::parse(&v)
        };
        assert_eq!(
            p(&["127.0.0.1:5"]).unwrap(),
            KillFilter {
                addr: Some("127.0.0.1:5".into()),
                old_form: true,
                ..KillFilter::default()
            }
        );
        let f = p(&["ID", "7", "SKIPME", "no"]).unwrap();
        assert_eq!((f.id, f.skipme, f.old_form), (Some(7), false, false));
        let err = |a: &[&str]| p(a).unwrap_err().into_owned();
        assert_eq!(err(&["ID", "0"]), "ERR client-id should be greater than 0");
        assert_eq!(err(&["TYPE", "wrong"]), "ERR Unknown client type");
        assert_eq!(err(&["ID", "1", "SKIPME"]), "ERR syntax error");
        assert_eq!(err(&["NOPE", "x"]), "ERR syntax error");
        assert_eq!(
            err(&["USER", "wrong_user"]),
            "ERR No such user 'wrong_user'"
        );
        assert_eq!(
            p(&["USER", "default"]).unwrap().user.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn a_registered_client_is_listed_until_its_session_ends() {
        let clients = Clients::default();
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let e = clients.register(9, addr, addr, 3, None);
        e.set_view(|v| v.name = Some(Bytes::from_static(b"worker")));
        let line = e.line(Instant::now(), 0);
        assert!(line.starts_with("id=9 addr=127.0.0.1:5000 laddr=127.0.0.1:5000 fd=3 name=worker age=0 idle=0 flags=N db=0 sub=0"), "{line}");
        assert!(
            line.ends_with("cmd=NULL user=default redir=-1 resp=2"),
            "{line}"
        );
        assert_eq!(clients.all().len(), 1);
        clients.remove(9);
        assert!(clients.get(9).is_none());
    }
}
