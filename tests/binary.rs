//! The `shardgate` binary as an operator runs it: `check-map`, `serve` with
//! the metrics endpoint, and SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port, write_map};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn check_map_accepts_good_maps_and_names_the_field_of_bad_ones() {
    let out = Command::new(BIN)
        .args(["check-map", "shard-maps/example.yaml", "--key", "foo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The golden placement of tests/placement.rs, as an operator sees it.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("foo: slot 15754, shard eu-2 "), "{text}");
    let dir = TempDir::new("badmap");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "regions:\n  - name: us\nshards:\n  - name: a\n    region: us\n    weight: 0\n    primary: 127.0.0.1:1\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-map")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shards[0].weight"), "{err}");
}

#[test]
fn serve_exports_metrics_and_stops_on_sigterm() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let dir = TempDir::new("serve");
    let map = write_map(&dir, &[&a, &b]);
    let (port, mport) = (free_port(), free_port());
    let mut child = KillOnDrop(
        Command::new(BIN)
            .arg("serve")
            .arg("--map")
            .arg(&map)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{mport}"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    wait_for_port(mport);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut con)
            .unwrap();
    }
    let _ = redis::cmd("NOSUCH").query::<redis::Value>(&mut con);
    // A client that hangs up while blocked: its dedicated connection is
    // closed, and counted.
    {
        let mut ghost = TcpStream::connect(("127.0.0.1", port)).unwrap();
        ghost
            .write_all(b"*3\r\n$5\r\nBLPOP\r\n$5\r\nghost\r\n$1\r\n0\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let abandoned = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        http_get(mport, "/metrics").lines().any(|l| {
            l.starts_with("shardgate_dedicated_connections_closed_total{")
                && l.contains(r#"reason="abandoned""#)
        })
    });
    assert!(abandoned, "the ghost's closed connection was not counted");
    // Liveness and readiness beside /metrics; other paths are 404.
    assert!(http_get(mport, "/healthz").starts_with("HTTP/1.1 200"));
    let ready_when = |want: &str| {
        (0..100).any(|_| {
            let r = http_get(mport, "/readyz");
            if r.starts_with(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
            false
        })
    };
    assert!(ready_when("HTTP/1.1 200"), "{}", http_get(mport, "/readyz"));
    assert!(http_get(mport, "/nope").starts_with("HTTP/1.1 404"));
    // A dead shard produces backend errors (about half of these keys are on it).
    b.kill();
    // ... and the proxy is not ready while a primary is down (default
    // --ready-share 1.0).
    assert!(ready_when("HTTP/1.1 503"), "{}", http_get(mport, "/readyz"));
    let failed = (0..20)
        .filter(|i| {
            redis::cmd("GET")
                .arg(format!("k{i}"))
                .query::<i64>(&mut con)
                .is_err()
        })
        .count();
    assert!(failed > 0 && failed < 20, "{failed} of 20 reads failed");
    let body = http_get(mport, "/metrics");
    for (name, _, _) in shardgate::metrics::DESCRIPTIONS {
        // Series of shards that follow Sentinel: this map has none
        // (tests/sentinel.rs checks them on a proxy that has); nor
        // replicas (integration/test_metrics.py checks the lag gauge).
        if shardgate::metrics::SENTINEL_ONLY.contains(name)
            || shardgate::metrics::ON_FIRST_EVENT.contains(name)
            || shardgate::metrics::REPLICA_ONLY.contains(name)
            || shardgate::metrics::NEAR_CACHE_ONLY.contains(name)
            || shardgate::metrics::POSTGRES_ONLY.contains(name)
            || shardgate::metrics::TRACING_ONLY.contains(name)
            || shardgate::metrics::TLS_ONLY.contains(name)
        {
            continue;
        }
        assert!(body.contains(name), "metric {name} missing from:\n{body}");
    }
    // Process metrics and the build info.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(body.contains(name), "metric {name} missing from:\n{body}");
    }
    assert!(
        body.contains(&format!(
            "shardgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(
        body.contains(r#"shardgate_commands_total{command="set",outcome="ok"} 20"#),
        "{body}"
    );
    assert!(
        body.contains(r#"shardgate_commands_total{command="unknown",outcome="error"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("shardgate_command_duration_seconds_bucket{command=\"set\",le=\"0.00005\"}"),
        "explicit buckets, by command: {body}"
    );
    drop(con);
    // SIGTERM: the proxy exits by itself within the grace period.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child on drop, so a failing assertion does not leak the proxy.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_with_an_auth_file_requires_login_and_refuses_a_bad_file() {
    let a = RedisServer::start();
    let dir = TempDir::new("authfile");
    let map = write_map(&dir, &[&a]);
    let bad = dir.path().join("bad-auth.yaml");
    std::fs::write(
        &bad,
        "users:\n  - name: ro\n    password: x\n    commands: \"+@reed\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--map")
        .arg(&map)
        .arg("--auth-file")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("users[0].commands: unknown category `@reed`"),
        "{err}"
    );

    let good = dir.path().join("auth.yaml");
    std::fs::write(
        &good,
        "requirepass_env: SHARDGATE_TEST_PW\nusers:\n  - name: ro\n    password: ro-pw\n    commands: \"+@read +@connection\"\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--map")
        .arg(&map)
        .arg("--auth-file")
        .arg(&good)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SHARDGATE_TEST_PW", "top-secret")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _reap = Reap(child);
    wait_for_port(port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ask = |req: &str, expected: &str| {
        s.write_all(req.as_bytes()).unwrap();
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), expected, "reply to {req:?}");
    };
    ask("GET k\r\n", "-NOAUTH Authentication required.\r\n");
    ask("AUTH top-secret\r\n", "+OK\r\n");
    ask("SET k v\r\n", "+OK\r\n");
    ask("AUTH ro ro-pw\r\n", "+OK\r\n");
    ask("GET k\r\n", "$1\r\nv\r\n");
    ask(
        "SET k w\r\n",
        "-NOPERM this user has no permissions to run the 'set' command\r\n",
    );
}

#[test]
fn sighup_reloads_the_map_and_a_bad_map_is_refused() {
    let a = RedisServer::start();
    let dir = TempDir::new("sighup");
    let map = write_map(&dir, &[&a]);
    let port = free_port();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--map"])
            .arg(&map)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let flush = |con: &mut redis::Connection| redis::cmd("FLUSHALL").query::<()>(con);
    let err = flush(&mut con).unwrap_err().to_string();
    assert!(err.contains("allow_flush"), "{err}");
    let hup = || {
        Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .unwrap()
    };

    // A broken map: refused, FLUSHALL still refused, the proxy still serves.
    let good = std::fs::read_to_string(&map).unwrap();
    std::fs::write(&map, "shards: [").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(flush(&mut con).is_err());
    let _: () = redis::cmd("SET").arg("k").arg(1).query(&mut con).unwrap();

    std::fs::write(&map, format!("{good}options:\n  allow_flush: true\n")).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while flush(&mut con).is_err() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new map"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
    assert!(info.contains("map_epoch:2"), "{info}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `--threads N` starts N serving threads; clients are spread over them and
/// each keeps its own multiplexed connection to every shard.
#[test]
fn serving_threads_each_keep_their_own_backend_connections() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let dir = TempDir::new("threads");
    let map = write_map(&dir, &[&a, &b]);
    let mport = free_port();
    let (child, port) = common::spawn_proxy(
        BIN,
        &map,
        &[
            "--threads",
            "3",
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ],
    );
    wait_for_port(mport);

    #[cfg(target_os = "linux")]
    {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.0.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .filter(|n| n.starts_with("shardgate-w"))
            .collect();
        names.sort();
        assert_eq!(names, ["shardgate-w0", "shardgate-w1", "shardgate-w2"]);
    }

    // Nine clients (three per serving thread, handed out round robin), each
    // writing and reading back keys on both shards, one at a time and
    // pipelined.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conns: Vec<redis::Connection> =
        (0..9).map(|_| client.get_connection().unwrap()).collect();
    for (c, con) in conns.iter_mut().enumerate() {
        for i in 0..40 {
            let key = format!("c{c}:k{i}");
            let _: () = redis::cmd("SET").arg(&key).arg(i).query(con).unwrap();
            let v: i64 = redis::cmd("GET").arg(&key).query(con).unwrap();
            assert_eq!(v, i);
        }
        let mut pipe = redis::pipe();
        for i in 0..40 {
            pipe.cmd("GET").arg(format!("c{c}:k{i}"));
        }
        let got: Vec<i64> = pipe.query(con).unwrap();
        assert_eq!(got, (0..40).collect::<Vec<i64>>());
    }

    // Each shard sees one connection per serving thread carrying the
    // clients' GETs (the health checker's connection runs other commands).
    for shard in [&a, &b] {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut shard.connection())
            .unwrap();
        let carrying = list
            .lines()
            .filter(|l| l.contains(" cmd=get ") || l.contains(" cmd=set "))
            .count();
        assert_eq!(carrying, 3, "{list}");
    }
    // The gauge shows the clients spread evenly over the threads.
    let page = http_get(mport, "/metrics");
    for t in 0..3 {
        let line = format!("shardgate_serving_thread_clients{{thread=\"{t}\"}} 3");
        assert!(page.contains(&line), "no `{line}` in:\n{page}");
    }
    // The per-request metrics are kept per thread and added up on scrape.
    for line in [
        r#"shardgate_commands_total{command="set",outcome="ok"} 360"#,
        r#"shardgate_commands_total{command="get",outcome="ok"} 720"#,
    ] {
        assert!(page.contains(line), "no `{line}` in:\n{page}");
    }
    let backend: u64 = page
        .lines()
        .filter(|l| l.starts_with("shardgate_backend_request_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(backend >= 1080, "{backend} backend round trips:\n{page}");
    drop(conns);
    drop(child);
}

#[test]
fn logs_as_json_when_asked() {
    let out = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "serve",
            "--map",
            "/nonexistent/map.yaml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "ERROR", "{line}");
    assert!(
        v["fields"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot read the map file"),
        "{line}"
    );
}
