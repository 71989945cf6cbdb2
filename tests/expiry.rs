//! Expiry, capacity and freshness: TTL counted from last use, the size cap evicting the least
//! recently used, readers of removed files unharmed, persisted state across restarts (clean,
//! SIGKILL, and a simulated wall-clock jump), tag freshness, revalidation and 404, `verify`.

mod support;

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::upstream::{Fault, TestUpstream};
use support::{http, image, Ringcache};

const MIB: usize = 1024 * 1024;
const MT: &str = "application/vnd.oci.image.manifest.v1+json";

fn blob_file(root: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn ttl_counts_from_last_use_and_expired_content_is_fetched_again() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&format!("{}, ttl: 2s", up.url()), "");
    let a = up.add_blob(image::pseudo_random(1, 10_000), Fault::None);
    let b = up.add_blob(image::pseudo_random(2, 10_000), Fault::None);
    for d in [&a, &b] {
        assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{d}")).status, 200);
        rc.proc
            .wait_count(&[d.as_str(), "fill committed"], 1, Duration::from_secs(10));
    }
    // Keep using A; B, unused, expires first.
    support::eventually(Duration::from_secs(20), "B expires", || {
        assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{a}")).status, 200);
        (rc.proc.count_log(&["entry expired", &b]) > 0).then_some(())
    });
    assert!(
        !blob_file(&rc.root, &b).exists(),
        "expired content is removed"
    );
    assert!(
        blob_file(&rc.root, &a).exists(),
        "content in use does not expire"
    );
    assert_eq!(rc.proc.count_log(&["entry expired", &a]), 0);
    // Left alone, A expires too.
    rc.proc
        .wait_count(&["entry expired", &a], 1, Duration::from_secs(10));
    // Expired content is a miss again.
    assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{b}")).status, 200);
    assert_eq!(up.count(&format!("GET /v2/x/blobs/{b}")), 2);
}

#[test]
fn the_size_cap_evicts_the_least_recently_used() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {storage: {size_max: 3MiB, high_water_percent: 95, low_water_percent: 70}}\n",
    );
    let [a, b, c] = [11u64, 12, 13].map(|s| up.add_blob(image::pseudo_random(s, MIB), Fault::None));
    let get = |d: &str| assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{d}")).status, 200);
    get(&a);
    get(&b);
    rc.proc
        .wait_count(&["fill committed"], 2, Duration::from_secs(10));
    get(&a); // A is now more recent than B
    get(&c); // 3 MiB > 95 %: evict down to 70 % → B goes, A and C stay
    rc.proc
        .wait_count(&["entry evicted", &b], 1, Duration::from_secs(10));
    assert!(!blob_file(&rc.root, &b).exists());
    assert!(blob_file(&rc.root, &a).exists() && blob_file(&rc.root, &c).exists());
    assert_eq!(
        rc.proc.count_log(&["entry evicted"]),
        1,
        "only down to the low mark"
    );
}

#[test]
fn a_client_streaming_a_file_that_expires_finishes_correctly() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&format!("{}, ttl: 1s", up.url()), "");
    let d = up.add_generated(21, 16 * MIB, Fault::None);
    let path = format!("/v2/x/blobs/{d}");
    assert_eq!(http::get_hashed(rc.addr, &path).0, 200);
    rc.proc
        .wait_count(&[&d, "fill committed"], 1, Duration::from_secs(10));
    // A hit starts streaming; the client reads a little, then waits for the expiry.
    let mut s = http::connect(rc.addr);
    http::send(&mut s, rc.addr, "GET", &path, &[], b"");
    let mut first = vec![0u8; 4096];
    s.read_exact(&mut first).unwrap();
    rc.proc
        .wait_count(&["entry expired", &d], 1, Duration::from_secs(10));
    assert!(!blob_file(&rc.root, &d).exists());
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap_or_default();
    let text = String::from_utf8_lossy(&first);
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    let mut body = first[body_start..].to_vec();
    body.extend_from_slice(&rest[..rest.len().min(16 * MIB - body.len())]);
    assert_eq!(
        body.len(),
        16 * MIB,
        "the stream finished after its file was removed"
    );
    assert_eq!(format!("sha256:{}", support::sha256_hex(&body)), d);
}

#[test]
fn state_survives_restart_and_sigkill_and_a_wall_clock_jump() {
    support::require_failpoints();
    let up = TestUpstream::start();
    let img = image::image(31, &[20_000]);
    let layer = up.add_blob(img.layers[0].clone(), Fault::None);
    up.add_manifest("team/app", "v1", MT, img.manifest.clone());
    // Touched to make the expiry thread flush its state: its "state flushed" lines mark time
    // passing on that thread.
    let sentinel = up.add_blob(image::pseudo_random(32, 1000), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    // Upstream gone is simulated by a dead URL: the registry it stands for stays the same
    // (else its links and tags would be dropped at start, as another registry's).
    const SAME: &str = "ringcache: {upstream: {registry: registry.test}}\n";
    // What a client can do with upstream gone, served from persisted state alone: the tag
    // (stale-if-error), the manifest with its media type, the blob under its linked repo.
    let check = |rc: &Ringcache, what: &str| {
        let r = http::request(
            rc.addr,
            "GET",
            "/v2/team/app/manifests/v1",
            &[("Accept", MT)],
            b"",
        );
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some(MT)),
            "{what}: tag from state"
        );
        assert_eq!(r.body, img.manifest, "{what}");
        let r = http::get(rc.addr, &format!("/v2/team/app/blobs/{layer}"));
        assert_eq!(
            (r.status, r.body == img.layers[0]),
            (200, true),
            "{what}: blob linked from state"
        );
    };
    {
        let mut rc = Ringcache::start_at(&format!("{}, ttl: 1h", up.url()), SAME, &root);
        let r = http::request(
            rc.addr,
            "GET",
            "/v2/team/app/manifests/v1",
            &[("Accept", MT)],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            http::get(rc.addr, &format!("/v2/team/app/blobs/{layer}")).status,
            200
        );
        assert_eq!(
            http::get(rc.addr, &format!("/v2/team/app/blobs/{sentinel}")).status,
            200
        );
        rc.proc
            .wait_count(&["fill committed"], 3, Duration::from_secs(10));
        rc.proc.signal(libc::SIGTERM);
        assert_eq!(rc.proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    }
    {
        let mut rc = Ringcache::start_at(
            &format!("{dead}, ttl: 1h"),
            "ringcache: {state: {interval: 200ms}, upstream: {registry: registry.test}}\n",
            &root,
        );
        check(&rc, "after a clean restart");
        // A crash loses at most one interval: after a flush, SIGKILL.
        rc.proc.wait_log("state flushed", Duration::from_secs(10));
        rc.proc.signal(libc::SIGKILL);
        rc.proc.wait_exit(Duration::from_secs(10));
    }
    {
        // The wall clock jumped a year ahead while stopped: nothing expires for that.
        let env = [("RINGCACHE_WALL_OFFSET_SECS", "31536000")];
        let mut rc = Ringcache::start_env(
            &format!("{dead}, ttl: 1h"),
            "ringcache: {state: {interval: 200ms}, upstream: {registry: registry.test}}\n",
            &root,
            &env,
        );
        // Content aged by the jump would be due at once: removed at the expiry thread's first
        // wheel tick (1 s), unless used before. So, using only the sentinel, wait until that
        // thread has flushed ten times, 200 ms apart: it has passed that tick (a slow machine
        // only makes the span longer). Nothing expired.
        support::eventually(Duration::from_secs(20), "ten state flushes", || {
            let r = http::get(rc.addr, &format!("/v2/team/app/blobs/{sentinel}"));
            assert_eq!(r.status, 200);
            (rc.proc.count_log(&["state flushed"]) >= 10).then_some(())
        });
        assert_eq!(rc.proc.count_log(&["entry expired"]), 0);
        check(&rc, "after SIGKILL and a clock jump forward");
        rc.proc.signal(libc::SIGTERM);
        rc.proc.wait_exit(Duration::from_secs(20));
    }
    {
        // ...and a jump back does not make content immortal: it still expires after its TTL.
        let env = [("RINGCACHE_WALL_OFFSET_SECS", "-31536000")];
        let rc = Ringcache::start_env(&format!("{dead}, ttl: 1s"), SAME, &root, &env);
        rc.proc
            .wait_count(&["entry expired"], 2, Duration::from_secs(15));
    }
}

#[test]
fn tags_fresh_window_revalidation_by_head_coalescing_and_404() {
    let up = TestUpstream::start();
    let img = image::image(41, &[1000]);
    let digest = up.add_manifest("a/b", "v1", MT, img.manifest.clone());
    let get = |rc: &Ringcache| {
        http::request(
            rc.addr,
            "GET",
            "/v2/a/b/manifests/v1",
            &[("Accept", MT)],
            b"",
        )
    };

    // Inside the freshness window: no upstream request at all after the first.
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 1h}}\n");
    for _ in 0..3 {
        assert_eq!(get(&rc).body, img.manifest);
    }
    assert_eq!(up.count("HEAD /v2/a/b/manifests/v1"), 1);
    drop(rc);

    // Past it: revalidated with HEAD, never a GET while the digest is unchanged.
    let rc = Ringcache::start(&up.url(), "ringcache: {tags: {fresh_for: 0s}}\n");
    for _ in 0..3 {
        assert_eq!(get(&rc).body, img.manifest);
    }
    assert_eq!(up.count("HEAD /v2/a/b/manifests/v1"), 1 + 3);
    assert_eq!(
        up.count("GET /v2/a/b/manifests/v1"),
        0,
        "never a counted GET by tag"
    );
    assert_eq!(
        up.count(&format!("GET /v2/a/b/manifests/{digest}")),
        2,
        "one GET by digest per cache"
    );

    // Concurrent revalidations of one tag make one HEAD (upstream is slow to answer it).
    up.delay_manifests(Duration::from_millis(400));
    let before = up.count("HEAD /v2/a/b/manifests/v1");
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (b, addr) = (barrier.clone(), rc.addr);
            std::thread::spawn(move || {
                b.wait();
                http::request(addr, "GET", "/v2/a/b/manifests/v1", &[("Accept", MT)], b"").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(
        up.count("HEAD /v2/a/b/manifests/v1") - before,
        1,
        "coalesced into one HEAD"
    );

    // Upstream deletes the tag: 404, and the tag is dropped (not served stale).
    up.remove_manifest("a/b", "v1");
    for _ in 0..2 {
        let r = get(&rc);
        assert_eq!((r.status, r.error_code()), (404, "MANIFEST_UNKNOWN".into()));
    }
}

#[test]
fn verify_rehashes_the_store_and_removes_what_does_not_match() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let good = up.add_blob(image::pseudo_random(51, 100_000), Fault::None);
    let bad = up.add_blob(image::pseudo_random(52, 100_000), Fault::None);
    {
        let mut rc = Ringcache::start_at(&up.url(), "", &root);
        for d in [&good, &bad] {
            assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{d}")).status, 200);
        }
        rc.proc
            .wait_count(&["fill committed"], 2, Duration::from_secs(10));
        rc.proc.signal(libc::SIGTERM);
        rc.proc.wait_exit(Duration::from_secs(20));
    }
    // Bit rot on disk.
    let mut bytes = std::fs::read(blob_file(&root, &bad)).unwrap();
    bytes[500] ^= 1;
    std::fs::write(blob_file(&root, &bad), bytes).unwrap();
    let cfg = root.with_extension("yml");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"))
            .args(["verify", "--config"])
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = run(&["--dry-run"]);
    assert!(
        report.contains(&format!("corrupt: {bad} (would remove)")),
        "{report}"
    );
    assert!(blob_file(&root, &bad).exists(), "a dry run changes nothing");
    let report = run(&[]);
    assert!(report.contains("1 corrupt files removed"), "{report}");
    assert!(
        report.contains("1 state records without files dropped"),
        "{report}"
    );
    assert!(!blob_file(&root, &bad).exists() && blob_file(&root, &good).exists());
    // The cache refetches what verify removed.
    let rc = Ringcache::start_at(&up.url(), "", &root);
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &format!("/v2/x/blobs/{bad}"));
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, bad.clone())
    );
}

#[test]
fn descriptors_kept_for_hits_are_closed_once_their_entry_is_removed() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&format!("{}, ttl: 1s", up.url()), "");
    let d = up.add_blob(image::pseudo_random(71, 50_000), Fault::None);
    let path = format!("/v2/x/blobs/{d}");
    for i in 0..3 {
        assert_eq!(http::get(rc.addr, &path).status, 200); // a miss, then hits on a kept fd
        if i == 0 {
            // The miss's client can finish before the commit does: hits come after it.
            rc.proc
                .wait_count(&["fill committed"], 1, Duration::from_secs(10));
        }
    }
    let hex = d.trim_start_matches("sha256:").to_string();
    let holds = || {
        std::fs::read_dir(format!("/proc/{}/fd", rc.proc.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target.to_string_lossy().contains(&hex))
    };
    assert!(holds(), "a hit keeps its descriptor open");
    rc.proc
        .wait_count(&["entry expired", &d], 1, Duration::from_secs(10));
    // Closed within a heartbeat (250 ms): bounded wait on that condition.
    support::eventually(
        Duration::from_secs(5),
        "a removed file's descriptor is closed (else its space is not freed)",
        || (!holds()).then_some(()),
    );
    // And the content comes back as a miss, correct.
    let (status, _, hex2, complete) = http::get_hashed(rc.addr, &path);
    assert_eq!((status, complete, hex2), (200, true, hex));
}
