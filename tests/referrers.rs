//! The referrers API (distribution-spec v1.1), end to end against the in-repo test upstream:
//! from an upstream with the API (filtered by `artifactType` by it or by ringcache, cached
//! within the tag freshness, served stale when upstream fails, pages followed), from one with
//! only the referrers tag schema's fallback tag, from one with neither (an empty index, never
//! a 404); and cosign's `.sig` / `.att` tags through the ordinary tag path.

mod support;

use support::http::{self, Resp};
use support::upstream::TestUpstream;
use support::{image, Ringcache};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

/// An artifact manifest about `subject` (OCI 1.1: `artifactType`, the empty config, `subject`).
fn artifact(subject: &str, subject_size: usize, artifact_type: &str, seed: u64) -> Vec<u8> {
    let layer = image::pseudo_random(seed, 64);
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [{
            "mediaType": "application/octet-stream",
            "digest": format!("sha256:{}", support::sha256_hex(&layer)),
            "size": layer.len(),
        }],
        "subject": {"mediaType": MANIFEST, "digest": subject, "size": subject_size},
        "annotations": {"seed": seed.to_string()},
    })
    .to_string()
    .into_bytes()
}

/// An image `a/b:v1` upstream and two artifacts about it (a signature and an SBOM): the
/// image's digest and the artifacts' (signature first).
fn image_with_artifacts(up: &TestUpstream) -> (String, String, String) {
    let img = image::image(1, &[1000]);
    let subject = up.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    let sig = artifact(&subject, img.manifest.len(), SIG, 11);
    let sbom = artifact(&subject, img.manifest.len(), SBOM, 12);
    let sig_d = up.add_manifest("a/b", "art-sig", MANIFEST, sig);
    let sbom_d = up.add_manifest("a/b", "art-sbom", MANIFEST, sbom);
    (subject, sig_d, sbom_d)
}

fn referrers(rc: &Ringcache, subject: &str, artifact_type: Option<&str>) -> Resp {
    let path = match artifact_type {
        Some(t) => format!(
            "/v2/a/b/referrers/{subject}?artifactType={}",
            t.replace('/', "%2F").replace('+', "%2B")
        ),
        None => format!("/v2/a/b/referrers/{subject}"),
    };
    http::get(rc.addr, &path)
}

/// The digests an answer lists, checking on the way that it is an OCI index.
fn listed(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(INDEX));
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], INDEX);
    let mut out: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn referrers_from_an_upstream_with_the_api_are_filtered_and_cached_within_freshness() {
    let up = TestUpstream::start();
    up.serve_referrers(Some(true));
    let (subject, sig, sbom) = image_with_artifacts(&up);
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 1h}}\n");

    let all = referrers(&rc, &subject, None);
    assert_eq!(listed(&all), sorted(&[&sig, &sbom]));
    assert_eq!(all.header("oci-filters-applied"), None, "nothing filtered");
    let d = all.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == sig.as_str())
        .cloned()
        .unwrap();
    assert_eq!(d["artifactType"], SIG);
    assert_eq!(
        d["annotations"]["seed"], "11",
        "descriptors pass through whole"
    );

    let only = referrers(&rc, &subject, Some(SBOM));
    assert_eq!(listed(&only), std::slice::from_ref(&sbom));
    assert_eq!(only.header("oci-filters-applied"), Some("artifactType"));
    let none = referrers(&rc, &subject, Some("application/x-none"));
    assert!(listed(&none).is_empty());
    assert_eq!(none.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 3);
    let filters = up.header_of("GET /v2/a/b/referrers/", "accept");
    assert!(filters.iter().all(|a| a.as_deref() == Some(INDEX)));
    assert!(
        up.count(&format!(
            "GET /v2/a/b/referrers/{subject}?artifactType=application%2Fspdx%2Bjson"
        )) == 1,
        "the filter is passed on: {:?}",
        up.seen()
    );

    // Within the freshness window: answered from the cache, per artifactType, byte for byte.
    for _ in 0..2 {
        assert_eq!(referrers(&rc, &subject, None).body, all.body);
        assert_eq!(referrers(&rc, &subject, Some(SBOM)).body, only.body);
    }
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 3, "no upstream request");
    // HEAD too.
    let head = http::request(
        rc.addr,
        "HEAD",
        &format!("/v2/a/b/referrers/{subject}"),
        &[],
        b"",
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(all.body.len().to_string().as_str())
    );
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 3);
}

#[test]
fn an_upstream_that_ignores_the_filter_is_filtered_here() {
    let up = TestUpstream::start();
    up.serve_referrers(Some(false));
    let (subject, sig, _sbom) = image_with_artifacts(&up);
    let rc = Ringcache::start(&up.url(), "");
    let r = referrers(&rc, &subject, Some(SIG));
    assert_eq!(listed(&r), [sig]);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
}

#[test]
fn upstream_pages_are_followed() {
    let up = TestUpstream::start();
    up.serve_referrers(Some(true));
    up.page_referrers(1);
    let (subject, sig, sbom) = image_with_artifacts(&up);
    let img = image::image(1, &[1000]);
    let third = up.add_manifest(
        "a/b",
        "art-att",
        MANIFEST,
        artifact(&subject, img.manifest.len(), SIG, 13),
    );
    let rc = Ringcache::start(&up.url(), "");
    assert_eq!(
        listed(&referrers(&rc, &subject, None)),
        sorted(&[&sig, &sbom, &third])
    );
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 3, "one GET per page");
    assert_eq!(
        listed(&referrers(&rc, &subject, Some(SIG))),
        sorted(&[&sig, &third])
    );
}

#[test]
fn a_failing_upstream_gets_the_last_answer_served_stale() {
    let up = TestUpstream::start();
    up.serve_referrers(Some(true));
    let (subject, sig, sbom) = image_with_artifacts(&up);
    // Always past the freshness window: every request asks upstream.
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 0s}}\n");
    let fresh = referrers(&rc, &subject, None);
    assert_eq!(listed(&fresh), sorted(&[&sig, &sbom]));
    assert_eq!(referrers(&rc, &subject, None).body, fresh.body);
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 2, "revalidated");

    for status in [503, 429, 500] {
        up.fail_manifests(Some(status));
        let before = up.count("GET /v2/a/b/referrers/");
        let stale = referrers(&rc, &subject, None);
        assert_eq!(stale.body, fresh.body, "stale-if-error on {status}");
        assert_eq!(
            up.count("GET /v2/a/b/referrers/"),
            before + 1,
            "asked first"
        );
    }
    // Nothing cached for this filter: upstream's error, as an OCI error (not a 404).
    let r = referrers(&rc, &subject, Some(SIG));
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".to_string()));
    // Upstream back: fresh answers again.
    up.fail_manifests(None);
    assert_eq!(listed(&referrers(&rc, &subject, Some(SIG))), [sig]);
}

/// The referrers tag schema's index for `subject`, listing `descriptors` (as `oras` pushes it).
fn fallback_index(descriptors: &[(&str, &str, usize)]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": descriptors.iter().map(|(d, t, size)| serde_json::json!({
            "mediaType": MANIFEST, "digest": d, "size": size, "artifactType": t,
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

#[test]
fn without_the_api_the_fallback_tag_lists_the_referrers() {
    let up = TestUpstream::start();
    let (subject, sig, sbom) = image_with_artifacts(&up);
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let index = fallback_index(&[(&sig, SIG, 500), (&sbom, SBOM, 600)]);
    let index_d = up.add_manifest("a/b", &tag, INDEX, index);
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 1h}}\n");

    let r = referrers(&rc, &subject, None);
    assert_eq!(listed(&r), sorted(&[&sig, &sbom]));
    let only = referrers(&rc, &subject, Some(SIG));
    assert_eq!(listed(&only), std::slice::from_ref(&sig));
    assert_eq!(only.header("oci-filters-applied"), Some("artifactType"));
    // The API was asked (404), then the tag resolved with HEAD and its index fetched by
    // digest, for each filter.
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 2);
    assert_eq!(up.count(&format!("HEAD /v2/a/b/manifests/{tag}")), 2);
    assert_eq!(up.count(&format!("GET /v2/a/b/manifests/{index_d}")), 2);
    assert_eq!(
        up.count(&format!("GET /v2/a/b/manifests/{tag}")),
        0,
        "no counted GET by tag"
    );
    // Cached.
    assert_eq!(referrers(&rc, &subject, None).body, r.body);
    assert_eq!(up.count("GET /v2/a/b/referrers/"), 2);
}

#[test]
fn a_revalidated_fallback_tag_that_did_not_move_is_not_fetched_again() {
    let up = TestUpstream::start();
    let (subject, sig, sbom) = image_with_artifacts(&up);
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let index_d = up.add_manifest("a/b", &tag, INDEX, fallback_index(&[(&sig, SIG, 500)]));
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 0s}}\n");
    for _ in 0..3 {
        assert_eq!(
            listed(&referrers(&rc, &subject, None)),
            std::slice::from_ref(&sig)
        );
    }
    assert_eq!(up.count(&format!("HEAD /v2/a/b/manifests/{tag}")), 3);
    assert_eq!(up.count(&format!("GET /v2/a/b/manifests/{index_d}")), 1);
    // An artifact pushed: the tag moves, the new index is read.
    let moved = up.add_manifest(
        "a/b",
        &tag,
        INDEX,
        fallback_index(&[(&sig, SIG, 500), (&sbom, SBOM, 600)]),
    );
    assert_eq!(
        listed(&referrers(&rc, &subject, None)),
        sorted(&[&sig, &sbom])
    );
    assert_eq!(up.count(&format!("GET /v2/a/b/manifests/{moved}")), 1);
    // Upstream down: the last answer.
    up.fail_manifests(Some(503));
    assert_eq!(
        listed(&referrers(&rc, &subject, None)),
        sorted(&[&sig, &sbom])
    );
}

#[test]
fn a_fallback_tag_pulled_through_the_tag_path_answers_when_upstream_is_down() {
    let up = TestUpstream::start();
    let (subject, sig, _) = image_with_artifacts(&up);
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let index = fallback_index(&[(&sig, SIG, 500)]);
    up.add_manifest("a/b", &tag, INDEX, index.clone());
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
    // A client of the tag schema pulls the tag itself (oras without the API does).
    let pulled = http::get(rc.addr, &format!("/v2/a/b/manifests/{tag}"));
    assert_eq!((pulled.status, &pulled.body), (200, &index));
    rc.proc
        .wait_count(&["fill committed"], 1, std::time::Duration::from_secs(10));
    up.fail_manifests(Some(503));
    let r = referrers(&rc, &subject, None);
    assert_eq!(listed(&r), [sig]);
}

#[test]
fn with_neither_the_api_nor_the_tag_the_answer_is_an_empty_index() {
    let up = TestUpstream::start();
    let (subject, _, _) = image_with_artifacts(&up);
    let rc = Ringcache::start(&up.url(), "");
    for t in [None, Some(SIG)] {
        let r = referrers(&rc, &subject, t);
        assert!(listed(&r).is_empty(), "{}", r.text());
        assert_eq!(r.json()["manifests"], serde_json::json!([]));
    }
    // A subject nothing is known about, in a repository upstream does not have: the same.
    let r = http::get(
        rc.addr,
        &format!("/v2/no/such/referrers/sha256:{}", "0".repeat(64)),
    );
    assert!(listed(&r).is_empty());
    let head = http::request(
        rc.addr,
        "HEAD",
        &format!("/v2/a/b/referrers/{subject}"),
        &[],
        b"",
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(INDEX));
}

#[test]
fn cosign_signature_and_attestation_tags_pass_through_the_tag_path() {
    let up = TestUpstream::start();
    let (subject, _, _) = image_with_artifacts(&up);
    let hex = subject.trim_start_matches("sha256:");
    let img = image::image(1, &[1000]);
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
    for (suffix, seed) in [("sig", 21), ("att", 22)] {
        let tag = format!("sha256-{hex}.{suffix}");
        // cosign's own (pre-1.1) layout: a manifest under the tag, no subject needed.
        let body = artifact(&subject, img.manifest.len(), SIG, seed);
        let d = up.add_manifest("a/b", &tag, MANIFEST, body.clone());
        let path = format!("/v2/a/b/manifests/{tag}");
        for _ in 0..2 {
            let r = http::request(rc.addr, "GET", &path, &[("Accept", MANIFEST)], b"");
            assert_eq!((r.status, &r.body), (200, &body), "{tag}");
            assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
        }
        assert_eq!(up.count(&format!("HEAD {path}")), 1, "cached like any tag");
        let h = http::request(rc.addr, "HEAD", &path, &[("Accept", MANIFEST)], b"");
        assert_eq!(h.status, 200);
    }
}

#[test]
fn each_registry_has_its_own_referrers() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    hub.serve_referrers(Some(true));
    ghcr.serve_referrers(Some(true));
    // The same repository name and subject in both registries, different artifacts.
    let img = image::image(1, &[1000]);
    let subject = hub.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    ghcr.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    let on_hub = hub.add_manifest("a/b", "s", MANIFEST, artifact(&subject, 1, SIG, 31));
    let on_ghcr = ghcr.add_manifest("a/b", "s", MANIFEST, artifact(&subject, 1, SIG, 32));
    let rc = Ringcache::start(
        &hub.url(),
        &format!(
            "ringcache:\n  upstream: {{registry: docker.io}}\n  tags: {{fresh_for: 1h}}\n  upstreams:\n    ghcr.io: {{remoteurl: {}}}\n",
            ghcr.url()
        ),
    );
    for _ in 0..2 {
        let h = http::get(rc.addr, &format!("/v2/a/b/referrers/{subject}"));
        assert_eq!(listed(&h), std::slice::from_ref(&on_hub));
        let g = http::get(rc.addr, &format!("/v2/a/b/referrers/{subject}?ns=ghcr.io"));
        assert_eq!(listed(&g), std::slice::from_ref(&on_ghcr));
        let p = http::get(rc.addr, &format!("/v2/ghcr.io/a/b/referrers/{subject}"));
        assert_eq!(listed(&p), std::slice::from_ref(&on_ghcr));
    }
    assert_eq!(hub.count("GET /v2/a/b/referrers/"), 1);
    assert_eq!(
        ghcr.count("GET /v2/a/b/referrers/"),
        1,
        "one answer per key"
    );
}
