//! The server connection (data path steps 1–2, and the response side of every step): read a
//! request head within the limits, route it, hand it to `proxy::serve`, write the answer;
//! keep-alive and pipelining (requests answered in order, one at a time).
//!
//! States: `Idle` (waiting for the first byte, keep-alive timeout) → `Head` (reading the head,
//! head deadline) → `Serving` (proxy writes the response) → `Idle`, or `Closing` after
//! `Connection: close`, a framing error, a write refused without reading its body, or a
//! response cut short.
//!
//! A connection closed while the client may still be sending (a bad head, a body not read,
//! pipelined requests not answered) *lingers*: our side is shut for writing (the answer goes
//! out, then FIN) and what arrives is read and dropped until the client closes, for at most
//! [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing with unread bytes would send a reset, and a
//! reset can throw away the answer before the client reads it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::parse::{parse_range, parse_request, Head, Parsed};
use super::sendfile;
use crate::buffers::{Buffers, HeadRoom, Lent, HEAD_FIRST_BYTES, SMALL_CHUNK_BYTES};
use crate::error::{Error, Kind};
use crate::limits::CHUNK_BYTES;
use crate::proxy::{self, Request};
use crate::route::{self, Method};
use crate::worker::Worker;

/// Header slots on the stack for one parse; `limits.headers_max` (≤ this) of them are used.
pub const HEADER_SLOTS_MAX: usize = 1024;
/// How long a closing connection keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much a closing connection reads and drops at most.
pub const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// What a connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep-alive: wait for the next request.
    Keep,
    /// Close now: the client is done sending (or gone).
    Close,
    /// Close once the client stops sending: it may still be (see [`linger`]).
    Linger,
}

/// One request's response side, handed to the proxy.
pub struct Exchange<'a> {
    pub sock: &'a mut TcpStream,
    /// HEAD: send the head only.
    pub head_only: bool,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    minor_version: u8,
    /// The body buffer (file reads) borrowed from the worker's pool for this request, if any.
    buf: Vec<u8>,
    lent: Lent,
    pool: &'a Buffers,
    /// A response head formatted but not yet written (see [`Exchange::defer_head`]).
    head: Vec<u8>,
    /// Set once a response head is written (or deferred): after that an error can only cut
    /// the connection.
    pub wrote_head: bool,
    pub status: u16,
    pub body_bytes: u64,
    /// Of `body_bytes`, those sent by sendfile straight from the page cache.
    pub sendfile_bytes: u64,
    /// Body bytes a follower copied from its fill's recent blocks in memory.
    pub memory_bytes: u64,
    pub send_stall: Duration,
    /// Whether file bytes may go by sendfile (decided per connection, by where the client is).
    pub sendfile: sendfile::Policy,
    /// Hit, miss, coalesced... (set by the proxy; for counters and the access log).
    pub cache: crate::metrics::Cache,
    /// Blob or manifest, when the request was for one.
    pub ty: Option<crate::metrics::Type>,
    /// Time spent waiting for upstream before the first byte (misses).
    pub upstream_ms: Option<u64>,
}

impl<'a> Exchange<'a> {
    /// A response not yet started.
    pub fn new(
        sock: &'a mut TcpStream,
        pool: &'a Buffers,
        send_stall: Duration,
        head_only: bool,
        keep_alive: bool,
        minor_version: u8,
    ) -> Exchange<'a> {
        Exchange {
            sock,
            head_only,
            keep_alive,
            minor_version,
            buf: Vec::new(),
            lent: Lent::None,
            pool,
            head: Vec::new(),
            wrote_head: false,
            status: 0,
            body_bytes: 0,
            sendfile_bytes: 0,
            memory_bytes: 0,
            send_stall,
            sendfile: sendfile::Policy::Always,
            cache: Default::default(),
            ty: None,
            upstream_ms: None,
        }
    }

    /// This request's body buffer (borrowed from the worker's pool on first use); hand it back
    /// with [`Exchange::put_buf`] so later chunks reuse it.
    pub fn take_buf(&mut self) -> Vec<u8> {
        if self.lent == Lent::None {
            let (v, lent) = self.pool.body();
            self.lent = lent;
            return v;
        }
        let v = std::mem::take(&mut self.buf);
        if v.capacity() == 0 {
            // Lost to a cancelled write: a fresh one of the size this borrow allows.
            return Vec::with_capacity(self.chunk());
        }
        v
    }

    pub fn put_buf(&mut self, v: Vec<u8>) {
        self.buf = v;
    }

    /// Bytes per file read for this request.
    pub fn chunk(&self) -> usize {
        match self.lent {
            Lent::Small => SMALL_CHUNK_BYTES,
            _ => CHUNK_BYTES,
        }
    }

    /// End of the request: the body buffer goes back to the pool.
    fn release(&mut self) {
        let lent = std::mem::take(&mut self.lent);
        if lent != Lent::None {
            self.pool.give_body(lent, std::mem::take(&mut self.buf));
        }
    }

    /// Write a response head now. `headers` are added after the standard ones.
    pub async fn send_head(
        &mut self,
        status: u16,
        content_length: u64,
        headers: &[(&str, &str)],
    ) -> std::io::Result<()> {
        self.defer_head(status, content_length, headers);
        self.flush_head().await
    }

    /// Format a response head to go out with the first body bytes ([`Exchange::send_file`],
    /// [`Exchange::send_full`]): one write, one segment for a small response. Whatever is
    /// still pending when the request ends is flushed by the connection.
    pub fn defer_head(&mut self, status: u16, content_length: u64, headers: &[(&str, &str)]) {
        use std::io::Write;
        assert!(!self.wrote_head, "response head written twice");
        let h = &mut self.head;
        h.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            h,
            "HTTP/1.1 {status} {}\r\nContent-Length: {content_length}\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
            reason(status)
        );
        if !self.keep_alive {
            h.extend_from_slice(b"Connection: close\r\n");
        } else if self.minor_version == 0 {
            h.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        for (name, value) in headers {
            h.extend_from_slice(name.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(value.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        self.wrote_head = true;
        self.status = status;
    }

    /// Write a deferred head, if one is pending.
    pub async fn flush_head(&mut self) -> std::io::Result<()> {
        if self.head.is_empty() {
            return Ok(());
        }
        let h = std::mem::take(&mut self.head);
        self.write(h).await
    }

    /// A complete response from memory (the body is skipped for HEAD), in one write.
    pub async fn send_full(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> std::io::Result<()> {
        self.defer_head(status, body.len() as u64, headers);
        if !self.head_only && !body.is_empty() {
            self.body_bytes += body.len() as u64;
            self.head.extend_from_slice(&body);
        }
        self.flush_head().await
    }

    pub async fn send_error(&mut self, e: &Error) -> std::io::Result<()> {
        let status = e.kind.status();
        if matches!(
            e.kind,
            Kind::BadRequest | Kind::HeadTooLarge | Kind::UriTooLong
        ) {
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

    /// Stream `[start, end]` of an open, complete file to the client: what is in the page
    /// cache by sendfile (no copy through user space), the rest read through io_uring into
    /// the pooled buffer, chunk by chunk.
    pub async fn send_file(
        &mut self,
        file: &monoio::fs::File,
        start: u64,
        end: u64,
    ) -> std::io::Result<()> {
        let mut pos = start;
        // A body too small for sendfile is no stream for the policy either.
        let _stream = (end + 1 - start >= sendfile::MIN_BYTES).then(sendfile::streaming);
        while pos <= end {
            if let Some(to) = sendfile::span(self.sendfile, file, pos, end + 1) {
                self.flush_head().await?;
                let from = pos;
                let res = sendfile::send(self.sock, file, &mut pos, to, self.send_stall).await;
                self.body_bytes += pos - from;
                self.sendfile_bytes += pos - from;
                res?;
            } else {
                pos = self.read_and_send(file, pos, end).await?;
            }
        }
        Ok(())
    }

    /// Read one chunk of `[pos, end]` into the pooled buffer and send it (with the deferred
    /// head in front of it, if one is pending): where the next chunk starts.
    async fn read_and_send(
        &mut self,
        file: &monoio::fs::File,
        pos: u64,
        end: u64,
    ) -> std::io::Result<u64> {
        let mut buf = self.take_buf();
        let chunk = self.chunk();
        buf.clear();
        // A deferred head goes out in front of the first chunk.
        buf.extend_from_slice(&self.head);
        self.head.clear();
        let at = buf.len();
        let want = ((end + 1 - pos) as usize).min(chunk.saturating_sub(at).max(1));
        buf.reserve(want);
        let (res, slice) = file.read_at(buf.slice_mut(at..at + want), pos).await;
        buf = slice.into_inner();
        let n = match res {
            Ok(n) if n > 0 => n,
            other => {
                self.put_buf(buf);
                return Err(other
                    .err()
                    .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        match monoio::time::timeout(self.send_stall, self.sock.write_all(buf.slice(0..at + n)))
            .await
        {
            Ok((res, slice)) => {
                self.put_buf(slice.into_inner());
                res?;
            }
            // The buffer went with the cancelled write: take_buf makes a fresh one next time.
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.body_bytes += n as u64;
        Ok(pos + n as u64)
    }
}

/// Serve one client connection until it closes, idles out, or breaks the rules.
///
/// An idle connection is only this loop waiting for readability: no buffer, and a task a few
/// hundred bytes big. Reading and answering a request is one boxed future, allocated when
/// bytes arrive (10,000 idle connections cost a few MiB, not the size of the request path
/// times 10,000).
pub async fn serve(worker: Rc<Worker>, mut sock: TcpStream, peer: std::net::SocketAddr) {
    // Limits as they are now (SIGHUP may change them for later connections).
    let limits = worker.shared.live.limits();
    let pool = &worker.buffers;
    let policy = sendfile::Policy::for_peer(
        worker.shared.config.sendfile,
        || sock.local_addr().ok(),
        peer,
    );
    // Pipelined bytes not yet answered; empty (and unallocated) while idle.
    let mut buf: Vec<u8> = Vec::new();
    // What the head buffer holds past its first size, out of the worker's budget; released
    // with the buffer, or when the connection ends.
    let room = pool.head_room();
    loop {
        if buf.is_empty() && !idle(&worker, &sock).await {
            room.give(buf);
            return;
        }
        let (next, back) = Box::pin(exchange(
            &worker, &mut sock, peer, policy, buf, &limits, &room,
        ))
        .await;
        buf = back;
        match next {
            Next::Keep => {}
            Next::Close => {
                room.give(buf);
                return;
            }
            Next::Linger => {
                // Boxed, like the exchange: the idle task stays small.
                Box::pin(linger(&mut sock, buf, pool, &room)).await;
                return;
            }
        }
        if buf.is_empty() {
            room.give(std::mem::take(&mut buf));
        }
    }
}

/// Wait for the next request's first bytes. `false`: draining, or the socket was shut down
/// (idle past the keep-alive timeout, or drained: see [`crate::worker::Idle`]) or failed.
async fn idle(worker: &Worker, sock: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    if worker.shared.drain.is_draining() {
        return false;
    }
    let _slot = worker.idle.enter(sock.as_raw_fd());
    // Bounded by events: each turn waits for readiness, and only a spurious wake repeats.
    loop {
        if sock.readable(false).await.is_err() {
            return false;
        }
        match peek(sock.as_raw_fd()) {
            Peek::Bytes => return true,
            Peek::Closed => return false,
            Peek::NotYet => continue,
        }
    }
}

enum Peek {
    Bytes,
    Closed,
    NotYet,
}

/// Whether a readable socket has bytes, or only its end (or an error): a peer that closes,
/// or 10,000 idle connections closed at once, then costs no head buffer and no read.
fn peek(fd: std::os::fd::RawFd) -> Peek {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the byte in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1.. => Peek::Bytes,
        0 => Peek::Closed,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Peek::NotYet,
            _ => Peek::Closed,
        },
    }
}

/// Shut our side for writing, then read and drop what the client still sends until it closes,
/// within [`LINGER_TIME`] and [`LINGER_BYTES`]; the connection closes when this returns.
async fn linger(sock: &mut TcpStream, mut buf: Vec<u8>, pool: &Buffers, room: &HeadRoom<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: our own socket; shutting its write side sends FIN after the answer.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
    let deadline = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    buf.clear();
    if buf.capacity() == 0 {
        buf = pool.head(HEAD_FIRST_BYTES);
    }
    let cap = buf.capacity();
    while left > 0 {
        let t = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(t, sock.read(buf.slice_mut(0..cap))).await {
            Ok((Ok(n), slice)) if n > 0 => {
                buf = slice.into_inner();
                buf.clear();
                left = left.saturating_sub(n);
            }
            Ok((_, slice)) => {
                buf = slice.into_inner();
                break;
            }
            // Out of time; the buffer went with the cancelled read.
            Err(_) => return,
        }
    }
    room.give(buf);
}

/// Read one request head and answer it. Returns what the connection does next, and the bytes
/// after this request's head (pipelined requests).
async fn exchange(
    worker: &Rc<Worker>,
    sock: &mut TcpStream,
    peer: std::net::SocketAddr,
    policy: sendfile::Policy,
    buf: Vec<u8>,
    limits: &crate::limits::Limits,
    room: &HeadRoom<'_>,
) -> (Next, Vec<u8>) {
    let pool = &worker.buffers;
    let (head, mut buf) = read_head(sock, buf, limits, pool, room).await;
    let head = match head {
        Ok(Some(h)) => h,
        Ok(None) => return (Next::Close, buf),
        Err(e) => {
            let mut x = Exchange::new(sock, pool, limits.send_stall, false, false, 1);
            tracing::debug!(%peer, error = %e, "bad request head");
            let _ = x.send_error(&e).await;
            // The rest of a bad head (or what follows it) may still be on its way.
            return (Next::Linger, buf);
        }
    };
    let started = Instant::now();
    let method = Method::parse(head.method.str(&buf));
    let target = head.target.str(&buf);
    let routed = route::route(method, target);
    // A request with a body we will not read (writes are refused) ends the connection.
    let keep_alive = head.keep_alive() && !head.has_body;
    let mut x = Exchange::new(
        sock,
        pool,
        limits.send_stall,
        method == Method::Head,
        keep_alive,
        head.minor_version,
    );
    x.sendfile = policy;
    let result = match routed {
        Ok(Some(route)) => {
            let req = Request {
                method,
                route,
                accept: accept_of(&head, &buf),
                via: via_of(&head, &buf),
                range: head.range.and_then(|r| parse_range(r.of(&buf))),
            };
            proxy::serve(worker, &req, &mut x).await
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
    // A head deferred for a body that never followed (HEAD, an empty body).
    let result = match result {
        Ok(()) => x
            .flush_head()
            .await
            .map_err(|e| Error::client(Kind::Internal, "write").with_cause(e)),
        e => e,
    };
    if let Err(e) = result {
        if x.wrote_head {
            // Mid-body: the only honest signal left is to cut the connection short.
            tracing::info!(%peer, error = %e, "response cut short");
            x.keep_alive = false;
        } else {
            // Upstream refusing us (401) is a WARN of the upstream module, once a minute.
            if e.side != crate::error::Side::Client && e.kind != Kind::Unauthorized {
                tracing::info!(%peer, error = %e, "request failed");
            } else if e.side != crate::error::Side::Client {
                tracing::debug!(%peer, error = %e, "request failed");
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
    worker.counters().sent_by_sendfile(x.sendfile_bytes);
    worker.counters().sent_from_memory(x.memory_bytes);
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
        memory_bytes = x.memory_bytes,
        "request"
    );
    // Draining: answer what was asked, then close.
    let keep = x.keep_alive && !worker.shared.drain.is_draining();
    x.release();
    let next = if keep {
        buf.drain(..head.len);
        Next::Keep
    } else if head.has_body || buf.len() > head.len {
        // A body we did not read, or pipelined requests we will not answer.
        Next::Linger
    } else {
        Next::Close
    };
    (next, buf)
}

/// The client's Via headers joined (checked for a loop, and passed on upstream).
fn via_of(head: &Head, buf: &[u8]) -> Option<String> {
    if head.via_count == 0 {
        return None;
    }
    Some(head.vias(buf).collect::<Vec<_>>().join(", "))
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

/// Read until `buf` holds a complete head (called once bytes are ready, or with pipelined
/// bytes in `buf`; an empty `buf` borrows a head buffer from `pool`). `Ok(None)`: the client
/// closed, or did not finish the head within the head timeout.
///
/// The buffer starts at [`HEAD_FIRST_BYTES`] and doubles while a longer head arrives, up to
/// `limits.head_bytes_max`, each growth claimed from the worker's budget through `room` (the
/// buffer is held for the whole exchange: the parsed head points into it). No room left: 503.
async fn read_head(
    sock: &mut TcpStream,
    mut buf: Vec<u8>,
    limits: &crate::limits::Limits,
    pool: &Buffers,
    room: &HeadRoom<'_>,
) -> (Result<Option<Head>, Error>, Vec<u8>) {
    let deadline = Instant::now() + limits.head_timeout;
    if buf.capacity() == 0 {
        buf = pool.head(HEAD_FIRST_BYTES.min(limits.head_bytes_max));
    }
    loop {
        if !buf.is_empty() {
            match parse_head(&buf, limits) {
                Ok(Parsed::Complete(h)) => return (Ok(Some(h)), buf),
                Ok(Parsed::Partial) => {}
                Err(e) => return (Err(e), buf),
            }
        }
        // Below the limit here (a longer partial head is refused by the parser). A full
        // buffer doubles, up to the limit, if the worker's head budget has room.
        let len = buf.len();
        if len == buf.capacity() {
            let cap = (len + len.max(HEAD_FIRST_BYTES)).min(limits.head_bytes_max);
            if !room.grow(&mut buf, cap) {
                let e = Error::new(
                    Kind::Unavailable,
                    crate::error::Side::Internal,
                    "too many long request heads in progress",
                );
                return (Err(e), buf);
            }
        }
        let want = (buf.capacity() - len).min(limits.head_bytes_max - len);
        let timeout = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(timeout, sock.read(buf.slice_mut(len..len + want))).await {
            Ok((Ok(0), slice)) => return (Ok(None), slice.into_inner()),
            Ok((Ok(_), slice)) => buf = slice.into_inner(),
            Ok((Err(_), slice)) => return (Ok(None), slice.into_inner()),
            // A head that did not arrive in time.
            Err(_) => return (Ok(None), Vec::new()),
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
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// Wait (at most 5 s) for the socket to be readable.
    fn readable(s: &std::net::TcpStream) {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        assert_eq!(n, 1, "readable in time");
    }

    #[test]
    fn peek_tells_bytes_from_a_close_and_leaves_the_bytes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        assert!(matches!(peek(server.as_raw_fd()), Peek::NotYet));
        client.write_all(b"G").unwrap();
        readable(&server);
        assert!(matches!(peek(server.as_raw_fd()), Peek::Bytes));
        let mut b = [0u8; 4];
        assert_eq!(
            std::io::Read::read(&mut server, &mut b).unwrap(),
            1,
            "peek kept it"
        );
        assert_eq!(b[0], b'G');
        drop(client);
        readable(&server);
        assert!(matches!(peek(server.as_raw_fd()), Peek::Closed));
    }
}
