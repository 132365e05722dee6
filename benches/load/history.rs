//! Scenario 5, history: fills one channel with N messages through the
//! durable send path, then measures reading a page of 100 at random points
//! and resuming a subscriber that missed the last M messages. Aura only:
//! the baseline stores nothing.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};

use crate::client::{self, Endpoint, Ws};
use crate::durable::{PoolSpec, SenderPool};
use crate::report::{count, latency_histogram, ms, Latency, Table};
use crate::target::{Kind, Target};
use crate::Bench;

/// Messages per page in the page-read measurements.
const PAGE: usize = 100;

/// Largest page the protocol returns, used to catch up after a gap.
const MAX_PAGE: usize = 200;

#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Messages in the channel.
    pub messages: u64,
    /// Messages a resuming subscriber missed.
    pub missed: u64,
    /// Page reads per measurement.
    pub queries: usize,
    /// Resumes per measurement.
    pub resumes: usize,
    /// Connections and in-flight sends per connection used to fill the channel.
    pub fill_connections: usize,
    pub fill_window: usize,
    /// Maximum time the fill may take.
    pub fill_timeout: Duration,
}

pub async fn run(bench: &Bench, settings: &HistorySettings) -> anyhow::Result<Value> {
    if !bench.targets.contains(&Kind::Aura) {
        println!("history: skipped, it needs the aura target");
        return Ok(json!({"skipped": "the history scenario runs on aura only"}));
    }
    ensure!(
        settings.messages > settings.missed + PAGE as u64,
        "--history-messages must exceed --history-missed + {PAGE}"
    );
    let target = Target::start(Kind::Aura, &bench.launch_with(1), "history").await?;
    let endpoint = Endpoint::new(target.addr, bench.sources);
    let channel = target.channels[0].clone();

    println!(
        "history: filling a channel with {} messages",
        count(settings.messages as f64)
    );
    let (ids, fill_seconds) = fill(bench, settings, &target, &endpoint, &channel).await?;
    let fill_rate = ids.len() as f64 / fill_seconds;
    println!("  filled in {fill_seconds:.1} s ({} acks/s)", count(fill_rate));
    let disk_bytes = directory_bytes(target.data_dir().expect("aura has a data directory"));

    let mut ws = endpoint.connect(target.token(0)).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", target.addr);
    let token = target.token(0).expect("aura has tokens").to_string();

    let quiet = bench.quiet;
    let pid = target.pid();
    quiet.settle(pid).await;
    let newest = newest_pages(&mut ws, &channel, settings.queries).await?;
    quiet.settle(pid).await;
    let random_ws = random_pages_ws(&mut ws, &channel, &ids, settings.queries).await?;
    quiet.settle(pid).await;
    let random_http = random_pages_http(&http, &base, &token, &channel, &ids, settings.queries).await?;
    let resume_after = ids[ids.len() - settings.missed as usize - 1];
    quiet.settle(pid).await;
    let resume = resumes_ws(&mut ws, &channel, resume_after, settings.resumes).await?;
    quiet.settle(pid).await;
    let catch_up = catch_ups_http(
        &http,
        &base,
        &token,
        &channel,
        resume_after,
        settings.missed,
        settings.resumes,
    )
    .await?;
    let _ = ws.close(None).await;
    target.stop().await;

    let rows = [
        ("newest page of 100, WebSocket history", Latency::of(&newest)),
        (
            "page of 100 at a random point, WebSocket history",
            Latency::of(&random_ws),
        ),
        (
            "page of 100 at a random point, HTTP GET before=",
            Latency::of(&random_http),
        ),
        (
            "resume after missing N: subscribe until `subscribed` (200 newest, gap)",
            Latency::of(&resume),
        ),
        (
            "resume after missing N: all N changes over HTTP after= pages of 200",
            Latency::of(&catch_up),
        ),
    ];
    let mut table = Table::new(
        &format!(
            "History on a channel of {} messages ({} on disk), N = {}: latency in ms",
            count(ids.len() as f64),
            mib(disk_bytes),
            count(settings.missed as f64)
        ),
        &["read", "count", "p50", "p99", "max"],
    );
    for (name, latency) in &rows {
        table.row(vec![
            name.to_string(),
            count(latency.count as f64),
            ms(latency.p50),
            ms(latency.p99),
            ms(latency.max),
        ]);
    }
    table.print();

    Ok(json!({
        "settings": {
            "messages": settings.messages,
            "missed": settings.missed,
            "queries": settings.queries,
            "resumes": settings.resumes,
            "fill_connections": settings.fill_connections,
            "fill_window": settings.fill_window,
        },
        "fill": {"messages": ids.len(), "seconds": fill_seconds, "acks_per_second": fill_rate, "disk_bytes": disk_bytes},
        "results": rows.iter().map(|(name, latency)| json!({"read": name, "latency": latency.to_json()})).collect::<Vec<_>>(),
    }))
}

/// Sends the messages through the durable path and returns their ids in
/// order and the time the fill took.
async fn fill(
    bench: &Bench,
    settings: &HistorySettings,
    target: &Target,
    endpoint: &Endpoint,
    channel: &str,
) -> anyhow::Result<(Vec<u64>, f64)> {
    let spec = PoolSpec {
        connections: settings.fill_connections,
        window: settings.fill_window,
        channels: vec![channel.to_string()],
        content_bytes: bench.content_bytes,
        budget: Some(settings.messages),
        collect_ids: true,
    };

    let started = Instant::now();
    let pool = SenderPool::open(target, endpoint, spec).await?;
    let deadline = started + settings.fill_timeout;
    let mut reported = Instant::now();
    while pool.acks() < settings.messages && Instant::now() < deadline {
        if pool.closed() > 0 {
            bail!("a connection closed while filling the channel");
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            println!(
                "  {} of {} acknowledged",
                count(pool.acks() as f64),
                count(settings.messages as f64)
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let errors = pool.errors();
    let (_, mut ids) = pool.finish().await;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        ids.len() as u64 == settings.messages,
        "only {} of {} messages were acknowledged within {:?} ({errors} error frames)",
        ids.len(),
        settings.messages,
        settings.fill_timeout
    );
    ids.sort_unstable();
    Ok((ids, seconds))
}

/// Sends a request and returns the reply and the time until it arrived,
/// measured before the reply is parsed.
async fn timed(ws: &mut Ws, frame: String, op: &str) -> anyhow::Result<(Value, u64)> {
    let started = Instant::now();
    let reply = client::request(ws, frame, op).await?;
    let nanos = started.elapsed().as_nanos() as u64;
    Ok((serde_json::from_str(&reply)?, nanos))
}

async fn newest_pages(ws: &mut Ws, channel: &str, queries: usize) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    for _ in 0..queries {
        let frame = format!(r#"{{"op":"history","channel":"{channel}","limit":{PAGE}}}"#);
        let (reply, nanos) = timed(ws, frame, "history").await?;
        check_page(&reply, PAGE)?;
        histogram.saturating_record(nanos);
    }
    Ok(histogram)
}

async fn random_pages_ws(ws: &mut Ws, channel: &str, ids: &[u64], queries: usize) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    for _ in 0..queries {
        let before = ids[rand::thread_rng().gen_range(PAGE..ids.len())];
        let frame = format!(r#"{{"op":"history","channel":"{channel}","before":"{before}","limit":{PAGE}}}"#);
        let (reply, nanos) = timed(ws, frame, "history").await?;
        check_page(&reply, PAGE)?;
        histogram.saturating_record(nanos);
    }
    Ok(histogram)
}

async fn random_pages_http(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    channel: &str,
    ids: &[u64],
    queries: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    for _ in 0..queries {
        let before = ids[rand::thread_rng().gen_range(PAGE..ids.len())];
        let url = format!("{base}/api/channels/{channel}/messages?before={before}&limit={PAGE}");
        let (reply, nanos) = get_timed(http, &url, token).await?;
        check_page(&reply, PAGE)?;
        histogram.saturating_record(nanos);
    }
    Ok(histogram)
}

/// Subscribes after `after`, which `missed` messages follow, and times the
/// `subscribed` frame: the newest 200 changes and `gap: true`.
async fn resumes_ws(ws: &mut Ws, channel: &str, after: u64, resumes: usize) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    for _ in 0..resumes {
        let frame = format!(r#"{{"op":"subscribe","channel":"{channel}","after":"{after}","limit":{MAX_PAGE}}}"#);
        let (reply, nanos) = timed(ws, frame, "subscribed").await?;
        check_page(&reply, MAX_PAGE)?;
        ensure!(
            reply["gap"] == json!(true),
            "subscribe after {after} did not report a gap"
        );
        histogram.saturating_record(nanos);
        let unsubscribe = format!(r#"{{"op":"unsubscribe","channel":"{channel}"}}"#);
        futures_util::SinkExt::send(ws, tokio_tungstenite::tungstenite::Message::Text(unsubscribe)).await?;
    }
    Ok(histogram)
}

/// Times fetching every change after `after` over HTTP, 200 per request.
async fn catch_ups_http(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    channel: &str,
    after: u64,
    missed: u64,
    resumes: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    let max_requests = missed as usize / MAX_PAGE + 2;
    for _ in 0..resumes {
        let started = Instant::now();
        let mut cursor = after.to_string();
        let mut fetched = 0u64;
        for _ in 0..max_requests {
            let url = format!("{base}/api/channels/{channel}/messages?after={cursor}&limit={MAX_PAGE}");
            let (reply, _) = get_timed(http, &url, token).await?;
            let messages = reply["messages"].as_array().context("a page without messages")?;
            fetched += messages.len() as u64;
            if let Some(last) = messages.last() {
                cursor = last["rev"].as_str().context("a message without rev")?.to_string();
            }
            if reply["has_more"] != json!(true) {
                break;
            }
        }
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
        ensure!(
            fetched == missed,
            "catching up fetched {fetched} changes, expected {missed}"
        );
    }
    Ok(histogram)
}

async fn get_timed(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(Value, u64)> {
    let started = Instant::now();
    let response = http.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let nanos = started.elapsed().as_nanos() as u64;
    ensure!(
        status.is_success(),
        "GET {url} returned {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((serde_json::from_slice(&body)?, nanos))
}

fn check_page(reply: &Value, expected: usize) -> anyhow::Result<()> {
    let length = reply["messages"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(length == expected, "a page held {length} messages, expected {expected}");
    Ok(())
}

fn directory_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}
