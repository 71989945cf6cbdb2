//! End to end with real peers: the reference registry (Distribution 2.8) as upstream, skopeo
//! as the client, ringcache's binary in between.

mod support;

use std::time::Duration;

use support::{http, image, skopeo_copy, tree_hashes, Registry, Ringcache};

/// The registry's blob GETs, once its log shows at least `n` (its log line follows the
/// response; bounded).
fn wait_blob_gets(reg: &Registry, n: usize) -> usize {
    reg.proc.wait_count(
        &[
            "http.request.method=GET",
            "/blobs/sha256:",
            "response completed",
        ],
        n,
        Duration::from_secs(10),
    );
    reg.blob_gets()
}

/// ringcache's access-log lines for blob requests.
fn blob_requests(rc: &Ringcache) -> Vec<String> {
    rc.proc
        .log
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("ringcache::access") && l.contains("/blobs/sha256:"))
        .map(String::from)
        .collect()
}

#[test]
fn skopeo_cold_then_warm_pull_is_byte_identical_and_warm_needs_no_upstream_get() {
    let reg = Registry::start(None);
    let img = image::image(1, &[300_000, 2_000_000, 5_000]);
    image::push(reg.addr, "test/app", "v1", &img, None);
    let rc = Ringcache::start(&reg.url(), "ringcache: {workers: 2}\n");
    let dir = tempfile::tempdir().unwrap();

    let direct = dir.path().join("direct");
    skopeo_copy(reg.addr, "test/app:v1", &direct, None);
    let before = wait_blob_gets(&reg, 4);

    let cold = dir.path().join("cold");
    skopeo_copy(rc.addr, "test/app:v1", &cold, None);
    let after_cold = wait_blob_gets(&reg, before + 4);
    assert_eq!(
        after_cold - before,
        4,
        "cold pull: one upstream GET per blob (3 layers + config)"
    );

    // ringcache's own access log says how each blob request was served: every one of the
    // warm pull's is a hit (its line follows the response, so wait for it, not for time).
    let blobs = img.layers.len() + 1; // the layers and the config
    rc.proc.wait_count(
        &["ringcache::access", "/blobs/sha256:"],
        blobs,
        Duration::from_secs(10),
    );
    let cold_requests = blob_requests(&rc).len();
    let warm = dir.path().join("warm");
    skopeo_copy(rc.addr, "test/app:v1", &warm, None);
    rc.proc.wait_count(
        &["ringcache::access", "/blobs/sha256:"],
        cold_requests + blobs,
        Duration::from_secs(10),
    );
    let warm_requests = blob_requests(&rc).split_off(cold_requests);
    for line in &warm_requests {
        assert!(
            line.contains("status=200") && line.contains("cache=hit"),
            "warm pull: every blob from the cache: {line}"
        );
    }
    for content in img.layers.iter().chain([&img.config]) {
        let (d, len) = (support::sha256_hex(content), content.len());
        assert!(
            warm_requests
                .iter()
                .any(|l| l.contains(&format!("/blobs/sha256:{d} "))
                    && l.contains(&format!(" bytes={len} "))),
            "warm pull: sha256:{d} served whole; requests:\n{}",
            warm_requests.join("\n")
        );
    }
    assert_eq!(
        reg.blob_gets(),
        after_cold,
        "warm pull must not GET any blob upstream"
    );

    let want = tree_hashes(&direct);
    assert_eq!(
        tree_hashes(&cold),
        want,
        "cold pull through ringcache differs from a direct pull"
    );
    assert_eq!(
        tree_hashes(&warm),
        want,
        "warm pull through ringcache differs from a direct pull"
    );
    // The store holds exactly the image's content, each file named by its hash.
    for d in img.layer_digests() {
        let hex = d.trim_start_matches("sha256:");
        let p = rc.root.join("blobs/sha256").join(&hex[..2]).join(hex);
        assert_eq!(support::sha256_file(&p), hex);
    }
}

#[test]
fn head_and_get_by_tag_and_digest() {
    let reg = Registry::start(None);
    let img = image::image(2, &[10_000]);
    image::push(reg.addr, "library/alpine", "3.20", &img, None);
    let rc = Ringcache::start(&reg.url(), "");
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");

    let r = http::request(
        rc.addr,
        "HEAD",
        "/v2/library/alpine/manifests/3.20",
        &[accept],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some(img.manifest.len().to_string().as_str())
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );

    let r = http::request(
        rc.addr,
        "GET",
        "/v2/library/alpine/manifests/3.20",
        &[accept],
        b"",
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, img.manifest.as_slice())
    );
    let r = http::request(
        rc.addr,
        "GET",
        &format!("/v2/library/alpine/manifests/{}", img.manifest_digest),
        &[accept],
        b"",
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, img.manifest.as_slice())
    );
    // A client that accepts anything still gets the OCI manifest.
    let r = http::request(
        rc.addr,
        "GET",
        "/v2/library/alpine/manifests/3.20",
        &[("Accept", "*/*")],
        b"",
    );
    assert_eq!(r.status, 200);

    let layer = &img.layer_digests()[0];
    let r = http::request(
        rc.addr,
        "HEAD",
        &format!("/v2/library/alpine/blobs/{layer}"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some(img.layers[0].len().to_string().as_str()))
    );
    let r = http::get(rc.addr, &format!("/v2/library/alpine/blobs/{layer}"));
    assert_eq!(r.body, img.layers[0]);
    // Range on a cached blob: 206, then 416 past the end.
    let r = http::request(
        rc.addr,
        "GET",
        &format!("/v2/library/alpine/blobs/{layer}"),
        &[("Range", "bytes=10-19")],
        b"",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, img.layers[0][10..20]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 10-19/{}", img.layers[0].len())
    );
    let past = format!("bytes={}-", img.layers[0].len());
    let r = http::request(
        rc.addr,
        "GET",
        &format!("/v2/library/alpine/blobs/{layer}"),
        &[("Range", &past)],
        b"",
    );
    assert_eq!(r.status, 416);

    // Unknown tag and blob: the reference registry's codes.
    let r = http::get(rc.addr, "/v2/library/alpine/manifests/nope");
    assert_eq!((r.status, r.error_code()), (404, "MANIFEST_UNKNOWN".into()));
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = http::get(rc.addr, &format!("/v2/library/alpine/blobs/{missing}"));
    assert_eq!((r.status, r.error_code()), (404, "BLOB_UNKNOWN".into()));
    // tags/list is proxied; _catalog lists what the cache holds.
    let r = http::get(rc.addr, "/v2/library/alpine/tags/list");
    assert_eq!(r.json()["tags"], serde_json::json!(["3.20"]));
    let r = http::get(rc.addr, "/v2/_catalog");
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["library/alpine"])
    );
}

#[test]
fn htpasswd_protected_upstream_with_basic_credentials() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let img = image::image(3, &[50_000]);
    let auth = support::upstream::basic("alice", "s3cret");
    image::push(reg.addr, "private/app", "v1", &img, Some(&auth));

    let rc = Ringcache::start(&reg.url(), "");
    let r = http::get(rc.addr, "/v2/private/app/manifests/v1");
    assert_eq!(
        (r.status, r.error_code()),
        (401, "UNAUTHORIZED".into()),
        "no credentials configured"
    );
    drop(rc);

    let rc = Ringcache::start(
        &format!("{}, username: alice, password: s3cret", reg.url()),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    skopeo_copy(rc.addr, "private/app:v1", &dir.path().join("out"), None);
    assert!(
        !rc.proc.log.lock().unwrap().contains("s3cret"),
        "the password must never be logged"
    );
}

#[test]
fn starts_with_upstream_down_and_serves_cached_content_when_upstream_dies() {
    // ringcache starts while upstream is unreachable (the reference registry refuses to).
    let port = support::free_port();
    let rc = Ringcache::start(&format!("http://127.0.0.1:{port}"), "");
    assert_eq!(http::get(rc.addr, "/v2/").status, 200);
    let r = http::get(rc.addr, "/v2/x/manifests/latest");
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".into()));
    drop(rc);

    // A tag pulled once is served from the cache after upstream dies (stale-if-error), even
    // past the freshness window.
    let mut reg = Registry::start(None);
    let img = image::image(4, &[20_000]);
    image::push(reg.addr, "team/svc", "prod", &img, None);
    let rc = Ringcache::start(&reg.url(), "ringcache: {tags: {fresh_for: 1ms}}\n");
    let dir = tempfile::tempdir().unwrap();
    skopeo_copy(rc.addr, "team/svc:prod", &dir.path().join("a"), None);
    reg.proc.signal(libc::SIGKILL);
    reg.proc.wait_exit(Duration::from_secs(10));
    skopeo_copy(rc.addr, "team/svc:prod", &dir.path().join("b"), None);
    assert_eq!(
        tree_hashes(&dir.path().join("a")),
        tree_hashes(&dir.path().join("b"))
    );
    rc.proc
        .wait_log("serving the cached tag", Duration::from_secs(5));
}

#[test]
fn https_upstream_with_a_private_ca() {
    let (reg, ca) = Registry::start_tls();
    let https = format!("https://{}", reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let img = image::image(6, &[30_000]);
    // Seed through skopeo over TLS (the test's own pusher is plain HTTP): push from an OCI
    // layout made by a plain registry.
    let plain = Registry::start(None);
    image::push(plain.addr, "sec/app", "v1", &img, None);
    let layout = dir.path().join("layout");
    skopeo_copy(plain.addr, "sec/app:v1", &layout, None);
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{}/sec/app:v1", reg.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the CA the upstream is not trusted: a clear 503, not a hang.
    let rc = Ringcache::start(&https, "");
    let r = http::get(rc.addr, "/v2/sec/app/manifests/v1");
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".into()));
    rc.proc
        .wait_log("TLS handshake failed", Duration::from_secs(10));
    drop(rc);

    let rc = Ringcache::start(
        &https,
        &format!("ringcache: {{upstream: {{ca_file: {}}}}}\n", ca.display()),
    );
    let pulled = dir.path().join("pulled");
    skopeo_copy(rc.addr, "sec/app:v1", &pulled, None);
    assert_eq!(tree_hashes(&pulled), tree_hashes(&layout));
}
