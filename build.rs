//! Records the compiler and tokio versions for the `runtime_version` stat.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let tokio_version = lock
        .split("[[package]]")
        .find(|block| block.contains("name = \"tokio\"\n"))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KAI_RUNTIME_VERSION=rustc-{rustc_version}/tokio-{tokio_version}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
}
