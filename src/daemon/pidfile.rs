//! The pid file: written atomically (temporary file, then rename) and kept flock()ed for the
//! life of the process, so "is kai running?" is answered by the lock, never by a stale pid.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("kai is already running (pid {pid}, pid file {path} is locked)")]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("cannot write pid file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pid file this process owns; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

/// Fails when a live process holds the lock on `path`. A missing or stale file is fine.
pub fn ensure_not_running(path: &Path) -> Result<(), PidFileError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(_) => return Ok(()),
    };
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => Ok(()),
        Err(_) => Err(PidFileError::AlreadyRunning {
            pid: pid.trim().to_string(),
            path: path.to_path_buf(),
        }),
    }
}

impl PidFile {
    /// Writes this process's pid to `path`, replacing a stale file, and locks it.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        ensure_not_running(path)?;
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let pid = std::process::id();
        let temporary = path.with_file_name(format!(
            ".{}.{pid}.tmp",
            path.file_name()
                .map_or("kai.pid".into(), |n| n.to_string_lossy())
        ));
        let mut file = File::create(&temporary).map_err(io)?;
        let written = file
            .write_all(format!("{pid}\n").as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(e));
        }
        // Lock before the rename, so the file is never visible unlocked.
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
        if let Err(e) = std::fs::rename(&temporary, path) {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(e));
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only remove the file if it still names this process.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lock_replace_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kai.pid");
        std::fs::write(&path, "999999\n").unwrap(); // stale: nobody holds the lock
        let pid_file = PidFile::create(&path).unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("{}\n", std::process::id()));
        // flock locks belong to the open file description, so a second open conflicts.
        let err = ensure_not_running(&path).unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        drop(pid_file);
        assert!(!path.exists());
        assert!(ensure_not_running(&path).is_ok());
    }

    #[test]
    fn unwritable_directory_is_reported() {
        let err = PidFile::create(Path::new("/nonexistent/dir/kai.pid")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dir/kai.pid"),
            "{err}"
        );
    }
}
