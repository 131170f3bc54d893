//! Command-line interface.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kai",
    version,
    about = "A Dynamo-style key/value store speaking the memcached protocol"
)]
pub struct Cli {
    /// Configuration file [default: /etc/kai/kai.toml if present, else embedded defaults]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Detach and run in the background (SysV init); the parent exits 0 once kai serves
    #[arg(long, global = true)]
    pub daemon: bool,

    /// Write and lock a pid file [default with --daemon: [daemon] pid_file]
    #[arg(long, global = true, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// When started as root, switch to this user after binding [default: [daemon] user]
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,

    #[command(subcommand)]
    pub command: Option<Action>,
}

#[derive(Subcommand)]
pub enum Action {
    /// Run a node in the foreground (the default)
    Serve,
    /// Configuration tools
    #[command(subcommand)]
    Config(ConfigAction),
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration and print the effective result (exit 0 valid, 2 invalid)
    Check {
        /// File to check [default: --config, else /etc/kai/kai.toml]
        file: Option<PathBuf>,
    },
}
