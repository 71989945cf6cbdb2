//! The YAML walk: the document read into a generic tree (duplicate keys refused by their full
//! path), and the `ringcache:` section's values read key by key, each error naming its key.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::http::url::Url;

use super::schema::{join, ringcache_children, unknown};
use super::units::{parse_duration, parse_size};
use super::{err, Config, ConfigError, SendfileMode};

pub(super) fn parse_tree(text: &str) -> Result<Value, ConfigError> {
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
pub(super) struct Tree(Value);

impl<'de> serde::Deserialize<'de> for Tree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        serde::de::DeserializeSeed::deserialize(Node(""), d).map(Tree)
    }
}

/// One node of the tree at a key path (`proxy.ttl`, `ringcache.upstream.token_realms[0]`).
pub(super) struct Node<'a>(&'a str);

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

pub(super) fn ringcache_section(rc: &Value, config: &mut Config) -> Result<(), ConfigError> {
    let Value::Object(rc) = rc else {
        return Err(err("ringcache", "must be a mapping"));
    };
    for (k, v) in rc {
        let key = format!("ringcache.{k}");
        match k.as_str() {
            // After the rest: an entry takes `ringcache.tags.fresh_for` unless it sets its own.
            "upstreams" => {}
            "drain_timeout" => config.drain_timeout = duration(&key, v)?,
            "offline" => config.offline = boolean(&key, v)?,
            // Registries are checked after `upstreams` is read (below).
            "pin" => config.pins = pins(&key, v)?,
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
                            config.size_max_written = (n > 0).then(|| match v2 {
                                Value::String(s) => s.trim().to_string(),
                                _ => n.to_string(),
                            });
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
            "proxy_protocol" => config.proxy_protocol = boolean(&key, v)?,
            "proxy_protocol_from" | "admin_from" => {
                let Value::Array(items) = v else {
                    return Err(err(&key, "must be a list of addresses or CIDR networks"));
                };
                let mut list = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    list.push(string(&format!("{key}[{i}]"), item)?);
                }
                let allow =
                    crate::http::proxyproto::Allow::parse(&list).map_err(|m| err(&key, m))?;
                if k == "admin_from" {
                    config.admin_from = allow;
                } else {
                    config.proxy_protocol_from = allow;
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
                        "token_realms" => config.upstream.token_realms = realms(&key, v2)?,
                        "registry" => {
                            let r = string(&key, v2)?;
                            if !crate::registry::is_registry_name(r) {
                                return Err(err(
                                    &key,
                                    "not a registry name: host or host:port, as clients write it (e.g. docker.io)",
                                ));
                            }
                            config.upstream.registry = r.to_ascii_lowercase();
                        }
                        _ => return Err(unknown(&key, &ringcache_children("upstream"))),
                    }
                }
            }
            "tags" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "fresh_for" => config.upstream.tags_fresh_for = duration(&key, v2)?,
                        _ => return Err(unknown(&key, &ringcache_children("tags"))),
                    }
                }
            }
            "ratelimit" => {
                for (k2, v2) in mapping(&key, v)? {
                    let key = format!("{key}.{k2}");
                    match k2.as_str() {
                        "stretch_below" => config.ratelimit.stretch_below_ppm = share(&key, v2)?,
                        "stretch_to" => config.ratelimit.stretch_to = duration(&key, v2)?,
                        _ => return Err(unknown(&key, &ringcache_children("ratelimit"))),
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
    if let Some(v) = rc.get("upstreams") {
        upstreams_section(v, config)?;
    }
    let regs = config.registries();
    for (i, p) in config.pins.iter().enumerate() {
        p.locate(&regs)
            .map_err(|e| err(&format!("ringcache.pin[{i}]"), format!("{p}: {e}")))?;
    }
    // Believing PROXY headers from anyone would let any client name its own address.
    match (config.proxy_protocol, config.proxy_protocol_from.is_empty()) {
        (true, true) => Err(err(
            "ringcache.proxy_protocol_from",
            "required with proxy_protocol: true (the load balancers' addresses or networks)",
        )),
        (false, false) => Err(err(
            "ringcache.proxy_protocol_from",
            "has no effect without ringcache.proxy_protocol: true",
        )),
        _ => Ok(()),
    }
}

/// `ringcache.pin`: a list of image references (`ghcr.io/team/app:1`, `alpine:3`).
fn pins(key: &str, v: &Value) -> Result<Vec<crate::reference::ImageRef>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(err(key, "must be a list of image references")),
    };
    if items.len() > crate::limits::PINS_MAX {
        return Err(err(
            key,
            format!("at most {} pinned images", crate::limits::PINS_MAX),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let s = string(&key, item)?;
        let r = crate::reference::ImageRef::parse(s).map_err(|e| err(&key, e))?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The keys an entry of `ringcache.upstreams` takes.
pub(super) const UPSTREAM_ENTRY_KEYS: &[&str] = &[
    "remoteurl",
    "username",
    "password",
    "ttl",
    "ca_file",
    "token_realms",
    "tags",
];

/// `ringcache.upstreams`: registry name → what that upstream needs.
fn upstreams_section(v: &Value, config: &mut Config) -> Result<(), ConfigError> {
    let table = match v {
        Value::Null => return Ok(()),
        v => mapping("ringcache.upstreams", v)?,
    };
    if table.len() + 1 > crate::limits::UPSTREAMS_MAX {
        return Err(err(
            "ringcache.upstreams",
            format!(
                "at most {} upstreams besides the default",
                crate::limits::UPSTREAMS_MAX - 1
            ),
        ));
    }
    for (name, entry) in table {
        let key = format!("ringcache.upstreams.{name}");
        if !crate::registry::is_registry_name(name) {
            return Err(err(
                &key,
                "not a registry name: write it as clients do, host or host:port (e.g. ghcr.io, harbor.corp:5000)",
            ));
        }
        let registry = name.to_ascii_lowercase();
        let default = config.registries();
        if default.find(&registry) == Some(0) {
            return Err(err(
                &key,
                format!(
                    "{registry} is the default upstream's name (proxy.remoteurl); configure it there"
                ),
            ));
        }
        if config.upstreams.iter().any(|u| u.registry == registry) {
            return Err(err(
                &key,
                "listed twice (registry names are case-insensitive)",
            ));
        }
        let mut u = super::UpstreamConfig {
            registry,
            url: config.upstream.url.clone(),
            username: None,
            password: None,
            ttl: config.upstream.ttl,
            ca_file: None,
            token_realms: Vec::new(),
            tags_fresh_for: config.upstream.tags_fresh_for,
        };
        let mut url = None;
        let Value::Object(entry) = entry else {
            return Err(err(&key, "must be a mapping with at least remoteurl"));
        };
        for (k, v) in entry {
            let key = format!("{key}.{k}");
            match k.as_str() {
                "remoteurl" => {
                    let s = string(&key, v)?;
                    url = Some(
                        Url::parse(s.trim_end_matches('/'))
                            .ok_or_else(|| err(&key, format!("{s:?} is not an http(s) URL")))?,
                    );
                }
                "username" => {
                    u.username = Some(string(&key, v)?.to_string()).filter(|s| !s.is_empty())
                }
                "password" => {
                    u.password = Some(string(&key, v)?.to_string()).filter(|s| !s.is_empty())
                }
                "ttl" => {
                    let d = duration(&key, v)?;
                    u.ttl = (!d.is_zero()).then_some(d);
                }
                "ca_file" => u.ca_file = Some(PathBuf::from(string(&key, v)?)),
                "token_realms" => u.token_realms = realms(&key, v)?,
                "tags" => {
                    for (k2, v2) in mapping(&key, v)? {
                        let key = format!("{key}.{k2}");
                        match k2.as_str() {
                            "fresh_for" => u.tags_fresh_for = duration(&key, v2)?,
                            _ => return Err(unknown(&key, &["fresh_for"])),
                        }
                    }
                }
                _ => return Err(unknown(&key, UPSTREAM_ENTRY_KEYS)),
            }
        }
        u.url = url.ok_or_else(|| {
            err(
                &format!("{key}.remoteurl"),
                "required: the registry's URL (e.g. https://ghcr.io)",
            )
        })?;
        if u.username.is_some() != u.password.is_some() {
            return Err(err(
                &format!("{key}.password"),
                "username and password go together",
            ));
        }
        config.upstreams.push(u);
    }
    // Upstream order (their indexes) by name, whatever the file's order or case.
    config.upstreams.sort_by(|a, b| a.registry.cmp(&b.registry));
    Ok(())
}

/// A list of token realm URLs.
fn realms(key: &str, v: &Value) -> Result<Vec<Url>, ConfigError> {
    let Value::Array(items) = v else {
        return Err(err(key, "must be a list of URLs"));
    };
    let mut realms = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let s = string(&key, item)?;
        realms.push(Url::parse(s).ok_or_else(|| err(&key, format!("invalid URL {s:?}")))?);
    }
    Ok(realms)
}

pub(super) fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = root.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

pub(super) fn string<'a>(key: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
    v.as_str().ok_or_else(|| err(key, "must be a string"))
}

pub(super) fn uint(key: &str, v: &Value) -> Result<u64, ConfigError> {
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

pub(super) fn boolean(key: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(err(key, "must be true or false")),
    }
}

pub(super) fn mapping<'a>(key: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| err(key, "must be a mapping"))
}

/// A share between 0 and 1, written as a fraction (`0.1`) or a percentage (`10%`), in
/// millionths.
pub(super) fn share(key: &str, v: &Value) -> Result<u64, ConfigError> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().ok().map(|p| p / 100.0),
            None => s.trim().parse::<f64>().ok(),
        },
        _ => None,
    };
    match f {
        Some(f) if (0.0..=1.0).contains(&f) => Ok((f * 1e6).round() as u64),
        _ => Err(err(
            key,
            "must be a share between 0 and 1 (e.g. 0.1 or 10%); 0 never stretches",
        )),
    }
}

pub(super) fn duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
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
