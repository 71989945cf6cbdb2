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
