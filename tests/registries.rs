//! One ringcache mirroring several registries (`ringcache.upstreams`), chosen by containerd's
//! `?ns=` or by a path prefix: each registry's own content, never another's; an unknown
//! registry refused without any upstream connection; a tier that forwards the namespace.
//! Real clients (containerd, podman, dockerd) pull two different images published under the
//! same repository name by two reference registries through one ringcache.

mod support;

use std::time::Duration;

use support::clients::{Client, Containerd, Docker, Podman, Pulled};
use support::upstream::{Fault, TestUpstream};
use support::{eventually, http, image, sha256_hex, Registry, Ringcache};

/// A ringcache whose default upstream stands for `docker.io` at `hub`, mirroring `ghcr.io`
/// at `ghcr` too.
fn two_registries(hub: &str, ghcr: &str, extra: &str) -> Ringcache {
    Ringcache::start(
        hub,
        &format!(
            "ringcache:\n  upstream: {{registry: docker.io}}\n  upstreams:\n    ghcr.io: {{remoteurl: {ghcr}}}\n{extra}"
        ),
    )
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Each registry answers for its own repository of the same name; `ns`, a prefix and the
/// default select them; an unknown `ns` is a 404 NAME_UNKNOWN that reaches no upstream, an
/// invalid one a 400.
#[test]
fn each_registry_answers_for_its_own_repository_of_the_same_name() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    let hub_blob = hub.add_blob(b"docker hub's layer".to_vec(), Fault::None);
    let ghcr_blob = ghcr.add_blob(b"ghcr's layer, another publisher".to_vec(), Fault::None);
    let hub_manifest = hub.add_manifest("team/app", "1", OCI_MANIFEST, b"{\"hub\":1}".to_vec());
    let ghcr_manifest = ghcr.add_manifest("team/app", "1", OCI_MANIFEST, b"{\"ghcr\":1}".to_vec());
    let rc = two_registries(&hub.url(), &ghcr.url(), "");
    let get = |path: &str| http::request(rc.addr, "GET", path, &[("Accept", OCI_MANIFEST)], b"");

    // By tag: the default, by ns (either of Docker Hub's names), by prefix.
    for path in [
        "/v2/team/app/manifests/1",
        "/v2/team/app/manifests/1?ns=docker.io",
        "/v2/team/app/manifests/1?ns=registry-1.docker.io",
        "/v2/docker.io/team/app/manifests/1",
    ] {
        let r = get(path);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"{\"hub\":1}"[..]),
            "{path}"
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(hub_manifest.as_str())
        );
    }
    for path in [
        "/v2/team/app/manifests/1?ns=ghcr.io",
        "/v2/ghcr.io/team/app/manifests/1",
    ] {
        let r = get(path);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"{\"ghcr\":1}"[..]),
            "{path}"
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(ghcr_manifest.as_str())
        );
    }
    // Blobs: each from its own registry; a digest one registry holds is not served under the
    // other's name, although it is in the store (the other registry must confirm it).
    assert_eq!(get(&format!("/v2/team/app/blobs/{hub_blob}")).status, 200);
    assert_eq!(
        get(&format!("/v2/team/app/blobs/{ghcr_blob}?ns=ghcr.io")).status,
        200
    );
    let cross = get(&format!("/v2/team/app/blobs/{hub_blob}?ns=ghcr.io"));
    assert_eq!(cross.status, 404, "{}", cross.text());
    assert_eq!(cross.error_code(), "BLOB_UNKNOWN");
    let cross = get(&format!("/v2/ghcr.io/team/app/manifests/{hub_manifest}"));
    assert_eq!(cross.status, 404, "{}", cross.text());
    // Each upstream was asked for its own blob once (and ghcr for the other's, refusing it).
    assert_eq!(hub.count(&format!("GET /v2/team/app/blobs/{hub_blob}")), 1);
    assert_eq!(
        ghcr.count(&format!("GET /v2/team/app/blobs/{ghcr_blob}")),
        1
    );
    assert_eq!(hub.count(&format!("GET /v2/team/app/blobs/{ghcr_blob}")), 0);

    // An unknown registry: 404 NAME_UNKNOWN (containerd tries its next host), and no
    // upstream heard of it.
    let (hub_before, ghcr_before) = (hub.connections(), ghcr.connections());
    for path in [
        "/v2/team/app/manifests/1?ns=quay.io",
        "/v2/team/app/manifests/1?ns=docker.io.evil.example",
        &format!("/v2/team/app/blobs/{hub_blob}?ns=quay.io"),
        "/v2/team/app/tags/list?ns=quay.io",
        "/v2/_catalog?ns=quay.io",
    ] {
        let r = get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "NAME_UNKNOWN", "{path}");
    }
    for path in [
        "/v2/team/app/manifests/1?ns=a%20b",
        "/v2/team/app/manifests/1?ns=user%40ghcr.io",
        "/v2/team/app/manifests/1?ns=ghcr.io%2Fx",
        "/v2/team/app/manifests/1?ns=",
    ] {
        assert_eq!(get(path).status, 400, "{path}");
    }
    assert_eq!(
        (hub.connections(), ghcr.connections()),
        (hub_before, ghcr_before),
        "a refused registry reached an upstream"
    );
    // A registry-like first component that is not configured is a repository of the default.
    assert_eq!(get("/v2/quay.io/team/app/manifests/1").status, 404);
    assert!(
        hub.count("HEAD /v2/quay.io/team/app/manifests/1")
            + hub.count("GET /v2/quay.io/team/app/manifests/1")
            >= 1
    );

    // _catalog per upstream.
    let repos = |path: &str| get(path).json()["repositories"].clone();
    assert_eq!(repos("/v2/_catalog"), serde_json::json!(["team/app"]));
    assert_eq!(
        repos("/v2/_catalog?ns=ghcr.io"),
        serde_json::json!(["team/app"])
    );
    assert_eq!(
        repos("/v2/ghcr.io/_catalog"),
        serde_json::json!(["team/app"])
    );
    // The access log names the upstream.
    assert!(
        rc.proc
            .count_log(&["ringcache::access", "upstream=ghcr.io"])
            > 0
    );
}

/// A node whose registry is served by a parent ringcache (a tier) tells the parent the
/// registry with `ns`; the parent routes it to the right upstream.
#[test]
fn a_tier_forwards_the_namespace_to_its_parent() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    let hub_blob = hub.add_generated(1, 200_000, Fault::None);
    let ghcr_blob = ghcr.add_generated(2, 300_000, Fault::None);
    let parent = two_registries(&hub.url(), &ghcr.url(), "");
    let parent_url = format!("http://{}", parent.addr);
    // The child: both registries via the parent.
    let child = Ringcache::start(
        &parent_url,
        &format!(
            "ringcache:\n  upstream: {{registry: docker.io}}\n  upstreams:\n    ghcr.io: {{remoteurl: {parent_url}}}\n"
        ),
    );
    let (s, n, hex, _) = http::get_hashed(
        child.addr,
        &format!("/v2/team/app/blobs/{ghcr_blob}?ns=ghcr.io"),
    );
    assert_eq!((s, n), (200, 300_000));
    assert_eq!(format!("sha256:{hex}"), ghcr_blob);
    let (s, n, hex, _) = http::get_hashed(child.addr, &format!("/v2/team/app/blobs/{hub_blob}"));
    assert_eq!((s, n), (200, 200_000));
    assert_eq!(format!("sha256:{hex}"), hub_blob);
    // The parent heard ns=ghcr.io for the ghcr blob and ns=docker.io for Docker Hub's, and
    // asked each registry for its own blob only.
    assert_eq!(
        ghcr.count(&format!("GET /v2/team/app/blobs/{ghcr_blob}")),
        1
    );
    assert_eq!(hub.count(&format!("GET /v2/team/app/blobs/{hub_blob}")), 1);
    assert_eq!(hub.count(&format!("GET /v2/team/app/blobs/{ghcr_blob}")), 0);
    assert!(
        parent
            .proc
            .count_log(&["ringcache::access", "ns=ghcr.io", "upstream=ghcr.io"])
            >= 1
    );
}

// ---- real clients ----------------------------------------------------------------------

/// Two reference registries playing docker.io and ghcr.io, each with its own image under
/// `team/app:v1` (and a multi-platform index on ghcr.io), and one ringcache for both.
struct Two {
    hub: Registry,
    ghcr: Registry,
    hub_app: image::Image,
    ghcr_app: image::Image,
    ghcr_index: String,
    ghcr_arm: image::Image,
    rc: Ringcache,
}

fn two_reference_registries() -> Two {
    let hub = Registry::start(None);
    let ghcr = Registry::start(None);
    let hub_app = image::image(101, &[40_000, 7_000]);
    let ghcr_app = image::image(202, &[50_000, 9_000]);
    image::push(hub.addr, "team/app", "v1", &hub_app, None);
    image::push(ghcr.addr, "team/app", "v1", &ghcr_app, None);
    let amd = image::platform_image(211, "amd64", false);
    let arm = image::platform_image(212, "arm64", false);
    let (_, ghcr_index) = image::push_multi(
        ghcr.addr,
        "team/multi",
        "v1",
        &[("amd64", &amd), ("arm64", &arm)],
    );
    let rc = two_registries(&hub.url(), &ghcr.url(), "");
    Two {
        hub,
        ghcr,
        hub_app,
        ghcr_app,
        ghcr_index,
        ghcr_arm: arm,
        rc,
    }
}

fn pulled(img: &image::Image, digest: &str) -> Pulled {
    Pulled {
        digest: digest.to_string(),
        config: format!("sha256:{}", sha256_hex(&img.config)),
    }
}

fn pull(client: &dyn Client, reference: &str, platform: &str) -> Pulled {
    client
        .pull(reference, platform)
        .unwrap_or_else(|e| panic!("{} pull {reference}: {e}", client.name()))
}

/// Each registry's own image by tag and by digest, one platform of an index; then a second
/// client pulls it all warm with no blob GET upstream.
fn pulls_each_registrys_own_image(two: &Two, start: &dyn Fn() -> Box<dyn Client>) {
    let cases = [
        (
            "docker.io/team/app:v1".to_string(),
            "linux/amd64",
            pulled(&two.hub_app, &two.hub_app.manifest_digest),
        ),
        (
            "ghcr.io/team/app:v1".to_string(),
            "linux/amd64",
            pulled(&two.ghcr_app, &two.ghcr_app.manifest_digest),
        ),
        (
            format!("ghcr.io/team/app@{}", two.ghcr_app.manifest_digest),
            "linux/amd64",
            pulled(&two.ghcr_app, &two.ghcr_app.manifest_digest),
        ),
        (
            "ghcr.io/team/multi:v1".to_string(),
            "linux/arm64",
            pulled(&two.ghcr_arm, &two.ghcr_index),
        ),
    ];
    let cold = start();
    for (reference, platform, want) in &cases {
        assert_eq!(
            &pull(cold.as_ref(), reference, platform),
            want,
            "{reference}"
        );
    }
    let blobs = |r: &Registry| r.blob_gets();
    // Every blob of the cold pulls reached each registry (its log lines come after the
    // response): 2 layers + config each for the apps, 1 + config for the arm64 image.
    eventually(
        Duration::from_secs(10),
        "the cold pulls' upstream blob GETs",
        || (blobs(&two.hub) >= 3 && blobs(&two.ghcr) >= 5).then_some(()),
    );
    let before = (blobs(&two.hub), blobs(&two.ghcr));
    drop(cold);
    let warm = start();
    for (reference, platform, want) in &cases {
        assert_eq!(
            &pull(warm.as_ref(), reference, platform),
            want,
            "warm {reference}"
        );
    }
    assert_eq!(
        (blobs(&two.hub), blobs(&two.ghcr)),
        before,
        "{}'s warm pulls made ringcache GET a blob upstream",
        warm.name()
    );
}

/// containerd with a `_default` catch-all `hosts.toml` pointing every registry at ringcache
/// (it sends `?ns=<registry>`).
#[test]
fn containerd_pulls_each_registrys_own_image() {
    let two = two_reference_registries();
    let mirror = two.rc.addr;
    let default = format!("[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    pulls_each_registrys_own_image(&two, &|| {
        Box::new(Containerd::start_with_hosts(&[(
            "_default",
            default.clone(),
        )]))
    });
}

/// podman with `registries.conf` mirrors whose locations carry the registry as a path prefix
/// (`<mirror>/ghcr.io`): containers/image sends no `ns`.
#[test]
fn podman_pulls_each_registrys_own_image() {
    let two = two_reference_registries();
    let mirror = two.rc.addr;
    pulls_each_registrys_own_image(&two, &|| {
        Box::new(Podman::start_with_locations(&[
            ("docker.io", format!("{mirror}/docker.io")),
            ("ghcr.io", format!("{mirror}/ghcr.io")),
        ]))
    });
}

/// dockerd's `registry-mirrors` mirrors Docker Hub only: it gets the docker.io image, never
/// ghcr.io's of the same name.
#[test]
fn docker_pulls_docker_hubs_image_through_the_default_upstream() {
    let two = two_reference_registries();
    let docker = Docker::start(two.rc.addr);
    assert_eq!(
        pull(&docker, "docker.io/team/app:v1", "linux/amd64"),
        pulled(&two.hub_app, &two.hub_app.manifest_digest)
    );
}

/// A registry not in the table: ringcache answers 404 NAME_UNKNOWN and containerd falls back
/// to the next host of its `hosts.toml`, the registry itself.
#[test]
fn containerd_falls_back_to_the_next_host_for_a_registry_ringcache_does_not_mirror() {
    let two = two_reference_registries();
    let other = Registry::start(None);
    let img = image::image(303, &[20_000]);
    image::push(other.addr, "team/app", "v1", &img, None);
    let mirror = two.rc.addr;
    let hosts = format!(
        "server = \"http://{}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        other.addr
    );
    let containerd = Containerd::start_with_hosts(&[("quay.test", hosts)]);
    assert_eq!(
        pull(&containerd, "quay.test/team/app:v1", "linux/amd64"),
        pulled(&img, &img.manifest_digest)
    );
    // ringcache refused it (and sent nothing upstream for it).
    assert!(
        two.rc
            .proc
            .count_log(&["ringcache::access", "ns=quay.test", "status=404"])
            >= 1
    );
    assert_eq!(two.hub.blob_gets() + two.ghcr.blob_gets(), 0);
}

/// After a restart, a registry's links and tags are still its own: served with no upstream
/// request for the content it confirmed, and still refused under the other registry.
#[test]
fn a_restart_keeps_each_registrys_links_apart() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    let blob = ghcr.add_blob(b"only ghcr has this".to_vec(), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let extra = format!(
        "ringcache:\n  upstream: {{registry: docker.io}}\n  upstreams:\n    ghcr.io: {{remoteurl: {}}}\n",
        ghcr.url()
    );
    let path = format!("/v2/team/app/blobs/{blob}?ns=ghcr.io");
    {
        let mut rc = Ringcache::start_at(&hub.url(), &extra, &root);
        assert_eq!(http::get(rc.addr, &path).status, 200);
        rc.proc.signal(libc::SIGTERM);
        assert!(rc.proc.wait_exit(Duration::from_secs(20)).success());
    }
    let before = ghcr.count(&format!("GET /v2/team/app/blobs/{blob}"))
        + ghcr.count(&format!("HEAD /v2/team/app/blobs/{blob}"));
    let rc = Ringcache::start_at(&hub.url(), &extra, &root);
    assert_eq!(http::get(rc.addr, &path).status, 200);
    let after = ghcr.count(&format!("GET /v2/team/app/blobs/{blob}"))
        + ghcr.count(&format!("HEAD /v2/team/app/blobs/{blob}"));
    assert_eq!(after, before, "the restored link was not ghcr.io's");
    // Docker Hub's repository of the same name never confirmed it.
    let r = http::get(rc.addr, &format!("/v2/team/app/blobs/{blob}"));
    assert_eq!(r.status, 404);
    assert_eq!(hub.count(&format!("HEAD /v2/team/app/blobs/{blob}")), 1);
}

/// SIGHUP reloads a table entry's credentials; the default upstream never gets them.
#[test]
fn sighup_reloads_an_entrys_credentials_and_they_stay_its_own() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    ghcr.require_bearer("ghcr-user", "right");
    ghcr.add_manifest("team/app", "1", OCI_MANIFEST, b"{\"ghcr\":1}".to_vec());
    hub.add_manifest("team/app", "1", OCI_MANIFEST, b"{\"hub\":1}".to_vec());
    let rc = Ringcache::start(
        &hub.url(),
        &format!(
            "ringcache:\n  upstream: {{registry: docker.io}}\n  upstreams:\n    ghcr.io: {{remoteurl: {}, username: ghcr-user, password: wrong}}\n",
            ghcr.url()
        ),
    );
    let get = |path: &str| http::request(rc.addr, "GET", path, &[("Accept", OCI_MANIFEST)], b"");
    assert_eq!(get("/v2/team/app/manifests/1?ns=ghcr.io").status, 401);
    let cfg = rc.root.with_extension("yml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("password: wrong", "password: right")).unwrap();
    rc.proc.signal(libc::SIGHUP);
    let line = rc.proc.wait_log("reloaded", Duration::from_secs(10));
    assert!(line.contains("credentials"), "{line}");
    let r = get("/v2/team/app/manifests/1?ns=ghcr.io");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"ghcr\":1}"[..]));
    assert_eq!(get("/v2/team/app/manifests/1").body, b"{\"hub\":1}");
    // Docker Hub's upstream was never sent an Authorization header.
    assert!(
        hub.seen().iter().all(|(_, authz)| authz.is_none()),
        "{:?}",
        hub.seen()
    );
}

/// A store written while the default upstream stood for one registry, restarted with it
/// standing for another: the old links are not the new registry's word, so the new one is
/// asked first. And a refused `ns` is a WARN naming the setting.
#[test]
fn a_new_default_registry_does_not_inherit_the_old_ones_links() {
    let up = TestUpstream::start();
    let blob = up.add_blob(b"confirmed by the old registry".to_vec(), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let path = format!("/v2/team/app/blobs/{blob}");
    let head = format!("HEAD /v2/team/app/blobs/{blob}");
    {
        let mut rc = Ringcache::start_at(
            &up.url(),
            "ringcache: {upstream: {registry: registry.corp}}\n",
            &root,
        );
        assert_eq!(http::get(rc.addr, &path).status, 200);
        let r = http::get(rc.addr, "/v2/team/app/manifests/1?ns=docker.io");
        assert_eq!(r.status, 404);
        rc.proc
            .wait_log("not mirrored here", Duration::from_secs(10));
        rc.proc.signal(libc::SIGTERM);
        assert!(rc.proc.wait_exit(Duration::from_secs(20)).success());
    }
    // Same registry name: the link holds, no confirmation.
    {
        let mut rc = Ringcache::start_at(
            &up.url(),
            "ringcache: {upstream: {registry: registry.corp}}\n",
            &root,
        );
        assert_eq!(http::get(rc.addr, &path).status, 200);
        assert_eq!(up.count(&head), 0);
        rc.proc.signal(libc::SIGTERM);
        assert!(rc.proc.wait_exit(Duration::from_secs(20)).success());
    }
    let rc = Ringcache::start_at(
        &up.url(),
        "ringcache: {upstream: {registry: docker.io}}\n",
        &root,
    );
    rc.proc
        .wait_log("another registry", Duration::from_secs(10));
    assert_eq!(http::get(rc.addr, &path).status, 200);
    assert_eq!(up.count(&head), 1, "the new registry was asked to confirm");
}
