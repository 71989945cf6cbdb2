//! YAML → [`Config`]. The file's shape is the reference registry's (CNCF Distribution 2.8), so
//! an operator's existing `config.yml` works; ringcache's own settings live under `ringcache:`.
//!
//! The YAML is read into a generic tree first and then walked key by key, so that every error
//! names the key it is about (`proxy.ttl: ...`) and keys of the reference's schema that
//! ringcache does not use are reported (once, at start) rather than refused. Unknown keys under
//! `ringcache:` are errors: they are ours, and a typo there must not pass silently.

//!
//! Files: this one the types and [`Config`]'s reading of the tree; `schema` (which keys exist
//! and what ringcache does with each), `yaml` (the tree, and the `ringcache:` walk), `env`
//! (`REGISTRY_*` / `RINGCACHE_*` overrides), [`units`] (durations, sizes, addresses).

mod env;
mod front;
mod schema;
#[cfg(test)]
mod tests;
pub mod units;
mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::http::url::Url;
use crate::limits::Limits;

use env::apply_env;
pub use front::{AuthConfig, TlsConfig, TlsVersion, CIPHER_SUITES};
use schema::check_keys;
pub use units::{format_duration, format_size, parse_addr, parse_duration, parse_size};
use yaml::{boolean, duration, get, parse_tree, ringcache_section, string};

/// Where the cache lives when no `storage.filesystem.rootdirectory` is set.
pub const DEFAULT_ROOT: &str = "./ringcache-data";

/// The embedded default configuration: what `ringcache serve` runs with no `--config`.
pub const DEFAULT_YAML: &str = "\
version: 0.1
log:
  level: info
http:
  addr: 127.0.0.1:5000
storage:
  filesystem:
    rootdirectory: ./ringcache-data
proxy:
  remoteurl: https://registry-1.docker.io
  ttl: 168h
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub log_level: String,
    /// `log.formatter`: `text` (default) or `json`.
    pub log_json: bool,
    /// One log line per request (target `ringcache::access`) unless
    /// `log.accesslog.disabled`.
    pub access_log: bool,
    /// `http.debug.addr`: the metrics and health listener; none when unset.
    pub debug_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub root_dir: PathBuf,
    /// The default upstream (`proxy:`).
    pub upstream: UpstreamConfig,
    /// `ringcache.upstreams`: the other registries, by name (upstream `i + 1`).
    pub upstreams: Vec<UpstreamConfig>,
    /// Worker threads, one monoio runtime each.
    pub workers: usize,
    pub limits: Limits,
    /// On SIGTERM/SIGINT, in-flight requests and fills get this long to finish.
    pub drain_timeout: Duration,
    /// The store's size cap in bytes (`None`: no cap).
    pub size_max_bytes: Option<u64>,
    /// `size_max` as the operator wrote it (`10GB`, `1024MiB`), for `check-config`.
    pub size_max_written: Option<String>,
    /// Past this share of the cap (percent), least-recently-used entries are evicted...
    pub high_water_percent: u64,
    /// ...down to this share.
    pub low_water_percent: u64,
    /// `ringcache.storage.direct_writes`: fills write with `O_DIRECT` where the filesystem
    /// takes it (default true; see `store::ingest`).
    pub direct_writes: bool,
    /// `ringcache.sendfile`: when file bytes go to a client by sendfile (see
    /// [`crate::http::sendfile::Policy`]).
    pub sendfile: SendfileMode,
    /// How often changed access times, links and tags are appended to the state journal.
    pub state_interval: Duration,
    /// `ringcache.proxy_protocol`: connections from `proxy_protocol_from` start with a PROXY
    /// protocol header (v1 or v2) naming the client, as a load balancer sends it; from any
    /// other peer such a header is a bad request ([`crate::http::proxyproto`]).
    pub proxy_protocol: bool,
    /// `ringcache.proxy_protocol_from`: the load balancers' addresses or networks.
    pub proxy_protocol_from: crate::http::proxyproto::Allow,
    /// `ringcache.admin_from`: besides loopback, the addresses or networks whose
    /// `POST /debug/health/down|up` the debug listener takes.
    pub admin_from: crate::http::proxyproto::Allow,
    /// `ringcache.pin`: images whose tags, manifests and blobs neither expire nor are evicted
    /// (registries checked against the upstreams; reloaded on SIGHUP; see [`crate::pin`]).
    pub pins: Vec<crate::reference::ImageRef>,
    /// `ringcache.offline`: serve only from the cache, never dialling upstream (reloaded on
    /// SIGHUP).
    pub offline: bool,
    /// `ringcache.ratelimit`: stretching the tag freshness of an upstream whose pull budget is
    /// nearly spent ([`crate::upstream::ratelimit`]).
    pub ratelimit: RateLimit,
    /// `http.tls`: TLS to clients on `http.addr` (the debug listener stays plain).
    pub tls: Option<TlsConfig>,
    /// `auth`: client authentication, before routing.
    pub auth: Option<AuthConfig>,
    /// What start reports about the config: keys of the reference schema that were present
    /// but change nothing ringcache does (each with why), defaults taken, variables ignored.
    pub notes: Vec<String>,
}

/// `ringcache.sendfile`: `auto` (default) sends file bytes to a client on another host by
/// sendfile, and copies them through a buffer to one on this host while the worker has few
/// streams; `always` and `never` force one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendfileMode {
    #[default]
    Auto,
    Always,
    Never,
}

impl SendfileMode {
    fn name(self) -> &'static str {
        match self {
            SendfileMode::Auto => "auto",
            SendfileMode::Always => "always",
            SendfileMode::Never => "never",
        }
    }
}

/// `ringcache.ratelimit`: below `stretch_below` of its budget left, an upstream's cached tags
/// are answered for `stretch_to` without asking it (when that is longer than `fresh_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The share of the budget left under which tags are stretched, in millionths (written as
    /// a fraction, `0.1`, or a percentage, `10%`); 0 never stretches.
    pub stretch_below_ppm: u64,
    pub stretch_to: Duration,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            stretch_below_ppm: crate::upstream::ratelimit::STRETCH_BELOW_DEFAULT_PPM,
            stretch_to: crate::upstream::ratelimit::STRETCH_TO_DEFAULT,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry name clients write for it (`ghcr.io`, `harbor.corp:5000`); the default
    /// upstream's is `ringcache.upstream.registry`, else its remote URL's authority.
    pub registry: String,
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Expiry after last use; `None` disables expiry (`ttl: 0`).
    pub ttl: Option<Duration>,
    /// Extra CA certificates (PEM) trusted for the upstream, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `ringcache.upstream.token_realms`: token realms the operator allows the credentials to
    /// go to although they are on neither the upstream's authority nor its registrable domain.
    pub token_realms: Vec<Url>,
    /// Inside this window a tag is answered from the cache without asking upstream.
    pub tags_fresh_for: Duration,
}

impl UpstreamConfig {
    /// The `ns` to send upstream: the registry's name, when the remote URL is not the
    /// registry itself but a mirror of it (another ringcache, a tier) that must be told which
    /// registry is meant (containerd's rule for mirrors).
    pub fn forward_ns(&self) -> Option<&str> {
        let authority = self.url.origin.authority();
        let hub = |n: &str| crate::registry::DOCKER_HUB.contains(&n);
        let same = authority.eq_ignore_ascii_case(&self.registry)
            || (hub(&self.registry) && hub(&authority.to_ascii_lowercase()));
        (!same).then_some(self.registry.as_str())
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("registry", &self.registry)
            .field("url", &self.url.to_string())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("ttl", &self.ttl)
            .field("ca_file", &self.ca_file)
            .field(
                "token_realms",
                &self
                    .token_realms
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("tags_fresh_for", &self.tags_fresh_for)
            .finish()
    }
}

/// A config error: the key it is about and what is wrong. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}
impl Config {
    /// Parse a YAML document, then apply `REGISTRY_*` / `RINGCACHE_*` overrides from `env`.
    pub fn from_yaml_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = parse_tree(text)?;
        let mut notes = Vec::new();
        // (path set, variable that set it): an error about that path names the variable.
        let mut origins: Vec<(String, String)> = Vec::new();
        for (k, v) in env {
            if let Some(path) = apply_env(&mut tree, &k, &v, &mut notes)? {
                origins.push((path, k));
            }
        }
        let mut config = Config::from_tree(tree).map_err(|mut e| {
            let under =
                |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('.'));
            if let Some((_, var)) = origins
                .iter()
                .find(|(p, _)| under(p, &e.key) || under(&e.key, p))
            {
                e.message = format!("{} (set by {var})", e.message);
            }
            e
        })?;
        notes.append(&mut config.notes);
        config.notes = notes;
        Ok(config)
    }

    /// Parse a YAML document.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_tree(parse_tree(text)?)
    }

    pub fn from_tree(tree: Value) -> Result<Config, ConfigError> {
        let Value::Object(root) = tree else {
            return Err(err("", "the config must be a YAML mapping"));
        };
        let mut notes = Vec::new();
        check_keys("", &root, &mut notes)?;
        let mut config = Config {
            log_level: "info".into(),
            log_json: false,
            access_log: true,
            debug_addr: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            root_dir: PathBuf::from(DEFAULT_ROOT),
            upstream: UpstreamConfig {
                // Replaced below: proxy.remoteurl is required.
                registry: String::new(),
                url: Url::parse("https://registry-1.docker.io")
                    .ok_or_else(|| err("", "the default upstream URL does not parse"))?,
                username: None,
                password: None,
                ttl: Some(Duration::from_secs(168 * 3600)),
                ca_file: None,
                token_realms: Vec::new(),
                tags_fresh_for: Duration::from_secs(60),
            },
            upstreams: Vec::new(),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(30),
            size_max_bytes: None,
            size_max_written: None,
            high_water_percent: 95,
            direct_writes: true,
            sendfile: SendfileMode::Auto,
            low_water_percent: 90,
            state_interval: Duration::from_secs(10),
            proxy_protocol: false,
            proxy_protocol_from: Default::default(),
            admin_from: Default::default(),
            pins: Vec::new(),
            offline: false,
            ratelimit: RateLimit::default(),
            tls: None,
            auth: None,
            notes: Vec::new(),
        };
        if let Some(v) = get(&root, "version") {
            match v {
                Value::String(s) if s == "0.1" => {}
                Value::Number(n) if n.as_f64() == Some(0.1) => {}
                _ => return Err(err("version", "must be 0.1")),
            }
        }
        // `loglevel` is the reference's older spelling, read when `log.level` is not set.
        let level = match get(&root, "log.level") {
            Some(v) => Some(("log.level", v)),
            None => get(&root, "loglevel").map(|v| ("loglevel", v)),
        };
        if let Some((key, v)) = level {
            let level = string(key, v)?.to_ascii_lowercase();
            let level = if level == "warning" {
                "warn".to_string()
            } else {
                level
            };
            if !["error", "warn", "info", "debug", "trace", "panic", "fatal"]
                .contains(&level.as_str())
            {
                return Err(err(key, format!("unknown level {level:?}")));
            }
            config.log_level = match level.as_str() {
                "panic" | "fatal" => "error".into(),
                _ => level,
            };
        }
        if let Some(v) = get(&root, "log.accesslog.disabled") {
            config.access_log = !boolean("log.accesslog.disabled", v)?;
        }
        if let Some(v) = get(&root, "http.net") {
            if string("http.net", v)? != "tcp" {
                return Err(err(
                    "http.net",
                    "must be tcp (listening on a unix socket is not supported)",
                ));
            }
        }
        if let Some(v) = get(&root, "http.prefix") {
            if !matches!(string("http.prefix", v)?, "" | "/") {
                return Err(err(
                    "http.prefix",
                    "serving under a path prefix is not supported; route /v2/ to ringcache",
                ));
            }
        }
        if let Some(v) = get(&root, "http.addr") {
            config.http_addr =
                parse_addr(string("http.addr", v)?).map_err(|m| err("http.addr", m))?;
        }
        if let Some(v) = get(&root, "log.formatter") {
            config.log_json = match string("log.formatter", v)? {
                "text" => false,
                "json" => true,
                other => {
                    return Err(err(
                        "log.formatter",
                        format!("{other:?} is not text or json (logstash is not supported)"),
                    ))
                }
            };
        }
        if let Some(v) = get(&root, "http.debug.addr") {
            config.debug_addr = Some(
                parse_addr(string("http.debug.addr", v)?).map_err(|m| err("http.debug.addr", m))?,
            );
        }
        if let Some(v) = get(&root, "http.draintimeout") {
            config.drain_timeout = duration("http.draintimeout", v)?;
        }
        match get(&root, "storage.filesystem.rootdirectory") {
            Some(v) => {
                let s = string("storage.filesystem.rootdirectory", v)?;
                if s.is_empty() {
                    return Err(err("storage.filesystem.rootdirectory", "must not be empty"));
                }
                config.root_dir = PathBuf::from(s);
            }
            None => notes.push(format!(
                "storage.filesystem.rootdirectory is not set: caching under {DEFAULT_ROOT}"
            )),
        }
        if let Some(v) = get(&root, "proxy.remoteurl") {
            let s = string("proxy.remoteurl", v)?;
            config.upstream.url = Url::parse(s.trim_end_matches('/'))
                .ok_or_else(|| err("proxy.remoteurl", format!("{s:?} is not an http(s) URL")))?;
        }
        if let Some(v) = get(&root, "proxy.username") {
            config.upstream.username =
                Some(string("proxy.username", v)?.to_string()).filter(|s| !s.is_empty());
        }
        if let Some(v) = get(&root, "proxy.password") {
            config.upstream.password =
                Some(string("proxy.password", v)?.to_string()).filter(|s| !s.is_empty());
        }
        if let Some(v) = get(&root, "proxy.ttl") {
            let d = duration("proxy.ttl", v)?;
            config.upstream.ttl = (!d.is_zero()).then_some(d);
        }
        if config.upstream.username.is_some() != config.upstream.password.is_some() {
            return Err(err("proxy.password", "username and password go together"));
        }
        config.upstream.registry = config.upstream.url.origin.authority().to_ascii_lowercase();
        config.tls = front::tls(&root)?;
        config.auth = front::auth(&root)?;
        if let Some(rc) = root.get("ringcache") {
            ringcache_section(rc, &mut config)?;
        }
        // Never a silent default upstream: a config without it (or with it misspelled, which
        // the key walk above already named) would send the credentials to Docker Hub.
        if get(&root, "proxy.remoteurl").is_none() {
            return Err(err(
                "proxy.remoteurl",
                "required: the upstream registry's URL (e.g. https://registry-1.docker.io)",
            ));
        }
        config.notes = notes;
        Ok(config)
    }

    /// Every upstream: the default first (upstream 0), then `ringcache.upstreams`.
    pub fn all_upstreams(&self) -> impl Iterator<Item = &UpstreamConfig> {
        std::iter::once(&self.upstream).chain(&self.upstreams)
    }

    /// The registry names each upstream answers under, for routing.
    pub fn registries(&self) -> crate::registry::Registries {
        crate::registry::Registries::new(
            &self.upstream.registry,
            self.upstreams.iter().map(|u| u.registry.as_str()),
        )
    }

    /// The effective configuration as a tree, secrets masked (for `check-config`).
    pub fn effective(&self) -> Value {
        let l = &self.limits;
        let upstreams: serde_json::Map<String, Value> = self
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.registry.clone(),
                    serde_json::json!({
                        "remoteurl": u.url.to_string().trim_end_matches('/'),
                        "username": u.username,
                        "password": u.password.as_ref().map(|_| "********"),
                        "ttl": u.ttl.map_or("0".to_string(), format_duration),
                        "ca_file": u.ca_file.as_ref().map(|p| p.display().to_string()),
                        "token_realms": u.token_realms.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                        "tags": {"fresh_for": format_duration(u.tags_fresh_for)},
                        "ns_forwarded": u.forward_ns(),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "version": "0.1",
            "log": {"level": self.log_level, "formatter": if self.log_json { "json" } else { "text" }, "accesslog": {"disabled": !self.access_log}},
            "http": {"addr": self.http_addr.to_string(), "debug": {"addr": self.debug_addr.map(|a| a.to_string())}, "draintimeout": format_duration(self.drain_timeout), "tls": front::effective_tls(self.tls.as_ref())},
            "auth": front::effective_auth(self.auth.as_ref()),
            "storage": {"filesystem": {"rootdirectory": self.root_dir.display().to_string()}},
            "proxy": {
                "remoteurl": self.upstream.url.to_string().trim_end_matches('/'),
                "username": self.upstream.username,
                "password": self.upstream.password.as_ref().map(|_| "********"),
                "ttl": self.upstream.ttl.map_or("0".to_string(), format_duration),
            },
            "ringcache": {
                "workers": self.workers,
                "sendfile": self.sendfile.name(),
                "drain_timeout": format_duration(self.drain_timeout),
                "storage": {
                    "size_max": match (self.size_max_bytes, &self.size_max_written) {
                        (None, _) => "none".to_string(),
                        (Some(_), Some(w)) => w.clone(),
                        (Some(n), None) => format_size(n),
                    },
                    "high_water_percent": self.high_water_percent,
                    "low_water_percent": self.low_water_percent,
                    "direct_writes": self.direct_writes,
                },
                "state": {"interval": format_duration(self.state_interval)},
                "proxy_protocol": self.proxy_protocol,
                "proxy_protocol_from": self.proxy_protocol_from.to_strings(),
                "admin_from": self.admin_from.to_strings(),
                "offline": self.offline,
                "pin": self.pins.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "upstream": {
                    "registry": self.upstream.registry,
                    "ca_file": self.upstream.ca_file.as_ref().map(|p| p.display().to_string()),
                    "token_realms": self.upstream.token_realms.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                },
                "tags": {"fresh_for": format_duration(self.upstream.tags_fresh_for)},
                "ratelimit": {
                    "stretch_below": self.ratelimit.stretch_below_ppm as f64 / 1e6,
                    "stretch_to": format_duration(self.ratelimit.stretch_to),
                },
                "upstreams": upstreams,
                "limits": {
                    "request_line_bytes_max": l.request_line_bytes_max,
                    "header_line_bytes_max": l.header_line_bytes_max,
                    "head_bytes_max": l.head_bytes_max,
                    "headers_max": l.headers_max,
                    "head_timeout": format_duration(l.head_timeout),
                    "keepalive_idle": format_duration(l.keepalive_idle),
                    "connections_per_worker_max": l.connections_per_worker_max,
                    "send_stall": format_duration(l.send_stall),
                    "upstream_connect_timeout": format_duration(l.upstream_connect_timeout),
                    "upstream_header_timeout": format_duration(l.upstream_header_timeout),
                    "upstream_body_stall": format_duration(l.upstream_body_stall),
                },
            },
        })
    }
}
