//! What a request's reply (or its connection's failure) means for the client: give it the
//! reply, follow a redirect, retry later, load a script and resend, or answer an error.
//!
//! Owns: the rules, as a pure function of the request's facts and its reply, so they are
//! tested without sockets: above all, a command that may have changed data is never resent
//! once it may have reached a node.
//! Must not: do I/O, read clocks, or touch session state.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ProxyError;
use crate::metrics::{RefreshReason, RetryReason};
use crate::resp::reply::{classify, Redirect};
use crate::upstream::UpstreamError;

/// What `decide` needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    /// Only reads: safe to resend even if it may have run.
    pub readonly: bool,
    /// MOVED/ASK redirects followed so far, and the most allowed.
    pub redirects: u8,
    pub max_redirects: u8,
    /// On a transaction's pinned connection: Redis's replies there go to the client as they
    /// are (issue 17 changes this).
    pub pinned: bool,
    /// NOSCRIPT was already answered by loading the script once.
    pub script_loaded: bool,
}

/// What the client gets if the retry budget runs out.
#[derive(Debug)]
pub(super) enum Last {
    /// The node's own error reply.
    Reply,
    Proxy(ProxyError),
}

#[derive(Debug)]
pub(super) enum Action<'a> {
    /// The reply is the client's.
    Finish,
    /// Resend to `addr` (after `ASKING` when `ask`); a MOVED also teaches the slot table.
    Follow { slot: u16, addr: &'a str, ask: bool },
    /// Resend after a backoff, within the retry budget.
    Retry {
        why: RetryReason,
        refresh: Option<RefreshReason>,
        last: Last,
    },
    /// EVALSHA met NOSCRIPT: load the script on that node and resend, once.
    ReloadScript,
    /// Answer this error.
    Fail(ProxyError),
}

pub(super) fn decide<'a>(
    f: &Facts,
    reply: &'a Result<Bytes, UpstreamError>,
    node: &Arc<str>,
) -> Action<'a> {
    let frame = match reply {
        Ok(frame) => frame,
        Err(cause) if cause.always_retryable() || f.readonly => {
            return Action::Retry {
                why: if cause.always_retryable() {
                    RetryReason::Unreachable
                } else {
                    RetryReason::ConnectionLost
                },
                refresh: Some(RefreshReason::NodeFailure),
                last: Last::Proxy(ProxyError::NodeUnavailable {
                    node: node.clone(),
                    cause: *cause,
                }),
            }
        }
        Err(cause) => {
            return Action::Fail(ProxyError::UnknownOutcome {
                node: node.clone(),
                cause: *cause,
            })
        }
    };
    if frame.first() != Some(&b'-') || f.pinned {
        return Action::Finish;
    }
    match classify(frame) {
        Some(Redirect::Moved { slot, addr }) | Some(Redirect::Ask { slot, addr }) => {
            if f.redirects >= f.max_redirects {
                return Action::Finish;
            }
            Action::Follow {
                slot,
                addr,
                ask: frame.starts_with(b"-ASK "),
            }
        }
        Some(Redirect::ClusterDown) => Action::Retry {
            why: RetryReason::ClusterDown,
            refresh: Some(RefreshReason::ClusterDown),
            last: Last::Reply,
        },
        Some(Redirect::TryAgain) | Some(Redirect::Loading) => Action::Retry {
            why: RetryReason::TryAgain,
            refresh: None,
            last: Last::Reply,
        },
        None if frame.starts_with(b"-NOSCRIPT") && !f.script_loaded => Action::ReloadScript,
        None => Action::Finish,
    }
}

/// The wait before retry number `attempt` (1, 2, ...): 10 ms doubling, at most 500 ms.
pub(super) fn backoff(attempt: u8) -> Duration {
    Duration::from_millis((5u64 << attempt.min(7)).min(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(readonly: bool) -> Facts {
        Facts {
            readonly,
            redirects: 0,
            max_redirects: 16,
            pinned: false,
            script_loaded: false,
        }
    }

    fn node() -> Arc<str> {
        Arc::from("10.0.0.1:6379")
    }

    fn ok(s: &'static [u8]) -> Result<Bytes, UpstreamError> {
        Ok(Bytes::from_static(s))
    }

    #[test]
    fn a_write_that_may_have_run_is_never_resent() {
        for cause in [UpstreamError::Lost, UpstreamError::Timeout] {
            match decide(&facts(false), &Err(cause), &node()) {
                Action::Fail(ProxyError::UnknownOutcome { cause: c, .. }) => assert_eq!(c, cause),
                other => panic!("{cause:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_and_unsent_requests_are_retried() {
        let lost = decide(&facts(true), &Err(UpstreamError::Lost), &node());
        assert!(matches!(
            lost,
            Action::Retry {
                why: RetryReason::ConnectionLost,
                refresh: Some(RefreshReason::NodeFailure),
                ..
            }
        ));
        for readonly in [false, true] {
            let unsent = decide(&facts(readonly), &Err(UpstreamError::NotSent), &node());
            assert!(matches!(
                unsent,
                Action::Retry {
                    why: RetryReason::Unreachable,
                    ..
                }
            ));
        }
    }

    #[test]
    fn redirects() {
        let moved = ok(b"-MOVED 3999 127.0.0.1:6381\r\n");
        match decide(&facts(false), &moved, &node()) {
            Action::Follow { slot, addr, ask } => {
                assert_eq!((slot, addr, ask), (3999, "127.0.0.1:6381", false))
            }
            other => panic!("{other:?}"),
        }
        let ask = ok(b"-ASK 3999 127.0.0.1:6381\r\n");
        assert!(matches!(
            decide(&facts(false), &ask, &node()),
            Action::Follow { ask: true, .. }
        ));
        let mut spent = facts(false);
        spent.redirects = 16;
        assert!(matches!(decide(&spent, &moved, &node()), Action::Finish));
        // The largest cap still ends a MOVED loop (the count saturates instead of wrapping).
        spent.max_redirects = u8::MAX;
        spent.redirects = u8::MAX - 1;
        assert!(matches!(
            decide(&spent, &moved, &node()),
            Action::Follow { .. }
        ));
        spent.redirects = spent.redirects.saturating_add(1).saturating_add(1);
        assert!(matches!(decide(&spent, &moved, &node()), Action::Finish));
        // A bulk string that reads like a redirect is user data.
        let data = ok(b"$22\r\nMOVED 1 127.0.0.1:6381\r\n");
        assert!(matches!(
            decide(&facts(false), &data, &node()),
            Action::Finish
        ));
    }

    #[test]
    fn transient_errors_are_retried_with_their_reply_kept() {
        for (frame, why) in [
            (
                &b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"[..],
                RetryReason::TryAgain,
            ),
            (
                b"-LOADING Redis is loading the dataset in memory\r\n",
                RetryReason::TryAgain,
            ),
            (
                b"-CLUSTERDOWN The cluster is down\r\n",
                RetryReason::ClusterDown,
            ),
        ] {
            let r = Ok(Bytes::copy_from_slice(frame));
            match decide(&facts(false), &r, &node()) {
                Action::Retry {
                    why: w,
                    last: Last::Reply,
                    ..
                } => assert_eq!(w, why),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn noscript_reloads_once_and_pinned_replies_pass() {
        let r = ok(b"-NOSCRIPT No matching script. Please use EVAL.\r\n");
        assert!(matches!(
            decide(&facts(false), &r, &node()),
            Action::ReloadScript
        ));
        let mut once = facts(false);
        once.script_loaded = true;
        assert!(matches!(decide(&once, &r, &node()), Action::Finish));
        let mut pinned = facts(false);
        pinned.pinned = true;
        let moved = ok(b"-MOVED 1 127.0.0.1:6381\r\n");
        assert!(matches!(decide(&pinned, &moved, &node()), Action::Finish));
        assert!(matches!(
            decide(&facts(false), &ok(b"+OK\r\n"), &node()),
            Action::Finish
        ));
        assert!(matches!(
            decide(&facts(false), &ok(b"-ERR wrong\r\n"), &node()),
            Action::Finish
        ));
    }

    #[test]
    fn backoff_doubles_to_half_a_second() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(7), Duration::from_millis(500));
        assert_eq!(backoff(255), Duration::from_millis(500));
    }
}
