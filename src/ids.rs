//! Identifiers: the server-wide sequencer and the JSON form of ids.
//!
//! Every id and every message revision comes from one [`Sequencer`]. An id is
//! a u64 whose high 48 bits are milliseconds since the Unix epoch and whose
//! low 16 bits count within that millisecond. When more than 65,536 ids are
//! needed in one millisecond, or the wall clock stalls or steps back, the
//! sequencer keeps counting past the clock, so ids stay strictly increasing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bits of an id below the millisecond timestamp.
pub const COUNTER_BITS: u32 = 16;

/// How far ahead of the last issued id the persisted lease reaches: 2
/// seconds of ids. After a restart new ids start at the lease, so their
/// timestamps run up to this far ahead of the clock until it catches up.
pub const LEASE_SPAN: u64 = 2_000 << COUNTER_BITS;

/// Milliseconds since the Unix epoch by the wall clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The millisecond timestamp encoded in an id.
pub fn id_ms(id: u64) -> u64 {
    id >> COUNTER_BITS
}

/// Issues strictly increasing, time-ordered u64 ids.
///
/// Ids are never reused after a restart because the store persists a lease:
/// an upper bound on every id issued so far, renewed by the writer before the
/// sequencer comes within half a [`LEASE_SPAN`] of it. At start-up the
/// sequencer continues from the stored lease.
#[derive(Debug)]
pub struct Sequencer {
    /// The last id issued; ids only grow.
    last: AtomicU64,
    /// The lease last written to disk: every issued id is below it while
    /// the writer keeps up.
    durable_lease: AtomicU64,
}

impl Sequencer {
    /// Creates a sequencer that continues after `lease`, the upper bound that
    /// was persisted by the previous run (0 for a new database).
    pub fn resume(lease: u64) -> Self {
        Self {
            last: AtomicU64::new(lease),
            durable_lease: AtomicU64::new(lease),
        }
    }

    /// Issues the next id: the current millisecond shifted up, or one more
    /// than the last id when that is larger.
    pub fn next(&self) -> u64 {
        let clock = now_ms() << COUNTER_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = clock.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// The last id issued.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Returns the lease to persist when the issued ids have come within half
    /// a span of the durable lease, or `None` while the lease is far enough ahead.
    pub fn lease_to_renew(&self) -> Option<u64> {
        let last = self.last().max(now_ms() << COUNTER_BITS);
        let lease = self.durable_lease.load(Ordering::Acquire);
        (last + LEASE_SPAN / 2 > lease).then_some(last + LEASE_SPAN)
    }

    /// Records that `lease` is on disk.
    pub fn lease_persisted(&self, lease: u64) {
        self.durable_lease.fetch_max(lease, Ordering::AcqRel);
    }
}

/// Parses a non-empty string of ASCII digits that fits a u64. Unlike
/// `str::parse`, it rejects a leading `+` and leading zeros, so every id
/// has one spelling.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// A u64 id that JSON carries as a decimal string, because JavaScript numbers
/// lose precision above 2^53. Deserialization accepts a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor)
    }
}

/// Accepts an id as a decimal string or a non-negative integer, and names
/// both forms when the value is neither.
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an id: a decimal string such as \"1234\" or a non-negative integer")
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Id, E> {
        Ok(Id(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Id, E> {
        u64::try_from(value)
            .map(Id)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Id, E> {
        parse_decimal(text)
            .map(Id)
            .ok_or_else(|| E::custom(format!("invalid id {text:?}: expected a decimal number")))
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_decimal_accepts_only_digits() {
        assert_eq!(super::parse_decimal("0"), Some(0));
        assert_eq!(super::parse_decimal("18446744073709551615"), Some(u64::MAX));
        for text in ["", "+5", "-5", " 5", "5 ", "5.0", "0x5", "05", "00", "18446744073709551616"] {
            assert_eq!(super::parse_decimal(text), None, "{text:?} is not an id");
        }
    }

    #[test]
    fn id_error_names_expected_forms() {
        let error = serde_json::from_str::<super::Id>("1.5").unwrap_err().to_string();
        assert!(error.contains("decimal string"), "a float id gets a readable error: {error}");
        let parsed: super::Id = serde_json::from_str("42").unwrap();
        assert_eq!(parsed, super::Id(42), "a number is accepted");
        let parsed: super::Id = serde_json::from_str(r#""42""#).unwrap();
        assert_eq!(parsed, super::Id(42), "a decimal string is accepted");
    }

    #[test]
    fn id_rejects_plus_sign() {
        let parsed: Result<super::Id, _> = serde_json::from_str(r#""+5""#);
        assert!(parsed.is_err(), "a plus sign is not part of an id");
    }

    use super::*;

    #[test]
    fn sequencer_increases_within_one_millisecond() {
        let sequencer = Sequencer::resume(0);
        let mut previous = 0;
        for _ in 0..200_000 {
            let id = sequencer.next();
            assert!(id > previous);
            previous = id;
        }
    }

    #[test]
    fn sequencer_continues_after_future_lease() {
        let lease = (now_ms() + 3_600_000) << COUNTER_BITS;
        let sequencer = Sequencer::resume(lease);
        assert!(sequencer.next() > lease);
    }

    #[test]
    fn sequencer_ids_carry_current_millisecond() {
        let before = now_ms();
        let id = Sequencer::resume(0).next();
        assert!(id_ms(id) >= before);
    }

    #[test]
    fn lease_renewal_requested_near_lease() {
        let sequencer = Sequencer::resume(0);
        sequencer.next();
        let lease = sequencer.lease_to_renew().expect("a new database needs a lease");
        sequencer.lease_persisted(lease);
        assert_eq!(sequencer.lease_to_renew(), None);
    }

    #[test]
    fn id_json_is_decimal_string() {
        assert_eq!(serde_json::to_string(&Id(u64::MAX)).unwrap(), "\"18446744073709551615\"");
    }

    #[test]
    fn id_json_accepts_number_and_string() {
        let parsed: Vec<Id> = serde_json::from_str(r#"["42", 43]"#).unwrap();
        assert_eq!(parsed, vec![Id(42), Id(43)]);
    }
}
