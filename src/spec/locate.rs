//! Find where a key sits in the YAML text (line and column), for error messages about
//! values that serde has already turned into plain data. It understands block mappings
//! and, as a fallback, flow mappings (`with: { steps: 18 }`) on one line.

/// 1-based (line, column) of the key at `path` (e.g. `["stages", "base", "with", "steps"]`),
/// or of the deepest prefix of it that exists.
pub fn locate(source: &str, path: &[&str]) -> Option<(usize, usize)> {
    locate_in(source, path, None)
}

/// Like [`locate`], then the first occurrence of `value` at or after that key.
pub fn locate_value(source: &str, path: &[&str], value: &str) -> Option<(usize, usize)> {
    locate_in(source, path, Some(value))
}

/// Like [`locate`], but `None` unless the whole path is present.
pub fn locate_full(source: &str, path: &[&str]) -> Option<(usize, usize)> {
    let (pos, depth) = walk(source, path, None);
    (depth == path.len()).then_some(pos).flatten()
}

/// The first occurrence of `word` not inside a longer name.
fn find_word(line: &str, word: &str) -> Option<usize> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    line.match_indices(word).map(|(i, _)| i).find(|&i| {
        !line[..i].chars().next_back().is_some_and(is_name)
            && !line[i + word.len()..].chars().next().is_some_and(is_name)
    })
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// Does `line` (trimmed) start with `key:` (plain or quoted)?
fn starts_with_key(trimmed: &str, key: &str) -> bool {
    let t = trimmed.strip_prefix("- ").unwrap_or(trimmed);
    for q in ["", "\"", "'"] {
        let k = format!("{q}{key}{q}");
        if let Some(rest) = t.strip_prefix(&k) {
            if rest.trim_start().starts_with(':') {
                return true;
            }
        }
    }
    false
}

/// Column (0-based byte offset) of `key:` inside a flow mapping on this line.
fn flow_key(line: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find(key) {
        let at = from + i;
        let before = line[..at].trim_end().chars().last();
        let after = line[at + key.len()..].trim_start();
        if matches!(before, Some('{') | Some(',')) && after.starts_with(':') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

fn locate_in(source: &str, path: &[&str], value: Option<&str>) -> Option<(usize, usize)> {
    walk(source, path, value).0
}

/// The position found and how many keys of `path` matched.
fn walk(source: &str, path: &[&str], value: Option<&str>) -> (Option<(usize, usize)>, usize) {
    let mut depth = 0;
    let lines: Vec<&str> = source.lines().collect();
    // The current search range [lo, hi) and the indent its keys must exceed.
    let (mut lo, mut hi, mut parent): (usize, usize, isize) = (0, lines.len(), -1);
    let mut found: Option<(usize, usize)> = None;
    for key in path {
        let hit = (lo..hi).find(|&i| {
            !is_blank(lines[i])
                && indent(lines[i]) as isize > parent
                && starts_with_key(lines[i].trim_start(), key)
        });
        match hit {
            Some(i) => {
                let ind = indent(lines[i]);
                found = Some((i + 1, ind + 1));
                let end = (i + 1..hi)
                    .find(|&j| !is_blank(lines[j]) && indent(lines[j]) <= ind)
                    .unwrap_or(hi);
                lo = i;
                hi = end;
                parent = ind as isize;
                depth += 1;
            }
            None => {
                // Flow style: `with: { key: ... }` on a line of the current range.
                let flow = (lo..hi).find_map(|i| flow_key(lines[i], key).map(|c| (i, c)));
                match flow {
                    Some((i, c)) => {
                        found = Some((i + 1, c + 1));
                        lo = i;
                        hi = i + 1;
                        depth += 1;
                    }
                    None => break,
                }
            }
        }
    }
    if let (Some(v), Some((line, _))) = (value, found) {
        for (i, l) in lines.iter().enumerate().take(hi).skip(line - 1) {
            if let Some(c) = find_word(l, v) {
                return (Some((i + 1, c + 1)), depth);
            }
        }
    }
    (found, depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "name: p\nstages:\n  a:\n    uses: command\n    with:\n      run: echo\n  b:\n    uses: shard\n    needs: [a, c]\n    with: { samples_per_shard: 10, shuffle_seed: 0 }\n";

    #[test]
    fn block_keys() {
        assert_eq!(locate(SRC, &["stages", "a", "with", "run"]), Some((6, 7)));
        assert_eq!(locate(SRC, &["stages", "b"]), Some((7, 3)));
    }

    #[test]
    fn flow_keys_and_values() {
        assert_eq!(
            locate(SRC, &["stages", "b", "with", "shuffle_seed"]),
            Some((10, 36))
        );
        assert_eq!(
            locate_value(SRC, &["stages", "b", "needs"], "c"),
            Some((9, 16))
        );
    }

    #[test]
    fn missing_key_falls_back_to_parent() {
        assert_eq!(locate(SRC, &["stages", "a", "with", "nope"]), Some((5, 5)));
    }
}
