//! Docker Hub's pull budget, end to end: the `ratelimit-limit` / `ratelimit-remaining` fields
//! of an upstream's manifest answers become gauges per upstream on `/metrics`, its 429s a
//! counter; with the budget nearly spent, a tag past its freshness is answered from the cache
//! without asking upstream, until an answer reports the budget recovered (each turn logged
//! once).

mod support;

use std::time::Duration;

use support::upstream::TestUpstream;
use support::{http, image, wait_metric, Ringcache};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn get_tag(rc: &Ringcache, tag: &str) -> http::Resp {
    http::request(
        rc.addr,
        "GET",
        &format!("/v2/a/b/manifests/{tag}"),
        &[("Accept", MANIFEST)],
        b"",
    )
}

#[test]
fn the_budget_and_429s_are_exported_per_upstream() {
    let up = TestUpstream::start();
    let img = image::image(1, &[1000]);
    up.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    up.set_ratelimit(Some((100, 76, 21600)));
    let rc = Ringcache::start_with_env(
        &up.url(),
        "ringcache: {tags: {fresh_for: 0s}}\n",
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let body = http::get(dbg, "/metrics").text();
    assert!(
        !body.contains("ringcache_upstream_ratelimit_remaining{"),
        "no budget before upstream reported one:\n{body}"
    );
    assert!(
        body.contains("ringcache_upstream_429_total{upstream=\""),
        "{body}"
    );

    assert_eq!(get_tag(&rc, "v1").status, 200);
    rc.proc
        .wait_count(&["fill committed"], 1, Duration::from_secs(10));
    let u = |name: &str| format!("{name}{{upstream=\"{}\"}}", up.addr);
    wait_metric(dbg, &u("ringcache_upstream_ratelimit_remaining"), |v| {
        v == 76.0
    });
    wait_metric(dbg, &u("ringcache_upstream_ratelimit_limit"), |v| {
        v == 100.0
    });
    wait_metric(
        dbg,
        &u("ringcache_upstream_ratelimit_window_seconds"),
        |v| v == 21600.0,
    );
    wait_metric(dbg, &u("ringcache_upstream_ratelimit_stretched"), |v| {
        v == 0.0
    });

    // The budget moves with every answer.
    up.set_ratelimit(Some((100, 60, 21600)));
    assert_eq!(get_tag(&rc, "v1").status, 200);
    wait_metric(dbg, &u("ringcache_upstream_ratelimit_remaining"), |v| {
        v == 60.0
    });

    // 429s are counted (the cached tag is served meanwhile: stale-if-error).
    up.fail_manifests(Some(429));
    for _ in 0..2 {
        let r = get_tag(&rc, "v1");
        assert_eq!((r.status, &r.body), (200, &img.manifest));
    }
    wait_metric(dbg, &u("ringcache_upstream_429_total"), |v| v == 2.0);
}

#[test]
fn a_nearly_spent_budget_stretches_tag_freshness_until_it_recovers() {
    let up = TestUpstream::start();
    let img = image::image(1, &[1000]);
    up.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    let img2 = image::image(2, &[1000]);
    up.add_manifest("a/b", "v2", MANIFEST, img2.manifest.clone());
    up.set_ratelimit(Some((100, 50, 21600)));
    // Without the budget, every tag request is past its freshness (0s) and asks upstream.
    let rc = Ringcache::start_with_env(
        &up.url(),
        "ringcache: {tags: {fresh_for: 0s}, ratelimit: {stretch_below: 0.1, stretch_to: 1h}}\n",
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let heads = |tag: &str| up.count(&format!("HEAD /v2/a/b/manifests/{tag}"));
    for n in 1..=2 {
        assert_eq!(get_tag(&rc, "v1").body, img.manifest);
        assert_eq!(heads("v1"), n, "budget at half: revalidated every time");
    }

    // 5 of 100 left (under a tenth): the next answer stretches the window.
    up.set_ratelimit(Some((100, 5, 21600)));
    assert_eq!(get_tag(&rc, "v1").body, img.manifest);
    assert_eq!(heads("v1"), 3);
    rc.proc
        .wait_log("upstream pull budget nearly spent", Duration::from_secs(10));
    let stretched = format!(
        "ringcache_upstream_ratelimit_stretched{{upstream=\"{}\"}}",
        up.addr
    );
    wait_metric(dbg, &stretched, |v| v == 1.0);
    for _ in 0..3 {
        assert_eq!(get_tag(&rc, "v1").body, img.manifest);
    }
    assert_eq!(
        heads("v1"),
        3,
        "past fresh_for, within stretch_to: no upstream request"
    );

    // Still low: a new tag is asked for (nothing cached), and logs nothing more.
    up.set_ratelimit(Some((100, 3, 21600)));
    assert_eq!(get_tag(&rc, "v2").body, img2.manifest);
    assert_eq!(heads("v2"), 1);
    // Recovered: the next answer (here another request's) ends the stretch.
    up.set_ratelimit(Some((100, 100, 21600)));
    let _ = up.add_manifest("a/b", "v3", MANIFEST, image::image(3, &[10]).manifest);
    assert_eq!(get_tag(&rc, "v3").status, 200);
    rc.proc
        .wait_log("upstream pull budget recovered", Duration::from_secs(10));
    wait_metric(dbg, &stretched, |v| v == 0.0);
    assert_eq!(get_tag(&rc, "v1").body, img.manifest);
    assert_eq!(heads("v1"), 4, "back to tags.fresh_for");
    assert_eq!(rc.proc.count_log(&["upstream pull budget nearly spent"]), 1);
    assert_eq!(rc.proc.count_log(&["upstream pull budget recovered"]), 1);
}

#[test]
fn stretching_can_be_turned_off() {
    let up = TestUpstream::start();
    let img = image::image(1, &[1000]);
    up.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    up.set_ratelimit(Some((100, 0, 21600)));
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {tags: {fresh_for: 0s}, ratelimit: {stretch_below: 0}}\n",
    );
    for n in 1..=3 {
        assert_eq!(get_tag(&rc, "v1").body, img.manifest);
        assert_eq!(up.count("HEAD /v2/a/b/manifests/v1"), n);
    }
    assert_eq!(rc.proc.count_log(&["upstream pull budget nearly spent"]), 0);
}

#[test]
fn each_upstream_has_its_own_budget_and_stretch() {
    let hub = TestUpstream::start();
    let ghcr = TestUpstream::start();
    let img = image::image(1, &[1000]);
    for up in [&hub, &ghcr] {
        up.add_manifest("a/b", "v1", MANIFEST, img.manifest.clone());
    }
    hub.set_ratelimit(Some((100, 1, 21600)));
    ghcr.set_ratelimit(Some((5000, 4000, 3600)));
    let rc = Ringcache::start_with_env(
        &hub.url(),
        &format!(
            "ringcache:\n  upstream: {{registry: docker.io}}\n  tags: {{fresh_for: 0s}}\n  upstreams:\n    ghcr.io: {{remoteurl: {}}}\n",
            ghcr.url()
        ),
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let get = |path: &str| http::request(rc.addr, "GET", path, &[("Accept", MANIFEST)], b"").body;
    for _ in 0..3 {
        assert_eq!(get("/v2/a/b/manifests/v1"), img.manifest);
        assert_eq!(get("/v2/ghcr.io/a/b/manifests/v1"), img.manifest);
    }
    assert_eq!(hub.count("HEAD /v2/a/b/manifests/v1"), 1, "stretched");
    assert_eq!(ghcr.count("HEAD /v2/a/b/manifests/v1"), 3, "not stretched");
    let remaining = |u: &str| format!("ringcache_upstream_ratelimit_remaining{{upstream=\"{u}\"}}");
    wait_metric(dbg, &remaining("docker.io"), |v| v == 1.0);
    wait_metric(dbg, &remaining("ghcr.io"), |v| v == 4000.0);
    let stretched = |u: &str| format!("ringcache_upstream_ratelimit_stretched{{upstream=\"{u}\"}}");
    wait_metric(dbg, &stretched("docker.io"), |v| v == 1.0);
    wait_metric(dbg, &stretched("ghcr.io"), |v| v == 0.0);
}
