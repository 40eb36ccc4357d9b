//! How the proxy reaches a shard's servers: backend credentials and TLS
//! (`username`, `password` / `password_env`, `tls`, `tls_ca`,
//! `tls_server_name` on a shard, applied to its primary and every replica).
//!
//! Kept apart from [`super::validate`] so that the routing rules and the
//! connection settings can change independently. Environment variables are
//! read when the map is validated: a map naming an unset variable is refused,
//! not accepted with a missing password.

use std::sync::Arc;

use tokio_rustls::rustls::ClientConfig;

use super::MapError;
use super::raw::RawShard;

/// Credentials and TLS for every endpoint of one shard.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// Sent with `AUTH` (RESP2) or `HELLO 3 AUTH` on every backend connection.
    pub auth: Option<BackendAuth>,
    /// TLS towards the shard's servers.
    pub tls: Option<BackendTls>,
}

/// A backend user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendAuth {
    /// ACL user; `None` is Redis' `default` (plain `AUTH <password>`).
    pub username: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS towards a shard's servers.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// rustls setup: the CAs of `tls_ca`, or the system roots.
    pub config: Arc<ClientConfig>,
    /// Name the certificates must carry; `None`: the host of each address.
    pub server_name: Option<String>,
}

fn err(path: String, reason: impl Into<String>) -> MapError {
    MapError {
        path,
        reason: reason.into(),
    }
}

/// Validates the link fields of shard `p` (`shards[i]`).
pub fn shard_link(p: &str, s: &RawShard) -> Result<Arc<Link>, MapError> {
    let password = match (&s.password, &s.password_env) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{p}.password"),
                "give either password or password_env, not both",
            ));
        }
        (Some(pw), None) if pw.is_empty() => {
            return Err(err(format!("{p}.password"), "must not be empty"));
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(pw) if !pw.is_empty() => Some(pw),
            Ok(_) => {
                return Err(err(
                    format!("{p}.password_env"),
                    format!("environment variable `{var}` is empty"),
                ));
            }
            Err(_) => {
                return Err(err(
                    format!("{p}.password_env"),
                    format!("environment variable `{var}` is not set"),
                ));
            }
        },
        (None, None) => None,
    };
    if s.username.is_some() && password.is_none() {
        return Err(err(
            format!("{p}.username"),
            "needs password or password_env",
        ));
    }
    if let Some(u) = &s.username
        && (u.is_empty() || !u.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(err(
            format!("{p}.username"),
            format!("`{u}` is not a user name (printable ASCII without spaces)"),
        ));
    }
    let auth = password.map(|password| BackendAuth {
        username: s.username.clone(),
        password,
    });
    let tls = if s.tls.unwrap_or(false) {
        let ca = s.tls_ca.as_deref().map(std::path::Path::new);
        let config =
            crate::tls::client_config(ca).map_err(|e| err(format!("{p}.tls_ca"), e.to_string()))?;
        if let Some(name) = &s.tls_server_name {
            crate::tls::server_name("", Some(name))
                .map_err(|e| err(format!("{p}.tls_server_name"), e.to_string()))?;
        }
        Some(BackendTls {
            config,
            server_name: s.tls_server_name.clone(),
        })
    } else {
        for (field, set) in [
            ("tls_ca", s.tls_ca.is_some()),
            ("tls_server_name", s.tls_server_name.is_some()),
        ] {
            if set {
                return Err(err(format!("{p}.{field}"), "needs `tls: true`"));
            }
        }
        None
    };
    Ok(Arc::new(Link { auth, tls }))
}

/// A DSN fit for logs, metrics labels and error messages: the password (in
/// the user info or a `password=` parameter) is dropped.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::super::ShardMap;
    use super::redact_dsn;

    const BASE: &str = "regions:\n  - name: us\nshards:\n  - name: s0\n    region: us\n    primary: 127.0.0.1:7001\n    replicas: [127.0.0.1:7011]\n";

    fn refused(extra: &str) -> String {
        match ShardMap::from_yaml(&format!("{BASE}{extra}")) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn link_applies_to_primary_and_replicas_and_hides_the_password() {
        let m = ShardMap::from_yaml(&format!("{BASE}    username: u\n    password: sekrit\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let s = &m.shards[0];
        let auth = s
            .primary
            .link
            .auth
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone()));
        assert_eq!(auth, Some((Some("u".to_owned()), "sekrit".to_owned())));
        assert!(std::sync::Arc::ptr_eq(&s.primary.link, &s.replicas[0].link));
        assert!(!format!("{m:?}").contains("sekrit"));
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            refused("    tls_ca: /x.pem\n"),
            "shards[0].tls_ca: needs `tls: true`"
        );
        assert_eq!(
            refused("    password: a\n    password_env: B\n"),
            "shards[0].password: give either password or password_env, not both"
        );
        assert_eq!(
            refused("    password_env: SHARDGATE_SURELY_UNSET_VAR\n"),
            "shards[0].password_env: environment variable `SHARDGATE_SURELY_UNSET_VAR` is not set"
        );
        assert_eq!(
            refused("    username: u\n"),
            "shards[0].username: needs password or password_env"
        );
        assert!(
            refused("    tls: true\n    tls_ca: /nonexistent/ca.pem\n")
                .starts_with("shards[0].tls_ca: /nonexistent/ca.pem: cannot read certificates")
        );
        assert!(refused("    tls: yes please\n").starts_with("shards[0].tls"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_dsn("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact_dsn("postgres://h/db?password=x&sslmode=disable"),
            "postgres://h/db?sslmode=disable"
        );
        assert_eq!(redact_dsn("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_dsn("nonsense"), "nonsense");
    }
}
