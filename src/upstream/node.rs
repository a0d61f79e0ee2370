//! The Redis nodes slotmux knows, and each node's connect health.
//!
//! Owns: [`Node`] (address, a small dense id that workers index their connection tables by,
//! connect-failure backoff, metric handles, the failure hook) and [`Registry`], the map from
//! address to node. Jittered exponential backoff after failed connects makes a dead node cost a
//! fast error instead of a reconnect storm.
//! Must not: hold connections (each worker owns its own, see `worker`) or be consulted per
//! request through a lock: the registry is a cold-path map; the hot path reaches a `Node`
//! through the topology snapshot.

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::connect::ConnSettings;
use crate::metrics::NodeMetrics;

/// Something the nodes tell the rest of slotmux (the cluster refresher listens).
pub type FailureHook = Arc<dyn Fn(&str) + Send + Sync>;

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What slotmux knows of one node's health, shared by every worker's connections to it:
/// connect failures (with the reconnect backoff) and the verdict of the health probe.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    next_attempt_ms: AtomicU64,
    /// The probe found the node unreachable (no answer in time, connection refused or
    /// closed), until a probe gets through again.
    unreachable: AtomicBool,
}

impl Health {
    pub(crate) fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.next_attempt_ms.store(0, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
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

    /// A probe got an answer; returns whether the node was down before.
    pub(crate) fn probe_ok(&self) -> bool {
        self.unreachable.swap(false, Ordering::Relaxed)
    }

    /// A probe failed; returns whether the node was up before.
    pub(crate) fn probe_failed(&self) -> bool {
        !self.unreachable.swap(true, Ordering::Relaxed)
    }

    /// Unreachable by the probe's verdict or by a failed connect.
    pub fn is_down(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed) || self.failures() > 0
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

/// One Redis node.
pub struct Node {
    pub addr: Arc<str>,
    /// Dense and reused after the node is forgotten: workers index their connection tables by
    /// it and check the node's identity, so a reused id never reaches the wrong node.
    pub id: usize,
    health: Health,
    settings: Arc<ConnSettings>,
    on_failure: FailureHook,
    pub metrics: NodeMetrics,
    /// Set when the registry forgets the node: workers close their connections to it.
    forgotten: AtomicBool,
    /// The version the node reports (`INFO server`), learned by the health probe.
    version: Mutex<Option<String>>,
    /// Whether the node, as a replica, may serve reads (learned by the health probes).
    pub replica: ReplicaState,
    /// The probe's last PING got `-BUSY` (a script past its busy threshold): seen by every
    /// worker, where a worker's own links only show what its own clients sent.
    busy: AtomicBool,
}

/// What the health probes learned of a node as a replica. Read per routed read with relaxed
/// loads (no lock); written about once a second.
#[derive(Debug)]
pub struct ReplicaState {
    /// Its own `INFO replication`: `master_link_status:up` and no sync in progress.
    synced: AtomicBool,
    /// Seconds since its master last had its acknowledgement (the master's `lag`);
    /// `u32::MAX` while no master reported it.
    lag_secs: AtomicU32,
    /// The availability zone it announces (Valkey 8.1+, in HELLO).
    zone: OnceLock<String>,
}

impl Default for ReplicaState {
    fn default() -> Self {
        ReplicaState {
            synced: AtomicBool::new(false),
            lag_secs: AtomicU32::new(u32::MAX),
            zone: OnceLock::new(),
        }
    }
}

impl ReplicaState {
    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }

    pub(crate) fn set_lag(&self, secs: u32) {
        self.lag_secs.store(secs, Ordering::Relaxed);
    }

    pub(crate) fn set_zone(&self, zone: String) {
        let _ = self.zone.set(zone);
    }

    pub fn zone(&self) -> Option<&str> {
        self.zone.get().map(String::as_str)
    }

    /// Synced with its master, and acknowledged within `max_lag_secs` when a master said.
    #[inline]
    pub fn serves_reads(&self, max_lag_secs: u32) -> bool {
        if !self.synced.load(Ordering::Relaxed) {
            return false;
        }
        let lag = self.lag_secs.load(Ordering::Relaxed);
        lag == u32::MAX || lag <= max_lag_secs
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}

impl Node {
    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn settings(&self) -> &Arc<ConnSettings> {
        &self.settings
    }

    pub fn version(&self) -> Option<String> {
        self.version.lock().ok().and_then(|v| v.clone())
    }

    pub(crate) fn set_version(&self, v: String) {
        if let Ok(mut slot) = self.version.lock() {
            *slot = Some(v);
        }
    }

    pub fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// Whether the health probe last found the node busy with a script.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// A connection to the node failed or broke: tell the refresher.
    pub(crate) fn report_failure(&self) {
        (self.on_failure)(&self.addr);
    }
}

/// All nodes slotmux has heard of, by address (`host:port`). Cold path only.
pub struct Registry {
    metrics: Arc<crate::metrics::Metrics>,
    nodes: DashMap<Arc<str>, Arc<Node>>,
    /// Ids of forgotten nodes, for reuse, and the next fresh one.
    ids: Mutex<(Vec<usize>, usize)>,
    settings: Arc<ConnSettings>,
    on_failure: OnceLock<FailureHook>,
}

impl Registry {
    pub fn new(metrics: Arc<crate::metrics::Metrics>, settings: ConnSettings) -> Self {
        Registry {
            metrics,
            nodes: DashMap::new(),
            ids: Mutex::new((Vec::new(), 0)),
            settings: Arc::new(settings),
            on_failure: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &Arc<ConnSettings> {
        &self.settings
    }

    /// Installs the hook called when a node's connection fails (set once, at startup).
    pub fn set_failure_hook(&self, hook: FailureHook) {
        let _ = self.on_failure.set(hook);
    }

    pub fn get(&self, addr: &str) -> Option<Arc<Node>> {
        self.nodes.get(addr).map(|n| n.clone())
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
                let id = {
                    let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
                    match ids.0.pop() {
                        Some(id) => id,
                        None => {
                            ids.1 += 1;
                            ids.1 - 1
                        }
                    }
                };
                Arc::new(Node {
                    addr: Arc::from(addr),
                    id,
                    health: Health::default(),
                    settings: self.settings.clone(),
                    on_failure: hook,
                    metrics: self.metrics.node(addr),
                    forgotten: AtomicBool::new(false),
                    busy: AtomicBool::new(false),
                    version: Mutex::new(None),
                    replica: ReplicaState::default(),
                })
            })
            .clone()
    }

    /// Whether the node at `addr` is known and down (probe or connect failure).
    pub fn is_failing(&self, addr: &str) -> bool {
        self.nodes.get(addr).is_some_and(|n| n.health.is_down())
    }

    /// Forgets nodes not in `keep`: workers close their connections to them, and their metric
    /// series are removed.
    pub fn retain(&self, keep: &[Arc<Node>]) {
        let mut gone = Vec::new();
        self.nodes.retain(|addr, node| {
            let stay = keep.iter().any(|n| &n.addr == addr);
            if !stay {
                gone.push(node.clone());
            }
            stay
        });
        for node in gone {
            node.forgotten.store(true, Ordering::Relaxed);
            self.metrics.forget_node(&node.addr);
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.0.push(node.id);
        }
    }
}
