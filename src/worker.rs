//! Thread-per-core (data path step 1): `workers` threads, each a single-threaded monoio
//! runtime (io_uring; the fusion driver falls back to epoll where io_uring is blocked) that
//! accepts on its own SO_REUSEPORT listener and owns its connections, buffers, upstream
//! connection pool and token cache. Only [`Shared`] crosses threads. A worker that panics
//! takes the process down ([`crate::service::abort_on_panic`]): its listener must not outlive it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::fill::Fills;
use crate::http::client::Client;
use crate::store::tags::Tags;
use crate::store::Store;
use crate::upstream::Upstream;

/// What every worker shares: config, the store and its index, the in-flight map, tags.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub fills: Arc<Fills>,
    pub tags: Tags,
    pub tls: Arc<rustls::ClientConfig>,
    pub drain: Drain,
    /// To the expiry thread: commits, links, tags (never on the hit path).
    pub events: crate::expiry::EventSender,
    /// Each worker's event-loop heartbeat, for the systemd watchdog.
    pub heartbeats: Arc<crate::service::Heartbeats>,
    /// Per-worker counters, indexed by worker id (each written only by its worker).
    pub counters: Box<[crate::metrics::Counters]>,
    /// Counters written off the hot path (expiry thread, failing fills).
    pub tallies: crate::metrics::Events,
    /// When upstream last answered, and last failed to (ms, monotonic): the health check.
    pub upstream_health: Arc<crate::upstream::Health>,
    /// Set by `POST /debug/health/down`: health checks and `GET /` answer 503 so load
    /// balancers drain this node; cleared by `POST /debug/health/up`.
    pub health_down: std::sync::atomic::AtomicBool,
    /// Settings SIGHUP can change.
    pub live: Arc<Reloadable>,
    /// The I/O driver the workers run ("io_uring" or "epoll").
    pub driver: std::sync::OnceLock<&'static str>,
    /// Set once the workers are done: the expiry thread saves the state and ends.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Tell the expiry thread something (dropped, with a debug line, if its queue is full).
    pub fn note(&self, ev: crate::expiry::Event) {
        if !self.events.try_send(ev) {
            tracing::debug!("expiry queue full; event dropped");
        }
    }

    /// Record a tag resolution for requests accepting `resolved_for` (and journal it).
    pub fn tag(
        &self,
        name: &str,
        tag: &str,
        resolved_for: crate::media::Accepts,
        digest: crate::digest::Digest,
        media_type: Arc<str>,
        at: std::time::Instant,
    ) {
        self.tags
            .put(name, tag, resolved_for, digest, media_type.clone(), at);
        self.note(crate::expiry::Event::Tagged {
            name: name.into(),
            tag: tag.into(),
            resolved_for,
            digest,
            media_type: media_type.to_string(),
        });
    }

    /// Drop a tag upstream no longer has for requests accepting `resolved_for` (and journal
    /// that).
    pub fn untag(&self, name: &str, tag: &str, resolved_for: crate::media::Accepts) {
        self.tags.remove(name, tag, resolved_for);
        self.note(crate::expiry::Event::Untagged {
            name: name.into(),
            tag: tag.into(),
            resolved_for,
        });
    }

    /// Link a digest to a repository upstream confirmed it in, and remember that.
    pub fn link(&self, entry: &crate::store::Entry, digest: crate::digest::Digest, repo: &str) {
        if !entry.linked(repo) {
            entry.link(repo);
            self.note(crate::expiry::Event::Linked(digest, repo.to_string()));
        }
    }
}

/// What SIGHUP can change without a restart: limits and upstream credentials (the log level is
/// reloaded in main). Readers take a copy when they start a connection or an upstream request;
/// `generation` tells each worker's upstream client to refresh (and drop cached tokens).
pub struct Reloadable {
    pub generation: std::sync::atomic::AtomicU64,
    pub log_level: std::sync::RwLock<String>,
    pub limits: std::sync::RwLock<crate::limits::Limits>,
    pub credentials: std::sync::RwLock<Option<(String, String)>>,
}

impl Reloadable {
    pub fn new(config: &Config) -> Reloadable {
        Reloadable {
            generation: Default::default(),
            log_level: std::sync::RwLock::new(config.log_level.clone()),
            limits: std::sync::RwLock::new(config.limits.clone()),
            credentials: std::sync::RwLock::new(
                config
                    .upstream
                    .username
                    .clone()
                    .zip(config.upstream.password.clone()),
            ),
        }
    }

    pub fn limits(&self) -> crate::limits::Limits {
        self.limits.read().unwrap().clone()
    }
}

/// Graceful stop: once started, listeners close, idle connections end, and in-flight requests
/// and fills get `drain_timeout` to finish.
#[derive(Default)]
pub struct Drain {
    draining: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl Drain {
    pub fn start(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when draining starts (create before checking `is_draining`).
    pub fn listen(&self) -> event_listener::EventListener {
        self.event.listen()
    }
}

impl Worker {
    /// This worker's own counters.
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.shared.counters[self.id]
    }
}

/// Open descriptors of committed files, per worker: the hit path. A hit on a kept descriptor
/// needs no open/statx/close, no lock on the index, no reference-count increment and no lock on
/// the entry — nothing shared is written but the (millisecond-throttled) last access.
///
/// A kept descriptor holds its entry; once the index has dropped it (expiry, eviction, a
/// size mismatch: the entry is marked removed) the descriptor is no longer used, and [`Files::sweep`] closes it within one
/// heartbeat, so removal frees disk space. Bounded by [`FILES_OPEN_MAX`].
#[derive(Default)]
pub struct Files {
    open: std::cell::RefCell<std::collections::HashMap<crate::digest::Digest, Kept>>,
}

/// Descriptors one worker keeps open at most.
pub const FILES_OPEN_MAX: usize = 1024;

/// One kept descriptor: its entry, the file, and the repositories this worker has already
/// found the entry linked to.
struct Kept {
    entry: Arc<crate::store::Entry>,
    file: Rc<monoio::fs::File>,
    repos: Vec<Box<str>>,
    /// The entry's media type when kept (manifests; a worker-local copy).
    media_type: Option<Rc<str>>,
}

/// A hit on a kept descriptor.
pub struct Hit {
    pub size: u64,
    pub file: Rc<monoio::fs::File>,
    pub media_type: Option<Rc<str>>,
}

impl Kept {
    /// Still in the index.
    fn live(&self) -> bool {
        !self.entry.removed()
    }
}

impl Files {
    /// Whether this worker keeps a descriptor for `digest` whose entry is still in the index.
    pub fn keeps(&self, digest: &crate::digest::Digest) -> bool {
        self.open.borrow().get(digest).is_some_and(|k| k.live())
    }

    /// A hit on a kept descriptor for `repo`: records the use and returns the size, the file
    /// and the media type. `None` sends the caller to the index (not kept, removed, or `repo`
    /// not yet seen).
    pub fn hit(&self, digest: &crate::digest::Digest, repo: &str) -> Option<Hit> {
        let mut open = self.open.borrow_mut();
        let kept = open.get_mut(digest).filter(|k| k.live())?;
        if !kept.repos.iter().any(|r| &**r == repo) {
            if !kept.entry.linked(repo) {
                return None;
            }
            kept.repos.push(repo.into());
        }
        kept.entry.touch();
        Some(Hit {
            size: kept.entry.size,
            file: kept.file.clone(),
            media_type: kept.media_type.clone(),
        })
    }

    pub fn put(
        &self,
        digest: crate::digest::Digest,
        entry: &Arc<crate::store::Entry>,
        file: monoio::fs::File,
    ) -> Rc<monoio::fs::File> {
        let file = Rc::new(file);
        let mut open = self.open.borrow_mut();
        if open.len() >= FILES_OPEN_MAX {
            if let Some(k) = open.keys().next().copied() {
                open.remove(&k);
            }
        }
        open.insert(
            digest,
            Kept {
                entry: entry.clone(),
                file: file.clone(),
                repos: Vec::new(),
                media_type: entry.media_type().map(|m| Rc::from(&*m)),
            },
        );
        file
    }

    /// Close the descriptors of entries that left the index.
    pub fn sweep(&self) {
        self.open.borrow_mut().retain(|_, k| k.live());
    }
}

/// Connections waiting for their next request. Each is a readiness poll plus a slot here — no
/// timer and no drain listener per idle connection (10,000 idle connections cost a few MiB).
/// The heartbeat shuts down the sockets idle past the keep-alive timeout, or every one when
/// draining; their poll then completes and the connection reads its end and closes.
#[derive(Default)]
pub struct Idle {
    slots: std::cell::RefCell<slab::Slab<IdleSlot>>,
}

struct IdleSlot {
    fd: std::os::fd::RawFd,
    since: std::time::Instant,
    shut: bool,
}

/// A connection's slot while it waits; removed when the wait ends (only here, so a slot is
/// never reused while its guard lives).
pub struct IdleGuard<'a> {
    idle: &'a Idle,
    key: usize,
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.idle.slots.borrow_mut().remove(self.key);
    }
}

impl Idle {
    pub fn enter(&self, fd: std::os::fd::RawFd) -> IdleGuard<'_> {
        let key = self.slots.borrow_mut().insert(IdleSlot {
            fd,
            since: std::time::Instant::now(),
            shut: false,
        });
        IdleGuard { idle: self, key }
    }

    /// Shut down the sockets idle for `longer_than`, or all of them (`all`: draining).
    pub fn sweep(&self, longer_than: std::time::Duration, all: bool) {
        for (_, s) in self.slots.borrow_mut().iter_mut() {
            if !s.shut && (all || s.since.elapsed() >= longer_than) {
                // SAFETY: `fd` is the socket of a live connection task (its guard removes the
                // slot before the socket can be closed); shutdown only changes socket state.
                unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                s.shut = true;
            }
        }
    }
}

/// One worker's state, owned by its thread.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub upstream: Upstream,
    /// Open client connections on this worker (bounded by `connections_per_worker_max`).
    connections: Cell<usize>,
    /// The most connections open, and the most head room claimed, since memory was last
    /// given back; and the connections open at the last heartbeat (see [`give_back_memory`]).
    connections_high: Cell<usize>,
    head_room_high: Cell<usize>,
    connections_last: Cell<usize>,
    /// Open descriptors of committed files (the hit path's).
    pub files: Files,
    /// Head and body buffers, borrowed per request.
    pub buffers: crate::buffers::Buffers,
    /// This worker's copy of the tag resolutions it has read (see [`crate::store::tags::Local`]).
    pub tags: crate::store::tags::Local,
    /// Connections waiting for their next request.
    pub idle: Idle,
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
    let hashers = monoio::blocking::DefaultThreadPool::new(listeners.len().max(1));
    for (id, mine) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready.clone();
        let pool = hashers.clone();
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
                    crate::http::conn::serve(w, stream, peer).await;
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
