//! Real container clients pulling through ringcache: containerd (`ctr`), podman and dockerd
//! (`docker`), each with ringcache as its registry mirror and the reference registry
//! (Distribution 2.8) as ringcache's upstream. Each must get exactly the pushed image, by tag
//! and by digest, the platform it asks for out of a multi-platform index, and a warm pull
//! (a second client with empty storage) must be served without any upstream blob GET.
//!
//! They run as root, every byte of client state under temp dirs, loopback only (see
//! tests/support/clients.rs). dockerd mirrors Docker Hub only, so for it ringcache's upstream
//! plays Docker Hub (`docker.io/library/...`); the others pull `registry.test/...`, a name
//! that resolves nowhere, mirrored to ringcache.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::clients::{Client, Containerd, Docker, Podman, Pulled};
use support::{eventually, image, sha256_hex, Registry, Ringcache};

/// The registry name containerd and podman pull from (mirrored to ringcache; `.test` is
/// reserved, RFC 6761, so it can never be real).
const REGISTRY: &str = "registry.test";

/// ringcache's default upstream answers under that name (containerd sends it as `?ns=`; an
/// `ns` ringcache does not mirror is refused, so containerd would fall back to the registry).
const MIRRORS: &str = "ringcache: {upstream: {registry: registry.test}}\n";

/// A started client and the registry name its references use.
type Start = fn(SocketAddr) -> (Box<dyn Client>, &'static str);

fn containerd(mirror: SocketAddr) -> (Box<dyn Client>, &'static str) {
    (Box::new(Containerd::start(&[(REGISTRY, mirror)])), REGISTRY)
}

fn podman(mirror: SocketAddr) -> (Box<dyn Client>, &'static str) {
    (Box::new(Podman::start(&[(REGISTRY, mirror)])), REGISTRY)
}

fn docker(mirror: SocketAddr) -> (Box<dyn Client>, &'static str) {
    (Box::new(Docker::start(mirror)), "docker.io")
}

fn config_digest(img: &image::Image) -> String {
    format!("sha256:{}", sha256_hex(&img.config))
}

fn pull(client: &dyn Client, reference: &str, platform: &str) -> Pulled {
    client
        .pull(reference, platform)
        .unwrap_or_else(|e| panic!("{} pull {reference} ({platform}): {e}", client.name()))
}

/// Blob GETs ringcache answered with 200 (from its access log).
fn blobs_served(rc: &Ringcache) -> usize {
    rc.proc.count_log(&[
        "ringcache::access",
        "method=GET",
        "/blobs/sha256:",
        "status=200",
    ])
}

/// By tag, by digest, and one platform out of an OCI index and out of a Docker manifest
/// list: the client records exactly the pushed digests.
fn pulls_exactly_the_pushed_images(start: Start) {
    let reg = Registry::start(None);
    let app = image::image(1, &[30_000, 5_000]);
    image::push(reg.addr, "library/app", "v1", &app, None);
    // Pushed by digest only: a client can get it no other way.
    let pinned = image::image(2, &[4_000]);
    image::push(
        reg.addr,
        "library/pinned",
        &pinned.manifest_digest,
        &pinned,
        None,
    );
    let amd = image::platform_image(11, "amd64", false);
    let arm = image::platform_image(12, "arm64", false);
    let (_, oci_index) = image::push_multi(
        reg.addr,
        "library/multi",
        "v1",
        &[("amd64", &amd), ("arm64", &arm)],
    );
    let damd = image::platform_image(21, "amd64", true);
    let darm = image::platform_image(22, "arm64", true);
    let (_, docker_list) = image::push_multi(
        reg.addr,
        "library/dmulti",
        "v1",
        &[("amd64", &damd), ("arm64", &darm)],
    );
    let rc = Ringcache::start(&reg.url(), MIRRORS);
    let (client, host) = start(rc.addr);
    let client = client.as_ref();

    let cases = [
        (
            "library/app:v1".to_string(),
            "linux/amd64",
            &app.manifest_digest,
            &app,
        ),
        (
            format!("library/pinned@{}", pinned.manifest_digest),
            "linux/amd64",
            &pinned.manifest_digest,
            &pinned,
        ),
        (
            "library/multi:v1".to_string(),
            "linux/arm64",
            &oci_index,
            &arm,
        ),
        (
            "library/dmulti:v1".to_string(),
            "linux/arm64",
            &docker_list,
            &darm,
        ),
    ];
    for (reference, platform, digest, img) in cases {
        let reference = format!("{host}/{reference}");
        let got = pull(client, &reference, platform);
        assert_eq!(
            got,
            Pulled {
                digest: digest.clone(),
                config: config_digest(img),
            },
            "{} pulled {reference} ({platform}) through ringcache",
            client.name()
        );
    }
}

/// A cold pull by one client, then the same pull by a second client with empty storage:
/// ringcache serves every blob again, none from upstream.
fn warm_pull_gets_no_blob_upstream(start: Start) {
    let reg = Registry::start(None);
    let img = image::image(3, &[50_000, 10_000]);
    image::push(reg.addr, "library/warm", "v1", &img, None);
    let blobs = img.layers.len() + 1;
    let rc = Ringcache::start(&reg.url(), MIRRORS);

    let (cold, host) = start(rc.addr);
    let reference = format!("{host}/library/warm:v1");
    let want = Pulled {
        digest: img.manifest_digest.clone(),
        config: config_digest(&img),
    };
    assert_eq!(pull(cold.as_ref(), &reference, "linux/amd64"), want);
    // The registry logs each GET after its response: wait until the cold fills show.
    eventually(
        Duration::from_secs(10),
        "the cold pull's upstream blob GETs",
        || (reg.blob_gets() >= blobs).then_some(()),
    );
    let upstream = reg.blob_gets();
    let served = blobs_served(&rc);
    drop(cold);

    let (warm, _) = start(rc.addr);
    assert_eq!(pull(warm.as_ref(), &reference, "linux/amd64"), want);
    // The warm pull went through ringcache (not some leftover local copy)...
    eventually(Duration::from_secs(10), "the warm pull's blob GETs", || {
        (blobs_served(&rc) >= served + blobs).then_some(())
    });
    // ...and ringcache went upstream for none of it.
    assert_eq!(
        reg.blob_gets(),
        upstream,
        "{}'s warm pull made ringcache GET a blob upstream",
        warm.name()
    );
}

#[test]
fn containerd_pulls_exactly_the_pushed_images() {
    pulls_exactly_the_pushed_images(containerd);
}

#[test]
fn containerd_warm_pull_gets_no_blob_upstream() {
    warm_pull_gets_no_blob_upstream(containerd);
}

#[test]
fn podman_pulls_exactly_the_pushed_images() {
    pulls_exactly_the_pushed_images(podman);
}

#[test]
fn podman_warm_pull_gets_no_blob_upstream() {
    warm_pull_gets_no_blob_upstream(podman);
}

#[test]
fn docker_pulls_exactly_the_pushed_images() {
    pulls_exactly_the_pushed_images(docker);
}

#[test]
fn docker_warm_pull_gets_no_blob_upstream() {
    warm_pull_gets_no_blob_upstream(docker);
}

/// When the mirror is down each client's pull fails at once and never resolves a name or
/// leaves loopback: containerd and podman fall back to the registry's `server`/location, a
/// closed loopback port; dockerd falls back to Docker Hub, whose names map to loopback in its
/// namespace (and `pull` says it fell back).
#[test]
fn a_failing_mirror_fails_the_pull_at_once_on_loopback() {
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for start in [containerd as Start, podman, docker] {
        let (client, host) = start(closed);
        let reference = format!("{host}/library/app:v1");
        let started = std::time::Instant::now();
        let err = client
            .pull(&reference, "linux/amd64")
            .expect_err("a pull through a closed mirror succeeded");
        // podman retries three times, a second apart.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} took {:?} to fail: {err}",
            client.name(),
            started.elapsed()
        );
        assert!(
            !err.contains("lookup "),
            "{} resolved a name: {err}",
            client.name()
        );
        assert!(
            err.contains("127.0.0.1:1"),
            "{} did not try the mirror: {err}",
            client.name()
        );
        if client.name() == "dockerd" {
            assert!(err.contains("fell back to Docker Hub"), "{err}");
        }
    }
}
