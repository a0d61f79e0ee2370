//! Client-side caching through slotmux (CLIENT TRACKING): redirection to a RESP2 subscriber,
//! RESP3 pushes, OPTIN with CLIENT CACHING, BCAST with prefixes and NOLOOP over every master,
//! Redis's errors, a redirect target that leaves, and a tracked key whose slot moves (ASK,
//! then MOVED) on the real cluster.

use std::io::Write;
use std::net::TcpStream;

use crate::cluster;
use crate::redirects::{begin_migration, finish_migration, migrate_keys};
use crate::support::{
    ask, encode, invalidated_keys, key_for_slot, read_invalidations_until, read_reply_string, Proxy,
};

fn hello3(s: &mut TcpStream) {
    let r = ask(s, &["HELLO", "3"]);
    assert!(r.starts_with('%'), "{r}");
}

fn keys_seen(seen: &[Option<Vec<String>>]) -> Vec<String> {
    seen.iter().flatten().flatten().cloned().collect()
}

/// A key on each master (slots 0, 8000 and 16000 start on three different masters).
fn keys_on_every_master(prefix: &str) -> Vec<String> {
    [0u16, 8000, 16000]
        .iter()
        .map(|&s| key_for_slot(s, prefix))
        .collect()
}

fn info_field(p: &Proxy, section: &str, field: &str) -> String {
    let mut s = p.raw();
    let info = ask(&mut s, &["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in INFO {section}: {info}"))
        .to_string()
}

#[test]
fn tracking_redirects_to_a_subscriber_and_pushes_to_resp3_clients() {
    let p = Proxy::for_cluster(cluster());
    let mut w = p.raw();
    let keys = keys_on_every_master("trk-redir");

    // RESP2 tracking, invalidations redirected to a RESP2 subscriber.
    let mut red = p.raw();
    let id = ask(&mut red, &["CLIENT", "ID"]);
    let id = id.trim().trim_start_matches(':').to_string();
    assert_eq!(
        ask(&mut red, &["SUBSCRIBE", "__redis__:invalidate"]),
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n"
    );
    let mut r = p.raw();
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "on", "REDIRECT", &id]),
        "+OK\r\n"
    );
    assert_eq!(ask(&mut r, &["CLIENT", "GETREDIR"]), format!(":{id}\r\n"));
    for k in &keys {
        ask(&mut w, &["SET", k, "1"]);
        assert_eq!(ask(&mut r, &["GET", k]), "$1\r\n1\r\n");
    }
    // A key written but never read is not tracked.
    ask(&mut w, &["SET", "trk-redir-unread", "1"]);
    let mut got = Vec::new();
    for k in &keys {
        ask(&mut w, &["INCR", k]);
        got.extend(keys_seen(&read_invalidations_until(&mut red, k)));
    }
    got.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(
        got, want,
        "one invalidation per tracked key, from every master"
    );
    assert_eq!(info_field(&p, "clients", "tracking_clients"), "1");
    let r_id = ask(&mut r, &["CLIENT", "ID"]).trim()[1..].to_string();
    let line = ask(&mut r, &["CLIENT", "LIST", "ID", &r_id]);
    assert!(
        line.contains("flags=t db=0") && line.contains(&format!("redir={id} ")),
        "CLIENT LIST shows the tracking flag and the redirect: {line}"
    );

    // RESP3, no redirect: pushes on the client's own connection, after its replies.
    let mut r3 = p.raw();
    hello3(&mut r3);
    assert_eq!(ask(&mut r3, &["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    ask(&mut r3, &["GET", &keys[0]]);
    ask(&mut w, &["SET", &keys[0], "2"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r3)),
        Some(vec![keys[0].clone()])
    );
    // Its own write to a key it read: the reply first, then the push (as Redis orders them).
    ask(&mut r3, &["GET", &keys[1]]);
    assert_eq!(ask(&mut r3, &["SET", &keys[1], "3"]), "+OK\r\n");
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r3)),
        Some(vec![keys[1].clone()])
    );
    // FLUSHALL invalidates everything: a null.
    let mut r3f = p.raw();
    hello3(&mut r3f);
    ask(&mut r3f, &["CLIENT", "TRACKING", "on"]);
    ask(&mut r3f, &["GET", "{trk-flush}k"]);
    ask(&mut w, &["FLUSHALL"]);
    assert_eq!(invalidated_keys(&read_reply_string(&mut r3f)), None);

    // The redirect target leaves: RESP3 clients are told, as Redis tells them.
    let mut gone = p.raw();
    let gone_id = ask(&mut gone, &["CLIENT", "ID"]).trim()[1..].to_string();
    let mut rb = p.raw();
    hello3(&mut rb);
    assert_eq!(
        ask(&mut rb, &["CLIENT", "TRACKING", "on", "REDIRECT", &gone_id]),
        "+OK\r\n"
    );
    ask(&mut rb, &["GET", &keys[2]]);
    drop(gone);
    crate::support::wait_until(
        "the redirect target to be gone",
        std::time::Duration::from_secs(10),
        || !ask(&mut w, &["CLIENT", "LIST"]).contains(&format!("id={gone_id} ")),
    );
    ask(&mut w, &["SET", &keys[2], "4"]);
    assert_eq!(
        read_reply_string(&mut rb),
        format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{gone_id}\r\n")
    );
    let info = ask(&mut rb, &["CLIENT", "TRACKINGINFO"]);
    assert!(info.contains("$15\r\nbroken_redirect\r\n"), "{info}");
}

#[test]
fn optin_caching_and_redis_errors() {
    let p = Proxy::for_cluster(cluster());
    let mut w = p.raw();
    let mut r = p.raw();
    hello3(&mut r);
    assert_eq!(
        ask(&mut r, &["CLIENT", "CACHING", "yes"]),
        "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "on", "PREFIX", "a"]),
        "-ERR PREFIX option requires BCAST mode to be enabled\r\n"
    );
    assert_eq!(
        ask(
            &mut r,
            &["CLIENT", "TRACKING", "on", "REDIRECT", "987654321"]
        ),
        "-ERR The client ID you want redirect to does not exist\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "on", "OPTIN", "OPTOUT"]),
        "-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "maybe"]),
        "-ERR syntax error\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "on", "OPTIN"]),
        "+OK\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "TRACKING", "on", "BCAST"]),
        "-ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.\r\n"
    );
    assert_eq!(
        ask(&mut r, &["CLIENT", "CACHING", "no"]),
        "-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n"
    );
    // One slot, so one master and one invalidation connection: they arrive in write order.
    let (k1, k2, k3) = ("{trk-optin}1", "{trk-optin}2", "{trk-optin}3");
    ask(&mut r, &["GET", k1]);
    assert_eq!(ask(&mut r, &["CLIENT", "CACHING", "yes"]), "+OK\r\n");
    let info = ask(&mut r, &["CLIENT", "TRACKINGINFO"]);
    assert!(info.contains("$11\r\ncaching-yes\r\n"), "{info}");
    ask(&mut r, &["GET", k2]);
    ask(&mut w, &["SET", k1, "x"]);
    ask(&mut w, &["SET", k2, "x"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![k2.to_string()]),
        "only the read after CLIENT CACHING yes is tracked"
    );
    ask(&mut r, &["CLIENT", "CACHING", "yes"]);
    ask(&mut r, &["MGET", k1, k3]);
    ask(&mut w, &["SET", k3, "x"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![k3.to_string()])
    );
    let info = ask(&mut r, &["CLIENT", "TRACKINGINFO"]);
    assert_eq!(
        info,
        "%3\r\n$5\r\nflags\r\n~2\r\n$2\r\non\r\n$5\r\noptin\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*0\r\n"
    );
    assert_eq!(ask(&mut r, &["CLIENT", "TRACKING", "off"]), "+OK\r\n");
    assert_eq!(ask(&mut r, &["CLIENT", "GETREDIR"]), ":-1\r\n");
    ask(&mut w, &["SET", k1, "y"]);
    // Tracking is off: nothing comes before the PING's reply.
    assert_eq!(ask(&mut r, &["PING"]), "+PONG\r\n");
}

#[test]
fn bcast_prefixes_and_noloop_cover_every_master() {
    let p = Proxy::for_cluster(cluster());
    let mut w = p.raw();
    let mut r = p.raw();
    hello3(&mut r);
    assert_eq!(
        ask(
            &mut r,
            &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "bc:", "PREFIX", "bd:", "NOLOOP"]
        ),
        "+OK\r\n"
    );
    assert!(ask(
        &mut r,
        &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "b"]
    )
    .starts_with("-ERR Prefix 'b' overlaps with an existing prefix 'bc:'"));
    assert_eq!(info_field(&p, "stats", "tracking_total_prefixes"), "2");
    // Keys never read by the client, on every master: all reported.
    let keys = keys_on_every_master("bc:");
    let mut got = Vec::new();
    for k in &keys {
        ask(&mut w, &["SET", k, "1"]);
        got.extend(keys_seen(&read_invalidations_until(&mut r, k)));
    }
    for k in &keys {
        assert!(got.contains(k), "{k} in {got:?}");
    }
    // NOLOOP: the client's own write is not reported; a key outside the prefixes is not
    // either. Same slot as the last key, so they would have come before it.
    ask(&mut r, &["SET", "bc:{own}", "1"]);
    ask(&mut w, &["SET", "zz:{own}", "1"]);
    ask(&mut w, &["SET", "bd:{own}", "1"]);
    let seen = keys_seen(&read_invalidations_until(&mut r, "bd:{own}"));
    assert_eq!(seen, vec!["bd:{own}".to_string()]);
    let info = ask(&mut r, &["CLIENT", "TRACKINGINFO"]);
    assert!(
        info.contains("~3\r\n$2\r\non\r\n$5\r\nbcast\r\n$6\r\nnoloop\r\n"),
        "{info}"
    );
    drop(r);
    crate::support::wait_until(
        "the prefixes to be forgotten with their client",
        std::time::Duration::from_secs(10),
        || info_field(&p, "stats", "tracking_total_prefixes") == "0",
    );
}

#[test]
fn a_tracked_key_whose_slot_moves_is_invalidated_and_tracked_where_it_went() {
    let c = cluster();
    let p = Proxy::for_cluster(c);
    let (a, b) = ("{trk-move}a", "{trk-move}b");
    let slot = slotmux::cluster::key_slot(a.as_bytes());
    let src = c.owner_of(slot);
    let dst = c.masters().iter().map(|m| m.0).find(|&m| m != src).unwrap();
    let mut w = p.raw();
    let mut r = p.raw();
    hello3(&mut r);
    ask(&mut r, &["CLIENT", "TRACKING", "on"]);
    ask(&mut w, &["SET", a, "1"]);
    ask(&mut w, &["SET", b, "1"]);
    ask(&mut r, &["GET", a]);
    // Live migration: `a` moves (MIGRATE deletes it on the source, which invalidates it).
    begin_migration(slot, src, dst);
    migrate_keys(src, dst, &[a.to_string()]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![a.to_string()])
    );
    // Read again through ASK: now the importing node tracks it for this client.
    assert_eq!(ask(&mut r, &["GET", a]), "$1\r\n1\r\n");
    // An OPTIN read through ASK cannot carry CLIENT CACHING (the node forgets it after
    // ASKING): that client is told to drop everything, after its reply.
    let mut o = p.raw();
    hello3(&mut o);
    ask(&mut o, &["CLIENT", "TRACKING", "on", "OPTIN"]);
    ask(&mut o, &["CLIENT", "CACHING", "yes"]);
    assert_eq!(ask(&mut o, &["GET", a]), "$1\r\n1\r\n");
    assert_eq!(invalidated_keys(&read_reply_string(&mut o)), None);
    ask(&mut w, &["SET", a, "2"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![a.to_string()])
    );
    // The rest moves, the slot is the new master's: MOVED is followed on the client's own
    // link there, which tracks what it reads.
    ask(&mut r, &["GET", b]);
    finish_migration(slot, src, dst);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![b.to_string()])
    );
    assert_eq!(ask(&mut r, &["GET", b]), "$1\r\n1\r\n");
    ask(&mut w, &["SET", b, "2"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![b.to_string()])
    );
    // Pipelined reads and writes across masters keep their order; the push for the
    // client's own write comes after that write's reply.
    let mut req = Vec::new();
    req.extend(encode(&["GET", a]));
    req.extend(encode(&["GET", "trk-move-other"]));
    req.extend(encode(&["SET", a, "3"]));
    r.write_all(&req).unwrap();
    assert_eq!(read_reply_string(&mut r), "$1\r\n2\r\n");
    assert_eq!(read_reply_string(&mut r), "_\r\n");
    assert_eq!(read_reply_string(&mut r), "+OK\r\n");
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![a.to_string()])
    );
}

#[test]
fn reads_in_a_watched_transaction_are_tracked() {
    let p = Proxy::for_cluster(cluster());
    let mut w = p.raw();
    let mut r = p.raw();
    hello3(&mut r);
    ask(&mut r, &["CLIENT", "TRACKING", "on"]);
    let k = "{trk-watch}k";
    ask(&mut w, &["SET", k, "1"]);
    assert_eq!(ask(&mut r, &["WATCH", k]), "+OK\r\n");
    assert_eq!(ask(&mut r, &["MULTI"]), "+OK\r\n");
    assert_eq!(ask(&mut r, &["GET", k]), "+QUEUED\r\n");
    assert_eq!(ask(&mut r, &["EXEC"]), "*1\r\n$1\r\n1\r\n");
    ask(&mut w, &["SET", k, "2"]);
    assert_eq!(
        invalidated_keys(&read_reply_string(&mut r)),
        Some(vec![k.to_string()])
    );
    // The WATCH was on the client's tracked link, which stays: a watch broken by another
    // client still aborts, and the transactions after it are not watched.
    assert_eq!(ask(&mut r, &["WATCH", k]), "+OK\r\n");
    ask(&mut w, &["SET", k, "3"]);
    ask(&mut r, &["MULTI"]);
    ask(&mut r, &["SET", k, "4"]);
    assert_eq!(ask(&mut r, &["EXEC"]), "_\r\n");
    ask(&mut w, &["SET", k, "5"]);
    ask(&mut r, &["MULTI"]);
    ask(&mut r, &["INCR", k]);
    assert_eq!(ask(&mut r, &["EXEC"]), "*1\r\n:6\r\n");
}

#[test]
fn tracking_clients_are_bounded() {
    let p = Proxy::with_config(cluster(), |c| c.max_tracking_clients = 1);
    let mut a = p.raw();
    let mut b = p.raw();
    assert_eq!(ask(&mut a, &["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    // Turning it on again (new options) keeps the same place.
    assert_eq!(
        ask(&mut a, &["CLIENT", "TRACKING", "on", "NOLOOP"]),
        "+OK\r\n"
    );
    assert_eq!(
        ask(&mut b, &["CLIENT", "TRACKING", "on"]),
        "-ERR slotmux: too many tracking clients (--max-tracking-clients 1)\r\n"
    );
    assert_eq!(p.metric("slotmux_tracking_clients"), 1.0);
    assert_eq!(ask(&mut a, &["CLIENT", "TRACKING", "off"]), "+OK\r\n");
    assert_eq!(ask(&mut b, &["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    drop(b);
    crate::support::wait_until(
        "the place to be given back with the client",
        std::time::Duration::from_secs(10),
        || ask(&mut a, &["CLIENT", "TRACKING", "on"]) == "+OK\r\n",
    );
}

/// CLIENT TRACKING moves a client's commands between the shared links and its own: what it
/// sent before is answered first, in order, and nothing is lost.
#[test]
fn switching_tracking_on_and_off_keeps_pipelined_order() {
    let p = Proxy::for_cluster(cluster());
    let mut r = p.raw();
    hello3(&mut r);
    let k = "{trk-order}k";
    let mut req = Vec::new();
    for i in 0..20 {
        let v = i.to_string();
        req.extend(encode(&["SET", k, &v]));
        req.extend(encode(&[
            "CLIENT",
            "TRACKING",
            if i % 2 == 0 { "on" } else { "off" },
        ]));
        req.extend(encode(&["GET", k]));
    }
    r.write_all(&req).unwrap();
    // Its own SETs invalidate what it read while tracking: pushes, skipped here.
    let mut reply = || loop {
        let f = read_reply_string(&mut r);
        if !f.starts_with('>') {
            return f;
        }
    };
    for i in 0..20 {
        assert_eq!(reply(), "+OK\r\n", "SET {i}");
        assert_eq!(reply(), "+OK\r\n", "TRACKING {i}");
        let v = i.to_string();
        assert_eq!(
            reply(),
            format!("${}\r\n{v}\r\n", v.len()),
            "GET {i} sees the SET before it"
        );
    }
}

/// A WATCH pipelined behind an EXEC on the same tracked connection still holds.
#[test]
fn a_watch_pipelined_after_exec_on_a_tracked_link_holds() {
    let p = Proxy::for_cluster(cluster());
    let mut w = p.raw();
    let mut r = p.raw();
    hello3(&mut r);
    ask(&mut r, &["CLIENT", "TRACKING", "on"]);
    let (k1, k2) = ("{trk-wx}1", "{trk-wx}2");
    ask(&mut r, &["WATCH", k1]);
    ask(&mut r, &["MULTI"]);
    ask(&mut r, &["SET", k1, "a"]);
    let mut req = encode(&["EXEC"]);
    req.extend(encode(&["WATCH", k2]));
    r.write_all(&req).unwrap();
    assert_eq!(read_reply_string(&mut r), "*1\r\n+OK\r\n");
    assert_eq!(read_reply_string(&mut r), "+OK\r\n");
    ask(&mut w, &["SET", k2, "changed"]);
    ask(&mut r, &["MULTI"]);
    ask(&mut r, &["SET", k2, "mine"]);
    assert_eq!(ask(&mut r, &["EXEC"]), "_\r\n", "the watch on k2 aborts");
    assert_eq!(ask(&mut w, &["GET", k2]), "$7\r\nchanged\r\n");
}
