//! CPU accounting from /proc: the server, this load generator, and the rest
//! of the machine. The rest should stay near zero. When other work shares
//! the cores, the figures of that run are not comparable.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::{json, Value};

use crate::report::median;

/// CPU time counters at one instant, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    server: f64,
    own: f64,
    machine_busy: f64,
}

/// CPU use between two samples, in percent of one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsage {
    pub server: f64,
    pub loadgen: f64,
    /// Every other process on the machine, and the kernel work not charged
    /// to the server or the load generator.
    pub other: f64,
}

impl CpuSample {
    pub fn take(server_pid: u32) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: process_cpu_seconds(server_pid).unwrap_or(f64::NAN),
            own: process_cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
            machine_busy: machine_busy_seconds().unwrap_or(f64::NAN),
        }
    }

    pub fn usage_since(&self, earlier: &CpuSample) -> CpuUsage {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let server = (self.server - earlier.server) / wall * 100.0;
        let loadgen = (self.own - earlier.own) / wall * 100.0;
        let busy = (self.machine_busy - earlier.machine_busy) / wall * 100.0;
        CpuUsage {
            server,
            loadgen,
            other: (busy - server - loadgen).max(0.0),
        }
    }
}

impl CpuUsage {
    pub fn median_of(samples: &[CpuUsage]) -> CpuUsage {
        let pick = |get: fn(&CpuUsage) -> f64| median(&samples.iter().map(get).collect::<Vec<_>>());
        CpuUsage {
            server: pick(|usage| usage.server),
            loadgen: pick(|usage| usage.loadgen),
            other: pick(|usage| usage.other),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"server_percent": self.server, "loadgen_percent": self.loadgen, "other_percent": self.other})
    }

    /// Formats the three percentages as table cells.
    pub fn cells(self) -> [String; 3] {
        [self.server, self.loadgen, self.other].map(|percent| {
            if percent.is_nan() {
                "-".to_string()
            } else {
                format!("{percent:.0}")
            }
        })
    }
}

/// User plus system CPU time of a process from /proc/PID/stat, in seconds.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let name_end = stat.rfind(')').ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[name_end + 1..].split_whitespace().collect();
    let utime: f64 = fields
        .get(11)
        .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
        .parse()?;
    let stime: f64 = fields
        .get(12)
        .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
        .parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// Busy CPU time of the whole machine from /proc/stat, in seconds: every
/// state but idle and iowait.
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or_else(|| anyhow!("/proc/stat is empty"))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // Columns: user nice system idle iowait irq softirq steal. Guest time is already in user.
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&index| fields.get(index)).sum();
    Ok(busy / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Reads the 1-minute load average, to warn when other work shares the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|value| value.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Settings that keep other work on the machine out of the figures.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Maximum wait for an idle machine before each measurement. Zero turns
    /// off both the wait and the repeats.
    pub wait: Duration,
    /// A measurement during which other processes used more than this share
    /// of one core, in percent, is discarded and repeated.
    pub max_other_percent: f64,
    /// Repeats of one measurement before a noisy result is kept anyway.
    pub retries: u32,
}

impl Quiet {
    fn enabled(&self) -> bool {
        !self.wait.is_zero()
    }

    /// Waits, up to [`Quiet::wait`], until processes other than the server
    /// and this load generator use less than 10% of one core.
    pub async fn settle(&self, server_pid: u32) {
        if !self.enabled() {
            return;
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let before = CpuSample::take(server_pid);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let usage = CpuSample::take(server_pid).usage_since(&before);
            if usage.other < 10.0 {
                return;
            }
            if Instant::now() >= deadline {
                println!(
                    "  warning: other processes still use {:.0}% of a core after waiting {:?}",
                    usage.other, self.wait
                );
                return;
            }
        }
    }

    /// Returns whether a measurement should be repeated: other processes used
    /// too much CPU during it and `attempt` (counted from 0) has repeats left.
    pub fn repeat(&self, usage: &CpuUsage, attempt: u32) -> bool {
        let noisy = self.enabled() && usage.other > self.max_other_percent;
        if noisy && attempt < self.retries {
            println!(
                "  other processes used {:.0}% of a core during the measurement; repeating it",
                usage.other
            );
            return true;
        }
        false
    }

    /// Measurements a scenario may need per reported figure.
    pub fn attempts(&self) -> u32 {
        if self.enabled() {
            self.retries + 1
        } else {
            1
        }
    }
}
