#!/usr/bin/env python3
"""Generate src/command/table.rs (the Redis command table) from a live redis-server.

Usage (from the repository root):

    python3 tools/gen_commands.py > src/command/table.rs
    python3 tools/gen_commands.py src/command/table.rs
    python3 tools/gen_commands.py --redis-server /path/to/redis-server src/command/table.rs

What it does:

  1. starts a throwaway standalone redis-server on a free 127.0.0.1 port, in a
     temporary directory, with persistence off (--save '' --appendonly no);
  2. sends `COMMAND` over a plain socket (RESP2, parsed by the tiny parser below,
     so no Python dependency is needed) and `INFO server` for the version;
  3. stops the server and removes the temporary directory (also on errors);
  4. writes Rust source: the KeySpec/BeginSearch/FindKeys/CommandSpec types, the
     F_* (command flag), A_* (ACL category) and KS_* (key-spec flag) bit
     constants, their name tables, and `COMMANDS` sorted by name, each with its
     subcommands sorted by name.

The output is deterministic for a given server build and is laid out the way
rustfmt would lay it out, so `cargo fmt` after regenerating is a no-op (or
close to it). Any reply shape the generator does not understand is a hard error
rather than being silently dropped.

Bit assignment is stable: the F_*, A_* and KS_* constants are numbered from the
canonical Redis 7.0 lists below (in Redis's own order); names the server reports
that are not in these lists are appended in sorted order and get the next bits.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Command flags, in the order of Redis 7.0's server.h / COMMAND reply. A few of
# these (module, may_replicate, sentinel, only_sentinel, protected) are never
# reported by COMMAND on a standalone 7.0 server, but we keep the constants so the
# bit layout does not depend on which server the table was generated from.
CANONICAL_FLAGS = [
    "write",
    "readonly",
    "denyoom",
    "module",
    "admin",
    "pubsub",
    "noscript",
    "blocking",
    "loading",
    "stale",
    "skip_monitor",
    "skip_slowlog",
    "asking",
    "fast",
    "no_auth",
    "may_replicate",
    "sentinel",
    "only_sentinel",
    "no_mandatory_keys",
    "protected",
    "no_async_loading",
    "no_multi",
    "movablekeys",
    "allow_busy",
]

# ACL categories, in the order of Redis 7.0's ACLCommandCategories (acl.c).
CANONICAL_ACL = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
]

# Key-spec flags, in the order of Redis 7.0's CMD_KEY_* definitions (server.h).
CANONICAL_KS = [
    "RO",
    "RW",
    "OW",
    "RM",
    "ACCESS",
    "UPDATE",
    "INSERT",
    "DELETE",
    "NOT_KEY",
    "INCOMPLETE",
    "VARIABLE_FLAGS",
]


# --------------------------------------------------------------------------
# A tiny RESP2 client.
# --------------------------------------------------------------------------


class RespError(Exception):
    pass


class Resp:
    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise RespError("connection closed or malformed line: %r" % line)
        return line[:-2]

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            if len(data) != n + 2 or not data.endswith(b"\r\n"):
                raise RespError("short bulk string")
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RespError("unexpected RESP type byte in %r" % line)


# --------------------------------------------------------------------------
# Throwaway server.
# --------------------------------------------------------------------------


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Server:
    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="slotmux-gen-")
        self.proc = None
        self.port = None

    def start(self):
        last_err = None
        for _attempt in range(5):
            self.port = free_port()
            try:
                self.proc = self._spawn()
            except OSError as e:
                raise SystemExit("could not start %s: %s" % (self.binary, e))
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_err = "redis-server exited with status %s" % self.proc.returncode
                    break
                try:
                    c = Resp(self.port, timeout=2.0)
                    try:
                        if c.call("PING") == "PONG":
                            return
                    finally:
                        c.close()
                except (OSError, RespError) as e:
                    last_err = str(e)
                time.sleep(0.05)
            self._kill()
        raise SystemExit("could not start %s: %s" % (self.binary, last_err))

    def _spawn(self):
        return subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self):
        try:
            self._kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Decoding COMMAND.
# --------------------------------------------------------------------------


def pairs(flat, what):
    """A RESP2-flattened map -> dict (keeps the first occurrence order)."""
    if not isinstance(flat, list) or len(flat) % 2:
        raise SystemExit("%s: expected a flat map, got %r" % (what, flat))
    d = {}
    for k, v in zip(flat[0::2], flat[1::2]):
        if not isinstance(k, str):
            raise SystemExit("%s: non-string map key %r" % (what, k))
        d[k] = v
    return d


def want_int(v, what):
    if not isinstance(v, int):
        raise SystemExit("%s: expected integer, got %r" % (what, v))
    return v


def parse_key_spec(raw, cmd):
    what = "%s key spec" % cmd
    d = pairs(raw, what)
    unknown = set(d) - {"flags", "begin_search", "find_keys", "notes"}
    if unknown:
        raise SystemExit("%s: unknown fields %s" % (what, sorted(unknown)))
    flags = [f.upper() for f in d["flags"]]

    bs = pairs(d["begin_search"], what + " begin_search")
    bs_spec = pairs(bs["spec"], what + " begin_search spec")
    if bs["type"] == "index":
        begin = ("index", want_int(bs_spec["index"], what))
    elif bs["type"] == "keyword":
        begin = (
            "keyword",
            bs_spec["keyword"],
            want_int(bs_spec["startfrom"], what),
        )
    elif bs["type"] == "unknown":
        begin = ("unknown",)
    else:
        raise SystemExit("%s: unknown begin_search type %r" % (what, bs["type"]))

    fk = pairs(d["find_keys"], what + " find_keys")
    fk_spec = pairs(fk["spec"], what + " find_keys spec")
    if fk["type"] == "range":
        find = (
            "range",
            want_int(fk_spec["lastkey"], what),
            want_int(fk_spec["keystep"], what),
            want_int(fk_spec["limit"], what),
        )
    elif fk["type"] == "keynum":
        find = (
            "keynum",
            want_int(fk_spec["keynumidx"], what),
            want_int(fk_spec["firstkey"], what),
            want_int(fk_spec["keystep"], what),
        )
    elif fk["type"] == "unknown":
        find = ("unknown",)
    else:
        raise SystemExit("%s: unknown find_keys type %r" % (what, fk["type"]))
    return {"flags": flags, "begin": begin, "find": find, "notes": d.get("notes")}


def parse_command(raw):
    # [name, arity, flags, first, last, step, acl categories, tips, key specs, subcommands]
    if not isinstance(raw, list) or len(raw) < 10:
        raise SystemExit("unexpected COMMAND entry: %r" % (raw,))
    name = raw[0].lower()
    return {
        "name": name,
        "arity": want_int(raw[1], name),
        "flags": [f.lower() for f in raw[2]],
        "first": want_int(raw[3], name),
        "last": want_int(raw[4], name),
        "step": want_int(raw[5], name),
        "acl": [a.lstrip("@").lower() for a in raw[6]],
        "key_specs": [parse_key_spec(ks, name) for ks in raw[8]],
        "subcommands": sorted(
            (parse_command(s) for s in (raw[9] or [])), key=lambda c: c["name"].encode()
        ),
    }


def fetch(binary):
    server = Server(binary)
    try:
        server.start()
        c = Resp(server.port)
        try:
            info = c.call("INFO", "server")
            version = "unknown"
            for line in info.splitlines():
                if line.startswith("redis_version:"):
                    version = line.split(":", 1)[1].strip()
            commands = c.call("COMMAND")
        finally:
            c.close()
    finally:
        server.stop()
    cmds = sorted((parse_command(x) for x in commands), key=lambda c: c["name"].encode())
    return version, cmds


# --------------------------------------------------------------------------
# Rust emission.
# --------------------------------------------------------------------------

MAX_WIDTH = 100


def walk(cmds):
    for c in cmds:
        yield c
        yield from walk(c["subcommands"])


def assign_bits(canonical, seen):
    names = list(canonical) + sorted(set(seen) - set(canonical))
    return {n: i for i, n in enumerate(names)}, names


def rust_str(s):
    out = ['"']
    for ch in s:
        if ch in '\\"':
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    out.append('"')
    return "".join(out)


class Emitter:
    def __init__(self):
        self.lines = []

    def line(self, indent, text=""):
        self.lines.append(("    " * indent + text) if text else "")

    def bits_field(self, indent, field, names, prefix):
        """`field: A | B | C,` wrapped the way rustfmt wraps a long `|` chain."""
        if not names:
            self.line(indent, "%s: 0," % field)
            return
        consts = ["%s%s" % (prefix, n.upper()) for n in names]
        one = "%s: %s," % (field, " | ".join(consts))
        if len("    " * indent) + len(one) <= MAX_WIDTH:
            self.line(indent, one)
            return
        self.line(indent, "%s: %s" % (field, consts[0]))
        for i, c in enumerate(consts[1:], 1):
            self.line(indent + 1, "| %s%s" % (c, "," if i == len(consts) - 1 else ""))

    def key_spec(self, indent, ks):
        self.line(indent, "KeySpec {")
        b = ks["begin"]
        if b[0] == "index":
            self.line(indent + 1, "begin: BeginSearch::Index(%d)," % b[1])
        elif b[0] == "keyword":
            self.line(indent + 1, "begin: BeginSearch::Keyword {")
            self.line(indent + 2, "keyword: %s," % rust_str(b[1]))
            self.line(indent + 2, "start_from: %d," % b[2])
            self.line(indent + 1, "},")
        else:
            self.line(indent + 1, "begin: BeginSearch::Unknown,")
        f = ks["find"]
        if f[0] == "range":
            self.line(indent + 1, "find: FindKeys::Range {")
            self.line(indent + 2, "last_key: %d," % f[1])
            self.line(indent + 2, "key_step: %d," % f[2])
            self.line(indent + 2, "limit: %d," % f[3])
            self.line(indent + 1, "},")
        elif f[0] == "keynum":
            self.line(indent + 1, "find: FindKeys::Keynum {")
            self.line(indent + 2, "keynum_idx: %d," % f[1])
            self.line(indent + 2, "first_key: %d," % f[2])
            self.line(indent + 2, "key_step: %d," % f[3])
            self.line(indent + 1, "},")
        else:
            self.line(indent + 1, "find: FindKeys::Unknown,")
        self.bits_field(indent + 1, "flags", ks["flags"], "KS_")
        self.line(indent, "},")

    def command(self, indent, c):
        self.line(indent, "CommandSpec {")
        i = indent + 1
        self.line(i, "name: %s," % rust_str(c["name"]))
        self.line(i, "arity: %d," % c["arity"])
        self.bits_field(i, "flags", c["flags"], "F_")
        self.bits_field(i, "acl", c["acl"], "A_")
        self.line(i, "first_key: %d," % c["first"])
        self.line(i, "last_key: %d," % c["last"])
        self.line(i, "step: %d," % c["step"])
        specs = c["key_specs"]
        if len(specs) == 1 and not specs[0]["notes"]:
            # rustfmt "overflows" a lone struct literal: `&[KeySpec {` ... `}],`
            self.overflow(i, "key_specs", lambda ind: self.key_spec(ind, specs[0]))
        elif specs:
            self.line(i, "key_specs: &[")
            for ks in specs:
                if ks["notes"]:
                    self.line(i + 1, "// %s" % ks["notes"])
                self.key_spec(i + 1, ks)
            self.line(i, "],")
        else:
            self.line(i, "key_specs: &[],")
        subs = c["subcommands"]
        if len(subs) == 1:
            self.overflow(i, "subcommands", lambda ind: self.command(ind, subs[0]))
        elif subs:
            self.line(i, "subcommands: &[")
            for s in subs:
                self.command(i + 1, s)
            self.line(i, "],")
        else:
            self.line(i, "subcommands: &[],")
        self.line(indent, "},")

    def overflow(self, indent, field, emit_one):
        start = len(self.lines)
        emit_one(indent)
        first = self.lines[start].strip()  # "KeySpec {" / "CommandSpec {"
        self.lines[start] = "    " * indent + "%s: &[%s" % (field, first)
        assert self.lines[-1].strip() == "},"
        self.lines[-1] = "    " * indent + "}],"


PRELUDE = '''\
/// One key specification, as in Redis 7's COMMAND INFO "key specifications".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub begin: BeginSearch,
    pub find: FindKeys,
    /// `KS_*` bits.
    pub flags: u32,
}

/// Where the search for the first key of a [`KeySpec`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginSearch {
    /// The first key is at this argument index (`args[0]` is the command name).
    Index(i32),
    /// The first key follows `keyword` (matched case-insensitively), searched from
    /// `start_from` forwards, or backwards from the end when `start_from` is negative.
    Keyword {
        keyword: &'static str,
        start_from: i32,
    },
    /// Redis cannot describe it; the command needs special handling.
    Unknown,
}

/// How the keys are found once the begin search found the first key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys from the first key up to `last_key` (relative to the first key when
    /// non-negative, to the end of the arguments when negative), every `key_step`
    /// arguments; with `last_key == -1` and `limit > 0`, only the first
    /// `1 / limit` of the remaining arguments.
    Range {
        last_key: i32,
        key_step: i32,
        limit: i32,
    },
    /// The number of keys is at `keynum_idx` (relative to the begin-search
    /// result), the keys start at `first_key` (relative to the same), every
    /// `key_step` arguments.
    Keynum {
        keynum_idx: i32,
        first_key: i32,
        key_step: i32,
    },
    /// Redis cannot describe it; the command needs special handling.
    Unknown,
}

/// One command (or subcommand) as reported by `COMMAND`.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lowercase; a subcommand is `"parent|sub"`, e.g. `"config|get"`.
    pub name: &'static str,
    /// As `COMMAND` reports it (negative = at least `-arity` arguments).
    pub arity: i32,
    /// `F_*` bits.
    pub flags: u64,
    /// `A_*` bits.
    pub acl: u64,
    /// Legacy (first, last, step) key triple from `COMMAND`.
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub key_specs: &'static [KeySpec],
    /// Sorted by name; empty if none.
    pub subcommands: &'static [CommandSpec],
}
'''


def render(version, cmds):
    all_cmds = list(walk(cmds))
    flag_bits, flag_names = assign_bits(CANONICAL_FLAGS, (f for c in all_cmds for f in c["flags"]))
    acl_bits, acl_names = assign_bits(CANONICAL_ACL, (a for c in all_cmds for a in c["acl"]))
    ks_bits, ks_names = assign_bits(
        CANONICAL_KS, (f for c in all_cmds for ks in c["key_specs"] for f in ks["flags"])
    )
    if len(flag_names) > 64 or len(acl_names) > 64 or len(ks_names) > 32:
        raise SystemExit("too many distinct flags for the bit width")
    seen_flags = {f for c in all_cmds for f in c["flags"]}
    seen_acl = {a for c in all_cmds for a in c["acl"]}
    seen_ks = {f for c in all_cmds for ks in c["key_specs"] for f in ks["flags"]}

    # Order each command's bit names by bit, so output does not depend on reply order.
    for c in all_cmds:
        c["flags"] = sorted(set(c["flags"]), key=flag_bits.__getitem__)
        c["acl"] = sorted(set(c["acl"]), key=acl_bits.__getitem__)
        for ks in c["key_specs"]:
            ks["flags"] = sorted(set(ks["flags"]), key=ks_bits.__getitem__)

    n_sub = sum(len(c["subcommands"]) for c in cmds)
    e = Emitter()
    e.line(
        0,
        "//! Generated by tools/gen_commands.py from redis-server %s COMMAND output. "
        "Do not edit by hand." % version,
    )
    e.line(0, "//!")
    e.line(
        0,
        "//! %d top-level commands, %d subcommands. Regenerate with "
        "`python3 tools/gen_commands.py src/command/table.rs`." % (len(cmds), n_sub),
    )
    e.line(0)
    for l in PRELUDE.rstrip("\n").split("\n"):
        e.lines.append(l)

    def consts(title, names, bits, prefix, ty, seen, lower):
        e.line(0)
        e.line(0, "// %s" % title)
        for n in names:
            note = "" if n in seen else " // not reported by this server"
            e.line(0, "pub const %s%s: %s = 1 << %d;%s" % (prefix, n.upper(), ty, bits[n], note))
        return [(prefix + n.upper(), n.lower() if lower else n.upper()) for n in names]

    fl = consts("Command flags (`COMMAND` flags).", flag_names, flag_bits, "F_", "u64", seen_flags, True)
    al = consts("ACL categories (without the leading `@`).", acl_names, acl_bits, "A_", "u64", seen_acl, True)
    kl = consts("Key-spec flags.", ks_names, ks_bits, "KS_", "u32", seen_ks, True)

    def table(doc, name, ty, entries):
        e.line(0)
        e.line(0, "/// %s" % doc)
        e.line(0, "pub const %s: &[(%s, &str)] = &[" % (name, ty))
        for const, n in entries:
            e.line(1, "(%s, %s)," % (const, rust_str(n)))
        e.line(0, "];")

    table("(bit, lowercase name) for every `F_*` command flag.", "FLAG_NAMES", "u64", fl)
    table("(bit, lowercase name, no `@`) for every `A_*` ACL category.", "ACL_NAMES", "u64", al)
    table(
        "(bit, lowercase name as `COMMAND` reports it, e.g. `ro`, `not_key`) for every `KS_*` flag.",
        "KS_FLAG_NAMES",
        "u32",
        kl,
    )

    e.line(0)
    e.line(0, "/// Every top-level command, sorted by name (byte order of the lowercase names).")
    e.line(0, "pub static COMMANDS: &[CommandSpec] = &[")
    for c in cmds:
        e.command(1, c)
    e.line(0, "];")
    return "\n".join(e.lines) + "\n", len(cmds), n_sub


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", nargs="?", help="output path (default: stdout)")
    ap.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    args = ap.parse_args()

    binary = shutil.which(args.redis_server) or args.redis_server
    version, cmds = fetch(binary)
    text, n_top, n_sub = render(version, cmds)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    print(
        "gen_commands: redis-server %s: %d commands, %d subcommands" % (version, n_top, n_sub),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
