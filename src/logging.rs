//! The log backend (docs/design.md, "Service integration"). Three sinks:
//! - under systemd (JOURNAL_STREAM or NOTIFY_SOCKET set): stderr with sd-daemon `<N>`
//!   priority prefixes, so journald keeps each line's severity;
//! - daemonized, or `[log] target = "syslog"`: RFC 3164 datagrams to the syslog socket
//!   (ident `kai`, with pid), reconnecting when the syslog daemon restarts;
//! - otherwise stderr as `kai[pid]: level: message`.
//!
//! The logger is installed once; the sink and level can be switched later (after detaching,
//! on reload).

use crate::config::{LogSection, LogTarget};
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use syslog::{Facility, Formatter3164, LoggerBackend};

enum Sink {
    Stderr { journald: bool },
    Syslog(SyslogSink),
}

struct SyslogSink {
    socket: PathBuf,
    formatter: Formatter3164,
    connection: Option<syslog::Logger<LoggerBackend, Formatter3164>>,
}

impl SyslogSink {
    fn send(&mut self, level: Level, message: &str) {
        // One retry on a fresh connection: after rsyslogd restarts, the old socket is gone.
        for _ in 0..2 {
            if self.connection.is_none() {
                self.connection = syslog::unix_custom(self.formatter.clone(), &self.socket).ok();
            }
            let Some(logger) = self.connection.as_mut() else {
                return;
            };
            let sent = match level {
                Level::Error => logger.err(message),
                Level::Warn => logger.warning(message),
                Level::Info => logger.info(message),
                Level::Debug | Level::Trace => logger.debug(message),
            };
            if sent.is_ok() {
                return;
            }
            self.connection = None;
        }
    }
}

struct KaiLog {
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<&'static KaiLog> = OnceLock::new();

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for KaiLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *sink {
            Sink::Stderr { journald } => {
                let line = if *journald {
                    format!("<{}>{}\n", priority(record.level()), record.args())
                } else {
                    let level = record.level().as_str().to_lowercase();
                    format!("kai[{}]: {level}: {}\n", std::process::id(), record.args())
                };
                // One write per line keeps lines whole when several threads log at once.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(syslog) => syslog.send(record.level(), &record.args().to_string()),
        }
    }

    fn flush(&self) {}
}

pub fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Installs the logger writing to stderr (journald-style under systemd).
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| {
        Box::leak(Box::new(KaiLog {
            sink: Mutex::new(Sink::Stderr {
                journald: under_systemd(),
            }),
        }))
    });
    let _ = log::set_logger(*logger);
    log::set_max_level(level);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Picks the sink `[log]` asks for; `daemonized` resolves `target = "auto"` to syslog.
pub fn configure(section: &LogSection, daemonized: bool) {
    let use_syslog = match section.target {
        LogTarget::Syslog => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => daemonized && !under_systemd(),
    };
    let sink = if use_syslog {
        let facility = Facility::from_str(&section.facility).unwrap_or(Facility::LOG_DAEMON);
        Sink::Syslog(SyslogSink {
            socket: section.syslog_socket.clone(),
            formatter: Formatter3164 {
                facility,
                hostname: None,
                process: "kai".into(),
                pid: std::process::id(),
            },
            connection: None,
        })
    } else {
        Sink::Stderr {
            journald: under_systemd(),
        }
    };
    if let Some(logger) = LOGGER.get() {
        *logger.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }
    log::set_max_level(section.level.filter());
}
