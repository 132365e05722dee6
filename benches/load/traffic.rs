//! Live traffic for the fan-out and throughput scenarios: channels that each
//! have one publisher connection and a set of subscriber connections.
//!
//! A run is a series of steps. In each step every publisher sends at a
//! given rate for a given time, and writes the step number, a sequence
//! number and its send time (from [`now_nanos`]) at the start of each
//! message's content. Each subscriber subtracts that send time from its
//! receipt time and records the difference in the step's histogram.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, heartbeat, now_nanos, op_of, Endpoint, Probe, Ws, HEARTBEAT};
use crate::report::latency_histogram;
use crate::target::Target;

/// Histogram shards. Subscribers record into shard `index % SHARDS`, so that
/// the client threads rarely wait for one another's lock.
const SHARDS: usize = 16;

/// Connections opened at the same time while a rig is set up.
const CONNECT_CONCURRENCY: usize = 64;

/// Maximum wait, after the publishers stop, for the last deliveries of a step.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The shape of a rig.
#[derive(Debug, Clone)]
pub struct RigSpec {
    /// Channel ids, each with one publisher.
    pub channels: Vec<String>,
    pub subscribers_per_channel: usize,
    /// Length of each message's content in bytes.
    pub content_bytes: usize,
    /// Steps are numbered from 0 to `steps - 1`, and a larger step number is not recorded.
    pub steps: u32,
    /// For fan-out: also track when the last subscriber got each message,
    /// for at most this many messages per step.
    pub track_last: Option<u64>,
}

/// The outcome of one step.
#[derive(Debug)]
pub struct StepResult {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    /// From the first send of the step to the last receipt.
    pub window: Duration,
    /// Time from send to receipt at each subscriber.
    pub latency: Histogram<u64>,
    /// Time from send until the last subscriber had the message, for the
    /// messages that every subscriber received (fan-out only).
    pub last_subscriber: Option<Histogram<u64>>,
    /// Connections that closed or failed since the rig opened.
    pub closed: u64,
    /// `error` frames received since the rig opened.
    pub errors: u64,
}

impl StepResult {
    pub fn complete(&self) -> bool {
        self.delivered == self.expected && self.closed == 0 && self.errors == 0
    }

    /// Deliveries per second over the step's window.
    pub fn deliveries_per_second(&self) -> f64 {
        self.delivered as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Shared counters and histograms that subscribers record into.
struct Recorder {
    shards: Vec<Mutex<HashMap<u32, Histogram<u64>>>>,
    delivered: Vec<AtomicU64>,
    last_receipt: Vec<AtomicU64>,
    last: Option<LastTracker>,
    closed: AtomicU64,
    errors: AtomicU64,
}

/// Per message of a step: how many subscribers got it and when the last did.
struct LastTracker {
    per_step: u64,
    sent_at: Vec<AtomicU64>,
    receipts: Vec<AtomicU32>,
    latest_receipt: Vec<AtomicU64>,
}

impl LastTracker {
    fn new(steps: u32, per_step: u64) -> LastTracker {
        let slots = steps as usize * per_step as usize;
        LastTracker {
            per_step,
            sent_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            receipts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            latest_receipt: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, step: u32, seq: u64) -> Option<usize> {
        let index = step as u64 * self.per_step + seq;
        (seq < self.per_step && (index as usize) < self.sent_at.len()).then_some(index as usize)
    }
}

impl Recorder {
    fn new(spec: &RigSpec) -> Recorder {
        Recorder {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            delivered: (0..spec.steps).map(|_| AtomicU64::new(0)).collect(),
            last_receipt: (0..spec.steps).map(|_| AtomicU64::new(0)).collect(),
            last: spec.track_last.map(|per_step| LastTracker::new(spec.steps, per_step)),
            closed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn record(&self, shard: usize, probe: Probe, received: u64) {
        let step = probe.step as usize;
        if step >= self.delivered.len() {
            return;
        }
        let latency = received.saturating_sub(probe.sent_nanos);
        self.shards[shard % SHARDS]
            .lock()
            .entry(probe.step)
            .or_insert_with(latency_histogram)
            .saturating_record(latency);
        self.delivered[step].fetch_add(1, Ordering::Relaxed);
        self.last_receipt[step].fetch_max(received, Ordering::Relaxed);
        if let Some(last) = &self.last {
            if let Some(slot) = last.slot(probe.step, probe.seq) {
                last.receipts[slot].fetch_add(1, Ordering::Relaxed);
                last.latest_receipt[slot].fetch_max(received, Ordering::Relaxed);
            }
        }
    }

    /// Merges and removes the step's histograms from every shard.
    fn take_latency(&self, step: u32) -> Histogram<u64> {
        let mut merged = latency_histogram();
        for shard in &self.shards {
            if let Some(histogram) = shard.lock().remove(&step) {
                merged.add(&histogram).expect("histograms share bounds");
            }
        }
        merged
    }
}

/// A command to a publisher: send `rate` messages per second for `duration`.
struct Publish {
    step: u32,
    rate: f64,
    duration: Duration,
    done: oneshot::Sender<Published>,
}

/// A publisher's report of one step.
struct Published {
    sent: u64,
    started_nanos: u64,
}

/// Publishers and subscribers on one server.
pub struct Rig {
    spec: RigSpec,
    recorder: Arc<Recorder>,
    publishers: Vec<mpsc::Sender<Publish>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Rig {
    /// Connects the publishers and subscribers and subscribes every
    /// subscriber to its channel.
    pub async fn open(target: &Target, endpoint: &Arc<Endpoint>, spec: RigSpec) -> anyhow::Result<Rig> {
        let recorder = Arc::new(Recorder::new(&spec));
        let (stop, stopped) = watch::channel(false);
        let run_id = now_nanos();

        let subscriber_count = spec.channels.len() * spec.subscribers_per_channel;
        let connected = futures_util::stream::iter(0..subscriber_count)
            .map(|index| {
                let channel = spec.channels[index % spec.channels.len()].clone();
                let token = target.token(index).map(str::to_string);
                let endpoint = endpoint.clone();
                async move {
                    let mut ws = endpoint.connect(token.as_deref()).await?;
                    let subscribe = format!(r#"{{"op":"subscribe","channel":"{channel}","limit":1}}"#);
                    client::request(&mut ws, subscribe, "subscribed")
                        .await
                        .with_context(|| format!("subscribing to channel {channel} failed"))?;
                    Ok::<Ws, anyhow::Error>(ws)
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;

        let mut tasks = Vec::with_capacity(subscriber_count + spec.channels.len());
        for (index, ws) in connected.into_iter().enumerate() {
            let ws = ws.with_context(|| format!("opening subscriber {index} of {subscriber_count} failed"))?;
            tasks.push(tokio::spawn(subscribe_loop(
                ws,
                index,
                recorder.clone(),
                stopped.clone(),
            )));
        }

        let mut publishers = Vec::with_capacity(spec.channels.len());
        for (index, channel) in spec.channels.iter().enumerate() {
            let ws = endpoint
                .connect(target.token(subscriber_count + index))
                .await
                .context("opening a publisher failed")?;
            let (commands, received) = mpsc::channel(1);
            let publisher = Publisher {
                ws,
                channel: channel.clone(),
                nonce_prefix: format!("f{run_id}.{index}"),
                content_bytes: spec.content_bytes,
                recorder: recorder.clone(),
            };
            tasks.push(tokio::spawn(publisher.run(received, stopped.clone())));
            publishers.push(commands);
        }
        Ok(Rig {
            spec,
            recorder,
            publishers,
            tasks,
            stop,
        })
    }

    /// Runs one step: every publisher sends `rate_per_publisher` messages per
    /// second for `duration`, then the step waits for the last deliveries.
    pub async fn run_step(&self, step: u32, rate_per_publisher: f64, duration: Duration) -> anyhow::Result<StepResult> {
        if step >= self.spec.steps {
            bail!("step {step} is beyond the rig's {} steps", self.spec.steps);
        }
        let mut reports = Vec::with_capacity(self.publishers.len());
        for publisher in &self.publishers {
            let (done, report) = oneshot::channel();
            let command = Publish {
                step,
                rate: rate_per_publisher,
                duration,
                done,
            };
            publisher.send(command).await.context("a publisher has stopped")?;
            reports.push(report);
        }
        let mut sent = 0;
        let mut started = u64::MAX;
        for report in reports {
            let published = tokio::time::timeout(duration + DRAIN_TIMEOUT, report)
                .await
                .context("a publisher did not finish its step in time")?
                .context("a publisher stopped during the step")?;
            sent += published.sent;
            started = started.min(published.started_nanos);
        }

        let expected = sent * self.spec.subscribers_per_channel as u64;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let delivered_counter = &self.recorder.delivered[step as usize];
        while delivered_counter.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            if self.recorder.closed.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delivered = delivered_counter.load(Ordering::Relaxed);
        let last_receipt = self.recorder.last_receipt[step as usize].load(Ordering::Relaxed);
        let window = Duration::from_nanos(last_receipt.saturating_sub(started));
        Ok(StepResult {
            sent,
            expected,
            delivered,
            window,
            latency: self.recorder.take_latency(step),
            last_subscriber: self.last_subscriber(step, sent),
            closed: self.recorder.closed.load(Ordering::Relaxed),
            errors: self.recorder.errors.load(Ordering::Relaxed),
        })
    }

    fn last_subscriber(&self, step: u32, sent: u64) -> Option<Histogram<u64>> {
        let last = self.recorder.last.as_ref()?;
        let everyone = self.spec.subscribers_per_channel as u32;
        let mut histogram = latency_histogram();
        for seq in 0..sent {
            let Some(slot) = last.slot(step, seq) else { break };
            if last.receipts[slot].load(Ordering::Relaxed) == everyone {
                let sent_at = last.sent_at[slot].load(Ordering::Relaxed);
                let latest = last.latest_receipt[slot].load(Ordering::Relaxed);
                histogram.saturating_record(latest.saturating_sub(sent_at));
            }
        }
        Some(histogram)
    }

    /// Closes every connection and waits, boundedly, for the tasks to end.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        drop(self.publishers);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                eprintln!("warning: a client task did not stop within 5 s");
            }
        }
    }
}

async fn subscribe_loop(mut ws: Ws, index: usize, recorder: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => {
                if ws.send(heartbeat()).await.is_err() {
                    recorder.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let received = now_nanos();
                    match op_of(&text) {
                        Some("message") => {
                            if let Some(probe) = Probe::parse(&text) {
                                recorder.record(index, probe, received);
                            }
                        }
                        Some("error") => {
                            recorder.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    eprintln!("subscriber {index}: server closed the connection: {frame:?}");
                    recorder.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    eprintln!("subscriber {index}: {error}");
                    recorder.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {
                    recorder.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// One publisher connection.
struct Publisher {
    ws: Ws,
    channel: String,
    nonce_prefix: String,
    content_bytes: usize,
    recorder: Arc<Recorder>,
}

/// A step in progress on one publisher.
struct Active {
    command: Publish,
    start: Instant,
    started_nanos: u64,
    sent: u64,
}

impl Publisher {
    async fn run(mut self, mut commands: mpsc::Receiver<Publish>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        let mut active: Option<Active> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                command = commands.recv(), if active.is_none() => {
                    let Some(command) = command else { break };
                    active = Some(Active { command, start: Instant::now(), started_nanos: now_nanos(), sent: 0 });
                }
                _ = tick.tick(), if active.is_some() => {
                    let step = active.as_mut().expect("guarded by the branch condition");
                    if let Err(error) = self.send_due(step).await {
                        eprintln!("publisher on channel {}: {error}", self.channel);
                        self.recorder.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if step.start.elapsed() >= step.command.duration {
                        let finished = active.take().expect("guarded by the branch condition");
                        let _ = finished.command.done.send(Published { sent: finished.sent, started_nanos: finished.started_nanos });
                    }
                }
                _ = beat.tick() => {
                    if self.ws.send(heartbeat()).await.is_err() {
                        self.recorder.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                frame = self.ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if op_of(&text) == Some("error") {
                            eprintln!("publisher on channel {}: {}", self.channel, client::preview(&text));
                            self.recorder.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        eprintln!("publisher on channel {}: server closed the connection: {frame:?}", self.channel);
                        self.recorder.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        self.recorder.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Sends the messages that the step's rate makes due by now, in one flush.
    async fn send_due(&mut self, step: &mut Active) -> anyhow::Result<()> {
        let elapsed = step.start.elapsed().min(step.command.duration);
        let due = (step.command.rate * elapsed.as_secs_f64()).floor() as u64;
        if due <= step.sent {
            return Ok(());
        }
        while step.sent < due {
            let probe = Probe {
                step: step.command.step,
                seq: step.sent,
                sent_nanos: now_nanos(),
            };
            if let Some(last) = &self.recorder.last {
                if let Some(slot) = last.slot(probe.step, probe.seq) {
                    last.sent_at[slot].store(probe.sent_nanos, Ordering::Relaxed);
                }
            }
            let frame = format!(
                r#"{{"op":"send","channel":"{}","content":"{}","nonce":"{}.{}.{}"}}"#,
                self.channel,
                probe.content(self.content_bytes),
                self.nonce_prefix,
                probe.step,
                probe.seq
            );
            self.ws.feed(Message::Text(frame)).await?;
            step.sent += 1;
        }
        self.ws.flush().await?;
        Ok(())
    }
}
