//! Real container clients pulling through a mirror (ringcache): containerd driven by `ctr`,
//! podman, and dockerd driven by `docker`. Each runs as root with every byte of its state
//! (root, state, sockets, config, caches) under its own temp dir, talks to loopback only, and
//! is stopped and cleaned up on drop.
//!
//! Isolation from the host, per client:
//! - Each daemon (and podman, which has none) runs in a private mount namespace (`unshare
//!   --mount`), so every mount it makes (containerd's unpack mounts, for one) dies with it and
//!   never shows on the host. Drop also unmounts anything left under the temp dir.
//! - containerd: its own config (root, state, temp, gRPC/ttrpc sockets); CRI, the runtimes
//!   and `opt` (which creates /opt/containerd) disabled; the `native` snapshotter (no
//!   overlayfs needed). A registry's `hosts.toml` names ringcache as its mirror and a closed
//!   loopback port as its server, so a failing mirror fails the pull at once, off the network.
//! - podman: `--root`/`--runroot`/`--tmpdir` and a `vfs` storage.conf, registries.conf,
//!   containers.conf, policy and auth file of its own; `/var/lib` is a temp dir inside its
//!   namespace because podman 4.3 keeps its blob-info cache at the fixed path
//!   /var/lib/containers/cache. A registry's location is a closed loopback port, its mirror
//!   ringcache, and references are fully qualified (short names are refused).
//! - dockerd: its own containerd (above), data and exec roots, pid file, socket and an almost
//!   empty `--config-file` (it moves the trust key out of /etc/docker); no bridge, iptables,
//!   or ip forwarding; `vfs` storage. `/run` is a temp dir in its namespace (dockerd creates
//!   /run/docker/plugins). Docker mirrors Docker Hub only, so images are `docker.io/...` and
//!   ringcache plays Docker Hub. When the mirror fails, dockerd falls back to
//!   registry-1.docker.io: its /etc/hosts maps Docker Hub's names to 127.0.0.1, so that
//!   fallback fails at once and never leaves the machine, and `pull` says it happened.
//!
//! Every wait is bounded: daemons must start within [`START_WITHIN`], each command must end
//! within [`COMMAND_WITHIN`] or is killed.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{require, Proc};

/// How long a daemon may take to start (it takes well under a second here).
pub const START_WITHIN: Duration = Duration::from_secs(30);
/// How long one client command (a pull, an inspect) may take before it is killed; a pull of a
/// test image takes well under a second, a failing podman pull about 3 s (three retries).
pub const COMMAND_WITHIN: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// What a client pulled, as the client itself recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The digest the reference resolved to: an index's or a manifest list's when a tag names
    /// one, else the image manifest's.
    pub digest: String,
    /// The image's config digest (its image ID): which image, and so which platform, the
    /// client took.
    pub config: String,
}

/// A container client that pulls images.
pub trait Client {
    /// The client's name, for messages.
    fn name(&self) -> &'static str;
    /// Pull a fully qualified `reference` (`host/repo:tag` or `host/repo@digest`) for
    /// `platform` (`os/arch`). `Err` carries the client's output and its daemon's log.
    fn pull(&self, reference: &str, platform: &str) -> Result<Pulled, String>;
}

/// The checks every client test starts with: root, and the peers installed.
pub fn require_root_and(bins: &[&str]) {
    // SAFETY: geteuid(2) has no preconditions and no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "container clients need root (their daemons mount, and own sockets and state)"
    );
    for bin in bins {
        require(bin);
    }
}

/// Run `cmd` to completion, killed after `within` (with everything it started: it leads a
/// process group of its own, so no helper is left holding its output pipes); its stdout, or
/// an error naming the command with its exit status and output.
pub fn run(mut cmd: Command, within: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    })
    .collect();
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                // SAFETY: kill(2) of the process group the child leads; no memory effects.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let (stdout, stderr) = (outputs.next().unwrap(), outputs.next().unwrap());
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{cmd:?} failed ({s}):\n{stdout}\n{stderr}")),
        None => Err(format!(
            "{cmd:?} did not finish within {within:?} (killed):\n{stdout}\n{stderr}"
        )),
    }
}

/// `program args` in a private mount namespace, after bind-mounting each `(source, target)`;
/// the targets are fixed paths of ours, the sources temp dirs (passed as arguments, so no
/// quoting of paths).
fn namespaced(binds: &[(&Path, &str)], program: &str) -> Command {
    let mut script = String::new();
    for (i, (_, target)) in binds.iter().enumerate() {
        script.push_str(&format!("mount --bind \"${}\" '{target}' && ", i + 1));
    }
    script.push_str(&format!("shift {} && exec \"$@\"", binds.len()));
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    for (source, _) in binds {
        cmd.arg(source);
    }
    cmd.arg(program);
    cmd
}

/// Unmount (lazily) whatever is still mounted under `dir` in this mount namespace, deepest
/// first. The daemons mount only in their own namespaces; this is the backstop.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: umount2(2) with a NUL-terminated path and a valid flag; no memory effects.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// SIGTERM, then wait (bounded) for the exit; `Proc`'s drop kills whatever is left.
fn stop(proc: &mut Proc) {
    proc.signal(libc::SIGTERM);
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if !matches!(proc.child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `n` lines of a daemon's log, for failure messages.
fn log_tail(proc: &Proc, n: usize) -> String {
    let log = proc.log.lock().unwrap();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `(os, arch)` of an `os/arch` platform.
fn split_platform(platform: &str) -> (&str, &str) {
    platform
        .split_once('/')
        .unwrap_or_else(|| panic!("platform {platform:?} is not os/arch"))
}

/// A containerd daemon of its own, driven by `ctr`.
pub struct Containerd {
    proc: Proc,
    socket: PathBuf,
    hosts: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Start containerd with each `(registry, mirror)`: pulls from `registry` go to `mirror`
    /// (plain HTTP), and never anywhere else.
    pub fn start(mirrors: &[(&str, SocketAddr)]) -> Containerd {
        // containerd's hosts.toml: the mirror first (pull and resolve), then `server`, a
        // closed loopback port, so a mirror failure fails at once.
        let files: Vec<(&str, String)> = mirrors
            .iter()
            .map(|(registry, mirror)| {
                (
                    *registry,
                    format!(
                        "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                    ),
                )
            })
            .collect();
        Containerd::start_with_hosts(&files)
    }

    /// Start containerd with each `(directory, hosts.toml)` under its hosts directory
    /// (`_default` is containerd's catch-all for registries without a directory).
    pub fn start_with_hosts(files: &[(&str, String)]) -> Containerd {
        require_root_and(&["containerd", "ctr", "unshare"]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
temp = "{temp}"
# Only the content store, the metadata, the native snapshotter and the services ctr needs to
# pull: no CRI, no runtimes or tasks, no /opt/containerd.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.restart",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.runtime.v1.linux",
  "io.containerd.runtime.v2.task",
  "io.containerd.monitor.v1.cgroups",
  "io.containerd.service.v1.tasks-service",
  "io.containerd.grpc.v1.tasks",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[debug]
  level = "info"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            temp = d.join("tmp").display(),
            socket = socket.display(),
            ttrpc = d.join("containerd.ttrpc.sock").display(),
        );
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        std::fs::write(d.join("config.toml"), config).unwrap();
        let hosts = d.join("hosts.d");
        std::fs::create_dir_all(&hosts).unwrap();
        for (registry, text) in files {
            let file = hosts.join(registry).join("hosts.toml");
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        let mut cmd = namespaced(&[], "containerd");
        cmd.arg("--config").arg(d.join("config.toml"));
        let proc = Proc::spawn(cmd);
        proc.wait_log("containerd successfully booted", START_WITHIN);
        Containerd {
            proc,
            socket,
            hosts,
            dir,
        }
    }

    /// The gRPC socket (dockerd's `--containerd`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    fn ctr_run(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.ctr();
        cmd.args(args);
        run(cmd, COMMAND_WITHIN)
            .map_err(|e| format!("{e}\ncontainerd log:\n{}", log_tail(&self.proc, 20)))
    }

    /// A blob from the content store, as JSON.
    fn content_json(&self, digest: &str) -> Result<serde_json::Value, String> {
        let body = self.ctr_run(&["content", "get", digest])?;
        serde_json::from_str(&body).map_err(|e| format!("content {digest} is not JSON: {e}"))
    }
}

impl Client for Containerd {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn pull(&self, reference: &str, platform: &str) -> Result<Pulled, String> {
        self.ctr_run(&[
            "images",
            "pull",
            "--hosts-dir",
            self.hosts.to_str().unwrap(),
            "--platform",
            platform,
            "--snapshotter",
            "native",
            reference,
        ])?;
        // `ctr images ls`: REF TYPE DIGEST ...; the target the reference resolved to.
        let list = self.ctr_run(&["images", "ls"])?;
        let digest = list
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&reference))
            .and_then(|f| f.get(2).map(|d| d.to_string()))
            .ok_or_else(|| format!("{reference} not in ctr images ls:\n{list}"))?;
        // Walk index → this platform's manifest → config, as containerd stored them.
        let (os, arch) = split_platform(platform);
        let mut manifest = self.content_json(&digest)?;
        if let Some(entries) = manifest["manifests"].as_array() {
            let chosen = entries
                .iter()
                .find(|e| e["platform"]["os"] == os && e["platform"]["architecture"] == arch)
                .and_then(|e| e["digest"].as_str())
                .ok_or_else(|| format!("{digest} has no {platform} entry"))?
                .to_string();
            manifest = self.content_json(&chosen)?;
        }
        let config = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| format!("no config digest in {manifest}"))?
            .to_string();
        Ok(Pulled { digest, config })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop(&mut self.proc);
        unmount_under(self.dir.path());
    }
}

/// podman (no daemon) with storage, configuration and caches of its own.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// Set podman up with each `(registry, mirror)`: pulls from `registry` go to `mirror`
    /// (plain HTTP), and never anywhere else.
    pub fn start(mirrors: &[(&str, SocketAddr)]) -> Podman {
        let locations: Vec<(&str, String)> = mirrors
            .iter()
            .map(|(registry, mirror)| (*registry, mirror.to_string()))
            .collect();
        Podman::start_with_locations(&locations)
    }

    /// Set podman up with each `(registry, mirror location)`: a location may hold a path
    /// (`127.0.0.1:5000/ghcr.io`), which podman puts before the repository name.
    pub fn start_with_locations(mirrors: &[(&str, String)]) -> Podman {
        require_root_and(&["podman", "unshare"]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["root", "run", "tmp", "varlib", "net", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Fully qualified names only; each registry's own location is a closed loopback port
        // (tried after its mirror: a failing mirror fails the pull, off the network).
        let mut registries =
            String::from("unqualified-search-registries = []\nshort-name-mode = \"enforcing\"\n");
        for (registry, mirror) in mirrors {
            registries.push_str(&format!(
                "\n[[registry]]\nprefix = \"{registry}\"\nlocation = \"127.0.0.1:1\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
            ));
        }
        std::fs::write(d.join("registries.conf"), registries).unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("run").display()
            ),
        )
        .unwrap();
        // File locks in tmpdir (not /dev/shm/libpod_lock), no journald events, CNI's lock
        // file in our dir (not /etc/cni/net.d).
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\nlock_type = \"file\"\n[network]\nnetwork_config_dir = \"{}\"\n",
                d.join("net").display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        std::fs::write(d.join("auth.json"), "{}").unwrap();
        Podman { dir }
    }

    fn podman(&self, args: &[&str]) -> Result<String, String> {
        let d = self.dir.path();
        let mut cmd = namespaced(&[(&d.join("varlib"), "/var/lib")], "podman");
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"))
            .env("HOME", d.join("home"))
            .env("XDG_CONFIG_HOME", d.join("home"))
            .env("XDG_DATA_HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("run"));
        run(cmd, COMMAND_WITHIN)
    }
}

impl Client for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn pull(&self, reference: &str, platform: &str) -> Result<Pulled, String> {
        let policy = self.dir.path().join("policy.json");
        self.podman(&[
            "pull",
            "--quiet",
            "--signature-policy",
            policy.to_str().unwrap(),
            "--platform",
            platform,
            reference,
        ])?;
        let out = self.podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}} {{.Id}}",
            reference,
        ])?;
        match out.split_whitespace().collect::<Vec<_>>()[..] {
            [digest, id] => Ok(Pulled {
                digest: digest.to_string(),
                config: format!("sha256:{id}"),
            }),
            _ => Err(format!("podman image inspect {reference}: {out:?}")),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// Docker Hub's names, mapped to loopback in dockerd's namespace so its fallback from a
/// failing mirror fails at once, on this machine.
const DOCKER_HUB: &str = "registry-1.docker.io index.docker.io auth.docker.io registry.docker.io production.cloudflare.docker.com";

/// A dockerd of its own (on a containerd of its own), driven by `docker`.
pub struct Docker {
    proc: Proc,
    socket: PathBuf,
    dir: tempfile::TempDir,
    /// Declared after `proc`: dockerd stops before its containerd.
    _containerd: Containerd,
}

impl Docker {
    /// Start dockerd with `mirror` as its Docker Hub mirror (plain HTTP).
    pub fn start(mirror: SocketAddr) -> Docker {
        require_root_and(&["dockerd", "docker", "unshare"]);
        let containerd = Containerd::start(&[]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["data", "exec", "run", "cli"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // dockerd 20.10 writes its trust key to /etc/docker/key.json unless told otherwise.
        std::fs::write(
            d.join("daemon.json"),
            serde_json::json!({"deprecated-key-path": d.join("key.json")}).to_string(),
        )
        .unwrap();
        std::fs::write(
            d.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {DOCKER_HUB}\n"),
        )
        .unwrap();
        let socket = d.join("docker.sock");
        let mut cmd = namespaced(
            &[(&d.join("run"), "/run"), (&d.join("hosts"), "/etc/hosts")],
            "dockerd",
        );
        cmd.arg("--containerd")
            .arg(containerd.socket())
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                // One attempt per layer: a failure shows at once instead of after back-offs.
                "--max-download-attempts=1",
            ])
            .arg(format!("--registry-mirror=http://{mirror}"))
            .arg(format!("--insecure-registry={mirror}"));
        let proc = Proc::spawn(cmd);
        proc.wait_log("API listen on", START_WITHIN);
        Docker {
            proc,
            socket,
            dir,
            _containerd: containerd,
        }
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        run(cmd, COMMAND_WITHIN).map_err(|e| {
            let log = log_tail(&self.proc, 20);
            let fell_back = if log.contains("registry-1.docker.io") {
                "\nthe mirror (ringcache) failed and dockerd fell back to Docker Hub (blocked here)"
            } else {
                ""
            };
            format!("{e}{fell_back}\ndockerd log:\n{log}")
        })
    }
}

impl Client for Docker {
    fn name(&self) -> &'static str {
        "dockerd"
    }

    fn pull(&self, reference: &str, platform: &str) -> Result<Pulled, String> {
        let out = self.docker(&["pull", "--platform", platform, reference])?;
        // "Digest: sha256:..." is what the reference resolved to.
        let digest = out
            .lines()
            .find_map(|l| l.strip_prefix("Digest: "))
            .ok_or_else(|| format!("no Digest line in docker pull's output:\n{out}"))?
            .trim()
            .to_string();
        let config = self
            .docker(&["image", "inspect", "--format", "{{.Id}}", reference])?
            .trim()
            .to_string();
        Ok(Pulled { digest, config })
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        stop(&mut self.proc);
        unmount_under(self.dir.path());
    }
}
