//! Real faults on a real cluster: a master killed under load, a master hung with SIGSTOP, a
//! node restarted. These tests disrupt the cluster, so they have their own (persistent, AOF)
//! cluster and run one at a time; each leaves it healthy again.

#[path = "../support/mod.rs"]
mod support;

mod mixed;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{wait_until, Proxy, RedisCluster};

fn cluster() -> (MutexGuard<'static, ()>, &'static RedisCluster) {
    static SERIAL: Mutex<()> = Mutex::new(());
    static C: Mutex<Option<&'static RedisCluster>> = Mutex::new(None);
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut current = C.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = *current {
        // Every test ends by asserting that it left the cluster healthy, so a broken cluster
        // here has already failed the test that broke it. Replace it, so that one failure
        // does not fail every test after it.
        for port in c.restart_exited() {
            eprintln!("node {port} had exited; restarted it");
        }
        match c.try_wait_healthy(Duration::from_secs(30)) {
            Ok(()) => return (guard, c),
            Err(diagnosis) => {
                eprintln!(
                    "an earlier test left the cluster broken; starting a new one. It was:\n{diagnosis}"
                );
                c.shutdown();
            }
        }
    }
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let c: &'static RedisCluster = Box::leak(Box::new(RedisCluster::start_with(
        &format!("faults{n}"),
        &["--appendonly", "yes", "--appendfsync", "always"],
    )));
    *current = Some(c);
    (guard, c)
}

/// What a load thread saw.
#[derive(Default, Debug)]
struct LoadReport {
    ok: u64,
    errors: Vec<String>,
    max_latency: Duration,
    /// Keys whose SET was acknowledged, with their value.
    acked: Vec<(String, String)>,
}

/// Runs SET/GET pairs through slotmux from `threads` clients until `stop`.
fn write_keys(p: &Proxy, prefix: &str, n: usize) -> Vec<String> {
    let mut con = p.conn();
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("SET").arg(k).arg(k).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    keys
}

fn assert_all_readable(p: &Proxy, c: &RedisCluster, keys: &[String]) {
    let mut con = p.conn();
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("GET").arg(k);
    }
    let vals: Vec<Option<String>> = match pipe.query(&mut con) {
        Ok(v) => v,
        Err(e) => panic!("reading the keys back failed: {e}\n{}", c.diagnose()),
    };
    let lost: Vec<&String> = keys
        .iter()
        .zip(&vals)
        .filter(|(k, v)| v.as_deref() != Some(k.as_str()))
        .map(|(k, _)| k)
        .collect();
    assert!(
        lost.is_empty(),
        "{} keys lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Errors a client may see during a failover, per the README's failure semantics.
fn is_documented_failover_error(e: &str) -> bool {
    e.contains("may or may not have been executed")
}

/// A key of `keys` that lives on master `port` (asked before any fault is injected).
fn key_on(keys: &[String], port: u16) -> String {
    keys.iter()
        .find(|k| support::raw_cmd(port, &["EXISTS", k]) == ":1\r\n")
        .expect("some key on the victim")
        .clone()
}

/// Waits until `key` reads back as itself through slotmux, reconnecting after errors. On a
/// timeout it says what the client last saw and what every answering node thinks of the
/// cluster, to tell a failover Redis did not make from one slotmux did not follow.
fn wait_served(p: &Proxy, c: &RedisCluster, key: &str, limit: Duration) {
    let mut con = p.conn();
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < limit {
        match redis::cmd("GET").arg(key).query::<Option<String>>(&mut con) {
            Ok(v) if v.as_deref() == Some(key) => return,
            Ok(v) => last = format!("{v:?}"),
            Err(e) => {
                last = e.to_string();
                if e.is_io_error() || e.is_connection_dropped() {
                    con = p.conn();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the failed master's slots were not served again within {limit:?}; \
         the client last saw: {last}\n{}",
        c.diagnose()
    );
}

/// Waits until every master's replica has acknowledged all its writes. Replication is
/// asynchronous: a key the replica has not received is lost in a failover by Redis itself,
/// and a test that then reads it would blame slotmux. (`WAIT` on a fresh connection cannot
/// tell: it waits for that connection's own last write, and it has none.) So: take the
/// master's replication offset, then wait until the master reports its replica's
/// acknowledged offset at or past it. First the nodes must agree about the configuration
/// (`wait_settled`), so no failover starts from a half-spread resharding.
fn replicas_caught_up(c: &RedisCluster) {
    c.wait_settled();
    fn field(info: &str, name: &str) -> Option<i64> {
        info.split(['\n', ',']).find_map(|f| {
            f.trim()
                .strip_prefix(name)?
                .strip_prefix(|ch| ch == ':' || ch == '=')?
                .parse()
                .ok()
        })
    }
    for (port, _, _) in c.masters() {
        let info = support::raw_cmd(port, &["INFO", "replication"]);
        let target = field(&info, "master_repl_offset").expect("master_repl_offset");
        wait_until(
            "the replica to acknowledge its master's writes",
            Duration::from_secs(60),
            || {
                let info = support::raw_cmd(port, &["INFO", "replication"]);
                info.lines()
                    .filter(|l| l.starts_with("slave"))
                    .any(|l| field(l, "offset").is_some_and(|o| o >= target))
            },
        );
    }
}

fn victim(c: &RedisCluster) -> u16 {
    c.masters()[0].0
}

/// The first slot of master `port`.
fn first_slot_of(c: &RedisCluster, port: u16) -> u16 {
    let masters = c.masters();
    let ranges = &masters.iter().find(|m| m.0 == port).expect("a master").2;
    mixed::first_slots(ranges, 1, 1)[0]
}

/// How long after `t0` the cluster itself had another master serving `slot` (the promoted
/// replica), by polling CLUSTER NODES of the surviving nodes every 50 ms.
fn failover_clock(
    c: &RedisCluster,
    victim: u16,
    slot: u16,
    t0: Instant,
) -> std::thread::JoinHandle<Option<Duration>> {
    let ports: Vec<u16> = c.ports.iter().copied().filter(|&p| p != victim).collect();
    std::thread::spawn(move || {
        while t0.elapsed() < Duration::from_secs(60) {
            for &port in &ports {
                let Some(nodes) = support::try_cmd(port, &["CLUSTER", "NODES"]) else {
                    continue;
                };
                let promoted = support::node_lines(&nodes).iter().any(|n| {
                    n.port != victim
                        && n.flags.contains("master")
                        && !n.flags.contains("fail")
                        && n.slots.iter().any(|r| {
                            let (a, b) = r.split_once('-').unwrap_or((r, r));
                            match (a.parse::<u16>(), b.parse::<u16>()) {
                                (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                                _ => false,
                            }
                        })
                });
                if promoted {
                    return Some(t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
}

fn summarize(name: &str, reports: &[LoadReport], recovered: Duration) {
    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let errs: usize = reports.iter().map(|r| r.errors.len()).sum();
    let max = reports
        .iter()
        .map(|r| r.max_latency)
        .max()
        .unwrap_or_default();
    // slotmux runs inside this test process: its resident memory is (most of) ours.
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    eprintln!("[{name}] ops ok={ok} client-visible errors={errs} max op latency={max:?} recovered after {recovered:?}; test process RSS {rss} kB");
    for r in reports {
        for e in r.errors.iter().take(3) {
            eprintln!("[{name}]   error: {e}");
        }
    }
}

/// Prints the cluster's own failover time beside the longest a client operation (a SET and
/// a GET) was held through slotmux: issue 14's target is at most 1 s more.
fn report_blocked(
    name: &str,
    clock: std::thread::JoinHandle<Option<Duration>>,
    reports: &[LoadReport],
) {
    let failover = clock.join().unwrap();
    let blocked = reports
        .iter()
        .map(|r| r.max_latency)
        .max()
        .unwrap_or_default();
    eprintln!(
        "[{name}] cluster failover after {failover:?}; longest client operation through slotmux {blocked:?}"
    );
}

/// With no client traffic at all, /readyz turns 503 when a master dies (the health probe
/// notices) and 200 again once the cluster has promoted its replica.
#[test]
fn readiness_follows_a_dead_master_without_traffic() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    c.wait_settled();
    let v = victim(c);
    let slot = first_slot_of(c, v);
    let t0 = Instant::now();
    c.kill(v);
    let clock = failover_clock(c, v, slot, t0);
    let mut not_ready = None;
    let mut ready_again = None;
    while t0.elapsed() < Duration::from_secs(40) {
        let (code, body) = p.http_get("/readyz");
        match (code, not_ready) {
            (503, None) => {
                assert!(
                    body.contains(&format!(":{v}")),
                    "names the dead master: {body}"
                );
                not_ready = Some(t0.elapsed());
            }
            (200, Some(_)) => {
                ready_again = Some(t0.elapsed());
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let promoted = clock.join().unwrap();
    eprintln!(
        "[readiness without traffic] 503 after {not_ready:?}; cluster promoted the replica after {promoted:?}; 200 again after {ready_again:?}"
    );
    let not_ready = not_ready.expect("/readyz never reported the dead master");
    let ready_again = ready_again.expect("/readyz never came back");
    let promoted = promoted.expect("the cluster never promoted a replica");
    // Issue 14's targets are 2 s and 1 s; the bounds here leave room for a loaded machine.
    assert!(
        not_ready < Duration::from_secs(6),
        "503 only after {not_ready:?}"
    );
    assert!(
        ready_again < promoted + Duration::from_secs(5),
        "200 only {:?} after the promotion",
        ready_again.saturating_sub(promoted)
    );
    c.restart(v);
    c.wait_healthy();
}

#[test]
fn master_killed_under_load_fails_over_without_restarting_slotmux() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let keys = write_keys(&p, "kill", 2000);
    let v = victim(c);
    replicas_caught_up(c);
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&p, 4, "killload", stop.clone(), false);
    // Clients of every kind on the victim's slots and elsewhere.
    let masters = c.masters();
    let mut slots = mixed::first_slots(&masters[0].2, 5000, 2);
    slots.extend(mixed::first_slots(&masters[1].2, 5000, 1));
    let mixed = mixed::Mixed::start(&p, "kill", 3, &slots);
    std::thread::sleep(Duration::from_millis(300));
    let victim_key = key_on(&keys, v);
    let slot = first_slot_of(c, v);
    let t0 = Instant::now();
    c.kill(v);
    let clock = failover_clock(c, v, slot, t0);
    // Readiness drops while a master is unreachable...
    wait_until(
        "/readyz to report the dead master",
        Duration::from_secs(20),
        || {
            let (code, body) = p.http_get("/readyz");
            code == 503 && body.contains("unreachable")
        },
    );
    // A client keeps trying a key on the victim's slots until it works again.
    wait_served(&p, c, &victim_key, Duration::from_secs(30));
    let recovered = t0.elapsed();
    // ...and comes back once the replica has taken over.
    wait_until(
        "/readyz to be ready after the failover",
        Duration::from_secs(20),
        || p.http_get("/readyz").0 == 200,
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = load.into_iter().map(|h| h.join().unwrap()).collect();
    summarize("kill -9 master", &reports, recovered);
    report_blocked("kill -9 master", clock, &reports);
    mixed.finish("kill -9 master", true);
    for r in &reports {
        for e in &r.errors {
            assert!(
                is_documented_failover_error(e),
                "undocumented client error: {e}"
            );
        }
    }
    assert_all_readable(&p, c, &keys);
    // Keys the load acknowledged are still there. (Their value may be a later write whose
    // outcome was reported unknown; and an acknowledged write that had not reached the replica
    // when its master died is lost by Redis itself: replication is asynchronous.)
    let mut con = p.conn();
    for r in &reports {
        for (k, v) in r.acked.iter().take(200) {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
            assert!(got.is_some(), "acked key {k} (value {v}) is missing");
        }
    }
    c.restart(v);
    c.wait_healthy();
}

#[test]
fn master_hung_with_sigstop_is_detected_by_timeout() {
    let (_g, c) = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.backend_timeout = Duration::from_secs(2));
    let keys = write_keys(&p, "stop", 1000);
    replicas_caught_up(c);
    let v = victim(c);
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&p, 4, "stopload", stop.clone(), false);
    std::thread::sleep(Duration::from_millis(300));
    let victim_key = key_on(&keys, v);
    let slot = first_slot_of(c, v);
    // An idle tracking client that read a key of the victim: nothing of its own waits on the
    // hung node, yet what the node tracked for it is lost with it.
    let mut tracker = p.raw();
    assert!(support::ask(&mut tracker, &["HELLO", "3"]).starts_with('%'));
    assert_eq!(
        support::ask(&mut tracker, &["CLIENT", "TRACKING", "on"]),
        "+OK\r\n"
    );
    assert!(support::ask(&mut tracker, &["GET", &victim_key]).starts_with('$'));
    let t0 = Instant::now();
    c.signal(v, libc::SIGSTOP);
    let clock = failover_clock(c, v, slot, t0);
    // Whatever happens below, the node is resumed.
    struct Resume<'a>(&'a RedisCluster, u16);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            self.0.signal(self.1, libc::SIGCONT);
        }
    }
    let resume = Resume(c, v);
    assert_eq!(
        support::invalidated_keys(&support::read_reply_string(&mut tracker)),
        None,
        "a tracking client of a hung master is told to drop everything"
    );
    wait_served(&p, c, &victim_key, Duration::from_secs(40));
    // Tracked again on the promoted replica.
    assert!(support::ask(&mut tracker, &["GET", &victim_key]).starts_with('$'));
    support::ask(&mut p.raw(), &["SET", &victim_key, &victim_key]);
    assert_eq!(
        support::invalidated_keys(&support::read_reply_string(&mut tracker)),
        Some(vec![victim_key.clone()])
    );
    let recovered = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = load.into_iter().map(|h| h.join().unwrap()).collect();
    summarize("SIGSTOP master", &reports, recovered);
    report_blocked("SIGSTOP master", clock, &reports);
    drop(resume);
    for r in &reports {
        for e in &r.errors {
            assert!(
                is_documented_failover_error(e),
                "undocumented client error: {e}"
            );
        }
        // Bounded by backend timeout + retry budget (2 s + 10 s), with slack for this machine.
        assert!(
            r.max_latency < Duration::from_secs(20),
            "a client waited {:?}",
            r.max_latency
        );
    }
    assert_all_readable(&p, c, &keys);
    c.wait_healthy();
}

#[test]
fn node_restart_is_followed() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let keys = write_keys(&p, "restart", 500);
    let v = victim(c);
    // A quick restart (SIGTERM, AOF persisted) within the node timeout: no failover, the same
    // master comes back on the same address; slotmux's connections to it broke and must be
    // re-established.
    c.stop(v);
    c.restart(v);
    let mut con = p.conn();
    wait_until(
        "keys on the restarted node to be readable",
        Duration::from_secs(30),
        || {
            keys.iter().all(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<String>>(&mut con)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(k.as_str())
            })
        },
    );
    let _: () = redis::cmd("SET")
        .arg("restart:after")
        .arg("1")
        .query(&mut con)
        .unwrap();
    c.wait_healthy();
    assert_all_readable(&p, c, &keys);
}

#[test]
fn reads_leave_a_dead_replica() {
    let (_g, c) = cluster();
    let prefer = Proxy::with_config(c, |cfg| cfg.read_from = "prefer-replica".into());
    let strict = Proxy::with_config(c, |cfg| {
        cfg.read_from = "replica".into();
        cfg.retry_budget = Duration::from_secs(2);
    });
    let key = "readfrom:{dead-replica}";
    let slot = slotmux::cluster::key_slot(key.as_bytes());
    let master = c.owner_of(slot);
    let replica = c.replica_of(master);
    let mut con = prefer.conn();
    let _: () = redis::cmd("SET").arg(key).arg("v").query(&mut con).unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    assert_eq!(acked, 1);
    prefer.wait_replica_ready(slot);
    strict.wait_replica_ready(slot);
    let mut strict_con = strict.conn();
    for con in [&mut con, &mut strict_con] {
        let v: String = redis::cmd("GET").arg(key).query(con).unwrap();
        assert_eq!(v, "v");
    }
    wait_until(
        "the first read on the replica",
        Duration::from_secs(10),
        || prefer.sent_to(replica) >= 1.0,
    );

    c.kill(replica);
    // prefer-replica: every read is answered, by the master once the replica is known dead
    // (a read caught on the dead replica's connection is safe to retry).
    let to_master = prefer.sent_to(master);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert_eq!(v, "v");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("reads on the master", Duration::from_secs(10), || {
        prefer.sent_to(master) > to_master
    });
    // replica: the read fails, with an error that says why, after the retry budget.
    let e = redis::cmd("GET")
        .arg(key)
        .query::<String>(&mut strict_con)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no replica of slot"), "{e}");

    c.restart(replica);
    c.wait_healthy();
    strict.wait_replica_ready(slot);
    let v: String = redis::cmd("GET").arg(key).query(&mut strict_con).unwrap();
    assert_eq!(v, "v");
}

#[test]
fn subscriber_is_resubscribed_and_tracking_clients_invalidated_after_their_node_dies() {
    use std::io::Write;
    use support::{ask, invalidated_keys, read_reply_string};
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let mut sub = p.raw();
    sub.write_all(&support::encode(&["SUBSCRIBE", "failover-news"]))
        .unwrap();
    assert_eq!(
        support::read_reply_string(&mut sub),
        "*3\r\n$9\r\nsubscribe\r\n$13\r\nfailover-news\r\n:1\r\n"
    );
    // Subscriptions live on slot 0's master: kill it.
    c.wait_settled();
    let v = c.owner_of(0);
    // Tracking clients with a key on that master: one RESP3 in default mode, one in BCAST
    // mode, one RESP2 redirecting to a subscriber. What the dead master tracked is gone
    // with it, so each must be told to drop everything (a null invalidation).
    let key = support::key_for_slot(0, "trk-fail");
    let mut w = p.raw();
    ask(&mut w, &["SET", &key, "1"]);
    let mut r3 = p.raw();
    let mut bc = p.raw();
    for (s, mode) in [(&mut r3, "DEFAULT"), (&mut bc, "BCAST")] {
        assert!(ask(s, &["HELLO", "3"]).starts_with('%'));
        let on: &[&str] = if mode == "BCAST" {
            &["CLIENT", "TRACKING", "on", "BCAST"]
        } else {
            &["CLIENT", "TRACKING", "on"]
        };
        assert_eq!(ask(s, on), "+OK\r\n");
        assert_eq!(ask(s, &["GET", &key]), "$1\r\n1\r\n");
    }
    let mut red = p.raw();
    let red_id = ask(&mut red, &["CLIENT", "ID"]).trim()[1..].to_string();
    ask(&mut red, &["SUBSCRIBE", "__redis__:invalidate"]);
    let mut r2 = p.raw();
    assert_eq!(
        ask(&mut r2, &["CLIENT", "TRACKING", "on", "REDIRECT", &red_id]),
        "+OK\r\n"
    );
    assert_eq!(ask(&mut r2, &["GET", &key]), "$1\r\n1\r\n");
    replicas_caught_up(c);
    c.kill(v);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let url = p.url();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_connection().unwrap();
            let deadline = Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg("failover-news")
                    .arg("after")
                    .query(&mut con);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // The re-subscription is invisible; the next thing the subscriber sees is a message.
    let msg = support::read_reply_string(&mut sub);
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert_eq!(
        msg,
        "*3\r\n$7\r\nmessage\r\n$13\r\nfailover-news\r\n$5\r\nafter\r\n"
    );
    for s in [&mut r3, &mut bc, &mut red] {
        assert_eq!(invalidated_keys(&read_reply_string(s)), None);
    }
    assert_eq!(p.metric("slotmux_tracking_clients"), 3.0);
    assert_eq!(p.metric("slotmux_tracking_resets_total"), 3.0);
    // After the failover, reads are tracked on the new master, and its writes invalidate.
    wait_served_value(&p, &key);
    for s in [&mut r3, &mut bc, &mut r2] {
        assert!(ask(s, &["GET", &key]).starts_with('$'));
    }
    ask(&mut w, &["SET", &key, "2"]);
    for s in [&mut r3, &mut bc, &mut red] {
        assert_eq!(
            invalidated_keys(&read_reply_string(s)),
            Some(vec![key.clone()])
        );
    }
    c.restart(v);
    c.wait_healthy();
}

/// Waits until a GET of `key` through slotmux answers (its slot is served again).
fn wait_served_value(p: &Proxy, key: &str) {
    let mut con = p.conn();
    wait_until(
        "the key's slot to be served again",
        Duration::from_secs(60),
        || {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut con)
                .is_ok()
        },
    );
}

fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(args)
        .output()
        .expect("run redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "redis-cli {args:?} failed: {text}");
    text
}

/// Waits until every node agrees about the slot configuration (gossip has converged), as
/// redis-cli requires before the next reshard/rebalance.
fn wait_consistent(entry: &str) {
    wait_until(
        "the nodes to agree about the configuration",
        Duration::from_secs(60),
        || {
            std::process::Command::new("redis-cli")
                .args(["--cluster", "check", entry])
                .output()
                .is_ok_and(|o| {
                    o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("[ERR]")
                })
        },
    );
}

/// SET/GET pairs through slotmux from `threads` clients until `stop`. With `check_reads`, a
/// GET must return the value of the last acknowledged SET (not for failover tests, where a
/// write reported as "outcome unknown" may still have landed).
fn run_load(
    p: &Proxy,
    threads: usize,
    prefix: &str,
    stop: Arc<AtomicBool>,
    check_reads: bool,
) -> Vec<std::thread::JoinHandle<LoadReport>> {
    (0..threads)
        .map(|t| {
            let url = p.url();
            let stop = stop.clone();
            let prefix = format!("{prefix}:{t}");
            std::thread::spawn(move || {
                let mut r = LoadReport::default();
                let client = redis::Client::open(url).unwrap();
                let mut con = client.get_connection().unwrap();
                con.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let deadline = Instant::now() + Duration::from_secs(240);
                let mut last = std::collections::HashMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let k = format!("{prefix}:{}", i % 500);
                    let v = i.to_string();
                    let t0 = Instant::now();
                    match redis::cmd("SET").arg(&k).arg(&v).query::<()>(&mut con) {
                        Ok(()) => {
                            r.ok += 1;
                            last.insert(k.clone(), v.clone());
                        }
                        Err(e) => r.errors.push(format!("SET {k}: {e}")),
                    }
                    match redis::cmd("GET").arg(&k).query::<Option<String>>(&mut con) {
                        Ok(got)
                            if !check_reads
                                || got.as_deref() == last.get(&k).map(|s| s.as_str()) =>
                        {
                            r.ok += 1
                        }
                        Ok(got) => r
                            .errors
                            .push(format!("GET {k}: got {got:?}, want {:?}", last.get(&k))),
                        Err(e) => r.errors.push(format!("GET {k}: {e}")),
                    }
                    r.max_latency = r.max_latency.max(t0.elapsed());
                    i += 1;
                }
                r.acked = last.into_iter().collect();
                r
            })
        })
        .collect()
}

fn assert_acked_readable(p: &Proxy, reports: &[LoadReport]) {
    let mut con = p.conn();
    for r in reports {
        for (k, v) in &r.acked {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(v.as_str()),
                "acknowledged write to {k} lost"
            );
        }
    }
}

/// Stops a checked load and asserts what the no-error fault tests promise: no client-visible
/// error, every pre-written key and every acknowledged write readable.
fn finish_clean_load(
    p: &Proxy,
    c: &RedisCluster,
    stop: &AtomicBool,
    load: Vec<std::thread::JoinHandle<LoadReport>>,
    name: &str,
    took: Duration,
    keys: &[String],
) {
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = load.into_iter().map(|h| h.join().unwrap()).collect();
    summarize(name, &reports, took);
    let errors: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    assert!(
        errors.is_empty(),
        "client-visible errors during {name}: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_all_readable(p, c, keys);
    assert_acked_readable(p, &reports);
}

#[test]
fn live_resharding_under_load_has_no_errors_and_loses_nothing() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let keys = write_keys(&p, "reshard", 3000);
    let masters = c.masters();
    let (from, to) = (&masters[0], &masters[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&p, 4, "reshardload", stop.clone(), true);
    // Clients of every kind on slots the resharding moves.
    let mixed = mixed::Mixed::start(&p, "rs", 4, &mixed::first_slots(&from.2, 1000, 4));
    let t0 = Instant::now();
    let entry = format!("127.0.0.1:{}", from.0);
    redis_cli(&[
        "--cluster",
        "reshard",
        &entry,
        "--cluster-from",
        &from.1,
        "--cluster-to",
        &to.1,
        "--cluster-slots",
        "1000",
        "--cluster-yes",
    ]);
    wait_consistent(&entry);
    redis_cli(&["--cluster", "rebalance", &entry]);
    wait_consistent(&entry);
    let took = t0.elapsed();
    mixed.finish("reshard 1000 slots + rebalance", false);
    finish_clean_load(
        &p,
        c,
        &stop,
        load,
        "reshard 1000 slots + rebalance",
        took,
        &keys,
    );
    eprintln!(
        "[reshard] MOVED followed: {}, ASK followed: {}",
        p.shared.stats.moved.load(Ordering::Relaxed),
        p.shared.stats.ask.load(Ordering::Relaxed)
    );
    c.wait_healthy();
}

#[test]
fn scale_out_and_in_under_load_and_a_proxy_that_started_before_its_seed() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let keys = write_keys(&p, "scale", 3000);
    let new_port = support::free_port();
    // A second proxy whose only seed does not exist yet: it starts, answers CLUSTERDOWN, and
    // serves as soon as the seed appears.
    let late = Proxy::start(slotmux::Config::for_seeds(&[format!(
        "127.0.0.1:{new_port}"
    )]));
    wait_until(
        "the late proxy's first failed refresh",
        Duration::from_secs(10),
        || late.shared.cluster.stats.failed.load(Ordering::Relaxed) > 0,
    );
    {
        let mut con = late.conn();
        let e = redis::cmd("GET")
            .arg("x")
            .query::<Option<String>>(&mut con)
            .unwrap_err();
        assert!(e.to_string().contains("no cluster topology yet"), "{e}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&p, 4, "scaleload", stop.clone(), true);
    let t0 = Instant::now();
    c.spawn_extra(new_port);
    let entry = format!("127.0.0.1:{}", c.masters()[0].0);
    let newcomer = format!("127.0.0.1:{new_port}");
    redis_cli(&["--cluster", "add-node", &newcomer, &entry]);
    wait_until("the new node to join", Duration::from_secs(30), || {
        support::try_cmd(new_port, &["CLUSTER", "INFO"])
            .is_some_and(|i| i.contains("cluster_known_nodes:7") && i.contains("cluster_state:ok"))
    });
    late.wait_ready();
    assert_all_readable(&late, c, &keys);
    // Move a share of the slots onto the new master (a full rebalance moves ~4,000 slots
    // each way and takes minutes on this machine; 300 slots with their keys exercise the
    // same MOVED/ASK paths), then drain it and remove it.
    let new_id = c.node_id(new_port);
    let donor = c
        .masters()
        .iter()
        .find(|m| m.0 != new_port)
        .unwrap()
        .1
        .clone();
    redis_cli(&[
        "--cluster",
        "reshard",
        &entry,
        "--cluster-from",
        &donor,
        "--cluster-to",
        &new_id,
        "--cluster-slots",
        "300",
        "--cluster-yes",
    ]);
    wait_consistent(&entry);
    assert!(
        support::raw_cmd(new_port, &["DBSIZE"]) != ":0\r\n",
        "the new master received keys"
    );
    redis_cli(&[
        "--cluster",
        "reshard",
        &entry,
        "--cluster-from",
        &new_id,
        "--cluster-to",
        &donor,
        "--cluster-slots",
        "300",
        "--cluster-yes",
    ]);
    wait_consistent(&entry);
    redis_cli(&["--cluster", "del-node", &entry, &new_id]);
    c.forget(new_port);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    finish_clean_load(
        &p,
        c,
        &stop,
        load,
        "scale out to 4 masters and back",
        took,
        &keys,
    );
    c.wait_healthy();
}

#[test]
fn node_coming_back_on_a_new_address_is_followed() {
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let keys = write_keys(&p, "newaddr", 1000);
    // A master that is not a seed, restarted quickly (within the node timeout) on another
    // port with the same identity and data, as a pod with a new IP.
    let seeds: Vec<u16> = c.ports.iter().take(2).copied().collect();
    let v = c
        .masters()
        .iter()
        .map(|m| m.0)
        .find(|p| !seeds.contains(p))
        .unwrap();
    let id = c.node_id(v);
    let new_port = support::free_port();
    let t0 = Instant::now();
    c.stop(v);
    c.restart_on_new_port(v, new_port);
    wait_until(
        "the cluster to know the new address",
        Duration::from_secs(30),
        || {
            support::try_cmd(seeds[0], &["CLUSTER", "NODES"]).is_some_and(|n| {
                n.lines()
                    .any(|l| l.starts_with(&id) && l.contains(&format!(":{new_port}@")))
            })
        },
    );
    wait_until(
        "slotmux to serve every key again",
        Duration::from_secs(30),
        || {
            let mut con = p.conn();
            keys.iter().all(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<String>>(&mut con)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(k.as_str())
            })
        },
    );
    eprintln!(
        "[new address] {v} -> {new_port}: all keys served after {:?}",
        t0.elapsed()
    );
    let t = p.shared.cluster.snapshot();
    assert!(
        t.masters
            .iter()
            .any(|m| m.addr.ends_with(&format!(":{new_port}")))
            || t.replicas
                .iter()
                .flatten()
                .any(|r| r.addr.ends_with(&format!(":{new_port}"))),
        "slotmux's map has the new address"
    );
    // The old address is forgotten, its metric series with it (issue 14: they stayed for
    // ever, one set per address a pod ever had).
    let old = format!("node=\"127.0.0.1:{v}\"");
    wait_until(
        "the old address's metric series to be removed",
        Duration::from_secs(30),
        || !p.http_get("/metrics").1.contains(&old),
    );
    c.wait_healthy();
}

/// A runaway script keeps its master answering -BUSY to everyone until SCRIPT KILL (or
/// FUNCTION KILL) reaches that node: slotmux sends them to every master, each on a connection
/// of its own (the shared one waits behind the script), OK if one killed, NOTBUSY if none
/// was busy (issue 13).
#[test]
fn runaway_script_is_killed_through_slotmux() {
    use std::io::Write;
    let (_g, c) = cluster();
    let set_threshold = |ms: &str| {
        for port in c.live_ports() {
            support::raw_cmd(port, &["CONFIG", "SET", "busy-reply-threshold", ms]);
        }
    };
    // BUSY after 100 ms instead of 5 s, so the test is quick.
    set_threshold("100");
    let p = Proxy::for_cluster(c);
    let mut b = p.raw();
    let busy = || {
        c.masters()
            .iter()
            .any(|m| support::try_cmd(m.0, &["PING"]).is_some_and(|r| r.starts_with("-BUSY")))
    };
    let mut a = p.raw();
    a.write_all(&support::encode(&["EVAL", "while true do end", "0"]))
        .unwrap();
    wait_until(
        "a master busy with the script",
        Duration::from_secs(10),
        busy,
    );
    assert_eq!(support::ask(&mut b, &["SCRIPT", "KILL"]), "+OK\r\n");
    let killed = support::read_reply_string(&mut a);
    assert!(
        killed.starts_with("-ERR") && killed.contains("killed"),
        "{killed}"
    );
    assert_eq!(
        support::ask(&mut b, &["SCRIPT", "KILL"]),
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    // The same for a function.
    let lib = "#!lua name=spinlib\nredis.register_function{function_name='spin', callback=function() while true do end end, flags={'no-writes'}}";
    assert_eq!(
        support::ask(&mut b, &["FUNCTION", "LOAD", "REPLACE", lib]),
        "$7\r\nspinlib\r\n"
    );
    a.write_all(&support::encode(&["FCALL", "spin", "0"]))
        .unwrap();
    wait_until(
        "a master busy with the function",
        Duration::from_secs(10),
        busy,
    );
    assert_eq!(support::ask(&mut b, &["FUNCTION", "KILL"]), "+OK\r\n");
    let killed = support::read_reply_string(&mut a);
    assert!(killed.starts_with("-"), "{killed}");
    assert_eq!(
        support::ask(&mut b, &["FUNCTION", "KILL"]),
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    assert_eq!(support::ask(&mut a, &["PING"]), "+PONG\r\n");
    support::ask(&mut b, &["FUNCTION", "DELETE", "spinlib"]);
    set_threshold("5000");
    c.wait_healthy();
}

/// CLIENT PAUSE WRITE holds slotmux's clients' writes (and EXEC of a writing transaction)
/// until CLIENT UNPAUSE, in order, while reads go on; the masters pause too (issue 13: it was
/// refused).
#[test]
fn client_pause_holds_writes_until_unpause() {
    use std::io::Write;
    let (_g, c) = cluster();
    let p = Proxy::for_cluster(c);
    let mut admin = p.raw();
    let mut writer = p.raw();
    let mut reader = p.raw();
    assert_eq!(
        support::ask(&mut admin, &["SET", "pause:k", "0"]),
        "+OK\r\n"
    );
    assert_eq!(
        // Longer than the clients' 30 s read timeout: a read held by mistake fails the test.
        support::ask(&mut admin, &["CLIENT", "PAUSE", "60000", "WRITE"]),
        "+OK\r\n"
    );
    writer
        .write_all(&support::encode(&["SET", "pause:k", "1"]))
        .unwrap();
    writer
        .write_all(&support::encode(&["GET", "pause:k"]))
        .unwrap();
    let blocked = |s: &mut std::net::TcpStream| {
        support::ask(s, &["INFO", "clients"]).contains("blocked_clients:1")
    };
    wait_until("the write to be held", Duration::from_secs(10), || {
        blocked(&mut reader)
    });
    // Reads go on, and see the value from before the held write.
    assert_eq!(
        support::ask(&mut reader, &["GET", "pause:k"]),
        "$1\r\n0\r\n"
    );
    // A syntax error is answered at once.
    assert!(support::ask(&mut reader, &["SET", "pause:k"]).starts_with("-ERR wrong number"));
    // A transaction of reads and PING (neither write nor may-replicate) runs.
    assert_eq!(support::ask(&mut reader, &["MULTI"]), "+OK\r\n");
    assert_eq!(support::ask(&mut reader, &["PING"]), "+QUEUED\r\n");
    assert_eq!(
        support::ask(&mut reader, &["GET", "pause:k"]),
        "+QUEUED\r\n"
    );
    assert_eq!(
        support::ask(&mut reader, &["EXEC"]),
        "*2\r\n+PONG\r\n$1\r\n0\r\n"
    );
    assert_eq!(support::ask(&mut admin, &["CLIENT", "UNPAUSE"]), "+OK\r\n");
    // The held write goes, then the GET behind it.
    assert_eq!(support::read_reply_string(&mut writer), "+OK\r\n");
    assert_eq!(support::read_reply_string(&mut writer), "$1\r\n1\r\n");
    assert!(!blocked(&mut reader));
    assert_eq!(
        support::ask(&mut admin, &["CLIENT", "PAUSE", "x"]),
        "-ERR timeout is not an integer or out of range\r\n"
    );
    c.wait_healthy();
}

/// `CONFIG SET busy-reply-threshold ms` on every node, through slotmux.
fn busy_threshold(con: &mut redis::Connection, ms: u64) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("busy-reply-threshold")
        .arg(ms)
        .query(con)
        .unwrap();
}

/// A script past the busy threshold blocks its master as one Redis is blocked: PING through
/// slotmux answers BUSY (that master answers it, on a connection of its own), FUNCTION STATS
/// shows the running script, SCRIPT KILL ends it, and PING is PONG again.
#[test]
fn a_busy_script_shows_in_ping_and_can_be_killed() {
    use std::io::Write;
    let (_serial, c) = cluster();
    let p = Proxy::for_cluster(c);
    let mut admin = p.conn();
    busy_threshold(&mut admin, 10);
    let lib = "#!lua name=busylib\nredis.register_function('spin', function() local a = 1 while true do a = a + 1 end end)";
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(lib)
        .query(&mut admin)
        .unwrap();
    // Nothing slow yet: PING is answered by slotmux.
    let pong: String = redis::cmd("PING").query(&mut admin).unwrap();
    assert_eq!(pong, "PONG");

    let mut spinner = p.raw();
    spinner
        .write_all(&support::encode(&["FCALL", "spin", "0"]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r: redis::RedisResult<String> = redis::cmd("PING").query(&mut admin);
    let e = r.expect_err("PING answered while a master runs a busy script");
    assert_eq!(e.code(), Some("BUSY"), "{e}");
    let stats: redis::Value = redis::cmd("FUNCTION")
        .arg("STATS")
        .query(&mut admin)
        .unwrap();
    assert!(
        format!("{stats:?}").contains("spin"),
        "FUNCTION STATS does not show the running function: {stats:?}"
    );
    let _: () = redis::cmd("FUNCTION")
        .arg("KILL")
        .query(&mut admin)
        .unwrap();
    wait_until("PING to answer PONG again", Duration::from_secs(10), || {
        redis::cmd("PING").query::<String>(&mut admin).is_ok()
    });
    let killed = support::read_reply_string(&mut spinner);
    assert!(killed.contains("killed"), "{killed}");
    // A client's own pending request does not turn its PING into BUSY (Redis answers the
    // pipelined PING after the request).
    let mut s = p.raw();
    let mut batch = support::encode(&["EVAL", "local t = redis.call('TIME') return 1", "0"]);
    batch.extend(support::encode(&["PING"]));
    s.write_all(&batch).unwrap();
    assert_eq!(support::read_reply_string(&mut s), ":1\r\n");
    assert_eq!(support::read_reply_string(&mut s), "+PONG\r\n");
    busy_threshold(&mut admin, 5000);
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("busylib")
        .query(&mut admin)
        .unwrap();
}

/// With several workers, the client running the script and the one sending PING may be on
/// different workers: the health probe's `-BUSY` tells every worker.
#[test]
fn a_busy_script_shows_in_ping_across_workers() {
    use std::io::Write;
    let (_serial, c) = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.threads = Some(2));
    let mut admin = p.conn();
    busy_threshold(&mut admin, 10);
    // The second client goes to the other worker (the least loaded): the script runs there,
    // PING comes from the first.
    let mut spinner = p.raw();
    spinner
        .write_all(&support::encode(&[
            "EVAL",
            "local a = 1 while true do a = a + 1 end",
            "0",
        ]))
        .unwrap();
    let pinger = &mut admin;
    wait_until(
        "PING to meet the busy script",
        Duration::from_secs(10),
        || {
            matches!(
                redis::cmd("PING").query::<String>(pinger),
                Err(e) if e.code() == Some("BUSY")
            )
        },
    );
    let _: () = redis::cmd("SCRIPT").arg("KILL").query(pinger).unwrap();
    wait_until("PING to answer PONG again", Duration::from_secs(10), || {
        redis::cmd("PING").query::<String>(pinger).is_ok()
    });
    let killed = support::read_reply_string(&mut spinner);
    assert!(killed.contains("killed"), "{killed}");
    busy_threshold(&mut admin, 5000);
}
