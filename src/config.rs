//! The command line: every setting is a flag and a `SLOTMUX_*` environment variable.
//!
//! Owns: names, defaults, parsing and validation of settings. Must not: hold runtime state.

use clap::Parser;
use std::time::Duration;

/// A transparent Redis Cluster proxy: clients see one Redis, slotmux routes every command to
/// the master that owns its slot and follows MOVED/ASK/TRYAGAIN itself.
#[derive(Parser, Debug, Clone)]
#[command(name = "slotmux", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// A TOML file of settings (`key = value`, keys as the flag names with `-` or `_`).
    /// Precedence: flags, then SLOTMUX_* environment variables, then this file, then defaults.
    #[arg(long, env = "SLOTMUX_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Address clients connect to in plain text; "off" leaves only `--tls-listen`.
    #[arg(long, env = "SLOTMUX_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: String,

    /// Address clients connect to with TLS (beside `--listen`, as Redis's `tls-port` beside
    /// `port`). Needs `--tls-cert-file` and `--tls-key-file`.
    #[arg(long, env = "SLOTMUX_TLS_LISTEN")]
    pub tls_listen: Option<String>,

    /// PEM certificate (chain) slotmux presents to TLS clients. Re-read when the file changes.
    #[arg(long, env = "SLOTMUX_TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "SLOTMUX_TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// PEM CA certificate(s) that client certificates must be signed by.
    #[arg(long, env = "SLOTMUX_TLS_CA_CERT_FILE")]
    pub tls_ca_cert_file: Option<std::path::PathBuf>,

    /// Client certificates, as Redis's `tls-auth-clients`: yes (required), no, optional
    /// (checked when presented). Default: yes when `--tls-ca-cert-file` is given, else no.
    #[arg(long, env = "SLOTMUX_TLS_AUTH_CLIENTS", value_parser = ["yes", "no", "optional"])]
    pub tls_auth_clients: Option<String>,

    /// Connect to the cluster's nodes with TLS (their `tls-port`; the cluster must announce
    /// it, with `tls-cluster yes`).
    #[arg(long, env = "SLOTMUX_BACKEND_TLS")]
    pub backend_tls: bool,

    /// PEM CA certificate(s) the nodes' certificates must be signed by (needed with
    /// `--backend-tls`).
    #[arg(long, env = "SLOTMUX_BACKEND_TLS_CA_CERT_FILE")]
    pub backend_tls_ca_cert_file: Option<std::path::PathBuf>,

    /// PEM client certificate slotmux presents to the nodes (Redis asks for one by default:
    /// `tls-auth-clients yes`).
    #[arg(long, env = "SLOTMUX_BACKEND_TLS_CERT_FILE")]
    pub backend_tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of `--backend-tls-cert-file`.
    #[arg(long, env = "SLOTMUX_BACKEND_TLS_KEY_FILE")]
    pub backend_tls_key_file: Option<std::path::PathBuf>,

    /// The name checked in every node's certificate. Default: the host of the address the
    /// cluster announces (usually an IP, which the certificate must then list).
    #[arg(long, env = "SLOTMUX_BACKEND_TLS_SERVER_NAME")]
    pub backend_tls_server_name: Option<String>,

    /// Cluster nodes to learn the topology from, comma-separated host:port. DNS names (e.g. a
    /// Kubernetes Service) are re-resolved at every topology refresh.
    #[arg(long, env = "SLOTMUX_SEEDS", value_delimiter = ',', required = true)]
    pub seeds: Vec<String>,

    /// The address cluster-aware clients are told slotmux has (CLUSTER SLOTS/SHARDS/NODES
    /// answer as a one-node cluster at this `host:port`). Default: the address the client
    /// connected to.
    #[arg(long, env = "SLOTMUX_ANNOUNCE_ADDR")]
    pub announce_addr: Option<String>,

    /// HTTP address for /metrics, /healthz and /readyz; "off" disables it.
    #[arg(long, env = "SLOTMUX_METRICS_LISTEN", default_value = "0.0.0.0:9898")]
    pub metrics_listen: String,

    /// Password clients must AUTH with before any other command (none by default).
    #[arg(long, env = "SLOTMUX_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// Who checks clients' passwords. `proxy`: slotmux, against `--requirepass`, and every
    /// client's commands run as slotmux's backend user. `passthrough`: a client's `AUTH user
    /// pass` (or `HELLO 3 AUTH`) is checked by the cluster, and its commands then run on
    /// connections authenticated as that user, so the cluster's ACL rules apply per user.
    #[arg(long, env = "SLOTMUX_AUTH_MODE", default_value = "proxy", value_parser = ["proxy", "passthrough"])]
    pub auth_mode: String,

    /// Passthrough mode: client users with connections of their own, per worker. When all are
    /// taken, the one unused longest gives its place up; if every one has clients, AUTH as a
    /// new user is refused.
    #[arg(long, env = "SLOTMUX_MAX_BACKEND_USERS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_backend_users: u64,

    /// Passthrough mode: a user's connections close this long after its last client left.
    #[arg(long, env = "SLOTMUX_BACKEND_USER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub backend_user_idle_timeout: Duration,

    /// ACL user slotmux authenticates as on the cluster's nodes.
    #[arg(long, env = "SLOTMUX_BACKEND_USER")]
    pub backend_user: Option<String>,

    /// Password slotmux authenticates with on the cluster's nodes.
    #[arg(long, env = "SLOTMUX_BACKEND_PASSWORD", hide_env_values = true)]
    pub backend_password: Option<String>,

    /// Multiplexed connections per node, protocol version and worker, shared by the worker's
    /// clients.
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

    /// Most clients with CLIENT TRACKING on at once; each holds two backend connections per
    /// master it reads from (every master in BCAST mode).
    #[arg(long, env = "SLOTMUX_MAX_TRACKING_CLIENTS", default_value_t = 1000)]
    pub max_tracking_clients: usize,

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

    /// Where read-only commands go: `master` (as a cluster client does by default),
    /// `replica` (a replica of the slot's master, spread over its replicas; none that can
    /// serve: retried, then an error) or `prefer-replica` (a replica when one can serve, else
    /// the master). Never inside MULTI, after WATCH, or for blocking commands. A client can opt
    /// in on its connection with READONLY (as prefer-replica) and out with READWRITE.
    #[arg(long, env = "SLOTMUX_READ_FROM", default_value = "master",
          value_parser = ["master", "replica", "prefer-replica"])]
    pub read_from: String,

    /// A replica whose master has not had its acknowledgement for longer than this (the
    /// master's `lag` in INFO replication, as Redis's min-replicas-max-lag) gets no reads.
    #[arg(long, env = "SLOTMUX_REPLICA_MAX_LAG", default_value = "10s", value_parser = parse_duration)]
    pub replica_max_lag: Duration,

    /// This proxy's availability zone: replicas that announce the same zone (Valkey 8.1+
    /// `availability-zone`, in HELLO) are preferred for reads; others are used when the zone
    /// has none.
    #[arg(long, env = "SLOTMUX_AVAILABILITY_ZONE")]
    pub availability_zone: Option<String>,

    /// Hot-key sampling (`SLOTMUX HOTKEYS`, `/debug/hotkeys`, the busiest-slot gauge): one
    /// command in 8, on average, has its keys counted.
    #[arg(long, env = "SLOTMUX_HOTKEYS", default_value = "on", value_parser = ["on", "off"])]
    pub hotkeys: String,

    /// Worker threads, each serving its share of the clients with its own backend
    /// connections (default: half the cores available, rounded up: 1 on 2 cores).
    #[arg(long, env = "SLOTMUX_THREADS")]
    pub threads: Option<usize>,
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// From the command line or the environment; also `--help` and `--version`, which clap
    /// reports as errors but are not (its `exit()` prints them to stdout with status 0).
    Args(clap::Error),
    /// From the `--config` file.
    File(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Args(e) => write!(f, "{e}"),
            ConfigError::File(e) => f.write_str(e),
        }
    }
}

impl ConfigError {
    /// Prints the error (or the help/version text) and exits with clap's status: 0 for
    /// `--help`/`--version`, 2 for bad settings.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Args(e) => e.exit(),
            ConfigError::File(e) => {
                eprintln!("{e}");
                std::process::exit(2)
            }
        }
    }
}

impl Config {
    /// The client-facing TLS files, when `--tls-listen` is set.
    pub fn tls_server_files(
        &self,
    ) -> Result<Option<crate::tls::ServerFiles>, crate::tls::TlsError> {
        use crate::tls::{AuthClients, TlsError};
        if self.tls_listen.is_none() {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Err(TlsError::Config(
                "--tls-listen needs --tls-cert-file and --tls-key-file".into(),
            ));
        };
        let auth = match (self.tls_auth_clients.as_deref(), &self.tls_ca_cert_file) {
            (Some("no"), _) | (None, None) => AuthClients::No,
            (Some("optional"), Some(_)) => AuthClients::Optional,
            (Some("yes") | None, Some(_)) => AuthClients::Yes,
            _ => {
                return Err(TlsError::Config(
                    "--tls-auth-clients yes/optional needs --tls-ca-cert-file".into(),
                ))
            }
        };
        Ok(Some(crate::tls::ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: self.tls_ca_cert_file.clone(),
            auth,
        }))
    }

    /// The backend TLS files, when `--backend-tls` is set.
    pub fn tls_backend_files(
        &self,
    ) -> Result<Option<crate::tls::BackendFiles>, crate::tls::TlsError> {
        use crate::tls::TlsError;
        if !self.backend_tls {
            return Ok(None);
        }
        let Some(ca) = &self.backend_tls_ca_cert_file else {
            return Err(TlsError::Config(
                "--backend-tls needs --backend-tls-ca-cert-file (slotmux has no built-in CA list)"
                    .into(),
            ));
        };
        if self.backend_tls_cert_file.is_some() != self.backend_tls_key_file.is_some() {
            return Err(TlsError::Config(
                "--backend-tls-cert-file and --backend-tls-key-file go together".into(),
            ));
        }
        Ok(Some(crate::tls::BackendFiles {
            ca: ca.clone(),
            cert: self.backend_tls_cert_file.clone(),
            key: self.backend_tls_key_file.clone(),
        }))
    }

    /// Parses flags, environment and the optional `--config` file, with that precedence.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args().collect())
    }

    pub fn load_from(args: Vec<String>) -> Result<Config, ConfigError> {
        // Find --config before full parsing: required settings may live in the file.
        let from_flag = args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix("--config=").map(String::from).or_else(|| {
                (a == "--config")
                    .then(|| args.get(i + 1).cloned())
                    .flatten()
            })
        });
        let path = from_flag
            .or_else(|| std::env::var("SLOTMUX_CONFIG").ok())
            .filter(|p| !p.is_empty());
        let Some(path) = path.map(std::path::PathBuf::from) else {
            return Config::try_parse_from(&args).map_err(ConfigError::Args);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File(format!("--config {}: {e}", path.display())))?;
        let from_file = file_args(&text, &args)
            .map_err(|e| ConfigError::File(format!("--config {}: {e}", path.display())))?;
        let mut merged = vec![args.first().cloned().unwrap_or_else(|| "slotmux".into())];
        merged.extend(from_file);
        merged.extend(args.into_iter().skip(1));
        Config::try_parse_from(merged).map_err(ConfigError::Args)
    }

    /// The settings as one log line, secrets masked.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        for secret in [&mut c.requirepass, &mut c.backend_password] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        format!("{c:?}")
    }

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

/// Flags named by a settings file, skipping what the command line or the environment sets.
fn file_args(text: &str, cli: &[String]) -> Result<Vec<String>, String> {
    let known: Vec<String> = <Config as clap::CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(String::from))
        .collect();
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected key = value", n + 1));
        };
        let flag = key.trim().replace('_', "-");
        if !known.contains(&flag) || flag == "config" {
            return Err(format!("line {}: unknown setting '{}'", n + 1, key.trim()));
        }
        let env = format!("SLOTMUX_{}", flag.replace('-', "_").to_ascii_uppercase());
        let on_cli = cli
            .iter()
            .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
        if on_cli || std::env::var_os(&env).is_some() {
            continue;
        }
        out.push(format!("--{flag}"));
        out.push(toml_value(value.trim()).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(out)
}

/// A TOML scalar or array of strings, as the flag's text (arrays joined with commas).
fn toml_value(v: &str) -> Result<String, String> {
    let v = v.split(" #").next().unwrap_or(v).trim();
    if let Some(inner) = v.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        let items: Result<Vec<String>, String> = inner
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(toml_value)
            .collect();
        return Ok(items?.join(","));
    }
    if let Some(s) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return Ok(s.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    if let Some(s) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return Ok(s.to_string());
    }
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok(v.to_string())
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
    fn config_file_has_the_lowest_precedence() {
        let dir = std::env::temp_dir().join(format!("slotmux-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slotmux.toml");
        std::fs::write(
            &path,
            "# comment\nseeds = [\"a:1\", \"b:2\"]\nbackend_timeout = \"2s\"\nmaxclients = 77\nlisten = \"0.0.0.0:7777\"\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v = vec![
                "slotmux".to_string(),
                "--config".into(),
                path.display().to_string(),
            ];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let c = Config::load_from(args(&["--maxclients", "5"])).unwrap();
        assert_eq!(c.seeds, vec!["a:1", "b:2"]);
        assert_eq!(c.backend_timeout, Duration::from_secs(2));
        assert_eq!(c.maxclients, 5, "the flag wins over the file");
        assert_eq!(c.listen, "0.0.0.0:7777");
        std::fs::write(&path, "no_such = 1\n").unwrap();
        let e = Config::load_from(args(&["--seeds", "x:1"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting 'no_such'"), "{e}");
        std::fs::write(&path, "backend_timeout = \"fast\"\n").unwrap();
        let e = Config::load_from(args(&["--seeds", "x:1"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--backend-timeout"),
            "the error names the setting: {e}"
        );
        let c = Config::load_from(vec![
            "slotmux".into(),
            "--seeds".into(),
            "a:1".into(),
            "--requirepass".into(),
            "pw".into(),
        ])
        .unwrap();
        assert!(
            c.redacted().contains("requirepass: Some(\"***\")") && !c.redacted().contains("\"pw\"")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn seeds_split_on_commas() {
        let c = Config::parse_from(["slotmux", "--seeds", "a:1,b:2", "--listen", "127.0.0.1:0"]);
        assert_eq!(c.seeds, vec!["a:1", "b:2"]);
        assert_eq!(c.listen, "127.0.0.1:0");
    }
}
