//! YAML text errors -> [`MapError`]: the parser's message, and the field
//! path (`shards[2].replicas[0].addr`) rebuilt from the error's line, so a
//! syntax or type error reads like a validation error. Used for every YAML
//! file shardgate reads (shard maps, the auth file).

use super::MapError;

/// Turns a serde-saphyr error into a [`MapError`]: the reason is the parser's
/// message without its position, the path is reconstructed from the
/// position by [`path_at`] (falling back to `line L column C`).
pub fn from_yaml_error(text: &str, e: &serde_saphyr::Error) -> MapError {
    let inner = e.without_snippet();
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
}
