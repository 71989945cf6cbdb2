//! Single flight: many clients on one cold blob, spread over two workers, make exactly one
//! upstream GET, and every one of them gets the right bytes.

mod support;

use std::sync::{Arc, Barrier};

use std::time::Duration;

use support::upstream::{Blob, TestUpstream};
use support::{http, Ringcache};

const CLIENTS: usize = 32;

#[test]
fn thirty_two_clients_one_cold_64mib_blob_one_upstream_get() {
    let up = TestUpstream::start();
    // Gated: upstream sends the head at once but holds the body until every client has
    // joined the fill, so all 32 are followers of one fill in flight.
    let digest = up.add_blob_with(Blob {
        generated: Some((42, 64 * 1024 * 1024)),
        gated: true,
        ..Default::default()
    });
    let rc = Ringcache::start(&up.url(), "ringcache: {workers: 2}\n");
    let path = format!("/v2/big/blob/blobs/{digest}");

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (b, p, addr) = (barrier.clone(), path.clone(), rc.addr);
            std::thread::spawn(move || {
                b.wait();
                http::get_hashed(addr, &p)
            })
        })
        .collect();
    // Events, not sleeps: one "started" and 31 "joined" log lines, then release the body.
    rc.proc.wait_log("fill started", Duration::from_secs(20));
    rc.proc
        .wait_count(&["fill joined"], CLIENTS - 1, Duration::from_secs(20));
    up.open_gate();
    let want = digest.trim_start_matches("sha256:").to_string();
    for c in clients {
        let (status, len, hex, complete) = c.join().unwrap();
        if !complete {
            // The cut's cause is in the server's log.
            let l = rc.proc.log.lock().unwrap().clone();
            for line in l.lines().filter(|l| !l.contains("fill joined")) {
                eprintln!("LOG {line}");
            }
        }
        assert_eq!((status, len, complete), (200, 64 * 1024 * 1024, true));
        assert_eq!(hex, want);
    }
    assert_eq!(
        up.count(&format!("GET /v2/big/blob/blobs/{digest}")),
        1,
        "exactly one upstream GET"
    );
    // Bounded memory: 32 followers of a 64 MiB blob cost one read buffer each, never a copy
    // of the blob (holding it once would already pass 64 MiB).
    let peak = rc.proc.peak_rss();
    eprintln!("ringcache peak RSS: {} KiB", peak >> 10);
    assert!(
        peak < 48 * 1024 * 1024,
        "peak RSS {} MiB with 32 followers of a 64 MiB blob",
        peak >> 20
    );
    // Both workers served followers.
    for w in ["worker=0", "worker=1"] {
        assert!(rc.proc.count_log(&["fill ", w]) > 0, "no follower on {w}");
    }
}
