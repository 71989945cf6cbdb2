//! Disk faults on a real small filesystem (a tmpfs the test mounts; needs root, as the test
//! command runs): disk full mid-fill and before it, a read-only root. Clients are served from
//! upstream, verified, nothing wrong is committed, hits keep working, one log line per
//! incident class, and caching resumes by itself when space returns.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::upstream::{Fault, TestUpstream};
use support::{http, image, Ringcache};

const MIB: usize = 1024 * 1024;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "mounting a tmpfs needs root (the test command runs as root)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Fill the filesystem to the last byte.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&[0u8; 1]);
}

#[test]
fn disk_full_and_read_only_bypass_the_store_and_caching_resumes_by_itself() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("mnt"), "6m");
    let root = fs.0.join("data");
    let rc = Ringcache::start_at(&up.url(), "", &root);
    let get = |digest: &str| http::get_hashed(rc.addr, &format!("/v2/x/blobs/{digest}"));

    // Committed while there is space: a hit from now on.
    let small = up.add_blob(image::pseudo_random(1, 200_000), Fault::None);
    assert_eq!(get(&small).0, 200);
    rc.proc
        .wait_count(&[&small, "fill committed"], 1, Duration::from_secs(10));

    // Bigger than the free space: the disk fills mid-write. Two clients, both get the whole
    // verified body from upstream; nothing is committed.
    let big = up.add_blob(image::pseudo_random(2, 12 * MIB), Fault::None);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (addr, path) = (rc.addr, format!("/v2/x/blobs/{big}"));
            std::thread::spawn(move || http::get_hashed(addr, &path))
        })
        .collect();
    for c in clients {
        let (status, len, hex, complete) = c.join().unwrap();
        assert_eq!(
            (status, len, complete, format!("sha256:{hex}")),
            (200, 12 * MIB as u64, true, big.clone())
        );
    }
    assert!(
        !blob_file(&root, &big).exists(),
        "nothing committed when the disk is full"
    );
    // The disk filled mid-write (the fill's own log line, waited for as an event).
    rc.proc.wait_count(
        &[&big, "writing the ingest file failed"],
        1,
        Duration::from_secs(10),
    );
    rc.proc.wait_log(
        "serving from upstream without caching",
        Duration::from_secs(5),
    );

    // The disk is full to the last byte: every miss bypasses the store; hits keep working.
    // (First wait until both requests have ended server-side: their descriptors of the
    // unlinked temp file hold its space until then.)
    rc.proc
        .wait_count(&["request", &big, "status=200"], 2, Duration::from_secs(10));
    fill_up(&root.join("filler"));
    for seed in 3..6 {
        let d = up.add_blob(image::pseudo_random(seed, MIB), Fault::None);
        let (status, _, hex, complete) = get(&d);
        assert_eq!(
            (status, complete, format!("sha256:{hex}")),
            (200, true, d.clone())
        );
        assert!(!blob_file(&root, &d).exists());
    }
    let (status, _, hex, complete) = get(&small);
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, small.clone()),
        "hits keep working"
    );
    assert_eq!(
        up.count(&format!("GET /v2/x/blobs/{small}")),
        1,
        "the hit came from disk"
    );
    assert_eq!(
        rc.proc
            .count_log(&["serving from upstream without caching", "NoSpace"]),
        1,
        "one log line per incident class, not one per request"
    );

    // Space returns: caching resumes by itself.
    std::fs::remove_file(root.join("filler")).unwrap();
    let d = up.add_blob(image::pseudo_random(7, MIB), Fault::None);
    assert_eq!(get(&d).0, 200);
    rc.proc
        .wait_count(&[&d, "fill committed"], 1, Duration::from_secs(10));
    assert!(blob_file(&root, &d).exists());

    // A read-only root: bypass too, logged once as its own class; hits keep working.
    fs.remount("ro");
    let d = up.add_blob(image::pseudo_random(8, MIB), Fault::None);
    let (status, _, hex, complete) = get(&d);
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, d.clone())
    );
    assert_eq!(get(&small).0, 200);
    rc.proc.wait_log("ReadOnly", Duration::from_secs(5));
    fs.remount("rw");
}
