//! Presence: who is online, pushed to every connection as coalesced deltas.
//!
//! A user is online while they have at least one open WebSocket, or made an
//! HTTP long poll in the last [`POLL_WINDOW`]. They stay online for
//! `--presence-grace-ms` after the last of these ends, so that a page reload
//! does not show them offline and back. Others see a user online only when,
//! in addition, the account exists, is enabled and has not chosen "appear
//! offline".
//!
//! Events (a connection opens or ends, a long poll, an "appear offline"
//! change) only update a per-user counter and note the user as changed. One
//! task, [`Presence::run`], wakes when something changed or a grace period
//! ends, waits until [`PUSH_INTERVAL`] has passed since its previous push,
//! compares the changed users' visible state with what clients were last
//! told, encodes one `presence` delta and queues it to every connection. So
//! each connection gets at most one presence frame per interval, the work
//! per push is one pass over the changed users plus one queue push per
//! connection, and nothing runs while nothing changes.
//!
//! Presence frames are droppable: a connection whose outbound queue is more
//! than half full skips the delta, is marked as having missed one, and gets
//! a full snapshot at the first push where its queue has room again.
//!
//! Lock order: `tracker` and `audience` are never held together. A ready
//! frame is queued under `audience`, so no delta can overtake it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::{ConnId, Outbox};
use crate::ids::Id;
use crate::protocol::encode_frame;
use crate::server::App;
use crate::store::User;

/// Minimum time between two presence pushes, so each connection gets at
/// most one `presence` frame per interval.
pub const PUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long after an HTTP long poll its user still counts as connected
/// (the grace period follows).
pub const POLL_WINDOW: Duration = Duration::from_secs(30);

/// Close code for a WebSocket over `--max-connections-per-user`.
pub const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4029;

/// Errors when a connection cannot be counted.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("user {user} already has {open} open connections, the maximum (--max-connections-per-user): close one first")]
    TooManyConnections { user: u64, open: usize },
}

/// The activity that keeps one user online.
#[derive(Debug, Default)]
struct Activity {
    /// Open WebSockets of the user.
    connections: usize,
    /// While `connections` is 0, the user stays online until this instant:
    /// the end of the grace period after the last connection, or of the
    /// poll window and grace period after the last long poll.
    online_until: Option<Instant>,
    /// The instant under which the user is entered in
    /// [`Tracker::deadlines`], if they are.
    deadline: Option<Instant>,
}

/// The online users, and the users changed since the last push.
#[derive(Debug, Default)]
struct Tracker {
    /// Exactly the users who are online (grace period included), so memory
    /// grows with online users only.
    users: HashMap<u64, Activity>,
    /// When users with no open connection go offline, ordered by time; at
    /// most one entry per user.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Users whose visible state may have changed since the last push.
    changed: HashSet<u64>,
}

/// A connection that receives presence frames.
#[derive(Debug)]
struct Receiver {
    outbox: Outbox,
    /// Set when a delta was dropped because the queue was under pressure;
    /// the connection then gets a full snapshot instead of the next delta.
    missed: bool,
}

/// The state last sent to clients, and the connections that receive it.
#[derive(Debug, Default)]
struct Audience {
    /// Users shown online in the last push: the state every client has
    /// once it applied its frames.
    shown_online: HashSet<u64>,
    /// `shown_online`, sorted, for snapshots; `None` after a change until the next
    /// snapshot rebuilds it.
    sorted: Option<Arc<Vec<u64>>>,
    /// Every open WebSocket, by connection id.
    receivers: HashMap<ConnId, Receiver>,
    /// Number of receivers with `missed` set. While it is above 0 the task
    /// keeps pushing every interval, so they get their snapshot.
    missed: usize,
}

impl Audience {
    fn sorted_shown(&mut self) -> Arc<Vec<u64>> {
        let shown_online = &self.shown_online;
        self.sorted
            .get_or_insert_with(|| {
                let mut users: Vec<u64> = shown_online.iter().copied().collect();
                users.sort_unstable();
                Arc::new(users)
            })
            .clone()
    }
}

/// Counters of the presence work since start-up, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Pushes that queued at least one frame.
    pub pushes: u64,
    /// Delta frames queued to connections.
    pub deltas_queued: u64,
    /// Delta frames not queued because a connection's queue was under
    /// pressure or the connection had just ended.
    pub deltas_dropped: u64,
    /// Full snapshots queued to connections that had dropped a delta.
    pub snapshots_queued: u64,
    /// Time spent in presence bookkeeping and pushes, in microseconds,
    /// measured with a monotonic clock around each step. It is wall time,
    /// so it also counts time the thread was preempted: an upper bound of
    /// the CPU time.
    pub busy_micros: u64,
}

#[derive(Debug, Default)]
struct Counters {
    pushes: AtomicU64,
    deltas_queued: AtomicU64,
    deltas_dropped: AtomicU64,
    snapshots_queued: AtomicU64,
    busy_nanos: AtomicU64,
}

impl Counters {
    fn add_busy(&self, started: Instant) {
        self.busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Online state of every user and the connections that receive it.
pub struct Presence {
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    tracker: Mutex<Tracker>,
    audience: Mutex<Audience>,
    /// Wakes the push task after a change or a new deadline.
    wake: Notify,
    counters: Counters,
}

/// One counted WebSocket of a user; dropping it ends the count, and the
/// user goes offline after the grace period when it was their last.
pub struct ConnectionSlot {
    presence: Arc<Presence>,
    user: u64,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.presence.release(self.user);
    }
}

impl Presence {
    /// Creates the presence state; [`Presence::run`] must be spawned for
    /// changes to reach clients.
    pub fn new(config: Arc<Config>, accounts: Arc<Accounts>) -> Presence {
        Presence {
            config,
            accounts,
            tracker: Mutex::new(Tracker::default()),
            audience: Mutex::new(Audience::default()),
            wake: Notify::new(),
            counters: Counters::default(),
        }
    }

    /// Counts a new WebSocket of `user`, or returns an error when the user
    /// already has `--max-connections-per-user` open.
    pub fn claim(self: &Arc<Self>, user: u64) -> Result<ConnectionSlot, PresenceError> {
        let started = Instant::now();
        let mut tracker = self.tracker.lock();
        let tracker = &mut *tracker;
        let newly_online = !tracker.users.contains_key(&user);
        let activity = tracker.users.entry(user).or_default();
        if activity.connections >= self.config.max_connections_per_user {
            return Err(PresenceError::TooManyConnections {
                user,
                open: activity.connections,
            });
        }
        activity.connections += 1;
        if let Some(at) = activity.deadline.take() {
            tracker.deadlines.remove(&(at, user));
        }
        if newly_online {
            tracker.changed.insert(user);
            self.wake.notify_one();
        }
        self.counters.add_busy(started);
        Ok(ConnectionSlot {
            presence: self.clone(),
            user,
        })
    }

    /// Ends the count of one WebSocket; the grace period starts when it
    /// was the user's last.
    fn release(&self, user: u64) {
        let started = Instant::now();
        let mut tracker = self.tracker.lock();
        let Some(activity) = tracker.users.get_mut(&user) else { return };
        activity.connections = activity.connections.saturating_sub(1);
        if activity.connections == 0 {
            let grace_end = Instant::now() + self.config.presence_grace;
            let until = activity.online_until.map_or(grace_end, |until| until.max(grace_end));
            activity.online_until = Some(until);
            tracker.schedule(user, until);
            self.wake.notify_one();
        }
        self.counters.add_busy(started);
    }

    /// Records an HTTP long poll of `user`, which keeps them online for
    /// [`POLL_WINDOW`] plus the grace period.
    pub fn poll_seen(&self, user: u64) {
        let started = Instant::now();
        let until = Instant::now() + POLL_WINDOW + self.config.presence_grace;
        let mut tracker = self.tracker.lock();
        let newly_online = !tracker.users.contains_key(&user);
        let activity = tracker.users.entry(user).or_default();
        activity.online_until = Some(activity.online_until.map_or(until, |old| old.max(until)));
        if activity.connections == 0 {
            tracker.schedule(user, until);
        }
        if newly_online {
            tracker.changed.insert(user);
        }
        drop(tracker);
        self.wake.notify_one();
        self.counters.add_busy(started);
    }

    /// Notes that what others may see of `user` changed (appear offline,
    /// disabled), so the next push re-evaluates them.
    pub fn visibility_changed(&self, user: u64) {
        self.tracker.lock().changed.insert(user);
        self.wake.notify_one();
    }

    /// Registers a connection for presence frames. `ready` builds the
    /// connection's first frame from the users shown online; it is queued
    /// before any presence frame, and every later delta applies to it.
    pub fn attach(&self, conn: ConnId, outbox: &Outbox, ready: impl FnOnce(&[u64]) -> Bytes) {
        let mut audience = self.audience.lock();
        let online = audience.sorted_shown();
        outbox.push(ready(&online));
        audience.receivers.insert(
            conn,
            Receiver {
                outbox: outbox.clone(),
                missed: false,
            },
        );
    }

    /// Stops sending presence frames to a connection.
    pub fn detach(&self, conn: ConnId) {
        let mut audience = self.audience.lock();
        if let Some(receiver) = audience.receivers.remove(&conn) {
            if receiver.missed {
                audience.missed -= 1;
            }
        }
    }

    /// Returns the users shown online as of the last push, sorted by id.
    pub fn online(&self) -> Arc<Vec<u64>> {
        self.audience.lock().sorted_shown()
    }

    /// Counters of the presence work since start-up.
    pub fn stats(&self) -> PresenceStats {
        let counters = &self.counters;
        PresenceStats {
            pushes: counters.pushes.load(Ordering::Relaxed),
            deltas_queued: counters.deltas_queued.load(Ordering::Relaxed),
            deltas_dropped: counters.deltas_dropped.load(Ordering::Relaxed),
            snapshots_queued: counters.snapshots_queued.load(Ordering::Relaxed),
            busy_micros: counters.busy_nanos.load(Ordering::Relaxed) / 1000,
        }
    }

    /// Pushes presence changes until the task is aborted: waits for a
    /// change or a deadline, then for [`PUSH_INTERVAL`] since the previous
    /// push, then pushes everything that changed in between as one delta.
    pub async fn run(self: Arc<Self>) {
        let mut last_push: Option<Instant> = None;
        loop {
            self.wait_for_work().await;
            if let Some(last) = last_push {
                tokio::time::sleep_until((last + PUSH_INTERVAL).into()).await;
            }
            self.push_changes();
            last_push = Some(Instant::now());
        }
    }

    /// Returns once a user changed, a deadline passed, or a connection
    /// waits for its snapshot.
    async fn wait_for_work(&self) {
        loop {
            let wake = self.wake.notified();
            let now = Instant::now();
            let (changed, next_deadline) = {
                let tracker = self.tracker.lock();
                (!tracker.changed.is_empty(), tracker.deadlines.first().map(|&(at, _)| at))
            };
            let missed = self.audience.lock().missed > 0;
            if changed || missed || next_deadline.is_some_and(|at| at <= now) {
                return;
            }
            match next_deadline {
                Some(at) => {
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    /// Expires due grace periods, computes the delta since the last push
    /// and queues it (or a snapshot) to every connection.
    fn push_changes(&self) {
        let started = Instant::now();
        let changed: Vec<(u64, bool)> = {
            let mut tracker = self.tracker.lock();
            tracker.expire(started);
            let changed = std::mem::take(&mut tracker.changed);
            changed
                .into_iter()
                .map(|user| (user, tracker.users.contains_key(&user)))
                .collect()
        };
        let visible: Vec<(u64, bool)> = changed
            .into_iter()
            .map(|(user, online)| (user, online && self.accounts.get(user).is_some_and(|user| shows_online(&user))))
            .collect();

        let mut audience = self.audience.lock();
        let mut online = Vec::new();
        let mut offline = Vec::new();
        for (user, visible) in visible {
            if visible && audience.shown_online.insert(user) {
                online.push(user);
            } else if !visible && audience.shown_online.remove(&user) {
                offline.push(user);
            }
        }
        let delta = if online.is_empty() && offline.is_empty() {
            None
        } else {
            audience.sorted = None;
            online.sort_unstable();
            offline.sort_unstable();
            Some(presence_frame(&online, &offline, false))
        };
        if delta.is_none() && audience.missed == 0 {
            self.counters.add_busy(started);
            return;
        }

        let snapshot = (audience.missed > 0).then(|| presence_frame(&audience.sorted_shown(), &[], true));
        let (mut queued, mut dropped, mut snapshots) = (0u64, 0u64, 0u64);
        let Audience { receivers, missed, .. } = &mut *audience;
        for receiver in receivers.values_mut() {
            if receiver.missed {
                let Some(snapshot) = &snapshot else { continue };
                if receiver.outbox.push_droppable(snapshot.clone()) {
                    receiver.missed = false;
                    *missed -= 1;
                    snapshots += 1;
                }
            } else if let Some(delta) = &delta {
                if receiver.outbox.push_droppable(delta.clone()) {
                    queued += 1;
                } else {
                    receiver.missed = true;
                    *missed += 1;
                    dropped += 1;
                }
            }
        }
        drop(audience);

        let counters = &self.counters;
        counters.pushes.fetch_add(1, Ordering::Relaxed);
        counters.deltas_queued.fetch_add(queued, Ordering::Relaxed);
        counters.deltas_dropped.fetch_add(dropped, Ordering::Relaxed);
        counters.snapshots_queued.fetch_add(snapshots, Ordering::Relaxed);
        counters.add_busy(started);
        tracing::debug!(
            online = online.len(),
            offline = offline.len(),
            queued,
            dropped,
            snapshots,
            "presence pushed"
        );
    }
}

impl Tracker {
    /// Enters `user` in the deadlines at `at`, replacing their earlier entry.
    fn schedule(&mut self, user: u64, at: Instant) {
        let Some(activity) = self.users.get_mut(&user) else { return };
        if let Some(old) = activity.deadline.replace(at) {
            self.deadlines.remove(&(old, user));
        }
        self.deadlines.insert((at, user));
    }

    /// Takes offline every user whose deadline passed by `now` and who has
    /// no open connection.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, user)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(activity) = self.users.get_mut(&user) else { continue };
            activity.deadline = None;
            if activity.connections > 0 {
                continue;
            }
            match activity.online_until {
                Some(until) if until > now => self.schedule(user, until),
                _ => {
                    self.users.remove(&user);
                    self.changed.insert(user);
                }
            }
        }
    }
}

/// Returns whether others may see the account online while it is connected.
fn shows_online(user: &User) -> bool {
    !user.invisible && !user.disabled
}

/// `{"op":"presence","online":[ids],"offline":[ids]}`, with `"full":true`
/// for a snapshot that replaces the client's list.
fn presence_frame(online: &[u64], offline: &[u64], full: bool) -> Bytes {
    #[derive(Serialize)]
    struct Frame<'a> {
        op: &'static str,
        online: Ids<'a>,
        offline: Ids<'a>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        full: bool,
    }
    encode_frame(&Frame {
        op: "presence",
        online: Ids(online),
        offline: Ids(offline),
        full,
    })
}

/// A list of user ids, serialized as decimal strings.
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a>(pub &'a [u64]);

impl Serialize for Ids<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&id| Id(id)))
    }
}

/// Sets the user's "appear offline" choice, stores it, pushes the changed
/// account to their connections and lets the next presence push show it.
pub async fn set_invisible(app: &App, user: u64, invisible: bool) -> Result<Arc<User>, ApiError> {
    let updated = app.accounts.set_invisible(user, invisible).await?;
    app.presence.visibility_changed(user);
    app.hub.user_changed(&updated);
    tracing::info!(user, invisible, "presence visibility changed");
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_frame_lists_ids_as_strings() {
        let frame = presence_frame(&[1, 2], &[3], false);
        let json: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(json, serde_json::json!({"op":"presence","online":["1","2"],"offline":["3"]}));
    }

    #[test]
    fn snapshot_frame_is_marked_full() {
        let frame = presence_frame(&[7], &[], true);
        let json: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(json["full"], true, "{json}");
    }

    /// Creates a presence over a fresh database with one user, and returns
    /// both.
    async fn presence_with_user(dir: &std::path::Path) -> (Arc<Presence>, u64) {
        let config = Arc::new(crate::config::ServeArgs::for_tests(dir).validate().unwrap());
        let store = Arc::new(crate::store::Store::open(dir, 1 << 20).unwrap());
        let accounts = Arc::new(Accounts::load(config.clone(), store).unwrap());
        let sequencer = crate::ids::Sequencer::resume(1 << 20);
        let user = accounts
            .create(&sequencer, "ana", String::new(), crate::store::Role::Member)
            .await
            .unwrap();
        (Arc::new(Presence::new(config, accounts)), user.id)
    }

    fn decode(frame: &Bytes) -> serde_json::Value {
        serde_json::from_slice(frame).unwrap()
    }

    #[tokio::test]
    async fn missed_delta_is_replaced_by_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (presence, user) = presence_with_user(dir.path()).await;
        let (outbox, mut frames, _close) = Outbox::new(1, 16, 1 << 20);
        presence.attach(1, &outbox, |_| Bytes::from_static(b"ready"));
        // Fill the queue past half, so the next delta is skipped.
        for _ in 1..10 {
            outbox.push(Bytes::from_static(b"message"));
        }

        let _slot = presence.claim(user).unwrap();
        presence.push_changes();
        assert_eq!(presence.stats().deltas_dropped, 1, "the delta is skipped under pressure");

        let mut drained = 0;
        while frames.try_recv().is_ok() {
            drained += 1;
        }
        assert_eq!(drained, 10, "only the ready and message frames were queued");
        presence.push_changes();
        let snapshot = decode(&frames.try_recv().expect("a snapshot is queued once there is room"));
        assert_eq!(snapshot["full"], true, "the frame replaces the client's list: {snapshot}");
        assert_eq!(snapshot["online"], serde_json::json!([user.to_string()]), "{snapshot}");
    }

    #[tokio::test]
    async fn ready_then_delta_for_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (presence, user) = presence_with_user(dir.path()).await;
        let (outbox, mut frames, _close) = Outbox::new(1, 16, 1 << 20);
        presence.attach(1, &outbox, |online| {
            assert!(online.is_empty(), "nobody was shown online before the first push");
            Bytes::from_static(b"ready")
        });
        let slot = presence.claim(user).unwrap();
        presence.push_changes();
        assert_eq!(frames.try_recv().unwrap(), Bytes::from_static(b"ready"), "ready comes first");
        let delta = decode(&frames.try_recv().unwrap());
        assert_eq!(delta["online"], serde_json::json!([user.to_string()]), "{delta}");
        assert_eq!(presence.online().as_slice(), &[user], "the list shows the user");

        drop(slot);
        presence.tracker.lock().expire(Instant::now() + Duration::from_secs(3600));
        presence.push_changes();
        let delta = decode(&frames.try_recv().unwrap());
        assert_eq!(delta["offline"], serde_json::json!([user.to_string()]), "{delta}");
    }

    #[tokio::test]
    async fn claim_over_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (presence, user) = presence_with_user(dir.path()).await;
        let cap = presence.config.max_connections_per_user;
        let slots: Vec<ConnectionSlot> = (0..cap).map(|_| presence.claim(user).unwrap()).collect();
        let refused = presence.claim(user);
        assert!(
            matches!(refused, Err(PresenceError::TooManyConnections { open, .. }) if open == cap),
            "connection {} is refused",
            cap + 1
        );
        drop(slots);
        assert!(presence.claim(user).is_ok(), "a slot is free again once the others end");
    }

    #[test]
    fn expire_keeps_user_with_open_connection() {
        let mut tracker = Tracker::default();
        let now = Instant::now();
        tracker.users.insert(1, Activity { connections: 1, ..Activity::default() });
        tracker.schedule(1, now);
        tracker.expire(now + Duration::from_millis(1));
        assert!(tracker.users.contains_key(&1), "a connected user stays online");
    }

    #[test]
    fn expire_takes_user_offline_after_grace() {
        let mut tracker = Tracker::default();
        let now = Instant::now();
        tracker.users.insert(1, Activity { online_until: Some(now), ..Activity::default() });
        tracker.schedule(1, now);
        tracker.expire(now);
        assert!(!tracker.users.contains_key(&1), "the user went offline");
        assert!(tracker.changed.contains(&1), "the change is noted for the next push");
        assert!(tracker.deadlines.is_empty(), "no deadline is left behind");
    }
}
