//! Postgres shards in operation: reads sent to the replica, schema
//! migrations applied once, bad DSNs and unreachable databases at startup,
//! a database that goes away and comes back, mixed maps, and `admin migrate`.

use super::*;

#[test]
fn reads_go_to_the_postgres_replica() {
    let c = Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        pg_replicas: true,
        read_policy: "prefer-replica",
        ..Spec::default()
    });
    let replica = &c.pg_replicas[0];
    // Wait until the health checker lets the replica serve reads.
    let mut con = c.conn();
    for i in 0..20 {
        let _: () = con.set(format!("r{i}"), i).unwrap();
    }
    // Let the standby replay the writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.query("SELECT count(*) FROM kv") != "20" {
        assert!(Instant::now() < deadline, "standby never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let scans = |s: &PgServer| -> i64 {
        s.query("SELECT coalesce(sum(idx_scan + seq_scan), 0) FROM pg_stat_user_tables WHERE relname = 'kv'")
            .parse()
            .unwrap_or(-1)
    };
    let before = scans(replica);
    for _ in 0..5 {
        for i in 0..20 {
            let v: i64 = con.get(format!("r{i}")).unwrap();
            assert_eq!(v, i);
        }
    }
    // Backends flush their statistics about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = scans(replica);
    while after - before < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = scans(replica);
    }
    assert!(
        after - before >= 100,
        "reads ran on the standby: kv scans went {before} -> {after}"
    );
    // Writes still go to the primary (a standby would refuse them).
    let _: () = con.set("w", 1).unwrap();
}

#[test]
fn migrations_apply_once_and_restarts_are_idempotent() {
    let c = pg_only();
    let versions = c.pg[0].query("SELECT count(*) FROM _sqlx_migrations");
    let shipped = shardgate::backend::pg::MIGRATOR.iter().count().to_string();
    assert_eq!(versions, shipped);
    let mut con = c.conn();
    let _: () = con.set("survives", "yes").unwrap();
    // A second proxy on the same map: migrations already applied, data kept.
    let rt = common::ProxyRuntime::new(2);
    let running = rt
        .block_on(shardgate::app::start(shardgate::app::ServeConfig {
            map_path: c.map_path.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            client: Default::default(),
            tls: None,
            admin: None,
            state_dir: None,
            rebalance_sources: 4,
            fleet: None,
            readiness: None,
            ready_share: 1.0,
        }))
        .expect("second proxy starts");
    assert_eq!(
        c.pg[0].query("SELECT count(*) FROM _sqlx_migrations"),
        shipped
    );
    let client = redis::Client::open(format!("redis://{}/", running.addr)).unwrap();
    let mut con2 = client.get_connection().unwrap();
    let v: String = con2.get("survives").unwrap();
    assert_eq!(v, "yes");
    rt.block_on(running.shutdown());
}

fn map_with_primary(dsn: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let yaml = format!(
        "regions:\n  - name: us\noptions:\n  connect_timeout_ms: 500\n  command_timeout_ms: 2000\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {dsn}\n"
    );
    let path = std::env::temp_dir().join(format!(
        "shardgate-pgmap-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start_error(dsn: &str) -> String {
    let path = map_with_primary(dsn);
    let rt = common::ProxyRuntime::new(2);
    let started = Instant::now();
    let result = rt.block_on(shardgate::app::start(shardgate::app::ServeConfig {
        map_path: path.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        client: Default::default(),
        tls: None,
        admin: None,
        state_dir: None,
        rebalance_sources: 4,
        fleet: None,
        readiness: None,
        ready_share: 1.0,
    }));
    let _ = std::fs::remove_file(&path);
    assert!(started.elapsed() < Duration::from_secs(20), "startup hung");
    match result {
        Ok(_) => panic!("proxy started with {dsn}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_dsn_and_unreachable_database_fail_at_startup() {
    let e = start_error("mysql://127.0.0.1/db");
    assert!(e.contains("shards[0].primary"), "{e}");
    assert!(e.contains("not a PostgreSQL DSN"), "{e}");
    let e = start_error("postgres://u:secret@127.0.0.1:notaport/db");
    assert!(e.contains("shards[0].primary"), "{e}");
    assert!(!e.contains("secret"), "password leaked: {e}");
    let port = common::free_port();
    let e = start_error(&format!("postgres://postgres:pw@127.0.0.1:{port}/postgres"));
    assert!(e.contains("shard pgs"), "{e}");
    assert!(
        e.contains(&format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        "{e}"
    );
    assert!(!e.contains(":pw@"), "password leaked: {e}");
}

#[test]
fn a_database_that_goes_away_gets_resp_errors_then_recovers() {
    let mut c = pg_only();
    let mut p = Raw::connect(c.proxy_port);
    assert_eq!(p.call(&["SET", "k", "v"]), b"+OK\r\n");
    c.pg[0].stop();
    let started = Instant::now();
    let r = String::from_utf8_lossy(&p.call(&["GET", "k"])).into_owned();
    // The connection the SET used (not pinged again within a second)
    // reports the shutdown: lost; a new one cannot be opened: unavailable.
    assert!(
        r.starts_with("-ERR backend postgres://postgres@127.0.0.1:") && r.contains("unavailable")
            || r.starts_with("-ERR connection to backend postgres://postgres@127.0.0.1:")
                && r.contains("lost"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    c.pg[0].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = p.call(&["GET", "k"]);
        if r == b"$1\r\nv\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&r));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mixed_map_merges_across_kinds() {
    let c = Cluster::start(Spec {
        shards: 2,
        pg_shards: 1,
        ..Spec::default()
    });
    let mut con = c.conn();
    let keys: Vec<String> = (0..300).map(|i| format!("mk{i}")).collect();
    let kinds: HashSet<usize> = keys.iter().map(|k| c.shard_of(k)).collect();
    assert_eq!(kinds.len(), 3, "keys cover all three shards");
    let pairs: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
    let _: () = con.mset(&pairs).unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()));
    }
    let on_pg = c.pg[0].query("SELECT count(*) FROM kv");
    let expect_pg = keys.iter().filter(|k| c.shard_of(k) == 2).count();
    assert_eq!(on_pg, expect_pg.to_string());
    // SCAN to cursor 0 returns every key once.
    let mut seen = HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(25)
            .query(&mut con)
            .unwrap();
        for k in batch {
            assert!(seen.insert(k.clone()), "{k} returned twice");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, keys.iter().cloned().collect::<HashSet<_>>());
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 300);
    let mut found: Vec<String> = con.keys("mk1*").unwrap();
    found.sort();
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("mk1"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(found, want);
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut con).unwrap();
    assert!(info.contains("db0:keys=300,"), "{info}");
    let deleted: i64 = con.del(&keys[..100]).unwrap();
    assert_eq!(deleted, 100);
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 200);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn admin_migrate_applies_once_and_reports_unreachable_primaries() {
    let pg = PgServer::start();
    let shipped = shardgate::backend::pg::MIGRATOR.iter().count();
    let path = map_with_primary(&pg.dsn());
    let run = |map: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["admin", "migrate", "--map"])
            .arg(map)
            .output()
            .expect("run shardgate admin migrate")
    };
    let first = run(&path);
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("pgs ")
            && out.contains(&format!(
                "applied {shipped} migration(s) ({shipped} in all)"
            )),
        "{out}"
    );
    let second = run(&path);
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(
        out.contains(&format!("up to date ({shipped} migrations)")),
        "{out}"
    );
    assert_eq!(
        pg.query("SELECT count(*) FROM _sqlx_migrations"),
        shipped.to_string()
    );
    let _ = std::fs::remove_file(&path);

    // An unreachable primary fails the command, named, without its password.
    let port = common::free_port();
    let bad = map_with_primary(&format!(
        "postgres://postgres:sekrit@127.0.0.1:{port}/postgres"
    ));
    let failed = run(&bad);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        err.contains("pgs ") && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains("sekrit"), "password leaked: {err}");
    let _ = std::fs::remove_file(&bad);
}
