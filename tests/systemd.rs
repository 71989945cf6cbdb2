//! Running under systemd: sd_notify messages on a NOTIFY_SOCKET the test owns (READY after the
//! listeners accept, STATUS, WATCHDOG cadence, the watchdog withheld while a worker's event loop
//! is stuck, STOPPING on SIGTERM), socket activation with a socket passed as fd 3, and the
//! open-files limit raised to the hard limit.

mod support;

use std::os::unix::net::UnixDatagram;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use support::{http, upstream::TestUpstream, Proc};

fn config(dir: &std::path::Path, upstream: &str, addr: &str) -> std::path::PathBuf {
    let p = dir.join("config.yml");
    std::fs::write(
        &p,
        format!("version: 0.1\nhttp: {{addr: '{addr}'}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {upstream}}}\nringcache: {{workers: 2}}\n", dir.join("data").display()),
    )
    .unwrap();
    p
}

/// The test's NOTIFY_SOCKET, read continuously by a thread (as systemd does: a full datagram
/// queue would block the sender).
struct Notifications {
    seen: Arc<(Mutex<Vec<(Instant, String)>>, Condvar)>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let sock = UnixDatagram::bind(path).unwrap();
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let theirs = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                theirs.0.lock().unwrap().push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
                theirs.1.notify_all();
            }
        });
        Notifications { seen }
    }

    /// Wait until `n` messages containing `want` have arrived (bounded); returns them all.
    fn until(&self, want: &str, n: usize, within: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + within;
        let mut seen = self.seen.0.lock().unwrap();
        loop {
            if seen.iter().filter(|(_, m)| m.contains(want)).count() >= n {
                return seen.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "fewer than {n} {want:?} within {within:?}; got {:?}",
                *seen
            );
            seen = self.seen.1.wait_timeout(seen, left).unwrap().0;
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_on_a_notify_socket() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notes = Notifications::bind(&notify_path);
    let cfg = config(dir.path(), &up.url(), "127.0.0.1:0");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut rc = Proc::spawn(cmd);
    let seen = notes.until("READY=1", 1, Duration::from_secs(20));
    let ready = seen
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap()
        .1
        .clone();
    assert!(ready.contains("STATUS=serving on"), "{ready}");
    // READY means every worker accepts: a request now is served.
    let line = rc.wait_log("listening on ", Duration::from_secs(1));
    let addr = support::addr_after(&line, "listening on ");
    assert_eq!(http::get(addr, "/v2/").status, 200);
    // WATCHDOG=1 at half of WATCHDOG_USEC (200 ms): five pings well inside 3 s.
    let start = Instant::now();
    notes.until("WATCHDOG=1", 5, Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_secs(3));
    rc.signal(libc::SIGTERM);
    notes.until("STOPPING=1", 1, Duration::from_secs(10));
    assert_eq!(rc.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_stuck_worker_lets_the_watchdog_fire() {
    support::require_failpoints();
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notes = Notifications::bind(&notify_path);
    let cfg = config(dir.path(), &up.url(), "127.0.0.1:0");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
    // Two seconds after start, one worker's event loop blocks for 3 s.
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RINGCACHE_FAILPOINTS", "worker-stall=3s");
    let rc = Proc::spawn(cmd);
    notes.until("READY=1", 1, Duration::from_secs(20));
    rc.wait_log("blocking the thread", Duration::from_secs(10));
    let stalled_at = Instant::now();
    // Pings stop while the worker is stuck, and resume after.
    rc.wait_log("withholding the watchdog ping", Duration::from_secs(5));
    rc.wait_count(&["worker=", "withholding"], 5, Duration::from_secs(5));
    let before = notes
        .until("WATCHDOG=1", 1, Duration::from_secs(1))
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    let seen = notes.until("WATCHDOG=1", before + 1, Duration::from_secs(10));
    let pings: Vec<Instant> = seen
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    let gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(1500),
        "pings went on while a worker was stuck: max gap {gap:?}"
    );
    assert!(stalled_at.elapsed() < Duration::from_secs(10));
}

#[test]
fn socket_activation_serves_on_the_inherited_socket_and_raises_nofile() {
    use std::os::fd::AsRawFd;
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    // The socket "systemd" passes. The config names another address, which must stay unused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let unused = support::free_port();
    let cfg = config(dir.path(), &up.url(), &format!("127.0.0.1:{unused}"));
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec {} serve --config {}",
        env!("CARGO_BIN_EXE_ringcache"),
        cfg.display()
    ));
    // SAFETY: between fork and exec, only async-signal-safe calls: dup2 onto fd 3 (which clears
    // its close-on-exec flag) and setrlimit to lower the soft open-files limit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_cur.min(1024);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let rc = Proc::spawn(cmd);
    rc.wait_log(
        "serving on sockets passed by systemd",
        Duration::from_secs(20),
    );
    rc.wait_log("ready", Duration::from_secs(20));
    drop(listener);
    for _ in 0..4 {
        assert_eq!(http::get(addr, "/v2/").status, 200);
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", unused)).is_err(),
        "it must not bind its own listener"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", rc.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        nums[0], nums[1],
        "soft open-files limit raised to the hard limit: {line}"
    );
    assert_ne!(nums[0], "1024", "it started at 1024: {line}");
}
