//! Service integration (docs/design.md, "Service integration"): systemd notifications, daemon mode and its pid file,
//! syslog, reload on SIGHUP and dropping root.

mod common;

use common::{
    free_port, process_alive, wait_for_port, wait_until, Client, Kai, ThrowawayUser, KAI,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn receive(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 8192];
    let n = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// Receives until a message contains `needle`; returns every message seen up to it.
fn receive_until(socket: &UnixDatagram, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(message) = receive(socket, deadline - Instant::now()) {
            let done = message.contains(needle);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no message containing {needle:?} within {limit:?}; got {seen:?}");
}

#[test]
fn systemd_notifications_follow_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    let config =
        format!("[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:{port}\"\n");
    let socket_env = socket_path.to_str().unwrap().to_string();
    let mut command = Command::new(KAI);
    let config_path = dir.path().join("kai.toml");
    std::fs::write(&config_path, &config).unwrap();
    command.arg("--config").arg(&config_path);
    command
        .env("NOTIFY_SOCKET", &socket_env)
        .env("WATCHDOG_USEC", "400000");
    command.stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);

    let ready = receive_until(&notify, "READY=1", Duration::from_secs(10));
    // READY=1 only once the memcache port answers.
    let mut client = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(client.call("version\r\n").starts_with("VERSION "));
    assert!(ready.last().unwrap().contains("STATUS="), "{ready:?}");
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(2));
    // STATUS= is refreshed on its own every few seconds, not only with READY=1: the
    // status task reports at once, then again after its 5 s interval.
    let started = Instant::now();
    for _ in 0..2 {
        let refresh = receive_until(&notify, "STATUS=", Duration::from_secs(8));
        assert!(!refresh.last().unwrap().contains("READY=1"), "{refresh:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "refreshed too fast: {:?}",
        started.elapsed()
    );

    kill(pid, Signal::SIGHUP).unwrap();
    let reload = receive_until(&notify, "RELOADING=1", Duration::from_secs(5));
    assert!(
        reload.last().unwrap().contains("MONOTONIC_USEC="),
        "{reload:?}"
    );
    receive_until(&notify, "READY=1", Duration::from_secs(5));

    kill(pid, Signal::SIGTERM).unwrap();
    receive_until(&notify, "STOPPING=1", Duration::from_secs(5));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // Under systemd, log lines carry sd-daemon priority prefixes for journald.
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.lines().any(|l| l.starts_with("<6>kai ")), "{stderr}");
}

/// The threads of process `pid` whose name starts with `prefix`.
fn threads_named(pid: i32, prefix: &str) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut found: Vec<i32> = (tasks.flatten())
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect();
    found.sort_unstable();
    found
}

#[test]
fn a_stuck_client_thread_stops_the_watchdog_petting() {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    let config = "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n";
    let socket = socket_path.to_str().unwrap();
    let env = [("NOTIFY_SOCKET", socket), ("WATCHDOG_USEC", "400000")];
    let kai = Kai::start_with_config(dir, config, &env);
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(2));
    let threads: usize = kai.stats()["threads"].parse().unwrap();
    let client_threads = threads_named(kai.pid(), "kai-client-");
    assert_eq!(client_threads.len(), threads, "{client_threads:?}");

    // Stop one client thread alone, as a request stuck in it would hold it.
    let stuck = Pid::from_raw(client_threads[0]);
    ptrace::seize(stuck, ptrace::Options::empty()).unwrap();
    ptrace::interrupt(stuck).unwrap();
    waitpid(stuck, Some(WaitPidFlag::__WALL)).unwrap();
    // A pet already under way may still arrive; after it, none while the thread is stuck.
    std::thread::sleep(Duration::from_millis(500));
    while receive(&notify, Duration::from_millis(10)).is_some() {}
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = receive(&notify, left.max(Duration::from_millis(1))) else {
            continue;
        };
        assert!(
            !message.contains("WATCHDOG=1"),
            "petted while a client thread was stuck"
        );
    }
    ptrace::detach(stuck, None).unwrap();
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(3));

    let log = kai.log();
    assert!(log.contains("a client thread has not run"), "{log}");
}

#[test]
fn without_notify_socket_there_are_no_notifications() {
    // Kai::start clears NOTIFY_SOCKET; the node simply serves.
    let kai = Kai::start("");
    assert!(kai.client().call("version\r\n").starts_with("VERSION"));
    assert!(kai.log().contains("kai[") && !kai.log().contains("<6>"));
}

#[test]
fn daemon_refuses_to_fork_under_systemd() {
    let out = Command::new(KAI)
        .args(["--daemon", "--config", "/dev/null"])
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--daemon refused"));
}

struct Daemon {
    dir: tempfile::TempDir,
    port: u16,
    pid_file: std::path::PathBuf,
}

impl Daemon {
    fn new() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let pid_file = dir.path().join("kai.pid");
        let config = format!(
            "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:{port}\"\n[log]\nsyslog_socket = \"{}\"\n[daemon]\npid_file = \"{}\"\n",
            dir.path().join("log.sock").display(),
            pid_file.display()
        );
        std::fs::write(dir.path().join("kai.toml"), config).unwrap();
        Daemon {
            dir,
            port,
            pid_file,
        }
    }

    fn start(&self) -> std::process::Output {
        Command::new(KAI)
            .arg("--daemon")
            .arg("--config")
            .arg(self.dir.path().join("kai.toml"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(&self.pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn stop(&self) {
        if let Ok(text) = std::fs::read_to_string(&self.pid_file) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn daemon_mode_reports_serving_through_its_exit_status() {
    let daemon = Daemon::new();
    let started = Instant::now();
    let out = daemon.start();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Exit 0 means serving: no waiting needed.
    let mut client = Client::connect(SocketAddr::from(([127, 0, 0, 1], daemon.port)));
    client.set("k", b"v");

    let pid = daemon.pid();
    assert!(process_alive(pid));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let (session, tty) = (fields[3], fields[4]);
    assert_ne!(
        session,
        pid.to_string(),
        "the daemon must not be a session leader"
    );
    assert_eq!(tty, "0", "the daemon has no controlling terminal");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Umask:\t0027"), "{status}");
    // The pid file is locked by the daemon.
    let err = kai::daemon::pidfile::ensure_not_running(&daemon.pid_file).unwrap_err();
    assert!(err.to_string().contains(&pid.to_string()));

    // A second start is refused while the first runs.
    let again = daemon.start();
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(&format!("kai is already running (pid {pid}")),
        "{stderr}"
    );

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(pid)),
        "daemon did not stop"
    );
    assert!(!daemon.pid_file.exists(), "pid file left behind");
}

#[test]
fn stale_pid_file_is_replaced() {
    let daemon = Daemon::new();
    std::fs::write(&daemon.pid_file, "999999\n").unwrap();
    let out = daemon.start();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon.pid();
    assert_ne!(pid, 999_999);
    assert!(process_alive(pid));
}

#[test]
fn daemon_startup_failures_reach_the_parent() {
    // Port in use: reported before forking.
    let daemon = Daemon::new();
    let taken = std::net::TcpListener::bind(("127.0.0.1", daemon.port)).unwrap();
    let out = daemon.start();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on memcache.listen"),
        "{stderr}"
    );
    drop(taken);

    // Unwritable pid file: found by the daemon after forking, relayed to the parent.
    let out = Command::new(KAI)
        .arg("--daemon")
        .arg("--config")
        .arg(daemon.dir.path().join("kai.toml"))
        .args(["--pid-file", "/nonexistent/dir/kai.pid"])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write pid file /nonexistent/dir/kai.pid"),
        "{stderr}"
    );
    assert!(!wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], daemon.port)),
        Duration::from_millis(300)
    ));
}

/// RFC 3164 as sent to a local socket: `<PRI>Mmm dd hh:mm:ss kai[PID]: message`.
fn parse_3164(line: &str) -> (u32, i32, String) {
    let rest = line.strip_prefix('<').unwrap();
    let (priority, rest) = rest.split_once('>').unwrap();
    let (timestamp, rest) = rest.split_at(15);
    assert_eq!(timestamp.as_bytes()[3], b' ', "{line}");
    assert_eq!(&timestamp[9..10], ":", "{line}");
    let rest = rest
        .strip_prefix(" kai[")
        .unwrap_or_else(|| panic!("no ident in {line}"));
    let (pid, message) = rest.split_once("]: ").unwrap();
    (
        priority.parse().unwrap(),
        pid.parse().unwrap(),
        message.to_string(),
    )
}

#[test]
fn daemonized_logs_go_to_syslog_and_survive_a_syslog_restart() {
    let daemon = Daemon::new();
    std::fs::write(
        daemon.dir.path().join("kai.toml"),
        format!(
            "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:{}\"\n[log]\nfacility = \"local3\"\nsyslog_socket = \"{}\"\n",
            daemon.port,
            daemon.dir.path().join("log.sock").display()
        ),
    )
    .unwrap();
    let log_path = daemon.dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&log_path).unwrap();
    let out = Command::new(KAI)
        .arg("--daemon")
        .arg("--config")
        .arg(daemon.dir.path().join("kai.toml"))
        .arg("--pid-file")
        .arg(&daemon.pid_file)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon.pid();
    let lines = receive_until(&syslog, "serving memcache on", Duration::from_secs(5));
    let (priority, logged_pid, message) = parse_3164(lines.last().unwrap());
    // local3 (19) * 8 + info (6)
    assert_eq!(priority, 19 * 8 + 6, "{message}");
    assert_eq!(logged_pid, pid);

    // The syslog daemon restarts: its socket disappears and comes back.
    drop(syslog);
    std::fs::remove_file(&log_path).unwrap();
    let syslog = UnixDatagram::bind(&log_path).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    let lines = receive_until(&syslog, "configuration reloaded", Duration::from_secs(5));
    assert_eq!(parse_3164(lines.last().unwrap()).0, 19 * 8 + 6);

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let lines = receive_until(&syslog, "kai stopped", Duration::from_secs(10));
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM received")),
        "{lines:?}"
    );
}

#[test]
fn sighup_applies_live_settings_and_survives_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("kai.toml");
    let base = "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n";
    let mut kai = Kai::start_with(dir, &format!("{base}max_connections = 10\n"), &[], &[]);
    let addr = kai.addr;
    let mut first = kai.client();
    let mut second = kai.client();
    let mut third = kai.client();
    for client in [&mut first, &mut second, &mut third] {
        assert!(client.call("version\r\n").starts_with("VERSION"));
    }
    drop(third);

    std::fs::write(
        &config_path,
        format!("{base}max_connections = 2\nmax_item_size = \"2KiB\"\n[log]\nlevel = \"debug\"\n"),
    )
    .unwrap();
    kai.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || kai
        .log()
        .contains("configuration reloaded")));
    // The new item limit applies to connections already open.
    first.send(b"set big 0 0 3000\r\n");
    first.send(&[b'x'; 3000]);
    first.send(b"\r\n");
    assert_eq!(first.line(), "SERVER_ERROR object too large for cache\r\n");
    // Two connections are open: a third is refused, and (debug level) the refusal is logged.
    assert!(wait_until(Duration::from_secs(5), || {
        Client::connect(addr).read_to_close() == b"SERVER_ERROR too many connections\r\n"
    }));
    assert!(wait_until(Duration::from_secs(2), || kai
        .log()
        .contains("refusing")));

    std::fs::write(&config_path, "[memcache\nbroken").unwrap();
    kai.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || kai.log().contains(
        "configuration reload failed, keeping the running one"
    )));
    assert!(second.call("version\r\n").starts_with("VERSION"));
    assert_eq!(second.stats("stats settings")["maxconns"], "2");

    std::fs::write(
        &config_path,
        format!(
            "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    kai.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || kai.log().contains(
        "changes to memcache.listen take effect after a restart"
    )));
    kai.signal(Signal::SIGTERM);
    assert_eq!(kai.wait(Duration::from_secs(10)).unwrap().code(), Some(0));
}

#[test]
fn root_drops_to_the_configured_user() {
    let throwaway = ThrowawayUser::create("d");
    let name = throwaway.0.clone();
    let user = nix::unistd::User::from_name(&name).unwrap().unwrap();

    let kai = Kai::start(&format!("[daemon]\nuser = \"{name}\"\n"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", kai.pid())).unwrap();
    let ids = |field: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid:"), vec![user.uid.as_raw(); 4]);
    assert_eq!(ids("Gid:"), vec![user.gid.as_raw(); 4]);
    assert!(kai.client().call("version\r\n").starts_with("VERSION"));
    assert!(kai.log().contains(&format!("running as user {name}")));

    // An unknown user stops kai rather than leaving it running as root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kai.toml"),
        "[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n[daemon]\nuser = \"no-such-user-kai\"\n",
    )
    .unwrap();
    let out = Command::new(KAI)
        .arg("--config")
        .arg(dir.path().join("kai.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user \"no-such-user-kai\" does not exist")
    );
}
