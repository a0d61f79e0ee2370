//! Accepting clients: the listener loop, the client limit, and graceful shutdown.
//!
//! Owns: [`Shared`] (the state every session sees), [`run`]/[`serve`] (bind-agnostic, so tests
//! pass a listener on port 0 and a shutdown future), the `maxclients` refusal with Redis's own
//! error, and draining: on shutdown stop accepting, let sessions finish their in-flight
//! commands within the drain timeout, then return.
//! Must not: parse client bytes (the session does).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::refresh::RefreshSettings;
use crate::cluster::{Cluster, Topology};
use crate::config::Config;
use crate::session::Session;
use crate::upstream::conn::ConnSettings;
use crate::upstream::Registry;

/// Counters for INFO and metrics (cold events only: nothing here is touched per request).
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub rejected_maxclients: AtomicU64,
    pub moved: AtomicU64,
    pub ask: AtomicU64,
    /// Retries by reason, indexed like [`RETRY_REASONS`].
    pub retries: [AtomicU64; 4],
    pub unknown_outcome: AtomicU64,
    pub output_limit_disconnects: AtomicU64,
    /// Second (since start) of the last "refusing client" log line.
    pub last_reject_log: AtomicU64,
    /// Commands per second over the last second (sampled by a ticker).
    pub ops_per_sec: AtomicU64,
}

/// A place in the blocking-clients limit; released on drop.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Script bodies by SHA1, so an EVALSHA that meets `-NOSCRIPT` on a node (a fresh master
/// after a failover, a node whose script cache was flushed) can be answered by loading the
/// script there and retrying. Bounded: beyond `MAX_SCRIPTS` new scripts are not remembered.
pub struct Scripts {
    map: dashmap::DashMap<String, bytes::Bytes>,
}

const MAX_SCRIPTS: usize = 10_000;

impl Scripts {
    pub fn remember(&self, body: &[u8]) {
        if self.map.len() >= MAX_SCRIPTS {
            return;
        }
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        self.map
            .entry(sha)
            .or_insert_with(|| bytes::Bytes::copy_from_slice(body));
    }

    pub fn get(&self, sha: &[u8]) -> Option<bytes::Bytes> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.map.get(&sha).map(|b| b.clone())
    }
}

/// Why a command was retried.
pub const RETRY_REASONS: [&str; 4] = ["tryagain", "clusterdown", "unreachable", "connection_lost"];
pub const RETRY_TRYAGAIN: usize = 0;
pub const RETRY_CLUSTERDOWN: usize = 1;
pub const RETRY_UNREACHABLE: usize = 2;
pub const RETRY_LOST: usize = 3;

/// State shared by every session.
pub struct Shared {
    pub slowlog: crate::slowlog::SlowLog,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub scripts: Scripts,
    /// Clients currently holding a dedicated connection for a blocking command.
    pub blocked: Arc<AtomicUsize>,
    pub config: Arc<Config>,
    pub cluster: Arc<Cluster>,
    pub next_client_id: AtomicU64,
    pub clients: AtomicUsize,
    pub stats: Stats,
    pub started: Instant,
}

impl Shared {
    /// Builds the shared state and starts the topology refresher (needs a Tokio runtime).
    pub fn start(config: Config) -> Arc<Shared> {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let registry = Registry::new(
            metrics.clone(),
            config.backend_connections as usize,
            ConnSettings {
                connect_timeout: config.connect_timeout,
                reply_timeout: config.backend_timeout,
                user: config.backend_user.clone(),
                password: config.backend_password.clone(),
            },
        );
        let cluster = Cluster::new(
            config.seeds.clone(),
            registry,
            RefreshSettings {
                interval: config.refresh_interval,
                min_interval: config.refresh_min_interval,
            },
        );
        cluster.spawn_refresher();
        let shared = Arc::new(Shared {
            slowlog: crate::slowlog::SlowLog::new(config.slowlog_max_len),
            metrics,
            scripts: Scripts {
                map: dashmap::DashMap::new(),
            },
            blocked: Arc::new(AtomicUsize::new(0)),
            config: Arc::new(config),
            cluster,
            next_client_id: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
            stats: Stats::default(),
            started: Instant::now(),
        });
        shared.spawn_ops_ticker();
        shared
    }

    /// Samples the command counter once a second for INFO's instantaneous_ops_per_sec.
    fn spawn_ops_ticker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(me) = weak.upgrade() else { return };
                let now = me.metrics.total_commands.load(Ordering::Relaxed);
                me.stats
                    .ops_per_sec
                    .store(now.saturating_sub(last), Ordering::Relaxed);
                last = now;
            }
        });
    }

    /// A place for one more blocked client, if the limit allows.
    pub fn blocking_permit(&self) -> Option<Permit> {
        let n = self.blocked.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(self.blocked.clone());
        (n < self.config.max_blocking_clients).then_some(permit)
    }

    /// Ready = every slot has a master and no master is in connect backoff.
    pub fn readiness(&self) -> Result<(), String> {
        let t = self.cluster.snapshot();
        if t.is_empty() {
            return Err(format!(
                "no topology yet: {}",
                self.cluster
                    .last_error()
                    .unwrap_or_else(|| "first refresh pending".into())
            ));
        }
        let covered = t.covered_slots();
        if covered < crate::cluster::slot::SLOTS {
            return Err(format!("only {covered} of 16384 slots have a master"));
        }
        let down: Vec<_> = t
            .masters
            .iter()
            .filter(|m| m.health().failures() > 0)
            .map(|m| m.addr.to_string())
            .collect();
        if !down.is_empty() {
            return Err(format!("masters unreachable: {}", down.join(", ")));
        }
        Ok(())
    }
}

/// Runs slotmux on `listener` until `shutdown` resolves, then drains.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    let shared = Shared::start(config);
    serve(listener, shared, shutdown).await
}

/// Serves clients with already-built shared state (tests use this to inspect it).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(x) => { backoff = Duration::from_millis(5); x }
                    Err(e) => {
                        // EMFILE and friends: wait and keep going, never give up the listener.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let n = shared.clients.fetch_add(1, Ordering::AcqRel);
                if n >= shared.config.maxclients {
                    shared.clients.fetch_sub(1, Ordering::AcqRel);
                    let n = shared.stats.rejected_maxclients.fetch_add(1, Ordering::Relaxed);
                    // One line per second at most: a flood must not flood the log too.
                    let now = shared.started.elapsed().as_secs();
                    if shared.stats.last_reject_log.swap(now, Ordering::Relaxed) != now {
                        tracing::warn!(client = %peer, rejected_total = n + 1, maxclients = shared.config.maxclients, "refusing client: max number of clients reached");
                    }
                    tokio::spawn(async move {
                        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                    });
                    continue;
                }
                let sh = shared.clone();
                let rx = stop_rx.clone();
                tokio::spawn(async move {
                    Session::run(sh.clone(), stream, peer, rx).await;
                    sh.clients.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + shared.config.drain_timeout;
    while shared.clients.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.clients.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(clients = left, "drain timeout: closing remaining clients");
    } else {
        tracing::info!("drained all clients");
    }
}

/// INFO sections slotmux answers itself, in order. `keyspace` is summed over the masters.
pub const INFO_SECTIONS: [&str; 5] = ["server", "clients", "stats", "cluster", "keyspace"];

/// Which sections an `INFO [section ...]` asks for (Redis's rules: none, `default`, `all`
/// and `everything` mean every section).
pub fn info_sections(args: &[&[u8]]) -> Vec<&'static str> {
    if args.is_empty() {
        return INFO_SECTIONS.to_vec();
    }
    let mut out = Vec::new();
    for a in args {
        let a = String::from_utf8_lossy(a).to_ascii_lowercase();
        if matches!(a.as_str(), "default" | "all" | "everything") {
            return INFO_SECTIONS.to_vec();
        }
        if let Some(s) = INFO_SECTIONS.iter().find(|s| **s == a) {
            if !out.contains(s) {
                out.push(*s);
            }
        }
    }
    out
}

/// The text of slotmux's own INFO sections (everything but `keyspace`), in Redis's format.
pub fn info_text(shared: &Shared, topo: &Topology, sections: &[&str]) -> String {
    let up = shared.started.elapsed().as_secs();
    let s = &shared.stats;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let replicas: usize = topo.replicas.iter().map(|r| r.len()).sum();
    let mut out = String::new();
    let mut section = |name: &str, body: String| {
        if sections.contains(&name) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&body);
        }
    };
    section(
        "server",
        format!(
            "# Server\r\nredis_version:{}\r\nslotmux_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
            crate::REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.config.listen.rsplit(':').next().unwrap_or(""),
            up,
            up / 86400,
        ),
    );
    section(
        "clients",
        format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n",
            shared.clients.load(Ordering::Relaxed),
            shared.config.maxclients,
            shared.blocked.load(Ordering::Relaxed),
        ),
    );
    section(
        "stats",
        format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\nrejected_connections:{}\r\nslotmux_moved_redirections:{}\r\nslotmux_ask_redirections:{}\r\nslotmux_retries:{}\r\nslotmux_unknown_outcome_errors:{}\r\nslotmux_output_limit_disconnects:{}\r\nslowlog_len:{}\r\n",
            ld(&s.accepted),
            shared.metrics.total_commands.load(Ordering::Relaxed),
            ld(&s.ops_per_sec),
            ld(&s.rejected_maxclients),
            ld(&s.moved),
            ld(&s.ask),
            s.retries.iter().map(ld).sum::<u64>(),
            ld(&s.unknown_outcome),
            ld(&s.output_limit_disconnects),
            shared.slowlog.len(),
        ),
    );
    let rs = &shared.cluster.stats;
    section(
        "cluster",
        format!(
            "# Cluster\r\ncluster_enabled:0\r\nslotmux_cluster_state:{}\r\nslotmux_masters:{}\r\nslotmux_replicas:{}\r\nslotmux_slots_covered:{}\r\nslotmux_topology_source:{}\r\nslotmux_topology_age_seconds:{}\r\nslotmux_last_refresh_unix:{}\r\nslotmux_refreshes_ok:{}\r\nslotmux_refreshes_failed:{}\r\n",
            if shared.readiness().is_ok() { "ok" } else { "fail" },
            topo.masters.len(),
            replicas,
            topo.covered_slots(),
            topo.source.as_deref().unwrap_or("-"),
            topo.fetched_at.elapsed().as_secs(),
            ld(&rs.last_ok_unix),
            ld(&rs.ok),
            ld(&rs.failed),
        ),
    );
    out
}
