//! Connections to Redis nodes.
//!
//! Owns: the multiplexed, pipelined backend connections ([`conn`]) and the per-node set of
//! them with reconnect backoff ([`pool`]). Many client sessions share each connection; a
//! request carries the sender and tag its reply must go back to, and a reply message may carry
//! several of one session's replies at once.
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

/// The answer to one [`Request`], delivered to the session that sent it; or the answers to
/// several of one session's requests on the same connection, back to back in one buffer, so a
/// pipeline's replies cost one channel message instead of one each. [`Reply::split`] gives
/// them one by one.
#[derive(Debug)]
pub struct Reply {
    pub tag: u64,
    pub result: Result<Bytes, UpstreamError>,
    /// The replies after the first in `result`'s bytes: `(tag, length)` each.
    pub more: More,
}

/// Most replies one [`Reply`] carries.
pub const REPLY_BATCH: usize = 8;

/// The `(tag, length)` of the replies after the first in a batched [`Reply`].
#[derive(Debug, Clone, Copy, Default)]
pub struct More {
    n: u8,
    /// Length of the first reply (the rest of the bytes belong to the others).
    first_len: u32,
    rest: [(u64, u32); REPLY_BATCH - 1],
}

impl More {
    pub const NONE: More = More {
        n: 0,
        first_len: 0,
        rest: [(0, 0); REPLY_BATCH - 1],
    };
}

impl Reply {
    /// One reply (or error) for one request.
    pub fn one(tag: u64, result: Result<Bytes, UpstreamError>) -> Reply {
        Reply {
            tag,
            result,
            more: More::NONE,
        }
    }

    /// The replies this message carries, one per request, in order.
    pub fn split(self) -> Split {
        Split {
            next: Some((self.tag, self.more.first_len)),
            result: Some(self.result),
            more: self.more,
            i: 0,
        }
    }
}

/// Builds a batched [`Reply`] (the connection's side).
#[derive(Debug)]
pub struct Batcher {
    tag: u64,
    len: usize,
    more: More,
}

impl Batcher {
    pub fn new(tag: u64, len: usize) -> Batcher {
        Batcher {
            tag,
            len,
            more: More::NONE,
        }
    }

    /// Adds the next reply (its bytes follow the previous one's); false when full.
    pub fn push(&mut self, tag: u64, len: usize) -> bool {
        let i = usize::from(self.more.n);
        if i + 1 >= REPLY_BATCH || len > u32::MAX as usize || self.len > u32::MAX as usize {
            return false;
        }
        if i == 0 {
            self.more.first_len = self.len as u32;
        }
        self.more.rest[i] = (tag, len as u32);
        self.more.n += 1;
        self.len += len;
        true
    }

    /// Bytes of every reply in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message, given the batch's bytes (`len()` of them).
    pub fn finish(self, bytes: Bytes) -> Reply {
        Reply {
            tag: self.tag,
            result: Ok(bytes),
            more: self.more,
        }
    }
}

/// The replies of a [`Reply`], one by one (see [`Reply::split`]).
pub struct Split {
    next: Option<(u64, u32)>,
    result: Option<Result<Bytes, UpstreamError>>,
    more: More,
    i: usize,
}

impl Iterator for Split {
    type Item = (u64, Result<Bytes, UpstreamError>);

    fn next(&mut self) -> Option<Self::Item> {
        let (tag, len) = self.next.take()?;
        if self.i < usize::from(self.more.n) {
            self.next = Some(self.more.rest[self.i]);
            self.i += 1;
            if let Some(Ok(bytes)) = &mut self.result {
                let len = (len as usize).min(bytes.len());
                return Some((tag, Ok(bytes.split_to(len))));
            }
        }
        // The last (or only) reply takes what is left.
        self.result.take().map(|r| (tag, r))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_back_into_its_replies() {
        let frames: [&[u8]; 3] = [b"+OK\r\n", b"$3\r\nfoo\r\n", b":42\r\n"];
        let mut b = Batcher::new(7, frames[0].len());
        assert!(b.push(9, frames[1].len()));
        assert!(b.push(12, frames[2].len()));
        let bytes = Bytes::from(frames.concat());
        assert_eq!(b.len(), bytes.len());
        let got: Vec<(u64, Bytes)> = b
            .finish(bytes)
            .split()
            .map(|(t, r)| (t, r.unwrap()))
            .collect();
        let want: Vec<(u64, Bytes)> = [7, 9, 12]
            .into_iter()
            .zip(frames.iter().map(|f| Bytes::copy_from_slice(f)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_batch_is_bounded_and_single_replies_pass_through() {
        let mut b = Batcher::new(0, 5);
        for i in 1..REPLY_BATCH {
            assert!(b.push(i as u64, 5));
        }
        assert!(!b.push(99, 5), "one more than REPLY_BATCH");
        let tags: Vec<u64> = b
            .finish(Bytes::from(vec![b'x'; 5 * REPLY_BATCH]))
            .split()
            .map(|(t, r)| {
                assert_eq!(r.unwrap().len(), 5);
                t
            })
            .collect();
        assert_eq!(tags, (0..REPLY_BATCH as u64).collect::<Vec<_>>());

        let one: Vec<_> = Reply::one(3, Err(UpstreamError::Lost)).split().collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, 3);
        assert_eq!(one[0].1, Err(UpstreamError::Lost));
        let single: Vec<_> = Batcher::new(4, 5)
            .finish(Bytes::from_static(b"+OK\r\n"))
            .split()
            .collect();
        assert_eq!(single, vec![(4, Ok(Bytes::from_static(b"+OK\r\n")))]);
    }
}
