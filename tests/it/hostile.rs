//! Hostile and broken clients (issue 4, item 4): huge declared sizes, a million arguments, a
//! client that goes silent mid-command, a connection flood past `maxclients`, a pipelining
//! client that never reads, a subscriber that never reads, malformed inline input.
//!
//! Every test ends by checking that slotmux still serves a well-behaved client. Nothing here
//! asserts a duration: waits use `wait_until` with generous limits (the CI machine is small and
//! noisy). Memory is the resident size (VmRSS) of this test process, which includes the
//! in-process slotmux, or the allocator's bytes in use (`mallinfo2`) where memory that was
//! freed must show as freed; the tests that measure it take `heavy()` so they do not measure
//! one another.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cluster;
use crate::support::{self, encode, read_reply_string, wait_until, Proxy};

const MIB: u64 = 1 << 20;

/// Serializes the memory-hungry tests of this module, so one's allocations do not show up in
/// another's measurement (other modules' tests are small).
fn heavy() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A field of /proc/self/status in bytes (VmRSS, VmSize, VmPeak are given in kB).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn rss() -> u64 {
    status_bytes("VmRSS")
}

/// Bytes the allocator has handed out and not had back (all arenas, mmapped chunks included):
/// unlike RSS, it drops when memory is freed.
fn heap_in_use() -> u64 {
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// A well-behaved client on a fresh connection gets served: PING, SET, GET.
fn assert_serves(p: &Proxy, tag: &str) {
    let mut con = p.conn();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let key = format!("hostile:alive:{tag}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(tag)
        .query(&mut con)
        .unwrap();
    let v: String = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert_eq!(v, tag);
}

/// Reads until the peer closes. Returns what was read and whether the close was a reset
/// rather than a FIN. Panics if the connection is still open after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "connection still open after {limit:?}; read so far: {:?}",
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                )
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Sends `bytes` on a fresh connection to `addr` and returns (reply, closed-by-peer).
fn send_and_collect(addr: impl std::net::ToSocketAddrs, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    let (out, reset) = read_until_closed(&mut s, Duration::from_secs(30));
    (String::from_utf8_lossy(&out).into_owned(), reset)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

// 1. ------------------------------------------------------------------------------------------

#[test]
fn declared_4gb_bulk_is_rejected_without_allocating() {
    let _g = heavy();
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let bad = b"*2\r\n$3\r\nGET\r\n$4294967296\r\n";

    // What Redis itself says to the same bytes.
    let (redis_reply, _) = send_and_collect(("127.0.0.1", c.ports[0]), bad);
    assert_eq!(redis_reply, "-ERR Protocol error: invalid bulk length\r\n");

    let rss0 = rss();
    let size0 = status_bytes("VmSize");
    let peak0 = status_bytes("VmPeak");
    for _ in 0..20 {
        let (reply, reset) = send_and_collect(p.addr, bad);
        assert_eq!(reply, redis_reply, "slotmux answers like Redis");
        assert!(!reset, "closed with a FIN after the reply, not reset");
    }
    // The same with the 4 GB bulk's first bytes following the header: still rejected.
    let mut s = p.raw();
    let mut req = bad.to_vec();
    req.extend(vec![b'x'; 256 * 1024]);
    let _ = s.write_all(&req); // slotmux may close before it has read it all
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(30));
    assert!(
        out.starts_with(b"-ERR Protocol error: invalid bulk length\r\n"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // A declared multibulk of two billion arguments is legal RESP (Redis waits for them);
    // slotmux must not size anything by the declared count either (16 bytes per argument
    // would be 32 GB).
    let mut huge_count = p.raw();
    huge_count
        .write_all(b"*2000000000\r\n$3\r\nDEL\r\n$3\r\nabc\r\n")
        .unwrap();
    assert_serves(&p, "after-2g-args-header");
    huge_count
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    match huge_count.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected slotmux to wait for the rest, like Redis: {other:?}"),
    }
    drop(huge_count);

    let rss1 = rss();
    let peak1 = status_bytes("VmPeak");
    eprintln!(
        "4GB bulk: VmRSS {:.1} -> {:.1} MiB, VmSize before {:.1} MiB, VmPeak {:.1} -> {:.1} MiB",
        mib(rss0),
        mib(rss1),
        mib(size0),
        mib(peak0),
        mib(peak1)
    );
    assert!(
        rss1 < rss0 + 64 * MIB,
        "RSS grew from {:.1} to {:.1} MiB",
        mib(rss0),
        mib(rss1)
    );
    // Resident memory would not show an untouched reservation; the peak of the virtual size
    // would. A 4 GiB buffer reserved at any point puts the peak at least ~4 GiB above the
    // virtual size we started from (unless the peak was already higher: then this cannot tell).
    assert!(
        peak1 <= peak0.max(size0 + 3 * 1024 * MIB),
        "VmPeak jumped from {:.1} to {:.1} MiB (VmSize was {:.1} MiB): a huge buffer was reserved",
        mib(peak0),
        mib(peak1),
        mib(size0)
    );
    assert_serves(&p, "after-4gb-bulk");
}

// 2. ------------------------------------------------------------------------------------------

/// `cluster_current_epoch` of the cluster: a failover bumps it. A command that keeps a master
/// busy for longer than `cluster-node-timeout` (2 s here) can get it failed over, which would
/// lose writes that had not reached its replica: that is Redis Cluster, not slotmux, so the
/// test says so when it happens.
fn cluster_epoch() -> String {
    let c = cluster();
    support::raw_cmd(c.live_ports()[0], &["CLUSTER", "INFO"])
        .lines()
        .find(|l| l.starts_with("cluster_current_epoch:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Writes `req` in one `write_all` from a thread while this thread reads the reply, which
/// must be exactly `want`; then checks the connection is still in step (PING).
fn big_command(p: &Proxy, what: &str, req: Vec<u8>, want: &[u8]) {
    let epoch = cluster_epoch();
    let len = req.len();
    let rss0 = rss();
    let t = Instant::now();
    let mut s = p.raw();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req));
    let mut got = vec![0u8; want.len()];
    let read = s.read_exact(&mut got);
    writer.join().unwrap().expect("write the whole command");
    let epoch_after = cluster_epoch();
    if let Err(e) = read {
        panic!("{what}: reading the reply: {e} (cluster epoch {epoch} -> {epoch_after})");
    }
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        let show = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
        };
        panic!(
            "{what}: reply differs at byte {at}: got {:?}, want {:?} (cluster epoch {epoch} -> {epoch_after})",
            show(&got),
            show(want)
        );
    }
    s.write_all(&encode(&["PING"])).unwrap();
    assert_eq!(read_reply_string(&mut s), "+PONG\r\n");
    eprintln!(
        "  {what}: {:.1} MiB request, {:.1} MiB reply, {:.1?}; VmRSS {:.1} -> {:.1} MiB",
        mib(len as u64),
        mib(want.len() as u64),
        t.elapsed(),
        mib(rss0),
        mib(rss())
    );
}

/// The reply to MGET of `n` keys of which the first `present` hold `v<i>`.
fn mget_reply(n: usize, present: usize) -> Vec<u8> {
    let mut out = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        if i < present {
            let v = format!("v{i}");
            out.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
        } else {
            out.extend_from_slice(b"$-1\r\n");
        }
    }
    out
}

/// `name key0 key1 ... key<n-1>` with keys `<prefix><i>`, RESP-encoded.
fn keys_command(name: &str, prefix: &str, n: usize) -> Vec<u8> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut args: Vec<&str> = Vec::with_capacity(n + 1);
    args.push(name);
    args.extend(keys.iter().map(|k| k.as_str()));
    encode(&args)
}

#[test]
fn one_command_with_a_million_arguments() {
    let _g = heavy();
    // Parsing a million arguments takes Redis a moment; keep the reply timeout out of the way.
    // The slow log is off so that what slotmux retains afterwards is measured apart from it
    // (see `slow_log_does_not_pin_big_commands`).
    let p = Proxy::with_config(cluster(), |c| {
        c.backend_timeout = Duration::from_secs(60);
        c.slowlog_max_len = 0;
    });
    let heap0 = heap_in_use();
    const N: usize = 1_000_000;
    const PRESENT: usize = 1000;
    let t0 = Instant::now();
    let rss0 = rss();
    // Keys the commands find. The million-argument commands are reads and deletes of mostly
    // missing keys: each keeps a master busy for well under cluster-node-timeout even on a
    // loaded machine (an MSET of 500k pairs did not always, and got its master failed over).
    let mut con = p.conn();
    for prefix in ["{hm}k", "hm:spread:"] {
        let mut pipe = redis::pipe();
        for i in 0..PRESENT {
            pipe.cmd("SET")
                .arg(format!("{prefix}{i}"))
                .arg(format!("v{i}"))
                .ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
    }
    drop(con);

    // One slot (a hashtag): forwarded whole.
    big_command(
        &p,
        "MGET of 1M keys, one slot",
        keys_command("MGET", "{hm}k", N),
        &mget_reply(N, PRESENT),
    );
    big_command(
        &p,
        "DEL of 1M keys, one slot",
        keys_command("DEL", "{hm}k", N),
        b":1000\r\n",
    );
    // All slots: split into 16384 sub-commands, replies merged in the client's order.
    big_command(
        &p,
        "MGET of 1M keys, all slots",
        keys_command("MGET", "hm:spread:", N),
        &mget_reply(N, PRESENT),
    );
    big_command(
        &p,
        "DEL of 1M keys, all slots",
        keys_command("DEL", "hm:spread:", N),
        b":1000\r\n",
    );
    let mut con = p.conn();
    let n: i64 = redis::cmd("EXISTS")
        .arg("{hm}k0")
        .arg("hm:spread:999")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 0);
    drop(con);
    eprintln!(
        "1M args: 4 commands in {:.1?}, VmRSS {:.1} -> {:.1} MiB",
        t0.elapsed(),
        mib(rss0),
        mib(rss())
    );
    assert_serves(&p, "after-million-args");
    wait_until("the clients to go", Duration::from_secs(30), || {
        p.shared.clients.load(Ordering::Acquire) == 0
    });
    let heap1 = heap_in_use();
    drop(p);
    eprintln!(
        "1M args: heap in use {:.1} MiB with slotmux idle before, {:.1} MiB with slotmux idle \
         after (no client left), {:.1} MiB after it shut down",
        mib(heap0),
        mib(heap1),
        mib(heap_in_use())
    );
}

/// Every command is logged as slow here. Redis keeps 32 arguments of 128 bytes at most per
/// slow-log entry; the slow log must not keep the whole command alive (a client sending big
/// commands would pin `slowlog-max-len` times their size).
#[test]
fn slow_log_does_not_pin_big_commands() {
    let _g = heavy();
    let p = Proxy::with_config(cluster(), |c| c.slowlog_threshold = Duration::ZERO);
    let mut con = p.conn();
    let big = "x".repeat(4 << 20);
    for i in 0..16 {
        // A short argument after the big one: a slice of the frame, if it is kept as one.
        let _: () = redis::cmd("SET")
            .arg("{hostile}slowlog")
            .arg(&big)
            .arg("KEEPTTL")
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{{hostile}}slowlog{i}"))
            .arg("small")
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg("{hostile}slowlog")
        .query(&mut con)
        .unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert!(entries.len() >= 32, "{} slow-log entries", entries.len());
    let held = heap_in_use();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
    let after = heap_in_use();
    let freed = held.saturating_sub(after);
    eprintln!(
        "slow log of 16 SETs of 4 MiB: heap in use {:.1} MiB, {:.1} MiB after SLOWLOG RESET (freed {:.1} MiB)",
        mib(held),
        mib(after),
        mib(freed)
    );
    assert!(
        freed < 16 * MIB,
        "SLOWLOG RESET freed {:.1} MiB: the slow log held on to whole commands",
        mib(freed)
    );
    drop(con);
    assert_serves(&p, "after-slowlog");
}

// 3. ------------------------------------------------------------------------------------------

#[test]
fn half_a_command_then_silence_is_closed_by_the_idle_timeout() {
    let p = Proxy::with_config(cluster(), |c| c.idle_timeout = Duration::from_millis(300));
    for half in [
        &b"*2\r\n$3\r\nGET\r\n$5\r\nab"[..],
        b"*3\r\n$3\r\nSET\r\n",
        b"*2\r\n$3\r\nGE",
        b"GET half-an-inline-comm",
    ] {
        let mut s = p.raw();
        s.write_all(half).unwrap();
        wait_until("the session to start", Duration::from_secs(30), || {
            p.shared.clients.load(Ordering::Acquire) >= 1
        });
        // Closed by slotmux: EOF, nothing sent (Redis closes idle clients silently too).
        let (out, _) = read_until_closed(&mut s, Duration::from_secs(60));
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
        wait_until("the session to end", Duration::from_secs(30), || {
            p.shared.clients.load(Ordering::Acquire) == 0
        });
    }
    // A client that keeps talking is not idle.
    let mut s = p.raw();
    for _ in 0..5 {
        s.write_all(&encode(&["PING"])).unwrap();
        assert_eq!(read_reply_string(&mut s), "+PONG\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    assert_serves(&p, "after-idle");
}

/// Redis counts idleness from the client's last interaction, replies included
/// (`c->lastinteraction` is updated when a reply is written), and never closes a client
/// blocked in a command. So a client whose command took longer than the timeout must be able
/// to send its next command right after the reply.
#[test]
fn idle_timeout_does_not_close_a_client_right_after_a_slow_reply() {
    let p = Proxy::with_config(cluster(), |c| c.idle_timeout = Duration::from_secs(1));
    let mut s = p.raw();
    // Blocks for two seconds (> the idle timeout) and times out with a nil. The next command
    // follows the reply at once (well within the 1 s timeout, even on a busy machine).
    s.write_all(&encode(&["BLPOP", "hostile:idle:nolist", "2"]))
        .unwrap();
    assert_eq!(read_reply_string(&mut s), "*-1\r\n");
    s.write_all(&encode(&["PING"])).unwrap();
    let (reply, closed) = {
        let mut b = Vec::new();
        let mut chunk = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break (b, true),
                Ok(n) => {
                    b.extend_from_slice(&chunk[..n]);
                    if b.ends_with(b"\r\n") {
                        break (b, false);
                    }
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break (b, true),
                Err(e) => panic!("read: {e}"),
            }
        }
    };
    assert!(
        !closed && reply == b"+PONG\r\n",
        "slotmux closed the client right after the reply to its slow command \
         (read {:?}, closed: {closed})",
        String::from_utf8_lossy(&reply)
    );
    // Idle from now on: closed, silently.
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(60));
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert_serves(&p, "after-slow-reply");
}

// 4. ------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_connections_at_once_past_maxclients() {
    let _g = heavy();
    const MAX: usize = 50;
    const REJECT: &[u8] = b"-ERR max number of clients reached\r\n";
    let nofile = raise_nofile();
    // Our end of every connection is an fd of this process, and so is slotmux's end while it
    // writes the refusal; keep ~1000 fds for the harness and the other tests running alongside.
    // The hard limit here is 20000, so this is 10,000; on a machine with a lower limit it is as
    // many as that allows.
    let n = 10_000usize.min((nofile as usize).saturating_sub(1000));
    assert!(
        n > 1000,
        "RLIMIT_NOFILE {nofile} leaves too few fds for this test"
    );
    let p = Proxy::with_config(cluster(), |c| c.maxclients = MAX);
    let rss0 = rss();

    // Open them all at once from 8 threads, and keep them open.
    let threads = 8;
    let addr = p.addr;
    let deadline = Instant::now() + Duration::from_secs(180);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let count = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || {
                let mut v = Vec::with_capacity(count);
                while v.len() < count {
                    match TcpStream::connect(addr) {
                        Ok(s) => v.push(s),
                        // Out of fds for a moment (slotmux's ends of refused connections not
                        // closed yet) or the accept queue overflowed: try again.
                        Err(e) => {
                            assert!(Instant::now() < deadline, "connect: {e}");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                v
            })
        })
        .collect();
    let mut conns: Vec<TcpStream> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(conns.len(), n);
    wait_until(
        "slotmux to accept every connection",
        Duration::from_secs(180),
        || p.shared.stats.accepted.load(Ordering::Acquire) as usize == n,
    );
    let rss_open = rss();

    // Each refused connection gets exactly Redis's error, then EOF; the others get nothing.
    for s in &conns {
        s.set_nonblocking(true).unwrap();
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut state: Vec<u8> = vec![0; n]; // 0 open, 1 refused
    let mut refused = 0usize;
    let mut buf = [0u8; 256];
    wait_until(
        "every refused connection to get the error and be closed",
        Duration::from_secs(180),
        || {
            for i in 0..n {
                if state[i] != 0 {
                    continue;
                }
                loop {
                    match conns[i].read(&mut buf) {
                        Ok(0) => {
                            assert_eq!(
                                got[i],
                                REJECT,
                                "connection {i} closed after {:?}",
                                String::from_utf8_lossy(&got[i])
                            );
                            state[i] = 1;
                            refused += 1;
                            break;
                        }
                        Ok(k) => got[i].extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!(
                            "connection {i}: {e} after {:?}",
                            String::from_utf8_lossy(&got[i])
                        ),
                    }
                }
            }
            refused >= n - MAX
        },
    );
    assert_eq!(refused, n - MAX);
    assert_eq!(
        p.shared.stats.rejected_maxclients.load(Ordering::Acquire) as usize,
        n - MAX
    );
    assert_eq!(p.shared.clients.load(Ordering::Acquire), MAX);

    // The MAX admitted ones work (and got nothing unasked).
    let admitted: Vec<usize> = (0..n).filter(|&i| state[i] == 0).collect();
    assert_eq!(admitted.len(), MAX);
    for &i in &admitted {
        assert!(got[i].is_empty(), "{:?}", String::from_utf8_lossy(&got[i]));
        let s = &mut conns[i];
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&encode(&["SET", &format!("hostile:mc:{i}"), "1"]))
            .unwrap();
        assert_eq!(read_reply_string(s), "+OK\r\n");
        s.write_all(&encode(&["PING"])).unwrap();
        assert_eq!(read_reply_string(s), "+PONG\r\n");
    }
    // Still full: one more is refused.
    let (reply, _) = send_and_collect(p.addr, b"");
    assert_eq!(reply.as_bytes(), REJECT);

    // Close everything; the places are given back.
    drop(conns);
    wait_until("the sessions to end", Duration::from_secs(60), || {
        p.shared.clients.load(Ordering::Acquire) == 0
    });
    let mut again: Vec<TcpStream> = (0..MAX).map(|_| p.raw()).collect();
    for s in &mut again {
        s.write_all(&encode(&["PING"])).unwrap();
        assert_eq!(read_reply_string(s), "+PONG\r\n");
    }
    drop(again);
    wait_until("the sessions to end", Duration::from_secs(60), || {
        p.shared.clients.load(Ordering::Acquire) == 0
    });
    eprintln!(
        "{n} connections (RLIMIT_NOFILE {nofile}): {} refused, {MAX} admitted; \
         VmRSS {:.1} MiB before, {:.1} MiB with all open, {:.1} MiB after",
        n - MAX,
        mib(rss0),
        mib(rss_open),
        mib(rss())
    );
    assert_serves(&p, "after-flood");
}

// 5. ------------------------------------------------------------------------------------------

#[test]
fn pipelining_client_that_never_reads_is_held_by_backpressure() {
    let _g = heavy();
    let p = Proxy::for_cluster(cluster());
    let key = "{hostile}big";
    let value = "v".repeat(1024);
    let mut con = p.conn();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&value)
        .query(&mut con)
        .unwrap();
    drop(con);
    wait_until("setup client to go", Duration::from_secs(30), || {
        p.shared.clients.load(Ordering::Acquire) == 0
    });
    let rss0 = rss();

    // 200 MiB of GETs (~6.5 million commands, ~6.5 GiB of replies). The issue says 1 GB;
    // building and pushing that takes too long on this machine and proves nothing more: the
    // writer blocks after a few MiB either way.
    let one = encode(&["GET", key]);
    let chunk: Vec<u8> = one.repeat((MIB as usize) / one.len());
    let chunks = 200usize;
    let total = (chunk.len() * chunks) as u64;
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let bad = p.raw();
    let ctl = bad.try_clone().unwrap();
    let writer = {
        let written = written.clone();
        let done = done.clone();
        let mut bad = bad;
        std::thread::spawn(move || {
            for _ in 0..chunks {
                // Small writes so the progress counter is fine-grained.
                for piece in chunk.chunks(64 * 1024) {
                    if bad.write_all(piece).is_err() {
                        return;
                    }
                    written.fetch_add(piece.len() as u64, Ordering::Release);
                }
            }
            done.store(true, Ordering::Release);
        })
    };

    // Wait for the writer to be stuck (no progress over a second), sampling memory meanwhile.
    let mut max_rss = 0u64;
    let mut last = u64::MAX;
    wait_until(
        "the writer to be blocked by backpressure",
        Duration::from_secs(180),
        || {
            std::thread::sleep(Duration::from_secs(1));
            max_rss = max_rss.max(rss());
            let now = written.load(Ordering::Acquire);
            assert!(
                !done.load(Ordering::Acquire),
                "slotmux took all {total} bytes of GETs from a client that reads nothing"
            );
            let stuck = now == last && now > 0;
            last = now;
            stuck
        },
    );
    // Blocked for good: still blocked a few seconds later, memory flat.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        max_rss = max_rss.max(rss());
    }
    let stuck_at = written.load(Ordering::Acquire);
    assert!(!done.load(Ordering::Acquire));
    assert!(stuck_at < total);

    // Others are unaffected, including on the same key and node.
    let mut other = p.conn();
    let pong: String = redis::cmd("PING").query(&mut other).unwrap();
    assert_eq!(pong, "PONG");
    let v: String = redis::cmd("GET").arg(key).query(&mut other).unwrap();
    assert_eq!(v, value);
    drop(other);
    max_rss = max_rss.max(rss());

    eprintln!(
        "never-reading pipeliner: writer blocked after {:.1} MiB of {:.0} MiB; \
         VmRSS {:.1} MiB at start, max {:.1} MiB while blocked (+{:.1} MiB)",
        mib(stuck_at),
        mib(total),
        mib(rss0),
        mib(max_rss),
        mib(max_rss.saturating_sub(rss0))
    );
    assert!(
        max_rss < rss0 + 300 * MIB,
        "RSS grew from {:.1} to {:.1} MiB",
        mib(rss0),
        mib(max_rss)
    );

    // The bad client goes away (with unread replies: a reset); its session ends.
    ctl.shutdown(Shutdown::Both).unwrap();
    writer.join().unwrap();
    drop(ctl);
    wait_until(
        "the never-reading client's session to end",
        Duration::from_secs(60),
        || p.shared.clients.load(Ordering::Acquire) == 0,
    );
    assert_serves(&p, "after-pipeliner");
}

// 6. ------------------------------------------------------------------------------------------

/// Parses complete RESP2 pub/sub `message` frames from the front of `buf`; returns their
/// payloads and how many bytes they took.
fn messages(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let mut sc = slotmux::resp::reply::ReplyScanner::new();
        match sc.scan(&buf[at..]) {
            Ok(Some(n)) => {
                let frame = &buf[at..at + n];
                // *3 $7 message $<ch> <ch> $<len> <payload>
                let mut parts = Vec::new();
                let mut i = 0;
                while i < frame.len() {
                    let nl = i + frame[i..].iter().position(|&b| b == b'\n').unwrap();
                    let line = &frame[i..nl - 1];
                    i = nl + 1;
                    if line[0] == b'$' {
                        let len: usize = std::str::from_utf8(&line[1..]).unwrap().parse().unwrap();
                        parts.push(frame[i..i + len].to_vec());
                        i += len + 2;
                    }
                }
                assert_eq!(parts.len(), 3, "{:?}", String::from_utf8_lossy(frame));
                assert_eq!(parts[0], b"message");
                out.push(parts.pop().unwrap());
                at += n;
            }
            Ok(None) => return (out, at),
            Err(e) => panic!("bad reply stream: {e:?}"),
        }
    }
}

fn seq_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
}

#[test]
fn subscriber_that_never_reads_is_disconnected_at_the_output_limit() {
    let _g = heavy();
    let p = Proxy::with_config(cluster(), |c| c.pubsub_output_limit = MIB);
    let ch = "hostile:ps";
    let subscribe = |s: &mut TcpStream| {
        s.write_all(&encode(&["SUBSCRIBE", ch])).unwrap();
        assert_eq!(
            read_reply_string(s),
            format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len())
        );
    };
    let mut bad = p.raw();
    subscribe(&mut bad);
    let mut good = p.raw();
    subscribe(&mut good);

    // A well-behaved subscriber reads everything in a thread and counts.
    let received = Arc::new(AtomicU64::new(0));
    let good_thread = {
        let received = received.clone();
        let mut good = good.try_clone().unwrap();
        std::thread::spawn(move || -> Vec<u64> {
            let mut seqs = Vec::new();
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = good.read(&mut chunk).expect("good subscriber read");
                assert!(n > 0, "the good subscriber was disconnected");
                buf.extend_from_slice(&chunk[..n]);
                let (msgs, used) = messages(&buf);
                buf.drain(..used);
                for m in msgs {
                    if m.starts_with(b"END") {
                        return seqs;
                    }
                    seqs.push(seq_of(&m));
                    received.fetch_add(1, Ordering::Release);
                }
            }
        })
    };

    let mut publisher = p.conn();
    let rss0 = rss();
    let mut max_rss = rss0;
    let pad = "x".repeat(10 * 1024 - 8);
    let mut seq = 0u64;
    let mut receivers_seen = Vec::new();
    // Publish in bursts of 50 (about 0.5 MiB) and let the good subscriber catch up after each,
    // so only the subscriber that never reads can reach the 1 MiB limit.
    while p
        .shared
        .stats
        .output_limit_disconnects
        .load(Ordering::Acquire)
        == 0
    {
        assert!(
            seq < 100_000,
            "published {seq} messages of 10 KiB and the subscriber that never reads is still connected"
        );
        for _ in 0..50 {
            let n: i64 = redis::cmd("PUBLISH")
                .arg(ch)
                .arg(format!("{seq:08}{pad}"))
                .query(&mut publisher)
                .unwrap();
            receivers_seen.push(n);
            seq += 1;
        }
        wait_until(
            "the good subscriber to keep up",
            Duration::from_secs(60),
            || received.load(Ordering::Acquire) == seq,
        );
        max_rss = max_rss.max(rss());
    }
    let published_at_kill = seq;
    assert_eq!(
        p.shared
            .stats
            .output_limit_disconnects
            .load(Ordering::Acquire),
        1
    );
    wait_until(
        "the slow subscriber's session to end",
        Duration::from_secs(60),
        || p.shared.clients.load(Ordering::Acquire) == 2,
    );
    // Its backend subscription is gone too: Redis now counts one receiver.
    wait_until(
        "Redis to count one subscriber",
        Duration::from_secs(60),
        || {
            let n: i64 = redis::cmd("PUBLISH")
                .arg(ch)
                .arg(format!("{seq:08}{pad}"))
                .query(&mut publisher)
                .unwrap();
            seq += 1;
            n == 1
        },
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg(ch)
        .arg("END")
        .query(&mut publisher)
        .unwrap();
    let good_seqs = good_thread.join().unwrap();
    assert_eq!(
        good_seqs,
        (0..seq).collect::<Vec<_>>(),
        "the good subscriber got every message, in order"
    );
    max_rss = max_rss.max(rss());

    // The slow one got an in-order prefix of the messages (what the socket buffers held),
    // then the connection was closed.
    let (raw, reset) = read_until_closed(&mut bad, Duration::from_secs(30));
    let (msgs, used) = messages(&raw);
    let bad_seqs: Vec<u64> = msgs.iter().map(|m| seq_of(m)).collect();
    assert_eq!(bad_seqs, (0..bad_seqs.len() as u64).collect::<Vec<_>>());
    assert!((bad_seqs.len() as u64) < published_at_kill);
    eprintln!(
        "slow subscriber: disconnected after {published_at_kill} messages of 10 KiB; it had \
         received {} whole ones ({:.1} MiB, {} trailing bytes of a cut one, closed by {}); \
         good subscriber got all {seq}; Redis counted receivers {:?}..; \
         VmRSS {:.1} MiB at start, max {:.1} MiB",
        bad_seqs.len(),
        mib(used as u64),
        raw.len() - used,
        if reset { "reset" } else { "FIN" },
        &receivers_seen[..3],
        mib(rss0),
        mib(max_rss)
    );
    assert!(
        max_rss < rss0 + 128 * MIB,
        "RSS grew from {:.1} to {:.1} MiB",
        mib(rss0),
        mib(max_rss)
    );

    // Publisher and others unaffected.
    let pong: String = redis::cmd("PING").query(&mut publisher).unwrap();
    assert_eq!(pong, "PONG");
    drop(publisher);
    drop(good);
    drop(bad);
    assert_serves(&p, "after-slow-subscriber");
    wait_until("all sessions to end", Duration::from_secs(60), || {
        p.shared.clients.load(Ordering::Acquire) == 0
    });
}

// 7. ------------------------------------------------------------------------------------------

#[test]
fn malformed_inline_input_gets_redis_errors_and_close() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let long = vec![b'a'; 70 * 1024];
    let mut long_set = b"SET hostile:inline ".to_vec();
    long_set.extend(vec![b'b'; 70 * 1024]);
    let cases: Vec<(&[u8], &str)> = vec![
        (
            b"SET a \"b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"SET a 'b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"SET a \"b\"c\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            // A good command first: it is answered, then the error.
            b"PING\r\nECHO \"x\\\"\r\n",
            "+PONG\r\n-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (&long, "-ERR Protocol error: too big inline request\r\n"),
        (&long_set, "-ERR Protocol error: too big inline request\r\n"),
    ];
    for (bytes, want) in cases {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(30)]).into_owned();
        // Redis itself, on a node of the cluster.
        let (redis_reply, redis_reset) = send_and_collect(("127.0.0.1", c.ports[0]), bytes);
        assert_eq!(redis_reply, want, "Redis on {shown:?}");
        let (reply, reset) = send_and_collect(p.addr, bytes);
        assert_eq!(reply, want, "slotmux on {shown:?}");
        // Both close; whether with a FIN or a reset depends on whether all input was read
        // before the close, which for the long lines is a matter of timing for both.
        if bytes.len() < 1024 {
            assert_eq!(
                reset, redis_reset,
                "slotmux closes like Redis (reset or FIN) on {shown:?}"
            );
        }
        assert_serves(&p, "after-malformed-inline");
    }
}

/// A RESP3 subscriber may run commands; pushes arriving while one of them is pending (here a
/// BLPOP that never returns) queue behind its reply. That queue counts against the pub/sub
/// output limit too (issue 14: it once grew without bound).
#[test]
fn pushes_queued_behind_a_pending_command_count_against_the_output_limit() {
    let _g = heavy();
    let p = Proxy::with_config(cluster(), |c| c.pubsub_output_limit = MIB);
    let ch = "hostile:pending-ps";
    let mut sub = p.raw();
    sub.write_all(&encode(&["HELLO", "3"])).unwrap();
    let _hello = support::read_reply(&mut sub);
    sub.write_all(&encode(&["SUBSCRIBE", ch])).unwrap();
    assert!(read_reply_string(&mut sub).contains("subscribe"));
    sub.write_all(&encode(&["BLPOP", "hostile:never-pushed", "0"]))
        .unwrap();
    wait_until("the BLPOP to block", Duration::from_secs(10), || {
        p.shared.blocked.load(Ordering::Acquire) == 1
    });
    let mut publisher = p.conn();
    let pad = "x".repeat(10 * 1024);
    let mut published = 0;
    while p
        .shared
        .stats
        .output_limit_disconnects
        .load(Ordering::Acquire)
        == 0
    {
        assert!(
            published < 1000,
            "{published} messages of 10 KiB queued behind a pending BLPOP and the client is still connected"
        );
        let _: i64 = redis::cmd("PUBLISH")
            .arg(ch)
            .arg(&pad)
            .query(&mut publisher)
            .unwrap();
        published += 1;
    }
    // Disconnected about when 1 MiB was queued, not later.
    assert!(
        published <= 200,
        "disconnected only after {published} messages"
    );
    wait_until("the session to end", Duration::from_secs(30), || {
        p.shared.blocked.load(Ordering::Acquire) == 0
    });
}

/// Logs written to a pipe or file carry no terminal colour codes (issue 14).
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let port = support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slotmux"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--seeds", &cluster().seeds().join(",")])
        .args(["--metrics-listen", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        // Until the first topology is logged (or the process ends).
        while !String::from_utf8_lossy(&text).contains("topology changed") {
            match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
            }
        }
        text
    });
    wait_until("slotmux to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let text = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("starting"), "no start line in {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in piped logs: {text:?}"
    );
}
