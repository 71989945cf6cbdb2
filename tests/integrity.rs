//! Integrity: a body that fails verification is never delivered complete, nothing wrong is
//! committed, a later request starts afresh; committed content survives a restart, and
//! unfinished fills are swept at start.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::upstream::{Blob, Fault, TestUpstream};
use support::{http, image, Ringcache};

fn blob_file(rc: &Ringcache, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    rc.root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn ingest_is_empty(rc: &Ringcache) -> bool {
    std::fs::read_dir(rc.root.join("ingest"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn corrupt_or_short_upstream_body_is_never_delivered_complete_nor_committed() {
    support::require_failpoints();
    let up = TestUpstream::start();
    // Every byte is in the temp file and published for a while before the verification: a
    // follower that did not hold the last byte back would deliver the whole corrupt body.
    let rc = Ringcache::start_with_env(
        &up.url(),
        "",
        &[("RINGCACHE_FAILPOINTS", "fill-before-verify=300ms")],
    );
    let size = 3 * 1024 * 1024 + 17;
    let cases = [
        ("corrupt last byte", Fault::Corrupt(size - 1)),
        ("corrupt first byte", Fault::Corrupt(0)),
        ("truncated", Fault::Truncate(size / 2)),
    ];
    for (seed, (what, fault)) in cases.into_iter().enumerate() {
        let data = image::pseudo_random(seed as u64 + 100, size);
        let digest = up.add_blob(data.clone(), fault.clone());
        let path = format!("/v2/x/blobs/{digest}");
        for attempt in 1..=2 {
            let (status, got, _, complete) = http::get_hashed(rc.addr, &path);
            assert!(
                !(status == 200 && complete),
                "{what}: a body failing verification was delivered complete"
            );
            assert!(got < size as u64, "{what}: {got} bytes");
            // Wait for the event: the fill's failure is logged once it has left the map.
            let failure = if matches!(fault, Fault::Truncate(_)) {
                "resumes exhausted"
            } else {
                "fill not committed"
            };
            rc.proc
                .wait_count(&[&digest, failure], attempt, Duration::from_secs(10));
            // A short body is resumed (four times) before the fill gives up; a corrupt one is not.
            let per_fill = if matches!(fault, Fault::Truncate(_)) {
                5
            } else {
                1
            };
            assert_eq!(
                up.count(&format!("GET {path}")),
                attempt * per_fill,
                "{what}: each request after a failure starts a fresh fill"
            );
        }
        assert!(
            !blob_file(&rc, &digest).exists(),
            "{what}: nothing may be committed"
        );
    }
    assert!(ingest_is_empty(&rc), "failed fills leave no temp files");
    // The server still serves good content.
    let good = up.add_blob(image::pseudo_random(7, 100_000), Fault::None);
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &format!("/v2/x/blobs/{good}"));
    assert_eq!((status, complete), (200, true));
    assert_eq!(format!("sha256:{hex}"), good);
}

#[test]
fn committed_content_survives_restart_and_ingest_is_swept() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let data = image::pseudo_random(9, 500_000);
    let digest = up.add_blob(data.clone(), Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    {
        let rc = Ringcache::start_at(&up.url(), "", &root);
        assert_eq!(http::get(rc.addr, &path).body, data);
        rc.proc.wait_log("fill committed", Duration::from_secs(10));
    }
    // A leftover temp file from a "crash" mid-fill.
    std::fs::write(root.join("ingest/deadbeef"), b"partial").unwrap();
    let rc = Ringcache::start_at(&up.url(), "", &root);
    assert!(
        !root.join("ingest/deadbeef").exists(),
        "ingest/ is swept before the listener opens"
    );
    assert_eq!(http::get(rc.addr, &path).body, data);
    assert_eq!(
        up.count(&format!("GET {path}")),
        1,
        "served from disk after restart"
    );
    // After a restart the repository link is re-confirmed with a HEAD (never a GET).
    assert_eq!(up.count(&format!("HEAD {path}")), 1);
}

#[test]
fn a_client_that_vanishes_does_not_stop_the_fill() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let data = image::pseudo_random(11, 8 * 1024 * 1024);
    let digest = up.add_blob_with(Blob {
        data: Arc::new(data),
        gated: true,
        ..Default::default()
    });
    let path = format!("/v2/x/blobs/{digest}");
    {
        let mut s = http::connect(rc.addr);
        http::send(&mut s, rc.addr, "GET", &path, &[], b"");
        rc.proc.wait_log("fill started", Duration::from_secs(10));
    } // the only client disconnects while the body is still held upstream
    up.open_gate();
    rc.proc.wait_log("fill committed", Duration::from_secs(20));
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &path);
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone())
    );
    assert_eq!(up.count(&format!("GET {path}")), 1);
}

#[test]
fn chunked_and_close_delimited_upstream_bodies() {
    use support::upstream::Framing;
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    for (seed, framing) in [(1u64, Framing::Chunked), (2, Framing::Close)] {
        let data = image::pseudo_random(seed + 500, 1_000_000 + seed as usize);
        let digest = up.add_blob_with(Blob {
            data: Arc::new(data.clone()),
            framing,
            ..Default::default()
        });
        let path = format!("/v2/x/blobs/{digest}");
        for _ in 0..2 {
            let r = http::get(rc.addr, &path);
            assert_eq!((r.status, r.body == data), (200, true), "{framing:?}");
        }
        assert_eq!(
            up.count(&format!("GET {path}")),
            1,
            "{framing:?}: committed once, then hits"
        );
    }
}

#[test]
fn followers_finish_once_verified_without_waiting_for_the_fsync() {
    support::require_failpoints();
    let up = TestUpstream::start();
    // The commit stops before its fsync for a long time: the body is verified by then.
    let rc = Ringcache::start_with_env(
        &up.url(),
        "",
        &[("RINGCACHE_FAILPOINTS", "commit-before-fsync=30s")],
    );
    let data = image::pseudo_random(77, 2 * 1024 * 1024 + 5);
    let digest = up.add_blob(data, Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &path);
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone()),
        "the whole verified body, before the commit"
    );
    // It really was before the commit: the fill is still parked at the fsync.
    rc.proc
        .wait_log("failpoint commit-before-fsync", Duration::from_secs(5));
    assert!(
        !blob_file(&rc, &digest).exists(),
        "not yet renamed into the store"
    );
    // The event that shows where the fill is was seen above: it has not committed.
    assert_eq!(rc.proc.count_log(&["fill committed"]), 0);
}
