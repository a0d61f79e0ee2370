//! What slotmux knows about the Redis Cluster: slots, the slot table and how it is refreshed.
//!
//! Owns: `key_slot`, the immutable [`topology::Topology`] snapshot behind an `ArcSwap`, the
//! refresh task and the health probes. Must not: send client traffic (that is `upstream`'s job).

pub mod facade;
pub mod probe;
pub mod refresh;
pub mod slot;
pub mod topology;

pub use refresh::Cluster;
pub use slot::key_slot;
pub use topology::Topology;
