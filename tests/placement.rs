//! Golden and property tests that lock placement. Changing the hash, the
//! hash-tag rule or the owner function moves data between shards, so it
//! must never happen by accident: the golden values below fail first.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use shardgate::router::{
    Epoch, Placement, RoutingTable, ShardId, Slot, explicit_hash_tag, hash_tag, key_hash,
};
use shardgate::shardmap::ShardMap;

fn example() -> RoutingTable {
    let map = ShardMap::load(Path::new("shard-maps/example.yaml")).expect("example map");
    RoutingTable::compile(Arc::new(map), Epoch(1))
}

/// A map of `shards` = (name, region, weight) in regions us/eu, with the
/// `eu:` / `eu/` residency rules when there are eu shards.
fn map_yaml(slots: u32, shards: &[(String, &str, u32)]) -> String {
    let mut y = format!("slots: {slots}\nregions:\n  - name: us\n  - name: eu\n");
    if shards.iter().any(|s| s.1 == "eu") {
        y.push_str("placement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n  - key_prefix: \"eu/\"\n    region: eu\n");
    }
    y.push_str("shards:\n");
    for (i, (name, region, weight)) in shards.iter().enumerate() {
        y.push_str(&format!(
            "  - name: {name}\n    region: {region}\n    weight: {weight}\n    primary: 10.0.{}.{}:6379\n",
            i / 200,
            i % 200 + 1
        ));
    }
    y
}

fn compile(slots: u32, shards: &[(String, &str, u32)]) -> RoutingTable {
    let map = ShardMap::from_yaml(&map_yaml(slots, shards)).expect("generated map is valid");
    RoutingTable::compile(Arc::new(map), Epoch(1))
}

/// Owner *names* of placement 0, by slot (ids change when shards reorder; names do not).
fn owner_names(t: &RoutingTable, placement: usize) -> Vec<String> {
    t.owners(placement)
        .iter()
        .map(|&id| t.shard(id).expect("owner exists").name.clone())
        .collect()
}

fn all_us(weights: &[u32]) -> Vec<(String, &'static str, u32)> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (format!("shard-{i}"), "us", w))
        .collect()
}

/// Relative binomial standard deviation of a shard's slot count.
fn rel_sigma(share: f64, slots: u32) -> f64 {
    ((1.0 - share) / (share * f64::from(slots))).sqrt()
}

// ---------------------------------------------------------------- golden

#[test]
fn golden_key_hash_and_slot() {
    // XXH3-64 seed 0; "" is the published XXH3 test vector.
    let golden: [(&str, u64, u32); 6] = [
        ("", 0x2d06_8005_38d3_94c2, 5314),
        ("foo", 0xab6e_5f64_077e_7d8a, 15754),
        ("bar", 0xd463_c860_a032_d362, 4962),
        ("{user1000}.following", 0xb03c_8988_cdc1_c874, 2164),
        ("{eu:42}.cart", 0x9abb_64c5_f62e_21f9, 8697),
        ("eu/sessions/9", 0x2013_b038_69a2_3347, 13127),
    ];
    let t = example();
    for (key, hash, slot) in golden {
        assert_eq!(key_hash(key.as_bytes()), hash, "hash of {key:?}");
        assert_eq!(t.slot_of(key.as_bytes()), Slot(slot), "slot of {key:?}");
    }
    // Keys sharing a tag share the slot.
    assert_eq!(t.slot_of(b"{user1000}.followers"), Slot(2164));
}

#[test]
fn golden_owners_of_example_map() {
    let t = example();
    assert_eq!(
        t.placements(),
        &[Placement::All, Placement::Region("eu".into())]
    );
    // example.yaml: 0 = us-1 (w100), 1 = us-2 (w200), 2 = eu-1, 3 = eu-2.
    let keys: [(&str, u16); 7] = [
        ("", 0),
        ("foo", 3),
        ("bar", 1),
        ("{user1000}.following", 0),
        ("hello world", 2),
        ("{eu:42}.cart", 3),
        ("eu/sessions/9", 3),
    ];
    for (key, shard) in keys {
        assert_eq!(t.shard_for_key(key.as_bytes()), ShardId(shard), "{key:?}");
    }
    let first16 = |p: usize| -> Vec<u16> { t.owners(p)[..16].iter().map(|s| s.0).collect() };
    assert_eq!(first16(0), [2, 0, 0, 3, 1, 1, 0, 1, 1, 1, 2, 2, 2, 1, 3, 2]);
    assert_eq!(first16(1), [2, 3, 2, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 3, 3, 2]);
    let counts = |p: usize| {
        let mut c = [0usize; 4];
        for id in t.owners(p) {
            c[id.0 as usize] += 1;
        }
        c
    };
    assert_eq!(counts(0), [3265, 6476, 3316, 3327]);
    assert_eq!(counts(1), [0, 0, 8271, 8113]);
    // The whole table, as one fingerprint.
    let bytes: Vec<u8> = t
        .entries()
        .flat_map(|(_, _, id)| u32::from(id.0).to_le_bytes())
        .collect();
    assert_eq!(
        twox_hash::XxHash3_64::oneshot(&bytes),
        GOLDEN_TABLE_FINGERPRINT
    );
}

/// XXH3-64 of every owner id (u32 LE) of example.yaml, placement by placement.
const GOLDEN_TABLE_FINGERPRINT: u64 = 2_931_967_914_045_025_558;

// ---------------------------------------------------------------- hash tags

#[test]
fn hash_tag_follows_redis_cluster() {
    let cases: [(&[u8], &[u8]); 12] = [
        (b"{user1000}.following", b"user1000"),
        (b"{user1000}.followers", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),
        (b"foo{{bar}}zap", b"{bar"),
        (b"foo{bar}{zap}", b"bar"),
        (b"a{b}c{d}", b"b"),
        (b"{}", b"{}"),
        (b"{", b"{"),
        (b"}", b"}"),
        (b"}{x}", b"x"),
        (b"{a", b"{a"),
        (b"", b""),
    ];
    for (key, tag) in cases {
        assert_eq!(hash_tag(key), tag, "key {:?}", String::from_utf8_lossy(key));
    }
    assert_eq!(explicit_hash_tag(b"{}x"), None);
    assert_eq!(explicit_hash_tag(b"x{y}"), Some(&b"y"[..]));
    // Binary keys are fine.
    assert_eq!(hash_tag(&[0xff, b'{', 0x00, b'}']), &[0x00]);
}

#[test]
fn hash_tag_prefix_needs_a_tag() {
    let t = example();
    assert_eq!(t.placement_of(b"{eu:1}"), 1);
    assert_eq!(
        t.placement_of(b"eu:1"),
        0,
        "no tag, so the tag rule does not apply"
    );
    assert_eq!(t.placement_of(b"{}eu:1"), 0, "empty tag is no tag");
    assert_eq!(t.placement_of(b"eu/x"), 1);
    assert_eq!(t.placement_of(b"x/eu/"), 0);
}

// ---------------------------------------------------------------- balance

#[test]
fn equal_weights_balance_measured() {
    // 12 equal shards at 16384 slots: expected 1365.3 each, sigma 2.6%.
    let t = compile(16384, &all_us(&[100; 12]));
    let mut counts: HashMap<ShardId, usize> = HashMap::new();
    for id in t.owners(0) {
        *counts.entry(*id).or_default() += 1;
    }
    let mean = 16384.0 / 12.0;
    let devs: Vec<f64> = counts
        .values()
        .map(|&c| (c as f64 / mean - 1.0).abs())
        .collect();
    let max = devs.iter().cloned().fold(0.0, f64::max);
    let avg = devs.iter().sum::<f64>() / devs.len() as f64;
    assert_eq!(counts.len(), 12);
    eprintln!("12 equal shards: max deviation {max:.4}, mean deviation {avg:.4}");
    assert!(max < 0.08, "max deviation {max:.4}");
    assert!(avg < 0.04, "mean deviation {avg:.4}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Slots per unit of weight stay within a few percent of the mean: the
    /// bound is 3% or 4.5 binomial sigmas, whichever is larger (a shard with
    /// 3% of the weight owns ~490 slots; its count cannot be tighter than
    /// sampling noise allows).
    #[test]
    fn load_per_unit_weight_is_balanced(weights in prop::collection::vec(50u32..=200, 2..12)) {
        let t = compile(16384, &all_us(&weights));
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0usize; weights.len()];
        for id in t.owners(0) {
            counts[id.0 as usize] += 1;
        }
        for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
            let share = f64::from(w) / f64::from(total);
            let expected = share * 16384.0;
            let dev = (c as f64 / expected - 1.0).abs();
            let bound = (4.5 * rel_sigma(share, 16384)).max(0.03);
            prop_assert!(dev <= bound, "shard {i} w={w}: {c} slots, expected {expected:.0} (dev {dev:.3} > {bound:.3})");
        }
    }

    /// Adding one shard to N moves about its weight share of the slots,
    /// and every moved slot moves onto the new shard.
    #[test]
    fn adding_a_shard_moves_only_onto_it(
        weights in prop::collection::vec(10u32..=1000, 2..12),
        new_weight in 10u32..=1000,
    ) {
        let slots = 16384;
        let before = all_us(&weights);
        let mut after = before.clone();
        after.push(("newcomer".to_owned(), "us", new_weight));
        let (t0, t1) = (compile(slots, &before), compile(slots, &after));
        let (a, b) = (owner_names(&t0, 0), owner_names(&t1, 0));
        let mut moved = 0usize;
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                prop_assert_eq!(y.as_str(), "newcomer");
                moved += 1;
            }
        }
        let total: u32 = weights.iter().sum::<u32>() + new_weight;
        let share = f64::from(new_weight) / f64::from(total);
        let expected = share * f64::from(slots);
        let sigma = (expected * (1.0 - share)).sqrt();
        prop_assert!((moved as f64 - expected).abs() <= 5.0 * sigma + 1.0,
            "moved {moved}, expected {expected:.0} ± {sigma:.0}");
        // The diff the rebalancer sees is exactly those slots.
        let diff = t0.moves_to(&t1).expect("same slot count");
        prop_assert_eq!(diff.len(), moved);
        prop_assert!(diff.iter().all(|m| t1.shard(m.to).map(|s| s.name.as_str()) == Some("newcomer")));
    }

    /// Removing a shard moves only the slots it owned.
    #[test]
    fn removing_a_shard_moves_only_its_slots(
        weights in prop::collection::vec(10u32..=1000, 3..12),
        victim in any::<prop::sample::Index>(),
    ) {
        let before = all_us(&weights);
        let v = victim.index(before.len());
        let mut after = before.clone();
        let gone = after.remove(v).0;
        let (a, b) = (owner_names(&compile(8192, &before), 0), owner_names(&compile(8192, &after), 0));
        for (x, y) in a.iter().zip(&b) {
            if *x == gone {
                prop_assert_ne!(y, &gone);
            } else {
                prop_assert_eq!(x, y);
            }
        }
    }

    /// The table is a pure function of the map: compiling twice gives the
    /// same table, and shard order in the file does not matter.
    #[test]
    fn placement_is_deterministic_and_order_free(
        weights in prop::collection::vec(1u32..=10000, 2..10),
        seed in any::<u64>(),
    ) {
        let shards = all_us(&weights);
        let t1 = compile(4096, &shards);
        let t2 = compile(4096, &shards);
        prop_assert_eq!(t1.owners(0), t2.owners(0));
        // A deterministic shuffle from the seed.
        let mut shuffled = shards.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let t3 = compile(4096, &shuffled);
        prop_assert_eq!(owner_names(&t1, 0), owner_names(&t3, 0));
    }

    /// Keys matching an `eu` rule always land on an eu shard, whatever else
    /// is in the key; other keys may land anywhere.
    #[test]
    fn residency_rules_hold(tag in "[a-z0-9:{}]{0,12}", rest in prop::collection::vec(any::<u8>(), 0..24)) {
        let t = example();
        let mut by_tag = b"{eu:".to_vec();
        by_tag.extend(tag.bytes().filter(|&b| b != b'}'));
        by_tag.push(b'}');
        by_tag.extend(&rest);
        let mut by_prefix = b"eu/".to_vec();
        by_prefix.extend(&rest);
        for key in [by_tag, by_prefix] {
            let id = t.shard_for_key(&key);
            prop_assert_eq!(t.shard(id).map(|s| s.region.as_str()), Some("eu"), "key {:?}", key);
        }
    }

    /// The hot path agrees with slot_of + placement_of + owner, and never panics.
    #[test]
    fn hot_path_is_consistent(key in prop::collection::vec(any::<u8>(), 0..40)) {
        let t = example();
        let slot = t.slot_of(&key);
        prop_assert!(slot.0 < 16384);
        prop_assert_eq!(Some(t.shard_for_key(&key)), t.owner(t.placement_of(&key), slot));
    }
}

#[test]
fn residency_with_many_shards() {
    // 6 us + 3 eu shards: no eu-rule key ever reaches a us shard.
    let mut shards = all_us(&[100; 6]);
    for i in 0..3 {
        shards.push((format!("eu-{i}"), "eu", 100));
    }
    let t = compile(16384, &shards);
    for i in 0..20_000 {
        for key in [format!("{{eu:{i}}}.x"), format!("eu/{i}")] {
            let id = t.shard_for_key(key.as_bytes());
            assert_eq!(t.shard(id).map(|s| s.region.as_str()), Some("eu"), "{key}");
        }
    }
    // The eu placement uses all three eu shards.
    let mut used: Vec<ShardId> = t.owners(1).to_vec();
    used.sort();
    used.dedup();
    assert_eq!(used, [ShardId(6), ShardId(7), ShardId(8)]);
}
