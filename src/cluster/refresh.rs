//! Keeping the slot table current: at start (retrying until some seed answers), periodically,
//! after a MOVED, and after a backend connection failure; debounced so a storm of MOVEDs or
//! failures costs one refresh per `min_interval`.
//!
//! Owns: [`Cluster`], the shared handle to the current topology snapshot, the node registry
//! and the refresh task. Seeds are re-resolved through DNS on every refresh, so a Kubernetes
//! Service name keeps working as pods come and go.
//! Must not: block the hot path: readers only `load()` the snapshot.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use super::topology::{parse_cluster_slots, SlotRange, Topology};
use crate::metrics::RefreshReason;
use crate::upstream::connect::query;
use crate::upstream::{Node, Registry};
use redis_protocol::resp2::types::OwnedFrame;

/// The refresh period while the cluster is degraded (a master down, a slot uncovered).
pub const DEGRADED_INTERVAL: Duration = Duration::from_millis(250);

/// Longest a seed's DNS lookup may take before the refresh goes on without it.
pub const SEED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub interval: Duration,
    pub min_interval: Duration,
}

/// Counters the metrics and INFO read.
#[derive(Debug, Default)]
pub struct RefreshStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub moved_patches: AtomicU64,
    /// Requests by reason, indexed by [`RefreshReason::index`].
    pub requests: [AtomicU64; RefreshReason::ALL.len()],
    /// Unix time (seconds) of the last successful refresh.
    pub last_ok_unix: AtomicU64,
}

pub struct Cluster {
    topo: Arc<ArcSwap<Topology>>,
    pub registry: Registry,
    seeds: Vec<String>,
    settings: RefreshSettings,
    wake: Notify,
    generation: AtomicU64,
    pub stats: RefreshStats,
    last_error: Mutex<Option<String>>,
}

impl Cluster {
    pub fn new(seeds: Vec<String>, registry: Registry, settings: RefreshSettings) -> Arc<Self> {
        let cluster = Arc::new(Cluster {
            topo: Arc::new(ArcSwap::from_pointee(Topology::empty())),
            registry,
            seeds,
            settings,
            wake: Notify::new(),
            generation: AtomicU64::new(0),
            stats: RefreshStats::default(),
            last_error: Mutex::new(None),
        });
        let weak: Weak<Cluster> = Arc::downgrade(&cluster);
        cluster
            .registry
            .set_failure_hook(Arc::new(move |_addr: &str| {
                if let Some(c) = weak.upgrade() {
                    c.request_refresh(RefreshReason::NodeFailure);
                }
            }));
        cluster
    }

    /// The snapshot cell; sessions keep an `arc_swap::Cache` over it.
    pub fn cell(&self) -> Arc<ArcSwap<Topology>> {
        self.topo.clone()
    }

    pub fn snapshot(&self) -> Arc<Topology> {
        self.topo.load_full()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Whether a master of the current table is down or a slot has no master.
    pub fn degraded(&self) -> bool {
        let t = self.topo.load();
        t.covered_slots() < super::slot::SLOTS || t.masters.iter().any(|m| m.health().is_down())
    }

    /// Asks for a refresh soon (debounced). Cheap; callable from any task.
    pub fn request_refresh(&self, why: RefreshReason) {
        self.stats.requests[why.index()].fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Records a MOVED: patches that one slot right away, so the next request goes straight
    /// to the new owner, and asks for a full refresh. Returns the new owner.
    pub fn note_moved(&self, slot: u16, addr: &str) -> Arc<Node> {
        let node = self.registry.get_or_create(addr);
        let current = self.topo.load();
        let already = current
            .master_for(slot)
            .is_some_and(|m| Arc::ptr_eq(m, &node));
        if !already {
            self.topo.rcu(|t| Arc::new(t.with_slot(slot, node.clone())));
            self.stats.moved_patches.fetch_add(1, Ordering::Relaxed);
        }
        self.request_refresh(RefreshReason::Moved);
        node
    }

    /// Runs the refresh loop until the process ends.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.refresh_loop().await })
    }

    async fn refresh_loop(self: Arc<Self>) {
        let mut last = Instant::now() - self.settings.min_interval;
        let mut startup_delay = Duration::from_millis(100);
        let mut first = true;
        loop {
            if !first {
                let wait = if self.topo.load().is_empty() {
                    startup_delay = (startup_delay * 2).min(Duration::from_secs(2));
                    startup_delay
                } else if self.degraded() {
                    // A master is down or a slot has none: look often, to route to the
                    // promoted replica as soon as the cluster has one.
                    DEGRADED_INTERVAL.min(self.settings.interval)
                } else {
                    self.settings.interval
                };
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {
                        self.stats.requests[RefreshReason::Periodic.index()].fetch_add(1, Ordering::Relaxed);
                    }
                }
                let since = last.elapsed();
                if since < self.settings.min_interval {
                    tokio::time::sleep(self.settings.min_interval - since).await;
                }
            }
            if first {
                self.stats.requests[RefreshReason::Startup.index()].fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            last = Instant::now();
            if let Err(e) = self.refresh_now().await {
                tracing::warn!(error = %e, "topology refresh failed");
            }
        }
    }

    /// The nodes of the current map (masters and replicas). A plain copy: no snapshot guard
    /// is held across the awaits that follow.
    fn known_nodes(&self) -> Vec<String> {
        let topo = self.topo.load_full();
        topo.nodes().map(|n| n.addr.to_string()).collect()
    }

    /// Asks every known node, and every seed (resolved again, concurrently, each lookup
    /// bounded by [`SEED_LOOKUP_TIMEOUT`]) for `CLUSTER SLOTS` at once (so one hung node or a
    /// slow DNS server costs nothing) and swaps in the best view: full coverage first, then
    /// the fewest masters that slotmux currently cannot reach (a node that has not yet noticed
    /// a failover still names the dead master), then the view most nodes agree on.
    pub async fn refresh_now(self: &Arc<Self>) -> Result<(), String> {
        let mut asks = tokio::task::JoinSet::new();
        let known = self.known_nodes();
        for addr in &known {
            let me = self.clone();
            let addr = addr.clone();
            asks.spawn(async move {
                let r = me.ask(&addr).await;
                vec![(addr, r)]
            });
        }
        for seed in &self.seeds {
            let me = self.clone();
            let seed = seed.clone();
            let known = known.clone();
            asks.spawn(async move {
                let lookup = tokio::time::timeout(
                    SEED_LOOKUP_TIMEOUT,
                    tokio::net::lookup_host(seed.as_str()),
                )
                .await;
                let addrs = match lookup {
                    Ok(Ok(addrs)) => addrs.map(|a| a.to_string()).collect::<Vec<_>>(),
                    Ok(Err(e)) => {
                        return vec![(seed.clone(), Err(format!("does not resolve: {e}")))]
                    }
                    Err(_) => return vec![(seed.clone(), Err("DNS lookup timed out".to_string()))],
                };
                let mut out = Vec::new();
                for addr in addrs {
                    if known.contains(&addr) {
                        continue;
                    }
                    let r = me.ask(&addr).await;
                    out.push((addr, r));
                }
                out
            });
        }
        let mut views: Vec<(Vec<SlotRange>, String)> = Vec::new();
        let mut errors = Vec::new();
        // Once one full view is in, stragglers get a short grace period, not the full timeout.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                None => asks.join_next().await,
                Some(d) => match tokio::time::timeout_at(d, asks.join_next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
            };
            let Some(done) = next else { break };
            let answers = match done {
                Ok(answers) => answers,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            for (addr, answer) in answers {
                match answer {
                    Ok(ranges) => {
                        let covered: usize =
                            ranges.iter().map(|r| (r.end - r.start) as usize + 1).sum();
                        if covered >= super::slot::SLOTS && deadline.is_none() {
                            deadline =
                                Some(tokio::time::Instant::now() + Duration::from_millis(250));
                        }
                        views.push((ranges, addr))
                    }
                    Err(e) => errors.push(format!("{addr}: {e}")),
                }
            }
        }
        let score = |ranges: &Vec<SlotRange>| {
            let covered: usize = ranges.iter().map(|r| (r.end - r.start) as usize + 1).sum();
            let unreachable = ranges
                .iter()
                .filter(|r| self.registry.is_failing(&r.master))
                .count();
            let votes = views.iter().filter(|v| &v.0 == ranges).count();
            (covered, std::cmp::Reverse(unreachable), votes)
        };
        let best = views.iter().max_by_key(|v| score(&v.0)).cloned();
        let Some((ranges, source)) = best else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            let msg = if errors.is_empty() {
                "no seed resolves to an address".to_string()
            } else {
                errors.join("; ")
            };
            if let Ok(mut e) = self.last_error.lock() {
                *e = Some(msg.clone());
            }
            return Err(msg);
        };
        let covered: usize = ranges.iter().map(|r| (r.end - r.start) as usize + 1).sum();
        let gen = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let fresh = Topology::build(&ranges, &self.registry, source.clone(), gen);
        let old = self.topo.load();
        if describe(&old) != describe(&fresh) {
            tracing::info!(
                source = %source,
                masters = fresh.masters.len(),
                covered,
                "topology changed: {}",
                describe(&fresh)
            );
        }
        // Replicas are kept too: they are probed, and CONFIG SET reaches them.
        let mut keep: Vec<Arc<Node>> = fresh.nodes().cloned().collect();
        keep.extend(old.masters.iter().cloned());
        self.topo.store(Arc::new(fresh));
        // Nodes that left both the old and the new map are forgotten.
        self.registry.retain(&keep);
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.stats.last_ok_unix.store(unix, Ordering::Relaxed);
        if !crate::command::learn::is_learned() {
            let me = self.clone();
            tokio::spawn(async move { me.learn_commands(&source).await });
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        Ok(())
    }

    /// Sends one command on a fresh connection and decodes the reply (cold path: topology
    /// and command discovery only).
    async fn query(
        &self,
        addr: &str,
        cmd: &[&[u8]],
        limit: Duration,
    ) -> Result<OwnedFrame, String> {
        query(addr, self.registry.settings(), cmd, limit).await
    }

    /// Learns the commands the generated table lacks (modules) from a node's `COMMAND`.
    async fn learn_commands(&self, addr: &str) {
        let limit = self.registry.settings().reply_timeout;
        match self
            .query(addr, &[b"COMMAND"], limit)
            .await
            .map(|f| crate::command::learn::learn(&f))
        {
            Ok(0) => tracing::debug!("the cluster has no commands beyond the built-in table"),
            Ok(n) => tracing::info!(
                commands = n,
                "learned commands unknown to the built-in table (modules)"
            ),
            Err(e) => {
                tracing::warn!(node = %addr, error = %e, "could not learn the cluster's commands")
            }
        }
    }

    async fn ask(&self, addr: &str) -> Result<Vec<SlotRange>, String> {
        let limit = self
            .registry
            .settings()
            .reply_timeout
            .min(Duration::from_secs(2));
        let frame = self.query(addr, &[b"CLUSTER", b"SLOTS"], limit).await?;
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        parse_cluster_slots(&frame, host)
    }
}

fn describe(t: &Topology) -> String {
    t.ranges()
        .iter()
        .map(|(a, b, m)| format!("{a}-{b}@{}", t.masters[*m].addr))
        .collect::<Vec<_>>()
        .join(" ")
}
