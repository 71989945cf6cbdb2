//! Failpoints: named pauses on the fill and commit path, for tests that must act at an exact
//! moment (SIGKILL between fsync and rename; a follower racing the verification). Compiled
//! only with the `failpoints` cargo feature, which release builds do not enable; without it
//! [`hit`] is an empty inline function.
//!
//! `RINGCACHE_FAILPOINTS=name=duration[,name=duration]` pauses at each named point (the
//! duration in the config's syntax, e.g. `500ms`) after logging `failpoint <name>`.
//! [`block`] stalls a whole thread instead, and [`panic()`] panics (once the process has run
//! for the duration).

/// Pause here if the failpoint `name` is set.
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) {
    let Ok(spec) = std::env::var("RINGCACHE_FAILPOINTS") else {
        return;
    };
    for item in spec.split(',') {
        if let Some((n, d)) = item.split_once('=') {
            if n.trim() == name {
                let d = crate::config::parse_duration(d).unwrap_or_default();
                tracing::warn!(failpoint = name, pause = ?d, "failpoint {name}");
                monoio::time::sleep(d).await;
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) {}

/// Block the calling *thread* (stalling its whole event loop) if the failpoint `name` is set:
/// how tests make a worker stop answering.
#[cfg(feature = "failpoints")]
pub fn block(name: &str) {
    let Ok(spec) = std::env::var("RINGCACHE_FAILPOINTS") else {
        return;
    };
    for item in spec.split(',') {
        if let Some((n, d)) = item.split_once('=') {
            if n.trim() == name {
                static ONCE: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                // Only once, and only after start-up (a worker must first be seen answering).
                if crate::store::index::uptime_ms() >= 2000
                    && !ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let d = crate::config::parse_duration(d).unwrap_or_default();
                    tracing::warn!(failpoint = name, pause = ?d, "failpoint {name}: blocking the thread");
                    std::thread::sleep(d);
                }
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn block(_name: &str) {}

/// Panic here if the failpoint `name` is set and the process has run for its duration (e.g.
/// `worker-panic=1s`): how tests make a thread die.
#[cfg(feature = "failpoints")]
pub fn panic(name: &str) {
    let Ok(spec) = std::env::var("RINGCACHE_FAILPOINTS") else {
        return;
    };
    for item in spec.split(',') {
        if let Some((n, d)) = item.split_once('=') {
            let after = crate::config::parse_duration(d).unwrap_or_default();
            if n.trim() == name && u128::from(crate::store::index::uptime_ms()) >= after.as_millis()
            {
                panic!("failpoint {name}");
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn panic(_name: &str) {}
