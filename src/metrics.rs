//! Every Prometheus metric slotmux exports: names, help texts, labels, and the cheap ways to
//! update them from the hot path.
//!
//! Owns: the registry, the per-command and per-node handles, and [`SessionStats`]: each
//! session counts into plain fields and `LocalHistogram`s and flushes into the shared metrics
//! about once a second, so a request costs no lock, no label hashing and no contended atomic.
//! Rare events (redirections, retries, refreshes, rejections) are plain atomics in
//! `server::Stats`/`cluster::RefreshStats`, copied into the registry at scrape time.
//! Must not: do I/O (the HTTP endpoint is `http`).

use prometheus::core::{AtomicU64 as PAtomicU64, GenericCounter};
use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::shared::Shared;

/// Slots that get a `slotmux_hot_slot_requests_per_second` series.
const HOT_SLOTS: usize = 10;

type Counter = GenericCounter<PAtomicU64>;

/// Why a command was scheduled for another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// TRYAGAIN or LOADING (or BUSY-like transient refusals).
    TryAgain,
    /// CLUSTERDOWN, or no master known for the slot.
    ClusterDown,
    /// The node could not be reached; nothing was sent.
    Unreachable,
    /// A read-only command whose connection broke after it was sent.
    ConnectionLost,
}

impl RetryReason {
    pub const ALL: [RetryReason; 4] = [
        RetryReason::TryAgain,
        RetryReason::ClusterDown,
        RetryReason::Unreachable,
        RetryReason::ConnectionLost,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            RetryReason::TryAgain => "tryagain",
            RetryReason::ClusterDown => "clusterdown",
            RetryReason::Unreachable => "unreachable",
            RetryReason::ConnectionLost => "connection_lost",
        }
    }
}

/// Why a topology refresh was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    Startup,
    Periodic,
    Moved,
    NodeFailure,
    ClusterDown,
}

impl RefreshReason {
    pub const ALL: [RefreshReason; 5] = [
        RefreshReason::Startup,
        RefreshReason::Periodic,
        RefreshReason::Moved,
        RefreshReason::NodeFailure,
        RefreshReason::ClusterDown,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            RefreshReason::Startup => "startup",
            RefreshReason::Periodic => "periodic",
            RefreshReason::Moved => "moved",
            RefreshReason::NodeFailure => "node_failure",
            RefreshReason::ClusterDown => "clusterdown",
        }
    }
}

/// How a command ended, for the `outcome` label of `slotmux_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// An error reply from Redis, or one slotmux gives in Redis's own words (CROSSSLOT...).
    Error,
    /// slotmux's own error (node unreachable, outcome unknown, refused command...).
    ProxyError,
}

impl Outcome {
    /// The outcome of a reply that came from a node.
    #[inline]
    pub fn of_reply(frame: &[u8]) -> Outcome {
        if frame.first() == Some(&b'-') {
            Outcome::Error
        } else {
            Outcome::Ok
        }
    }
}

/// Latency buckets in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    let _ = r.register(Box::new(c.clone()));
    c
}

/// The shared metrics. Built once per process (per `Shared`).
pub struct Metrics {
    pub registry: Registry,
    commands: IntCounterVec,
    latency: HistogramVec,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    inflight: IntGauge,
    pub total_commands: std::sync::atomic::AtomicU64,
    backend_requests: IntCounterVec,
    backend_errors: IntCounterVec,
    backend_latency: HistogramVec,
    backend_connections: IntGaugeVec,
    node_up: IntGaugeVec,
    hot_slots: GaugeVec,
    // Copied from atomics at scrape time.
    clients: IntGauge,
    accepted: Counter,
    rejected: IntCounterVec,
    redirections: IntCounterVec,
    retries: IntCounterVec,
    unknown_outcome: Counter,
    refreshes: IntCounterVec,
    refresh_requests: IntCounterVec,
    slots_covered: IntGauge,
    masters: IntGauge,
    replicas: IntGauge,
    topology_age: IntGauge,
    unreachable: IntGauge,
    blocked: IntGauge,
    tracking: IntGauge,
    tracking_resets: IntCounter,
    output_limit: Counter,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_reloads: IntCounterVec,
}

fn counter(name: &str, help: &str) -> Counter {
    GenericCounter::with_opts(Opts::new(name, help)).expect("static metric definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let hist = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )
            .expect("static metric")
        };
        let cvec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric")
        };
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric");
        let build = IntGaugeVec::new(
            Opts::new(
                "slotmux_build_info",
                "slotmux's version; the value is always 1",
            ),
            &["version"],
        )
        .expect("static metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(&r, build);
        Metrics {
            commands: reg(&r, cvec("slotmux_commands_total", "Client commands by command name and outcome (ok, error: an error reply from Redis or Redis-compatible, proxy_error: slotmux's own error)", &["command", "outcome"])),
            latency: reg(&r, hist("slotmux_command_duration_seconds", "Time from reading a command to its reply being ready for the client, by command", &["command"])),
            bytes_in: reg(&r, IntCounter::new("slotmux_client_read_bytes_total", "Bytes read from clients").expect("static metric")),
            bytes_out: reg(&r, IntCounter::new("slotmux_client_written_bytes_total", "Bytes written to clients").expect("static metric")),
            inflight: reg(&r, gauge("slotmux_inflight_commands", "Client commands waiting for their reply")),
            total_commands: std::sync::atomic::AtomicU64::new(0),
            backend_requests: reg(&r, cvec("slotmux_backend_requests_total", "Requests sent to each node", &["node"])),
            backend_errors: reg(&r, cvec("slotmux_backend_error_replies_total", "Error replies from each node (MOVED/ASK included)", &["node"])),
            backend_latency: reg(&r, hist("slotmux_backend_duration_seconds", "Time from writing a request to a node to reading its reply", &["node"])),
            backend_connections: reg(&r, IntGaugeVec::new(Opts::new("slotmux_backend_connections", "Open backend connections by node and kind (shared, dedicated, pubsub, tracking)"), &["node", "kind"]).expect("static metric")),
            node_up: reg(&r, IntGaugeVec::new(Opts::new("slotmux_node_up", "1 while the node answers slotmux's health probe (a PING about once a second), 0 when it does not"), &["node"]).expect("static metric")),
            hot_slots: reg(&r, GaugeVec::new(Opts::new("slotmux_hot_slot_requests_per_second", "Estimated requests per second of the busiest slots (the 10 busiest only; sampled, one command in 8, smoothed over about 2 s; off with --hotkeys off)"), &["slot"]).expect("static metric")),
            clients: reg(&r, gauge("slotmux_client_connections", "Client connections open now")),
            accepted: reg(&r, counter("slotmux_client_connections_accepted_total", "Client connections accepted")),
            rejected: reg(&r, cvec("slotmux_client_connections_rejected_total", "Client connections refused, by reason", &["reason"])),
            redirections: reg(&r, cvec("slotmux_redirections_total", "MOVED and ASK replies followed", &["kind"])),
            retries: reg(&r, cvec("slotmux_retries_total", "Commands scheduled for a retry, by reason", &["reason"])),
            unknown_outcome: reg(&r, counter("slotmux_unknown_outcome_errors_total", "Writes whose connection broke after sending; the client was told the outcome is unknown")),
            refreshes: reg(&r, cvec("slotmux_topology_refreshes_total", "Topology refreshes by result", &["result"])),
            refresh_requests: reg(&r, cvec("slotmux_topology_refresh_requests_total", "Why a refresh was asked for (debounced: several requests may share one refresh)", &["reason"])),
            slots_covered: reg(&r, gauge("slotmux_slots_covered", "Slots with a known master (16384 when healthy)")),
            masters: reg(&r, gauge("slotmux_masters", "Masters in the slot map")),
            replicas: reg(&r, gauge("slotmux_replicas", "Replicas in the slot map")),
            topology_age: reg(&r, gauge("slotmux_topology_age_seconds", "Seconds since the slot map was fetched (-1: never)")),
            unreachable: reg(&r, gauge("slotmux_masters_unreachable", "Masters whose last connection attempt failed")),
            blocked: reg(&r, gauge("slotmux_blocked_clients", "Clients waiting in a blocking command on a connection of their own")),
            tracking: reg(&r, gauge("slotmux_tracking_clients", "Clients with CLIENT TRACKING on")),
            tracking_resets: reg(&r, counter("slotmux_tracking_resets_total", "Invalidations of everything sent to tracking clients because a connection to a master ended (failover, hung node)")),
            output_limit: reg(&r, counter("slotmux_output_limit_disconnects_total", "Subscribers disconnected for not reading (pub/sub output limit)")),
            tls_handshake_failures: reg(&r, cvec("slotmux_tls_handshake_failures_total", "TLS handshakes that failed (bad or expired certificate, plain text on a TLS port, timeout), by side: client or backend", &["side"])),
            tls_reloads: reg(&r, cvec("slotmux_tls_reloads_total", "Certificate files re-read after they changed, by side: client or backend (new connections use them)", &["side"])),
            registry: r,
        }
    }

    /// Handles for one node, resolved once when the node is first seen.
    pub fn node(&self, addr: &str) -> NodeMetrics {
        NodeMetrics {
            requests: self.backend_requests.with_label_values(&[addr]),
            errors: self.backend_errors.with_label_values(&[addr]),
            latency: self.backend_latency.with_label_values(&[addr]),
            shared: self
                .backend_connections
                .with_label_values(&[addr, "shared"]),
            dedicated: self
                .backend_connections
                .with_label_values(&[addr, "dedicated"]),
            pubsub: self
                .backend_connections
                .with_label_values(&[addr, "pubsub"]),
            tracking: self
                .backend_connections
                .with_label_values(&[addr, "tracking"]),
            probe_up: self.node_up.with_label_values(&[addr]),
        }
    }

    /// Removes a forgotten node's series, so a cluster whose pods come and go with new
    /// addresses does not grow the exposition forever.
    pub fn forget_node(&self, addr: &str) {
        let _ = self.backend_requests.remove_label_values(&[addr]);
        let _ = self.backend_errors.remove_label_values(&[addr]);
        let _ = self.backend_latency.remove_label_values(&[addr]);
        let _ = self.node_up.remove_label_values(&[addr]);
        for kind in ["shared", "dedicated", "pubsub", "tracking"] {
            let _ = self.backend_connections.remove_label_values(&[addr, kind]);
        }
    }

    fn catch_up(c: &Counter, now: u64) {
        let have = c.get();
        if now > have {
            c.inc_by(now - have);
        }
    }

    /// The text exposition, after copying the rare-event atomics in.
    pub fn render(&self, shared: &Shared) -> String {
        let s = &shared.stats;
        let t = shared.cluster.snapshot();
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        self.clients
            .set(shared.clients.load(Ordering::Relaxed) as i64);
        self.blocked
            .set(shared.blocked.load(Ordering::Relaxed) as i64);
        self.tracking
            .set(shared.tracking.load(Ordering::Relaxed) as i64);
        Self::catch_up(&self.tracking_resets, ld(&s.tracking_resets));
        Self::catch_up(&self.accepted, ld(&s.accepted));
        Self::catch_up(
            &self.rejected.with_label_values(&["maxclients"]),
            ld(&s.rejected_maxclients),
        );
        Self::catch_up(
            &self.redirections.with_label_values(&["moved"]),
            ld(&s.moved),
        );
        Self::catch_up(&self.redirections.with_label_values(&["ask"]), ld(&s.ask));
        for why in RetryReason::ALL {
            Self::catch_up(
                &self.retries.with_label_values(&[why.label()]),
                ld(&s.retries[why.index()]),
            );
        }
        Self::catch_up(&self.unknown_outcome, ld(&s.unknown_outcome));
        Self::catch_up(&self.output_limit, ld(&s.output_limit_disconnects));
        let rs = &shared.cluster.stats;
        Self::catch_up(&self.refreshes.with_label_values(&["ok"]), ld(&rs.ok));
        Self::catch_up(
            &self.refreshes.with_label_values(&["error"]),
            ld(&rs.failed),
        );
        for why in RefreshReason::ALL {
            Self::catch_up(
                &self.refresh_requests.with_label_values(&[why.label()]),
                ld(&rs.requests[why.index()]),
            );
        }
        self.slots_covered.set(t.covered_slots() as i64);
        self.masters.set(t.masters.len() as i64);
        self.replicas
            .set(t.replicas.iter().map(|r| r.len()).sum::<usize>() as i64);
        self.topology_age.set(if t.is_empty() {
            -1
        } else {
            t.fetched_at.elapsed().as_secs() as i64
        });
        self.unreachable
            .set(t.masters.iter().filter(|m| m.health().is_down()).count() as i64);
        // Only the busiest slots get a series, so their number stays bounded.
        self.hot_slots.reset();
        for (slot, rate) in shared.hotkeys.top_slots(HOT_SLOTS) {
            self.hot_slots
                .with_label_values(&[&slot.to_string()])
                .set(rate);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Per-node handles (cheap clones of registered children).
#[derive(Clone)]
pub struct NodeMetrics {
    pub requests: IntCounter,
    pub errors: IntCounter,
    pub latency: Histogram,
    pub shared: IntGauge,
    pub dedicated: IntGauge,
    pub pubsub: IntGauge,
    /// Tracking clients' links (each also holds the connection its invalidations come on).
    pub tracking: IntGauge,
    pub probe_up: IntGauge,
}

struct CmdStat {
    name: &'static str,
    ok: u64,
    err: u64,
    proxy_err: u64,
    hist: LocalHistogram,
}

/// One session's counts, flushed into [`Metrics`] about once a second and when it ends.
pub struct SessionStats {
    cmds: Vec<CmdStat>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    commands: u64,
    inflight_reported: i64,
    last_flush: Instant,
}

impl Default for SessionStats {
    fn default() -> Self {
        SessionStats {
            cmds: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            commands: 0,
            inflight_reported: 0,
            last_flush: Instant::now(),
        }
    }
}

impl SessionStats {
    /// Records one finished command (no lock, no allocation once the command was seen).
    #[inline]
    pub fn record(&mut self, m: &Metrics, name: &'static str, outcome: Outcome, secs: f64) {
        let i = match self.cmds.iter().position(|c| std::ptr::eq(c.name, name)) {
            Some(i) => i,
            None => {
                self.cmds.push(CmdStat {
                    name,
                    ok: 0,
                    err: 0,
                    proxy_err: 0,
                    hist: m.latency.with_label_values(&[name]).local(),
                });
                self.cmds.len() - 1
            }
        };
        let c = &mut self.cmds[i];
        match outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Error => c.err += 1,
            Outcome::ProxyError => c.proxy_err += 1,
        }
        c.hist.observe(secs);
        self.commands += 1;
    }

    pub fn maybe_flush(&mut self, m: &Metrics, now: Instant, inflight: usize) {
        if now.duration_since(self.last_flush).as_millis() >= 1000 {
            self.flush(m, inflight);
            self.last_flush = now;
        }
    }

    pub fn flush(&mut self, m: &Metrics, inflight: usize) {
        for c in &mut self.cmds {
            for (n, label) in [
                (&mut c.ok, "ok"),
                (&mut c.err, "error"),
                (&mut c.proxy_err, "proxy_error"),
            ] {
                if *n > 0 {
                    m.commands.with_label_values(&[c.name, label]).inc_by(*n);
                    *n = 0;
                }
            }
            c.hist.flush();
        }
        m.bytes_in.inc_by(std::mem::take(&mut self.bytes_in));
        m.bytes_out.inc_by(std::mem::take(&mut self.bytes_out));
        m.total_commands
            .fetch_add(std::mem::take(&mut self.commands), Ordering::Relaxed);
        let now = inflight as i64;
        m.inflight.add(now - self.inflight_reported);
        self.inflight_reported = now;
    }
}
