//! Issue 20, on one node: `ringcache warm` pulls images through the running server (every
//! platform, or the `--platform`s asked for), reports each image's outcome and exits non-zero
//! when one failed; what is warm is served with the upstream gone (skopeo, one platform of a
//! multi-arch index, across a restart); `ringcache.offline` never dials and answers 404 for
//! what is not cached; `ringcache.pin` keeps images past a TTL and a size cap that remove
//! everything else, and `check-config` reports what pins hold.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::image::{self, Image};
use support::upstream::{Fault, TestUpstream};
use support::{http, Ringcache};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker Hub's names for the test upstream, tags revalidated on every request (so a pull
/// with the upstream gone exercises stale-if-error, not the freshness window).
const HUB: &str = "ringcache:\n  upstream: {registry: docker.io}\n  tags: {fresh_for: 0s}\n";

/// Publish `img` on the test upstream as `name:tag`.
fn publish(up: &TestUpstream, name: &str, tag: &str, img: &Image) {
    for l in &img.layers {
        up.add_blob(l.clone(), Fault::None);
    }
    up.add_blob(img.config.clone(), Fault::None);
    up.add_manifest(name, tag, OCI_MANIFEST, img.manifest.clone());
}

/// Publish a multi-platform image (an OCI index) as `name:tag`; returns the index's digest.
fn publish_multi(up: &TestUpstream, name: &str, tag: &str, platforms: &[(&str, &Image)]) -> String {
    let mut entries = Vec::new();
    for (arch, img) in platforms {
        publish(up, name, &img.manifest_digest, img);
        entries.push(
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest,
            "size": img.manifest.len(), "platform": {"architecture": arch, "os": "linux"}}),
        );
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
            .to_string()
            .into_bytes();
    up.add_manifest(name, tag, OCI_INDEX, index)
}

/// `ringcache <args>` with the config of `rc`: (exit code, stdout, stderr).
fn ringcache(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let sub = args[0];
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg(sub)
        .arg("--config")
        .arg(cfg)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn warm(rc: &Ringcache, args: &[&str]) -> (i32, String, String) {
    let url = rc.url();
    let mut all = vec!["warm", "--server", &url];
    all.extend_from_slice(args);
    ringcache(&rc.root.with_extension("yml"), &all)
}

/// skopeo copies `image` from the cache at `rc` into a fresh OCI layout; `arch` picks one
/// platform of an index. Returns the layout's blob digests.
fn skopeo_pull(rc: &Ringcache, image: &str, arch: Option<&str>) -> Vec<String> {
    support::require("skopeo");
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy"]);
    if let Some(a) = arch {
        cmd.args(["--override-arch", a]);
    }
    cmd.args(["copy", "--src-tls-verify=false", "--retry-times=0"])
        .arg(format!("docker://{}/{image}", rc.addr))
        .arg(format!("oci:{}:x", dest.path().display()));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {image} ({arch:?}): {}\nringcache log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        rc.proc.log.lock().unwrap()
    );
    let mut blobs: Vec<String> = std::fs::read_dir(dest.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    blobs.sort();
    blobs
}

fn blob_file(root: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Every digest of an image: manifest, config, layers.
fn digests_of(img: &Image) -> Vec<String> {
    let mut all = img.layer_digests();
    all.push(format!("sha256:{}", support::sha256_hex(&img.config)));
    all.push(img.manifest_digest.clone());
    all
}

/// Warm one image and one platform of another, then stop the upstream: skopeo pulls both
/// from the cache (the tag by stale-if-error, the platform's manifest and blobs by digest),
/// also after a restart (links and tags from the journal). The platform not asked for was
/// never fetched.
#[test]
fn warm_then_pull_with_the_upstream_stopped() {
    let up = TestUpstream::start();
    let app = image::image(1, &[300_000, 50_000]);
    publish(&up, "team/app", "v1", &app);
    let amd = image::platform_image(2, "amd64", false);
    let arm = image::platform_image(3, "arm64", false);
    publish_multi(&up, "team/multi", "v1", &[("amd64", &amd), ("arm64", &arm)]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut rc = Ringcache::start_at(
        &up.url(),
        &format!("{HUB}  state: {{interval: 200ms}}\n"),
        &root,
    );

    let (code, out, err) = warm(&rc, &["docker.io/team/app:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("docker.io/team/app:v1: done: 1 manifests, 3 blobs"),
        "{out}"
    );
    let (code, out, err) = warm(&rc, &["--platform", "linux/arm64", "team/multi:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("team/multi:v1: done: 2 manifests, 2 blobs"),
        "{out}"
    );
    // Plain lines when not on a terminal: what is to come, then the outcome.
    assert!(out.contains("team/multi:v1: 2 manifests, 2 blobs"), "{out}");
    for d in digests_of(&app).iter().chain(&arm.layer_digests()) {
        // Followers get the verified last byte before the commit's rename: wait for it.
        support::eventually(Duration::from_secs(10), &format!("{d} committed"), || {
            blob_file(&root, d).exists().then_some(())
        });
    }
    assert_eq!(
        up.count(&format!(
            "GET /v2/team/multi/blobs/{}",
            amd.layer_digests()[0]
        )),
        0,
        "--platform linux/arm64 fetched the amd64 layer"
    );
    // Warm again: served from the cache, nothing new upstream but tag revalidations.
    let before = up.count("GET ");
    let (code, out, _) = warm(&rc, &["team/app:v1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        up.count("GET "),
        before,
        "a warm of cached content went upstream"
    );

    up.stop();
    let app_blobs = skopeo_pull(&rc, "team/app:v1", None);
    for d in app.layer_digests() {
        assert!(app_blobs.contains(&d), "{d} missing from the pull");
    }
    let arm_blobs = skopeo_pull(&rc, "team/multi:v1", Some("arm64"));
    assert!(arm_blobs.contains(&arm.layer_digests()[0]));
    assert!(
        rc.proc
            .saw_within(&["serving the cached tag"], Duration::from_secs(5)),
        "{}",
        rc.proc.log.lock().unwrap()
    );
    // By digest, and HEAD of a tag.
    let r = http::get(
        rc.addr,
        &format!("/v2/team/app/blobs/{}", app.layer_digests()[1]),
    );
    assert_eq!((r.status, r.body == app.layers[1]), (200, true));
    let r = http::request(rc.addr, "HEAD", "/v2/team/app/manifests/v1", &[], b"");
    assert_eq!(r.status, 200);

    // After a restart, with nothing listening upstream: links and tags from the journal.
    rc.proc.signal(libc::SIGTERM);
    assert_eq!(rc.proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let rc = Ringcache::start_at(&dead, HUB, &root);
    skopeo_pull(&rc, "team/app:v1", None);
    skopeo_pull(&rc, "team/multi:v1", Some("arm64"));
    // The platform that was never warmed is not there to serve.
    let r = http::get(
        rc.addr,
        &format!("/v2/team/multi/manifests/{}", amd.manifest_digest),
    );
    assert_ne!(r.status, 200);
}

/// A missing image, an unknown registry and a bad reference each fail with their reason; the
/// good image is warmed; the exit status says something failed.
#[test]
fn warm_reports_each_failed_image_and_exits_non_zero() {
    let up = TestUpstream::start();
    let app = image::image(4, &[10_000]);
    publish(&up, "team/app", "v1", &app);
    let rc = Ringcache::start(&up.url(), HUB);
    let list = rc.root.with_extension("list");
    std::fs::write(
        &list,
        "# images\nteam/app:v1\n\nquay.io/x/y:1  # not mirrored\n",
    )
    .unwrap();
    let (code, out, err) = warm(
        &rc,
        &["--file", list.to_str().unwrap(), "team/nope:v1", "Bad:Ref"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("team/app:v1: done"), "{out}");
    let line = |image: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{image}: FAILED")))
            .unwrap_or_else(|| panic!("no failure line for {image}:\n{out}"))
            .to_string()
    };
    assert!(
        line("team/nope:v1").contains("404 MANIFEST_UNKNOWN"),
        "{out}"
    );
    assert!(
        line("quay.io/x/y:1").contains("registry quay.io is not mirrored"),
        "{out}"
    );
    assert!(line("Bad:Ref").contains("invalid image reference"), "{out}");
    assert!(err.contains("3 of 4 images failed"), "{err}");
    assert_eq!(up.count("GET /v2/x/"), 0);
    // No image at all is a usage error.
    let (code, _, err) = warm(&rc, &[]);
    assert_eq!(code, 2, "{err}");
    // A server that is not there: the image fails, naming the connection.
    let (code, out, _) = ringcache(
        &rc.root.with_extension("yml"),
        &[
            "warm",
            "--server",
            &format!("http://127.0.0.1:{}", support::free_port()),
            "team/app:v1",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("FAILED") && out.contains("connecting"),
        "{out}"
    );
}

/// `ringcache.offline` (turned on by SIGHUP here, and from the start on a second node): what
/// is cached is served, tags whatever their age; what is not is a 404 saying offline; the
/// upstream is never dialled.
#[test]
fn offline_never_dials_and_answers_404_for_what_is_not_cached() {
    let up = TestUpstream::start();
    let app = image::image(5, &[20_000]);
    publish(&up, "team/app", "v1", &app);
    let other = image::image(6, &[20_000]);
    publish(&up, "team/other", "v1", &other);
    let rc = Ringcache::start(&up.url(), HUB);
    let (code, out, err) = warm(&rc, &["team/app:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    let cfg = rc.root.with_extension("yml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}  offline: true\n")).unwrap();
    rc.proc.signal(libc::SIGHUP);
    let line = rc.proc.wait_log("reloaded", Duration::from_secs(10));
    assert!(line.contains("ringcache.offline"), "{line}");
    let dialled = up.connections();

    let get = |path: &str| http::request(rc.addr, "GET", path, &[("Accept", OCI_MANIFEST)], b"");
    // Cached: the tag (fresh_for is 0: any age), the manifest and blobs by digest.
    let r = get("/v2/team/app/manifests/v1");
    assert_eq!(
        (r.status, r.body == app.manifest),
        (200, true),
        "{}",
        r.text()
    );
    assert_eq!(
        get(&format!("/v2/team/app/blobs/{}", app.layer_digests()[0])).status,
        200
    );
    // Not cached: 404 of the right kind, saying offline.
    for (path, code) in [
        (
            "/v2/team/other/manifests/v1".to_string(),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/team/other/manifests/{}", other.manifest_digest),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/team/other/blobs/{}", other.layer_digests()[0]),
            "BLOB_UNKNOWN",
        ),
        // Cached, but never confirmed under this repository: not served unconfirmed.
        (
            format!("/v2/team/other/blobs/{}", app.layer_digests()[0]),
            "BLOB_UNKNOWN",
        ),
        ("/v2/team/other/tags/list".to_string(), "NAME_UNKNOWN"),
    ] {
        let r = get(&path);
        assert_eq!(
            (r.status, r.error_code()),
            (404, code.to_string()),
            "{path}"
        );
        assert!(r.text().contains("offline"), "{path}: {}", r.text());
    }
    let r = http::request(
        rc.addr,
        "HEAD",
        &format!("/v2/team/other/blobs/{}", other.layer_digests()[0]),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
    // warm fails for what is not cached, with the reason.
    let (code, out, _) = warm(&rc, &["team/other:v1"]);
    assert_eq!(code, 1);
    assert!(out.contains("offline"), "{out}");
    assert_eq!(
        up.connections(),
        dialled,
        "an offline cache dialled upstream"
    );

    // A node offline from the start never dials at all.
    let fresh = Ringcache::start(&up.url(), &format!("{HUB}  offline: true\n"));
    let dialled = up.connections();
    let r = http::get(fresh.addr, "/v2/team/app/manifests/v1");
    assert_eq!(
        (r.status, r.error_code()),
        (404, "MANIFEST_UNKNOWN".to_string())
    );
    let r = http::get(
        fresh.addr,
        &format!("/v2/team/app/blobs/{}", app.layer_digests()[0]),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (404, "BLOB_UNKNOWN".to_string())
    );
    assert_eq!(up.connections(), dialled);
}

/// A TTL that expires everything else leaves a pinned image (its index, both platforms and
/// their blobs); a SIGHUP that drops the pin lets it expire.
#[test]
fn a_pinned_image_outlives_a_ttl_that_expires_everything_else() {
    let up = TestUpstream::start();
    let amd = image::platform_image(7, "amd64", false);
    let arm = image::platform_image(8, "arm64", false);
    let index = publish_multi(
        &up,
        "team/pinned",
        "v1",
        &[("amd64", &amd), ("arm64", &arm)],
    );
    let other = image::image(9, &[10_000]);
    publish(&up, "team/other", "v1", &other);
    let rc = Ringcache::start(
        &format!("{}, ttl: 2s", up.url()),
        &format!("{HUB}  pin: [docker.io/team/pinned:v1]\n"),
    );
    let (code, out, err) = warm(&rc, &["team/pinned:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    // Index, two platform manifests, each one config and one layer.
    rc.proc.wait_count(
        &["pins resolved", "digests=7", "pending=[]"],
        1,
        Duration::from_secs(10),
    );
    let (code, out, err) = warm(&rc, &["team/other:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    // Everything of the other image expires (each deadline fires after the pinned image's).
    for d in digests_of(&other) {
        rc.proc
            .wait_count(&["entry expired", &d], 1, Duration::from_secs(20));
    }
    let mut pinned = digests_of(&amd);
    pinned.extend(digests_of(&arm));
    pinned.push(index.clone());
    for d in &pinned {
        assert!(blob_file(&rc.root, d).exists(), "pinned {d} was removed");
        assert_eq!(rc.proc.count_log(&["entry expired", d]), 0, "{d}");
    }
    // Unpinned by SIGHUP: it expires like the rest.
    let cfg = rc.root.with_extension("yml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("  pin: [docker.io/team/pinned:v1]\n", ""),
    )
    .unwrap();
    rc.proc.signal(libc::SIGHUP);
    let line = rc.proc.wait_log("reloaded", Duration::from_secs(10));
    assert!(line.contains("ringcache.pin"), "{line}");
    rc.proc
        .wait_count(&["entry expired", &index], 1, Duration::from_secs(20));
}

/// A size cap that evicts everything else leaves a pinned image; `check-config` reports what
/// pins hold against size_max, and says so when it cannot tell.
#[test]
fn a_pinned_image_outlives_a_cap_that_evicts_everything_else() {
    const MIB: usize = 1024 * 1024;
    let up = TestUpstream::start();
    let pinned = image::image(10, &[MIB]);
    publish(&up, "team/pinned", "v1", &pinned);
    let others: Vec<Image> = (11..14).map(|s| image::image(s, &[MIB])).collect();
    for (i, img) in others.iter().enumerate() {
        publish(&up, &format!("team/other{i}"), "v1", img);
    }
    // Layers are gzip'd pseudo-random bytes: a little over 1 MiB each.
    let rc = Ringcache::start(
        &up.url(),
        &format!(
            "{HUB}  pin: [team/pinned:v1]\n  state: {{interval: 200ms}}\n  storage: {{size_max: 4MiB, high_water_percent: 80, low_water_percent: 30}}\n"
        ),
    );
    let (code, out, err) = warm(&rc, &["team/pinned:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    rc.proc.wait_count(
        &["pins resolved", "digests=3", "pending=[]"],
        1,
        Duration::from_secs(10),
    );
    for i in 0..others.len() {
        let (code, out, err) = warm(&rc, &[&format!("team/other{i}:v1")]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // Past 80 % of 4 MiB: evicted down to 30 %, the least recently used first — but the
    // pinned image, the oldest, stays.
    rc.proc.wait_count(
        &["entry evicted", &others[0].layer_digests()[0]],
        1,
        Duration::from_secs(20),
    );
    for d in digests_of(&pinned) {
        assert!(blob_file(&rc.root, &d).exists(), "pinned {d} was evicted");
        assert_eq!(rc.proc.count_log(&["entry evicted", &d]), 0, "{d}");
    }
    // check-config, on the live store (once its journal has the tag: every 200 ms).
    let cfg = rc.root.with_extension("yml");
    let size: u64 = digests_of(&pinned)
        .iter()
        .map(|d| std::fs::metadata(blob_file(&rc.root, d)).unwrap().len())
        .sum();
    let want = format!("1 pinned images hold 3 cached files, {size} bytes");
    let err2 = support::eventually(Duration::from_secs(10), &want, || {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.contains(&want).then_some(err)
    });
    assert!(err2.contains("% of ringcache.storage.size_max"), "{err2}");
    // A store that is not there: it cannot tell, and says so.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let elsewhere = rc.root.with_extension("nowhere");
    let moved = cfg.with_extension("moved.yml");
    std::fs::write(
        &moved,
        text.replace(
            &format!("rootdirectory: {}", rc.root.display()),
            &format!("rootdirectory: {}", elsewhere.display()),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&moved)
        .output()
        .unwrap();
    let err3 = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err3}");
    assert!(err3.contains("cannot tell"), "{err3}");
    // A pin of a registry that is not mirrored is a config error naming it.
    std::fs::write(
        &moved,
        text.replace("pin: [team/pinned:v1]", "pin: [quay.io/a/b:1]"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&moved)
        .output()
        .unwrap();
    let err4 = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err4}");
    assert!(
        err4.contains("ringcache.pin[0]") && err4.contains("quay.io"),
        "{err4}"
    );
}

/// An image of a registry in `ringcache.upstreams` is warmed with `?ns=<registry>`: its own
/// upstream is asked, never the default one, and clients using either routing find it warm.
#[test]
fn warm_names_a_table_registry_by_ns() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    let img = image::image(15, &[20_000]);
    publish(&ghcr, "team/app", "v1", &img);
    let rc = Ringcache::start(
        &hub.url(),
        &format!(
            "{HUB}  upstreams:\n    ghcr.io: {{remoteurl: {}, tags: {{fresh_for: 1h}}}}\n",
            ghcr.url()
        ),
    );
    let (code, out, err) = warm(&rc, &["ghcr.io/team/app:v1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(hub.connections(), 0, "the default upstream was asked");
    assert_eq!(
        ghcr.count(&format!(
            "GET /v2/team/app/blobs/{}",
            img.layer_digests()[0]
        )),
        1
    );
    let gets = ghcr.count("GET ");
    for path in [
        format!("/v2/team/app/blobs/{}?ns=ghcr.io", img.layer_digests()[0]),
        format!("/v2/ghcr.io/team/app/blobs/{}", img.layer_digests()[0]),
        "/v2/ghcr.io/team/app/manifests/v1".to_string(),
    ] {
        let r = http::request(rc.addr, "GET", &path, &[("Accept", OCI_MANIFEST)], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(ghcr.count("GET "), gets, "a warm image was fetched again");
}
