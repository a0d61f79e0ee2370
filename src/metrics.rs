//! The operator's HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//!
//! Owns: every metric name and help text, and a deliberately tiny HTTP/1.1 responder (GET
//! only, one request per connection, bounded head size and time) so slotmux carries no HTTP
//! stack. Metrics are read from slotmux's atomic counters at scrape time.
//! Must not: add work to the per-request path.

use prometheus::core::{AtomicU64 as PAtomicU64, GenericCounter};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Shared;

type Counter = GenericCounter<PAtomicU64>;

struct Metrics {
    registry: Registry,
    build_info: IntGaugeVec,
    clients: IntGauge,
    accepted: Counter,
    rejected: IntCounterVec,
    redirections: IntCounterVec,
    retries: Counter,
    unknown_outcome: Counter,
    refreshes: IntCounterVec,
    slots_covered: IntGauge,
    masters: IntGauge,
    replicas: IntGauge,
    topology_age: IntGauge,
    nodes_in_backoff: IntGauge,
}

fn counter(name: &str, help: &str) -> Counter {
    GenericCounter::with_opts(Opts::new(name, help)).expect("static metric definition")
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            build_info: IntGaugeVec::new(Opts::new("slotmux_build_info", "slotmux version (value is always 1)"), &["version"]).expect("static metric"),
            clients: IntGauge::new("slotmux_client_connections", "Client connections currently open").expect("static metric"),
            accepted: counter("slotmux_client_connections_accepted_total", "Client connections accepted"),
            rejected: IntCounterVec::new(Opts::new("slotmux_client_connections_rejected_total", "Client connections refused, by reason"), &["reason"]).expect("static metric"),
            redirections: IntCounterVec::new(Opts::new("slotmux_redirections_total", "MOVED and ASK replies followed"), &["kind"]).expect("static metric"),
            retries: counter("slotmux_retries_total", "Commands scheduled for a retry (TRYAGAIN, CLUSTERDOWN, unreachable node, lost connection on a read)"),
            unknown_outcome: counter("slotmux_unknown_outcome_errors_total", "Writes whose backend connection broke after sending; the client got an error saying the outcome is unknown"),
            refreshes: IntCounterVec::new(Opts::new("slotmux_topology_refreshes_total", "Topology refreshes, by result"), &["result"]).expect("static metric"),
            slots_covered: IntGauge::new("slotmux_slots_covered", "Slots with a known master (16384 when healthy)").expect("static metric"),
            masters: IntGauge::new("slotmux_masters", "Masters in the slot map").expect("static metric"),
            replicas: IntGauge::new("slotmux_replicas", "Replicas in the slot map").expect("static metric"),
            topology_age: IntGauge::new("slotmux_topology_age_seconds", "Seconds since the slot map was fetched").expect("static metric"),
            nodes_in_backoff: IntGauge::new("slotmux_masters_unreachable", "Masters whose last connection attempt failed").expect("static metric"),
        };
        let r = &m.registry;
        let _ = r.register(Box::new(m.build_info.clone()));
        let _ = r.register(Box::new(m.clients.clone()));
        let _ = r.register(Box::new(m.accepted.clone()));
        let _ = r.register(Box::new(m.rejected.clone()));
        let _ = r.register(Box::new(m.redirections.clone()));
        let _ = r.register(Box::new(m.retries.clone()));
        let _ = r.register(Box::new(m.unknown_outcome.clone()));
        let _ = r.register(Box::new(m.refreshes.clone()));
        let _ = r.register(Box::new(m.slots_covered.clone()));
        let _ = r.register(Box::new(m.masters.clone()));
        let _ = r.register(Box::new(m.replicas.clone()));
        let _ = r.register(Box::new(m.topology_age.clone()));
        let _ = r.register(Box::new(m.nodes_in_backoff.clone()));
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    fn catch_up(c: &Counter, now: u64) {
        let have = c.get();
        if now > have {
            c.inc_by(now - have);
        }
    }

    fn render(&self, shared: &Shared) -> String {
        let s = &shared.stats;
        let t = shared.cluster.snapshot();
        self.clients
            .set(shared.clients.load(Ordering::Relaxed) as i64);
        Self::catch_up(&self.accepted, s.accepted.load(Ordering::Relaxed));
        Self::catch_up(
            &self.rejected.with_label_values(&["maxclients"]),
            s.rejected_maxclients.load(Ordering::Relaxed),
        );
        Self::catch_up(
            &self.redirections.with_label_values(&["moved"]),
            s.moved.load(Ordering::Relaxed),
        );
        Self::catch_up(
            &self.redirections.with_label_values(&["ask"]),
            s.ask.load(Ordering::Relaxed),
        );
        Self::catch_up(&self.retries, s.retries.load(Ordering::Relaxed));
        Self::catch_up(
            &self.unknown_outcome,
            s.unknown_outcome.load(Ordering::Relaxed),
        );
        let rs = &shared.cluster.stats;
        Self::catch_up(
            &self.refreshes.with_label_values(&["ok"]),
            rs.ok.load(Ordering::Relaxed),
        );
        Self::catch_up(
            &self.refreshes.with_label_values(&["error"]),
            rs.failed.load(Ordering::Relaxed),
        );
        self.slots_covered.set(t.covered_slots() as i64);
        self.masters.set(t.masters.len() as i64);
        self.replicas
            .set(t.replicas.iter().map(|r| r.len()).sum::<usize>() as i64);
        self.topology_age.set(if t.is_empty() {
            -1
        } else {
            t.fetched_at.elapsed().as_secs() as i64
        });
        self.nodes_in_backoff.set(
            t.masters
                .iter()
                .filter(|m| m.health().failures() > 0)
                .count() as i64,
        );
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves the HTTP endpoint until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let metrics = Arc::new(Metrics::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), respond(stream, &shared, &metrics))
                    .await;
        });
    }
}

async fn respond(mut stream: TcpStream, shared: &Shared, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render(shared),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match shared.readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
