//! One client connection (data path step 2, and the access log): wait for a request holding
//! no buffer, read its head within the limits, route it, hand it to [`proxy::serve`], count and
//! log it; keep-alive and pipelining (requests answered in order, one at a time).
//!
//! A connection: waiting for its next request (no buffer, see [`crate::worker::Idle`]) → reading the head
//! (head deadline) → answered by the proxy → waiting again, or closed after `Connection:
//! close`, a framing error, a write refused without reading its body, or a response cut short.
//!
//! A connection closed while the client may still be sending (a bad head, a body not read,
//! pipelined requests not answered) *lingers*: our side is shut for writing (the answer goes
//! out, then FIN) and what arrives is read and dropped until the client closes, for at most
//! [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing with unread bytes would send a reset, and a
//! reset can throw away the answer before the client reads it.

use std::rc::Rc;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

use crate::buffers::{Buffers, HeadRoom, HEAD_FIRST_BYTES};
use crate::error::{Error, Kind};
use crate::http::parse::{parse_range, parse_request, Head, Parsed};
use crate::http::proxyproto;
use crate::http::response::Exchange;
use crate::http::sendfile;
use crate::http::socket::Socket;
use crate::proxy::{self, Request};
use crate::route::{self, Method};
use crate::worker::Worker;

pub use crate::limits::HEADER_SLOTS_MAX;
pub use crate::limits::LINGER_BYTES;
pub use crate::limits::LINGER_TIME;

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

/// Serve one client connection until it closes, idles out, or breaks the rules.
///
/// An idle connection is only this loop waiting for readability: no buffer, and a task a few
/// hundred bytes big. Reading and answering a request is one boxed future, allocated when
/// bytes arrive (10,000 idle connections cost a few MiB, not the size of the request path
/// times 10,000).
/// `peer` is the socket's; `client` the address the access log names (the client's, from a
/// load balancer's PROXY header, read by `proxied` before the TLS handshake; else `peer`).
pub async fn serve(
    worker: Rc<Worker>,
    mut sock: Socket,
    socket_peer: std::net::SocketAddr,
    client: std::net::SocketAddr,
) {
    let peer = socket_peer;
    // Limits as they are now (SIGHUP may change them for later connections).
    let limits = worker.shared.live.limits();
    let pool = &worker.buffers;
    let policy = match &sock {
        // TLS: every byte goes through the TLS writer.
        Socket::Tls(_) => sendfile::Policy::Never,
        Socket::Plain(tcp) => sendfile::Policy::for_peer(
            worker.shared.config.sendfile,
            || tcp.local_addr().ok(),
            peer,
        ),
    };
    // Behind a load balancer the sendfile policy above stays with the balancer (the socket's
    // real peer); everything else names the client.
    let peer = client;
    // Pipelined bytes not yet answered; empty (and unallocated) while idle.
    let mut buf: Vec<u8> = Vec::new();
    // What the head buffer holds past its first size, out of the worker's budget; released
    // with the buffer, or when the connection ends.
    let room = pool.head_room();
    loop {
        if buf.is_empty() && !idle(&worker, &mut sock).await {
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

/// The client's address: with `ringcache.proxy_protocol`, a peer in `proxy_protocol_from`
/// must start with a PROXY header, read here (exactly, within the head timeout), and its source
/// stands for the client; `None`: no valid header in time, the connection closes. From any
/// other peer, nothing is read: a PROXY header there fails as a request head (400).
pub(crate) async fn proxied(
    worker: &Worker,
    sock: &mut monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    limits: &crate::limits::Limits,
) -> Option<std::net::SocketAddr> {
    let config = &worker.shared.config;
    if !config.proxy_protocol || !config.proxy_protocol_from.contains(peer.ip()) {
        return Some(peer);
    }
    let deadline = Instant::now() + limits.head_timeout;
    match proxyproto::read(sock, deadline).await {
        Ok(Some(h)) => Some(h.source.unwrap_or(peer)),
        Ok(None) => None,
        Err(e) => {
            tracing::info!(%peer, error = %e, "connection refused");
            None
        }
    }
}

/// Wait for the next request's first bytes. `false`: draining, or the socket was shut down
/// (idle past the keep-alive timeout, or drained: see [`crate::worker::Idle`]) or failed.
async fn idle(worker: &Worker, sock: &mut Socket) -> bool {
    use std::os::fd::AsRawFd;
    if worker.shared.drain.is_draining() {
        return false;
    }
    if sock.has_pending() {
        return true;
    }
    let sock = sock.tcp();
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
async fn linger(sock: &mut Socket, mut buf: Vec<u8>, pool: &Buffers, room: &HeadRoom<'_>) {
    use std::os::fd::AsRawFd;
    if let Socket::Tls(t) = sock {
        // Within the linger time: a client that reads nothing cannot hold us here.
        let _ = monoio::time::timeout(LINGER_TIME, t.close_notify()).await;
    }
    // SAFETY: our own socket; shutting its write side sends FIN after the answer.
    unsafe { libc::shutdown(sock.tcp().as_raw_fd(), libc::SHUT_WR) };
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
    sock: &mut Socket,
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
    let routed = route::route(method, target, &worker.shared.registries);
    if let Err(e) = &routed {
        if e.kind == Kind::NameUnknown {
            if let Some(ns) = target
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("ns=")))
            {
                crate::upstream::warn_unmirrored(ns);
            }
        }
    }
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
            x.upstream = route.upstream(&worker.shared.registries);
            let req = Request {
                method,
                route,
                accept: accept_of(&head, &buf),
                via: via_of(&head, &buf),
                range: head.range.and_then(|r| parse_range(r.of(&buf))),
            };
            let authorization = head.authorization.map(|a| a.of(&buf));
            match crate::auth::gate(&worker.shared.live, &req.route, authorization, peer, &mut x)
                .await
            {
                Ok(true) => proxy::serve(worker, &req, &mut x).await,
                refused => refused.map(|_| ()),
            }
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
        x.upstream,
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
        upstream = %worker.shared.registries.name(x.upstream),
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
    sock: &mut Socket,
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
