//! The side-by-side benchmark (issue 5): ringcache vs the reference registry in proxy mode vs
//! nginx (sendfile), on one machine over loopback, every scenario in one run, 3 repetitions,
//! median and range, every body's sha256 checked. Started by `bench/run.sh`, which installs
//! the peers and builds the release binary; it prints one table and writes JSON lines.
//!
//! Run directly: cargo bench --bench harness -- --bench [--reps 3] [--secs 4] [--out FILE]
//!   [--only a,b,c,d,e,f] [--quick]   (--quick: 256 MiB instead of 1 GiB, for a smoke run)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------- processes

struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master (and keep its port): the master goes first
        // (it would respawn a killed worker), then the workers it had.
        let children: Vec<u32> = pids(self).into_iter().skip(1).collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            // SAFETY: kill(2) on a process id; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} never listened on {port}; its log:\n{log}");
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc { name, child }
}

/// Every process id of a system (nginx: its master and workers).
fn pids(p: &Proc) -> Vec<u32> {
    let mut all = vec![p.child.id()];
    if let Ok(out) = Command::new("pgrep")
        .args(["-P", &p.child.id().to_string()])
        .output()
    {
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|s| s.parse::<u32>().ok()),
        );
    }
    all
}

/// Before a measurement: an idle machine, and the system's peak-RSS mark reset.
fn ready(p: &Proc) {
    wait_idle();
    reset_hwm(p);
}

/// Reset the peak-RSS mark (VmHWM) of every process of a system.
fn reset_hwm(p: &Proc) {
    for pid in pids(p) {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// Peak RSS since the last reset, MiB, summed over the system's processes.
fn hwm_mib(p: &Proc) -> f64 {
    let mut kb = 0u64;
    for pid in pids(p) {
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

/// Wait (at most 15 s) until the machine is idle: dirty pages written back (`sync`: what the
/// previous run or the seeding wrote must not throttle the next system's writes), then CPU
/// ≥ 90% idle over 250 ms.
fn wait_idle() {
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

// ---------------------------------------------------------------- content

/// Deterministic pseudo-random bytes (splitmix64), fast enough to mint a fresh GiB per run.
struct Rng(u64);
impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            c.copy_from_slice(&z.to_le_bytes()[..c.len()]);
        }
    }
}

/// A written layer: a gzip'd tar holding one file of `payload` pseudo-random bytes.
struct Layer {
    path: PathBuf,
    digest: String,
    size: u64,
    diff_id: String,
}

struct Hashing<W: Write> {
    inner: W,
    ctx: ring::digest::Context,
    n: u64,
}
impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.ctx.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn make_layer(dir: &Path, payload: u64, seed: u64) -> Layer {
    let path = dir.join(format!("layer-{seed}.tmp"));
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let outer = Hashing {
        inner: file,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        n: 0,
    };
    // Stored (level 0) deflate: a valid gzip stream that costs no compression time.
    let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::none());
    let mut tar_h = Hashing {
        inner: gz,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        n: 0,
    };
    let mut header = tar::Header::new_gnu();
    header.set_path("payload.bin").unwrap();
    header.set_size(payload);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar_h.write_all(header.as_bytes()).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x2545F4914F6CDD1D) ^ 0xA5A5);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = payload;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        tar_h.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    let pad = (512 - payload % 512) % 512;
    tar_h.write_all(&vec![0u8; pad as usize + 1024]).unwrap();
    let diff_id = format!("sha256:{}", hex(tar_h.ctx.clone().finish().as_ref()));
    let outer = tar_h.inner.finish().unwrap();
    let mut outer = outer;
    outer.flush().unwrap();
    let digest = format!("sha256:{}", hex(outer.ctx.clone().finish().as_ref()));
    let size = outer.n;
    Layer {
        path,
        digest,
        size,
        diff_id,
    }
}

// ---------------------------------------------------------------- HTTP (blocking, test side)

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body_len: u64,
    sha256: String,
    ttfb: Duration,
    total: Duration,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection; the body is hashed as it streams (never held).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Path>,
) -> Resp {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    send_request(&mut s, port, method, path, headers, body);
    read_response(s, method == "HEAD", started)
}

fn send_request(
    s: &mut TcpStream,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Path>,
) {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let len = body.map(|p| std::fs::metadata(p).unwrap().len());
    if let Some(l) = len {
        head.push_str(&format!("Content-Length: {l}\r\n"));
    } else if method == "PUT" || method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(p) = body {
        std::io::copy(&mut std::fs::File::open(p).unwrap(), s).unwrap();
    }
}

fn read_response(s: TcpStream, head_only: bool, started: Instant) -> Resp {
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let first = r.fill_buf().map(|b| b.len()).unwrap_or(0);
    let ttfb = started.elapsed();
    assert!(first > 0, "connection closed without a response");
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: Option<u64> = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0u64;
    if !head_only {
        let want = len.unwrap_or(u64::MAX);
        let mut buf = vec![0u8; 256 * 1024];
        while n < want {
            let k = ((want - n).min(buf.len() as u64)) as usize;
            let got = r.read(&mut buf[..k]).unwrap_or(0);
            if got == 0 {
                break;
            }
            ctx.update(&buf[..got]);
            n += got as u64;
        }
    }
    Resp {
        status,
        headers,
        body_len: n,
        sha256: format!("sha256:{}", hex(ctx.finish().as_ref())),
        ttfb,
        total: started.elapsed(),
    }
}

/// GET a blob and check it is whole and hashes to its digest.
fn get_verified(port: u16, path: &str, digest: &str, size: u64) -> Resp {
    let r = request(port, "GET", path, &[], None);
    assert_eq!(r.status, 200, "GET {path} on {port}");
    assert_eq!(r.body_len, size, "GET {path} on {port}: length");
    assert_eq!(r.sha256, digest, "GET {path} on {port}: sha256");
    r
}

// ---------------------------------------------------------------- registry push

fn push_blob(origin: u16, name: &str, file: &Path, digest: &str) {
    let r = request(
        origin,
        "POST",
        &format!("/v2/{name}/blobs/uploads/"),
        &[],
        None,
    );
    assert_eq!(r.status, 202, "start upload");
    let loc = r.header("location").unwrap().to_string();
    let loc = loc
        .strip_prefix(&format!("http://127.0.0.1:{origin}"))
        .unwrap_or(&loc)
        .to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = request(
        origin,
        "PUT",
        &format!("{loc}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(file),
    );
    assert_eq!(r.status, 201, "finish upload of {digest}");
}

struct Image {
    name: String,
    tag: String,
    manifest: String,
    manifest_len: u64,
    layers: Vec<Layer>,
}

/// Push a single- or multi-layer image with fresh content; layer files stay under `dir`.
fn push_image(
    origin: u16,
    dir: &Path,
    name: &str,
    tag: &str,
    payloads: &[u64],
    seed: u64,
) -> Image {
    let mut layers = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let l = make_layer(dir, *p, seed * 16 + i as u64);
        push_blob(origin, name, &l.path, &l.digest);
        layers.push(l);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}
    })
    .to_string();
    let cpath = dir.join(format!("config-{seed}.json"));
    std::fs::write(&cpath, &config).unwrap();
    let cdigest = format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, config.as_bytes()).as_ref())
    );
    push_blob(origin, name, &cpath, &cdigest);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size})).collect::<Vec<_>>()
    })
    .to_string();
    let mpath = dir.join(format!("manifest-{seed}.json"));
    std::fs::write(&mpath, &manifest).unwrap();
    let r = request(
        origin,
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        Some(&mpath),
    );
    assert_eq!(r.status, 201, "push manifest");
    let mdigest = format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, manifest.as_bytes()).as_ref())
    );
    Image {
        name: name.into(),
        tag: tag.into(),
        manifest: mdigest,
        manifest_len: manifest.len() as u64,
        layers,
    }
}

/// Upstream GETs and bytes of one path, from the origin's access log (Distribution's
/// "response completed" lines), waiting until the count stops changing.
fn origin_gets(log: &Path, needle: &str) -> (u64, u64) {
    let read = || {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        let mut gets = 0;
        let mut bytes = 0;
        for l in s.lines() {
            if l.contains("response completed")
                && l.contains("http.request.method=GET")
                && l.contains(needle)
            {
                gets += 1;
                if let Some(i) = l.find("http.response.written=") {
                    let v: String = l[i + 22..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
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

/// Wait (at most 120 s) until `sys` has committed `digest` to its storage.
fn wait_stored(w: &Path, sys: &str, digest: &str) {
    let hex = &digest[7..];
    let path = match sys {
        "reference" => w
            .join("reference/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"),
        _ => w.join("ringcache/blobs/sha256").join(&hex[..2]).join(hex),
    };
    let until = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if Instant::now() > until {
            eprintln!("  ({sys} never stored {digest})");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests of any method for a path in the origin log.
fn origin_requests(log: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("response completed") && l.contains(needle))
        .count() as u64
}

// ---------------------------------------------------------------- load generator (d)

struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `conns` keep-alive connections over 2 threads (io_uring, one task per connection), each
/// with one request in flight, for `secs`; every body is checked against `sha256`.
fn load(
    port: u16,
    method: &str,
    path: &str,
    conns: usize,
    secs: f64,
    http10: bool,
    body: (u64, &str),
) -> Load {
    // Manifests are asked for as clients do, with the media type they accept.
    let accept = if path.contains("/manifests/") {
        MANIFEST_ACCEPT
    } else {
        "*/*"
    };
    let req = if http10 {
        format!("{method} {path} HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ApacheBench/2.3\r\nAccept: {accept}\r\n\r\n")
    } else {
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n")
    };
    let head_only = method == "HEAD";
    let want = Arc::new((body.0, body.1.to_string(), req));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let want = want.clone();
            let n = conns / 2 + usize::from(t < conns % 2);
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..n)
                        .map(|_| monoio::spawn(conn_loop(port, want.clone(), head_only, deadline)))
                        .collect();
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    for t in tasks {
                        let (l, e) = t.await;
                        lat.extend(l);
                        errors += e;
                    }
                    (lat, errors)
                })
            })
        })
        .collect();
    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Load {
        rps: lat.len() as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors,
    }
}

async fn conn_loop(
    port: u16,
    want: Arc<(u64, String, String)>,
    head_only: bool,
    deadline: Instant,
) -> (Vec<u32>, u64) {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let (len, digest, req) = (&want.0, &want.1, &want.2);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut sock: Option<monoio::net::TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut have = 0usize; // bytes of buf not yet consumed
    while Instant::now() < deadline {
        if sock.is_none() {
            match monoio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    sock = Some(s);
                    have = 0;
                }
                Err(_) => {
                    errors += 1;
                    continue;
                }
            }
        }
        let s = sock.as_mut().unwrap();
        let started = Instant::now();
        let (res, _) = s.write_all(req.clone().into_bytes()).await;
        if res.is_err() {
            errors += 1;
            sock = None;
            continue;
        }
        // Read until head + body are in.
        let mut ok = false;
        loop {
            buf.truncate(have);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(hl)) = resp.parse(&buf[..have]) {
                let clen: u64 = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                let status = resp.code.unwrap_or(0);
                let body = if head_only { 0 } else { clen as usize };
                if have >= hl + body {
                    ok = status == 200
                        && clen == *len
                        && (head_only
                            || format!(
                                "sha256:{}",
                                hex(ring::digest::digest(
                                    &ring::digest::SHA256,
                                    &buf[hl..hl + body]
                                )
                                .as_ref())
                            ) == *digest);
                    buf.drain(..hl + body);
                    have = buf.len();
                    break;
                }
            }
            if buf.capacity() - have < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let cap = buf.capacity();
            let (res, b) = s
                .read(monoio::buf::IoBufMut::slice_mut(
                    std::mem::take(&mut buf),
                    have..cap,
                ))
                .await;
            buf = b.into_inner();
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
        if ok {
            lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            errors += 1;
            sock = None;
        }
    }
    (lat, errors)
}

/// ApacheBench, as operators run it: HTTP/1.0 keep-alive (`-k`), 64 concurrent.
fn ab(port: u16, path: &str, secs: f64, size: u64) -> Option<Load> {
    let out = Command::new("ab")
        .args([
            "-q",
            "-k",
            "-c",
            "64",
            "-t",
            &format!("{}", secs.ceil() as u64),
            "-n",
            "10000000",
            "-l",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let num = |prefix: &str| -> Option<f64> {
        s.lines()
            .find(|l| l.trim_start().starts_with(prefix))?
            .split_whitespace()
            .find_map(|w| w.parse::<f64>().ok())
    };
    let rps = num("Requests per second:")?;
    let failed = num("Failed requests:").unwrap_or(0.0) + num("Non-2xx responses:").unwrap_or(0.0);
    let total_bytes = num("HTML transferred:").unwrap_or(0.0);
    let complete = num("Complete requests:").unwrap_or(0.0);
    // ab does not hash bodies: check at least that every body had the right length.
    let short = if complete > 0.0 && (total_bytes - complete * size as f64).abs() > 0.5 {
        1.0
    } else {
        0.0
    };
    Some(Load {
        rps,
        p50_ms: num("50%").unwrap_or(0.0),
        p99_ms: num("99%").unwrap_or(0.0),
        errors: (failed + short) as u64,
    })
}

// ---------------------------------------------------------------- results

#[derive(Default)]
struct Results {
    /// (scenario, metric) -> system -> samples
    rows: BTreeMap<(usize, String, String), BTreeMap<&'static str, Vec<f64>>>,
    order: usize,
    jsonl: Vec<String>,
}

impl Results {
    fn add(&mut self, scenario: &str, metric: &str, system: &'static str, rep: usize, v: f64) {
        let key = self
            .rows
            .keys()
            .find(|(_, s, m)| s == scenario && m == metric)
            .cloned()
            .unwrap_or_else(|| {
                self.order += 1;
                (self.order, scenario.to_string(), metric.to_string())
            });
        self.rows
            .entry(key)
            .or_default()
            .entry(system)
            .or_default()
            .push(v);
        self.jsonl.push(
            serde_json::json!({"scenario": scenario, "metric": metric, "system": system, "rep": rep, "value": v}).to_string(),
        );
    }
}

/// The systems in a different order each repetition (rotated), so that none always runs
/// right after another's writes or warm-up.
fn order<T: Copy>(all: &[T], rep: usize) -> Vec<T> {
    let mut v = all.to_vec();
    v.rotate_left(rep % all.len());
    v
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.len() == 1 => fmt(v[0]),
        Some(v) => {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!("{} [{}–{}]", fmt(median(v)), fmt(lo), fmt(hi))
        }
    }
}

// ---------------------------------------------------------------- main

struct Opts {
    reps: usize,
    secs: f64,
    out: PathBuf,
    only: String,
    big: u64,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    Opts {
        reps: get("--reps").and_then(|v| v.parse().ok()).unwrap_or(3),
        secs: get("--secs").and_then(|v| v.parse().ok()).unwrap_or(4.0),
        out: get("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench/results.jsonl")),
        only: get("--only").unwrap_or_else(|| "abcdef".into()),
        big: if quick { 256 * MIB } else { 1024 * MIB },
    }
}

struct Systems {
    origin: Proc,
    origin_log: PathBuf,
    refp: Proc,
    rc: Proc,
    nginx: Proc,
    ports: [(&'static str, u16); 3],
}

impl Systems {
    fn proc(&self, sys: &str) -> &Proc {
        match sys {
            "reference" => &self.refp,
            "ringcache" => &self.rc,
            _ => &self.nginx,
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs benches: nothing to do there
    }
    let o = opts();
    // 10,000 idle connections + 512 clients need descriptors.
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let bin =
        std::env::var("BENCH_RINGCACHE").unwrap_or_else(|_| "target/release/ringcache".into());
    let w = std::env::temp_dir().join(format!("ringcache-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(w.join("www")).unwrap();
    std::fs::create_dir_all(w.join("gen")).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = (std::env::var_os("BENCH_KEEP").is_none()).then(|| Cleanup(w.clone()));

    let (po, pr, pc, pn) = (free_port(), free_port(), free_port(), free_port());
    let reg = |dir: &str, port: u16, proxy: Option<u16>| {
        let mut y = format!(
            "version: 0.1\nlog: {{level: info, formatter: text, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            w.join(dir).display()
        );
        if let Some(p) = proxy {
            y.push_str(&format!("proxy: {{remoteurl: http://127.0.0.1:{p}}}\n"));
        }
        let f = w.join(format!("{dir}.yml"));
        std::fs::write(&f, y).unwrap();
        f
    };
    let origin_log = w.join("origin.log");
    let origin = spawn(
        "origin",
        Command::new("docker-registry")
            .arg("serve")
            .arg(reg("origin", po, None)),
        &origin_log,
    );
    wait_port(po, "origin", &origin_log);
    let refp = spawn(
        "reference",
        Command::new("docker-registry")
            .arg("serve")
            .arg(reg("reference", pr, Some(po))),
        &w.join("reference.log"),
    );
    let rc_cfg = w.join("ringcache.yml");
    std::fs::write(
        &rc_cfg,
        format!(
            "version: 0.1\nlog: {{level: {}, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{pc}}}\nproxy: {{remoteurl: http://127.0.0.1:{po}}}\n",
            std::env::var("BENCH_RC_LOG").unwrap_or_else(|_| "warn".into()),
            w.join("ringcache").display()
        ),
    )
    .unwrap();
    let rc = spawn(
        "ringcache",
        Command::new(&bin)
            .env_remove("BENCH_RINGCACHE")
            .args(["serve", "--config"])
            .arg(&rc_cfg),
        &w.join("ringcache.log"),
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
    let nginx = spawn(
        "nginx",
        Command::new("nginx").arg("-c").arg(w.join("nginx.conf")),
        &w.join("nginx.log"),
    );
    wait_port(pr, "reference proxy", &w.join("reference.log"));
    wait_port(pc, "ringcache", &w.join("ringcache.log"));
    wait_port(pn, "nginx", &w.join("nginx.err"));
    let s = Systems {
        origin,
        origin_log: origin_log.clone(),
        refp,
        rc,
        nginx,
        ports: [("reference", pr), ("ringcache", pc), ("nginx", pn)],
    };
    let proxies = [("reference", pr), ("ringcache", pc)];
    let gen = w.join("gen");
    let mut res = Results::default();
    let seed = std::cell::Cell::new(1u64);
    let next_seed = || {
        seed.set(seed.get() + 1);
        seed.get()
    };
    // A fresh image for one system and repetition of a cold scenario (nothing accidentally
    // warm).
    let fresh = |what: &str, sys: &str, rep: usize, payloads: &[u64]| {
        push_image(
            po,
            &gen,
            &format!("bench/{what}-{sys}-{rep}"),
            "v1",
            payloads,
            next_seed(),
        )
    };
    // nginx serves the same bytes under the same URLs (the files the origin was pushed).
    let publish = |path: &str, file: &Path| {
        let dst = w.join("www").join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::hard_link(file, &dst)
            .or_else(|_| std::fs::copy(file, &dst).map(|_| ()))
            .unwrap();
    };
    eprintln!("ringcache bench: {} reps, work dir {}", o.reps, w.display());

    // (a) cold big blob, one client
    if o.only.contains('a') {
        let label = format!("(a) cold {} MiB, 1 client", o.big / MIB);
        for rep in 0..o.reps {
            for (sys, port) in order(&proxies, rep) {
                let img = fresh("cold", sys, rep, &[o.big - 2048]);
                let l = &img.layers[0];
                ready(s.proc(sys));
                let r = get_verified(
                    port,
                    &format!("/v2/{}/blobs/{}", img.name, l.digest),
                    &l.digest,
                    l.size,
                );
                // The reference stores in the background (its own upstream GET): wait until
                // each system has the blob on disk, so its fetches are all counted and its
                // writes do not overlap the next measurement.
                wait_stored(&w, sys, &l.digest);
                let (gets, bytes) = origin_gets(&s.origin_log, &l.digest);
                res.add(&label, "TTFB s", sys, rep, r.ttfb.as_secs_f64());
                res.add(&label, "total s", sys, rep, r.total.as_secs_f64());
                res.add(&label, "upstream GETs", sys, rep, gets as f64);
                res.add(
                    &label,
                    "upstream bytes / size",
                    sys,
                    rep,
                    bytes as f64 / l.size as f64,
                );
                res.add(&label, "peak RSS MiB", sys, rep, hwm_mib(s.proc(sys)));
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    // (b) cold fan-out: 32 clients released together on one fresh 256 MiB blob
    if o.only.contains('b') {
        let label = "(b) cold fan-out, 32 clients, 256 MiB".to_string();
        for rep in 0..o.reps {
            for (sys, port) in order(&proxies, rep) {
                let img = fresh("fan", sys, rep, &[256 * MIB - 2048]);
                let l = &img.layers[0];
                ready(s.proc(sys));
                let (wall, ttfbs) = fan_out(
                    port,
                    &format!("/v2/{}/blobs/{}", img.name, l.digest),
                    &l.digest,
                    l.size,
                    32,
                );
                // The reference stores in the background (its own upstream GET): wait until
                // each system has the blob on disk, so its fetches are all counted and its
                // writes do not overlap the next measurement.
                wait_stored(&w, sys, &l.digest);
                let (gets, bytes) = origin_gets(&s.origin_log, &l.digest);
                res.add(&label, "wall s", sys, rep, wall);
                res.add(&label, "slowest TTFB s", sys, rep, ttfbs);
                res.add(&label, "upstream GETs", sys, rep, gets as f64);
                res.add(
                    &label,
                    "upstream bytes / size",
                    sys,
                    rep,
                    bytes as f64 / l.size as f64,
                );
                res.add(&label, "peak RSS MiB", sys, rep, hwm_mib(s.proc(sys)));
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    // Warm content for (c) and (d): one big image, one 1 KiB image; primed through both
    // proxies (untimed: the fill, then one hit, so that "warm" means cached and recently read
    // for every system — ringcache's fills write around the page cache), published for nginx.
    let need_warm = o.only.contains('c') || o.only.contains('d');
    let (big, small) = if need_warm {
        let big = push_image(
            po,
            &gen,
            "bench/warm-big",
            "v1",
            &[o.big - 2048],
            next_seed(),
        );
        let mut small = push_image(po, &gen, "bench/warm-small", "latest", &[1024], next_seed());
        // (d)'s blob is a raw 1 KiB blob in the same repository (a layer cannot be that small).
        let path = gen.join("blob-1k");
        let mut b = vec![0u8; 1024];
        Rng(next_seed()).fill(&mut b);
        std::fs::write(&path, &b).unwrap();
        let digest = format!(
            "sha256:{}",
            hex(ring::digest::digest(&ring::digest::SHA256, &b).as_ref())
        );
        push_blob(po, &small.name, &path, &digest);
        small.layers[0] = Layer {
            path,
            digest,
            size: 1024,
            diff_id: String::new(),
        };
        (Some(big), Some(small))
    } else {
        (None, None)
    };
    if let (Some(big), Some(small)) = (&big, &small) {
        for img in [big, small] {
            let l = &img.layers[0];
            let path = format!("/v2/{}/blobs/{}", img.name, l.digest);
            publish(&path, &l.path);
            let mpath = gen.join(format!("m-{}.json", img.name.replace('/', "_")));
            for (sys, port) in proxies {
                get_verified(port, &path, &l.digest, l.size);
                wait_stored(&w, sys, &l.digest);
                get_verified(port, &path, &l.digest, l.size);
                let r = request(
                    port,
                    "GET",
                    &format!("/v2/{}/manifests/{}", img.name, img.tag),
                    &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                    None,
                );
                assert_eq!(r.status, 200);
                assert_eq!(r.sha256, img.manifest);
            }
            // The manifest bytes as the origin has them.
            let m = request(
                po,
                "GET",
                &format!("/v2/{}/manifests/{}", img.name, img.manifest),
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                None,
            );
            assert_eq!(m.sha256, img.manifest);
            std::fs::copy(
                w.join("origin/docker/registry/v2/blobs/sha256")
                    .join(&img.manifest[7..9])
                    .join(&img.manifest[7..])
                    .join("data"),
                &mpath,
            )
            .unwrap();
            publish(
                &format!("/v2/{}/manifests/{}", img.name, img.manifest),
                &mpath,
            );
            publish(&format!("/v2/{}/manifests/{}", img.name, img.tag), &mpath);
        }
        // nginx must serve the very same bytes.
        let l = &big.layers[0];
        get_verified(
            pn,
            &format!("/v2/{}/blobs/{}", big.name, l.digest),
            &l.digest,
            l.size,
        );
    }

    // (c) warm big blob, 1 and 4 clients: GB/s
    if let (true, Some(big)) = (o.only.contains('c'), &big) {
        let l = &big.layers[0];
        let path = format!("/v2/{}/blobs/{}", big.name, l.digest);
        for clients in [1usize, 4] {
            let label = format!(
                "(c) warm {} MiB, {clients} client{}",
                o.big / MIB,
                if clients > 1 { "s" } else { "" }
            );
            for rep in 0..o.reps {
                for (sys, port) in order(&s.ports, rep) {
                    ready(s.proc(sys));
                    let t = Instant::now();
                    let hs: Vec<_> = (0..clients)
                        .map(|_| {
                            let (path, d, n) = (path.clone(), l.digest.clone(), l.size);
                            std::thread::spawn(move || get_verified(port, &path, &d, n))
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                    let secs = t.elapsed().as_secs_f64();
                    res.add(
                        &label,
                        "GB/s",
                        sys,
                        rep,
                        (l.size * clients as u64) as f64 / secs / 1e9,
                    );
                    res.add(&label, "peak RSS MiB", sys, rep, hwm_mib(s.proc(sys)));
                }
            }
        }
    }

    // (d) warm small objects, 64 keep-alive connections
    if let (true, Some(small)) = (o.only.contains('d'), &small) {
        let l = &small.layers[0];
        let cases: Vec<(String, &str, String, bool, (u64, String))> = vec![
            (
                "(d) 1 KiB blob GET".into(),
                "GET",
                format!("/v2/{}/blobs/{}", small.name, l.digest),
                false,
                (l.size, l.digest.clone()),
            ),
            (
                "(d) manifest GET by digest".into(),
                "GET",
                format!("/v2/{}/manifests/{}", small.name, small.manifest),
                false,
                (small.manifest_len, small.manifest.clone()),
            ),
            (
                "(d) manifest GET by tag".into(),
                "GET",
                format!("/v2/{}/manifests/{}", small.name, small.tag),
                false,
                (small.manifest_len, small.manifest.clone()),
            ),
            (
                "(d) manifest HEAD by tag".into(),
                "HEAD",
                format!("/v2/{}/manifests/{}", small.name, small.tag),
                false,
                (small.manifest_len, String::new()),
            ),
            (
                "(d) 1 KiB blob GET, HTTP/1.0 keep-alive".into(),
                "GET",
                format!("/v2/{}/blobs/{}", small.name, l.digest),
                true,
                (l.size, l.digest.clone()),
            ),
        ];
        for (label, method, path, http10, body) in &cases {
            for rep in 0..o.reps {
                for (sys, port) in order(&s.ports, rep) {
                    if label.contains("by tag") && sys != "nginx" {
                        // Untimed: resolve the tag now, so the run is inside the freshness
                        // window (it lapses between repetitions: that revalidation is not
                        // what this row measures).
                        let r = request(port, "GET", path, &[("Accept", MANIFEST_ACCEPT)], None);
                        assert_eq!(r.status, 200);
                    }
                    ready(s.proc(sys));
                    let before =
                        origin_requests(&s.origin_log, &format!("/manifests/{}", small.tag));
                    let r = load(port, method, path, 64, o.secs, *http10, (body.0, &body.1));
                    res.add(label, "req/s", sys, rep, r.rps);
                    res.add(label, "p50 ms", sys, rep, r.p50_ms);
                    res.add(label, "p99 ms", sys, rep, r.p99_ms);
                    res.add(label, "errors", sys, rep, r.errors as f64);
                    res.add(label, "peak RSS MiB", sys, rep, hwm_mib(s.proc(sys)));
                    if label.contains("by tag") && sys != "nginx" {
                        let after =
                            origin_requests(&s.origin_log, &format!("/manifests/{}", small.tag));
                        res.add(
                            label,
                            "upstream requests",
                            sys,
                            rep,
                            (after - before) as f64,
                        );
                    }
                }
            }
        }
        let label = "(d) 1 KiB blob, ab -k -c 64 (HTTP/1.0)";
        for rep in 0..o.reps {
            for (sys, port) in order(&s.ports, rep) {
                wait_idle();
                if let Some(r) = ab(
                    port,
                    &format!("/v2/{}/blobs/{}", small.name, l.digest),
                    o.secs,
                    l.size,
                ) {
                    res.add(label, "req/s", sys, rep, r.rps);
                    res.add(label, "p50 ms", sys, rep, r.p50_ms);
                    res.add(label, "p99 ms", sys, rep, r.p99_ms);
                    res.add(label, "errors", sys, rep, r.errors as f64);
                }
            }
        }
    }

    // (f) a real client: skopeo copy of a 5-layer image, cold then warm
    if o.only.contains('f') && Command::new("skopeo").arg("--version").output().is_ok() {
        for rep in 0..o.reps {
            for (sys, port) in order(&proxies, rep) {
                let img = fresh(
                    "skopeo",
                    sys,
                    rep,
                    &[MIB, 4 * MIB, 16 * MIB, 256 * 1024, 64 * 1024],
                );
                for (i, phase) in ["cold", "warm"].iter().enumerate() {
                    ready(s.proc(sys));
                    let dst = w.join(format!("skopeo-{sys}-{rep}-{i}"));
                    let t = Instant::now();
                    let st = Command::new("skopeo")
                        .args(["--insecure-policy", "copy", "--src-tls-verify=false", "-q"])
                        .arg(format!(
                            "docker://127.0.0.1:{port}/{}:{}",
                            img.name, img.tag
                        ))
                        .arg(format!("oci:{}", dst.display()))
                        .status()
                        .unwrap();
                    let secs = t.elapsed().as_secs_f64();
                    assert!(st.success(), "skopeo copy through {sys}");
                    // The layers landed whole: skopeo checks every digest; check the files too.
                    for l in &img.layers {
                        let f = dst.join("blobs/sha256").join(&l.digest[7..]);
                        assert_eq!(std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0), l.size);
                    }
                    res.add(
                        &format!("(f) skopeo copy, 5 layers (~21 MiB), {phase}"),
                        "s",
                        sys,
                        rep,
                        secs,
                    );
                    res.add(
                        &format!("(f) skopeo copy, 5 layers (~21 MiB), {phase}"),
                        "peak RSS MiB",
                        sys,
                        rep,
                        hwm_mib(s.proc(sys)),
                    );
                    let _ = std::fs::remove_dir_all(&dst);
                }
                for l in &img.layers {
                    let _ = std::fs::remove_file(&l.path);
                }
            }
        }
    }

    // (e) memory: 512 followers of one cold blob + 10,000 idle connections (last: what it
    // allocates would stay in the other scenarios' peak RSS)
    if o.only.contains('e') {
        let label = "(e) 512 followers of a cold 16 MiB blob + 10,000 idle conns";
        for rep in 0..o.reps {
            for (sys, port) in order(&proxies, rep) {
                let img = fresh("mem", sys, rep, &[16 * MIB - 2048]);
                let l = &img.layers[0];
                ready(s.proc(sys));
                let idle: Vec<TcpStream> = (0..10_000)
                    .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
                    .collect();
                let (wall, _) = fan_out(
                    port,
                    &format!("/v2/{}/blobs/{}", img.name, l.digest),
                    &l.digest,
                    l.size,
                    512,
                );
                res.add(label, "idle conns held", sys, rep, idle.len() as f64);
                res.add(label, "wall s", sys, rep, wall);
                res.add(label, "peak RSS MiB", sys, rep, hwm_mib(s.proc(sys)));
                drop(idle);
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    // The table
    let systems = ["reference", "nginx", "ringcache"];
    let mut out = String::new();
    out.push_str("| scenario | metric | reference proxy | nginx (sendfile) | ringcache | rc / ref | rc / nginx |\n|---|---|---|---|---|---|---|\n");
    for ((_, scenario, metric), by) in &res.rows {
        let med = |s: &str| by.get(s).map(|v| median(v));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {scenario} | {metric} | {} | {} | {} | {} | {} |\n",
            cell(by.get(systems[0])),
            cell(by.get(systems[1])),
            cell(by.get(systems[2])),
            ratio(med("ringcache"), med("reference")),
            ratio(med("ringcache"), med("nginx")),
        ));
    }
    println!("\n{out}");
    println!(
        "median [min–max] of {} repetitions; ratios are of medians",
        o.reps
    );
    if let Some(d) = o.out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    std::fs::write(&o.out, res.jsonl.join("\n") + "\n").unwrap();
    std::fs::write(o.out.with_extension("md"), &out).unwrap();
    println!(
        "JSON lines: {}  table: {}",
        o.out.display(),
        o.out.with_extension("md").display()
    );
    let _ = (&s.origin, &s.origin.name);
}

/// `n` clients connect, then are released together on one URL; each checks length and
/// sha256. Returns the wall time and the slowest time to first byte.
fn fan_out(port: u16, path: &str, digest: &str, size: u64, n: usize) -> (f64, f64) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (b, path, digest) = (barrier.clone(), path.to_string(), digest.to_string());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
                    b.wait();
                    let t = Instant::now();
                    send_request(&mut s, port, "GET", &path, &[], None);
                    let r = read_response(s, false, t);
                    assert_eq!((r.status, r.body_len), (200, size), "fan-out client");
                    assert_eq!(r.sha256, digest, "fan-out client: sha256");
                    r.ttfb.as_secs_f64()
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let mut slowest = 0f64;
    for h in hs {
        slowest = slowest.max(h.join().unwrap());
    }
    (t.elapsed().as_secs_f64(), slowest)
}
