//! `--auth-mode passthrough`: the cluster checks each client's AUTH and its ACL rules apply
//! per user through one slotmux (over TLS to the nodes, as the cluster in this binary only
//! speaks TLS).

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{encode, read_reply_string, wait_until, Proxy};
use crate::{backend_config, cluster};

/// Users on every node: `app` may only GET/SET/BLPOP/RPUSH `app:*` keys and use `app:*`
/// channels; `admin` may do anything.
pub fn users() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let c = cluster();
        c.on_every_node(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">app-secret",
            "~app:*",
            "&app:*",
            "+get",
            "+set",
            "+blpop",
            "+rpush",
            "+subscribe",
            "+publish",
            "+ping",
            "+acl|whoami",
            "+client|tracking",
        ]);
        c.on_every_node(&[
            "ACL",
            "SETUSER",
            "admin",
            "on",
            ">admin-secret",
            "~*",
            "&*",
            "+@all",
        ]);
    });
}

fn passthrough(tweak: impl FnOnce(&mut slotmux::Config)) -> Proxy {
    users();
    let mut cfg = backend_config(cluster());
    cfg.auth_mode = "passthrough".into();
    cfg.threads = Some(1);
    tweak(&mut cfg);
    let p = Proxy::start(cfg);
    p.wait_ready();
    p
}

fn q(con: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

fn err_code(r: redis::RedisResult<redis::Value>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or("?").to_string(),
    }
}

fn ok(con: &mut redis::Connection, args: &[&str]) -> redis::Value {
    q(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn each_user_keeps_its_own_permissions_through_one_proxy() {
    let _g = crate::shared_use();
    let p = passthrough(|_| {});
    let mut app = p.conn();
    ok(&mut app, &["AUTH", "app", "app-secret"]);
    ok(&mut app, &["SET", "app:1", "v"]);
    assert_eq!(
        ok(&mut app, &["GET", "app:1"]),
        redis::Value::BulkString(b"v".to_vec())
    );
    // Other keys and other commands: the cluster's own NOPERM.
    assert_eq!(err_code(q(&mut app, &["SET", "other:1", "v"])), "NOPERM");
    assert_eq!(err_code(q(&mut app, &["DEL", "app:1"])), "NOPERM");
    assert_eq!(
        ok(&mut app, &["ACL", "WHOAMI"]),
        redis::Value::BulkString(b"app".to_vec())
    );

    // Another user on the same proxy is unaffected.
    let mut admin = p.conn();
    ok(&mut admin, &["AUTH", "admin", "admin-secret"]);
    ok(&mut admin, &["SET", "other:1", "w"]);
    ok(&mut admin, &["DEL", "app:1"]);
    // A client that has not authenticated is Redis's default user.
    let mut anon = p.conn();
    assert_eq!(
        ok(&mut anon, &["ACL", "WHOAMI"]),
        redis::Value::BulkString(b"default".to_vec())
    );
    ok(&mut anon, &["SET", "other:2", "x"]);

    // A wrong password: Redis's WRONGPASS, and the client stays who it was.
    assert_eq!(
        err_code(q(&mut anon, &["AUTH", "app", "nope"])),
        "WRONGPASS"
    );
    ok(&mut anon, &["SET", "other:3", "x"]);

    // A dedicated link (BLPOP) and pub/sub as the user.
    let r = ok(&mut app, &["BLPOP", "app:list", "0.1"]);
    assert_eq!(r, redis::Value::Nil);
    assert_eq!(
        err_code(q(&mut app, &["BLPOP", "other:list", "0.1"])),
        "NOPERM"
    );
    let mut sub = p.raw();
    sub.write_all(&encode(&["AUTH", "app", "app-secret"]))
        .unwrap();
    assert_eq!(read_reply_string(&mut sub), "+OK\r\n");
    sub.write_all(&encode(&["SUBSCRIBE", "other:chan"]))
        .unwrap();
    let r = read_reply_string(&mut sub);
    assert!(r.starts_with("-NOPERM"), "{r}");

    // RESET: back to the default user.
    ok(&mut app, &["RESET"]);
    ok(&mut app, &["SET", "other:4", "x"]);

    // CLIENT KILL USER reaches the clients of that user only (the subscriber is app's last).
    let killed = ok(&mut admin, &["CLIENT", "KILL", "USER", "app"]);
    assert_eq!(killed, redis::Value::Int(1));
    ok(&mut admin, &["SET", "other:5", "x"]);
}

#[test]
fn commands_after_auth_run_as_the_new_user_even_pipelined() {
    let _g = crate::shared_use();
    let p = passthrough(|_| {});
    let mut s = p.raw();
    // One write: the SET must not overtake the AUTH's check.
    let mut batch = encode(&["AUTH", "app", "app-secret"]);
    batch.extend(encode(&["SET", "other:p", "1"]));
    batch.extend(encode(&["SET", "app:p", "1"]));
    s.write_all(&batch).unwrap();
    assert_eq!(read_reply_string(&mut s), "+OK\r\n");
    let r = read_reply_string(&mut s);
    assert!(r.starts_with("-NOPERM"), "{r}");
    assert_eq!(read_reply_string(&mut s), "+OK\r\n");

    // HELLO 3 AUTH: the map in RESP3, and the user from then on.
    let mut s = p.raw();
    let mut batch = encode(&["HELLO", "3", "AUTH", "app", "app-secret", "SETNAME", "h"]);
    batch.extend(encode(&["SET", "other:h", "1"]));
    s.write_all(&batch).unwrap();
    let hello = read_reply_string(&mut s);
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    let r = read_reply_string(&mut s);
    assert!(r.starts_with("-NOPERM"), "{r}");
    let mut s = p.raw();
    s.write_all(&encode(&["HELLO", "3", "AUTH", "app", "bad"]))
        .unwrap();
    let r = read_reply_string(&mut s);
    assert!(r.starts_with("-WRONGPASS"), "{r}");

    // The password is nowhere slotmux shows.
    let mut admin = p.conn();
    ok(&mut admin, &["AUTH", "admin", "admin-secret"]);
    let list = match ok(&mut admin, &["CLIENT", "LIST"]) {
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        v => panic!("CLIENT LIST: {v:?}"),
    };
    assert!(list.contains("user=app "), "{list}");
    assert!(list.contains("user=admin "), "{list}");
    let slow = format!("{:?}", ok(&mut admin, &["SLOWLOG", "GET", "128"]));
    let (_, metrics) = p.http_get("/metrics");
    for shown in [&list, &slow, &metrics] {
        assert!(
            !shown.contains("app-secret") && !shown.contains("admin-secret"),
            "a password is shown: {shown}"
        );
    }
}

fn shared_connections(p: &Proxy) -> f64 {
    let (_, body) = p.http_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with("slotmux_backend_connections{") && l.contains("kind=\"shared\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn users_with_connections_of_their_own_are_bounded_and_closed_when_idle() {
    let _g = crate::shared_use();
    let p = passthrough(|cfg| {
        cfg.max_backend_users = 1;
        cfg.backend_user_idle_timeout = Duration::from_secs(1);
    });
    let mut anon = p.conn();
    ok(&mut anon, &["SET", "other:b", "1"]);
    let base = shared_connections(&p);
    let mut app = p.conn();
    ok(&mut app, &["AUTH", "app", "app-secret"]);
    for i in 0..30 {
        ok(&mut app, &["SET", &format!("app:b{i}"), "1"]);
    }
    assert!(
        shared_connections(&p) > base,
        "the user has no links of its own"
    );
    // The one place is taken by a connected user: another is refused, with a reason.
    let mut admin = p.conn();
    let e = q(&mut admin, &["AUTH", "admin", "admin-secret"]).unwrap_err();
    assert!(
        e.to_string().contains("--max-backend-users"),
        "unexpected: {e}"
    );
    // Once app's client is gone, its links close after the idle time and admin fits.
    drop(app);
    wait_until(
        "the idle user's links to close",
        Duration::from_secs(20),
        || shared_connections(&p) <= base,
    );
    ok(&mut admin, &["AUTH", "admin", "admin-secret"]);
    ok(&mut admin, &["SET", "other:b2", "1"]);
}

/// A tracking client that authenticates as another user: its tracked connections are the old
/// user's, so they close (the client is told to drop everything), and the next reads run, and
/// are tracked, as the new user.
#[test]
fn a_tracking_client_that_changes_user_reads_as_the_new_user() {
    let _g = crate::shared_use();
    let p = passthrough(|_| {});
    let mut t = p.raw();
    let ask = |s: &mut std::net::TcpStream, args: &[&str]| {
        s.write_all(&encode(args)).unwrap();
        read_reply_string(s)
    };
    assert!(ask(&mut t, &["HELLO", "3"]).starts_with('%'));
    assert_eq!(ask(&mut t, &["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    // Each AUTH as another user: its +OK and an invalidation of everything (the tracked
    // connection CLIENT TRACKING opened, then the one the GET used, were the old user's).
    let auth = |t: &mut std::net::TcpStream, user: &str, pass: &str| {
        t.write_all(&encode(&["AUTH", user, pass])).unwrap();
        let mut two = [read_reply_string(t), read_reply_string(t)];
        two.sort();
        assert_eq!(
            two,
            [
                "+OK\r\n".to_string(),
                ">2\r\n$10\r\ninvalidate\r\n_\r\n".to_string()
            ]
        );
    };
    auth(&mut t, "admin", "admin-secret");
    assert!(ask(&mut t, &["GET", "other:trk"]).starts_with(['$', '_']));
    auth(&mut t, "app", "app-secret");
    let r = ask(&mut t, &["GET", "other:trk"]);
    assert!(r.starts_with("-NOPERM"), "{r}");
    assert!(ask(&mut t, &["GET", "app:trk"]).starts_with(['$', '_']));
    let mut admin = p.conn();
    ok(&mut admin, &["AUTH", "admin", "admin-secret"]);
    ok(&mut admin, &["SET", "app:trk", "1"]);
    assert_eq!(
        read_reply_string(&mut t),
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\napp:trk\r\n"
    );
    // A user the cluster does not let track gets the cluster's refusal, as from one Redis,
    // and stays without tracking; the nodes are not counted down for it.
    cluster().on_every_node(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-secret",
        "~*",
        "+get",
    ]);
    let mut r = p.raw();
    assert!(ask(&mut r, &["HELLO", "3", "AUTH", "reader", "reader-secret"]).starts_with('%'));
    let e = ask(&mut r, &["CLIENT", "TRACKING", "on", "BCAST"]);
    assert!(
        e.starts_with("-NOPERM") && e.contains("client|tracking"),
        "{e}"
    );
    assert_eq!(ask(&mut r, &["CLIENT", "GETREDIR"]), ":-1\r\n");
    let e = ask(&mut r, &["CLIENT", "TRACKING", "on"]);
    assert!(e.starts_with("-NOPERM"), "in the default mode too: {e}");
    assert!(ask(&mut r, &["GET", "app:trk"]).starts_with('$'));
    assert_eq!(p.metric("slotmux_masters_unreachable"), 0.0);

    // A tracking client of a user that leaves does not make the client it redirects to drop
    // its cache.
    let mut red = p.raw();
    let red_id = ask(&mut red, &["CLIENT", "ID"]).trim()[1..].to_string();
    ask(&mut red, &["SUBSCRIBE", "__redis__:invalidate"]);
    let mut leaver = p.raw();
    assert_eq!(ask(&mut leaver, &["AUTH", "app", "app-secret"]), "+OK\r\n");
    assert_eq!(
        ask(
            &mut leaver,
            &["CLIENT", "TRACKING", "on", "REDIRECT", &red_id]
        ),
        "+OK\r\n"
    );
    assert!(ask(&mut leaver, &["GET", "app:trk"]).starts_with('$'));
    let leaver_id = ask(&mut leaver, &["CLIENT", "ID"]).trim()[1..].to_string();
    drop(leaver);
    // Its session has ended (whatever it sent at its end was sent) once it leaves CLIENT LIST.
    let mut other = p.raw();
    wait_until(
        "the leaving client to be gone",
        Duration::from_secs(10),
        || !ask(&mut other, &["CLIENT", "LIST"]).contains(&format!("id={leaver_id} ")),
    );
    assert_eq!(
        ask(&mut red, &["PING"]),
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        "nothing came before the PING's reply"
    );
}
