//! The composition root (data path step 1): the worker threads (one monoio runtime per core:
//! io_uring, the fusion driver falling back to epoll where io_uring is blocked), their
//! SO_REUSEPORT listeners and accept loops, the connection cap, drain, and handing memory back
//! after a crowd leaves; each accepted connection is served by [`conn::serve`] (step 2 on).
//! The only module that knows them all; nothing below imports it.
//!
//! A worker that panics takes the process down ([`crate::service::abort_on_panic`]): its
//! listener must not outlive it.

pub mod conn;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::store::kept::Files;
use crate::upstream::Upstreams;
use crate::worker::{Shared, Worker};

use crate::limits::TRIM_AFTER_CLOSED;
use crate::limits::TRIM_AFTER_HEAD_ROOM;
use crate::limits::TRIM_AT_ONCE;

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
    let upstream = Upstreams::new(
        &shared.config,
        &shared.live.limits(),
        &shared.upstream_health,
        &shared.live,
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
                    // Boxed: the handshake's state (and the PROXY header's) lives only while
                    // it runs, not in every idle connection's task.
                    if let Some((sock, client)) = Box::pin(front_door(&w, stream, peer)).await {
                        conn::serve(w, sock, peer, client).await;
                    }
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

/// A plain connection as it is; with `http.tls`, its handshake, within the head timeout (a
/// client that stalls it is closed like a slow head). `None`: the handshake failed (its alert,
/// if any, is sent) and the connection closes.
async fn front_door(
    worker: &Worker,
    mut stream: monoio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(crate::http::socket::Socket, SocketAddr)> {
    use crate::http::socket::Socket;
    // A load balancer's PROXY header comes first, before any TLS handshake.
    let limits = worker.shared.live.limits();
    let accepted = std::time::Instant::now();
    let client = conn::proxied(worker, &mut stream, peer, &limits).await?;
    let Some(tls) = worker.shared.live.server_tls.get() else {
        return Some((Socket::Plain(stream), client));
    };
    // One deadline for both: the PROXY header and the handshake within the head timeout.
    let deadline = limits.head_timeout.saturating_sub(accepted.elapsed());
    match crate::tls::TlsStream::accept(stream, tls.current(), deadline).await {
        Ok(s) => Some((Socket::Tls(Box::new(s)), client)),
        Err(e) => {
            crate::metrics::TLS_HANDSHAKE_FAILURES[e.reason()]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
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
