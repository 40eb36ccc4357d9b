//! Reading the YAML files shardgate takes (shard maps, the auth file): the
//! parser's size budget, and YAML text errors -> [`MapError`]: the parser's
//! message, and the field path (`shards[2].replicas[0].addr`) rebuilt from
//! the error's line, so a syntax or type error reads like a validation error.

use serde::de::DeserializeOwned;

use super::MapError;

/// YAML nodes (mappings, sequences, scalars) one document may hold.
/// serde-saphyr's default, 250,000, stops a map of about 20,000 shards with
/// a replica each, well below the 65,535 shards a map may list; a shard with
/// a zone, a weight and 8 zoned replicas is about 60 nodes, so 65,535 of them
/// fit with room to spare. The budget still bounds what a runaway or hostile
/// document (`admin REBALANCE` takes YAML over the network) can make the
/// parser do.
pub const MAX_NODES: usize = 8_000_000;

/// Parses YAML `text` into `T` within the budget above; any error becomes a
/// [`MapError`] naming the field.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, MapError> {
    from_str_within(text, MAX_NODES)
}

/// [`from_str`] with `max_nodes` as the node budget; parser events (node
/// starts and ends, aliases) are held to 4 per node, the ratio of
/// serde-saphyr's defaults.
fn from_str_within<T: DeserializeOwned>(text: &str, max_nodes: usize) -> Result<T, MapError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: max_nodes,
            max_events: 4 * max_nodes,
        },
    };
    serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| from_yaml_error(text, &e, max_nodes))
}

/// Turns a serde-saphyr error into a [`MapError`]: the reason is the parser's
/// message without its position, the path is reconstructed from the
/// position by [`path_at`] (falling back to `line L column C`).
/// A breach of the parser's budget (`max_nodes`) is reported for the whole
/// document: where the parser gave up says nothing about what to fix.
fn from_yaml_error(text: &str, e: &serde_saphyr::Error, max_nodes: usize) -> MapError {
    let inner = e.without_snippet();
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return MapError {
            path: "(document)".to_owned(),
            reason: format!(
                "the document is larger than shardgate reads: {breach:?} \
                 (at most {max_nodes} YAML nodes)"
            ),
        };
    }
    let mut reason = inner.to_string();
    // The plain rendering appends the position; the path replaces it.
    if let Some(i) = reason.find(" at line ") {
        reason.truncate(i);
    }
    let path = match inner.location() {
        Some(loc) if loc.line() > 0 => {
            let p = path_at(text, loc.line() as usize, loc.column() as usize);
            if p.is_empty() {
                format!("line {} column {}", loc.line(), loc.column())
            } else {
                p
            }
        }
        _ => "(document)".to_owned(),
    };
    MapError { path, reason }
}

/// One level of a reconstructed YAML path.
enum Seg {
    Key(String),
    Item(usize),
}

/// Best-effort field path (`shards[2].replicas[0].addr`) of the node at
/// 1-based `line` of a block-style YAML document, found from indentation.
/// Flow-style collections (`[a, b]`) resolve to the key holding them.
pub fn path_at(text: &str, line: usize, _column: usize) -> String {
    let mut stack: Vec<(usize, Seg)> = Vec::new();
    for raw_line in text.lines().take(line) {
        let indent = raw_line.len() - raw_line.trim_start_matches(' ').len();
        let mut col = indent;
        let mut rest = raw_line[indent..].trim_end();
        if rest.is_empty() || rest.starts_with('#') || rest.starts_with("---") {
            continue;
        }
        loop {
            if rest == "-" || rest.starts_with("- ") {
                while stack.last().is_some_and(|(i, _)| *i > col) {
                    stack.pop();
                }
                let mut index = 0;
                if let Some((i, Seg::Item(n))) = stack.last()
                    && *i == col
                {
                    index = n + 1;
                    stack.pop();
                }
                stack.push((col, Seg::Item(index)));
                let after = rest[1..].trim_start_matches(' ');
                col += rest.len() - after.len();
                rest = after;
                if rest.is_empty() {
                    break;
                }
                continue;
            }
            if let Some(key) = key_of(rest) {
                while stack.last().is_some_and(|(i, _)| *i >= col) {
                    stack.pop();
                }
                stack.push((col, Seg::Key(key)));
            }
            break;
        }
    }
    let mut out = String::new();
    for (_, seg) in &stack {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Item(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

/// The key of a `key: value` / `key:` line, unquoted.
fn key_of(s: &str) -> Option<String> {
    if s.starts_with(['{', '[', '#', '&', '*', '!', '|', '>']) {
        return None;
    }
    let end = s.find(": ").or_else(|| s.strip_suffix(':').map(str::len))?;
    let key = s[..end].trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    Some(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shardmap::ShardMap;
    use crate::shardmap::validate::MAX_SHARDS;

    #[test]
    fn path_reconstruction() {
        let t = "a:\n  b:\n    - x: 1\n    - y: 2\n      z:\n        - q\n        - r: 1\nc: 3\n";
        assert_eq!(path_at(t, 4, 0), "a.b[1].y");
        assert_eq!(path_at(t, 5, 0), "a.b[1].z");
        assert_eq!(path_at(t, 7, 0), "a.b[1].z[1].r");
        assert_eq!(path_at(t, 8, 0), "c");
        let compact = "shards:\n- name: s0\n  region: us\n- name: s1\n  rack: 3\n";
        assert_eq!(path_at(compact, 5, 0), "shards[1].rack");
    }

    /// A map of `n` shards, each with a zoned replica, in block style.
    fn map_of(n: usize) -> String {
        let mut t =
            String::from("slots: 65536\nregions:\n  - name: us\n    zones: [a, b]\nshards:\n");
        for i in 0..n {
            let (host, port) = (i / 60_000 + 1, 1024 + i % 60_000);
            t.push_str(&format!(
                "  - name: s{i}\n    region: us\n    zone: a\n    weight: 2\n    primary: 127.0.0.{host}:{port}\n    replicas:\n      - addr: 127.1.0.{host}:{port}\n        zone: b\n"
            ));
        }
        t
    }

    #[test]
    fn a_map_of_the_most_shards_allowed_parses() {
        let m = ShardMap::from_yaml(&map_of(MAX_SHARDS)).unwrap();
        assert_eq!(m.shards.len(), MAX_SHARDS);
        let e = ShardMap::from_yaml(&map_of(MAX_SHARDS + 1)).unwrap_err();
        assert_eq!(e.path, "shards");
        assert_eq!(e.reason, "lists 65536 shards; at most 65535");
    }

    #[test]
    fn a_document_over_the_budget_is_refused_as_a_whole() {
        let e = from_str_within::<Vec<u32>>("[1, 2, 3, 4, 5]", 3).unwrap_err();
        assert_eq!(e.path, "(document)");
        assert!(
            e.reason
                .starts_with("the document is larger than shardgate reads: Nodes"),
            "{e}"
        );
        assert!(e.reason.ends_with("(at most 3 YAML nodes)"), "{e}");
        assert_eq!(
            from_str_within::<Vec<u32>>("[1, 2]", 3).unwrap(),
            vec![1, 2]
        );
    }
}
