//! Side files that must survive a crash (member list, hints): written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced, so after a power cut or
//! kill -9 the file holds either the old or the new content, never nothing.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `content` durably and atomically.
pub fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    replace(path, &path.with_extension("tmp"), |file| {
        file.write_all(content)
    })
}

/// Replaces `path` durably and atomically with what `write` puts in a new file, written
/// as `path` + ".partial" first (a large file: a backup).
pub fn write_file_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    replace(path, Path::new(&partial), write)
}

fn replace(
    path: &Path,
    temporary: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut file = File::create(temporary)?;
    if let Err(err) = write(&mut file).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(temporary);
        return Err(err);
    }
    drop(file);
    fs::rename(temporary, path)?;
    // The rename is durable only once the directory entry is.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        write_atomically(&path, b"first\n").unwrap();
        write_atomically(&path, b"second\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second\n");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("members");
        assert!(write_atomically(&path, b"x").is_err());
    }
}
