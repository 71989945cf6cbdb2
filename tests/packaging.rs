//! The systemd units pass `systemd-analyze verify` (with ExecStart pointed at the binary under
//! test, since the packaged path is not installed here).

use std::process::Command;

#[test]
fn unit_files_verify() {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "systemd-analyze is not installed: run scripts/test.sh, which installs the test peers"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let service = std::fs::read_to_string(format!("{root}/scripts/ringcache.service"))
        .unwrap()
        .replace("/usr/bin/ringcache", env!("CARGO_BIN_EXE_ringcache"));
    std::fs::write(dir.path().join("ringcache.service"), service).unwrap();
    std::fs::copy(
        format!("{root}/scripts/ringcache.socket"),
        dir.path().join("ringcache.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("ringcache.service"))
        .arg(dir.path().join("ringcache.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units (not ours) are not our business.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("ringcache")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
