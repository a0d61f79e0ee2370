//! Connections to Redis nodes.
//!
//! Owns: the multiplexed, pipelined backend connections ([`conn`]) and the per-node set of
//! them with reconnect backoff ([`pool`]). Many client sessions share each connection; a
//! request carries the sender and tag its reply must go back to.
//! Must not: route, follow redirections or decide retries (the session does, because only it
//! knows whether a command may be resent).

pub mod conn;
pub mod pool;

use bytes::Bytes;
use std::fmt;
use tokio::sync::mpsc::UnboundedSender;

pub use pool::{Node, Registry};

/// One request for a backend connection: the client's bytes, unchanged.
#[derive(Debug)]
pub struct Request {
    pub frame: Bytes,
    /// Send `ASKING` right before `frame`, on the same connection, back to back.
    pub asking: bool,
    pub tag: u64,
    pub reply_to: UnboundedSender<Reply>,
}

/// The answer to one [`Request`], delivered to the session that sent it.
#[derive(Debug)]
pub struct Reply {
    pub tag: u64,
    pub result: Result<Bytes, UpstreamError>,
}

/// Why a backend could not answer. The split between `NotSent` and the others is what makes
/// retries safe: a request that never reached the node may always be resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The request was never written (connect failed, node in backoff, connection closed
    /// before it was written). Safe to resend anywhere.
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
