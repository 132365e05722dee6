//! Scenario 2, throughput: one publisher per channel over many channels,
//! each channel with its own subscribers. The offered rate grows step by
//! step. The result is the highest rate at which every message reached
//! every subscriber with a p99 latency under the limit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Endpoint;
use crate::cpu::CpuUsage;
use crate::report::{count, median, ms, ratio, Latency, Table};
use crate::target::{Kind, Target};
use crate::traffic::{Rig, RigSpec, StepResult};
use crate::Bench;

/// Sizes and rates of the throughput scenario.
#[derive(Debug, Clone)]
pub struct ThroughputSettings {
    pub channels: usize,
    pub subscribers_per_channel: usize,
    /// Offered deliveries per second in the first step.
    pub start: f64,
    /// Each step offers this many times the previous one.
    pub factor: f64,
    pub max_steps: u32,
    pub step: Duration,
    /// A step passes when its p99 latency stays under this limit.
    pub p99_limit: Duration,
}

/// One measured step.
#[derive(Debug, Clone)]
struct Step {
    offered: f64,
    achieved: f64,
    latency: Latency,
    complete: bool,
    passed: bool,
    cpu: CpuUsage,
}

impl Step {
    fn to_json(&self) -> Value {
        json!({
            "offered_deliveries_per_second": self.offered,
            "achieved_deliveries_per_second": self.achieved,
            "latency": self.latency.to_json(),
            "all_delivered": self.complete,
            "passed": self.passed,
            "cpu": self.cpu.to_json(),
        })
    }
}

/// The sustained result of one server.
#[derive(Debug, Clone, Default)]
struct Sustained {
    deliveries: f64,
    p50: f64,
    p99: f64,
    samples: usize,
}

pub async fn run(bench: &Bench, settings: &ThroughputSettings) -> anyhow::Result<Value> {
    let mut records = Vec::new();
    let mut sustained: Vec<(Kind, Sustained)> = Vec::new();
    let mut table = Table::new(
        &format!(
            "Throughput: {} channels x {} subscribers, {:?} steps, pass = every delivery made and p99 < {:?}",
            settings.channels, settings.subscribers_per_channel, settings.step, settings.p99_limit
        ),
        &[
            "server",
            "offered/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "all delivered",
            "pass",
            "server CPU %",
            "loadgen CPU %",
            "other CPU %",
        ],
    );

    for &kind in &bench.targets {
        println!("throughput: searching the highest sustained rate of {}", kind.name());
        let steps = search(bench, settings, kind).await?;
        for step in &steps {
            table.row(step_row(kind, step));
        }
        let best = steps.iter().rfind(|step| step.passed).cloned();
        let mut confirmations = Vec::new();
        if let Some(best) = &best {
            for repeat in 1..bench.repeats {
                println!(
                    "throughput: confirming {} at {} deliveries/s ({repeat})",
                    kind.name(),
                    count(best.offered)
                );
                let step = confirm(bench, settings, kind, best.offered).await?;
                table.row(step_row(kind, &step));
                confirmations.push(step);
            }
        }
        let samples: Vec<&Step> = best.iter().chain(confirmations.iter()).collect();
        let result = Sustained {
            deliveries: median(&samples.iter().map(|step| step.achieved).collect::<Vec<_>>()),
            p50: median(&samples.iter().map(|step| step.latency.p50).collect::<Vec<_>>()),
            p99: median(&samples.iter().map(|step| step.latency.p99).collect::<Vec<_>>()),
            samples: samples.len(),
        };
        records.push(json!({
            "server": kind.name(),
            "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
            "confirmations": confirmations.iter().map(Step::to_json).collect::<Vec<_>>(),
            "sustained": {
                "deliveries_per_second": result.deliveries,
                "p50_ms": result.p50,
                "p99_ms": result.p99,
                "samples": result.samples,
                "all_samples_passed": confirmations.iter().all(|step| step.passed),
            },
        }));
        sustained.push((kind, result));
    }
    table.print();
    print_sustained(&sustained);

    Ok(json!({"settings": {
        "channels": settings.channels,
        "subscribers_per_channel": settings.subscribers_per_channel,
        "start_deliveries_per_second": settings.start,
        "factor": settings.factor,
        "max_steps": settings.max_steps,
        "step_seconds": settings.step.as_secs_f64(),
        "p99_limit_ms": settings.p99_limit.as_secs_f64() * 1e3,
    }, "results": records}))
}

fn rig_spec(bench: &Bench, settings: &ThroughputSettings, target: &Target, steps: u32) -> RigSpec {
    RigSpec {
        channels: target.channels[..settings.channels].to_vec(),
        subscribers_per_channel: settings.subscribers_per_channel,
        content_bytes: bench.content_bytes,
        steps,
        track_last: None,
    }
}

/// Raises the offered rate step by step on a fresh server until a step fails.
async fn search(bench: &Bench, settings: &ThroughputSettings, kind: Kind) -> anyhow::Result<Vec<Step>> {
    let target = Target::start(kind, &bench.launch_with(settings.channels), "throughput").await?;
    let endpoint = Arc::new(Endpoint::new(target.addr, bench.sources));
    let steps = settings.max_steps * bench.quiet.attempts() + 1;
    let rig = Rig::open(&target, &endpoint, rig_spec(bench, settings, &target, steps)).await?;
    let per_publisher = |offered: f64| offered / (settings.channels * settings.subscribers_per_channel) as f64;
    rig.run_step(0, per_publisher(settings.start), Duration::from_secs(1))
        .await?;

    let mut steps = Vec::new();
    let mut offered = settings.start;
    let mut rig_step = 0;
    for _ in 0..settings.max_steps {
        let step = measure(
            bench,
            &rig,
            &target,
            &mut rig_step,
            per_publisher(offered),
            settings,
            offered,
        )
        .await?;
        println!(
            "  {} offered {}/s: delivered {}/s, p99 {} ms, {}",
            kind.name(),
            count(offered),
            count(step.achieved),
            ms(step.latency.p99),
            if step.passed { "pass" } else { "fail" }
        );
        let passed = step.passed;
        steps.push(step);
        if !passed {
            break;
        }
        offered *= settings.factor;
    }
    rig.close().await;
    target.stop().await;
    Ok(steps)
}

/// Measures one more step at `offered` deliveries per second on a fresh server.
async fn confirm(bench: &Bench, settings: &ThroughputSettings, kind: Kind, offered: f64) -> anyhow::Result<Step> {
    let target = Target::start(kind, &bench.launch_with(settings.channels), "throughput").await?;
    let endpoint = Arc::new(Endpoint::new(target.addr, bench.sources));
    let rig = Rig::open(
        &target,
        &endpoint,
        rig_spec(bench, settings, &target, bench.quiet.attempts() + 1),
    )
    .await?;
    let per_publisher = offered / (settings.channels * settings.subscribers_per_channel) as f64;
    rig.run_step(0, per_publisher, Duration::from_secs(1)).await?;
    let step = measure(bench, &rig, &target, &mut 0, per_publisher, settings, offered).await?;
    rig.close().await;
    target.stop().await;
    Ok(step)
}

/// Measures one step at `offered` deliveries per second, repeating it while
/// other processes disturb it. `step` counts the rig's steps.
async fn measure(
    bench: &Bench,
    rig: &Rig,
    target: &Target,
    step: &mut u32,
    per_publisher: f64,
    settings: &ThroughputSettings,
    offered: f64,
) -> anyhow::Result<Step> {
    let mut attempt = 0;
    let (result, cpu) = loop {
        *step += 1;
        bench.quiet.settle(target.pid()).await;
        let before = target.cpu();
        let result: StepResult = rig.run_step(*step, per_publisher, settings.step).await?;
        let cpu = target.cpu().usage_since(&before);
        if result.closed > 0 || !bench.quiet.repeat(&cpu, attempt) {
            break (result, cpu);
        }
        attempt += 1;
    };
    let latency = Latency::of(&result.latency);
    let complete = result.complete();
    Ok(Step {
        offered,
        achieved: result.deliveries_per_second(),
        latency,
        complete,
        passed: complete && latency.p99 < settings.p99_limit.as_secs_f64() * 1e3,
        cpu,
    })
}

fn step_row(kind: Kind, step: &Step) -> Vec<String> {
    let [server_cpu, loadgen_cpu, other_cpu] = step.cpu.cells();
    vec![
        kind.name().to_string(),
        count(step.offered),
        count(step.achieved),
        ms(step.latency.p50),
        ms(step.latency.p99),
        ms(step.latency.max),
        if step.complete { "yes" } else { "NO" }.to_string(),
        if step.passed { "pass" } else { "fail" }.to_string(),
        server_cpu,
        loadgen_cpu,
        other_cpu,
    ]
}

fn print_sustained(sustained: &[(Kind, Sustained)]) {
    let baseline = sustained
        .iter()
        .find(|(kind, _)| *kind == Kind::Baseline)
        .map(|(_, result)| result.deliveries)
        .unwrap_or(f64::NAN);
    let mut table = Table::new(
        "Throughput: highest sustained deliveries per second (median over the passing samples)",
        &["server", "deliveries/s", "p50 ms", "p99 ms", "samples", "vs node"],
    );
    for (kind, result) in sustained {
        table.row(vec![
            kind.name().to_string(),
            count(result.deliveries),
            ms(result.p50),
            ms(result.p99),
            result.samples.to_string(),
            ratio(result.deliveries, baseline),
        ]);
    }
    table.print();
}
