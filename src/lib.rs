//! ringcache: a pull-through cache for OCI / Docker registries.
//!
//! A drop-in replacement for the reference registry (CNCF Distribution) in `proxy:` mode.
//! On a miss it fetches from upstream **once**, however many clients wait, and streams the
//! bytes to all of them while writing the blob to disk and checking its sha256; later pulls
//! are served from disk.
//!
//! # Layout
//!
//! | module | what it is |
//! |---|---|
//! | `main.rs` | CLI: `serve`, `check-config`, `verify`, `warm`, `export`, `import`; wires config → store (locked) → workers; signals |
//! | [`server`] | the composition root: worker threads, listeners, accept loops, connection cap, drain (`server/mod.rs`); [`server::conn`]: per connection head → route → [`proxy::serve`] → access log, keep-alive, linger |
//! | [`tls`] | TLS to clients (`http.tls`): the rustls server settings and their reload on SIGHUP; [`tls::stream`]: one connection's handshake (within the head timeout), reads and writes on the worker's loop |
//! | [`auth`] | client authentication between route and proxy (`auth`): [`auth::htpasswd`] (Basic, bcrypt on the job pool, a per-worker cache), [`auth::token`] (Bearer JWTs against `rootcertbundle`), the 401 challenge, failures counted |
//! | [`config`] | YAML (the reference registry's shape) → [`config::Config`]; unknown keys and unsupported sections are errors; `schema`, `yaml` walk, `env` overrides, [`config::units`] |
//! | [`limits`] | every hard bound, each with its reason, grouped by data-path step; const asserts tie related ones |
//! | [`live`] | what SIGHUP can change while running: limits, each upstream's credentials, CA roots and tag freshness (and its stretch), `ringcache.ratelimit`, log level |
//! | [`error`] | one [`error::Error`]; one table kind → OCI code + status |
//! | [`expiry`] | the expiry thread: TTL from last use, size cap (LRU), pins kept past both, persisted state |
//! | [`failpoint`] | named pauses (and panics) for tests (feature `failpoints`, never in release) |
//! | [`buffers`] | per-worker pools of head and body buffers, and the budget for heads grown past 4 KiB |
//! | [`jobs`] | the job pool: blocking work (O_DIRECT writes, sha256, fsync) off the event loops |
//! | [`worker`] | a worker's context: [`worker::Shared`] (every worker's) and [`worker::Worker`] (one thread's: upstream client, buffers, kept file descriptors for hits, idle connections) |
//! | [`http`] | `parse` (pure request heads), `body` (framing), `response` (the one writer to a client socket), `client` (the upstream exchange), `pool` (upstream connections), `connect` (resolving, TLS roots, our own listeners refused), `proxyproto` (the PROXY protocol header a load balancer sends first, and which peers may send it), `url` (upstream [`http::url::Url`] / `Origin`), `sink` (where upstream bytes land), `sendfile` (page cache → socket), `socket` (a client's socket: plain or TLS) |
//! | `deploy/haproxy` | scaling out: HAProxy hashing each digest to one node (README, "Scaling out"); every response's `Cache-Status` ([`http::response::cache_status`]) says which tier answered how |
//! | [`route`] | method + path → [`route::Route`]; OCI name/tag/digest grammar |
//! | [`registry`] | which upstream a request is for (`?ns=`, a configured path prefix, else the default) and the repository **key** that keeps every upstream's links, tags and fills apart |
//! | [`media`] | manifest media types; which answer a client's `Accept` gets ([`media::Accepts`]) |
//! | [`debug`] | the debug listener: `/metrics`, `/debug/health` (every worker, the store, upstream), manual down/up |
//! | [`digest`] | the sha256 [`digest::Digest`] newtype |
//! | [`metrics`] | per-worker counters, summed into Prometheus text at scrape time |
//! | [`proxy`] | `serve(request)`: the one place where hit / miss / fill / bypass is decided; one file per noun (blob, manifest, listing, referrers, miss, bypass) |
//! | [`referrers`] | the referrers API's pure part: an index's descriptors, the `artifactType` filter, the fallback tag `sha256-<hex>`, upstream's next page, and the bounded in-memory [`referrers::Cache`] of answers (why not the blob store: its module docs) |
//! | [`service`] | systemd: readiness, watchdog, socket activation, open-files limit; a panic anywhere aborts the process |
//! | [`store`] | content-addressed files, the index, ingest and commit ([`store::ingest`]: `block` memory and budget, `recent` blocks for followers, the write/hash `pipeline`, the `Ingest` and its commit), tag resolutions, each worker's kept descriptors, the changes the expiry thread journals, the root's lock, a tree walked without following links |
//! | [`fill`] | the sharded in-flight map, the fill task, followers |
//! | [`upstream`] | registry client: [`upstream::Upstreams`] (one client per configured registry, chosen by key), auth (Basic, Bearer), which realms get credentials, redirects, `Via` and loop refusal, `ns` to a parent tier; [`upstream::ratelimit`]: each upstream's pull budget (`ratelimit-*` fields, 429s) and the tag freshness it stretches |
//! | [`wheel`] | hierarchical timing wheel, pure: `advance(now)` → expired keys |
//! | [`reference`](mod@reference) | image references as operators write them (`ghcr.io/team/app:1`, `alpine`), Docker's rules, mapped to an upstream and key; `--platform`, pure |
//! | [`oci`] | what a manifest refers to: an index's platforms, an image's config and layers, pure |
//! | [`pin`] | `ringcache.pin` → the digests the expiry thread keeps past TTL and cap, pure |
//! | [`warm`] | `ringcache warm`: pulls images through the running server on a small blocking HTTP/1.1 client (not the data path) |
//! | [`handoff`] | `ringcache export` / `import`: the store to and from an OCI image layout; a store read without its lock (`check-config`'s pinned bytes) |
//!
//! # The data path
//!
//! 1. **accept** — a worker accepts and spawns the connection task ([`server`]); behind a
//!    load balancer, its PROXY protocol header names the client ([`http::proxyproto`]).
//! 2. **parse** — the request head is parsed from the connection's read buffer within the
//!    limits ([`http::parse`], [`server::conn`]). Pipelined requests are answered in order. An idle
//!    connection waits for readability holding no buffer; buffers come from [`buffers`].
//! 3. **route** — method + path become a [`route::Route`]; writes get 405 `UNSUPPORTED`. The
//!    registry is chosen here ([`registry`]); from here on a repository is its key. With
//!    `auth`, the request's credentials are checked for what the route needs ([`auth`]); over
//!    TLS the connection's handshake came first, at accept ([`tls`]).
//! 4. **tags** — a manifest by tag is resolved upstream with HEAD (within a freshness window,
//!    stretched while the upstream's pull budget is low, and stale-if-error) ([`proxy`],
//!    [`store::tags`], [`upstream::ratelimit`]); referrers are answered the same way, from
//!    upstream's API or the fallback tag ([`referrers`]). From here on everything is by digest.
//! 5. **lookup** — the index says whether the digest is committed; a hit streams the file, by
//!    sendfile where its pages are cached, else through io_uring reads; a client on this host
//!    alone on its worker gets copies read into a buffer, which it receives faster
//!    ([`store::index`], [`proxy`], [`http::sendfile`]).
//! 6. **miss** — [`fill::Fills::join_or_lead`]: one fill task per digest writes and hashes the
//!    upstream body ([`fill::task`]; upstream's reads land in an aligned block, published to
//!    followers as they arrive; a full block is written with `O_DIRECT` (around the page
//!    cache) and hashed by two jobs on the job pool ([`jobs`]), a few blocks deep, while the
//!    fill reads on from upstream, [`store::ingest`]); every requester follows the fill up to
//!    the received count ([`fill::follow`]): the newest bytes from the fill's recent blocks in
//!    memory, older bytes from the temp file. The fill paces itself, briefly, to its furthest follower.
//! 7. **commit** — size and sha256 checked, fsync, rename, fsync the directory, index
//!    ([`store::ingest`]). Followers send the final byte only once the body is verified (the
//!    fill's `verified` flag, set before the fsync): a body that fails verification is never
//!    delivered complete.
//! 8. **resume** — upstream breaks mid-body: the fill continues with `Range` ([`fill::task`]).
//!    If the store fails instead (disk full, read-only, I/O), followers finish straight from
//!    upstream, verifying themselves ([`proxy::bypass`], [`store::incident`]).
//! 9. **expiry** — a timing wheel holds one deadline per entry; last access decides between
//!    re-arming and removal; a size cap evicts least-recently-used entries; pinned images
//!    stay; state is journalled ([`wheel`], [`expiry`], [`pin`], [`store::state`]).
//!
//! # Glossary
//!
//! - **upstream**: the registry we cache (never "client").
//! - **fill**: the one upstream fetch of a digest, writing to an ingest file.
//! - **leader / follower**: the requester that started a fill / every requester streaming it.
//! - **ingest**: a temp file under `ingest/` being filled; **commit** moves it into `blobs/`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod buffers;
pub mod config;
pub mod debug;
pub mod digest;
pub mod error;
pub mod expiry;
pub mod failpoint;
pub mod fill;
pub mod handoff;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod live;
pub mod media;
pub mod metrics;
pub mod oci;
pub mod pin;
pub mod proxy;
pub mod reference;
pub mod referrers;
pub mod registry;
pub mod route;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod warm;
pub mod wheel;
pub mod worker;
