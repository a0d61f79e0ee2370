//! slotmux's own replies, encoded in the client's protocol version (RESP2 or RESP3).
//!
//! Owns: the bytes of every reply that slotmux makes itself (PING, HELLO, errors, merged
//! results). Must not: touch replies forwarded from Redis; those pass through unchanged.

use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version of a client session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn index(self) -> usize {
        match self {
            Proto::Resp2 => 0,
            Proto::Resp3 => 1,
        }
    }
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

fn put_int(out: &mut BytesMut, n: i64) {
    let mut tmp = [0u8; 24];
    let mut i = tmp.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        tmp[i] = b'-';
    }
    out.extend_from_slice(&tmp[i..]);
}

fn line(out: &mut BytesMut, prefix: u8, n: i64) {
    out.put_u8(prefix);
    put_int(out, n);
    out.extend_from_slice(b"\r\n");
}

pub fn simple(out: &mut BytesMut, s: &str) {
    out.put_u8(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn ok(out: &mut BytesMut) {
    out.extend_from_slice(b"+OK\r\n");
}

/// An error reply. `msg` starts with the error code (`ERR ...`, `NOAUTH ...`); CR and LF
/// inside it are replaced so the reply stays one line.
pub fn error(out: &mut BytesMut, msg: &str) {
    out.put_u8(b'-');
    for &b in msg.as_bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut BytesMut, n: i64) {
    line(out, b':', n);
}

pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    line(out, b'$', data.len() as i64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn null(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.extend_from_slice(b"$-1\r\n"),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// The null array (an aborted EXEC, a timed-out BLPOP): `*-1` in RESP2, `_` in RESP3.
pub fn null_array(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.extend_from_slice(b"*-1\r\n"),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

pub fn array_header(out: &mut BytesMut, n: usize) {
    line(out, b'*', n as i64);
}

/// A map header: `%n` in RESP3, a flat array of 2n in RESP2.
pub fn map_header(out: &mut BytesMut, proto: Proto, pairs: usize) {
    match proto {
        Proto::Resp2 => line(out, b'*', 2 * pairs as i64),
        Proto::Resp3 => line(out, b'%', pairs as i64),
    }
}

/// A verbatim text reply (INFO): `=` in RESP3, a bulk string in RESP2.
pub fn verbatim(out: &mut BytesMut, proto: Proto, text: &[u8]) {
    match proto {
        Proto::Resp2 => bulk(out, text),
        Proto::Resp3 => {
            line(out, b'=', text.len() as i64 + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A command as RESP (an array of bulk strings): split sub-commands, rewritten SCANs,
/// handshakes and probes. The one command encoder of slotmux.
pub fn command<'a, I>(out: &mut BytesMut, parts: I)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let parts = parts.into_iter();
    array_header(out, parts.len());
    for p in parts {
        bulk(out, p);
    }
}

/// [`command`] into a buffer of its own.
pub fn encode_command<'a, I>(parts: I) -> Bytes
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let mut out = BytesMut::new();
    command(&mut out, parts);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let mut b = BytesMut::new();
        integer(&mut b, -42);
        integer(&mut b, 0);
        bulk(&mut b, b"hi");
        null(&mut b, Proto::Resp2);
        null(&mut b, Proto::Resp3);
        map_header(&mut b, Proto::Resp3, 2);
        map_header(&mut b, Proto::Resp2, 2);
        error(&mut b, "ERR a\r\nb");
        command(&mut b, [&b"GET"[..], b"k"]);
        assert_eq!(
            &b[..],
            b":-42\r\n:0\r\n$2\r\nhi\r\n$-1\r\n_\r\n%2\r\n*4\r\n-ERR a  b\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }
}
