//! The command line: `check-config` validates, masks secrets, reports unused keys; an invalid
//! config is one line naming the key, exit code 2.

mod support;

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

#[test]
fn refused_sections_exit_2_naming_the_section() {
    let up = "proxy: {remoteurl: https://up.example}\n";
    for (yaml, key) in [
        ("auth: {silly: {realm: r, service: s}}", "auth.silly"),
        (
            "http: {addr: ':5000', tls: {letsencrypt: {cachefile: /x}}}",
            "http.tls.letsencrypt",
        ),
        ("storage: {s3: {bucket: b, region: r}}", "storage.s3"),
        ("storage: {inmemory: {x: 1}}", "storage.inmemory"),
        ("middleware: {registry: [{name: cloudfront}]}", "middleware"),
    ] {
        let (code, out, err) = check(&format!("{up}{yaml}\n"));
        assert_eq!(code, 2, "{yaml}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{yaml}: {err:?}");
        assert!(
            err.contains(&format!("{key}: not supported")),
            "{yaml}: {err}"
        );
    }
    // TLS and client auth are read: a file that is missing is a clear error naming its key.
    for (yaml, key) in [
        (
            "auth: {htpasswd: {realm: r, path: /nonexistent/htpasswd}}",
            "auth.htpasswd.path: /nonexistent/htpasswd",
        ),
        (
            "auth: {token: {realm: https://a, service: s, issuer: i, rootcertbundle: /nonexistent/c}}",
            "auth.token.rootcertbundle: /nonexistent/c",
        ),
        (
            "http: {addr: ':5000', tls: {certificate: /nonexistent/c.pem, key: /k.pem}}",
            "http.tls.certificate: /nonexistent/c.pem",
        ),
    ] {
        let (code, out, err) = check(&format!("{up}{yaml}\n"));
        assert_eq!(code, 2, "{yaml}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{yaml}: {err:?}");
        assert!(err.contains(key), "{yaml}: {err}");
    }
    let (code, _, err) = check("proxy: {remoteurl: https://up.example, exec: {command: h}}\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("proxy.exec: not supported"), "{err}");
    // Sections that change nothing ringcache does are noted, once each.
    let (code, _, err) = check(&format!(
        "{up}notifications: {{endpoints: []}}\nredis: {{addr: 'r:6379'}}\nhealth: {{storagedriver: {{enabled: true}}}}\n"
    ));
    assert_eq!(code, 0, "{err}");
    for k in ["notifications", "redis", "health"] {
        assert_eq!(
            err.lines()
                .filter(|l| l.contains(&format!("note: {k} is ignored")))
                .count(),
            1,
            "{err}"
        );
    }
}

/// A missing or misspelled upstream never falls back to Docker Hub (with the credentials).
#[test]
fn the_upstream_is_required_and_a_misspelled_key_is_named() {
    for (yaml, want) in [
        (
            "version: 0.1\nproxy: {username: u, password: p}\n",
            "proxy.remoteurl: required",
        ),
        ("version: 0.1\n", "proxy.remoteurl: required"),
        (
            "proxy: {remote_url: https://up.example, username: u, password: p}\n",
            "proxy.remote_url: unknown key; did you mean `remoteurl`?",
        ),
        (
            "proxy: {remoteURL: https://up.example}\n",
            "proxy.remoteURL: unknown key; did you mean `remoteurl`?",
        ),
        (
            "proxy: {remoteurl: https://up.example}\nstorage: {filesystem: {rootdir: /x}}\n",
            "storage.filesystem.rootdir: unknown key; did you mean `rootdirectory`?",
        ),
    ] {
        let (code, out, err) = check(yaml);
        assert_eq!(code, 2, "{yaml}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{yaml}: {err:?}");
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

#[test]
fn a_duplicate_key_is_named_without_the_yaml_librarys_internals() {
    let (code, _, err) = check("proxy:\n  remoteurl: https://up.example\n  ttl: 1h\n  ttl: 2h\n");
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim(),
        "ringcache: config error: proxy.ttl: duplicate key"
    );
}

#[test]
fn sizes_are_shown_as_the_operator_wrote_them() {
    for (size, shown) in [("none", "none"), ("10GB", "10GB"), ("500GiB", "500GiB")] {
        let (code, out, err) = check(&format!(
            "proxy: {{remoteurl: https://up.example}}\nringcache: {{storage: {{size_max: {size}}}}}\n"
        ));
        assert_eq!(code, 0, "{size}: {err}");
        assert!(
            out.contains(&format!("size_max: {shown}\n")),
            "{size}: {out}"
        );
    }
    let (_, out, _) = check("proxy: {remoteurl: https://up.example}\n");
    assert!(out.contains("size_max: none\n"), "no cap: {out}");
}

#[test]
fn a_startup_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(
        &p,
        format!(
            "http: {{addr: '127.0.0.1:0'}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: http://127.0.0.1:9}}\n",
            not_a_dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("opening the store"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn the_embedded_default_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .env_remove("RUST_LOG");
    let proc = support::Proc::spawn(cmd);
    let line = proc.wait_log("embedded default", std::time::Duration::from_secs(20));
    for want in [
        "upstream https://registry-1.docker.io",
        "127.0.0.1:0",
        "./ringcache-data",
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
}

#[test]
fn the_example_config_is_valid_and_clean() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/config.example.yml"
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{err}");
}
