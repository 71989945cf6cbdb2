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

/// What ringcache does with a key of the reference registry's schema (Distribution 2.8
/// `configuration.go`). The walk is strict: a key that is in neither the schema nor
/// `ringcache:` is an error (with the nearest known key as a hint), so a misspelled key never
/// falls back to a default unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Read by ringcache; its value is checked where it is read.
    Read,
    /// A mapping whose every key must be in the schema.
    Section,
    /// Accepted and reported at start, with why it changes nothing ringcache does.
    Note(&'static str),
    /// Refused at start: it changes security or where data goes, and ringcache does not
    /// implement it. An empty value (`auth:` or `auth: {}`) configures nothing and passes.
    Refuse(&'static str),
}

const DRIVER: Rule = Rule::Refuse(
    "storage drivers other than filesystem are not implemented; ringcache stores under storage.filesystem.rootdirectory",
);
const NO_PUSH: &str = "it applies to pushes, and a pull-through cache takes none";

/// The reference schema, key by key (a section's keys follow it). README's "Configuration"
/// section lists the refused and noted keys; keep the two in step.
const SCHEMA: &[(&str, Rule)] = {
    use Rule::*;
    &[
        ("version", Read),
        ("loglevel", Read),
        ("log", Section),
        ("log.level", Read),
        ("log.formatter", Read),
        ("log.accesslog", Section),
        ("log.accesslog.disabled", Read),
        ("log.fields", Note("static fields are not added to ringcache's log lines")),
        ("log.hooks", Note("log hooks (mail on error) are not run")),
        ("http", Section),
        ("http.addr", Read),
        ("http.net", Read),
        ("http.prefix", Read),
        ("http.draintimeout", Read),
        ("http.host", Note("ringcache's responses carry no absolute URLs")),
        ("http.relativeurls", Note("ringcache's responses carry no absolute URLs")),
        ("http.secret", Note("it signs upload state; ringcache takes no uploads")),
        ("http.headers", Note("extra response headers are not sent")),
        ("http.http2", Note("ringcache speaks HTTP/1.1 only")),
        ("http.debug", Section),
        ("http.debug.addr", Read),
        ("http.debug.prometheus", Note("/metrics is always served on http.debug.addr")),
        (
            "http.tls",
            Refuse("TLS to clients is not implemented; terminate TLS in front of ringcache (e.g. HAProxy) and remove http.tls"),
        ),
        ("storage", Section),
        ("storage.filesystem", Section),
        ("storage.filesystem.rootdirectory", Read),
        ("storage.filesystem.maxthreads", Note("ringcache bounds its own file I/O")),
        ("storage.delete", Note("a pull-through cache takes no deletes; expiry and the size cap remove content")),
        ("storage.redirect", Note("the filesystem driver never redirects clients")),
        ("storage.cache", Note("ringcache keeps its own index in memory")),
        ("storage.maintenance", Note("upload purging and read-only mode: ringcache takes no uploads or pushes")),
        ("storage.inmemory", DRIVER),
        ("storage.s3", DRIVER),
        ("storage.s3-aws", DRIVER),
        ("storage.azure", DRIVER),
        ("storage.gcs", DRIVER),
        ("storage.swift", DRIVER),
        ("storage.oss", DRIVER),
        ("proxy", Section),
        ("proxy.remoteurl", Read),
        ("proxy.username", Read),
        ("proxy.password", Read),
        ("proxy.ttl", Read),
        (
            "proxy.exec",
            Refuse("credential helpers are not run; set proxy.username and proxy.password"),
        ),
        (
            "auth",
            Refuse("client authentication is not implemented, so every client could pull (with the upstream credentials); authenticate in front of ringcache and remove auth"),
        ),
        (
            "middleware",
            Refuse("registry, repository and storage middleware (e.g. redirects to a CDN) is not implemented; clients would be served by ringcache instead"),
        ),
        ("notifications", Note("no webhook events are sent")),
        ("redis", Note("ringcache keeps its index in memory")),
        ("health", Note("ringcache's own checks answer on http.debug.addr /debug/health")),
        ("reporting", Note("no bugsnag/newrelic reports are sent")),
        ("validation", Note(NO_PUSH)),
        ("policy", Note(NO_PUSH)),
        ("compatibility", Note("ringcache serves manifests as upstream sends them")),
        (
            "catalog",
            Note("maxentries is not applied: a _catalog page holds n entries (default 1000)"),
        ),
    ]
};

fn rule(path: &str) -> Option<Rule> {
    SCHEMA.iter().find(|(k, _)| *k == path).map(|(_, r)| *r)
}

/// The schema keys directly under `path` (`""`: the top level).
fn children(path: &str) -> impl Iterator<Item = &'static str> + '_ {
    SCHEMA.iter().filter_map(move |(k, _)| match path {
        "" => (!k.contains('.')).then_some(*k),
        _ => k
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|rest| !rest.contains('.')),
    })
}

/// Whether `v` configures nothing (`auth:`, `auth: {}`).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Walk `map` (at `path`) against [`SCHEMA`]: notes for what is accepted and unused, an error
/// for an unknown or refused key. `ringcache:` is walked by [`ringcache_section`].
fn check_keys(
    path: &str,
    map: &Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (k, v) in map {
        if path.is_empty() && k == "ringcache" {
            continue;
        }
        let key = join(path, k);
        match rule(&key) {
            Some(Rule::Read) => {}
            Some(Rule::Section) => match v {
                Value::Object(m) => check_keys(&key, m, notes)?,
                Value::Null => {}
                _ => return Err(err(&key, "must be a mapping")),
            },
            Some(Rule::Note(why)) => notes.push(format!("{key} is ignored: {why}")),
            Some(Rule::Refuse(why)) if !is_empty(v) => {
                return Err(err(&key, format!("not supported: {why}")))
            }
            Some(Rule::Refuse(_)) => {}
            None => {
                let known: Vec<&str> = if path.is_empty() {
                    children("").chain(["ringcache"]).collect()
                } else {
                    children(path).collect()
                };
                return Err(unknown(&key, &known));
            }
        }
    }
    Ok(())
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// "unknown key", with the known key it most likely meant: the same but for case, `_` or
/// `-` (`remote_url`, `remoteURL`), within a few edits (`remoteulr`), or cut short
/// (`rootdir`).
fn unknown(key: &str, known: &[&str]) -> ConfigError {
    let last = key.rsplit('.').next().unwrap_or(key);
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wrote = norm(last);
    let close = |k: &str| {
        let k = norm(k);
        // A shortened key (`rootdir`) is as close as a typo.
        let prefix =
            wrote.len().min(k.len()) >= 4 && (k.starts_with(&wrote) || wrote.starts_with(&k));
        let d = edit_distance(&wrote, &k);
        (d <= (wrote.len() / 3).max(1) || prefix).then_some(d)
    };
    let best = known.iter().filter_map(|k| Some((close(k)?, *k))).min();
    match best {
        Some((_, k)) => err(key, format!("unknown key; did you mean `{k}`?")),
        None => err(key, "unknown key"),
    }
}

/// Edit distance with adjacent transpositions counted as one edit (optimal string alignment):
/// `levle` is one edit from `level`. Keys are short; an absurdly long one is cut first.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let (a, b) = (&a[..a.len().min(64)], &b[..b.len().min(64)]);
    // d[i][j]: distance between a[..i] and b[..j]. Indexing cannot fail: i <= a.len() and
    // j <= b.len() throughout, and the table is (a.len() + 1) x (b.len() + 1).
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
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
                url: Url::parse("https://registry-1.docker.io")
                    .ok_or_else(|| err("", "the default upstream URL does not parse"))?,
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

    /// The effective configuration as a tree, secrets masked (for `check-config`).
    pub fn effective(&self) -> Value {
        let l = &self.limits;
        serde_json::json!({
            "version": "0.1",
            "log": {"level": self.log_level, "formatter": if self.log_json { "json" } else { "text" }, "accesslog": {"disabled": !self.access_log}},
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
                    "size_max": self.size_max_bytes.map_or("none".to_string(), format_size),
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
    // Duplicates are found by `Node` (which knows the key's path), not by the YAML library
    // (which knows only its last component).
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
    };
    DUPLICATE.with(|d| d.borrow_mut().take());
    match serde_saphyr::from_str_with_options::<Tree>(text, options) {
        Ok(Tree(v)) => Ok(v),
        Err(e) => {
            // No line: the parser's position by then is not the duplicate's.
            if let Some(key) = DUPLICATE.with(|d| d.borrow_mut().take()) {
                return Err(err(&key, "duplicate key"));
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            Err(err("", format!("invalid YAML: {first}")))
        }
    }
}

thread_local! {
    /// The path of the duplicate key that stopped the parse on this thread (see `Node`).
    static DUPLICATE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A YAML document as a tree, with duplicate keys refused by their full path.
struct Tree(Value);

impl<'de> serde::Deserialize<'de> for Tree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        serde::de::DeserializeSeed::deserialize(Node(""), d).map(Tree)
    }
}

/// One node of the tree at a key path (`proxy.ttl`, `ringcache.upstream.token_realms[0]`).
struct Node<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_i128<E>(self, n: i128) -> Result<Value, E> {
        Ok(i64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::from))
    }

    fn visit_u128<E>(self, n: u128) -> Result<Value, E> {
        Ok(u64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::from))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_bytes<E>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::String(String::from_utf8_lossy(b).into_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.0, out.len());
            match seq.next_element_seed(Node(&path))? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = join(self.0, &k);
            if out.contains_key(&k) {
                DUPLICATE.with(|d| *d.borrow_mut() = Some(path.clone()));
                return Err(serde::de::Error::custom(format!("duplicate key `{path}`")));
            }
            let v = map.next_value_seed(Node(&path))?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// ringcache's own keys, as paths under `ringcache.`: `RINGCACHE_*` variables are matched
/// against these (the keys themselves contain underscores, so the name cannot be split), and
/// an unknown key under `ringcache:` is told the nearest of them.
const RINGCACHE_KEYS: &[&str] = &[
    "workers",
    "sendfile",
    "drain_timeout",
    "upstream.ca_file",
    "upstream.token_realms",
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

/// `ringcache` keys that take a list: from the environment, a comma-separated value.
const RINGCACHE_LISTS: &[&str] = &["upstream.token_realms"];

/// The `ringcache.` keys directly under `section` (`""`: the section itself).
fn ringcache_children(section: &str) -> Vec<&'static str> {
    let mut out: Vec<&str> = RINGCACHE_KEYS
        .iter()
        .filter_map(|k| match section {
            "" => k.split('.').next(),
            _ => k
                .strip_prefix(section)
                .and_then(|r| r.strip_prefix('.'))
                .filter(|r| !r.contains('.')),
        })
        .collect();
    out.dedup();
    out
}

/// Whether a variable of this name is a Kubernetes service link or a Docker link
/// (`RINGCACHE_PORT=tcp://...`, `RINGCACHE_SERVICE_HOST`), set by the platform for a service
/// named `ringcache`, not by the operator.
fn is_service_link(rest: &str) -> bool {
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_")
}

/// Apply one environment variable, as the reference registry does: `REGISTRY_PROXY_REMOTEURL`
/// sets `proxy.remoteurl` (names split on `_`, lowercased); `RINGCACHE_STORAGE_SIZE_MAX` sets
/// `ringcache.storage.size_max`. The value is read as YAML (so `5`, `true`, `[a]` keep their
/// types); a list key also takes `a,b`. Returns the path set, if any.
///
/// Other variables are ignored. A `REGISTRY_*` that names no key of the reference schema is
/// ignored with a note, as the reference does (a platform may set `REGISTRY_PORT` for a
/// service named `registry`); one that names a refused section is refused like the file's. An
/// unknown `RINGCACHE_*` is an error.
fn apply_env(
    tree: &mut Value,
    name: &str,
    value: &str,
    notes: &mut Vec<String>,
) -> Result<Option<String>, ConfigError> {
    let mut list = false;
    let path: Vec<String> = if let Some(rest) = name.strip_prefix("REGISTRY_") {
        let path: Vec<String> = rest.split('_').map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) || !env_path_known(&path) {
            notes.push(format!(
                "{name} is ignored: it names no key of the reference registry's configuration"
            ));
            return Ok(None);
        }
        path
    } else if let Some(rest) = name.strip_prefix("RINGCACHE_") {
        // Read by the failpoints of test builds, not settings.
        if rest == "FAILPOINTS" || rest == "WALL_OFFSET_SECS" || is_service_link(rest) {
            return Ok(None);
        }
        let want = rest.to_ascii_lowercase();
        match RINGCACHE_KEYS.iter().find(|k| k.replace('.', "_") == want) {
            Some(k) => {
                list = RINGCACHE_LISTS.contains(k);
                std::iter::once("ringcache".to_string())
                    .chain(k.split('.').map(String::from))
                    .collect()
            }
            None => return Err(err(name, "no such ringcache setting")),
        }
    } else {
        return Ok(None);
    };
    let parsed: Value =
        serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    let parsed = match parsed {
        Value::Null => Value::String(value.to_string()),
        Value::String(s) if list => Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        v => v,
    };
    let mut cur = tree;
    let Some((last, parents)) = path.split_last() else {
        return Ok(None);
    };
    for part in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else {
            unreachable!("made an object above")
        };
        cur = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Value::Object(map) = cur {
        map.insert(last.clone(), parsed);
    }
    Ok(Some(path.join(".")))
}

/// Whether a `REGISTRY_*` path names something in the schema: a key ringcache reads, or a
/// noted or refused section (anything below those).
fn env_path_known(path: &[String]) -> bool {
    let mut key = String::new();
    for (i, part) in path.iter().enumerate() {
        key = join(&key, part);
        let last = i + 1 == path.len();
        match rule(&key) {
            Some(Rule::Section) => {}
            Some(Rule::Read) => return last,
            Some(Rule::Note(_) | Rule::Refuse(_)) => return true,
            None => return false,
        }
    }
    true
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
                            // `none` (or 0, or no value) is no cap.
                            let n = match v2 {
                                Value::Null => Some(0),
                                Value::String(s) if s.trim().eq_ignore_ascii_case("none") => {
                                    Some(0)
                                }
                                Value::String(s) => parse_size(s),
                                Value::Number(n) => n.as_u64(),
                                _ => None,
                            }
                            .ok_or_else(|| {
                                err(&key, "must be a size (e.g. 500GiB, 10GB, 1000000) or none")
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
                        _ => return Err(unknown(&key, &ringcache_children("storage"))),
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
                        _ => return Err(unknown(&key, &ringcache_children("state"))),
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
                        _ => return Err(unknown(&key, &ringcache_children("upstream"))),
                    }
                }
            }
            "tags" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "fresh_for" => config.tags_fresh_for = duration(&key, v2)?,
                        _ => return Err(unknown(&key, &ringcache_children("tags"))),
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
                        _ => return Err(unknown(&key, &ringcache_children("limits"))),
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
            _ => return Err(unknown(&key, &ringcache_children(""))),
        }
    }
    Ok(())
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

/// Format a byte count the way an operator writes it: the largest binary or decimal unit it
/// is a whole number of (`500GiB`, `10GB`), else bytes.
pub fn format_size(n: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("TB", 1_000_000_000_000),
        ("GiB", 1 << 30),
        ("GB", 1_000_000_000),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("KiB", 1 << 10),
        ("KB", 1_000),
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

    /// The smallest valid file: an upstream, and `rest` (which must not have `proxy:`).
    const UP: &str = "proxy: {remoteurl: https://up.example}\n";

    fn with_up(rest: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!("{UP}{rest}"))
    }

    #[test]
    fn default_and_reference_example() {
        let c = Config::from_yaml(DEFAULT_YAML).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.upstream.url.origin.host, "registry-1.docker.io");
        assert_eq!(c.upstream.ttl, Some(Duration::from_secs(168 * 3600)));
        assert_eq!(c.root_dir, PathBuf::from(DEFAULT_ROOT));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
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
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn unused_reference_keys_are_noted_not_refused() {
        let c = with_up(
            "version: 0.1\nstorage: {filesystem: {rootdirectory: /x, maxthreads: 100}, delete: {enabled: true}, redirect: {disable: true}}\n\
             http: {addr: ':5000', headers: {X-Content-Type-Options: [nosniff]}, secret: s, net: tcp, prefix: /}\n\
             health: {storagedriver: {enabled: true}}\nnotifications: {endpoints: []}\nredis: {addr: 'x:6379'}\n\
             reporting: {}\nvalidation: {disabled: true}\nlog: {level: info, fields: {service: registry}, accesslog: {disabled: true}}\n\
             loglevel: debug\nauth:\n",
        )
        .unwrap();
        assert_eq!(c.http_addr, "0.0.0.0:5000".parse().unwrap());
        assert!(!c.access_log, "log.accesslog.disabled is read");
        assert_eq!(c.log_level, "info", "loglevel only when log.level is unset");
        for k in [
            "storage.filesystem.maxthreads is ignored",
            "storage.delete is ignored",
            "storage.redirect is ignored",
            "http.headers is ignored",
            "http.secret is ignored",
            "health is ignored",
            "notifications is ignored",
            "redis is ignored",
            "reporting is ignored",
            "validation is ignored",
            "log.fields is ignored",
        ] {
            assert!(
                c.notes.iter().any(|n| n.starts_with(k)),
                "{k} in {:?}",
                c.notes
            );
        }
        assert!(!c.notes.iter().any(|n| n.starts_with("auth")), "empty auth");
        assert_eq!(with_up("loglevel: debug").unwrap().log_level, "debug");
    }

    /// What changes security or where data goes is refused, naming the section.
    #[test]
    fn refused_sections_name_themselves() {
        for (yaml, key) in [
            ("http: {tls: {certificate: /c, key: /k}}", "http.tls"),
            ("auth: {htpasswd: {realm: r, path: /p}}", "auth"),
            ("auth: {token: {realm: r}}", "auth"),
            ("auth: {silly: {realm: r}}", "auth"),
            ("storage: {s3: {bucket: b}}", "storage.s3"),
            (
                "storage: {azure: {accountname: a}, filesystem: {rootdirectory: /x}}",
                "storage.azure",
            ),
            ("storage: {inmemory: {x: 1}}", "storage.inmemory"),
            ("storage: {gcs: {bucket: b}}", "storage.gcs"),
            ("middleware: {storage: [{name: cloudfront}]}", "middleware"),
        ] {
            let e = with_up(yaml).map(|_| ()).unwrap_err();
            if !key.is_empty() {
                assert_eq!(e.key, key, "{yaml}: {e}");
            }
            assert!(e.message.contains("not supported"), "{yaml}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e =
            Config::from_yaml("proxy: {remoteurl: http://x, exec: {command: helper}}").unwrap_err();
        assert_eq!(e.key, "proxy.exec");
    }

    /// A missing or misspelled upstream is never read as Docker Hub.
    #[test]
    fn remoteurl_is_required_and_typos_are_named() {
        for (yaml, key, hint) in [
            ("version: 0.1\n", "proxy.remoteurl", "required"),
            (
                "proxy: {username: u, password: p}",
                "proxy.remoteurl",
                "required",
            ),
            (
                "proxy: {remote_url: http://x}",
                "proxy.remote_url",
                "`remoteurl`",
            ),
            (
                "proxy: {remoteURL: http://x}",
                "proxy.remoteURL",
                "`remoteurl`",
            ),
            (
                "proxy: {remoteulr: http://x}",
                "proxy.remoteulr",
                "`remoteurl`",
            ),
            ("prxy: {remoteurl: http://x}", "prxy", "`proxy`"),
            (
                "proxy: {remoteurl: http://x}\nhttp: {adr: ':1'}",
                "http.adr",
                "`addr`",
            ),
            (
                "proxy: {remoteurl: http://x}\nstorage: {filesytem: {rootdirectory: /x}}",
                "storage.filesytem",
                "`filesystem`",
            ),
            (
                "proxy: {remoteurl: http://x}\nstorage: {filesystem: {root: /x}}",
                "storage.filesystem.root",
                "unknown key",
            ),
            (
                "proxy: {remoteurl: http://x}\nlog: {levle: info}",
                "log.levle",
                "`level`",
            ),
            (
                "proxy: {remoteurl: http://x}\nringcache: {wrokers: 2}",
                "ringcache.wrokers",
                "`workers`",
            ),
            (
                "proxy: {remoteurl: http://x}\nringcache: {storage: {sizemax: 1GB}}",
                "ringcache.storage.sizemax",
                "`size_max`",
            ),
            (
                "proxy: {remoteurl: http://x}\nringcache: {upstream: {token_realm: []}}",
                "ringcache.upstream.token_realm",
                "`token_realms`",
            ),
            ("proxy: {remoteurl: http://x}\nzzz: 1", "zzz", "unknown key"),
            (
                "proxy: {remoteurl: http://x}\nhttp: {net: unix}",
                "http.net",
                "unix",
            ),
            (
                "proxy: {remoteurl: http://x}\nhttp: {prefix: /r/}",
                "http.prefix",
                "prefix",
            ),
        ] {
            let e = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(e.message.contains(hint), "{yaml}: {e}");
        }
        assert!(
            !Config::from_yaml("proxy: {remoteurl: http://x}\nzzz: 1")
                .unwrap_err()
                .message
                .contains("did you mean"),
            "no far-fetched hint"
        );
    }

    #[test]
    fn duplicate_keys_name_their_path() {
        for (yaml, key) in [
            ("proxy:\n  remoteurl: http://x\n  ttl: 1h\n  ttl: 2h\n", "proxy.ttl"),
            ("proxy: {remoteurl: http://x}\nproxy: {ttl: 1h}\n", "proxy"),
            (
                "proxy: {remoteurl: http://x}\nringcache:\n  storage: {size_max: 1GB, size_max: 2GB}\n",
                "ringcache.storage.size_max",
            ),
        ] {
            let e = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert_eq!(e.message, "duplicate key", "no library internals: {e}");
        }
        // Anchors and merges are not duplicates.
        let c = Config::from_yaml(
            "base: &b {remoteurl: http://x, ttl: 1h}\nproxy:\n  <<: *b\n  ttl: 2h\n",
        );
        assert!(c.is_err_and(|e| e.key == "base"), "base is an unknown key");
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            ("proxy: {remoteurl: ftp://x}", "proxy.remoteurl"),
            ("proxy: {remoteurl: http://x, ttl: soon}", "proxy.ttl"),
            (
                "proxy: {remoteurl: http://x, username: u}",
                "proxy.password",
            ),
            ("http: {addr: 'nope'}", "http.addr"),
            ("log: {level: loud}", "log.level"),
            ("version: 0.2", "version"),
            ("http: [1, 2]", "http"),
            ("ringcache: {workers: 0}", "ringcache.workers"),
            (
                "ringcache: {limits: {head_bytes_max: 10}}",
                "ringcache.limits.head_bytes_max",
            ),
            (
                "ringcache: {limits: {head_timeout: 0s}}",
                "ringcache.limits.head_timeout",
            ),
            (
                "ringcache: {storage: {direct_writes: sometimes}}",
                "ringcache.storage.direct_writes",
            ),
            ("ringcache: {sendfile: yes}", "ringcache.sendfile"),
            (
                "ringcache: {storage: {size_max: lots}}",
                "ringcache.storage.size_max",
            ),
        ];
        for (yaml, key) in cases {
            let yaml = if yaml.starts_with("proxy") {
                yaml.to_string()
            } else {
                format!("{UP}{yaml}")
            };
            let e = Config::from_yaml(&yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = Config::from_yaml("a: [").unwrap_err();
        assert!(e.message.starts_with("invalid YAML: line 1"), "{e}");
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
            (
                "RINGCACHE_UPSTREAM_TOKEN_REALMS",
                "https://auth.example/token, https://b.example/t",
            ),
            ("PATH", "/usr/bin"),
            // Set by a platform for services named `registry` / `ringcache`: not settings.
            ("REGISTRY_PORT", "tcp://10.0.0.1:5000"),
            ("REGISTRY_SERVICE_HOST", "10.0.0.1"),
            ("RINGCACHE_PORT_5000_TCP", "tcp://10.0.0.2:5000"),
            ("RINGCACHE_SERVICE_HOST", "10.0.0.2"),
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
        let realms: Vec<String> = c
            .upstream
            .token_realms
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            realms,
            ["https://auth.example/token", "https://b.example/t"],
            "a list from the environment, comma-separated"
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.starts_with("REGISTRY_PORT is ignored")),
            "{:?}",
            c.notes
        );
        assert_eq!(with_up("").unwrap().sendfile, SendfileMode::Auto);
        let env = |k: &str, v: &str| [(k.to_string(), v.to_string())];
        let bad = Config::from_yaml_env(UP, env("RINGCACHE_WROKERS", "1")).unwrap_err();
        assert_eq!(bad.key, "RINGCACHE_WROKERS");
        let bad = Config::from_yaml_env(UP, env("REGISTRY_PROXY_TTL", "soon")).unwrap_err();
        assert_eq!(bad.key, "proxy.ttl");
        assert!(bad.message.contains("(set by REGISTRY_PROXY_TTL)"), "{bad}");
        // A refused section is refused from the environment too.
        let bad = Config::from_yaml_env(UP, env("REGISTRY_AUTH_HTPASSWD_PATH", "/p")).unwrap_err();
        assert_eq!(bad.key, "auth");
        assert!(bad.message.contains("REGISTRY_AUTH_HTPASSWD_PATH"), "{bad}");
        // The upstream may come from the environment alone.
        let c =
            Config::from_yaml_env("", env("REGISTRY_PROXY_REMOTEURL", "http://e.example")).unwrap();
        assert_eq!(c.upstream.url.origin.host, "e.example");
        // A misspelled variable is noted, and the upstream is still required.
        let bad =
            Config::from_yaml_env("", env("REGISTRY_PROXY_REMOTE_URL", "http://e")).unwrap_err();
        assert_eq!(bad.key, "proxy.remoteurl");
    }

    #[test]
    fn ringcache_section() {
        let c = with_up(
            "ringcache:\n  workers: 3\n  tags: {fresh_for: 5s}\n  limits: {headers_max: 50, keepalive_idle: 1m}\n  storage: {direct_writes: false}\n",
        )
        .unwrap();
        assert!(!c.direct_writes);
        assert!(with_up("").unwrap().direct_writes, "on by default");
        assert_eq!(c.workers, 3);
        assert_eq!(c.tags_fresh_for, Duration::from_secs(5));
        assert_eq!(c.limits.headers_max, 50);
        assert_eq!(c.limits.keepalive_idle, Duration::from_secs(60));
        // Every key `RINGCACHE_*` can name is one the section reads.
        for key in RINGCACHE_KEYS {
            let env = [(format!("RINGCACHE_{}", key.replace('.', "_")), "x".into())];
            if let Err(e) = Config::from_yaml_env(UP, env) {
                assert!(!e.message.contains("unknown key"), "{key}: {e}");
            }
        }
    }

    #[test]
    fn sizes_show_as_written() {
        for (yaml, want) in [
            ("none", "none"),
            ("0", "none"),
            ("~", "none"),
            ("10GB", "10GB"),
            ("500GiB", "500GiB"),
            ("1000000", "1MB"),
            ("1234567", "1234567"),
            ("2TB", "2TB"),
        ] {
            let c = with_up(&format!("ringcache: {{storage: {{size_max: {yaml}}}}}")).unwrap();
            let shown = &c.effective()["ringcache"]["storage"]["size_max"];
            assert_eq!(shown, want, "{yaml}");
        }
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
        assert_eq!(format_size(10_000_000_000), "10GB");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        /// Keys the walk knows (and near misses), so that generated trees reach the value
        /// checks and not only the unknown-key error.
        fn key() -> impl Strategy<Value = String> {
            let mut known: Vec<String> = SCHEMA
                .iter()
                .flat_map(|(k, _)| k.split('.'))
                .chain(RINGCACHE_KEYS.iter().flat_map(|k| k.split('.')))
                .chain(["ringcache", "Proxy", "remote_url", ""])
                .map(String::from)
                .collect();
            known.sort();
            known.dedup();
            prop_oneof![
                4 => proptest::sample::select(known),
                1 => "[a-zA-Z_.-]{0,12}",
            ]
        }

        /// Scalars a config holds, odd ones included. No `host:port` with a name in it:
        /// `http.addr` would resolve it.
        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<u64>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                proptest::sample::select(vec![
                    "0",
                    "1h",
                    "168h",
                    "0s",
                    "90s",
                    "none",
                    "10GB",
                    "500GiB",
                    "x",
                    "",
                    "0.1",
                    "http://127.0.0.1:1",
                    "https://up.example",
                    "ftp://x",
                    ":5000",
                    "127.0.0.1:0",
                    "[::1]:0",
                    "tcp",
                    "unix",
                    "/",
                    "/r",
                    "auto",
                    "json",
                    "true",
                    "a,b",
                    "1e999",
                    "-1",
                    "18446744073709551616",
                ])
                .prop_map(|s| Value::String(s.into())),
                "[ -~]{0,20}"
                    .prop_filter("no host:port", |s| !s.contains(':'))
                    .prop_map(Value::String),
            ]
        }

        fn tree() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(key(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// YAML-ish text: lines of indented `key: value`, flow collections, anchors, tags,
        /// and stray punctuation.
        fn text() -> impl Strategy<Value = String> {
            let line = (
                0usize..6,
                key(),
                prop_oneof![
                    Just(String::new()),
                    "[ -~]{0,16}".prop_map(|s| s.replace(':', " ")),
                    Just("{a: 1, b: [x, y]}".to_string()),
                    Just("&a 1".to_string()),
                    Just("*a".to_string()),
                    Just("!!binary aGk=".to_string()),
                    Just("<<: *a".to_string()),
                    Just("- x".to_string()),
                    Just("[".to_string()),
                    Just("|\n  text".to_string()),
                ],
            )
                .prop_map(|(indent, k, v)| format!("{}{k}: {v}", " ".repeat(indent)));
            prop_oneof![
                proptest::collection::vec(line, 0..12).prop_map(|l| l.join("\n")),
                "[ -~\n\t]{0,200}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Any tree: a config or a one-line error, never a panic.
            #[test]
            fn prop_any_tree_is_a_config_or_an_error(t in tree()) {
                if let Err(e) = Config::from_tree(t) {
                    prop_assert!(!e.to_string().contains('\n'), "{}", e);
                }
            }

            /// Any text, with any settings from the environment: a config or a one-line
            /// error, never a panic.
            #[test]
            fn prop_any_text_is_a_config_or_an_error(
                t in text(),
                env in proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("REGISTRY_PROXY_REMOTEURL".to_string()),
                            Just("RINGCACHE_UPSTREAM_TOKEN_REALMS".to_string()),
                            Just("RINGCACHE_STORAGE_SIZE_MAX".to_string()),
                            "(REGISTRY|RINGCACHE)_[A-Z_]{0,20}",
                        ],
                        "[ -~]{0,20}".prop_filter("no host:port", |s| !s.contains(':')),
                    ),
                    0..3,
                ),
            ) {
                let with_up = format!("proxy: {{remoteurl: http://127.0.0.1:1}}\n{t}");
                for text in [t.as_str(), with_up.as_str()] {
                    if let Err(e) = Config::from_yaml_env(text, env.clone()) {
                        prop_assert!(!e.to_string().contains('\n'), "{}", e);
                    }
                }
            }
        }
    }
}
