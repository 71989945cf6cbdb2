//! Settings SIGHUP can change while the process runs ([`Reloadable`]): read by the workers, the
//! upstream client and the debug listener; written by `main` on reload.

use crate::config::Config;
use crate::limits::Limits;

/// What SIGHUP can change without a restart: limits, and each upstream's credentials, TLS
/// roots (its CA file) and tag freshness (the log level is reloaded in main). Readers take a
/// copy when they start a connection or an upstream request; `generation` tells each worker's
/// upstream clients to refresh (and drop cached tokens). Per-upstream settings are indexed by
/// upstream (0: the default); the set of upstreams itself changes only with a restart.
pub struct Reloadable {
    pub generation: std::sync::atomic::AtomicU64,
    pub log_level: std::sync::RwLock<String>,
    pub limits: std::sync::RwLock<Limits>,
    pub credentials: std::sync::RwLock<Vec<Option<(String, String)>>>,
    /// Each upstream's TLS client configuration (system roots plus its `ca_file`).
    pub tls: std::sync::RwLock<Vec<std::sync::Arc<rustls::ClientConfig>>>,
    /// Each upstream's `tags.fresh_for`, in ms: read on every manifest by tag, so an atomic.
    pub fresh_for_ms: Box<[std::sync::atomic::AtomicU64]>,
    /// `ringcache.offline`: serve only from the cache; no upstream request is made.
    pub offline: std::sync::atomic::AtomicBool,
    /// `ringcache.pin`: read by the expiry thread when `generation` moves.
    pub pins: std::sync::RwLock<Vec<crate::reference::ImageRef>>,
    /// Each upstream's stretched tag freshness, in ms (0: not stretched): set while its pull
    /// budget is nearly spent ([`crate::upstream::ratelimit`]); [`Reloadable::fresh_for`]
    /// takes the larger of the two.
    pub stretched_ms: Box<[std::sync::atomic::AtomicU64]>,
    /// `ringcache.ratelimit.stretch_below` (millionths) and `stretch_to` (ms).
    pub stretch_below_ppm: std::sync::atomic::AtomicU64,
    pub stretch_to_ms: std::sync::atomic::AtomicU64,
}

/// Each upstream's credentials, in upstream order.
pub fn credentials_of(config: &Config) -> Vec<Option<(String, String)>> {
    config
        .all_upstreams()
        .map(|u| u.username.clone().zip(u.password.clone()))
        .collect()
}

/// Each upstream's TLS client configuration, in upstream order; an error names the CA file
/// that did not load.
pub fn tls_of(config: &Config) -> Result<Vec<std::sync::Arc<rustls::ClientConfig>>, String> {
    config
        .all_upstreams()
        .map(|u| crate::http::connect::tls_config(u.ca_file.as_deref()))
        .collect()
}

impl Reloadable {
    pub fn new(config: &Config, tls: Vec<std::sync::Arc<rustls::ClientConfig>>) -> Reloadable {
        Reloadable {
            generation: Default::default(),
            log_level: std::sync::RwLock::new(config.log_level.clone()),
            limits: std::sync::RwLock::new(config.limits.clone()),
            credentials: std::sync::RwLock::new(credentials_of(config)),
            tls: std::sync::RwLock::new(tls),
            fresh_for_ms: config
                .all_upstreams()
                .map(|u| std::sync::atomic::AtomicU64::new(u.tags_fresh_for.as_millis() as u64))
                .collect(),
            offline: std::sync::atomic::AtomicBool::new(config.offline),
            pins: std::sync::RwLock::new(config.pins.clone()),
            stretched_ms: config.all_upstreams().map(|_| Default::default()).collect(),
            stretch_below_ppm: config.ratelimit.stretch_below_ppm.into(),
            stretch_to_ms: (config.ratelimit.stretch_to.as_millis() as u64).into(),
        }
    }

    /// SIGHUP: take `ringcache.ratelimit` from `config`; whether it changed. A stretch in
    /// force keeps its window until the budget recovers.
    pub fn reload_ratelimit(&self, config: &Config) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let below = self
            .stretch_below_ppm
            .swap(config.ratelimit.stretch_below_ppm, Relaxed);
        let to = config.ratelimit.stretch_to.as_millis() as u64;
        let was = self.stretch_to_ms.swap(to, Relaxed);
        below != config.ratelimit.stretch_below_ppm || was != to
    }

    /// Whether `ringcache.offline` is on (read before every upstream request).
    pub fn offline(&self) -> bool {
        self.offline.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Upstream `u`'s credentials.
    pub fn credentials(&self, u: usize) -> Option<(String, String)> {
        self.credentials.read().unwrap().get(u).cloned().flatten()
    }

    /// Upstream `u`'s tag freshness window (stretched while its pull budget is low).
    pub fn fresh_for(&self, u: usize) -> std::time::Duration {
        let load = |a: &[std::sync::atomic::AtomicU64]| {
            a.get(u)
                .map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed))
        };
        let ms = load(&self.fresh_for_ms).max(load(&self.stretched_ms));
        std::time::Duration::from_millis(ms)
    }

    pub fn limits(&self) -> Limits {
        self.limits.read().unwrap().clone()
    }
}
