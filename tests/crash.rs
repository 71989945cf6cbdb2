//! Crash safety: SIGKILL at any point of a fill (mid-write, before fsync, before rename, after
//! rename) → after a restart no partial content is served, `ingest/` is swept before the
//! listener opens, and everything committed before is intact.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::upstream::{Blob, Fault, TestUpstream};
use support::{http, image, sha256_file, Ringcache};

fn blob_path(root: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn sigkill_at_every_point_of_a_fill_loses_nothing_committed_and_serves_nothing_partial() {
    support::require_failpoints();
    let up = TestUpstream::start();
    let points = [
        "mid-write",
        "commit-before-fsync",
        "commit-before-rename",
        "commit-after-rename",
    ];
    for (i, point) in points.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        // Content committed before the crash.
        let old = image::pseudo_random(1000 + i as u64, 300_000);
        let old_digest = up.add_blob(old.clone(), Fault::None);
        // The fill that is killed.
        let data = image::pseudo_random(2000 + i as u64, 3 * 1024 * 1024);
        let digest = up.add_blob_with(Blob {
            data: Arc::new(data.clone()),
            gated: *point == "mid-write",
            // Past one whole fill block (2 MiB): blocks are written when full.
            gate_at: 2 * 1024 * 1024 + 64 * 1024,
            ..Default::default()
        });
        let env = [("RINGCACHE_FAILPOINTS", format!("{point}=60s"))];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        {
            let rc = Ringcache::start_at(&up.url(), "", &root);
            assert_eq!(
                http::get(rc.addr, &format!("/v2/x/blobs/{old_digest}")).body,
                old
            );
            rc.proc.wait_log("fill committed", Duration::from_secs(10));
        }
        {
            let mut rc = Ringcache::start_env(&up.url(), "", &root, &env);
            let (addr, path) = (rc.addr, format!("/v2/x/blobs/{digest}"));
            let client = std::thread::spawn(move || http::get_hashed(addr, &path));
            if *point == "mid-write" {
                // The first block (2 MiB) is written and published; upstream holds the rest.
                rc.proc.wait_log("fill started", Duration::from_secs(10));
                support::eventually(
                    Duration::from_secs(10),
                    "the fill writes its first block",
                    || {
                        std::fs::read_dir(root.join("ingest"))
                            .unwrap()
                            .filter_map(|e| e.ok())
                            .any(|e| e.metadata().unwrap().len() >= 2 * 1024 * 1024)
                            .then_some(())
                    },
                );
            } else {
                rc.proc
                    .wait_log(&format!("failpoint {point}"), Duration::from_secs(10));
            }
            rc.proc.signal(libc::SIGKILL);
            rc.proc.wait_exit(Duration::from_secs(10));
            let (status, _, hex, complete) = client.join().unwrap();
            if *point == "mid-write" {
                assert!(
                    !(status == 200 && complete),
                    "{point}: no complete body from a killed fill"
                );
            } else if status == 200 && complete {
                // Killed during the commit: the body was verified before the fsync, so a
                // client may have it whole — and then it is the right one.
                assert_eq!(format!("sha256:{hex}"), digest, "{point}");
            }
        }
        up.open_gate();
        let rc = Ringcache::start_at(&up.url(), "", &root);
        assert!(
            std::fs::read_dir(root.join("ingest"))
                .unwrap()
                .next()
                .is_none(),
            "{point}: ingest/ swept at start"
        );
        // Committed before the crash: intact, and served from disk.
        assert_eq!(
            sha256_file(&blob_path(&root, &old_digest)),
            old_digest.trim_start_matches("sha256:")
        );
        assert_eq!(
            http::get(rc.addr, &format!("/v2/x/blobs/{old_digest}")).body,
            old
        );
        assert_eq!(
            up.count(&format!("GET /v2/x/blobs/{old_digest}")),
            1,
            "{point}"
        );
        // The killed fill: either absent, or (killed after the rename) complete and correct.
        let p = blob_path(&root, &digest);
        if *point == "commit-after-rename" {
            assert_eq!(
                sha256_file(&p),
                digest.trim_start_matches("sha256:"),
                "{point}"
            );
        } else {
            assert!(!p.exists(), "{point}: no partial content under blobs/");
        }
        let (status, _, hex, complete) =
            http::get_hashed(rc.addr, &format!("/v2/x/blobs/{digest}"));
        assert_eq!(
            (status, complete, format!("sha256:{hex}")),
            (200, true, digest.clone()),
            "{point}"
        );
    }
}
