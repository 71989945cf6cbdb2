//! Upstream Bearer token flow against the test upstream's own realm: tokens fetched with the
//! configured Basic credentials, cached per scope, sent only to the upstream.

mod support;

use support::upstream::{basic, Fault, TestUpstream, TOKEN};
use support::{http, image, Ringcache};

#[test]
fn bearer_challenge_token_cached_and_credentials_only_to_upstream_and_realm() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    let img = image::image(5, &[40_000]);
    let digest = up.add_blob(img.layers[0].clone(), Fault::None);
    up.add_manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        img.manifest.clone(),
    );

    let rc = Ringcache::start(
        &format!("{}, username: bob, password: hunter2", up.url()),
        "ringcache: {workers: 1}\n",
    );
    for _ in 0..3 {
        let r = http::get(rc.addr, "/v2/team/app/manifests/v1");
        assert_eq!((r.status, r.body.clone()), (200, img.manifest.clone()));
    }
    let r = http::get(rc.addr, &format!("/v2/team/app/blobs/{digest}"));
    assert_eq!(r.body, img.layers[0]);

    let seen = up.seen();
    let tokens: Vec<_> = seen
        .iter()
        .filter(|(l, _)| l.starts_with("GET /token"))
        .collect();
    assert_eq!(tokens.len(), 1, "one token per scope, reused: {seen:?}");
    assert_eq!(
        tokens[0].1.as_deref(),
        Some(basic("bob", "hunter2").as_str()),
        "the realm gets the Basic credentials"
    );
    assert!(
        tokens[0].0.contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        tokens[0].0
    );
    for (line, authz) in seen.iter().filter(|(l, _)| l.contains(" /v2/team/")) {
        assert!(
            authz.is_none() || authz.as_deref() == Some(&format!("Bearer {TOKEN}")),
            "{line}: upstream requests carry the token, never the password: {authz:?}"
        );
    }
    let log = rc.proc.log.lock().unwrap().clone();
    assert!(
        !log.contains("hunter2") && !log.contains(TOKEN),
        "secrets never logged"
    );
}

#[test]
fn wrong_credentials_give_a_clear_401() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    up.add_manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    let rc = Ringcache::start(&format!("{}, username: bob, password: wrong", up.url()), "");
    let r = http::get(rc.addr, "/v2/team/app/manifests/v1");
    assert_eq!((r.status, r.error_code()), (401, "UNAUTHORIZED".into()));
    // And the server keeps serving.
    assert_eq!(http::get(rc.addr, "/v2/").status, 200);
}

#[test]
fn redirects_are_followed_without_sending_credentials_to_another_host() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "hunter2");
    let cdn = TestUpstream::start_on("127.0.0.2");
    let data = image::pseudo_random(77, 300_000);
    let digest = up.add_blob(data.clone(), Fault::None);
    cdn.add_blob(data.clone(), Fault::None);
    up.redirect_blobs_to(&cdn.url());

    let rc = Ringcache::start(
        &format!("{}, username: bob, password: hunter2", up.url()),
        "",
    );
    let r = http::get(rc.addr, &format!("/v2/team/app/blobs/{digest}"));
    assert_eq!((r.status, r.body == data), (200, true));
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1, "{at_cdn:?}");
    assert!(
        at_cdn[0].0.contains("signed=1"),
        "the redirect's query is kept: {at_cdn:?}"
    );
    assert_eq!(
        at_cdn[0].1, None,
        "no Authorization to a redirect target on another host"
    );
}

#[test]
fn cached_content_is_served_under_a_repository_only_once_upstream_confirms_it_there() {
    let up = TestUpstream::start();
    let data = image::pseudo_random(88, 50_000);
    let digest = up.add_blob_with(support::upstream::Blob {
        data: std::sync::Arc::new(data.clone()),
        only_in: Some("team/public".into()),
        ..Default::default()
    });
    let rc = Ringcache::start(&up.url(), "");
    assert_eq!(
        http::get(rc.addr, &format!("/v2/team/public/blobs/{digest}")).body,
        data
    );
    // Cached now, but upstream does not have it under team/secret: caching must not widen access.
    let r = http::get(rc.addr, &format!("/v2/team/secret/blobs/{digest}"));
    assert_eq!((r.status, r.error_code()), (404, "BLOB_UNKNOWN".into()));
    assert_eq!(
        up.count(&format!("HEAD /v2/team/secret/blobs/{digest}")),
        1,
        "asked upstream with a HEAD"
    );
    assert_eq!(
        up.count(&format!("GET /v2/team/secret/blobs/{digest}")),
        0,
        "never a GET"
    );
    assert!(!http::get(rc.addr, "/v2/_catalog")
        .text()
        .contains("team/secret"));
}
