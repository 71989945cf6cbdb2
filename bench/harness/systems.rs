//! The systems under test and the machine they share: the origin (the reference registry,
//! pushed to), the reference registry in proxy mode, ringcache, and nginx serving the same
//! files; how each is measured (peak RSS over its processes) and what the scenarios wait on
//! (an idle machine, a blob committed, the origin's fetches settled).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, Proc, Registry};

/// One system under test: its processes (nginx: a master and its workers).
pub struct System {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Where it stores blobs (nginx: the directory it serves).
    pub root: PathBuf,
    proc: Proc,
    log: PathBuf,
}

impl System {
    /// Start `cmd` with its output in the file `log`, not piped through this process: the
    /// reference logs a line per request, and reading those here would take CPU from the
    /// load generator (and a full pipe would stall the reference). `sh` execs the command,
    /// so the process is the system itself.
    pub(crate) fn start(
        name: &'static str,
        addr: SocketAddr,
        root: PathBuf,
        cmd: &Command,
        log: PathBuf,
    ) -> System {
        let mut sh = Command::new("sh");
        sh.args(["-c", "log=$1; shift; exec \"$@\" >\"$log\" 2>&1", "sh"])
            .arg(&log)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        System {
            name,
            addr,
            root,
            proc: Proc::spawn(sh),
            log,
        }
    }

    /// Wait until it accepts connections; if it never does, fail with its log.
    pub(crate) fn wait_listening(&self) {
        let addr = self.addr;
        if std::panic::catch_unwind(|| support::wait_port(addr)).is_err() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} never listened on {addr}; its log:\n{log}", self.name);
        }
    }

    /// Every process id of the system (nginx: its master and workers).
    fn pids(&self) -> Vec<u32> {
        let id = self.proc.child.id();
        let mut all = vec![id];
        if let Ok(out) = Command::new("pgrep").args(["-P", &id.to_string()]).output() {
            all.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
        all
    }

    /// Before a measurement: an idle machine, and the system's peak-RSS mark reset.
    pub fn ready(&self) {
        wait_idle();
        self.reset_hwm();
    }

    /// Reset the peak-RSS mark (VmHWM) of every process of the system.
    fn reset_hwm(&self) {
        for pid in self.pids() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Peak RSS since the last reset, MiB, summed over the system's processes.
    pub fn hwm_mib(&self) -> f64 {
        let mut kb = 0u64;
        for pid in self.pids() {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                for l in s.lines() {
                    if let Some(v) = l.strip_prefix("VmHWM:") {
                        kb += v
                            .trim()
                            .trim_end_matches(" kB")
                            .trim()
                            .parse::<u64>()
                            .unwrap_or(0);
                    }
                }
            }
        }
        kb as f64 / 1024.0
    }

    /// Wait (at most 120 s) until the system has committed `digest` to its storage.
    pub fn wait_stored(&self, digest: &str) {
        let hex = &digest[7..];
        let path = match self.name {
            "reference" => self
                .root
                .join("docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data"),
            _ => self.root.join("blobs/sha256").join(&hex[..2]).join(hex),
        };
        let until = Instant::now() + Duration::from_secs(120);
        while !path.exists() {
            if Instant::now() > until {
                eprintln!("  ({} never stored {digest})", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master (and keep its port): the master goes first
        // (it would respawn a killed worker), then the workers it had. (`Proc`'s own drop
        // then finds the master gone.)
        let workers: Vec<u32> = self.pids().into_iter().skip(1).collect();
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        for pid in workers {
            // SAFETY: kill(2) on a process id; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The origin and the three systems, each on its own loopback port, state under `w`.
pub struct Systems {
    pub origin: Registry,
    pub reference: System,
    pub ringcache: System,
    pub nginx: System,
}

impl Systems {
    /// Start them all; `bin` is ringcache's (release) binary.
    pub fn start(w: &Path, bin: &str) -> Systems {
        let origin = Registry::start(None);
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (pr, pc, pn) = (
            support::free_port(),
            support::free_port(),
            support::free_port(),
        );

        let ref_cfg = w.join("reference.yml");
        std::fs::write(
            &ref_cfg,
            format!(
                "version: 0.1\nlog: {{level: info, formatter: text, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{pr}}}\nproxy: {{remoteurl: {}}}\n",
                w.join("reference").display(),
                origin.url()
            ),
        )
        .unwrap();
        let reference = System::start(
            "reference",
            at(pr),
            w.join("reference"),
            Command::new("docker-registry").arg("serve").arg(&ref_cfg),
            w.join("reference.log"),
        );

        let rc_cfg = w.join("ringcache.yml");
        std::fs::write(
            &rc_cfg,
            format!(
                "version: 0.1\nlog: {{level: {}, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{pc}}}\nproxy: {{remoteurl: {}}}\n",
                std::env::var("BENCH_RC_LOG").unwrap_or_else(|_| "warn".into()),
                w.join("ringcache").display(),
                origin.url()
            ),
        )
        .unwrap();
        let ringcache = System::start(
            "ringcache",
            at(pc),
            w.join("ringcache"),
            Command::new(bin)
                .env_remove("BENCH_RINGCACHE")
                .args(["serve", "--config"])
                .arg(&rc_cfg),
            w.join("ringcache.log"),
        );

        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::fs::write(
            w.join("nginx.conf"),
            format!(
                "worker_processes {workers}; daemon off; pid {}/nginx.pid; error_log {}/nginx.err;\nevents {{ worker_connections 16384; }}\nhttp {{ access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000; keepalive_timeout 75s;\n  types {{ application/vnd.oci.image.manifest.v1+json json; }} default_type application/octet-stream;\n  server {{ listen 127.0.0.1:{pn} backlog=4096; root {}/www; }} }}\n",
                w.display(), w.display(), w.join("").display()
            ),
        )
        .unwrap();
        let nginx = System::start(
            "nginx",
            at(pn),
            w.join("www"),
            Command::new("nginx").arg("-c").arg(w.join("nginx.conf")),
            // Once it has read its config its errors go to nginx.err; a bad config lands here.
            w.join("nginx.log"),
        );
        let s = Systems {
            origin,
            reference,
            ringcache,
            nginx,
        };
        for sys in s.all() {
            sys.wait_listening();
        }
        s
    }

    /// The three, in the order of the first repetition.
    pub fn all(&self) -> [&System; 3] {
        [&self.reference, &self.ringcache, &self.nginx]
    }

    /// The two pull-through caches (the cold scenarios; nginx cannot fetch).
    pub fn proxies(&self) -> [&System; 2] {
        [&self.reference, &self.ringcache]
    }

    /// Upstream GETs and bytes of one path, from the origin's log (Distribution's "response
    /// completed" lines), waiting until the count stops changing.
    pub fn origin_gets(&self, needle: &str) -> (u64, u64) {
        let read = || {
            let log = self.origin.proc.log.lock().unwrap().clone();
            let mut gets = 0;
            let mut bytes = 0;
            for l in log.lines() {
                if l.contains("response completed")
                    && l.contains("http.request.method=GET")
                    && l.contains(needle)
                {
                    gets += 1;
                    if let Some((_, rest)) = l.split_once("http.response.written=") {
                        let v: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        bytes += v.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            (gets, bytes)
        };
        let until = Instant::now() + Duration::from_secs(10);
        let mut last = read();
        let mut stable_since = Instant::now();
        while Instant::now() < until && stable_since.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(50));
            let now = read();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        last
    }

    /// Requests of any method for a path in the origin's log.
    pub fn origin_requests(&self, needle: &str) -> u64 {
        self.origin.proc.count_log(&["response completed", needle]) as u64
    }
}

/// Wait (at most 15 s) until the machine is idle: dirty pages written back (`sync`: what the
/// previous run or the seeding wrote must not throttle the next system's writes), then CPU
/// ≥ 90% idle over 250 ms.
pub fn wait_idle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fn sample() -> (u64, u64) {
        let s = std::fs::read_to_string("/proc/stat").unwrap();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.iter().sum(), v[3] + v.get(4).copied().unwrap_or(0))
    }
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let (t0, i0) = sample();
        std::thread::sleep(Duration::from_millis(250));
        let (t1, i1) = sample();
        if t1 > t0 && (i1 - i0) as f64 / (t1 - t0) as f64 >= 0.90 {
            return;
        }
    }
    eprintln!("  (machine not idle after 15 s; measuring anyway)");
}
