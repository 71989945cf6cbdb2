//! The registry client (data path steps 4 and 6): requests to the configured upstream
//! registry with authentication and redirects, on the worker's HTTP client.
//!
//! - **Credentials** go only to the configured upstream's origin and to a token realm that
//!   [`realm`] allows (its authority, its registrable domain, or one the operator listed);
//!   never to a redirect target on another origin (Docker Hub redirects blobs to a CDN with a
//!   signed URL), never into logs or responses. Rejected credentials are a WARN once a minute.
//! - **Redirects** may leave the upstream's origin only for a blob (Docker Hub → CDN); a
//!   manifest, a tag list or anything else is read from the upstream's own origin only.
//! - **Loops.** Every upstream request carries `Via` with this process's entry
//!   ([`via_entry`]) after the client's own `Via`; a request that arrives with our entry
//!   already in its `Via` has been here before ([`via_loops`]: answered 508). The client never
//!   connects to ringcache's own listeners ([`note_listener`]), whether the remote URL, a
//!   redirect or a realm names them.

pub mod auth;
pub mod ratelimit;
pub mod realm;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::UpstreamConfig;
use crate::error::{Error, Kind, Result};
use crate::http::client::{Client, Request, Response};
use crate::http::url::Url;
use crate::limits;
use auth::{Challenge, Tokens};

/// When upstream last answered and last failed to (ms on the monotonic clock; 0 = never),
/// shared by every worker's client, read by the health check.
#[derive(Default)]
pub struct Health {
    pub ok_ms: std::sync::atomic::AtomicU64,
    pub err_ms: std::sync::atomic::AtomicU64,
    /// Its pull budget as it last reported it, and its 429s ([`ratelimit`]).
    pub budget: ratelimit::Budget,
}

/// Every upstream's client on one worker, and which one a repository key belongs to
/// ([`crate::registry`]): upstream 0 is the default (`proxy:`), the rest `ringcache.upstreams`.
/// Each has its own connections, credentials, tokens and TLS roots: nothing of one is ever
/// used for another.
pub struct Upstreams {
    registries: crate::registry::Registries,
    all: Vec<Upstream>,
}

impl Upstreams {
    /// One client per configured upstream, in the config's order.
    pub fn new(
        config: &crate::config::Config,
        limits: &crate::limits::Limits,
        health: &[std::sync::Arc<Health>],
        live: &std::sync::Arc<crate::live::Reloadable>,
    ) -> Upstreams {
        let tls = live.tls.read().unwrap().clone();
        let all = config
            .all_upstreams()
            .enumerate()
            .map(|(i, u)| {
                Upstream::new(
                    i,
                    u,
                    Client::new(tls[i].clone(), limits.clone()),
                    health[i].clone(),
                    live.clone(),
                )
            })
            .collect();
        Upstreams {
            registries: config.registries(),
            all,
        }
    }

    pub fn registries(&self) -> &crate::registry::Registries {
        &self.registries
    }

    /// Upstream `u` (the default for an index out of range).
    pub fn get(&self, u: usize) -> &Upstream {
        self.all.get(u).unwrap_or(&self.all[0])
    }

    /// The upstream of a repository key, and the repository's name there.
    pub fn of<'a>(&self, key: &'a str) -> (&Upstream, &'a str) {
        match self.registries.split(key) {
            Some((u, name)) => (self.get(u), name),
            // Keys are built from the running config's registries; none other reaches here.
            None => (self.get(0), key),
        }
    }

    /// [`Upstream::send`] for repository key `key`.
    pub async fn send(
        &self,
        method: &str,
        key: &str,
        tail: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let (u, name) = self.of(key);
        u.send(method, name, tail, headers).await
    }

    /// [`Upstream::get_range`] for repository key `key`.
    pub async fn get_range(
        &self,
        key: &str,
        tail: &str,
        accept_via: (Option<&str>, Option<&str>),
        from: u64,
        to: Option<u64>,
        unknown: Kind,
    ) -> Result<(Response, u64)> {
        let (u, name) = self.of(key);
        u.get_range(name, tail, accept_via, from, to, unknown).await
    }
}

pub struct Upstream {
    /// Which upstream this is (its slot in [`crate::live::Reloadable`]'s per-upstream settings).
    index: usize,
    /// `?ns=<registry>` sent with every request to this upstream's origin, when its remote
    /// URL is a mirror of the registry (another ringcache) rather than the registry itself.
    ns: Option<String>,
    health: std::sync::Arc<Health>,
    live: std::sync::Arc<crate::live::Reloadable>,
    /// The reload generation this client's credentials, limits and tokens belong to.
    generation: std::cell::Cell<u64>,
    base: Url,
    credentials: RefCell<Option<(String, String)>>,
    /// Token realms the operator allows the credentials to go to (see [`realm`]).
    token_realms: Vec<Url>,
    docker_hub: bool,
    client: Client,
    tokens: RefCell<Tokens>,
}

/// This process's instance: 16 random hex digits, drawn once.
fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            // No randomness: the time and pid still tell two processes apart.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            bytes = (t.as_nanos() as u64 ^ (std::process::id() as u64) << 32).to_le_bytes();
        }
        crate::digest::hex(&bytes)
    })
}

/// This process's `Via` entry (RFC 9110 §7.6.3: `protocol received-by (comment)`), a
/// pseudonym per process: `1.1 <instance> (ringcache)`.
pub fn via_entry() -> &'static str {
    static VIA: OnceLock<String> = OnceLock::new();
    VIA.get_or_init(|| format!("1.1 {} (ringcache)", instance()))
}

/// Whether an incoming `Via` value (its lines joined with `,`) holds this process's entry: the
/// request was sent by this ringcache, and came back (a loop).
pub fn via_loops(via: &str) -> bool {
    let me = instance();
    via.split(',').any(|entry| {
        let mut words = entry.split_ascii_whitespace();
        let _protocol = words.next();
        words.next() == Some(me)
    })
}

/// The `Via` to send upstream: the client's (if any), then ours.
fn via_forward(incoming: Option<&str>) -> String {
    match incoming.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => format!("{v}, {}", via_entry()),
        None => via_entry().to_string(),
    }
}

/// Addresses ringcache listens on (its listeners, inherited sockets, the debug listener),
/// noted at start; the upstream client never connects to them.
static LISTENERS: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Note a listen address of this process (before the workers start).
pub fn note_listener(addr: SocketAddr) {
    let mut all = LISTENERS.lock().unwrap();
    if !all.contains(&addr) {
        all.push(addr);
    }
}

/// The listen addresses noted so far.
pub fn listeners() -> Vec<SocketAddr> {
    LISTENERS.lock().unwrap().clone()
}

/// When each rate-limited warning was last logged (by what it is about).
static WARNED: Mutex<Option<std::collections::HashMap<String, Instant>>> = Mutex::new(None);

/// Whether a warning about `key` may be logged now: at most once per
/// [`limits::UPSTREAM_WARN_EVERY`] for each key, across the process.
fn warn_now(key: &str) -> bool {
    let now = Instant::now();
    let mut warned = WARNED.lock().unwrap();
    let warned = warned.get_or_insert_with(Default::default);
    if warned
        .get(key)
        .is_some_and(|at| now.duration_since(*at) < limits::UPSTREAM_WARN_EVERY)
    {
        return false;
    }
    if warned.len() >= limits::UPSTREAM_WARN_KEYS_MAX {
        warned.retain(|_, at| now.duration_since(*at) < limits::UPSTREAM_WARN_EVERY);
        if warned.len() >= limits::UPSTREAM_WARN_KEYS_MAX {
            // That many subjects within a minute (clients naming registries at will): the
            // rest are not logged until the oldest age out.
            return false;
        }
    }
    warned.insert(key.to_string(), now);
    true
}

/// A client asked for a registry this ringcache does not mirror (`?ns=`): a WARN once a
/// minute per registry, naming the settings (containerd falls back to the registry quietly,
/// so a misnamed default upstream would otherwise go unnoticed).
pub fn warn_unmirrored(ns: &str) {
    let ns: String = ns.chars().take(64).filter(|c| !c.is_control()).collect();
    if warn_now(&format!("ns {ns}")) {
        tracing::warn!(ns = %ns, "a client asked for a registry not mirrored here (404 NAME_UNKNOWN; containerd then pulls from the registry itself); ringcache.upstream.registry names the default upstream's registry, ringcache.upstreams adds others");
    }
}

/// Media types a manifest request accepts when the client sent no Accept header.
pub const MANIFEST_ACCEPT_DEFAULT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

impl Upstream {
    pub fn new(
        index: usize,
        config: &UpstreamConfig,
        client: Client,
        health: std::sync::Arc<Health>,
        live: std::sync::Arc<crate::live::Reloadable>,
    ) -> Upstream {
        let host = config.url.origin.host.as_str();
        let credentials = live.credentials(index);
        client.refuse(listeners());
        Upstream {
            index,
            ns: config
                .forward_ns()
                .map(|r| format!("ns={}", crate::route::percent_encode(r))),
            health,
            generation: std::cell::Cell::new(
                live.generation.load(std::sync::atomic::Ordering::Acquire),
            ),
            credentials: RefCell::new(credentials),
            token_realms: config.token_realms.clone(),
            live,
            base: config.url.clone(),
            // Docker Hub's `library/` rule goes with its name, wherever the URL points (a
            // mirror of Docker Hub, a tier).
            docker_hub: crate::registry::DOCKER_HUB.contains(&config.registry.as_str())
                || crate::registry::DOCKER_HUB.contains(&host),
            client,
            tokens: RefCell::new(Tokens::default()),
        }
    }

    /// The repository name upstream knows: Docker Hub's official images live under
    /// `library/`.
    pub fn repo_name<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        upstream_name(self.docker_hub, name)
    }

    /// `method` `/v2/<name>/<tail>` upstream, authenticating and following redirects (off the
    /// upstream's origin only for a blob). A `Via` in `headers` is the client's, passed on with
    /// ours after it.
    pub async fn send(
        &self,
        method: &str,
        name: &str,
        tail: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        if self.live.offline() {
            return Err(offline(unknown_of(tail)));
        }
        let name = self.repo_name(name);
        let scope = format!("repository:{name}:pull");
        let base_path = self.base.path.trim_end_matches('/');
        let mut url = Url {
            origin: self.base.origin.clone(),
            path: format!("{base_path}/v2/{name}/{tail}"),
        };
        self.add_ns(&mut url.path);
        // Registries redirect blob GETs, and HEADs too (Distribution answers both from the
        // same handler), to their storage's URL on another host; nothing else leaves.
        let may_leave = tail.starts_with("blobs/") && matches!(method, "GET" | "HEAD");
        self.send_url(method, &mut url, &scope, headers, may_leave)
            .await
    }

    /// `GET /v2/_catalog`-style requests that are not under a repository.
    pub async fn send_path(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        if self.live.offline() {
            return Err(offline(Kind::NameUnknown));
        }
        let base_path = self.base.path.trim_end_matches('/');
        let mut url = Url {
            origin: self.base.origin.clone(),
            path: format!("{base_path}{path}"),
        };
        self.add_ns(&mut url.path);
        self.send_url(method, &mut url, scope, headers, false).await
    }

    /// The namespace, for a parent that mirrors several registries (see [`Upstream::ns`]).
    fn add_ns(&self, path: &mut String) {
        if let Some(ns) = &self.ns {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(ns);
        }
    }

    /// After a reload (SIGHUP): take the new credentials and limits, drop cached tokens.
    fn refresh(&self) {
        let now = self
            .live
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if now != self.generation.get() {
            self.generation.set(now);
            *self.credentials.borrow_mut() = self.live.credentials(self.index);
            if let Some(tls) = self.live.tls.read().unwrap().get(self.index) {
                self.client.set_tls(tls.clone());
            }
            self.client.set_limits(self.live.limits());
            *self.tokens.borrow_mut() = Tokens::default();
        }
    }

    async fn send_url(
        &self,
        method: &str,
        url: &mut Url,
        scope: &str,
        headers: &[(&str, &str)],
        may_leave: bool,
    ) -> Result<Response> {
        self.refresh();
        let incoming = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("via"))
            .map(|(_, v)| *v);
        let via = via_forward(incoming);
        let mut challenged = false;
        let mut hops = 0;
        loop {
            let same_origin = url.origin == self.base.origin;
            let authorization = if same_origin {
                self.authorization(scope)
            } else {
                None
            };
            let mut all: Vec<(&str, &str)> = headers
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("via"))
                .copied()
                .collect();
            all.push(("Via", &via));
            if let Some(a) = &authorization {
                all.push(("Authorization", a));
            }
            let sent = self
                .client
                .send(&Request {
                    method,
                    url,
                    headers: &all,
                })
                .await;
            let now = crate::store::index::now_ms();
            let ok = matches!(&sent, Ok(r) if r.status < 500);
            let mark = if ok {
                &self.health.ok_ms
            } else {
                &self.health.err_ms
            };
            mark.store(now, std::sync::atomic::Ordering::Relaxed);
            let resp = sent?;
            if same_origin {
                let (budget, origin) = (&self.health.budget, &self.base.origin);
                let fields = (
                    resp.header("ratelimit-limit"),
                    resp.header("ratelimit-remaining"),
                );
                ratelimit::note(budget, &self.live, self.index, origin, resp.status, fields);
            }
            match resp.status {
                401 if same_origin && !challenged => {
                    challenged = true;
                    let challenge = resp
                        .header("www-authenticate")
                        .and_then(auth::parse_challenge);
                    resp.discard().await;
                    match challenge {
                        Some(c) => self.answer_challenge(c, scope).await?,
                        None => {
                            return Err(Error::upstream(
                                Kind::Unauthorized,
                                "upstream refused without a usable challenge",
                            ))
                        }
                    }
                }
                401 if same_origin
                    && authorization
                        .as_deref()
                        .is_some_and(|a| a.starts_with("Basic ")) =>
                {
                    // The configured credentials themselves were refused (a Bearer token
                    // refused may only lack this repository's scope).
                    self.credentials_rejected();
                    return Ok(resp);
                }
                301 | 302 | 303 | 307 | 308 => {
                    hops += 1;
                    if hops > limits::REDIRECTS_MAX {
                        return Err(Error::upstream(
                            Kind::BadGateway,
                            "too many upstream redirects",
                        ));
                    }
                    let next = resp.header("location").and_then(|l| url.join(l));
                    resp.discard().await;
                    let next = next.ok_or_else(|| {
                        Error::upstream(
                            Kind::BadGateway,
                            "upstream redirect to an unusable location",
                        )
                    })?;
                    if next.origin != self.base.origin && !may_leave {
                        tracing::debug!(from = %url.origin, to = %next.origin, "refused a redirect off the upstream's origin");
                        return Err(Error::upstream(
                            Kind::BadGateway,
                            "upstream redirected off its origin (only blobs may leave it)",
                        ));
                    }
                    *url = next;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Upstream refused the configured credentials: a WARN naming the upstream, once a
    /// minute (a wrong password would otherwise log a line per request).
    fn credentials_rejected(&self) {
        if warn_now(&format!("rejected {}", self.base.origin)) {
            tracing::warn!(upstream = %self.base.origin, "upstream rejected the configured credentials (username/password); requests needing them fail with 401");
        }
    }

    /// The Authorization header for a request to the upstream origin, if upstream has asked
    /// for one and we have it.
    fn authorization(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.borrow();
        match tokens.challenge.as_ref()? {
            Challenge::Basic => self
                .credentials
                .borrow()
                .as_ref()
                .map(|(u, p)| auth::basic(u, p)),
            Challenge::Bearer { .. } => tokens
                .get(scope, Instant::now())
                .map(|t| format!("Bearer {t}")),
        }
    }

    async fn answer_challenge(&self, challenge: Challenge, scope: &str) -> Result<()> {
        self.tokens.borrow_mut().challenge = Some(challenge.clone());
        match challenge {
            Challenge::Basic => {
                if self.credentials.borrow().is_none() {
                    if warn_now(&format!("no credentials {}", self.base.origin)) {
                        tracing::warn!(upstream = %self.base.origin, "upstream asks for Basic credentials and none are configured (proxy.username, proxy.password)");
                    }
                    return Err(Error::upstream(
                        Kind::Unauthorized,
                        "upstream requires credentials; none configured",
                    ));
                }
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let (token, ttl) = self
                    .fetch_token(
                        &realm,
                        service.as_deref(),
                        asked.as_deref().unwrap_or(scope),
                    )
                    .await?;
                self.tokens
                    .borrow_mut()
                    .put(scope, token, ttl, Instant::now());
                Ok(())
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let realm_url = Url::parse(realm).ok_or_else(|| {
            Error::upstream(Kind::Unauthorized, "token realm is not an http(s) URL")
        })?;
        let mut query = String::new();
        if let Some(s) = service {
            query.push_str(&format!("service={}&", crate::route::percent_encode(s)));
        }
        query.push_str(&format!("scope={}", crate::route::percent_encode(scope)));
        let sep = if realm_url.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = Url {
            origin: realm_url.origin.clone(),
            path: format!("{}{sep}{query}", realm_url.path),
        };
        let mut basic = self
            .credentials
            .borrow()
            .as_ref()
            .map(|(u, p)| auth::basic(u, p));
        if basic.is_some()
            && !realm::may_receive_credentials(&self.base.origin, &realm_url, &self.token_realms)
        {
            basic = None;
            if warn_now(&format!("realm {realm_url}")) {
                tracing::warn!(realm = %realm_url, upstream = %self.base.origin, "token realm is on neither the upstream's authority nor its registrable domain, nor in ringcache.upstream.token_realms: not sending the credentials there (asking for an anonymous token)");
            }
        }
        let mut headers = vec![("Accept", "application/json"), ("Via", via_entry())];
        if let Some(b) = &basic {
            headers.push(("Authorization", b));
        }
        let resp = self
            .client
            .send(&Request {
                method: "GET",
                url: &url,
                headers: &headers,
            })
            .await
            .map_err(|e| Error {
                kind: Kind::Unavailable,
                context: "token endpoint unreachable",
                ..e
            })?;
        let status = resp.status;
        let body = resp.read_capped(limits::SMALL_BODY_BYTES_MAX).await?;
        match status {
            200 => {}
            401 | 403 => {
                if basic.is_some() {
                    self.credentials_rejected();
                }
                return Err(Error::upstream(
                    Kind::Unauthorized,
                    "token endpoint refused the credentials",
                ));
            }
            _ => return Err(Error::upstream(Kind::Unavailable, "token endpoint failed")),
        }
        let t: auth::TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::upstream(Kind::Unavailable, "token endpoint sent invalid JSON").with_cause(e)
        })?;
        let ttl = t.ttl();
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::upstream(Kind::Unavailable, "token endpoint sent no token"))?;
        Ok((token, ttl))
    }
}

/// What a client is told for content that is not cached while `ringcache.offline` is on:
/// the 404 of its kind (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN), saying why. Checked
/// before any upstream request, so an offline cache never dials.
pub fn offline(unknown: Kind) -> Error {
    Error::client(
        unknown,
        "offline: not in the cache, and this mirror does not ask upstream (ringcache.offline)",
    )
}

/// The 404 kind for a request `tail` (`manifests/...`, `blobs/...`, `tags/list`).
fn unknown_of(tail: &str) -> Kind {
    if tail.starts_with("blobs/") {
        Kind::BlobUnknown
    } else if tail.starts_with("manifests/") {
        Kind::ManifestUnknown
    } else {
        Kind::NameUnknown
    }
}

/// Docker Hub keeps its official images under `library/`: `alpine` is `library/alpine` there.
pub fn upstream_name(docker_hub: bool, name: &str) -> std::borrow::Cow<'_, str> {
    if docker_hub && !name.contains('/') {
        format!("library/{name}").into()
    } else {
        name.into()
    }
}

impl Upstream {
    /// GET bytes `from..=to` (or `from..` to the end) of `tail` in `name` (with the client's
    /// Accept and Via, if any). Returns the response
    /// and how many of its leading bytes to skip: 0 for a 206 that starts at `from`, `from` for a
    /// 200 (upstream ignored the Range). Any other answer is an error; a 429/503 carrying
    /// `Retry-After` (seconds) is honoured, within `RETRY_AFTER_MAX`, before returning it.
    pub async fn get_range(
        &self,
        name: &str,
        tail: &str,
        (accept, via): (Option<&str>, Option<&str>),
        from: u64,
        to: Option<u64>,
        unknown: Kind,
    ) -> Result<(Response, u64)> {
        let range = match to {
            Some(to) => format!("bytes={from}-{to}"),
            None => format!("bytes={from}-"),
        };
        let mut headers = vec![("Range", range.as_str())];
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        if let Some(v) = via {
            headers.push(("Via", v));
        }
        let resp = self.send("GET", name, tail, &headers).await?;
        match resp.status {
            206 => {
                let first = resp
                    .header("content-range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if first != Some(from) {
                    return Err(Error::upstream(
                        Kind::BadGateway,
                        "upstream answered another range",
                    ));
                }
                Ok((resp, 0))
            }
            200 => Ok((resp, from)),
            s => {
                if let Some(secs) = resp
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    let pause = Duration::from_secs(secs).min(limits::RETRY_AFTER_MAX);
                    tracing::info!(status = s, ?pause, "upstream asked to retry after a pause");
                    monoio::time::sleep(pause).await;
                }
                Err(status_error(s, unknown))
            }
        }
    }
}

/// The error a client is told for an upstream status that is not a success.
pub fn status_error(status: u16, unknown: Kind) -> Error {
    let kind = match status {
        404 => unknown,
        401 => Kind::Unauthorized,
        403 => Kind::Denied,
        429 => Kind::TooManyRequests,
        500..=599 => Kind::Unavailable,
        _ => Kind::BadGateway,
    };
    Error::upstream(kind, "upstream answered with an error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_entries_and_loops() {
        let me = via_entry();
        let id = instance();
        assert_eq!(me, format!("1.1 {id} (ringcache)"));
        assert_eq!(id.len(), 16);
        let cases: &[(String, bool)] = &[
            (me.to_string(), true),
            (format!("1.0 proxy-a, {me}"), true),
            (format!("{me}, 1.1 edge (ringcache)"), true),
            (format!("HTTP/1.1 {id}"), true),
            (format!("1.1   {id}   (comment, with comma)"), true),
            ("1.1 other (ringcache)".into(), false),
            (format!("1.1 {id}x (ringcache)"), false),
            (format!("1.1 proxy ({id})"), false),
            (String::new(), false),
        ];
        for (via, want) in cases {
            assert_eq!(via_loops(via), *want, "{via}");
        }
        assert_eq!(via_forward(None), me);
        assert_eq!(via_forward(Some(" ")), me);
        assert_eq!(via_forward(Some("1.0 a")), format!("1.0 a, {me}"));
    }

    #[test]
    fn warnings_are_rate_limited_per_subject() {
        assert!(warn_now("test subject a"));
        assert!(!warn_now("test subject a"));
        assert!(warn_now("test subject b"));
    }

    #[test]
    fn docker_hub_names() {
        for (hub, name, want) in [
            (true, "alpine", "library/alpine"),
            (true, "library/alpine", "library/alpine"),
            (true, "bitnami/redis", "bitnami/redis"),
            (false, "alpine", "alpine"),
        ] {
            assert_eq!(upstream_name(hub, name), want, "{hub} {name}");
        }
    }

    #[test]
    fn statuses_map_to_oci_errors() {
        for (status, kind) in [
            (404, Kind::BlobUnknown),
            (401, Kind::Unauthorized),
            (403, Kind::Denied),
            (429, Kind::TooManyRequests),
            (503, Kind::Unavailable),
            (418, Kind::BadGateway),
        ] {
            assert_eq!(
                status_error(status, Kind::BlobUnknown).kind,
                kind,
                "{status}"
            );
        }
    }
}
