//! Hot keys (issue 16): SLOTMUX HOTKEYS, /debug/hotkeys and the busiest-slot gauge, after
//! known traffic through two worker threads; and `--hotkeys off`.

use std::time::Duration;

use crate::cluster;
use crate::support::{wait_until, Proxy};
use slotmux::cluster::key_slot;

/// (key, length, rate, slot, node) of each SLOTMUX HOTKEYS entry (RESP2: flat pairs).
fn hotkeys(con: &mut redis::Connection, count: usize) -> Vec<(String, i64, i64, u16, String)> {
    let rows: Vec<Vec<String>> = redis::cmd("SLOTMUX")
        .arg("HOTKEYS")
        .arg("COUNT")
        .arg(count)
        .query(con)
        .unwrap();
    rows.into_iter()
        .map(|r| {
            let field = |name: &str| {
                r.chunks(2)
                    .find(|kv| kv[0] == name)
                    .map(|kv| kv[1].clone())
                    .unwrap_or_else(|| panic!("no {name} in {r:?}"))
            };
            (
                field("key"),
                field("length").parse().unwrap(),
                field("rate").parse().unwrap(),
                field("slot").parse().unwrap(),
                field("node"),
            )
        })
        .collect()
}

#[test]
fn the_hot_key_is_listed_with_its_slot_and_master() {
    let c = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.threads = Some(2));
    let hot = "hk:{hot}:user";
    let long = format!("hk:long:{}", "x".repeat(300));
    let hot_slot = key_slot(hot.as_bytes());
    // Two clients, so both workers sample (placement goes to the least loaded worker): each
    // sends the hot key 4 times for every other key, in pipelines, some of it through a
    // split MGET.
    let mut clients: Vec<redis::Connection> = (0..2).map(|_| p.conn()).collect();
    let mut check = p.conn();
    redis::cmd("SET")
        .arg(hot)
        .arg("v")
        .query::<()>(&mut check)
        .unwrap();
    for round in 0..20 {
        for (n, con) in clients.iter_mut().enumerate() {
            let mut pipe = redis::pipe();
            for i in 0..100 {
                pipe.cmd("GET").arg(hot);
                pipe.cmd("GET").arg(hot);
                pipe.cmd("GET").arg(hot);
                pipe.cmd("MGET")
                    .arg(hot)
                    .arg(format!("hk:cold:{n}:{round}:{i}"));
            }
            pipe.cmd("GET").arg(&long);
            let _: Vec<redis::Value> = pipe.query(con).unwrap();
        }
    }
    // Workers publish what they sampled once a second.
    let mut top = Vec::new();
    wait_until(
        "the hot key in SLOTMUX HOTKEYS",
        Duration::from_secs(10),
        || {
            top = hotkeys(&mut check, 3);
            top.first().is_some_and(|t| t.0 == hot)
        },
    );
    let (_, len, rate, slot, node) = top[0].clone();
    assert_eq!(len, hot.len() as i64);
    assert_eq!(slot, hot_slot);
    assert_eq!(node, format!("127.0.0.1:{}", c.owner_of(hot_slot)));
    assert!(rate > 0);
    if let Some(second) = top.get(1) {
        // 8,000 accesses against at most 2 for any other key (the long one: 40).
        assert!(rate > 10 * second.2.max(1), "{top:?}");
    }
    assert!(top.len() <= 3);

    // JSON, with the same key and the busiest slot.
    let (code, body) = p.http_get("/debug/hotkeys");
    assert_eq!(code, 200);
    assert!(
        body.starts_with(
            "{\"enabled\":true,\"sample_every\":8,\"keys\":[{\"key\":\"hk:{hot}:user\""
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!("\"slots\":[{{\"slot\":{hot_slot},")),
        "{body}"
    );

    // The gauge has the hot slot, and no key name reaches a metric label.
    let (_, metrics) = p.http_get("/metrics");
    let gauge = format!("slotmux_hot_slot_requests_per_second{{slot=\"{hot_slot}\"}}");
    assert!(p.metric(&gauge) > 0.0, "no {gauge}");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("slotmux_hot_slot_requests_per_second{"))
        .count();
    assert!((1..=10).contains(&series), "{series} hot-slot series");
    assert!(!metrics.contains("hk:"), "a key name in /metrics");

    // A key longer than 128 bytes is shown cut, with its length.
    let all = hotkeys(&mut check, 1000);
    if let Some(l) = all.iter().find(|k| k.0.starts_with("hk:long:")) {
        assert_eq!(l.0.len(), 128);
        assert_eq!(l.1, long.len() as i64);
    }

    // Errors, in Redis's words where Redis has them.
    let mut err = |args: &[&str]| -> String {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut check)
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|e| e.to_string())
    };
    assert!(err(&["SLOTMUX", "HOTKEYS", "COUNT", "0"]).contains("out of range"));
    assert!(err(&["SLOTMUX", "HOTKEYS", "FOO"]).contains("syntax error"));
    assert!(err(&["SLOTMUX", "NOPE"]).contains("unknown subcommand 'NOPE'. Try SLOTMUX HELP."));
    assert!(err(&["SLOTMUX"]).contains("wrong number of arguments for 'slotmux' command"));
    let help: Vec<String> = redis::cmd("SLOTMUX").arg("HELP").query(&mut check).unwrap();
    assert!(help.iter().any(|l| l.starts_with("HOTKEYS")), "{help:?}");
}

#[test]
fn hotkeys_off_samples_nothing_and_says_so() {
    let c = cluster();
    let p = Proxy::with_config(c, |cfg| cfg.hotkeys = "off".into());
    let mut con = p.conn();
    for _ in 0..100 {
        let _: Option<String> = redis::cmd("GET").arg("hk:off").query(&mut con).unwrap();
    }
    let e = redis::cmd("SLOTMUX")
        .arg("HOTKEYS")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("hot-key sampling is off"), "{e}");
    assert_eq!(
        p.http_get("/debug/hotkeys"),
        (
            200,
            "{\"enabled\":false,\"keys\":[],\"slots\":[]}\n".to_string()
        )
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(p.shared.hotkeys.top_keys(10), vec![]);
    let (_, metrics) = p.http_get("/metrics");
    assert!(!metrics.contains("slotmux_hot_slot_requests_per_second{"));
}
