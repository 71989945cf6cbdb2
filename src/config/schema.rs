//! The keys ringcache knows: the reference registry's schema with what ringcache does with
//! each key ([`Rule`]: read, noted, refused), and its own keys under `ringcache:`; the strict
//! walk that refuses unknown keys with the nearest known one as a hint.

use serde_json::{Map, Value};

use super::{err, ConfigError};

/// What ringcache does with a key of the reference registry's schema (Distribution 2.8
/// `configuration.go`). The walk is strict: a key that is in neither the schema nor
/// `ringcache:` is an error (with the nearest known key as a hint), so a misspelled key never
/// falls back to a default unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
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

pub(super) const DRIVER: Rule = Rule::Refuse(
    "storage drivers other than filesystem are not implemented; ringcache stores under storage.filesystem.rootdirectory",
);
pub(super) const NO_PUSH: &str = "it applies to pushes, and a pull-through cache takes none";

/// The reference schema, key by key (a section's keys follow it). README's "Configuration"
/// section lists the refused and noted keys; keep the two in step.
pub(super) const SCHEMA: &[(&str, Rule)] = {
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
        ("http.tls", Section),
        ("http.tls.certificate", Read),
        ("http.tls.key", Read),
        ("http.tls.clientcas", Read),
        ("http.tls.minimumtls", Read),
        ("http.tls.ciphersuites", Read),
        ("http.tls.cipherSuites", Read),
        (
            "http.tls.letsencrypt",
            Refuse("ringcache does not obtain certificates (ACME); get one with an ACME client such as certbot and set http.tls.certificate and http.tls.key"),
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
        ("auth", Section),
        ("auth.htpasswd", Section),
        ("auth.htpasswd.realm", Read),
        ("auth.htpasswd.path", Read),
        ("auth.token", Section),
        ("auth.token.realm", Read),
        ("auth.token.service", Read),
        ("auth.token.issuer", Read),
        ("auth.token.rootcertbundle", Read),
        (
            "auth.silly",
            Refuse("silly auth lets any client in that sends any Authorization header; use auth.htpasswd or auth.token"),
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

pub(super) fn rule(path: &str) -> Option<Rule> {
    SCHEMA.iter().find(|(k, _)| *k == path).map(|(_, r)| *r)
}

/// The schema keys directly under `path` (`""`: the top level).
pub(super) fn children(path: &str) -> impl Iterator<Item = &'static str> + '_ {
    SCHEMA.iter().filter_map(move |(k, _)| match path {
        "" => (!k.contains('.')).then_some(*k),
        _ => k
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|rest| !rest.contains('.')),
    })
}

/// Whether `v` configures nothing (`auth:`, `auth: {}`).
pub(super) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Walk `map` (at `path`) against [`SCHEMA`]: notes for what is accepted and unused, an error
/// for an unknown or refused key. `ringcache:` is walked by [`ringcache_section`].
pub(super) fn check_keys(
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
            None if path == "auth" => {
                return Err(err(
                    &key,
                    "unknown auth type: ringcache supports htpasswd and token",
                ))
            }
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

pub(super) fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// "unknown key", with the known key it most likely meant: the same but for case, `_` or
/// `-` (`remote_url`, `remoteURL`), within a few edits (`remoteulr`), or cut short
/// (`rootdir`).
pub(super) fn unknown(key: &str, known: &[&str]) -> ConfigError {
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
pub(super) fn edit_distance(a: &[char], b: &[char]) -> usize {
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

/// ringcache's own keys, as paths under `ringcache.`: `RINGCACHE_*` variables are matched
/// against these (the keys themselves contain underscores, so the name cannot be split), and
/// an unknown key under `ringcache:` is told the nearest of them.
pub(super) const RINGCACHE_KEYS: &[&str] = &[
    "workers",
    "sendfile",
    "drain_timeout",
    "offline",
    "pin",
    "upstream.ca_file",
    "upstream.token_realms",
    "upstream.registry",
    "tags.fresh_for",
    "ratelimit.stretch_below",
    "ratelimit.stretch_to",
    "upstreams",
    "state.interval",
    "proxy_protocol",
    "proxy_protocol_from",
    "admin_from",
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
pub(super) const RINGCACHE_LISTS: &[&str] = &[
    "upstream.token_realms",
    "pin",
    "proxy_protocol_from",
    "admin_from",
];

/// The `ringcache.` keys directly under `section` (`""`: the section itself).
pub(super) fn ringcache_children(section: &str) -> Vec<&'static str> {
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
