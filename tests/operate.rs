//! Operating ringcache: the debug listener's Prometheus metrics (checked for the reference
//! registry's names and for exact counts after a known sequence of requests), health checks and
//! manual down/up, the access log, JSON logs, and journal-friendly logs.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::upstream::{Blob, Fault, TestUpstream};
use support::{http, image, Proc, Ringcache};

/// Parse Prometheus text exposition: every sample line must be `name{labels} value`.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = http::get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let mut out = HashMap::new();
    for line in r.text().lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        if key.contains('{') {
            assert!(key.ends_with('}'), "bad labels in {line:?}");
        }
        out.insert(
            key.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        );
    }
    out
}

#[test]
fn metrics_have_the_reference_names_and_exact_counts() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    let a = up.add_blob(image::pseudo_random(1, 1000), Fault::None);
    let b = up.add_blob_with(Blob {
        data: Arc::new(image::pseudo_random(2, 5000)),
        gated: true,
        ..Default::default()
    });
    let missing = format!("sha256:{}", "1".repeat(64));
    // 1 miss + 2 hits of A (a client may have the verified body before the commit ends:
    // the hits come after it).
    for i in 0..3 {
        assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{a}")).status, 200);
        if i == 0 {
            rc.proc
                .wait_count(&["fill committed"], 1, Duration::from_secs(10));
        }
    }
    // 4 clients on B: 1 miss, 3 coalesced.
    let barrier = Arc::new(Barrier::new(4));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (bar, addr, p) = (barrier.clone(), rc.addr, format!("/v2/x/blobs/{b}"));
            std::thread::spawn(move || {
                bar.wait();
                http::get(addr, &p).status
            })
        })
        .collect();
    rc.proc
        .wait_count(&["fill joined"], 3, Duration::from_secs(10));
    up.open_gate();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert_eq!(
        http::get(rc.addr, &format!("/v2/x/blobs/{missing}")).status,
        404
    );
    assert_eq!(http::get(rc.addr, "/v2/BAD/blobs/x").status, 400);
    assert_eq!(http::request(rc.addr, "HEAD", "/v2/", &[], b"").status, 200);
    rc.proc
        .wait_count(&["fill committed"], 2, Duration::from_secs(10));
    // Each request is counted just before its access-log line, and a committed fill leaves the
    // in-flight map just after its log line: wait for those events, not for time.
    rc.proc
        .wait_count(&["ringcache::access"], 10, Duration::from_secs(10));
    let m = support::eventually(
        Duration::from_secs(10),
        "fills leave the in-flight map",
        || {
            let m = scrape(dbg);
            (m.get("ringcache_fills_inflight") == Some(&0.0)).then_some(m)
        },
    );
    let want: &[(&str, f64)] = &[
        (
            "registry_http_requests_total{code=\"200\",method=\"GET\"}",
            7.0,
        ),
        (
            "registry_http_requests_total{code=\"404\",method=\"GET\"}",
            1.0,
        ),
        (
            "registry_http_requests_total{code=\"400\",method=\"GET\"}",
            1.0,
        ),
        (
            "registry_http_requests_total{code=\"200\",method=\"HEAD\"}",
            1.0,
        ),
        (
            "registry_http_request_duration_seconds_count{method=\"GET\"}",
            9.0,
        ),
        ("registry_proxy_requests_total{type=\"blob\"}", 8.0),
        ("registry_proxy_hits_total{type=\"blob\"}", 2.0),
        ("registry_proxy_misses_total{type=\"blob\"}", 6.0),
        ("registry_proxy_pulled_bytes_total{type=\"blob\"}", 6000.0),
        (
            "registry_proxy_pushed_bytes_total{type=\"blob\"}",
            3000.0 + 20000.0,
        ),
        ("ringcache_fills_started_total", 3.0),
        ("ringcache_fill_followers_coalesced_total", 3.0),
        ("ringcache_upstream_bytes_avoided_total", 15000.0),
        (
            "ringcache_fills_failed_total{reason=\"upstream_status\"}",
            1.0,
        ),
        ("ringcache_fills_inflight", 0.0),
        ("ringcache_store_entries", 2.0),
        ("ringcache_store_bytes", 6000.0),
        ("ringcache_io_driver{driver=\"io_uring\"}", 1.0),
    ];
    // Summed over the series of every upstream (`upstream` label): one upstream here.
    let text = String::from_utf8(http::get(dbg, "/metrics").body).unwrap();
    for (key, value) in want {
        assert_eq!(support::metric_in(&text, key), *value, "{key}");
    }
    assert!(
        m.contains_key("registry_http_request_duration_seconds_bucket{method=\"GET\",le=\"+Inf\"}")
    );
    for name in [
        "ringcache_evictions_total",
        "ringcache_expirations_total",
        "ringcache_fill_resumes_total",
        "ringcache_connections_open",
    ] {
        assert!(
            m.keys()
                .any(|k| k == name || k.starts_with(&format!("{name}{{"))),
            "{name}"
        );
    }
    // The access log: one line per request, with the cache result.
    assert_eq!(rc.proc.count_log(&["ringcache::access", "cache=hit"]), 2);
    assert_eq!(
        rc.proc.count_log(&["ringcache::access", "cache=coalesced"]),
        3
    );
}

#[test]
fn health_checks_and_manual_down_up() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    assert_eq!(
        (
            http::get(dbg, "/debug/health").status,
            http::get(dbg, "/debug/health").text()
        ),
        (200, "{}".into())
    );
    assert_eq!(http::get(rc.addr, "/").status, 200);
    assert_eq!(
        http::request(
            dbg,
            "POST",
            "/debug/health/down",
            &[("X-Ringcache-Admin", "1")],
            b""
        )
        .status,
        200
    );
    let r = http::get(dbg, "/debug/health");
    assert_eq!(r.status, 503);
    assert!(r.json()["manual"].is_string());
    assert_eq!(
        http::get(rc.addr, "/").status,
        503,
        "load balancers see the node down"
    );
    assert_eq!(
        http::get(rc.addr, "/v2/").status,
        200,
        "but it keeps serving"
    );
    assert_eq!(
        http::request(
            dbg,
            "POST",
            "/debug/health/up",
            &[("X-Ringcache-Admin", "1")],
            b""
        )
        .status,
        200
    );
    assert_eq!(http::get(dbg, "/debug/health").status, 200);
    assert_eq!(http::get(rc.addr, "/").status, 200);

    // Upstream failing: the health check says so.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let (rc, dbg) = Ringcache::start_with_debug(&dead);
    assert_eq!(http::get(rc.addr, "/v2/x/manifests/v1").status, 503);
    let r = http::get(dbg, "/debug/health");
    assert_eq!(r.status, 503);
    assert!(r.json()["upstream"].is_string(), "{}", r.text());
}

#[test]
fn json_logs_and_journal_logs() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog: {{level: info, formatter: json}}\nhttp: {{addr: '127.0.0.1:0'}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {}}}\n",
            dir.path().join("d").display(),
            up.url()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env("JOURNAL_STREAM", "8:1234");
    let p = Proc::spawn(cmd);
    let line = p.wait_log("listening on", Duration::from_secs(20));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(v["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("listening on"));
    assert!(
        v.get("timestamp").is_none(),
        "no timestamps under the journal: {line}"
    );
    let addr: SocketAddr = v["fields"]["message"]
        .as_str()
        .unwrap()
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    // Control characters from a client are escaped in the access log.
    let (resp, _) = http::raw(addr, b"GET /v2/\x1b[31mred HTTP/1.1\r\nHost: a\r\n\r\n");
    let _ = resp;
    assert_eq!(http::get(addr, "/v2/").status, 200);
    let access = p.wait_log("ringcache::access", Duration::from_secs(10));
    assert!(
        serde_json::from_str::<serde_json::Value>(&access).is_ok(),
        "{access}"
    );
    assert!(
        !p.log.lock().unwrap().contains('\x1b'),
        "no raw control characters in the log"
    );
}

#[test]
fn sighup_reloads_credentials_limits_and_log_level_and_reports_the_rest() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "right");
    let img = image::image(61, &[100]);
    up.add_manifest(
        "a/b",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        img.manifest.clone(),
    );
    let rc = Ringcache::start(&format!("{}, username: bob, password: wrong", up.url()), "");
    assert_eq!(http::get(rc.addr, "/v2/a/b/manifests/v1").status, 401);
    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("X-H{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        http::request(rc.addr, "GET", "/v2/", &many, b"").status,
        200
    );
    // The operator fixes the password, tightens a limit, lowers the log level, and also
    // changes the listen address (which needs a restart).
    let cfg = rc.root.with_extension("yml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace("password: wrong", "password: right")
        .replace("log: {level: debug}", "log: {level: warn}")
        .replace("http: {addr: 127.0.0.1:0}", "http: {addr: 127.0.0.1:1}");
    std::fs::write(
        &cfg,
        format!("{text}ringcache: {{limits: {{headers_max: 8}}}}\n"),
    )
    .unwrap();
    rc.proc.signal(libc::SIGHUP);
    let line = rc.proc.wait_log("reloaded", Duration::from_secs(10));
    assert!(
        line.contains("http.addr"),
        "reports what needs a restart: {line}"
    );
    assert_eq!(
        http::get(rc.addr, "/v2/a/b/manifests/v1").status,
        200,
        "new credentials, fresh token"
    );
    assert_eq!(
        http::request(rc.addr, "GET", "/v2/", &many, b"").status,
        431,
        "new header limit"
    );
    let before = rc.proc.count_log(&["ringcache::access"]);
    assert!(before > 0, "access lines were logged at debug level");
    assert_eq!(http::get(rc.addr, "/v2/").status, 200);
    // An event that is still logged at warn, after the request: its line is a barrier.
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_count(&["reloaded"], 2, Duration::from_secs(10));
    assert_eq!(
        rc.proc.count_log(&["ringcache::access"]),
        before,
        "log level is warn now: no access lines"
    );
}

/// Fills write with O_DIRECT: the follower of a cold pull copies what was just written from
/// the fill's blocks in memory, and the committed file is not in the page cache. Large hits
/// leave by sendfile when their pages are in the page cache, and through a read buffer when
/// they are not (sendfile would block the worker on the disk; the reads bring the pages in):
/// all give the same bytes, Range included, and the counters say which path carried them.
/// (`sendfile: always`: a loopback client is otherwise sent copies, see the next test.)
#[test]
fn fills_bypass_the_page_cache_and_large_hits_go_by_sendfile_once_cached() {
    use std::os::fd::AsRawFd;
    let up = TestUpstream::start();
    // On the build's filesystem: a tmpfs (which /tmp may be) is nothing but page cache.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let env = [
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("RINGCACHE_SENDFILE", "always"),
    ];
    let rc = Ringcache::start_env(&up.url(), "", &dir.path().join("data"), &env);
    let dbg = rc.debug_addr();
    let size = 6 * 1024 * 1024 + 123;
    let data = image::pseudo_random(61, size);
    let digest = up.add_blob(data.clone(), Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    let mut requests = 0;
    let mut get = |range: Option<&str>| {
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        let r = http::request(rc.addr, "GET", &path, &headers, b"");
        requests += 1;
        // Counted just before the access-log line.
        rc.proc
            .wait_count(&["ringcache::access"], requests, Duration::from_secs(10));
        let m = scrape(dbg);
        (
            r,
            m["ringcache_sendfile_bytes_total"],
            m["ringcache_fill_memory_bytes_total"],
        )
    };
    let (r, _, memory) = get(None);
    assert_eq!((r.status, r.body == data), (200, true));
    // The fill keeps its last blocks (at least the last 4 MiB) for its followers.
    assert!(
        memory >= (4 << 20) as f64,
        "follower copied {memory} bytes from memory"
    );
    rc.proc
        .wait_count(&["fill committed"], 1, Duration::from_secs(10));
    let (_, before, _) = get(Some("bytes=0-0"));
    // Written around the page cache: the first hit reads the file (no more than one page per
    // block was written through the cache)...
    let (r, first, _) = get(None);
    assert_eq!((r.status, r.body == data), (200, true));
    assert!(
        first - before < size as f64,
        "a fill's file is not in the page cache ({} of {size} by sendfile)",
        first - before
    );
    // ... which brings it in: the next one goes by sendfile, whole.
    let (r, after, _) = get(None);
    assert_eq!((r.status, r.body == data), (200, true));
    assert_eq!(after - first, size as f64, "a cached hit goes by sendfile");
    let (r, again, _) = get(Some("bytes=100-5000000"));
    assert_eq!(r.status, 206);
    assert!(r.body == data[100..=5_000_000]);
    assert_eq!(again - after, (5_000_000 - 100 + 1) as f64);
    // Evicted from the page cache: the bytes are read through io_uring instead (at least the
    // first chunk; readahead may bring the rest back in), and are the same bytes.
    let hex = digest.trim_start_matches("sha256:");
    let file = std::fs::File::open(rc.root.join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    // SAFETY: fadvise on a descriptor we hold; no pointers.
    let rc_ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc_, 0);
    let (r, evicted, _) = get(None);
    assert_eq!((r.status, r.body == data), (200, true));
    assert!(
        evicted - again < size as f64,
        "an evicted body is not sent by sendfile ({} of {size})",
        evicted - again
    );
    assert_eq!(up.count(&format!("GET {path}")), 1);
}

/// A client on this host (loopback here) is sent copies of a cached blob, read into a buffer,
/// while its worker streams to few clients: by sendfile, the receiver would copy the bytes out
/// of the page cache cold. Once another stream is in flight on the same worker, sendfile
/// takes over (the copies cost the worker CPU that the other clients then lack). Every client
/// gets the whole body either way.
#[test]
fn a_client_on_this_host_is_sent_copies_unless_its_worker_is_busy() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let env = [
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("RINGCACHE_WORKERS", "1"),
    ];
    let rc = Ringcache::start_env(&up.url(), "", &dir.path().join("data"), &env);
    let dbg = rc.debug_addr();
    // Larger than what the socket buffers of a client that reads nothing take in.
    let size = 24 << 20;
    let data = image::pseudo_random(62, size);
    let digest = up.add_blob(data.clone(), Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    let mut done = 0;
    let mut finished = |n: usize| {
        done += n;
        rc.proc
            .wait_count(&["ringcache::access"], done, Duration::from_secs(20));
        scrape(dbg)["ringcache_sendfile_bytes_total"]
    };
    // The fill, then a hit that reads the file (which brings it into the page cache).
    let r = http::get(rc.addr, &path);
    assert_eq!((r.status, r.body == data), (200, true));
    rc.proc
        .wait_count(&["fill committed"], 1, Duration::from_secs(10));
    finished(1);
    let r = http::get(rc.addr, &path);
    assert_eq!((r.status, r.body == data), (200, true));
    let before = finished(1);
    let r = http::get(rc.addr, &path);
    assert_eq!((r.status, r.body == data), (200, true));
    let alone = finished(1);
    assert_eq!(alone, before, "one client on this host gets copies");
    // Three clients that read nothing yet: their streams stay in flight meanwhile.
    let busy = beside_stalled_streams(rc.addr, &path, &data, || {
        let r = http::get(rc.addr, &path);
        assert_eq!((r.status, r.body == data), (200, true));
        finished(1)
    });
    assert_eq!(
        busy - alone,
        size as f64,
        "with other streams in flight, sendfile"
    );
    let after = finished(3);
    let r = http::get(rc.addr, &path);
    assert_eq!((r.status, r.body == data), (200, true));
    assert_eq!(finished(1), after, "alone again: copies");
    assert_eq!(up.count(&format!("GET {path}")), 1);

    // `sendfile: never` sends copies however busy the worker is; `always` (above) and any
    // client on another host use sendfile for cached pages.
    drop(rc);
    let rc = Ringcache::start_env(
        &up.url(),
        "",
        &dir.path().join("data"),
        &[
            ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
            ("RINGCACHE_WORKERS", "1"),
            ("RINGCACHE_SENDFILE", "never"),
        ],
    );
    beside_stalled_streams(rc.addr, &path, &data, || {
        let r = http::get(rc.addr, &path);
        assert_eq!((r.status, r.body == data), (200, true));
    });
    rc.proc
        .wait_count(&["ringcache::access"], 4, Duration::from_secs(20));
    assert_eq!(
        scrape(rc.debug_addr())["ringcache_sendfile_bytes_total"],
        0.0
    );
}

/// Run `f` while three GETs of `path` are in flight, their clients reading nothing; then read
/// them out and check each body.
fn beside_stalled_streams<R>(
    addr: SocketAddr,
    path: &str,
    data: &[u8],
    f: impl FnOnce() -> R,
) -> R {
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = http::connect(addr);
        http::send(&mut s, addr, "GET", path, &[], b"");
        // Waits (within the read timeout) for the first bytes: the stream has started.
        s.peek(&mut [0u8; 1]).unwrap();
        stalled.push(s);
    }
    let out = f();
    for s in stalled {
        let r = http::read_response(&mut std::io::BufReader::new(s), false).unwrap();
        assert_eq!((r.status, r.body == data), (200, true));
    }
    out
}
