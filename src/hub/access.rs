//! Who may read what, the per-user view of the layout, structure changes,
//! and how access changes reach live connections at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;

use super::{ConnId, Hub, Outbox};
use crate::accounts::Identity;
use crate::error::{ApiError, ErrorCode};
use crate::ids::Id;
use crate::protocol::{encode_frame, LayoutView, UserView};
use crate::store::{Channel, Layout, Role, User};

/// Close code: the account was disabled or deleted.
pub const CLOSE_ACCOUNT_ENDED: u16 = 4001;

/// A live WebSocket connection as the hub tracks it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub outbox: Outbox,
    /// Channels the connection is subscribed to. The hub adds and removes
    /// entries under the channel's lock, so access changes find every
    /// subscription.
    pub subscriptions: Arc<Mutex<HashSet<u64>>>,
}

/// Why a subscription ended without the client asking.
#[derive(Debug, Clone, Copy)]
pub enum UnsubscribeReason {
    Forbidden,
    Deleted,
}

impl UnsubscribeReason {
    fn as_str(self) -> &'static str {
        match self {
            UnsubscribeReason::Forbidden => "forbidden",
            UnsubscribeReason::Deleted => "deleted",
        }
    }
}

/// A per-user token bucket for sends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Hub {
    /// Whether a user may read a channel: admins always, others when their
    /// tier is at least the channel's minimum.
    pub fn can_read(&self, user: &Identity, channel: &Channel) -> bool {
        user.role == Role::Admin || user.tier_rank >= self.config.tier_rank(&channel.min_tier)
    }

    /// The layout as `user` sees it, as a JSON value.
    pub fn layout_for(&self, user: &Identity) -> serde_json::Value {
        let layout = self.layout();
        let view = LayoutView::new(&layout, user.role == Role::Admin, |channel| self.can_read(user, channel));
        serde_json::to_value(view).expect("layouts serialize")
    }

    /// Registers a live connection of `user`.
    pub fn register_connection(&self, user: u64, handle: ConnHandle) {
        self.connections
            .lock()
            .entry(user)
            .or_default()
            .insert(handle.outbox.conn, handle);
    }

    /// Forgets a connection and ends its subscriptions.
    pub fn unregister_connection(&self, user: u64, conn: ConnId) {
        let handle = {
            let mut connections = self.connections.lock();
            let Some(of_user) = connections.get_mut(&user) else { return };
            let handle = of_user.remove(&conn);
            if of_user.is_empty() {
                connections.remove(&user);
            }
            handle
        };
        if let Some(handle) = handle {
            let channels: Vec<u64> = handle.subscriptions.lock().iter().copied().collect();
            for channel in channels {
                self.unsubscribe(&handle, channel);
            }
        }
    }

    /// Takes one send token from the user's bucket, or returns `rate_limited`
    /// with the time until the next token.
    pub(super) fn take_send_token(&self, user: u64) -> Result<(), ApiError> {
        let burst = f64::from(self.config.send_burst);
        let rate = self.config.send_per_second;
        let now = Instant::now();
        let mut buckets = self.send_buckets.lock();
        let bucket = buckets.entry(user).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
        Err(ApiError::rate_limited(wait_ms.max(1)))
    }

    /// Applies a structure change: `change` edits a copy of the layout,
    /// which then gets the next version, is stored and flushed, replaces
    /// the current layout and is pushed to every connection. Channels that
    /// the change removed lose their subscribers and their messages.
    pub async fn change_layout<T>(
        &self,
        actor: &Identity,
        change: impl FnOnce(&mut Layout) -> Result<T, ApiError>,
    ) -> Result<(T, Arc<Layout>), ApiError> {
        if actor.role != Role::Admin {
            return Err(ApiError::role_required("admin"));
        }
        let _serialized = self.layout_write.lock().await;
        let mut layout = (*self.layout()).clone();
        let outcome = change(&mut layout)?;
        layout.version += 1;
        self.store.put_layout(&layout).await.map_err(|error| {
            tracing::error!(%error, "failed to store the layout");
            ApiError::new(ErrorCode::Unavailable, "storage is unavailable: the change was not saved")
        })?;

        let layout = Arc::new(layout);
        let removed: Vec<u64> = {
            let old = self.layout();
            let kept: HashSet<u64> = layout.channel_ids().collect();
            old.channel_ids().filter(|id| !kept.contains(id)).collect()
        };
        {
            // Swapping under the channel map's lock means no channel state
            // is created for a removed channel after this point.
            let mut channels = self.channels.write();
            *self.layout.write() = layout.clone();
            for channel in &removed {
                if let Some(hub) = channels.remove(channel) {
                    self.end_channel(&hub);
                }
            }
        }
        tracing::info!(version = layout.version, actor = actor.id, "layout changed");
        self.push_layout_to_all();
        for channel in removed {
            self.delete_channel_messages(channel).await;
        }
        Ok((outcome, layout))
    }

    /// Marks a removed channel's state deleted and notifies its subscribers.
    fn end_channel(&self, hub: &super::ChannelHub) {
        let mut state = hub.state.lock();
        state.deleted = true;
        let frame = unsubscribed_frame(state.id, UnsubscribeReason::Deleted);
        let subscribers: Vec<ConnId> = state.subscribers.keys().copied().collect();
        state.subscribers.clear();
        drop(state);
        let connections = self.connections.lock();
        for handle in connections.values().flat_map(|of_user| of_user.values()) {
            if subscribers.contains(&handle.outbox.conn) {
                handle.subscriptions.lock().remove(&hub.id);
                handle.outbox.push(frame.clone());
            }
        }
    }

    /// Removes a deleted channel's messages once every queued write for it
    /// is on disk.
    async fn delete_channel_messages(&self, channel: u64) {
        if let Err(error) = self.wait_for_writer().await {
            tracing::error!(%error, channel, "writer unavailable; the deleted channel's messages stay on disk");
            return;
        }
        match self.store.delete_channel_messages(channel).await {
            Ok(removed) => tracing::info!(channel, removed, "deleted channel's messages removed"),
            Err(error) => tracing::error!(%error, channel, "failed to remove a deleted channel's messages"),
        }
    }

    /// Sends every connected user their view of the layout, and ends
    /// subscriptions they may no longer read.
    fn push_layout_to_all(&self) {
        let users: Vec<u64> = self.connections.lock().keys().copied().collect();
        for user in users {
            match self.accounts.identity(user) {
                Some(identity) => self.refresh_connections(&identity, None),
                None => self.close_connections(user),
            }
        }
    }

    /// Pushes a user's changed account to their connections, with their new
    /// layout view, and ends subscriptions they may no longer read. A
    /// disabled or deleted user's connections close with 4001.
    pub fn user_changed(&self, user: &User) {
        match self.accounts.identity(user.id) {
            Some(identity) => {
                let frame = encode_frame(&json!({"op": "user", "user": UserView::of(user)}));
                self.refresh_connections(&identity, Some(frame));
            }
            None => self.close_connections(user.id),
        }
    }

    fn refresh_connections(&self, identity: &Identity, user_frame: Option<Bytes>) {
        let handles: Vec<ConnHandle> = self
            .connections
            .lock()
            .get(&identity.id)
            .map(|of_user| of_user.values().cloned().collect())
            .unwrap_or_default();
        if handles.is_empty() {
            return;
        }
        let layout_frame = encode_frame(&json!({"op": "layout", "layout": self.layout_for(identity)}));
        let layout = self.layout();
        for handle in handles {
            if let Some(frame) = &user_frame {
                handle.outbox.push(frame.clone());
            }
            handle.outbox.push(layout_frame.clone());
            let subscribed: Vec<u64> = handle.subscriptions.lock().iter().copied().collect();
            for channel in subscribed {
                let readable = layout.channel(channel).is_some_and(|found| self.can_read(identity, found));
                if !readable {
                    self.force_unsubscribe(&handle, channel, UnsubscribeReason::Forbidden);
                }
            }
        }
    }

    fn close_connections(&self, user: u64) {
        if let Some(of_user) = self.connections.lock().get(&user) {
            for handle in of_user.values() {
                handle.outbox.close(CLOSE_ACCOUNT_ENDED);
            }
        }
    }

    /// Ends a subscription and sends the client the reason.
    fn force_unsubscribe(&self, handle: &ConnHandle, channel: u64, reason: UnsubscribeReason) {
        self.unsubscribe(handle, channel);
        handle.outbox.push(unsubscribed_frame(channel, reason));
    }

    /// A snapshot of connected users and their connection counts, for tests and logs.
    pub fn connection_counts(&self) -> HashMap<u64, usize> {
        self.connections
            .lock()
            .iter()
            .map(|(&user, of_user)| (user, of_user.len()))
            .collect()
    }
}

fn unsubscribed_frame(channel: u64, reason: UnsubscribeReason) -> Bytes {
    encode_frame(&json!({"op": "unsubscribed", "channel": Id(channel), "reason": reason.as_str()}))
}
