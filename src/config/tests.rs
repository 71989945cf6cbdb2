use super::schema::*;
use super::units::*;
use super::*;

/// The smallest valid file: an upstream, and `rest` (which must not have `proxy:`).
const UP: &str = "proxy: {remoteurl: https://up.example}\n";

fn with_up(rest: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!("{UP}{rest}"))
}

#[test]
fn default_and_reference_example() {
    let c = Config::from_yaml(DEFAULT_YAML).unwrap();
    assert_eq!(c.http_addr, "127.0.0.1:5000".parse().unwrap());
    assert_eq!(c.upstream.url.origin.host, "registry-1.docker.io");
    assert_eq!(c.upstream.ttl, Some(Duration::from_secs(168 * 3600)));
    assert_eq!(c.root_dir, PathBuf::from(DEFAULT_ROOT));
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    let c = Config::from_yaml(
        "version: 0.1\nlog: {level: info}\nhttp: {addr: 127.0.0.1:5000}\n\
         storage: {filesystem: {rootdirectory: /var/cache/ringcache}}\n\
         proxy: {remoteurl: https://registry-1.docker.io, username: U, password: P, ttl: 168h}\n",
    )
    .unwrap();
    assert_eq!(c.root_dir, PathBuf::from("/var/cache/ringcache"));
    assert_eq!(c.upstream.username.as_deref(), Some("U"));
    assert!(
        !format!("{c:?}").contains("\"P\""),
        "password must not be printed"
    );
    assert!(c.notes.is_empty(), "{:?}", c.notes);
}

#[test]
fn unused_reference_keys_are_noted_not_refused() {
    let c = with_up(
        "version: 0.1\nstorage: {filesystem: {rootdirectory: /x, maxthreads: 100}, delete: {enabled: true}, redirect: {disable: true}}\n\
         http: {addr: ':5000', headers: {X-Content-Type-Options: [nosniff]}, secret: s, net: tcp, prefix: /}\n\
         health: {storagedriver: {enabled: true}}\nnotifications: {endpoints: []}\nredis: {addr: 'x:6379'}\n\
         reporting: {}\nvalidation: {disabled: true}\nlog: {level: info, fields: {service: registry}, accesslog: {disabled: true}}\n\
         loglevel: debug\nauth:\n",
    )
    .unwrap();
    assert_eq!(c.http_addr, "0.0.0.0:5000".parse().unwrap());
    assert!(!c.access_log, "log.accesslog.disabled is read");
    assert_eq!(c.log_level, "info", "loglevel only when log.level is unset");
    for k in [
        "storage.filesystem.maxthreads is ignored",
        "storage.delete is ignored",
        "storage.redirect is ignored",
        "http.headers is ignored",
        "http.secret is ignored",
        "health is ignored",
        "notifications is ignored",
        "redis is ignored",
        "reporting is ignored",
        "validation is ignored",
        "log.fields is ignored",
    ] {
        assert!(
            c.notes.iter().any(|n| n.starts_with(k)),
            "{k} in {:?}",
            c.notes
        );
    }
    assert!(!c.notes.iter().any(|n| n.starts_with("auth")), "empty auth");
    assert_eq!(with_up("loglevel: debug").unwrap().log_level, "debug");
}

/// What changes security or where data goes is refused, naming the section.
#[test]
fn refused_sections_name_themselves() {
    for (yaml, key) in [
        ("http: {tls: {certificate: /c, key: /k}}", "http.tls"),
        ("auth: {htpasswd: {realm: r, path: /p}}", "auth"),
        ("auth: {token: {realm: r}}", "auth"),
        ("auth: {silly: {realm: r}}", "auth"),
        ("storage: {s3: {bucket: b}}", "storage.s3"),
        (
            "storage: {azure: {accountname: a}, filesystem: {rootdirectory: /x}}",
            "storage.azure",
        ),
        ("storage: {inmemory: {x: 1}}", "storage.inmemory"),
        ("storage: {gcs: {bucket: b}}", "storage.gcs"),
        ("middleware: {storage: [{name: cloudfront}]}", "middleware"),
    ] {
        let e = with_up(yaml).map(|_| ()).unwrap_err();
        if !key.is_empty() {
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
        assert!(e.message.contains("not supported"), "{yaml}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
    let e = Config::from_yaml("proxy: {remoteurl: http://x, exec: {command: helper}}").unwrap_err();
    assert_eq!(e.key, "proxy.exec");
}

/// A missing or misspelled upstream is never read as Docker Hub.
#[test]
fn remoteurl_is_required_and_typos_are_named() {
    for (yaml, key, hint) in [
        ("version: 0.1\n", "proxy.remoteurl", "required"),
        (
            "proxy: {username: u, password: p}",
            "proxy.remoteurl",
            "required",
        ),
        (
            "proxy: {remote_url: http://x}",
            "proxy.remote_url",
            "`remoteurl`",
        ),
        (
            "proxy: {remoteURL: http://x}",
            "proxy.remoteURL",
            "`remoteurl`",
        ),
        (
            "proxy: {remoteulr: http://x}",
            "proxy.remoteulr",
            "`remoteurl`",
        ),
        ("prxy: {remoteurl: http://x}", "prxy", "`proxy`"),
        (
            "proxy: {remoteurl: http://x}\nhttp: {adr: ':1'}",
            "http.adr",
            "`addr`",
        ),
        (
            "proxy: {remoteurl: http://x}\nstorage: {filesytem: {rootdirectory: /x}}",
            "storage.filesytem",
            "`filesystem`",
        ),
        (
            "proxy: {remoteurl: http://x}\nstorage: {filesystem: {root: /x}}",
            "storage.filesystem.root",
            "unknown key",
        ),
        (
            "proxy: {remoteurl: http://x}\nlog: {levle: info}",
            "log.levle",
            "`level`",
        ),
        (
            "proxy: {remoteurl: http://x}\nringcache: {wrokers: 2}",
            "ringcache.wrokers",
            "`workers`",
        ),
        (
            "proxy: {remoteurl: http://x}\nringcache: {storage: {sizemax: 1GB}}",
            "ringcache.storage.sizemax",
            "`size_max`",
        ),
        (
            "proxy: {remoteurl: http://x}\nringcache: {upstream: {token_realm: []}}",
            "ringcache.upstream.token_realm",
            "`token_realms`",
        ),
        ("proxy: {remoteurl: http://x}\nzzz: 1", "zzz", "unknown key"),
        (
            "proxy: {remoteurl: http://x}\nhttp: {net: unix}",
            "http.net",
            "unix",
        ),
        (
            "proxy: {remoteurl: http://x}\nhttp: {prefix: /r/}",
            "http.prefix",
            "prefix",
        ),
    ] {
        let e = Config::from_yaml(yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
        assert!(e.message.contains(hint), "{yaml}: {e}");
    }
    assert!(
        !Config::from_yaml("proxy: {remoteurl: http://x}\nzzz: 1")
            .unwrap_err()
            .message
            .contains("did you mean"),
        "no far-fetched hint"
    );
}

#[test]
fn duplicate_keys_name_their_path() {
    for (yaml, key) in [
        (
            "proxy:\n  remoteurl: http://x\n  ttl: 1h\n  ttl: 2h\n",
            "proxy.ttl",
        ),
        ("proxy: {remoteurl: http://x}\nproxy: {ttl: 1h}\n", "proxy"),
        (
            "proxy: {remoteurl: http://x}\nringcache:\n  storage: {size_max: 1GB, size_max: 2GB}\n",
            "ringcache.storage.size_max",
        ),
    ] {
        let e = Config::from_yaml(yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
        assert_eq!(e.message, "duplicate key", "no library internals: {e}");
    }
    // Anchors and merges are not duplicates.
    let c =
        Config::from_yaml("base: &b {remoteurl: http://x, ttl: 1h}\nproxy:\n  <<: *b\n  ttl: 2h\n");
    assert!(c.is_err_and(|e| e.key == "base"), "base is an unknown key");
}

#[test]
fn errors_name_their_key() {
    let cases = [
        ("proxy: {remoteurl: ftp://x}", "proxy.remoteurl"),
        ("proxy: {remoteurl: http://x, ttl: soon}", "proxy.ttl"),
        (
            "proxy: {remoteurl: http://x, username: u}",
            "proxy.password",
        ),
        ("http: {addr: 'nope'}", "http.addr"),
        ("log: {level: loud}", "log.level"),
        ("version: 0.2", "version"),
        ("http: [1, 2]", "http"),
        ("ringcache: {workers: 0}", "ringcache.workers"),
        (
            "ringcache: {limits: {head_bytes_max: 10}}",
            "ringcache.limits.head_bytes_max",
        ),
        (
            "ringcache: {limits: {head_timeout: 0s}}",
            "ringcache.limits.head_timeout",
        ),
        (
            "ringcache: {storage: {direct_writes: sometimes}}",
            "ringcache.storage.direct_writes",
        ),
        ("ringcache: {sendfile: yes}", "ringcache.sendfile"),
        (
            "ringcache: {storage: {size_max: lots}}",
            "ringcache.storage.size_max",
        ),
    ];
    for (yaml, key) in cases {
        let yaml = if yaml.starts_with("proxy") {
            yaml.to_string()
        } else {
            format!("{UP}{yaml}")
        };
        let e = Config::from_yaml(&yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
    let e = Config::from_yaml("a: [").unwrap_err();
    assert!(e.message.starts_with("invalid YAML: line 1"), "{e}");
}

#[test]
fn environment_overrides() {
    let env = [
        ("REGISTRY_PROXY_REMOTEURL", "http://127.0.0.1:9999"),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/cache"),
        ("REGISTRY_HTTP_ADDR", ":6000"),
        ("RINGCACHE_WORKERS", "3"),
        ("RINGCACHE_STORAGE_SIZE_MAX", "10GiB"),
        ("RINGCACHE_LIMITS_HEAD_TIMEOUT", "5s"),
        ("RINGCACHE_STORAGE_DIRECT_WRITES", "false"),
        ("RINGCACHE_SENDFILE", "never"),
        (
            "RINGCACHE_UPSTREAM_TOKEN_REALMS",
            "https://auth.example/token, https://b.example/t",
        ),
        ("PATH", "/usr/bin"),
        // Set by a platform for services named `registry` / `ringcache`: not settings.
        ("REGISTRY_PORT", "tcp://10.0.0.1:5000"),
        ("REGISTRY_SERVICE_HOST", "10.0.0.1"),
        ("RINGCACHE_PORT_5000_TCP", "tcp://10.0.0.2:5000"),
        ("RINGCACHE_SERVICE_HOST", "10.0.0.2"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::from_yaml_env(DEFAULT_YAML, env).unwrap();
    assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:9999/");
    assert_eq!(c.root_dir, PathBuf::from("/srv/cache"));
    assert_eq!(c.http_addr, "0.0.0.0:6000".parse().unwrap());
    assert_eq!(c.workers, 3);
    assert_eq!(c.size_max_bytes, Some(10 << 30));
    assert_eq!(c.limits.head_timeout, Duration::from_secs(5));
    assert!(!c.direct_writes);
    assert_eq!(c.sendfile, SendfileMode::Never);
    let realms: Vec<String> = c
        .upstream
        .token_realms
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(
        realms,
        ["https://auth.example/token", "https://b.example/t"],
        "a list from the environment, comma-separated"
    );
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("REGISTRY_PORT is ignored")),
        "{:?}",
        c.notes
    );
    assert_eq!(with_up("").unwrap().sendfile, SendfileMode::Auto);
    let env = |k: &str, v: &str| [(k.to_string(), v.to_string())];
    let bad = Config::from_yaml_env(UP, env("RINGCACHE_WROKERS", "1")).unwrap_err();
    assert_eq!(bad.key, "RINGCACHE_WROKERS");
    let bad = Config::from_yaml_env(UP, env("REGISTRY_PROXY_TTL", "soon")).unwrap_err();
    assert_eq!(bad.key, "proxy.ttl");
    assert!(bad.message.contains("(set by REGISTRY_PROXY_TTL)"), "{bad}");
    // A refused section is refused from the environment too.
    let bad = Config::from_yaml_env(UP, env("REGISTRY_AUTH_HTPASSWD_PATH", "/p")).unwrap_err();
    assert_eq!(bad.key, "auth");
    assert!(bad.message.contains("REGISTRY_AUTH_HTPASSWD_PATH"), "{bad}");
    // The upstream may come from the environment alone.
    let c = Config::from_yaml_env("", env("REGISTRY_PROXY_REMOTEURL", "http://e.example")).unwrap();
    assert_eq!(c.upstream.url.origin.host, "e.example");
    // A misspelled variable is noted, and the upstream is still required.
    let bad = Config::from_yaml_env("", env("REGISTRY_PROXY_REMOTE_URL", "http://e")).unwrap_err();
    assert_eq!(bad.key, "proxy.remoteurl");
}

#[test]
fn ringcache_section() {
    let c = with_up(
        "ringcache:\n  workers: 3\n  tags: {fresh_for: 5s}\n  limits: {headers_max: 50, keepalive_idle: 1m}\n  storage: {direct_writes: false}\n",
    )
    .unwrap();
    assert!(!c.direct_writes);
    assert!(with_up("").unwrap().direct_writes, "on by default");
    assert_eq!(c.workers, 3);
    assert_eq!(c.upstream.tags_fresh_for, Duration::from_secs(5));
    assert_eq!(c.limits.headers_max, 50);
    assert_eq!(c.limits.keepalive_idle, Duration::from_secs(60));
    // Every key `RINGCACHE_*` can name is one the section reads.
    for key in RINGCACHE_KEYS {
        let env = [(format!("RINGCACHE_{}", key.replace('.', "_")), "x".into())];
        if let Err(e) = Config::from_yaml_env(UP, env) {
            assert!(!e.message.contains("unknown key"), "{key}: {e}");
        }
    }
}

#[test]
fn sizes_show_as_written() {
    for (yaml, want) in [
        ("none", "none"),
        ("0", "none"),
        ("~", "none"),
        ("10GB", "10GB"),
        ("500GiB", "500GiB"),
        ("1000000", "1000000"),
        ("1234567", "1234567"),
        ("1024MiB", "1024MiB"),
        ("2TB", "2TB"),
    ] {
        let c = with_up(&format!("ringcache: {{storage: {{size_max: {yaml}}}}}")).unwrap();
        let shown = &c.effective()["ringcache"]["storage"]["size_max"];
        assert_eq!(shown, want, "{yaml}");
    }
}

#[test]
fn durations() {
    let cases: &[(&str, Option<u64>)] = &[
        ("168h", Some(168 * 3600 * 1000)),
        ("1h30m", Some(5400 * 1000)),
        ("90s", Some(90_000)),
        ("500ms", Some(500)),
        ("1.5s", Some(1500)),
        ("0", Some(0)),
        ("", None),
        ("10", None),
        ("h", None),
        ("5d", None),
        ("-1s", None),
    ];
    for (s, want) in cases {
        assert_eq!(
            parse_duration(s).map(|d| d.as_millis() as u64),
            *want,
            "{s}"
        );
    }
    assert_eq!(format_duration(Duration::from_secs(168 * 3600)), "168h");
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    for (s, want) in [
        ("500GiB", Some(500u64 << 30)),
        ("10MiB", Some(10 << 20)),
        ("1GB", Some(1_000_000_000)),
        ("42", Some(42)),
        ("1 PB", None),
        ("x", None),
    ] {
        assert_eq!(parse_size(s), want, "{s}");
    }
    assert_eq!(format_size(500 << 30), "500GiB");
    assert_eq!(format_size(10_000_000_000), "10GB");
}

mod prop {
    use super::super::schema::{RINGCACHE_KEYS, SCHEMA};
    use super::super::*;
    use proptest::prelude::*;

    /// Keys the walk knows (and near misses), so that generated trees reach the value
    /// checks and not only the unknown-key error.
    fn key() -> impl Strategy<Value = String> {
        let mut known: Vec<String> = SCHEMA
            .iter()
            .flat_map(|(k, _)| k.split('.'))
            .chain(RINGCACHE_KEYS.iter().flat_map(|k| k.split('.')))
            .chain(["ringcache", "Proxy", "remote_url", ""])
            .map(String::from)
            .collect();
        known.sort();
        known.dedup();
        prop_oneof![
            4 => proptest::sample::select(known),
            1 => "[a-zA-Z_.-]{0,12}",
        ]
    }

    /// Scalars a config holds, odd ones included. No `host:port` with a name in it:
    /// `http.addr` would resolve it.
    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            proptest::sample::select(vec![
                "0",
                "1h",
                "168h",
                "0s",
                "90s",
                "none",
                "10GB",
                "500GiB",
                "x",
                "",
                "0.1",
                "http://127.0.0.1:1",
                "https://up.example",
                "ftp://x",
                ":5000",
                "127.0.0.1:0",
                "[::1]:0",
                "tcp",
                "unix",
                "/",
                "/r",
                "auto",
                "json",
                "true",
                "a,b",
                "1e999",
                "-1",
                "18446744073709551616",
            ])
            .prop_map(|s| Value::String(s.into())),
            "[ -~]{0,20}"
                .prop_filter("no host:port", |s| !s.contains(':'))
                .prop_map(Value::String),
        ]
    }

    fn tree() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// YAML-ish text: lines of indented `key: value`, flow collections, anchors, tags,
    /// and stray punctuation.
    fn text() -> impl Strategy<Value = String> {
        let line = (
            0usize..6,
            key(),
            prop_oneof![
                Just(String::new()),
                "[ -~]{0,16}".prop_map(|s| s.replace(':', " ")),
                Just("{a: 1, b: [x, y]}".to_string()),
                Just("&a 1".to_string()),
                Just("*a".to_string()),
                Just("!!binary aGk=".to_string()),
                Just("<<: *a".to_string()),
                Just("- x".to_string()),
                Just("[".to_string()),
                Just("|\n  text".to_string()),
            ],
        )
            .prop_map(|(indent, k, v)| format!("{}{k}: {v}", " ".repeat(indent)));
        prop_oneof![
            proptest::collection::vec(line, 0..12).prop_map(|l| l.join("\n")),
            "[ -~\n\t]{0,200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any tree: a config or a one-line error, never a panic.
        #[test]
        fn prop_any_tree_is_a_config_or_an_error(t in tree()) {
            if let Err(e) = Config::from_tree(t) {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }

        /// Any text, with any settings from the environment: a config or a one-line
        /// error, never a panic.
        #[test]
        fn prop_any_text_is_a_config_or_an_error(
            t in text(),
            env in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("REGISTRY_PROXY_REMOTEURL".to_string()),
                        Just("RINGCACHE_UPSTREAM_TOKEN_REALMS".to_string()),
                        Just("RINGCACHE_STORAGE_SIZE_MAX".to_string()),
                        "(REGISTRY|RINGCACHE)_[A-Z_]{0,20}",
                    ],
                    "[ -~]{0,20}".prop_filter("no host:port", |s| !s.contains(':')),
                ),
                0..3,
            ),
        ) {
            let with_up = format!("proxy: {{remoteurl: http://127.0.0.1:1}}\n{t}");
            for text in [t.as_str(), with_up.as_str()] {
                if let Err(e) = Config::from_yaml_env(text, env.clone()) {
                    prop_assert!(!e.to_string().contains('\n'), "{}", e);
                }
            }
        }
    }
}

/// The issue's example table: each entry its own URL, credentials, TTL, freshness, CA.
const TABLE: &str =
    "proxy: {remoteurl: https://registry-1.docker.io, username: U, password: P, ttl: 168h}
ringcache:
  tags: {fresh_for: 2m}
  upstreams:
    ghcr.io:          {remoteurl: https://ghcr.io, username: U2, password: P2}
    quay.io:          {remoteurl: https://quay.io, ttl: 24h}
    registry.k8s.io:  {remoteurl: https://registry.k8s.io, tags: {fresh_for: 5m}}
    harbor.corp:5000: {remoteurl: https://harbor.corp:5000, ca_file: /etc/ringcache/corp-ca.pem}
    Mirror.Example:   {remoteurl: 'http://127.0.0.1:6000/'}
";

#[test]
fn upstreams_table() {
    let c = Config::from_yaml(TABLE).unwrap();
    assert_eq!(c.upstream.registry, "registry-1.docker.io");
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.registry.as_str()).collect();
    assert_eq!(
        names,
        [
            "ghcr.io",
            "harbor.corp:5000",
            "mirror.example",
            "quay.io",
            "registry.k8s.io"
        ]
    );
    let by = |n: &str| c.upstreams.iter().find(|u| u.registry == n).unwrap();
    assert_eq!(by("ghcr.io").username.as_deref(), Some("U2"));
    assert_eq!(by("ghcr.io").password.as_deref(), Some("P2"));
    // Nothing of the default's is inherited but its TTL and freshness defaults.
    assert_eq!(by("quay.io").username, None);
    assert_eq!(by("quay.io").ttl, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(by("ghcr.io").ttl, Some(Duration::from_secs(168 * 3600)));
    assert_eq!(by("ghcr.io").tags_fresh_for, Duration::from_secs(120));
    assert_eq!(
        by("registry.k8s.io").tags_fresh_for,
        Duration::from_secs(300)
    );
    assert_eq!(
        by("harbor.corp:5000").ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ringcache/corp-ca.pem"))
    );
    // A registry served by its own URL gets no ns; one behind a mirror (a tier) does.
    assert_eq!(by("ghcr.io").forward_ns(), None);
    assert_eq!(by("harbor.corp:5000").forward_ns(), None);
    assert_eq!(by("mirror.example").forward_ns(), Some("mirror.example"));
    assert_eq!(c.upstream.forward_ns(), None);
    let regs = c.registries();
    assert_eq!(regs.by_ns("docker.io").unwrap(), 0);
    assert_eq!(regs.by_ns("quay.io").unwrap(), 4);
    // check-config shows the table, secrets masked.
    let shown = c.effective().to_string();
    assert!(shown.contains("\"ghcr.io\""), "{shown}");
    assert!(!shown.contains("P2"), "{shown}");
    assert!(!format!("{c:?}").contains("P2"));
}

#[test]
fn upstreams_table_errors_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "ghcr.io: {remoteurl: https://ghcr.io, pasword: x}",
            "ringcache.upstreams.ghcr.io.pasword",
            "did you mean `password`",
        ),
        (
            "ghcr.io: {username: u, password: p}",
            "ringcache.upstreams.ghcr.io.remoteurl",
            "required",
        ),
        (
            "ghcr.io: {remoteurl: https://ghcr.io, username: u}",
            "ringcache.upstreams.ghcr.io.password",
            "go together",
        ),
        (
            "ghcr.io: {remoteurl: ftp://ghcr.io}",
            "ringcache.upstreams.ghcr.io.remoteurl",
            "not an http(s) URL",
        ),
        (
            "'https://ghcr.io': {remoteurl: https://ghcr.io}",
            "ringcache.upstreams.https://ghcr.io",
            "not a registry name",
        ),
        (
            "docker.io: {remoteurl: https://mirror.gcr.io}",
            "ringcache.upstreams.docker.io",
            "default upstream's name",
        ),
        (
            "{ghcr.io: {remoteurl: https://ghcr.io}, GHCR.io: {remoteurl: https://ghcr.io}}",
            "ringcache.upstreams.",
            "listed twice",
        ),
        (
            "ghcr.io: https://ghcr.io",
            "ringcache.upstreams.ghcr.io",
            "must be a mapping",
        ),
        (
            "ghcr.io: {remoteurl: https://ghcr.io, tags: {fresh: 1m}}",
            "ringcache.upstreams.ghcr.io.tags.fresh",
            "did you mean `fresh_for`",
        ),
    ];
    for (table, key, says) in cases {
        let yaml = format!(
            "proxy: {{remoteurl: https://registry-1.docker.io}}\nringcache:\n  upstreams:\n    {table}\n"
        );
        let e = Config::from_yaml(&yaml).expect_err(table);
        assert!(e.key.starts_with(key), "{table}: {e}");
        assert!(e.message.contains(says), "{table}: {e}");
    }
}

#[test]
fn upstreams_table_from_the_environment() {
    let env = |pairs: &[(&str, &str)]| {
        Config::from_yaml_env(
            TABLE,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    let c = env(&[
        ("RINGCACHE_UPSTREAMS_GHCR_IO_PASSWORD", "from-env"),
        ("RINGCACHE_UPSTREAMS_HARBOR_CORP_5000_TTL", "1h"),
        ("RINGCACHE_UPSTREAMS_QUAY_IO_TAGS_FRESH_FOR", "10s"),
        (
            "RINGCACHE_UPSTREAMS_MIRROR_EXAMPLE_TOKEN_REALMS",
            "https://a.example,https://b.example",
        ),
    ])
    .unwrap();
    let by = |n: &str| {
        c.upstreams
            .iter()
            .find(|u| u.registry == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("ghcr.io").password.as_deref(), Some("from-env"));
    assert_eq!(by("harbor.corp:5000").ttl, Some(Duration::from_secs(3600)));
    assert_eq!(by("quay.io").tags_fresh_for, Duration::from_secs(10));
    assert_eq!(by("mirror.example").token_realms.len(), 2);
    // Two entries one variable name fits: refused, never applied to the first.
    let two = "proxy: {remoteurl: https://registry-1.docker.io}\nringcache:\n  upstreams:\n    a-b.io: {remoteurl: https://a-b.io}\n    a.b.io: {remoteurl: https://a.b.io}\n";
    let e = Config::from_yaml_env(
        two,
        [(
            "RINGCACHE_UPSTREAMS_A_B_IO_PASSWORD".to_string(),
            "s".to_string(),
        )],
    )
    .unwrap_err();
    assert!(e.message.contains("more than one"), "{e}");
    // Only entries the file lists, and only their keys.
    for var in [
        "RINGCACHE_UPSTREAMS_GCR_IO_PASSWORD",
        "RINGCACHE_UPSTREAMS_GHCR_IO_PASWORD",
    ] {
        let e = env(&[(var, "x")]).unwrap_err();
        assert_eq!(e.key, var, "{e}");
    }
}

#[test]
fn pins_and_offline() {
    let c = with_up(
        "ringcache:\n  offline: true\n  upstream: {registry: docker.io}\n  upstreams: {ghcr.io: {remoteurl: https://ghcr.io}}\n  pin: [alpine:3, ghcr.io/team/app:1, alpine:3]\n",
    )
    .unwrap();
    assert!(c.offline);
    assert!(!with_up("").unwrap().offline, "off by default");
    let pins: Vec<String> = c.pins.iter().map(|p| p.to_string()).collect();
    // Listed once each, as Docker reads them.
    assert_eq!(pins, ["docker.io/library/alpine:3", "ghcr.io/team/app:1"]);
    let effective = c.effective();
    assert_eq!(effective["ringcache"]["offline"], true);
    assert_eq!(effective["ringcache"]["pin"][1], "ghcr.io/team/app:1");
    // From the environment: a comma-separated list.
    let env = [(
        "RINGCACHE_PIN".to_string(),
        "up.example/a:3,up.example/b/c".to_string(),
    )];
    let c = Config::from_yaml_env(UP, env).unwrap();
    assert_eq!(c.pins.len(), 2);
    // Errors name the entry and what is wrong with it.
    for (yaml, key, says) in [
        (
            "ringcache: {pin: [quay.io/a/b:1]}",
            "ringcache.pin[0]",
            "quay.io",
        ),
        (
            "ringcache: {pin: [up.example/a, 'Bad:x']}",
            "ringcache.pin[1]",
            "not a valid",
        ),
        ("ringcache: {pin: alpine}", "ringcache.pin", "list"),
        (
            "ringcache: {offline: yes please}",
            "ringcache.offline",
            "true or false",
        ),
    ] {
        let e = with_up(yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
        assert!(e.message.contains(says), "{yaml}: {e}");
    }
}
