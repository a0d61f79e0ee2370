//! slotmux: a transparent RESP proxy that makes a Redis Cluster look like one Redis.
//!
//! # Layout
//! The request path: [`server`] accepts → [`session`] reads bytes → [`resp::request`] cuts
//! commands → [`command`] finds the command, its policy and its keys' slot → the session picks
//! the master from the [`cluster::topology`] snapshot → [`upstream::conn`] sends it on a shared,
//! pipelined connection → [`resp::reply`] finds the reply's end and spots `-MOVED`/`-ASK` →
//! the session follows redirects and retries (bounded) → replies go back in request order.
//!
//! - [`config`]: flags and `SLOTMUX_*` env vars.
//! - [`server`]: listener, client limit, graceful drain, shared state, INFO text.
//! - [`session`]: one client; ordering, redirections, retries, local commands (PING, HELLO...).
//! - [`resp`]: request scanner, reply scanner, our own reply encoder.
//! - [`command`]: generated command table, key extraction, per-command policy.
//! - [`router`]: command → one target, a split plan, a local reply or an error; SCAN cursors.
//! - [`merge`]: combining the replies of split and all-masters commands.
//! - [`cluster`]: `key_slot`, the slot table snapshot, the refresher.
//! - [`slowlog`]: SLOWLOG entries for commands above `--slowlog-threshold`.
//! - [`upstream`]: multiplexed backend connections and the per-node pool.
//! - [`metrics`]: every Prometheus metric, and per-session stats flushed once a second.
//! - [`http`]: the HTTP endpoint for `/metrics`, `/healthz`, `/readyz`.

pub mod cluster;
pub mod command;
pub mod config;
pub mod http;
pub mod merge;
pub mod metrics;
pub mod resp;
pub mod router;
pub mod server;
pub mod session;
pub mod slowlog;
pub mod upstream;

pub use config::Config;
pub use server::{run, serve, Shared};

/// The Redis version slotmux presents itself as (in HELLO and INFO): the version whose
/// command table it carries.
pub const REDIS_VERSION: &str = "7.0.15";
