//! Configuration: load kai.toml plus its conf.d drop-ins, validate, and report errors that
//! name the file, the line and the key (docs/design.md, "Configuration").

mod locate;
pub mod schema;
pub mod units;
mod validate;

pub use schema::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the packaged config lives; absent means "run on the embedded defaults".
pub const DEFAULT_PATH: &str = "/etc/kai/kai.toml";

/// A configuration problem, pointing at the file and key an operator has to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The effective configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Files read, main file first, then drop-ins in the order applied.
    pub sources: Vec<PathBuf>,
    /// Legal but questionable settings, to be logged once logging is up.
    pub warnings: Vec<String>,
}

/// One parsed file, kept so semantic errors can be traced back to a line.
struct Source {
    path: PathBuf,
    text: String,
}

/// Loads `explicit` (from `--config`), or the default path when it exists, or the embedded
/// defaults; then merges the `conf.d/*.toml` drop-ins beside it in lexical order.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let main = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let dropin_dir = match &main {
        Some(path) => path.parent().unwrap_or(Path::new(".")).join("conf.d"),
        None => Path::new(DEFAULT_PATH).with_file_name("conf.d"),
    };
    let mut paths = Vec::new();
    if let Some(main) = main {
        paths.push(main);
    }
    paths.extend(dropins(&dropin_dir)?);

    let mut sources = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.clone(),
            line: None,
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        sources.push(Source {
            path: path.clone(),
            text,
        });
    }
    from_sources(&sources)
}

/// Parses configuration text as if it were the file `path` (no drop-ins); for tests and tools.
pub fn from_str(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    from_sources(&[Source {
        path: path.to_path_buf(),
        text: text.to_string(),
    }])
}

fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError {
                file: dir.to_path_buf(),
                line: None,
                key: String::new(),
                reason: format!("cannot read drop-in directory: {e}"),
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn from_sources(sources: &[Source]) -> Result<Loaded, ConfigError> {
    let mut merged = toml::Table::new();
    for source in sources {
        // Deserializing each file on its own keeps toml's spans, so type errors and unknown
        // keys point at the right line of the right file.
        toml::from_str::<Config>(&source.text).map_err(|e| syntax_error(source, &e))?;
        let table: toml::Table =
            toml::from_str(&source.text).map_err(|e| syntax_error(source, &e))?;
        merge(&mut merged, table);
    }
    let config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError {
            file: sources.last().map(|s| s.path.clone()).unwrap_or_default(),
            line: None,
            key: String::new(),
            reason: e.message().to_string(),
        })?;
    let mut warnings = Vec::new();
    validate::check(&config, &mut warnings).map_err(|problem| {
        let (file, line) = origin(sources, &problem.key);
        ConfigError {
            file,
            line,
            key: problem.key,
            reason: problem.reason,
        }
    })?;
    Ok(Loaded {
        config,
        sources: sources.iter().map(|s| s.path.clone()).collect(),
        warnings,
    })
}

fn syntax_error(source: &Source, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| locate::line_of(&source.text, span.start));
    let key = line
        .map(|l| locate::key_at_line(&source.text, l))
        .unwrap_or_default();
    ConfigError {
        file: source.path.clone(),
        line,
        key,
        reason: e.message().trim().replace('\n', ": "),
    }
}

/// The last file (drop-ins win) that sets `key` ("cluster.buckets"), with its line.
fn origin(sources: &[Source], key: &str) -> (PathBuf, Option<usize>) {
    for source in sources.iter().rev() {
        if let Some(line) = locate::line_of_key(&source.text, key) {
            return (source.path.clone(), Some(line));
        }
    }
    (PathBuf::from("<embedded defaults>"), None)
}

/// Deep merge: tables merge key by key, anything else in `overlay` replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
