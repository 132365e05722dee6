//! Login throttling and the registration rate limit.
//!
//! Failed logins are counted per username and per client address. After
//! `--login-delay-after` failures, each further attempt must wait, from
//! [`BASE_DELAY`] doubling with every failure; after `--login-lock-after`
//! failures, attempts are refused for `--login-lock-minutes`. A client
//! address gets [`ADDRESS_FACTOR`] times both thresholds, because many
//! people may share one address. A failure is forgotten once the lock
//! duration passes without another failure. An admin can end a username's
//! lock early (`aura user unlock NAME`); address locks only expire.
//!
//! The counts are keyed by the username as typed, lowercased, whether or
//! not an account of that name exists, so a throttled attempt gets the same
//! response for every name and reveals nothing about which accounts exist.
//! Every attempt counts as a failure when it starts, so parallel attempts
//! cannot slip past the delay; a successful login takes its count back.
//!
//! All of this lives in memory: a restart clears every count and lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::limits::address_key;

/// The first delay after the free failures; each further failure doubles it.
pub const BASE_DELAY: Duration = Duration::from_secs(1);

/// How many times the per-username thresholds a client address gets.
pub const ADDRESS_FACTOR: u32 = 4;

/// Usernames tracked at once; beyond this, entries whose failures were
/// forgotten go first, then the least recently failed.
pub const MAX_TRACKED_NAMES: usize = 100_000;

/// Client addresses tracked at once, with the same eviction as names.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// Maximum length of the username prefix that keys a count, in bytes. Valid usernames are
/// at most 32 bytes, so longer input never names an account.
const MAX_NAME_KEY_BYTES: usize = 64;

/// When the failures of one key allow the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Thresholds {
    delay_after: u32,
    lock_after: u32,
    /// Lock duration and how long a failure is remembered, in ms.
    lock_ms: u64,
}

impl Thresholds {
    /// When a key with `failures`, the last at `last_ms`, may try again.
    fn next_attempt_ms(&self, failures: u32, last_ms: u64) -> u64 {
        if failures >= self.lock_after {
            return last_ms + self.lock_ms;
        }
        if failures < self.delay_after {
            return 0;
        }
        let doublings = (failures - self.delay_after).min(32);
        let delay = (BASE_DELAY.as_millis() as u64).saturating_mul(1 << doublings);
        last_ms + delay.min(self.lock_ms)
    }
}

/// Failed logins of one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Time of the last failure, ms since the Unix epoch.
    last_ms: u64,
}

/// Failure counts by key, at most `capacity` entries.
#[derive(Debug)]
struct FailureMap<K> {
    entries: HashMap<K, Failures>,
    capacity: usize,
    thresholds: Thresholds,
}

impl<K: Hash + Eq + Clone> FailureMap<K> {
    fn new(capacity: usize, thresholds: Thresholds) -> Self {
        FailureMap {
            entries: HashMap::new(),
            capacity,
            thresholds,
        }
    }

    /// Returns the failures of `key` still remembered at `now_ms`, and
    /// forgets them once the lock duration has passed.
    fn current(&mut self, key: &K, now_ms: u64) -> Option<&mut Failures> {
        let lock_ms = self.thresholds.lock_ms;
        if self.entries.get(key).is_some_and(|failures| now_ms >= failures.last_ms + lock_ms) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    /// Returns the ms to wait before `key` may try again, or `None` when it may now.
    fn wait_ms(&mut self, key: &K, now_ms: u64) -> Option<u64> {
        let thresholds = self.thresholds;
        let failures = self.current(key, now_ms)?;
        let next = thresholds.next_attempt_ms(failures.count, failures.last_ms);
        (next > now_ms).then(|| next - now_ms)
    }

    /// Counts a failure of `key` at `now_ms` and returns the new count.
    fn add_failure(&mut self, key: &K, now_ms: u64) -> u32 {
        if self.current(key, now_ms).is_none() && self.entries.len() >= self.capacity {
            self.evict(now_ms);
        }
        let failures = self.entries.entry(key.clone()).or_insert(Failures { count: 0, last_ms: now_ms });
        failures.count = failures.count.saturating_add(1);
        failures.last_ms = now_ms;
        failures.count
    }

    /// Takes back one failure of `key`.
    fn remove_failure(&mut self, key: &K) {
        if let Some(failures) = self.entries.get_mut(key) {
            failures.count = failures.count.saturating_sub(1);
            if failures.count == 0 {
                self.entries.remove(key);
            }
        }
    }

    fn clear(&mut self, key: &K) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Makes room for one entry: drops every forgotten entry, or when none
    /// is forgotten, the one whose last failure is oldest.
    fn evict(&mut self, now_ms: u64) {
        let lock_ms = self.thresholds.lock_ms;
        self.entries.retain(|_, failures| now_ms < failures.last_ms + lock_ms);
        if self.entries.len() < self.capacity {
            return;
        }
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, failures)| failures.last_ms)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.entries.remove(&key);
        }
    }
}

/// A registration token bucket of one address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date, ms since the Unix epoch.
    refilled_ms: u64,
}

/// A login attempt that passed the throttle; [`Throttle::finish_login`] ends it.
#[derive(Debug)]
pub struct LoginAttempt {
    name: String,
    address: IpAddr,
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The password matched.
    Succeeded,
    /// The username or password was wrong.
    Failed,
    /// The check did not run to the end (storage error, server busy): the
    /// attempt counts neither way.
    Aborted,
}

/// Failed-login counts and registration buckets.
pub struct Throttle {
    names: Mutex<FailureMap<String>>,
    addresses: Mutex<FailureMap<IpAddr>>,
    /// Registration buckets by address key; at most [`MAX_TRACKED_ADDRESSES`].
    registrations: Mutex<HashMap<IpAddr, Bucket>>,
    /// Registrations per hour and bucket size.
    registrations_per_hour: u32,
}

impl Throttle {
    pub fn new(config: &Config) -> Throttle {
        let lock_ms = config.login_lock.as_millis() as u64;
        let names = Thresholds {
            delay_after: config.login_delay_after,
            lock_after: config.login_lock_after,
            lock_ms,
        };
        let addresses = Thresholds {
            delay_after: config.login_delay_after.saturating_mul(ADDRESS_FACTOR),
            lock_after: config.login_lock_after.saturating_mul(ADDRESS_FACTOR),
            lock_ms,
        };
        Throttle {
            names: Mutex::new(FailureMap::new(MAX_TRACKED_NAMES, names)),
            addresses: Mutex::new(FailureMap::new(MAX_TRACKED_ADDRESSES, addresses)),
            registrations: Mutex::new(HashMap::new()),
            registrations_per_hour: config.registrations_per_hour,
        }
    }

    /// Starts a login attempt for `name` from `address` at `now_ms`, counting
    /// it as a failure until [`Throttle::finish_login`] records another
    /// outcome. Returns `rate_limited` with the wait when the name or the
    /// address must wait, the same whether or not the account exists.
    pub fn begin_login(&self, name: &str, address: IpAddr, now_ms: u64) -> Result<LoginAttempt, ApiError> {
        let name = name_key(name);
        let address = address_key(address);
        let mut names = self.names.lock();
        let mut addresses = self.addresses.lock();
        let wait = names.wait_ms(&name, now_ms).max(addresses.wait_ms(&address, now_ms));
        if let Some(wait_ms) = wait {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many failed logins for this username or from this address: wait, then retry",
            )
            .with_retry_after(wait_ms));
        }
        let name_failures = names.add_failure(&name, now_ms);
        let address_failures = addresses.add_failure(&address, now_ms);
        if name_failures == names.thresholds.lock_after {
            // The name itself may be a mistyped password, so it is not logged.
            tracing::warn!(%address, "a username is locked after repeated failed logins");
        }
        if address_failures == addresses.thresholds.lock_after {
            tracing::warn!(%address, "a client address is locked after repeated failed logins");
        }
        Ok(LoginAttempt { name, address })
    }

    /// Ends a login attempt: a success clears the name's failures and takes
    /// back the address's; an aborted attempt takes back both.
    pub fn finish_login(&self, attempt: LoginAttempt, outcome: LoginOutcome) {
        match outcome {
            LoginOutcome::Failed => {}
            LoginOutcome::Succeeded => {
                self.names.lock().clear(&attempt.name);
                self.addresses.lock().remove_failure(&attempt.address);
            }
            LoginOutcome::Aborted => {
                self.names.lock().remove_failure(&attempt.name);
                self.addresses.lock().remove_failure(&attempt.address);
            }
        }
    }

    /// Clears the failures and any lock of a username. Returns whether it had any.
    pub fn unlock(&self, name: &str) -> bool {
        self.names.lock().clear(&name_key(name))
    }

    /// Takes one registration token of `address` at `now_ms`, or returns
    /// `rate_limited` with the wait until the next token.
    pub fn take_registration(&self, address: IpAddr, now_ms: u64) -> Result<(), ApiError> {
        const HOUR_MS: f64 = 3_600_000.0;
        let capacity = f64::from(self.registrations_per_hour);
        let refill = |bucket: &Bucket| {
            let elapsed_ms = now_ms.saturating_sub(bucket.refilled_ms) as f64;
            (bucket.tokens + elapsed_ms * capacity / HOUR_MS).min(capacity)
        };

        let address = address_key(address);
        let mut buckets = self.registrations.lock();
        if !buckets.contains_key(&address) && buckets.len() >= MAX_TRACKED_ADDRESSES {
            // A full bucket is the same as no bucket, so those go first.
            buckets.retain(|_, bucket| refill(bucket) < capacity);
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                let oldest = buckets.iter().min_by_key(|(_, bucket)| bucket.refilled_ms).map(|(key, _)| *key);
                if let Some(key) = oldest {
                    buckets.remove(&key);
                }
            }
        }
        let bucket = buckets.entry(address).or_insert(Bucket {
            tokens: capacity,
            refilled_ms: now_ms,
        });
        bucket.tokens = refill(bucket);
        bucket.refilled_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - bucket.tokens) * HOUR_MS / capacity).ceil() as u64;
        Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many registrations from this address: retry later",
        )
        .with_retry_after(wait_ms.max(1)))
    }
}

/// The key of a username: lowercased and cut to [`MAX_NAME_KEY_BYTES`].
fn name_key(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_KEY_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn throttle(adjust: impl FnOnce(&mut ServeArgs)) -> Throttle {
        let mut args = ServeArgs::for_tests("/tmp/x");
        adjust(&mut args);
        Throttle::new(&args.validate().unwrap())
    }

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn fail(throttle: &Throttle, name: &str, from: &str, now_ms: u64) -> Result<(), ApiError> {
        let attempt = throttle.begin_login(name, address(from), now_ms)?;
        throttle.finish_login(attempt, LoginOutcome::Failed);
        Ok(())
    }

    #[test]
    fn delay_doubles_after_free_failures() {
        let throttle = throttle(|args| {
            args.login_delay_after = 2;
            args.login_lock_after = 5;
        });
        let t = 1_000_000;
        fail(&throttle, "ana", "192.0.2.1", t).unwrap();
        fail(&throttle, "ana", "192.0.2.1", t).unwrap();
        let error = throttle.begin_login("ana", address("192.0.2.1"), t).unwrap_err();
        assert_eq!(error.retry_after_ms, Some(1000));
        fail(&throttle, "ana", "192.0.2.1", t + 1000).unwrap();
        let error = throttle.begin_login("ana", address("192.0.2.1"), t + 1000).unwrap_err();
        assert_eq!(error.retry_after_ms, Some(2000));
    }

    #[test]
    fn lock_lasts_lock_duration() {
        let throttle = throttle(|args| {
            args.login_delay_after = 3;
            args.login_lock_after = 3;
            args.login_lock_minutes = 1;
        });
        let t = 1_000_000;
        for _ in 0..3 {
            fail(&throttle, "ana", "192.0.2.1", t).unwrap();
        }
        let error = throttle.begin_login("ana", address("192.0.2.9"), t + 59_000).unwrap_err();
        assert_eq!(error.retry_after_ms, Some(1000));
        assert!(throttle.begin_login("ana", address("192.0.2.9"), t + 60_000).is_ok());
    }

    #[test]
    fn unlock_clears_name_lock() {
        let throttle = throttle(|args| {
            args.login_delay_after = 1;
            args.login_lock_after = 1;
        });
        fail(&throttle, "Ana", "192.0.2.1", 1000).unwrap();
        assert!(throttle.begin_login("ana", address("192.0.2.2"), 1000).is_err());
        assert!(throttle.unlock("ANA"));
        assert!(throttle.begin_login("ana", address("192.0.2.2"), 1000).is_ok());
    }

    #[test]
    fn success_resets_name_failures() {
        let throttle = throttle(|args| {
            args.login_delay_after = 2;
            args.login_lock_after = 2;
        });
        fail(&throttle, "ana", "192.0.2.1", 1000).unwrap();
        let attempt = throttle.begin_login("ana", address("192.0.2.1"), 1000).unwrap();
        throttle.finish_login(attempt, LoginOutcome::Succeeded);
        fail(&throttle, "ana", "192.0.2.1", 1000).unwrap();
        assert!(throttle.begin_login("ana", address("192.0.2.1"), 1000).is_ok());
    }

    #[test]
    fn address_gets_four_times_the_failures() {
        let throttle = throttle(|args| {
            args.login_delay_after = 1;
            args.login_lock_after = 1;
        });
        for index in 0..ADDRESS_FACTOR {
            fail(&throttle, &format!("user{index}"), "192.0.2.1", 1000).unwrap();
        }
        assert!(throttle.begin_login("other", address("192.0.2.1"), 1000).is_err());
        assert!(throttle.begin_login("other", address("192.0.2.2"), 1000).is_ok());
    }

    #[test]
    fn failure_map_evicts_oldest_when_full() {
        let thresholds = Thresholds { delay_after: 1, lock_after: 1, lock_ms: 60_000 };
        let mut map = FailureMap::new(2, thresholds);
        map.add_failure(&"a".to_string(), 1000);
        map.add_failure(&"b".to_string(), 2000);
        map.add_failure(&"c".to_string(), 3000);
        assert_eq!(map.entries.len(), 2);
        assert!(!map.entries.contains_key("a"));
    }

    #[test]
    fn registrations_refill_over_the_hour() {
        let throttle = throttle(|args| args.registrations_per_hour = 2);
        let from = address("192.0.2.1");
        throttle.take_registration(from, 0).unwrap();
        throttle.take_registration(from, 0).unwrap();
        let error = throttle.take_registration(from, 0).unwrap_err();
        assert_eq!(error.retry_after_ms, Some(1_800_000));
        assert!(throttle.take_registration(from, 1_800_000).is_ok());
    }

    #[test]
    fn name_key_cuts_on_char_boundary() {
        let long = "é".repeat(40);
        assert_eq!(name_key(&long).len(), 64);
    }
}
