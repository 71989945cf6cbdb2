//! Running as a systemd service: readiness (`READY=1` once every worker accepts and the index
//! is loaded), `STATUS=` lines, `STOPPING=1` when draining starts, the watchdog (`WATCHDOG=1`
//! at half `WATCHDOG_USEC`, only while every worker's event loop answers), socket activation
//! (`LISTEN_FDS`), the open-files limit, and what a panic does (the process aborts, so the
//! service manager restarts all of it). Nothing here runs per request.

use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::store::index::now_ms;

/// Send states to the service manager (no-op without `NOTIFY_SOCKET`); failures are logged.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: every connection and open file is a fd.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit read and write a local, initialised struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(
                    from = before,
                    to = lim.rlim_max,
                    "raised the open-files limit"
                );
            }
        }
    }
}

/// Listening sockets passed by systemd (`LISTEN_FDS`, `LISTEN_PID`), if any: each worker gets
/// a `dup` of every one of them.
pub fn inherited_listeners(
    workers: usize,
) -> std::io::Result<Option<Vec<Vec<std::net::TcpListener>>>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()?.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let mut per_worker = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut mine = Vec::with_capacity(fds.len());
        for &fd in &fds {
            // SAFETY: `fd` is a listening socket systemd passed to this process (LISTEN_PID
            // matched); dup gives this worker a descriptor of its own that it then owns.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            if dup < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `dup` is a fresh descriptor owned by nothing else.
            let l = unsafe { std::net::TcpListener::from_raw_fd(dup) };
            l.set_nonblocking(true)?;
            mine.push(l);
        }
        per_worker.push(mine);
    }
    for fd in fds {
        // SAFETY: the originals are no longer needed; every worker holds its own dup.
        unsafe { libc::close(fd) };
    }
    Ok(Some(per_worker))
}

/// Each worker's last heartbeat (ms on the monotonic clock), beaten by a task on its own event
/// loop: a stuck loop stops beating.
#[derive(Default)]
pub struct Heartbeats {
    beats: Vec<AtomicU64>,
}

/// How often a worker's heartbeat task runs.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

impl Heartbeats {
    pub fn new(workers: usize) -> Heartbeats {
        Heartbeats {
            beats: (0..workers).map(|_| AtomicU64::new(now_ms())).collect(),
        }
    }

    pub fn beat(&self, worker: usize) {
        self.beats[worker].store(now_ms(), Ordering::Relaxed);
    }

    /// The workers whose last beat is older than `ms`, with its age (ms): the health check.
    pub fn stale(&self, ms: u64) -> Vec<(usize, u64)> {
        let now = now_ms();
        self.beats
            .iter()
            .enumerate()
            .map(|(i, b)| (i, now.saturating_sub(b.load(Ordering::Relaxed))))
            .filter(|&(_, age)| age > ms)
            .collect()
    }

    /// The worker whose last beat is oldest, and how long ago (ms).
    pub fn stalest(&self) -> (usize, u64) {
        let now = now_ms();
        self.beats
            .iter()
            .enumerate()
            .map(|(i, b)| (i, now.saturating_sub(b.load(Ordering::Relaxed))))
            .max_by_key(|&(_, age)| age)
            .unwrap_or((0, 0))
    }
}

/// The watchdog thread: while `WATCHDOG_USEC` is set, send `WATCHDOG=1` every half interval,
/// but only if every worker has beaten within that half interval plus one beat.
pub fn start_watchdog(heartbeats: Arc<Heartbeats>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = interval / 2;
    let fresh_ms = (half + HEARTBEAT_EVERY * 2).as_millis() as u64;
    tracing::info!(?interval, "systemd watchdog enabled");
    let spawned = std::thread::Builder::new()
        .name("ringcache-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(half);
            let (worker, age) = heartbeats.stalest();
            if age <= fresh_ms {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    worker,
                    stalled_ms = age,
                    "a worker's event loop is not answering; withholding the watchdog ping"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the watchdog thread");
    }
}

/// Make every panic in the process fatal: log it (with the thread, where, and a backtrace)
/// through the configured logger, then abort, so systemd restarts the whole service
/// (`Restart=on-failure`; the watchdog is only a backstop).
///
/// A panic is a bug, and a process that outlives one is half-broken in ways nobody sees: a
/// worker that died leaves its SO_REUSEPORT listener open, taking its share of new connections
/// with nobody accepting them, while the other workers answer health checks; a fill job or the
/// expiry thread that died leaves followers waiting, or the index unsaved. Aborting here, not
/// unwinding, also overrides the `catch_unwind`s on the way (the job pool's, monoio's), and
/// behaves the same in builds that unwind (tests) and in release (`panic = "abort"`, see
/// Cargo.toml). Nothing depends on destructors running: the store is crash-safe.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture();
        // Everything that matters on the first line (fields would follow the backtrace).
        tracing::error!(
            "panic in thread {} at {location}: {message}; aborting (the service manager restarts the process)\n{backtrace}",
            thread.name().unwrap_or("unnamed"),
        );
        std::process::abort();
    }));
}
