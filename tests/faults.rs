//! Fills that survive faults: resume after upstream breaks mid-body (with Range, or from the
//! start when upstream ignores Range), Range answered from a blob still being filled.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::upstream::{Blob, Fault, TestUpstream};
use support::{http, image, Ringcache};

const MIB: usize = 1024 * 1024;

#[test]
fn upstream_break_mid_body_is_resumed_with_range_and_clients_never_notice() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    for (seed, ignore_range) in [(1u64, false), (2, true)] {
        let data = image::pseudo_random(seed + 900, 4 * MIB + 3);
        let digest = up.add_blob_with(Blob {
            data: Arc::new(data),
            fault: Fault::TruncateFirst(MIB + 5),
            ignore_range,
            ..Default::default()
        });
        let path = format!("/v2/x/blobs/{digest}");
        let (status, len, hex, complete) = http::get_hashed(rc.addr, &path);
        assert_eq!(
            (status, len, complete),
            (200, 4 * MIB as u64 + 3, true),
            "ignore_range={ignore_range}"
        );
        assert_eq!(format!("sha256:{hex}"), digest);
        assert_eq!(up.count(&format!("GET {path}")), 2, "one resume");
        let ranges: Vec<_> = up
            .ranges()
            .into_iter()
            .filter(|(l, _)| l.contains(&digest))
            .collect();
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert_eq!(
            ranges[0].1,
            format!("bytes={}-", MIB + 5),
            "resumed where the first body broke"
        );
        rc.proc
            .wait_count(&[&digest, "fill committed"], 1, Duration::from_secs(10));
    }
}

#[test]
fn resumes_are_bounded_then_the_fill_fails_cleanly() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let data = image::pseudo_random(31, 2 * MIB);
    let digest = up.add_blob(data, Fault::Truncate(MIB));
    let path = format!("/v2/x/blobs/{digest}");
    let (status, len, _, complete) = http::get_hashed(rc.addr, &path);
    assert!(!(status == 200 && complete) && len < 2 * MIB as u64);
    rc.proc
        .wait_count(&[&digest, "resumes exhausted"], 1, Duration::from_secs(10));
    // The access log reports the body bytes that went out before the cut (it said 0).
    let line = rc
        .proc
        .wait_log(&format!("{path} status=200"), Duration::from_secs(10));
    let bytes: u64 = line
        .split("bytes=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bytes= in {line}"));
    assert_eq!(
        bytes, len,
        "the access log's bytes are what the client received: {line}"
    );
    assert_eq!(
        up.count(&format!("GET {path}")),
        1 + 4,
        "the first GET and four resumes"
    );
}

#[test]
fn range_on_a_blob_still_being_filled_is_answered_from_the_fill() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let data = image::pseudo_random(41, 8 * MIB);
    // Upstream sends the first 2 MiB, then holds the rest until the gate opens.
    let digest = up.add_blob_with(Blob {
        data: Arc::new(data.clone()),
        gated: true,
        gate_at: 2 * MIB,
        ..Default::default()
    });
    let path = format!("/v2/x/blobs/{digest}");
    // A first client starts the fill (and waits for the rest).
    let leader = {
        let (addr, p) = (rc.addr, path.clone());
        std::thread::spawn(move || http::get_hashed(addr, &p))
    };
    rc.proc.wait_log("fill started", Duration::from_secs(10));
    // While upstream holds back everything past 2 MiB, a Range inside the first 2 MiB is
    // answered 206 from the fill.
    let r = http::request(rc.addr, "GET", &path, &[("Range", "bytes=1000-1999")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[1000..2000]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 1000-1999/{}", 8 * MIB)
    );
    assert_eq!(
        rc.proc.count_log(&["fill committed"]),
        0,
        "answered before the fill finished"
    );
    up.open_gate();
    let (status, _, hex, complete) = leader.join().unwrap();
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone())
    );
    assert_eq!(up.count(&format!("GET {path}")), 1);
}

#[test]
fn sigterm_drains_in_flight_requests_and_fills_then_exits_0() {
    let up = TestUpstream::start();
    let mut rc = Ringcache::start(&up.url(), "ringcache: {drain_timeout: 20s}\n");
    let data = image::pseudo_random(51, 8 * MIB);
    // A slow upstream: the fill is still running when the signal comes.
    let digest = up.add_blob_with(Blob {
        data: Arc::new(data),
        pace: Some(Duration::from_millis(4)),
        ..Default::default()
    });
    let path = format!("/v2/x/blobs/{digest}");
    // An idle keep-alive connection, and a request in flight.
    let mut idle = http::connect(rc.addr);
    http::send(&mut idle, rc.addr, "GET", "/v2/", &[], b"");
    let mut idle_r = std::io::BufReader::new(idle.try_clone().unwrap());
    assert_eq!(http::read_response(&mut idle_r, false).unwrap().status, 200);
    let inflight = {
        let (addr, p) = (rc.addr, path.clone());
        std::thread::spawn(move || http::get_hashed(addr, &p))
    };
    rc.proc.wait_log("fill started", Duration::from_secs(10));

    rc.proc.signal(libc::SIGTERM);
    rc.proc.wait_log("draining", Duration::from_secs(10));
    // The idle connection is closed by the drain.
    assert!(
        http::read_response(&mut idle_r, false).is_err(),
        "idle keep-alive closed"
    );
    // The request in flight completes, whole and verified.
    let (status, _, hex, complete) = inflight.join().unwrap();
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone())
    );
    let exit = rc.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0), "exits 0 after draining");
    rc.proc.wait_log("fill committed", Duration::from_secs(1));
    assert!(
        std::net::TcpStream::connect(rc.addr).is_err(),
        "listeners closed"
    );
}

#[test]
fn upstream_errors_before_the_body_reach_clients_as_oci_errors_and_are_not_cached() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    for (seed, status, want_status, want_code) in [
        (1u64, 429, 429, "TOOMANYREQUESTS"),
        (2, 503, 503, "UNAVAILABLE"),
        (3, 500, 503, "UNAVAILABLE"),
        (4, 403, 403, "DENIED"),
    ] {
        let digest = up.add_blob(
            image::pseudo_random(seed + 3000, 1000),
            Fault::Status(status),
        );
        let path = format!("/v2/x/blobs/{digest}");
        for attempt in 1..=2 {
            let r = http::get(rc.addr, &path);
            assert_eq!(
                (r.status, r.error_code()),
                (want_status, want_code.to_string()),
                "upstream {status}"
            );
            assert_eq!(
                up.count(&format!("GET {path}")),
                attempt,
                "upstream {status}: no negative caching"
            );
        }
    }
    assert_eq!(http::get(rc.addr, "/v2/").status, 200);
}

#[test]
fn invalid_upstream_framing_fails_the_fill_and_the_connection_is_not_reused() {
    let up = TestUpstream::start();
    let huge = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        )
        .into_boxed_str(),
    );
    let cases: [(&str, &'static str); 4] = [
        (
            "CL and TE",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "conflicting CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n",
        ),
        (
            "bad chunk size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
        ("oversized head", huge),
    ];
    for (seed, (what, raw)) in cases.into_iter().enumerate() {
        let rc = Ringcache::start(&up.url(), "ringcache: {workers: 1}\n");
        let digest = up.add_blob(
            image::pseudo_random(seed as u64 + 4000, 10),
            Fault::RawHead(raw),
        );
        let r = http::get(rc.addr, &format!("/v2/x/blobs/{digest}"));
        assert_eq!(
            (r.status, r.error_code()),
            (502, "UNAVAILABLE".into()),
            "{what}"
        );
        // The next upstream request opens a new connection: the broken one was not pooled.
        let before = up.connections();
        let good = up.add_blob(image::pseudo_random(seed as u64 + 4100, 1000), Fault::None);
        assert_eq!(
            http::get(rc.addr, &format!("/v2/x/blobs/{good}")).status,
            200,
            "{what}"
        );
        assert_eq!(
            up.connections(),
            before + 1,
            "{what}: the connection after bad framing must not be reused"
        );
    }
}

#[test]
fn upstream_stalls_are_timed_out_and_a_stalled_body_is_resumed() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {limits: {upstream_header_timeout: 400ms, upstream_body_stall: 400ms}}\n",
    );
    // A head that never comes: a clear 503 after the header timeout, not a hang.
    let digest = up.add_blob(image::pseudo_random(5001, 1000), Fault::HeadStallFirst);
    let started = std::time::Instant::now();
    let r = http::get(rc.addr, &format!("/v2/x/blobs/{digest}"));
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".into()));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        http::get(rc.addr, &format!("/v2/x/blobs/{digest}")).status,
        200,
        "the next request fills"
    );
    // A body that stops mid-way: the stall is detected and the fill resumes with Range.
    let data = image::pseudo_random(5002, 2 * MIB);
    let digest = up.add_blob(data, Fault::StallFirst(MIB));
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &format!("/v2/x/blobs/{digest}"));
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone())
    );
    assert_eq!(
        up.ranges()
            .iter()
            .filter(|(l, r)| l.contains(&digest) && r == &format!("bytes={MIB}-"))
            .count(),
        1
    );
}

#[test]
fn a_failing_token_endpoint_gives_a_clear_error_not_a_hang() {
    let up = TestUpstream::start();
    up.require_bearer("bob", "pw");
    up.add_manifest(
        "a/b",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        b"{}".to_vec(),
    );
    let rc = Ringcache::start(&format!("{}, username: bob, password: pw", up.url()), "");
    up.fail_tokens(500);
    let r = http::get(rc.addr, "/v2/a/b/manifests/v1");
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".into()));
    up.fail_tokens(403);
    let r = http::get(rc.addr, "/v2/a/b/manifests/v1");
    assert_eq!((r.status, r.error_code()), (401, "UNAUTHORIZED".into()));
}

#[test]
fn a_client_that_stops_reading_is_cut_and_the_fill_runs_at_upstream_speed() {
    use std::io::Read;
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "ringcache: {limits: {send_stall: 500ms}}\n");
    let size = 64 * MIB;
    let digest = up.add_generated(6001, size, Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    let mut s = http::connect(rc.addr);
    http::send(&mut s, rc.addr, "GET", &path, &[], b"");
    // The client reads nothing; the fill still completes for the cache.
    rc.proc.wait_log("fill committed", Duration::from_secs(30));
    // ...and the stalled client is cut: reading now ends well short of the body.
    rc.proc
        .wait_log("response cut short", Duration::from_secs(10));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < size,
        "a client that stopped reading was cut ({got} bytes)"
    );
    // Everyone else is served, from disk.
    let (status, _, hex, complete) = http::get_hashed(rc.addr, &path);
    assert_eq!(
        (status, complete, format!("sha256:{hex}")),
        (200, true, digest.clone())
    );
    assert_eq!(up.count(&format!("GET {path}")), 1);
}
