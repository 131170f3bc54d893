//! The man pages are lint-clean and complete: every stat kai reports, every config key and
//! every command-line flag is documented.

mod common;

use common::{Kai, KAI};
use std::path::Path;
use std::process::Command;

fn page(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name)).unwrap()
}

/// The page as a reader sees it (roff escapes resolved, no hyphenation).
fn rendered(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
    let out = Command::new("mandoc")
        .args(["-T", "ascii", "-O", "width=200"])
        .arg(&path)
        .output()
        .expect("mandoc is not installed: run `make test`");
    let text = String::from_utf8_lossy(&out.stdout);
    // Strip overstrike bold/underline.
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        plain.push(c);
    }
    plain
}

#[test]
fn man_pages_are_lint_clean() {
    for name in ["kai.8", "kai.toml.5"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
        let out = Command::new("mandoc")
            .args(["-T", "lint"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "{name}: {report}"
        );
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .output();
        if let Ok(out) = out {
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(warnings.trim().is_empty(), "{name}: {warnings}");
        }
        assert!(page(name).starts_with(".TH "));
    }
}

#[test]
fn every_stat_is_documented() {
    let kai = Kai::start("");
    let manual = rendered("kai.8");
    for name in kai.stats().keys() {
        assert!(
            manual.contains(name.as_str()),
            "stat {name} is missing from kai(8)"
        );
    }
}

#[test]
fn every_config_key_is_documented() {
    let defaults = toml::to_string(&kai::config::Config::default()).unwrap();
    let table: toml::Table = toml::from_str(&defaults).unwrap();
    let manual = rendered("kai.toml.5");
    for (section, keys) in &table {
        assert!(
            manual.contains(&format!("[{section}]")),
            "section [{section}] missing"
        );
        for key in keys.as_table().unwrap().keys() {
            assert!(
                manual.contains(&format!("{key} (")),
                "{section}.{key} missing from kai.toml(5)"
            );
        }
    }
}

/// The long flags `kai <command> --help` lists.
fn flags_of(command: &[&str]) -> Vec<String> {
    let help = Command::new(KAI)
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    help.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect()
}

#[test]
fn every_flag_and_command_is_documented() {
    let manual = rendered("kai.8");
    assert!(flags_of(&[]).contains(&"--daemon".to_string()));
    let commands: [&[&str]; 13] = [
        &[],
        &["serve"],
        &["config", "check"],
        &["stats"],
        &["check", "node"],
        &["check", "cluster"],
        &["cluster", "status"],
        &["cluster", "join"],
        &["cluster", "leave"],
        &["cluster", "remove"],
        &["cluster", "inspect"],
        &["store", "check"],
        &["store", "compact"],
    ];
    for command in commands {
        let name = command.join(" ");
        assert!(manual.contains(&name), "{name} is missing from kai(8)");
        for flag in flags_of(command) {
            assert!(
                manual.contains(&flag),
                "kai {name} {flag} is missing from kai(8)"
            );
        }
    }
}
