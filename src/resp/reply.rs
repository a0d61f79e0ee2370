//! The backend reply scanner: finds where one complete reply ends, and reads redirections.
//!
//! Owns: RESP2 and RESP3 reply framing and the `-MOVED`/`-ASK`/`-TRYAGAIN`/`-CLUSTERDOWN`
//! recognisers. The scanner keeps a single counter of elements still owed instead of a stack,
//! so a reply nested 10,000 (or a million) levels deep costs nothing extra and cannot overflow
//! anything. It is resumable across reads.
//! Must not: build reply trees, copy payloads, or treat user data as a redirection (only a
//! top-level error frame, starting with `-`, can be one).

use std::fmt;

use super::{find_crlf, parse_i64};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    UnknownType(u8),
    BadLength,
    /// A header line longer than any Redis ever sends.
    LineTooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::UnknownType(b) => write!(f, "unknown reply type byte 0x{b:02x}"),
            ReplyError::BadLength => f.write_str("invalid length in reply"),
            ReplyError::LineTooLong => f.write_str("reply header line too long"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Upper bound for a simple-string/error/number line before we call the stream broken.
const MAX_LINE: usize = 1 << 20;

/// Resumable boundary scanner for one reply at a time.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    pos: usize,
    /// Elements still owed before the reply is complete (0 = at the start of a reply).
    owed: u64,
    crlf_from: usize,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the complete reply at the front of `buf`, or `None` if more bytes are needed.
    /// A top-level RESP3 push (`>`) is a reply like any other here; the caller decides.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        if self.owed == 0 {
            self.pos = 0;
            self.owed = 1;
        }
        while self.owed > 0 {
            if self.pos >= buf.len() {
                return Ok(None);
            }
            let t = buf[self.pos];
            let from = self.crlf_from.max(self.pos + 1);
            let Some(cr) = find_crlf(buf, from) else {
                if buf.len() - self.pos > MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                self.crlf_from = buf.len().saturating_sub(1).max(self.pos + 1);
                return Ok(None);
            };
            let line = &buf[self.pos + 1..cr];
            let next = cr + 2;
            match t {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.crlf_from = 0;
                    self.pos = next;
                    self.owed -= 1;
                }
                b'$' | b'!' | b'=' => {
                    let n = parse_i64(line).ok_or(ReplyError::BadLength)?;
                    if n < -1 {
                        return Err(ReplyError::BadLength);
                    }
                    let end = if n == -1 { next } else { next + n as usize + 2 };
                    if buf.len() < end {
                        // Keep the header parsed position: resume at the header next time.
                        self.crlf_from = cr;
                        return Ok(None);
                    }
                    if n >= 0 && &buf[end - 2..end] != b"\r\n" {
                        return Err(ReplyError::BadLength);
                    }
                    self.crlf_from = 0;
                    self.pos = end;
                    self.owed -= 1;
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_i64(line).ok_or(ReplyError::BadLength)?;
                    if n < -1 || n > i32::MAX as i64 {
                        return Err(ReplyError::BadLength);
                    }
                    self.crlf_from = 0;
                    self.pos = next;
                    self.owed -= 1;
                    let n = n.max(0) as u64;
                    self.owed += match t {
                        b'%' => 2 * n,
                        // An attribute map is followed by the element it describes.
                        b'|' => 2 * n + 1,
                        _ => n,
                    };
                }
                other => return Err(ReplyError::UnknownType(other)),
            }
        }
        Ok(Some(self.pos))
    }
}

/// What a top-level error reply asks the proxy to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect<'a> {
    Moved {
        slot: u16,
        addr: &'a str,
    },
    Ask {
        slot: u16,
        addr: &'a str,
    },
    TryAgain,
    ClusterDown,
    /// The node is loading its dataset or is busy with a script: retryable, like TRYAGAIN.
    Loading,
}

/// Classifies a complete reply frame. Only a frame whose first byte is `-` can redirect.
pub fn classify(frame: &[u8]) -> Option<Redirect<'_>> {
    if frame.first() != Some(&b'-') {
        return None;
    }
    let body = frame[1..].strip_suffix(b"\r\n").unwrap_or(&frame[1..]);
    if let Some(rest) = body.strip_prefix(b"MOVED ") {
        let (slot, addr) = slot_and_addr(rest)?;
        return Some(Redirect::Moved { slot, addr });
    }
    if let Some(rest) = body.strip_prefix(b"ASK ") {
        let (slot, addr) = slot_and_addr(rest)?;
        return Some(Redirect::Ask { slot, addr });
    }
    if body.starts_with(b"TRYAGAIN") {
        return Some(Redirect::TryAgain);
    }
    if body.starts_with(b"CLUSTERDOWN") {
        return Some(Redirect::ClusterDown);
    }
    if body.starts_with(b"LOADING") {
        return Some(Redirect::Loading);
    }
    None
}

fn slot_and_addr(rest: &[u8]) -> Option<(u16, &str)> {
    let sp = rest.iter().position(|&b| b == b' ')?;
    let slot = parse_i64(&rest[..sp]).filter(|s| (0..16384).contains(s))? as u16;
    let addr = std::str::from_utf8(&rest[sp + 1..]).ok()?;
    if addr.is_empty() {
        return None;
    }
    Some((slot, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_chunks(input: &[u8], chunk: usize) -> Vec<usize> {
        let mut s = ReplyScanner::new();
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(n) = s.scan(&buf).unwrap() {
                lens.push(n);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty());
        lens
    }

    #[test]
    fn resp2_and_resp3_types() {
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":12\r\n",
            b"$3\r\nfoo\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n,1.5\r\n#t\r\n",
            b"_\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
            b"!5\r\nerror\r\n",
        ];
        let all: Vec<u8> = replies.concat();
        for chunk in [1, 2, 3, 7, all.len()] {
            let lens = scan_chunks(&all, chunk);
            let want: Vec<usize> = replies.iter().map(|r| r.len()).collect();
            assert_eq!(lens, want, "chunk {chunk}");
        }
    }

    #[test]
    fn deeply_nested_reply_is_flat_work() {
        let depth = 1_000_000;
        let mut r = b"*1\r\n".repeat(depth);
        r.extend_from_slice(b"*0\r\n");
        let mut s = ReplyScanner::new();
        assert_eq!(s.scan(&r).unwrap(), Some(r.len()));
    }

    #[test]
    fn bad_replies() {
        assert!(ReplyScanner::new().scan(b"?x\r\n").is_err());
        assert!(ReplyScanner::new().scan(b"$abc\r\n").is_err());
        assert!(ReplyScanner::new().scan(b"*-2\r\n").is_err());
        assert!(ReplyScanner::new().scan(b"$3\r\nfooXX").is_err());
    }

    #[test]
    fn redirects_only_from_error_frames() {
        assert_eq!(
            classify(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381"
            })
        );
        assert_eq!(
            classify(b"-ASK 1 10.0.0.1:7000\r\n"),
            Some(Redirect::Ask {
                slot: 1,
                addr: "10.0.0.1:7000"
            })
        );
        assert_eq!(
            classify(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            classify(b"-CLUSTERDOWN The cluster is down\r\n"),
            Some(Redirect::ClusterDown)
        );
        assert_eq!(classify(b"$22\r\nMOVED 3999 1.2.3.4:5\r\n"), None);
        assert_eq!(classify(b"+MOVED 1 a:1\r\n"), None);
        assert_eq!(classify(b"-MOVED 99999 a:1\r\n"), None);
        assert_eq!(classify(b"-ERR wrong\r\n"), None);
    }
}
