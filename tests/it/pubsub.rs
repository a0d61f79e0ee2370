//! Pub/sub through slotmux: SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE, PUBLISH/SPUBLISH, RESP2's
//! subscribed-state rules and RESP3 pushes beside normal commands.

use crate::cluster;
use crate::support::{ask, read_reply_string, Proxy};
use std::io::Write;
use std::time::Duration;

#[test]
fn subscribe_publish_and_subscribed_state_rules() {
    let p = Proxy::for_cluster(cluster());
    let mut sub = p.raw();
    let mut publ = p.raw();
    assert_eq!(
        ask(&mut sub, &["SUBSCRIBE", "news"]),
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        ask(&mut publ, &["PUBLISH", "news", "hello"]),
        ":1\r\n",
        "one subscriber, as a single Redis counts"
    );
    assert_eq!(
        read_reply_string(&mut sub),
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        ask(&mut sub, &["GET", "x"]),
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(ask(&mut sub, &["PING"]), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(
        ask(&mut sub, &["PSUBSCRIBE", "n*"]),
        "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
    );
    assert_eq!(
        ask(&mut publ, &["PUBSUB", "NUMSUB", "news"]),
        "*2\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(ask(&mut publ, &["PUBLISH", "nope", "x"]), ":1\r\n");
    assert_eq!(
        read_reply_string(&mut sub),
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnope\r\n$1\r\nx\r\n"
    );
    assert_eq!(
        ask(&mut sub, &["UNSUBSCRIBE", "news"]),
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        ask(&mut sub, &["PUNSUBSCRIBE"]),
        "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n"
    );
    // Out of subscribed state: normal commands again.
    assert_eq!(ask(&mut sub, &["SET", "ps:after", "1"]), "+OK\r\n");
    assert_eq!(ask(&mut publ, &["PUBLISH", "news", "nobody"]), ":0\r\n");
}

#[test]
fn sharded_pubsub_follows_the_channel_slot() {
    let p = Proxy::for_cluster(cluster());
    let mut sub = p.raw();
    let mut publ = p.raw();
    assert_eq!(
        ask(&mut sub, &["SSUBSCRIBE", "{shard}a", "{shard}b"]),
        "*3\r\n$10\r\nssubscribe\r\n$8\r\n{shard}a\r\n:1\r\n"
    );
    assert_eq!(
        read_reply_string(&mut sub),
        "*3\r\n$10\r\nssubscribe\r\n$8\r\n{shard}b\r\n:2\r\n"
    );
    assert_eq!(ask(&mut publ, &["SPUBLISH", "{shard}b", "hi"]), ":1\r\n");
    assert_eq!(
        read_reply_string(&mut sub),
        "*3\r\n$8\r\nsmessage\r\n$8\r\n{shard}b\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        ask(&mut sub, &["SSUBSCRIBE", "a", "b"]),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
}

#[test]
fn resp3_subscriber_gets_pushes_and_keeps_running_commands() {
    let p = Proxy::for_cluster(cluster());
    let mut sub = p.raw();
    let mut publ = p.raw();
    assert!(ask(&mut sub, &["HELLO", "3"]).starts_with('%'));
    assert_eq!(
        ask(&mut sub, &["SUBSCRIBE", "r3news"]),
        ">3\r\n$9\r\nsubscribe\r\n$6\r\nr3news\r\n:1\r\n"
    );
    assert_eq!(ask(&mut sub, &["SET", "ps:r3", "v"]), "+OK\r\n");
    assert_eq!(ask(&mut publ, &["PUBLISH", "r3news", "m"]), ":1\r\n");
    assert_eq!(
        read_reply_string(&mut sub),
        ">3\r\n$7\r\nmessage\r\n$6\r\nr3news\r\n$1\r\nm\r\n"
    );
    assert_eq!(ask(&mut sub, &["GET", "ps:r3"]), "$1\r\nv\r\n");
}

/// Each node publishes keyspace notifications for its own keys only: through slotmux a
/// keyspace subscription hears every master (issue 13: events of two masters were lost).
#[test]
fn keyspace_notifications_come_from_every_master() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let mut cmd = p.raw();
    assert_eq!(
        ask(
            &mut cmd,
            &["CONFIG", "SET", "notify-keyspace-events", "KEA"]
        ),
        "+OK\r\n"
    );
    let mut sub = p.raw();
    assert_eq!(
        ask(&mut sub, &["PSUBSCRIBE", "__keyevent@0__:hset"]),
        "*3\r\n$10\r\npsubscribe\r\n$19\r\n__keyevent@0__:hset\r\n:1\r\n"
    );
    // slotmux mirrors the subscription on the other masters.
    crate::support::wait_until(
        "the pattern on every master",
        Duration::from_secs(10),
        || {
            c.masters()
                .iter()
                .all(|m| crate::support::raw_cmd(m.0, &["PUBSUB", "NUMPAT"]) != ":0\r\n")
        },
    );
    let keys: Vec<String> = c
        .masters()
        .iter()
        .map(|m| {
            let slot: u16 = m.2.split(['-', ' ']).next().unwrap().parse().unwrap();
            crate::support::key_for_slot(slot, "ks-event-")
        })
        .collect();
    for k in &keys {
        assert_eq!(ask(&mut cmd, &["HSET", k, "f", "v"]), ":1\r\n");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        if seen.len() == keys.len() {
            break;
        }
        let m = read_reply_string(&mut sub);
        assert!(m.starts_with("*4\r\n$8\r\npmessage\r\n"), "{m}");
        for k in &keys {
            if m.ends_with(&format!("${}\r\n{k}\r\n", k.len())) {
                assert!(seen.insert(k.clone()), "{k} heard twice");
            }
        }
    }
    assert_eq!(seen.len(), keys.len(), "events of every master");
    assert_eq!(
        ask(&mut cmd, &["CONFIG", "SET", "notify-keyspace-events", ""]),
        "+OK\r\n"
    );
}

/// Redis 7 sends pub/sub confirmations and messages even under CLIENT REPLY OFF (the
/// same steps as Redis's own "PubSub messages with CLIENT REPLY OFF" test, in RESP3).
#[test]
fn pubsub_pushes_are_not_silenced_by_client_reply_off() {
    let p = Proxy::for_cluster(cluster());
    let mut sub = p.raw();
    let mut publ = p.raw();
    let hello = ask(&mut sub, &["HELLO", "3"]);
    assert!(hello.starts_with('%'), "{hello}");
    sub.write_all(&crate::support::encode(&["CLIENT", "REPLY", "OFF"]))
        .unwrap();
    assert_eq!(
        ask(&mut sub, &["SUBSCRIBE", "replyoff"]),
        ">3\r\n$9\r\nsubscribe\r\n$8\r\nreplyoff\r\n:1\r\n"
    );
    assert_eq!(ask(&mut publ, &["PUBLISH", "replyoff", "hi"]), ":1\r\n");
    assert_eq!(
        read_reply_string(&mut sub),
        ">3\r\n$7\r\nmessage\r\n$8\r\nreplyoff\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        ask(&mut sub, &["UNSUBSCRIBE", "replyoff"]),
        ">3\r\n$11\r\nunsubscribe\r\n$8\r\nreplyoff\r\n:0\r\n"
    );
    // An unsubscribe from nothing is confirmed too; ordinary replies stay silenced.
    assert_eq!(
        ask(&mut sub, &["UNSUBSCRIBE", "never"]),
        ">3\r\n$11\r\nunsubscribe\r\n$5\r\nnever\r\n:0\r\n"
    );
    sub.write_all(&crate::support::encode(&["SET", "replyoff:k", "1"]))
        .unwrap();
    sub.write_all(&crate::support::encode(&["CLIENT", "REPLY", "ON"]))
        .unwrap();
    assert_eq!(
        read_reply_string(&mut sub),
        "+OK\r\n",
        "only REPLY ON's +OK"
    );
    assert_eq!(ask(&mut sub, &["GET", "replyoff:k"]), "$1\r\n1\r\n");
}
