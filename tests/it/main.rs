//! Integration tests against a real 6-node Redis Cluster (started once for this binary) with
//! plain, non-cluster clients: the `redis` crate, raw sockets and redis-cli.

#[path = "../support/mod.rs"]
mod support;

mod basic;
mod hostile;
mod hotkeys;
mod multikey;
mod ops;
mod pubsub;
mod redirects;
mod replicas;
mod resp3;
mod tracking;
mod txblock;
mod txmoves;

use std::sync::OnceLock;
use support::RedisCluster;

pub fn cluster() -> &'static RedisCluster {
    static C: OnceLock<RedisCluster> = OnceLock::new();
    C.get_or_init(|| RedisCluster::start("it"))
}
