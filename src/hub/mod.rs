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

mod channel;
mod messages;
pub mod outbox;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ApiError;
use crate::ids::Sequencer;
use crate::protocol::{self, message_views, MessageView};
use crate::store::writer::{CommitListener, WriterHandle};
use crate::store::{Layout, Message, Role, Store, StoreError};
use channel::ChannelState;
pub use messages::{Reply, SendOutcome};
pub use outbox::{CloseSignal, ConnId, Outbox};

/// Number of shards of the pending-nonce map.
const NONCE_SHARDS: usize = 16;

/// The authenticated user behind a request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    pub name: String,
    pub role: Role,
}

/// One channel's shared state.
#[derive(Debug)]
struct ChannelHub {
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
    /// The writer's queue; set once at start-up, because the writer needs
    /// the hub as its listener.
    writer: OnceLock<WriterHandle>,
    /// Channel states, created on first use for channels in the layout.
    channels: RwLock<HashMap<u64, Arc<ChannelHub>>>,
    /// The current layout.
    layout: RwLock<Arc<Layout>>,
    /// Sends whose nonce is not on disk yet, sharded by user id; the
    /// sled `nonces` tree holds the rest.
    pending_nonces: [Mutex<PendingNonces>; NONCE_SHARDS],
}

impl Hub {
    /// Creates the hub over an open store and layout.
    pub fn new(config: Arc<Config>, store: Arc<Store>, sequencer: Arc<Sequencer>, layout: Layout) -> Hub {
        Hub {
            config,
            store,
            sequencer,
            writer: OnceLock::new(),
            channels: RwLock::new(HashMap::new()),
            layout: RwLock::new(Arc::new(layout)),
            pending_nonces: std::array::from_fn(|_| Mutex::new(HashMap::new())),
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

    /// The current layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().clone()
    }

    /// The state of a channel that the user may read, or `channel not found`.
    fn readable_channel(&self, _user: &Identity, channel: u64) -> Result<Arc<ChannelHub>, ApiError> {
        if let Some(hub) = self.channels.read().get(&channel) {
            return Ok(hub.clone());
        }
        if self.layout.read().channel(channel).is_none() {
            return Err(ApiError::channel_not_found());
        }
        let stored_rev = self.store.channel_max_rev(channel).map_err(storage_error)?;
        let mut channels = self.channels.write();
        let hub = channels.entry(channel).or_insert_with(|| {
            Arc::new(ChannelHub {
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
        outbox: &Outbox,
        channel: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(), ApiError> {
        let hub = self.readable_channel(user, channel)?;
        let mut state = hub.state.lock();
        let (messages, gap) = match after {
            Some(after) => state.changes_newest(&self.store, after, limit),
            None => state.page_before(&self.store, u64::MAX, limit).map(|(page, _)| (page, false)),
        }
        .map_err(storage_error)?;
        outbox.push(protocol::encode_frame(&serde_json::json!({
            "op": "subscribed",
            "channel": crate::ids::Id(channel),
            "messages": message_views(&messages),
            "gap": gap,
        })));
        state.subscribers.insert(outbox.conn, outbox.clone());
        Ok(())
    }

    /// Ends a connection's subscription to a channel, if it had one.
    pub fn unsubscribe(&self, conn: ConnId, channel: u64) {
        if let Some(hub) = self.channels.read().get(&channel) {
            hub.state.lock().subscribers.remove(&conn);
        }
    }

    /// A page of messages before `before` (the newest page when `None`),
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

    /// Changes after `after`, oldest first, at most `limit`, and whether more
    /// follow. With a `wait`, an empty answer waits up to that long for the
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
            let correction = match self.store.message(message.channel, message.id) {
                Ok(Some(stored)) => stored,
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
