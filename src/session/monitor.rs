//! MONITOR through slotmux: the client sees what every master executes.
//!
//! Owns: one stream connection per master sending `MONITOR`, the `+OK` each node answers
//! first (the client gets one, from slotmux), and leaving out the lines of slotmux's own work
//! on the nodes (health-probe PINGs, topology queries, connection handshakes, the ASKING
//! before a redirected command): a client's PING, CLUSTER SLOTS or INFO server never reaches a
//! node, so such lines can only be slotmux's.
//! Must not: touch the shared connections. The client addresses in the lines are slotmux's
//! backend connections, not the clients'.

use bytes::Bytes;

use super::queue::{tag, Entry};
use super::Session;
use crate::metrics::Outcome;
use crate::resp::write;
use crate::upstream::{LinkKind, OwnedLink, Reply};

/// Tags of monitor stream frames: `MONITOR_TAG | i` for master `i`.
pub(super) const MONITOR_TAG: u64 = 1 << 60;
const MONITOR_MASK: u64 = (1 << 16) - 1;

pub(super) fn is_monitor_tag(tag: u64) -> bool {
    tag & !MONITOR_MASK == MONITOR_TAG
}

pub(super) struct Monitor {
    /// Held so the connections live as long as the client monitors.
    _streams: Vec<OwnedLink>,
    /// Counts this client in `Shared::monitors` while it monitors.
    _counted: Option<crate::shared::Permit>,
    /// The `+OK` of each node's MONITOR is swallowed: one per stream.
    oks_left: Vec<bool>,
    /// The client's `+OK`, answered once every master monitors.
    reply: Option<u64>,
}

impl Session {
    /// MONITOR: a stream to every master; the client's `+OK` comes from slotmux once every
    /// master answered its own (from then on, no command of any master is missed).
    pub(super) fn monitor(&mut self) {
        if self.monitor.is_some() {
            return self.reply_local(|o, _| write::ok(o));
        }
        let topo = self.topo.load().clone();
        let mut streams = Vec::new();
        for (i, node) in topo.masters.iter().enumerate() {
            let kind = LinkKind::Stream {
                tag: MONITOR_TAG | i as u64,
                to: self.inbox.clone(),
            };
            if let Some(link) = self.worker.owned(node, self.proto, kind, self.user) {
                if link.send_silent(b"*1\r\n$7\r\nMONITOR\r\n").is_ok() {
                    streams.push(link);
                }
            }
        }
        let n = streams.len();
        let reply = (n > 0).then(|| self.push(Entry::Waiting));
        self.monitor = Some(Monitor {
            _streams: streams,
            _counted: crate::shared::Permit::try_take(&self.shared.monitors, usize::MAX),
            oks_left: vec![true; n],
            reply,
        });
        if n == 0 {
            self.reply_local(|o, _| write::ok(o));
        }
    }

    /// A line (or the end) of a monitor stream.
    pub(super) fn on_monitor(&mut self, reply: Reply) {
        let i = (reply.tag & MONITOR_MASK) as usize;
        let Some(m) = self.monitor.as_mut() else {
            return;
        };
        let frame = match reply.result {
            Ok(f) if m.oks_left.get(i).copied().unwrap_or(false) && &f[..] == b"+OK\r\n" => {
                m.oks_left[i] = false;
                return self.monitor_ready();
            }
            Ok(f) => f,
            // That master's lines stop (it failed); the others go on.
            Err(_) => {
                if let Some(ok) = m.oks_left.get_mut(i) {
                    *ok = false;
                }
                return self.monitor_ready();
            }
        };
        if !is_own_work(&frame) {
            // Like pub/sub: bounded by the output limit, silenced by CLIENT REPLY OFF.
            self.deliver(frame);
        }
    }
}

impl Session {
    /// The client's `+OK`, once no master's is awaited any more.
    fn monitor_ready(&mut self) {
        let Some(m) = self.monitor.as_mut() else {
            return;
        };
        if m.oks_left.iter().any(|&w| w) {
            return;
        }
        let Some(n) = m.reply.take() else { return };
        if let Some(e) = self.queue.entry_mut(tag(n, 0)) {
            *e = Entry::ready(Bytes::from_static(b"+OK\r\n"), Outcome::Ok);
        }
    }
}

/// Whether a MONITOR line shows a command that only slotmux sends.
fn is_own_work(line: &[u8]) -> bool {
    let Some(at) = line.windows(2).position(|w| w == b"] ") else {
        return false;
    };
    let cmd = line[at + 2..].to_ascii_lowercase();
    [
        &b"\"ping\"\r\n"[..],
        b"\"cluster\" \"slots\"\r\n",
        b"\"info\" \"server\"\r\n",
        b"\"client\" \"id\"\r\n",
        b"\"asking\"\r\n",
        b"\"hello\" \"3\"\r\n",
        b"\"command\"\r\n",
    ]
    .iter()
    .any(|own| cmd == *own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slotmux_own_lines_are_recognised() {
        assert!(is_own_work(
            b"+1339518083.107412 [0 127.0.0.1:60866] \"PING\"\r\n"
        ));
        assert!(is_own_work(
            b"+1.1 [0 127.0.0.1:1] \"cluster\" \"slots\"\r\n"
        ));
        assert!(!is_own_work(
            b"+1.1 [0 127.0.0.1:1] \"set\" \"foo\" \"bar\"\r\n"
        ));
        assert!(!is_own_work(b"+1.1 [0 lua] \"ping\" \"x\"\r\n"));
        assert!(is_monitor_tag(MONITOR_TAG | 2));
        assert!(!is_monitor_tag(5));
    }
}
