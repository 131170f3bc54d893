//! Detaching from the terminal: double fork + setsid, done before any thread or async
//! runtime exists. The original parent waits on a pipe and exits 0 only once the daemon says
//! it is serving, or 1 with the daemon's reason, so `kai --daemon && next-step` is reliable.

use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, dup2, fork, setsid, ForkResult};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// The daemon's end of the pipe to the waiting parent.
pub struct StartupReport {
    pipe: File,
}

impl StartupReport {
    /// Tells the parent that startup succeeded; it exits 0.
    pub fn serving(mut self) {
        let _ = self.pipe.write_all(&[0]);
    }

    /// Tells the parent why startup failed (it prints this and exits 1), then exits.
    pub fn fail(mut self, reason: &str) -> ! {
        let _ = self.pipe.write_all(format!("\x01{reason}").as_bytes());
        drop(self.pipe);
        std::process::exit(1);
    }
}

/// Forks twice and returns in the grandchild, a session leader's child with no controlling
/// terminal. The calling process never returns: it exits with the daemon's startup result.
/// Must be called while the process is single-threaded.
pub fn detach() -> std::io::Result<StartupReport> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: kai calls this before it starts any thread, so the child has a consistent copy.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut report = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut report);
            let _ = nix::sys::wait::waitpid(child, None);
            match report.split_first() {
                Some((0, _)) => std::process::exit(0),
                Some((_, reason)) => {
                    eprintln!("kai: {}", String::from_utf8_lossy(reason));
                    std::process::exit(1)
                }
                None => {
                    eprintln!("kai: the daemon exited during startup (see the system log)");
                    std::process::exit(1)
                }
            }
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    setsid()?;
    // SAFETY: still single-threaded.
    match unsafe { fork() }? {
        // The session leader exits so the daemon can never reacquire a terminal.
        ForkResult::Parent { .. } => unsafe { nix::libc::_exit(0) },
        ForkResult::Child => {}
    }
    Ok(StartupReport {
        pipe: File::from(write_end),
    })
}

/// The daemon's final steps before reporting success: no working directory pinned, a umask
/// that keeps files private to the group, standard streams on /dev/null.
pub fn settle() -> std::io::Result<()> {
    chdir("/")?;
    umask(Mode::from_bits_truncate(0o027));
    let null: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into();
    for fd in 0..=2 {
        dup2(null.as_raw_fd(), fd)?;
    }
    Ok(())
}
