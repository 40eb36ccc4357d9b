//! Backend ACL users: how the proxy's command rules and refusals hold inside
//! scripts and transactions.
//!
//! The proxy checks every command a client sends, but it does not see the
//! commands a script runs (`redis.call('FLUSHALL')` inside EVAL, EVALSHA,
//! FCALL and their `_RO` forms, also when queued in MULTI): Redis runs them.
//! Redis checks its own ACL for every `redis.call`, so the proxy runs each
//! client's scripts and transactions as a Redis ACL user that may run
//! exactly what the client may run through the proxy: an allow-list, command
//! by command, of the client's rules minus the proxy's refusals
//! (`auth::User::backend_rules`):
//!
//! - one backend user per proxy user, named [`USER_PREFIX`]`<user>`; without
//!   an auth file every client is the proxy's `default` user (`+@all`), so
//!   `shardgate:default` still denies what the proxy refuses
//!   ([`crate::command::proxy_refusals`]: SELECT, SWAPDB, MIGRATE, CONFIG,
//!   SHUTDOWN, DEBUG, ACL, MODULE, FLUSHALL/FLUSHDB unless `allow_flush`, ...)
//!   and every command the proxy does not know (module commands);
//! - `resetkeys` and patterns that grant every key but the proxy's own
//!   (the mover's fence, which a script could otherwise delete: see
//!   [`key_patterns`]), `resetchannels` (the proxy refuses pub/sub), `clearselectors nocommands` before the rules so
//!   that an earlier definition leaves nothing behind;
//! - a password of 256 random bits made at startup, kept only in memory and
//!   never logged. `>password` adds it to the user's passwords rather than
//!   replacing them, so several proxies sharing the shards do not lock each
//!   other out (a restarted proxy's old password stays on the user, unknown
//!   to anyone, until an operator runs `ACL SETUSER <user> resetpass`).
//!
//! Installing: each dedicated connection of a backend user is opened with
//! the shard map's credentials, sends `ACL SETUSER` (so a restarted backend,
//! or a new endpoint of a reloaded map, gets its users back) and then `AUTH`
//! as the backend user; it is handed out only when both succeeded. When the
//! map's credentials may not run `ACL SETUSER`, nothing runs: the script or
//! transaction gets the error (fail closed), the endpoint logs it once and
//! `shardgate_backend_acl_syncs_total{outcome="error"}` counts it. At startup
//! and after a map reload, [`sync_all`] installs every user on every Redis
//! endpoint, which both reports missing rights early and updates the rules
//! of connections already logged in (Redis applies a changed user at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::BytesMut;

use super::EndpointState;
use super::connect::{connect, read_one_frame};
use super::dedicated::DedicatedConn;
use super::migrate::MOVING_SET;
use crate::error::BackendError;
use crate::protocol::request::encode_command;
use crate::protocol::{Protocol, reply};
use crate::shardmap::ShardKind;

/// Prefix of every backend ACL user the proxy manages.
pub const USER_PREFIX: &str = "shardgate:";

/// One backend ACL user: name, password and rules in Redis ACL syntax.
pub struct BackendUser {
    /// `shardgate:<proxy user>`.
    pub name: String,
    /// `None` only if the system could not produce random bytes: then the
    /// user is never installed and its scripts are refused.
    password: Option<String>,
    rules: Vec<String>,
}

impl std::fmt::Debug for BackendUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("BackendUser")
            .field("name", &self.name)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl BackendUser {
    /// The rules as Redis stores them (for logs and tests; no password).
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    fn password(&self, addr: &str) -> Result<&str, BackendError> {
        self.password.as_deref().ok_or_else(|| BackendError::Acl {
            addr: addr.to_owned(),
            user: self.name.clone(),
            reason: "no random password could be generated at startup".to_owned(),
        })
    }

    /// `ACL SETUSER <name> on clearselectors resetkeys <key patterns>
    /// resetchannels nocommands <rules...> ><password>`.
    fn encode_setuser(&self, password: &str, out: &mut BytesMut) {
        let pass = format!(">{password}");
        let mut args: Vec<&[u8]> = vec![
            b"ACL",
            b"SETUSER",
            self.name.as_bytes(),
            b"on",
            b"clearselectors",
            b"resetkeys",
        ];
        let keys = key_patterns();
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([b"resetchannels".as_slice(), b"nocommands"]);
        args.extend(self.rules.iter().map(|r| r.as_bytes()));
        args.push(pass.as_bytes());
        encode_command(&args, out);
    }
}

/// The key patterns of every backend user: any key may be read (`%R~*`),
/// and any key but the proxy's own ([`MOVING_SET`], the mover's fence) may
/// be read and written, so that a script cannot lift the fence (a Lua
/// "delete every key matching" loop over `KEYS` or `SCAN` would, during a
/// move). Redis' globs have no negation, so the keys other than the fence
/// `f` (n bytes) are spelled out by how they end, compared from the last
/// byte: `*[^c]` with `c` the last byte of `f` (almost every key: this
/// pattern comes first, so that the check of a key is one cheap glob),
/// then each longer suffix of `f` after another byte (`*[^x]` + `f[i+1..]`),
/// each proper suffix of `f` as a whole key (`f[i..]`, and the empty key),
/// and any key ending in `f` after at least one byte (`?*` + `f`). Redis
/// checks a key against them only for the commands a script or
/// transaction runs; a key needs one pattern granting all it needs, so a
/// write of the fence is refused (`-ERR The user executing the script
/// can't access at least one of the keys ...`) and a read of it is not.
/// The fence's bytes are letters and `_`, which a glob takes literally.
fn key_patterns() -> Vec<String> {
    let fence = std::str::from_utf8(MOVING_SET).unwrap_or_default();
    let Some(last) = fence.chars().last() else {
        return vec!["~*".to_owned()];
    };
    let mut out = vec![format!("~*[^{last}]"), "%R~*".to_owned()];
    // `fence[i..]` after a byte other than `fence[i - 1]`.
    out.extend(
        (1..fence.len())
            .rev()
            .map(|i| format!("~*[^{}]{}", &fence[i - 1..i], &fence[i..])),
    );
    out.extend((1..=fence.len()).map(|i| format!("~{}", &fence[i..])));
    out.push(format!("~?*{fence}"));
    out
}

/// The backend users of this proxy, by proxy user name. Swapped as a whole
/// when the rules change (a map reload toggling `allow_flush`); passwords
/// stay the same for the life of the process.
pub struct BackendAcl {
    users: ArcSwap<HashMap<String, Arc<BackendUser>>>,
}

impl std::fmt::Debug for BackendAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAcl")
            .field("users", &self.users.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl BackendAcl {
    /// Users from `(proxy user, backend rules)` pairs.
    pub fn new(specs: impl IntoIterator<Item = (String, Vec<String>)>) -> BackendAcl {
        let acl = BackendAcl {
            users: ArcSwap::from_pointee(HashMap::new()),
        };
        acl.update(specs);
        acl
    }

    /// Replaces the rules; a user that existed keeps its password.
    pub fn update(&self, specs: impl IntoIterator<Item = (String, Vec<String>)>) {
        let old = self.users.load();
        let users = specs
            .into_iter()
            .map(|(proxy_user, rules)| {
                let password = match old.get(&proxy_user) {
                    Some(u) => u.password.clone(),
                    None => random_password(),
                };
                let user = BackendUser {
                    name: format!("{USER_PREFIX}{proxy_user}"),
                    password,
                    rules,
                };
                (proxy_user, Arc::new(user))
            })
            .collect();
        self.users.store(Arc::new(users));
    }

    /// The backend user of proxy user `proxy_user`.
    pub fn user(&self, proxy_user: &str) -> Option<Arc<BackendUser>> {
        self.users.load().get(proxy_user).cloned()
    }

    /// Every backend user.
    pub fn users(&self) -> Vec<Arc<BackendUser>> {
        self.users.load().values().cloned().collect()
    }
}

/// 32 bytes from the system's random source, hex-encoded.
fn random_password() -> Option<String> {
    let mut bytes = [0u8; 32];
    match getrandom::fill(&mut bytes) {
        Ok(()) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Err(e) => {
            tracing::error!(error = %e, "no random bytes for a backend ACL password; scripts and transactions will be refused");
            None
        }
    }
}

/// Turns a fresh dedicated connection (logged in with the shard map's
/// credentials) into one of `user`: `ACL SETUSER` then `AUTH`, both
/// required to succeed. On an error the connection must be dropped: it is
/// still logged in with the map's credentials.
pub(super) async fn log_in(
    conn: &mut DedicatedConn,
    ep: &EndpointState,
    user: &BackendUser,
) -> Result<(), BackendError> {
    let password = user.password(&ep.addr)?;
    let mut frames = BytesMut::new();
    user.encode_setuser(password, &mut frames);
    encode_command(
        &[b"AUTH", user.name.as_bytes(), password.as_bytes()],
        &mut frames,
    );
    let exchange = async {
        conn.send(&frames, 2).await?;
        let setuser = conn.recv().await?;
        let auth = conn.recv().await?;
        Ok::<_, BackendError>((setuser, auth))
    };
    let (setuser, auth) = match tokio::time::timeout(ep.options.connect_timeout, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(BackendError::Timeout {
                addr: ep.addr.clone(),
                millis: ep.options.connect_timeout.as_millis() as u64,
            });
        }
    };
    let refused = |frame: &[u8], what: &str| {
        reply::is_error(frame).then(|| BackendError::Acl {
            addr: ep.addr.clone(),
            user: user.name.clone(),
            reason: format!("{what}: {}", redacted(frame, password)),
        })
    };
    let result = match refused(&setuser, "ACL SETUSER refused") {
        Some(e) => Err(e),
        None => refused(&auth, "AUTH as the backend user refused").map_or(Ok(()), Err),
    };
    record(ep, &result);
    result
}

/// Installs every user on one Redis endpoint over a connection of its own.
pub async fn sync_endpoint(
    ep: &EndpointState,
    users: &[Arc<BackendUser>],
) -> Result<(), BackendError> {
    let mut frames = BytesMut::new();
    for u in users {
        u.encode_setuser(u.password(&ep.addr)?, &mut frames);
    }
    let exchange = async {
        let mut stream = connect(
            &ep.addr,
            &ep.link,
            Protocol::Resp2,
            ep.options.connect_timeout,
        )
        .await?;
        let lost = |e: std::io::Error| BackendError::ConnectionLost {
            addr: ep.addr.clone(),
            reason: e.to_string(),
        };
        use tokio::io::AsyncWriteExt;
        stream.write_all(&frames).await.map_err(lost)?;
        stream.flush().await.map_err(lost)?;
        for u in users {
            let frame = read_one_frame(&mut stream).await.map_err(lost)?;
            if reply::is_error(&frame) {
                return Err(BackendError::Acl {
                    addr: ep.addr.clone(),
                    user: u.name.clone(),
                    reason: format!(
                        "ACL SETUSER refused: {}",
                        redacted(&frame, u.password(&ep.addr).unwrap_or_default())
                    ),
                });
            }
        }
        Ok(())
    };
    let result = match tokio::time::timeout(ep.options.command_timeout * 2, exchange).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout {
            addr: ep.addr.clone(),
            millis: (ep.options.command_timeout * 2).as_millis() as u64,
        }),
    };
    record(ep, &result);
    result
}

/// Installs every user on every Redis endpoint of `endpoints` (at startup
/// and after a map reload); failures are logged and counted per endpoint.
pub async fn sync_all(endpoints: Vec<Arc<super::Endpoint>>, users: Vec<Arc<BackendUser>>) {
    let (mut ok, mut failed) = (0usize, 0usize);
    for ep in endpoints
        .iter()
        .filter(|e| e.kind() == Some(ShardKind::Redis))
    {
        match sync_endpoint(&ep.state, &users).await {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    tracing::info!(
        endpoints = ok,
        failed,
        users = users.len(),
        "backend ACL users installed for scripts and transactions"
    );
}

/// The error text of `frame`, with the password cut out should Redis echo
/// the `>password` rule it refused (errors reach logs and clients).
fn redacted(frame: &[u8], password: &str) -> String {
    let text = reply::error_text(frame).unwrap_or_default();
    if password.is_empty() {
        text
    } else {
        text.replace(password, "<redacted>")
    }
}

/// Counts the outcome and logs a failure once per change of state (the
/// connection pool retries on every script; the log must not repeat it).
fn record(ep: &EndpointState, result: &Result<(), BackendError>) {
    ep.metrics.acl_sync(result.is_ok());
    match result {
        Ok(()) => {
            if ep.acl_failing.swap(false, Ordering::Relaxed) {
                tracing::info!(endpoint = %ep.addr, shard = %ep.shard, "backend ACL users installed again; scripts and transactions run");
            }
        }
        // A backend that is down is reported by the connection code.
        Err(BackendError::Acl { user, reason, .. }) => {
            if !ep.acl_failing.swap(true, Ordering::Relaxed) {
                tracing::error!(endpoint = %ep.addr, shard = %ep.shard, user, error = %reason,
                    "cannot install the backend ACL user that runs client scripts and transactions; they are refused on this endpoint until the shard map's credentials may run ACL SETUSER and AUTH");
            }
        }
        Err(e) => {
            tracing::debug!(endpoint = %ep.addr, error = %e, "backend ACL sync did not reach the endpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::migrate::is_reserved_key;

    fn spec(rules: &[&str]) -> Vec<(String, Vec<String>)> {
        vec![(
            "app".to_owned(),
            rules.iter().map(|r| r.to_string()).collect(),
        )]
    }

    #[test]
    fn users_keep_their_password_across_updates_and_never_print_it() {
        let acl = BackendAcl::new(spec(&["+get"]));
        let before = acl.user("app").expect("user");
        let password = before.password.clone().expect("random password");
        assert_eq!(password.len(), 64);
        assert_eq!(before.name, "shardgate:app");
        acl.update(spec(&["+get", "+set"]));
        let after = acl.user("app").expect("user");
        assert_eq!(after.password.as_deref(), Some(password.as_str()));
        assert_eq!(after.rules(), ["+get", "+set"]);
        assert!(!format!("{after:?} {acl:?}").contains(&password));
        // Another proxy (or a restart) makes another password.
        let other = BackendAcl::new(spec(&["+get"]));
        assert_ne!(
            other.user("app").and_then(|u| u.password.clone()),
            Some(password)
        );
    }

    #[test]
    fn setuser_resets_everything_but_the_passwords() {
        let acl = BackendAcl::new(spec(&["+get"]));
        let user = acl.user("app").expect("user");
        let mut out = BytesMut::new();
        user.encode_setuser("pw", &mut out);
        let text = String::from_utf8_lossy(&out).replace("\r\n", " ");
        assert!(
            text.contains("$2 on $14 clearselectors $9 resetkeys $6 ~*[^_] $4 %R~* $7 ~*[^_]_ "),
            "{text}"
        );
        assert!(
            text.ends_with("$13 resetchannels $10 nocommands $4 +get $3 >pw "),
            "{text}"
        );
        assert!(text.contains("$13 shardgate:app"));
    }

    /// Redis' glob for the patterns `key_patterns` uses: `?`, `*`, `[^c]`
    /// and literal bytes.
    fn glob(pattern: &[u8], key: &[u8]) -> bool {
        match pattern {
            [] => key.is_empty(),
            [b'*', rest @ ..] => (0..=key.len()).any(|i| glob(rest, &key[i..])),
            [b'?', rest @ ..] => !key.is_empty() && glob(rest, &key[1..]),
            [b'[', b'^', c, b']', rest @ ..] => {
                key.first().is_some_and(|k| k != c) && glob(rest, &key[1..])
            }
            [p, rest @ ..] => key.first() == Some(p) && glob(rest, &key[1..]),
        }
    }

    /// Whether a backend user may write `key` (a pattern without `%R`).
    fn writable(key: &[u8]) -> bool {
        key_patterns()
            .iter()
            .filter_map(|p| p.strip_prefix('~'))
            .any(|p| glob(p.as_bytes(), key))
    }

    #[test]
    fn backend_users_may_write_every_key_but_the_fence() {
        assert!(
            MOVING_SET
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_'),
            "a glob would not take the fence literally"
        );
        assert!(!writable(MOVING_SET));
        assert!(is_reserved_key(MOVING_SET));
        let mut keys: Vec<Vec<u8>> = vec![b"".to_vec(), b"k".to_vec(), b"user:1000".to_vec()];
        // Every prefix, suffix and extension of the fence, and every
        // one-byte change.
        for len in 0..MOVING_SET.len() {
            keys.push(MOVING_SET[..len].to_vec());
            keys.push(MOVING_SET[len + 1..].to_vec());
            keys.push([b"x", &MOVING_SET[len + 1..]].concat());
            keys.push([b"_", &MOVING_SET[len + 1..]].concat());
            let mut changed = MOVING_SET.to_vec();
            changed[len] ^= 0x20;
            keys.push(changed);
            let mut other = MOVING_SET.to_vec();
            other[len] = b'*';
            keys.push(other);
        }
        keys.push([MOVING_SET, b"x"].concat());
        keys.push([b"x", MOVING_SET].concat());
        keys.push([b"_", MOVING_SET].concat());
        keys.push([MOVING_SET, MOVING_SET].concat());
        keys.push(vec![b'_'; 100]);
        keys.push(vec![0xff; MOVING_SET.len()]);
        // ("_" before the fence's suffix from its second byte is the fence.)
        keys.retain(|k| k != MOVING_SET);
        assert!(keys.len() > 100);
        for key in &keys {
            assert!(writable(key), "{:?}", String::from_utf8_lossy(key));
        }
        // Any key may be read, and the pattern most keys match comes first.
        assert!(key_patterns().contains(&"%R~*".to_owned()));
        assert_eq!(key_patterns()[0], "~*[^_]");
    }
}
