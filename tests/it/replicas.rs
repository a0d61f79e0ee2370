//! Reads from replicas (issue 16): `--read-from replica`, and READONLY / READWRITE on one
//! connection, checked by where the requests went (slotmux's per-node counters, and the
//! replica's own command counts). Failures of a replica: tests/faults.

use std::time::Duration;

use crate::cluster;
use crate::support::{raw_cmd, wait_until, Proxy};
use slotmux::cluster::key_slot;

/// `cmdstat_get` calls on one node.
fn gets_on(port: u16) -> u64 {
    raw_cmd(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn read_from_replica_sends_reads_to_the_replica_and_writes_to_the_master() {
    let c = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.read_from = "replica".into());
    let key = "rr:{replica-reads}";
    let slot = key_slot(key.as_bytes());
    let master = c.owner_of(slot);
    let replica = c.replica_of(master);
    let mut con = p.conn();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v1")
        .query(&mut con)
        .unwrap();
    // WAIT goes to the node of the client's last write: the master.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    assert_eq!(acked, 1);
    p.wait_replica_ready(slot);
    wait_until(
        "the SET and WAIT in the counters",
        Duration::from_secs(10),
        || p.sent_to(master) >= 2.0,
    );
    let (to_master, to_replica, replica_gets) =
        (p.sent_to(master), p.sent_to(replica), gets_on(replica));
    for _ in 0..20 {
        let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert_eq!(v, "v1");
    }
    wait_until(
        "20 GETs counted on the replica",
        Duration::from_secs(10),
        || p.sent_to(replica) >= to_replica + 20.0,
    );
    assert_eq!(p.sent_to(master), to_master, "a GET went to the master");
    assert!(gets_on(replica) >= replica_gets + 20);

    // A write goes to the master, and a read after it sees it once replicated.
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v2")
        .query(&mut con)
        .unwrap();
    let _: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    assert_eq!(v, "v2");

    // A split read: each part on its slot's replica; the merge is the same.
    let keys: Vec<String> = (0..6).map(|i| format!("rr:mget:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut con).unwrap();
        let _: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    }
    for k in &keys {
        p.wait_replica_ready(key_slot(k.as_bytes()));
    }
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    assert_eq!(
        got,
        keys.iter().map(|k| Some(k.clone())).collect::<Vec<_>>()
    );

    // Inside MULTI and after WATCH, reads stay on the master (counters settle first: they
    // are flushed about once a second).
    std::thread::sleep(Duration::from_millis(1200));
    let before = p.sent_to(replica);
    let _: () = redis::cmd("WATCH").arg(key).query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    assert_eq!(v, "v2");
    let r: Vec<String> = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(key)
        .query(&mut con)
        .unwrap();
    assert_eq!(r, vec!["v2".to_string()]);
    // READWRITE: this connection reads from the master again.
    let _: () = redis::cmd("READWRITE").query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    assert_eq!(v, "v2");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        p.sent_to(replica),
        before,
        "WATCH, MULTI or READWRITE read on the replica"
    );
}

#[test]
fn readonly_opts_one_connection_in() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let key = "rr:{readonly-conn}";
    let slot = key_slot(key.as_bytes());
    let master = c.owner_of(slot);
    let replica = c.replica_of(master);
    let mut con = p.conn();
    let _: () = redis::cmd("SET").arg(key).arg("x").query(&mut con).unwrap();
    let _: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    p.wait_replica_ready(slot);
    // Default (--read-from master): reads on the master.
    for _ in 0..5 {
        let _: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    }
    wait_until("reads on the master", Duration::from_secs(10), || {
        p.sent_to(master) >= 7.0
    });
    assert_eq!(p.sent_to(replica), 0.0);
    let _: () = redis::cmd("READONLY").query(&mut con).unwrap();
    for _ in 0..10 {
        let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert_eq!(v, "x");
    }
    wait_until("reads on the replica", Duration::from_secs(10), || {
        p.sent_to(replica) >= 10.0
    });
    // Another connection of the same proxy still reads from the master.
    let mut other = p.conn();
    let m = p.sent_to(master);
    for _ in 0..5 {
        let _: String = redis::cmd("GET").arg(key).query(&mut other).unwrap();
    }
    wait_until(
        "the other client's reads on the master",
        Duration::from_secs(10),
        || p.sent_to(master) >= m + 5.0,
    );
    // RESET forgets READONLY.
    let _: String = redis::cmd("RESET").query(&mut con).unwrap();
    let r = p.sent_to(replica);
    for _ in 0..5 {
        let _: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(p.sent_to(replica), r);
}
