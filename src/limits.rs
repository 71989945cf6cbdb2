//! Every hard bound in ringcache, each with the reason it exists.
//!
//! Limits that an operator may tune live in [`Limits`] (config section `ringcache.limits`);
//! the rest are constants. Past a limit comes a typed error (414, 431, 502, 503), never unbounded
//! growth.

use std::time::Duration;

/// Bounds an operator may tune under `ringcache.limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (`GET /v2/... HTTP/1.1`); longer gets 414 URI Too Long (the target
    /// is all of it that can grow), since the name grammar caps useful paths far below this.
    pub request_line_bytes_max: usize,
    /// Longest single header line; one huge header must not eat the whole head budget.
    pub header_line_bytes_max: usize,
    /// Whole request head; this is also the size of each connection's read buffer.
    pub head_bytes_max: usize,
    /// Header count: httparse needs a fixed slot array, and this is its length.
    pub headers_max: usize,
    /// A client must finish sending a request head within this (slowloris).
    pub head_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_idle: Duration,
    /// Connections one worker serves at once; past it new ones get 503 and are closed.
    pub connections_per_worker_max: usize,
    /// A client that accepts no bytes for this long while we send is cut.
    pub send_stall: Duration,
    /// Upstream: TCP (+TLS) connect.
    pub upstream_connect_timeout: Duration,
    /// Upstream: from request sent to response head received.
    pub upstream_header_timeout: Duration,
    /// Upstream: longest gap between two body reads.
    pub upstream_body_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line_bytes_max: 8 * 1024,
            header_line_bytes_max: 8 * 1024,
            head_bytes_max: 32 * 1024,
            headers_max: 100,
            head_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(75),
            connections_per_worker_max: 16 * 1024,
            send_stall: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_header_timeout: Duration::from_secs(30),
            upstream_body_stall: Duration::from_secs(30),
        }
    }
}

/// Manifests are read whole into memory (to verify and store them): the reference registry's
/// own cap.
pub const MANIFEST_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Token responses, error bodies, tag lists: small JSON documents read whole.
pub const SMALL_BODY_BYTES_MAX: u64 = 1024 * 1024;
/// Upstream response head (status line + headers).
pub const UPSTREAM_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Header slots for parsing an upstream response head.
pub const UPSTREAM_HEADERS_MAX: usize = 128;
/// Interim (1xx) answers skipped before an upstream's final response: RFC 9110 sets no bound,
/// a real server sends one or two (100 Continue, 103 Early Hints); an endless stream of them
/// must not hold a request until the head timeout.
pub const UPSTREAM_INTERIM_MAX: usize = 16;
/// A warning about the upstream's configuration (credentials rejected, a realm refused the
/// credentials) is logged at most this often per subject: once is the signal, a line per
/// request is noise.
pub const UPSTREAM_WARN_EVERY: Duration = Duration::from_secs(60);
/// Subjects of such warnings remembered at once (expired ones are dropped past it).
pub const UPSTREAM_WARN_KEYS_MAX: usize = 1024;
/// Redirects followed for one upstream request (Docker Hub uses one, to its CDN).
pub const REDIRECTS_MAX: usize = 10;
/// Idle upstream connections kept per worker per origin.
pub const UPSTREAM_IDLE_PER_ORIGIN_MAX: usize = 16;
/// An idle pooled upstream connection older than this is not reused.
pub const UPSTREAM_IDLE_TTL: Duration = Duration::from_secs(30);
/// Size of one read from the store or from upstream: large enough to amortise a syscall,
/// small enough that thousands of followers stay within memory (one buffer per connection).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Request-head buffer bytes past the first 4 KiB (`buffers::HEAD_FIRST_BYTES`) that one
/// worker's connections hold at once (128 heads of 32 KiB): heads longer than 4 KiB are rare,
/// and without a total, clients that send most of a head and stop would hold
/// `head_bytes_max` each (over 1 GiB at the default connection caps). Past it, a connection
/// that needs more head room gets 503.
pub const HEAD_ROOM_BYTES_PER_WORKER: usize = 4 * 1024 * 1024;
/// Fills in flight at once across the process; past it new misses get 503 UNAVAILABLE.
pub const FILLS_INFLIGHT_MAX: usize = 4096;
/// Shards of the in-flight map and of the index (a power of two).
pub const SHARDS: usize = 64;
/// Times a fill resumes (`Range: bytes=<written>-`) after upstream breaks mid-body.
pub const FILL_RESUMES_MAX: u32 = 4;
/// First pause before a resume; doubled each time (50, 100, 200, 400 ms).
pub const FILL_RESUME_BACKOFF: Duration = Duration::from_millis(50);
/// The longest `Retry-After` a resuming fill honours; past it the fill waits only this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);
/// Resolved upstream addresses are reused for this long.
pub const DNS_TTL: Duration = Duration::from_secs(60);
/// A cached Bearer token is dropped this long before it expires, to cover clock skew and
/// the request's own flight time.
pub const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Token lifetime when the realm does not say, or says something unusable (zero, negative,
/// not a number) (distribution-spec: 60 s).
pub const TOKEN_DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Longest a Bearer token is cached, whatever the realm's `expires_in` says: that number is
/// upstream input (a huge one must not overflow the clock), and a day bounds how long a token
/// revoked upstream keeps being presented.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Bearer tokens cached per worker (one per repository scope). Past it the expired ones are
/// dropped, and if that frees nothing, all of them: a token is fetched again on demand.
pub const TOKENS_MAX: usize = 4096;
/// Tag cache entries kept (per process); the least recently resolved is dropped past it.
pub const TAGS_MAX: usize = 100_000;
/// Answers kept per tag, one per kind of client upstream answers differently (one that takes
/// no index gets one platform's manifest); the oldest goes past it. Nearly every client sends
/// every manifest type, so one or two are the rule.
pub const TAG_ANSWERS_MAX: usize = 8;

const _: () = assert!(SHARDS.is_power_of_two());
const _: () = assert!(TOKEN_DEFAULT_TTL.as_secs() <= TOKEN_TTL_MAX.as_secs());
const _: () = assert!(TOKEN_EXPIRY_MARGIN.as_secs() < TOKEN_DEFAULT_TTL.as_secs());
const _: () = assert!(CHUNK_BYTES as u64 <= MANIFEST_BYTES_MAX);
