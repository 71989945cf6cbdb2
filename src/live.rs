//! Settings SIGHUP can change while the process runs ([`Reloadable`]): read by the workers, the
//! upstream client and the debug listener; written by `main` on reload. TLS and client auth
//! reload their own files ([`crate::tls::Tls::reload`], [`crate::auth::Auth::reload`]).

use crate::config::Config;
use crate::limits::Limits;

/// What SIGHUP can change without a restart: limits and upstream credentials (the log level is
/// reloaded in main). Readers take a copy when they start a connection or an upstream request;
/// `generation` tells each worker's upstream client to refresh (and drop cached tokens).
pub struct Reloadable {
    pub generation: std::sync::atomic::AtomicU64,
    pub log_level: std::sync::RwLock<String>,
    pub limits: std::sync::RwLock<Limits>,
    pub credentials: std::sync::RwLock<Option<(String, String)>>,
    /// `http.tls` loaded (set once at start when configured; its files reload on SIGHUP).
    pub tls: std::sync::OnceLock<crate::tls::Tls>,
    /// `auth` loaded (set once at start when configured; its files reload on SIGHUP).
    pub auth: std::sync::OnceLock<crate::auth::Auth>,
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
            tls: Default::default(),
            auth: Default::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits.read().unwrap().clone()
    }
}
