//! Issue 20, between nodes: `ringcache export` writes the working set (or named images) as an
//! OCI image layout that skopeo reads; `ringcache import` loads it into a stopped cache's
//! store (refused while one runs), verifying every blob, so the new node serves those images
//! with no upstream request; a corrupt blob or an unknown registry is refused with its
//! reason.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::image::{self, Image};
use support::upstream::{Fault, TestUpstream};
use support::Ringcache;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const HUB: &str = "ringcache:\n  upstream: {registry: docker.io}\n  state: {interval: 200ms}\n";

fn publish(up: &TestUpstream, name: &str, tag: &str, img: &Image) {
    for l in &img.layers {
        up.add_blob(l.clone(), Fault::None);
    }
    up.add_blob(img.config.clone(), Fault::None);
    up.add_manifest(name, tag, OCI_MANIFEST, img.manifest.clone());
}

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

/// `ringcache <sub> --config <cfg> <args>`: (exit code, stdout, stderr).
fn run(sub: &str, cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg(sub)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A config for a stopped cache at `root` (for import).
fn config_at(dir: &Path, root: &Path, upstream: &str) -> std::path::PathBuf {
    let p = dir.join(format!(
        "{}-tools.yml",
        root.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &p,
        format!(
            "version: 0.1\nhttp: {{addr: 127.0.0.1:0}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {upstream}}}\n{HUB}",
            root.display()
        ),
    )
    .unwrap();
    p
}

fn skopeo(args: &[&str]) -> Result<String, String> {
    support::require("skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into())
    }
}

/// skopeo copies `src` into a fresh layout; panics with its stderr on failure.
fn copy(src: &str, arch: Option<&str>) {
    let dest = tempfile::tempdir().unwrap();
    let dst = format!("oci:{}:x", dest.path().display());
    let mut args = Vec::new();
    // A global option: before `copy`.
    if let Some(a) = arch {
        args.extend(["--override-arch", a]);
    }
    args.extend([
        "copy",
        "--src-tls-verify=false",
        "--retry-times=0",
        src,
        &dst,
    ]);
    if let Err(e) = skopeo(&args) {
        panic!("skopeo copy {src}: {e}");
    }
}

/// Warm node A, export its working set while it runs (skopeo reads the layout), import into
/// a fresh store for node B (refused while B runs), then B serves the images by digest with
/// no upstream request at all, and by tag (and one platform of an index) with the upstream
/// stopped.
#[test]
fn export_then_import_into_a_fresh_store_serves_with_no_upstream_request() {
    let up = TestUpstream::start();
    let app = image::image(21, &[200_000, 30_000]);
    publish(&up, "team/app", "v1", &app);
    let amd = image::platform_image(22, "amd64", false);
    let arm = image::platform_image(23, "arm64", false);
    let index = publish_multi(&up, "team/multi", "v2", &[("amd64", &amd), ("arm64", &arm)]);
    let dir = tempfile::tempdir().unwrap();
    let a = Ringcache::start_at(&up.url(), HUB, &dir.path().join("a"));
    let cfg_a = a.root.with_extension("yml");
    let url = a.url();
    let (code, out, err) = run(
        "warm",
        &cfg_a,
        &["--server", &url, "team/app:v1", "team/multi:v2"],
    );
    assert_eq!(code, 0, "{out}{err}");

    // Export from the running node, once its journal has both tags.
    let layout = dir.path().join("layout");
    let out = support::eventually(Duration::from_secs(10), "both tags exported", || {
        let (code, out, err) = run("export", &cfg_a, &["--to", layout.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        out.contains("2 images").then_some(out)
    });
    assert!(out.contains("exported docker.io/team/app:v1"), "{out}");
    assert!(out.contains("exported docker.io/team/multi:v2"), "{out}");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names.len(), 2, "{idx}");
    assert!(layout.join("oci-layout").exists());
    // skopeo reads it, by ref name; one platform of the index too.
    let src = |r: &str| format!("oci:{}:{r}", layout.display());
    copy(&src("docker.io/team/app:v1"), None);
    copy(&src("docker.io/team/multi:v2"), Some("arm64"));
    // Named images only; one not cached is an error naming it.
    let named = dir.path().join("named");
    let (code, out, err) = run(
        "export",
        &cfg_a,
        &[
            "--to",
            named.to_str().unwrap(),
            "team/app:v1",
            "team/nope:v1",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("exported docker.io/team/app:v1"), "{out}");
    assert!(err.contains("docker.io/team/nope:v1: not cached"), "{err}");

    // Import into a fresh store; refused while a cache runs on it.
    let root_b = dir.path().join("b");
    let cfg_b = config_at(dir.path(), &root_b, &up.url());
    let b = Ringcache::start_at(&up.url(), HUB, &root_b);
    let (code, _, err) = run(
        "import",
        &b.root.with_extension("yml"),
        &[layout.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in use"), "{err}");
    drop(b);
    let (code, out, err) = run("import", &cfg_b, &[layout.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported docker.io/team/app:v1"), "{out}");
    assert!(
        out.contains("2 images; 11 files copied and verified"),
        "{out}"
    );
    // Again: everything is there already.
    let (code, out, err) = run("import", &cfg_b, &[layout.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("0 files copied") && out.contains("11 already in the store"),
        "{out}"
    );

    // Node B: by digest, nothing reaches upstream.
    let dialled = up.connections();
    let b = Ringcache::start_at(&up.url(), HUB, &root_b);
    let addr = b.addr;
    copy(
        &format!("docker://{addr}/team/app@{}", app.manifest_digest),
        None,
    );
    copy(
        &format!("docker://{addr}/team/multi@{index}"),
        Some("arm64"),
    );
    copy(
        &format!("docker://{addr}/team/multi@{index}"),
        Some("amd64"),
    );
    assert_eq!(up.connections(), dialled, "node B asked upstream");
    // By tag, with the upstream stopped: the imported tags (stale-if-error).
    up.stop();
    copy(&format!("docker://{addr}/team/app:v1"), None);
    copy(&format!("docker://{addr}/team/multi:v2"), Some("arm64"));
}

/// A layout whose blob does not match its digest: that image is not imported (nor tagged),
/// the other is; one naming a registry this cache does not mirror is refused whole, before
/// anything changes.
#[test]
fn import_refuses_corrupt_blobs_and_unknown_registries() {
    let up = TestUpstream::start();
    let good = image::image(31, &[10_000]);
    let bad = image::image(32, &[10_000]);
    publish(&up, "team/good", "v1", &good);
    publish(&up, "team/bad", "v1", &bad);
    let dir = tempfile::tempdir().unwrap();
    let a = Ringcache::start_at(&up.url(), HUB, &dir.path().join("a"));
    let cfg_a = a.root.with_extension("yml");
    let url = a.url();
    let (code, out, err) = run(
        "warm",
        &cfg_a,
        &["--server", &url, "team/good:v1", "team/bad:v1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let layout = dir.path().join("layout");
    support::eventually(Duration::from_secs(10), "both tags exported", || {
        let (code, out, err) = run("export", &cfg_a, &["--to", layout.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        out.contains("2 images").then_some(())
    });
    drop(a);
    // Corrupt the bad image's layer in the layout (a copy: the export's files are hard links
    // into node A's store).
    let hex = bad.layer_digests()[0]
        .trim_start_matches("sha256:")
        .to_string();
    let p = layout.join("blobs/sha256").join(&hex);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 1;
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, bytes).unwrap();

    let root_b = dir.path().join("b");
    let cfg_b = config_at(dir.path(), &root_b, &up.url());
    let (code, out, err) = run("import", &cfg_b, &[layout.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("imported docker.io/team/good:v1"), "{out}");
    assert!(
        err.contains("docker.io/team/bad:v1") && err.contains("does not match its digest"),
        "{err}"
    );
    let hex_path = |root: &Path, hex: &str| root.join("blobs/sha256").join(&hex[..2]).join(hex);
    assert!(
        !hex_path(&root_b, &hex).exists(),
        "a corrupt blob was committed"
    );
    assert_eq!(
        std::fs::read_dir(root_b.join("ingest")).unwrap().count(),
        0,
        "a temp file was left in ingest/"
    );
    let state = std::fs::read_to_string(root_b.join("state/journal.jsonl")).unwrap();
    assert!(state.contains("team/good"), "{state}");
    assert!(
        !state.contains("team/bad"),
        "the failed image was tagged: {state}"
    );

    // A layout naming a registry that is not mirrored: refused whole.
    let idx_path = layout.join("index.json");
    let text = std::fs::read_to_string(&idx_path).unwrap();
    std::fs::write(
        &idx_path,
        text.replace("docker.io/team/good", "quay.io/team/good"),
    )
    .unwrap();
    let root_c = dir.path().join("c");
    let cfg_c = config_at(dir.path(), &root_c, &up.url());
    let (code, out, err) = run("import", &cfg_c, &[layout.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("quay.io") && err.contains("nothing was imported"),
        "{err}"
    );
    assert!(!root_c.exists(), "a refused import made the store");
}
