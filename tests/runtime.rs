//! The runtime under faults and abuse: a thread that panics takes the whole process down (so
//! the service manager restarts it, rather than a worker's listener taking connections nobody
//! accepts), the health check names a worker whose event loop stopped answering, and the debug
//! listener answers probes beside slow clients and refuses what web pages send it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::upstream::{Fault, TestUpstream};
use support::{eventually, http, image, Ringcache};

/// The admin header the debug listener's POSTs need.
const ADMIN: (&str, &str) = ("X-Ringcache-Admin", "1");

#[test]
fn a_worker_that_panics_takes_the_process_down() {
    support::require_failpoints();
    let up = TestUpstream::start();
    // A second after start, worker 1 (not w0, which the main thread joins first) panics.
    let env = [
        ("RINGCACHE_WORKERS", "2"),
        ("RINGCACHE_FAILPOINTS", "worker-panic=1s"),
    ];
    let mut rc = Ringcache::start_with_env(&up.url(), "", &env);
    rc.proc
        .wait_log("failpoint worker-panic", Duration::from_secs(20));
    let status = rc.proc.wait_exit(Duration::from_secs(5));
    assert!(!status.success(), "{status:?}");
    let line = rc
        .proc
        .wait_log("panic in thread ringcache-w1", Duration::from_secs(1));
    assert!(line.contains("failpoint worker-panic"), "{line}");
}

#[test]
fn a_fill_job_that_panics_takes_the_process_down() {
    support::require_failpoints();
    let up = TestUpstream::start();
    let digest = up.add_blob(image::pseudo_random(71, 300_000), Fault::None);
    // The fill's first write or hash job panics: its fill would wait for it forever.
    let env = [("RINGCACHE_FAILPOINTS", "job-panic=0s")];
    let mut rc = Ringcache::start_with_env(&up.url(), "", &env);
    let addr = rc.addr;
    let client = std::thread::spawn(move || {
        let mut s = http::connect(addr);
        http::send(
            &mut s,
            addr,
            "GET",
            &format!("/v2/x/blobs/{digest}"),
            &[],
            b"",
        );
        // Cut short when the process goes.
        let _ = http::read_response(&mut std::io::BufReader::new(s), false);
    });
    let status = rc.proc.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{status:?}");
    let line = rc
        .proc
        .wait_log("panic in thread ringcache-job", Duration::from_secs(1));
    assert!(line.contains("failpoint job-panic"), "{line}");
    client.join().unwrap();
}

/// `GET /debug/health`, its status and body.
fn health(dbg: std::net::SocketAddr) -> (u16, String) {
    let r = http::get(dbg, "/debug/health");
    (r.status, r.text())
}

/// `GET /debug/health`'s status, or `None` if the connection was reset or closed unanswered.
fn health_or_refused(dbg: std::net::SocketAddr) -> Option<u16> {
    let mut s = http::connect(dbg);
    http::send(&mut s, dbg, "GET", "/debug/health", &[], b"");
    http::read_response(&mut std::io::BufReader::new(s), false)
        .ok()
        .map(|r| r.status)
}

#[test]
fn health_names_a_worker_whose_event_loop_stopped_answering() {
    support::require_failpoints();
    let up = TestUpstream::start();
    // Two seconds after start, one worker's event loop blocks for 4 s.
    let env = [
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("RINGCACHE_WORKERS", "2"),
        ("RINGCACHE_FAILPOINTS", "worker-stall=4s"),
    ];
    let rc = Ringcache::start_with_env(&up.url(), "", &env);
    let dbg = rc.debug_addr();
    assert_eq!(health(dbg), (200, "{}".into()));
    rc.proc
        .wait_log("failpoint worker-stall", Duration::from_secs(20));
    // Polled (bounded): 503 once its heartbeat is older than the check allows, naming it.
    let body = eventually(Duration::from_secs(10), "health turns 503", || {
        let (status, body) = health(dbg);
        (status == 503).then_some(body)
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let workers = v["workers"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(
        workers.contains("w0") || workers.contains("w1"),
        "{workers}"
    );
    // And healthy again once it answers.
    eventually(Duration::from_secs(20), "health recovers", || {
        (health(dbg).0 == 200).then_some(())
    });
}

#[test]
fn a_slow_client_on_the_debug_listener_delays_no_probe_and_is_cut() {
    let up = TestUpstream::start();
    let (_rc, dbg) = Ringcache::start_with_debug(&up.url());
    // A client that sends a head a byte at a time, slower than anyone should.
    let mut slow = TcpStream::connect(dbg).unwrap();
    slow.write_all(b"GET /debug/health HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let (status, _) = health(dbg);
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a health probe beside a slow client took {took:?}"
    );
    // Its head has a deadline as a whole, not per read: trickling bytes does not keep it open.
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut byte = [0u8; 1];
    eventually(Duration::from_secs(15), "a trickling client is cut", || {
        if slow.write_all(b"a").is_err() {
            return Some(());
        }
        match slow.read(&mut byte) {
            Ok(0) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
            Err(_) => Some(()),
            Ok(_) => panic!("answered a head that never ended"),
        }
    });
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut before its head deadline"
    );
    assert_eq!(health(dbg).0, 200);

    // A crowd of slow clients, more than the listener serves at once, each reconnecting as
    // soon as it is cut: probes are still answered, at once (a new connection takes the slot
    // of the oldest one still sending its head).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let crowd: Vec<_> = (0..48)
        .map(|_| {
            let stop = stop.clone();
            let connected = connected.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let Ok(mut s) = TcpStream::connect(dbg) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET /debug/health HTTP/1.1\r\n");
                    connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let _ = s.read(&mut [0u8; 64]);
                }
            })
        })
        .collect();
    // The crowd fills the listener first (every one of them has connected).
    eventually(Duration::from_secs(10), "the crowd connects", || {
        (connected.load(std::sync::atomic::Ordering::Relaxed) >= 48).then_some(())
    });
    for i in 0..8 {
        let started = Instant::now();
        assert_eq!(
            health_or_refused(dbg),
            Some(200),
            "probe {i} beside a crowd of slow clients"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "probe {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in crowd {
        t.join().unwrap();
    }
}

#[test]
fn the_debug_listener_refuses_web_pages_and_simple_posts() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    let down = |headers: &[(&str, &str)], body: &[u8]| {
        http::request(dbg, "POST", "/debug/health/down", headers, body).status
    };
    // What a web page can send without a preflight: refused, and the node stays up.
    assert_eq!(
        down(&[("Origin", "http://evil.example"), ADMIN], b""),
        403,
        "a request from a web page, even with the header"
    );
    assert_eq!(
        down(&[("Content-Type", "text/plain")], b"x"),
        403,
        "a simple POST"
    );
    assert_eq!(down(&[("Sec-Fetch-Site", "cross-site"), ADMIN], b""), 403);
    assert_eq!(down(&[], b""), 403, "no admin header");
    let r = http::request(
        dbg,
        "GET",
        "/metrics",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(health(dbg), (200, "{}".into()));
    assert_eq!(http::get(rc.addr, "/").status, 200);
    // The operator's request (curl -X POST -H 'X-Ringcache-Admin: 1').
    assert_eq!(down(&[ADMIN], b""), 200);
    assert_eq!(health(dbg).0, 503);
    assert_eq!(
        http::request(dbg, "POST", "/debug/health/up", &[ADMIN], b"").status,
        200
    );
    assert_eq!(health(dbg), (200, "{}".into()));
}
