//! The command line: `check-config` validates, masks secrets, reports unused keys; an invalid
//! config is one line naming the key, exit code 2.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(&p, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_prints_effective_config_with_secrets_masked() {
    let (code, out, err) = check(
        "version: 0.1\nlog: {level: info}\nhttp: {addr: 127.0.0.1:5000}\n\
         storage: {filesystem: {rootdirectory: /var/cache/ringcache}, delete: {enabled: true}}\n\
         proxy: {remoteurl: https://registry-1.docker.io, username: U, password: Pa55word, ttl: 168h}\n\
         ringcache: {workers: 3}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("Pa55word") && !err.contains("Pa55word"),
        "password printed: {out}"
    );
    assert!(out.contains("********"), "{out}");
    for want in [
        "rootdirectory: /var/cache/ringcache",
        "workers: 3",
        "ttl: 168h",
        "remoteurl: https://registry-1.docker.io",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        err.contains("storage.delete"),
        "unused reference keys are reported: {err}"
    );
}

#[test]
fn invalid_config_is_one_line_naming_the_key_and_exit_2() {
    for (yaml, key) in [
        ("proxy: {remoteurl: ftp://x}", "proxy.remoteurl"),
        ("proxy: {ttl: forever}", "proxy.ttl"),
        ("ringcache: {workers: lots}", "ringcache.workers"),
        ("ringcache: {colour: blue}", "ringcache.colour"),
        ("http: [1, 2]", "http"),
    ] {
        let (code, out, err) = check(yaml);
        assert_eq!(code, 2, "{yaml}: {out}{err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{yaml}: one line, got {err:?}"
        );
        assert!(err.contains(key), "{yaml}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["check-config", "/nonexistent.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn environment_overrides_config_keys_like_the_reference_registry() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(
        &p,
        "version: 0.1\nproxy: {remoteurl: https://example.invalid}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&p)
        .env("REGISTRY_PROXY_REMOTEURL", "http://127.0.0.1:5555")
        .env("REGISTRY_PROXY_PASSWORD", "from-env-secret")
        .env("REGISTRY_PROXY_USERNAME", "u")
        .env("RINGCACHE_STORAGE_SIZE_MAX", "2GiB")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("remoteurl: http://127.0.0.1:5555"), "{text}");
    assert!(text.contains("size_max: 2GiB"), "{text}");
    assert!(!text.contains("from-env-secret"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&p)
        .env("RINGCACHE_WORKRES", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RINGCACHE_WORKRES"));
}
