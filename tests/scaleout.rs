//! Scaling out (issue 21): three ringcache nodes behind HAProxy (the shipped
//! `deploy/haproxy/haproxy.cfg`, node addresses rewritten), each pulling through a parent
//! ringcache whose upstream is the counting test origin, all on loopback. One upstream fetch
//! per digest per tier whatever node a client reaches; a node killed, drained or restarted;
//! tiers streaming while both fill; the PROXY protocol; `Cache-Status` on every answer.

mod support;

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::cluster::Haproxy;
use support::image::{self, Image};
use support::upstream::{Blob, TestUpstream};
use support::{eventually, http, Ringcache};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The parent answers tags from its cache this long: within a test, the origin is asked for
/// a tag once.
const PARENT: &str = "ringcache: {workers: 1, tags: {fresh_for: 10m}}\n";
const NODE: &str =
    "ringcache: {workers: 1, proxy_protocol: true, proxy_protocol_from: [127.0.0.1/32]}\n";
const WITHIN: Duration = Duration::from_secs(30);

/// A ringcache with its debug listener; on `root` when given (a restart keeps its store), on
/// `at` (its listener and debug addresses) when given.
fn ringcache(
    upstream: &str,
    extra: &str,
    root: &Path,
    at: Option<(SocketAddr, SocketAddr)>,
) -> (Ringcache, SocketAddr) {
    let (http_addr, dbg) = match at {
        Some((a, d)) => (a.to_string(), d.to_string()),
        None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
    };
    let env = [
        ("REGISTRY_HTTP_ADDR", http_addr.as_str()),
        ("REGISTRY_HTTP_DEBUG_ADDR", dbg.as_str()),
    ];
    let rc = Ringcache::start_env(upstream, extra, root, &env);
    let dbg = rc.debug_addr();
    (rc, dbg)
}

/// One response, its body hashed as it streams.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    node: String,
    cache: String,
    len: u64,
    hex: String,
    complete: bool,
}

fn fetch(addr: SocketAddr, path: &str, accept: Option<&str>) -> Got {
    let mut s = http::connect(addr);
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    http::send(&mut s, addr, "GET", path, &headers, b"");
    let mut r = BufReader::new(s);
    let failed = |status| Got {
        status,
        node: String::new(),
        cache: String::new(),
        len: 0,
        hex: String::new(),
        complete: false,
    };
    let head = match http::read_response(&mut r, true) {
        Ok(h) => h,
        Err(_) => return failed(0),
    };
    let want: u64 = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut got, mut buf) = (0u64, vec![0u8; 256 * 1024]);
    while got < want {
        let n = ((want - got) as usize).min(buf.len());
        match r.read(&mut buf[..n]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                got += n as u64;
            }
        }
    }
    Got {
        status: head.status,
        node: head.header("x-ringcache-node").unwrap_or("").to_string(),
        cache: head.header("cache-status").unwrap_or("").to_string(),
        len: got,
        hex: ringcache::digest::Digest::from_ring(&ctx.finish()).hex(),
        complete: got == want,
    }
}

/// What a client pulls: (path, Accept, sha256 hex, size).
fn paths(name: &str, tag: &str, img: &Image) -> Vec<(String, Option<&'static str>, String, u64)> {
    let mut out = vec![(
        format!("/v2/{name}/manifests/{tag}"),
        Some(OCI_MANIFEST),
        support::sha256_hex(&img.manifest),
        img.manifest.len() as u64,
    )];
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let hex = support::sha256_hex(b);
        out.push((
            format!("/v2/{name}/blobs/sha256:{hex}"),
            None,
            hex,
            b.len() as u64,
        ));
    }
    out
}

/// Fetch until a complete, verified body arrives (at most 8 tries, each on a new connection):
/// a body cut short (its node killed) is tried again; a complete body with the wrong digest
/// is corruption, and fails the test at once.
fn fetch_verified(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    hex: &str,
    size: u64,
) -> (Got, usize) {
    let mut last = None;
    for attempt in 1..=8 {
        let g = fetch(addr, path, accept);
        if g.status == 200 && g.complete {
            assert_eq!(
                (g.len, g.hex.as_str()),
                (size, hex),
                "corrupt body delivered for {path}: {g:?}"
            );
            return (g, attempt);
        }
        last = Some(g);
    }
    panic!("{path}: no complete answer in 8 tries; last {last:?}");
}

/// Every request line the origin saw, for `GET` of a digest (any repository).
fn origin_gets(up: &TestUpstream, hex: &str) -> usize {
    up.seen()
        .iter()
        .filter(|(l, _)| l.starts_with("GET ") && l.contains(hex))
        .count()
}

fn post_down(dbg: SocketAddr) {
    let r = http::request(
        dbg,
        "POST",
        "/debug/health/down",
        &[("X-Ringcache-Admin", "1")],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn three_nodes_behind_haproxy_one_origin_fetch_per_blob_through_kill_restart_and_drain() {
    let up = TestUpstream::start();
    let names = ["team/app", "team/db", "lib/web", "lib/cli"];
    let images: Vec<Image> = (0..4u64)
        .map(|i| {
            image::image(
                100 + i,
                &[1_500_000 + 250_000 * i as usize, 600_000, 90_000],
            )
        })
        .collect();
    for (name, img) in names.iter().zip(&images) {
        up.add_blob(img.config.clone(), Default::default());
        for l in &img.layers {
            up.add_blob(l.clone(), Default::default());
        }
        up.add_manifest(name, "v1", OCI_MANIFEST, img.manifest.clone());
    }
    // The drain's in-flight transfer: a blob the origin holds (after its first 256 KiB) until
    // the gate opens.
    let gated = up.add_blob_with(Blob {
        data: Arc::new(image::pseudo_random(7, 2 << 20)),
        gated: true,
        gate_at: 256 * 1024,
        ..Default::default()
    });

    let dir = tempfile::tempdir().unwrap();
    let (parent, _) = ringcache(&up.url(), PARENT, &dir.path().join("parent"), None);
    let mut nodes: Vec<(Ringcache, SocketAddr)> = (1..=3)
        .map(|i| {
            ringcache(
                &parent.url(),
                NODE,
                &dir.path().join(format!("node{i}")),
                None,
            )
        })
        .collect();
    let addrs: Vec<(SocketAddr, SocketAddr)> = nodes.iter().map(|(rc, d)| (rc.addr, *d)).collect();
    let lb = Haproxy::start(&addrs);
    let started = Instant::now();

    // 1. 32 concurrent clients over 4 cold images: each blob fetched from the origin once,
    // every body verified, one node (and one fill) per digest.
    let barrier = Arc::new(Barrier::new(32));
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (b, addr) = (barrier.clone(), lb.addr);
            let want = paths(names[c % 4], "v1", &images[c % 4]);
            std::thread::spawn(move || {
                b.wait();
                want.into_iter()
                    .map(|(p, a, hex, size)| {
                        let g = fetch_verified(addr, &p, a, &hex, size).0;
                        (
                            Item {
                                path: p,
                                accept: a,
                                hex,
                                size,
                            },
                            g,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_digest: HashMap<String, Vec<Got>> = HashMap::new();
    let mut items: HashMap<String, Item> = HashMap::new();
    for c in clients {
        for (item, g) in c.join().unwrap() {
            by_digest.entry(item.hex.clone()).or_default().push(g);
            items.insert(item.hex.clone(), item);
        }
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    for (hex, gots) in &by_digest {
        assert!(
            gots.iter().all(|g| g.cache.starts_with("ringcache; ")),
            "{gots:?}"
        );
        let nodes_seen: std::collections::BTreeSet<&str> =
            gots.iter().map(|g| g.node.as_str()).collect();
        assert_eq!(nodes_seen.len(), 1, "{hex} answered by {nodes_seen:?}");
        let stored = gots
            .iter()
            .filter(|g| g.cache == "ringcache; fwd=miss; stored")
            .count();
        assert_eq!(stored, 1, "{hex}: one fill at its node: {gots:?}");
        owner.insert(hex.clone(), gots[0].node.clone());
    }
    for img in &images {
        for b in std::iter::once(&img.config).chain(&img.layers) {
            assert_eq!(
                origin_gets(&up, &support::sha256_hex(b)),
                1,
                "one origin GET per blob"
            );
        }
    }
    let spread: std::collections::BTreeSet<&String> = owner.values().collect();
    eprintln!("cold pull: {:?}, digests on {spread:?}", started.elapsed());
    assert!(spread.len() >= 2, "16 digests on one node: {owner:?}");

    // 2. The same digest under another repository lands on the same node (a hit there, after
    // the parent confirms it in that repository).
    for (hex, node) in &owner {
        let item = &items[hex];
        if item.accept.is_some() {
            continue; // a manifest by tag: hashed on repository + tag
        }
        let path = format!("/v2/elsewhere/repo/blobs/sha256:{hex}");
        let (g, _) = fetch_verified(lb.addr, &path, None, hex, item.size);
        assert_eq!(&g.node, node, "{hex} under another name");
    }

    // 3. A node killed (SIGKILL) mid-run: its clients' retries are served by the others, the
    // origin is asked for nothing again (the parent has it all, or is filling it), no corrupt
    // body is delivered. In flight at the kill: 16 clients pulling the warm images, and 4
    // clients of cold blobs the origin sends slowly; the node killed is the one serving the
    // first of those (so it has a transfer in flight).
    let origin_before = up.seen().len();
    let slow: Vec<String> = (0..4u64)
        .map(|i| {
            up.add_blob_with(Blob {
                data: Arc::new(image::pseudo_random(50 + i, 4 << 20)),
                pace: Some(Duration::from_millis(15)),
                ..Default::default()
            })
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (addr, done, retried) = (lb.addr, done.clone(), retried.clone());
            let want: Vec<_> = (0..4)
                .flat_map(|i| paths(names[(c + i) % 4], "v1", &images[(c + i) % 4]))
                .collect();
            std::thread::spawn(move || {
                for _round in 0..3 {
                    for (p, a, hex, size) in &want {
                        let (_, tries) = fetch_verified(addr, p, *a, hex, *size);
                        retried.fetch_add(tries - 1, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let slow_clients: Vec<_> = slow
        .iter()
        .enumerate()
        .map(|(i, digest)| {
            let (addr, tx) = (lb.addr, tx.clone());
            let path = format!("/v2/team/app/blobs/{digest}");
            let hex = digest.trim_start_matches("sha256:").to_string();
            std::thread::spawn(move || {
                let first = fetch_reporting(addr, &path, |node| {
                    let _ = tx.send((i, node.to_string()));
                });
                let cut = !(first.status == 200 && first.complete);
                if !cut {
                    assert_eq!(first.hex, hex, "corrupt body delivered for {path}");
                    return (first.clone(), first, cut);
                }
                let (g, _) = fetch_verified(addr, &path, None, &hex, 4 << 20);
                (first, g, cut)
            })
        })
        .collect();
    drop(tx);
    eventually(WITHIN, "clients are under way", || {
        (done.load(Ordering::Relaxed) >= 60).then_some(())
    });
    let victim = loop {
        let (i, node) = rx.recv_timeout(WITHIN).expect("the slow blobs' heads");
        if i == 0 {
            break node;
        }
    };
    let k: usize = victim.trim_start_matches("node").parse().unwrap();
    nodes[k - 1].0.proc.signal(libc::SIGKILL);
    let at_kill = done.load(Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let slow_got: Vec<_> = slow_clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .collect();
    eprintln!(
        "{victim} killed after {at_kill} of 960 warm fetches; {} retries; slow blobs: {:?}",
        retried.load(Ordering::Relaxed),
        slow_got
            .iter()
            .map(|(f, g, cut)| (&f.node, &g.node, cut))
            .collect::<Vec<_>>()
    );
    let (first, retry, cut) = &slow_got[0];
    assert!(
        *cut,
        "the transfer in flight on {victim} was cut: {first:?}"
    );
    assert_ne!(retry.node, victim, "its retry went to another node");
    lb.wait_state("DOWN", &[&victim]);
    for (d, (_, g, _)) in slow.iter().zip(&slow_got) {
        assert_eq!(g.hex, d.trim_start_matches("sha256:"));
        assert_eq!(origin_gets(&up, &g.hex), 1, "one origin GET for {d}");
    }
    let origin_after = origin_before + slow.len();
    assert_eq!(
        up.seen().len(),
        origin_after,
        "the origin was asked again: {:?}",
        &up.seen()[origin_before..]
    );
    // The victim's digests are now answered by the others.
    for (hex, _) in owner.iter().filter(|(_, n)| **n == victim) {
        let g = again(lb.addr, &items[hex]);
        assert_ne!(g.node, victim);
    }

    // 4. The victim restarted on its store: HAProxy sends it its digests again, and they
    // are hits.
    let (rc, dbg) = (nodes[k - 1].0.addr, nodes[k - 1].1);
    let root = nodes[k - 1].0.root.clone();
    nodes[k - 1] = ringcache(&parent.url(), NODE, &root, Some((rc, dbg)));
    lb.wait_state("UP", &[&victim]);
    for (hex, _) in owner.iter().filter(|(_, n)| **n == victim) {
        let g = again(lb.addr, &items[hex]);
        assert_eq!(
            (g.node.as_str(), g.cache.as_str()),
            (victim.as_str(), "ringcache; hit"),
            "{hex}"
        );
    }
    assert_eq!(
        up.seen().len(),
        origin_after,
        "the origin was asked again after the restart"
    );

    // 5. A node drained with POST /debug/health/down: HAProxy sends it no new requests, and
    // the transfer it has in flight (held at the origin's gate) finishes, verified.
    let gated_hex = gated.trim_start_matches("sha256:").to_string();
    let mut s = http::connect(lb.addr);
    http::send(
        &mut s,
        lb.addr,
        "GET",
        &format!("/v2/team/app/blobs/{gated}"),
        &[],
        b"",
    );
    let mut r = BufReader::new(s);
    let head = http::read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    let drained = head.header("x-ringcache-node").unwrap().to_string();
    let i: usize = drained.trim_start_matches("node").parse().unwrap();
    post_down(nodes[i - 1].1);
    lb.wait_state("DOWN", &[&drained]);
    for (hex, _) in owner.iter().filter(|(_, n)| **n == drained) {
        let g = again(lb.addr, &items[hex]);
        assert_ne!(g.node, drained, "{hex} sent to the drained node");
    }
    up.open_gate();
    let mut body = vec![0u8; head.header("content-length").unwrap().parse().unwrap()];
    r.read_exact(&mut body).unwrap();
    assert_eq!(body.len(), 2 << 20, "the drained node's transfer finished");
    assert_eq!(support::sha256_hex(&body), gated_hex);
    assert_eq!(origin_gets(&up, &gated_hex), 1);

    // 6. Through HAProxy's PROXY v2, a node's access log names the client (here from
    // 127.0.0.9), not the balancer.
    let (owner_hex, node) = owner.iter().find(|(_, n)| **n != drained).unwrap();
    let path = &items[owner_hex].path;
    let mut s = connect_from("127.0.0.9", lb.addr);
    http::send(
        &mut s,
        lb.addr,
        "GET",
        path,
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    let resp = http::read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(
        (resp.status, resp.header("x-ringcache-node")),
        (200, Some(node.as_str()))
    );
    let n: usize = node.trim_start_matches("node").parse().unwrap();
    nodes[n - 1].0.proc.wait_log("peer=127.0.0.9:", WITHIN);
    eprintln!("whole test: {:?}", started.elapsed());
    let _ = &lb.proc;
}

/// Like [`fetch`], telling `on_head` which node answers as soon as the head arrives.
fn fetch_reporting(addr: SocketAddr, path: &str, on_head: impl FnOnce(&str)) -> Got {
    let mut s = http::connect(addr);
    http::send(&mut s, addr, "GET", path, &[], b"");
    let mut r = BufReader::new(s);
    let Ok(head) = http::read_response(&mut r, true) else {
        on_head("");
        return fetch(addr, path, None);
    };
    let node = head.header("x-ringcache-node").unwrap_or("").to_string();
    on_head(&node);
    let want: u64 = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut got, mut buf) = (0u64, vec![0u8; 64 * 1024]);
    while got < want {
        let n = ((want - got) as usize).min(buf.len());
        match r.read(&mut buf[..n]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                got += n as u64;
            }
        }
    }
    Got {
        status: head.status,
        node,
        cache: head.header("cache-status").unwrap_or("").to_string(),
        len: got,
        hex: ringcache::digest::Digest::from_ring(&ctx.finish()).hex(),
        complete: got == want,
    }
}

/// One thing a client pulled, as it asked for it.
#[derive(Debug, Clone)]
struct Item {
    path: String,
    accept: Option<&'static str>,
    hex: String,
    size: u64,
}

/// The same request again, verified.
fn again(addr: SocketAddr, item: &Item) -> Got {
    fetch_verified(addr, &item.path, item.accept, &item.hex, item.size).0
}

/// A connection to `to` from the loopback address `from` (127.0.0.0/8 is all this host's).
fn connect_from(from: &str, to: SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect_timeout(&to.into(), http::TIMEOUT).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    s
}

fn send_raw(mut s: std::net::TcpStream, bytes: &[u8]) -> (Vec<u8>, bool) {
    use std::io::Write;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: each read waits at most 10 s, and a close or error ends it.
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&5000u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_names_the_client_only_from_allowed_peers() {
    let up = TestUpstream::start();
    let rc = Ringcache::start(
        &up.url(),
        "ringcache: {workers: 1, proxy_protocol: true, proxy_protocol_from: [127.0.0.1]}\n",
    );
    let get = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let ok = |out: &[u8]| out.starts_with(b"HTTP/1.1 200 ");
    // From an allowed peer: v2 and v1 headers name the client in the access log.
    let mut v2 = v2_header([192, 0, 2, 7], 4242);
    v2.extend_from_slice(get);
    let (out, _) = send_raw(connect_from("127.0.0.1", rc.addr), &v2);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out));
    rc.proc.wait_log("peer=192.0.2.7:4242", WITHIN);
    let mut v1 = b"PROXY TCP6 2001:db8::9 ::1 5555 5000\r\n".to_vec();
    v1.extend_from_slice(get);
    let (out, _) = send_raw(connect_from("127.0.0.1", rc.addr), &v1);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out));
    rc.proc.wait_log("peer=[2001:db8::9]:5555", WITHIN);
    // A LOCAL header (a balancer's own check): the peer stands.
    let mut local = v2_header([0; 4], 0);
    local[12] = 0x20;
    local[15] = 0;
    local.truncate(16);
    local.extend_from_slice(get);
    let (out, _) = send_raw(connect_from("127.0.0.1", rc.addr), &local);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out));
    // From an allowed peer, anything but a PROXY header: closed, unanswered.
    let (out, closed) = send_raw(connect_from("127.0.0.1", rc.addr), get);
    assert!(
        out.is_empty() && closed,
        "{}",
        String::from_utf8_lossy(&out)
    );
    rc.proc.wait_log("invalid PROXY protocol header", WITHIN);
    // From a peer not allowed: a PROXY header (either version) is a bad request; plain
    // HTTP is served, and logged with the real peer.
    for header in [v1.clone(), v2.clone()] {
        let (out, closed) = send_raw(connect_from("127.0.0.2", rc.addr), &header);
        assert!(
            out.starts_with(b"HTTP/1.1 400 ") && closed,
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    let (out, _) = send_raw(connect_from("127.0.0.2", rc.addr), get);
    assert!(ok(&out));
    rc.proc.wait_log("peer=127.0.0.2:", WITHIN);
    // Without proxy_protocol, a PROXY header is a bad request from anyone.
    let plain = Ringcache::start(&up.url(), "ringcache: {workers: 1}\n");
    for header in [v1, v2] {
        let (out, _) = send_raw(connect_from("127.0.0.1", plain.addr), &header);
        assert!(
            out.starts_with(b"HTTP/1.1 400 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn a_node_streams_through_its_parent_while_both_fill_and_the_parent_coalesces_nodes() {
    let up = TestUpstream::start();
    let size = 4 << 20;
    let digest = up.add_blob_with(Blob {
        data: Arc::new(image::pseudo_random(9, size)),
        gated: true,
        gate_at: 1 << 20,
        ..Default::default()
    });
    let hex = digest.trim_start_matches("sha256:").to_string();
    let dir = tempfile::tempdir().unwrap();
    let (parent, _) = ringcache(&up.url(), PARENT, &dir.path().join("parent"), None);
    let plain = "ringcache: {workers: 1}\n";
    let (a, _) = ringcache(&parent.url(), plain, &dir.path().join("a"), None);
    let (b, _) = ringcache(&parent.url(), plain, &dir.path().join("b"), None);
    // Two nodes miss the same digest (under two repository names) at once.
    let clients: Vec<_> = [(a.addr, "team/app"), (b.addr, "other/name")]
        .into_iter()
        .map(|(addr, name)| {
            let mut s = http::connect(addr);
            http::send(
                &mut s,
                addr,
                "GET",
                &format!("/v2/{name}/blobs/{digest}"),
                &[],
                b"",
            );
            let mut r = BufReader::new(s);
            let head = http::read_response(&mut r, true).unwrap();
            (head, r)
        })
        .collect();
    // The parent's one fill took both nodes' fills: one started, one joined, one origin GET.
    parent.proc.wait_log("fill started", WITHIN);
    parent.proc.wait_log("fill joined", WITHIN);
    let mut readers = Vec::new();
    for (head, mut r) in clients {
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("cache-status"),
            Some("ringcache; fwd=miss; stored")
        );
        // The first 512 KiB arrive while the origin still holds the rest: streamed through
        // both tiers, each filling.
        let mut first = vec![0u8; 512 * 1024];
        r.read_exact(&mut first).unwrap();
        readers.push((first, r));
    }
    assert_eq!(origin_gets(&up, &hex), 1);
    up.open_gate();
    for (mut body, mut r) in readers {
        let at = body.len();
        body.resize(size, 0);
        r.read_exact(&mut body[at..]).unwrap();
        assert_eq!(support::sha256_hex(&body), hex);
    }
    assert_eq!(origin_gets(&up, &hex), 1, "one origin GET for two nodes");
    // Warm at the nodes: hits.
    let g = fetch(a.addr, &format!("/v2/team/app/blobs/{digest}"), None);
    assert_eq!(
        (g.status, g.cache.as_str(), g.hex.as_str()),
        (200, "ringcache; hit", hex.as_str())
    );
}

#[test]
fn haproxy_config_as_shipped_is_valid() {
    support::require("haproxy");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join(support::cluster::SHIPPED);
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    for needed in [
        "hash-type consistent",
        "balance hash var(txn.cache_key)",
        "http-check send meth GET uri /debug/health",
        "retries 3",
        "option redispatch",
        "send-proxy-v2",
    ] {
        assert!(text.contains(needed), "{needed} missing");
    }
}
