//! An upstream's pull budget (data path step 4, off the hit path): Docker Hub tells every
//! anonymous or free-plan client how many manifest GETs it has left in its window, on each
//! manifest GET and HEAD (HEADs do not spend it):
//!
//! ```text
//! ratelimit-limit: 100;w=21600
//! ratelimit-remaining: 76;w=21600
//! ```
//!
//! (the count, then `;w=` the window in seconds; the IETF RateLimit draft's older header
//! fields have the same shape). [`note`] reads them from every response of the upstream's own
//! origin (never a redirect target's: a CDN's numbers are not the registry's budget) into
//! [`Budget`]: per-upstream atomics shared by every worker, written only when an upstream
//! answers and read at scrape time (`ringcache_upstream_ratelimit_*{upstream}`), with the
//! 429s counted beside them (`ringcache_upstream_429_total{upstream}`).
//!
//! **Stretching.** When the remaining share of the budget falls below
//! `ringcache.ratelimit.stretch_below` (default 0.1), the upstream's tag freshness window is
//! stretched to `ringcache.ratelimit.stretch_to` (default 1h): cached tags are served that long
//! without asking upstream, rather than spending the last pulls on revalidations (a HEAD is
//! free on Docker Hub, but a changed tag is then fetched with a counted GET). The stretch is
//! a per-upstream atomic in [`crate::live::Reloadable`] that `fresh_for(u)` takes the larger
//! of: the hit path reads one more atomic, nothing else. It is logged once when it starts and
//! once when it ends; it ends on the first answer that reports the budget recovered (the
//! stretched window itself makes the next revalidation, and any other request to that
//! upstream, a blob or another tag, reports the budget too). An upstream that stops sending
//! the fields keeps the last values: Docker Hub sends them on manifest requests only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::live::Reloadable;

/// Fractions (`stretch_below`) are kept in millionths: atomics, and an exact comparison.
pub const PPM: u64 = 1_000_000;
/// `ringcache.ratelimit.stretch_below` by default: a tenth of the budget left.
pub const STRETCH_BELOW_DEFAULT_PPM: u64 = PPM / 10;
/// `ringcache.ratelimit.stretch_to` by default.
pub const STRETCH_TO_DEFAULT: std::time::Duration = std::time::Duration::from_secs(3600);

/// One rate-limit header field's value: the count, and the window (`w=`, seconds) if given.
/// `None` for anything else. Pure, never panics (a property test feeds it anything).
///
/// Accepted: `100`, `100;w=21600`, ` 76 ; w=21600 `, `100;w=21600;comment="x"`, and a list
/// `100, 100;w=21600` (the IETF draft's "quota policies": the first item is the one in force,
/// its window taken from the first item that names one).
pub fn parse(value: &str) -> Option<(u64, Option<u64>)> {
    let mut items = value.split(',');
    let first = items.next()?;
    let count = first.split(';').next()?.trim();
    if count.is_empty() || count.len() > 20 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let count: u64 = count.parse().ok()?;
    // `w=<seconds>` among an item's parameters (after its count).
    let window_of = |item: &str| {
        item.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let digits = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
            if !k.trim().eq_ignore_ascii_case("w") || !digits {
                return None;
            }
            v.parse::<u64>().ok()
        })
    };
    let window = window_of(first).or_else(|| items.find_map(window_of));
    Some((count, window))
}

/// One upstream's budget as it last reported it, and its 429s. Shared by every worker (in
/// [`super::Health`]); written only when that upstream answers.
#[derive(Default)]
pub struct Budget {
    /// Set once the upstream has reported a budget: before that the gauges are not exported
    /// (an absent series is "unknown", a 0 would read as "spent").
    known: AtomicBool,
    limit: AtomicU64,
    remaining: AtomicU64,
    /// 0 when the upstream named no window.
    window_secs: AtomicU64,
    /// Answers with status 429 from the upstream's origin.
    too_many: AtomicU64,
    /// Whether the tag freshness is stretched now (the log lines mark the transitions).
    stretched: AtomicBool,
}

/// What one answer changed about the stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Stretched,
    Recovered,
}

/// A snapshot of a [`Budget`], for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub known: bool,
    pub limit: u64,
    pub remaining: u64,
    pub window_secs: u64,
    pub too_many: u64,
    pub stretched: bool,
}

/// Whether `remaining` of `limit` is under the share `below_ppm` (0 never is).
pub fn is_low(remaining: u64, limit: u64, below_ppm: u64) -> bool {
    limit > 0
        && below_ppm > 0
        && (remaining as u128) * (PPM as u128) < (below_ppm as u128) * (limit as u128)
}

impl Budget {
    /// Record one answer: its status and its two fields (as sent, if sent). Returns the turn
    /// of the stretch it caused, if any (exactly one caller sees each turn).
    pub fn observe(
        &self,
        status: u16,
        limit: Option<&str>,
        remaining: Option<&str>,
        below_ppm: u64,
    ) -> Option<Turn> {
        if status == 429 {
            self.too_many.fetch_add(1, Ordering::Relaxed);
        }
        let (limit, lw) = limit.and_then(parse)?;
        let (remaining, rw) = remaining.and_then(parse)?;
        self.limit.store(limit, Ordering::Relaxed);
        self.remaining.store(remaining, Ordering::Relaxed);
        self.window_secs
            .store(rw.or(lw).unwrap_or(0), Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
        let low = is_low(remaining, limit, below_ppm);
        match (low, self.stretched.swap(low, Ordering::AcqRel)) {
            (true, false) => Some(Turn::Stretched),
            (false, true) => Some(Turn::Recovered),
            _ => None,
        }
    }

    pub fn read(&self) -> Reading {
        Reading {
            known: self.known.load(Ordering::Acquire),
            limit: self.limit.load(Ordering::Relaxed),
            remaining: self.remaining.load(Ordering::Relaxed),
            window_secs: self.window_secs.load(Ordering::Relaxed),
            too_many: self.too_many.load(Ordering::Relaxed),
            stretched: self.stretched.load(Ordering::Relaxed),
        }
    }
}

/// Upstream `u` answered (from its own origin) with `status` and these `ratelimit-limit` and
/// `ratelimit-remaining` fields: record its budget, stretch or restore its tag freshness, log the turn.
pub fn note(
    budget: &Budget,
    live: &Reloadable,
    u: usize,
    upstream: &dyn std::fmt::Display,
    status: u16,
    (limit, remaining): (Option<&str>, Option<&str>),
) {
    let below = live.stretch_below_ppm.load(Ordering::Relaxed);
    let turn = budget.observe(status, limit, remaining, below);
    let Some(turn) = turn else { return };
    let r = budget.read();
    let Some(slot) = live.stretched_ms.get(u) else {
        return;
    };
    match turn {
        Turn::Stretched => {
            let to = live.stretch_to_ms.load(Ordering::Relaxed);
            slot.store(to, Ordering::Relaxed);
            tracing::warn!(
                %upstream,
                remaining = r.remaining,
                limit = r.limit,
                window_secs = r.window_secs,
                fresh_for_ms = to,
                "upstream pull budget nearly spent: serving cached tags longer (ringcache.ratelimit.stretch_to) until it recovers"
            );
        }
        Turn::Recovered => {
            slot.store(0, Ordering::Relaxed);
            tracing::info!(
                %upstream,
                remaining = r.remaining,
                limit = r.limit,
                "upstream pull budget recovered: tag freshness back to tags.fresh_for"
            );
        }
    }
}

/// The budget series, appended to `/metrics`: `names[u]` is upstream `u`'s `upstream` label.
/// The gauges only for upstreams that reported a budget; the 429 counter and the stretch flag
/// for every upstream (zeros included, for `rate` and alerts).
pub fn render(o: &mut String, names: &[String], readings: &[Reading]) {
    use std::fmt::Write;
    let gauges: [(&str, &str, fn(&Reading) -> u64); 3] = [
        (
            "ringcache_upstream_ratelimit_limit",
            "The upstream's pull budget per window, as it last reported it (ratelimit-limit).",
            |r| r.limit,
        ),
        (
            "ringcache_upstream_ratelimit_remaining",
            "Pulls left in the upstream's window, as it last reported it (ratelimit-remaining).",
            |r| r.remaining,
        ),
        (
            "ringcache_upstream_ratelimit_window_seconds",
            "The upstream's rate-limit window (w=), seconds.",
            |r| r.window_secs,
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (up, r) in names.iter().zip(readings) {
            if r.known {
                let _ = writeln!(o, "{name}{{upstream=\"{up}\"}} {}", f(r));
            }
        }
    }
    let _ = writeln!(o, "# HELP ringcache_upstream_429_total Answers 429 Too Many Requests from the upstream.\n# TYPE ringcache_upstream_429_total counter");
    for (up, r) in names.iter().zip(readings) {
        let _ = writeln!(
            o,
            "ringcache_upstream_429_total{{upstream=\"{up}\"}} {}",
            r.too_many
        );
    }
    let _ = writeln!(o, "# HELP ringcache_upstream_ratelimit_stretched 1 while the upstream's tag freshness is stretched (its budget is below ringcache.ratelimit.stretch_below).\n# TYPE ringcache_upstream_ratelimit_stretched gauge");
    for (up, r) in names.iter().zip(readings) {
        let _ = writeln!(
            o,
            "ringcache_upstream_ratelimit_stretched{{upstream=\"{up}\"}} {}",
            u8::from(r.stretched)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        let cases: &[(&str, Option<(u64, Option<u64>)>)] = &[
            ("100;w=21600", Some((100, Some(21600)))),
            ("76;w=21600", Some((76, Some(21600)))),
            ("0;w=21600", Some((0, Some(21600)))),
            ("100", Some((100, None))),
            (" 100 ; w=60 ", Some((100, Some(60)))),
            ("100;W=60", Some((100, Some(60)))),
            ("100;comment=\"x\";w=60", Some((100, Some(60)))),
            ("100;w=", Some((100, None))),
            ("100;w=-1", Some((100, None))),
            ("100;w=x", Some((100, None))),
            ("100, 100;w=3600", Some((100, Some(3600)))),
            ("100;w=60, 5000;w=3600", Some((100, Some(60)))),
            ("18446744073709551615", Some((u64::MAX, None))),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("", None),
            (";w=60", None),
            ("-1", None),
            ("+1", None),
            ("1.5", None),
            ("abc", None),
            ("1 0", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse(v), *want, "{v:?}");
        }
    }

    #[test]
    fn low_budgets() {
        let tenth = STRETCH_BELOW_DEFAULT_PPM;
        let cases: &[(u64, u64, u64, bool)] = &[
            (9, 100, tenth, true),
            (10, 100, tenth, false),
            (0, 100, tenth, true),
            (100, 100, tenth, false),
            (0, 0, tenth, false),
            (0, 100, 0, false),
            (99, 100, PPM, true),
            (u64::MAX, u64::MAX, PPM, false),
            (0, u64::MAX, u64::MAX, true),
        ];
        for &(remaining, limit, below, want) in cases {
            assert_eq!(
                is_low(remaining, limit, below),
                want,
                "{remaining}/{limit} < {below}ppm"
            );
        }
    }

    #[test]
    fn each_turn_is_seen_once() {
        let b = Budget::default();
        let tenth = STRETCH_BELOW_DEFAULT_PPM;
        assert!(!b.read().known);
        assert_eq!(b.observe(200, None, None, tenth), None);
        assert!(!b.read().known, "no fields: nothing known");
        let ok = Some("100;w=21600");
        assert_eq!(b.observe(200, ok, Some("50;w=21600"), tenth), None);
        let r = b.read();
        assert_eq!(
            (r.known, r.limit, r.remaining, r.window_secs, r.stretched),
            (true, 100, 50, 21600, false)
        );
        assert_eq!(
            b.observe(200, ok, Some("9;w=21600"), tenth),
            Some(Turn::Stretched)
        );
        assert_eq!(b.observe(200, ok, Some("3;w=21600"), tenth), None);
        assert_eq!(b.observe(429, ok, Some("0;w=21600"), tenth), None);
        // Garbage leaves the last values.
        assert_eq!(b.observe(200, ok, Some("lots"), tenth), None);
        assert_eq!(b.read().remaining, 0);
        assert_eq!(
            b.observe(200, ok, Some("100;w=21600"), tenth),
            Some(Turn::Recovered)
        );
        assert_eq!(b.observe(429, None, None, tenth), None);
        let r = b.read();
        assert_eq!((r.too_many, r.stretched), (2, false));
    }

    #[test]
    fn series_are_rendered_per_upstream() {
        let names = vec!["docker.io".to_string(), "ghcr.io".to_string()];
        let readings = [
            Reading {
                known: true,
                limit: 100,
                remaining: 7,
                window_secs: 21600,
                too_many: 3,
                stretched: true,
            },
            Reading::default(),
        ];
        let mut o = String::new();
        render(&mut o, &names, &readings);
        for want in [
            "ringcache_upstream_ratelimit_limit{upstream=\"docker.io\"} 100",
            "ringcache_upstream_ratelimit_remaining{upstream=\"docker.io\"} 7",
            "ringcache_upstream_ratelimit_window_seconds{upstream=\"docker.io\"} 21600",
            "ringcache_upstream_429_total{upstream=\"docker.io\"} 3",
            "ringcache_upstream_429_total{upstream=\"ghcr.io\"} 0",
            "ringcache_upstream_ratelimit_stretched{upstream=\"docker.io\"} 1",
            "ringcache_upstream_ratelimit_stretched{upstream=\"ghcr.io\"} 0",
            "# TYPE ringcache_upstream_ratelimit_remaining gauge",
        ] {
            assert!(o.contains(want), "missing {want:?} in\n{o}");
        }
        assert!(
            !o.contains("ringcache_upstream_ratelimit_remaining{upstream=\"ghcr.io\"}"),
            "no budget reported: no gauge"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(v in "\\PC{0,64}") {
            let _ = parse(&v);
        }

        #[test]
        fn parsing_shaped_values_never_panics(
            v in "[0-9 ;,=wW.+-]{0,40}",
        ) {
            if let Some((n, w)) = parse(&v) {
                proptest::prop_assert!(v.trim_start().starts_with(|c: char| c.is_ascii_digit()));
                let _ = (n, w);
            }
        }

        #[test]
        fn counts_round_trip(n: u64, w in proptest::option::of(proptest::num::u64::ANY)) {
            let v = match w {
                Some(w) => format!("{n};w={w}"),
                None => n.to_string(),
            };
            proptest::prop_assert_eq!(parse(&v), Some((n, w)));
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::config::Config;

    const UP: &str = "proxy: {remoteurl: https://up.example}\n";

    fn rl(rest: &str) -> Result<crate::config::RateLimit, String> {
        Config::from_yaml(&format!("{UP}{rest}"))
            .map(|c| c.ratelimit)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_are_strict_and_documented_defaults_hold() {
        let d = rl("").unwrap();
        assert_eq!(d.stretch_below_ppm, PPM / 10);
        assert_eq!(d.stretch_to, STRETCH_TO_DEFAULT);
        let cases: &[(&str, Result<(u64, u64), &str>)] = &[
            ("{stretch_below: 0.25, stretch_to: 2h}", Ok((250_000, 7200))),
            ("{stretch_below: 5%}", Ok((50_000, 3600))),
            ("{stretch_below: '5 %'}", Ok((50_000, 3600))),
            ("{stretch_below: 0}", Ok((0, 3600))),
            ("{stretch_below: 1}", Ok((PPM, 3600))),
            (
                "{stretch_below: 1.5}",
                Err("must be a share between 0 and 1"),
            ),
            (
                "{stretch_below: -0.1}",
                Err("must be a share between 0 and 1"),
            ),
            (
                "{stretch_below: 200%}",
                Err("must be a share between 0 and 1"),
            ),
            (
                "{stretch_below: lots}",
                Err("must be a share between 0 and 1"),
            ),
            ("{stretch_to: soon}", Err("invalid duration")),
            ("{stretch_belo: 0.1}", Err("did you mean `stretch_below`")),
            ("5", Err("ringcache.ratelimit: must be a mapping")),
        ];
        for (section, want) in cases {
            let got = rl(&format!("ringcache: {{ratelimit: {section}}}\n"));
            match (got, want) {
                (Ok(r), Ok((ppm, secs))) => {
                    assert_eq!((r.stretch_below_ppm, r.stretch_to.as_secs()), (*ppm, *secs))
                }
                (Err(e), Err(m)) => assert!(e.contains(m), "{section}: {e}"),
                (got, want) => panic!("{section}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_environment_sets_them() {
        let c = Config::from_yaml_env(
            UP,
            [
                ("RINGCACHE_RATELIMIT_STRETCH_BELOW".into(), "0.2".into()),
                ("RINGCACHE_RATELIMIT_STRETCH_TO".into(), "30m".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.ratelimit.stretch_below_ppm, 200_000);
        assert_eq!(c.ratelimit.stretch_to.as_secs(), 1800);
        let e = c.effective();
        assert_eq!(e["ringcache"]["ratelimit"]["stretch_below"], 0.2);
        assert_eq!(e["ringcache"]["ratelimit"]["stretch_to"], "30m");
    }
}
