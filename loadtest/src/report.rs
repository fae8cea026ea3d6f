//! End-of-run output: a human summary table, or one JSON object with `--json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Counts, Summary};

/// A two-column summary grouped in sections.
#[derive(Default)]
pub struct Table {
    title: String,
    rows: Vec<(bool, String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub fn section(&mut self, name: &str) {
        self.rows.push((true, name.to_string(), String::new()));
    }

    pub fn row(&mut self, key: &str, value: impl std::fmt::Display) {
        self.rows.push((false, key.to_string(), value.to_string()));
    }

    /// A latency summary on one line.
    pub fn latency(&mut self, key: &str, s: &Summary) {
        if s.count == 0 {
            self.row(key, "no samples");
            return;
        }
        self.row(
            key,
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
                fmt_us(s.p50_us),
                fmt_us(s.p90_us),
                fmt_us(s.p99_us),
                fmt_us(s.p999_us),
                fmt_us(s.max_us),
                s.count
            ),
        );
    }

    /// Error or failure counts, or "none".
    pub fn counts(&mut self, key: &str, c: &Counts) {
        if c.is_empty() {
            self.row(key, "none");
        } else {
            let v: Vec<String> = c.iter().map(|(k, n)| format!("{k}={n}")).collect();
            self.row(key, v.join(" "));
        }
    }

    pub fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .filter(|r| !r.0)
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("== {} ==\n", self.title);
        for (section, k, v) in &self.rows {
            if *section {
                let _ = writeln!(out, "-- {k}");
            } else {
                let _ = writeln!(out, "  {k:<w$}  {v}");
            }
        }
        out
    }
}

/// Prints the report: JSON when asked, the table otherwise.
pub fn print<T: Serialize>(json: bool, report: &T, table: &Table) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

/// Human duration from µs: `850 µs`, `12.35 ms`, `1.204 s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.3} s", us as f64 / 1e6)
    }
}

pub fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    match v {
        Some(v) => format!("{v}{unit}"),
        None => "n/a (no --pids)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_us(850), "850 µs");
        assert_eq!(fmt_us(12_345), "12.35 ms");
        assert_eq!(fmt_us(1_204_000), "1.204 s");
    }

    #[test]
    fn table_aligns_values() {
        let mut t = Table::new("x");
        t.section("s");
        t.row("a", 1);
        t.row("longer", "v");
        t.latency("lat", &Summary::default());
        let r = t.render();
        assert!(r.contains("  a       1\n"), "{r}");
        assert!(r.contains("  longer  v\n"));
        assert!(r.contains("no samples"));
    }
}
