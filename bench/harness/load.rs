//! Load generation: many keep-alive connections on one URL (scenario d), ApacheBench as
//! operators run it, and a fan-out of clients released together on one cold blob (b, e).
//! Every body is checked against its digest, so a fast wrong answer never counts.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::{self, stream};
use crate::MANIFEST_ACCEPT;

/// What a load run measured.
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl Load {
    /// Sum the load threads' results, each (latencies in µs, errors), over `secs`.
    pub fn of(parts: impl Iterator<Item = (Vec<u32>, u64)>, secs: f64) -> Load {
        let mut lat: Vec<u32> = Vec::new();
        let mut errors = 0;
        for (l, e) in parts {
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
}

/// What every response of a load run must be.
struct Want {
    /// Content-Length (for a HEAD, of the body it describes).
    len: u64,
    /// sha256 hex of the body (unchecked for a HEAD).
    hex: String,
    /// The request, sent as is on every turn.
    req: String,
}

/// `conns` keep-alive connections over 2 threads (io_uring, one task per connection), each
/// with one request in flight, for `secs`; every body is checked against `body`'s
/// (length, `sha256:<hex>`).
pub fn load(
    addr: SocketAddr,
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
        format!("{method} {path} HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: {addr}\r\nUser-Agent: ApacheBench/2.3\r\nAccept: {accept}\r\n\r\n")
    } else {
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n")
    };
    let head_only = method == "HEAD";
    let want = Arc::new(Want {
        len: body.0,
        hex: body.1.trim_start_matches("sha256:").to_string(),
        req,
    });
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
                        .map(|_| monoio::spawn(conn_loop(addr, want.clone(), head_only, deadline)))
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
    Load::of(threads.into_iter().map(|t| t.join().unwrap()), secs)
}

/// One connection's turns until `deadline`: latencies (µs) of the good ones, and the errors
/// (a wrong answer, or a broken connection, which is then reopened).
async fn conn_loop(
    addr: SocketAddr,
    want: Arc<Want>,
    head_only: bool,
    deadline: Instant,
) -> (Vec<u32>, u64) {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut sock: Option<monoio::net::TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut have = 0usize; // bytes of buf not yet consumed
    while Instant::now() < deadline {
        if sock.is_none() {
            match monoio::net::TcpStream::connect(addr).await {
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
        let (res, _) = s.write_all(want.req.clone().into_bytes()).await;
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
                        && clen == want.len
                        && (head_only || support::sha256_hex(&buf[hl..hl + body]) == want.hex);
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

/// ApacheBench, as operators run it: HTTP/1.0 keep-alive (`-k`), 64 concurrent. `None` when
/// `ab` is missing or printed no rate.
pub fn ab(addr: SocketAddr, path: &str, secs: f64, size: u64) -> Option<Load> {
    let out = std::process::Command::new("ab")
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
        .arg(format!("http://{addr}{path}"))
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

/// `n` clients connect, then are released together on one URL; each checks length and
/// sha256. Returns the wall time and the slowest time to first byte.
pub fn fan_out(addr: SocketAddr, path: &str, digest: &str, size: u64, n: usize) -> (f64, f64) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (b, path, digest) = (barrier.clone(), path.to_string(), digest.to_string());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
                    b.wait();
                    let t = Instant::now();
                    stream::send(&mut s, addr, "GET", &path, &[], None);
                    let r = stream::read(s, false, t);
                    assert_eq!((r.status, r.body_len), (200, size), "fan-out client");
                    assert_eq!(r.digest, digest, "fan-out client: sha256");
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
