//! Prometheus metrics, served at GET /metrics in the OpenMetrics text format.
//!
//! The hot path only touches atomics: counters and histogram buckets are
//! `AtomicU64`s updated with relaxed ordering, and no lock is taken per
//! message. Values that already exist elsewhere (connections, subscriptions,
//! queue depth, database size) are read once per scrape instead of being
//! tracked on every change.
//!
//! The endpoint is served to loopback peers that came without a proxy's
//! forwarding header, and to any peer that presents
//! `Authorization: Bearer <--metrics-token>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::error::ApiError;
use crate::server::App;

/// Content type of the OpenMetrics text format, which Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request headers that a reverse proxy adds; a loopback request that
/// carries one came from elsewhere through the proxy.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Open TCP connections, WebSockets included.
    pub tcp_connections: Gauge,
    /// New messages accepted (sends that created a message).
    pub messages_received: Counter,
    /// Message frames (new, edited, deleted) queued to subscribers.
    pub messages_delivered: Counter,
    /// Time from the start of a send to its frame queued at the last subscriber.
    pub fanout_seconds: AtomicHistogram,
    /// Message changes per committed write batch.
    pub write_batch_size: AtomicHistogram,
    /// Duration of the flush that makes a write batch durable.
    pub flush_seconds: AtomicHistogram,
    /// Write batches that failed.
    pub write_failures: Counter,
    /// Connections closed with 4008 because they could not keep up.
    pub slow_consumer_closes: Counter,
    websocket_connections: Gauge,
    subscriptions: Gauge,
    write_queue: Gauge,
    database_bytes: Gauge,
    disk_free_bytes: Gauge,
    writes_available: Gauge,
}

/// Values read once per scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub websocket_connections: i64,
    pub subscriptions: i64,
    pub write_queue: i64,
    pub database_bytes: i64,
    pub disk_free_bytes: i64,
    pub writes_available: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every metric and registers it under the `aura_` prefix.
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("aura"),
            tcp_connections: Gauge::default(),
            messages_received: Counter::default(),
            messages_delivered: Counter::default(),
            fanout_seconds: AtomicHistogram::seconds(&[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ]),
            write_batch_size: AtomicHistogram::counts(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]),
            flush_seconds: AtomicHistogram::seconds(&[
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            write_failures: Counter::default(),
            slow_consumer_closes: Counter::default(),
            websocket_connections: Gauge::default(),
            subscriptions: Gauge::default(),
            write_queue: Gauge::default(),
            database_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            writes_available: Gauge::default(),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&mut self) {
        let registry = &mut self.registry;
        registry.register("tcp_connections", "Open TCP connections, WebSockets included", self.tcp_connections.clone());
        registry.register("websocket_connections", "Open WebSocket connections", self.websocket_connections.clone());
        registry.register("subscriptions", "Live channel subscriptions over all WebSocket connections", self.subscriptions.clone());
        registry.register("messages_received", "New messages accepted from clients", self.messages_received.clone());
        registry.register(
            "messages_delivered",
            "Message frames (new, edited or deleted messages) queued to subscribers' outbound queues",
            self.messages_delivered.clone(),
        );
        registry.register_with_unit(
            "fanout",
            "Time from the start of a send to its message frame queued at the channel's last subscriber",
            Unit::Seconds,
            self.fanout_seconds.clone(),
        );
        registry.register("write_batch_size", "Message changes per committed write batch (group commit)", self.write_batch_size.clone());
        registry.register_with_unit(
            "flush",
            "Duration of the flush that makes one write batch durable",
            Unit::Seconds,
            self.flush_seconds.clone(),
        );
        registry.register("write_failures", "Write batches that failed; their senders got unavailable", self.write_failures.clone());
        registry.register("write_queue", "Requests waiting in the writer's queue", self.write_queue.clone());
        registry.register(
            "slow_consumer_closes",
            "WebSocket connections closed with 4008 because their outbound queue filled or a write stalled",
            self.slow_consumer_closes.clone(),
        );
        registry.register_with_unit("database", "Size of the sled database on disk", Unit::Bytes, self.database_bytes.clone());
        registry.register_with_unit(
            "disk_free",
            "Free space on the data directory's filesystem",
            Unit::Bytes,
            self.disk_free_bytes.clone(),
        );
        registry.register("writes_available", "1 while writes succeed, 0 after a write failed and until one succeeds again", self.writes_available.clone());
    }

    /// Sets the values read at scrape time and encodes every metric.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        self.websocket_connections.set(snapshot.websocket_connections);
        self.subscriptions.set(snapshot.subscriptions);
        self.write_queue.set(snapshot.write_queue);
        self.database_bytes.set(snapshot.database_bytes);
        self.disk_free_bytes.set(snapshot.disk_free_bytes);
        self.writes_available.set(i64::from(snapshot.writes_available));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        text
    }
}

/// A histogram whose buckets are atomics, so that observing takes no lock.
/// Values are integers in a raw unit (nanoseconds, say) that `scale`
/// converts to the exported unit.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: std::sync::Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in the raw unit, ascending; a value equal to a bound
    /// falls into that bound's bucket.
    bounds: Vec<u64>,
    /// Exported value of one raw unit.
    scale: f64,
    /// Non-cumulative counts: one per bound, then one for +Inf.
    buckets: Vec<AtomicU64>,
    /// Sum of observed values in the raw unit.
    sum: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: Vec<u64>, scale: f64) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            inner: std::sync::Arc::new(HistogramInner {
                bounds,
                scale,
                buckets,
                sum: AtomicU64::new(0),
            }),
        }
    }

    /// A histogram of durations with bounds in seconds, kept in nanoseconds.
    pub fn seconds(bounds: &[f64]) -> Self {
        let nanos = bounds.iter().map(|seconds| (seconds * 1e9).round() as u64).collect();
        Self::new(nanos, 1e-9)
    }

    /// A histogram of counts.
    pub fn counts(bounds: &[u64]) -> Self {
        Self::new(bounds.to_vec(), 1.0)
    }

    /// Records one value in the raw unit.
    pub fn observe(&self, value: u64) {
        let inner = &self.inner;
        let index = inner.bounds.partition_point(|bound| *bound < value);
        inner.buckets[index].fetch_add(1, Ordering::Relaxed);
        inner.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration in a histogram made by [`AtomicHistogram::seconds`].
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let mut buckets = Vec::with_capacity(inner.buckets.len());
        for (index, count) in inner.buckets.iter().enumerate() {
            let bound = inner.bounds.get(index).map_or(f64::INFINITY, |bound| *bound as f64 * inner.scale);
            buckets.push((bound, count.load(Ordering::Relaxed)));
        }
        // The count is the buckets' total, so it agrees with the +Inf bucket
        // even while observations run concurrently.
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 * inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Serves GET /metrics, or 403 when the peer may not read metrics.
pub fn respond(
    app: &App,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !may_read(app.config.metrics_token.as_deref(), peer, headers) {
        return Err(ApiError::forbidden(
            "metrics are served to loopback clients without a proxy, or with the --metrics-token bearer token",
        ));
    }
    let text = app.metrics.encode(app.metrics_snapshot());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Checks whether a request may read metrics: it presents the metrics
/// token, or it comes from loopback without a reverse proxy's forwarding header.
fn may_read(token: Option<&str>, peer: std::net::SocketAddr, headers: &HeaderMap) -> bool {
    if let Some(expected) = token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if presented.is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes())) {
            return true;
        }
    }
    let forwarded = FORWARDING_HEADERS.iter().any(|name| headers.contains_key(*name));
    peer.ip().to_canonical().is_loopback() && !forwarded
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_value_at_bound() {
        let histogram = AtomicHistogram::counts(&[1, 2, 4]);
        histogram.observe(2);
        histogram.observe(3);
        histogram.observe(9);
        let counts: Vec<u64> = histogram.inner.buckets.iter().map(|count| count.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, vec![0, 1, 1, 1], "2 falls into le=2, 3 into le=4, 9 into +Inf");
    }

    #[test]
    fn metrics_encode_histogram_in_seconds() {
        let metrics = Metrics::new();
        metrics.flush_seconds.observe_duration(Duration::from_millis(3));
        let text = metrics.encode(Snapshot::default());
        assert!(text.contains("aura_flush_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("aura_flush_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn proxied_loopback_request_needs_token() {
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert!(!may_read(Some("secret-token-1234"), peer, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer secret-token-1234"));
        assert!(may_read(Some("secret-token-1234"), peer, &headers));
    }
}
