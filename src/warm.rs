//! `ringcache warm`: pull images THROUGH a running ringcache, so that they are cached before
//! the first client asks (a new node, a release about to roll out). Not the data path: a CLI
//! on blocking std sockets.
//!
//! Each image's manifests are fetched (an index and every platform it lists, or only the
//! `--platform`s asked for), then every blob, a bounded number at a time, each on its own
//! keep-alive connection. Going through the server (not straight to the store) means a warm
//! joins fills in flight, counts as use (access times, so TTL and LRU see it), confirms links
//! upstream like any client, and works while the cache serves. Bodies are read in bounded
//! chunks, hashed and dropped: a blob whose bytes do not match its digest fails the image
//! (a broken cache is found, not hidden).
//!
//! Per image: a progress line on a terminal (bytes done of total, rate), plain lines
//! otherwise; the outcome of every image, with the reason for a failure.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::http::body::{response_framing, Chunked, Framing, Step};
use crate::limits::{MANIFEST_BYTES_MAX, WARM_CHUNK_BYTES, WARM_HEAD_BYTES_MAX};
use crate::oci::{Descriptor, Manifest};
use crate::reference::{ImageRef, Platform};
use crate::registry::Registries;

/// The Accept of every manifest request: every type, so an index is answered as an index.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json";

/// A connect, or a read that brings nothing, longer than this fails the request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Nested indexes followed at most this deep.
const DEPTH_MAX: usize = 4;

/// Where the server is: `http://host:port` (or `host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `host:port` as the Host header carries it.
    pub authority: String,
}

impl Server {
    pub fn parse(s: &str) -> Result<Server, String> {
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((_, _)) => {
                return Err(format!(
                    "{s}: only http:// is supported (warm talks to the cache on its own network)"
                ))
            }
            None => s,
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(format!("{s}: not a server URL (http://host:port)"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Server { authority })
    }

    /// The server a config's `http.addr` listens on (an unspecified address is reached on
    /// loopback).
    pub fn of_listen(addr: SocketAddr) -> Server {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V4(v) => v.to_string(),
            std::net::IpAddr::V6(v) => format!("[{v}]"),
        };
        Server {
            authority: format!("{ip}:{}", addr.port()),
        }
    }

    fn addr(&self) -> Result<SocketAddr, String> {
        self.authority
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.authority))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.authority))
    }
}

pub struct Options {
    pub server: Server,
    /// Only these platforms of an index (all when empty).
    pub platforms: Vec<Platform>,
    /// Blob downloads at once.
    pub jobs: usize,
    /// A live progress line (on a terminal) rather than plain lines.
    pub live: bool,
}

/// What a warmed image took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Warm every image, in order; one outcome each (the image as written, and what happened).
pub fn run(
    images: &[String],
    regs: &Registries,
    opts: &Options,
    out: &mut dyn Write,
) -> Vec<(String, Result<Stats, String>)> {
    let mut done_blobs = HashSet::new();
    let mut outcomes = Vec::new();
    for written in images {
        let started = Instant::now();
        let r = ImageRef::parse(written)
            .map_err(|e| format!("invalid image reference: {e}"))
            .and_then(|image| warm_one(&image, regs, opts, &mut done_blobs, written, out));
        let _ = match &r {
            Ok(s) => {
                let secs = started.elapsed().as_secs_f64();
                writeln!(
                    out,
                    "{}{written}: done: {} manifests, {} blobs, {} in {secs:.1}s ({})",
                    if opts.live { "\r\x1b[2K" } else { "" },
                    s.manifests,
                    s.blobs,
                    human(s.bytes),
                    rate(s.bytes, secs)
                )
            }
            Err(e) => writeln!(
                out,
                "{}{written}: FAILED: {e}",
                if opts.live { "\r\x1b[2K" } else { "" }
            ),
        };
        let _ = out.flush();
        outcomes.push((written.clone(), r));
    }
    outcomes
}

fn warm_one(
    image: &ImageRef,
    regs: &Registries,
    opts: &Options,
    done_blobs: &mut HashSet<Digest>,
    written: &str,
    out: &mut dyn Write,
) -> Result<Stats, String> {
    let at = image.locate(regs)?;
    let query = at
        .ns
        .as_deref()
        .map(|ns| format!("?ns={}", crate::route::percent_encode(ns)))
        .unwrap_or_default();
    let addr = opts.server.addr()?;
    let mut client = Client::new(addr, &opts.server.authority);
    let base = format!("/v2/{}", image.name);
    // Manifests, depth first: the tag's (or digest's), then each platform's.
    let mut stats = Stats::default();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut queue = vec![(image.reference(), image.digest, 0usize)];
    let mut seen = HashSet::new();
    while let Some((reference, want, depth)) = queue.pop() {
        let path = format!("{base}/manifests/{reference}{query}");
        let body = client.manifest(&path, want)?;
        stats.manifests += 1;
        match crate::oci::parse(&body).map_err(|e| format!("manifest {reference}: {e}"))? {
            Manifest::Index(list) => {
                if depth >= DEPTH_MAX {
                    return Err("indexes nested too deep".into());
                }
                let chosen: Vec<&Descriptor> = list
                    .iter()
                    .filter(|d| {
                        opts.platforms.is_empty()
                            || d.platform.as_ref().is_some_and(|(os, arch, v)| {
                                opts.platforms
                                    .iter()
                                    .any(|p| p.matches(os, arch, v.as_deref()))
                            })
                    })
                    .collect();
                if chosen.is_empty() && !list.is_empty() {
                    let has: Vec<String> = list
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|(os, a, v)| match v {
                            Some(v) => format!("{os}/{a}/{v}"),
                            None => format!("{os}/{a}"),
                        })
                        .collect();
                    return Err(format!(
                        "no manifest for {} in the index (it has {})",
                        opts.platforms
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        has.join(", ")
                    ));
                }
                for d in chosen {
                    if seen.insert(d.digest) {
                        queue.push((d.digest.to_string(), Some(d.digest), depth + 1));
                    }
                }
            }
            m => {
                for b in m.blobs() {
                    if !blobs.iter().any(|x| x.digest == b.digest) {
                        blobs.push(b.clone());
                    }
                }
            }
        }
    }
    // Blobs warmed earlier in this run are done already.
    blobs.retain(|b| !done_blobs.contains(&b.digest));
    let total: u64 = blobs.iter().filter_map(|b| b.size).sum();
    if !opts.live {
        let _ = writeln!(
            out,
            "{written}: {} manifests, {} blobs ({}) to pull",
            stats.manifests,
            blobs.len(),
            human(total)
        );
    }
    let bytes = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let started = Instant::now();
    let jobs = opts
        .jobs
        .clamp(1, crate::limits::WARM_JOBS_MAX)
        .min(blobs.len().max(1));
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (blobs, bytes, next, failed, base, query) =
                (&blobs, &bytes, &next, &failed, &base, &query);
            scope.spawn(move || {
                let mut client = Client::new(addr, &opts.server.authority);
                loop {
                    if failed.lock().unwrap().is_some() {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = blobs.get(i) else { break };
                    let path = format!("{base}/blobs/{}{query}", b.digest);
                    if let Err(e) = client.blob(&path, b, bytes) {
                        failed.lock().unwrap().get_or_insert(e);
                    }
                    let _ = tx.send(());
                }
            });
        }
        drop(tx);
        // Progress until every job has ended (the channel closes with the last one).
        let mut finished = 0;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if opts.live {
                let done = bytes.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let _ = write!(
                    out,
                    "\r\x1b[2K{written}: {} of {}, {finished}/{} blobs, {}",
                    human(done),
                    human(total),
                    blobs.len(),
                    rate(done, secs)
                );
                let _ = out.flush();
            }
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    done_blobs.extend(blobs.iter().map(|b| b.digest));
    stats.blobs = blobs.len();
    stats.bytes = bytes.load(Ordering::Relaxed);
    Ok(stats)
}

fn human(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

/// A blocking HTTP/1.1 client to the server: one keep-alive connection, opened again when
/// the server closed it.
struct Client {
    addr: SocketAddr,
    host: String,
    conn: Option<TcpStream>,
    /// Read buffer: `buf[pos..len]` are bytes read and not yet used.
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

/// A response head: status, framing, and the headers warm reads.
struct Head {
    status: u16,
    framing: Framing,
    digest: Option<String>,
    keep_alive: bool,
}

impl Client {
    fn new(addr: SocketAddr, host: &str) -> Client {
        Client {
            addr,
            host: host.to_string(),
            conn: None,
            buf: vec![0; WARM_CHUNK_BYTES.max(WARM_HEAD_BYTES_MAX)],
            pos: 0,
            len: 0,
        }
    }

    /// GET a manifest (capped); checks it against `want` (by digest) or the digest the server
    /// named (by tag).
    fn manifest(&mut self, path: &str, want: Option<Digest>) -> Result<Vec<u8>, String> {
        let head = self.get(path, Some(ACCEPT))?;
        let mut body = Vec::new();
        self.body(&head, |chunk| {
            if body.len() as u64 + chunk.len() as u64 > MANIFEST_BYTES_MAX {
                return Err("manifest over 4 MiB".to_string());
            }
            body.extend_from_slice(chunk);
            Ok(())
        })?;
        self.finish(&head);
        if head.status != 200 {
            return Err(format!("{path}: {}", error_text(head.status, &body)));
        }
        let got = Digest::of(&body);
        let named = want.or_else(|| head.digest.as_deref().and_then(|d| Digest::parse(d).ok()));
        if named.is_some_and(|d| d != got) {
            return Err(format!(
                "{path}: the manifest does not match its digest (got {got})"
            ));
        }
        Ok(body)
    }

    /// GET a blob, hashing it as it streams and adding its bytes to `done`.
    fn blob(&mut self, path: &str, b: &Descriptor, done: &AtomicU64) -> Result<(), String> {
        let head = self.get(path, None)?;
        if head.status != 200 {
            let mut body = Vec::new();
            self.body(&head, |c| {
                if body.len() < 64 * 1024 {
                    body.extend_from_slice(c);
                }
                Ok(())
            })?;
            self.finish(&head);
            return Err(format!(
                "blob {}: {}",
                b.digest,
                error_text(head.status, &body)
            ));
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let n = self.body(&head, |c| {
            ctx.update(c);
            done.fetch_add(c.len() as u64, Ordering::Relaxed);
            Ok(())
        })?;
        self.finish(&head);
        let got = Digest::from_ring(&ctx.finish());
        if got != b.digest {
            return Err(format!(
                "blob {}: the server sent {n} bytes that hash to {got}: the cache or the path to it is broken",
                b.digest
            ));
        }
        if b.size.is_some_and(|s| s != n) {
            return Err(format!(
                "blob {}: {n} bytes, the manifest says {}",
                b.digest,
                b.size.unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// Send a GET and read the response head; a kept connection the server had closed is
    /// replaced once.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Head, String> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringcache-warm/{}\r\n",
            self.host,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = accept {
            req.push_str(&format!("Accept: {a}\r\n"));
        }
        req.push_str("\r\n");
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            match self.exchange(req.as_bytes()) {
                Ok(h) => return Ok(h),
                // A kept connection may have been closed by the server meanwhile.
                Err(_) if reused && attempt == 0 => {
                    self.conn = None;
                }
                Err(e) => return Err(format!("{path}: {e}")),
            }
        }
        Err(format!("{path}: no answer"))
    }

    fn exchange(&mut self, req: &[u8]) -> Result<Head, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)
                .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            s.set_read_timeout(Some(READ_TIMEOUT)).ok();
            s.set_nodelay(true).ok();
            self.conn = Some(s);
            self.pos = 0;
            self.len = 0;
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        conn.write_all(req).map_err(|e| e.to_string())?;
        loop {
            let window = self.buf.get(self.pos..self.len).unwrap_or_default();
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(window) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let framing = response_framing(status, false, resp.headers)
                        .map_err(|e| format!("bad response framing: {e:?}"))?;
                    let find = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                            .map(|v| v.trim().to_string())
                    };
                    let keep_alive = !find("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        && resp.version == Some(1);
                    let digest = find("docker-content-digest");
                    self.pos += n;
                    return Ok(Head {
                        status,
                        framing,
                        digest,
                        keep_alive,
                    });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("bad response head: {e}")),
            }
            if self.len - self.pos >= WARM_HEAD_BYTES_MAX {
                return Err("response head too large".into());
            }
            self.fill()?;
        }
    }

    /// Read more bytes into the buffer (moving what is unread to its start first).
    fn fill(&mut self) -> Result<usize, String> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let free = self.buf.get_mut(self.len..).unwrap_or_default();
        if free.is_empty() {
            return Err("read buffer full".into());
        }
        let n = conn.read(free).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.len += n;
        Ok(n)
    }

    /// Hand the body to `sink` a chunk at a time; returns its length.
    fn body(
        &mut self,
        head: &Head,
        mut sink: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut total = 0u64;
        match head.framing {
            Framing::Empty => {}
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.pos == self.len {
                        self.fill()?;
                    }
                    let n = ((self.len - self.pos) as u64).min(left) as usize;
                    sink(self.buf.get(self.pos..self.pos + n).unwrap_or_default())?;
                    self.pos += n;
                    left -= n as u64;
                    total += n as u64;
                }
            }
            Framing::Chunked => {
                let mut dec = Chunked::new();
                loop {
                    if self.pos == self.len {
                        self.fill()?;
                    }
                    let input = self.buf.get(self.pos..self.len).unwrap_or_default();
                    match dec
                        .step(input)
                        .map_err(|e| format!("bad chunked body: {e:?}"))?
                    {
                        Step::Data {
                            start,
                            end,
                            consumed,
                        } => {
                            let data = input.get(start..end).unwrap_or_default();
                            total += data.len() as u64;
                            sink(data)?;
                            self.pos += consumed;
                        }
                        Step::Consumed(n) => self.pos += n,
                        Step::Done(n) => {
                            self.pos += n;
                            break;
                        }
                    }
                }
            }
            Framing::Close => loop {
                if self.pos == self.len {
                    match self.fill() {
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let data = self.buf.get(self.pos..self.len).unwrap_or_default();
                total += data.len() as u64;
                sink(data)?;
                self.pos = self.len;
            },
        }
        Ok(total)
    }

    /// After a body: keep the connection only if the server keeps it.
    fn finish(&mut self, head: &Head) {
        if !head.keep_alive || matches!(head.framing, Framing::Close) {
            self.conn = None;
        }
    }
}

/// An error answer in a line: the OCI error's code and detail when the body is one.
fn error_text(status: u16, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["errors"][0];
    match e["code"].as_str() {
        Some(code) => {
            let mut s = format!("{status} {code}");
            for k in ["message", "detail"] {
                if let Some(t) = e[k].as_str().filter(|t| !t.is_empty()) {
                    s.push_str(&format!(": {t}"));
                }
            }
            s
        }
        None => format!("HTTP {status}"),
    }
}

/// Images from a list: one per line, `#` comments and blank lines skipped.
pub fn read_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        for (s, want) in [
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://cache.corp", "cache.corp:80"),
            ("http://[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(Server::parse(s).unwrap().authority, want, "{s}");
        }
        for bad in ["https://x:1", "http://x:1/v2", "http://u@x:1", ""] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Server::of_listen("0.0.0.0:5000".parse().unwrap()).authority,
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn lists_and_errors() {
        assert_eq!(
            read_list("alpine:3\n\n# a comment\n  ghcr.io/a/b:1  # why\n"),
            ["alpine:3", "ghcr.io/a/b:1"]
        );
        assert_eq!(
            error_text(
                404,
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"x"}]}"#
            ),
            "404 MANIFEST_UNKNOWN: manifest unknown: x"
        );
        assert_eq!(error_text(502, b"oops"), "HTTP 502");
    }
}
