//! The composition root (data path steps 1–2, and the access log): the worker threads (one
//! monoio runtime per core: io_uring, the fusion driver falling back to epoll where io_uring
//! is blocked), their SO_REUSEPORT listeners and accept loops, the connection cap, drain; and
//! per connection: wait for a request, read its head within the limits, route it, hand it to
//! [`proxy::serve`], count and log it; keep-alive and pipelining (requests answered in order,
//! one at a time). The only module that knows them all; nothing below imports it.
//!
//! A worker that panics takes the process down ([`crate::service::abort_on_panic`]): its
//! listener must not outlive it.
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

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::buffers::{Buffers, HeadRoom, HEAD_FIRST_BYTES};
use crate::error::{Error, Kind};
use crate::http::client::Client;
use crate::http::parse::{parse_range, parse_request, Head, Parsed};
use crate::http::response::Exchange;
use crate::http::sendfile;
use crate::proxy::{self, Request};
use crate::route::{self, Method};
use crate::store::kept::Files;
use crate::upstream::Upstream;
use crate::worker::{Shared, Worker};

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

/// Bind `n` SO_REUSEPORT listeners on `addr` (the kernel spreads connections over them). With
/// port 0 the first bind picks the port and the rest share it.
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // monoio-style SO_REUSEPORT binds would silently share a port with another process:
        // refuse to start if something already listens there.
        let probe = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        if std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(200))
            .is_ok()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{addr} is already in use by another listener"),
            ));
        }
    }
    let first = reuseport_listener(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(reuseport_listener(addr)?);
    }
    Ok(all)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Start one thread per worker; each accepts on its own listeners (a SO_REUSEPORT socket, or
/// dups of the sockets systemd passed) and reports its id on `ready` once it accepts.
pub fn spawn(
    shared: Arc<Shared>,
    listeners: Vec<Vec<std::net::TcpListener>>,
    ready: std::sync::mpsc::Sender<usize>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    // The job pool: fills write and hash their pieces there (store::ingest), a thread per
    // worker. monoio's own pool stays attached for whatever of monoio needs one.
    crate::jobs::set_threads(listeners.len());
    let blocking = monoio::blocking::DefaultThreadPool::new(listeners.len().max(1));
    for (id, mine) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready.clone();
        let pool = blocking.clone();
        let h = std::thread::Builder::new()
            .name(format!("ringcache-w{id}"))
            .spawn(move || run(id, shared, mine, ready, pool))?;
        handles.push(h);
    }
    Ok(handles)
}

fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<usize>,
    pool: monoio::blocking::DefaultThreadPool,
) {
    // COOP_TASKRUN + SINGLE_ISSUER: the ring is only used from this thread; measured to bring
    // a keep-alive server on monoio level with nginx (DESIGN.md, stack facts).
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_single_issuer();
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(1024)
        .uring_builder(urb)
        .attach_thread_pool(Box::new(pool.clone()))
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(worker = id, error = %e, "io_uring setup flags refused; using defaults");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .attach_thread_pool(Box::new(pool))
                .build()
                .expect("build a monoio runtime")
        }
    };
    let driver = match &rt {
        monoio::FusionRuntime::Uring(_) => "io_uring",
        monoio::FusionRuntime::Legacy(_) => "epoll",
    };
    let _ = shared.driver.set(driver);
    tracing::info!(worker = id, driver, "worker started");
    rt.block_on(serve_worker(id, shared, listeners, ready));
}

/// Decrements the worker's connection count when a connection task ends, however it ends.
struct ConnSlot(Rc<Worker>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0
            .counters()
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn serve_worker(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let client = Client::new(shared.tls.clone(), shared.live.limits());
    let upstream = Upstream::new(
        &shared.config.upstream,
        client,
        shared.upstream_health.clone(),
        shared.live.clone(),
    );
    let worker = Rc::new(Worker {
        id,
        shared,
        upstream,
        connections: Cell::new(0),
        connections_high: Cell::new(0),
        head_room_high: Cell::new(0),
        connections_last: Cell::new(0),
        files: Files::default(),
        buffers: Default::default(),
        tags: Default::default(),
        idle: Default::default(),
    });
    // The heartbeat proves this event loop answers (the systemd watchdog reads it).
    let beat = worker.clone();
    monoio::spawn(async move {
        loop {
            beat.shared.heartbeats.beat(beat.id);
            beat.files.sweep();
            let keepalive = beat.shared.live.limits.read().unwrap().keepalive_idle;
            beat.idle.sweep(keepalive, beat.shared.drain.is_draining());
            give_back_memory(&beat);
            crate::failpoint::block("worker-stall");
            if beat.id == 1 {
                // A worker other than w0 (which `main` joins first) dies.
                crate::failpoint::panic("worker-panic");
            }
            monoio::time::sleep(crate::service::HEARTBEAT_EVERY).await;
        }
    });
    let mut accepting = Vec::new();
    for l in listeners {
        let l = monoio::net::TcpListener::from_std(l).expect("register listener");
        accepting.push(monoio::spawn(accept_loop(worker.clone(), l)));
    }
    let _ = ready.send(id);
    for a in accepting {
        a.await;
    }
    // Draining: listeners are closed; let this worker's connections and every fill finish.
    let deadline = std::time::Instant::now() + worker.shared.config.drain_timeout;
    let busy = || worker.connections.get() > 0 || worker.shared.fills.inflight() > 0;
    while busy() && std::time::Instant::now() < deadline {
        monoio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if busy() {
        tracing::warn!(
            worker = id,
            connections = worker.connections.get(),
            fills = worker.shared.fills.inflight(),
            "drain deadline passed; cutting what is left"
        );
    } else {
        tracing::info!(worker = id, "worker drained");
    }
}

/// Connections that must have closed, or head room (bytes) been given back, since the most
/// there were before freed memory is handed back to the system; once the count stops falling,
/// or at once past [`TRIM_AT_ONCE`] times this.
const TRIM_AFTER_CLOSED: usize = 256;
const TRIM_AFTER_HEAD_ROOM: usize = 1024 * 1024;
const TRIM_AT_ONCE: usize = 8;

/// After a crowd of connections leaves, or long heads' buffers are freed ([`TRIM_AFTER_CLOSED`],
/// [`TRIM_AFTER_HEAD_ROOM`]), hand the memory they freed back to the system: once the crowd
/// has left (the count stopped falling), not once per heartbeat while it leaves. Their head
/// buffers, tasks and timers are freed, but the allocator returns only the top of a heap: one
/// allocation that outlives the crowd (a table that grew meanwhile) pins everything under it
/// (measured: 2,000 connections that sent a partial head and closed left RSS 22 MiB up; with
/// this, 1 to 2 MiB).
fn give_back_memory(worker: &Worker) {
    let open = worker.connections.get();
    let falling = open < worker.connections_last.replace(open);
    let high = worker.connections_high.get().max(open);
    let room = worker.buffers.head_room_used();
    let room_high = worker.head_room_high.get().max(room);
    let (closed, freed) = (high - open, room_high - room);
    let due = closed >= TRIM_AFTER_CLOSED || freed >= TRIM_AFTER_HEAD_ROOM;
    let urgent =
        closed >= TRIM_AFTER_CLOSED * TRIM_AT_ONCE || freed >= TRIM_AFTER_HEAD_ROOM * TRIM_AT_ONCE;
    if !due || (falling && !urgent) {
        worker.connections_high.set(high);
        worker.head_room_high.set(room_high);
        return;
    }
    worker.connections_high.set(open);
    worker.head_room_high.set(room);
    tracing::debug!(
        worker = worker.id,
        closed,
        head_room_freed = freed,
        "handing freed memory back to the system"
    );
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the system; it
    // takes each arena's lock, so it is safe beside other threads' allocations.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Accept on one listener until draining starts; then close it.
async fn accept_loop(worker: Rc<Worker>, listener: monoio::net::TcpListener) {
    let id = worker.id;
    let max = worker.shared.live.limits().connections_per_worker_max;
    loop {
        let drain = worker.shared.drain.listen();
        if worker.shared.drain.is_draining() {
            break;
        }
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = drain => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                if worker.connections.get() >= max {
                    monoio::spawn(refuse(stream));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                worker.connections.set(worker.connections.get() + 1);
                worker
                    .counters()
                    .connections_open
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let slot = ConnSlot(worker.clone());
                monoio::spawn(async move {
                    let w = slot.0.clone();
                    serve(w, stream, peer).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = id, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
}

/// Over the connection cap: a short 503 and close.
async fn refuse(mut stream: monoio::net::TcpStream) {
    use monoio::io::AsyncWriteRentExt;
    let e = crate::error::Error::new(
        crate::error::Kind::Unavailable,
        crate::error::Side::Internal,
        "too many connections",
    );
    let body = e.body();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.into_bytes()).await;
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
