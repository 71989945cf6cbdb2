//! Client authentication (`auth`) in front of the cache, as the reference registry does it:
//! `htpasswd` (Basic, bcrypt, the file re-read on SIGHUP) and `token` (Bearer JWTs made and
//! signed here with keys whose certificates are in `rootcertbundle`).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::certs::{ca, issue, pkcs8_der};
use support::upstream::{basic, Fault, TestUpstream};
use support::{http, image, wait_metric, Ringcache};

/// An upstream with `a:v1` and `b:v1`.
fn upstream() -> (TestUpstream, Vec<u8>, Vec<u8>) {
    let up = TestUpstream::start();
    let mut manifests = Vec::new();
    for (seed, name) in [(1, "a"), (2, "b")] {
        let img = image::image(seed, &[5_000]);
        up.add_blob(img.config.clone(), Fault::None);
        up.add_blob(img.layers[0].clone(), Fault::None);
        up.add_manifest(
            name,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            img.manifest.clone(),
        );
        manifests.push(img.manifest);
    }
    (up, manifests.remove(0), manifests.remove(0))
}

fn htpasswd_line(user: &str, password: &str) -> String {
    support::require("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string() + "\n"
}

fn get(rc: &Ringcache, path: &str, authorization: Option<&str>) -> http::Resp {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http::request(rc.addr, "GET", path, &headers, b"")
}

/// 401, the OCI error, and this challenge.
fn refused(r: &http::Resp, challenge: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert_eq!(r.header("WWW-Authenticate"), Some(challenge));
}

#[test]
fn htpasswd_challenges_checks_bcrypt_and_rereads_the_file_on_sighup() {
    let (up, a, _) = upstream();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let md5 = "old:$apr1$xyz$0123456789abcdefghijkl\n";
    std::fs::write(&file, htpasswd_line("bob", "hunter2") + md5).unwrap();
    let rc = Ringcache::start_with_env(
        &up.url(),
        &format!(
            "auth: {{htpasswd: {{realm: test-realm, path: {}}}}}\nringcache: {{workers: 2}}\n",
            file.display()
        ),
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    rc.proc
        .wait_log("\"old\" is not a bcrypt entry", Duration::from_secs(5));
    let challenge = "Basic realm=\"test-realm\"";
    let bob = basic("bob", "hunter2");
    refused(&get(&rc, "/v2/", None), challenge);
    refused(&get(&rc, "/v2/a/manifests/v1", None), challenge);
    refused(
        &get(&rc, "/v2/a/manifests/v1", Some(&basic("bob", "wrong"))),
        challenge,
    );
    refused(
        &get(&rc, "/v2/a/manifests/v1", Some(&basic("eve", "hunter2"))),
        challenge,
    );
    refused(
        &get(&rc, "/v2/a/manifests/v1", Some("Basic !!notbase64")),
        challenge,
    );
    assert_eq!(get(&rc, "/v2/", Some(&bob)).status, 200);
    let r = get(&rc, "/v2/a/manifests/v1", Some(&bob));
    assert_eq!((r.status, &r.body), (200, &a));
    // The load balancers' liveness check needs no credentials.
    assert_eq!(get(&rc, "/", None).status, 200);
    // A crowd with the same credentials: one check per worker, every request served.
    let crowd: Vec<_> = (0..16)
        .map(|_| {
            let (addr, bob) = (rc.addr, bob.clone());
            std::thread::spawn(move || {
                http::request(
                    addr,
                    "GET",
                    "/v2/a/manifests/v1",
                    &[("Authorization", &bob)],
                    b"",
                )
                .status
            })
        })
        .collect();
    for c in crowd {
        assert_eq!(c.join().unwrap(), 200);
    }
    wait_metric(
        dbg,
        "ringcache_auth_failures_total{reason=\"credentials\"}",
        |v| v == 2.0,
    );
    wait_metric(
        dbg,
        "ringcache_auth_failures_total{reason=\"missing\"}",
        |v| v == 2.0,
    );
    wait_metric(
        dbg,
        "ringcache_auth_failures_total{reason=\"malformed\"}",
        |v| v == 1.0,
    );

    // SIGHUP re-reads the file: bob is gone (on every worker, whatever it remembered), alice
    // is in.
    std::fs::write(&file, htpasswd_line("alice", "s3cret")).unwrap();
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_count(&["reloaded", "\"auth\""], 1, Duration::from_secs(10));
    for _ in 0..4 {
        refused(&get(&rc, "/v2/a/manifests/v1", Some(&bob)), challenge);
        let r = get(&rc, "/v2/a/manifests/v1", Some(&basic("alice", "s3cret")));
        assert_eq!(r.status, 200);
    }
    // A file that cannot be read keeps the running entries.
    std::fs::remove_file(&file).unwrap();
    rc.proc.signal(libc::SIGHUP);
    rc.proc
        .wait_log("auth not reloaded", Duration::from_secs(10));
    assert_eq!(
        get(&rc, "/v2/", Some(&basic("alice", "s3cret"))).status,
        200
    );
    let log = rc.proc.log.lock().unwrap().clone();
    for secret in ["hunter2", "s3cret", "wrong", &bob[6..]] {
        assert!(!log.contains(secret), "{secret:?} never logged");
    }
}

/// A token signer: a key whose certificate goes into the root bundle.
struct Signer {
    kind: &'static str,
    pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
}

impl Signer {
    fn new(dir: &Path, name: &str, kind: &'static str) -> (Signer, std::path::PathBuf) {
        let (cert, key) = issue(
            dir,
            name,
            if kind == "RS256" { "rsa" } else { "ec" },
            "ca",
            "client",
        );
        let pkcs8 = pkcs8_der(dir, &key);
        let cert_der = support::certs::certs(&cert)[0].to_vec();
        (
            Signer {
                kind,
                pkcs8,
                cert_der,
            },
            cert,
        )
    }

    fn kid(&self) -> String {
        ringcache::auth::token::key_of(&self.cert_der).unwrap().kid
    }

    /// A compact JWS of `claims` (header: this signer's alg, and `kid` if given).
    fn sign(&self, claims: &serde_json::Value, kid: Option<String>) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut header = serde_json::json!({"typ": "JWT", "alg": self.kind});
        if let Some(k) = kid {
            header["kid"] = k.into();
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = if self.kind == "RS256" {
            let key = ring::signature::RsaKeyPair::from_pkcs8(&self.pkcs8).unwrap();
            let mut sig = vec![0u8; key.public().modulus_len()];
            key.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        } else {
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &self.pkcs8,
                &rng,
            )
            .unwrap();
            key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        };
        format!("{input}.{}", b64(&sig))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as a token server issues them: `access` entries of (type, name, actions).
fn claims(access: &[(&str, &str, &[&str])]) -> serde_json::Value {
    serde_json::json!({
        "iss": "test-issuer",
        "sub": "bob",
        "aud": "ringcache.test",
        "exp": now() + 300,
        "nbf": now() - 10,
        "iat": now() - 10,
        "jti": "1",
        "access": access.iter().map(|(t, n, a)| serde_json::json!({"type": t, "name": n, "actions": a})).collect::<Vec<_>>(),
    })
}

#[test]
fn bearer_tokens_open_what_they_grant_and_nothing_else() {
    let (up, a, _) = upstream();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    let (rsa, rsa_cert) = Signer::new(d, "tokrsa", "RS256");
    let (ec, ec_cert) = Signer::new(d, "tokec", "ES256");
    let (rogue, _) = Signer::new(d, "rogue", "RS256");
    let bundle = d.join("bundle.pem");
    let mut pem = std::fs::read(&rsa_cert).unwrap();
    pem.extend(std::fs::read(&ec_cert).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let rc = Ringcache::start_with_env(
        &up.url(),
        &format!(
            "auth: {{token: {{realm: 'https://auth.test/token', service: ringcache.test, issuer: test-issuer, rootcertbundle: {}}}}}\n",
            bundle.display()
        ),
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let realm = "Bearer realm=\"https://auth.test/token\",service=\"ringcache.test\"";
    let bearer = |t: &str| format!("Bearer {t}");

    // No token: the challenge, with the scope the request needs.
    refused(&get(&rc, "/v2/", None), realm);
    refused(
        &get(&rc, "/v2/a/manifests/v1", None),
        &format!("{realm},scope=\"repository:a:pull\""),
    );
    refused(
        &get(&rc, "/v2/a/manifests/v1", Some(&basic("bob", "x"))),
        &format!("{realm},scope=\"repository:a:pull\""),
    );

    // A token for a: a opens, b does not; /v2/ takes any valid token.
    let for_a = rsa.sign(&claims(&[("repository", "a", &["pull"])]), Some(rsa.kid()));
    let r = get(&rc, "/v2/a/manifests/v1", Some(&bearer(&for_a)));
    assert_eq!((r.status, &r.body), (200, &a));
    assert_eq!(get(&rc, "/v2/", Some(&bearer(&for_a))).status, 200);
    refused(
        &get(&rc, "/v2/b/manifests/v1", Some(&bearer(&for_a))),
        &format!("{realm},scope=\"repository:b:pull\",error=\"insufficient_scope\""),
    );
    refused(
        &get(&rc, "/v2/_catalog", Some(&bearer(&for_a))),
        &format!("{realm},scope=\"registry:catalog:*\",error=\"insufficient_scope\""),
    );
    // ES256, no kid: checked against the bundle's keys.
    let es = ec.sign(&claims(&[("repository", "b", &["*"])]), None);
    assert_eq!(
        get(&rc, "/v2/b/manifests/v1", Some(&bearer(&es))).status,
        200
    );
    let catalog = ec.sign(&claims(&[("registry", "catalog", &["*"])]), None);
    assert_ne!(
        get(&rc, "/v2/_catalog", Some(&bearer(&catalog))).status,
        401
    );

    // Refused: expired, not yet valid, another issuer or audience, an untrusted signer, a
    // claim changed after signing, and `alg: none`.
    let invalid = format!("{realm},scope=\"repository:a:pull\",error=\"invalid_token\"");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&[("repository", "a", &["pull"])]);
        f(&mut c);
        c
    };
    let expired = rsa.sign(&with(&|c| c["exp"] = (now() - 600).into()), Some(rsa.kid()));
    let early = rsa.sign(&with(&|c| c["nbf"] = (now() + 600).into()), None);
    let issuer = rsa.sign(&with(&|c| c["iss"] = "someone-else".into()), None);
    let audience = ec.sign(&with(&|c| c["aud"] = "another-registry".into()), None);
    let untrusted = rogue.sign(&claims(&[("repository", "a", &["pull"])]), None);
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let parts: Vec<&str> = for_a.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&claims(&[("repository", "b", &["pull"])])),
        parts[2]
    );
    let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none"})), parts[1]);
    for (what, token) in [
        ("expired", &expired),
        ("not yet valid", &early),
        ("issuer", &issuer),
        ("audience", &audience),
        ("untrusted", &untrusted),
        ("tampered", &tampered),
        ("none", &none),
    ] {
        let r = get(&rc, "/v2/a/manifests/v1", Some(&bearer(token)));
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some(invalid.as_str()),
            "{what}"
        );
    }
    let tampered_b = get(&rc, "/v2/b/manifests/v1", Some(&bearer(&tampered)));
    assert_eq!(
        tampered_b.status, 401,
        "a changed access list opens nothing"
    );
    for (reason, n) in [
        ("scope", 2.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("issuer", 1.0),
        ("audience", 1.0),
        ("signature", 4.0),
    ] {
        wait_metric(
            dbg,
            &format!("ringcache_auth_failures_total{{reason=\"{reason}\"}}"),
            |v| v == n,
        );
    }
    let log = rc.proc.log.lock().unwrap().clone();
    assert!(!log.contains(&for_a[..40]), "tokens never logged");
}

/// A crowd of wrong passwords from one address: past the limit its attempts are refused at
/// once (429, no bcrypt check), so they cannot hold the check slots; a right password from
/// that address is refused too until the window passes, and counted as throttled.
#[test]
fn failed_logins_from_one_address_are_throttled_without_a_check() {
    let (up, _, _) = upstream();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("bob", "hunter2")).unwrap();
    let rc = Ringcache::start_with_env(
        &up.url(),
        &format!(
            "auth: {{htpasswd: {{realm: r, path: {}}}}}\nringcache: {{workers: 1}}\n",
            file.display()
        ),
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let wrong = basic("bob", "wrong");
    for i in 0..10 {
        assert_eq!(get(&rc, "/v2/", Some(&wrong)).status, 401, "attempt {i}");
    }
    let r = get(&rc, "/v2/", Some(&wrong));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(get(&rc, "/v2/", Some(&basic("bob", "hunter2"))).status, 429);
    support::wait_metric(
        dbg,
        "ringcache_auth_failures_total{reason=\"throttled\"}",
        |v| v >= 2.0,
    );
}
