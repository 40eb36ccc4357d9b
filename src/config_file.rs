//! `shardgate serve --config FILE`: a TOML file holding what the `serve`
//! flags hold, for deployments that keep their settings in a file (a
//! Kubernetes ConfigMap, `/etc/shardgate/shardgate.toml` under systemd).
//!
//! Keys are the flags' names in snake_case (`max_clients = 20000` is
//! `--max-clients 20000`), like the shard map's fields; `log_format` is
//! accepted too. A flag given on the command line wins over the file.
//!
//! The flags stay declared once, in `ServeArgs`: this module reads the
//! file's keys against the clap `Command` (so a new flag is a new key with
//! no code here), checks each value with the flag's own value parser (so a
//! bad value names the file, the line and the key instead of a flag the
//! operator never typed), and appends the values as `--flag=value`
//! arguments for every key the command line did not set. clap then parses
//! one argument list, so the file gets exactly the checks the flags get
//! (`requires`, `conflicts_with`, ...).

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};
use toml::Spanned;

/// Why a config file was refused. Every variant names the file; those about
/// one key name its line too.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Syntax {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}:{line}: unknown key `{key}`{hint}")]
    UnknownKey {
        path: String,
        line: usize,
        key: String,
        hint: String,
    },
    #[error("{path}:{line}: {key}: {reason}")]
    Value {
        path: String,
        line: usize,
        key: String,
        reason: BadValue,
    },
}

/// Why a key's value is not one its flag takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// The TOML type does not fit the flag (see [`values`]).
    #[error("expected {expected}, found {found_type} `{found}`")]
    Type {
        expected: &'static str,
        found_type: &'static str,
        found: String,
    },
    /// The flag's value parser refused it.
    #[error("`{value}`: {cause}")]
    Parser { value: String, cause: String },
    #[error("`{value}`: expected one of {}", valid.join(", "))]
    NotOneOf { value: String, valid: Vec<String> },
    #[error("`{value}` is not a valid value")]
    Invalid { value: String },
}

/// The serve subcommand's name and the flag naming the file.
const SERVE: &str = "serve";
const CONFIG: &str = "config";

/// `args` (the process's arguments) with the values of `serve --config
/// FILE` appended as flags, for each key the command line did not set.
/// Arguments without `serve --config` come back unchanged, and so do
/// arguments clap cannot parse at all (the real parse reports them).
pub fn merge(args: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, ConfigError> {
    // A first, forgiving parse: where the file is, and which flags the
    // command line set (a `--map` missing from the command line but present
    // in the file is not an error yet).
    let Ok(pre) = cli
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args.iter())
    else {
        return Ok(args);
    };
    let Some((SERVE, serve_matches)) = pre.subcommand() else {
        return Ok(args);
    };
    let Some(path) = serve_matches.get_one::<PathBuf>(CONFIG).cloned() else {
        return Ok(args);
    };
    let Some(serve) = cli.find_subcommand(SERVE) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let known: Vec<&Arg> = serve
        .get_arguments()
        .chain(cli.get_arguments().filter(|a| a.is_global_set()))
        .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG)
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .collect();
    let from_command_line = |id: &str| {
        [serve_matches, &pre].iter().any(|m| {
            m.try_get_raw(id).is_ok() && m.value_source(id) == Some(ValueSource::CommandLine)
        })
    };
    let mut merged = args;
    for (key, value, line) in read(&path, &text)? {
        let Some(arg) = known.iter().find(|a| a.get_id() == key.as_str()) else {
            return Err(ConfigError::UnknownKey {
                hint: hint(&key, &known),
                path: path.display().to_string(),
                line,
                key,
            });
        };
        let bad = |reason: BadValue| ConfigError::Value {
            path: path.display().to_string(),
            line,
            key: key.clone(),
            reason,
        };
        // Checked even when the command line overrides it: a broken file
        // is refused before it ever matters.
        let flag_values = values(arg, &value, &path).map_err(bad)?;
        if !matches!(arg.get_action(), ArgAction::SetTrue) {
            for v in &flag_values {
                check(arg, v).map_err(bad)?;
            }
        }
        if from_command_line(arg.get_id().as_str()) {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        for v in flag_values {
            match arg.get_action() {
                // A switch takes no value: `true` is the bare flag.
                ArgAction::SetTrue if v == "true" => merged.push(format!("--{long}").into()),
                ArgAction::SetTrue => {}
                _ => merged.push(format!("--{long}={v}").into()),
            }
        }
    }
    Ok(merged)
}

/// The file's keys with their values and line numbers, in file order.
fn read(path: &Path, text: &str) -> Result<Vec<(String, toml::Value, usize)>, ConfigError> {
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|source| ConfigError::Syntax {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut entries: Vec<_> = table
        .into_iter()
        .map(|(k, v)| {
            let line = line_of(k.span().start);
            (k.into_inner(), v.into_inner(), line)
        })
        .collect();
    entries.sort_by_key(|(_, _, line)| *line);
    Ok(entries)
}

/// A hint for an unknown key: the snake_case spelling of a flag written
/// as on the command line, or where the keys are listed.
fn hint(key: &str, known: &[&Arg]) -> String {
    if key == CONFIG {
        return ": a config file cannot name another".to_owned();
    }
    let snake = key.trim_start_matches('-').replace('-', "_");
    if known.iter().any(|a| a.get_id() == snake.as_str()) {
        return format!(" (keys are the flags in snake_case: `{snake}`)");
    }
    " (keys are the flags of `shardgate serve --help` in snake_case)".to_owned()
}

/// What a key's TOML value means as flag values. Flags that take text
/// (strings, paths, addresses) want a TOML string, numeric flags a number,
/// switches a boolean; a repeatable flag also takes an array of them.
/// Other flag types (choices such as `log_format`) take any scalar and
/// leave the verdict to their value parser. Relative paths are made
/// relative to the file's directory.
fn values(arg: &Arg, value: &toml::Value, file: &Path) -> Result<Vec<String>, BadValue> {
    use toml::Value as V;
    let parser = arg.get_value_parser().type_id();
    let is_one_of = |types: &[TypeId]| types.iter().any(|t| parser == *t);
    let kind = if matches!(arg.get_action(), ArgAction::SetTrue) {
        Kind::Switch
    } else if is_one_of(&INTEGERS) {
        Kind::Integer
    } else if is_one_of(&[TypeId::of::<f64>(), TypeId::of::<f32>()]) {
        Kind::Number
    } else if parser == TypeId::of::<PathBuf>() {
        Kind::Path
    } else if is_one_of(&TEXT) {
        Kind::Text
    } else {
        Kind::Other
    };
    let expected = |expected: &'static str, v: &V| BadValue::Type {
        expected,
        found_type: v.type_str(),
        found: v.to_string(),
    };
    let scalar = |v: &V| -> Result<String, BadValue> {
        match (kind, v) {
            (Kind::Switch, V::Boolean(b)) => Ok(b.to_string()),
            (Kind::Switch, _) => Err(expected("true or false", v)),
            (Kind::Integer, V::Integer(n)) => Ok(n.to_string()),
            (Kind::Integer, _) => Err(expected("an integer", v)),
            (Kind::Number, V::Integer(n)) => Ok(n.to_string()),
            (Kind::Number, V::Float(x)) => Ok(x.to_string()),
            (Kind::Number, _) => Err(expected("a number", v)),
            (Kind::Path, V::String(s)) => Ok(match file.parent() {
                Some(dir) if Path::new(s).is_relative() => dir.join(s).display().to_string(),
                _ => s.clone(),
            }),
            (Kind::Text | Kind::Other, V::String(s)) => Ok(s.clone()),
            (Kind::Other, V::Integer(_) | V::Float(_) | V::Boolean(_)) => Ok(v.to_string()),
            (_, _) => Err(expected("a string", v)),
        }
    };
    match value {
        V::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(scalar).collect()
        }
        _ => scalar(value).map(|v| vec![v]),
    }
}

/// How a flag's value is written in the file (see [`values`]).
#[derive(Clone, Copy)]
enum Kind {
    Switch,
    Integer,
    Number,
    Path,
    Text,
    Other,
}

/// Value types of numeric flags.
const INTEGERS: [TypeId; 12] = [
    TypeId::of::<u8>(),
    TypeId::of::<u16>(),
    TypeId::of::<u32>(),
    TypeId::of::<u64>(),
    TypeId::of::<u128>(),
    TypeId::of::<usize>(),
    TypeId::of::<i8>(),
    TypeId::of::<i16>(),
    TypeId::of::<i32>(),
    TypeId::of::<i64>(),
    TypeId::of::<i128>(),
    TypeId::of::<isize>(),
];

/// Value types of flags that take text.
const TEXT: [TypeId; 6] = [
    TypeId::of::<String>(),
    TypeId::of::<std::ffi::OsString>(),
    TypeId::of::<std::net::SocketAddr>(),
    TypeId::of::<std::net::IpAddr>(),
    TypeId::of::<std::net::Ipv4Addr>(),
    TypeId::of::<std::net::Ipv6Addr>(),
];

/// Runs the flag's own value parser on `value`; the reason when it refuses.
fn check(arg: &Arg, value: &str) -> Result<(), BadValue> {
    let probe = Command::new(CONFIG).no_binary_name(true).arg(
        Arg::new("v")
            .long("v")
            .action(ArgAction::Set)
            .value_parser(arg.get_value_parser().clone()),
    );
    match probe.try_get_matches_from([format!("--v={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let value = value.to_owned();
            if let Some(cause) = std::error::Error::source(&e) {
                return Err(BadValue::Parser {
                    value,
                    cause: cause.to_string(),
                });
            }
            if let Some(clap::error::ContextValue::Strings(valid)) =
                e.get(clap::error::ContextKind::ValidValue)
            {
                return Err(BadValue::NotOneOf {
                    value,
                    valid: valid.clone(),
                });
            }
            Err(BadValue::Invalid { value })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::net::SocketAddr;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
        log_format: Format,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    enum Format {
        Text,
        Json,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, required_unless_present = "etcd")]
            map: Option<PathBuf>,
            #[arg(long, default_value = "127.0.0.1:6380")]
            listen: SocketAddr,
            #[arg(long, default_value_t = 10)]
            max_clients: usize,
            #[arg(long, default_value_t = 1.0)]
            ready_share: f64,
            #[arg(long, value_delimiter = ',')]
            etcd: Vec<String>,
            #[arg(long, default_value = "default", requires = "etcd")]
            cluster: String,
            #[arg(long)]
            dry: bool,
            #[arg(long)]
            ports: Vec<u16>,
        },
    }

    fn run(file: &str, args: &[&str]) -> Result<Cli, String> {
        use clap::CommandFactory;
        let dir = std::env::temp_dir().join(format!("shardgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["shardgate".into(), "serve".into()];
        argv.push("--config".into());
        argv.push(path.clone().into());
        argv.extend(args.iter().map(OsString::from));
        let merged = merge(argv, &Cli::command())
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "FILE"))?;
        Cli::try_parse_from(merged).map_err(|e| e.to_string())
    }

    fn serve(cli: &Cli) -> (&Option<PathBuf>, SocketAddr, usize, f64, &[String], &str) {
        let Sub::Serve {
            map,
            listen,
            max_clients,
            ready_share,
            etcd,
            cluster,
            ..
        } = &cli.command;
        (map, *listen, *max_clients, *ready_share, etcd, cluster)
    }

    #[test]
    fn the_file_alone_sets_flags_and_relative_paths_follow_the_file() {
        let cli = run(
            "map = \"maps/m.yaml\"\nlisten = \"0.0.0.0:7000\"\nmax_clients = 5\nready_share = 0.5\nlog_format = \"json\"\n",
            &[],
        )
        .unwrap();
        let (map, listen, max, share, _, _) = serve(&cli);
        let map = map.as_ref().unwrap();
        assert!(map.is_absolute() && map.ends_with("maps/m.yaml"), "{map:?}");
        assert_eq!(listen.port(), 7000);
        assert_eq!((max, share), (5, 0.5));
        assert_eq!(cli.log_format, Format::Json);
    }

    #[test]
    fn command_line_flags_win_over_the_file() {
        let cli = run(
            "map = \"/m.yaml\"\nmax_clients = 5\netcd = [\"http://a:2379\", \"http://b:2379\"]\ncluster = \"prod\"\nlog_format = \"json\"\n",
            &["--max-clients", "7", "--etcd", "http://c:2379", "--log-format", "text"],
        )
        .unwrap();
        let (map, _, max, _, etcd, cluster) = serve(&cli);
        assert_eq!(map.as_deref(), Some(Path::new("/m.yaml")));
        assert_eq!(max, 7);
        // A repeatable flag on the command line replaces the file's list.
        assert_eq!(etcd, ["http://c:2379"]);
        assert_eq!(cluster, "prod");
        assert_eq!(cli.log_format, Format::Text);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_line_and_key() {
        let err = run("map = \"/m\"\n\nmax-clients = 5\n", &[]).unwrap_err();
        assert_eq!(
            err,
            "FILE:3: unknown key `max-clients` (keys are the flags in snake_case: `max_clients`)"
        );
        let err = run("map = \"/m\"\nbogus = 1\n", &[]).unwrap_err();
        assert!(err.starts_with("FILE:2: unknown key `bogus`"), "{err}");
        let err = run("map = \"/m\"\nmax_clients = \"lots\"\n", &[]).unwrap_err();
        assert_eq!(
            err,
            "FILE:2: max_clients: expected an integer, found string `\"lots\"`"
        );
        let err = run("max_clients = -1\nmap = \"/m\"\n", &[]).unwrap_err();
        assert!(
            err.starts_with("FILE:1: max_clients: `-1`: invalid digit"),
            "{err}"
        );
        let err = run("map = \"/m\"\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert!(
            err.starts_with("FILE:2: listen: `nowhere`: invalid socket address"),
            "{err}"
        );
        let err = run("map = \"/m\"\nlog_format = \"xml\"\n", &[]).unwrap_err();
        assert_eq!(err, "FILE:2: log_format: `xml`: expected one of text, json");
        let err = run("map = \"/m\"\netcd = [1]\n", &[]).unwrap_err();
        assert_eq!(err, "FILE:2: etcd: expected a string, found integer `1`");
        let err = run("map = \"/m\"\n[options]\nx = 1\n", &[]).unwrap_err();
        assert!(err.starts_with("FILE:2: unknown key `options`"), "{err}");
        let err = run("map = \n", &[]).unwrap_err();
        assert!(err.starts_with("FILE: TOML parse error at line 1"), "{err}");
    }

    #[test]
    fn switches_take_booleans_and_repeatable_flags_take_arrays() {
        let on = run("map = \"/m\"\ndry = true\nports = [1, 2]\n", &[]).unwrap();
        let Sub::Serve { dry, ports, .. } = &on.command;
        assert!(*dry);
        assert_eq!(ports, &[1, 2]);
        let off = run("map = \"/m\"\ndry = false\nports = 3\n", &[]).unwrap();
        let Sub::Serve { dry, ports, .. } = &off.command;
        assert!(!*dry);
        assert_eq!(ports, &[3]);
        let err = run("map = \"/m\"\ndry = \"yes\"\n", &[]).unwrap_err();
        assert_eq!(
            err,
            "FILE:2: dry: expected true or false, found string `\"yes\"`"
        );
        let err = run("map = \"/m\"\nports = [1, 70000]\n", &[]).unwrap_err();
        assert!(err.starts_with("FILE:2: ports: `70000`: "), "{err}");
    }

    #[test]
    fn the_file_gets_the_flags_checks() {
        // `--cluster` requires `--etcd`, from the file as on the command line.
        let err = run("map = \"/m\"\ncluster = \"prod\"\n", &[]).unwrap_err();
        assert!(err.contains("--etcd"), "{err}");
        // A bad value is refused even where the command line overrides it.
        let err = run(
            "map = \"/m\"\nmax_clients = \"lots\"\n",
            &["--max-clients", "3"],
        );
        assert!(err.unwrap_err().starts_with("FILE:2: max_clients"));
    }
}
