//! The SysV init script (init.d/kai) driving the real binary, as root, with and without
//! start-stop-daemon: start/stop/restart/reload/status with LSB exit codes.

mod common;

use common::{process_alive, Client, ThrowawayUser};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    start_stop_daemon: &'static str,
}

impl Setup {
    fn new(user: &str, start_stop_daemon: &'static str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        // The daemon drops to `user`, who must reach the run directory inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = common::free_port();
        let setup = Setup {
            dir,
            port,
            user: user.to_string(),
            start_stop_daemon,
        };
        setup.write_config(64);
        std::fs::write(setup.path("default"), "ENABLED=yes\nKAI_OPTS=\"\"\n").unwrap();
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, max_connections: u32) {
        let config = format!(
            "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:{}\"\nmax_connections = {max_connections}\n[log]\nsyslog_socket = \"{}\"\n",
            self.port,
            self.path("log.sock").display()
        );
        std::fs::write(self.path("kai.toml"), config).unwrap();
    }

    fn pid_file(&self) -> PathBuf {
        self.path("run/kai.pid")
    }

    /// Runs `init.d/kai ACTION`; returns the exit code and output.
    fn run(&self, action: &str) -> (i32, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("init.d/kai");
        let out = Command::new(script)
            .arg(action)
            .env("DAEMON", common::KAI)
            .env("CONFIG", self.path("kai.toml"))
            .env("PIDFILE", self.pid_file())
            .env("KAI_USER", &self.user)
            .env("KAI_DEFAULTS", self.path("default"))
            .env("START_STOP_DAEMON", self.start_stop_daemon)
            .env("STOP_TIMEOUT", "10")
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.pid_file())
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn client(&self) -> Client {
        Client::connect(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn lifecycle(start_stop_daemon: &'static str, tag: &str) {
    let user = ThrowawayUser::create(tag);
    let setup = Setup::new(&user.0, start_stop_daemon);
    let uid = nix::unistd::User::from_name(&user.0)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();

    assert_eq!(setup.run("status").0, 3, "stopped");
    let (code, text) = setup.run("start");
    assert_eq!(code, 0, "{text}");
    // The script returns once kai serves.
    let mut client = setup.client();
    client.set("k", b"v");
    let pid = setup.pid();
    assert_eq!(uid_of(pid), uid, "kai runs as the unprivileged user");
    let (code, text) = setup.run("status");
    assert_eq!((code, text.contains(&pid.to_string())), (0, true), "{text}");
    let (code, text) = setup.run("start");
    assert_eq!(code, 0);
    assert!(text.contains("already running"), "{text}");

    setup.write_config(32);
    assert_eq!(setup.run("reload").0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats("stats settings")["maxconns"] != "32" {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(setup.run("force-reload").0, 0);

    let (code, text) = setup.run("restart");
    assert_eq!(code, 0, "{text}");
    let restarted = setup.pid();
    assert_ne!(restarted, pid);
    assert!(!process_alive(pid));
    assert_eq!(setup.run("try-restart").0, 0);
    assert_ne!(setup.pid(), restarted);

    let current = setup.pid();
    let (code, text) = setup.run("stop");
    assert_eq!(code, 0, "{text}");
    assert!(!process_alive(current));
    assert!(!setup.pid_file().exists());
    assert_eq!(setup.run("status").0, 3);
    assert_eq!(
        setup.run("stop").0,
        0,
        "stopping a stopped service succeeds"
    );
    assert_eq!(setup.run("reload").0, 7, "reload needs a running service");
    assert_eq!(setup.run("condrestart").0, 0);
    assert_eq!(
        setup.run("status").0,
        3,
        "condrestart does not start a stopped service"
    );

    // A pid file naming a dead process: status 1, and start replaces it.
    std::fs::create_dir_all(setup.pid_file().parent().unwrap()).unwrap();
    std::fs::write(setup.pid_file(), "999999\n").unwrap();
    assert_eq!(setup.run("status").0, 1);
    assert_eq!(setup.run("start").0, 0);
    assert_ne!(setup.pid(), 999_999);
    assert_eq!(setup.run("bogus").0, 2);

    std::fs::write(setup.path("default"), "ENABLED=no\n").unwrap();
    assert_eq!(setup.run("stop").0, 0);
    let (code, text) = setup.run("start");
    assert_eq!(code, 0);
    assert!(text.contains("disabled"), "{text}");
    assert_eq!(setup.run("status").0, 3);
}

#[test]
fn init_script_with_start_stop_daemon() {
    lifecycle("start-stop-daemon", "s");
}

#[test]
fn init_script_with_plain_shell() {
    lifecycle("no-such-start-stop-daemon", "p");
}

#[test]
fn init_script_is_shellcheck_clean_and_has_lsb_headers() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("init.d/kai");
    let out = Command::new("shellcheck")
        .arg(&script)
        .output()
        .expect("shellcheck is not installed: run `make test`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    for header in [
        "### BEGIN INIT INFO",
        "# Provides:          kai",
        "# Required-Start:    $network $remote_fs $syslog",
        "# Default-Start:     2 3 4 5",
        "# chkconfig: 2345",
        "### END INIT INFO",
    ] {
        assert!(text.contains(header), "missing {header}");
    }
}
