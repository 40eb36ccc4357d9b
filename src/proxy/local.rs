//! Commands the proxy answers itself: PING, ECHO, SELECT, QUIT, HELLO, AUTH,
//! CLIENT, COMMAND, TIME, RESET, READONLY/READWRITE (INFO runs as an
//! exclusive operation).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Proxy;
use super::dispatch::{Action, ExclusiveOp};
use super::pending::Pending;
use super::session::Session;
use crate::auth;
use crate::command::keys::key_indices;
use crate::command::{CommandSpec, LocalKind, table::COMMANDS};
use crate::error::ProxyError;
use crate::protocol::{Protocol, Reply, Request};

/// The Redis API level shardgate speaks (reported by HELLO and INFO).
pub const REDIS_VERSION: &str = "7.0.0";

impl Session {
    /// Answers a proxy-local command.
    pub fn local(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: LocalKind,
    ) -> Action {
        let args = req.args();
        let result = match kind {
            // RESP2's subscribed mode answers PING as a message-shaped array.
            LocalKind::Ping if self.subscribed_resp2() && args.len() <= 2 => {
                Ok(Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"pong")),
                    Reply::Bulk(args.get(1).cloned().unwrap_or_default()),
                ]))
            }
            LocalKind::Ping => match args.len() {
                1 => Ok(Reply::Simple("PONG".into())),
                2 => Ok(Reply::Bulk(args[1].clone())),
                _ => Err(ProxyError::err(
                    "wrong number of arguments for 'ping' command",
                )),
            },
            LocalKind::Echo => Ok(Reply::Bulk(args[1].clone())),
            LocalKind::Select => return self.select(proxy, spec, &args[1]),
            LocalKind::Quit => {
                return Action::Close(Pending::ready(
                    &Reply::Ok,
                    Some(spec),
                    self.proto,
                    self.request_started,
                ));
            }
            LocalKind::Hello => self.hello(proxy, args),
            LocalKind::Auth => self.auth(proxy, args),
            LocalKind::Client => self.client(proxy, args),
            // Documentation and key flags come from a shard's own table
            // (redis-cli's `help` reads DOCS).
            LocalKind::Command
                if args.get(1).is_some_and(|s| {
                    s.eq_ignore_ascii_case(b"DOCS") || s.eq_ignore_ascii_case(b"GETKEYSANDFLAGS")
                }) =>
            {
                let snap = proxy.snapshot();
                let redis = snap.backends().shards().iter().position(|s| {
                    s.kind == crate::shardmap::ShardKind::Redis
                        && s.phase != crate::shardmap::ShardPhase::Removed
                });
                match redis {
                    Some(i) => {
                        return Action::Queue(self.send_to_shard(
                            &snap,
                            spec,
                            crate::router::ShardId(i as u16),
                            req.raw(),
                            super::dispatch::Pass::Fresh,
                        ));
                    }
                    None => Err(ProxyError::err("COMMAND DOCS needs a Redis shard")),
                }
            }
            LocalKind::Command => command(args),
            LocalKind::Info => return Action::Exclusive(ExclusiveOp::Info(req), spec),
            LocalKind::Time => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Ok(Reply::Array(vec![
                    Reply::Bulk(Bytes::from(now.as_secs().to_string())),
                    Reply::Bulk(Bytes::from(now.subsec_micros().to_string())),
                ]))
            }
            LocalKind::Reset => {
                // Back to the default user, which (when auth is on) needs a password.
                self.user = None;
                // Every subscription ends (dropping them unsubscribes), and
                // so does MONITOR.
                self.pubsub = None;
                self.monitor = None;
                self.tracking = None;
                if self.tx.is_some() || self.watched_shard().is_some() {
                    return Action::Exclusive(ExclusiveOp::Discard, spec);
                }
                self.proto = Protocol::Resp2;
                self.db = crate::backend::Db(0);
                self.name = None;
                Ok(Reply::Simple("RESET".into()))
            }
            LocalKind::Slowlog => proxy.slowlog.command(&proxy.metrics, args),
            LocalKind::Monitor => {
                if self.monitor.is_none() {
                    self.monitor = Some(Box::new(proxy.monitors.watch()));
                }
                Ok(Reply::Ok)
            }
            LocalKind::Readonly | LocalKind::Readwrite => Err(ProxyError::err(
                "This instance has cluster support disabled",
            )),
        };
        match result {
            Ok(r) => self.reply(spec, r),
            Err(e) => self.fail(Some(spec), e),
        }
    }

    fn hello(&mut self, proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            proto = match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => {
                    return Err(ProxyError::Client(
                        "NOPROTO unsupported protocol version".into(),
                    ));
                }
                None => {
                    return Err(ProxyError::err(
                        "Protocol version is not an integer or out of range",
                    ));
                }
            };
        }
        let mut name = None;
        let mut credentials = None;
        let mut i = 2;
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            let more = args.len() - i - 1;
            if opt == b"AUTH" && more >= 2 {
                // With auth off, like Redis' default user with nopass, any
                // credentials are accepted.
                credentials = Some((&args[i + 1], &args[i + 2]));
                i += 3;
            } else if opt == b"SETNAME" && more >= 1 {
                check_client_name(&args[i + 1])?;
                name = Some(args[i + 1].clone());
                i += 2;
            } else {
                return Err(ProxyError::err(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                )));
            }
        }
        // Redis' order: options parsed, then AUTH, then the login check.
        if let Some(auth) = proxy.config.auth.as_deref() {
            if let Some((user, password)) = credentials {
                self.log_in(proxy, auth, user, password)?;
            }
            if self.user.is_none() {
                return Err(ProxyError::Client(auth::NOAUTH_HELLO.into()));
            }
        }
        self.proto = proto;
        if proto != Protocol::Resp3 {
            // Invalidations are pushed on the connection: RESP3 only.
            self.tracking = None;
        }
        if let Some(n) = name {
            self.name = Some(n);
        }
        let s = |v: &str| Reply::Bulk(Bytes::from(v.to_owned()));
        Ok(Reply::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s(&super::info::hello_version(proxy))),
            (
                s("proto"),
                Reply::Int(if proto == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (s("id"), Reply::Int(self.id as i64)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (
                s("proxy"),
                s(concat!("shardgate-", env!("CARGO_PKG_VERSION"))),
            ),
            (s("modules"), Reply::Array(vec![])),
        ]))
    }

    fn client(&mut self, proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
        let sub = args[1].to_ascii_uppercase();
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(ProxyError::err(format!(
                    "wrong number of arguments for 'client|{}' command",
                    String::from_utf8_lossy(&sub).to_lowercase()
                )))
            }
        };
        match sub.as_slice() {
            b"ID" => arity(2).map(|_| Reply::Int(self.id as i64)),
            b"GETNAME" => {
                arity(2).map(|_| self.name.clone().map(Reply::Bulk).unwrap_or(Reply::Nil))
            }
            b"SETNAME" => {
                arity(3)?;
                check_client_name(&args[2])?;
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Ok(Reply::Ok)
            }
            b"SETINFO" => {
                arity(4)?;
                let attr = String::from_utf8_lossy(&args[2]);
                let valid = args[3].iter().all(|c| (b'!'..=b'~').contains(c));
                if !valid
                    && matches!(
                        args[2].to_ascii_uppercase().as_slice(),
                        b"LIB-NAME" | b"LIB-VER"
                    )
                {
                    return Err(ProxyError::err(format!(
                        "{attr} cannot contain spaces, newlines or special characters."
                    )));
                }
                match args[2].to_ascii_uppercase().as_slice() {
                    b"LIB-NAME" => self.lib_name = Some(args[3].clone()),
                    b"LIB-VER" => self.lib_ver = Some(args[3].clone()),
                    _ => {
                        return Err(ProxyError::err(format!(
                            "Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        )));
                    }
                }
                Ok(Reply::Ok)
            }
            b"INFO" => arity(2).map(|_| Reply::Verbatim(Bytes::from(self.client_info_line()))),
            b"LIST" => client_list(proxy, &args[2..]),
            b"KILL" => self.client_kill(proxy, &args[2..]),
            b"NO-EVICT" | b"NO-TOUCH" => arity(3).map(|_| Reply::Ok),
            b"TRACKING" => self.client_tracking(proxy, &args[2..]),
            b"CACHING" => {
                arity(3)?;
                self.client_caching(&args[2])
            }
            b"TRACKINGINFO" => arity(2).map(|_| self.tracking_info()),
            b"GETREDIR" => {
                arity(2).map(|_| Reply::Int(if self.tracking.is_some() { 0 } else { -1 }))
            }
            b"PAUSE" => super::pause::client_pause(proxy, &args[2..]),
            b"UNPAUSE" => arity(2).map(|_| {
                proxy.pause.unpause();
                Reply::Ok
            }),
            b"UNBLOCK" => super::pause::client_unblock(proxy, &args[2..]),
            b"REPLY" | b"NO-EVICT-ALL" => Err(ProxyError::err(format!(
                "CLIENT {} is not supported by shardgate (ID, GETNAME, SETNAME, SETINFO, INFO, LIST, KILL, PAUSE, UNPAUSE, UNBLOCK, TRACKING, CACHING, TRACKINGINFO, GETREDIR are)",
                String::from_utf8_lossy(&sub)
            ))),
            _ => Err(ProxyError::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            ))),
        }
    }

    /// `CLIENT TRACKING ON|OFF [OPTIN|OPTOUT]` (see `tracking`).
    fn client_tracking(&mut self, proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
        let Some(on) = args.first() else {
            return Err(ProxyError::err(
                "wrong number of arguments for 'client|tracking' command",
            ));
        };
        let on = match on.to_ascii_uppercase().as_slice() {
            b"ON" => true,
            b"OFF" => false,
            _ => return Err(ProxyError::err("syntax error")),
        };
        let (mut optin, mut optout) = (false, false);
        let mut rest = args[1..].iter();
        while let Some(opt) = rest.next() {
            match opt.to_ascii_uppercase().as_slice() {
                b"OPTIN" => optin = true,
                b"OPTOUT" => optout = true,
                b"REDIRECT" | b"BCAST" | b"PREFIX" | b"NOLOOP" => {
                    // Their arguments are not checked: the option is refused.
                    let _ = rest.next();
                    return Err(ProxyError::err(format!(
                        "CLIENT TRACKING {} is not supported by shardgate (the default mode with OPTIN or OPTOUT is, over RESP3)",
                        String::from_utf8_lossy(opt).to_uppercase()
                    )));
                }
                _ => return Err(ProxyError::err("syntax error")),
            }
        }
        if !on {
            self.tracking = None;
            return Ok(Reply::Ok);
        }
        if optin && optout {
            return Err(ProxyError::err(
                "You can't specify both OPTIN mode and OPTOUT mode",
            ));
        }
        if let Some(t) = &self.tracking
            && ((optin && t.optout) || (optout && t.optin))
        {
            return Err(ProxyError::err(
                "You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
            ));
        }
        if self.proto != Protocol::Resp3 {
            return Err(ProxyError::err(
                "CLIENT TRACKING through shardgate needs RESP3 (HELLO 3): invalidations are pushed on the client's own connection (REDIRECT is not supported)",
            ));
        }
        match &mut self.tracking {
            Some(t) => {
                t.optin = optin;
                t.optout = optout;
                t.caching = None;
            }
            None => {
                self.tracking = Some(Box::new(super::tracking::ClientTracking::new(
                    proxy.tracking.clone(),
                    self.id,
                    optin,
                    optout,
                )));
            }
        }
        Ok(Reply::Ok)
    }

    /// `CLIENT CACHING YES|NO`: whether the next command's keys are tracked.
    fn client_caching(&mut self, arg: &Bytes) -> Result<Reply, ProxyError> {
        let Some(t) = self.tracking.as_mut().filter(|t| t.optin || t.optout) else {
            return Err(ProxyError::err(
                "CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
            ));
        };
        match arg.to_ascii_uppercase().as_slice() {
            b"YES" if t.optin => t.caching = Some(true),
            b"YES" => {
                return Err(ProxyError::err(
                    "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                ));
            }
            b"NO" if t.optout => t.caching = Some(false),
            b"NO" => {
                return Err(ProxyError::err(
                    "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                ));
            }
            _ => return Err(ProxyError::err("syntax error")),
        }
        Ok(Reply::Ok)
    }

    /// `CLIENT TRACKINGINFO`, as Redis answers it.
    fn tracking_info(&self) -> Reply {
        let s = |v: &'static str| Reply::Bulk(Bytes::from_static(v.as_bytes()));
        let mut flags = Vec::new();
        let redirect = match &self.tracking {
            None => {
                flags.push(s("off"));
                -1
            }
            Some(t) => {
                flags.push(s("on"));
                if t.optin {
                    flags.push(s("optin"));
                }
                if t.optout {
                    flags.push(s("optout"));
                }
                match t.caching {
                    Some(true) => flags.push(s("caching-yes")),
                    Some(false) => flags.push(s("caching-no")),
                    None => {}
                }
                0
            }
        };
        Reply::Map(vec![
            (s("flags"), Reply::Set(flags)),
            (s("redirect"), Reply::Int(redirect)),
            (s("prefixes"), Reply::Array(vec![])),
        ])
    }

    /// `CLIENT KILL addr:port` (old form: +OK or an error) or `CLIENT KILL
    /// <filter> <value> ...` (ID, ADDR, USER, TYPE, MAXAGE, SKIPME: the
    /// number of clients closed). Only this proxy's clients.
    fn client_kill(&self, proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
        let clients = proxy.clients.all();
        if args.len() == 1 {
            let addr = &args[0];
            let Some(e) = clients.iter().find(|e| e.addr.as_bytes() == addr.as_ref()) else {
                return Err(ProxyError::err("No such client"));
            };
            e.kill();
            return Ok(Reply::Ok);
        }
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err(ProxyError::err("syntax error"));
        }
        let mut id = None;
        let mut addr = None;
        let mut user = None;
        let mut kind = None;
        let mut max_age = None;
        let mut skip_me = true;
        for pair in args.chunks(2) {
            let value = &pair[1];
            let text = String::from_utf8_lossy(value).into_owned();
            match pair[0].to_ascii_uppercase().as_slice() {
                b"ID" => {
                    id = Some(
                        text.parse::<u64>()
                            .ok()
                            .filter(|v| *v > 0)
                            .ok_or_else(|| ProxyError::err("client-id should be greater than 0"))?,
                    )
                }
                b"ADDR" => addr = Some(text),
                b"LADDR" => {
                    return Err(ProxyError::err(
                        "CLIENT KILL LADDR is not supported by shardgate",
                    ));
                }
                b"USER" => user = Some(text),
                b"TYPE" => {
                    let t = text.to_ascii_lowercase();
                    if !matches!(
                        t.as_str(),
                        "normal" | "pubsub" | "master" | "replica" | "slave"
                    ) {
                        return Err(ProxyError::err(format!("Unknown client type '{text}'")));
                    }
                    kind = Some(t);
                }
                b"MAXAGE" => {
                    max_age =
                        Some(text.parse::<u64>().map_err(|_| {
                            ProxyError::err("value is not an integer or out of range")
                        })?)
                }
                b"SKIPME" => match text.to_ascii_lowercase().as_str() {
                    "yes" => skip_me = true,
                    "no" => skip_me = false,
                    _ => return Err(ProxyError::err("syntax error")),
                },
                _ => return Err(ProxyError::err("syntax error")),
            }
        }
        let now = std::time::Instant::now();
        let mut killed = 0;
        for e in &clients {
            let info = e.info();
            let pubsub = info.sub + info.psub + info.ssub > 0;
            let hit = id.is_none_or(|v| v == e.id)
                && addr.as_ref().is_none_or(|a| *a == e.addr)
                && user.as_ref().is_none_or(|u| *u == info.user)
                && kind.as_deref().is_none_or(|k| match k {
                    "pubsub" => pubsub,
                    "normal" => !pubsub,
                    _ => false,
                })
                && max_age.is_none_or(|m| e.age(now).as_secs() >= m)
                && !(skip_me && e.id == self.id);
            if hit {
                e.kill();
                killed += 1;
            }
        }
        Ok(Reply::Int(killed))
    }

    fn client_info_line(&self) -> String {
        let s = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} name={} db={} multi={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            s(&self.name),
            self.db.0,
            self.tx
                .as_ref()
                .map(|t| t.queued.len() as i64)
                .unwrap_or(-1),
            if self.proto == Protocol::Resp3 { 3 } else { 2 },
            s(&self.lib_name),
            s(&self.lib_ver),
        )
    }
}

/// `CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...]`: this
/// proxy's clients, one Redis-shaped line each.
fn client_list(proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
    let mut ids: Option<Vec<u64>> = None;
    let mut kind: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match (opt.as_slice(), args.get(i + 1)) {
            (b"TYPE", Some(t)) => {
                let t = t.to_ascii_lowercase();
                if !matches!(
                    t.as_slice(),
                    b"normal" | b"pubsub" | b"master" | b"replica" | b"slave"
                ) {
                    return Err(ProxyError::err(format!(
                        "Unknown client type '{}'",
                        String::from_utf8_lossy(&args[i + 1])
                    )));
                }
                kind = Some(t);
                i += 2;
            }
            (b"ID", Some(_)) => {
                let mut list = Vec::new();
                for a in &args[i + 1..] {
                    match std::str::from_utf8(a)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        Some(v) if v > 0 => list.push(v),
                        _ => return Err(ProxyError::err("Invalid client ID")),
                    }
                }
                ids = Some(list);
                i = args.len();
            }
            _ => return Err(ProxyError::err("syntax error")),
        }
    }
    let base = proxy.clients.base();
    let now = std::time::Instant::now();
    let mut text = String::new();
    for e in proxy.clients.all() {
        if ids.as_ref().is_some_and(|ids| !ids.contains(&e.id)) {
            continue;
        }
        if let Some(k) = &kind {
            let info = e.info();
            let pubsub = info.sub + info.psub + info.ssub > 0;
            let matches = match k.as_slice() {
                b"pubsub" => pubsub,
                b"normal" => !pubsub,
                _ => false,
            };
            if !matches {
                continue;
            }
        }
        text.push_str(&e.line(base, now));
    }
    Ok(Reply::Verbatim(Bytes::from(text)))
}

fn check_client_name(name: &[u8]) -> Result<(), ProxyError> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(ProxyError::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

impl Session {
    /// `AUTH <password>` (the default user) or `AUTH <user> <password>`.
    fn auth(&mut self, proxy: &Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
        if args.len() > 3 {
            return Err(ProxyError::err("syntax error"));
        }
        let Some(auth) = proxy.config.auth.as_deref() else {
            if args.len() == 2 {
                return Err(ProxyError::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ));
            }
            // AUTH user pass with auth off: the default user has nopass.
            return Ok(Reply::Ok);
        };
        let default_user = Bytes::from_static(auth::DEFAULT_USER.as_bytes());
        let (user, password) = match args {
            [_, password] => (&default_user, password),
            [_, user, password] => (user, password),
            _ => return Err(ProxyError::err("syntax error")),
        };
        self.log_in(proxy, auth, user, password)?;
        Ok(Reply::Ok)
    }
}

/// COMMAND, COMMAND COUNT/INFO/DOCS/LIST/GETKEYS from the command table.
fn command(args: &[Bytes]) -> Result<Reply, ProxyError> {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
        return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect()));
    };
    match sub.as_slice() {
        b"COUNT" => Ok(Reply::Int(COMMANDS.len() as i64)),
        b"LIST" => command_list(&args[2..]),
        b"INFO" => {
            if args.len() == 2 {
                return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect()));
            }
            Ok(Reply::Array(
                args[2..]
                    .iter()
                    .map(|n| {
                        crate::command::lookup(n)
                            .map(command_info)
                            .unwrap_or(Reply::NilArray)
                    })
                    .collect(),
            ))
        }
        // Documentation is not carried by the proxy; clients (redis-cli)
        // fall back to their built-in hints on an empty answer.
        b"DOCS" => Ok(Reply::Map(vec![])),
        b"GETKEYS" => {
            let target = &args[2..];
            let spec = target
                .first()
                .and_then(|n| crate::command::lookup(n))
                .ok_or_else(|| ProxyError::err("Invalid command specified"))?;
            if !spec.arity_ok(target.len()) {
                return Err(ProxyError::err(
                    "Invalid number of arguments specified for command",
                ));
            }
            let mut idx = Vec::new();
            if key_indices(spec, target, &mut idx).is_err() || idx.is_empty() {
                return Err(ProxyError::err("The command has no key arguments"));
            }
            Ok(Reply::Array(
                idx.iter()
                    .filter_map(|&i| target.get(i).cloned())
                    .map(Reply::Bulk)
                    .collect(),
            ))
        }
        _ => Err(ProxyError::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

/// `COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN glob]`:
/// with a filter, subcommands (`config|get`) are listed too, as Redis does.
fn command_list(args: &[Bytes]) -> Result<Reply, ProxyError> {
    let names = |keep: &dyn Fn(&str, crate::command::Categories) -> bool| {
        let top = COMMANDS.iter().map(|c| (c.name, c.categories));
        let subs = crate::command::table::SUBCOMMANDS
            .iter()
            .map(|s| (s.name, s.categories));
        Reply::Array(
            top.chain(subs)
                .filter(|(n, c)| keep(n, *c))
                .map(|(n, _)| Reply::Bulk(Bytes::from_static(n.as_bytes())))
                .collect(),
        )
    };
    match args {
        [] => Ok(Reply::Array(
            COMMANDS
                .iter()
                .map(|c| Reply::Bulk(Bytes::from_static(c.name.as_bytes())))
                .collect(),
        )),
        [filterby, kind, value] if filterby.eq_ignore_ascii_case(b"FILTERBY") => {
            match kind.to_ascii_uppercase().as_slice() {
                // No modules behind the proxy.
                b"MODULE" => Ok(Reply::Array(Vec::new())),
                b"ACLCAT" => {
                    // `all` is a rule shorthand, not a category Redis lists by.
                    let Some(cat) = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| !v.eq_ignore_ascii_case("all"))
                        .and_then(crate::command::Categories::from_name)
                    else {
                        return Ok(Reply::Array(Vec::new()));
                    };
                    Ok(names(&|_, c| c.intersects(cat)))
                }
                b"PATTERN" => {
                    let pattern = value.to_ascii_lowercase();
                    Ok(names(&|n, _| {
                        super::pubsub::glob_match(&pattern, n.as_bytes())
                    }))
                }
                _ => Err(ProxyError::err("syntax error")),
            }
        }
        _ => Err(ProxyError::err("syntax error")),
    }
}

/// One `COMMAND INFO` entry in Redis 7's ten-field shape.
fn command_info(c: &'static CommandSpec) -> Reply {
    let (first, last, step) = c.legacy_key_range();
    let flags = c
        .flags
        .redis_names()
        .map(|n| Reply::Simple(n.into()))
        .collect();
    Reply::Array(vec![
        Reply::Bulk(Bytes::from_static(c.name.as_bytes())),
        Reply::Int(i64::from(c.arity)),
        Reply::Set(flags),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
        Reply::Set(vec![]),
        Reply::Set(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}
