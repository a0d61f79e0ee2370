//! Slots moving behind slotmux's back: MOVED after a finished migration, ASK (and TRYAGAIN)
//! during a live one. Done with real CLUSTER SETSLOT and MIGRATE on the real cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster;
use crate::support::{self, raw_cmd, Proxy};

/// Picks a slot owned by some master and a different master to move it to.
fn pick(slot_key: &str) -> (u16, u16, u16) {
    let c = cluster();
    let slot = slotmux::cluster::key_slot(slot_key.as_bytes());
    let src = c.owner_of(slot);
    let dst = c.masters().iter().map(|m| m.0).find(|&p| p != src).unwrap();
    (slot, src, dst)
}

pub(crate) fn begin_migration(slot: u16, src: u16, dst: u16) {
    let c = cluster();
    let (src_id, dst_id) = (c.node_id(src), c.node_id(dst));
    let s = slot.to_string();
    assert_eq!(
        raw_cmd(dst, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id]),
        "+OK\r\n"
    );
    assert_eq!(
        raw_cmd(src, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id]),
        "+OK\r\n"
    );
}

pub(crate) fn migrate_keys(src: u16, dst: u16, keys: &[String]) {
    let mut args: Vec<String> = vec![
        "MIGRATE".into(),
        "127.0.0.1".into(),
        dst.to_string(),
        "".into(),
        "0".into(),
        "5000".into(),
        "KEYS".into(),
    ];
    args.extend(keys.iter().cloned());
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert_eq!(raw_cmd(src, &args), "+OK\r\n");
}

pub(crate) fn finish_migration(slot: u16, src: u16, dst: u16) {
    let c = cluster();
    let dst_id = c.node_id(dst);
    let s = slot.to_string();
    // Move whatever is left, then assign the slot everywhere (target first, as redis-cli does).
    loop {
        let r = raw_cmd(src, &["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
        let keys: Vec<String> = r.lines().skip(2).step_by(2).map(String::from).collect();
        if keys.is_empty() {
            break;
        }
        migrate_keys(src, dst, &keys);
    }
    assert_eq!(
        raw_cmd(dst, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]),
        "+OK\r\n"
    );
    assert_eq!(
        raw_cmd(src, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]),
        "+OK\r\n"
    );
    for (p, _, _) in c.masters() {
        let _ = raw_cmd(p, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
    }
}

#[test]
fn moved_after_slot_migrates_behind_slotmux() {
    let (slot, src, dst) = pick("{moved-test}");
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let keys: Vec<String> = (0..20).map(|i| format!("{{moved-test}}:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut con).unwrap();
    }
    begin_migration(slot, src, dst);
    finish_migration(slot, src, dst);
    assert_eq!(cluster().owner_of(slot), dst);
    // slotmux still maps the slot to `src`: the first GET gets MOVED and follows it.
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert_eq!(&v, k);
    }
    assert!(
        p.shared.stats.moved.load(Ordering::Relaxed) >= 1,
        "a MOVED was followed"
    );
    // The slot map was patched: a new write goes straight to the new owner.
    let _: () = redis::cmd("SET")
        .arg("{moved-test}:new")
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert_eq!(raw_cmd(dst, &["EXISTS", "{moved-test}:new"]), ":1\r\n");
}

#[test]
fn ask_during_live_migration_and_tryagain_for_split_multikey() {
    let (slot, src, dst) = pick("{ask-test}");
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let keys: Vec<String> = (0..10).map(|i| format!("{{ask-test}}:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("old-{k}"))
            .query(&mut con)
            .unwrap();
    }
    begin_migration(slot, src, dst);
    migrate_keys(src, dst, &keys[..5]);

    // Reads of migrated and not-yet-migrated keys both work.
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert_eq!(v, format!("old-{k}"));
    }
    assert!(
        p.shared.stats.ask.load(Ordering::Relaxed) >= 5,
        "ASK followed for migrated keys"
    );
    // Writes: a migrated key, an unmigrated one, and a brand new key (goes to the target).
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("new0")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&keys[9])
        .arg("new9")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("{ask-test}:fresh")
        .arg("f")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        redis::cmd("GET")
            .arg(&keys[0])
            .query::<String>(&mut con)
            .unwrap(),
        "new0"
    );
    assert_eq!(
        redis::cmd("GET")
            .arg(&keys[9])
            .query::<String>(&mut con)
            .unwrap(),
        "new9"
    );
    assert_eq!(
        redis::cmd("GET")
            .arg("{ask-test}:fresh")
            .query::<String>(&mut con)
            .unwrap(),
        "f"
    );
    // The slot map was not touched by ASK: still no MOVED, slot still routed to src.
    assert_eq!(slotmux_owner(&p, slot), src);

    // A multi-key read spanning both nodes gets TRYAGAIN until the migration finishes,
    // which happens in the background; the client just sees the answer.
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        finish_migration(slot, src, dst);
    });
    let vals: Vec<String> = redis::cmd("MGET")
        .arg(&keys[1])
        .arg(&keys[8])
        .query(&mut con)
        .unwrap();
    assert_eq!(
        vals,
        vec![format!("old-{}", keys[1]), format!("old-{}", keys[8])]
    );
    finisher.join().unwrap();
    assert!(
        p.shared
            .stats
            .retries
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum::<u64>()
            >= 1,
        "TRYAGAIN was retried"
    );
    for k in &keys[1..9] {
        let v: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert_eq!(v, format!("old-{k}"));
    }
    assert_eq!(
        support::raw_cmd(dst, &["EXISTS", "{ask-test}:fresh"]),
        ":1\r\n"
    );
}

fn slotmux_owner(p: &Proxy, slot: u16) -> u16 {
    let t = p.shared.cluster.snapshot();
    let addr = t.master_for(slot).unwrap().addr.to_string();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}
