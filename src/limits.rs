//! Connection and concurrency limits, and the client address they apply to.
//!
//! - Connections: `--max-connections` in total and `--max-connections-per-ip`
//!   per client address, checked when a TCP connection is accepted. A
//!   connection over a limit gets one HTTP error response (503 for the
//!   total, 429 per address) and is closed.
//! - WebSockets through a trusted proxy count against the forwarded address,
//!   checked before the upgrade. The per-user WebSocket cap is
//!   `--max-connections-per-user`, which the presence registry enforces
//!   with close code 4029, because browsers cannot read the status of a
//!   refused upgrade.
//! - API requests: `--max-api-concurrency` handled at once, and, in a
//!   separate pool, `--max-long-polls` long polls waiting at once, so that
//!   waiting polls never starve other requests. Over either: HTTP 503.
//! - Password hashes: `--max-password-hashes` computed at once, because
//!   each argon2 hash holds about 19 MiB while it runs.
//!
//! A client address is the TCP peer's IP, or the last X-Forwarded-For entry
//! when the peer is a `--trusted-proxy`. IPv6 addresses count per /64, the
//! block one host usually gets, so a host cannot escape a per-address
//! limit by rotating addresses inside its own block.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderMap;
use hyper::Method;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::ids::now_ms;

/// How long a request waits for a password-hashing permit before it gets 503.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// Retry hint sent with the 429 and 503 responses of this module, in ms.
pub const BUSY_RETRY_MS: u64 = 1000;

/// Maximum refused connections that get their error response at the same
/// time. Beyond this, a refused connection is closed without a response,
/// so a flood of refused connections costs no more than this many tasks.
pub const MAX_PENDING_REFUSALS: usize = 256;

/// Time a refused connection has to send its request head before it is
/// closed without an answer.
pub const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Minimum time between two warnings of one kind; repeats in between are
/// counted and reported with the next warning.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// The address a client connects from, as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    /// The client's IP: the TCP peer, or the forwarded address behind a trusted proxy.
    pub ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy, so `ip` came from X-Forwarded-For.
    pub via_proxy: bool,
}

/// What a request costs, which decides the pool it takes a permit from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// Static pages and the health check: no permit.
    Free,
    /// Every other API request and the WebSocket upgrade.
    Api,
    /// A poll with `wait` above 0, which may wait up to 30 s for a change.
    LongPoll,
}

/// Classifies a request by method, path and query.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestClass {
    if !path.starts_with("/api/") && path != "/ws" {
        return RequestClass::Free;
    }
    let waits = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("wait="))
        .any(|value| value.parse::<u64>().map_or(true, |seconds| seconds > 0));
    if *method == Method::GET && path.ends_with("/messages") && waits {
        RequestClass::LongPoll
    } else {
        RequestClass::Api
    }
}

/// Normalizes an IP for per-address counting: an IPv4-mapped IPv6 address
/// becomes IPv4, and any other IPv6 address becomes its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Parses the last entry of the X-Forwarded-For headers: the address that
/// the nearest proxy appended. Accepts `IP`, `IP:port` and `[IPv6]:port`.
pub fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last_header = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last_header.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|address| address.ip()))
}

/// A warning that is logged at most once per [`WARN_INTERVAL`].
#[derive(Debug, Default)]
pub struct RateLimitedWarning {
    /// When the warning was last logged, ms since the Unix epoch; 0 before the first.
    last_ms: AtomicU64,
    /// Occurrences since the last logged one.
    suppressed: AtomicU64,
}

impl RateLimitedWarning {
    /// Returns `Some(suppressed repeats)` when the warning should be logged now.
    pub fn due(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = WARN_INTERVAL.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < interval {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Counts per key. An entry exists only while its count is above zero, so
/// the map never contains more entries than open connections or sockets.
#[derive(Debug)]
struct Counts<K: std::hash::Hash + Eq>(Mutex<HashMap<K, usize>>);

impl<K: std::hash::Hash + Eq + Copy> Counts<K> {
    fn new() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }

    /// Adds one to `key`'s count unless it is already `max`.
    fn try_increment(&self, key: K, max: usize) -> bool {
        let mut counts = self.0.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return false;
        }
        *count += 1;
        true
    }

    fn decrement(&self, key: K) {
        let mut counts = self.0.lock();
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// The connection and concurrency limits of one server.
pub struct Limits {
    max_connections: usize,
    max_per_address: usize,
    trusted_proxies: Vec<IpAddr>,
    /// Open TCP connections that were admitted; at most `--max-connections`.
    connections: AtomicUsize,
    /// Open connections per address key, and WebSockets per forwarded
    /// address key for connections through a trusted proxy.
    per_address: Counts<IpAddr>,
    /// Permits for API requests in progress: `--max-api-concurrency`.
    api: Arc<Semaphore>,
    /// Permits for long polls in progress: `--max-long-polls`.
    long_polls: Arc<Semaphore>,
    /// Permits for password hashes in progress: `--max-password-hashes`.
    hashes: Arc<Semaphore>,
    /// Refused connections being answered; at most [`MAX_PENDING_REFUSALS`].
    refusals: AtomicUsize,
    refused_warning: RateLimitedWarning,
    busy_warning: RateLimitedWarning,
    forwarded_warning: RateLimitedWarning,
}

/// An admitted TCP connection; dropping it frees its place.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    address: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(address) = self.address {
            self.limits.per_address.decrement(address);
        }
    }
}

/// An admitted WebSocket; dropping it frees its place.
pub struct SocketSlot {
    limits: Arc<Limits>,
    forwarded_address: Option<IpAddr>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Some(address) = self.forwarded_address {
            self.limits.per_address.decrement(address);
        }
    }
}

/// A refused connection being answered; dropping it frees its place.
pub struct RefusalSlot(Arc<Limits>);

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.refusals.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections,
            max_per_address: config.max_connections_per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            connections: AtomicUsize::new(0),
            per_address: Counts::new(),
            api: Arc::new(Semaphore::new(config.max_api_concurrency)),
            long_polls: Arc::new(Semaphore::new(config.max_long_polls)),
            hashes: Arc::new(Semaphore::new(config.max_password_hashes)),
            refusals: AtomicUsize::new(0),
            refused_warning: RateLimitedWarning::default(),
            busy_warning: RateLimitedWarning::default(),
            forwarded_warning: RateLimitedWarning::default(),
        }
    }

    /// Returns whether `peer` is a trusted reverse proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = address_key(peer);
        self.trusted_proxies.iter().any(|proxy| address_key(*proxy) == peer)
    }

    /// Returns the client behind a request from `peer`. For a trusted proxy
    /// that sent no valid X-Forwarded-For, the proxy itself is the client,
    /// and a warning is logged.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddress {
        if !self.is_trusted_proxy(peer.ip()) {
            return ClientAddress { ip: peer.ip(), via_proxy: false };
        }
        match last_forwarded_for(headers) {
            Some(ip) => ClientAddress { ip, via_proxy: true },
            None => {
                if let Some(repeats) = self.forwarded_warning.due() {
                    tracing::warn!(
                        %peer,
                        repeats,
                        "request from a trusted proxy has no valid X-Forwarded-For: limits apply to the proxy's address"
                    );
                }
                ClientAddress { ip: peer.ip(), via_proxy: false }
            }
        }
    }

    /// Admits a new TCP connection from `peer`, or returns the error to
    /// answer it with. Connections from a trusted proxy are not counted per
    /// address, because they carry many clients.
    pub fn admit_connection(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, ApiError> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.warn_refused("the server is at --max-connections", peer);
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server has too many open connections: retry later",
            )
            .with_retry_after(BUSY_RETRY_MS));
        }
        let address = (!self.is_trusted_proxy(peer)).then(|| address_key(peer));
        if let Some(address) = address {
            if !self.per_address.try_increment(address, self.max_per_address) {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                self.warn_refused("an address is at --max-connections-per-ip", peer);
                return Err(too_many_from_address());
            }
        }
        Ok(ConnectionSlot { limits: self.clone(), address })
    }

    /// Reserves a place to answer a refused connection, or `None` when
    /// [`MAX_PENDING_REFUSALS`] are already being answered.
    pub fn reserve_refusal(self: &Arc<Self>) -> Option<RefusalSlot> {
        if self.refusals.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_REFUSALS {
            self.refusals.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RefusalSlot(self.clone()))
    }

    /// Admits a WebSocket from `client`, or returns the error that refuses
    /// the upgrade. A socket through a trusted proxy counts against the
    /// forwarded address, because the proxy's own connections are not
    /// counted per address.
    pub fn admit_socket(self: &Arc<Self>, client: ClientAddress) -> Result<SocketSlot, ApiError> {
        let forwarded_address = client.via_proxy.then(|| address_key(client.ip));
        if let Some(address) = forwarded_address {
            if !self.per_address.try_increment(address, self.max_per_address) {
                return Err(too_many_from_address());
            }
        }
        Ok(SocketSlot {
            limits: self.clone(),
            forwarded_address,
        })
    }

    /// Takes a permit for a request of `class`, or returns 503 when its pool
    /// is exhausted. Free requests need none.
    pub fn admit_request(&self, class: RequestClass) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let pool = match class {
            RequestClass::Free => return Ok(None),
            RequestClass::Api => &self.api,
            RequestClass::LongPoll => &self.long_polls,
        };
        match pool.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                if let Some(repeats) = self.busy_warning.due() {
                    tracing::warn!(?class, repeats, "request rejected: too many requests in progress");
                }
                let message = match class {
                    RequestClass::LongPoll => "the server has too many long polls waiting: retry in a second",
                    _ => "the server is busy: retry in a second",
                };
                Err(ApiError::new(ErrorCode::Unavailable, message).with_retry_after(BUSY_RETRY_MS))
            }
        }
    }

    /// Waits up to [`HASH_WAIT`] for a permit to compute a password hash.
    pub async fn hash_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(HASH_WAIT, self.hashes.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is busy checking passwords: retry in a few seconds",
            )
            .with_retry_after(BUSY_RETRY_MS)),
        }
    }

    fn warn_refused(&self, reason: &str, peer: IpAddr) {
        if let Some(repeats) = self.refused_warning.due() {
            tracing::warn!(%peer, repeats, "connection refused: {reason}");
        }
    }
}

fn too_many_from_address() -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        "too many open connections from your address: close some and retry",
    )
    .with_retry_after(BUSY_RETRY_MS)
}

/// Requests in progress on one HTTP connection and the time of the last
/// one, for closing connections that stay idle past `--keep-alive-timeout-ms`.
#[derive(Debug)]
pub struct Activity {
    in_progress: AtomicUsize,
    last: Mutex<Instant>,
}

/// A request in progress; dropping it records the end of the request.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_progress: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    /// Records the start of a request.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        *self.last.lock() = Instant::now();
        RequestGuard(self.clone())
    }

    /// When the connection will have been idle for `timeout`, or `None`
    /// while a request is in progress.
    pub fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.last.lock() + timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn limits(adjust: impl FnOnce(&mut ServeArgs)) -> Arc<Limits> {
        let mut args = ServeArgs::for_tests("/tmp/x");
        adjust(&mut args);
        Arc::new(Limits::new(&args.validate().unwrap()))
    }

    #[test]
    fn address_key_groups_ipv6_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
    }

    #[test]
    fn address_key_unmaps_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_uses_last_entry() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "198.51.100.1, 203.0.113.9".parse().unwrap());
        headers.append("x-forwarded-for", "192.0.2.4:5123".parse().unwrap());
        assert_eq!(last_forwarded_for(&headers), Some("192.0.2.4".parse().unwrap()));
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_ignored() {
        let limits = limits(|_| {});
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let client = limits.client_address("192.0.2.1:4000".parse().unwrap(), &headers);
        assert_eq!(client.ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(!client.via_proxy);
    }

    #[test]
    fn connection_slots_free_on_drop() {
        let limits = limits(|args| args.max_connections_per_ip = 1);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let slot = limits.admit_connection(peer).expect("first connection is admitted");
        assert!(limits.admit_connection(peer).is_err());
        drop(slot);
        assert!(limits.admit_connection(peer).is_ok());
    }

    #[test]
    fn classify_separates_long_polls() {
        let get = Method::GET;
        assert_eq!(classify(&get, "/api/channels/1/messages", Some("after=5&wait=10")), RequestClass::LongPoll);
        assert_eq!(classify(&get, "/api/channels/1/messages", Some("after=5&wait=0")), RequestClass::Api);
        assert_eq!(classify(&get, "/app.js", None), RequestClass::Free);
    }
}
