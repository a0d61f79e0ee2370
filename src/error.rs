//! What slotmux answers itself when it cannot (or must not) pass a command on.
//!
//! Owns: [`ProxyError`], one variant per reason, its wire text (Redis's own words where Redis
//! has them, `slotmux`-prefixed where the reason is the proxy's), its metrics outcome, and
//! whether waiting and trying again could help.
//! Must not: decide retries (the session's `decide` does) or know about sockets.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::metrics::Outcome;
use crate::resp::write;
use crate::upstream::UpstreamError;

/// Redis Cluster's own text for keys in several slots.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
/// Redis Cluster's own text for a slot without a master.
pub const SLOT_NOT_SERVED: &str = "CLUSTERDOWN Hash slot not served";

#[derive(Debug, Clone)]
pub enum ProxyError {
    /// Keys in several slots, for a command that needs them together.
    CrossSlot,
    /// No master is known for the slot (yet).
    SlotNotServed,
    /// No refresh has ever succeeded.
    NoTopology(String),
    /// A node could not be reached; nothing was sent.
    Unreachable(Arc<str>),
    /// The retry budget ran out while a node was failing.
    NodeUnavailable {
        node: Arc<str>,
        cause: UpstreamError,
    },
    /// A command that may have changed data was sent, then its connection broke or timed out.
    UnknownOutcome {
        node: Arc<str>,
        cause: UpstreamError,
    },
    /// A command slotmux does not pass on; `why` completes "'name' ...".
    Refused { command: String, why: &'static str },
    /// `--max-blocking-clients` reached.
    TooManyBlocked(usize),
    /// `--read-from replica`: no replica of the slot's master can serve reads.
    NoReplica(u16),
    /// The connection a transaction was pinned to broke.
    TransactionLost,
    /// An error in Redis's own words (unknown command, arity, syntax...), made by slotmux
    /// because it answers the command itself or refuses it before any node sees it.
    Redis(Cow<'static, str>),
}

impl ProxyError {
    /// The reply frame (errors are the same in RESP2 and RESP3).
    pub fn frame(&self) -> Bytes {
        let text = self.to_string();
        let mut b = BytesMut::with_capacity(text.len() + 3);
        write::error(&mut b, &text);
        b.freeze()
    }

    /// How it counts in `slotmux_commands_total`: Redis's own answers are `error`, the
    /// proxy's are `proxy_error`.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::CrossSlot | ProxyError::SlotNotServed | ProxyError::Redis(_) => {
                Outcome::Error
            }
            _ => Outcome::ProxyError,
        }
    }

    /// Whether the same command could succeed later without the client changing it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProxyError::SlotNotServed
                | ProxyError::NoTopology(_)
                | ProxyError::Unreachable(_)
                | ProxyError::NodeUnavailable { .. }
                | ProxyError::TooManyBlocked(_)
                | ProxyError::NoReplica(_)
        )
    }

    pub fn redis(text: impl Into<Cow<'static, str>>) -> ProxyError {
        ProxyError::Redis(text.into())
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::CrossSlot => f.write_str(CROSSSLOT),
            ProxyError::SlotNotServed => f.write_str(SLOT_NOT_SERVED),
            ProxyError::NoTopology(why) => {
                write!(f, "CLUSTERDOWN slotmux has no cluster topology yet ({why})")
            }
            ProxyError::Unreachable(node) => write!(f, "CLUSTERDOWN slotmux cannot reach node {node}"),
            ProxyError::NodeUnavailable { node, cause } => {
                write!(f, "CLUSTERDOWN slotmux: node {node} unavailable ({cause})")
            }
            ProxyError::UnknownOutcome { node, cause } => write!(
                f,
                "ERR slotmux: {cause} on node {node} after the command was sent; it may or may not have been executed"
            ),
            ProxyError::Refused { command, why } => write!(f, "ERR slotmux: '{command}' {why}"),
            ProxyError::TooManyBlocked(n) => write!(
                f,
                "ERR slotmux: too many blocked clients (--max-blocking-clients {n})"
            ),
            ProxyError::NoReplica(slot) => write!(
                f,
                "CLUSTERDOWN slotmux: no replica of slot {slot}'s master can serve reads (--read-from replica)"
            ),
            ProxyError::TransactionLost => f.write_str(
                "ERR slotmux: the transaction's connection was lost; the transaction was discarded",
            ),
            ProxyError::Redis(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_outcomes() {
        assert_eq!(
            &ProxyError::CrossSlot.frame()[..],
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        );
        assert_eq!(ProxyError::CrossSlot.outcome(), Outcome::Error);
        let lost = ProxyError::UnknownOutcome {
            node: Arc::from("10.0.0.1:6379"),
            cause: UpstreamError::Lost,
        };
        assert_eq!(lost.outcome(), Outcome::ProxyError);
        assert!(!lost.is_transient());
        assert_eq!(
            lost.to_string(),
            "ERR slotmux: connection lost on node 10.0.0.1:6379 after the command was sent; it may or may not have been executed"
        );
        assert!(ProxyError::Unreachable(Arc::from("a:1")).is_transient());
        assert_eq!(
            ProxyError::redis("ERR x\r\ny").frame(),
            Bytes::from_static(b"-ERR x  y\r\n")
        );
    }
}
