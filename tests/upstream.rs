//! The upstream side under hostile or broken upstreams: interim `1xx` answers, bytes past a
//! body, tiny chunks, request loops (`Via`, redirects and realms back at ringcache itself),
//! the redirect policy, and credentials bound to the upstream's authority.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::upstream::{basic, Blob, Fault, Framing, TestUpstream, TOKEN};
use support::{free_port, http, image, strip_ansi, Ringcache};

const KIB: usize = 1024;

/// The value of `key=` in a log line (ANSI colours stripped).
fn field(line: &str, key: &str) -> String {
    let line = strip_ansi(line);
    let at = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(at.as_str()))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_string()
}

/// CPU time (user + system) the process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Access-log lines so far.
fn requests(rc: &Ringcache) -> usize {
    rc.proc.count_log(&["ringcache::access"])
}

// ----- 1. interim responses -----

#[test]
fn interim_responses_read_together_with_the_final_one_are_skipped() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {limits: {upstream_header_timeout: 3s}}\n",
    );
    let data = image::pseudo_random(11, 1000);
    let digest = up.add_blob_with(Blob {
        data: Arc::new(data.clone()),
        interim: 2,
        ..Default::default()
    });
    let r = http::get(rc.addr, &format!("/v2/x/blobs/{digest}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);

    // Past the bound on interim answers: refused at once (502), never a wait.
    let digest = up.add_blob_with(Blob {
        data: Arc::new(image::pseudo_random(12, 1000)),
        interim: 40,
        ..Default::default()
    });
    let r = http::get(rc.addr, &format!("/v2/x/blobs/{digest}"));
    assert_eq!(r.status, 502, "{}", r.text());
}

// ----- 2. bytes left over on a connection -----

#[test]
fn bytes_past_a_body_never_reach_the_next_request() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "ringcache: {workers: 1}\n");
    let junk: &'static [u8] = b"garbage past the Content-Length\r\n\r\n";
    let a = image::pseudo_random(21, 200 * KIB);
    let da = up.add_blob_with(Blob {
        data: Arc::new(a.clone()),
        trailing: Some(junk),
        ..Default::default()
    });
    let r = http::get(rc.addr, &format!("/v2/x/blobs/{da}"));
    assert_eq!((r.status, r.body == a), (200, true));
    rc.proc
        .wait_count(&[&da, "fill committed"], 1, Duration::from_secs(10));
    // The next, unrelated request must not read that junk as its answer.
    let b = image::pseudo_random(22, 50 * KIB);
    let db = up.add_blob(b.clone(), Fault::None);
    let r = http::get(rc.addr, &format!("/v2/x/blobs/{db}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b);

    // A body after a HEAD answer: the connection is not reused with it.
    let c = image::pseudo_random(23, 30 * KIB);
    let dc = up.add_blob_with(Blob {
        data: Arc::new(c.clone()),
        head_body: true,
        ..Default::default()
    });
    for _ in 0..2 {
        let r = http::request(rc.addr, "HEAD", &format!("/v2/x/blobs/{dc}"), &[], b"");
        assert_eq!(r.status, 200);
        let d = image::pseudo_random(24, 10 * KIB);
        let dd = up.add_blob(d.clone(), Fault::None);
        let r = http::get(rc.addr, &format!("/v2/x/blobs/{dd}"));
        assert_eq!((r.status, r.body == d), (200, true), "{}", r.text());
    }
}

// ----- 3. tiny chunks -----

#[test]
fn tiny_chunks_fill_whole_blocks() {
    // Each chunk used to become a block of its own, with its own write and hash jobs, and
    // the read buffer was moved once per chunk: 5.2 s of CPU for 300 KiB in 1-byte chunks.
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    // Past one block, so chunks are cut at a block's end too.
    let size = ringcache::store::ingest::BLOCK_BYTES + 4099;
    for (seed, max) in [(31u64, 1usize), (32, 100)] {
        let digest = up.add_blob_with(Blob {
            data: Arc::new(image::pseudo_random(seed, size)),
            framing: Framing::Tiny { max, seed },
            ..Default::default()
        });
        let cpu = cpu_ticks(rc.proc.child.id());
        let (status, len, hex, complete) =
            http::get_hashed(rc.addr, &format!("/v2/x/blobs/{digest}"));
        assert_eq!(
            (status, len, complete),
            (200, size as u64, true),
            "max {max}"
        );
        assert_eq!(format!("sha256:{hex}"), digest);
        rc.proc
            .wait_count(&[&digest, "fill committed"], 1, Duration::from_secs(30));
        let line = rc
            .proc
            .log
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains(&digest) && l.contains("fill committed"))
            .map(str::to_string)
            .unwrap();
        let pieces: u64 = field(&line, "pieces").parse().unwrap();
        // Blocks are filled across chunks: their count follows the size, not the chunks.
        let blocks = (size / ringcache::store::ingest::BLOCK_BYTES + 1) as u64;
        assert!(
            pieces <= blocks + 1,
            "{pieces} blocks for {size} bytes in chunks of up to {max}: {line}"
        );
        // Informational (no timing in assertions): the CPU the fill took.
        let ticks = cpu_ticks(rc.proc.child.id()) - cpu;
        eprintln!("chunks of up to {max} bytes: {pieces} blocks, {ticks} CPU ticks (1/100 s)");
    }
}

// ----- 4. loops -----

/// The `Via` ringcache sends upstream (`1.1 <instance> (ringcache)`).
fn own_via(up: &TestUpstream, rc: &Ringcache) -> String {
    up.add_manifest(
        "x",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    assert_eq!(http::get(rc.addr, "/v2/x/tags/list").status, 200);
    let via = up.header_of("GET /v2/x/tags/list", "via");
    let via = via
        .last()
        .cloned()
        .flatten()
        .expect("a Via header upstream");
    assert!(
        via.starts_with("1.1 ") && via.ends_with(" (ringcache)"),
        "{via}"
    );
    via
}

#[test]
fn upstream_requests_carry_via_and_a_request_with_our_own_via_gets_508() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let via = own_via(&up, &rc);

    // A request that already passed through this ringcache is a loop: 508, OCI error JSON.
    for incoming in [via.clone(), format!("1.0 proxy-a, {via}")] {
        let before = up.headers().len();
        let r = http::request(
            rc.addr,
            "GET",
            "/v2/x/tags/list",
            &[("Via", &incoming)],
            b"",
        );
        assert_eq!(r.status, 508, "{incoming}: {}", r.text());
        assert!(!r.error_code().is_empty(), "{}", r.text());
        assert_eq!(up.headers().len(), before, "nothing went upstream");
    }
    // Another proxy's Via is passed on, with ours after it.
    let other = "1.1 edge-7 (ringcache)";
    let r = http::request(rc.addr, "GET", "/v2/x/tags/list", &[("Via", other)], b"");
    assert_eq!(r.status, 200);
    let last = up.header_of("GET /v2/x/tags/list", "via").pop().flatten();
    assert_eq!(last, Some(format!("{other}, {via}")));
}

#[test]
fn a_remoteurl_that_is_ringcache_itself_is_refused() {
    let port = free_port();
    let me = format!("127.0.0.1:{port}");
    let rc = Ringcache::start_with_env(
        &format!("http://{me}"),
        "ringcache: {limits: {upstream_header_timeout: 3s}}\n",
        &[("REGISTRY_HTTP_ADDR", &me)],
    );
    let r = http::get(rc.addr, "/v2/x/tags/list");
    assert_eq!(r.status, 502, "{}", r.text());
    rc.proc
        .wait_count(&["ringcache::access"], 1, Duration::from_secs(10));
    assert_eq!(requests(&rc), 1, "no request reached ringcache from itself");
    // The same through a name that resolves to it.
    drop(rc);
    let port = free_port();
    let rc = Ringcache::start_with_env(
        &format!("http://localhost:{port}"),
        "ringcache: {limits: {upstream_header_timeout: 3s}}\n",
        &[("REGISTRY_HTTP_ADDR", &format!("0.0.0.0:{port}"))],
    );
    let r = http::get(rc.addr, "/v2/x/tags/list");
    assert_eq!(r.status, 502, "{}", r.text());
    rc.proc
        .wait_count(&["ringcache::access"], 1, Duration::from_secs(10));
    assert_eq!(requests(&rc), 1);
}

#[test]
fn two_ringcaches_pointing_at_each_other_stop_after_a_few_hops() {
    let (pa, pb) = (free_port(), free_port());
    let (a_addr, b_addr) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let extra = "ringcache: {limits: {upstream_header_timeout: 3s}}\n";
    let b = Ringcache::start_with_env(
        &format!("http://{a_addr}"),
        extra,
        &[("REGISTRY_HTTP_ADDR", &b_addr)],
    );
    let a = Ringcache::start_with_env(
        &format!("http://{b_addr}"),
        extra,
        &[("REGISTRY_HTTP_ADDR", &a_addr)],
    );
    let r = http::get(a.addr, "/v2/x/tags/list");
    assert!(r.status >= 500, "{}: {}", r.status, r.text());
    // A → B (Via: A) → A (Via: A, B): refused with 508 there.
    a.proc.wait_count(
        &["ringcache::access", "status=508"],
        1,
        Duration::from_secs(10),
    );
    a.proc
        .wait_count(&["ringcache::access"], 2, Duration::from_secs(10));
    b.proc
        .wait_count(&["ringcache::access"], 1, Duration::from_secs(10));
    assert_eq!((requests(&a), requests(&b)), (2, 1));
}

#[test]
fn redirects_and_realms_back_at_ringcache_are_never_followed() {
    let up = TestUpstream::start();
    let rc = Ringcache::start_with_env(
        &up.url(),
        "ringcache: {limits: {upstream_header_timeout: 3s}}\n",
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let data = image::pseudo_random(41, 20 * KIB);
    let digest = up.add_blob(data, Fault::None);
    // A blob GET may leave upstream's host (a CDN), but never for ringcache's own listeners.
    for target in [rc.url(), format!("http://{dbg}")] {
        up.redirect_matching("/blobs/", &format!("{target}/v2/x/blobs/{digest}"));
        let r = http::get(rc.addr, &format!("/v2/x/blobs/{digest}"));
        assert_eq!(r.status, 502, "{target}: {}", r.text());
        up.clear_redirects();
    }
    rc.proc
        .wait_count(&["ringcache::access"], 2, Duration::from_secs(10));
    assert_eq!(requests(&rc), 2, "no request reached ringcache from itself");
}

#[test]
fn a_token_realm_at_ringcache_itself_is_never_asked() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    let port = free_port();
    let me = format!("127.0.0.1:{port}");
    up.set_realm(&format!("http://{me}/token"));
    let rc = Ringcache::start_with_env(
        &format!("{}, username: bob, password: hunter2", up.url()),
        "",
        &[("REGISTRY_HTTP_ADDR", &me)],
    );
    up.add_manifest(
        "x",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    let r = http::get(rc.addr, "/v2/x/manifests/v1");
    assert!(r.status >= 500, "{}: {}", r.status, r.text());
    rc.proc.wait_count(
        &["ringcache::access", "/v2/x/manifests/v1"],
        1,
        Duration::from_secs(10),
    );
    assert_eq!(
        requests(&rc),
        1,
        "the realm request never reached ringcache"
    );
    assert_eq!(rc.proc.count_log(&["ringcache::access", "/token"]), 0);
}

// ----- 5. redirect policy -----

#[test]
fn listings_and_manifests_are_read_only_from_the_upstream_origin() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    // tags/list redirected to ringcache's own debug port would hand out /metrics.
    up.redirect_matching("/tags/list", &format!("http://{dbg}/metrics"));
    let r = http::get(rc.addr, "/v2/x/tags/list");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("# HELP"), "{}", r.text());

    // A manifest redirected to another host is refused; that host is never asked.
    let cdn = TestUpstream::start_on("127.0.0.2");
    let body = br#"{"schemaVersion":2}"#.to_vec();
    cdn.add_manifest(
        "y",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        body,
    );
    up.redirect_matching(
        "/v2/y/manifests/",
        &format!("{}/v2/y/manifests/v1", cdn.url()),
    );
    let r = http::get(rc.addr, "/v2/y/manifests/v1");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(cdn.seen().is_empty(), "{:?}", cdn.seen());

    // A redirect within the upstream's origin is followed.
    up.clear_redirects();
    up.add_manifest(
        "z",
        "v2",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    up.redirect_matching("/v2/z/tags/list", "/v2/w/tags/list");
    up.add_manifest(
        "w",
        "t",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    let r = http::get(rc.addr, "/v2/z/tags/list");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"t\""), "{}", r.text());
}

// ----- 6. credentials bound to the upstream's authority -----

/// An upstream demanding Bearer tokens from `realm` (another test upstream that issues tokens
/// to anyone), and a ringcache with credentials and `extra` config; pulls `n` repositories.
fn pull_via_realm(realm: &TestUpstream, extra: &str, n: usize) -> (TestUpstream, Ringcache) {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    up.set_realm(&format!("{}/token", realm.url()));
    let rc = Ringcache::start(
        &format!("{}, username: bob, password: hunter2", up.url()),
        extra,
    );
    for i in 0..n {
        let name = format!("team/app{i}");
        up.add_manifest(
            &name,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            b"{}".to_vec(),
        );
        let r = http::get(rc.addr, &format!("/v2/{name}/manifests/v1"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    (up, rc)
}

fn token_authorizations(realm: &TestUpstream) -> Vec<Option<String>> {
    realm
        .seen()
        .into_iter()
        .filter(|(l, _)| l.starts_with("GET /token"))
        .map(|(_, a)| a)
        .collect()
}

#[test]
fn credentials_go_to_a_foreign_realm_only_when_the_operator_allows_it() {
    // A realm on another IP, and one on the same IP but another port: neither is the
    // upstream's authority, and IP literals have no registrable domain.
    for ip in ["127.0.0.2", "127.0.0.1"] {
        let realm = TestUpstream::start_on(ip);
        let (_up, rc) = pull_via_realm(&realm, "", 3);
        let seen = token_authorizations(&realm);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().all(Option::is_none),
            "{ip}: credentials sent to a foreign realm: {seen:?}"
        );
        // One WARN naming the realm, not one per token.
        rc.proc.wait_count(
            &[
                "WARN",
                "not sending the credentials",
                &realm.addr.to_string(),
            ],
            1,
            Duration::from_secs(5),
        );
        assert_eq!(
            rc.proc.count_log(&["WARN", "not sending the credentials"]),
            1
        );
        let log = rc.proc.log.lock().unwrap().clone();
        assert!(!log.contains("hunter2") && !log.contains(TOKEN));
    }
    // Allowed by the operator: the credentials go there.
    let realm = TestUpstream::start_on("127.0.0.2");
    let extra = format!(
        "ringcache: {{upstream: {{token_realms: [\"http://{}/token\"]}}}}\n",
        realm.addr
    );
    let (_up, rc) = pull_via_realm(&realm, &extra, 1);
    assert_eq!(
        token_authorizations(&realm),
        vec![Some(basic("bob", "hunter2"))]
    );
    assert_eq!(rc.proc.count_log(&["not sending the credentials"]), 0);
    // An allowed realm's path prefix must match too.
    let realm = TestUpstream::start_on("127.0.0.2");
    let extra = format!(
        "ringcache: {{upstream: {{token_realms: [\"http://{}/other/\"]}}}}\n",
        realm.addr
    );
    let (_up, _rc) = pull_via_realm(&realm, &extra, 1);
    assert_eq!(token_authorizations(&realm), vec![None]);
}

#[test]
fn rejected_credentials_warn_once_not_per_request() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    let rc = Ringcache::start(&format!("{}, username: bob, password: wrong", up.url()), "");
    for i in 0..3 {
        let name = format!("team/app{i}");
        up.add_manifest(
            &name,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            b"{}".to_vec(),
        );
        let r = http::get(rc.addr, &format!("/v2/{name}/manifests/v1"));
        assert_eq!((r.status, r.error_code()), (401, "UNAUTHORIZED".into()));
    }
    rc.proc
        .wait_count(&["ringcache::access"], 3, Duration::from_secs(5));
    let upstream = up.addr.to_string();
    assert_eq!(
        rc.proc
            .count_log(&["WARN", "rejected the configured credentials", &upstream]),
        1
    );
    assert_eq!(
        rc.proc.count_log(&["INFO", "request failed"]),
        0,
        "no INFO line per request"
    );
    assert!(!rc.proc.log.lock().unwrap().contains("wrong"));
}
