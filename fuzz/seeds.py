#!/usr/bin/env python3
"""Writes the named seed corpus under fuzz/corpus/<target>/ (run from anywhere).

request_scanner and reply_scanner inputs start with one read-plan byte (see src/lib.rs,
read_sizes); the rest is what goes over the wire. classify inputs are the frame itself.
The seeds are checked in; re-running this rewrites them identically.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


REQUEST = {
    "get_pipeline": cmd("GET", "foo") * 3,
    "set_empty_value": cmd("SET", "k", ""),
    "mset_50_args": cmd("MSET", *[x for i in range(25) for x in ("k%d" % i, "v")]),
    "binary_arg_with_crlf": cmd("SET", b"a\r\nb", b"\x00\xff*$\r\n"),
    "hello3": cmd("HELLO", "3"),
    "partial_command": cmd("SET", "k", "value")[:-4],
    "inline_ping": b"PING\r\n",
    "inline_lf_only": b"PING\nECHO hi\n",
    "inline_quotes": b"set a \"b c\\x41\\n\" 'it\\'s'\r\n",
    "inline_unbalanced_quotes": b'get "a\r\n',
    "inline_quote_then_text": b'get "a"b\r\n',
    "inline_blank_lines": b"\r\n\n  \t\r\nPING\n",
    "mixed_pipeline": cmd("GET", "a") + b"PING\r\n" + cmd("DEL", "a", "b"),
    "empty_multibulk": b"*0\r\n*-1\r\n" + cmd("PING"),
    "nested_array_request": b"*1\r\n*1\r\n$4\r\nPING\r\n",
    "huge_bulk_len": b"*2\r\n$3\r\nSET\r\n$999999999999\r\nabc",
    "bulk_len_over_limit": b"*2\r\n$3\r\nSET\r\n$1048577\r\nabc",
    "negative_bulk_len": b"*1\r\n$-1\r\n",
    "bad_multibulk_len": b"*x\r\n",
    "noncanonical_counts": b"*02\r\n$3\r\nGET\r\n$+3\r\nfoo\r\n",
    "bulk_missing_crlf": b"*1\r\n$3\r\nGETXX",
    "too_many_args": b"*65537\r\n$4\r\nPING\r\n",
    "mbulk_lf_only": b"*1\n$4\nPING\n",
    "big_inline_no_newline": b"a" * (64 * 1024 + 100),
}

REPLY = {
    "ok": b"+OK\r\n",
    "get_pipeline": b"$3\r\nbar\r\n$-1\r\n:1\r\n-ERR x\r\n",
    "null_array": b"*-1\r\n",
    "empty_bulk": b"$0\r\n\r\n",
    "bulk_with_crlf_inside": b"$4\r\na\r\nb\r\n",
    "moved_error": b"-MOVED 3999 127.0.0.1:6381\r\n",
    "ask_error": b"-ASK 3999 127.0.0.1:6381\r\n",
    "scan_reply": b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    "cluster_slots": b"*1\r\n*4\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$40\r\n"
    + b"e" * 40
    + b"\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n"
    + b"f" * 40
    + b"\r\n",
    "nested_60": b"*1\r\n" * 60 + b":1\r\n",
    "nested_10000": b"*1\r\n" * 10000 + b":1\r\n",
    "huge_bulk_len": b"$999999999999\r\nabc",
    "huge_array_len": b"*2147483647\r\n:1\r\n",
    "resp3_map": b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n,1.5\r\n#t\r\n",
    "resp3_set": b"~3\r\n+a\r\n(123456789012345678901234567890\r\n_\r\n",
    "resp3_push": b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
    "resp3_attribute": b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
    "resp3_verbatim": b"=15\r\ntxt:Some string\r\n",
    "resp3_blob_error": b"!5\r\nerror\r\n",
    "resp3_scalars": b"_\r\n#f\r\n,inf\r\n,-1.5e10\r\n(-12\r\n:-9223372036854775808\r\n",
    "resp3_hello_reply": b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
    "short_verbatim": b"=1\r\na\r\n",
    "streamed_string": b"$?\r\n;3\r\nabc\r\n;0\r\n",
    "hello_inline": b"HELLO 3\r\n",
    "bad_type": b"?x\r\n",
    "bulk_missing_crlf": b"$3\r\nfooXX",
    "noncanonical_len": b"$03\r\nfoo\r\n*+1\r\n:1\r\n",
    "negative_map_len": b"%-1\r\n~-1\r\n>-1\r\n",
    "lf_only": b"+OK\n:1\n",
}

CLASSIFY = {
    "moved_error": b"-MOVED 3999 127.0.0.1:6381\r\n",
    "ask_error": b"-ASK 0 10.0.0.1:7000\r\n",
    "moved_hostname": b"-MOVED 16383 redis-2.redis.svc:6379\r\n",
    "moved_ipv6": b"-MOVED 1 ::1:7000\r\n",
    "moved_no_crlf": b"-MOVED 1 a:1",
    "moved_slot_16384": b"-MOVED 16384 a:1\r\n",
    "moved_leading_zero": b"-MOVED 01 a:1\r\n",
    "moved_negative": b"-MOVED -1 a:1\r\n",
    "moved_no_addr": b"-MOVED 1 \r\n",
    "moved_bad_utf8": b"-MOVED 1 \xff:1\r\n",
    "tryagain": b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
    "clusterdown": b"-CLUSTERDOWN The cluster is down\r\n",
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "bulk_moved": b"$22\r\nMOVED 3999 1.2.3.4:5\r\n",
    "plus_moved": b"+MOVED 1 a:1\r\n",
    "empty": b"",
    "dash_only": b"-",
}

# A read-plan byte per seed, printable so the seeds stay readable.
PLANS = b"!\"#$%&'()+,-./0123456789;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def write(target, seeds, plan):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, (name, data) in enumerate(sorted(seeds.items())):
        prefix = bytes([PLANS[i % len(PLANS)]]) if plan else b""
        with open(os.path.join(d, name), "wb") as f:
            f.write(prefix + data)


write("request_scanner", REQUEST, True)
write("reply_scanner", REPLY, True)
write("classify", CLASSIFY, False)
