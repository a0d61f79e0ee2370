//! Plain clients of every kind that bypasses the shared connections (issue 17), run while the
//! cluster reshards or fails over: transactions on their own hashtag (checked to apply exactly
//! once), WATCH-guarded increments (applied once or aborted with null), BLPOPs woken by a
//! pusher, and sharded subscribers fed by a publisher. Every reply is checked; a MOVED or ASK
//! seen by any client is a failure in every scenario.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{self, Proxy};

/// What one mixed client saw.
#[derive(Default, Debug)]
pub struct MixedReport {
    pub kind: &'static str,
    /// Transactions committed, watched transactions aborted with null, elements popped,
    /// messages received.
    pub done: u64,
    pub aborted: u64,
    pub errors: Vec<String>,
}

pub struct Mixed {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<MixedReport>>,
}

/// Errors a client may see when a master dies under it (never MOVED or ASK).
pub fn documented(e: &str) -> bool {
    e.contains("may or may not have been executed")
}

fn redirect(e: &str) -> bool {
    e.contains("MOVED") || e.contains("ASK")
}

/// The first `n` slots of a master's slot list (`CLUSTER NODES` ranges, as in
/// `RedisCluster::masters`), spread out: the ones `redis-cli --cluster reshard` moves first.
pub fn first_slots(ranges: &str, within: usize, n: usize) -> Vec<u16> {
    let mut all = Vec::new();
    for r in ranges.split(' ').filter(|r| !r.starts_with('[')) {
        let (a, b) = match r.split_once('-') {
            Some((a, b)) => (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()),
            None => match r.parse::<u16>() {
                Ok(x) => (x, x),
                Err(_) => continue,
            },
        };
        all.extend(a..=b);
    }
    all.truncate(within);
    let step = (all.len() / n.max(1)).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

impl Mixed {
    /// `n` clients of each kind, each on a hashtag of its own in one of `slots` (the slots a
    /// fault will move or fail over).
    pub fn start(p: &Proxy, prefix: &str, n: usize, slots: &[u16]) -> Mixed {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        // A hashtag in slots[i % len] for client i of kind `kind`.
        let tag = |kind: &str, i: usize| -> String {
            let slot = slots[i % slots.len()];
            let t = support::key_for_slot(slot, &format!("{prefix}{kind}{i}-"));
            format!("{{{t}}}")
        };
        for t in 0..n {
            handles.push(tx_client(p.url(), tag("tx", t), stop.clone()));
            handles.push(watch_client(p.url(), tag("w", t), stop.clone()));
        }
        let lists: Vec<String> = (0..n).map(|t| format!("{}:list", tag("q", t))).collect();
        for l in &lists {
            handles.push(blocker(p.url(), l.clone()));
        }
        handles.push(pusher(p.url(), lists, stop.clone()));
        let channels: Vec<String> = (0..n).map(|t| format!("{}:ch", tag("s", t))).collect();
        let done = Arc::new(AtomicUsize::new(0));
        for ch in &channels {
            handles.push(subscriber(p, ch.clone(), done.clone()));
        }
        handles.push(publisher(p.url(), channels, stop.clone(), done));
        Mixed { stop, handles }
    }

    /// Stops the load, lets every blocked client and subscriber get its final element, and
    /// checks what every client saw. `failover`: a master died, so writes whose connection
    /// broke may report an unknown outcome (and be retried by the client).
    pub fn finish(self, name: &str, failover: bool) -> Vec<MixedReport> {
        self.stop.store(true, Ordering::Relaxed);
        let reports: Vec<MixedReport> = self
            .handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for r in &reports {
            eprintln!(
                "[{name}] {}: done={} aborted={} errors={}",
                r.kind,
                r.done,
                r.aborted,
                r.errors.len()
            );
            for e in r.errors.iter().take(3) {
                eprintln!("[{name}]   {}: {e}", r.kind);
            }
        }
        for r in &reports {
            for e in &r.errors {
                assert!(
                    !redirect(e),
                    "[{name}] a {} client saw a redirect: {e}",
                    r.kind
                );
                assert!(
                    failover && documented(e),
                    "[{name}] a {} client saw an error: {e}",
                    r.kind
                );
            }
            assert!(r.done > 0, "[{name}] a {} client did nothing", r.kind);
        }
        reports
    }
}

fn connect(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).unwrap();
    let con = client.get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    con
}

/// MULTI; INCR k; GET k; EXEC, over and over: each must see the counter one higher.
fn tx_client(url: String, tag: String, stop: Arc<AtomicBool>) -> JoinHandle<MixedReport> {
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "transaction",
            ..Default::default()
        };
        let mut con = connect(&url);
        let k = format!("{tag}:n");
        let _: () = redis::cmd("SET").arg(&k).arg(0).query(&mut con).unwrap();
        let mut want = 0i64;
        while !stop.load(Ordering::Relaxed) {
            // Command by command (not redis-rs's atomic pipeline, which hides EXEC's error
            // text), so every reply is checked as it is.
            let res = (|| -> redis::RedisResult<redis::Value> {
                let _: () = redis::cmd("MULTI").query(&mut con)?;
                let _: () = redis::cmd("INCR").arg(&k).query(&mut con)?;
                let _: () = redis::cmd("GET").arg(&k).query(&mut con)?;
                redis::cmd("EXEC").query(&mut con)
            })();
            let pair = |v: &redis::Value| -> Option<(i64, i64)> {
                redis::from_redis_value(v.clone()).ok()
            };
            match res {
                Ok(v) if pair(&v).is_some_and(|(n, got)| n == want + 1 && got == n) => {
                    want += 1;
                    r.done += 1;
                }
                Ok(other) => {
                    r.errors
                        .push(format!("{k}: got {other:?} after {want}: not exactly once"));
                    want = redis::cmd("GET").arg(&k).query(&mut con).unwrap_or(want);
                }
                Err(e) => {
                    r.errors.push(format!("{k}: {e}"));
                    // A failed queueing leaves MULTI open: end it. The outcome of a failed
                    // EXEC is unknown: learn where the counter is.
                    let _: redis::RedisResult<()> = redis::cmd("DISCARD").query(&mut con);
                    want = redis::cmd("GET").arg(&k).query(&mut con).unwrap_or(want);
                }
            }
        }
        r
    })
}

/// WATCH k; GET k; MULTI; SET k v+1; EXEC: committed (once) or aborted with null.
fn watch_client(url: String, tag: String, stop: Arc<AtomicBool>) -> JoinHandle<MixedReport> {
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "watch",
            ..Default::default()
        };
        let mut con = connect(&url);
        let k = format!("{tag}:v");
        let _: () = redis::cmd("SET").arg(&k).arg(0).query(&mut con).unwrap();
        let mut committed = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let step = (|| -> redis::RedisResult<redis::Value> {
                let _: () = redis::cmd("WATCH").arg(&k).query(&mut con)?;
                let v: i64 = redis::cmd("GET").arg(&k).query(&mut con)?;
                let _: () = redis::cmd("MULTI").query(&mut con)?;
                let _: () = redis::cmd("SET").arg(&k).arg(v + 1).query(&mut con)?;
                redis::cmd("EXEC").query(&mut con)
            })();
            match step {
                Ok(redis::Value::Nil) => r.aborted += 1,
                Ok(redis::Value::Array(a)) if a == [redis::Value::Okay] => {
                    committed += 1;
                    r.done += 1;
                }
                Ok(other) => r.errors.push(format!("{k}: EXEC gave {other:?}")),
                Err(e) => {
                    r.errors.push(format!("{k}: {e}"));
                    let _: redis::RedisResult<()> = redis::cmd("DISCARD").query(&mut con);
                    let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query(&mut con);
                    committed = redis::cmd("GET")
                        .arg(&k)
                        .query(&mut con)
                        .unwrap_or(committed);
                }
            }
        }
        let v: i64 = redis::cmd("GET").arg(&k).query(&mut con).unwrap_or(-1);
        if v != committed {
            r.errors.push(format!(
                "{k}: {v} after {committed} commits: not exactly once"
            ));
        }
        r
    })
}

/// BLPOP list 0 until it pops "end"; elements must come in the pushed order.
fn blocker(url: String, list: String) -> JoinHandle<MixedReport> {
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "blpop",
            ..Default::default()
        };
        let mut con = connect(&url);
        let mut last = -1i64;
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            let got: redis::RedisResult<Option<(String, String)>> =
                redis::cmd("BLPOP").arg(&list).arg(0).query(&mut con);
            match got {
                Ok(Some((_, v))) if v == "end" => return r,
                Ok(Some((_, v))) => match v.parse::<i64>() {
                    Ok(n) if n > last => {
                        last = n;
                        r.done += 1;
                    }
                    _ => r.errors.push(format!("{list}: {v} after {last}")),
                },
                Ok(None) => r.errors.push(format!("{list}: BLPOP 0 returned nil")),
                Err(e) => r.errors.push(format!("{list}: {e}")),
            }
        }
        r.errors
            .push(format!("{list}: never woken by the end marker"));
        r
    })
}

/// Pushes a growing number onto every list until stopped, then "end".
fn pusher(url: String, lists: Vec<String>, stop: Arc<AtomicBool>) -> JoinHandle<MixedReport> {
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "pusher",
            ..Default::default()
        };
        let mut con = connect(&url);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for l in &lists {
                match redis::cmd("RPUSH").arg(l).arg(i).query::<i64>(&mut con) {
                    Ok(_) => r.done += 1,
                    Err(e) => r.errors.push(format!("RPUSH {l}: {e}")),
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        for l in &lists {
            // Until it is acknowledged: an unknown outcome may be retried (the blocker returns
            // at the first "end" it pops).
            for _ in 0..20 {
                match redis::cmd("RPUSH").arg(l).arg("end").query::<i64>(&mut con) {
                    Ok(_) => break,
                    Err(e) => r.errors.push(format!("RPUSH {l} end: {e}")),
                }
            }
        }
        r
    })
}

/// SSUBSCRIBE channel; messages must come in published order, until "end".
fn subscriber(p: &Proxy, channel: String, done: Arc<AtomicUsize>) -> JoinHandle<MixedReport> {
    let mut s = p.raw();
    s.write_all(&support::encode(&["SSUBSCRIBE", &channel]))
        .unwrap();
    let confirm = support::read_reply_string(&mut s);
    assert!(confirm.contains("ssubscribe"), "{confirm}");
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "ssubscribe",
            ..Default::default()
        };
        s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let mut last = -1i64;
        loop {
            let frame = match read_frame(&mut s) {
                Ok(f) => f,
                Err(e) => {
                    r.errors.push(format!("{channel}: {e}"));
                    break;
                }
            };
            let text = String::from_utf8_lossy(&frame).into_owned();
            let Some(payload) = text.strip_prefix("*3\r\n$8\r\nsmessage\r\n") else {
                r.errors
                    .push(format!("{channel}: unexpected frame {text:?}"));
                continue;
            };
            let value = payload.lines().nth(3).unwrap_or_default();
            if value == "end" {
                break;
            }
            match value.parse::<i64>() {
                Ok(n) if n > last => {
                    last = n;
                    r.done += 1;
                }
                _ => r.errors.push(format!("{channel}: {value} after {last}")),
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        r
    })
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut scanner = slotmux::resp::reply::ReplyScanner::new();
    let mut byte = [0u8; 1];
    loop {
        if let Ok(Some(n)) = scanner.scan(&buf) {
            if n == buf.len() {
                return Ok(buf);
            }
        }
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
}

/// SPUBLISHes a growing number to every channel until stopped, then "end" until every
/// subscriber has it (messages published while a subscription moves may be missed: Redis
/// drops the subscription before slotmux makes it again on the new master).
fn publisher(
    url: String,
    channels: Vec<String>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> JoinHandle<MixedReport> {
    std::thread::spawn(move || {
        let mut r = MixedReport {
            kind: "spublish",
            ..Default::default()
        };
        let mut con = connect(&url);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for ch in &channels {
                match redis::cmd("SPUBLISH").arg(ch).arg(i).query::<i64>(&mut con) {
                    Ok(_) => r.done += 1,
                    Err(e) => r.errors.push(format!("SPUBLISH {ch}: {e}")),
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < channels.len() && Instant::now() < deadline {
            for ch in &channels {
                let _: redis::RedisResult<i64> =
                    redis::cmd("SPUBLISH").arg(ch).arg("end").query(&mut con);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if done.load(Ordering::Relaxed) < channels.len() {
            r.errors
                .push("a subscriber never got the end marker".into());
        }
        r
    })
}
