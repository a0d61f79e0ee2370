//! TLS to clients and to the nodes: every connection kind (shared, dedicated, pub/sub), the
//! refusals (plain text on the TLS port, missing or foreign client certificates, a node name
//! that does not match), and certificate rotation while clients run.

use redis::Commands;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{wait_until, Proxy};
use crate::{backend_config, cluster, make_ca, make_cert, tls_client};

/// slotmux with both sides on TLS: clients must show a certificate of the main CA.
fn tls_proxy(tweak: impl FnOnce(&mut slotmux::Config)) -> Proxy {
    let c = cluster();
    let mut cfg = backend_config(c);
    cfg.tls_listen = Some("127.0.0.1:0".into());
    cfg.tls_cert_file = Some(c.certs.path("proxy.crt").into());
    cfg.tls_key_file = Some(c.certs.path("proxy.key").into());
    cfg.tls_ca_cert_file = Some(c.certs.path("main-ca.crt").into());
    tweak(&mut cfg);
    let p = Proxy::start(cfg);
    p.wait_ready();
    p
}

fn client_failures(p: &Proxy) -> f64 {
    p.metric("slotmux_tls_handshake_failures_total{side=\"client\"}")
}

#[test]
fn every_connection_kind_works_over_tls_on_both_sides() {
    let _g = crate::shared_use();
    let c = cluster();
    let p = tls_proxy(|_| {});
    let addr = p.tls_addr.unwrap();
    let mut con = tls_client(addr, &c.certs, "main", Some("client")).unwrap();
    // Shared links: keys on every master, and a split MGET.
    let keys: Vec<String> = (0..60).map(|i| format!("tls:key:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let _: () = con.set(k, i).unwrap();
    }
    let got: Vec<usize> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    assert_eq!(got, (0..60).collect::<Vec<_>>());
    // A large value crosses several TLS records both ways.
    let big = "x".repeat(300_000);
    let _: () = con.set("tls:big", &big).unwrap();
    let back: String = con.get("tls:big").unwrap();
    assert_eq!(back.len(), big.len());

    // A dedicated link: BLPOP woken by a push from another TLS client.
    let waiter = std::thread::spawn(move || {
        let mut con = tls_client(addr, &crate::cluster().certs, "main", Some("client")).unwrap();
        let r: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("tls:list")
            .arg(10)
            .query(&mut con)
            .unwrap();
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: () = con.rpush("tls:list", "woken").unwrap();
    assert_eq!(
        waiter.join().unwrap(),
        Some(("tls:list".to_string(), "woken".to_string()))
    );

    // Pub/sub stream links: a subscriber over TLS gets a message published over TLS.
    let mut sub_con = tls_client(addr, &c.certs, "main", Some("client")).unwrap();
    let mut sub = sub_con.as_pubsub();
    sub.subscribe("tls:chan").unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut delivered = false;
    for _ in 0..50 {
        let n: i64 = con.publish("tls:chan", "hello").unwrap();
        if n >= 1 {
            delivered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(delivered, "no subscriber seen");
    let msg = sub.get_message().unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");

    // redis-cli --tls, and the plain listener beside the TLS one (backend still TLS).
    assert_eq!(
        c.cli(addr.port(), &["SET", "tls:cli", "from-cli"]),
        "OK",
        "redis-cli --tls through slotmux"
    );
    let mut plain = p.conn();
    let v: String = plain.get("tls:cli").unwrap();
    assert_eq!(v, "from-cli");
    assert_eq!(client_failures(&p), 0.0);
}

#[test]
fn bad_tls_clients_are_refused_cleanly_and_counted() {
    let _g = crate::shared_use();
    let c = cluster();
    let p = tls_proxy(|_| {});
    let addr = p.tls_addr.unwrap();
    // Plain text on the TLS port: closed, no reply in Redis's words, no crash.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("PONG"),
        "plain text answered on the TLS port: {buf:?}"
    );
    // No client certificate, while tls-auth-clients is yes.
    let no_cert = tls_client(addr, &c.certs, "main", None)
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
    assert!(no_cert.is_err(), "a client without a certificate got in");
    // A certificate from a CA slotmux does not trust.
    make_ca(&c.certs.dir, "other");
    make_cert(&c.certs.dir, "other", "stranger", "DNS:stranger.test");
    let foreign = tls_client(addr, &c.certs, "main", Some("stranger"))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
    assert!(
        foreign.is_err(),
        "a client with a foreign certificate got in"
    );
    wait_until(
        "three client handshake failures counted",
        Duration::from_secs(20),
        || client_failures(&p) >= 3.0,
    );
    // Good clients are unaffected.
    let mut con = tls_client(addr, &c.certs, "main", Some("client")).unwrap();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");

    // tls-auth-clients optional: no certificate is fine, a foreign one is not.
    let opt = tls_proxy(|cfg| cfg.tls_auth_clients = Some("optional".into()));
    let addr = opt.tls_addr.unwrap();
    let mut con = tls_client(addr, &c.certs, "main", None).unwrap();
    let _: () = con.set("tls:optional", 1).unwrap();
    let foreign = tls_client(addr, &c.certs, "main", Some("stranger"))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
    assert!(
        foreign.is_err(),
        "optional still checks a certificate shown"
    );
}

#[test]
fn a_node_certificate_without_the_expected_name_is_refused() {
    let _g = crate::shared_use();
    let c = cluster();
    let seeds: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut cfg = backend_config(c);
    cfg.seeds = seeds;
    // The nodes' certificates name node.redis.test, not 127.0.0.1.
    cfg.backend_tls_server_name = None;
    let p = Proxy::start(cfg);
    wait_until(
        "backend handshake failures counted",
        Duration::from_secs(20),
        || p.metric("slotmux_tls_handshake_failures_total{side=\"backend\"}") >= 1.0,
    );
    assert!(p.shared.readiness().is_err(), "ready without a topology");
    let mut con = p.conn();
    let r: redis::RedisResult<String> = redis::cmd("PING").arg("x").query(&mut con);
    // PING is answered by slotmux itself; a keyed command cannot be served.
    assert_eq!(r.unwrap(), "x");
}

/// Replaces `dst` with `src`'s bytes the way an editor would (write a temporary, rename).
fn replace(dir: &std::path::Path, src: &str, dst: &str) {
    let tmp = dir.join(format!("{dst}.tmp"));
    std::fs::copy(dir.join(src), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(dst)).unwrap();
}

#[test]
fn certificates_are_reloaded_while_clients_run() {
    let _g = crate::shared_use();
    let c = cluster();
    let dir = &c.certs.dir;
    // Files of this test's own, to rotate.
    make_ca(dir, "next");
    make_cert(dir, "next", "proxy-next", "DNS:localhost,IP:127.0.0.1");
    make_cert(dir, "main", "client-next", "DNS:client-next.redis.test");
    for (src, dst) in [
        ("proxy.crt", "rot-server.crt"),
        ("proxy.key", "rot-server.key"),
        ("client.crt", "rot-backend.crt"),
        ("client.key", "rot-backend.key"),
    ] {
        std::fs::copy(dir.join(src), dir.join(dst)).unwrap();
    }
    let p = tls_proxy(|cfg| {
        cfg.tls_cert_file = Some(dir.join("rot-server.crt"));
        cfg.tls_key_file = Some(dir.join("rot-server.key"));
        cfg.backend_tls_cert_file = Some(dir.join("rot-backend.crt"));
        cfg.backend_tls_key_file = Some(dir.join("rot-backend.key"));
    });
    let addr = p.tls_addr.unwrap();
    // A client that keeps working through the rotation on its existing connection.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        let mut con = tls_client(addr, &c.certs, "main", Some("client")).unwrap();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("rot:{}", i % 50);
                let _: () = con.set(&k, i).expect("SET during rotation");
                let v: u64 = con.get(&k).expect("GET during rotation");
                assert_eq!(v, i);
                i += 1;
                done.store(i, Ordering::Relaxed);
            }
        })
    };
    wait_until("traffic before rotation", Duration::from_secs(10), || {
        done.load(Ordering::Relaxed) > 20
    });
    // The server side moves to a new CA, the backend side to a new client certificate.
    replace(dir, "proxy-next.key", "rot-server.key");
    replace(dir, "proxy-next.crt", "rot-server.crt");
    replace(dir, "client-next.key", "rot-backend.key");
    replace(dir, "client-next.crt", "rot-backend.crt");
    wait_until(
        "a client trusting only the new CA to connect",
        Duration::from_secs(30),
        || {
            tls_client(addr, &c.certs, "next", Some("client"))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
                .is_ok()
        },
    );
    assert!(
        tls_client(addr, &c.certs, "main", Some("client"))
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
            .is_err(),
        "new connections still get the old certificate"
    );
    wait_until(
        "the backend files reloaded",
        Duration::from_secs(30),
        || p.metric("slotmux_tls_reloads_total{side=\"backend\"}") >= 1.0,
    );
    // A new backend connection (a blocking command's own) made with the new client
    // certificate.
    let mut con = tls_client(addr, &c.certs, "next", Some("client")).unwrap();
    let r: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("rot:empty")
        .arg(0.2)
        .query(&mut con)
        .unwrap();
    assert_eq!(r, None);
    let before = done.load(Ordering::Relaxed);
    wait_until(
        "the old connection to keep working",
        Duration::from_secs(10),
        || done.load(Ordering::Relaxed) > before + 20,
    );
    stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .expect("the client running through the rotation failed");
}
