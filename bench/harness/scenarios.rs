//! The scenarios, each timed per system and repetition, the systems in a rotated order:
//! (a) a cold big blob, one client; (b) a cold fan-out; (c) a warm big blob; (d) warm small
//! objects under keep-alive load; (t) TLS, ringcache vs nginx (`tls.rs`); (f) skopeo copying a real image; (e) memory under 512
//! followers and 10,000 idle connections (last: what it allocates would stay in the other
//! scenarios' peak RSS).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::images::{self, Image};
use crate::load::{ab, fan_out, load, Load};
use crate::report::Results;
use crate::support::{self, http, stream};
use crate::systems::{wait_idle, System, Systems};
use crate::{Opts, MANIFEST_ACCEPT, MIB};

/// A run: its options, the systems, where layers are written, and what was measured.
pub struct Bench<'a> {
    pub o: &'a Opts,
    pub s: &'a Systems,
    /// Layer files (pushed to the origin, hard-linked for nginx).
    pub gen: PathBuf,
    pub res: Results,
    seed: u64,
}

impl Bench<'_> {
    pub fn new<'a>(o: &'a Opts, s: &'a Systems, gen: PathBuf) -> Bench<'a> {
        Bench {
            o,
            s,
            gen,
            res: Results::default(),
            seed: 1,
        }
    }

    /// Run the scenarios that `--only` names, in their fixed order.
    pub fn run(&mut self) {
        let only = self.o.only.clone();
        if only.contains('a') {
            self.cold_big();
        }
        if only.contains('b') {
            self.cold_fan_out();
        }
        if only.contains('c') || only.contains('d') || only.contains('t') {
            let (big, small) = self.warm_content();
            if only.contains('c') {
                self.warm_big(&big);
            }
            if only.contains('d') {
                self.warm_small(&small);
            }
            if only.contains('t') {
                self.tls(&big, &small);
            }
        }
        if only.contains('f')
            && std::process::Command::new("skopeo")
                .arg("--version")
                .output()
                .is_ok()
        {
            self.skopeo();
        }
        if only.contains('e') {
            self.memory();
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    fn push(&mut self, name: &str, tag: &str, payloads: &[u64]) -> Image {
        let seed = self.next_seed();
        images::push_image(self.s.origin.addr, &self.gen, name, tag, payloads, seed)
    }

    /// A fresh image for one system and repetition of a cold scenario (nothing accidentally
    /// warm).
    fn fresh(&mut self, what: &str, sys: &str, rep: usize, payloads: &[u64]) -> Image {
        self.push(&format!("bench/{what}-{sys}-{rep}"), "v1", payloads)
    }

    /// nginx serves the same bytes under the same URLs (the files the origin was pushed).
    fn publish(&self, path: &str, file: &Path) {
        let dst = self.s.nginx.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::hard_link(file, &dst)
            .or_else(|_| std::fs::copy(file, &dst).map(|_| ()))
            .unwrap();
    }

    /// The request-count metrics of a load run.
    fn add_load(&mut self, label: &str, sys: &'static str, rep: usize, r: &Load) {
        self.res.add(label, "req/s", sys, rep, r.rps);
        self.res.add(label, "p50 ms", sys, rep, r.p50_ms);
        self.res.add(label, "p99 ms", sys, rep, r.p99_ms);
        self.res.add(label, "errors", sys, rep, r.errors as f64);
    }

    /// After a cold pull: wait until the system has the blob on disk (the reference stores in
    /// the background, with its own upstream GET), so its fetches are all counted and its
    /// writes do not overlap the next measurement; then what the origin served.
    fn add_upstream(&mut self, label: &str, sys: &System, rep: usize, l: &images::Layer) {
        sys.wait_stored(&l.digest);
        let (gets, bytes) = self.s.origin_gets(&l.digest);
        self.res
            .add(label, "upstream GETs", sys.name, rep, gets as f64);
        let ratio = bytes as f64 / l.size as f64;
        self.res
            .add(label, "upstream bytes / size", sys.name, rep, ratio);
    }

    /// (a) cold big blob, one client
    fn cold_big(&mut self) {
        let label = format!("(a) cold {} MiB, 1 client", self.o.big / MIB);
        for rep in 0..self.o.reps {
            for sys in order(&self.s.proxies(), rep) {
                let img = self.fresh("cold", sys.name, rep, &[self.o.big - 2048]);
                let l = &img.layers[0];
                sys.ready();
                let r = get_verified(sys.addr, &blob_path(&img, l), &l.digest, l.size);
                self.res
                    .add(&label, "TTFB s", sys.name, rep, r.ttfb.as_secs_f64());
                self.res
                    .add(&label, "total s", sys.name, rep, r.total.as_secs_f64());
                self.add_upstream(&label, sys, rep, l);
                self.res
                    .add(&label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    /// (b) cold fan-out: 32 clients released together on one fresh 256 MiB blob
    fn cold_fan_out(&mut self) {
        let label = "(b) cold fan-out, 32 clients, 256 MiB";
        for rep in 0..self.o.reps {
            for sys in order(&self.s.proxies(), rep) {
                let img = self.fresh("fan", sys.name, rep, &[256 * MIB - 2048]);
                let l = &img.layers[0];
                sys.ready();
                let (wall, ttfbs) = fan_out(sys.addr, &blob_path(&img, l), &l.digest, l.size, 32);
                self.res.add(label, "wall s", sys.name, rep, wall);
                self.res.add(label, "slowest TTFB s", sys.name, rep, ttfbs);
                self.add_upstream(label, sys, rep, l);
                self.res
                    .add(label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    /// Warm content for (c) and (d): one big image, one 1 KiB image; primed through both
    /// proxies (untimed: the fill, then one hit, so that "warm" means cached and recently
    /// read for every system — ringcache's fills write around the page cache), published for
    /// nginx. Returns (big, small).
    fn warm_content(&mut self) -> (Image, Image) {
        let big = self.push("bench/warm-big", "v1", &[self.o.big - 2048]);
        let mut small = self.push("bench/warm-small", "latest", &[1024]);
        // (d)'s blob is a raw 1 KiB blob in the same repository (a layer cannot be that small).
        let seed = self.next_seed();
        small.layers[0] =
            images::push_raw_blob(self.s.origin.addr, &self.gen, &small.name, 1024, seed);
        for img in [&big, &small] {
            let l = &img.layers[0];
            let path = blob_path(img, l);
            self.publish(&path, &l.path);
            for sys in self.s.proxies() {
                get_verified(sys.addr, &path, &l.digest, l.size);
                sys.wait_stored(&l.digest);
                get_verified(sys.addr, &path, &l.digest, l.size);
                let r = get_manifest(sys.addr, &format!("/v2/{}/manifests/{}", img.name, img.tag));
                assert_eq!(r.status, 200);
                assert_eq!(
                    format!("sha256:{}", support::sha256_hex(&r.body)),
                    img.manifest
                );
            }
            // The manifest bytes as the origin has them.
            let by_digest = format!("/v2/{}/manifests/{}", img.name, img.manifest);
            let m = get_manifest(self.s.origin.addr, &by_digest);
            assert_eq!(
                format!("sha256:{}", support::sha256_hex(&m.body)),
                img.manifest
            );
            let mpath = self
                .gen
                .join(format!("m-{}.json", img.name.replace('/', "_")));
            std::fs::write(&mpath, &m.body).unwrap();
            self.publish(&by_digest, &mpath);
            self.publish(&format!("/v2/{}/manifests/{}", img.name, img.tag), &mpath);
        }
        // nginx must serve the very same bytes.
        let l = &big.layers[0];
        get_verified(self.s.nginx.addr, &blob_path(&big, l), &l.digest, l.size);
        (big, small)
    }

    /// (c) warm big blob, 1 and 4 clients: GB/s
    fn warm_big(&mut self, big: &Image) {
        let l = &big.layers[0];
        let path = blob_path(big, l);
        for clients in [1usize, 4] {
            let label = format!(
                "(c) warm {} MiB, {clients} client{}",
                self.o.big / MIB,
                if clients > 1 { "s" } else { "" }
            );
            for rep in 0..self.o.reps {
                for sys in order(&self.s.all(), rep) {
                    sys.ready();
                    let t = Instant::now();
                    let hs: Vec<_> = (0..clients)
                        .map(|_| {
                            let (addr, path, d, n) =
                                (sys.addr, path.clone(), l.digest.clone(), l.size);
                            std::thread::spawn(move || get_verified(addr, &path, &d, n))
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                    let secs = t.elapsed().as_secs_f64();
                    let gbps = (l.size * clients as u64) as f64 / secs / 1e9;
                    self.res.add(&label, "GB/s", sys.name, rep, gbps);
                    self.res
                        .add(&label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                }
            }
        }
    }

    /// (d) warm small objects, 64 keep-alive connections
    fn warm_small(&mut self, small: &Image) {
        let l = &small.layers[0];
        let blob = blob_path(small, l);
        let by_digest = format!("/v2/{}/manifests/{}", small.name, small.manifest);
        let by_tag = format!("/v2/{}/manifests/{}", small.name, small.tag);
        let blob_body = (l.size, l.digest.as_str());
        let manifest_body = (small.manifest_len, small.manifest.as_str());
        // (label, method, path, HTTP/1.0, (length, digest) of the body)
        let cases: [(&str, &str, &str, bool, (u64, &str)); 5] = [
            ("(d) 1 KiB blob GET", "GET", &blob, false, blob_body),
            (
                "(d) manifest GET by digest",
                "GET",
                &by_digest,
                false,
                manifest_body,
            ),
            (
                "(d) manifest GET by tag",
                "GET",
                &by_tag,
                false,
                manifest_body,
            ),
            (
                "(d) manifest HEAD by tag",
                "HEAD",
                &by_tag,
                false,
                (small.manifest_len, ""),
            ),
            (
                "(d) 1 KiB blob GET, HTTP/1.0 keep-alive",
                "GET",
                &blob,
                true,
                blob_body,
            ),
        ];
        let tag_needle = format!("/manifests/{}", small.tag);
        for (label, method, path, http10, body) in cases {
            for rep in 0..self.o.reps {
                for sys in order(&self.s.all(), rep) {
                    let by_tag = label.contains("by tag") && sys.name != "nginx";
                    if by_tag {
                        // Untimed: resolve the tag now, so the run is inside the freshness
                        // window (it lapses between repetitions: that revalidation is not
                        // what this row measures).
                        assert_eq!(get_manifest(sys.addr, path).status, 200);
                    }
                    sys.ready();
                    let before = self.s.origin_requests(&tag_needle);
                    let r = load(sys.addr, method, path, 64, self.o.secs, http10, body);
                    self.add_load(label, sys.name, rep, &r);
                    self.res
                        .add(label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                    if by_tag {
                        let after = self.s.origin_requests(&tag_needle);
                        let n = (after - before) as f64;
                        self.res.add(label, "upstream requests", sys.name, rep, n);
                    }
                }
            }
        }
        let label = "(d) 1 KiB blob, ab -k -c 64 (HTTP/1.0)";
        for rep in 0..self.o.reps {
            for sys in order(&self.s.all(), rep) {
                wait_idle();
                if let Some(r) = ab(sys.addr, &blob, self.o.secs, l.size) {
                    self.add_load(label, sys.name, rep, &r);
                }
            }
        }
    }

    /// (f) a real client: skopeo copy of a 5-layer image, cold then warm
    fn skopeo(&mut self) {
        let payloads = [MIB, 4 * MIB, 16 * MIB, 256 * 1024, 64 * 1024];
        for rep in 0..self.o.reps {
            for sys in order(&self.s.proxies(), rep) {
                let img = self.fresh("skopeo", sys.name, rep, &payloads);
                for (i, phase) in ["cold", "warm"].iter().enumerate() {
                    sys.ready();
                    let dst = self.gen.join(format!("skopeo-{}-{rep}-{i}", sys.name));
                    let image = format!("{}:{}", img.name, img.tag);
                    let secs = support::skopeo_copy(sys.addr, &image, &dst, None).as_secs_f64();
                    // The layers landed whole: skopeo checks every digest; check the files too.
                    for l in &img.layers {
                        let f = dst.join("blobs/sha256").join(&l.digest[7..]);
                        assert_eq!(std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0), l.size);
                    }
                    let label = format!("(f) skopeo copy, 5 layers (~21 MiB), {phase}");
                    self.res.add(&label, "s", sys.name, rep, secs);
                    self.res
                        .add(&label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                    let _ = std::fs::remove_dir_all(&dst);
                }
                for l in &img.layers {
                    let _ = std::fs::remove_file(&l.path);
                }
            }
        }
    }

    /// (e) memory: 512 followers of one cold blob + 10,000 idle connections
    fn memory(&mut self) {
        let label = "(e) 512 followers of a cold 16 MiB blob + 10,000 idle conns";
        for rep in 0..self.o.reps {
            for sys in order(&self.s.proxies(), rep) {
                let img = self.fresh("mem", sys.name, rep, &[16 * MIB - 2048]);
                let l = &img.layers[0];
                sys.ready();
                let idle: Vec<TcpStream> = (0..10_000)
                    .filter_map(|_| TcpStream::connect(sys.addr).ok())
                    .collect();
                let (wall, _) = fan_out(sys.addr, &blob_path(&img, l), &l.digest, l.size, 512);
                self.res
                    .add(label, "idle conns held", sys.name, rep, idle.len() as f64);
                self.res.add(label, "wall s", sys.name, rep, wall);
                self.res
                    .add(label, "peak RSS MiB", sys.name, rep, sys.hwm_mib());
                drop(idle);
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }
}

/// The systems in a different order each repetition (rotated), so that none always runs
/// right after another's writes or warm-up.
pub(crate) fn order<T: Copy>(all: &[T], rep: usize) -> Vec<T> {
    let mut v = all.to_vec();
    v.rotate_left(rep % all.len());
    v
}

pub(crate) fn blob_path(img: &Image, l: &images::Layer) -> String {
    format!("/v2/{}/blobs/{}", img.name, l.digest)
}

/// GET a blob, streamed, and check it is whole and hashes to its digest.
fn get_verified(addr: SocketAddr, path: &str, digest: &str, size: u64) -> stream::Streamed {
    let r = stream::request(addr, "GET", path, &[], None, Duration::from_secs(120));
    assert_eq!(r.status, 200, "GET {path} on {addr}");
    assert_eq!(r.body_len, size, "GET {path} on {addr}: length");
    assert_eq!(r.digest, digest, "GET {path} on {addr}: sha256");
    r
}

/// GET a manifest, as clients ask for one.
fn get_manifest(addr: SocketAddr, path: &str) -> http::Resp {
    http::request(addr, "GET", path, &[("Accept", MANIFEST_ACCEPT)], b"")
}
