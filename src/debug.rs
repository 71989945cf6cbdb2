//! The debug listener (`http.debug.addr`, as in the reference registry's config): Prometheus
//! `/metrics`, `GET /debug/health`, and `POST /debug/health/down|up` for a manual drain. It runs
//! on a thread of its own with blocking sockets, off the data path; one request at a time, each
//! with a read timeout and a size limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{render, Gauges};
use crate::store::incident::Class;
use crate::store::index::now_ms;
use crate::worker::Shared;

/// A health request head is small; anything bigger is refused.
const HEAD_MAX: usize = 8 * 1024;
/// Upstream counts as unreachable while its last failure (after its last success) is younger
/// than this.
const UPSTREAM_WINDOW_MS: u64 = 60_000;

/// Bind the debug listener and serve it on its own thread.
pub fn start(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringcache-debug".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Err(e) = serve(&shared, conn) {
                    tracing::debug!(error = %e, "debug request failed");
                }
            }
        })?;
    tracing::info!(addr = %local, "debug listener (metrics, health) on {local}");
    Ok(local)
}

fn serve(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; HEAD_MAX];
    let mut len = 0;
    let (method, path) = loop {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                );
            }
            Ok(httparse::Status::Partial) if len < HEAD_MAX => continue,
            _ => return respond(&mut conn, 400, "text/plain", "bad request\n"),
        }
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/metrics") => {
            let text = render(&shared.counters, &gauges(shared));
            respond(
                &mut conn,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
            )
        }
        ("GET", "/debug/health") => {
            let failing = checks(shared);
            if failing.is_empty() {
                respond(&mut conn, 200, "application/json", "{}")
            } else {
                let body = serde_json::Value::Object(
                    failing
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect(),
                );
                respond(&mut conn, 503, "application/json", &body.to_string())
            }
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

/// The failing health checks, by name, with what is wrong.
pub fn checks(shared: &Shared) -> Vec<(&'static str, String)> {
    let mut failing = Vec::new();
    if shared.health_down.load(Ordering::SeqCst) {
        failing.push((
            "manual",
            "marked down with POST /debug/health/down".to_string(),
        ));
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
    let ok = shared.upstream_health.ok_ms.load(Ordering::Relaxed);
    let err = shared.upstream_health.err_ms.load(Ordering::Relaxed);
    if err > ok && now_ms().saturating_sub(err) < UPSTREAM_WINDOW_MS {
        failing.push((
            "upstream",
            "unreachable or failing (5xx) in the last minute".to_string(),
        ));
    }
    failing
}

fn gauges(shared: &Shared) -> Gauges {
    let incidents = shared.store.incidents.by_class();
    Gauges {
        fills_inflight: shared.fills.inflight() as u64,
        store_bytes: shared.store.index.bytes(),
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
    }
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::conn::reason(status),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}
