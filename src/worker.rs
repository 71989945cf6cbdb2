//! A worker's context: what every worker shares ([`Shared`]: config, store, in-flight map,
//! tags, counters, drain) and what one worker owns ([`Worker`]: its upstream client and
//! connection pool, buffers, kept descriptors, idle connections). Each worker is one thread
//! with a single-threaded monoio runtime, started by [`crate::server`]; only [`Shared`]
//! crosses threads.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::fill::Fills;
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
    pub(crate) connections: Cell<usize>,
    /// The most connections open, and the most head room claimed, since memory was last
    /// given back; and the connections open at the last heartbeat (the server hands freed memory back by these).
    pub(crate) connections_high: Cell<usize>,
    pub(crate) head_room_high: Cell<usize>,
    pub(crate) connections_last: Cell<usize>,
    /// Open descriptors of committed files (the hit path's).
    pub files: Files,
    /// Head and body buffers, borrowed per request.
    pub buffers: crate::buffers::Buffers,
    /// This worker's copy of the tag resolutions it has read (see [`crate::store::tags::Local`]).
    pub tags: crate::store::tags::Local,
    /// Connections waiting for their next request.
    pub idle: Idle,
}
