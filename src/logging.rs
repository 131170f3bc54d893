//! The log backend. Under systemd (JOURNAL_STREAM or NOTIFY_SOCKET set) lines go to stderr
//! with sd-daemon `<N>` priority prefixes so journald keeps the severity; in a terminal they
//! go to stderr as `kai[pid]: level: message`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLog {
    journald: bool,
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journald {
            format!("<{}>{}\n", priority(record.level()), record.args())
        } else {
            let level = record.level().as_str().to_lowercase();
            format!("kai[{}]: {level}: {}\n", std::process::id(), record.args())
        };
        // One write per line keeps lines whole when several threads log at once.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

pub fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Installs the stderr logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_boxed_logger(Box::new(StderrLog {
        journald: under_systemd(),
    }));
    log::set_max_level(level);
}
