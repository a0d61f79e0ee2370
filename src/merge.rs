//! Merging the replies of a command that slotmux split across slots or sent to every master.
//!
//! Owns: how sub-replies become one reply, in the client's protocol, in the client's key order
//! (MGET), as a sum (DEL, EXISTS, DBSIZE...), a concatenation (KEYS), all-OK (MSET, FLUSHALL),
//! and so on. The first error among the parts is the reply, as a single Redis would have
//! answered with an error. Cold-ish path: plain code, a few allocations per split command.
//! Must not: do I/O or know where the parts went.

use bytes::{Bytes, BytesMut};

use crate::resp::reply::ReplyScanner;
use crate::resp::write;

/// How the parts of a split command are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Arrays of values; element `i` of the client's reply comes from a part and position
    /// given by the plan's order.
    Mget,
    /// Integers added up.
    Sum,
    /// Every part must be `+OK`.
    AllOk,
    /// Arrays concatenated.
    Concat,
    /// Every part must succeed; the reply is the first part's (SCRIPT LOAD's sha).
    First,
    /// RANDOMKEY: each master answered `DBSIZE` and `RANDOMKEY` (one batch); one master's key
    /// is picked with a chance in proportion to its key count, so an empty master never makes
    /// the answer nil while others hold keys.
    RandomKey,
    /// Arrays of 0/1 combined element-wise with OR (SCRIPT EXISTS: a master has the script,
    /// and slotmux loads it wherever an EVALSHA meets NOSCRIPT).
    OrArrays,
    /// INFO: the masters' sections merged with slotmux's own (see `info`).
    Info,
    /// SCRIPT KILL / FUNCTION KILL: `+OK` if one master killed something, `-NOTBUSY` if
    /// none was busy, else the first other error (`-UNKILLABLE`...).
    Kill,
    /// A transaction whose cluster-wide commands (FLUSHALL, CONFIG SET...) ran on its own
    /// master inside MULTI and then on the other nodes: part 0 is the EXEC reply, part `i`
    /// answers for element `order[i - 1].0` of it. An element becomes the first error another
    /// node gave for it.
    TxEcho,
}

/// Byte ranges of the elements of a top-level array reply (`*n` or RESP3 `~n`/`>n`).
pub fn elements(frame: &[u8]) -> Option<Vec<(usize, usize)>> {
    let cr = frame.iter().position(|&b| b == b'\r')?;
    if !matches!(frame.first(), Some(b'*' | b'~' | b'>')) {
        return None;
    }
    let n: i64 = std::str::from_utf8(&frame[1..cr]).ok()?.parse().ok()?;
    let mut pos = cr + 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = ReplyScanner::new().scan(&frame[pos..]).ok()??;
        out.push((pos, pos + len));
        pos += len;
    }
    Some(out)
}

/// The replies of one part's batch, in order.
fn replies_of(part: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < part.len() {
        match ReplyScanner::new().scan(&part[at..]) {
            Ok(Some(n)) => {
                out.push(part.slice(at..at + n));
                at += n;
            }
            _ => break,
        }
    }
    out
}

/// RANDOMKEY over the masters' `DBSIZE` + `RANDOMKEY` batches; `roll` picks the key.
fn random_key(parts: &[Bytes], roll: u64) -> Bytes {
    let answers: Vec<(u64, Bytes)> = parts
        .iter()
        .filter_map(|p| {
            let r = replies_of(p);
            let n = integer(r.first()?)?;
            Some((n.max(0) as u64, r.get(1)?.clone()))
        })
        .collect();
    if answers.len() != parts.len() {
        return protocol_error("RANDOMKEY");
    }
    let total: u64 = answers.iter().map(|a| a.0).sum();
    let mut pick = if total == 0 { 0 } else { roll % total };
    for (n, key) in &answers {
        if pick < *n && !is_null(key) {
            return key.clone();
        }
        pick = pick.saturating_sub(*n);
    }
    // Keys vanished between DBSIZE and RANDOMKEY: any key will do, else the node's nil.
    answers
        .iter()
        .map(|a| &a.1)
        .find(|k| !is_null(k))
        .or(answers.first().map(|a| &a.1))
        .cloned()
        .unwrap_or_default()
}

fn pseudo_random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn integer(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

fn is_null(frame: &[u8]) -> bool {
    frame == b"$-1\r\n" || frame == b"_\r\n" || frame == b"*-1\r\n"
}

fn protocol_error(what: &str) -> Bytes {
    let mut b = BytesMut::new();
    write::error(
        &mut b,
        &format!("ERR slotmux: unexpected reply while merging {what}"),
    );
    b.freeze()
}

/// The elements of every part, or `None` if one is not an array.
fn all_elements(parts: &[Bytes]) -> Option<Vec<Vec<(usize, usize)>>> {
    parts.iter().map(|p| elements(p)).collect()
}

/// See [`Merge::TxEcho`].
fn tx_echo(parts: &[Bytes], order: &[(u32, u32)]) -> Bytes {
    let Some(exec) = parts.first() else {
        return protocol_error("EXEC");
    };
    let Some(els) = elements(exec) else {
        return exec.clone();
    };
    let header_end = els.first().map_or(exec.len(), |e| e.0);
    let mut out = BytesMut::with_capacity(exec.len());
    out.extend_from_slice(&exec[..header_end]);
    for (i, &(a, b)) in els.iter().enumerate() {
        let failed = order
            .iter()
            .zip(&parts[1..])
            .find(|((idx, _), p)| *idx as usize == i && p.first() == Some(&b'-'));
        match failed {
            Some((_, err)) => out.extend_from_slice(err),
            None => out.extend_from_slice(&exec[a..b]),
        }
    }
    out.freeze()
}

/// Combines `parts` (one reply per sub-request, in plan order). `order` is MGET's mapping
/// from the client's key index to (part, element).
pub fn merge(kind: Merge, parts: &[Bytes], order: &[(u32, u32)]) -> Bytes {
    if kind == Merge::Kill {
        if let Some(ok) = parts.iter().find(|p| p.first() != Some(&b'-')) {
            return ok.clone();
        }
        return parts
            .iter()
            .find(|p| !p.starts_with(b"-NOTBUSY"))
            .or(parts.first())
            .cloned()
            .unwrap_or_default();
    }
    if kind == Merge::TxEcho {
        return tx_echo(parts, order);
    }
    if let Some(err) = parts.iter().find(|p| p.first() == Some(&b'-')) {
        return err.clone();
    }
    let mut out = BytesMut::new();
    match kind {
        Merge::Mget => {
            let Some(els) = all_elements(parts) else {
                return protocol_error("MGET");
            };
            write::array_header(&mut out, order.len());
            for &(part, idx) in order {
                let Some(&(a, b)) = els.get(part as usize).and_then(|e| e.get(idx as usize)) else {
                    return protocol_error("MGET");
                };
                out.extend_from_slice(&parts[part as usize][a..b]);
            }
        }
        Merge::Sum => {
            let mut sum = 0i64;
            for p in parts {
                match integer(p) {
                    Some(n) => sum += n,
                    None => return protocol_error("integers"),
                }
            }
            write::integer(&mut out, sum);
        }
        Merge::AllOk => {
            if parts.iter().all(|p| &p[..] == b"+OK\r\n") {
                write::ok(&mut out);
            } else {
                return parts
                    .iter()
                    .find(|p| &p[..] != b"+OK\r\n")
                    .cloned()
                    .unwrap_or_default();
            }
        }
        Merge::Concat => {
            let Some(els) = all_elements(parts) else {
                return protocol_error("arrays");
            };
            write::array_header(&mut out, els.iter().map(|e| e.len()).sum());
            for (p, e) in parts.iter().zip(&els) {
                for &(a, b) in e {
                    out.extend_from_slice(&p[a..b]);
                }
            }
        }
        Merge::First | Merge::Info | Merge::Kill | Merge::TxEcho => {
            return parts.first().cloned().unwrap_or_default()
        }
        Merge::RandomKey => return random_key(parts, pseudo_random()),
        Merge::OrArrays => {
            let Some(els) = all_elements(parts) else {
                return protocol_error("arrays");
            };
            let n = els.first().map(|e| e.len()).unwrap_or(0);
            write::array_header(&mut out, n);
            for i in 0..n {
                let any = parts
                    .iter()
                    .zip(&els)
                    .any(|(p, e)| e.get(i).and_then(|&(a, b)| integer(&p[a..b])).unwrap_or(0) == 1);
                write::integer(&mut out, any as i64);
            }
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_echo_reports_other_nodes_errors_in_place() {
        let exec = Bytes::from_static(b"*3\r\n+OK\r\n:1\r\n+OK\r\n");
        let parts = [
            exec.clone(),
            Bytes::from_static(b"+OK\r\n"),
            Bytes::from_static(b"+OK\r\n"),
            Bytes::from_static(b"-ERR other node\r\n"),
        ];
        let order = [(0, 0), (2, 0), (2, 0)];
        assert_eq!(
            &merge(Merge::TxEcho, &parts, &order)[..],
            b"*3\r\n+OK\r\n:1\r\n-ERR other node\r\n"
        );
        assert_eq!(merge(Merge::TxEcho, &parts[..3], &order[..2]), exec);
        let null = Bytes::from_static(b"*-1\r\n");
        assert_eq!(merge(Merge::TxEcho, std::slice::from_ref(&null), &[]), null);
    }

    #[test]
    fn randomkey_follows_key_counts() {
        let part = |n: &str, key: &str| Bytes::from(format!(":{n}\r\n{key}"));
        let parts = [
            part("0", "$-1\r\n"),
            part("3", "$1\r\na\r\n"),
            part("1", "$1\r\nb\r\n"),
        ];
        // Rolls 0..3 land on the master with 3 keys, roll 3 on the one with 1; never nil.
        for roll in 0..3 {
            assert_eq!(&random_key(&parts, roll)[..], b"$1\r\na\r\n");
        }
        assert_eq!(&random_key(&parts, 3)[..], b"$1\r\nb\r\n");
        assert_eq!(&random_key(&parts, 8)[..], b"$1\r\na\r\n");
        let empty = [part("0", "$-1\r\n"), part("0", "_\r\n")];
        assert_eq!(&random_key(&empty, 5)[..], b"$-1\r\n");
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn mget_in_client_order() {
        let parts = [b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$2\r\nbb\r\n")];
        let order = [(1, 0), (0, 0), (0, 1)];
        assert_eq!(
            &merge(Merge::Mget, &parts, &order)[..],
            b"*3\r\n$2\r\nbb\r\n$1\r\na\r\n$-1\r\n"
        );
    }

    #[test]
    fn sums_concats_and_errors() {
        assert_eq!(
            &merge(Merge::Sum, &[b(":2\r\n"), b(":3\r\n")], &[])[..],
            b":5\r\n"
        );
        assert_eq!(
            &merge(Merge::Sum, &[b(":2\r\n"), b("-ERR x\r\n")], &[])[..],
            b"-ERR x\r\n"
        );
        assert_eq!(
            &merge(
                Merge::Concat,
                &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n"), b("*1\r\n$1\r\nb\r\n")],
                &[]
            )[..],
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert_eq!(
            &merge(Merge::AllOk, &[b("+OK\r\n"), b("+OK\r\n")], &[])[..],
            b"+OK\r\n"
        );
        assert_eq!(
            &merge(
                Merge::OrArrays,
                &[b("*2\r\n:1\r\n:0\r\n"), b("*2\r\n:0\r\n:0\r\n")],
                &[]
            )[..],
            b"*2\r\n:1\r\n:0\r\n"
        );
        assert_eq!(
            &merge(
                Merge::RandomKey,
                &[b(":0\r\n$-1\r\n"), b(":1\r\n$1\r\nk\r\n")],
                &[]
            )[..],
            b"$1\r\nk\r\n"
        );
    }
}
