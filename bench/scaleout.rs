//! Scaling out, measured (issue 21), on this machine over loopback: HAProxy (the shipped
//! `deploy/haproxy/haproxy.cfg`) in front of 1 or 3 ringcache nodes that pull through a
//! parent ringcache, whose upstream is the counting test origin.
//!
//! - **aggregate warm throughput** through HAProxy with 1 and with 3 nodes (every blob pulled
//!   and sha256-verified once through the cluster first; the timed run checks lengths only,
//!   since hashing would take the client a core of the two this machine has);
//! - **upstream bytes** at the origin, as a multiple of the unique bytes, for a cold pull of
//!   every blob, then again after a node is lost (SIGKILL) and every blob is pulled again:
//!   with the parent tier, and with the nodes pulling from the origin directly.
//!
//! On a 2-core VM every process (HAProxy, the nodes, the parent, the clients) shares the same
//! two cores: the throughput rows measure the cluster's CPU overhead, not a NIC; 3 nodes cannot
//! beat 1 here. Run: `cargo bench --bench scaleout -- --bench [--reps 3] [--secs 4]
//! [--blobs 8] [--mib 32]` (`BENCH_RINGCACHE` names the binary; default the release build).
//! Prints a table and appends JSON lines to `target/bench/scaleout.jsonl`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::cluster::Haproxy;
use support::http;
use support::upstream::{Fault, TestUpstream};

struct Opts {
    reps: usize,
    secs: f64,
    blobs: usize,
    mib: usize,
    bin: PathBuf,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Opts {
        reps: get("--reps").unwrap_or(3.0) as usize,
        secs: get("--secs").unwrap_or(4.0),
        blobs: get("--blobs").unwrap_or(8.0) as usize,
        mib: get("--mib").unwrap_or(32.0) as usize,
        bin: std::env::var_os("BENCH_RINGCACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/release/ringcache")),
    }
}

/// A ringcache process, its output in a file (a line per request must not cost the bench).
struct Node {
    child: std::process::Child,
    addr: SocketAddr,
    debug: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(o: &Opts, dir: &Path, name: &str, upstream: &str, proxied: bool) -> Node {
    let port = |_| support::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{}", port(())).parse().unwrap();
    let debug: SocketAddr = format!("127.0.0.1:{}", port(())).parse().unwrap();
    let pp = if proxied {
        ", proxy_protocol: true, proxy_protocol_from: [127.0.0.1]"
    } else {
        ""
    };
    let cfg = dir.join(format!("{name}.yml"));
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nhttp: {{addr: {addr}, debug: {{addr: {debug}}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {upstream}}}\nringcache: {{workers: 1{pp}}}\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(&o.bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", o.bin.display()));
    support::wait_port(addr);
    Node { child, addr, debug }
}

/// A site: HAProxy, `n` nodes, and (with `parent`) the regional tier between them and the
/// origin.
struct Site {
    lb: Haproxy,
    nodes: Vec<Node>,
    _parent: Option<Node>,
    _dir: tempfile::TempDir,
}

fn site(o: &Opts, origin: &str, n: usize, parent: bool) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let p = parent.then(|| node(o, dir.path(), "parent", origin, false));
    let up = p
        .as_ref()
        .map_or(origin.to_string(), |p| format!("http://{}", p.addr));
    let nodes: Vec<Node> = (1..=n)
        .map(|i| node(o, dir.path(), &format!("node{i}"), &up, true))
        .collect();
    let addrs: Vec<_> = nodes.iter().map(|n| (n.addr, n.debug)).collect();
    Site {
        lb: Haproxy::start(&addrs),
        nodes,
        _parent: p,
        _dir: dir,
    }
}

/// Every blob through the site once, sha256-verified; bounded retries for a node lost.
fn pull_all(addr: SocketAddr, blobs: &[(String, u64)]) {
    for (digest, size) in blobs {
        let path = format!("/v2/bench/scale/blobs/{digest}");
        let ok = (0..5).any(|_| {
            let (status, len, hex, complete) = http::get_hashed(addr, &path);
            status == 200 && complete && len == *size && format!("sha256:{hex}") == *digest
        });
        assert!(ok, "{path} not served whole and verified in 5 tries");
    }
}

/// `clients` keep-alive connections through HAProxy GET the blobs round-robin for `secs`:
/// aggregate GB/s (lengths checked).
fn warm_throughput(addr: SocketAddr, blobs: &[(String, u64)], clients: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, bytes) = (stop.clone(), bytes.clone());
            let blobs = blobs.to_vec();
            std::thread::spawn(move || {
                let s = http::connect(addr);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::with_capacity(256 * 1024, s);
                let mut buf = vec![0u8; 256 * 1024];
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let (digest, size) = &blobs[i % blobs.len()];
                    i += 1;
                    let path = format!("/v2/bench/scale/blobs/{digest}");
                    http::send(&mut w, addr, "GET", &path, &[], b"");
                    let head = http::read_response(&mut r, true).unwrap();
                    assert_eq!(head.status, 200);
                    let mut left = *size;
                    while left > 0 {
                        let n = r.read(&mut buf[..(left as usize).min(256 * 1024)]).unwrap();
                        assert!(n > 0, "{path}: cut short");
                        left -= n as u64;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in threads {
        t.join().unwrap();
    }
    bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e9
}

/// Bytes the origin sent for blob GETs so far (each GET of a blob is its whole size here).
fn origin_bytes(up: &TestUpstream, blobs: &[(String, u64)]) -> u64 {
    let seen = up.seen();
    blobs
        .iter()
        .map(|(d, size)| {
            let gets = seen
                .iter()
                .filter(|(l, _)| l.starts_with("GET ") && l.contains(d.as_str()))
                .count();
            gets as u64 * size
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds benches: nothing to do there
    }
    let o = opts();
    support::require("haproxy");
    let mut rows: Vec<(String, String, f64, f64, f64)> = Vec::new();
    let up = TestUpstream::start();
    let size = o.mib << 20;
    let mut next_seed = 1000u64;
    let mut fresh = |n: usize| -> Vec<(String, u64)> {
        (0..n)
            .map(|_| {
                next_seed += 1;
                let d = up.add_generated(next_seed, size, Fault::None);
                (d, size as u64)
            })
            .collect()
    };
    let unique = (o.blobs * size) as f64;
    eprintln!(
        "scaleout bench: {} blobs of {} MiB, {} reps of {} s",
        o.blobs, o.mib, o.reps, o.secs
    );

    // Aggregate warm throughput through HAProxy, 1 and 3 nodes.
    for n in [1, 3] {
        let blobs = fresh(o.blobs);
        let s = site(&o, &up.url(), n, true);
        pull_all(s.lb.addr, &blobs);
        let mut gbps = Vec::new();
        for rep in 0..o.reps {
            let v = warm_throughput(s.lb.addr, &blobs, 4, o.secs);
            eprintln!("  {n} node(s), rep {rep}: {v:.2} GB/s");
            gbps.push(v);
        }
        let (m, lo, hi) = median(gbps);
        rows.push((
            format!("warm throughput through HAProxy, {n} node(s), 4 clients"),
            "GB/s".into(),
            m,
            lo,
            hi,
        ));
    }

    // Upstream bytes: a cold pull, then a node lost and every blob pulled again; with the
    // parent tier and without it.
    for parent in [true, false] {
        let label = if parent { "with parent" } else { "no parent" };
        let blobs = fresh(o.blobs);
        let before = origin_bytes(&up, &blobs);
        let mut s = site(&o, &up.url(), 3, parent);
        pull_all(s.lb.addr, &blobs);
        let cold = origin_bytes(&up, &blobs) - before;
        let victim = s.nodes.remove(0);
        drop(victim); // SIGKILL (Child::kill)
        s.lb.wait_state("DOWN", &["node1"]);
        pull_all(s.lb.addr, &blobs);
        let after = origin_bytes(&up, &blobs) - before;
        for (what, v) in [
            ("cold pull, 3 nodes", cold),
            ("cold pull + a node lost + pull again", after),
        ] {
            let x = v as f64 / unique;
            eprintln!("  {label}: {what}: {x:.2}x unique bytes");
            rows.push((
                format!("origin bytes / unique, {what}, {label}"),
                "×".into(),
                x,
                x,
                x,
            ));
        }
    }

    println!("\n| scenario | unit | median | min | max |\n|---|---|---|---|---|");
    for (s, unit, m, lo, hi) in &rows {
        println!("| {s} | {unit} | {m:.2} | {lo:.2} | {hi:.2} |");
    }
    let out = Path::new("target/bench/scaleout.jsonl");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    let mut text = String::new();
    for (s, unit, m, lo, hi) in &rows {
        text.push_str(
            &serde_json::json!({"scenario": s, "unit": unit, "median": m, "min": lo, "max": hi})
                .to_string(),
        );
        text.push('\n');
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
