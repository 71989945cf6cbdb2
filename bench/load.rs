//! A small HTTP/1.1 load generator for bench/: `--conns N` keep-alive connections (one thread
//! each, one request in flight each) GET one URL for `--secs S`, and every body is checked
//! against the sha256 named in the URL (`.../blobs/sha256:<hex>`), so a fast wrong answer never
//! counts. Prints one JSON line: requests, req/s, p50/p99 latency, GB/s, errors.
//! Run: cargo bench --bench load -- --bench --url http://127.0.0.1:5000/v2/x/blobs/sha256:... [--conns 64] [--secs 5] [--http10]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Opts {
    host: String,
    path: String,
    conns: usize,
    secs: u64,
    http10: bool,
    head: bool,
    want: Option<String>,
}

fn opts() -> Option<Opts> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = get("--url")?;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let want = path
        .rsplit_once("sha256:")
        .map(|(_, h)| h.to_string())
        .filter(|h| h.len() == 64);
    Some(Opts {
        host: host.to_string(),
        path: path.to_string(),
        conns: get("--conns").and_then(|v| v.parse().ok()).unwrap_or(64),
        secs: get("--secs").and_then(|v| v.parse().ok()).unwrap_or(5),
        http10: args.iter().any(|a| a == "--http10"),
        head: args.iter().any(|a| a == "--head"),
        want,
    })
}

struct Tally {
    lat_us: Vec<u32>,
    bytes: u64,
    errors: u64,
}

fn one(
    r: &mut BufReader<TcpStream>,
    req: &[u8],
    o: &Opts,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    r.get_mut().write_all(req)?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.") || line.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l
            .split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            len = v.1.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    if o.head {
        return Ok(0);
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    if let Some(want) = &o.want {
        let got = ringcache::digest::Digest::of(buf).hex();
        if &got != want {
            return Err(std::io::Error::other("body does not match its digest"));
        }
    }
    Ok(len as u64)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` runs benches too: nothing to do without --bench
    }
    let Some(o) = opts() else {
        eprintln!("usage: load --bench --url http://HOST:PORT/PATH [--conns N] [--secs S] [--http10] [--head]");
        std::process::exit(2);
    };
    let o = std::sync::Arc::new(o);
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let threads: Vec<_> = (0..o.conns)
        .map(|_| {
            let o = o.clone();
            std::thread::spawn(move || {
                let method = if o.head { "HEAD" } else { "GET" };
                let req = if o.http10 {
                    format!(
                        "{method} {} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                        o.path
                    )
                } else {
                    format!("{method} {} HTTP/1.1\r\nHost: {}\r\n\r\n", o.path, o.host)
                };
                let mut t = Tally {
                    lat_us: Vec::with_capacity(1 << 16),
                    bytes: 0,
                    errors: 0,
                };
                let mut buf = Vec::new();
                let mut conn: Option<BufReader<TcpStream>> = None;
                while Instant::now() < deadline {
                    if conn.is_none() {
                        match TcpStream::connect(&o.host) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                conn = Some(BufReader::with_capacity(1 << 16, s));
                            }
                            Err(_) => {
                                t.errors += 1;
                                continue;
                            }
                        }
                    }
                    let started = Instant::now();
                    match one(conn.as_mut().unwrap(), req.as_bytes(), &o, &mut buf) {
                        Ok(n) => {
                            t.lat_us
                                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            t.bytes += n;
                        }
                        Err(_) => {
                            t.errors += 1;
                            conn = None;
                        }
                    }
                }
                t
            })
        })
        .collect();
    let started = Instant::now();
    let mut lat = Vec::new();
    let (mut bytes, mut errors) = (0u64, 0u64);
    for th in threads {
        let t = th.join().unwrap();
        lat.extend(t.lat_us);
        bytes += t.bytes;
        errors += t.errors;
    }
    let secs = o.secs as f64;
    let _ = started;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{{\"requests\":{},\"rps\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"gbps\":{:.3},\"errors\":{},\"conns\":{}}}",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        bytes as f64 / secs / 1e9,
        errors,
        o.conns
    );
}
