//! Transactions, blocked commands and sharded subscribers while their slot moves (issue 17):
//! a naive client sees only `+QUEUED` and the EXEC result, its BLPOP woken by its push, its
//! shard messages, never MOVED or ASK. Slots are moved with real CLUSTER SETSLOT and MIGRATE
//! behind slotmux's back.

use std::io::Write;
use std::sync::atomic::Ordering;

use crate::cluster;
use crate::redirects::{begin_migration, finish_migration, migrate_keys};
use crate::support::{ask, raw_cmd, wait_until, Proxy};
use std::time::Duration;

/// The slot of `tag`, its owner, and another master.
fn pick(tag: &str) -> (u16, u16, u16) {
    let c = cluster();
    let slot = slotmux::cluster::key_slot(tag.as_bytes());
    let src = c.owner_of(slot);
    let dst = c.masters().iter().map(|m| m.0).find(|&p| p != src).unwrap();
    (slot, src, dst)
}

#[test]
fn transaction_follows_a_slot_that_moved_while_it_was_queued() {
    let (slot, src, dst) = pick("{tx-moved}");
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    assert_eq!(ask(&mut s, &["SET", "{tx-moved}a", "1"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{tx-moved}a"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["SET", "{tx-moved}b", "x"]), "+QUEUED\r\n");
    begin_migration(slot, src, dst);
    finish_migration(slot, src, dst);
    let moved_before = p.shared.stats.moved.load(Ordering::Relaxed);
    // slotmux still sends the batch to the old owner: it answers MOVED for the queued
    // commands and EXECABORT; nothing ran there, so slotmux replays it on the new owner.
    assert_eq!(ask(&mut s, &["EXEC"]), "*2\r\n:2\r\n+OK\r\n");
    assert!(p.shared.stats.moved.load(Ordering::Relaxed) > moved_before);
    assert_eq!(raw_cmd(dst, &["GET", "{tx-moved}a"]), "$1\r\n2\r\n");
    assert_eq!(raw_cmd(dst, &["GET", "{tx-moved}b"]), "$1\r\nx\r\n");
    let n = raw_cmd(src, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(n, ":0\r\n", "nothing of it ran on the old owner");
    // Exactly once: a second transaction sees the first one's effect once.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{tx-moved}a"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n:3\r\n");
}

#[test]
fn transaction_during_a_migration_runs_on_the_importing_node() {
    let (slot, src, dst) = pick("{tx-ask}");
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    for k in ["{tx-ask}a", "{tx-ask}b"] {
        assert_eq!(ask(&mut s, &["SET", k, "10"]), "+OK\r\n");
    }
    begin_migration(slot, src, dst);
    migrate_keys(src, dst, &["{tx-ask}a".to_string()]);
    // Every key of this transaction has moved: ASKING + MULTI ... EXEC on the importing node.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["PING"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{tx-ask}a"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*2\r\n+PONG\r\n:11\r\n");
    assert_eq!(get_asking(dst, "{tx-ask}a"), "$2\r\n11\r\n");
    assert_eq!(get_asking(dst, "{tx-ask}b"), "$-1\r\n");
    assert!(p.shared.stats.ask.load(Ordering::Relaxed) >= 1);
    // One key moved, one not: it cannot run whole on either node until the migration ends,
    // so it waits (never creating {tx-ask}b anew on the importing node).
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{tx-ask}a"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["INCR", "{tx-ask}b"]), "+QUEUED\r\n");
    s.write_all(b"*1\r\n$4\r\nEXEC\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    finish_migration(slot, src, dst);
    assert_eq!(
        crate::support::read_reply_string(&mut s),
        "*2\r\n:12\r\n:11\r\n"
    );
    assert_eq!(raw_cmd(dst, &["GET", "{tx-ask}b"]), "$2\r\n11\r\n");
}

/// GET on an importing node (ASKING first, on the same connection).
fn get_asking(port: u16, key: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ask(&mut s, &["ASKING"]), "+OK\r\n");
    ask(&mut s, &["GET", key])
}

#[test]
fn watch_cannot_follow_a_slot_that_moved_so_exec_is_aborted() {
    let (slot, src, dst) = pick("{tx-watch}");
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    assert_eq!(ask(&mut s, &["SET", "{tx-watch}a", "1"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["WATCH", "{tx-watch}a"]), "+OK\r\n");
    begin_migration(slot, src, dst);
    finish_migration(slot, src, dst);
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{tx-watch}a", "2"]), "+QUEUED\r\n");
    // The optimistic lock cannot be proved on the new owner: aborted, as after a change.
    assert_eq!(ask(&mut s, &["EXEC"]), "*-1\r\n");
    assert_eq!(raw_cmd(dst, &["GET", "{tx-watch}a"]), "$1\r\n1\r\n");
    // The next optimistic round works on the new owner.
    assert_eq!(ask(&mut s, &["WATCH", "{tx-watch}a"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{tx-watch}a", "3"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n+OK\r\n");
    assert_eq!(raw_cmd(dst, &["GET", "{tx-watch}a"]), "$1\r\n3\r\n");
}

#[test]
fn queue_time_errors_abort_the_transaction_like_redis() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    ask(&mut s, &["DEL", "{tx-err}a", "{tx-err}b"]);
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["SET", "{tx-err}a", "1"]), "+QUEUED\r\n");
    assert!(ask(&mut s, &["NOSUCHCOMMAND", "x"]).starts_with("-ERR unknown command"));
    assert_eq!(
        ask(&mut s, &["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(ask(&mut s, &["SET", "{tx-err}b", "2"]), "+QUEUED\r\n");
    assert_eq!(
        ask(&mut s, &["EXEC"]),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(ask(&mut s, &["EXISTS", "{tx-err}a", "{tx-err}b"]), ":0\r\n");
    // Errors Redis gives at once without failing the transaction.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(
        ask(&mut s, &["WATCH", "{tx-err}a"]),
        "-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_eq!(ask(&mut s, &["SET", "{tx-err}a", "1"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n+OK\r\n");
    // UNWATCH inside MULTI is queued, as Redis does.
    assert_eq!(ask(&mut s, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut s, &["UNWATCH"]), "+QUEUED\r\n");
    assert_eq!(ask(&mut s, &["EXEC"]), "*1\r\n+OK\r\n");
}

/// How many clients `port` has blocked (its INFO).
fn blocked_on(port: u16) -> u32 {
    raw_cmd(port, &["INFO", "clients"])
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn blocked_client_follows_its_slot_to_the_new_owner() {
    let (slot, src, dst) = pick("{blk-move}");
    let p = Proxy::for_cluster(cluster());
    let mut b = p.raw();
    b.write_all(&crate::support::encode(&["BLPOP", "{blk-move}list", "30"]))
        .unwrap();
    wait_until(
        "BLPOP blocked on the owner",
        Duration::from_secs(10),
        || blocked_on(src) >= 1,
    );
    begin_migration(slot, src, dst);
    finish_migration(slot, src, dst);
    // The old owner unblocks it with MOVED; slotmux waits on the new owner instead, with what
    // is left of the 30 s.
    wait_until(
        "BLPOP blocked on the new owner",
        Duration::from_secs(10),
        || blocked_on(dst) >= 1,
    );
    let mut w = p.raw();
    assert_eq!(ask(&mut w, &["RPUSH", "{blk-move}list", "x"]), ":1\r\n");
    assert_eq!(
        crate::support::read_reply_string(&mut b),
        "*2\r\n$14\r\n{blk-move}list\r\n$1\r\nx\r\n"
    );
}

#[test]
fn sharded_subscriber_follows_its_slot_to_the_new_owner() {
    let (slot, src, dst) = pick("{ssub-move}");
    let p = Proxy::for_cluster(cluster());
    let mut sub = p.raw();
    assert_eq!(
        ask(&mut sub, &["SSUBSCRIBE", "{ssub-move}ch"]),
        "*3\r\n$10\r\nssubscribe\r\n$13\r\n{ssub-move}ch\r\n:1\r\n"
    );
    let numsub = |port: u16| raw_cmd(port, &["PUBSUB", "SHARDNUMSUB", "{ssub-move}ch"]);
    assert_eq!(numsub(src), "*2\r\n$13\r\n{ssub-move}ch\r\n:1\r\n");
    begin_migration(slot, src, dst);
    finish_migration(slot, src, dst);
    // The old owner drops the subscription (an unasked-for sunsubscribe, which slotmux hides)
    // and slotmux subscribes again on the new owner.
    wait_until(
        "the subscription on the new owner",
        Duration::from_secs(10),
        || numsub(dst) == "*2\r\n$13\r\n{ssub-move}ch\r\n:1\r\n",
    );
    let mut publisher = p.raw();
    assert_eq!(
        ask(&mut publisher, &["SPUBLISH", "{ssub-move}ch", "hello"]),
        ":1\r\n"
    );
    assert_eq!(
        crate::support::read_reply_string(&mut sub),
        "*3\r\n$8\r\nsmessage\r\n$13\r\n{ssub-move}ch\r\n$5\r\nhello\r\n",
        "the next frame is the message: no sunsubscribe, no MOVED"
    );
    // The client still unsubscribes as usual.
    assert_eq!(
        ask(&mut sub, &["SUNSUBSCRIBE", "{ssub-move}ch"]),
        "*3\r\n$12\r\nsunsubscribe\r\n$13\r\n{ssub-move}ch\r\n:0\r\n"
    );
}
