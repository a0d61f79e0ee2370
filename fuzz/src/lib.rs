//! Helpers shared by slotmux's fuzz targets: how an input is cut into reads, when it is safe to
//! hand an input to the redis-protocol oracle, and a strict walk that tells whether a reply the
//! oracle accepted is also canonically encoded (the only form Redis sends).

/// Most aggregate headers an input may hold before it is given to redis-protocol, which
/// recurses once per nesting level and has no depth limit of its own.
pub const ORACLE_MAX_AGGREGATES: usize = 64;

/// Most reads per feeding: above it, reads get longer. Inputs up to 4 KiB (where almost all
/// fuzzing happens) can be fed one byte at a time; a big one (the 64 KiB inline seed) is cut
/// into at most 64 reads, or each run would cost a second in the inline path, whose line search
/// restarts at the front of the buffer on every read.
fn max_reads(len: usize) -> usize {
    if len <= 4096 {
        4096
    } else {
        64
    }
}

/// True when `data` cannot nest deeper than [`ORACLE_MAX_AGGREGATES`] levels: it holds at most
/// that many bytes that could start an aggregate (`*`, `~`, `>`, `%`, `|`), wherever they are.
pub fn oracle_safe(data: &[u8]) -> bool {
    data.iter()
        .filter(|&&b| matches!(b, b'*' | b'~' | b'>' | b'%' | b'|'))
        .count()
        <= ORACLE_MAX_AGGREGATES
}

/// True when the environment variable `SLOTMUX_FUZZ_EXPLAIN` is set: the differential targets
/// then print each tolerated difference from the oracle to stderr (`DIFF <kind> ...`), so that
/// running a binary over a corpus (`-runs=0`) shows which deliberate differences occur.
pub fn explain() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SLOTMUX_FUZZ_EXPLAIN").is_some())
}

/// Splits a fuzz input into its read plan (first byte) and the bytes on the wire (the rest).
pub fn split_plan(input: &[u8]) -> (u8, &[u8]) {
    match input.split_first() {
        Some((&plan, data)) => (plan, data),
        None => (0, &[]),
    }
}

/// Read sizes that add up to `len`, chosen by the plan byte: its low 3 bits pick the largest
/// read (1, 2, 3, 5, 8, 17, 64 or 512 bytes), its high 5 bits seed the sizes in between.
pub fn read_sizes(plan: u8, len: usize) -> Vec<usize> {
    const MAX: [usize; 8] = [1, 2, 3, 5, 8, 17, 64, 512];
    let max = MAX[(plan & 7) as usize];
    let floor = len.div_ceil(max_reads(len)).max(1);
    let mut x: u32 = (u32::from(plan >> 3) + 1).wrapping_mul(0x9E37_79B9);
    let mut out = Vec::new();
    let mut total = 0;
    while total < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = (1 + x as usize % max).max(floor).min(len - total);
        out.push(size);
        total += size;
    }
    out
}

/// One-byte reads (or the fewest bytes per read that keep a big input under `max_reads`).
pub fn bytewise(len: usize) -> Vec<usize> {
    let step = len.div_ceil(max_reads(len)).max(1);
    let mut out = vec![step; len / step];
    if len % step != 0 {
        out.push(len % step);
    }
    out
}

/// The canonical decimal form of an integer: what Redis writes (no `+`, no leading zeros,
/// no `-0`). Parsed with the standard library, independently of slotmux's own parser.
fn canonical_int(line: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(line).ok()?;
    let v: i64 = s.parse().ok()?;
    (v.to_string() == s).then_some(v)
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Walks the one reply at the front of `buf` with the grammar redis-protocol uses, and returns
/// its end only if it is complete and canonically encoded: every length and count is written
/// as its canonical decimal, and every blob payload is followed by CRLF (redis-protocol skips
/// those two bytes unchecked). A reply the oracle accepts and this walk returns `Some` for is
/// one Redis could send, so slotmux's scanner must accept it with the same length.
pub fn canonical_end(buf: &[u8]) -> Option<usize> {
    walk(buf, false)
}

/// The end of the one reply at the front of `buf` by the framing rules slotmux documents:
/// [`canonical_end`], plus `-1` ("null") accepted as the length of every length-prefixed type
/// (`$ ! = * ~ > % |`), not only `$` and `*`. Written separately from slotmux's scanner (and
/// iterative, so usable at any depth): the two must agree on every input.
pub fn framing_end(buf: &[u8]) -> Option<usize> {
    walk(buf, true)
}

fn walk(buf: &[u8], nulls_everywhere: bool) -> Option<usize> {
    let mut pos = 0usize;
    let mut owed: u64 = 1;
    while owed > 0 {
        let t = *buf.get(pos)?;
        let cr = find_crlf(buf, pos + 1)?;
        let line = &buf[pos + 1..cr];
        let next = cr + 2;
        owed -= 1;
        match t {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => pos = next,
            b'$' | b'!' | b'=' => {
                let n = canonical_int(line)?;
                if n == -1 && (t == b'$' || nulls_everywhere) {
                    pos = next;
                    continue;
                }
                let n = usize::try_from(n).ok()?;
                let end = next.checked_add(n)?.checked_add(2)?;
                if buf.get(end - 2..end)? != b"\r\n" {
                    return None;
                }
                pos = end;
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = canonical_int(line)?;
                pos = next;
                if n == -1 && (t == b'*' || nulls_everywhere) {
                    if t == b'|' {
                        owed += 1; // an attribute is still followed by its reply
                    }
                    continue;
                }
                let n = u64::try_from(n).ok()?;
                owed += match t {
                    b'%' => n.checked_mul(2)?,
                    b'|' => n.checked_mul(2)?.checked_add(1)?,
                    _ => n,
                };
            }
            _ => return None,
        }
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_input() {
        for plan in 0..=255u8 {
            for len in [0, 1, 7, 100, 5000] {
                let s = read_sizes(plan, len);
                assert_eq!(s.iter().sum::<usize>(), len);
                assert!(s.iter().all(|&n| n > 0));
            }
        }
        assert_eq!(bytewise(5).len(), 5);
        assert_eq!(bytewise(5000).iter().sum::<usize>(), 5000);
    }

    #[test]
    fn canonical() {
        assert_eq!(canonical_end(b"$3\r\nfoo\r\n"), Some(9));
        assert_eq!(canonical_end(b"$3\r\nfooXX"), None);
        assert_eq!(canonical_end(b"$03\r\nfoo\r\n"), None);
        assert_eq!(canonical_end(b"*-1\r\n"), Some(5));
        assert_eq!(canonical_end(b"|1\r\n+a\r\n+b\r\n:1\r\n"), Some(16));
        assert_eq!(canonical_end(b"%-1\r\n"), None);
        assert_eq!(framing_end(b"%-1\r\n"), Some(5));
        assert_eq!(framing_end(b"|-1\r\n:1\r\n"), Some(9));
    }
}
