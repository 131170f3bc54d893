//! A disk whose syncs fail on demand: a FUSE filesystem (`sync_failing_fs.py`, run by the
//! test venv's Python) over a temporary directory, whose fsync and fdatasync return EIO
//! while `fail_syncs(true)`. Writes still succeed, as they do into a failing disk's page
//! cache, and a failed sync drops what it covered, as a failed writeback does: `remount`
//! shows what the disk kept. Needs root and /dev/fuse, as the tmpfs of `small_disk` does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub struct FailingDisk {
    dir: tempfile::TempDir,
    fs: Child,
}

impl FailingDisk {
    pub fn mount() -> FailingDisk {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["backing", "mnt"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let fs = Self::serve(dir.path());
        let disk = FailingDisk { dir, fs };
        disk.wait_mounted();
        disk
    }

    fn serve(dir: &Path) -> Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/sync_failing_fs.py");
        Command::new(super::venv_python())
            .arg(script)
            .arg(dir.join("backing"))
            .arg(dir.join("mnt"))
            .arg(dir.join("fail"))
            .spawn()
            .unwrap()
    }

    fn wait_mounted(&self) {
        let mounted = super::wait_until(Duration::from_secs(10), || self.is_mounted());
        assert!(
            mounted,
            "the FUSE filesystem did not mount (needs root and /dev/fuse)"
        );
    }

    /// Unmounts and mounts again: the files as the disk kept them, without the cache the
    /// kernel filled through the old mount. Nothing may have a file open on it.
    pub fn remount(&mut self) {
        let status = Command::new("umount").arg(self.path()).status().unwrap();
        assert!(status.success(), "umount {}", self.path().display());
        self.fs.wait().unwrap();
        self.fs = Self::serve(self.dir.path());
        self.wait_mounted();
    }

    fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let point = self.path().display().to_string();
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(point.as_str()))
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// From now on, every fsync and fdatasync fails with EIO (`true`) or succeeds.
    pub fn fail_syncs(&self, fail: bool) {
        let flag = self.dir.path().join("fail");
        if fail {
            std::fs::write(flag, b"").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        let _ = self.fs.kill();
        let _ = self.fs.wait();
    }
}
