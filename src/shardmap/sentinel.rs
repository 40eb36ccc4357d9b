//! Shards that follow a Redis Sentinel group: the `sentinel:` section of a
//! shard (validated here, with field paths), what Sentinel last said about
//! each group ([`SentinelView`]), and [`resolve`], the one function that
//! turns a map as written into the map of addresses the backends are built
//! from. Pure: the talking to sentinels is in `crate::sentinel`.
//!
//! A map keeps the `sentinel:` form everywhere it is stored (the map file,
//! the state directory, etcd); only the backends see addresses. Placement
//! never depends on them, so a failover changes no slot's owner.

use std::collections::HashMap;
use std::sync::Arc;

use super::link::{BackendAuth, Link};
use super::raw::RawSentinel;
use super::validate::check_addr;
use super::{Endpoint, MapError, ShardKind, ShardMap};

/// Where a shard asks who its primary is.
#[derive(Debug, Clone)]
pub struct SentinelSource {
    /// `host:port` of every sentinel of the group, in map order.
    pub addrs: Vec<String>,
    /// The master name the sentinels monitor.
    pub master: String,
    /// Credentials and TLS towards the sentinels: their own user and
    /// password, the shard's TLS settings.
    pub link: Arc<Link>,
    /// Ask an announced primary `ROLE` before switching to it.
    pub verify_role: bool,
}

impl SentinelSource {
    /// What identifies the group and master in a [`SentinelView`]: the
    /// master name and the sentinels asked.
    pub fn key(&self) -> String {
        format!("{}@{}", self.master, self.addrs.join(","))
    }

    /// The primary's address until Sentinel has named one: not `host:port`,
    /// so a connection attempt fails at once (`invalid port value`) instead
    /// of reaching some server.
    pub fn placeholder(&self) -> String {
        format!("sentinel:{}:undiscovered", self.master)
    }
}

/// What Sentinel last said about one master (see [`SentinelSource::key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// `host:port` of the primary.
    pub primary: String,
    /// `host:port` of the replicas Sentinel does not flag as down or
    /// disconnected.
    pub replicas: Vec<String>,
    /// Sentinel's config epoch of this answer (a later failover has a
    /// greater one).
    pub config_epoch: u64,
}

/// What Sentinel last said about every followed master, by source key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentinelView {
    masters: HashMap<String, Discovered>,
}

impl SentinelView {
    /// What is known about `source`'s master.
    pub fn get(&self, source: &SentinelSource) -> Option<&Discovered> {
        self.masters.get(&source.key())
    }

    /// A copy with `source`'s master set to `found`.
    pub fn with(&self, source: &SentinelSource, found: Discovered) -> SentinelView {
        let mut next = self.clone();
        next.masters.insert(source.key(), found);
        next
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }
}

/// `map` with the primary and replicas of every sentinel shard taken from
/// `view` (a shard `view` knows nothing about keeps its placeholder). Every
/// path from a map to backends goes through here (`Backends::build`).
pub fn resolve(map: &ShardMap, view: &SentinelView) -> ShardMap {
    let mut out = map.clone();
    for shard in &mut out.shards {
        let Some(source) = &shard.sentinel else {
            continue;
        };
        let Some(found) = view.get(source) else {
            continue;
        };
        shard.primary.addr = found.primary.clone();
        shard.replicas = found
            .replicas
            .iter()
            .filter(|r| **r != found.primary)
            .map(|addr| Endpoint {
                addr: addr.clone(),
                region: shard.region.clone(),
                zone: None,
                link: shard.primary.link.clone(),
            })
            .collect();
    }
    out
}

fn err(path: String, reason: impl Into<String>) -> MapError {
    MapError {
        path,
        reason: reason.into(),
    }
}

/// Validates `shards[i].sentinel` (`p` is `shards[i]`). `seen` holds the
/// sources of earlier shards: two shards may not follow the same master
/// through a shared sentinel (they would be one server).
pub fn shard_sentinel(
    p: &str,
    raw: Option<RawSentinel>,
    has_replicas: bool,
    kind: ShardKind,
    shard_link: &Arc<Link>,
    seen: &mut Vec<(String, Arc<SentinelSource>)>,
) -> Result<Option<Arc<SentinelSource>>, MapError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let sp = format!("{p}.sentinel");
    if kind != ShardKind::Redis {
        return Err(err(sp, "only redis shards can follow a Sentinel group"));
    }
    if has_replicas {
        return Err(err(
            format!("{p}.replicas"),
            "a sentinel shard takes its replicas from Sentinel (SENTINEL REPLICAS); remove `replicas`",
        ));
    }
    let addrs = raw
        .addrs
        .ok_or_else(|| err(format!("{sp}.addrs"), "is required"))?;
    if addrs.is_empty() {
        return Err(err(
            format!("{sp}.addrs"),
            "must list at least one sentinel",
        ));
    }
    for (j, a) in addrs.iter().enumerate() {
        let ap = format!("{sp}.addrs[{j}]");
        check_addr(&ap, a)?;
        if addrs[..j].iter().any(|b| b.eq_ignore_ascii_case(a)) {
            return Err(err(ap, format!("duplicate sentinel `{a}`")));
        }
    }
    let master = raw
        .master
        .ok_or_else(|| err(format!("{sp}.master"), "is required"))?;
    if master.is_empty() || master.len() > 128 || !master.chars().all(|c| c.is_ascii_graphic()) {
        return Err(err(
            format!("{sp}.master"),
            format!(
                "`{master}` is not a master name (1 to 128 printable ASCII characters, no spaces)"
            ),
        ));
    }
    let password = match &raw.password_env {
        Some(var) => match std::env::var(var) {
            Ok(pw) if !pw.is_empty() => Some(pw),
            Ok(_) => {
                return Err(err(
                    format!("{sp}.password_env"),
                    format!("environment variable `{var}` is empty"),
                ));
            }
            Err(_) => {
                return Err(err(
                    format!("{sp}.password_env"),
                    format!("environment variable `{var}` is not set"),
                ));
            }
        },
        None => None,
    };
    if let Some(u) = &raw.username {
        if password.is_none() {
            return Err(err(format!("{sp}.username"), "needs password_env"));
        }
        if u.is_empty() || !u.chars().all(|c| c.is_ascii_graphic()) {
            return Err(err(
                format!("{sp}.username"),
                format!("`{u}` is not a user name (printable ASCII without spaces)"),
            ));
        }
    }
    for (first, other) in seen.iter() {
        if other.master == master
            && other
                .addrs
                .iter()
                .any(|a| addrs.iter().any(|b| a.eq_ignore_ascii_case(b)))
        {
            return Err(err(
                format!("{sp}.master"),
                format!("master `{master}` of these sentinels is already followed by {first}"),
            ));
        }
    }
    let link = Arc::new(Link {
        auth: password.map(|password| BackendAuth {
            username: raw.username.clone(),
            password,
        }),
        tls: shard_link.tls.clone(),
    });
    let source = Arc::new(SentinelSource {
        addrs,
        master,
        link,
        verify_role: raw.verify_role.unwrap_or(true),
    });
    seen.push((p.to_owned(), source.clone()));
    Ok(Some(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "regions:\n  - name: us\nshards:\n  - name: s0\n    region: us\n    primary: 127.0.0.1:7001\n  - name: s1\n    region: us\n    password: shardpw\n    sentinel:\n      addrs: [127.0.0.1:26379, 127.0.0.1:26380]\n      master: m1\n";

    fn refused(yaml: &str) -> String {
        match ShardMap::from_yaml(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_sentinel_shard_is_valid_and_resolves_through_the_view() {
        let m = ShardMap::from_yaml(MAP).unwrap_or_else(|e| panic!("{e}"));
        let s = &m.shards[1];
        let src = s.sentinel.clone().expect("sentinel shard");
        assert_eq!(src.master, "m1");
        assert_eq!(src.addrs.len(), 2);
        assert!(src.verify_role);
        assert!(
            src.link.auth.is_none(),
            "the shard's password is not the sentinels'"
        );
        assert_eq!(s.primary.addr, "sentinel:m1:undiscovered");
        // Unknown to the view: the placeholder stays.
        let r = resolve(&m, &SentinelView::default());
        assert_eq!(r.shards[1].primary.addr, "sentinel:m1:undiscovered");
        let view = SentinelView::default().with(
            &src,
            Discovered {
                primary: "127.0.0.1:7101".into(),
                replicas: vec!["127.0.0.1:7102".into(), "127.0.0.1:7101".into()],
                config_epoch: 3,
            },
        );
        let r = resolve(&m, &view);
        assert_eq!(r.shards[1].primary.addr, "127.0.0.1:7101");
        let replicas: Vec<&str> = r.shards[1]
            .replicas
            .iter()
            .map(|e| e.addr.as_str())
            .collect();
        assert_eq!(
            replicas,
            ["127.0.0.1:7102"],
            "the primary is never its own replica"
        );
        assert!(
            r.shards[1].replicas[0].link.auth.is_some(),
            "discovered endpoints use the shard's credentials"
        );
        assert_eq!(r.shards[0].primary.addr, "127.0.0.1:7001");
        // The map as written is untouched.
        assert_eq!(m.shards[1].primary.addr, "sentinel:m1:undiscovered");
    }

    #[test]
    fn refusals_name_the_field() {
        let both = MAP.replace("    password: shardpw\n", "    primary: 127.0.0.1:7002\n");
        assert_eq!(
            refused(&both),
            "shards[1].sentinel: give either `primary` or `sentinel`, not both"
        );
        let neither = MAP.replace("    primary: 127.0.0.1:7001\n", "");
        assert!(refused(&neither).starts_with("shards[0].primary: is required"));
        let replicas = MAP.replace(
            "    password: shardpw\n",
            "    replicas: [127.0.0.1:7003]\n",
        );
        assert!(refused(&replicas).starts_with("shards[1].replicas: a sentinel shard"));
        assert!(
            refused(&MAP.replace("127.0.0.1:26380", "nope"))
                .starts_with("shards[1].sentinel.addrs[1]: `nope` is not host:port")
        );
        assert!(
            refused(&MAP.replace("127.0.0.1:26380", "127.0.0.1:26379"))
                .starts_with("shards[1].sentinel.addrs[1]: duplicate sentinel")
        );
        assert_eq!(
            refused(&MAP.replace("[127.0.0.1:26379, 127.0.0.1:26380]", "[]")),
            "shards[1].sentinel.addrs: must list at least one sentinel"
        );
        assert_eq!(
            refused(&MAP.replace("      master: m1\n", "")),
            "shards[1].sentinel.master: is required"
        );
        assert_eq!(
            refused(&MAP.replace(
                "      master: m1\n",
                "      master: m1\n      username: u\n"
            )),
            "shards[1].sentinel.username: needs password_env"
        );
        assert_eq!(
            refused(&MAP.replace(
                "      master: m1\n",
                "      master: m1\n      password_env: SHARDGATE_SURELY_UNSET_VAR\n"
            )),
            "shards[1].sentinel.password_env: environment variable `SHARDGATE_SURELY_UNSET_VAR` is not set"
        );
        assert!(
            refused(&MAP.replace("master: m1\n", "master: m1\n      port: 1\n")).contains("port")
        );
        let twice = format!(
            "{MAP}  - name: s2\n    region: us\n    sentinel:\n      addrs: [127.0.0.1:26380]\n      master: m1\n"
        );
        assert_eq!(
            refused(&twice),
            "shards[2].sentinel.master: master `m1` of these sentinels is already followed by shards[1]"
        );
        let pg = MAP.replace("    password: shardpw\n", "    kind: postgres\n");
        assert_eq!(
            refused(&pg),
            "shards[1].sentinel: only redis shards can follow a Sentinel group"
        );
    }
}
