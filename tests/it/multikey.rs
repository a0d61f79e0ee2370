//! Commands split across slots (MGET, MSET, DEL, EXISTS, TOUCH, UNLINK) and commands sent to
//! every master (DBSIZE, KEYS, SCAN, SCRIPT LOAD/EXISTS, CONFIG SET, RANDOMKEY), plus WAIT.

use std::collections::HashSet;

use crate::cluster;
use crate::support::{self, raw_cmd, wait_until, Proxy};
use std::time::Duration;

#[test]
fn mget_mset_del_of_10000_keys_over_every_master() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let keys: Vec<String> = (0..10_000).map(|i| format!("mk:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg(format!("v{k}"));
    }
    let _: () = mset.query(&mut con).unwrap();
    // Every master got a share.
    for (port, _, _) in cluster().masters() {
        let sample = keys
            .iter()
            .filter(|k| raw_cmd(port, &["EXISTS", k]) == ":1\r\n")
            .take(1)
            .count();
        assert_eq!(sample, 1, "master {port} got none of the keys");
    }
    let mut mget = redis::cmd("MGET");
    for k in keys.iter().rev() {
        mget.arg(k);
    }
    mget.arg("mk:missing");
    let vals: Vec<Option<String>> = mget.query(&mut con).unwrap();
    assert_eq!(vals.len(), 10_001);
    for (k, v) in keys.iter().rev().zip(&vals) {
        assert_eq!(v.as_deref(), Some(format!("v{k}").as_str()));
    }
    assert_eq!(vals[10_000], None);

    let mut exists = redis::cmd("EXISTS");
    exists.arg(&keys[0]).arg(&keys[0]).arg("mk:missing");
    for k in &keys[1..100] {
        exists.arg(k);
    }
    assert_eq!(
        exists.query::<i64>(&mut con).unwrap(),
        101,
        "EXISTS counts repeats, like Redis"
    );
    let mut touch = redis::cmd("TOUCH");
    for k in &keys[..50] {
        touch.arg(k);
    }
    assert_eq!(touch.query::<i64>(&mut con).unwrap(), 50);
    let mut del = redis::cmd("DEL");
    for k in &keys[..5000] {
        del.arg(k);
    }
    del.arg("mk:missing");
    assert_eq!(del.query::<i64>(&mut con).unwrap(), 5000);
    let mut unlink = redis::cmd("UNLINK");
    for k in &keys[5000..] {
        unlink.arg(k);
    }
    assert_eq!(unlink.query::<i64>(&mut con).unwrap(), 5000);
    let left: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys[0])
        .arg(&keys[9999])
        .query(&mut con)
        .unwrap();
    assert_eq!(left, vec![None, None]);
    // Same-slot MSETNX is routed; cross-slot MSETNX is refused (it must be atomic).
    let r: redis::RedisResult<i64> = redis::cmd("MSETNX")
        .arg("a1")
        .arg("1")
        .arg("b1")
        .arg("2")
        .query(&mut con);
    let e = r.unwrap_err();
    assert!(
        format!("{e:?} {e}").to_lowercase().contains("crossslot"),
        "{e:?}"
    );
    assert_eq!(
        redis::cmd("MSETNX")
            .arg("{n}a")
            .arg("1")
            .arg("{n}b")
            .arg("2")
            .query::<i64>(&mut con)
            .unwrap(),
        1
    );
}

/// A SCAN page that a master leaves short goes on with the next master in the same call, so
/// a small dataset comes back in one call with cursor 0, as from one Redis (issue 13).
#[test]
fn a_small_scan_is_one_call_with_cursor_zero() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let keys: Vec<String> = (0..5).map(|i| format!("{{scan-small{i}}}k")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(1).query(&mut con).unwrap();
    }
    // COUNT covers every master's whole keyspace: one call visits them all.
    let (next, mut batch): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("{scan-small*")
        .arg("COUNT")
        .arg(1_000_000)
        .query(&mut con)
        .unwrap();
    batch.sort();
    assert_eq!((next, batch), (0, keys.clone()));
    // Nothing matches: still one call, cursor 0.
    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("no-such-key-*")
        .arg("COUNT")
        .arg(1_000_000)
        .query(&mut con)
        .unwrap();
    assert_eq!((next, batch.len()), (0, 0));
}

#[test]
fn dbsize_keys_and_scan_cover_the_whole_cluster() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let keys: Vec<String> = (0..3000).map(|i| format!("scan:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();

    let total = cluster().dbsize();
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    // Other tests write concurrently: the proxy's sum is close to the direct sum.
    assert!(
        (dbsize - total).abs() < 2000 && dbsize >= 3000,
        "dbsize {dbsize} vs {total}"
    );

    let found: Vec<String> = redis::cmd("KEYS").arg("scan:*").query(&mut con).unwrap();
    let found: HashSet<String> = found.into_iter().collect();
    assert_eq!(found, keys.iter().cloned().collect::<HashSet<_>>());

    // A full SCAN returns every key that existed throughout, even while keys are added.
    let mut seen = HashSet::new();
    let mut cursor = 0u64;
    let mut rounds = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(200)
            .query(&mut con)
            .unwrap();
        seen.extend(batch);
        let _: () = redis::cmd("SET")
            .arg(format!("scan:new:{rounds}"))
            .arg(1)
            .query(&mut con)
            .unwrap();
        rounds += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
        assert!(rounds < 10_000, "SCAN did not terminate");
    }
    for k in &keys {
        assert!(seen.contains(k), "SCAN missed {k}");
    }
    assert!(rounds >= 3, "SCAN went through several masters");
    assert!(redis::cmd("RANDOMKEY")
        .query::<Option<String>>(&mut con)
        .unwrap()
        .is_some());
}

#[test]
fn script_load_reaches_every_master_and_config_set_every_node() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])")
        .query(&mut con)
        .unwrap();
    for (port, _, _) in cluster().masters() {
        assert_eq!(
            raw_cmd(port, &["SCRIPT", "EXISTS", &sha]),
            "*1\r\n:1\r\n",
            "master {port}"
        );
    }
    // EVALSHA on keys of every master.
    for i in 0..30 {
        let k = format!("sha:{i}");
        let _: () = redis::cmd("SET").arg(&k).arg(i).query(&mut con).unwrap();
        let v: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(&k)
            .query(&mut con)
            .unwrap();
        assert_eq!(v, i);
    }
    let ex: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000")
        .query(&mut con)
        .unwrap();
    assert_eq!(ex, vec![1, 0]);

    // A cluster created moments ago may not list its replicas yet (gossip): wait until
    // slotmux's map has them all, as it will after its next refresh.
    wait_until(
        "slotmux to know every replica",
        Duration::from_secs(30),
        || {
            p.shared
                .cluster
                .request_refresh(slotmux::metrics::RefreshReason::Periodic);
            let t = p.shared.cluster.snapshot();
            t.masters.len() + t.replicas.iter().map(|r| r.len()).sum::<usize>()
                == cluster().live_ports().len()
        },
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg("129")
        .query(&mut con)
        .unwrap();
    for port in cluster().live_ports() {
        assert!(
            raw_cmd(port, &["CONFIG", "GET", "slowlog-max-len"]).contains("129"),
            "node {port}"
        );
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg("128")
        .query(&mut con)
        .unwrap();
    let bad: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("no-such-param")
        .arg("1")
        .query(&mut con);
    assert!(bad.is_err());
}

#[test]
fn wait_goes_to_the_node_of_the_last_write() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    for i in 0..10 {
        let _: () = redis::cmd("SET")
            .arg(format!("wait:{i}"))
            .arg(1)
            .query(&mut con)
            .unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(2000).query(&mut con).unwrap();
        assert_eq!(acked, 1, "the replica of the written master acknowledged");
    }
    let _ = support::keys_for_every_slot;
}

#[test]
fn evalsha_after_script_flush_on_one_master_is_transparent() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let body = "return 'nos-' .. redis.call('GET', KEYS[1])";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(body)
        .query(&mut con)
        .unwrap();
    let key = "{noscript}k";
    let _: () = redis::cmd("SET").arg(key).arg("v").query(&mut con).unwrap();
    let owner = cluster().owner_of(slotmux::cluster::key_slot(key.as_bytes()));
    assert_eq!(raw_cmd(owner, &["SCRIPT", "FLUSH"]), "+OK\r\n");
    assert_eq!(raw_cmd(owner, &["SCRIPT", "EXISTS", &sha]), "*1\r\n:0\r\n");
    let v: String = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(key)
        .query(&mut con)
        .unwrap();
    assert_eq!(v, "nos-v");
    assert_eq!(
        raw_cmd(owner, &["SCRIPT", "EXISTS", &sha]),
        "*1\r\n:1\r\n",
        "slotmux loaded it again"
    );
    // A script slotmux never saw still gets Redis's own NOSCRIPT.
    let e = redis::cmd("EVALSHA")
        .arg("ffffffffffffffffffffffffffffffffffffffff")
        .arg(0)
        .query::<String>(&mut con)
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("noscript"),
        "{e:?}"
    );
}
