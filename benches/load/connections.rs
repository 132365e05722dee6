//! Scenario 3, connections: C idle authenticated WebSockets that send
//! heartbeats, spread over several loopback source addresses, and the
//! server's resident memory per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{heartbeat, Endpoint, Ws, HEARTBEAT};
use crate::report::{count, ratio, Table};
use crate::target::{Kind, Target};
use crate::Bench;

/// File descriptors kept free in each process for logs, the database,
/// the listener and HTTP clients.
const RESERVED_FILES: u64 = 512;

/// Connections opened at the same time.
const CONNECT_CONCURRENCY: usize = 128;

#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Connection counts to try, each on a fresh server.
    pub counts: Vec<usize>,
    /// How long the connections stay idle, sending heartbeats, before the
    /// server's memory is read.
    pub settle: Duration,
}

/// One measured count.
#[derive(Debug, Clone)]
struct Measured {
    kind: Kind,
    requested: usize,
    opened: usize,
    alive: usize,
    open_seconds: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    peak_kib: u64,
    first_error: Option<String>,
}

impl Measured {
    fn bytes_per_connection(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024) as f64 / self.opened.max(1) as f64
    }
}

pub async fn run(bench: &Bench, settings: &ConnectionSettings) -> anyhow::Result<Value> {
    let usable = bench.open_files.soft.saturating_sub(RESERVED_FILES) as usize;
    println!(
        "connections: open-file limit {} (soft) / {} (hard), so at most {usable} connections per process",
        bench.open_files.soft, bench.open_files.hard
    );
    let mut measured = Vec::new();
    for &kind in &bench.targets {
        for &requested in &settings.counts {
            let target_count = requested.min(usable);
            if target_count < requested {
                println!("connections: {requested} requested, {target_count} allowed by the open-file limit");
            }
            println!("connections: {} with {target_count} idle connections", kind.name());
            measured.push(measure(bench, settings, kind, requested, target_count).await?);
        }
    }
    print_table(&measured, settings);

    let records: Vec<Value> = measured
        .iter()
        .map(|m| {
            json!({
                "server": m.kind.name(),
                "requested": m.requested,
                "opened": m.opened,
                "alive_after_settle": m.alive,
                "open_seconds": m.open_seconds,
                "rss_before_kib": m.rss_before_kib,
                "rss_after_kib": m.rss_after_kib,
                "peak_rss_kib": m.peak_kib,
                "bytes_per_connection": m.bytes_per_connection(),
                "first_error": m.first_error,
            })
        })
        .collect();
    Ok(json!({"settings": {
        "counts": settings.counts,
        "settle_seconds": settings.settle.as_secs_f64(),
        "source_addresses": bench.sources,
        "open_file_limit": {"soft": bench.open_files.soft, "hard": bench.open_files.hard, "soft_before": bench.open_files.soft_before},
        "usable_connections": usable,
    }, "results": records}))
}

async fn measure(
    bench: &Bench,
    settings: &ConnectionSettings,
    kind: Kind,
    requested: usize,
    target_count: usize,
) -> anyhow::Result<Measured> {
    let target = Target::start(kind, &bench.launch_with(1), &format!("connections-{target_count}")).await?;
    let endpoint = Arc::new(Endpoint::new(target.addr, bench.sources));
    tokio::time::sleep(Duration::from_millis(500)).await;
    bench.quiet.settle(target.pid()).await;
    let rss_before_kib = target.rss_kib()?;

    let closed = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let results = futures_util::stream::iter(0..target_count)
        .map(|index| {
            let endpoint = endpoint.clone();
            let token = target.token(index).map(str::to_string);
            async move { endpoint.connect(token.as_deref()).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();

    let mut tasks = Vec::with_capacity(target_count);
    let mut first_error = None;
    for result in results {
        match result {
            Ok(ws) => tasks.push(tokio::spawn(idle(ws, closed.clone(), stopped.clone()))),
            Err(error) => {
                if first_error.is_none() {
                    first_error = Some(format!("{error:#}"));
                }
            }
        }
    }
    let opened = tasks.len();
    if let Some(error) = &first_error {
        eprintln!(
            "connections: {} of {target_count} failed to open; first error: {error}",
            target_count - opened
        );
    }
    println!("  opened {opened} in {open_seconds:.1} s; idling {:?}", settings.settle);
    tokio::time::sleep(settings.settle).await;

    let rss_after_kib = target.rss_kib()?;
    let peak_kib = target.peak_rss_kib()?;
    let alive = opened - closed.load(Ordering::Relaxed) as usize;

    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    target.stop().await;
    Ok(Measured {
        kind,
        requested,
        opened,
        alive,
        open_seconds,
        rss_before_kib,
        rss_after_kib,
        peak_kib,
        first_error,
    })
}

/// Keeps a connection open, sending a heartbeat every [`HEARTBEAT`] from a
/// random offset so that the connections do not beat in step.
async fn idle(mut ws: Ws, closed: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let offset = Duration::from_millis(rand::thread_rng().gen_range(0..HEARTBEAT.as_millis() as u64));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => {
                if ws.send(heartbeat()).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
}

fn print_table(measured: &[Measured], settings: &ConnectionSettings) {
    let mut table = Table::new(
        &format!(
            "Idle connections with heartbeats, server memory read after {:?} idle",
            settings.settle
        ),
        &[
            "server",
            "requested",
            "opened",
            "alive",
            "open s",
            "RSS before MiB",
            "RSS after MiB",
            "peak MiB",
            "bytes/conn",
            "vs node",
        ],
    );
    for m in measured {
        let baseline = measured
            .iter()
            .find(|other| other.kind == Kind::Baseline && other.opened == m.opened)
            .map(Measured::bytes_per_connection)
            .unwrap_or(f64::NAN);
        table.row(vec![
            m.kind.name().to_string(),
            count(m.requested as f64),
            count(m.opened as f64),
            count(m.alive as f64),
            format!("{:.1}", m.open_seconds),
            format!("{:.1}", m.rss_before_kib as f64 / 1024.0),
            format!("{:.1}", m.rss_after_kib as f64 / 1024.0),
            format!("{:.1}", m.peak_kib as f64 / 1024.0),
            count(m.bytes_per_connection()),
            if m.kind == Kind::Aura {
                ratio(m.bytes_per_connection(), baseline)
            } else {
                "-".to_string()
            },
        ]);
    }
    table.print();
}
