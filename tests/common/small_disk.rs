//! A small real disk for full-disk tests: a tmpfs mounted on a temporary directory (the
//! tests run as root, as the service tests do), unmounted when dropped. Shared by the
//! integration tests and the disk engine's unit tests (`src/store/vlog/tests.rs`).

pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// A tmpfs of `mib` MiB.
    pub fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}
