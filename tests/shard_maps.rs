//! Every map in `shard-maps/` is valid, and bad maps are refused with the
//! exact field path and reason an operator will read.

use std::path::Path;
use std::sync::Arc;

use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::{DefaultPlacement, ReadPolicy, ShardKind, ShardMap};

#[test]
fn every_shipped_map_is_valid() {
    let mut seen = 0;
    let dir = std::fs::read_dir("shard-maps").expect("shard-maps/ exists");
    for entry in dir {
        let path = entry.expect("dir entry").path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let map = ShardMap::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // And it compiles into a routing table whose owners exist.
        let t = RoutingTable::compile(Arc::new(map), Epoch(1));
        assert!(
            t.entries().all(|(_, _, id)| t.shard(id).is_some()),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected example.yaml, demo.yaml and demo-grow.yaml, found {seen} maps"
    );
}

#[test]
fn demo_map_is_what_the_demo_script_starts() {
    let m = ShardMap::load(Path::new("shard-maps/demo.yaml")).expect("demo map");
    assert_eq!(m.read_policy, ReadPolicy::Nearest);
    assert_eq!(m.shards.len(), 5);
    let pg = &m.shards[4];
    assert_eq!(pg.kind, ShardKind::Postgres);
    assert_eq!(
        pg.primary.addr,
        "postgres://postgres@127.0.0.1:7101/postgres"
    );
    assert_eq!(pg.region, "pg");
    let primaries: Vec<&str> = m.shards[..4]
        .iter()
        .map(|s| s.primary.addr.as_str())
        .collect();
    assert_eq!(
        primaries,
        [
            "127.0.0.1:7001",
            "127.0.0.1:7002",
            "127.0.0.1:7003",
            "127.0.0.1:7004"
        ]
    );
    for (i, s) in m.shards[..4].iter().enumerate() {
        assert_eq!(s.kind, ShardKind::Redis);
        let region = if i < 2 { "us" } else { "eu" };
        assert_eq!(s.region, region);
        assert_eq!(s.zone.as_deref(), Some(format!("{region}-a").as_str()));
        assert_eq!(s.replicas.len(), 1);
        assert_eq!(s.replicas[0].addr, format!("127.0.0.1:701{}", i + 1));
        assert_eq!(
            s.replicas[0].zone.as_deref(),
            Some(format!("{region}-b").as_str())
        );
    }
    assert_eq!(m.placement.len(), 3);
    assert!(m.placement[..2].iter().all(|r| r.region == "eu"));
    assert_eq!(m.placement[2].region, "pg");
    assert!(matches!(&m.default_placement, DefaultPlacement::Region(r) if r == "us"));
}

/// The demo's rebalance target adds us-3 and moves slots only from the us
/// shards onto it: the postgres shard and the eu shards keep theirs.
#[test]
fn demo_grow_map_moves_only_us_slots_onto_the_new_shard() {
    use shardgate::rebalance::plan::plan;
    let demo = ShardMap::load(Path::new("shard-maps/demo.yaml")).expect("demo map");
    let grow = ShardMap::load(Path::new("shard-maps/demo-grow.yaml")).expect("grow map");
    let p = plan(&RoutingTable::compile(Arc::new(demo), Epoch(1)), &grow).expect("plan");
    assert_eq!(p.added, ["us-3"]);
    assert!(!p.pairs.is_empty());
    for (from, to, _) in &p.pairs {
        assert!(from.starts_with("us-") && to == "us-3", "{from} -> {to}");
    }
}

#[test]
fn example_map_sets_every_field() {
    let m = ShardMap::load(Path::new("shard-maps/example.yaml")).expect("example map");
    assert_eq!(m.slots, 16384);
    assert_eq!(m.read_policy, ReadPolicy::Nearest);
    assert_eq!(m.regions.len(), 2);
    assert_eq!(m.shards[1].weight, 200);
    assert_eq!(m.shards[0].replicas.len(), 2);
    assert_eq!(m.options.dedicated_pool_size, 64);
    assert!(!m.options.allow_flush);
}

const GOOD: &str = "\
regions:
  - name: us
    zones: [us-a, us-b]
  - name: eu
shards:
  - name: s0
    region: us
    zone: us-a
    primary: 127.0.0.1:7001
    replicas:
      - 127.0.0.1:7011
      - addr: 127.0.0.1:7012
        zone: us-b
  - name: s1
    region: eu
    primary: 127.0.0.1:7002
placement:
  - hash_tag_prefix: \"eu:\"
    region: eu
";

fn refusal(yaml: &str) -> String {
    match ShardMap::from_yaml(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_base_map_is_valid() {
    ShardMap::from_yaml(GOOD).expect("base map");
}

#[test]
fn refusals_name_the_field_and_the_reason() {
    let cases: [(String, &str); 8] = [
        (
            GOOD.replace("127.0.0.1:7012", "127.0.0.1:7001"),
            "shards[0].replicas[1].addr: duplicate address `127.0.0.1:7001` (already used by shards[0].primary)",
        ),
        (
            GOOD.replace("region: eu\n    primary", "region: ap\n    primary"),
            "shards[1].region: unknown region `ap` (regions: us, eu)",
        ),
        (
            GOOD.replace("name: s1", "name: s0"),
            "shards[1].name: duplicate shard name `s0`",
        ),
        (
            GOOD.replace("zone: us-b", "zone: us-c"),
            "shards[0].replicas[1].zone: zone `us-c` is not a zone of region `us` (zones: us-a, us-b)",
        ),
        (
            GOOD.replace(
                "primary: 127.0.0.1:7002",
                "primary: 127.0.0.1:7002\n    weight: 0",
            ),
            "shards[1].weight: must be between 1 and 10000, got 0",
        ),
        (
            GOOD.replace("primary: 127.0.0.1:7002", "primary: 127.0.0.1"),
            "shards[1].primary: `127.0.0.1` is not host:port (no `:port`)",
        ),
        (
            format!("{GOOD}options:\n  command_timeout_ms: 0\n"),
            "options.command_timeout_ms: must be between 1 and 600000, got 0",
        ),
        (
            format!("{GOOD}options:\n  connections_per_endpoint: 65\n"),
            "options.connections_per_endpoint: must be between 1 and 64, got 65",
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(refusal(&yaml), expected);
    }
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let y = GOOD.replace("    zone: us-a\n", "    zone: us-a\n    wieght: 3\n");
    let msg = refusal(&y);
    assert!(
        msg.starts_with("shards[0].wieght: unknown field `wieght`"),
        "{msg}"
    );
    let y = format!("{GOOD}  - key_prefix: x\n    region: eu\n    note: hi\n");
    let msg = refusal(&y);
    assert!(
        msg.starts_with("placement[1].note: unknown field `note`"),
        "{msg}"
    );
}

#[test]
fn region_without_shards_cannot_be_a_target() {
    let y = GOOD.replace("  - name: eu\n", "  - name: eu\n  - name: ap\n")
        + "default_placement:\n  region: ap\n";
    assert_eq!(
        refusal(&y),
        "default_placement.region: region `ap` has no shards, so no key could be placed there"
    );
}

#[test]
fn missing_file_names_the_file() {
    let e = ShardMap::load(Path::new("shard-maps/does-not-exist.yaml")).expect_err("no file");
    assert_eq!(e.path, "shard-maps/does-not-exist.yaml");
    assert!(
        e.reason.starts_with("cannot read the map file"),
        "{}",
        e.reason
    );
}

#[test]
fn cluster_harness_map_is_accepted() {
    // The shape tests/common/cluster.rs writes (options before shards,
    // replicas in long form without region).
    let y = "slots: 16384\nread_policy: nearest\nregions:\n  - name: us\n    zones: [us-a, us-b]\n  - name: eu\n    zones: [eu-a, eu-b]\nplacement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n  - key_prefix: \"eu/\"\n    region: eu\noptions:\n  allow_flush: true\n  health_check_interval_ms: 100\n  command_timeout_ms: 2000\nshards:\n  - name: s0\n    region: us\n    zone: us-a\n    primary: 127.0.0.1:40001\n    replicas:\n      - addr: 127.0.0.1:40011\n        zone: us-b\n  - name: s1\n    region: eu\n    zone: eu-a\n    primary: 127.0.0.1:40002\n";
    let m = ShardMap::from_yaml(y).expect("harness map");
    assert!(m.options.allow_flush);
    assert_eq!(m.options.health_check_interval.as_millis(), 100);
    assert_eq!(m.shards[0].replicas[0].region, "us");
}

#[test]
fn postgres_shards_take_dsns_and_name_bad_ones() {
    let base = "regions:\n  - name: us\nshards:\n  - name: r\n    region: us\n    primary: 127.0.0.1:7001\n  - name: p\n    kind: postgres\n    region: us\n    primary: PRIMARY\n    replicas:\n      - REPLICA\n";
    let map = |primary: &str, replica: &str| {
        ShardMap::from_yaml(&base.replace("PRIMARY", primary).replace("REPLICA", replica))
    };
    let m = map(
        "postgres://app:pw@10.0.0.1:5432/kv",
        "postgresql://app@10.0.0.2/kv?sslmode=disable",
    )
    .expect("valid postgres shard");
    assert_eq!(m.shards[0].kind, ShardKind::Redis);
    assert_eq!(m.shards[1].kind, ShardKind::Postgres);
    assert_eq!(m.shards[1].replicas.len(), 1);

    let e = map("10.0.0.1:5432", "postgres://h/db").unwrap_err();
    assert_eq!(e.path, "shards[1].primary");
    assert!(e.reason.contains("not a PostgreSQL DSN"), "{}", e.reason);
    let e = map("postgres://h/db", "postgres://u:secret@h:99999/db").unwrap_err();
    assert_eq!(e.path, "shards[1].replicas[0]");
    assert!(
        !e.reason.contains("secret"),
        "password in error: {}",
        e.reason
    );
    let e = map("postgres://h/db", "postgres://h/db").unwrap_err();
    assert_eq!(e.path, "shards[1].replicas[0]");
    assert!(e.reason.contains("duplicate address"), "{}", e.reason);
    let e = ShardMap::from_yaml(&base.replace("kind: postgres", "kind: mysql")).unwrap_err();
    assert_eq!(e.path, "shards[1].kind");
    assert!(
        e.reason.contains("expected redis or postgres"),
        "{}",
        e.reason
    );
    // A redis shard still wants host:port.
    let e = ShardMap::from_yaml(&base.replace("127.0.0.1:7001", "postgres://h/db")).unwrap_err();
    assert_eq!(e.path, "shards[0].primary");
}
