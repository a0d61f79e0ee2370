//! What operators see: /metrics counters after known traffic, /healthz and /readyz, INFO
//! sections with the cluster-wide keyspace, and the slow log.

use std::io::Write;
use std::time::Duration;

use crate::cluster;
use crate::support::{encode, raw_cmd, read_reply_string, wait_until, Proxy};

#[test]
fn metrics_count_exactly_100_gets_and_5_moveds() {
    let c = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.refresh_interval = Duration::from_secs(600));
    {
        let mut con = p.conn();
        for i in 0..100 {
            let _: Option<String> = redis::cmd("GET")
                .arg(format!("metrics:{i}"))
                .query(&mut con)
                .unwrap();
        }
    }
    // Sessions flush their counts when they end (and once a second).
    wait_until("100 GETs in /metrics", Duration::from_secs(10), || {
        p.metric(r#"slotmux_commands_total{command="get",outcome="ok"}"#) == 100.0
    });
    assert_eq!(
        p.metric(r#"slotmux_command_duration_seconds_count{command="get"}"#),
        100.0
    );
    assert_eq!(p.metric(r#"slotmux_redirections_total{kind="moved"}"#), 0.0);

    // Five empty slots move to another master behind slotmux's back; one pipelined write
    // to each then meets exactly five MOVEDs.
    let tags: Vec<String> = (0..5).map(|i| format!("{{mv5-{i}}}")).collect();
    let mut moved = Vec::new();
    for t in &tags {
        let slot = slotmux::cluster::key_slot(t.as_bytes());
        let src = c.owner_of(slot);
        let dst = c.masters().iter().map(|m| m.0).find(|&p| p != src).unwrap();
        // Other tests put keys in every slot: migrate them properly.
        crate::redirects::begin_migration(slot, src, dst);
        crate::redirects::finish_migration(slot, src, dst);
        moved.push(dst);
    }
    let mut s = p.raw();
    let mut req = Vec::new();
    for t in &tags {
        req.extend(encode(&["SET", &format!("{t}k"), "v"]));
    }
    s.write_all(&req).unwrap();
    for _ in &tags {
        assert_eq!(read_reply_string(&mut s), "+OK\r\n");
    }
    assert_eq!(p.metric(r#"slotmux_redirections_total{kind="moved"}"#), 5.0);
    for (t, dst) in tags.iter().zip(moved) {
        assert_eq!(raw_cmd(dst, &["EXISTS", &format!("{t}k")]), ":1\r\n");
    }
    // Replicas show in CLUSTER SLOTS once synced; the MOVED-triggered refresh sees them.
    // (CLUSTER SLOTS lists a replica once its replication offset has been gossiped.)
    wait_until("3 replicas in the map", Duration::from_secs(30), || {
        p.shared
            .cluster
            .request_refresh(slotmux::metrics::RefreshReason::Periodic);
        std::thread::sleep(Duration::from_millis(300));
        p.metric("slotmux_replicas") == 3.0
    });
    let (_, body) = p.http_get("/metrics");
    for name in [
        "slotmux_build_info",
        "slotmux_client_connections",
        "slotmux_backend_requests_total",
        "slotmux_backend_duration_seconds_bucket",
        "slotmux_backend_connections",
        "slotmux_topology_refreshes_total",
        "slotmux_slots_covered 16384",
        "slotmux_masters 3",
        "slotmux_client_read_bytes_total",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    // Every metric the Grafana dashboard queries exists.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/slotmux-dashboard.json"
    ))
    .unwrap();
    let mut rest = dash.as_str();
    let mut checked = 0;
    while let Some(i) = rest.find("slotmux_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        if name == "slotmux_" {
            continue;
        }
        let base = name.trim_end_matches("_bucket");
        assert!(
            body.contains(&format!("# TYPE {base} ")),
            "the dashboard uses {name}, which /metrics does not export"
        );
        checked += 1;
    }
    assert!(checked >= 15, "dashboard queries found: {checked}");
}

#[test]
fn health_endpoints() {
    let p = Proxy::for_cluster(cluster());
    assert_eq!(p.http_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(p.http_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(p.http_get("/nope").0, 404);
    // A proxy whose seeds answer nothing is alive but not ready, and says why.
    let lonely = Proxy::start(slotmux::Config::for_seeds(&["127.0.0.1:1".to_string()]));
    let lonely_http = lonely.http;
    let _ = lonely_http;
    wait_until("a failed first refresh", Duration::from_secs(10), || {
        lonely
            .shared
            .cluster
            .stats
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    let (code, body) = lonely.http_get("/readyz");
    assert_eq!(code, 503);
    assert!(body.starts_with("not ready: no topology yet"), "{body}");
    assert_eq!(lonely.http_get("/healthz").0, 200);
    // And a client gets a clear CLUSTERDOWN at once instead of hanging.
    let mut s = lonely.raw();
    s.write_all(&encode(&["GET", "x"])).unwrap();
    assert!(
        read_reply_string(&mut s).starts_with("-CLUSTERDOWN slotmux has no cluster topology yet")
    );
}

#[test]
fn info_sections_and_cluster_wide_keyspace() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let mut con = p.conn();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("info:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    // Redis 7's default sections, in its order (issue 13: cpu, memory, errorstats... were
    // missing).
    let order = [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Replication",
        "# CPU",
        "# Modules",
        "# Errorstats",
        "# Cluster",
        "# Keyspace",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|s| info.find(s).unwrap_or_else(|| panic!("INFO lacks {s}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "sections out of order");
    assert!(
        !info.contains("# Commandstats"),
        "commandstats only with all"
    );
    // The version is what the cluster runs, learned from its nodes.
    let node_version = raw_cmd(c.ports[0], &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(String::from))
        .unwrap();
    assert!(info.contains(&format!("redis_version:{node_version}")));
    assert!(info.contains("used_cpu_user:") && info.contains("used_memory:"));
    // commandstats summed over the masters: this client's GETs are all there.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    for i in 0..30 {
        let _: Option<String> = redis::cmd("GET")
            .arg(format!("info:{i}"))
            .query(&mut con)
            .unwrap();
    }
    let all: String = redis::cmd("INFO").arg("all").query(&mut con).unwrap();
    let calls: i64 = all
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(calls >= 30, "cmdstat_get:calls={calls}");
    let server: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    assert!(server.starts_with("# Server") && !server.contains("# Clients"));
    // Fields scripts read from any Redis (Redis's own test suite reads redis_git_sha1).
    assert!(server.contains("\r\nredis_git_sha1:"), "{server}");
    // One master without replicas, with the fields scripts read from such a Redis.
    let repl: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut con)
        .unwrap();
    for field in ["role:master", "connected_slaves:0", "master_repl_offset:0"] {
        assert!(repl.contains(field), "{field} in {repl}");
    }
    let direct_sum = || c.dbsize();
    let before = direct_sum();
    let ks: String = redis::cmd("INFO").arg("keyspace").query(&mut con).unwrap();
    let after = direct_sum();
    let keys: i64 = ks
        .lines()
        .find_map(|l| l.strip_prefix("db0:keys="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    // Other tests write meanwhile: the sum lies between two direct readings.
    assert!(
        keys >= before.min(after) && keys <= before.max(after) + 100,
        "{keys} vs {before}..{after}"
    );
}

#[test]
fn slowlog_records_slow_commands() {
    let p = Proxy::with_config(cluster(), |cfg| cfg.slowlog_threshold = Duration::ZERO);
    let mut con = p.conn();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg("slow:k")
        .arg("v")
        .query(&mut con)
        .unwrap();
    // Answered by slotmux itself, and logged all the same, as Redis logs it.
    let _: String = redis::cmd("PING").query(&mut con).unwrap();
    // A password never reaches the log: AUTH is logged redacted, as by Redis.
    let _ = redis::cmd("AUTH").arg("secret").query::<()>(&mut con);
    // EXEC is kept out of the log (Redis's skip_slowlog); the commands it ran are not.
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let _: () = redis::cmd("EXEC").query(&mut con).unwrap();
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert_eq!(n, 5, "SLOWLOG RESET, SET, PING, AUTH and MULTI");
    let entries: Vec<(i64, i64, i64, Vec<String>, String, String)> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(5)
        .query(&mut con)
        .unwrap();
    let args: Vec<Vec<String>> = entries.into_iter().map(|e| e.3).collect();
    assert_eq!(
        args,
        vec![
            vec!["SLOWLOG".to_string(), "LEN".into()],
            vec!["MULTI".into()],
            vec!["AUTH".into(), "(redacted)".into()],
            vec!["PING".into()],
            vec!["SET".into(), "slow:k".into(), "v".into()]
        ],
        "newest first"
    );
}

/// CLIENT LIST, INFO, KILL and UNBLOCK about slotmux's own clients (issue 13: they were
/// refused).
#[test]
fn client_list_kill_and_unblock_cover_slotmux_clients() {
    let p = Proxy::for_cluster(cluster());
    let id_of = |s: &mut std::net::TcpStream| -> String {
        let r = crate::support::ask(s, &["CLIENT", "ID"]);
        r.trim().trim_start_matches(':').to_string()
    };
    let mut a = p.raw();
    assert_eq!(
        crate::support::ask(&mut a, &["CLIENT", "SETNAME", "alpha"]),
        "+OK\r\n"
    );
    let a_id = id_of(&mut a);
    let mut b = p.raw();
    let list = crate::support::ask(&mut b, &["CLIENT", "LIST"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("id={a_id} ")))
        .unwrap_or_else(|| panic!("no line for {a_id} in {list}"));
    assert!(
        line.contains(" name=alpha ") && line.contains(" cmd=client|id "),
        "{line}"
    );
    assert!(
        line.contains(" flags=N db=0 ") && line.ends_with("resp=2"),
        "{line}"
    );
    let info = crate::support::ask(&mut b, &["CLIENT", "INFO"]);
    assert!(info.contains("cmd=client|info"), "{info}");
    // Its own command is what its query buffer holds, as in Redis (26 bytes).
    assert!(info.contains(" qbuf=26 "), "{info}");
    assert!(crate::support::ask(&mut b, &["CLIENT", "LIST", "TYPE", "pubsub"]).starts_with("$0"));

    // A client blocked in BLPOP is unblocked on its node, with an error or as a timeout.
    let mut c = p.raw();
    let c_id = id_of(&mut c);
    let blocked = |b: &mut std::net::TcpStream| {
        crate::support::ask(b, &["CLIENT", "LIST", "ID", &c_id]).contains("flags=b")
    };
    c.write_all(&encode(&["BLPOP", "unblock:list", "0"]))
        .unwrap();
    wait_until("the BLPOP to block", Duration::from_secs(10), || {
        blocked(&mut b)
    });
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "UNBLOCK", &c_id, "ERROR"]),
        ":1\r\n"
    );
    assert!(read_reply_string(&mut c).starts_with("-UNBLOCKED"));
    c.write_all(&encode(&["BLPOP", "unblock:list", "0"]))
        .unwrap();
    wait_until("the BLPOP to block again", Duration::from_secs(10), || {
        blocked(&mut b)
    });
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "UNBLOCK", &c_id]),
        ":1\r\n"
    );
    assert_eq!(read_reply_string(&mut c), "*-1\r\n");
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "UNBLOCK", &c_id]),
        ":0\r\n"
    );
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "UNBLOCK", &c_id, "NOW"]),
        "-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n"
    );

    // KILL by id closes that client's connection; an address nobody has is an error.
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "KILL", "ID", &a_id]),
        ":1\r\n"
    );
    let mut byte = [0u8; 1];
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        std::io::Read::read(&mut a, &mut byte).unwrap_or(0),
        0,
        "killed"
    );
    assert_eq!(
        crate::support::ask(&mut b, &["CLIENT", "KILL", "127.0.0.1:1"]),
        "-ERR No such client\r\n"
    );
}

/// MONITOR through slotmux shows what every master runs (issue 13: it was refused), without
/// slotmux's own probes and queries.
#[test]
fn monitor_shows_what_every_master_runs() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let mut m = p.raw();
    assert_eq!(crate::support::ask(&mut m, &["MONITOR"]), "+OK\r\n");
    let keys: Vec<String> = c
        .masters()
        .iter()
        .map(|n| {
            let slot: u16 = n.2.split(['-', ' ']).next().unwrap().parse().unwrap();
            crate::support::key_for_slot(slot, "monitor-")
        })
        .collect();
    let mut cmd = p.raw();
    for k in &keys {
        assert_eq!(crate::support::ask(&mut cmd, &["SET", k, "v"]), "+OK\r\n");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        if seen.len() == keys.len() {
            break;
        }
        let line = read_reply_string(&mut m);
        assert!(line.starts_with('+'), "{line}");
        assert!(
            !line.contains("\"PING\""),
            "slotmux's own probe shown: {line}"
        );
        for k in &keys {
            if line.ends_with(&format!("\"SET\" \"{k}\" \"v\"\r\n")) {
                seen.insert(k.clone());
            }
        }
    }
    assert_eq!(seen.len(), keys.len(), "a line from every master");
}

/// In proxy mode (`--requirepass`), a client is `default`, whatever user slotmux runs as on
/// the nodes: ACL WHOAMI must not give away slotmux's own backend user.
#[test]
fn acl_whoami_is_default_in_proxy_mode_whatever_the_backend_user() {
    let c = cluster();
    for &port in &c.ports {
        let r = raw_cmd(
            port,
            &[
                "ACL",
                "SETUSER",
                "slotmux-backend",
                "on",
                ">backend-secret",
                "~*",
                "&*",
                "+@all",
            ],
        );
        assert_eq!(r, "+OK\r\n", "ACL SETUSER on {port}");
    }
    let p = Proxy::with_config(c, |cfg| {
        cfg.backend_user = Some("slotmux-backend".into());
        cfg.backend_password = Some("backend-secret".into());
        cfg.requirepass = Some("client-secret".into());
    });
    let mut s = p.raw();
    s.write_all(&encode(&["AUTH", "client-secret"])).unwrap();
    assert_eq!(read_reply_string(&mut s), "+OK\r\n");
    s.write_all(&encode(&["ACL", "WHOAMI"])).unwrap();
    assert_eq!(read_reply_string(&mut s), "$7\r\ndefault\r\n");
    // The backend user is the one slotmux really uses on the nodes.
    s.write_all(&encode(&["SET", "whoami:k", "v"])).unwrap();
    assert_eq!(read_reply_string(&mut s), "+OK\r\n");
}
