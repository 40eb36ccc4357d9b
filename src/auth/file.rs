//! The auth file (`serve --auth-file PATH`): YAML -> raw serde structs ->
//! validated [`Auth`], refused with the field path and the reason like the
//! shard map (`users[1].commands: unknown category `@foo` ...`).
//!
//! ```yaml
//! requirepass_env: SHARDGATE_PASSWORD   # or requirepass: "..."; the `default` user
//! users:
//!   - name: app
//!     password_env: APP_PASSWORD        # or password: "..."
//!     commands: "+@all -@admin -@dangerous"
//!   - name: reader
//!     password_env: READER_PASSWORD
//!     commands: "+@read +@connection"
//! ```

use std::collections::HashSet;

use serde::Deserialize;

use super::{Auth, DEFAULT_USER, Rule, User, all_commands};
use crate::command::{Categories, lookup, table::SUBCOMMANDS};
use crate::shardmap::MapError;

/// A refused auth file: which field, and why (same shape as a refused map).
pub type AuthFileError = MapError;

/// The whole document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthFile {
    /// Password of the `default` user (`AUTH <password>`), inline.
    #[serde(default)]
    requirepass: Option<String>,
    /// Environment variable holding the `default` user's password.
    #[serde(default)]
    requirepass_env: Option<String>,
    /// Named users.
    #[serde(default)]
    users: Option<Vec<RawUser>>,
    /// A rate limit for each client address.
    #[serde(default)]
    per_address_rate_limit: Option<RawRate>,
}

/// `rate_limit:` of a user, or `per_address_rate_limit:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    #[serde(default)]
    requests_per_second: Option<i64>,
    #[serde(default)]
    bytes_per_second: Option<i64>,
}

fn rate(path: &str, raw: Option<RawRate>) -> Result<Option<super::rate::RateLimit>, AuthFileError> {
    let Some(raw) = raw else { return Ok(None) };
    let field = |name: &str, v: Option<i64>| -> Result<u64, AuthFileError> {
        match v {
            None => Ok(0),
            Some(v) if v > 0 => Ok(v as u64),
            Some(v) => Err(err(
                format!("{path}.{name}"),
                format!("must be > 0, got {v}"),
            )),
        }
    };
    let limit = super::rate::RateLimit {
        requests_per_second: field("requests_per_second", raw.requests_per_second)?,
        bytes_per_second: field("bytes_per_second", raw.bytes_per_second)?,
    };
    if limit.requests_per_second == 0 && limit.bytes_per_second == 0 {
        return Err(err(
            path,
            "set requests_per_second, bytes_per_second or both",
        ));
    }
    Ok(Some(limit))
}

/// One user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_env: Option<String>,
    /// Rules like `+@all -@admin`; default `+@all`.
    #[serde(default)]
    commands: Option<String>,
    /// Requests and bytes per second for all of the user's connections.
    #[serde(default)]
    rate_limit: Option<RawRate>,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> AuthFileError {
    MapError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Reads and validates an auth file; environment variables are read from
/// the process environment.
pub fn load(path: &std::path::Path) -> Result<Auth, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            path.display().to_string(),
            format!("cannot read the auth file: {e}"),
        )
    })?;
    from_yaml(&text, &|var| std::env::var(var).ok())
}

/// Parses and validates auth YAML; `env` looks up `*_env` variables.
pub fn from_yaml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Auth, AuthFileError> {
    let raw: RawAuthFile = crate::shardmap::yaml::from_str(text)?;
    let mut users = Vec::new();
    if let Some(pw) = secret(
        "requirepass",
        raw.requirepass,
        "requirepass_env",
        raw.requirepass_env,
        env,
    )? {
        users.push(User::new(DEFAULT_USER, pw.as_bytes(), all_commands()));
    }
    let mut seen: HashSet<String> = users.iter().map(|u| u.name.clone()).collect();
    for (i, u) in raw.users.unwrap_or_default().into_iter().enumerate() {
        let p = format!("users[{i}]");
        let name = u
            .name
            .ok_or_else(|| err(format!("{p}.name"), "is required"))?;
        check_user_name(&format!("{p}.name"), &name)?;
        if !seen.insert(name.clone()) {
            let why = if name == DEFAULT_USER {
                "duplicate user `default` (requirepass already defines it)".to_owned()
            } else {
                format!("duplicate user `{name}`")
            };
            return Err(err(format!("{p}.name"), why));
        }
        let pw = secret(
            &format!("{p}.password"),
            u.password,
            &format!("{p}.password_env"),
            u.password_env,
            env,
        )?
        .ok_or_else(|| err(&p, "needs password or password_env"))?;
        let rules = match u.commands {
            None => all_commands(),
            Some(text) => {
                parse_rules(&text).map_err(|why| err(format!("{p}.commands"), why.to_string()))?
            }
        };
        let limit = rate(&format!("{p}.rate_limit"), u.rate_limit)?;
        users.push(User::new(name, pw.as_bytes(), rules).with_rate(limit));
    }
    if users.is_empty() {
        return Err(err(
            "(document)",
            "defines no credentials: set requirepass, requirepass_env or users",
        ));
    }
    let per_address = rate("per_address_rate_limit", raw.per_address_rate_limit)?;
    Ok(Auth::new(users).with_address_rate(per_address))
}

/// An inline secret or one from the environment (exactly one of them).
fn secret(
    inline_path: &str,
    inline: Option<String>,
    env_path: &str,
    var: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, AuthFileError> {
    match (inline, var) {
        (Some(_), Some(_)) => Err(err(
            inline_path,
            format!("give either {inline_path} or {env_path}, not both"),
        )),
        (Some(pw), None) if pw.is_empty() => Err(err(inline_path, "must not be empty")),
        (Some(pw), None) => Ok(Some(pw)),
        (None, Some(var)) => match env(&var) {
            Some(pw) if !pw.is_empty() => Ok(Some(pw)),
            Some(_) => Err(err(
                env_path,
                format!("environment variable `{var}` is empty"),
            )),
            None => Err(err(
                env_path,
                format!("environment variable `{var}` is not set"),
            )),
        },
        (None, None) => Ok(None),
    }
}

fn check_user_name(path: &str, name: &str) -> Result<(), AuthFileError> {
    if name.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(err(
            path,
            format!("`{name}` contains {c:?}; user names are printable ASCII without spaces"),
        ));
    }
    Ok(())
}

/// A refused command rule (see [`parse_rules`]): names the rule and what
/// is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule `{0}` must start with `+` or `-` (or be allcommands / nocommands)")]
    NoSign(String),
    #[error("unknown category `@{category}` in `{rule}` (categories: all, {known})")]
    UnknownCategory {
        category: String,
        rule: String,
        known: String,
    },
    #[error("unknown subcommand `{name}` in `{rule}`")]
    UnknownSubcommand { name: String, rule: String },
    #[error("unknown command `{name}` in `{rule}`")]
    UnknownCommand { name: String, rule: String },
    #[error("no rules (use `+@all` for every command, `nocommands` for none)")]
    Empty,
}

/// Parses command rules, Redis ACL style, separated by spaces: `+@cat`,
/// `-@cat`, `+cmd`, `-cmd`, `+cmd|sub`, `-cmd|sub`, `allcommands`,
/// `nocommands`.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for word in text.split_whitespace() {
        let rule = match word.to_ascii_lowercase().as_str() {
            "allcommands" => Rule::Categories {
                allow: true,
                categories: Categories::ALL,
            },
            "nocommands" => Rule::Categories {
                allow: false,
                categories: Categories::ALL,
            },
            lower => {
                let (allow, rest) = match lower.split_at_checked(1) {
                    Some(("+", rest)) => (true, rest),
                    Some(("-", rest)) => (false, rest),
                    _ => return Err(RuleError::NoSign(word.to_owned())),
                };
                if let Some(cat) = rest.strip_prefix('@') {
                    let categories = Categories::from_name(cat).ok_or_else(|| {
                        let names: Vec<_> = Categories::NAMES.iter().map(|(_, n)| *n).collect();
                        RuleError::UnknownCategory {
                            category: cat.to_owned(),
                            rule: word.to_owned(),
                            known: names.join(", "),
                        }
                    })?;
                    Rule::Categories { allow, categories }
                } else if rest.contains('|') {
                    let sub = SUBCOMMANDS.iter().find(|s| s.name == rest).ok_or_else(|| {
                        RuleError::UnknownSubcommand {
                            name: rest.to_owned(),
                            rule: word.to_owned(),
                        }
                    })?;
                    Rule::Subcommand {
                        allow,
                        name: sub.name,
                    }
                } else {
                    let spec =
                        lookup(rest.as_bytes()).ok_or_else(|| RuleError::UnknownCommand {
                            name: rest.to_owned(),
                            rule: word.to_owned(),
                        })?;
                    Rule::Command {
                        allow,
                        name: spec.name,
                    }
                }
            }
        };
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(RuleError::Empty);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        match var {
            "PW" => Some("from-env".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn refused(yaml: &str) -> String {
        match from_yaml(yaml, &env) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../config/auth.example.yaml");
        let auth = from_yaml(text, &|_| Some("pw".to_owned())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.len(), 3);
        assert!(auth.authenticate(b"reader", b"change-me-too").is_some());
    }

    #[test]
    fn accepts_requirepass_and_users() {
        let auth = from_yaml(
            "requirepass_env: PW\nusers:\n  - name: ro\n    password: x\n    commands: \"+@read +@connection\"\n  - name: app\n    password_env: PW\n",
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.len(), 3);
        assert!(auth.authenticate(b"default", b"from-env").is_some());
        assert!(auth.authenticate(b"ro", b"x").is_some());
        assert!(auth.authenticate(b"app", b"from-env").is_some());
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            refused("requirepass_env: NOPE\n"),
            "requirepass_env: environment variable `NOPE` is not set"
        );
        assert_eq!(
            refused("requirepass_env: EMPTY\n"),
            "requirepass_env: environment variable `EMPTY` is empty"
        );
        assert_eq!(
            refused("users:\n  - name: a\n    password: x\n    commands: \"+@nope\"\n"),
            "users[0].commands: unknown category `@nope` in `+@nope` (categories: all, keyspace, read, write, set, sortedset, list, hash, string, bitmap, hyperloglog, geo, stream, pubsub, admin, fast, slow, blocking, dangerous, connection, transaction, scripting)"
        );
        assert_eq!(
            refused("users:\n  - name: a\n    password: x\n  - name: a\n    password: y\n"),
            "users[1].name: duplicate user `a`"
        );
        assert_eq!(
            refused("requirepass: x\nusers:\n  - name: default\n    password: y\n"),
            "users[0].name: duplicate user `default` (requirepass already defines it)"
        );
        assert_eq!(
            refused("users:\n  - name: a\n"),
            "users[0]: needs password or password_env"
        );
        assert_eq!(
            refused("users:\n  - name: a\n    password: x\n    password_env: PW\n"),
            "users[0].password: give either users[0].password or users[0].password_env, not both"
        );
        assert_eq!(
            refused("users:\n  - name: a b\n    password: x\n"),
            "users[0].name: `a b` contains ' '; user names are printable ASCII without spaces"
        );
        assert!(refused("{}\n").contains("defines no credentials"));
        assert!(refused("users:\n  - name: a\n    pasword: x\n").starts_with("users[0].pasword"));
        assert!(
            refused("users:\n  - name: a\n    password: x\n    commands: \"get\"\n")
                .contains("must start with `+` or `-`")
        );
        assert!(
            refused("users:\n  - name: a\n    password: x\n    commands: \"+nosuch\"\n")
                .contains("unknown command `nosuch`")
        );
    }
}
