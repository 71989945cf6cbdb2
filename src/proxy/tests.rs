//! `proxy::serve`'s decisions against a scripted upstream (a thread on loopback answering by
//! method and path, counting what it is asked) and a temp store, with a real worker context and
//! a loopback socket for the client: hit, miss, join, cross-repository confirmation,
//! stale-if-error and an upstream 404 honoured. No binary, no sleeps.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use monoio::io::AsyncReadRent;
use monoio::net::{TcpListener, TcpStream};

use super::{serve, Request};
use crate::config::Config;
use crate::digest::Digest;
use crate::error::{Kind, Result};
use crate::http::response::Exchange;
use crate::metrics::Cache;
use crate::route::{Method, Reference, Route};
use crate::upstream::Upstreams;
use crate::worker::{Shared, Worker};

/// Answers by "METHOD /path" (the query dropped); 404 for anything else. Counts requests.
#[derive(Default)]
struct Script {
    answers: Mutex<HashMap<String, Vec<u8>>>,
    asked: Mutex<Vec<String>>,
}

impl Script {
    fn answer(&self, key: &str, response: Vec<u8>) {
        self.answers
            .lock()
            .unwrap()
            .insert(key.to_string(), response);
    }

    fn count(&self, key: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

fn origin(script: Arc<Script>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("");
            let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
            let key = format!("{method} {path}");
            script.asked.lock().unwrap().push(key.clone());
            let answer = script.answers.lock().unwrap().get(&key).cloned();
            let answer = answer.unwrap_or_else(|| {
                b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec()
            });
            let _ = conn.write_all(&answer);
        }
    });
    addr
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A worker on a temp store whose upstream is the scripted origin.
fn worker(addr: std::net::SocketAddr, extra: &str, dir: &std::path::Path) -> Rc<Worker> {
    let config = Config::from_yaml(&format!(
        "proxy: {{remoteurl: http://{addr}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nringcache: {{workers: 1{extra}}}\n",
        dir.display()
    ))
    .unwrap();
    let tls = crate::live::tls_of(&config).unwrap();
    let shared = Arc::new(Shared {
        fills: crate::fill::Fills::new(16),
        tags: Default::default(),
        referrers: Default::default(),
        drain: Default::default(),
        changes: crate::store::changes::queue().0,
        heartbeats: Arc::new(crate::service::Heartbeats::new(1)),
        counters: (0..1).map(|_| Default::default()).collect(),
        tallies: Default::default(),
        upstream_health: config.all_upstreams().map(|_| Default::default()).collect(),
        health_down: Default::default(),
        driver: Default::default(),
        live: Arc::new(crate::live::Reloadable::new(&config, tls)),
        stopping: Default::default(),
        store: crate::store::Store::open(dir).unwrap(),
        registries: config.registries(),
        config,
    });
    let upstream = Upstreams::new(
        &shared.config,
        &shared.live.limits(),
        &shared.upstream_health,
        &shared.live,
    );
    Rc::new(Worker {
        id: 0,
        shared,
        upstream,
        connections: Default::default(),
        connections_high: Default::default(),
        head_room_high: Default::default(),
        connections_last: Default::default(),
        files: Default::default(),
        buffers: Default::default(),
        tags: Default::default(),
        idle: Default::default(),
    })
}

/// What one request got: the result, its status and cache label, and the bytes the client
/// read (head and body).
struct Got {
    result: Result<()>,
    status: u16,
    cache: Cache,
    bytes: Vec<u8>,
}

/// Serve one request through a loopback socket pair.
async fn ask(w: &Rc<Worker>, req: Request) -> Got {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut sock, _) = listener.accept().await.unwrap();
    // The client reads while the request is served (a body can outgrow the socket buffers).
    let server = async move {
        let limits = w.shared.live.limits();
        let mut x = Exchange::new(&mut sock, &w.buffers, limits.send_stall, false, true, 1);
        let result = serve(w, &req, &mut x).await;
        let _ = x.flush_head().await;
        let out = (result, x.status, x.cache);
        drop(x);
        drop(sock);
        out
    };
    let reader = async move {
        let mut bytes = Vec::new();
        loop {
            let (n, buf) = client.read(vec![0u8; 64 * 1024]).await;
            match n {
                Ok(0) | Err(_) => return bytes,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    let ((result, status, cache), bytes) = monoio::join!(server, reader);
    Got {
        result,
        status,
        cache,
        bytes,
    }
}

fn blob(name: &str, digest: Digest) -> Request {
    Request {
        method: Method::Get,
        route: Route::Blob {
            name: name.into(),
            digest,
        },
        accept: None,
        range: None,
        via: None,
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_miss_fetches_once_then_hits_and_a_concurrent_request_joins_the_fill() {
    let script = Arc::new(Script::default());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::of(&body);
    let get = format!("GET /v2/a/b/blobs/{d}");
    script.answer(&get, response("200 OK", &[], &body));
    let addr = origin(script.clone());
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let w = worker(addr, "", dir.path());
        // Two at once: the first leads the fill, the second follows it.
        let (first, second) = monoio::join!(ask(&w, blob("a/b", d)), ask(&w, blob("a/b", d)));
        for got in [&first, &second] {
            assert!(got.result.is_ok(), "{:?}", got.result);
            assert_eq!(got.status, 200);
            assert!(got.bytes.ends_with(&body), "the body, whole");
        }
        assert_eq!((first.cache, second.cache), (Cache::Miss, Cache::Coalesced));
        assert_eq!(script.count(&get), 1, "one upstream GET for both");
        // Committed: the next one is a hit, upstream not asked.
        let mut waited = 0;
        while !w.shared.store.index.contains(&d) {
            assert!(waited < 10_000, "never committed");
            waited += 1;
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let third = ask(&w, blob("a/b", d)).await;
        assert_eq!((third.status, third.cache), (200, Cache::Hit));
        assert!(third.bytes.ends_with(&body));
        assert_eq!(script.count(&get), 1);
    });
}

#[test]
fn another_repository_sees_a_cached_digest_only_once_upstream_confirms_it_there() {
    let script = Arc::new(Script::default());
    let body = b"layer".repeat(1000);
    let d = Digest::of(&body);
    script.answer(
        &format!("GET /v2/a/b/blobs/{d}"),
        response("200 OK", &[], &body),
    );
    script.answer(
        &format!("HEAD /v2/c/d/blobs/{d}"),
        response("200 OK", &[], b""),
    );
    let addr = origin(script.clone());
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let w = worker(addr, "", dir.path());
        assert_eq!(ask(&w, blob("a/b", d)).await.status, 200);
        let mut waited = 0;
        while !w.shared.store.index.contains(&d) {
            assert!(waited < 10_000, "never committed");
            waited += 1;
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Not in e/f upstream (404 to the HEAD): refused, though the bytes are here.
        let refused = ask(&w, blob("e/f", d)).await;
        assert!(
            matches!(&refused.result, Err(e) if e.kind == Kind::BlobUnknown),
            "{:?}",
            refused.result
        );
        assert_eq!(script.count(&format!("HEAD /v2/e/f/blobs/{d}")), 1);
        // In c/d upstream: confirmed once, then served from the store.
        for _ in 0..2 {
            let got = ask(&w, blob("c/d", d)).await;
            assert_eq!((got.status, got.cache), (200, Cache::Hit));
        }
        assert_eq!(script.count(&format!("HEAD /v2/c/d/blobs/{d}")), 1);
        assert_eq!(script.count(&format!("GET /v2/c/d/blobs/{d}")), 0);
    });
}

fn tag(name: &str, tag: &str) -> Request {
    Request {
        method: Method::Get,
        route: Route::Manifest {
            name: name.into(),
            reference: Reference::Tag(tag.into()),
        },
        accept: None,
        range: None,
        via: None,
    }
}

#[test]
fn a_tag_is_served_stale_when_upstream_fails_and_dropped_when_upstream_says_404() {
    let script = Arc::new(Script::default());
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let d = Digest::of(manifest);
    let text = d.text();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let headers = [
        ("Content-Type", mt),
        ("Docker-Content-Digest", text.as_str()),
    ];
    script.answer(
        "HEAD /v2/a/b/manifests/v1",
        response("200 OK", &headers, b""),
    );
    script.answer(
        &format!("GET /v2/a/b/manifests/{d}"),
        response("200 OK", &headers, manifest),
    );
    let addr = origin(script.clone());
    let dir = tempfile::tempdir().unwrap();
    run(async {
        // Every tag request asks upstream (no freshness window).
        let w = worker(addr, ", tags: {fresh_for: 0s}", dir.path());
        let first = ask(&w, tag("a/b", "v1")).await;
        assert_eq!(first.status, 200, "{:?}", first.result);
        assert!(first.bytes.ends_with(manifest));
        let mut waited = 0;
        while !w.shared.store.index.contains(&d) {
            assert!(waited < 10_000, "never committed");
            waited += 1;
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Upstream fails (503): the cached resolution is served (stale-if-error).
        script.answer(
            "HEAD /v2/a/b/manifests/v1",
            response("503 Service Unavailable", &[], b""),
        );
        let stale = ask(&w, tag("a/b", "v1")).await;
        assert_eq!(stale.status, 200, "{:?}", stale.result);
        assert!(stale.bytes.ends_with(manifest));
        // Upstream says the tag is gone: that is honoured, and the resolution dropped.
        script.answer(
            "HEAD /v2/a/b/manifests/v1",
            response("404 Not Found", &[], b""),
        );
        let gone = ask(&w, tag("a/b", "v1")).await;
        assert!(
            matches!(&gone.result, Err(e) if e.kind == Kind::ManifestUnknown),
            "{:?}",
            gone.result
        );
        script.answer(
            "HEAD /v2/a/b/manifests/v1",
            response("503 Service Unavailable", &[], b""),
        );
        let after = ask(&w, tag("a/b", "v1")).await;
        assert!(
            after.result.is_err() && after.status != 200,
            "a tag upstream dropped is not served stale"
        );
    });
}
