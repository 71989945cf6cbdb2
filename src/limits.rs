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
/// Upstreams one ringcache mirrors (the default and `ringcache.upstreams`): each worker keeps
/// per-upstream counters in fixed arrays of this size, so that the hit path indexes and never
/// allocates or locks; 32 is several times what an edge node mirrors.
pub const UPSTREAMS_MAX: usize = 32;
/// Redirects followed for one upstream request (Docker Hub uses one, to its CDN).
pub const REDIRECTS_MAX: usize = 10;
/// Idle upstream connections kept per worker per origin.
pub const UPSTREAM_IDLE_PER_ORIGIN_MAX: usize = 16;
/// An idle pooled upstream connection older than this is not reused.
pub const UPSTREAM_IDLE_TTL: Duration = Duration::from_secs(30);
/// Size of one read from the store or from upstream: large enough to amortise a syscall,
/// small enough that thousands of followers stay within memory (one buffer per connection).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Request-head buffer bytes past the first 4 KiB ([`HEAD_FIRST_BYTES`]) that one
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
/// A referrers answer from upstream (all its pages together), or a fallback tag's index, is
/// read whole into memory to be filtered: a manifest's cap (the fallback tag's index is one).
pub const REFERRERS_BODY_BYTES_MAX: u64 = MANIFEST_BYTES_MAX;
/// Pages of one upstream referrers answer followed (`Link: <...>; rel="next"`); past it the
/// answer holds the referrers of the pages read (logged).
pub const REFERRERS_PAGES_MAX: usize = 16;
/// Referrers answers kept in memory (per process, by repository, subject and
/// `artifactType`); the least recently confirmed is dropped past it...
pub const REFERRERS_CACHED_MAX: usize = 10_000;
/// ...or past this many bytes of them: most answers are a few hundred bytes, and a few large
/// ones must not hold hundreds of MiB.
pub const REFERRERS_CACHED_BYTES_MAX: usize = 64 * 1024 * 1024;

// ---- Client connections (steps 1–2): heads, buffers, lingering, memory handed back ----

/// Header slots on the stack for one parse; `limits.headers_max` (≤ this) of them are used:
/// httparse needs a fixed array, and this bounds the stack one parse takes (the config refuses
/// nothing above it; a larger `headers_max` is used as this).
pub const HEADER_SLOTS_MAX: usize = 1024;
/// How long a closing connection keeps reading what the client still sends (so our answer is
/// not lost to a reset, see `server::conn`): a client that keeps sending is cut after it.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much a closing connection reads and drops at most: lingering must not become a way to
/// make us read an endless body.
pub const LINGER_BYTES: usize = 8 * 1024 * 1024;
/// Connections that must have closed since the most there were before freed memory is handed
/// back to the system (`malloc_trim`); once the count stops falling, or at once past
/// [`TRIM_AT_ONCE`] times this. Trimming costs a walk of the heap: not once per heartbeat.
pub const TRIM_AFTER_CLOSED: usize = 256;
/// Head room (bytes, see [`HEAD_ROOM_BYTES_PER_WORKER`]) that must have been given back for the
/// same, under the same rule.
pub const TRIM_AFTER_HEAD_ROOM: usize = 1024 * 1024;
/// Past this many times the thresholds above, memory is handed back at once, without waiting
/// for the count to stop falling.
pub const TRIM_AT_ONCE: usize = 8;
/// A head buffer's first size: the heads clients send are well under 4 KiB (longer ones grow
/// within [`HEAD_ROOM_BYTES_PER_WORKER`]).
pub const HEAD_FIRST_BYTES: usize = 4 * 1024;
/// Concurrent streams per worker that get a large ([`CHUNK_BYTES`]) buffer: thousands of
/// followers must not each hold one.
pub const LARGE_BUFFERS_PER_WORKER: usize = 8;
/// The buffer of a stream past the first [`LARGE_BUFFERS_PER_WORKER`].
pub const SMALL_CHUNK_BYTES: usize = 16 * 1024;
/// Free buffers kept per list (the pool never holds more idle memory than this many).
pub const BUFFERS_FREE_MAX: usize = 64;

/// A PROXY protocol v1 line at most, CRLF included (the spec's own bound: proxy-protocol.txt
/// §2.1, "107 bytes").
pub const PROXY_V1_BYTES_MAX: usize = 107;
/// A PROXY protocol v2 header at most (16-byte head + addresses + TLVs): IPv6 addresses take
/// 36, a load balancer's usual TLVs (ALPN, authority, unique id, CRC) a few hundred; the
/// spec's own 64 KiB bound would let any allowed peer make us hold that much per connection.
pub const PROXY_V2_BYTES_MAX: usize = 1024;

// ---- HTTP framing and the request grammar ----

/// Up to this many Accept headers are kept (clients send one or a few).
pub const ACCEPT_MAX: usize = 8;
/// Up to this many Via headers are kept: the first ones and the last (proxies append to one
/// line; the loop check looks for ringcache's own entry).
pub const VIA_MAX: usize = 4;
/// Longest chunk-size line we accept (size, extensions, CRLF): RFC 9112 §7.1.1 sets no bound
/// on extensions, and an endless line must not hold a read buffer.
pub const CHUNK_LINE_MAX: usize = 4096;
/// Longest trailer section we skip over (RFC 9112 §7.1.2 sets none).
pub const TRAILERS_MAX: usize = 16 * 1024;
/// The most one residency check and one run of sendfile calls cover: between two checks a
/// slow disk read may block the event loop for no more than this.
pub const SENDFILE_SPAN_BYTES: u64 = 4 << 20;
/// A client on this host is sent copies while its worker streams file bytes to at most this
/// many clients (see the module's notes).
pub const COPY_STREAMS_MAX: usize = 1;
/// Longest repository name (distribution-spec: name components joined must stay under 255).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest tag (OCI grammar: 1 + 127 characters).
pub const TAG_BYTES_MAX: usize = 128;

// ---- Ingest (step 6): blocks, their budget, the write/hash pipeline ----

/// Alignment of direct writes (file offset, length and memory): a multiple of every common
/// logical block size (512, 4096).
pub const DIRECT_ALIGN: usize = 4096;
/// Largest block: the fill's upstream read size. Measured on a cold GiB: 2 MiB takes half
/// the jobs and writes of 1 MiB (6 % faster); 4 MiB was no faster and held more memory.
pub const BLOCK_BYTES: usize = 2 * 1024 * 1024;
/// Blocks a fill keeps in memory for its followers: those not yet written, and the newest
/// written ones up to this many in all.
pub const RECENT_KEEP: usize = 4;
/// Blocks a fill may have accepted that are not yet written, or not yet hashed (the depth of
/// its pipeline).
pub const BLOCKS_IN_FLIGHT: usize = 2;
/// Bytes of blocks alive in the process past which fills keep only unwritten blocks, queue
/// one block at a time, and followers stop holding blocks to send from; spare allocations are
/// kept only within it too. One fill uses at most [`RECENT_KEEP`] + [`BLOCKS_IN_FLIGHT`] blocks (12
/// MiB), and followers that fall behind while sending from a block keep the rest: at 64 MiB,
/// 32 slow followers of one blob held 48 blocks at once (132 MiB of RSS).
pub const BLOCKS_BUDGET: usize = 24 * 1024 * 1024;
/// Freed block allocations kept for reuse while fills run (within [`BLOCKS_BUDGET`] with the
/// blocks alive): a fresh mapping costs a page fault and a cleared page every 4 KiB (measured:
/// 6 % of a cold GiB's CPU with only 2 kept).
pub const BLOCKS_SPARE_MAX: usize = RECENT_KEEP + BLOCKS_IN_FLIGHT + 4;
/// Spare allocations are unmapped once no block has been made for this long
/// ([`crate::store::ingest::trim_spares`]), so an idle server holds none.
pub const BLOCKS_SPARE_IDLE: Duration = Duration::from_secs(1);
/// Blocks a pool job takes in a row before it gives its thread back to the other fills' jobs
/// (the event loop then starts another).
pub const JOB_BLOCKS: usize = 8;

// ---- The store: changes queued, kept descriptors, tag resolutions, incident logs ----

/// Changes waiting for the expiry thread at most; past it a change is dropped (a dropped link
/// or tag is re-learnt from upstream on the next request).
pub const CHANGES_QUEUED_MAX: usize = 65_536;
/// Descriptors one worker keeps open at most for hits (each costs one of the process's open
/// files; past it the least recently used is closed).
pub const KEPT_FILES_OPEN_MAX: usize = 1024;
/// Tag resolutions one worker keeps in its local copy at most (past it the copy starts
/// again): the shared table ([`TAGS_MAX`]) is the bound that matters, this keeps each
/// worker's copy far smaller.
pub const TAGS_LOCAL_MAX: usize = 4096;
/// Seconds between two log lines of one class of store incident: once is the signal, a line
/// per request is noise.
pub const INCIDENT_LOG_EVERY_SECS: u64 = 60;

// ---- The debug listener (its own threads, outside the data path) ----

/// The debug listener's request head at most: a health request head is small; anything
/// bigger is refused.
pub const DEBUG_HEAD_BYTES_MAX: usize = 8 * 1024;
/// The whole head must arrive within this (probes and scrapers send theirs at once): a slow
/// client holds its thread no longer.
pub const DEBUG_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing a response (a scrape is a few KiB) to a client that does not read.
pub const DEBUG_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once (a thread each); past it a new one evicts the oldest connection
/// still in its head, or gets 503 and is closed.
pub const DEBUG_CONNECTIONS_MAX: usize = 32;
/// Threads at most, counting evicted connections whose threads are still ending (a shut-down
/// socket ends its read at once).
pub const DEBUG_THREADS_MAX: usize = 2 * DEBUG_CONNECTIONS_MAX;
/// A connection thread's stack: enough for rendering the metrics and the checks.
pub const DEBUG_STACK_BYTES: usize = 256 * 1024;
/// Request body bytes read and dropped (so the answer is not lost to a reset); past it the
/// connection closes with the rest unread.
pub const DEBUG_BODY_DRAIN_MAX: u64 = 64 * 1024;

// ---- Expiry (step 9) ----

/// The expiry thread waits for changes at most this long before it advances the wheel,
/// enforces the size cap and trims spare blocks: a deadline fires at most this late (plus the
/// wheel's one-second tick).
pub const EXPIRY_WAIT: Duration = Duration::from_millis(250);
/// The timing wheel's slots per level, as a power of two (64): a tick is a second.
pub const WHEEL_SLOT_BITS: u32 = 6;
/// The timing wheel's levels: with 64 slots each, 2^24 s (194 days) are covered by the levels;
/// farther deadlines wait in the overflow list.
pub const WHEEL_LEVELS: usize = 4;
/// Ticks (seconds) covered by the wheel's levels; farther deadlines go to the overflow list.
pub const WHEEL_HORIZON: u64 = 1 << (WHEEL_SLOT_BITS as u64 * WHEEL_LEVELS as u64);
/// Images in `ringcache.pin`: each is resolved (tags, manifests read from disk) whenever a
/// manifest or tag changes, at most once per [`PIN_RESOLVE_EVERY`].
pub const PINS_MAX: usize = 1024;
/// Pins are resolved again at most this often while commits and tags keep coming.
pub const PIN_RESOLVE_EVERY: Duration = Duration::from_millis(500);

// ---- Tools: warm, export, import (not the data path) ----

/// `ringcache warm --jobs`: blob downloads at once, at most (each is one connection to the
/// server and one buffer of [`WARM_CHUNK_BYTES`]).
pub const WARM_JOBS_MAX: usize = 64;
/// One read of a blob body by `warm`, `export` and `import` (the body is hashed and dropped,
/// or written, a chunk at a time: never held whole).
pub const WARM_CHUNK_BYTES: usize = 256 * 1024;
/// A response head `warm` reads from the server.
pub const WARM_HEAD_BYTES_MAX: usize = 64 * 1024;
/// `warm --file`: the list's size, at most.
pub const WARM_LIST_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// `import`: an OCI layout's `index.json`, at most.
pub const LAYOUT_INDEX_BYTES_MAX: u64 = 16 * 1024 * 1024;

// ---- The front door: TLS to clients, client authentication (src/tls, src/auth) ----

/// Ciphertext read from a TLS client per socket read: one largest record (2^14 bytes of
/// plaintext plus at most 256 of expansion, RFC 8446 §5.2) and its 5-byte header, so a record
/// never needs two reads; held per TLS connection.
pub const TLS_READ_BYTES: usize = 16 * 1024 + 256 + 5;
/// Plaintext rustls takes per write before its records are sent (its buffer limit): bounds
/// what a TLS connection holds while the client is slow to read.
pub const TLS_SEND_BYTES: usize = 64 * 1024;
/// TLS 1.2 sessions remembered for clients that resume without tickets (rustls's own default
/// size; a few hundred bytes each).
pub const TLS_SESSIONS_MAX: usize = 256;
/// A PEM file (certificate chain, key, CA bundle, token root bundle) is read whole: a real
/// one is a few KiB, a bundle of every public root ~200 KiB.
pub const PEM_BYTES_MAX: u64 = 1024 * 1024;
/// An htpasswd file is read whole at start and on SIGHUP (~60 bytes a user).
pub const HTPASSWD_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// A credential verified once (a bcrypt check, ~50 ms of a core) is trusted again for this
/// long on the worker that verified it, so a pull of many layers costs one check...
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(300);
/// ...for at most this many (user, password) pairs per worker (32-byte keys, no passwords).
pub const AUTH_CACHE_MAX: usize = 1024;
/// bcrypt checks a worker runs on the job pool at once: the pool is the fills' too, and a
/// crowd of wrong passwords must not queue ahead of their writes. Past it, requests wait
/// (within the head timeout) for a check to finish.
pub const AUTH_CHECKS_INFLIGHT_MAX: usize = 2;
/// Failed credential checks from one client address (per worker) within
/// [`AUTH_FAILURES_WINDOW`] before its further attempts are refused (429) without a bcrypt
/// check until the window ends: a crowd of wrong passwords from one address cannot hold the
/// check slots every other client's first login needs.
pub const AUTH_FAILURES_PER_ADDR_MAX: u32 = 10;
pub const AUTH_FAILURES_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures a worker remembers (past it, the oldest windows go).
pub const AUTH_FAILURE_ADDRS_MAX: usize = 4096;
/// Clock skew allowed on a token's `exp` and `nbf` (the reference registry's leeway).
pub const TOKEN_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Keys taken from `auth.token.rootcertbundle`: each is a candidate for a token without
/// `kid`, so their number bounds the work per token.
pub const TOKEN_KEYS_MAX: usize = 64;
/// At most one log line about failed authentications per this interval (the rest are
/// counted in `ringcache_auth_failures_total` and summed into the next line).
pub const AUTH_LOG_EVERY: Duration = Duration::from_secs(1);

// ---- How the bounds relate ----

// A PROXY v2 header holds at least its 16-byte head and IPv6 addresses (36).
const _: () = assert!(PROXY_V2_BYTES_MAX >= 16 + 36 && PROXY_V1_BYTES_MAX == 107);

const _: () = assert!(SHARDS.is_power_of_two());
const _: () = assert!(TOKEN_DEFAULT_TTL.as_secs() <= TOKEN_TTL_MAX.as_secs());
const _: () = assert!(TOKEN_EXPIRY_MARGIN.as_secs() < TOKEN_DEFAULT_TTL.as_secs());
const _: () = assert!(CHUNK_BYTES as u64 <= MANIFEST_BYTES_MAX);
// A read of one chunk fits in a block; blocks are whole aligned units.
const _: () = assert!(CHUNK_BYTES <= BLOCK_BYTES);
const _: () = assert!(BLOCK_BYTES % DIRECT_ALIGN == 0);
const _: () = assert!(DIRECT_ALIGN.is_power_of_two());
// One fill's blocks (recent and in flight) fit in the process's budget, so a lone fill is
// never throttled by it.
const _: () = assert!((RECENT_KEEP + BLOCKS_IN_FLIGHT) * BLOCK_BYTES <= BLOCKS_BUDGET);
// Recent blocks include the unwritten ones; followers pace at half of them (fill::PACE_BLOCKS).
const _: () = assert!(BLOCKS_IN_FLIGHT <= RECENT_KEEP && RECENT_KEEP >= 2);
// Spares cover at least one fill's worth of blocks.
const _: () = assert!(BLOCKS_SPARE_MAX >= RECENT_KEEP + BLOCKS_IN_FLIGHT);
// A head's first buffer is within the head room a worker hands out past it, and within the
// debug listener's whole head.
const _: () = assert!(HEAD_FIRST_BYTES <= HEAD_ROOM_BYTES_PER_WORKER);
const _: () = assert!(HEAD_FIRST_BYTES <= DEBUG_HEAD_BYTES_MAX);
// Small stream buffers are smaller than large ones.
const _: () = assert!(SMALL_CHUNK_BYTES <= CHUNK_BYTES);
// A chunk-size line fits in any trailer section we accept.
const _: () = assert!(CHUNK_LINE_MAX <= TRAILERS_MAX);
// The debug listener's threads cover its connections (and as many still ending).
const _: () = assert!(DEBUG_THREADS_MAX >= DEBUG_CONNECTIONS_MAX);
// One referrers answer fits in the bytes kept for all of them.
const _: () = assert!(REFERRERS_BODY_BYTES_MAX as usize <= REFERRERS_CACHED_BYTES_MAX);
// A tag's local copy is no bigger than the shared table it copies.
const _: () = assert!(TAGS_LOCAL_MAX <= TAGS_MAX);
// A whole TLS record fits in one read.
const _: () = assert!(TLS_READ_BYTES > 16 * 1024);
