//! The client request scanner on arbitrary bytes.
//!
//! Input: first byte = read plan (see `slotmux_fuzz::read_sizes`), the rest = what the client
//! sends. Checks:
//! - no panic (debug assertions are on: integer overflow panics too);
//! - resumable: the bytes fed whole, one byte at a time, and in plan-chosen reads give the same
//!   commands, the same final error or the same leftover bytes and partial state (an over-long
//!   header line may be "too big" or "invalid" depending on reads, as in Redis);
//! - a second `next` after `Ok(None)` with no new bytes is `Ok(None)` and changes nothing;
//! - every command has at least one argument, its ranges lie inside its frame, in order, each
//!   followed by CRLF, and the frame scanned again on its own gives the same command;
//! - differential against redis-protocol's RESP2 decoder: if it decodes the input as a non-empty
//!   array of bulk strings written canonically (as redis-cli or any client writes it), slotmux's
//!   first command is exactly those bytes with those arguments; if written non-canonically
//!   (`*01`, `$+3`, a bulk not followed by CRLF), slotmux refuses it, as Redis does; and any
//!   RESP command slotmux cuts off the front, redis-protocol decodes to the same arguments.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
use slotmux::resp::request::{Limits, ProtocolError, RequestScanner};
use slotmux_fuzz::{bytewise, canonical_end, oracle_safe, read_sizes, split_plan};

const LIMITS: Limits = Limits {
    max_bulk_len: 1 << 20,
    max_args: 1 << 16,
};

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// All bytes fed; these are left in the buffer, with this much of a command scanned.
    Pending {
        rest: Vec<u8>,
        partial: usize,
    },
    Error(ProtocolError),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Each command: its frame and its argument ranges.
    commands: Vec<(Bytes, Vec<(usize, usize)>)>,
    end: End,
}

fn check_command(frame: &Bytes, args: &[(usize, usize)]) {
    assert!(!args.is_empty(), "command with no arguments: {frame:?}");
    let mut prev = 0;
    for &(a, b) in args {
        assert!(
            prev <= a && a <= b && b + 2 <= frame.len(),
            "argument range {a}..{b} out of bounds or order in a frame of {} bytes: {frame:?} {args:?}",
            frame.len()
        );
        assert_eq!(&frame[b..b + 2], b"\r\n", "argument not followed by CRLF");
        prev = b + 2;
    }
    assert_eq!(
        prev,
        frame.len(),
        "bytes after the last argument in {frame:?}"
    );
    assert_eq!(frame[0], b'*', "a frame that is not RESP: {frame:?}");

    // The frame on its own (an inline command's frame is our RESP re-encoding of it).
    let mut s = RequestScanner::new(LIMITS);
    let mut buf = BytesMut::from(&frame[..]);
    let again = s
        .next(&mut buf)
        .expect("a returned frame does not scan again");
    assert_eq!(
        again.as_ref(),
        Some(frame),
        "a frame scans again differently"
    );
    assert_eq!(s.args(), args, "a frame's arguments scan again differently");
    assert!(buf.is_empty());
}

fn feed(data: &[u8], reads: &[usize]) -> Outcome {
    let mut s = RequestScanner::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut off = 0;
    for &n in reads {
        buf.extend_from_slice(&data[off..off + n]);
        off += n;
        loop {
            match s.next(&mut buf) {
                Ok(Some(frame)) => {
                    check_command(&frame, s.args());
                    commands.push((frame, s.args().to_vec()));
                }
                Ok(None) => {
                    let before = buf.len();
                    let partial = s.partial_len();
                    assert_eq!(s.next(&mut buf), Ok(None), "not Ok(None) twice in a row");
                    assert_eq!(buf.len(), before);
                    assert_eq!(s.partial_len(), partial);
                    assert!(partial <= buf.len());
                    break;
                }
                Err(e) => {
                    return Outcome {
                        commands,
                        end: End::Error(e),
                    }
                }
            }
        }
    }
    assert_eq!(off, data.len());
    let end = End::Pending {
        rest: buf.to_vec(),
        partial: s.partial_len(),
    };
    Outcome { commands, end }
}

/// The outcome with the one error difference that depends on how bytes arrive, as in Redis: a
/// header line over 64 KiB is "too big ... count" while its CRLF has not arrived yet, and
/// "invalid ... length" if it arrives in the same read (it cannot be a number either way).
fn normalized(o: &Outcome) -> (&[(Bytes, Vec<(usize, usize)>)], End) {
    let end = match &o.end {
        End::Error(ProtocolError::TooBigMbulkCount) => {
            End::Error(ProtocolError::InvalidMultibulkLength)
        }
        End::Error(ProtocolError::TooBigBulkCount) => End::Error(ProtocolError::InvalidBulkLength),
        End::Error(e) => End::Error(*e),
        End::Pending { rest, partial } => End::Pending {
            rest: rest.clone(),
            partial: *partial,
        },
    };
    (&o.commands, end)
}

fn args_of(c: &(Bytes, Vec<(usize, usize)>)) -> Vec<&[u8]> {
    c.1.iter().map(|&(a, b)| &c.0[a..b]).collect()
}

/// redis-protocol's reading of `data` as one request: the arguments and the length, if it is a
/// non-empty array of bulk strings.
fn oracle(data: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    match decode(data) {
        Ok(Some((OwnedFrame::Array(items), n))) if !items.is_empty() => {
            let mut args = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    OwnedFrame::BulkString(b) => args.push(b),
                    _ => return None,
                }
            }
            Some((args, n))
        }
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let (plan, data) = split_plan(input);

    let whole = feed(data, &[data.len()]);
    let one_by_one = feed(data, &bytewise(data.len()));
    assert_eq!(
        normalized(&whole),
        normalized(&one_by_one),
        "whole vs byte-by-byte reads differ"
    );
    let planned = feed(data, &read_sizes(plan, data.len()));
    assert_eq!(
        normalized(&whole),
        normalized(&planned),
        "whole vs planned reads differ"
    );

    if data.first() != Some(&b'*') || !oracle_safe(data) {
        return;
    }
    let ours_first = whole.commands.first();
    // Did slotmux's first command come straight off the front (not after a skipped `*0`)?
    let ours_at_front = ours_first.filter(|c| data.starts_with(&c.0[..]));
    match oracle(data) {
        Some((args, n)) => {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            if canonical_end(data) == Some(n) {
                let c = ours_at_front.unwrap_or_else(|| {
                    panic!(
                        "redis-protocol decodes a canonical request of {n} bytes that slotmux \
                         does not: {:?}",
                        whole.end
                    )
                });
                assert_eq!(c.0.len(), n, "request length differs from redis-protocol's");
                assert_eq!(args_of(c), args, "arguments differ from redis-protocol's");
            } else {
                // Written in a way Redis itself refuses: we must refuse it too, not reframe it.
                assert!(
                    whole.commands.is_empty() && matches!(whole.end, End::Error(_)),
                    "non-canonical request accepted: {:?}",
                    whole
                );
            }
        }
        None => {
            if let Some(c) = ours_at_front {
                panic!(
                    "slotmux cut a request redis-protocol does not decode as one: {:?} -> {:?}",
                    c.0,
                    decode(data).map(|o| o.map(|(f, n)| (f, n)))
                );
            }
        }
    }
});
