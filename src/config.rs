//! YAML → [`Config`]. The file's shape is the reference registry's (CNCF Distribution 2.8), so
//! an operator's existing `config.yml` works; ringcache's own settings live under `ringcache:`.
//!
//! The YAML is read into a generic tree first and then walked key by key, so that every error
//! names the key it is about (`proxy.ttl: ...`) and keys of the reference's schema that
//! ringcache does not use are reported (once, at start) rather than refused. Unknown keys under
//! `ringcache:` are errors: they are ours, and a typo there must not pass silently.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::http::client::Url;
use crate::limits::Limits;

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
    /// `http.debug.addr`: the metrics and health listener; none when unset.
    pub debug_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub root_dir: PathBuf,
    pub upstream: UpstreamConfig,
    /// Worker threads, one monoio runtime each.
    pub workers: usize,
    pub limits: Limits,
    /// Inside this window a tag is answered from the cache without asking upstream.
    pub tags_fresh_for: Duration,
    /// On SIGTERM/SIGINT, in-flight requests and fills get this long to finish.
    pub drain_timeout: Duration,
    /// The store's size cap in bytes (`None`: no cap).
    pub size_max_bytes: Option<u64>,
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
    /// Keys of the reference schema that were present but are not used by ringcache.
    pub ignored_keys: Vec<String>,
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

#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
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
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
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

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The reference registry's configuration schema (Distribution 2.8 `configuration.go`):
/// top-level keys, and for the sections ringcache reads, their sub-keys. A key listed here but
/// not used is accepted and reported; a key not listed at all is reported as unknown.
const REFERENCE_TOP: &[&str] = &[
    "version",
    "log",
    "loglevel",
    "storage",
    "auth",
    "middleware",
    "reporting",
    "http",
    "notifications",
    "redis",
    "health",
    "proxy",
    "compatibility",
    "validation",
    "policy",
    "catalog",
];
const USED: &[&str] = &[
    "version",
    "log.level",
    "log.formatter",
    "http.addr",
    "http.draintimeout",
    "http.debug.addr",
    "storage.filesystem.rootdirectory",
    "proxy.remoteurl",
    "proxy.username",
    "proxy.password",
    "proxy.ttl",
];

impl Config {
    /// Parse a YAML document, then apply `REGISTRY_*` / `RINGCACHE_*` overrides from `env`.
    pub fn from_yaml_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = parse_tree(text)?;
        for (k, v) in env {
            apply_env(&mut tree, &k, &v)?;
        }
        Config::from_tree(tree)
    }

    /// Parse a YAML document.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_tree(parse_tree(text)?)
    }

    pub fn from_tree(tree: Value) -> Result<Config, ConfigError> {
        let Value::Object(root) = tree else {
            return Err(err("", "the config must be a YAML mapping"));
        };
        // The sections ringcache reads must be mappings when present.
        for section in ["log", "http", "storage", "storage.filesystem", "proxy"] {
            let mut parts = section.split('.');
            let mut cur = root.get(parts.next().unwrap_or(""));
            for p in parts {
                cur = cur.and_then(|c| c.as_object()).and_then(|m| m.get(p));
            }
            if cur.is_some_and(|v| !v.is_object() && !v.is_null()) {
                return Err(err(section, "must be a mapping"));
            }
        }
        let mut ignored = Vec::new();
        for (k, v) in &root {
            if k == "ringcache" {
                continue;
            }
            if !REFERENCE_TOP.contains(&k.as_str()) {
                ignored.push(format!("{k} (unknown key)"));
                continue;
            }
            collect_unused(k, v, &mut ignored);
        }
        let mut config = Config {
            log_level: "info".into(),
            log_json: false,
            debug_addr: None,
            http_addr: "127.0.0.1:5000".parse().unwrap(),
            root_dir: PathBuf::from("./ringcache-data"),
            upstream: UpstreamConfig {
                url: Url::parse("https://registry-1.docker.io").unwrap(),
                username: None,
                password: None,
                ttl: Some(Duration::from_secs(168 * 3600)),
                ca_file: None,
                token_realms: Vec::new(),
            },
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            limits: Limits::default(),
            tags_fresh_for: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            size_max_bytes: None,
            high_water_percent: 95,
            direct_writes: true,
            sendfile: SendfileMode::Auto,
            low_water_percent: 90,
            state_interval: Duration::from_secs(10),
            ignored_keys: ignored,
        };
        if let Some(v) = get(&root, "version") {
            match v {
                Value::String(s) if s == "0.1" => {}
                Value::Number(n) if n.as_f64() == Some(0.1) => {}
                _ => return Err(err("version", "must be 0.1")),
            }
        }
        if let Some(v) = get(&root, "log.level") {
            let level = string("log.level", v)?.to_ascii_lowercase();
            let level = if level == "warning" {
                "warn".to_string()
            } else {
                level
            };
            if !["error", "warn", "info", "debug", "trace", "panic", "fatal"]
                .contains(&level.as_str())
            {
                return Err(err("log.level", format!("unknown level {level:?}")));
            }
            config.log_level = match level.as_str() {
                "panic" | "fatal" => "error".into(),
                _ => level,
            };
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
        if let Some(v) = get(&root, "storage.filesystem.rootdirectory") {
            let s = string("storage.filesystem.rootdirectory", v)?;
            if s.is_empty() {
                return Err(err("storage.filesystem.rootdirectory", "must not be empty"));
            }
            config.root_dir = PathBuf::from(s);
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
        if let Some(rc) = root.get("ringcache") {
            ringcache_section(rc, &mut config)?;
        }
        Ok(config)
    }

    /// The effective configuration as a tree, secrets masked (for `check-config`).
    pub fn effective(&self) -> Value {
        let l = &self.limits;
        serde_json::json!({
            "version": "0.1",
            "log": {"level": self.log_level, "formatter": if self.log_json { "json" } else { "text" }},
            "http": {"addr": self.http_addr.to_string(), "debug": {"addr": self.debug_addr.map(|a| a.to_string())}, "draintimeout": format_duration(self.drain_timeout)},
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
                    "size_max": self.size_max_bytes.map_or("0".to_string(), format_size),
                    "high_water_percent": self.high_water_percent,
                    "low_water_percent": self.low_water_percent,
                    "direct_writes": self.direct_writes,
                },
                "state": {"interval": format_duration(self.state_interval)},
                "upstream": {
                    "ca_file": self.upstream.ca_file.as_ref().map(|p| p.display().to_string()),
                    "token_realms": self.upstream.token_realms.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                },
                "tags": {"fresh_for": format_duration(self.tags_fresh_for)},
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

fn parse_tree(text: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str(text).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or("").to_string();
        err("", format!("invalid YAML: {first}"))
    })
}

/// ringcache's own keys, as paths under `ringcache.`: `RINGCACHE_*` variables are matched
/// against these (the keys themselves contain underscores, so the name cannot be split).
const RINGCACHE_KEYS: &[&str] = &[
    "workers",
    "sendfile",
    "drain_timeout",
    "upstream.ca_file",
    "tags.fresh_for",
    "state.interval",
    "storage.size_max",
    "storage.high_water_percent",
    "storage.low_water_percent",
    "storage.direct_writes",
    "limits.request_line_bytes_max",
    "limits.header_line_bytes_max",
    "limits.head_bytes_max",
    "limits.headers_max",
    "limits.head_timeout",
    "limits.keepalive_idle",
    "limits.connections_per_worker_max",
    "limits.send_stall",
    "limits.upstream_connect_timeout",
    "limits.upstream_header_timeout",
    "limits.upstream_body_stall",
];

/// Apply one environment variable, as the reference registry does: `REGISTRY_PROXY_REMOTEURL`
/// sets `proxy.remoteurl` (names split on `_`, lowercased); `RINGCACHE_STORAGE_SIZE_MAX` sets
/// `ringcache.storage.size_max`. The value is read as YAML (so `5`, `true`, `[a]` keep their
/// types). Other variables are ignored; an unknown `RINGCACHE_*` is an error.
pub fn apply_env(tree: &mut Value, name: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = if let Some(rest) = name.strip_prefix("REGISTRY_") {
        rest.split('_').map(|p| p.to_ascii_lowercase()).collect()
    } else if let Some(rest) = name.strip_prefix("RINGCACHE_") {
        // Read by the failpoints of test builds, not settings.
        if rest == "FAILPOINTS" || rest == "WALL_OFFSET_SECS" {
            return Ok(());
        }
        let want = rest.to_ascii_lowercase();
        match RINGCACHE_KEYS.iter().find(|k| k.replace('.', "_") == want) {
            Some(k) => std::iter::once("ringcache".to_string())
                .chain(k.split('.').map(String::from))
                .collect(),
            None => return Err(err(name, "no such ringcache setting")),
        }
    } else {
        return Ok(());
    };
    if path.iter().any(|p| p.is_empty()) {
        return Ok(());
    }
    let parsed: Value =
        serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    let parsed = if parsed.is_null() {
        Value::String(value.to_string())
    } else {
        parsed
    };
    let mut cur = tree;
    for (i, part) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("made an object above");
        if i + 1 == path.len() {
            map.insert(part.clone(), parsed);
            return Ok(());
        }
        cur = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

fn ringcache_section(rc: &Value, config: &mut Config) -> Result<(), ConfigError> {
    let Value::Object(rc) = rc else {
        return Err(err("ringcache", "must be a mapping"));
    };
    for (k, v) in rc {
        let key = format!("ringcache.{k}");
        match k.as_str() {
            "drain_timeout" => config.drain_timeout = duration(&key, v)?,
            "storage" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "size_max" => {
                            let n = match v2 {
                                Value::String(s) => parse_size(s),
                                Value::Number(n) => n.as_u64(),
                                _ => None,
                            }
                            .ok_or_else(|| {
                                err(&key, "must be a size (e.g. 500GiB, 10MiB, 1000000)")
                            })?;
                            config.size_max_bytes = (n > 0).then_some(n);
                        }
                        "high_water_percent" | "low_water_percent" => {
                            let n = uint(&key, v2)?;
                            if !(1..=100).contains(&n) {
                                return Err(err(&key, "must be between 1 and 100"));
                            }
                            if k2 == "high_water_percent" {
                                config.high_water_percent = n;
                            } else {
                                config.low_water_percent = n;
                            }
                        }
                        "direct_writes" => config.direct_writes = boolean(&key, v2)?,
                        _ => return Err(err(&key, "unknown key")),
                    }
                }
                if config.low_water_percent > config.high_water_percent {
                    return Err(err(
                        "ringcache.storage.low_water_percent",
                        "must not be above high_water_percent",
                    ));
                }
            }
            "state" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "interval" => {
                            config.state_interval = duration(&key, v2)?;
                            if config.state_interval.is_zero() {
                                return Err(err(&key, "must be more than 0"));
                            }
                        }
                        _ => return Err(err(&key, "unknown key")),
                    }
                }
            }
            "sendfile" => {
                config.sendfile = match v.as_str() {
                    Some("auto") => SendfileMode::Auto,
                    Some("always") => SendfileMode::Always,
                    Some("never") => SendfileMode::Never,
                    _ => return Err(err(&key, "must be auto, always or never")),
                }
            }
            "workers" => {
                let n = uint(&key, v)?;
                if n == 0 || n > 1024 {
                    return Err(err(&key, "must be between 1 and 1024"));
                }
                config.workers = n as usize;
            }
            "upstream" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "ca_file" => {
                            config.upstream.ca_file = Some(PathBuf::from(string(&key, v2)?))
                        }
                        "token_realms" => {
                            let Value::Array(items) = v2 else {
                                return Err(err(&key, "must be a list of URLs"));
                            };
                            let mut realms = Vec::with_capacity(items.len());
                            for (i, item) in items.iter().enumerate() {
                                let key = format!("{key}[{i}]");
                                let s = string(&key, item)?;
                                realms.push(
                                    Url::parse(s)
                                        .ok_or_else(|| err(&key, format!("invalid URL {s:?}")))?,
                                );
                            }
                            config.upstream.token_realms = realms;
                        }
                        _ => return Err(err(&key, "unknown key")),
                    }
                }
            }
            "tags" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "fresh_for" => config.tags_fresh_for = duration(&key, v2)?,
                        _ => return Err(err(&key, "unknown key")),
                    }
                }
            }
            "limits" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    let l = &mut config.limits;
                    let bytes = |v: &Value| -> Result<usize, ConfigError> {
                        let n = uint(&key, v)?;
                        if !(256..=1 << 20).contains(&n) {
                            return Err(err(&key, "must be between 256 and 1048576"));
                        }
                        Ok(n as usize)
                    };
                    let secs = |v: &Value| -> Result<Duration, ConfigError> {
                        let d = duration(&key, v)?;
                        if d.is_zero() {
                            return Err(err(&key, "must be more than 0"));
                        }
                        Ok(d)
                    };
                    match k2.as_str() {
                        "request_line_bytes_max" => l.request_line_bytes_max = bytes(v2)?,
                        "header_line_bytes_max" => l.header_line_bytes_max = bytes(v2)?,
                        "head_bytes_max" => l.head_bytes_max = bytes(v2)?,
                        "headers_max" => {
                            let n = uint(&key, v2)?;
                            if !(8..=1024).contains(&n) {
                                return Err(err(&key, "must be between 8 and 1024"));
                            }
                            l.headers_max = n as usize;
                        }
                        "head_timeout" => l.head_timeout = secs(v2)?,
                        "keepalive_idle" => l.keepalive_idle = secs(v2)?,
                        "connections_per_worker_max" => {
                            let n = uint(&key, v2)?;
                            if n == 0 {
                                return Err(err(&key, "must be more than 0"));
                            }
                            l.connections_per_worker_max = n as usize;
                        }
                        "send_stall" => l.send_stall = secs(v2)?,
                        "upstream_connect_timeout" => l.upstream_connect_timeout = secs(v2)?,
                        "upstream_header_timeout" => l.upstream_header_timeout = secs(v2)?,
                        "upstream_body_stall" => l.upstream_body_stall = secs(v2)?,
                        _ => return Err(err(&key, "unknown key")),
                    }
                }
                let l = &config.limits;
                if l.request_line_bytes_max > l.head_bytes_max
                    || l.header_line_bytes_max > l.head_bytes_max
                {
                    return Err(err(
                        "ringcache.limits.head_bytes_max",
                        "must be at least the line limits",
                    ));
                }
            }
            _ => return Err(err(&key, "unknown key")),
        }
    }
    Ok(())
}

/// Record the keys under a reference section that ringcache does not use.
fn collect_unused(path: &str, v: &Value, out: &mut Vec<String>) {
    if USED.contains(&path) {
        return;
    }
    match v {
        Value::Object(m) if USED.iter().any(|u| u.starts_with(&format!("{path}."))) => {
            for (k, v) in m {
                collect_unused(&format!("{path}.{k}"), v, out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = root.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn string<'a>(key: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
    v.as_str().ok_or_else(|| err(key, "must be a string"))
}

fn uint(key: &str, v: &Value) -> Result<u64, ConfigError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| err(key, "must be a non-negative integer")),
        Value::String(s) => s
            .parse()
            .map_err(|_| err(key, "must be a non-negative integer")),
        _ => Err(err(key, "must be a non-negative integer")),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(err(key, "must be true or false")),
    }
}

fn mapping<'a>(key: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| err(key, "must be a mapping"))
}

fn duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
    match v {
        Value::String(s) => parse_duration(s).ok_or_else(|| {
            err(
                key,
                format!("invalid duration {s:?} (e.g. 168h, 90s, 1h30m)"),
            )
        }),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
        _ => Err(err(
            key,
            "must be a duration string (e.g. 168h, 90s, 1h30m)",
        )),
    }
}

/// Go's `time.ParseDuration` grammar for non-negative values: `[0-9.]+(ns|us|µs|ms|s|m|h)`
/// repeated, or a bare `0`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 100.0 * 365.0 * 86400.0 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Format a duration the way it is written in the config (`168h`, `1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// A size with an optional binary or decimal unit: `500GiB`, `10MiB`, `1GB`, `4096`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Format a byte count the way it is written in the config.
pub fn format_size(n: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// `host:port` as Go's net.Listen takes it: `:5000` means every interface.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_reference_example() {
        let c = Config::from_yaml(DEFAULT_YAML).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.upstream.url.origin.host, "registry-1.docker.io");
        assert_eq!(c.upstream.ttl, Some(Duration::from_secs(168 * 3600)));
        let c = Config::from_yaml(
            "version: 0.1\nlog: {level: info}\nhttp: {addr: 127.0.0.1:5000}\n\
             storage: {filesystem: {rootdirectory: /var/cache/ringcache}}\n\
             proxy: {remoteurl: https://registry-1.docker.io, username: U, password: P, ttl: 168h}\n",
        )
        .unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/var/cache/ringcache"));
        assert_eq!(c.upstream.username.as_deref(), Some("U"));
        assert!(
            !format!("{c:?}").contains("\"P\""),
            "password must not be printed"
        );
        assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    }

    #[test]
    fn unused_reference_keys_are_reported_not_refused() {
        let c = Config::from_yaml(
            "version: 0.1\nstorage: {filesystem: {rootdirectory: /x, maxthreads: 100}, delete: {enabled: true}}\n\
             http: {addr: ':5000', headers: {X-Content-Type-Options: [nosniff]}}\nhealth: {storagedriver: {enabled: true}}\n\
             bogus: 1\n",
        )
        .unwrap();
        assert_eq!(c.http_addr, "0.0.0.0:5000".parse().unwrap());
        for k in [
            "storage.filesystem.maxthreads",
            "storage.delete",
            "http.headers",
            "health",
            "bogus (unknown key)",
        ] {
            assert!(
                c.ignored_keys.iter().any(|i| i == k),
                "{k} in {:?}",
                c.ignored_keys
            );
        }
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            ("proxy: {remoteurl: ftp://x}", "proxy.remoteurl"),
            ("proxy: {ttl: soon}", "proxy.ttl"),
            ("http: {addr: 'nope'}", "http.addr"),
            ("log: {level: loud}", "log.level"),
            ("version: 0.2", "version"),
            ("ringcache: {workers: 0}", "ringcache.workers"),
            ("ringcache: {wrokers: 2}", "ringcache.wrokers"),
            (
                "ringcache: {limits: {head_bytes_max: 10}}",
                "ringcache.limits.head_bytes_max",
            ),
            (
                "ringcache: {limits: {head_timeout: 0s}}",
                "ringcache.limits.head_timeout",
            ),
            ("proxy: {username: u}", "proxy.password"),
            (
                "ringcache: {storage: {direct_writes: sometimes}}",
                "ringcache.storage.direct_writes",
            ),
            ("ringcache: {sendfile: yes}", "ringcache.sendfile"),
        ];
        for (yaml, key) in cases {
            let e = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        assert!(Config::from_yaml("a: [").is_err());
    }

    #[test]
    fn environment_overrides() {
        let env = [
            ("REGISTRY_PROXY_REMOTEURL", "http://127.0.0.1:9999"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/cache"),
            ("REGISTRY_HTTP_ADDR", ":6000"),
            ("RINGCACHE_WORKERS", "3"),
            ("RINGCACHE_STORAGE_SIZE_MAX", "10GiB"),
            ("RINGCACHE_LIMITS_HEAD_TIMEOUT", "5s"),
            ("RINGCACHE_STORAGE_DIRECT_WRITES", "false"),
            ("RINGCACHE_SENDFILE", "never"),
            ("PATH", "/usr/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_yaml_env(DEFAULT_YAML, env).unwrap();
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:9999/");
        assert_eq!(c.root_dir, PathBuf::from("/srv/cache"));
        assert_eq!(c.http_addr, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(c.workers, 3);
        assert_eq!(c.size_max_bytes, Some(10 << 30));
        assert_eq!(c.limits.head_timeout, Duration::from_secs(5));
        assert!(!c.direct_writes);
        assert_eq!(c.sendfile, SendfileMode::Never);
        assert_eq!(Config::from_yaml("").unwrap().sendfile, SendfileMode::Auto);
        let bad = Config::from_yaml_env("", [("RINGCACHE_WROKERS".to_string(), "1".to_string())])
            .unwrap_err();
        assert_eq!(bad.key, "RINGCACHE_WROKERS");
        let bad =
            Config::from_yaml_env("", [("REGISTRY_PROXY_TTL".to_string(), "soon".to_string())])
                .unwrap_err();
        assert_eq!(bad.key, "proxy.ttl");
    }

    #[test]
    fn ringcache_section() {
        let c = Config::from_yaml(
            "ringcache:\n  workers: 3\n  tags: {fresh_for: 5s}\n  limits: {headers_max: 50, keepalive_idle: 1m}\n  storage: {direct_writes: false}\n",
        )
        .unwrap();
        assert!(!c.direct_writes);
        assert!(
            Config::from_yaml("").unwrap().direct_writes,
            "on by default"
        );
        assert_eq!(c.workers, 3);
        assert_eq!(c.tags_fresh_for, Duration::from_secs(5));
        assert_eq!(c.limits.headers_max, 50);
        assert_eq!(c.limits.keepalive_idle, Duration::from_secs(60));
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("168h", Some(168 * 3600 * 1000)),
            ("1h30m", Some(5400 * 1000)),
            ("90s", Some(90_000)),
            ("500ms", Some(500)),
            ("1.5s", Some(1500)),
            ("0", Some(0)),
            ("", None),
            ("10", None),
            ("h", None),
            ("5d", None),
            ("-1s", None),
        ];
        for (s, want) in cases {
            assert_eq!(
                parse_duration(s).map(|d| d.as_millis() as u64),
                *want,
                "{s}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(168 * 3600)), "168h");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        for (s, want) in [
            ("500GiB", Some(500u64 << 30)),
            ("10MiB", Some(10 << 20)),
            ("1GB", Some(1_000_000_000)),
            ("42", Some(42)),
            ("1 PB", None),
            ("x", None),
        ] {
            assert_eq!(parse_size(s), want, "{s}");
        }
        assert_eq!(format_size(500 << 30), "500GiB");
    }
}
