//! Latency summaries, medians, printed tables, the machine description
//! and the JSON records written for each scenario.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Creates a latency histogram in nanoseconds, from 1 ns to 120 s with three
/// significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds are valid")
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |nanos: u64| nanos as f64 / 1e6;
        Latency {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    /// Returns the median of each percentile over several runs.
    pub fn median_of(runs: &[Latency]) -> Latency {
        let pick = |get: fn(&Latency) -> f64| median(&runs.iter().map(get).collect::<Vec<_>>());
        Latency {
            count: median(&runs.iter().map(|run| run.count as f64).collect::<Vec<_>>()) as u64,
            p50: pick(|run| run.p50),
            p99: pick(|run| run.p99),
            p999: pick(|run| run.p999),
            max: pick(|run| run.max),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"count": self.count, "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max})
    }
}

/// Returns the median of `values`, NaN when empty. An even count averages the middle two.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Formats milliseconds with three decimals (microsecond resolution).
pub fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_string()
    } else {
        format!("{value:.3}")
    }
}

/// Formats a count or rate with thousands separators.
pub fn count(value: f64) -> String {
    if value.is_nan() {
        return "-".to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// Formats `aura / baseline` as a ratio such as `0.52x`, or `-` when either is missing.
pub fn ratio(aura: f64, baseline: f64) -> String {
    if aura.is_nan() || baseline.is_nan() || baseline == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}x", aura / baseline)
    }
}

/// A table printed with aligned columns.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|header| header.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table as Markdown, so that it can be pasted into BENCHMARKS.md.
    pub fn print(&self) {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.len()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|index| {
                    format!(
                        "{:>width$}",
                        cells.get(index).map(String::as_str).unwrap_or(""),
                        width = widths[index]
                    )
                })
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        println!("\n{}\n", self.title);
        println!("{}", line(&self.headers));
        let rule: Vec<String> = widths
            .iter()
            .map(|width| format!("{}:", "-".repeat(width.saturating_sub(1).max(1))))
            .collect();
        println!("| {} |", rule.join(" | "));
        for row in &self.rows {
            println!("{}", line(row));
        }
        println!();
    }
}

/// Describes the machine that the run used.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(|model| model.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(0);
    json!({
        "cores": cores,
        "cpu_model": model,
        "memory_mib": memory_kib.map(|kib| kib / 1024),
        "kernel": kernel.trim(),
    })
}

/// Writes `record` to `DIR/SCENARIO-UNIXSECONDS.json` and `DIR/SCENARIO-latest.json`.
pub fn write_record(dir: &Path, scenario: &str, record: &Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let text = serde_json::to_string_pretty(record)?;
    let path = dir.join(format!("{scenario}-{seconds}.json"));
    std::fs::write(&path, &text).with_context(|| format!("failed to write {}", path.display()))?;
    std::fs::write(dir.join(format!("{scenario}-latest.json")), &text)?;
    Ok(path)
}
