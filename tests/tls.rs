//! TLS to clients (`http.tls`): certificates made here with openssl; a rustls client, curl,
//! skopeo and containerd as peers; the in-repo counting upstream behind ringcache.
//!
//! Key types and a chain, ALPN, session resumption, the minimum version, mutual TLS,
//! certificate rotation by SIGHUP under a long download, what plain HTTP, garbage and a stalled
//! handshake get (closed promptly, nobody else disturbed), and clear errors for bad files.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::certs::{self, ca, client_config, issue};
use support::clients::{Client, Containerd};
use support::upstream::{Fault, TestUpstream};
use support::{image, sha256_hex, Ringcache};

/// A CA and a server certificate for 127.0.0.1 (of key type `kind`) in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(kind: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "ca");
        let (cert, key) = issue(dir.path(), "leaf", kind, "ca", "server");
        Pki { dir, ca, cert, key }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that turns TLS on with this certificate.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "REGISTRY_HTTP_TLS_CERTIFICATE",
                self.cert.display().to_string(),
            ),
            ("REGISTRY_HTTP_TLS_KEY", self.key.display().to_string()),
        ]
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(client_config(&[&self.ca], None))
    }
}

fn start(up: &TestUpstream, extra: &str, env: &[(&'static str, String)]) -> Ringcache {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rc = Ringcache::start_with_env(&up.url(), extra, &env);
    rc.proc.wait_log("TLS on", Duration::from_secs(10));
    rc
}

/// An upstream with `team/app:v1`: one image of `sizes`.
fn upstream_with(sizes: &[usize]) -> (TestUpstream, image::Image) {
    let up = TestUpstream::start();
    let img = image::image(7, sizes);
    up.add_blob(img.config.clone(), Fault::None);
    for l in &img.layers {
        up.add_blob(l.clone(), Fault::None);
    }
    up.add_manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        img.manifest.clone(),
    );
    (up, img)
}

#[test]
fn rsa_ecdsa_and_ed25519_keys_and_a_chain_serve_manifests_and_blobs_with_alpn() {
    let (up, img) = upstream_with(&[3_000_000]);
    let blob = format!("/v2/team/app/blobs/{}", img.layer_digests()[0]);
    for kind in ["rsa", "ec", "ed25519"] {
        let pki = Pki::new(kind);
        // The certificate file holds the leaf and an intermediate; the client trusts the root.
        issue(pki.path(), "int", "ec", "ca", "ca");
        let (leaf, key) = issue(pki.path(), "chained", kind, "int", "server");
        let chain = pki.path().join("chain.pem");
        let mut pem = std::fs::read(&leaf).unwrap();
        pem.extend(std::fs::read(pki.path().join("int.pem")).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let env = vec![
            ("REGISTRY_HTTP_TLS_CERTIFICATE", chain.display().to_string()),
            ("REGISTRY_HTTP_TLS_KEY", key.display().to_string()),
        ];
        let rc = start(&up, "ringcache: {workers: 1}\n", &env);
        let client = pki.client();
        let mut s = certs::connect(rc.addr, &client).unwrap();
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "{kind}");
        let r = certs::get_on(&mut s, "/v2/team/app/manifests/v1", &[]).unwrap();
        assert_eq!((r.status, &r.body), (200, &img.manifest), "{kind}");
        // A miss (followed from the fill), then a hit (from the file), both through TLS.
        for _ in 0..2 {
            let r = certs::get_on(&mut s, &blob, &[]).unwrap();
            assert_eq!(r.status, 200, "{kind}");
            assert!(r.body == img.layers[0], "{kind}: the blob's bytes");
        }
    }
}

#[test]
fn sessions_resume_and_minimum_tls13_refuses_a_tls12_client() {
    let (up, _) = upstream_with(&[1000]);
    let pki = Pki::new("ec");
    let rc = start(&up, "", &pki.env());
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = Arc::new(certs::client_config_versions(&[&pki.ca], None, versions));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = certs::connect(rc.addr, &config).unwrap();
            // TLS 1.3 tickets arrive after the handshake: one exchange takes them in.
            assert_eq!(certs::get_on(&mut s, "/v2/", &[]).unwrap().status, 200);
            kinds.push(s.conn.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{versions:?}"
        );
    }
    drop(rc);

    let mut env = pki.env();
    env.push(("REGISTRY_HTTP_TLS_MINIMUMTLS", "tls1.3".into()));
    let rc = start(&up, "", &env);
    let tls12 = Arc::new(certs::client_config_versions(
        &[&pki.ca],
        None,
        &[&rustls::version::TLS12],
    ));
    assert!(certs::connect(rc.addr, &tls12).is_err(), "TLS 1.2 refused");
    assert_eq!(certs::get(rc.addr, &pki.client(), "/v2/", &[]).status, 200);
}

/// curl against `addr`, with a client certificate if given: its exit status and output.
fn curl(addr: std::net::SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> (bool, String) {
    support::require("curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"]).arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{addr}/v2/"));
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn clientcas_require_a_client_certificate_from_one_of_them() {
    let (up, _) = upstream_with(&[1000]);
    let pki = Pki::new("rsa");
    let d = pki.path();
    ca(d, "clientca");
    let (ccert, ckey) = issue(d, "client", "ec", "clientca", "client");
    // Signed by the server's CA, which is not in clientcas: refused too.
    let (ocert, okey) = issue(d, "other", "ec", "ca", "client");
    let mut env = pki.env();
    env.push((
        "REGISTRY_HTTP_TLS_CLIENTCAS",
        d.join("clientca.pem").display().to_string(),
    ));
    let rc = start(&up, "", &env);
    let (ok, out) = curl(rc.addr, &pki.ca, Some((&ccert, &ckey)));
    assert!(ok && out == "{}", "with a certificate: {out}");
    let (ok, out) = curl(rc.addr, &pki.ca, None);
    assert!(!ok, "without a certificate: {out}");
    let (ok, out) = curl(rc.addr, &pki.ca, Some((&ocert, &okey)));
    assert!(!ok, "with a certificate of another CA: {out}");
    assert!(
        rc.proc
            .saw_within(&["TLS handshake failed"], Duration::from_secs(5)),
        "refused in the handshake"
    );
    // rustls as a client with the certificate: served.
    let config = Arc::new(client_config(&[&pki.ca], Some((&ccert, &ckey))));
    assert_eq!(certs::get(rc.addr, &config, "/v2/", &[]).status, 200);
}

#[test]
fn sighup_rotates_the_certificate_for_new_connections_while_an_old_download_finishes() {
    let (up, img) = upstream_with(&[48 << 20]);
    // The layer as served (a tar.gz: a little longer than asked).
    let size = img.layers[0].len();
    let pki = Pki::new("ec");
    let d = pki.path();
    // The served pair lives at fixed paths; rotation replaces the files.
    let (cert, key) = (d.join("served.pem"), d.join("served.key"));
    std::fs::copy(&pki.cert, &cert).unwrap();
    std::fs::copy(&pki.key, &key).unwrap();
    let env = vec![
        ("REGISTRY_HTTP_TLS_CERTIFICATE", cert.display().to_string()),
        ("REGISTRY_HTTP_TLS_KEY", key.display().to_string()),
    ];
    let rc = start(&up, "ringcache: {workers: 1}\n", &env);
    let client = pki.client();
    let blob = format!("/v2/team/app/blobs/{}", img.layer_digests()[0]);
    let leaf_of = |s: &certs::Tls| s.conn.peer_certificates().unwrap()[0].to_vec();
    let old_der = certs::certs(&pki.cert)[0].to_vec();

    // A long download on an old connection: started, then paused by the client mid-body.
    let mut old = certs::connect(rc.addr, &client).unwrap();
    assert_eq!(leaf_of(&old), old_der);
    old.write_all(format!("GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = vec![0u8; 1 << 20];
    old.read_exact(&mut got).unwrap();

    // Rotate: a new pair in place, SIGHUP, the reload applied.
    let (new_cert, new_key) = issue(d, "rotated", "rsa", "ca", "server");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_count(&["reloaded", "http.tls"], 1, Duration::from_secs(10));
    let new_der = certs::certs(&new_cert)[0].to_vec();
    // A client of its own: one that resumes a session is not shown the certificate again.
    let fresh = certs::connect(rc.addr, &pki.client()).unwrap();
    assert_eq!(
        leaf_of(&fresh),
        new_der,
        "a new connection gets the new pair"
    );

    // The old connection finishes its download, intact.
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut rest = vec![0u8; size - (got.len() - head_end)];
    old.read_exact(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    let body = &got[head_end..];
    assert_eq!(body.len(), size, "the whole body on the old connection");
    assert_eq!(
        format!("sha256:{}", sha256_hex(body)),
        img.layer_digests()[0]
    );

    // A pair that does not load (the key of another certificate) keeps the running one.
    std::fs::copy(&pki.key, &key).unwrap();
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_log("http.tls not reloaded", Duration::from_secs(10));
    let after = certs::connect(rc.addr, &pki.client()).unwrap();
    assert_eq!(leaf_of(&after), new_der, "the running pair stays");
}

/// Read until the peer closes (or 10 s pass): the bytes, and how long it took.
fn until_closed(mut s: TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: each read waits at most 10 s, and a closed or reset socket ends the loop.
    for _ in 0..64 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, started.elapsed())
}

#[test]
fn plain_http_garbage_and_a_stalled_handshake_are_closed_while_others_are_served() {
    let (up, _) = upstream_with(&[1000]);
    let pki = Pki::new("ec");
    let mut env = pki.env();
    env.push(("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0".into()));
    let rc = start(
        &up,
        "ringcache: {workers: 1, limits: {head_timeout: 2s}}\n",
        &env,
    );
    let dbg = rc.debug_addr();
    let client = pki.client();
    let mut kept = certs::connect(rc.addr, &client).unwrap();

    // A handshake begun and never finished: closed at the head timeout...
    let mut stalled = TcpStream::connect(rc.addr).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let stalled = std::thread::spawn(move || until_closed(stalled));

    // ...while plain HTTP gets an alert and a close at once...
    let mut plain = TcpStream::connect(rc.addr).unwrap();
    plain
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (bytes, took) = until_closed(plain);
    assert!(
        took < Duration::from_secs(1),
        "plain HTTP closed in {took:?}"
    );
    assert!(
        bytes.is_empty() || bytes[0] == 0x15,
        "a TLS alert or nothing, never an HTTP answer: {bytes:?}"
    );
    // ...and so does garbage (an oversized record, random bytes).
    for junk in [
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0],
        image::pseudo_random(3, 2048),
    ] {
        let mut s = TcpStream::connect(rc.addr).unwrap();
        s.write_all(&junk).unwrap();
        let (_, took) = until_closed(s);
        assert!(took < Duration::from_secs(1), "garbage closed in {took:?}");
    }
    // The kept connection and new ones are served meanwhile.
    for _ in 0..3 {
        assert_eq!(certs::get_on(&mut kept, "/v2/", &[]).unwrap().status, 200);
        assert_eq!(certs::get(rc.addr, &client, "/v2/", &[]).status, 200);
    }
    let (_, took) = stalled.join().unwrap();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "the stalled handshake closed at the head timeout, not {took:?}"
    );
    assert_eq!(certs::get_on(&mut kept, "/v2/", &[]).unwrap().status, 200);
    // Counted by reason: plain HTTP and the two garbage inputs, the stalled one.
    let metric = |r: &str| format!("ringcache_tls_handshake_failures_total{{reason=\"{r}\"}}");
    support::wait_metric(dbg, &metric("tls"), |v| v == 3.0);
    support::wait_metric(dbg, &metric("timeout"), |v| v == 1.0);
}

#[test]
fn skopeo_pulls_over_tls_with_its_cert_dir_and_credentials() {
    support::require("skopeo");
    support::require("htpasswd");
    let (up, img) = upstream_with(&[200_000, 30_000]);
    let pki = Pki::new("rsa");
    let d = pki.path();
    let out = Command::new("htpasswd")
        .args(["-Bbn", "bob", "hunter2"])
        .output()
        .unwrap();
    std::fs::write(d.join("htpasswd"), out.stdout).unwrap();
    let extra = format!(
        "auth: {{htpasswd: {{realm: test-realm, path: {}}}}}\n",
        d.join("htpasswd").display()
    );
    let rc = start(&up, &extra, &pki.env());
    // skopeo (containers/image) takes CAs from *.crt files in the cert dir.
    let cert_dir = d.join("certs.d");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&pki.ca, cert_dir.join("ca.crt")).unwrap();
    let skopeo = |creds: &str, dest: &Path| {
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--retry-times=0",
                "--src-cert-dir",
            ])
            .arg(&cert_dir)
            .args(["--src-creds", creds])
            .arg(format!("docker://{}/team/app:v1", rc.addr))
            .arg(format!("oci:{}", dest.display()))
            .output()
            .unwrap()
    };
    let dest = d.join("pulled");
    let out = skopeo("bob:hunter2", &dest);
    assert!(
        out.status.success(),
        "skopeo over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = support::tree_hashes(&dest.join("blobs"));
    for digest in img.layer_digests() {
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            blobs.values().any(|h| h == hex),
            "layer {digest} pulled intact"
        );
    }
    let out = skopeo("bob:wrong", &d.join("refused"));
    assert!(!out.status.success(), "a wrong password is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401")
            || String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = rc.proc.log.lock().unwrap().clone();
    assert!(!log.contains("hunter2"), "passwords never logged");
}

#[test]
fn containerd_pulls_through_ringcache_over_tls() {
    let (up, img) = upstream_with(&[40_000]);
    let pki = Pki::new("ec");
    // containerd names the registry (`?ns=registry.test`): the default upstream answers as it.
    let rc = start(
        &up,
        "ringcache: {upstream: {registry: registry.test}}\n",
        &pki.env(),
    );
    let ctr = Containerd::start_tls("registry.test", rc.addr, &pki.ca);
    let pulled = ctr
        .pull("registry.test/team/app:v1", "linux/amd64")
        .unwrap_or_else(|e| panic!("containerd over TLS: {e}"));
    assert_eq!(pulled.digest, img.manifest_digest);
    assert_eq!(pulled.config, format!("sha256:{}", sha256_hex(&img.config)));
}

/// `check-config` on a config with `http.tls` / `auth` lines: exit status and stderr.
fn check_config(d: &Path, front: &str) -> (Option<i32>, String) {
    let cfg = d.join("check.yml");
    std::fs::write(
        &cfg,
        format!("version: 0.1\nproxy: {{remoteurl: http://127.0.0.1:1}}\n{front}"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_or_mismatched_files_are_clear_errors_at_check_config_and_start() {
    let pki = Pki::new("ec");
    let d = pki.path();
    let (other_cert, _) = issue(d, "other", "rsa", "ca", "server");
    let tls = |cert: &Path, key: &Path| {
        format!(
            "http: {{tls: {{certificate: {}, key: {}}}}}\n",
            cert.display(),
            key.display()
        )
    };
    let missing = d.join("missing.pem");
    for (front, says) in [
        (tls(&missing, &pki.key), "http.tls.certificate: "),
        (tls(&pki.cert, &missing), "http.tls.key: "),
        (
            tls(&other_cert, &pki.key),
            "does not go with the certificate",
        ),
        (tls(&pki.key, &pki.key), "no CERTIFICATE"),
        (
            format!(
                "http: {{tls: {{certificate: {}, key: {}, clientcas: [{}]}}}}\n",
                pki.cert.display(),
                pki.key.display(),
                missing.display()
            ),
            "http.tls.clientcas: ",
        ),
        (
            format!(
                "auth: {{htpasswd: {{realm: r, path: {}}}}}\n",
                missing.display()
            ),
            "auth.htpasswd.path: ",
        ),
        (
            format!(
                "auth: {{token: {{realm: r, service: s, issuer: i, rootcertbundle: {}}}}}\n",
                missing.display()
            ),
            "auth.token.rootcertbundle: ",
        ),
    ] {
        let (code, err) = check_config(d, &front);
        assert_eq!(code, Some(2), "{front}: {err}");
        assert!(err.contains(says), "{front}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let (code, err) = check_config(d, &tls(&pki.cert, &pki.key));
    assert_eq!(code, Some(0), "{err}");

    // `serve` refuses to start the same way.
    let cfg = d.join("serve.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nhttp: {{addr: 127.0.0.1:0, tls: {{certificate: {}, key: {}}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: http://127.0.0.1:1}}\n",
            missing.display(),
            pki.key.display(),
            d.join("data").display(),
        ),
    )
    .unwrap();
    let mut p = support::Proc::spawn({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ringcache"));
        c.arg("serve").arg("--config").arg(&cfg);
        c
    });
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    p.wait_log("http.tls.certificate: ", Duration::from_secs(10));
}

#[test]
fn socket_activation_serves_tls_on_the_inherited_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (up, _) = upstream_with(&[1000]);
    let pki = Pki::new("ec");
    let d = pki.path();
    // The socket "systemd" passes; the config names another address, which stays unused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = d.join("activated.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nhttp: {{addr: 127.0.0.1:{}, tls: {{certificate: {}, key: {}}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {}}}\n",
            support::free_port(),
            pki.cert.display(),
            pki.key.display(),
            d.join("data").display(),
            up.url()
        ),
    )
    .unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec {} serve --config {}",
        env!("CARGO_BIN_EXE_ringcache"),
        cfg.display()
    ));
    // SAFETY: between fork and exec, only dup2 (async-signal-safe) onto fd 3, which clears
    // its close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let rc = support::Proc::spawn(cmd);
    rc.wait_log(
        "serving on sockets passed by systemd",
        Duration::from_secs(20),
    );
    rc.wait_log("ready", Duration::from_secs(20));
    drop(listener);
    assert_eq!(certs::get(addr, &pki.client(), "/v2/", &[]).status, 200);
    let (bytes, _) = {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        until_closed(plain)
    };
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "plain HTTP is not served there"
    );
}

/// A session resumed after a reload that adds client CAs would carry its first handshake's
/// "no client certificate" past them: new client CAs start new tickets and sessions.
#[test]
fn new_client_cas_are_not_walked_past_by_resuming_an_older_session() {
    let (up, _) = upstream_with(&[1000]);
    let pki = Pki::new("ec");
    let d = pki.path();
    ca(d, "clientca");
    let (ccert, ckey) = issue(d, "client", "ec", "clientca", "client");
    let rc = start(&up, "", &pki.env());
    let anonymous = pki.client();
    for _ in 0..2 {
        // The second connection resumes the first's session (and takes a new ticket).
        let mut s = certs::connect(rc.addr, &anonymous).unwrap();
        assert_eq!(certs::get_on(&mut s, "/v2/", &[]).unwrap().status, 200);
    }
    // The operator adds client CAs and reloads.
    let cfg = rc.root.with_extension("yml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "http: {addr: 127.0.0.1:0}",
        &format!(
            "http: {{addr: 127.0.0.1:0, tls: {{clientcas: [{}]}}}}",
            d.join("clientca.pem").display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_count(&["reloaded", "http.tls"], 1, Duration::from_secs(10));
    // The anonymous client offers its ticket: refused (a full handshake asks for a
    // certificate it does not have).
    let resumed =
        certs::connect(rc.addr, &anonymous).and_then(|mut s| certs::get_on(&mut s, "/v2/", &[]));
    assert!(
        resumed.is_err(),
        "a session from before the client CAs was served: {:?}",
        resumed.map(|r| r.status)
    );
    let config = Arc::new(client_config(&[&pki.ca], Some((&ccert, &ckey))));
    assert_eq!(certs::get(rc.addr, &config, "/v2/", &[]).status, 200);
}
