//! Strict HTTP/1.1 framing on the server side: every bad head gets its status and the
//! connection is closed, and the server goes on serving other clients. Keep-alive (1.0 and
//! 1.1), pipelining, writes refused without reading their body, and OCI errors for bad names.

mod support;

use std::io::{BufReader, Write};

use support::upstream::TestUpstream;
use support::{http, wait_metric, Ringcache};

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_framing_gets_its_status_and_the_connection_closes() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let big_header = format!(
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let long_line = format!("GET /v2/{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let many = format!(
        "GET /v2/ HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-A: b\r\n".repeat(101)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("bare LF", "GET /v2/ HTTP/1.1\nHost: a\n\n".into(), 400),
        ("CL and TE", "GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 400),
        ("duplicate CL", "GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n".into(), 400),
        ("invalid CL", "GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".into(), 400),
        ("no Host", "GET /v2/ HTTP/1.1\r\n\r\n".into(), 400),
        ("two Hosts", "GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        ("body on GET", "GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".into(), 400),
        ("TE on HEAD", "HEAD /v2/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".into(), 400),
        ("header line too long", big_header, 431),
        ("request line too long", long_line, 414),
        ("too many headers", many, 431),
    ];
    for (what, input, want) in cases {
        let (resp, closed) = http::raw(rc.addr, input.as_bytes());
        assert_eq!(
            status_of(&resp),
            want,
            "{what}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(
            closed,
            "{what}: connection must be closed after a framing error"
        );
        // The server still serves the next client.
        assert_eq!(http::get(rc.addr, "/v2/").status, 200, "after {what}");
    }
}

#[test]
fn a_request_target_past_the_request_line_limit_is_414() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let target = format!("/v2/{}/manifests/latest", "a".repeat(9000));
    let cases = [
        // The whole line: refused when its end is seen.
        ("whole", format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n")),
        // A line that never ends: refused as soon as it is past the limit.
        ("unfinished", format!("GET {target}")),
    ];
    for (what, input) in cases {
        let (resp, closed) = http::raw(rc.addr, input.as_bytes());
        let text = String::from_utf8_lossy(&resp);
        assert!(
            text.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{what}: {text}"
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).expect("an OCI error body");
        assert!(v["errors"][0]["code"].is_string(), "{what}: {body}");
        assert!(closed, "{what}: the connection ends");
        assert_eq!(http::get(rc.addr, "/v2/").status, 200, "after {what}");
    }
}

#[test]
fn writes_are_refused_with_405_without_reading_the_body() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    for (method, path) in [
        ("PUT", "/v2/a/manifests/v1"),
        ("POST", "/v2/a/blobs/uploads/"),
        ("PATCH", "/v2/a/blobs/uploads/x"),
        ("DELETE", "/v2/a/manifests/v1"),
    ] {
        // Declares a large body and sends none of it: the answer must not wait for it.
        let req = format!("{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n");
        let (resp, closed) = http::raw(rc.addr, req.as_bytes());
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(status_of(&resp), 405, "{method}: {text}");
        assert!(text.contains("UNSUPPORTED"), "{text}");
        assert!(closed, "{method}: an unread body means the connection ends");
    }
}

#[test]
fn keep_alive_pipelining_and_close() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    // Pipelined: three requests in one write, answered in order on one connection.
    let mut s = http::connect(rc.addr);
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nHEAD /v2/ HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(http::read_response(&mut r, false).unwrap().status, 200);
    assert_eq!(http::read_response(&mut r, false).unwrap().status, 404);
    let head = http::read_response(&mut r, true).unwrap();
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2"))
    );
    // Still open: one more.
    http::send(&mut s, rc.addr, "GET", "/v2/", &[], b"");
    assert_eq!(http::read_response(&mut r, false).unwrap().status, 200);

    // HTTP/1.0 keep-alive (as ab uses it): the answer says keep-alive and the connection stays.
    let mut s = http::connect(rc.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        s.write_all(b"GET /v2/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap();
        let resp = http::read_response(&mut r, false).unwrap();
        assert_eq!(
            (resp.status, resp.header("connection")),
            (200, Some("keep-alive"))
        );
    }
    // HTTP/1.0 without keep-alive, and 1.1 with Connection: close: answered, then closed.
    for req in [
        "GET /v2/ HTTP/1.0\r\n\r\n",
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let (resp, closed) = http::raw(rc.addr, req.as_bytes());
        assert_eq!(status_of(&resp), 200, "{req:?}");
        assert!(closed, "{req:?}");
    }
}

#[test]
fn invalid_names_tags_and_digests_get_oci_errors() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    let cases = [
        ("/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a/../b/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a%2fb/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a/manifests/-x", 400, "TAG_INVALID"),
        ("/v2/a/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/a/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/a/referrers/latest", 400, "DIGEST_INVALID"),
        ("/v2/A/referrers/latest", 400, "NAME_INVALID"),
        // The referrers API's filter must be a media type (tests/referrers.rs serves it).
        (
            "/v2/a/referrers/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855?artifactType=nope",
            400,
            "BAD_REQUEST",
        ),
    ];
    for (path, status, code) in cases {
        let r = http::get(rc.addr, path);
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_string()),
            "{path}"
        );
    }
    assert_eq!(up.count("GET /v2/a"), 0, "nothing invalid reaches upstream");
    assert_eq!(
        up.count("HEAD /v2/a"),
        0,
        "nothing invalid reaches upstream"
    );
}

#[test]
fn a_target_not_ascii_after_v2_is_no_route_and_breaks_nothing() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    for (target, want) in [
        (&b"/v2\xc3\xa9"[..], 404),
        (b"/v2\xc3\xa9/a/manifests/latest", 404),
        (b"/v2_a/b/manifests/latest", 404),
        // Not UTF-8 at all: httparse refuses the head.
        (b"/v2\xff", 400),
    ] {
        let what = String::from_utf8_lossy(target).into_owned();
        // Several times: every worker must see one and live.
        for _ in 0..8 {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(target);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            let (resp, _) = http::raw(rc.addr, &req);
            assert_eq!(
                status_of(&resp),
                want,
                "{what}: {}",
                String::from_utf8_lossy(&resp)
            );
            assert_eq!(http::get(rc.addr, "/v2/").status, 200, "after {what}");
        }
    }
    assert_eq!(
        up.count("GET") + up.count("HEAD"),
        0,
        "nothing reached upstream"
    );
}

#[test]
fn slow_heads_and_idle_connections_are_closed() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {limits: {head_timeout: 300ms, keepalive_idle: 300ms}}\n",
    );
    // Slowloris: a head that never completes is closed at the head deadline.
    let (resp, closed) = http::raw(rc.addr, b"GET /v2/ HTTP/1.1\r\nHost: a\r\n");
    assert!(
        closed && resp.is_empty(),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // An idle keep-alive connection is closed after keepalive_idle.
    let (resp, closed) = http::raw(rc.addr, b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&resp), 200);
    assert!(closed, "idle keep-alive connection must be closed");
}

#[test]
fn long_heads_are_read_whole_up_to_the_limit_and_pipelined_bytes_after_them_kept() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    // A head is read into 4 KiB first and grows to the 32 KiB limit: one of ~20 KiB (each line
    // within the 8 KiB line limit) is answered, in one write and in pieces.
    let long = |lines: usize, each: usize| {
        let mut h = String::from("GET /v2/ HTTP/1.1\r\nHost: a\r\n");
        for i in 0..lines {
            h.push_str(&format!("X-{i}: {}\r\n", "v".repeat(each)));
        }
        h.push_str("\r\n");
        h
    };
    let head = long(5, 4000);
    let mut s = http::connect(rc.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for piece in head.as_bytes().chunks(1500) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(http::read_response(&mut r, false).unwrap().status, 200);

    // In one write, pipelined: the bytes past a long head are the next request.
    let two = format!("{head}GET /nope HTTP/1.1\r\nHost: a\r\n\r\n{head}");
    s.write_all(two.as_bytes()).unwrap();
    for want in [200, 404, 200] {
        assert_eq!(http::read_response(&mut r, false).unwrap().status, want);
    }

    // Past the limit (every line within its own): 431, then a close (not a reset: the rest of
    // the head, never parsed, is read and dropped while the connection lingers).
    let mut s = http::connect(rc.addr);
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(long(5, 7000).as_bytes()).unwrap();
    let mut resp = Vec::new();
    let ended = loop {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break true,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    assert_eq!(status_of(&resp), 431, "{}", String::from_utf8_lossy(&resp));
    assert!(ended, "closed, not reset, after a head past the limit");
    // A client that connects and closes without a byte costs nothing and breaks nothing.
    for _ in 0..50 {
        drop(http::connect(rc.addr));
    }
    assert_eq!(http::get(rc.addr, "/v2/").status, 200);
}

#[test]
fn a_refused_request_still_sending_its_body_reads_its_answer() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(&up.url(), "");
    // A push to a pull-through cache: the head declares a body and the client goes on sending
    // it. The answer comes without reading the body; the connection must then end with the
    // 405 readable, not reset by unread bytes (which would throw the answer away).
    for round in 0..5 {
        let mut s = http::connect(rc.addr);
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.set_write_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let body = vec![b'x'; 256 * 1024];
        let head = format!(
            "PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len() * 4
        );
        let _ = s.write_all(head.as_bytes());
        for _ in 0..4 {
            // Refused or reset mid-body is the server's choice; the answer is what counts.
            if s.write_all(&body).is_err() {
                break;
            }
        }
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        let err = loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break None,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        assert_eq!(
            status_of(&resp),
            405,
            "round {round}: {err:?} {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(
            err.is_none(),
            "round {round}: ended by {err:?}, not a close"
        );
    }
}

#[test]
fn a_lingering_connection_is_closed_within_its_bound() {
    let up = TestUpstream::start();
    let (rc, dbg) = Ringcache::start_with_debug(&up.url());
    // Refused, with a body declared and never sent, and the client keeps its end open: the
    // answer and our FIN come at once; the server lets the connection go after LINGER_TIME.
    let mut s = http::connect(rc.addr);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut resp).unwrap();
    assert_eq!(status_of(&resp), 405, "{}", String::from_utf8_lossy(&resp));
    let started = std::time::Instant::now();
    wait_metric(dbg, "ringcache_connections_open", |v| v == 0.0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "let go within its bound"
    );
    drop(s);
    let _ = rc;
}
