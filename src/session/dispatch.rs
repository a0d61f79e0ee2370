//! From one client command to entries in the reply queue.
//!
//! Owns: the checks Redis makes before running a command (known command and subcommand,
//! authentication, arity, subscribed state), asking the router where it goes, and turning the
//! route into queue entries and sends.
//! Must not: allocate on the single-key path (the common case is one `Flight` pushed and one
//! send), or wait for anything.

use bytes::Bytes;
use tokio::time::Instant;

use super::queue::{tag, Entry, Fanout, Flight, Meta, Post, Via};
use super::Session;
use crate::command::{self, Args, Local};
use crate::error::ProxyError;
use crate::merge::Merge;
use crate::router::{self, Route, Target};

impl Session {
    pub(super) fn handle(&mut self, frame: Bytes, ranges: &[(usize, usize)]) {
        self.cur = Some(Meta {
            name: "unknown",
            started: self.now,
            request: frame.clone(),
            skip_slowlog: false,
        });
        self.silent = match self.reply_mode {
            super::ReplyMode::On => false,
            super::ReplyMode::Off => true,
            super::ReplyMode::SkipNext => {
                self.reply_mode = super::ReplyMode::On;
                true
            }
        };
        self.handle_inner(frame, ranges);
        self.silent = false;
        // Handed on without a reply of its own (a subscription, answered by pushes): counts as
        // done now.
        if let Some(m) = self.cur.take() {
            let took = m.started.elapsed().as_secs_f64();
            self.stats.record(
                &self.shared.metrics,
                m.name,
                crate::metrics::Outcome::Ok,
                took,
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
                return self.reply_error(ProxyError::redis("NOAUTH Authentication required."));
            }
            return self.reject(ProxyError::redis(unknown_command(args)));
        };
        if !self.authed && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
            return self.reply_error(ProxyError::redis("NOAUTH Authentication required."));
        }
        if !spec.subcommands.is_empty() && args.len() >= 2 {
            let sub = args.get(1).unwrap_or_default();
            match command::lookup_sub(spec, sub) {
                Some(s) => spec = s,
                None => {
                    return self.reject(ProxyError::redis(format!(
                        "ERR unknown subcommand '{}'. Try {} HELP.",
                        String::from_utf8_lossy(&sub[..sub.len().min(128)]),
                        spec.name.to_ascii_uppercase()
                    )));
                }
            }
        }
        if let Some(m) = &mut self.cur {
            m.name = spec.name;
            m.skip_slowlog = spec.flags & command::table::F_SKIP_SLOWLOG != 0;
        }
        self.me
            .touch(command::command_id(spec), self.now.into_std());
        if self.tracking.is_some() {
            self.tracking_begin(spec.name);
        }
        if !command::arity_ok(spec, args.len()) {
            return self.reject(ProxyError::redis(format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            )));
        }
        if self.pubsub.is_some() && self.refuse_in_subscribed_state(name) {
            return;
        }
        if self.multi.is_none() && !self.queue.is_empty() && self.switches_links(spec.name) {
            // Counted when it runs.
            self.cur = None;
            self.held = Some((frame.clone(), ranges.to_vec()));
            self.drain_hold = true;
            return;
        }
        self.worker.sample_keys(spec, args);
        // Inside MULTI these take effect when EXEC has run them (see `tx::Echo`).
        let now_effective = self.multi.is_none();
        match spec.name {
            "script|flush" if now_effective => self.shared.scripts.clear(),
            "function|load" => self
                .shared
                .functions
                .load(args.get(args.len() - 1).unwrap_or_default()),
            "function|delete" => self
                .shared
                .functions
                .delete(args.get(2).unwrap_or_default()),
            "function|flush" => self.shared.functions.flush(),
            "config|set" => {
                if let Err(e) = self.config_set(args, now_effective) {
                    return self.reject(e);
                }
            }
            _ => {}
        }
        let readonly = command::is_readonly(spec);
        if matches!(spec.name, "eval" | "eval_ro" | "script|load") {
            let body = args
                .get(if spec.name == "script|load" { 2 } else { 1 })
                .unwrap_or_default();
            self.worker.remember_script(body);
        }
        // The snapshot is borrowed, not cloned, on the common path.
        let route = router::route(spec, args, self.topo.load());
        if let Route::Transaction(t) = route {
            let topo = self.topo.load().clone();
            return self.transaction(t, frame.clone(), args, spec, &topo);
        }
        // Inside MULTI everything is queued, but QUIT and RESET, which Redis runs at once.
        if self.multi.is_some() && !matches!(route, Route::Local(Local::Quit | Local::Reset)) {
            let writes = self.may_write(spec, args);
            return self.queue_in_multi(route, frame.clone(), spec, writes);
        }
        if let Route::Subscribe(k) = route {
            return self.subscribe(k, frame.clone(), args);
        }
        let now = self.now;
        match route {
            Route::Transaction(_) | Route::Subscribe(_) => {}
            Route::Forward(Target::AnyMaster)
                if spec.name == "acl|whoami" && !self.passthrough() =>
            {
                // In proxy mode every client is `default` to its clients' eyes, whatever user
                // slotmux itself runs as on the nodes (`--backend-user`).
                self.reply_local(|o, _| crate::resp::write::bulk(o, b"default"))
            }
            Route::Forward(Target::AnyMaster) if spec.name == "function|stats" => {
                // The running script is on the master that is busy, if one is: it answers
                // FUNCTION STATS (allowed while busy) on a connection of its own.
                let f = match self.busy_master() {
                    Some(node) => Flight::new(frame, Target::Node(node), true).via(Via::Fresh),
                    None => Flight::new(frame, Target::AnyMaster, true),
                };
                let n = self.push(Entry::One(f));
                self.send(tag(n, 0), now);
            }
            Route::Forward(target) => {
                let mut f = Flight::new(frame, target, readonly);
                f.replica = readonly && self.reads_on_replicas();
                let n = self.push(Entry::One(f));
                self.send(tag(n, 0), now);
            }
            Route::Info => self.info(args, frame.clone()),
            Route::Blocking(slot) => {
                let f = Flight::new(frame, Target::Slot(slot), readonly).via(Via::Dedicated);
                let n = self.push(Entry::One(f));
                self.send(tag(n, 0), now);
            }
            Route::Local(l) => self.local(l, args),
            Route::Error(e) => self.reply_error(e),
            Route::Scan { frame, slot, count } => {
                let mut f = Flight::new(frame, Target::Slot(slot), true);
                f.post = Post::Scan { slot, count };
                let n = self.push(Entry::One(f));
                self.send(tag(n, 0), now);
            }
            Route::LastWrite => {
                let target = match &self.last_write {
                    Some(n) => Target::Node(n.clone()),
                    None => Target::AnyMaster,
                };
                let n = self.push(Entry::One(Flight::new(frame, target, true)));
                self.send(tag(n, 0), now);
            }
            Route::Split(plan) => {
                if plan.parts.is_empty() {
                    return self.reply_error(ProxyError::SlotNotServed);
                }
                let via = if plan.fresh { Via::Fresh } else { Via::Shared };
                let replies = if plan.merge == Merge::RandomKey { 2 } else { 1 };
                let replica = readonly && !plan.fresh && self.reads_on_replicas();
                let parts = plan
                    .parts
                    .into_iter()
                    .map(|(t, f)| {
                        let mut f = Flight::new(f, t, readonly).via(via);
                        f.replies = replies;
                        f.replica = replica;
                        f
                    })
                    .collect();
                self.fan_out(plan.merge, None, plan.order, parts, frame, now);
            }
        }
    }

    /// Whether this client's reads may go to replicas now: it asked (`--read-from`,
    /// READONLY) and holds no WATCH (a watched key is read where it is watched).
    #[inline]
    fn reads_on_replicas(&self) -> bool {
        self.read_from != crate::router::ReadFrom::Master && self.watch.is_none()
    }

    /// CONFIG SET goes to every node: refused for the settings that are each node's own (an
    /// address, a file, the credentials slotmux uses), and applied to slotmux's own slow log
    /// for its two settings (SLOWLOG is answered by slotmux).
    fn config_set(&self, args: Args<'_>, apply: bool) -> Result<(), ProxyError> {
        const OWN: [&str; 24] = [
            "port",
            "tls-port",
            "bind",
            "bind-source-addr",
            "unixsocket",
            "unixsocketperm",
            "dir",
            "dbfilename",
            "logfile",
            "pidfile",
            "appendfilename",
            "appenddirname",
            "cluster-config-file",
            "cluster-port",
            "cluster-announce-ip",
            "cluster-announce-port",
            "cluster-announce-bus-port",
            "cluster-announce-tls-port",
            "cluster-announce-hostname",
            "requirepass",
            "masterauth",
            "masteruser",
            "replicaof",
            "slaveof",
        ];
        let mut i = 2;
        while i + 1 < args.len() {
            let param = args.get(i).unwrap_or_default();
            let value = args.get(i + 1).unwrap_or_default();
            let name = String::from_utf8_lossy(param).to_ascii_lowercase();
            if OWN.contains(&name.as_str()) {
                return Err(ProxyError::Refused {
                    command: format!("config set {name}"),
                    why: "changes a setting that is each node's own (its address, its files or the credentials slotmux uses); set it on the nodes themselves",
                });
            }
            if apply {
                self.shared.slowlog.configure(param, value);
            }
            i += 2;
        }
        Ok(())
    }

    /// Under a CLIENT PAUSE: until when this command must wait (it may write, or the pause
    /// is ALL). Commands with a syntax error are answered at once, and inside MULTI only EXEC
    /// waits, as in Redis.
    /// Whether a command may write or be replicated, as a CLIENT PAUSE WRITE sees it (Redis's
    /// `write` and `may_replicate` flags; a script that declares no writes does not).
    pub(super) fn may_write(&self, spec: &command::CommandSpec, args: Args<'_>) -> bool {
        match spec.name {
            "eval" => !no_writes_script(args.get(1).unwrap_or_default()),
            "evalsha" => !args
                .get(1)
                .and_then(|sha| self.shared.scripts.get(sha))
                .is_some_and(|body| no_writes_script(&body)),
            "fcall" => !self
                .shared
                .functions
                .no_writes(args.get(1).unwrap_or_default()),
            "publish" | "spublish" | "pfcount" => true,
            _ => spec.flags & command::table::F_WRITE != 0,
        }
    }

    pub(super) fn paused_until(&self, args: Args<'_>) -> Option<Instant> {
        let pause = &self.shared.pause;
        if !pause.any() {
            return None;
        }
        let mut spec = command::lookup(args.get(0)?)?;
        if !spec.subcommands.is_empty() && args.len() >= 2 {
            spec = command::lookup_sub(spec, args.get(1)?)?;
        }
        if !command::arity_ok(spec, args.len()) {
            return None;
        }
        if self.multi.is_some() && spec.name != "exec" {
            return None;
        }
        let may_write = match spec.name {
            "exec" => self.multi.as_ref().is_some_and(|m| m.writes()),
            _ => self.may_write(spec, args),
        };
        let now = std::time::Instant::now();
        pause
            .holds(self.shared.started, now, may_write)
            .map(Instant::from_std)
    }

    /// Holds a command until the pause ends (or CLIENT UNPAUSE).
    pub(super) fn hold(&mut self, frame: Bytes, ranges: &[(usize, usize)], until: Instant) {
        self.held = Some((frame, ranges.to_vec()));
        self.me.set_postponed(true);
        self.retries.push((until, PAUSE_TAG));
    }

    /// Runs the held command if the pause no longer holds it.
    pub(super) fn release_held(&mut self) {
        if self.drain_hold {
            return;
        }
        let Some((frame, ranges)) = self.held.take() else {
            return;
        };
        let args = Args {
            frame: &frame,
            ranges: &ranges,
        };
        if let Some(until) = self.paused_until(args) {
            return self.hold(frame.clone(), &ranges, until);
        }
        self.me.set_postponed(false);
        self.now = Instant::now();
        self.handle(frame, &ranges);
    }

    /// Runs the command held until the client's earlier commands were answered.
    pub(super) fn release_drained(&mut self) {
        self.drain_hold = false;
        if let Some((frame, ranges)) = self.held.take() {
            self.now = Instant::now();
            self.handle(frame, &ranges);
        }
    }

    /// Whether the command moves the client's commands between the shared links and its
    /// tracked ones, so it must wait for what the client sent before.
    fn switches_links(&self, name: &str) -> bool {
        match name {
            "client|tracking" => true,
            "auth" | "hello" | "reset" => self.tracking.is_some(),
            _ => false,
        }
    }

    /// Refuses the command; inside MULTI that also fails the transaction, as in Redis.
    fn reject(&mut self, e: ProxyError) {
        if let Some(m) = &mut self.multi {
            m.fail();
        }
        self.reply_error(e);
    }

    /// Sends `frame`, made by slotmux, to every master; OK when all say OK.
    pub(super) fn send_to_every_master(&mut self, frame: Bytes) {
        let topo = self.topo.load().clone();
        if self.capture.is_some() {
            // Inside a transaction's reply (CLIENT PAUSE in MULTI): no entry of its own to
            // wait on, so the masters are told without waiting for their `+OK`.
            for m in &topo.masters {
                if let Ok(link) = self.worker.link(m, self.proto, 0, self.user) {
                    let _ = link.send_silent(&frame);
                }
            }
            return self.reply_local(|o, _| crate::resp::write::ok(o));
        }
        if topo.masters.is_empty() {
            return self.reply_local(|o, _| crate::resp::write::ok(o));
        }
        let parts = topo
            .masters
            .iter()
            .map(|m| Flight::new(frame.clone(), Target::Node(m.clone()), false))
            .collect();
        let now = self.now;
        self.fan_out(Merge::AllOk, None, Vec::new(), parts, frame, now);
    }

    /// Sends `frame`, made by slotmux, to `node` as the current command's one request.
    pub(super) fn forward_to(&mut self, frame: Bytes, node: std::sync::Arc<crate::upstream::Node>) {
        let n = self.push(Entry::One(Flight::new(frame, Target::Node(node), false)));
        let now = self.now;
        self.send(tag(n, 0), now);
    }

    /// Queues one entry whose parts go out at once and are merged when all are back.
    fn fan_out(
        &mut self,
        merge: Merge,
        info: Option<Vec<&'static str>>,
        order: Vec<(u32, u32)>,
        parts: Vec<Flight>,
        request: Bytes,
        now: Instant,
    ) {
        let count = parts.len();
        let n = self.push(Entry::Many(Box::new(Fanout {
            merge,
            info,
            order,
            parts,
            left: count,
            request,
        })));
        for part in 1..=count {
            self.send(tag(n, part), now);
        }
    }

    /// INFO: slotmux's own sections, and the masters' merged.
    fn info(&mut self, args: Args<'_>, request: Bytes) {
        let topo = self.topo.load().clone();
        let wanted: Vec<&[u8]> = (1..args.len()).filter_map(|i| args.get(i)).collect();
        let sections = crate::info::sections(&wanted);
        let ask = match crate::info::node_request(&sections) {
            Some(ask) if !topo.masters.is_empty() => ask,
            _ => {
                let text =
                    crate::info::render(&self.shared, &topo, &sections, &[]).unwrap_or_default();
                return self
                    .reply_local(|o, p| crate::resp::write::verbatim(o, p, text.as_bytes()));
            }
        };
        let parts = topo
            .masters
            .iter()
            .map(|m| Flight::new(ask.clone(), Target::Node(m.clone()), true))
            .collect();
        let now = self.now;
        self.fan_out(Merge::Info, Some(sections), Vec::new(), parts, request, now);
    }
}

/// The retry tag that releases a command held by CLIENT PAUSE.
pub(super) const PAUSE_TAG: u64 = 1 << 61;

/// Whether a script's shebang declares it writes nothing (`#!lua flags=no-writes`).
fn no_writes_script(body: &[u8]) -> bool {
    let first = body.split(|&b| b == b'\n').next().unwrap_or_default();
    first.starts_with(b"#!") && first.windows(9).any(|w| w == b"no-writes")
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
