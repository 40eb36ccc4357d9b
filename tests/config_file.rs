//! `shardgate serve --config FILE` with the real binary: the file alone
//! starts a proxy, flags on the command line win over it, and a bad file
//! is refused with the file, the line and the key. Every serve flag is a
//! key of the file.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port, write_map};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

/// Runs `shardgate serve --config FILE ARGS` expecting it to refuse to
/// start; returns its stderr.
fn refused(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn get_ok(port: u16, key: &str) -> redis::RedisResult<Option<String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    redis::cmd("GET").arg(key).query(&mut con)
}

/// Waits until the proxy's metrics on `mport` show the connection
/// `wait_for_port` opened accepted and let go again (no client open).
fn wait_probe_gone(mport: u16) {
    use std::io::{Read, Write};
    let want = [
        "shardgate_client_connections_accepted_total 1\n",
        "shardgate_client_connections 0\n",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut page = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", mport)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut page);
        }
        if want.iter().all(|w| page.contains(w)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {want:?}:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_file_alone_starts_a_proxy_with_its_settings() {
    let shard = RedisServer::start();
    let dir = TempDir::new("config-only");
    write_map(&dir, &[&shard]);
    let (port, mport) = (free_port(), free_port());
    let config = dir.path().join("shardgate.toml");
    // The map path is relative: to the file's directory, not the cwd.
    std::fs::write(
        &config,
        format!(
            "map = \"map.yaml\"\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{mport}\"\nmax_clients = 1\nlog_format = \"json\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let _proxy = KillOnDrop(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir("/")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    wait_for_port(mport);
    wait_probe_gone(mport);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut first = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut first)
        .unwrap();
    // max_clients = 1: a second client is refused.
    // (Read without writing: the refusal is sent at accept.)
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut second, &mut reply);
    assert_eq!(reply, "-ERR max number of clients reached\r\n");
    // log_format = "json".
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(line).is_ok(),
        "{text}"
    );
}

#[test]
fn command_line_flags_win_over_the_file() {
    let shard = RedisServer::start();
    let dir = TempDir::new("config-override");
    let map = write_map(&dir, &[&shard]);
    let (file_port, flag_port, mport) = (free_port(), free_port(), free_port());
    let config = dir.path().join("shardgate.toml");
    std::fs::write(
        &config,
        format!(
            "map = \"/nonexistent/map.yaml\"\nlisten = \"127.0.0.1:{file_port}\"\nmax_clients = 1\n"
        ),
    )
    .unwrap();
    let _proxy = KillOnDrop(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--map")
            .arg(&map)
            .args(["--listen", &format!("127.0.0.1:{flag_port}")])
            .args(["--max-clients", "2"])
            .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(flag_port);
    wait_for_port(mport);
    wait_probe_gone(mport);
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err());
    let client = redis::Client::open(format!("redis://127.0.0.1:{flag_port}/")).unwrap();
    let mut first = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut first)
        .unwrap();
    // --max-clients 2 beats the file's 1: a second client is served.
    assert_eq!(get_ok(flag_port, "k").unwrap().as_deref(), Some("v"));
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_line_and_key() {
    let dir = TempDir::new("config-bad");
    let file = dir.path().join("bad.toml");
    let shown = file.display().to_string();
    std::fs::write(&file, "map = \"m.yaml\"\n# a comment\nmax-clients = 3\n").unwrap();
    let err = refused(&file, &[]);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {shown}:3: unknown key `max-clients` (keys are the flags in snake_case: `max_clients`)"
        )
    );
    std::fs::write(&file, "map = \"m.yaml\"\nlisten_addr = \"x\"\n").unwrap();
    let err = refused(&file, &[]);
    assert!(
        err.starts_with(&format!("error: {shown}:2: unknown key `listen_addr`")),
        "{err}"
    );
    std::fs::write(&file, "map = \"m.yaml\"\nmax_clients = \"lots\"\n").unwrap();
    let err = refused(&file, &[]);
    assert_eq!(
        err.trim_end(),
        format!("error: {shown}:2: max_clients: expected an integer, found string `\"lots\"`")
    );
    std::fs::write(&file, "map = \"m.yaml\"\n\nlisten = 6380\n").unwrap();
    let err = refused(&file, &[]);
    assert_eq!(
        err.trim_end(),
        format!("error: {shown}:3: listen: expected a string, found integer `6380`")
    );
    std::fs::write(&file, "map = \"m.yaml\"\nlisten = \"localhost\"\n").unwrap();
    let err = refused(&file, &[]);
    assert!(
        err.starts_with(&format!(
            "error: {shown}:2: listen: `localhost`: invalid socket address"
        )),
        "{err}"
    );
    std::fs::write(&file, "map = [\n").unwrap();
    let err = refused(&file, &[]);
    assert!(
        err.starts_with(&format!("error: {shown}: TOML parse error at line")),
        "{err}"
    );
    // A rule between flags, broken by the file: clap's message and a note.
    std::fs::write(&file, "map = \"m.yaml\"\nlease_ttl_secs = 9\n").unwrap();
    let err = refused(&file, &[]);
    assert!(
        err.contains("--lease-ttl-secs") && err.contains("--etcd"),
        "{err}"
    );
    assert!(
        err.contains("note: the keys of the --config file count as the flags"),
        "{err}"
    );
    let missing = dir.path().join("missing.toml");
    let err = refused(&missing, &[]);
    assert!(
        err.starts_with(&format!("error: {}: ", missing.display())),
        "{err}"
    );
}

/// Every long flag of `serve --help` is a key of the file (its snake_case
/// name): a table as its value is refused as a bad value, never as an
/// unknown key.
#[test]
fn every_serve_flag_is_a_key_of_the_file() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', ',']).next())
        .filter(|f| !["help", "config"].contains(f))
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    let dir = TempDir::new("config-keys");
    let file = dir.path().join("keys.toml");
    for flag in flags {
        let key = flag.replace('-', "_");
        std::fs::write(&file, format!("{key} = {{ x = 1 }}\n")).unwrap();
        let err = refused(&file, &[]);
        assert!(
            err.starts_with(&format!("error: {}:1: {key}: expected ", file.display())),
            "--{flag}: {err}"
        );
    }
}
