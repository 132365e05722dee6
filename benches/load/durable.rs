//! Scenario 4, durable sends: connections that keep a fixed number of sends
//! in flight and send the next one when an `ack` arrives. Aura sends the
//! ack only once the message is on disk, so the ack rate is the rate of
//! durable sends and the time to the ack is the durability latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, heartbeat, now_nanos, op_of, string_field, Endpoint, Probe, Ws, HEARTBEAT};
use crate::cpu::CpuUsage;
use crate::report::{count, median, ms, Latency, Table};
use crate::target::{Kind, Target};
use crate::Bench;

/// Maximum wait for the acks still in flight when a pool stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DurableSettings {
    /// Sends in flight over all connections, one measurement each.
    pub in_flight: Vec<usize>,
    /// Maximum connections per level, which share the level's in-flight sends.
    pub max_connections: usize,
    pub round: Duration,
    pub warmup: Duration,
    /// Channels the connections spread over.
    pub channels: usize,
}

/// Connections that send with a window of unacknowledged sends.
pub struct SenderPool {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<Vec<u64>>>,
    stop: watch::Sender<bool>,
}

/// State the sender tasks share with the pool.
struct Shared {
    /// The round that new sends belong to, which their nonce carries.
    round: AtomicU32,
    acks: AtomicU64,
    errors: AtomicU64,
    closed: AtomicU64,
    /// Sends left when the pool was opened with a budget.
    budget: Option<AtomicI64>,
    /// Ack latency by round, sharded by connection.
    latency: Vec<Mutex<HashMap<u32, Histogram<u64>>>>,
}

/// Settings of a sender pool.
pub struct PoolSpec {
    pub connections: usize,
    pub window: usize,
    pub channels: Vec<String>,
    pub content_bytes: usize,
    /// Stop after this many sends in total.
    pub budget: Option<u64>,
    /// Keep the message id of every ack, returned by [`SenderPool::finish`].
    pub collect_ids: bool,
}

impl SenderPool {
    pub async fn open(target: &Target, endpoint: &Endpoint, spec: PoolSpec) -> anyhow::Result<SenderPool> {
        let shared = Arc::new(Shared {
            round: AtomicU32::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            budget: spec.budget.map(|budget| AtomicI64::new(budget as i64)),
            latency: (0..spec.connections).map(|_| Mutex::new(HashMap::new())).collect(),
        });
        let (stop, stopped) = watch::channel(false);
        let run_id = now_nanos();
        let mut tasks = Vec::with_capacity(spec.connections);
        for index in 0..spec.connections {
            let ws = endpoint
                .connect(target.token(index))
                .await
                .with_context(|| format!("opening sender {index} failed"))?;
            let sender = Sender {
                ws,
                index,
                channel: spec.channels[index % spec.channels.len()].clone(),
                nonce_prefix: format!("d{run_id}.{index}"),
                window: spec.window,
                content_bytes: spec.content_bytes,
                collect_ids: spec.collect_ids,
                shared: shared.clone(),
                seq: 0,
                in_flight: 0,
                ids: Vec::new(),
            };
            tasks.push(tokio::spawn(sender.run(stopped.clone())));
        }
        Ok(SenderPool { shared, tasks, stop })
    }

    pub fn set_round(&self, round: u32) {
        self.shared.round.store(round, Ordering::Relaxed);
    }

    pub fn acks(&self) -> u64 {
        self.shared.acks.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub fn closed(&self) -> u64 {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the acks in flight, and returns the ack
    /// latency of each round and the collected message ids.
    pub async fn finish(self) -> (HashMap<u32, Histogram<u64>>, Vec<u64>) {
        let _ = self.stop.send(true);
        let mut ids = Vec::new();
        for task in self.tasks {
            match tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), task).await {
                Ok(Ok(mut collected)) => ids.append(&mut collected),
                _ => eprintln!("warning: a sender did not stop in time"),
            }
        }
        let mut merged: HashMap<u32, Histogram<u64>> = HashMap::new();
        for shard in &self.shared.latency {
            for (round, histogram) in shard.lock().drain() {
                merged
                    .entry(round)
                    .or_insert_with(crate::report::latency_histogram)
                    .add(&histogram)
                    .expect("histograms share bounds");
            }
        }
        (merged, ids)
    }
}

/// One sending connection.
struct Sender {
    ws: Ws,
    index: usize,
    channel: String,
    nonce_prefix: String,
    window: usize,
    content_bytes: usize,
    collect_ids: bool,
    shared: Arc<Shared>,
    seq: u64,
    in_flight: usize,
    ids: Vec<u64>,
}

impl Sender {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Vec<u64> {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        let mut stopping = false;
        let drain_deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(drain_deadline);
        if self.fill(stopping).await.is_err() {
            self.shared.closed.fetch_add(1, Ordering::Relaxed);
            return self.ids;
        }
        loop {
            if stopping && self.in_flight == 0 {
                break;
            }
            tokio::select! {
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
                _ = &mut drain_deadline, if stopping => {
                    eprintln!("sender {}: {} acks still missing after {DRAIN_TIMEOUT:?}", self.index, self.in_flight);
                    break;
                }
                _ = beat.tick() => {
                    if self.ws.send(heartbeat()).await.is_err() {
                        self.shared.closed.fetch_add(1, Ordering::Relaxed);
                        return self.ids;
                    }
                }
                frame = self.ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            eprintln!("sender {}: server closed the connection: {frame:?}", self.index);
                            self.shared.closed.fetch_add(1, Ordering::Relaxed);
                            return self.ids;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => {
                            self.shared.closed.fetch_add(1, Ordering::Relaxed);
                            return self.ids;
                        }
                    };
                    self.handle(&text);
                    if self.fill(stopping).await.is_err() {
                        self.shared.closed.fetch_add(1, Ordering::Relaxed);
                        return self.ids;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        self.ids
    }

    /// Records an ack or an error reply.
    fn handle(&mut self, text: &str) {
        let received = now_nanos();
        match op_of(text) {
            Some("ack") => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.shared.acks.fetch_add(1, Ordering::Relaxed);
                if let Some((round, sent)) = string_field(text, "nonce").and_then(parse_nonce) {
                    self.shared.latency[self.index]
                        .lock()
                        .entry(round)
                        .or_insert_with(crate::report::latency_histogram)
                        .saturating_record(received.saturating_sub(sent));
                }
                if self.collect_ids {
                    if let Some(id) = string_field(text, "id").and_then(|id| id.parse().ok()) {
                        self.ids.push(id);
                    }
                }
            }
            Some("error") => {
                if self.shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("sender {}: {}", self.index, client::preview(text));
                }
                if string_field(text, "nonce").is_some() {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            }
            _ => {}
        }
    }

    /// Sends until the window is full, unless stopping or out of budget.
    async fn fill(&mut self, stopping: bool) -> anyhow::Result<()> {
        let mut queued = false;
        while !stopping && self.in_flight < self.window && self.take_budget() {
            let round = self.shared.round.load(Ordering::Relaxed);
            let sent = now_nanos();
            let probe = Probe {
                step: round,
                seq: self.seq,
                sent_nanos: sent,
            };
            let frame = format!(
                r#"{{"op":"send","channel":"{}","content":"{}","nonce":"{}.{}.{}.{}"}}"#,
                self.channel,
                probe.content(self.content_bytes),
                self.nonce_prefix,
                self.seq,
                round,
                sent
            );
            self.ws.feed(Message::Text(frame)).await?;
            self.seq += 1;
            self.in_flight += 1;
            queued = true;
        }
        if queued {
            self.ws.flush().await?;
        }
        Ok(())
    }

    fn take_budget(&self) -> bool {
        match &self.shared.budget {
            None => true,
            Some(budget) => budget.fetch_sub(1, Ordering::Relaxed) > 0,
        }
    }
}

/// Reads the round and send time from a nonce `PREFIX.INDEX.SEQ.ROUND.NANOS`.
fn parse_nonce(nonce: &str) -> Option<(u32, u64)> {
    let mut parts = nonce.rsplit('.');
    let sent = parts.next()?.parse().ok()?;
    let round = parts.next()?.parse().ok()?;
    Some((round, sent))
}

/// One measured level of in-flight sends.
#[derive(Debug, Clone)]
struct Level {
    kind: Kind,
    in_flight: usize,
    connections: usize,
    window: usize,
    rates: Vec<f64>,
    latencies: Vec<Latency>,
    cpu: Vec<CpuUsage>,
    errors: u64,
    closed: u64,
}

impl Level {
    fn rate(&self) -> f64 {
        median(&self.rates)
    }

    fn latency(&self) -> Latency {
        Latency::median_of(&self.latencies)
    }
}

pub async fn run(bench: &Bench, settings: &DurableSettings) -> anyhow::Result<Value> {
    let rounds = bench.repeats.max(1);
    let mut levels = Vec::new();
    for &kind in &bench.targets {
        let target = Target::start(kind, &bench.launch_with(settings.channels), "durable").await?;
        let endpoint = Endpoint::new(target.addr, bench.sources);
        for &in_flight in &settings.in_flight {
            let connections = in_flight.clamp(1, settings.max_connections.max(1));
            let window = in_flight.div_ceil(connections);
            println!(
                "durable: {} with {connections} connections x {window} in flight",
                kind.name()
            );
            let spec = PoolSpec {
                connections,
                window,
                channels: target.channels.clone(),
                content_bytes: bench.content_bytes,
                budget: None,
                collect_ids: false,
            };
            let pool = SenderPool::open(&target, &endpoint, spec).await?;
            tokio::time::sleep(settings.warmup).await;

            let mut level = Level {
                kind,
                in_flight: connections * window,
                connections,
                window,
                rates: Vec::new(),
                latencies: Vec::new(),
                cpu: Vec::new(),
                errors: 0,
                closed: 0,
            };
            // Sends carry the number of the round they belong to, and round
            // 0 is not measured. A round disturbed by other processes is
            // repeated under a new number.
            let mut kept_rounds = Vec::new();
            let mut next_round = 0;
            for _ in 0..rounds {
                let mut attempt = 0;
                loop {
                    pool.set_round(0);
                    bench.quiet.settle(target.pid()).await;
                    next_round += 1;
                    pool.set_round(next_round);
                    let (acks_before, started) = (pool.acks(), Instant::now());
                    let before = target.cpu();
                    tokio::time::sleep(settings.round).await;
                    let elapsed = started.elapsed().as_secs_f64();
                    let cpu = target.cpu().usage_since(&before);
                    if bench.quiet.repeat(&cpu, attempt) {
                        attempt += 1;
                        continue;
                    }
                    level.rates.push((pool.acks() - acks_before) as f64 / elapsed);
                    level.cpu.push(cpu);
                    kept_rounds.push(next_round);
                    break;
                }
            }
            pool.set_round(0);
            level.errors = pool.errors();
            level.closed = pool.closed();
            let (latency, _) = pool.finish().await;
            for round in kept_rounds {
                level
                    .latencies
                    .push(latency.get(&round).map(Latency::of).unwrap_or_default());
            }
            levels.push(level);
        }
        target.stop().await;
    }
    print_table(&levels, settings, rounds);

    let records: Vec<Value> = levels
        .iter()
        .map(|level| {
            json!({
                "server": level.kind.name(),
                "durable": level.kind == Kind::Aura,
                "in_flight": level.in_flight,
                "connections": level.connections,
                "window_per_connection": level.window,
                "acks_per_second_by_round": level.rates,
                "ack_latency_by_round": level.latencies.iter().map(|latency| latency.to_json()).collect::<Vec<_>>(),
                "cpu_by_round": level.cpu.iter().map(|cpu| cpu.to_json()).collect::<Vec<_>>(),
                "median": {"acks_per_second": level.rate(), "ack_latency": level.latency().to_json()},
                "error_frames": level.errors,
                "closed_connections": level.closed,
            })
        })
        .collect();
    Ok(json!({"settings": {
        "in_flight": settings.in_flight,
        "max_connections": settings.max_connections,
        "round_seconds": settings.round.as_secs_f64(),
        "warmup_seconds": settings.warmup.as_secs_f64(),
        "rounds": rounds,
        "channels": settings.channels,
    }, "results": records}))
}

fn print_table(levels: &[Level], settings: &DurableSettings, rounds: u32) {
    let mut table = Table::new(
        &format!(
            "Durable sends: acks per second and send-to-ack latency in ms, medians over {rounds} round(s) of {:?} (node-ws stores nothing: reference only)",
            settings.round
        ),
        &[
            "server", "in flight", "connections", "acks/s", "p50", "p99", "p99.9", "max", "errors", "server CPU %",
            "loadgen CPU %", "other CPU %",
        ],
    );
    for level in levels {
        let latency = level.latency();
        let [server_cpu, loadgen_cpu, other_cpu] = CpuUsage::median_of(&level.cpu).cells();
        table.row(vec![
            level.kind.name().to_string(),
            count(level.in_flight as f64),
            count(level.connections as f64),
            count(level.rate()),
            ms(latency.p50),
            ms(latency.p99),
            ms(latency.p999),
            ms(latency.max),
            count((level.errors + level.closed) as f64),
            server_cpu,
            loadgen_cpu,
            other_cpu,
        ]);
    }
    table.print();
}
