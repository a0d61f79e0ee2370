//! Commands the generated table does not know (modules, newer Redis), learned from the
//! cluster's own `COMMAND` reply at startup so they can be routed by their keys.
//!
//! Owns: turning `COMMAND` rows into [`CommandSpec`]s (key specs when the node gives them, the
//! legacy first/last/step triple otherwise) and the learned table. Learned once: the data is
//! leaked into `'static`, bounded by the size of one `COMMAND` reply.
//! Must not: replace anything in the generated table, or run on the hot path (lookup only falls
//! back here for names the table lacks).

use redis_protocol::resp2::types::OwnedFrame;
use std::sync::OnceLock;

use super::table::{self, BeginSearch, CommandSpec, FindKeys, KeySpec};
use crate::cluster::topology::{int, text};

static LEARNED: OnceLock<Vec<CommandSpec>> = OnceLock::new();

/// The learned commands, sorted by name.
pub fn learned() -> &'static [CommandSpec] {
    LEARNED.get().map(|v| &v[..]).unwrap_or(&[])
}

/// Whether the learned table has been filled (successfully or with nothing new).
pub fn is_learned() -> bool {
    LEARNED.get().is_some()
}

fn arr(f: &OwnedFrame) -> &[OwnedFrame] {
    match f {
        OwnedFrame::Array(a) => a,
        _ => &[],
    }
}

/// Value of `key` in a RESP2 flat map.
fn field<'a>(map: &'a [OwnedFrame], key: &str) -> Option<&'a OwnedFrame> {
    map.chunks(2)
        .find(|kv| text(&kv[0]).as_deref() == Some(key))
        .and_then(|kv| kv.get(1))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn key_spec(spec: &[OwnedFrame]) -> Option<KeySpec> {
    let mut flags = 0u32;
    for f in arr(field(spec, "flags")?) {
        let name = text(f)?.to_ascii_lowercase();
        if let Some((bit, _)) = table::KS_FLAG_NAMES.iter().find(|(_, n)| *n == name) {
            flags |= bit;
        }
    }
    let bs = arr(field(spec, "begin_search")?);
    let bs_spec = arr(field(bs, "spec")?);
    let begin = match text(field(bs, "type")?)?.as_str() {
        "index" => BeginSearch::Index(int(field(bs_spec, "index")?)? as i32),
        "keyword" => BeginSearch::Keyword {
            keyword: leak(text(field(bs_spec, "keyword")?)?),
            start_from: int(field(bs_spec, "startfrom")?)? as i32,
        },
        _ => BeginSearch::Unknown,
    };
    let fk = arr(field(spec, "find_keys")?);
    let fk_spec = arr(field(fk, "spec")?);
    let find = match text(field(fk, "type")?)?.as_str() {
        "range" => FindKeys::Range {
            last_key: int(field(fk_spec, "lastkey")?)? as i32,
            key_step: int(field(fk_spec, "keystep")?)? as i32,
            limit: int(field(fk_spec, "limit")?)? as i32,
        },
        "keynum" => FindKeys::Keynum {
            keynum_idx: int(field(fk_spec, "keynumidx")?)? as i32,
            first_key: int(field(fk_spec, "firstkey")?)? as i32,
            key_step: int(field(fk_spec, "keystep")?)? as i32,
        },
        _ => FindKeys::Unknown,
    };
    Some(KeySpec { begin, find, flags })
}

/// One `COMMAND` row as a spec (no subcommands: a learned container is routed by its own keys).
pub fn spec_from_row(row: &OwnedFrame) -> Option<CommandSpec> {
    let r = arr(row);
    let name = text(r.first()?)?.to_ascii_lowercase();
    let arity = int(r.get(1)?)? as i32;
    let mut flags = 0u64;
    for f in arr(r.get(2)?) {
        let n = text(f)?.to_ascii_lowercase();
        if let Some((bit, _)) = table::FLAG_NAMES.iter().find(|(_, x)| *x == n) {
            flags |= bit;
        }
    }
    let (first, last, step) = (
        int(r.get(3)?)? as i32,
        int(r.get(4)?)? as i32,
        int(r.get(5)?)? as i32,
    );
    let mut acl = 0u64;
    for f in r.get(6).map(arr).unwrap_or(&[]) {
        let n = text(f)
            .unwrap_or_default()
            .trim_start_matches('@')
            .to_ascii_lowercase();
        if let Some((bit, _)) = table::ACL_NAMES.iter().find(|(_, x)| *x == n) {
            acl |= bit;
        }
    }
    let mut specs: Vec<KeySpec> = r
        .get(8)
        .map(arr)
        .unwrap_or(&[])
        .iter()
        .filter_map(|s| key_spec(arr(s)))
        .collect();
    if specs.is_empty() && first > 0 {
        // The legacy triple: `last` is absolute (negative: from the end); key specs count it
        // from the first key.
        let last_key = if last < 0 { last } else { last - first };
        specs.push(KeySpec {
            begin: BeginSearch::Index(first),
            find: FindKeys::Range {
                last_key,
                key_step: step.max(1),
                limit: 0,
            },
            flags: 0,
        });
    }
    Some(CommandSpec {
        name: leak(name),
        arity,
        flags,
        acl,
        first_key: first,
        last_key: last,
        step,
        key_specs: Box::leak(specs.into_boxed_slice()),
        subcommands: &[],
    })
}

/// Records the commands in a `COMMAND` reply that the generated table lacks. Returns how many.
pub fn learn(reply: &OwnedFrame) -> usize {
    let mut new: Vec<CommandSpec> = arr(reply)
        .iter()
        .filter_map(spec_from_row)
        .filter(|c| super::find(table::COMMANDS, c.name.as_bytes(), "").is_none())
        .collect();
    new.sort_by(|a, b| a.name.cmp(b.name));
    let n = new.len();
    let _ = LEARNED.set(new);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::decode::decode;

    #[test]
    fn learns_a_module_command_with_key_specs_and_one_with_a_triple() {
        // Shaped like Redis 7's COMMAND output for two module commands.
        let raw = b"*2\r\n\
*10\r\n$8\r\nmod.getx\r\n:2\r\n*2\r\n+readonly\r\n+module\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n\
*1\r\n*6\r\n$5\r\nflags\r\n*1\r\n$2\r\nRO\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n\
$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n\
*10\r\n$9\r\nmod.multi\r\n:-2\r\n*1\r\n+module\r\n:1\r\n:-1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n";
        let (frame, _) = decode(raw).unwrap().unwrap();
        let rows = arr(&frame);
        let a = spec_from_row(&rows[0]).unwrap();
        assert_eq!(a.name, "mod.getx");
        assert_eq!(a.key_specs[0].begin, BeginSearch::Index(1));
        assert!(a.flags & table::F_READONLY != 0 && a.flags & table::F_MODULE != 0);
        let b = spec_from_row(&rows[1]).unwrap();
        assert_eq!(
            b.key_specs[0].find,
            FindKeys::Range {
                last_key: -1,
                key_step: 1,
                limit: 0
            }
        );
        let args: [&[u8]; 3] = [b"mod.multi", b"k1", b"k2"];
        let mut keys = Vec::new();
        super::super::keys::for_each_key(&b, &args, |i, _| keys.push(i)).unwrap();
        assert_eq!(keys, vec![1, 2]);
    }
}
