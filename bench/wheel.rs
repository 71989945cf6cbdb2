//! Timing-wheel micro-benchmark: insert, advance (with nothing due), expire, and cancel at
//! 10^3 .. 10^6 entries, deadlines spread over a 7-day TTL at 1 s ticks.
//! Run: cargo bench --bench wheel

use std::hint::black_box;
use std::time::Instant;

use ringcache::wheel::Wheel;

fn ns_per(n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    const TTL: u64 = 7 * 86_400;
    println!(
        "{:>9} {:>12} {:>16} {:>14} {:>12}",
        "entries", "insert ns", "advance 1s ns", "expire ns/key", "cancel ns"
    );
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &[1_000, 10_000, 100_000, 1_000_000]
    } else {
        &[1_000]
    };
    for &n in sizes {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let deadlines: Vec<u64> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                1 + seed % TTL
            })
            .collect();
        let mut w = Wheel::new(0);
        let mut ids = Vec::with_capacity(n);
        let insert = ns_per(n, || {
            for (i, &d) in deadlines.iter().enumerate() {
                ids.push(w.insert(i, d));
            }
        });
        // One tick with (almost) nothing due: the steady-state cost of the expiry driver.
        let advance = ns_per(1, || {
            black_box(w.advance(1));
        });
        // Everything expires: cost per fired key (cascades included).
        let expire = ns_per(n, || {
            black_box(w.advance(TTL + 1));
        });
        let mut w2 = Wheel::new(0);
        let ids2: Vec<_> = deadlines
            .iter()
            .enumerate()
            .map(|(i, &d)| w2.insert(i, d))
            .collect();
        let cancel = ns_per(n, || {
            for id in ids2 {
                black_box(w2.cancel(id));
            }
        });
        println!("{n:>9} {insert:>12.1} {advance:>16.1} {expire:>14.1} {cancel:>12.1}");
    }
}
