//! The layering of `src/` (docs/design.md, "Module map"): reads every `use crate::…` and
//! `crate::…::` path, and fails on an import the table below does not allow, or on a cycle
//! between the modules of any one directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module → the top-level modules it may import. Keep in step with docs/design.md.
const ALLOWED: &[(&str, &[&str])] = &[
    ("address", &[]),
    ("causality", &[]),
    ("client_threads", &[]),
    ("config", &[]),
    ("durable", &[]),
    ("keyspace", &[]),
    ("shutdown", &[]),
    ("stats", &[]),
    ("time", &[]),
    ("tls", &[]),
    ("daemon", &[]),
    ("logging", &["config"]),
    ("record", &["causality"]),
    ("ops", &["causality", "record"]),
    ("store", &["causality", "durable", "keyspace", "record"]),
    (
        "cluster",
        &[
            "address",
            "causality",
            "client_threads",
            "config",
            "durable",
            "keyspace",
            "ops",
            "record",
            "shutdown",
            "store",
            "time",
            "tls",
        ],
    ),
    (
        "node",
        &[
            "causality",
            "cluster",
            "config",
            "ops",
            "record",
            "stats",
            "store",
            "time",
        ],
    ),
    (
        "memcache",
        &["client_threads", "node", "ops", "stats", "time", "tls"],
    ),
    ("metrics", &["node"]),
    (
        "admin",
        &[
            "address", "cluster", "config", "durable", "record", "store", "time",
        ],
    ),
    (
        "serve",
        &[
            "address",
            "client_threads",
            "cluster",
            "config",
            "daemon",
            "logging",
            "memcache",
            "metrics",
            "node",
            "shutdown",
            "store",
            "time",
            "tls",
        ],
    ),
];

/// The module path of a source file: src/cluster/rpc/client.rs → [cluster, rpc, client].
fn module_of(path: &Path) -> Vec<String> {
    let relative = path.strip_prefix("src").unwrap();
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every `crate::a::b…` path a file names, as module segments (lowercase ones only: types
/// and functions end a module path). A group `crate::a::{b::C, d}` gives `a::b` and `a::d`.
fn imports(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let prefix = segments(rest);
        let after: usize = prefix.iter().map(|s| s.len() + 2).sum();
        match rest.get(after..).and_then(|r| r.strip_prefix('{')) {
            Some(group) => {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let mut path = prefix.clone();
                    path.extend(segments(item.trim()));
                    out.push(path);
                }
            }
            None => out.push(prefix),
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split("::") {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            break;
        }
        out.push(name);
        if part.len() != out.last().unwrap().len() {
            break;
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn every_import_points_down_and_no_directory_has_a_cycle() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    let mut violations = Vec::new();
    // Parent module path → edges between its children.
    let mut sibling_edges: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> =
        BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        // The binary (main.rs and its cli.rs) sits above everything; lib.rs only declares.
        if module == ["main"] || module == ["cli"] || module == ["lib"] {
            continue;
        }
        let Some(top) = module.first() else { continue };
        let Some(permitted) = allowed.get(top.as_str()) else {
            violations.push(format!(
                "{}: module {top} is not in the table",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        for target in imports(&text) {
            let target_top = &target[0];
            if target_top != top && !permitted.contains(target_top.as_str()) {
                violations.push(format!("{}: {top} → {}", file.display(), target.join("::")));
            }
            // The first segment where the two paths part: an edge between siblings.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if let (Some(from), Some(to)) = (module.get(common), target.get(common)) {
                let parent = module[..common].to_vec();
                (sibling_edges.entry(parent).or_default())
                    .entry(from.clone())
                    .or_default()
                    .insert(to.clone());
            }
        }
        // `super::x` from a file is an edge to its sibling x.
        for (at, _) in text.match_indices("super::") {
            let name = segments(&text[at + "super::".len()..]);
            let (Some(sibling), true) = (name.first(), module.len() >= 2) else {
                continue;
            };
            let parent = module[..module.len() - 1].to_vec();
            let from = module.last().unwrap();
            // Inside a file's own `mod tests`, super:: is the file itself.
            if sibling != from && file.file_name().unwrap() != "mod.rs" {
                (sibling_edges.entry(parent).or_default())
                    .entry(from.clone())
                    .or_default()
                    .insert(sibling.clone());
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
    for (parent, edges) in &sibling_edges {
        if let Some(cycle) = find_cycle(edges) {
            panic!(
                "import cycle in crate::{}: {}",
                parent.join("::"),
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_table_is_itself_acyclic_and_names_real_modules() {
    let edges: BTreeMap<String, BTreeSet<String>> = ALLOWED
        .iter()
        .map(|(m, deps)| (m.to_string(), deps.iter().map(|d| d.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&edges), None);
    for (module, _) in ALLOWED {
        let file = Path::new("src").join(format!("{module}.rs"));
        let dir = Path::new("src").join(module).join("mod.rs");
        assert!(file.exists() || dir.exists(), "no module {module}");
    }
}

#[test]
fn the_checker_sees_a_forbidden_import_and_a_cycle() {
    let found = imports(
        "use crate::{cluster::ring::Ring, store};\nlet x = crate::node::Item;\n\
         use crate::cluster::{placement, rpc::message::Request};",
    );
    assert_eq!(
        found,
        [
            vec!["cluster", "ring"],
            vec!["store"],
            vec!["node"],
            vec!["cluster", "placement"],
            vec!["cluster", "rpc", "message"],
        ]
        .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&edges).is_some());
}
