//! Test support: real peers (ringcache's binary, the reference registry, skopeo), an in-repo
//! counting test upstream, image building, and a small raw HTTP/1.1 client.
//!
//! Every wait here is bounded in count and time and waits on an event (a log line, a request
//! arriving), never a fixed sleep; a condition with no event to wait on (a port opening, a
//! metric, a file's size) is polled by the one helper for that, `eventually`.
#![allow(dead_code)]

pub mod certs;
pub mod clients;
pub mod cluster;
pub mod http;
pub mod image;
pub mod stream;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tests that pause ringcache at named points need the `failpoints` feature (scripts/test.sh
/// enables it); without it they fail with this message rather than pass vacuously.
pub fn require_failpoints() {
    #[cfg(not(feature = "failpoints"))]
    panic!("this test needs `cargo test --features failpoints` (scripts/test.sh passes it)");
}

/// Install a peer if it is missing (the test command installs them; this is a clear failure
/// when someone runs `cargo test` alone).
pub fn require(bin: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{bin} is not installed: run scripts/test.sh, which installs the test peers"
    );
}

/// A free loopback port (bound and released; the peer binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `probe` until it gives a value, and return that value: tried at once, then after
/// pauses that start at 5 ms and double up to 100 ms; the last try comes at `within`. Bounded
/// in time (`within`) and so in count (`within` / 5 ms tries at most). On timeout, panics
/// naming `what` and the time waited.
///
/// For conditions that have no event to wait on (a port, a metric, a file's size); a log line
/// has one (`Proc::wait_log`, `Proc::wait_count`).
pub fn eventually<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    const PAUSE_FIRST: Duration = Duration::from_millis(5);
    const PAUSE_MAX: Duration = Duration::from_millis(100);
    let started = Instant::now();
    let tries_max = within.as_millis() / PAUSE_FIRST.as_millis() + 2;
    let mut pause = PAUSE_FIRST;
    for _ in 0..tries_max {
        if let Some(v) = probe() {
            return v;
        }
        let waited = started.elapsed();
        if waited >= within {
            break;
        }
        std::thread::sleep(pause.min(within - waited));
        pause = (pause * 2).min(PAUSE_MAX);
    }
    panic!(
        "{what}: not within {within:?} (waited {:?})",
        started.elapsed()
    );
}

/// Wait until `addr` accepts connections (bounded: 20 s).
pub fn wait_port(addr: SocketAddr) {
    eventually(Duration::from_secs(20), &format!("{addr} opens"), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(drop)
    })
}

/// A child process killed on drop, with its stderr collected.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    signal: Arc<std::sync::Condvar>,
}

impl Proc {
    /// Spawn with stderr (and stdout) captured into `log`.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let signal = Arc::new(std::sync::Condvar::new());
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            let signal = signal.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                    signal.notify_all();
                }
            });
        }
        Proc { child, log, signal }
    }

    /// Wait until the log has a line containing `needle`; returns that line (bounded: `within`).
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut log = self.log.lock().unwrap();
        loop {
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no log line with {needle:?} within {within:?}; log:\n{}",
                *log
            );
            log = self.signal.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Whether a log line with every one of `needles` appears within `within` (no panic).
    pub fn saw_within(&self, needles: &[&str], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut log = self.log.lock().unwrap();
        loop {
            if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            log = self.signal.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Wait until at least `n` log lines contain every one of `needles` (bounded: `within`).
    pub fn wait_count(&self, needles: &[&str], n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut log = self.log.lock().unwrap();
        loop {
            let c = log
                .lines()
                .filter(|l| needles.iter().all(|x| l.contains(x)))
                .count();
            if c >= n {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "only {c} of {n} log lines with {needles:?} within {within:?}; log:\n{}",
                *log
            );
            log = self.signal.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// How many log lines contain every one of `needles`.
    pub fn count_log(&self, needles: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Peak resident memory (VmHWM) of the process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/PID/status");
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        eventually(within, "the process exits", || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ringcache's binary, started on port 0 with a temp root; knows its address.
pub struct Ringcache {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Ringcache {
    /// Start with a config whose `http.addr` and root are filled in. `extra` is more YAML
    /// appended (e.g. a `ringcache:` section).
    pub fn start(upstream: &str, extra: &str) -> Ringcache {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut rc = Ringcache::start_at(upstream, extra, &root);
        rc._dir = Some(dir);
        rc
    }

    /// Start in a temp root with extra environment.
    pub fn start_with_env(upstream: &str, extra: &str, env: &[(&str, &str)]) -> Ringcache {
        let dir = tempfile::tempdir().unwrap();
        let mut rc = Ringcache::start_env(upstream, extra, &dir.path().join("data"), env);
        rc._dir = Some(dir);
        rc
    }

    /// Start on an existing root (for restart tests).
    pub fn start_at(upstream: &str, extra: &str, root: &Path) -> Ringcache {
        Ringcache::start_env(upstream, extra, root, &[])
    }

    /// Start with extra environment (e.g. `RINGCACHE_FAILPOINTS`).
    pub fn start_env(upstream: &str, extra: &str, root: &Path, env: &[(&str, &str)]) -> Ringcache {
        let config = format!(
            "version: 0.1\nlog: {{level: debug}}\nhttp: {{addr: 127.0.0.1:0}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {upstream}}}\n{extra}",
            root.display()
        );
        let cfg_path = root.with_extension("yml");
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        std::fs::write(&cfg_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "ringcache=debug")
            .envs(env.iter().copied());
        let proc = Proc::spawn(cmd);
        let line = proc.wait_log("listening on ", Duration::from_secs(20));
        let addr = addr_after(&line, "listening on ");
        Ringcache {
            proc,
            addr,
            root: root.to_path_buf(),
            _dir: None,
        }
    }

    /// Start in a temp root with the debug listener on a free port: the server and the
    /// debug listener's address.
    pub fn start_with_debug(upstream: &str) -> (Ringcache, SocketAddr) {
        let rc =
            Ringcache::start_with_env(upstream, "", &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
        let dbg = rc.debug_addr();
        (rc, dbg)
    }

    /// The debug listener's address, from its start line (needs `REGISTRY_HTTP_DEBUG_ADDR`).
    pub fn debug_addr(&self) -> SocketAddr {
        let line = self
            .proc
            .wait_log("debug listener", Duration::from_secs(10));
        addr_after(&line, ") on ")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Wait (at most 20 s, polling) until the metric `name` on the debug listener `dbg` satisfies
/// `ok`; its last value.
pub fn wait_metric(dbg: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    // Each new value is printed (the test's output shows it on a failure).
    let mut last = None;
    let what = format!("the metric {name} reaches the value wanted");
    eventually(Duration::from_secs(20), &what, || {
        let body = String::from_utf8(http::get(dbg, "/metrics").body).unwrap();
        let v = metric_in(&body, name);
        if last != Some(v) {
            eprintln!("{name} = {v}");
            last = Some(v);
        }
        ok(v).then_some(v)
    })
}

/// The value of the metric `name` in a Prometheus text body (0 if absent): `name` may carry
/// labels (`a_total{type="blob"}`), and the value is the sum over every series of that name
/// whose labels include them (so `{type="blob"}` sums the series of every `upstream`).
pub fn metric_in(body: &str, name: &str) -> f64 {
    let split = |s: &str| -> (String, Vec<String>) {
        match s.split_once('{') {
            Some((n, rest)) => (
                n.to_string(),
                rest.trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            None => (s.to_string(), Vec::new()),
        }
    };
    let (want, labels) = split(name);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, have) = split(series);
            n == want && labels.iter().all(|l| have.contains(l))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// The socket address that follows `marker` in a log line.
pub fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let word = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line}"));
    strip_ansi(word)
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// The reference registry (Debian's docker-registry, Distribution 2.8) on a free port.
pub struct Registry {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    /// The TLS certificates, kept for as long as the registry runs.
    _tls: Option<tempfile::TempDir>,
}

impl Registry {
    /// `htpasswd`: optional (user, password) to protect it with Basic auth.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_with(htpasswd, None)
    }

    /// `proxy_of`: run it as a pull-through cache of that URL (the reference proxy).
    pub fn start_with(htpasswd: Option<(&str, &str)>, proxy_of: Option<&str>) -> Registry {
        Registry::start_full(htpasswd, proxy_of, None)
    }

    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh CA; returns the CA's
    /// PEM path (for ringcache's `ca_file`) beside the registry.
    pub fn start_tls() -> (Registry, PathBuf) {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| certs::openssl(d, args);
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ringcache test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let tls = format!(
            "tls: {{certificate: {}, key: {}}}",
            d.join("leaf.pem").display(),
            d.join("leaf.key").display()
        );
        let mut reg = Registry::start_full(None, None, Some(&tls));
        let ca = d.join("ca.pem");
        reg._tls = Some(dir);
        (reg, ca)
    }

    fn start_full(
        htpasswd: Option<(&str, &str)>,
        proxy_of: Option<&str>,
        tls: Option<&str>,
    ) -> Registry {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth = String::new();
        if let Some((user, password)) = htpasswd {
            require("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            auth = format!(
                "auth: {{htpasswd: {{realm: test-realm, path: {}}}}}\n",
                file.display()
            );
        }
        let proxy = proxy_of
            .map(|u| format!("proxy: {{remoteurl: {u}}}\n"))
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}, {}}}\n{auth}{proxy}",
            dir.path().join("data").display(),
            tls.unwrap_or("secret: x")
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        let proc = Proc::spawn(cmd);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_port(addr);
        Registry {
            proc,
            addr,
            _dir: dir,
            _tls: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blob GETs the registry has answered (from its log).
    pub fn blob_gets(&self) -> usize {
        self.proc.count_log(&[
            "http.request.method=GET",
            "/blobs/sha256:",
            "response completed",
        ])
    }
}

/// `skopeo copy` from a registry at `addr` into an OCI layout; returns the elapsed time.
pub fn skopeo_copy(addr: SocketAddr, image: &str, dest: &Path, creds: Option<&str>) -> Duration {
    require("skopeo");
    let started = Instant::now();
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--retry-times=0",
    ]);
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    }
    cmd.arg(format!("docker://{addr}/{image}"))
        .arg(format!("oci:{}", dest.display()));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    sha256_hex(&data)
}

pub fn sha256_hex(data: &[u8]) -> String {
    ringcache::digest::Digest::of(data).hex()
}

/// Every file under `dir`, relative path → sha256.
pub fn tree_hashes(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    sha256_file(&p),
                );
            }
        }
    }
    out
}
