//! Load generator for Aura and a Node.js `ws` baseline.
//!
//! Starts the release binary on loopback with a temporary data directory,
//! and the baseline in benches/baseline, and drives both with the same real
//! WebSocket clients. Each scenario prints Markdown tables and writes a JSON
//! record. BENCHMARKS.md describes the scenarios and contains the results.
//!
//! Run with `cargo bench --bench load -- [FLAGS]`. `--help` lists the flags.

mod client;
mod connections;
mod cpu;
mod durable;
mod fanout;
mod history;
mod report;
mod target;
mod throughput;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

use crate::connections::ConnectionSettings;
use crate::cpu::Quiet;
use crate::durable::DurableSettings;
use crate::fanout::FanoutSettings;
use crate::history::HistorySettings;
use crate::target::{Kind, Launch};
use crate::throughput::ThroughputSettings;

/// Every scenario, in the order they run.
const SCENARIOS: [&str; 5] = ["fanout", "throughput", "connections", "durable", "history"];

/// Load generator for Aura and the Node.js ws baseline. Flags left unset
/// take the full-run default, or the quick default with --quick.
#[derive(Debug, Parser)]
#[command(name = "load")]
struct Args {
    /// Small sizes and short rounds so that every scenario finishes in under a minute.
    #[arg(long)]
    quick: bool,

    /// Scenarios to run, comma-separated: fanout, throughput, connections, durable, history.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,throughput,connections,durable,history"
    )]
    scenarios: Vec<String>,

    /// Servers to drive, comma-separated: aura, node.
    #[arg(long, value_delimiter = ',', default_value = "aura,node")]
    targets: Vec<String>,

    /// Measured rounds per figure, of which tables show the median [full: 3, quick: 1].
    #[arg(long)]
    repeats: Option<u32>,

    /// Subscriber counts of the fan-out scenario [full: 100,500,2000; quick: 100,500].
    #[arg(long, value_delimiter = ',')]
    fanout_subscribers: Option<Vec<usize>>,

    /// Messages per second that the fan-out publisher sends [default: 20].
    #[arg(long)]
    fanout_rate: Option<f64>,

    /// Length of one fan-out round in seconds [full: 5; quick: 2].
    #[arg(long)]
    fanout_seconds: Option<f64>,

    /// Channels of the throughput scenario, one publisher each [full: 10; quick: 4].
    #[arg(long)]
    throughput_channels: Option<usize>,

    /// Subscribers per channel in the throughput scenario [full: 50; quick: 25].
    #[arg(long)]
    throughput_subscribers: Option<usize>,

    /// Offered deliveries per second in the first throughput step [full: 20000; quick: 40000].
    #[arg(long)]
    throughput_start: Option<f64>,

    /// Factor between the offered rates of successive throughput steps [full: 1.25; quick: 2].
    #[arg(long)]
    throughput_factor: Option<f64>,

    /// Maximum number of throughput steps [full: 16; quick: 4].
    #[arg(long)]
    throughput_steps: Option<u32>,

    /// Length of one throughput step in seconds [full: 3; quick: 1.5].
    #[arg(long)]
    throughput_seconds: Option<f64>,

    /// p99 latency in ms under which a throughput step counts as sustained [default: 50].
    #[arg(long)]
    throughput_p99_ms: Option<f64>,

    /// Idle connection counts, each on a fresh server, capped by the open-file limit [full: 1000,5000,15000; quick: 2000].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,

    /// Seconds the idle connections stay open, with heartbeats, before memory is read [full: 10; quick: 2].
    #[arg(long)]
    connections_settle: Option<f64>,

    /// Sends in flight of the durable scenario, one level each [full: 1,64,512,2048; quick: 1,512].
    #[arg(long, value_delimiter = ',')]
    durable_in_flight: Option<Vec<usize>>,

    /// Maximum connections that a durable level spreads its sends over [default: 64].
    #[arg(long)]
    durable_connections: Option<usize>,

    /// Length of one durable round in seconds [full: 5; quick: 2].
    #[arg(long)]
    durable_seconds: Option<f64>,

    /// Messages in the history channel [full: 1000000; quick: 20000].
    #[arg(long)]
    history_messages: Option<u64>,

    /// Messages a resuming subscriber missed [default: 10000].
    #[arg(long)]
    history_missed: Option<u64>,

    /// Page reads per history measurement [full: 1000; quick: 100].
    #[arg(long)]
    history_queries: Option<usize>,

    /// Resumes per history measurement [full: 20; quick: 5].
    #[arg(long)]
    history_resumes: Option<usize>,

    /// Length of message content in bytes.
    #[arg(long, default_value_t = 100)]
    content_bytes: usize,

    /// Member accounts that connections use in turn.
    #[arg(long, default_value_t = 8)]
    users: usize,

    /// Loopback source addresses (127.0.0.2 and up) that connections spread over.
    #[arg(long, default_value_t = 8)]
    source_addresses: usize,

    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,

    /// The Aura binary [default: the one cargo built for this bench].
    #[arg(long)]
    aura_bin: Option<PathBuf>,

    /// Extra flag for `aura serve`, repeatable, such as --aura-arg=--send-queue=4096.
    #[arg(long = "aura-arg", allow_hyphen_values = true)]
    aura_args: Vec<String>,

    /// The Node.js executable for the baseline.
    #[arg(long, default_value = "node")]
    node: String,

    /// Directory of the JSON records [default: target/bench-results].
    #[arg(long)]
    out: Option<PathBuf>,

    /// Before each measurement, wait up to this many seconds until other
    /// processes use under 10% of one core, and repeat a measurement during
    /// which they used more than --max-other-cpu. 0 turns both off.
    #[arg(long, default_value_t = 0)]
    wait_idle: u64,

    /// Share of one core, in percent, that other processes may use during a
    /// measurement before it is repeated (with --wait-idle).
    #[arg(long, default_value_t = 20.0)]
    max_other_cpu: f64,

    /// Repeats of a noisy measurement before its result is kept anyway (with --wait-idle).
    #[arg(long, default_value_t = 3)]
    noisy_retries: u32,

    /// Passed by `cargo bench` and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The open-file limit before and after raising the soft limit to the hard limit.
#[derive(Debug, Clone, Copy)]
pub struct OpenFileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Settings shared by every scenario.
pub struct Bench {
    pub launch: Launch,
    pub targets: Vec<Kind>,
    pub sources: usize,
    pub content_bytes: usize,
    pub repeats: u32,
    pub open_files: OpenFileLimit,
    pub quiet: Quiet,
}

impl Bench {
    /// Returns the launch settings with `channels` load channels.
    pub fn launch_with(&self, channels: usize) -> Launch {
        Launch {
            channels,
            ..self.launch.clone()
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Raised before any server starts: children inherit the limit.
    let open_files = match raise_open_file_limit() {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, open_files)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, open_files: OpenFileLimit) -> anyhow::Result<()> {
    for scenario in &args.scenarios {
        if !SCENARIOS.contains(&scenario.as_str()) {
            bail!(
                "unknown scenario {scenario:?}: expected one of {}",
                SCENARIOS.join(", ")
            );
        }
    }
    let targets = args
        .targets
        .iter()
        .map(|name| Kind::parse(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| manifest.join("target").join("bench-results"));
    let quick = args.quick;
    let pick = |full, fast| if quick { fast } else { full };

    let bench = Bench {
        launch: Launch {
            aura_bin: args
                .aura_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aura"))),
            aura_args: args.aura_args.clone(),
            node: args.node.clone(),
            baseline_dir: manifest.join("benches").join("baseline"),
            work_dir: out_dir.join("work"),
            users: args.users,
            channels: 1,
        },
        targets,
        sources: args.source_addresses,
        content_bytes: args.content_bytes,
        repeats: args.repeats.unwrap_or(pick(3, 1)),
        open_files,
        quiet: Quiet {
            wait: Duration::from_secs(args.wait_idle),
            max_other_percent: args.max_other_cpu,
            retries: args.noisy_retries,
        },
    };
    let machine = report::machine();
    println!(
        "load generator: {} cores, {} MiB; client threads {}; open-file limit {} (hard {}); targets {:?}",
        machine["cores"],
        machine["memory_mib"],
        args.client_threads,
        open_files.soft,
        open_files.hard,
        bench.targets.iter().map(|kind| kind.name()).collect::<Vec<_>>()
    );
    let command_line: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    let started = Instant::now();
    // Checked once: before a later scenario, the average includes the load of the earlier ones.
    let load_average = cpu::load_average();
    if load_average > 1.0 {
        println!(
            "warning: the load average is {load_average:.1}: other work shares the cores, watch the other CPU % column"
        );
    }

    for scenario in SCENARIOS {
        if !args.scenarios.iter().any(|wanted| wanted == scenario) {
            continue;
        }
        let load_average_before = cpu::load_average();
        let scenario_started = Instant::now();
        let results = run_scenario(scenario, &args, &bench, quick)
            .await
            .with_context(|| format!("scenario {scenario} failed"))?;
        let record = json!({
            "scenario": scenario,
            "quick": quick,
            "arguments": command_line,
            "machine": machine,
            "client_threads": args.client_threads,
            "aura_args": args.aura_args,
            "node_version": node_version(&args.node),
            "load_average_before": load_average_before,
            "seconds": scenario_started.elapsed().as_secs_f64(),
            "data": results,
        });
        let path = report::write_record(&out_dir, scenario, &record)?;
        println!(
            "{scenario}: {:.1} s; record written to {}",
            scenario_started.elapsed().as_secs_f64(),
            path.display()
        );
    }
    println!("all scenarios took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn run_scenario(scenario: &str, args: &Args, bench: &Bench, quick: bool) -> anyhow::Result<Value> {
    let pick = |full: f64, fast: f64| if quick { fast } else { full };
    let seconds = |value: f64| Duration::from_secs_f64(value);
    match scenario {
        "fanout" => {
            let settings = FanoutSettings {
                subscribers: args.fanout_subscribers.clone().unwrap_or(if quick {
                    vec![100, 500]
                } else {
                    vec![100, 500, 2000]
                }),
                rate: args.fanout_rate.unwrap_or(20.0),
                round: seconds(args.fanout_seconds.unwrap_or(pick(5.0, 2.0))),
                warmup: seconds(pick(1.0, 0.5)),
            };
            fanout::run(bench, &settings).await
        }
        "throughput" => {
            let settings = ThroughputSettings {
                channels: args.throughput_channels.unwrap_or(if quick { 4 } else { 10 }),
                subscribers_per_channel: args.throughput_subscribers.unwrap_or(if quick { 25 } else { 50 }),
                start: args.throughput_start.unwrap_or(pick(20_000.0, 40_000.0)),
                factor: args.throughput_factor.unwrap_or(pick(1.25, 2.0)),
                max_steps: args.throughput_steps.unwrap_or(if quick { 4 } else { 16 }),
                step: seconds(args.throughput_seconds.unwrap_or(pick(3.0, 1.5))),
                p99_limit: seconds(args.throughput_p99_ms.unwrap_or(50.0) / 1e3),
            };
            throughput::run(bench, &settings).await
        }
        "connections" => {
            let settings = ConnectionSettings {
                counts: args
                    .connections
                    .clone()
                    .unwrap_or(if quick { vec![2000] } else { vec![1000, 5000, 15_000] }),
                settle: seconds(args.connections_settle.unwrap_or(pick(10.0, 2.0))),
            };
            connections::run(bench, &settings).await
        }
        "durable" => {
            let settings = DurableSettings {
                in_flight: args.durable_in_flight.clone().unwrap_or(if quick {
                    vec![1, 512]
                } else {
                    vec![1, 64, 512, 2048]
                }),
                max_connections: args.durable_connections.unwrap_or(64),
                round: seconds(args.durable_seconds.unwrap_or(pick(5.0, 2.0))),
                warmup: seconds(pick(1.0, 0.5)),
                channels: 8,
            };
            durable::run(bench, &settings).await
        }
        "history" => {
            let settings = HistorySettings {
                messages: args.history_messages.unwrap_or(if quick { 20_000 } else { 1_000_000 }),
                missed: args.history_missed.unwrap_or(10_000),
                queries: args.history_queries.unwrap_or(if quick { 100 } else { 1000 }),
                resumes: args.history_resumes.unwrap_or(if quick { 5 } else { 20 }),
                fill_connections: 16,
                fill_window: 128,
                fill_timeout: Duration::from_secs(1800),
            };
            history::run(bench, &settings).await
        }
        other => bail!("unknown scenario {other:?}"),
    }
}

/// Raises the soft open-file limit to the hard limit, so that this process
/// and the servers it starts can hold as many connections as allowed.
fn raise_open_file_limit() -> anyhow::Result<OpenFileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE) failed");
        }
        let soft_before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE) failed");
        }
        Ok(OpenFileLimit {
            soft_before,
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        })
    }
}

fn node_version(node: &str) -> Option<String> {
    let output = std::process::Command::new(node).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
