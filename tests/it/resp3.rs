//! RESP3 sessions beside RESP2 ones, and redis-py with its default settings (HELLO 3).

use std::io::Write;
use std::net::TcpStream;

use crate::cluster;
use crate::support::{encode, read_reply_string, Proxy};

fn pipeline(s: &mut TcpStream, cmds: &[&[&str]]) -> Vec<String> {
    let mut req = Vec::new();
    for c in cmds {
        req.extend(encode(c));
    }
    s.write_all(&req).unwrap();
    cmds.iter().map(|_| read_reply_string(s)).collect()
}

#[test]
fn resp3_session_beside_resp2_session() {
    let p = Proxy::for_cluster(cluster());
    let mut r3 = p.raw();
    let mut r2 = p.raw();
    let hello = pipeline(&mut r3, &[&["HELLO", "3"]]).remove(0);
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"));
    assert!(hello.contains("$4\r\nmode\r\n$10\r\nstandalone\r\n"));
    let hello2 = pipeline(&mut r2, &[&["HELLO", "2"]]).remove(0);
    assert!(hello2.starts_with("*14\r\n"), "{hello2}");

    let setup: &[&[&str]] = &[
        &["DEL", "{r3}h", "{r3}s", "{r3}z", "{r3}missing"],
        &["HSET", "{r3}h", "f", "v"],
        &["SADD", "{r3}s", "a"],
        &["ZADD", "{r3}z", "1.5", "m"],
    ];
    pipeline(&mut r2, setup);
    let reads: &[&[&str]] = &[
        &["HGETALL", "{r3}h"],
        &["SMEMBERS", "{r3}s"],
        &["ZSCORE", "{r3}z", "m"],
        &["GET", "{r3}missing"],
        &["PING"],
        &["CLIENT", "GETNAME"],
    ];
    // Interleave the two sessions so both pools are in use at once.
    let got3 = pipeline(&mut r3, reads);
    let got2 = pipeline(&mut r2, reads);
    assert_eq!(
        got3,
        vec![
            "%1\r\n$1\r\nf\r\n$1\r\nv\r\n",
            "~1\r\n$1\r\na\r\n",
            ",1.5\r\n",
            "_\r\n",
            "+PONG\r\n",
            "_\r\n"
        ]
    );
    assert_eq!(
        got2,
        vec![
            "*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
            "*1\r\n$1\r\na\r\n",
            "$3\r\n1.5\r\n",
            "$-1\r\n",
            "+PONG\r\n",
            "$-1\r\n"
        ]
    );
    // Protocol errors in HELLO match Redis.
    assert_eq!(
        pipeline(&mut r2, &[&["HELLO", "4"]])[0],
        "-NOPROTO unsupported protocol version\r\n"
    );
}

/// redis-py with default settings opens every connection with HELLO 3 and has no fallback.
#[test]
fn redis_py_default_client() {
    let has_py = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_py {
        assert!(
            std::env::var_os("SLOTMUX_REQUIRE_PY").is_none(),
            "SLOTMUX_REQUIRE_PY is set but python3 cannot import redis"
        );
        eprintln!("SKIPPED: python3 'redis' package not installed (pip install redis)");
        return;
    }
    let p = Proxy::for_cluster(cluster());
    let script = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
assert r.ping()
r.set("py:k", "v")
assert r.get("py:k") == b"v", r.get("py:k")
r.hset("py:h", mapping={"a": "1", "b": "2"})
assert r.hgetall("py:h") == {b"a": b"1", b"b": b"2"}, r.hgetall("py:h")
pipe = r.pipeline(transaction=False)
for i in range(200):
    pipe.set(f"py:{i}", i)
    pipe.get(f"py:{i}")
res = pipe.execute()
assert res[1::2] == [str(i).encode() for i in range(200)]
print("redis-py", redis.__version__, "ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &p.addr.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

/// A client configured for cluster mode (redis-py `RedisCluster`) pointed at slotmux sees a
/// one-node cluster (slotmux owns every slot) and sends everything to it (issue 16).
#[test]
fn redis_py_cluster_client_sees_one_node() {
    let has_py = std::process::Command::new("python3")
        .args(["-c", "import redis.cluster"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_py {
        assert!(
            std::env::var_os("SLOTMUX_REQUIRE_PY").is_none(),
            "SLOTMUX_REQUIRE_PY is set but python3 cannot import redis.cluster"
        );
        eprintln!("SKIPPED: python3 'redis' package not installed (pip install redis)");
        return;
    }
    let p = Proxy::for_cluster(cluster());
    let script = r#"
import sys
from redis.cluster import RedisCluster
port = int(sys.argv[1])
rc = RedisCluster(host="127.0.0.1", port=port)
nodes = rc.get_nodes()
assert [(n.host, n.port) for n in nodes] == [("127.0.0.1", port)], nodes
keys = [f"pyc:{i}" for i in range(100)]
for k in keys:
    rc.set(k, k)
assert rc.mget_nonatomic(keys) == [k.encode() for k in keys]
pipe = rc.pipeline()
for k in keys:
    pipe.get(k)
assert pipe.execute() == [k.encode() for k in keys]
assert rc.cluster_keyslot("foo") == 12182
print("redis-py cluster client ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &p.addr.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py RedisCluster failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the raw replies.
    let mut s = p.raw();
    let slots = crate::support::ask(&mut s, &["CLUSTER", "SLOTS"]);
    assert!(
        slots.starts_with(&format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:{}\r\n",
            p.addr.port()
        )),
        "{slots}"
    );
    let info = crate::support::ask(&mut s, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:1"));
}
