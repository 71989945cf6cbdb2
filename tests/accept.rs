//! What a client gets for a tag depends on its `Accept`, as it does from upstream: a client that
//! takes no index is answered one platform's manifest, a client that takes one is answered the
//! index, whatever the order they ask in and across a restart. Against the reference registry
//! (Distribution 2.8) with multi-platform images, and skopeo choosing a platform.

mod support;

use std::process::Command;

use support::{http, image, Registry, Ringcache};

const ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// The CI idiom for reading a digest: only Docker schema2.
const V2_ONLY: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// GET a manifest with an Accept: (status, Docker-Content-Digest, Content-Type).
fn get(addr: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
    let r = http::request(addr, "GET", path, &[("Accept", accept)], b"");
    let digest = r.header("docker-content-digest").unwrap_or("").to_string();
    let ctype = r.header("content-type").unwrap_or("").to_string();
    if r.status == 200 {
        // The body is what the headers say.
        assert_eq!(format!("sha256:{}", support::sha256_hex(&r.body)), digest);
    }
    (r.status, digest, ctype)
}

struct Multi {
    reg: Registry,
    list: String,
    amd64: String,
}

/// A registry with `test/multi:docker` (a Docker manifest list) and `test/multi:oci` (an OCI
/// index), each of linux/amd64 and linux/arm64.
fn registry() -> Multi {
    let reg = Registry::start(None);
    let amd64 = image::platform_image(1, "amd64", true);
    let arm64 = image::platform_image(2, "arm64", true);
    let (_, list) = image::push_multi(
        reg.addr,
        "test/multi",
        "docker",
        &[("amd64", &amd64), ("arm64", &arm64)],
    );
    let oamd64 = image::platform_image(3, "amd64", false);
    let oarm64 = image::platform_image(4, "arm64", false);
    image::push_multi(
        reg.addr,
        "test/multi",
        "oci",
        &[("amd64", &oamd64), ("arm64", &oarm64)],
    );
    Multi {
        list,
        amd64: amd64.manifest_digest.clone(),
        reg,
    }
}

#[test]
fn a_manifest_list_tag_answers_each_client_as_upstream_does_in_either_order() {
    let m = registry();
    // What upstream answers, asked directly.
    let direct_all = get(m.reg.addr, "/v2/test/multi/manifests/docker", ALL);
    let direct_v2 = get(m.reg.addr, "/v2/test/multi/manifests/docker", V2_ONLY);
    assert_eq!(direct_all.1, m.list);
    assert_eq!(
        direct_v2.1, m.amd64,
        "the reference picks linux/amd64 for a v2-only client"
    );

    let mut last_root = None;
    for v2_first in [true, false] {
        let rc = Ringcache::start(&m.reg.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
        let order: &[&str] = if v2_first {
            &[V2_ONLY, ALL, V2_ONLY, ALL]
        } else {
            &[ALL, V2_ONLY, ALL, V2_ONLY]
        };
        for (i, accept) in order.iter().enumerate() {
            let want = if *accept == ALL {
                &direct_all
            } else {
                &direct_v2
            };
            let got = get(rc.addr, "/v2/test/multi/manifests/docker", accept);
            assert_eq!(
                &got, want,
                "request {i} (v2 first: {v2_first}) with Accept {accept}"
            );
        }
        // HEAD answers the same digests.
        let head = http::request(
            rc.addr,
            "HEAD",
            "/v2/test/multi/manifests/docker",
            &[("Accept", V2_ONLY)],
            b"",
        );
        assert_eq!(head.header("docker-content-digest"), Some(m.amd64.as_str()));
        last_root = Some((rc.root.clone(), rc));
    }
    // Across a restart (the tags are journalled) with upstream gone, the tags are served from
    // the cache (stale-if-error), and each client still gets its own answer.
    let (root, mut rc) = last_root.unwrap();
    let url = m.reg.url();
    rc.proc.signal(libc::SIGTERM);
    rc.proc.wait_exit(std::time::Duration::from_secs(20));
    drop(m.reg);
    let again = Ringcache::start_at(&url, "", &root);
    assert_eq!(
        get(again.addr, "/v2/test/multi/manifests/docker", ALL),
        direct_all
    );
    assert_eq!(
        get(again.addr, "/v2/test/multi/manifests/docker", V2_ONLY),
        direct_v2
    );
}

#[test]
fn an_oci_index_is_never_sent_to_a_client_that_cannot_read_one() {
    let m = registry();
    let direct_all = get(m.reg.addr, "/v2/test/multi/manifests/oci", ALL);
    let direct_v2 = get(m.reg.addr, "/v2/test/multi/manifests/oci", V2_ONLY);
    assert_eq!(direct_all.0, 200);
    assert_eq!(
        direct_v2.0, 404,
        "the reference refuses an OCI index to a v2-only client"
    );
    for v2_first in [true, false] {
        let rc = Ringcache::start(&m.reg.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
        let order: &[&str] = if v2_first {
            &[V2_ONLY, ALL, V2_ONLY, ALL]
        } else {
            &[ALL, V2_ONLY, ALL, V2_ONLY]
        };
        for (i, accept) in order.iter().enumerate() {
            let got = get(rc.addr, "/v2/test/multi/manifests/oci", accept);
            if *accept == ALL {
                assert_eq!(got, direct_all, "request {i} (v2 first: {v2_first})");
            } else {
                assert_eq!(got.0, 404, "request {i} (v2 first: {v2_first}): {got:?}");
            }
        }
        // By digest: an OCI index the client does not accept is refused, as upstream does.
        let by_digest = format!("/v2/test/multi/manifests/{}", direct_all.1);
        assert_eq!(get(m.reg.addr, &by_digest, V2_ONLY).0, 404);
        let r = http::request(rc.addr, "GET", &by_digest, &[("Accept", V2_ONLY)], b"");
        assert_eq!(r.status, 404);
        assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
        assert_eq!(get(rc.addr, &by_digest, ALL), direct_all);
    }
}

/// skopeo choosing linux/arm64 after a v2-only client cached the amd64 pick: it must get the
/// index and copy arm64 (the bug: every client was given the amd64 manifest).
#[test]
fn skopeo_choosing_a_platform_gets_that_platform_after_a_v2_only_client() {
    support::require("skopeo");
    let m = registry();
    let rc = Ringcache::start(&m.reg.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
    assert_eq!(
        get(rc.addr, "/v2/test/multi/manifests/docker", V2_ONLY).1,
        m.amd64
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "--override-arch",
            "arm64",
            "--override-os",
            "linux",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}} {{.Architecture}}",
        ])
        .arg(format!("docker://{}/test/multi:docker", rc.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The index's digest (skopeo reads the index, then picks the platform from it).
    assert_eq!(
        said,
        format!("{} arm64", m.list),
        "skopeo got another platform"
    );
    let dest = dir.path().join("arm64");
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "--override-arch",
            "arm64",
            "copy",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}/test/multi:docker", rc.addr))
        .arg(format!("oci:{}", dest.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The copied image's config says arm64.
    let read = |d: &str| {
        let path = dest
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], "arm64", "copied {config}");
}

/// Media types are case-insensitive here, so the cache files an answer for an upper-case
/// Accept under the types it names; it must also ask upstream with exactly those types (in their
/// registered spelling: Distribution compares case-sensitively), or upstream's answer for one
/// kind of client (a platform pick) would be filed for another (every list-accepting client).
#[test]
fn an_accept_in_another_case_cannot_file_a_platform_pick_for_everyone() {
    let m = registry();
    let direct_all = get(m.reg.addr, "/v2/test/multi/manifests/docker", ALL);
    let rc = Ringcache::start(&m.reg.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
    let upper = format!(
        "{}, {}, {}, {}",
        "application/vnd.docker.distribution.manifest.list.v2+json".to_uppercase(),
        "application/vnd.oci.image.index.v1+json".to_uppercase(),
        V2_ONLY,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let first = get(rc.addr, "/v2/test/multi/manifests/docker", &upper);
    assert_eq!(first.0, 200);
    for accept in [ALL, "*/*"] {
        assert_eq!(
            get(rc.addr, "/v2/test/multi/manifests/docker", accept),
            direct_all,
            "after an upper-case Accept, Accept {accept}"
        );
    }
}

/// A manifest fetched by digest for a client whose Accept does not name its type is still
/// fetched whole (with every type) and cached: the fill serves every client that joins it, and
/// each client's own Accept is applied by ringcache.
#[test]
fn a_manifest_by_digest_is_fetched_for_everyone_whatever_the_first_client_accepts() {
    let m = registry();
    let rc = Ringcache::start(&m.reg.url(), "");
    let index = get(m.reg.addr, "/v2/test/multi/manifests/oci", ALL);
    let path = format!("/v2/test/multi/manifests/{}", index.1);
    let gets = |reg: &Registry| {
        reg.proc.count_log(&[
            "http.request.method=GET",
            &format!("/manifests/{}", index.1),
            "response completed",
        ])
    };
    let before = gets(&m.reg);
    let r = http::request(rc.addr, "GET", &path, &[("Accept", V2_ONLY)], b"");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    rc.proc
        .wait_log("fill committed", std::time::Duration::from_secs(10));
    assert_eq!(get(rc.addr, &path, ALL), index);
    assert_eq!(
        gets(&m.reg),
        before + 1,
        "one upstream GET, made for every kind of client"
    );
}
