//! Scenario 1, fan-out: one publisher and S subscribers in one channel at a
//! fixed send rate. Reports the latency from send to receipt at each
//! subscriber and the time until the last subscriber has each message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Endpoint;
use crate::cpu::CpuUsage;
use crate::report::{count, ms, ratio, Latency, Table};
use crate::target::{Kind, Target};
use crate::traffic::{Rig, RigSpec};
use crate::Bench;

/// Sizes and rates of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct FanoutSettings {
    /// Subscriber counts, one rig each.
    pub subscribers: Vec<usize>,
    /// Messages per second from the publisher.
    pub rate: f64,
    /// Length of each measured round.
    pub round: Duration,
    /// Unmeasured traffic before the first round.
    pub warmup: Duration,
}

/// The medians over the rounds of one (server, S) pair.
#[derive(Debug, Clone, Copy)]
struct Summary {
    latency: Latency,
    last: Latency,
    cpu: CpuUsage,
    complete: bool,
}

pub async fn run(bench: &Bench, settings: &FanoutSettings) -> anyhow::Result<Value> {
    let rounds = bench.repeats.max(1);
    let mut summaries: BTreeMap<(usize, &'static str), Summary> = BTreeMap::new();
    let mut records = Vec::new();

    for &kind in &bench.targets {
        let target = Target::start(kind, &bench.launch_with(1), "fanout").await?;
        let endpoint = Arc::new(Endpoint::new(target.addr, bench.sources));
        for &subscribers in &settings.subscribers {
            println!(
                "fan-out: {} with {subscribers} subscribers at {} messages/s",
                kind.name(),
                settings.rate
            );
            let per_round = (settings.rate * settings.round.as_secs_f64()).ceil() as u64 + 1;
            let spec = RigSpec {
                channels: vec![target.channels[0].clone()],
                subscribers_per_channel: subscribers,
                content_bytes: bench.content_bytes,
                steps: rounds * bench.quiet.attempts() + 1,
                track_last: Some(per_round),
            };
            let rig = Rig::open(&target, &endpoint, spec).await?;
            rig.run_step(0, settings.rate, settings.warmup).await?;

            let mut round_records = Vec::new();
            let mut round_summaries = Vec::new();
            let mut step = 0;
            for round in 1..=rounds {
                // Each attempt is a new step, so that a discarded attempt's
                // late deliveries never count in the next one.
                let mut attempt = 0;
                let (result, cpu) = loop {
                    step += 1;
                    bench.quiet.settle(target.pid()).await;
                    let before = target.cpu();
                    let result = rig.run_step(step, settings.rate, settings.round).await?;
                    let cpu = target.cpu().usage_since(&before);
                    if !bench.quiet.repeat(&cpu, attempt) {
                        break (result, cpu);
                    }
                    attempt += 1;
                };
                let latency = Latency::of(&result.latency);
                let last = result.last_subscriber.as_ref().map(Latency::of).unwrap_or_default();
                round_records.push(json!({
                    "round": round,
                    "discarded_noisy_attempts": attempt,
                    "sent": result.sent,
                    "expected_deliveries": result.expected,
                    "deliveries": result.delivered,
                    "closed_connections": result.closed,
                    "error_frames": result.errors,
                    "latency": latency.to_json(),
                    "last_subscriber": last.to_json(),
                    "cpu": cpu.to_json(),
                }));
                round_summaries.push(Summary {
                    latency,
                    last,
                    cpu,
                    complete: result.complete(),
                });
                if result.closed > 0 {
                    eprintln!("fan-out: {} closed connections; stopping this size", result.closed);
                    break;
                }
            }
            rig.close().await;

            let summary = Summary {
                latency: Latency::median_of(&round_summaries.iter().map(|s| s.latency).collect::<Vec<_>>()),
                last: Latency::median_of(&round_summaries.iter().map(|s| s.last).collect::<Vec<_>>()),
                cpu: CpuUsage::median_of(&round_summaries.iter().map(|s| s.cpu).collect::<Vec<_>>()),
                complete: round_summaries.iter().all(|s| s.complete),
            };
            summaries.insert((subscribers, kind.name()), summary);
            records.push(json!({
                "server": kind.name(),
                "subscribers": subscribers,
                "rate_per_second": settings.rate,
                "round_seconds": settings.round.as_secs_f64(),
                "rounds": round_records,
                "median": {
                    "latency": summary.latency.to_json(),
                    "last_subscriber": summary.last.to_json(),
                    "cpu": summary.cpu.to_json(),
                    "all_delivered": summary.complete,
                },
            }));
        }
        target.stop().await;
    }

    print_table(settings, rounds, &summaries);
    Ok(json!({"settings": {
        "subscribers": settings.subscribers,
        "rate_per_second": settings.rate,
        "round_seconds": settings.round.as_secs_f64(),
        "warmup_seconds": settings.warmup.as_secs_f64(),
        "rounds": rounds,
    }, "results": records}))
}

fn print_table(settings: &FanoutSettings, rounds: u32, summaries: &BTreeMap<(usize, &'static str), Summary>) {
    let title = format!(
        "Fan-out at {} messages/s: send-to-receipt latency in ms, medians over {rounds} round(s) of {:?}",
        settings.rate, settings.round
    );
    let mut table = Table::new(
        &title,
        &[
            "subscribers",
            "server",
            "p50",
            "p99",
            "p99.9",
            "max",
            "last p50",
            "last p99",
            "last max",
            "all delivered",
            "server CPU %",
            "loadgen CPU %",
            "other CPU %",
            "p50 vs node",
            "p99 vs node",
        ],
    );
    for (&(subscribers, server), summary) in summaries {
        let baseline = summaries.get(&(subscribers, Kind::Baseline.name()));
        let versus = |get: fn(&Latency) -> f64| match (server == Kind::Aura.name(), baseline) {
            (true, Some(baseline)) => ratio(get(&summary.latency), get(&baseline.latency)),
            _ => "-".to_string(),
        };
        let [server_cpu, loadgen_cpu, other_cpu] = summary.cpu.cells();
        table.row(vec![
            count(subscribers as f64),
            server.to_string(),
            ms(summary.latency.p50),
            ms(summary.latency.p99),
            ms(summary.latency.p999),
            ms(summary.latency.max),
            ms(summary.last.p50),
            ms(summary.last.p99),
            ms(summary.last.max),
            if summary.complete { "yes" } else { "NO" }.to_string(),
            server_cpu,
            loadgen_cpu,
            other_cpu,
            versus(|latency| latency.p50),
            versus(|latency| latency.p99),
        ]);
    }
    table.print();
}
