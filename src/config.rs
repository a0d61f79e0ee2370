//! The command line: every setting is a flag and a `SLOTMUX_*` environment variable.
//!
//! Owns: names, defaults, parsing and validation of settings. Must not: hold runtime state.

use clap::Parser;
use std::time::Duration;

/// A transparent Redis Cluster proxy: clients see one Redis, slotmux routes every command to
/// the master that owns its slot and follows MOVED/ASK/TRYAGAIN itself.
#[derive(Parser, Debug, Clone)]
#[command(name = "slotmux", version, about, long_about = None)]
pub struct Config {
    /// Address clients connect to.
    #[arg(long, env = "SLOTMUX_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: String,

    /// Cluster nodes to learn the topology from, comma-separated host:port. DNS names (e.g. a
    /// Kubernetes Service) are re-resolved at every topology refresh.
    #[arg(long, env = "SLOTMUX_SEEDS", value_delimiter = ',', required = true)]
    pub seeds: Vec<String>,

    /// HTTP address for /metrics, /healthz and /readyz; "off" disables it.
    #[arg(long, env = "SLOTMUX_METRICS_LISTEN", default_value = "0.0.0.0:9898")]
    pub metrics_listen: String,

    /// Password clients must AUTH with before any other command (none by default).
    #[arg(long, env = "SLOTMUX_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// ACL user slotmux authenticates as on the cluster's nodes.
    #[arg(long, env = "SLOTMUX_BACKEND_USER")]
    pub backend_user: Option<String>,

    /// Password slotmux authenticates with on the cluster's nodes.
    #[arg(long, env = "SLOTMUX_BACKEND_PASSWORD", hide_env_values = true)]
    pub backend_password: Option<String>,

    /// Multiplexed connections per node and protocol version, shared by all clients.
    #[arg(long, env = "SLOTMUX_BACKEND_CONNECTIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub backend_connections: u16,

    /// Time to open a backend connection.
    #[arg(long, env = "SLOTMUX_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time a backend may take to answer before its connection is dropped and the topology
    /// refreshed. Commands that legitimately run longer (huge KEYS, slow scripts) need more.
    #[arg(long, env = "SLOTMUX_BACKEND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub backend_timeout: Duration,

    /// How long one command may keep being retried (TRYAGAIN, CLUSTERDOWN, unreachable node,
    /// MOVED storms) before the client gets the last error. Longer than a typical failover.
    #[arg(long, env = "SLOTMUX_RETRY_BUDGET", default_value = "10s", value_parser = parse_duration)]
    pub retry_budget: Duration,

    /// Most MOVED/ASK redirections followed for one command.
    #[arg(long, env = "SLOTMUX_MAX_REDIRECTS", default_value_t = 16)]
    pub max_redirects: u8,

    /// Periodic topology refresh.
    #[arg(long, env = "SLOTMUX_REFRESH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub refresh_interval: Duration,

    /// Least time between two refreshes (debounces MOVED storms and failure bursts).
    #[arg(long, env = "SLOTMUX_REFRESH_MIN_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub refresh_min_interval: Duration,

    /// Most client connections; more get Redis's "max number of clients reached".
    #[arg(long, env = "SLOTMUX_MAXCLIENTS", default_value_t = 10000)]
    pub maxclients: usize,

    /// Most clients blocked at once in BLPOP, XREAD BLOCK and the like; each holds a backend
    /// connection of its own while it waits.
    #[arg(long, env = "SLOTMUX_MAX_BLOCKING_CLIENTS", default_value_t = 1000)]
    pub max_blocking_clients: usize,

    /// Most commands one client may have in flight; slotmux stops reading from a client at
    /// this depth until replies drain (backpressure instead of unbounded buffers).
    #[arg(long, env = "SLOTMUX_MAX_PIPELINE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pipeline: u32,

    /// Largest bulk argument accepted from a client (Redis's proto-max-bulk-len).
    #[arg(long, env = "SLOTMUX_PROTO_MAX_BULK_LEN", default_value = "512mb", value_parser = parse_size)]
    pub proto_max_bulk_len: u64,

    /// Most unsent pub/sub output for one client before slotmux disconnects it (Redis's
    /// `client-output-buffer-limit pubsub` hard limit).
    #[arg(long, env = "SLOTMUX_PUBSUB_OUTPUT_LIMIT", default_value = "32mb", value_parser = parse_size)]
    pub pubsub_output_limit: u64,

    /// Largest unprocessed input buffered for one client (Redis's client-query-buffer-limit).
    #[arg(long, env = "SLOTMUX_CLIENT_QUERY_BUFFER_LIMIT", default_value = "1gb", value_parser = parse_size)]
    pub client_query_buffer_limit: u64,

    /// Close clients idle this long ("0" = never, Redis's `timeout`).
    #[arg(long, env = "SLOTMUX_IDLE_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SLOTMUX_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Commands slower than this (as the client sees them) go to the slow log and the log.
    #[arg(long, env = "SLOTMUX_SLOWLOG_THRESHOLD", default_value = "10ms", value_parser = parse_duration)]
    pub slowlog_threshold: std::time::Duration,

    /// Entries kept for SLOWLOG GET.
    #[arg(long, env = "SLOTMUX_SLOWLOG_MAX_LEN", default_value_t = 128)]
    pub slowlog_max_len: usize,

    /// Log format.
    #[arg(long, env = "SLOTMUX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Worker threads (default: one per core).
    #[arg(long, env = "SLOTMUX_THREADS")]
    pub threads: Option<usize>,
}

impl Config {
    /// Settings for tests and benches: defaults with the given seeds.
    pub fn for_seeds(seeds: &[String]) -> Self {
        let mut args = vec![
            "slotmux".to_string(),
            "--seeds".to_string(),
            seeds.join(","),
        ];
        args.push("--metrics-listen".into());
        args.push("off".into());
        Config::parse_from(args)
    }
}

/// Parses "250ms", "5s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 250ms, 5s or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses "512mb", "64kb", "1gb" or a bare number of bytes (units are powers of 1024, as in
/// redis.conf).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 64kb or 512mb"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use b, kb, mb or gb)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("512mb").unwrap(), 512 << 20);
        assert!(parse_size("12xb").is_err());
    }

    #[test]
    fn seeds_split_on_commas() {
        let c = Config::parse_from(["slotmux", "--seeds", "a:1,b:2", "--listen", "127.0.0.1:0"]);
        assert_eq!(c.seeds, vec!["a:1", "b:2"]);
        assert_eq!(c.listen, "127.0.0.1:0");
    }
}
