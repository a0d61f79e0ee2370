//! Key extraction: finds which arguments of a command are keys, driven by the
//! command's Redis 7 key specifications in [`super::table`].
//!
//! This module owns key extraction and nothing else: it must not allocate and
//! must not know about slots, nodes or routing. It mirrors Redis's own
//! `getKeysUsingKeySpecs` (db.c), plus the few `getkeys_proc` special cases
//! Redis needs for specs it cannot describe.
//!
//! # Callback
//!
//! [`for_each_key`] calls `f(arg_index, ks_flags)`: `arg_index` indexes `args`
//! (`args[0]` is the command name) and `ks_flags` are the `KS_*` bits of the
//! key spec that produced it. Arguments from specs flagged [`KS_NOT_KEY`] (the
//! shard channel of `SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`) are reported too,
//! with `KS_NOT_KEY` set: Redis's `COMMAND GETKEYS` leaves them out, but a
//! cluster proxy must still hash them. Callers that only want real keys skip
//! `flags & KS_NOT_KEY != 0`. A key can be reported more than once if several
//! specs cover it (as in Redis).
//!
//! On `Err`, `f` has not been called at all.
//!
//! # Special cases
//!
//! * A container command (one with subcommands, e.g. `OBJECT`) is resolved to
//!   its subcommand from `args[1]` (case-insensitively) first, so passing either
//!   the container's or the subcommand's spec works. An unknown subcommand has
//!   no keys.
//! * `SORT`: its BY/GET/STORE specs are `Unknown`; like Redis's `sortGetKeys`,
//!   the key is `args[1]`, plus the argument after the *last* `STORE`, skipping
//!   the arguments of `LIMIT` (2), `GET` (1) and `BY` (1).
//! * `SORT_RO`: the `Unknown` BY/GET spec is skipped; the key is `args[1]`.
//! * `MIGRATE` (its `KEYS` spec is `INCOMPLETE`): as Redis does (key specs,
//!   then `migrateGetKeys`), the key is `args[3]` (even if empty), unless a
//!   `KEYS` option is present: found searching backwards from the second-to-last
//!   argument, and confirmed by a forward scan from `args[6]` that skips the
//!   arguments of `AUTH` (1) and `AUTH2` (2). Then every argument after `KEYS`
//!   is a key, and `args[3]` must be empty (else
//!   [`KeysError::MigrateKeyWithKeys`]).
//! * Any other spec whose begin search or find-keys is `Unknown` is skipped;
//!   any other `INCOMPLETE` spec yields the keys it does describe.
//! * `VARIABLE_FLAGS` specs: for `SET` and `BITFIELD` the flags are refined the
//!   way Redis's `setGetKeys` / `bitfieldGetKeys` do (e.g. `SET k v GET` is
//!   `RW|ACCESS|UPDATE`, otherwise `OW|UPDATE`); for any other command the
//!   spec's flags are passed unchanged.
//! * Like `COMMAND GETKEYS`, if the arguments contain no key at all although
//!   the command has (non-`NOT_KEY`) key specs and is not flagged
//!   `no_mandatory_keys`, that is [`KeysError::NoKeys`] (e.g. `XREAD` without
//!   `STREAMS`, `LMPOP 0 ...`). `EVAL s 0` is fine (`no_mandatory_keys`).
//!
//! # Deviations from Redis (`COMMAND GETKEYS`)
//!
//! * `numkeys` of `0` yields no keys for that spec rather than invalidating the
//!   whole command: `ZUNIONSTORE d 0` reports `d` (GETKEYS errors; the server
//!   will reply the real error when the command runs).
//! * A malformed `numkeys` is an error even for `EVAL`/`EVALSHA`/`FCALL` and
//!   their `_RO` variants, where GETKEYS falls back to "no keys".
//! * A range that is empty because no arguments are left yields no keys for
//!   that spec: `PFMERGE dst` (valid in 7.0, sources are optional) reports
//!   `dst`, where Redis 7.0's GETKEYS errors.
//! * Errors of `NOT_KEY` specs are ignored (the spec is skipped): Redis never
//!   evaluates those specs when looking for keys.

use crate::resp::parse_i64;
use std::fmt;

use super::table::F_NO_MANDATORY_KEYS;
use super::table::{
    BeginSearch, CommandSpec, FindKeys, KeySpec, KS_ACCESS, KS_DELETE, KS_NOT_KEY, KS_OW, KS_RO,
    KS_RW, KS_UPDATE, KS_VARIABLE_FLAGS,
};

/// Why the arguments do not fit the command's key specs. Redis replies an error
/// for all of these (arity, syntax or "value is not an integer").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysError {
    /// A key position required by the spec is past the end of the arguments.
    MissingKeyArgument,
    /// The `numkeys` argument is past the end of the arguments.
    MissingNumkeys,
    /// `numkeys` is not a (canonical, 64-bit) integer.
    NumkeysNotInteger,
    /// `numkeys` is negative.
    NumkeysNegative,
    /// `numkeys` announces more keys than there are arguments.
    NumkeysTooLarge,
    /// `MIGRATE` with both a non-empty key argument and the `KEYS` option.
    MigrateKeyWithKeys,
    /// The arguments contain no key, but the command needs at least one (it has
    /// key specs and is not flagged `no_mandatory_keys`), e.g. `XREAD` without
    /// `STREAMS`, or `SINTERCARD 0`.
    NoKeys,
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeysError::MissingKeyArgument => "wrong number of arguments: a key argument is missing",
            KeysError::MissingNumkeys => {
                "wrong number of arguments: the numkeys argument is missing"
            }
            KeysError::NumkeysNotInteger => "numkeys is not an integer or out of range",
            KeysError::NumkeysNegative => "numkeys can't be negative",
            KeysError::NumkeysTooLarge => "numkeys is greater than the number of key arguments",
            KeysError::MigrateKeyWithKeys => {
                "when using MIGRATE KEYS option, the key argument must be set to the empty string"
            }
            KeysError::NoKeys => "syntax error: the command needs at least one key argument",
        })
    }
}

impl std::error::Error for KeysError {}

/// Calls `f(arg_index, ks_flags)` for each key argument of the command `args`
/// (`args[0]` is the command name, `args[1]` maybe the subcommand) per
/// `spec.key_specs`, in spec order. Returns `Err` (without having called `f`)
/// when the arguments are malformed for the spec: `numkeys` missing, not a
/// number, negative, or more keys than arguments; a fixed key position past
/// the end. Does not allocate. See the module docs for the special cases.
///
/// `args` is any slice of byte strings, e.g. `&[&[u8]]`.
pub fn for_each_key<A: AsRef<[u8]>>(
    spec: &CommandSpec,
    args: &[A],
    mut f: impl FnMut(usize, u32),
) -> Result<(), KeysError> {
    let spec = resolve_subcommand(spec, args);
    match spec.name {
        "sort" => return sort_keys(args, &mut f),
        "migrate" => return migrate_keys(args, &mut f),
        _ => {}
    }
    let specs = spec.key_specs;
    // All or nothing: with several specs, validate them all before reporting
    // any key, so that on error `f` is never called (as Redis returns no keys).
    if specs.len() > 1 {
        for ks in specs {
            resolve(ks, args)?;
        }
    }
    let mut found = false;
    for ks in specs {
        if let Some(span) = resolve(ks, args)? {
            found = true;
            let flags = if ks.flags & KS_VARIABLE_FLAGS != 0 {
                refine_variable_flags(spec.name, ks.flags, args)
            } else {
                ks.flags
            };
            let mut i = span.first;
            while i <= span.last {
                f(i, flags);
                i += span.step;
            }
        }
    }
    // Like COMMAND GETKEYS: a command that declares keys must have at least one,
    // unless it is flagged no_mandatory_keys (EVAL, FCALL, ...). `f` was not
    // called if we get here with nothing found.
    if !found
        && spec.flags & F_NO_MANDATORY_KEYS == 0
        && specs.iter().any(|ks| ks.flags & KS_NOT_KEY == 0)
    {
        return Err(KeysError::NoKeys);
    }
    Ok(())
}

/// Returns the subcommand of a container command named by `args[1]`, or `spec`
/// itself if it has no subcommands or `args[1]` names none of them.
fn resolve_subcommand<'a, A: AsRef<[u8]>>(spec: &'a CommandSpec, args: &[A]) -> &'a CommandSpec {
    if spec.subcommands.is_empty() {
        return spec;
    }
    let Some(sub) = args.get(1) else {
        return spec;
    };
    let sub = sub.as_ref();
    spec.subcommands
        .iter()
        .find(|s| {
            let short = s.name.split_once('|').map_or(s.name, |(_, short)| short);
            short.as_bytes().eq_ignore_ascii_case(sub)
        })
        .unwrap_or(spec)
}

/// Inclusive argument index range `first..=last`, every `step`.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    last: usize,
    step: usize,
}

/// Where the keys of one spec are, `None` if the spec yields none here.
fn resolve<A: AsRef<[u8]>>(ks: &KeySpec, args: &[A]) -> Result<Option<Span>, KeysError> {
    let r = resolve_inner(ks, args);
    if ks.flags & KS_NOT_KEY != 0 {
        // Redis never evaluates these when looking for keys; never fail on them.
        return Ok(r.unwrap_or(None));
    }
    r
}

fn resolve_inner<A: AsRef<[u8]>>(ks: &KeySpec, args: &[A]) -> Result<Option<Span>, KeysError> {
    let argc = args.len() as i64;
    let first = match ks.begin {
        BeginSearch::Index(i) => i64::from(i),
        BeginSearch::Keyword {
            keyword,
            start_from,
        } => match find_keyword(args, keyword, start_from) {
            Some(i) => i + 1,
            None => return Ok(None),
        },
        BeginSearch::Unknown => return Ok(None),
    };
    let (first, last, step) = match ks.find {
        FindKeys::Range {
            last_key,
            key_step,
            limit,
        } => {
            let last_key = i64::from(last_key);
            let last = if last_key >= 0 {
                first + last_key
            } else if limit <= 0 {
                argc + last_key
            } else {
                // Redis: first + ((argc - first) / limit + lastkey), lastkey == -1.
                first + ((argc - first) / i64::from(limit) + last_key)
            };
            (first, last, key_step)
        }
        FindKeys::Keynum {
            keynum_idx,
            first_key,
            key_step,
        } => {
            let idx = first + i64::from(keynum_idx);
            if idx < 1 || idx >= argc {
                return Err(KeysError::MissingNumkeys);
            }
            let numkeys =
                parse_i64(args[idx as usize].as_ref()).ok_or(KeysError::NumkeysNotInteger)?;
            if numkeys < 0 {
                return Err(KeysError::NumkeysNegative);
            }
            if numkeys == 0 {
                return Ok(None);
            }
            let first = first + i64::from(first_key);
            let last = first.saturating_add(numkeys - 1);
            if last >= argc {
                return Err(KeysError::NumkeysTooLarge);
            }
            (first, last, key_step)
        }
        FindKeys::Unknown => return Ok(None),
    };
    if last < first {
        return Ok(None);
    }
    if first < 1 || last >= argc {
        return Err(KeysError::MissingKeyArgument);
    }
    Ok(Some(Span {
        first: first as usize,
        last: last as usize,
        step: step.max(1) as usize,
    }))
}

/// Redis's keyword begin search: forwards from `start_from` up to (not
/// including) the last argument, or, when `start_from` is negative, backwards
/// from `argc + start_from` down to (not including) `args[1]`. Returns the
/// keyword's index.
fn find_keyword<A: AsRef<[u8]>>(args: &[A], keyword: &str, start_from: i32) -> Option<i64> {
    let argc = args.len() as i64;
    let start_from = i64::from(start_from);
    let (start, end) = if start_from > 0 {
        (start_from, argc - 1)
    } else {
        (argc + start_from, 1)
    };
    let delta = if start <= end { 1 } else { -1 };
    let mut i = start;
    while i != end {
        if i >= argc || i < 1 {
            break;
        }
        if args[i as usize]
            .as_ref()
            .eq_ignore_ascii_case(keyword.as_bytes())
        {
            return Some(i);
        }
        i += delta;
    }
    None
}

fn eq_ci(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Redis's `sortGetKeys`.
fn sort_keys<A: AsRef<[u8]>>(args: &[A], f: &mut impl FnMut(usize, u32)) -> Result<(), KeysError> {
    if args.len() < 2 {
        return Err(KeysError::MissingKeyArgument);
    }
    let mut store = None;
    let mut i = 2;
    while i < args.len() {
        let a = args[i].as_ref();
        if eq_ci(a, "limit") {
            i += 2;
        } else if eq_ci(a, "get") || eq_ci(a, "by") {
            i += 1;
        } else if eq_ci(a, "store") && i + 1 < args.len() {
            // The last STORE wins, as in SORT itself.
            store = Some(i + 1);
        }
        i += 1;
    }
    f(1, KS_RO | KS_ACCESS);
    if let Some(s) = store {
        f(s, KS_OW | KS_UPDATE);
    }
    Ok(())
}

/// Redis's `migrateGetKeys`.
fn migrate_keys<A: AsRef<[u8]>>(
    args: &[A],
    f: &mut impl FnMut(usize, u32),
) -> Result<(), KeysError> {
    const FLAGS: u32 = KS_RW | KS_ACCESS | KS_DELETE;
    let argc = args.len();
    if argc < 4 {
        return Err(KeysError::MissingKeyArgument);
    }
    // Redis first tries the key specs: the INCOMPLETE `KEYS` spec searches
    // backwards from the second-to-last argument; only if that finds `KEYS` does
    // it fall back to migrateGetKeys. Otherwise the key is args[3] (even if empty).
    if find_keyword(args, "KEYS", -2).is_none() {
        f(3, FLAGS);
        return Ok(());
    }
    let mut keys_at = None;
    let mut i = 6;
    while i < argc {
        let a = args[i].as_ref();
        if eq_ci(a, "keys") {
            keys_at = Some(i);
            break;
        } else if eq_ci(a, "auth") {
            i += 1;
        } else if eq_ci(a, "auth2") {
            i += 2;
        }
        i += 1;
    }
    match keys_at {
        Some(k) => {
            if !args[3].as_ref().is_empty() {
                return Err(KeysError::MigrateKeyWithKeys);
            }
            for j in k + 1..argc {
                f(j, FLAGS);
            }
        }
        None => f(3, FLAGS),
    }
    Ok(())
}

/// Exact flags for the `VARIABLE_FLAGS` specs Redis refines in a getkeys proc.
fn refine_variable_flags<A: AsRef<[u8]>>(name: &str, flags: u32, args: &[A]) -> u32 {
    match name {
        // setGetKeys: any argument from args[3] on that is GET.
        "set" => {
            if args.iter().skip(3).any(|a| eq_ci(a.as_ref(), "get")) {
                KS_RW | KS_ACCESS | KS_UPDATE
            } else {
                KS_OW | KS_UPDATE
            }
        }
        // bitfieldGetKeys: a GET from args[2] on with at least 2 arguments after it.
        "bitfield" => {
            let argc = args.len();
            let has_get = (2..argc).any(|i| eq_ci(args[i].as_ref(), "get") && argc - i > 2);
            if has_get {
                KS_RO | KS_ACCESS
            } else {
                KS_RW | KS_ACCESS | KS_UPDATE
            }
        }
        _ => flags,
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::{COMMANDS, KS_INSERT};
    use super::*;

    fn find(name: &str) -> &'static CommandSpec {
        let (top, sub) = match name.split_once('|') {
            Some((t, _)) => (t, Some(name)),
            None => (name, None),
        };
        let c = COMMANDS
            .iter()
            .find(|c| c.name == top)
            .unwrap_or_else(|| panic!("no command {top}"));
        match sub {
            None => c,
            Some(full) => c
                .subcommands
                .iter()
                .find(|s| s.name == full)
                .unwrap_or_else(|| panic!("no subcommand {full}")),
        }
    }

    /// Key indices (with flags) for a whitespace-separated command line, using
    /// the top-level spec named by its first word.
    fn keys_with_flags(line: &str) -> Result<Vec<(usize, u32)>, KeysError> {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        let spec = find(&line.split_whitespace().next().unwrap().to_ascii_lowercase());
        let mut out = Vec::new();
        for_each_key(spec, &args[..], |i, fl| out.push((i, fl)))?;
        Ok(out)
    }

    fn keys(line: &str) -> Result<Vec<usize>, KeysError> {
        keys_with_flags(line).map(|v| v.into_iter().map(|(i, _)| i).collect())
    }

    #[test]
    fn table_is_sorted() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
        }
        for c in COMMANDS {
            for w in c.subcommands.windows(2) {
                assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
            }
            for s in c.subcommands {
                assert!(s.name.starts_with(c.name) && s.name.contains('|'));
            }
        }
    }

    #[test]
    fn get() {
        assert_eq!(keys_with_flags("GET k"), Ok(vec![(1, KS_RO | KS_ACCESS)]));
        assert_eq!(keys("get k"), Ok(vec![1]));
        assert_eq!(keys("GET"), Err(KeysError::MissingKeyArgument));
    }

    #[test]
    fn mset_step_2() {
        assert_eq!(keys("MSET a 1 b 2 c 3"), Ok(vec![1, 3, 5]));
    }

    #[test]
    fn mget_and_del() {
        assert_eq!(keys("MGET a b c"), Ok(vec![1, 2, 3]));
        assert_eq!(keys("DEL a"), Ok(vec![1]));
        assert_eq!(keys("DEL a b c d"), Ok(vec![1, 2, 3, 4]));
    }

    #[test]
    fn eval_numkeys() {
        assert_eq!(keys("EVAL script 0"), Ok(vec![]));
        assert_eq!(keys("EVAL script 0 arg1 arg2"), Ok(vec![]));
        assert_eq!(keys("EVAL script 2 k1 k2 arg1"), Ok(vec![3, 4]));
        assert_eq!(keys("eval_ro script 1 k1"), Ok(vec![3]));
    }

    #[test]
    fn evalsha_and_fcall() {
        assert_eq!(keys("EVALSHA abc123 1 k1 a"), Ok(vec![3]));
        assert_eq!(keys("FCALL fn 2 k1 k2 a b"), Ok(vec![3, 4]));
        assert_eq!(keys("FCALL_RO fn 1 k1"), Ok(vec![3]));
    }

    #[test]
    fn zunionstore_dest_and_numkeys() {
        assert_eq!(
            keys_with_flags("ZUNIONSTORE dst 2 a b WEIGHTS 1 2"),
            Ok(vec![
                (1, KS_OW | KS_UPDATE),
                (3, KS_RO | KS_ACCESS),
                (4, KS_RO | KS_ACCESS)
            ])
        );
    }

    #[test]
    fn zunion_numkeys() {
        assert_eq!(keys("ZUNION 3 a b c WITHSCORES"), Ok(vec![2, 3, 4]));
    }

    #[test]
    fn xread_streams_limit() {
        assert_eq!(keys("XREAD COUNT 2 STREAMS a b 0 0"), Ok(vec![4, 5]));
        assert_eq!(keys("xread block 0 streams a $"), Ok(vec![4]));
        // The keyword is matched case-insensitively.
        assert_eq!(keys("XREAD sTrEaMs a b c 0 0 0"), Ok(vec![2, 3, 4]));
    }

    #[test]
    fn xreadgroup() {
        assert_eq!(keys("XREADGROUP GROUP g c STREAMS a >"), Ok(vec![5]));
        assert_eq!(
            keys("XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >"),
            Ok(vec![8, 9])
        );
    }

    #[test]
    fn sort_with_store() {
        assert_eq!(keys("SORT k"), Ok(vec![1]));
        assert_eq!(
            keys_with_flags("SORT k LIMIT 0 10 STORE dst"),
            Ok(vec![(1, KS_RO | KS_ACCESS), (6, KS_OW | KS_UPDATE)])
        );
        // The last STORE wins; BY/GET arguments are skipped (a GET pattern named "store").
        assert_eq!(
            keys("SORT k BY w GET store STORE d1 STORE d2"),
            Ok(vec![1, 9])
        );
        assert_eq!(keys("SORT k GET store"), Ok(vec![1]));
        assert_eq!(keys("SORT_RO k BY w GET x"), Ok(vec![1]));
    }

    #[test]
    fn migrate_single_key_and_keys_form() {
        assert_eq!(keys("MIGRATE host 6379 k 0 5000"), Ok(vec![3]));
        assert_eq!(keys("MIGRATE host 6379 k 0 5000 COPY REPLACE"), Ok(vec![3]));
        let args: [&[u8]; 10] = [
            b"MIGRATE", b"host", b"6379", b"", b"0", b"5000", b"COPY", b"KEYS", b"a", b"b",
        ];
        let mut out = Vec::new();
        for_each_key(find("migrate"), &args, |i, fl| out.push((i, fl))).unwrap();
        let fl = KS_RW | KS_ACCESS | KS_DELETE;
        assert_eq!(out, vec![(8, fl), (9, fl)]);
        // AUTH's password "keys" is not the KEYS option.
        let args: [&[u8]; 10] = [
            b"MIGRATE", b"host", b"6379", b"", b"0", b"5000", b"AUTH", b"keys", b"KEYS", b"a",
        ];
        let mut out = Vec::new();
        for_each_key(find("migrate"), &args, |i, _| out.push(i)).unwrap();
        assert_eq!(out, vec![9]);
        assert_eq!(
            keys("MIGRATE host 6379 k 0 5000 KEYS a b"),
            Err(KeysError::MigrateKeyWithKeys)
        );
    }

    #[test]
    fn object_encoding_subcommand() {
        assert_eq!(keys("OBJECT ENCODING k"), Ok(vec![2]));
        assert_eq!(keys("object encoding k"), Ok(vec![2]));
        assert_eq!(keys("OBJECT HELP"), Ok(vec![]));
        // Passing the subcommand's own spec works too.
        let args: [&[u8]; 3] = [b"OBJECT", b"ENCODING", b"k"];
        let mut out = Vec::new();
        for_each_key(find("object|encoding"), &args, |i, fl| out.push((i, fl))).unwrap();
        assert_eq!(out, vec![(2, KS_RO)]);
    }

    #[test]
    fn xinfo_stream_and_memory_usage() {
        assert_eq!(keys("XINFO STREAM s FULL COUNT 10"), Ok(vec![2]));
        assert_eq!(keys("MEMORY USAGE k SAMPLES 5"), Ok(vec![2]));
    }

    #[test]
    fn bitop() {
        assert_eq!(
            keys_with_flags("BITOP AND dst a b"),
            Ok(vec![
                (2, KS_OW | KS_UPDATE),
                (3, KS_RO | KS_ACCESS),
                (4, KS_RO | KS_ACCESS)
            ])
        );
    }

    #[test]
    fn lmpop_and_blmpop() {
        assert_eq!(keys("LMPOP 2 a b LEFT"), Ok(vec![2, 3]));
        assert_eq!(keys("LMPOP 2 a b LEFT COUNT 3"), Ok(vec![2, 3]));
        assert_eq!(keys("BLMPOP 0 2 a b RIGHT"), Ok(vec![3, 4]));
        assert_eq!(keys("BZMPOP 1.5 1 z MIN"), Ok(vec![3]));
    }

    #[test]
    fn georadius_store() {
        assert_eq!(keys("GEORADIUS g 15 37 200 km"), Ok(vec![1]));
        assert_eq!(
            keys("GEORADIUS g 15 37 200 km ASC STORE dst"),
            Ok(vec![1, 8])
        );
        assert_eq!(
            keys("GEORADIUS g 15 37 200 km STORE d1 STOREDIST d2"),
            Ok(vec![1, 7, 9])
        );
        assert_eq!(
            keys("GEORADIUSBYMEMBER g m 200 km STOREDIST dst"),
            Ok(vec![1, 6])
        );
        // A trailing STORE with no key after it is not found (as in Redis).
        assert_eq!(keys("GEORADIUS g 15 37 200 km STORE"), Ok(vec![1]));
    }

    #[test]
    fn sintercard_numkeys() {
        assert_eq!(keys("SINTERCARD 2 a b LIMIT 5"), Ok(vec![2, 3]));
        assert_eq!(keys("ZINTERCARD 1 z"), Ok(vec![2]));
    }

    #[test]
    fn numkeys_errors() {
        assert_eq!(keys("EVAL s 3 a b"), Err(KeysError::NumkeysTooLarge));
        assert_eq!(keys("EVAL s abc a"), Err(KeysError::NumkeysNotInteger));
        assert_eq!(keys("EVAL s -1 a"), Err(KeysError::NumkeysNegative));
        assert_eq!(keys("EVAL s 01 a"), Err(KeysError::NumkeysNotInteger));
        assert_eq!(keys("EVAL s +1 a"), Err(KeysError::NumkeysNotInteger));
        assert_eq!(
            keys("EVAL s 99999999999999999999 a"),
            Err(KeysError::NumkeysNotInteger)
        );
        assert_eq!(
            keys("EVAL s 9223372036854775807 a"),
            Err(KeysError::NumkeysTooLarge)
        );
        assert_eq!(keys("SINTERCARD x a"), Err(KeysError::NumkeysNotInteger));
        assert_eq!(keys("ZUNION 5 a b"), Err(KeysError::NumkeysTooLarge));
        assert_eq!(keys("EVAL s"), Err(KeysError::MissingNumkeys));
    }

    #[test]
    fn no_keys_at_all() {
        assert_eq!(keys("XREAD COUNT 1 BLOCK 0"), Err(KeysError::NoKeys));
        assert_eq!(keys("XREAD COUNT 1 STREAMS"), Err(KeysError::NoKeys));
        assert_eq!(keys("LMPOP 0 LEFT"), Err(KeysError::NoKeys));
        assert_eq!(keys("SINTERCARD 0"), Err(KeysError::NoKeys));
        // numkeys 0 with a destination: the destination is still reported.
        assert_eq!(keys("ZUNIONSTORE dst 0"), Ok(vec![1]));
        // no_mandatory_keys commands may have none.
        assert_eq!(keys("EVAL s 0"), Ok(vec![]));
        assert_eq!(keys("FCALL f 0"), Ok(vec![]));
    }

    #[test]
    fn no_callback_on_error() {
        // ZUNIONSTORE's first spec (dst) is fine, the second is not: nothing is reported.
        let args: [&[u8]; 4] = [b"ZUNIONSTORE", b"dst", b"3", b"a"];
        let mut called = 0;
        let r = for_each_key(find("zunionstore"), &args, |_, _| called += 1);
        assert_eq!(r, Err(KeysError::NumkeysTooLarge));
        assert_eq!(called, 0);
    }

    #[test]
    fn not_key_channels_are_flagged() {
        assert_eq!(
            keys_with_flags("SPUBLISH ch msg"),
            Ok(vec![(1, KS_NOT_KEY)])
        );
        assert_eq!(
            keys_with_flags("SSUBSCRIBE a b"),
            Ok(vec![(1, KS_NOT_KEY), (2, KS_NOT_KEY)])
        );
        // No channels at all is valid for SUNSUBSCRIBE, not an error.
        assert_eq!(keys("SUNSUBSCRIBE"), Ok(vec![]));
    }

    #[test]
    fn variable_flags_refined() {
        assert_eq!(keys_with_flags("SET k v"), Ok(vec![(1, KS_OW | KS_UPDATE)]));
        assert_eq!(
            keys_with_flags("SET k v NX get"),
            Ok(vec![(1, KS_RW | KS_ACCESS | KS_UPDATE)])
        );
        assert_eq!(
            keys_with_flags("BITFIELD k GET u8 0"),
            Ok(vec![(1, KS_RO | KS_ACCESS)])
        );
        assert_eq!(
            keys_with_flags("BITFIELD k INCRBY u8 0 1"),
            Ok(vec![(1, KS_RW | KS_ACCESS | KS_UPDATE)])
        );
        for (_, fl) in keys_with_flags("SET k v").unwrap() {
            assert_eq!(fl & KS_VARIABLE_FLAGS, 0);
        }
    }

    #[test]
    fn misc() {
        assert_eq!(keys("RENAME a b"), Ok(vec![1, 2]));
        assert_eq!(keys("PFMERGE dst"), Ok(vec![1]));
        assert_eq!(keys("PFMERGE dst a b"), Ok(vec![1, 2, 3]));
        assert_eq!(keys("LMOVE a b LEFT RIGHT"), Ok(vec![1, 2]));
        assert_eq!(keys("PFCOUNT a b c"), Ok(vec![1, 2, 3]));
        assert_eq!(
            keys_with_flags("LPUSH l x"),
            Ok(vec![(1, KS_RW | KS_INSERT)])
        );
        assert_eq!(keys("PING"), Ok(vec![]));
        assert_eq!(keys("CONFIG GET maxmemory"), Ok(vec![]));
    }
}
