//! The state every worker and session sees: configuration, the cluster, metrics, the slow log,
//! the script store, the client and blocked-client limits, the hot-key views, and the rare-event
//! counters.
//!
//! Owns: [`Shared`] and its parts ([`Stats`], [`Scripts`], the RAII permits for the client and
//! blocking limits), and readiness.
//! Must not: be touched per request beyond plain reads (configuration, the topology cell):
//! everything here that changes is a cold-path counter or behind a lock taken on rare events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cluster::refresh::RefreshSettings;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Metrics, RetryReason};
use crate::upstream::connect::ConnSettings;
use crate::upstream::Registry;

/// Counters for INFO and metrics (cold events only: nothing here is touched per request).
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub rejected_maxclients: AtomicU64,
    pub moved: AtomicU64,
    pub ask: AtomicU64,
    /// Retries by reason, indexed by [`RetryReason::index`].
    pub retries: [AtomicU64; RetryReason::ALL.len()],
    pub unknown_outcome: AtomicU64,
    pub output_limit_disconnects: AtomicU64,
    /// Null invalidations sent because a tracking client's link to a master ended.
    pub tracking_resets: AtomicU64,
    /// Second (since start) of the last "refusing client" log line.
    pub last_reject_log: AtomicU64,
    /// Commands per second over the last second (sampled by a ticker).
    pub ops_per_sec: AtomicU64,
}

impl Stats {
    pub fn retry(&self, why: RetryReason) {
        self.retries[why.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// CLIENT PAUSE as slotmux applies it to its own clients: until a deadline, their write
/// commands (or all commands) wait in their session, in order, instead of going to a node.
#[derive(Debug, Default)]
pub struct Pause {
    /// Milliseconds since the process started; 0: no pause.
    until_ms: AtomicU64,
    all: AtomicBool,
}

impl Pause {
    /// Pauses until `until`; a pause already running keeps the later end and the wider kind.
    pub fn set(&self, started: Instant, until: Instant, all: bool) {
        let ms = until.saturating_duration_since(started).as_millis() as u64 + 1;
        if self.until_ms.load(Ordering::Relaxed) == 0 {
            self.all.store(all, Ordering::Relaxed);
        } else if all {
            self.all.store(true, Ordering::Relaxed);
        }
        self.until_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
        self.all.store(false, Ordering::Relaxed);
    }

    /// When a command must wait until: `Some(deadline)` while a pause holds it (`may_write`:
    /// the command writes or may replicate; an ALL pause holds everything).
    #[inline]
    pub fn holds(&self, started: Instant, now: Instant, may_write: bool) -> Option<Instant> {
        let until = self.until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let deadline = started + std::time::Duration::from_millis(until);
        (now < deadline && (may_write || self.all.load(Ordering::Relaxed))).then_some(deadline)
    }

    /// Whether any pause is set (one load: the per-command check).
    #[inline]
    pub fn any(&self) -> bool {
        self.until_ms.load(Ordering::Relaxed) != 0
    }
}

/// A place under a limit (clients, blocked clients); given back when dropped, so a session
/// that ends in any way, a panic included, releases it.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// Takes a place if fewer than `max` are taken.
    pub fn try_take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        let n = counter.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(counter.clone());
        (n < max).then_some(permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Script bodies by SHA1, so an EVALSHA that meets `-NOSCRIPT` on a node (a fresh master
/// after a failover, a node whose script cache was flushed) can be answered by loading the
/// script there and retrying. Bounded by bytes; the oldest scripts go first.
pub struct Scripts {
    store: Mutex<ScriptStore>,
    /// Bumped when a script is evicted: workers then forget which scripts they saw.
    pub evictions: AtomicU64,
    limit: usize,
}

#[derive(Default)]
struct ScriptStore {
    by_sha: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

/// The script store's default size.
pub const SCRIPT_BYTES: usize = 32 << 20;

impl Scripts {
    pub fn new(limit: usize) -> Self {
        Scripts {
            store: Mutex::new(ScriptStore::default()),
            evictions: AtomicU64::new(0),
            limit,
        }
    }

    /// Remembers a script body (cold: workers call it once per script they have not seen).
    pub fn remember(&self, body: &[u8]) {
        if body.len() > self.limit {
            return;
        }
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if st.by_sha.contains_key(&sha) {
            return;
        }
        st.bytes += body.len();
        st.by_sha.insert(sha.clone(), Bytes::copy_from_slice(body));
        st.order.push_back(sha);
        while st.bytes > self.limit {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if let Some(b) = st.by_sha.remove(&old) {
                st.bytes -= b.len();
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// SCRIPT FLUSH: forget every script, as the nodes do (an EVALSHA then meets NOSCRIPT).
    pub fn clear(&self) {
        let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        *st = ScriptStore::default();
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, sha: &[u8]) -> Option<Bytes> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        let st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        st.by_sha.get(&sha).cloned()
    }

    /// Bytes and scripts held (for tests and INFO).
    pub fn usage(&self) -> (usize, usize) {
        let st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        (st.bytes, st.by_sha.len())
    }
}

/// Why slotmux cannot start with these settings.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// State shared by every worker and session.
pub struct Shared {
    pub slowlog: crate::slowlog::SlowLog,
    pub metrics: Arc<Metrics>,
    pub scripts: Scripts,
    /// Clients in MONITOR (each holds a [`Permit`]).
    pub monitors: Arc<AtomicUsize>,
    /// Clients currently holding a dedicated connection for a blocking command.
    pub blocked: Arc<AtomicUsize>,
    /// Clients with CLIENT TRACKING on (each holds a [`Permit`]).
    pub tracking: Arc<AtomicUsize>,
    pub config: Arc<Config>,
    pub cluster: Arc<Cluster>,
    pub next_client_id: AtomicU64,
    /// Connected clients (each holds a [`Permit`]).
    pub clients: Arc<AtomicUsize>,
    /// The same clients, for CLIENT LIST, KILL and UNBLOCK.
    pub client_list: crate::clients::Clients,
    pub stats: Stats,
    pub started: Instant,
    /// This process's random identity (INFO's run_id).
    pub run_id: String,
    pub pause: Pause,
    /// Functions loaded through slotmux and their `no-writes` flags.
    pub functions: crate::functions::Functions,
    /// What the workers' hot-key samplers saw (their views, published once a second).
    pub hotkeys: crate::hotkeys::HotKeys,
    /// The workers' channels, to tell every session of an unpause.
    pub workers:
        std::sync::OnceLock<Vec<tokio::sync::mpsc::UnboundedSender<crate::worker::WorkerMsg>>>,
    /// TLS configurations (client-facing, backend), reloaded when their files change.
    pub tls: crate::tls::Tls,
}

impl Shared {
    /// Builds the shared state and starts the topology refresher (needs a Tokio runtime).
    pub fn start(config: Config) -> Result<Arc<Shared>, StartError> {
        if config.auth_mode == "passthrough" && config.requirepass.is_some() {
            return Err(StartError::Config(
                "--requirepass and --auth-mode passthrough do not go together: in passthrough mode the cluster checks passwords".into(),
            ));
        }
        let metrics = Arc::new(Metrics::new());
        let tls = crate::tls::Tls::load(&config, &metrics)?;
        tls.spawn_watcher();
        let registry = Registry::new(
            metrics.clone(),
            ConnSettings {
                connect_timeout: config.connect_timeout,
                reply_timeout: config.backend_timeout,
                user: config.backend_user.clone(),
                password: config.backend_password.clone(),
                tls: tls.backend.clone(),
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
        crate::cluster::probe::spawn(&cluster);
        let shared = Arc::new(Shared {
            slowlog: crate::slowlog::SlowLog::new(config.slowlog_max_len, config.slowlog_threshold),
            metrics,
            scripts: Scripts::new(SCRIPT_BYTES),
            blocked: Arc::new(AtomicUsize::new(0)),
            tracking: Arc::new(AtomicUsize::new(0)),
            monitors: Arc::new(AtomicUsize::new(0)),
            config: Arc::new(config),
            cluster,
            next_client_id: AtomicU64::new(0),
            clients: Arc::new(AtomicUsize::new(0)),
            client_list: crate::clients::Clients::default(),
            stats: Stats::default(),
            started: Instant::now(),
            run_id: run_id(),
            pause: Pause::default(),
            hotkeys: crate::hotkeys::HotKeys::default(),
            functions: crate::functions::Functions::default(),
            workers: std::sync::OnceLock::new(),
            tls,
        });
        shared.spawn_ops_ticker();
        Ok(shared)
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

    /// CLIENT UNPAUSE: commands held by the pause go, on every worker.
    pub fn unpause(&self) {
        self.pause.clear();
        for w in self.workers.get().into_iter().flatten() {
            let _ = w.send(crate::worker::WorkerMsg::Unpause);
        }
    }

    /// A place for one more blocked client, if the limit allows.
    pub fn tracking_permit(&self) -> Option<Permit> {
        Permit::try_take(&self.tracking, self.config.max_tracking_clients)
    }

    pub fn blocking_permit(&self) -> Option<Permit> {
        Permit::try_take(&self.blocked, self.config.max_blocking_clients)
    }

    /// Ready = every slot has a master and every master answers (its health probe, its
    /// connections). Not ready names the unreachable masters and their slots.
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
            .filter(|m| m.health().is_down())
            .map(|m| format!("{} (slots {})", m.addr, t.slots_of(m)))
            .collect();
        if !down.is_empty() {
            return Err(format!("masters unreachable: {}", down.join(", ")));
        }
        Ok(())
    }
}

/// 40 hex digits, different for every process (not a secret: INFO shows it).
fn run_id() -> String {
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        Instant::now()
    );
    sha1_smol::Sha1::from(seed).digest().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_bounded_by_bytes_oldest_first() {
        let s = Scripts::new(100);
        s.remember(&[b'a'; 40]);
        s.remember(&[b'b'; 40]);
        assert_eq!(s.usage(), (80, 2));
        s.remember(&[b'c'; 40]);
        assert_eq!(s.usage(), (80, 2));
        let sha = |b: &[u8]| sha1_smol::Sha1::from(b).digest().to_string();
        assert!(s.get(sha(&[b'a'; 40]).as_bytes()).is_none());
        assert!(s.get(sha(&[b'c'; 40]).to_uppercase().as_bytes()).is_some());
        assert_eq!(s.evictions.load(Ordering::Relaxed), 1);
        // Too big for the store at all: not remembered, nothing evicted.
        s.remember(&[b'd'; 101]);
        assert_eq!(s.usage(), (80, 2));
    }

    #[test]
    fn permits_are_given_back() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Permit::try_take(&c, 2);
        let b = Permit::try_take(&c, 2);
        assert!(a.is_some() && b.is_some());
        assert!(Permit::try_take(&c, 2).is_none());
        assert_eq!(c.load(Ordering::Relaxed), 2);
        drop(a);
        assert!(Permit::try_take(&c, 2).is_some());
        drop(b);
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }
}
