//! HTTP for bodies too big to hold in memory (the bench's GiB layers): a request whose body
//! streams from a file, and a response whose body is hashed as it streams, timed to its first
//! byte. The response head is read by `http::read_response`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::http;

/// Read buffer size: big enough that a GiB body is a few thousand reads.
const BUF_BYTES: usize = 256 * 1024;

/// How long the registry may take to answer a blob upload: it verifies and moves a GiB
/// after the last byte.
const PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// A response whose body was hashed and counted, not kept.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes received.
    pub body_len: u64,
    /// `sha256:<hex>` of the body received.
    pub digest: String,
    /// From the start of the request (before connecting) to the response's first byte.
    pub ttfb: Duration,
    /// From the start of the request to the body's last byte.
    pub total: Duration,
}

impl Streamed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), its body streamed from the file
/// `body`; each read waits at most `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Path>,
    timeout: Duration,
) -> Streamed {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    send(&mut s, addr, method, path, headers, body);
    read(s, method == "HEAD", started)
}

/// Send a request (`Connection: close`) whose body, if any, is the file `body`.
pub fn send(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Path>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(p) = body {
        let len = std::fs::metadata(p).unwrap().len();
        head.push_str(&format!("Content-Length: {len}\r\n"));
    } else if method == "PUT" || method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(p) = body {
        std::io::copy(&mut std::fs::File::open(p).unwrap(), s).unwrap();
    }
}

/// Read one response, hashing the body as it arrives (Content-Length bytes, or to the close);
/// `started` is when the request began, the origin of `ttfb` and `total`.
pub fn read(s: TcpStream, head_request: bool, started: Instant) -> Streamed {
    let mut r = BufReader::with_capacity(BUF_BYTES, s);
    let first = r.fill_buf().map(|b| b.len()).unwrap_or(0);
    let ttfb = started.elapsed();
    assert!(first > 0, "connection closed without a response");
    // As for a HEAD request: the head only; the body is streamed below.
    let head = http::read_response(&mut r, true).unwrap();
    let len: Option<u64> = head.header("content-length").and_then(|v| v.parse().ok());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0u64;
    if !head_request {
        let want = len.unwrap_or(u64::MAX);
        let mut buf = vec![0u8; BUF_BYTES];
        while n < want {
            let k = (want - n).min(buf.len() as u64) as usize;
            let got = r.read(&mut buf[..k]).unwrap_or(0);
            if got == 0 {
                break;
            }
            ctx.update(&buf[..got]);
            n += got as u64;
        }
    }
    Streamed {
        status: head.status,
        headers: head.headers,
        body_len: n,
        digest: format!(
            "sha256:{}",
            ringcache::digest::Digest::from_ring(&ctx.finish()).hex()
        ),
        ttfb,
        total: started.elapsed(),
    }
}

/// Upload one blob from a file (monolithic: POST, then PUT with the digest).
pub fn push_blob(addr: SocketAddr, name: &str, file: &Path, digest: &str) {
    let r = http::request(
        addr,
        "POST",
        &format!("/v2/{name}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "start upload: {}", r.text());
    let loc = r.header("location").unwrap().to_string();
    // The location may be absolute; keep its path and query.
    let loc = match loc.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
        None => loc,
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = request(
        addr,
        "PUT",
        &format!("{loc}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(file),
        PUSH_TIMEOUT,
    );
    assert_eq!(r.status, 201, "finish upload of {digest}");
}
