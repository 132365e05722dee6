//! The fan-out hub: channels, subscriptions and every message change.
//!
//! A change (send, edit, delete) runs under its channel's mutex: it takes a
//! rev from the sequencer, is queued for the writer, enters the channel's
//! window and is broadcast to every subscriber, in that order. Because the
//! mutex covers all four steps, each channel's subscribers and its writer
//! queue see changes in rev order. A subscribe takes the same mutex, so its
//! batch and the live events after it meet without a gap or an overlap.
//!
//! The broadcast encodes each frame once and only queues it; it never waits
//! on a socket. Acknowledgements come later, from the writer, once the
//! change is on disk.

mod access;
mod channel;
mod messages;
pub mod outbox;
mod typing;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

pub use crate::accounts::Identity;
use crate::accounts::Accounts;
use crate::config::Config;
use crate::error::ApiError;
use crate::ids::Sequencer;
use crate::metrics::Metrics;
use crate::protocol::{self, message_views, MessageView};
use crate::store::writer::{CommitListener, WriteRequest, WriterHandle};
use crate::store::{Layout, Message, Store, StoreError};
pub use access::{ConnHandle, CLOSE_ACCOUNT_ENDED};
use channel::ChannelState;
pub use messages::{Reply, SendOutcome};
pub use outbox::{CloseSignal, ConnId, Outbox};
pub use typing::TYPING_INTERVAL;

/// Number of shards of the pending-nonce map.
const NONCE_SHARDS: usize = 16;

/// One channel's shared state.
#[derive(Debug)]
struct ChannelHub {
    id: u64,
    state: Mutex<ChannelState>,
    /// The channel's latest rev, which long polls wait on.
    latest: watch::Sender<u64>,
}

/// Nonces of sends that are queued but not yet on disk, by (user, nonce),
/// with the channel and message they created.
type PendingNonces = HashMap<(u64, String), (u64, u64)>;

/// Channels, subscriptions and the message write path.
pub struct Hub {
    config: Arc<Config>,
    store: Arc<Store>,
    sequencer: Arc<Sequencer>,
    /// Users, roles and tiers, for access checks at the moment they apply.
    accounts: Arc<Accounts>,
    /// Live connections by user id, for pushing layout and account changes.
    connections: Mutex<HashMap<u64, HashMap<ConnId, ConnHandle>>>,
    /// Serializes structure changes, which are read-modify-write.
    layout_write: tokio::sync::Mutex<()>,
    /// Send rate-limit buckets by user id; one entry per user who sent
    /// since start-up.
    send_buckets: Mutex<HashMap<u64, access::Bucket>>,
    /// When each user last had a typing frame relayed, per channel.
    typing: Mutex<typing::TypingThrottle>,
    /// The writer's queue; set once at start-up, because the writer needs
    /// the hub as its listener.
    writer: OnceLock<WriterHandle>,
    /// Channel states, created on first use for channels in the layout.
    channels: RwLock<HashMap<u64, Arc<ChannelHub>>>,
    /// The current layout.
    layout: RwLock<Arc<Layout>>,
    /// Sends whose nonce is not on disk yet, sharded by user id; the
    /// sled `nonces` tree contains the rest.
    pending_nonces: [Mutex<PendingNonces>; NONCE_SHARDS],
    /// Message counters and the fan-out latency histogram.
    metrics: Arc<Metrics>,
}

impl Hub {
    /// Creates the hub over an open store and layout.
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        sequencer: Arc<Sequencer>,
        accounts: Arc<Accounts>,
        layout: Layout,
        metrics: Arc<Metrics>,
    ) -> Hub {
        Hub {
            config,
            store,
            sequencer,
            accounts,
            connections: Mutex::new(HashMap::new()),
            layout_write: tokio::sync::Mutex::new(()),
            send_buckets: Mutex::new(HashMap::new()),
            typing: Mutex::new(typing::TypingThrottle::default()),
            writer: OnceLock::new(),
            channels: RwLock::new(HashMap::new()),
            layout: RwLock::new(Arc::new(layout)),
            pending_nonces: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Connects the hub to the writer's queue.
    pub fn attach_writer(&self, writer: WriterHandle) {
        if self.writer.set(writer).is_err() {
            panic!("attach_writer called twice");
        }
    }

    fn writer(&self) -> &WriterHandle {
        self.writer.get().expect("the writer is attached before the server accepts connections")
    }

    /// Issues a new id for a category or channel.
    pub fn next_id(&self) -> u64 {
        self.sequencer.next()
    }

    /// Returns the current layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().clone()
    }

    /// The state of a channel that the user may read, or `channel not
    /// found` for a channel that does not exist or that they may not read,
    /// so the response reveals nothing.
    fn readable_channel(&self, user: &Identity, channel: u64) -> Result<Arc<ChannelHub>, ApiError> {
        let readable = |layout: &Layout| layout.channel(channel).is_some_and(|found| self.can_read(user, found));
        if !readable(&self.layout.read()) {
            return Err(ApiError::channel_not_found());
        }
        if let Some(hub) = self.channels.read().get(&channel) {
            return Ok(hub.clone());
        }
        let stored_rev = self.store.channel_max_rev(channel).map_err(storage_error)?;
        let mut channels = self.channels.write();
        // Checked again under the map's lock: a structure change removes
        // deleted channels under it, after swapping the layout.
        if !readable(&self.layout.read()) {
            return Err(ApiError::channel_not_found());
        }
        let hub = channels.entry(channel).or_insert_with(|| {
            Arc::new(ChannelHub {
                id: channel,
                state: Mutex::new(ChannelState::new(channel, stored_rev, self.config.history_cache)),
                latest: watch::channel(stored_rev).0,
            })
        });
        Ok(hub.clone())
    }

    /// Subscribes a connection to a channel and queues the `subscribed`
    /// frame: every change after `after` (or the newest page when `after` is
    /// `None`), followed by live events.
    pub fn subscribe(
        &self,
        user: &Identity,
        handle: &ConnHandle,
        channel: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(), ApiError> {
        let hub = self.readable_channel(user, channel)?;
        let mut state = hub.state.lock();
        // Access is checked again under the channel's lock with the user as
        // they are now, so a concurrent access change cannot miss this
        // subscription.
        let current = self.accounts.identity(user.id);
        let still_readable = current.is_some_and(|current| {
            self.layout().channel(channel).is_some_and(|found| self.can_read(&current, found))
        });
        if state.deleted || !still_readable {
            return Err(ApiError::channel_not_found());
        }
        let (messages, gap) = match after {
            Some(after) => state.changes_newest(&self.store, after, limit),
            None => state.page_before(&self.store, u64::MAX, limit).map(|(page, _)| (page, false)),
        }
        .map_err(storage_error)?;
        handle.outbox.push(protocol::encode_frame(&serde_json::json!({
            "op": "subscribed",
            "channel": crate::ids::Id(channel),
            "messages": message_views(&messages),
            "gap": gap,
        })));
        state.subscribers.insert(handle.outbox.conn, handle.outbox.clone());
        handle.subscriptions.lock().insert(channel);
        Ok(())
    }

    /// Ends a connection's subscription to a channel, if it had one.
    pub fn unsubscribe(&self, handle: &ConnHandle, channel: u64) {
        let hub = self.channels.read().get(&channel).cloned();
        match hub {
            Some(hub) => {
                let mut state = hub.state.lock();
                state.subscribers.remove(&handle.outbox.conn);
                handle.subscriptions.lock().remove(&channel);
            }
            None => {
                handle.subscriptions.lock().remove(&channel);
            }
        }
    }

    /// Waits until every write queued so far is on disk.
    pub async fn wait_for_writer(&self) -> Result<(), ApiError> {
        let (sender, done) = tokio::sync::oneshot::channel();
        let request = WriteRequest {
            change: None,
            completion: Some(Box::new(move |result| {
                let _ = sender.send(result);
            })),
        };
        self.writer().try_queue(request).map_err(|_| ApiError::unavailable())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ApiError::unavailable()),
        }
    }

    /// Reads a page of messages before `before` (the newest page when `None`),
    /// oldest first, and whether older messages exist.
    pub fn history(
        &self,
        user: &Identity,
        channel: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), ApiError> {
        let hub = self.readable_channel(user, channel)?;
        let state = hub.state.lock();
        state
            .page_before(&self.store, before.unwrap_or(u64::MAX), limit)
            .map_err(storage_error)
    }

    /// Reads the changes after `after`, oldest first, at most `limit`, and whether more
    /// follow. With a `wait`, an empty result waits up to that long for the
    /// next change, or until `shutdown` begins.
    pub async fn changes_after(
        &self,
        user: &Identity,
        channel: u64,
        after: u64,
        limit: usize,
        wait: std::time::Duration,
        mut shutdown: crate::shutdown::Shutdown,
    ) -> Result<(Vec<Arc<Message>>, bool), ApiError> {
        let hub = self.readable_channel(user, channel)?;
        let mut latest = hub.latest.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            latest.mark_unchanged();
            // Access may have ended while the poll waited.
            let current = self.accounts.identity(user.id).ok_or_else(ApiError::unauthorized)?;
            self.readable_channel(&current, channel)?;
            let (changes, has_more) = hub
                .state
                .lock()
                .changes_oldest(&self.store, after, limit)
                .map_err(storage_error)?;
            if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok((changes, has_more));
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        return Ok((changes, has_more));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok((changes, has_more)),
                _ = shutdown.wait() => return Ok((changes, has_more)),
            }
        }
    }

    /// Queues `frame` for every subscriber of the channel.
    fn broadcast(state: &ChannelState, frame: &bytes::Bytes) {
        for outbox in state.subscribers.values() {
            outbox.push(frame.clone());
        }
    }

    /// Open WebSocket connections and live subscriptions, for metrics.
    pub fn connection_stats(&self) -> (usize, usize) {
        let connections = self.connections.lock().values().map(HashMap::len).sum();
        let channels: Vec<Arc<ChannelHub>> = self.channels.read().values().cloned().collect();
        let subscriptions = channels.iter().map(|hub| hub.state.lock().subscribers.len()).sum();
        (connections, subscriptions)
    }

    /// Requests waiting in the writer's queue, for metrics.
    pub fn write_queue_depth(&self) -> usize {
        self.writer.get().map_or(0, WriterHandle::queued)
    }

    fn nonce_shard(&self, user: u64) -> &Mutex<PendingNonces> {
        &self.pending_nonces[(user as usize) % NONCE_SHARDS]
    }
}

impl CommitListener for Hub {
    fn committed(&self, changes: &[Arc<Message>]) {
        let mut newest: HashMap<u64, u64> = HashMap::new();
        for message in changes {
            let rev = newest.entry(message.channel).or_default();
            *rev = (*rev).max(message.rev);
            if let Some(nonce) = &message.nonce {
                if message.rev == message.id {
                    self.nonce_shard(message.author_id)
                        .lock()
                        .remove(&(message.author_id, nonce.clone()));
                }
            }
        }
        let channels = self.channels.read();
        for (channel, rev) in newest {
            if let Some(hub) = channels.get(&channel) {
                hub.state.lock().mark_durable(rev);
            }
        }
    }

    fn failed(&self, changes: &[Arc<Message>]) {
        let channels = self.channels.read();
        for message in changes {
            if let Some(nonce) = &message.nonce {
                self.nonce_shard(message.author_id)
                    .lock()
                    .remove(&(message.author_id, nonce.clone()));
            }
            let Some(hub) = channels.get(&message.channel) else { continue };
            let mut state = hub.state.lock();
            if !state.retract(message) {
                continue;
            }
            // Subscribers saw the change live, so tell them what is on disk
            // instead: the stored version, or a tombstone for a new message.
            // After a failure inside sled, its memory may still hold the
            // failed change itself, which is not on disk.
            let correction = match self.store.message(message.channel, message.id) {
                Ok(Some(stored)) if stored.rev != message.rev => stored,
                _ => Message {
                    deleted: true,
                    content: String::new(),
                    ..message.as_ref().clone()
                },
            };
            Self::broadcast(&state, &protocol::message_frame(&correction));
        }
    }
}

/// Maps a database error to `unavailable` and logs it.
fn storage_error(error: StoreError) -> ApiError {
    tracing::error!(%error, "database read failed");
    ApiError::new(crate::error::ErrorCode::Unavailable, "storage is unavailable: retry later")
}

/// Serializes one message for the HTTP API.
pub fn message_json(message: &Message) -> serde_json::Value {
    serde_json::to_value(MessageView(message)).expect("messages serialize")
}
