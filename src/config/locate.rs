//! Finds where a key sits in TOML text, so errors found after merging can still name a line.
//!
//! A deliberately small line scanner: kai.toml uses `[section]` headers and `key = value`
//! lines (plus inline tables such as `quorum = { n = 3 }`), which is all it needs to follow.

/// 1-based line number of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key ("memcache.listen") assigned on 1-based `line`, or "" if none.
pub fn key_at_line(text: &str, line: usize) -> String {
    let mut section = String::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(name) = section_header(trimmed) {
            section = name.to_string();
        }
        if index + 1 == line {
            return match assigned_key(trimmed) {
                Some(key) if section.is_empty() => key.to_string(),
                Some(key) => format!("{section}.{key}"),
                None => section,
            };
        }
    }
    String::new()
}

/// 1-based line that assigns `dotted` ("cluster.quorum.r" matches a `quorum = {…}` line
/// under `[cluster]`, as does `r = …` under `[cluster.quorum]`).
pub fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let mut section = String::new();
    let mut found = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(name) = section_header(trimmed) {
            section = name.to_string();
            continue;
        }
        let Some(key) = assigned_key(trimmed) else {
            continue;
        };
        let full = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        if dotted == full || dotted.starts_with(&format!("{full}.")) {
            found = Some(index + 1);
        }
    }
    found
}

fn section_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim())
}

fn assigned_key(line: &str) -> Option<&str> {
    if line.starts_with('#') || line.starts_with('[') {
        return None;
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# comment\n[memcache]\nlisten = \"x\"\n\n[cluster]\nquorum = { n = 1 }\nbuckets = 3\n";

    #[test]
    fn finds_keys() {
        assert_eq!(line_of_key(TEXT, "memcache.listen"), Some(3));
        assert_eq!(line_of_key(TEXT, "cluster.quorum.r"), Some(6));
        assert_eq!(line_of_key(TEXT, "cluster.buckets"), Some(7));
        assert_eq!(line_of_key(TEXT, "store.engine"), None);
        assert_eq!(key_at_line(TEXT, 7), "cluster.buckets");
        assert_eq!(line_of(TEXT, TEXT.find("buckets").unwrap()), 7);
    }
}
