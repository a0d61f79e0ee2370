//! The connections to one node (a few per protocol version) and the registry of nodes.
//!
//! Owns: choosing a session's connection to a node (always the same one for the same session,
//! so one client's commands to one node keep their order), opening a replacement when a
//! connection died, and jittered exponential backoff after failed connects, so a dead node
//! costs a fast error instead of a reconnect storm.
//! Must not: be consulted per request through a lock: the registry is a cold-path map; the hot
//! path reaches a `Node` through the topology snapshot and only loads an `ArcSwapOption`.

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::conn::{self, ConnEnd, ConnHandle, ConnSettings, Mode};
use super::Request;
use crate::metrics::NodeMetrics;
use crate::resp::write::Proto;

/// Something the pool tells the rest of slotmux (the cluster refresher listens).
pub type FailureHook = Arc<dyn Fn(&str) + Send + Sync>;

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Connect-failure bookkeeping for one node, shared with its connection tasks.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    next_attempt_ms: AtomicU64,
}

impl Health {
    fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.next_attempt_ms.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        // 50 ms doubling up to 3.2 s, with +-50% jitter so many proxies do not reconnect
        // in lockstep.
        let base = 50u64 << n;
        let jitter = pseudo_random() % base.max(1);
        let delay = base / 2 + jitter;
        self.next_attempt_ms
            .store(clock_ms() + delay, Ordering::Relaxed);
    }

    pub fn in_backoff(&self) -> bool {
        clock_ms() < self.next_attempt_ms.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

fn pseudo_random() -> u64 {
    // xorshift over a per-call seed: jitter only, not security.
    static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ clock_ms();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// One Redis node: its address and its connections, per protocol version.
pub struct Node {
    pub addr: Arc<str>,
    conns: [Box<[ArcSwapOption<ConnHandle>]>; 2],
    health: Arc<Health>,
    settings: Arc<ConnSettings>,
    on_failure: FailureHook,
    metrics: NodeMetrics,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}

impl Node {
    fn new(
        addr: Arc<str>,
        per_proto: usize,
        settings: Arc<ConnSettings>,
        on_failure: FailureHook,
        metrics: NodeMetrics,
    ) -> Self {
        let make = || {
            (0..per_proto.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect()
        };
        Node {
            addr,
            conns: [make(), make()],
            health: Arc::default(),
            settings,
            on_failure,
            metrics,
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Sends `req` on connection `lane` (a session's stable choice) of the given protocol.
    /// Gives the request back when the node is in connect backoff or the connection is gone.
    pub fn send(&self, proto: Proto, lane: usize, req: Request) -> Result<(), Request> {
        let set = &self.conns[proto.index()];
        let slot = &set[lane % set.len()];
        let current = slot.load();
        let req = match current.as_ref() {
            Some(h) if h.is_alive() => match h.send(req) {
                Ok(()) => return Ok(()),
                Err(req) => req,
            },
            _ => req,
        };
        if self.health.in_backoff() {
            return Err(req);
        }
        let fresh = Arc::new(self.open(proto));
        let prev = slot.compare_and_swap(&current, Some(fresh.clone()));
        let winner = match (&*prev, &*current) {
            (Some(p), Some(c)) if Arc::ptr_eq(p, c) => fresh,
            (None, None) => fresh,
            (Some(p), _) => p.clone(),
            (None, Some(_)) => fresh,
        };
        winner.send(req)
    }

    /// A connection of the caller's own (transactions, blocking commands, pub/sub); it is not
    /// shared and closes when the handle is dropped.
    pub fn dedicated(&self, proto: Proto, mode: Mode) -> Option<ConnHandle> {
        if self.health.in_backoff() {
            return None;
        }
        Some(self.open_mode(proto, mode))
    }

    fn open(&self, proto: Proto) -> ConnHandle {
        self.open_mode(proto, Mode::Shared)
    }

    fn open_mode(&self, proto: Proto, mode: Mode) -> ConnHandle {
        let health = self.health.clone();
        let ok_health = self.health.clone();
        let hook = self.on_failure.clone();
        let addr = self.addr.clone();
        let gauge = match mode {
            Mode::Shared => self.metrics.shared.clone(),
            Mode::Dedicated => self.metrics.dedicated.clone(),
            Mode::Stream { .. } => self.metrics.pubsub.clone(),
        };
        let up = gauge.clone();
        let ok_addr = self.addr.clone();
        conn::spawn(
            self.addr.clone(),
            proto,
            self.settings.clone(),
            mode,
            self.metrics.clone(),
            move || {
                up.inc();
                if ok_health.failures() > 0 {
                    tracing::info!(node = %ok_addr, "backend reachable again");
                }
                ok_health.connected();
            },
            move |end| match end {
                ConnEnd::Idle => gauge.dec(),
                ConnEnd::ConnectFailed(e) => {
                    health.failed();
                    tracing::warn!(node = %addr, error = %e, "backend connect failed");
                    hook(&addr);
                }
                ConnEnd::Broken(e) => {
                    gauge.dec();
                    tracing::warn!(node = %addr, error = %e, "backend connection broken");
                    hook(&addr);
                }
                ConnEnd::Timeout => {
                    gauge.dec();
                    tracing::warn!(node = %addr, "backend reply timeout; connection dropped");
                    hook(&addr);
                }
            },
        )
    }
}

/// All nodes slotmux has heard of, by address (`host:port`). Cold path only.
pub struct Registry {
    metrics: Arc<crate::metrics::Metrics>,
    nodes: DashMap<Arc<str>, Arc<Node>>,
    per_proto: usize,
    settings: Arc<ConnSettings>,
    on_failure: OnceLock<FailureHook>,
}

impl Registry {
    pub fn new(
        metrics: Arc<crate::metrics::Metrics>,
        per_proto: usize,
        settings: ConnSettings,
    ) -> Self {
        Registry {
            metrics,
            nodes: DashMap::new(),
            per_proto,
            settings: Arc::new(settings),
            on_failure: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &ConnSettings {
        &self.settings
    }

    /// Installs the hook called when a node's connection fails (set once, at startup).
    pub fn set_failure_hook(&self, hook: FailureHook) {
        let _ = self.on_failure.set(hook);
    }

    pub fn get_or_create(&self, addr: &str) -> Arc<Node> {
        if let Some(n) = self.nodes.get(addr) {
            return n.clone();
        }
        let hook = self
            .on_failure
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(|_: &str| {}));
        self.nodes
            .entry(Arc::from(addr))
            .or_insert_with(|| {
                Arc::new(Node::new(
                    Arc::from(addr),
                    self.per_proto,
                    self.settings.clone(),
                    hook,
                    self.metrics.node(addr),
                ))
            })
            .clone()
    }

    /// Whether the node at `addr` is known and its last connection attempt failed.
    pub fn is_failing(&self, addr: &str) -> bool {
        self.nodes
            .get(addr)
            .is_some_and(|n| n.health.failures() > 0)
    }

    /// Forgets nodes not in `keep` (their connections close once no one holds them).
    pub fn retain(&self, keep: &[Arc<Node>]) {
        self.nodes
            .retain(|addr, _| keep.iter().any(|n| &n.addr == addr));
    }
}
