//! Results: every sample as a JSON line, and one table of medians with their range and the
//! ratios of ringcache to the reference and to nginx.

use std::collections::BTreeMap;
use std::path::Path;

/// Every sample of the run, in the order the (scenario, metric) rows first appeared.
#[derive(Default)]
pub struct Results {
    /// (first-seen order, scenario, metric) -> system -> samples
    rows: BTreeMap<(usize, String, String), BTreeMap<&'static str, Vec<f64>>>,
    order: usize,
    jsonl: Vec<String>,
}

impl Results {
    pub fn add(&mut self, scenario: &str, metric: &str, system: &'static str, rep: usize, v: f64) {
        let key = self
            .rows
            .keys()
            .find(|(_, s, m)| s == scenario && m == metric)
            .cloned()
            .unwrap_or_else(|| {
                self.order += 1;
                (self.order, scenario.to_string(), metric.to_string())
            });
        self.rows
            .entry(key)
            .or_default()
            .entry(system)
            .or_default()
            .push(v);
        self.jsonl.push(
            serde_json::json!({"scenario": scenario, "metric": metric, "system": system, "rep": rep, "value": v}).to_string(),
        );
    }

    /// The markdown table: one row per (scenario, metric), a column per system.
    pub fn table(&self) -> String {
        let systems = ["reference", "nginx", "ringcache"];
        let mut out = String::new();
        out.push_str("| scenario | metric | reference proxy | nginx (sendfile) | ringcache | rc / ref | rc / nginx |\n|---|---|---|---|---|---|---|\n");
        for ((_, scenario, metric), by) in &self.rows {
            let med = |s: &str| by.get(s).map(|v| median(v));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
                _ => "—".into(),
            };
            out.push_str(&format!(
                "| {scenario} | {metric} | {} | {} | {} | {} | {} |\n",
                cell(by.get(systems[0])),
                cell(by.get(systems[1])),
                cell(by.get(systems[2])),
                ratio(med("ringcache"), med("reference")),
                ratio(med("ringcache"), med("nginx")),
            ));
        }
        out
    }

    /// Print the table and write the JSON lines to `out` and the table beside it (`.md`).
    pub fn write(&self, out: &Path, reps: usize) {
        let table = self.table();
        println!("\n{table}");
        println!("median [min–max] of {reps} repetitions; ratios are of medians");
        if let Some(d) = out.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(out, self.jsonl.join("\n") + "\n").unwrap();
        std::fs::write(out.with_extension("md"), &table).unwrap();
        println!(
            "JSON lines: {}  table: {}",
            out.display(),
            out.with_extension("md").display()
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// One system's samples: the median and, over several repetitions, [min–max].
fn cell(v: Option<&Vec<f64>>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.len() == 1 => fmt(v[0]),
        Some(v) => {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!("{} [{}–{}]", fmt(median(v)), fmt(lo), fmt(hi))
        }
    }
}
