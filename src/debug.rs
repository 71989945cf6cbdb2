//! The debug listener (`http.debug.addr`, as in the reference registry's config): Prometheus
//! `/metrics`, `GET /debug/health`, and `POST /debug/health/down|up` for a manual drain. Off the
//! data path, with blocking sockets: an accepting thread and a thread per connection, at most
//! [`CONNECTIONS_MAX`] at once, each with a whole-head deadline and a size limit — a slow client
//! costs one thread for [`HEAD_TIMEOUT`] at most. When every slot is taken, a new connection
//! takes the slot of the oldest one still sending its head (slow clients evict each other; a
//! probe, which sends its head at once, is not waiting long enough to be the oldest), and only
//! when none is in its head is the new one refused with a 503.
//!
//! Browsers must not reach it: a web page can send a "simple" cross-origin POST (no preflight)
//! to a loopback address and drain the node. Requests carrying `Origin`, or a `Sec-Fetch-Site`
//! other than `same-origin`/`none`, are refused (403), and the POSTs need the header
//! `X-Ringcache-Admin: 1`, which no page can add without a CORS preflight (which fails here).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{render, Gauges};
use crate::store::incident::Class;
use crate::store::index::now_ms;
use crate::worker::Shared;

use crate::limits::DEBUG_BODY_DRAIN_MAX as BODY_DRAIN_MAX;
pub use crate::limits::DEBUG_CONNECTIONS_MAX as CONNECTIONS_MAX;
use crate::limits::DEBUG_HEAD_BYTES_MAX as HEAD_MAX;
pub use crate::limits::DEBUG_HEAD_TIMEOUT as HEAD_TIMEOUT;
use crate::limits::DEBUG_STACK_BYTES as STACK_BYTES;
use crate::limits::DEBUG_THREADS_MAX as THREADS_MAX;
use crate::limits::DEBUG_WRITE_TIMEOUT as WRITE_TIMEOUT;

/// The header a POST must carry (a custom header makes a browser's request non-simple).
pub const ADMIN_HEADER: &str = "X-Ringcache-Admin";
/// Upstream counts as unreachable while its last failure (after its last success) is younger
/// than this.
const UPSTREAM_WINDOW_MS: u64 = 60_000;
/// A worker whose heartbeat (every [`crate::service::HEARTBEAT_EVERY`]) is older than this is
/// not answering: its event loop is stuck (or it stopped).
const WORKER_STALE_MS: u64 = 2_000;

/// Bind the debug listener and serve it from a thread of its own.
pub fn start(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringcache-debug".into())
        .spawn(move || accept(shared, listener))?;
    tracing::info!(addr = %local, "debug listener (metrics, health) on {local}");
    Ok(local)
}

/// Counts a connection thread while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections still sending their head, oldest first (a clone of each socket, to shut it down
/// when its slot is needed).
#[derive(Default)]
struct Heads {
    next: u64,
    waiting: std::collections::VecDeque<(u64, TcpStream)>,
}

impl Heads {
    fn lock(m: &Mutex<Heads>) -> std::sync::MutexGuard<'_, Heads> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shut the oldest connection still in its head down; whether there was one.
    fn evict_oldest(m: &Mutex<Heads>) -> bool {
        let oldest = Heads::lock(m).waiting.pop_front();
        match oldest {
            Some((_, conn)) => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }
}

/// A connection's place among those still sending their head, left when dropped.
struct Waiting<'a> {
    heads: &'a Mutex<Heads>,
    id: u64,
}

impl<'a> Waiting<'a> {
    fn enter(heads: &'a Mutex<Heads>, conn: &TcpStream) -> Waiting<'a> {
        let mut h = Heads::lock(heads);
        let id = h.next;
        h.next += 1;
        if let Ok(clone) = conn.try_clone() {
            h.waiting.push_back((id, clone));
        }
        Waiting { heads, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        Heads::lock(self.heads)
            .waiting
            .retain(|(id, _)| *id != self.id);
    }
}

fn accept(shared: Arc<Shared>, listener: TcpListener) {
    let open = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Heads::default()));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "debug listener: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let before = open.fetch_add(1, Ordering::AcqRel);
        if before >= THREADS_MAX || (before >= CONNECTIONS_MAX && !Heads::evict_oldest(&heads)) {
            open.fetch_sub(1, Ordering::AcqRel);
            refuse(conn);
            continue;
        }
        let slot = Slot(open.clone());
        let shared = shared.clone();
        let heads = heads.clone();
        let spawned = std::thread::Builder::new()
            .name("ringcache-debug-conn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(&shared, &heads, conn) {
                    tracing::debug!(error = %e, "debug request failed");
                }
            });
        // On failure the closure (and the slot in it) is dropped: the count goes back down.
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "debug listener: cannot start a connection thread");
        }
    }
}

/// Over [`CONNECTIONS_MAX`]: a short 503 without waiting for the request, and close.
fn refuse(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(true);
    let body = "too many debug connections\n";
    let _ = write!(
        conn,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// What the handler needs from a request head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    /// `Origin` was sent, or `Sec-Fetch-Site` says another site: a browser on some web page.
    cross_origin: bool,
    /// `X-Ringcache-Admin: 1` was sent.
    admin: bool,
    content_length: u64,
    /// Bytes after the head already read.
    body_read: usize,
}

/// Parse a complete head (`None`: not complete yet); `Err` for a malformed one.
fn parse(buf: &[u8]) -> Result<Option<Request>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        body_read: buf.len().saturating_sub(len),
        ..Default::default()
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("origin") {
            out.cross_origin = true;
        } else if h.name.eq_ignore_ascii_case("sec-fetch-site") {
            if !matches!(value, "same-origin" | "none") {
                out.cross_origin = true;
            }
        } else if h.name.eq_ignore_ascii_case(ADMIN_HEADER) {
            out.admin = value == "1";
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Unparseable: treated as a large body (not drained; the connection closes anyway).
            out.content_length = value.parse().unwrap_or(u64::MAX);
        }
    }
    Ok(Some(out))
}

/// Read a head within [`HEAD_TIMEOUT`] and [`HEAD_MAX`], answer it, close.
fn serve(shared: &Shared, heads: &Mutex<Heads>, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let waiting = Waiting::enter(heads, &conn);
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = vec![0u8; HEAD_MAX];
    let mut len = 0;
    let req = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        // `len < HEAD_MAX` here: a full buffer without a complete head is refused below.
        let n = conn.read(buf.get_mut(len..).unwrap_or_default())?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        match parse(buf.get(..len).unwrap_or_default()) {
            Ok(Some(req)) => break req,
            Ok(None) if len < HEAD_MAX => continue,
            _ => return respond(&mut conn, 400, "text/plain", "bad request\n"),
        }
    };
    drop(waiting);
    drain_body(&mut conn, &req, deadline);
    if req.cross_origin {
        tracing::warn!(method = %req.method.escape_debug(), path = %req.path.escape_debug(), "debug listener: refused a request from a web page (Origin / Sec-Fetch-Site)");
        return respond(
            &mut conn,
            403,
            "text/plain",
            "cross-origin requests are refused\n",
        );
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => {
            let mut text = render(&shared.counters, &gauges(shared));
            budgets(shared, &mut text);
            respond(
                &mut conn,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
            )
        }
        ("GET", "/debug/health") => {
            let failing = checks(shared);
            let upstreams = upstreams_failing(shared);
            let mut body: serde_json::Map<String, serde_json::Value> = failing
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_str().into()))
                .collect();
            // Each failing upstream by name: reported, and the node stays healthy while any
            // upstream answers (the others' clients are served).
            if !upstreams.is_empty() {
                body.insert(
                    "upstreams".into(),
                    serde_json::Value::Object(
                        upstreams.into_iter().map(|(k, v)| (k, v.into())).collect(),
                    ),
                );
            }
            let status = if failing.is_empty() { 200 } else { 503 };
            let body = serde_json::Value::Object(body).to_string();
            respond(&mut conn, status, "application/json", &body)
        }
        ("POST", "/debug/health/down" | "/debug/health/up") if !req.admin => respond(
            &mut conn,
            403,
            "text/plain",
            "POST needs the header X-Ringcache-Admin: 1\n",
        ),
        // Draining a node is for its operators: from this host, or from the management
        // networks `ringcache.admin_from` lists (the listener may face a load balancer's
        // network for health checks, and a drain from any host there would take the site down).
        ("POST", "/debug/health/down" | "/debug/health/up")
            if !conn
                .peer_addr()
                .is_ok_and(|p| admin_allowed(p.ip(), &shared.config.admin_from)) =>
        {
            tracing::warn!(peer = ?conn.peer_addr().ok(), "debug listener: refused a drain POST from an address not in ringcache.admin_from");
            respond(
                &mut conn,
                403,
                "text/plain",
                "POST is taken from loopback and ringcache.admin_from only\n",
            )
        }
        ("POST", "/debug/health/down") => {
            shared.health_down.store(true, Ordering::SeqCst);
            tracing::warn!(
                "marked down by POST /debug/health/down: health checks and GET / answer 503"
            );
            respond(&mut conn, 200, "application/json", "{}")
        }
        ("POST", "/debug/health/up") => {
            shared.health_down.store(false, Ordering::SeqCst);
            tracing::info!("marked up by POST /debug/health/up");
            respond(&mut conn, 200, "application/json", "{}")
        }
        _ => respond(&mut conn, 404, "text/plain", "404 page not found\n"),
    }
}

/// Whether a drain `POST` from `peer` is taken: loopback, or a network the operator listed.
fn admin_allowed(peer: std::net::IpAddr, admin_from: &crate::http::proxyproto::Allow) -> bool {
    peer.to_canonical().is_loopback() || admin_from.contains(peer)
}

/// Read and drop a request body of up to [`BODY_DRAIN_MAX`] bytes before answering: closing
/// with unread bytes sends a reset, which can destroy the answer before the client reads it.
fn drain_body(conn: &mut TcpStream, req: &Request, deadline: Instant) {
    if req.content_length > BODY_DRAIN_MAX {
        return;
    }
    let mut left = req.content_length.saturating_sub(req.body_read as u64);
    let mut sink = [0u8; 4096];
    while left > 0 {
        let t = deadline.saturating_duration_since(Instant::now());
        if t.is_zero() || conn.set_read_timeout(Some(t)).is_err() {
            return;
        }
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// The failing health checks, by name, with what is wrong.
pub fn checks(shared: &Shared) -> Vec<(&'static str, String)> {
    let mut failing = Vec::new();
    if shared.health_down.load(Ordering::SeqCst) {
        failing.push((
            "manual",
            "marked down with POST /debug/health/down".to_string(),
        ));
    }
    // Every worker's event loop answers (a stuck one stops beating; a dead one aborts the
    // process: see service::abort_on_panic). Draining, workers stop once they are done.
    let stale = shared.heartbeats.stale(WORKER_STALE_MS);
    if shared.drain.is_draining() {
        failing.push((
            "draining",
            "stopping: finishing in-flight requests and fills".to_string(),
        ));
    } else if !stale.is_empty() {
        let names: Vec<String> = stale
            .iter()
            .map(|(w, age)| format!("w{w} (last heartbeat {age} ms ago)"))
            .collect();
        failing.push(("workers", format!("not answering: {}", names.join(", "))));
    }
    // The store is writable (a file can be created and removed in ingest/) and commits land
    // (no shard directory that its last commit could not use is still unusable).
    match shared.store.probe() {
        Ok(()) => {
            if let Some(why) = shared.store.commit_health() {
                failing.push(("store", why));
            }
        }
        Err(e) => failing.push(("store", format!("not writable: {e}"))),
    }
    let down = upstreams_failing(shared);
    if !down.is_empty() && down.len() == shared.upstream_health.len() {
        let what = if down.len() == 1 {
            "unreachable or failing (5xx) in the last minute"
        } else {
            "every upstream unreachable or failing (5xx) in the last minute"
        };
        failing.push(("upstream", what.to_string()));
    }
    failing
}

/// The upstreams that failed (unreachable or 5xx) more recently than they answered, in the
/// last minute: (registry name, what is wrong).
pub fn upstreams_failing(shared: &Shared) -> Vec<(String, String)> {
    let now = now_ms();
    shared
        .upstream_health
        .iter()
        .enumerate()
        .filter_map(|(u, h)| {
            let ok = h.ok_ms.load(Ordering::Relaxed);
            let err = h.err_ms.load(Ordering::Relaxed);
            (err > ok && now.saturating_sub(err) < UPSTREAM_WINDOW_MS).then(|| {
                (
                    shared.registries.name(u).to_string(),
                    "unreachable or failing (5xx) in the last minute".to_string(),
                )
            })
        })
        .collect()
}

fn gauges(shared: &Shared) -> Gauges {
    let incidents = shared.store.incidents.by_class();
    Gauges {
        fills_inflight: shared.fills.inflight() as u64,
        store_bytes: shared.store.index.bytes(),
        store_bytes_max: shared.config.size_max_bytes,
        store_entries: shared.store.index.len() as u64,
        evictions: shared.tallies.evictions.load(Ordering::Relaxed),
        expirations: shared.tallies.expirations.load(Ordering::Relaxed),
        fills_failed: shared.tallies.failed(),
        incidents: [Class::NoSpace, Class::ReadOnly, Class::Io]
            .into_iter()
            .zip(incidents)
            .map(|(c, n)| (c.name(), n))
            .collect(),
        driver: shared.driver.get().copied().unwrap_or("starting"),
        workers: shared.counters.len(),
        upstreams: (0..shared.registries.len())
            .map(|u| shared.registries.name(u).to_string())
            .collect(),
    }
}

/// Each upstream's pull budget and 429s ([`crate::upstream::ratelimit`]).
fn budgets(shared: &Shared, text: &mut String) {
    let names: Vec<String> = (0..shared.registries.len())
        .map(|u| shared.registries.name(u).to_string())
        .collect();
    let readings: Vec<_> = shared
        .upstream_health
        .iter()
        .map(|h| h.budget.read())
        .collect();
    crate::upstream::ratelimit::render(text, &names, &readings);
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::response::reason(status),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_are_taken_from_loopback_and_admin_from_only() {
        let none = crate::http::proxyproto::Allow::default();
        let mgmt = crate::http::proxyproto::Allow::parse(&["10.9.0.0/16"]).unwrap();
        for (peer, allow, want) in [
            ("127.0.0.1", &none, true),
            ("127.3.2.1", &none, true),
            ("::1", &none, true),
            ("::ffff:127.0.0.1", &none, true),
            ("10.9.1.2", &none, false),
            ("10.9.1.2", &mgmt, true),
            ("10.8.1.2", &mgmt, false),
            ("192.0.2.1", &mgmt, false),
        ] {
            assert_eq!(admin_allowed(peer.parse().unwrap(), allow), want, "{peer}");
        }
    }

    fn req(head: &str) -> Request {
        parse(head.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn web_pages_and_simple_posts_are_told_apart() {
        let base = "POST /debug/health/down HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        // (extra headers, cross-origin, admin)
        let cases: &[(&str, bool, bool)] = &[
            ("", false, false),
            ("X-Ringcache-Admin: 1\r\n", false, true),
            ("x-ringcache-admin:  1 \r\n", false, true),
            ("X-Ringcache-Admin: yes\r\n", false, false),
            ("Content-Type: text/plain\r\n", false, false),
            ("Origin: http://evil.example\r\n", true, false),
            ("Origin: null\r\nX-Ringcache-Admin: 1\r\n", true, true),
            ("Sec-Fetch-Site: cross-site\r\n", true, false),
            ("Sec-Fetch-Site: same-site\r\n", true, false),
            ("Sec-Fetch-Site: same-origin\r\n", false, false),
            ("Sec-Fetch-Site: none\r\n", false, false),
        ];
        for (extra, cross, admin) in cases {
            let r = req(&format!("{base}{extra}\r\n"));
            assert_eq!((r.cross_origin, r.admin), (*cross, *admin), "{extra:?}");
        }
        let r = req(&format!("{base}Content-Length: 5\r\n\r\nab"));
        assert_eq!((r.content_length, r.body_read), (5, 2));
        assert_eq!(parse(base.as_bytes()).unwrap(), None, "partial");
        assert!(parse(b"\x01\x02 / HTTP/1.1\r\n\r\n").is_err());
    }
}
