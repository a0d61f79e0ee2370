//! Commands slotmux answers itself: PING, ECHO, QUIT, SELECT, HELLO, AUTH, RESET, CLIENT
//! SETNAME/GETNAME/ID/INFO/LIST/KILL/UNBLOCK, READONLY/READWRITE, CLUSTER KEYSLOT, SLOWLOG,
//! SLOTMUX HOTKEYS/HELP.
//!
//! Owns: their replies, with Redis's own error texts, in the client's protocol version, and the
//! per-client state they change (protocol, name, authentication).
//! Must not: talk to a backend, but for CLIENT UNBLOCK, which asks the node where the client
//! waits.

use bytes::{Bytes, BytesMut};

use super::queue::{tag, Entry, Flight, Via};
use super::{constant_time_eq, Session};
use crate::cluster::key_slot;
use crate::command::{Args, Local};
use crate::resp::write::{self, Proto};
use crate::router::Target;

/// Most keys one SLOTMUX HOTKEYS lists.
const HOTKEYS_MAX: usize = 1000;
/// A master that leaves a request unanswered this long answers PING itself: Redis's own tests
/// set the busy threshold (`lua-time-limit`) to 10 ms and PING 200 ms after starting a script.
const BUSY_SUSPECT: std::time::Duration = std::time::Duration::from_millis(100);

const SLOTMUX_HELP: [&str; 6] = [
    "SLOTMUX <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "HOTKEYS [COUNT <count>]",
    "    The keys with the most requests (default 10), estimated by sampling one command in 8:",
    "    key (its first 128 bytes), length, rate (requests per second), slot, node.",
    "HELP",
    "    Print this help.",
];

impl Session {
    pub(super) fn local(&mut self, cmd: Local, args: Args<'_>) {
        let arg = |i: usize| args.get(i).unwrap_or_default();
        match cmd {
            Local::Ping if self.proto == Proto::Resp2 && self.subscribed() => {
                // Redis answers PING in subscribed state with a pub/sub-shaped reply.
                let msg = args.get(1).unwrap_or_default().to_vec();
                self.reply_local(|o, _| {
                    write::array_header(o, 2);
                    write::bulk(o, b"pong");
                    write::bulk(o, &msg);
                })
            }
            Local::Ping
                if args.len() <= 2
                    && self.multi.is_none()
                    && self.capture.is_none()
                    && self.queue.is_empty() =>
            {
                // A master that has not answered for a while may be running a script past its
                // busy threshold, when one Redis would answer PING with BUSY: that master
                // answers this PING, on a connection of its own (the shared one waits behind
                // the script). Not behind the client's own requests: Redis answers those first.
                match self.busy_master() {
                    Some(node) => {
                        let f = Flight::new(
                            Bytes::copy_from_slice(args.frame),
                            Target::Node(node),
                            true,
                        )
                        .via(Via::Fresh);
                        let n = self.push(Entry::One(f));
                        let now = self.now;
                        self.send(tag(n, 0), now);
                    }
                    None if args.len() == 1 => self.reply_local(|o, _| write::simple(o, "PONG")),
                    None => self.reply_local(|o, _| write::bulk(o, arg(1))),
                }
            }
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
            Local::ReadOnlyWrite => {
                use crate::router::ReadFrom;
                if arg(0).eq_ignore_ascii_case(b"READWRITE") {
                    self.read_from = ReadFrom::Master;
                } else if self.read_from == ReadFrom::Master {
                    self.read_from = ReadFrom::PreferReplica;
                }
                self.reply_local(|o, _| write::ok(o))
            }
            Local::ClientOk => self.reply_local(|o, _| write::ok(o)),
            Local::Auth => self.auth(args),
            Local::Hello => self.hello(args),
            Local::Reset => {
                self.pubsub = None;
                self.multi = None;
                self.watch = None;
                self.monitor = None;
                // RESET turns tracking off, as in Redis.
                self.tracking_off();
                self.proto = Proto::Resp2;
                self.name = None;
                self.authed = self.shared.config.requirepass.is_none() || self.passthrough();
                // Back to the default user, as Redis's RESET does.
                self.become_user(0);
                self.read_from = crate::router::ReadFrom::parse(&self.shared.config.read_from);
                self.publish_view();
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
                self.publish_view();
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
                let line = self.client_line(args.frame.len()) + "\n";
                self.reply_local(|o, p| write::verbatim(o, p, line.as_bytes()));
            }
            Local::ClientList => self.client_list(args),
            Local::ClientPause => self.client_pause(args),
            Local::Monitor => self.monitor(),
            Local::ClientUnpause => {
                self.shared.unpause();
                let frame = Bytes::from_static(b"*2\r\n$6\r\nCLIENT\r\n$7\r\nUNPAUSE\r\n");
                self.send_to_every_master(frame);
            }
            Local::ClientReply => {
                let mode = arg(2);
                if mode.eq_ignore_ascii_case(b"ON") {
                    self.reply_mode = super::ReplyMode::On;
                    self.silent = false;
                    self.reply_local(|o, _| write::ok(o));
                } else if mode.eq_ignore_ascii_case(b"OFF") {
                    self.reply_mode = super::ReplyMode::Off;
                } else if mode.eq_ignore_ascii_case(b"SKIP") {
                    if self.reply_mode != super::ReplyMode::Off {
                        self.reply_mode = super::ReplyMode::SkipNext;
                    }
                } else {
                    self.reply_local(|o, _| write::error(o, "ERR syntax error"));
                }
            }
            Local::ClientKill => self.client_kill(args),
            Local::ClientUnblock => self.client_unblock(args),
            Local::ClusterSlots
            | Local::ClusterShards
            | Local::ClusterNodes
            | Local::ClusterMyId
            | Local::ClusterInfo => self.cluster_facade(cmd),
            Local::ClusterKeySlot => {
                let slot = key_slot(arg(2)) as i64;
                self.reply_local(|o, _| write::integer(o, slot));
            }
            Local::SlowlogGet => {
                let count = match args.get(2).map(crate::resp::parse_i64) {
                    None => None,
                    Some(Some(n)) if n >= -1 => Some(n),
                    Some(_) => {
                        return self.reply_local(|o, _| {
                            write::error(o, "ERR count should be greater than or equal to -1")
                        })
                    }
                };
                let shared = self.shared.clone();
                self.reply_local(|o, _| shared.slowlog.get(o, count));
            }
            Local::SlowlogLen => {
                let n = self.shared.slowlog.len() as i64;
                self.reply_local(|o, _| write::integer(o, n));
            }
            Local::SlowlogReset => {
                self.shared.slowlog.reset();
                self.reply_local(|o, _| write::ok(o));
            }
            Local::HotKeys => self.hotkeys(args),
            Local::ClientTracking => self.client_tracking(args),
            Local::ClientCaching => self.client_caching(args),
            Local::ClientGetRedir => self.client_getredir(),
            Local::ClientTrackingInfo => self.client_trackinginfo(),
            Local::SlotmuxHelp => self.reply_local(|o, _| {
                write::array_header(o, SLOTMUX_HELP.len());
                for line in SLOTMUX_HELP {
                    write::simple(o, line);
                }
            }),
        }
    }

    /// SLOTMUX HOTKEYS [COUNT n]: the sampled hot keys, busiest first, each with its length,
    /// estimated requests per second, slot and the slot's master.
    fn hotkeys(&mut self, args: Args<'_>) {
        let mut count = 10usize;
        let mut i = 2;
        while i < args.len() {
            let opt = args.get(i).unwrap_or_default();
            if opt.eq_ignore_ascii_case(b"COUNT") && i + 1 < args.len() {
                match crate::resp::parse_i64(args.get(i + 1).unwrap_or_default()) {
                    Some(n) if n > 0 => count = (n as usize).min(HOTKEYS_MAX),
                    _ => {
                        return self.reply_local(|o, _| {
                            write::error(o, "ERR value is out of range, must be positive")
                        })
                    }
                }
                i += 2;
            } else {
                return self.reply_local(|o, _| write::error(o, "ERR syntax error"));
            }
        }
        if self.shared.config.hotkeys != "on" {
            return self.reply_local(|o, _| {
                write::error(
                    o,
                    "ERR hot-key sampling is off (slotmux runs with --hotkeys off)",
                )
            });
        }
        let top = self.shared.hotkeys.top_keys(count);
        let topo = self.topo.load().clone();
        self.reply_local(|o, p| {
            write::array_header(o, top.len());
            for k in &top {
                write::map_header(o, p, 5);
                write::bulk(o, b"key");
                write::bulk(o, &k.key);
                write::bulk(o, b"length");
                write::integer(o, k.len as i64);
                write::bulk(o, b"rate");
                write::integer(o, k.rate.round() as i64);
                write::bulk(o, b"slot");
                write::integer(o, i64::from(k.slot));
                write::bulk(o, b"node");
                match topo.master_for(k.slot) {
                    Some(n) => write::bulk(o, n.addr.as_bytes()),
                    None => write::null(o, p),
                }
            }
        });
    }

    /// CLIENT PAUSE timeout [WRITE|ALL]: slotmux holds its own clients' commands (writes, or
    /// all) until the end; a WRITE pause also reaches every master, which then stops
    /// expiring keys, as one Redis does. An ALL pause stays in slotmux: on the nodes it would
    /// stop slotmux's own connections too.
    fn client_pause(&mut self, args: Args<'_>) {
        let Some(ms) = args
            .get(2)
            .and_then(crate::resp::parse_i64)
            .filter(|&n| n >= 0)
        else {
            return self.reply_local(|o, _| {
                write::error(o, "ERR timeout is not an integer or out of range")
            });
        };
        let all = match args.get(3) {
            None => true,
            Some(m) if m.eq_ignore_ascii_case(b"ALL") => true,
            Some(m) if m.eq_ignore_ascii_case(b"WRITE") => false,
            Some(_) => return self.reply_local(|o, _| write::error(o, "ERR syntax error")),
        };
        let now = std::time::Instant::now();
        let until = now + std::time::Duration::from_millis(ms as u64);
        self.shared.pause.set(self.shared.started, until, all);
        if all {
            return self.reply_local(|o, _| write::ok(o));
        }
        let ms = ms.to_string();
        let frame = write::encode_command([&b"CLIENT"[..], b"PAUSE", ms.as_bytes(), b"WRITE"]);
        self.send_to_every_master(frame);
    }

    /// CLUSTER SLOTS/SHARDS/NODES/MYID/INFO: slotmux as a one-node cluster owning every slot,
    /// at `--announce-addr` or the address this client reached.
    fn cluster_facade(&mut self, cmd: Local) {
        use crate::cluster::facade;
        let announced = self.shared.config.announce_addr.clone();
        let (host, port) = match announced.as_deref().and_then(|a| a.rsplit_once(':')) {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().unwrap_or(6379),
            ),
            None => (self.me.laddr.ip().to_string(), self.me.laddr.port()),
        };
        let id = self.shared.run_id.clone();
        let ok = self.shared.readiness().is_ok();
        let me = facade::Me {
            id: &id,
            host: &host,
            port,
            ok,
        };
        match cmd {
            Local::ClusterSlots => self.reply_local(|o, _| facade::slots(o, &me)),
            Local::ClusterShards => self.reply_local(|o, p| facade::shards(o, p, &me)),
            Local::ClusterNodes => {
                let text = facade::nodes_text(&me);
                self.reply_local(|o, p| write::verbatim(o, p, text.as_bytes()))
            }
            Local::ClusterInfo => {
                let text = facade::info_text(&me);
                self.reply_local(|o, p| write::verbatim(o, p, text.as_bytes()))
            }
            _ => self.reply_local(|o, _| write::bulk(o, id.as_bytes())),
        }
    }

    /// This client's CLIENT LIST line, fresh (the registry's may be a command behind), while
    /// it runs a command of `qbuf` bytes.
    fn client_line(&self, qbuf: usize) -> String {
        self.publish_view();
        self.me.line(std::time::Instant::now(), qbuf)
    }

    /// CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...]: every client of slotmux.
    fn client_list(&mut self, args: Args<'_>) {
        let mut ids: Vec<u64> = Vec::new();
        let mut kind: Option<String> = None;
        let mut i = 2;
        while i < args.len() {
            let opt = args.get(i).unwrap_or_default();
            if opt.eq_ignore_ascii_case(b"TYPE") && i + 1 < args.len() {
                let t = String::from_utf8_lossy(args.get(i + 1).unwrap_or_default())
                    .to_ascii_lowercase();
                if !matches!(
                    t.as_str(),
                    "normal" | "pubsub" | "master" | "replica" | "slave"
                ) {
                    let msg = format!("ERR Unknown client type '{t}'");
                    return self.reply_local(|o, _| write::error(o, &msg));
                }
                kind = Some(t);
                i += 2;
            } else if opt.eq_ignore_ascii_case(b"ID") && i + 1 < args.len() {
                for j in i + 1..args.len() {
                    match crate::resp::parse_i64(args.get(j).unwrap_or_default()) {
                        Some(n) if n > 0 => ids.push(n as u64),
                        _ => {
                            return self
                                .reply_local(|o, _| write::error(o, "ERR Invalid client ID"))
                        }
                    }
                }
                i = args.len();
            } else {
                return self.reply_local(|o, _| write::error(o, "ERR syntax error"));
            }
        }
        self.publish_view();
        let now = std::time::Instant::now();
        let mut text = String::new();
        for c in self.shared.client_list.all() {
            if !ids.is_empty() && !ids.contains(&c.id) {
                continue;
            }
            let v = c.view();
            let pubsub = v.sub + v.psub + v.ssub > 0;
            let keep = match kind.as_deref() {
                None => true,
                Some("normal") => !pubsub,
                Some("pubsub") => pubsub,
                Some(_) => false,
            };
            if keep {
                // The caller's own command is in its query buffer, as in Redis.
                let qbuf = if c.id == self.id { args.frame.len() } else { 0 };
                text.push_str(&c.line(now, qbuf));
                text.push('\n');
            }
        }
        self.reply_local(|o, p| write::verbatim(o, p, text.as_bytes()));
    }

    /// CLIENT KILL addr:port | [ID id] [ADDR addr] [LADDR addr] [TYPE t] [USER u] [SKIPME y/n].
    fn client_kill(&mut self, args: Args<'_>) {
        let rest: Vec<&[u8]> = (2..args.len()).filter_map(|i| args.get(i)).collect();
        let filter = match crate::clients::KillFilter::parse_with(&rest, self.passthrough()) {
            Ok(f) => f,
            Err(e) => return self.reply_local(|o, _| write::error(o, &e)),
        };
        let mut killed = 0i64;
        for c in self.shared.client_list.all() {
            if !filter.matches(&c, self.id) {
                continue;
            }
            killed += 1;
            if c.id == self.id {
                // Redis answers, then closes.
                self.closing = true;
            } else {
                c.kill();
            }
        }
        if filter.old_form {
            if killed == 0 {
                return self.reply_local(|o, _| write::error(o, "ERR No such client"));
            }
            return self.reply_local(|o, _| write::ok(o));
        }
        self.reply_local(|o, _| write::integer(o, killed));
    }

    /// CLIENT UNBLOCK id [TIMEOUT|ERROR]: a client of slotmux blocked in BLPOP and the like
    /// waits on a connection of its own; the node that holds it unblocks it.
    fn client_unblock(&mut self, args: Args<'_>) {
        let Some(id) = args.get(2).and_then(crate::resp::parse_i64) else {
            return self.reply_local(|o, _| {
                write::error(o, "ERR value is not an integer or out of range")
            });
        };
        let mode: &[u8] = match args.get(3) {
            None => b"TIMEOUT",
            Some(m) if m.eq_ignore_ascii_case(b"TIMEOUT") => b"TIMEOUT",
            Some(m) if m.eq_ignore_ascii_case(b"ERROR") => b"ERROR",
            Some(_) => {
                return self.reply_local(|o, _| {
                    write::error(o, "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
                })
            }
        };
        let target = u64::try_from(id)
            .ok()
            .and_then(|id| self.shared.client_list.get(id))
            .and_then(|c| c.blocked_on());
        let Some((node, node_client)) = target else {
            return self.reply_local(|o, _| write::integer(o, 0));
        };
        let cid = node_client.to_string();
        let frame = write::encode_command([&b"CLIENT"[..], b"UNBLOCK", cid.as_bytes(), mode]);
        self.forward_to(frame, node);
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
        if self.passthrough() {
            return self.auth_passthrough(args);
        }
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
        if let (Some((user, pass)), true) = (auth, self.passthrough()) {
            return self.hello_passthrough(user, pass, proto, name);
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
        let reply = self.hello_done(proto, name);
        self.reply_local(|out, _| out.extend_from_slice(&reply));
    }

    /// A master that may be busy with a script: one that left a request of this worker
    /// unanswered for `BUSY_SUSPECT`, or that the health probe found busy. PING and FUNCTION
    /// STATS go there, as one Redis answers them while a script runs.
    pub(super) fn busy_master(&mut self) -> Option<std::sync::Arc<crate::upstream::Node>> {
        let before = self.now.checked_sub(BUSY_SUSPECT)?;
        self.worker.slow_master(self.topo.load(), before)
    }

    /// What a successful HELLO does: the name and protocol it sets, and its reply.
    pub(super) fn hello_done(&mut self, proto: Proto, name: Option<Option<Bytes>>) -> Bytes {
        if let Some(n) = name {
            self.name = n;
        }
        if proto != self.proto {
            self.tracking_proto(proto);
        }
        self.proto = proto;
        self.publish_view();
        let mut o = BytesMut::new();
        self.hello_reply(&mut o, proto);
        o.freeze()
    }

    /// HELLO's map, in protocol `p`.
    fn hello_reply(&mut self, o: &mut BytesMut, p: Proto) {
        let id = self.id as i64;
        let version = crate::info::cluster_version(self.topo.load());
        {
            write::map_header(o, p, 7);
            write::bulk(o, b"server");
            write::bulk(o, b"redis");
            write::bulk(o, b"version");
            write::bulk(o, version.as_bytes());
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
        }
    }
}
