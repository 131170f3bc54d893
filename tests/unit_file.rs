//! The systemd unit passes `systemd-analyze verify` with the real binary in place, and
//! keeps a low exposure score.

mod common;

use std::path::Path;
use std::process::Command;

fn unit_with_built_binary(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/kai.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/kai --config /etc/kai/kai.toml"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let path = dir.join("kai.service");
    std::fs::write(&path, unit.replace("/usr/bin/kai", common::KAI)).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && report.trim().is_empty(), "{report}");
}

#[test]
fn unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for kai.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in {report}"));
    assert!(score <= 2.5, "exposure {score}:\n{report}");
}
