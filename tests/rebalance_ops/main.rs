//! The operator's side of online rebalancing, against the real binary:
//! plan output and every refusal (also through redis-cli and the CLI), big
//! keys, reads of migrating slots with replicas, metrics, and Ctrl-C; the
//! size of the mover's bursts (`bursts.rs`).

mod bursts;
#[path = "../common/mod.rs"]
mod common;
mod sources;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bursts::{burst_sizes, monitor, mover_commands, scan_and_two_fences};
use common::rebalance::*;
use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port};

/// TTL (seconds) given to keys whose expiry must survive a move.
const TTL: i64 = 1000;

#[test]
fn plan_reports_moves_big_keys_and_refusals() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-plan");
    let s = |i: usize, region: &'static str| (["s0", "s1", "s2", "s3"][i], region, 1, &servers[i]);
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &geo_yaml(&[s(0, "us"), s(1, "us"), s(2, "eu")], "eu", 16384),
    );
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &geo_yaml(
            &[s(0, "us"), s(1, "us"), s(2, "eu"), s(3, "us")],
            "eu",
            16384,
        ),
    );
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let mut proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    for i in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    let moving = (0..300).filter(|i| {
        let k = format!("k{i}");
        owner_name(&t1, &k) != owner_name(&t2, &k)
    });
    let moving = moving.count();
    // A big key (over 16 MiB) on a slot that moves.
    let big = (0..)
        .map(|i| format!("big{i}"))
        .find(|k| owner_name(&t2, k) == "s3")
        .unwrap();
    let big_source = owner_name(&t1, &big);
    let _: () = redis::cmd("SET")
        .arg(&big)
        .arg(vec![b'x'; 17 << 20])
        .query(&mut c)
        .unwrap();

    let mut admin = proxy.admin();
    let m2_text = std::fs::read_to_string(&m2).unwrap();
    let lines = admin.lines(&[b"PLAN", m2_text.as_bytes()]).unwrap();
    assert!(lines[0].starts_with("plan: "), "{lines:?}");
    assert!(lines.contains(&"add shard s3".to_owned()), "{lines:?}");
    let moves: Vec<&String> = lines.iter().filter(|l| l.starts_with("move ")).collect();
    assert_eq!(
        moves.len(),
        3,
        "every shard gives default-placement slots to s3: {lines:?}"
    );
    assert!(moves.iter().all(|l| l.contains(" -> s3: ")), "{lines:?}");
    let slots: usize = moves
        .iter()
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    let exact = t1.moves_to(&t2).unwrap().len();
    assert_eq!(slots, exact, "slot counts per pair add up to the plan");
    let total = lines
        .iter()
        .find(|l| l.starts_with("total: "))
        .expect("total line");
    let est: usize = total
        .split('~')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let actual = moving + 1;
    assert!(
        est * 2 >= actual && est <= actual * 2,
        "estimated {est} keys, {actual} move: {lines:?}"
    );
    let big_line = lines
        .iter()
        .find(|l| l.starts_with("big key on "))
        .expect("big key reported");
    assert!(
        big_line.contains(&big) && big_line.contains(&big_source),
        "{big_line}"
    );
    assert!(big_line.contains("MiB"), "{big_line}");

    // Refusals name the field and the reason; nothing starts.
    let refused =
        |admin: &mut Admin, yaml: &str| admin.lines(&[b"PLAN", yaml.as_bytes()]).unwrap_err();
    let e = refused(&mut admin, &m2_text.replace("slots: 16384", "slots: 1024"));
    assert_eq!(
        e,
        "ERR plan refused: slots: changed from 16384 to 1024; slots never change for a keyspace"
    );
    let e = refused(&mut admin, &m2_text.replace("\"eu:\"", "\"europe:\""));
    assert!(
        e.starts_with("ERR plan refused: placement: the rules' key patterns"),
        "{e}"
    );
    // Dropping the only eu shard would leave the rule's keys nowhere.
    let no_eu = geo_yaml(&[s(0, "us"), s(1, "us"), s(3, "us")], "eu", 16384);
    let e = refused(&mut admin, &no_eu);
    assert!(
        e.starts_with("ERR plan refused: invalid map: placement[0].region"),
        "{e}"
    );
    assert!(e.contains("has no shards"), "{e}");
    let e = refused(
        &mut admin,
        &m2_text.replace(&servers[3].addr(), "127.0.0.1"),
    );
    assert!(
        e.starts_with("ERR plan refused: invalid map: shards[3].primary"),
        "{e}"
    );
    let e = admin.text(&[b"PLAN", b"FILE", b"/nonexistent/map.yaml"]);
    assert!(
        e.starts_with("ERR cannot read /nonexistent/map.yaml"),
        "{e}"
    );
    assert_eq!(admin.progress()["state"], "none");

    // The same from plain redis-cli, with the map on stdin.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &proxy.admin_port.to_string(),
            "-a",
            ADMIN_PW,
            "--no-auth-warning",
            "-x",
            "PLAN",
        ])
        .stdin(std::fs::File::open(&m2).unwrap())
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("add shard s3") && text.contains("-> s3: "),
        "{text}"
    );

    // The CLI: plan, then rebalance following the progress to the end.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(args)
            .args(["--admin", &format!("127.0.0.1:{}", proxy.admin_port)])
            .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PW)
            .output()
            .expect("run shardgate admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&["plan", "--map", m2.to_str().unwrap()]);
    assert!(ok && text.contains("add shard s3"), "{text}");
    let (ok, text) = cli(&["rebalance", "--map", m2.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("OK rebalance started"), "{text}");
    assert!(
        text.contains("rebalance done in") && text.contains("verification ok"),
        "{text}"
    );
    assert!(text.contains(&format!("{exact}/{exact} slots")), "{text}");
    let (ok, text) = cli(&["status"]);
    assert!(
        ok && text.contains("state:done") && text.contains("verify:ok"),
        "{text}"
    );
    let (ok, text) = cli(&["pause"]);
    assert!(!ok && text.contains("no rebalance is running"), "{text}");

    // The big key moved whole, alone, and was reported.
    let p = admin.progress();
    // No client wrote during the move: the keys now in the moved slots are
    // exactly the keys moved.
    let moved: u64 =
        p["keys_moved"].parse::<u64>().unwrap() + p["keys_moved_on_touch"].parse::<u64>().unwrap();
    assert_eq!(moved, actual as u64, "{p:?}");
    assert_eq!(p["verify_keys_in_moved_slots"], actual.to_string(), "{p:?}");
    assert_eq!(p["big_keys"], "1", "{p:?}");
    let len: usize = redis::cmd("STRLEN").arg(&big).query(&mut c).unwrap();
    assert_eq!(len, 17 << 20);
    let on_target: i64 = redis::cmd("EXISTS")
        .arg(&big)
        .query(&mut servers[3].connection())
        .unwrap();
    assert_eq!(on_target, 1);
    assert!(proxy.log_text().contains("moved a big key"));
    for i in 0..300 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, i);
    }
    // Metrics of the move are on the admin port's STATUS; the exporter
    // is covered by tests/binary.rs.
    proxy.kill();

    // Without a state directory a rebalance is refused.
    let (_plain, _port) = {
        let admin_port = free_port();
        let r = common::spawn_proxy_env(
            BIN,
            &m1,
            &[
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--admin-password-env",
                "SG_PW",
            ],
            &[("SG_PW", ADMIN_PW)],
        );
        wait_for_port(admin_port);
        let mut a = Admin::connect(admin_port);
        assert_eq!(a.text(&[b"AUTH", ADMIN_PW.as_bytes()]), "OK");
        let e = a.text(&[b"REBALANCE", m2_text.as_bytes()]);
        assert!(
            e.starts_with("ERR rebalance refused: the proxy runs without --state-dir"),
            "{e}"
        );
        r
    };
}

/// Reads of a migrating slot go to the new owner's primary, never to a
/// replica that may not have the moved key yet; the move is in the metrics.
#[test]
fn migrating_reads_skip_replicas_and_the_move_is_in_the_metrics() {
    let primaries: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let replicas: Vec<RedisServer> = primaries
        .iter()
        .map(RedisServer::start_replica_of)
        .collect();
    let dir = TempDir::new("rebalance-replicas");
    let yaml = |n: usize| {
        let mut y = String::from(
            "slots: 16384\nread_policy: prefer-replica\nregions:\n  - name: us\noptions:\n  health_check_interval_ms: 100\nshards:\n",
        );
        for i in 0..n {
            y.push_str(&format!(
                "  - name: s{i}\n    region: us\n    primary: {}\n    replicas:\n      - addr: {}\n",
                primaries[i].addr(),
                replicas[i].addr()
            ));
        }
        y
    };
    let m1 = write(dir.path(), "m1.yaml", &yaml(2));
    let m2 = write(dir.path(), "m2.yaml", &yaml(3));
    let (proxy, metrics_port) = Proxy::start_with_metrics(dir.path(), &m1);
    std::thread::sleep(Duration::from_millis(500)); // replicas join the read rotation
    let mut c = proxy.client().get_connection().unwrap();
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moving: Vec<String> = (0..5000)
        .map(|i| format!("k{i}"))
        .filter(|k| owner_name(&t1, k) != owner_name(&t2, k))
        .take(300)
        .collect();
    for k in &moving {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("v-{k}"))
            .query(&mut c)
            .unwrap();
    }
    // Keep the mover slow, then paused, so the slots stay Migrating and
    // the reads below are what moves most keys.
    let mut admin = proxy.admin();
    admin.rebalance_paused_migrating(&m2);
    let replica_gets = |r: &RedisServer| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut r.connection())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<u64> = replicas.iter().map(replica_gets).collect();
    let p = admin.progress();
    // Reads of keys not moved yet: answered by the source's primary, and
    // they move nothing (the ASK-like read of `proxy::moves`).
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(
            v.as_deref(),
            Some(format!("v-{k}").as_str()),
            "{k} read during its move"
        );
    }
    assert_eq!(
        admin.progress()["keys_moved_on_touch"],
        "0",
        "reads move no key"
    );
    // Writes move their key first: those of keys the mover has not moved
    // (its first batch may have taken any of them).
    let written: Vec<&String> = moving
        .iter()
        .filter(|k| {
            let source: usize = owner_name(&t1, k)[1..].parse().unwrap();
            redis::cmd("EXISTS")
                .arg(k)
                .query::<i64>(&mut primaries[source].connection())
                .unwrap()
                == 1
        })
        .collect();
    assert!(
        !written.is_empty(),
        "the mover moved every key before its pause"
    );
    for k in &written {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("v-{k}"))
            .query(&mut c)
            .unwrap();
    }
    // Reads of moved keys: answered by the target's primary.
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()));
    }
    let p2 = admin.progress();
    let migrating: usize = p["slots_migrating"].parse().unwrap();
    assert!(migrating > 0);
    // Reads of keys in Migrating slots went to s2's primary, not a replica
    // (keys of slots still pending are read from their source's replicas).
    assert_eq!(
        replica_gets(&replicas[2]),
        before[2],
        "a migrating read went to the new shard's replica"
    );
    let on_touch: u64 = p2["keys_moved_on_touch"].parse().unwrap();
    assert!(on_touch > 0 && on_touch <= written.len() as u64, "{p2:?}");
    let body = ureq_get(metrics_port);
    let metric = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{body}"))
    };
    assert_eq!(
        metric("shardgate_rebalance_keys_moved_total{how=\"touch\"}") as u64,
        on_touch
    );
    let reads = |found: &str| {
        metric(&format!(
            "shardgate_rebalance_migrating_reads_total{{found=\"{found}\"}}"
        )) as u64
    };
    // Each read of a migrating key counted once (keys of the window still
    // pending are read as usual; the mover, throttled then paused, may have
    // moved a batch before the first reads).
    assert!(
        reads("source") + reads("target") + reads("neither") <= 2 * moving.len() as u64,
        "{body}"
    );
    assert!(reads("source") > 0, "{body}");
    assert!(reads("target") >= on_touch, "{body}");
    assert_eq!(metric("shardgate_rebalance_running"), 1.0);
    assert!(metric("shardgate_rebalance_slots{state=\"migrating\"}") > 0.0);
    assert!(metric("shardgate_map_epoch") >= 2.0);
    assert_eq!(
        metric("shardgate_rebalance_throttle_keys_per_second"),
        1.0,
        "started with THROTTLE 1"
    );
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    let body = ureq_get(metrics_port);
    let done = body
        .lines()
        .find(|l| l.starts_with("shardgate_rebalance_slots{state=\"done\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert_eq!(done as u64, p["slots_total"].parse::<u64>().unwrap());
    assert!(body.contains("shardgate_rebalance_verify_ok 1"), "{body}");
    assert!(
        body.contains("\nshardgate_rebalance_throttle_keys_per_second 0\n"),
        "{body}"
    );
    // Once stable, the moved keys are read from the new shard's replica too.
    std::thread::sleep(Duration::from_millis(300));
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()));
    }
    assert!(
        replica_gets(&replicas[2]) > before[2],
        "stable reads use the replica"
    );
}

/// Ctrl-C detaches the CLI's progress bar; the move goes on.
#[test]
fn ctrl_c_detaches_the_progress_bar_and_the_move_goes_on() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-detach");
    let names = ["s0", "s1", "s2"];
    let all: Vec<(&str, &RedisServer)> = names.iter().copied().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let proxy = Proxy::start(dir.path(), &m1);
    fill(&proxy);
    let mut admin = proxy.admin();
    let path = m2.to_str().unwrap().as_bytes();
    assert_eq!(
        admin.text(&[b"REBALANCE", b"FILE", path, b"THROTTLE", b"fast"]),
        "ERR THROTTLE takes keys per second: a whole number (0: no limit)"
    );
    assert_eq!(
        admin.text(&[b"REBALANCE", b"FILE", path, b"THROTTLE"]),
        "ERR wrong number of arguments for 'rebalance': give the map YAML, or FILE <path>"
    );
    assert_eq!(
        admin.progress()["state"],
        "none",
        "a refused start moves nothing"
    );
    // Started throttled, so the move lasts while the bar is followed.
    let started = Command::new(BIN)
        .args(["admin", "rebalance", "--no-wait", "--throttle", "300"])
        .arg("--map")
        .arg(&m2)
        .args(["--admin", &format!("127.0.0.1:{}", proxy.admin_port)])
        .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PW)
        .output()
        .expect("run shardgate admin rebalance");
    let text = String::from_utf8_lossy(&started.stdout);
    assert!(
        started.status.success() && text.starts_with("OK rebalance started"),
        "{text}{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(admin.progress()["throttle_keys_per_sec"], "300");
    // Throttled, the mover takes small bursts on its source: `SCAN ...
    // COUNT 100` and batches of at most 25 keys (the `SADD` of its fence).
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let first = t1.moves_to(&t2).unwrap()[0].from;
    let source = &servers[names
        .iter()
        .position(|n| *n == t1.shard(first).unwrap().name)
        .unwrap()];
    let seen = mover_commands(
        &mut monitor(source.port),
        Duration::from_secs(30),
        scan_and_two_fences,
    );
    let (counts, fences) = burst_sizes(&seen);
    assert!(scan_and_two_fences(&seen), "{seen:?}");
    assert!(counts.iter().all(|&n| n == 100), "{counts:?}");
    assert!(fences.iter().all(|&n| n <= 25), "{fences:?}");
    let cli = Command::new(BIN)
        .args([
            "admin",
            "follow",
            "--admin",
            &format!("127.0.0.1:{}", proxy.admin_port),
        ])
        .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PW)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run shardgate admin follow");
    let mut cli = KillOnDrop(cli);
    // The bar is printed (every 2 s without a terminal) while the move
    // runs: wait for its first line (however loaded the machine), then
    // Ctrl-C.
    let stdout = cli.stdout.take().unwrap();
    let (first_line, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let mut told = false;
        while let Some(Ok(line)) = lines.next() {
            out.push_str(&line);
            out.push('\n');
            if !told && line.contains(" slots ") {
                told = true;
                let _ = first_line.send(());
            }
        }
        out
    });
    seen.recv_timeout(Duration::from_secs(60))
        .expect("the progress bar printed nothing");
    let ok = Command::new("kill")
        .args(["-INT", &cli.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = cli.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains(" slots ") && out.contains("keys/s"), "{out}");
    assert!(
        out.contains("detached: the rebalance goes on in the proxy"),
        "{out}"
    );
    assert_eq!(
        admin.progress()["state"],
        "moving",
        "Ctrl-C did not stop the move"
    );
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
}

/// Big hashes, sets, sorted sets and lists move piece by piece while a
/// client keeps writing to them: nothing is lost, TTLs stay.
#[test]
fn big_collections_move_in_pieces_while_clients_write_to_them() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-big");
    let names = ["s0", "s1", "s2"];
    let all: Vec<(&str, &RedisServer)> = names.iter().copied().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moving = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| owner_name(&t1, k) != "s2" && owner_name(&t2, k) == "s2")
            .unwrap()
    };
    let (hash, set, zset, list) = (
        moving("bighash"),
        moving("bigset"),
        moving("bigzset"),
        moving("biglist"),
    );
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let fill = |script: &str, key: &str| {
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key)
            .query(&mut proxy.client().get_connection().unwrap())
            .unwrap();
    };
    fill(
        "for i=1,300000 do redis.call('HSET', KEYS[1], 'field:'..i, 'value:'..i) end return 1",
        &hash,
    );
    fill(
        "for i=1,350000 do redis.call('SADD', KEYS[1], 'member:'..i) end return 1",
        &set,
    );
    fill(
        "for i=1,200000 do redis.call('ZADD', KEYS[1], i, 'member:'..i) end return 1",
        &zset,
    );
    fill(
        "for i=1,1000 do local t={} for j=1,2000 do t[j]='element:'..((i-1)*2000+j) end redis.call('RPUSH', KEYS[1], unpack(t)) end return 1",
        &list,
    );
    let _: i64 = redis::cmd("EXPIRE")
        .arg(&hash)
        .arg(TTL)
        .query(&mut c)
        .unwrap();
    for k in [&hash, &set, &zset, &list] {
        let n: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .query(&mut c)
            .unwrap();
        assert!(n >= 16 << 20, "{k} is {n} bytes, not a big key");
    }
    // A client writes to the big keys all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, client, hash, list) = (stop.clone(), proxy.client(), hash.clone(), list.clone());
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let (mut incrs, mut pushes) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = redis::cmd("HINCRBY")
                    .arg(&hash)
                    .arg(format!("n:{}", incrs % 50))
                    .arg(1)
                    .query(&mut c)
                    .unwrap();
                incrs += 1;
                let _: i64 = redis::cmd("RPUSH")
                    .arg(&list)
                    .arg(format!("late:{pushes}"))
                    .query(&mut c)
                    .unwrap();
                pushes += 1;
            }
            (incrs, pushes)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (incrs, pushes) = writer.join().unwrap();
    assert!(incrs > 0);
    // Everything is on s2 now, whole, with the writes made during the move.
    let mut s2 = servers[2].connection();
    let sum: i64 = (0..50)
        .map(|i| -> i64 {
            redis::cmd("HGET")
                .arg(&hash)
                .arg(format!("n:{i}"))
                .query::<Option<i64>>(&mut s2)
                .unwrap()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(sum as u64, incrs, "every HINCRBY counted");
    let hlen: u64 = redis::cmd("HLEN").arg(&hash).query(&mut s2).unwrap();
    assert_eq!(hlen, 300_000 + incrs.min(50));
    let v: String = redis::cmd("HGET")
        .arg(&hash)
        .arg("field:123456")
        .query(&mut s2)
        .unwrap();
    assert_eq!(v, "value:123456");
    let ttl: i64 = redis::cmd("TTL").arg(&hash).query(&mut s2).unwrap();
    assert!(ttl > 0 && ttl <= TTL, "TTL {ttl}");
    let n: u64 = redis::cmd("SCARD").arg(&set).query(&mut s2).unwrap();
    assert_eq!(n, 350_000);
    let n: u64 = redis::cmd("ZCARD").arg(&zset).query(&mut s2).unwrap();
    assert_eq!(n, 200_000);
    let score: f64 = redis::cmd("ZSCORE")
        .arg(&zset)
        .arg("member:4321")
        .query(&mut s2)
        .unwrap();
    assert_eq!(score, 4321.0);
    let n: u64 = redis::cmd("LLEN").arg(&list).query(&mut s2).unwrap();
    assert_eq!(n, 2_000_000 + pushes);
    let first: Vec<String> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(1)
        .query(&mut s2)
        .unwrap();
    assert_eq!(first, ["element:1", "element:2"], "list order kept");
    let last: String = redis::cmd("LINDEX")
        .arg(&list)
        .arg(-1)
        .query(&mut s2)
        .unwrap();
    assert_eq!(last, format!("late:{}", pushes - 1), "list order kept");
    for (i, s) in servers.iter().enumerate().take(2) {
        for k in [&hash, &set, &zset, &list] {
            let n: i64 = redis::cmd("EXISTS")
                .arg(k)
                .query(&mut s.connection())
                .unwrap();
            assert_eq!(n, 0, "{k} left on s{i}");
        }
    }
    // Each was copied piece by piece, by the mover or by the first
    // command that touched it; none by one blocking MIGRATE.
    let log = proxy.log_text();
    assert_eq!(log.matches("moved a big key").count(), 4, "{log}");
    assert!(!log.contains("in one MIGRATE"), "{log}");
}
