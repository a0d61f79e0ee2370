//! slotmux: a transparent RESP proxy that makes a Redis Cluster look like one Redis.
//!
//! # Layout
//! The request path, all on one worker thread: [`server`] accepts and hands the socket to a
//! [`worker`] → [`session`] reads bytes → [`resp::request`] cuts commands → [`command`] finds
//! the command, its policy and its keys' slot → [`router`] picks the target → the session takes
//! the master from the [`cluster::topology`] snapshot and appends the request to the worker's
//! [`upstream::link`] to that node (no channel, no lock) → the link writes, scans replies with
//! [`resp::reply`] and pushes each into the session's inbox → the session follows redirects
//! and retries ([`session`]'s `decide`) → replies go back in request order.
//!
//! - [`config`]: flags and `SLOTMUX_*` env vars.
//! - [`server`]: listener, client limit, hand-off to workers, graceful drain.
//! - [`worker`]: shared-nothing worker threads and their per-node link tables.
//! - [`shared`]: state every worker sees (cluster, metrics, limits, script store).
//! - [`clients`]: the registry of connected clients (CLIENT LIST/KILL/UNBLOCK).
//! - [`session`]: one client; ordering, redirections, retries, transactions, pub/sub, local
//!   commands (PING, HELLO...).
//! - [`resp`]: request scanner, reply scanner, our own reply and command encoder.
//! - [`command`]: generated command table, key extraction, per-command policy.
//! - [`router`]: command → one target, a split plan, a local reply or an error; SCAN cursors.
//! - [`merge`]: combining the replies of split and all-masters commands.
//! - [`functions`]: which functions loaded through slotmux declared `no-writes` (CLIENT PAUSE).
//! - [`error`]: what slotmux answers itself when it cannot pass a command on.
//! - [`cluster`]: `key_slot`, the slot table snapshot, the refresher.
//! - [`upstream`]: nodes, worker-local backend links, cold-path queries.
//! - [`info`]: INFO sections.
//! - [`slowlog`]: SLOWLOG entries for commands above `--slowlog-threshold`.
//! - [`tls`]: certificates for both sides, reloaded when their files change.
//! - [`hotkeys`]: sampled hot keys and busiest slots (`SLOTMUX HOTKEYS`, `/debug/hotkeys`).
//! - [`metrics`]: every Prometheus metric, per-session and per-link counts flushed periodically.
//! - [`http`]: the HTTP endpoint for `/metrics`, `/healthz`, `/readyz`, `/debug/hotkeys`.

pub mod clients;
pub mod cluster;
pub mod command;
pub mod config;
pub mod error;
pub mod functions;
pub mod hotkeys;
pub mod http;
pub mod info;
pub mod merge;
pub mod metrics;
pub mod resp;
pub mod router;
pub mod server;
pub mod session;
pub mod shared;
pub mod slowlog;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use config::Config;
pub use server::{run, serve, serve_on, Listeners};
pub use shared::Shared;

/// The Redis version slotmux presents itself as (in HELLO and INFO): the version whose
/// command table it carries.
pub const REDIS_VERSION: &str = "7.0.15";
