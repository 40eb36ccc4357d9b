//! Client authentication and command permissions, Redis 7.0 style.
//!
//! The proxy has a `default` user (its password is the `requirepass` of
//! Redis) and named users, each with a password and command rules over the
//! ACL categories of the command table (`+@all -@admin -@dangerous`,
//! `+@read +@connection`). A connection starts unauthenticated when auth is
//! configured; `AUTH [user] pass` or `HELLO proto AUTH user pass` log it in.
//!
//! Credentials come from a YAML file of their own (never the shard map, which
//! is routing data that gets copied around) parsed by [`mod@file`]. Only the
//! SHA-256 of each password is kept in memory, and digests are compared in
//! constant time.
//!
//! What a client sees is worded exactly as Redis 7.0 words it (server.c,
//! acl.c): [`NOAUTH`], [`WRONGPASS`], [`noperm`].

pub mod file;
pub mod rate;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::command::{Categories, CommandSpec, SubcommandSpec};

/// Redis' reply to a command sent before authenticating.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis' reply to a wrong user name or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Redis' reply to `HELLO` without `AUTH` on an unauthenticated connection.
pub const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// Redis' reply to a command outside the user's permissions; `fullname` is
/// the command (`get`) or `container|subcommand` (`config|set`).
pub fn noperm(fullname: &str) -> String {
    format!("NOPERM this user has no permissions to run the '{fullname}' command")
}

/// The name `AUTH <password>` logs in as.
pub const DEFAULT_USER: &str = "default";

/// One rule of a user's command permissions, applied in order (the last rule
/// that matches a command decides, as Redis applies ACL rules one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `+@cat` / `-@cat` (`+@all`, `allcommands`, `nocommands`).
    Categories { allow: bool, categories: Categories },
    /// `+cmd` / `-cmd`: the command and, for a container, every subcommand.
    Command { allow: bool, name: &'static str },
    /// `+cmd|sub` / `-cmd|sub`: one subcommand.
    Subcommand { allow: bool, name: &'static str },
}

/// A user: name, password digest and command rules.
pub struct User {
    pub name: String,
    digest: [u8; 32],
    rules: Vec<Rule>,
    /// The rules allow every command (the common `+@all`): no check needed.
    all: bool,
    /// The user's rate limit, shared by all its connections.
    pub rate: Option<std::sync::Arc<rate::Buckets>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the digest.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl User {
    /// A user with `password` and `rules`.
    pub fn new(name: impl Into<String>, password: &[u8], rules: Vec<Rule>) -> User {
        let all = matches!(
            rules.as_slice(),
            [Rule::Categories { allow: true, categories }] if *categories == Categories::ALL
        );
        User {
            name: name.into(),
            digest: digest(password),
            rules,
            all,
            rate: None,
        }
    }

    /// The same user with a rate limit.
    pub fn with_rate(mut self, limit: Option<rate::RateLimit>) -> User {
        self.rate = limit.map(|l| std::sync::Arc::new(rate::Buckets::new(l)));
        self
    }

    /// Checks that this user may run `spec` (called as subcommand `sub` when
    /// it is a container); `Err` carries the full command name for NOPERM.
    pub fn may_run(
        &self,
        spec: &'static CommandSpec,
        sub: Option<&'static SubcommandSpec>,
    ) -> Result<(), &'static str> {
        if self.all {
            return Ok(());
        }
        let (categories, fullname) = match sub {
            Some(s) => (s.categories, s.name),
            None => (spec.categories, spec.name),
        };
        let mut allowed = false;
        for rule in &self.rules {
            match *rule {
                Rule::Categories {
                    allow,
                    categories: c,
                } => {
                    if c == Categories::ALL || categories.intersects(c) {
                        allowed = allow;
                    }
                }
                Rule::Command { allow, name } => {
                    if name == spec.name {
                        allowed = allow;
                    }
                }
                Rule::Subcommand { allow, name } => {
                    if name == fullname {
                        allowed = allow;
                    }
                }
            }
        }
        if allowed { Ok(()) } else { Err(fullname) }
    }

    /// The command rules of the backend ACL user that runs this user's
    /// scripts and transactions, in Redis ACL syntax (after `nocommands`):
    /// an allow-list of every command and subcommand of the command table
    /// that this user may run *and* the proxy would run for a client (not in
    /// [`crate::command::proxy_refusals`]). Redis enforces it on the
    /// commands a script runs, which the proxy never sees.
    ///
    /// An allow-list rather than the user's rules with `-cmd` appended: it
    /// is the proxy's own decision ([`User::may_run`]) command by command,
    /// so it cannot drift from how Redis reads the rules, and it leaves out
    /// whatever the proxy does not know and so refuses (module commands,
    /// commands of a newer Redis). Containers are listed by subcommand
    /// (`+config|get`) for the same reason.
    pub fn backend_rules(&self, allow_flush: bool) -> Vec<String> {
        use crate::command::{proxy_refusals, table};
        let refused = proxy_refusals(allow_flush);
        let mut out = Vec::new();
        for spec in table::COMMANDS {
            if refused.contains(&spec.name) {
                continue;
            }
            let prefix = format!("{}|", spec.name);
            let mut subs = table::SUBCOMMANDS
                .iter()
                .filter(|s| s.name.starts_with(&prefix))
                .peekable();
            if subs.peek().is_none() {
                if self.may_run(spec, None).is_ok() {
                    out.push(format!("+{}", spec.name));
                }
                continue;
            }
            for sub in subs {
                if !refused.contains(&sub.name) && self.may_run(spec, Some(sub)).is_ok() {
                    out.push(format!("+{}", sub.name));
                }
            }
        }
        out
    }
}

/// [`User::backend_rules`] of a user with `rules` (the `default` user of a
/// proxy without an auth file has [`all_commands`]).
pub fn backend_rules(rules: &[Rule], allow_flush: bool) -> Vec<String> {
    User::new(DEFAULT_USER, b"", rules.to_vec()).backend_rules(allow_flush)
}

/// The configured users. A proxy without `Auth` lets every client in (as
/// Redis does while the default user has no password).
#[derive(Debug, Default)]
pub struct Auth {
    users: HashMap<String, Arc<User>>,
    /// Each client address's rate limit, when the file sets one.
    per_address: Option<rate::RateLimit>,
    /// The buckets of the addresses seen (bounded; see [`Auth::address_buckets`]).
    addresses: std::sync::Mutex<HashMap<std::net::IpAddr, Arc<rate::Buckets>>>,
}

impl Auth {
    /// Builds from users (names must be unique; the validated file ensures it).
    pub fn new(users: impl IntoIterator<Item = User>) -> Auth {
        Auth {
            users: users
                .into_iter()
                .map(|u| (u.name.clone(), Arc::new(u)))
                .collect(),
            per_address: None,
            addresses: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The same users with a rate limit per client address.
    pub fn with_address_rate(mut self, limit: Option<rate::RateLimit>) -> Auth {
        self.per_address = limit;
        self
    }

    /// The buckets of client address `ip` (None without a per-address
    /// limit). Addresses whose buckets no connection holds are forgotten
    /// once 10,000 are tracked (bounded memory).
    pub fn address_buckets(&self, ip: std::net::IpAddr) -> Option<Arc<rate::Buckets>> {
        let limit = self.per_address?;
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 10_000 && !map.contains_key(&ip) {
            map.retain(|_, b| Arc::strong_count(b) > 1);
        }
        Some(
            map.entry(ip)
                .or_insert_with(|| Arc::new(rate::Buckets::new(limit)))
                .clone(),
        )
    }

    /// Only a `default` user with `password` and every command: what
    /// Redis' `requirepass` gives.
    pub fn requirepass(password: &[u8]) -> Auth {
        Auth::new([User::new(DEFAULT_USER, password, all_commands())])
    }

    /// The user `name` if `password` is theirs. Every user's digest is
    /// compared in the same constant time, and an unknown user costs the same
    /// hash as a known one.
    pub fn authenticate(&self, name: &[u8], password: &[u8]) -> Option<Arc<User>> {
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.users.get(n));
        let given = digest(password);
        match user {
            Some(u) if constant_time_eq(&u.digest, &given) => Some(u.clone()),
            _ => None,
        }
    }

    /// Number of users (for the startup log).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is configured (then nobody can log in).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user (to install their backend ACL users).
    pub fn users(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// Whether a `default` user exists (so `AUTH <password>` can succeed).
    pub fn has_default(&self) -> bool {
        self.users.contains_key(DEFAULT_USER)
    }
}

/// `+@all`.
pub fn all_commands() -> Vec<Rule> {
    vec![Rule::Categories {
        allow: true,
        categories: Categories::ALL,
    }]
}

fn digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{lookup, subcommand};

    fn user(rules: &str) -> User {
        User::new("u", b"pw", file::parse_rules(rules).unwrap_or_default())
    }

    fn may(u: &User, args: &[&str]) -> Result<(), &'static str> {
        let spec = lookup(args[0].as_bytes()).expect("command");
        let sub = args.get(1).and_then(|a| subcommand(spec, a.as_bytes()));
        u.may_run(spec, sub)
    }

    #[test]
    fn rules_apply_in_order() {
        let ro = user("+@read +@connection");
        assert_eq!(may(&ro, &["get", "k"]), Ok(()));
        assert_eq!(may(&ro, &["ping"]), Ok(()));
        assert_eq!(may(&ro, &["set", "k", "v"]), Err("set"));
        assert_eq!(may(&ro, &["object", "encoding", "k"]), Ok(()));
        assert_eq!(may(&ro, &["client", "setname", "x"]), Ok(()));
        let no_admin = user("+@all -@admin -@dangerous");
        assert_eq!(may(&no_admin, &["set", "k", "v"]), Ok(()));
        assert_eq!(
            may(&no_admin, &["config", "set", "a", "b"]),
            Err("config|set")
        );
        assert_eq!(may(&no_admin, &["keys", "*"]), Err("keys"));
        let mixed = user("-@all +get +config|get");
        assert_eq!(may(&mixed, &["get", "k"]), Ok(()));
        assert_eq!(may(&mixed, &["config", "get", "x"]), Ok(()));
        assert_eq!(may(&mixed, &["config", "set", "x", "y"]), Err("config|set"));
        let container = user("+client -client|kill");
        assert_eq!(may(&container, &["client", "id"]), Ok(()));
        assert_eq!(
            may(&container, &["client", "kill", "x"]),
            Err("client|kill")
        );
    }

    #[test]
    fn backend_rules_allow_what_the_user_and_the_proxy_allow() {
        let u = user("+@all -@admin -@dangerous +config|get -client|setname");
        let rules = u.backend_rules(false);
        let has = |r: &str| rules.iter().any(|x| x == r);
        for allowed in [
            "+get",
            "+set",
            "+eval",
            "+fcall",
            "+multi",
            "+exec",
            "+client|id",
            "+script|load",
        ] {
            assert!(has(allowed), "{allowed}");
        }
        // Refused by a rule, by the proxy, or both (config|get: the proxy
        // refuses every CONFIG even where the rules allow it).
        for denied in [
            "+keys",
            "+info",
            "+flushall",
            "+select",
            "+swapdb",
            "+migrate",
            "+config",
            "+config|get",
            "+client",
            "+client|setname",
            "+client|kill",
            "+debug",
            "+shutdown",
            "+acl|setuser",
        ] {
            assert!(!has(denied), "{denied}");
        }
        assert!(rules.iter().all(|r| r.starts_with('+')));
        let all = backend_rules(&all_commands(), true);
        assert!(all.iter().any(|r| r == "+flushall") && all.iter().any(|r| r == "+keys"));
        assert!(!all.iter().any(|r| r == "+select" || r == "+flushall|async"));
        assert!(
            !backend_rules(&all_commands(), false)
                .iter()
                .any(|r| r == "+flushdb")
        );
    }

    #[test]
    fn passwords_compare_by_digest() {
        let auth = Auth::new([User::new("a", b"secret", all_commands())]);
        assert!(auth.authenticate(b"a", b"secret").is_some());
        assert!(auth.authenticate(b"a", b"Secret").is_none());
        assert!(auth.authenticate(b"b", b"secret").is_none());
        assert!(!format!("{auth:?}").contains("digest"));
        assert!(Auth::requirepass(b"x").has_default());
    }
}
