//! Command rules and the proxy's refusals hold inside scripts and
//! transactions, against real redis-server shards.
//!
//! The matrix: every command the proxy refuses (enumerated from the command
//! table by `shardgate::command::proxy_refusals`, so a command that becomes
//! unsupported must get a case here) and every command a `+@all -@admin
//! -@dangerous` user is denied by a rule, through every route a client has
//! (the command itself, queued in MULTI, EVAL, EVALSHA after SCRIPT LOAD,
//! EVAL_RO, FCALL and FCALL_RO of a library loaded on the shard, EVAL inside
//! MULTI), each followed by a check on the shard that the effect did not
//! happen (data still there, db 1 empty, nothing copied to a MIGRATE target,
//! configuration, role, ACL users and functions unchanged, server up).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use shardgate::auth::{Auth, User, file::parse_rules};
use shardgate::command::{Categories, Flags, lookup, proxy_refusals, table};
use shardgate::proxy::ClientConfig;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    fn text(&self) -> String {
        match self {
            Value::Simple(s) | Value::Error(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Value::Bulk(None) | Value::Array(None) => "(nil)".to_owned(),
            Value::Array(Some(v)) => format!("{v:?}"),
        }
    }
}

/// A minimal blocking RESP2 client (raw bytes in, exact replies out).
struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    fn connect(port: u16) -> Resp {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Resp {
            reader: BufReader::new(stream),
        }
    }

    fn try_call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Value> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read()
    }

    fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        self.try_call(args).unwrap_or_else(|e| {
            let shown: Vec<_> = args
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect();
            panic!("{shown:?}: {e}")
        })
    }

    fn read(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let int = || -> std::io::Result<i64> {
            rest.parse()
                .map_err(|_| std::io::Error::other(format!("bad line {line:?}")))
        };
        Ok(match kind {
            "+" => Value::Simple(rest.to_owned()),
            "-" => Value::Error(rest.to_owned()),
            ":" => Value::Int(int()?),
            "$" => match int()? {
                n if n < 0 => Value::Bulk(None),
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Value::Bulk(Some(buf))
                }
            },
            "*" => match int()? {
                n if n < 0 => Value::Array(None),
                n => Value::Array(Some((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)),
            },
            _ => return Err(std::io::Error::other(format!("bad reply line {line:?}"))),
        })
    }
}

/// The script body: runs the commands encoded in `args` as
/// `n, cmd, arg..., n, cmd, arg...` one after the other.
const RUN: &str = "local i = 1 local r while i <= #ARGS do local n = tonumber(ARGS[i]) local c = {} for j = 1, n do c[j] = ARGS[i + j] end r = redis.call(unpack(c)) i = i + n + 1 end return r";

fn eval_script() -> String {
    format!("local ARGS = ARGV {RUN}")
}

fn library() -> String {
    format!(
        "#!lua name=gate\nlocal function run(keys, ARGS) {RUN} end\nredis.register_function('run', run)\nredis.register_function{{function_name='run_ro', callback=run, flags={{'no-writes'}}}}\n"
    )
}

/// One case: the command under test (`name`, an ACL name) and the
/// commands to send, the first of which is the refused one.
struct Case {
    name: &'static str,
    commands: Vec<Vec<Vec<u8>>>,
}

fn words(s: &str) -> Vec<Vec<u8>> {
    s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

/// A case for every command the proxy refuses and every command the
/// restricted user is denied; `target` is the MIGRATE / REPLICAOF target
/// port, `payload` a DUMP for RESTORE.
fn cases(target: u16, payload: &[u8]) -> Vec<Case> {
    let restore = |cmd: &str| {
        vec![vec![
            cmd.as_bytes().to_vec(),
            b"restored".to_vec(),
            b"0".to_vec(),
            payload.to_vec(),
        ]]
    };
    let one = |s: String| vec![words(&s)];
    let table: Vec<(&'static str, Vec<Vec<Vec<u8>>>)> = vec![
        ("acl", one("ACL SETUSER evil on >x ~* +@all".into())),
        ("asking", one("ASKING".into())),
        ("bgrewriteaof", one("BGREWRITEAOF".into())),
        ("bgsave", one("BGSAVE".into())),
        ("cluster", one("CLUSTER INFO".into())),
        ("config", one("CONFIG SET hz 55".into())),
        ("debug", one("DEBUG SET-ACTIVE-EXPIRE 1".into())),
        ("failover", one("FAILOVER".into())),
        ("flushall", one("FLUSHALL".into())),
        ("flushdb", one("FLUSHDB".into())),
        ("function", one("FUNCTION FLUSH".into())),
        ("lastsave", one("LASTSAVE".into())),
        ("latency", one("LATENCY RESET".into())),
        (
            "migrate",
            one(format!("MIGRATE 127.0.0.1 {target} sentinel 0 5000 COPY")),
        ),
        ("module", one("MODULE LIST".into())),
        ("monitor", one("MONITOR".into())),
        ("move", one("MOVE sentinel 1".into())),
        ("pfdebug", one("PFDEBUG GETREG hll".into())),
        ("pfselftest", one("PFSELFTEST".into())),
        ("psubscribe", one("PSUBSCRIBE ch*".into())),
        ("psync", one("PSYNC ? -1".into())),
        ("publish", one("PUBLISH ch msg".into())),
        ("pubsub", one("PUBSUB CHANNELS".into())),
        ("punsubscribe", one("PUNSUBSCRIBE".into())),
        ("readonly", one("READONLY".into())),
        ("readwrite", one("READWRITE".into())),
        ("replconf", one("REPLCONF listening-port 1".into())),
        ("replicaof", one(format!("REPLICAOF 127.0.0.1 {target}"))),
        ("restore-asking", restore("RESTORE-ASKING")),
        ("role", one("ROLE".into())),
        ("save", one("SAVE".into())),
        ("select", vec![words("SELECT 1"), words("SET indb1 x")]),
        ("shutdown", one("SHUTDOWN NOSAVE".into())),
        ("slaveof", one(format!("SLAVEOF 127.0.0.1 {target}"))),
        ("spublish", one("SPUBLISH ch msg".into())),
        ("ssubscribe", one("SSUBSCRIBE ch".into())),
        ("subscribe", one("SUBSCRIBE ch".into())),
        ("sunsubscribe", one("SUNSUBSCRIBE".into())),
        ("swapdb", one("SWAPDB 0 1".into())),
        ("sync", one("SYNC".into())),
        ("unsubscribe", one("UNSUBSCRIBE".into())),
        ("wait", one("WAIT 0 0".into())),
        ("client|caching", one("CLIENT CACHING yes".into())),
        ("client|getredir", one("CLIENT GETREDIR".into())),
        ("client|help", one("CLIENT HELP".into())),
        ("client|kill", one("CLIENT KILL ID 999999".into())),
        ("client|list", one("CLIENT LIST".into())),
        ("client|pause", one("CLIENT PAUSE 1".into())),
        ("client|reply", one("CLIENT REPLY ON".into())),
        ("client|tracking", one("CLIENT TRACKING off".into())),
        ("client|trackinginfo", one("CLIENT TRACKINGINFO".into())),
        ("client|unblock", one("CLIENT UNBLOCK 999999".into())),
        ("client|unpause", one("CLIENT UNPAUSE".into())),
        ("script|debug", one("SCRIPT DEBUG no".into())),
        ("script|help", one("SCRIPT HELP".into())),
        ("script|kill", one("SCRIPT KILL".into())),
        // Allowed by the proxy, denied to the restricted user by a rule.
        ("info", one("INFO".into())),
        ("keys", one("KEYS *".into())),
        ("restore", restore("RESTORE")),
        ("sort", one("SORT list STORE sorted".into())),
        ("sort_ro", one("SORT_RO list".into())),
        ("client|no-evict", one("CLIENT NO-EVICT on".into())),
        // The proxy's own slow log (a script reaches the shard's).
        ("slowlog|get", one("SLOWLOG GET".into())),
        ("slowlog|len", one("SLOWLOG LEN".into())),
        ("slowlog|reset", one("SLOWLOG RESET".into())),
    ];
    table
        .into_iter()
        .map(|(name, commands)| Case { name, commands })
        .collect()
}

/// Names the restricted user (`+@all -@admin -@dangerous`) may not run
/// although the proxy would: from the command table.
fn denied_by_rule(refused: &[&str]) -> Vec<&'static str> {
    let bad = Categories(Categories::ADMIN.0 | Categories::DANGEROUS.0);
    let container_refused = |n: &str| refused.contains(&n.split('|').next().unwrap_or(n));
    table::COMMANDS
        .iter()
        .filter(|c| c.categories.intersects(bad) && !refused.contains(&c.name))
        .map(|c| c.name)
        .chain(
            table::SUBCOMMANDS
                .iter()
                .filter(|s| s.categories.intersects(bad) && !container_refused(s.name))
                .map(|s| s.name),
        )
        .collect()
}

/// The routes a client has to a command.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Direct,
    Multi,
    Eval,
    EvalSha,
    EvalRo,
    Fcall,
    FcallRo,
    MultiEval,
}

/// Refused inside scripts and transactions, served when sent directly
/// (the proxy answers them for the client; on a shard's connection they
/// would act on the proxy's connection instead).
const SERVED_DIRECTLY: &[&str] = &[
    "publish",
    "spublish",
    // The proxy answers these for its own clients; a script must not
    // switch its connection's database or pause or unblock the shard's.
    "select",
    "client|pause",
    "client|unpause",
    "client|unblock",
    "client|tracking",
    "client|caching",
    "client|getredir",
    "client|trackinginfo",
];

const ROUTES: [Route; 8] = [
    Route::Direct,
    Route::Multi,
    Route::Eval,
    Route::EvalSha,
    Route::EvalRo,
    Route::Fcall,
    Route::FcallRo,
    Route::MultiEval,
];

/// The flattened `n, cmd, args...` arguments of the script routes.
fn script_args(commands: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in commands {
        out.push(c.len().to_string().into_bytes());
        out.extend(c.iter().cloned());
    }
    out
}

/// `cmd script-or-name 0` (no keys: the script's commands are arguments).
fn head(cmd: &str, what: &str) -> Vec<Vec<u8>> {
    vec![cmd.into(), what.into(), b"0".to_vec()]
}

fn is_write(commands: &[Vec<Vec<u8>>]) -> bool {
    commands.iter().any(|c| {
        c.first()
            .and_then(|n| lookup(n))
            .is_some_and(|s| s.flags.contains(Flags::WRITE))
    })
}

/// Runs `commands` through `route`; `Err` describes a command that was not
/// refused.
fn run(
    client: &mut Resp,
    route: Route,
    sha: &str,
    commands: &[Vec<Vec<u8>>],
) -> Result<(), String> {
    // An error that only says the arguments were wrong would prove nothing.
    let meaningful = |v: &Value| {
        let t = v.text().to_lowercase();
        !t.contains("wrong number of arg") && !t.contains("unknown command")
    };
    let refused = |v: Value| -> Result<(), String> {
        if v.is_error() && meaningful(&v) {
            Ok(())
        } else {
            Err(format!("not refused: {}", v.text()))
        }
    };
    // Inside a script, Redis refuses by its ACL (or a command it never runs
    // from scripts); any other error (a broken script) proves nothing.
    let by_redis = |v: Value| -> Result<(), String> {
        let t = v.text();
        let acl = [
            "can't run this command",
            "no permissions",
            "not allowed from script",
        ];
        if v.is_error() && acl.iter().any(|a| t.contains(a)) {
            Ok(())
        } else {
            Err(format!("not refused by Redis' ACL: {t}"))
        }
    };
    let script = |client: &mut Resp, head: Vec<Vec<u8>>| {
        let mut args = head;
        args.extend(script_args(commands));
        client.call(&args)
    };
    let eval = eval_script();
    match route {
        Route::Direct => refused(client.call(&commands[0])).map(|_| {
            for c in &commands[1..] {
                client.call(c);
            }
        }),
        Route::Multi => {
            assert_eq!(client.call(&["MULTI"]), Value::Simple("OK".into()));
            for c in commands {
                client.call(c);
            }
            match client.call(&["EXEC"]) {
                Value::Error(e) if e.starts_with("EXECABORT") => Ok(()),
                other => Err(format!("EXEC ran: {}", other.text())),
            }
        }
        Route::Eval => by_redis(script(client, head("EVAL", &eval))),
        Route::EvalSha => by_redis(script(client, head("EVALSHA", sha))),
        Route::EvalRo => by_redis(script(client, head("EVAL_RO", &eval))),
        Route::Fcall => by_redis(script(client, head("FCALL", "run"))),
        Route::FcallRo => by_redis(script(client, head("FCALL_RO", "run_ro"))),
        Route::MultiEval => {
            assert_eq!(client.call(&["MULTI"]), Value::Simple("OK".into()));
            let queued = script(client, head("EVALSHA", sha));
            if queued.is_error() {
                client.call(&["DISCARD"]);
                return refused(queued);
            }
            match client.call(&["EXEC"]) {
                Value::Array(Some(v)) if v.len() == 1 => by_redis(v[0].clone()),
                Value::Error(e) if e.starts_with("EXECABORT") => Ok(()),
                other => Err(format!("EXEC ran: {}", other.text())),
            }
        }
    }
}

/// The shard and the MIGRATE target, seen directly (not through the proxy).
struct World<'a> {
    shard: &'a RedisServer,
    target: &'a RedisServer,
    payload: Vec<u8>,
}

impl World<'_> {
    /// Puts the data the checks look at in place (again).
    fn reset(&self) {
        let mut s = Resp::connect(self.shard.port);
        let _ = s.call(&["REPLICAOF", "NO", "ONE"]);
        s.call(&["FLUSHALL"]);
        s.call(&["SET", "sentinel", "v"]);
        s.call(&["RPUSH", "list", "3", "1", "2"]);
        s.call(&["PFADD", "hll", "a"]);
        s.call(&["CONFIG", "SET", "hz", "10"]);
        s.call(&["ACL", "DELUSER", "evil"]);
        s.call(&["FUNCTION", "LOAD", "REPLACE", &library()]);
        let mut t = Resp::connect(self.target.port);
        t.call(&["FLUSHALL"]);
    }

    /// What should not have changed, or why it did.
    fn damage(&self) -> Option<String> {
        let mut s = match Resp::connect_checked(self.shard.port) {
            Some(s) => s,
            None => return Some("the shard is down".into()),
        };
        let mut found = Vec::new();
        let mut expect = |args: &[&str], want: Value, what: &str| match s.try_call(args) {
            Ok(v) if v == want => {}
            Ok(v) => found.push(format!("{what}: {}", v.text())),
            Err(e) => found.push(format!("{what}: {e}")),
        };
        let bulk = |v: &str| Value::Bulk(Some(v.as_bytes().to_vec()));
        expect(&["PING"], Value::Simple("PONG".into()), "ping");
        expect(&["GET", "sentinel"], bulk("v"), "sentinel in db 0");
        // (A refused SELECT leaves the case's next SET in db 0: harmless.)
        expect(
            &["EXISTS", "restored", "sorted"],
            Value::Int(0),
            "new keys in db 0",
        );
        expect(
            &["CONFIG", "GET", "hz"],
            Value::Array(Some(vec![bulk("hz"), bulk("10")])),
            "hz",
        );
        expect(
            &["ACL", "GETUSER", "evil"],
            Value::Bulk(None),
            "ACL user evil",
        );
        expect(&["SELECT", "1"], Value::Simple("OK".into()), "select");
        expect(&["DBSIZE"], Value::Int(0), "keys in db 1");
        match s.try_call(&["FUNCTION", "LIST", "LIBRARYNAME", "gate"]) {
            Ok(Value::Array(Some(libs))) if libs.len() == 1 => {}
            other => found.push(format!("function library gate: {other:?}")),
        }
        match s.try_call(&["ROLE"]) {
            Ok(Value::Array(Some(r))) if r.first() == Some(&bulk("master")) => {}
            other => found.push(format!("role: {other:?}")),
        }
        match Resp::connect(self.target.port).call(&["DBSIZE"]) {
            Value::Int(0) => {}
            v => found.push(format!("keys on the MIGRATE target: {}", v.text())),
        }
        (!found.is_empty()).then(|| found.join("; "))
    }
}

impl Resp {
    fn connect_checked(port: u16) -> Option<Resp> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        Some(Resp {
            reader: BufReader::new(stream),
        })
    }
}

/// Runs every case the user must be refused through every route; returns
/// the failures.
fn matrix(
    c: &Cluster,
    world: &World<'_>,
    login: Option<(&str, &str)>,
    names: &[&str],
) -> Vec<String> {
    let all = cases(world.target.port, &world.payload);
    let mut failures = Vec::new();
    let connect = || {
        let mut client = Resp::connect(c.proxy_port);
        if let Some((u, p)) = login {
            assert_eq!(client.call(&["AUTH", u, p]), Value::Simple("OK".into()));
        }
        client
    };
    let mut client = connect();
    let sha = client.call(&["SCRIPT", "LOAD", &eval_script()]).text();
    for name in names {
        let case = all
            .iter()
            .find(|k| k.name == *name)
            .unwrap_or_else(|| panic!("no test case for refused command `{name}`: add one"));
        for route in ROUTES {
            if matches!(route, Route::EvalRo | Route::FcallRo) && is_write(&case.commands) {
                continue;
            }
            // The proxy serves PUBLISH itself (routed by channel) and
            // CLIENT TRACKING for its client; only scripts and
            // transactions, which would run them on a shard, must be
            // refused them.
            if matches!(route, Route::Direct) && SERVED_DIRECTLY.contains(name) {
                continue;
            }
            let outcome = run(&mut client, route, &sha, &case.commands);
            let damage = world.damage();
            if let Err(e) = &outcome {
                failures.push(format!("{name} via {route:?}: {e}"));
            }
            if let Some(d) = &damage {
                failures.push(format!("{name} via {route:?} had an effect: {d}"));
            }
            if outcome.is_err() || damage.is_some() {
                if world.damage().is_some_and(|d| d.contains("down")) {
                    failures.push("the shard went down; matrix stopped".into());
                    return failures;
                }
                world.reset();
                // The connection may be in any state (SUBSCRIBE, MONITOR).
                client = connect();
            }
        }
    }
    failures
}

/// What every allowed user's scripts still do: SET, INCR, GET.
fn allowed_scripts_work(c: &Cluster, login: Option<(&str, &str)>) {
    let mut client = Resp::connect(c.proxy_port);
    if let Some((u, p)) = login {
        assert_eq!(client.call(&["AUTH", u, p]), Value::Simple("OK".into()));
    }
    let sha = client.call(&["SCRIPT", "LOAD", &eval_script()]).text();
    let key = format!("counter:{}", login.map_or("anon", |l| l.0));
    let commands = vec![
        words(&format!("SET {key} 1")),
        words(&format!("INCR {key}")),
        words(&format!("GET {key}")),
    ];
    let eval = eval_script();
    for (cmd, what) in [("EVAL", eval.as_str()), ("EVALSHA", &sha), ("FCALL", "run")] {
        let mut args = head(cmd, what);
        args.extend(script_args(&commands));
        let reply = client.call(&args);
        assert_eq!(reply.text(), "2", "{cmd}");
    }
    // Read-only routes and a script queued in MULTI.
    for (cmd, what) in [("EVAL_RO", eval.as_str()), ("FCALL_RO", "run_ro")] {
        let mut args = head(cmd, what);
        args.extend(script_args(&[words(&format!("GET {key}"))]));
        assert_eq!(client.call(&args).text(), "2", "{cmd}");
    }
    assert_eq!(client.call(&["MULTI"]), Value::Simple("OK".into()));
    let mut args = head("EVALSHA", &sha);
    args.extend(script_args(&commands));
    assert_eq!(client.call(&args), Value::Simple("QUEUED".into()));
    assert_eq!(client.call(&["INCR", &key]), Value::Simple("QUEUED".into()));
    assert_eq!(
        client.call(&["EXEC"]),
        Value::Array(Some(vec![Value::Bulk(Some(b"2".to_vec())), Value::Int(3)]))
    );
    // WATCH, then a transaction with a script.
    assert_eq!(client.call(&["WATCH", &key]), Value::Simple("OK".into()));
    assert_eq!(client.call(&["MULTI"]), Value::Simple("OK".into()));
    assert_eq!(client.call(&args), Value::Simple("QUEUED".into()));
    assert_eq!(
        client.call(&["EXEC"]),
        Value::Array(Some(vec![Value::Bulk(Some(b"2".to_vec()))]))
    );
}

fn user(name: &str, password: &str, rules: &str) -> User {
    User::new(
        name,
        password.as_bytes(),
        parse_rules(rules).unwrap_or_else(|e| panic!("{rules}: {e}")),
    )
}

fn deployment(auth: Option<Auth>) -> (Cluster, RedisServer, Vec<u8>) {
    let c = Cluster::start(Spec {
        shards: 1,
        allow_flush: false,
        client: ClientConfig {
            auth: auth.map(Arc::new),
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    let target = RedisServer::start();
    let mut s = Resp::connect(c.primaries[0].port);
    s.call(&["SET", "sentinel", "v"]);
    let payload = match s.call(&["DUMP", "sentinel"]) {
        Value::Bulk(Some(p)) => p,
        other => panic!("DUMP: {other:?}"),
    };
    (c, target, payload)
}

fn check(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} refusals did not hold:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn restricted_user_is_refused_everything_through_every_route() {
    let auth = Auth::new([
        user("default", "secret", "+@all"),
        user("noadmin", "na-pw", "+@all -@admin -@dangerous"),
    ]);
    let (c, target, payload) = deployment(Some(auth));
    let world = World {
        shard: &c.primaries[0],
        target: &target,
        payload,
    };
    world.reset();
    let refused = proxy_refusals(false);
    let mut names: Vec<&str> = refused.clone();
    names.extend(denied_by_rule(&refused));
    let examples = [
        "flushall", "flushdb", "keys", "migrate", "swapdb", "select", "config", "debug", "shutdown",
    ];
    let set: HashSet<&str> = names.iter().copied().collect();
    for e in examples {
        assert!(set.contains(e), "{e} is not in the matrix");
    }
    check(matrix(&c, &world, Some(("noadmin", "na-pw")), &names));
    allowed_scripts_work(&c, Some(("noadmin", "na-pw")));
    // The unrestricted user is refused only what the proxy refuses.
    check(matrix(&c, &world, Some(("default", "secret")), &refused));
    allowed_scripts_work(&c, Some(("default", "secret")));
}

#[test]
fn without_an_auth_file_scripts_still_obey_the_proxy_refusals() {
    let (c, target, payload) = deployment(None);
    let world = World {
        shard: &c.primaries[0],
        target: &target,
        payload,
    };
    world.reset();
    check(matrix(&c, &world, None, &proxy_refusals(false)));
    allowed_scripts_work(&c, None);
}

#[test]
fn scripts_are_refused_when_the_backend_acl_user_cannot_be_installed() {
    // The map's credentials may do everything but ACL: fail closed.
    let c = Cluster::start(Spec {
        shards: 1,
        server_args: ["--user", "proxy", "on", ">pw", "~*", "&*", "+@all", "-acl"]
            .into_iter()
            .chain(["--user", "default", "off"])
            .map(String::from)
            .collect(),
        shard_extra: "    username: proxy\n    password: pw\n".into(),
        ..Spec::default()
    });
    let mut client = Resp::connect(c.proxy_port);
    assert_eq!(client.call(&["SET", "k", "v"]), Value::Simple("OK".into()));
    let reply = client.call(&["EVAL", "return redis.call('FLUSHALL')", "0"]);
    assert!(
        reply.text().contains("cannot run scripts or transactions"),
        "{reply:?}"
    );
    assert_eq!(client.call(&["GET", "k"]), Value::Bulk(Some(b"v".to_vec())));
    // The connection lives on; plain commands still work.
    assert_eq!(client.call(&["PING"]), Value::Simple("PONG".into()));
}

#[test]
fn a_restarted_backend_gets_its_acl_users_back() {
    let (mut c, _target, _) = deployment(None);
    let mut client = Resp::connect(c.proxy_port);
    let flush = ["EVAL", "return redis.call('FLUSHALL')", "0"];
    assert!(client.call(&flush).is_error());
    c.primaries[0].restart();
    // The pooled connection died with the server: the first script may
    // report it; the next connection installs the user again.
    let mut ok = false;
    for _ in 0..20 {
        let v = client.call(&[
            "EVAL",
            "redis.call('SET', 'k', 'v') return redis.call('GET', 'k')",
            "0",
        ]);
        if v.text() == "v" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "scripts did not run again after the backend restarted");
    let reply = client.call(&flush);
    assert!(reply.is_error(), "{reply:?}");
    let mut s = Resp::connect(c.primaries[0].port);
    assert_eq!(s.call(&["GET", "k"]), Value::Bulk(Some(b"v".to_vec())));
}

#[test]
fn a_map_reload_changes_what_scripts_may_flush() {
    let (c, _target, _) = deployment(None);
    let mut client = Resp::connect(c.proxy_port);
    let flush = ["EVAL", "return redis.call('FLUSHDB')", "0"];
    assert!(client.call(&flush).is_error());
    // Within the poll, the reload's background sync has updated the user
    // that the pooled connection is logged in as.
    let eventually = |client: &mut Resp, ok: bool| {
        for _ in 0..50 {
            if client.call(&flush).is_error() != ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("FLUSHDB in a script: expected allowed = {ok}");
    };
    c.edit_map(|m| m.replace("allow_flush: false", "allow_flush: true"));
    c.reload().expect("reload");
    eventually(&mut client, true);
    c.edit_map(|m| m.replace("allow_flush: true", "allow_flush: false"));
    c.reload().expect("reload");
    eventually(&mut client, false);
}
