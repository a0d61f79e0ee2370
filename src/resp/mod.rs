//! RESP byte handling: the client request scanner, the backend reply scanner and the
//! encoder for slotmux's own replies.
//!
//! Owns: turning bytes into boundaries (never into owned trees) and our own reply bytes.
//! Must not: know about routing, the cluster or sockets.

pub mod reply;
pub mod request;
pub mod write;

/// Finds the first `\r\n` in `buf` at or after `from`; returns the index of the `\r`.
#[inline]
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i + 1..].iter().position(|&b| b == b'\n') {
            Some(off) => {
                let nl = i + 1 + off;
                if buf[nl - 1] == b'\r' {
                    return Some(nl - 1);
                }
                i = nl;
            }
            None => return None,
        }
    }
    None
}

/// Parses a signed decimal the way Redis's `string2ll` does: optional `-`, digits, no `+`,
/// no spaces, no leading zeros except "0" itself, and no overflow.
#[inline]
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    if neg {
        if v == 0 {
            return None;
        }
        Some(-v)
    } else {
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf() {
        assert_eq!(find_crlf(b"abc\r\n", 0), Some(3));
        assert_eq!(find_crlf(b"a\nb\r\n", 0), Some(3));
        assert_eq!(find_crlf(b"abc\r", 0), None);
        assert_eq!(find_crlf(b"\r\n\r\n", 1), Some(2));
    }

    #[test]
    fn ints() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"1 "), None);
        assert_eq!(parse_i64(b"99999999999999999999"), None);
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    }
}
