//! A worker's context: what every worker shares ([`Shared`]: config, store, in-flight map,
//! tags, counters, drain) and what one worker owns ([`Worker`]: its upstream client and
//! connection pool, buffers, kept descriptors, idle connections). Each worker is one thread
//! with a single-threaded monoio runtime, started by [`crate::server`]; only [`Shared`]
//! crosses threads.

use std::cell::Cell;
use std::sync::Arc;

use crate::config::Config;
use crate::fill::Fills;
use crate::store::tags::Tags;
use crate::store::Store;
use crate::upstream::Upstreams;

/// What every worker shares: config, the store and its index, the in-flight map, tags.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub fills: Arc<Fills>,
    pub tags: Tags,
    /// Referrers answers, like tags (see [`crate::referrers`]).
    pub referrers: crate::referrers::Cache,
    /// The registry names each upstream answers under (routing, [`crate::registry`]).
    pub registries: crate::registry::Registries,
    pub drain: Drain,
    /// To the expiry thread: commits, links, tags (never on the hit path).
    pub changes: crate::store::changes::Changes,
    /// Each worker's event-loop heartbeat, for the systemd watchdog.
    pub heartbeats: Arc<crate::service::Heartbeats>,
    /// Per-worker counters, indexed by worker id (each written only by its worker).
    pub counters: Box<[crate::metrics::Counters]>,
    /// Counters written off the hot path (expiry thread, failing fills).
    pub tallies: crate::metrics::Tallies,
    /// When each upstream last answered, and last failed to (ms, monotonic): the health check.
    pub upstream_health: Vec<Arc<crate::upstream::Health>>,
    /// Set by `POST /debug/health/down`: health checks and `GET /` answer 503 so load
    /// balancers drain this node; cleared by `POST /debug/health/up`.
    pub health_down: std::sync::atomic::AtomicBool,
    /// Settings SIGHUP can change.
    pub live: Arc<crate::live::Reloadable>,
    /// The I/O driver the workers run ("io_uring" or "epoll").
    pub driver: std::sync::OnceLock<&'static str>,
    /// Set once the workers are done: the expiry thread saves the state and ends.
    pub stopping: std::sync::atomic::AtomicBool,
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

impl crate::fill::task::Env for Worker {
    fn upstream(&self) -> &crate::upstream::Upstreams {
        &self.upstream
    }
    fn store(&self) -> &crate::store::Store {
        &self.shared.store
    }
    fn counters(&self) -> &crate::metrics::Counters {
        Worker::counters(self)
    }
    fn tallies(&self) -> &crate::metrics::Tallies {
        &self.shared.tallies
    }
    fn changes(&self) -> &crate::store::changes::Changes {
        &self.shared.changes
    }
}

impl Worker {
    /// This worker's own counters.
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.shared.counters[self.id]
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
    /// Every upstream's client (connections, credentials, tokens), by repository key.
    pub upstream: Upstreams,
    /// Open client connections on this worker (bounded by `connections_per_worker_max`).
    pub(crate) connections: Cell<usize>,
    /// The most connections open, and the most head room claimed, since memory was last
    /// given back; and the connections open at the last heartbeat (the server hands freed memory back by these).
    pub(crate) connections_high: Cell<usize>,
    pub(crate) head_room_high: Cell<usize>,
    pub(crate) connections_last: Cell<usize>,
    /// Open descriptors of committed files (the hit path's).
    pub files: crate::store::kept::Files,
    /// Head and body buffers, borrowed per request.
    pub buffers: crate::buffers::Buffers,
    /// This worker's copy of the tag resolutions it has read (see [`crate::store::tags::Local`]).
    pub tags: crate::store::tags::Local,
    /// Connections waiting for their next request.
    pub idle: Idle,
}
