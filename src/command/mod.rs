//! The command table and how slotmux handles each command.
//!
//! Owns: case-insensitive lookup with no allocation ([`lookup`]), the routing policy of every
//! command with the reason for it ([`policy`]), and finding a command's slot from its keys.
//! The per-command data (arity, flags, key specs) is generated from a live Redis 7.0 into
//! [`table`] and checked against `COMMAND INFO` by a test, so it cannot drift.
//! Must not: do I/O or know about sessions.

pub mod keys;
pub mod learn;
pub mod table;

use crate::cluster::key_slot;
use crate::merge::Merge;
pub use table::CommandSpec;

fn cmp_ci(name: &str, probe: &[u8]) -> std::cmp::Ordering {
    let a = name.as_bytes();
    for (x, y) in a.iter().zip(probe) {
        let y = y.to_ascii_lowercase();
        match x.cmp(&y) {
            std::cmp::Ordering::Equal => continue,
            o => return o,
        }
    }
    a.len().cmp(&probe.len())
}

fn find(list: &'static [CommandSpec], name: &[u8], prefix: &str) -> Option<&'static CommandSpec> {
    list.binary_search_by(|c| {
        let n = c.name.strip_prefix(prefix).unwrap_or(c.name);
        cmp_ci(n, name)
    })
    .ok()
    .map(|i| &list[i])
}

/// The generated table hashed by lower-case name (open addressing, linear probing): the hot
/// path finds a command with one hash and one comparison instead of a case-folding binary
/// search over 240 names.
fn index() -> &'static [u16] {
    static INDEX: std::sync::OnceLock<Box<[u16]>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut slots = vec![u16::MAX; INDEX_SLOTS].into_boxed_slice();
        for (i, c) in table::COMMANDS.iter().enumerate() {
            let mut at = fnv1a(c.name.as_bytes()) & (INDEX_SLOTS - 1);
            while slots[at] != u16::MAX {
                at = (at + 1) & (INDEX_SLOTS - 1);
            }
            slots[at] = i as u16;
        }
        slots
    })
}

/// A power of two, at least 4 times the table's size so probes stay short.
const INDEX_SLOTS: usize = 1024;
const _: () = assert!(table::COMMANDS.len() * 4 <= INDEX_SLOTS);

fn fnv1a(lower: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in lower {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h as usize
}

fn find_builtin(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 32];
    // No built-in command name is that long.
    let lower = buf.get_mut(..name.len())?;
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let slots = index();
    let mut at = fnv1a(lower) & (INDEX_SLOTS - 1);
    loop {
        let c = table::COMMANDS.get(usize::from(*slots.get(at)?))?;
        if c.name.as_bytes() == &*lower {
            return Some(c);
        }
        at = (at + 1) & (INDEX_SLOTS - 1);
    }
}

/// Looks up a top-level command by name, in any letter case, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    find_builtin(name)
        .or_else(|| find(&OWN, name, ""))
        .or_else(|| find(learn::learned(), name, ""))
}

const OWN_FLAGS: u64 = table::F_LOADING | table::F_STALE | table::F_NOSCRIPT;

/// slotmux's own commands, which no Redis has (sorted by name, as the table).
pub static OWN: [CommandSpec; 1] = [own("slotmux", -2, 0, &OWN_SLOTMUX)];

static OWN_SLOTMUX: [CommandSpec; 2] = [
    own("slotmux|help", 2, OWN_FLAGS, &[]),
    own("slotmux|hotkeys", -2, OWN_FLAGS, &[]),
];

/// A keyless command of slotmux's own.
const fn own(
    name: &'static str,
    arity: i32,
    flags: u64,
    subcommands: &'static [CommandSpec],
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        acl: table::A_SLOW,
        first_key: 0,
        last_key: 0,
        step: 0,
        key_specs: &[],
        subcommands,
    }
}

/// Looks up `sub` among `parent`'s subcommands (stored as "parent|sub").
pub fn lookup_sub(parent: &'static CommandSpec, sub: &[u8]) -> Option<&'static CommandSpec> {
    let prefix_len = parent.name.len() + 1;
    parent
        .subcommands
        .binary_search_by(|c| cmp_ci(&c.name[prefix_len.min(c.name.len())..], sub))
        .ok()
        .map(|i| &parent.subcommands[i])
}

/// Whether `argc` arguments (command name included) satisfy the command's arity.
pub fn arity_ok(spec: &CommandSpec, argc: usize) -> bool {
    let a = spec.arity;
    if a >= 0 {
        argc == a as usize
    } else {
        argc >= a.unsigned_abs() as usize
    }
}

pub fn is_readonly(spec: &CommandSpec) -> bool {
    spec.flags & table::F_READONLY != 0 && spec.flags & table::F_WRITE == 0
}

/// Commands slotmux answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Ping,
    Echo,
    Quit,
    Select,
    Hello,
    Auth,
    Reset,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientInfo,
    ClientList,
    ClientKill,
    ClientUnblock,
    ClientReply,
    ClientPause,
    ClientUnpause,
    Monitor,
    ClientOk,
    ReadOnlyWrite,
    ClusterKeySlot,
    /// CLUSTER SLOTS/SHARDS/NODES/MYID/INFO: slotmux as a one-node cluster.
    ClusterSlots,
    ClusterShards,
    ClusterNodes,
    ClusterMyId,
    ClusterInfo,
    SlowlogGet,
    SlowlogLen,
    SlowlogReset,
    /// SLOTMUX HOTKEYS [COUNT n]: the sampled hot keys.
    HotKeys,
    /// SLOTMUX HELP.
    SlotmuxHelp,
    ClientTracking,
    ClientCaching,
    ClientGetRedir,
    ClientTrackingInfo,
}

/// How slotmux handles a command, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Sent to the master of its keys' slot; keys in several slots get CROSSSLOT.
    Keyed,
    /// Keyless and answered the same by every master: sent to any one.
    AnyMaster,
    /// Answered by slotmux itself.
    Local(Local),
    /// Keyed, but blocking only with a BLOCK argument (XREAD/XREADGROUP): refused with it.
    KeyedUnlessBlock,
    /// Not available through slotmux (yet); the text says why.
    Refused(&'static str),
    /// Keyed; keys in several slots are split into one sub-command per slot and merged.
    Split(Merge),
    /// Keyless, but about the whole dataset: sent to every master and merged.
    AllMasters(Merge),
    /// SCRIPT KILL / FUNCTION KILL: to every master, each on a connection of its own (the
    /// shared ones may wait behind the very script to kill).
    KillScripts(Merge),
    /// Node configuration: sent to every master and replica.
    AllNodes(Merge),
    /// SCAN: one master after the other, with a cursor that says which.
    Scan,
    /// WAIT: the node of the client's last write.
    LastWrite,
    /// Blocking (BLPOP, BZPOPMIN, XREAD BLOCK...): routed by its keys on a connection of the
    /// client's own, so it never stalls the shared pipeline.
    Blocking,
    /// MULTI/EXEC/DISCARD/WATCH/UNWATCH: pinned to one master on a connection of its own.
    Transaction(Tx),
    /// (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE: on the session's subscription connections.
    Subscribe(Sub),
    /// INFO: slotmux's own sections, and `keyspace` summed over every master.
    Info,
    /// CLUSTER COUNTKEYSINSLOT/GETKEYSINSLOT: the master of the slot named by argument 2.
    SlotArg,
    /// PUBLISH and PUBSUB CHANNELS/NUMSUB/NUMPAT: on the node that holds slotmux's
    /// subscriptions, so counts match what a single Redis would say.
    PubSubNode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

const WHOLE_CLUSTER: &str =
    "needs to run on every master and merge the results, which slotmux does not do yet";
const BLOCKING: &str =
    "is a blocking command; slotmux does not give blocking commands a dedicated connection yet";
const PUBSUB: &str = "is pub/sub; slotmux does not support pub/sub yet";
const TRANSACTION: &str =
    "is a transaction command; slotmux does not pin transactions to a node yet";
const ADMIN: &str =
    "administers one node; it would break the single-Redis illusion through a proxy";

/// How slotmux handles one (sub)command (see [`decide`] for the rules).
pub fn policy(spec: &CommandSpec) -> Handling {
    cached_policy(spec).unwrap_or_else(|| decide(spec))
}

/// The generated table's answers, computed once: the match in [`decide`] compares the name
/// with a hundred strings, too slow for every request. Open addressing by the spec's address;
/// an entry's position is also the command's small id ([`command_id`]).
const CACHE_SLOTS: usize = 1024;

struct Cached {
    addr: usize,
    handling: Handling,
    name: &'static str,
}

fn cache() -> &'static [Cached] {
    static CACHE: std::sync::OnceLock<Box<[Cached]>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let mut slots: Vec<Cached> = (0..CACHE_SLOTS)
            .map(|_| Cached {
                addr: 0,
                handling: Handling::Keyed,
                name: "unknown",
            })
            .collect();
        let all = table::COMMANDS
            .iter()
            .chain(OWN.iter())
            .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()));
        for c in all {
            let addr = c as *const CommandSpec as usize;
            let mut at = home(addr);
            while slots[at].addr != 0 {
                at = (at + 1) & (CACHE_SLOTS - 1);
            }
            slots[at] = Cached {
                addr,
                handling: decide(c),
                name: c.name,
            };
        }
        slots.into_boxed_slice()
    })
}

fn home(addr: usize) -> usize {
    ((addr as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize & (CACHE_SLOTS - 1)
}

fn cache_slot(spec: &CommandSpec) -> Option<usize> {
    let cache = cache();
    let addr = spec as *const CommandSpec as usize;
    let mut at = home(addr);
    loop {
        match cache.get(at) {
            Some(c) if c.addr == addr => return Some(at),
            Some(c) if c.addr != 0 => at = (at + 1) & (CACHE_SLOTS - 1),
            _ => return None,
        }
    }
}

fn cached_policy(spec: &CommandSpec) -> Option<Handling> {
    cache_slot(spec).map(|i| cache()[i].handling)
}

/// A small id for a command of the generated table (`u16::MAX` for others), so a session can
/// publish its last command with one atomic store (CLIENT LIST's `cmd=`).
pub fn command_id(spec: &CommandSpec) -> u16 {
    cache_slot(spec).map_or(u16::MAX, |i| i as u16)
}

/// The full name (`client|list`) of a [`command_id`].
pub fn command_name(id: u16) -> &'static str {
    cache()
        .get(usize::from(id))
        .filter(|c| c.addr != 0)
        .map_or("NULL", |c| c.name)
}

/// The policy for one (sub)command by its full name, and the default rules for the rest.
fn decide(spec: &CommandSpec) -> Handling {
    use Handling::*;
    match spec.name {
        "ping" => Local(self::Local::Ping),
        "echo" => Local(self::Local::Echo),
        "quit" => Local(self::Local::Quit),
        "select" => Local(self::Local::Select),
        "hello" => Local(self::Local::Hello),
        "auth" => Local(self::Local::Auth),
        "reset" => Local(self::Local::Reset),
        "client|setname" => Local(self::Local::ClientSetName),
        "client|getname" => Local(self::Local::ClientGetName),
        "client|id" => Local(self::Local::ClientId),
        "client|info" => Local(self::Local::ClientInfo),
        "client|list" => Local(self::Local::ClientList),
        "client|reply" => Local(self::Local::ClientReply),
        "client|kill" => Local(self::Local::ClientKill),
        "client|unblock" => Local(self::Local::ClientUnblock),
        "client|no-evict" => Local(self::Local::ClientOk),
        "readonly" | "readwrite" => Local(self::Local::ReadOnlyWrite),
        "cluster|keyslot" => Local(self::Local::ClusterKeySlot),
        "info" => Info,
        "slowlog|get" => Local(self::Local::SlowlogGet),
        "slowlog|len" => Local(self::Local::SlowlogLen),
        "slowlog|reset" => Local(self::Local::SlowlogReset),
        "slotmux|hotkeys" => Local(self::Local::HotKeys),
        "slotmux|help" => Local(self::Local::SlotmuxHelp),
        "xread" | "xreadgroup" => KeyedUnlessBlock,
        "command"
        | "command|count"
        | "command|docs"
        | "command|getkeys"
        | "command|getkeysandflags"
        | "command|info"
        | "command|list"
        | "command|help" => AnyMaster,
        "cluster|countkeysinslot" | "cluster|getkeysinslot" => SlotArg,
        "cluster|slots" => Local(self::Local::ClusterSlots),
        "cluster|shards" => Local(self::Local::ClusterShards),
        "cluster|nodes" => Local(self::Local::ClusterNodes),
        "cluster|myid" => Local(self::Local::ClusterMyId),
        "cluster|info" => Local(self::Local::ClusterInfo),
        "cluster|help" => AnyMaster,
        "config|get" | "config|help" => AnyMaster,
        "time" | "lolwut" | "pfselftest" => AnyMaster,
        "function|list" | "function|dump" | "function|stats" => AnyMaster,
        // Scripts without keys may run on any master; with keys they follow them (see route).
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => Keyed,
        "mget" => Split(Merge::Mget),
        "mset" => Split(Merge::AllOk),
        "del" | "unlink" | "exists" | "touch" => Split(Merge::Sum),
        "dbsize" => AllMasters(Merge::Sum),
        "keys" => AllMasters(Merge::Concat),
        "flushall" | "flushdb" | "script|flush" | "function|flush" => AllMasters(Merge::AllOk),
        "script|load" | "function|load" | "function|delete" | "function|restore" => {
            AllMasters(Merge::First)
        }
        "script|exists" => AllMasters(Merge::OrArrays),
        "script|kill" | "function|kill" => KillScripts(Merge::Kill),
        "randomkey" => AllMasters(Merge::RandomKey),
        "config|set" | "config|resetstat" => AllNodes(Merge::AllOk),
        "scan" => Scan,
        "wait" => LastWrite,
        "lastsave" => AnyMaster,
        "subscribe" => Subscribe(Sub::Subscribe),
        "unsubscribe" => Subscribe(Sub::Unsubscribe),
        "psubscribe" => Subscribe(Sub::PSubscribe),
        "punsubscribe" => Subscribe(Sub::PUnsubscribe),
        "ssubscribe" => Subscribe(Sub::SSubscribe),
        "sunsubscribe" => Subscribe(Sub::SUnsubscribe),
        "publish" | "pubsub|channels" | "pubsub|numsub" | "pubsub|numpat" => PubSubNode,
        "pubsub|shardchannels" => AllMasters(Merge::Concat),
        "spublish" | "pubsub|shardnumsub" => Keyed,
        "pubsub|help" => AnyMaster,
        "multi" => Transaction(Tx::Multi),
        "exec" => Transaction(Tx::Exec),
        "discard" => Transaction(Tx::Discard),
        "watch" => Transaction(Tx::Watch),
        "unwatch" => Transaction(Tx::Unwatch),
        "monitor" => Local(self::Local::Monitor),
        "sync" | "psync" | "replconf" | "shutdown" | "debug" | "failover" | "replicaof"
        | "slaveof" | "save" | "bgsave" | "bgrewriteaof" | "swapdb" | "move" | "migrate"
        | "module" | "asking" => Refused(ADMIN),
        "client|pause" => Local(self::Local::ClientPause),
        "client|unpause" => Local(self::Local::ClientUnpause),
        "client|tracking" => Local(self::Local::ClientTracking),
        "client|caching" => Local(self::Local::ClientCaching),
        "client|getredir" => Local(self::Local::ClientGetRedir),
        "client|trackinginfo" => Local(self::Local::ClientTrackingInfo),
        "acl|cat" | "acl|genpass" | "acl|whoami" => AnyMaster,
        n if n.ends_with("|help") => AnyMaster,
        n if n.starts_with("cluster|") => Refused(ADMIN),
        _ => default_policy(spec),
    }
}

fn default_policy(spec: &CommandSpec) -> Handling {
    if spec.flags & table::F_PUBSUB != 0 {
        return Handling::Refused(PUBSUB);
    }
    if spec.flags & table::F_BLOCKING != 0 && !spec.key_specs.is_empty() {
        return Handling::Blocking;
    }
    if spec.flags & table::F_BLOCKING != 0 {
        return Handling::Refused(BLOCKING);
    }
    if spec.acl & table::A_TRANSACTION != 0 {
        return Handling::Refused(TRANSACTION);
    }
    if !spec.key_specs.is_empty() {
        return Handling::Keyed;
    }
    if spec.flags & table::F_ADMIN != 0 || spec.acl & table::A_DANGEROUS != 0 {
        return Handling::Refused(ADMIN);
    }
    // A keyless command learned from the cluster (a module's): any master.
    if spec.flags & table::F_MODULE != 0 || learn::learned().iter().any(|c| std::ptr::eq(c, spec)) {
        return Handling::AnyMaster;
    }
    Handling::Refused(WHOLE_CLUSTER)
}

impl Handling {
    /// One line for docs/COMMANDS.md: how, and why.
    pub fn describe(&self) -> String {
        use Handling::*;
        match self {
            Keyed => "routed to the master of its keys' slot; keys in several slots get CROSSSLOT (as Redis Cluster)".into(),
            AnyMaster => "keyless, same answer on every master: sent to one".into(),
            Local(_) => "answered by slotmux itself".into(),
            KeyedUnlessBlock => "routed by its keys; with BLOCK, on a connection of the client's own".into(),
            Refused(why) => format!("refused: it {why}"),
            Split(m) => format!("split per slot, parts merged ({m:?}); not atomic across slots, like every cluster client"),
            AllMasters(m) => format!("sent to every master, replies merged ({m:?})"),
            KillScripts(_) => "sent to every master, each on a connection of its own (the shared one may wait behind the script); OK if one master killed a script, NOTBUSY if none was busy".into(),
            AllNodes(_) => "sent to every master and replica; OK only when all agree, else the first error".into(),
            Scan => "every master in turn; the cursor encodes which master".into(),
            LastWrite => "sent to the node of the client's last write".into(),
            Blocking => "routed by its keys on a connection of the client's own (at most --max-blocking-clients)".into(),
            Transaction(_) => "MULTI/EXEC: checked and queued by slotmux (+QUEUED), sent at EXEC as one batch to the slot's current owner (replayed there after MOVED/ASK/TRYAGAIN); WATCH: on a connection of the client's own at the keys' master".into(),
            Subscribe(_) => "on the client's subscription connection (slot 0's master; SSUBSCRIBE: the channel's master)".into(),
            SlotArg => "sent to the master of the slot it names".into(),
            Info => "slotmux's own sections (server, clients, replication, cpu, cluster) and the masters' (memory, stats, keyspace, commandstats...) merged, in Redis's order".into(),
            PubSubNode => "sent to slot 0's master, where slotmux's subscriptions live".into(),
        }
    }
}

/// docs/COMMANDS.md, generated from the table and the policy.
pub fn commands_markdown() -> String {
    let mut out = String::from(
        "# Commands through slotmux\n\nGenerated from `src/command` (the Redis 7.0 command table and slotmux's policy) by\n`UPDATE_DOCS=1 cargo test --lib commands_doc`; a test fails when this file is stale.\n\nInside `MULTI`: keyed commands must share one slot (else `CROSSSLOT`, and `EXEC` answers\n`EXECABORT`); cluster-wide writes (`FLUSHALL`, `CONFIG SET`, `SCRIPT LOAD`...) run in the\ntransaction on its master, then on the other nodes once `EXEC` succeeded; commands slotmux\nanswers itself run when `EXEC` has run, their replies in place; reads of every master\n(`DBSIZE`, `KEYS`...) are refused. A refusal only the node makes while queueing (an ACL rule)\nshows as `EXECABORT` at `EXEC`, since slotmux, not the node, answers `+QUEUED`.\n\nWith `--read-from replica|prefer-replica`, or after `READONLY` on a connection, commands that\nonly read (the table's `readonly` flag) go to a replica of their slot's master instead, outside\n`MULTI` and `WATCH` (README, \"Reads from replicas\").\n\n| command | how slotmux handles it |\n|---|---|\n",
    );
    let mut row = |c: &CommandSpec| {
        out.push_str(&format!(
            "| `{}` | {} |\n",
            c.name.replace('|', " "),
            policy(c).describe()
        ));
    };
    for c in table::COMMANDS {
        if c.subcommands.is_empty() {
            row(c);
        }
        for sc in c.subcommands {
            row(sc);
        }
    }
    out.push_str(
        "\n## slotmux's own commands\n\n| command | what it answers |\n|---|---|\n\
         | `slotmux help` | this list |\n\
         | `slotmux hotkeys [COUNT n]` | the `n` (default 10) keys with the most requests, \
         estimated from sampling one command in 8 (`--hotkeys on`, the default): per key its \
         name (first 128 bytes), length, requests per second (smoothed over about 2 s), slot \
         and master. Summed over worker threads. `/debug/hotkeys` gives the same as JSON, with \
         the busiest slots |\n",
    );
    out
}

/// Argument access without building a vector: a frame plus the scanner's ranges.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    pub frame: &'a [u8],
    pub ranges: &'a [(usize, usize)],
}

impl<'a> Args<'a> {
    #[inline]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.ranges.get(i).map(|&(a, b)| &self.frame[a..b])
    }
}

/// Test helper: a frame made of `parts` back to back, and their ranges.
#[cfg(test)]
pub(crate) fn args_of(parts: &[&str]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut frame = Vec::new();
    let mut ranges = Vec::new();
    for p in parts {
        let s = frame.len();
        frame.extend_from_slice(p.as_bytes());
        ranges.push((s, frame.len()));
    }
    (frame, ranges)
}

/// The unit of a blocking command's timeout argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutUnit {
    /// BLPOP and friends: seconds, with decimals.
    Seconds,
    /// XREAD/XREADGROUP BLOCK: whole milliseconds.
    Millis,
}

/// Where a blocking command's timeout is: its argument index and unit (Redis 7.0's syntax).
pub fn block_timeout(name: &str, args: Args<'_>) -> Option<(usize, TimeoutUnit)> {
    match name {
        "blpop" | "brpop" | "brpoplpush" | "blmove" | "bzpopmin" | "bzpopmax" => {
            Some((args.len().checked_sub(1)?, TimeoutUnit::Seconds))
        }
        "blmpop" | "bzmpop" => Some((1, TimeoutUnit::Seconds)),
        "xread" | "xreadgroup" => (1..args.len())
            .find(|&i| {
                args.get(i)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"BLOCK"))
            })
            .map(|i| (i + 1, TimeoutUnit::Millis)),
        _ => None,
    }
}

/// Where a keyed command must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOf {
    /// No keys (e.g. EVAL with numkeys 0): any master will do.
    NoKeys,
    One(u16),
    CrossSlot,
    /// The arguments do not fit the key spec; the node will produce Redis's exact error.
    BadArgs,
}

/// The common slot of all keys of a command.
pub fn slot_of(spec: &CommandSpec, args: Args<'_>) -> SlotOf {
    // Key extraction takes a slice of arguments; small commands build it on the stack.
    const STACK: usize = 16;
    let mut small: [&[u8]; STACK] = [&[]; STACK];
    let heap: Vec<&[u8]>;
    let list: &[&[u8]] = if args.len() <= STACK {
        for (i, slot) in small.iter_mut().enumerate().take(args.len()) {
            *slot = args.get(i).unwrap_or_default();
        }
        &small[..args.len()]
    } else {
        heap = (0..args.len())
            .map(|i| args.get(i).unwrap_or_default())
            .collect();
        &heap
    };
    let mut slot: Option<u16> = None;
    let mut cross = false;
    let res = keys::for_each_key(spec, list, |i, _flags| {
        if let Some(k) = args.get(i) {
            let s = key_slot(k);
            match slot {
                None => slot = Some(s),
                Some(prev) if prev != s => cross = true,
                _ => {}
            }
        }
    });
    match (res, slot, cross) {
        (Err(_), _, _) => SlotOf::BadArgs,
        (_, _, true) => SlotOf::CrossSlot,
        (_, Some(s), false) => SlotOf::One(s),
        (_, None, _) => SlotOf::NoKeys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_any_case() {
        assert_eq!(lookup(b"GET").unwrap().name, "get");
        assert_eq!(lookup(b"gEt").unwrap().name, "get");
        assert!(lookup(b"getx").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(&[b'a'; 40]).is_none());
        for c in table::COMMANDS {
            let upper = c.name.to_ascii_uppercase();
            assert_eq!(lookup(upper.as_bytes()).map(|f| f.name), Some(c.name));
            for sub in c.subcommands {
                let short = sub.name.split_once('|').map_or(sub.name, |(_, s)| s);
                let found = lookup_sub(c, short.to_ascii_uppercase().as_bytes());
                assert_eq!(found.map(|f| f.name), Some(sub.name));
            }
        }
        let cfg = lookup(b"config").unwrap();
        assert_eq!(lookup_sub(cfg, b"GET").unwrap().name, "config|get");
        assert!(lookup_sub(cfg, b"nope").is_none());
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        for w in table::COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
        }
        for c in table::COMMANDS {
            for w in c.subcommands.windows(2) {
                assert!(w[0].name < w[1].name);
            }
        }
    }

    #[test]
    fn slots_of_commands() {
        let check = |parts: &[&str]| {
            let (f, r) = args_of(parts);
            let spec = lookup(parts[0].as_bytes()).unwrap();
            slot_of(
                spec,
                Args {
                    frame: &f,
                    ranges: &r,
                },
            )
        };
        assert_eq!(check(&["GET", "foo"]), SlotOf::One(12182));
        assert_eq!(
            check(&["MGET", "{a}1", "{a}2"]),
            SlotOf::One(key_slot(b"a"))
        );
        assert_eq!(check(&["MGET", "foo", "bar"]), SlotOf::CrossSlot);
        assert_eq!(check(&["EVAL", "return 1", "0"]), SlotOf::NoKeys);
        assert_eq!(check(&["EVAL", "return 1", "1", "foo"]), SlotOf::One(12182));
        assert_eq!(check(&["EVAL", "return 1", "5", "foo"]), SlotOf::BadArgs);
        assert_eq!(check(&["MSET", "foo", "1", "bar", "2"]), SlotOf::CrossSlot);
    }

    #[test]
    fn commands_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/COMMANDS.md");
        let want = commands_markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/COMMANDS.md is stale: run UPDATE_DOCS=1 cargo test --lib commands_doc"
        );
    }

    #[test]
    fn policy_cache_covers_the_table() {
        for c in table::COMMANDS {
            assert_eq!(cached_policy(c), Some(decide(c)), "{}", c.name);
            assert_eq!(command_name(command_id(c)), c.name);
            for sub in c.subcommands {
                assert_eq!(cached_policy(sub), Some(decide(sub)), "{}", sub.name);
                assert_eq!(command_name(command_id(sub)), sub.name);
            }
        }
        assert_eq!(command_name(u16::MAX), "NULL");
    }

    #[test]
    fn every_command_has_a_policy() {
        for c in table::COMMANDS {
            let _ = policy(c);
            for s in c.subcommands {
                let _ = policy(s);
            }
        }
        assert_eq!(policy(lookup(b"get").unwrap()), Handling::Keyed);
        assert_eq!(policy(lookup(b"blpop").unwrap()), Handling::Blocking);
        assert_eq!(
            policy(lookup(b"mget").unwrap()),
            Handling::Split(Merge::Mget)
        );
        assert_eq!(
            policy(lookup(b"subscribe").unwrap()),
            Handling::Subscribe(Sub::Subscribe)
        );
        assert!(matches!(
            policy(lookup(b"shutdown").unwrap()),
            Handling::Refused(_)
        ));
    }
}
