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
    if frame.first() != Some(&b'-') {
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

/// What a transaction's batch (`MULTI`, the queued commands, `EXEC`) came back as.
#[derive(Debug)]
pub(super) enum TxAction<'a> {
    /// The client gets this frame (EXEC's array, or its null when a watched key changed, or
    /// an error that is the client's).
    Reply(&'a [u8]),
    /// The watch can no longer be proved (its slot moved, its connection broke): the client
    /// gets the null reply of an aborted transaction, as if a watched key had changed.
    Aborted,
    /// Nothing ran: replay the whole batch at `addr` (after `ASKING` when `ask`).
    Follow {
        slot: u16,
        addr: &'a str,
        ask: bool,
    },
    /// Nothing ran: replay after a backoff, within the retry budget.
    Retry {
        why: RetryReason,
        refresh: Option<RefreshReason>,
    },
    Fail(ProxyError),
}

/// Facts about a transaction batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct TxFacts {
    /// Sent on the connection that holds the client's WATCHes: it cannot move.
    pub watched: bool,
    /// Every queued command only reads: a lost EXEC may be replayed.
    pub readonly: bool,
    pub redirects: u8,
    pub max_redirects: u8,
}

/// Decides on a transaction from its replies in order (`MULTI`'s, one per queued command,
/// `EXEC`'s; pushes left out), or from its connection's failure. Redis discards a transaction
/// whose `EXEC` meets MOVED/ASK/TRYAGAIN/CLUSTERDOWN, or whose commands met them while queued
/// (`EXECABORT`): then nothing ran and the batch may be replayed on the slot's owner. Once
/// `EXEC` may have reached the node, it is never replayed (unless every command only reads).
///
/// `keyed[i]` says whether queued command `i` has keys. During a migration the source answers
/// ASK for keys it no longer has and QUEUED for those it still has: such a transaction cannot
/// run whole on either node yet, so it waits (as Redis makes a multi-key command wait with
/// TRYAGAIN) instead of creating the missing keys on the importing node.
pub(super) fn decide_exec<'a>(
    f: &TxFacts,
    keyed: &[bool],
    replies: &Result<Vec<&'a [u8]>, UpstreamError>,
    node: &Arc<str>,
) -> TxAction<'a> {
    let frames = match replies {
        Ok(frames) => frames,
        Err(UpstreamError::NotSent) if f.watched => return TxAction::Aborted,
        Err(cause) if cause.always_retryable() || f.readonly => {
            return TxAction::Retry {
                why: if cause.always_retryable() {
                    RetryReason::Unreachable
                } else {
                    RetryReason::ConnectionLost
                },
                refresh: Some(RefreshReason::NodeFailure),
            }
        }
        Err(cause) => {
            return TxAction::Fail(ProxyError::UnknownOutcome {
                node: node.clone(),
                cause: *cause,
            })
        }
    };
    let (Some(&multi), Some(&exec)) = (frames.first(), frames.last()) else {
        return TxAction::Fail(ProxyError::redis("ERR slotmux: empty transaction reply"));
    };
    if frames.len() < 2 {
        return TxAction::Fail(ProxyError::redis("ERR slotmux: short transaction reply"));
    }
    let queued = &frames[1..frames.len() - 1];
    if multi.first() == Some(&b'-') {
        // The node refused MULTI itself (a busy script, loading): the commands were not queued
        // but run one by one, or refused too.
        if queued.iter().all(|q| q.first() == Some(&b'-')) {
            return TxAction::Reply(multi);
        }
        return TxAction::Fail(ProxyError::redis(
            "ERR slotmux: the node refused MULTI; some commands of the transaction ran outside it",
        ));
    }
    if exec.first() != Some(&b'-') {
        return TxAction::Reply(exec);
    }
    // EXEC itself redirected, or EXECABORT because a command was redirected while queued.
    let cause = if exec.starts_with(b"-EXECABORT") {
        let is_keyed = |i: usize| keyed.get(i).copied().unwrap_or(true);
        let asked = queued
            .iter()
            .enumerate()
            .any(|(i, q)| is_keyed(i) && q.starts_with(b"-ASK "));
        let held = queued
            .iter()
            .enumerate()
            .any(|(i, q)| is_keyed(i) && q.starts_with(b"+QUEUED"));
        if asked && held {
            return if f.watched {
                TxAction::Aborted
            } else {
                TxAction::Retry {
                    why: RetryReason::TryAgain,
                    refresh: None,
                }
            };
        }
        queued
            .iter()
            .copied()
            .find(|q| classify(q).is_some())
            .unwrap_or(exec)
    } else {
        exec
    };
    let action = match classify(cause) {
        None => return TxAction::Reply(exec),
        Some(Redirect::Moved { slot, addr }) | Some(Redirect::Ask { slot, addr }) => {
            if f.redirects >= f.max_redirects {
                return TxAction::Reply(exec);
            }
            TxAction::Follow {
                slot,
                addr,
                ask: cause.starts_with(b"-ASK "),
            }
        }
        Some(Redirect::ClusterDown) => TxAction::Retry {
            why: RetryReason::ClusterDown,
            refresh: Some(RefreshReason::ClusterDown),
        },
        Some(Redirect::TryAgain) | Some(Redirect::Loading) => TxAction::Retry {
            why: RetryReason::TryAgain,
            refresh: None,
        },
    };
    if f.watched {
        return TxAction::Aborted;
    }
    action
}

/// The wait before retry number `attempt` (1, 2, ...): 10 ms doubling, at most 250 ms (the
/// refresh period while a master is down), so a command waiting out a failover goes out soon
/// after the topology shows the promoted replica.
pub(super) fn backoff(attempt: u8) -> Duration {
    Duration::from_millis((5u64 << attempt.min(7)).min(250))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(readonly: bool) -> Facts {
        Facts {
            readonly,
            redirects: 0,
            max_redirects: 16,
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
    fn noscript_reloads_once_and_other_replies_pass() {
        let r = ok(b"-NOSCRIPT No matching script. Please use EVAL.\r\n");
        assert!(matches!(
            decide(&facts(false), &r, &node()),
            Action::ReloadScript
        ));
        let mut once = facts(false);
        once.script_loaded = true;
        assert!(matches!(decide(&once, &r, &node()), Action::Finish));
        assert!(matches!(
            decide(&facts(false), &ok(b"+OK\r\n"), &node()),
            Action::Finish
        ));
        assert!(matches!(
            decide(&facts(false), &ok(b"-ERR wrong\r\n"), &node()),
            Action::Finish
        ));
    }

    fn tx(watched: bool, readonly: bool) -> TxFacts {
        TxFacts {
            watched,
            readonly,
            redirects: 0,
            max_redirects: 16,
        }
    }

    fn frames(f: &[&'static [u8]]) -> Result<Vec<&'static [u8]>, UpstreamError> {
        Ok(f.to_vec())
    }

    #[test]
    fn a_transaction_that_ran_gives_exec_reply() {
        let r = frames(&[b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n:1\r\n"]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Reply(b"*1\r\n:1\r\n")
        ));
        // A watched key changed: EXEC's null is the client's.
        let r = frames(&[b"+OK\r\n", b"+QUEUED\r\n", b"*-1\r\n"]);
        assert!(matches!(
            decide_exec(&tx(true, false), &[], &r, &node()),
            TxAction::Reply(b"*-1\r\n")
        ));
    }

    #[test]
    fn a_transaction_redirected_while_queued_is_replayed_unless_watched() {
        let r = frames(&[
            b"+OK\r\n",
            b"-MOVED 7 127.0.0.1:7002\r\n",
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ]);
        match decide_exec(&tx(false, false), &[], &r, &node()) {
            TxAction::Follow { slot, addr, ask } => {
                assert_eq!((slot, addr, ask), (7, "127.0.0.1:7002", false))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide_exec(&tx(true, false), &[], &r, &node()),
            TxAction::Aborted
        ));
        let r = frames(&[
            b"+OK\r\n",
            b"+QUEUED\r\n",
            b"-ASK 7 127.0.0.1:7002\r\n",
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ]);
        // A PING queued, then a command on a migrated key.
        assert!(matches!(
            decide_exec(&tx(false, false), &[false, true], &r, &node()),
            TxAction::Follow { ask: true, .. }
        ));
        // EXEC itself redirected (a slot moved between queueing and EXEC).
        let r = frames(&[b"+OK\r\n", b"+QUEUED\r\n", b"-MOVED 7 127.0.0.1:7002\r\n"]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Follow { .. }
        ));
        let r = frames(&[b"+OK\r\n", b"-TRYAGAIN x\r\n", b"-EXECABORT y\r\n"]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Retry {
                why: RetryReason::TryAgain,
                ..
            }
        ));
    }

    #[test]
    fn a_transaction_split_by_a_migration_waits() {
        let abort = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
        // INCR of a migrated key (ASK) and of a key still on the source (QUEUED).
        let r = frames(&[
            b"+OK\r\n",
            b"-ASK 7 127.0.0.1:7002\r\n",
            b"+QUEUED\r\n",
            abort,
        ]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[true, true], &r, &node()),
            TxAction::Retry {
                why: RetryReason::TryAgain,
                ..
            }
        ));
        // A keyless command (PING) queued beside it does not hold the transaction back.
        assert!(matches!(
            decide_exec(&tx(false, false), &[true, false], &r, &node()),
            TxAction::Follow { ask: true, .. }
        ));
        assert!(matches!(
            decide_exec(&tx(true, false), &[true, true], &r, &node()),
            TxAction::Aborted
        ));
    }

    #[test]
    fn other_queue_time_errors_abort_like_redis() {
        let abort = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
        let r = frames(&[b"+OK\r\n", b"-NOPERM no\r\n", abort]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Reply(x) if x == abort
        ));
    }

    #[test]
    fn a_lost_exec_is_never_replayed_unless_it_only_reads() {
        let lost = Err(UpstreamError::Lost);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &lost, &node()),
            TxAction::Fail(ProxyError::UnknownOutcome { .. })
        ));
        assert!(matches!(
            decide_exec(&tx(false, true), &[], &lost, &node()),
            TxAction::Retry {
                why: RetryReason::ConnectionLost,
                ..
            }
        ));
        let unsent = Err(UpstreamError::NotSent);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &unsent, &node()),
            TxAction::Retry {
                why: RetryReason::Unreachable,
                ..
            }
        ));
        assert!(matches!(
            decide_exec(&tx(true, false), &[], &unsent, &node()),
            TxAction::Aborted
        ));
        assert!(matches!(
            decide_exec(&tx(true, false), &[], &Err(UpstreamError::Timeout), &node()),
            TxAction::Fail(_)
        ));
    }

    #[test]
    fn a_refused_multi_is_reported() {
        let r = frames(&[
            b"-BUSY script\r\n",
            b"-BUSY script\r\n",
            b"-ERR EXEC without MULTI\r\n",
        ]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Reply(b"-BUSY script\r\n")
        ));
        let r = frames(&[
            b"-BUSY script\r\n",
            b"+OK\r\n",
            b"-ERR EXEC without MULTI\r\n",
        ]);
        assert!(matches!(
            decide_exec(&tx(false, false), &[], &r, &node()),
            TxAction::Fail(_)
        ));
    }

    #[test]
    fn backoff_doubles_to_a_quarter_second() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(5), Duration::from_millis(160));
        assert_eq!(backoff(6), Duration::from_millis(250));
        assert_eq!(backoff(255), Duration::from_millis(250));
    }
}
