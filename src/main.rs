//! The `kai` binary: parse the command line, load the configuration, daemonize if asked
//! (before any thread exists), dispatch.

mod cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use cli::{Action, CheckAction, Cli, ClusterAction, ConfigAction, ServeOptions, StoreAction};
use kai::admin;
use kai::config;
use kai::daemon::{detach, notify, pidfile, privileges};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for configuration and usage errors, before anything is bound.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A Nagios plugin with bad arguments must say UNKNOWN (3), not clap's usage code.
        Err(e) if std::env::args().nth(1).as_deref() == Some("check") && e.use_stderr() => {
            let reason = e.to_string();
            println!(
                "KAI UNKNOWN - {}",
                reason.lines().next().unwrap_or("bad arguments")
            );
            return ExitCode::from(admin::check::Status::Unknown as u8);
        }
        Err(e) => e.exit(),
    };
    match cli.command {
        None => serve(cli.config, cli.serve),
        // `kai --daemon serve` and `kai serve --daemon` mean the same.
        Some(Action::Serve(options)) => serve(cli.config, cli.serve.or(options)),
        Some(Action::Config(ConfigAction::Check { ref file })) => {
            check_config(file.clone().or(cli.config))
        }
        Some(Action::Stats {
            hosts,
            json,
            cacti,
            watch,
            count,
            timeout,
        }) => stats(
            &hosts,
            json,
            cacti,
            watch,
            count,
            Duration::from_secs(timeout),
        ),
        Some(Action::Check(action)) => check(action),
        Some(Action::Cluster(action)) => cluster(cli.config, action),
        Some(Action::Store(action)) => store(cli.config, action),
    }
}

fn store(config_path: Option<PathBuf>, action: StoreAction) -> ExitCode {
    // Check and compact with --data-dir need no configuration at all.
    let config = || {
        config::load(config_path.as_deref())
            .map(|loaded| loaded.config)
            .map_err(|e| {
                eprintln!("kai: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            })
    };
    let compact = matches!(action, StoreAction::Compact { .. });
    let result = match action {
        StoreAction::Backup { out, node } => match config() {
            Ok(config) => admin::backup::backup(&config, node.as_deref(), &out),
            Err(code) => return code,
        },
        StoreAction::Restore { file, data_dir } => match config() {
            Ok(config) => {
                let dir = data_dir.unwrap_or_else(|| config.node.data_dir.clone());
                admin::backup::restore(&config, &dir, &file)
            }
            Err(code) => return code,
        },
        StoreAction::Check { data_dir } | StoreAction::Compact { data_dir } => {
            let dir = match data_dir {
                Some(dir) => dir,
                None => match config() {
                    Ok(config) => config.node.data_dir,
                    Err(code) => return code,
                },
            };
            maintain(&dir, compact).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `kai store check` (or `compact`) on a stopped node's data dir, either engine's layout.
fn maintain(dir: &std::path::Path, compact: bool) -> Result<String, kai::store::StoreError> {
    use kai::store::disk::DiskStore;
    use kai::store::migrate::{layout, Layout};
    use kai::store::vlog::{self, LogStore};
    let compacted = |(before, after)| format!("compacted: {before} bytes before, {after} after\n");
    match (compact, layout(dir)) {
        (false, Layout::Redb) => DiskStore::check(dir),
        (false, _) => LogStore::check(dir),
        (true, Layout::Redb) => DiskStore::compact(dir).map(compacted),
        (true, _) => {
            let settings = vlog::Settings::new(
                kai::store::Durability::Fsync,
                Duration::from_secs(1),
                // Digests are not kept on disk: any bucket count will do offline.
                1024,
            );
            LogStore::open(dir, settings)
                .map_err(|e| kai::store::StoreError::Damaged(e.to_string()))
                .map(|store| compacted(store.compact_now()))
        }
    }
}

fn cluster(config_path: Option<PathBuf>, action: ClusterAction) -> ExitCode {
    use admin::cluster::Command;
    let (node, command) = match action {
        ClusterAction::Status { host, timeout } => {
            return match admin::cluster::status(&host, Duration::from_secs(timeout)) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            };
        }
        ClusterAction::Join { seed } => (None, Command::Join(seed)),
        ClusterAction::Leave => (None, Command::Leave),
        ClusterAction::Remove { node } => (None, Command::Remove(node)),
        ClusterAction::Inspect { key, node } => (node, Command::Inspect(key)),
        ClusterAction::Digests { node } => (node, Command::Digests),
        ClusterAction::Finalize => (None, Command::Finalize),
    };
    let config = match config::load(config_path.as_deref()) {
        Ok(loaded) => loaded.config,
        Err(e) => {
            eprintln!("kai: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match admin::cluster::run(&config, node.as_deref(), command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn stats(
    hosts: &[String],
    json: bool,
    cacti: bool,
    watch: Option<u64>,
    count: Option<u64>,
    timeout: Duration,
) -> ExitCode {
    let result = match watch {
        Some(seconds) => {
            admin::stats::watch(hosts, Duration::from_secs(seconds.max(1)), count, timeout)
                .map(|()| String::new())
        }
        None => {
            let format = match (json, cacti) {
                (true, _) => admin::stats::Format::Json,
                (_, true) => admin::stats::Format::Cacti,
                _ => admin::stats::Format::Table,
            };
            admin::stats::report(hosts, format, timeout)
        }
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn check(action: CheckAction) -> ExitCode {
    let verdict = match action {
        CheckAction::Node {
            host,
            port,
            timeout,
            warning,
            critical,
        } => admin::check::node(
            &cli::nagios_target(&host, port),
            Duration::from_secs(timeout),
            warning.as_deref(),
            critical.as_deref(),
        ),
        CheckAction::Cluster {
            hosts,
            port,
            expect_members,
            warn_hints,
            warn_sync,
            warn_skew,
            warn_version_mix,
            timeout,
        } => admin::check::cluster(
            &(hosts.iter())
                .map(|host| cli::nagios_target(host, port))
                .collect::<Vec<_>>(),
            &admin::check::ClusterLimits {
                expect_members,
                warn_hints,
                warn_sync,
                warn_skew_ms: warn_skew,
                warn_version_mix_secs: warn_version_mix,
            },
            Duration::from_secs(timeout),
        ),
    };
    println!("{}", verdict.line);
    ExitCode::from(verdict.status as u8)
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("kai: {message}");
    ExitCode::FAILURE
}

fn serve(path: Option<PathBuf>, options: ServeOptions) -> ExitCode {
    let ServeOptions {
        daemon: daemonize,
        pid_file,
        user,
    } = options;
    let loaded = match config::load(path.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("kai: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if daemonize && notify::under_systemd() {
        eprintln!(
            "kai: --daemon refused: NOTIFY_SOCKET is set, and a systemd Type=notify service \
             must run in the foreground (drop --daemon from ExecStart)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = loaded.config.clone();
    kai::logging::init(config.log.level.filter());
    let pid_path = pid_file.or_else(|| daemonize.then(|| config.daemon.pid_file.clone()));
    if let Some(pid_path) = &pid_path {
        if let Err(e) = pidfile::ensure_not_running(pid_path) {
            return fail(e);
        }
    }
    let prepared = match kai::serve::prepare(loaded, path) {
        Ok(prepared) => prepared,
        Err(e) => return fail(format!("{e:#}")),
    };
    let user = user.unwrap_or(config.daemon.user.clone());
    let switched_user = match privileges::drop_to(&user) {
        Ok(switched) => switched,
        Err(e) => return fail(e),
    };
    let report = if daemonize {
        match detach::detach() {
            Ok(report) => Some(report),
            Err(e) => return fail(format!("cannot daemonize: {e}")),
        }
    } else {
        None
    };
    // From here on this is the serving process (the daemon, when detached).
    let pid_file = match pid_path
        .as_deref()
        .map(pidfile::PidFile::create)
        .transpose()
    {
        Ok(pid_file) => pid_file,
        Err(e) => match report {
            Some(report) => report.fail(&e.to_string()),
            None => return fail(e),
        },
    };
    let store = match kai::serve::open_store(&prepared) {
        Ok(store) => store,
        Err(e) => match report {
            Some(report) => report.fail(&format!("{e:#}")),
            None => return fail(format!("{e:#}")),
        },
    };
    if let Some(report) = report {
        if let Err(e) = detach::settle() {
            report.fail(&format!("cannot detach from the terminal: {e}"));
        }
        kai::logging::configure(&config.log, true);
        report.serving();
    } else {
        kai::logging::configure(&config.log, false);
    }
    if switched_user {
        log::info!("running as user {user}");
    }
    let result = kai::serve::run(prepared, store);
    drop(pid_file);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
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
                Err(e) => fail(format!("cannot print the configuration: {e}")),
            }
        }
        Err(e) => {
            eprintln!("kai: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
