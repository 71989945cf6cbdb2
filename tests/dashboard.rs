//! What an operator looks at: the Grafana dashboard (deploy/grafana/ringcache.json) and the
//! Prometheus alert rules (deploy/prometheus/ringcache-alerts.yml) ask only for series that
//! `/metrics` exports, with labels it sets; both files are well formed (and the rules pass
//! `promtool check rules` where promtool is installed); the man pages `ringcache man` writes
//! name every subcommand.
//!
//! PromQL is read simply: string literals, label matchers, ranges and grouping label lists are
//! set aside, and what is left of each identifier is a function or keyword from [`PROMQL_WORDS`]
//! or a metric name.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::upstream::{Fault, TestUpstream};
use support::{http, image, Ringcache};

/// PromQL's keywords, aggregations and functions (Prometheus 2.x), one word each: an identifier
/// among them is not a metric name. An identifier called like a function must be one of them
/// (a typo is caught).
const PROMQL_WORDS: &str = "
    and or unless by without on ignoring group_left group_right bool offset inf nan start end
    sum min max avg group stddev stdvar count count_values bottomk topk quantile atan2
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_count histogram_sum
    histogram_fraction histogram_quantile holt_winters hour idelta increase irate label_join
    label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort
    sort_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
    sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
    last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan
    tanh deg pi rad
";

fn is_promql_word(word: &str) -> bool {
    PROMQL_WORDS.split_whitespace().any(|w| w == word)
}

/// Labels Prometheus adds to every scraped series (not set by ringcache).
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// One `name{labels}` selector in an expression.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

/// What an expression asks for: its selectors, and the labels of its grouping clauses
/// (`by (...)`, `on (...)`, ...).
#[derive(Debug, Default, PartialEq)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The label names in a matcher list (`{a="x", b=~"y"}`, without the braces).
fn matcher_labels(inner: &str) -> Vec<String> {
    let chars: Vec<char> = inner.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else {
            i += 1;
        }
    }
    out
}

/// The index just past the string literal that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// The index of the bracket that closes the one at `i` (strings inside are skipped).
fn closing(chars: &[char], i: usize, open: char, close: char) -> Result<usize, String> {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        let c = chars[j];
        if c == '"' || c == '\'' || c == '`' {
            j = skip_string(chars, j);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Ok(j);
            }
        }
        j += 1;
    }
    Err(format!("unbalanced {open} at {i}"))
}

/// Read an expression: its selectors and grouping labels. An identifier called like a function
/// that is not one is an error.
fn parse(expr: &str) -> Result<Uses, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            i = closing(&chars, i, '[', ']')? + 1; // a range or subquery: durations only
        } else if c == '$' {
            // A Grafana variable outside a string ($__rate_interval is inside brackets).
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (0.5, 1e3, 5m, 1h30m).
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let follows = chars.get(next).copied();
            let known = is_promql_word(&word);
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                if follows == Some('(') {
                    let end = closing(&chars, next, '(', ')')?;
                    let list: String = chars[next + 1..end].iter().collect();
                    uses.grouping.extend(matcher_labels(&list));
                    i = end + 1;
                }
            } else if follows == Some('(') && !known {
                return Err(format!("{word}(...) is not a PromQL function"));
            } else if !known {
                let mut labels = Vec::new();
                if chars.get(i) == Some(&'{') {
                    let end = closing(&chars, i, '{', '}')?;
                    let inner: String = chars[i + 1..end].iter().collect();
                    labels = matcher_labels(&inner);
                    i = end + 1;
                }
                uses.selectors.push(Selector { name: word, labels });
            }
        } else if c == '{' {
            return Err(format!("a selector without a metric name at {i}"));
        } else {
            i += 1;
        }
    }
    Ok(uses)
}

#[test]
fn promql_reader_finds_metric_names() {
    let sel = |name: &str, labels: &[&str]| Selector {
        name: name.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
    };
    let cases: Vec<(&str, Vec<Selector>, Vec<&str>)> = vec![
        ("up", vec![sel("up", &[])], vec![]),
        (
            r#"sum by (code) (rate(a_total{code=~"5..", x="}{ b"}[5m]))"#,
            vec![sel("a_total", &["code", "x"])],
            vec!["code"],
        ),
        (
            "histogram_quantile(0.9, sum by (le, method) (rate(h_bucket[$__rate_interval])))",
            vec![sel("h_bucket", &[])],
            vec!["le", "method"],
        ),
        (
            "a / on (instance) group_left (x) b offset 1d > bool 0.5",
            vec![sel("a", &[]), sel("b", &[])],
            vec!["instance", "x"],
        ),
        (
            "x > 1e3 and y unless z or w",
            vec![sel("x", &[]), sel("y", &[]), sel("z", &[]), sel("w", &[])],
            vec![],
        ),
        ("absent_over_time(w[10m])", vec![sel("w", &[])], vec![]),
        (
            "sum(rate(s{a='q\\'uote'}[1h:5m])) / 100",
            vec![sel("s", &["a"])],
            vec![],
        ),
    ];
    for (expr, selectors, grouping) in cases {
        let got = parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(got.selectors, selectors, "{expr}");
        assert_eq!(got.grouping, grouping, "{expr}");
    }
    assert!(
        parse("sum(rat(x[5m]))").is_err(),
        "an unknown function is an error"
    );
    assert!(
        parse("{__name__=\"x\"}").is_err(),
        "name-less selectors are not read"
    );
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The dashboard's queries (`(where, expr)`), after checking the JSON is an importable
/// dashboard: uid, title, a Prometheus data source variable every panel uses, unique panel
/// ids, a grid 24 wide.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/ringcache.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "ringcache");
    assert_eq!(d["title"], "ringcache");
    assert!(
        d["id"].is_null(),
        "an exported dashboard has no id (import assigns one)"
    );
    assert!(
        !text.contains("${DS_"),
        "the data source is the variable, not an import input"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus data source variable"
    );
    let mut exprs = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        // Grafana's label_values(metric, label): the metric's series have that label.
        let q = match q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            Some(args) => {
                let (metric, label) = args.rsplit_once(',').unwrap();
                format!("count by ({}) ({metric})", label.trim())
            }
            None => q.to_string(),
        };
        exprs.push((format!("variable {}", v["name"]), q));
    }
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().unwrap();
    let nested = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten());
    for p in panels.iter().chain(nested) {
        let title = p["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id repeated: {title}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24
                && g["h"].as_u64().unwrap() > 0,
            "{title}: off the 24-wide grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId repeated"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let e = t["expr"].as_str().unwrap();
            assert!(!e.trim().is_empty(), "{title}: empty expr");
            exprs.push((format!("panel {title:?}"), e.to_string()));
        }
    }
    exprs
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// A Prometheus duration: one or more `<number><unit>` (`5m`, `1h30m`).
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    parts > 0
}

/// The rules' expressions (`(where, expr)`), after checking the file's structure: groups of
/// alerts, each with expr, for, labels.severity and annotations.summary.
fn rule_exprs() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_file("deploy/prometheus/ringcache-alerts.yml")).unwrap();
    let file: RuleFile =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("rules file: {e}"));
    assert!(!file.groups.is_empty());
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    for g in &file.groups {
        assert!(
            !g.name.is_empty() && !g.rules.is_empty(),
            "group {:?}",
            g.name
        );
        for r in &g.rules {
            assert!(names.insert(r.alert.clone()), "alert {} repeated", r.alert);
            assert!(is_duration(&r.for_), "{}: for {:?}", r.alert, r.for_);
            let severity = r.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{}: severity {severity:?}",
                r.alert
            );
            assert!(
                r.annotations
                    .get("summary")
                    .is_some_and(|s| !s.trim().is_empty()),
                "{}: no summary",
                r.alert
            );
            exprs.push((format!("alert {}", r.alert), r.expr.clone()));
        }
    }
    exprs
}

/// Families declared (`# TYPE name kind`) and every sample's name with its label names.
struct Scrape {
    kinds: HashMap<String, String>,
    samples: HashMap<String, BTreeSet<String>>,
}

fn scrape(dbg: SocketAddr) -> Scrape {
    let r = http::get(dbg, "/metrics");
    assert_eq!(r.status, 200);
    let mut s = Scrape {
        kinds: HashMap::new(),
        samples: HashMap::new(),
    };
    for line in r.text().lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            s.kinds.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let key = line.rsplit_once(' ').unwrap().0;
            let (name, labels) = key.split_once('{').unwrap_or((key, ""));
            let labels = matcher_labels(labels.trim_end_matches('}'));
            s.samples
                .entry(name.to_string())
                .or_default()
                .extend(labels);
        }
    }
    s
}

impl Scrape {
    /// The family a sample name belongs to: a histogram's `_bucket`, `_sum` and `_count`
    /// belong to it; any other name is its own family.
    fn family<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.kinds.get(base).map(String::as_str) == Some("histogram") {
                    return base;
                }
            }
        }
        name
    }

    /// Why `expr` asks for something not exported, if it does.
    fn check(&self, expr: &str) -> Vec<String> {
        let uses = match parse(expr) {
            Ok(u) => u,
            Err(e) => return vec![e],
        };
        let mut wrong = Vec::new();
        let mut seen_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for s in &uses.selectors {
            let family = self.family(&s.name);
            let Some(labels) = self
                .samples
                .get(&s.name)
                .filter(|_| self.kinds.contains_key(family))
            else {
                wrong.push(format!("{} is not exported", s.name));
                continue;
            };
            seen_labels.extend(labels.iter().map(String::as_str));
            for l in &s.labels {
                if !labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    wrong.push(format!("{} has no label {l}", s.name));
                }
            }
        }
        for l in &uses.grouping {
            if !seen_labels.contains(l.as_str()) {
                wrong.push(format!(
                    "no series in the expression has the label {l} it groups by"
                ));
            }
        }
        wrong
    }
}

#[test]
fn dashboard_and_alerts_use_only_exported_series() {
    let mut exprs = dashboard_exprs();
    let dashboard_count = exprs.len();
    exprs.extend(rule_exprs());
    assert!(dashboard_count > 10 && exprs.len() > dashboard_count);

    // A cap, so the cap's gauge is exported; a miss, a hit and a 404 so that labelled series
    // (status codes, blob hits) exist.
    let up = TestUpstream::start();
    let rc = Ringcache::start_with_env(
        &up.url(),
        "ringcache: {storage: {size_max: 1GB}}",
        &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let dbg = rc.debug_addr();
    let digest = up.add_blob(image::pseudo_random(7, 4096), Fault::None);
    let path = format!("/v2/x/blobs/{digest}");
    assert_eq!(http::get(rc.addr, &path).status, 200, "miss");
    // A client may have the verified body before the commit ends: the hit comes after it.
    rc.proc
        .wait_count(&["fill committed"], 1, std::time::Duration::from_secs(10));
    assert_eq!(http::get(rc.addr, &path).status, 200, "hit");
    // An upstream that reports a pull budget (Docker Hub does, on manifest answers): the
    // budget gauges exist only once one was reported.
    up.set_ratelimit(Some((100, 50, 21600)));
    let m = image::image(1, &[100]);
    up.add_manifest(
        "x",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        m.manifest,
    );
    assert_eq!(http::get(rc.addr, "/v2/x/manifests/v1").status, 200);
    support::wait_metric(dbg, "ringcache_upstream_ratelimit_remaining", |v| v == 50.0);
    let missing = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        http::get(rc.addr, &format!("/v2/x/blobs/{missing}")).status,
        404
    );
    support::wait_metric(dbg, "registry_proxy_hits_total{type=\"blob\"}", |v| {
        v >= 1.0
    });
    support::wait_metric(
        dbg,
        "registry_http_requests_total{code=\"404\",method=\"GET\"}",
        |v| v >= 1.0,
    );

    let s = scrape(dbg);
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        for w in s.check(expr) {
            wrong.push(format!("{place}: {w}\n    in {expr}"));
        }
        if let Ok(u) = parse(expr) {
            used.extend(u.selectors.into_iter().map(|s| s.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The panels the operator-features issue asks for are there.
    for want in [
        "registry_http_requests_total",
        "registry_http_request_duration_seconds_bucket",
        "registry_proxy_hits_total",
        "registry_proxy_requests_total",
        "ringcache_upstream_bytes_avoided_total",
        "ringcache_fills_inflight",
        "ringcache_evictions_total",
        "ringcache_expirations_total",
        "ringcache_store_bytes",
        "ringcache_store_bytes_max",
        "ringcache_fills_failed_total",
        "ringcache_store_incidents_total",
        "ringcache_connections_open",
        "ringcache_upstream_ratelimit_remaining",
        "ringcache_upstream_ratelimit_limit",
        "ringcache_upstream_429_total",
    ] {
        assert!(used.contains(want), "no query uses {want}");
    }
    promtool_checks(&exprs[..dashboard_count]);
}

/// `promtool check rules` on the rules file, and on the dashboard's queries written as
/// recording rules (Grafana's variables replaced), where promtool is installed (on PATH or
/// `$PROMTOOL`; Debian's `prometheus` package has it). Without it the structure was checked
/// above and the PromQL only read by [`parse`].
fn promtool_checks(dashboard: &[(String, String)]) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let Ok(v) = Command::new(&promtool).arg("--version").output() else {
        eprintln!("note: promtool not installed: rules checked for structure only");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let queries = dir.path().join("dashboard-queries.yml");
    std::fs::write(&queries, yaml).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo_file("deploy/prometheus/ringcache-alerts.yml"))
        .arg(&queries)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_pages_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "ringcache-check-config.1",
            "ringcache-export.1",
            "ringcache-import.1",
            "ringcache-serve.1",
            "ringcache-verify.1",
            "ringcache-warm.1",
            "ringcache.1"
        ],
        "one page per visible subcommand (not the hidden man, not help)"
    );
    for page in &pages {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        let name = page.trim_end_matches(".1");
        let after_name = text.split(".SH NAME\n").nth(1).unwrap_or("");
        assert!(
            after_name.starts_with(&format!("{} \\- ", name.replace('-', "\\-"))),
            "{page}: NAME is not `{name} - what it does`:\n{text}"
        );
        assert!(
            text.contains(".SH SYNOPSIS") && text.contains(".SH OPTIONS"),
            "{page}"
        );
    }
    let top = std::fs::read_to_string(dir.path().join("ringcache.1")).unwrap();
    for section in [
        "SUBCOMMANDS",
        "FILES",
        "ENVIRONMENT",
        "SIGNALS",
        "\"EXIT STATUS\"",
        "\"SEE ALSO\"",
    ] {
        assert!(
            top.contains(&format!(".SH {section}\n")),
            "ringcache.1 has no {section}"
        );
    }
}
