//! Drift test for the generated command table (`src/command/table.rs`).
//!
//! Starts its own throwaway standalone `redis-server` (persistence off, in a temp
//! dir, on a free loopback port; `$REDIS_SERVER` overrides the binary) and checks
//! that:
//!
//! * the set of top-level command names equals the server's `COMMAND` list;
//! * for every command and subcommand, arity, flags, ACL categories, the legacy
//!   first/last/step triple and the key specs equal what `COMMAND INFO` reports;
//! * `keys::for_each_key` finds exactly the keys `COMMAND GETKEYS` returns for a
//!   varied sample of commands, and fails where GETKEYS fails.
//!
//! If no `redis-server` binary can be started, the tests print a note and pass.
//! If the server's version differs from the one the table was generated from,
//! regenerate with `python3 tools/gen_commands.py src/command/table.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;
use slotmux::command::keys::for_each_key;
use slotmux::command::table::{
    BeginSearch, CommandSpec, FindKeys, KeySpec, ACL_NAMES, COMMANDS, FLAG_NAMES, KS_FLAG_NAMES,
    KS_NOT_KEY,
};

// ---------------------------------------------------------------------------
// Throwaway server
// ---------------------------------------------------------------------------

/// Kills the server and removes its directory when dropped (also on panic).
struct RedisGuard {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        // SIGTERM first so redis-server exits cleanly, then make sure.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Starts redis-server and returns it with a connection, or `None` when no
/// redis-server binary is available.
fn start_redis() -> Option<(RedisGuard, redis::Connection)> {
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
    for attempt in 0..5 {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "slotmux-command-table-{}-{}-{}",
            std::process::id(),
            port,
            attempt
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let spawned = Command::new(&bin)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("skipping: cannot start {bin}: {e}");
                return None;
            }
        };
        let mut guard = RedisGuard { child, dir, port };
        let url = format!("redis://127.0.0.1:{}/", guard.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = guard.child.try_wait() {
                break; // exited (port taken?): retry with another port
            }
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(mut con) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                        return Some((guard, con));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(guard);
    }
    panic!("redis-server ({bin}) did not come up after 5 attempts");
}

// ---------------------------------------------------------------------------
// Tolerant accessors over redis::Value (RESP2 or RESP3 shapes)
// ---------------------------------------------------------------------------

fn v_str(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Okay => "OK".to_string(),
        Value::Int(i) => i.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn v_int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b).unwrap().parse().unwrap(),
        Value::SimpleString(s) => s.parse().unwrap(),
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn v_list(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a.as_slice(),
        Value::Nil => &[],
        other => panic!("expected an array, got {other:?}"),
    }
}

/// A map, either RESP3 `Map` or a RESP2 flat `[k1, v1, k2, v2, ...]` array.
fn v_map(v: &Value) -> BTreeMap<String, &Value> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (v_str(k), v)).collect(),
        Value::Array(flat) => {
            assert!(flat.len() % 2 == 0, "odd flat map {flat:?}");
            flat.chunks(2).map(|kv| (v_str(&kv[0]), &kv[1])).collect()
        }
        Value::Nil => BTreeMap::new(),
        other => panic!("expected a map, got {other:?}"),
    }
}

fn v_names(v: &Value) -> BTreeSet<String> {
    v_list(v)
        .iter()
        .map(|x| v_str(x).to_ascii_lowercase())
        .collect()
}

// ---------------------------------------------------------------------------
// A comparable view of one command, built from the server and from the table
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct View {
    arity: i64,
    flags: BTreeSet<String>,
    acl: BTreeSet<String>,
    first_last_step: (i64, i64, i64),
    key_specs: Vec<String>,
}

fn live_key_spec(v: &Value) -> String {
    let m = v_map(v);
    let mut flags: Vec<String> = v_names(m["flags"]).into_iter().collect();
    flags.sort();
    let bs = v_map(m["begin_search"]);
    let bs_spec = v_map(bs["spec"]);
    let begin = match v_str(bs["type"]).as_str() {
        "index" => format!("index({})", v_int(bs_spec["index"])),
        "keyword" => format!(
            "keyword({}, {})",
            v_str(bs_spec["keyword"]),
            v_int(bs_spec["startfrom"])
        ),
        "unknown" => "unknown".to_string(),
        other => format!("?{other}"),
    };
    let fk = v_map(m["find_keys"]);
    let fk_spec = v_map(fk["spec"]);
    let find = match v_str(fk["type"]).as_str() {
        "range" => format!(
            "range({}, {}, {})",
            v_int(fk_spec["lastkey"]),
            v_int(fk_spec["keystep"]),
            v_int(fk_spec["limit"])
        ),
        "keynum" => format!(
            "keynum({}, {}, {})",
            v_int(fk_spec["keynumidx"]),
            v_int(fk_spec["firstkey"]),
            v_int(fk_spec["keystep"])
        ),
        "unknown" => "unknown".to_string(),
        other => format!("?{other}"),
    };
    format!("{begin} {find} [{}]", flags.join(","))
}

fn table_key_spec(ks: &KeySpec) -> String {
    let begin = match ks.begin {
        BeginSearch::Index(i) => format!("index({i})"),
        BeginSearch::Keyword {
            keyword,
            start_from,
        } => format!("keyword({keyword}, {start_from})"),
        BeginSearch::Unknown => "unknown".to_string(),
    };
    let find = match ks.find {
        FindKeys::Range {
            last_key,
            key_step,
            limit,
        } => format!("range({last_key}, {key_step}, {limit})"),
        FindKeys::Keynum {
            keynum_idx,
            first_key,
            key_step,
        } => format!("keynum({keynum_idx}, {first_key}, {key_step})"),
        FindKeys::Unknown => "unknown".to_string(),
    };
    let mut flags: Vec<String> = KS_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| ks.flags & bit != 0)
        .map(|(_, n)| n.to_ascii_lowercase())
        .collect();
    flags.sort();
    format!("{begin} {find} [{}]", flags.join(","))
}

fn names_of(bits: u64, table: &[(u64, &str)]) -> BTreeSet<String> {
    table
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn table_view(c: &CommandSpec) -> View {
    View {
        arity: c.arity.into(),
        flags: names_of(c.flags, FLAG_NAMES),
        acl: names_of(c.acl, ACL_NAMES),
        first_last_step: (c.first_key.into(), c.last_key.into(), c.step.into()),
        key_specs: c.key_specs.iter().map(table_key_spec).collect(),
    }
}

/// `[name, arity, flags, first, last, step, acl, tips, key specs, subcommands]`
fn live_view(entry: &Value) -> (String, View, Vec<&Value>) {
    let e = v_list(entry);
    assert!(e.len() >= 10, "short COMMAND entry {entry:?}");
    let name = v_str(&e[0]).to_ascii_lowercase();
    let view = View {
        arity: v_int(&e[1]),
        flags: v_names(&e[2]),
        acl: v_list(&e[6])
            .iter()
            .map(|a| v_str(a).trim_start_matches('@').to_ascii_lowercase())
            .collect(),
        first_last_step: (v_int(&e[3]), v_int(&e[4]), v_int(&e[5])),
        key_specs: v_list(&e[8]).iter().map(live_key_spec).collect(),
    };
    (name, view, v_list(&e[9]).iter().collect())
}

fn compare(c: &CommandSpec, live: &Value, problems: &mut Vec<String>) {
    let (name, view, subs) = live_view(live);
    if name != c.name {
        problems.push(format!("{}: server calls it {name}", c.name));
        return;
    }
    let ours = table_view(c);
    if ours != view {
        problems.push(format!("{name}:\n  table:  {ours:?}\n  server: {view:?}"));
    }
    let live_subs: BTreeMap<String, &Value> = subs
        .into_iter()
        .map(|s| (v_str(&v_list(s)[0]).to_ascii_lowercase(), s))
        .collect();
    let our_subs: BTreeSet<&str> = c.subcommands.iter().map(|s| s.name).collect();
    let their_subs: BTreeSet<&str> = live_subs.keys().map(String::as_str).collect();
    if our_subs != their_subs {
        problems.push(format!(
            "{name}: subcommands differ: only in table {:?}, only on server {:?}",
            our_subs.difference(&their_subs).collect::<Vec<_>>(),
            their_subs.difference(&our_subs).collect::<Vec<_>>()
        ));
    }
    for s in c.subcommands {
        if let Some(live_sub) = live_subs.get(s.name) {
            compare(s, live_sub, problems);
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn table_matches_live_server() {
    let Some((_guard, mut con)) = start_redis() else {
        return;
    };

    let all: Value = redis::cmd("COMMAND").query(&mut con).expect("COMMAND");
    let live_names: BTreeSet<String> = v_list(&all)
        .iter()
        .map(|e| v_str(&v_list(e)[0]).to_ascii_lowercase())
        .collect();
    let table_names: BTreeSet<String> = COMMANDS.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(
        table_names,
        live_names,
        "top-level commands differ: only in table {:?}, only on server {:?}",
        table_names.difference(&live_names).collect::<Vec<_>>(),
        live_names.difference(&table_names).collect::<Vec<_>>()
    );

    let mut problems = Vec::new();
    for c in COMMANDS {
        let info: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(c.name)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("COMMAND INFO {}: {e}", c.name));
        let entries = v_list(&info);
        assert_eq!(entries.len(), 1, "COMMAND INFO {}", c.name);
        compare(c, &entries[0], &mut problems);
    }
    assert!(
        problems.is_empty(),
        "command table drifted from the live server ({} problems); regenerate with \
         `python3 tools/gen_commands.py src/command/table.rs`:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Command lines whose keys `for_each_key` must find exactly as `COMMAND GETKEYS`
/// does. Split on whitespace; `""` is an empty argument.
const GETKEYS_OK: &[&str] = &[
    "GET k",
    "MSET a 1 b 2 c 3",
    "DEL a b c",
    "SET k v NX GET",
    "RENAME a b",
    "LMOVE src dst LEFT RIGHT",
    "PFCOUNT h1 h2 h3",
    "BITOP AND dst a b",
    "BITFIELD_RO k GET u8 0",
    "EVAL return 2 k1 k2 argv1",
    "EVAL return 0",
    "EVALSHA 0123456789abcdef0123456789abcdef01234567 1 k1",
    "FCALL myfunc 1 k1 argv1",
    "XREAD COUNT 2 STREAMS a b 0 0",
    "XREADGROUP GROUP g c COUNT 1 STREAMS a b > >",
    "ZUNIONSTORE dst 2 a b WEIGHTS 1 2",
    "ZUNION 2 a b WITHSCORES",
    "SORT k BY w_* LIMIT 0 10 GET o_* STORE dst",
    "SORT k ALPHA",
    "SORT_RO k BY w_*",
    "MIGRATE 127.0.0.1 1 k 0 5000 COPY",
    r#"MIGRATE 127.0.0.1 1 "" 0 5000 REPLACE KEYS a b"#,
    r#"MIGRATE 127.0.0.1 1 "" 0 5000 AUTH keys KEYS a"#,
    "GEORADIUS g 15 37 200 km ASC STORE dst",
    "GEORADIUSBYMEMBER g m 200 km STOREDIST dst",
    "LMPOP 2 a b LEFT",
    "BLMPOP 0 2 a b RIGHT COUNT 2",
    "BZMPOP 0 2 z1 z2 MIN",
    "SINTERCARD 2 a b LIMIT 1",
    "OBJECT ENCODING k",
    "MEMORY USAGE k SAMPLES 5",
    "XINFO STREAM s FULL",
    "XGROUP CREATE s g $ MKSTREAM",
];

/// Command lines on which both GETKEYS and `for_each_key` must fail.
const GETKEYS_ERR: &[&str] = &[
    "ZUNION 5 a b",
    "SINTERCARD abc a",
    "MIGRATE 127.0.0.1 1 k 0 5000 KEYS a b",
    "XREAD COUNT 1 BLOCK 0",
];

fn split_args(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .map(|a| if a == r#""""# { "" } else { a })
        .collect()
}

fn our_keys(args: &[&str]) -> Result<Vec<String>, slotmux::command::keys::KeysError> {
    let name = args[0].to_ascii_lowercase();
    let spec = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in table"));
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let mut out = Vec::new();
    for_each_key(spec, &bytes[..], |i, flags| {
        if flags & KS_NOT_KEY == 0 {
            out.push(args[i].to_string());
        }
    })?;
    Ok(out)
}

fn getkeys(con: &mut redis::Connection, args: &[&str]) -> Result<Vec<String>, String> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in args {
        cmd.arg(a.as_bytes());
    }
    match cmd.query::<Value>(con) {
        Ok(Value::ServerError(e)) => Err(format!("{e:?}")),
        Ok(v) => Ok(v_list(&v).iter().map(v_str).collect()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn key_extraction_matches_getkeys() {
    let Some((_guard, mut con)) = start_redis() else {
        return;
    };
    let mut problems = Vec::new();
    for line in GETKEYS_OK {
        let args = split_args(line);
        let live = getkeys(&mut con, &args);
        let ours = our_keys(&args);
        match (&live, &ours) {
            (Ok(l), Ok(o)) if l == o => {}
            _ => problems.push(format!("{line}: GETKEYS {live:?}, for_each_key {ours:?}")),
        }
    }
    for line in GETKEYS_ERR {
        let args = split_args(line);
        let live = getkeys(&mut con, &args);
        let ours = our_keys(&args);
        if live.is_ok() || ours.is_ok() {
            problems.push(format!(
                "{line} should fail: GETKEYS {live:?}, for_each_key {ours:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
