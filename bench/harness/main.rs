//! The side-by-side benchmark (issue 5): ringcache vs the reference registry in proxy mode vs
//! nginx (sendfile), on one machine over loopback, every scenario in one run, 3 repetitions,
//! median and range, every body's sha256 checked. Started by `bench/run.sh`, which installs
//! the peers and builds the release binary; it prints one table and writes JSON lines.
//!
//! Run directly: cargo bench --bench harness -- --bench [--reps 3] [--secs 4] [--out FILE]
//!   [--only a,b,c,d,e,f,t] [--quick]   (--quick: 256 MiB instead of 1 GiB, for a smoke run)
//!
//! Layout: `systems` starts and measures the systems under test, `images` makes and pushes
//! the content, `load` generates the load, `scenarios` runs (a)–(f), `tls` runs (t) (TLS, ringcache vs
//! nginx), `report` prints the table. Peers, ports and HTTP come from the integration tests' `tests/support`.

#[path = "../../tests/support/mod.rs"]
mod support;

mod images;
mod load;
mod report;
mod scenarios;
mod systems;
mod tls;

use std::path::PathBuf;

const MIB: u64 = 1 << 20;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// The command line.
pub struct Opts {
    reps: usize,
    secs: f64,
    out: PathBuf,
    /// The scenarios to run, by letter.
    only: String,
    /// The big blob's size (a, c).
    big: u64,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    Opts {
        reps: get("--reps").and_then(|v| v.parse().ok()).unwrap_or(3),
        secs: get("--secs").and_then(|v| v.parse().ok()).unwrap_or(4.0),
        out: get("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench/results.jsonl")),
        only: get("--only").unwrap_or_else(|| "abcdef".into()),
        big: if quick { 256 * MIB } else { 1024 * MIB },
    }
}

/// The work directory, removed at the end unless `BENCH_KEEP` is set.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs benches: nothing to do there
    }
    let o = opts();
    // 10,000 idle connections + 512 clients need descriptors.
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let bin =
        std::env::var("BENCH_RINGCACHE").unwrap_or_else(|_| "target/release/ringcache".into());
    let w = std::env::temp_dir().join(format!("ringcache-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(w.join("www")).unwrap();
    std::fs::create_dir_all(w.join("gen")).unwrap();
    let _cleanup = (std::env::var_os("BENCH_KEEP").is_none()).then(|| Cleanup(w.clone()));

    let s = systems::Systems::start(&w, &bin);
    eprintln!("ringcache bench: {} reps, work dir {}", o.reps, w.display());
    let mut bench = scenarios::Bench::new(&o, &s, w.join("gen"));
    bench.run();
    bench.res.write(&o.out, o.reps);
    // The origin's log is in memory (its data in its own temp dir): kept with the rest.
    if std::env::var_os("BENCH_KEEP").is_some() {
        let log = s.origin.proc.log.lock().unwrap().clone();
        let _ = std::fs::write(w.join("origin.log"), log);
    }
}
