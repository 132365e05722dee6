//! Typing indicators: relayed to a channel's other subscribers, throttled
//! per user and channel, and never stored.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{ConnId, Hub, Identity};
use crate::error::ApiError;
use crate::ids::Id;
use crate::protocol::encode_frame;

/// Minimum time between two typing frames relayed for the same user and
/// channel; typing operations in between are ignored.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(3);

/// Size below which the throttle map is never swept.
const THROTTLE_SWEEP_MIN: usize = 1024;

/// When each user last had a typing frame relayed in each channel.
#[derive(Debug, Default)]
pub(super) struct TypingThrottle {
    /// Last relay time by (user id, channel id).
    last: HashMap<(u64, u64), Instant>,
    /// Size of `last` after the previous sweep. The next sweep, which
    /// removes entries older than [`TYPING_INTERVAL`], runs once the map
    /// has doubled (and has at least [`THROTTLE_SWEEP_MIN`] entries). So
    /// sweeping costs O(1) per entry amortized, and the map stays within
    /// about twice the pairs that typed in one interval.
    swept_len: usize,
}

impl TypingThrottle {
    /// Records a typing operation at `now`. Returns false when one was
    /// relayed for the same user and channel less than [`TYPING_INTERVAL`] ago.
    fn admit(&mut self, user: u64, channel: u64, now: Instant) -> bool {
        if let Some(last) = self.last.get(&(user, channel)) {
            if now.duration_since(*last) < TYPING_INTERVAL {
                return false;
            }
        }
        self.last.insert((user, channel), now);
        if self.last.len() >= THROTTLE_SWEEP_MIN.max(2 * self.swept_len) {
            self.last.retain(|_, last| now.duration_since(*last) < TYPING_INTERVAL);
            self.swept_len = self.last.len();
        }
        true
    }
}

impl Hub {
    /// Relays `{"op":"typing","channel","user"}` to the channel's
    /// subscribers other than the user's own connections, at most once per
    /// [`TYPING_INTERVAL`] per user and channel. A user who appears offline
    /// is not relayed. Returns `channel not found` for a channel the user
    /// may not read.
    pub fn typing(&self, user: &Identity, channel: u64) -> Result<(), ApiError> {
        let hub = self.readable_channel(user, channel)?;
        if self.accounts.get(user.id).is_some_and(|account| account.invisible) {
            return Ok(());
        }
        if !self.typing.lock().admit(user.id, channel, Instant::now()) {
            return Ok(());
        }
        let frame = encode_frame(&json!({
            "op": "typing",
            "channel": Id(channel),
            "user": {"id": Id(user.id), "name": user.name},
        }));
        let own: HashSet<ConnId> = self
            .connections
            .lock()
            .get(&user.id)
            .map(|of_user| of_user.keys().copied().collect())
            .unwrap_or_default();
        let state = hub.state.lock();
        for (conn, outbox) in &state.subscribers {
            if !own.contains(conn) {
                outbox.push_droppable(frame.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_throttles_within_interval() {
        let mut throttle = TypingThrottle::default();
        let now = Instant::now();
        assert!(throttle.admit(1, 2, now), "the first typing is relayed");
        assert!(!throttle.admit(1, 2, now + Duration::from_secs(1)), "a second within the interval is not");
        assert!(throttle.admit(1, 3, now), "another channel has its own throttle");
        assert!(throttle.admit(1, 2, now + TYPING_INTERVAL), "after the interval it is relayed again");
    }

    #[test]
    fn admit_sweeps_old_entries() {
        let mut throttle = TypingThrottle::default();
        let start = Instant::now();
        let later = start + TYPING_INTERVAL * 2;
        let batch = THROTTLE_SWEEP_MIN as u64;
        for user in 0..batch {
            throttle.admit(user, 1, start);
        }
        for user in batch..2 * batch {
            throttle.admit(user, 1, later);
        }
        let left = throttle.last.len();
        assert!(left <= THROTTLE_SWEEP_MIN, "entries older than the interval are swept: {left} left");
    }
}
