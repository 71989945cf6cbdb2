//! (t) TLS to clients: ringcache with `http.tls` beside nginx with the same certificate (ECDSA
//! P-256; `ssl_protocols TLSv1.2 TLSv1.3`, sendfile on, keep-alive, a session cache), both
//! started for this scenario only and serving the warm content of (c) and (d): small hits on
//! 64 keep-alive connections, a warm big blob to 1 and 4 clients, and new connections per
//! second (a full handshake, one small GET, close). The load generator is the same rustls
//! client for both, on the same 2 cores, so the ratio is what counts.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::images::Image;
use crate::load::Load;
use crate::scenarios::{blob_path, order, Bench};
use crate::support::{self, certs};
use crate::systems::System;
use crate::MIB;

impl Bench<'_> {
    /// (t) TLS, ringcache vs nginx.
    pub fn tls(&mut self, big: &Image, small: &Image) {
        let dir = self.gen.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = certs::ca(&dir, "ca");
        let (cert, key) = certs::issue(&dir, "server", "ec", "ca", "server");
        let rc = System::ringcache_tls(self.s, &dir, &cert, &key);
        let nginx = System::nginx_tls(self.s, &dir, &cert, &key);
        let client = Arc::new(certs::client_config(&[&ca], None));
        let mut fresh = certs::client_config(&[&ca], None);
        fresh.resumption = rustls::client::Resumption::disabled();
        let fresh = Arc::new(fresh);
        let (bl, sl) = (&big.layers[0], &small.layers[0]);
        let (big_path, small_path) = (blob_path(big, bl), blob_path(small, sl));
        // Warm the TLS ringcache (its own store): the fill, then a hit, as (c) and (d) do.
        for (path, digest, size) in [
            (&big_path, &bl.digest, bl.size),
            (&small_path, &sl.digest, sl.size),
        ] {
            get_verified(rc.addr, &client, path, digest, size);
            rc.wait_stored(digest);
            get_verified(rc.addr, &client, path, digest, size);
            get_verified(nginx.addr, &client, path, digest, size);
        }
        let systems = [&rc, &nginx];
        let label = "(t) TLS 1 KiB blob GET, 64 keep-alive conns";
        for rep in 0..self.o.reps {
            for sys in order(&systems, rep) {
                sys.ready();
                let r = load(
                    sys.addr,
                    &client,
                    &small_path,
                    64,
                    self.o.secs,
                    (sl.size, &sl.digest),
                );
                self.res.add(label, "req/s", sys.name, rep, r.rps);
                self.res.add(label, "p50 ms", sys.name, rep, r.p50_ms);
                self.res.add(label, "p99 ms", sys.name, rep, r.p99_ms);
                self.res
                    .add(label, "errors", sys.name, rep, r.errors as f64);
                self.res
                    .add(label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
            }
        }
        for clients in [1usize, 4] {
            let label = format!(
                "(t) TLS warm {} MiB, {clients} client{}",
                self.o.big / MIB,
                if clients > 1 { "s" } else { "" }
            );
            for rep in 0..self.o.reps {
                for sys in order(&systems, rep) {
                    sys.ready();
                    let t = Instant::now();
                    let hs: Vec<_> = (0..clients)
                        .map(|_| {
                            let (addr, c, p, d, n) = (
                                sys.addr,
                                client.clone(),
                                big_path.clone(),
                                bl.digest.clone(),
                                bl.size,
                            );
                            std::thread::spawn(move || get_verified(addr, &c, &p, &d, n))
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                    let gbps = (bl.size * clients as u64) as f64 / t.elapsed().as_secs_f64() / 1e9;
                    self.res.add(&label, "GB/s", sys.name, rep, gbps);
                    self.res
                        .add(&label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                }
            }
        }
        let label = "(t) TLS new connections (full handshake + 1 KiB GET), 16 clients";
        for rep in 0..self.o.reps {
            for sys in order(&systems, rep) {
                sys.ready();
                let (n, errors) =
                    handshakes(sys.addr, &fresh, &small_path, 16, self.o.secs, sl.size);
                self.res
                    .add(label, "conns/s", sys.name, rep, n as f64 / self.o.secs);
                self.res.add(label, "errors", sys.name, rep, errors as f64);
            }
        }
    }
}

impl System {
    /// A second ringcache, TLS on, its own store, upstream the origin.
    fn ringcache_tls(s: &crate::systems::Systems, dir: &Path, cert: &Path, key: &Path) -> System {
        let port = support::free_port();
        let cfg = dir.join("ringcache-tls.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}, tls: {{certificate: {}, key: {}}}}}\nproxy: {{remoteurl: {}}}\n",
                dir.join("ringcache").display(),
                cert.display(),
                key.display(),
                s.origin.url()
            ),
        )
        .unwrap();
        let bin =
            std::env::var("BENCH_RINGCACHE").unwrap_or_else(|_| "target/release/ringcache".into());
        let mut cmd = std::process::Command::new(bin);
        cmd.env_remove("BENCH_RINGCACHE")
            .args(["serve", "--config"])
            .arg(&cfg);
        let sys = System::start(
            "ringcache",
            SocketAddr::from(([127, 0, 0, 1], port)),
            dir.join("ringcache"),
            &cmd,
            dir.join("ringcache-tls.log"),
        );
        sys.wait_listening();
        sys
    }

    /// A second nginx: TLS with the same certificate, the same files as the plain one.
    fn nginx_tls(s: &crate::systems::Systems, dir: &Path, cert: &Path, key: &Path) -> System {
        let port = support::free_port();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let conf = dir.join("nginx-tls.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes {workers}; daemon off; pid {d}/nginx-tls.pid; error_log {d}/nginx-tls.err;\nevents {{ worker_connections 16384; }}\nhttp {{ access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000; keepalive_timeout 75s;\n  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;\n  types {{ application/vnd.oci.image.manifest.v1+json json; }} default_type application/octet-stream;\n  server {{ listen 127.0.0.1:{port} ssl backlog=4096; ssl_certificate {cert}; ssl_certificate_key {key}; root {root}; }} }}\n",
                d = dir.display(),
                cert = cert.display(),
                key = key.display(),
                root = s.nginx.root.display(),
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("nginx");
        cmd.arg("-c").arg(&conf);
        let sys = System::start(
            "nginx",
            SocketAddr::from(([127, 0, 0, 1], port)),
            s.nginx.root.clone(),
            &cmd,
            dir.join("nginx-tls.log"),
        );
        sys.wait_listening();
        sys
    }
}

fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<certs::Tls> {
    let s = certs::connect(addr, config)?;
    s.sock.set_nodelay(true)?;
    Ok(s)
}

/// GET over a new TLS connection, the body hashed as it streams; checked whole.
fn get_verified(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    digest: &str,
    size: u64,
) {
    let mut s = connect(addr, config).unwrap();
    s.sock
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let (status, len, hex) = read_hashed(&mut s);
    assert_eq!((status, len), (200, size), "GET {path} on {addr} over TLS");
    assert_eq!(
        format!("sha256:{hex}"),
        digest,
        "GET {path} on {addr}: sha256"
    );
}

/// Read one response: status, body length, sha256 of the body.
fn read_hashed(s: &mut impl Read) -> (u16, u64, String) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0;
    let (status, hl, clen) = loop {
        let n = s.read(&mut buf[have..]).unwrap_or(0);
        assert!(n > 0, "closed before a response head");
        have += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(hl)) = r.parse(&buf[..have]) {
            let clen: u64 = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            break (r.code.unwrap_or(0), hl, clen);
        }
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let first = (have - hl).min(clen as usize);
    ctx.update(&buf[hl..hl + first]);
    let mut n = first as u64;
    while n < clen {
        let k = ((clen - n) as usize).min(buf.len());
        let got = s.read(&mut buf[..k]).unwrap_or(0);
        if got == 0 {
            break;
        }
        ctx.update(&buf[..got]);
        n += got as u64;
    }
    let hex = ringcache::digest::Digest::from_ring(&ctx.finish()).hex();
    (status, n, hex)
}

/// `conns` keep-alive TLS connections, one thread each, for `secs`; each response checked.
fn load(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    conns: usize,
    secs: f64,
    body: (u64, &str),
) -> Load {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let want = body.1.trim_start_matches("sha256:").to_string();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let hs: Vec<_> = (0..conns)
        .map(|_| {
            let (config, req, want, len) = (config.clone(), req.clone(), want.clone(), body.0);
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    let mut s = connect(addr, &config).unwrap();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if s.write_all(req.as_bytes()).is_err() {
                            errors += 1;
                            break;
                        }
                        let (status, n, hex) = read_hashed(&mut s);
                        if status == 200 && n == len && hex == want {
                            lat.push(t.elapsed().as_micros() as u32);
                        } else {
                            errors += 1;
                        }
                    }
                    (lat, errors)
                })
                .unwrap()
        })
        .collect();
    Load::of(hs.into_iter().map(|h| h.join().unwrap()), secs)
}

/// `clients` threads each opening connections (a full handshake: no resumption), one GET,
/// close, until `secs` pass: connections completed, errors.
fn handshakes(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    clients: usize,
    secs: f64,
    size: u64,
) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let (config, req) = (config.clone(), req.clone());
            std::thread::spawn(move || {
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let ok = connect(addr, &config).is_ok_and(|mut s| {
                        s.write_all(req.as_bytes()).is_ok() && {
                            let (status, n, _) = read_hashed(&mut s);
                            status == 200 && n == size
                        }
                    });
                    if ok {
                        done += 1;
                    } else {
                        errors += 1;
                    }
                }
                (done, errors)
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}
