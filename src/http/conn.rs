//! The server connection (data path steps 1–2, and the response side of every step): read a
//! request head within the limits, route it, hand it to `proxy::serve`, write the answer;
//! keep-alive and pipelining (requests answered in order, one at a time).
//!
//! States: `Idle` (waiting for the first byte, keep-alive timeout) → `Head` (reading the head,
//! head deadline) → `Serving` (proxy writes the response) → `Idle`, or `Closing` after
//! `Connection: close`, a framing error, a write refused without reading its body, or a
//! response cut short.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::parse::{parse_range, parse_request, Head, Parsed};
use crate::error::{Error, Kind};
use crate::limits::CHUNK_BYTES;
use crate::proxy::{self, Request};
use crate::route::{self, Method};
use crate::worker::Worker;

/// Header slots on the stack for one parse; `limits.headers_max` (≤ this) of them are used.
pub const HEADER_SLOTS_MAX: usize = 1024;

/// One request's response side, handed to the proxy.
pub struct Exchange<'a> {
    pub sock: &'a mut TcpStream,
    /// HEAD: send the head only.
    pub head_only: bool,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    minor_version: u8,
    /// The connection's body buffer (file reads), rented to followers and hits.
    pub buf: Vec<u8>,
    /// Set once a response head is written: after that an error can only cut the connection.
    pub wrote_head: bool,
    pub status: u16,
    pub body_bytes: u64,
    pub send_stall: Duration,
    /// Hit, miss, coalesced... (set by the proxy; for counters and the access log).
    pub cache: crate::metrics::Cache,
    /// Blob or manifest, when the request was for one.
    pub ty: Option<crate::metrics::Type>,
    /// Time spent waiting for upstream before the first byte (misses).
    pub upstream_ms: Option<u64>,
}

impl Exchange<'_> {
    /// Write a response head. `headers` are added after the standard ones.
    pub async fn send_head(
        &mut self,
        status: u16,
        content_length: u64,
        headers: &[(&str, &str)],
    ) -> std::io::Result<()> {
        assert!(!self.wrote_head, "response head written twice");
        let mut h = String::with_capacity(256);
        h.push_str("HTTP/1.1 ");
        h.push_str(&status.to_string());
        h.push(' ');
        h.push_str(reason(status));
        h.push_str("\r\nContent-Length: ");
        h.push_str(&content_length.to_string());
        h.push_str("\r\nDocker-Distribution-API-Version: registry/2.0\r\n");
        if !self.keep_alive {
            h.push_str("Connection: close\r\n");
        } else if self.minor_version == 0 {
            h.push_str("Connection: keep-alive\r\n");
        }
        for (name, value) in headers {
            h.push_str(name);
            h.push_str(": ");
            h.push_str(value);
            h.push_str("\r\n");
        }
        h.push_str("\r\n");
        self.wrote_head = true;
        self.status = status;
        self.write(h.into_bytes()).await
    }

    /// A complete response from memory (the body is skipped for HEAD).
    pub async fn send_full(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> std::io::Result<()> {
        self.send_head(status, body.len() as u64, headers).await?;
        if self.head_only || body.is_empty() {
            return Ok(());
        }
        self.body_bytes += body.len() as u64;
        self.write(body).await
    }

    pub async fn send_error(&mut self, e: &Error) -> std::io::Result<()> {
        let status = e.kind.status();
        if matches!(e.kind, Kind::BadRequest | Kind::HeadTooLarge) {
            self.keep_alive = false;
        }
        let body = e.body().into_bytes();
        self.send_full(
            status,
            &[("Content-Type", "application/json; charset=utf-8")],
            body,
        )
        .await
    }

    /// Write bytes with the send-stall timeout: a client that reads nothing is cut.
    pub async fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        match monoio::time::timeout(self.send_stall, self.sock.write_all(bytes)).await {
            Ok((res, _)) => res.map(|_| ()),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Stream `[start, end]` of an open, complete file to the client.
    pub async fn send_file(
        &mut self,
        file: &monoio::fs::File,
        start: u64,
        end: u64,
    ) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut pos = start;
        let mut result = Ok(());
        while pos <= end {
            let want = ((end + 1 - pos) as usize).min(CHUNK_BYTES);
            buf.clear();
            buf.reserve(want);
            let (res, slice) = file.read_at(buf.slice_mut(0..want), pos).await;
            buf = slice.into_inner();
            let n = match res {
                Ok(0) => {
                    result = Err(std::io::ErrorKind::UnexpectedEof.into());
                    break;
                }
                Ok(n) => n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let (res, slice) =
                match monoio::time::timeout(self.send_stall, self.sock.write_all(buf.slice(0..n)))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        result = Err(std::io::ErrorKind::TimedOut.into());
                        buf = Vec::new();
                        break;
                    }
                };
            buf = slice.into_inner();
            if let Err(e) = res {
                result = Err(e);
                break;
            }
            pos += n as u64;
            self.body_bytes += n as u64;
        }
        self.buf = buf;
        result
    }
}

/// Serve one client connection until it closes, idles out, or breaks the rules.
pub async fn serve(worker: Rc<Worker>, mut sock: TcpStream, peer: std::net::SocketAddr) {
    // Limits as they are now (SIGHUP may change them for later connections).
    let limits = worker.shared.live.limits();
    let mut buf: Vec<u8> = Vec::with_capacity(limits.head_bytes_max);
    let mut body_buf: Vec<u8> = Vec::new();
    loop {
        let (head, back) = read_head(&mut sock, buf, &limits, &worker.shared.drain).await;
        buf = back;
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let mut x = Exchange {
                    sock: &mut sock,
                    head_only: false,
                    keep_alive: false,
                    minor_version: 1,
                    buf: Vec::new(),
                    wrote_head: false,
                    status: 0,
                    body_bytes: 0,
                    send_stall: limits.send_stall,
                    cache: Default::default(),
                    ty: None,
                    upstream_ms: None,
                };
                tracing::debug!(%peer, error = %e, "bad request head");
                let _ = x.send_error(&e).await;
                return;
            }
        };
        let started = Instant::now();
        let method = Method::parse(head.method.str(&buf));
        let target = head.target.str(&buf);
        let routed = route::route(method, target);
        // A request with a body we will not read (writes are refused) ends the connection.
        let keep_alive = head.keep_alive() && !head.has_body;
        let mut x = Exchange {
            sock: &mut sock,
            head_only: head.method.str(&buf) == "HEAD",
            keep_alive,
            minor_version: head.minor_version,
            buf: std::mem::take(&mut body_buf),
            wrote_head: false,
            status: 0,
            body_bytes: 0,
            send_stall: limits.send_stall,
            cache: Default::default(),
            ty: None,
            upstream_ms: None,
        };
        let result = match routed {
            Ok(Some(route)) => {
                let req = Request {
                    method,
                    route,
                    accept: accept_of(&head, &buf),
                    range: head.range.and_then(|r| parse_range(r.of(&buf))),
                };
                proxy::serve(&worker, &req, &mut x).await
            }
            Ok(None) => x
                .send_full(
                    404,
                    &[("Content-Type", "text/plain; charset=utf-8")],
                    b"404 page not found\n".to_vec(),
                )
                .await
                .map_err(|e| Error::client(Kind::Internal, "write").with_cause(e)),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if x.wrote_head {
                // Mid-body: the only honest signal left is to cut the connection short.
                tracing::info!(%peer, error = %e, "response cut short");
                x.keep_alive = false;
            } else {
                if e.side != crate::error::Side::Client {
                    tracing::info!(%peer, error = %e, "request failed");
                }
                let _ = x.send_error(&e).await;
            }
        }
        let elapsed = started.elapsed();
        let method_str = head.method.str(&buf);
        worker.counters().request(
            method_str,
            x.status,
            elapsed.as_secs_f64(),
            x.cache,
            x.ty,
            x.body_bytes,
        );
        // The access log: one line per request; the target is escaped (control characters
        // from clients never reach the log raw).
        tracing::info!(
            target: "ringcache::access",
            %peer,
            method = %method_str.escape_debug(),
            target = %head.target.str(&buf).escape_debug(),
            status = x.status,
            bytes = x.body_bytes,
            us = elapsed.as_micros() as u64,
            cache = %x.cache.as_str(),
            upstream_ms = x.upstream_ms.unwrap_or(0),
            "request"
        );
        // Draining: answer what was asked, then close.
        let keep = x.keep_alive && !worker.shared.drain.is_draining();
        body_buf = std::mem::take(&mut x.buf);
        if !keep {
            return;
        }
        buf.drain(..head.len);
    }
}

/// The client's Accept headers joined (forwarded upstream for manifests).
fn accept_of(head: &Head, buf: &[u8]) -> Option<String> {
    let mut out = String::new();
    for a in head.accepts(buf) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(a);
    }
    (!out.is_empty()).then_some(out)
}

/// Read until `buf` holds a complete head. `Ok(None)`: the client closed or idled out.
async fn read_head(
    sock: &mut TcpStream,
    mut buf: Vec<u8>,
    limits: &crate::limits::Limits,
    drain: &crate::worker::Drain,
) -> (Result<Option<Head>, Error>, Vec<u8>) {
    let mut deadline: Option<Instant> = None;
    loop {
        if !buf.is_empty() {
            match parse_head(&buf, limits) {
                Ok(Parsed::Complete(h)) => return (Ok(Some(h)), buf),
                Ok(Parsed::Partial) => {}
                Err(e) => return (Err(e), buf),
            }
        }
        let timeout = match deadline {
            None if buf.is_empty() => limits.keepalive_idle,
            None => {
                deadline = Some(Instant::now() + limits.head_timeout);
                limits.head_timeout
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        let len = buf.len();
        let want = limits.head_bytes_max - len;
        buf.reserve(want);
        let read = monoio::time::timeout(timeout, sock.read(buf.slice_mut(len..len + want)));
        let read = if len == 0 {
            // Idle between requests: a drain ends the connection now.
            let drained = drain.listen();
            if drain.is_draining() {
                return (Ok(None), Vec::new());
            }
            monoio::select! {
                r = read => r,
                _ = drained => return (Ok(None), Vec::new()),
            }
        } else {
            read.await
        };
        match read {
            Ok((Ok(0), slice)) => return (Ok(None), slice.into_inner()),
            Ok((Ok(_), slice)) => {
                buf = slice.into_inner();
                if deadline.is_none() {
                    deadline = Some(Instant::now() + limits.head_timeout);
                }
            }
            Ok((Err(_), slice)) => return (Ok(None), slice.into_inner()),
            Err(_) => {
                // Idle keep-alive timeout, or a head that did not arrive in time.
                return (Ok(None), Vec::with_capacity(limits.head_bytes_max));
            }
        }
    }
}

/// Parse with header slots on the stack (kept out of the async state machine).
fn parse_head(buf: &[u8], limits: &crate::limits::Limits) -> Result<Parsed, Error> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; HEADER_SLOTS_MAX];
    let n = limits.headers_max.min(HEADER_SLOTS_MAX);
    parse_request(buf, limits, &mut slots[..n])
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}
