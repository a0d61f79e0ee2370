//! The client request scanner: cuts complete commands out of a client's input buffer.
//!
//! Owns: RESP multibulk requests and inline commands, their hard limits, and Redis's own
//! protocol-error texts. It is flat (no recursion: requests cannot nest) and resumable: after
//! `Ok(None)` it keeps its place, so a command arriving in many small reads costs O(n), not
//! O(n^2). A complete RESP command is split off the buffer as one `Bytes` (the client's own
//! bytes, forwarded unchanged) plus argument ranges into it.
//! Must not: allocate per request in the steady state (the argument range vector is reused),
//! interpret arguments, or pre-allocate from a declared length.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use super::{find_crlf, parse_i64};

/// Longest inline command or multibulk/bulk header line Redis accepts (PROTO_INLINE_MAX_SIZE).
pub const MAX_INLINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk argument (Redis's `proto-max-bulk-len`, default 512 MB).
    pub max_bulk_len: usize,
    /// Most arguments in one command.
    pub max_args: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: i32::MAX as usize,
        }
    }
}

/// A request the client got wrong. After one of these the connection must be closed, as Redis
/// does, because the byte stream can no longer be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    InvalidMultibulkLength,
    InvalidBulkLength,
    ExpectedDollar(u8),
    TooBigMbulkCount,
    TooBigBulkCount,
    TooBigInline,
    UnbalancedQuotes,
    /// The two bytes after a bulk payload were not CRLF. Redis skips them blindly; we refuse,
    /// because forwarding a stream we framed differently from the server would be unsafe.
    MissingBulkCrlf,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::InvalidMultibulkLength => {
                f.write_str("Protocol error: invalid multibulk length")
            }
            ProtocolError::InvalidBulkLength => f.write_str("Protocol error: invalid bulk length"),
            ProtocolError::ExpectedDollar(b) => {
                write!(f, "Protocol error: expected '$', got '{}'", *b as char)
            }
            ProtocolError::TooBigMbulkCount => {
                f.write_str("Protocol error: too big mbulk count string")
            }
            ProtocolError::TooBigBulkCount => {
                f.write_str("Protocol error: too big bulk count string")
            }
            ProtocolError::TooBigInline => f.write_str("Protocol error: too big inline request"),
            ProtocolError::UnbalancedQuotes => {
                f.write_str("Protocol error: unbalanced quotes in request")
            }
            ProtocolError::MissingBulkCrlf => {
                f.write_str("Protocol error: expected CRLF after bulk argument")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a command.
    Start,
    /// Expecting a `$len` header; `remaining` arguments still to come.
    Header,
    /// Inside a bulk payload of this many bytes.
    Bulk(usize),
}

/// Resumable scanner over one client's input buffer.
#[derive(Debug)]
pub struct RequestScanner {
    limits: Limits,
    state: State,
    /// Offset in the buffer of the next unread byte of the command being scanned.
    pos: usize,
    /// Where the search for the current header's CRLF may resume.
    crlf_from: usize,
    remaining: usize,
    args: Vec<(usize, usize)>,
}

impl RequestScanner {
    pub fn new(limits: Limits) -> Self {
        RequestScanner {
            limits,
            state: State::Start,
            pos: 0,
            crlf_from: 0,
            remaining: 0,
            args: Vec::with_capacity(8),
        }
    }

    /// Argument ranges (start, end) of the command last returned by [`next`], relative to the
    /// start of its frame. `args()[0]` is the command name.
    pub fn args(&self) -> &[(usize, usize)] {
        &self.args
    }

    /// Bytes of the current, still incomplete command held in the buffer.
    pub fn partial_len(&self) -> usize {
        self.pos
    }

    /// Cuts the next complete command off the front of `buf`. `Ok(None)` means more bytes are
    /// needed; the scanner remembers how far it got. Empty commands (`*0`, blank inline lines)
    /// are consumed silently, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            match self.state {
                State::Start => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    if buf[0] != b'*' {
                        match self.inline(buf)? {
                            Some(Some(frame)) => return Ok(Some(frame)),
                            Some(None) => continue, // blank line consumed
                            None => return Ok(None),
                        }
                    }
                    let Some(cr) = find_crlf(buf, self.crlf_from.max(1)) else {
                        if buf.len() > MAX_INLINE {
                            return Err(ProtocolError::TooBigMbulkCount);
                        }
                        self.crlf_from = buf.len().saturating_sub(1).max(1);
                        return Ok(None);
                    };
                    self.crlf_from = 0;
                    let n = parse_i64(&buf[1..cr]).ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if n > self.limits.max_args as i64 || n > i32::MAX as i64 {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    }
                    if n <= 0 {
                        let _ = buf.split_to(cr + 2);
                        continue;
                    }
                    self.args.clear();
                    self.remaining = n as usize;
                    self.pos = cr + 2;
                    self.state = State::Header;
                }
                State::Header => {
                    if self.pos >= buf.len() {
                        return Ok(None);
                    }
                    if buf[self.pos] != b'$' {
                        return Err(ProtocolError::ExpectedDollar(buf[self.pos]));
                    }
                    let from = self.crlf_from.max(self.pos + 1);
                    let Some(cr) = find_crlf(buf, from) else {
                        if buf.len() - self.pos > MAX_INLINE {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        self.crlf_from = buf.len().saturating_sub(1).max(self.pos + 1);
                        return Ok(None);
                    };
                    self.crlf_from = 0;
                    let n = parse_i64(&buf[self.pos + 1..cr])
                        .filter(|&n| n >= 0 && n as u64 <= self.limits.max_bulk_len as u64)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    self.pos = cr + 2;
                    self.state = State::Bulk(n as usize);
                }
                State::Bulk(n) => {
                    let end = self.pos + n;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(ProtocolError::MissingBulkCrlf);
                    }
                    self.args.push((self.pos, end));
                    self.pos = end + 2;
                    self.remaining -= 1;
                    if self.remaining > 0 {
                        self.state = State::Header;
                        continue;
                    }
                    let len = self.pos;
                    self.state = State::Start;
                    self.pos = 0;
                    return Ok(Some(buf.split_to(len).freeze()));
                }
            }
        }
    }

    /// Inline command: one line of space-separated, optionally quoted arguments. It is
    /// re-encoded as RESP (a cold path: only humans type these) so everything downstream
    /// sees one shape. Returns `Some(None)` for a consumed blank line.
    #[allow(clippy::option_option)]
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Bytes>>, ProtocolError> {
        // Resume the newline search where the last read left it: a long line arriving in
        // small reads stays linear.
        let from = self.crlf_from.min(buf.len());
        let Some(nl) = buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + from)
        else {
            if buf.len() > MAX_INLINE {
                return Err(ProtocolError::TooBigInline);
            }
            self.crlf_from = buf.len();
            return Ok(None);
        };
        self.crlf_from = 0;
        if nl > MAX_INLINE {
            return Err(ProtocolError::TooBigInline);
        }
        let line = buf.split_to(nl + 1);
        let mut text = &line[..nl];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
        }
        let words = split_args(text)?;
        if words.is_empty() {
            return Ok(Some(None));
        }
        if words.len() > self.limits.max_args {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        let mut out = BytesMut::with_capacity(text.len() + 16 * words.len() + 16);
        self.args.clear();
        out.put_u8(b'*');
        out.extend_from_slice(itoa(words.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for w in &words {
            out.put_u8(b'$');
            out.extend_from_slice(itoa(w.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
            let start = out.len();
            out.extend_from_slice(w);
            self.args.push((start, out.len()));
            out.extend_from_slice(b"\r\n");
        }
        Ok(Some(Some(out.freeze())))
    }
}

fn itoa(n: usize) -> String {
    n.to_string()
}

/// Splits an inline line like Redis's `sdssplitargs`: spaces separate, "double quotes" take
/// C-style escapes (\n \r \t \b \a \\ \" \xHH), 'single quotes' take only \', and a closing
/// quote must be followed by a space or the end of the line.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    // Redis splits the line as a C string: a NUL ends it.
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    // C's isspace(): space, \t, \n, \v, \f, \r.
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut out = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Ok(out);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b if is_space(b) => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        out.push(cur);
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], chunk: usize) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut s = RequestScanner::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(frame) = s.next(&mut buf)? {
                out.push(
                    s.args()
                        .iter()
                        .map(|&(a, b)| frame[a..b].to_vec())
                        .collect(),
                );
            }
        }
        assert!(buf.is_empty() || s.partial_len() > 0 || !buf.is_empty());
        Ok(out)
    }

    #[test]
    fn multibulk_in_any_chunking() {
        let input = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        for chunk in 1..input.len() + 1 {
            let cmds = scan_all(input, chunk).unwrap();
            assert_eq!(cmds.len(), 2, "chunk {chunk}");
            assert_eq!(cmds[0], vec![b"GET".to_vec(), b"foo".to_vec()]);
            assert_eq!(cmds[1], vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()]);
        }
    }

    #[test]
    fn frame_is_the_clients_bytes() {
        let mut s = RequestScanner::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nrest"[..]);
        let f = s.next(&mut buf).unwrap().unwrap();
        assert_eq!(&f[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn inline_commands() {
        let cmds = scan_all(b"PING\r\n\r\nset a \"b c\\x41\"\nget 'it\\'s'\r\n", 3).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0], vec![b"PING".to_vec()]);
        assert_eq!(
            cmds[1],
            vec![b"set".to_vec(), b"a".to_vec(), b"b cA".to_vec()]
        );
        assert_eq!(cmds[2], vec![b"get".to_vec(), b"it's".to_vec()]);
    }

    #[test]
    fn nul_ends_an_inline_line_like_redis() {
        // Found by the fuzzer: a NUL outside quotes used to loop for ever.
        assert_eq!(scan_all(b"\0\r\n", 1).unwrap(), Vec::<Vec<Vec<u8>>>::new());
        assert_eq!(
            scan_all(b"GET k\0junk\r\n", 2).unwrap(),
            vec![vec![b"GET".to_vec(), b"k".to_vec()]]
        );
        assert_eq!(
            scan_all(b"\x0bPING\x0c\r\n", 3).unwrap(),
            vec![vec![b"PING".to_vec()]]
        );
    }

    #[test]
    fn long_inline_line_in_small_reads_is_linear() {
        let mut line = vec![b'a'; 60 * 1024];
        line.extend_from_slice(b"\r\n");
        let cmds = scan_all(&line, 7).unwrap();
        assert_eq!(cmds.len(), 1);
    }

    #[test]
    fn errors_match_redis() {
        let e = |i: &[u8]| scan_all(i, 1 << 20).unwrap_err().to_string();
        assert_eq!(e(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(
            e(b"*1\r\n$999999999999\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(e(b"*1\r\n*1\r\n"), "Protocol error: expected '$', got '*'");
        assert_eq!(
            e(b"get \"a\r\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            e(b"get \"a\"b\r\n"),
            "Protocol error: unbalanced quotes in request"
        );
        let big = vec![b'a'; MAX_INLINE + 10];
        assert_eq!(e(&big), "Protocol error: too big inline request");
        let mut big = b"*".to_vec();
        big.extend(vec![b'1'; MAX_INLINE + 10]);
        assert_eq!(e(&big), "Protocol error: too big mbulk count string");
    }

    #[test]
    fn huge_declared_bulk_does_not_allocate() {
        let mut s = RequestScanner::new(Limits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$536870912\r\nabc"[..]);
        assert!(s.next(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 4096);
    }

    #[test]
    fn empty_multibulk_is_skipped() {
        let cmds = scan_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", 2).unwrap();
        assert_eq!(cmds, vec![vec![b"PING".to_vec()]]);
    }

    #[test]
    fn resumable_big_mset_is_linear() {
        // 200k arguments in 16 KiB reads: the scanner must not rescan from the start.
        let mut input = b"*200001\r\n$4\r\nMSET\r\n".to_vec();
        for i in 0..100_000 {
            let k = format!("k{i}");
            input.extend_from_slice(format!("${}\r\n{}\r\n$1\r\nv\r\n", k.len(), k).as_bytes());
        }
        let cmds = scan_all(&input, 16 * 1024).unwrap();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].len(), 200_001);
    }
}
