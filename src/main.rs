//! The `kai` binary: parse the command line, load the configuration, dispatch.

mod cli;

use clap::Parser;
use cli::{Action, Cli, ConfigAction};
use kai::config;
use std::process::ExitCode;

/// Exit status for configuration errors, before anything is bound.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Action::Serve) {
        Action::Serve => serve(cli.config),
        Action::Config(ConfigAction::Check { file }) => check_config(file.or(cli.config)),
    }
}

fn serve(path: Option<std::path::PathBuf>) -> ExitCode {
    let loaded = match config::load(path.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("kai: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    kai::logging::init(loaded.config.log.level.filter());
    match kai::serve::run(loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<std::path::PathBuf>) -> ExitCode {
    match config::load(path.as_deref()) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("kai: warning: {warning}");
            }
            match toml::to_string_pretty(&loaded.config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kai: cannot print the configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("kai: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
