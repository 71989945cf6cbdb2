//! Metrics: per-worker counters (each worker writes only its own, cache-line aligned, so the hit
//! path touches no shared atomic) summed at scrape time into Prometheus text. Names follow the
//! reference registry (`registry_http_*`, `registry_proxy_*`) so existing dashboards work;
//! `ringcache_*` series cover what only ringcache has.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Status codes counted one by one; anything else is counted as "other".
pub const STATUSES: [u16; 16] = [
    200, 206, 304, 400, 401, 403, 404, 405, 414, 416, 429, 431, 500, 502, 503, 0,
];
pub const METHODS: [&str; 3] = ["GET", "HEAD", "other"];
/// Request duration histogram buckets, seconds.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a request was, for the proxy counters and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cache {
    /// Not a blob or manifest (base, listings, errors before lookup).
    #[default]
    None,
    /// Served from the store.
    Hit,
    /// Started the fill.
    Miss,
    /// Followed a fill another request started.
    Coalesced,
    /// Served from upstream without the store (disk fault), or a HEAD answered by upstream.
    Bypass,
}

impl Cache {
    pub fn as_str(self) -> &'static str {
        match self {
            Cache::None => "-",
            Cache::Hit => "hit",
            Cache::Miss => "miss",
            Cache::Coalesced => "coalesced",
            Cache::Bypass => "bypass",
        }
    }
}

/// Blob or manifest, for `registry_proxy_*{type=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Blob = 0,
    Manifest = 1,
}

/// One worker's counters.
#[repr(align(128))]
pub struct Counters {
    requests: [[AtomicU64; STATUSES.len()]; METHODS.len()],
    duration_buckets: [[AtomicU64; BUCKETS.len()]; METHODS.len()],
    duration_count: [AtomicU64; METHODS.len()],
    duration_sum_us: [AtomicU64; METHODS.len()],
    /// The proxy and fill counters, per upstream (label `upstream`), indexed by upstream.
    per: [Upstream; crate::limits::UPSTREAMS_MAX],
    /// Body bytes sent by sendfile straight from the page cache (the rest went through a buffer).
    sendfile_bytes: AtomicU64,
    /// Body bytes followers copied from their fill's recent blocks in memory.
    memory_bytes: AtomicU64,
    pub connections_open: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            requests: Default::default(),
            duration_buckets: Default::default(),
            duration_count: Default::default(),
            duration_sum_us: Default::default(),
            per: std::array::from_fn(|_| Upstream::default()),
            sendfile_bytes: Default::default(),
            memory_bytes: Default::default(),
            connections_open: Default::default(),
        }
    }
}

/// One worker's counters of one upstream.
#[derive(Default)]
pub struct Upstream {
    proxy_requests: [AtomicU64; 2],
    proxy_hits: [AtomicU64; 2],
    proxy_misses: [AtomicU64; 2],
    /// Bytes read from upstream.
    pub pulled_bytes: [AtomicU64; 2],
    /// Bytes sent to clients for blobs and manifests.
    pushed_bytes: [AtomicU64; 2],
    coalesced: AtomicU64,
    /// Bytes sent to followers that joined a fill someone else started: upstream bytes saved.
    bytes_avoided: AtomicU64,
    pub fills_started: AtomicU64,
    pub resumes: AtomicU64,
    pub bypassed: AtomicU64,
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Counters {
    /// Upstream `u`'s counters (the last slot for an index out of range: never, the config
    /// bounds the upstreams to the slots).
    pub fn of(&self, u: usize) -> &Upstream {
        &self.per[u.min(self.per.len() - 1)]
    }

    /// Count one finished request (for upstream `upstream`).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        method: &str,
        status: u16,
        secs: f64,
        cache: Cache,
        ty: Option<Type>,
        body_bytes: u64,
        upstream: usize,
    ) {
        let m = METHODS.iter().position(|&x| x == method).unwrap_or(2);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len() - 1);
        add(&self.requests[m][s], 1);
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                add(&self.duration_buckets[m][i], 1);
            }
        }
        add(&self.duration_count[m], 1);
        add(&self.duration_sum_us[m], (secs * 1e6) as u64);
        if let Some(t) = ty {
            let t = t as usize;
            let up = self.of(upstream);
            // Content bytes only: error bodies are not pushed content.
            let body_bytes = if (200..300).contains(&status) {
                body_bytes
            } else {
                0
            };
            add(&up.proxy_requests[t], 1);
            match cache {
                Cache::Hit => add(&up.proxy_hits[t], 1),
                Cache::Miss | Cache::Bypass => add(&up.proxy_misses[t], 1),
                Cache::Coalesced => {
                    add(&up.proxy_misses[t], 1);
                    add(&up.coalesced, 1);
                    add(&up.bytes_avoided, body_bytes);
                }
                Cache::None => {}
            }
            add(&up.pushed_bytes[t], body_bytes);
        }
    }

    pub fn sent_by_sendfile(&self, bytes: u64) {
        if bytes > 0 {
            add(&self.sendfile_bytes, bytes);
        }
    }

    pub fn sent_from_memory(&self, bytes: u64) {
        if bytes > 0 {
            add(&self.memory_bytes, bytes);
        }
    }
}

/// Process-wide values read at scrape time (not counters of the hot path).
pub struct Gauges {
    pub fills_inflight: u64,
    pub store_bytes: u64,
    /// `ringcache.storage.size_max`; the series is absent without a cap.
    pub store_bytes_max: Option<u64>,
    pub store_entries: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub fills_failed: Vec<(&'static str, u64)>,
    pub incidents: Vec<(&'static str, u64)>,
    pub driver: &'static str,
    pub workers: usize,
    /// Each upstream's registry name (the `upstream` label), by upstream.
    pub upstreams: Vec<String>,
}

/// Render Prometheus text (exposition format 0.0.4) from every worker's counters.
pub fn render(workers: &[Counters], g: &Gauges) -> String {
    let sum = |f: &dyn Fn(&Counters) -> u64| workers.iter().map(f).sum::<u64>();
    let mut o = String::with_capacity(8192);
    let _ = writeln!(o, "# HELP registry_http_requests_total Total number of HTTP requests.\n# TYPE registry_http_requests_total counter");
    for (m, method) in METHODS.iter().enumerate() {
        for (s, status) in STATUSES.iter().enumerate() {
            let n = sum(&|c| get(&c.requests[m][s]));
            if n > 0 {
                let code = if *status == 0 {
                    "other".to_string()
                } else {
                    status.to_string()
                };
                let _ = writeln!(
                    o,
                    "registry_http_requests_total{{code=\"{code}\",method=\"{method}\"}} {n}"
                );
            }
        }
    }
    let _ = writeln!(o, "# HELP registry_http_request_duration_seconds Time taken to answer HTTP requests.\n# TYPE registry_http_request_duration_seconds histogram");
    for (m, method) in METHODS.iter().enumerate() {
        let count = sum(&|c| get(&c.duration_count[m]));
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = sum(&|c| get(&c.duration_buckets[m][i]));
            let _ = writeln!(o, "registry_http_request_duration_seconds_bucket{{method=\"{method}\",le=\"{b}\"}} {n}");
        }
        let _ = writeln!(o, "registry_http_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {count}");
        let secs = sum(&|c| get(&c.duration_sum_us[m])) as f64 / 1e6;
        let _ = writeln!(
            o,
            "registry_http_request_duration_seconds_sum{{method=\"{method}\"}} {secs}"
        );
        let _ = writeln!(
            o,
            "registry_http_request_duration_seconds_count{{method=\"{method}\"}} {count}"
        );
    }
    let proxy: [(&str, &str, &dyn Fn(&Upstream, usize) -> u64); 5] = [
        (
            "registry_proxy_requests_total",
            "Requests for blobs and manifests.",
            &|c, t| get(&c.proxy_requests[t]),
        ),
        (
            "registry_proxy_hits_total",
            "Requests served from the cache.",
            &|c, t| get(&c.proxy_hits[t]),
        ),
        (
            "registry_proxy_misses_total",
            "Requests that needed upstream.",
            &|c, t| get(&c.proxy_misses[t]),
        ),
        (
            "registry_proxy_pulled_bytes_total",
            "Bytes pulled from upstream.",
            &|c, t| get(&c.pulled_bytes[t]),
        ),
        (
            "registry_proxy_pushed_bytes_total",
            "Bytes sent to clients.",
            &|c, t| get(&c.pushed_bytes[t]),
        ),
    ];
    // Every configured upstream's series, zeros included (a dashboard's `rate` needs the
    // series before its first increment).
    let names: Vec<&str> = match g.upstreams.is_empty() {
        true => vec![""],
        false => g.upstreams.iter().map(String::as_str).collect(),
    };
    for (name, help, f) in proxy {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (u, up) in names.iter().enumerate() {
            for (t, ty) in ["blob", "manifest"].iter().enumerate() {
                let n = sum(&|c| f(c.of(u), t));
                let _ = writeln!(o, "{name}{{type=\"{ty}\",upstream=\"{up}\"}} {n}");
            }
        }
    }
    let per: [(&str, &str, &dyn Fn(&Upstream) -> u64); 5] = [
        (
            "ringcache_fills_started_total",
            "Fills started (one upstream fetch each).",
            &|c| get(&c.fills_started),
        ),
        (
            "ringcache_fill_followers_coalesced_total",
            "Requests that followed a fill another request started.",
            &|c| get(&c.coalesced),
        ),
        (
            "ringcache_upstream_bytes_avoided_total",
            "Bytes sent to coalesced followers: upstream traffic saved.",
            &|c| get(&c.bytes_avoided),
        ),
        (
            "ringcache_fill_resumes_total",
            "Fills resumed with Range after upstream broke mid-body.",
            &|c| get(&c.resumes),
        ),
        (
            "ringcache_fills_bypassed_total",
            "Fills that bypassed a failing store.",
            &|c| get(&c.bypassed),
        ),
    ];
    for (name, help, f) in per {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (u, up) in names.iter().enumerate() {
            let n = sum(&|c| f(c.of(u)));
            let _ = writeln!(o, "{name}{{upstream=\"{up}\"}} {n}");
        }
    }
    let mut line = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    line(
        "ringcache_fills_inflight",
        "gauge",
        "Fills in flight.",
        g.fills_inflight,
    );
    line(
        "ringcache_sendfile_bytes_total",
        "counter",
        "Body bytes sent by sendfile straight from the page cache (the rest were read into a buffer first: not cached, or small).",
        sum(&|c| get(&c.sendfile_bytes)),
    );
    line(
        "ringcache_fill_memory_bytes_total",
        "counter",
        "Body bytes followers of a fill copied from its most recent blocks in memory (the rest came from the file).",
        sum(&|c| get(&c.memory_bytes)),
    );
    line(
        "ringcache_evictions_total",
        "counter",
        "Entries evicted by the size cap.",
        g.evictions,
    );
    line(
        "ringcache_expirations_total",
        "counter",
        "Entries expired by their TTL.",
        g.expirations,
    );
    line(
        "ringcache_store_bytes",
        "gauge",
        "Bytes of committed content.",
        g.store_bytes,
    );
    if let Some(max) = g.store_bytes_max {
        line(
            "ringcache_store_bytes_max",
            "gauge",
            "The size cap (ringcache.storage.size_max); eviction starts at its high-water mark.",
            max,
        );
    }
    line(
        "ringcache_store_entries",
        "gauge",
        "Committed entries.",
        g.store_entries,
    );
    line(
        "ringcache_connections_open",
        "gauge",
        "Open client connections.",
        sum(&|c| get(&c.connections_open)),
    );
    line(
        "ringcache_workers",
        "gauge",
        "Worker threads.",
        g.workers as u64,
    );
    let _ = writeln!(o, "# HELP ringcache_auth_failures_total Requests refused by client authentication, by reason.\n# TYPE ringcache_auth_failures_total counter");
    for (reason, n) in AUTH_FAILURE_REASONS.iter().zip(&AUTH_FAILURES) {
        let _ = writeln!(
            o,
            "ringcache_auth_failures_total{{reason=\"{reason}\"}} {}",
            get(n)
        );
    }
    let _ = writeln!(o, "# HELP ringcache_tls_handshake_failures_total TLS handshakes with clients that failed, by reason.\n# TYPE ringcache_tls_handshake_failures_total counter");
    for (reason, n) in TLS_HANDSHAKE_FAILURE_REASONS
        .iter()
        .zip(&TLS_HANDSHAKE_FAILURES)
    {
        let _ = writeln!(
            o,
            "ringcache_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
            get(n)
        );
    }
    let _ = writeln!(o, "# HELP ringcache_fills_failed_total Fills that ended without a commit, by reason.\n# TYPE ringcache_fills_failed_total counter");
    for (reason, n) in &g.fills_failed {
        let _ = writeln!(o, "ringcache_fills_failed_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = writeln!(o, "# HELP ringcache_store_incidents_total Store failures (disk full, read-only, I/O).\n# TYPE ringcache_store_incidents_total counter");
    for (class, n) in &g.incidents {
        let _ = writeln!(
            o,
            "ringcache_store_incidents_total{{class=\"{class}\"}} {n}"
        );
    }
    let _ = writeln!(o, "# HELP ringcache_io_driver The I/O driver the workers run.\n# TYPE ringcache_io_driver gauge\nringcache_io_driver{{driver=\"{}\"}} 1", g.driver);
    o
}

/// Why client authentication refused a request (`ringcache_auth_failures_total{reason}`):
/// no credentials, unparsable ones, a wrong user or password, no check slot in time; for
/// tokens a bad signature, expired, not yet valid, another issuer or audience, or no access
/// to what was asked. Indexed by [`crate::auth::Reason`].
pub const AUTH_FAILURE_REASONS: [&str; 11] = [
    "missing",
    "malformed",
    "credentials",
    "busy",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "scope",
    "throttled",
];

/// Counts per [`AUTH_FAILURE_REASONS`]; process-wide (refusals are off the hit path).
pub static AUTH_FAILURES: [AtomicU64; AUTH_FAILURE_REASONS.len()] =
    [const { AtomicU64::new(0) }; AUTH_FAILURE_REASONS.len()];

/// Why a TLS handshake with a client failed (`ringcache_tls_handshake_failures_total{reason}`):
/// not finished within the head timeout, the client closed or the socket failed, or TLS
/// refused it (not TLS at all, no shared version or suite, no valid client certificate).
pub const TLS_HANDSHAKE_FAILURE_REASONS: [&str; 3] = ["timeout", "io", "tls"];

/// Counts per [`TLS_HANDSHAKE_FAILURE_REASONS`]; process-wide (off the hit path).
pub static TLS_HANDSHAKE_FAILURES: [AtomicU64; TLS_HANDSHAKE_FAILURE_REASONS.len()] =
    [const { AtomicU64::new(0) }; TLS_HANDSHAKE_FAILURE_REASONS.len()];

/// Process-wide counters written off the hot path (the expiry thread, failing fills).
#[derive(Default)]
pub struct Tallies {
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    /// Fills failed, by the kind clients were told: upstream refused (4xx), upstream broke
    /// (5xx, framing, resumes exhausted), digest or size mismatch, internal.
    pub failed_upstream_status: AtomicU64,
    pub failed_upstream_body: AtomicU64,
    pub failed_verification: AtomicU64,
    pub failed_other: AtomicU64,
}

impl Tallies {
    pub fn failed(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("upstream_status", get(&self.failed_upstream_status)),
            ("upstream_body", get(&self.failed_upstream_body)),
            ("verification", get(&self.failed_verification)),
            ("other", get(&self.failed_other)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_reference_names() {
        let w: Vec<Counters> = (0..2).map(|_| Counters::default()).collect();
        w[0].request("GET", 200, 0.003, Cache::Hit, Some(Type::Blob), 100, 0);
        w[1].request("GET", 200, 0.2, Cache::Coalesced, Some(Type::Blob), 50, 0);
        w[1].request("HEAD", 404, 0.001, Cache::None, Some(Type::Manifest), 0, 0);
        w[1].request("GET", 200, 0.001, Cache::Miss, Some(Type::Blob), 7, 1);
        let g = Gauges {
            fills_inflight: 1,
            store_bytes: 10,
            store_bytes_max: Some(100),
            store_entries: 1,
            evictions: 0,
            expirations: 2,
            fills_failed: vec![("other", 0)],
            incidents: vec![],
            driver: "io_uring",
            workers: 2,
            upstreams: vec!["docker.io".into(), "ghcr.io".into()],
        };
        let text = render(&w, &g);
        for want in [
            "registry_http_requests_total{code=\"200\",method=\"GET\"} 3",
            "registry_http_requests_total{code=\"404\",method=\"HEAD\"} 1",
            "registry_http_request_duration_seconds_bucket{method=\"GET\",le=\"0.005\"} 2",
            "registry_http_request_duration_seconds_bucket{method=\"GET\",le=\"0.25\"} 3",
            "registry_http_request_duration_seconds_count{method=\"GET\"} 3",
            "registry_proxy_requests_total{type=\"blob\",upstream=\"docker.io\"} 2",
            "registry_proxy_hits_total{type=\"blob\",upstream=\"docker.io\"} 1",
            "registry_proxy_misses_total{type=\"blob\",upstream=\"docker.io\"} 1",
            "registry_proxy_pushed_bytes_total{type=\"blob\",upstream=\"docker.io\"} 150",
            "registry_proxy_requests_total{type=\"blob\",upstream=\"ghcr.io\"} 1",
            "registry_proxy_misses_total{type=\"blob\",upstream=\"ghcr.io\"} 1",
            "registry_proxy_pushed_bytes_total{type=\"blob\",upstream=\"ghcr.io\"} 7",
            "registry_proxy_hits_total{type=\"manifest\",upstream=\"ghcr.io\"} 0",
            "ringcache_upstream_bytes_avoided_total{upstream=\"docker.io\"} 50",
            "ringcache_expirations_total 2",
            "ringcache_store_bytes_max 100",
            "ringcache_io_driver{driver=\"io_uring\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
