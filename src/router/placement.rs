//! Key -> hash tag -> hash, and the owner of a slot among candidate shards.
//!
//! Everything here is a pure function of its inputs: every proxy that reads
//! the same map computes the same owners. Changing anything in this file
//! moves data, which is why `tests/placement.rs` locks golden values.
//!
//! # Owner: weighted rendezvous hashing
//!
//! For a slot `s` and a candidate shard named `n` with weight `w`:
//!
//! ```text
//! h     = XXH3-64(seed 0) of  n (UTF-8 bytes) || 0x00 || s as u32 little-endian
//! u     = ((h >> 12) + 0.5) / 2^52          (exact in f64, strictly inside (0, 1))
//! score = -w / ln(u)
//! ```
//!
//! The candidate with the highest score owns the slot (ties, which need
//! equal 52-bit hashes, go to the smaller name). This is the "logarithmic
//! method" of weighted rendezvous hashing (Schindelhauer & Schomaker): the
//! probability that a shard wins is exactly `w / sum(w)`. Why rendezvous
//! rather than a ring: it needs no virtual-node count to tune, each slot's
//! owner depends only on the candidates' names and weights, adding a shard
//! can only take slots (its score is new; everyone else's is unchanged) and
//! removing one only frees its own slots. Its balance is that of
//! independent draws: the slot count of a shard with share `p` of `S` slots
//! has relative standard deviation `sqrt((1-p)/(p·S))`, 2.7% for 12 equal
//! shards at 16384 slots (measured in `tests/placement.rs`).
//!
//! The shard's identity in the hash is its *name*, so reordering shards in
//! the file or changing addresses moves nothing.
//!
//! `f64::ln` comes from the platform's libm. It is deterministic on one
//! platform; across platforms it is correctly rounded or within one ulp on
//! every libm we know, and a one-ulp difference can only change an owner
//! when two scores agree to ~1e-16, which the golden tests would reveal.

use twox_hash::XxHash3_64;

use super::ShardId;
use crate::shardmap::Shard;

/// The hash tag of `key` by Redis Cluster's rule, if the key has one: the
/// bytes between the first `{` and the next `}`, when at least one byte
/// lies between them.
pub fn explicit_hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    if close == 0 {
        None
    } else {
        Some(&rest[..close])
    }
}

/// The bytes of `key` that are hashed: its hash tag, or the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    explicit_hash_tag(key).unwrap_or(key)
}

/// XXH3-64 (seed 0) of the hashed bytes of `key`.
pub fn key_hash(key: &[u8]) -> u64 {
    XxHash3_64::oneshot(hash_tag(key))
}

/// The rendezvous score of a shard for a slot (see the module doc).
/// `buf` is scratch space, reused to avoid allocating per slot.
pub fn score(name: &str, weight: u32, slot: u32, buf: &mut Vec<u8>) -> f64 {
    buf.clear();
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&slot.to_le_bytes());
    let h = XxHash3_64::oneshot(buf);
    let u = ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64);
    -f64::from(weight) / u.ln()
}

/// The owner of every slot `0..slots` among `candidates` (indices into
/// `shards`). Returns an empty vector when there are no candidates.
pub fn owners(shards: &[Shard], candidates: &[ShardId], slots: u32) -> Vec<ShardId> {
    let cands: Vec<(ShardId, &Shard)> = candidates
        .iter()
        .filter_map(|&id| shards.get(id.0 as usize).map(|s| (id, s)))
        .collect();
    if cands.is_empty() {
        return Vec::new();
    }
    let mut buf = Vec::with_capacity(80);
    (0..slots)
        .map(|slot| {
            let mut best: Option<(f64, &str, ShardId)> = None;
            for &(id, s) in &cands {
                let sc = score(&s.name, s.weight, slot, &mut buf);
                let better = match best {
                    None => true,
                    Some((bs, bn, _)) => sc > bs || (sc == bs && s.name.as_str() < bn),
                };
                if better {
                    best = Some((sc, s.name.as_str(), id));
                }
            }
            best.map_or(ShardId(0), |(_, _, id)| id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tag_rule() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}{"), b"}{");
        assert_eq!(hash_tag(b""), b"");
        assert_eq!(explicit_hash_tag(b"plain"), None);
    }

    #[test]
    fn u_is_inside_the_open_interval() {
        let lo = 0.5 * (1.0 / (1u64 << 52) as f64);
        let hi = ((u64::MAX >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64);
        assert!(lo > 0.0 && hi < 1.0, "{lo} {hi}");
        assert!((-1.0 / hi.ln()).is_finite());
    }
}
