//! Connections to Redis nodes.
//!
//! Owns: the node registry with each node's connect health ([`node`]), the worker-local,
//! pipelined backend connection that client sessions hand requests to directly ([`link`]), and
//! the cold-path one-shot connections for handshakes, topology queries and probes
//! ([`connect`]).
//! Must not: route, follow redirections or decide retries (the session does, because only it
//! knows whether a command may be resent).

pub mod connect;
pub mod link;
pub mod node;

use bytes::Bytes;
use std::fmt;

pub use link::{Inbox, Link, LinkKind, OwnedLink, Release, Signal, Tracked};
pub use node::{Node, Registry};

/// The answer to one request, delivered into the inbox of the session that sent it.
#[derive(Debug)]
pub struct Reply {
    pub tag: u64,
    pub result: Result<Bytes, UpstreamError>,
}

/// Why a backend could not answer. The split between `NotSent` and the others is what makes
/// retries safe: a request that never reached the node may always be resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The request was never (completely) written: connect failed, node in backoff, or the
    /// connection closed first. Safe to resend anywhere.
    NotSent,
    /// The connection broke after the request was written: it may or may not have run.
    Lost,
    /// No reply within the reply timeout; the connection was dropped. It may or may not have run.
    Timeout,
}

impl UpstreamError {
    /// Whether any command, whatever it does, may be resent.
    pub fn always_retryable(self) -> bool {
        matches!(self, UpstreamError::NotSent)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamError::NotSent => "node unreachable",
            UpstreamError::Lost => "connection lost",
            UpstreamError::Timeout => "reply timeout",
        })
    }
}
