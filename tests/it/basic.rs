//! Routing, pipelining, inline commands, local commands and malformed input.

use std::io::{Read, Write};
use std::time::Duration;

use crate::cluster;
use crate::support::{self, read_reply_string, Proxy};

#[test]
fn keys_in_every_slot_land_on_their_owner() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let mut con = p.conn();
    let keys = support::keys_for_every_slot();
    for chunk in keys.chunks(2048) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET").arg(k).arg(format!("v-{k}")).ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
    }
    for chunk in keys.chunks(2048) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("GET").arg(k);
        }
        let got: Vec<String> = pipe.query(&mut con).unwrap();
        for (k, v) in chunk.iter().zip(got) {
            assert_eq!(v, format!("v-{k}"));
        }
    }
    // The data really is spread over the masters: each master has a third of the keys.
    let masters = c.masters();
    assert_eq!(masters.len(), 3);
    for (port, _, _) in masters {
        let n: i64 = support::raw_cmd(port, &["DBSIZE"])
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap();
        assert!(n >= 5000, "master {port} holds only {n} keys");
    }
    // And no MOVED/ASK ever reached the client; slotmux followed none either (fresh map).
    assert_eq!(
        p.shared
            .stats
            .moved
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn pipeline_of_1000_commands_keeps_order_across_masters() {
    let p = Proxy::for_cluster(cluster());
    let mut con = p.conn();
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("pipe:{i}")).arg(i);
        pipe.cmd("INCR").arg(format!("pipe:{i}"));
    }
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(replies.len(), 1000);
    for i in 0..500 {
        assert_eq!(replies[2 * i], redis::Value::Okay);
        assert_eq!(replies[2 * i + 1], redis::Value::Int(i as i64 + 1));
    }
    // Raw pipeline too, all written at once, checked byte for byte.
    let mut s = p.raw();
    let mut req = Vec::new();
    for i in 0..1000 {
        req.extend(support::encode(&["GET", &format!("pipe:{}", i % 500)]));
    }
    s.write_all(&req).unwrap();
    for i in 0..1000 {
        let v = ((i % 500) + 1).to_string();
        assert_eq!(
            read_reply_string(&mut s),
            format!("${}\r\n{}\r\n", v.len(), v)
        );
    }
}

#[test]
fn inline_commands_like_telnet() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    s.write_all(b"PING\r\nSET inline:k \"hello world\"\r\nGET inline:k\r\n\r\nECHO 'a b'\n")
        .unwrap();
    assert_eq!(read_reply_string(&mut s), "+PONG\r\n");
    assert_eq!(read_reply_string(&mut s), "+OK\r\n");
    assert_eq!(read_reply_string(&mut s), "$11\r\nhello world\r\n");
    assert_eq!(read_reply_string(&mut s), "$3\r\na b\r\n");
}

#[test]
fn local_commands_and_redis_errors() {
    let p = Proxy::for_cluster(cluster());
    let mut s = p.raw();
    let mut ask = |args: &[&str]| {
        s.write_all(&support::encode(args)).unwrap();
        read_reply_string(&mut s)
    };
    assert_eq!(ask(&["PING"]), "+PONG\r\n");
    assert_eq!(ask(&["PING", "x"]), "$1\r\nx\r\n");
    assert_eq!(ask(&["ECHO", "hi"]), "$2\r\nhi\r\n");
    assert_eq!(ask(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(
        ask(&["SELECT", "1"]),
        "-ERR SELECT is not allowed in cluster mode\r\n"
    );
    assert_eq!(ask(&["CLIENT", "SETNAME", "app1"]), "+OK\r\n");
    assert_eq!(ask(&["CLIENT", "GETNAME"]), "$4\r\napp1\r\n");
    assert!(ask(&["CLIENT", "ID"]).starts_with(':'));
    assert_eq!(ask(&["CLUSTER", "KEYSLOT", "foo"]), ":12182\r\n");
    assert_eq!(
        ask(&["NOSUCH", "a", "b"]),
        "-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' \r\n"
    );
    assert_eq!(
        ask(&["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        ask(&["CONFIG", "NOPE"]),
        "-ERR unknown subcommand 'NOPE'. Try CONFIG HELP.\r\n"
    );
    assert_eq!(
        ask(&["MSET", "a", "1", "b", "2"]),
        "+OK\r\n",
        "split across slots"
    );
    for cmd in [
        &["MSETNX", "a", "1", "b", "2"][..],
        &["RENAME", "a", "b"],
        &["SUNIONSTORE", "a", "b"],
    ] {
        assert_eq!(
            ask(cmd),
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        );
    }
    assert_eq!(ask(&["MSET", "{t}a", "1", "{t}b", "2"]), "+OK\r\n");
    assert_eq!(
        ask(&["MGET", "{t}a", "{t}b"]),
        "*2\r\n$1\r\n1\r\n$1\r\n2\r\n"
    );
    assert!(ask(&["SWAPDB", "0", "1"]).starts_with("-ERR slotmux: 'swapdb' administers one node"));
    // Errors from Redis itself pass through unchanged.
    assert_eq!(ask(&["SET", "wrongtype", "x"]), "+OK\r\n");
    assert_eq!(
        ask(&["LPUSH", "wrongtype", "x"]),
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    assert_eq!(
        ask(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "{t}a"]),
        "$1\r\n1\r\n"
    );
    assert_eq!(ask(&["EVAL", "return 7", "0"]), ":7\r\n");
    assert!(ask(&["COMMAND", "COUNT"]).starts_with(':'));
    assert!(ask(&["INFO"]).contains("redis_version:"));
    assert_eq!(ask(&["QUIT"]), "+OK\r\n");
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "QUIT closes the connection"
    );
}

#[test]
fn malformed_input_gets_redis_error_and_close_while_others_are_served() {
    let p = Proxy::for_cluster(cluster());
    let mut good = p.conn();
    for bad in [
        &b"*1\r\n*1\r\n$4\r\nPING\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$abc\r\n",
        b"*2\r\n$3\r\nGET\r\n$4294967296\r\n",
        b"SET a \"unterminated\r\n",
    ] {
        let mut s = p.raw();
        s.write_all(bad).unwrap();
        let reply = read_reply_string(&mut s);
        assert!(reply.starts_with("-ERR Protocol error: "), "{reply:?}");
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(
            s.read_to_end(&mut rest).unwrap(),
            0,
            "closed after a protocol error"
        );
        let pong: String = redis::cmd("PING").query(&mut good).unwrap();
        assert_eq!(pong, "PONG");
    }
    let mut s = p.raw();
    s.write_all(b"*1\r\n*1\r\n").unwrap();
    assert_eq!(
        read_reply_string(&mut s),
        "-ERR Protocol error: expected '$', got '*'\r\n"
    );
}

#[test]
fn redis_cli_works_through_slotmux() {
    let p = Proxy::for_cluster(cluster());
    let port = p.addr.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "SET", "cli:key", "v1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    // --pipe mass insertion, then read everything back.
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend(support::encode(&[
            "SET",
            &format!("mass:{i}"),
            &i.to_string(),
        ]));
    }
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &port, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0, replies: 20000"), "{text}");
    let mut con = p.conn();
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("GET").arg(format!("mass:{i}"));
    }
    let vals: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(vals, (0..20_000).collect::<Vec<i64>>());
}

#[test]
fn auth_is_enforced_when_configured() {
    let p = Proxy::with_config(cluster(), |c| c.requirepass = Some("s3cret".into()));
    let mut s = p.raw();
    let mut ask = |args: &[&str]| {
        s.write_all(&support::encode(args)).unwrap();
        read_reply_string(&mut s)
    };
    assert_eq!(ask(&["GET", "x"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        ask(&["AUTH", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(ask(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(ask(&["SET", "authed", "1"]), "+OK\r\n");
    let mut s2 = p.raw();
    s2.write_all(&support::encode(&[
        "HELLO", "3", "AUTH", "default", "s3cret",
    ]))
    .unwrap();
    assert!(read_reply_string(&mut s2).starts_with("%7\r\n"));
}
