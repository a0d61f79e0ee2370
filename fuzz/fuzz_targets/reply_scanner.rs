//! The backend reply scanner on arbitrary bytes, differential against redis-protocol.
//!
//! Input: first byte = read plan (see `slotmux_fuzz::read_sizes`), the rest = what a backend
//! sends. Checks:
//! - no panic (debug assertions are on), whatever the nesting: the scanner is iterative;
//! - resumable: the bytes fed whole, one byte at a time, and in plan-chosen reads give the same
//!   reply lengths and the same final error or pending state; `scan` again with no new bytes
//!   after `Ok(None)` is `Ok(None)`;
//! - every complete reply goes through `classify` without panic, and a redirect from it has a
//!   slot below 16384 and an address inside the frame, without CRLF;
//! - the first reply's length equals `slotmux_fuzz::framing_end`, a second framer written
//!   from the documented rules, on every input (both say "none" together);
//! - differential, on inputs that nest at most 64 levels (redis-protocol recurses per level),
//!   against both `resp2::decode::decode` and `resp3::decode::complete::decode`:
//!   * oracle says complete with length n, and the reply is canonically encoded (see
//!     `slotmux_fuzz::canonical_end`): slotmux says `Some(n)`;
//!   * oracle says complete with length n, encoded non-canonically: slotmux says `Some(n)` or an
//!     error, never "incomplete" and never another length;
//!   * slotmux says `Some(n)`: the oracle does not say "incomplete" nor another length; it may
//!     say error (see README.md, "Deliberate differences").
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_protocol::error::RedisProtocolError;
use redis_protocol::resp3::types::{FrameKind, Resp3Frame};
use slotmux::resp::reply::{classify, Redirect, ReplyError, ReplyScanner};
use slotmux_fuzz::{
    bytewise, canonical_end, explain, framing_end, oracle_safe, read_sizes, split_plan,
};

#[derive(Debug, PartialEq, Eq)]
enum End {
    Pending,
    Error(ReplyError),
}

fn check_frame(frame: &[u8]) {
    let (Some(Redirect::Moved { slot, addr }) | Some(Redirect::Ask { slot, addr })) =
        classify(frame)
    else {
        return;
    };
    assert!(slot < 16384, "slot {slot} from {frame:?}");
    assert!(!addr.is_empty());
    assert!(!addr.contains("\r\n"), "address with CRLF from {frame:?}");
    let start = addr.as_ptr() as usize - frame.as_ptr() as usize;
    assert!(start + addr.len() <= frame.len());
}

fn feed(data: &[u8], reads: &[usize]) -> (Vec<usize>, End) {
    let mut s = ReplyScanner::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut lens = Vec::new();
    let mut off = 0;
    for &n in reads {
        buf.extend_from_slice(&data[off..off + n]);
        off += n;
        loop {
            match s.scan(&buf) {
                Ok(Some(len)) => {
                    assert!(len > 0 && len <= buf.len(), "length {len} of {}", buf.len());
                    check_frame(&buf[..len]);
                    lens.push(len);
                    buf.drain(..len);
                }
                Ok(None) => {
                    assert_eq!(s.scan(&buf), Ok(None), "not Ok(None) twice in a row");
                    break;
                }
                Err(e) => return (lens, End::Error(e)),
            }
        }
    }
    (lens, End::Pending)
}

/// An oracle's answer reduced to what is compared: complete with a length, incomplete, error.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Verdict {
    Complete(usize),
    Incomplete,
    /// With the oracle's explanation (only kept when explaining).
    Invalid(String),
}

fn verdict<F>(r: Result<Option<(F, usize)>, RedisProtocolError>) -> Verdict {
    match r {
        Ok(Some((_, n))) => Verdict::Complete(n),
        Ok(None) => Verdict::Incomplete,
        Err(e) if explain() => Verdict::Invalid(e.details().to_string()),
        Err(_) => Verdict::Invalid(String::new()),
    }
}

fn resp2(data: &[u8]) -> Verdict {
    verdict(redis_protocol::resp2::decode::decode(data))
}

fn resp3(data: &[u8]) -> Verdict {
    let r = redis_protocol::resp3::decode::complete::decode(data);
    if let Ok(Some((f, _))) = &r {
        // Not replies: redis-protocol's RESP3 decoder also reads a client's inline `HELLO`, and
        // returns the pieces of a streamed string one by one. Redis sends neither.
        if matches!(
            f.kind(),
            FrameKind::Hello | FrameKind::ChunkedString | FrameKind::EndStream
        ) {
            return Verdict::Invalid(format!("not a reply: {:?}", f.kind()));
        }
    }
    verdict(r)
}

/// A verbatim string shorter than its 4-byte `fmt:` prefix, which redis-protocol reads past
/// its end: `=1\r\na\r\n` is complete for slotmux and "incomplete" for the oracle. Redis never
/// sends one. True if `data` holds such a header anywhere.
fn has_short_verbatim(data: &[u8]) -> bool {
    data.windows(4)
        .any(|w| w[0] == b'=' && matches!(w[1], b'0'..=b'3') && &w[2..4] == b"\r\n")
}

fuzz_target!(|input: &[u8]| {
    let (plan, data) = split_plan(input);

    let whole = feed(data, &[data.len()]);
    let one_by_one = feed(data, &bytewise(data.len()));
    assert_eq!(whole, one_by_one, "whole vs byte-by-byte reads differ");
    let planned = feed(data, &read_sizes(plan, data.len()));
    assert_eq!(whole, planned, "whole vs planned reads differ");

    // Against a second framer written from the rules (iterative, so at any depth).
    let ours = ReplyScanner::new().scan(data);
    match ours {
        Ok(Some(n)) => assert_eq!(framing_end(data), Some(n), "framing differs"),
        _ => assert_eq!(framing_end(data), None, "slotmux says {ours:?}"),
    }

    if !oracle_safe(data) {
        return;
    }
    let canonical = canonical_end(data);
    for (name, theirs) in [("resp2", resp2(data)), ("resp3", resp3(data))] {
        match theirs {
            Verdict::Complete(n) => {
                if canonical == Some(n) {
                    assert_eq!(
                        ours,
                        Ok(Some(n)),
                        "{name} decodes a canonical reply of {n} bytes, slotmux does not"
                    );
                } else {
                    assert!(
                        matches!(ours, Err(_)) || ours == Ok(Some(n)),
                        "{name} decodes a (non-canonical) reply of {n} bytes, slotmux says {ours:?}"
                    );
                    if explain() && ours.is_err() {
                        eprintln!("DIFF stricter-noncanonical {name} {ours:?} {data:?}");
                    }
                }
            }
            Verdict::Incomplete => {
                if let Ok(Some(n)) = ours {
                    assert!(
                        has_short_verbatim(data),
                        "slotmux says complete at {n}, {name} says incomplete"
                    );
                    if explain() {
                        eprintln!("DIFF lenient-short-verbatim {name} {data:?}");
                    }
                }
            }
            Verdict::Invalid(why) => {
                if explain() {
                    if let Ok(Some(n)) = ours {
                        eprintln!("DIFF lenient {name} <<{why}>> {:?}", &data[..n]);
                    }
                }
            }
        }
    }
});
