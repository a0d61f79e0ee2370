//! Transactions pinned to one master, and blocking commands on connections of their own.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster;
use crate::support::{ask, encode, raw_cmd, wait_until, Proxy};

#[test]
fn transaction_on_one_slot_commits() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    ask(&mut s, &["DEL", "{user1}a", "{user1}b"]);
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(
        ask(&mut s, &["PING"]),
        "+QUEUED\r\n",
        "keyless first: queued before the pin"
    );
    assert_eq!(ask(&mut s, &["SET", "{user1}a", "1"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{user1}b"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["GET", "{user1}a"]), "+QUEUED\r\n");
    assert_eq!(
        ask(&mut s, &["EXEC"]),
        "*4\r\n+PONG\r\n+OK\r\n:1\r\n$1\r\n1\r\n"
    );
    // The session is back to normal routing afterwards.
    assert_eq!(ask(&mut s, &["SET", "{other}x", "y"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "-ERR EXEC without MULTI\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(
        ask(&mut s, &["MULTI"]),
        "-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(ask(&mut s, &["DISCARD"]), "+OK\r\n");
    // Keyless-only transaction runs on any master.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["ECHO", "x"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n$1\r\nx\r\n");
}

#[test]
fn transaction_across_slots_aborts_like_redis_cluster() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    ask(&mut s, &["DEL", "{ta}x"]);
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{ta}x", "1"]), "+QUEUED\r\n");
    assert_eq!(
        ask(&mut s, &["SET", "{tb}y", "2"]),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(
        ask(&mut s, &["GET", "{ta}x"]),
        "$-1\r\n",
        "nothing of the aborted transaction ran"
    );
}

/// FLUSHALL, CONFIG SET, SCRIPT LOAD... inside MULTI run in the transaction on its master
/// and then on the other nodes; one failing where the transaction ran is not repeated.
#[test]
fn cluster_wide_writes_in_a_transaction_reach_every_node() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let mut s = p.raw();
    let script = "return 'txecho'";
    let sha = sha1_smol::Sha1::from(script).digest().to_string();
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    for cmd in [
        &["SET", "{te}k", "1"][..],
        &["CONFIG", "SET", "slowlog-max-len", "129"],
        &["SCRIPT", "LOAD", script],
        &["CONFIG", "SET", "maxmemory", "bla"],
    ] {
        assert_eq!(ask(&mut s, cmd), "+QUEUED\r\n", "{cmd:?}");
    }
    let exec = ask(&mut s, &["EXEC"]);
    let head = format!("*4\r\n+OK\r\n+OK\r\n$40\r\n{sha}\r\n-ERR CONFIG SET failed");
    assert!(exec.starts_with(&head), "{exec}");
    // Every master (replicas too once CLUSTER SLOTS lists them: Redis 7 leaves out a
    // replica whose replication offset is still 0, as on a cluster nothing wrote to yet).
    for (port, _, _) in c.masters() {
        assert_eq!(
            raw_cmd(port, &["CONFIG", "GET", "slowlog-max-len"]),
            "*2\r\n$15\r\nslowlog-max-len\r\n$3\r\n129\r\n",
            "node {port}"
        );
        assert_ne!(
            raw_cmd(port, &["CONFIG", "GET", "maxmemory"]),
            "*2\r\n$9\r\nmaxmemory\r\n$3\r\nbla\r\n"
        );
    }
    for (port, _, _) in c.masters() {
        assert_eq!(
            raw_cmd(port, &["SCRIPT", "EXISTS", &sha]),
            "*1\r\n:1\r\n",
            "master {port}"
        );
    }
    assert_eq!(
        ask(&mut s, &["CONFIG", "SET", "slowlog-max-len", "128"]),
        "+OK\r\n"
    );
    // Reads across the cluster are still refused in MULTI: they would see one master.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert!(ask(&mut s, &["DBSIZE"]).starts_with("-ERR slotmux: 'dbsize' inside a transaction"));
    assert!(ask(&mut s, &["EXEC"]).starts_with("-EXECABORT"));
}

/// Commands slotmux answers itself (CLIENT SETNAME, SLOWLOG...) run inside a transaction
/// when it runs, their replies in their places; not at all when WATCH aborts it.
#[test]
fn commands_slotmux_answers_run_inside_a_transaction() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    let mut other = p.raw();
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    for cmd in [
        &["CLIENT", "SETNAME", "txname"][..],
        &["SET", "{tl}k", "1"],
        &["CLIENT", "GETNAME"],
        &["GET", "{tl}k"],
        &["SLOWLOG", "RESET"],
    ] {
        assert_eq!(ask(&mut s, cmd), "+QUEUED\r\n", "{cmd:?}");
    }
    let list = ask(&mut other, &["CLIENT", "LIST"]);
    assert!(
        list.contains(" name= ") && list.contains(" multi=5 "),
        "{list}"
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]),
        "*5\r\n+OK\r\n+OK\r\n$6\r\ntxname\r\n$1\r\n1\r\n+OK\r\n"
    );
    // Only locals: the node runs an empty transaction.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["CLIENT", "GETNAME"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n$6\r\ntxname\r\n");
    // WATCH aborts: nothing of the transaction runs, the name stays.
    assert_eq!(ask(&mut s, &["WATCH", "{tl}k"]), "+OK\r\n");
    assert_eq!(ask(&mut other, &["SET", "{tl}k", "2"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["CLIENT", "SETNAME", "never"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*-1\r\n");
    assert_eq!(ask(&mut s, &["CLIENT", "GETNAME"]), "$6\r\ntxname\r\n");
}

#[test]
fn watch_aborts_exec_when_the_key_changes() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    let mut other = p.raw();
    ask(&mut s, &["SET", "{w}k", "0"]);
    assert_eq!(ask(&mut s, &["WATCH", "{w}k"]), "+OK\r\n");
    assert_eq!(ask(&mut other, &["SET", "{w}k", "changed"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{w}k", "mine"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*-1\r\n", "WATCH saw the change");
    assert_eq!(ask(&mut s, &["GET", "{w}k"]), "$7\r\nchanged\r\n");
    // Without interference the same sequence commits.
    assert_eq!(ask(&mut s, &["WATCH", "{w}k"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{w}k", "mine"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n+OK\r\n");
}

#[test]
fn blpop_is_woken_while_others_keep_the_pipeline_busy() {
    let p = Proxy::for_cluster(cluster());
    let mut c = p.conn();
    let _: () = redis::cmd("DEL").arg("bq:list").query(&mut c).unwrap();
    let url = p.url();
    let blocked = std::thread::spawn(move || {
        let client = redis::Client::open(url).unwrap();
        let mut con = client.get_connection().unwrap();
        let r: (String, String) = redis::cmd("BLPOP")
            .arg("bq:list")
            .arg(0)
            .query(&mut con)
            .unwrap();
        r
    });
    wait_until("the BLPOP to be blocked", Duration::from_secs(10), || {
        p.shared.blocked.load(Ordering::Relaxed) == 1
    });
    // 50 clients pipeline through the same proxy (and the same shared connections) meanwhile.
    let workers: Vec<_> = (0..50)
        .map(|w| {
            let url = p.url();
            std::thread::spawn(move || {
                let client = redis::Client::open(url).unwrap();
                let mut con = client.get_connection().unwrap();
                for round in 0..5 {
                    let mut pipe = redis::pipe();
                    for i in 0..40 {
                        pipe.cmd("SET")
                            .arg(format!("bq:w{w}:{i}"))
                            .arg(round)
                            .ignore();
                        pipe.cmd("GET").arg(format!("bq:w{w}:{i}"));
                    }
                    let got: Vec<i64> = pipe.query(&mut con).unwrap();
                    assert!(got.iter().all(|&v| v == round));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        !blocked.is_finished(),
        "BLPOP returned before anything was pushed"
    );
    let _: i64 = redis::cmd("LPUSH")
        .arg("bq:list")
        .arg("hello")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        blocked.join().unwrap(),
        ("bq:list".to_string(), "hello".to_string())
    );
    wait_until(
        "the blocking connection to be released",
        Duration::from_secs(10),
        || p.shared.blocked.load(Ordering::Relaxed) == 0,
    );
    // A timeout is honoured: nil after it expires.
    let r: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("bq:empty")
        .arg("0.2")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, None);
}

#[test]
fn client_vanishing_mid_block_releases_the_backend_connection() {
    let p = Proxy::for_cluster(cluster());
    let owner = cluster().owner_of(slotmux::cluster::key_slot(b"{vanish}q"));
    let blocked_on_node = || -> i64 {
        let info = raw_cmd(owner, &["INFO", "clients"]);
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = blocked_on_node();
    let mut s = p.raw();
    s.write_all(&encode(&["BLPOP", "{vanish}q", "0"])).unwrap();
    wait_until(
        "the node to see the blocked client",
        Duration::from_secs(10),
        || blocked_on_node() == before + 1,
    );
    drop(s);
    wait_until(
        "the node to drop the blocked client",
        Duration::from_secs(10),
        || blocked_on_node() == before,
    );
    wait_until(
        "slotmux to release the permit",
        Duration::from_secs(10),
        || p.shared.blocked.load(Ordering::Relaxed) == 0,
    );
}
