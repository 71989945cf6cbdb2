//! The cache directory: one ringcache per root (a second one on it exits 2 naming the
//! first's pid, and the first keeps serving), and a root whose tree is not trusted: a symbolic
//! link where a directory belongs is never followed (no commit lands outside the root, no
//! start-up sweep deletes outside it), a directory in `ingest/` does not stop the start, a
//! shard directory removed at run time is made again, and a store that cannot commit shows in
//! the health check.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::upstream::{Fault, TestUpstream};
use support::{http, image, Proc, Ringcache};

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Content whose digest starts with `prefix` (two hex digits): found by trying seeds, about
/// 256 small hashes (bounded: 100 000).
fn blob_with_prefix(prefix: &str, from_seed: u64) -> Vec<u8> {
    (from_seed..from_seed + 100_000)
        .map(|seed| image::pseudo_random(seed, 4096))
        .find(|data| sha256_hex(data).starts_with(prefix))
        .expect("a digest with that prefix within 100 000 seeds")
}

fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn serve(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
    cmd.arg("serve")
        .arg("--config")
        .arg(root.with_extension("yml"));
    cmd
}

#[test]
fn a_second_instance_on_one_root_exits_2_and_the_first_keeps_serving() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let first = Ringcache::start_at(&up.url(), "", &root);
    let pid = first.proc.child.id();

    // The same config (so the same root): refused before it touches the tree.
    std::fs::write(root.join("ingest/in-progress"), b"a fill of the first").unwrap();
    let mut second = Proc::spawn(serve(&root));
    let status = second.wait_exit(Duration::from_secs(20));
    let want = format!("cache directory {} is in use by pid {pid}", root.display());
    // Its output is read on other threads: wait for the line, not only for the exit.
    second.wait_log(&want, Duration::from_secs(5));
    assert_eq!(status.code(), Some(2), "{}", second.log.lock().unwrap());
    let log = second.log.lock().unwrap().clone();
    assert_eq!(
        log.lines().filter(|l| l.contains("is in use")).count(),
        1,
        "said once: {log}"
    );
    assert!(
        root.join("ingest/in-progress").exists(),
        "the second instance swept nothing"
    );

    // verify (which writes the store) takes the same lock.
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["verify", "--config"])
        .arg(root.with_extension("yml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&want));

    // The first still answers, and still fills.
    let d = up.add_blob(image::pseudo_random(1, 10_000), Fault::None);
    assert_eq!(
        http::get(first.addr, &format!("/v2/x/blobs/{d}")).status,
        200
    );
    first
        .proc
        .wait_count(&[&d, "fill committed"], 1, Duration::from_secs(10));

    // Once it is gone, the root is free again.
    drop(first);
    let again = Ringcache::start_at(&up.url(), "", &root);
    assert_eq!(
        http::get(again.addr, &format!("/v2/x/blobs/{d}")).status,
        200
    );
}

/// A directory outside the root with a file in it that must survive.
fn outside(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join("outside").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("precious"), b"not the cache's").unwrap();
    d
}

#[test]
fn a_linked_shard_directory_never_takes_a_commit_outside_the_root() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (root, target) = (dir.path().join("data"), outside(dir.path(), "shard"));
    let data = image::pseudo_random(7, 50_000);
    let hex = sha256_hex(&data);
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    symlink(&target, root.join("blobs/sha256").join(&hex[..2])).unwrap();

    let rc = Ringcache::start_at(&up.url(), "", &root);
    let digest = up.add_blob(data.clone(), Fault::None);
    assert_eq!(
        http::get(rc.addr, &format!("/v2/x/blobs/{digest}")).body,
        data
    );
    rc.proc
        .wait_count(&[&digest, "fill committed"], 1, Duration::from_secs(10));
    assert!(
        blob_file(&root, &digest).is_file(),
        "committed inside the root"
    );
    let names: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious"], "nothing committed outside the root");
    let shard = std::fs::symlink_metadata(root.join("blobs/sha256").join(&hex[..2])).unwrap();
    assert!(shard.is_dir(), "a real directory in place of the link");
    rc.proc.wait_log("symbolic link", Duration::from_secs(5));
}

#[test]
fn a_linked_ingest_directory_is_not_swept_through() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (root, target) = (dir.path().join("data"), outside(dir.path(), "ingest"));
    std::fs::create_dir_all(&root).unwrap();
    symlink(&target, root.join("ingest")).unwrap();
    let rc = Ringcache::start_at(&up.url(), "", &root);
    assert!(
        target.join("precious").exists(),
        "start-up swept the target of a linked ingest/"
    );
    assert!(std::fs::symlink_metadata(root.join("ingest"))
        .unwrap()
        .is_dir());
    let d = up.add_blob(image::pseudo_random(3, 10_000), Fault::None);
    assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{d}")).status, 200);
    rc.proc
        .wait_count(&[&d, "fill committed"], 1, Duration::from_secs(10));
}

#[test]
fn a_directory_in_ingest_does_not_stop_the_start_and_links_in_it_are_not_followed() {
    let up = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (root, target) = (dir.path().join("data"), outside(dir.path(), "elsewhere"));
    std::fs::create_dir_all(root.join("ingest/left-behind/deeper")).unwrap();
    std::fs::write(root.join("ingest/left-behind/deeper/f"), b"x").unwrap();
    symlink(&target, root.join("ingest/left-behind/link")).unwrap();
    symlink(&target, root.join("ingest/link")).unwrap();
    let rc = Ringcache::start_at(&up.url(), "", &root);
    assert!(
        std::fs::read_dir(root.join("ingest"))
            .unwrap()
            .next()
            .is_none(),
        "ingest/ emptied, the directory in it too"
    );
    assert!(
        target.join("precious").exists(),
        "links in ingest/ not followed"
    );
    let d = up.add_blob(image::pseudo_random(4, 10_000), Fault::None);
    assert_eq!(http::get(rc.addr, &format!("/v2/x/blobs/{d}")).status, 200);
}

#[test]
fn a_shard_removed_at_run_time_is_made_again_and_a_store_that_cannot_commit_is_unhealthy() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    let first = up.add_blob(image::pseudo_random(1, 4096), Fault::None);
    let prefix = first.trim_start_matches("sha256:")[..2].to_string();
    let shard = rc.root.join("blobs/sha256").join(&prefix);
    let get = |d: &str| http::get(rc.addr, &format!("/v2/x/blobs/{d}"));

    // Removed at run time: the next fill there makes it again and commits.
    std::fs::remove_dir_all(&shard).unwrap();
    assert_eq!(get(&first).status, 200);
    rc.proc
        .wait_count(&[&first, "fill committed"], 1, Duration::from_secs(10));
    assert!(blob_file(&rc.root, &first).is_file());
    assert_eq!(http::get(dbg, "/debug/health").status, 200);

    // A file where the shard directory belongs: commits there fail, and health says so.
    std::fs::remove_dir_all(&shard).unwrap();
    std::fs::write(&shard, b"").unwrap();
    let second = up.add_blob(blob_with_prefix(&prefix, 1000), Fault::None);
    assert_eq!(
        get(&second).status,
        200,
        "served from upstream all the same"
    );
    rc.proc.wait_count(
        &[&second, "commit failed; bypassing the store"],
        1,
        Duration::from_secs(10),
    );
    let health = http::get(dbg, "/debug/health");
    assert_eq!(health.status, 503, "{}", health.text());
    let text = health.text();
    assert!(
        text.contains("store") && text.contains(&format!("blobs/sha256/{prefix}")),
        "{text}"
    );
    // Repaired: health is good again without waiting for another fill there.
    std::fs::remove_file(&shard).unwrap();
    let health = http::get(dbg, "/debug/health");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(get(&second).status, 200);
    rc.proc
        .wait_count(&[&second, "fill committed"], 1, Duration::from_secs(10));
}

#[test]
fn verify_follows_no_link_below_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (root, target) = (dir.path().join("data"), outside(dir.path(), "shard"));
    // Named like content of that shard, but not hashing to its name: verify would remove it.
    let name = format!("ab{}", "0".repeat(62));
    std::fs::write(target.join(&name), b"not this digest").unwrap();
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    symlink(&target, root.join("blobs/sha256/ab")).unwrap();
    let cfg = root.with_extension("yml");
    std::fs::write(
        &cfg,
        format!(
            "storage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: http://127.0.0.1:9}}\n",
            root.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        target.join(&name).exists(),
        "removed through a link: {text}"
    );
    assert!(text.contains("left alone: blobs/sha256/ab"), "{text}");
}
