//! Requests -> classified commands.
//!
//! The command table ([`table::COMMANDS`]) is data, declared once: name, arity,
//! flags, key positions and how the proxy handles the command. Classifying a
//! request is a case-insensitive lookup that does not allocate.

pub mod cursor;
pub mod keys;
pub mod table;

/// Bit set of command properties, mirroring the flags Redis reports in `COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// Only reads data: may go to a replica under the read policy.
    pub const READ: Flags = Flags(1 << 0);
    /// Modifies data: always goes to the primary.
    pub const WRITE: Flags = Flags(1 << 1);
    /// May block the connection (BLPOP, XREAD BLOCK ...): dedicated connection.
    pub const BLOCKING: Flags = Flags(1 << 2);
    /// Redis "admin" / "dangerous" commands.
    pub const ADMIN: Flags = Flags(1 << 3);
    /// Redis "fast" flag (O(1) or O(log N)).
    pub const FAST: Flags = Flags(1 << 4);
    /// May grow memory (Redis "denyoom").
    pub const DENYOOM: Flags = Flags(1 << 5);
    /// Key positions cannot be read from first/last/step alone.
    pub const MOVABLE_KEYS: Flags = Flags(1 << 6);
    /// Redis "loading" flag.
    pub const LOADING: Flags = Flags(1 << 7);
    /// Redis "stale" flag.
    pub const STALE: Flags = Flags(1 << 8);
    /// Redis "noscript" flag.
    pub const NOSCRIPT: Flags = Flags(1 << 9);
    /// Redis "pubsub" flag.
    pub const PUBSUB: Flags = Flags(1 << 10);
    /// Redis "no_auth" flag.
    pub const NO_AUTH: Flags = Flags(1 << 11);
    /// Redis "skip_monitor" flag (kept so `COMMAND` replies match Redis).
    pub const SKIP_MONITOR: Flags = Flags(1 << 12);
    /// Redis "skip_slowlog" flag (kept so `COMMAND` replies match Redis).
    pub const SKIP_SLOWLOG: Flags = Flags(1 << 13);
    /// Redis "asking" flag (kept so `COMMAND` replies match Redis).
    pub const ASKING: Flags = Flags(1 << 14);
    /// Redis "no_mandatory_keys" flag: the command may run without keys
    /// (EVAL, FCALL).
    pub const NO_MANDATORY_KEYS: Flags = Flags(1 << 15);
    /// Redis "no_async_loading" flag (kept so `COMMAND` replies match Redis).
    pub const NO_ASYNC_LOADING: Flags = Flags(1 << 16);
    /// Redis "no_multi" flag: refused inside MULTI.
    pub const NO_MULTI: Flags = Flags(1 << 17);
    /// Redis "allow_busy" flag (kept so `COMMAND` replies match Redis).
    pub const ALLOW_BUSY: Flags = Flags(1 << 18);

    /// Every flag with its Redis name, in the order Redis prints flags in the
    /// `COMMAND` reply, so the proxy's own `COMMAND` can answer like Redis.
    pub const REDIS_NAMES: [(Flags, &'static str); 19] = [
        (Flags::WRITE, "write"),
        (Flags::READ, "readonly"),
        (Flags::DENYOOM, "denyoom"),
        (Flags::ADMIN, "admin"),
        (Flags::PUBSUB, "pubsub"),
        (Flags::NOSCRIPT, "noscript"),
        (Flags::BLOCKING, "blocking"),
        (Flags::LOADING, "loading"),
        (Flags::STALE, "stale"),
        (Flags::SKIP_MONITOR, "skip_monitor"),
        (Flags::SKIP_SLOWLOG, "skip_slowlog"),
        (Flags::ASKING, "asking"),
        (Flags::FAST, "fast"),
        (Flags::NO_AUTH, "no_auth"),
        (Flags::NO_MANDATORY_KEYS, "no_mandatory_keys"),
        (Flags::NO_ASYNC_LOADING, "no_async_loading"),
        (Flags::NO_MULTI, "no_multi"),
        (Flags::MOVABLE_KEYS, "movablekeys"),
        (Flags::ALLOW_BUSY, "allow_busy"),
    ];

    /// The Redis names of the set flags, in Redis' order (for `COMMAND`).
    pub fn redis_names(self) -> impl Iterator<Item = &'static str> {
        Flags::REDIS_NAMES
            .iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two flag sets (usable in `const` tables).
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// Bit set of Redis ACL command categories (`@read`, `@admin` ...), as Redis
/// 7.0 assigns them; what users' command rules (`+@read -@dangerous`) select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Categories(pub u32);

impl Categories {
    pub const KEYSPACE: Categories = Categories(1 << 0);
    pub const READ: Categories = Categories(1 << 1);
    pub const WRITE: Categories = Categories(1 << 2);
    pub const SET: Categories = Categories(1 << 3);
    pub const SORTEDSET: Categories = Categories(1 << 4);
    pub const LIST: Categories = Categories(1 << 5);
    pub const HASH: Categories = Categories(1 << 6);
    pub const STRING: Categories = Categories(1 << 7);
    pub const BITMAP: Categories = Categories(1 << 8);
    pub const HYPERLOGLOG: Categories = Categories(1 << 9);
    pub const GEO: Categories = Categories(1 << 10);
    pub const STREAM: Categories = Categories(1 << 11);
    pub const PUBSUB: Categories = Categories(1 << 12);
    pub const ADMIN: Categories = Categories(1 << 13);
    pub const FAST: Categories = Categories(1 << 14);
    pub const SLOW: Categories = Categories(1 << 15);
    pub const BLOCKING: Categories = Categories(1 << 16);
    pub const DANGEROUS: Categories = Categories(1 << 17);
    pub const CONNECTION: Categories = Categories(1 << 18);
    pub const TRANSACTION: Categories = Categories(1 << 19);
    pub const SCRIPTING: Categories = Categories(1 << 20);
    /// `@all`: every category (and so every command).
    pub const ALL: Categories = Categories((1 << 21) - 1);

    /// Every category with its Redis name (without the `@`), in Redis' order.
    pub const NAMES: [(Categories, &'static str); 21] = [
        (Categories::KEYSPACE, "keyspace"),
        (Categories::READ, "read"),
        (Categories::WRITE, "write"),
        (Categories::SET, "set"),
        (Categories::SORTEDSET, "sortedset"),
        (Categories::LIST, "list"),
        (Categories::HASH, "hash"),
        (Categories::STRING, "string"),
        (Categories::BITMAP, "bitmap"),
        (Categories::HYPERLOGLOG, "hyperloglog"),
        (Categories::GEO, "geo"),
        (Categories::STREAM, "stream"),
        (Categories::PUBSUB, "pubsub"),
        (Categories::ADMIN, "admin"),
        (Categories::FAST, "fast"),
        (Categories::SLOW, "slow"),
        (Categories::BLOCKING, "blocking"),
        (Categories::DANGEROUS, "dangerous"),
        (Categories::CONNECTION, "connection"),
        (Categories::TRANSACTION, "transaction"),
        (Categories::SCRIPTING, "scripting"),
    ];

    /// The category called `name` (`read`, case-insensitive; `all` is every one).
    pub fn from_name(name: &str) -> Option<Categories> {
        if name.eq_ignore_ascii_case("all") {
            return Some(Categories::ALL);
        }
        Categories::NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(c, _)| *c)
    }

    /// Whether any category of `other` is set.
    pub const fn intersects(self, other: Categories) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every category of `other` is set.
    pub const fn contains(self, other: Categories) -> bool {
        self.0 & other.0 == other.0
    }

    /// The Redis names (`@read` ...) of the set categories, in Redis' order.
    pub fn redis_names(self) -> impl Iterator<Item = &'static str> {
        Categories::NAMES
            .iter()
            .filter(move |(c, _)| self.intersects(*c))
            .map(|(_, n)| *n)
    }
}

/// A subcommand of a container command (`config|set`): what ACL rules need
/// to know about it. Handling and keys stay with the container's row.
#[derive(Clone, Copy, Debug)]
pub struct SubcommandSpec {
    /// `container|subcommand`, lower case, as Redis names it in ACL errors.
    pub name: &'static str,
    pub categories: Categories,
}

/// Where a command's keys are, in the argument vector (`args[0]` is the name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// No keys.
    None,
    /// Keys at `first`, `first+step`, ... up to `last` (negative `last` counts
    /// from the end: -1 is the last argument), like Redis' first/last/step.
    Range {
        first: usize,
        last: isize,
        step: usize,
    },
    /// `args[numkeys_at]` holds a count N; N keys follow starting at
    /// `numkeys_at + 1` (EVAL, FCALL, SINTERCARD, LMPOP, ZUNION, ...). When
    /// `dest_at` is set, `args[dest_at]` is a key too (ZUNIONSTORE destination).
    NumKeys {
        numkeys_at: usize,
        dest_at: Option<usize>,
    },
    /// `... STREAMS k1 k2 id1 id2`: the keys are the first half of the
    /// arguments after the STREAMS keyword (XREAD, XREADGROUP).
    Streams,
    /// `SORT key ... [STORE dest]`, `GEORADIUS key ... [STORE|STOREDIST dest]`:
    /// `args[1]` plus the argument after a STORE/STOREDIST keyword.
    KeyAndStore,
    /// Container command whose key is `args[2]` when present
    /// (OBJECT ENCODING key, XINFO STREAM key, XGROUP CREATE key, MEMORY USAGE key).
    SubcommandKey,
}

/// How the proxy serves a command: the decision the dispatcher branches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// All keys must live on one shard; the original bytes are forwarded there
    /// over a multiplexed connection (primary for writes, read policy for reads).
    Forward,
    /// Multi-key command split per shard and merged by the proxy.
    Split(SplitKind),
    /// Blocking command: all keys on one shard, run on a dedicated connection.
    Blocking,
    /// MULTI/EXEC/DISCARD/WATCH/UNWATCH: session state, dedicated connection.
    Transaction(TxKind),
    /// EVAL/EVALSHA/FCALL and their _RO forms: keys on one shard, dedicated
    /// connection.
    Script,
    /// Runs on every shard and the replies are combined.
    Fanout(FanoutKind),
    /// Answered by the proxy itself.
    Local(LocalKind),
    /// Pub/sub: subscriptions held by the proxy's hub, publishes routed by
    /// channel (see `proxy::pubsub`).
    PubSub(PubSubKind),
    /// Refused with `-ERR` and this reason (the dispatcher names the command).
    Unsupported(&'static str),
}

/// The multi-key commands that the proxy splits over shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitKind {
    /// MGET: array of values in request order.
    Mget,
    /// MSET: key/value pairs, reply `+OK`.
    Mset,
    /// DEL, UNLINK, EXISTS, TOUCH: integer replies summed.
    SumInt,
}

/// Transaction-related commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// Commands run on every shard whose replies the proxy combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanoutKind {
    Scan,
    Keys,
    Dbsize,
    Randomkey,
    /// FLUSHDB/FLUSHALL, only when enabled in the map's options.
    Flush,
    /// SCRIPT LOAD/EXISTS/FLUSH/KILL.
    Script,
    /// FUNCTION LOAD/DELETE/FLUSH/RESTORE/KILL on every shard; LIST, DUMP,
    /// STATS and HELP answered by one.
    Function,
    /// MEMORY: STATS over every shard, the rest by key.
    Memory,
}

/// The three namespaces of pub/sub subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// SUBSCRIBE / UNSUBSCRIBE / PUBLISH: channels.
    Channel,
    /// PSUBSCRIBE / PUNSUBSCRIBE: glob patterns over channel names.
    Pattern,
    /// SSUBSCRIBE / SUNSUBSCRIBE / SPUBLISH: shard channels.
    Shard,
}

/// The pub/sub commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSubKind {
    Subscribe(Topic),
    Unsubscribe(Topic),
    /// PUBLISH (`Topic::Channel`) or SPUBLISH (`Topic::Shard`).
    Publish(Topic),
    /// PUBSUB CHANNELS / NUMSUB / NUMPAT / SHARDCHANNELS / SHARDNUMSUB / HELP.
    Introspect,
}

/// Commands answered by the proxy without a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalKind {
    Ping,
    Echo,
    Select,
    Quit,
    Hello,
    Auth,
    Client,
    Command,
    Info,
    Time,
    Reset,
    Readonly,
    Readwrite,
    /// The proxy's own slow log.
    Slowlog,
    /// MONITOR: the commands passing through this proxy.
    Monitor,
}

/// Read-only commands whose reply must not be shared between clients:
/// Redis 7.0 tips them `nondeterministic_output` (DUMP, HRANDFIELD,
/// HSCAN, PTTL, RANDOMKEY, SCAN, SRANDMEMBER, SSCAN, TTL, XPENDING,
/// ZRANDMEMBER, ZSCAN), or they exist for their side effect (TOUCH
/// updates the keys' access time). `nondeterministic_output_order`
/// (HGETALL, SMEMBERS, ...) is fine: the shared reply is one Redis could
/// have given each client.
pub const NOT_SHAREABLE: [&str; 13] = [
    "dump",
    "hrandfield",
    "hscan",
    "pttl",
    "randomkey",
    "scan",
    "srandmember",
    "sscan",
    "touch",
    "ttl",
    "xpending",
    "zrandmember",
    "zscan",
];

/// One row of the command table.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// Lower-case name, as Redis reports it in `COMMAND`.
    pub name: &'static str,
    /// Redis arity: positive = exact argument count (name included), negative =
    /// at least `-arity`.
    pub arity: i32,
    pub flags: Flags,
    /// ACL categories Redis 7.0 puts the command in (for users' command rules).
    pub categories: Categories,
    pub keys: KeySpec,
    pub handling: Handling,
}

impl CommandSpec {
    /// Whether `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Whether the command only reads (and may go to a replica).
    pub fn is_read(&self) -> bool {
        self.flags.contains(Flags::READ) && !self.flags.contains(Flags::WRITE)
    }

    /// Whether the command reports a key's access state (OBJECT FREQ,
    /// IDLETIME: LFU counter and LRU clock), which each endpoint keeps for
    /// the accesses it served: it goes where the client's reads of the
    /// key go (the read policy), so that with replica reads it counts the
    /// reads the client made, as one Redis server would.
    pub fn reports_access(&self) -> bool {
        self.name == "object"
    }

    /// Whether one run's reply may answer an identical request of another
    /// client that arrived while it ran (`options.coalesce_reads`): a
    /// forwarded or split read that does not block, whose reply is a
    /// function of the data (not Redis' `nondeterministic_output` tip:
    /// random members, TTLs, cursors) and that is not run for a side
    /// effect (TOUCH). `tests/coalesce.rs` checks [`NOT_SHAREABLE`]
    /// against the tips of a real server.
    pub fn reply_is_shareable(&self) -> bool {
        self.is_read()
            && !self.flags.contains(Flags::BLOCKING)
            && matches!(self.handling, Handling::Forward | Handling::Split(_))
            && !NOT_SHAREABLE.contains(&self.name)
    }

    /// The legacy `(first, last, step)` triple Redis reports for the command in
    /// `COMMAND`: the range for [`KeySpec::Range`], the destination for
    /// store-style movable commands, `(1, 1, 1)` for SORT/GEORADIUS and
    /// `(0, 0, 0)` for the other key shapes.
    pub fn legacy_key_range(&self) -> (i64, i64, i64) {
        match self.keys {
            KeySpec::Range { first, last, step } => (first as i64, last as i64, step as i64),
            KeySpec::NumKeys {
                dest_at: Some(dest),
                ..
            } => (dest as i64, dest as i64, 1),
            KeySpec::KeyAndStore => (1, 1, 1),
            KeySpec::None
            | KeySpec::NumKeys { dest_at: None, .. }
            | KeySpec::Streams
            | KeySpec::SubcommandKey => (0, 0, 0),
        }
    }
}

/// The subcommand `arg` of a container command (`config|set`), if it is one.
pub fn subcommand(container: &CommandSpec, arg: &[u8]) -> Option<&'static SubcommandSpec> {
    table::subcommand(container, arg)
}

/// CLIENT subcommands the proxy answers itself (`proxy/local.rs`) that a
/// script may also send to its shard; every other CLIENT subcommand is
/// refused to scripts (TRACKING, CACHING, GETREDIR and TRACKINGINFO are
/// answered by the proxy for its client, see `proxy::tracking`, but on a
/// shard they would act on the proxy's connection).
pub const CLIENT_LOCAL: &[&str] = &[
    "id", "getname", "setname", "setinfo", "info", "no-evict", "no-touch", "list", "kill",
];

/// SCRIPT subcommands the proxy fans out to every shard; every other SCRIPT
/// subcommand is refused.
pub const SCRIPT_FANOUT: &[&str] = &["load", "exists", "flush", "kill"];

/// Every command and subcommand the proxy never runs for a client, in
/// Redis ACL names (`select`, `client|kill`): the commands it refuses
/// (`Handling::Unsupported`, SELECT of another database, READONLY /
/// READWRITE, FLUSHALL / FLUSHDB unless the map's `allow_flush`) and the
/// CLIENT and SCRIPT subcommands it does not answer, and PUBLISH/SPUBLISH
/// (the proxy routes a channel to its own shard, which need not be the
/// script's: a publish from a script would miss the proxy's subscribers).
///
/// Why it exists: a script or a transaction runs its commands on the
/// backend, where the proxy does not see them, so the backend ACL user that
/// runs them must deny these too (see `backend::acl`). Derived from the
/// command table, so a command that becomes unsupported is denied inside
/// scripts without anyone remembering to.
pub fn proxy_refusals(allow_flush: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    for spec in table::COMMANDS {
        let refused = match spec.handling {
            Handling::Unsupported(_) => true,
            Handling::Local(LocalKind::Select | LocalKind::Readonly | LocalKind::Readwrite) => true,
            Handling::Fanout(FanoutKind::Flush) => !allow_flush,
            Handling::PubSub(PubSubKind::Publish(_)) => true,
            _ => false,
        };
        if refused {
            out.push(spec.name);
        }
    }
    for sub in table::SUBCOMMANDS {
        let refused = match sub.name.split_once('|') {
            Some(("client", s)) => !CLIENT_LOCAL.contains(&s),
            Some(("script", s)) => !SCRIPT_FANOUT.contains(&s),
            _ => false,
        };
        if refused {
            out.push(sub.name);
        }
    }
    out
}

/// Looks a command up by name, case-insensitively, without allocating.
///
/// This runs for every request, so it does not binary-search the table: one
/// pass lower-cases and hashes the name, then an open-addressing index
/// (built once, about four slots per command) usually needs one probe and
/// one comparison. Same answers as [`table::lookup`] (a test checks every
/// name).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; table::MAX_NAME_LEN];
    let lower = buf.get_mut(..name.len())?;
    let mut hash = FNV_OFFSET;
    for (dst, src) in lower.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
        hash = (hash ^ u64::from(*dst)).wrapping_mul(FNV_PRIME);
    }
    let lower: &[u8] = lower;
    let index = NAME_INDEX.get_or_init(NameIndex::build);
    let mut slot = (hash as usize) & index.mask;
    loop {
        let row = *index.slots.get(slot)?;
        let spec = table::COMMANDS.get(usize::from(row))?;
        if spec.name.as_bytes() == lower {
            return Some(spec);
        }
        slot = (slot + 1) & index.mask;
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Open-addressing index from a name's FNV-1a hash to its table row;
/// `u16::MAX` marks an empty slot (and is never a row: the table is small).
struct NameIndex {
    slots: Box<[u16]>,
    mask: usize,
}

static NAME_INDEX: std::sync::OnceLock<NameIndex> = std::sync::OnceLock::new();

impl NameIndex {
    fn build() -> NameIndex {
        let size = (table::COMMANDS.len() * 4).next_power_of_two();
        let mask = size - 1;
        let mut slots = vec![u16::MAX; size].into_boxed_slice();
        for (row, spec) in table::COMMANDS.iter().enumerate() {
            let hash = spec.name.bytes().fold(FNV_OFFSET, |h, b| {
                (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
            });
            let mut slot = (hash as usize) & mask;
            while slots[slot] != u16::MAX {
                slot = (slot + 1) & mask;
            }
            slots[slot] = u16::try_from(row).unwrap_or(u16::MAX - 1);
        }
        NameIndex { slots, mask }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_lookup_agrees_with_the_table_for_every_name() {
        for spec in table::COMMANDS {
            let upper = spec.name.to_ascii_uppercase();
            for name in [spec.name.as_bytes(), upper.as_bytes()] {
                let found = lookup(name).map(|s| s.name);
                assert_eq!(found, Some(spec.name));
                assert_eq!(found, table::lookup(name).map(|s| s.name));
            }
        }
        for unknown in [
            &b""[..],
            b"x",
            b"gett",
            b"nosuchcommand",
            b"get\0",
            &[b'a'; 64],
        ] {
            assert!(lookup(unknown).is_none(), "{unknown:?}");
        }
    }

    #[test]
    fn redis_names_follow_redis_order() {
        let flags = Flags::ALLOW_BUSY
            .with(Flags::NOSCRIPT)
            .with(Flags::WRITE)
            .with(Flags::MOVABLE_KEYS);
        let names: Vec<_> = flags.redis_names().collect();
        assert_eq!(names, ["write", "noscript", "movablekeys", "allow_busy"]);
        assert_eq!(Flags::default().redis_names().count(), 0);
    }

    #[test]
    fn every_flag_has_one_distinct_bit() {
        let mut seen = 0u32;
        for (flag, _) in Flags::REDIS_NAMES {
            assert_eq!(flag.0.count_ones(), 1);
            assert_eq!(seen & flag.0, 0);
            seen |= flag.0;
        }
    }

    #[test]
    fn legacy_key_range_of_each_shape() {
        let range = |name: &str| lookup(name.as_bytes()).map(|spec| spec.legacy_key_range());
        assert_eq!(range("blpop"), Some((1, -2, 1)));
        assert_eq!(range("zunionstore"), Some((1, 1, 1)));
        assert_eq!(range("georadius"), Some((1, 1, 1)));
        assert_eq!(range("eval"), Some((0, 0, 0)));
        assert_eq!(range("xread"), Some((0, 0, 0)));
        assert_eq!(range("object"), Some((0, 0, 0)));
        assert_eq!(range("ping"), Some((0, 0, 0)));
    }

    #[test]
    fn proxy_refusals_come_from_the_table() {
        let with_flush = proxy_refusals(true);
        let without = proxy_refusals(false);
        for name in [
            "select",
            "swapdb",
            "move",
            "migrate",
            "config",
            "shutdown",
            "debug",
            "acl",
            "module",
            "replicaof",
            "slaveof",
            "publish",
            "spublish",
            "readonly",
            "failover",
            "wait",
        ] {
            assert!(with_flush.contains(&name), "{name}");
        }
        for name in [
            "get",
            "eval",
            "multi",
            "keys",
            "client|id",
            "client|list",
            "client|kill",
            "monitor",
            "script|load",
            "script|kill",
            "function",
            "ping",
            "info",
        ] {
            assert!(!without.contains(&name), "{name}");
        }
        assert!(!with_flush.contains(&"flushall"));
        assert!(without.contains(&"flushall") && without.contains(&"flushdb"));
    }

    #[test]
    fn arity() {
        let get = lookup(b"get").map(|spec| (spec.arity_ok(2), spec.arity_ok(3)));
        assert_eq!(get, Some((true, false)));
        let del = lookup(b"del").map(|spec| (spec.arity_ok(1), spec.arity_ok(2), spec.arity_ok(9)));
        assert_eq!(del, Some((false, true, true)));
    }
}
