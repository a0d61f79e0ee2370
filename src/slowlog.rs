//! The slow log: commands that took longer than `--slowlog-threshold`, kept like Redis's
//! SLOWLOG (newest first, bounded length, arguments truncated the way Redis truncates them)
//! and logged one line each.
//!
//! Owns: the entries, the threshold and length (`CONFIG SET slowlog-log-slower-than` and
//! `slowlog-max-len` through slotmux change them, as on one Redis), and the SLOWLOG
//! GET/LEN/RESET replies. Only slow commands reach the lock.
//! Must not: be consulted for fast commands (the session compares with the threshold first).

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::resp::write;

/// Redis keeps at most 32 arguments and 128 bytes of each.
const MAX_ARGS: usize = 32;
const MAX_ARG_LEN: usize = 128;

struct Entry {
    id: u64,
    unix: u64,
    micros: u64,
    args: Vec<Bytes>,
    client: String,
    name: Bytes,
}

pub struct SlowLog {
    entries: Mutex<VecDeque<Entry>>,
    next_id: AtomicU64,
    max_len: AtomicUsize,
    /// Microseconds; negative: nothing is logged (Redis's `slowlog-log-slower-than`).
    threshold_us: AtomicI64,
    log_second: AtomicU64,
    logged_this_second: AtomicU64,
}

/// The arguments Redis would keep, each copied on its own (at most 128 bytes): an entry must
/// not pin the whole command, which may be hundreds of megabytes.
fn args_of(frame: &[u8]) -> Vec<Bytes> {
    let ranges = arg_ranges(frame);
    let total = ranges.len();
    let keep = if total > MAX_ARGS {
        MAX_ARGS - 1
    } else {
        MAX_ARGS
    };
    let mut out: Vec<Bytes> = ranges
        .iter()
        .take(keep)
        .map(|&(a, b)| {
            let arg = &frame[a..b];
            if arg.len() > MAX_ARG_LEN {
                let mut s = arg[..MAX_ARG_LEN].to_vec();
                s.extend_from_slice(
                    format!("... ({} more bytes)", arg.len() - MAX_ARG_LEN).as_bytes(),
                );
                Bytes::from(s)
            } else {
                Bytes::copy_from_slice(arg)
            }
        })
        .collect();
    if total > MAX_ARGS {
        out.push(Bytes::from(format!(
            "... ({} more arguments)",
            total - MAX_ARGS + 1
        )));
    }
    out
}

/// Hides passwords the way Redis 7 does before it logs a command: AUTH's arguments, HELLO's
/// AUTH user and password, MIGRATE's AUTH/AUTH2 credentials and the value of CONFIG SET
/// masterauth/masteruser/requirepass.
fn redact(args: &mut [Bytes]) {
    const HIDDEN: Bytes = Bytes::from_static(b"(redacted)");
    let is = |a: &Bytes, s: &str| a.eq_ignore_ascii_case(s.as_bytes());
    let Some(name) = args.first().cloned() else {
        return;
    };
    let hide = |from: usize, n: usize, args: &mut [Bytes]| {
        for a in args.iter_mut().skip(from).take(n) {
            *a = HIDDEN;
        }
    };
    if is(&name, "auth") {
        let n = args.len();
        hide(1, n, args);
    } else if is(&name, "hello") || is(&name, "migrate") {
        let mut i = 1;
        while i < args.len() {
            if is(&args[i], "auth") && !is(&name, "migrate") || is(&args[i], "auth2") {
                hide(i + 1, 2, args);
                i += 3;
            } else if is(&args[i], "auth") {
                hide(i + 1, 1, args);
                i += 2;
            } else {
                i += 1;
            }
        }
    } else if is(&name, "config") && args.get(1).is_some_and(|a| is(a, "set")) {
        let mut i = 2;
        while i + 1 < args.len() {
            if ["masterauth", "masteruser", "requirepass"]
                .iter()
                .any(|p| is(&args[i], p))
            {
                hide(i + 1, 1, args);
            }
            i += 2;
        }
    }
}

/// Argument ranges of a complete RESP multibulk (what the request scanner forwards).
fn arg_ranges(frame: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some(cr) = crate::resp::find_crlf(frame, 0) else {
        return out;
    };
    let n = crate::resp::parse_i64(frame.get(1..cr).unwrap_or_default()).unwrap_or(0);
    let mut pos = cr + 2;
    for _ in 0..n.max(0) {
        let Some(cr) = crate::resp::find_crlf(frame, pos) else {
            break;
        };
        let Some(len) = crate::resp::parse_i64(frame.get(pos + 1..cr).unwrap_or_default()) else {
            break;
        };
        let start = cr + 2;
        let end = start + len.max(0) as usize;
        if end > frame.len() {
            break;
        }
        out.push((start, end));
        pos = end + 2;
    }
    out
}

impl SlowLog {
    pub fn new(max_len: usize, threshold: Duration) -> Self {
        SlowLog {
            entries: Mutex::new(VecDeque::new()),
            log_second: AtomicU64::new(0),
            logged_this_second: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            max_len: AtomicUsize::new(max_len),
            threshold_us: AtomicI64::new(threshold.as_micros().min(i64::MAX as u128) as i64),
        }
    }

    /// Commands at least this slow are logged; `None`: none is.
    #[inline]
    pub fn threshold(&self) -> Option<Duration> {
        let us = self.threshold_us.load(Ordering::Relaxed);
        (us >= 0).then(|| Duration::from_micros(us as u64))
    }

    /// Applies a `CONFIG SET slowlog-log-slower-than` / `slowlog-max-len` seen by slotmux.
    pub fn configure(&self, param: &[u8], value: &[u8]) {
        let Some(v) = crate::resp::parse_i64(value) else {
            return;
        };
        if param.eq_ignore_ascii_case(b"slowlog-log-slower-than") {
            self.threshold_us.store(v, Ordering::Relaxed);
        } else if param.eq_ignore_ascii_case(b"slowlog-max-len") && v >= 0 {
            self.max_len.store(v as usize, Ordering::Relaxed);
            if let Ok(mut q) = self.entries.lock() {
                q.truncate(v as usize);
            }
        }
    }

    pub fn record(&self, took: Duration, frame: &[u8], peer: SocketAddr, name: Option<&Bytes>) {
        let mut args = args_of(frame);
        redact(&mut args);
        let micros = took.as_micros() as u64;
        let command = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .unwrap_or_default();
        // A deep pipeline makes many commands slow at once: at most 10 log lines a second.
        let sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.log_second.swap(sec, Ordering::Relaxed) != sec {
            self.logged_this_second.store(0, Ordering::Relaxed);
        }
        if self.logged_this_second.fetch_add(1, Ordering::Relaxed) < 10 {
            tracing::info!(command = %command, micros, client = %peer, "slow command");
        }
        let max_len = self.max_len.load(Ordering::Relaxed);
        if max_len == 0 {
            return;
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let e = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            unix,
            micros,
            args,
            client: peer.to_string(),
            name: name.cloned().unwrap_or_default(),
        };
        if let Ok(mut q) = self.entries.lock() {
            q.push_front(e);
            q.truncate(max_len);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&self) {
        if let Ok(mut q) = self.entries.lock() {
            q.clear();
        }
    }

    /// SLOWLOG GET [count] in Redis's format (count -1: all; default 10).
    pub fn get(&self, out: &mut BytesMut, count: Option<i64>) {
        let Ok(q) = self.entries.lock() else {
            return write::array_header(out, 0);
        };
        let n = match count {
            Some(c) if c < 0 => q.len(),
            Some(c) => (c as usize).min(q.len()),
            None => 10.min(q.len()),
        };
        write::array_header(out, n);
        for e in q.iter().take(n) {
            write::array_header(out, 6);
            write::integer(out, e.id as i64);
            write::integer(out, e.unix as i64);
            write::integer(out, e.micros as i64);
            write::array_header(out, e.args.len());
            for a in &e.args {
                write::bulk(out, a);
            }
            write::bulk(out, e.client.as_bytes());
            write::bulk(out, &e.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_first_and_truncates_like_redis() {
        let log = SlowLog::new(2, Duration::from_millis(10));
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let long = "x".repeat(200);
        for v in ["a", "b", &long] {
            let frame = Bytes::from(format!("*2\r\n$3\r\nGET\r\n${}\r\n{}\r\n", v.len(), v));
            log.record(Duration::from_millis(20), &frame, peer, None);
        }
        assert_eq!(log.len(), 2);
        let mut out = BytesMut::new();
        log.get(&mut out, Some(-1));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("*2\r\n*6\r\n:2\r\n"), "{text}");
        assert!(text.contains("... (72 more bytes)"));
        log.reset();
        assert!(log.is_empty());
    }

    #[test]
    fn passwords_are_redacted_like_redis() {
        let args = |s: &[&str]| -> Vec<Bytes> {
            s.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()
        };
        let cases: &[(&[&str], &[&str])] = &[
            (&["AUTH", "u", "p"], &["AUTH", "(redacted)", "(redacted)"]),
            (
                &["hello", "3", "AUTH", "u", "p", "SETNAME", "n"],
                &[
                    "hello",
                    "3",
                    "AUTH",
                    "(redacted)",
                    "(redacted)",
                    "SETNAME",
                    "n",
                ],
            ),
            (
                &["migrate", "h", "1", "", "0", "5", "AUTH", "p", "KEYS", "a"],
                &[
                    "migrate",
                    "h",
                    "1",
                    "",
                    "0",
                    "5",
                    "AUTH",
                    "(redacted)",
                    "KEYS",
                    "a",
                ],
            ),
            (
                &["MIGRATE", "h", "1", "k", "0", "5", "AUTH2", "u", "p"],
                &[
                    "MIGRATE",
                    "h",
                    "1",
                    "k",
                    "0",
                    "5",
                    "AUTH2",
                    "(redacted)",
                    "(redacted)",
                ],
            ),
            (
                &["config", "set", "maxmemory", "1", "masterauth", "s"],
                &[
                    "config",
                    "set",
                    "maxmemory",
                    "1",
                    "masterauth",
                    "(redacted)",
                ],
            ),
            (&["GET", "auth"], &["GET", "auth"]),
        ];
        for (input, want) in cases {
            let mut a = args(input);
            redact(&mut a);
            assert_eq!(a, args(want), "{input:?}");
        }
    }

    #[test]
    fn config_set_changes_threshold_and_length() {
        let log = SlowLog::new(128, Duration::from_millis(10));
        assert_eq!(log.threshold(), Some(Duration::from_millis(10)));
        log.configure(b"SLOWLOG-LOG-SLOWER-THAN", b"0");
        assert_eq!(log.threshold(), Some(Duration::ZERO));
        log.configure(b"slowlog-log-slower-than", b"-1");
        assert_eq!(log.threshold(), None);
        log.configure(b"slowlog-log-slower-than", b"bla");
        assert_eq!(log.threshold(), None);
        log.configure(b"slowlog-max-len", b"1");
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..3 {
            log.record(
                Duration::from_millis(20),
                b"*1\r\n$4\r\nPING\r\n",
                peer,
                None,
            );
        }
        assert_eq!(log.len(), 1);
    }
}
